"""Kraken book updates: sabot's compiled book vs the ``order-book`` C extension cryptofeed uses.

Case: a depth-10 Kraken v2 ``book`` subscription; every update frame changes 10 levels (5 bids,
5 asks, all inside the top 10) and carries the CRC32 of the resulting top 10.  Each entry does
the whole job per frame: parse the text, apply the levels, compute the checksum and compare it
with the one sent.

* ``sabot``: :class:`sabot.book.KrakenBooks` (byte scanner, fixed-point book, checksum, and the
  top-of-book/depth row bookkeeping of its :class:`~sabot.book.BookSet`).
* ``order-book``: cryptofeed's path — ``json.loads(frame, parse_float=Decimal)`` (the checksum
  needs the exact digits), ``OrderBook(max_depth=10, checksum_format="KRAKEN")`` side dicts,
  ``checksum()``.  Install it with ``pip install order-book`` (it is not a Sabot dependency);
  without it only the sabot entry runs.

    python benchmarks/peers_book.py            # prints us/update for both
    python benchmarks/compare_peers.py --modules book
"""
from __future__ import annotations

import json
import random
import time
from decimal import Decimal

from sabot.sim.books import SimBook, fmt_fixed, kraken_checksum

SYMBOL = "BTC/USD"


def make_frames(n: int, seed: int = 3) -> tuple[str, list[str]]:
    """A snapshot and ``n`` update frames of 10 changed levels each (valid checksums)."""
    sim = SimBook(seed, mid=65000.0, price_decimals=1, qty_decimals=8, levels=10)
    rng = random.Random(seed)
    bids = dict(sim.sorted_bids()[:10])
    asks = dict(sim.sorted_asks()[:10])
    pd, qd = sim.price_decimals, sim.qty_decimals

    def levels(items):
        return ",".join(f'{{"price":{fmt_fixed(p, pd)},"qty":{fmt_fixed(q, qd)}}}' for p, q in items)

    def checksum():
        return kraken_checksum(sorted(asks.items()), sorted(bids.items(), reverse=True))

    snapshot = ('{"channel":"book","type":"snapshot","data":[{"symbol":"%s","bids":[%s],"asks":[%s],'
                '"checksum":%d}]}' % (SYMBOL, levels(sorted(bids.items(), reverse=True)),
                                      levels(sorted(asks.items())), checksum()))
    frames = []
    for i in range(n):
        changed = []
        for side in (bids, asks):
            picks = rng.sample(sorted(side), 5)
            for p in picks:
                side[p] = rng.randint(1, 5_000_000_000)
            changed.append(sorted(((p, side[p]) for p in picks), reverse=side is bids))
        ts = f"2026-01-01T00:00:{i % 60:02d}.{i % 1_000_000:06d}Z"
        frames.append('{"channel":"book","type":"update","data":[{"symbol":"%s","bids":[%s],'
                      '"asks":[%s],"checksum":%d,"timestamp":"%s"}]}'
                      % (SYMBOL, levels(changed[0]), levels(changed[1]), checksum(), ts))
    return snapshot, frames


def _sabot(snapshot, frames):
    from sabot.book import KrakenBooks

    def run():
        books = KrakenBooks(depth=10)
        on_message = books.on_message
        on_message(snapshot)
        for frame in frames:
            on_message(frame, 0)
        books.books.flush_tob()
        books.books.flush_depth()
    return run


def _order_book(snapshot, frames):
    from order_book import OrderBook

    def apply(ob, item):
        for side, key in ((ob.bids, "bids"), (ob.asks, "asks")):
            for lv in item[key]:
                if lv["qty"] == 0:
                    if lv["price"] in side:
                        del side[lv["price"]]
                else:
                    side[lv["price"]] = lv["qty"]
        if ob.checksum() != item["checksum"]:
            raise AssertionError("order-book checksum mismatch")

    def run():
        ob = OrderBook(max_depth=10, checksum_format="KRAKEN")
        apply(ob, json.loads(snapshot, parse_float=Decimal)["data"][0])
        for frame in frames:
            msg = json.loads(frame, parse_float=Decimal)
            for item in msg["data"]:
                apply(ob, item)
    return run


def cases(scale: float = 1.0):
    n = max(int(200_000 * scale), 50)
    snapshot, frames = make_frames(n)
    fns = {"sabot": _sabot(snapshot, frames)}
    try:
        import order_book  # noqa: F401
        fns["order-book (cryptofeed)"] = _order_book(snapshot, frames)
    except ModuleNotFoundError:
        pass
    return [(f"kraken book update, 10 levels + checksum", n, fns)]


def main() -> int:
    for case, rows, fns in cases(0.25):
        print(case, f"({rows:,} updates)")
        for label, fn in fns.items():
            fn()
            best = min(_timed(fn) for _ in range(5))
            print(f"  {label:<26} {best / rows * 1e6:8.2f} us/update")
    return 0


def _timed(fn) -> float:
    """CPU time of one run (the machine may be shared: wall time would count waiting)."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


if __name__ == "__main__":
    raise SystemExit(main())
