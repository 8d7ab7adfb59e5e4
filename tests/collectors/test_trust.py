"""Collectors you can trust: validation at the edge, exact accounting, guarded sinks, truthful exits.

Every test runs the real collector scripts against the real local exchange servers (and the real
embedded broker where Kafka is involved).
"""
from __future__ import annotations

import json
import math
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sabot.broker import free_port
from sabot.collectors import BinanceCollector, CoinbaseCollector, KrakenCollector
from sabot.collectors.base import DATA
from sabot.collectors.sinks import KafkaSink, ParquetSink
from sabot.kafka import KafkaConfigError
from sabot.sim import SIMULATORS, KrakenSim

from collector_helpers import FAST_ENV, REPO, assert_records_match, collector_cmd, final_stats, read_rows
from test_collectors_kafka import consume_all

EXCHANGES = ["coinbase", "kraken", "binance"]
COLLECTOR_CLASSES = {"coinbase": CoinbaseCollector, "kraken": KrakenCollector, "binance": BinanceCollector}

#: The simulator's bad-value faults (``sabot.sim.servers.CORRUPT_KINDS``, checked below) and the
#: rejection reason each one must be counted under.
KINDS = ("nan", "inf", "negative", "zero", "bool", "negative_size", "future", "unsubscribed", "control")
REASON_OF = {"nan": "non_finite", "inf": "non_finite", "negative": "non_positive", "zero": "non_positive",
             "bool": "boolean", "negative_size": "negative", "future": "timestamp_ahead",
             "unsubscribed": "unsubscribed_symbol", "control": "control_characters"}


def run(exchange: str, url: str, *args: str, duration: float | None = 1.6, env: dict | None = None,
        timeout: float = 90) -> subprocess.CompletedProcess:
    """The collector script, whatever its exit code."""
    cmd = collector_cmd(exchange, url, *args)
    if duration is not None:
        cmd += ["--duration", str(duration)]
    return subprocess.run(cmd, env=env or FAST_ENV, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def rejected_by(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if k in set(REASON_OF.values())}


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if " ERROR " in ln]


# ------------------------------------------------------------------ 1. validation at the edge
@pytest.mark.parametrize("exchange", EXCHANGES)
def test_bad_values_rejected_by_reason_and_every_frame_accounted(exchange, tmp_path):
    out, dead = tmp_path / "o.parquet", tmp_path / "dead.jsonl"
    with SIMULATORS[exchange](rate=0, count=300, corrupt_every=7, garbage_every=40, keep_sent=True) as sim:
        proc = run(exchange, sim.url, "-F", "-o", str(out), "--dead-letter", str(dead), duration=2.0)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = final_stats(proc.stderr)
    n_bad = sum(sim.corrupt_sent.values())
    assert n_bad == 300 // 7 and len(sim.corrupt_sent) == len(sim.corrupt_kinds)
    # every data frame sent is a record written or a counted rejection, exactly
    assert stats["records"] + stats["rejected"] == sim.sent_count == 300
    assert stats["rejected"] == n_bad and stats["skipped"] == sim.garbage_sent > 0
    expected: dict[str, int] = {}
    for kind, n in sim.corrupt_sent.items():
        expected[REASON_OF[kind]] = expected.get(REASON_OF[kind], 0) + n
    assert rejected_by(stats) == expected
    # what was stored is exactly the good frames, none of the bad values
    good = [(t, d) for t, d in sim.sent if t not in sim.corrupt_texts]
    rows = read_rows(out)
    assert len(rows) == stats["records"]
    assert_records_match(exchange, rows, good)
    for r in rows:
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("bid", "ask"))
        assert r["bid_size"] >= 0 and r["ask_size"] >= 0
    # the dead-letter file holds each rejected record with its frame, and each garbage frame
    entries = [json.loads(ln) for ln in dead.read_text().splitlines()]
    rejected = [e for e in entries if e["reason"] != "malformed_frame"]
    assert len(rejected) == n_bad and len(entries) == n_bad + sim.garbage_sent
    assert {e["frame"] for e in rejected} == sim.corrupt_texts
    assert all(e["exchange"] == exchange and "=" in e["detail"] and "record" in e for e in rejected)
    assert proc.stderr.count(f"WARNING sabot.collectors: {exchange}: rejected record #") == 5  # rate-limited
    summary = [ln for ln in proc.stderr.splitlines() if f"{exchange} summary:" in ln]
    assert len(summary) == 1 and f"rejected {n_bad} (" in summary[0] and "undelivered 0" in summary[0]
    assert f"written {stats['records']} to Parquet" in summary[0]


