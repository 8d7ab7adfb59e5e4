"""One time-unit converter (sabot.timeunits) and the rule for integer time columns, as used by
operators and joins of a Stream."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sabot.api import Stream
from sabot.api._events import Commit
from sabot.api._plan import Node
from sabot.timeunits import column_ns, duration_ns, ms_to_ns, to_ns

T0_MS = 1_700_000_000_000  # 2023-11-14 in epoch milliseconds


# -- the converter --------------------------------------------------------------------------
@pytest.mark.parametrize("value,ns", [("500ms", 500_000_000), ("1s", 1_000_000_000),
                                      ("5m", 300_000_000_000), ("1h", 3_600_000_000_000),
                                      ("2us", 2_000), ("7ns", 7), (250, 250_000_000),
                                      (0.5, 500_000), (dt.timedelta(seconds=2), 2_000_000_000),
                                      (np.timedelta64(3, "ms"), 3_000_000)])
def test_durations(value, ns):
    assert duration_ns(value, "size") == ns


@pytest.mark.parametrize("value,err", [("5 parsecs", ValueError), ("-1s", ValueError),
                                       (0, ValueError), (-3, ValueError), (True, TypeError),
                                       (float("nan"), ValueError), ([1], TypeError)])
def test_bad_durations_name_the_parameter(value, err):
    with pytest.raises(err, match="window size"):
        duration_ns(value, "window size")


def test_zero_duration_when_allowed():
    assert duration_ns(0, "tolerance_ms", allow_zero=True) == 0
    assert ms_to_ns(1.5) == 1_500_000 and to_ns(3, "s") == 3_000_000_000


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_timestamp_columns_carry_their_unit(unit):
    col = pa.array([1, None, 3], pa.timestamp(unit, tz="UTC"))
    got = column_ns(col, "t")
    scale = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
    assert got[0] == scale and got[2] == 3 * scale and got[1] == np.iinfo(np.int64).min


@pytest.mark.parametrize("unit,scale", [("s", 10**9), ("ms", 10**6), ("us", 10**3), ("ns", 1)])
def test_integer_columns_are_read_in_on_unit(unit, scale):
    col = pa.array([1_700_000_000, None], pa.int64())
    got = column_ns(col, "t", unit)
    assert got[0] == 1_700_000_000 * scale and got[1] == np.iinfo(np.int64).min


def test_integer_columns_default_to_ns_and_refuse_what_looks_like_a_coarser_unit():
    ns = pa.array([T0_MS * 1_000_000], pa.int64())
    assert column_ns(ns, "t")[0] == T0_MS * 1_000_000
    for unit, values in (("ms", [T0_MS, T0_MS + 5]), ("s", [T0_MS // 1000]),
                         ("us", [T0_MS * 1000])):
        with pytest.raises(ValueError, match=f"'t'.*on_unit='{unit}'"):
            column_ns(pa.array(values, pa.int64()), "t")
    assert column_ns(pa.array([5, 17], pa.int64()), "t").tolist() == [5, 17]  # not epoch time


def test_bad_unit_and_type_are_named():
    with pytest.raises(ValueError, match="on_unit must be one of"):
        column_ns(pa.array([1], pa.int64()), "t", "minutes")
    with pytest.raises(TypeError, match="'t' has type string"):
        column_ns(pa.array(["x"]), "t")
    with pytest.raises(ValueError, match="does not fit"):
        column_ns(pa.array([2**62], pa.int64()), "t", "s")


# -- operators read integer time columns by the same rule -------------------------------------
def _ticks_ms(n: int, step_ms: int = 100) -> pa.Table:
    return pa.table({"t": pa.array(T0_MS + np.arange(n) * step_ms, pa.int64()),
                     "price": pa.array(np.linspace(100.0, 101.0, n))})


def test_tumbling_on_integer_milliseconds():
    table = _ticks_ms(50)  # 5 s of 100 ms ticks
    bars = Stream.from_table(table, 7).tumbling("1s", on="t", volume_column=None,
                                                on_unit="ms").collect()
    assert bars.num_rows == 5
    assert bars.column("count").to_pylist() == [10] * 5
    assert bars.column("window_start").cast(pa.int64()).to_pylist()[0] == T0_MS * 1_000_000


def test_tumbling_without_on_unit_refuses_milliseconds_with_one_clear_line():
    s = Stream.from_table(_ticks_ms(20), 7).tumbling("1s", on="t", volume_column=None)
    with pytest.raises(Exception, match="on_unit='ms'"):
        s.collect()


def test_merge_on_integer_milliseconds():
    a, b = _ticks_ms(30), _ticks_ms(30).set_column(0, "t", pa.array(
        T0_MS + 50 + np.arange(30) * 100, pa.int64()))
    got = Stream.merge(Stream.from_table(a, 4), Stream.from_table(b, 6), on="t",
                       on_unit="ms").collect()
    assert got.column("t").to_pylist() == sorted(a.column("t").to_pylist()
                                                 + b.column("t").to_pylist())


# -- Stream.asof_join on an int64 millisecond column ------------------------------------------
class _Feed(Node):
    """A source of batches, each followed by a commit recorded in ``committed``; before each
    batch it notes how many commits of ``other`` had run (what a live run has released)."""

    def __init__(self, name: str, table: pa.Table, rows: int) -> None:
        self.name = name
        self.table = table
        self.rows = rows
        self.committed: list = []
        self.other: "_Feed" = self
        self.seen_other: list = []

    def events(self):
        for i, b in enumerate(self.table.to_batches(max_chunksize=self.rows)):
            self.seen_other.append(len(self.other.committed))
            yield b
            yield Commit(lambda i=i: self.committed.append(i), self.name)


def _quotes_ms(n: int, seed: int, offset_ms: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"t": pa.array(T0_MS + offset_ms + np.arange(n) * 10, pa.int64()),
                     "symbol": pa.array(rng.choice(["BTC/USD", "ETH/USD"], n)),
                     "bid": pa.array(rng.uniform(99, 101, n))})


def test_asof_join_on_int64_ms_releases_right_commits_while_running():
    """Right-side commits run once the left side has passed their rows' time plus the
    tolerance — while the stream runs, not only when it ends."""
    left = _quotes_ms(4000, 1, 3)
    right = _quotes_ms(4000, 2, 0).rename_columns(["t", "symbol", "ask"])
    lf, rf = _Feed("left", left, 200), _Feed("right", right, 200)
    lf.other, rf.other = rf, lf
    joined = Stream(lf).asof_join(Stream(rf), on="t", by="symbol", tolerance_ms=50)
    got = joined.collect()
    # by the time the left side delivers its last batch, most right commits have run
    assert lf.seen_other[-1] >= len(rf.seen_other) // 2, (
        f"right commits run while the stream ran: {lf.seen_other[-1]} of {len(rf.seen_other)}")
    assert rf.committed == list(range(len(rf.seen_other)))  # and all of them at the end
    assert lf.committed == list(range(len(lf.seen_other)))
    ref = pd.merge_asof(left.to_pandas(), right.to_pandas(), on="t", by="symbol",
                        tolerance=50, direction="backward")
    out = got.to_pandas().sort_values("t", kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(out[["t", "symbol", "bid", "ask"]], ref, check_dtype=False)


def test_asof_join_on_int64_ms_reads_max_skew_in_ms():
    """A right row one day ahead is beyond max_skew='5m' when the column is milliseconds."""
    left = _quotes_ms(400, 1, 3)
    right = _quotes_ms(400, 2, 0).rename_columns(["t", "symbol", "ask"])
    times = right.column("t").to_numpy().copy()
    times[100] += 86_400_000
    right = right.set_column(0, "t", pa.array(times, pa.int64()))
    s = Stream.from_table(left, 50).asof_join(Stream.from_table(right, 50), on="t",
                                              by="symbol", tolerance_ms=50)
    s.collect()
    assert s.operators()[-1].metrics()["skew_rejected"] == 1


class _QuietAfter(Node):
    """Batches, each followed by a commit, then only idle signals (a venue gone quiet)."""

    def __init__(self, name: str, table: pa.Table, rows: int) -> None:
        self.name = name
        self.table = table
        self.rows = rows
        self.committed: list = []

    def events(self):
        from sabot.api._events import IDLE

        for i, b in enumerate(self.table.to_batches(max_chunksize=self.rows)):
            yield b
            yield Commit(lambda i=i: self.committed.append(i), self.name)
        while True:
            yield IDLE


def test_asof_join_on_int64_ms_idle_release_uses_the_unit():
    """The right side goes quiet: after idle_timeout_ms every left row comes out and every
    left commit runs while both sources are still open (the idle release declares the right
    watermark in the column's unit)."""
    import threading
    import time

    left = _quotes_ms(2000, 1, 3)
    right = _quotes_ms(2000, 2, 0).rename_columns(["t", "symbol", "ask"]).slice(0, 300)
    lf, rf = _QuietAfter("left", left, 250), _QuietAfter("right", right, 100)
    joined = Stream(lf).asof_join(Stream(rf), on="t", by="symbol", tolerance_ms=50,
                                  idle_timeout_ms=100)
    rows = [0]

    def done() -> bool:
        return rows[0] == left.num_rows and len(lf.committed) == 8

    def watch() -> None:  # stop the (endless) run once everything is out, or at the deadline
        deadline = time.monotonic() + 60
        while not done() and time.monotonic() < deadline:
            time.sleep(0.01)
        joined.stop()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for b in joined:
        rows[0] += b.num_rows
    watcher.join()
    assert done(), f"stalled: {rows[0]} of {left.num_rows} rows, {len(lf.committed)} of 8 commits"
    assert joined.operators()[-1].metrics()["idle_releases"] > 0
