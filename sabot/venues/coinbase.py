"""Coinbase: everything sabot knows about the venue, in one module.

Registered as ``coinbase`` (topic ``coinbase-ticker``, 6 bps taker fee by default).  Symbols are
spelled ``BTC-USD``; the local exchange server is :class:`sabot.sim.coinbase.CoinbaseSim`.

Collector: Advanced Trade ``ticker`` and ``market_trades`` channels.

Subscribe one channel per message (``ticker``, ``market_trades`` when trades are recorded, and
``heartbeats``); each ``events[].tickers[]``
entry becomes one record (best bid/ask, sizes, price and 24 h volume are required; a frame
lacking them is counted as unknown).  Prices are decimal strings (``float(str)`` is correctly rounded);
the envelope ``timestamp`` (RFC 3339, 3-9 fractional digits) is the event time, stored exactly
as integer ns in ``timestamp`` and ``parent_timestamp``; ``sequence_num`` is the sequence;
``time_source`` is ``"exchange"``.

Trades (``market_trades``): each ``events[].trades[]`` entry is one trade record: ``time`` is
the event time, ``trade_id`` the id, ``sequence_num`` of the envelope the sequence.  Coinbase's
``side`` is the MAKER's side, so the aggressor is the other one: ``"BUY"`` -> ``"sell"``,
``"SELL"`` -> ``"buy"``.  One frame lists its trades newest first; records are emitted oldest
first.  On every subscribe Coinbase sends a ``snapshot`` of recent trades: they are recorded,
except those already recorded on this run (a reconnect fills its gap without repeating a
trade id).

Book (``level2`` channel, data on ``l2_data``): every frame of the connection goes to
:class:`sabot.book.CoinbaseBooks`, as ``sequence_num`` numbers all of them; each change of a
product's top levels is one book record (:mod:`sabot.collectors.books`).  A jump in
``sequence_num`` (a frame lost) drops the books, is counted (``book_resyncs``) and logged, and
``level2`` is unsubscribed and subscribed again: the new snapshots restore the books.  With the
book on, the ticker channel carries the true best bid/offer: each ticker frame's record takes the
book's best levels at that moment (the ticker channel's own best bid/ask only move on trades),
and every change of a product's best bid or offer in the book is a ticker record of its own
(``sequence`` null, ``price``/``volume_24h`` those of the last ticker frame), so a consumer of
the ticker topic - the arbitrage monitor - follows the book between trades.  Until a product's
book is in sync its ticker records keep the ticker channel's values.
"""
from __future__ import annotations

import re
from typing import Optional, Union

import msgspec
import pyarrow as pa

import logging

import orjson

from sabot.book import BookError, CoinbaseBooks, SequenceGap
from sabot.collectors.books import BOOK_DEPTH, book_records

