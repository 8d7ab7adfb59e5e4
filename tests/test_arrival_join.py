"""sabot.api.arrival.ArrivalAsofJoin (the live monitor's on-arrival alignment) against a naive
loop over the rows in arrival order, however the arrivals are split into batches; and the
monitor's decisions on its output against a plain Python best-pair reference."""
from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from example_modules import load_example
from sabot.api import arrival as arrival_module
from sabot.api.arrival import ArrivalAsofJoin

VENUES = ("coinbase", "kraken", "binance")
TOL_MS = 500
TS = pa.timestamp("ns", tz="UTC")


def naive(rows: list[dict], tolerance_ns: int = TOL_MS * 1_000_000) -> list[dict]:
    """Row by row in arrival order: remember the row as its venue's latest for its symbol, then
    take every venue's latest quote for the symbol unless it is older than the tolerance."""
    latest: dict = {}
    out = []
    for r in rows:
        if r["exchange"] not in VENUES or r["symbol"] is None:
            continue
        latest[(r["exchange"], r["symbol"])] = r
        joined = {"symbol": r["symbol"], "timestamp": r["timestamp"], "exchange": r["exchange"]}
        for v in VENUES:
            q = latest.get((v, r["symbol"]))
            use = q is not None and r["timestamp"] - q["timestamp"] <= tolerance_ns
            for c in ("timestamp", "bid", "ask", "recv_timestamp"):
                joined[f"{v}_{c}"] = q[c] if use else None
        out.append(joined)
    return out


def to_batch(rows: list[dict]) -> pa.RecordBatch:
    return pa.record_batch({
        "exchange": pa.array([r["exchange"] for r in rows], pa.string()),
        "symbol": pa.array([r["symbol"] for r in rows], pa.string()),
        "timestamp": pa.array([r["timestamp"] for r in rows], pa.int64()).cast(TS),
        "recv_timestamp": pa.array([r["recv_timestamp"] for r in rows], pa.int64()).cast(TS),
        "bid": pa.array([r["bid"] for r in rows], pa.float64()),
        "ask": pa.array([r["ask"] for r in rows], pa.float64()),
    })


def as_rows(batch: pa.RecordBatch) -> list[dict]:
    """Output rows with timestamps as int ns (the naive reference's terms); a null stays None
    and a NaN would stay NaN (unequal to the reference's None)."""
    out = []
    for name in batch.schema.names:
        col = batch.column(name)
        if pa.types.is_timestamp(col.type):
            col = col.view(pa.int64())
        values = col.to_pylist()
        for i, v in enumerate(values):
            if len(out) <= i:
                out.append({})
            out[i][name] = v
    return out


def run_split(rows: list[dict], cuts: list[int]) -> list[dict]:
    join = ArrivalAsofJoin(VENUES, columns=("bid", "ask", "recv_timestamp"), tolerance_ms=TOL_MS)
    bounds = sorted({0, len(rows), *[c % (len(rows) + 1) for c in cuts]})
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        out += as_rows(join.process(to_batch(rows[lo:hi])))
    return out


price = st.floats(min_value=90.0, max_value=110.0, allow_nan=False)
arrival = st.fixed_dictionaries({
    "exchange": st.sampled_from(VENUES + ("bitstamp",)),  # an unknown venue is skipped
    "symbol": st.one_of(st.sampled_from(["BTC/USD", "ETH/USD", "SOL/USD"]), st.none()),
    "dt_ms": st.integers(-300, 700),  # event time may go backwards across venues
    "bid": st.one_of(price, st.none()), "ask": price,  # a null quote stays null
    "lag_us": st.integers(0, 5000),
})


def _materialise(draws: list[dict]) -> list[dict]:
    t, rows = 1_700_000_000_000_000_000, []
    for d in draws:
        t += d["dt_ms"] * 1_000_000
        rows.append({"exchange": d["exchange"], "symbol": d["symbol"], "timestamp": t,
                     "recv_timestamp": t + d["lag_us"] * 1000, "bid": d["bid"], "ask": d["ask"]})
    return rows


