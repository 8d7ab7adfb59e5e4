"""cross_asset: Hayashi–Yoshida against a brute-force double loop and a simulated common
Brownian factor; lead-lag against np.corrcoef; pairs spread; Kalman hedge ratio against a plain
Python filter, split invariance and by= equivalence."""
import pickle

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from kernel_testing import assert_by_equivalent, assert_matches, split_at, to_numpy
from sabot.fintech import (
    KalmanHedgeRatio, StateScope, hayashi_yoshida_corr, hayashi_yoshida_cov, kalman_hedge_ratio,
    pairs_spread, xcorr_leadlag,
)

# ------------------------------------------------------------------ Hayashi–Yoshida


def series(times_ms, returns, unit="ms"):
    return pa.record_batch({
        "timestamp": pa.array(np.asarray(times_ms, dtype=np.int64), pa.int64()).cast(
            pa.timestamp(unit, tz="UTC")) if unit == "ms" else pa.array(times_ms, pa.int64()),
        "returns": pa.array(returns, pa.float64(), from_pandas=True),
    })


def brute_intervals(times, returns):
    """(start, end, r): a valid return starts where the previous valid one ended; the first
    valid return starts at the row before it; a valid return on row 0 has no start."""
    out, prev = [], None
    for i, (t, r) in enumerate(zip(times, returns)):
        if r is None or r != r:
            continue
        if prev is None:
            if i == 0:
                continue
            prev = times[i - 1]
        out.append((prev, t, r))
        prev = t
    return out


