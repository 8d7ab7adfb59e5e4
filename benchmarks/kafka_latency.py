#!/usr/bin/env python
"""Produce → consume round trip through the embedded Tansu broker on loopback (no Sabot code).

A bare confluent-kafka producer sends one small message every ``--interval-ms`` (a paced
stream like a collector's, not a flood); a consumer in the same process, assigned every
partition written to (no group join), polls it back.  Round trip = ``time.perf_counter_ns()``
when the consumer's ``poll`` returned the message minus the time stamped into it just before
``produce``.  Reported per consumer ``fetch.wait.max.ms`` and producer ``linger.ms`` setting:
p50 / p99 / max in ms (numpy's linear percentiles).

This is the broker's share of the demo's tick-to-signal budget: produce request, Tansu's
in-memory append, the fetch answer, both clients' librdkafka threads.  Tansu 0.6 answers a
fetch only after sleeping out ``fetch.wait.max.ms`` (even with data found) and returns no data
at all with 0, so the round trip is bounded below by about 1-2 ms.

    python benchmarks/kafka_latency.py --messages 2000 --interval-ms 2
    python benchmarks/kafka_latency.py --topics 3 --partitions 3   # as the live monitor reads
"""
from __future__ import annotations

import argparse
import struct
import sys
import threading
import time
from pathlib import Path
from typing import List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def round_trips(bootstrap: str, topics: List[str], partitions: int, n: int, interval_s: float, *,
                linger_ms: float, fetch_wait_max_ms: int) -> np.ndarray:
    """Round-trip times in ms of ``n`` paced messages produced round robin over ``topics`` and
    their ``partitions``; the consumer is assigned every one of them (as the live monitor)."""
    from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "latency-bench",
                         "enable.auto.commit": False, "fetch.wait.max.ms": fetch_wait_max_ms,
                         "fetch.min.bytes": 1, "socket.nagle.disable": True})
    targets = [(t, p) for t in topics for p in range(partitions)]
    consumer.assign([TopicPartition(t, p, OFFSET_END) for t, p in targets])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms,
                         "socket.nagle.disable": True, "acks": 1})
    # warm up: connections, metadata, the first fetch at the end of the partition
    deadline = time.monotonic() + 10
    got_warm = False
    while not got_warm and time.monotonic() < deadline:
        for t, p in targets:
            producer.produce(t, value=struct.pack("<q", -1), partition=p)
        producer.flush(5)
        m = consumer.poll(0.5)
        got_warm = m is not None and m.error() is None
    while consumer.poll(0.2) is not None:
        pass

    out: List[float] = []
    done = threading.Event()

    def consume() -> None:
        while len(out) < n and not done.is_set():
            m = consumer.poll(0.1)
            if m is None or m.error() is not None:
                continue
            now = time.perf_counter_ns()
            (sent,) = struct.unpack("<q", m.value())
            if sent >= 0:
                out.append((now - sent) / 1e6)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    for i in range(n):
        t, p = targets[i % len(targets)]
        producer.produce(t, value=struct.pack("<q", time.perf_counter_ns()), partition=p)
        producer.poll(0)
        time.sleep(interval_s)
    producer.flush(10)
    reader.join(10)
    done.set()
    reader.join(1)
    consumer.close()
    return np.asarray(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--interval-ms", type=float, default=2.0, help="pause between messages")
    p.add_argument("--fetch-wait-max-ms", default="1,10,50",
                   help="consumer fetch.wait.max.ms values to try (comma-separated)")
    p.add_argument("--linger-ms", default="0,5", help="producer linger.ms values to try")
    p.add_argument("--topics", type=int, default=1, help="topics the consumer reads (the demo: 3)")
    p.add_argument("--partitions", type=int, default=1, help="partitions per topic (the demo: 3)")
    args = p.parse_args(argv)

    from sabot.broker import EmbeddedBroker

    topics = [f"latency-bench-{i}" for i in range(args.topics)]
    with EmbeddedBroker(port=0, topics=topics, partitions=args.partitions) as broker:
        for linger in [float(x) for x in args.linger_ms.split(",")]:
            for wait in [int(x) for x in args.fetch_wait_max_ms.split(",")]:
                rt = round_trips(broker.bootstrap, topics, args.partitions, args.messages,
                                 args.interval_ms / 1000.0, linger_ms=linger,
                                 fetch_wait_max_ms=wait)
                label = (f"{args.topics}x{args.partitions} partitions linger.ms={linger:g} "
                         f"fetch.wait.max.ms={wait}")
                if len(rt) == 0:
                    print(f"{label:<55} no messages came back")
                    continue
                print(f"{label:<55} n={len(rt):>5}  p50 {np.percentile(rt, 50):7.3f} ms  "
                      f"p99 {np.percentile(rt, 99):7.3f} ms  max {rt.max():7.3f} ms", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
