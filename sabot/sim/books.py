"""Simulated order books and the exact book-channel messages each venue sends about them.

:class:`SimBook` is a seedable L2 book (fixed-point prices and sizes) that changes a few levels
per step around a drifting mid.  The feeds turn its states into venue messages, as text, ready
for a local exchange server to send:

* :class:`KrakenBookFeed` — v2 ``book`` snapshot/update frames at a subscribed depth, numbers at
  full precision, each with the CRC32 ``checksum`` of the top 10 levels;
* :class:`CoinbaseLevel2Feed` — ``l2_data`` snapshot/update frames with the connection's
  ``sequence_num`` (shared with :meth:`CoinbaseLevel2Feed.heartbeat`);
* :class:`BinanceDepthFeed` — ``depthUpdate`` events with ``U``/``u`` update ids (raw or in the
  combined-stream wrapper) and the REST ``/api/v3/depth`` snapshot body.

Faults, for the book-keeping paths of a client: a wrong checksum (``bad_checksum=True``), a
sequence gap (``gap=True``: one message is generated and not returned), and a stale Binance
snapshot (:meth:`BinanceDepthFeed.stale_snapshot`: the REST body as it was some events ago).
Everything here is pure: same seed, same messages.
"""
from __future__ import annotations

import random
import zlib
from collections import deque

__all__ = ["SimBook", "KrakenBookFeed", "CoinbaseLevel2Feed", "BinanceDepthFeed", "fmt_fixed",
           "kraken_checksum"]

T0_NS = 1_767_225_600_000_000_000          # 2026-01-01T00:00:00Z
STEP_NS = 100_000_000                     # one step = 100 ms of exchange time


def fmt_fixed(value: int, decimals: int) -> str:
    """A fixed-point integer as a decimal string with exactly ``decimals`` fraction digits."""
    if decimals == 0:
        return str(value)
    digits = str(value).rjust(decimals + 1, "0")
    return f"{digits[:-decimals]}.{digits[-decimals:]}"


def kraken_checksum(asks: list[tuple[int, int]], bids: list[tuple[int, int]]) -> int:
    """Kraken's CRC32 of fixed-point levels: top 10 asks (best first) then top 10 bids, each
    price and qty as digits without the dot and without leading zeros."""
    text = "".join(f"{p}{q}" for p, q in asks[:10]) + "".join(f"{p}{q}" for p, q in bids[:10])
    return zlib.crc32(text.encode()) & 0xFFFFFFFF


