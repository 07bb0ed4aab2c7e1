"""The transport contract over Kafka, through ``in_memory_kafka()``, with in-process workers.

No Kafka server runs where Murmur is developed: every ``KafkaAdapter`` created while
``in_memory_kafka()`` is active shares one in-memory Kafka (FastStream's test broker), which
only adapters in this process reach, so the workers are in-process ``Worker``s. The in-memory
Kafka is not nestable: the class holds one for all its tests (class-scoped ``broker_url``),
and nothing else in the class opens another; it goes, with everything on it, after them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from distributed.contract import BrokerContract
from murmur.distributed._kafka import in_memory_kafka


class TestKafkaContract(BrokerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def broker_url(cls) -> Iterator[str]:
        with in_memory_kafka():
            yield "kafka://kafka.prod:9092"  # the product page's
