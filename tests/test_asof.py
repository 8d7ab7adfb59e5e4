"""ASOF join (spec kernels.md §4) against pandas.merge_asof, the independent reference.

pandas gives the matched right row through a row-id column; the expected output is the right's
value columns taken at those rows (so nulls and NaN in right values must come through exactly).
"""
from __future__ import annotations

import datetime as dt
import math
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sabot.fintech import AsofJoinKernel, asof_join, asof_join_table

DIRECTIONS = ["backward", "forward", "nearest"]


def _values_equal(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x is None or y is None:
            if not (x is None and y is None):
                return False
        elif isinstance(x, float) and math.isnan(x):
            if not (isinstance(y, float) and math.isnan(y)):
                return False
        elif x != y:
            return False
    return True


def _pandas_rows(left: pa.Table, right: pa.Table, *, on, by, tolerance, direction, exact):
    """Matched right row per left row (-1 = none), computed by pandas.merge_asof."""
    def frame(t):
        t = t.select([on] + ([by] if by else []))
        if by and pa.types.is_dictionary(t.schema.field(by).type):
            t = t.set_column(1, by, t.column(by).cast(t.schema.field(by).type.value_type))
        if by and pa.types.is_large_string(t.schema.field(by).type):
            t = t.set_column(1, by, t.column(by).cast(pa.string()))
        return t.to_pandas()

    if left.num_rows == 0 or right.num_rows == 0:  # pandas cannot factorize empty string keys
        return np.full(left.num_rows, -1, dtype=np.int64)
    ldf, rdf = frame(left), frame(right)
    rdf["__rid"] = np.arange(len(rdf), dtype=np.int64)
    out = pd.merge_asof(ldf, rdf, on=on, by=by, tolerance=tolerance, direction=direction,
                        allow_exact_matches=exact)
    return out["__rid"].fillna(-1).astype(np.int64).to_numpy()


def _expected_values(right: pa.Table, rows: np.ndarray, column: str) -> list:
    values = right.column(column).to_pylist()
    return [values[r] if r >= 0 else None for r in rows]


# ---------------------------------------------------------------- hypothesis differential

@st.composite
def joins(draw):
    n_left = draw(st.integers(0, 25))
    n_right = draw(st.integers(0, 25))
    lkeys = draw(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=n_left, max_size=n_left))
    rkeys = draw(st.lists(st.sampled_from(["b", "c", "d", None]), min_size=n_right, max_size=n_right))
    lts = sorted(draw(st.lists(st.integers(0, 40), min_size=n_left, max_size=n_left)))
    rts = sorted(draw(st.lists(st.integers(0, 40), min_size=n_right, max_size=n_right)))
    vals = draw(st.lists(st.one_of(st.none(), st.just(float("nan")),
                                   st.floats(-1e6, 1e6, allow_nan=False)),
                         min_size=n_right, max_size=n_right))
    ivals = draw(st.lists(st.one_of(st.none(), st.integers(-100, 100)), min_size=n_right, max_size=n_right))
    left = pa.table({"t": pa.array(lts, pa.int64()), "k": pa.array(lkeys, pa.string()),
                     "x": pa.array(np.arange(n_left, dtype=np.float64))})
    right = pa.table({"t": pa.array(rts, pa.int64()), "k": pa.array(rkeys, pa.string()),
                      "v": pa.array(vals, pa.float64()), "w": pa.array(ivals, pa.int64()),
                      "s": pa.array([None if v is None else f"s{v}" for v in ivals], pa.string())})
    return left, right


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=joins(), direction=st.sampled_from(DIRECTIONS), exact=st.booleans(),
       tol=st.one_of(st.none(), st.integers(0, 10)), use_by=st.booleans(),
       key_kind=st.sampled_from(["string", "dictionary", "large_string"]))
def test_matches_pandas_merge_asof(data, direction, exact, tol, use_by, key_kind):
    left, right = data
    by = "k" if use_by else None
    if key_kind == "dictionary":
        left = left.set_column(1, "k", left.column("k").dictionary_encode())
        right = right.set_column(1, "k", right.column("k").dictionary_encode())
    elif key_kind == "large_string":
        left = left.set_column(1, "k", left.column("k").cast(pa.large_string()))
    expected_rows = _pandas_rows(left, right, on="t", by=by, tolerance=tol, direction=direction,
                                 exact=exact)
    lb = left.combine_chunks().to_batches()
    lb = lb[0] if lb else pa.RecordBatch.from_pylist([], schema=left.schema)
    rb = right.combine_chunks().to_batches()
    rb = rb[0] if rb else pa.RecordBatch.from_pylist([], schema=right.schema)
    out = asof_join(lb, rb, on="t", by=by, tolerance_ms=tol, direction=direction,
                    allow_exact_matches=exact, on_unit="ms")
    assert isinstance(out, pa.RecordBatch)
    assert out.num_rows == left.num_rows
    assert out.column("x").to_pylist() == left.column("x").to_pylist()
    right_names = ["v", "w", "s"] if by else ["k_right", "v", "w", "s"]
    assert out.schema.names == ["t", "k", "x"] + right_names
    for name in ["v", "w", "s"]:
        got = out.column(name).to_pylist()
        assert _values_equal(got, _expected_values(right, expected_rows, name)), name
    # Table in -> Table out, same values
    out_t = asof_join(left, right, on="t", by=by, tolerance_ms=tol, direction=direction,
                      allow_exact_matches=exact)
    assert isinstance(out_t, pa.Table)
    assert _values_equal(out_t.column("v").to_pylist(), out.column("v").to_pylist())


