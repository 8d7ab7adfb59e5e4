"""Binance USDⓈ-M perpetuals: the venue, its local exchange server, the collector to Parquet and
Kafka, and the funding-rate (cash-and-carry) monitor.

There is no futures capture among the exchange samples, so the frames below are written from
the exchange's public USDⓈ-M WebSocket documentation (the ``bookTicker`` and ``markPriceUpdate``
examples, values included).
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sabot.collectors.base import DATA, ERROR, RECONNECT
from sabot.collectors.connection import ConnectionSettings, Stats, run_collector
from sabot.venues import get_venue, perp_venue_names, venue_names
from sabot.venues.binance_usdm import (
    FUNDING_SCHEMA, BinanceUsdmCollector, PerpRecordValidator, funding_path_for, funding_topic_for,
)

REPO = Path(__file__).resolve().parents[1]
NOW_MS = time.time_ns() // 1_000_000

# The documented frames (combined-stream envelope), with the event times moved to now so
# that the record validation's event-time window accepts them.
BOOK_TICKER = {"stream": "bnbusdt@bookTicker", "data": {
    "e": "bookTicker", "u": 400900217, "E": NOW_MS, "T": NOW_MS - 2, "s": "BNBUSDT",
    "b": "25.35190000", "B": "31.21000000", "a": "25.36520000", "A": "40.66000000"}}
MARK_PRICE = {"stream": "btcusdt@markPrice@1s", "data": {
    "e": "markPriceUpdate", "E": NOW_MS, "s": "BTCUSDT", "p": "11794.15000000",
    "i": "11784.62659091", "P": "11784.25641265", "r": "0.00038167", "T": 1562306400000}}


def _frame(obj: dict) -> bytes:
    return json.dumps(obj).encode()


# ---- the venue -------------------------------------------------------------------------------

def test_perp_venue_is_registered_apart_from_the_spot_venues():
    from sabot.collectors import COLLECTORS
    from sabot.sim import SIMULATORS

    venue = get_venue("binance-usdm")
    assert venue.market == "perp" and venue.ticker_topic == "binance-usdm-perp-ticker"
    assert "binance-usdm" in perp_venue_names() and "binance-usdm" not in venue_names()
    assert "binance-usdm" not in list(COLLECTORS) and "binance-usdm" not in list(SIMULATORS)
    assert COLLECTORS["binance-usdm"] is BinanceUsdmCollector  # found by name
    assert funding_topic_for(venue.ticker_topic) == "binance-usdm-funding"
    assert venue.to_exchange_symbol("BTC/USD") == "BTCUSDT"
    assert venue.to_canonical_symbol("BTCUSDT", {}) == "BTC/USDT"
    assert venue.to_canonical_symbol("BTCUSDT") == "BTC/USDT"
    assert venue.to_canonical_symbol("BTCUSDT", {"USDT": "USD"}) == "BTC/USD"
    assert funding_path_for("d/x.parquet") == Path("d/x-funding.parquet")


def test_collector_parses_the_documented_frames():
    c = BinanceUsdmCollector(["btcusdt", "bnbusdt"], quote_aliases={})
    assert c.url("ws://h:1") == ("ws://h:1/stream?streams=btcusdt@bookTicker/btcusdt@markPrice@1s/"
                                 "bnbusdt@bookTicker/bnbusdt@markPrice@1s")
    kind, records, _ = c.parse(_frame(BOOK_TICKER), 123)
    assert kind == DATA
    assert records == [{
        "exchange": "binance-usdm", "symbol": "BNB/USDT", "raw_symbol": "BNBUSDT",
        "timestamp": NOW_MS * 1_000_000, "recv_timestamp": 123, "bid": 25.3519, "ask": 25.3652,
        "bid_size": 31.21, "ask_size": 40.66, "price": None, "volume_24h": None,
        "sequence": 400900217, "time_source": "exchange",
        "transaction_time": (NOW_MS - 2) * 1_000_000}]
    kind, records, _ = c.parse(_frame(MARK_PRICE), 456)
    assert kind == DATA
    assert records == [{
        "exchange": "binance-usdm", "symbol": "BTC/USDT", "raw_symbol": "BTCUSDT",
        "timestamp": NOW_MS * 1_000_000, "recv_timestamp": 456, "mark_price": 11794.15,
        "index_price": 11784.62659091, "estimated_settle_price": 11784.25641265,
        "funding_rate": 0.00038167, "next_funding_time": 1562306400000 * 1_000_000,
        "time_source": "exchange"}]
    v = PerpRecordValidator(c.payload_symbols())
    assert v.check(records[0]) is None
    assert c.parse(b'{"e":"serverShutdown","E":1}', 0).kind == RECONNECT
    assert c.parse(b'{"error":{"code":2,"msg":"Invalid request"},"id":1}', 0).kind == ERROR
    bad = dict(MARK_PRICE, data={k: v for k, v in MARK_PRICE["data"].items() if k != "T"})
    assert "KeyError" in c.parse(_frame(bad), 0).detail  # a malformed frame, skipped by name


@pytest.mark.parametrize("field,value,reason", [
    ("funding_rate", math.nan, "non_finite"), ("mark_price", 0.0, "non_positive"),
    ("index_price", -1.0, "non_positive"), ("estimated_settle_price", math.inf, "non_finite"),
    ("funding_rate", True, "boolean"), ("mark_price", None, "missing"),
    ("next_funding_time", 1.5, "not_a_number"), ("raw_symbol", "ETHUSDT", "unsubscribed_symbol"),
    ("timestamp", 7258118400000 * 1_000_000, "timestamp_ahead"),
])
def test_funding_record_validation_names_field_and_value(field, value, reason):
    c = BinanceUsdmCollector(["BTCUSDT"])
    rec = c.parse(_frame(MARK_PRICE), time.time_ns()).records[0]
    rec[field] = value
    got = PerpRecordValidator(c.payload_symbols()).check(rec)
    assert got is not None and got[0] == reason and field in got[1], got


def test_every_bad_frame_from_the_local_server_is_rejected_by_name():
    """Each of the nine corruption kinds, on tickers and on mark-price frames alike, is one
    rejected record; the rest are stored: records + rejected = data frames sent."""
    from sabot.sim.binance_usdm import BinanceUsdmSim

    class Keep:
        def __init__(self):
            self.rows = []

        def write(self, r):
            self.rows.append(r)

        def tick(self):
            pass

    sink, stats = Keep(), Stats()
    with BinanceUsdmSim(rate=0, count=90, corrupt_every=5, mark_every=0) as sim:
        _run_until(BinanceUsdmCollector(["BTCUSDT"]), [sink], sim.url, stats,
                   lambda: stats.messages >= 90)
    assert stats.records + stats.rejected == 90 == sim.sent_count
    assert stats.rejected == 18 and sum(sim.corrupt_sent.values()) == 18
    assert set(stats.rejected_by) == {"non_finite", "non_positive", "boolean", "negative",
                                      "timestamp_ahead", "unsubscribed_symbol", "control_characters"}
    assert {("funding_rate" in r) for r in sink.rows} == {True, False}


def test_dropped_connections_reconnect_and_lose_nothing():
    from sabot.sim.binance_usdm import BinanceUsdmSim

    class Keep(list):
        def write(self, r):
            self.append(r)

        def tick(self):
            pass

    sink, stats = Keep(), Stats()
    with BinanceUsdmSim(rate=0, count=60, drop_every=20, mark_every=0) as sim:
        _run_until(BinanceUsdmCollector(["BTCUSDT"]), [sink], sim.url, stats,
                   lambda: stats.records >= 60, settings=ConnectionSettings(url=sim.url, backoff_base=0.05))
    assert stats.reconnects == 2 and sim.drops == 2 and stats.records == 60 == sim.sent_count
    assert [r["sequence"] for r in sink if "sequence" in r] == sorted(r["sequence"] for r in sink if "sequence" in r)
    assert sum("funding_rate" in r for r in sink) == 30


def _run_until(collector, sinks, url, stats, done, timeout=20.0, settings=None):
    """Run the shared connection loop in a thread until ``done()`` (or ``timeout``)."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    settings = settings or ConnectionSettings(url=url)

    def target():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(run_collector(collector, sinks, settings, stop, stats))

    t = threading.Thread(target=target, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.02)
    loop.call_soon_threadsafe(stop.set)
    t.join(15)
    assert not t.is_alive()
    assert done(), f"condition not met within {timeout} s: {stats.line()}"


