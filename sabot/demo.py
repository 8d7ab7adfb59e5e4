"""``make demo``: the kernels on a generated Parquet file (the live multi-exchange demo lands later).

Writes ``./data/demo_ticks.parquet`` (a seeded random walk for three symbols), reads it back in
64Ki-row batches, runs ``midprice``, ``ewma`` and ``rsi`` per symbol with state carried across
batches, and prints the last values per symbol with the throughput.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sabot.fintech import EWMA, RSI, midprice

SYMBOLS = ("BTC/USD", "ETH/USD", "SOL/USD")
START_PRICES = np.array([65_000.0, 3_400.0, 150.0])


def generate(path: Path, rows: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(SYMBOLS), rows)
    steps = rng.normal(0.0, 2e-4, rows)
    price = np.empty(rows)
    level = np.log(START_PRICES)
    for i in range(rows):  # one random walk per symbol, interleaved
        level[which[i]] += steps[i]
        price[i] = level[which[i]]
    price = np.exp(price)
    half = price * rng.uniform(0.5e-4, 2e-4, rows)
    table = pa.table({
        "symbol": pa.array(np.array(SYMBOLS)[which]),
        "timestamp": pa.array(1_700_000_000_000_000_000 + np.arange(rows) * 1_000_000,
                              pa.timestamp("ns", tz="UTC")),
        "bid": price - half,
        "ask": price + half,
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=30.0,
                        help="accepted for the live demo; this offline demo runs once")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--output", type=Path, default=Path("data/demo_ticks.parquet"))
    args = parser.parse_args(argv)

    print("Sabot demo (offline kernels). The live demo — embedded broker, three simulated exchanges,")
    print("three collectors and the arbitrage monitor — replaces this once those parts land.\n")
    generate(args.output, args.rows)
    print(f"wrote {args.rows:,} ticks for {', '.join(SYMBOLS)} to {args.output}")

    ewma_k = EWMA(column="midprice", alpha=0.05, by="symbol")
    rsi_k = RSI(column="midprice", period=14, by="symbol")
    last = {}
    t0 = time.perf_counter()
    for batch in pq.ParquetFile(args.output).iter_batches(batch_size=64 * 1024):
        out = rsi_k(ewma_k(midprice(batch)))
        for key, m, e, r in zip(*(out[c].to_pylist() for c in ("symbol", "midprice", "ewma", "rsi"))):
            last[key] = (m, e, r)
    elapsed = time.perf_counter() - t0
    print(f"midprice + ewma + rsi by symbol over {args.rows:,} rows in 64Ki batches: "
          f"{elapsed:.2f} s including Parquet reads and Python row access\n")
    print(f"{'symbol':<10} {'midprice':>12} {'ewma(0.05)':>12} {'rsi(14)':>8}")
    for sym in SYMBOLS:
        m, e, r = last[sym]
        print(f"{sym:<10} {m:>12.2f} {e:>12.2f} {r:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
