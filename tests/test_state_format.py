"""State is data, never code: the checkpoint/changelog state format, its refusals, its HMAC,
the checkpoint directory's permissions and lock, and ``reset_state``.

Crafted pickles (whose ``__reduce__`` would create a marker file) are put where a restore reads
them — a checkpoint directory, a changelog topic under a task's key — and the restore must
refuse them by name without ever creating the marker."""
from __future__ import annotations

import logging
import math
import os
import pickle
import re
import stat
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from confluent_kafka import KafkaException, Producer
from hypothesis import given, settings
from hypothesis import strategies as st

from sabot.api import Stream
from sabot.fintech import ewma, midprice, rsi
from sabot.kafka import fast_consumer_config
from sabot.state import CheckpointError, KafkaChangelogStore, LocalCheckpointStore
from sabot.state import codec
from sabot.state.codec import (MAGIC, MAX_DEPTH, PREFIX_SIZE, decode_record, decode_state,
                               encode_record, encode_state)

from faults_pipeline import features
from stream_data import produce, ticker_table

ROOT = Path(__file__).resolve().parents[1]


class _Evil:
    """Unpickling this calls ``open(marker, "w")``: code run by ``pickle.load``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"format": 1, "seq": 1, "created": time.time(), "offsets": {},
                         "topic": "x", "partition": 0, "offset": 0,
                         "state": _Evil(marker)})


def same(a, b) -> bool:
    """Structural equality that also requires equal types and equal float bits (NaN too)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return (list(a) == list(b) and all(same(x, y) for x, y in zip(a, b))
                and all(same(a[k], b[k]) for k in a))
    return a == b


# -- the format ------------------------------------------------------------------------------
_floats = st.builds(lambda bits: struct.unpack("<d", struct.pack("<Q", bits))[0],
                    st.integers(0, 2**64 - 1))  # every bit pattern: NaN payloads, -0.0, inf
_scalars = (st.none() | st.booleans() | st.integers() | _floats | st.text() | st.binary()
            | st.integers(-2**200, 2**200))
_keys = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text()
                     | st.binary(), lambda k: st.tuples(k, k), max_leaves=4)
_arrays = st.sampled_from(["<f8", "<f4", "<i8", "<i4", "<u8", "<u1", "|b1", "<c16"]).flatmap(
    lambda dt: st.tuples(st.just(dt), st.lists(st.integers(0, 3), max_size=3),
                         st.binary(min_size=64, max_size=64))).map(
    lambda a: np.frombuffer(a[2] * 8, a[0], math.prod(a[1])).reshape(a[1]).copy()
    if a[0] != "|b1" else (np.frombuffer(a[2] * 8, "u1", math.prod(a[1])) & 1)
    .astype(bool).reshape(a[1]))
