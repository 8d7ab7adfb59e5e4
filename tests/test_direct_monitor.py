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
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
VENUES = venue_names()
FRAMES = 120  # data frames per venue


def direct_monitor(broker, sims: list, until, *args: str) -> str:
    """``sabot monitor --direct`` on the local servers ``sims`` and ``broker`` until ``until()``
    holds, then Ctrl+C; its output (the exit code must be 0)."""
    urls = ",".join(f"{v}={sim.url}" for v, sim in zip(VENUES, sims))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sabot", "monitor", "--direct", "--bootstrap", broker.bootstrap,
         "--url", urls, "--fees", "0", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert wait_for(until, 60), "the direct monitor did not decide on every record"
    finally:
        proc.send_signal(signal.SIGINT)
        text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, text[-3000:]
    return text


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
            text = direct_monitor(broker, sims,
                                  lambda: all(_summary_records(summary).get(v, 0) >= FRAMES for v in VENUES),
                                  "--output", str(out), "--summary-json", str(summary),
                                  "--record-arrivals", str(arrivals), "--parquet-dir", str(tmp_path))
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
                        (["--url", "coinbase=ws://127.0.0.1:1"], "--url is an option of --direct"),
                        (["--channels", "book"], "--channels is an option of --direct"),
                        (["--direct", "--channels", "trades,book"], "include ticker"),
                        (["--direct", "--channels", "ticker,orders"], "unknown channel 'orders'")):
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


def _random_records(seed: int, n: int) -> list[dict]:
    """Collector-like ticker records of every venue, with what the direct path must also get
    right: USDT quotes before any rate and with a stale rate, crossed rate quotes, quotes that
    go stale (gaps beyond the join tolerance), and now and then a record the Python decision
    must leave to the Arrow batch path (an absurd price, a NaN, a string, an unknown venue)."""
    import random

    rng = random.Random(seed)
    spots = {"BTC": 100.0, "ETH": 10.0}
    t = time.time_ns() + 1_000_000_000  # received "after" the first decision: latencies counted
    out = []
    for _ in range(n):
        t += rng.choice([1, 5, 20, 80, 700]) * 1_000_000  # 700 ms: beyond the tolerance
        venue = rng.choice(["coinbase", "kraken", "kraken", "binance"])
        base = rng.choice(list(spots))
        symbol, raw = f"{base}/USD", f"{base}-USD"
        if venue == "binance":
            symbol, raw = f"{base}/USDT", f"{base}USDT"
        elif venue == "kraken" and rng.random() < 0.3:
            base, symbol, raw = "USDT", "USDT/USD", "USDT/USD"
        mid = 1.0 + rng.uniform(-0.002, 0.002) if base == "USDT" else \
            spots[base] * (1 + rng.uniform(-0.002, 0.002))
        half = mid * rng.choice([0.0001, 0.0003, -0.0002 if base == "USDT" else 0.0001])
        bid, ask = mid - half, mid + half
        rec = {"exchange": venue, "symbol": symbol, "raw_symbol": raw,
               "timestamp": t - rng.randint(0, 3_000_000), "recv_timestamp": t,
               "bid": bid, "ask": ask}
        odd = rng.random()
        if odd < 0.02:
            rec["bid"] = 1e20  # not an ordinary price: the batch goes the Arrow way
        elif odd < 0.03:
            rec["ask"] = float("nan")  # the quote guard skips it
        elif odd < 0.035:
            rec["bid"] = "not a number"  # Arrow cannot convert it: set aside
        elif odd < 0.04:
            rec["exchange"] = "nowhere"  # the join skips it
        out.append(rec)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_decisions_on_records_equal_the_arrow_batch_path(tmp_path, seed):
    """The direct path decides on a tick's records as Python values (``FastArrival``) and
    leaves any batch it cannot take to the Arrow path, with the state shared: the records,
    counts and every open/close record equal those of the Arrow path alone on the same
    batches."""
    import random

    from sabot.collectors.direct import DirectDecisions

    fees = arb.parse_fees("coinbase=1,kraken=2,binance=1.5", VENUES)
    records = _random_records(seed, 600)
    rng = random.Random(seed)
    sizes = []
    while sum(sizes) < len(records):
        sizes.append(rng.choice([1, 1, 1, 2, 3, 6]))
    results = []
    for way in ("arrow", "records"):
        out = tmp_path / f"{way}.jsonl"
        monitor = arb.Monitor(fees, 0.5, out, None, 1e9, venues=VENUES, rate_max_age_ms=50)
        decision = arb.ArrivalDecision(monitor)
        fast = []
        if way == "records":
            prepare = decision.fast.prepare
            decision.fast.prepare = lambda recs: fast.append(prepare(recs) is not None) or \
                prepare(recs)
            queue = DirectDecisions(decision, arb.DECISION_SCHEMA)
        else:
            queue = DirectDecisions(lambda batch: decision(batch), arb.DECISION_SCHEMA)
        at = 0
        for size in sizes:
            queue._pending.extend(dict(r) for r in records[at:at + size])
            at += size
            queue.flush()
        queue.close()
        monitor.close()
        summary = monitor.summary(with_latencies=False)
        for key in ("elapsed_s", "latency_ms_p50", "latency_ms_p99"):
            summary.pop(key)
        results.append((_events(out), summary, (queue.records, queue.rejected, queue.errors),
                        len(monitor.latencies)))
        if way == "records":  # both ways were taken
            assert 0.5 * len(fast) < sum(fast) < len(fast), (sum(fast), len(fast))
    (events_a, summary_a, counts_a, lat_a), (events_r, summary_r, counts_r, lat_r) = results
    assert events_r == events_a and len(events_a) > 10
    assert summary_r == summary_a
    assert counts_r == counts_a and counts_a[1] > 0
    assert lat_r == lat_a > 0
    assert sum(summary_a["unpriced_quotes"].values()) > 0 and sum(summary_a["skipped_quotes"].values()) > 0
    assert {e["close_reason"] for e in events_a if e["event"] == "close"} >= {"edge", "stale"}


