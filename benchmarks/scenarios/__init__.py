"""Every scenario module registers itself on import; the import order is the report order."""

from __future__ import annotations

from . import fidelity, overhead, peers, planned, scaling

__all__ = ["fidelity", "overhead", "peers", "planned", "scaling"]
