"""SSEEventEmitter: the event stream as Server-Sent Events, in-process and over real HTTP."""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
import sniffio

from murmur import AgentRuntime, EventType, RuntimeEvent, TaskSpec
from murmur.events.sse import SSEEventEmitter, SSESubscription

pytestmark = pytest.mark.anyio

LIMIT = 30  # seconds before a stuck test fails instead of hanging


def event(
    n: int,
    type: EventType = EventType.TASK_STARTED,
    agent: str = "writer",
    trace_id: str = "t1",
    **data: Any,
) -> RuntimeEvent:
    return RuntimeEvent(type=type, agent=agent, trace_id=trace_id, task_id=f"task-{n}", data=data)


async def take(sub: SSESubscription, count: int) -> list[RuntimeEvent]:
    got: list[RuntimeEvent] = []
    with anyio.fail_after(LIMIT):
        async for ev in sub:
            got.append(ev)
            if len(got) == count:
                break
    return got


# --- the iterator API -------------------------------------------------------------------


async def test_subscription_yields_events_in_order_with_increasing_ids() -> None:
    emitter = SSEEventEmitter()
    async with emitter.subscribe() as sub:
        assert sub.last_event_id == 0
        sent = [event(i) for i in range(5)]
        for ev in sent:
            await emitter.emit(ev)
        ids = []
        for expected in sent:
            got = (await take(sub, 1))[0]
            assert got == expected
            ids.append(sub.last_event_id)
        assert ids == [1, 2, 3, 4, 5]
        assert sub.delivered == 5
        assert emitter.last_event_id == 5


async def test_subscription_waits_for_live_events() -> None:
    emitter = SSEEventEmitter()
    got: list[RuntimeEvent] = []
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            got.extend(await take(emitter.subscribe(), 3))

        tg.start_soon(consume)
        with anyio.fail_after(LIMIT):
            await emitter.wait_for_subscribers(1)
        for i in range(3):
            await emitter.emit(event(i))
            await anyio.lowlevel.checkpoint()
    assert [e.task_id for e in got] == ["task-0", "task-1", "task-2"]


async def test_filters_by_type_agent_and_trace() -> None:
    emitter = SSEEventEmitter()
    by_type = emitter.subscribe(types=["task.failed", "TASK_SUCCEEDED"])
    by_agent = emitter.subscribe(agent="critic")
    by_trace = emitter.subscribe(trace_id=["t2", "t3"])
    combined = emitter.subscribe(types=EventType.TASK_FAILED, agent=["critic"], trace_id="t2")
    sent = [
        event(1, EventType.TASK_STARTED, "writer", "t1"),
        event(2, EventType.TASK_FAILED, "critic", "t2"),
        event(3, EventType.TASK_SUCCEEDED, "writer", "t3"),
        event(4, EventType.TASK_FAILED, "critic", "t1"),
        event(5, EventType.RETRY_SCHEDULED, "critic", "t2"),
    ]
    for ev in sent:
        emitter.emit_nowait(ev)
    emitter.close()
    assert [e.task_id for e in await take(by_type, 99)] == ["task-2", "task-3", "task-4"]
    assert [e.task_id for e in await take(by_agent, 99)] == ["task-2", "task-4", "task-5"]
    assert [e.task_id for e in await take(by_trace, 99)] == ["task-2", "task-3", "task-5"]
    assert [e.task_id for e in await take(combined, 99)] == ["task-2"]


async def test_subscriptions_share_one_entry_per_event_so_it_is_rendered_once() -> None:
    emitter = SSEEventEmitter()
    async with emitter.subscribe() as first, emitter.subscribe() as second:
        await emitter.emit(event(1))
        entry = first._pending[0]
        assert second._pending[0] is entry
        assert entry.wire() is second._pending[0].wire()
        assert entry.wire().startswith(b"id: 1\nevent: task.started\ndata: {")
        assert [e.task_id for e in await take(first, 1)] == ["task-1"]
        assert [e.task_id for e in await take(second, 1)] == ["task-1"]


async def test_cancelled_waits_leave_no_waiters_behind() -> None:
    emitter = SSEEventEmitter()
    sub = emitter.subscribe()
    for _ in range(50):
        with anyio.CancelScope() as scope:
            scope.cancel()
            await emitter.wait_for_subscribers(2)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await sub.wait_closed()
    assert emitter._subscriber_waiters == []
    assert sub._closed_waiters == []
    # Waiting still works afterwards (whether the waits start before or after the events).
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(emitter.wait_for_subscribers, 2)
            second = emitter.subscribe()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sub.wait_closed)
            sub.close()
    second.close()


