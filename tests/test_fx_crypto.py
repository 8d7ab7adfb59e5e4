"""fx_crypto kernels against numpy formulas written plainly, hand-computed triangles, invariants."""
import pickle

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from kernel_testing import (
    assert_by_equivalent, assert_matches, assert_split_invariant, scatter, to_numpy, valid_mask,
)
from sabot.fintech import (
    OpenInterestDelta, StateScope, TriangularArbitrage,
    basis_annualized, carry_signal, cash_and_carry_edge, cip_basis, forward_points, funding_apr,
    funding_cost, open_interest_delta, perp_fair_price, triangular_arbitrage,
)


def fx_table(n=1500, seed=0, null_frac=0.03, nan_frac=0.02):
    """Random FX/perp quotes with nulls, NaNs and a few non-positive prices."""
    rng = np.random.default_rng(seed)
    ab = 1.1 * np.exp(rng.normal(0, 0.01, n))
    bc = 150.0 * np.exp(rng.normal(0, 0.01, n))
    ac = ab * bc * np.exp(rng.normal(0, 0.002, n))       # near parity, either side
    spot = 60000.0 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    cols = {
        "symbol": pa.array(rng.choice(["BTC-PERP", "ETH-PERP", "SOL-PERP"], n)),
        "spot_ab": ab, "spot_bc": bc, "spot_ac": ac,
        "spot": spot,
        "forward": spot * np.exp(rng.normal(0.01, 0.01, n)),
        "r_dom": rng.normal(0.04, 0.02, n),
        "r_for": rng.normal(0.02, 0.02, n),
        "volatility": rng.uniform(0.05, 0.8, n),
        "funding_rate": rng.normal(1e-4, 2e-4, n),
        "position": rng.normal(0, 5, n),
        "price": spot,
        "spot_price": spot,
        "perp_price": spot * (1 + rng.normal(5e-4, 1e-3, n)),
        "open_interest": 1e6 + np.cumsum(rng.normal(0, 1e3, n)),
    }
    arrays = {}
    for name, values in cols.items():
        if isinstance(values, pa.Array):
            arrays[name] = values
            continue
        values = np.asarray(values, dtype=float).copy()
        values[rng.uniform(size=n) < nan_frac] = np.nan
        arrays[name] = pa.array(values, mask=rng.uniform(size=n) < null_frac)
    return pa.table(arrays)


def col(t, name):
    return to_numpy(t[name])


def with_col(t, name, values):
    return t.set_column(t.schema.get_field_index(name), name, pa.array(values, from_pandas=True))


# ------------------------------------------------------------------ triangular arbitrage


def _route(out):
    return out["arb_route"].to_pylist()


def test_triangular_hand_cases():
    b = pa.record_batch({
        "spot_ab": [1.1, 1.0, 1.0, 1.0, 1.0],
        "spot_bc": [2.0, 2.0, 2.0, 2.0, 2.0],
        "spot_ac": [2.0, 2.1, 2.0, 2.001, 1.999],
    })
    out = triangular_arbitrage(b)
    # 1 A -> 1.1 B -> 2.2 C -> 1.1 A: +10% forward; reverse 2/2.2 - 1
    # 1 A -> 2.1 C -> 1.05 B -> 1.05 A: +5% reverse
    # parity: both cycles 0 -> 'none'; 2.001/2 - 1 = +5 bps reverse; 2/1.999 - 1 forward
    expected = [1000.0, 500.0, 0.0, 5.0, (2.0 / 1.999 - 1) * 1e4]
    assert out["arb_edge_bps"].to_pylist() == pytest.approx(expected, rel=1e-9)
    assert _route(out) == ["AB->BC->CA", "AC->CB->BA", "none", "AC->CB->BA", "AB->BC->CA"]
    assert pa.types.is_dictionary(out["arb_route"].type)


def test_triangular_fees_param_and_column():
    b = pa.record_batch({"spot_ab": [1.0, 1.0], "spot_bc": [2.0, 2.0], "spot_ac": [2.001, 2.001]})
    # 5 bps gross on the reverse cycle: 4 bps of fees leave 1, 6 bps of fees kill it
    out = triangular_arbitrage(b, fees_bps=4.0)
    assert out["arb_edge_bps"].to_pylist() == pytest.approx([1.0, 1.0], rel=1e-9)
    assert _route(out) == ["AC->CB->BA"] * 2
    out = triangular_arbitrage(b, fees_bps=6.0)
    assert out["arb_edge_bps"].to_pylist() == pytest.approx([-1.0, -1.0], rel=1e-9)
    assert _route(out) == ["none", "none"]
    # a fees_bps column wins over the parameter, row by row
    with_fees = b.append_column("fees_bps", pa.array([6.0, 4.0]))
    out = triangular_arbitrage(with_fees, fees_bps=0.0)
    assert out["arb_edge_bps"].to_pylist() == pytest.approx([-1.0, 1.0], rel=1e-9)
    assert _route(out) == ["none", "AC->CB->BA"]
    # fees_bps=None means no fees
    assert triangular_arbitrage(b, fees_bps=None)["arb_edge_bps"].to_pylist() == \
        pytest.approx([5.0, 5.0], rel=1e-9)


