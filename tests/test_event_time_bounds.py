"""Event time is bounded and nothing stalls: far-future rows, capped dead letters, a quiet
venue in a streaming ASOF join, bounded order_by buffers, checkpointable on-arrival join."""
from __future__ import annotations

import json
import logging
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sabot.api import Stream
from sabot.api._ops import TumblingOHLCV

from stream_data import ticker_table

YEAR_2116 = pd.Timestamp("2116-01-01", tz="UTC").value


def with_times(table: pa.Table, ts: np.ndarray) -> pa.Table:
    i = table.schema.get_field_index("timestamp")
    return table.set_column(i, table.schema.field(i),
                            pa.array(ts).cast(pa.timestamp("ns", tz="UTC")))


def int_ts(table: pa.Table) -> np.ndarray:
    return table.column("timestamp").cast(pa.int64()).to_numpy().copy()


def bars(table: pa.Table, batch_size: int, **kw) -> tuple:
    s = Stream.from_table(table, batch_size=batch_size).key_by("symbol").tumbling(
        "1s", volume_column=None, **kw)
    out = s.collect()
    return out, s.operators()[-1]


def assert_plain(value) -> None:
    """Plain data only: what a checkpoint can hold without pickle."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, (str, int)), k
            assert_plain(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            assert_plain(v)
    elif isinstance(value, np.ndarray):
        assert value.dtype != object
    else:
        assert value is None or isinstance(value, (bool, int, float, str, bytes)), type(value)


# -- 1. one far-future row ------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1000, 40_000, 7])
def test_one_far_future_row_does_not_poison_the_window(batch_size):
    clean = ticker_table("kraken", 40_000 if batch_size > 7 else 4_000, seed=3,
                         step_ns=1_250_000 if batch_size > 7 else 12_500_000)  # 50 s of data
    ts = int_ts(clean)
    ts[len(ts) // 8] = YEAR_2116
    poisoned = with_times(clean, ts)
    got, op = bars(poisoned, batch_size)
    ref, _ = bars(clean.filter(pa.array(np.arange(len(ts)) != len(ts) // 8)), batch_size)
    assert got.num_rows == ref.num_rows >= 50 * 8 * 0.9
    assert got.equals(ref)
    m = op.metrics()
    assert m["late_count"] == 0 and m["skew_rejected"] == 1 and m["skew_held"] == 0
    dead = op.dead_letter()
    assert dead.num_rows == 1 and int_ts(dead)[0] == YEAR_2116
    assert op.dead_letter_reasons() == ["beyond_max_skew"]


def test_a_gap_in_the_data_is_not_taken_for_a_bad_clock():
    """Ten quiet minutes (longer than max_skew), then the feed resumes: every row is used,
    row by row as a live consumer sees it and in large batches."""
    t = ticker_table("coinbase", 600, seed=4, step_ns=10_000_000)
    ts = int_ts(t)
    ts[300:] += 10 * 60 * 1_000_000_000
    t = with_times(t, ts)
    ref, _ = bars(t, 600, max_skew=None)
    for batch_size in (1, 64, 600):
        got, op = bars(t, batch_size)
        assert got.equals(ref), batch_size
        assert op.metrics()["skew_rejected"] == 0 and op.dead_letter().num_rows == 0


def test_max_skew_bad_value_is_named():
    with pytest.raises(ValueError, match="max_skew"):
        TumblingOHLCV("1s", max_skew="soon")


def test_skew_guard_state_resumes_exactly():
    """A run split while a suspect row is held back, restored from plain state (numbers,
    lists, Arrow IPC bytes), equals the unsplit run."""
    t = ticker_table("kraken", 3000, seed=6, step_ns=5_000_000)
    ts = int_ts(t)
    ts[999] = YEAR_2116            # last row of the first part: held when the state is taken
    t = with_times(t, ts)
    batches = t.combine_chunks().to_batches(max_chunksize=500)

    def run(op, parts, finish):
        out = [b for part in parts for b in op.process(part)]
        return out + (op.finish() if finish else [])

    whole_op = TumblingOHLCV("1s", by="symbol", volume_column=None)
    whole = pa.Table.from_batches(run(whole_op, batches, True))
    first = TumblingOHLCV("1s", by="symbol", volume_column=None)
    part1 = run(first, batches[:2], False)
    assert first.metrics()["skew_held"] == 1
    state = first.state_dict()
    assert_plain({k: v for k, v in state.items() if k != "scope"})
    second = TumblingOHLCV("1s", by="symbol", volume_column=None)
    second.load_state_dict(state)
    part2 = run(second, batches[2:], True)
    assert pa.Table.from_batches(part1 + part2).equals(whole)
    assert second.metrics()["skew_rejected"] == whole_op.metrics()["skew_rejected"] == 1


# -- 2. capped dead letters -------------------------------------------------------------------------
def late_table(n: int) -> pa.Table:
    """``2n`` rows: every second one dated at 0 — late once the first batch has gone by."""
    ms = np.repeat(np.arange(n, dtype=np.int64) * 2000, 2)
    ms[1::2] = 0
    return pa.table({"timestamp": pa.array(ms * 1_000_000).cast(pa.timestamp("ns", tz="UTC")),
                     "price": np.arange(len(ms), dtype=np.float64)})


def test_tumbling_dead_letter_is_capped_and_drops_are_counted(caplog):
    t = late_table(5000)
    s = Stream.from_table(t, batch_size=64).tumbling("1s", volume_column=None,
                                                      dead_letter_max_rows=100)
    with caplog.at_level(logging.WARNING, logger="sabot.api._ops"):
        s.collect()
    op = s.operators()[-1]
    m = op.metrics()
    assert m["late_count"] == 5000 - 32
    assert m["dead_letter_rows"] == 100 and op.dead_letter().num_rows == 100
    assert m["dead_letter_dropped"] == 5000 - 32 - 100 and m["dead_letter_spilled"] == 0
    # the newest are kept
    assert op.dead_letter().column("price").to_pylist()[-1] == float(len(t) - 1)
    full = [r for r in caplog.records if "dead letter full" in r.getMessage()]
    assert 1 <= len(full) <= 3   # rate-limited, not one per batch


def test_tumbling_dead_letter_byte_cap():
    s = Stream.from_table(late_table(3000), batch_size=100).tumbling(
        "1s", volume_column=None, dead_letter_max_bytes=4096)
    s.collect()
    op = s.operators()[-1]
    assert 0 < op.dead.nbytes <= 4096
    m = op.metrics()
    assert m["dead_letter_rows"] + m["dead_letter_dropped"] == m["late_count"] == 3000 - 50


def test_tumbling_dead_letter_spills_to_a_file(tmp_path):
    path = tmp_path / "dead.jsonl"
    s = Stream.from_table(late_table(1000), batch_size=50).tumbling(
        "1s", volume_column=None, dead_letter_max_rows=10, dead_letter_path=path)
    s.collect()
    op = s.operators()[-1]
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    m = op.metrics()
    assert m["late_count"] == 1000 - 25
    assert m["dead_letter_spilled"] == len(lines) == 1000 - 25 - 10
    assert m["dead_letter_dropped"] == 0 and m["dead_letter_rows"] == 10
    assert {x["sabot_error"] for x in lines} == {"late"}
    kept = op.dead_letter().column("price").to_pylist()
    assert [x["price"] for x in lines] + kept == [float(i) for i in range(51, 2000, 2)]


# -- 1 (joins). far-future rows in the streaming ASOF join -----------------------------------------
def quotes(exchange: str, n: int, seed: int, step_ns: int, offset_ns: int = 0) -> pa.Table:
    return ticker_table(exchange, n, seed=seed, step_ns=step_ns, offset_ns=offset_ns).select(
        ["timestamp", "symbol", "bid", "ask"])


def merge_asof_reference(left: pa.Table, right: pa.Table, tol_ms: float) -> pd.DataFrame:
    return pd.merge_asof(left.to_pandas(), right.to_pandas().rename(
        columns={"bid": "r_bid", "ask": "r_ask"}), on="timestamp", by="symbol",
        tolerance=pd.Timedelta(milliseconds=tol_ms), direction="backward")


def joined_frame(stream: Stream) -> pd.DataFrame:
    return stream.collect().to_pandas().sort_values("timestamp", kind="stable").reset_index(
        drop=True)


@pytest.mark.parametrize("side", ["right", "left"])
def test_one_far_future_row_does_not_poison_the_asof_join(side):
    left = quotes("coinbase", 6000, 1, 1_000_000)
    right = quotes("kraken", 6000, 2, 1_000_000, offset_ns=300_000)
    bad = 1500
    poisoned = with_times(left if side == "left" else right,
                          np.where(np.arange(6000) == bad, YEAR_2116,
                                   int_ts(left if side == "left" else right)))
    keep = pa.array(np.arange(6000) != bad)
    if side == "left":
        left_in, right_in, ref_left, ref_right = poisoned, right, left.filter(keep), right
    else:
        left_in, right_in, ref_left, ref_right = left, poisoned, left, right.filter(keep)
    s = Stream.from_table(left_in, batch_size=500).asof_join(
        Stream.from_table(right_in, batch_size=500), by="symbol", tolerance_ms=5,
        right_prefix="r_")
    got = joined_frame(s)
    ref = merge_asof_reference(ref_left, ref_right, 5)
    pd.testing.assert_frame_equal(got, ref, check_dtype=False)
    op = s.operators()[-1]
    m = op.metrics()
    assert m["skew_rejected"] == 1 and m["late_count"] == 0
    assert op.dead_letter_reasons() == ["beyond_max_skew"]
    assert int_ts(op.dead_letter())[0] == YEAR_2116


def test_streaming_asof_kernel_dead_letter_is_capped(caplog):
    from sabot.fintech import StreamingAsofJoinKernel

    k = StreamingAsofJoinKernel(on="t", by=None, tolerance_ms=None, on_unit="ns",
                                max_dead_rows=5)
    k.process_right(pa.table({"t": pa.array([1_000], pa.int64()), "v": [0.0]}))
    with caplog.at_level(logging.WARNING, logger="sabot.fintech.asof"):
        for i in range(40):      # 40 batches of 3 late right rows
            k.process_right(pa.table({"t": pa.array([1, 2, 3], pa.int64()),
                                      "v": [float(i)] * 3}))
    assert k.late_count == 120
    assert k.dead_letter().num_rows == 5 and k.dead_letter_dropped == 115
    assert k.dead_letter().column("v").to_pylist() == [38.0, 38.0, 39.0, 39.0, 39.0]
    assert 1 <= sum("dead letter full" in r.getMessage() for r in caplog.records) <= 2
    restored = StreamingAsofJoinKernel(on="t", by=None, tolerance_ms=None, on_unit="ns",
                                       max_dead_rows=5)
    restored.load_state_dict(k.state_dict())
    assert restored.dead_letter().equals(k.dead_letter()) and restored.dead_letter_dropped == 115


def test_streaming_asof_kernel_source_has_no_pickle():
    import pathlib

    import sabot.fintech.asof as asof

    src = pathlib.Path(asof.__file__).with_name("asof.pyx").read_text()
    assert "import pickle" not in src and "pickle" not in vars(asof)


# -- 3. a quiet venue does not stop the streaming ASOF join -------------------------------------------
def test_quiet_right_side_does_not_stall_the_asof_join():
    """The right source delivers a few quotes, then only reports IDLE (a venue gone quiet):
    after idle_timeout_ms every left row comes out, joined as merge_asof on what the right side
    delivered, and every left commit is released — while the right source is still open."""
    from sabot.api._align import AsofJoinOp, asof_events
    from sabot.api._events import IDLE, Commit
    from sabot.fintech import StreamingAsofJoinKernel

    left = quotes("coinbase", 4000, 3, 1_000_000)
    right = quotes("kraken", 4000, 4, 1_000_000, offset_ns=200_000).slice(0, 500)
    committed = []

    def left_source():
        for i, b in enumerate(left.to_batches(max_chunksize=250)):
            yield b
            yield Commit(lambda i=i: committed.append(i), "left")
        while True:
            yield IDLE

    def right_source():
        yield from right.to_batches(max_chunksize=250)
        while True:
            yield IDLE

    kernel = StreamingAsofJoinKernel(on="timestamp", by="symbol", tolerance_ms=50,
                                     right_prefix="r_")
    op = AsofJoinOp(kernel, 50_000_000, idle_timeout_ms=200)
    op.begin_run()
    out = []
    events = asof_events(left_source(), right_source(), op, "timestamp")
    deadline = time.monotonic() + 60
    try:
        for ev in events:
            if isinstance(ev, pa.RecordBatch):
                out.append(ev)
            elif isinstance(ev, Commit):
                ev.run()
            if sum(b.num_rows for b in out) == 4000 and len(committed) == 16:
                break
            assert time.monotonic() < deadline, (
                f"stalled: {sum(b.num_rows for b in out)} of 4000 rows, "
                f"{len(committed)} of 16 commits")
    finally:
        events.close()
    got = pa.Table.from_batches(out).to_pandas().sort_values(
        "timestamp", kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, merge_asof_reference(left, right, 50), check_dtype=False)
    assert committed == list(range(16))
    assert op.metrics()["idle_releases"] > 0


def committed_offsets(bootstrap: str, topic: str, group: str, partitions: int) -> list:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        c.close()
    return [tp.offset for tp in got]


def test_quiet_venue_over_kafka_keeps_output_and_commits_flowing(kafka_broker, unique_topic):
    """Two real topics: the right venue publishes 300 quotes and goes quiet (its consumer keeps
    polling, nothing arrives).  Every one of the 3000 left rows is emitted and the left group
    commits to the end of its topic while both sources are still live.  (The idle timeout
    leaves room for the consumer group joins at start: a right side still joining when it
    expires would have its rows counted late.)"""
    import threading

    from sabot.kafka import fast_consumer_config

    from stream_data import produce

    lt, rt = unique_topic("left"), unique_topic("right")
    kafka_broker.create_topic(lt, partitions=1)
    kafka_broker.create_topic(rt, partitions=1)
    left = ticker_table("coinbase", 3000, seed=5, step_ns=1_000_000)
    right = ticker_table("kraken", 3000, seed=6, step_ns=1_000_000, offset_ns=100_000).slice(0, 300)
    produce(kafka_broker.bootstrap, lt, left)
    produce(kafka_broker.bootstrap, rt, right)
    glt = unique_topic("gl")
    fast = fast_consumer_config()

    def source(topic, group):
        return Stream.from_kafka(kafka_broker.bootstrap, topic, group, batch_size=500,
                                 from_beginning=True, order_by="timestamp", **fast).select(
            "timestamp", "symbol", "bid", "ask")

    joined = source(lt, glt).asof_join(source(rt, unique_topic("gr")), by="symbol",
                                        tolerance_ms=50, right_prefix="r_",
                                        idle_timeout_ms=3000)
    out, errors = [], []

    def run():
        try:
            for b in joined:
                out.append(b)
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    deadline = time.monotonic() + 90
    try:
        while committed_offsets(kafka_broker.bootstrap, lt, glt, 1) != [3000]:
            assert not errors, errors
            assert th.is_alive(), "the join ended on its own"
            assert time.monotonic() < deadline, (
                f"stalled: {sum(b.num_rows for b in out)} of 3000 rows out, left group "
                f"committed {committed_offsets(kafka_broker.bootstrap, lt, glt, 1)}")
            time.sleep(0.2)   # polling a condition, bounded by the deadline above
    finally:
        joined.stop()     # ends at the next event: sources report IDLE at least every 50 ms
        th.join(30)
    assert not th.is_alive() and not errors, errors
    got = pa.Table.from_batches(out).to_pandas().sort_values(
        "timestamp", kind="stable").reset_index(drop=True)
    ref = merge_asof_reference(left.select(["timestamp", "symbol", "bid", "ask"]),
                               right.select(["timestamp", "symbol", "bid", "ask"]), 50)
    pd.testing.assert_frame_equal(got, ref, check_dtype=False)
    m = joined.metrics[joined._node.name]
    assert m["late_count"] == 0 and m["idle_releases"] > 0


# -- 4. order_by buffers are bounded -------------------------------------------------------------------
def test_order_by_buffer_is_bounded_by_pausing_the_partitions_ahead(kafka_broker, unique_topic,
                                                                   monkeypatch):
    """Partition 1's records are all later than partition 0's, so none of them can be released
    before partition 0 is read to its end: unbounded, they would all be buffered.  With a bound
    of 1000 rows partition 1 is paused instead; every record still comes out, in time order."""
    from confluent_kafka import Producer

    from sabot.api import _kafka
    from sabot.kafka import fast_consumer_config

    from stream_data import json_values

    topic = unique_topic()
    kafka_broker.create_topic(topic, partitions=2)
    early = ticker_table("kraken", 6000, seed=7, step_ns=1_000_000)
    late = ticker_table("kraken", 6000, seed=8, step_ns=1_000_000, offset_ns=3_600_000_000_000)
    p = Producer({"bootstrap.servers": kafka_broker.bootstrap, "linger.ms": 5})
    for part, table in ((1, late), (0, early)):
        for value in json_values(table):
            p.produce(topic, value=value, partition=part)
            p.poll(0)
    assert p.flush(30) == 0

    peak = []
    add = _kafka._PartitionOrderer.add

    def measured_add(self, batch, good, consumed):   # measures the buffer, old code or new
        add(self, batch, good, consumed)
        peak.append(sum(c[0].num_rows for chunks in self.buffers.values() for c in chunks))

    monkeypatch.setattr(_kafka._PartitionOrderer, "add", measured_add)
    monkeypatch.setattr(_kafka._PartitionOrderer, "MAX_BUFFERED_ROWS", 1000, raising=False)
    s = Stream.from_kafka(kafka_broker.bootstrap, topic, unique_topic("g"), batch_size=200,
                          from_beginning=True, stop_at_end=True, order_by="timestamp",
                          **fast_consumer_config())
    got = s.collect()
    assert got.num_rows == 12_000
    ts = int_ts(got)
    assert (np.diff(ts) >= 0).all()
    assert max(peak) <= 1000 + 2 * 200 + 1, str(peak)   # bound + fetched batches in flight
    m = s.metrics[s._node.name]
    assert m["order_pauses"] >= 1 and m["order_paused_partitions"] == 0
    assert m["order_buffer_peak_rows"] == max(peak)


# -- 1 (alignment). merge and zip ---------------------------------------------------------------------
def test_one_far_future_row_does_not_stall_merge_or_zip():
    a = quotes("coinbase", 3000, 11, 1_000_000)
    b = quotes("kraken", 3000, 12, 1_000_000, offset_ns=500_000)
    bad = 700
    a_bad = with_times(a, np.where(np.arange(3000) == bad, YEAR_2116, int_ts(a)))
    a_clean = a.filter(pa.array(np.arange(3000) != bad))
    expected = pa.concat_tables([a_clean, b]).sort_by("timestamp")

    got = Stream.merge(Stream.from_table(a_bad, batch_size=100),
                       Stream.from_table(b, batch_size=100)).collect()
    assert got.sort_by("timestamp").equals(expected)
    assert (np.diff(int_ts(got)) >= 0).all()    # released in time order, nothing stuck behind

    from sabot.api._align import merge_events
    from sabot.api._ops import DeadLetter

    dead = DeadLetter("merge")
    events = merge_events([iter(a_bad.to_batches(max_chunksize=100)),
                           iter(b.to_batches(max_chunksize=100))], "timestamp", None, "5m", dead)
    assert pa.Table.from_batches([e for e in events if isinstance(e, pa.RecordBatch)]).num_rows \
        == 5999
    assert dead.counts == {"beyond_max_skew": 1} and int_ts(dead.table())[0] == YEAR_2116

    spans = list(Stream.zip(Stream.from_table(a_bad, batch_size=100),
                            Stream.from_table(b, batch_size=100)))
    got_a = pa.Table.from_batches([p[0] for p in spans if p[0] is not None and p[0].num_rows])
    assert got_a.equals(a_clean.combine_chunks())
    assert len(spans) > 10     # spans keep coming while the bad row is ignored


def test_a_commit_covering_a_held_back_row_waits_for_that_rows_bar():
    """At-least-once: a commit arriving while a row is held back as a suspect is released only
    once the bar that row finally went into has been emitted."""
    from sabot.api._events import Commit

    def rows(*seconds):
        ns = (np.array(seconds) * 1e9).astype(np.int64)
        return pa.RecordBatch.from_pydict({
            "timestamp": pa.array(ns).cast(pa.timestamp("ns", tz="UTC")),
            "price": np.arange(len(ns), dtype=np.float64) + 1})

    op = TumblingOHLCV("1s", volume_column=None)
    op.begin_run()
    assert len(op.process(rows(0.1, 0.5, 1.2, 1.7, 2.5))[0]) == 2
    assert op.process(rows(600.0)) == []           # ten minutes on: held back
    assert op.metrics()["skew_held"] == 1
    c = Commit(lambda: None, "src")
    op.hold(c)
    assert op.released() == []
    out = op.process(rows(600.1, 600.2))           # the jump is confirmed
    assert [b.column("window_start")[0].value for b in out] == [2_000_000_000]
    assert op.released() == []                     # bar [600 s, 601 s) still open
    out = op.process(rows(601.5))
    assert out[0].column("count").to_pylist() == [3]
    assert op.released() == [c]


def test_dead_letter_overflow_goes_to_the_streams_dead_letter_topic(kafka_broker, unique_topic):
    from confluent_kafka import Consumer

    from sabot.kafka import assign_all, fast_consumer_config

    from stream_data import produce

    topic, dlq = unique_topic(), unique_topic("dlq")
    kafka_broker.create_topic(topic, partitions=1)
    kafka_broker.create_topic(dlq, partitions=1)
    t = ticker_table("kraken", 2000, seed=9, step_ns=10_000_000)
    ts = int_ts(t)
    ts[1::2] = ts[0]                       # every second record dated at the very start
    t = with_times(t, ts)
    produce(kafka_broker.bootstrap, topic, t)
    s = (Stream.from_kafka(kafka_broker.bootstrap, topic, unique_topic("g"), batch_size=100,
                           from_beginning=True, stop_at_end=True, dead_letter_topic=dlq,
                           **fast_consumer_config())
         .tumbling("1s", dead_letter_max_rows=50, volume_column=None))
    s.collect()
    m = s.metrics[s.operators()[-1].name]
    assert m["late_count"] > 500 and m["dead_letter_rows"] == 50 and m["dead_letter_dropped"] == 0
    assert m["dead_letter_spilled"] == m["late_count"] - 50
    c = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": unique_topic("r")})
    assign_all(c, dlq)
    got, deadline = [], time.monotonic() + 30
    while len(got) < m["dead_letter_spilled"] and time.monotonic() < deadline:
        got += [x for x in c.consume(1000, 0.2) if x.error() is None]
    c.close()
    assert len(got) == m["dead_letter_spilled"]
    assert {dict(x.headers())["sabot.error"] for x in got} == {b"late"}
    assert {json.loads(x.value())["timestamp"] for x in got} == {int(ts[0])}
