"""What handing kernels polars, pandas or numpy data costs next to pyarrow.

Run: ``python benchmarks/interop_overhead.py [rows]`` from the repo root (10,000,000 rows by
default).  For ``midprice`` (two input columns) and ``ewma`` (one) on the same values given as
each kind of data, prints the median of 5 calls and its ratio to the pyarrow RecordBatch call;
the difference is the conversion in and the result's way back (``sabot.interop``).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402

from sabot.fintech import ewma, midprice  # noqa: E402

REPEATS = 5


def median_seconds(fn: Callable[[], Any]) -> float:
    fn()                                   # warm: first-touch of buffers, lazy imports
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(kernel: str, inputs: Dict[str, Any], call: Callable[[Any], Any]) -> None:
    base = None
    for label, data in inputs.items():
        seconds = median_seconds(lambda: call(data))
        base = seconds if base is None else base
        print(f"{kernel:9s} {label:26s} {seconds * 1e3:9.1f} ms   x{seconds / base:5.2f}")


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    rng = np.random.default_rng(1)
    bid = 100.0 + np.cumsum(rng.normal(0, 0.01, rows))
    ask = bid + rng.uniform(0.01, 0.05, rows)
    quotes = {"bid": bid, "ask": ask}
    print(f"{rows:,} rows, median of {REPEATS}")
    report("midprice", {
        "pyarrow RecordBatch": pa.RecordBatch.from_arrays([pa.array(bid), pa.array(ask)],
                                                          names=["bid", "ask"]),
        "pyarrow Table": pa.table(quotes),
        "polars DataFrame": pl.DataFrame(quotes),
        "pandas DataFrame": pd.DataFrame(quotes),
    }, midprice)
    report("ewma", {
        "pyarrow RecordBatch": pa.RecordBatch.from_arrays([pa.array(bid)], names=["price"]),
        "polars DataFrame": pl.DataFrame({"price": bid}),
        "pandas DataFrame": pd.DataFrame({"price": bid}),
        "numpy array": bid,
        "pyarrow Array": pa.array(bid),
        "polars Series": pl.Series("price", bid),
        "pandas Series": pd.Series(bid),
    }, lambda data: ewma(data, alpha=0.1))


if __name__ == "__main__":
    main()
