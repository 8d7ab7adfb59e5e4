"""JSON message values → typed Arrow columns, in bulk (the ``from_kafka`` decoder).

Each Kafka value is one flat JSON object (see :mod:`sabot.schema`).  A batch of values
is decoded at once into a :class:`pyarrow.RecordBatch` of the target schema:

* fields present in a message but absent from the schema are ignored;
* absent nullable fields are null;
* timestamp fields are integer nanoseconds since the epoch (converted to the field's unit);
* a message that is not a JSON object, has a value of the wrong type, gives a field twice, or
  lacks a non-nullable field is *undecodable*: it is left out of the batch and reported with
  its index and reason;
* a non-finite number (``1e999`` overflows to infinity; ``NaN`` is not JSON) never becomes a
  value: the message is invalid, with or without rules;
* with :class:`RecordRules` (``from_kafka`` always passes them), a decoded record that breaks
  the rules of a market-data record is *invalid* and reported the same way, its reason naming
  field and value: a non-positive ``price``/``bid``/``ask``, a negative size, an identifier
  (``symbol``, ...) with a control character, a timestamp outside the window around the
  message's reference time (its Kafka timestamp).

The native decoder applies these checks in its one pass over each message; the fallback
applies the same checks to the columns it read, with the same reasons.  Both accept and reject
exactly the same messages (tests feed both the same bytes).

The fast path hands the whole batch to a native decoder (the Cython ``_jsondecode`` module
when built, else Arrow's C++ JSON reader over the newline-joined values).  Only when that
fails are the offending messages isolated (by bisection, so ``k`` bad messages among ``n``
cost ``O(k log n)`` re-reads); no message is ever decoded row by row through Python objects
on the fast path.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.types as pat

try:  # the Cython decoder, when the extension is built
    from . import _jsondecode as _native  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - exercised when the extension is not built
    _native = None

from ..schema import IDENTIFIER_FIELDS, PRICE_FIELDS, SIZE_FIELDS, WINDOW_TIMESTAMP_FIELDS
from ..timeunits import seconds_to_ns

#: (index of the message in the input, human-readable reason)
BadMessage = Tuple[int, str]

#: Default window of ``from_kafka(timestamp_window=...)``: one day back, one minute ahead.
DEFAULT_MAX_AGE_S = 86_400.0
DEFAULT_MAX_AHEAD_S = 60.0

_CONTROL = r"[\x{00}-\x{1f}\x{7f}-\x{9f}]"


@dataclass(frozen=True)
class RecordRules:
    """Validation of decoded records (see the module docstring).

    ``max_age_s`` / ``max_ahead_s``: a record whose timestamp is more than this before / after
    its message's reference time (the Kafka message timestamp, else the time of decoding) is
    invalid; None: no bound on that side."""

    max_age_s: Optional[float] = DEFAULT_MAX_AGE_S
    max_ahead_s: Optional[float] = DEFAULT_MAX_AHEAD_S

    @classmethod
    def from_window(cls, window: Any, *, from_beginning: bool) -> "RecordRules":
        """The rules of ``from_kafka(timestamp_window=window)``.

        ``"auto"`` (default): reading live (``from_beginning=False``) one day back and one
        minute ahead; reading a topic from its beginning (a backfill, a replay of last month)
        only the minute ahead, since such a topic may hold history loaded in bulk.  ``None``:
        no time check.  ``(max_age_s, max_ahead_s)``: either may be None."""
        if window == "auto":
            return cls(None if from_beginning else DEFAULT_MAX_AGE_S, DEFAULT_MAX_AHEAD_S)
        if window is None:
            return cls(None, None)
        if (isinstance(window, (tuple, list)) and len(window) == 2
                and all(w is None or (isinstance(w, (int, float)) and not isinstance(w, bool)
                                      and math.isfinite(w) and w >= 0) for w in window)):
            return cls(*(None if w is None else float(w) for w in window))
        raise ValueError(f"timestamp_window must be 'auto', None or (max_age_s, max_ahead_s) "
                         f"with seconds >= 0 or None, got {window!r}")


@dataclass
class DecodeResult:
    batch: pa.RecordBatch
    bad: List[BadMessage]


def _reader_type(t: pa.DataType) -> pa.DataType:
    """The type Arrow's JSON reader should parse a field as (before conversion)."""
    if pat.is_timestamp(t) or pat.is_date64(t) or pat.is_duration(t):
        return pa.int64()
    if pat.is_dictionary(t):
        return _reader_type(t.value_type)
    return t