@settings(max_examples=150, deadline=None)
@given(st.lists(arrival, max_size=40), st.lists(st.integers(0, 40), max_size=6))
def test_equals_the_naive_loop_however_the_arrivals_are_split(draws, cuts):
    rows = _materialise(draws)
    expected = naive(rows)
    assert run_split(rows, cuts) == expected
    default = arrival_module.FEW_ROWS
    try:  # each way of joining alone: every batch vectorised, every batch row by row
        for few_rows in (-1, len(rows)):
            arrival_module.FEW_ROWS = few_rows
            assert run_split(rows, cuts) == expected
    finally:
        arrival_module.FEW_ROWS = default
    assert run_split(rows, []) == expected  # one batch


@settings(max_examples=60, deadline=None)
@given(st.lists(arrival, max_size=40), st.lists(st.integers(0, 40), max_size=4))
def test_each_symbol_alone_gives_the_same_rows(draws, cuts):
    rows = [r for r in _materialise(draws) if r["symbol"] is not None]
    together = run_split(rows, cuts)
    for sym in {r["symbol"] for r in rows}:
        alone = run_split([r for r in rows if r["symbol"] == sym], cuts)
        assert alone == [r for r in together if r["symbol"] == sym]


def _reference_best(quotes: dict, fees: dict):
    best = None
    for b in VENUES:
        for s in VENUES:
            if b == s or quotes[b] is None or quotes[s] is None:
                continue
            ask_b, bid_s = quotes[b][1], quotes[s][0]
            net = (bid_s - ask_b) / ask_b * 1e4 - fees[b] - fees[s]
            if best is None or net > best[0]:
                best = (net, b, s)
    return best


@settings(max_examples=80, deadline=None)
@given(st.lists(arrival, min_size=1, max_size=30), st.lists(st.integers(0, 30), max_size=4),
       st.fixed_dictionaries({v: st.floats(0, 30) for v in VENUES}))
def test_monitor_decisions_equal_a_row_by_row_reference(draws, cuts, fees):
    """The monitor's signal per arriving quote = best pair over the naive loop's quotes."""
    arb = load_example("multi_exchange_arbitrage")
    rows = _materialise(draws)
    join = ArrivalAsofJoin(VENUES, columns=("bid", "ask", "recv_timestamp"), tolerance_ms=TOL_MS)
    bounds = sorted({0, len(rows), *[c % (len(rows) + 1) for c in cuts]})
    nets, buys, sells, recvs = [], [], [], []
    for lo, hi in zip(bounds, bounds[1:]):
        out = join.process(to_batch(rows[lo:hi]))
        e = arb.best_edges(out, fees, 0.0)
        nets += e["net_bps"].tolist()
        buys += e["buy"].tolist()
        sells += e["sell"].tolist()
        recvs += arb.newest_recv_ns(out).tolist()
    expected = naive(rows)
    assert len(nets) == len(expected)
    for i, r in enumerate(expected):
        quotes = {v: None if r[f"{v}_bid"] is None else (r[f"{v}_bid"], r[f"{v}_ask"])
                  for v in VENUES}
        ref = _reference_best(quotes, fees)
        assert recvs[i] == max(r[f"{v}_recv_timestamp"] for v in VENUES
                               if r[f"{v}_recv_timestamp"] is not None)
        if ref is None:
            assert buys[i] == -1 and math.isnan(nets[i])
            continue
        assert nets[i] == pytest.approx(ref[0], rel=1e-12, abs=1e-9)
        assert (VENUES[buys[i]], VENUES[sells[i]]) == ref[1:]


def test_tolerance_boundary_newer_quotes_and_state_across_batches():
    ms = 1_000_000
    join = ArrivalAsofJoin(VENUES, tolerance_ms=500)
    rows = [
        {"exchange": "kraken", "symbol": "S", "timestamp": 1000 * ms, "recv_timestamp": 0,
         "bid": 1.0, "ask": 2.0},
        {"exchange": "coinbase", "symbol": "S", "timestamp": 1500 * ms, "recv_timestamp": 0,
         "bid": 3.0, "ask": 4.0},   # kraken exactly 500 ms older: used
        {"exchange": "binance", "symbol": "S", "timestamp": 1400 * ms, "recv_timestamp": 0,
         "bid": 5.0, "ask": 6.0},   # coinbase is newer (100 ms ahead): used
    ]
    out = as_rows(join.process(to_batch(rows)))
    assert out[1]["kraken_bid"] == 1.0 and out[2]["coinbase_bid"] == 3.0
    later = {"exchange": "coinbase", "symbol": "S", "timestamp": 1500 * ms + 1,
             "recv_timestamp": 0, "bid": 7.0, "ask": 8.0}
    (row,) = as_rows(join.process(to_batch([later])))
    assert row["kraken_bid"] is None          # 500 ms + 1 ns older: ignored
    assert row["binance_bid"] == 5.0          # from the earlier batch
    assert row["coinbase_bid"] == 7.0 and row["exchange"] == "coinbase"


