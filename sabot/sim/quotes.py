"""Quote sources for the local exchange servers: a seedable multi-exchange random walk and scripted scenarios.

Random walk: every exchange shares one mid path per symbol (log-normal steps seeded by ``seed``
and the symbol only, so servers in separate processes with the same seed see the same path); each
exchange adds its own mean-reverting AR(1) noise (seeded by ``seed`` and the exchange) and its own
half-spread, so cross-exchange spreads open and close.  USDT is a currency of its own: one
``USDT/USD`` rate path (mean-reverting around 1, seeded by ``seed`` only) is what a venue listing
``USDT/USD`` quotes, and a ``X/USDT`` book follows ``X/USD``'s path divided by that rate, so the
USD value of a USDT quote moves with the basis.  Prices under 10 get at least 5 decimals.

Scenario file: JSON lines ``{"t": 0.5, "exchange": "coinbase", "symbol": "BTC/USD", "bid": 100.0,
"ask": 100.1, "bid_size": 1.0, "ask_size": 2.0, "price": 100.05, "volume": 12.5}``; ``t`` is seconds
after the first subscription, ``symbol`` canonical (``BASE/QUOTE``) or the exchange's spelling;
``bid_size``/``ask_size``/``price``/``volume`` are optional.  A server plays only its exchange's lines.

Trades (:class:`TradeGen`): after each quote a server whose client subscribed trades prints 0-2
trades seeded by ``seed`` and the exchange: the aggressor side is random, a buy prints at the
ask and a sell at the bid, now and then one tick through it (the quote's neighbourhood).
"""
from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

import orjson

from sabot.venues import VenueMapping, get_venue

__all__ = ["Quote", "RandomWalk", "load_scenario", "to_raw_symbol", "EXCHANGE_PROFILES", "DEFAULT_PROFILE",
           "Trade", "TradeGen"]


@dataclass(frozen=True)
class Quote:
    symbol: str  # canonical BASE/QUOTE
    bid: float
    ask: float
    bid_size: float
    ask_size: float
    price: float
    volume: float
    t: float = 0.0  # scenario time offset (s)


@dataclass(frozen=True)
class Trade:
    """One simulated trade: ``side`` is the aggressor's (``"buy"``/``"sell"``), ``trade_id``
    increases per symbol, ``t_ns`` is the exchange time."""

    symbol: str  # the venue's spelling
    price: float
    size: float
    side: str
    trade_id: int
    t_ns: int


class TradeGen:
    """Seeded trades next to quotes: ``prints(quote)`` -> ``[(price, size, side), ...]`` (0-2)."""

    def __init__(self, exchange: str, seed: int = 0) -> None:
        prof = {**DEFAULT_PROFILE, **get_venue(exchange).sim_profile}
        self.decimals = int(prof["decimals"])
        self._rng = random.Random(_seed(seed, exchange, "trades"))

    def prints(self, q: Quote) -> list[tuple[float, float, str]]:
        r = self._rng
        u = r.random()
        n = 0 if u < 0.4 else (1 if u < 0.8 else 2)
        tick = 10.0 ** -self.decimals
        out = []
        for _ in range(n):
            side = "buy" if r.random() < 0.5 else "sell"
            through = tick if r.random() < 0.2 else 0.0  # a sweep one tick through the touch
            price = q.ask + through if side == "buy" else max(q.bid - through, tick)
            out.append((round(price, self.decimals), round(r.uniform(0.0001, 0.5), 8), side))
        return out


#: What a venue's ``sim_profile`` leaves out.
DEFAULT_PROFILE: dict[str, float] = {"noise": 2e-4, "half_spread": 0.5e-4, "latency_ms": 40.0, "decimals": 2}

#: Per-venue noise (AR(1) sigma as a fraction of mid), half-spread (fraction), latency (ms) and
#: price decimals: each venue's ``sim_profile`` in the registry (a live view).
EXCHANGE_PROFILES: VenueMapping[dict] = VenueMapping(lambda v: {**DEFAULT_PROFILE, **v.sim_profile},
                                                   "simulator profile")

_START_PRICES = {"BTC": 65_000.0, "ETH": 3_400.0, "SOL": 150.0, "DOGE": 0.15, "USDT": 1.0}


def to_raw_symbol(symbol: str, exchange: str) -> str:
    """The venue's spelling of canonical ``BASE/QUOTE`` (``BTC-USD``, ``BTCUSDT``), as the venue's
    own module defines it; text without ``/`` is taken to be that spelling already."""
    if "/" not in symbol:
        return symbol  # already the exchange's spelling
    return get_venue(exchange).to_exchange_symbol(symbol)