# ---- the collector application to Parquet, against the local server ------------------------

def test_collect_cli_writes_tickers_and_funding_equal_to_the_frames_with_a_rollover(tmp_path):
    from sabot.sim.binance_usdm import BinanceUsdmSim

    out = tmp_path / "perp.parquet"
    with BinanceUsdmSim(rate=100, count=120, keep_sent=True, funding_interval=0.25,
                        mark_every=0) as sim:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sabot", "collect", "binance-usdm", "-F", "-o", str(out),
             "--url", sim.url, "--symbols", "BTCUSDT", "--status-interval", "0.2",
             "--row-group-seconds", "0.5"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
        lines = []
        for line in proc.stderr:  # the status line says when all 120 frames arrived
            lines.append(line)
            if "status: messages=120 " in line:
                break
        proc.send_signal(signal.SIGTERM)
        lines.extend(proc.stderr)
        assert proc.wait(30) == 0, "".join(lines[-20:])
        sent = [json.loads(t)["data"] for t, is_data in sim.sent if is_data]
    assert "summary: written 120 to Parquet" in "".join(lines)
    marks = [d for d in sent if d["e"] == "markPriceUpdate"]
    books = [d for d in sent if d["e"] == "bookTicker"]
    funding = pq.read_table(funding_path_for(out))
    assert funding.schema == FUNDING_SCHEMA
    f = funding.to_pandas()
    assert len(f) == len(marks) == 60
    assert f["mark_price"].tolist() == [float(d["p"]) for d in marks]
    assert f["index_price"].tolist() == [float(d["i"]) for d in marks]
    assert f["estimated_settle_price"].tolist() == [float(d["P"]) for d in marks]
    assert f["funding_rate"].tolist() == [float(d["r"]) for d in marks]
    nft = f["next_funding_time"].astype("int64")
    assert nft.tolist() == [d["T"] * 1_000_000 for d in marks]
    assert f["timestamp"].astype("int64").tolist() == [d["E"] * 1_000_000 for d in marks]
    # funding rollovers: T moves on by exactly one interval and the rate changes with it
    steps = np.diff(np.unique(nft.to_numpy()))
    assert len(steps) >= 2 and set(steps.tolist()) == {250_000_000}
    rate_by_t = f.groupby("next_funding_time")["funding_rate"].agg(["nunique", "first"])
    assert (rate_by_t["nunique"] == 1).all() and rate_by_t["first"].nunique() > 1
    t = pq.read_table(out).to_pandas()
    assert len(t) == len(books) == 60
    assert t["bid"].tolist() == [float(d["b"]) for d in books]
    assert t["ask"].tolist() == [float(d["a"]) for d in books]
    assert t["sequence"].tolist() == [d["u"] for d in books]
    assert t["transaction_time"].astype("int64").tolist() == [d["T"] * 1_000_000 for d in books]


