"""The Kraken simulator writer: a local server speaking WebSocket v2's ``ticker`` and ``trade``
channels (the venue itself is :mod:`sabot.venues.kraken`).

``trade``: one ack per symbol, then (with ``snapshot: true``) a ``snapshot`` frame of its recent
trades, then an ``update`` frame with the trades printed after each quote; ``side`` is the
taker's, ``trade_id`` an integer increasing per symbol.

``book``: one ack per symbol, then the symbol's snapshot; an update after each quote, each with
the CRC32 checksum of the top 10 levels (a wrong one with ``book_fault_every``); ``unsubscribe``
ends a symbol's book, a new ``subscribe`` sends a new snapshot."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from sabot.sim.books import KrakenBookFeed
from sabot.sim.quotes import Quote, Trade
from sabot.sim.servers import FAR_FUTURE, Conn, SimServer, json_text, ns_to_rfc3339

__all__ = ["KrakenSim"]


class KrakenSim(SimServer):
    """Kraken v2: status frame on connect, one ack per symbol, snapshot first, heartbeats, ping/pong."""

    exchange = "kraken"

    def _stamp(self) -> str:
        return ns_to_rfc3339(time.time_ns(), 6, trim=False)

    async def on_open(self, conn: Conn) -> None:
        await conn.ws.send(json_text({"channel": "status", "type": "update", "data": [{
            "version": "2.0.10", "system": "online", "api_version": "v2",
            "connection_id": 18125794168470749634, "upcoming_maintenance": [], "emergency": []}]}))

    async def on_message(self, conn: Conn, msg: Any, text: str) -> None:
        t_in = self._stamp()
        if not isinstance(msg, dict) or "method" not in msg:
            await conn.ws.send(json_text({"error": "Malformed request", "success": False,
                                       "time_in": t_in, "time_out": self._stamp()}))
            return
        method = msg["method"]
        req = {"req_id": msg["req_id"]} if "req_id" in msg else {}
        if method == "ping":
            await conn.ws.send(json_text({"method": "pong", **req, "time_in": t_in, "time_out": self._stamp()}))
            return
        params = msg.get("params") or {}
        channel = params.get("channel")
        if channel == "book" and method in ("subscribe", "unsubscribe"):
            await self._book_request(conn, method, params, req, t_in)
            return
        if method != "subscribe" or channel not in ("ticker", "trade"):
            await conn.ws.send(json_text({"error": f"Unsupported method or channel {method!r}",
                                       "method": method, "success": False, **req,
                                       "time_in": t_in, "time_out": self._stamp()}))
            return
        trigger = params.get("event_trigger", "trades")
        snapshot = params.get("snapshot", channel == "ticker")  # the trade channel's default: none
        subscribed = conn.symbols if channel == "ticker" else conn.trade_symbols
        for sym in params.get("symbol") or []:
            if not isinstance(sym, str) or "/" not in sym or sym.startswith("XBT/") or not self.is_listed(sym):
                if isinstance(sym, str):
                    self.rejected_symbols.append(sym)
                await conn.ws.send(json_text({"error": f"Currency pair not supported {sym}", "method": "subscribe",
                                           "success": False, "symbol": sym, **req,
                                           "time_in": t_in, "time_out": self._stamp()}))
                continue
            if sym not in subscribed:
                subscribed.append(sym)
            result = ({"channel": "ticker", "event_trigger": trigger, "snapshot": snapshot, "symbol": sym}
                      if channel == "ticker" else {"channel": "trade", "snapshot": snapshot, "symbol": sym})
            await conn.ws.send(json_text({"method": "subscribe", "result": result, "success": True, **req,
                                          "time_in": t_in, "time_out": self._stamp()}))
            if channel == "trade" and snapshot:
                await self.send_trades(conn, self.recent_trades(sym), True)
        if conn.symbols or conn.trade_symbols:
            conn.subscribed.set()

    async def _book_request(self, conn: Conn, method: str, params: dict, req: dict, t_in: str) -> None:
        depth = params.get("depth", 10)
        if depth not in (10, 25, 100, 500, 1000):
            await conn.ws.send(json_text({"error": f"Invalid depth {depth!r}", "method": method, "success": False,
                                          **req, "time_in": t_in, "time_out": self._stamp()}))
            return
        fresh = []
        for sym in params.get("symbol") or []:
            if not isinstance(sym, str) or "/" not in sym or sym.startswith("XBT/") or not self.is_listed(sym):
                if isinstance(sym, str) and method == "subscribe":
                    self.rejected_symbols.append(sym)
                await conn.ws.send(json_text({"error": f"Currency pair not supported {sym}", "method": method,
                                              "success": False, "symbol": sym, **req,
                                              "time_in": t_in, "time_out": self._stamp()}))
                continue
            result = {"channel": "book", "depth": depth, "symbol": sym}
            if method == "subscribe":
                result["snapshot"] = True
                if sym not in conn.book_symbols:
                    conn.book_symbols.append(sym)
                self._book_feeds[sym] = KrakenBookFeed(self.sim_book(sym), sym, depth)
                fresh.append(sym)
            elif sym in conn.book_symbols:
                conn.book_symbols.remove(sym)
            await conn.ws.send(json_text({"method": method, "result": result, "success": True, **req,
                                          "time_in": t_in, "time_out": self._stamp()}))
        if method == "subscribe":
            await self.send_book_snapshots(conn, fresh)
            if conn.book_symbols:
                conn.subscribed.set()

    def book_snapshot_frames(self, conn: Conn, raw: str) -> list[str]:
        return [self._book_feeds[raw].snapshot()]

    def book_update_frames(self, conn: Conn, raw: str, fault: bool) -> list[str]:
        feed = self._book_feeds[raw]
        return [self.book_now(feed.update(bad_checksum=fault), feed.book)]

    async def keepalive(self, conn: Conn) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            if not conn.silent:
                await conn.ws.send('{"channel":"heartbeat"}')

    def encode(self, q: Quote, conn: Conn, snapshot: bool) -> list[tuple[str, bool]]:
        d = self.decimals
        mid = (q.bid + q.ask) / 2
        return [(json_text({"channel": "ticker", "type": "snapshot" if snapshot else "update", "data": [{
            "symbol": self.raw_symbol(q.symbol), "bid": q.bid, "bid_qty": q.bid_size,
            "ask": q.ask, "ask_qty": q.ask_size, "last": q.price, "volume": q.volume,
            "vwap": round(mid * 1.001, d), "low": round(mid * 0.97, d), "high": round(mid * 1.02, d),
            "change": round(mid * -0.0051, d), "change_pct": -0.51, "trades": 135262,
            "timestamp": ns_to_rfc3339(self.event_time_ns(), 6, trim=False)}]}), True)]

    def encode_trades(self, trades: list[Trade], conn: Conn, snapshot: bool) -> list[str]:
        return [json_text({"channel": "trade", "type": "snapshot" if snapshot else "update", "data": [{
            "symbol": t.symbol, "side": t.side, "price": t.price, "qty": t.size,
            "ord_type": "market" if t.trade_id % 3 else "limit", "trade_id": t.trade_id,
            "timestamp": ns_to_rfc3339(t.t_ns, 6, trim=False)} for t in trades]})]

    def error_frame(self, text: str) -> str:
        t = self._stamp()
        return json_text({"error": text, "method": "subscribe", "success": False, "symbol": "XBT/USD",
                       "time_in": t, "time_out": t})

    def bad_data_frame(self, conn: Conn) -> str:
        return json_text({"channel": "ticker", "type": "update", "data": [{"bid": "n/a", "ask": 1}]})

    def corrupt(self, text: str, kind: str) -> str:
        msg = orjson.loads(text)
        t = msg["data"][0]
        if kind == "future":
            t["timestamp"] = FAR_FUTURE
        elif kind == "unsubscribed":
            t["symbol"] = self.stray_symbol
        elif kind == "control":
            t["symbol"] += "\u0000"
        elif kind == "inf":  # a JSON number beyond float64: not expressible through a float
            t["ask"] = "__INF__"
            return json_text(msg).replace('"__INF__"', "1e999")
        else:
            field, value = {"nan": ("bid", "nan"), "negative": ("last", -5), "zero": ("bid", 0),
                            "bool": ("bid", True), "negative_size": ("ask_qty", -1.5)}[kind]
            t[field] = value
        return json_text(msg)
