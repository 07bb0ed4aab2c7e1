"""Distributed mode: agents served by workers, tasks carried by a broker.

Built on the core's transport seam (``murmur.transport``); the core never imports this
package (``AgentRuntime(broker=URL)`` looks its transport up by name). Callers use
``AgentRuntime(broker=URL)`` (a ``BrokerTransport``); workers are ``murmur worker start``
processes or, embedded, a ``Worker``, serving the agents of an ``AgentRegistry``. Each
broker is a thin adapter over FastStream, imported only when its scheme is used.
"""

from ._registry import AgentRegistry as AgentRegistry
from ._registry import DuplicateAgentError as DuplicateAgentError
from ._transport import DEFAULT_REPLY_GRACE as DEFAULT_REPLY_GRACE
from ._transport import DEFAULT_RESEND_EVERY as DEFAULT_RESEND_EVERY
from ._transport import BrokerTransport as BrokerTransport
from ._url import BrokerURL as BrokerURL
from ._url import parse_broker_url as parse_broker_url
from ._wire import WireFormatError as WireFormatError
from ._wire import WireVersionError as WireVersionError
from ._worker import Worker as Worker
from ._worker import WorkerStats as WorkerStats

__all__ = [
    "DEFAULT_REPLY_GRACE",
    "DEFAULT_RESEND_EVERY",
    "AgentRegistry",
    "BrokerTransport",
    "BrokerURL",
    "DuplicateAgentError",
    "WireFormatError",
    "WireVersionError",
    "Worker",
    "WorkerStats",
    "parse_broker_url",
]
