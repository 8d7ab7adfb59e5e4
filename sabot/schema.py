"""The normalised ticker record every collector emits.

One record per best-bid/offer change.  Parquet and Stream batches use :data:`TICKER_SCHEMA`;
Kafka carries the same fields as one flat JSON object per message, keyed by ``symbol``, with
timestamps as integer nanoseconds since the epoch.  Exchange-specific extra columns may follow
the common ones (:data:`EXTRA_FIELDS`, declared by each venue in :mod:`sabot.venues`).
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
]

#: The common columns, in order.
TICKER_SCHEMA = pa.schema(TICKER_FIELDS)

#: Venue name -> the extra columns its records carry after the common ones.  Each venue declares
#: them when it registers (:mod:`sabot.venues`); this is a live view of that registry.
EXTRA_FIELDS: VenueMapping[list] = VenueMapping(lambda v: list(v.extra_fields), "extra columns")

TIMESTAMP_COLUMNS = ("timestamp", "recv_timestamp", "parent_timestamp")


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

#: Fields validated as prices when a record is read from Kafka: finite and > 0.
PRICE_FIELDS = ("price", "bid", "ask")
#: Fields validated as sizes: finite and >= 0.
SIZE_FIELDS = ("bid_size", "ask_size", "volume_24h")
#: Identifier fields that may not contain control characters.
IDENTIFIER_FIELDS = ("exchange", "symbol", "raw_symbol", "product_id")
#: Timestamps checked against the window around the message time.
WINDOW_TIMESTAMP_FIELDS = ("timestamp", "recv_timestamp")
