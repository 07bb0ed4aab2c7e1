"""The transport contract over RabbitMQ, with ``murmur worker`` processes."""

from __future__ import annotations

import pytest

from distributed import app
from distributed.brokers import delete_rabbit_queues, require
from distributed.contract import BrokerContract, PasswordContract, SubprocessWorkers, unserved
from murmur.distributed import AgentRegistry


class TestRabbitContract(SubprocessWorkers, BrokerContract, PasswordContract):
    unreachable_url = "amqp://user:secret@127.0.0.1:1/"

    @pytest.fixture(scope="class")
    @classmethod
    def broker_url(cls) -> str:
        return require("rabbit")

    @classmethod
    def cleanup(cls, url: str, namespace: str) -> None:
        # No management API to list them: one durable queue per agent a task was sent to
        # (the app's, and the one no worker serves). Reply queues went with their callers.
        agents = [*AgentRegistry.from_module(app).names(), unserved.__name__]
        delete_rabbit_queues(namespace, agents, url)
