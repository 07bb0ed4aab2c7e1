"""``python -m murmur``: the ``murmur`` command line."""

from murmur.cli import main

main()
