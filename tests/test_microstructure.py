"""microstructure kernels against numpy formulas and plain-Python loops of the definitions."""
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from kernel_testing import (
    assert_by_equivalent, assert_matches, assert_split_invariant, market_table, scatter,
    to_numpy, valid_mask,
)
from sabot.fintech import (
    OFI, VPIN, effective_spread, l1_imbalance, microprice, midprice, ofi, quoted_spread, vpin,
)


def cols(t, *names):
    return [to_numpy(t[n]) for n in names]


@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e6])
def test_elementwise_kernels_match_numpy(scale):
    t = market_table(3000, seed=11, scale=scale)
    b, a, B, A = cols(t, "bid", "ask", "bid_size", "ask_size")
    with np.errstate(invalid="ignore", divide="ignore"):
        assert_matches(midprice(t)["midprice"], (b + a) / 2, name="midprice")
        assert_matches(microprice(t)["microprice"], (b * A + a * B) / (A + B), name="micro")
        assert_matches(quoted_spread(t)["quoted_spread"], (a - b) / ((a + b) / 2) * 1e4,
                       rtol=1e-8, name="quoted_spread")  # a - b cancels: ~1e-12 of the level
        assert_matches(l1_imbalance(t)["l1_imbalance"], (B - A) / (B + A), name="imbalance")
        e = t.append_column("exec_price", t["price"]).append_column("midprice", t["bid"])
        p, m = cols(e, "exec_price", "midprice")
        assert_matches(effective_spread(e)["effective_spread"], 2 * np.abs(p - m) / m * 1e4,
                       rtol=1e-8, name="effective_spread")


def test_zero_denominators_are_null():
    b = pa.record_batch({"bid": [1.0, 1.0], "ask": [2.0, 2.0], "bid_size": [0.0, 1.0],
                         "ask_size": [0.0, 3.0]})
    assert l1_imbalance(b)["l1_imbalance"].to_pylist() == [None, -0.5]
    assert microprice(b)["microprice"].to_pylist() == [None, (1 * 3 + 2 * 1) / 4]


def test_upstream_midprice_call_form_keeps_columns():
    b = pa.record_batch({"symbol": ["BTC/USD"], "bid": [100.0], "ask": [101.0]})
    out = midprice(b)
    assert out.schema.names == ["symbol", "bid", "ask", "midprice"]
    assert out["midprice"].to_pylist() == [100.5]


def ofi_reference(b, a, B, A):
    """The Cont–Kukanov–Stoikov e_t, written as a plain loop over valid rows."""
    out = [np.nan]
    for t in range(1, len(b)):
        e = (B[t] if b[t] >= b[t - 1] else 0.0) - (B[t - 1] if b[t] <= b[t - 1] else 0.0) \
            - (A[t] if a[t] <= a[t - 1] else 0.0) + (A[t - 1] if a[t] >= a[t - 1] else 0.0)
        out.append(e)
    return np.array(out)


def test_ofi_matches_definition():
    t = market_table(2000, seed=12)
    b, a, B, A = cols(t, "bid", "ask", "bid_size", "ask_size")
    # round prices so that equal bids/asks (the ≥/≤ ties) happen often
    t = t.set_column(t.schema.get_field_index("bid"), "bid", pa.array(np.round(b, 0)))
    t = t.set_column(t.schema.get_field_index("ask"), "ask", pa.array(np.round(a, 0)))
    b, a = np.round(b, 0), np.round(a, 0)
    mask = valid_mask(t["bid"], t["ask"], t["bid_size"], t["ask_size"])
    ref = ofi_reference(b[mask], a[mask], B[mask], A[mask])
    assert_matches(ofi(t)["ofi"], scatter(mask, ref), name="ofi")


def vpin_reference(volumes, sides, V, n):
    """Easley–López de Prado–O'Hara: fill buckets of V in trade order, splitting trades."""
    buckets, buy, sell, out = [], 0.0, 0.0, []
    for v, s in zip(volumes, sides):
        while v > 0:
            take = min(v, V - (buy + sell))
            if s > 0:
                buy += take
            else:
                sell += take
            v -= take
            if buy + sell >= V - 1e-9 * V:
                buckets.append(abs(buy - sell))
                buy = sell = 0.0
        out.append(sum(buckets[-n:]) / (n * V) if len(buckets) >= n else np.nan)
    return np.array(out)


@pytest.mark.parametrize("V,n", [(25.0, 5), (3.0, 10), (500.0, 2)])
def test_vpin_matches_definition(V, n):
    t = market_table(2000, seed=13)
    mask = valid_mask(t["volume"], t["side"])
    v, s = cols(t, "volume", "side")
    ref = vpin_reference(v[mask], s[mask], V, n)
    assert_matches(vpin(t, bucket_vol=V, n_buckets=n)["vpin"], scatter(mask, ref), rtol=1e-9,
                   name="vpin")


def test_vpin_accepts_buy_sell_strings():
    vols = [6.0, 6.0, 3.0, 5.0]
    numeric = vpin(pa.record_batch({"volume": vols, "side": [1, -1, 1, 1]}), 4.0, 2)
    text = vpin(pa.record_batch({"volume": vols, "side": ["buy", "SELL", "Buy", "buy"]}), 4.0, 2)
    assert numeric["vpin"].to_pylist() == text["vpin"].to_pylist()
    # buckets: [4 buy], [2 buy + 2 sell], [4 sell], [3 buy + 1 buy], ... hand-computed:
    assert numeric["vpin"].to_pylist() == [None, (4 + 0) / 8, (4 + 0) / 8, (4 + 4) / 8]
    with pytest.raises(ValueError, match="'hold'"):
        vpin(pa.record_batch({"volume": [1.0], "side": ["hold"]}))


FACTORIES = {
    "ofi": (lambda by=None: OFI(by=by), ["ofi"]),
    "vpin": (lambda by=None: VPIN(30.0, 4, by=by), ["vpin"]),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(0, 400), max_size=6), keyed=st.booleans())
def test_split_invariance(name, cuts, keyed):
    make, outputs = FACTORIES[name]
    assert_split_invariant(lambda: make("symbol" if keyed else None), market_table(400, seed=14),
                           cuts, outputs)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_by_symbol_equals_each_symbol_alone(name):
    make, outputs = FACTORIES[name]
    assert_by_equivalent(lambda: make("symbol"), lambda: make(None), market_table(1500, seed=15),
                         outputs)


def test_errors():
    with pytest.raises(KeyError, match="'bid_size'.*bid, ask"):
        microprice(pa.record_batch({"bid": [1.0], "ask": [2.0]}))
    b = pa.record_batch({"bid": [1.0], "ask": ["x"]})
    with pytest.raises(TypeError, match="'ask'.*string"):
        midprice(b)
    with pytest.raises(ValueError, match="bucket_vol"):
        VPIN(bucket_vol=0)
    with pytest.raises(ValueError, match="n_buckets"):
        VPIN(n_buckets=0)
