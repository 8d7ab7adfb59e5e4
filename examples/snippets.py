#!/usr/bin/env python3
"""Short snippets, runnable against the collectors' Parquet output (``python examples/snippets.py data/``).

1. Three-exchange ASOF join of the Coinbase, Kraken and Binance files (coinbase_midprice,
   kraken_midprice, binance_midprice in one row per Coinbase quote).
2. The polars data-quality check on Coinbase's file (``parent_timestamp``, ``product_id``).
3. ``triangular_arbitrage`` on one ETH/BTC, BTC/USD, ETH/USD triangle.
4. ``cash_and_carry_edge`` of long spot (our latest Coinbase BTC/USD mid) / short perp.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from sabot.fintech import asof_join, cash_and_carry_edge, midprice, triangular_arbitrage  # noqa: E402


def three_exchange_asof(data: Path) -> pa.Table:
    cb = midprice(pq.read_table(data / "coinbase.parquet")).sort_by("timestamp")
    kr = midprice(pq.read_table(data / "kraken.parquet")).sort_by("timestamp")
    bn = midprice(pq.read_table(data / "binance.parquet")).sort_by("timestamp")
    aligned = asof_join(asof_join(cb, kr, on='timestamp', by='symbol', tolerance_ms=500),
                        bn, on='timestamp', by='symbol', tolerance_ms=500)
    return aligned.select(["timestamp", "symbol", "coinbase_midprice", "kraken_midprice",
                           "binance_midprice"])


def data_quality(data: Path) -> pl.DataFrame:
    cb = pl.read_parquet(data / "coinbase.parquet")
    lag = (cb['recv_timestamp'] - cb['parent_timestamp']).dt.total_milliseconds()
    return pl.DataFrame({
        "product_id": cb['product_id'].unique().sort(),
    }).join(
        cb.group_by('product_id').agg(
            pl.len().alias("rows"),
            pl.col('parent_timestamp').null_count().alias("missing_parent_timestamp"),
            (pl.col('bid') >= pl.col('ask')).sum().alias("crossed_quotes"),
        ),
        on="product_id",
    ).with_columns(pl.lit(float(lag.median())).alias("median_feed_lag_ms"))


def triangle() -> pa.Table:
    quotes = pa.table({"spot_ab": [0.0523], "spot_bc": [65_000.0], "spot_ac": [3_410.0]})
    return triangular_arbitrage(quotes, fees_bps=30.0)  # ETH→BTC→USD→ETH, three taker legs


def cash_and_carry(spot: float) -> pa.Table:
    book = pa.table({"spot_price": [spot], "perp_price": [spot * 1.0015], "funding_rate": [0.0001]})
    return cash_and_carry_edge(book, fees_bps=20.0, T_days=30.0, funding_freq_hours=8.0)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    data = Path(argv[0] if argv else "data")
    aligned = three_exchange_asof(data)
    print(f"1. three-exchange ASOF: {aligned.num_rows} rows")
    print(aligned.slice(max(aligned.num_rows - 3, 0)).to_pandas().to_string(index=False))
    print("\n2. data quality (Coinbase):")
    print(data_quality(data))
    tri = triangle()
    print(f"\n3. triangular arbitrage: edge {tri['arb_edge_bps'][0].as_py():.2f} bps, "
          f"route {tri['arb_route'][0].as_py()}")
    spot = aligned.filter(pa.compute.equal(aligned["symbol"], "BTC/USD"))["coinbase_midprice"][-1].as_py()
    carry = cash_and_carry(spot)
    print(f"4. cash and carry at spot {spot:,.2f}: {carry['carry_edge_bps'][0].as_py():.1f} bps a year")
    return 0


if __name__ == "__main__":
    sys.exit(main())
