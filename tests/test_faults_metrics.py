"""The optional Prometheus endpoint, scraped over HTTP while a Stream and a collector run."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from prometheus_client.parser import text_string_to_metric_families

from sabot.api import Stream
from sabot.broker import free_port
from sabot.kafka import fast_consumer_config
from sabot.sim.servers import CoinbaseSim

from stream_data import produce, ticker_table

ROOT = Path(__file__).resolve().parents[1]


def scrape(port: int) -> dict:
    """{(sample name, sorted labels): value} from http://127.0.0.1:port/metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def try_scrape(port: int) -> dict:
    """``scrape``, or {} while the endpoint is not up yet."""
    try:
        return scrape(port)
    except OSError:
        return {}


def by_name(samples: dict, name: str, **labels) -> dict:
    return {k[1]: v for k, v in samples.items()
            if k[0] == name and all(dict(k[1]).get(a) == b for a, b in labels.items())}


def wait_until(fn, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_stream_metrics_endpoint(kafka_broker, unique_topic, tmp_path):
    n = 3000
    table = ticker_table("kraken", n, seed=4)
    topic, group = unique_topic(), unique_topic("g")
    kafka_broker.create_topic(topic, partitions=3)
    produce(kafka_broker.bootstrap, topic, table)
    port = free_port()
    stream = (Stream.from_kafka(kafka_broker.bootstrap, topic, group, batch_size=100,
                                from_beginning=True, checkpoint_dir=tmp_path / "ck",
                                checkpoint_interval_s=0.2, metrics_port=port,
                                **fast_consumer_config(**{"statistics.interval.ms": 100}))
              .filter(lambda b: pc.greater(b.column("bid_size"), 2.0))
              .map(lambda b: (time.sleep(0.05), b)[1]))  # a slow consumer: ~1.5 s in all
    stop, seen = threading.Event(), []

    def run():
        for batch in stream:
            seen.append(batch.num_rows)
            if stop.is_set():
                break

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    expected_out = int((table.column("bid_size").to_numpy() > 2.0).sum())  # numpy, not sabot
    try:
        # librdkafka statistics (each 100 ms here) show the backlog while the pipeline works
        behind = wait_until(lambda: [v for v in by_name(try_scrape(port), "sabot_consumer_lag",
                                                        topic=topic).values() if v > 0],
                            30, "a positive lag while the pipeline works")
        assert 0 < sum(behind) < n
        wait_until(lambda: sum(seen) == expected_out, 60, "every row through the filter")
        lag = wait_until(lambda: (lambda d: d if d and not any(d.values()) else None)(
            by_name(scrape(port), "sabot_consumer_lag", topic=topic)), 20, "lag 0 everywhere")
        samples = scrape(port)
    finally:
        stop.set()
        first_kept = int(np.flatnonzero(table.column("bid_size").to_numpy() > 2.0)[0])
        produce(kafka_broker.bootstrap, topic, table.slice(first_kept, 1))  # wake the loop: stop
        worker.join(30)
    assert not worker.is_alive()
    assert {dict(k)["partition"] for k in lag} <= {"0", "1", "2"}
    rows_in = by_name(samples, "sabot_operator_rows_in_total")
    rows_out = by_name(samples, "sabot_operator_rows_out_total")
    assert sorted(rows_in.values()) == [expected_out, n]  # filter in n, map in expected_out
    assert sorted(rows_out.values()) == [expected_out, expected_out]
    assert list(by_name(samples, "sabot_source_messages_total").values()) == [n]
    assert list(by_name(samples, "sabot_source_decode_errors_total").values()) == [0]
    count = list(by_name(samples, "sabot_tick_to_signal_seconds_count").values())
    assert count == [expected_out]
    buckets = by_name(samples, "sabot_tick_to_signal_seconds_bucket")
    cum = [v for k, v in sorted(buckets.items(), key=lambda kv: float(dict(kv[0])["le"]))]
    assert cum == sorted(cum) and cum[-1] == expected_out
    # synthetic receive times are from 2023: every latency is in the +Inf bucket's range only
    assert cum[-2] == 0
    age = list(by_name(samples, "sabot_checkpoint_age_seconds").values())
    assert len(age) == 1 and 0 <= age[0] < 30


def test_collector_metrics_endpoint(tmp_path):
    port = free_port()
    env = {"PYTHONPATH": str(ROOT), "SABOT_BACKOFF_BASE": "0.02", "SABOT_BACKOFF_MAX": "0.1",
           "PATH": "/usr/bin:/bin"}
    with CoinbaseSim(rate=300, drop_every=100, malformed=5) as sim:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "collectors" / "coinbase2parquet.py"), "--url", sim.url,
             "-F", "-o", str(tmp_path / "o.parquet"), "--metrics-port", str(port),
             "--duration", "20"], env=env, stderr=subprocess.DEVNULL)
        try:
            def ready():
                try:
                    s = scrape(port)
                except OSError:
                    return None
                rec = by_name(s, "sabot_collector_reconnects_total", exchange="coinbase")
                return s if rec and list(rec.values())[0] >= 2 else None

            samples = wait_until(ready, 60, "two reconnects visible in the metrics")
            sent = sim.sent_count
        finally:
            proc.terminate()
            proc.wait(30)

    def one(name):
        return list(by_name(samples, name, exchange="coinbase").values())[0]

    # the simulator sends its 5 malformed frames once, on the first connection
    assert one("sabot_collector_skipped_total") == 5
    assert 0 < one("sabot_collector_records_total") <= sent
    assert one("sabot_collector_messages_total") >= one("sabot_collector_records_total")
    assert one("sabot_collector_exchange_errors_total") == 0


