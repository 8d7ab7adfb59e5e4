#!/usr/bin/env python
"""End to end through the embedded broker: Kafka -> midprice -> EWMA by symbol -> Kafka.

The job: read normalised ticker records (JSON, keyed by symbol, 3 partitions), add the
midprice ``(bid + ask) / 2`` and its EWMA per symbol (``alpha`` 0.94, first value = first
midprice), and produce every row, as JSON keyed by symbol, to an output topic.  Run the same way by

* **sabot**: ``Stream.from_kafka(...).map(midprice).map(EWMA("midprice", by="symbol"))
  .to_kafka(...)`` (at-least-once: offsets committed after the producer delivered the rows);
* **quix**: Quix Streams (``pip install 'sabot-marketdata[bench]'``), a ``StreamingDataFrame``
  with the midprice and a stateful EWMA keyed by the message key, ``to_topic``;
* **bare**: a confluent-kafka loop (with the consumer settings of the sabot job's source and
  the same producer defaults) that consumes batches of 10,000 and produces every message
  unchanged (no decoding, no processing, no flush or commit until the end): the ceiling of any
  consume -> produce job on this broker.  The sabot job does more than that: it commits its
  offsets as it goes, each once the records before it are delivered (at-least-once).

Each run is a fresh process with a fresh consumer group and output topic; the input topic is
produced once.  The rate counts from the first record processed to the last one delivered, so
the consumer-group join is reported apart (``join``).  Figures are medians over ``--runs``.
The first run of each engine is checked: the output topic must hold exactly ``--records``
messages (read back by offsets, not by the broker's high watermark, which the embedded broker
may report short).

    python benchmarks/end_to_end.py --records 1000000
    python benchmarks/end_to_end.py --records 200000 --engines sabot,bare --runs 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

ALPHA = 0.94
IN_TOPIC = "e2e-ticker"
ENGINES = ("sabot", "quix", "bare")
#: Kafka's default ``retention.ms`` (7 days).  The embedded broker does not list it among a
#: topic's configs; Quix Streams reads it to configure its changelog topics.
KAFKA_DEFAULT_RETENTION_MS = str(7 * 24 * 3600 * 1000)
#: consumer-group settings of the Quix job (fast joins against the embedded broker), as the
#: sabot job's source has them (``fast_consumer_config``)
GROUP_CONFIG = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 100,
                "fetch.wait.max.ms": 10}


# ------------------------------------------------------------------------------------------------
# workers: one engine, one run, in its own process; print one JSON line
# ------------------------------------------------------------------------------------------------
def run_sabot(bootstrap: str, out_topic: str, n: int, in_topic: str = IN_TOPIC
              ) -> Dict[str, float]:
    from sabot.api import Stream
    from sabot.fintech import EWMA, midprice
    from sabot.kafka import fast_consumer_config

    marks: Dict[str, float] = {}

    def first(batch: Any) -> Any:
        if "first" not in marks:
            marks["first"], marks["cpu"] = time.perf_counter(), time.process_time()
            marks["main"] = time.thread_time()
        return batch

    t0 = time.perf_counter()
    stream = (Stream.from_kafka(bootstrap, in_topic, f"sabot-{uuid.uuid4().hex[:8]}",
                                from_beginning=True, stop_at_end=True,
                                **fast_consumer_config())
              .map(first).map(midprice).map(EWMA("midprice", alpha=ALPHA, by="symbol")))
    sent = stream.to_kafka(bootstrap, out_topic, key="symbol")
    t1 = time.perf_counter()
    if sent["delivered"] != n:
        raise SystemExit(f"sabot delivered {sent['delivered']} of {n} records")
    return {"join": marks["first"] - t0, "process": t1 - marks["first"], "total": t1 - t0,
            "cpu": time.process_time() - marks["cpu"], "main": time.thread_time() - marks["main"]}


def run_bare(bootstrap: str, out_topic: str, n: int, in_topic: str = IN_TOPIC
             ) -> Dict[str, float]:
    from confluent_kafka import Consumer, Producer, TopicPartition

    from sabot.api._kafka import KafkaSource
    from sabot.kafka import fast_consumer_config, producer_config

    # the consumer settings of the sabot job's source
    config = KafkaSource(bootstrap, in_topic, f"bare-{uuid.uuid4().hex[:8]}",
                         from_beginning=True, **fast_consumer_config()).config
    consumer = Consumer(config)
    producer = Producer(producer_config(bootstrap))
    t0 = time.perf_counter()
    consumer.subscribe([in_topic])
    seen = 0
    t_first: Optional[float] = None
    done: Dict[Any, int] = {}  # last offset copied per partition
    produce, poll = producer.produce, producer.poll
    while seen < n:  # the record count is known: no end-of-topic guess needed
        msgs = consumer.consume(10_000, 0.1)
        if not msgs:
            continue
        if t_first is None:
            t_first, cpu0 = time.perf_counter(), time.process_time()
            main0 = time.thread_time()
        last: Dict[Any, int] = {}
        for m in msgs:
            if m.error() is not None:
                continue
            last[(m.topic(), m.partition())] = m.offset()
            while True:
                try:
                    produce(out_topic, value=m.value(), key=m.key())
                    break
                except BufferError:
                    poll(0.05)
            seen += 1
        poll(0)
        done.update(last)
    # no flush or commit per batch: the ceiling, not an at-least-once job
    if producer.flush(60):
        raise SystemExit("bare loop: records not delivered")
    consumer.commit(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in done.items()],
                    asynchronous=False)
    t1, cpu1, main1 = time.perf_counter(), time.process_time(), time.thread_time()
    consumer.close()
    assert t_first is not None
    return {"join": t_first - t0, "process": t1 - t_first, "total": t1 - t0, "cpu": cpu1 - cpu0,
            "main": main1 - main0}


def run_quix(bootstrap: str, out_topic: str, n: int, in_topic: str = IN_TOPIC
             ) -> Dict[str, float]:
    import tempfile

    from quixstreams import Application
    from quixstreams.models.topics.manager import TopicManager

    from sabot.api._kafka import source_fetch_defaults  # the sabot job's fetch settings

    # The embedded broker does not list retention.ms among a topic's configs; Quix derives its
    # changelog topics' retention from it.  Fill in Kafka's default where it is missing.
    fetch = TopicManager._fetch_topic

    def fetch_with_retention(self: Any, topic: Any) -> Any:
        found = fetch(self, topic)
        found.broker_config.extra_config.setdefault("retention.ms", KAFKA_DEFAULT_RETENTION_MS)
        return found
    TopicManager._fetch_topic = fetch_with_retention

    marks: Dict[str, float] = {}
    with tempfile.TemporaryDirectory() as state_dir:
        app = Application(broker_address=bootstrap,
                          consumer_group=f"quix-{uuid.uuid4().hex[:8]}",
                          auto_offset_reset="earliest", state_dir=state_dir,
                          consumer_extra_config={**GROUP_CONFIG, **source_fetch_defaults()},
                          loglevel="WARNING")
        src = app.topic(in_topic, value_deserializer="json", key_deserializer="string")
        dst = app.topic(out_topic, value_serializer="json", key_serializer="string")
        sdf = app.dataframe(src)

        def mid(row: dict) -> dict:
            if "first" not in marks:
                marks["first"], marks["cpu"] = time.perf_counter(), time.process_time()
            row["midprice"] = (row["bid"] + row["ask"]) / 2.0
            return row

        def ewma(row: dict, state: Any) -> dict:
            prev = state.get("ewma")
            x = row["midprice"]
            value = x if prev is None else ALPHA * x + (1.0 - ALPHA) * prev
            state.set("ewma", value)
            row["ewma"] = value
            return row

        sdf = sdf.apply(mid).apply(ewma, stateful=True)
        sdf.to_topic(dst)
        t0 = time.perf_counter()
        app.run(sdf, count=n, timeout=120, collect=False)
        t1, cpu1 = time.perf_counter(), time.process_time()
    if "first" not in marks:
        raise SystemExit("quix processed nothing")
    return {"join": marks["first"] - t0, "process": t1 - marks["first"], "total": t1 - t0,
            "cpu": cpu1 - marks["cpu"]}


WORKERS = {"sabot": run_sabot, "quix": run_quix, "bare": run_bare}


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------
def count_messages(bootstrap: str, topic: str, expected: int, timeout_s: float = 120.0) -> int:
    """Messages in ``topic``, read from the beginning until ``expected`` are seen or nothing
    arrives for a few seconds (never from the high watermark: the embedded broker may report
    it short)."""
    from confluent_kafka import Consumer

    from sabot.kafka import assign_all

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "e2e-count",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 10})
    assign_all(c, topic)
    seen, quiet_since, deadline = 0, time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() < deadline and time.monotonic() - quiet_since < 5.0:
        got = [m for m in c.consume(10_000, 0.5) if m.error() is None]
        if got:
            seen += len(got)
            quiet_since = time.monotonic()
        if seen > expected:
            break
        if seen == expected:  # one more fetch: a duplicate would show now
            quiet_since = min(quiet_since, time.monotonic() - 4.0)
    c.close()
    return seen


def worker_env(engine: str, quix_path: Optional[str]) -> Dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT)]
    if engine == "quix" and quix_path:
        paths.append(quix_path)
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def quix_available(quix_path: Optional[str]) -> Optional[str]:
    """The installed Quix Streams version, or None."""
    probe = subprocess.run([sys.executable, "-c", "import quixstreams; print(quixstreams.__version__)"],
                           env=worker_env("quix", quix_path), capture_output=True, text=True)
    return probe.stdout.strip() if probe.returncode == 0 else None


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="runs per engine (median reported)")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"comma-separated, of {', '.join(ENGINES)}")
    parser.add_argument("--quix-path", default=os.environ.get("SABOT_QUIX_PATH"),
                        help="a directory holding quixstreams (pip install --target DIR), when "
                             "it is not installed in this environment")
    parser.add_argument("--gc-threshold", type=int, default=None, metavar="N",
                        help="in each worker, before the run: gc.freeze() and the young "
                             "generation's collection threshold set to N (default: Python's)")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--out-topic", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.records < 1 or args.runs < 1:
        parser.error("--records and --runs must be >= 1")

    if args.gc_threshold is not None and args.gc_threshold < 1:
        parser.error(f"--gc-threshold must be >= 1, got {args.gc_threshold}")
    if args.worker:
        if args.gc_threshold is not None:
            import gc
            gc.freeze()
            gc.set_threshold(args.gc_threshold)
        result = WORKERS[args.worker](args.bootstrap, args.out_topic, args.records)
        print(json.dumps(result))
        return 0

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        parser.error(f"--engines: unknown {', '.join(unknown)} (known: {', '.join(ENGINES)})")
    if "quix" in engines:
        version = quix_available(args.quix_path)
        if version is None:
            print("quix: Quix Streams is not installed (pip install 'sabot-marketdata[bench]' "
                  "or --quix-path DIR); skipped")
            engines.remove("quix")
        else:
            print(f"quix: Quix Streams {version}")

    from sabot.broker import EmbeddedBroker
    from stream_data import exchange_rounded, produce, ticker_table

    n = args.records
    table = exchange_rounded(ticker_table("coinbase", n, seed=1))
    results: Dict[str, List[Dict[str, float]]] = {e: [] for e in engines}
    with EmbeddedBroker(port=0, topics=[IN_TOPIC], partitions=3) as broker:
        t0 = time.perf_counter()
        produce(broker.bootstrap, IN_TOPIC, table)
        print(f"produced {n:,} records to {IN_TOPIC} (3 partitions) in "
              f"{time.perf_counter() - t0:.1f}s")
        for run in range(args.runs):
            for engine in engines:
                out_topic = f"e2e-out-{engine}-{run}"
                broker.create_topic(out_topic, partitions=3)
                proc = subprocess.run(
                    [sys.executable, __file__, "--worker", engine, "--bootstrap",
                     broker.bootstrap, "--out-topic", out_topic, "--records", str(n)]
                    + ([] if args.gc_threshold is None else
                       ["--gc-threshold", str(args.gc_threshold)]),
                    env=worker_env(engine, args.quix_path), capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{engine} run {run + 1} failed:\n{proc.stderr[-3000:]}")
                    return 1
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                if run == 0:
                    r["output"] = count_messages(broker.bootstrap, out_topic, n)
                results[engine].append(r)
                print(f"  {engine:5s} run {run + 1}: {n / r['process']:>10,.0f} records/s  "
                      f"(process {r['process']:.2f}s, cpu {r['cpu']:.2f}s"
                      + (f" (main thread {r['main']:.2f}s)" if "main" in r else "") + ", "
                      f"join {r['join']:.2f}s"
                      + (f", output {r['output']:,} records" if "output" in r else "") + ")",
                      flush=True)

    print(f"\n{n:,} records, median of {args.runs} run(s):")
    rates = {}
    for engine, rs in results.items():
        proc_s = statistics.median(r["process"] for r in rs)
        rates[engine] = n / proc_s
        print(f"  {engine:5s} {rates[engine]:>10,.0f} records/s  process {proc_s:6.2f}s  "
              f"cpu {statistics.median(r['cpu'] for r in rs):6.2f}s  "
              f"join {statistics.median(r['join'] for r in rs):5.2f}s  "
              f"total {statistics.median(r['total'] for r in rs):6.2f}s")
    if "sabot" in rates:
        for other in ("bare", "quix"):
            if other in rates:
                print(f"  sabot / {other}: {rates['sabot'] / rates[other]:.2f}")
    bad = [e for e, rs in results.items() if rs and rs[0].get("output") != n]
    if bad:
        print(f"output topics not holding exactly {n:,} records: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