# ---- the funding monitor ---------------------------------------------------------------------

def _input_rows():
    """Spot, perp and funding rows for two symbols, with the cases the join must tell apart."""
    S = 1_000_000_000
    t0 = time.time_ns() // S * S
    rows = []

    def spot(t, sym, bid, ask, raw="BTCUSDT"):
        rows.append(dict(exchange="binance", symbol=sym, raw_symbol=raw, timestamp=t, recv_timestamp=t + 1000,
                         bid=bid, ask=ask))

    def perp(t, sym, bid, ask, raw="BTCUSDT"):
        rows.append(dict(exchange="binance-usdm", symbol=sym, raw_symbol=raw, timestamp=t,
                         recv_timestamp=t + 2000, bid=bid, ask=ask))

    def fund(t, sym, rate, nft, raw="BTCUSDT"):
        rows.append(dict(exchange="binance-usdm", symbol=sym, raw_symbol=raw, timestamp=t,
                         recv_timestamp=t + 3000, mark_price=100.0, index_price=99.9,
                         funding_rate=rate, next_funding_time=nft))

    spot(t0, "BTC/USD", 99.9, 100.0)                       # incomplete
    perp(t0 + 10, "BTC/USD", 100.2, 100.3)                  # incomplete (no funding)
    fund(t0 + 20, "BTC/USD", 3e-4, t0 + 8 * 3600 * S)
    spot(t0 + 30, "BTC/USD", 99.95, 100.05)                 # evaluated
    perp(t0 + 40, "BTC/USD", 100.4, 100.5)                  # evaluated
    spot(t0 + 50, "BTC/USD", float("nan"), 100.0)           # unusable
    spot(t0 + 60, "ETH/USD", 9.99, 10.0, "ETHUSDT")         # incomplete
    perp(t0 + 70, "ETH/USDT", 10.05, 10.06, "ETHUSDT")      # incomplete; joins ETH/USD (USDT = USD)
    fund(t0 + 80, "ETH/USDT", -1e-4, t0 + 4 * 3600 * S, "ETHUSDT")
    perp(t0 + 90, "ETH/USDT", 10.04, 10.05, "ETHUSDT")      # evaluated
    perp(t0 + S, "BTC/USD", 100.1, 100.2)                   # stale spot (1 s apart)
    spot(t0 + S + 10, "BTC/USD", 99.8, 99.9)                # evaluated
    fund(t0 + S + 20, "BTC/USD", 2e-4, t0 + 9 * 3600 * S)   # rollover: interval 1 h from here
    perp(t0 + S + 30, "BTC/USD", 100.0, 100.1)              # evaluated, 1 h interval
    spot(t0 + 12 * S, "BTC/USD", 99.8, 99.9)                # stale funding (> 10 s) and quote
    rows.append(dict(exchange="kraken", symbol="BTC/USD", raw_symbol="XBT/USD", timestamp=t0,
                     recv_timestamp=t0, bid=1.0, ask=2.0))  # another venue: ignored
    return rows


