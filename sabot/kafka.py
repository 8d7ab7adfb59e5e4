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
  fetches with ``fetch.wait.max.ms`` 10.  Tansu 0.6 (the embedded broker) answers a fetch only
  after sleeping out ``fetch.wait.max.ms`` even when it found data, and returns nothing at 0.
  1 ms would be its fastest setting, but a consumer fetching that often (hundreds of fetches a
  second) stopped getting answers after about 100 s in every long demo we ran (three of three,
  ~2,000 records a topic), while 10 ms and 100 ms kept reading; 10 ms costs ~2 ms of median
  tick-to-signal latency.  A real Kafka broker answers as soon as data is there.

Where no consumer group is needed (reading a topic back in a test), assign partitions
explicitly with :func:`assign_all` instead: no join at all.

Security (SASL, TLS) and any other librdkafka setting reach every client the project creates
through one *client configuration*: a mapping of librdkafka properties (``{"security.protocol":
"SASL_SSL", "sasl.mechanism": "PLAIN", ...}``) given as ``kafka_config=`` in the API or read
from a librdkafka properties file with :func:`read_client_properties` (``--kafka-config FILE``
on every command).  :func:`client_config` lays it over the role's defaults for consumers,
producers and admin clients alike.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Union

#: librdkafka settings for a low-latency producer: small linger, idempotence off (Tansu does
#: not need it), compression off (local broker), bounded retries.
PRODUCER_DEFAULTS: Dict[str, Any] = {
    "linger.ms": 5,
    "batch.num.messages": 10000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
}

#: The live consumer's ``fetch.wait.max.ms`` (see the module docstring for why not 1 on Tansu).
LIVE_FETCH_WAIT_MAX_MS = 10

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



class KafkaConfigError(ValueError):
    """A client configuration file or mapping is malformed (the message names file, line, key)."""


#: Keys a client configuration may not set: they belong to the role of each client.
_ROLE_KEYS = frozenset({"group.id", "enable.auto.commit", "enable.auto.offset.store"})


def read_client_properties(path: Union[str, "os.PathLike[str]"]) -> Dict[str, str]:
    """librdkafka properties from a file: one ``key=value`` per line, ``#`` or ``!`` comments.

    The format of librdkafka's and Kafka's ``client.properties`` (``security.protocol=SASL_SSL``,
    ``sasl.username=...``).  Values stay strings (librdkafka parses them).  Raises
    :class:`KafkaConfigError` naming the file and line for anything else, and ``OSError``
    (``FileNotFoundError``, ``PermissionError``) when the file cannot be read.
    """
    out: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line[0] in "#!":
                continue
            sep = min((i for i in (line.find("="), line.find(":")) if i > 0), default=-1)
            if sep <= 0:
                raise KafkaConfigError(f"{path}:{lineno}: expected key=value, got {line!r}")
            key, value = line[:sep].strip(), line[sep + 1:].strip()
            if not key or any(c.isspace() for c in key):
                raise KafkaConfigError(f"{path}:{lineno}: invalid property name {key!r}")
            out[key] = value
    return out


def validate_client_config(config: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """A copy of ``config`` checked to be ``str -> scalar`` with no role keys (``{}`` for None)."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise KafkaConfigError(f"kafka_config must be a mapping of librdkafka properties, "
                               f"got {type(config).__name__}")
    out: Dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str) or not key:
            raise KafkaConfigError(f"kafka_config: property names are strings, got {key!r}")
        if key in _ROLE_KEYS:
            raise KafkaConfigError(f"kafka_config: {key!r} is set per client by sabot; "
                                   f"pass it where that client is configured")
        if not isinstance(value, (str, int, float, bool)):
            raise KafkaConfigError(f"kafka_config: {key}={value!r} is not a string, number or "
                                   f"boolean")
        out[key] = value
    return out


def client_config(bootstrap_servers: Optional[str], kafka_config: Optional[Mapping[str, Any]],
                  base: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """One client's librdkafka settings: ``base`` (the role's defaults), then the user's
    ``kafka_config`` (security and tuning) on top, then ``bootstrap.servers`` when given.

    Every consumer, producer and admin client sabot creates goes through this function, so a
    SASL/TLS setting given once reaches all of them.
    """
    cfg: Dict[str, Any] = dict(base or {})
    cfg.update(validate_client_config(kafka_config))
    if bootstrap_servers is not None:
        cfg["bootstrap.servers"] = bootstrap_servers
    return cfg


def admin_config(bootstrap_servers: str,
                 kafka_config: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Settings for an ``AdminClient`` (the user's client configuration included)."""
    return client_config(bootstrap_servers, kafka_config)