def test_bad_rows_are_counted_and_logged_and_a_missing_column_is_named(caplog):
    join = ArrivalAsofJoin(VENUES)
    rows = [{"exchange": "ftx", "symbol": "S", "timestamp": 1, "recv_timestamp": 1, "bid": 1.0,
             "ask": 2.0},
            {"exchange": "kraken", "symbol": None, "timestamp": 2, "recv_timestamp": 2,
             "bid": 1.0, "ask": 2.0},
            {"exchange": "kraken", "symbol": "S", "timestamp": 3, "recv_timestamp": 3,
             "bid": 1.0, "ask": 2.0}]
    with caplog.at_level(logging.WARNING, logger="sabot.api.arrival"):
        out = join.process(to_batch(rows))
    assert out.num_rows == 1 and join.skipped == 2
    assert "exchange='ftx'" in caplog.text and "symbol=None" in caplog.text
    with pytest.raises(KeyError, match="'bid'"):
        join.process(to_batch(rows[2:]).drop_columns(["bid"]))
    with pytest.raises(ValueError, match="tolerance_ms"):
        ArrivalAsofJoin(VENUES, tolerance_ms=-1)


def test_column_types_are_kept_int32_float32_and_ms_timestamps():
    """Every joined column keeps its input type (ints and timestamps travel as int64 inside)."""
    join = ArrivalAsofJoin(("a", "b"), columns=("level", "size", "seen"), tolerance_ms=10_000)
    batch = pa.record_batch({
        "exchange": pa.array(["a", "b", "a"]), "symbol": pa.array(["S", "S", "S"]),
        "timestamp": pa.array([1, 2, 3], pa.int64()).cast(TS),
        "level": pa.array([-7, None, 2**31 - 1], pa.int32()),
        "size": pa.array([0.5, 1.5, None], pa.float32()),
        "seen": pa.array([1_000, 2_000, 3_000], pa.timestamp("ms")),
    })
    out = join.process(batch)
    assert out.schema.field("a_level").type == pa.int32()
    assert out.schema.field("a_seen").type == pa.timestamp("ms")
    assert out.schema.field("a_size").type == pa.float64()
    assert out.column("a_level").to_pylist() == [-7, -7, 2**31 - 1]
    assert out.column("b_level").to_pylist() == [None, None, None]  # b's only row: level null
    assert out.column("b_seen").cast(pa.int64()).to_pylist() == [None, 2_000, 2_000]
    assert out.column("a_size").to_pylist() == [0.5, 0.5, None]


@settings(max_examples=40, deadline=None)
@given(st.lists(arrival, max_size=30), st.lists(st.integers(0, 30), max_size=6))
def test_dictionary_typed_venue_and_symbol_columns_join_as_strings(draws, cuts):
    """Venue and symbol columns dictionary-encoded (as Parquet readers hand them out) give the
    rows plain strings give, in one-row ticks and in larger batches."""
    rows = _materialise(draws)

    def encoded(batch: pa.RecordBatch) -> pa.RecordBatch:
        for name in ("exchange", "symbol"):
            i = batch.schema.get_field_index(name)
            batch = batch.set_column(i, name, batch.column(i).dictionary_encode())
        return batch

    join = ArrivalAsofJoin(VENUES, columns=("bid", "ask", "recv_timestamp"), tolerance_ms=TOL_MS)
    bounds = sorted({0, len(rows), *[c % (len(rows) + 1) for c in cuts]})
    got = []
    for lo, hi in zip(bounds, bounds[1:]):
        got += as_rows(join.process(encoded(to_batch(rows[lo:hi]))))
    assert got == naive(rows)


