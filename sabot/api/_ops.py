"""Single-input Stream operators.

Every operator owns a :class:`~sabot.fintech._scope.StateScope` and runs user functions inside
``with scope.active():`` so that function-form kernels (``lambda b: ewma(b, alpha=0.94)``) find
their state again on the next batch (see :mod:`sabot.fintech._scope`).  An exception raised by a user function is
re-raised as :class:`StreamOperatorError` naming the operator, e.g.
``map #2 (<lambda>) failed: ZeroDivisionError: division by zero``.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pat

from .. import interop
from ..fintech._scope import StateScope, unsaved_state
from ..timeunits import check_unit, column_ns, duration_ns
from ._events import Commit

logger = logging.getLogger(__name__)


class StreamOperatorError(RuntimeError):
    """A user function or operator failed on a batch; the message names the operator."""


def callable_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or getattr(fn, "__qualname__", None)
    if name is None:
        name = type(fn).__name__
    return name


def to_batches(value: Any, what: str) -> List[pa.RecordBatch]:
    """Normalise an operator function's return value to a list of RecordBatches: Arrow as is,
    a polars or pandas DataFrame or Arrow-capsule object converted (:mod:`sabot.interop`)."""
    if value is None:
        return []
    if isinstance(value, pa.RecordBatch):
        return [value]
    if not isinstance(value, pa.Table):
        if not interop.is_table(value):
            raise TypeError(f"{what} must return a pyarrow.RecordBatch or Table, a polars or "
                            f"pandas DataFrame or another Arrow table (or None), got "
                            f"{interop.type_name(value)}")
        value = interop.to_arrow(value, what=f"{what} result")
        if isinstance(value, pa.RecordBatch):
            return [value]
    return value.combine_chunks().to_batches() if value.num_rows else []


class Operator:
    """Base: one input, zero or more output batches per input batch."""

    kind = "op"
    holds_commits = False

    def __init__(self) -> None:
        self.scope = StateScope()
        self.name = self.kind
        self.rows_in = 0
        self.rows_out = 0
        self._restored = False

    def describe(self) -> str:
        return ""

    def set_position(self, index: int) -> None:
        detail = self.describe()
        self.name = f"{self.kind} #{index}" + (f" ({detail})" if detail else "")

    def fail(self, exc: BaseException) -> StreamOperatorError:
        err = StreamOperatorError(f"{self.name} failed: {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        return err

    # -- run lifecycle ------------------------------------------------------------------------
    def begin_run(self) -> None:
        """Fresh state for a new run unless state was just restored with load_state_dict."""
        if not self._restored:
            self.reset()
        self._restored = False
        self.rows_in = self.rows_out = 0

    def reset(self) -> None:
        self.scope.reset()

    def state_dict(self) -> Dict[str, Any]:
        return {"scope": self.scope.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scope.load_state_dict(state["scope"])
        self._restored = True

    def unsaved_state(self) -> List[str]:
        """Stateful objects this operator uses but does not checkpoint (see
        :func:`sabot.fintech._scope.unsaved_state`); empty when its state is all saved."""
        return []

    # -- data -----------------------------------------------------------------------------------
    def process(self, batch: pa.RecordBatch) -> List[pa.RecordBatch]:
        raise NotImplementedError

    def finish(self) -> List[pa.RecordBatch]:
        return []

    # commits (only for operators that hold rows in state)
    def hold(self, commit: Commit) -> None:  # pragma: no cover - overridden where used
        raise NotImplementedError

    def released(self, final: bool = False) -> List[Commit]:
        return []

    def metrics(self) -> Dict[str, Any]:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out}

    # -- per-partition tasks (``changelog_topic``) ------------------------------------------------
    def clone(self) -> "Operator":
        """A fresh operator with this one's configuration and name and new, independent state
        (one per source partition).  TypeError when the operator cannot be cloned."""
        twin = self._fresh()
        twin.name = self.name
        twin.scope.missing = self.scope.missing      # the kernels' null/NaN mode goes along
        return twin

    def _fresh(self) -> "Operator":
        raise TypeError(f"{self.name} ({type(self).__name__}) cannot be cloned per partition")


def fresh_callable(fn: Any, owner: str) -> Any:
    """``fn`` for a new task: a callable's own ``clone()``; a kernel-class instance rebuilt from
    its configuration (``type(k)(**k.config)``); a plain function as is (its kernels' state lives
    in the operator's scope).  TypeError for other callables that keep their own state."""
    from ..fintech._kernel import Kernel

    clone = getattr(fn, "clone", None)
    if callable(clone):
        return clone()
    if isinstance(fn, Kernel):
        try:
            twin = type(fn)(**fn.config)
        except TypeError as exc:
            raise TypeError(f"{owner}: {fn!r} cannot be rebuilt from its configuration: {exc}") from exc
        if twin.config != fn.config:
            raise TypeError(f"{owner}: {fn!r} rebuilt from its configuration differs: {twin!r}")
        return twin
    if hasattr(fn, "state_dict"):
        raise TypeError(f"{owner}: {type(fn).__name__} keeps its own state but has no clone() "
                        "method; give it one returning a fresh instance of the same configuration")
    return fn


class FnOperator(Operator):
    """An operator around a user function, run inside this operator's state scope."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(f"{self.kind} expects a callable, got {type(fn).__name__}")
        self.fn = fn

    def describe(self) -> str:
        return callable_name(self.fn)

    def call(self, batch: pa.RecordBatch) -> Any:
        try:
            with self.scope.active():
                return self.fn(batch)
        except StreamOperatorError:
            raise
        except Exception as exc:
            raise self.fail(exc) from exc

    def reset(self) -> None:
        super().reset()
        reset = getattr(self.fn, "reset", None)
        if callable(reset) and hasattr(self.fn, "state_dict"):
            reset()

    # Kernel-class instances used directly (``stream.map(EWMA(alpha=0.94))``) are checkpointed too.
    def state_dict(self) -> Dict[str, Any]:
        d = super().state_dict()
        if hasattr(self.fn, "state_dict") and hasattr(self.fn, "load_state_dict"):
            d["fn"] = self.fn.state_dict()
        return d

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "fn" in state:
            self.fn.load_state_dict(state["fn"])

    def unsaved_state(self) -> List[str]:
        return unsaved_state(self.fn)

    def _fresh(self) -> "Operator":
        return type(self)(fresh_callable(self.fn, self.name))


class MapOp(FnOperator):
    kind = "map"

    def process(self, batch: pa.RecordBatch) -> List[pa.RecordBatch]:
        out = self.call(batch)
        try:
            return to_batches(out, self.name)
        except (TypeError, ValueError) as exc:
            raise self.fail(exc) from exc


class FlatMapOp(FnOperator):
    kind = "flat_map"

    def process(self, batch: pa.RecordBatch) -> List[pa.RecordBatch]:
        out = self.call(batch)
        if out is None:
            return []
        if interop.is_table(out):
            return to_batches(out, self.name)
        batches: List[pa.RecordBatch] = []
        rows: List[dict] = []
        try:
            for item in out:
                if isinstance(item, Mapping):
                    rows.append(dict(item))
                else:
                    batches.extend(to_batches(item, self.name))
        except StreamOperatorError:
            raise
        except Exception as exc:
            raise self.fail(exc) from exc
        if rows:
            if batches:
                raise self.fail(TypeError("returned a mix of rows (dicts) and batches"))
            return pa.Table.from_pylist(rows).to_batches()
        return batches


class FilterOp(Operator):
    kind = "filter"

    def __init__(self, predicate: Any) -> None:
        super().__init__()
        if not (callable(predicate) or isinstance(predicate, pc.Expression)):
            raise TypeError("filter expects a function returning a boolean array, or a "
                            f"pyarrow.compute.Expression; got {type(predicate).__name__}")
        self.predicate = predicate

    def unsaved_state(self) -> List[str]:
        if isinstance(self.predicate, pc.Expression):
            return []
        return unsaved_state(self.predicate, owner_saves_fn=False)

    def _fresh(self) -> "Operator":
        return FilterOp(fresh_callable(self.predicate, self.name)
                        if not isinstance(self.predicate, pc.Expression) else self.predicate)

    def describe(self) -> str:
        if isinstance(self.predicate, pc.Expression):
            return str(self.predicate)
        return callable_name(self.predicate)

    def process(self, batch: pa.RecordBatch) -> List[pa.RecordBatch]:
        try:
            if isinstance(self.predicate, pc.Expression):
                out = batch.filter(self.predicate)
            else:
                with self.scope.active():
                    mask = self.predicate(batch)
                if isinstance(mask, pa.ChunkedArray):
                    mask = mask.combine_chunks()
                if not isinstance(mask, pa.Array):
                    mask = pa.array(np.asarray(mask, dtype=bool))
                if not pat.is_boolean(mask.type):
                    raise TypeError(f"predicate returned {mask.type}, expected bool")
                if len(mask) != batch.num_rows:
                    raise ValueError(f"predicate returned {len(mask)} values for a batch of "
                                     f"{batch.num_rows} rows")
                out = batch.filter(mask)  # null mask → row dropped
        except StreamOperatorError:
            raise
        except Exception as exc:
            raise self.fail(exc) from exc
        return [out] if out.num_rows else []


class SelectOp(Operator):
    kind = "select"

    def __init__(self, columns: Sequence[str]) -> None:
        super().__init__()
        if not columns:
            raise ValueError("select needs at least one column")
        self.columns = list(columns)

    def describe(self) -> str:
        return ", ".join(self.columns)

    def _fresh(self) -> "Operator":
        return SelectOp(self.columns)

    def process(self, batch: pa.RecordBatch) -> List[pa.RecordBatch]:
        missing = [c for c in self.columns if c not in batch.schema.names]
        if missing:
            raise self.fail(KeyError(f"column(s) {', '.join(map(repr, missing))} not found; "
                                     f"columns present: {', '.join(batch.schema.names)}"))
        return [batch.select(self.columns)]


class RenameOp(Operator):
    kind = "rename"

    def __init__(self, mapping: Mapping[str, str]) -> None:
        super().__init__()
        self.mapping = dict(mapping)

    def describe(self) -> str:
        return ", ".join(f"{k}->{v}" for k, v in self.mapping.items())

    def _fresh(self) -> "Operator":
        return RenameOp(self.mapping)

    def process(self, batch: pa.RecordBatch) -> List[pa.RecordBatch]:
        missing = [c for c in self.mapping if c not in batch.schema.names]
        if missing:
            raise self.fail(KeyError(f"column(s) {', '.join(map(repr, missing))} not found; "
                                     f"columns present: {', '.join(batch.schema.names)}"))
        return [batch.rename_columns([self.mapping.get(n, n) for n in batch.schema.names])]


class WithColumnsOp(Operator):
    """Append or replace columns: each value a function of the batch, an array, or a scalar."""

    kind = "with_columns"

    def __init__(self, columns: Mapping[str, Any]) -> None:
        super().__init__()
        if not columns:
            raise ValueError("with_columns needs at least one name=value")
        self.columns = dict(columns)

    def describe(self) -> str:
        return ", ".join(self.columns)

    def unsaved_state(self) -> List[str]:
        return [f"{name}: {what}" for name, spec in self.columns.items() if callable(spec)
                for what in unsaved_state(spec, owner_saves_fn=False)]

    def _fresh(self) -> "Operator":
        return WithColumnsOp({name: fresh_callable(spec, self.name) if callable(spec) else spec
                              for name, spec in self.columns.items()})

    def _value(self, name: str, spec: Any, batch: pa.RecordBatch) -> pa.Array:
        value = spec
        if callable(spec):
            with self.scope.active():
                value = spec(batch)
        if isinstance(value, pa.ChunkedArray):
            value = value.combine_chunks()
        if isinstance(value, pa.Array):
            arr = value
        elif isinstance(value, (np.ndarray, list, tuple)):
            arr = pa.array(value)
        else:  # a scalar: broadcast
            scalar = value if isinstance(value, pa.Scalar) else pa.scalar(value)
            arr = pa.repeat(scalar, batch.num_rows)
        if len(arr) != batch.num_rows:
            raise ValueError(f"column {name!r}: {len(arr)} values for a batch of "
                             f"{batch.num_rows} rows")
        return arr

    def process(self, batch: pa.RecordBatch) -> List[pa.RecordBatch]:
        out = batch
        try:
            for name, spec in self.columns.items():
                arr = self._value(name, spec, out)
                idx = out.schema.get_field_index(name)
                if idx >= 0:
                    out = out.set_column(idx, name, arr)
                else:
                    out = out.append_column(name, arr)
        except Exception as exc:
            raise self.fail(exc) from exc
        return [out]


# --------------------------------------------------------------------------------------------
# Tumbling OHLCV bars by event time
# --------------------------------------------------------------------------------------------
def parse_duration_ns(value: Any, what: str = "size") -> int:
    """A positive duration as ns (see :func:`sabot.timeunits.duration_ns`)."""
    return duration_ns(value, what)


def timestamps_ns(column: Union[pa.Array, pa.ChunkedArray], name: str,
                  on_unit: Optional[str] = None) -> np.ndarray:
    """An event-time column as int64 ns numpy, nulls → INT64_MIN (see
    :func:`sabot.timeunits.column_ns`: integers are read in ``on_unit``, default ns)."""
    return column_ns(column, name, on_unit)


def float_values(column: Union[pa.Array, pa.ChunkedArray], name: str) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not (pat.is_floating(column.type) or pat.is_integer(column.type) or pat.is_decimal(column.type)):
        raise TypeError(f"column {name!r} has type {column.type}; expected a numeric type")
    if column.type != pa.float64():
        column = column.cast(pa.float64())
    return column.to_numpy(zero_copy_only=False)        # nulls come out as NaN


# --------------------------------------------------------------------------------------------
# Bounded dead letter and the event-time skew guard (shared by windows, joins and alignment)
# --------------------------------------------------------------------------------------------
#: Default cap of an in-memory dead letter: rows and Arrow bytes (whichever is reached first).
DEAD_LETTER_MAX_ROWS = 100_000
DEAD_LETTER_MAX_BYTES = 64 * 1024 * 1024
#: Seconds between two overflow warnings of one dead letter (the counters always count).
DEAD_LETTER_WARN_EVERY_S = 10.0
#: Default bound on how far one row may move an event-time watermark past the others.
DEFAULT_MAX_SKEW = "5m"

REASON_LATE = "late"
REASON_SKEW = "beyond_max_skew"


class DeadLetter:
    """Rows an operator rejected, with the reason, kept in memory up to a cap.

    Rows are kept as they arrived (:meth:`table`), counted per reason (:attr:`counts`).  Past
    ``max_rows`` rows or ``max_bytes`` Arrow bytes the oldest rows leave memory: to the Kafka
    topic bound with :meth:`bind_kafka` (the stream's ``dead_letter_topic``; one JSON message per
    row, headers ``sabot.error`` = reason and ``sabot.source`` = operator), else appended to
    ``path`` (JSON lines, the reason under ``sabot_error``), else dropped — counted in
    :attr:`dropped` and announced by a warning at most every ``DEAD_LETTER_WARN_EVERY_S``.
    Memory therefore stays bounded and no row leaves without a count.
    """

    def __init__(self, owner: str, *, max_rows: int = DEAD_LETTER_MAX_ROWS,
                 max_bytes: int = DEAD_LETTER_MAX_BYTES,
                 path: Optional[Union[str, "os.PathLike[str]"]] = None) -> None:
        if max_rows < 0 or max_bytes < 0:
            raise ValueError(f"dead letter caps must be >= 0, got max_rows={max_rows}, "
                             f"max_bytes={max_bytes}")
        self.owner = owner
        self.max_rows = int(max_rows)
        self.max_bytes = int(max_bytes)
        self.path = path
        self._kafka: Optional[Tuple[str, str]] = None
        self._producer: Any = None
        self.reset()

    def reset(self) -> None:
        """Forget the kept rows and the counters (a new run)."""
        self._entries: Deque[Tuple[str, pa.RecordBatch]] = deque()
        self.rows = 0
        self.nbytes = 0
        self.counts: Dict[str, int] = {}
        self.dropped = 0
        self.spilled = 0
        self._last_warn = -np.inf
        self._unreported = 0

    def bind_kafka(self, bootstrap_servers: str, topic: str) -> None:
        """Spill rows beyond the cap to ``topic`` (takes precedence over ``path``)."""
        self._kafka = (bootstrap_servers, topic)

    def __len__(self) -> int:
        return self.rows

    def add(self, rows: Union[pa.RecordBatch, pa.Table], reason: str) -> None:
        """Keep ``rows`` (rejected for ``reason``); spill or drop the oldest beyond the cap."""
        if isinstance(rows, pa.Table):
            batches = rows.combine_chunks().to_batches()
        else:
            batches = [rows]
        for b in batches:
            if not b.num_rows:
                continue
            self.counts[reason] = self.counts.get(reason, 0) + b.num_rows
            self._entries.append((reason, b))
            self.rows += b.num_rows
            self.nbytes += b.nbytes
        self._enforce_cap()

    def table(self) -> pa.Table:
        """The kept rows, oldest first (schemas of different batches are unified)."""
        if not self._entries:
            return pa.table({})
        tables = [pa.Table.from_batches([b]) for _, b in self._entries]
        if all(t.schema.equals(tables[0].schema) for t in tables[1:]):
            return pa.concat_tables(tables)
        return pa.concat_tables(tables, promote_options="permissive")

    def reasons(self) -> List[str]:
        """The reason of every kept row, in :meth:`table` order."""
        return [r for r, b in self._entries for _ in range(b.num_rows)]

    def metrics(self) -> Dict[str, int]:
        return {"dead_letter_rows": self.rows, "dead_letter_dropped": self.dropped,
                "dead_letter_spilled": self.spilled}

    # -- overflow -------------------------------------------------------------------------------
    def _enforce_cap(self) -> None:
        out: List[Tuple[str, pa.RecordBatch]] = []
        while self._entries and (self.rows > self.max_rows or self.nbytes > self.max_bytes):
            reason, b = self._entries[0]
            over_rows = self.rows - self.max_rows
            if self.nbytes > self.max_bytes or over_rows >= b.num_rows:
                self._entries.popleft()
                evicted = b
            else:  # only part of the oldest batch has to go
                evicted = b.slice(0, over_rows)
                self._entries[0] = (reason, b.slice(over_rows))
                self.nbytes -= b.nbytes - self._entries[0][1].nbytes
                self.rows -= over_rows
                out.append((reason, evicted))
                continue
            self.rows -= b.num_rows
            self.nbytes -= b.nbytes
            out.append((reason, evicted))
        if out:
            self._spill(out)

    def _spill(self, parts: List[Tuple[str, pa.RecordBatch]]) -> None:
        n = sum(b.num_rows for _, b in parts)
        where = "dropped"
        try:
            if self._kafka is not None:
                self._spill_kafka(parts)
                where = f"sent to Kafka topic {self._kafka[1]!r}"
            elif self.path is not None:
                self._spill_file(parts)
                where = f"appended to {os.fspath(self.path)}"
        except Exception as exc:  # the rows are gone from memory either way: count them
            logger.error("%s: dead letter overflow could not be written (%s: %s); %d row(s) "
                         "dropped", self.owner, type(exc).__name__, exc, n)
            where = "dropped"
        if where == "dropped":
            self.dropped += n
        else:
            self.spilled += n
        self._unreported += n
        now = time.monotonic()
        if now - self._last_warn >= DEAD_LETTER_WARN_EVERY_S:
            logger.warning("%s: dead letter full (%d rows / %d bytes kept): %d oldest row(s) %s "
                           "(dead_letter_dropped=%d, dead_letter_spilled=%d)", self.owner,
                           self.max_rows, self.max_bytes, self._unreported, where,
                           self.dropped, self.spilled)
            self._last_warn = now
            self._unreported = 0

    def _rows_json(self, reason: str, batch: pa.RecordBatch) -> List[bytes]:
        import orjson

        from ._kafka import json_columns

        names, lists = json_columns(batch)
        names = names + ["sabot_error", "sabot_source"]
        extra = [reason, self.owner]
        return [orjson.dumps(dict(zip(names, list(row) + extra))) for row in zip(*lists)]

    def _spill_file(self, parts: List[Tuple[str, pa.RecordBatch]]) -> None:
        with open(self.path, "ab") as fh:  # type: ignore[arg-type]
            for reason, b in parts:
                for line in self._rows_json(reason, b):
                    fh.write(line + b"\n")

    def _spill_kafka(self, parts: List[Tuple[str, pa.RecordBatch]]) -> None:
        from confluent_kafka import Producer

        from ..kafka import producer_config

        assert self._kafka is not None
        bootstrap, topic = self._kafka
        if self._producer is None:
            self._producer = Producer(producer_config(bootstrap))
        failed: List[Any] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failed.append(err)

        for reason, b in parts:
            headers = [("sabot.error", reason.encode()), ("sabot.source", self.owner.encode())]
            for value in self._rows_json(reason, b):
                while True:
                    try:
                        self._producer.produce(topic, value=value, headers=headers,
                                               on_delivery=delivered)
                        break
                    except BufferError:
                        self._producer.poll(0.1)
        # rows leave memory only once the broker has them (they are gone from the source too)
        left = self._producer.flush(30)
        if left or failed:
            raise RuntimeError(f"{left} undelivered, {len(failed)} failed"
                               + (f" ({failed[0]})" if failed else ""))


def bind_dead_letters(operators: Sequence[Any], kafka_sources: Sequence[Any]) -> None:
    """Give every operator's dead letter the plan's ``dead_letter_topic`` (the first source's
    that has one) as its overflow target."""
    target = next(((s.bootstrap_servers, s.dead_letter_topic) for s in kafka_sources
                   if getattr(s, "dead_letter_topic", None)), None)
    if target is None:
        return
    for op in operators:
        for dead in getattr(op, "dead_letters", lambda: [])():
            dead.bind_kafka(*target)


def _concat_batches(parts: Sequence[Union[pa.RecordBatch, pa.Table]]) -> pa.Table:
    tables = [p if isinstance(p, pa.Table) else pa.Table.from_batches([p]) for p in parts]
    if all(t.schema.equals(tables[0].schema) for t in tables[1:]):
        return pa.concat_tables(tables)
    return pa.concat_tables(tables, promote_options="permissive")


class SkewGuard:
    """Keeps a row dated far ahead (a clock or unit error: 2116 in a 2024 feed) from dragging an
    event-time watermark forward, which would make every later row look late.

    Reference: the largest event time admitted so far, or a peer input's watermark when that is
    larger; before either exists, the median time of the batch at hand.  A row more than
    ``max_skew`` past the reference is a *suspect*: held back, not admitted, not moving the
    watermark.  Suspects are admitted as soon as ``CONFIRM_ROWS`` rows lie within ``max_skew``
    of each other, chained, or a chain of them starts within ``max_skew`` of the watermark — the
    data really moved on, e.g. after a gap in the feed — and rejected once a later call admitted
    rows without confirming them, when more than ``max_suspect_rows`` are held (oldest first)
    or at the end of the stream.  (A stream whose very first batch is a single bad row cannot
    be judged: that row becomes the reference.)
    """

    #: rows within max_skew of each other that confirm a jump of the event time
    CONFIRM_ROWS = 3

    def __init__(self, max_skew_ns: int, *, max_suspect_rows: int = 10_000) -> None:
        self.max_skew_ns = int(max_skew_ns)
        self.max_suspect_rows = int(max_suspect_rows)
        self.reset()

    def reset(self) -> None:
        self.watermark: Optional[int] = None
        # held suspects: (rows, their times, admitted-rows count when they were held)
        self._held: List[Tuple[pa.Table, np.ndarray]] = []
        self._held_since: List[int] = []
        self._calls = 0

    @property
    def pending(self) -> int:
        """Rows held as suspects."""
        return sum(t.num_rows for t, _ in self._held)

    # -- state (plain data) -----------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        held = None
        if self._held:
            tables = [t.append_column("__sabot_since", pa.array(np.full(t.num_rows, s, np.int64)))
                      for (t, _), s in zip(self._held, self._held_since)]
            table = _concat_batches(tables)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table)
            held = sink.getvalue().to_pybytes()
        return {"watermark": self.watermark, "calls": self._calls, "held": held,
                "held_ts": [int(v) for _, ts in self._held for v in ts]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reset()
        self.watermark = state["watermark"]
        self._calls = int(state["calls"])
        if state["held"] is not None:
            table = pa.ipc.open_stream(pa.py_buffer(state["held"])).read_all()
            since = table.column("__sabot_since").to_numpy()
            table = table.drop_columns(["__sabot_since"])
            ts = np.array(state["held_ts"], dtype=np.int64)
            for s in np.unique(since):
                idx = np.flatnonzero(since == s)
                self._held.append((table.take(pa.array(idx)), ts[idx]))
                self._held_since.append(int(s))

    # -- rows -------------------------------------------------------------------------------------
    def admit(self, batch: Union[pa.RecordBatch, pa.Table], ts: np.ndarray, *,
              peer: Optional[int] = None, check: Optional[np.ndarray] = None,
              ) -> Tuple[Optional[pa.RecordBatch], np.ndarray, Optional[pa.Table]]:
        """Split ``batch`` (event times ``ts`` in ns) into the admitted rows and their times —
        ``batch`` itself when nothing is held back, else this batch's rows and the suspects
        confirmed now, in time order (``None`` when no row) — and the rejected rows (``None``
        when none).  ``check``: mask of the rows to judge (the others, e.g. null times, pass
        and do not move the watermark).  ``peer``: another input's watermark."""
        self._calls += 1
        n = len(ts)
        if check is None:
            check = np.ones(n, dtype=bool)
        skew = self.max_skew_ns
        ref = _max_opt(self.watermark, peer)
        if ref is None and check.any():  # nothing seen yet: the batch's own (lower) median
            checked = np.sort(ts[check])
            ref = int(checked[(len(checked) - 1) // 2])
        suspect = check & (ts > ref + skew) if ref is not None else check.copy()
        if not suspect.any() and not self._held:  # the common case: nothing to hold back
            if check.any():
                self.watermark = _max_opt(self.watermark, int(ts[check].max()))
            if isinstance(batch, pa.Table):
                batch = _one_batch(batch)
            return batch, ts, None
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        direct = np.flatnonzero(~suspect)
        direct_checked = bool(len(direct) and check[direct].any())
        if direct_checked:
            self.watermark = _max_opt(self.watermark, int(ts[direct][check[direct]].max()))
        # the pool: held suspects, then this batch's suspects
        pool_tables = [t for t, _ in self._held]
        pool_ts = [t for _, t in self._held]
        pool_since = [np.full(len(t), s, dtype=np.int64)
                      for (_, t), s in zip(self._held, self._held_since)]
        new_idx = np.flatnonzero(suspect)
        if len(new_idx):
            pool_tables.append(table.take(pa.array(new_idx)))
            pool_ts.append(ts[new_idx])
            pool_since.append(np.full(len(new_idx), self._calls, dtype=np.int64))
        p_table = _concat_batches(pool_tables)
        p_ts = np.concatenate(pool_ts)
        p_since = np.concatenate(pool_since)
        ok = self._confirmed(p_ts, _max_opt(self.watermark, peer))
        if ok.any():
            self.watermark = _max_opt(self.watermark, int(p_ts[ok].max()))
        # rejected: held since an earlier call and still unconfirmed while other rows got in
        reject = ~ok & (p_since < self._calls) & (direct_checked or bool(ok.any()))
        keep = ~ok & ~reject
        over = int(keep.sum()) - self.max_suspect_rows
        if over > 0:  # too many held: the oldest go
            kidx = np.flatnonzero(keep)
            reject[kidx[:over]] = True
            keep[kidx[:over]] = False
        parts, part_ts = [], []
        if len(direct):
            parts.append(table.take(pa.array(direct)))
            part_ts.append(ts[direct])
        if ok.any():
            oidx = np.flatnonzero(ok)
            parts.append(p_table.take(pa.array(oidx)))
            part_ts.append(p_ts[oidx])
        admitted: Optional[pa.RecordBatch] = None
        a_ts = np.zeros(0, dtype=np.int64)
        if parts:
            joined = _concat_batches(parts)
            a_ts = np.concatenate(part_ts)
            if ok.any():
                order = np.argsort(a_ts, kind="stable")
                joined = joined.take(pa.array(order))
                a_ts = a_ts[order]
            admitted = _one_batch(joined)
        rejected = p_table.take(pa.array(np.flatnonzero(reject))) if reject.any() else None
        kidx = np.flatnonzero(keep)
        self._held, self._held_since = [], []
        for s in np.unique(p_since[kidx]):
            sel = kidx[p_since[kidx] == s]
            self._held.append((p_table.take(pa.array(sel)), p_ts[sel]))
            self._held_since.append(int(s))
        return admitted, a_ts, rejected

    def _confirmed(self, p_ts: np.ndarray, ref: Optional[int]) -> np.ndarray:
        """Which pool rows are confirmed: runs of rows each within max_skew of the previous that
        hold at least CONFIRM_ROWS rows, or that start within max_skew of the reference (which
        each confirmed run moves on)."""
        skew = self.max_skew_ns
        order = np.argsort(p_ts, kind="stable")
        s = p_ts[order]
        ok_sorted = np.zeros(len(s), dtype=bool)
        cuts = np.flatnonzero(np.diff(s) > skew) + 1
        for start, end in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(s)]])):
            anchored = ref is not None and int(s[start]) - ref <= skew
            if anchored or end - start >= self.CONFIRM_ROWS:
                ok_sorted[start:end] = True
                ref = int(s[end - 1]) if ref is None else max(ref, int(s[end - 1]))
        ok = np.zeros(len(s), dtype=bool)
        ok[order] = ok_sorted
        return ok

    def finish(self) -> Tuple[Optional[pa.RecordBatch], np.ndarray, Optional[pa.Table]]:
        """End of stream: the held suspects are rejected — or admitted, when nothing ever was."""
        if not self._held:
            return None, np.zeros(0, dtype=np.int64), None
        table = _concat_batches([t for t, _ in self._held])
        ts = np.concatenate([t for _, t in self._held])
        self._held, self._held_since = [], []
        if self.watermark is None:
            order = np.argsort(ts, kind="stable")
            self.watermark = int(ts.max())
            return _one_batch(table.take(pa.array(order))), ts[order], None
        return None, np.zeros(0, dtype=np.int64), table