@settings(max_examples=60, deadline=None)
@given(data=joins(), direction=st.sampled_from(DIRECTIONS), exact=st.booleans(),
       tol=st.one_of(st.none(), st.integers(0, 10)), split=st.integers(1, 6))
def test_kernel_and_chunked_right_match_pandas(data, direction, exact, tol, split):
    """AsofJoinKernel over several left batches and asof_join_table with a chunked right Table."""
    left, right = data
    expected_rows = _pandas_rows(left, right, on="t", by="k", tolerance=tol, direction=direction,
                                 exact=exact)
    chunked_right = pa.Table.from_batches(right.to_batches(max_chunksize=split), schema=right.schema) \
        if right.num_rows else right
    kernel = AsofJoinKernel(chunked_right, on="t", by="k", tolerance_ms=tol, direction=direction,
                            allow_exact_matches=exact)
    got = []
    for b in left.to_batches(max_chunksize=split):
        got.extend(kernel(b).column("v").to_pylist())
        single = asof_join_table(b, chunked_right, on="t", by="k", tolerance_ms=tol,
                                 direction=direction, allow_exact_matches=exact)
        assert _values_equal(single.column("v").to_pylist(), kernel(b).column("v").to_pylist())
    assert _values_equal(got, _expected_values(right, expected_rows, "v"))


@settings(max_examples=40, deadline=None)
@given(data=joins(), direction=st.sampled_from(DIRECTIONS), tol=st.one_of(st.none(), st.integers(0, 10)))
def test_integer_keys_and_per_key_sorted_input(data, direction, tol):
    """Integer keys; right rows shuffled across keys but sorted within each key (per-key path)."""
    left, right = data
    code = {"a": 1, "b": 2, "c": 3, "d": 4, None: 9}
    lk = pa.array([code[k] for k in left.column("k").to_pylist()], pa.int32())
    rk = pa.array([code[k] for k in right.column("k").to_pylist()], pa.int64())
    left = left.set_column(1, "k", lk)
    right = right.set_column(1, "k", rk)
    expected_rows = _pandas_rows(left, right.set_column(1, "k", rk.cast(pa.int32())), on="t", by="k",
                                 tolerance=tol, direction=direction, exact=True)
    # group the right rows by key (stable): sorted per key, not globally
    order = np.argsort(np.asarray(rk), kind="stable")
    right_grouped = right.take(pa.array(order))
    out = asof_join(left, right_grouped, on="t", by="k", tolerance_ms=tol, direction=direction)
    inverse_rows = [int(order[r]) if r >= 0 else -1 for r in expected_rows]
    got_rows = out.column("w").to_pylist()
    want = [right.column("w")[r].as_py() if r >= 0 else None for r in expected_rows]
    assert got_rows == want
    assert len(inverse_rows) == left.num_rows


# ---------------------------------------------------------------- units, tolerance forms

@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", [None, "UTC", "Asia/Tokyo"])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_timestamp_units_against_pandas(unit, tz, direction):
    rng = np.random.default_rng(3)
    per_s = {"s": 1, "ms": 1000, "us": 10**6, "ns": 10**9}[unit]
    lt = np.sort(rng.integers(0, 20 * per_s, 60))
    rt = np.sort(rng.integers(0, 20 * per_s, 40))
    typ = pa.timestamp(unit, tz=tz)
    left = pa.table({"timestamp": pa.array(lt, typ), "symbol": rng.choice(["x", "y"], 60)})
    right = pa.table({"timestamp": pa.array(rt, typ), "symbol": rng.choice(["x", "y", "z"], 40),
                      "bid": rng.standard_normal(40)})
    tol = dt.timedelta(milliseconds=1500)
    rows = _pandas_rows(left, right, on="timestamp", by="symbol", tolerance=pd.Timedelta(tol),
                        direction=direction, exact=True)
    want = _expected_values(right, rows, "bid")
    for kwargs in ({"tolerance_ms": 1500}, {"tolerance": tol}, {"tolerance_ms": 1500.0}):
        out = asof_join(left, right, on="timestamp", by="symbol", direction=direction, **kwargs)
        assert out.column("bid").to_pylist() == want, kwargs
    assert out.schema.field("timestamp").type == typ


