"""Kafka client settings shared by the Stream API, collectors and tests (one place).

Group joins against the embedded Tansu broker take about half the consumer's
``session.timeout.ms`` (the broker waits that long for other members), and with librdkafka's
defaults (45 s session, 3 s heartbeat) a join can stall for many seconds.  Hence:

* :func:`consumer_config` — the defaults ``Stream.from_kafka`` uses: manual commits, a 6 s
  session (the smallest a stock Kafka broker accepts, ``group.min.session.timeout.ms``) and a
  1 s heartbeat.  Works against Kafka, Redpanda and Tansu.
* :func:`fast_consumer_config` — for tests and local demos against the embedded broker: a 2 s
  session and 100 ms heartbeat, so a group is joined in about one second and a killed member's
  partitions move to a new member within about two seconds.  Stock Kafka rejects sessions
  below 6 s, so do not use it against a real cluster.

* :func:`live_consumer_config` / :data:`LIVE_PRODUCER` — the tick-to-signal path (collectors
  → live monitor): the producer sends each record at once (``linger.ms`` 0) and the consumer
  fetches with ``fetch.wait.max.ms`` 1.  Tansu 0.6 (the embedded broker) answers a fetch only
  after sleeping out ``fetch.wait.max.ms`` even when it found data, and returns nothing at 0, so
  1 ms is its fastest setting (``benchmarks/kafka_latency.py``).  A real Kafka broker answers as
  soon as data is there; raise it there to spare idle fetch requests.

Where no consumer group is needed (reading a topic back in a test), assign partitions
explicitly with :func:`assign_all` instead: no join at all.
"""
from __future__ import annotations

from typing import Any, Dict, List

#: librdkafka settings for a low-latency producer: small linger, idempotence off (Tansu does
#: not need it), compression off (local broker), bounded retries.
PRODUCER_DEFAULTS: Dict[str, Any] = {
    "linger.ms": 5,
    "batch.num.messages": 10000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
}

#: The live consumer's ``fetch.wait.max.ms`` (Tansu: the smallest value that returns data).
LIVE_FETCH_WAIT_MAX_MS = 1

#: Producer overrides for the live path: every record is sent at once, no Nagle delay.
LIVE_PRODUCER: Dict[str, Any] = {"linger.ms": 0, "socket.nagle.disable": True}


def consumer_config(bootstrap_servers: str, group_id: str, *, from_beginning: bool = False,
                    **overrides: Any) -> Dict[str, Any]:
    """Consumer settings for at-least-once processing (offsets committed by the caller)."""
    cfg: Dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "fetch.wait.max.ms": 50,
        "topic.metadata.refresh.interval.ms": 10000,
        "log_level": 3,
    }
    cfg.update(overrides)
    return cfg


def fast_consumer_config(**overrides: Any) -> Dict[str, Any]:
    """Overrides that make group joins and failover fast against the embedded broker."""
    cfg: Dict[str, Any] = {
        "session.timeout.ms": 2000,
        "heartbeat.interval.ms": 100,
        "fetch.wait.max.ms": 10,
        "topic.metadata.refresh.interval.ms": 1000,
    }
    cfg.update(overrides)
    return cfg


def live_consumer_config(**overrides: Any) -> Dict[str, Any]:
    """Consumer overrides for the live tick-to-signal path (see module docstring)."""
    cfg: Dict[str, Any] = {"fetch.wait.max.ms": LIVE_FETCH_WAIT_MAX_MS,
                           "socket.nagle.disable": True}
    cfg.update(overrides)
    return cfg


def producer_config(bootstrap_servers: str, **overrides: Any) -> Dict[str, Any]:
    cfg: Dict[str, Any] = {"bootstrap.servers": bootstrap_servers, **PRODUCER_DEFAULTS}
    cfg.update(overrides)
    return cfg


def assign_all(consumer: Any, topic: str, *, from_beginning: bool = True,
               timeout_s: float = 5.0) -> List[Any]:
    """Assign every partition of ``topic`` to ``consumer`` without joining a group."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

    md = consumer.list_topics(topic=topic, timeout=timeout_s)
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise KeyError(f"topic {topic!r} not found on the broker")
    offset = OFFSET_BEGINNING if from_beginning else OFFSET_END
    parts = [TopicPartition(topic, p, offset) for p in sorted(meta.partitions)]
    consumer.assign(parts)
    return parts

