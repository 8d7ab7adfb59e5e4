"""Coinbase Advanced Trade ``ticker`` channel (spec exchanges.md §1).

Subscribe one channel per message (``ticker`` and ``heartbeats``); each ``events[].tickers[]``
entry becomes one record (best bid/ask, sizes, price and 24 h volume are required; a frame
lacking them is counted as unknown).  Prices are decimal strings (``float(str)`` is correctly rounded);
the envelope ``timestamp`` (RFC 3339, 3-9 fractional digits) is the event time, stored exactly
as integer ns in ``timestamp`` and ``parent_timestamp``; ``sequence_num`` is the sequence.
"""
from __future__ import annotations

from typing import Optional

import msgspec

from sabot.collectors.base import (
    CONTROL, DATA, ERROR, SUBSCRIBED, UNKNOWN, ExchangeCollector, Parsed, dumps, int64, parsed, rfc3339_to_ns,
)


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

__all__ = ["CoinbaseCollector"]


class CoinbaseCollector(ExchangeCollector):
    name = "coinbase"
    default_url = "wss://advanced-trade-ws.coinbase.com"
    default_symbols = ("BTC-USD", "ETH-USD")
    #: Logged once per connection when subscribed ({dest}: "Kafka topic 'x'"; {short}: "Kafka").
    subscribed_template = "Subscribed; streaming to {dest}"
    stale_after = 15.0  # heartbeats arrive every second

    def subscribe_messages(self) -> list[str]:
        return [
            dumps({"type": "subscribe", "product_ids": self.symbols, "channel": "ticker"}),
            dumps({"type": "subscribe", "channel": "heartbeats"}),
        ]

    def parse(self, raw: str | bytes, recv_ns: int) -> Parsed:
        """Ticker frames through the typed decoder; every other frame through the generic path."""
        try:
            frame = _FRAME_DECODER.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError):  # malformed JSON / not a ticker frame
            return super().parse(raw, recv_ns)
        if frame.channel != "ticker":
            return super().parse(raw, recv_ns)
        try:
            return self._ticker(frame, recv_ns)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            # e.g. an unknown product id, invalid UTF-8 inside a string (found by fuzzing)
            return Parsed(UNKNOWN, detail=f"malformed ticker frame: {type(exc).__name__} {exc}")

    def _ticker(self, frame: _Frame, recv_ns: int) -> Parsed:
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
                records.append({
                    "exchange": "coinbase",
                    "symbol": cache.get(pid) or self.normalize(pid),
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
            return Parsed(ERROR, detail=str(msg.get("message", msg)))
        return Parsed(UNKNOWN, detail=f"unsupported message channel={channel!r} type={msg.get('type')!r}")
