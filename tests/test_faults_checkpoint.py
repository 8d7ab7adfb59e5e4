"""Checkpoints: the local store, and a checkpointed pipeline killed with SIGKILL ten times.

The pipeline (tests/faults_pipeline.py: midprice → EWMA, RSI by symbol) is killed at random
batches and restarted; after de-duplicating its at-least-once Kafka output by
(symbol, sequence) the rows equal an uninterrupted run and pandas/TA-Lib per symbol — so the
kernel state was restored from the checkpoint, not restarted from scratch."""
from __future__ import annotations

import os
import pickle
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest
from confluent_kafka import Consumer

from sabot.api import Stream
from sabot.kafka import assign_all
from sabot.state import CheckpointError, LocalCheckpointStore

from faults_pipeline import OUTPUT_COLUMNS, features
from stream_data import produce, ticker_table

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = Path(__file__).resolve().parent / "faults_pipeline.py"


# -- the store -------------------------------------------------------------------------------
def test_store_round_trip_keeps_newest_and_refuses_a_torn_newest_file(tmp_path):
    store = LocalCheckpointStore(tmp_path / "ck", keep=2)
    assert store.load_latest() is None
    for i in range(4):
        store.save({"t": {0: 10 * i, 1: 5}}, {"version": 1, "operators": {"x": i}})
    names = sorted(p.name for p in (tmp_path / "ck").iterdir() if p.name != ".lock")
    assert names == ["checkpoint-000000000003.ckpt", "checkpoint-000000000004.ckpt"]
    latest = store.load_latest()
    assert latest["seq"] == 4 and latest["offsets"] == {"t": {0: 30, 1: 5}}
    assert latest["state"]["operators"]["x"] == 3
    # a leftover .tmp from a killed write is ignored
    (tmp_path / "ck" / "checkpoint-000000000005.ckpt.tmp").write_bytes(b"partial")
    assert store.load_latest()["seq"] == 4
    # a torn newest file (not written by the store, which renames atomically) is refused by
    # name: never skipped silently to older state
    torn = tmp_path / "ck" / "checkpoint-000000000006.ckpt"
    torn.write_bytes((tmp_path / "ck" / "checkpoint-000000000004.ckpt").read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=rf"{torn}: record is \d+ bytes.*truncated"):
        store.load_latest()
    store.close()


def test_store_rejects_a_pickle(tmp_path):
    store = LocalCheckpointStore(tmp_path)
    (tmp_path / "checkpoint-000000000001.ckpt").write_bytes(pickle.dumps({"format": 99}))
    with pytest.raises(CheckpointError, match="checkpoint-000000000001.ckpt: not a sabot state "
                                              "record.*pickle"):
        store.load_latest()
    store.close()


def test_checkpoint_needs_a_linear_plan_and_no_order_by(kafka_broker, tmp_path):
    with pytest.raises(ValueError, match="order_by"):
        Stream.from_kafka(kafka_broker.bootstrap, "x", "g", order_by="timestamp",
                          checkpoint_dir=tmp_path)
    a = Stream.from_kafka(kafka_broker.bootstrap, "x", "g", checkpoint_dir=tmp_path)
    b = Stream.from_table(ticker_table("kraken", 10))
    with pytest.raises(ValueError, match="linear plan"):
        list(a.union(b))
    with pytest.raises(ValueError, match="linear plan"):
        list(Stream.zip(a, b))


# -- kill -9 ten times -----------------------------------------------------------------------
def _read_line(proc: subprocess.Popen, buf: bytearray, timeout_s: float) -> bytes:
    """The next stdout line of ``proc`` (b'' at exit), waiting at most ``timeout_s``."""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout_s
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("pipeline printed nothing in time")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                return b""
            buf.extend(chunk)
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line