def _seed(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


class RandomWalk:
    """Deterministic quotes for one exchange: ``next(symbol)`` gives that symbol's next step."""

    def __init__(self, exchange: str, seed: int = 0, step_vol: float = 2e-4) -> None:
        prof = {**DEFAULT_PROFILE, **get_venue(exchange).sim_profile}
        self.exchange = exchange
        self.seed = seed
        self.step_vol = step_vol
        self.noise_sigma = float(prof["noise"])
        self.half_spread = float(prof["half_spread"])
        self.decimals = int(prof["decimals"])
        self._mid_rng: dict[str, random.Random] = {}
        self._mid: dict[str, float] = {}
        self._noise: dict[str, float] = {}
        self._noise_rng = random.Random(_seed(seed, exchange))
        self._volume: dict[str, float] = {}
        self._decimals: dict[str, int] = {}
        #: the USDT/USD rate: AR(1) deviation from 1 with this step (stationary sd ~ 10x it)
        self.rate_step = 2e-5
        self._rate_rng: dict[str, random.Random] = {}
        self._rate_dev: dict[str, float] = {}

    def _rate(self, symbol: str) -> float:
        """The next step of the USDT/USD rate path as seen by ``symbol``'s quotes (each symbol
        steps its own copy of the one path, so the k-th quote of every symbol sees the k-th
        rate on every venue)."""
        rng = self._rate_rng.get(symbol)
        if rng is None:
            rng = self._rate_rng[symbol] = random.Random(_seed(self.seed, "USDT/USD"))
            self._rate_dev[symbol] = 0.0
        dev = 0.995 * self._rate_dev[symbol] + rng.gauss(0.0, self.rate_step)
        self._rate_dev[symbol] = dev
        return 1.0 + dev

    def next(self, symbol: str) -> Quote:
        rng = self._mid_rng.get(symbol)
        if rng is None:
            # one path per asset pair on every venue: BTC/USDT follows BTC/USD's (over the rate)
            shared = symbol[:-1] if symbol.endswith("/USDT") else symbol
            rng = self._mid_rng[symbol] = random.Random(_seed(self.seed, shared))
            base = symbol.split("/")[0]
            self._mid[symbol] = _START_PRICES.get(base, 100.0)
            self._noise[symbol] = 0.0
            self._volume[symbol] = 1000.0
            self._decimals[symbol] = self.decimals if self._mid[symbol] >= 10 else max(self.decimals, 5)
        if symbol == "USDT/USD":
            mid = self._rate(symbol)
        else:
            mid = self._mid[symbol] * math.exp(rng.gauss(0.0, self.step_vol))
            self._mid[symbol] = mid
            if symbol.endswith("/USDT"):
                mid = mid / self._rate(symbol)
        r = self._noise_rng
        noise = 0.9 * self._noise[symbol] + r.gauss(0.0, self.noise_sigma)
        self._noise[symbol] = noise
        local_mid = mid * (1.0 + noise)
        half = local_mid * self.half_spread * (0.5 + r.random())
        decimals = self._decimals[symbol]
        tick = 10.0 ** -decimals
        bid = round(local_mid - half, decimals)
        ask = round(max(local_mid + half, bid + tick), decimals)
        self._volume[symbol] += r.random()
        return Quote(
            symbol=symbol, bid=bid, ask=ask,
            bid_size=round(r.uniform(0.001, 5.0), 8), ask_size=round(r.uniform(0.001, 5.0), 8),
            price=round(bid if r.random() < 0.5 else ask, decimals),
            volume=round(self._volume[symbol], 8),
        )


def load_scenario(path: str | Path, exchange: str) -> list[Quote]:
    """This exchange's quotes from a JSON-lines scenario file, ordered by ``t``."""
    quotes = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
            if row["exchange"] != exchange:
                continue
            bid, ask = float(row["bid"]), float(row["ask"])
            quotes.append(Quote(
                symbol=row["symbol"], bid=bid, ask=ask,
                bid_size=float(row.get("bid_size", 1.0)), ask_size=float(row.get("ask_size", 1.0)),
                price=float(row.get("price", (bid + ask) / 2)), volume=float(row.get("volume", 0.0)),
                t=float(row["t"]),
            ))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{lineno}: bad scenario line ({exc}): {line[:120]}") from None
    quotes.sort(key=lambda q: q.t)
    return quotes
