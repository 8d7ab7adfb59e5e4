"""Kraken: everything sabot knows about the venue, in one module.

Registered as ``kraken`` (topic ``kraken-ticker``, 16 bps taker fee by default).  Symbols are
spelled ``BTC/USD`` (WebSocket v2); the REST spelling ``XXBTZUSD`` and the legacy ``XBT`` code
are read too.  The default symbols include ``USDT/USD``: the live rate that prices USDT books
in USD (:mod:`sabot.quote_conversion`).  The local exchange server is
:class:`sabot.sim.kraken.KrakenSim`.

Collector: WebSocket v2 ``ticker`` and ``trade`` channels.

Subscribes with ``event_trigger: "bbo"`` so every update is a best-bid/offer change; one
``data[]`` entry is one record.  Values are JSON numbers (orjson's float parsing is correctly
rounded); ``timestamp`` (RFC 3339) is the event time when present (``time_source``
``"exchange"``), else the receive time (``"receive"``).
Acks come one per symbol and channel; errors carry ``success: false`` and the exchange's
``error`` text.

Trades (``trade`` channel): each ``data[]`` entry is one trade record; ``side`` is the taker's
(the aggressor's) side as sent, ``qty`` the size, ``trade_id`` (an integer, increasing per
book) the id, ``timestamp`` the event time; Kraken has no sequence number.  The subscription
asks for the snapshot of recent trades: they are recorded, except those already recorded on
this run (a reconnect fills its gap without repeating a trade id).

Book (``book`` channel, depth 10): frames go as received to :class:`sabot.book.KrakenBooks`,
which verifies the CRC32 checksum of every snapshot and update; each change of a symbol's top
levels is one book record (:mod:`sabot.collectors.books`).  A checksum mismatch drops that
symbol's book, is counted (``book_resyncs``) and logged, and the symbol's book is unsubscribed
and subscribed again: the new snapshot restores it.
"""
from __future__ import annotations

import logging

import pyarrow as pa

from sabot.book import BookError, ChecksumMismatch, KrakenBooks

from sabot.collectors.base import (
    BOOK, CONTROL, DATA, ERROR, REJECTED, SUBSCRIBED, TRADES, UNKNOWN, ExchangeCollector, Parsed, dumps, num, parsed,
    rfc3339_to_ns,
)
from sabot.collectors.books import BOOK_DEPTH, book_records
from sabot.venues.registry import Venue, register

log = logging.getLogger("sabot.collectors")

#: Every book frame starts so (the venue's compact JSON).
_BOOK_TAG = '"channel":"book"'
_BOOK_TAG_B = _BOOK_TAG.encode()

__all__ = ["KrakenCollector", "VENUE"]


