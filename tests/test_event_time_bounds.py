"""Event time is bounded and nothing stalls: far-future rows, capped dead letters, a quiet
venue in a streaming ASOF join, bounded order_by buffers, checkpointable on-arrival join."""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sabot.api import Stream
from sabot.api._ops import TumblingOHLCV

from stream_data import ticker_table

YEAR_2116 = pd.Timestamp("2116-01-01", tz="UTC").value


def with_times(table: pa.Table, ts: np.ndarray) -> pa.Table:
    return table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
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
    assert_plain(state["guard"])
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