def test_metrics_port_without_prometheus_client_is_one_line_with_the_install_line(monkeypatch):
    import pytest

    from sabot.metrics import MetricsError

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if it were not installed
    with pytest.raises(MetricsError) as err:
        Stream.from_kafka("127.0.0.1:1", "t", "g", metrics_port=9100)
    assert "\n" not in str(err.value) and "pip install 'sabot[metrics]'" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_metrics_port_in_use_is_one_line_naming_the_port(kafka_broker, unique_topic):
    import socket

    import pytest

    from sabot.metrics import MetricsError

    topic = unique_topic()
    kafka_broker.create_topic(topic, partitions=1)
    produce(kafka_broker.bootstrap, topic, ticker_table("kraken", 10))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        s = Stream.from_kafka(kafka_broker.bootstrap, topic, unique_topic("g"),
                              from_beginning=True, stop_at_end=True, metrics_port=port,
                              **fast_consumer_config())
        with pytest.raises(MetricsError) as err:
            s.collect()
    assert f"metrics port {port}" in str(err.value) and "\n" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_a_dead_metrics_thread_is_restarted_and_counted(kafka_broker, unique_topic, caplog):
    """The endpoint's HTTP thread stops (as if it had died); the running stream starts it
    again within about a second, logs it and counts it."""
    import logging

    topic, group = unique_topic(), unique_topic("g")
    kafka_broker.create_topic(topic, partitions=1)
    port = free_port()
    stream = Stream.from_kafka(kafka_broker.bootstrap, topic, group, max_latency_ms=20,
                               metrics_port=port, **fast_consumer_config())
    def run():
        for _ in stream:
            pass
    stream_thread = threading.Thread(target=run, daemon=True)
    caplog.set_level(logging.WARNING, logger="sabot.metrics")
    stream_thread.start()
    try:
        wait_until(lambda: try_scrape(port), 30, "the endpoint")
        from sabot import metrics

        server = metrics._servers[port]
        server._httpd.shutdown()  # serve_forever returns: the thread ends
        server._thread.join(10)
        assert not server._thread.is_alive()
        samples = wait_until(lambda: try_scrape(port), 30, "the endpoint back")
        assert list(by_name(samples, "sabot_metrics_server_restarts_total").values()) == [1]
        assert any("starting it again" in r.getMessage() for r in caplog.records)
    finally:
        stream.stop()
        produce(kafka_broker.bootstrap, topic, ticker_table("kraken", 1))  # wake the loop
        stream_thread.join(30)
    assert not stream_thread.is_alive()