_values = st.recursive(
    _scalars | _arrays | st.sampled_from([np.float64(-0.0), np.int64(-7), np.uint8(200),
                                          np.bool_(True), np.float32("nan")]),
    lambda v: st.lists(v, max_size=4) | st.tuples(v, v) | st.dictionaries(_keys, v, max_size=4),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_any_nested_state_round_trips_exactly(value):
    assert same(decode_state(encode_state(value)), value)


def test_types_outside_the_whitelist_cannot_be_written():
    with pytest.raises(TypeError, match=r"state\['a'\]\[1\]: values of type .*_Evil"):
        encode_state({"a": [1, _Evil(Path("x"))]})
    with pytest.raises(TypeError, match=r"datetime64"):
        encode_state(np.array(["2024-01-01"], dtype="datetime64[ns]"))
    with pytest.raises(TypeError, match=r"object"):
        encode_state(np.array([1, "a"], dtype=object))
    deep = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(TypeError, match="nested deeper"):
        encode_state(deep)


@pytest.mark.parametrize("body, why", [
    (b"\x91" * 100_000 + b"\xc0", "nested deeper|Recursion"),        # 100k nested arrays
    (b"\x91" * (MAX_DEPTH + 2) + b"\xc0", "nested deeper"),          # just over the limit
    (b"\xdd\xff\xff\xff\xff", "truncated"),                          # array of 4G elements
    (b"\xc6\xff\xff\xff\xf0abc", "truncated"),                       # 4 GB bytes, 3 present
    (b"\xc7\x03\x63abc", "unknown extension type 99"),
    (b"\xc7\x0a\x03\x0c\x01" + struct.pack("<Q", 1000) , "numpy array of shape"),
    (b"\xc7\x02\x03\x63\x00", "unknown dtype"),
    (b"\xc7\x02\x05\x91\x01", "key, value pairs"),
    (b"\x81\xc7\x0a\x03\x0c\x00" + struct.pack("<d", 1.0) + b"\x01", "unhashable"),
    (b"\x92\x01", "truncated"),
    (b"\x01\x02", "trailing"),
])
def test_hostile_bodies_fail_cleanly(body, why):
    with pytest.raises(codec.StateFormatError, match=why):
        decode_state(body)


def _record(**over) -> bytes:
    return encode_record("checkpoint", {"seq": 1, "created": 1.0, "offsets": {}, **over},
                         {"version": 1, "operators": {}})


@pytest.mark.parametrize("mangle, why", [
    (lambda r: b"", "not a sabot state record"),
    (lambda r: b"garbage" * 10, "not a sabot state record"),
    (lambda r: b"SABOTST9" + r[8:], "not a sabot state record"),            # wrong magic
    (lambda r: r[:8] + struct.pack("<H", 2) + r[10:], "format version 2"),  # wrong version
    (lambda r: r[:10] + struct.pack("<H", 0x10) + r[12:], "unknown state flags"),
    (lambda r: r[:-1], r"truncated"),
    (lambda r: r[:PREFIX_SIZE + 5], r"truncated"),
    (lambda r: r + b"\x00", "trailing data"),
    (lambda r: pickle.dumps({"format": 1}), "found a Python pickle"),
    (lambda r: encode_record("changelog", {"created": 1.0}, {}), "'changelog' record where"),
    (lambda r: r[:PREFIX_SIZE] + b"[" + r[PREFIX_SIZE + 1:], "unreadable header"),
])
def test_records_that_are_not_this_format_are_refused_by_name(mangle, why):
    with pytest.raises(CheckpointError, match=rf"^/some/where\.ckpt: .*{why}"):
        decode_record(mangle(_record()), kind="checkpoint", where="/some/where.ckpt")


def test_checkpoint_files_with_a_bad_header_or_another_seq_are_refused(tmp_path):
    store = LocalCheckpointStore(tmp_path / "ck")
    store.save({"t": {0: 5}}, {"version": 1, "operators": {}})
    one = tmp_path / "ck" / "checkpoint-000000000001.ckpt"
    two = one.with_name("checkpoint-000000000002.ckpt")
    two.write_bytes(one.read_bytes())  # an old checkpoint replayed under a newer name
    with pytest.raises(CheckpointError, match=rf"^{two}: holds checkpoint seq 1, not 2"):
        store.load_latest()
    for header, why in [({"created": 1.0, "offsets": {}}, "'seq' is None"),
                        ({"seq": 2, "created": "x", "offsets": {}}, "'created' is 'x'"),
                        ({"seq": 2, "created": 1.0, "offsets": {"t": {"0": -1}}},
                         r"invalid offset 't'\['0'\] = -1"),
                        ({"seq": 2, "created": 1.0, "offsets": []}, "'offsets' is not")]:
        two.write_bytes(encode_record("checkpoint", header, {}))
        with pytest.raises(CheckpointError, match=rf"^{two}: .*{why}"):
            store.load_latest()
    store.close()


def test_hmac_right_key_round_trips_and_anything_else_is_refused_before_decoding():
    state = {"k": (1, 2.5, b"blob")}
    rec = encode_record("checkpoint", {"created": 1.0}, state, key=b"s3cret")
    assert rec.startswith(MAGIC) and len(rec) == len(encode_record("checkpoint", {"created": 1.0},
                                                                   state)) + 32
    _, got = decode_record(rec, kind="checkpoint", where="f", key=b"s3cret")
    assert same(got, state)
    with pytest.raises(CheckpointError, match="^f: HMAC tag does not match"):
        decode_record(rec, kind="checkpoint", where="f", key=b"other")
    unsigned = encode_record("checkpoint", {"created": 1.0}, state)
    with pytest.raises(CheckpointError, match="^f: record has no HMAC tag"):
        decode_record(unsigned, kind="checkpoint", where="f", key=b"s3cret")
    with pytest.raises(CheckpointError, match="^f: record is authenticated .* no state key"):
        decode_record(rec, kind="checkpoint", where="f")
    # a flipped byte anywhere: the body byte flipped here would also break the body (an
    # invalid MessagePack type byte), so the HMAC message proves the tag is checked first
    body_at = len(rec) - 32 - len(encode_state(state))
    for i in (3, 9, PREFIX_SIZE + 2, body_at, len(rec) - 1):
        bad = bytearray(rec)
        bad[i] = 0xc1 if i == body_at else bad[i] ^ 0x01
        with pytest.raises(CheckpointError, match="^f: (HMAC tag does not match|not a sabot|"
                                                  "state format version|record is \\d+ bytes)"):
            decode_record(bytes(bad), kind="checkpoint", where="f", key=b"s3cret")
    bad = bytearray(rec)
    bad[body_at] = 0xc1
    with pytest.raises(CheckpointError, match="HMAC tag does not match"):
        decode_record(bytes(bad), kind="checkpoint", where="f", key=b"s3cret")
    with pytest.raises(CheckpointError, match="unreadable state body"):  # same flip, no key
        decode_record(bytes(bad)[:-32][:10] + struct.pack("<H", 0) + bytes(bad)[12:-32],
                      kind="checkpoint", where="f")


def test_restore_paths_hold_no_pickle_marshal_or_eval():
    for path in sorted((ROOT / "sabot" / "state").glob("*.py")) + [
            ROOT / "sabot" / "api" / "_checkpoint.py", ROOT / "sabot" / "api" / "_tasks.py"]:
        code = path.read_text()
        for pattern in (r"import\s+(pickle|marshal|importlib|shelve|dill)",
                        r"from\s+(pickle|marshal|importlib|shelve|dill)\b",
                        r"\b(pickle|marshal)\.", r"\beval\(", r"\bexec\(", r"__import__",
                        r"(?<![.\w])compile\("):
            assert not re.search(pattern, code), f"{path.name} matches {pattern}"


# -- checkpoint directory --------------------------------------------------------------------
def _stream(boot: str, topic: str, group: str, ckdir, **kw) -> Stream:
    return (Stream.from_kafka(boot, topic, group, batch_size=100, from_beginning=True,
                              stop_at_end=True, checkpoint_dir=ckdir, checkpoint_interval_s=0,
                              **kw, **fast_consumer_config())
            .map(features))


@pytest.fixture
def ticks_topic(kafka_broker, unique_topic):
    table = ticker_table("coinbase", 600, seed=5)
    topic = unique_topic("in")
    kafka_broker.create_topic(topic, partitions=2)
    produce(kafka_broker.bootstrap, topic, table)
    return topic, table


def test_a_crafted_pickle_in_the_checkpoint_dir_is_refused_and_never_run(kafka_broker, unique_topic,
                                                                         tmp_path):
    marker = tmp_path / "pwned"
    ck = tmp_path / "ck"
    ck.mkdir(mode=0o700)
    evil = ck / "checkpoint-000000000001.ckpt"
    evil.write_bytes(evil_pickle(marker))
    topic = unique_topic()
    kafka_broker.create_topic(topic, partitions=1)
    produce(kafka_broker.bootstrap, topic, ticker_table("coinbase", 50, seed=2))
    stream = _stream(kafka_broker.bootstrap, topic, unique_topic("g"), ck)
    with pytest.raises(CheckpointError, match=rf"^{evil}: not a sabot state record .*pickle"):
        stream.collect()
    assert not marker.exists(), "restoring ran code from the checkpoint file"
    # reset_state does not run it either: it moves it aside, loudly
    stream = _stream(kafka_broker.bootstrap, topic, unique_topic("g"), ck, reset_state=True)
    assert stream.collect().num_rows == 50
    assert not marker.exists()
    assert [p.name for p in ck.glob("checkpoint-000000000001.ckpt.discarded-*")]
    assert evil.read_bytes().startswith(MAGIC)  # the fresh run's own first checkpoint


def test_unreadable_checkpoint_is_an_error_unless_reset_state(kafka_broker, ticks_topic,
                                                              unique_topic, tmp_path, caplog):
    topic, table = ticks_topic
    ck = tmp_path / "ck"
    first = _stream(kafka_broker.bootstrap, topic, unique_topic("g"), ck)
    assert first.collect().num_rows == table.num_rows
    newest = sorted(ck.glob("checkpoint-*.ckpt"))[-1]
    older = sorted(ck.glob("checkpoint-*.ckpt"))[0]
    assert newest != older
    newest.write_bytes(newest.read_bytes()[:-10])  # torn by something other than the store
    group = unique_topic("g")
    with pytest.raises(CheckpointError, match=rf"^{newest}: .*truncated.*reset_state=True"):
        _stream(kafka_broker.bootstrap, topic, group, ck).collect()
    # the older, readable checkpoint was not used silently either
    assert sorted(ck.glob("checkpoint-*.ckpt"))[0] == older
    caplog.set_level(logging.WARNING, logger="sabot.state.checkpoint")
    fresh = _stream(kafka_broker.bootstrap, topic, group, ck, reset_state=True)
    got = fresh.collect().to_pandas().sort_values("sequence").reset_index(drop=True)
    assert fresh.last_checkpointer.restored_from is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("DISCARDING STATE" in w and str(newest) in w and older.name in w
               for w in warnings), warnings
    # fresh state from the (new) group's start: exactly the uninterrupted result
    ref = Stream.from_table(table).map(features).collect().to_pandas()
    ref = ref.sort_values("sequence").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, ref, check_exact=True, check_dtype=False)


