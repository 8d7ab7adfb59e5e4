"""USDT is its own quote: USDT quotes priced in USD through a live USDT/USD rate.

The monitor's on-arrival decision (the very objects ``sabot monitor`` runs) on a USDT venue
against a USD venue: its edge moves by the basis when the rate moves, and the record names the
rate.  The event-time conversion equals pandas ``merge_asof`` on the same quotes.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from sabot.apps import monitor as arb
from sabot.fintech import normalize_symbols
from sabot.quote_conversion import LiveQuoteConverter, RateSource, convert_quotes
from sabot.symbols import USDT_AS_USD, normalize_symbol

VENUES = ("coinbase", "kraken", "binance")
TS = pa.timestamp("ns", tz="UTC")
T0 = 1_700_000_000_000_000_000


def quote(exchange: str, raw: str, t_ms: float, bid: float, ask: float) -> dict:
    t = T0 + int(t_ms * 1e6)
    return {"exchange": exchange, "symbol": raw, "raw_symbol": raw, "timestamp": t,
            "recv_timestamp": t, "bid": bid, "ask": ask}


def batch(*rows: dict) -> pa.RecordBatch:
    schema = arb.DECISION_SCHEMA
    cols = {f.name: pa.array([r[f.name] for r in rows], f.type) for f in schema}
    return pa.RecordBatch.from_pydict(cols, schema=schema)


def decide(tmp_path, batches, **monitor_kw):
    out = tmp_path / "opps.jsonl"
    monitor = arb.Monitor(arb.parse_fees("0", VENUES), 0.0, out, None, 1e9, venues=VENUES,
                          **monitor_kw)
    decision = arb.ArrivalDecision(monitor)
    for b in batches:
        decision(b)
    monitor.close()
    return monitor, [json.loads(line) for line in out.read_text().splitlines()]


def test_usdt_is_its_own_quote_by_default_and_folding_is_explicit():
    assert normalize_symbol("btcusdt") == "BTC/USDT"
    assert normalize_symbol("BTCUSDT", "binance") == "BTC/USDT"
    assert normalize_symbol("btcusdt", quote_aliases=USDT_AS_USD) == "BTC/USD"
    t = pa.table({"symbol": ["BTCUSDT", "BTC-USD", "XBT/USD"]})
    assert normalize_symbols(t)["symbol"].to_pylist() == ["BTC/USDT", "BTC/USD", "BTC/USD"]


def test_the_edge_moves_by_the_basis_when_the_usdt_rate_moves(tmp_path):
    """Binance BTC/USDT against Coinbase BTC/USD, Kraken USDT/USD as the rate.  The rate moves
    from par to +30 bps: the USD cost of Binance's ask rises by 30 bps, so the edge of buying
    there and selling on Coinbase falls by the basis; the records name the rate."""
    bn_bid, bn_ask, cb_bid, cb_ask = 99.90, 100.00, 100.60, 100.70
    rows = [
        batch(quote("kraken", "USDT/USD", 0, 1.0, 1.0)),
        batch(quote("coinbase", "BTC-USD", 10, cb_bid, cb_ask)),
        batch(quote("binance", "BTCUSDT", 20, bn_bid, bn_ask)),       # at par: 60 bps
        batch(quote("kraken", "USDT/USD", 30, 1.003, 1.003)),         # USDT up 30 bps
        batch(quote("binance", "BTCUSDT", 40, bn_bid, bn_ask)),       # same USDT quote
    ]
    monitor, records = decide(tmp_path, rows)
    opened = [r for r in records if r["event"] == "open" and r["buy_venue"] == "binance"]
    assert len(opened) == 1
    o = opened[0]
    assert o["symbol"] == "BTC/USD" and o["sell_venue"] == "coinbase"
    assert o["buy_price"] == pytest.approx(bn_ask * 1.0)
    assert o["gross_bps"] == pytest.approx((cb_bid - bn_ask) / bn_ask * 1e4)
    assert o["buy_fx_rate"] == 1.0 and o["sell_fx_rate"] is None
    assert o["fx_source"] == "kraken USDT/USD"
    closes = [r for r in records if r["event"] == "close" and r["id"] == o["id"]]
    assert len(closes) == 1
    c = closes[0]  # closed at the end of the run, on the last evaluation: the moved rate
    converted_ask = bn_ask * 1.003
    assert c["buy_price"] == pytest.approx(converted_ask)
    assert c["buy_fx_rate"] == 1.003
    assert c["gross_bps"] == pytest.approx((cb_bid - converted_ask) / converted_ask * 1e4)
    # the edge changed by the basis: (1 + edge) scales by 1 / rate
    before, after = 1 + o["gross_bps"] / 1e4, 1 + c["gross_bps"] / 1e4
    assert after == pytest.approx(before / 1.003)
    assert o["gross_bps"] - c["gross_bps"] == pytest.approx(29.9, abs=0.3)
    assert monitor.converter.unpriced == {}


def test_a_usdt_quote_without_a_fresh_rate_is_counted_never_read_as_usd(tmp_path, caplog):
    rows = [
        batch(quote("coinbase", "BTC-USD", 0, 100.60, 100.70)),
        batch(quote("binance", "BTCUSDT", 5, 99.90, 100.00)),          # no rate yet
        batch(quote("kraken", "USDT/USD", 10, 1.0, 1.0)),
        batch(quote("binance", "BTCUSDT", 20_000, 99.90, 100.00)),     # rate 20 s old
    ]
    monitor, records = decide(tmp_path, rows, rate_max_age_ms=10_000)
    assert not [r for r in records if "binance" in (r["buy_venue"], r["sell_venue"])]
    assert monitor.converter.unpriced == {"binance": 2}
    s = monitor.summary()
    assert s["unpriced_quotes"] == {"binance": 2} and s["fx_source"] == "kraken USDT/USD"
    assert "quotes without a kraken USDT/USD rate: 2" in monitor.summary_line("x")
    assert "needs a kraken USDT/USD rate (no rate received yet)" in caplog.text


def test_folding_usdt_into_usd_is_the_explicit_choice(tmp_path):
    rows = [batch(quote("coinbase", "BTC-USD", 0, 100.60, 100.70)),
            batch(quote("binance", "BTCUSDT", 5, 99.90, 100.00))]
    monitor, records = decide(tmp_path, rows, rate_source=None)
    o = [r for r in records if r["event"] == "open"][0]
    assert (o["buy_venue"], o["buy_price"], o["buy_fx_rate"], o["fx_source"]) == ("binance", 100.0, None, None)


def test_a_rate_from_another_venue_or_a_bad_rate_quote_is_not_used():
    conv = LiveQuoteConverter(RateSource(venue="kraken"))
    out = conv(normalize_symbols(batch(
        quote("coinbase", "USDT-USD", 0, 1.01, 1.02),     # not the rate venue
        quote("kraken", "USDT/USD", 1, 1.02, 1.01),       # crossed: unusable
        quote("binance", "BTCUSDT", 2, 99.0, 100.0))))
    assert out is not None and out["symbol"].to_pylist() == ["USDT/USD", "USDT/USD"]
    assert conv.unpriced == {"binance": 1}


def _pandas_reference(quotes: pd.DataFrame, rates: pd.DataFrame, max_age_ms: float) -> pd.DataFrame:
    """merge_asof of each USDT quote with the latest usable kraken USDT/USD quote at or before it."""
    r = rates[(rates.exchange == "kraken") & (rates.symbol == "USDT/USD")
              & (rates.bid > 0) & (rates.bid <= rates.ask)]
    r = r[["timestamp", "bid", "ask"]].rename(columns={"bid": "fx_bid", "ask": "fx_ask"})
    r = r.astype({"timestamp": "datetime64[ns, UTC]", "fx_bid": float, "fx_ask": float})
    q = quotes.copy()
    q["usdt"] = q.symbol.str.endswith("/USDT")
    m = pd.merge_asof(q.sort_values("timestamp"), r.sort_values("timestamp"), on="timestamp",
                      tolerance=pd.Timedelta(milliseconds=max_age_ms), direction="backward")
    m = m[~(m.usdt & m.fx_bid.isna())].copy()
    m.loc[~m.usdt, ["fx_bid", "fx_ask"]] = np.nan
    m["bid"] = np.where(m.usdt, m.bid * m.fx_bid, m.bid)
    m["ask"] = np.where(m.usdt, m.ask * m.fx_ask, m.ask)
    m["symbol"] = m.symbol.str.replace("/USDT", "/USD", regex=False)
    return m.drop(columns=["usdt"]).reset_index(drop=True)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["q_usdt", "q_usd", "rate", "other"]),
                          st.integers(0, 30_000), st.floats(0.98, 1.02)), min_size=1, max_size=40),
       st.sampled_from([1_000.0, 10_000.0]))
def test_event_time_conversion_equals_pandas_merge_asof(events, max_age_ms):
    quotes, rates = [], []
    for kind, t_ms, x in events:
        ts = pd.Timestamp(T0 + t_ms * 1_000_000, tz="UTC")
        if kind == "rate":
            rates.append({"exchange": "kraken", "symbol": "USDT/USD", "timestamp": ts,
                          "bid": round(x, 5), "ask": round(x + 0.0001, 5)})
        elif kind == "other":
            rates.append({"exchange": "coinbase", "symbol": "USDT/USD", "timestamp": ts,
                          "bid": 0.5, "ask": 0.6})
        else:
            sym = "BTC/USDT" if kind == "q_usdt" else "BTC/USD"
            quotes.append({"exchange": "binance", "symbol": sym, "timestamp": ts,
                           "bid": 100 * x, "ask": 100 * x + 0.01})
    if not quotes:
        return
    qdf = pd.DataFrame(quotes).sort_values("timestamp", kind="stable").reset_index(drop=True)
    rdf = (pd.DataFrame(rates) if rates else
           pd.DataFrame({"exchange": [], "symbol": [], "timestamp": pd.to_datetime([], utc=True),
                         "bid": [], "ask": []})).sort_values("timestamp", kind="stable")
    qt = pa.Table.from_pandas(qdf, preserve_index=False).cast(pa.schema(
        [("exchange", pa.string()), ("symbol", pa.string()), ("timestamp", TS),
         ("bid", pa.float64()), ("ask", pa.float64())]))
    rt = pa.Table.from_pandas(rdf, preserve_index=False).cast(qt.schema)
    got, unpriced = convert_quotes(qt, rt, RateSource(), max_age_ms)
    want = _pandas_reference(qdf, rdf, max_age_ms)
    assert unpriced == int(qdf.symbol.str.endswith("/USDT").sum()) - int(
        (want.fx_bid.notna()).sum())
    g = got.to_pandas()
    assert list(g.symbol) == list(want.symbol)
    for col in ("bid", "ask", "fx_bid", "fx_ask"):
        np.testing.assert_allclose(g[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-12)


def test_collectors_fold_usdt_only_when_asked(tmp_path):
    """``sabot collect binance --usdt-as-usd`` records BTC/USD; without it BTC/USDT."""
    import subprocess
    import sys
    from pathlib import Path

    import pyarrow.parquet as pq

    from sabot.sim import SIMULATORS

    root = Path(__file__).resolve().parents[1]
    for flag, want in (("--usdt-as-usd", {"BTC/USD", "ETH/USD"}), (None, {"BTC/USDT", "ETH/USDT"})):
        with SIMULATORS["binance"](rate=0, count=40) as sim:
            out = tmp_path / f"{flag or 'default'}.parquet"
            cmd = [sys.executable, "-m", "sabot", "collect", "binance", "-F", "-o", str(out),
                   "--url", sim.url, "--duration", "1.0", *([flag] if flag else [])]
            proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=60,
                                  env={**__import__("os").environ, "PYTHONPATH": str(root)})
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert set(pq.read_table(out)["symbol"].to_pylist()) == want


def test_monitor_rate_options_are_checked_in_one_line(capsys):
    assert arb.main(["--usdt-rate", "nosuch", "--bootstrap", "127.0.0.1:1", "--connect-timeout", "0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--usdt-rate: unknown venue 'nosuch'" in err
    with pytest.raises(SystemExit) as exc:
        arb.main(["--usdt-rate", "coinbase", "--usdt-as-usd"])
    assert exc.value.code == 2
