"""Distributed mode: agents served by workers, tasks carried by a broker.

Built on the core's transport seam (``murmur.transport``); the core never imports this
package. So far: the agent registry a worker serves from (``AgentRegistry``) and the wire
format between callers and workers (``murmur.distributed._wire``).
"""

from ._registry import AgentRegistry as AgentRegistry
from ._registry import DuplicateAgentError as DuplicateAgentError

__all__ = ["AgentRegistry", "DuplicateAgentError"]