def _expected_with_pandas(rows, fees_spot, fees_perp, tolerance_ns, max_age_ns):
    """The carry edge of every evaluated row, computed independently with pandas."""
    df = pd.DataFrame(rows)
    df["key"] = df["symbol"].str.replace("/USDT", "/USD", regex=False)
    df["kind"] = np.where(df["exchange"] == "binance", "spot",
                          np.where(df["exchange"] != "binance-usdm", "other",
                                   np.where(df["funding_rate"].notna(), "funding", "perp")))
    ok = ~df["kind"].isin(["spot", "perp"]) | ((df["bid"] > 0) & (df["ask"] > 0))
    df = df[ok & (df["kind"] != "other")].copy()
    out = []
    for _, g in df.groupby("key", sort=False):
        g = g.copy()
        for kind, cols in (("spot", ["bid", "ask", "timestamp"]), ("perp", ["bid", "ask", "timestamp"]),
                           ("funding", ["funding_rate", "next_funding_time", "timestamp"])):
            for c in cols:
                g[f"{kind}_{c}"] = g[c].where(g["kind"] == kind).ffill()
        nft = g["next_funding_time"].where(g["kind"] == "funding")
        step = nft.dropna().diff()
        g["hours"] = (step / 3.6e12).reindex(g.index).ffill().fillna(8.0)
        q = g[g["kind"].isin(["spot", "perp"])].dropna(subset=["spot_ask", "perp_bid", "funding_funding_rate"])
        q = q[((q["spot_timestamp"] - q["perp_timestamp"]).abs() <= tolerance_ns)
              & (q["timestamp"] - q["funding_timestamp"] <= max_age_ns)
              & (q["funding_next_funding_time"] > q["timestamp"])]
        gross = (q["perp_bid"] - q["spot_ask"]) / q["spot_ask"] * 1e4
        net = gross + q["funding_funding_rate"] * 1e4 - 2 * (fees_spot + fees_perp)
        out.append(pd.DataFrame({"timestamp": q["timestamp"], "gross": gross, "net": net,
                                 "carry": net * 24 / q["hours"] * 365,
                                 "apr": q["funding_funding_rate"] * 24 / q["hours"] * 365}))
    return pd.concat(out).sort_values("timestamp")


