"""Each venue's raw book messages in, books out, with the venue's integrity check.

The appliers take the exact message text (``str`` or ``bytes``) a venue sends on its book
channel, apply it to :class:`~sabot.book.Book` objects held in a :class:`~sabot.book.BookSet`,
and record top-of-book / depth rows through :meth:`BookSet.emit`.  When a book can no longer be
trusted they raise a :class:`BookOutOfSync` subclass naming the symbol; the caller (a collector)
counts it and resubscribes (Kraken, Coinbase) or fetches a new snapshot (Binance).  A value
that cannot be applied raises :class:`~sabot.book.BookError` (naming the field and value) and
drops that symbol's half-applied book the same way.  Until a new
snapshot arrives, updates for that symbol are dropped and counted in ``skipped``: a stale book
never produces rows.

* **Kraken v2 ``book``** (:class:`KrakenBooks`): snapshot then updates; after each message the
  book is truncated to the subscribed depth and the CRC32 of the top 10 levels is compared with
  the frame's ``checksum`` (snapshot and every update).  Frames are scanned byte-wise in compiled
  code, so prices and sizes keep the exact digits the checksum is computed over.
* **Coinbase Advanced Trade ``level2``** (:class:`CoinbaseBooks`): ``l2_data`` events, a
  ``snapshot`` then ``update`` s with ``side`` ``bid``/``offer``, ``price_level`` and
  ``new_quantity`` (``"0"`` removes).  ``sequence_num`` counts every message on the connection,
  whatever its channel, so feed every frame of the connection (heartbeats, tickers, acks): any
  jump is a :class:`SequenceGap` (a per-channel check would report false gaps).
* **Binance spot diff depth** (:class:`BinanceBook`, one per symbol): the documented local-book
  procedure.  Events are buffered until a REST snapshot (``lastUpdateId``) is given; events with
  ``u <= lastUpdateId`` are dropped, the first applied one must satisfy
  ``U <= lastUpdateId + 1 <= u``, every later one ``U == previous u + 1``; otherwise
  :class:`DepthGap`.  A snapshot that ends before the first buffered event begins
  (``lastUpdateId + 1 < U``) is a :class:`StaleSnapshot`: fetch it again, the buffer is kept.

Why diff depth (``<s>@depth@100ms``) rather than partial depth (``<s>@depth20@100ms``) on
Binance: partial depth is self-contained (every frame is the whole top 20, nothing to sync) but
it carries neither the symbol nor the exchange time, only 5/10/20 levels, and it resends all
levels every 100 ms even when one changed.  Diff depth costs one REST snapshot per (re)sync and
the ``U``/``u`` bookkeeping here, and in exchange gives the full book to any depth, only the
changed levels on the wire, the exchange time ``E`` on every event, and a detectable gap instead
of silently missing a change; the update ids also share their id space with ``@bookTicker``.
"""
from __future__ import annotations

from typing import Any, Mapping

import orjson

from sabot.book._book import Book, BookError, BookSet, KrakenScanner, parse_rfc3339_ns

__all__ = [
    "BookOutOfSync", "ChecksumMismatch", "SequenceGap", "DepthGap", "StaleSnapshot",
    "KrakenBooks", "CoinbaseBooks", "BinanceBook", "parse_rfc3339_ns",
]


class BookOutOfSync(Exception):
    """A book that can no longer be trusted: resubscribe / resynchronise ``symbol``."""

    def __init__(self, symbol: str | None, message: str) -> None:
        super().__init__(message)
        self.symbol = symbol


class ChecksumMismatch(BookOutOfSync):
    """Kraken: the book's CRC32 differs from the frame's ``checksum``."""

    def __init__(self, symbol: str, expected: int, computed: int) -> None:
        super().__init__(symbol, f"{symbol}: book checksum {computed} != sent {expected}; resubscribe")
        self.expected = expected
        self.computed = computed


class SequenceGap(BookOutOfSync):
    """Coinbase: ``sequence_num`` jumped (messages were lost on the connection)."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(None, f"sequence_num {got} where {expected} was expected; resubscribe")
        self.expected = expected
        self.got = got


class DepthGap(BookOutOfSync):
    """Binance: a depth event does not continue the book's last update id."""


class StaleSnapshot(BookOutOfSync):
    """Binance: the REST snapshot is older than the first buffered event; fetch it again."""


def _loads(raw: str | bytes | Mapping) -> Any:
    if isinstance(raw, Mapping):
        return raw
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BookError(f"message {raw[:80]!r} is not valid JSON: {exc}") from None