class KrakenCollector(ExchangeCollector):
    name = "kraken"
    default_url = "wss://ws.kraken.com/v2"
    default_symbols = ("BTC/USD", "ETH/USD", "USDT/USD")
    #: Logged once per connection when subscribed ({dest}: "Kafka topic 'x'"; {short}: "Kafka").
    subscribed_template = "✅ Subscription confirmed; streaming to {dest}"
    stale_after = 15.0  # heartbeat ~1/s when idle
    supported_channels = ("ticker", "trades", "book")
    #: The subscribed book depth (Kraken: 10, 25, 100, 500 or 1000).
    book_depth = 10

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.books: KrakenBooks | None = None
        self.on_connect()

    @classmethod
    def split_exchange_symbol(cls, text: str) -> tuple[str, str] | None:
        """REST names ``XXBTZUSD``, ``XETHZEUR``: X-prefixed crypto, Z-prefixed fiat codes."""
        if len(text) == 8 and text[0] == "X" and text[4] in "XZ":
            return text[1:4], text[5:]
        return None

    def on_connect(self) -> None:
        """A new connection: its book snapshots start every book again."""
        if "book" in self.channels:
            self.books = KrakenBooks(self.book_depth, out_depth=BOOK_DEPTH)

    def _book_subscription(self, method: str, symbols: list[str]) -> str:
        params = {"channel": "book", "symbol": symbols, "depth": self.book_depth}
        if method == "subscribe":
            params["snapshot"] = True
        return dumps({"method": method, "params": params, "req_id": 3 if method == "subscribe" else 4})

    def parse(self, raw: str | bytes, recv_ns: int) -> Parsed:
        """Book frames to the checksum-verified books; every other frame as before."""
        books = self.books
        if books is not None and (_BOOK_TAG in raw if type(raw) is str else _BOOK_TAG_B in raw):
            try:
                books.on_message(raw, recv_ns)
            except ChecksumMismatch as exc:
                self.book_resyncs += 1
                log.warning("kraken: %s (book resync #%d)", exc, self.book_resyncs)
                self.outbox.append(self._book_subscription("unsubscribe", [exc.symbol]))
                self.outbox.append(self._book_subscription("subscribe", [exc.symbol]))
            except BookError as exc:
                # rows recorded before the bad value stay pending: the next book frame hands them out
                return Parsed(UNKNOWN, detail=f"malformed book frame: {exc}")
            return parsed((BOOK, book_records(books.books, self.record_symbol), ""))
        return super().parse(raw, recv_ns)

    def subscribe_messages(self) -> list[str]:
        msgs = []
        if "ticker" in self.channels:
            msgs.append(dumps({
                "method": "subscribe",
                "params": {"channel": "ticker", "symbol": self.symbols, "event_trigger": "bbo",
                           "snapshot": True},
                "req_id": 1,
            }))
        if "trades" in self.channels:
            msgs.append(dumps({
                "method": "subscribe",
                "params": {"channel": "trade", "symbol": self.symbols, "snapshot": True},
                "req_id": 2,
            }))
        if "book" in self.channels:
            msgs.append(self._book_subscription("subscribe", self.symbols))
        return msgs

    def _parse(self, msg: dict, recv_ns: int) -> Parsed:
        channel = msg.get("channel")
        if channel == "ticker":
            records = []
            cache = self._symbol_cache
            for t in msg["data"]:
                raw = t["symbol"]
                ts = t.get("timestamp")
                records.append({
                    "exchange": "kraken",
                    "symbol": cache.get(raw) or self.record_symbol(raw),
                    "raw_symbol": raw,
                    "timestamp": rfc3339_to_ns(ts) if ts is not None else recv_ns,
                    "recv_timestamp": recv_ns,
                    "time_source": "exchange" if ts is not None else "receive",
                    "bid": num(t["bid"]),
                    "ask": num(t["ask"]),
                    "bid_size": num(t["bid_qty"]),
                    "ask_size": num(t["ask_qty"]),
                    "price": num(t.get("last")),
                    "volume_24h": num(t.get("volume")),
                    "sequence": None,
                    "vwap": num(t.get("vwap")),
                    "change_pct": num(t.get("change_pct")),
                })
            return parsed((DATA, records, ""))
        if channel == "trade" and "trades" in self.channels:
            records = []
            cache = self._symbol_cache
            fresh = self.trade_ids.fresh
            for t in msg["data"]:
                raw = t["symbol"]
                tid = t["trade_id"]
                if type(tid) is int:
                    tid = str(tid)
                records.append({
                    "exchange": "kraken",
                    "symbol": cache.get(raw) or self.record_symbol(raw),
                    "raw_symbol": raw,
                    "timestamp": rfc3339_to_ns(t["timestamp"]),
                    "recv_timestamp": recv_ns,
                    "price": num(t["price"]),
                    "size": num(t["qty"]),
                    "side": t["side"],
                    "trade_id": tid,
                    "sequence": None,
                    "time_source": "exchange",
                })
            # only a frame read whole marks its ids as recorded; an id seen before is dropped
            return parsed((TRADES, [r for r in records if type(r["trade_id"]) is not str
                                    or not r["trade_id"] or fresh(r["raw_symbol"], r["trade_id"])], ""))
        if channel == "heartbeat" or channel == "status":
            return Parsed(CONTROL)
        method = msg.get("method")
        if method is not None:
            if msg.get("success") is False or "error" in msg:
                sym = msg.get("symbol")
                text = str(msg.get("error", msg))
                if method == "subscribe" and isinstance(sym, str) and (sym in self.symbols or sym in self.refused):
                    return Parsed(REJECTED, [{"raw_symbol": sym}], text)
                return Parsed(ERROR, detail=f"{text} (symbol {sym})" if sym else text)
            if method == "subscribe":
                result = msg.get("result") or {}
                return Parsed(SUBSCRIBED, detail=f"{result.get('channel')} {result.get('symbol')}")
            return Parsed(CONTROL)  # pong, unsubscribe acks
        return Parsed(UNKNOWN, detail=f"unsupported message channel={channel!r}")


VENUE = register(Venue(
    name="kraken",
    collector=KrakenCollector,
    simulator="sabot.sim.kraken:KrakenSim",
    default_fee_bps=16.0,
    extra_fields=(pa.field("vwap", pa.float64()), pa.field("change_pct", pa.float64())),
    field_checks={"vwap": "positive", "change_pct": "finite"},
    sim_profile={"noise": 3e-4, "half_spread": 1.0e-4, "latency_ms": 60.0, "decimals": 1},
))