def _rfc3339(ns: int) -> str:
    import datetime as dt
    secs, frac = divmod(ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(secs, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac // 1000:06d}Z"


class SimBook:
    """A seedable L2 book: ``bids``/``asks`` map fixed-point price -> fixed-point size.

    ``step()`` changes ``changes`` levels (new levels, size changes, removals, now and then the
    best level), keeps the book uncrossed and returns the changes as ``(side, price, size)``
    with ``side`` 0 = bid, 1 = ask and size 0 = removed.
    """

    def __init__(self, seed: int = 0, *, mid: float = 100.0, price_decimals: int = 2,
                 qty_decimals: int = 8, levels: int = 40, changes: int = 3) -> None:
        self.rng = random.Random(seed)
        self.price_decimals = price_decimals
        self.qty_decimals = qty_decimals
        self.changes = changes
        self.levels = levels
        self.mid = int(round(mid * 10 ** price_decimals))
        self.steps = 0
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        for i in range(1, levels + 1):
            self.bids[self.mid - i] = self._size()
            self.asks[self.mid + i] = self._size()

    def _size(self) -> int:
        return self.rng.randint(1, 5_000) * 10 ** max(self.qty_decimals - 3, 0) + self.rng.randint(0, 999)

    def sorted_bids(self) -> list[tuple[int, int]]:
        return sorted(self.bids.items(), reverse=True)

    def sorted_asks(self) -> list[tuple[int, int]]:
        return sorted(self.asks.items())

    def step(self) -> list[tuple[int, int, int]]:
        """Apply one step of random changes and return them (in order)."""
        rng = self.rng
        out: list[tuple[int, int, int]] = []
        self.steps += 1
        drift = rng.choice((-1, 0, 0, 1))
        self.mid += drift
        for _ in range(self.changes):
            side = rng.randint(0, 1)
            levels = self.bids if side == 0 else self.asks
            best_other = min(self.asks) if side == 0 and self.asks else max(self.bids) if self.bids else self.mid
            if side == 0:
                price = self.mid - rng.randint(0, self.levels)
                if self.asks and price >= min(self.asks):
                    price = min(self.asks) - 1
            else:
                price = self.mid + rng.randint(0, self.levels)
                if self.bids and price <= max(self.bids):
                    price = max(self.bids) + 1
            del best_other
            if price <= 0:
                continue
            if price in levels and (rng.random() < 0.35 or len(levels) > self.levels * 1.5):
                del levels[price]
                out.append((side, price, 0))
            else:
                size = self._size()
                levels[price] = size
                out.append((side, price, size))
        return out


class KrakenBookFeed:
    """Kraken v2 ``book`` frames for one symbol of a :class:`SimBook` at a subscribed ``depth``.

    Updates carry exactly what Kraken sends: changed levels inside the subscribed depth, a
    ``qty`` 0 for levels deleted from it, nothing for levels pushed out (clients truncate).
    """

    def __init__(self, book: SimBook, symbol: str = "BTC/USD", depth: int = 10) -> None:
        self.book = book
        self.symbol = symbol
        self.depth = depth
        self._view = self._current()

    def _current(self) -> tuple[dict[int, int], dict[int, int]]:
        return (dict(self.book.sorted_bids()[: self.depth]), dict(self.book.sorted_asks()[: self.depth]))

    def _levels(self, items) -> str:
        pd, qd = self.book.price_decimals, self.book.qty_decimals
        return ",".join(f'{{"price":{fmt_fixed(p, pd)},"qty":{fmt_fixed(q, qd)}}}' for p, q in items)

    def _checksum(self) -> int:
        bids, asks = self._view
        return kraken_checksum(sorted(asks.items()), sorted(bids.items(), reverse=True))

    def snapshot(self) -> str:
        """The snapshot frame of the current book (no timestamp, as Kraken sends it)."""
        self._view = self._current()
        bids, asks = self._view
        return ('{"channel":"book","type":"snapshot","data":[{"symbol":"%s","bids":[%s],"asks":[%s],'
                '"checksum":%d}]}' % (self.symbol, self._levels(sorted(bids.items(), reverse=True)),
                                      self._levels(sorted(asks.items())), self._checksum()))

    def update(self, *, bad_checksum: bool = False, gap: bool = False) -> str:
        """Step the book and return the update frame.  ``gap``: one update is generated and
        not returned first; ``bad_checksum``: the checksum is off by one."""
        if gap:
            self.update()
        while True:
            self.book.step()
            old_bids, old_asks = self._view
            self._view = self._current()
            new_bids, new_asks = self._view
            changes = []
            for old, new, rev in ((old_bids, new_bids, True), (old_asks, new_asks, False)):
                diff = [(p, q) for p, q in new.items() if old.get(p) != q]
                full = self.book.bids if rev else self.book.asks
                diff += [(p, 0) for p in old if p not in new and p not in full]
                changes.append(sorted(diff, reverse=rev))
            if changes[0] or changes[1]:
                break
        checksum = self._checksum() ^ (1 if bad_checksum else 0)
        ts = _rfc3339(T0_NS + self.book.steps * STEP_NS)
        return ('{"channel":"book","type":"update","data":[{"symbol":"%s","bids":[%s],"asks":[%s],'
                '"checksum":%d,"timestamp":"%s"}]}' % (self.symbol, self._levels(changes[0]),
                                                       self._levels(changes[1]), checksum, ts))


class CoinbaseLevel2Feed:
    """Coinbase Advanced Trade ``l2_data`` frames for one product of a :class:`SimBook`.

    ``sequence_num`` counts every frame of the connection: pass one shared ``counter`` list
    (``[next_sequence]``) to several feeds of one connection.
    """

    def __init__(self, book: SimBook, product_id: str = "BTC-USD", counter: list[int] | None = None) -> None:
        self.book = book
        self.product_id = product_id
        self.counter = counter if counter is not None else [0]

    def _next_seq(self) -> int:
        seq = self.counter[0]
        self.counter[0] += 1
        return seq

    def _frame(self, kind: str, changes) -> str:
        pd, qd = self.book.price_decimals, self.book.qty_decimals
        ts = _rfc3339(T0_NS + self.book.steps * STEP_NS)
        updates = ",".join(
            '{"side":"%s","event_time":"%s","price_level":"%s","new_quantity":"%s"}'
            % ("bid" if side == 0 else "offer", ts, fmt_fixed(p, pd), fmt_fixed(q, qd) if q else "0")
            for side, p, q in changes)
        return ('{"channel":"l2_data","client_id":"","timestamp":"%s","sequence_num":%d,'
                '"events":[{"type":"%s","product_id":"%s","updates":[%s]}]}'
                % (ts, self._next_seq(), kind, self.product_id, updates))

    def snapshot(self) -> str:
        """The whole book as one snapshot frame."""
        changes = [(0, p, q) for p, q in self.book.sorted_bids()] + [(1, p, q) for p, q in self.book.sorted_asks()]
        return self._frame("snapshot", changes)

    def update(self, *, gap: bool = False) -> str:
        """Step the book and return the update frame; ``gap``: one frame is lost before it."""
        if gap:
            self.update()
        return self._frame("update", self.book.step())

    def heartbeat(self) -> str:
        """A ``heartbeats`` frame, which takes a sequence number on the same connection."""
        ts = _rfc3339(T0_NS + self.book.steps * STEP_NS)
        return ('{"channel":"heartbeats","client_id":"","timestamp":"%s","sequence_num":%d,'
                '"events":[{"current_time":"%s","heartbeat_counter":%d}]}'
                % (ts, self._next_seq(), ts, self.book.steps))


class BinanceDepthFeed:
    """Binance spot ``<symbol>@depth@100ms`` events and REST snapshots of a :class:`SimBook`.

    Each event carries the changes of one step; update ids advance by one per change, so
    ``U``..``u`` spans them.  ``snapshot_history`` keeps the REST bodies taken so far;
    ``history=k`` also keeps the book's body before each of the last k events, for
    :meth:`stale_snapshot`.
    """

    def __init__(self, book: SimBook, symbol: str = "BTCUSDT", first_update_id: int = 1000,
                 history: int = 0) -> None:
        self.book = book
        self.symbol = symbol
        self.update_id = first_update_id
        self.snapshot_history: list[str] = []
        # REST bodies of the book before each of the last ``history`` events (stale snapshots)
        self._before: deque[str] = deque(maxlen=history)

    def _levels(self, items) -> str:
        pd, qd = self.book.price_decimals, self.book.qty_decimals
        return ",".join(f'["{fmt_fixed(p, pd)}","{fmt_fixed(q, qd)}"]' for p, q in items)

    def event(self, *, combined: bool = False, gap: bool = False) -> str:
        """Step the book and return its ``depthUpdate``; ``gap``: one event is lost before it."""
        if gap:
            self.event()
        if self._before.maxlen:
            self._before.append(self._body(5000))
        changes = self.book.step()
        while not changes:
            changes = self.book.step()
        first = self.update_id + 1
        self.update_id += len(changes)
        last_by_level: dict[tuple[int, int], int] = {}
        for side, p, q in changes:
            last_by_level[(side, p)] = q
        bids = [(p, q) for (s, p), q in last_by_level.items() if s == 0]
        asks = [(p, q) for (s, p), q in last_by_level.items() if s == 1]
        ms = (T0_NS + self.book.steps * STEP_NS) // 1_000_000
        body = ('{"e":"depthUpdate","E":%d,"s":"%s","U":%d,"u":%d,"b":[%s],"a":[%s]}'
                % (ms, self.symbol, first, self.update_id, self._levels(bids), self._levels(asks)))
        if combined:
            return '{"stream":"%s@depth@100ms","data":%s}' % (self.symbol.lower(), body)
        return body

    def _body(self, limit: int) -> str:
        return ('{"lastUpdateId":%d,"bids":[%s],"asks":[%s]}'
                % (self.update_id, self._levels(self.book.sorted_bids()[:limit]),
                   self._levels(self.book.sorted_asks()[:limit])))

    def rest_snapshot(self, limit: int = 5000) -> str:
        """The ``GET /api/v3/depth`` body of the current book (also kept in ``snapshot_history``)."""
        body = self._body(limit)
        self.snapshot_history.append(body)
        return body

    def stale_snapshot(self, behind: int = 1) -> str:
        """The REST body as it was ``behind`` events ago (a snapshot served from a lagging
        cache); needs ``history >= behind`` at construction."""
        if not 1 <= behind <= len(self._before):
            raise ValueError(f"behind {behind!r} must be within 1..{len(self._before)} "
                             f"(the events kept: history={self._before.maxlen})")
        return self._before[-behind]