class KrakenBooks:
    """Kraken WebSocket v2 ``book`` channel -> books, CRC32-verified on every frame.

    ``depth`` is the subscribed depth (10, 25, 100, 500, 1000): books are truncated to it after
    each frame, as Kraken sends no deletes for levels pushed out.  ``precision`` maps symbol ->
    ``(price_decimals, qty_decimals)`` from the ``instrument`` channel; without it a book's scale
    is taken from its snapshot's digits (the wire carries full precision, trailing zeros kept).
    """

    def __init__(self, depth: int = 10, *, out_depth: int = 10,
                 precision: Mapping[str, tuple[int, int]] | None = None,
                 exchange: str = "kraken") -> None:
        self.books = BookSet(exchange, out_depth)
        self._scanner = KrakenScanner(self.books.books, dict(precision or {}), depth)
        self.mismatches = 0
        self.skipped = 0

    def on_message(self, raw: str | bytes, recv_timestamp: int = 0) -> list[str]:
        """Apply one frame; returns the symbols it updated (empty for non-book frames).

        Raises :class:`ChecksumMismatch` (the symbol's book is dropped until its next snapshot)
        or :class:`BookError` for a malformed frame.
        """
        results = self._scanner.scan(raw)
        if results is None:
            return []
        done = []
        for symbol, is_snapshot, sent, computed, ts in results:
            if computed < 0:                       # update for a book we do not hold
                self.skipped += 1
                continue
            if sent >= 0 and sent != computed:
                self.mismatches += 1
                self.books.discard(symbol)
                raise ChecksumMismatch(symbol, sent, computed)
            self.books.emit(symbol, recv_timestamp if ts is None else ts, recv_timestamp)
            done.append(symbol)
        return done

    def book(self, symbol: str) -> Book:
        return self.books[symbol]


class CoinbaseBooks:
    """Coinbase Advanced Trade ``level2`` (``l2_data``) -> books, with the connection's
    ``sequence_num`` checked for gaps.

    Feed every frame received on the connection: non-``l2_data`` frames only advance the
    sequence.  ``check_sequence=False`` disables the gap check (when the caller cannot see every
    frame).  Default scale: 10 price decimals, 8 size decimals.
    """

    def __init__(self, *, out_depth: int = 10, price_decimals: int = 10, qty_decimals: int = 8,
                 check_sequence: bool = True, exchange: str = "coinbase") -> None:
        self.books = BookSet(exchange, out_depth, price_decimals, qty_decimals)
        self.check_sequence = check_sequence
        self.last_sequence: int | None = None
        self.gaps = 0
        self.skipped = 0

    def on_message(self, raw: str | bytes | Mapping, recv_timestamp: int = 0) -> list[str]:
        """Apply one frame; returns the product ids it updated.  Raises :class:`SequenceGap`
        (all books dropped until their next snapshot) or :class:`BookError`."""
        msg = _loads(raw)
        if not isinstance(msg, dict):
            raise BookError(f"message {str(raw)[:80]!r} is not a JSON object")
        seq = msg.get("sequence_num")
        if seq is not None and self.check_sequence:
            if not isinstance(seq, int):
                raise BookError(f"sequence_num {seq!r} is not an integer")
            last = self.last_sequence
            self.last_sequence = seq
            if last is not None and seq != last + 1:
                self.gaps += 1
                for symbol in list(self.books.books):
                    self.books.discard(symbol)
                raise SequenceGap(last + 1, seq)
        if msg.get("channel") != "l2_data":
            return []
        ts = parse_rfc3339_ns(msg.get("timestamp"))
        done = []
        for event in msg.get("events") or ():
            kind = event.get("type")
            product = event.get("product_id")
            if not isinstance(product, str) or not product:
                raise BookError(f"l2_data event product_id {product!r} is not a product id")
            if kind == "snapshot":
                self.books.discard(product)
                book = self.books.book(product)
            elif kind == "update":
                if product not in self.books:
                    self.skipped += 1
                    continue
                book = self.books[product]
            else:
                raise BookError(f"l2_data event type {kind!r} is not 'snapshot' or 'update'")
            bids, asks = [], []
            for u in event.get("updates") or ():
                side = u.get("side")
                level = (u.get("price_level"), u.get("new_quantity"))
                if side == "bid":
                    bids.append(level)
                elif side == "offer":
                    asks.append(level)
                else:
                    raise BookError(f"l2_data update side {side!r} is not 'bid' or 'offer'")
            try:
                book.apply_levels(0, bids)
                book.apply_levels(1, asks)
            except BookError:
                self.books.discard(product)        # half applied: wait for a new snapshot
                raise
            self.books.emit(product, recv_timestamp if ts is None else ts, recv_timestamp)
            done.append(product)
        return done

    def book(self, product_id: str) -> Book:
        return self.books[product_id]


