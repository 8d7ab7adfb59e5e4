"""Side-by-side peers for volatility / liquidity / execution-risk kernels (contract: common.md).

``cases(scale)`` returns (case name, rows, {implementation: fn}); every fn runs the operation
once on data generated beforehand. Peers compute the same quantity: rolling sums (pandas,
polars, numpy cumsum), rolling cov/var (pandas, polars), rolling quantile (pandas, polars),
cumulative VWAP (numpy cumsum, pandas).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Tuple

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa

from sabot.fintech import historical_var, kyle_lambda, parkinson_vol, realized_var, vwap

WINDOW = 20
VAR_WINDOW = 250


def _data(n: int, seed: int = 0) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    price = 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    return {
        "log_return": rng.normal(0, 1e-3, n),
        "signed_volume": rng.normal(0, 5.0, n),
        "high": price * (1 + rng.uniform(0, 2e-3, n)),
        "low": price * (1 - rng.uniform(0, 2e-3, n)),
        "price": price,
        "volume": rng.exponential(2.0, n),
        "pnl": rng.standard_t(4, n),
    }


def _numpy_rolling_sum(x: np.ndarray, w: int) -> np.ndarray:
    c = np.concatenate([[0.0], np.cumsum(x)])
    out = np.full(x.size, np.nan)
    out[w - 1:] = c[w:] - c[:-w]
    return out


def cases(scale: float = 1.0) -> List[Tuple[str, int, Dict[str, Callable[[], object]]]]:
    n = max(1000, int(1_000_000 * scale))
    d = _data(n)
    batch = pa.record_batch(d)
    df = pd.DataFrame(d)
    pf = pl.DataFrame(d)
    hl2 = np.log(d["high"] / d["low"]) ** 2
    park_denom = 4 * math.log(2) * WINDOW

    return [
        (f"realized_var w={WINDOW}", n, {
            "sabot": lambda: realized_var(batch, window=WINDOW),
            "pandas": lambda: (df["log_return"] ** 2).rolling(WINDOW).sum(),
            "polars": lambda: pf.select((pl.col("log_return") ** 2).rolling_sum(WINDOW)),
            "numpy": lambda: _numpy_rolling_sum(d["log_return"] ** 2, WINDOW),
        }),
        (f"parkinson_vol w={WINDOW}", n, {
            "sabot": lambda: parkinson_vol(batch, window=WINDOW),
            "pandas": lambda: np.sqrt(
                (np.log(df["high"] / df["low"]) ** 2).rolling(WINDOW).sum() / park_denom),
            "polars": lambda: pf.select(
                (((pl.col("high") / pl.col("low")).log() ** 2).rolling_sum(WINDOW)
                 / park_denom).sqrt()),
            "numpy": lambda: np.sqrt(
                _numpy_rolling_sum(np.log(d["high"] / d["low"]) ** 2, WINDOW) / park_denom),
        }),
        (f"kyle_lambda w={WINDOW}", n, {
            "sabot": lambda: kyle_lambda(batch, window=WINDOW),
            "pandas": lambda: df["log_return"].rolling(WINDOW).cov(df["signed_volume"])
            / df["signed_volume"].rolling(WINDOW).var(),
            "polars": lambda: pf.select(
                pl.rolling_cov("log_return", "signed_volume", window_size=WINDOW)
                / pl.col("signed_volume").rolling_var(WINDOW)),
        }),
        (f"historical_var w={VAR_WINDOW}", n, {
            "sabot": lambda: historical_var(batch, window=VAR_WINDOW),
            "pandas": lambda: -df["pnl"].rolling(VAR_WINDOW).quantile(0.05),
            "polars": lambda: pf.select(-pl.col("pnl").rolling_quantile(
                0.05, interpolation="linear", window_size=VAR_WINDOW)),
        }),
        ("vwap cumulative", n, {
            "sabot": lambda: vwap(batch),
            "numpy": lambda: np.cumsum(d["price"] * d["volume"]) / np.cumsum(d["volume"]),
            "pandas": lambda: (df["price"] * df["volume"]).cumsum() / df["volume"].cumsum(),
        }),
    ]


if __name__ == "__main__":          # quick stand-alone run: median of 5, ns/row
    import sys
    import time

    for name, rows, fns in cases(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0):
        timings = {}
        for impl, fn in fns.items():
            fn()
            runs = []
            for _ in range(5):
                t0 = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - t0)
            timings[impl] = float(np.median(runs)) * 1e9 / rows
        best_peer = min(v for k, v in timings.items() if k != "sabot")
        cols = "  ".join(f"{k}={v:7.2f}" for k, v in timings.items())
        print(f"{name:28s} ns/row  {cols}  sabot/best_peer={timings['sabot'] / best_peer:.2f}")
