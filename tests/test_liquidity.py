"""liquidity kernels against numpy references (polyfit, cov, paper formulas), invariants."""
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from kernel_testing import (
    assert_state_round_trip,
    assert_by_equivalent, assert_matches, assert_split_invariant, market_table, scatter,
    to_numpy, valid_mask,
)
from sabot.fintech import (
    AmihudIlliquidity, CorwinSchultzSpread, KyleLambda, RollSpread,
    amihud_illiquidity, corwin_schultz_spread, kyle_lambda, roll_spread,
)

sliding = np.lib.stride_tricks.sliding_window_view


def liquidity_table(n=2000, seed=0):
    """market_table plus log_return, signed_volume (with flat runs) and some zero volumes."""
    rng = np.random.default_rng(seed + 100)
    t = market_table(n, seed=seed)
    p = to_numpy(t["price"])
    r = np.concatenate([[np.nan], np.diff(np.log(p))])
    q = to_numpy(t["volume"]) * to_numpy(t["side"])
    for start in rng.integers(0, n - 40, size=n // 300):
        q[start:start + 30] = q[start]                  # constant signed volume: var(q) = 0
    v = to_numpy(t["volume"])
    v[rng.uniform(size=n) < 0.05] = 0.0                 # v = 0 rows: missing for Amihud
    t = t.append_column("log_return", pa.array(r, mask=np.isnan(r) & (np.arange(n) % 2 == 0)))
    t = t.append_column("signed_volume", pa.array(q))
    return t.set_column(t.schema.get_field_index("volume"), "volume", pa.array(v))


def rolling_ref(values, mask, window, fn):
    """``fn`` on each full window of the valid rows (2-D values: rows are observations)."""
    v = values[mask]
    out = np.full(len(v), np.nan)
    if len(v) >= window:
        out[window - 1:] = [fn(v[k - window + 1:k + 1]) for k in range(window - 1, len(v))]
    return scatter(mask, out)


@pytest.mark.parametrize("window", [2, 20, 64])
def test_kyle_lambda_matches_polyfit(window):
    t = liquidity_table(seed=1)
    rq = np.column_stack([to_numpy(t["log_return"]), to_numpy(t["signed_volume"])])
    mask = valid_mask(t["log_return"], t["signed_volume"])

    def slope(w):
        if np.ptp(w[:, 1]) == 0.0:
            return np.nan                               # var(q) = 0: slope undefined -> null
        return np.polyfit(w[:, 1], w[:, 0], 1)[0]

    ref = rolling_ref(rq, mask, window, slope)
    # cov/var from centred sums vs polyfit's least squares: both exact to ~1e-15 of the slope's
    # natural scale std(r)/std(q) (condition-number-based atol, as test_rolling_zscore).
    scale = rolling_ref(rq, mask, window,
                        lambda w: np.std(w[:, 0]) / max(np.std(w[:, 1]), 1e-300))
    atol = np.nan_to_num(1e-12 * scale)
    out = kyle_lambda(t, window=window)["kyle_lambda"]
    assert_matches(out, ref, rtol=1e-9, atol=atol, name="kyle_lambda")
    if window <= 20:                                    # flat runs of q are 30 rows long
        assert out.null_count > mask.size - mask.sum() + window   # constant-q windows: null


@pytest.mark.parametrize("window", [1, 20, 64])
def test_amihud_matches_numpy_with_zero_volume_missing(window):
    t = liquidity_table(seed=2)
    r, v = to_numpy(t["log_return"]), to_numpy(t["volume"])
    mask = valid_mask(t["log_return"], t["volume"]) & (np.nan_to_num(v) > 0)
    ratio = np.where(mask, np.abs(r) / np.where(mask, v, 1.0), np.nan)
    ref = rolling_ref(ratio, mask, window, np.mean)
    out = amihud_illiquidity(t, window=window)["amihud_illiquidity"]
    assert_matches(out, ref, name="amihud")
    assert out.is_null().to_numpy(zero_copy_only=False)[np.nan_to_num(v, nan=1.0) == 0].all()


def test_amihud_zero_volume_row_is_not_in_the_window():
    b = pa.record_batch({"log_return": [0.1, 0.2, 0.3, 0.4], "volume": [1.0, 0.0, 2.0, 4.0]})
    got = amihud_illiquidity(b, window=2)["amihud_illiquidity"].to_pylist()
    assert got[:2] == [None, None]
    assert got[2] == pytest.approx((0.1 + 0.15) / 2, rel=1e-15)
    assert got[3] == pytest.approx((0.15 + 0.1) / 2, rel=1e-15)


@pytest.mark.parametrize("window", [3, 20, 64])
def test_roll_spread_matches_numpy_cov(window):
    t = liquidity_table(seed=3)
    r, mask = to_numpy(t["log_return"]), valid_mask(t["log_return"])

    def roll(w):
        c = np.cov(w[1:], w[:-1])[0, 1]
        return 2 * np.sqrt(-c) if c < 0 else 0.0

    def atol_of(w):
        # 2 sqrt(-c) amplifies cov rounding (~1e-13 of var) when c is near 0:
        # |2sqrt(a) - 2sqrt(b)| <= min(2 sqrt|a-b|, |a-b|/sqrt(max(a,b))).
        delta = 1e-13 * np.var(w)
        c = abs(np.cov(w[1:], w[:-1])[0, 1])
        return min(2 * np.sqrt(delta), delta / np.sqrt(c)) if c > 0 else 2 * np.sqrt(delta)

    ref = rolling_ref(r, mask, window, roll)
    atol = np.nan_to_num(rolling_ref(r, mask, window, atol_of))
    out = roll_spread(t, window=window)["roll_spread"]
    assert_matches(out, ref, rtol=1e-9, atol=atol, name="roll_spread")
    assert (to_numpy(out) > 0).sum() > 0
    if window <= 20:
        assert (to_numpy(out) == 0.0).sum() > 0         # cov >= 0 -> 0 occurs


def corwin_schultz_reference(h1, l1, h2, l2):
    """Corwin & Schultz (2012), eqs. for beta, gamma, alpha and S; negative S set to 0."""
    beta = np.log(h1 / l1) ** 2 + np.log(h2 / l2) ** 2
    gamma = np.log(max(h1, h2) / min(l1, l2)) ** 2
    k = 3 - 2 * np.sqrt(2)
    alpha = (np.sqrt(2 * beta) - np.sqrt(beta)) / k - np.sqrt(gamma / k)
    s = 2 * (np.exp(alpha) - 1) / (1 + np.exp(alpha))
    return max(s, 0.0)


@pytest.mark.parametrize("window", [2, 5, 21])
@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e6])
def test_corwin_schultz_matches_paper_formulas(window, scale):
    t = market_table(2000, seed=4, scale=scale)
    hl = np.column_stack([to_numpy(t["high"]), to_numpy(t["low"])])
    mask = valid_mask(t["high"], t["low"])

    def mean_two_bar(w):
        return np.mean([corwin_schultz_reference(w[j - 1, 0], w[j - 1, 1], w[j, 0], w[j, 1])
                        for j in range(1, len(w))])

    ref = rolling_ref(hl, mask, window, mean_two_bar)
    out = corwin_schultz_spread(t, window=window)["corwin_schultz_spread"]
    assert_matches(out, ref, rtol=1e-9, atol=1e-15, name="corwin_schultz")
    assert (to_numpy(out) > 0).sum() > 0
    if window <= 5:
        assert (to_numpy(out) == 0.0).sum() > 0         # negative estimates -> 0 occur


