"""Stream API without Kafka: sources, transforms, bars, alignment, sinks, state, errors.
References are pandas / pyarrow computations written plainly here."""
from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sabot.api import Stream, StreamOperatorError
from sabot.fintech import EWMA, ewma, midprice

from stream_data import ticker_table


def splits(table: pa.Table, cuts) -> list:
    cuts = sorted(set(c for c in cuts if 0 < c < table.num_rows))
    edges = [0] + cuts + [table.num_rows]
    return [table.slice(a, b - a).combine_chunks().to_batches()[0]
            for a, b in zip(edges[:-1], edges[1:]) if b > a]


TABLE = ticker_table("coinbase", 600, seed=7)


# -- sources -----------------------------------------------------------------------------------
def test_sources_round_trip(tmp_path):
    pq.write_table(TABLE.slice(0, 250), tmp_path / "a.parquet")
    pq.write_table(TABLE.slice(250), tmp_path / "b.parquet")
    assert Stream.from_parquet(tmp_path / "*.parquet", batch_size=100).collect().equals(TABLE)
    assert Stream.from_parquet(tmp_path, batch_size=1000).collect().equals(TABLE)
    sizes = [b.num_rows for b in Stream.from_table(TABLE, batch_size=128)]
    assert sizes == [128] * 4 + [88]
    assert Stream.from_batches(TABLE.to_batches(max_chunksize=77)).collect().equals(TABLE)
    rows = TABLE.slice(0, 5).to_pylist()
    assert Stream.from_pylist(rows, schema=TABLE.schema).collect().equals(TABLE.slice(0, 5))
    with pytest.raises(FileNotFoundError, match="no Parquet files"):
        Stream.from_parquet(tmp_path / "nothing-*.parquet")


# -- transforms --------------------------------------------------------------------------------
def test_transforms_match_pandas():
    df = TABLE.to_pandas()
    s = (Stream.from_table(TABLE, batch_size=97)
         .filter(lambda b: pc.greater(b["bid_size"], 1.0))
         .filter(pc.field("ask_size") < 4.0)
         .with_columns(spread=lambda b: pc.subtract(b["ask"], b["bid"]), venue="cb")
         .rename({"bid": "best_bid"})
         .select("symbol", "best_bid", "spread", "venue", "sequence"))
    got = s.collect().to_pandas()
    ref = df[(df.bid_size > 1.0) & (df.ask_size < 4.0)].copy()
    ref["spread"] = ref.ask - ref.bid
    ref["venue"] = "cb"
    ref = ref.rename(columns={"bid": "best_bid"})[["symbol", "best_bid", "spread", "venue", "sequence"]]
    pd.testing.assert_frame_equal(got, ref.reset_index(drop=True), check_exact=True)


def test_map_and_flat_map():
    def explode(b):
        half = b.num_rows // 2
        return [b.slice(0, half), b.slice(half)]
    def sizes(batch_size):
        s = Stream.from_table(TABLE, batch_size=batch_size).flat_map(explode).map(
            lambda b: b if b.num_rows % 2 == 0 else None)
        return [b.num_rows for b in s]
    assert sizes(44) == [22] * 26 + [14, 14]   # 600 = 13 * 44 + 28
    assert sizes(42) == [6, 6]                 # 42 -> 21 + 21 (odd, dropped); 12 -> 6 + 6
    rows = Stream.from_table(TABLE.slice(0, 3)).flat_map(
        lambda b: [{"n": i} for i in range(b.num_rows)]).collect()
    assert rows.column("n").to_pylist() == [0, 1, 2]


def test_laziness_nothing_runs_until_iterated():
    calls = []
    s = Stream.from_table(TABLE, batch_size=100).map(lambda b: calls.append(1) or b)
    s2 = s.filter(lambda b: pc.greater(b["bid"], 0)).select("bid")
    assert calls == []
    assert s2.take(150).num_rows == 150
    assert len(calls) == 2  # take stopped reading after the second batch


def test_operator_errors_name_the_operator():
    s = Stream.from_table(TABLE).select("bid", "ask").map(lambda b: b.column("nope"))
    with pytest.raises(StreamOperatorError, match=r"map #2 \(<lambda>\) failed: KeyError"):
        s.collect()

    def to_ratio(b):
        return 1 / 0
    with pytest.raises(StreamOperatorError, match=r"with_columns #1 \(ratio\) failed: .*ZeroDivision"):
        Stream.from_table(TABLE).with_columns(ratio=to_ratio).collect()
    with pytest.raises(StreamOperatorError, match=r"select #1 .* 'volume' not found"):
        Stream.from_table(TABLE).select("volume").collect()
    with pytest.raises(StreamOperatorError, match=r"map #1 \(bad\) failed: TypeError: .*int"):
        def bad(b):
            return 5
        Stream.from_table(TABLE).map(bad).collect()


