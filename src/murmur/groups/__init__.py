"""Agent groups: typed graphs of agents run by ``AgentRuntime.run_group``.

``AgentGroup`` holds a validated topology of ``Edge``s (with ``FanOut`` output fields and
conditional edges); the dataflow scheduler runs it; ``GroupResult`` is what a run produced.
"""

from .result import GroupResult as GroupResult
from .result import NodeStatus as NodeStatus
from .scheduler import GroupScheduler as GroupScheduler
from .scheduler import run_group as run_group
from .topology import AgentGroup as AgentGroup
from .topology import Edge as Edge
from .topology import FanOut as FanOut
from .topology import Mapper as Mapper
from .topology import Predicate as Predicate

__all__ = [
    "AgentGroup",
    "Edge",
    "FanOut",
    "GroupResult",
    "GroupScheduler",
    "Mapper",
    "NodeStatus",
    "Predicate",
    "run_group",
]