def reader_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, _reader_type(f.type)) for f in schema])


def _native_output_type(reader_type: pa.DataType, target: pa.DataType) -> pa.DataType:
    """The type the native decoder builds a field as: the target where no conversion is
    needed (integer ns → ``timestamp('ns')`` is the same buffer), else the reader's type."""
    if pat.is_timestamp(target) and target.unit == "ns" and reader_type == pa.int64():
        return target
    return reader_type


def _convert(column: pa.Array, target: pa.DataType) -> pa.Array:
    """Reader output column → target type (int64 ns → timestamp etc.)."""
    if column.type == target:
        return column
    if pat.is_timestamp(target):
        ns = column.cast(pa.int64()).cast(pa.timestamp("ns", tz=target.tz))
        return ns if target.unit == "ns" else ns.cast(target)
    if pat.is_dictionary(target):
        return pc.dictionary_encode(column.cast(target.value_type)).cast(target)
    return column.cast(target)


class JsonBatchDecoder:
    """Decodes batches of JSON message values into RecordBatches of ``schema``."""

    def __init__(self, schema: pa.Schema, *, use_native: bool = True,
                 rules: Optional[RecordRules] = None) -> None:
        self.schema = schema
        self.rules = rules
        self._reader_schema = reader_schema(schema)
        self._parse_options = pj.ParseOptions(explicit_schema=self._reader_schema,
                                              unexpected_field_behavior="ignore")
        self._required = [i for i, f in enumerate(schema) if not f.nullable]
        #: per field: what is checked ("finite", "positive", "nonneg", "noctrl", "window")
        self._checks: List[Tuple[str, ...]] = [self._field_checks(f) for f in schema]
        self._ref_ns: Optional[np.ndarray] = None
        self._native = None
        if use_native and _native is not None and _native.supports(self._reader_schema):
            codes = getattr(_native, "CHECKS", None)
            if codes is not None:  # the extension checks records in its one pass
                ahead, age = self._window_ns()
                self._native = _native.FlatJsonDecoder(
                    self._reader_schema, [_native_output_type(r.type, f.type)
                                          for r, f in zip(self._reader_schema, schema)],
                    [sum(codes[c] for c in cs) for cs in self._checks],
                    self._native_reason, age, ahead)

    def _field_checks(self, f: pa.Field) -> Tuple[str, ...]:
        """The checks of field ``f``: floats always finite; the rest only with rules."""
        t = f.type
        if pat.is_floating(t):
            if self.rules is None:
                return ("finite",)
            return (("finite", "positive") if f.name in PRICE_FIELDS else
                    ("finite", "nonneg") if f.name in SIZE_FIELDS else ("finite",))
        if self.rules is None:
            return ()
        if f.name in IDENTIFIER_FIELDS and (pat.is_string(t) or pat.is_large_string(t)):
            return ("noctrl",)
        if (f.name in WINDOW_TIMESTAMP_FIELDS and pat.is_timestamp(t)
                and (self.rules.max_age_s is not None or self.rules.max_ahead_s is not None)):
            return ("window",)
        return ()

    def _window_ns(self) -> Tuple[Optional[int], Optional[int]]:
        """(max ahead, max age) in ns (None: unbounded), clamped so ``ref ± bound`` fits."""
        def ns(s: Optional[float]) -> Optional[int]:
            return None if s is None else min(seconds_to_ns(s), 2**62)
        if self.rules is None:
            return None, None
        return ns(self.rules.max_ahead_s), ns(self.rules.max_age_s)

    def _native_reason(self, i: int, value: Any, ref: int) -> str:
        return self._rule_reason(i, value, int(ref))

    def _rule_reason(self, i: int, value: Any, ref: int) -> str:
        """Why ``value`` of field ``i`` breaks its check (field and value named); the same words
        from the native and the fallback decoder."""
        name, checks = self.schema[i].name, self._checks[i]
        if "window" in checks:
            ns = int(value)
            when = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(
                timespec="seconds").replace("+00:00", "Z")
            age = (ref - ns) / 1e9
            side = f"{age:.0f} s before" if age > 0 else f"{-age:.0f} s after"
            rules = self.rules
            return (f"{name}={ns} ({when}): {side} the message time, outside the timestamp "
                    f"window ({_span(rules.max_age_s)} back, {_span(rules.max_ahead_s)} ahead)")
        if "noctrl" in checks:
            return f"{name}={value!r}: contains a control character"
        what = ("not a finite positive price" if "positive" in checks else
                "not a finite non-negative size" if "nonneg" in checks else "not a finite number")
        return f"{name}={float(value)!r}: {what}"

    # -- public -------------------------------------------------------------------------------
    def decode(self, values: Sequence[Optional[bytes]],
               ref_ns: Optional[np.ndarray] = None) -> DecodeResult:
        """Decode ``values`` (bytes or None); undecodable and invalid ones are listed in ``bad``.

        ``ref_ns``: per message, the reference time of the timestamp window (ns since the
        epoch; negative: none, the time of decoding is used)."""
        self._ref_ns = ref_ns
        if self._native is not None:
            try:
                columns, bad = self._native.decode(list(values), ref_ns)
            except (pa.ArrowInvalid, ValueError, OverflowError, TypeError):
                pass  # e.g. invalid UTF-8 in a string: the Arrow reader isolates the culprits
            else:
                index_of = None
                if bad:
                    bad_set = {i for i, _ in bad}
                    index_of = [i for i in range(len(values)) if i not in bad_set]
                batch = self._finish(columns, bad, index_of, [], checked=True)
                bad.sort()
                return DecodeResult(batch, bad)
        bad = []
        good_idx: Optional[List[int]] = None
        clean: List[bytes] = []
        for i, v in enumerate(values):
            reason = _screen(v)
            if reason:
                if good_idx is None:
                    good_idx = list(range(i))
                bad.append((i, reason))
                continue
            if good_idx is not None:
                good_idx.append(i)
            clean.append(v)
        table, bad_local = self._decode_clean(clean)
        index_of = good_idx if good_idx is not None else None
        for j, reason in bad_local:
            bad.append((index_of[j] if index_of is not None else j, reason))
        batch = self._finish(None if table is None else
                             [c.combine_chunks() for c in table.columns], bad, index_of, bad_local)
        bad.sort()
        return DecodeResult(batch, bad)

    # -- internals ----------------------------------------------------------------------------
    def _read(self, values: Sequence[bytes]) -> pa.Table:
        joined = b"\n".join(values)
        if joined.count(b"\n") != len(values) - 1:
            # Raw newlines can only be whitespace in valid JSON (never inside strings):
            # make each message one line.
            joined = b"\n".join(v.replace(b"\r", b" ").replace(b"\n", b" ") for v in values)
        read_options = pj.ReadOptions(use_threads=False, block_size=max(1 << 20, len(joined) + 1))
        table = pj.read_json(pa.BufferReader(joined), read_options=read_options,
                             parse_options=self._parse_options)
        if table.num_rows != len(values):
            raise pa.ArrowInvalid(f"expected {len(values)} JSON objects, read {table.num_rows}")
        return table

    def _decode_clean(self, values: List[bytes]) -> Tuple[Optional[pa.Table], List[BadMessage]]:
        """Decode all; on failure, bisect to find the messages that fail on their own."""
        if not values:
            return None, []
        try:
            return self._read(values), []
        except (pa.ArrowInvalid, ValueError) as exc:
            if len(values) == 1:
                return None, [(0, self._why(values[0], exc))]
        bad: List[BadMessage] = []
        pieces: List[pa.Table] = []
        self._bisect(values, 0, bad, pieces)
        table = pa.concat_tables(pieces) if pieces else None
        return table, bad

    def _bisect(self, values: List[bytes], offset: int, bad: List[BadMessage],
                pieces: List[pa.Table]) -> None:
        mid = len(values) // 2
        for part, start in ((values[:mid], offset), (values[mid:], offset + mid)):
            if not part:
                continue
            try:
                pieces.append(self._read(part))
            except (pa.ArrowInvalid, ValueError) as exc:
                if len(part) == 1:
                    bad.append((start, self._why(part[0], exc)))
                else:
                    self._bisect(part, start, bad, pieces)

    def _finish(self, columns: Optional[List[pa.Array]], bad: List[BadMessage],
                index_of: Optional[List[int]], bad_local: List[BadMessage],
                checked: bool = False) -> pa.RecordBatch:
        """The batch of the decoded ``columns`` (reader types) in the target schema, without
        the messages that lack a required field (added to ``bad``)."""
        if columns is None or len(columns[0]) == 0:
            return pa.RecordBatch.from_pylist([], schema=self.schema)
        columns = [_convert(c, f.type) for c, f in zip(columns, self.schema)]
        # Required (non-nullable) fields that came out null: those messages are undecodable.
        missing = None
        for i in self._required:
            if columns[i].null_count:
                m = columns[i].is_null()
                missing = m if missing is None else pc.or_(missing, m)
        if missing is not None and missing.true_count:
            # map decoded rows back to input indices
            good_local = np.ones(len(bad_local) + len(columns[0]), dtype=bool)
            for j, _ in bad_local:
                good_local[j] = False
            local_rows = np.flatnonzero(good_local)
            miss_np = missing.to_numpy(zero_copy_only=False)
            for r in np.flatnonzero(miss_np):
                j = int(local_rows[r])
                names = [self.schema[i].name for i in self._required
                         if not columns[i][int(r)].is_valid]
                bad.append((index_of[j] if index_of is not None else j,
                            f"missing required field(s): {', '.join(names)}"))
            keep = pc.invert(missing)
            columns = [c.filter(keep) for c in columns]
        else:
            keep = None
        if not checked and len(columns[0]) and any(self._checks):
            columns = self._validate(columns, keep, bad, index_of, bad_local)
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def _validate(self, columns: List[pa.Array], keep: Optional[pa.Array],
                  bad: List[BadMessage], index_of: Optional[List[int]],
                  bad_local: List[BadMessage]) -> List[pa.Array]:
        """Drop the records that break a field's checks (added to ``bad`` with the reason of
        :meth:`_rule_reason`): the fallback decoder's version of the native one-pass checks."""
        n = len(columns[0])
        # the input index of every decoded row
        good_local = np.ones(len(bad_local) + (n if keep is None else len(keep)), dtype=bool)
        for j, _ in bad_local:
            good_local[j] = False
        rows = np.flatnonzero(good_local)
        if index_of is not None:
            rows = np.asarray(index_of, dtype=np.int64)[rows]
        if keep is not None:
            rows = rows[np.flatnonzero(keep.to_numpy(zero_copy_only=False))]
        ref = self._reference(rows)
        ahead, age = self._window_ns()
        failing: List[Tuple[np.ndarray, int, Any]] = []  # (bad mask, field, values)
        for i, checks in enumerate(self._checks):
            if not checks:
                continue
            col = columns[i]
            valid = np.asarray(col.is_valid()) if col.null_count else None
            if "finite" in checks:
                v = col.to_numpy(zero_copy_only=False)
                with np.errstate(invalid="ignore"):
                    wrong = ~np.isfinite(v)
                    if "positive" in checks:
                        wrong |= ~(v > 0)
                    if "nonneg" in checks:
                        wrong |= ~(v >= 0)
            elif "noctrl" in checks:
                v = col
                wrong = pc.fill_null(pc.match_substring_regex(col, _CONTROL),
                                     False).to_numpy(zero_copy_only=False)
            else:  # window
                v = col.cast(pa.timestamp("ns", tz=col.type.tz)).cast(pa.int64()).to_numpy(
                    zero_copy_only=False)
                wrong = np.zeros(n, dtype=bool)
                if ahead is not None:
                    wrong |= v > ref + ahead
                if age is not None:
                    wrong |= v < ref - age
            if valid is not None:
                wrong &= valid
            if wrong.any():
                failing.append((wrong, i, v))
        if not failing:
            return columns
        drop = np.zeros(n, dtype=bool)
        for wrong, _, _ in failing:
            drop |= wrong
        for r in np.flatnonzero(drop):
            for wrong, i, v in failing:
                if wrong[r]:
                    value = v[int(r)].as_py() if isinstance(v, pa.Array) else v[r]
                    bad.append((int(rows[r]), self._rule_reason(i, value, int(ref[r]))))
                    break
        keep_rows = pa.array(~drop)
        return [c.filter(keep_rows) for c in columns]

    def _reference(self, rows: np.ndarray) -> np.ndarray:
        """Reference times (ns) of the given input rows."""
        now = time.time_ns()
        if self._ref_ns is None:
            return np.full(len(rows), now, dtype=np.int64)
        ref = np.asarray(self._ref_ns, dtype=np.int64)[rows]
        return np.where(ref >= 0, ref, now)

    def _why(self, value: bytes, exc: BaseException) -> str:
        """The reason one message failed the Arrow reader, in the native decoder's words
        (naming field and value) where the message is JSON; else the reader's own."""
        return _explain(value, self.schema, self.rules is not None) or _reason(exc)


