"""Every scenario module registers itself on import; the import order is the report order."""

from __future__ import annotations

from . import (
    distributed,
    fidelity,
    groups,
    imports,
    overhead,
    peers,
    planned,
    policies,
    rate_limits,
    scaling,
)

__all__ = [
    "distributed",
    "fidelity",
    "groups",
    "imports",
    "overhead",
    "peers",
    "planned",
    "policies",
    "rate_limits",
    "scaling",
]
