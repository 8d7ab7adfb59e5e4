"""cross_exchange_spread and arbitrage_opportunities: numpy formula, hand cases, brute force."""
import itertools

import numpy as np
import pyarrow as pa
import pytest

from kernel_testing import assert_matches, to_numpy
from sabot.fintech import (
    ArbitrageOpportunities, arbitrage_opportunities, cross_exchange_spread,
)

VENUE_COLUMNS = ["coinbase_midprice", "kraken_midprice", "binance_midprice"]


def venue_table(n=2000, seed=0, venues=VENUE_COLUMNS):
    rng = np.random.default_rng(seed)
    base = 60000.0 * np.exp(np.cumsum(rng.normal(0, 5e-4, n)))
    arrays = {}
    for name in venues:
        p = base * (1 + rng.normal(0, 8e-4, n))
        p[rng.uniform(size=n) < 0.02] = np.nan
        p[rng.uniform(size=n) < 0.01] = 0.0           # non-positive: venue absent
        arrays[name] = pa.array(p, mask=rng.uniform(size=n) < 0.05)
    return pa.table(arrays)


def test_cross_exchange_spread_matches_numpy():
    t = venue_table(seed=1)
    a, b = to_numpy(t["coinbase_midprice"]), to_numpy(t["kraken_midprice"])
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = (a - b) / a * 1e4
    ref[~((a > 0) & (b > 0))] = np.nan
    out = cross_exchange_spread(t, "coinbase_midprice", "kraken_midprice")
    assert_matches(out["spread_bps"], ref, name="spread_bps")


def _row(**prices):
    return pa.record_batch({f"{k}_midprice": [v] for k, v in prices.items()})


def _result(out):
    return {k: out[k][0].as_py() for k in
            ("buy_venue", "sell_venue", "gross_bps", "net_bps", "is_opportunity")}


def test_hand_case_uniform_fees():
    b = _row(coinbase=100.0, kraken=100.2, binance=99.9)
    gross = (100.2 - 99.9) / 99.9 * 1e4                 # buy binance, sell kraken: 30.03 bps
    r = _result(arbitrage_opportunities(b, VENUE_COLUMNS))
    assert (r["buy_venue"], r["sell_venue"]) == ("binance", "kraken")
    assert r["gross_bps"] == pytest.approx(gross, rel=1e-12)
    assert r["net_bps"] == pytest.approx(gross, rel=1e-12)
    assert r["is_opportunity"] is True
    r = _result(arbitrage_opportunities(b, VENUE_COLUMNS, fees_bps=10.0))
    assert r["net_bps"] == pytest.approx(gross - 20.0, rel=1e-12)
    assert r["is_opportunity"] is True
    # a minimum edge above the net edge: no opportunity
    r = _result(arbitrage_opportunities(b, VENUE_COLUMNS, fees_bps=10.0, min_edge_bps=15.0))
    assert r["is_opportunity"] is False
    # fees larger than half the spread make the opportunity disappear
    r = _result(arbitrage_opportunities(b, VENUE_COLUMNS, fees_bps=16.0))
    assert r["net_bps"] == pytest.approx(gross - 32.0, rel=1e-12)
    assert r["net_bps"] < 0
    assert r["is_opportunity"] is False
    # a negative minimum edge never flags a losing trade
    r = _result(arbitrage_opportunities(b, VENUE_COLUMNS, fees_bps=16.0, min_edge_bps=-50.0))
    assert r["is_opportunity"] is False


def test_hand_case_per_venue_fees_pick_the_best_net_pair():
    b = _row(coinbase=100.0, kraken=100.2, binance=99.9)
    fees = {"coinbase": 1.0, "kraken": 1.0, "binance": 25.0}
    r = _result(arbitrage_opportunities(b, VENUE_COLUMNS, fees_bps=fees))
    # binance->kraken: 30.03 - 26 = 4.03; coinbase->kraken: 20 - 2 = 18 (better net)
    assert (r["buy_venue"], r["sell_venue"]) == ("coinbase", "kraken")
    assert r["gross_bps"] == pytest.approx(0.2 / 100.0 * 1e4, rel=1e-12)
    assert r["net_bps"] == pytest.approx(18.0, rel=1e-9)
    assert r["is_opportunity"] is True


