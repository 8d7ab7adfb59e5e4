"""The Coinbase simulator writer: a local server speaking Advanced Trade's ``ticker``,
``market_trades`` and ``heartbeats`` channels (the venue itself is :mod:`sabot.venues.coinbase`).

``market_trades``: on subscribe one ``snapshot`` frame of recent trades per product, then an
``update`` frame with the trades printed after each quote; trades are listed newest first and
``side`` is the maker's side (the aggressor's opposite), as Coinbase sends them.

``level2``: on subscribe one ``l2_data`` snapshot per product, then an update after each quote,
numbered by the connection's ``sequence_num`` like every other frame (``book_fault_every``: a
frame is lost, a gap); ``unsubscribe`` ends the products' books, a new ``subscribe`` sends new
snapshots.  The ticker channel's best bid/ask stay those of the quotes: they do not follow the
book (on the venue they only move on trades)."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from sabot.sim.books import CoinbaseLevel2Feed
from sabot.sim.quotes import Quote, Trade
from sabot.sim.servers import FAR_FUTURE, Conn, SimServer, decimal_text, json_text, ns_to_rfc3339

__all__ = ["CoinbaseSim"]


class CoinbaseSim(SimServer):
    """Advanced Trade: one channel per subscribe, cumulative ``subscriptions`` acks, 5 s deadline."""

    exchange = "coinbase"

    def _envelope(self, conn: Conn, channel: str, events: list) -> str:
        # ``sequence_num`` is given when the frame is sent (:meth:`stamp`), so numbers follow wire order
        return json_text({"channel": channel, "client_id": "", "timestamp": ns_to_rfc3339(self.event_time_ns()),
                       "sequence_num": 0, "events": events})

    def stamp(self, conn: Conn, text: Any) -> Any:
        """Number the frame with the connection's next ``sequence_num`` (one skipped for a frame
        in ``conn.gaps``: the frame before it was lost)."""
        if type(text) is not str or not text.startswith('{"channel":'):
            return text
        head, sep, rest = text.partition('"sequence_num":')
        if not sep:
            return text
        if text in conn.gaps:
            conn.gaps.discard(text)
            conn.next_seq()
        digits = len(rest) - len(rest.lstrip("-0123456789"))
        return f"{head}{sep}{conn.next_seq()}{rest[digits:]}"

    async def on_message(self, conn: Conn, msg: Any, text: str) -> None:
        if not isinstance(msg, dict) or msg.get("type") not in ("subscribe", "unsubscribe"):
            await conn.ws.send(json_text({"type": "error", "message": "Failure to parse message"}))
            return
        channel = msg.get("channel")
        if channel == "level2":
            await self._level2_request(conn, msg)
            return
        if channel in ("ticker", "market_trades"):
            pids = msg.get("product_ids") or []
            if not pids or not all(isinstance(p, str) and "-" in p for p in pids):
                await conn.ws.send(json_text({"type": "error", "message": f"invalid product_ids {pids}"}))
                return
            unlisted = [p for p in pids if not self.is_listed(p)]
            if unlisted:  # the whole subscribe message is refused
                self.rejected_symbols.extend(unlisted)
                await conn.ws.send(json_text({"type": "error", "message": f"invalid product_ids {unlisted}"}))
                return
            subscribed = conn.symbols if channel == "ticker" else conn.trade_symbols
            subscribed.extend(p for p in pids if p not in subscribed)
        elif channel != "heartbeats":
            # the real service answers unknown channels with this (misleading) text
            await conn.ws.send(json_text({"type": "error", "message": "authentication failure"}))
            return
        conn.channels.add(channel)
        await self._ack(conn)
        if channel == "market_trades":
            for pid in msg.get("product_ids") or []:
                await self.send_trades(conn, self.recent_trades(pid), True)
        if channel in ("ticker", "market_trades"):
            conn.subscribed.set()

    async def _ack(self, conn: Conn) -> None:
        subs = {"heartbeats": ["heartbeats"]} if "heartbeats" in conn.channels else {}
        if "ticker" in conn.channels:
            subs["ticker"] = list(conn.symbols)
        if "market_trades" in conn.channels:
            subs["market_trades"] = list(conn.trade_symbols)
        if conn.book_symbols:
            subs["level2"] = list(conn.book_symbols)
        await conn.ws.send(self._envelope(conn, "subscriptions", [{"subscriptions": subs}]))

    async def _level2_request(self, conn: Conn, msg: dict) -> None:
        pids = msg.get("product_ids") or []
        if not pids or not all(isinstance(p, str) and "-" in p for p in pids):
            await conn.ws.send(json_text({"type": "error", "message": f"invalid product_ids {pids}"}))
            return
        unlisted = [p for p in pids if not self.is_listed(p)]
        if unlisted:
            if msg["type"] == "subscribe":
                self.rejected_symbols.extend(unlisted)
            await conn.ws.send(json_text({"type": "error", "message": f"invalid product_ids {unlisted}"}))
            return
        if msg["type"] == "unsubscribe":
            conn.book_symbols[:] = [p for p in conn.book_symbols if p not in pids]
            await self._ack(conn)
            return
        conn.book_symbols.extend(p for p in pids if p not in conn.book_symbols)
        await self._ack(conn)
        for pid in pids:
            feed = self._book_feeds.get(pid)
            if feed is None:
                feed = self._book_feeds[pid] = CoinbaseLevel2Feed(self.sim_book(pid), pid)
        await self.send_book_snapshots(conn, pids)
        conn.subscribed.set()

    def book_snapshot_frames(self, conn: Conn, raw: str) -> list[str]:
        feed = self._book_feeds[raw]
        return [self.book_now(feed.snapshot(), feed.book)]  # numbered when sent

    def book_update_frames(self, conn: Conn, raw: str, fault: bool) -> list[str]:
        feed = self._book_feeds[raw]
        text = self.book_now(feed.update(gap=fault), feed.book)  # a gap: one step is never sent
        if fault:
            conn.gaps.add(text)
        return [text]

    async def keepalive(self, conn: Conn) -> None:
        counter = 0
        started = time.monotonic()
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            if "heartbeats" in conn.channels and not conn.silent:
                counter += 1
                now = time.time_ns()
                current = (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now // 10**9))
                           + f".{now % 10**9 // 1000:06d} +0000 UTC m=+{time.monotonic() - started:.9f}")
                await conn.ws.send(self._envelope(conn, "heartbeats", [
                    {"current_time": current, "heartbeat_counter": counter}]))

    def encode(self, q: Quote, conn: Conn, snapshot: bool) -> list[tuple[str, bool]]:
        pid = self.raw_symbol(q.symbol)
        ticker = {
            "type": "ticker", "product_id": pid, "price": decimal_text(q.price),
            "volume_24_h": decimal_text(q.volume), "low_24_h": decimal_text(q.bid * 0.97), "high_24_h": decimal_text(q.ask * 1.02),
            "low_52_w": decimal_text(q.bid * 0.5), "high_52_w": decimal_text(q.ask * 1.5),
            "price_percent_chg_24_h": "1.21471769193719",
            "best_bid": decimal_text(q.bid), "best_bid_quantity": decimal_text(q.bid_size),
            "best_ask": decimal_text(q.ask), "best_ask_quantity": decimal_text(q.ask_size),
        }
        return [(self._envelope(conn, "ticker", [
            {"type": "snapshot" if snapshot else "update", "tickers": [ticker]}]), True)]

    def encode_trades(self, trades: list[Trade], conn: Conn, snapshot: bool) -> list[str]:
        maker = {"buy": "SELL", "sell": "BUY"}  # Coinbase names the maker's side
        return [self._envelope(conn, "market_trades", [{
            "type": "snapshot" if snapshot else "update",
            "trades": [{"trade_id": str(t.trade_id), "product_id": t.symbol, "price": decimal_text(t.price),
                        "size": decimal_text(t.size), "side": maker[t.side],
                        "time": ns_to_rfc3339(t.t_ns, 6, trim=False)} for t in reversed(trades)],
        }])]

    def error_frame(self, text: str) -> str:
        return json_text({"type": "error", "message": text})

    def bad_data_frame(self, conn: Conn) -> str:
        return json_text({"channel": "ticker", "timestamp": "yesterday", "sequence_num": 0,
                       "events": [{"type": "update", "tickers": [{"product_id": "BTC-USD"}]}]})

    def corrupt(self, text: str, kind: str) -> str:
        msg = orjson.loads(text)
        t = msg["events"][0]["tickers"][0]
        if kind == "future":
            msg["timestamp"] = FAR_FUTURE
        elif kind == "unsubscribed":
            t["product_id"] = self.stray_symbol
        elif kind == "control":
            t["product_id"] += "\u0000"
        else:
            field, value = {"nan": ("best_bid", "nan"), "inf": ("best_ask", "1e999"),
                            "negative": ("price", "-5"), "zero": ("best_bid", "0"),
                            "bool": ("best_bid", True), "negative_size": ("best_ask_quantity", "-1.5")}[kind]
            t[field] = value
        return json_text(msg)
