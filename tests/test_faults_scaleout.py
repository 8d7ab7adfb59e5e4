"""Scale-out with per-partition state in a Kafka changelog topic (``changelog_topic=``).

* the changelog store (latest record per key wins without compaction; unreadable records are
  named by topic/partition/offset), operator clones, plan validation;
* one process killed with SIGKILL and restarted: output equals an uninterrupted run;
* two, then three processes in one group over 6 partitions and 8 symbols, one of them killed
  with SIGKILL mid-run: the survivors restore its partitions' state from the changelog; the
  union of the outputs, de-duplicated by record, equals pandas/TA-Lib per symbol.

Pipelines run as subprocesses (tests/faults_scaleout_pipeline.py) against the real broker."""
from __future__ import annotations

import os
import pickle
import re
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
from confluent_kafka import Consumer, Producer
from hypothesis import given, settings, strategies as st

from sabot.api import Stream
from sabot.api._ops import MapOp, TumblingOHLCV
from sabot.fintech import EWMA, ewma
from sabot.fintech.operators import SymbolKeyedOperator
from sabot.kafka import assign_all
from sabot.state import CheckpointError, KafkaChangelogStore
from sabot.state.codec import decode_state, encode_state

from faults_pipeline import OUTPUT_COLUMNS, features
from stream_data import produce, ticker_table
from test_faults_checkpoint import pandas_reference, read_all, run_and_kill

PIPELINE = Path(__file__).resolve().parent / "faults_scaleout_pipeline.py"
RESTORED = re.compile(r"task (\S+)/(\d+) restored from changelog \S+ at offset (\d+)")
ASSIGNED = re.compile(r"assigned ((?:\S+\[\d+\]@\S+(?:, )?)+)")


# -- the changelog store ---------------------------------------------------------------------
def test_changelog_store_restores_the_latest_record_per_task(kafka_broker, unique_topic):
    store = KafkaChangelogStore(kafka_broker.bootstrap, unique_topic("cl"))
    store.ensure_topic(3)
    store.ensure_topic(3)  # exists: left as it is
    store.write(("src", 2), 10, {0: {"x": 1}})
    store.write(("src", 0), 7, {0: {"x": "zero"}})
    store.write(("src", 2), 25, {0: {"x": 2}})  # same key, later: wins (no compaction yet)
    store.flush()
    got = store.read([("src", 0), ("src", 1), ("src", 2)])
    store.close()
    assert got[("src", 1)] is None
    assert (got[("src", 2)]["offset"], got[("src", 2)]["state"]) == (25, {0: {"x": 2}})
    assert (got[("src", 0)]["offset"], got[("src", 0)]["state"]) == (7, {0: {"x": "zero"}})
    assert store.records_written == 3 and store.records_restored == 2
    with pytest.raises(ValueError, match="has 3 partitions; the source topic has 6"):
        store.ensure_topic(6)


def test_changelog_store_names_an_unreadable_record(kafka_broker, unique_topic):
    topic = unique_topic("cl")
    store = KafkaChangelogStore(kafka_broker.bootstrap, topic)
    store.ensure_topic(2)
    store.write(("src", 1), 3, {})
    store.flush()
    p = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    p.produce(topic, key=b"src/1", value=b"\x80\x05not a pickle", partition=1)
    assert p.flush(10) == 0
    with pytest.raises(CheckpointError, match=rf"{topic}/1/1 \(task src/1\): not a sabot state"):
        store.read([("src", 1)])
    p.produce(topic, key=b"src/1", value=pickle.dumps({"format": 99}), partition=1)
    assert p.flush(10) == 0
    with pytest.raises(CheckpointError, match=rf"{topic}/1/2 .*found a Python pickle"):
        store.read([("src", 1)])
    store.close()


# -- operator clones ---------------------------------------------------------------------------
def _ticks(n: int, seed: int) -> pa.RecordBatch:
    t = ticker_table("kraken", n, seed=seed)
    return t.combine_chunks().to_batches()[0]


def _ewma_reference(batch: pa.RecordBatch, column: str = "bid") -> np.ndarray:
    df = batch.to_pandas()
    return df.groupby("symbol")[column].transform(
        lambda s: s.ewm(alpha=0.2, adjust=False).mean()).to_numpy()


