"""Trades from every venue, the channels flag, and which clock each record's timestamp is.

Parsers against captured Binance frames and frames in each venue's documented shape (value for
value); the dedup of snapshot trades; trade validation; each venue end to end against its local
exchange server with ``--channels ticker,trades`` into Parquet and the real embedded broker,
counts equal to what the server sent; the unknown-channel usage error.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sabot.collectors import BinanceCollector, CoinbaseCollector, KrakenCollector
from sabot.collectors.base import DATA, ERROR, TRADES, UNKNOWN
from sabot.collectors.sinks import recover_parts
from sabot.collectors.validate import TradeValidator
from sabot.schema import TRADE_SCHEMA, exchange_schema
from sabot.sim import SIMULATORS

from collector_helpers import FAST_ENV, REPO, collector_cmd, final_stats
from test_collectors_kafka import consume_all

SAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "exchange_samples"


def sample_lines(name: str) -> list[str]:
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"shared exchange sample {name} not found at {SAMPLES} (optional reference data)")
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def ms(n: int) -> int:
    return n * 1_000_000


# -- parsers --------------------------------------------------------------------------------

def test_binance_captured_aggtrades_value_for_value():
    c = BinanceCollector(["NKNUSDT", "LRCBTC"], channels=["trades"])
    got = [c.parse(line, 7) for line in sample_lines("binance_combined_aggtrade.jsonl")]
    assert [p.kind for p in got] == [TRADES, TRADES]
    assert [p.records for p in got] == [
        [{"exchange": "binance", "symbol": "NKN/USDT", "raw_symbol": "NKNUSDT", "timestamp": ms(1633998523963),
          "recv_timestamp": 7, "price": 0.3528, "size": 58.0, "side": "buy", "trade_id": "15683430",
          "sequence": None, "time_source": "exchange"}],
        [{"exchange": "binance", "symbol": "LRC/BTC", "raw_symbol": "LRCBTC", "timestamp": ms(1633998534486),
          "recv_timestamp": 7, "price": 0.00000638, "size": 177.0, "side": "buy", "trade_id": "9213679",
          "sequence": None, "time_source": "exchange"}],
    ]


def test_binance_documented_trade_buyer_maker_is_a_sell_and_bookticker_is_receive_time():
    c = BinanceCollector(["BNBBTC", "BNBUSDT"], channels=["ticker", "trades"])
    lines = {json.loads(ln).get("e"): ln for ln in sample_lines("binance_raw_doc_examples.jsonl")}
    trade = c.parse(lines["trade"], 5)
    assert trade.kind == TRADES and trade.records == [{
        "exchange": "binance", "symbol": "BNB/BTC", "raw_symbol": "BNBBTC", "timestamp": ms(1672515782136),
        "recv_timestamp": 5, "price": 0.001, "size": 100.0, "side": "sell", "trade_id": "12345",
        "sequence": None, "time_source": "exchange"}]
    assert c.parse(lines["trade"], 6).records == []  # the same trade id again: recorded once
    agg = BinanceCollector(["BNBBTC"], channels=["trades"]).parse(lines["aggTrade"], 5)
    assert agg.kind == TRADES and agg.records[0]["side"] == "sell" and agg.records[0]["trade_id"] == "12345"
    book = c.parse(lines[None], 99)
    assert book.kind == DATA and book.records[0]["timestamp"] == 99 and book.records[0]["time_source"] == "receive"
    # a quiet market's trades stream may be silent for minutes: that is no sign of an unlisted symbol
    assert c.rejects_by_silence and not BinanceCollector(channels=["trades"]).rejects_by_silence
    assert BinanceCollector(channels=["trades"]).url() == (
        "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/ethusdt@trade")
    for line in sample_lines("binance_combined_bookticker.jsonl")[:3]:
        r = BinanceCollector(channels=["ticker", "trades"]).parse(line, 42)
        assert r.kind == DATA and r.records[0]["time_source"] == "receive"


def test_coinbase_market_trades_maker_side_reversed_oldest_first_and_snapshot_dedup():
    frame = {"channel": "market_trades", "client_id": "", "timestamp": "2026-09-30T02:39:53.788655Z",
             "sequence_num": 9, "events": [{"type": "snapshot", "trades": [
                 {"trade_id": "812093412", "product_id": "BTC-USD", "price": "64281.71", "size": "0.00021",
                  "side": "SELL", "time": "2026-09-30T02:39:53.512Z"},
                 {"trade_id": "812093411", "product_id": "BTC-USD", "price": "64281.7", "size": "0.5",
                  "side": "BUY", "time": "2026-09-30T02:39:53.0401Z"}]}]}
    c = CoinbaseCollector(channels=["ticker", "trades"])
    first = c.parse(json.dumps(frame), 1)
    assert first.kind == TRADES
    assert first.records == [
        {"exchange": "coinbase", "symbol": "BTC/USD", "raw_symbol": "BTC-USD",
         "timestamp": pd.Timestamp("2026-09-30T02:39:53.0401Z").value, "recv_timestamp": 1,
         "price": 64281.7, "size": 0.5, "side": "sell", "trade_id": "812093411", "sequence": 9,
         "time_source": "exchange"},
        {"exchange": "coinbase", "symbol": "BTC/USD", "raw_symbol": "BTC-USD",
         "timestamp": pd.Timestamp("2026-09-30T02:39:53.512Z").value, "recv_timestamp": 1,
         "price": 64281.71, "size": 0.00021, "side": "buy", "trade_id": "812093412", "sequence": 9,
         "time_source": "exchange"},
    ]
    # the snapshot after a reconnect repeats them, plus one new trade: only that one is recorded
    frame["events"][0]["trades"].insert(0, {"trade_id": "812093413", "product_id": "BTC-USD",
                                            "price": "64282", "size": "1", "side": "BUY",
                                            "time": "2026-09-30T02:39:54Z"})
    again = c.parse(json.dumps(frame), 2)
    assert [r["trade_id"] for r in again.records] == ["812093413"] and c.trade_ids.duplicates == 2
    # a ticker-only collector does not take trades
    assert CoinbaseCollector().parse(json.dumps(frame), 3).kind == UNKNOWN
    subs = [json.loads(m)["channel"] for m in c.subscribe_messages()]
    assert subs == ["ticker", "market_trades", "heartbeats"]
    assert [json.loads(m)["channel"] for m in CoinbaseCollector().subscribe_messages()] == ["ticker", "heartbeats"]


def test_kraken_trade_taker_side_and_snapshot_dedup():
    frame = {"channel": "trade", "type": "snapshot", "data": [
        {"symbol": "ETH/USD", "side": "sell", "price": 3401.25, "qty": 0.75, "ord_type": "market",
         "trade_id": 4665846, "timestamp": "2026-09-25T17:48:26.844359Z"},
        {"symbol": "ETH/USD", "side": "buy", "price": 3401.3, "qty": 1.5e-05, "ord_type": "limit",
         "trade_id": 4665847, "timestamp": "2026-09-25T17:48:26.900001Z"}]}
    c = KrakenCollector(["ETH/USD"], channels=["trades"])
    got = c.parse(json.dumps(frame), 3)
    assert got.kind == TRADES and got.records == [
        {"exchange": "kraken", "symbol": "ETH/USD", "raw_symbol": "ETH/USD",
         "timestamp": pd.Timestamp("2026-09-25T17:48:26.844359Z").value, "recv_timestamp": 3,
         "price": 3401.25, "size": 0.75, "side": "sell", "trade_id": "4665846", "sequence": None,
         "time_source": "exchange"},
        {"exchange": "kraken", "symbol": "ETH/USD", "raw_symbol": "ETH/USD",
         "timestamp": pd.Timestamp("2026-09-25T17:48:26.900001Z").value, "recv_timestamp": 3,
         "price": 3401.3, "size": 1.5e-05, "side": "buy", "trade_id": "4665847", "sequence": None,
         "time_source": "exchange"}]
    assert c.parse(json.dumps(frame), 4).records == []  # the same snapshot again: nothing twice
    sub = [json.loads(m) for m in c.subscribe_messages()]
    assert sub == [{"method": "subscribe", "params": {"channel": "trade", "symbol": ["ETH/USD"], "snapshot": True},
                    "req_id": 2}]
    ticker = {"channel": "ticker", "type": "update", "data": [{"symbol": "ETH/USD", "bid": 1.0, "ask": 2.0,
                                                               "bid_qty": 1.0, "ask_qty": 1.0}]}
    rec = KrakenCollector(["ETH/USD"]).parse(json.dumps(ticker), 11).records[0]
    assert rec["timestamp"] == 11 and rec["time_source"] == "receive"  # no event time in the frame
    ticker["data"][0]["timestamp"] = "2026-09-25T17:48:26.844359Z"
    assert KrakenCollector(["ETH/USD"]).parse(json.dumps(ticker), 11).records[0]["time_source"] == "exchange"


def test_a_frame_that_fails_midway_marks_no_trade_as_recorded():
    c = KrakenCollector(["ETH/USD"], channels=["trades"])
    good = {"symbol": "ETH/USD", "side": "buy", "price": 1.0, "qty": 1.0, "trade_id": 1,
            "timestamp": "2026-09-25T17:48:26Z"}
    bad = {"channel": "trade", "type": "update", "data": [good, {"symbol": "ETH/USD"}]}
    assert c.parse(json.dumps(bad), 1).kind == UNKNOWN
    ok = c.parse(json.dumps({"channel": "trade", "type": "snapshot", "data": [good]}), 2)
    assert [r["trade_id"] for r in ok.records] == ["1"]


def test_trade_validation_names_field_and_value():
    now = pd.Timestamp("2026-09-25T17:48:30Z").value
    v = TradeValidator({"ETH/USD": "ETH/USD"}, now_ns=lambda: now)
    rec = {"exchange": "kraken", "symbol": "ETH/USD", "raw_symbol": "ETH/USD", "timestamp": now - 1,
           "recv_timestamp": now, "price": 10.0, "size": 1.0, "side": "buy", "trade_id": "7",
           "sequence": None, "time_source": "exchange"}
    assert v.check(rec) is None
    assert v.check({**rec, "side": "bid"}) == ("invalid_side", "side='bid' is not 'buy' or 'sell'")
    assert v.check({**rec, "price": float("nan")}) == ("non_finite", "price=nan is not finite")
    assert v.check({**rec, "size": 0.0}) == ("non_positive", "size=0.0 is not positive")
    assert v.check({**rec, "size": None}) == ("missing", "size=None is required")
    assert v.check({**rec, "price": True}) == ("boolean", "price=True is a boolean, not a number")
    assert v.check({**rec, "trade_id": None}) == ("missing", "trade_id=None is not an identifier")
    assert v.check({**rec, "raw_symbol": "BTC/USD"})[0] == "unsubscribed_symbol"
    assert v.check({**rec, "timestamp": now + 10 ** 12})[0] == "timestamp_ahead"
    # every row the parsers make fits the trade schema
    pa.Table.from_pylist([rec], schema=TRADE_SCHEMA)


def test_ticker_parts_written_before_time_source_still_combine(tmp_path):
    out = tmp_path / "t.parquet"
    parts = tmp_path / "t.parquet.parts"
    parts.mkdir()
    new = exchange_schema("kraken")
    old = pa.schema([f for f in new if f.name != "time_source"])
    row = {"exchange": "kraken", "symbol": "BTC/USD", "raw_symbol": "BTC/USD", "timestamp": 1, "recv_timestamp": 2,
           "bid": 1.0, "ask": 2.0, "bid_size": 1.0, "ask_size": 1.0}
    pq.write_table(pa.Table.from_pylist([row], schema=old), parts / "0001.parquet")
    assert recover_parts(out, new) == 1
    t = pq.read_table(out)
    assert t.schema == new and t.column("time_source").to_pylist() == [None]


# -- end to end -----------------------------------------------------------------------------

def run_until_stored(exchange: str, sim, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run the collector until its status line shows every ticker and trade the server sent as
    stored (the server has finished), then stop it with SIGINT: waits on that, not on a clock."""
    proc = subprocess.Popen(collector_cmd(exchange, sim.url, "--status-interval", "0.2", *args), env=FAST_ENV,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO)
    lines: list[str] = []
    stored = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r" status: messages=\d+ records=(\d+)", line)
            if m and sim.finished and int(m.group(1)) == sim.sent_count + sim.trades_sent:
                stored.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert stored.wait(timeout), "".join(lines)[-3000:]
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