def test_rejection_reasons_name_field_and_value():
    from sabot.collectors.validate import RecordValidator

    now = 1_800_000_000 * 10**9
    v = RecordValidator({"BTC-USD": "BTC-USD"}, max_age_s=86_400, max_ahead_s=60, now_ns=lambda: now)

    def rec(**kw):
        base = {"raw_symbol": "BTC-USD", "timestamp": now, "bid": 1.0, "ask": 2.0, "bid_size": 1.0,
                "ask_size": 0.0, "price": None, "volume_24h": 3.0}
        return {**base, **kw}

    assert v.check(rec()) is None  # a zero size and a missing optional price are fine
    assert v.check(rec(bid=float("nan"))) == ("non_finite", "bid=nan is not finite")
    assert v.check(rec(ask=float("inf"))) == ("non_finite", "ask=inf is not finite")
    assert v.check(rec(bid=-5.0)) == ("non_positive", "bid=-5.0 is not positive")
    assert v.check(rec(ask=0.0))[0] == "non_positive"
    assert v.check(rec(bid=True)) == ("boolean", "bid=True is a boolean, not a number")
    assert v.check(rec(bid_size=-1.5)) == ("negative", "bid_size=-1.5 is negative")
    assert v.check(rec(bid=None)) == ("missing", "bid=None is required")
    assert v.check(rec(price="12")) == ("not_a_number", "price='12' is not a number")
    reason, text = v.check(rec(timestamp=32_503_680_000 * 10**9))  # 3000-01-01
    assert reason == "timestamp_ahead" and "timestamp=3000-01-01T00:00:00Z" in text
    assert v.check(rec(timestamp=now + 59 * 10**9)) is None
    assert v.check(rec(timestamp=now - 86_401 * 10**9))[0] == "timestamp_too_old"
    assert v.check(rec(raw_symbol="ETH-USD")) == ("unsubscribed_symbol", "raw_symbol='ETH-USD' was not subscribed")
    assert v.check(rec(raw_symbol="BTC-USD\x07"))[0] == "control_characters"


def test_timestamp_window_is_configurable(tmp_path):
    def once(latency_ms: float, *args: str) -> dict[str, int]:
        with KrakenSim(rate=0, count=20, latency_ms=latency_ms) as sim:
            proc = run("kraken", sim.url, "-F", "-o", str(tmp_path / f"{latency_ms}-{len(args)}.parquet"),
                       *args, duration=1.2)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return final_stats(proc.stderr)

    ahead = once(-120_000)  # the exchange's clock two minutes ahead of ours
    assert ahead["records"] == 0 and ahead["timestamp_ahead"] == 20
    assert once(-120_000, "--max-ahead", "300")["records"] == 20
    old = once(5_000, "--max-age", "2")  # events five seconds old, two allowed
    assert old["records"] == 0 and old["timestamp_too_old"] == 20


def test_rejections_exported_as_prometheus_metric(tmp_path):
    port = free_port()
    with KrakenSim(rate=0, count=100, corrupt_every=10, corrupt_kinds=["nan", "bool"]) as sim:
        proc = subprocess.Popen(collector_cmd("kraken", sim.url, "-F", "-o", str(tmp_path / "o.parquet"),
                                              "--metrics-port", str(port), "--duration", "30"),
                                env=FAST_ENV, cwd=REPO, stderr=subprocess.PIPE, text=True)
        body = ""
        try:
            def scraped() -> bool:
                nonlocal body
                try:
                    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                except OSError:
                    return False
                return 'reason="boolean"} 5.0' in body
            wait_for(scraped, 30, "the rejection counters on the metrics endpoint")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
    assert 'sabot_collector_rejected_total{exchange="kraken",reason="non_finite"} 5.0' in body
    assert 'sabot_collector_rejected_total{exchange="kraken",reason="boolean"} 5.0' in body
    assert 'sabot_collector_records_total{exchange="kraken"} 90.0' in body


