"""Parsers: normalised values equal the message's values (reference: stdlib json + float + pandas)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from sabot.collectors import BinanceCollector, CoinbaseCollector, KrakenCollector, rfc3339_to_ns
from sabot.collectors.base import CONTROL, DATA, ERROR, RECONNECT, SUBSCRIBED, UNKNOWN
from sabot.schema import exchange_schema

SAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "exchange_samples"


def sample_lines(name: str) -> list[str]:
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"shared exchange sample {name} not found at {SAMPLES} (optional reference data)")
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def ts_ns(text: str) -> int:
    """Independent reference: pandas parses RFC 3339 to exact integer ns."""
    return pd.Timestamp(text).value


# ----------------------------------------------------------------------------- fixtures (ours)
CB_TICKER = (
    '{"channel":"ticker","client_id":"","timestamp":"2026-06-14T10:21:07.1234Z","sequence_num":42,'
    '"events":[{"type":"update","tickers":['
    '{"type":"ticker","product_id":"BTC-USD","price":"64281.7","volume_24_h":"3974.98800786",'
    '"low_24_h":"63454","high_24_h":"64727.27","low_52_w":"59073.01","high_52_w":"126296",'
    '"price_percent_chg_24_h":"1.21471769193719","best_bid":"64281.7","best_bid_quantity":"0.21558849",'
    '"best_ask":"64281.71","best_ask_quantity":"0.02287045"},'
    '{"type":"ticker","product_id":"ETH-USD","price":"3401.15","volume_24_h":"81234.5",'
    '"best_bid":"3401.14","best_bid_quantity":"1.5","best_ask":"3401.15","best_ask_quantity":"0.00000001"}'
    ']}]}'
)
KR_TICKER = (
    '{"channel":"ticker","type":"update","data":[{"symbol":"BTC/USD","bid":83744.2,"bid_qty":0.56251979,'
    '"ask":83744.3,"ask_qty":0.00044780,"last":83744.3,"volume":3156.84782110,"vwap":84174.6,'
    '"low":83163.6,"high":85247.4,"change":-429.3,"change_pct":-0.51,"trades":135262,'
    '"timestamp":"2026-09-25T17:48:26.844359Z"}]}'
)
BN_TICKER = (
    '{"stream":"btcusdt@ticker","data":{"e":"24hrTicker","E":1672515782136,"s":"BTCUSDT","p":"-94.99",'
    '"P":"-0.141","w":"67000.1","x":"67100.0","c":"67005.01","Q":"0.01","b":"67005.00","B":"1.2",'
    '"a":"67005.01","A":"0.3","o":"67100.0","h":"67500","l":"66500","v":"12345.678","q":"8.2e8",'
    '"O":0,"C":86400000,"F":0,"L":18150,"n":18151}}'
)
BN_BOOK = ('{"stream":"btcusdt@bookTicker","data":{"u":400900217,"s":"BTCUSDT","b":"67005.00000000",'
           '"B":"1.20000000","a":"67005.01000000","A":"0.30000000"}}')


def test_coinbase_ticker_values():
    parsed = CoinbaseCollector().parse(CB_TICKER, 7)
    assert parsed.kind == DATA
    msg = json.loads(CB_TICKER)
    tickers = msg["events"][0]["tickers"]
    assert len(parsed.records) == len(tickers) == 2
    for rec, t in zip(parsed.records, tickers):
        assert rec["exchange"] == "coinbase"
        assert rec["raw_symbol"] == rec["product_id"] == t["product_id"]
        assert rec["symbol"] == t["product_id"].replace("-", "/")
        assert rec["bid"] == float(t["best_bid"]) and rec["ask"] == float(t["best_ask"])
        assert rec["bid_size"] == float(t["best_bid_quantity"])
        assert rec["ask_size"] == float(t["best_ask_quantity"])
        assert rec["price"] == float(t["price"]) and rec["volume_24h"] == float(t["volume_24_h"])
        assert rec["timestamp"] == rec["parent_timestamp"] == ts_ns(msg["timestamp"])
        assert rec["recv_timestamp"] == 7 and rec["sequence"] == 42
        assert set(rec) == set(exchange_schema("coinbase").names)


def test_kraken_ticker_values():
    parsed = KrakenCollector().parse(KR_TICKER, 9)
    assert parsed.kind == DATA
    (t,) = json.loads(KR_TICKER)["data"]
    (rec,) = parsed.records
    assert rec["symbol"] == rec["raw_symbol"] == "BTC/USD"
    assert (rec["bid"], rec["ask"], rec["bid_size"], rec["ask_size"]) == (t["bid"], t["ask"], t["bid_qty"], t["ask_qty"])
    assert rec["price"] == t["last"] and rec["volume_24h"] == t["volume"]
    assert rec["vwap"] == t["vwap"] and rec["change_pct"] == t["change_pct"]
    assert rec["timestamp"] == ts_ns(t["timestamp"]) and rec["recv_timestamp"] == 9
    assert rec["sequence"] is None
    assert set(rec) == set(exchange_schema("kraken").names)


def test_kraken_ticker_without_timestamp_uses_receive_time():
    msg = json.loads(KR_TICKER)
    del msg["data"][0]["timestamp"]
    (rec,) = KrakenCollector().parse(json.dumps(msg), 123).records
    assert rec["timestamp"] == 123


def test_binance_bookticker_takes_latest_24h_ticker():
    c = BinanceCollector()
    before = c.parse(BN_BOOK, 5).records[0]
    assert before["price"] is None and before["volume_24h"] is None and before["num_trades"] is None
    assert c.parse(BN_TICKER, 6) == (DATA, [], "")
    rec = c.parse(BN_BOOK, 11).records[0]
    t = json.loads(BN_TICKER)["data"]
    b = json.loads(BN_BOOK)["data"]
    assert rec["symbol"] == "BTC/USDT" and rec["raw_symbol"] == "BTCUSDT"
    assert rec["timestamp"] == rec["recv_timestamp"] == 11 and rec["sequence"] == b["u"]
    assert (rec["bid"], rec["bid_size"], rec["ask"], rec["ask_size"]) == tuple(float(b[k]) for k in "bBaA")
    assert rec["price"] == rec["last_price"] == float(t["c"]) and rec["volume_24h"] == float(t["v"])
    assert rec["price_change_pct"] == float(t["P"]) and rec["num_trades"] == t["n"]
    assert set(rec) == set(exchange_schema("binance").names)
    assert BinanceCollector(["BTCUSDT"], quote_aliases={}).parse(BN_BOOK, 1).records[0]["symbol"] == "BTC/USDT"


@pytest.mark.parametrize("collector, frame, kind, text", [
    (CoinbaseCollector, '{"type":"error","message":"authentication failure"}', ERROR, "authentication failure"),
    (CoinbaseCollector, '{"channel":"heartbeats","timestamp":"2026-09-07T23:37:22.67Z","sequence_num":3,'
                        '"events":[{"current_time":"2026-09-07 23:37:22.674409 +0000 UTC m=+139651.27",'
                        '"heartbeat_counter":3049}]}', CONTROL, ""),
    (CoinbaseCollector, '{"channel":"subscriptions","timestamp":"2026-09-07T23:37:22Z","sequence_num":1,'
                        '"events":[{"subscriptions":{"ticker":["BTC-USD"]}}]}', SUBSCRIBED, "BTC-USD"),
    (CoinbaseCollector, '{"channel":"l2_data","events":[]}', UNKNOWN, "l2_data"),
    (KrakenCollector, '{"error":"Currency pair not supported XBT/USD","method":"subscribe","success":false,'
                      '"symbol":"XBT/USD","time_in":"x","time_out":"y"}', ERROR, "Currency pair not supported XBT/USD"),
    (KrakenCollector, '{"method":"subscribe","result":{"channel":"ticker","symbol":"BTC/USD"},"success":true}',
     SUBSCRIBED, "BTC/USD"),
    (KrakenCollector, '{"channel":"heartbeat"}', CONTROL, ""),
    (KrakenCollector, '{"channel":"status","type":"update","data":[{"connection_id":18125794168470749634}]}',
     CONTROL, ""),
    (BinanceCollector, '{"code":3,"msg":"Invalid JSON: expected value at line 1 column 1"}', ERROR, "Invalid JSON"),
    (BinanceCollector, '{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1}}', RECONNECT, "serverShutdown"),
    (CoinbaseCollector, '{"channel":"ticker","timestamp":"soon","events":[{"tickers":[{"product_id":"BTC-USD"}]}]}',
     UNKNOWN, "RFC 3339"),
    (KrakenCollector, '{"channel":"ticker","data":[{"bid":"n/a"}]}', UNKNOWN, "KeyError"),
    (BinanceCollector, '{"stream":"x@bookTicker","data":{"u":1,"s":"BTCUSDT","b":"abc","B":"1","a":"1","A":"1"}}',
     UNKNOWN, "abc"),
    (BinanceCollector, '{"stream":"x@bookTicker","data":[1]}', UNKNOWN, "data"),
    (KrakenCollector, "[1,2]", UNKNOWN, "not a JSON object"),
    (CoinbaseCollector, '{"channel":"ticker",', UNKNOWN, "malformed JSON"),
    (BinanceCollector, b"\xff\xfe", UNKNOWN, "malformed JSON"),
])
def test_non_ticker_frames_classified(collector, frame, kind, text):
    parsed = collector().parse(frame, 1)
    assert parsed.kind == kind
    assert parsed.records == []
    assert text in parsed.detail


# ----------------------------------------------------------------------- shared real samples
def test_binance_real_bookticker_samples():
    c = BinanceCollector()
    for file in ("binance_combined_bookticker.jsonl", "binanceus_combined_mixed.jsonl"):
        lines = sample_lines(file)
        n_book = 0
        for i, line in enumerate(lines):
            msg = json.loads(line)
            parsed = c.parse(line, 1000 + i)
            if msg["stream"].endswith("@bookTicker"):
                n_book += 1
                assert parsed.kind == DATA
                (rec,) = parsed.records
                d = msg["data"]
                assert rec["raw_symbol"] == d["s"] and rec["sequence"] == d["u"]
                assert rec["bid"] == float(d["b"]) and rec["bid_size"] == float(d["B"])
                assert rec["ask"] == float(d["a"]) and rec["ask_size"] == float(d["A"])
                assert rec["timestamp"] == rec["recv_timestamp"] == 1000 + i
                base, quote = rec["symbol"].split("/")
                assert d["s"] == base + ("USDT" if quote == "USD" else quote)
            else:  # depth, aggTrade, kline: not ours, counted as unknown, never fatal
                assert parsed.kind == UNKNOWN and parsed.records == []
        assert n_book > 0


def test_binance_doc_and_control_samples():
    c = BinanceCollector()
    kinds = [c.parse(line, 1).kind for line in sample_lines("binance_raw_doc_examples.jsonl")]
    events = [json.loads(line).get("e") for line in sample_lines("binance_raw_doc_examples.jsonl")]
    for kind, event in zip(kinds, events):
        assert kind == (DATA if event in (None, "24hrTicker") else UNKNOWN)
    for line in sample_lines("binance_control.jsonl"):
        msg = json.loads(line)
        kind = c.parse(line, 1).kind
        if "error" in msg:
            assert kind == ERROR
            assert msg["error"]["msg"] in c.parse(line, 1).detail
        elif msg.get("e") == "serverShutdown" or msg.get("stream") == "!serverShutdown":
            assert kind == RECONNECT
        else:
            assert kind == (SUBSCRIBED if msg["result"] is None else CONTROL)


def test_coinbase_exchange_feed_is_not_advanced_trade():
    lines = sample_lines("coinbase_exchange_feed_2021_contrast.jsonl")
    c = CoinbaseCollector()
    for line in lines:
        parsed = c.parse(line, 1)
        assert parsed.kind == UNKNOWN and parsed.records == []


def test_kraken_pong_sample():
    (line,) = sample_lines("kraken_pong.jsonl")
    assert KrakenCollector().parse(line, 1).kind == CONTROL


# ------------------------------------------------------------------------------- timestamps
@settings(max_examples=300, deadline=None)
@given(ns=st.integers(0, 4_102_444_800 * 10**9 - 1), digits=st.integers(0, 9),
       offset_min=st.sampled_from([None, 0, 330, -300, 60]))
def test_rfc3339_exact_against_numpy(ns, digits, offset_min):
    text = str(np.datetime64(ns, "ns"))  # 'YYYY-MM-DDTHH:MM:SS.fffffffff'
    head, frac = text.split(".")
    truncated = ns - ns % 10 ** (9 - digits)
    body = head + ("." + frac[:digits] if digits else "")
    if offset_min is None:
        assert rfc3339_to_ns(body + "Z") == truncated
    else:
        sign = "+" if offset_min >= 0 else "-"
        suffix = f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
        # the same wall-clock text at that offset is offset_min earlier in UTC
        assert rfc3339_to_ns(body + suffix) == truncated - offset_min * 60 * 10**9
        assert rfc3339_to_ns(body + suffix) == pd.Timestamp(body + suffix).value


@pytest.mark.parametrize("bad", ["", "2026-09-25", "2026-09-25T17:48:26.1234567890Z", "2026-09-25T17:48:26.Z",
                                 "2026-09-25T17:48:26", "yesterday", "2026/09/25T17:48:26Z"])
def test_rfc3339_rejects(bad):
    with pytest.raises(ValueError, match="RFC 3339"):
        rfc3339_to_ns(bad)
