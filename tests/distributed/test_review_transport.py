"""Review of the caller's wait for a reply (its inbox and the inbox's own timer), adversarially:
the transport closed under a waiting attempt, a reconnection heard while waiting, and a
reply that arrives while the attempt is still being published.

Under Trio the caller's broker I/O runs on an asyncio helper loop, so the adapters here
signal the test through thread-safe events.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import anyio
import pytest

from murmur import AgentRuntime, RuntimeOptions, TaskSpec
from murmur._types import AgentResult, Usage
from murmur.distributed import BrokerTransport
from murmur.distributed._memory import MemoryAdapter
from murmur.distributed._wire import ResendMessage, ResultMessage, decode, decode_control, encode
from murmur.errors import InvalidStateError

pytestmark = pytest.mark.anyio

URL = "memory://review-transport"
HANG = 20.0


async def echo(text: str) -> str:
    return text


def transport_for(adapter: type[MemoryAdapter], **options: Any) -> BrokerTransport:
    transport = BrokerTransport(URL, namespace=f"t-{uuid.uuid4().hex[:8]}", **options)
    transport._adapter_class = adapter
    return transport


async def wait_for(event: threading.Event) -> None:
    await anyio.to_thread.run_sync(event.wait, abandon_on_cancel=True)


async def test_a_transport_closed_under_a_waiting_attempt_ends_it_with_an_error() -> None:
    published = threading.Event()

    class NoWorker(MemoryAdapter):
        async def publish_task(self, agent: str, data: bytes) -> None:
            await super().publish_task(agent, data)
            published.set()

    transport = transport_for(NoWorker)
    outcome: list[object] = []
    with anyio.fail_after(HANG):
        async with AgentRuntime(transport=transport) as runtime:

            async def call() -> None:
                try:
                    result = await runtime.run(echo, TaskSpec(input="x"))
                except Exception as exc:
                    outcome.append(exc)
                else:
                    outcome.append(result.error)

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await wait_for(published)
                await transport.aclose()
    (error,) = outcome
    assert isinstance(error, InvalidStateError)
    assert "closed" in str(error)


async def test_a_reconnection_heard_while_waiting_asks_for_the_result_again() -> None:
    """The connection coming back is put in each waiting attempt's inbox: the attempt asks
    the workers for its result again at once, not only after ``resend_every``."""
    published = threading.Event()
    asked = threading.Event()
    resends: list[ResendMessage] = []
    sent: list[bytes] = []

    class Reconnecting(MemoryAdapter):
        async def publish_task(self, agent: str, data: bytes) -> None:
            await super().publish_task(agent, data)
            sent.append(data)
            published.set()

        async def publish_control(self, data: bytes) -> None:
            message = decode_control(data)
            if isinstance(message, ResendMessage):
                resends.append(message)
                asked.set()
            await super().publish_control(data)

    transport = transport_for(Reconnecting, resend_every=3600)

    async def reconnect() -> None:
        transport._on_reconnect()
        await anyio.lowlevel.checkpoint()

    async def answer() -> None:
        (data,) = sent
        task = decode(data)
        result = ResultMessage(
            correlation_id=task.correlation_id,
            result=_ok(task.envelope.task.task_id, task.envelope.agent),
            worker="w1",
        )
        transport._on_reply(encode(result))
        await anyio.lowlevel.checkpoint()

    async def on_home(call: Any) -> None:
        if transport._bridge is not None and transport._home is not None:
            await transport._bridge.run(call)
        else:
            await call()

    with anyio.fail_after(HANG):
        async with AgentRuntime(
            transport=transport, options=RuntimeOptions(timeout_seconds=None)
        ) as runtime:
            results: list[Any] = []
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    results.append(await runtime.run(echo, TaskSpec(input="x")))

                tg.start_soon(call)
                await wait_for(published)
                await on_home(reconnect)
                await wait_for(asked)
                await on_home(answer)
    (resend,) = resends
    assert resend.correlation_ids == (decode(sent[0]).correlation_id,)
    (result,) = results
    assert result.unwrap() == "answered"
    assert result.worker == "w1"


def _ok(task_id: str, agent: str) -> AgentResult[Any]:
    return AgentResult[Any]._build("answered", None, Usage(), 1, 0.0, task_id, agent)
