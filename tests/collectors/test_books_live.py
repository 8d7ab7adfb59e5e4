"""The ``book`` channel live: each venue's collector against its local exchange server.

End to end (the real scripts, Parquet and the real embedded broker) with ``--channels
ticker,book``: the recorded book at the end equals the server's book; Kraken checksum faults
resubscribe the symbol (counted) and the book is right afterwards; Coinbase's ticker bid/ask are
the book's best levels at that moment.  In process: a Coinbase sequence gap resubscribes
``level2`` and the books are right afterwards.  Parser-level checks of the resubscribe messages,
and the unknown-channel usage error.
"""
from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import threading

import pyarrow.parquet as pq
import pytest

from sabot.book import KrakenBooks
from sabot.collectors import CoinbaseCollector, KrakenCollector
from sabot.collectors.base import BOOK, DATA
from sabot.collectors.books import BOOK_DEPTH, BOOK_SCHEMA
from sabot.collectors.connection import ConnectionSettings, Stats, run_collector
from sabot.collectors.sinks import ParquetSink
from sabot.sim import SIMULATORS
from sabot.sim.books import CoinbaseLevel2Feed, KrakenBookFeed, SimBook

from collector_helpers import FAST_ENV, REPO, collector_cmd, final_stats
from test_collectors_kafka import consume_all

SYMBOLS = {"kraken": ["BTC/USD", "ETH/USD", "USDT/USD"], "coinbase": ["BTC-USD", "ETH-USD"],
           "binance": ["BTCUSDT", "ETHUSDT"]}


def _settled(sim, messages: int, resyncs: int) -> bool:
    """Everything the server sent was read, and every resubscribe it answered was asked for."""
    return (sim.finished and messages == sim.messages_out
            and sim.book_subscribe_requests == 1 + resyncs)