async def test_an_unknown_event_type_is_refused() -> None:
    emitter = SSEEventEmitter()
    with pytest.raises(ValueError, match=r"unknown event type 'task\.exploded'"):
        emitter.subscribe(types="task.started,task.exploded")
    assert emitter.subscriptions == ()


async def test_resume_replays_only_the_missed_events_then_goes_live() -> None:
    emitter = SSEEventEmitter(replay=100)
    for i in range(1, 6):
        await emitter.emit(event(i))
    async with emitter.subscribe(last_event_id=3) as sub:
        await emitter.emit(event(6))
        got = await take(sub, 3)
        assert [e.task_id for e in got] == ["task-4", "task-5", "task-6"]
        assert sub.last_event_id == 6
        assert sub.resume_gap == 0


async def test_resume_from_zero_replays_the_buffer_by_filter() -> None:
    emitter = SSEEventEmitter()
    await emitter.emit(event(1, agent="a"))
    await emitter.emit(event(2, agent="b"))
    await emitter.emit(event(3, agent="a"))
    sub = emitter.subscribe(agent="a", last_event_id=0)
    emitter.close()
    assert [e.task_id for e in await take(sub, 99)] == ["task-1", "task-3"]


async def test_resume_from_beyond_the_replay_window_reports_the_gap() -> None:
    emitter = SSEEventEmitter(replay=3)
    for i in range(1, 11):
        await emitter.emit(event(i))
    sub = emitter.subscribe(last_event_id=2)
    emitter.close()
    assert [e.task_id for e in await take(sub, 99)] == ["task-8", "task-9", "task-10"]
    assert sub.resume_gap == 5  # ids 3..7 had already left the buffer


async def test_resume_with_an_id_from_an_earlier_process_replays_everything() -> None:
    emitter = SSEEventEmitter()
    for i in range(1, 4):
        await emitter.emit(event(i))
    sub = emitter.subscribe(last_event_id=9000)
    emitter.close()
    assert [e.task_id for e in await take(sub, 99)] == ["task-1", "task-2", "task-3"]


async def test_a_slow_subscription_is_dropped_and_emit_never_waits() -> None:
    emitter = SSEEventEmitter(replay=100)
    slow = emitter.subscribe(buffer=3)
    fast = emitter.subscribe(buffer=100)
    # Nothing consumes while these are emitted: emit() must neither wait nor fail.
    for i in range(1, 11):
        await emitter.emit(event(i))
    assert slow.overflowed
    assert slow.closed
    assert slow.dropped == 4  # three queued, discarded, and the one that did not fit
    assert emitter.dropped == 4
    assert emitter.dropped_subscriptions == 1
    assert emitter.subscriptions == (fast,)
    # Its queue was discarded: it ends at once, and says where to resume from.
    assert await take(slow, 99) == []
    assert slow.last_event_id == 0
    resumed = emitter.subscribe(last_event_id=slow.last_event_id)
    assert len(await take(resumed, 10)) == 10
    assert [e.task_id for e in await take(fast, 10)] == [f"task-{i}" for i in range(1, 11)]
    assert not fast.overflowed
    assert fast.dropped == 0


async def test_close_ends_streams_after_their_queued_events() -> None:
    emitter = SSEEventEmitter()
    sub = emitter.subscribe()
    await emitter.emit(event(1))
    await emitter.emit(event(2))
    emitter.close()
    await emitter.emit(event(3))  # ignored once closed
    assert [e.task_id for e in await take(sub, 99)] == ["task-1", "task-2"]
    assert emitter.closed
    assert emitter.subscriptions == ()
    with anyio.fail_after(LIMIT):
        await sub.wait_closed()
        await emitter.wait_for_subscribers(1)  # returns: nobody can subscribe any more
    with pytest.raises(RuntimeError, match="closed"):
        emitter.subscribe()


async def test_a_closed_or_abandoned_subscription_is_forgotten() -> None:
    emitter = SSEEventEmitter()
    async with emitter.subscribe() as sub:
        assert emitter.subscriptions == (sub,)
    assert sub.closed
    assert emitter.subscriptions == ()

    abandoned = emitter.subscribe()
    assert len(emitter.subscriptions) == 1
    del abandoned
    gc.collect()
    assert emitter.subscriptions == ()


