"""rolling_min / rolling_max over long clean runs (the whole-block fast path of the unkeyed
kernel) with nulls and NaNs sprinkled, against a plain numpy reference, split anywhere; and
bit-for-bit agreement (outputs and saved state) with the keyed kernel, which goes row by row."""
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from kernel_testing import split_at
from sabot.fintech import RollingMax, RollingMin

WINDOWS = [1, 2, 3, 7, 64]
KERNELS = {"rolling_min": (RollingMin, np.min), "rolling_max": (RollingMax, np.max)}


def reference(values: np.ndarray, valid: np.ndarray, window: int, reduce) -> np.ndarray:
    """Extreme of the last ``window`` valid values at each valid row (NaN: invalid row or
    fewer than ``window`` valid values so far)."""
    kept = values[valid]
    out = np.full(values.shape, np.nan)
    if kept.size >= window:
        full = reduce(sliding_window_view(kept, window), axis=1)
        rows = np.flatnonzero(valid)[window - 1:]
        out[rows] = full
    return out


def assert_exact(got: pa.Array, expected: np.ndarray, name: str) -> None:
    """Nulls exactly where ``expected`` is NaN, every other value equal (infinities too)."""
    nulls = got.is_null().to_numpy(zero_copy_only=False)
    assert np.array_equal(nulls, np.isnan(expected)), f"{name}: null positions differ"
    assert np.array_equal(got.fill_null(np.nan).to_numpy(), expected, equal_nan=True), (
        f"{name}: values differ")


def table(values: np.ndarray, nulls: np.ndarray) -> pa.Table:
    return pa.table({"key": pa.array(["k"] * len(values)),
                     "price": pa.array(values, mask=nulls)})


@st.composite
def sprinkled(draw, max_rows=700):
    """A random walk (with ties) of up to ``max_rows`` rows and a few null, NaN and infinite
    rows."""
    n = draw(st.integers(0, max_rows))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    values = np.round(np.cumsum(rng.normal(0.0, 1.0, n)), 1)  # rounding makes ties common
    holes = st.lists(st.integers(0, max(n - 1, 0)), max_size=6) if n else st.just([])
    nans, nulls, infinite = draw(holes), draw(holes), draw(holes)
    values[infinite] = np.where(rng.uniform(size=len(infinite)) < 0.5, -np.inf, np.inf)
    values[nans] = np.nan
    null_mask = np.zeros(n, dtype=bool)
    null_mask[nulls] = True
    cuts = draw(st.lists(st.integers(0, n), max_size=5))
    return values, null_mask, cuts


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("window", WINDOWS)
@settings(max_examples=25, deadline=None)
@given(data=sprinkled())
def test_long_runs_with_holes_match_numpy_split_anywhere(name, window, data):
    values, nulls, cuts = data
    make, reduce = KERNELS[name]
    valid = ~nulls & ~np.isnan(values)
    expected = reference(values, valid, window, reduce)
    kernel = make("price", window=window)
    parts = [kernel(b)[name] for b in split_at(table(values, nulls), cuts)]
    got = pa.chunked_array(parts, type=pa.float64()).combine_chunks()
    assert_exact(got, expected, f"{name} w={window}")


def _bits(column) -> np.ndarray:
    """float64 bit patterns (nulls as 0), so that -0.0 and 0.0 differ."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return np.where(arr.is_null().to_numpy(zero_copy_only=False), 0,
                    arr.fill_null(0.0).to_numpy().view(np.int64))


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("window", WINDOWS)
@settings(max_examples=15, deadline=None)
@given(data=sprinkled(), zeros=st.booleans())
def test_blocks_leave_the_same_state_as_row_by_row(name, window, data, zeros):
    """Unkeyed (whole blocks) and keyed with a single key (row by row): same bits out, signed
    zeros included, and the same saved state after any split."""
    values, nulls, cuts = data
    if zeros:  # ties between -0.0 and 0.0: the result depends on the comparison order
        values = np.where(np.isnan(values), np.nan, np.copysign(0.0, values))
    make, _ = KERNELS[name]
    plain, keyed = make("price", window=window), make("price", window=window, by="key")
    for batch in split_at(table(values, nulls), cuts):
        a, b = plain(batch)[name], keyed(batch)[name]
        assert np.array_equal(_bits(a), _bits(b)), f"{name}: block and row-by-row outputs differ"
        assert a.null_count == b.null_count
        if keyed.keys:  # the keyed kernel opens its key's state at the key's first row
            assert plain.state_dict()["state"] == keyed.state_dict()["state"], f"{name}: state"


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_window_one_is_the_value_and_two_the_pair(name):
    make, reduce = KERNELS[name]
    x = np.array([3.0, 1.0, np.nan, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0] * 50)
    t = table(x, np.zeros(len(x), dtype=bool))
    assert_exact(make("price", window=1)(t)[name], x, f"{name} w=1")
    kept = x[~np.isnan(x)]
    pair = np.full(len(x), np.nan)
    pair[np.flatnonzero(~np.isnan(x))[1:]] = reduce(np.stack([kept[:-1], kept[1:]]), axis=0)
    assert_exact(make("price", window=2)(t)[name], pair, f"{name} w=2")


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("window", [3, 64])
def test_infinities_of_both_signs_in_one_block(name, window):
    """+inf and -inf close together (their sum is NaN, like a NaN's) in a long clean run."""
    make, reduce = KERNELS[name]
    x = np.cumsum(np.random.default_rng(7).normal(0.0, 1.0, 2000))
    x[[300, 301, 1100, 1150]] = [np.inf, -np.inf, -np.inf, np.inf]
    x[1500] = np.nan
    valid = ~np.isnan(x)
    got = make("price", window=window)(table(x, np.zeros(len(x), dtype=bool)))[name]
    assert_exact(got, reference(x, valid, window, reduce), f"{name} w={window}")