def test_funding_edges_equal_an_independent_pandas_computation(tmp_path):
    from sabot.apps.funding import INPUT_SCHEMA, CarryJoin, FundingMonitor

    rows = _input_rows()
    batch = pa.RecordBatch.from_pylist(rows, schema=INPUT_SCHEMA)
    join = CarryJoin("binance", "binance-usdm")
    monitor = FundingMonitor("binance", "binance-usdm", {"binance": 10.0, "binance-usdm": 5.0},
                             min_edge_bps=0.0, output=tmp_path / "f.jsonl", every_row=True, join=join)
    for i in range(0, len(rows), 4):  # batch boundaries do not matter
        monitor.on_batch(batch.slice(i, 4))
    monitor.close()
    got = pd.DataFrame([json.loads(ln) for ln in (tmp_path / "f.jsonl").read_text().splitlines()])
    want = _expected_with_pandas(rows, 10.0, 5.0, 500_000_000, 10_000_000_000)
    assert len(got) == len(want) == 5
    assert got["timestamp_ns"].tolist() == want["timestamp"].astype("int64").tolist()
    np.testing.assert_allclose(got["gross_bps"], want["gross"], rtol=1e-12)
    np.testing.assert_allclose(got["net_bps"], want["net"], rtol=1e-12)
    np.testing.assert_allclose(got["carry_edge_bps"], want["carry"], rtol=1e-9)
    np.testing.assert_allclose(got["funding_apr"], want["apr"], rtol=1e-9)
    assert got["funding_hours"].tolist() == [8.0, 8.0, 8.0, 8.0, 1.0]
    assert got["is_opportunity"].tolist() == (want["net"] > 0).tolist()
    assert join.skipped == {"incomplete": 4, "unusable_quote": 1, "stale_quote": 2}
    assert join.records == {"spot": 6, "perp": 6, "funding": 3, "other": 1} and join.rollovers == 1
    assert set(got["spot_quote"]) == {"USDT"} == set(got["perp_quote"])


