"""Compiled L2 order books and the venue appliers that keep them in sync.

* :class:`Book` — one symbol's price levels (fixed point, sorted C arrays), best bid/offer,
  top-N arrays, exact decimal levels and Kraken's CRC32 checksum.
* :class:`BookSet` — books keyed by symbol; records top-of-book changes and top-N depth rows
  and hands them out as Arrow record batches (:data:`TOB_SCHEMA`, :func:`depth_schema`).
* :mod:`sabot.book.venues` — :class:`KrakenBooks`, :class:`CoinbaseBooks`,
  :class:`BinanceBook`: each venue's raw ``book`` messages in, books out, with the venue's
  integrity check (checksum, sequence numbers, update ids) reported as :class:`BookOutOfSync`.

Output format (wide): one row per change, ``exchange, symbol, timestamp, recv_timestamp``
then, for the top of book, ``bid, bid_size, ask, ask_size`` (the names the ticker records use),
and for depth ``bid_price_i, bid_size_i, ask_price_i, ask_size_i`` for i = 1..N. A missing level
is null.  Wide rows keep one book state per row, which is what ASOF joins and feature kernels
consume; N is fixed per set (10 by default), so the schema is fixed too.
"""
from __future__ import annotations

from sabot.book._book import ASK, BID, Book, BookError, BookSet, crc32
from sabot.book._schema import TOB_SCHEMA, TS_NS_UTC, depth_schema
from sabot.book.venues import (
    BinanceBook,
    BookOutOfSync,
    ChecksumMismatch,
    CoinbaseBooks,
    DepthGap,
    KrakenBooks,
    SequenceGap,
    StaleSnapshot,
)

__all__ = [
    "ASK", "BID", "Book", "BookError", "BookSet", "TOB_SCHEMA", "depth_schema", "crc32",
    "BookOutOfSync", "ChecksumMismatch", "SequenceGap", "DepthGap", "StaleSnapshot",
    "KrakenBooks", "CoinbaseBooks", "BinanceBook",
]
