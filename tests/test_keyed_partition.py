"""Keyed batches run key by key (``Kernel._run_partitioned``) equal the row-order keyed path.

The partitioned path groups a chunk's rows by key, runs each key's rows through the kernel's
unkeyed loop on that key's state row, and puts the outputs back in row order. Each key sees
the same rows in the same order as in the row-order path, so outputs and ``state_dict()``
must agree bit for bit, whatever the batch splits, chunk sizes, nulls, NaN, infinities and
keys coming and going. The reference here is the row-order keyed path, itself tested against
pandas/numpy/TA-Lib and against running each key alone in the kernels' own test modules.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kernel_testing import market_table, split_at
from sabot.fintech import (
    BollingerBands,
    RollingMax,
    RollingMin,
    RollingStd,
    RollingZScore,
    SMA,
    _kernel,
)

#: The kernels that opt in (``declare(..., partition_keys=True)``), small windows so that
#: warm-up, block boundaries and re-sums happen within a few rows.
OPTED_IN = {
    "sma": lambda: SMA(window=3, by="symbol"),
    "bollinger": lambda: BollingerBands(window=4, k=1.5, by="symbol"),
    "rolling_std": lambda: RollingStd("price", window=5, by="symbol"),
    "rolling_zscore": lambda: RollingZScore(window=4, by="symbol"),
    "rolling_min": lambda: RollingMin("price", window=3, by="symbol"),
    "rolling_max": lambda: RollingMax("price", window=6, by="symbol"),
}

NEVER = 10**12      # min rows per key that no batch reaches: the row-order path


@contextlib.contextmanager
def partitioning(min_rows_per_key, chunk_rows=None, every_kernel=None):
    previous = _kernel._partition_settings(min_rows_per_key, chunk_rows, every_kernel)
    try:
        yield
    finally:
        _kernel._partition_settings(*previous)


def assert_identical(got: pa.RecordBatch, expected: pa.RecordBatch, names) -> None:
    """Same nulls and the same values, bit for bit (``-0.0`` differs from ``0.0``)."""
    for name in names:
        a, b = got.column(name), expected.column(name)
        assert a.type == b.type, name
        assert a.null_count == b.null_count, f"{name}: null counts differ"
        assert a.equals(b), f"{name}: outputs differ"
        if pa.types.is_floating(a.type):
            bits_a = a.to_numpy(zero_copy_only=False).view(np.int64)
            bits_b = b.to_numpy(zero_copy_only=False).view(np.int64)
            assert np.array_equal(bits_a, bits_b), f"{name}: values differ in their bits"


def run_both(make, batches, *, min_rows_per_key=0, chunk_rows=None, every_kernel=False):
    """Feed ``batches`` to a kernel on the partitioned path and one on the row-order path;
    after each batch the outputs and the state must be identical."""
    partitioned, in_order = make(), make()
    for batch in batches:
        with partitioning(min_rows_per_key, chunk_rows, every_kernel):
            got = partitioned(batch)
        with partitioning(NEVER):
            expected = in_order(batch)
        assert_identical(got, expected, partitioned.output_names)
        assert partitioned.state_dict() == in_order.state_dict()
    return partitioned


def make_batch(rng: np.random.Generator, rows: int, keys: list, *, null_frac: float,
               special_frac: float, constant_runs: bool, dictionary: bool) -> pa.RecordBatch:
    """``rows`` rows of ``keys`` interleaved at random: a price walk with Arrow nulls, NaN,
    ±inf, ±0 and runs of one repeated value (constant windows)."""
    price = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, rows)))
    if constant_runs and rows > 4:
        for start in rng.integers(0, rows - 2, size=1 + rows // 50):
            price[start:start + int(rng.integers(2, 20))] = price[start]
    special = rng.uniform(size=rows) < special_frac
    price[special] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e300], size=special.sum())
    null = rng.uniform(size=rows) < null_frac
    symbol = pa.array([f"K{k}" for k in rng.choice(keys, size=rows)], pa.string())
    if dictionary:
        symbol = symbol.dictionary_encode()
    return pa.RecordBatch.from_arrays([symbol, pa.array(price, mask=null)], ["symbol", "price"])


@st.composite
def batch_streams(draw):
    """1-5 batches; each with its own subset of 12 keys (keys appear and disappear), tiny
    (below any threshold) or large, with or without nulls and special values."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batches = []
    for _ in range(draw(st.integers(1, 5))):
        keys = draw(st.lists(st.integers(0, 11), min_size=1, max_size=12, unique=True))
        rows = draw(st.one_of(st.integers(0, 12), st.integers(13, 120), st.integers(400, 1500)))
        batches.append(make_batch(
            rng, rows, keys,
            null_frac=draw(st.sampled_from([0.0, 0.05, 0.3])),
            special_frac=draw(st.sampled_from([0.0, 0.02, 0.2])),
            constant_runs=draw(st.booleans()),
            dictionary=draw(st.booleans()),
        ))
    return batches


@pytest.mark.parametrize("name", sorted(OPTED_IN))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batch_streams(),
       chunk_rows=st.sampled_from([1, 3, 16, 100, 4096]),
       min_rows_per_key=st.sampled_from([0, 0, 5, 64]))
def test_partitioned_equals_row_order(name, batches, chunk_rows, min_rows_per_key):
    """Outputs and state after every batch, whichever path each batch takes (a threshold of
    5 or 64 rows per key sends small batches down the row-order path, large ones not)."""
    run_both(OPTED_IN[name], batches, min_rows_per_key=min_rows_per_key, chunk_rows=chunk_rows)