def _ns_text(ns: Optional[int]) -> str:
    if ns is None:
        return "none yet"
    import datetime as _dt

    try:
        return _dt.datetime.fromtimestamp(ns / 1e9, _dt.timezone.utc).isoformat()
    except (OverflowError, ValueError, OSError):
        return f"{ns} ns"


def _max_opt(a: Optional[int], b: Optional[int]) -> Optional[int]:
    if b is None or b == np.iinfo(np.int64).min:
        return a
    return b if a is None else max(a, b)


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    batches = table.combine_chunks().to_batches()
    if len(batches) == 1:
        return batches[0]
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=table.schema)
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


class TumblingOHLCV(Operator):
    """Tumbling event-time bars: open, high, low, close, volume and tick count per key per window.

    Window ``[start, start+size)`` with ``start = floor(t / size) * size`` (epoch-aligned, as
    ``pandas.Grouper(freq=size)``).  open/close are the prices with the smallest/largest event
    time in the window (ties: arrival order).  Rows with a null price or timestamp are skipped.
    A bar is emitted once the watermark — the largest event time seen, minus
    ``allowed_lateness`` — reaches its end; the rest are emitted at end of stream.  Rows that
    arrive for an already-emitted window are late: counted (``late_count``) and kept in
    :meth:`dead_letter`, never silently dropped.

    ``max_skew`` (default 5 minutes) bounds how far one row may move the watermark past the
    others: a row dated further ahead is held back until other rows confirm the jump (see
    :class:`SkewGuard`), else rejected to the dead letter with reason ``beyond_max_skew``
    (``skew_rejected`` in :meth:`metrics`) — one bad clock cannot mark every later row late.
    ``max_skew=None`` turns the bound off.  The dead letter keeps at most
    ``dead_letter_max_rows`` rows / ``dead_letter_max_bytes`` bytes in memory; older rows go to
    the stream's ``dead_letter_topic``, else to ``dead_letter_path``, else are dropped and
    counted (``dead_letter_dropped``), see :class:`DeadLetter`.
    """

    kind = "tumbling"
    holds_commits = True

    def __init__(self, size: Any, *, on: str = "timestamp", by: Optional[str] = None,
                 price_column: str = "price", volume_column: Optional[str] = "volume",
                 allowed_lateness: Any = 0, max_skew: Any = DEFAULT_MAX_SKEW,
                 dead_letter_path: Optional[Union[str, "os.PathLike[str]"]] = None,
                 dead_letter_max_rows: int = DEAD_LETTER_MAX_ROWS,
                 dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES,
                 on_unit: Optional[str] = None) -> None:
        super().__init__()
        self._config = dict(size=size, on=on, by=by, price_column=price_column,
                            volume_column=volume_column, allowed_lateness=allowed_lateness,
                            max_skew=max_skew, dead_letter_path=dead_letter_path,
                            dead_letter_max_rows=dead_letter_max_rows,
                            dead_letter_max_bytes=dead_letter_max_bytes, on_unit=on_unit)
        #: unit of an integer ``on`` column (None: ns; see :mod:`sabot.timeunits`)
        self.on_unit = None if on_unit is None else check_unit(on_unit)
        self.size_ns = parse_duration_ns(size, "window size")
        self.guard = (None if max_skew is None
                      else SkewGuard(parse_duration_ns(max_skew, "max_skew")))
        self.dead = DeadLetter(self.kind, max_rows=dead_letter_max_rows,
                               max_bytes=dead_letter_max_bytes, path=dead_letter_path)
        self.lateness_ns = 0 if allowed_lateness in (0, None) else parse_duration_ns(
            allowed_lateness, "allowed_lateness")
        self.on = on
        self.by = by
        self.price_column = price_column
        self.volume_column = volume_column
        self.reset()

    def describe(self) -> str:
        return f"{self.size_ns / 1e9:g}s" + (f" by {self.by}" if self.by else "")

    def _fresh(self) -> "Operator":
        twin = TumblingOHLCV(**self._config)
        if self.dead._kafka is not None:  # a per-partition task spills where this one does
            twin.dead.bind_kafka(*self.dead._kafka)
        return twin

    def set_position(self, index: int) -> None:
        super().set_position(index)
        self.dead.owner = self.name

    def dead_letters(self) -> List[DeadLetter]:
        return [self.dead]

    def reset(self) -> None:
        super().reset()
        # (key, window_start) -> [open_ts, open, high, low, close_ts, close, volume, count]
        self._bars: Dict[Tuple[Any, int], List[Any]] = {}
        self._max_ts: Optional[int] = None
        self._emitted_until = np.iinfo(np.int64).min  # bars with end <= this are out
        self._held: Deque[Tuple[int, Commit]] = deque()
        self._waiting: List[Commit] = []
        self.dead.reset()
        if self.guard is not None:
            self.guard.reset()
        self.late_count = 0
        self.skew_rejected = 0
        self._key_type: Optional[pa.DataType] = None

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        # bars as a list of [key, window_start, *bar]: plain data (no tuple keys)
        return {"version": 2, "bars": [[k[0], k[1], *v] for k, v in self._bars.items()],
                "max_ts": self._max_ts, "emitted_until": int(self._emitted_until),
                "late_count": self.late_count, "skew_rejected": self.skew_rejected,
                "key_type": str(self._key_type) if self._key_type is not None else None,
                "guard": self.guard.state_dict() if self.guard is not None else None,
                "scope": self.scope.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") not in (1, 2):
            raise ValueError(f"unsupported tumbling state version {state.get('version')!r}")
        bars = state["bars"]
        if isinstance(bars, Mapping):  # version 1: {(key, window_start): bar}
            self._bars = {tuple(k): list(v) for k, v in bars.items()}
        else:
            self._bars = {(b[0], int(b[1])): list(b[2:]) for b in bars}
        self._max_ts = state["max_ts"]
        self._emitted_until = state["emitted_until"]
        self.late_count = state["late_count"]
        self.skew_rejected = state.get("skew_rejected", 0)
        self._key_type = pa.type_for_alias(state["key_type"]) if state["key_type"] else None
        if self.guard is not None:
            if state.get("guard") is not None:
                self.guard.load_state_dict(state["guard"])
            else:  # a version-1 state: the watermark was the largest event time used
                self.guard.reset()
                self.guard.watermark = self._max_ts
        self._restored = True

    def dead_letter(self) -> pa.Table:
        """The rejected rows kept in memory (late, or beyond ``max_skew``), as they arrived;
        :meth:`dead_letter_reasons` gives each row's reason."""
        return self.dead.table()

    def dead_letter_reasons(self) -> List[str]:
        return self.dead.reasons()

    # -- data ------------------------------------------------------------------------------------
    def process(self, batch: pa.RecordBatch) -> List[pa.RecordBatch]:
        try:
            return self._process(batch)
        except Exception as exc:
            raise self.fail(exc) from exc

    def _process(self, batch: pa.RecordBatch) -> List[pa.RecordBatch]:
        if batch.num_rows == 0:
            return []
        names = batch.schema.names
        for col, role in ((self.on, "on"), (self.price_column, "price_column"),
                          (self.volume_column, "volume_column"), (self.by, "by")):
            if col is not None and col not in names:
                hint = (" (pass volume_column=None for data without trade sizes)"
                        if role == "volume_column" else "")
                raise KeyError(f"{role} {col!r} not found; columns present: "
                               f"{', '.join(names)}{hint}")
        ts = column_ns(batch.column(self.on), self.on, self.on_unit)
        price = float_values(batch.column(self.price_column), self.price_column)
        if self.guard is not None:
            valid = ~np.isnan(price) & (ts != np.iinfo(np.int64).min)
            admitted, ts_adm, rejected = self.guard.admit(batch, ts, check=valid)
            self._reject_skewed(rejected)
            if admitted is not batch:
                if admitted is None:
                    return []
                batch, ts = admitted, ts_adm
                price = float_values(batch.column(self.price_column), self.price_column)
        return self._use(batch, ts, price)

    def _reject_skewed(self, rejected: Optional[pa.Table]) -> None:
        if rejected is None or not rejected.num_rows:
            return
        self.skew_rejected += rejected.num_rows
        self.dead.add(rejected, REASON_SKEW)
        logger.warning("%s: %d row(s) dated more than max_skew past the watermark (%s) "
                       "dead-lettered", self.name, rejected.num_rows, _ns_text(
                           self.guard.watermark if self.guard is not None else None))

    def _use(self, batch: pa.RecordBatch, ts: np.ndarray, price: np.ndarray
             ) -> List[pa.RecordBatch]:
        vol = (float_values(batch.column(self.volume_column), self.volume_column)
               if self.volume_column else np.zeros(len(price)))
        valid = ~np.isnan(price) & (ts != np.iinfo(np.int64).min)
        if self.by is not None:
            keycol = batch.column(self.by)
            if pat.is_dictionary(keycol.type):
                keycol = keycol.cast(keycol.type.value_type)
            self._key_type = keycol.type
            enc = pc.dictionary_encode(keycol)
            codes = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            key_values = enc.dictionary.to_pylist() + [None]
            codes = np.where(codes < 0, len(key_values) - 1, codes)
        else:
            codes = np.zeros(len(ts), dtype=np.int64)
            key_values = [None]
        wstart = (ts // self.size_ns) * self.size_ns
        late = valid & (wstart + self.size_ns <= self._emitted_until)
        if late.any():
            self.late_count += int(late.sum())
            self.dead.add(batch.filter(pa.array(late)), REASON_LATE)
            logger.log(logging.WARNING if self.late_count <= 1000 else logging.DEBUG,
                       "%s: %d late row(s) behind the watermark dead-lettered", self.name,
                       int(late.sum()))
        use = valid & ~late
        if use.any():
            idx = np.flatnonzero(use)
            c, w, t, p, v = codes[idx], wstart[idx], ts[idx], price[idx], vol[idx]
            order = np.lexsort((t, w, c))  # stable: ties keep arrival order
            c, w, t, p, v = c[order], w[order], t[order], p[order], v[order]
            change = np.empty(len(c), dtype=bool)
            change[0] = True
            change[1:] = (c[1:] != c[:-1]) | (w[1:] != w[:-1])
            starts = np.flatnonzero(change)
            ends = np.append(starts[1:], len(c))
            highs = np.maximum.reduceat(p, starts)
            lows = np.minimum.reduceat(p, starts)
            vols = np.add.reduceat(v, starts)
            for g in range(len(starts)):
                s, e = starts[g], ends[g] - 1
                key = (key_values[c[s]], int(w[s]))
                bar = self._bars.get(key)
                if bar is None:
                    self._bars[key] = [int(t[s]), float(p[s]), float(highs[g]), float(lows[g]),
                                       int(t[e]), float(p[e]), float(vols[g]), int(e - s + 1)]
                    continue
                if t[s] < bar[0]:
                    bar[0], bar[1] = int(t[s]), float(p[s])
                bar[2] = max(bar[2], float(highs[g]))
                bar[3] = min(bar[3], float(lows[g]))
                if t[e] >= bar[4]:
                    bar[4], bar[5] = int(t[e]), float(p[e])
                bar[6] += float(vols[g])
                bar[7] += int(e - s + 1)
            mx = int(t.max())
            self._max_ts = mx if self._max_ts is None else max(self._max_ts, mx)
        if self._max_ts is None:
            return []
        return self._emit(self._max_ts - self.lateness_ns)

    def _emit(self, watermark: int) -> List[pa.RecordBatch]:
        ready = [k for k in self._bars if k[1] + self.size_ns <= watermark]
        if watermark > self._emitted_until:
            self._emitted_until = watermark
        if not ready:
            return []
        ready.sort(key=lambda k: (k[1], "" if k[0] is None else str(k[0])))
        bars = [self._bars.pop(k) for k in ready]
        return [self._to_batch(ready, bars)]

    def _to_batch(self, keys: List[Tuple[Any, int]], bars: List[List[Any]]) -> pa.RecordBatch:
        ts_type = pa.timestamp("ns", tz="UTC")
        starts = np.array([k[1] for k in keys], dtype=np.int64)
        cols = {"window_start": pa.array(starts, type=pa.int64()).cast(ts_type),
                "window_end": pa.array(starts + self.size_ns, type=pa.int64()).cast(ts_type)}
        if self.by is not None:
            cols[self.by] = pa.array([k[0] for k in keys], type=self._key_type or pa.string())
        arr = np.array([b[1:4] + [b[5], b[6]] for b in bars], dtype=np.float64).reshape(-1, 5)
        for i, name in enumerate(("open", "high", "low", "close")):
            cols[name] = pa.array(arr[:, i])
        if self.volume_column:
            cols["volume"] = pa.array(arr[:, 4])
        cols["count"] = pa.array([b[7] for b in bars], type=pa.int64())
        return pa.RecordBatch.from_pydict(cols)

    def finish(self) -> List[pa.RecordBatch]:
        out: List[pa.RecordBatch] = []
        if self.guard is not None:
            admitted, ts, rejected = self.guard.finish()
            self._reject_skewed(rejected)
            if admitted is not None:
                out = self._use(admitted, ts, float_values(admitted.column(self.price_column),
                                                           self.price_column))
        return out + self._emit(np.iinfo(np.int64).max)

    # -- commits: released once every bar open when they arrived has been emitted ---------------
    def hold(self, commit: Commit) -> None:
        if self.guard is not None and self.guard.pending:
            # rows held back as suspects are covered by this commit: it waits until they are
            # admitted (into bars) or dead-lettered
            self._waiting.append(commit)
            return
        self._hold_now(commit)

    def _hold_now(self, commit: Commit) -> None:
        frontier = max((k[1] + self.size_ns for k in self._bars), default=None)
        if frontier is None:
            self._held.append((np.iinfo(np.int64).min, commit))
        else:
            self._held.append((frontier, commit))

    def released(self, final: bool = False) -> List[Commit]:
        out: List[Commit] = []
        if self._waiting and (final or self.guard is None or not self.guard.pending):
            waiting, self._waiting = self._waiting, []
            for commit in waiting:
                self._hold_now(commit)
        while self._held and (final or self._held[0][0] <= self._emitted_until):
            out.append(self._held.popleft()[1])
        return out

    def metrics(self) -> Dict[str, Any]:
        d = super().metrics()
        d.update(open_bars=len(self._bars), late_count=self.late_count,
                 skew_rejected=self.skew_rejected,
                 skew_held=self.guard.pending if self.guard is not None else 0,
                 **self.dead.metrics())
        return d
