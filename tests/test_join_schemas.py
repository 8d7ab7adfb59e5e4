"""The output schema of every ASOF join depends on the input schemas and the arguments, never
on how many rows a batch has: empty inputs, quiet spans and empty first batches give the
schema of a full batch."""
from __future__ import annotations

import logging

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sabot.api import Stream
from sabot.api.arrival import ArrivalAsofJoin
from sabot.fintech import (AsofJoinKernel, StreamingAsofJoinKernel, asof_join, asof_join_streaming,
                           asof_join_table)

TS = pa.timestamp("ns", tz="UTC")
QUOTE = pa.schema([("exchange", pa.string()), ("symbol", pa.string()), ("timestamp", TS),
                   ("midprice", pa.float64()), ("sequence", pa.int64())])
VENUES = ("coinbase", "kraken")
#: the names a full batch of each side gets (today's and tomorrow's)
FULL = ["exchange", "symbol", "timestamp", "coinbase_midprice", "coinbase_sequence",
        "kraken_midprice", "kraken_sequence"]
CHAIN = FULL + ["binance_midprice", "binance_sequence"]


def quotes(venue: str, times, mid: float = 100.0) -> pa.RecordBatch:
    n = len(times)
    return pa.RecordBatch.from_pydict(
        {"exchange": [venue] * n, "symbol": ["BTC-USD"] * n, "timestamp": list(times),
         "midprice": [mid + i for i in range(n)], "sequence": list(range(n))}, schema=QUOTE)


def empty() -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=QUOTE)


CB = quotes("coinbase", [10, 20, 30])
KR = quotes("kraken", [5, 15, 25])
BN = quotes("binance", [12, 22])


def test_full_batches_keep_the_venue_names():
    out = asof_join(CB, KR, by="symbol")
    assert out.schema.names == FULL
    assert out.column("kraken_midprice").to_pylist() == [100.0, 101.0, 102.0]
    assert asof_join(CB, KR, by="symbol", exchanges=VENUES).equals(out)


@pytest.mark.parametrize("left, right", [(CB, empty()), (empty(), KR), (empty(), empty())],
                         ids=["right empty", "left empty", "both empty"])
def test_empty_inputs_give_the_full_batch_schema_with_exchanges(left, right):
    full = asof_join(CB, KR, by="symbol").schema
    out = asof_join(left, right, by="symbol", exchanges=VENUES)
    assert out.schema == full
    assert out.num_rows == left.num_rows
    table = asof_join_table(pa.Table.from_batches([left]), pa.Table.from_batches([right]),
                            by="symbol", exchanges=VENUES)
    assert table.schema == full


@pytest.mark.parametrize("left, right, side", [(CB, empty(), "right"), (empty(), KR, "left"),
                                               (empty(), empty(), "right")])
def test_an_empty_input_without_exchanges_is_a_clear_error_not_other_names(left, right, side):
    with pytest.raises(ValueError, match=f"the {side} input has no rows.*exchanges="):
        asof_join(left, right, by="symbol")


def test_three_venue_chain_with_quiet_spans():
    full = asof_join(asof_join(CB, KR, by="symbol"), BN, by="symbol")
    assert full.schema.names == CHAIN
    for a, b, c in [(CB, empty(), BN), (empty(), KR, empty()), (CB, KR, empty())]:
        step = asof_join(a, b, by="symbol", exchanges=VENUES)
        out = asof_join(step, c, by="symbol", exchanges=("coinbase", "binance"))
        assert out.schema == full.schema


def test_exchanges_argument_is_checked():
    with pytest.raises(TypeError, match="pair"):
        asof_join(CB, KR, by="symbol", exchanges="coinbase")
    with pytest.raises(TypeError, match="right venue"):
        asof_join(CB, KR, by="symbol", exchanges=("coinbase", ""))
    with pytest.raises(ValueError, match="either right_prefix"):
        asof_join(CB, KR, by="symbol", exchanges=VENUES, right_prefix="kr_")
    # plain names from right_prefix never read the rows either
    assert (asof_join(CB, empty(), by="symbol", right_prefix="kr_").schema
            == asof_join(CB, KR, by="symbol", right_prefix="kr_").schema)