# ---------------------------------------------------------- 2. one bad frame never stops a process
def test_far_future_ticker_among_300_does_not_stop_kafka_collector(kafka_broker, unique_topic, tmp_path):
    topic = unique_topic("kraken")
    kafka_broker.create_topic(topic, partitions=3)
    with KrakenSim(rate=0, count=300, corrupt_every=200, corrupt_kinds=["future"]) as sim:
        proc = run("kraken", sim.url, "-k", "--bootstrap", kafka_broker.bootstrap, "--topic", topic,
                   duration=2.5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sim.corrupt_sent == {"future": 1}
    stats = final_stats(proc.stderr)
    assert stats["records"] == 299 and stats["timestamp_ahead"] == 1
    assert "timestamp=2999-01-01T00:00:00Z" in proc.stderr
    assert f"Kafka {topic}: 299 produced, 299 delivered, 0 delivery errors" in proc.stderr
    assert len(consume_all(kafka_broker.bootstrap, topic, 299)) == 299


def test_far_future_ticker_does_not_cost_parquet_rows(tmp_path):
    out = tmp_path / "o.parquet"
    with KrakenSim(rate=0, count=1000, corrupt_every=1000, corrupt_kinds=["future"], keep_sent=True) as sim:
        proc = run("kraken", sim.url, "-F", "-o", str(out), "--row-group-size", "1000", duration=2.0)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(out)
    assert len(rows) == 999
    assert_records_match("kraken", rows, [(t, d) for t, d in sim.sent if t not in sim.corrupt_texts])


def _kraken_rows(n: int) -> list[dict]:
    return [{"exchange": "kraken", "symbol": "BTC/USD", "raw_symbol": "BTC/USD",
             "timestamp": 1_700_000_000_000_000_000 + i, "recv_timestamp": 1_700_000_000_000_000_000 + i,
             "bid": 100.0 + i, "ask": 100.5 + i, "bid_size": 1.0, "ask_size": 2.0, "price": 100.2,
             "volume_24h": 10.0, "sequence": None, "vwap": 100.1, "change_pct": -0.5} for i in range(n)]


def test_parquet_sink_sets_aside_an_unstorable_row_and_keeps_the_others(tmp_path):
    """A row Arrow cannot store (event time beyond int64) no longer takes the 999 before it along."""
    sink = ParquetSink(tmp_path / "k.parquet", "kraken", row_group_size=1000)
    set_aside: list[tuple[str, str, dict]] = []
    sink.on_reject = lambda reason, text, row: set_aside.append((reason, text, row))
    rows = _kraken_rows(1000)
    rows[500]["timestamp"] = 2 ** 70
    for r in rows:
        sink.write(r)  # the 1000th write flushes the row group
    sink.close()
    assert [(reason, row["timestamp"]) for reason, _, row in set_aside] == [("unserializable", 2 ** 70)]
    got = pq.read_table(tmp_path / "k.parquet").column("bid").to_pylist()
    assert got == [r["bid"] for i, r in enumerate(rows) if i != 500]


def test_parquet_sink_keeps_rows_through_io_errors_and_retries(tmp_path):
    """A failing row-group write (the part directory unusable) keeps every row, backs off and retries."""
    sink = ParquetSink(tmp_path / "k.parquet", "kraken", row_group_size=10, retry_base=0.05, retry_max=0.2)
    sink.parts_dir.rmdir()
    sink.parts_dir.write_text("not a directory")  # every part write now fails with an OSError
    rows = _kraken_rows(35)
    for r in rows[:25]:
        sink.write(r)
    wait_for(lambda: (sink.tick(), sink.write_errors >= 3)[1], 10, "three failed, retried writes")
    assert sink.buffered == 25 and sink.rows_written == 0
    sink.parts_dir.unlink()
    sink.parts_dir.mkdir()  # space again
    for r in rows[25:]:
        sink.write(r)
    wait_for(lambda: (sink.tick(), sink.buffered == 0)[1], 10, "the retry to succeed")
    sink.close()
    assert sink.unwritten == 0 and sink.rows_written == 35
    assert pq.read_table(tmp_path / "k.parquet").column("bid").to_pylist() == [r["bid"] for r in rows]


def test_collector_survives_file_size_limit_and_writes_everything_once_lifted(tmp_path):
    """A running collector hitting a real write error (EFBIG from RLIMIT_FSIZE) keeps its rows and
    writes all of them once the limit is lifted; nothing is lost, the exit code is 0."""
    out = tmp_path / "o.parquet"
    lines: list[str] = []

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (512, resource.RLIM_INFINITY))

    with SIMULATORS["coinbase"](rate=200, count=600, keep_sent=True) as sim:
        proc = subprocess.Popen(collector_cmd("coinbase", sim.url, "-F", "-o", str(out), "--row-group-size", "50",
                                              "--duration", "8"),
                                env=FAST_ENV, cwd=REPO, stderr=subprocess.PIPE, text=True,
                                preexec_fn=small_files)  # stderr a pipe: the limit applies to files
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        reader.start()
        try:
            wait_for(lambda: sum("row-group write failed" in ln for ln in lines) >= 2, 60, "failed writes")
            assert sim.sent_count < 600, "the limit must be lifted while the collector streams"
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            assert proc.wait(60) == 0, "".join(lines)[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader.join(10)
    stderr = "".join(lines)
    assert "File too large" in stderr and "row-group writes succeed again" in stderr
    stats = final_stats(stderr)
    rows = read_rows(out)
    assert sim.sent_count == len(rows) == stats["records"] == 600
    assert_records_match("coinbase", rows, sim.sent)


# ----------------------------------------------------------------- 3. exit codes tell the truth
@pytest.mark.parametrize("exchange, listed, bad", [
    ("coinbase", ["BTC-USD", "ETH-USD"], "FOO-USD"),
    ("kraken", ["BTC/USD", "ETH/USD"], "FOO/USD"),
])
def test_refused_symbol_named_and_the_rest_streams(exchange, listed, bad, tmp_path):
    out = tmp_path / "o.parquet"
    with SIMULATORS[exchange](rate=100, listed=listed) as sim:
        proc = run(exchange, sim.url, "-F", "-o", str(out), "--symbols", f"{listed[0]},{bad}", duration=1.5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    base = bad.replace("-", "/").split("/")[0]
    refused = [ln for ln in error_lines(proc.stderr) if "refused symbol" in ln]
    assert len(refused) == 1 and f"{bad!r} ({base}/USD)" in refused[0]
    assert sim.rejected_symbols == [bad]
    rows = read_rows(out)
    assert rows and {r["raw_symbol"] for r in rows} == {listed[0]}


@pytest.mark.parametrize("exchange, symbols", [("coinbase", "FOO-USD,BAR-USD"), ("kraken", "FOO/USD,BAR/USD"),
                                               ("binance", "FOOUSDT,BARUSDT")])
def test_no_symbol_accepted_exits_non_zero(exchange, symbols, tmp_path):
    listed = {"coinbase": ["BTC-USD"], "kraken": ["BTC/USD"], "binance": ["BTCUSDT"]}[exchange]
    t0 = time.monotonic()
    with SIMULATORS[exchange](rate=100, listed=listed) as sim:
        silence = ["--symbol-timeout", "1"] if exchange == "binance" else []  # Binance refuses by silence
        proc = run(exchange, sim.url, "-F", "-o", str(tmp_path / "o.parquet"), "--symbols", symbols, *silence,
                   duration=20)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert time.monotonic() - t0 < 15  # stopped on its own, not at --duration
    assert "Traceback" not in proc.stderr
    for s in symbols.split(","):
        assert s in proc.stderr
    assert any("none of the symbols" in ln or "no data for any subscribed symbol" in ln
               for ln in error_lines(proc.stderr))


def test_binance_unlisted_symbol_reported_after_silence(tmp_path):
    out = tmp_path / "o.parquet"
    with SIMULATORS["binance"](rate=100, listed=["BTCUSDT"]) as sim:
        proc = run("binance", sim.url, "-F", "-o", str(out), "--symbols", "BTCUSDT,FOOUSDT",
                   "--symbol-timeout", "0.5", duration=2.0)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in error_lines(proc.stderr) if "no data for symbol" in ln]
    assert len(lines) == 1 and "'FOOUSDT' (FOO/USDT)" in lines[0]
    assert {r["raw_symbol"] for r in read_rows(out)} == {"BTCUSDT"}


def _fake_module_dir(tmp_path: Path) -> Path:
    d = tmp_path / "no_prometheus"
    (d / "prometheus_client").mkdir(parents=True)
    (d / "prometheus_client" / "__init__.py").write_text("raise ImportError('prometheus_client is not installed')\n")
    return d


@pytest.mark.parametrize("mistake", ["kafka_config_missing", "kafka_config_malformed", "output_unwritable",
                                     "metrics_port_in_use", "metrics_without_prometheus", "abbreviated_flag",
                                     "dead_letter_unwritable"])
def test_user_mistakes_give_one_line_and_exit_2(mistake, tmp_path):
    env = dict(FAST_ENV)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    args = ["-F", "-o", str(tmp_path / "o.parquet")]
    expect = ""
    sock = None
    if mistake == "kafka_config_missing":
        args = ["-k", "--kafka-config", str(tmp_path / "nope.properties")]
        expect = "nope.properties: cannot read it"
    elif mistake == "kafka_config_malformed":
        (tmp_path / "bad.properties").write_text("security.protocol=SSL\nthis line has no separator\n")
        args = ["-k", "--kafka-config", str(tmp_path / "bad.properties")]
        expect = "bad.properties:2"
    elif mistake == "output_unwritable":
        args = ["-F", "-o", str(blocker / "o.parquet")]
        expect = "cannot write there"
    elif mistake == "metrics_port_in_use":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        args += ["--metrics-port", str(sock.getsockname()[1])]
        expect = f"--metrics-port {sock.getsockname()[1]}: cannot listen"
    elif mistake == "metrics_without_prometheus":
        env["PYTHONPATH"] = f"{_fake_module_dir(tmp_path)}{os.pathsep}{env['PYTHONPATH']}"
        args += ["--metrics-port", "0"]
        expect = "pip install 'sabot[metrics]'"
    elif mistake == "abbreviated_flag":
        args += ["--dur", "1"]
        expect = "unrecognized arguments: --dur"
    elif mistake == "dead_letter_unwritable":
        args += ["--dead-letter", str(blocker / "dead.jsonl")]
        expect = f"--dead-letter {blocker / 'dead.jsonl'}: cannot write there"
    try:
        with KrakenSim(rate=0, count=10) as sim:
            proc = run("kraken", sim.url, *args, duration=None if mistake == "abbreviated_flag" else 5,
                       env=env, timeout=60)
    finally:
        if sock is not None:
            sock.close()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert expect in proc.stderr
    problem = [ln for ln in proc.stderr.splitlines() if expect in ln]
    assert len(problem) == 1
    assert "Subscribed" not in proc.stderr and "connected to" not in proc.stderr


# --------------------------------------------------------------------------- 4. Kafka security
def test_kafka_config_reaches_the_producer(kafka_broker, unique_topic, tmp_path):
    """bootstrap.servers only in the properties file: records still arrive, so the file reached the
    client that checks metadata at start and the producer (one client does both)."""
    topic = unique_topic("cb")
    kafka_broker.create_topic(topic, partitions=3)
    props = tmp_path / "client.properties"
    props.write_text(f"# test cluster\nbootstrap.servers={kafka_broker.bootstrap}\nclient.id=sabot-collector-test\n")
    env = {k: v for k, v in FAST_ENV.items() if k != "SABOT_KAFKA_BOOTSTRAP"}
    with SIMULATORS["coinbase"](rate=0, count=50) as sim:
        proc = run("coinbase", sim.url, "-k", "--kafka-config", str(props), "--topic", topic, duration=1.5,
                   env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Kafka {topic}: 50 produced, 50 delivered, 0 delivery errors" in proc.stderr
    assert len(consume_all(kafka_broker.bootstrap, topic, 50)) == 50


def test_kafka_config_security_setting_reaches_the_metadata_check(kafka_broker, tmp_path):
    """security.protocol=SSL against the plaintext broker: the start-up metadata check fails, so the
    property reached that client; one line, exit 1, before any streaming."""
    props = tmp_path / "ssl.properties"
    props.write_text("security.protocol=SSL\n")
    t0 = time.monotonic()
    with SIMULATORS["coinbase"](rate=0, count=50) as sim:
        proc = run("coinbase", sim.url, "-k", "--bootstrap", kafka_broker.bootstrap, "--kafka-config", str(props),
                   "--broker-timeout", "3", duration=20)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert time.monotonic() - t0 < 15
    assert sim.subscriptions == 0 and "Traceback" not in proc.stderr
    assert [ln for ln in error_lines(proc.stderr) if "did not answer within 3 s" in ln]


def test_kafka_sink_config_is_defaults_plus_client_configuration():
    sink = KafkaSink("127.0.0.1:1", "t", kafka_config={"client.id": "abc", "linger.ms": 7})
    assert sink.config["client.id"] == "abc" and sink.config["linger.ms"] == 7
    assert sink.config["bootstrap.servers"] == "127.0.0.1:1"
    assert sink.config["message.timeout.ms"] == 300_000
    with pytest.raises(KafkaConfigError, match="group.id"):
        KafkaSink("127.0.0.1:1", "t", kafka_config={"group.id": "g"})


# ------------------------------------------------------------------- 5. fault modes of the servers
@pytest.mark.parametrize("exchange", EXCHANGES)
@pytest.mark.parametrize("kind", KINDS)
def test_corrupted_frame_carries_its_bad_value(exchange, kind):
    from sabot.collectors.validate import RecordValidator
    from sabot.sim.servers import CORRUPT_KINDS, Conn

    assert CORRUPT_KINDS == KINDS
    sim = SIMULATORS[exchange](corrupt_every=1)
    if kind not in sim.supported_corruptions:
        assert exchange == "binance" and kind == "future"  # no exchange time in bookTicker
        return
    collector = COLLECTOR_CLASSES[exchange]()
    conn = Conn(ws=None, channels={"btcusdt@bookTicker"})
    quote = sim._walk.next("BTC/USD")
    (text, is_data), = [f for f in sim.encode(quote, conn, False) if f[1]]
    kind_, records, _ = collector.parse(sim.corrupt(text, kind), time.time_ns())
    assert kind_ == DATA and len(records) == 1
    v = RecordValidator(collector.payload_symbols())
    assert v.check(collector.parse(text, time.time_ns()).records[0]) is None
    assert v.check(records[0])[0] == REASON_OF[kind]


def test_quiet_venue_keeps_heartbeats_and_collector_reconnects_on_missing_data(tmp_path):
    out = tmp_path / "o.parquet"
    with KrakenSim(rate=200, count=300, quiet_after=50, keep_sent=True) as sim:
        proc = run("kraken", sim.url, "-F", "-o", str(out), "--data-stale-after", "0.5", duration=4.0)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no data for 0.5 s (the connection is alive); reconnecting" in proc.stderr
    assert "closing stale connection" not in proc.stderr  # heartbeats kept arriving
    stats = final_stats(proc.stderr)
    assert stats["reconnects"] >= 1 and stats["records"] == sim.sent_count == 300
    assert_records_match("kraken", read_rows(out), sim.sent)


def test_sim_command_line_faults_and_report(tmp_path):
    """``python -m sabot.sim`` wires the fault flags and prints its counters as one JSON line."""
    err = tmp_path / "sim.txt"
    with open(err, "w") as err_f:
        sim = subprocess.Popen([sys.executable, "-m", "sabot.sim", "kraken", "--port", "0", "--rate", "0",
                                "--count", "40", "--corrupt-every", "4", "--corrupt-kinds", "nan,future",
                                "--garbage-every", "20"],
                               env=FAST_ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=err_f, text=True)
        try:
            wait_for(lambda: "listening on ws://" in err.read_text(), 30, "the simulator to listen")
            url = re.search(r"listening on (ws://\S+)", err.read_text()).group(1)
            proc = run("kraken", url, "-F", "-o", str(tmp_path / "o.parquet"), duration=1.5)
        finally:
            sim.send_signal(signal.SIGINT)
            stdout, _ = sim.communicate(timeout=30)
    assert sim.returncode == 0
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["data_frames"] == 40 and report["corrupt"] == {"nan": 5, "future": 5}
    assert report["garbage"] == 2
    stats = final_stats(proc.stderr)
    assert stats["records"] + stats["rejected"] == report["data_frames"]
    assert stats["non_finite"] == 5 and stats["timestamp_ahead"] == 5 and stats["skipped"] == 2


def test_dead_letter_disk_full_counted_and_reported_not_fatal(tmp_path):
    """ENOSPC on the dead-letter file (/dev/full): the collector keeps running, stores the good
    records, counts each lost entry and exits 1 saying how many."""
    out = tmp_path / "o.parquet"
    with KrakenSim(rate=0, count=50, corrupt_every=10, corrupt_kinds=["nan"]) as sim:
        proc = run("kraken", sim.url, "-F", "-o", str(out), "--dead-letter", "/dev/full", duration=1.5)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
    assert len(read_rows(out)) == final_stats(proc.stderr)["records"] == 45
    lines = [ln for ln in error_lines(proc.stderr) if "dead-letter entries could not be written" in ln]
    assert len(lines) == 1 and "5 dead-letter entries could not be written to '/dev/full'" in lines[0]
