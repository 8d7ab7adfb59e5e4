"""JSON message values → typed Arrow columns, in bulk (the ``from_kafka`` decoder).

Each Kafka value is one flat JSON object (spec stream_and_collectors.md §1).  A batch of values
is decoded at once into a :class:`pyarrow.RecordBatch` of the target schema:

* fields present in a message but absent from the schema are ignored;
* absent nullable fields are null;
* timestamp fields are integer nanoseconds since the epoch (converted to the field's unit);
* a message that is not a JSON object, has a value of the wrong type, or lacks a non-nullable
  field is *undecodable*: it is left out of the batch and reported with its index and reason.

The fast path hands the whole batch to a native decoder (the Cython ``_jsondecode`` module
when built, else Arrow's C++ JSON reader over the newline-joined values).  Only when that
fails are the offending messages isolated (by bisection, so ``k`` bad messages among ``n``
cost ``O(k log n)`` re-reads); no message is ever decoded row by row through Python objects
on the fast path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.types as pat

try:  # the Cython decoder, when the extension is built
    from . import _jsondecode as _native  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - exercised when the extension is not built
    _native = None

#: (index of the message in the input, human-readable reason)
BadMessage = Tuple[int, str]


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

    def __init__(self, schema: pa.Schema, *, use_native: bool = True) -> None:
        self.schema = schema
        self._reader_schema = reader_schema(schema)
        self._parse_options = pj.ParseOptions(explicit_schema=self._reader_schema,
                                              unexpected_field_behavior="ignore")
        self._required = [i for i, f in enumerate(schema) if not f.nullable]
        self._native = None
        if use_native and _native is not None and _native.supports(self._reader_schema):
            self._native = _native.FlatJsonDecoder(
                self._reader_schema, [_native_output_type(r.type, f.type)
                                      for r, f in zip(self._reader_schema, schema)])

    # -- public -------------------------------------------------------------------------------
    def decode(self, values: Sequence[Optional[bytes]]) -> DecodeResult:
        """Decode ``values`` (bytes or None); undecodable ones are listed in ``bad``."""
        if self._native is not None:
            try:
                columns, bad = self._native.decode(list(values))
            except (pa.ArrowInvalid, ValueError, OverflowError, TypeError):
                pass  # e.g. invalid UTF-8 in a string: the Arrow reader isolates the culprits
            else:
                index_of = None
                if bad:
                    bad_set = {i for i, _ in bad}
                    index_of = [i for i in range(len(values)) if i not in bad_set]
                batch = self._finish(columns, bad, index_of, [])
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
                return None, [(0, _reason(exc))]
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
                    bad.append((start, _reason(exc)))
                else:
                    self._bisect(part, start, bad, pieces)

    def _finish(self, columns: Optional[List[pa.Array]], bad: List[BadMessage],
                index_of: Optional[List[int]], bad_local: List[BadMessage]) -> pa.RecordBatch:
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
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)


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
