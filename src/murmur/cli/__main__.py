"""``python -m murmur.cli``: the ``murmur`` command line."""

from murmur.cli import main

main()
