"""Side-by-side peers for features_safety rolling kernels (and online_stats' rolling_zscore).

``cases(scale)`` follows the contract in the common brief: (case, rows, {impl: fn}); data is
generated before timing. Peers: TA-Lib (STDDEV, MIN, MAX), pandas ``Series.rolling`` and polars
``Series.rolling_*``.
Windows 20 and 1000 show the cost is O(1) per row in the window length. 10M rows, as the core
cases: at 1M a call's fixed cost after ``compare_peers``' ``gc.collect()`` (about 0.2 ms, caches
evicted by the collection) would weigh 0.2 ns/row.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import talib

from sabot.fintech import (
    rolling_kurt, rolling_max, rolling_min, rolling_skew, rolling_std, rolling_zscore,
)

WINDOWS = (20, 1000)


def _prices(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.001, n)))


def _pandas_zscore(s: pd.Series, w: int) -> pd.Series:
    r = s.rolling(w)
    return (s - r.mean()) / r.std()


def _polars_zscore(s: pl.Series, w: int) -> pl.Series:
    return (s - s.rolling_mean(w)) / s.rolling_std(w)


def cases(scale: float = 1.0) -> list[tuple[str, int, dict[str, Callable[[], object]]]]:
    n = max(1000, int(10_000_000 * scale))
    x = _prices(n)
    batch = pa.record_batch({"price": x})
    ps = pd.Series(x)
    pls = pl.Series("price", x)
    out = []
    for w in WINDOWS:
        out += [
            (f"rolling_std w={w}", n, {
                "sabot": lambda w=w: rolling_std(batch, "price", window=w),
                "pandas": lambda w=w: ps.rolling(w).std(),
                "polars": lambda w=w: pls.rolling_std(w),
                "talib STDDEV (ddof=0)": lambda w=w: talib.STDDEV(x, w, 1.0),
            }),
            (f"rolling_skew w={w}", n, {
                "sabot": lambda w=w: rolling_skew(batch, "price", window=w),
                "pandas": lambda w=w: ps.rolling(w).skew(),
                "polars": lambda w=w: pls.rolling_skew(w),
            }),
            (f"rolling_kurt w={w}", n, {
                "sabot": lambda w=w: rolling_kurt(batch, "price", window=w),
                "pandas": lambda w=w: ps.rolling(w).kurt(),
                "polars": lambda w=w: pls.rolling_kurtosis(w),
            }),
            (f"rolling_zscore w={w}", n, {
                "sabot": lambda w=w: rolling_zscore(batch, "price", window=w),
                "pandas": lambda w=w: _pandas_zscore(ps, w),
                "polars": lambda w=w: _polars_zscore(pls, w),
            }),
            (f"rolling_min w={w}", n, {
                "sabot": lambda w=w: rolling_min(batch, "price", window=w),
                "pandas": lambda w=w: ps.rolling(w).min(),
                "polars": lambda w=w: pls.rolling_min(w),
                "talib MIN": lambda w=w: talib.MIN(x, w),
            }),
            (f"rolling_max w={w}", n, {
                "sabot": lambda w=w: rolling_max(batch, "price", window=w),
                "pandas": lambda w=w: ps.rolling(w).max(),
                "polars": lambda w=w: pls.rolling_max(w),
                "talib MAX": lambda w=w: talib.MAX(x, w),
            }),
        ]
    return out
