"""execution/risk kernels against numpy/scipy references and the Almgren–Chriss closed form."""
import math

import numpy as np
import pyarrow as pa
import pytest
import scipy.stats
from hypothesis import given, settings, strategies as st

from kernel_testing import (
    assert_state_round_trip,
    assert_by_equivalent, assert_matches, assert_split_invariant, market_table, scatter,
    to_numpy, valid_mask,
)
from sabot.fintech import (
    CUSUM, VWAP, CornishFisherVaR, HistoricalCVaR, HistoricalVaR,
    arrival_price_impact, cornish_fisher_var, cusum, historical_cvar, historical_var,
    implementation_shortfall, optimal_ac_schedule, vwap,
)

sliding = np.lib.stride_tricks.sliding_window_view


def risk_table(n=2000, seed=0):
    """market_table plus ``pnl`` (price changes: flat runs give exact zeros) and ``value``."""
    t = market_table(n, seed=seed)
    p = to_numpy(t["price"])
    pnl = np.concatenate([[np.nan], np.diff(p)])
    null = np.isnan(pnl) & (np.arange(n) % 2 == 0)
    t = t.append_column("pnl", pa.array(pnl, mask=null))
    return t.append_column("value", pa.array(pnl * 10, mask=null))


def rolling_ref(values, mask, window, fn):
    v = values[mask]
    out = np.full(v.size, np.nan)
    if v.size >= window:
        out[window - 1:] = [fn(w) for w in sliding(v, window)]
    return scatter(mask, out)


# ---------------------------------------------------------------- VWAP


def test_vwap_matches_numpy_cumsum():
    t = market_table(3000, seed=1)
    p, v = to_numpy(t["price"]), to_numpy(t["volume"])
    mask = valid_mask(t["price"], t["volume"])
    ref = np.cumsum(p[mask] * v[mask]) / np.cumsum(v[mask])
    assert_matches(vwap(t)["vwap"], scatter(mask, ref), name="vwap")


def test_vwap_zero_cumulative_volume_is_null():
    b = pa.record_batch({"price": [10.0, 11.0, 12.0], "volume": [0.0, 2.0, 1.0]})
    assert vwap(b)["vwap"].to_pylist() == [None, 11.0, pytest.approx(34.0 / 3.0, rel=1e-15)]


# ---------------------------------------------------------------- stateless


def test_implementation_shortfall_and_arrival_impact():
    rng = np.random.default_rng(2)
    n = 500
    exec_p = 100 * (1 + rng.normal(0, 1e-3, n))
    arrival = 100 * (1 + rng.normal(0, 1e-3, n))
    side_num = rng.choice([1.0, -1.0], n)
    side_str = np.where(side_num > 0, "buy", "sell")
    arrival[::50] = 0.0                                     # no arrival price -> null
    b = pa.record_batch({"exec_price": exec_p, "arrival_price": arrival,
                         "arrival_mid": arrival, "side": side_str})
    with np.errstate(divide="ignore", invalid="ignore"):
        is_ref = np.where(arrival > 0, side_num * (exec_p / arrival - 1) * 1e4, np.nan)
        imp_ref = np.where(arrival > 0, side_num * (exec_p - arrival) / arrival * 1e4, np.nan)
    assert_matches(implementation_shortfall(b)["implementation_shortfall_bps"], is_ref,
                   rtol=1e-12, name="implementation_shortfall")
    assert_matches(arrival_price_impact(b)["arrival_impact_bps"], imp_ref, rtol=1e-12,
                   name="arrival_impact")
    numeric = b.set_column(3, "side", pa.array(side_num))
    assert_matches(implementation_shortfall(numeric)["implementation_shortfall_bps"], is_ref,
                   rtol=1e-12, name="numeric side")


def test_side_errors():
    b = pa.record_batch({"exec_price": [1.0], "arrival_price": [1.0], "side": ["hold"]})
    with pytest.raises(ValueError, match="side column 'side'.*'hold'"):
        implementation_shortfall(b)
    with pytest.raises(KeyError, match="'arrival_mid'"):
        arrival_price_impact(b)


# ---------------------------------------------------------------- CUSUM


