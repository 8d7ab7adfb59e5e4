"""The normalised ticker record every collector emits.

One record per best-bid/offer change.  Parquet and Stream batches use :data:`TICKER_SCHEMA`;
Kafka carries the same fields as one flat JSON object per message, keyed by ``symbol``, with
timestamps as integer nanoseconds since the epoch.  Exchange-specific extra columns may follow
the common ones (:data:`EXTRA_FIELDS`).
"""
from __future__ import annotations

import pyarrow as pa

TS_NS_UTC = pa.timestamp("ns", tz="UTC")

TICKER_FIELDS = [
    pa.field("exchange", pa.string(), nullable=False),
    pa.field("symbol", pa.string(), nullable=False),
    pa.field("raw_symbol", pa.string(), nullable=False),
    pa.field("timestamp", TS_NS_UTC, nullable=False),
    pa.field("recv_timestamp", TS_NS_UTC, nullable=False),
    pa.field("bid", pa.float64()),
    pa.field("ask", pa.float64()),
    pa.field("bid_size", pa.float64()),
    pa.field("ask_size", pa.float64()),
    pa.field("price", pa.float64()),
    pa.field("volume_24h", pa.float64()),
    pa.field("sequence", pa.int64()),
]

#: The common columns, in order.
TICKER_SCHEMA = pa.schema(TICKER_FIELDS)

#: Exchange-specific columns that follow the common ones.
EXTRA_FIELDS = {
    "coinbase": [
        pa.field("product_id", pa.string()),
        pa.field("parent_timestamp", TS_NS_UTC),
    ],
    "kraken": [
        pa.field("vwap", pa.float64()),
        pa.field("change_pct", pa.float64()),
    ],
    "binance": [
        pa.field("last_price", pa.float64()),
        pa.field("price_change_pct", pa.float64()),
        pa.field("num_trades", pa.int64()),
    ],
}

TIMESTAMP_COLUMNS = ("timestamp", "recv_timestamp", "parent_timestamp")


def exchange_schema(exchange: str) -> pa.Schema:
    """The common schema followed by ``exchange``'s extra columns."""
    try:
        extra = EXTRA_FIELDS[exchange]
    except KeyError:
        raise ValueError(
            f"unknown exchange {exchange!r}; known: {', '.join(sorted(EXTRA_FIELDS))}"
        ) from None
    return pa.schema(TICKER_FIELDS + extra)

#: Fields validated as prices when a record is read from Kafka: finite and > 0.
PRICE_FIELDS = ("price", "bid", "ask")
#: Fields validated as sizes: finite and >= 0.
SIZE_FIELDS = ("bid_size", "ask_size", "volume_24h")
#: Identifier fields that may not contain control characters.
IDENTIFIER_FIELDS = ("exchange", "symbol", "raw_symbol", "product_id")
#: Timestamps checked against the window around the message time.
WINDOW_TIMESTAMP_FIELDS = ("timestamp", "recv_timestamp")
