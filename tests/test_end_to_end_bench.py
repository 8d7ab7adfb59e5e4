"""The end-to-end job of ``benchmarks/end_to_end.py``, small, and the sink's JSON encoder.

No timing is checked here (speed lives in the benchmark).  The job (Kafka -> midprice -> EWMA by
symbol -> Kafka) must write every input record exactly once with the right midprice and EWMA; it
reads its input to the end with ``stop_at_end``, which must not stop early (the embedded
broker's listed high watermarks may undercount, see :mod:`sabot.api._kafka`).
"""
from __future__ import annotations

import datetime
import math
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from stream_data import exchange_rounded, produce, ticker_table  # noqa: E402

from sabot.api._kafka import encode_json  # noqa: E402

N = 3000


def _read_all(bootstrap: str, topic: str, expected: int) -> list:
    """Every message of ``topic``: read until ``expected`` are in and one more poll is empty."""
    from confluent_kafka import Consumer

    from sabot.kafka import assign_all

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "e2e-read",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 10})
    assign_all(c, topic)
    out: list = []
    empty_after_all = 0
    for _ in range(400):  # bounded: 400 polls of at most 0.25 s
        got = [m for m in c.consume(5000, 0.25) if m.error() is None]
        out += got
        if len(out) >= expected and not got:
            empty_after_all += 1
            if empty_after_all == 2:
                break
    c.close()
    return out


@pytest.fixture(scope="module")
def e2e_input(kafka_broker):
    """N ticker records (exchange decimals) keyed by symbol in a 3-partition topic."""
    topic = "e2e-bench-in"
    kafka_broker.create_topic(topic, partitions=3)
    table = exchange_rounded(ticker_table("coinbase", N, seed=3))
    produce(kafka_broker.bootstrap, topic, table)
    return topic, table


def test_sabot_job_writes_every_record_once_with_midprice_and_ewma(kafka_broker, e2e_input,
                                                                    unique_topic):
    import end_to_end

    topic, table = e2e_input
    out = unique_topic("out")
    kafka_broker.create_topic(out, partitions=3)
    figures = end_to_end.run_sabot(kafka_broker.bootstrap, out, N, in_topic=topic)
    assert figures["process"] > 0 and figures["join"] > 0

    msgs = _read_all(kafka_broker.bootstrap, out, N)
    rows = [orjson.loads(m.value()) for m in msgs]
    assert len(rows) == N
    # every input record exactly once (sequence numbers are per symbol)
    assert sorted((r["symbol"], r["sequence"]) for r in rows) == sorted(
        zip(table["symbol"].to_pylist(), table["sequence"].to_pylist()))
    for m, r in zip(msgs, rows):
        assert m.key() == r["symbol"].encode()
        assert r["midprice"] == (r["bid"] + r["ask"]) / 2.0
    # EWMA per symbol, in the input order of that symbol's records
    by_symbol: dict = {}
    for r in rows:
        by_symbol.setdefault(r["symbol"], []).append(r)
    for symbol, recs in by_symbol.items():
        recs.sort(key=lambda r: r["sequence"])
        state = None
        for r in recs:
            x = (r["bid"] + r["ask"]) / 2.0
            state = x if state is None else end_to_end.ALPHA * x + (1 - end_to_end.ALPHA) * state
            assert math.isclose(r["ewma"], state, rel_tol=1e-12), (symbol, r["sequence"])
    # the input as the job received it, field by field
    source = {(s, q): (b, a) for s, q, b, a in zip(*(table[c].to_pylist() for c in
                                                     ("symbol", "sequence", "bid", "ask")))}
    assert all(source[(r["symbol"], r["sequence"])] == (r["bid"], r["ask"]) for r in rows)


def test_bare_loop_copies_every_record_once(kafka_broker, e2e_input, unique_topic):
    import end_to_end

    topic, table = e2e_input
    out = unique_topic("out")
    kafka_broker.create_topic(out, partitions=3)
    end_to_end.run_bare(kafka_broker.bootstrap, out, N, in_topic=topic)
    msgs = _read_all(kafka_broker.bootstrap, out, N)
    assert len(msgs) == N
    assert len({(m.key(), orjson.loads(m.value())["sequence"]) for m in msgs}) == N


