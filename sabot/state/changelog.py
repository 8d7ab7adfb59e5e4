"""Per-partition checkpoints in a Kafka changelog topic (the state store for scale-out).

One record per source partition ("task"), key ``"{topic}/{partition}"``, written to the
changelog partition with the same number as the source partition; the value is a pickle of ::

    {"format": 1, "topic": str, "partition": int, "offset": next offset to read,
     "state": {op_index: operator.state_dict()}, "created": unix seconds}

The topic is created with ``cleanup.policy=compact`` and as many partitions as the source
topic, so Kafka eventually keeps only the latest record per key.  Reading never relies on
compaction having happened: the changelog partition is read from its beginning to its end
(the partition-EOF event, not the watermarks, which Tansu under-reports) and the last record
per key wins; a tombstone (null value) deletes the key.

Pickle runs code on load: point ``changelog_topic`` only at topics you trust.
"""
from __future__ import annotations

import logging
import pickle
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..kafka import producer_config
from .checkpoint import CHECKPOINT_FORMAT, CheckpointError

logger = logging.getLogger(__name__)

TaskId = Tuple[str, int]


def task_key(tp: TaskId) -> bytes:
    """The changelog record key of a source partition: ``b"topic/partition"``."""
    return f"{tp[0]}/{tp[1]}".encode()


class KafkaChangelogStore:
    """Writes and restores per-partition checkpoint records (see module docstring)."""

    def __init__(self, bootstrap_servers: str, topic: str, *, timeout_s: float = 30.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.timeout_s = timeout_s
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

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
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

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
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
            self._producer = Producer(producer_config(self.bootstrap_servers))
        t0 = time.perf_counter()
        payload = {"format": CHECKPOINT_FORMAT, "topic": tp[0], "partition": int(tp[1]),
                   "offset": int(offset), "state": state, "created": time.time()}
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)

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
            self._reader = Consumer({"bootstrap.servers": self.bootstrap_servers,
                                     "group.id": f"sabot-changelog-reader-{self.topic}",
                                     "enable.auto.commit": False, "enable.partition.eof": True,
                                     "fetch.wait.max.ms": 10, "log_level": 3})
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
            where = f"changelog {self.topic!r} partition {part} offset {offset}"
            try:
                payload = pickle.loads(value)
            except Exception as exc:
                raise CheckpointError(f"{where} (task {tp[0]}/{tp[1]}): unreadable record: "
                                      f"{type(exc).__name__}: {exc}") from exc
            if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
                found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
                raise CheckpointError(f"{where} (task {tp[0]}/{tp[1]}): unsupported record "
                                      f"format {found!r}; this version reads format "
                                      f"{CHECKPOINT_FORMAT}")
            if (payload.get("topic"), payload.get("partition")) != tp:
                raise CheckpointError(f"{where}: record for {payload.get('topic')}/"
                                      f"{payload.get('partition')} under key {key.decode()!r}")
            payload["where"] = where
            result[tp] = payload
            self.records_restored += 1
        self.last_read_s = time.perf_counter() - t0
        return result

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
            self._producer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