def test_mixed_units_and_integer_tolerance():
    left = pa.table({"t": pa.array([1_000, 2_500, 4_000], pa.timestamp("ms"))})
    right = pa.table({"t": pa.array([1, 2, 3], pa.timestamp("s")), "v": [1.0, 2.0, 3.0]})
    out = asof_join(left, right, on="t", tolerance_ms=400)
    assert out.column("v").to_pylist() == [1.0, None, None]
    out = asof_join(left, right, on="t", tolerance_ms=None)
    assert out.column("v").to_pylist() == [1.0, 2.0, 3.0]
    # integer tolerance is in the on column's unit (ms on the left here)
    out = asof_join(left, right, on="t", tolerance=500)
    assert out.column("v").to_pylist() == [1.0, 2.0, None]


@pytest.mark.parametrize("on_unit,scale", [("s", 1), ("ms", 1000), ("us", 10**6), ("ns", 10**9)])
def test_int64_on_with_on_unit(on_unit, scale):
    left = pa.table({"t": pa.array([10 * scale, 12 * scale, 20 * scale], pa.int64())})
    right = pa.table({"t": pa.array([9 * scale, 11 * scale], pa.int64()), "v": [1.0, 2.0]})
    out = asof_join(left, right, on="t", tolerance_ms=1500, on_unit=on_unit)
    assert out.column("v").to_pylist() == [1.0, 2.0, None]


# ---------------------------------------------------------------- naming

def _collector_batch(exchange, ts, mids):
    n = len(ts)
    return pa.record_batch({
        "exchange": [exchange] * n,
        "symbol": ["BTC/USD"] * n,
        "timestamp": pa.array(ts, pa.timestamp("ns", tz="UTC")),
        "bid": [m - 1 for m in mids],
        "ask": [m + 1 for m in mids],
        "midprice": mids,
    })


def test_three_exchange_chain_names():
    ms = 1_000_000
    cb = _collector_batch("coinbase", [1000 * ms, 2000 * ms], [100.0, 101.0])
    kr = _collector_batch("kraken", [900 * ms, 1900 * ms], [200.0, 201.0])
    bn = _collector_batch("binance", [1800 * ms, 2100 * ms], [300.0, 301.0])
    out = asof_join(asof_join(cb, kr, on="timestamp", by="symbol", tolerance_ms=500), bn,
                    on="timestamp", by="symbol", tolerance_ms=500)
    for col in ["midprice", "bid", "ask"]:
        for ex in ["coinbase", "kraken", "binance"]:
            assert f"{ex}_{col}" in out.schema.names, (ex, col, out.schema.names)
    assert out.schema.names.count("timestamp") == 1
    assert out.schema.names.count("symbol") == 1
    assert out.schema.names.count("exchange") == 1
    assert out.column("coinbase_midprice").to_pylist() == [100.0, 101.0]
    assert out.column("kraken_midprice").to_pylist() == [200.0, 201.0]
    assert out.column("binance_midprice").to_pylist() == [None, 300.0]


def test_right_prefix_and_suffix():
    left = pa.table({"t": pa.array([5], pa.int64()), "price": [1.0]})
    right = pa.table({"t": pa.array([4], pa.int64()), "price": [2.0], "size": [3.0]})
    out = asof_join(left, right, on="t", right_prefix="kraken_")
    assert out.schema.names == ["t", "price", "kraken_price", "kraken_size"]
    out = asof_join(left, right, on="t")
    assert out.schema.names == ["t", "price", "price_right", "size"]
    out = asof_join(left, right, on="t", suffix="_r")
    assert out.schema.names == ["t", "price", "price_r", "size"]
    assert out.column("price_r").to_pylist() == [2.0]


# ---------------------------------------------------------------- errors and sorting