def test_kernel_keeps_the_names_of_its_first_left_batch():
    kernel = AsofJoinKernel(KR, by="symbol")
    first = kernel(CB)
    assert first.schema.names == FULL
    assert kernel(empty()).schema == first.schema          # a quiet span
    assert kernel(CB.slice(1)).schema == first.schema


def test_kernel_with_an_empty_first_batch():
    with pytest.raises(ValueError, match="left input has no rows"):
        AsofJoinKernel(KR, by="symbol")(empty())
    kernel = AsofJoinKernel(KR, by="symbol", exchanges=VENUES)
    assert kernel(empty()).schema == kernel(CB).schema == asof_join(CB, KR, by="symbol").schema
    quiet_right = AsofJoinKernel(empty(), by="symbol", exchanges=VENUES)
    assert quiet_right(CB).schema.names == FULL
    assert quiet_right(CB).column("kraken_midprice").null_count == 3


def test_streaming_kernel_right_side_quiet_at_first():
    k = StreamingAsofJoinKernel(by="symbol")
    k.process_right(empty())
    k.process_left(empty())
    k.process_left(CB)
    out = k.process_right(quotes("kraken", [5, 35]))
    assert out.num_rows == 3 and out.schema.names == FULL
    assert k.process_left(empty()).schema == out.schema
    assert k.flush().schema == out.schema


def test_streaming_rows_released_before_any_right_row_fix_plain_names(caplog):
    k = StreamingAsofJoinKernel(by="symbol")
    k.process_right(empty())
    k.process_left(CB)
    with caplog.at_level(logging.WARNING, logger="sabot.fintech.asof"):
        out = k.advance_right_watermark(1000)
    assert out.num_rows == 3 and "exchanges=" in caplog.text
    assert "midprice" in out.schema.names and "coinbase_midprice" not in out.schema.names
    k.process_left(quotes("coinbase", [2000]))
    later = k.process_right(quotes("kraken", [3000]))
    assert later.num_rows == 1 and later.schema == out.schema  # the names never change


def test_streaming_names_survive_a_state_round_trip():
    k = StreamingAsofJoinKernel(by="symbol")
    k.process_left(CB)
    first = k.process_right(quotes("kraken", [15]))
    assert first.schema.names == FULL
    again = StreamingAsofJoinKernel(by="symbol")
    again.load_state_dict(k.state_dict())
    assert again.process_right(empty()).schema == first.schema
    assert again.flush().schema == first.schema
    with pytest.raises(ValueError, match="exchanges"):
        StreamingAsofJoinKernel(by="symbol", exchanges=VENUES).load_state_dict(k.state_dict())
    # a snapshot written before the names were recorded: fixed with its first batches
    old = k.state_dict()
    for key in ("venues_read", "names_fixed"):
        del old[key]
    old["params"].pop("exchanges")
    legacy = StreamingAsofJoinKernel(by="symbol")
    legacy.load_state_dict(old)
    assert legacy.flush().schema == first.schema


def _loop_outputs(kind: str, lefts, rights, exchanges):
    """Join the batches one pair at a time with the API ``kind``; the outputs."""
    if kind == "asof_join":
        return [asof_join(l, r, by="symbol", exchanges=exchanges) for l, r in zip(lefts, rights)]
    if kind == "kernel":
        return [AsofJoinKernel(r, by="symbol", exchanges=exchanges)(l)
                for l, r in zip(lefts, rights)]
    if kind == "streaming":
        k = StreamingAsofJoinKernel(by="symbol", exchanges=exchanges)
        outs = []
        for l, r in zip(lefts, rights):
            outs.append(k.process_right(r))
            outs.append(k.process_left(l))
        outs.append(k.flush())
        return outs
    return list(asof_join_streaming(lefts, rights, by="symbol", exchanges=exchanges))