def cusum_reference(x, k, h):
    """Page's two-sided CUSUM, plain loop; stat = S+ if S+ >= S- else -S-; reset on alarm."""
    up = down = 0.0
    stat, alarm = [], []
    for v in x:
        up = max(0.0, up + v - k)
        down = max(0.0, down - v - k)
        stat.append(up if up >= down else -down)
        alarm.append(up > h or down > h)
        if alarm[-1]:
            up = down = 0.0
    return np.array(stat), np.array(alarm, dtype=float)


@pytest.mark.parametrize("k,h", [(0.5, 5.0), (0.0, 1.0), (0.05, 0.3)])
def test_cusum_matches_plain_loop(k, h):
    t = risk_table(3000, seed=3)
    mask = valid_mask(t["value"])
    stat, alarm = cusum_reference(to_numpy(t["value"])[mask], k, h)
    out = cusum(t, k=k, h=h)
    assert_matches(out["cusum_stat"], scatter(mask, stat), rtol=0, name="cusum_stat")
    assert_matches(out["cusum_alarm"], scatter(mask, alarm), rtol=0, name="cusum_alarm")
    assert out["cusum_alarm"].type == pa.bool_()
    assert 0 < np.nansum(scatter(mask, alarm)) < mask.sum()


def test_cusum_hand_case():
    b = pa.record_batch({"value": [3.0, 3.0, -1.0, -7.0]})
    out = cusum(b, k=1.0, h=3.0)
    assert out["cusum_stat"].to_pylist() == [2.0, 4.0, 0.0, -6.0]
    assert out["cusum_alarm"].to_pylist() == [False, True, False, True]


# ---------------------------------------------------------------- VaR / CVaR


@pytest.mark.parametrize("window", [1, 7, 100])
@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.5, 0.37])
def test_historical_var_matches_numpy_quantile(window, alpha):
    t = risk_table(1500, seed=4)
    mask = valid_mask(t["pnl"])
    ref = rolling_ref(to_numpy(t["pnl"]), mask, window, lambda w: -np.quantile(w, alpha))
    assert_matches(historical_var(t, alpha=alpha, window=window)["var"], ref, rtol=1e-12,
                   atol=1e-15, name="var")


@pytest.mark.parametrize("window", [1, 7, 100])
@pytest.mark.parametrize("alpha", [0.05, 0.3])
def test_historical_cvar_matches_numpy(window, alpha):
    t = risk_table(1500, seed=5)
    mask = valid_mask(t["pnl"])

    def cvar(w):
        return -np.mean(w[w <= np.quantile(w, alpha)])

    ref = rolling_ref(to_numpy(t["pnl"]), mask, window, cvar)
    out = historical_cvar(t, alpha=alpha, window=window)["cvar"]
    assert_matches(out, ref, rtol=1e-12, atol=1e-15, name="cvar")
    var = to_numpy(historical_var(t, alpha=alpha, window=window)["var"])
    got = to_numpy(out)
    assert (got[~np.isnan(got)] >= var[~np.isnan(got)] - 1e-12).all()    # CVaR >= VaR