def _span(seconds: Optional[float]) -> str:
    return "unbounded" if seconds is None else f"{seconds:g} s"


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "object"
    if isinstance(v, list):
        return "array"
    return "number"


def _explain(value: bytes, schema: pa.Schema, rules: bool = True) -> str:
    """Why ``value`` does not fit ``schema`` ('' when that is not the reason it failed)."""
    import json

    dup: List[str] = []
    names = set(schema.names)

    def pairs(items: List[Tuple[str, Any]]) -> dict:
        seen = set()
        for k, _ in items:
            if k in seen and k in names and not dup:
                dup.append(k)
            seen.add(k)
        return dict(items)

    try:
        obj = json.loads(value, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return ""
    if not isinstance(obj, dict):
        return "not a JSON object"
    for f in schema:
        if dup and dup[0] == f.name:
            return f"field {f.name!r} given twice"
        v = obj.get(f.name)
        if v is None:
            continue
        t = _reader_type(f.type)
        if pat.is_floating(t):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return f"field {f.name!r}: expected number, got {_kind(v)}"
            if not math.isfinite(float(v)):
                what = ("not a finite positive price" if rules and f.name in PRICE_FIELDS else
                        "not a finite non-negative size" if rules and f.name in SIZE_FIELDS
                        else "not a finite number")
                return f"{f.name}={float(v)!r}: {what}"
        elif pat.is_integer(t):
            if isinstance(v, bool) or isinstance(v, (str, dict, list)):
                return f"field {f.name!r}: expected integer, got {_kind(v)}"
            if isinstance(v, float):
                return f"field {f.name!r}: expected integer, got {v!r}"
            if not -2**63 <= v < 2**63:
                return f"field {f.name!r}: integer out of int64 range"
        elif pat.is_string(t) or pat.is_large_string(t):
            if not isinstance(v, str):
                return f"field {f.name!r}: expected string, got {_kind(v)}"
        elif pat.is_boolean(t) and not isinstance(v, bool):
            return f"field {f.name!r}: expected boolean, got {_kind(v)}"
    return ""


def _screen(value: Optional[bytes]) -> str:
    """Why ``value`` must not reach pyarrow's JSON reader ('' when it may).

    The reader crashes (SIGSEGV, pyarrow 22) when a block starts with a ``null`` root, reads
    later ``null`` roots as rows of nulls, and passes invalid UTF-8 into string columns."""
    if not value or value.isspace():
        return "empty message value"
    if not value.lstrip().startswith(b"{"):
        return "not a JSON object"
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start}"
    return ""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.replace("JSON parse error: ", "")