@pytest.mark.parametrize("fees", [None, 3.0])
def test_triangular_matches_numpy(fees):
    t = fx_table(seed=1)
    ab, bc, ac = (col(t, c) for c in ("spot_ab", "spot_bc", "spot_ac"))
    ab[::101] = 0.0     # a non-positive rate makes the row null
    bc[::103] = -1.0
    t = with_col(with_col(t, "spot_ab", ab), "spot_bc", bc)
    fee = 0.0 if fees is None else fees
    with np.errstate(divide="ignore", invalid="ignore"):
        fwd = (ab * bc / ac - 1.0) * 1e4 - fee
        rev = (ac / (ab * bc) - 1.0) * 1e4 - fee
    best = np.maximum(fwd, rev)
    best[~((ab > 0) & (bc > 0) & (ac > 0))] = np.nan
    out = triangular_arbitrage(t, fees_bps=fees)
    assert_matches(out["arb_edge_bps"], best, name="arb_edge_bps")
    routes = np.where(best > 0, np.where(fwd >= rev, "AB->BC->CA", "AC->CB->BA"), "none")
    got = out["arb_route"].to_pylist()
    for i in range(len(got)):
        if np.isnan(best[i]):
            assert got[i] is None
        else:
            assert got[i] == routes[i], i
    if fees:  # without fees one cycle is always >= 0; with them some triangles close
        assert 0 < sum(r == "none" for r in got) < len(got)


def test_seed_snippets_run_with_default_columns():
    b = pa.record_batch({"spot_ab": [1.08], "spot_bc": [157.0], "spot_ac": [169.9]})
    out = triangular_arbitrage(b)
    assert out.schema.names == ["spot_ab", "spot_bc", "spot_ac", "arb_edge_bps", "arb_route"]
    c = pa.record_batch({"spot_price": [60000.0], "perp_price": [60030.0],
                         "funding_rate": [0.0001]})
    out = cash_and_carry_edge(c)
    assert out.schema.names[-1] == "carry_edge_bps"
    expected = ((60030.0 / 60000.0 - 1.0) * 365 / 90 + 0.0001 * 3 * 365) * 1e4
    assert out["carry_edge_bps"][0].as_py() == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------ FX formulas


@pytest.mark.parametrize("T", [1.0, 0.25, 1 / 365])
def test_forward_points_and_cip_basis(T):
    t = fx_table(seed=2)
    s, f, rd, rf = (col(t, c) for c in ("spot", "forward", "r_dom", "r_for"))
    ref = s * (np.exp((rd - rf) * T) - 1.0)
    assert_matches(forward_points(t, T_years=T)["forward_points"], ref, name="forward_points")
    ref = (np.log(f / s) / T - (rd - rf)) * 1e4
    assert_matches(cip_basis(t, T_years=T)["cip_basis"], ref, name="cip_basis")


def test_cip_basis_is_zero_at_parity():
    s = np.array([1.1, 150.0, 0.7])
    rd, rf, T = np.array([0.05, 0.001, 0.03]), np.array([0.01, 0.04, 0.03]), 0.5
    b = pa.record_batch({"spot": s, "forward": s * np.exp((rd - rf) * T), "r_dom": rd,
                         "r_for": rf})
    assert np.abs(to_numpy(cip_basis(b, T_years=T)["cip_basis"])).max() < 1e-9
    pts = to_numpy(forward_points(b, T_years=T)["forward_points"])
    np.testing.assert_allclose(s + pts, s * np.exp((rd - rf) * T), rtol=1e-12)


def test_carry_signal_with_and_without_volatility():
    t = fx_table(seed=3)
    rd, rf, vol = col(t, "r_dom"), col(t, "r_for"), col(t, "volatility")
    vol[::50] = 0.0    # zero volatility -> null
    t = with_col(t, "volatility", vol)
    with np.errstate(divide="ignore"):
        ref = (rd - rf) / (vol * 2.0)
    ref[~(vol > 0)] = np.nan
    assert_matches(carry_signal(t, risk_adj_factor=2.0)["carry_signal"], ref, name="carry")
    plain = t.drop_columns(["volatility"])
    assert_matches(carry_signal(plain, risk_adj_factor=2.0)["carry_signal"], rd - rf,
                   name="carry (no vol)")


@pytest.mark.parametrize("hours", [8.0, 1.0, 4.0])
def test_funding_apr_cost_fair_price(hours):
    t = fx_table(seed=4)
    rate, pos, price, spot = (col(t, c) for c in ("funding_rate", "position", "price",
                                                  "spot_price"))
    assert_matches(funding_apr(t, funding_freq_hours=hours)["funding_apr"],
                   rate * (24.0 / hours) * 365.0, name="funding_apr")
    assert_matches(funding_cost(t)["funding_cost"], pos * price * rate, name="funding_cost")
    assert_matches(perp_fair_price(t, funding_freq_hours=hours)["perp_fair_price"],
                   spot * (1.0 + rate), name="perp_fair_price")


