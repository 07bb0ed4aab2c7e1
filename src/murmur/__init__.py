"""Murmur: structured concurrency for fleets of LLM agent calls, on asyncio or Trio."""

from typing import TYPE_CHECKING

from ._agents import Agent as Agent
from ._agents import FunctionAgent as FunctionAgent
from ._agents import PydanticAIAgent as PydanticAIAgent
from ._agents import from_pydantic_ai as from_pydantic_ai
from ._agents import register as register
from ._context import AgentContext as AgentContext
from ._context import current_context as current_context
from ._options import RuntimeOptions as RuntimeOptions
from ._pipeline import CallNext as CallNext
from ._pipeline import Stage as Stage
from ._runtime import AgentRuntime as AgentRuntime
from ._types import AgentResult as AgentResult
from ._types import ErrorInfo as ErrorInfo
from ._types import TaskSpec as TaskSpec
from ._types import Usage as Usage
from ._version import __version__ as __version__
from .errors import AgentError as AgentError
from .errors import AgentTimeoutError as AgentTimeoutError
from .errors import BrokerUnavailableError as BrokerUnavailableError
from .errors import BudgetExceededError as BudgetExceededError
from .errors import BudgetStoreError as BudgetStoreError
from .errors import DeadLetteredError as DeadLetteredError
from .errors import InputValidationError as InputValidationError
from .errors import InvalidStateError as InvalidStateError
from .errors import InvalidTypeError as InvalidTypeError
from .errors import InvalidValueError as InvalidValueError
from .errors import MissingDependencyError as MissingDependencyError
from .errors import MurmurError as MurmurError
from .errors import NoTaskContextError as NoTaskContextError
from .errors import NotAvailableError as NotAvailableError
from .errors import RateLimitError as RateLimitError
from .errors import RateLimitStoreError as RateLimitStoreError
from .errors import RemoteAgentError as RemoteAgentError
from .errors import RuntimeClosedError as RuntimeClosedError
from .errors import SpawnDepthExceededError as SpawnDepthExceededError
from .errors import StrayCancellationError as StrayCancellationError
from .errors import TaskCancelledError as TaskCancelledError
from .errors import TopologyError as TopologyError
from .errors import UnknownAgentError as UnknownAgentError
from .errors import UnknownNodeError as UnknownNodeError
from .events.buffered import BufferedEmitter as BufferedEmitter
from .events.log import LogEventEmitter as LogEventEmitter
from .events.multi import MultiEventEmitter as MultiEventEmitter
from .events.otel import OpenTelemetryEmitter as OpenTelemetryEmitter
from .events.sse import SSEEventEmitter as SSEEventEmitter
from .events.types import EventEmitter as EventEmitter
from .events.types import EventType as EventType
from .events.types import RuntimeEvent as RuntimeEvent
from .groups import AgentGroup as AgentGroup
from .groups import Edge as Edge
from .groups import FanOut as FanOut
from .groups import GroupResult as GroupResult
from .middleware.cost_tracking import TokenBudget as TokenBudget
from .middleware.rate_limit import RateLimit as RateLimit

if TYPE_CHECKING:
    from .distributed import Worker as Worker

__all__ = [
    "Agent",
    "AgentContext",
    "AgentError",
    "AgentGroup",
    "AgentResult",
    "AgentRuntime",
    "AgentTimeoutError",
    "BrokerUnavailableError",
    "BudgetExceededError",
    "BudgetStoreError",
    "BufferedEmitter",
    "CallNext",
    "DeadLetteredError",
    "Edge",
    "ErrorInfo",
    "EventEmitter",
    "EventType",
    "FanOut",
    "FunctionAgent",
    "GroupResult",
    "InputValidationError",
    "InvalidStateError",
    "InvalidTypeError",
    "InvalidValueError",
    "LogEventEmitter",
    "MissingDependencyError",
    "MultiEventEmitter",
    "MurmurError",
    "NoTaskContextError",
    "NotAvailableError",
    "OpenTelemetryEmitter",
    "PydanticAIAgent",
    "RateLimit",
    "RateLimitError",
    "RateLimitStoreError",
    "RemoteAgentError",
    "RuntimeClosedError",
    "RuntimeEvent",
    "RuntimeOptions",
    "SSEEventEmitter",
    "SpawnDepthExceededError",
    "Stage",
    "StrayCancellationError",
    "TaskCancelledError",
    "TaskSpec",
    "TokenBudget",
    "TopologyError",
    "UnknownAgentError",
    "UnknownNodeError",
    "Usage",
    "Worker",
    "__version__",
    "current_context",
    "from_pydantic_ai",
    "register",
]


def __getattr__(name: str) -> object:
    # ``murmur.Worker``: the distributed layer, imported on first use (``import murmur``
    # stays light for in-process users).
    if name == "Worker":
        from .distributed import Worker

        return Worker
    raise AttributeError(f"module 'murmur' has no attribute {name!r}")
