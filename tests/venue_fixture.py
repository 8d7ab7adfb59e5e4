"""A fourth venue defined entirely outside the package: what a new exchange adds, and nothing more.

One venue module's worth of code (collector class, symbol spelling, fee, extra column,
simulator profile, :class:`~sabot.venues.Venue`) plus its simulator writer.  The protocol is
modelled on Bitstamp's WebSocket v2 order-book channel, trimmed to what the tests need:

* subscribe: ``{"event": "bts:subscribe", "data": {"channel": "order_book_btcusd"}}``, one per
  symbol; ack ``{"event": "bts:subscription_succeeded", "channel": ...}``;
* data: ``{"event": "data", "channel": "order_book_btcusd", "data": {"microtimestamp": "...",
  "bids": [["price", "amount"], ...], "asks": [...]}}``; the best level of each side is one
  record, the number of bid levels goes to the extra ``book_depth`` column;
* errors: ``{"event": "bts:error", "channel": ..., "data": {"message": ...}}``.

Symbols are spelled ``btcusd`` (lower-case base and quote, no separator).

A real venue module would end with ``register(VENUE)``; the tests register it in a fixture and
unregister it afterwards so the rest of the suite sees the built-in venues only.
"""
from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa

from sabot.collectors.base import (
    CONTROL, DATA, ERROR, REJECTED, SUBSCRIBED, UNKNOWN, ExchangeCollector, Parsed, dumps, num,
)
from sabot.sim.quotes import Quote
from sabot.sim.servers import Conn, SimServer, decimal_text, json_text
from sabot.venues import Venue

NAME = "bitstamp"
_BOOK = "order_book_"


class BitstampCollector(ExchangeCollector):
    """Best bid/ask of the order-book channel, one record per book update."""

    name = NAME
    default_url = "wss://ws.bitstamp.net"
    default_symbols = ("btcusd", "ethusd")
    stale_after = 30.0

    @classmethod
    def to_exchange_symbol(cls, symbol: str) -> str:
        """``BTC/USD`` -> ``btcusd``; text without ``/`` is returned as is."""
        if "/" not in symbol:
            return symbol
        base, quote = super().to_exchange_symbol(symbol).split("/")
        return f"{base}{quote}".lower()

    def subscribe_messages(self) -> list[str]:
        return [dumps({"event": "bts:subscribe", "data": {"channel": _BOOK + s}}) for s in self.symbols]

    def _parse(self, msg: dict, recv_ns: int) -> Parsed:
        event = msg.get("event")
        channel = msg.get("channel") or ""
        if event == "data" and channel.startswith(_BOOK):
            raw = channel[len(_BOOK):]
            d = msg["data"]
            bids, asks = d["bids"], d["asks"]
            return Parsed(DATA, [{
                "exchange": NAME,
                "symbol": self.record_symbol(raw),
                "raw_symbol": raw,
                "timestamp": int(d["microtimestamp"]) * 1000,
                "recv_timestamp": recv_ns,
                "bid": num(bids[0][0]),
                "ask": num(asks[0][0]),
                "bid_size": num(bids[0][1]),
                "ask_size": num(asks[0][1]),
                "price": None,
                "volume_24h": None,
                "sequence": None,
                "book_depth": len(bids),
            }])
        if event == "bts:subscription_succeeded":
            return Parsed(SUBSCRIBED, detail=channel)
        if event == "bts:heartbeat":
            return Parsed(CONTROL)
        if event == "bts:error":
            text = str((msg.get("data") or {}).get("message", msg))
            raw = channel[len(_BOOK):] if channel.startswith(_BOOK) else ""
            if raw in self.symbols:
                return Parsed(REJECTED, [{"raw_symbol": raw}], text)
            return Parsed(ERROR, detail=text)
        return Parsed(UNKNOWN, detail=f"unsupported event {event!r}")


class BitstampSim(SimServer):
    """The simulator writer: per-symbol subscribe and ack, two-level books, per-symbol refusals."""

    exchange = NAME
    supported_corruptions = ("nan", "negative", "zero", "negative_size", "unsubscribed")

    async def on_message(self, conn: Conn, msg: Any, text: str) -> None:
        channel = (msg.get("data") or {}).get("channel") if isinstance(msg, dict) else None
        if not isinstance(msg, dict) or msg.get("event") != "bts:subscribe" or not isinstance(channel, str) \
                or not channel.startswith(_BOOK):
            await conn.ws.send(self.error_frame("Bad subscription string."))
            return
        raw = channel[len(_BOOK):]
        if not self.is_listed(raw):
            self.rejected_symbols.append(raw)
            await conn.ws.send(json_text({"event": "bts:error", "channel": channel,
                                          "data": {"code": None, "message": f"Unknown channel {channel}"}}))
            return
        if raw not in conn.symbols:
            conn.symbols.append(raw)
        conn.channels.add(channel)
        await conn.ws.send(json_text({"event": "bts:subscription_succeeded", "channel": channel, "data": {}}))
        conn.subscribed.set()

    def encode(self, q: Quote, conn: Conn, snapshot: bool) -> list[tuple[str, bool]]:
        raw = self.raw_symbol(q.symbol)
        us = self.event_time_ns() // 1000
        tick = 10.0 ** -self.decimals
        book = {
            "timestamp": str(us // 1_000_000), "microtimestamp": str(us),
            "bids": [[decimal_text(q.bid), decimal_text(q.bid_size)],
                     [decimal_text(round(q.bid - tick, self.decimals)), "1.5"]],
            "asks": [[decimal_text(q.ask), decimal_text(q.ask_size)],
                     [decimal_text(round(q.ask + tick, self.decimals)), "2.5"]],
        }
        return [(json_text({"data": book, "channel": _BOOK + raw, "event": "data"}), True)]

    def error_frame(self, text: str) -> str:
        return json_text({"event": "bts:error", "channel": "", "data": {"code": None, "message": text}})

    def bad_data_frame(self, conn: Conn) -> str:
        return json_text({"event": "data", "channel": _BOOK + "btcusd", "data": {"bids": "none"}})

    def corrupt(self, text: str, kind: str) -> str:
        msg = orjson.loads(text)
        if kind == "unsubscribed":
            msg["channel"] = _BOOK + self.stray_symbol
            return json_text(msg)
        side, i, value = {"nan": ("bids", 0, "nan"), "negative": ("asks", 0, "-5"), "zero": ("bids", 0, "0"),
                          "negative_size": ("asks", 1, "-1.5")}[kind]
        msg["data"][side][0][i] = value
        return json_text(msg)


VENUE = Venue(
    name=NAME,
    collector=BitstampCollector,
    simulator=BitstampSim,
    default_fee_bps=30.0,
    extra_fields=(pa.field("book_depth", pa.int64()),),
    field_checks={"book_depth": "non_negative"},
    sim_profile={"noise": 2.5e-4, "half_spread": 0.8e-4, "latency_ms": 30.0, "decimals": 0},
)
