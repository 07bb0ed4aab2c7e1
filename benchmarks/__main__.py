"""``python -m benchmarks``: see ``benchmarks/cli.py``."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