def test_parquet_writer_thread_loses_no_row_through_io_errors_and_bad_rows(tmp_path):
    """``ParquetSink(background=True)`` (the direct path's): row groups are written by a writer
    thread; a failing write keeps its rows, is counted and retried, a row Arrow cannot store
    is set aside, and every other row ends up in the file once, in order."""
    import pyarrow.parquet as pq

    from sabot.collectors.sinks import ParquetSink

    sink = ParquetSink(tmp_path / "k.parquet", "kraken", row_group_size=10, retry_base=0.02,
                       retry_max=0.05, background=True)
    set_aside = []
    sink.on_reject = lambda reason, text, row: set_aside.append((reason, row["timestamp"]))
    rows = [{"exchange": "kraken", "symbol": "BTC/USD", "raw_symbol": "BTC/USD",
             "timestamp": 1_700_000_000_000_000_000 + i, "recv_timestamp": 1_700_000_000_000_000_000 + i,
             "bid": 100.0 + i, "ask": 100.5 + i, "bid_size": 1.0, "ask_size": 2.0, "price": 100.2,
             "volume_24h": 10.0, "sequence": None} for i in range(45)]
    rows[12]["timestamp"] = 2 ** 70  # beyond int64: cannot be stored
    sink.parts_dir.rmdir()
    sink.parts_dir.write_text("not a directory")  # every part write now fails with an OSError
    for r in rows[:25]:
        sink.write(r)
    assert wait_for(lambda: (sink.tick(), sink.write_errors >= 3)[1], 30)
    # the unstorable row was set aside at the first attempt; the I/O errors kept the others
    assert sink.rows_written == 0 and sink.buffered == 24 and len(set_aside) == 1
    sink.parts_dir.unlink()
    sink.parts_dir.mkdir()  # the disk is back
    for r in rows[25:]:
        sink.write(r)
    assert wait_for(lambda: (sink.tick(), sink.buffered == 0)[1], 30)
    for r in rows[:3]:  # buffered again, written by close
        sink.write({**r, "bid": r["bid"] + 1000})
    sink.close()
    assert set_aside == [("unserializable", 2 ** 70)]
    assert sink.unwritten == 0 and sink.rows_written == 44 + 3
    expected = [r["bid"] for i, r in enumerate(rows) if i != 12] + [r["bid"] + 1000 for r in rows[:3]]
    assert pq.read_table(tmp_path / "k.parquet").column("bid").to_pylist() == expected


