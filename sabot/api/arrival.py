"""On-arrival (processing-time) as-of join of several sources: decide on each row as it comes.

The event-time :meth:`Stream.asof_join` holds a left row until every other input's watermark
has passed it — deterministic, right for replay and research, but a live monitor then waits for
the slowest venue.  :class:`ArrivalAsofJoin` instead answers every arriving row at once with
the latest row already seen of every other source for the same key::

    for row in arrivals (in arrival order):
        latest[(row.source, row.key)] = row
        out = row's own values under "<row.source>_<column>", and for every other source s:
              latest[(s, row.key)] under "<s>_<column>" if it exists and
              row.on - latest[(s, row.key)].on <= tolerance, else null

"Latest" is the last to arrive (a source's rows for one key come from one Kafka partition, in
order).  A quote older than ``tolerance_ms`` relative to the arriving one is ignored, as
``pandas.merge_asof(direction="backward", tolerance=...)`` ignores it; a newer one (another
venue ahead in event time) is used.  Each batch is processed vectorised (a stable sort by key
and a running maximum per source); the result equals the row-by-row loop above however the
arrivals are split into batches.  Rows with a null source, key or time, or a source not in
``sources``, are skipped, counted (:attr:`skipped`) and logged (the first few at warning).

The latest rows are state: :meth:`state_dict` / :meth:`load_state_dict` save and restore them
as plain data (numbers, strings, numpy arrays, Arrow IPC bytes), so a Stream checkpoint
(``Stream.map(join)``) carries them and a restored run continues exactly.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..timeunits import INT64_MIN, column_ns, ms_to_ns

logger = logging.getLogger(__name__)

_NULL_INT = np.iinfo(np.int64).min

#: How many skipped rows are logged at warning before switching to debug.
WARN_FIRST = 5

#: Batches of at most this many rows (a live consumer's usual one tick) take the row-by-row
#: loop of the module docstring; larger ones the vectorised pass.  Both give the same rows.
FEW_ROWS = 4


class ArrivalAsofJoin:
    """Latest row per (source, key), joined onto each arriving row (see module docstring).

    Output columns: ``by``, ``on`` and ``source_column`` of the arriving row, then
    ``<source>_<column>`` for every source and every name in ``columns`` (``on`` is always
    included, so each source's quote time is kept).
    """

    def __init__(self, sources: Sequence[str], *, source_column: str = "exchange",
                 by: str = "symbol", on: str = "timestamp",
                 columns: Sequence[str] = ("bid", "ask"), tolerance_ms: float = 500.0) -> None:
        if not sources:
            raise ValueError("ArrivalAsofJoin needs at least one source")
        if tolerance_ms < 0:
            raise ValueError(f"tolerance_ms must be >= 0, got {tolerance_ms}")
        self.sources = list(sources)
        self._source_array = pa.array(self.sources, pa.string())
        self._source_of = {s: i for i, s in enumerate(self.sources)}
        self.source_column, self.by, self.on = source_column, by, on
        self.columns = [on] + [c for c in columns if c != on]
        self.tolerance_ns = ms_to_ns(tolerance_ms)
        self.skipped = 0
        self.reset()

    #: version of :meth:`state_dict`'s layout
    STATE_VERSION = 1

    def _config(self) -> Dict[str, Any]:
        return {"sources": list(self.sources), "source_column": self.source_column,
                "by": self.by, "on": self.on, "columns": list(self.columns[1:]),
                "tolerance_ms": self.tolerance_ns / ms_to_ns(1)}

    def clone(self) -> "ArrivalAsofJoin":
        """A fresh join of the same configuration (one per task in per-partition mode)."""
        cfg = self._config()
        return ArrivalAsofJoin(cfg.pop("sources"), **cfg)

    def state_dict(self) -> Dict[str, Any]:
        """The latest row per (source, key) and the counters, as plain data: the keys and the
        column types as Arrow IPC bytes, the latest values and presence as numpy arrays."""
        keys = pa.array(list(self._key_code))  # in code order (dicts keep insertion order)
        key_table = pa.table({"key": keys})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, key_table.schema) as w:
            w.write_table(key_table)
        types = pa.schema([pa.field(n, t) for n, t in self._types.items()])
        return {"version": self.STATE_VERSION, "sources": list(self.sources),
                "by": self.by, "on": self.on, "columns": list(self.columns),
                "keys": sink.getvalue().to_pybytes(),
                "types": types.serialize().to_pybytes(),
                "present": self._present.copy(),
                "values": {name: arr.copy() for name, arr in self._state.items()},
                "skipped": int(self.skipped)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the join continues as if it had never stopped."""
        if state.get("version") != self.STATE_VERSION:
            raise ValueError(f"unsupported ArrivalAsofJoin state version "
                             f"{state.get('version')!r}; expected {self.STATE_VERSION}")
        for name, mine in (("sources", list(self.sources)), ("by", self.by), ("on", self.on),
                           ("columns", list(self.columns))):
            if state[name] != mine:
                raise ValueError(f"ArrivalAsofJoin state was saved with {name}={state[name]!r}, "
                                 f"this join has {mine!r}")
        keys = pa.ipc.open_stream(pa.py_buffer(state["keys"])).read_all().column("key")
        types = pa.ipc.read_schema(pa.py_buffer(state["types"]))
        present = np.asarray(state["present"], dtype=bool)
        n_keys = len(keys)
        if present.shape != (len(self.sources), n_keys):
            raise ValueError(f"ArrivalAsofJoin state: presence has shape {present.shape}, "
                             f"expected {(len(self.sources), n_keys)}")
        self.reset()
        self._key_code = {k: i for i, k in enumerate(keys.to_pylist())}
        self._types = {f.name: f.type for f in types}
        self._present = present.copy()
        self._state = {name: np.array(arr, copy=True) for name, arr in state["values"].items()}
        self.skipped = int(state["skipped"])

    def reset(self) -> None:
        """Forget every latest row."""
        self._key_code: Dict[object, int] = {}
        self._present = np.zeros((len(self.sources), 0), dtype=bool)
        self._state: Dict[str, np.ndarray] = {}
        self._types: Dict[str, pa.DataType] = {}

    # ------------------------------------------------------------------------------------------
    def _values(self, batch: pa.RecordBatch, name: str) -> np.ndarray:
        """A column as numpy: timestamps as int64 ns and integers as int64 (nulls: int64 min),
        the rest as float64 (nulls: NaN)."""
        idx = batch.schema.get_field_index(name)
        if idx < 0:
            raise KeyError(f"column {name!r} not found; columns present: "
                           f"{', '.join(batch.schema.names)}")
        col = batch.column(idx)
        typ = self._types.setdefault(name, col.type)
        if name == self.on or pa.types.is_timestamp(typ):
            return column_ns(col, name)
        if pa.types.is_integer(typ):
            if col.type != pa.int64():
                col = col.cast(pa.int64())
            if col.null_count:
                col = col.fill_null(INT64_MIN)
            return col.to_numpy(zero_copy_only=False)
        if typ != pa.float64():
            col = col.cast(pa.float64())
        return col.to_numpy(zero_copy_only=False)          # nulls come out as NaN

    def _source_index(self, batch: pa.RecordBatch) -> tuple:
        """(batch without rows that cannot be placed, source index per row); dropped rows — a
        null source/key/time or a source not in ``sources`` — are counted and logged."""
        for name in (self.source_column, self.by, self.on):
            if name not in batch.schema.names:
                raise KeyError(f"column {name!r} not found; columns present: "
                               f"{', '.join(batch.schema.names)}")
        clean = not (batch.column(self.by).null_count or batch.column(self.on).null_count)
        if clean and batch.num_rows <= FEW_ROWS:     # a tick: a dict lookup, no compute call
            src = [self._source_of.get(v, -1)
                   for v in batch.column(self.source_column).to_pylist()]
            if -1 not in src:
                return batch, np.array(src, dtype=np.int32)
        src = pc.index_in(batch.column(self.source_column), value_set=self._source_array)
        if clean and not src.null_count:
            return batch, src.to_numpy(zero_copy_only=False)
        ok = pc.and_(pc.and_(pc.is_valid(src), pc.is_valid(batch.column(self.by))),
                     pc.is_valid(batch.column(self.on)))
        bad = batch.filter(pc.invert(ok))
        for row in bad.select([self.source_column, self.by, self.on]).to_pylist():
            self.skipped += 1
            level = logging.WARNING if self.skipped <= WARN_FIRST else logging.DEBUG
            logger.log(level, "on-arrival join: row skipped (%s=%r, %s=%r, %s=%r): %s must be "
                       "one of %s, %s and %s not null%s", self.source_column,
                       row[self.source_column], self.by, row[self.by], self.on, row[self.on],
                       self.source_column, self.sources, self.by, self.on,
                       " (further ones logged at debug)" if self.skipped == WARN_FIRST else "")
        return batch.filter(ok), src.filter(ok).to_numpy(zero_copy_only=False)

    def _codes(self, keys: pa.Array) -> np.ndarray:
        """Stable integer codes of the keys (new keys get the next code; state grows)."""
        table = self._key_code
        if len(keys) <= FEW_ROWS:                    # a tick: no compute call
            codes = np.array([table.setdefault(k, len(table)) for k in keys.to_pylist()],
                             dtype=np.int64)
        else:
            enc = pc.dictionary_encode(keys)
            if isinstance(enc, pa.ChunkedArray):
                enc = enc.combine_chunks()
            mapping = np.empty(len(enc.dictionary), dtype=np.int64)
            for j, k in enumerate(enc.dictionary.to_pylist()):
                mapping[j] = table.setdefault(k, len(table))
            codes = mapping[enc.indices.to_numpy(zero_copy_only=False)]
        grow = len(table) - self._present.shape[1]
        if grow > 0:
            self._present = np.pad(self._present, ((0, 0), (0, grow)))
            for name, arr in self._state.items():
                self._state[name] = np.pad(arr, ((0, 0), (0, grow)))
        return codes

    # -- one row as Python values (a live tick without Arrow) -----------------------------------
    def _key_code_of(self, key: Any, template: Sequence[Any]) -> int:
        """The code of ``key`` (a new key grows the state); missing state columns are made
        with the dtype of ``template``'s value: int64 for ``on`` and integers, else float64."""
        table = self._key_code
        k = table.get(key)
        if k is None:
            k = table[key] = len(table)
        grow = len(table) - self._present.shape[1]
        if grow > 0:
            self._present = np.pad(self._present, ((0, 0), (0, grow)))
            for name, arr in self._state.items():
                self._state[name] = np.pad(arr, ((0, 0), (0, grow)))
        for name, value in zip(self.columns, template):
            if name not in self._state:
                is_int = name == self.on or (isinstance(value, int) and not isinstance(value, bool))
                self._state[name] = np.zeros(self._present.shape,
                                             dtype=np.int64 if is_int else np.float64)
        return k

    def _row_of(self, j: int, k: int) -> tuple:
        """Source ``j``'s latest row of key code ``k`` in :attr:`columns` order (None: null)."""
        out = []
        for name in self.columns:
            arr = self._state[name]
            value = arr[j, k]
            if arr.dtype == np.int64:
                v = int(value)
                out.append(None if v == INT64_MIN else v)
            else:
                f = float(value)
                out.append(None if f != f else f)
        return tuple(out)

    def join_row(self, source: int, key: Any, values: Sequence[Any]) -> list:
        """One arriving row as Python values, without Arrow: ``values`` in :attr:`columns`
        order (``on`` first, an int ns time; integer columns as ints, the rest as floats; None
        for a null).  It becomes source ``sources[source]``'s latest row of ``key``.  Returns,
        per source, that source's latest row of ``key`` (a tuple in :attr:`columns` order, None
        for a null) when it is within the tolerance of this row's time, else None - what
        :meth:`process` gives for a one-row batch.  Both share one state and may be mixed."""
        k = self._key_code_of(key, values)
        state, present = self._state, self._present
        present[source, k] = True
        for name, value in zip(self.columns, values):
            arr = state[name]
            if value is None:
                value = INT64_MIN if arr.dtype == np.int64 else np.nan
            arr[source, k] = value
        t = int(values[0])
        times, tol = state[self.on], self.tolerance_ns
        out: list = []
        for j in range(present.shape[0]):
            if not present[j, k]:
                out.append(None)
                continue
            ts = int(times[j, k])
            out.append(None if ts == INT64_MIN or t - ts > tol else self._row_of(j, k))
        return out

    def latest(self, key: Any) -> list:
        """Per source, its latest row of ``key`` (a tuple in :attr:`columns` order, None for a
        null) whatever its age, or None when it has none."""
        k = self._key_code.get(key)
        if k is None or not self._state or k >= self._present.shape[1]:
            return [None] * len(self.sources)
        return [self._row_of(j, k) if self._present[j, k] else None
                for j in range(self._present.shape[0])]

    def process(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The joined rows for ``batch`` (rows in arrival order), updating the latest rows."""
        batch, src = self._source_index(batch)
        n = batch.num_rows
        code = self._codes(batch.column(self.by))
        values = {c: self._values(batch, c) for c in self.columns}
        for name, arr in values.items():
            if name not in self._state:
                self._state[name] = np.zeros(self._present.shape, dtype=arr.dtype)
        if n <= FEW_ROWS:
            joined, fresh = self._join_rows(src, code, values)
        else:
            joined, fresh = self._join_vectorised(src, code, values)
        per_column = [self._to_arrow(c, joined[c], fresh) for c in self.columns]
        arrays = [batch.column(self.by), batch.column(self.on), batch.column(self.source_column)]
        names = [self.by, self.on, self.source_column]
        for s_i, s in enumerate(self.sources):
            arrays += [column[s_i] for column in per_column]
            names += [f"{s}_{c}" for c in self.columns]
        return pa.RecordBatch.from_arrays(arrays, names=names)

    def _join_rows(self, src: np.ndarray, code: np.ndarray, values: Dict[str, np.ndarray]):
        """The module docstring's loop, row by row (few rows: cheaper than the vectorised
        pass's fixed cost).  Returns what :meth:`_join_vectorised` returns."""
        n, n_src, t = len(src), len(self.sources), values[self.on]
        joined = {c: np.empty((n_src, n), dtype=values[c].dtype) for c in self.columns}
        fresh = np.empty((n_src, n), dtype=bool)
        present, state = self._present, self._state
        for r in range(n):
            s, k = src[r], code[r]
            present[s, k] = True
            for c in self.columns:
                state[c][s, k] = values[c][r]
            for j in range(n_src):
                for c in self.columns:
                    joined[c][j, r] = state[c][j, k]
                fresh[j, r] = present[j, k] and t[r] - state[self.on][j, k] <= self.tolerance_ns
        return joined, fresh

    def _join_vectorised(self, src: np.ndarray, code: np.ndarray,
                         values: Dict[str, np.ndarray]):
        """Per source and column, the joined values of every row (``(sources, rows)``
        matrices) and whether each source's quote is used; updates the latest rows."""
        n = len(src)
        t = values[self.on]

        # rows grouped by key (stable: arrival order kept inside each group)
        order = np.argsort(code, kind="stable")
        code_sorted = code[order]
        pos = np.arange(n)
        new_group = np.ones(n, dtype=bool)
        new_group[1:] = code_sorted[1:] != code_sorted[:-1]
        group_start = np.maximum.accumulate(np.where(new_group, pos, 0)) if n else pos

        # per source (rows of the matrices), in sorted order: the position of the last row of
        # that source at or before each row, inside the same key group (-1: none in this batch)
        n_src = len(self.sources)
        is_src = src[order][None, :] == np.arange(n_src)[:, None]
        last = np.maximum.accumulate(np.where(is_src, pos, -1), axis=1) if n else is_src
        took = np.empty((n_src, n), dtype=np.int64)  # the row used per source (-1: the state)
        took[:, order] = np.where(last >= group_start, order[np.maximum(last, 0)], -1)
        in_batch = took >= 0
        row = np.maximum(took, 0)
        joined = {c: np.where(in_batch, values[c][row], self._state[c][:, code])
                  for c in self.columns}
        fresh = (in_batch | self._present[:, code]) & (t - joined[self.on] <= self.tolerance_ns)

        # the last row of every (source, key) in this batch becomes that pair's latest row
        if n:
            pair = src * len(self._key_code) + code
            _, first_from_end = np.unique(pair[::-1], return_index=True)
            rows = n - 1 - first_from_end
            self._present[src[rows], code[rows]] = True
            for c in self.columns:
                self._state[c][src[rows], code[rows]] = values[c][rows]
        return joined, fresh

    def _to_arrow(self, name: str, values: np.ndarray, fresh: np.ndarray) -> list:
        """Column ``name`` of every source, from its ``(sources, rows)`` joined values, as
        Arrow arrays of the column's type (floats as float64): null where the source's quote
        is not ``fresh`` and where the value is the null marker (int64 min; NaN).

        Every source's array views one values buffer and one validity bitmap at its own
        offset (``from_buffers``): a live consumer of one-row batches builds these arrays on
        every tick, and a compute call or ``pa.array`` with a mask costs several times more."""
        n_src, n = values.shape
        typ = self._types[name]
        if values.dtype == np.int64:
            missing = values == _NULL_INT
        else:
            typ = pa.float64()
            missing = np.isnan(values)  # a null input (NaN inside) stays null
        valid = fresh & ~missing
        all_valid = valid.all(axis=1)
        bitmap = None
        if not all_valid.all():
            bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))  # bit s * n + row
        data = pa.py_buffer(np.ascontiguousarray(values))
        # built as what the int64 values are (ns timestamps, int64), then cast back to the type
        if pa.types.is_timestamp(typ):
            wide = pa.timestamp("ns", tz=typ.tz)
        else:
            wide = typ if typ.bit_width == 64 else pa.int64()
        arrays = []
        for s_i in range(n_src):
            arr = pa.Array.from_buffers(wide, n, [None if all_valid[s_i] else bitmap, data],
                                        offset=s_i * n)
            arrays.append(arr if wide == typ else arr.cast(typ))
        return arrays

    __call__ = process
