"""Coinbase: everything sabot knows about the venue, in one module.

Registered as ``coinbase`` (topic ``coinbase-ticker``, 6 bps taker fee by default).  Symbols are
spelled ``BTC-USD``; the local exchange server is :class:`sabot.sim.coinbase.CoinbaseSim`.

Collector: Advanced Trade ``ticker`` channel.

Subscribe one channel per message (``ticker`` and ``heartbeats``); each ``events[].tickers[]``
entry becomes one record (best bid/ask, sizes, price and 24 h volume are required; a frame
lacking them is counted as unknown).  Prices are decimal strings (``float(str)`` is correctly rounded);
the envelope ``timestamp`` (RFC 3339, 3-9 fractional digits) is the event time, stored exactly
as integer ns in ``timestamp`` and ``parent_timestamp``; ``sequence_num`` is the sequence.
"""
from __future__ import annotations

import re
from typing import Optional, Union

import msgspec
import pyarrow as pa

from sabot.collectors.base import (
    CONTROL, DATA, ERROR, REJECTED, SUBSCRIBED, UNKNOWN, ExchangeCollector, Parsed, dumps, int64, num, parsed,
    rfc3339_to_ns,
)
from sabot.venues.registry import Venue, register


class _Ticker(msgspec.Struct):
    """The fields of a ``tickers[]`` entry a record needs (the rest are skipped unread)."""
    product_id: str
    price: float
    volume_24_h: float
    best_bid: float
    best_bid_quantity: float
    best_ask: float
    best_ask_quantity: float


class _Event(msgspec.Struct):
    tickers: list[_Ticker] = []


class _Frame(msgspec.Struct):
    channel: str
    timestamp: str = ""
    sequence_num: Optional[int] = None
    events: list[_Event] = []


#: Typed decoding of ticker frames in one pass: the decimal strings become floats as they are
#: read (``strict=False`` converts numeric strings, correctly rounded like ``float(str)``).
_FRAME_DECODER = msgspec.json.Decoder(_Frame, strict=False)

_Loose = Union[str, float, bool, None]


class _LooseTicker(msgspec.Struct):
    """A ``tickers[]`` entry whose values the typed decoder refused (``true``, ``"1e999"``):
    read as they are, converted one by one so the record validation can name the bad field."""
    product_id: str
    price: _Loose
    volume_24_h: _Loose
    best_bid: _Loose
    best_bid_quantity: _Loose
    best_ask: _Loose
    best_ask_quantity: _Loose


class _LooseEvent(msgspec.Struct):
    tickers: list[_LooseTicker] = []


class _LooseFrame(msgspec.Struct):
    channel: str
    timestamp: str = ""
    sequence_num: Optional[int] = None
    events: list[_LooseEvent] = []


_LOOSE_DECODER = msgspec.json.Decoder(_LooseFrame)

__all__ = ["CoinbaseCollector", "VENUE"]

#: Product ids named in an error text (``invalid product_ids ['FOO-USD']``).
_PRODUCT_ID = re.compile(r"[^\s'\",\[\]]+")


class _Values(msgspec.Struct):
    """A loose ticker's values after conversion (same attribute names as :class:`_Ticker`)."""
    best_bid: object
    best_ask: object
    best_bid_quantity: object
    best_ask_quantity: object
    price: object
    volume_24_h: object


