"""Asking about optional, heavy modules without importing them."""

from __future__ import annotations

import sys

__all__ = ["loaded_class"]


def loaded_class(module: str, name: str) -> type | None:
    """The class ``module.name`` if ``module`` has been imported, else None.

    An object can only be an instance of a class whose module was imported, so checking
    for a pydantic-ai type this way answers exactly without ever importing pydantic-ai.
    """
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None
