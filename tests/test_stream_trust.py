"""Sources and sinks of the Stream lose nothing: against the real embedded broker, real Parquet
files and real OS errors.  Each test here failed before the fix it covers."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, TopicPartition

from sabot.api import Stream
from sabot.kafka import assign_all, fast_consumer_config

from stream_data import produce, ticker_table

ROOT = Path(__file__).resolve().parents[1]
FAST = fast_consumer_config()


def committed(bootstrap: str, topic: str, group: str, partitions: int) -> dict:
    """{partition: committed offset} of ``group`` (negative: nothing committed)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    c.close()
    return {tp.partition: tp.offset for tp in got}


def wait_until(fn, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- 1. to_parquet with checkpoints keeps every flush ------------------------------------------
def test_checkpointed_single_file_keeps_every_flush_in_its_own_file(kafka_broker, unique_topic,
                                                                    tmp_path):
    topic, group = unique_topic(), unique_topic("g")
    kafka_broker.create_topic(topic, partitions=3)
    produce(kafka_broker.bootstrap, topic, ticker_table("kraken", 3000, seed=21))
    out = tmp_path / "out.parquet"
    s = Stream.from_kafka(kafka_broker.bootstrap, topic, group, batch_size=500,
                          from_beginning=True, stop_at_end=True, checkpoint_dir=tmp_path / "ck",
                          checkpoint_interval_s=0, **FAST)
    files = s.to_parquet(out)
    assert len(files) > 1, "every checkpoint flush goes to its own file"
    assert all(Path(f).name.startswith("out-") for f in files)
    rows = pq.read_table(files)
    assert rows.num_rows == 3000
    assert sorted(rows.column("sequence").to_pylist()) == list(range(3000))
    # a second run of the same pipeline (a restart) never replaces the first run's files
    produce(kafka_broker.bootstrap, topic, ticker_table("kraken", 600, seed=22))
    more = Stream.from_kafka(kafka_broker.bootstrap, topic, group, batch_size=500,
                             from_beginning=True, stop_at_end=True,
                             checkpoint_dir=tmp_path / "ck", checkpoint_interval_s=0,
                             **FAST).to_parquet(out)
    assert not set(more) & set(files)
    assert pq.read_table(files + more).num_rows == 3600


def test_single_file_is_never_replaced(kafka_broker, unique_topic, tmp_path):
    out = tmp_path / "out.parquet"
    pq.write_table(ticker_table("kraken", 10), out)
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="out.parquet"):
        Stream.from_table(ticker_table("kraken", 50)).to_parquet(out)
    assert out.read_bytes() == before


IO_ERROR_SCRIPT = textwrap.dedent("""
    import json, resource, signal, sys, threading, time
    sys.path.insert(0, {root!r})
    from sabot.api import Stream
    from sabot.kafka import fast_consumer_config
    bootstrap, topic, group, out, mode = sys.argv[1:6]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    if mode == "unheld":  # files larger than what is held in memory for a rewrite
        import sabot.api.stream as stream_module
        stream_module._ParquetSink.__init__.__kwdefaults__["hold_bytes"] = 10_000
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
    s = Stream.from_kafka(bootstrap, topic, group, batch_size=200, from_beginning=True,
                          stop_at_end=True, **fast_consumer_config())

    def when_failing():  # the "disk" gets space again (or the user stops the pipeline)
        while not (s.metrics.get("to_parquet") or {{}}).get("write_errors", 0) >= 3:
            time.sleep(0.01)
        if mode == "lift":
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        elif mode == "stop":
            s.stop()
    threading.Thread(target=when_failing, daemon=True).start()
    try:
        files = s.to_parquet(out)
    except OSError as exc:
        print(json.dumps({{"error": str(exc), "sink": s.metrics["to_parquet"]}}))
        sys.exit(3)
    print(json.dumps({{"files": files, "sink": s.metrics["to_parquet"]}}))
""")


