"""volatility kernels against numpy/pandas references, split invariance and by= equivalence."""
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from kernel_testing import (
    assert_state_round_trip,
    assert_by_equivalent, assert_matches, assert_split_invariant, market_table, scatter,
    to_numpy, valid_mask,
)
from sabot.fintech import (
    BipowerVar, GarmanKlassVol, MedRV, ParkinsonVol, RealizedVar, RiskMetricsVol,
    bipower_var, garman_klass_vol, medrv, parkinson_vol, realized_var, riskmetrics_vol,
)

sliding = np.lib.stride_tricks.sliding_window_view


def returns_table(n=2000, seed=0, scale=1.0):
    """market_table plus ``log_return`` = diff of log price (nulls, NaN, runs of exact 0)."""
    t = market_table(n, seed=seed)
    p = to_numpy(t["price"])
    r = np.concatenate([[np.nan], np.diff(np.log(p))]) * scale
    null = np.isnan(r) & (np.arange(n) % 2 == 0)      # half the gaps null, half NaN
    return t.append_column("log_return", pa.array(r, mask=null))


def rolling_ref(values, mask, window, fn):
    """``fn`` applied to every full window of the valid values, scattered back (warm-up NaN)."""
    v = values[mask]
    out = np.full(v.size, np.nan)
    if v.size >= window:
        out[window - 1:] = [fn(w) for w in sliding(v, window)]
    return scatter(mask, out)


@pytest.mark.parametrize("window", [2, 20, 64])
@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e3])
def test_realized_var_matches_numpy(window, scale):
    t = returns_table(seed=1, scale=scale)
    r, mask = to_numpy(t["log_return"]), valid_mask(t["log_return"])
    ref = rolling_ref(r, mask, window, lambda w: np.sum(w ** 2))
    out = realized_var(t, window=window)["realized_var"]
    assert_matches(out, ref, name="realized_var")
    assert (to_numpy(out)[ref == 0.0] == 0.0).all()   # windows of flat prices are exactly 0


@pytest.mark.parametrize("window", [2, 20, 64])
def test_bipower_var_matches_numpy(window):
    t = returns_table(seed=2)
    r, mask = to_numpy(t["log_return"]), valid_mask(t["log_return"])
    ref = rolling_ref(r, mask, window,
                      lambda w: math.pi / 2 * np.sum(np.abs(w[1:]) * np.abs(w[:-1])))
    assert_matches(bipower_var(t, window=window)["bipower_var"], ref, name="bipower_var")


def medrv_reference(w):
    """highfrequency rMedRVar on one window of N returns."""
    n = w.size
    a = np.abs(w)
    med = np.median(np.stack([a[:-2], a[1:-1], a[2:]]), axis=0)
    return math.pi / (6 - 4 * math.sqrt(3) + math.pi) * n / (n - 2) * np.sum(med ** 2)


@pytest.mark.parametrize("window", [3, 20, 64])
def test_medrv_matches_definition(window):
    t = returns_table(seed=3)
    r, mask = to_numpy(t["log_return"]), valid_mask(t["log_return"])
    ref = rolling_ref(r, mask, window, medrv_reference)
    assert_matches(medrv(t, window=window)["medrv"], ref, name="medrv")


def test_medrv_small_case_by_hand():
    # window 3, returns 1, -3, 2: one triple, median(1, 3, 2) = 2 -> c * 3/1 * 4
    b = pa.record_batch({"log_return": [1.0, -3.0, 2.0, 0.0]})
    c = math.pi / (6 - 4 * math.sqrt(3) + math.pi)
    got = medrv(b, window=3)["medrv"].to_pylist()
    assert got[:2] == [None, None]
    assert got[2] == pytest.approx(c * 3 * 4, rel=1e-15)
    assert got[3] == pytest.approx(c * 3 * 4, rel=1e-15)      # median(3, 2, 0) = 2


@pytest.mark.parametrize("lam", [0.94, 0.5, 0.0])
def test_riskmetrics_vol_matches_pandas_ewm(lam):
    t = returns_table(seed=4)
    r, mask = to_numpy(t["log_return"]), valid_mask(t["log_return"])
    ref = np.sqrt(pd.Series(r[mask] ** 2).ewm(alpha=1 - lam, adjust=False).mean().to_numpy())
    out = riskmetrics_vol(t, lambda_param=lam)["riskmetrics_vol"]
    assert_matches(out, scatter(mask, ref), name="riskmetrics_vol")
    first = np.flatnonzero(mask)[0]
    assert to_numpy(out)[first] == abs(r[first])     # sigma^2_0 = r_0^2, no warm-up


@pytest.mark.parametrize("window", [1, 20, 64])
@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e6])
def test_parkinson_vol_matches_numpy(window, scale):
    t = market_table(2000, seed=5, scale=scale)
    h, l = to_numpy(t["high"]), to_numpy(t["low"])
    mask = valid_mask(t["high"], t["low"])
    hl = np.full(h.size, np.nan)
    hl[mask] = np.log(h[mask] / l[mask])
    ref = rolling_ref(hl, mask, window,
                      lambda w: np.sqrt(np.sum(w ** 2) / (4 * np.log(2) * window)))
    assert_matches(parkinson_vol(t, window=window)["parkinson_vol"], ref, name="parkinson")


