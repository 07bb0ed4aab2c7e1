"""Pipeline stages, one policy each. ``RuntimeOptions`` builds them; users rarely need to.

Order, outermost first: depth limit → cost tracking → retry → rate limits → user stages →
timeout (per attempt) → dispatch.
"""

from .cost_tracking import CostTrackingMiddleware as CostTrackingMiddleware
from .cost_tracking import TokenBudget as TokenBudget
from .depth_limit import DepthLimitMiddleware as DepthLimitMiddleware
from .rate_limit import Clock as Clock
from .rate_limit import MonotonicClock as MonotonicClock
from .rate_limit import RateLimit as RateLimit
from .rate_limit import RateLimitMiddleware as RateLimitMiddleware
from .rate_limit import estimate_input_tokens as estimate_input_tokens
from .retry import RetryMiddleware as RetryMiddleware
from .retry import is_retryable as is_retryable
from .timeout import TimeoutMiddleware as TimeoutMiddleware

__all__ = [
    "Clock",
    "CostTrackingMiddleware",
    "DepthLimitMiddleware",
    "MonotonicClock",
    "RateLimit",
    "RateLimitMiddleware",
    "RetryMiddleware",
    "TimeoutMiddleware",
    "TokenBudget",
    "estimate_input_tokens",
    "is_retryable",
]
