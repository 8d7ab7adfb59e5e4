"""The ASOF join's fast paths give the same rows as a plain reference join.

The backward join of globally sorted inputs with a key runs a merge that takes right rows two
at a time and checks the left's order on the way (falling back to per-key cursors when the
left is sorted only within each key); these tests compare it, its index-only twin
(``match_indices``) and the fallback with a reference written from the definition, on small
hypothesis-drawn inputs around its edges: blocks of 8 rows, the last right row, keys absent on
one side, null keys, exact or strict matches, tolerances near the data's range.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sabot.fintech import AsofJoinKernel, asof_join


def reference_rows(lt, lk, rt, rk, *, exact, tol):
    """Backward ASOF by definition: per left row the last right row with the same key (None
    matches None) at or before it (strictly before when not ``exact``), within ``tol``."""
    rows = []
    for t, k in zip(lt, lk):
        best = -1
        for j, (r, key) in enumerate(zip(rt, rk)):
            if key == k and (r <= t if exact else r < t):
                best = j
        if best >= 0 and tol is not None and t - rt[best] > tol:
            best = -1
        rows.append(best)
    return rows


KEYS = st.sampled_from(["BTC-USD", "ETH-USD", "a", "long key of many bytes", None])
RKEYS = st.sampled_from(["BTC-USD", "ETH-USD", "b", "long key of many bytes", None])


@st.composite
def sides(draw):
    base = draw(st.sampled_from([0, -(2**62), 2**62]))
    span = draw(st.sampled_from([5, 50, 2**40]))
    n_left = draw(st.integers(0, 40))
    n_right = draw(st.integers(1, 30))
    lt = sorted(base + draw(st.integers(0, span)) for _ in range(n_left))
    rt = sorted(base + draw(st.integers(0, span)) for _ in range(n_right))
    lk = [draw(KEYS) for _ in range(n_left)]
    rk = [draw(RKEYS) for _ in range(n_right)]
    tol = draw(st.one_of(st.none(), st.integers(0, 2 * span), st.just(2**63 - 1)))
    return lt, lk, rt, rk, tol


def _tables(lt, lk, rt, rk, key_type, n_values=1):
    """Left (t, k, x) and right (t, k, row = its row number, then ``n_values`` columns v0.. =
    row × 0.5, 1.5, ...): the merge has a path per number of value columns."""
    left = pa.table({"t": pa.array(lt, pa.int64()), "k": pa.array(lk, key_type),
                     "x": pa.array(np.arange(len(lt), dtype=np.float64))})
    right = {"t": pa.array(rt, pa.int64()), "k": pa.array(rk, key_type),
             "row": pa.array(np.arange(len(rt), dtype=np.int64))}
    for c in range(n_values):
        right[f"v{c}"] = pa.array(np.arange(len(rt), dtype=np.float64) * (c + 0.5))
    return left, pa.table(right)


@settings(max_examples=60, deadline=None)
@given(data=sides(), exact=st.booleans(), n_values=st.integers(0, 4),
       key_type=st.sampled_from([pa.string(), pa.large_string(), pa.dictionary(pa.int32(), pa.string())]))
def test_sorted_backward_join_equals_reference(data, exact, n_values, key_type):
    _check_sorted_join(data, exact, n_values, key_type)


def _check_sorted_join(data, exact, n_values, key_type):
    lt, lk, rt, rk, tol = data
    expected = reference_rows(lt, lk, rt, rk, exact=exact, tol=tol)
    left, right = _tables(lt, lk, rt, rk, key_type, n_values)
    out = asof_join(left, right, on="t", by="k", tolerance=tol, allow_exact_matches=exact,
                    on_unit="ns", tolerance_ms=None)
    rows = [-1 if r is None else r for r in out.column("row").to_pylist()]
    assert rows == expected
    for c in range(n_values):
        assert out.column(f"v{c}").to_pylist() == [None if r < 0 else r * (c + 0.5) for r in expected]
    assert out.column("row").null_count == expected.count(-1)
    kernel = AsofJoinKernel(right, on="t", by="k", tolerance=tol, tolerance_ms=None,
                            allow_exact_matches=exact, on_unit="ns")
    assert kernel.match_indices(left).tolist() == expected


@settings(max_examples=40, deadline=None)
@given(data=sides(), exact=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_left_sorted_only_within_each_key_falls_back(data, exact, seed):
    """A left input in time order per key but not overall (keys' rows interleaved out of time
    order) is still joined correctly: the merge notices and the per-key cursors take over."""
    _check_per_key_sorted_join(data, exact, seed)


def _check_per_key_sorted_join(data, exact, seed):
    lt, lk, rt, rk, tol = data
    rng = np.random.default_rng(seed)
    # rebuild the left as the concatenation of its keys' runs: sorted per key, not globally
    order = sorted(range(len(lt)), key=lambda i: (str(lk[i]), rng.random()))
    groups = {}
    for i in order:
        groups.setdefault(lk[i], []).append(lt[i])
    lk2, lt2 = [], []
    for key, times in groups.items():
        lk2 += [key] * len(times)
        lt2 += sorted(times)
    expected = reference_rows(lt2, lk2, rt, rk, exact=exact, tol=tol)
    left, right = _tables(lt2, lk2, rt, rk, pa.string())
    out = asof_join(left, right, on="t", by="k", tolerance=tol, tolerance_ms=None,
                    allow_exact_matches=exact, on_unit="ns")
    assert [-1 if r is None else r for r in out.column("row").to_pylist()] == expected


@settings(max_examples=40, deadline=None)
@given(data=sides(), exact=st.booleans(), n_values=st.integers(0, 3), seed=st.integers(0, 2**32 - 1),
       key_type=st.sampled_from([pa.string(), pa.dictionary(pa.int32(), pa.string())]))
def test_merge_in_two_halves_equals_reference(data, exact, n_values, seed, key_type):
    """A large left is merged in two halves at once (the second in another thread, started from
    the right rows before its first row); with the threshold lowered, small inputs too."""
    from sabot.fintech import asof as asof_module

    saved = asof_module.PARALLEL_MIN_ROWS
    asof_module.PARALLEL_MIN_ROWS = 0
    try:
        _check_sorted_join(data, exact, n_values, key_type)
        _check_per_key_sorted_join(data, exact, seed)
    finally:
        asof_module.PARALLEL_MIN_ROWS = saved


@pytest.mark.parametrize("halves", [False, True])
@pytest.mark.parametrize("bad_at", [1, 7, 8, 9, 17])
def test_left_unsorted_within_a_key_names_the_row(bad_at, halves, monkeypatch):
    from sabot.fintech import asof as asof_module

    if halves:                                    # 20 rows cut at row 8
        monkeypatch.setattr(asof_module, "PARALLEL_MIN_ROWS", 0)
    n = 20
    lt = list(range(0, 10 * n, 10))
    lt[bad_at] = lt[bad_at - 1] - 1               # out of order within the single key
    left = pa.table({"t": pa.array(lt, pa.int64()), "k": pa.array(["s"] * n)})
    right = pa.table({"t": pa.array([0, 15, 30], pa.int64()), "k": pa.array(["s"] * 3),
                      "v": pa.array([1.0, 2.0, 3.0])})
    with pytest.raises(ValueError, match=f"row {bad_at} "):
        asof_join(left, right, on="t", by="k", tolerance_ms=None)


@settings(max_examples=30, deadline=None)
@given(data=sides(), exact=st.booleans(), large=st.booleans())
def test_left_keys_encoded_in_a_second_thread_equal_reference(data, exact, large):
    """Large string-keyed inputs have the left's keys hashed in a second thread while the right
    is indexed; with the threshold lowered small inputs take that path too."""
    from sabot.fintech import asof as asof_module

    lt, lk, rt, rk, tol = data
    expected = reference_rows(lt, lk, rt, rk, exact=exact, tol=tol)
    left, right = _tables(lt, lk, rt, rk, pa.large_string() if large else pa.string())
    started = []
    start = asof_module._start_key_encoding
    saved = asof_module.OVERLAP_MIN_ROWS
    asof_module.OVERLAP_MIN_ROWS = 0
    asof_module._start_key_encoding = lambda *args: started.append(1) or start(*args)
    try:
        out = asof_join(left, right, on="t", by="k", tolerance=tol, tolerance_ms=None,
                        allow_exact_matches=exact, on_unit="ns")
    finally:
        asof_module.OVERLAP_MIN_ROWS = saved
        asof_module._start_key_encoding = start
    assert started == [1]
    assert [-1 if r is None else r for r in out.column("row").to_pylist()] == expected


def test_right_error_reported_while_the_left_keys_are_encoded(monkeypatch):
    from sabot.fintech import asof as asof_module

    monkeypatch.setattr(asof_module, "OVERLAP_MIN_ROWS", 0)
    left = pa.table({"t": pa.array([1, 2], pa.int64()), "k": ["a", "b"]})
    right = pa.table({"t": pa.array([5, 1], pa.int64()), "k": ["a", "a"], "v": [1.0, 2.0]})
    with pytest.raises(ValueError, match="right column 't' is not sorted within each 'k' key: row 1"):
        asof_join(left, right, on="t", by="k", tolerance_ms=None)
    assert not [t for t in __import__("threading").enumerate() if t.name == "sabot-asof-keys"]


def test_recycled_buffer_is_the_smallest_that_fits():
    """A request takes the smallest free pooled buffer that fits, leaving larger ones for larger
    requests (a join asks for its key codes before its larger outputs; handing the codes the
    outputs' old buffers made every output take fresh memory)."""
    from sabot.fintech import _kernel

    saved = list(_kernel._POOL)
    _kernel._POOL[:] = []
    try:
        big = _kernel._output_buffer(200 << 10)
        small = _kernel._output_buffer(120 << 10)
        big_at, small_at = big.address, small.address
        del big, small                              # both free again, the larger one first
        got = _kernel._output_buffer(100 << 10)
        assert got.address == small_at
        again = _kernel._output_buffer(190 << 10)
        assert again.address == big_at
    finally:
        _kernel._POOL[:] = saved
