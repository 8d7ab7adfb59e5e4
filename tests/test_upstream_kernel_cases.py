"""Thirteen everyday kernel calls as researchers write them: build a batch from numpy, call the
function form, read the output column with ``.to_numpy()``.

Warm-up rows have no value; a plain ``.to_numpy()`` on a column with nulls raises, so the calls
whose outputs start with warm-up rows run inside ``missing("nan")``, which makes those rows NaN.
Random inputs come from fixed generators, so every run sees the same data."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from sabot.fintech import (bipower_var, cusum, ewma, funding_apr, historical_var, l1_imbalance,
                           log_returns, microprice, midprice, missing, realized_var,
                           rolling_zscore, triangular_arbitrage, vwap)


def batch_of(**columns: np.ndarray) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(v) for v in columns.values()],
                                      names=list(columns))


# -- online statistics -------------------------------------------------------------------------
def test_log_returns():
    prices = np.array([100.0, 102.0, 101.0, 103.0, 102.5])
    with missing("nan"):
        out = log_returns(batch_of(price=prices), "price")
    assert "log_return" in out.schema.names and out.num_rows == len(prices)
    returns = out.column("log_return").to_numpy()
    assert np.isnan(returns[0])                           # no previous price
    np.testing.assert_allclose(returns[1:], np.log(prices[1:] / prices[:-1]), rtol=1e-12)


def test_ewma():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    out = ewma(batch_of(value=values), alpha=0.5)
    assert "ewma" in out.schema.names
    smoothed = out.column("ewma").to_numpy()
    assert smoothed[0] == 1.0                             # starts at the first value
    assert 3.0 < smoothed[-1] < 5.0                       # lags, but catches up
    assert np.all(np.diff(smoothed) > 0)


def test_rolling_zscore():
    rng = np.random.default_rng(11)
    values = np.concatenate([rng.normal(0, 1, 100), [10.0], rng.normal(0, 1, 50)])
    with missing("nan"):
        out = rolling_zscore(batch_of(value=values), window=20)
    assert "zscore" in out.schema.names
    z = out.column("zscore").to_numpy()
    assert np.isnan(z[:19]).all()                         # warm-up: fewer than 20 values
    assert z[100] > 3.0                                   # the outlier stands out


# -- microstructure ----------------------------------------------------------------------------
def test_midprice():
    bid = np.array([99.5, 99.6, 99.7])
    ask = np.array([100.5, 100.6, 100.7])
    out = midprice(batch_of(bid=bid, ask=ask))
    assert "midprice" in out.schema.names
    np.testing.assert_array_almost_equal(out.column("midprice").to_numpy(), (bid + ask) / 2)


def test_microprice():
    bid = np.array([99.5, 99.6])
    ask = np.array([100.5, 100.6])
    out = microprice(batch_of(bid=bid, ask=ask, bid_size=np.array([1000.0, 2000.0]),
                              ask_size=np.array([1500.0, 1000.0])))
    assert "microprice" in out.schema.names
    micro = out.column("microprice").to_numpy()
    assert np.all(micro > bid) and np.all(micro < ask)


def test_l1_imbalance():
    out = l1_imbalance(batch_of(bid_size=np.array([1000.0, 2000.0, 1000.0]),
                                ask_size=np.array([1500.0, 1000.0, 1000.0])))
    assert "l1_imbalance" in out.schema.names
    imbalance = out.column("l1_imbalance").to_numpy()
    assert np.all((imbalance >= -1.0) & (imbalance <= 1.0))
    assert imbalance[0] < 0 < imbalance[1] and imbalance[2] == 0.0


# -- volatility --------------------------------------------------------------------------------
def test_realized_var():
    returns = np.random.default_rng(12).normal(0, 0.01, 100)
    with missing("nan"):
        out = realized_var(batch_of(log_return=returns), "log_return", window=20)
    assert "realized_var" in out.schema.names
    rv = out.column("realized_var").to_numpy()
    assert np.all(rv[20:] > 0)
    np.testing.assert_allclose(rv[20], np.sum(returns[1:21] ** 2), rtol=1e-9)


def test_bipower_var():
    returns = np.random.default_rng(13).normal(0, 0.01, 100)
    with missing("nan"):
        out = bipower_var(batch_of(log_return=returns), "log_return", window=20)
    assert "bipower_var" in out.schema.names
    assert np.all(out.column("bipower_var").to_numpy()[20:] >= 0)


# -- FX and crypto -----------------------------------------------------------------------------
def test_triangular_arbitrage():
    n = 10
    spot_ab = np.full(n, 1.10)
    spot_bc = np.full(n, 0.90)
    out = triangular_arbitrage(batch_of(spot_ab=spot_ab, spot_bc=spot_bc,
                                        spot_ac=spot_ab * spot_bc * 1.01,   # 1% rich
                                        fees_bps=np.full(n, 2.0)))
    assert {"arb_edge_bps", "arb_route"} <= set(out.schema.names)
    assert np.all(out.column("arb_edge_bps").to_numpy() > 0)


def test_funding_apr():
    rate = np.array([0.0001, -0.0001, 0.00005])
    out = funding_apr(batch_of(funding_rate=rate), funding_freq_hours=8.0)
    assert "funding_apr" in out.schema.names
    np.testing.assert_array_almost_equal(out.column("funding_apr").to_numpy(),
                                         rate * (8760.0 / 8.0))


# -- execution and risk ------------------------------------------------------------------------
def test_vwap():
    price = np.array([100.0, 101.0, 102.0, 103.0])
    volume = np.array([1000.0, 2000.0, 1500.0, 1000.0])
    out = vwap(batch_of(price=price, volume=volume), "price", "volume")
    assert "vwap" in out.schema.names
    np.testing.assert_allclose(out.column("vwap").to_numpy(),
                               np.cumsum(price * volume) / np.cumsum(volume))


def test_cusum():
    rng = np.random.default_rng(14)
    values = np.concatenate([rng.normal(0, 1, 50), rng.normal(2, 1, 50)])    # mean shift at 50
    out = cusum(batch_of(value=values), "value", k=0.5, h=5.0)
    assert {"cusum_stat", "cusum_alarm"} <= set(out.schema.names)
    alarms = out.column("cusum_alarm").to_numpy(zero_copy_only=False)    # booleans: bit-packed
    assert np.any(alarms[40:60])


def test_historical_var():
    rng = np.random.default_rng(15)
    pnl = np.concatenate([rng.normal(0, 1, 200), [-5.0, -6.0]])             # tail events last
    with missing("nan"):
        out = historical_var(batch_of(pnl=pnl), "pnl", alpha=0.05, window=100)
    assert "var" in out.schema.names
    var = out.column("var").to_numpy()
    assert np.isnan(var[:99]).all()
    assert np.all(var[100:] >= 0)