# -- the sink's encoder: the same JSON values as orjson on the Python values --------------------
def _reference(batch: pa.RecordBatch) -> list:
    """The JSON values each row must read back as: Python values of the columns (timestamps as
    integer ns, non-finite floats as null)."""
    names, lists = batch.schema.names, []
    for col in batch.columns:
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.timestamp("ns", tz=col.type.tz)).cast(pa.int64())
        elif pa.types.is_date32(col.type):  # days since the epoch
            lists.append([None if v is None else (v - datetime.date(1970, 1, 1)).days
                          for v in col.to_pylist()])
            continue
        elif pa.types.is_duration(col.type):  # in the column's unit
            assert col.type.unit == "us"
            lists.append([None if v is None else v // datetime.timedelta(microseconds=1)
                          for v in col.to_pylist()])
            continue
        lists.append([None if isinstance(v, float) and not math.isfinite(v) else v
                      for v in col.to_pylist()])
    return [dict(zip(names, row)) for row in zip(*lists)]


_floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(min_value=1e-4, max_value=1e15),
                    st.decimals(min_value=0, max_value=10**9, places=8).map(float),
                    st.sampled_from([0.0, -0.0, 1e-4, 9.999e-5, 1e15, 999999999999999.9,
                                     2.0 ** 53, 0.1, 0.3, 5e-324, 1.7976931348623157e308]))
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), n=st.integers(0, 20))
def test_encode_json_matches_orjson(data, n):
    def col(strategy):
        return data.draw(st.lists(st.one_of(st.none(), strategy), min_size=n, max_size=n))

    batch = pa.record_batch({
        "f": pa.array(col(_floats), pa.float64()),
        "f32": pa.array(col(st.floats(width=32, allow_nan=False)), pa.float32()),
        "i": pa.array(col(st.integers(-2**63, 2**63 - 1)), pa.int64()),
        "i8": pa.array(col(st.integers(-128, 127)), pa.int8()),
        "u64": pa.array(col(st.integers(0, 2**64 - 1)), pa.uint64()),
        "b": pa.array(col(st.booleans()), pa.bool_()),
        "s": pa.array(col(_text), pa.string()),
        "sym": pa.array(col(st.sampled_from(["BTC/USD", 'q"uote', "back\\slash", "é€"])),
                        pa.string()).dictionary_encode(),
        "ts": pa.array(col(st.integers(0, 2**40)), pa.timestamp("ms", tz="UTC")),
        "ts_s": pa.array(col(st.integers(-2**33, 2**33)), pa.timestamp("s")),
        "ts_us": pa.array(col(st.integers(-2**53, 2**53)), pa.timestamp("us")),
        "ts_ns": pa.array(col(st.integers(-2**63, 2**63 - 1)), pa.timestamp("ns")),
        "i16": pa.array(col(st.integers(-2**15, 2**15 - 1)), pa.int16()),
        "u8": pa.array(col(st.integers(0, 255)), pa.uint8()),
        "u16": pa.array(col(st.integers(0, 2**16 - 1)), pa.uint16()),
        "u32": pa.array(col(st.integers(0, 2**32 - 1)), pa.uint32()),
        "ls": pa.array(col(_text), pa.large_string()),
        "d": pa.array(col(st.integers(-10**5, 10**5)), pa.int32()).cast(pa.date32()),
        "dur": pa.array(col(st.integers(-2**40, 2**40)), pa.duration("us")),
        "l": pa.array(col(st.lists(st.integers(0, 9), max_size=3)), pa.list_(pa.int64())),
        'we"ird\nname': pa.array(col(st.integers(0, 9)), pa.int32()),
    })
    start = data.draw(st.integers(0, n))
    # repeated to 64 rows and more: formatted without the GIL
    big = pa.Table.from_batches([batch] * (64 // max(n, 1) + 1)).combine_chunks().to_batches()
    for b in (batch, batch.slice(start), batch.slice(0, start), *big[:1]):
        encoded = encode_json(b)
        assert [orjson.loads(e) for e in encoded] == _reference(b)


def test_encode_json_floats_read_back_exactly():
    import numpy as np

    rng = np.random.default_rng(7)
    xs = np.concatenate([rng.standard_normal(3000) * 10.0 ** rng.integers(-10, 18, 3000),
                         np.round(rng.random(3000) * 1e5, 2), np.round(rng.random(3000), 8)])
    encoded = encode_json(pa.record_batch({"x": pa.array(xs)}))
    assert np.array_equal(np.array([orjson.loads(e)["x"] for e in encoded]), xs)
    # exchange decimals are written as exchanges publish them
    assert encode_json(pa.record_batch({"x": pa.array([399.95, 0.00012, 4571.64264257, 400.0,
                                                        -2.5])})) == [
        b'{"x":399.95}', b'{"x":0.00012}', b'{"x":4571.64264257}', b'{"x":400.0}',
        b'{"x":-2.5}']


def test_encode_json_writes_floats_as_python_repr():
    """The shortest text that reads back to the double, and of those the nearest: Python's
    ``repr``, character for character, at every magnitude (positional between 1e-4 and 1e15,
    where the compiled path runs; ``repr``'s own form elsewhere), including values that need 16
    or 17 significant digits, powers of two and their neighbours."""
    import numpy as np

    rng = np.random.default_rng(11)
    edges = np.array([2.0 ** k for k in range(-16, 52)] + [10.0 ** k for k in range(-5, 17)])
    xs = np.concatenate([
        rng.standard_normal(20000) * 10.0 ** rng.integers(-6, 18, 20000),
        rng.random(5000) * 1000.0,  # full precision, as an EWMA writes them
        np.round(rng.random(5000) * 1e5, 2), edges, np.nextafter(edges, 0),
        np.nextafter(edges, np.inf), [1e-4, 9.999999999999999e-05, 999999999999999.9, 0.1,
                                      0.3, 800.3383041952065, 5e-324, -0.0, 0.0]])
    encoded = encode_json(pa.record_batch({"x": pa.array(xs)}))
    assert [e[5:-1].decode() for e in encoded] == [repr(x) for x in xs.tolist()]


def test_encode_json_keys_are_the_key_column_as_bytes():
    from sabot.api._kafka import encode_json_keys

    batch = pa.record_batch({"symbol": pa.array(["BTC/USD", None, "é€"]).slice(0),
                             "x": pa.array([1.5, 2.0, None])}).slice(1)
    values, keys = encode_json_keys(batch, "symbol")
    assert values == [b'{"symbol":null,"x":2.0}', '{"symbol":"é€","x":null}'.encode()]
    assert keys == [None, "é€".encode()]
    assert encode_json_keys(batch, "x")[1] is None  # not a string column: the sink's own path


def test_encode_json_refuses_a_timestamp_outside_the_nanosecond_range():
    for rows in (2, 200):  # with and without the GIL
        batch = pa.record_batch({"x": pa.array(range(rows)),
                                 "t": pa.array([0] * (rows - 1) + [10**11], pa.timestamp("s"))})
        with pytest.raises(ValueError, match="column 't': timestamp 100000000000"):
            encode_json(batch)


def test_encode_json_writes_a_repeated_column_name_once():
    batch = pa.RecordBatch.from_arrays([pa.array([1, 2]), pa.array(["a", "b"]),
                                        pa.array([3.5, None])], names=["x", "s", "x"])
    assert encode_json(batch) == [b'{"x":3.5,"s":"a"}', b'{"x":null,"s":"b"}']


def test_encode_json_writes_integers_and_timestamps_with_nulls_exactly():
    """A nullable integer or timestamp column (a join's missing side) is written as integers,
    never as floats that lose the last digits of a nanosecond timestamp."""
    batch = pa.record_batch({
        "sequence": pa.array([1, None, 2**60 + 1], pa.int64()),
        "timestamp": pa.array([1_700_000_000_123_456_789, None, 1_700_000_000_000_000_001],
                              pa.timestamp("ns", tz="UTC")),
    })
    assert encode_json(batch) == [
        b'{"sequence":1,"timestamp":1700000000123456789}',
        b'{"sequence":null,"timestamp":null}',
        b'{"sequence":1152921504606846977,"timestamp":1700000000000000001}']


def test_to_kafka_commits_every_offset_while_the_source_is_idle(kafka_broker, unique_topic):
    """Commits held while deliveries are in flight are run when the source falls idle, so a
    live stream that has written everything has committed everything, before it ends."""
    import threading
    import time

    from confluent_kafka import Consumer, TopicPartition

    from sabot.api import Stream
    from sabot.fintech import midprice
    from sabot.kafka import fast_consumer_config

    src, out, group = unique_topic("in"), unique_topic("out"), unique_topic("group")
    kafka_broker.create_topic(src, partitions=3)
    kafka_broker.create_topic(out, partitions=3)
    produce(kafka_broker.bootstrap, src, exchange_rounded(ticker_table("kraken", 600, seed=5)))
    stream = Stream.from_kafka(kafka_broker.bootstrap, src, group, from_beginning=True,
                               **fast_consumer_config()).map(midprice)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(
        stream.to_kafka(kafka_broker.bootstrap, out)), daemon=True)
    runner.start()
    probe = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": group,
                      "enable.auto.commit": False})
    try:
        committed = 0
        deadline = time.monotonic() + 60
        while committed < 600 and time.monotonic() < deadline and runner.is_alive():
            parts = probe.committed([TopicPartition(src, p) for p in range(3)], timeout=5)
            committed = sum(max(p.offset, 0) for p in parts)
        assert committed == 600 and runner.is_alive()  # all committed, still running
    finally:
        stream.stop()
        runner.join(30)
        probe.close()
    assert not runner.is_alive() and result["delivered"] == 600


