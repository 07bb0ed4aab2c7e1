"""A raw FastStream caller/worker pair: the reference the ``distributed`` scenario's Murmur
rows are read against, on the same brokers, in the same run.

No Murmur here: the worker is a FastStream app that answers each task message (a task id, a
few bytes) by publishing the same bytes to the caller's reply channel; the caller publishes
tasks and waits for their replies. Two modes:

* ``one``: one message at a time. The worker's subscriber handles one message, publishes
  its reply, and the message is acknowledged (FastStream's default ack policy), then the
  next; the caller publishes each task with its own call, at most ``cap`` outstanding.
  Redis: a stream read by a consumer group, replies on a stream. NATS: a JetStream stream
  with a durable pull consumer, replies on a core subject. RabbitMQ: a durable queue,
  replies on a queue.
* ``batch`` (Redis and NATS; FastStream has no batch subscriber for RabbitMQ): the worker
  takes batches (Redis ``StreamSub(batch=True)``, NATS ``PullSub(batch=True)``, which
  waits up to ``NATS_BATCH_WAIT`` to fill a batch) and
  answers each batch in one pipeline (Redis) or back-to-back publishes (NATS), acking the
  batch at once; the caller publishes a whole batch in pipelined writes and reads its
  replies in batches.

Worker process: ``python -m benchmarks.faststream_pair '<json>'`` with ``{"kind", "url",
"namespace", "mode"}``; it prints ``ready`` on stdout once it consumes and runs until
SIGTERM. The caller (:class:`FastStreamCaller`) runs in the benchmark's own process.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable
from typing import Any

__all__ = ["CHUNK", "FastStreamCaller", "channels", "main"]

#: Messages per pipelined write (caller, batch mode) and per batch read (both sides).
CHUNK = 200
#: Seconds FastStream's NATS batch subscriber keeps pulling to fill a batch (it hands a
#: partial batch over only then): what a lone task waits at least. Shorter waits (5 ms,
#: 100 ms) left lone tasks waiting far longer (pull requests expiring with messages on
#: their way), so this pair's NATS batch mode is for throughput only.
NATS_BATCH_WAIT = 1.0
#: Commands a caller sends at once (the rest wait for a slot).
PUBLISH_SLOTS = 64
_LOGGER: Any = None


def channels(namespace: str) -> dict[str, str]:
    """Names of what the pair creates on a broker (the scenario deletes them after)."""
    return {
        "tasks": f"{namespace}.fs.tasks",
        "reply": f"{namespace}.fs.reply",
        "group": f"{namespace}-fs",
        "stream": f"{namespace}-fs",
    }


def _broker(kind: str, url: str) -> Any:
    if kind == "redis":
        from faststream.redis import RedisBroker

        # redis-py's pool refuses a command outright past max_connections (it does not
        # wait): the caller bounds its concurrent commands with PUBLISH_SLOTS instead.
        return RedisBroker(url, logger=_LOGGER, max_connections=2 * PUBLISH_SLOTS)
    if kind == "nats":
        from faststream.nats import NatsBroker

        return NatsBroker(url, logger=_LOGGER)
    from faststream.rabbit import RabbitBroker

    return RabbitBroker(url, logger=_LOGGER)


# -- worker ---------------------------------------------------------------------------------


def _subscribe_worker(broker: Any, kind: str, mode: str, names: dict[str, str]) -> None:
    reply = names["reply"]
    if kind == "redis":
        from faststream.redis import StreamSub

        if mode == "batch":

            @broker.subscriber(
                stream=StreamSub(
                    names["tasks"],
                    group=names["group"],
                    consumer="w",
                    batch=True,
                    max_records=CHUNK,
                ),
                no_reply=True,
            )
            async def redis_batch(bodies: list[int]) -> None:
                client = await broker.connect()
                async with client.pipeline(transaction=False) as pipe:
                    for body in bodies:
                        await broker.publish(body, stream=reply, pipeline=pipe)
                    await pipe.execute()

            return

        @broker.subscriber(
            stream=StreamSub(names["tasks"], group=names["group"], consumer="w"), no_reply=True
        )
        async def redis_one(body: int) -> None:
            await broker.publish(body, stream=reply)

        return
    if kind == "nats":
        from faststream.nats import JStream, PullSub

        stream = JStream(names["stream"], subjects=[names["tasks"]])
        if mode == "batch":

            @broker.subscriber(
                names["tasks"],
                stream=stream,
                durable="w",
                pull_sub=PullSub(batch_size=CHUNK, timeout=NATS_BATCH_WAIT, batch=True),
                no_reply=True,
            )
            async def nats_batch(bodies: list[int]) -> None:
                for body in bodies:
                    await broker.publish(body, reply)

            return

        @broker.subscriber(
            names["tasks"], stream=stream, durable="w", pull_sub=PullSub(), no_reply=True
        )
        async def nats_one(body: int) -> None:
            await broker.publish(body, reply)

        return

    @broker.subscriber(names["tasks"], no_reply=True)
    async def rabbit_one(body: int) -> None:
        await broker.publish(body, queue=reply)


async def _serve(config: dict[str, Any]) -> None:
    kind, mode = config["kind"], config["mode"]
    broker = _broker(kind, config["url"])
    _subscribe_worker(broker, kind, mode, channels(config["namespace"]))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await broker.start()
    print("ready", flush=True)
    try:
        await stop.wait()
    finally:
        await broker.stop()


def main(argv: list[str]) -> int:
    asyncio.run(_serve(json.loads(argv[0])))
    return 0


# -- caller ---------------------------------------------------------------------------------


class FastStreamCaller:
    """Publishes task ids and waits for their replies (run inside one asyncio loop).

    ``await caller.start()`` first (it subscribes to the reply channel), ``await
    caller.stop()`` at the end.
    """

    def __init__(self, kind: str, url: str, namespace: str, mode: str) -> None:
        self.kind, self.mode = kind, mode
        self.names = channels(namespace)
        self.broker = _broker(kind, url)
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._next = 0
        self._slots = asyncio.Semaphore(PUBLISH_SLOTS)
        self._subscribe_replies()

    def _resolve(self, body: int) -> None:
        future = self._waiting.pop(body, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _subscribe_replies(self) -> None:
        reply = self.names["reply"]
        if self.kind == "redis":
            from faststream.redis import StreamSub

            if self.mode == "batch":

                @self.broker.subscriber(
                    stream=StreamSub(reply, batch=True, max_records=CHUNK, last_id="0-0"),
                    no_reply=True,
                )
                async def on_replies(bodies: list[int]) -> None:
                    for body in bodies:
                        self._resolve(body)

                return

            @self.broker.subscriber(stream=StreamSub(reply, last_id="0-0"), no_reply=True)
            async def on_reply(body: int) -> None:
                self._resolve(body)

            return
        if self.kind == "nats":

            @self.broker.subscriber(reply, no_reply=True)
            async def on_nats_reply(body: int) -> None:
                self._resolve(body)

            return
        from faststream.rabbit import RabbitQueue

        @self.broker.subscriber(RabbitQueue(reply, auto_delete=True), no_reply=True)
        async def on_rabbit_reply(body: int) -> None:
            self._resolve(body)

    async def start(self) -> None:
        await self.broker.start()

    async def stop(self) -> None:
        await self.broker.stop()

    def _ids(self, n: int) -> list[int]:
        first, self._next = self._next, self._next + n
        return list(range(first, first + n))

    def _expect(self, ids: list[int]) -> list[asyncio.Future[None]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in ids]
        self._waiting.update(zip(ids, futures, strict=True))
        return futures

    async def _publish(self, body: int) -> None:
        async with self._slots:
            await self._publish_now(body)

    async def _publish_now(self, body: int) -> None:
        if self.kind == "redis":
            await self.broker.publish(body, stream=self.names["tasks"])
        elif self.kind == "nats":
            await self.broker.publish(body, self.names["tasks"], stream=self.names["stream"])
        else:
            await self.broker.publish(body, queue=self.names["tasks"])

    async def _publish_chunk(self, bodies: list[int]) -> None:
        if self.kind == "redis":
            client = await self.broker.connect()
            async with client.pipeline(transaction=False) as pipe:
                for body in bodies:
                    await self.broker.publish(body, stream=self.names["tasks"], pipeline=pipe)
                await pipe.execute()
        else:  # NATS: the publishes go out back to back, their acks awaited together
            await asyncio.gather(*(self._publish(body) for body in bodies))

    async def run_one(self) -> None:
        """One task, published and answered."""
        (body,) = ids = self._ids(1)
        (future,) = self._expect(ids)
        await self._publish(body)
        await future

    async def run_batch(self, n: int, cap: int) -> None:
        """``n`` tasks: one at a time with at most ``cap`` outstanding (mode ``one``), or
        published in pipelined chunks and all awaited (mode ``batch``)."""
        ids = self._ids(n)
        futures = self._expect(ids)
        if self.mode == "batch":
            for start in range(0, n, CHUNK):
                await self._publish_chunk(ids[start : start + CHUNK])
            await asyncio.gather(*futures)
            return
        limit = asyncio.Semaphore(cap)

        async def one(body: int, future: Awaitable[None]) -> None:
            async with limit:
                await self._publish(body)
                await future

        await asyncio.gather(*(one(b, f) for b, f in zip(ids, futures, strict=True)))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