# -- state ----------------------------------------------------------------------------------------
def _plain(value) -> bool:
    """Plain data only (no pickle needed): dicts, lists, numbers, strings, bytes, numpy arrays."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return value.dtype != object
    return value is None or isinstance(value, (bool, int, float, str, bytes))


@settings(max_examples=100, deadline=None)
@given(st.lists(arrival, min_size=1, max_size=40), st.integers(0, 40),
       st.lists(st.integers(0, 40), max_size=4))
def test_a_run_restored_from_state_equals_the_unsplit_run(draws, split, cuts):
    rows = _materialise(draws)
    whole = run_split(rows, cuts)
    split = split % (len(rows) + 1)
    first = ArrivalAsofJoin(VENUES, columns=("bid", "ask", "recv_timestamp"), tolerance_ms=TOL_MS)
    out = as_rows(first.process(to_batch(rows[:split]))) if split else []
    state = first.state_dict()
    assert _plain(state)
    second = ArrivalAsofJoin(VENUES, columns=("bid", "ask", "recv_timestamp"), tolerance_ms=TOL_MS)
    second.load_state_dict(state)
    if split < len(rows):
        out += as_rows(second.process(to_batch(rows[split:])))
    assert out == whole
    assert second.skipped == sum(1 for r in rows if r["exchange"] not in VENUES
                                 or r["symbol"] is None)


def test_state_travels_in_a_stream_checkpoint_and_mismatches_are_named():
    from sabot.api import Stream

    rows = _materialise([{"exchange": v, "symbol": s, "dt_ms": 10, "bid": 100.0, "ask": 101.0,
                          "lag_us": 5} for v in VENUES for s in ("BTC/USD", "ETH/USD")])
    join = ArrivalAsofJoin(VENUES, columns=("bid", "ask", "recv_timestamp"), tolerance_ms=TOL_MS)
    s1 = Stream.from_batches([to_batch(rows[:4])]).map(join)
    s1.collect()
    state = s1.state_dict()
    rest = to_batch(rows[4:])
    s2 = Stream.from_batches([rest]).map(
        ArrivalAsofJoin(VENUES, columns=("bid", "ask", "recv_timestamp"), tolerance_ms=TOL_MS))
    s2.load_state_dict(state)
    assert as_rows(s2.collect().to_batches()[0]) == as_rows(join.process(rest))
    other = ArrivalAsofJoin(VENUES[:2], columns=("bid", "ask", "recv_timestamp"))
    with pytest.raises(ValueError, match="sources"):
        other.load_state_dict(ArrivalAsofJoin(VENUES).state_dict())
    assert join.clone().state_dict()["present"].shape == (len(VENUES), 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(arrival, max_size=40), st.lists(st.booleans(), max_size=40))
def test_join_row_equals_the_batch_path_and_shares_its_state(draws, use_rows):
    """``join_row`` (one tick as Python values) gives the naive loop's rows, mixed in any
    order with :meth:`process` on one-row batches over one state."""
    rows = [r for r in _materialise(draws) if r["exchange"] in VENUES and r["symbol"] is not None]
    join = ArrivalAsofJoin(VENUES, columns=("bid", "ask", "recv_timestamp"), tolerance_ms=TOL_MS)
    got = []
    for i, r in enumerate(rows):
        if i < len(use_rows) and use_rows[i]:
            per_source = join.join_row(VENUES.index(r["exchange"]), r["symbol"],
                                       (r["timestamp"], r["bid"], r["ask"], r["recv_timestamp"]))
            joined = {"symbol": r["symbol"], "timestamp": r["timestamp"], "exchange": r["exchange"]}
            for v, q in zip(VENUES, per_source):
                for c_i, c in enumerate(join.columns):
                    joined[f"{v}_{c}"] = None if q is None else q[c_i]
            got.append(joined)
        else:
            got += as_rows(join.process(to_batch([r])))
    assert got == naive(rows)
    for v_i, v in enumerate(VENUES):  # latest: every venue's last row of a symbol, any age
        for sym in {r["symbol"] for r in rows}:
            last = [r for r in rows if r["exchange"] == v and r["symbol"] == sym]
            row = join.latest(sym)[v_i]
            assert (row is None) == (not last)
            if last:
                assert row == (last[-1]["timestamp"], last[-1]["bid"], last[-1]["ask"],
                               last[-1]["recv_timestamp"])