@pytest.mark.parametrize("bad", ["other plan", "wrong shape"])
def test_state_the_operators_refuse_is_an_error_unless_reset_state(kafka_broker, ticks_topic,
                                                                   unique_topic, tmp_path,
                                                                   caplog, bad):
    """A readable checkpoint whose state this pipeline's operators do not take (another plan,
    or well-formed data of the wrong shape) is refused by name; reset_state discards it."""
    topic, table = ticks_topic
    ck = tmp_path / "ck"
    probe = _stream(kafka_broker.bootstrap, topic, unique_topic("g"), ck)
    (name,) = probe.state_dict()["operators"]
    with LocalCheckpointStore(ck) as store:
        if bad == "other plan":
            store.save({topic: {0: 5}}, {"version": 1, "operators": {"0:tumbling #1": {}}})
        else:
            store.save({topic: {0: 5}}, {"version": 1, "operators": {name: [1, (2,)]}})
    path = sorted(ck.glob("checkpoint-*.ckpt"))[-1]
    with pytest.raises(CheckpointError, match=rf"^{path} does not match this pipeline: .*"
                                              "reset_state=True"):
        _stream(kafka_broker.bootstrap, topic, unique_topic("g"), ck).collect()
    caplog.set_level(logging.WARNING, logger="sabot.state.checkpoint")
    fresh = _stream(kafka_broker.bootstrap, topic, unique_topic("g"), ck, reset_state=True)
    got = fresh.collect().to_pandas().sort_values("sequence").reset_index(drop=True)
    assert any("DISCARDING STATE" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records)
    ref = Stream.from_table(table).map(features).collect().to_pandas()
    pd.testing.assert_frame_equal(got, ref.sort_values("sequence").reset_index(drop=True),
                                  check_exact=True, check_dtype=False)


