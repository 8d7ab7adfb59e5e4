"""Shared helpers for kernel tests: data generation, null-aware references, invariants.

References are always independent code (numpy/pandas/TA-Lib); these helpers only handle the
plumbing the spec's null rule needs: a row with a null/NaN input is null in the output and
invisible to the state, so the reference is computed on the valid rows and scattered back.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa

SYMBOLS = ("BTC/USD", "ETH/USD", "SOL/USD")


def market_table(
    n: int = 2000,
    seed: int = 0,
    *,
    symbols: Sequence[str] = SYMBOLS,
    null_frac: float = 0.03,
    nan_frac: float = 0.02,
    scale: float = 1.0,
    constant_runs: bool = True,
) -> pa.Table:
    """Random quotes/trades/bars for ``symbols`` interleaved, with nulls, NaNs and flat runs.

    Columns: symbol, timestamp, price, bid, ask, bid_size, ask_size, volume, open, high, low,
    close, side. ``scale`` multiplies every price (use 1e-6 and 1e6 for tiny/huge magnitudes).
    """
    rng = np.random.default_rng(seed)
    price = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    if constant_runs and n > 60:
        for start in rng.integers(0, n - 30, size=max(1, n // 400)):
            price[start : start + 25] = price[start]
    price *= scale
    half_spread = price * rng.uniform(1e-5, 5e-4, n)
    bid, ask = price - half_spread, price + half_spread
    high = price * (1 + rng.uniform(0, 0.003, n))
    low = price * (1 - rng.uniform(0, 0.003, n))
    open_ = low + (high - low) * rng.uniform(0, 1, n)
    close = price
    cols = {
        "symbol": pa.array(rng.choice(list(symbols), size=n)),
        "timestamp": pa.array(
            1_700_000_000_000_000_000 + np.cumsum(rng.integers(1, 50_000_000, n)),
            pa.timestamp("ns", tz="UTC"),
        ),
        "price": price,
        "bid": bid,
        "ask": ask,
        "bid_size": rng.exponential(2.0, n),
        "ask_size": rng.exponential(2.0, n),
        "volume": rng.exponential(10.0, n),
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "side": rng.choice([1.0, -1.0], size=n),
    }
    arrays = {}
    for name, values in cols.items():
        if isinstance(values, pa.Array):
            arrays[name] = values
            continue
        values = np.asarray(values, dtype=float).copy()
        mask = rng.uniform(size=n) < null_frac
        if nan_frac:
            values[rng.uniform(size=n) < nan_frac] = np.nan
        arrays[name] = pa.array(values, mask=mask)
    return pa.table(arrays)


def to_numpy(arr) -> np.ndarray:
    """float64 numpy with NaN for nulls (bool → 0/1)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_boolean(arr.type):
        arr = arr.cast(pa.float64())
    return arr.to_numpy(zero_copy_only=False).astype(float)


def valid_mask(*arrays) -> np.ndarray:
    """True where every input is non-null and not NaN."""
    mask = None
    for a in arrays:
        m = ~np.isnan(to_numpy(a))
        mask = m if mask is None else mask & m
    return mask


def scatter(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Values computed on the valid rows, put back at their positions (NaN elsewhere)."""
    out = np.full(mask.shape, np.nan)
    out[mask] = values
    return out


def assert_matches(actual, expected: np.ndarray, *, rtol: float = 1e-9, atol=0.0,
                   name: str = "") -> None:
    """Same null positions (actual null ⇔ expected NaN) and values within ``rtol``.

    ``atol`` is a scalar or an array with one tolerance per row.
    """
    if isinstance(actual, pa.ChunkedArray):
        actual = actual.combine_chunks()
    got = to_numpy(actual)
    expected = np.asarray(expected, dtype=float)
    assert got.shape == expected.shape, f"{name}: shape {got.shape} != {expected.shape}"
    null_got = np.asarray(actual.is_null().to_numpy(zero_copy_only=False))
    null_exp = np.isnan(expected)
    bad = np.flatnonzero(null_got != null_exp)
    assert bad.size == 0, (
        f"{name}: null positions differ at rows {bad[:10].tolist()} "
        f"(got {got[bad[:5]].tolist()}, expected {expected[bad[:5]].tolist()})"
    )
    ok = ~null_exp
    err = np.abs(got[ok] - expected[ok])
    atol = np.broadcast_to(np.asarray(atol, dtype=float), expected.shape)[ok]
    tol = atol + rtol * np.abs(expected[ok])
    worst = np.flatnonzero(err > tol)
    assert worst.size == 0, (
        f"{name}: {worst.size} values differ beyond rtol={rtol}; first at valid row "
        f"{worst[0]}: got {got[ok][worst[0]]!r}, expected {expected[ok][worst[0]]!r}"
    )


def split_at(table: pa.Table, cuts: Iterable[int]) -> list:
    """RecordBatches of ``table`` cut at the given row positions (empty pieces kept)."""
    bounds = [0] + sorted(min(max(c, 0), table.num_rows) for c in cuts) + [table.num_rows]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        out.extend(table.slice(a, b - a).combine_chunks().to_batches() or
                   [pa.RecordBatch.from_pylist([], schema=table.schema)])
    return out


def assert_split_invariant(make_kernel: Callable[[], object], table: pa.Table,
                           cuts: Iterable[int], outputs: Sequence[str]) -> None:
    """The class fed batch by batch equals one call on the whole table, bit for bit."""
    whole = make_kernel()(table)
    kernel = make_kernel()
    parts = [kernel(b) for b in split_at(table, cuts)]
    pieced = pa.Table.from_batches(parts)
    for name in outputs:
        a = to_numpy(pieced.column(name))
        b = to_numpy(whole.column(name))
        assert np.array_equal(a, b, equal_nan=True), f"{name}: split output differs"
        assert pieced.column(name).null_count == whole.column(name).null_count


def assert_by_equivalent(make_keyed: Callable[[], object], make_plain: Callable[[], object],
                         table: pa.Table, outputs: Sequence[str], by: str = "symbol") -> None:
    """``by=`` output at each key's rows equals the un-keyed kernel run on that key alone."""
    keyed = make_keyed()(table)
    keys = table.column(by).to_numpy(zero_copy_only=False)
    for key in np.unique(keys.astype(str)):
        rows = np.flatnonzero(keys.astype(str) == key)
        alone = make_plain()(table.take(rows))
        for name in outputs:
            a = to_numpy(keyed.column(name).take(rows))
            b = to_numpy(alone.column(name))
            assert np.array_equal(a, b, equal_nan=True), f"{name}: key {key} differs"


def assert_state_round_trip(make_kernel: Callable[[], object], table: pa.Table, cut: int,
                            outputs: Sequence[str]) -> object:
    """A kernel restored from a pickled ``state_dict()`` after ``cut`` rows continues exactly
    as one that saw the whole table. Returns the restored kernel."""
    import pickle

    whole = make_kernel()(table)
    first = make_kernel()
    first(table.slice(0, cut))
    restored = make_kernel()
    restored.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))
    rest = restored(table.slice(cut))
    for name in outputs:
        assert np.array_equal(to_numpy(rest[name]), to_numpy(whole[name].slice(cut)),
                              equal_nan=True), f"{name}: restored state diverges"
    return restored
