"""Stream operators: per-symbol state equals each symbol alone (pandas/numpy references),
split invariance, checkpoint round trips, factories."""
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from kernel_testing import assert_matches, market_table, split_at, to_numpy
from sabot import fintech
from sabot.fintech import (
    EWMA, OpenInterestDelta, StatelessKernelOperator, SymbolKeyedOperator, TriangularArbitrage,
    create_ewma_operator, create_log_returns_operator, create_midprice_operator,
    create_ofi_operator, create_vwap_operator, ewma, triangular_arbitrage,
)


def run_split(op, table, cuts):
    return pa.Table.from_batches([op(b) for b in split_at(table, cuts)])


def per_symbol_reference(table, fn):
    """``fn(values of one symbol's valid rows)`` scattered back; NaN elsewhere."""
    sym = np.asarray(table["symbol"].to_pylist())
    x = to_numpy(table["price"])
    out = np.full(x.size, np.nan)
    for s in np.unique(sym):
        rows = np.flatnonzero((sym == s) & ~np.isnan(x))
        out[rows] = fn(x[rows])
    return out


@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(0, 600), max_size=6))
def test_ewma_operator_per_symbol_matches_pandas(cuts):
    t = market_table(600, seed=1)
    out = run_split(create_ewma_operator(alpha=0.3), t, cuts)
    ref = per_symbol_reference(t, lambda v: pd.Series(v).ewm(alpha=0.3, adjust=False).mean())
    assert_matches(out["ewma"], ref, name="ewma")


@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(0, 600), max_size=6))
def test_log_returns_operator_per_symbol_matches_numpy(cuts):
    t = market_table(600, seed=2)
    out = run_split(create_log_returns_operator(), t, cuts)
    ref = per_symbol_reference(t, lambda v: np.concatenate([[np.nan], np.log(v[1:] / v[:-1])]))
    assert_matches(out["log_return"], ref, name="log_return")


def test_symbol_keyed_operator_from_class_or_instance():
    t = market_table(800, seed=3)
    whole = EWMA(alpha=0.2, by="symbol")(t)
    for op in (SymbolKeyedOperator(EWMA, alpha=0.2), SymbolKeyedOperator(EWMA(alpha=0.2)),
               SymbolKeyedOperator(EWMA(alpha=0.2, by="symbol"))):
        got = run_split(op, t, [100, 555])
        assert np.array_equal(to_numpy(got["ewma"]), to_numpy(whole["ewma"]), equal_nan=True)
    venue = t.append_column("venue", t["symbol"])
    keyed = SymbolKeyedOperator(EWMA, symbol_column="venue", alpha=0.2)(venue)
    assert np.array_equal(to_numpy(keyed["ewma"]), to_numpy(whole["ewma"]), equal_nan=True)
    oi = t.append_column("open_interest", t["volume"])
    got = SymbolKeyedOperator(OpenInterestDelta)(oi)
    assert np.array_equal(to_numpy(got["oi_delta"]),
                          to_numpy(OpenInterestDelta(by="symbol")(oi)["oi_delta"]), equal_nan=True)


def test_operator_checkpoint_round_trip():
    t = market_table(900, seed=4)
    whole = create_ewma_operator(alpha=0.1)(t)
    op = create_ewma_operator(alpha=0.1)
    op(t.slice(0, 400))
    saved = pickle.loads(pickle.dumps(op.state_dict()))
    restored = create_ewma_operator(alpha=0.1)
    restored.load_state_dict(saved)
    assert np.array_equal(to_numpy(restored(t.slice(400))["ewma"]),
                          to_numpy(whole["ewma"])[400:], equal_nan=True)
    restored.reset()
    assert restored.kernel.keys == []
    with pytest.raises(ValueError, match="version"):
        restored.load_state_dict({"version": 99})
    with pytest.raises(ValueError, match="state was saved by"):
        create_ewma_operator(alpha=0.5).load_state_dict(saved)


def test_stateless_operator_keeps_function_form_state():
    t = market_table(700, seed=5)
    op = StatelessKernelOperator(lambda b: ewma(b, alpha=0.25, by="symbol"))
    got = run_split(op, t, [50, 300, 301])
    whole = EWMA(alpha=0.25, by="symbol")(t)
    assert np.array_equal(to_numpy(got["ewma"]), to_numpy(whole["ewma"]), equal_nan=True)
    # checkpoint and restore into a fresh operator
    op2 = StatelessKernelOperator(lambda b: ewma(b, alpha=0.25, by="symbol"))
    op2(t.slice(0, 200))
    op3 = StatelessKernelOperator(lambda b: ewma(b, alpha=0.25, by="symbol"))
    op3.load_state_dict(pickle.loads(pickle.dumps(op2.state_dict())))
    assert np.array_equal(to_numpy(op3(t.slice(200))["ewma"]), to_numpy(whole["ewma"])[200:],
                          equal_nan=True)