def read_all(bootstrap: str, topic: str, timeout_s: float = 30) -> list:
    """Every message of ``topic`` (read until 1 s of silence after the end)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    parts = assign_all(c, topic)
    at_end, out = set(), []
    deadline = time.monotonic() + timeout_s
    try:
        while len(at_end) < len(parts) and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if m.error() is None:
                    out.append(orjson.loads(m.value()))
                    at_end.discard(m.partition())
                elif m.error().code() == -191:  # _PARTITION_EOF
                    at_end.add(m.partition())
    finally:
        c.close()
    assert len(at_end) == len(parts), f"{topic} not read to its end in {timeout_s}s"
    return out


def pandas_reference(table: pa.Table) -> pd.DataFrame:
    """midprice, EWMA (alpha 0.1, adjust=False) and TA-Lib RSI(14) per symbol, written plainly."""
    import talib

    df = table.select(["symbol", "sequence", "bid", "ask"]).to_pandas()
    df["midprice"] = (df["bid"] + df["ask"]) / 2
    df["ewma"] = df.groupby("symbol")["midprice"].transform(
        lambda s: s.ewm(alpha=0.1, adjust=False).mean())
    df["rsi"] = df.groupby("symbol")["midprice"].transform(
        lambda s: pd.Series(talib.RSI(s.to_numpy(), timeperiod=14), index=s.index))
    return df[OUTPUT_COLUMNS]


def run_and_kill(args, log, log_path: Path, lines: int) -> float:
    """Start the pipeline ``args``, read ``lines`` lines of its output, then kill -9 it; return
    the seconds from its start to its first line."""
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log)
    buf = bytearray()
    first = 0.0
    try:
        for i in range(lines):
            line = _read_line(proc, buf, 60)
            if i == 0:
                first = time.monotonic() - started
            assert line, ("the pipeline finished before it was killed; the test proves "
                          "nothing: " + log_path.read_text()[-2000:])
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return first


def test_kill9_ten_times_output_equals_uninterrupted_run(kafka_broker, unique_topic, tmp_path):
    n = 5000
    table = ticker_table("coinbase", n, seed=11)
    in_topic, out_topic, group = unique_topic("in"), unique_topic("out"), unique_topic("g")
    kafka_broker.create_topic(in_topic, partitions=3)
    kafka_broker.create_topic(out_topic, partitions=3)
    produce(kafka_broker.bootstrap, in_topic, table)
    ckpt = tmp_path / "ckpt"
    args = [sys.executable, str(PIPELINE), kafka_broker.bootstrap, in_topic, group, out_topic,
            str(ckpt), "0.05"]
    rng = np.random.default_rng(8)
    log = open(tmp_path / "pipeline.log", "wb")
    kills, recovery = 0, []  # recovery: process start to its first batch out (not asserted)
    for _ in range(10):
        recovery.append(run_and_kill(args, log, tmp_path / "pipeline.log",
                                     int(rng.integers(2, 8))))
        kills += 1
    final = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=log, timeout=120)
    log.close()
    logtext = (tmp_path / "pipeline.log").read_text()
    assert final.returncode == 0, logtext[-3000:]
    assert kills == 10
    assert logtext.count("restored checkpoint") >= 9, "restarts did not restore checkpoints"

    rows = read_all(kafka_broker.bootstrap, out_topic)
    got = pd.DataFrame(rows)[OUTPUT_COLUMNS]
    # duplicates (records re-processed after a kill) must carry identical values
    dup_groups = got.groupby(["symbol", "sequence"]).nunique(dropna=False)
    assert (dup_groups.max(axis=None) <= 1), "a re-processed record got different values"
    dedup = got.drop_duplicates(["symbol", "sequence"]).sort_values("sequence")
    dedup = dedup.reset_index(drop=True)
    duplicates = len(got) - len(dedup)
    assert len(dedup) == n, f"lost {n - len(dedup)} records"
    assert duplicates < n, "restarts re-read from the beginning instead of the checkpoint"

    uninterrupted = Stream.from_table(table, batch_size=97).map(features).collect().to_pandas()
    uninterrupted = uninterrupted.sort_values("sequence").reset_index(drop=True)
    pd.testing.assert_frame_equal(dedup, uninterrupted, check_exact=True, check_dtype=False)
    ref = pandas_reference(table).sort_values("sequence").reset_index(drop=True)
    pd.testing.assert_frame_equal(dedup, ref, rtol=1e-9, atol=1e-9, check_dtype=False)
    print(f"\nkill9: {kills} kills, {len(got)} output rows, {duplicates} duplicates, 0 lost; "
          f"restart to first batch: median {np.median(recovery):.2f} s, max {max(recovery):.2f} s")


class Crash(Exception):
    pass


def test_window_state_survives_a_crash_between_checkpoints(kafka_broker, unique_topic, tmp_path):
    """Tumbling bars (open windows live in operator state) over a run that dies mid-stream and
    a run restored from its checkpoint: per (symbol, window) the bars agree with pandas and a
    bar emitted by both runs is identical."""
    n = 4000
    table = ticker_table("kraken", n, seed=12, step_ns=1_000_000)
    topic, group = unique_topic(), unique_topic("g")
    kafka_broker.create_topic(topic, partitions=1)  # one partition: rows arrive in time order
    produce(kafka_broker.bootstrap, topic, table)
    from sabot.kafka import fast_consumer_config

    def stream():
        return (Stream.from_kafka(kafka_broker.bootstrap, topic, group, batch_size=130,
                                  from_beginning=True, stop_at_end=True,
                                  checkpoint_dir=tmp_path / "ck", checkpoint_interval_s=0,
                                  **fast_consumer_config())
                .tumbling("100ms", by="symbol", price_column="bid", volume_column=None))

    bars = []
    first = stream()
    with pytest.raises(Crash):
        for i, batch in enumerate(first):
            bars.append(batch.to_pandas())
            if i == 12:
                raise Crash  # dies holding open windows; the last checkpoint is behind us
    emitted_first = sum(len(b) for b in bars)
    second = stream()
    bars.extend(b.to_pandas() for b in second)
    assert second.last_checkpointer.restored_from is not None
    got = pd.concat(bars, ignore_index=True)
    key = ["symbol", "window_start"]
    assert (got.groupby(key).nunique(dropna=False).max(axis=None)) <= 1
    got = got.drop_duplicates(key).sort_values(key).reset_index(drop=True)
    df = table.to_pandas()
    ref = (df.groupby(["symbol", pd.Grouper(key="timestamp", freq="100ms")]).bid
           .agg(["first", "max", "min", "last", "size"]).reset_index())
    assert 0 < emitted_first < len(ref)
    assert len(got) == len(ref)
    np.testing.assert_array_equal(got["count"], ref["size"])
    np.testing.assert_array_equal(got[["open", "high", "low", "close"]].to_numpy(),
                                  ref[["first", "max", "min", "last"]].to_numpy())


def test_stop_writes_a_final_checkpoint_and_the_next_run_continues(kafka_broker, unique_topic,
                                                                   tmp_path):
    """A live pipeline stopped with Stream.stop() checkpoints everything it consumed; a later
    run over newly produced records continues the EWMA/RSI per symbol (pandas/TA-Lib over all)."""
    import threading

    from sabot.kafka import fast_consumer_config

    table = ticker_table("binance", 3000, seed=21)
    head, tail = table.slice(0, 2000), table.slice(2000)
    topic, group = unique_topic(), unique_topic("g")
    kafka_broker.create_topic(topic, partitions=3)
    produce(kafka_broker.bootstrap, topic, head)

    def stream(**kw):
        return (Stream.from_kafka(kafka_broker.bootstrap, topic, group, batch_size=100,
                                  from_beginning=True, checkpoint_dir=tmp_path / "ck",
                                  checkpoint_interval_s=3600, **fast_consumer_config(), **kw)
                .map(features))

    live, out = stream(), []
    worker = threading.Thread(target=lambda: out.extend(b.to_pandas() for b in live), daemon=True)
    worker.start()
    deadline = time.monotonic() + 60
    while sum(len(b) for b in out) < len(head) and time.monotonic() < deadline:
        time.sleep(0.02)
    live.stop()
    worker.join(30)
    assert not worker.is_alive() and sum(len(b) for b in out) == len(head)
    latest = LocalCheckpointStore(tmp_path / "ck").load_latest()
    assert sum(latest["offsets"][topic].values()) == len(head)  # the 1-hour interval never fired

    produce(kafka_broker.bootstrap, topic, tail)
    out.extend(b.to_pandas() for b in stream(stop_at_end=True))
    got = pd.concat(out, ignore_index=True).sort_values("sequence").reset_index(drop=True)
    assert len(got) == len(table) and got["sequence"].is_unique
    ref = pandas_reference(table).sort_values("sequence").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, ref, rtol=1e-9, atol=1e-9, check_dtype=False)
