"""``sabot monitor --direct``: the collectors' connection loops inside the monitor process.

Against the real local exchange servers and the real embedded broker: every record the direct
path decided on is in its venue's Kafka topic (and nothing else is), and the opportunities it
reported are exactly what the Kafka path's on-arrival pipeline decides when it is fed the
Kafka messages in the order, and the batches, the direct path saw them (its arrival record).
Exit codes: 0 after a clean run, 1 when the broker cannot be reached, 2 for usage mistakes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from sabot.apps import monitor as arb
from sabot.venues import venue_names

ROOT = Path(__file__).resolve().parents[1]
VENUES = venue_names()
FRAMES = 120  # data frames per venue


def wait_for(condition, timeout_s: float, every_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every_s)
    return condition()


def _summary_records(path: Path) -> dict:
    try:
        return json.loads(path.read_text())["records"]
    except (OSError, ValueError, KeyError):
        return {}


def read_topics(bootstrap: str, topics: list[str], timeout_s: float = 30.0) -> dict[str, list[bytes]]:
    """Every message value of ``topics``, read from the beginning to the end of each partition."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"direct-test-{os.getpid()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics
                 for p in consumer.list_topics(t, timeout=10).topics[t].partitions]
        consumer.assign(parts)
        at_end = {(p.topic, p.partition): False for p in parts}
        out: dict[str, list[bytes]] = {t: [] for t in topics}
        deadline = time.monotonic() + timeout_s
        while not all(at_end.values()) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None:
                    out[msg.topic()].append(msg.value())
                    at_end[(msg.topic(), msg.partition())] = False
                elif msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end[(msg.topic(), msg.partition())] = True
        assert all(at_end.values()), f"could not read every partition to its end: {at_end}"
        return out
    finally:
        consumer.close()


def kafka_path_decisions(batches: list[list[bytes]], output: Path) -> arb.Monitor:
    """The Kafka path's on-arrival pipeline (:func:`sabot.apps.monitor.arrival_stream` after its
    Kafka source: count, guard, normalise, price USDT quotes, join, decide) on Kafka message values, batch by
    batch: decoded as the Kafka source decodes them, then through the same Stream operators."""
    from sabot.api import Stream
    from sabot.api._decode import JsonBatchDecoder, RecordRules
    from sabot.schema import TICKER_SCHEMA

    decoder = JsonBatchDecoder(TICKER_SCHEMA, rules=RecordRules.from_window("auto", from_beginning=True))
    decoded = []
    for values in batches:
        result = decoder.decode(values)
        assert not result.bad, result.bad
        decoded.append(result.batch)
    monitor = arb.Monitor(arb.parse_fees("0", VENUES), 0.0, output, None, 1e9, venues=VENUES)
    join = arb.ArrivalAsofJoin(VENUES, source_column="exchange", by="symbol", on="timestamp",
                               columns=arb.ARRIVAL_COLUMNS, tolerance_ms=arb.TOLERANCE_MS)
    stream = (Stream.from_batches(decoded).map(monitor.counter.by_exchange).map(monitor.guard)
              .map(monitor.normaliser).map(monitor.converter).map(join))
    for batch in stream:
        monitor.on_batch(batch)
    monitor.close()
    return monitor


def _events(path: Path) -> list[dict]:
    """The open/close records without what names the run (``id``) or the wall clock."""
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        rec.pop("decided_ns")
        rec.pop("id")
        out.append(rec)
    return out


