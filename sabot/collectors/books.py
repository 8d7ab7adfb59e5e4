"""The ``book`` channel's records: one row per change of a symbol's top levels.

The venue appliers (:mod:`sabot.book.venues`) keep each book in sync and record top-of-book and
depth rows in their :class:`~sabot.book.BookSet`; :func:`book_records` turns what they recorded
for one frame into the collector's records, one per change of the top :data:`BOOK_DEPTH` levels
of a symbol:

``exchange, symbol, raw_symbol, timestamp, recv_timestamp, top_changed, bid, bid_size, ask,
ask_size`` then ``bid_price_i, bid_size_i, ask_price_i, ask_size_i`` for ``i = 1..10``.

``bid``/``ask`` and their sizes are the best levels (the names the ticker records use);
``top_changed`` is true when the best bid or offer (price or size) changed with this row, so
``rows[top_changed]`` is the top-of-book series and all rows are the depth series.  A missing
level is null.  ``timestamp`` is the exchange's time where the venue gives one.
"""
from __future__ import annotations

from typing import Callable

import pyarrow as pa

from sabot.book import BookSet

__all__ = ["BOOK_DEPTH", "BOOK_SCHEMA", "book_records"]

#: Levels per side in every book record.
BOOK_DEPTH = 10

_TS = pa.timestamp("ns", tz="UTC")

#: The Parquet schema of the ``book`` channel.
BOOK_SCHEMA = pa.schema(
    [pa.field("exchange", pa.string(), nullable=False),
     pa.field("symbol", pa.string(), nullable=False),
     pa.field("raw_symbol", pa.string()),
     pa.field("timestamp", _TS, nullable=False),
     pa.field("recv_timestamp", _TS, nullable=False),
     pa.field("top_changed", pa.bool_(), nullable=False),
     pa.field("bid", pa.float64()), pa.field("bid_size", pa.float64()),
     pa.field("ask", pa.float64()), pa.field("ask_size", pa.float64())]
    + [pa.field(f"{name}_{i}", pa.float64()) for i in range(1, BOOK_DEPTH + 1)
       for name in ("bid_price", "bid_size", "ask_price", "ask_size")]
)

_LEVEL_NAMES = [f"{name}_{i}" for i in range(1, BOOK_DEPTH + 1)
                for name in ("bid_price", "bid_size", "ask_price", "ask_size")]


def book_records(books: BookSet, symbol_of: Callable[[str], str]) -> list[dict]:
    """The rows ``books`` recorded since the last call, as book records (and clears them).

    ``symbol_of`` maps the venue's spelling to the record's ``symbol`` (``BASE/QUOTE``).
    """
    n_tob, n_depth = books.pending
    if not n_tob and not n_depth:
        return []
    tob = books.flush_tob()
    depth = books.flush_depth()
    changed: dict[tuple[str, int], int] = {}
    if tob.num_rows:
        for key in zip(tob.column("symbol").to_pylist(),
                       tob.column("timestamp").cast(pa.int64()).to_pylist()):
            changed[key] = changed.get(key, 0) + 1
    if not depth.num_rows:
        return []
    exchange = books.exchange
    syms = depth.column("symbol").to_pylist()
    ts = depth.column("timestamp").cast(pa.int64()).to_pylist()
    recv = depth.column("recv_timestamp").cast(pa.int64()).to_pylist()
    levels = [depth.column(name).to_pylist() for name in _LEVEL_NAMES]
    out = []
    for j, raw in enumerate(syms):
        key = (raw, ts[j])
        top = changed.get(key, 0) > 0
        if top:
            changed[key] -= 1
        rec = {"exchange": exchange, "symbol": symbol_of(raw), "raw_symbol": raw, "timestamp": ts[j],
               "recv_timestamp": recv[j], "top_changed": top,
               "bid": levels[0][j], "bid_size": levels[1][j], "ask": levels[2][j], "ask_size": levels[3][j]}
        for name, col in zip(_LEVEL_NAMES, levels):
            rec[name] = col[j]
        out.append(rec)
    return out
