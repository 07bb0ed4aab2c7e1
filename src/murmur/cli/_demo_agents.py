"""The app module the workers of ``murmur demo --broker`` serve: the demo's triage agent.

A worker imports it (``murmur worker start --app murmur.cli._demo_agents``). The demo
passes its seed, failure rate and latency in the environment, so the agent here answers,
fails and spends tokens as the demo's in-process agent does for the same settings.
"""

from __future__ import annotations

import os

from ._demo import build_agent
from ._demo_broker import FAIL_EVERY_ENV, LATENCY_ENV, SEED_ENV

__all__ = ["triage"]

triage = build_agent(
    seed=int(os.environ.get(SEED_ENV, "0")),
    fail_every=int(os.environ.get(FAIL_EVERY_ENV, "20")),
    latency=float(os.environ.get(LATENCY_ENV, "0.1")),
)
