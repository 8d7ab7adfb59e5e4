"""Coinbase's decimal strings reach float64 exactly as float(str) rounds them (typed decoder)."""
import json

import numpy as np

from hypothesis import given, settings, strategies as st

from sabot.collectors import CoinbaseCollector
from sabot.collectors.base import DATA

decimal_text = st.one_of(
    st.integers(0, 12).flatmap(lambda places: st.decimals(
        min_value=0, max_value=10**9, places=places, allow_nan=False, allow_infinity=False)
    ).map(lambda d: format(d, "f")),
    st.floats(min_value=1e-12, max_value=1e12).map(repr),          # '5.1e-05', '3467.1126000000004'
    st.integers(0, 10**18).map(str),
)


def frame(values):
    names = ("price", "volume_24_h", "best_bid", "best_bid_quantity", "best_ask",
             "best_ask_quantity")
    ticker = {"type": "ticker", "product_id": "BTC-USD", "low_24_h": "1", **dict(zip(names, values))}
    return json.dumps({"channel": "ticker", "timestamp": "2026-09-30T02:39:53.78865513Z",
                       "sequence_num": 7, "events": [{"type": "update", "tickers": [ticker]}]})


@settings(max_examples=300, deadline=None)
@given(values=st.lists(decimal_text, min_size=6, max_size=6))
def test_decimal_strings_round_like_float(values):
    out = CoinbaseCollector().parse(frame(values), 1)
    assert out.kind == DATA
    rec = out.records[0]
    got = (rec["price"], rec["volume_24h"], rec["bid"], rec["bid_size"], rec["ask"], rec["ask_size"])
    assert [g.hex() for g in got] == [float(v).hex() for v in values]
    expected_ns = int(np.datetime64("2026-09-30T02:39:53.788655130", "ns").astype(np.int64))
    assert rec["timestamp"] == expected_ns and rec["sequence"] == 7