def test_held_commits_of_one_source_run_are_committed_once_with_their_union():
    from sabot.api._events import Commit
    from sabot.api._kafka import _run_commits

    calls: list = []

    def merge(offsets):
        calls.append(dict(offsets))

    def kafka_commit(name, offsets):
        return Commit(lambda: calls.append(name), "src",
                      extra={"offsets": offsets, "commit_offsets": merge})

    _run_commits([kafka_commit("a1", {("t", 0): 5}),
                  kafka_commit("a2", {("t", 1): 3, ("t", 0): 9}),
                  Commit(lambda: calls.append("other"), "parquet"),
                  kafka_commit("a3", {("t", 0): 12})])
    assert calls == [{("t", 0): 9, ("t", 1): 3}, "other", "a3"]


def test_from_kafka_fetches_again_soon_after_its_queue_fills():
    """librdkafka's default fetch.queue.backoff.ms (1 s) starves a source reading a backlog;
    the source sets a short one (librdkafka >= 2.4), and an explicit setting still wins."""
    from confluent_kafka import libversion

    from sabot.api._kafka import FETCH_QUEUE_BACKOFF_MS, KafkaSource

    if libversion()[1] < 0x02040000:
        pytest.skip("librdkafka < 2.4 has no fetch.queue.backoff.ms")
    assert KafkaSource("127.0.0.1:1", "t", "g").config["fetch.queue.backoff.ms"] == \
        FETCH_QUEUE_BACKOFF_MS < 100
    assert KafkaSource("127.0.0.1:1", "t", "g", fetch_queue_backoff_ms=250).config[
        "fetch.queue.backoff.ms"] == 250


