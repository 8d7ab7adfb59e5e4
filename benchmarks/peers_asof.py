"""Side-by-side ASOF join: sabot vs polars join_asof, pandas merge_asof, DuckDB ASOF JOIN.

Case: 10M left rows x 5M right rows at scale 1.0, 8 symbols, backward,
500 ms tolerance, both sides sorted by timestamp (ns, UTC). ``scale`` shrinks both sides.
Also: the streaming join (left and right fed as 64k-row batches) in rows/s.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

SYMBOLS = ["BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD", "ADA/USD", "DOGE/USD", "AVAX/USD", "DOT/USD"]
TOLERANCE_MS = 500


def make_data(n_left: int, n_right: int, seed: int = 7):
    """Sorted left (price) and right (bid, ask) tables over ~1 day, symbols dictionary-encoded."""
    rng = np.random.default_rng(seed)
    span_ns = 86_400 * 10**9
    t0 = 1_700_000_000 * 10**9

    def side(n, cols):
        ts = np.sort(rng.integers(0, span_ns, n)) + t0
        codes = rng.integers(0, len(SYMBOLS), n).astype(np.int32)
        symbol = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(SYMBOLS))
        data = {"timestamp": pa.array(ts, type=pa.timestamp("ns", tz="UTC")), "symbol": symbol}
        for c in cols:
            data[c] = pa.array(100.0 + rng.standard_normal(n).cumsum() * 0.01)
        return pa.table(data)

    return side(n_left, ["price"]), side(n_right, ["bid", "ask"])


def cases(scale: float = 1.0):
    import pandas as pd
    import polars as pl

    from sabot.fintech import StreamingAsofJoinKernel, asof_join

    n_left, n_right = int(10_000_000 * scale), int(5_000_000 * scale)
    left, right = make_data(n_left, n_right)
    left_str = left.set_column(1, "symbol", left.column("symbol").cast(pa.string()))
    right_str = right.set_column(1, "symbol", right.column("symbol").cast(pa.string()))

    pl_left_cat = pl.from_arrow(left_str).with_columns(pl.col("symbol").cast(pl.Categorical))
    pl_right_cat = pl.from_arrow(right_str).with_columns(pl.col("symbol").cast(pl.Categorical))
    pl_left_str = pl.from_arrow(left_str)
    pl_right_str = pl.from_arrow(right_str)
    pd_left = left_str.to_pandas()
    pd_right = right_str.to_pandas()
    try:                             # DuckDB is in the bench extras only
        import duckdb
    except ModuleNotFoundError:
        duckdb = None
    if duckdb is not None:
        con = duckdb.connect()
        con.register("l", left_str)
        con.register("r", right_str)
    tol = pd.Timedelta(milliseconds=TOLERANCE_MS)

    def sabot_dict():
        return asof_join(left, right, on="timestamp", by="symbol", tolerance_ms=TOLERANCE_MS)

    def sabot_str():
        return asof_join(left_str, right_str, on="timestamp", by="symbol", tolerance_ms=TOLERANCE_MS)

    def polars_cat():
        return pl_left_cat.join_asof(pl_right_cat, on="timestamp", by="symbol", strategy="backward",
                                     tolerance=f"{TOLERANCE_MS}ms", check_sortedness=False)

    def polars_str():
        return pl_left_str.join_asof(pl_right_str, on="timestamp", by="symbol", strategy="backward",
                                     tolerance=f"{TOLERANCE_MS}ms", check_sortedness=False)

    def pandas_asof():
        return pd.merge_asof(pd_left, pd_right, on="timestamp", by="symbol", tolerance=tol,
                             direction="backward")

    def duckdb_asof():
        # ASOF JOIN has no tolerance clause: the tolerance is applied to the matched row afterwards
        return con.sql(
            f"""SELECT l.*, CASE WHEN r.timestamp >= l.timestamp - INTERVAL {TOLERANCE_MS} MILLISECOND
                              THEN r.bid END AS bid,
                       CASE WHEN r.timestamp >= l.timestamp - INTERVAL {TOLERANCE_MS} MILLISECOND
                              THEN r.ask END AS ask
                FROM l ASOF LEFT JOIN r ON l.symbol = r.symbol AND l.timestamp >= r.timestamp"""
        ).to_arrow_table()

    batch = 65_536

    def streaming(left_batches, right_batches):
        k = StreamingAsofJoinKernel(on="timestamp", by="symbol", tolerance_ms=TOLERANCE_MS)
        li = ri = 0
        rows = 0
        while li < len(left_batches) or ri < len(right_batches):
            take_right = ri < len(right_batches) and (
                li >= len(left_batches)
                or right_batches[ri]["timestamp"][0].value <= left_batches[li]["timestamp"][0].value
            )
            if take_right:
                rows += k.process_right(right_batches[ri]).num_rows
                ri += 1
            else:
                rows += k.process_left(left_batches[li]).num_rows
                li += 1
        rows += k.flush().num_rows
        assert rows == n_left
        return rows

    dict_batches = left.to_batches(max_chunksize=batch), right.to_batches(max_chunksize=batch)
    str_batches = left_str.to_batches(max_chunksize=batch), right_str.to_batches(max_chunksize=batch)

    name = f"asof backward 500ms {n_left}x{n_right} 8 symbols"
    return [
        (f"{name} (dictionary/Categorical keys)", n_left,
         {"sabot": sabot_dict, "polars Categorical": polars_cat}),
        (f"{name} (string keys)", n_left,
         {"sabot": sabot_str, "polars String": polars_str, "pandas merge_asof": pandas_asof,
          **({"duckdb ASOF JOIN": duckdb_asof} if duckdb is not None else {})}),
        (f"streaming {name} (64k-row batches)", n_left + n_right,
         {"sabot": lambda: streaming(*dict_batches)}),
        (f"streaming {name} (64k-row batches, string keys)", n_left + n_right,
         {"sabot": lambda: streaming(*str_batches)}),
    ]


if __name__ == "__main__":  # quick manual run: python benchmarks/peers_asof.py [scale]
    import sys
    import time

    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 0.1
    for case, rows, fns in cases(scale):
        for peer, fn in fns.items():
            times = []
            for _ in range(5 if scale <= 0.2 else 3):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            med = sorted(times)[len(times) // 2]
            print(f"{case:70s} {peer:22s} {med * 1e9 / rows:8.1f} ns/row")
