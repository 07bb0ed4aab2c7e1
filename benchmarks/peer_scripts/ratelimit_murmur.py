"""Murmur's own limiter in the ``rate_limits`` scenario's share measurement: run with the
benchmark's interpreter (not a peer venv), as three processes, each an ``AgentRuntime``
whose ``RateLimit`` of one name lives in Redis, gathering calls as fast as the limit admits
(at most ``threads`` waiting at once, as the peers' threads); an admission is the moment
the agent starts. Its other numbers come from the scenario itself."""

from __future__ import annotations

import time
from typing import Any

from _ratelimit_peer import Peer, main


def share_child(config: dict[str, Any]) -> list[float]:
    import anyio

    from murmur import AgentRuntime, FunctionAgent, RateLimit, RuntimeOptions, TaskSpec

    until = config["start"] + config["periods"] * config["period"]
    stamps: list[float] = []

    async def call(value: int) -> int:
        now = time.time()
        if now < until:
            stamps.append(now)
        return value

    async def run() -> None:
        limit = RateLimit(
            rpm=config["rpm"],
            period=config["period"],
            store=config["url"],
            name=f"{config['prefix']}-share",
        )
        agent = FunctionAgent(call, name="call")
        options = RuntimeOptions(rate_limits=[limit])
        async with AgentRuntime(options=options) as runtime:
            await runtime.run(agent, TaskSpec(input=-1))  # connected, scripts loaded
            stamps.clear()
            await anyio.sleep(max(0.0, config["start"] - time.time()))
            calls = [TaskSpec(input=i) for i in range(config["rpm"] * (config["periods"] + 1))]
            with anyio.move_on_after(max(0.0, until - time.time())):
                await runtime.gather(agent, calls, max_concurrency=config["threads"])

    anyio.run(run)
    return stamps


def _unused(*_: Any) -> None:
    raise NotImplementedError("measured by the scenario itself")


main(Peer("murmur-agents", _unused, _unused, _unused, share_child=share_child))
