"""Each collector script end to end against its local exchange server, to Parquet; faults and signals."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import polars as pl
import pyarrow.parquet as pq
import pytest
import websockets

from sabot.collectors.sinks import recover_parts
from sabot.schema import exchange_schema
from sabot.sim import SIMULATORS, BinanceSim, CoinbaseSim, KrakenSim

from collector_helpers import DEFAULT_SYMBOLS, FAST_ENV, REPO, assert_records_match, collector_cmd, final_stats, read_rows, run_collector

EXCHANGES = ["coinbase", "kraken", "binance"]


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_collector_to_parquet(exchange, tmp_path):
    out = tmp_path / f"{exchange}.parquet"
    with SIMULATORS[exchange](rate=0, count=300, keep_sent=True) as sim:
        proc = run_collector(exchange, sim.url, "-F", "-o", str(out), "--row-group-size", "64")
    assert sim.sent_count == 300
    rows = read_rows(out)
    assert_records_match(exchange, rows, sim.sent)
    assert {r["symbol"] for r in rows} == DEFAULT_SYMBOLS[exchange]
    assert {r["exchange"] for r in rows} == {exchange}
    assert all(r["recv_timestamp"] >= r["timestamp"] - 10**9 for r in rows)
    pf = pq.ParquetFile(out)
    assert pf.schema_arrow == exchange_schema(exchange)
    assert pf.num_row_groups >= 300 // 64
    ex_col = pf.schema_arrow.names.index("exchange")
    assert pf.metadata.row_group(0).column(ex_col).has_dictionary_page
    df = pl.read_parquet(out)
    assert df.height == 300 and df["symbol"].n_unique() == len(DEFAULT_SYMBOLS[exchange])
    if exchange == "coinbase":  # the polars read a user does first
        cb = pl.read_parquet(out)
        sel = cb.select(pl.col("parent_timestamp"), pl.col("product_id"))
        assert sel.height == 300 and set(sel["product_id"]) == {"BTC-USD", "ETH-USD"}
    stats = final_stats(proc.stderr)
    assert stats["records"] == 300 and stats["skipped"] == 0 and stats["reconnects"] == 0
    subscribed = {"coinbase": "Subscribed; streaming to Parquet file",
                  "kraken": "✅ Subscription confirmed", "binance": "Connected! Streaming to Parquet..."}[exchange]
    assert subscribed in proc.stderr
    assert not (tmp_path / f"{exchange}.parquet.parts").exists()


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_twenty_drops_reconnect_and_lose_nothing(exchange, tmp_path):
    out = tmp_path / "out.parquet"
    with SIMULATORS[exchange](rate=0, count=420, drop_every=20, keep_sent=True) as sim:
        proc = run_collector(exchange, sim.url, "-F", "-o", str(out), duration=3.0)
    assert sim.drops == 20 and sim.subscriptions == 21
    assert_records_match(exchange, read_rows(out), sim.sent)
    stats = final_stats(proc.stderr)
    assert stats["reconnects"] == 20 and stats["records"] == 420
    assert "reconnected (#20) after a gap of" in proc.stderr


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_thousand_malformed_frames_counted(exchange, tmp_path):
    out = tmp_path / "out.parquet"
    with SIMULATORS[exchange](rate=0, count=50, malformed=1000, keep_sent=True) as sim:
        proc = run_collector(exchange, sim.url, "-F", "-o", str(out))
    stats = final_stats(proc.stderr)
    assert stats["skipped"] == 1000 and stats["records"] == 50
    assert_records_match(exchange, read_rows(out), sim.sent)
    assert proc.stderr.count("WARNING sabot.collectors: " + exchange + ": skipped frame") == 5  # first few loud


@pytest.mark.parametrize("exchange, text", [
    ("coinbase", "authentication failure"),
    ("kraken", "Currency pair not supported XBT/USD"),
    ("binance", "Invalid request: invalid stream"),
])
def test_exchange_error_logged_with_its_text(exchange, text, tmp_path):
    with SIMULATORS[exchange](rate=0, count=10, error=text) as sim:
        proc = run_collector(exchange, sim.url, "-F", "-o", str(tmp_path / "o.parquet"), duration=1.5)
    assert f"ERROR sabot.collectors: {exchange} exchange error: " in proc.stderr
    assert text in proc.stderr
    assert final_stats(proc.stderr)["exchange_errors"] == 1


def test_kraken_rejects_v1_symbol_and_keeps_streaming(tmp_path):
    out = tmp_path / "o.parquet"
    with KrakenSim(rate=0, count=20) as sim:
        proc = run_collector("kraken", sim.url, "-F", "-o", str(out), "--symbols", "XBT/USD,ETH/USD", duration=1.5)
    assert "Currency pair not supported XBT/USD" in proc.stderr
    assert {r["symbol"] for r in read_rows(out)} == {"ETH/USD"}


def test_silent_socket_closed_by_watchdog(tmp_path):
    out = tmp_path / "o.parquet"
    with KrakenSim(rate=0, count=100, silence_after=7, keep_sent=True) as sim:
        proc = run_collector("kraken", sim.url, "-F", "-o", str(out), "--stale-after", "0.5", duration=2.5)
    assert "closing stale connection" in proc.stderr
    assert sim.connections >= 2
    assert_records_match("kraken", read_rows(out), sim.sent)
    assert sim.sent_count == 7


def test_binance_ping_answered_shutdown_and_lifetime_reconnect(tmp_path):
    out = tmp_path / "o.parquet"
    with BinanceSim(rate=100, count=150, ping_interval=0.2, shutdown_after=40, lifetime=0.8,
                    keep_sent=True) as sim:
        proc = run_collector("binance", sim.url, "-F", "-o", str(out), duration=3.0)
    assert sim.pongs >= 3  # websockets answers the server's ping frames
    assert "server announced serverShutdown; reconnecting" in proc.stderr
    assert sim.drops >= 2  # serverShutdown + at least one lifetime (24 h) drop
    stats = final_stats(proc.stderr)
    assert stats["reconnects"] == sim.subscriptions - 1 >= 2
    assert_records_match("binance", read_rows(out), sim.sent)
    assert all(s == ["btcusdt@bookTicker", "btcusdt@ticker", "ethusdt@bookTicker", "ethusdt@ticker"]
               for s in sim.streams_seen)


def test_coinbase_subscribe_deadline():
    async def silent_client(url: str) -> int:
        async with websockets.connect(url) as ws:
            try:
                await asyncio.wait_for(ws.recv(), 5)
            except websockets.ConnectionClosed as exc:
                return exc.rcvd.code
        return -1

    with CoinbaseSim(subscribe_deadline=0.3) as sim:
        assert asyncio.run(silent_client(sim.url)) == 1008
        assert sim.subscriptions == 0


def _wait_for_parts(parts_dir, n: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if parts_dir.is_dir() and len(list(parts_dir.glob("*.parquet"))) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"collector wrote fewer than {n} parts in {timeout} s")


@pytest.mark.parametrize("exchange, sig", [("coinbase", signal.SIGINT), ("binance", signal.SIGTERM),
                                           ("kraken", signal.SIGINT)])
def test_signal_during_writing_gives_valid_parquet(exchange, sig, tmp_path):
    out = tmp_path / "o.parquet"
    with SIMULATORS[exchange](rate=400, keep_sent=True) as sim:
        proc = subprocess.Popen(collector_cmd(exchange, sim.url, "-F", "-o", str(out), "--row-group-size", "50"),
                                env=FAST_ENV, cwd=REPO, stderr=subprocess.PIPE, text=True)
        _wait_for_parts(out.with_name(out.name + ".parts"), 2)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr[-2000:]
    rows = read_rows(out)
    assert len(rows) == final_stats(stderr)["records"] >= 100
    assert_records_match(exchange, rows, sim.sent[: _frames_for(exchange, sim.sent, len(rows))])
    assert pl.read_parquet(out).height == len(rows)


def _frames_for(exchange: str, frames: list[tuple[str, bool]], n_records: int) -> int:
    """How many leading frames produce ``n_records`` records (one data frame = one record)."""
    seen = 0
    for i, (_, is_data) in enumerate(frames):
        seen += is_data
        if seen == n_records:
            return i + 1
    return len(frames)


def test_sigkill_loses_at_most_the_open_row_group(tmp_path):
    out = tmp_path / "o.parquet"
    with CoinbaseSim(rate=400, keep_sent=True) as sim:
        proc = subprocess.Popen(collector_cmd("coinbase", sim.url, "-F", "-o", str(out), "--row-group-size", "40",
                                                "--row-group-seconds", "600"),
                                env=FAST_ENV, cwd=REPO, stderr=subprocess.DEVNULL)
        parts_dir = out.with_name(out.name + ".parts")
        _wait_for_parts(parts_dir, 3)
        proc.kill()
        proc.wait(10)
    assert not out.exists()
    parts = sorted(parts_dir.glob("*.parquet"))
    assert all(pq.ParquetFile(p).metadata.num_rows == 40 for p in parts)  # every closed part is whole
    n = recover_parts(out, exchange_schema("coinbase"))
    assert n == 40 * len(parts) and n >= 120
    rows = read_rows(out)
    assert_records_match("coinbase", rows, sim.sent[: _frames_for("coinbase", sim.sent, n)])
    # the sent frames beyond the recovered ones are at most the unflushed buffer plus what was in flight
    assert sim.sent_count - n < 40 + 400
