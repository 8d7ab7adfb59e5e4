"""Side-by-side: parse + normalise one exchange ticker frame into a record (benchmarks contract).

Peer: the naive way (stdlib ``json`` + ``datetime.fromisoformat`` + per-call symbol split), the
same output fields.  Frames come from the local simulators' encoders, generated outside the timed fn.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Callable

from sabot.collectors import BinanceCollector, CoinbaseCollector, KrakenCollector
from sabot.sim.quotes import RandomWalk
from sabot.sim.servers import SIMULATORS, Conn


def frames(exchange: str, n: int) -> list[str]:
    """``n`` data frames (plus Binance's interleaved 24 h tickers) as the simulator sends them."""
    sim = SIMULATORS[exchange]()
    conn = Conn(ws=None)  # type: ignore[arg-type]
    raw = {"coinbase": ["BTC-USD", "ETH-USD"], "kraken": ["BTC/USD", "ETH/USD"],
           "binance": ["BTCUSDT", "ETHUSDT"]}[exchange]
    conn.symbols = raw
    conn.channels = {f"{s.lower()}@{k}" for s in raw for k in ("bookTicker", "ticker")}
    walk = RandomWalk(exchange, seed=1)
    out: list[str] = []
    i = 0
    while len(out) < n:
        sym = ["BTC/USD", "ETH/USD"][i % 2]
        out.extend(text for text, _ in sim.encode(walk.next(sym), conn, snapshot=i < 2))
        i += 1
    return out


def _iso_ns(s: str) -> int:
    """datetime keeps only microseconds: the naive way loses the last 3 digits."""
    s = s.rstrip("Z")
    if "." in s:
        head, frac = s.split(".")
        s = f"{head}.{frac[:6].ljust(6, '0')}"
    d = dt.datetime.fromisoformat(s + "+00:00")
    return int(d.timestamp()) * 10**9 + d.microsecond * 1000


def naive_parser(exchange: str) -> Callable[[str], list[dict]]:
    ticker: dict[str, dict] = {}

    def norm(raw: str) -> str:
        for sep in "-/":
            if sep in raw:
                b, q = raw.split(sep)
                return f"{'BTC' if b == 'XBT' else b}/{q}"
        return f"{raw[:-4]}/USD" if raw.endswith("USDT") else raw

    def parse(text: str) -> list[dict]:
        m = json.loads(text)
        if exchange == "coinbase":
            ts = _iso_ns(m["timestamp"])
            return [{"exchange": "coinbase", "symbol": norm(t["product_id"]), "raw_symbol": t["product_id"],
                     "timestamp": ts, "bid": float(t["best_bid"]), "ask": float(t["best_ask"]),
                     "bid_size": float(t["best_bid_quantity"]), "ask_size": float(t["best_ask_quantity"]),
                     "price": float(t["price"]), "volume_24h": float(t["volume_24_h"]),
                     "sequence": m["sequence_num"]} for e in m["events"] for t in e["tickers"]]
        if exchange == "kraken":
            return [{"exchange": "kraken", "symbol": norm(t["symbol"]), "raw_symbol": t["symbol"],
                     "timestamp": _iso_ns(t["timestamp"]), "bid": t["bid"], "ask": t["ask"],
                     "bid_size": t["bid_qty"], "ask_size": t["ask_qty"], "price": t["last"],
                     "volume_24h": t["volume"]} for t in m["data"]]
        d = m["data"]
        if d.get("e") == "24hrTicker":
            ticker[d["s"]] = d
            return []
        tk = ticker.get(d["s"], {})
        return [{"exchange": "binance", "symbol": norm(d["s"]), "raw_symbol": d["s"], "bid": float(d["b"]),
                 "ask": float(d["a"]), "bid_size": float(d["B"]), "ask_size": float(d["A"]),
                 "price": float(tk["c"]) if tk else None, "sequence": d["u"]}]

    return parse


def cases(scale: float = 1.0) -> list[tuple[str, int, dict[str, Callable[[], object]]]]:
    n = max(100, int(20_000 * scale))
    out = []
    for exchange, cls in (("coinbase", CoinbaseCollector), ("kraken", KrakenCollector),
                          ("binance", BinanceCollector)):
        texts = frames(exchange, n)
        collector = cls()
        naive = naive_parser(exchange)

        def run_sabot(texts=texts, parse=collector.parse) -> int:
            return sum(len(parse(t, 0).records) for t in texts)

        def run_naive(texts=texts, parse=naive) -> int:
            return sum(len(parse(t)) for t in texts)

        out.append((f"parse_ticker_{exchange}", len(texts), {"sabot": run_sabot, "stdlib json+datetime": run_naive}))
    return out


if __name__ == "__main__":
    import statistics
    import time

    for name, rows, fns in cases():
        line = [name]
        for label, fn in fns.items():
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            line.append(f"{label}: {statistics.median(times) / rows * 1e6:.2f} µs/msg (min {min(times) / rows * 1e6:.2f})")
        print("  ".join(line))
