"""The transport contract over ``memory://``, with an in-process worker."""

from __future__ import annotations

import uuid

import pytest

from distributed.contract import BrokerContract


class TestMemoryContract(BrokerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def broker_url(cls) -> str:
        return f"memory://contract-{uuid.uuid4().hex[:8]}"

    @classmethod
    def cleanup(cls, url: str, namespace: str) -> None:
        from murmur.distributed import _memory

        hub = f"{url.partition('://')[2]}|{namespace}"
        _memory._hubs.pop(hub, None)  # what no worker took (the unserved agent's task)
