"""Binance: everything sabot knows about the venue, in one module.

Registered as ``binance`` (topic ``binance-ticker``, 10 bps taker fee by default).  Symbols are
spelled ``BTCUSDT`` (upper case in payloads, lower case in stream names); USD books are the
USDT ones.  The local exchange server is :class:`sabot.sim.binance.BinanceSim`.

Collector: Spot combined streams ``<s>@bookTicker`` + ``<s>@ticker``.

Every bookTicker update is a record: no exchange time exists, so ``timestamp`` is the receive
time and ``u`` the sequence.  The latest 24 h ticker per symbol fills ``price``/``volume_24h``
and the extra columns (``last_price``, ``price_change_pct``, ``num_trades``).  Decimal strings
are parsed with ``float(str)`` (correctly rounded).  ``serverShutdown`` asks for a reconnect.
"""
from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from sabot.collectors.base import (
    CONTROL, DATA, ERROR, RECONNECT, SUBSCRIBED, UNKNOWN, ExchangeCollector, Parsed, int64, num, parsed,
)
from sabot.venues.registry import Venue, register

__all__ = ["BinanceCollector", "VENUE"]

_NO_TICKER = (None, None, None, None)


def _finite(value: Any, field: str) -> float:
    """A 24 h ticker value as a finite float, else ``ValueError`` naming ``field``."""
    x = num(value)
    if type(x) is not float or x != x or x in (math.inf, -math.inf):
        raise ValueError(f"24hrTicker {field}={value!r} is not a finite number")
    return x


class BinanceCollector(ExchangeCollector):
    name = "binance"
    default_url = "wss://stream.binance.com:9443"
    default_symbols = ("BTCUSDT", "ETHUSDT")
    client_pings = False  # the server pings every 20 s; websockets answers with a pong
    #: Logged once per connection when subscribed ({dest}: "Kafka topic 'x'"; {short}: "Kafka").
    subscribed_template = "Connected! Streaming to {short}..."
    stale_after = 60.0  # bookTicker is real-time, but a quiet book may be silent for a while
    rejects_by_silence = True  # an unlisted symbol's streams simply never send anything

    @classmethod
    def to_exchange_symbol(cls, symbol: str) -> str:
        """``BTC/USD`` -> ``BTCUSDT`` (USD is traded against USDT), ``ETH/BTC`` -> ``ETHBTC``;
        text without ``/`` is returned as is."""
        if "/" not in symbol:
            return symbol
        base, quote = super().to_exchange_symbol(symbol).split("/")
        return f"{base}{'USDT' if quote == 'USD' else quote}"

    def payload_symbols(self) -> dict[str, str]:
        """Payloads spell symbols in upper case (``"s":"BTCUSDT"``) whatever the stream name's case."""
        return {raw.upper(): raw for raw in self.symbols}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # raw symbol (upper case) -> (last price, 24 h base volume, change %, trade count)
        self._ticker: dict[str, tuple] = {}

    def url(self, base_url: str | None = None) -> str:
        base = (base_url or self.default_url).rstrip("/")
        if "streams=" in base:
            return base
        streams = "/".join(f"{s.lower()}@{kind}" for s in self.symbols for kind in ("bookTicker", "ticker"))
        return f"{base}/stream?streams={streams}"

    def subscribe_messages(self) -> list[str]:
        return []  # the combined-stream URL subscribes

    def _parse(self, msg: dict, recv_ns: int) -> Parsed:
        data = msg.get("data")
        if data is None:
            data = msg  # raw (/ws/) payload or a control reply
        elif type(data) is not dict:
            raise TypeError("'data' is not an object")
        if "u" in data and "b" in data and "e" not in data:
            raw = data["s"]
            last, vol, chg, n = self._ticker.get(raw, _NO_TICKER)
            return parsed((DATA, [{
                "exchange": "binance",
                "symbol": self._symbol_cache.get(raw) or self.record_symbol(raw),
                "raw_symbol": raw,
                "timestamp": recv_ns,
                "recv_timestamp": recv_ns,
                "bid": num(data["b"]),
                "ask": num(data["a"]),
                "bid_size": num(data["B"]),
                "ask_size": num(data["A"]),
                "price": last,
                "volume_24h": vol,
                "sequence": int64(data["u"], "u"),
                "last_price": last,
                "price_change_pct": chg,
                "num_trades": n,
            }], ""))
        event = data.get("e")
        if event == "24hrTicker":
            # kept for the following records: refuse a bad one whole, the previous values stay
            values = (_finite(data["c"], "c"), _finite(data["v"], "v"), _finite(data["P"], "P"),
                      int64(data["n"], "n"))
            self._ticker[data["s"]] = values
            return Parsed(DATA)
        if event == "serverShutdown" or msg.get("stream") == "!serverShutdown":
            return Parsed(RECONNECT, detail="serverShutdown")
        err = msg.get("error")
        if err is not None:
            if isinstance(err, dict):
                return Parsed(ERROR, detail=f"code {err.get('code')}: {err.get('msg')}")
            return Parsed(ERROR, detail=str(err))
        if "code" in msg and "msg" in msg:
            return Parsed(ERROR, detail=f"code {msg['code']}: {msg['msg']}")
        if "result" in msg and "id" in msg:
            return Parsed(SUBSCRIBED if msg["result"] is None else CONTROL, detail=f"id {msg['id']}")
        return Parsed(UNKNOWN, detail=f"unsupported event {event!r} stream {msg.get('stream')!r}")


VENUE = register(Venue(
    name="binance",
    collector=BinanceCollector,
    simulator="sabot.sim.binance:BinanceSim",
    default_fee_bps=10.0,
    extra_fields=(pa.field("last_price", pa.float64()), pa.field("price_change_pct", pa.float64()),
                  pa.field("num_trades", pa.int64())),
    field_checks={"last_price": "positive", "price_change_pct": "finite"},
    sim_profile={"noise": 1.5e-4, "half_spread": 0.2e-4, "latency_ms": 20.0, "decimals": 2},
))