def test_missing_venues():
    b = pa.record_batch({
        "coinbase_midprice": pa.array([100.0, None, np.nan, 100.0], from_pandas=False),
        "kraken_midprice": pa.array([101.0, 101.0, None, None]),
        "binance_midprice": pa.array([None, 99.0, 99.0, -1.0]),
    })
    out = arbitrage_opportunities(b, VENUE_COLUMNS)
    assert out["buy_venue"].to_pylist() == ["coinbase", "binance", None, None]
    assert out["sell_venue"].to_pylist() == ["kraken", "kraken", None, None]
    assert out["is_opportunity"].to_pylist() == [True, True, None, None]
    assert out["net_bps"].to_pylist()[:2] == pytest.approx([100.0, 2.0 / 99.0 * 1e4], rel=1e-12)


def _brute_force(prices, fees, min_edge):
    """Every ordered pair of present venues; keep the first with the largest net edge."""
    best = None
    present = [k for k, p in enumerate(prices) if p is not None and p == p and p > 0]
    if len(present) < 2:
        return None
    for b, s in itertools.product(present, present):
        if b == s:
            continue
        gross = (prices[s] - prices[b]) / prices[b] * 10000.0
        net = gross - fees[b] - fees[s]
        if best is None or net > best[3]:
            best = (b, s, gross, net)
    b, s, gross, net = best
    return b, s, gross, net, bool(net >= min_edge and net > 0)


@pytest.mark.parametrize("fees", [0.0, 4.0, {"coinbase": 6.0, "kraken": 2.6, "binance": 1.0,
                                             "okx": 8.0}])
def test_matches_brute_force(fees):
    cols = VENUE_COLUMNS + ["okx_midprice"]
    t = venue_table(1500, seed=2, venues=cols)
    out = arbitrage_opportunities(t, cols, fees_bps=fees, min_edge_bps=3.0)
    venues = ["coinbase", "kraken", "binance", "okx"]
    fee_list = [fees[v] for v in venues] if isinstance(fees, dict) else [fees] * 4
    rows = t.to_pylist()
    got = {k: out[k].to_pylist() for k in
           ("buy_venue", "sell_venue", "gross_bps", "net_bps", "is_opportunity")}
    n_opp = 0
    for i, row in enumerate(rows):
        ref = _brute_force([row[c] for c in cols], fee_list, 3.0)
        if ref is None:
            assert got["buy_venue"][i] is None and got["net_bps"][i] is None
            assert got["is_opportunity"][i] is None
            continue
        b, s, gross, net, opp = ref
        assert (got["buy_venue"][i], got["sell_venue"][i]) == (venues[b], venues[s]), i
        assert got["gross_bps"][i] == pytest.approx(gross, rel=1e-9, abs=1e-12)
        assert got["net_bps"][i] == pytest.approx(net, rel=1e-9, abs=1e-12)
        assert got["is_opportunity"][i] is opp
        n_opp += opp
    assert 0 < n_opp < len(rows)


def test_venue_names_and_dict_columns():
    b = pa.record_batch({"binance_us_mid": [100.0], "kraken": [100.5], "x": [1.0]})
    out = arbitrage_opportunities(b, ["binance_us_mid", "kraken"])
    assert out["buy_venue"].to_pylist() == ["binance_us"]
    assert out["sell_venue"].to_pylist() == ["kraken"]
    out = arbitrage_opportunities(b, {"BUS": "binance_us_mid", "KR": "kraken"},
                                  fees_bps={"BUS": 1.0, "KR": 1.0})
    assert out["buy_venue"].to_pylist() == ["BUS"]
    assert out["net_bps"].to_pylist() == pytest.approx([48.0], rel=1e-12)
    assert pa.types.is_dictionary(out["buy_venue"].type)
    assert ArbitrageOpportunities(["a_mid", "b_mid"]).venues == ("a", "b")