def test_from_kafka_reads_with_a_wait_under_a_millisecond(kafka_broker, e2e_input, unique_topic):
    """``max_latency_ms`` under one millisecond still polls (once per window, not in a loop)."""
    from sabot.api import Stream
    from sabot.kafka import fast_consumer_config

    topic, _ = e2e_input
    table = Stream.from_kafka(kafka_broker.bootstrap, topic, unique_topic("group"),
                              from_beginning=True, stop_at_end=True, max_latency_ms=0.5,
                              **fast_consumer_config()).collect()
    assert table.num_rows == N


def test_to_kafka_keys_of_every_column_type(kafka_broker, unique_topic):
    """Message keys: a string column's UTF-8 bytes (from the encoder's pass), another type's
    text (``str`` of the value), None for a null or without ``key``."""
    from sabot.api import Stream

    batch = pa.record_batch({"symbol": pa.array(["BTC/USD", None, "é"]),
                             "sequence": pa.array([7, None, -2], pa.int64()),
                             "sym": pa.array(["a", "b", "a"]).dictionary_encode()})
    for key, expected in (("symbol", [b"BTC/USD", None, "é".encode()]),
                          ("sequence", [b"7", None, b"-2"]), ("sym", [b"a", b"b", b"a"]),
                          (None, [None, None, None])):
        out = unique_topic("keys")
        kafka_broker.create_topic(out, partitions=1)
        sent = Stream.from_table(batch).to_kafka(kafka_broker.bootstrap, out, key=key)
        assert sent["delivered"] == 3
        msgs = sorted(_read_all(kafka_broker.bootstrap, out, 3), key=lambda m: m.offset())
        assert [m.key() for m in msgs] == expected, key
