"""features_safety kernels against independent references (pandas, numpy, hand loops and
hand-computed cases), split invariance, by= equivalence, null/warm-up rules and errors."""
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings, strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from kernel_testing import (
    assert_state_round_trip,
    assert_by_equivalent, assert_matches, assert_split_invariant, market_table, scatter,
    to_numpy, valid_mask,
)
from sabot.fintech import (
    Autocorr, CircuitBreaker, Diff, Lag, OutlierFlagMAD, RollingKurt, RollingMax, RollingMin,
    RollingSkew, RollingStd, StateScope, StaleQuoteDetector, ThrottleCheck, TickRule,
    autocorr, circuit_breaker, diff, fat_finger_guard, lag, outlier_flag_mad, price_band_guard,
    rolling_kurt, rolling_max, rolling_min, rolling_skew, rolling_std, signed_volume,
    stale_quote_detector, throttle_check, tick_rule,
)

SCALES = [1.0, 1e-6, 1e6]
MS = 1_000_000  # nanoseconds per millisecond


def valid_values(t, column="price"):
    mask = valid_mask(t[column])
    return mask, to_numpy(t[column])[mask]


def warm(window, values):
    """Reference values for full windows, NaN for the ``window - 1`` warm-up rows."""
    return np.concatenate([np.full(window - 1, np.nan), values])


def flags(arr):
    """Python list of a bool output (None for null)."""
    return arr.to_pylist()


# ------------------------------------------------------------------ lag / diff

def hand_lag_per_key(keys, values, k):
    """x_{t-k} within each key, nulls (NaN) kept in the chain; NaN where none."""
    out = np.full(values.shape, np.nan)
    history = {}
    for i, (key, x) in enumerate(zip(keys, values)):
        seen = history.setdefault(key, [])
        if len(seen) >= k:
            out[i] = seen[-k]
        seen.append(x)
    return out


@pytest.mark.parametrize("k", [1, 3, 17])
def test_lag_and_diff_match_hand_loop_per_key(k):
    t = market_table(1500, seed=11)
    keys = t["symbol"].to_pylist()
    x = to_numpy(t["price"])  # nulls and NaN both NaN: they shift through
    ref_lag = hand_lag_per_key(keys, x, k)
    out = diff(lag(t, "price", k=k, by="symbol"), "price", k=k, by="symbol")
    assert_matches(out[f"price_lag{k}"], ref_lag, rtol=0, name="lag")
    assert_matches(out[f"price_diff{k}"], x - ref_lag, rtol=0, name="diff")
    # pandas per-key shift/diff agree as well (independent second reference)
    s = pd.Series(x)
    assert_matches(out[f"price_lag{k}"], s.groupby(keys).shift(k).to_numpy(), rtol=0)
    assert_matches(out[f"price_diff{k}"], s.groupby(keys).diff(k).to_numpy(), rtol=0)


def test_lag_shifts_nulls_through():
    b = pa.record_batch({"x": pa.array([1.0, None, 3.0, float("nan"), 5.0])})
    assert lag(b, "x", lag=1)["x_lag1"].to_pylist() == [None, 1.0, None, 3.0, None]
    assert diff(b, "x", lag=2)["x_diff2"].to_pylist() == [None, None, 2.0, None, 2.0]


# ------------------------------------------------------------------ rolling min / max

@pytest.mark.parametrize("window", [1, 2, 20, 300])
def test_rolling_min_max_match_pandas(window):
    t = market_table(3000, seed=12)
    mask, v = valid_values(t)
    s = pd.Series(v).rolling(window)
    assert_matches(rolling_min(t, "price", window=window)["rolling_min"],
                   scatter(mask, s.min().to_numpy()), rtol=0, name="rolling_min")
    assert_matches(rolling_max(t, "price", window=window)["rolling_max"],
                   scatter(mask, s.max().to_numpy()), rtol=0, name="rolling_max")


# ------------------------------------------------------------------ rolling moments

