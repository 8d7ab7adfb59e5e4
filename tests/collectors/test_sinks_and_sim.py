"""ParquetSink row groups and appends; scripted simulator scenarios; random walk determinism."""
from __future__ import annotations

import asyncio
import json
import time

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import websockets
from hypothesis import given, settings, strategies as st

from sabot.collectors import BinanceCollector, CoinbaseCollector, KrakenCollector
from sabot.collectors.base import DATA
from sabot.collectors.sinks import ParquetSink
from sabot.schema import exchange_schema
from sabot.sim import SIMULATORS, RandomWalk

from collector_helpers import read_rows


def make_records(n: int) -> list[dict]:
    return [{"exchange": "kraken", "symbol": "BTC/USD" if i % 3 else "ETH/USD", "raw_symbol": "BTC/USD",
             "timestamp": 1_700_000_000_000_000_000 + i, "recv_timestamp": 1_700_000_000_000_000_500 + i,
             "bid": 100.0 + i, "ask": 100.5 + i, "bid_size": 1.0, "ask_size": 2.0,
             "price": None if i % 5 == 0 else 100.25 + i, "volume_24h": 10.0, "sequence": None,
             "vwap": 100.1, "change_pct": -0.5} for i in range(n)]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 120), group=st.integers(1, 50), split=st.integers(0, 120))
def test_parquet_sink_same_rows_however_grouped(tmp_path_factory, n, group, split):
    """Rows are identical whatever the row-group size and however the run is split in two."""
    path = tmp_path_factory.mktemp("p") / "k.parquet"
    recs = make_records(n)
    cut = min(split, n)
    for chunk in (recs[:cut], recs[cut:]):  # two runs appending to the same file
        sink = ParquetSink(path, "kraken", row_group_size=group)
        for r in chunk:
            sink.write(r)
        sink.close()
    expected = pa.Table.from_pylist(recs, schema=exchange_schema("kraken"))
    got = pq.read_table(path)
    assert got.schema == exchange_schema("kraken")
    assert got.equals(expected)
    if n:
        assert pq.ParquetFile(path).num_row_groups >= -(-cut // group) + -(-(n - cut) // group)


def test_parquet_sink_time_based_row_groups(tmp_path):
    sink = ParquetSink(tmp_path / "t.parquet", "kraken", row_group_size=10_000, row_group_seconds=0.05)
    for r in make_records(3):
        sink.write(r)
        time.sleep(0.06)
        sink.tick()
    sink.close()
    assert pq.ParquetFile(tmp_path / "t.parquet").num_row_groups == 3


def test_parquet_sink_bad_record_names_column(tmp_path):
    sink = ParquetSink(tmp_path / "b.parquet", "kraken")
    rec = make_records(1)[0]
    rec["bid"] = "not a number"
    sink.write(rec)
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError), match="str|float|double"):
        sink.flush()


def test_random_walk_shared_mid_and_seeded():
    w1, w2 = RandomWalk("coinbase", seed=7), RandomWalk("coinbase", seed=7)
    assert [w1.next("BTC/USD") for _ in range(50)] == [w2.next("BTC/USD") for _ in range(50)]
    cb, kr = RandomWalk("coinbase", seed=3), RandomWalk("kraken", seed=3)
    spreads = []
    for _ in range(2000):
        q1, q2 = cb.next("BTC/USD"), kr.next("BTC/USD")
        assert q1.bid < q1.ask and q2.bid < q2.ask
        spreads.append((q1.bid + q1.ask) / 2 - (q2.bid + q2.ask) / 2)
        # shared mid path: venues stay within a few basis points of each other
        assert abs(spreads[-1]) / q1.bid < 0.01
    assert min(spreads) < 0 < max(spreads)  # cross-venue spread opens both ways and closes


@pytest.mark.parametrize("exchange", ["coinbase", "kraken", "binance"])
def test_scenario_quotes_arrive_as_scripted(exchange, tmp_path):
    """A scripted quote comes out of the collector's parser with the scripted bid/ask, at its time."""
    rows = [{"t": 0.0, "exchange": exchange, "symbol": "BTC/USD", "bid": 100.0, "ask": 100.5},
            {"t": 0.3, "exchange": exchange, "symbol": "BTC/USD", "bid": 101.25, "ask": 101.5, "bid_size": 3.0},
            {"t": 0.6, "exchange": exchange, "symbol": "ETH/USD", "bid": 10.5, "ask": 10.75},
            {"t": 0.1, "exchange": "other", "symbol": "BTC/USD", "bid": 1, "ask": 2}]
    path = tmp_path / "scenario.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    collector = {"coinbase": CoinbaseCollector, "kraken": KrakenCollector, "binance": BinanceCollector}[exchange]()

    async def client(url: str) -> list[tuple[float, dict]]:
        got = []
        async with websockets.connect(collector.url(url)) as ws:
            for text in collector.subscribe_messages():
                await ws.send(text)
            t0 = None
            while len(got) < 3:
                kind, records, _ = collector.parse(await asyncio.wait_for(ws.recv(), 5), 0)
                for r in records if kind == DATA else []:
                    t0 = t0 or time.monotonic()
                    got.append((time.monotonic() - t0, r))
        return got

    with SIMULATORS[exchange](scenario=path) as sim:
        got = asyncio.run(client(sim.url))
    assert sim.count == 3
    q = "USDT" if exchange == "binance" else "USD"  # Binance lists the USD pairs against USDT
    assert [(r["symbol"], r["bid"], r["ask"]) for _, r in got] == [
        (f"BTC/{q}", 100.0, 100.5), (f"BTC/{q}", 101.25, 101.5), (f"ETH/{q}", 10.5, 10.75)]
    assert got[1][1]["bid_size"] == 3.0
    assert 0.2 < got[1][0] < 0.5 and 0.5 < got[2][0] < 0.9  # paced by the script's t


def test_bad_scenario_line_names_file_and_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"t":0,"exchange":"kraken","symbol":"BTC/USD","bid":1,"ask":2}\n{"t":1,"exchange":"kraken"}\n')
    with pytest.raises(ValueError, match=r"s.jsonl:2"):
        SIMULATORS["kraken"](scenario=path)


def test_replay_sends_lines_verbatim(tmp_path):
    lines = [orjson.dumps({"stream": "btcusdt@bookTicker", "data": {"u": i, "s": "BTCUSDT", "b": "1.5",
                                                                     "B": "2", "a": "1.6", "A": "3"}}).decode()
             for i in range(5)]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n")

    async def client(url: str) -> list[str]:
        async with websockets.connect(url + "/stream?streams=btcusdt@bookTicker") as ws:
            return [await asyncio.wait_for(ws.recv(), 5) for _ in range(5)]

    with SIMULATORS["binance"](replay=path, rate=0) as sim:
        assert asyncio.run(client(sim.url)) == lines
    assert sim.sent_count == 5