def test_stateless_operator_with_kwargs():
    b = pa.record_batch({"spot_ab": [1.0], "spot_bc": [2.0], "spot_ac": [2.001]})
    op = StatelessKernelOperator(triangular_arbitrage, fees_bps=4.0)
    assert op(b)["arb_edge_bps"].to_pylist() == pytest.approx([1.0], rel=1e-9)
    assert op.state_dict()["scope"]["kernels"] == {}


def test_operator_errors():
    with pytest.raises(TypeError, match="keeps no state.*StatelessKernelOperator"):
        SymbolKeyedOperator(TriangularArbitrage)
    with pytest.raises(TypeError, match="Kernel class or instance"):
        SymbolKeyedOperator(ewma)
    with pytest.raises(ValueError, match="keyed by 'venue'"):
        SymbolKeyedOperator(EWMA(by="venue"))
    with pytest.raises(TypeError, match="callable"):
        StatelessKernelOperator(3)
    with pytest.raises(ValueError, match="alpha"):
        create_ewma_operator(alpha=2.0)
    with pytest.raises(KeyError, match="'symbol'"):
        create_ewma_operator()(pa.record_batch({"price": [1.0]}))


# ------------------------------------------------------------------ kernels written elsewhere


def test_midprice_operator():
    if not hasattr(fintech, "midprice"):
        with pytest.raises(ImportError, match="midprice"):
            create_midprice_operator()
        pytest.skip("midprice (microstructure) is not in this build yet")
    t = market_table(500, seed=6)
    out = create_midprice_operator()(t)
    assert_matches(out["midprice"], (to_numpy(t["bid"]) + to_numpy(t["ask"])) / 2,
                   name="midprice")


def test_ofi_operator():
    if not hasattr(fintech, "OFI"):
        with pytest.raises(ImportError, match="OFI"):
            create_ofi_operator()
        pytest.skip("OFI (microstructure) is not in this build yet")
    t = market_table(600, seed=7)
    out = run_split(create_ofi_operator(), t, [200, 401])
    whole = fintech.OFI(by="symbol")(t)
    assert np.array_equal(to_numpy(out["ofi"]), to_numpy(whole["ofi"]), equal_nan=True)
    # each symbol alone, by the Cont–Kukanov–Stoikov definition written plainly
    sym = np.asarray(t["symbol"].to_pylist())
    cols = {c: to_numpy(t[c]) for c in ("bid", "ask", "bid_size", "ask_size")}
    ref = np.full(t.num_rows, np.nan)
    for s in np.unique(sym):
        rows = [i for i in np.flatnonzero(sym == s)
                if not any(np.isnan(cols[c][i]) for c in cols)]
        for prev, cur in zip(rows[:-1], rows[1:]):
            b, a, B, A = (cols[c][cur] for c in ("bid", "ask", "bid_size", "ask_size"))
            b0, a0, B0, A0 = (cols[c][prev] for c in ("bid", "ask", "bid_size", "ask_size"))
            ref[cur] = ((b >= b0) * B - (b <= b0) * B0 - (a <= a0) * A + (a >= a0) * A0)
    assert_matches(out["ofi"], ref, name="ofi")


def test_vwap_operator():
    if not hasattr(fintech, "VWAP"):
        with pytest.raises(ImportError, match="VWAP"):
            create_vwap_operator()
        pytest.skip("VWAP (execution_risk) is not in this build yet")
    t = market_table(600, seed=8)
    out = run_split(create_vwap_operator(), t, [123, 456])
    sym = np.asarray(t["symbol"].to_pylist())
    p, v = to_numpy(t["price"]), to_numpy(t["volume"])
    ref = np.full(t.num_rows, np.nan)
    for s in np.unique(sym):
        rows = np.flatnonzero((sym == s) & ~np.isnan(p) & ~np.isnan(v))
        ref[rows] = np.cumsum(p[rows] * v[rows]) / np.cumsum(v[rows])
    assert_matches(out["vwap"], ref, name="vwap")


def test_operators_in_a_stream_map():
    from sabot.api import Stream

    t = market_table(900, seed=9)
    ewma_op = create_ewma_operator(alpha=0.2)
    out = Stream.from_table(t, batch_size=128).map(ewma_op).map(
        StatelessKernelOperator(lambda b: fintech.log_returns(b, by="symbol"))).collect()
    assert np.array_equal(to_numpy(out["ewma"]),
                          to_numpy(EWMA(alpha=0.2, by="symbol")(t)["ewma"]), equal_nan=True)
    assert np.array_equal(to_numpy(out["log_return"]),
                          to_numpy(fintech.LogReturns(by="symbol")(t)["log_return"]),
                          equal_nan=True)
