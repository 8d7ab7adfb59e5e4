"""The Binance USDⓈ-M perpetuals simulator writer: a local server speaking the futures combined
streams ``<s>@bookTicker`` and ``<s>@markPrice@1s`` (the venue itself is
:mod:`sabot.venues.binance_usdm`).

Frames have the exchange's shapes::

    {"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":400900217,"E":1568014460893,
     "T":1568014460891,"s":"BTCUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000",
     "A":"40.66000000"}}
    {"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","E":1562305380000,
     "s":"BTCUSDT","p":"11794.15000000","i":"11784.62659091","P":"11784.25641265",
     "r":"0.00038167","T":1562306400000}}

Prices: the perpetual follows the shared random walk (the same mid path as every spot venue's
``BTC/USD``) with its own noise and spread, trading at a premium equal to the current funding
rate.  The index price is the shared mid, the mark price the index times ``1 + rate``.

Funding: funding times are the multiples of ``funding_interval`` seconds since the epoch (8 h
on the exchange: 00:00, 08:00, 16:00 UTC); ``T`` is the next one.  When the clock passes it,
``T`` rolls on by one interval and the rate changes to the next interval's (a seeded random walk
around ``base_rate``), so a short interval lets a test watch rollovers.  ``rollovers`` counts them.

Every ``bookTicker`` and every ``markPriceUpdate`` frame is a data frame (one collector record
each).  Mark-price frames go out at most every ``mark_every`` seconds per symbol (default: 1 s
for ``@markPrice@1s``, 3 s for ``@markPrice``; 0 sends one with every quote).  The faults are
the shared ones (:mod:`sabot.sim.servers`), with the futures ``E`` event time making ``future``
possible; a corrupted mark-price frame carries its bad value in ``p``, ``i``, ``P`` or ``r``.
"""
from __future__ import annotations

import math
import random
import time
from typing import Any

import orjson

from sabot.sim.binance import BinanceSim
from sabot.sim.quotes import Quote
from sabot.sim.servers import CORRUPT_KINDS, Conn, json_text

__all__ = ["BinanceUsdmSim"]

_FAR_FUTURE_MS = 7_258_118_400_000  # 2200-01-01T00:00:00Z (ns of later years overflow int64)