@pytest.mark.parametrize("window", [2, 10, 100])
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_cornish_fisher_var_matches_scipy_moments(window, alpha):
    t = risk_table(1500, seed=6)
    mask = valid_mask(t["pnl"])
    z = scipy.stats.norm.ppf(alpha)

    v = to_numpy(t["pnl"])[mask]
    w = sliding(v, window)
    mu, sigma = w.mean(axis=1), w.std(axis=1, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = scipy.stats.skew(w, axis=1, bias=True)
        k = scipy.stats.kurtosis(w, axis=1, fisher=True, bias=True)
    zcf = z + (z**2 - 1) * s / 6 + (z**3 - 3 * z) * k / 24 - (2 * z**3 - 5 * z) * s**2 / 36
    cf = np.where(np.ptp(w, axis=1) == 0.0, -mu, -(mu + sigma * zcf))  # constant: -mu (doc)
    ref = scatter(mask, np.concatenate([np.full(window - 1, np.nan), cf]))
    # power sums vs scipy's two-pass moments: agree to ~1e-13 of the window's magnitude.
    magnitude = np.abs(w).mean(axis=1) + w.std(axis=1)
    atol = np.nan_to_num(scatter(mask, np.concatenate([np.zeros(window - 1), 1e-12 * magnitude])))
    out = cornish_fisher_var(t, alpha=alpha, window=window)["cf_var"]
    assert_matches(out, ref, rtol=1e-9, atol=atol, name="cf_var")
    if window == 10:
        assert np.isin(to_numpy(out), [0.0, -0.0]).any()    # flat runs: constant windows


def test_cornish_fisher_normal_case_reduces_to_gaussian_var():
    # symmetric, kurtosis-free sample is impossible exactly; check z from the normal quantile
    b = pa.record_batch({"pnl": [-1.0, 1.0]})
    # n=2: skew 0, excess kurtosis -2; sigma = sqrt(2)
    z = scipy.stats.norm.ppf(0.05)
    zcf = z + (z**3 - 3 * z) * -2 / 24
    assert cornish_fisher_var(b, window=2)["cf_var"].to_pylist()[1] == pytest.approx(
        -math.sqrt(2) * zcf, rel=1e-12)


# ---------------------------------------------------------------- Almgren–Chriss


def ac_discrete_reference(Q, T, sigma, lam, eta, N, perm=0.0):
    """Almgren & Chriss (2000): tau = T/N, eta~ = eta - perm tau/2,
    cosh(kappa tau) = 1 + tau^2 lam sigma^2 / (2 eta~), x_j = Q sinh(kappa(T - t_j))/sinh(kappa T).
    """
    tau = T / N
    eta_t = eta - perm * tau / 2
    kappa = np.arccosh(1 + tau**2 * lam * sigma**2 / (2 * eta_t)) / tau
    t = np.arange(N + 1) * tau
    return Q * np.sinh(kappa * (T - t)) / np.sinh(kappa * T)


@pytest.mark.parametrize("Q,T,sigma,lam,eta,N,perm", [
    (1e6, 5.0, 0.95, 2e-6, 2.5e-6, 5, 0.0),           # the paper's example scale
    (1e6, 5.0, 0.95, 2e-6, 2.5e-6, 5, 2.5e-7),
    (5000.0, 1.0, 0.3, 1e-3, 0.01, 50, 0.0),
    (-200.0, 10.0, 0.02, 1.0, 1e-4, 10, 0.0),           # negative Q: a buy programme
])
def test_optimal_ac_schedule_matches_closed_form(Q, T, sigma, lam, eta, N, perm):
    out = optimal_ac_schedule(Q, T, sigma, lam, eta, n_slices=N, permanent_impact=perm)
    assert out.schema.names == ["slice", "time", "holdings", "trade"]
    assert out["slice"].to_pylist() == list(range(N + 1))
    ref = ac_discrete_reference(Q, T, sigma, lam, eta, N, perm)
    x = to_numpy(out["holdings"])
    np.testing.assert_allclose(x, ref, rtol=1e-9, atol=1e-9 * abs(Q))
    assert x[0] == Q and x[-1] == 0.0
    trade = to_numpy(out["trade"])
    assert trade[0] == 0.0
    np.testing.assert_allclose(trade[1:], ref[:-1] - ref[1:], rtol=1e-9, atol=1e-9 * abs(Q))
    assert math.isclose(trade.sum(), Q, rel_tol=1e-12)
    np.testing.assert_allclose(to_numpy(out["time"]), np.arange(N + 1) * T / N, rtol=1e-15)
    assert (np.sign(trade[1:]) == np.sign(Q)).all()     # monotone liquidation


def test_optimal_ac_schedule_limits():
    # no risk aversion: straight line (TWAP); huge risk aversion stays finite (front-loaded)
    twap = to_numpy(optimal_ac_schedule(100.0, 4.0, 0.3, 0.0, 1e-3)["holdings"])
    np.testing.assert_allclose(twap, [100.0, 75.0, 50.0, 25.0, 0.0], rtol=1e-15)
    fast = to_numpy(optimal_ac_schedule(100.0, 10.0, 1.0, 1e6, 1e-9, n_slices=10)["holdings"])
    assert np.isfinite(fast).all() and fast[1] < 1e-6
    # many slices: kappa -> sqrt(lam sigma^2 / eta), the continuous trajectory
    Q, T, sigma, lam, eta = 1.0, 1.0, 0.5, 2.0, 0.1
    fine = optimal_ac_schedule(Q, T, sigma, lam, eta, n_slices=10000)
    k = math.sqrt(lam * sigma**2 / eta)
    t = to_numpy(fine["time"])
    np.testing.assert_allclose(to_numpy(fine["holdings"]),
                               Q * np.sinh(k * (T - t)) / np.sinh(k * T), rtol=1e-6, atol=1e-12)


def test_optimal_ac_schedule_errors():
    with pytest.raises(ValueError, match="T must be > 0"):
        optimal_ac_schedule(1.0, 0.0, 0.1, 1.0, 1.0)
    with pytest.raises(ValueError, match="eta must be > 0"):
        optimal_ac_schedule(1.0, 1.0, 0.1, 1.0, 0.0)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        optimal_ac_schedule(1.0, 1.0, 0.1, -1.0, 1.0)
    with pytest.raises(ValueError, match="n_slices must be >= 1"):
        optimal_ac_schedule(1.0, 1.0, 0.1, 1.0, 1.0, n_slices=0)
    with pytest.raises(ValueError, match="permanent_impact"):
        optimal_ac_schedule(1.0, 1.0, 0.1, 1.0, 1.0, n_slices=1, permanent_impact=5.0)
    with pytest.raises(ValueError, match="Q must be a finite"):
        optimal_ac_schedule(float("nan"), 1.0, 0.1, 1.0, 1.0)


# ---------------------------------------------------------------- invariants

FACTORIES = {
    "vwap": (lambda by=None: VWAP(by=by), ["vwap"]),
    "cusum": (lambda by=None: CUSUM(k=0.01, h=0.2, by=by), ["cusum_stat", "cusum_alarm"]),
    "historical_var": (lambda by=None: HistoricalVaR(alpha=0.1, window=9, by=by), ["var"]),
    "historical_cvar": (lambda by=None: HistoricalCVaR(alpha=0.2, window=9, by=by), ["cvar"]),
    "cornish_fisher_var": (lambda by=None: CornishFisherVaR(window=9, by=by), ["cf_var"]),
}

SPLIT_TABLE = risk_table(300, seed=7)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(0, 300), max_size=6), keyed=st.booleans())
def test_split_invariance(name, cuts, keyed):
    make, outputs = FACTORIES[name]
    assert_split_invariant(lambda: make("symbol" if keyed else None), SPLIT_TABLE, cuts, outputs)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_by_symbol_equals_each_symbol_alone(name):
    make, outputs = FACTORIES[name]
    assert_by_equivalent(lambda: make("symbol"), lambda: make(None), risk_table(1200, seed=8),
                         outputs)