def central_sums(v, window):
    """Deviations from the window mean by the corrected two-pass algorithm (Chan, Golub &
    LeVeque 1983): centre, then centre again so the rounding of the mean (ulp of the level)
    does not leak into odd moments when the spread is tiny next to the level."""
    w = sliding_window_view(v, window)
    d = w - w.mean(axis=1, keepdims=True)
    d = d - d.mean(axis=1, keepdims=True)
    const = w.max(axis=1) == w.min(axis=1)
    return w, d, const


@pytest.mark.parametrize("ddof", [0, 1, 5])
@pytest.mark.parametrize("window", [20, 150])
@pytest.mark.parametrize("scale", SCALES)
def test_rolling_std_matches_numpy_two_pass(scale, window, ddof):
    t = market_table(3000, seed=13, scale=scale)
    mask, v = valid_values(t)
    w, d, const = central_sums(v, window)
    std = np.sqrt((d ** 2).sum(axis=1) / (window - ddof))
    std[const] = 0.0  # an exactly constant window has std exactly 0 (pandas too)
    assert_matches(rolling_std(t, "price", window=window, ddof=ddof)["rolling_std"],
                   scatter(mask, warm(window, std)), rtol=1e-9, name="rolling_std")


def skew_kurt_reference(v, window):
    """Bias-corrected skew and excess kurtosis (pandas' formulas) from two-pass sums, with the
    absolute error their cancellation allows: 1e-12 x (the same formula over |d|)."""
    n = float(window)
    w, d, const = central_sums(v, window)
    b = (d ** 2).sum(axis=1) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = np.sqrt(n * (n - 1)) / (n - 2) * ((d ** 3).sum(axis=1) / n) / b ** 1.5
        skew_cond = np.sqrt(n * (n - 1)) / (n - 2) * ((np.abs(d) ** 3).sum(axis=1) / n) / b ** 1.5
        kurt4 = (n * n - 1) * ((d ** 4).sum(axis=1) / n) / b ** 2
        kurt = (kurt4 - 3 * (n - 1) ** 2) / ((n - 2) * (n - 3))
        kurt_cond = (kurt4 + 3 * (n - 1) ** 2) / ((n - 2) * (n - 3))
    skew[const] = np.nan  # constant window: 0/0, null (pandas: NaN)
    kurt[const] = np.nan
    return skew, np.nan_to_num(skew_cond), kurt, np.nan_to_num(kurt_cond)


@pytest.mark.parametrize("window", [4, 20, 150])
@pytest.mark.parametrize("scale", SCALES)
def test_rolling_skew_kurt_match_numpy_two_pass(scale, window):
    t = market_table(3000, seed=14, scale=scale)
    mask, v = valid_values(t)
    skew, skew_cond, kurt, kurt_cond = skew_kurt_reference(v, window)
    # Near-zero skew/kurt are sums that cancel: atol = 1e-12 x their condition number.
    assert_matches(rolling_skew(t, "price", window=window)["rolling_skew"],
                   scatter(mask, warm(window, skew)), rtol=1e-9,
                   atol=np.nan_to_num(scatter(mask, warm(window, 1e-12 * skew_cond))),
                   name="rolling_skew")
    assert_matches(rolling_kurt(t, "price", window=window)["rolling_kurt"],
                   scatter(mask, warm(window, kurt)), rtol=1e-9,
                   atol=np.nan_to_num(scatter(mask, warm(window, 1e-12 * kurt_cond))),
                   name="rolling_kurt")


