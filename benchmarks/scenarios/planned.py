"""Scenarios planned but not written yet: registered so ``--list`` and the report show them.

To implement one, write its ``run(config) -> ScenarioResult`` (and optionally ``plot``) in
its own module, register it there under the same name, and drop its entry here.
None is planned today (``distributed`` lives in ``distributed.py``).
"""

from __future__ import annotations

__all__: list[str] = []