@pytest.mark.parametrize("make", [
    lambda: MapOp(EWMA("bid", alpha=0.2, by="symbol")),
    lambda: MapOp(lambda b: ewma(b, "bid", alpha=0.2, by="symbol")),
    lambda: MapOp(SymbolKeyedOperator(EWMA, column="bid", alpha=0.2)),
], ids=["kernel-instance", "function-form", "symbol-keyed-operator"])
def test_operator_clone_has_fresh_independent_state(make):
    template = make()
    template.set_position(1)
    first, second = _ticks(300, 1), _ticks(200, 2)
    template.process(first)
    before = encode_state(template.state_dict())
    twin = template.clone()
    assert twin is not template and twin.name == template.name
    out = twin.process(second)[0]
    np.testing.assert_allclose(out.column("ewma").to_numpy(), _ewma_reference(second),
                               rtol=1e-12)  # fresh: as if `second` were the whole input
    assert encode_state(template.state_dict()) == before  # the template was not touched
    cont = template.process(second)[0].column("ewma").to_numpy()
    both = pa.Table.from_batches([first, second]).combine_chunks().to_batches()[0]
    np.testing.assert_allclose(cont, _ewma_reference(both)[300:], rtol=1e-12)


def test_tumbling_clone_starts_without_bars():
    op = TumblingOHLCV("1s", by="symbol", price_column="bid", volume_column=None)
    op.set_position(1)
    op.process(_ticks(100, 3))
    assert op.metrics()["open_bars"] > 0
    twin = op.clone()
    assert twin.metrics()["open_bars"] == 0 and twin.size_ns == op.size_ns and twin.by == "symbol"


class _OwnState:
    """A callable with its own state and no clone(): cannot be split per partition."""

    def __call__(self, batch):
        return batch

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_changelog_plan_validation(kafka_broker, tmp_path):
    boot = kafka_broker.bootstrap
    with pytest.raises(ValueError, match="mutually exclusive"):
        Stream.from_kafka(boot, "x", "g", changelog_topic="c", checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="order_by"):
        Stream.from_kafka(boot, "x", "g", changelog_topic="c", order_by="timestamp")
    with pytest.raises(ValueError, match="one source topic"):
        Stream.from_kafka(boot, ["x", "y"], "g", changelog_topic="c")
    a = Stream.from_kafka(boot, "x", "g", changelog_topic="c")
    b = Stream.from_table(ticker_table("kraken", 10))
    with pytest.raises(ValueError, match="changelog_topic needs a linear plan"):
        list(a.union(b))
    with pytest.raises(ValueError, match="changelog_topic needs a linear plan"):
        list(Stream.zip(a, b))
    with pytest.raises(ValueError, match="_OwnState keeps its own state but has no clone"):
        list(a.map(_OwnState()))
    with pytest.raises(ValueError, match="source topic 'no-such-topic-here' not found"):
        list(Stream.from_kafka(boot, "no-such-topic-here", "g", changelog_topic="c"))


# -- subprocess helpers ------------------------------------------------------------------------
def _args(kafka_broker, in_topic, group, out_topic, changelog, interval, delay, stop_at_end):
    return [sys.executable, str(PIPELINE), kafka_broker.bootstrap, in_topic, group, out_topic,
            changelog, str(interval), str(delay), "1" if stop_at_end else "0"]


def _check_output(rows: list, table: pa.Table) -> tuple:
    """De-duplicate by record; duplicates identical; nothing lost; equal to an uninterrupted
    in-process run and to pandas/TA-Lib per symbol.  (rows, duplicates)."""
    n = table.num_rows
    got = pd.DataFrame(rows)[OUTPUT_COLUMNS]
    assert (got.groupby(["symbol", "sequence"]).nunique(dropna=False).max(axis=None) <= 1), \
        "a re-processed record got different values"
    dedup = got.drop_duplicates(["symbol", "sequence"]).sort_values("sequence")
    dedup = dedup.reset_index(drop=True)
    assert len(dedup) == n, f"lost {n - len(dedup)} records"
    uninterrupted = Stream.from_table(table, batch_size=97).map(features).collect().to_pandas()
    uninterrupted = uninterrupted.sort_values("sequence").reset_index(drop=True)
    pd.testing.assert_frame_equal(dedup, uninterrupted, check_exact=True, check_dtype=False)
    ref = pandas_reference(table).sort_values("sequence").reset_index(drop=True)
    pd.testing.assert_frame_equal(dedup, ref, rtol=1e-9, atol=1e-9, check_dtype=False)
    return len(got), len(got) - len(dedup)