async def test_emit_from_another_thread_wakes_the_subscriber() -> None:
    emitter = SSEEventEmitter()
    got: list[RuntimeEvent] = []
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            got.extend(await take(emitter.subscribe(), 2))

        tg.start_soon(consume)
        with anyio.fail_after(LIMIT):
            await emitter.wait_for_subscribers(1)
            await anyio.wait_all_tasks_blocked()
            # A plain thread, then a thread running its own event loop (like the bridge).
            await anyio.to_thread.run_sync(emitter.emit_nowait, event(1))
            await anyio.to_thread.run_sync(lambda: anyio.run(emitter.emit, event(2)))
    assert [e.task_id for e in got] == ["task-1", "task-2"]


async def test_the_runtime_feeds_subscriptions() -> None:
    emitter = SSEEventEmitter()
    sub = emitter.subscribe(types=["task.started", "task.succeeded"])

    async def echo(x: int) -> int:
        return x

    async with AgentRuntime(event_emitter=emitter) as rt:
        await rt.gather(echo, [TaskSpec(input=i) for i in range(3)])
    emitter.close()
    got = await take(sub, 99)
    assert (
        sorted(e.type for e in got) == [EventType.TASK_STARTED] * 3 + [EventType.TASK_SUCCEEDED] * 3
    )
    assert len({e.trace_id for e in got}) == 1


async def call_app(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    """Call an ASGI app once with a request that has no body; what it sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with anyio.fail_after(LIMIT):
        await app(scope, receive, send)
    return sent


@pytest.mark.parametrize(
    ("path", "root_path", "status"),
    [
        ("/events/stream", "/events", 200),  # Starlette >= 0.33: path includes the mount
        ("/stream", "/events", 200),  # older mounts: the path below the mount
        ("/stream/", "", 200),
        ("/events/other", "/events", 404),
        ("/", "", 404),
    ],
)
async def test_app_routes_below_its_mount_point(path: str, root_path: str, status: int) -> None:
    emitter = SSEEventEmitter(path="/stream")
    scope = {"type": "http", "method": "HEAD", "path": path, "root_path": root_path}
    start = (await call_app(emitter.app, scope))[0]
    assert start["type"] == "http.response.start"
    assert start["status"] == status
    assert emitter.subscriptions == ()


async def test_app_refuses_websockets() -> None:
    sent = await call_app(SSEEventEmitter().app, {"type": "websocket", "path": "/"})
    assert sent == [{"type": "websocket.close", "code": 1003}]


# --- over real HTTP ---------------------------------------------------------------------


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # clients may connect before the server has started accepting
    return sock


@asynccontextmanager
async def uvicorn_server(app: Any) -> AsyncIterator[str]:
    import uvicorn

    sock = listening_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            yield f"http://127.0.0.1:{port}"
            server.should_exit = True
    finally:
        sock.close()


@asynccontextmanager
async def hypercorn_server(app: Any) -> AsyncIterator[str]:
    from hypercorn.config import Config

    sock = listening_socket()
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{os.dup(sock.fileno())}"]  # hypercorn owns (and closes) the dup
    config.loglevel = "WARNING"
    stop = anyio.Event()
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve  # type: ignore[assignment]
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(app, config, shutdown_trigger=stop.wait))
            yield f"http://127.0.0.1:{port}"
            stop.set()
    finally:
        sock.close()


# Each real-server test runs on every server/backend pair that exists: uvicorn runs on
# asyncio only, hypercorn on both.
on_real_servers = pytest.mark.parametrize(
    ("anyio_backend", "server_name"),
    [("asyncio", "uvicorn"), ("asyncio", "hypercorn"), ("trio", "hypercorn")],
)


@pytest.fixture
def server(server_name: str) -> Callable[[Any], Any]:
    """A real ASGI server on loopback."""
    return uvicorn_server if server_name == "uvicorn" else hypercorn_server


@dataclass
class Message:
    id: int | None = None
    event: str | None = None
    data: str = ""
    comments: list[str] = field(default_factory=list)

    def runtime_event(self) -> RuntimeEvent:
        parsed = RuntimeEvent.model_validate_json(self.data)
        assert self.event == parsed.type.value
        return parsed


class SSEReader:
    """A minimal Server-Sent Events parser over a streaming httpx response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self) -> Message | None:
        """The next message, or ``None`` at the end of the stream."""
        message = Message()
        seen = False
        async for line in self.lines:
            if not line:
                if seen:
                    return message
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if not name:
                self.comments.append(value)
                continue
            seen = True
            if name == "id":
                message.id = int(value)
            elif name == "event":
                message.event = value
            elif name == "data":
                message.data = value
        return None

    async def messages(self, count: int) -> list[Message]:
        got = []
        with anyio.fail_after(LIMIT):
            while len(got) < count:
                message = await self.next()
                assert message is not None, f"stream ended after {len(got)} messages"
                got.append(message)
        return got

    async def rest(self) -> list[Message]:
        """Every message until the stream ends (or breaks off)."""
        got: list[Message] = []
        with anyio.fail_after(LIMIT):
            try:
                while (message := await self.next()) is not None:
                    got.append(message)
            except (httpx.RemoteProtocolError, httpx.ReadError):
                pass  # a dropped client's connection may be cut short
        return got