def test_parquet_io_errors_are_retried_and_nothing_is_lost(kafka_broker, unique_topic, tmp_path):
    """A real OS write error (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC) mid-file: the
    sink counts it, backs off, rewrites the held rows once writes work again; every row lands
    and the group's offsets are committed only after that."""
    import json

    topic, group = unique_topic(), unique_topic("g")
    kafka_broker.create_topic(topic, partitions=3)
    produce(kafka_broker.bootstrap, topic, ticker_table("kraken", 3000, seed=23))
    script = tmp_path / "io_errors.py"
    script.write_text(IO_ERROR_SCRIPT.format(root=str(ROOT)))
    out = tmp_path / "out.parquet"
    run = subprocess.run([sys.executable, str(script), kafka_broker.bootstrap, topic, group,
                          str(out), "lift"], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["sink"]["write_errors"] >= 3
    assert "failed" in run.stderr and "retrying" in run.stderr
    assert sorted(pq.read_table(out).column("sequence").to_pylist()) == list(range(3000))
    assert not list(tmp_path.glob("*.part"))
    assert sum(max(o, 0) for o in committed(kafka_broker.bootstrap, topic, group, 3).values()) == 3000


# -- 2. to_kafka: undelivered records are counted, raise, and are never committed ----------------
def test_to_kafka_undelivered_records_raise_and_are_not_committed(kafka_broker, unique_topic):
    from sabot.api._kafka import DeliveryError

    topic, out, group = unique_topic(), unique_topic("out"), unique_topic("g")
    kafka_broker.create_topic(topic, partitions=3)
    produce(kafka_broker.bootstrap, topic, ticker_table("kraken", 1000, seed=24))
    s = Stream.from_kafka(kafka_broker.bootstrap, topic, group, batch_size=200,
                          from_beginning=True, stop_at_end=True, **FAST)
    # a real producer to a topic that does not exist: its records time out undelivered
    with pytest.raises(DeliveryError, match=r"to_kafka\(.*\): \d+ of 1000 record\(s\) not delivered"):
        s.to_kafka(kafka_broker.bootstrap, out, **{"message.timeout.ms": 300,
                                                    "allow.auto.create.topics": False})
    assert s.metrics["to_kafka"]["undelivered"] > 0
    assert all(o < 0 for o in committed(kafka_broker.bootstrap, topic, group, 3).values())


def test_to_kafka_counts_a_row_the_producer_refuses(kafka_broker, unique_topic):
    """A row larger than the producer's ``message.max.bytes`` is refused by ``produce`` itself:
    counted undelivered (the run raises, nothing is committed past it); the other rows go."""
    from sabot.api._kafka import DeliveryError

    topic, out, group = unique_topic(), unique_topic("out"), unique_topic("g")
    kafka_broker.create_topic(topic, partitions=1)
    kafka_broker.create_topic(out, partitions=1)
    table = ticker_table("kraken", 300, seed=31)
    big = pa.array(["x" * 3000 if i == 150 else "XBT/USD" for i in range(300)])
    table = table.set_column(table.schema.get_field_index("raw_symbol"), "raw_symbol", big)
    produce(kafka_broker.bootstrap, topic, table)
    s = Stream.from_kafka(kafka_broker.bootstrap, topic, group, from_beginning=True,
                          stop_at_end=True, **FAST)
    with pytest.raises(DeliveryError, match=r"1 of 300 record\(s\) not delivered"):
        s.to_kafka(kafka_broker.bootstrap, out, **{"message.max.bytes": 2000})
    m = s.metrics["to_kafka"]
    assert (m["undelivered"], m["delivered"]) == (1, 299)
    assert all(o < 0 or o <= 150 for o in committed(kafka_broker.bootstrap, topic, group, 1).values())


# -- 3. validation at the edge of from_kafka ---------------------------------------------------
def test_invalid_records_are_dead_lettered_with_field_and_value(kafka_broker, unique_topic):
    import orjson
    from confluent_kafka import Producer

    from stream_data import json_values

    topic, dlq = unique_topic(), unique_topic("dlq")
    kafka_broker.create_topic(topic, partitions=1)
    kafka_broker.create_topic(dlq, partitions=1)
    now = time.time_ns()
    good = ticker_table("kraken", 50, seed=25)
    for i, name in ((3, "timestamp"), (4, "recv_timestamp")):
        good = good.set_column(i, name, pa.array([now - 10**9 * (50 - k) for k in range(50)],
                                                 pa.timestamp("ns", tz="UTC")))
    values = json_values(good)
    base = orjson.loads(values[0])
    bad = {
        b'"bid": NaN': "nan", b'"ask": 1e999': "ask=inf", b'"price": -5': "price=-5.0",
        b'"bid": true': "'bid': expected number, got boolean",
        b'"ask_size": -1': "ask_size=-1.0", b'"timestamp": 32503680000000000000': "timestamp",
        f'"timestamp": {now - 2 * 86_400 * 10**9}'.encode(): "172800 s before",
        b'"symbol": "BTC\\u0007USD"': "symbol='BTC\\x07USD': contains a control character",
    }
    p = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    for v in values[:25]:
        p.produce(topic, v)
    for member in bad:
        name = member.split(b'"')[1].decode()
        rest = b", ".join(orjson.dumps({k: v})[1:-1] for k, v in base.items() if k != name)
        p.produce(topic, b"{" + rest + b", " + member + b"}")
    for v in values[25:]:
        p.produce(topic, v)
    assert p.flush(10) == 0
    s = Stream.from_kafka(kafka_broker.bootstrap, topic, unique_topic("g"), from_beginning=True,
                          stop_at_end=True, dead_letter_topic=dlq,
                          timestamp_window=(86_400, 60), **FAST)
    got = s.collect()
    assert got.num_rows == 50
    assert s.metrics[s._node.name]["dead_lettered"] == len(bad)
    c = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": "r"})
    assign_all(c, dlq)
    reasons = wait_until(lambda: [dict(m.headers())["sabot.error"].decode()
                                  for m in c.consume(100, 0.5) if m.error() is None], 20,
                         "dead letters")
    c.close()
    assert len(reasons) == len(bad)
    for expected, reason in zip(bad.values(), reasons):
        assert expected.lower() in reason.lower() and member_name(reason), (expected, reason)


def member_name(reason: str) -> bool:
    """The reason names one of the fields the test broke."""
    return any(n in reason for n in ("bid", "ask", "price", "ask_size", "timestamp", "symbol"))


def test_timestamp_window_is_checked_by_name():
    with pytest.raises(ValueError, match=r"timestamp_window must be .* got \(1, -2\)"):
        Stream.from_kafka("127.0.0.1:1", "t", "g", timestamp_window=(1, -2))


# -- 4. one client configuration reaches every client ----------------------------------------
def test_kafka_config_reaches_every_client(kafka_broker, unique_topic, capfd):
    """``client.id`` names a librdkafka instance in its own log lines (``<client.id>#consumer-N``):
    each client the stream creates logs under the configured id."""
    topic, dlq, out = unique_topic(), unique_topic("dlq"), unique_topic("out")
    for t in (topic, dlq, out):
        kafka_broker.create_topic(t, partitions=1)
    produce(kafka_broker.bootstrap, topic, ticker_table("kraken", 100, seed=26))
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    p.produce(topic, b"{not json")
    assert p.flush(10) == 0
    probe = {"client.id": "trust-probe", "debug": "generic", "log_level": 7}
    s = Stream.from_kafka(kafka_broker.bootstrap, topic, unique_topic("g"), from_beginning=True,
                          stop_at_end=True, dead_letter_topic=dlq, kafka_config=probe, **FAST)
    src = s.kafka_sources()[0]
    assert src.kafka_config == probe  # what the changelog store is handed
    assert src.config["client.id"] == "trust-probe" and src.config["group.id"]
    assert src.dead_letter_config["client.id"] == "trust-probe"
    capfd.readouterr()
    result = s.to_kafka(kafka_broker.bootstrap, out)
    assert result["delivered"] == 100 and s.metrics[src.name]["dead_lettered"] == 1
    logged = capfd.readouterr().err
    names = set(re.findall(r"\|(trust-probe#(?:consumer|producer)-\d+)\|", logged))
    assert any(n.startswith("trust-probe#consumer") for n in names), logged[-2000:]
    # the dead-letter producer and to_kafka's producer
    assert sum(n.startswith("trust-probe#producer") for n in names) == 2, names


def test_kafka_config_is_validated_by_name():
    from sabot.kafka import KafkaConfigError

    with pytest.raises(KafkaConfigError, match="'group.id' is set per client"):
        Stream.from_kafka("127.0.0.1:1", "t", "g", kafka_config={"group.id": "x"})
    with pytest.raises(KafkaConfigError, match=r"sasl.jaas=\[1\] is not"):
        Stream.from_kafka("127.0.0.1:1", "t", "g", kafka_config={"sasl.jaas": [1]})


def test_undelivered_dead_letters_hold_back_the_commit(kafka_broker, unique_topic):
    """A dead letter that cannot be delivered is not lost: the offsets past it are not
    committed, so the next run reads (and dead-letters) the message again."""
    from confluent_kafka import Producer

    topic, group = unique_topic(), unique_topic("g")
    kafka_broker.create_topic(topic, partitions=1)
    produce(kafka_broker.bootstrap, topic, ticker_table("kraken", 100, seed=27))
    p = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    p.produce(topic, b"{not json")
    assert p.flush(10) == 0
    s = Stream.from_kafka(kafka_broker.bootstrap, topic, group, from_beginning=True,
                          stop_at_end=True, dead_letter_topic=unique_topic("missing-dlq"),
                          kafka_config={"message.timeout.ms": 300,
                                        "allow.auto.create.topics": False}, **FAST)
    assert s.collect().num_rows == 100
    m = s.metrics[s._node.name]
    assert m["dead_letter_errors"] == 1 and m["commits_withheld"] >= 1
    assert all(o < 0 for o in committed(kafka_broker.bootstrap, topic, group, 1).values())


@pytest.mark.parametrize("mode, message", [("stop", "stopped while"),
                                           ("unheld", "is not held to write again")])
def test_writes_that_cannot_be_retried_end_the_run_without_committing(
        kafka_broker, unique_topic, tmp_path, mode, message):
    """The disk stays full and the user stops the pipeline, or the open file is too large to
    be held for a rewrite: the run ends with a one-line error, no file and no ``.part`` is
    left, and nothing was committed."""
    import json

    topic, group = unique_topic(), unique_topic("g")
    kafka_broker.create_topic(topic, partitions=3)
    produce(kafka_broker.bootstrap, topic, ticker_table("kraken", 3000, seed=28))
    script = tmp_path / "io_errors.py"
    script.write_text(IO_ERROR_SCRIPT.format(root=str(ROOT)))
    out = tmp_path / "out.parquet"
    run = subprocess.run([sys.executable, str(script), kafka_broker.bootstrap, topic, group,
                          str(out), mode], capture_output=True, text=True, timeout=180)
    assert run.returncode == 3, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert message in report["error"] and "\n" not in report["error"]
    assert not out.exists() and not list(tmp_path.glob("*.part"))
    assert all(o < 0 for o in committed(kafka_broker.bootstrap, topic, group, 3).values())


def test_to_kafka_record_the_producer_refuses_is_counted_not_a_crash(kafka_broker, unique_topic):
    """One record larger than ``message.max.bytes``: the rest is delivered, the run ends with
    DeliveryError naming the count (before, the producer's exception ended the run mid-way)."""
    from sabot.api.stream import DeliveryError

    out = unique_topic("out")
    kafka_broker.create_topic(out, partitions=1)
    table = ticker_table("kraken", 300, seed=29)
    symbols = table.column("symbol").to_pylist()
    symbols[100] = "X" * 5000
    table = table.set_column(1, "symbol", pa.array(symbols))
    s = Stream.from_table(table, batch_size=50)
    with pytest.raises(DeliveryError, match=r"1 of 300 record\(s\) not delivered"):
        s.to_kafka(kafka_broker.bootstrap, out, **{"message.max.bytes": 2000})
    assert s.metrics["to_kafka"]["delivered"] == 299


def test_timestamp_window_is_relative_to_when_the_message_was_produced(kafka_broker,
                                                                         unique_topic):
    """A replay of an old topic: records two days old written two days ago (message
    timestamp) are valid; the same record written now (a replayed or forged copy) is not."""
    import orjson
    from confluent_kafka import Producer

    from stream_data import json_values

    topic = unique_topic()
    kafka_broker.create_topic(topic, partitions=1)
    old_ns = time.time_ns() - 2 * 86_400 * 10**9
    rec = orjson.loads(json_values(ticker_table("kraken", 1, seed=30))[0])
    rec["timestamp"] = rec["recv_timestamp"] = old_ns
    p = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    p.produce(topic, orjson.dumps(rec), timestamp=old_ns // 10**6 + 5)  # written back then
    p.produce(topic, orjson.dumps({**rec, "sequence": 99}))  # written now
    assert p.flush(10) == 0
    s = Stream.from_kafka(kafka_broker.bootstrap, topic, unique_topic("g"), from_beginning=True,
                          stop_at_end=True, timestamp_window=(86_400, 60), **FAST)
    got = s.collect()
    assert got.column("sequence").to_pylist() == [rec["sequence"]]
    assert s.metrics[s._node.name]["decode_errors"] == 1


def test_default_timestamp_window():
    from sabot.api._decode import RecordRules

    assert RecordRules.from_window("auto", from_beginning=False) == RecordRules(86_400.0, 60.0)
    assert RecordRules.from_window("auto", from_beginning=True) == RecordRules(None, 60.0)
    assert RecordRules.from_window(None, from_beginning=False) == RecordRules(None, None)
    assert RecordRules.from_window([3600, None], from_beginning=True) == RecordRules(3600.0, None)
