"""Per-partition checkpoints in a Kafka changelog topic (the state store for scale-out).

One record per source partition ("task"), key ``"{topic}/{partition}"``, written to the
changelog partition with the same number as the source partition; the value is in the state
format of :mod:`sabot.state.codec` (kind ``"changelog"``; data only, never code)::

    header {"kind": "changelog", "topic": str, "partition": int,
            "offset": next offset to read, "created": unix seconds}
    body   {op_index: operator.state_dict()}

The topic is created with ``cleanup.policy=compact`` and as many partitions as the source
topic, so Kafka eventually keeps only the latest record per key.  Reading never relies on
compaction having happened: the changelog partition is read from its beginning to its end
(the partition-EOF event, not the watermarks, which Tansu under-reports) and the last record
per key wins; a tombstone (null value) deletes the key.

Anyone who can produce to the topic can write a record, so a record is only ever decoded as
data, and one that is not this format (a pickle, garbage, truncated, another version, another
task) is refused with :class:`CheckpointError` naming ``topic/partition/offset``.  With a state
key every record carries an HMAC-SHA256 tag that is verified before decoding.  With
``reset_state`` an unreadable latest record is logged as a WARNING and its task starts fresh.
Every client the store creates (two admin clients, producer, consumer) gets the user's
``kafka_config`` (SASL/TLS) through :func:`sabot.kafka.client_config`.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from ..kafka import PRODUCER_DEFAULTS, admin_config, client_config
from .codec import STATE_FORMAT_VERSION, CheckpointError, decode_record, encode_record

logger = logging.getLogger(__name__)

TaskId = Tuple[str, int]


def task_key(tp: TaskId) -> bytes:
    """The changelog record key of a source partition: ``b"topic/partition"``."""
    return f"{tp[0]}/{tp[1]}".encode()


class KafkaChangelogStore:
    """Writes and restores per-partition checkpoint records (see module docstring)."""

    def __init__(self, bootstrap_servers: str, topic: str, *, timeout_s: float = 30.0,
                 kafka_config: Optional[Mapping[str, Any]] = None,
                 state_key: Optional[bytes] = None, reset_state: bool = False) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.timeout_s = timeout_s
        #: the user's client configuration (security, tuning), laid over every client's role
        self.kafka_config = kafka_config
        #: HMAC-SHA256 key of every record written and read (None: no tag)
        self.state_key = state_key
        #: an unreadable latest record is discarded (WARNING) instead of raising
        self.reset_state = reset_state
        #: records refused and discarded under reset_state
        self.records_discarded = 0
        self._producer: Any = None
        self._reader: Any = None
        self._delivery_errors: List[str] = []
        self.records_written = 0
        self.records_restored = 0
        self.last_size_bytes = 0
        self.last_write_s = 0.0
        self.last_read_s = 0.0

    def __repr__(self) -> str:
        return f"KafkaChangelogStore({self.topic!r})"

    # -- topic ---------------------------------------------------------------------------------
    def partitions_of(self, topic: str) -> int:
        """Number of partitions of ``topic`` (KeyError when the broker does not know it)."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(admin_config(self.bootstrap_servers, self.kafka_config))
        # all topics: asking for one by name makes brokers that auto-create topics create it
        md = admin.list_topics(timeout=self.timeout_s)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise KeyError(f"topic {topic!r} not found on {self.bootstrap_servers}")
        return len(meta.partitions)

    def ensure_topic(self, partitions: int) -> None:
        """Create the changelog topic (compacted, ``partitions`` partitions) unless it exists;
        an existing one must have at least ``partitions`` partitions."""
        from confluent_kafka import KafkaError
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(admin_config(self.bootstrap_servers, self.kafka_config))
        fut = admin.create_topics([NewTopic(self.topic, num_partitions=partitions,
                                            replication_factor=1,
                                            config={"cleanup.policy": "compact"})])
        try:
            fut[self.topic].result(timeout=self.timeout_s)
            logger.info("created changelog topic %s (%d partitions, compacted)", self.topic,
                        partitions)
        except Exception as exc:
            err = exc.args[0] if exc.args else None
            if not (hasattr(err, "code") and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise CheckpointError(f"could not create changelog topic {self.topic!r}: "
                                      f"{exc}") from exc
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                have = self.partitions_of(self.topic)
                break
            except KeyError:
                if time.monotonic() > deadline:
                    raise CheckpointError(f"changelog topic {self.topic!r} not visible after "
                                          f"{self.timeout_s:.0f}s") from None
                time.sleep(0.05)
        if have < partitions:
            raise ValueError(f"changelog topic {self.topic!r} has {have} partitions; the "
                             f"source topic has {partitions} (need at least as many)")

    # -- write ---------------------------------------------------------------------------------
    def write(self, tp: TaskId, offset: int, state: Dict[int, Any]) -> int:
        """Queue the record of task ``tp`` (call :meth:`flush` before relying on it); bytes."""
        from confluent_kafka import Producer

        if self._producer is None:
            self._producer = Producer(client_config(self.bootstrap_servers, self.kafka_config,
                                                    base=PRODUCER_DEFAULTS))
        t0 = time.perf_counter()
        header = {"topic": tp[0], "partition": int(tp[1]), "offset": int(offset),
                  "created": time.time()}
        data = encode_record("changelog", header, state, self.state_key)

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                self._delivery_errors.append(f"{tp[0]}/{tp[1]}: {err}")

        while True:
            try:
                self._producer.produce(self.topic, value=data, key=task_key(tp),
                                       partition=int(tp[1]), on_delivery=delivered)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)
        self.records_written += 1
        self.last_size_bytes = len(data)
        self.last_write_s = time.perf_counter() - t0
        return len(data)

    def flush(self) -> None:
        """Wait until every queued record is acknowledged (CheckpointError otherwise)."""
        if self._producer is None:
            return
        remaining = self._producer.flush(self.timeout_s)
        errors, self._delivery_errors = self._delivery_errors, []
        if remaining or errors:
            raise CheckpointError(f"changelog {self.topic!r}: {remaining} record(s) not "
                                  f"delivered in {self.timeout_s:.0f}s; errors: {errors[:3]}")

    # -- read ----------------------------------------------------------------------------------
    def read(self, tps: Iterable[TaskId]) -> Dict[TaskId, Optional[Dict[str, Any]]]:
        """The latest record of each task (None where there is none)."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        wanted = {task_key(tp): tp for tp in tps}
        result: Dict[TaskId, Optional[Dict[str, Any]]] = {tp: None for tp in wanted.values()}
        if not wanted:
            return result
        t0 = time.perf_counter()
        if self._reader is None:
            base = {"enable.partition.eof": True, "fetch.wait.max.ms": 10, "log_level": 3}
            cfg = client_config(self.bootstrap_servers, self.kafka_config, base=base)
            cfg.update({"group.id": f"sabot-changelog-reader-{self.topic}",
                        "enable.auto.commit": False, "enable.partition.eof": True})
            self._reader = Consumer(cfg)
        parts = sorted({int(tp[1]) for tp in wanted.values()})
        self._reader.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
        latest: Dict[bytes, Tuple[int, int, Optional[bytes]]] = {}
        at_end: set = set()
        deadline = time.monotonic() + self.timeout_s
        try:
            while len(at_end) < len(parts):
                if time.monotonic() > deadline:
                    raise CheckpointError(f"changelog {self.topic!r}: partitions "
                                          f"{sorted(set(parts) - at_end)} not read to their end "
                                          f"in {self.timeout_s:.0f}s")
                for m in self._reader.consume(1000, 0.01):
                    err = m.error()
                    if err is None:
                        if m.key() in wanted:
                            latest[m.key()] = (m.partition(), m.offset(), m.value())
                    elif err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(m.partition())
                    else:
                        raise CheckpointError(f"changelog {self.topic!r}: read failed: {err}")
        finally:
            self._reader.unassign()
        for key, (part, offset, value) in latest.items():
            if value is None:  # tombstone
                continue
            tp = wanted[key]
            where = f"changelog {self.topic}/{part}/{offset} (task {tp[0]}/{tp[1]})"
            try:
                result[tp] = self._decode(value, tp, where)
            except CheckpointError as exc:
                if not self.reset_state:
                    raise CheckpointError(f"{exc}. The pipeline will not start on state it "
                                          "cannot read; pass reset_state=True to discard it "
                                          "and start the task fresh") from None
                self.records_discarded += 1
                logger.warning("DISCARDING STATE (reset_state=True): %s; task %s/%d starts "
                               "with fresh state from the group's committed offset", exc,
                               tp[0], tp[1])
                continue
            self.records_restored += 1
        self.last_read_s = time.perf_counter() - t0
        return result

    def _decode(self, value: bytes, tp: TaskId, where: str) -> Dict[str, Any]:
        """One record's ``{"format", "topic", "partition", "offset", "created", "state",
        "where"}``; CheckpointError naming ``where`` when it is not a record of task ``tp``."""
        header, state = decode_record(value, kind="changelog", where=where, key=self.state_key)
        if (header.get("topic"), header.get("partition")) != (tp[0], tp[1]):
            raise CheckpointError(f"{where}: record for task {header.get('topic')}/"
                                  f"{header.get('partition')} under key {tp[0]}/{tp[1]}")
        offset = header.get("offset")
        if type(offset) is not int or offset < 0:
            raise CheckpointError(f"{where}: header field 'offset' is {offset!r}")
        if not isinstance(state, dict):
            raise CheckpointError(f"{where}: state is a {type(state).__name__}, not a mapping "
                                  "of operator index to state")
        return {"format": STATE_FORMAT_VERSION, "topic": tp[0], "partition": tp[1],
                "offset": offset, "created": header["created"], "state": state,
                "where": where}

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
            self._producer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
