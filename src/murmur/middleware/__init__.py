"""Pipeline stages, one policy each. ``RuntimeOptions`` builds them; users rarely need to.

Order, outermost first: depth limit → cost tracking → retry → user stages → timeout
(per attempt) → dispatch.
"""

from .cost_tracking import CostTrackingMiddleware as CostTrackingMiddleware
from .cost_tracking import TokenBudget as TokenBudget
from .depth_limit import DepthLimitMiddleware as DepthLimitMiddleware
from .retry import RetryMiddleware as RetryMiddleware
from .retry import is_retryable as is_retryable
from .timeout import TimeoutMiddleware as TimeoutMiddleware

__all__ = [
    "CostTrackingMiddleware",
    "DepthLimitMiddleware",
    "RetryMiddleware",
    "TimeoutMiddleware",
    "TokenBudget",
    "is_retryable",
]
