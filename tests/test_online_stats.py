"""online_stats kernels against numpy/pandas references, split invariance and by= equivalence."""
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
    EWCov, EWMA, LogReturns, RollingZScore, WelfordMeanVar,
    ewcov, ewma, log_returns, rolling_zscore, welford_mean_var,
)

SCALES = [1.0, 1e-6, 1e6]


@pytest.mark.parametrize("scale", SCALES)
def test_log_returns_matches_numpy(scale):
    t = market_table(3000, seed=1, scale=scale)
    p = to_numpy(t["price"])
    p[::97] = -1.0  # non-positive prices are treated as missing
    t = t.set_column(t.schema.get_field_index("price"), "price", pa.array(p, from_pandas=True))
    mask = ~np.isnan(p) & (p > 0)
    v = p[mask]
    ref = scatter(mask, np.concatenate([[np.nan], np.log(v[1:] / v[:-1])]))
    assert_matches(log_returns(t, "price")["log_return"], ref, name="log_return")


@pytest.mark.parametrize("scale", SCALES)
def test_welford_matches_numpy_cumulative(scale):
    t = market_table(2000, seed=2, scale=scale)
    mask = valid_mask(t["price"])
    v = to_numpy(t["price"])[mask]
    n = np.arange(1, v.size + 1)
    mean = np.cumsum(v) / n
    var = np.array([np.var(v[: k + 1], ddof=1) if k else np.nan for k in range(v.size)])
    out = welford_mean_var(t)
    assert_matches(out["mean"], scatter(mask, mean), name="mean")
    assert_matches(out["variance"], scatter(mask, var), rtol=1e-8, name="variance")
    assert_matches(out["stddev"], scatter(mask, np.sqrt(var)), rtol=1e-8, name="stddev")


@pytest.mark.parametrize("alpha", [0.94, 0.1, 1.0])
@pytest.mark.parametrize("scale", SCALES)
def test_ewma_matches_pandas(alpha, scale):
    t = market_table(3000, seed=3, scale=scale)
    mask = valid_mask(t["price"])
    ref = pd.Series(to_numpy(t["price"])[mask]).ewm(alpha=alpha, adjust=False).mean()
    assert_matches(ewma(t, alpha=alpha)["ewma"], scatter(mask, ref.to_numpy()), name="ewma")


@pytest.mark.parametrize("alpha", [0.94, 0.2])
def test_ewcov_matches_pandas(alpha):
    t = market_table(3000, seed=4)
    t = t.append_column("x", t["bid"]).append_column("y", t["ask_size"])
    mask = valid_mask(t["x"], t["y"])
    df = pd.DataFrame({"x": to_numpy(t["x"])[mask], "y": to_numpy(t["y"])[mask]})
    ref = df["x"].ewm(alpha=alpha, adjust=False).cov(df["y"], bias=True).to_numpy().copy()
    ref[0] = 0.0  # spec: c_0 = 0 (pandas leaves the single-observation value undefined)
    assert_matches(ewcov(t, alpha=alpha)["ewcov"], scatter(mask, ref), rtol=1e-9, atol=1e-18,
                   name="ewcov")


@pytest.mark.parametrize("window", [2, 20, 100])
@pytest.mark.parametrize("scale", SCALES)
def test_rolling_zscore_matches_numpy_windows(window, scale):
    t = market_table(3000, seed=5, scale=scale)
    mask = valid_mask(t["price"])
    v = to_numpy(t["price"])[mask]
    w = np.lib.stride_tricks.sliding_window_view(v, window)
    sd = w.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (v[window - 1:] - w.mean(axis=1)) / sd
        cond = np.abs(w.mean(axis=1)) / sd
    z[w.max(axis=1) == w.min(axis=1)] = np.nan  # constant window: std = 0 -> null
    ref = np.concatenate([np.full(window - 1, np.nan), z])
    # x - mean cancels when a window's spread is tiny next to its level: allow rounding of
    # the level (1e-13 relative), amplified by that condition number, besides rtol 1e-9.
    cond = np.concatenate([np.zeros(window - 1), cond])
    atol = np.nan_to_num(scatter(mask, 1e-13 * np.nan_to_num(cond)))
    assert_matches(rolling_zscore(t, window=window)["zscore"], scatter(mask, ref),
                   rtol=1e-9, atol=atol, name="zscore")


FACTORIES = {
    "log_returns": (lambda by=None: LogReturns(by=by), ["log_return"]),
    "welford": (lambda by=None: WelfordMeanVar(by=by), ["mean", "variance", "stddev"]),
    "ewma": (lambda by=None: EWMA(alpha=0.3, by=by), ["ewma"]),
    "ewcov": (lambda by=None: EWCov("bid", "ask_size", alpha=0.3, by=by), ["ewcov"]),
    "zscore": (lambda by=None: RollingZScore(window=7, by=by), ["zscore"]),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(0, 400), max_size=6), keyed=st.booleans())