# -- one process, killed and restarted -------------------------------------------------------
def test_one_process_killed_and_restarted_restores_from_the_changelog(kafka_broker, unique_topic,
                                                                      tmp_path):
    n = 4000
    table = ticker_table("coinbase", n, seed=31)
    in_topic, out_topic = unique_topic("in"), unique_topic("out")
    kafka_broker.create_topic(in_topic, partitions=3)
    kafka_broker.create_topic(out_topic, partitions=3)
    produce(kafka_broker.bootstrap, in_topic, table)
    args = _args(kafka_broker, in_topic, unique_topic("g"), out_topic, unique_topic("cl"),
                 0.05, 0, False)
    args[-1] = "1"  # stop at the end of the input
    rng = np.random.default_rng(5)
    log_path = tmp_path / "pipeline.log"
    log = open(log_path, "wb")
    kills = 0
    for _ in range(4):
        run_and_kill(args, log, log_path, int(rng.integers(3, 12)))
        kills += 1
    final = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=log, timeout=120)
    log.close()
    text = log_path.read_text()
    assert final.returncode == 0, text[-3000:]
    restored = [(p, int(o)) for _, p, o in RESTORED.findall(text)]
    assert len({o for _, o in restored if o > 0}) >= 3, "restarts did not restore from the changelog"
    total, duplicates = _check_output(read_all(kafka_broker.bootstrap, out_topic), table)
    assert duplicates < n, "restarts re-read from the beginning instead of the changelog"
    print(f"\nchangelog kill9: {kills} kills, {total} output rows, {duplicates} duplicates, 0 lost")


# -- scale-out ----------------------------------------------------------------------------------
class _Member:
    """A pipeline subprocess: counts the rows it reports; its stderr goes to a log file."""

    def __init__(self, name: str, args: list, log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log)
        self.buf = bytearray()
        self.rows = 0
        self.eof = False

    def pump(self) -> None:
        """Read whatever it printed (non-blocking)."""
        fd = self.proc.stdout.fileno()
        while not self.eof and select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                self.eof = True
                break
            self.buf.extend(chunk)
        *lines, rest = bytes(self.buf).split(b"\n")
        self.buf[:] = rest
        self.rows += sum(int(line.split()[1]) for line in lines if line.startswith(b"batch "))

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self, sig: int) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        finally:
            self._log.close()


class _OutputWatcher:
    """Reads the output topic as it grows: distinct records seen so far."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": "watcher",
                           "enable.auto.commit": False, "log_level": 3})
        assign_all(self.c, topic)
        self.seen: set = set()

    def poll(self) -> int:
        for m in self.c.consume(5000, 0.1):
            if m.error() is None:
                self.seen.add(orjson.loads(m.value())["sequence"])
        return len(self.seen)

    def close(self) -> None:
        self.c.close()


def _wait(members: list, until, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not until():
        for m in members:
            m.pump()
            if m.proc.poll() is not None and m.proc.returncode != 0:
                raise AssertionError(f"{m.name} died ({m.proc.returncode}):\n{m.log()[-3000:]}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {m.name}\n{m.log()[-1500:]}" for m in members)
            raise TimeoutError(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.05)


def _last_assignment(log: str) -> dict:
    """{partition: offset it was assigned at (0: fresh)} from a member's last assignment."""
    found = ASSIGNED.findall(log)
    if not found:
        return {}
    return {int(p): (int(o) if o.isdigit() else 0)
            for p, o in re.findall(r"\[(\d+)\]@(\w+)", found[-1])}


def _handover_figures(logs: list) -> str:
    """Revoke (checkpoint) and assign (restore) durations logged by the members (not asserted)."""
    text = "\n".join(logs)
    rev = [float(x) for x in re.findall(r"checkpointed to the changelog in ([\d.]+) ms", text)]
    ass = [float(x) for x in re.findall(r"restored from the changelog in ([\d.]+) ms", text)]
    return (f"on revoke (flush sink, write, commit) median {np.median(rev):.0f} ms max "
            f"{max(rev):.0f} ms; on assign (read, restore) median {np.median(ass):.0f} ms max "
            f"{max(ass):.0f} ms")


