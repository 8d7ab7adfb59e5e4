"""log_returns' vectorised path: within 1 ulp of the C library's log of the same ratio, the same
bits on every SIMD copy and whether a block runs the vectorised loop or the row loop (blocks
with a null, NaN or non-positive price, keyed batches), through abnormal ratios too."""
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from sabot.fintech import LogReturns, _simd, log_returns, online_stats


def _run(prices, path=None, by=None, splits=()):
    """log_return column of ``prices`` as float64 (null -> NaN), through ``LogReturns`` fed the
    pieces cut at ``splits``."""
    previous = _simd._use_path(path) if path else None
    try:
        kernel = LogReturns(by="k" if by is not None else None)
        cuts = [0, *sorted(splits), len(prices)]
        parts = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            cols = {"price": pa.array(prices[a:b], type=pa.float64())}
            if by is not None:
                cols["k"] = pa.array(by[a:b])
            parts.append(kernel(pa.record_batch(cols))["log_return"])
        out = pa.concat_arrays(parts)
        return out.to_numpy(zero_copy_only=False).astype(float)
    finally:
        if previous:
            _simd._use_path(previous)


def _ulps(got, ratios):
    ref = np.array([math.log(r) if r > 0 else -math.inf for r in ratios])
    finite = np.isfinite(ref)
    assert np.array_equal(got[~finite], ref[~finite])
    return np.abs(got[finite] - ref[finite]) / np.spacing(np.abs(ref[finite]))


def test_within_one_ulp_of_libm_over_the_exponent_range():
    rng = np.random.default_rng(7)
    p = np.exp(rng.uniform(-300, 300, 20000))
    p[:2000] = 100 * np.exp(np.cumsum(rng.normal(0, 1e-4, 2000)))    # returns near zero
    p[2000:2100] = 5.0                                               # ratio exactly 1
    got = _run(p)
    assert np.isnan(got[0])
    assert _ulps(got[1:], p[1:] / p[:-1]).max() <= 1.0


@pytest.mark.parametrize("avx512", [False, True])
@pytest.mark.parametrize("path", [p for p in (_simd.PORTABLE, _simd.AVX2)
                                  if p in _simd.available_paths()])
def test_every_path_gives_the_same_bits(path, avx512):
    """Portable, AVX2 and (where the CPU has it) AVX-512F copies of the loop."""
    rng = np.random.default_rng(8)
    p = np.exp(rng.uniform(-50, 50, 40000))
    portable = _run(p, _simd.PORTABLE)
    previous = online_stats._use_avx512(avx512)
    try:
        assert np.array_equal(_run(p, path).view(np.int64), portable.view(np.int64))
    finally:
        online_stats._use_avx512(previous)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from([100.0, 101.5, 99.25, 1e-310, 1e308, 1e-300, 0.0, -1.0,
                                 float("nan"), float("inf"), None]), min_size=2, max_size=60),
       st.lists(st.integers(0, 60), max_size=3), st.booleans())
def test_fast_and_row_paths_agree(values, splits, keyed):
    """Whole clean blocks take the vectorised loop, others the row loop; results, state and
    nulls equal the row-by-row definition (previous positive price, per key)."""
    prices = [v for v in values]
    splits = [s for s in splits if 0 < s < len(prices)]
    keys = [i % 2 for i in range(len(prices))] if keyed else None
    got = _run(prices, by=keys, splits=splits)
    last = {}
    for i, p in enumerate(prices):
        key = keys[i] if keyed else None
        if p is None or not p > 0:
            assert math.isnan(got[i])
            continue
        prev = last.get(key)
        if prev is None:
            assert math.isnan(got[i])
        else:
            r = p / prev
            want = math.log(r) if r > 0 and r != math.inf else (-math.inf if r == 0 else r)
            if math.isnan(want):
                assert math.isnan(got[i])
            else:
                assert got[i] == want or abs(got[i] - want) <= np.spacing(abs(want)), (i, got[i], want)
        last[key] = p
    # one call over the whole column gives the same bits as the split calls
    whole = _run(prices, by=keys)
    assert np.array_equal(np.nan_to_num(whole, nan=7.0), np.nan_to_num(got, nan=7.0))


def test_all_clean_batch_has_no_validity_bitmap_beyond_the_first_row():
    p = 100 * np.exp(np.cumsum(np.random.default_rng(9).normal(0, 1e-4, 5000)))
    out = log_returns(pa.record_batch({"price": p}))["log_return"]
    assert out.null_count == 1 and out[0].as_py() is None
