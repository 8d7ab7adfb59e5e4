"""``Stream``: a lazy pipeline of Arrow RecordBatches.

Building a Stream (sources, transforms) runs nothing; iterating it or calling a sink runs the
whole plan once.  Each run starts every operator from fresh state, unless the state was just
restored with :meth:`Stream.load_state_dict`.

Delivery: a Kafka source yields a commit after each batch; the commit is executed only after
the batch has passed every operator and the sink (for ``for batch in stream``: when the loop
asks for the next batch), so a killed pipeline restarted in the same consumer group re-reads
every record it had not finished (at-least-once).  Operators that hold rows (windows, joins)
hold the commits covering them until those rows are emitted.

Function-form kernels keep their state inside operators: ``stream.map(lambda b: ewma(b))``
equals ``stream.map(EWMA())`` (each operator owns a :class:`~sabot.fintech.StateScope`).
"""
from __future__ import annotations

import glob as _glob
import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import (Any, AsyncIterator, Callable, Dict, Iterable, Iterator, List, Mapping,
                    Optional, Sequence, Tuple, Union)

import pyarrow as pa
import pyarrow.parquet as pq

from .. import interop
from ..durable import fsync_path
from ..timeunits import check_unit
from ._align import AsofJoinOp, concat_promote, merge_events, union_events, zip_events
from ._app import ApplicationSettings
from ._events import IDLE, Commit, Event, close_iterator
from ._kafka import DeliveryError  # noqa: F401  (raised by to_kafka; importable from here)
from ._kafka import KafkaSink, KafkaSource
from ._ops import (FilterOp, FlatMapOp, MapOp, Operator, RenameOp, SelectOp,
                   StreamOperatorError, TumblingOHLCV, WithColumnsOp, bind_dead_letters)
from ._plan import AsofNode as _AsofNode
from ._plan import KafkaNode as _KafkaNode
from ._plan import MultiNode as _MultiNode
from ._plan import Node as _Node
from ._plan import OpNode as _OpNode
from ._plan import SourceNode as _Source
from ._plan import kafka_sources
from ._runtime import (RunHooks, UncheckpointedStateError, check_checkpointable,  # noqa: F401
                       aiter_in_thread, checkpointer_for, drive, prepare_run)

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 65_536