@pytest.mark.parametrize("window", [1, 20, 64])
def test_garman_klass_vol_matches_numpy(window):
    t = market_table(2000, seed=6)
    o, h, l, c = (to_numpy(t[k]) for k in ("open", "high", "low", "close"))
    mask = valid_mask(t["open"], t["high"], t["low"], t["close"])
    term = np.full(h.size, np.nan)
    term[mask] = (0.5 * np.log(h[mask] / l[mask]) ** 2
                  - (2 * np.log(2) - 1) * np.log(c[mask] / o[mask]) ** 2)
    ref = rolling_ref(term, mask, window, lambda w: np.sqrt(np.mean(w)))
    assert_matches(garman_klass_vol(t, window=window)["garman_klass_vol"], ref, name="gk")


def test_non_positive_prices_are_missing():
    b = pa.record_batch({"high": [2.0, 0.0, 3.0, 4.0], "low": [1.0, 1.0, -1.0, 2.0]})
    got = parkinson_vol(b, window=2)["parkinson_vol"].to_pylist()
    assert got[:3] == [None, None, None]
    assert got[3] == pytest.approx(math.sqrt(2 * math.log(2) ** 2 / (4 * math.log(2) * 2)))
    bars = pa.record_batch({"open": [1.0, 1.0], "high": [2.0, 1.0], "low": [1.0, 1.0],
                            "close": [1.0, 2.0]})        # second bar inconsistent: C > H
    assert garman_klass_vol(bars, window=1)["garman_klass_vol"].to_pylist() == [
        pytest.approx(math.sqrt(0.5) * math.log(2)), None]


def test_null_and_nan_rows_do_not_enter_the_window():
    b = pa.record_batch({"log_return": pa.array([1.0, None, 2.0, float("nan"), 3.0])})
    assert realized_var(b, window=2)["realized_var"].to_pylist() == [None, None, 5.0, None, 13.0]


FACTORIES = {
    "realized_var": (lambda by=None: RealizedVar(window=5, by=by), ["realized_var"]),
    "bipower_var": (lambda by=None: BipowerVar(window=5, by=by), ["bipower_var"]),
    "medrv": (lambda by=None: MedRV(window=5, by=by), ["medrv"]),
    "riskmetrics_vol": (lambda by=None: RiskMetricsVol(lambda_param=0.9, by=by),
                        ["riskmetrics_vol"]),
    "parkinson_vol": (lambda by=None: ParkinsonVol(window=5, by=by), ["parkinson_vol"]),
    "garman_klass_vol": (lambda by=None: GarmanKlassVol(window=5, by=by), ["garman_klass_vol"]),
}

SPLIT_TABLE = returns_table(300, seed=7)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(0, 300), max_size=6), keyed=st.booleans())
def test_split_invariance(name, cuts, keyed):
    make, outputs = FACTORIES[name]
    by = "symbol" if keyed else None
    assert_split_invariant(lambda: make(by), SPLIT_TABLE, cuts, outputs)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_by_symbol_equals_each_symbol_alone(name):
    make, outputs = FACTORIES[name]
    assert_by_equivalent(lambda: make("symbol"), lambda: make(None), returns_table(1200, seed=8),
                         outputs)


def test_state_dict_round_trip_continues_exactly():
    assert_state_round_trip(lambda: MedRV(window=7, by="symbol"), returns_table(800, seed=9),
                            333, ["medrv"])


def test_function_form_keeps_state_inside_a_scope():
    from sabot.fintech import StateScope
    t = returns_table(400, seed=10)
    scope = StateScope()
    parts = []
    for b in t.to_batches(max_chunksize=64):
        with scope.active():
            parts.append(realized_var(b, window=9, by="symbol"))
    whole = RealizedVar(window=9, by="symbol")(t)
    assert np.array_equal(to_numpy(pa.Table.from_batches(parts)["realized_var"]),
                          to_numpy(whole["realized_var"]), equal_nan=True)


def test_errors_name_the_problem():
    b = pa.record_batch({"log_return": [0.1, 0.2], "s": ["x", "y"], "high": [2.0, 2.0]})
    with pytest.raises(KeyError, match="'nope'.*log_return, s, high"):
        realized_var(b, returns_column="nope")
    with pytest.raises(TypeError, match="'s'.*string"):
        bipower_var(b, returns_column="s")
    with pytest.raises(KeyError, match="'low'"):
        parkinson_vol(b)
    with pytest.raises(KeyError, match="'open'"):
        garman_klass_vol(b)
    with pytest.raises(ValueError, match="window"):
        realized_var(b, window=0)
    with pytest.raises(ValueError, match="window must be >= 2"):
        bipower_var(b, window=1)
    with pytest.raises(ValueError, match="window must be >= 3"):
        medrv(b, window=2)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="lambda_param"):
            riskmetrics_vol(b, lambda_param=bad)
    with pytest.raises(KeyError, match="by column 'sym'"):
        realized_var(b, by="sym")
