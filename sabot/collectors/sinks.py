"""The sink layer shared by every collector: Parquet files and Kafka.

Parquet (:class:`ParquetSink`): records are buffered and flushed as one row group every
``row_group_size`` records or ``row_group_seconds`` seconds (with ``background=True`` by a
writer thread, so that the conversion, compression and fsync of a row group never hold up the
event loop that receives the records: ``sabot monitor --direct``).  Each flushed row group is first
written as its own complete Parquet file in ``<output>.parts/`` (so a SIGKILL loses at most the
unflushed buffer and never leaves a half-written file behind); on close the existing
``<output>`` (if any), leftover parts of an earlier killed run, and this run's parts are
combined into ``<output>.part`` and renamed onto ``<output>`` atomically.

Kafka (:class:`KafkaSink`): confluent-kafka producer, key = ``symbol`` UTF-8, value = flat JSON
of the record (timestamps integer ns), ``linger.ms`` 0 by default (each record sent at once;
``--linger-ms`` to batch), ``poll(0)`` per record (never a blocking flush per message),
delivery errors counted and logged, flush on close; what was not delivered is counted in
``undelivered`` so the collector's exit code can say so.  The client's own log lines are
rate-limited (an unreachable broker otherwise logs a line per retry).

Neither sink raises from ``write``/``tick``: I/O errors are counted, logged and retried.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Protocol

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from sabot.durable import fsync_path
from sabot.kafka import LIVE_PRODUCER, PRODUCER_DEFAULTS, client_config
from sabot.schema import channel_schema

__all__ = ["Sink", "ParquetSink", "KafkaSink", "KafkaUnavailable", "recover_parts"]

log = logging.getLogger(__name__)

Record = dict[str, Any]


class Sink(Protocol):
    def write(self, record: Record) -> None: ...
    def tick(self) -> None: ...
    def close(self) -> None: ...


def _string_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if pa.types.is_string(f.type)]


class ParquetSink:
    """Rolling row groups into one Parquet file; crash-safe via closed per-row-group part files.

    Writing never raises into the collector: a failed row-group write (disk full, I/O error)
    keeps every buffered row, is counted in ``write_errors`` and logged (rate-limited), and is
    retried with exponential backoff (``retry_base`` doubling to ``retry_max`` seconds) while
    new records keep being buffered.  A row Arrow cannot convert is taken out of the group and
    handed to ``on_reject(reason, text, record)`` (counted as rejected), so one bad row never
    blocks the others.  Parts and the final file are fsynced, and so is their directory.
    ``channel`` picks the schema: ``"ticker"`` (the venue's ticker columns), ``"trades"`` or
    ``"book"`` (:data:`sabot.collectors.books.BOOK_SCHEMA`).

    ``background=True``: a due row group is written by one writer thread while ``write``
    keeps buffering; its rows stay in the buffer until their part is closed, and the outcome
    (rows written, or an error counted and retried exactly as above) is taken in by the next
    ``write``/``tick``/``close`` on the caller's thread.  At most one row group is in flight,
    so parts keep the order of the records.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        exchange: str,
        row_group_size: int = 10_000,
        row_group_seconds: float = 10.0,
        compression: str = "zstd",
        retry_base: float = 0.5,
        retry_max: float = 30.0,
        close_timeout: float = 30.0,
        channel: str = "ticker",
        background: bool = False,
    ) -> None:
        self.path = Path(path)
        self.channel = channel
        if channel == "book":
            from sabot.collectors.books import BOOK_SCHEMA

            channel_schema(exchange)  # an unregistered venue is named the same way
            self.schema = BOOK_SCHEMA
        else:
            self.schema = channel_schema(exchange, channel)  # an unknown channel fails before any I/O
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.parts_dir = self.path.with_name(self.path.name + ".parts")
        self.parts_dir.mkdir(exist_ok=True)
        self.exchange = exchange
        self.row_group_size = row_group_size
        self.row_group_seconds = row_group_seconds
        self.compression = compression
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.close_timeout = close_timeout
        self._names = self.schema.names
        self._rows: list[Record] = []
        self._last_flush = time.monotonic()
        self._part_seq = 0
        self._retry_at = 0.0
        self._retry_delay = 0.0
        self.rows_written = 0
        self.write_errors = 0
        self.unwritten = 0  # rows still buffered when close gave up (reported, exit non-zero)
        self.finalise_error: str | None = None
        self.on_reject: Any = None
        self.closed = False
        self.background = background
        self._executor: ThreadPoolExecutor | None = None
        #: the row group being written by the writer thread: its future and its row count
        self._inflight: tuple[Future, int] | None = None

    @property
    def buffered(self) -> int:
        """Rows held in memory, not yet in a closed part."""
        return len(self._rows)

    def write(self, record: Record) -> None:
        self._rows.append(record)
        if len(self._rows) >= self.row_group_size and time.monotonic() >= self._retry_at:
            self._flush_due()

    def tick(self) -> None:
        """Called periodically: flush when the time-based row group is due (or a retry is)."""
        if self._inflight is not None and not self._take_in():
            return  # the writer is still busy with the previous row group
        if not self._rows:
            return
        now = time.monotonic()
        if now < self._retry_at:
            return
        if (self._retry_delay or len(self._rows) >= self.row_group_size
                or now - self._last_flush >= self.row_group_seconds):
            self._flush_due()

    def _flush_due(self) -> None:
        """A row group is due: write it here, or hand it to the writer thread."""
        if not self.background:
            self._flush_guarded()
            return
        if self._inflight is not None and not self._take_in():
            return
        if not self._rows or time.monotonic() < self._retry_at:
            return
        self._last_flush = time.monotonic()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"parquet-{self.exchange}")
        n = len(self._rows)
        self._part_seq += 1
        self._inflight = (self._executor.submit(self._write_part, self._rows[:n], self._part_seq), n)

    def _take_in(self, timeout: float | None = 0.0) -> bool:
        """The in-flight row group's outcome, if it is done (waiting up to ``timeout`` s; None:
        until it is): on success its rows leave the buffer; a failure is counted, logged and
        retried as in :meth:`_flush_guarded`.  False while it is still being written."""
        assert self._inflight is not None
        future, n = self._inflight
        try:
            future.result(timeout=timeout)
        except FutureTimeout:
            return False
        except (OSError, pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            self._inflight = None
            self._flush_failed(exc)
            return True
        self._inflight = None
        self._flushed(n)
        return True

    def _write_part(self, rows: list[Record], seq: int) -> None:
        """``rows`` as one closed Parquet part (one row group); raises on failure."""
        table = pa.Table.from_pylist(rows, schema=self.schema)
        name = f"{time.time_ns():020d}-{os.getpid()}-{seq:06d}.parquet"
        tmp = self.parts_dir / (name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                pq.write_table(table, f, compression=self.compression,
                               use_dictionary=_string_columns(self.schema))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.parts_dir / name)  # a part is visible only once complete
            _fsync_dir(self.parts_dir)
        except BaseException:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise

    def flush(self) -> None:
        """Write the buffered records as one closed Parquet part (one row group).

        Raises on failure, with every buffered row kept for the next attempt.
        """
        if self._inflight is not None:  # the writer thread's row group first (order of parts)
            future, n = self._inflight
            self._inflight = None
            future.result()  # its failure raises here, its rows still buffered
            self._flushed(n)
        self._last_flush = time.monotonic()
        if not self._rows:
            return
        n = len(self._rows)
        self._part_seq += 1
        self._write_part(self._rows[:n], self._part_seq)
        del self._rows[:n]
        self.rows_written += n

    def _flushed(self, n: int) -> None:
        """The first ``n`` buffered rows are in a closed part."""
        del self._rows[:n]
        self.rows_written += n
        if self._retry_delay:
            log.info("Parquet %s: row-group writes succeed again (%d rows written)", self.path,
                     self.rows_written)
        self._retry_delay = 0.0
        self._retry_at = 0.0

    def _flush_failed(self, exc: BaseException) -> None:
        """A row-group write failed: count and log it; retry later (I/O) or set the rows
        Arrow cannot store aside (a bad row)."""
        self.write_errors += 1
        if isinstance(exc, OSError):
            self._retry_delay = min(self.retry_max, max(self.retry_base, self._retry_delay * 2))
            self._retry_at = time.monotonic() + self._retry_delay
            level = logging.WARNING if self.write_errors <= 5 or self.write_errors % 100 == 0 else logging.DEBUG
            log.log(level, "Parquet %s: row-group write failed (#%d, %d rows kept, retry in %.1f s): %s",
                    self.path, self.write_errors, len(self._rows), self._retry_delay, exc)
        else:
            log.warning("Parquet %s: a row cannot be stored (%s); setting it aside", self.path, exc)
            self._set_aside_bad_rows()
    def _flush_guarded(self) -> bool:
        """:meth:`flush`, with failures counted, logged and retried later; True on success."""
        try:
            self.flush()
        except (OSError, pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            self._flush_failed(exc)
            return False if isinstance(exc, OSError) else self._flush_guarded()
        if self._retry_delay:
            log.info("Parquet %s: row-group writes succeed again (%d rows written)", self.path,
                     self.rows_written)
        self._retry_delay = 0.0
        self._retry_at = 0.0
        return True

    def _set_aside_bad_rows(self) -> None:
        good: list[Record] = []
        for row in self._rows:
            try:
                pa.Table.from_pylist([row], schema=self.schema)
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                text = f"not storable in Parquet: {type(exc).__name__}: {exc}"
                if self.on_reject is not None:
                    self.on_reject("unserializable", text, row)
                else:
                    log.error("Parquet %s: dropped a row %s: %r", self.path, text, row)
            else:
                good.append(row)
        self._rows = good

    def close(self) -> None:
        """Flush (retrying up to ``close_timeout`` s), then combine everything into ``path``.

        Never raises: rows that could not be written are counted in ``unwritten`` and a failed
        final combine is kept in ``finalise_error`` (the parts stay on disk and are combined by
        the next run or :func:`recover_parts`).
        """
        if self.closed:
            return
        self.closed = True
        deadline = time.monotonic() + self.close_timeout
        if self._inflight is not None and not self._take_in(timeout=self.close_timeout):
            # the writer thread is stuck (a hung disk): its rows and the rest are unwritten,
            # and the parts are left alone while it may still be writing one
            self.unwritten = len(self._rows)
            self.finalise_error = f"a row-group write did not finish within {self.close_timeout:g} s"
            log.error("Parquet %s: %d rows could not be written (%s)", self.path, self.unwritten,
                      self.finalise_error)
            self._executor.shutdown(wait=False)
            return
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        while self._rows and not self._flush_guarded():
            if time.monotonic() + self._retry_delay > deadline:
                self.unwritten = len(self._rows)
                log.error("Parquet %s: %d rows could not be written", self.path, self.unwritten)
                break
            time.sleep(self._retry_delay)
        try:
            recover_parts(self.path, self.schema, self.compression)
        except (OSError, pa.ArrowException) as exc:
            self.finalise_error = f"{type(exc).__name__}: {exc}"
            log.error("Parquet %s: combining the parts failed (%s); the parts stay in %s and are "
                      "combined by the next run", self.path, self.finalise_error, self.parts_dir)


def _fsync_dir(path: Path) -> None:
    """fsync a directory so a rename in it survives a power loss (no-op where unsupported)."""
    try:
        fsync_path(path)
    except OSError:
        pass


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` in ``schema``'s column order and types; a nullable column it lacks (written
    before the column existed, e.g. ``time_source``) is added as nulls."""
    for f in schema:
        if f.name not in table.column_names and f.nullable:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    return table.select(schema.names).cast(schema)


def recover_parts(path: str | os.PathLike, schema: pa.Schema, compression: str = "zstd") -> int:
    """Combine ``path`` (if present) and every closed part in ``<path>.parts/`` into ``path``.

    Each source file becomes one or more row groups of the result.  Returns the row count.
    Used on close and to recover the parts a killed collector left behind.  The result is
    fsynced before it replaces ``path``, and the directory after.
    """
    path = Path(path)
    parts_dir = path.with_name(path.name + ".parts")
    parts = sorted(parts_dir.glob("*.parquet")) if parts_dir.is_dir() else []
    for stale in parts_dir.glob("*.tmp") if parts_dir.is_dir() else ():
        stale.unlink()  # an interrupted part write: its rows were never acknowledged
    sources = ([path] if path.exists() else []) + parts
    tmp = path.with_name(path.name + ".part")
    rows = 0
    try:
        with open(tmp, "wb") as f:
            with pq.ParquetWriter(f, schema, compression=compression,
                                  use_dictionary=_string_columns(schema)) as writer:
                for src in sources:
                    pf = pq.ParquetFile(src)
                    for i in range(pf.num_row_groups):
                        t = pf.read_row_group(i)
                        if t.schema != schema:
                            t = _conform(t, schema)
                        writer.write_table(t)
                        rows += t.num_rows
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    for p in parts:
        p.unlink()
    if parts_dir.is_dir() and not any(parts_dir.iterdir()):
        parts_dir.rmdir()
    log.info("Parquet %s: %d rows in %d row groups", path, rows, pq.ParquetFile(path).num_row_groups)
    return rows


class KafkaUnavailable(RuntimeError):
    """The Kafka cluster could not be reached (or refused us) when the collector started."""


class _RateLimitFilter(logging.Filter):
    """Lets through the first ``burst`` librdkafka lines per ``window_s``, then one count line."""

    def __init__(self, burst: int = 3, window_s: float = 30.0) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self._start = 0.0
        self._n = 0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._start >= self.window_s:
            if self.suppressed:
                record.msg = f"{record.msg} ({self.suppressed} similar client lines suppressed)"
                self.suppressed = 0
            self._start, self._n = now, 0
        self._n += 1
        if self._n <= self.burst:
            return True
        self.suppressed += 1
        return False


class KafkaSink:
    """confluent-kafka producer: key ``symbol``, value flat JSON; asynchronous with ``poll(0)``.

    ``kafka_config`` (librdkafka properties: security, tuning) is laid over the producer's
    defaults by :func:`sabot.kafka.client_config`; the resulting dict is kept in ``config``.
    :meth:`check` asks the cluster for metadata with that same client before streaming starts.
    ``undelivered`` (set by :meth:`close`) counts every record produced but not acknowledged.
    """

    def __init__(self, bootstrap: str | None, topic: str, linger_ms: float = LIVE_PRODUCER["linger.ms"],
                 kafka_config: Mapping[str, Any] | None = None, flush_timeout: float = 30.0,
                 **config: Any) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.flush_timeout = flush_timeout
        self.delivered = 0
        self.delivery_errors = 0
        self.produced = 0
        self.produce_errors = 0
        self.undelivered = 0
        self.on_reject: Any = None
        # Records wait in the producer's queue through a broker outage of up to 5 minutes
        # (librdkafka's default); 30 s lost the first records of a 30 s outage (fault test).
        base = {**PRODUCER_DEFAULTS, **LIVE_PRODUCER, "linger.ms": linger_ms, "message.timeout.ms": 300_000}
        conf = client_config(bootstrap, kafka_config, base=base)
        conf.update(config)
        self.config: dict[str, Any] = conf
        self.bootstrap = conf.get("bootstrap.servers", "")
        self._log_filter = _RateLimitFilter()
        client_log = logging.getLogger("sabot.collectors.kafka")
        if not any(isinstance(f, _RateLimitFilter) for f in client_log.filters):
            client_log.addFilter(self._log_filter)
        self._producer = Producer(conf, logger=client_log)

    def check(self, timeout: float = 10.0) -> None:
        """Raise :class:`KafkaUnavailable` unless the cluster answers a metadata request in time."""
        from confluent_kafka import KafkaException

        try:
            md = self._producer.list_topics(timeout=timeout)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            text = err.str() if hasattr(err, "str") else str(err)
            raise KafkaUnavailable(f"Kafka at {self.bootstrap} did not answer within {timeout:g} s "
                                   f"({text})") from None
        meta = md.topics.get(self.topic)
        if meta is None or meta.error is not None:
            log.warning("Kafka topic %r is not listed by %s (%s); producing relies on the broker "
                        "creating it", self.topic, self.bootstrap, getattr(meta, "error", "absent"))

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.delivery_errors += 1
            if self.delivery_errors <= 5 or self.delivery_errors % 1000 == 0:
                log.error("Kafka delivery error #%d on %s: %s", self.delivery_errors, self.topic, err)
        else:
            self.delivered += 1

    def write(self, record: Record) -> None:
        from confluent_kafka import KafkaException

        try:
            value = orjson.dumps(record)
            key = str(record["symbol"]).encode()
        except (TypeError, ValueError, KeyError) as exc:
            self.produce_errors += 1
            text = f"not serialisable for Kafka: {type(exc).__name__}: {exc}"
            if self.on_reject is not None:
                self.on_reject("unserializable", text, record)
            else:
                log.error("Kafka %s: record %s", self.topic, text)
            return
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)  # local queue full: let deliveries drain
            except KafkaException as exc:  # e.g. a record above message.max.bytes: never deliverable
                self.produce_errors += 1
                if self.produce_errors <= 5 or self.produce_errors % 1000 == 0:
                    log.error("Kafka %s: produce failed (#%d): %s", self.topic, self.produce_errors, exc)
                return
        self.produced += 1
        self._producer.poll(0)

    def tick(self) -> None:
        self._producer.poll(0)

    def close(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` (default ``flush_timeout``) s for deliveries; count what is left."""
        timeout = self.flush_timeout if timeout is None else timeout
        remaining = self._producer.flush(timeout)
        self.undelivered = remaining + self.delivery_errors + self.produce_errors
        if remaining:
            log.error("Kafka: %d messages not delivered to %s after %.0f s", remaining, self.topic, timeout)
        log.info("Kafka %s: %d produced, %d delivered, %d delivery errors",
                 self.topic, self.produced, self.delivered, self.delivery_errors)
