"""Binance: everything sabot knows about the venue, in one module.

Registered as ``binance`` (topic ``binance-ticker``, 10 bps taker fee by default).  Symbols are
spelled ``BTCUSDT`` (upper case in payloads, lower case in stream names); USD books are the
USDT ones.  The local exchange server is :class:`sabot.sim.binance.BinanceSim`.

Collector: Spot combined streams ``<s>@bookTicker`` + ``<s>@ticker`` (tickers) and
``<s>@trade`` (trades).

Every bookTicker update is a record: no exchange time exists, so ``timestamp`` is the receive
time (``time_source`` ``"receive"``) and ``u`` the sequence.  The latest 24 h ticker per symbol fills ``price``/``volume_24h``
and the extra columns (``last_price``, ``price_change_pct``, ``num_trades``).  Decimal strings
are parsed with ``float(str)`` (correctly rounded).  ``serverShutdown`` asks for a reconnect.

Trades: each ``trade`` event is one record: ``T`` (trade time, ms) is the event time
(``time_source`` ``"exchange"``), ``t`` the trade id, ``p``/``q`` price and size.  ``m`` says
whether the buyer was the maker, so the aggressor is the seller when ``m`` is true:
``m=true`` -> ``"sell"``, ``m=false`` -> ``"buy"``.  ``aggTrade`` events (from a URL naming
``@aggTrade`` streams) are read the same way with the aggregate id ``a`` as ``trade_id``.
Binance sends no snapshot and no sequence number for trades.

Book (``<s>@depth@100ms`` diff depth): each symbol's :class:`sabot.book.BinanceBook` buffers
events until a REST snapshot (``GET <rest_url>/api/v3/depth?symbol=<S>&limit=<depth_limit>``,
fetched beside the connection, never blocking it) is installed, then applies them with the
``U``/``u`` update-id checks; each change of a symbol's top levels is one book record
(:mod:`sabot.collectors.books`).  A hole in the update ids drops the symbol's book, is counted
(``book_resyncs``) and logged, and a new snapshot is fetched; a snapshot older than the
buffered events is fetched again; a failed fetch is logged and retried with backoff.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
import urllib.request
from typing import Any, Callable

import pyarrow as pa

from sabot.book import BinanceBook, BookSet, DepthGap, StaleSnapshot
from sabot.collectors.books import BOOK_DEPTH, book_records
from sabot.collectors.base import (
    BOOK, CONTROL, DATA, ERROR, RECONNECT, SUBSCRIBED, TRADES, UNKNOWN, ExchangeCollector, Parsed, int64, ms_to_ns, num,
    parsed,
)
from sabot.venues.registry import Venue, register

__all__ = ["BinanceCollector", "VENUE"]

log = logging.getLogger("sabot.collectors")

_NO_TICKER = (None, None, None, None)


def _finite(value: Any, field: str) -> float:
    """A 24 h ticker value as a finite float, else ``ValueError`` naming ``field``."""
    x = num(value)
    if type(x) is not float or x != x or x in (math.inf, -math.inf):
        raise ValueError(f"24hrTicker {field}={value!r} is not a finite number")
    return x


def control_message(msg: dict, event: Any) -> Parsed:
    """What a Binance frame that carries no market data says (spot and USD-M futures alike): a
    planned shutdown (reconnect), an error, a subscription reply, or something unsupported."""
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


class BinanceCollector(ExchangeCollector):
    name = "binance"
    default_url = "wss://stream.binance.com:9443"
    default_symbols = ("BTCUSDT", "ETHUSDT")
    client_pings = False  # the server pings every 20 s; websockets answers with a pong
    #: Logged once per connection when subscribed ({dest}: "Kafka topic 'x'"; {short}: "Kafka").
    subscribed_template = "Connected! Streaming to {short}..."
    stale_after = 60.0  # bookTicker is real-time, but a quiet book may be silent for a while
    rejects_by_silence = True  # an unlisted symbol's streams simply never send anything
    supported_channels = ("ticker", "trades", "book")
    #: Where book snapshots come from (``GET /api/v3/depth``); ``--rest-url`` changes it.
    rest_url = "https://api.binance.com"
    #: Levels asked of each REST snapshot.
    depth_limit = 1000

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
        # Silence means "not listed" only where data is continuous (bookTicker); a quiet market's
        # trades stream may say nothing for minutes, so trades alone never report silence.
        self.rejects_by_silence = "ticker" in self.channels
        # raw symbol (upper case) -> (last price, 24 h base volume, change %, trade count)
        self._ticker: dict[str, tuple] = {}
        self.book_set: BookSet | None = None
        self.depth_books: dict[str, BinanceBook] = {}
        self.snapshot_errors = 0  # REST snapshot fetches that failed (retried)
        self._need_snapshot: asyncio.Event | None = None
        self.on_connect()

    def books_waiting(self) -> int | None:
        """Symbols whose book waits for a REST snapshot."""
        if self.book_set is None:
            return None
        return sum(1 for b in self.depth_books.values() if b.needs_snapshot)

    def on_connect(self) -> None:
        """A new connection: every book waits for its first events and a new snapshot."""
        if "book" in self.channels:
            self.book_set = BookSet("binance", BOOK_DEPTH)
            self.depth_books = {raw.upper(): BinanceBook(raw.upper(), self.book_set) for raw in self.symbols}

    def _depth_event(self, data: dict, recv_ns: int) -> Parsed:
        book = self.depth_books.get(data.get("s"))
        if book is None:
            return Parsed(UNKNOWN, detail=f"depthUpdate for unsubscribed symbol {data.get('s')!r}")
        try:
            book.on_event(data, recv_ns)
        except DepthGap as exc:
            self.book_resyncs += 1
            log.warning("binance: %s (book resync #%d)", exc, self.book_resyncs)
        if book.needs_snapshot and self._need_snapshot is not None:
            self._need_snapshot.set()
        return parsed((BOOK, book_records(self.book_set, self.record_symbol), ""))

    def fetch_snapshot(self, raw: str) -> bytes:
        """The REST depth snapshot body of ``raw`` (blocking; run off the event loop)."""
        url = f"{self.rest_url.rstrip('/')}/api/v3/depth?symbol={raw}&limit={self.depth_limit}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.read()

    async def session_task(self, deliver: Callable[[int, list, Any], None]) -> None:
        """Fetch REST snapshots for the books that wait for one, for as long as the connection lives."""
        if "book" not in self.channels:
            return
        need = self._need_snapshot = asyncio.Event()
        delay = 0.5
        while True:
            await need.wait()
            need.clear()
            for raw, book in list(self.depth_books.items()):
                if not book.needs_snapshot or not book.buffer:  # snapshot once events are buffered
                    continue
                try:
                    body = await asyncio.to_thread(self.fetch_snapshot, raw)
                    book.on_snapshot(body, time.time_ns())
                    delay = 0.5
                except StaleSnapshot as exc:
                    log.info("binance: %s; fetching it again", exc)
                    need.set()
                except DepthGap as exc:
                    self.book_resyncs += 1
                    log.warning("binance: %s (book resync #%d)", exc, self.book_resyncs)
                    need.set()
                except (OSError, ValueError) as exc:  # network, HTTP status, malformed body (BookError)
                    self.snapshot_errors += 1
                    log.warning("binance: depth snapshot of %s failed (#%d): %s; retrying in %.1f s",
                                raw, self.snapshot_errors, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    need.set()
                rows = book_records(self.book_set, self.record_symbol)
                if rows:
                    deliver(BOOK, rows, None)

    def url(self, base_url: str | None = None) -> str:
        base = (base_url or self.default_url).rstrip("/")
        if "streams=" in base:
            return base
        kinds = (("bookTicker", "ticker") if "ticker" in self.channels else ()) + (
            ("trade",) if "trades" in self.channels else ()) + (
            ("depth@100ms",) if "book" in self.channels else ())
        streams = "/".join(f"{s.lower()}@{kind}" for s in self.symbols for kind in kinds)
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
                "time_source": "receive",
                "last_price": last,
                "price_change_pct": chg,
                "num_trades": n,
            }], ""))
        event = data.get("e")
        if event == "depthUpdate" and self.book_set is not None:
            return self._depth_event(data, recv_ns)
        if (event == "trade" or event == "aggTrade") and "trades" in self.channels:
            raw = data["s"]
            tid = str(int64(data["t" if event == "trade" else "a"], "t" if event == "trade" else "a"))
            m = data["m"]
            if type(m) is not bool:
                raise ValueError(f"m {m!r} is not a boolean")
            record = {
                "exchange": "binance",
                "symbol": self._symbol_cache.get(raw) or self.record_symbol(raw),
                "raw_symbol": raw,
                "timestamp": ms_to_ns(data["T"], "T"),
                "recv_timestamp": recv_ns,
                "price": num(data["p"]),
                "size": num(data["q"]),
                "side": "sell" if m else "buy",  # m: the buyer is the maker, so the seller took
                "trade_id": tid,
                "sequence": None,
                "time_source": "exchange",
            }
            # Binance never resends a trade, but a replayed stream may: one record per id
            return parsed((TRADES, [record] if self.trade_ids.fresh(raw, tid) else [], ""))
        if event == "24hrTicker":
            # kept for the following records: refuse a bad one whole, the previous values stay
            values = (_finite(data["c"], "c"), _finite(data["v"], "v"), _finite(data["P"], "P"),
                      int64(data["n"], "n"))
            self._ticker[data["s"]] = values
            return Parsed(DATA)
        return control_message(msg, event)


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