class CoinbaseCollector(ExchangeCollector):
    name = "coinbase"
    default_url = "wss://advanced-trade-ws.coinbase.com"
    default_symbols = ("BTC-USD", "ETH-USD")
    #: Logged once per connection when subscribed ({dest}: "Kafka topic 'x'"; {short}: "Kafka").
    subscribed_template = "Subscribed; streaming to {dest}"
    stale_after = 15.0  # heartbeats arrive every second
    resubscribe_after_reject = True  # an invalid product id fails the whole subscribe message

    @classmethod
    def to_exchange_symbol(cls, symbol: str) -> str:
        """``BTC/USD`` -> ``BTC-USD`` (product ids); text without ``/`` is returned as is."""
        if "/" not in symbol:
            return symbol
        base, quote = super().to_exchange_symbol(symbol).split("/")
        return f"{base}-{quote}"

    def subscribe_messages(self) -> list[str]:
        return [
            dumps({"type": "subscribe", "product_ids": self.symbols, "channel": "ticker"}),
            dumps({"type": "subscribe", "channel": "heartbeats"}),
        ]

    def parse(self, raw: str | bytes, recv_ns: int) -> Parsed:
        """Ticker frames through the typed decoder; every other frame through the generic path."""
        loose = False
        try:
            frame = _FRAME_DECODER.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError):  # malformed JSON / not a ticker frame
            try:  # values the typed decoder refused: read them as they are, convert one by one
                frame = _LOOSE_DECODER.decode(raw)
            except (msgspec.DecodeError, UnicodeDecodeError):
                return super().parse(raw, recv_ns)
            loose = True
        if frame.channel != "ticker":
            return super().parse(raw, recv_ns)
        try:
            return self._ticker(frame, recv_ns, loose)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            # e.g. an unknown product id, invalid UTF-8 inside a string (found by fuzzing)
            return Parsed(UNKNOWN, detail=f"malformed ticker frame: {type(exc).__name__} {exc}")

    def _ticker(self, frame: _Frame | _LooseFrame, recv_ns: int, loose: bool = False) -> Parsed:
        try:
            ts = rfc3339_to_ns(frame.timestamp)
        except ValueError as exc:
            return Parsed(UNKNOWN, detail=f"bad ticker timestamp: {exc}")
        seq = frame.sequence_num
        if seq is not None:
            try:
                seq = int64(seq, "sequence_num")
            except ValueError as exc:
                return Parsed(UNKNOWN, detail=f"malformed ticker frame: {exc}")
        records = []
        cache = self._symbol_cache
        for event in frame.events:
            for t in event.tickers:
                pid = t.product_id
                if loose:
                    t = _Values(num(t.best_bid), num(t.best_ask), num(t.best_bid_quantity),
                                num(t.best_ask_quantity), num(t.price), num(t.volume_24_h))
                records.append({
                    "exchange": "coinbase",
                    "symbol": cache.get(pid) or self.record_symbol(pid),
                    "raw_symbol": pid,
                    "timestamp": ts,
                    "recv_timestamp": recv_ns,
                    "bid": t.best_bid,
                    "ask": t.best_ask,
                    "bid_size": t.best_bid_quantity,
                    "ask_size": t.best_ask_quantity,
                    "price": t.price,
                    "volume_24h": t.volume_24_h,
                    "sequence": seq,
                    "product_id": pid,
                    "parent_timestamp": ts,
                })
        return parsed((DATA, records, ""))

    def _parse(self, msg: dict, recv_ns: int) -> Parsed:
        channel = msg.get("channel")
        if channel == "ticker":  # the typed decoder refused it: say which field is wrong
            rfc3339_to_ns(msg["timestamp"])  # a bad or missing timestamp is named first
            try:
                _FRAME_DECODER.decode(msgspec.json.encode(msg))
            except msgspec.ValidationError as exc:
                return Parsed(UNKNOWN, detail=f"malformed ticker frame: {exc}")
            return Parsed(UNKNOWN, detail="malformed ticker frame")
        if channel == "heartbeats":
            return Parsed(CONTROL)
        if channel == "subscriptions":
            subs = {}
            for event in msg.get("events", ()):
                subs.update(event.get("subscriptions", {}))
            return Parsed(SUBSCRIBED, detail=dumps(subs))
        if channel is None and msg.get("type") == "error":
            text = str(msg.get("message", msg))
            if text.lower().startswith("invalid product_ids"):
                named = set(_PRODUCT_ID.findall(text))
                refused = [{"raw_symbol": s} for s in self.symbols if s in named]
                if refused:
                    return Parsed(REJECTED, refused, text)
            return Parsed(ERROR, detail=text)
        return Parsed(UNKNOWN, detail=f"unsupported message channel={channel!r} type={msg.get('type')!r}")


VENUE = register(Venue(
    name="coinbase",
    collector=CoinbaseCollector,
    simulator="sabot.sim.coinbase:CoinbaseSim",
    default_fee_bps=6.0,
    extra_fields=(pa.field("product_id", pa.string()),
                  pa.field("parent_timestamp", pa.timestamp("ns", tz="UTC"))),
    sim_profile={"noise": 2e-4, "half_spread": 0.5e-4, "latency_ms": 40.0, "decimals": 2},
))