class BinanceBook:
    """One Binance spot symbol's diff-depth book, kept in sync with REST snapshots.

    Call :meth:`on_event` with every ``depthUpdate`` (raw frame, combined-stream wrapper or
    dict) and :meth:`on_snapshot` with the body of ``GET /api/v3/depth`` once events are being
    buffered.  ``needs_snapshot`` tells when to fetch one.  Rows go to ``books`` (a
    :class:`BookSet`, shareable between the symbols of one connection).
    """

    def __init__(self, symbol: str, books: BookSet | None = None, *, out_depth: int = 10,
                 max_buffer: int = 10_000) -> None:
        self.symbol = symbol
        self.books = books if books is not None else BookSet("binance", out_depth)
        self.max_buffer = max_buffer
        self.last_update_id: int | None = None     # None = not synchronised
        self._first = False                        # next applied event is the first after a snapshot
        self.buffer: list[dict] = []
        self.dropped = 0
        self.gaps = 0

    @property
    def needs_snapshot(self) -> bool:
        """True while the book waits for a snapshot (at start and after a gap)."""
        return self.last_update_id is None

    @staticmethod
    def _event(raw: str | bytes | Mapping) -> dict:
        msg = _loads(raw)
        if isinstance(msg, dict) and "data" in msg and "stream" in msg:
            msg = msg["data"]
        if not isinstance(msg, dict) or msg.get("e") != "depthUpdate":
            raise BookError(f"message {str(raw)[:80]!r} is not a depthUpdate event")
        for key in ("U", "u"):
            if not isinstance(msg.get(key), int):
                raise BookError(f"depthUpdate {key} {msg.get(key)!r} is not an integer")
        if msg["U"] > msg["u"]:
            raise BookError(f"depthUpdate U {msg['U']!r} > u {msg['u']!r}")
        return msg

    def on_event(self, raw: str | bytes | Mapping, recv_timestamp: int = 0) -> bool:
        """Buffer or apply one event; True if it changed the book.  Raises :class:`DepthGap`
        when it does not continue the book: the book is dropped, the event starts a new buffer,
        and a new snapshot is needed."""
        ev = self._event(raw)
        if self.last_update_id is None:
            self.buffer.append(ev)
            if len(self.buffer) > self.max_buffer:
                del self.buffer[0]
                self.dropped += 1
            return False
        return self._apply(ev, recv_timestamp)

    def _apply(self, ev: dict, recv_timestamp: int) -> bool:
        last = self.last_update_id
        if ev["u"] <= last:                        # already in the snapshot / a repeat
            self.dropped += 1
            return False
        ok = ev["U"] <= last + 1 if self._first else ev["U"] == last + 1
        if not ok:
            self.gaps += 1
            self._reset()
            self.buffer.append(ev)                 # valid news beyond the gap: keep for the resync
            raise DepthGap(self.symbol, f"{self.symbol}: depth event U={ev['U']} u={ev['u']} "
                                        f"does not follow update id {last}; fetch a new snapshot")
        book = self.books.book(self.symbol)
        try:
            book.apply_levels(0, ev.get("b") or ())
            book.apply_levels(1, ev.get("a") or ())
        except BookError:
            self._reset()                          # half applied: resynchronise
            raise
        self.last_update_id = ev["u"]
        self._first = False
        e_ms = ev.get("E")
        ts = e_ms * 1_000_000 if isinstance(e_ms, int) else recv_timestamp
        self.books.emit(self.symbol, ts, recv_timestamp)
        return True

    def _reset(self) -> None:
        self.last_update_id = None
        self.buffer = []
        self.books.discard(self.symbol)

    def on_snapshot(self, body: str | bytes | Mapping, recv_timestamp: int = 0) -> int:
        """Install a REST snapshot and replay the buffer; returns the events applied.

        Raises :class:`StaleSnapshot` (buffer kept, fetch again) if the snapshot ends before the
        first buffered event starts, :class:`DepthGap` if the buffered events do not connect.
        """
        snap = _loads(body)
        lid = snap.get("lastUpdateId") if isinstance(snap, dict) else None
        if not isinstance(lid, int):
            raise BookError(f"snapshot lastUpdateId {lid!r} is not an integer")
        if self.buffer and lid + 1 < self.buffer[0]["U"]:
            raise StaleSnapshot(self.symbol, f"{self.symbol}: snapshot lastUpdateId={lid} is older "
                                             f"than the first buffered event U={self.buffer[0]['U']}")
        self.books.discard(self.symbol)
        book = self.books.book(self.symbol)
        try:
            book.snapshot(snap.get("bids") or (), snap.get("asks") or ())
        except BookError:
            self.books.discard(self.symbol)
            raise
        self.last_update_id = lid
        self._first = True
        pending, self.buffer = self.buffer, []
        self.books.emit(self.symbol, recv_timestamp, recv_timestamp)
        applied = 0
        for ev in pending:
            applied += self._apply(ev, recv_timestamp)
        return applied

    @property
    def book(self) -> Book:
        return self.books.book(self.symbol)
