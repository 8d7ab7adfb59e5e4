"""Collectors end to end into the real embedded broker (Tansu), Kafka and Parquet together."""
from __future__ import annotations

import json
import time

import pytest

from sabot.broker import free_port
from sabot.collectors.sinks import KafkaSink
from sabot.kafka import assign_all, consumer_config
from sabot.sim import SIMULATORS

from collector_helpers import DEFAULT_SYMBOLS, assert_records_match, final_stats, read_rows, run_collector


def consume_all(bootstrap: str, topic: str, n: int, timeout: float = 20.0) -> list:
    from confluent_kafka import Consumer

    consumer = Consumer(consumer_config(bootstrap, f"check-{topic}", from_beginning=True))
    try:
        assign_all(consumer, topic)
        out, deadline = [], time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.2):
                assert m.error() is None, m.error()
                out.append(m)
        for m in consumer.consume(1000, 0.5):  # nothing extra may follow
            out.append(m)
        return out
    finally:
        consumer.close()


@pytest.mark.parametrize("exchange", ["coinbase", "kraken", "binance"])
def test_collector_to_kafka_and_parquet(exchange, kafka_broker, unique_topic, tmp_path):
    topic = unique_topic(exchange)
    kafka_broker.create_topic(topic, partitions=3)
    out = tmp_path / "o.parquet"
    with SIMULATORS[exchange](rate=0, count=200, drop_every=70, keep_sent=True) as sim:
        proc = run_collector(exchange, sim.url, "-k", "-F", "-o", str(out), "--bootstrap", kafka_broker.bootstrap,
                             "--topic", topic, duration=2.5)
    line = {"coinbase": f"Subscribed; streaming to Kafka topic '{topic}' and Parquet file",
            "kraken": f"✅ Subscription confirmed; streaming to Kafka topic '{topic}'",
            "binance": "Connected! Streaming to Kafka and Parquet..."}[exchange]
    assert line in proc.stderr
    assert f"Kafka {topic}: 200 produced, 200 delivered, 0 delivery errors" in proc.stderr
    msgs = consume_all(kafka_broker.bootstrap, topic, 200)
    assert len(msgs) == 200 == sim.sent_count == final_stats(proc.stderr)["records"]
    values = [json.loads(m.value()) for m in msgs]
    for m, v in zip(msgs, values):
        assert m.key().decode() == v["symbol"]
        assert isinstance(v["timestamp"], int) and isinstance(v["recv_timestamp"], int)
    # one symbol -> one partition, and within a partition the collector's order is kept
    by_symbol: dict[str, set[int]] = {}
    for m, v in zip(msgs, values):
        by_symbol.setdefault(v["symbol"], set()).add(m.partition())
    assert set(by_symbol) == DEFAULT_SYMBOLS[exchange] and all(len(p) == 1 for p in by_symbol.values())
    parquet_rows = read_rows(out)
    assert_records_match(exchange, parquet_rows, sim.sent)
    for sym in by_symbol:
        from_kafka = [v for v in values if v["symbol"] == sym]
        assert from_kafka == [r for r in parquet_rows if r["symbol"] == sym]


def test_kafka_delivery_errors_counted():
    sink = KafkaSink(f"127.0.0.1:{free_port()}", "nowhere", **{"message.timeout.ms": 500})
    for i in range(5):
        sink.write({"symbol": "BTC/USD", "bid": float(i)})
    sink.close(timeout=10)
    assert sink.produced == 5 and sink.delivered == 0 and sink.delivery_errors == 5
