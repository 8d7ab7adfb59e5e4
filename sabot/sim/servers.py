"""Local WebSocket servers speaking each venue's market-data protocol: the shared machinery.

:class:`SimServer` accepts real WebSocket connections on 127.0.0.1, runs each connection and
streams ticker frames from one of three sources: a replay file (JSON lines sent verbatim), a
scripted scenario (:func:`sabot.sim.quotes.load_scenario`) or the seedable random walk.  Each
venue's simulator writer subclasses it next to its venue module (:mod:`sabot.sim.coinbase`,
:mod:`sabot.sim.kraken`, :mod:`sabot.sim.binance`, or a plug-in's own module) and speaks the
protocol: the subscribe/ack dance, keepalives (Coinbase ``heartbeats`` channel, Kraken
``heartbeat`` frames, Binance ping frames), frame encoding and its bad-value faults.
:data:`SIMULATORS` maps every registered venue (:mod:`sabot.venues`) to its simulator class.

Fault options: ``drop_every``/``drop_after`` (close the connection after N data frames), ``malformed``
(N bad or unknown frames after subscribing), ``silence_after`` (stop sending but keep the socket
open), ``error`` (send the exchange's error message), Binance ``shutdown_after`` (``serverShutdown``
then close) and ``lifetime`` (the 24 h drop, in seconds).  Bad data: ``corrupt_every`` (every Nth
data frame carries one bad value, cycling through ``corrupt_kinds``: NaN, infinite, negative or zero
prices, booleans, negative sizes, far-future timestamps, unsubscribed or control-character
symbols), ``garbage_every`` (a garbage frame after every N data frames), ``quiet_after`` /
``quiet_for`` (no data for a while, keepalives continue: a quiet venue), and ``listed`` (the
symbols the venue lists; others are refused the way the exchange refuses them).

Accounting: every data frame makes exactly one collector record, corrupted ones included, so
``sent_count`` = records written + records rejected; ``corrupt_sent`` counts the bad ones by
kind and :meth:`SimServer.report` gives all counters.

Trades: a client that subscribes the venue's trades channel gets 0-2 trades after each quote
(:class:`sabot.sim.quotes.TradeGen`), with trade ids increasing per symbol, and on subscribe
the venue's snapshot of recent trades where it sends one (Coinbase, Kraken).  ``trades_sent``
counts distinct trades sent (a trade repeated in a later snapshot counts once), so it equals
the trade records a collector must account for; ``trade_frames`` keeps their frames when
``keep_sent``.  ``count`` limits the ticker data frames; trades stop with them.

Books: a client that subscribes the venue's book channel gets the snapshot of a simulated book
per symbol (:class:`sabot.sim.books.SimBook`, starting at the symbol's simulated price) and
``book_updates_per_quote`` (default 1) book updates per symbol after each quote, in the venue's
exact messages (more than one: the book moves between ticker frames, as it does between trades); unsubscribing and
subscribing again sends a new snapshot.  ``book_fault_every=N`` makes every Nth book update
carry the venue's fault (Kraken: a wrong checksum; Coinbase: a lost frame, a ``sequence_num``
gap).  :meth:`SimServer.book_levels` / :meth:`SimServer.book_top` expose the server's books;
``messages_out`` counts every message sent on every connection (keepalives and acks included).

Use in-process (``with CoinbaseSim(rate=0, count=100) as sim: sim.port``; a background thread runs
the event loop) or from the command line (``python -m sabot.sim coinbase --port 8765``).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from sabot.sim.books import STEP_NS, T0_NS, SimBook, _rfc3339
from sabot.sim.quotes import _START_PRICES, EXCHANGE_PROFILES, Quote, RandomWalk, Trade, TradeGen, load_scenario
from sabot.venues import VenueMapping, get_venue, venues

__all__ = ["SimServer", "Conn", "SIMULATORS", "ns_to_rfc3339", "json_text", "decimal_text",
           "CORRUPT_KINDS", "FAR_FUTURE", "STRAY_SYMBOL"]

#: Bad-value faults (``corrupt_kinds``); Binance has no exchange time, so no ``future`` there.
CORRUPT_KINDS = ("nan", "inf", "negative", "zero", "bool", "negative_size", "future", "unsubscribed",
                 "control")
#: The far-future event time sent by the ``future`` fault.
FAR_FUTURE = "2999-01-01T00:00:00.000000Z"
#: A symbol no test subscribes (``unsubscribed`` fault), sent in each venue's own spelling.
STRAY_SYMBOL = "ZZZ/USD"
_GARBAGE = ('{"channel":"ticker","events":[{', "\u0000\u0001 garbage", "null", "[]",
            '{"data":', b"\xff\xfe\x00 binary garbage")

log = logging.getLogger("sabot.sim")


def ns_to_rfc3339(ns: int, digits: int = 9, trim: bool = True) -> str:
    """RFC 3339 UTC text of integer ns; ``trim`` drops trailing zeros as Coinbase does."""
    sec, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    f = f"{frac:09d}"[:digits]
    if trim:
        f = f.rstrip("0")
    return f"{text}.{f}Z" if f else f"{text}Z"


def decimal_text(x: float) -> str:
    """Shortest decimal text of a float without exponent (``64281.7``, ``63454``)."""
    s = repr(float(x))
    if "e" in s or "E" in s:
        s = f"{x:.12f}".rstrip("0").rstrip(".")
    elif s.endswith(".0"):
        s = s[:-2]
    return s


def json_text(obj: Any) -> str:
    """Compact JSON text of ``obj``."""
    return orjson.dumps(obj).decode()


@dataclass
class Conn:
    """One client connection's protocol state."""

    ws: ServerConnection
    symbols: list[str] = field(default_factory=list)  # raw spelling, ticker subscription
    channels: set[str] = field(default_factory=set)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    seq: int = 0
    silent: bool = False
    announced: set[str] = field(default_factory=set)  # symbols already sent a snapshot/first frame
    raw_stream: bool = False  # Binance /ws/ (bare payloads)
    trade_symbols: list[str] = field(default_factory=list)  # raw spelling, trades subscription
    book_symbols: list[str] = field(default_factory=list)  # raw spelling, book subscription
    raw_send: Any = None  # sends (and counts) a message as is, without :meth:`SimServer.stamp`
    gaps: set = field(default_factory=set)  # frames to number as if one before them was lost

    def next_seq(self) -> int:
        s = self.seq
        self.seq += 1
        return s