def test_funding_monitor_live_from_kafka_against_the_local_servers(kafka_broker, unique_topic, tmp_path):
    """Binance spot and USDⓈ-M servers -> collectors -> the embedded broker -> the funding
    monitor: every evaluated row's edge recomputed from the record's own quotes and rate."""
    from sabot.apps.funding import CarryJoin, FundingMonitor, input_stream
    from sabot.collectors.sinks import KafkaSink
    from sabot.sim.binance import BinanceSim
    from sabot.sim.binance_usdm import BinanceUsdmSim
    from sabot.venues.binance_usdm import PerpKafkaSink

    spot_topic, perp_topic = unique_topic("spot"), unique_topic("perp-ticker")
    fund_topic = funding_topic_for(perp_topic)
    for t in (spot_topic, perp_topic, fund_topic):
        kafka_broker.create_topic(t, partitions=1)
    bs = kafka_broker.bootstrap
    fees = {"binance": 10.0, "binance-usdm": 5.0}
    join = CarryJoin("binance", "binance-usdm")
    out = tmp_path / "carry.jsonl"
    monitor = FundingMonitor("binance", "binance-usdm", fees, output=out, every_row=True, join=join)
    stream = input_stream(bs, "binance", "binance-usdm", unique_topic("group"), from_beginning=True,
                          fast_groups=True, topics=(spot_topic, perp_topic, fund_topic))
    spot_sink, perp_sink = KafkaSink(bs, spot_topic), PerpKafkaSink(bs, perp_topic)
    stop = threading.Event()
    with BinanceSim(rate=40, seed=3) as spot_sim, \
            BinanceUsdmSim(rate=40, seed=3, funding_interval=1.0, base_rate=2e-3, mark_every=0.2) as perp_sim:
        threads = [threading.Thread(target=_collect_while, args=(c, s, sim.url, stop), daemon=True)
                   for c, s, sim in ((_spot_collector(), spot_sink, spot_sim),
                                     (BinanceUsdmCollector(["BTCUSDT"]), perp_sink, perp_sim))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 40
        try:
            for batch in stream:
                monitor.on_batch(batch)
                if (monitor.evaluations >= 40 and join.rollovers >= 1) or time.monotonic() > deadline:
                    break
        finally:
            stop.set()
            for t in threads:
                t.join(15)
            monitor.close()
    for s in (spot_sink, perp_sink):
        s.close(10)
    assert monitor.evaluations >= 40 and join.rollovers >= 1, monitor.summary_line("summary")
    assert perp_sink.produced_by_topic[fund_topic] > 0 and perp_sink.undelivered == 0
    recs = pd.DataFrame([json.loads(ln) for ln in out.read_text().splitlines()])
    assert len(recs) == monitor.evaluations
    gross = (recs["sell_price"] - recs["buy_price"]) / recs["buy_price"] * 1e4
    net = gross + recs["funding_rate"] * 1e4 - 2 * 15.0
    np.testing.assert_allclose(recs["gross_bps"], gross, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(recs["net_bps"], net, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(recs["edge_per_unit"], recs["buy_price"] * net / 1e4, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(recs["carry_edge_bps"], net * 24 / recs["funding_hours"] * 365, rtol=1e-9)
    assert (recs["funding_in_s"] > 0).all() and recs["is_opportunity"].eq(net > 0).all()
    # the funding interval is learnt from the rollover: one second
    assert np.isclose(recs["funding_hours"].iloc[-1], 1 / 3600)
    assert set(recs["buy_venue"]) == {"binance"} and set(recs["sell_venue"]) == {"binance-usdm"}


def _spot_collector():
    return get_venue("binance").collector_class(["BTCUSDT"])


def _collect_while(collector, sink, url, stop: threading.Event) -> None:
    async def main():
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        threading.Thread(target=lambda: (stop.wait(), loop.call_soon_threadsafe(done.set)),
                         daemon=True).start()
        await run_collector(collector, [sink], ConnectionSettings(url=url), done)

    asyncio.run(main())


def test_funding_command_reports_mistakes_in_one_line():
    from sabot.apps.funding import main

    assert main(["--spot", "binance-usdm", "--connect-timeout", "1"]) == 2
    assert main(["--perp", "binance", "--connect-timeout", "1"]) == 2
    assert main(["--fees", "binance=x", "--connect-timeout", "1"]) == 2
    assert main(["--tolerance-ms", "0", "--connect-timeout", "1"]) == 2


def test_demo_accounts_for_the_perpetual_and_names_each_loss(tmp_path):
    """The demo's summary of the perpetual part: Parquet files against the collector's count and
    the broker's, and what the funding monitor read against the broker's counts."""
    import argparse

    from sabot.demo import Demo
    from sabot.schema import exchange_schema

    def parquet(name: str, schema: pa.Schema, rows: int) -> None:
        pq.write_table(pa.table({f.name: pa.nulls(rows, f.type) for f in schema}), tmp_path / name)

    def funding_summary(read: dict) -> None:
        (tmp_path / "funding_summary.json").write_text(json.dumps({
            "records": read, "evaluations": 7, "opportunities": 1, "best_net_bps": 2.5,
            "rollovers": 1, "skipped": {}, "funding": {"BTC/USD": {"funding_rate": 1e-4}},
            "latency_ms_p50": 1.0, "latency_ms_p99": 2.0}))

    parquet("binance-usdm.parquet", exchange_schema("binance-usdm"), 40)
    parquet("binance-usdm-funding.parquet", FUNDING_SCHEMA, 10)
    demo = Demo(argparse.Namespace(data_dir=str(tmp_path), align="arrival"))
    assert demo.perps == ("binance-usdm",) and demo.funding_spot == "binance"
    demo.kafka_records = {"coinbase": 5, "kraken": 5, "binance": 30}
    demo.perp_kafka_records = {"binance-usdm-perp-ticker": 40, "binance-usdm-funding": 8}
    funding_summary({"spot": 30, "perp": 39, "funding": 8, "other": 0})
    summary: dict = {}
    lines = demo._perp_summary(summary, {"binance-usdm": 50}, {"binance-usdm": 0})
    assert demo.failures == [
        "collector binance-usdm lost 2 records on the way to Kafka: 10 in Parquet, 8 in topic "
        "binance-usdm-funding",
        "funding monitor did not read 1 of the 40 perp records"]
    assert summary["perps"]["binance-usdm"] == {"tickers": 40, "funding": 10, "kafka_tickers": 40,
                                                "kafka_funding": 8, "reconnects": 0}
    assert "1 opportunities in 7 evaluations" in lines[-1] and "1 funding rollovers" in lines[-1]
    clean = Demo(argparse.Namespace(data_dir=str(tmp_path), align="arrival"))
    clean.kafka_records = dict(demo.kafka_records)
    clean.perp_kafka_records = {"binance-usdm-perp-ticker": 40, "binance-usdm-funding": 10}
    funding_summary({"spot": 30, "perp": 40, "funding": 10, "other": 0})
    clean._perp_summary({}, {"binance-usdm": 50}, {})
    assert clean.failures == []
    # left out with a scenario (it scripts spot quotes only)
    assert Demo(argparse.Namespace(data_dir=str(tmp_path), align="arrival", scenario="s.jsonl")).perps == ()


def test_checkout_script_is_the_collect_command():
    proc = subprocess.run([sys.executable, str(REPO / "collectors" / "binance_usdm2parquet.py"), "--nope"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("binance_usdm2parquet.py: error:")


def test_funding_latency_summary_periodic_from_the_histogram_final_exact(tmp_path):
    """The funding monitor keeps its latencies in the shared buffer: the periodic summary reads
    the histogram (within a bin, 1.2 %), the final one numpy's exact percentiles."""
    from sabot.apps.funding import FundingMonitor

    monitor = FundingMonitor("binance", "binance-usdm", {"binance": 10.0, "binance-usdm": 5.0})
    values = list(np.random.default_rng(3).lognormal(1.0, 1.0, 5000))
    for i in range(0, len(values), 7):
        monitor.latencies.extend(values[i:i + 7])
    exact = monitor.summary(with_latencies=True)
    assert exact["latency_ms_p99"] == float(np.percentile(values, 99))
    assert exact["latencies_ms"] == pytest.approx(values)
    approx = monitor.summary(with_latencies=False)
    for q in (50, 99):
        assert approx[f"latency_ms_p{q}"] == pytest.approx(np.percentile(values, q), rel=0.013)
    monitor.close()
