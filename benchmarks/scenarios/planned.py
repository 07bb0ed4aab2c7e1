"""Scenarios planned but not written yet: registered so ``--list`` and the report show them.

To implement one, write its ``run(config) -> ScenarioResult`` (and optionally ``plot``) in
its own module, register it there under the same name, and drop its entry here.
"""

from __future__ import annotations

from ..registry import Scenario, register

__all__: list[str] = []

register(
    Scenario(
        name="policies",
        title="Policy and event overhead",
        description=(
            "The in-process overhead workloads with retry, timeout and token budget switched "
            "on, and with event emitters attached (no-op, LogEventEmitter, MultiEventEmitter), "
            "as ratios to the bare runtime."
        ),
        order=50,
    )
)
register(
    Scenario(
        name="groups",
        title="Groups",
        description=(
            "A 3-node agent group (graph) fanning out 1,000 items: per-item cost and cap "
            "fidelity against a hand-written AnyIO equivalent."
        ),
        order=60,
    )
)
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