# -- stateful kernels across batches --------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 600), max_size=8))
def test_lambda_style_equals_class_style_equals_whole_table(cuts):
    batches = splits(TABLE, cuts)
    lam = Stream.from_batches(batches).map(midprice).map(
        lambda b: ewma(b, column="midprice", alpha=0.3, by="symbol")).collect()
    cls = Stream.from_batches(batches).map(midprice).map(
        EWMA(column="midprice", alpha=0.3, by="symbol")).collect()
    whole = ewma(midprice(TABLE), column="midprice", alpha=0.3, by="symbol")
    assert lam.equals(cls)
    assert lam.column("ewma").to_pylist() == whole.column("ewma").to_pylist()
    ref = TABLE.to_pandas()
    ref = ((ref.bid + ref.ask) / 2).groupby(ref.symbol).transform(
        lambda x: x.ewm(alpha=0.3, adjust=False).mean())
    np.testing.assert_allclose(lam.column("ewma").to_numpy(), ref.to_numpy(), rtol=1e-12)


def test_each_run_starts_fresh_and_state_dict_restores():
    s = Stream.from_table(TABLE.slice(0, 300), batch_size=64).map(
        lambda b: ewma(b, column="bid", alpha=0.1, by="symbol"))
    first, second = s.collect(), s.collect()
    assert first.equals(second)
    state = s.state_dict()
    cont = Stream.from_table(TABLE.slice(300), batch_size=64).map(
        lambda b: ewma(b, column="bid", alpha=0.1, by="symbol"))
    cont.load_state_dict(state)
    joined = pa.concat_tables([first, cont.collect()])
    whole = ewma(TABLE, column="bid", alpha=0.1, by="symbol")
    assert joined.column("ewma").to_pylist() == whole.column("ewma").to_pylist()


# -- tumbling bars ---------------------------------------------------------------------------------
def bars_reference(table: pa.Table, freq: str) -> pd.DataFrame:
    df = table.to_pandas()
    df = df[df.price.notna()]
    g = df.groupby(["symbol", pd.Grouper(key="timestamp", freq=freq)])
    ref = g.price.ohlc()
    ref["count"] = g.price.size()
    ref = ref.reset_index().rename(columns={"timestamp": "window_start"})
    ref = ref[["window_start", "symbol", "open", "high", "low", "close", "count"]]
    return ref.sort_values(["window_start", "symbol"]).reset_index(drop=True)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 600), max_size=6))
def test_tumbling_bars_match_pandas_for_any_split(cuts):
    t = ticker_table("kraken", 600, seed=9, step_ns=7_000_000)  # 4.2 s of data
    got = (Stream.from_batches(splits(t, cuts)).key_by("symbol")
           .tumbling("250ms", volume_column=None).collect().to_pandas())
    ref = bars_reference(t, "250ms")
    assert list(got.columns) == ["window_start", "window_end", "symbol", "open", "high", "low",
                                 "close", "count"]
    pd.testing.assert_frame_equal(got.drop(columns="window_end"), ref, check_dtype=False)
    assert (got.window_end - got.window_start == pd.Timedelta("250ms")).all()


def test_tumbling_volume_lateness_and_watermark():
    ms = np.array([0, 100, 900, 1000, 1500, 2100, 950, 2200], dtype=np.int64)
    ts = [pd.Timestamp(int(v) * 1_000_000, tz="UTC") for v in ms]
    t = pa.table({"timestamp": pa.array(ms * 1_000_000).cast(pa.timestamp("ns", tz="UTC")),
                  "price": [1.0, 3.0, 2.0, 5.0, 4.0, 6.0, 9.0, 7.0],
                  "volume": [1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 10.0, 3.0]})
    op_stream = Stream.from_batches([t.slice(0, 3), t.slice(3, 2), t.slice(5)]).tumbling("1s")
    emitted = [b.to_pylist() for b in op_stream]
    # the [0,1s) bar is out as soon as an event at >= 1s arrives; 950 ms then arrives late
    assert emitted[0] == [{"window_start": ts[0], "window_end": ts[3], "open": 1.0, "high": 3.0,
                           "low": 1.0, "close": 2.0, "volume": 3.0, "count": 3}]
    bars = pa.Table.from_pylist([r for b in emitted for r in b]).to_pandas()
    assert bars.volume.tolist() == [3.0, 4.0, 6.0] and bars["count"].tolist() == [3, 2, 2]
    op = op_stream.operators()[-1]
    assert op.late_count == 1 and op.dead_letter().column("price").to_pylist() == [9.0]
    with pytest.raises(StreamOperatorError, match="volume_column=None"):
        Stream.from_table(TABLE).tumbling("1s").collect()