def _trades_sent(exchange: str, frames: list[str]) -> dict[tuple[str, str], dict]:
    """Every distinct trade the server sent, decoded independently (json, Decimal, pandas)."""
    out: dict[tuple[str, str], dict] = {}
    for text in frames:
        msg = json.loads(text)
        if exchange == "coinbase":
            for ev in msg["events"]:
                for t in ev["trades"]:
                    out.setdefault((t["product_id"], t["trade_id"]), {
                        "price": float(Decimal(t["price"])), "size": float(Decimal(t["size"])),
                        "side": {"BUY": "sell", "SELL": "buy"}[t["side"]],
                        "timestamp": pd.Timestamp(t["time"]).value, "sequence": msg["sequence_num"]})
        elif exchange == "kraken":
            for t in msg["data"]:
                out.setdefault((t["symbol"], str(t["trade_id"])), {
                    "price": t["price"], "size": t["qty"], "side": t["side"],
                    "timestamp": pd.Timestamp(t["timestamp"]).value, "sequence": None})
        else:
            d = msg["data"]
            out.setdefault((d["s"], str(d["t"])), {"price": float(d["p"]), "size": float(d["q"]),
                                          "side": "sell" if d["m"] else "buy", "timestamp": d["T"] * 1_000_000,
                                          "sequence": None})
    return out