def test_latency_percentiles_periodic_from_the_histogram_final_exact():
    """The periodic summary reads its latency percentiles from the histogram beside the
    latencies (cheap while the decisions run), within a bin (1.2 %) of the exact ones; the
    final summary's are exact and list every latency in decision order."""
    import numpy as np

    monitor = arb.Monitor(arb.parse_fees("0", VENUES), 0.0, None, None, 1e9, venues=VENUES)
    rng = np.random.default_rng(5)
    values = rng.lognormal(-0.5, 1.2, 3000)
    for i in range(0, 1500, 3):  # a tick's few values (Python), then larger arrays (numpy)
        monitor.latencies.extend(list(values[i:i + 3]))
    for i in range(1500, 3000, 500):
        monitor.latencies.extend(values[i:i + 500])
    periodic = monitor.summary(with_latencies=False)
    final = monitor.summary(with_latencies=True)
    exact = np.percentile(values, [50, 99])
    assert [final["latency_ms_p50"], final["latency_ms_p99"]] == exact.tolist()
    assert final["latencies_ms"] == values.tolist() and "latencies_ms" not in periodic
    assert periodic["latency_ms_p50"] == pytest.approx(exact[0], rel=0.012)
    assert periodic["latency_ms_p99"] == pytest.approx(exact[1], rel=0.012)
    monitor.close()


def test_direct_monitor_records_every_channel_and_follows_coinbases_book(tmp_path):
    """``--channels ticker,trades,book``: each venue's one connection records all three into
    Kafka and Parquet (the counts agree), Binance's book snapshots come from the local server,
    and Coinbase's tickers include one per change of its best bid or offer (the decision sees
    the book)."""
    import pyarrow.parquet as pq

    from sabot.broker import EmbeddedBroker
    from sabot.sim import SIMULATORS
    from sabot.venues import get_venue

    channels = ("ticker", "trades", "book")
    topics = [t for v in VENUES for t in (get_venue(v).ticker_topic, f"{v}-trades", f"{v}-book")]
    summary = tmp_path / "summary.json"
    sims = [SIMULATORS[v](seed=5, rate=150, count=60) for v in VENUES]
    with EmbeddedBroker(port=0, topics=topics, partitions=1) as broker:
        for sim in sims:
            sim.__enter__()
        try:
            direct_monitor(broker, sims,
                           lambda: all(sim.finished for sim in sims)
                           and all(_summary_records(summary).get(v, 0) >= 60 for v in VENUES),
                           "--summary-json", str(summary), "--parquet-dir", str(tmp_path),
                           "--channels", ",".join(channels))
            in_kafka = read_topics(broker.bootstrap, topics)
        finally:
            for sim in sims:
                sim.__exit__(None, None, None)
    for v in VENUES:
        files = {"ticker": tmp_path / f"{v}.parquet", "trades": tmp_path / f"{v}-trades.parquet",
                 "book": tmp_path / f"{v}-book.parquet"}
        tops = {"ticker": get_venue(v).ticker_topic, "trades": f"{v}-trades", "book": f"{v}-book"}
        for ch in channels:
            rows = pq.read_table(files[ch]).num_rows
            assert rows > 0 and rows == len(in_kafka[tops[ch]]), (v, ch, rows, len(in_kafka[tops[ch]]))
        tickers = pq.read_table(files["ticker"]).to_pylist()
        if v == "coinbase":  # the ticker frames' records, and one per top-of-book change
            from_book = [t for t in tickers if t["sequence"] is None]
            assert from_book and len(tickers) == 60 + len(from_book)
        else:
            assert len(tickers) == 60, v