from sabot.collectors.base import (
    BOOK, CONTROL, DATA, ERROR, REJECTED, SUBSCRIBED, TRADES, UNKNOWN, ExchangeCollector, Parsed, dumps, int64, num,
    parsed, rfc3339_to_ns,
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


#: Coinbase's ``side`` of a market trade is the maker's; the aggressor took the other side.
_AGGRESSOR = {"BUY": "sell", "SELL": "buy", "buy": "sell", "sell": "buy"}


log = logging.getLogger("sabot.collectors")


class CoinbaseCollector(ExchangeCollector):
    name = "coinbase"
    supported_channels = ("ticker", "trades", "book")
    default_url = "wss://advanced-trade-ws.coinbase.com"
    default_symbols = ("BTC-USD", "ETH-USD")
    #: Logged once per connection when subscribed ({dest}: "Kafka topic 'x'"; {short}: "Kafka").
    subscribed_template = "Subscribed; streaming to {dest}"
    stale_after = 15.0  # heartbeats arrive every second
    resubscribe_after_reject = True  # an invalid product id fails the whole subscribe message

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.books: CoinbaseBooks | None = None
        #: records of another channel made from the frame just parsed (the connection loop
        #: delivers them after the frame's own): ticker records from top-of-book changes
        self.derived: list[tuple[int, list]] = []
        #: per product, the last ticker frame's ``price`` and ``volume_24h`` (a ticker record
        #: made from the book carries them: they change on trades only)
        self._last_trade_fields: dict[str, tuple] = {}
        self.on_connect()

    def on_connect(self) -> None:
        """A new connection numbers its frames from the start: new books, new sequence."""
        if "book" in self.channels:
            self.books = CoinbaseBooks(out_depth=BOOK_DEPTH)

    @classmethod
    def to_exchange_symbol(cls, symbol: str) -> str:
        """``BTC/USD`` -> ``BTC-USD`` (product ids); text without ``/`` is returned as is."""
        if "/" not in symbol:
            return symbol
        base, quote = super().to_exchange_symbol(symbol).split("/")
        return f"{base}-{quote}"

    def subscribe_messages(self) -> list[str]:
        msgs = []
        if "ticker" in self.channels:
            msgs.append(dumps({"type": "subscribe", "product_ids": self.symbols, "channel": "ticker"}))
        if "trades" in self.channels:
            msgs.append(dumps({"type": "subscribe", "product_ids": self.symbols, "channel": "market_trades"}))
        if "book" in self.channels:
            msgs.append(dumps({"type": "subscribe", "product_ids": self.symbols, "channel": "level2"}))
        msgs.append(dumps({"type": "subscribe", "channel": "heartbeats"}))
        return msgs

    def parse(self, raw: str | bytes, recv_ns: int) -> Parsed:
        """Every frame through the books first when the book is on (see the module docstring)."""
        books = self.books
        if books is None:
            return self._parse_frame(raw, recv_ns)
        try:
            updated = books.on_message(raw, recv_ns)
        except SequenceGap as exc:
            self.book_resyncs += 1
            log.warning("coinbase: %s (book resync #%d)", exc, self.book_resyncs)
            for kind in ("unsubscribe", "subscribe"):
                self.outbox.append(dumps({"type": kind, "product_ids": self.symbols, "channel": "level2"}))
            updated = None
        except BookError as exc:
            if (b'"l2_data"' in raw) if type(raw) is bytes else ('"l2_data"' in raw):
                return Parsed(UNKNOWN, detail=f"malformed l2_data frame: {exc}")
            updated = None  # not a book frame (malformed JSON, ...): the ordinary path says why
        if updated:
            rows = book_records(books.books, self.record_symbol)
            if "ticker" in self.channels:
                quotes = self._book_quotes(rows)
                if quotes:
                    self.derived.append((DATA, quotes))
            return parsed((BOOK, rows, ""))
        p = self._parse_frame(raw, recv_ns)
        if p.kind == DATA:
            held = books.books
            last = self._last_trade_fields
            for rec in p.records:
                pid = rec["raw_symbol"]
                last[pid] = (rec["price"], rec["volume_24h"])
                if pid in held:
                    bid, bid_size, ask, ask_size = held[pid].bbo()
                    if bid == bid and ask == ask:  # both sides present (NaN otherwise)
                        rec["bid"], rec["bid_size"], rec["ask"], rec["ask_size"] = bid, bid_size, ask, ask_size
        return p

    def _book_quotes(self, rows: list[dict]) -> list[dict]:
        """A ticker record for each change of a product's best bid or offer among book rows
        (both sides present): the true top of book between trades, when the ticker channel
        sends nothing.  ``sequence`` is null (the record comes from a ``level2`` frame);
        ``price``/``volume_24h`` are the last ticker frame's."""
        out = []
        last = self._last_trade_fields
        for row in rows:
            if not row["top_changed"] or row["bid"] is None or row["ask"] is None:
                continue
            pid = row["raw_symbol"]
            price, volume = last.get(pid, (None, None))
            ts = row["timestamp"]
            out.append({"exchange": "coinbase", "symbol": row["symbol"], "raw_symbol": pid,
                        "timestamp": ts, "recv_timestamp": row["recv_timestamp"],
                        "bid": row["bid"], "ask": row["ask"], "bid_size": row["bid_size"],
                        "ask_size": row["ask_size"], "price": price, "volume_24h": volume,
                        "sequence": None, "time_source": "exchange", "product_id": pid,
                        "parent_timestamp": ts})
        return out

    def _parse_frame(self, raw: str | bytes, recv_ns: int) -> Parsed:
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
            if frame.channel == "market_trades" and "trades" in self.channels:
                return self._trades(raw, recv_ns)
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
                    "time_source": "exchange",
                    "product_id": pid,
                    "parent_timestamp": ts,
                })
        return parsed((DATA, records, ""))

    def _trades(self, raw: str | bytes, recv_ns: int) -> Parsed:
        """One ``market_trades`` frame -> trade records (never raises)."""
        try:
            msg = orjson.loads(raw)
            return self._trade_records(msg, recv_ns)
        except orjson.JSONDecodeError:
            return super().parse(raw, recv_ns)  # numbers beyond float64: the generic path
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            return Parsed(UNKNOWN, detail=f"malformed market_trades frame: {type(exc).__name__} {exc}")

    def _trade_records(self, msg: dict, recv_ns: int) -> Parsed:
        seq = msg.get("sequence_num")
        if seq is not None:
            seq = int64(seq, "sequence_num")
        records = []
        cache = self._symbol_cache
        fresh = self.trade_ids.fresh
        for event in msg["events"]:
            batch = []
            for t in event["trades"]:
                pid = t["product_id"]
                tid = t["trade_id"]
                if type(tid) is int:
                    tid = str(tid)
                side = t["side"]
                batch.append({
                    "exchange": "coinbase",
                    "symbol": cache.get(pid) or self.record_symbol(pid),
                    "raw_symbol": pid,
                    "timestamp": rfc3339_to_ns(t["time"]),
                    "recv_timestamp": recv_ns,
                    "price": num(t["price"]),
                    "size": num(t["size"]),
                    "side": _AGGRESSOR.get(side, side) if type(side) is str else side,
                    "trade_id": tid,
                    "sequence": seq,
                    "time_source": "exchange",
                })
            batch.sort(key=_by_time)  # newest first on the wire; oldest first in the record
            records.extend(batch)
        # only a frame read whole marks its ids as recorded; an id seen before is dropped here
        return parsed((TRADES, [r for r in records if _fresh(fresh, r)], ""))

    def _parse(self, msg: dict, recv_ns: int) -> Parsed:
        channel = msg.get("channel")
        if channel == "ticker":  # the typed decoder refused it: say which field is wrong
            rfc3339_to_ns(msg["timestamp"])  # a bad or missing timestamp is named first
            try:
                _FRAME_DECODER.decode(msgspec.json.encode(msg))
            except msgspec.ValidationError as exc:
                return Parsed(UNKNOWN, detail=f"malformed ticker frame: {exc}")
            return Parsed(UNKNOWN, detail="malformed ticker frame")
        if channel == "market_trades" and "trades" in self.channels:
            return self._trade_records(msg, recv_ns)
        if channel == "heartbeats":
            return Parsed(CONTROL)
        if channel == "l2_data" and self.books is not None:
            return Parsed(BOOK)  # an update of a book not held (yet): counted by the books
        if channel == "subscriptions":
            subs = {}
            for event in msg.get("events", ()):
                subs.update(event.get("subscriptions", {}))
            return Parsed(SUBSCRIBED, detail=dumps(subs))
        if channel is None and msg.get("type") == "error":
            text = str(msg.get("message", msg))
            if text.lower().startswith("invalid product_ids"):
                named = set(_PRODUCT_ID.findall(text))
                # a refusal repeated for the other channel's subscription names a dropped symbol
                refused = [{"raw_symbol": s} for s in [*self.symbols, *sorted(self.refused)] if s in named]
                if refused:
                    return Parsed(REJECTED, refused, text)
            return Parsed(ERROR, detail=text)
        return Parsed(UNKNOWN, detail=f"unsupported message channel={channel!r} type={msg.get('type')!r}")


def _by_time(record: dict) -> int:
    return record["timestamp"]


def _fresh(fresh: object, record: dict) -> bool:
    """Whether ``record``'s trade was not recorded yet (a malformed id goes on to validation)."""
    tid = record["trade_id"]
    return not (type(tid) is str and tid) or fresh(record["raw_symbol"], tid)  # type: ignore[operator]


VENUE = register(Venue(
    name="coinbase",
    collector=CoinbaseCollector,
    simulator="sabot.sim.coinbase:CoinbaseSim",
    default_fee_bps=6.0,
    extra_fields=(pa.field("product_id", pa.string()),
                  pa.field("parent_timestamp", pa.timestamp("ns", tz="UTC"))),
    sim_profile={"noise": 2e-4, "half_spread": 0.5e-4, "latency_ms": 40.0, "decimals": 2},
))