def test_unsorted_input_names_column_and_row():
    left = pa.table({"ts": pa.array([1, 3, 2, 5], pa.int64())})
    right = pa.table({"ts": pa.array([1, 2], pa.int64()), "v": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"left column 'ts' is not sorted.*row 2"):
        asof_join(left, right, on="ts")
    with pytest.raises(ValueError, match=r"right column 'ts' is not sorted.*row 1"):
        asof_join(right.select(["ts"]), pa.table({"ts": pa.array([3, 1], pa.int64()), "v": [1.0, 2.0]}), on="ts")
    # per key: the error names the key column too
    lk = pa.table({"ts": pa.array([1, 2, 0], pa.int64()), "k": ["a", "b", "a"]})
    with pytest.raises(ValueError, match=r"'ts' is not sorted within each 'k' key: row 2"):
        asof_join(lk, right.append_column("k", pa.array(["a", "b"])), on="ts", by="k")


def test_sort_true_keeps_left_order_and_matches_pandas():
    rng = np.random.default_rng(5)
    lt = rng.integers(0, 100, 50)
    rt = rng.integers(0, 100, 30)
    left = pa.table({"t": pa.array(lt, pa.int64()), "k": rng.choice(["a", "b"], 50), "i": np.arange(50)})
    right = pa.table({"t": pa.array(rt, pa.int64()), "k": rng.choice(["a", "b"], 30),
                      "v": rng.standard_normal(30)})
    out = asof_join(left, right, on="t", by="k", tolerance_ms=None, sort=True)
    assert out.column("i").to_pylist() == list(range(50))
    lorder = np.argsort(lt, kind="stable")
    rorder = np.argsort(rt, kind="stable")
    ls, rs = left.take(pa.array(lorder)), right.take(pa.array(rorder))
    rows = _pandas_rows(ls, rs, on="t", by="k", tolerance=None, direction="backward", exact=True)
    want_sorted = _expected_values(rs, rows, "v")
    want = [None] * 50
    for pos, orig in enumerate(lorder):
        want[orig] = want_sorted[pos]
    assert out.column("v").to_pylist() == want


def test_missing_column_and_null_on():
    left = pa.table({"t": pa.array([1], pa.int64()), "k": ["a"]})
    right = pa.table({"t": pa.array([1], pa.int64()), "v": [1.0]})
    with pytest.raises(KeyError, match=r"'timestamp'.*columns present: t, k"):
        asof_join(left, right)
    with pytest.raises(KeyError, match=r"'k'.*columns present: t, v"):
        asof_join(left, right, on="t", by="k")
    with pytest.raises(ValueError, match=r"left column 't' contains nulls \(first at row 1\)"):
        asof_join(pa.table({"t": pa.array([1, None], pa.int64())}), right, on="t")
    with pytest.raises(ValueError, match="direction"):
        asof_join(left, right, on="t", direction="sideways")
    with pytest.raises(TypeError, match="'on' column"):
        asof_join(pa.table({"t": [1.5]}), right, on="t")


def test_kernel_state_is_picklable_inputs_untouched():
    right = pa.table({"t": pa.array([1, 5], pa.int64()), "v": [1.0, 5.0]})
    k = AsofJoinKernel(right, on="t", tolerance_ms=None)
    k2 = pickle.loads(pickle.dumps(k.match_indices(pa.table({"t": pa.array([0, 3, 9], pa.int64())}))))
    assert list(k2) == [-1, 0, 1]


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.text(max_size=12)), max_size=60),
       start=st.integers(0, 5), large=st.booleans())
def test_string_key_encoding_roundtrips(values, start, large):
    """The string key encoder: decoding codes through its dictionary gives the input back."""
    from sabot.fintech.asof import _key_dictionary

    arr = pa.array(values, pa.large_string() if large else pa.string()).slice(min(start, len(values)))
    codes, dictionary = _key_dictionary(arr, "left", "k")
    decoded = [None if c == len(dictionary) else dictionary[int(c)].as_py() for c in codes]
    assert decoded == arr.to_pylist()
    assert len(set(dictionary.to_pylist())) == len(dictionary)


@settings(max_examples=80, deadline=None)
@given(data=joins(), direction=st.sampled_from(DIRECTIONS), exact=st.booleans(),
       tol=st.one_of(st.none(), st.integers(0, 10)), use_by=st.booleans())
def test_fused_path_non_null_columns_match_pandas(data, direction, exact, tol, use_by):
    """Right value columns without nulls take the fused merge (values written during the merge)."""
    left, right = data
    by = "k" if use_by else None
    n = right.num_rows
    right = pa.table({"t": right.column("t"), "k": right.column("k"),
                      "u": pa.array(np.arange(n, dtype=np.float64) * 1.5),
                      "ts": pa.array(np.arange(n, dtype=np.int64) * 1000, pa.timestamp("us"))})
    rows = _pandas_rows(left, right, on="t", by=by, tolerance=tol, direction=direction, exact=exact)
    out = asof_join(left, right, on="t", by=by, tolerance_ms=tol, direction=direction,
                    allow_exact_matches=exact)
    assert out.column("u").to_pylist() == _expected_values(right, rows, "u")
    assert out.column("ts").to_pylist() == _expected_values(right, rows, "ts")
    assert out.column("u").null_count == int((rows < 0).sum())