def _produce_by_symbol(bootstrap: str, topic: str, table: pa.Table, partitions: int) -> list:
    """Each symbol's records to partition ``symbol index % partitions`` (keyed by symbol);
    the partition of every record."""
    from stream_data import SYMBOLS, json_values

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    parts = [SYMBOLS.index(s) % partitions for s in table.column("symbol").to_pylist()]
    for sym, part, value in zip(table.column("symbol").to_pylist(), parts, json_values(table)):
        p.produce(topic, key=sym.encode(), value=value, partition=part)
        p.poll(0)
    assert p.flush(30) == 0
    return parts


def test_scale_out_two_then_three_members_and_one_killed(kafka_broker, unique_topic, tmp_path):
    n = 16000
    table = ticker_table("binance", n, seed=41)
    in_topic, out_topic = unique_topic("in"), unique_topic("out")
    kafka_broker.create_topic(in_topic, partitions=6)
    kafka_broker.create_topic(out_topic, partitions=3)
    part_of_seq = _produce_by_symbol(kafka_broker.bootstrap, in_topic, table, 6)
    size = np.bincount(part_of_seq, minlength=6)
    changelog = unique_topic("cl")
    args = _args(kafka_broker, in_topic, unique_topic("g"), out_topic, changelog,
                 0.2, 0.05, False)
    watcher = _OutputWatcher(kafka_broker.bootstrap, out_topic)

    def done() -> np.ndarray:
        watcher.poll()
        return np.bincount([part_of_seq[q] for q in watcher.seen], minlength=6)

    members = [_Member("m1", args, tmp_path / "m1.log"), _Member("m2", args, tmp_path / "m2.log")]
    try:
        # the third member joins once every partition has been started (each has state)
        _wait(members, lambda: (done() > 0).all(), 90, "output from every partition")
        assert done().sum() < 0.8 * n, "the input was nearly finished before the third member joined"
        third = _Member("m3", args, tmp_path / "m3.log")
        members.append(third)
        # rebalance: the third member restores state the others built and checkpointed
        _wait(members, lambda: ASSIGNED.search(third.log()), 90, "the third member's assignment")
        handed = [(int(p), int(o)) for _, p, o in RESTORED.findall(third.log())]
        assert any(o > 0 for _, o in handed), f"m3 restored nothing from the changelog: {handed}"

        def victim_found():
            """(member, partition): a member that has processed >= 100 records of a partition
            since it was assigned it, with >= 600 left (a window of ~1,900 records per
            partition: wide enough to be seen between two polls on a busy machine)."""
            d = done()
            for m in members:
                for p, start in _last_assignment(m.log()).items():
                    if d[p] >= start + 100 and size[p] - d[p] >= 600:
                        return m, p
            return None

        _wait(members, lambda: victim_found() or (done() >= size).all(), 90,
              "a member working on a partition with work left")
        victim, part = victim_found() or (None, None)
        assert victim is not None, "the partition finished before the kill; nothing to prove"
        # the victim has checkpointed that progress: its changelog record for the partition is
        # past the offset it was assigned at by 100 (however long that takes on a busy machine)
        store = KafkaChangelogStore(kafka_broker.bootstrap, changelog)

        def progress_checkpointed() -> bool:
            start = _last_assignment(victim.log()).get(part)
            rec = store.read([(in_topic, part)])[(in_topic, part)]
            return start is not None and rec is not None and rec["offset"] >= start + 100

        try:
            _wait(members, progress_checkpointed, 90, "the victim's checkpoint of its progress")
        finally:
            store.close()
        owned = _last_assignment(victim.log())
        left = {part}
        survivors = [m for m in members if m is not victim]
        marks = {m.name: len(m.log()) for m in survivors}
        assert part in owned and done()[part] < size[part]
        assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
        members.remove(victim)

        def taken_over() -> list:
            return [(int(p), int(o)) for m in survivors for _, p, o in
                    RESTORED.findall(m.log()[marks[m.name]:]) if int(p) in left]

        try:
            _wait(members, lambda: watcher.poll() >= n and taken_over(), 120,
                  "every input record in the output and the victim's partitions taken over")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\nper partition done {done().tolist()} of {size.tolist()}; "
                               f"taken over {taken_over()}; rows printed "
                               f"{[(m.name, m.rows) for m in members]}") from None
        taken = taken_over()
        # restored from a record the victim wrote: past the offset it was assigned at
        assert any(o >= owned[p] + 100 for p, o in taken), (owned, taken)
        for m in survivors:
            assert m.stop(signal.SIGTERM) == 0, m.log()[-3000:]
            assert "clean stop" in m.log()
        figures = _handover_figures([m.log() for m in survivors + [victim]])
    finally:
        watcher.close()
        for m in members:
            if m.proc.poll() is None:
                m.proc.kill()
                m.proc.wait()
    total, duplicates = _check_output(read_all(kafka_broker.bootstrap, out_topic), table)
    print(f"\nscale-out: 3 members, {victim.name} killed; {total} output rows, {duplicates} "
          f"duplicates, 0 lost; m3 restored {handed} on joining; survivors restored {taken} "
          f"of {victim.name}'s {owned}; {figures}")