@pytest.mark.parametrize("window", [5, 20, 100])
def test_rolling_moments_agree_with_pandas(window):
    """pandas rolling std/skew/kurt. pandas updates raw power sums (add/remove), so its own
    rounding is far larger than ours: atol 1e-10 x level for std and 1e-6 for the
    dimensionless skew/kurt. On exactly constant windows pandas leaves residues up to ~3e-8 x
    level in std; there the answer is 0 (checked exactly)."""
    t = market_table(3000, seed=15)
    mask, v = valid_values(t)
    s = pd.Series(v).rolling(window)
    level = np.abs(scatter(mask, v))
    pd_std = s.std().to_numpy().copy()
    const = warm(window, np.ptp(sliding_window_view(v, window), axis=1) == 0) == 1
    assert np.all(pd_std[const] < 1e-7 * v[const])
    pd_std[const] = 0.0
    assert_matches(rolling_std(t, "price", window=window)["rolling_std"], scatter(mask, pd_std),
                   rtol=1e-9, atol=np.nan_to_num(1e-10 * level), name="std vs pandas")
    # constant windows: pandas 2 gives 0 and pandas 3 NaN for skew/kurt; ours is null (undefined)
    pd_skew, pd_kurt = s.skew().to_numpy().copy(), s.kurt().to_numpy().copy()
    pd_skew[const] = np.nan
    pd_kurt[const] = np.nan
    assert_matches(rolling_skew(t, "price", window=window)["rolling_skew"],
                   scatter(mask, pd_skew), rtol=1e-9, atol=1e-6, name="skew vs pandas")
    assert_matches(rolling_kurt(t, "price", window=window)["rolling_kurt"],
                   scatter(mask, pd_kurt), rtol=1e-9, atol=1e-6, name="kurt vs pandas")


@pytest.mark.parametrize("window", [10, 40])
def test_rolling_moments_and_autocorr_after_level_jumps(window):
    """Windows whose spread is tiny next to values that just left them (a jump of 1e4 noise
    units): the running sums must not carry the cancellation of the big values."""
    rng = np.random.default_rng(30)
    level = np.repeat([1e4, 1.0, 5e3, 2.0, -3e3], 60)
    v = level + rng.normal(0, 1e-3, level.size)
    t = pa.table({"x": v})
    w, d, _ = central_sums(v, window)
    skew, skew_cond, kurt, kurt_cond = skew_kurt_reference(v, window)
    std = np.sqrt((d ** 2).sum(axis=1) / (window - 1))
    assert_matches(rolling_std(t, "x", window=window)["rolling_std"], warm(window, std),
                   rtol=1e-9, name="std")
    assert_matches(rolling_skew(t, "x", window=window)["rolling_skew"], warm(window, skew),
                   rtol=1e-9, atol=warm(window, 1e-12 * skew_cond), name="skew")
    assert_matches(rolling_kurt(t, "x", window=window)["rolling_kurt"], warm(window, kurt),
                   rtol=1e-9, atol=warm(window, 1e-12 * kurt_cond), name="kurt")
    a, b = w[:, 1:], w[:, :-1]
    ref = np.array([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)])
    # windows straddling a jump are dominated by it (corr ~ 1); only the smooth ones matter here
    smooth = np.ptp(w, axis=1) < 1.0
    got = to_numpy(autocorr(t, "x", lag=1, window=window)["autocorr"])[window - 1:]
    assert np.allclose(got[smooth], ref[smooth], rtol=1e-9, atol=1e-12)


def test_constant_window_std_zero_skew_kurt_null():
    b = pa.record_batch({"x": [3.3] * 6 + [4.0]})
    assert rolling_std(b, "x", window=4)["rolling_std"].to_pylist() == [None] * 3 + [0.0] * 3 + [
        pytest.approx(np.std([3.3, 3.3, 3.3, 4.0], ddof=1), rel=1e-12)]
    assert rolling_skew(b, "x", window=4)["rolling_skew"].to_pylist()[:6] == [None] * 6
    assert rolling_kurt(b, "x", window=4)["rolling_kurt"].to_pylist()[:6] == [None] * 6
    assert rolling_kurt(b, "x", window=4)["rolling_kurt"][6].as_py() == pytest.approx(
        pd.Series([3.3, 3.3, 3.3, 4.0]).kurt(), rel=1e-9)


# ------------------------------------------------------------------ autocorr