class SimServer:
    """Base class: connection handling, sources, pacing and faults; subclasses speak the protocol."""

    exchange = ""
    default_symbols: tuple[str, ...] = ()

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        replay: str | Path | None = None,
        scenario: str | Path | None = None,
        seed: int = 0,
        rate: float = 20.0,
        count: int | None = None,
        drop_every: int | None = None,
        drop_after: int | None = None,
        malformed: int = 0,
        silence_after: int | None = None,
        error: str | None = None,
        heartbeat_interval: float = 1.0,
        ping_interval: float = 20.0,
        lifetime: float | None = None,
        shutdown_after: int | None = None,
        latency_ms: float | None = None,
        subscribe_deadline: float = 5.0,
        keep_sent: bool = False,
        corrupt_every: int | None = None,
        corrupt_kinds: tuple[str, ...] | list[str] | None = None,
        garbage_every: int | None = None,
        quiet_after: int | None = None,
        quiet_for: float = 3600.0,
        listed: list[str] | tuple[str, ...] | set[str] | None = None,
        book_fault_every: int | None = None,
        book_updates_per_quote: int = 1,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.rate = rate
        self.count = count
        self.drop_every = drop_every
        self.drop_after = drop_after
        self.malformed = malformed
        self.silence_after = silence_after
        self.error = error
        self.heartbeat_interval = heartbeat_interval
        self.ping_interval = ping_interval
        self.lifetime = lifetime
        self.shutdown_after = shutdown_after
        self.venue = get_venue(self.exchange)  # an unregistered venue fails here, by name
        profile = EXCHANGE_PROFILES[self.exchange]
        #: Price decimals of this venue's quotes (its simulator profile).
        self.decimals = int(profile["decimals"])
        self.latency_ns = int((profile["latency_ms"] if latency_ms is None else latency_ms) * 1e6)
        self._raw_symbols: dict[str, str] = {}
        self.subscribe_deadline = subscribe_deadline
        self.keep_sent = keep_sent
        kinds = tuple(corrupt_kinds) if corrupt_kinds else tuple(
            k for k in CORRUPT_KINDS if k in self.supported_corruptions)
        unknown = [k for k in kinds if k not in self.supported_corruptions]
        if unknown:
            raise ValueError(f"{self.exchange} simulator: corrupt_kinds {unknown} not among "
                             f"{list(self.supported_corruptions)}")
        if corrupt_every is not None and corrupt_every < 1:
            raise ValueError(f"corrupt_every={corrupt_every!r} must be >= 1")
        self.corrupt_every = corrupt_every
        self.corrupt_kinds = kinds
        self.garbage_every = garbage_every
        self.quiet_after = quiet_after
        self.quiet_for = quiet_for
        self.listed = set(listed) if listed is not None else None
        if book_fault_every is not None and book_fault_every < 1:
            raise ValueError(f"book_fault_every={book_fault_every!r} must be >= 1")
        self.book_fault_every = book_fault_every
        if book_updates_per_quote < 1:
            raise ValueError(f"book_updates_per_quote={book_updates_per_quote!r} must be >= 1")
        self.book_updates_per_quote = book_updates_per_quote
        self._seed = seed
        self._books: dict[str, SimBook] = {}
        self._book_feeds: dict[str, Any] = {}
        self.book_updates_sent = 0
        self.book_faults_sent = 0
        self.book_snapshots_sent = 0
        #: Book subscribe messages answered (each one's snapshots sent before it is counted).
        self.book_subscribe_requests = 0
        #: Every message sent on every connection (data, acks, keepalives, books).
        self.messages_out = 0
        self._replay: list[str] | None = None
        if replay is not None:
            self._replay = [ln for ln in Path(replay).read_text().splitlines() if ln.strip()]
            self.count = len(self._replay) if count is None else min(count, len(self._replay))
        self._scenario: list[Quote] | None = None
        if scenario is not None:
            self._scenario = load_scenario(scenario, self.exchange)
            self.count = len(self._scenario) if count is None else min(count, len(self._scenario))
        self._walk = RandomWalk(self.exchange, seed)
        self._trade_gen = TradeGen(self.exchange, seed)
        self._next_trade_id: dict[str, int] = {}
        self._trade_history: dict[str, list[Trade]] = {}  # the last few trades per symbol
        self._max_sent_trade: dict[str, int] = {}
        #: Recent trades a snapshot repeats (Coinbase, Kraken); made up before the first one.
        self.snapshot_trades = 3
        self.trades_sent = 0  # distinct trades sent
        #: True once ``count`` data frames and the trades that go with them are sent (tests wait on it).
        self.finished = False
        self.trade_frames: list[str] = []  # trade frames sent (snapshots too), when keep_sent
        self._pos = 0  # next replay line / scenario quote / walk step
        self._t0: float | None = None  # first subscription (scenario clock)
        # counters (read from other threads: plain ints)
        self.sent_count = 0  # data frames: each makes exactly one collector record
        self.frames_sent = 0
        self.connections = 0
        self.subscriptions = 0
        self.drops = 0
        self.pongs = 0
        self.malformed_sent = 0
        self.errors_sent = 0
        self.corrupt_sent: dict[str, int] = {}
        self.corrupt_texts: set[str] = set()  # the corrupted frames' texts, when keep_sent
        self.garbage_sent = 0
        self.rejected_symbols: list[str] = []  # symbols refused because not ``listed``
        self._quiet_done = False
        self.sent: list[tuple[str, bool]] = []  # stream frames (text, is_data), when keep_sent
        self._dropped_once = False
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # ---- protocol hooks -------------------------------------------------------------------
    async def on_open(self, conn: Conn) -> None:
        """Called right after the WebSocket handshake."""

    async def on_message(self, conn: Conn, msg: Any, text: str) -> None:
        """A client frame (decoded JSON, or ``None`` when not JSON)."""

    async def after_subscribe(self, conn: Conn) -> None:
        """Called once the ticker subscription is acknowledged."""

    async def keepalive(self, conn: Conn) -> None:
        """Heartbeats / pings for one connection (runs until cancelled)."""

    def encode(self, q: Quote, conn: Conn, snapshot: bool) -> list[tuple[str, bool]]:
        """Frames for one quote: ``(text, is_data)``; ``is_data`` frames each make one record."""
        raise NotImplementedError

    def error_frame(self, text: str) -> str:
        raise NotImplementedError

    def malformed_frame(self, i: int, conn: Conn) -> str:
        generic = ['{"channel":"ticker","events":[{', "not json at all", "[1,2,3]",
                   '{"channel":"mystery","events":[]}', '""']
        if i % 6 == 5:
            return self.bad_data_frame(conn)
        return generic[i % 6]

    def bad_data_frame(self, conn: Conn) -> str:
        raise NotImplementedError

    #: ``corrupt_kinds`` this exchange's frames can carry.
    supported_corruptions: tuple[str, ...] = CORRUPT_KINDS

    def corrupt(self, text: str, kind: str) -> str:
        """One data frame with one bad value of ``kind`` (still exactly one record)."""
        raise NotImplementedError

    def is_listed(self, raw: str) -> bool:
        """Whether the venue lists ``raw`` (always, unless ``listed`` was given)."""
        return self.listed is None or raw in self.listed

    def report(self) -> dict[str, Any]:
        """Counters for exact accounting (``data_frames`` = records the collector must account for)."""
        return {"exchange": self.exchange, "data_frames": self.sent_count, "frames": self.frames_sent,
                "corrupt": dict(self.corrupt_sent), "garbage": self.garbage_sent,
                "malformed": self.malformed_sent, "errors": self.errors_sent,
                "connections": self.connections, "subscriptions": self.subscriptions,
                "drops": self.drops, "rejected_symbols": list(self.rejected_symbols),
                "trades": self.trades_sent, "book_updates": self.book_updates_sent,
                "book_faults": self.book_faults_sent, "book_snapshots": self.book_snapshots_sent}

    # ---- trades ---------------------------------------------------------------------------
    def encode_trades(self, trades: list[Trade], conn: Conn, snapshot: bool) -> list[str]:
        """Frames carrying ``trades`` (oldest first) in the venue's trade channel."""
        raise NotImplementedError(f"{self.exchange} simulator: no trades channel")

    def new_trades(self, q: Quote, raw: str) -> list[Trade]:
        """The trades printed right after quote ``q`` (ids increasing per symbol)."""
        out = []
        now = self.event_time_ns()
        for i, (price, size, side) in enumerate(self._trade_gen.prints(q)):
            out.append(self._new_trade(raw, price, size, side, now + i * 1000))
        return out

    def _new_trade(self, raw: str, price: float, size: float, side: str, t_ns: int) -> Trade:
        tid = self._next_trade_id.get(raw, 1_000_000)
        self._next_trade_id[raw] = tid + 1
        trade = Trade(raw, price, size, side, tid, t_ns)
        hist = self._trade_history.setdefault(raw, [])
        hist.append(trade)
        del hist[:-max(self.snapshot_trades, 1)]
        return trade

    def recent_trades(self, raw: str) -> list[Trade]:
        """The snapshot of ``raw``'s recent trades (made up from a first quote if none yet)."""
        hist = self._trade_history.get(raw)
        if not hist and self.snapshot_trades:
            q = self._walk.next(self._canonical(raw))
            t0 = self.event_time_ns() - 5_000_000_000
            for i in range(self.snapshot_trades):
                side = "buy" if i % 2 == 0 else "sell"
                self._new_trade(raw, q.ask if side == "buy" else q.bid, 0.01 * (i + 1), side,
                                t0 + i * 1_000_000)
            hist = self._trade_history[raw]
        return list(hist or ())

    async def send_trades(self, conn: Conn, trades: list[Trade], snapshot: bool) -> None:
        """Send ``trades`` in the venue's frames and count the ones not sent before."""
        if not trades:
            return
        for text in self.encode_trades(trades, conn, snapshot):
            text = await self._send(conn, text)
            if self.keep_sent:
                self.trade_frames.append(text)
        self._count_trades(trades)

    def _count_trades(self, trades: list[Trade]) -> None:
        top = self._max_sent_trade
        for t in trades:
            if t.trade_id > top.get(t.symbol, -1):
                top[t.symbol] = t.trade_id
                self.trades_sent += 1

    # ---- books ----------------------------------------------------------------------------
    def sim_book(self, raw: str) -> SimBook:
        """The server's book of ``raw`` (made on first use, at the symbol's simulated price)."""
        book = self._books.get(raw)
        if book is None:
            base = self._canonical(raw).split("/")[0]
            mid = _START_PRICES.get(base, 100.0)
            # prices under 10 (USDT/USD) get at least 5 decimals, as the quotes do
            decimals = self.decimals if mid >= 10 else max(self.decimals, 5)
            book = self._books[raw] = SimBook(seed=self._seed * 7919 + len(self._books), mid=mid,
                                              price_decimals=decimals, qty_decimals=8)
        return book

    def book_levels(self, raw: str, n: int = 10) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """The top ``n`` bids and asks of the server's book of ``raw``, best first, as floats."""
        book = self.sim_book(raw)
        pd, qd = 10 ** book.price_decimals, 10 ** book.qty_decimals
        return ([(p / pd, q / qd) for p, q in book.sorted_bids()[:n]],
                [(p / pd, q / qd) for p, q in book.sorted_asks()[:n]])

    def book_top(self, raw: str) -> tuple[float, float, float, float]:
        """``(bid, bid_size, ask, ask_size)`` of the server's book of ``raw``."""
        bids, asks = self.book_levels(raw, 1)
        return bids[0][0], bids[0][1], asks[0][0], asks[0][1]

    def book_now(self, text: str, book: SimBook) -> str:
        """A book frame with its exchange time(s) set to now (the feeds count from a fixed epoch)."""
        fixed = _rfc3339(T0_NS + book.steps * STEP_NS)
        return text.replace(fixed, ns_to_rfc3339(self.event_time_ns(), 6, trim=False))

    def book_snapshot_frames(self, conn: Conn, raw: str) -> list[str]:
        """The venue's snapshot frame(s) of ``raw``'s book."""
        raise NotImplementedError(f"{self.exchange} simulator: no book channel")

    def book_update_frames(self, conn: Conn, raw: str, fault: bool) -> list[str]:
        """The venue's update frame(s) after one step of ``raw``'s book (``fault``: the venue's fault)."""
        raise NotImplementedError(f"{self.exchange} simulator: no book channel")

    async def send_book_snapshots(self, conn: Conn, raws: list[str]) -> None:
        """Send the snapshots of ``raws`` and count the subscribe request as answered."""
        for raw in raws:
            for text in self.book_snapshot_frames(conn, raw):
                await self._send(conn, text)
                self.book_snapshots_sent += 1
        self.book_subscribe_requests += 1

    def _book_updates(self, conn: Conn, raw: str) -> list[tuple[str, bool]]:
        if raw not in conn.book_symbols:
            return []
        every = self.book_fault_every
        frames = []
        for _ in range(self.book_updates_per_quote):
            fault = bool(every) and (self.book_updates_sent + 1) % every == 0
            self.book_updates_sent += 1
            self.book_faults_sent += fault
            frames += [(text, False) for text in self.book_update_frames(conn, raw, fault)]
        return frames

    # ---- shared machinery -----------------------------------------------------------------
    def _canonical(self, raw: str) -> str:
        return self.venue.to_canonical_symbol(raw, quote_aliases={})

    def raw_symbol(self, symbol: str) -> str:
        """This venue's spelling of canonical ``symbol`` (the venue module's own mapping, cached)."""
        raw = self._raw_symbols.get(symbol)
        if raw is None:
            raw = self._raw_symbols[symbol] = self.venue.to_exchange_symbol(symbol)
        return raw

    @property
    def stray_symbol(self) -> str:
        """A symbol no client subscribes, in this venue's spelling (the ``unsubscribed`` fault)."""
        return self.raw_symbol(STRAY_SYMBOL)

    def stamp(self, conn: Conn, text: Any) -> Any:
        """The message as it goes on the wire; numbering at send time keeps numbers in wire order
        (Coinbase's ``sequence_num``) whatever task made the frame."""
        return text

    async def _send(self, conn: Conn, text: str, is_data: bool = False) -> str:
        """Send one frame; returns it as sent (stamped)."""
        text = self.stamp(conn, text)
        await (conn.raw_send or conn.ws.send)(text)
        self.frames_sent += 1
        if is_data:
            self.sent_count += 1
        return text

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        send = ws.send

        async def counted_send(message: Any, *args: Any, **kwargs: Any) -> None:
            await send(message, *args, **kwargs)
            self.messages_out += 1

        async def stamped_send(message: Any, *args: Any, **kwargs: Any) -> None:
            await counted_send(self.stamp(conn, message), *args, **kwargs)

        ws.send = stamped_send  # type: ignore[method-assign]  # every message stamped and counted
        conn = Conn(ws, raw_send=counted_send)
        reader = asyncio.create_task(self._reader(conn))
        keeper: asyncio.Task | None = None
        try:
            await self.on_open(conn)
            try:
                await asyncio.wait_for(conn.subscribed.wait(), self.subscribe_deadline)
            except asyncio.TimeoutError:
                await ws.close(1008, "no subscribe received within the deadline")
                return
            self.subscriptions += 1
            if self._t0 is None:
                self._t0 = time.monotonic()
            keeper = asyncio.create_task(self.keepalive(conn))
            await self.after_subscribe(conn)
            if self.malformed_sent < self.malformed:
                for i in range(self.malformed - self.malformed_sent):
                    await self._send(conn, self.malformed_frame(i, conn))
                    self.malformed_sent += 1
            if self.error and not self.errors_sent:
                await self._send(conn, self.error_frame(self.error))
                self.errors_sent += 1
            await self._stream(conn)
        except ConnectionClosed:
            pass
        finally:
            for t in (reader, keeper):
                if t is not None:
                    t.cancel()
            await asyncio.gather(reader, *(k for k in [keeper] if k), return_exceptions=True)

    async def _reader(self, conn: Conn) -> None:
        try:
            async for text in conn.ws:
                try:
                    msg = orjson.loads(text)
                except orjson.JSONDecodeError:
                    msg = None
                await self.on_message(conn, msg, text if isinstance(text, str) else text.decode())
        except ConnectionClosed:
            pass

    def _remaining(self) -> bool:
        return self.count is None or self.sent_count < self.count

    async def _stream(self, conn: Conn) -> None:
        ws = conn.ws
        conn_data = 0
        start = time.monotonic()
        n = 0
        while True:
            if not self._remaining():
                self.finished = True  # every frame of ``count`` (and its trades) is sent
                await ws.wait_closed()  # done: stay connected (keepalives continue)
                return
            if self.silence_after is not None and self.sent_count >= self.silence_after:
                conn.silent = True
                await ws.wait_closed()
                return
            if self.quiet_after is not None and not self._quiet_done and self.sent_count >= self.quiet_after:
                self._quiet_done = True  # a quiet venue: no data, keepalives continue
                try:
                    await asyncio.wait_for(ws.wait_closed(), self.quiet_for)
                    return
                except asyncio.TimeoutError:
                    start = time.monotonic() - n / self.rate if self.rate > 0 else start
            if not conn.symbols and not conn.trade_symbols and not conn.book_symbols:  # nothing listed
                await ws.wait_closed()
                return
            frames = await self._next_frames(conn)
            for frame in frames:
                if len(frame) > 2:  # trades: counted once sent
                    await self.send_trades(conn, frame[2], False)
                    continue
                text, is_data = frame
                corrupted = False
                if is_data and self.corrupt_every and (self.sent_count + 1) % self.corrupt_every == 0:
                    kind = self.corrupt_kinds[sum(self.corrupt_sent.values()) % len(self.corrupt_kinds)]
                    text = self.corrupt(text, kind)
                    self.corrupt_sent[kind] = self.corrupt_sent.get(kind, 0) + 1
                    corrupted = True
                text = await self._send(conn, text, is_data)
                if corrupted and self.keep_sent:
                    self.corrupt_texts.add(text)
                conn_data += is_data
                if self.keep_sent:
                    self.sent.append((text, is_data))
                if is_data and self.garbage_every and self.sent_count % self.garbage_every == 0:
                    await self._send(conn, _GARBAGE[self.garbage_sent % len(_GARBAGE)])
                    self.garbage_sent += 1
            if self.shutdown_after is not None and self.sent_count >= self.shutdown_after \
                    and not self._dropped_once and self._remaining():
                self._dropped_once = True
                await self.announce_shutdown(conn)
                self.drops += 1
                await ws.close(1001, "server shutdown")
                return
            if self._remaining() and (
                (self.drop_every and conn_data >= self.drop_every)
                or (self.drop_after is not None and not self._dropped_once
                    and self.sent_count >= self.drop_after)
            ):
                self._dropped_once = True
                self.drops += 1
                await ws.close(1011, "simulated drop")
                return
            n += 1
            if self._scenario is None:
                if self.rate > 0:
                    delay = start + n / self.rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif n % 64 == 0:
                    await asyncio.sleep(0)

    async def _next_frames(self, conn: Conn) -> list[tuple[str, bool]]:
        if self._replay is not None:
            line = self._replay[self._pos]
            self._pos += 1
            return [(line, True)]
        if self._scenario is not None:
            q = self._scenario[self._pos]
            delay = self._t0 + q.t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._pos += 1
            raw = self.raw_symbol(q.symbol)
            snapshot = raw not in conn.announced
            conn.announced.add(raw)
            q = q if "/" in q.symbol else _with_symbol(q, self._canonical(raw))
            return self._with_trades(self.encode(q, conn, snapshot) if conn.symbols else [],
                                     q, raw, conn) + self._book_updates(conn, raw)
        syms = conn.symbols or conn.trade_symbols or conn.book_symbols
        raw = syms[self._pos % len(syms)]
        self._pos += 1
        q = self._walk.next(self._canonical(raw))
        snapshot = raw not in conn.announced
        conn.announced.add(raw)
        return self._with_trades(self.encode(q, conn, snapshot) if conn.symbols else [],
                                 q, raw, conn) + self._book_updates(conn, raw)

    def _with_trades(self, frames: list, q: Quote, raw: str, conn: Conn) -> list:
        """``frames`` followed by the trades printed after ``q`` when the client subscribed them."""
        if raw in conn.trade_symbols:
            trades = self.new_trades(q, raw)
            if trades:
                return [*frames, ("", False, trades)]
        return frames

    def process_request(self, connection: ServerConnection, request: Any) -> Any:
        """A plain HTTP request on the server's port (the venue's REST endpoints): a response,
        or ``None`` to go on with the WebSocket handshake."""
        return None

    async def announce_shutdown(self, conn: Conn) -> None:
        """Frame(s) sent before a planned shutdown (Binance ``serverShutdown``)."""

    def event_time_ns(self) -> int:
        return time.time_ns() - self.latency_ns

    # ---- lifecycle ------------------------------------------------------------------------
    async def serve_forever(self, started: threading.Event | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handler, self.host, self.requested_port, ping_interval=None,
                         process_request=self.process_request,
                         max_size=None, compression=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("%s simulator listening on ws://%s:%d", self.exchange, self.host, self.port)
            if started is not None:
                started.set()
            await self._stop.wait()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def start(self) -> "SimServer":
        """Serve from a background thread; returns once the port is bound."""

        def target() -> None:
            try:
                asyncio.run(self.serve_forever(self._ready))
            except BaseException as exc:  # surfaced by start()
                self._startup_error = exc
                self._ready.set()

        self._thread = threading.Thread(target=target, name=f"sim-{self.exchange}", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._startup_error is not None:
            raise RuntimeError(f"{self.exchange} simulator failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> "SimServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _with_symbol(q: Quote, symbol: str) -> Quote:
    return Quote(symbol, q.bid, q.ask, q.bid_size, q.ask_size, q.price, q.volume, q.t)


#: Venue name -> its simulator class (a live view of the venue registry; a simulator writer's
#: module is imported when its class is first asked for).
SIMULATORS: VenueMapping[type[SimServer]] = VenueMapping(lambda v: v.simulator_class, "simulator")


def __getattr__(name: str) -> Any:
    """A registered venue's simulator class by its class name (``CoinbaseSim``)."""
    for venue in venues():
        sim = venue.simulator
        if (sim.rpartition(":")[2] if isinstance(sim, str) else getattr(sim, "__name__", None)) == name:
            return venue.simulator_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
