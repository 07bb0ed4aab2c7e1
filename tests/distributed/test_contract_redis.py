"""The transport contract over Redis Streams, with ``murmur worker`` processes."""

from __future__ import annotations

import pytest

from distributed.brokers import delete_redis_keys, require
from distributed.contract import BrokerContract, PasswordContract, SubprocessWorkers


class TestRedisContract(SubprocessWorkers, BrokerContract, PasswordContract):
    unreachable_url = "redis://user:secret@127.0.0.1:1"

    @pytest.fixture(scope="class")
    @classmethod
    def broker_url(cls) -> str:
        return require("redis")

    @classmethod
    def cleanup(cls, url: str, namespace: str) -> None:
        delete_redis_keys(namespace, url)
