"""Single-input Stream operators.

Every operator owns a :class:`~sabot.fintech._scope.StateScope` and runs user functions inside
``with scope.active():`` so that function-form kernels (``lambda b: ewma(b, alpha=0.94)``) find
their state again on the next batch (kernels.md §2).  An exception raised by a user function is
re-raised as :class:`StreamOperatorError` naming the operator, e.g.
``map #2 (<lambda>) failed: ZeroDivisionError: division by zero``.
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pat

from ..fintech._scope import StateScope
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
    """Normalise an operator function's return value to a list of RecordBatches."""
    if value is None:
        return []
    if isinstance(value, pa.RecordBatch):
        return [value]
    if isinstance(value, pa.Table):
        return value.combine_chunks().to_batches() if value.num_rows else []
    raise TypeError(f"{what} must return a pyarrow.RecordBatch or Table (or None), "
                    f"got {type(value).__name__}")


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

    def _fresh(self) -> "Operator":
        return type(self)(fresh_callable(self.fn, self.name))


class MapOp(FnOperator):
    kind = "map"

    def process(self, batch: pa.RecordBatch) -> List[pa.RecordBatch]:
        out = self.call(batch)
        try:
            return to_batches(out, self.name)
        except TypeError as exc:
            raise self.fail(exc) from exc


class FlatMapOp(FnOperator):
    kind = "flat_map"

    def process(self, batch: pa.RecordBatch) -> List[pa.RecordBatch]:
        out = self.call(batch)
        if out is None:
            return []
        if isinstance(out, (pa.RecordBatch, pa.Table)):
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
_UNITS_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
             "m": 60_000_000_000, "min": 60_000_000_000, "h": 3_600_000_000_000,
             "d": 86_400_000_000_000}


def parse_duration_ns(value: Any, what: str = "size") -> int:
    """``'1s'``, ``'250ms'``, ``'5m'``, a timedelta, or a number of milliseconds → ns."""
    import datetime as _dt
    import re

    if isinstance(value, _dt.timedelta):
        ns = int(round(value.total_seconds() * 1e9))
    elif isinstance(value, (int, float, np.integer, np.floating)):
        ns = int(round(float(value) * 1_000_000))
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|min|h|d)\s*", value)
        if not m:
            raise ValueError(f"{what} {value!r}: expected e.g. '500ms', '1s', '5m', '1h'")
        ns = int(round(float(m.group(1)) * _UNITS_NS[m.group(2)]))
    else:
        raise TypeError(f"{what} must be a duration string, timedelta or milliseconds; "
                        f"got {type(value).__name__}")
    if ns <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return ns


def timestamps_ns(column: Union[pa.Array, pa.ChunkedArray], name: str) -> np.ndarray:
    """An event-time column (timestamp of any unit, or int64 ns) as int64 ns numpy (nulls → min)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    if pat.is_timestamp(t):
        if t.unit != "ns":
            column = column.cast(pa.timestamp("ns", tz=t.tz))
        column = column.view(pa.int64()) if hasattr(column, "view") else column.cast(pa.int64())
    elif pat.is_integer(t):
        if t != pa.int64():
            column = column.cast(pa.int64())
    else:
        raise TypeError(f"event-time column {name!r} has type {t}; expected a timestamp or int64 ns")
    if column.null_count:          # (a compute call costs ~15 µs: a one-row batch pays it per column)
        column = column.fill_null(np.iinfo(np.int64).min)
    return column.to_numpy(zero_copy_only=False)


def float_values(column: Union[pa.Array, pa.ChunkedArray], name: str) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not (pat.is_floating(column.type) or pat.is_integer(column.type) or pat.is_decimal(column.type)):
        raise TypeError(f"column {name!r} has type {column.type}; expected a numeric type")
    if column.type != pa.float64():
        column = column.cast(pa.float64())
    return column.to_numpy(zero_copy_only=False)        # nulls come out as NaN


class TumblingOHLCV(Operator):
    """Tumbling event-time bars: open, high, low, close, volume and tick count per key per window.

    Window ``[start, start+size)`` with ``start = floor(t / size) * size`` (epoch-aligned, as
    ``pandas.Grouper(freq=size)``).  open/close are the prices with the smallest/largest event
    time in the window (ties: arrival order).  Rows with a null price or timestamp are skipped.
    A bar is emitted once the watermark — the largest event time seen, minus
    ``allowed_lateness`` — reaches its end; the rest are emitted at end of stream.  Rows that
    arrive for an already-emitted window are late: counted (``late_count``) and kept in
    :meth:`dead_letter`, never silently dropped.
    """

    kind = "tumbling"
    holds_commits = True

    def __init__(self, size: Any, *, on: str = "timestamp", by: Optional[str] = None,
                 price_column: str = "price", volume_column: Optional[str] = "volume",
                 allowed_lateness: Any = 0) -> None:
        super().__init__()
        self._config = dict(size=size, on=on, by=by, price_column=price_column,
                            volume_column=volume_column, allowed_lateness=allowed_lateness)
        self.size_ns = parse_duration_ns(size, "window size")
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
        return TumblingOHLCV(**self._config)

    def reset(self) -> None:
        super().reset()
        # (key, window_start) -> [open_ts, open, high, low, close_ts, close, volume, count]
        self._bars: Dict[Tuple[Any, int], List[Any]] = {}
        self._max_ts: Optional[int] = None
        self._emitted_until = np.iinfo(np.int64).min  # bars with end <= this are out
        self._held: Deque[Tuple[int, Commit]] = deque()
        self._late: List[pa.RecordBatch] = []
        self.late_count = 0
        self._key_type: Optional[pa.DataType] = None

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"version": 1, "bars": {k: list(v) for k, v in self._bars.items()},
                "max_ts": self._max_ts, "emitted_until": int(self._emitted_until),
                "late_count": self.late_count,
                "key_type": str(self._key_type) if self._key_type is not None else None,
                "scope": self.scope.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unsupported tumbling state version {state.get('version')!r}")
        self._bars = {tuple(k): list(v) for k, v in state["bars"].items()}
        self._max_ts = state["max_ts"]
        self._emitted_until = state["emitted_until"]
        self.late_count = state["late_count"]
        self._key_type = pa.type_for_alias(state["key_type"]) if state["key_type"] else None
        self._restored = True

    def dead_letter(self) -> pa.Table:
        """The late rows, as they arrived."""
        if not self._late:
            return pa.table({})
        return pa.Table.from_batches(self._late)

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
        ts = timestamps_ns(batch.column(self.on), self.on)
        price = float_values(batch.column(self.price_column), self.price_column)
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
            self._late.append(batch.filter(pa.array(late)))
            logger.warning("%s: %d late row(s) behind the watermark dead-lettered",
                           self.name, int(late.sum()))
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
        return self._emit(np.iinfo(np.int64).max)

    # -- commits: released once every bar open when they arrived has been emitted ---------------
    def hold(self, commit: Commit) -> None:
        frontier = max((k[1] + self.size_ns for k in self._bars), default=None)
        if frontier is None:
            self._held.append((np.iinfo(np.int64).min, commit))
        else:
            self._held.append((frontier, commit))

    def released(self, final: bool = False) -> List[Commit]:
        out = []
        while self._held and (final or self._held[0][0] <= self._emitted_until):
            out.append(self._held.popleft()[1])
        return out

    def metrics(self) -> Dict[str, Any]:
        d = super().metrics()
        d.update(open_bars=len(self._bars), late_count=self.late_count)
        return d