def test_errors_name_the_problem():
    b = pa.record_batch({"coinbase_mid": [1.0], "kraken_mid": [1.0], "s": ["x"]})
    with pytest.raises(KeyError, match="'nope_mid'.*coinbase_mid"):
        arbitrage_opportunities(b, ["coinbase_mid", "nope_mid"])
    with pytest.raises(TypeError, match="'s'.*string"):
        arbitrage_opportunities(b, ["coinbase_mid", "s"])
    with pytest.raises(ValueError, match="2 to 8 venues"):
        arbitrage_opportunities(b, ["coinbase_mid"])
    with pytest.raises(ValueError, match="'coinbase' appears twice"):
        arbitrage_opportunities(b, ["coinbase_mid", "coinbase_ask"])
    with pytest.raises(KeyError, match="'kraken'"):
        arbitrage_opportunities(b, ["coinbase_mid", "kraken_mid"], fees_bps={"coinbase": 1.0})
    with pytest.raises(ValueError, match="'kraken'.*>= 0"):
        arbitrage_opportunities(b, ["coinbase_mid", "kraken_mid"],
                                fees_bps={"coinbase": 1.0, "kraken": -2.0})
    with pytest.raises(ValueError, match="min_edge_bps"):
        arbitrage_opportunities(b, ["coinbase_mid", "kraken_mid"], min_edge_bps=float("nan"))
    with pytest.raises(TypeError, match="string"):
        arbitrage_opportunities(b, "coinbase_mid")
    with pytest.raises(KeyError, match="'nope'"):
        cross_exchange_spread(b, "coinbase_mid", "nope")


def test_arbitrage_buys_at_ask_and_sells_at_bid():
    """Hand case: A quotes 100.0/100.1, B 100.5/100.6, C 99.0/101.0 (bid/ask), fees A 6, B 16,
    C 10 bps. Best taker pair: buy A's ask 100.1, sell B's bid 100.5:
    gross = 0.4/100.1·1e4 = 39.96 bps, net = 39.96 − 6 − 16 = 17.96 bps."""
    from sabot.fintech import arbitrage_opportunities
    b = pa.record_batch({"a_bid": [100.0, 100.0], "a_ask": [100.1, 100.1],
                         "b_bid": [100.5, 100.05], "b_ask": [100.6, 100.6],
                         "c_bid": [99.0, None], "c_ask": [101.0, 101.0]})
    out = arbitrage_opportunities(b, fees_bps={"a": 6, "b": 16, "c": 10},
                                  ask_columns=["a_ask", "b_ask", "c_ask"],
                                  bid_columns=["a_bid", "b_bid", "c_bid"])
    assert out["buy_venue"].to_pylist() == ["a", "a"]
    assert out["sell_venue"].to_pylist() == ["b", "b"]
    assert out["buy_price"].to_pylist() == [100.1, 100.1]
    assert out["sell_price"].to_pylist() == [100.5, 100.05]
    gross = [(100.5 - 100.1) / 100.1 * 1e4, (100.05 - 100.1) / 100.1 * 1e4]
    assert np.allclose(out["gross_bps"].to_pylist(), gross, rtol=1e-12)
    assert np.allclose(out["net_bps"].to_pylist(), [g - 22 for g in gross], rtol=1e-12)
    assert out["is_opportunity"].to_pylist() == [True, False]
    with pytest.raises(ValueError, match="not both"):
        arbitrage_opportunities(b, ["a_bid", "b_bid"], ask_columns=["a_ask", "b_ask"],
                                bid_columns=["a_bid", "b_bid"])
    with pytest.raises(ValueError, match="differ"):
        arbitrage_opportunities(b, ask_columns=["a_ask", "b_ask"], bid_columns=["a_bid", "c_bid"])


def test_mirror_pairs_with_swapped_fees_tie_to_the_first_venue():
    """Two venues with identical quotes and different fees: buying at either and selling at the
    other costs the same fee sum, so the tie goes to the first buy venue in column order."""
    from sabot.fintech import arbitrage_opportunities
    b = pa.record_batch({"a_bid": [91.0], "a_ask": [101.25], "b_bid": [91.0], "b_ask": [101.25]})
    out = arbitrage_opportunities(b, fees_bps={"a": 1.5067271776555131, "b": 12.0},
                                  ask_columns=["a_ask", "b_ask"], bid_columns=["a_bid", "b_bid"])
    assert (out["buy_venue"].to_pylist(), out["sell_venue"].to_pylist()) == (["a"], ["b"])