class BinanceUsdmSim(BinanceSim):
    """USDⓈ-M futures: ``bookTicker`` with ``E``/``T``, ``markPriceUpdate`` with funding rollovers."""

    exchange = "binance-usdm"

    def __init__(self, *args: Any, funding_interval: float = 8 * 3600.0, base_rate: float = 1e-4,
                 rate_sigma: float = 2e-4, mark_every: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not (funding_interval > 0 and math.isfinite(funding_interval)):
            raise ValueError(f"funding_interval={funding_interval!r} must be a positive number of seconds")
        if mark_every is not None and not (mark_every >= 0 and math.isfinite(mark_every)):
            raise ValueError(f"mark_every={mark_every!r} must be >= 0 seconds")
        self.funding_interval_ms = max(1, int(round(funding_interval * 1000)))
        self.base_rate = base_rate
        self.rate_sigma = rate_sigma
        self.mark_every = mark_every
        self._seed = kwargs.get("seed", 0)
        self._rates: dict[tuple[str, int], float] = {}
        self._last_mark: dict[tuple[int, str], float] = {}  # (connection, raw) -> monotonic time
        self._funding_slot: dict[str, int] = {}
        #: Funding times passed while streaming (``T`` rolled on), over every symbol.
        self.rollovers = 0

    def _add_streams(self, conn: Conn, streams: list[str]) -> None:
        super()._add_streams(conn, streams)
        for s in streams:  # a symbol subscribed to its mark price alone streams too
            sym, _, kind = s.partition("@")
            if kind.startswith("markPrice") and s in conn.channels and sym.upper() not in conn.symbols:
                conn.symbols.append(sym.upper())

    # ---- funding --------------------------------------------------------------------------
    def funding_rate(self, raw: str, slot: int) -> float:
        """The funding rate of ``raw`` for the interval ending at funding time ``slot``
        (deterministic in the seed, the symbol and the slot; within the exchange's ±0.75 % cap)."""
        key = (raw, slot)
        rate = self._rates.get(key)
        if rate is None:
            rng = random.Random(f"{self._seed}/{raw}/{slot}")
            rate = round(min(0.0075, max(-0.0075, self.base_rate + rng.gauss(0.0, self.rate_sigma))), 8)
            if len(self._rates) > 4096:
                self._rates.clear()
            self._rates[key] = rate
        return rate

    def _funding(self, raw: str, now_ms: int) -> tuple[float, int]:
        """(current rate, next funding time in ms) for ``raw`` at ``now_ms``; counts rollovers."""
        slot = now_ms // self.funding_interval_ms + 1
        previous = self._funding_slot.get(raw)
        if previous is not None and slot > previous:
            self.rollovers += 1
        self._funding_slot[raw] = slot
        return self.funding_rate(raw, slot), slot * self.funding_interval_ms

    # ---- frames ---------------------------------------------------------------------------
    def _mark_due(self, conn: Conn, raw: str, stream: str) -> bool:
        every = self.mark_every if self.mark_every is not None else (
            1.0 if stream.endswith("@1s") else 3.0)
        now = time.monotonic()
        key = (id(conn), raw)
        last = self._last_mark.get(key)
        if last is not None and now - last < every:
            return False
        self._last_mark[key] = now
        return True

    def encode(self, q: Quote, conn: Conn, snapshot: bool) -> list[tuple[str, bool]]:
        raw = self.raw_symbol(q.symbol)
        low = raw.lower()
        now_ms = self.event_time_ns() // 1_000_000
        rate, next_ms = self._funding(raw, now_ms)
        index = self._walk._mid.get(q.symbol) or (q.bid + q.ask) / 2
        premium = 1.0 + rate  # the perpetual trades rich while longs pay shorts
        frames: list[tuple[str, bool]] = []
        if f"{low}@bookTicker" in conn.channels:
            bid = round(q.bid * premium, self.decimals)
            ask = round(max(q.ask * premium, bid + 10.0 ** -self.decimals), self.decimals)
            frames.append((self._wrap(conn, f"{low}@bookTicker", {
                "e": "bookTicker", "u": next(self._update_id), "E": now_ms, "T": now_ms - 2,
                "s": raw, "b": f"{bid:.8f}", "B": f"{q.bid_size:.8f}", "a": f"{ask:.8f}",
                "A": f"{q.ask_size:.8f}"}), True))
        for stream in (f"{low}@markPrice@1s", f"{low}@markPrice"):
            if stream in conn.channels and self._mark_due(conn, raw, stream):
                frames.append((self._wrap(conn, stream, {
                    "e": "markPriceUpdate", "E": now_ms, "s": raw,
                    "p": f"{index * premium:.8f}", "i": f"{index:.8f}",
                    "P": f"{index * (1.0 + rate / 2):.8f}", "r": f"{rate:.8f}", "T": next_ms}), True))
                break
        return frames

    def bad_data_frame(self, conn: Conn) -> str:
        now_ms = time.time_ns() // 1_000_000
        return json_text({"stream": "btcusdt@bookTicker", "data": {
            "e": "bookTicker", "u": 1, "E": now_ms, "T": now_ms, "s": "BTCUSDT", "b": "abc",
            "B": "1", "a": "2", "A": "1"}})

    supported_corruptions = CORRUPT_KINDS  # the futures frames carry an event time

    def corrupt(self, text: str, kind: str) -> str:
        msg = orjson.loads(text)
        d = msg["data"] if "data" in msg else msg
        if kind == "unsubscribed":
            d["s"] = self.stray_symbol
        elif kind == "control":
            d["s"] += "\u0000"
        elif kind == "future":
            d["E"] = _FAR_FUTURE_MS
        elif d.get("e") == "markPriceUpdate":
            field, value = {"nan": ("p", "nan"), "inf": ("i", "1e999"), "negative": ("p", "-5"),
                            "zero": ("i", "0"), "bool": ("r", True), "negative_size": ("P", "-1.5")}[kind]
            d[field] = value
        else:
            field, value = {"nan": ("b", "nan"), "inf": ("a", "1e999"), "negative": ("a", "-5"),
                            "zero": ("b", "0"), "bool": ("b", True), "negative_size": ("B", "-1.5")}[kind]
            d[field] = value
        return json_text(msg)
