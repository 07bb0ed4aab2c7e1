"""Live events over Server-Sent Events: a real HTTP server and a real client, on loopback.

    python examples/sse_live.py                  # uvicorn on asyncio
    python examples/sse_live.py --backend trio   # hypercorn on Trio

The runtime's events go to an SSEEventEmitter, whose ``app`` is served over HTTP; an httpx
client reads the stream as a dashboard would (``curl -N URL`` shows the same).
"""

from __future__ import annotations

import json
import socket
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import httpx
from anyio.abc import TaskGroup

from murmur import AgentRuntime, SSEEventEmitter, TaskSpec


async def classify(ticket: str) -> str:
    if "????" in ticket:
        raise ValueError("unreadable ticket")
    return "billing" if "refund" in ticket else "support"


async def serve(
    sse: SSEEventEmitter, tg: TaskGroup, backend: str
) -> tuple[str, Callable[[], None]]:
    """Serve ``sse.app`` on a free loopback port; its URL and how to stop the server."""
    if backend == "trio":
        import trio
        from hypercorn.config import Config
        from hypercorn.trio import serve as hypercorn_serve

        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.loglevel = "WARNING"
        stop = trio.Event()
        serving = partial(hypercorn_serve, sse.app, config, shutdown_trigger=stop.wait)
        binds: list[str] = await tg.start(serving)
        return binds[0] + "/events", stop.set

    import uvicorn

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    server = uvicorn.Server(uvicorn.Config(sse.app, log_level="warning", lifespan="off"))
    tg.start_soon(server.serve, [listening])
    host, port = listening.getsockname()

    def stop_uvicorn() -> None:
        server.should_exit = True

    return f"http://{host}:{port}/events", stop_uvicorn


async def watch(url: str, received: Counter[str], done: Callable[[], Awaitable[None]]) -> None:
    """Read the stream to its end, as a dashboard would."""
    async with httpx.AsyncClient(timeout=30) as client, client.stream("GET", url) as response:
        print("client connected:", response.status_code, response.headers["content-type"])
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                received[event["type"]] += 1
                if event["type"] == "task.failed":
                    print("client saw a failure:", event["task_id"], event["error"]["message"])
    await done()


async def main(backend: str) -> None:
    sse = SSEEventEmitter()
    received: Counter[str] = Counter()
    finished = anyio.Event()

    async def done() -> None:
        finished.set()

    async with anyio.create_task_group() as tg:
        url, stop_server = await serve(sse, tg, backend)
        tg.start_soon(watch, url, received, done)
        await sse.wait_for_subscribers(1)  # the client is connected: nothing is missed
        tickets = ["refund please", "login broken", "????", "refund again", "hello"]
        async with AgentRuntime(event_emitter=sse) as runtime:
            results = await runtime.gather(
                classify, [TaskSpec(input=t, task_id=f"t{i}") for i, t in enumerate(tickets)]
            )
        print("runtime:", [r.output if r.is_ok() else "failed" for r in results])
        sse.close()  # ends the stream once the client has read it
        await finished.wait()
        stop_server()
    print("client received:", dict(sorted(received.items())))


if __name__ == "__main__":
    chosen = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "asyncio"
    anyio.run(main, chosen, backend=chosen)
