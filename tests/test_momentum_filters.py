"""momentum_filters kernels against TA-Lib (its conventions) and a plain Kalman loop."""
import numpy as np
import pyarrow as pa
import pytest
import talib
from hypothesis import given, settings, strategies as st

from kernel_testing import (
    assert_by_equivalent, assert_matches, assert_split_invariant, market_table, scatter,
    to_numpy, valid_mask,
)
from sabot.fintech import (
    ATR, EMA, MACD, OBV, RSI, SMA, BollingerBands, DonchianChannel, Kalman1D, StochasticOsc,
    atr, bollinger_bands, donchian_channel, ema, kalman_1d, macd, obv, rsi, sma, stochastic_osc,
)

SCALES = [1.0, 1e-6, 1e6]


def valid(t, *names):
    mask = valid_mask(*[t[n] for n in names])
    return mask, [to_numpy(t[n])[mask] for n in names]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("period", [2, 10, 30])
def test_ema_period_matches_talib(scale, period):
    t = market_table(2000, seed=21, scale=scale)
    mask, (p,) = valid(t, "price")
    assert_matches(ema(t, period=period)["ema"], scatter(mask, talib.EMA(p, period)), name="ema")


def test_ema_alpha_is_pandas_adjust_false():
    import pandas as pd
    t = market_table(1000, seed=22)
    mask, (p,) = valid(t, "price")
    ref = pd.Series(p).ewm(alpha=0.1, adjust=False).mean().to_numpy()
    assert_matches(ema(t)["ema"], scatter(mask, ref), name="ema default alpha 0.1")


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("window", [1, 5, 20, 200])
def test_sma_matches_talib(scale, window):
    t = market_table(2000, seed=23, scale=scale)
    mask, (p,) = valid(t, "price")
    assert_matches(sma(t, window=window)["sma"], scatter(mask, talib.SMA(p, window)), name="sma")


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("fast,slow,signal", [(12, 26, 9), (3, 10, 4), (26, 12, 9)])
def test_macd_matches_talib(scale, fast, slow, signal):
    t = market_table(2000, seed=24, scale=scale)
    mask, (p,) = valid(t, "price")
    out = macd(t, fast_period=fast, slow_period=slow, signal_period=signal)
    ref = talib.MACD(p, fast, slow, signal)
    # the MACD line is a difference of two EMAs of the price: rounding is relative to the price
    atol = 1e-12 * np.nanmax(np.abs(p))
    for name, r in zip(("macd", "macd_signal", "macd_hist"), ref):
        assert_matches(out[name], scatter(mask, r), atol=atol, name=name)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("period", [2, 14, 50])
def test_rsi_matches_talib(scale, period):
    t = market_table(2000, seed=25, scale=scale)
    mask, (p,) = valid(t, "price")
    assert_matches(rsi(t, period=period)["rsi"], scatter(mask, talib.RSI(p, period)),
                   rtol=1e-9, atol=1e-9, name="rsi")


def test_rsi_is_zero_without_movement():
    b = pa.record_batch({"price": [5.0] * 20})
    assert rsi(b, period=14)["rsi"].to_pylist()[14:] == [0.0] * 6


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("window,k", [(20, 2.0), (5, 1.5)])
def test_bollinger_matches_talib(scale, window, k):
    t = market_table(2000, seed=26, scale=scale)
    mask, (p,) = valid(t, "price")
    upper, mid, lower = talib.BBANDS(p, window, k, k, 0)
    out = bollinger_bands(t, window=window, k=k)
    for name, r in (("bb_upper", upper), ("bb_mid", mid), ("bb_lower", lower)):
        assert_matches(out[name], scatter(mask, r), name=name)


def test_bollinger_std_is_population_std_of_window():
    t = market_table(800, seed=27)
    mask, (p,) = valid(t, "price")
    w = np.lib.stride_tricks.sliding_window_view(p, 20)
    width = 2.0 * w.std(axis=1, ddof=0)
    out = bollinger_bands(t)
    got = to_numpy(out["bb_upper"])[mask][19:] - to_numpy(out["bb_mid"])[mask][19:]
    np.testing.assert_allclose(got, width, rtol=1e-6, atol=1e-12 * p.max())


