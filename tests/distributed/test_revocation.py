"""A caller revokes what may have reached the broker, and does not wait behind it.

A task publish that failed or timed out may still have reached the broker: the attempt is
revoked. A batch revoked as a whole cuts its publishes in progress short before it sends
its cancel, which would otherwise wait behind them on the connection.

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
from murmur.distributed import BrokerTransport
from murmur.distributed._memory import MemoryAdapter
from murmur.distributed._wire import CancelMessage, decode, decode_control
from murmur.errors import BrokerUnavailableError
from support import cancel_when_ready

pytestmark = pytest.mark.anyio

URL = "memory://revocation"
HANG = 20.0


async def echo(text: str) -> str:
    return text


def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


class Controls(MemoryAdapter):
    """Keeps what this caller published on the task and control channels."""

    published: list[bytes]
    controls: list[CancelMessage]

    async def publish_control(self, data: bytes) -> None:
        message = decode_control(data)
        assert message is not None
        type(self).controls.append(message)
        await super().publish_control(data)

    async def publish_task(self, agent: str, data: bytes) -> None:
        await super().publish_task(agent, data)
        type(self).published.append(data)


def caller(adapter: type[MemoryAdapter], ns: str, **options: Any) -> AgentRuntime:
    transport = BrokerTransport(URL, namespace=ns, reply_grace=5)
    transport._adapter_class = adapter
    return AgentRuntime(transport=transport, options=RuntimeOptions(**options))


async def test_a_task_whose_publish_failed_is_revoked() -> None:
    class SentThenFailed(Controls):
        published: list[bytes] = []  # noqa: RUF012 - one test's record
        controls: list[CancelMessage] = []  # noqa: RUF012

        async def publish_task(self, agent: str, data: bytes) -> None:
            await super().publish_task(agent, data)  # it reached the broker...
            raise ConnectionError("connection reset")  # ...and the caller cannot know

    async with caller(SentThenFailed, namespace()) as runtime:
        result = await runtime.run(echo, TaskSpec(input="x"))
    assert isinstance(result.error, BrokerUnavailableError)
    (sent,) = SentThenFailed.published
    (cancel,) = SentThenFailed.controls
    assert cancel.correlation_ids == (decode(sent).correlation_id,)
    assert cancel.reason == "its publish failed"


async def test_a_task_whose_publish_timed_out_is_revoked() -> None:
    class SentNeverConfirmed(Controls):
        published: list[bytes] = []  # noqa: RUF012
        controls: list[CancelMessage] = []  # noqa: RUF012

        async def publish_task(self, agent: str, data: bytes) -> None:
            await super().publish_task(agent, data)
            await anyio.sleep_forever()  # the broker's confirmation never comes

    async with caller(SentNeverConfirmed, namespace(), timeout_seconds=0.2) as runtime:
        result = await runtime.run(echo, TaskSpec(input="x"))
    assert isinstance(result.error, BrokerUnavailableError)
    assert "before its deadline" in str(result.error)
    (sent,) = SentNeverConfirmed.published
    (cancel,) = SentNeverConfirmed.controls
    assert cancel.correlation_ids == (decode(sent).correlation_id,)


async def test_a_batch_revoke_does_not_wait_behind_its_attempts_publishes() -> None:
    # On one connection a control message waits behind the task messages being published
    # (RabbitMQ: hundreds awaiting their confirms): the revoke cuts those short first.
    publishing = 0
    stuck = threading.Event()

    class OneConnection(MemoryAdapter):
        published: list[bytes] = []  # noqa: RUF012
        controls: list[CancelMessage] = []  # noqa: RUF012

        async def publish_task(self, agent: str, data: bytes) -> None:
            nonlocal publishing
            publishing += 1
            try:
                await super().publish_task(agent, data)
                if publishing == 3:
                    stuck.set()
                await anyio.sleep_forever()  # no confirmation until cut short
            finally:
                publishing -= 1

        async def publish_control(self, data: bytes) -> None:
            assert publishing == 0, "the cancel went out behind the publishes"
            message = decode_control(data)
            assert message is not None
            type(self).controls.append(message)
            await super().publish_control(data)

    with anyio.fail_after(HANG):
        async with caller(OneConnection, namespace()) as runtime:
            tasks = [TaskSpec(input=str(i)) for i in range(3)]
            outcome = await cancel_when_ready(
                lambda: runtime.gather(echo, tasks),
                lambda: anyio.to_thread.run_sync(stuck.wait, abandon_on_cancel=True),
            )
    assert outcome.propagated
    (cancel,) = OneConnection.controls
    assert len(cancel.batch_ids) == 1
    assert len(cancel.correlation_ids) == 3