@pytest.mark.parametrize("window,lag_", [(3, 1), (20, 1), (100, 1), (50, 7), (30, 28)])
@pytest.mark.parametrize("scale", SCALES)
def test_autocorr_matches_numpy_corrcoef(scale, window, lag_):
    t = market_table(2000, seed=16, scale=scale)
    mask, v = valid_values(t)
    w = sliding_window_view(v, window)
    a, b = w[:, lag_:], w[:, :-lag_]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ref = np.array([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)])
    # A leg that is exactly constant has no correlation (numpy returns rounding noise there).
    ref[(a.max(axis=1) == a.min(axis=1)) | (b.max(axis=1) == b.min(axis=1))] = np.nan
    # Shifted sums cancel when a window's spread dwarfs a leg's variation: atol 1e-14 x
    # pairs x range^2 / sqrt(var_a var_b), the condition number of the co-moment sums.
    va = ((a - a.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    vb = ((b - b.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    with np.errstate(all="ignore"):
        cond = a.shape[1] * np.ptp(w, axis=1) ** 2 / np.sqrt(va * vb)
    atol = np.nan_to_num(scatter(mask, warm(window, 1e-14 * np.nan_to_num(cond))))
    assert_matches(autocorr(t, "price", lag=lag_, window=window)["autocorr"],
                   scatter(mask, warm(window, ref)), rtol=1e-9, atol=atol, name="autocorr")


def test_autocorr_hand_case():
    x = [1.0, 2.0, 1.0, 2.0, 1.0]
    out = autocorr(pa.record_batch({"x": x}), "x", lag=1, window=4)["autocorr"].to_pylist()
    assert out[:3] == [None] * 3 and out[3:] == [-1.0, -1.0]


# ------------------------------------------------------------------ tick rule, signed volume

def test_tick_rule_hand_cases():
    p = [10.0, 10.0, 11.0, 11.0, None, 10.5, float("nan"), 10.5, 10.6]
    out = tick_rule(pa.record_batch({"price": pa.array(p, from_pandas=False)}))["trade_sign"]
    assert out.type == pa.int64()
    assert out.to_pylist() == [None, None, 1, 1, None, -1, None, -1, 1]


def test_tick_rule_matches_hand_loop_per_key():
    t = market_table(1500, seed=17)
    keys, x = t["symbol"].to_pylist(), to_numpy(t["price"])
    ref = np.full(x.shape, np.nan)
    prev, sign = {}, {}
    for i, (key, p) in enumerate(zip(keys, x)):
        if np.isnan(p):
            continue
        if key in prev and p != prev[key]:
            sign[key] = 1.0 if p > prev[key] else -1.0
        prev[key] = p
        ref[i] = sign.get(key, np.nan)
    assert_matches(tick_rule(t, by="symbol")["trade_sign"], ref, rtol=0, name="trade_sign")


def test_signed_volume():
    b = pa.record_batch({"volume": pa.array([2.0, 3.0, None, 5.0]),
                         "side": pa.array(["buy", "SELL", "buy", None])})
    assert signed_volume(b)["signed_volume"].to_pylist() == [2.0, -3.0, None, None]
    t = market_table(500, seed=18)
    ref = to_numpy(t["volume"]) * to_numpy(t["side"])
    assert_matches(signed_volume(t)["signed_volume"], ref, rtol=0)
    with pytest.raises(ValueError, match="'side'.*'hold'"):
        signed_volume(pa.record_batch({"volume": [1.0], "side": ["hold"]}))


# ------------------------------------------------------------------ stale quotes, throttle

def ts(ms_values):
    return pa.array([None if v is None else v * MS for v in ms_values], pa.timestamp("ns"))


def test_stale_quote_detector_hand_case():
    b = pa.record_batch({"timestamp": ts([0, 500, 1500, 2501, None, 2600]),
                         "symbol": ["A", "A", "B", "A", "A", "B"]})
    assert flags(stale_quote_detector(b, max_age_ms=1000)["is_stale"]) == [
        False, False, False, True, True, False]
    assert flags(stale_quote_detector(b, max_age_ms=1000, by="symbol")["is_stale"]) == [
        False, False, False, True, True, True]
    ms = pa.record_batch({"timestamp": pa.array([0, 1000, 3000], pa.timestamp("ms"))})
    assert flags(stale_quote_detector(ms, max_age_ms=1000)["is_stale"]) == [False, False, True]


def test_stale_quote_detector_matches_numpy_per_key():
    t = market_table(2000, seed=19)
    keys = np.array(t["symbol"].to_pylist())
    times = t["timestamp"].cast(pa.int64()).to_numpy()
    ref = np.zeros(len(keys))
    for key in np.unique(keys):
        rows = np.flatnonzero(keys == key)
        ref[rows[1:]] = np.diff(times[rows]) > 60 * MS
    out = stale_quote_detector(t, max_age_ms=60, by="symbol")["is_stale"]
    assert_matches(out, ref, rtol=0)


def hand_throttle(times, limit, window_ns):
    """For each event: count events in (t - window, t] (this one included) > limit."""
    out, seen = [], []
    for t in times:
        seen.append(t)
        out.append(sum(1 for s in seen if t - window_ns < s <= t) > limit)
    return out


def test_throttle_check_hand_case():
    b = pa.record_batch({"timestamp": ts([0, 100, 200, 999, 1000, 1100, None, 2500])})
    # limit 2 per second: the 3rd event inside any trailing second is throttled
    assert flags(throttle_check(b, rate_limit=2.0, window_ms=1000)["throttled"]) == [
        False, False, True, True, True, True, True, False]


@pytest.mark.parametrize("rate,window_ms", [(5.0, 100), (2.5, 1000), (0.5, 1000), (40.0, 250)])
def test_throttle_check_matches_hand_loop(rate, window_ms):
    rng = np.random.default_rng(20)
    times = np.cumsum(rng.integers(0, 40 * MS, 400))
    ref = hand_throttle(times.tolist(), rate * window_ms / 1000, window_ms * MS)
    b = pa.record_batch({"timestamp": pa.array(times, pa.timestamp("ns"))})
    assert flags(throttle_check(b, rate_limit=rate, window_ms=window_ms)["throttled"]) == ref


# ------------------------------------------------------------------ price guards, breaker

def test_price_band_guard_hand_cases_and_nulls_flagged():
    b = pa.record_batch({"price": pa.array([100.0, 104.9, 95.5, 94.0, None, float("nan"), 1.0]),
                         "mid": pa.array([100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 0.0])})
    assert flags(price_band_guard(b, pct=0.05)["price_band_violation"]) == [
        False, False, False, True, True, True, True]


def test_price_band_guard_matches_numpy():
    t = market_table(2000, seed=21)
    t = t.append_column("mid", pa.array((to_numpy(t["bid"]) + to_numpy(t["ask"])) / 2 * 1.0004,
                                        from_pandas=True))
    p, mid = to_numpy(t["price"]), to_numpy(t["mid"])
    with np.errstate(invalid="ignore"):
        ref = ~(np.abs(p / mid - 1) <= 0.0005)  # NaN/null inputs flagged
    got = price_band_guard(t, pct=0.0005)["price_band_violation"]
    assert got.null_count == 0 and np.array_equal(to_numpy(got).astype(bool), ref)


def test_fat_finger_guard_hand_cases():
    b = pa.record_batch({
        "price": pa.array([100.0, 111.0, 100.0, 100.0, 100.0, None]),
        "mid": pa.array([100.0, 100.0, 100.0, 100.0, 100.0, 100.0]),
        "size": pa.array([1.0, 1.0, 10_000.0, 10_001.0, None, 1.0]),
    })
    assert flags(fat_finger_guard(b)["fat_finger"]) == [False, True, False, True, True, True]
    assert flags(fat_finger_guard(b, pct=0.2, notional_max=1e7)["fat_finger"]) == [
        False, False, False, False, True, True]
    sells = pa.record_batch({"price": [100.0], "mid": [100.0], "size": [-20_000.0]})
    assert flags(fat_finger_guard(sells)["fat_finger"]) == [True]  # |notional| counts


def test_circuit_breaker_latches_per_key_until_reset():
    b = pa.record_batch({
        "symbol": ["A", "B", "A", "A", "B", "A"],
        "price": pa.array([100.0, 100.0, 106.0, 100.0, None, 100.0]),
        "ref_price": [100.0, 100.0, 100.0, 100.0, 100.0, 100.0],
    })
    cb = CircuitBreaker(by="symbol", pct=0.05)
    assert flags(cb(b)["circuit_break"]) == [False, False, True, True, True, True]
    assert flags(cb(b.slice(1, 1))["circuit_break"]) == [False]  # null did not latch B
    cb.reset("A")
    assert flags(cb(b.slice(3, 1))["circuit_break"]) == [False]
    exact = pa.record_batch({"price": [95.0], "ref_price": [100.0]})
    assert flags(circuit_breaker(exact, pct=0.05)["circuit_break"]) == [True]  # >= pct trips
    with pytest.raises(KeyError, match="'Z'"):
        cb.reset("Z")
    cb.reset()
    assert cb.keys == []


# ------------------------------------------------------------------ MAD outliers

@pytest.mark.parametrize("window,k", [(5, 3.0), (20, 3.0), (100, 2.0), (100, 3.0)])
def test_outlier_flag_mad_matches_numpy(window, k):
    t = market_table(2500, seed=22)
    mask, v = valid_values(t)
    w = sliding_window_view(v, window)
    med = np.median(w, axis=1)
    mad = np.median(np.abs(w - med[:, None]), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # MAD = 0: off-median is +inf > k (outlier), on-median is 0/0 (not an outlier)
        flag = (np.abs(v[window - 1:] - med) / (1.4826 * mad) > k).astype(float)
    assert_matches(outlier_flag_mad(t, "price", window=window, k=k)["is_outlier"],
                   scatter(mask, warm(window, flag)), rtol=0, name="is_outlier")


def test_outlier_flag_mad_hand_case():
    x = [1.0, 2.0, 3.0, 4.0, 100.0, 5.0, 5.0, 5.0, 5.0, 6.0]
    out = outlier_flag_mad(pa.record_batch({"x": x}), "x", window=5, k=3.0)["is_outlier"]
    # window [1,2,3,4,100]: median 3, MAD 1 -> 97/1.4826 > 3; [5,5,5,5,6]: MAD 0, 6 off-median
    assert flags(out) == [None] * 4 + [True, False, False, False, False, True]


# ------------------------------------------------------------------ invariants

FACTORIES = {
    "lag": (lambda by=None: Lag("price", lag=3, by=by), ["price_lag3"]),
    "diff": (lambda by=None: Diff("price", lag=2, by=by), ["price_diff2"]),
    "min": (lambda by=None: RollingMin("price", window=7, by=by), ["rolling_min"]),
    "max": (lambda by=None: RollingMax("price", window=7, by=by), ["rolling_max"]),
    "std": (lambda by=None: RollingStd("price", window=9, by=by), ["rolling_std"]),
    "skew": (lambda by=None: RollingSkew("price", window=9, by=by), ["rolling_skew"]),
    "kurt": (lambda by=None: RollingKurt("price", window=9, by=by), ["rolling_kurt"]),
    "autocorr": (lambda by=None: Autocorr("price", lag=2, window=11, by=by), ["autocorr"]),
    "tick_rule": (lambda by=None: TickRule(by=by), ["trade_sign"]),
    "stale": (lambda by=None: StaleQuoteDetector(max_age_ms=40, by=by), ["is_stale"]),
    # parameters chosen so both flag values occur, keyed and not, on market_table(400)
    "breaker": (lambda by=None: CircuitBreaker(ref_column="open", pct=0.0025, by=by),
                ["circuit_break"]),
    "throttle": (lambda by=None: ThrottleCheck(rate_limit=30.0, window_ms=100, by=by),
                 ["throttled"]),
    "mad": (lambda by=None: OutlierFlagMAD("price", window=8, k=2.0, by=by), ["is_outlier"]),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("keyed", [False, True])
def test_invariance_data_is_not_degenerate(name, keyed):
    """Each split-invariance case has both null and non-null outputs, and varied values."""
    make, outputs = FACTORIES[name]
    out = make("symbol" if keyed else None)(market_table(400, seed=23))
    for o in outputs:
        values = to_numpy(out[o])
        assert 0 < out[o].null_count < len(values) or len(np.unique(values)) > 1
        assert len(np.unique(values[~np.isnan(values)])) > 1, o


@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(0, 400), max_size=6), keyed=st.booleans())
def test_split_invariance(name, cuts, keyed):
    make, outputs = FACTORIES[name]
    by = "symbol" if keyed else None
    assert_split_invariant(lambda: make(by), market_table(400, seed=23), cuts, outputs)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_by_symbol_equals_each_symbol_alone(name):
    make, outputs = FACTORIES[name]
    assert_by_equivalent(lambda: make("symbol"), lambda: make(None), market_table(1500, seed=24),
                         outputs)


@pytest.mark.parametrize("name", ["throttle", "autocorr", "mad", "stale"])
def test_state_dict_round_trip_continues_exactly(name):
    make, outputs = FACTORIES[name]
    assert_state_round_trip(lambda: make("symbol"), market_table(1000, seed=25), 600, outputs)


def test_function_form_in_scope_equals_class():
    t = market_table(600, seed=26)
    batches = t.to_batches(max_chunksize=97)
    scope = StateScope()

    def op(b):
        b = rolling_std(b, "price", window=9, by="symbol")
        return throttle_check(b, rate_limit=30.0, window_ms=100, by="symbol")

    outs = []
    for b in batches:
        with scope.active():
            outs.append(op(b))
    via_scope = pa.Table.from_batches(outs)
    std_k, thr_k = RollingStd("price", window=9, by="symbol"), ThrottleCheck(
        rate_limit=30.0, window_ms=100, by="symbol")
    via_class = pa.Table.from_batches([thr_k(std_k(b)) for b in batches])
    assert 0 < pc.sum(via_class["throttled"]).as_py() < via_class.num_rows
    for name in ("rolling_std", "throttled"):
        assert via_scope[name].null_count == via_class[name].null_count
        assert np.array_equal(to_numpy(via_scope[name]), to_numpy(via_class[name]),
                              equal_nan=True)


# ------------------------------------------------------------------ errors

def test_errors_name_the_problem():
    b = pa.record_batch({"a": [1.0], "s": ["x"], "timestamp": ts([0])})
    with pytest.raises(KeyError, match="'nope'.*a, s, timestamp"):
        rolling_std(b, "nope")
    with pytest.raises(TypeError, match="'s'.*string"):
        lag(b, "s")
    with pytest.raises(KeyError, match="'mid'"):
        price_band_guard(b, price_column="a")
    with pytest.raises(KeyError, match="'ref_price'"):
        circuit_breaker(b, column="a")
    with pytest.raises(TypeError, match="'a'.*timestamp"):
        throttle_check(b, timestamp_column="a")
    with pytest.raises(KeyError, match="'size'"):
        fat_finger_guard(b, ref_column="a", price_column="a")
    bad_params = [
        (lambda: lag(b, "a", lag=0), "lag"),
        (lambda: diff(b, "a", lag=1.5), "lag"),
        (lambda: rolling_min(b, "a", window=0), "window"),
        (lambda: rolling_std(b, "a", window=5, ddof=5), "ddof"),
        (lambda: rolling_std(b, "a", window=5, ddof=-1), "ddof"),
        (lambda: rolling_skew(b, "a", window=2), "window"),
        (lambda: rolling_kurt(b, "a", window=3), "window"),
        (lambda: autocorr(b, "a", lag=3, window=4), "window"),
        (lambda: autocorr(b, "a", lag=0), "lag"),
        (lambda: stale_quote_detector(b, max_age_ms=-1), "max_age_ms"),
        (lambda: price_band_guard(b, pct=0.0), "pct"),
        (lambda: fat_finger_guard(b, notional_max=-5), "notional_max"),
        (lambda: circuit_breaker(b, pct=-0.1), "pct"),
        (lambda: throttle_check(b, rate_limit=0), "rate_limit"),
        (lambda: throttle_check(b, window_ms=0), "window_ms"),
        (lambda: outlier_flag_mad(b, "a", k=-1.0), "k"),
        (lambda: outlier_flag_mad(b, "a", window=0), "window"),
    ]
    for call, param in bad_params:
        with pytest.raises((ValueError, TypeError), match=param):
            call()


def test_output_appended_and_replaced():
    b = pa.record_batch({"symbol": ["A", "A"], "price": [1.0, 2.0]})
    out = tick_rule(tick_rule(b))
    assert out.schema.names == ["symbol", "price", "trade_sign"]
    assert lag(b, "price", lag=1).schema.names == ["symbol", "price", "price_lag1"]