def test_checkpoint_dir_is_private_and_refused_when_shared(tmp_path):
    old = os.umask(0)
    try:
        store = LocalCheckpointStore(tmp_path / "a" / "new")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "new").st_mode) == 0o700
    store.save({"t": {0: 1}}, {"x": 1})
    assert stat.S_IMODE(os.stat(next((tmp_path / "a" / "new").glob("*.ckpt"))).st_mode) == 0o600
    store.close()
    shared = tmp_path / "shared"
    shared.mkdir()
    for mode in (0o770, 0o707, 0o777):
        os.chmod(shared, mode)
        with pytest.raises(CheckpointError, match=rf"^checkpoint directory {shared} is writable "
                                                  "by group or others"):
            LocalCheckpointStore(shared)
    os.chmod(shared, 0o755)  # readable by others is the user's business
    LocalCheckpointStore(shared).close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory another owner")
def test_checkpoint_dir_owned_by_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(CheckpointError, match=rf"^checkpoint directory {theirs} is owned by "
                                              "uid 65534"):
        LocalCheckpointStore(theirs)


def test_second_pipeline_on_the_same_dir_is_refused_until_the_first_ends(kafka_broker,
                                                                         ticks_topic,
                                                                         unique_topic, tmp_path):
    topic, table = ticks_topic
    ck = tmp_path / "ck"
    live = (Stream.from_kafka(kafka_broker.bootstrap, topic, unique_topic("g"), batch_size=50,
                              from_beginning=True, checkpoint_dir=ck, checkpoint_interval_s=0,
                              **fast_consumer_config()).map(features))
    rows = []
    started = threading.Event()

    def run() -> None:
        for batch in live:
            rows.append(batch.num_rows)
            started.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(60), "the first pipeline produced nothing"
    assert live.last_checkpointer.store.locked
    second = _stream(kafka_broker.bootstrap, topic, unique_topic("g"), ck)
    with pytest.raises(CheckpointError, match=rf"^checkpoint directory {ck} is in use by another "
                                              rf"pipeline \(pid {os.getpid()}\)"):
        second.collect()
    live.stop()
    t.join(60)
    assert not t.is_alive()
    assert not live.last_checkpointer.store.locked  # released at the end of the run
    again = _stream(kafka_broker.bootstrap, topic, unique_topic("g"), ck)
    again.collect()
    assert again.last_checkpointer.restored_from is not None


