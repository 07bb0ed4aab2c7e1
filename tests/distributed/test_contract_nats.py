"""The transport contract over NATS JetStream, with ``murmur worker`` processes."""

from __future__ import annotations

import pytest

from distributed.brokers import delete_nats_stream, require
from distributed.contract import BrokerContract, PasswordContract, SubprocessWorkers


class TestNatsContract(SubprocessWorkers, BrokerContract, PasswordContract):
    unreachable_url = "nats://user:secret@127.0.0.1:1"

    @pytest.fixture(scope="class")
    @classmethod
    def broker_url(cls) -> str:
        return require("nats")

    @classmethod
    def cleanup(cls, url: str, namespace: str) -> None:
        delete_nats_stream(namespace, url)  # its consumers go with it