def test_direct_decisions_equal_the_kafka_path_and_every_record_is_in_kafka(tmp_path):
    from sabot.broker import TICKER_TOPICS, EmbeddedBroker
    from sabot.collectors.direct import read_arrivals
    from sabot.sim import SIMULATORS
    from sabot.venues import get_venue

    out, summary, arrivals = tmp_path / "opps.jsonl", tmp_path / "summary.json", tmp_path / "arr.jsonl"
    sims = [SIMULATORS[v](seed=7, rate=150, count=FRAMES) for v in VENUES]
    with EmbeddedBroker(port=0, topics=TICKER_TOPICS, partitions=2) as broker:
        for sim in sims:
            sim.__enter__()
        try:
            urls = ",".join(f"{v}={sim.url}" for v, sim in zip(VENUES, sims))
            proc = subprocess.Popen(
                [sys.executable, "-m", "sabot", "monitor", "--direct", "--bootstrap", broker.bootstrap,
                 "--url", urls, "--fees", "0", "--output", str(out), "--summary-json", str(summary),
                 "--record-arrivals", str(arrivals), "--parquet-dir", str(tmp_path)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
            try:
                assert wait_for(lambda: all(_summary_records(summary).get(v, 0) >= FRAMES for v in VENUES),
                                60), "the direct monitor did not decide on every record"
            finally:
                proc.send_signal(signal.SIGINT)
                text, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, text[-3000:]
            in_kafka = read_topics(broker.bootstrap, [get_venue(v).ticker_topic for v in VENUES])
        finally:
            for sim in sims:
                sim.__exit__(None, None, None)

    final = json.loads(summary.read_text())
    assert final["records"] == {v: FRAMES for v in VENUES}
    seen = read_arrivals(arrivals)
    # every record decided on is in its venue's topic, exactly once, and the topic holds nothing else
    by_key = {}
    for v in VENUES:
        values = in_kafka[get_venue(v).ticker_topic]
        assert len(values) == FRAMES, (v, len(values))
        for value in values:
            rec = orjson.loads(value)
            key = (rec["exchange"], rec["symbol"], rec["recv_timestamp"], rec["timestamp"])
            assert key not in by_key, key
            by_key[key] = value
    assert len(seen) == len(by_key)
    batches: dict[int, list[bytes]] = {}
    for n, rec in seen:
        value = by_key.pop((rec["exchange"], rec["symbol"], rec["recv_timestamp"], rec["timestamp"]))
        assert orjson.loads(value) == rec
        batches.setdefault(n, []).append(value)
    assert not by_key
    # the Parquet files hold the same records
    import pyarrow.parquet as pq
    for v in VENUES:
        assert pq.read_table(tmp_path / f"{v}.parquet").num_rows == FRAMES
    # the Kafka path, fed the Kafka messages in the direct path's arrival order, decides the same
    replay = kafka_path_decisions([batches[n] for n in sorted(batches)], tmp_path / "replay.jsonl")
    direct_events = _events(out)
    assert direct_events == _events(tmp_path / "replay.jsonl")
    assert final["opportunities"] == replay.n_opportunities > 0
    assert final["closed"] == replay.tracker.closed == final["opportunities"]
    # every record is decided on, but a USDT quote that came before the first USDT/USD rate
    unpriced = sum(replay.converter.unpriced.values())
    assert final["unpriced_quotes"] == replay.converter.unpriced
    assert set(replay.converter.unpriced) <= {"binance"} and unpriced < 20
    assert final["evaluations"] == replay.evaluations == len(seen) - unpriced
    assert final["latency_ms_p50"] is not None and final["latency_ms_p99"] is not None
    assert "coinbase summary: written 120 to Kafka topic 'coinbase-ticker'" in text


def test_direct_monitor_exit_codes_unreachable_broker_and_usage_mistakes(tmp_path, capsys):
    from sabot.broker import port_is_free  # noqa: F401  (the broker module imports cleanly)

    # nothing listens on port 1: the collectors' rule, exit code 1 before streaming
    code = arb.main(["--direct", "--bootstrap", "127.0.0.1:1", "--connect-timeout", "1",
                     "--url", "coinbase=ws://127.0.0.1:1"])
    assert code == 1
    for argv, words in ((["--direct", "--url", "nowhere=ws://127.0.0.1:1"], "unknown venue 'nowhere'"),
                        (["--direct", "--url", "coinbase=http://x"], "not a ws:// or wss:// address"),
                        (["--direct", "--url", "coinbase"], "cannot read 'coinbase'"),
                        (["--direct", "--align", "event-time"], "--direct decides on arrival"),
                        (["--url", "coinbase=ws://127.0.0.1:1"], "--url is an option of --direct")):
        assert arb.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, (argv, err)


def test_decision_queue_decides_each_record_once_in_arrival_order():
    """Outside an event loop each record is decided on at once; a record Arrow cannot convert
    is set aside and counted, the others are decided on in order."""
    from sabot.collectors.direct import DirectDecisions

    seen = []
    d = DirectDecisions(lambda batch: seen.append(batch.column("bid").to_pylist()))
    sink = d.sink("coinbase")
    base = {"exchange": "coinbase", "symbol": "BTC-USD", "raw_symbol": "BTC-USD",
            "timestamp": 1, "recv_timestamp": 2, "ask": 2.0}
    sink.write({**base, "bid": 1.0})
    sink.write({**base, "bid": "not a number"})
    sink.write({**base, "bid": 1.5})
    sink.close()
    assert seen == [[1.0], [1.5]]
    assert (d.records, d.rejected, d.errors) == (2, 1, 0)


def test_a_kafka_delivery_failure_makes_the_exit_code_non_zero(tmp_path):
    """The broker goes away while the direct monitor runs: what it could not deliver is counted
    and the exit code is 1, as for a collector; the decisions went on meanwhile."""
    from sabot.broker import TICKER_TOPICS, EmbeddedBroker
    from sabot.sim import SIMULATORS

    summary = tmp_path / "summary.json"
    sims = [SIMULATORS[v](seed=3, rate=100) for v in VENUES]
    for sim in sims:
        sim.__enter__()
    try:
        broker = EmbeddedBroker(port=0, topics=TICKER_TOPICS, partitions=1).start()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sabot", "monitor", "--direct", "--bootstrap", broker.bootstrap,
                 "--url", ",".join(f"{v}={sim.url}" for v, sim in zip(VENUES, sims)),
                 "--fees", "0", "--summary-json", str(summary), "--flush-timeout", "1"],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
            assert wait_for(lambda: sum(_summary_records(summary).values()) >= 30, 60)
        finally:
            broker.stop()
        try:
            before = sum(_summary_records(summary).values())
            assert wait_for(lambda: sum(_summary_records(summary).values()) >= before + 30, 60), \
                "the decisions stopped with the broker"
        finally:
            proc.send_signal(signal.SIGINT)
            text, _ = proc.communicate(timeout=60)
    finally:
        for sim in sims:
            sim.__exit__(None, None, None)
    assert proc.returncode == 1, text[-3000:]
    assert "records not delivered to Kafka topic" in text, text[-3000:]
