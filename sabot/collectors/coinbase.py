"""Coinbase Advanced Trade ``ticker`` channel (spec exchanges.md §1).

Subscribe one channel per message (``ticker`` and ``heartbeats``); each ``events[].tickers[]``
entry becomes one record (best bid/ask, sizes, price and 24 h volume are required; a frame
lacking them is counted as unknown).  Prices are decimal strings (``float(str)`` is correctly rounded);
the envelope ``timestamp`` (RFC 3339, 3-9 fractional digits) is the event time, stored exactly
as integer ns in ``timestamp`` and ``parent_timestamp``; ``sequence_num`` is the sequence.
"""
from __future__ import annotations

from sabot.collectors.base import (
    CONTROL, DATA, ERROR, SUBSCRIBED, UNKNOWN, ExchangeCollector, Parsed, dumps, int64, parsed, rfc3339_to_ns,
)

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

    def _parse(self, msg: dict, recv_ns: int) -> Parsed:
        channel = msg.get("channel")
        if channel == "ticker":
            ts = rfc3339_to_ns(msg["timestamp"])
            seq = msg.get("sequence_num")
            if seq is not None:
                seq = int64(seq, "sequence_num")
            records = []
            cache = self._symbol_cache
            for event in msg["events"]:
                for t in event["tickers"]:
                    pid = t["product_id"]
                    records.append({
                        "exchange": "coinbase",
                        "symbol": cache.get(pid) or self.normalize(pid),
                        "raw_symbol": pid,
                        "timestamp": ts,
                        "recv_timestamp": recv_ns,
                        "bid": float(t["best_bid"]),
                        "ask": float(t["best_ask"]),
                        "bid_size": float(t["best_bid_quantity"]),
                        "ask_size": float(t["best_ask_quantity"]),
                        "price": float(t["price"]),
                        "volume_24h": float(t["volume_24_h"]),
                        "sequence": seq,
                        "product_id": pid,
                        "parent_timestamp": ts,
                    })
            return parsed((DATA, records, ""))
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
