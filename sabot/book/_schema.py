"""Arrow schemas of the book rows (see :mod:`sabot.book`)."""
from __future__ import annotations

import pyarrow as pa

TS_NS_UTC = pa.timestamp("ns", tz="UTC")

_KEY_FIELDS = [
    pa.field("exchange", pa.string(), nullable=False),
    pa.field("symbol", pa.string(), nullable=False),
    pa.field("timestamp", TS_NS_UTC, nullable=False),
    pa.field("recv_timestamp", TS_NS_UTC, nullable=False),
]

#: Top-of-book rows: one per change of the best bid/offer (price or size).
TOB_SCHEMA = pa.schema(_KEY_FIELDS + [
    pa.field("bid", pa.float64()),
    pa.field("bid_size", pa.float64()),
    pa.field("ask", pa.float64()),
    pa.field("ask_size", pa.float64()),
])


def depth_schema(depth: int) -> pa.Schema:
    """The wide depth-row schema for ``depth`` levels per side (levels numbered from 1)."""
    if depth < 1:
        raise ValueError(f"depth {depth!r} must be >= 1")
    fields = list(_KEY_FIELDS)
    for i in range(1, depth + 1):
        fields += [pa.field(f"bid_price_{i}", pa.float64()), pa.field(f"bid_size_{i}", pa.float64()),
                   pa.field(f"ask_price_{i}", pa.float64()), pa.field(f"ask_size_{i}", pa.float64())]
    return pa.schema(fields)