@asynccontextmanager
async def sse(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[SSEReader]:
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = SSEReader(response)
        try:
            yield reader
        finally:
            await reader.lines.aclose()  # type: ignore[attr-defined]


@asynccontextmanager
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(LIMIT)) as client:
        yield client


@on_real_servers
async def test_http_client_sees_a_running_gather_live_in_order(server: Any) -> None:
    emitter = SSEEventEmitter()
    release = anyio.Event()

    async def slow_echo(x: int) -> int:
        await release.wait()
        return x

    async with server(emitter.app) as url, http_client() as client, sse(client, url) as reader:
        async with AgentRuntime(event_emitter=emitter) as rt, anyio.create_task_group() as tg:
            tg.start_soon(lambda: rt.gather(slow_echo, [TaskSpec(input=i) for i in range(3)]))
            # Live: the starts arrive while every task is still waiting to be released.
            head = await reader.messages(4)
            assert [m.runtime_event().type for m in head] == [EventType.BATCH_STARTED] + [
                EventType.TASK_STARTED
            ] * 3
            release.set()
            tail = await reader.messages(4)
        emitter.close()
        assert await reader.rest() == []
    messages = head + tail
    events = [m.runtime_event() for m in messages]
    assert [m.id for m in messages] == list(range(1, 9))
    assert [e.type for e in events][-1] == EventType.BATCH_COMPLETED
    assert sorted(e.type for e in events[4:7]) == [EventType.TASK_SUCCEEDED] * 3
    assert len({e.trace_id for e in events}) == 1
    assert reader.comments[0] == "murmur events"


@on_real_servers
async def test_http_resume_with_last_event_id_replays_only_missed_events(server: Any) -> None:
    emitter = SSEEventEmitter(replay=100)
    async with server(emitter.app) as url, http_client() as client:
        async with sse(client, url) as reader:
            await emitter.emit(event(1))
            await emitter.emit(event(2))
            first = await reader.messages(2)
        last_seen = first[-1].id
        assert last_seen == 2
        for i in range(3, 6):  # while nobody is connected
            await emitter.emit(event(i))
        async with sse(client, url, {"Last-Event-ID": str(last_seen)}) as reader:
            replayed = await reader.messages(3)
            await emitter.emit(event(6))
            live = await reader.messages(1)
            emitter.close()
            assert await reader.rest() == []
    got = replayed + live
    assert [m.id for m in got] == [3, 4, 5, 6]
    assert [m.runtime_event().task_id for m in got] == ["task-3", "task-4", "task-5", "task-6"]


@on_real_servers
async def test_http_filters_by_query_parameters(server: Any) -> None:
    emitter = SSEEventEmitter()
    async with server(emitter.app) as url, http_client() as client:
        query = "?type=task.failed&type=TASK_SUCCEEDED&agent=critic&trace_id=t2"
        async with sse(client, url + query) as reader, sse(client, url + "?agent=writer") as all_w:
            await emitter.emit(event(1, EventType.TASK_FAILED, "critic", "t2"))
            await emitter.emit(event(2, EventType.TASK_FAILED, "writer", "t2"))
            await emitter.emit(event(3, EventType.TASK_STARTED, "critic", "t2"))
            await emitter.emit(event(4, EventType.TASK_SUCCEEDED, "critic", "t1"))
            await emitter.emit(event(5, EventType.TASK_SUCCEEDED, "critic", "t2"))
            emitter.close()
            filtered = await reader.rest()
            writer = await all_w.rest()
    assert [(m.id, m.runtime_event().task_id) for m in filtered] == [(1, "task-1"), (5, "task-5")]
    assert [(m.id, m.runtime_event().task_id) for m in writer] == [(2, "task-2")]