def test_corwin_schultz_hand_case():
    # bars (H, L) = (e^0.02, 1) then (e^0.01, e^-0.01): beta = 0.0008, gamma = 0.03^2
    b = pa.record_batch({"high": [math.exp(0.02), math.exp(0.01)],
                         "low": [1.0, math.exp(-0.01)]})
    k = 3 - 2 * math.sqrt(2)
    alpha = (math.sqrt(0.0016) - math.sqrt(0.0008)) / k - math.sqrt(0.0009 / k)
    expected = max(2 * (math.exp(alpha) - 1) / (1 + math.exp(alpha)), 0.0)
    got = corwin_schultz_spread(b)["corwin_schultz_spread"].to_pylist()
    assert got[0] is None and got[1] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    inverted = pa.record_batch({"high": [2.0, 1.0, 2.0], "low": [1.0, 1.5, 1.0]})  # H < L
    assert corwin_schultz_spread(inverted)["corwin_schultz_spread"].to_pylist()[1] is None


FACTORIES = {
    "kyle_lambda": (lambda by=None: KyleLambda(window=6, by=by), ["kyle_lambda"]),
    "amihud": (lambda by=None: AmihudIlliquidity(window=6, by=by), ["amihud_illiquidity"]),
    "roll_spread": (lambda by=None: RollSpread(window=6, by=by), ["roll_spread"]),
    "corwin_schultz": (lambda by=None: CorwinSchultzSpread(window=3, by=by),
                       ["corwin_schultz_spread"]),
}

SPLIT_TABLE = liquidity_table(300, seed=5)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(0, 300), max_size=6), keyed=st.booleans())
def test_split_invariance(name, cuts, keyed):
    make, outputs = FACTORIES[name]
    assert_split_invariant(lambda: make("symbol" if keyed else None), SPLIT_TABLE, cuts, outputs)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_by_symbol_equals_each_symbol_alone(name):
    make, outputs = FACTORIES[name]
    assert_by_equivalent(lambda: make("symbol"), lambda: make(None),
                         liquidity_table(1200, seed=6), outputs)


def test_state_dict_round_trip_continues_exactly():
    assert_state_round_trip(lambda: KyleLambda(window=9, by="symbol"),
                            liquidity_table(800, seed=7), 401, ["kyle_lambda"])


def test_errors_name_the_problem():
    b = pa.record_batch({"log_return": [0.1], "s": ["x"], "high": [2.0], "low": [1.0]})
    with pytest.raises(KeyError, match="'signed_volume'.*log_return, s, high, low"):
        kyle_lambda(b)
    with pytest.raises(TypeError, match="'s'.*string"):
        amihud_illiquidity(b, volume_column="s")
    with pytest.raises(KeyError, match="'volume'"):
        amihud_illiquidity(b)
    with pytest.raises(ValueError, match="window must be >= 3"):
        roll_spread(b, window=2)
    with pytest.raises(ValueError, match="window must be >= 2"):
        kyle_lambda(b, volume_column="high", window=1)
    with pytest.raises(ValueError, match="window must be >= 2"):
        corwin_schultz_spread(b, window=1)
    with pytest.raises(TypeError, match="window must be an integer"):
        corwin_schultz_spread(b, window=2.5)