def test_split_invariance(name, cuts, keyed):
    make, outputs = FACTORIES[name]
    by = "symbol" if keyed else None
    assert_split_invariant(lambda: make(by), market_table(400, seed=6), cuts, outputs)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_by_symbol_equals_each_symbol_alone(name):
    make, outputs = FACTORIES[name]
    assert_by_equivalent(lambda: make("symbol"), lambda: make(None), market_table(1500, seed=7),
                         outputs)


def test_state_dict_round_trip_continues_exactly():
    restored = assert_state_round_trip(lambda: RollingZScore(window=10, by="symbol"),
                                       market_table(1000, seed=8), 600, ["zscore"])
    restored.reset()
    assert restored.keys == []


def test_upstream_call_forms():
    b = pa.record_batch({"value": [1.0, 2.0, 4.0]})
    assert ewma(b, alpha=0.5)["ewma"].to_pylist() == [1.0, 1.5, 2.75]
    b2 = pa.record_batch({"symbol": ["A", "A"], "price": [1.0, 2.0], "extra": ["x", "y"]})
    out = log_returns(b2, "price")
    assert out.schema.names == ["symbol", "price", "extra", "log_return"]


def test_output_replaced_not_duplicated():
    b = pa.record_batch({"price": [1.0, 2.0]})
    out = ewma(ewma(b, alpha=0.5), alpha=1.0)
    assert out.schema.names == ["price", "ewma"]
    assert out["ewma"].to_pylist() == [1.0, 2.0]


def test_errors_name_the_problem():
    b = pa.record_batch({"a": [1.0], "b": [2.0], "s": ["x"]})
    with pytest.raises(ValueError, match="a, b"):
        ewma(b)
    with pytest.raises(KeyError, match="'nope'.*a, b, s"):
        ewma(b, column="nope")
    with pytest.raises(TypeError, match="'s'.*string"):
        ewma(b, column="s")
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="alpha"):
            ewma(b, column="a", alpha=bad)
    with pytest.raises(ValueError, match="window"):
        rolling_zscore(b, column="a", window=0)
    with pytest.raises(TypeError, match="RecordBatch"):
        ewma({"a": [1.0]})


def test_integer_decimal_float32_inputs_are_cast():
    import decimal
    vals = [1, 2, 4]
    for arr in (pa.array(vals, pa.int32()), pa.array(vals, pa.float32()),
                pa.array([decimal.Decimal(v) for v in vals], pa.decimal128(10, 2))):
        out = ewma(pa.record_batch({"x": arr}), alpha=0.5)
        assert out["ewma"].to_pylist() == [1.0, 1.5, 2.75]


def test_table_in_table_out_over_chunks():
    t = market_table(500, seed=9)
    chunked = pa.concat_tables([t.slice(0, 123), t.slice(123, 200), t.slice(323)])
    out = ewma(chunked, alpha=0.2)
    assert isinstance(out, pa.Table)
    assert np.array_equal(to_numpy(out["ewma"]), to_numpy(ewma(t, alpha=0.2)["ewma"]),
                          equal_nan=True)


def test_sliced_batch_reads_offsets():
    t = market_table(300, seed=10).combine_chunks().to_batches()[0]
    sliced = t.slice(37, 100)
    assert np.array_equal(to_numpy(ewma(sliced, alpha=0.2)["ewma"]),
                          to_numpy(ewma(pa.RecordBatch.from_pylist(sliced.to_pylist(),
                                                                  schema=sliced.schema),
                                        alpha=0.2)["ewma"]), equal_nan=True)


def test_key_encoding_cache_never_confuses_batches():
    """Keyed kernels share one encoding of a batch's key column; fresh batches (new buffers,
    slices of one buffer) must each be encoded as themselves."""
    rng = np.random.default_rng(40)
    keyed = EWMA(alpha=0.5, by="symbol")
    plain = {}
    for round_ in range(60):
        keys = rng.choice(["A", "B", "C", "D"], size=rng.integers(1, 50))
        values = rng.normal(size=keys.size)
        batch = pa.record_batch({"symbol": pa.array(keys), "price": values})
        if round_ % 3 == 0:
            batch = batch.slice(keys.size // 3)
        got = keyed(batch)["ewma"].to_pylist()
        for key, x, y in zip(batch["symbol"].to_pylist(), batch["price"].to_pylist(), got):
            prev = plain.get(key)
            plain[key] = x if prev is None else 0.5 * x + 0.5 * prev
            assert y == plain[key]
