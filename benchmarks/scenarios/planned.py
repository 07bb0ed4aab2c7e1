"""Scenarios planned but not written yet: registered so ``--list`` and the report show them.

To implement one, write its ``run(config) -> ScenarioResult`` (and optionally ``plot``) in
its own module, register it there under the same name, and drop its entry here.
"""

from __future__ import annotations

from ..registry import Scenario, register

__all__: list[str] = []

register(
    Scenario(
        name="distributed",
        title="Distributed",
        description=(
            "gather through Redis and NATS brokers to worker processes: per-task latency, "
            "throughput and cap fidelity against the in-process runtime."
        ),
        order=70,
    )
)
