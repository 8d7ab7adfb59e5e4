"""normalize_symbols: every exchange's symbol spelling to ``BASE/QUOTE`` in a batch."""
from __future__ import annotations

from typing import Mapping, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pat

from ..symbols import DEFAULT_QUOTE_ALIASES, normalize_symbol
from ._columns import BatchLike, check_batch, require_column, with_columns

#: Batches of at most this many rows map symbol by symbol; larger ones each distinct symbol once.
FEW_ROWS = 8


def _normalize_batch(batch: pa.RecordBatch, exchange: Optional[str], symbol_column: str,
                     quote_aliases: Mapping[str, str]) -> pa.RecordBatch:
    field = require_column(batch.schema, symbol_column, "symbol_column")
    symbols = batch.column(symbol_column)
    if pat.is_dictionary(field.type):
        symbols = symbols.dictionary_decode()
    if not (pat.is_string(symbols.type) or pat.is_large_string(symbols.type)):
        raise TypeError(
            f"symbol_column {symbol_column!r} has type {field.type}; expected string"
        )
    def mapped(raws: list) -> pa.Array:
        out = []
        for raw in raws:
            try:
                out.append(None if raw is None else normalize_symbol(raw, exchange, quote_aliases))
            except ValueError as exc:
                raise ValueError(f"column {symbol_column!r}: {exc}") from None
        return pa.array(out, pa.string())

    if len(symbols) <= FEW_ROWS:        # a live tick: map the rows (compute calls cost more)
        normalized = mapped(symbols.to_pylist())
    else:                               # each distinct symbol once
        encoded = pc.dictionary_encode(symbols)
        normalized = pc.take(mapped(encoded.dictionary.to_pylist()), encoded.indices)
    named = [(symbol_column, normalized)]
    if "raw_symbol" not in batch.schema.names:
        named.append(("raw_symbol", symbols))
    return with_columns(batch, named)


def normalize_symbols(batch: BatchLike, exchange: Optional[str] = None, *,
                      symbol_column: str = "symbol",
                      quote_aliases: Mapping[str, str] = DEFAULT_QUOTE_ALIASES) -> BatchLike:
    """Replace ``symbol`` by its ``BASE/QUOTE`` form and keep the original in ``raw_symbol``.

    ``BTC-USD`` and ``XBT/USD`` become ``BTC/USD``, ``btcusdt`` becomes ``BTC/USDT`` (USDT is its
    own quote; ``quote_aliases=sabot.symbols.USDT_AS_USD`` reads it as USD). Idempotent: an existing ``raw_symbol`` column is
    kept, and normalised symbols map to themselves. Each distinct symbol is mapped once per
    batch. An unparseable symbol raises ``ValueError`` naming it and the column.
    """
    check_batch(batch)
    if isinstance(batch, pa.Table):
        parts = [_normalize_batch(b, exchange, symbol_column, quote_aliases)
                 for b in batch.to_batches()]
        if not parts:
            empty = pa.RecordBatch.from_arrays(
                [pa.array([], type=f.type) for f in batch.schema], schema=batch.schema)
            parts = [_normalize_batch(empty, exchange, symbol_column, quote_aliases)]
        return pa.Table.from_batches(parts)
    return _normalize_batch(batch, exchange, symbol_column, quote_aliases)
