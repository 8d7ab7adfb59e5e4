#!/usr/bin/env python3
"""A multi-exchange platform: features per venue, chained ASOF joins, cheapest/richest venue.

For each registered venue (:mod:`sabot.venues`): normalised symbols, ``midprice`` and
``l1_imbalance``.  The venues' streams are aligned in event time with
``async for batches in Stream.zip_async(...)``; streaming ASOF joins in registry order
(first ⋈ second ⋈ ..., by symbol, 500 ms) give one row per quote of the first venue with
``<venue>_midprice`` (and ``<venue>_l1_imbalance``) of every venue; ``arbitrage_opportunities``
on the mids with no fees names the cheapest (``buy_venue``) and the richest (``sell_venue``)
venue and the edge between them in bps (``gross_bps``).

    python examples/multi_exchange_platform.py --parquet data/            # <venue>.parquet files
    python examples/multi_exchange_platform.py --bootstrap localhost:19092 --duration 30
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import AsyncIterator, Dict, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from sabot.api import Stream  # noqa: E402
from sabot.broker import BrokerUnreachableError, check_reachable  # noqa: E402
from sabot.fintech import (  # noqa: E402
    StreamingAsofJoinKernel, arbitrage_opportunities, l1_imbalance, midprice, normalize_symbols,
)
from sabot.venues import get_venue, venue_names  # noqa: E402

VENUES = venue_names()
FEATURE_COLUMNS = ("timestamp", "symbol", "exchange", "bid", "ask", "midprice", "l1_imbalance")
MID_COLUMNS = [f"{v}_midprice" for v in VENUES]


def features(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Per-venue features: normalised symbol, midprice, level-1 imbalance."""
    out = l1_imbalance(midprice(normalize_symbols(batch)))
    return out.select(list(FEATURE_COLUMNS))


def venue_streams(parquet_dir: Optional[Path], bootstrap: Optional[str],
                  batch_size: int = 4096) -> Sequence[Stream]:
    if parquet_dir is not None:
        return [Stream.from_parquet(parquet_dir / f"{v}.parquet", batch_size=batch_size).map(features)
                for v in VENUES]
    group = f"sabot-platform-{uuid.uuid4().hex[:8]}"
    return [Stream.from_kafka(bootstrap, get_venue(v).ticker_topic, f"{group}-{v}",
                              order_by="timestamp", from_beginning=True).map(features)
            for v in VENUES]


class ChainedAsof:
    """first ⋈ second ⋈ ... over zipped batches: nested ``asof_join``, one streaming kernel per
    further venue; each kernel's output is the next one's left side."""

    def __init__(self, tolerance_ms: float = 500, venues: int = len(VENUES)) -> None:
        self.kernels = [StreamingAsofJoinKernel(on="timestamp", by="symbol", tolerance_ms=tolerance_ms)
                        for _ in range(venues - 1)]

    def step(self, *batches: Optional[pa.RecordBatch]) -> Optional[pa.Table]:
        """Feed one zipped span (one batch or None per venue); the joined rows of the first
        venue that became final (or None)."""
        left = [batches[0]] if batches[0] is not None and batches[0].num_rows else []
        for kernel, right in zip(self.kernels, batches[1:]):
            outs = [kernel.process_left(b) for b in left if b is not None and b.num_rows]
            if right is not None and right.num_rows:
                outs.append(kernel.process_right(right))
            left = outs
        return _concat(left)

    def flush(self) -> Optional[pa.Table]:
        left: list = []
        for kernel in self.kernels:
            outs = [kernel.process_left(b) for b in left if b is not None and b.num_rows]
            outs.append(kernel.flush())
            left = outs
        return _concat(left)


def _concat(batches) -> Optional[pa.Table]:
    batches = [b for b in batches if b is not None and b.num_rows]
    return pa.Table.from_batches(batches) if batches else None


def venue_extremes(joined: pa.Table) -> pa.Table:
    """Cheapest/richest venue by midprice and the edge between them (bps), per row."""
    present = [c for c in MID_COLUMNS if c in joined.schema.names]
    if len(present) < 2:
        return joined
    return arbitrage_opportunities(joined, {c.split("_")[0]: c for c in present}, fees_bps=0.0)


async def platform(streams: Sequence[Stream], tolerance_ms: float = 500) -> AsyncIterator[pa.Table]:
    """Joined rows with ``buy_venue`` (cheapest), ``sell_venue`` (richest) and ``gross_bps``."""
    join = ChainedAsof(tolerance_ms, len(streams))
    async for batches in Stream.zip_async(*streams):
        out = join.step(*batches)
        if out is not None and out.num_rows:
            yield venue_extremes(out)
    out = join.flush()
    if out is not None and out.num_rows:
        yield venue_extremes(out)


async def main_async(args: argparse.Namespace) -> int:
    if args.parquet is None:
        check_reachable(args.bootstrap, timeout_s=args.connect_timeout)
    streams = venue_streams(args.parquet, args.bootstrap)
    writer = None
    latest: Dict[str, dict] = {}
    rows = 0
    started = time.monotonic()
    last_print = started
    try:
        async for batch in platform(streams, args.tolerance_ms):
            rows += batch.num_rows
            if args.output is not None:
                if writer is None:
                    writer = pq.ParquetWriter(args.output, batch.schema)
                writer.write_table(batch)
            for row in batch.to_pylist():
                latest[row["symbol"]] = row
            now = time.monotonic()
            if now - last_print >= args.print_every:
                last_print = now
                print_latest(latest, rows)
            if args.duration and now - started >= args.duration:
                break
    finally:
        if writer is not None:
            writer.close()
    print_latest(latest, rows)
    return 0


def print_latest(latest: Dict[str, dict], rows: int) -> None:
    print(f"--- {rows} joined rows ---")
    for sym, r in sorted(latest.items()):
        mids = "  ".join(f"{v} {r.get(f'{v}_midprice') or float('nan'):,.2f}" for v in VENUES)
        imb = "  ".join(f"{v[:2]} {r.get(f'{v}_l1_imbalance') or float('nan'):+.2f}" for v in VENUES)
        edge = r.get("gross_bps")
        extremes = (f"cheapest {r['buy_venue']}, richest {r['sell_venue']}, edge {edge:.2f} bps"
                    if edge is not None else "fewer than two venues quoted")
        print(f"{sym:<9} {mids}  | imbalance {imb} | {extremes}")
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--parquet", type=Path,
                     help="directory with one <venue>.parquet per venue (" + ", ".join(VENUES) + ")")
    src.add_argument("--bootstrap", default="localhost:19092", help="Kafka bootstrap servers")
    p.add_argument("--connect-timeout", type=float, default=8.0,
                   help="Kafka: give up when no broker answers within this many seconds")
    p.add_argument("--tolerance-ms", type=float, default=500)
    p.add_argument("--duration", type=float, default=None, help="stop after N seconds (Kafka)")
    p.add_argument("--output", type=Path, default=None, help="write the joined rows to Parquet")
    p.add_argument("--print-every", type=float, default=5.0)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 0
    except (BrokerUnreachableError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