def brute_hy(ta, ra, tb, rb, window):
    """O(n·m) double loop: Σ r_a·r_b over every pair of overlapping (s, e] intervals whose ends
    fall in the same window [k·W, (k+1)·W). Returns {k: (cov, Σ|r_a r_b|, RV_a, RV_b, n_a, n_b)}."""
    A, B = brute_intervals(ta, ra), brute_intervals(tb, rb)
    if not A and not B:
        return {}
    ks = [e // window for _, e, _ in A + B]
    res = {k: [0.0, 0.0, 0.0, 0.0, 0, 0] for k in range(min(ks), max(ks) + 1)}
    for _, e, x in A:
        res[e // window][2] += x * x
        res[e // window][4] += 1
    for _, e, y in B:
        res[e // window][3] += y * y
        res[e // window][5] += 1
    for sa, ea, x in A:
        for sb, eb, y in B:
            if ea // window == eb // window and max(sa, sb) < min(ea, eb):
                res[ea // window][0] += x * y
                res[ea // window][1] += abs(x * y)
    return res


def test_hy_hand_case_with_ties():
    # A: (0,10]:1, (10,20]:2, (20,30]:3      B: (0,5]:10, (5,20]:20, (20,25]:30
    a = series([0, 10, 20, 30], [None, 1.0, 2.0, 3.0])
    b = series([0, 5, 20, 25], [None, 10.0, 20.0, 30.0])
    out = hayashi_yoshida_cov(a, b, window_ms=1000)
    # overlaps: A1·B1 (0,5], A1·B2 (5,10], A2·B2 (10,20] (equal ends), A3·B3 (20,25];
    # A2·B3 and A3·B2 only touch at 20: no overlap
    assert out["hy_cov"].to_pylist() == [1 * 10 + 1 * 20 + 2 * 20 + 3 * 30]
    assert out["n_a"].to_pylist() == [3] and out["n_b"].to_pylist() == [3]
    assert out["window_start"][0].value == 0
    assert out["window_end"][0].value == 1000 * 1_000_000
    corr = hayashi_yoshida_corr(a, b, window_ms=1000)["hy_corr"][0].as_py()
    assert corr == pytest.approx(160.0 / np.sqrt(14.0 * 1400.0), rel=1e-12)


def test_hy_duplicate_timestamp_gives_an_empty_interval():
    a = series([0, 10, 10, 20], [None, 1.0, 5.0, 2.0])   # (10,10] is empty: overlaps nothing
    b = series([0, 20], [None, 7.0])
    assert hayashi_yoshida_cov(a, b, window_ms=1000)["hy_cov"].to_pylist() == [(1 + 2) * 7.0]


def test_hy_empty_windows_are_null():
    a = series([0, 10, 2010], [None, 1.0, 2.0])          # returns in windows 0 and 2
    b = series([0, 500, 1500, 2500], [None, 1.0, 1.0, 1.0])
    out = hayashi_yoshida_cov(a, b, window_ms=1000)
    assert out["n_a"].to_pylist() == [1, 0, 1]
    assert out["n_b"].to_pylist() == [1, 1, 1]
    assert out["hy_cov"].is_null().to_pylist() == [False, True, False]
    # A's window-2 interval (10, 2010] overlaps B's (1500, 2500] (ends in window 2)
    assert out["hy_cov"].to_pylist() == [1.0, None, 2.0]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_hy_matches_brute_force(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n_a, n_b = data.draw(st.integers(0, 60)), data.draw(st.integers(0, 60))
    window = data.draw(st.sampled_from([7, 37, 1000]))
    ta = np.sort(rng.integers(0, 200, n_a))               # many ties within and across series
    tb = np.sort(rng.integers(0, 200, n_b))
    ra = [None if u < 0.1 else float(v) for u, v in zip(rng.uniform(size=n_a),
                                                        rng.normal(size=n_a))]
    rb = [float("nan") if u < 0.1 else float(v) for u, v in zip(rng.uniform(size=n_b),
                                                               rng.normal(size=n_b))]
    ref = brute_hy(list(ta), ra, list(tb), rb, window)
    cov = hayashi_yoshida_cov(series(ta, ra), series(tb, rb), window_ms=window)
    corr = hayashi_yoshida_corr(series(ta, ra), series(tb, rb), window_ms=window)
    keys = sorted(ref)
    assert cov.num_rows == len(keys)
    starts = [v // 1_000_000 for v in cov["window_start"].cast(pa.int64()).to_pylist()]
    assert starts == [k * window for k in keys]
    exp_cov = np.array([ref[k][0] if ref[k][4] and ref[k][5] else np.nan for k in keys])
    atol = np.array([1e-13 * ref[k][1] for k in keys])
    assert_matches(cov["hy_cov"], exp_cov, rtol=1e-9, atol=atol, name="hy_cov")
    assert cov["n_a"].to_pylist() == [ref[k][4] for k in keys]
    assert cov["n_b"].to_pylist() == [ref[k][5] for k in keys]
    denom = np.array([np.sqrt(ref[k][2] * ref[k][3]) for k in keys])
    with np.errstate(divide="ignore", invalid="ignore"):
        exp_corr = np.where(denom > 0, exp_cov / denom, np.nan)
        atol_corr = np.where(denom > 0, atol / denom, 0.0)
    assert_matches(corr["hy_corr"], exp_corr, rtol=1e-9, atol=atol_corr, name="hy_corr")


def correlated_brownian(rng, n_a, n_b, T, rho, sig_a, sig_b):
    """X = σa·W1, Y = σb·(ρ·W1 + sqrt(1−ρ²)·W2), sampled at independent random times in [0, T]
    (both at 0 and T); increments returned as the returns of each series."""
    ta = np.unique(np.concatenate([[0, T], rng.integers(1, T, n_a)]))
    tb = np.unique(np.concatenate([[0, T], rng.integers(1, T, n_b)]))
    grid = np.union1d(ta, tb)
    dt = np.diff(grid).astype(float)
    w1 = np.concatenate([[0.0], np.cumsum(rng.normal(0, np.sqrt(dt)))])
    w2 = np.concatenate([[0.0], np.cumsum(rng.normal(0, np.sqrt(dt)))])
    x = sig_a * w1
    y = sig_b * (rho * w1 + np.sqrt(1 - rho ** 2) * w2)
    xa, yb = x[np.searchsorted(grid, ta)], y[np.searchsorted(grid, tb)]
    return (series(ta, np.concatenate([[np.nan], np.diff(xa)])),
            series(tb, np.concatenate([[np.nan], np.diff(yb)])))


def test_hy_converges_to_integrated_covariance():
    """HY is unbiased for ∫ρσaσb dt over [0, T]: the mean over replications is within 4
    standard errors of ρ·σa·σb·T, and so is the correlation's mean of ρ."""
    rng = np.random.default_rng(42)
    T, rho, sig_a, sig_b = 3_600_000, 0.6, 1e-4, 2e-4
    covs, corrs = [], []
    for _ in range(30):
        a, b = correlated_brownian(rng, 4000, 3000, T, rho, sig_a, sig_b)
        covs.append(hayashi_yoshida_cov(a, b, window_ms=4_000_000)["hy_cov"][0].as_py())
        corrs.append(hayashi_yoshida_corr(a, b, window_ms=4_000_000)["hy_corr"][0].as_py())
    covs, corrs = np.array(covs), np.array(corrs)
    truth = rho * sig_a * sig_b * T
    se = covs.std(ddof=1) / np.sqrt(covs.size)
    assert abs(covs.mean() - truth) < 4 * se, (covs.mean(), truth, se)
    assert se < 0.05 * truth                        # the test has power
    se_c = corrs.std(ddof=1) / np.sqrt(corrs.size)
    assert abs(corrs.mean() - rho) < 4 * se_c + 0.01, (corrs.mean(), se_c)


def test_hy_int64_nanoseconds_and_tables():
    a = series([0, 10, 20, 30], [None, 1.0, 2.0, 3.0])
    b = series([0, 5, 20, 25], [None, 10.0, 20.0, 30.0])
    a_ns = pa.record_batch({"timestamp": pa.array([0, 10, 20, 30], pa.int64()).cast(pa.int64())
                            .to_numpy() * 1_000_000, "returns": a["returns"]})
    b_ns = pa.record_batch({"timestamp": pa.array([0, 5, 20, 25]).to_numpy() * 1_000_000,
                            "returns": b["returns"]})
    out = hayashi_yoshida_cov(a_ns, b_ns, window_ms=1000)
    assert out["hy_cov"].to_pylist() == [160.0]
    assert out.schema.field("window_start").type == pa.int64()
    table_out = hayashi_yoshida_cov(pa.Table.from_batches([a.slice(0, 2), a.slice(2)]),
                                    pa.Table.from_batches([b]), window_ms=1000)
    assert isinstance(table_out, pa.Table)
    assert table_out["hy_cov"].to_pylist() == [160.0]


def test_hy_errors():
    a = series([0, 10, 5], [None, 1.0, 2.0])
    b = series([0, 5], [None, 1.0])
    with pytest.raises(ValueError, match="batch_a.*not sorted.*row 2"):
        hayashi_yoshida_cov(a, b)
    good = series([0, 10], [None, 1.0])
    with pytest.raises(KeyError, match="'log_return'.*timestamp, returns"):
        hayashi_yoshida_cov(good, b, returns_column="log_return")
    with pytest.raises(ValueError, match="window_ms"):
        hayashi_yoshida_corr(good, b, window_ms=0)
    bad = pa.record_batch({"timestamp": pa.array(["x", "y"]), "returns": [1.0, 2.0]})
    with pytest.raises(TypeError, match="'timestamp'"):
        hayashi_yoshida_cov(good, bad)


# ------------------------------------------------------------------ lead-lag


def test_xcorr_leadlag_matches_corrcoef():
    rng = np.random.default_rng(3)
    n, lead = 600, 3
    a = rng.normal(size=n)
    b = np.empty(n)
    b[lead:] = 0.8 * a[:-lead] + 0.3 * rng.normal(size=n - lead)
    b[:lead] = rng.normal(size=lead)
    a[rng.uniform(size=n) < 0.03] = np.nan
    mask_b = rng.uniform(size=n) < 0.03
    out = xcorr_leadlag(pa.record_batch({"returns": a}),
                        pa.record_batch({"returns": pa.array(b, mask=mask_b)}), max_lag=5)
    b[mask_b] = np.nan
    assert sorted(out["corrs"]) == list(range(-5, 6))
    for k, got in out["corrs"].items():
        x, y = (a[:n - k], b[k:]) if k >= 0 else (a[-k:], b[:n + k])
        ok = ~np.isnan(x) & ~np.isnan(y)
        assert got == pytest.approx(np.corrcoef(x[ok], y[ok])[0, 1], rel=1e-9, abs=1e-12)
    assert out["best_lag"] == lead
    assert out["best_corr"] == out["corrs"][lead]
    assert out["best_corr"] > 0.9


def test_xcorr_leadlag_undefined_and_errors():
    flat = pa.record_batch({"returns": [1.0, 1.0, 1.0, 1.0]})
    other = pa.record_batch({"returns": [1.0, 2.0, 0.0, 3.0]})
    out = xcorr_leadlag(flat, other, max_lag=1)
    assert out == {"best_lag": None, "best_corr": None, "corrs": {-1: None, 0: None, 1: None}}
    neg = xcorr_leadlag(other, pa.record_batch({"returns": [-1.0, -2.0, 0.0, -3.0]}), max_lag=0)
    assert neg["best_lag"] == 0 and neg["best_corr"] == pytest.approx(-1.0, rel=1e-12)
    with pytest.raises(ValueError, match="row-aligned.*4 rows.*3"):
        xcorr_leadlag(other, other.slice(0, 3))
    with pytest.raises(ValueError, match="max_lag"):
        xcorr_leadlag(other, other, max_lag=-1)
    with pytest.raises(ValueError, match="alpha"):
        xcorr_leadlag(other, other, alpha=0.0)
    with pytest.raises(KeyError, match="'returns'"):
        xcorr_leadlag(pa.record_batch({"r": [1.0]}), other)


# ------------------------------------------------------------------ pairs


def pair_tables(n=800, seed=0):
    rng = np.random.default_rng(seed)
    pb = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    beta = 1.5 + np.cumsum(rng.normal(0, 0.002, n))
    pa_ = beta * pb + rng.normal(0, 0.05, n)
    sym = rng.choice(["ETH/BTC", "SOL/ETH"], n)
    ma, mb = rng.uniform(size=n) < 0.03, rng.uniform(size=n) < 0.03
    pa_[rng.uniform(size=n) < 0.02] = np.nan
    a = pa.table({"symbol": sym, "price": pa.array(pa_, mask=ma)})
    b = pa.table({"symbol": sym, "price": pa.array(pb, mask=mb)})
    return a, b


def test_pairs_spread_matches_numpy():
    a, b = pair_tables(seed=1)
    out = pairs_spread(a, b, hedge_ratio=1.37)
    assert out.schema.names == ["symbol", "price", "spread"]
    assert_matches(out["spread"], to_numpy(a["price"]) - 1.37 * to_numpy(b["price"]),
                   name="spread")
    with pytest.raises(ValueError, match="row-aligned"):
        pairs_spread(a, b.slice(1))
    with pytest.raises(ValueError, match="hedge_ratio"):
        pairs_spread(a, b, hedge_ratio=float("nan"))


def kalman_reference(ya, xb, q, r):
    """Textbook scalar Kalman filter for y = β·x + ε with random-walk β (prior β=1, P=1)."""
    beta, P = 1.0, 1.0
    betas, spreads = [], []
    for y, x in zip(ya, xb):
        if np.isnan(y) or np.isnan(x):
            betas.append(np.nan)
            spreads.append(np.nan)
            continue
        P_pred = P + q
        K = P_pred * x / (x * x * P_pred + r)
        beta = beta + K * (y - beta * x)
        P = (1.0 - K * x) * P_pred
        betas.append(beta)
        spreads.append(y - beta * x)
    return np.array(betas), np.array(spreads)


@pytest.mark.parametrize("q,r", [(0.001, 0.1), (1e-6, 1.0), (0.0, 0.5)])
def test_kalman_hedge_ratio_matches_plain_loop(q, r):
    a, b = pair_tables(seed=2)
    beta, spread = kalman_reference(to_numpy(a["price"]), to_numpy(b["price"]), q, r)
    out = kalman_hedge_ratio(a, b, q=q, r=r)
    assert_matches(out["hedge_ratio"], beta, rtol=1e-9, name="hedge_ratio")
    # the spread y − β·x cancels: allow the rounding of β·x amplified by |β·x|/|spread|
    bx = np.abs(beta * to_numpy(b["price"]))
    assert_matches(out["spread"], spread, rtol=1e-9, atol=np.nan_to_num(1e-13 * bx),
                   name="spread")
    assert abs(np.nanmean(beta[-100:]) - 1.5) < 0.2   # tracks the true β (≈1.5)


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(0, 300), max_size=5), keyed=st.booleans())
def test_kalman_split_invariance(cuts, keyed):
    a, b = pair_tables(300, seed=3)
    by = "symbol" if keyed else None
    whole = KalmanHedgeRatio(by=by)(a, b)
    kf = KalmanHedgeRatio(by=by)
    parts = [kf(x, y) for x, y in zip(split_at(a, cuts), split_at(b, cuts))]
    pieced = pa.Table.from_batches(parts)
    for name in ("hedge_ratio", "spread"):
        assert np.array_equal(to_numpy(pieced[name]), to_numpy(whole[name]), equal_nan=True)


def test_kalman_by_symbol_equals_each_alone_and_one_batch_form():
    a, b = pair_tables(600, seed=4)
    both = a.append_column("price_b", b["price"])
    assert_by_equivalent(lambda: KalmanHedgeRatio(b_column="price_b", by="symbol"),
                         lambda: KalmanHedgeRatio(b_column="price_b"), both,
                         ["hedge_ratio", "spread"])
    one = KalmanHedgeRatio(b_column="price_b")(both)
    two = KalmanHedgeRatio()(a, b)
    assert np.array_equal(to_numpy(one["hedge_ratio"]), to_numpy(two["hedge_ratio"]),
                          equal_nan=True)
    with pytest.raises(ValueError, match="distinct a_column and b_column"):
        KalmanHedgeRatio()(a)


def test_kalman_state_dict_and_scope():
    a, b = pair_tables(500, seed=5)
    whole = KalmanHedgeRatio(by="symbol")(a, b)
    first = KalmanHedgeRatio(by="symbol")
    first(a.slice(0, 200), b.slice(0, 200))
    restored = KalmanHedgeRatio(by="symbol")
    restored.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))
    rest = restored(a.slice(200), b.slice(200))
    assert np.array_equal(to_numpy(rest["hedge_ratio"]), to_numpy(whole["hedge_ratio"])[200:],
                          equal_nan=True)
    scope = StateScope()
    parts = []
    for x, y in zip(split_at(a, [123, 321]), split_at(b, [123, 321])):
        with scope.active():
            parts.append(kalman_hedge_ratio(x, y, by="symbol"))
    assert np.array_equal(to_numpy(pa.Table.from_batches(parts)["spread"]),
                          to_numpy(whole["spread"]), equal_nan=True)


def test_kalman_errors():
    a, b = pair_tables(10)
    with pytest.raises(ValueError, match="r must be"):
        KalmanHedgeRatio(r=0.0)
    with pytest.raises(ValueError, match="q must be"):
        KalmanHedgeRatio(q=-1.0)
    with pytest.raises(KeyError, match="'px'"):
        kalman_hedge_ratio(a, b, price_column="px")
    with pytest.raises(ValueError, match="row-aligned"):
        kalman_hedge_ratio(a, b.slice(2))