# ----------------------------------------------------------------------------------------------
# Stream
# ----------------------------------------------------------------------------------------------
class Stream:
    """A lazy, composable pipeline of RecordBatches.  See the module docstring."""

    def __init__(self, node: _Node, *, key: Optional[str] = None) -> None:
        self._node = node
        self.key = key
        #: the Checkpointer (``checkpoint_dir``) or TaskManager (``changelog_topic``) of the
        #: last run; None without either
        self.last_checkpointer: Any = None
        self._stream_metrics: Any = None
        self._stop_event = threading.Event()
        #: counters of the sink of the last (or current) run, under ``_sink_name`` in metrics
        self._sink_metrics: Optional[Dict[str, int]] = None
        self._sink_name = "sink"

    def __repr__(self) -> str:
        return f"<Stream {self._node.name} (depth {self._node.depth})>"

    # -- sources -----------------------------------------------------------------------------------
    @classmethod
    def from_kafka(cls, bootstrap_servers: str, topic: Union[str, Sequence[str]], group_id: str,
                   *, schema: Optional[pa.Schema] = None, batch_size: int = 1000,
                   max_latency_ms: float = 50, from_beginning: bool = False,
                   dead_letter_topic: Optional[str] = None, stop_at_end: bool = False,
                   order_by: Optional[str] = None, checkpoint_dir: Optional[Union[str, os.PathLike]] = None,
                   checkpoint_interval_s: float = 60.0, metrics_port: Optional[int] = None,
                   changelog_topic: Optional[str] = None, commit: str = "sync",
                   reset_state: bool = False, state_key: Optional[bytes] = None,
                   kafka_config: Optional[Mapping[str, Any]] = None,
                   timestamp_window: Any = "auto",
                   **consumer_config: Any) -> "Stream":
        """JSON messages from Kafka, decoded in bulk into ``schema`` (default: the normalised
        ticker schema).  A batch is handed over as soon as no further message is already
        fetched (at most ``batch_size``); with none, the source waits up to ``max_latency_ms``
        for one.  ``stop_at_end=True`` ends the stream once every
        assigned partition is read to its end (for backfills and tests).  ``order_by='timestamp'``
        releases rows in event-time order across partitions (each partition is time-ordered;
        needed before event-time operators such as ``asof_join`` and ``merge``).  Extra keyword
        arguments are librdkafka consumer settings (``session_timeout_ms=6000`` or
        ``**{"session.timeout.ms": 6000}``).

        ``checkpoint_dir``: snapshot every operator's state (kernel scopes, windows) together
        with the consumed offsets into this directory every ``checkpoint_interval_s`` seconds
        (0: at every batch) and at the end of the stream; a run restores the newest checkpoint
        and seeks to its offsets, so a killed and restarted pipeline computes the same values
        as one that never stopped (see :mod:`sabot.api._checkpoint`).  Offsets are then
        committed to the group with each checkpoint, not after each batch.  Needs a linear
        plan from this one source; not combinable with ``order_by``.

        ``changelog_topic``: instead of ``checkpoint_dir``, keep operator state per source
        partition and checkpoint it to this Kafka topic (created compacted if missing), so
        several processes in one consumer group split the partitions and hand state over on
        every rebalance (scale-out; see :mod:`sabot.api._tasks`).  Same plan restrictions;
        one source topic; records should be keyed (e.g. by symbol) so that keyed state lives
        in one partition — state that is not keyed becomes per-partition.

        State is data, never code (:mod:`sabot.state.codec`); a checkpoint file or changelog
        record that cannot be read, or whose state the operators do not accept, stops the run
        with ``CheckpointError`` naming it.  ``reset_state=True``: discard such state (WARNING
        log line naming it) and start fresh from the group's committed offsets instead.  ``state_key``: HMAC-SHA256 key (bytes)
        authenticating every checkpoint/changelog record written and read (default: the
        ``SABOT_STATE_KEY`` environment variable, if set).

        ``commit``: ``'sync'`` (default) commits each batch's offsets once it has passed the
        sink and waits for the broker; ``'async'`` does not wait (lower latency for the next
        message; a failed commit is counted in ``commit_errors``) and commits synchronously when
        the stream closes.  Both are at-least-once.

        ``metrics_port``: serve Prometheus metrics of every stream built on this source on
        ``127.0.0.1:<port>/metrics`` while it runs (see :mod:`sabot.metrics`; needs the
        ``metrics`` extra, prometheus-client).

        ``kafka_config``: the client configuration (librdkafka properties: SASL, TLS, tuning;
        see :mod:`sabot.kafka`), validated here and laid over the defaults of every client the
        stream creates: the consumer, the dead-letter producer, the changelog store of
        ``changelog_topic`` and, on the same bootstrap servers, ``to_kafka``'s producer.

        The application arguments (``checkpoint_dir``, ``checkpoint_interval_s``,
        ``changelog_topic``, ``reset_state``, ``state_key``, ``metrics_port``, ``commit``,
        ``kafka_config``, and the group) can be set once for several streams on an
        :class:`~sabot.api.Application`: ``Application(bootstrap_servers,
        consumer_group=group_id, ...).stream(topic, ...)`` builds the same source.

        Every decoded record is validated as the collectors validate ticker records: a
        non-finite number, a non-positive ``price``/``bid``/``ask``, a negative size, a control
        character in an identifier (``symbol``, ...) or a timestamp outside ``timestamp_window``
        makes the message a dead letter (``dead_letter_topic``, else counted in
        ``decode_errors`` and logged), with a reason naming field and value.
        ``timestamp_window``: ``(max_age_s, max_ahead_s)`` around each message's Kafka
        timestamp (when the message was produced; the time of decoding when it has none), so a
        replay of last month's topic judges records by when they were written; either bound
        may be None.  ``"auto"`` (default): ``(86400, 60)`` — one day back, one minute ahead —
        when reading live, and ``(None, 60)`` with ``from_beginning=True``, since a topic read
        from its beginning may hold history loaded in bulk.  ``None``: no time check."""
        settings = ApplicationSettings(
            bootstrap_servers, consumer_group=group_id, kafka_config=kafka_config,
            checkpoint_dir=checkpoint_dir, checkpoint_interval_s=checkpoint_interval_s,
            changelog_topic=changelog_topic, reset_state=reset_state, state_key=state_key,
            metrics_port=metrics_port, commit=commit)
        source = settings.source(topic, schema=schema, batch_size=batch_size,
                                 max_latency_ms=max_latency_ms, from_beginning=from_beginning,
                                 dead_letter_topic=dead_letter_topic, stop_at_end=stop_at_end,
                                 order_by=order_by, timestamp_window=timestamp_window,
                                 **consumer_config)
        return cls(_KafkaNode(source))

    @classmethod
    def from_parquet(cls, path_or_glob: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
                     batch_size: int = DEFAULT_BATCH_SIZE, *,
                     columns: Optional[Sequence[str]] = None) -> "Stream":
        """Batches read from one Parquet file, a glob, a directory, or a list of files (sorted)."""
        if isinstance(path_or_glob, (list, tuple)):
            files = [str(p) for p in path_or_glob]
        else:
            p = str(path_or_glob)
            if os.path.isdir(p):
                files = sorted(_glob.glob(os.path.join(p, "*.parquet")))
            elif any(ch in p for ch in "*?["):
                files = sorted(_glob.glob(p))
            else:
                files = [p]
        if not files:
            raise FileNotFoundError(f"no Parquet files match {path_or_glob!r}")
        for f in files:
            if not os.path.exists(f):
                raise FileNotFoundError(f"Parquet file not found: {f}")

        def read() -> Iterator[pa.RecordBatch]:
            for f in files:
                with pq.ParquetFile(f) as pf:
                    yield from pf.iter_batches(batch_size=batch_size,
                                               columns=list(columns) if columns else None)

        return cls(_Source(f"from_parquet({path_or_glob})", read))

    @classmethod
    def from_batches(cls, batches: Iterable[Any]) -> "Stream":
        """Batches from any iterable (a one-shot generator can be run once).  Items are
        RecordBatches, Tables or anything :func:`sabot.interop.to_arrow` accepts (polars and
        pandas DataFrames, Arrow-capsule objects), converted as they are read."""
        def read() -> Iterator[Any]:
            items = iter(batches)
            try:
                for item in items:
                    if isinstance(item, (pa.RecordBatch, pa.Table)):
                        yield item
                    else:
                        yield interop.to_arrow(item, what="from_batches item")
            finally:  # a run that ends early closes the source it read (a generator, a feed)
                close = getattr(items, "close", None)
                if close is not None:
                    close()

        return cls(_Source("from_batches", read))

    @classmethod
    def from_table(cls, table: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> "Stream":
        """Batches of at most ``batch_size`` rows of ``table``: a pyarrow Table or RecordBatch,
        a polars or pandas DataFrame, or any object with ``__arrow_c_stream__`` (a DuckDB
        relation), converted once, without copying where Arrow allows."""
        data = interop.to_arrow(table, what="from_table")
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return cls(_Source("from_table", lambda: iter(data.to_batches(max_chunksize=batch_size))))

    @classmethod
    def from_pylist(cls, rows: Sequence[Mapping[str, Any]], schema: Optional[pa.Schema] = None,
                    batch_size: int = DEFAULT_BATCH_SIZE) -> "Stream":
        table = pa.Table.from_pylist(list(rows), schema=schema)
        return cls(_Source("from_pylist", lambda: iter(table.to_batches(max_chunksize=batch_size))))

    # -- transforms ----------------------------------------------------------------------------
    def _then(self, op: Operator, key: Optional[str] = None) -> "Stream":
        return Stream(_OpNode(self._node, op), key=key if key is not None else self.key)

    def map(self, fn: Callable[[pa.RecordBatch], Any]) -> "Stream":
        """``fn(batch)`` → RecordBatch, Table, None (dropped), or any table
        :func:`sabot.interop.to_arrow` accepts (a polars or pandas DataFrame); runs in the
        operator's scope (kernels called in it keep their state, and the ``missing`` mode in
        effect here)."""
        return self._then(MapOp(fn))

    def filter(self, predicate: Any) -> "Stream":
        """Keep rows where ``predicate(batch)`` (a boolean array) or an Arrow expression is true."""
        return self._then(FilterOp(predicate))

    def select(self, *columns: str) -> "Stream":
        if len(columns) == 1 and isinstance(columns[0], (list, tuple)):
            columns = tuple(columns[0])
        return self._then(SelectOp(columns))

    def flat_map(self, fn: Callable[[pa.RecordBatch], Any]) -> "Stream":
        """``fn(batch)`` → an iterable of batches/tables, or of row dicts."""
        return self._then(FlatMapOp(fn))

    def with_columns(self, **columns: Any) -> "Stream":
        """Add or replace columns: ``name=fn(batch)``, an array of the batch's length, or a scalar."""
        return self._then(WithColumnsOp(columns))

    def rename(self, mapping: Optional[Mapping[str, str]] = None, **names: str) -> "Stream":
        return self._then(RenameOp({**(mapping or {}), **names}))

    def key_by(self, column: str) -> "Stream":
        """Declare the key column (default ``by`` of windows and joins, key of ``to_kafka``)."""
        def has_key(batch: pa.RecordBatch) -> pa.RecordBatch:
            if column not in batch.schema.names:
                raise KeyError(f"key column {column!r} not found; columns present: "
                               f"{', '.join(batch.schema.names)}")
            return batch
        has_key.__qualname__ = f"key_by({column})"
        return self._then(MapOp(has_key), key=column)

    def union(self, *others: "Stream") -> "Stream":
        """All batches of this and the other streams as they arrive (no time order; see merge)."""
        nodes = [self._node] + [o._node for o in others]
        return Stream(_MultiNode("union", nodes, union_events), key=self.key)

    def tumbling(self, size: Any, *, on: str = "timestamp", by: Optional[str] = None,
                 price_column: str = "price", volume_column: Optional[str] = "volume",
                 allowed_lateness: Any = 0, max_skew: Any = "5m",
                 dead_letter_path: Optional[Union[str, os.PathLike]] = None,
                 dead_letter_max_rows: int = 100_000,
                 dead_letter_max_bytes: int = 64 * 1024 * 1024,
                 on_unit: Optional[str] = None) -> "Stream":
        """Tumbling OHLCV bars by event time (``size``: '1s', '500ms', '1m', timedelta or ms).

        ``on``: a timestamp column, or an integer column in ``on_unit`` ('s', 'ms', 'us', 'ns';
        default ns since the epoch — the rule of :mod:`sabot.timeunits`).

        Output: window_start, window_end, [by], open, high, low, close, [volume], count.
        ``by`` defaults to the stream's key (:meth:`key_by`).  A row dated more than
        ``max_skew`` past the others is held back and, unless later rows confirm the jump,
        dead-lettered instead of moving the watermark; the in-memory dead letter is capped
        (overflow: the source's ``dead_letter_topic``, else ``dead_letter_path``, else dropped
        and counted) — see :class:`~sabot.api._ops.TumblingOHLCV`."""
        return self._then(TumblingOHLCV(size, on=on, by=by if by is not None else self.key,
                                        price_column=price_column, volume_column=volume_column,
                                        allowed_lateness=allowed_lateness, max_skew=max_skew,
                                        dead_letter_path=dead_letter_path,
                                        dead_letter_max_rows=dead_letter_max_rows,
                                        dead_letter_max_bytes=dead_letter_max_bytes,
                                        on_unit=on_unit))

    window = tumbling

    def asof_join(self, other: "Stream", on: str = "timestamp", by: Optional[str] = None,
                  tolerance_ms: float = 1000, direction: str = "backward", *,
                  allow_exact_matches: bool = True, right_prefix: Optional[str] = None,
                  suffix: Optional[str] = None, on_unit: str = "ms",
                  idle_timeout_ms: Optional[float] = 5_000, max_skew: Any = "5m",
                  dead_letter_path: Optional[Union[str, os.PathLike]] = None,
                  dead_letter_max_rows: int = 100_000,
                  dead_letter_max_bytes: int = 64 * 1024 * 1024,
                  exchanges: Optional[Tuple[Optional[str], Optional[str]]] = None) -> "Stream":
        """Streaming ASOF join with ``other`` (right side), as ``pandas.merge_asof`` on the whole
        inputs: each left row gets the last (``direction='backward'``), next or nearest right
        row of the same ``by`` key within ``tolerance_ms``.  Both inputs must be in event-time
        order (``from_kafka(..., order_by='timestamp')``).  Right rows arriving behind the right
        watermark are counted (``late_count`` in :attr:`metrics`) and dead-lettered.
        ``by`` defaults to this stream's key.  Once the right side has been idle for
        ``idle_timeout_ms`` (``None``: wait for it forever) left rows are emitted with the right
        rows known, so output and commits keep flowing.  Rows dated more than ``max_skew`` past
        the watermarks are dead-lettered unless confirmed; the in-memory dead letter is capped
        as for :meth:`tumbling` (see :class:`~sabot.api._align.AsofJoinOp`).

        ``on``: a timestamp column, or an integer column in ``on_unit`` ('s', 'ms', 'us', 'ns';
        default 'ms' for joins, see :mod:`sabot.timeunits`).  Every time of the join is read in
        that unit: matching, ``tolerance_ms``, the watermarks that release commits,
        ``max_skew`` and the idle release.

        Output names (one schema for the whole run): ``exchanges=(left venue, right venue)``
        gives ``<venue>_<column>`` names from the arguments alone; without it, inputs with an
        ``exchange`` column are named after the venue of each side's first rows, as described
        on :class:`~sabot.fintech.StreamingAsofJoinKernel`."""
        from ..fintech import StreamingAsofJoinKernel

        by = by if by is not None else self.key
        kernel = StreamingAsofJoinKernel(on=on, by=by, tolerance_ms=tolerance_ms,
                                         direction=direction,
                                         allow_exact_matches=allow_exact_matches,
                                         right_prefix=right_prefix, suffix=suffix,
                                         on_unit=on_unit, exchanges=exchanges)
        op = AsofJoinOp(kernel, idle_timeout_ms=idle_timeout_ms, max_skew=max_skew,
                        dead_letter_path=dead_letter_path,
                        dead_letter_max_rows=dead_letter_max_rows,
                        dead_letter_max_bytes=dead_letter_max_bytes)
        return Stream(_AsofNode(self._node, other._node, op, on), key=self.key)

    # -- multi-stream ----------------------------------------------------------------------------
    @staticmethod
    def merge(*streams: "Stream", on: str = "timestamp",
              idle_timeout_ms: Optional[float] = 10_000, max_skew: Any = "5m",
              on_unit: Optional[str] = None) -> "Stream":
        """Time-ordered union of streams that are each in ``on`` order.  A row dated more
        than ``max_skew`` past every input is held until confirmed, else dead-lettered.
        ``on_unit``: the unit of an integer ``on`` column (default ns, see
        :mod:`sabot.timeunits`)."""
        if not streams:
            raise ValueError("merge needs at least one stream")
        if on_unit is not None:
            check_unit(on_unit)
        nodes = [s._node for s in streams]
        return Stream(_MultiNode(f"merge(on={on})", nodes,
                                 lambda its: merge_events(its, on, idle_timeout_ms, max_skew,
                                                          on_unit=on_unit)),
                      key=streams[0].key)

    @staticmethod
    def zip(*streams: "Stream", on: str = "timestamp",
            idle_timeout_ms: Optional[float] = 10_000,
            max_skew: Any = "5m",
            on_unit: Optional[str] = None) -> Iterator[Tuple[pa.RecordBatch, ...]]:
        """Tuples of batches, one per stream, covering the same event-time span.

        A stream with no rows in a span gives an empty batch (``None`` before its first batch).
        ``on_unit``: the unit of an integer ``on`` column (default ns, see
        :mod:`sabot.timeunits`).
        """
        return _run_zip(streams, on, idle_timeout_ms, max_skew, on_unit, None)

    @staticmethod
    def zip_async(*streams: "Stream", on: str = "timestamp",
                  idle_timeout_ms: Optional[float] = 10_000, max_skew: Any = "5m",
                  on_unit: Optional[str] = None) -> AsyncIterator[Tuple[pa.RecordBatch, ...]]:
        """``async for`` version of :meth:`zip` (blocking reads run in a worker thread).
        Cancelling the task (or Ctrl+C under ``asyncio.run``) ends the zip cleanly: every
        source and Kafka consumer is closed and the worker thread has ended when the
        cancellation reaches the caller (:func:`~._runtime.aiter_in_thread`)."""
        stop = threading.Event()
        return aiter_in_thread(_run_zip(streams, on, idle_timeout_ms, max_skew, on_unit, stop),
                               stop)

    # -- running -------------------------------------------------------------------------------
    def kafka_sources(self) -> List[KafkaSource]:
        """The Kafka sources of this plan."""
        return kafka_sources(self._node)

    def _prepare_run(self) -> RunHooks:
        """Restore the checkpoint (``checkpoint_dir`` / ``changelog_topic``) and start metrics
        (``metrics_port``): see :func:`~._runtime.prepare_run`."""
        return prepare_run(self, self._node, self._stop_event)

    def _events(self) -> Iterator[Event]:
        for op in self._node.operators():
            op.begin_run()
        bind_dead_letters(self._node.operators(), self.kafka_sources())
        return self._node.events()

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        hooks = self._prepare_run()
        yield from drive(self._events(), hooks)

    def __aiter__(self) -> AsyncIterator[pa.RecordBatch]:
        """``async for batch in stream``: the run of ``for`` on a worker thread; cancelling the
        task stops the run as :meth:`stop` does and closes its sources before the cancellation
        reaches the caller (:func:`~._runtime.aiter_in_thread`)."""
        return aiter_in_thread(iter(self), self._stop_event)

    def collect(self) -> pa.Table:
        """Run the stream to its end; all rows as one Table."""
        batches = list(self)
        if not batches:
            return pa.table({})
        return concat_promote([pa.Table.from_batches([b]) for b in batches])

    def to_polars(self) -> Any:
        """Run the stream to its end; all rows as one polars DataFrame (needs polars)."""
        try:
            import polars as pl
        except ImportError:
            raise ImportError("Stream.to_polars needs polars: pip install polars") from None
        return pl.from_arrow(self.collect())

    def to_pandas(self) -> Any:
        """Run the stream to its end; all rows as one pandas DataFrame (needs pandas)."""
        table = self.collect()
        try:
            return table.to_pandas()
        except ImportError:
            raise ImportError("Stream.to_pandas needs pandas: pip install pandas") from None

    def take(self, n: int) -> pa.Table:
        """The first ``n`` rows; stops reading once it has them (the last batch is not committed)."""
        got: List[pa.Table] = []
        count = 0
        it = iter(self)
        try:
            for b in it:
                if count + b.num_rows >= n:
                    got.append(pa.Table.from_batches([b.slice(0, n - count)]))
                    count = n
                    break
                got.append(pa.Table.from_batches([b]))
                count += b.num_rows
        finally:
            close_iterator(it)
        return concat_promote(got) if got else pa.table({})

    def to_parquet(self, path: Union[str, os.PathLike], *, rows_per_file: Optional[int] = None,
                   compression: str = "zstd") -> List[str]:
        """Write every batch to Parquet; the written file paths.

        One file (``path`` ends with ``.parquet`` and no ``rows_per_file``): written as a
        ``.part`` next to it and linked to ``path`` when complete; offsets are committed then.
        An existing ``path`` is refused (``FileExistsError``) before anything is read: a file is
        never replaced.  With ``checkpoint_dir`` or ``changelog_topic`` every checkpoint flushes
        the sink and commits offsets, so each flush goes to its own file next to ``path``:
        ``<stem>-000001.parquet``, ``<stem>-000002.parquet``, ... (a restarted run continues
        after the highest number present; read them back with ``from_parquet("<stem>-*.parquet")``).
        A directory (``rows_per_file=N``, or a path without ``.parquet``): files of about N rows
        named ``part-<run>-<n>.parquet``, after each of which the offsets of everything in it
        are committed.

        Every file is fsynced, and so is its directory, before the offsets of its rows are
        committed: a killed pipeline loses no record and never leaves a truncated
        ``.parquet`` file.  An I/O error (disk full, quota) is logged, counted in
        ``metrics['to_parquet']['write_errors']`` and retried with backoff, the open file's
        rows held in memory meanwhile; nothing of them is committed until they are durable.
        """
        checkpointed = any(src.checkpoint_dir is not None or src.changelog_topic is not None
                           for src in self.kafka_sources())
        self._sink_metrics = {}
        sink = _ParquetSink(Path(path), rows_per_file, compression, numbered=checkpointed,
                            metrics=self._sink_metrics, stop=self._stop_event)
        self._sink_name = "to_parquet"
        try:
            hooks = self._prepare_run()
            run = drive(self._events(), hooks, ack=sink.ack, finish=sink.close,
                        flush=sink.close_file)
            try:
                for batch in run:
                    sink.write(batch)
            finally:  # a failed write closes the sources and releases the checkpoint now
                close_iterator(run)
        except BaseException:
            sink.abort()
            raise
        return sink.files

    def to_kafka(self, bootstrap_servers: str, topic: str, key: Optional[str] = "symbol", *,
                 kafka_config: Optional[Mapping[str, Any]] = None,
                 **producer_config: Any) -> Dict[str, int]:
        """Produce every row as a JSON message keyed by ``key``; delivery counters.

        ``kafka_config``: the producer's client configuration (security, tuning); by default
        that of this plan's ``from_kafka`` source on the same ``bootstrap_servers``.  Extra
        keyword arguments are librdkafka producer settings.  Offsets are committed once the
        producer has delivered everything before them: at once when it already has, else
        within :attr:`KafkaSink.COMMIT_DELAY_S` (the sink then waits for the deliveries), when
        the source falls idle, and at the end; processing goes on meanwhile, so a busy stream
        is not held up by a delivery round trip per batch.  A record that cannot be delivered
        stops all further commits, and :class:`DeliveryError` (a ``RuntimeError``) is raised when
        the run ends (the undelivered records are read again by the next run of the group)."""
        if kafka_config is None:
            same = [src.kafka_config for src in self.kafka_sources()
                    if src.bootstrap_servers == bootstrap_servers]
            kafka_config = same[0] if same else None
        sink = KafkaSink(bootstrap_servers, topic, key=key, kafka_config=kafka_config,
                         **producer_config)
        self._sink_metrics = sink.metrics
        self._sink_name = "to_kafka"

        def flush() -> None:
            sink.settle()
            if not sink.healthy:  # checkpoints must not commit past a lost record
                sink.check()

        def events() -> Iterator[Event]:
            """The plan's events; an idle source first settles the commits held by the sink."""
            inner = self._events()
            try:
                for ev in inner:
                    if ev is IDLE:
                        sink.settle()
                    yield ev
            finally:
                close_iterator(inner)

        try:
            hooks = self._prepare_run()
            run = drive(events(), hooks, ack=sink.ack, finish=sink.settle, flush=flush)
            try:
                for batch in run:
                    sink.write(batch)
            finally:  # a failed write closes the sources and releases the checkpoint now
                close_iterator(run)
        finally:
            sink.close()
        sink.check()
        return dict(sink.metrics)

    def stop(self) -> None:
        """Ask the running pipeline (from another thread or a signal handler) to stop cleanly:
        at the next point between batches the sink is flushed, a final checkpoint is written
        (with ``checkpoint_dir``) and the run ends as if the source had ended."""
        self._stop_event.set()

    # -- state and metrics -------------------------------------------------------------------------
    def operators(self) -> List[Operator]:
        return self._node.operators()

    def state_dict(self) -> Dict[str, Any]:
        """Every operator's state (kernel scopes, window bars), keyed by plan position and name.
        UncheckpointedStateError when an operator uses a stateful object whose state it does
        not hold (a kernel captured by a function): the answer would be incomplete."""
        check_checkpointable(self.operators())
        return {"version": 1, "operators": {f"{i}:{op.name}": op.state_dict()
                                            for i, op in enumerate(self.operators())}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore operator state; the next run continues from it."""
        if state.get("version") != 1:
            raise ValueError(f"unsupported stream state version {state.get('version')!r}")
        ops = {f"{i}:{op.name}": op for i, op in enumerate(self.operators())}
        unknown = set(state["operators"]) - set(ops)
        if unknown:
            raise KeyError(f"state for unknown operator(s) {sorted(unknown)}; "
                           f"this stream has {sorted(ops)}")
        for name, op_state in state["operators"].items():
            ops[name].load_state_dict(op_state)

    @property
    def metrics(self) -> Dict[str, Dict[str, Any]]:
        """Counters per source and operator (and the sink: ``to_parquet`` / ``to_kafka``) of
        the last (or current) run."""
        out = self._node.metrics()
        if self._sink_metrics is not None:
            out[self._sink_name] = dict(self._sink_metrics)
        return out


def _run_zip(streams: Sequence["Stream"], on: str, idle_timeout_ms: Optional[float],
             max_skew: Any, on_unit: Optional[str],
             stop: Optional[threading.Event]) -> Iterator[Tuple[pa.RecordBatch, ...]]:
    """The run of :meth:`Stream.zip`; ``stop`` ends it at the next point between batches."""
    if not streams:
        raise ValueError("zip needs at least one stream")
    if on_unit is not None:
        check_unit(on_unit)
    node = _MultiNode(f"zip(on={on})", [s._node for s in streams],
                      lambda its: zip_events(its, on, idle_timeout_ms, max_skew,
                                             on_unit=on_unit))
    checkpointer_for(None, node)  # refuses checkpoint_dir / changelog_topic: not linear

    def run() -> Iterator[Tuple[pa.RecordBatch, ...]]:
        for op in node.operators():
            op.begin_run()
        yield from drive(node.events(), RunHooks(stop=stop))

    return run()


class _ParquetSink:
    """Parquet files written so that nothing consumed is lost (see :meth:`Stream.to_parquet`).

    Each file is written as a ``.part``; closing it fsyncs the file, links it to its final
    name (never over an existing file), fsyncs the directory, removes the ``.part``, and only
    then runs the commits of the rows in it.  An I/O error (disk full, quota, file size limit)
    while writing or closing is logged, counted in ``metrics['write_errors']`` and retried with
    backoff: the rows of the open file are held in memory (up to ``hold_bytes``) and written
    again to a fresh ``.part``, so no row is dropped and no offset is committed before its rows
    are durable.  A file grown past ``hold_bytes`` is no longer held: an I/O error then ends the
    run (nothing of that file was committed, so the next run reads its rows again).
    """

    def __init__(self, path: Path, rows_per_file: Optional[int], compression: str, *,
                 numbered: bool = False, metrics: Optional[Dict[str, int]] = None,
                 max_backoff_s: float = 5.0, stop: Optional[threading.Event] = None,
                 hold_bytes: int = 256 << 20) -> None:
        self.directory_mode = rows_per_file is not None or path.suffix != ".parquet"
        #: one file per flush next to ``path`` (``<stem>-000001.parquet``, ...), for runs that
        #: commit offsets at every flush (checkpoints)
        self.numbered = numbered and not self.directory_mode
        self.path = path
        self.rows_per_file = rows_per_file
        self.compression = compression
        self.files: List[str] = []
        self.metrics: Dict[str, int] = metrics if metrics is not None else {}
        for k in ("rows_written", "files_written", "write_errors"):
            self.metrics.setdefault(k, 0)
        self.max_backoff_s = max_backoff_s
        self._stop = stop  # Stream.stop() ends a run whose writes keep failing
        self._writer: Optional[pq.ParquetWriter] = None
        self._schema: Optional[pa.Schema] = None
        self._part: Optional[Path] = None
        self._held: List[pa.RecordBatch] = []  # rows of the open file, until it is durable
        self._held_bytes = 0
        self._holding = True  # False once the open file outgrew hold_bytes
        self.hold_bytes = hold_bytes
        self._rows = 0
        self._pending: List[Commit] = []
        self._run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self._parts = 0
        self._linked: Optional[Path] = None  # final name of the file being published
        self._last_error_log = 0.0
        if self.directory_mode:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not self.numbered and os.path.lexists(path):
                raise FileExistsError(f"to_parquet: {path} already exists (an existing file is "
                                      "never replaced); remove it or write elsewhere")

    # -- naming ------------------------------------------------------------------------------
    def _final_name(self) -> Path:
        """The name of the file being closed: never one that exists."""
        if self.directory_mode:
            while True:
                final = self.path / f"part-{self._run_id}-{self._seq:05d}.parquet"
                self._seq += 1
                if not os.path.lexists(final):
                    return final
        if not self.numbered:
            return self.path
        stem, parent = self.path.stem, self.path.parent
        if self._seq == 0:  # continue after the files of earlier runs
            taken = [int(m.group(1)) for m in (re.fullmatch(
                re.escape(stem) + r"-(\d{6,})\.parquet", f) for f in os.listdir(parent)) if m]
            self._seq = max(taken, default=0) + 1
        while True:
            final = parent / f"{stem}-{self._seq:06d}.parquet"
            self._seq += 1
            if not os.path.lexists(final):
                return final

    def _part_name(self) -> Path:
        """A ``.part`` name of this run (never matched by ``*.parquet``)."""
        self._parts += 1
        where = self.path if self.directory_mode else self.path.parent
        stem = "part" if self.directory_mode else self.path.name
        return where / f"{stem}.{self._run_id}-{self._parts}.part"

    # -- writing -----------------------------------------------------------------------------
    def write(self, batch: pa.RecordBatch) -> None:
        if self._schema is None:
            self._schema = batch.schema
        elif not batch.schema.equals(self._schema):
            try:
                batch = pa.Table.from_batches([batch]).select(self._schema.names).cast(
                    self._schema).to_batches()[0]
            except (KeyError, pa.ArrowInvalid, ValueError) as exc:
                raise ValueError(f"to_parquet: batch schema {batch.schema} does not match the "
                                 f"file schema {self._schema}: {exc}") from exc
        if self.rows_per_file is not None and self._rows >= self.rows_per_file:
            self._close_file()
        self._hold(batch)
        self._rows += batch.num_rows
        self._retrying("write", lambda: self._append(batch))

    def _hold(self, batch: pa.RecordBatch) -> None:
        if not self._holding:
            return
        self._held_bytes += batch.nbytes
        if self._held_bytes <= self.hold_bytes:
            self._held.append(batch)
            return
        self._holding = False
        self._held = []
        logger.info("to_parquet(%s): the open file passed %d MiB and is no longer held in "
                    "memory; an I/O error will end the run (use rows_per_file or checkpoints "
                    "for smaller files)", self.path, self.hold_bytes >> 20)

    def _append(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self._reopen()  # writes every held row, this batch included
            if not self._holding:
                self._writer.write_batch(batch)
        else:
            self._writer.write_batch(batch)

    def _reopen(self) -> None:
        """A fresh ``.part`` holding every row of the open file."""
        self._part = self._part_name()
        self._writer = pq.ParquetWriter(str(self._part), self._schema,
                                        compression=self.compression)
        for b in self._held:
            self._writer.write_batch(b)

    def _discard_writer(self) -> None:
        """Drop a writer that failed (its ``.part`` may be torn) and its file."""
        if self._linked is not None:
            return  # the file is complete and linked; only its publication is being retried
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # already failing: the rows are held and written again
                pass
        if self._part is not None:
            try:
                os.unlink(self._part)
            except OSError:
                pass

    def _retrying(self, what: str, action: Callable[[], Any]) -> Any:
        """Run ``action``; on an I/O error log, count, back off and try again with a fresh
        file holding every held row (the open file's rows are never dropped)."""
        delay = 0.05
        while True:
            try:
                return action()
            except OSError as exc:
                if isinstance(exc, FileExistsError) and not (self.directory_mode or self.numbered):
                    self._discard_writer()
                    raise FileExistsError(f"to_parquet: {self.path} appeared while it was being "
                                          "written (an existing file is never replaced)") from None
                if not self._holding and self._linked is None:
                    self.metrics["write_errors"] += 1
                    self._discard_writer()
                    raise OSError(exc.errno, f"to_parquet({self.path}): {what} failed ({exc}) "
                                  f"and the open file (over {self.hold_bytes >> 20} MiB) is not "
                                  "held to write again: nothing of it was committed, the next "
                                  "run reads its rows again") from None
                self.metrics["write_errors"] += 1
                now = time.monotonic()
                if now - self._last_error_log >= 10.0 or self.metrics["write_errors"] <= 3:
                    self._last_error_log = now
                    logger.error("to_parquet(%s): %s failed (%s); %d row(s) held, nothing of "
                                 "them committed; retrying in %.2fs (%d I/O error(s) so far)",
                                 self.path, what, exc, self._rows, delay,
                                 self.metrics["write_errors"])
                self._discard_writer()
                if self._stop is not None and self._stop.wait(delay):
                    raise OSError(exc.errno, f"to_parquet({self.path}): stopped while {what} "
                                  f"kept failing ({exc}); {self._rows} row(s) not written and "
                                  "their offsets not committed: the next run reads them again"
                                  ) from None
                if self._stop is None:
                    time.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)

    def ack(self, commit: Commit) -> None:
        self._pending.append(commit)
        if self.rows_per_file is not None and self._rows >= self.rows_per_file:
            self._close_file()

    def close_file(self) -> None:
        """Close the current file (durable under its final name), then run its commits."""
        self._close_file()

    def _publish(self) -> None:
        """Close, fsync, link to the final name (never replacing a file), fsync the directory.
        Idempotent across retries: once linked, the rows are not written again."""
        if self._linked is None:
            if self._writer is None:
                self._reopen()
            self._writer.close()
            self._writer = None
            fsync_path(self._part)
            final = self._final_name()
            # link, not rename: it fails if ``final`` exists, so nothing is ever replaced
            os.link(self._part, final)
            self._linked = final
        fsync_path(self._linked.parent)  # the new name is durable before the .part goes
        if self._part is not None and os.path.lexists(self._part):
            os.unlink(self._part)
        self._part = None
        self.files.append(str(self._linked))
        self._linked = None
        self.metrics["files_written"] += 1
        self.metrics["rows_written"] += self._rows

    def _close_file(self) -> None:
        if self._rows:
            self._retrying("closing the file", self._publish)
            self._held = []
            self._held_bytes = 0
            self._holding = True
            self._rows = 0
        pending, self._pending = self._pending, []
        for c in pending:
            c.run()

    def close(self) -> None:
        if self._schema is None and not self.files:
            logger.warning("to_parquet(%s): the stream had no rows; no file written", self.path)
        self._close_file()

    def abort(self) -> None:
        """The run failed: drop the open file's ``.part`` (its offsets were never committed,
        so its rows are read again by the next run)."""
        self._discard_writer()