# -- one process owning every task, in-process ---------------------------------------------------
def test_one_process_owns_every_task_and_a_later_run_continues(kafka_broker, unique_topic):
    """A single member with changelog_topic is the changelog state store of one pipeline: a run
    to the end of the input checkpoints every partition; a later run over newly produced
    records restores them and continues EWMA/RSI per symbol (pandas/TA-Lib over everything)."""
    from sabot.kafka import fast_consumer_config
    from sabot.metrics import StreamMetrics

    table = ticker_table("kraken", 3000, seed=51)
    head, tail = table.slice(0, 1800), table.slice(1800)
    topic, group, changelog = unique_topic(), unique_topic("g"), unique_topic("cl")
    kafka_broker.create_topic(topic, partitions=6)
    parts = _produce_by_symbol(kafka_broker.bootstrap, topic, head, 6)

    def stream(batch_size):
        return (Stream.from_kafka(kafka_broker.bootstrap, topic, group, batch_size=batch_size,
                                  from_beginning=True, stop_at_end=True,
                                  changelog_topic=changelog, checkpoint_interval_s=3600,
                                  **fast_consumer_config())
                .map(features))

    first = stream(130)
    out = [first.collect().to_pandas()]
    ckpt = first.last_checkpointer
    assert ckpt.restored == [] and ckpt.store.records_written == len(set(parts))
    samples = {fam.name: fam.samples[0].value for fam in StreamMetrics(first, "s")()
               if fam.name.startswith("sabot_changelog") or fam.name.startswith("sabot_checkpoint")}
    assert samples["sabot_changelog_records_written"] == len(set(parts))
    assert samples["sabot_checkpoint_age_seconds"] >= 0

    _produce_by_symbol(kafka_broker.bootstrap, topic, tail, 6)
    second = stream(77)
    out.append(second.collect().to_pandas())
    restored = {tp[1]: off for tp, off, _ in second.last_checkpointer.restored}
    assert restored == {p: int(np.sum(np.asarray(parts) == p)) for p in set(parts)}
    got = pd.concat(out, ignore_index=True).sort_values("sequence").reset_index(drop=True)
    assert len(got) == len(table) and got["sequence"].is_unique
    ref = pandas_reference(table).sort_values("sequence").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, ref, rtol=1e-9, atol=1e-9, check_dtype=False)


# -- handover of a task's state, split anywhere --------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 599), max_size=6, unique=True),
       handovers=st.lists(st.booleans(), min_size=7, max_size=7))
def test_task_state_handed_over_at_any_point_equals_one_run(cuts, handovers):
    """One partition's records processed in pieces split anywhere; after any piece the task
    may move to another process (state_dict → state format → a fresh clone of the operator →
    load_state_dict).  Output equals pandas/TA-Lib per symbol over the whole input."""
    table = ticker_table("coinbase", 600, seed=61)
    template = MapOp(features)
    template.set_position(1)
    task = template.clone()
    bounds = [0] + sorted(cuts) + [table.num_rows]
    outs = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        piece = table.slice(a, b - a).combine_chunks().to_batches()[0]
        outs.extend(o.to_pandas() for o in task.process(piece))
        if handovers[i]:
            record = decode_state(encode_state(task.state_dict()))
            task = template.clone()
            task.load_state_dict(record)
    got = pd.concat(outs, ignore_index=True).sort_values("sequence").reset_index(drop=True)
    ref = pandas_reference(table).sort_values("sequence").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, ref, rtol=1e-9, atol=1e-9, check_dtype=False)