def test_a_crashed_holder_releases_the_directory(tmp_path):
    """The lock is the kernel's: another process holding it is refused by pid, and a holder
    killed with SIGKILL leaves no stale lock behind (a restart is never blocked)."""
    import signal
    import subprocess
    import sys

    ck = tmp_path / "ck"
    code = ("import sys; from sabot.state import LocalCheckpointStore; "
            f"s = LocalCheckpointStore({str(ck)!r}); print('locked', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline() == b"locked\n"
        with pytest.raises(CheckpointError, match=rf"^checkpoint directory {ck} is in use by "
                                                  rf"another pipeline \(pid {proc.pid}\)"):
            LocalCheckpointStore(ck)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with LocalCheckpointStore(ck) as store:
        assert store.locked


def test_state_key_of_a_pipeline(kafka_broker, ticks_topic, unique_topic, tmp_path,
                                 monkeypatch):
    """``state_key`` signs every checkpoint; another key, or none, is refused by file name; the
    right key (given, or from SABOT_STATE_KEY) restores."""
    topic, table = ticks_topic
    ck = tmp_path / "ck"
    first = _stream(kafka_broker.bootstrap, topic, unique_topic("g"), ck, state_key=b"k1")
    assert first.collect().num_rows == table.num_rows
    newest = sorted(ck.glob("checkpoint-*.ckpt"))[-1]
    for kw, why in [({"state_key": b"k2"}, "HMAC tag does not match"),
                    ({}, "record is authenticated .* no state key is set")]:
        with pytest.raises(CheckpointError, match=rf"^{newest}: {why}"):
            _stream(kafka_broker.bootstrap, topic, unique_topic("g"), ck, **kw).collect()
    again = _stream(kafka_broker.bootstrap, topic, unique_topic("g"), ck, state_key=b"k1")
    again.collect()
    assert again.last_checkpointer.restored_from == str(newest)
    monkeypatch.setenv("SABOT_STATE_KEY", "k1")
    env = _stream(kafka_broker.bootstrap, topic, unique_topic("g"), ck)
    env.collect()
    assert env.last_checkpointer.restored_from is not None


# -- exactness of real pipeline state ---------------------------------------------------------
@pytest.mark.parametrize("bars", [False, True], ids=["ewma-rsi", "ewma-rsi-tumbling"])
def test_restored_pipeline_state_continues_bit_for_bit(tmp_path, bars):
    """EWMA/RSI by symbol and tumbling bars (open windows, tuple keys): the operators' state
    taken between two batches (as a checkpoint is), written with a state key, read back into
    fresh operators which continue over the remaining batches — equal, bit for bit, to one
    uninterrupted run."""
    table = ticker_table("kraken", 3000, seed=9)
    batches = table.combine_chunks().to_batches(max_chunksize=113)

    def feats(batch: pa.RecordBatch) -> pa.Table:
        t = ewma(midprice(pa.Table.from_batches([batch])), "midprice", alpha=0.1, by="symbol")
        return rsi(t, "midprice", period=14, by="symbol").select(
            ["timestamp", "symbol", "sequence", "midprice", "ewma", "rsi"])

    def plan() -> list:
        s = Stream.from_table(table).map(feats)
        if bars:
            s = s.tumbling("50ms", by="symbol", price_column="midprice", volume_column=None)
        ops = s.operators()
        for i, op in enumerate(ops, start=1):
            op.set_position(i)
            op.begin_run()
        return ops

    def run(ops: list, batches: list) -> list:
        out = []
        for b in batches:
            parts = [b]
            for op in ops:
                parts = [o for p in parts for o in op.process(p)]
            out.extend(p.to_pandas() for p in parts)
        return out

    whole = pd.concat(run(plan(), batches), ignore_index=True)
    for cut in (1, 7, 16, len(batches) - 1):
        ops = plan()
        out = run(ops, batches[:cut])
        state = {i: op.state_dict() for i, op in enumerate(ops)}
        with LocalCheckpointStore(tmp_path / f"ck{cut}", state_key=b"k") as store:
            store.save({"t": {0: cut}}, state)
            payload = store.load_latest()
        assert same(payload["state"], state)
        fresh = plan()
        for i, op in enumerate(fresh):
            op.load_state_dict(payload["state"][i])
        out += run(fresh, batches[cut:])
        got = pd.concat(out, ignore_index=True)
        assert len(got) > 0
        pd.testing.assert_frame_equal(got, whole, check_exact=True)


def test_state_of_ten_kernels_and_a_streaming_asof_join_round_trips_exactly(tmp_path):
    """The state the library produces — a scope of ten kernels by symbol (bench_checkpoint's
    plan) and a streaming ASOF join mid-stream (Arrow IPC bytes, lists, nested dicts) — comes
    back identical in types and bits, and the join restored from it finishes exactly."""
    import sys

    sys.path.insert(0, str(ROOT))
    from benchmarks.suites.bench_checkpoint import build_stream, ticks
    from sabot.fintech import StreamingAsofJoinKernel

    table = ticks(200, 5)
    stream = build_stream(table)
    for _ in stream:
        pass
    state = stream.state_dict()
    assert len(next(iter(state["operators"].values()))["scope"]["kernels"]) == 10
    assert same(decode_state(encode_state(state)), state)

    rng = np.random.default_rng(3)
    left = pa.table({"t": pa.array(np.sort(rng.integers(0, 1000, 300))),
                     "k": rng.choice(["a", "b", "c"], 300), "x": np.arange(300.0)})
    right = pa.table({"t": pa.array(np.sort(rng.integers(0, 1000, 200))),
                      "k": rng.choice(["a", "b"], 200), "v": rng.standard_normal(200)})
    lbs, rbs = left.to_batches(max_chunksize=37), right.to_batches(max_chunksize=23)

    def fresh():
        return StreamingAsofJoinKernel(on="t", by="k", tolerance_ms=30, direction="nearest")

    def run(k, ls, rs):
        out = []
        for lb, rb in zip(ls, rs):
            out += [k.process_left(lb), k.process_right(rb)]
        return [pa.Table.from_batches([t]) if isinstance(t, pa.RecordBatch) else t
                for t in out if t is not None and t.num_rows]

    full = pa.concat_tables(run(fresh(), lbs, rbs))
    assert full.num_rows > 0
    a = fresh()
    outs = run(a, lbs[:4], rbs[:4])
    js = a.state_dict()
    with LocalCheckpointStore(tmp_path / "ck") as store:
        store.save({}, js)
        back = store.load_latest()["state"]
    assert same(back, js) and any(type(v) is bytes for v in js.values())
    b = fresh()
    b.load_state_dict(back)
    outs += run(b, lbs[4:], rbs[4:])
    assert pa.concat_tables(outs).equals(full)


# -- changelog records ------------------------------------------------------------------------
def _produce_raw(boot: str, topic: str, key: bytes, value: bytes, partition: int) -> None:
    p = Producer({"bootstrap.servers": boot})
    p.produce(topic, key=key, value=value, partition=partition)
    assert p.flush(10) == 0


def test_a_crafted_pickle_in_the_changelog_is_refused_and_never_run(kafka_broker, unique_topic,
                                                                    tmp_path):
    boot = kafka_broker.bootstrap
    marker = tmp_path / "pwned"
    src, changelog = unique_topic("in"), unique_topic("cl")
    kafka_broker.create_topic(src, partitions=1)
    produce(boot, src, ticker_table("coinbase", 50, seed=3))
    store = KafkaChangelogStore(boot, changelog)
    store.ensure_topic(1)
    store.close()
    _produce_raw(boot, changelog, f"{src}/0".encode(), evil_pickle(marker), 0)
    stream = (Stream.from_kafka(boot, src, unique_topic("g"), from_beginning=True,
                                stop_at_end=True, changelog_topic=changelog,
                                **fast_consumer_config()).map(features))
    with pytest.raises(CheckpointError, match=rf"changelog {changelog}/0/0 \(task {src}/0\): "
                                              "not a sabot state record .*pickle"):
        stream.collect()
    assert not marker.exists(), "restoring ran code from the changelog record"
    direct = KafkaChangelogStore(boot, changelog)
    with pytest.raises(CheckpointError, match=rf"{changelog}/0/0 .*pickle"):
        direct.read([(src, 0)])
    direct.close()
    assert not marker.exists()


def test_changelog_records_refused_by_topic_partition_offset(kafka_broker, unique_topic):
    boot, topic = kafka_broker.bootstrap, unique_topic("cl")
    store = KafkaChangelogStore(boot, topic)
    store.ensure_topic(2)
    store.write(("src", 1), 3, {0: {"x": (1, 2)}})
    store.flush()
    good = store.read([("src", 1)])[("src", 1)]
    assert good["offset"] == 3 and same(good["state"], {0: {"x": (1, 2)}})
    valid = encode_record("changelog", {"topic": "src", "partition": 1, "offset": 3,
                                        "created": 1.0}, {0: {}})
    cases = [
        (b"garbage", "not a sabot state record"),
        (valid[:-2], "truncated"),
        (valid[:8] + struct.pack("<H", 7) + valid[10:], "format version 7"),
        (encode_record("changelog", {"topic": "src", "partition": 0, "offset": 3,
                                     "created": 1.0}, {0: {}}), "record for task src/0 under key"),
        (encode_record("checkpoint", {"created": 1.0}, {}), "'checkpoint' record where"),
        (encode_record("changelog", {"topic": "src", "partition": 1, "offset": -1,
                                     "created": 1.0}, {0: {}}), "'offset' is -1"),
    ]
    for i, (value, why) in enumerate(cases, start=1):
        _produce_raw(boot, topic, b"src/1", value, 1)
        where = rf"^changelog {topic}/1/{i} \(task src/1\): "
        with pytest.raises(CheckpointError, match=where + f".*{why}"):
            store.read([("src", 1)])
    store.close()
    lenient = KafkaChangelogStore(boot, topic, reset_state=True)
    assert lenient.read([("src", 1)]) == {("src", 1): None}
    assert lenient.records_discarded == 1
    lenient.close()


def test_changelog_hmac(kafka_broker, unique_topic):
    boot, topic = kafka_broker.bootstrap, unique_topic("cl")
    signed = KafkaChangelogStore(boot, topic, state_key=b"k1")
    signed.ensure_topic(1)
    signed.write(("src", 0), 9, {0: {"a": np.float64("nan")}})
    signed.flush()
    got = signed.read([("src", 0)])[("src", 0)]
    assert got["offset"] == 9 and math.isnan(got["state"][0]["a"])
    for store, why in [(KafkaChangelogStore(boot, topic, state_key=b"k2"), "HMAC tag does not"),
                       (KafkaChangelogStore(boot, topic), "no state key is set")]:
        with pytest.raises(CheckpointError, match=rf"^changelog {topic}/0/0 .*{why}"):
            store.read([("src", 0)])
        store.close()
    unsigned = KafkaChangelogStore(boot, topic)
    unsigned.write(("src", 0), 10, {0: {}})
    unsigned.flush()
    unsigned.close()
    with pytest.raises(CheckpointError, match=rf"^changelog {topic}/0/1 .*no HMAC tag"):
        signed.read([("src", 0)])
    signed.close()


def test_changelog_pipeline_reset_state(kafka_broker, unique_topic, caplog):
    boot = kafka_broker.bootstrap
    src, changelog = unique_topic("in"), unique_topic("cl")
    table = ticker_table("coinbase", 300, seed=4)
    kafka_broker.create_topic(src, partitions=1)
    produce(boot, src, table)
    store = KafkaChangelogStore(boot, changelog)
    store.ensure_topic(1)
    store.close()
    _produce_raw(boot, changelog, f"{src}/0".encode(), b"\x00not state", 0)

    def stream(**kw):
        return (Stream.from_kafka(boot, src, unique_topic("g"), from_beginning=True,
                                  stop_at_end=True, changelog_topic=changelog,
                                  **kw, **fast_consumer_config()).map(features))

    with pytest.raises(CheckpointError, match=rf"{changelog}/0/0 .*reset_state=True"):
        stream().collect()
    caplog.set_level(logging.WARNING, logger="sabot.state.changelog")
    lenient = stream(reset_state=True)
    got = lenient.collect()
    assert got.num_rows == table.num_rows
    from sabot.metrics import StreamMetrics

    samples = {fam.name: fam.samples[0].value for fam in StreamMetrics(lenient, "s")()
               if fam.name.startswith("sabot_changelog")}
    assert samples["sabot_changelog_records_discarded"] == 1
    assert any("DISCARDING STATE" in r.getMessage() and f"{changelog}/0/0" in r.getMessage()
               for r in caplog.records)


def test_changelog_record_the_operators_refuse(kafka_broker, unique_topic, caplog):
    boot = kafka_broker.bootstrap
    src, changelog = unique_topic("in"), unique_topic("cl")
    table = ticker_table("coinbase", 200, seed=6)
    kafka_broker.create_topic(src, partitions=1)
    produce(boot, src, table)
    store = KafkaChangelogStore(boot, changelog)
    store.ensure_topic(1)
    store.write((src, 0), 50, {0: [1, 2]})  # the right format, the wrong shape
    store.flush()
    store.close()

    def stream(**kw):
        return (Stream.from_kafka(boot, src, unique_topic("g"), from_beginning=True,
                                  stop_at_end=True, changelog_topic=changelog,
                                  **kw, **fast_consumer_config()).map(features))

    with pytest.raises(CheckpointError, match=rf"changelog {changelog}/0/0 \(task {src}/0\) "
                                              "does not match this pipeline: .*reset_state"):
        stream().collect()
    caplog.set_level(logging.WARNING, logger="sabot.api._tasks")
    lenient = stream(reset_state=True)
    got = lenient.collect().to_pandas().sort_values("sequence").reset_index(drop=True)
    assert any("DISCARDING STATE" in r.getMessage() for r in caplog.records)
    assert lenient.last_checkpointer.store.records_discarded == 1
    assert lenient.last_checkpointer.restored == []
    ref = Stream.from_table(table).map(features).collect().to_pandas()
    pd.testing.assert_frame_equal(got, ref.sort_values("sequence").reset_index(drop=True),
                                  check_exact=True, check_dtype=False)


def test_changelog_clients_take_the_kafka_config(kafka_broker, unique_topic):
    """Each client the store creates gets ``kafka_config``: an invalid property value makes
    librdkafka refuse to build that client, naming it."""
    boot, topic = kafka_broker.bootstrap, unique_topic("cl")
    KafkaChangelogStore(boot, topic).ensure_topic(1)
    bad = {"socket.timeout.ms": "not-a-number"}
    store = KafkaChangelogStore(boot, topic, kafka_config=bad)
    for call in (lambda: store.partitions_of(topic), lambda: store.ensure_topic(1),
                 lambda: store.write(("src", 0), 1, {}), lambda: store.read([("src", 0)])):
        with pytest.raises(KafkaException, match="socket.timeout.ms"):
            call()
    ok = KafkaChangelogStore(boot, topic, kafka_config={"client.id": "sabot-state-test"})
    assert ok.partitions_of(topic) == 1
    ok.write(("src", 0), 1, {})
    ok.flush()
    assert ok.read([("src", 0)])[("src", 0)]["offset"] == 1
    ok.close()
    # forwarded from the source of a changelog pipeline
    src = unique_topic("in")
    kafka_broker.create_topic(src, partitions=1)
    stream = Stream.from_kafka(boot, src, unique_topic("g"), stop_at_end=True,
                               changelog_topic=topic, **fast_consumer_config())
    stream.kafka_sources()[0].kafka_config = bad
    with pytest.raises(KafkaException, match="socket.timeout.ms"):
        stream.collect()