@on_real_servers
async def test_http_routing_and_refusals(server: Any) -> None:
    emitter = SSEEventEmitter(path="/events")
    async with server(emitter.app) as url, http_client() as client:
        assert (await client.get(url + "/elsewhere")).status_code == 404
        post = await client.post(url + "/events")
        assert post.status_code == 405
        assert post.headers["allow"] == "GET, HEAD"
        bad = await client.get(url + "/events?type=nope")
        assert bad.status_code == 400
        assert "unknown event type 'nope'" in bad.text
        head = await client.head(url + "/events/")
        assert head.status_code == 200
        assert head.headers["content-type"].startswith("text/event-stream")
        async with sse(client, url + "/events") as reader:
            await emitter.emit(event(1))
            assert (await reader.messages(1))[0].runtime_event().task_id == "task-1"
            emitter.close()
        assert (await client.get(url + "/events")).status_code == 503
    assert emitter.subscriptions == ()


@on_real_servers
async def test_http_client_that_disconnects_is_removed(server: Any) -> None:
    emitter = SSEEventEmitter()
    async with server(emitter.app) as url, http_client() as client:
        async with sse(client, url) as reader:
            (sub,) = emitter.subscriptions
            assert sub.client is not None
            assert sub.client[0] == "127.0.0.1"
            await emitter.emit(event(1))
            await reader.messages(1)
        # The client hung up without reading further: its subscription goes.
        with anyio.fail_after(LIMIT):
            await sub.wait_closed()
        assert emitter.subscriptions == ()
        assert not sub.overflowed
        await emitter.emit(event(2))  # nobody left to wake: still fine
        emitter.close()


@on_real_servers
async def test_http_keepalive_comments_flow_while_idle(server: Any) -> None:
    emitter = SSEEventEmitter(keepalive=0.01)
    async with server(emitter.app) as url, http_client() as client, sse(client, url) as reader:
        with anyio.fail_after(LIMIT):
            async for line in reader.lines:
                if line == ": keep-alive":
                    break
        emitter.close()


@on_real_servers
async def test_http_slow_client_is_dropped_and_resumes_without_loss(server: Any) -> None:
    """A client that stops reading is dropped; the runtime and other clients never wait.

    Events are emitted in lockstep with a fast client; the slow one reads nothing until the
    server's socket buffers and its queue are full and it is dropped. It then reads what had
    reached it, reconnects with Last-Event-ID, and the replay buffer fills the gap.
    """
    emitter = SSEEventEmitter(replay=100_000, client_buffer=8)
    blob = "x" * 65_536  # big events fill the socket buffers quickly
    async with server(emitter.app) as url, http_client() as fast, http_client() as slow:
        async with sse(fast, url) as fast_reader, sse(slow, url + "?type=task.started") as slow_r:
            (slow_sub,) = [s for s in emitter.subscriptions if s.types is not None]
            sent = 0
            while not slow_sub.overflowed:
                assert sent < 20_000, "the slow client was never dropped"
                sent += 1
                await emitter.emit(event(sent, blob=blob))
                (message,) = await fast_reader.messages(1)
                assert message.id == sent
            assert emitter.dropped_subscriptions == 1
            assert emitter.dropped == slow_sub.dropped > 0
            assert len(emitter.subscriptions) == 1  # the fast one, still served
            before_drop = await slow_r.rest()
        ids = [m.id for m in before_drop]
        assert ids == list(range(1, len(ids) + 1))  # a clean prefix, nothing skipped
        resume = {"Last-Event-ID": str(ids[-1])} if ids else {}
        async with sse(slow, url + "?type=task.started", resume) as slow_r:
            rest = await slow_r.messages(sent - len(ids))
            emitter.close()
            assert await slow_r.rest() == []
            assert await fast_reader.rest() == []
    assert ids + [m.id for m in rest] == list(range(1, sent + 1))
    assert rest[-1].runtime_event().data["blob"] == blob