@settings(max_examples=25, deadline=None)
@given(quiet=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=6),
       kind=st.sampled_from(["asof_join", "kernel", "streaming", "asof_join_streaming"]),
       named=st.booleans())
def test_one_schema_through_quiet_spans(quiet, kind, named):
    lefts, rights = [], []
    for i, (left_quiet, right_quiet) in enumerate(quiet):
        t0 = 100 * i
        lefts.append(empty() if left_quiet else quotes("coinbase", [t0 + 10, t0 + 60]))
        rights.append(empty() if right_quiet else quotes("kraken", [t0 + 5, t0 + 50]))
    reference = asof_join(CB, KR, by="symbol").schema
    stateless = kind in ("asof_join", "kernel")
    if not named and stateless and any(l.num_rows == 0 or r.num_rows == 0
                                        for l, r in zip(lefts, rights)):
        with pytest.raises(ValueError, match="exchanges="):
            _loop_outputs(kind, lefts, rights, None)
        return
    outs = _loop_outputs(kind, lefts, rights, VENUES if named else None)
    saw_right = any(r.num_rows for r in rights)
    for out in outs:
        if out.num_rows or stateless:
            if saw_right or named:
                assert out.schema == reference
    if kind == "streaming" and (named or saw_right):
        assert sum(o.num_rows for o in outs) == sum(l.num_rows for l in lefts)
        fixed = [o for o in outs if o.num_rows]
        if fixed:  # once rows have been emitted, empty outputs have the same schema too
            first = next(i for i, o in enumerate(outs) if o.num_rows)
            assert all(o.schema == reference for o in outs[first:])


def test_stream_asof_join_names_from_exchanges():
    left = Stream.from_batches([CB])
    right = Stream.from_batches([empty(), quotes("kraken", [5, 25]), empty()])
    out = left.asof_join(right, by="symbol", exchanges=VENUES, idle_timeout_ms=None).collect()
    assert out.schema.names == FULL and out.num_rows == 3


@settings(max_examples=20, deadline=None)
@given(rows=st.lists(st.lists(st.tuples(st.sampled_from(["coinbase", "kraken", "ftx"]),
                                        st.integers(0, 3)), max_size=6), min_size=1, max_size=5))
def test_arrival_join_schema_does_not_depend_on_rows(rows):
    schema = pa.schema([("exchange", pa.string()), ("symbol", pa.string()), ("timestamp", TS),
                        ("bid", pa.float64()), ("ask", pa.float64()), ("sequence", pa.int32())])
    join = ArrivalAsofJoin(VENUES, columns=("bid", "ask", "sequence"))
    schemas = set()
    t = 0
    for batch_rows in rows:
        recs = []
        for venue, seq in batch_rows:
            t += 1
            recs.append({"exchange": venue, "symbol": "S", "timestamp": t, "bid": 1.0,
                         "ask": 2.0, "sequence": seq or None})
        schemas.add(join.process(pa.RecordBatch.from_pylist(recs, schema=schema)).schema)
    assert len(schemas) == 1


def test_left_rows_are_not_lost_when_the_right_input_never_sends_a_batch(caplog):
    left = pa.Table.from_batches([CB])
    with caplog.at_level(logging.WARNING, logger="sabot.fintech.asof"):
        s = Stream.from_table(left).asof_join(Stream.from_batches([]), by="symbol")
        out = s.collect()
    assert out.equals(left) and "without right columns" in caplog.text
    k = StreamingAsofJoinKernel(by="symbol", ordinal_column="n")
    k.process_left(CB)
    assert k.flush().column("n").to_pylist() == [0, 1, 2]
    assert list(asof_join_streaming([CB], [], by="symbol"))[0].num_rows == 3