def run_until_settled(exchange: str, sim, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run the collector until its status line shows every message the server sent as read and
    every book in sync, then stop it with SIGINT (waits on that, not on a clock)."""
    proc = subprocess.Popen(collector_cmd(exchange, sim.url, "--status-interval", "0.2", *args), env=FAST_ENV,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO)
    lines: list[str] = []
    settled = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r" status: messages=(\d+) .* books_waiting=(\d+)", line)
            # every message read, and no book waiting for a snapshot (so no resubscribe in flight)
            if m and sim.finished and int(m.group(1)) == sim.messages_out and m.group(2) == "0":
                settled.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert settled.wait(timeout), "".join(lines)[-3000:]
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout)
    stderr = "".join(lines)
    assert proc.returncode == 0, stderr[-3000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)


def assert_final_book_is_the_servers(sim, rows: list[dict], symbols: list[str]) -> None:
    for raw in symbols:
        last = [r for r in rows if r["raw_symbol"] == raw][-1]
        bids, asks = sim.book_levels(raw, BOOK_DEPTH)
        got_bids = [(last[f"bid_price_{i}"], last[f"bid_size_{i}"]) for i in range(1, BOOK_DEPTH + 1)]
        got_asks = [(last[f"ask_price_{i}"], last[f"ask_size_{i}"]) for i in range(1, BOOK_DEPTH + 1)]
        assert got_bids == bids and got_asks == asks, raw
        assert (last["bid"], last["bid_size"], last["ask"], last["ask_size"]) == sim.book_top(raw)


@pytest.mark.parametrize("exchange, fault_every", [("kraken", 25), ("coinbase", None), ("binance", 25)])
def test_ticker_and_book_to_parquet_and_kafka(exchange, fault_every, kafka_broker, unique_topic, tmp_path):
    ticker_topic, book_topic = unique_topic(exchange), unique_topic(exchange + "-book")
    for t in (ticker_topic, book_topic):
        kafka_broker.create_topic(t, partitions=3)
    out = tmp_path / "o.parquet"
    symbols = SYMBOLS[exchange]
    # paced, so that the book subscription (sent right after the ticker's) meets most quotes
    extra = {"stale_snapshots": 1} if exchange == "binance" else {}
    with SIMULATORS[exchange](rate=300, count=120, keep_sent=True, heartbeat_interval=3600,
                              book_fault_every=fault_every, **extra) as sim:
        rest = ["--rest-url", f"http://127.0.0.1:{sim.port}"] if exchange == "binance" else []
        proc = run_until_settled(exchange, sim, "-k", "-F", "-o", str(out), "--channels", "ticker,book", *rest,
                                 "--symbols", ",".join(symbols), "--bootstrap", kafka_broker.bootstrap,
                                 "--topic", ticker_topic, "--book-topic", book_topic)
        stats = final_stats(proc.stderr)
        book = pq.read_table(tmp_path / "o-book.parquet")
        assert book.schema == BOOK_SCHEMA
        rows = book.to_pylist()
        for r in rows:
            r["timestamp"], r["recv_timestamp"] = r["timestamp"].value, r["recv_timestamp"].value
        assert_final_book_is_the_servers(sim, rows, symbols)
        report = sim.report()
    # Coinbase: every top-of-book change is a ticker record too (the true BBO between trades)
    book_quotes = (sum(1 for r in rows if r["top_changed"] and r["bid"] is not None and r["ask"] is not None)
                   if exchange == "coinbase" else 0)
    assert sim.sent_count == 120 and stats["ticker"] == 120 + book_quotes and stats["book"] == len(rows)
    assert stats["rejected"] == 0 and stats["skipped"] == 0
    assert 60 <= sim.book_updates_sent <= 120
    resyncs = stats.get("book_resyncs", 0)
    if exchange == "binance":  # a lost event is a hole in the update ids: a new REST snapshot
        # (a hole among events a snapshot then covers is no hole: those events are dropped)
        assert report["book_faults"] == sim.book_updates_sent // fault_every >= 2
        assert 1 <= resyncs <= report["book_faults"] and "does not follow update id" in proc.stderr
        assert sim.stale_served == 1 and sim.rest_requests >= len(symbols) + resyncs
    elif fault_every:
        # each wrong checksum on a book in sync resubscribes it (one on a dropped book is skipped)
        assert report["book_faults"] == sim.book_updates_sent // fault_every
        assert 1 <= resyncs <= report["book_faults"]
        assert sim.book_snapshots_sent == len(symbols) + resyncs
        assert "book_resyncs=" in proc.stderr and "book checksum" in proc.stderr
    else:
        assert resyncs == 0 and sim.book_snapshots_sent == len(symbols)
    tob = [r for r in rows if r["top_changed"]]
    assert 0 < len(tob) < len(rows)
    canonical = {"BTC-USD": "BTC/USD", "ETH-USD": "ETH/USD", "BTC/USD": "BTC/USD", "ETH/USD": "ETH/USD", "USDT/USD": "USDT/USD",
                 "BTCUSDT": "BTC/USDT", "ETHUSDT": "ETH/USDT"}
    assert all(r["exchange"] == exchange and r["symbol"] == canonical[r["raw_symbol"]] for r in rows)
    msgs = consume_all(kafka_broker.bootstrap, book_topic, len(rows))
    values = [json.loads(m.value()) for m in msgs]
    assert len(values) == len(rows)
    assert all(m.key().decode() == v["symbol"] for m, v in zip(msgs, values))
    key = lambda r: (r["raw_symbol"], r["recv_timestamp"], r["bid_price_1"], r["ask_size_10"])  # noqa: E731
    assert sorted(map(key, values), key=str) == sorted(map(key, rows), key=str)
    if exchange == "coinbase":
        assert_ticker_follows_book(pq.read_table(out).to_pylist(), rows, sim)


def assert_ticker_follows_book(tickers: list[dict], book_rows: list[dict], sim) -> None:
    """Each ticker record's bid/ask are the book's best levels when it was received, not the
    ticker channel's own best bid/ask (the server's book moves without trades)."""
    sent_bids = {json.loads(t)["events"][0]["tickers"][0]["best_bid"] for t, is_data in sim.sent if is_data}
    from_book = [t for t in tickers if t["sequence"] is None]
    tickers = [t for t in tickers if t["sequence"] is not None]
    assert len(tickers) == 120
    # one ticker record per change of the best bid or offer, with the book's levels and time
    tob = [r for r in book_rows if r["top_changed"] and r["bid"] is not None and r["ask"] is not None]
    assert [(t["raw_symbol"], t["timestamp"].value, t["bid"], t["bid_size"], t["ask"], t["ask_size"])
            for t in from_book] == [(r["raw_symbol"], r["timestamp"], r["bid"], r["bid_size"], r["ask"],
                                     r["ask_size"]) for r in tob]
    followed = 0
    for t in tickers:
        recv = t["recv_timestamp"].value
        before = [r for r in book_rows if r["raw_symbol"] == t["raw_symbol"] and r["recv_timestamp"] <= recv]
        if not before:  # received before the book's snapshot: the ticker channel's own values
            assert str(t["bid"]) in sent_bids
            continue
        last = before[-1]
        assert (t["bid"], t["bid_size"], t["ask"], t["ask_size"]) == (
            last["bid"], last["bid_size"], last["ask"], last["ask_size"])
        followed += str(t["bid"]) not in sent_bids
    assert followed >= 50  # the ticker channel's own values would be these, the book's are not


def test_coinbase_sequence_gap_resubscribes_and_the_book_is_right_afterwards(tmp_path):
    symbols = SYMBOLS["coinbase"]
    stats = Stats()
    sinks = {ch: [ParquetSink(tmp_path / f"{ch}.parquet", "coinbase", channel=ch)] for ch in ("ticker", "book")}

    async def main(sim) -> None:
        stop = asyncio.Event()
        collector = CoinbaseCollector(symbols, channels=["ticker", "book"])
        task = asyncio.create_task(run_collector(
            collector, sinks, ConnectionSettings(url=sim.url, status_interval=3600), stop, stats))
        while not _settled(sim, stats.messages, stats.book_resyncs):
            assert not task.done()
            await asyncio.sleep(0.02)
        stop.set()
        await task

    with SIMULATORS["coinbase"](rate=300, count=100, heartbeat_interval=3600, book_fault_every=20) as sim:
        asyncio.run(main(sim))
        for group in sinks.values():
            group[0].close()
        rows = pq.read_table(tmp_path / "book.parquet").to_pylist()
        assert_final_book_is_the_servers(sim, rows, symbols)
    faults = sim.book_faults_sent
    assert faults == sim.book_updates_sent // 20 >= 2
    assert stats.book_resyncs == faults  # every gap is seen, whether the books were in sync or not
    assert sim.book_subscribe_requests == 1 + faults and sim.book_snapshots_sent == 2 * (1 + faults)
    assert stats.rejected == 0 and stats.skipped == 0
    tickers = pq.read_table(tmp_path / "ticker.parquet").to_pylist()
    tob = sum(1 for r in rows if r["top_changed"] and r["bid"] is not None and r["ask"] is not None)
    assert sum(t["sequence"] is not None for t in tickers) == 100  # the ticker frames
    assert stats.by_channel["ticker"] == len(tickers) == 100 + tob and f"book_resyncs={faults}" in stats.line()


def test_kraken_checksum_mismatch_asks_for_the_symbols_book_again():
    c = KrakenCollector(["BTC/USD", "ETH/USD"], channels=["book"])
    feed = KrakenBookFeed(SimBook(seed=4, price_decimals=1), "ETH/USD")
    first = c.parse(feed.snapshot(), 10)
    assert first.kind == BOOK and len(first.records) == 1 and first.records[0]["top_changed"]
    assert c.parse(feed.update(bad_checksum=True), 11).records == [] and c.book_resyncs == 1
    assert [json.loads(m) for m in c.outbox] == [
        {"method": "unsubscribe", "params": {"channel": "book", "symbol": ["ETH/USD"], "depth": 10}, "req_id": 4},
        {"method": "subscribe", "params": {"channel": "book", "symbol": ["ETH/USD"], "depth": 10,
                                           "snapshot": True}, "req_id": 3}]
    assert c.parse(feed.update(), 12).records == []  # dropped until the new snapshot
    again = c.parse(feed.snapshot(), 13)
    assert again.records and again.records[-1]["bid"] == feed.book.sorted_bids()[0][0] / 10
    reference = KrakenBooks(10)
    reference.on_message(feed.snapshot())
    assert c.books.book("ETH/USD").levels("bid") == reference.book("ETH/USD").levels("bid")


def test_coinbase_ticker_takes_the_books_best_levels():
    c = CoinbaseCollector(["BTC-USD"], channels=["ticker", "book"])
    feed = CoinbaseLevel2Feed(SimBook(seed=5), "BTC-USD")
    ticker = ('{"channel":"ticker","client_id":"","timestamp":"2026-12-01T00:00:00Z","sequence_num":%d,'
              '"events":[{"type":"update","tickers":[{"type":"ticker","product_id":"BTC-USD","price":"1",'
              '"volume_24_h":"2","low_24_h":"1","high_24_h":"1","low_52_w":"1","high_52_w":"1",'
              '"price_percent_chg_24_h":"0","best_bid":"50","best_bid_quantity":"1","best_ask":"51",'
              '"best_ask_quantity":"1"}]}]}')
    assert c.parse(ticker % 0, 1).records[0]["bid"] == 50.0  # no book yet: the ticker's own values
    feed.counter[0] = 1
    assert c.parse(feed.snapshot(), 2).kind == BOOK
    for _ in range(5):
        c.parse(feed.update(), 3)
    rec = c.parse(ticker % feed.counter[0], 4)
    assert rec.kind == DATA
    (bp, bq), (ap, aq) = feed.book.sorted_bids()[0], feed.book.sorted_asks()[0]
    assert (rec.records[0]["bid"], rec.records[0]["bid_size"], rec.records[0]["ask"],
            rec.records[0]["ask_size"]) == (bp / 100, bq / 1e8, ap / 100, aq / 1e8)
    c.parse(ticker % (feed.counter[0] + 5), 5)  # frames lost: a gap
    assert c.book_resyncs == 1 and len(c.outbox) == 2
    assert c.parse(ticker % (feed.counter[0] + 6), 6).records[0]["bid"] == 50.0  # out of sync


def test_unknown_channel_is_one_line_and_exit_2(capsys):
    from sabot.apps.collect import main

    with pytest.raises(SystemExit) as exc:
        main("coinbase", ["--channels", "ticker,book,orders"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown channel 'orders'; accepted: ticker, trades, book" in err and "--channels" in err