@pytest.mark.parametrize("scale", SCALES)
def test_donchian_matches_talib_max_min(scale):
    t = market_table(2000, seed=28, scale=scale)
    mask, (h, l) = valid(t, "high", "low")
    out = donchian_channel(t, window=20, high_column="high", low_column="low")
    hi, lo = talib.MAX(h, 20), talib.MIN(l, 20)
    assert_matches(out["donchian_high"], scatter(mask, hi), name="high")
    assert_matches(out["donchian_low"], scatter(mask, lo), name="low")
    assert_matches(out["donchian_mid"], scatter(mask, (hi + lo) / 2), name="mid")
    mask, (p,) = valid(t, "price")
    single = donchian_channel(t, window=7)
    assert_matches(single["donchian_high"], scatter(mask, talib.MAX(p, 7)), name="price max")


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("k,d", [(14, 3), (5, 1), (3, 5)])
def test_stochastic_matches_talib_stochf(scale, k, d):
    t = market_table(2000, seed=29, scale=scale)
    mask, (h, l, c) = valid(t, "high", "low", "price")
    fk, fd = talib.STOCHF(h, l, c, k, d, 0)
    out = stochastic_osc(t, k_window=k, d_window=d)
    assert_matches(out["stoch_k"], scatter(mask, fk), rtol=1e-9, atol=1e-9, name="stoch_k")
    assert_matches(out["stoch_d"], scatter(mask, fd), rtol=1e-9, atol=1e-9, name="stoch_d")


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("period", [1, 14, 30])
def test_atr_matches_talib(scale, period):
    t = market_table(2000, seed=30, scale=scale)
    mask, (h, l, c) = valid(t, "high", "low", "price")
    ref = talib.ATR(h, l, c, period)
    if period == 1:  # TA-Lib returns TRANGE for period 1, whose first row is undefined
        ref[0] = np.nan
    assert_matches(atr(t, period=period)["atr"], scatter(mask, ref), name="atr")


def test_obv_matches_talib():
    t = market_table(2000, seed=31)
    mask, (p, v) = valid(t, "price", "volume")
    assert_matches(obv(t)["obv"], scatter(mask, talib.OBV(p, v)), rtol=1e-12, name="obv")


def test_kalman_matches_plain_loop():
    t = market_table(2000, seed=32)
    mask, (z,) = valid(t, "price")
    q, r = 0.01, 0.5
    est, P, ref = z[0], 1.0, [z[0]]
    for obs in z[1:]:
        P_prior = P + q
        K = P_prior / (P_prior + r)
        est = est + K * (obs - est)
        P = (1 - K) * P_prior
        ref.append(est)
    assert_matches(kalman_1d(t, q=q, r=r)["kalman"], scatter(mask, np.array(ref)), name="kalman")


FACTORIES = {
    "ema_period": (lambda by=None: EMA(period=5, by=by), ["ema"]),
    "ema_alpha": (lambda by=None: EMA(alpha=0.3, by=by), ["ema"]),
    "sma": (lambda by=None: SMA(window=4, by=by), ["sma"]),
    "macd": (lambda by=None: MACD(fast_period=3, slow_period=6, signal_period=3, by=by),
             ["macd", "macd_signal", "macd_hist"]),
    "rsi": (lambda by=None: RSI(period=5, by=by), ["rsi"]),
    "bollinger": (lambda by=None: BollingerBands(window=5, by=by),
                  ["bb_mid", "bb_upper", "bb_lower"]),
    "kalman": (lambda by=None: Kalman1D(by=by), ["kalman"]),
    "donchian": (lambda by=None: DonchianChannel(window=4, high_column="high",
                                                 low_column="low", by=by),
                 ["donchian_high", "donchian_low", "donchian_mid"]),
    "stochastic": (lambda by=None: StochasticOsc(4, 3, by=by), ["stoch_k", "stoch_d"]),
    "atr": (lambda by=None: ATR(4, by=by), ["atr"]),
    "obv": (lambda by=None: OBV(by=by), ["obv"]),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(0, 300), max_size=6), keyed=st.booleans())
def test_split_invariance(name, cuts, keyed):
    make, outputs = FACTORIES[name]
    assert_split_invariant(lambda: make("symbol" if keyed else None), market_table(300, seed=33),
                           cuts, outputs)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_by_symbol_equals_each_symbol_alone(name):
    make, outputs = FACTORIES[name]
    assert_by_equivalent(lambda: make("symbol"), lambda: make(None), market_table(1500, seed=34),
                         outputs)


def test_param_errors():
    with pytest.raises(ValueError, match="alpha or period"):
        EMA(alpha=0.1, period=3)
    with pytest.raises(ValueError, match="period"):
        EMA(period=0)
    with pytest.raises(ValueError, match="window"):
        SMA(window=0)
    with pytest.raises(ValueError, match="signal"):
        MACD(signal_period=0)
    with pytest.raises(ValueError, match="both high_column and low_column"):
        DonchianChannel(high_column="high")
    with pytest.raises(KeyError, match="'high'"):
        atr(pa.record_batch({"price": [1.0]}))