@pytest.mark.parametrize("T_days", [90.0, 7.0])
def test_basis_and_cash_and_carry_edge(T_days):
    t = fx_table(seed=5)
    spot, perp, rate = col(t, "spot_price"), col(t, "perp_price"), col(t, "funding_rate")
    spot[::77] = 0.0
    t = with_col(t, "spot_price", spot)
    with np.errstate(divide="ignore"):
        basis = (perp / spot - 1.0) * 365.0 / T_days
    basis[~(spot > 0)] = np.nan
    assert_matches(basis_annualized(t, T_days=T_days)["basis_apr"], basis, name="basis_apr")
    fees = 12.0
    funding = rate * (24.0 / 8.0) * 365.0
    edge = (basis + funding) * 1e4 - fees * 365.0 / T_days
    assert_matches(cash_and_carry_edge(t, fees_bps=fees, T_days=T_days)["carry_edge_bps"],
                   edge, name="carry_edge_bps")


# ------------------------------------------------------------------ open interest delta


def test_open_interest_delta_matches_numpy():
    t = fx_table(seed=6)
    mask = valid_mask(t["open_interest"])
    v = col(t, "open_interest")[mask]
    ref = scatter(mask, np.concatenate([[np.nan], np.diff(v)]))
    assert_matches(open_interest_delta(t)["oi_delta"], ref, name="oi_delta")


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(0, 300), max_size=6), keyed=st.booleans())
def test_open_interest_delta_split_invariance(cuts, keyed):
    by = "symbol" if keyed else None
    assert_split_invariant(lambda: OpenInterestDelta(by=by), fx_table(300, seed=7), cuts,
                           ["oi_delta"])


def test_open_interest_delta_by_symbol_equals_each_alone():
    assert_by_equivalent(lambda: OpenInterestDelta(by="symbol"), lambda: OpenInterestDelta(),
                         fx_table(900, seed=8), ["oi_delta"])


def test_open_interest_delta_state_dict_and_scope():
    t = fx_table(600, seed=9)
    whole = OpenInterestDelta(by="symbol")(t)
    first = OpenInterestDelta(by="symbol")
    first(t.slice(0, 250))
    restored = OpenInterestDelta(by="symbol")
    restored.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))
    assert np.array_equal(col(restored(t.slice(250)), "oi_delta"),
                          col(whole, "oi_delta")[250:], equal_nan=True)
    # function form inside a state scope continues across batches like the class
    scope = StateScope()
    parts = []
    for b in t.to_batches(max_chunksize=97):
        with scope.active():
            parts.append(open_interest_delta(b, by="symbol"))
    assert np.array_equal(col(pa.Table.from_batches(parts), "oi_delta"),
                          col(whole, "oi_delta"), equal_nan=True)


# ------------------------------------------------------------------ rules and errors


def test_null_and_nan_rows_are_null():
    b = pa.record_batch({
        "spot_ab": pa.array([1.0, None, np.nan, 1.0], from_pandas=False),
        "spot_bc": [2.0, 2.0, 2.0, 2.0], "spot_ac": [2.0, 2.0, 2.0, 2.0],
    })
    out = triangular_arbitrage(b)
    assert out["arb_edge_bps"].is_null().to_pylist() == [False, True, True, False]
    assert out["arb_route"].is_null().to_pylist() == [False, True, True, False]


def test_table_in_table_out_and_replace():
    t = fx_table(400, seed=10)
    chunked = pa.concat_tables([t.slice(0, 150), t.slice(150)])
    out = funding_apr(funding_apr(chunked))
    assert isinstance(out, pa.Table)
    assert out.schema.names.count("funding_apr") == 1
    assert np.array_equal(col(out, "funding_apr"), col(funding_apr(t), "funding_apr"),
                          equal_nan=True)


def test_errors_name_the_problem():
    b = pa.record_batch({"spot_ab": [1.0], "spot_bc": ["x"], "spot_ac": [1.0],
                         "spot_price": [1.0], "funding_rate": [0.0]})
    with pytest.raises(TypeError, match="'spot_bc'.*string"):
        triangular_arbitrage(b)
    with pytest.raises(KeyError, match="'perp_price'.*spot_ab"):
        cash_and_carry_edge(b)
    with pytest.raises(KeyError, match="'open_interest'"):
        open_interest_delta(b)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="fees_bps"):
            TriangularArbitrage(fees_bps=bad)
        with pytest.raises(ValueError, match="fees_bps"):
            cash_and_carry_edge(b, fees_bps=bad)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="T_years"):
            forward_points(b, T_years=bad)
        with pytest.raises(ValueError, match="T_days"):
            basis_annualized(b, T_days=bad)
        with pytest.raises(ValueError, match="funding_freq_hours"):
            funding_apr(b, funding_freq_hours=bad)
        with pytest.raises(ValueError, match="risk_adj_factor"):
            carry_signal(b, risk_adj_factor=bad)
    with pytest.raises(TypeError, match="RecordBatch"):
        funding_apr({"funding_rate": [1.0]})
