"""The normalised records every collector emits: tickers and trades.

Ticker: one record per best-bid/offer change.  Parquet and Stream batches use
:data:`TICKER_SCHEMA`; Kafka carries the same fields as one flat JSON object per message, keyed
by ``symbol``, with timestamps as integer nanoseconds since the epoch.  Exchange-specific extra
columns may follow the common ones (:data:`EXTRA_FIELDS`, declared by each venue in
:mod:`sabot.venues`).

Trade: one record per trade printed by the venue (:data:`TRADE_SCHEMA`, the same on every
venue, no extra columns), on the ``<venue>-trades`` topic and in its own Parquet file.
``side`` is the aggressor's (taker's) side, ``"buy"`` or ``"sell"``, whatever the venue sends
(each venue module states its rule); ``trade_id`` is the venue's identifier as text.

Which clock: every record carries ``time_source`` saying what its ``timestamp`` is:

* ``"exchange"``: the venue's event time (Coinbase and Kraken tickers, every venue's trades);
* ``"receive"``: the local time the frame arrived, because the venue sends no event time
  (Binance ``bookTicker``; a Kraken ticker without ``timestamp``).

``recv_timestamp`` is always the receive time.  The ASOF joins, the monitor's staleness and
cross-venue alignment and the event-time windows all align on ``timestamp``; ``time_source``
says whether two venues' timestamps measure the same thing (exchange against receive time
differs by the network latency).  Records written before the column existed read it as null.
"""
from __future__ import annotations

import pyarrow as pa

from sabot.venues.registry import UnknownVenueError, VenueMapping, get_venue, venue_names

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
    pa.field("time_source", pa.string()),
]

#: The common columns, in order.
TICKER_SCHEMA = pa.schema(TICKER_FIELDS)

#: Venue name -> the extra columns its records carry after the common ones.  Each venue declares
#: them when it registers (:mod:`sabot.venues`); this is a live view of that registry.
EXTRA_FIELDS: VenueMapping[list] = VenueMapping(lambda v: list(v.extra_fields), "extra columns")

TIMESTAMP_COLUMNS = ("timestamp", "recv_timestamp", "parent_timestamp")

#: ``time_source`` values: what a record's ``timestamp`` is.
EXCHANGE_TIME = "exchange"
RECEIVE_TIME = "receive"
TIME_SOURCES = (EXCHANGE_TIME, RECEIVE_TIME)

TRADE_FIELDS = [
    pa.field("exchange", pa.string(), nullable=False),
    pa.field("symbol", pa.string(), nullable=False),
    pa.field("raw_symbol", pa.string(), nullable=False),
    pa.field("timestamp", TS_NS_UTC, nullable=False),
    pa.field("recv_timestamp", TS_NS_UTC, nullable=False),
    pa.field("price", pa.float64(), nullable=False),
    pa.field("size", pa.float64(), nullable=False),
    pa.field("side", pa.string(), nullable=False),
    pa.field("trade_id", pa.string(), nullable=False),
    pa.field("sequence", pa.int64()),
    pa.field("time_source", pa.string()),
]

#: The trade record's columns, in order (every venue).
TRADE_SCHEMA = pa.schema(TRADE_FIELDS)

#: Aggressor sides a trade record may carry.
TRADE_SIDES = ("buy", "sell")

#: The channels a collector can record; each has its own Kafka topic and Parquet file.
CHANNELS = ("ticker", "trades")


def exchange_schema(exchange: str) -> pa.Schema:
    """The common schema followed by ``exchange``'s extra columns (any registered venue).

    An unregistered name raises ``ValueError`` naming it and the known venues.
    """
    try:
        venue = get_venue(exchange)
    except UnknownVenueError:
        raise ValueError(
            f"unknown exchange {exchange!r}; known: {', '.join(sorted(venue_names()))}"
        ) from None
    return pa.schema(TICKER_FIELDS + list(venue.extra_fields))


def channel_schema(exchange: str, channel: str = "ticker") -> pa.Schema:
    """The Parquet schema of ``exchange``'s records on ``channel`` (``ticker`` or ``trades``).

    An unknown channel raises ``ValueError`` naming it and the known ones."""
    if channel == "ticker":
        return exchange_schema(exchange)
    if channel == "trades":
        exchange_schema(exchange)  # an unregistered venue is named the same way
        return TRADE_SCHEMA
    raise ValueError(f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}")

#: Fields validated as prices when a record is read from Kafka: finite and > 0.
PRICE_FIELDS = ("price", "bid", "ask")
#: Fields validated as sizes: finite and >= 0.
SIZE_FIELDS = ("bid_size", "ask_size", "volume_24h")
#: Identifier fields that may not contain control characters.
IDENTIFIER_FIELDS = ("exchange", "symbol", "raw_symbol", "product_id")
#: Timestamps checked against the window around the message time.
WINDOW_TIMESTAMP_FIELDS = ("timestamp", "recv_timestamp")
