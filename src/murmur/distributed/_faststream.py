"""What the FastStream-based adapters share: raw bodies, the message parameter, hand-over.

Imported only by the broker adapters (it imports FastStream), never by ``_adapter``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
from faststream import Context

from ._adapter import Delivery, TaskHandler

__all__ = ["MESSAGE", "hand_over", "raw_body"]

#: FastStream's parameter that hands a handler the received message object.
MESSAGE: Any = Context("message")


async def raw_body(message: Any, original: Any = None) -> bytes:
    """FastStream's decoder, replaced: the handler gets the message's bytes untouched."""
    body: bytes = message.body
    return body


async def hand_over(handler: TaskHandler, body: bytes, delivery: Delivery) -> None:
    """Give one task message to the worker; if that is interrupted (the subscriber is
    stopped while the worker's slots are all busy), the message was not taken: release
    it at once rather than leave it to the broker's redelivery timeout."""
    try:
        await handler(body, delivery)
    except BaseException:
        # If the connection is going too, the broker redelivers it later.
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await delivery.nack()
        raise
