"""The arbitrage monitor on Coinbase's true best bid/offer: the book moves without trades.

A local Coinbase server whose ticker channel repeats one wide quote (its best bid/ask move on
trades only, and there are none) while its ``level2`` book moves four steps per ticker frame; a
local Kraken server quoting a fixed BTC/USD inside that wide quote.  The collectors record into
the real embedded broker, the monitor reads the ticker topics.  The ticker channel's own quote
never crosses Kraken's, so every opportunity the monitor reports comes from the book, and the
Coinbase prices it decided on are the book's best levels the collector recorded.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sabot.collectors.connection import ConnectionSettings, Stats, run_collector
from sabot.collectors.sinks import KafkaSink, ParquetSink
from sabot.venues import get_venue
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
TICKS = 40
CB_TICKER = (64_900.00, 65_100.00)   # the ticker channel's wide quote: never crosses Kraken's
KR_QUOTE = (64_999.995, 64_999.995)   # inside it; the book (starting at 65,000) drifts across it


def write_scenario(path: Path) -> None:
    lines = []
    for k in range(TICKS):
        t = round(0.3 + k * 0.05, 3)
        lines.append({"t": t, "exchange": "kraken", "symbol": "BTC/USD", "bid": KR_QUOTE[0], "ask": KR_QUOTE[1]})
        lines.append({"t": t + 0.01, "exchange": "coinbase", "symbol": "BTC/USD", "bid": CB_TICKER[0],
                      "ask": CB_TICKER[1]})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def collect(sims: dict, bootstrap: str, tmp_path: Path) -> dict:
    """The Coinbase (ticker + book) and Kraken (ticker) collectors until every frame is read."""
    channels = {"coinbase": ["ticker", "book"], "kraken": ["ticker"]}
    sinks, stats, kafkas = {}, {}, []
    for v, chans in channels.items():
        sinks[v] = {"ticker": [KafkaSink(bootstrap, get_venue(v).ticker_topic),
                               ParquetSink(tmp_path / f"{v}.parquet", v)]}
        kafkas.append(sinks[v]["ticker"][0])
        if "book" in chans:
            sinks[v]["book"] = [ParquetSink(tmp_path / f"{v}-book.parquet", v, channel="book")]
        stats[v] = Stats()

    async def main() -> None:
        stops = {v: asyncio.Event() for v in channels}
        tasks = [asyncio.create_task(run_collector(
            get_venue(v).collector_class(["BTC-USD"] if v == "coinbase" else ["BTC/USD"], channels=chans),
            sinks[v], ConnectionSettings(url=sims[v].url, status_interval=3600), stops[v], stats[v]))
            for v, chans in channels.items()]
        deadline = time.monotonic() + 60
        while not all(sims[v].finished and stats[v].messages == sims[v].messages_out for v in channels):
            assert time.monotonic() < deadline and not any(t.done() for t in tasks)
            await asyncio.sleep(0.02)
        for e in stops.values():
            e.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    for group in sinks.values():
        for sink_list in group.values():
            for sink in sink_list:
                sink.close()
    assert all(k.undelivered == 0 for k in kafkas if hasattr(k, "undelivered"))
    return stats


def test_the_monitors_coinbase_quote_follows_the_book(tmp_path):
    from sabot.broker import TICKER_TOPICS, EmbeddedBroker
    from sabot.sim import SIMULATORS

    scenario = tmp_path / "scenario.jsonl"
    write_scenario(scenario)
    out, summary = tmp_path / "opps.jsonl", tmp_path / "summary.json"
    with EmbeddedBroker(port=0, topics=TICKER_TOPICS, partitions=1) as broker:
        with SIMULATORS["coinbase"](scenario=scenario, book_updates_per_quote=4, heartbeat_interval=3600) as cb, \
                SIMULATORS["kraken"](scenario=scenario) as kr:
            collect({"coinbase": cb, "kraken": kr}, broker.bootstrap, tmp_path)
        tickers = pq.read_table(tmp_path / "coinbase.parquet").to_pylist()
        n_kraken = pq.read_table(tmp_path / "kraken.parquet").num_rows
        proc = subprocess.Popen(
            [sys.executable, "-m", "sabot", "monitor", "--bootstrap", broker.bootstrap, "--fees", "0",
             "--from-beginning", "--fast-groups", "--output", str(out), "--summary-json", str(summary)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})

        def records() -> dict:
            try:
                return json.loads(summary.read_text())["records"]
            except (OSError, ValueError, KeyError):
                return {}
        try:
            assert wait_for(lambda: records().get("coinbase") == len(tickers)
                            and records().get("kraken") == n_kraken, 60), records()
        finally:
            proc.send_signal(signal.SIGINT)
            text, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, text[-3000:]

    book = [r for r in pq.read_table(tmp_path / "coinbase-book.parquet").to_pylist() if r["top_changed"]]
    from_frames = [t for t in tickers if t["sequence"] is not None]
    from_book = [t for t in tickers if t["sequence"] is None]
    assert len(from_frames) == TICKS and len(from_book) == len(book) >= 10
    by_recv = {t["recv_timestamp"].value: t for t in tickers}
    opens = [json.loads(line) for line in out.read_text().splitlines()]
    opens = [o for o in opens if o["event"] == "open"]
    assert opens, "the book crosses Kraken's quote: the monitor must see it"
    on_book_quotes = 0
    for o in opens:
        side, price_key, kr_price = (("buy", "ask", KR_QUOTE[0]) if o["buy_venue"] == "coinbase"
                                     else ("sell", "bid", KR_QUOTE[1]))
        assert {o["buy_venue"], o["sell_venue"]} == {"coinbase", "kraken"}
        quote = by_recv[o[f"{side}_recv_ns"]]       # the Coinbase quote decided on
        assert o[f"{side}_price"] == quote[price_key]
        assert quote[price_key] not in CB_TICKER    # the book's level, never the ticker's own
        assert (quote[price_key] < kr_price) if side == "buy" else (quote[price_key] > kr_price)
        on_book_quotes += quote["sequence"] is None
    # most book moves happen between ticker frames: so do most openings
    assert on_book_quotes > len(opens) / 2, (on_book_quotes, len(opens))