@pytest.mark.parametrize("exchange", ["coinbase", "kraken", "binance"])
def test_ticker_and_trades_to_parquet_and_kafka(exchange, kafka_broker, unique_topic, tmp_path):
    ticker_topic, trades_topic = unique_topic(exchange), unique_topic(exchange + "-trades")
    for t in (ticker_topic, trades_topic):
        kafka_broker.create_topic(t, partitions=3)
    out = tmp_path / "o.parquet"
    # a drop halfway: the snapshot after the reconnect repeats trades, none may be stored twice
    with SIMULATORS[exchange](rate=0, count=120, drop_every=60, keep_sent=True) as sim:
        proc = run_until_stored(exchange, sim, "-k", "-F", "-o", str(out), "--channels", "ticker,trades",
                                "--bootstrap", kafka_broker.bootstrap, "--topic", ticker_topic,
                                "--trades-topic", trades_topic)
    stats = final_stats(proc.stderr)
    sent = _trades_sent(exchange, sim.trade_frames)
    assert sim.trades_sent == len(sent) > 20
    assert stats["ticker"] == sim.sent_count == 120 and stats["trades"] == sim.trades_sent
    assert stats["rejected"] == 0 and stats["skipped"] == 0
    tickers = pq.read_table(out)
    trades = pq.read_table(tmp_path / "o-trades.parquet")
    assert trades.schema == TRADE_SCHEMA and tickers.num_rows == 120
    ts = {"binance": "receive"}.get(exchange, "exchange")
    assert set(tickers.column("time_source").to_pylist()) == {ts}
    rows = trades.to_pylist()
    assert len(rows) == len(sent) == len({(r["raw_symbol"], r["trade_id"]) for r in rows})
    for r in rows:
        exp = sent[(r["raw_symbol"], r["trade_id"])]
        assert r["time_source"] == "exchange" and r["exchange"] == exchange
        assert {k: (r[k].value if k == "timestamp" else r[k]) for k in exp} == exp
    assert len(consume_all(kafka_broker.bootstrap, ticker_topic, 120)) == 120
    msgs = consume_all(kafka_broker.bootstrap, trades_topic, len(sent))
    values = [json.loads(m.value()) for m in msgs]
    assert all(m.key().decode() == v["symbol"] for m, v in zip(msgs, values))
    assert sorted((v["raw_symbol"], v["trade_id"]) for v in values) == sorted(sent)
    assert all(v["time_source"] == "exchange" and v["side"] in ("buy", "sell") for v in values)