# -- multi-stream -------------------------------------------------------------------------------------
def three_venues():
    return [ticker_table(ex, n, seed=i, step_ns=step, offset_ns=i * 333_333)
            for i, (ex, n, step) in enumerate([("coinbase", 500, 2_000_000),
                                               ("kraken", 300, 3_000_000),
                                               ("binance", 900, 1_000_000)])]


def test_merge_is_time_ordered_union():
    tables = three_venues()
    streams = [Stream.from_table(t, batch_size=bs) for t, bs in zip(tables, (64, 100, 33))]
    got = Stream.merge(*streams).collect()
    ref = pa.concat_tables(tables).to_pandas().sort_values("timestamp", kind="stable")
    pd.testing.assert_frame_equal(got.to_pandas(), ref.reset_index(drop=True))


def test_zip_yields_time_aligned_batches():
    tables = three_venues()
    streams = [Stream.from_table(t, batch_size=bs) for t, bs in zip(tables, (64, 100, 33))]
    seen = [[], [], []]
    prev_end = None
    n_tuples = 0
    for cb, kr, bn in Stream.zip(*streams):
        n_tuples += 1
        parts = [cb, kr, bn]
        non_empty = [p for p in parts if p is not None and p.num_rows]
        assert non_empty
        lo = min(pc.min(p["timestamp"]).value for p in non_empty)
        hi = max(pc.max(p["timestamp"]).value for p in non_empty)
        if prev_end is not None:
            assert lo > prev_end  # spans do not overlap and move forward
        prev_end = hi
        for i, p in enumerate(parts):
            if p is not None:
                seen[i].append(p)
    for i, t in enumerate(tables):
        assert pa.Table.from_batches(seen[i]).equals(t)  # every row once, in order
    assert n_tuples > 3


def test_zip_is_not_batch_i_with_batch_i():
    a = pa.table({"timestamp": pa.array([0, 1, 2, 3], pa.int64()), "x": [0, 1, 2, 3]})
    b = pa.table({"timestamp": pa.array([2, 3], pa.int64()), "y": [2, 3]})
    out = list(Stream.zip(Stream.from_table(a, batch_size=2), Stream.from_table(b, batch_size=2)))
    # spans [.., 1), [1, 3), [3, ..]: b's rows are paired with a's rows of the same time
    assert [[t["timestamp"].to_pylist() for t in pair] for pair in out] == [
        [[0], []], [[1, 2], [2]], [[3], [3]]]


def test_union_and_async_iteration():
    a, b = TABLE.slice(0, 200), TABLE.slice(200, 100)
    u = Stream.from_table(a, batch_size=50).union(Stream.from_table(b, batch_size=50))
    assert u.collect().sort_by("sequence").equals(pa.concat_tables([a, b]).sort_by("sequence"))

    async def run():
        out = []
        async for batch in Stream.from_table(TABLE, batch_size=128).map(midprice):
            out.append(batch)
        zipped = []
        async for pair in Stream.zip_async(Stream.from_table(a), Stream.from_table(b)):
            zipped.append(pair)
        return out, zipped
    out, zipped = asyncio.run(run())
    assert pa.Table.from_batches(out).equals(midprice(TABLE))
    assert zipped


def test_asof_join_matches_pandas_merge_asof():
    left = ticker_table("coinbase", 700, seed=1, step_ns=1_000_000)
    right = ticker_table("kraken", 500, seed=2, step_ns=1_400_000, offset_ns=300_000)
    got = (Stream.from_table(left, batch_size=90).select("timestamp", "symbol", "bid")
           .asof_join(Stream.from_table(right, batch_size=70).select("timestamp", "symbol", "ask"),
                      by="symbol", tolerance_ms=5, right_prefix="kr_")
           .collect().to_pandas().sort_values("timestamp").reset_index(drop=True))
    ref = pd.merge_asof(left.select(["timestamp", "symbol", "bid"]).to_pandas(),
                        right.select(["timestamp", "symbol", "ask"]).to_pandas()
                        .rename(columns={"ask": "kr_ask"}),
                        on="timestamp", by="symbol", tolerance=pd.Timedelta("5ms"))
    pd.testing.assert_frame_equal(got, ref)


# -- sinks ---------------------------------------------------------------------------------------------
def test_to_parquet_single_file_and_rolled_directory(tmp_path):
    files = Stream.from_table(TABLE, batch_size=100).to_parquet(tmp_path / "one.parquet")
    assert files == [str(tmp_path / "one.parquet")]
    assert pq.read_table(files[0]).equals(TABLE)
    files = Stream.from_table(TABLE, batch_size=100).to_parquet(tmp_path / "dir", rows_per_file=200)
    assert len(files) == 3 and not list((tmp_path / "dir").glob("*.part"))
    assert pq.read_table(sorted(files)).equals(TABLE)