@pytest.mark.parametrize("name", sorted(OPTED_IN))
def test_restored_state_continues_on_either_path(name):
    """A checkpoint taken after a partitioned batch continues on the row-order path exactly
    as the kernel that wrote it continues on the partitioned one (and the reverse)."""
    rng = np.random.default_rng(7)
    keys = list(range(8))
    first, second = (make_batch(rng, 2000, keys, null_frac=0.05, special_frac=0.02,
                                constant_runs=True, dictionary=True) for _ in range(2))
    for path_first, path_then in ((0, NEVER), (NEVER, 0)):
        writer = OPTED_IN[name]()
        with partitioning(path_first):
            writer(first)
        reader = OPTED_IN[name]()
        reader.load_state_dict(writer.state_dict())
        with partitioning(path_first):
            expected = writer(second)
        with partitioning(path_then):
            got = reader(second)
        assert_identical(got, expected, writer.output_names)
        assert reader.state_dict() == writer.state_dict()


@pytest.mark.parametrize("name", sorted(OPTED_IN))
def test_many_keys_and_tiny_chunks(name):
    """More keys than rows in a chunk (most keys absent from each chunk), 300 keys."""
    rng = np.random.default_rng(11)
    batches = [make_batch(rng, rows, list(range(300)), null_frac=0.1, special_frac=0.05,
                          constant_runs=True, dictionary=False) for rows in (5000, 37, 3000)]
    run_both(OPTED_IN[name], batches, chunk_rows=64)


def test_more_keys_than_the_chunk_cap_takes_row_order():
    """Over 1024 keys at the default 64 rows per key the chunk would pass its cap: the
    batch goes in row order, and comes out the same."""
    rng = np.random.default_rng(17)
    batch = make_batch(rng, 1100 * 70, list(range(1100)), null_frac=0.02, special_frac=0.01,
                       constant_runs=False, dictionary=True)
    run_both(OPTED_IN["rolling_std"], [batch], min_rows_per_key=_kernel._partition_settings()[0])


@pytest.mark.parametrize("name", sorted(OPTED_IN))
def test_large_batch(name):
    """A batch of 2**19 rows and more (outputs written past the cache), default settings."""
    rng = np.random.default_rng(13)
    batch = make_batch(rng, (1 << 19) + 123, list(range(8)), null_frac=0.01, special_frac=0.001,
                       constant_runs=True, dictionary=True)
    run_both(OPTED_IN[name], [batch], min_rows_per_key=_kernel._partition_settings()[0])


def _all_factories():
    """Every keyed kernel of the kernel test modules, with the table its module tests it on."""
    import test_execution_risk
    import test_features_safety
    import test_liquidity
    import test_microstructure
    import test_momentum_filters
    import test_online_stats
    import test_volatility

    tables = {test_execution_risk: test_execution_risk.risk_table,
              test_liquidity: test_liquidity.liquidity_table,
              test_volatility: test_volatility.returns_table}
    return {f"{m.__name__.removeprefix('test_')}.{name}": (make, tables.get(m, market_table))
            for m in (test_execution_risk, test_features_safety, test_liquidity,
                      test_microstructure, test_momentum_filters, test_online_stats,
                      test_volatility)
            for name, (make, _outputs) in m.FACTORIES.items()}


ALL_FACTORIES = _all_factories()


@pytest.mark.parametrize("name", sorted(ALL_FACTORIES))
def test_mechanism_on_every_kernel(name):
    """The partitioning mechanism, forced on every keyed kernel (several value inputs, a
    time input, integer, boolean and label outputs, state widths from 1 to hundreds):
    identical to the row order. It is the precondition for a kernel to opt in."""
    make, table_of = ALL_FACTORIES[name]
    batches = split_at(table_of(900, seed=41), [300, 310, 311])
    run_both(lambda: make("symbol"), batches, chunk_rows=50, every_kernel=True)


def test_settings_switch_round_trips():
    previous = _kernel._partition_settings()
    with partitioning(0, 7, True):
        assert _kernel._partition_settings() == (0, 7, True)
    assert _kernel._partition_settings() == previous


@settings(max_examples=60, deadline=None)
@given(slots=st.lists(st.integers(0, 9), min_size=1, max_size=300),
       offset=st.integers(0, 20), packed=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_grouping_is_a_stable_sort_by_key(slots, offset, packed, seed):
    """Rows grouped by key (numpy's stable argsort as the reference), values and per-input
    validity bits (read by kernels through ``input_present``) moved along; keys packed one
    after another, or each in room for every row."""
    rng = np.random.default_rng(seed)
    slots = np.array(slots, dtype=np.int32)
    m, n_keys = len(slots), slots.max() + 1
    values = rng.normal(size=m)
    valid = rng.uniform(size=m + offset) < 0.7
    bitmap = np.packbits(valid, bitorder="little").tobytes()
    room = 0 if packed else (m + 7) // 8 * 8
    place, grouped, bits, first, end = _kernel._grouped_for_test(slots, values, bitmap, offset,
                                                                 room)
    counts = np.bincount(slots, minlength=n_keys)
    expected_first = np.concatenate([[0], np.cumsum(counts)[:-1]]) if packed else (
        np.arange(n_keys) * room)
    assert np.array_equal(first, expected_first)
    assert np.array_equal(end - first, counts)
    order = np.argsort(slots, kind="stable")
    positions = np.concatenate([np.arange(f, e) for f, e in zip(first, end)])
    assert np.array_equal(place[order], positions)
    assert np.array_equal(grouped[positions], values[order])
    assert np.array_equal(np.unpackbits(bits, bitorder="little")[positions],
                          valid[offset:][order])