def test_unknown_channel_is_one_line_and_exit_2(capsys):
    from sabot.apps.collect import main

    with pytest.raises(SystemExit) as exc:
        main("kraken", ["--channels", "ticker,orders"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown channel 'orders'; accepted: ticker, trades, book" in err and "--channels" in err


def test_a_refusal_repeated_for_the_trades_subscription_is_the_same_refusal():
    c = CoinbaseCollector(["BTC-USD", "FOO-USD"], channels=["ticker", "trades"])
    error = json.dumps({"type": "error", "message": "invalid product_ids ['FOO-USD']"})
    assert c.parse(error, 1).records == [{"raw_symbol": "FOO-USD"}]
    assert c.reject_symbol("FOO-USD") and c.symbols == ["BTC-USD"]
    again = c.parse(error, 2)  # the market_trades subscription is refused the same way
    assert again.kind != ERROR and again.records == [{"raw_symbol": "FOO-USD"}]
    k = KrakenCollector(["BTC/USD", "FOO/USD"], channels=["ticker", "trades"])
    refusal = json.dumps({"error": "Currency pair not supported FOO/USD", "method": "subscribe",
                          "success": False, "symbol": "FOO/USD"})
    assert k.reject_symbol("FOO/USD")
    assert k.parse(refusal, 1).records == [{"raw_symbol": "FOO/USD"}]
