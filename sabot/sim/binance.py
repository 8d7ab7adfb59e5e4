"""The Binance simulator writer: a local server speaking Spot's combined ``bookTicker``,
``ticker`` and ``trade`` streams (the venue itself is :mod:`sabot.venues.binance`).

``<s>@trade``: one frame per trade printed after a quote (``t`` increasing per symbol, ``T``
the trade time in ms, ``m`` true when the buyer was the maker, i.e. the seller took); no
snapshot, as on Binance.

``<s>@depth@100ms``: a ``depthUpdate`` per symbol after each quote (``U``/``u`` update ids,
``book_fault_every``: an event is lost, a gap), and the REST snapshot ``GET /api/v3/depth?symbol=
<S>&limit=<n>`` answered on the same port; ``stale_snapshots=N`` serves the first N snapshots as
they were some events ago (a lagging cache)."""
from __future__ import annotations

import asyncio
import itertools
import time
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from sabot.sim.books import STEP_NS, T0_NS, BinanceDepthFeed
from sabot.sim.quotes import Quote, Trade
from sabot.sim.servers import CORRUPT_KINDS, Conn, SimServer, json_text

__all__ = ["BinanceSim"]


class BinanceSim(SimServer):
    """Binance Spot: combined-stream URL subscribes, ping frames, SUBSCRIBE replies, serverShutdown."""

    exchange = "binance"

    def __init__(self, *args: Any, ticker_every: int = 5, stale_snapshots: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ticker_every = ticker_every
        self.stale_snapshots = stale_snapshots
        self.rest_requests = 0  # REST depth snapshots served (stale ones included)
        self.stale_served = 0
        self._update_id = itertools.count(400_900_000)
        self._steps: dict[str, int] = {}
        self.streams_seen: list[list[str]] = []

    async def on_open(self, conn: Conn) -> None:
        parts = urlsplit(conn.ws.request.path)
        streams: list[str] = []
        if parts.path.rstrip("/") == "/stream":
            for value in parse_qs(parts.query).get("streams", []):
                streams.extend(s for s in value.split("/") if s)
        elif parts.path.startswith("/ws/"):
            conn.raw_stream = True
            streams = [s for s in parts.path[4:].split("/") if s]
        self._add_streams(conn, streams)

    def _add_streams(self, conn: Conn, streams: list[str]) -> None:
        self.streams_seen.append(list(streams))
        for s in streams:
            sym, _, kind = s.partition("@")
            if not self.is_listed(sym.upper()):
                # Binance answers an unlisted symbol's stream with silence, not an error
                if sym.upper() not in self.rejected_symbols:
                    self.rejected_symbols.append(sym.upper())
                continue
            conn.channels.add(s)
            if sym.upper() not in conn.symbols and kind in ("bookTicker", "ticker"):
                conn.symbols.append(sym.upper())
            if sym.upper() not in conn.trade_symbols and kind == "trade":
                conn.trade_symbols.append(sym.upper())
            if kind in ("depth", "depth@100ms") and sym.upper() not in conn.book_symbols:
                conn.book_symbols.append(sym.upper())
                self._depth_feed(sym.upper())
        if streams:
            conn.subscribed.set()

    async def on_message(self, conn: Conn, msg: Any, text: str) -> None:
        if not isinstance(msg, dict):
            await conn.ws.send(json_text({"error": {"code": 3, "msg": f"Invalid JSON: {text[:60]}"}, "id": None}))
            return
        method, rid = msg.get("method"), msg.get("id")
        if method == "SUBSCRIBE":
            self._add_streams(conn, list(msg.get("params") or []))
            await conn.ws.send(json_text({"result": None, "id": rid}))
        elif method == "LIST_SUBSCRIPTIONS":
            await conn.ws.send(json_text({"result": sorted(conn.channels), "id": rid}))
        else:
            await conn.ws.send(json_text({"error": {"code": 2, "msg": "Invalid request: unknown method"},
                                       "id": rid}))

    async def keepalive(self, conn: Conn) -> None:
        opened = time.monotonic()
        while True:
            wait = self.ping_interval
            if self.lifetime is not None:
                wait = min(wait, max(0.0, opened + self.lifetime - time.monotonic()))
            await asyncio.sleep(wait)
            if self.lifetime is not None and time.monotonic() - opened >= self.lifetime:
                self.drops += 1
                await conn.ws.close(1000, "connection lifetime reached")  # the 24 h drop
                return
            if conn.silent:
                continue
            waiter = await conn.ws.ping()
            try:
                await asyncio.wait_for(waiter, 60)
                self.pongs += 1
            except asyncio.TimeoutError:
                await conn.ws.close(1008, "pong timeout")
                return

    def _depth_feed(self, raw: str) -> BinanceDepthFeed:
        feed = self._book_feeds.get(raw)
        if feed is None:
            feed = self._book_feeds[raw] = BinanceDepthFeed(self.sim_book(raw), raw, history=8)
        return feed

    def book_update_frames(self, conn: Conn, raw: str, fault: bool) -> list[str]:
        feed = self._depth_feed(raw)
        text = feed.event(combined=not conn.raw_stream, gap=fault)
        fixed_ms = (T0_NS + feed.book.steps * STEP_NS) // 1_000_000
        return [text.replace(f'"E":{fixed_ms},', f'"E":{self.event_time_ns() // 1_000_000},', 1)]

    def process_request(self, connection: Any, request: Any) -> Any:
        """``GET /api/v3/depth?symbol=<S>&limit=<n>``: the REST snapshot of a simulated book."""
        parts = urlsplit(request.path)
        if parts.path != "/api/v3/depth":
            return None
        query = parse_qs(parts.query)
        raw = (query.get("symbol") or [""])[0]
        try:
            limit = int((query.get("limit") or ["100"])[0])
        except ValueError:
            limit = 0
        if raw not in self._book_feeds or not 1 <= limit <= 5000:
            response = connection.respond(HTTPStatus.BAD_REQUEST, json_text(
                {"code": -1121, "msg": "Invalid symbol."} if raw not in self._book_feeds
                else {"code": -1100, "msg": "Illegal characters found in parameter 'limit'."}))
        else:
            feed = self._book_feeds[raw]
            self.rest_requests += 1
            body = None
            if self.stale_served < self.stale_snapshots:
                try:
                    body = feed.stale_snapshot(8)  # as the book was 8 events ago
                    self.stale_served += 1
                except ValueError:  # fewer events so far: nothing stale to serve yet
                    pass
            if body is None:
                body = feed.rest_snapshot(limit)
            response = connection.respond(HTTPStatus.OK, body)
        response.headers["Content-Type"] = "application/json"
        return response

    def _wrap(self, conn: Conn, stream: str, data: dict) -> str:
        return json_text(data if conn.raw_stream else {"stream": stream, "data": data})

    def encode(self, q: Quote, conn: Conn, snapshot: bool) -> list[tuple[str, bool]]:
        raw = self.raw_symbol(q.symbol)
        low = raw.lower()
        frames = []
        step = self._steps.get(raw, 0)
        self._steps[raw] = step + 1
        if f"{low}@ticker" in conn.channels and step % self.ticker_every == 0:
            now_ms = self.event_time_ns() // 1_000_000
            frames.append((self._wrap(conn, f"{low}@ticker", {
                "e": "24hrTicker", "E": now_ms, "s": raw, "p": f"{q.price * 0.012:.8f}", "P": "1.215",
                "w": f"{q.price:.8f}", "x": f"{q.price * 0.988:.8f}", "c": f"{q.price:.8f}", "Q": "0.01000000",
                "b": f"{q.bid:.8f}", "B": f"{q.bid_size:.8f}", "a": f"{q.ask:.8f}", "A": f"{q.ask_size:.8f}",
                "o": f"{q.price * 0.988:.8f}", "h": f"{q.ask * 1.02:.8f}", "l": f"{q.bid * 0.97:.8f}",
                "v": f"{q.volume:.8f}", "q": f"{q.volume * q.price:.8f}", "O": now_ms - 86_400_000,
                "C": now_ms, "F": 1000, "L": 1000 + step, "n": step + 1}), False))
        if f"{low}@bookTicker" in conn.channels:
            frames.append((self._wrap(conn, f"{low}@bookTicker", {
                "u": next(self._update_id), "s": raw, "b": f"{q.bid:.8f}", "B": f"{q.bid_size:.8f}",
                "a": f"{q.ask:.8f}", "A": f"{q.ask_size:.8f}"}), True))
        return frames

    def encode_trades(self, trades: list[Trade], conn: Conn, snapshot: bool) -> list[str]:
        frames = []
        for t in trades:
            ms = t.t_ns // 1_000_000
            frames.append(self._wrap(conn, f"{t.symbol.lower()}@trade", {
                "e": "trade", "E": ms, "s": t.symbol, "t": t.trade_id, "p": f"{t.price:.8f}",
                "q": f"{t.size:.8f}", "T": ms, "m": t.side == "sell", "M": True}))
        return frames

    async def announce_shutdown(self, conn: Conn) -> None:
        data = {"e": "serverShutdown", "E": time.time_ns() // 1_000_000}
        await conn.ws.send(self._wrap(conn, "!serverShutdown", data))

    def error_frame(self, text: str) -> str:
        return json_text({"error": {"code": 2, "msg": text}, "id": None})

    def bad_data_frame(self, conn: Conn) -> str:
        return json_text({"stream": "btcusdt@bookTicker", "data": {"u": 1, "s": "BTCUSDT", "b": "abc",
                                                                "B": "1", "a": "2", "A": "1"}})

    supported_corruptions = tuple(k for k in CORRUPT_KINDS if k != "future")  # no exchange time

    def corrupt(self, text: str, kind: str) -> str:
        msg = orjson.loads(text)
        d = msg["data"] if "data" in msg else msg
        if kind == "unsubscribed":
            d["s"] = self.stray_symbol
        elif kind == "control":
            d["s"] += "\u0000"
        else:
            field, value = {"nan": ("b", "nan"), "inf": ("a", "1e999"), "negative": ("a", "-5"),
                            "zero": ("b", "0"), "bool": ("b", True), "negative_size": ("B", "-1.5")}[kind]
            d[field] = value
        return json_text(msg)
