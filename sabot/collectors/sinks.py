"""The sink layer shared by every collector: Parquet files and Kafka (spec stream_and_collectors.md §2).

Parquet (:class:`ParquetSink`): records are buffered and flushed as one row group every
``row_group_size`` records or ``row_group_seconds`` seconds.  Each flushed row group is first
written as its own complete Parquet file in ``<output>.parts/`` (so a SIGKILL loses at most the
unflushed buffer and never leaves a half-written file behind); on close the existing
``<output>`` (if any), leftover parts of an earlier killed run, and this run's parts are
combined into ``<output>.part`` and renamed onto ``<output>`` atomically.

Kafka (:class:`KafkaSink`): confluent-kafka producer, key = ``symbol`` UTF-8, value = flat JSON
of the record (timestamps integer ns), ``linger.ms`` 0 by default (each record sent at once;
``--linger-ms`` to batch), ``poll(0)`` per record (never a blocking flush per message),
delivery errors counted and logged, flush on close.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from sabot.kafka import LIVE_PRODUCER, producer_config
from sabot.schema import exchange_schema

__all__ = ["Sink", "ParquetSink", "KafkaSink", "recover_parts"]

log = logging.getLogger(__name__)

Record = dict[str, Any]


class Sink(Protocol):
    def write(self, record: Record) -> None: ...
    def tick(self) -> None: ...
    def close(self) -> None: ...


def _string_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if pa.types.is_string(f.type)]


class ParquetSink:
    """Rolling row groups into one Parquet file; crash-safe via closed per-row-group part files."""

    def __init__(
        self,
        path: str | os.PathLike,
        exchange: str,
        row_group_size: int = 10_000,
        row_group_seconds: float = 10.0,
        compression: str = "zstd",
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.parts_dir = self.path.with_name(self.path.name + ".parts")
        self.parts_dir.mkdir(exist_ok=True)
        self.schema = exchange_schema(exchange)
        self.row_group_size = row_group_size
        self.row_group_seconds = row_group_seconds
        self.compression = compression
        self._names = self.schema.names
        self._rows: list[Record] = []
        self._last_flush = time.monotonic()
        self._part_seq = 0
        self.rows_written = 0
        self.closed = False

    def write(self, record: Record) -> None:
        self._rows.append(record)
        if len(self._rows) >= self.row_group_size:
            self.flush()

    def tick(self) -> None:
        """Called periodically: flush when the time-based row group is due."""
        if self._rows and time.monotonic() - self._last_flush >= self.row_group_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the buffered records as one closed Parquet part (one row group)."""
        self._last_flush = time.monotonic()
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        table = pa.Table.from_pylist(rows, schema=self.schema)
        self._part_seq += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._part_seq:06d}.parquet"
        tmp = self.parts_dir / (name + ".tmp")
        pq.write_table(table, tmp, compression=self.compression,
                       use_dictionary=_string_columns(self.schema))
        os.replace(tmp, self.parts_dir / name)  # a part is visible only once complete
        self.rows_written += len(rows)

    def close(self) -> None:
        """Flush, then combine everything into ``path`` (footer written, atomic rename)."""
        if self.closed:
            return
        self.closed = True
        self.flush()
        recover_parts(self.path, self.schema, self.compression)


def recover_parts(path: str | os.PathLike, schema: pa.Schema, compression: str = "zstd") -> int:
    """Combine ``path`` (if present) and every closed part in ``<path>.parts/`` into ``path``.

    Each source file becomes one or more row groups of the result.  Returns the row count.
    Used on close and to recover the parts a killed collector left behind.
    """
    path = Path(path)
    parts_dir = path.with_name(path.name + ".parts")
    parts = sorted(parts_dir.glob("*.parquet")) if parts_dir.is_dir() else []
    for stale in parts_dir.glob("*.tmp") if parts_dir.is_dir() else ():
        stale.unlink()  # an interrupted part write: its rows were never acknowledged
    sources = ([path] if path.exists() else []) + parts
    tmp = path.with_name(path.name + ".part")
    rows = 0
    with pq.ParquetWriter(tmp, schema, compression=compression,
                          use_dictionary=_string_columns(schema)) as writer:
        for src in sources:
            pf = pq.ParquetFile(src)
            for i in range(pf.num_row_groups):
                t = pf.read_row_group(i)
                if t.schema != schema:
                    t = t.select(schema.names).cast(schema)
                writer.write_table(t)
                rows += t.num_rows
    os.replace(tmp, path)
    for p in parts:
        p.unlink()
    if parts_dir.is_dir() and not any(parts_dir.iterdir()):
        parts_dir.rmdir()
    log.info("Parquet %s: %d rows in %d row groups", path, rows, pq.ParquetFile(path).num_row_groups)
    return rows


class KafkaSink:
    """confluent-kafka producer: key ``symbol``, value flat JSON; asynchronous with ``poll(0)``."""

    def __init__(self, bootstrap: str, topic: str, linger_ms: float = LIVE_PRODUCER["linger.ms"],
                 **config: Any) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.delivered = 0
        self.delivery_errors = 0
        self.produced = 0
        # Records wait in the producer's queue through a broker outage of up to 5 minutes
        # (librdkafka's default); 30 s lost the first records of a 30 s outage (fault test).
        conf = producer_config(bootstrap, **{**LIVE_PRODUCER, "linger.ms": linger_ms,
                                             "message.timeout.ms": 300_000})
        conf.update(config)
        self._producer = Producer(conf, logger=logging.getLogger("sabot.collectors.kafka"))

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.delivery_errors += 1
            if self.delivery_errors <= 5 or self.delivery_errors % 1000 == 0:
                log.error("Kafka delivery error #%d on %s: %s", self.delivery_errors, self.topic, err)
        else:
            self.delivered += 1

    def write(self, record: Record) -> None:
        value = orjson.dumps(record)
        key = record["symbol"].encode()
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)  # local queue full: let deliveries drain
        self.produced += 1
        self._producer.poll(0)

    def tick(self) -> None:
        self._producer.poll(0)

    def close(self, timeout: float = 30.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            log.error("Kafka: %d messages not delivered to %s after %.0f s", remaining, self.topic, timeout)
        log.info("Kafka %s: %d produced, %d delivered, %d delivery errors",
                 self.topic, self.produced, self.delivered, self.delivery_errors)
