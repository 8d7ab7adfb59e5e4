#!/usr/bin/env python
"""from_kafka throughput against the embedded Tansu broker (one process, one core for Python).

Prints messages/s for:
  1. decode only: the bulk decoder on message values fetched beforehand (batches of --batch-size);
  2. broker -> RecordBatches: ``Stream.from_kafka(...)`` iterated to the end of the topic
     (consume, decode, commit after each batch);
  3. broker -> midprice -> Parquet: an end-to-end pipeline with a sink and at-least-once commits.

    python benchmarks/kafka_throughput.py --messages 200000
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="decode-only runs (best kept)")
    args = parser.parse_args(argv)

    from confluent_kafka import Consumer

    from sabot.api import Stream
    from sabot.api._decode import JsonBatchDecoder
    from sabot.broker import EmbeddedBroker
    from sabot.fintech import midprice
    from sabot.kafka import assign_all, fast_consumer_config
    from sabot.schema import TICKER_SCHEMA
    from stream_data import exchange_rounded, produce, ticker_table

    n = args.messages
    # prices to the cent and sizes to 1e-8, as exchanges publish them
    table = exchange_rounded(ticker_table("coinbase", n, seed=1))
    with EmbeddedBroker(port=0, topics=["bench-ticker"], partitions=3) as broker:
        t0 = time.perf_counter()
        produce(broker.bootstrap, "bench-ticker", table)
        print(f"produced {n:,} messages in {time.perf_counter() - t0:.2f}s")

        # 1. decode only, on values fetched beforehand
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "prefetch",
                      "enable.auto.commit": False})
        assign_all(c, "bench-ticker")
        values = []
        while len(values) < n:
            values += [m.value() for m in c.consume(10_000, 1.0) if m.error() is None]
        c.close()
        decoder = JsonBatchDecoder(TICKER_SCHEMA)
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for i in range(0, n, args.batch_size):
                decoder.decode(values[i:i + args.batch_size])
            best = min(best, time.perf_counter() - t0)
        print(f"1. decode only (native, batches of {args.batch_size:,}): {n / best:,.0f} msg/s")
        arrow = JsonBatchDecoder(TICKER_SCHEMA, use_native=False)
        t0 = time.perf_counter()
        for i in range(0, n, args.batch_size):
            arrow.decode(values[i:i + args.batch_size])
        print(f"   decode only (pyarrow JSON reader fallback): {n / (time.perf_counter() - t0):,.0f} msg/s")

        # 2. broker -> RecordBatches
        s = Stream.from_kafka(broker.bootstrap, "bench-ticker", "bench-iter",
                              batch_size=args.batch_size, from_beginning=True, stop_at_end=True,
                              **fast_consumer_config())
        rows = 0
        t0 = None
        for batch in s:
            if t0 is None:  # start the clock at the first batch: excludes the group join
                t0 = time.perf_counter()
                first = batch.num_rows
            rows += batch.num_rows
        dt = time.perf_counter() - t0
        print(f"2. broker -> RecordBatches (from_kafka, commit per batch): "
              f"{(rows - first) / dt:,.0f} msg/s ({rows:,} rows)")

        # 3. broker -> midprice -> Parquet
        with tempfile.TemporaryDirectory() as tmp:
            marks = {}

            def clock(batch):
                marks.setdefault("t0", time.perf_counter())
                return batch

            t_start = time.perf_counter()
            Stream.from_kafka(broker.bootstrap, "bench-ticker", "bench-e2e",
                              batch_size=args.batch_size, from_beginning=True, stop_at_end=True,
                              **fast_consumer_config()).map(clock).map(midprice).to_parquet(
                Path(tmp) / "out", rows_per_file=100_000)
            dt = time.perf_counter() - marks["t0"]
            print(f"3. broker -> midprice -> Parquet (commit per closed file): {n / dt:,.0f} "
                  f"records/s (including group join: {n / (time.perf_counter() - t_start):,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