def test_state_dict_round_trip_continues_exactly():
    assert_state_round_trip(lambda: HistoricalCVaR(window=20, by="symbol"),
                            risk_table(800, seed=9), 500, ["cvar"])


def test_errors_name_the_problem():
    b = pa.record_batch({"pnl": [0.1], "s": ["x"]})
    with pytest.raises(KeyError, match="'value'.*pnl, s"):
        cusum(b)
    with pytest.raises(TypeError, match="'s'.*string"):
        historical_var(b, column="s")
    with pytest.raises(KeyError, match="'price'"):
        vwap(b)
    for bad in (0.0, 1.0, -0.5, 2.0):
        with pytest.raises(ValueError, match="alpha must be in"):
            historical_var(b, alpha=bad)
        with pytest.raises(ValueError, match="alpha must be in"):
            cornish_fisher_var(b, alpha=bad)
    with pytest.raises(ValueError, match="window"):
        historical_cvar(b, window=0)
    with pytest.raises(ValueError, match="window must be >= 2"):
        cornish_fisher_var(b, window=1)
    with pytest.raises(ValueError, match="h must be > 0"):
        cusum(b, column="pnl", h=0.0)
    with pytest.raises(ValueError, match="k must be >= 0"):
        cusum(b, column="pnl", k=-1.0)
