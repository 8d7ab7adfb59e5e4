#!/usr/bin/env python3
"""Statistical arbitrage on a pair of crypto quotes: Kalman hedge ratio, z-scored spread.

A pair is two legs, each ``venue:SYMBOL`` (canonical symbol, as in the ``symbol`` column of the
collectors' records): two assets on one venue (``coinbase:ETH/USD`` against
``coinbase:BTC/USD``) or one asset on two venues (``coinbase:BTC/USD`` against
``kraken:BTC/USD``).  ``y`` is the first leg, ``x`` the second.

    python examples/crypto_advanced_strategies.py backtest --data data/ \\
        --y coinbase:ETH/USD --x coinbase:BTC/USD --bar 1s --window 120
    python examples/crypto_advanced_strategies.py live --bootstrap localhost:19092 \\
        --y coinbase:BTC/USD --x kraken:BTC/USD

``backtest`` reads ``<data>/<venue>.parquet`` (what ``sabot demo --data-dir DIR`` and the
collectors write; half a minute of the demo gives about 110 bars of 250 ms, so try
``--bar 250ms --window 40`` on it); ``live`` reads the venues' Kafka ticker topics and prints
every entry and exit as its bar closes, until Ctrl+C (exit code 0; 1 on a failure; 2 on a
usage mistake).

The model, bar by bar
---------------------
**Bars.** A bar of length Δ closing at T (a multiple of Δ since the epoch) holds quotes with
timestamps in (T − Δ, T].  Each leg's bar close is its last quote at or before T, found by an
ASOF join (:func:`sabot.fintech.asof_join`, backward, at most ``--max-stale`` old) of the bar
clock against that leg's quotes, which also aligns the two legs in time.  mid = (bid + ask)/2.
A bar is final once a quote of either leg later than T has been seen (so the last, unfinished
bar of a recording is not used); a bar where a leg has no fresh enough quote is skipped.

**Hedge ratio.** Prices are scaled by their first bar's mids (ỹ = y/y₀, x̃ = x/x₀) so that the
filter's noise settings do not depend on the price level, then
:class:`sabot.fintech.KalmanHedgeRatio` tracks β̃ in ỹ_t = β̃_t·x̃_t + ε_t::

    state:        β̃_t = β̃_{t−1} + w_t,        w_t ~ N(0, q)      (random walk)
    observation:  ỹ_t = β̃_t·x̃_t + ε_t,        ε_t ~ N(0, r)
    predict:      P⁻ = P + q
    update:       S = x̃²·P⁻ + r;  K = P⁻·x̃/S;  β̃ ← β̃ + K·(ỹ − β̃·x̃);  P = P⁻·r/S

The hedge ratio in coins of x per coin of y is β = β̃·y₀/x₀.

**Spread and z-score.**  spread s_t = y_t − β_t·x_t − α_t.  The filter has no intercept state,
so the pair's level offset α_t is the mean of y − β·x over the last N bars, and the z-score
(:class:`sabot.fintech.RollingZScore`, sample std, N = ``--window``) is::

    z_t = (s_t − mean_N(s)) / std_N(s)

**Rules** (one position at a time, evaluated at each bar close):

* flat: entry < z < stop opens a short spread (sell y, buy β·x); −stop < z < −entry opens a
  long spread (no entry beyond the stop);
* long: z > −exit closes it (back inside the exit band, or beyond); z < −stop stops it out;
* short: z < exit closes it; z > stop stops it out;
* after a stop, no new position until |z| < exit (the pair is back at its mean);
* at most one order per bar: a bar that closes a position does not open the next one.

A position is sized at entry to a gross notional N: |q_y|·y + |q_x|·x = N with q_x = −β·q_y,
β frozen at entry.  Orders fill at the bar-close quotes (buy at the ask, sell at the bid) and
pay each venue's taker fee (``sabot.venues.default_fees()``, ``--fees`` to override).  An
open position is closed at the last bar of a backtest.

**Performance.** Positions are marked at the mid each bar: pnl_t = Σ_legs q·(mid_t − mid_{t−1})
minus the costs of orders at t (half-spread crossed and fees), so Σ pnl_t over a trade equals
Σ_legs q·(exit fill − entry fill) − fees.  Bar return r_t = pnl_t / N (zero while flat);
with B = bars per year (365 days, crypto trades all year)::

    Sharpe  = mean(r) / std(r, ddof=1) · √B
    Sortino = mean(r) / √(mean(min(r, 0)²)) · √B
    max drawdown = max over t of (1 − E_t / max_{u≤t} E_u),  E_t = N + Σ_{u≤t} pnl_u

Annualised figures from a short span extrapolate a few bars to a year: the report warns when
the bars cover less than 30 days.  ``pairs_spread`` with a static OLS β gives the
mean-reversion half-life of the pair, −ln 2 / ln φ for the AR(1) coefficient φ of that spread.
"""
from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from sabot.clitools import (  # noqa: E402
    EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ArgumentParser, UsageError, positive_float, positive_int,
)
from sabot.fintech import KalmanHedgeRatio, RollingZScore, asof_join, pairs_spread  # noqa: E402
from sabot.timeunits import duration_ns  # noqa: E402
from sabot.venues import default_fees, get_venue  # noqa: E402

logger = logging.getLogger("statarb")

NS_PER_DAY = 86_400 * 1_000_000_000
NS_PER_YEAR = 365 * NS_PER_DAY
#: Below this span of bars the annualised figures are flagged as extrapolated.
MIN_SPAN_DAYS = 30.0
TS_TYPE = pa.timestamp("ns", tz="UTC")

LONG, FLAT, SHORT = 1, 0, -1


# ---------------------------------------------------------------------------------------------
# The pair and its parameters
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Leg:
    """One side of the pair: a canonical symbol on a registered venue."""

    venue: str
    symbol: str

    @classmethod
    def parse(cls, text: str) -> "Leg":
        """``'coinbase:BTC/USD'`` → Leg; ValueError naming the text otherwise."""
        venue, sep, symbol = text.partition(":")
        if not sep or not venue or not symbol:
            raise ValueError(f"leg {text!r}: expected VENUE:SYMBOL, e.g. coinbase:BTC/USD")
        get_venue(venue)  # UnknownVenueError (a ValueError) listing the known venues
        return cls(venue, symbol)

    def __str__(self) -> str:
        return f"{self.venue}:{self.symbol}"


@dataclass(frozen=True)
class Params:
    """Everything that decides the bars, the signals and the costs."""

    bar_ns: int = 1_000_000_000
    window: int = 120
    entry: float = 2.0
    exit: float = 0.5
    stop: float = 4.0
    q: float = 1e-10
    r: float = 1e-6
    max_stale_ns: int = 60_000_000_000
    notional: float = 10_000.0
    fees_bps: Mapping[str, float] = field(default_factory=default_fees)

    def __post_init__(self) -> None:
        if not 0.0 <= self.exit < self.entry < self.stop:
            raise ValueError(f"need 0 <= exit < entry < stop, got exit={self.exit}, "
                             f"entry={self.entry}, stop={self.stop}")
        if self.window < 2:
            raise ValueError(f"window must be >= 2 bars, got {self.window}")
        if self.bar_ns <= 0 or self.max_stale_ns < 0:
            raise ValueError(f"bar_ns must be > 0 and max_stale_ns >= 0, got {self.bar_ns}, "
                             f"{self.max_stale_ns}")
        if not 0.0 < self.notional < math.inf:
            raise ValueError(f"notional must be a finite number > 0, got {self.notional}")


def parse_fees(text: str) -> Dict[str, float]:
    """``'coinbase=6,kraken=16'`` over the registry's defaults; ValueError naming the item."""
    overrides: Dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        venue, sep, value = item.partition("=")
        try:
            bps = float(value)
        except ValueError:
            bps = float("nan")
        if not sep or not bps >= 0.0 or bps == float("inf"):
            raise ValueError(f"--fees item {item!r}: expected VENUE=BPS with BPS >= 0")
        get_venue(venue.strip())
        overrides[venue.strip()] = bps
    return default_fees(overrides)


# ---------------------------------------------------------------------------------------------
# Bars: resample both legs onto one clock with ASOF joins
# ---------------------------------------------------------------------------------------------
class BarBuilder:
    """Turns the legs' quotes, fed in time order and in any batches, into final bars.

    ``add(table)`` takes ticker rows (any venues and symbols; the legs' rows are picked out)
    and returns a table of the bars that became final: ``timestamp`` (bar close T),
    ``y_bid, y_ask, y_mid, x_bid, x_ask, x_mid``.  Bars where a leg has no quote within
    ``max_stale_ns`` of T are dropped (counted in ``skipped_bars``); quotes older than a bar
    already emitted are dropped (counted in ``late_quotes``).
    """

    def __init__(self, y: Leg, x: Leg, bar_ns: int, max_stale_ns: int) -> None:
        self.legs = {"y": y, "x": x}
        self.bar_ns = bar_ns
        self.max_stale_ns = max_stale_ns
        self.pending: Dict[str, List[pa.Table]] = {"y": [], "x": []}
        self.next_close: Optional[int] = None   # close time of the first bar not yet emitted
        self.latest: Optional[int] = None       # newest leg quote seen
        self.late_quotes = 0
        self._late_logged = -math.inf
        self.skipped_bars = 0
        self.bars = 0

    def _leg_rows(self, table: pa.Table, leg: Leg) -> pa.Table:
        mask = pc.and_(pc.equal(table["exchange"], leg.venue),
                       pc.equal(table["symbol"], leg.symbol))
        rows = table.filter(mask).select(["timestamp", "bid", "ask"])
        usable = pc.and_(pc.and_(pc.is_valid(rows["bid"]), pc.is_valid(rows["ask"])),
                         pc.greater(rows["bid"], 0.0))
        rows = rows.filter(usable)
        return rows.set_column(0, "timestamp", rows["timestamp"].cast(TS_TYPE))

    def add(self, table: pa.Table) -> pa.Table:
        rows = {name: self._leg_rows(table, leg) for name, leg in self.legs.items()}
        times = {name: r["timestamp"].cast(pa.int64()).to_numpy() for name, r in rows.items()}
        if self.next_close is None:
            firsts = [int(ts.min()) for ts in times.values() if ts.size]
            if firsts:   # the bar (T − Δ, T] holding the first quote: T = ceil(first / Δ)·Δ
                self.next_close = -(-min(firsts) // self.bar_ns) * self.bar_ns
        for name, leg in self.legs.items():
            ts = times[name]
            if not ts.size:
                continue
            late = ts <= self.next_close - self.bar_ns
            if late.any():
                self._skip_late(leg, int(late.sum()))
                rows[name] = rows[name].filter(pa.array(~late))
                ts = ts[~late]
            if ts.size:
                self.pending[name].append(rows[name])
                newest = int(ts.max())
                self.latest = newest if self.latest is None else max(self.latest, newest)
        return self._close_bars()

    def _skip_late(self, leg: Leg, n: int) -> None:
        """Count quotes older than a bar already closed; log at most every 10 s."""
        self.late_quotes += n
        now = time.monotonic()
        if now - self._late_logged >= 10.0:
            self._late_logged = now
            logger.warning("%s: %d quote(s) older than a bar already closed, skipped (%d so far)",
                           leg, n, self.late_quotes)

    def _close_bars(self) -> pa.Table:
        if self.next_close is None or self.latest is None or self.latest <= self.next_close:
            return _empty_bars()
        last_close = ((self.latest - 1) // self.bar_ns) * self.bar_ns   # last T < latest
        closes = np.arange(self.next_close, last_close + 1, self.bar_ns, dtype=np.int64)
        self.next_close = last_close + self.bar_ns
        clock = pa.table({"timestamp": pa.array(closes).cast(TS_TYPE)})
        bars = clock
        for name in ("y", "x"):
            quotes = (pa.concat_tables(self.pending[name]) if self.pending[name]
                      else pa.table({"timestamp": pa.array([], TS_TYPE),
                                     "bid": pa.array([], pa.float64()),
                                     "ask": pa.array([], pa.float64())}))
            quotes = quotes.sort_by("timestamp")
            joined = asof_join(clock, quotes, on="timestamp", direction="backward",
                               tolerance=self.max_stale_ns, right_prefix=f"{name}_")
            bars = bars.append_column(f"{name}_bid", joined[f"{name}_bid"])
            bars = bars.append_column(f"{name}_ask", joined[f"{name}_ask"])
            bars = bars.append_column(f"{name}_mid", pc.divide(
                pc.add(joined[f"{name}_bid"], joined[f"{name}_ask"]), 2.0))
            # keep the quotes after the last close and the last one at or before it
            qts = quotes["timestamp"].cast(pa.int64()).to_numpy()
            keep_from = max(int(np.searchsorted(qts, last_close, side="right")) - 1, 0)
            self.pending[name] = [quotes.slice(keep_from)] if quotes.num_rows else []
        complete = pc.and_(pc.is_valid(bars["y_mid"]), pc.is_valid(bars["x_mid"]))
        dropped = bars.num_rows - pc.sum(pc.cast(complete, pa.int64())).as_py()
        if dropped:
            self.skipped_bars += dropped
            logger.info("%d bar(s) without a quote of both legs within %.3f s, skipped",
                        dropped, self.max_stale_ns / 1e9)
        bars = bars.filter(complete)
        self.bars += bars.num_rows
        return bars


def _empty_bars() -> pa.Table:
    cols = {"timestamp": pa.array([], TS_TYPE)}
    for name in ("y", "x"):
        for c in ("bid", "ask", "mid"):
            cols[f"{name}_{c}"] = pa.array([], pa.float64())
    return pa.table(cols)


# ---------------------------------------------------------------------------------------------
# Signals: Kalman hedge ratio, z-scored spread, entry / exit / stop
# ---------------------------------------------------------------------------------------------
@dataclass
class Trade:
    """One round trip: quantities in coins (q_y > 0: long y), fills, fees, net PnL."""

    side: int
    entry_time: int
    entry_z: float
    hedge_ratio: float
    q_y: float
    q_x: float
    entry_y: float
    entry_x: float
    entry_fees: float
    exit_time: Optional[int] = None
    exit_z: Optional[float] = None
    exit_y: Optional[float] = None
    exit_x: Optional[float] = None
    exit_fees: float = 0.0
    reason: str = ""

    @property
    def pnl(self) -> float:
        """Σ_legs q·(exit fill − entry fill) − fees (closed trades only)."""
        if self.exit_time is None:
            raise ValueError("trade is still open")
        return (self.q_y * (self.exit_y - self.entry_y) + self.q_x * (self.exit_x - self.entry_x)
                - self.entry_fees - self.exit_fees)


@dataclass(frozen=True)
class Signal:
    """An entry or an exit, as printed: bar close time, action, side, z, β, leg mids."""

    time: int
    action: str          # "enter" | "exit" | "stop" | "end"
    side: int
    z: float
    hedge_ratio: float
    y_mid: float
    x_mid: float


def side_name(side: int) -> str:
    return {LONG: "long spread (buy y, sell x)", SHORT: "short spread (sell y, buy x)"}[side]


def format_signal(sig: Signal, y: Leg, x: Leg) -> str:
    """One line per signal: what the live mode prints and the backtest lists."""
    when = datetime.fromtimestamp(sig.time / 1e9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return (f"{when} {sig.action.upper():<5} {side_name(sig.side)}  z={sig.z:+.3f}  "
            f"beta={sig.hedge_ratio:.6g}  {y}={sig.y_mid:.8g}  {x}={sig.x_mid:.8g}")


class PairStrategy:
    """The pair's state across bars: filter, z-score window, position, PnL.

    ``on_bars(bars)`` takes final bars (from :class:`BarBuilder`, in time order, in any
    batches) and returns the bars with ``hedge_ratio``, ``spread``, ``zscore``, ``position``
    (after the bar's orders) and ``pnl`` appended, plus the signals they produced.  The same
    bars in any batching give the same result: every kernel carries its state across calls.
    """

    def __init__(self, y: Leg, x: Leg, params: Params) -> None:
        self.y, self.x, self.p = y, x, params
        self.kalman = KalmanHedgeRatio(q=params.q, r=params.r, a_column="y_n", b_column="x_n")
        self.zscore = RollingZScore(column="spread", window=params.window)
        self.fee_y = params.fees_bps[y.venue] / 1e4
        self.fee_x = params.fees_bps[x.venue] / 1e4
        self.scale: Optional[Tuple[float, float]] = None   # (y0, x0)
        self.side = FLAT
        self.armed = True                 # False after a stop until |z| < exit
        self.open: Optional[Trade] = None
        self.trades: List[Trade] = []
        self.prev_mid: Optional[Tuple[float, float]] = None
        self.last_bar: Optional[dict] = None

    def indicators(self, bars: pa.Table) -> pa.Table:
        """bars + ``hedge_ratio`` (β, coins of x per coin of y), ``spread`` (y − β·x) and
        ``zscore``."""
        if self.scale is None:
            self.scale = (bars["y_mid"][0].as_py(), bars["x_mid"][0].as_py())
        y0, x0 = self.scale
        scaled = bars.append_column("y_n", pc.divide(bars["y_mid"], y0)).append_column(
            "x_n", pc.divide(bars["x_mid"], x0))
        out = self.kalman(scaled)                     # hedge_ratio (β̃), spread (ỹ − β̃·x̃)
        beta = pc.multiply(out["hedge_ratio"], y0 / x0)
        spread = pc.multiply(out["spread"], y0)       # = y − β·x in y's price units
        out = out.drop_columns(["y_n", "x_n", "hedge_ratio", "spread"])
        out = out.append_column("hedge_ratio", beta).append_column("spread", spread)
        return self.zscore(out)

    def on_bars(self, bars: pa.Table) -> Tuple[pa.Table, List[Signal]]:
        if not bars.num_rows:
            return bars, []
        out = self.indicators(bars)
        signals: List[Signal] = []
        positions = np.zeros(out.num_rows, dtype=np.int64)
        pnls = np.zeros(out.num_rows)
        times = out["timestamp"].cast(pa.int64()).to_numpy()
        for i, row in enumerate(out.drop_columns(["timestamp"]).to_pylist()):
            pnls[i] = self._step(int(times[i]), row, signals)
            positions[i] = self.side
        out = out.append_column("position", pa.array(positions))
        out = out.append_column("pnl", pa.array(pnls))
        return out, signals

    def _step(self, t: int, row: dict, signals: List[Signal]) -> float:
        """Mark the open position to bar ``t`` (close, ns), then apply the rules; the bar's PnL."""
        y_mid, x_mid, z = row["y_mid"], row["x_mid"], row["zscore"]
        pnl = 0.0
        if self.open is not None and self.prev_mid is not None:
            pnl += (self.open.q_y * (y_mid - self.prev_mid[0])
                    + self.open.q_x * (x_mid - self.prev_mid[1]))
        self.prev_mid = (y_mid, x_mid)
        self.last_bar = dict(row, t=t)
        if z is None:
            return pnl
        if not self.armed and abs(z) < self.p.exit:
            self.armed = True
        if self.side == FLAT:
            if self.armed and self.p.entry < abs(z) < self.p.stop:
                pnl -= self._enter(SHORT if z > 0 else LONG, t, row, signals)
        else:
            s = self.side
            if s * z < -self.p.stop:                  # further away from the mean: stop
                pnl -= self._exit("stop", t, row, signals)
                self.armed = False
            elif s * z > -self.p.exit:                # back inside the exit band, or beyond
                pnl -= self._exit("exit", t, row, signals)
        return pnl

    def _fill(self, qty: float, bid: float, ask: float) -> float:
        return ask if qty > 0 else bid

    def _enter(self, side: int, t: int, row: dict, signals: List[Signal]) -> float:
        """Open a position; returns its cost at the bar's mids (half-spreads + fees)."""
        beta = row["hedge_ratio"]
        q_y = side * self.p.notional / (row["y_mid"] + abs(beta) * row["x_mid"])
        q_x = -beta * q_y
        fy = self._fill(q_y, row["y_bid"], row["y_ask"])
        fx = self._fill(q_x, row["x_bid"], row["x_ask"])
        fees = abs(q_y) * fy * self.fee_y + abs(q_x) * fx * self.fee_x
        self.open = Trade(side, t, row["zscore"], beta, q_y, q_x, fy, fx, fees)
        self.side = side
        signals.append(Signal(t, "enter", side, row["zscore"], beta, row["y_mid"], row["x_mid"]))
        return q_y * (fy - row["y_mid"]) + q_x * (fx - row["x_mid"]) + fees

    def _exit(self, reason: str, t: int, row: dict, signals: List[Signal]) -> float:
        """Close the position; returns its cost at the bar's mids (half-spreads + fees)."""
        tr = self.open
        assert tr is not None
        fy = self._fill(-tr.q_y, row["y_bid"], row["y_ask"])
        fx = self._fill(-tr.q_x, row["x_bid"], row["x_ask"])
        fees = abs(tr.q_y) * fy * self.fee_y + abs(tr.q_x) * fx * self.fee_x
        tr.exit_time, tr.exit_z, tr.exit_y, tr.exit_x = t, row["zscore"], fy, fx
        tr.exit_fees, tr.reason = fees, reason
        self.trades.append(tr)
        signals.append(Signal(t, reason, tr.side, row["zscore"] if row["zscore"] is not None
                              else float("nan"), tr.hedge_ratio, row["y_mid"], row["x_mid"]))
        self.open, self.side = None, FLAT
        return -tr.q_y * (fy - row["y_mid"]) - tr.q_x * (fx - row["x_mid"]) + fees

    def close_at_end(self) -> Tuple[float, List[Signal]]:
        """Close an open position at the last bar's quotes; (cost, signals)."""
        signals: List[Signal] = []
        if self.open is None or self.last_bar is None:
            return 0.0, signals
        row = self.last_bar
        return self._exit("end", row["t"], row, signals), signals


# ---------------------------------------------------------------------------------------------
# Backtest
# ---------------------------------------------------------------------------------------------
@dataclass
class BacktestResult:
    bars: pa.Table              # per bar: quotes, hedge_ratio, spread, zscore, position, pnl
    trades: List[Trade]
    signals: List[Signal]
    metrics: Dict[str, Optional[float]]
    warnings: List[str]


def read_legs(data: Path, y: Leg, x: Leg) -> pa.Table:
    """The two legs' rows from ``<data>/<venue>.parquet``, in time order."""
    tables = []
    for venue in dict.fromkeys([y.venue, x.venue]):
        path = data / f"{venue}.parquet"
        if not path.is_file():
            raise UsageError(f"--data {data}: no {venue}.parquet there (record it with "
                             f"`sabot demo --data-dir {data}` or the {venue} collector)")
        t = pq.read_table(path, columns=["exchange", "symbol", "timestamp", "bid", "ask"])
        tables.append(t.set_column(2, "timestamp", t["timestamp"].cast(TS_TYPE)))
    table = pa.concat_tables(tables)
    for leg in (y, x):
        n = pc.sum(pc.cast(pc.and_(pc.equal(table["exchange"], leg.venue),
                                   pc.equal(table["symbol"], leg.symbol)), pa.int64())).as_py()
        if not n:
            raise UsageError(f"leg {leg}: no rows for symbol {leg.symbol!r} in "
                             f"{data / (leg.venue + '.parquet')}")
    return table.sort_by("timestamp")


def run_backtest(ticks: pa.Table, y: Leg, x: Leg, params: Params,
                 batch_rows: int = 65_536) -> BacktestResult:
    """Feed ``ticks`` (time-ordered ticker rows) through the bars and the strategy."""
    builder = BarBuilder(y, x, params.bar_ns, params.max_stale_ns)
    strategy = PairStrategy(y, x, params)
    parts: List[pa.Table] = []
    signals: List[Signal] = []
    for batch in ticks.to_batches(max_chunksize=batch_rows):
        out, sig = strategy.on_bars(builder.add(pa.Table.from_batches([batch])))
        if out.num_rows:
            parts.append(out)
        signals += sig
    if not parts:
        raise UsageError(f"no complete bar of {params.bar_ns / 1e9:g} s with quotes of both "
                         f"{y} and {x}: record longer, or use a shorter --bar / longer --max-stale")
    bars = pa.concat_tables(parts)
    cost, end_signals = strategy.close_at_end()
    signals += end_signals
    if cost:
        pnl = bars["pnl"].to_numpy().copy()
        pnl[-1] -= cost
        bars = bars.set_column(bars.schema.get_field_index("pnl"), "pnl", pa.array(pnl))
        pos = bars["position"].to_numpy().copy()
        pos[-1] = FLAT
        bars = bars.set_column(bars.schema.get_field_index("position"), "position", pa.array(pos))
    metrics, warnings = performance(bars["pnl"].to_numpy(), bars["timestamp"], params)
    if bars.num_rows < params.window:
        warnings.insert(0, f"only {bars.num_rows} bars, fewer than the z-score window of "
                           f"{params.window}: no signal could be computed (record longer, or use "
                           f"a shorter --bar or --window)")
    metrics["hedge_ratio_last"] = bars["hedge_ratio"][-1].as_py()
    metrics.update(static_pair(bars))
    metrics["skipped_bars"] = float(builder.skipped_bars)
    return BacktestResult(bars, strategy.trades, signals, metrics, warnings)


def performance(pnl: np.ndarray, timestamps: pa.ChunkedArray,
                params: Params) -> Tuple[Dict[str, Optional[float]], List[str]]:
    """Net PnL, Sharpe, Sortino and max drawdown from the bar PnL (see the module docstring)."""
    warnings: List[str] = []
    r = pnl / params.notional
    bars_per_year = NS_PER_YEAR / params.bar_ns
    ts = timestamps.cast(pa.int64()).to_numpy()
    span_days = (int(ts[-1] - ts[0]) + params.bar_ns) / NS_PER_DAY
    if span_days < MIN_SPAN_DAYS:
        warnings.append(f"the bars span {span_days * 24:.3g} hours (< {MIN_SPAN_DAYS:g} days): "
                        f"annualised figures extrapolate them to a year and mean little")
    sd = float(np.std(r, ddof=1)) if r.size > 1 else 0.0
    sharpe = float(np.mean(r)) / sd * math.sqrt(bars_per_year) if sd > 0 else None
    downside = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2))) if r.size else 0.0
    sortino = float(np.mean(r)) / downside * math.sqrt(bars_per_year) if downside > 0 else None
    equity = params.notional + np.cumsum(pnl)
    peak = np.maximum.accumulate(np.concatenate([[params.notional], equity]))[1:]
    max_dd = float(np.max(1.0 - equity / peak)) if equity.size else 0.0
    if sharpe is None:
        warnings.append("no variation in the bar returns (no trade?): Sharpe and Sortino undefined")
    return {"net_pnl": float(np.sum(pnl)), "return": float(np.sum(r)), "sharpe": sharpe,
            "sortino": sortino, "max_drawdown": max_dd, "bars": float(r.size),
            "span_days": span_days}, warnings


def static_pair(bars: pa.Table) -> Dict[str, Optional[float]]:
    """OLS β of y on x over all bars and the half-life (bars) of y − β·x by an AR(1) fit."""
    y = bars["y_mid"].to_numpy()
    x = bars["x_mid"].to_numpy()
    if y.size < 3 or np.var(x) == 0:
        return {"ols_beta": None, "half_life_bars": None}
    beta = float(np.cov(x, y, ddof=0)[0, 1] / np.var(x))
    legs = pa.table({"price": bars["y_mid"]})
    s = pairs_spread(legs, pa.table({"price": bars["x_mid"]}), beta)["spread"].to_numpy()
    d = s - s.mean()
    denom = float(np.dot(d[:-1], d[:-1]))
    phi = float(np.dot(d[:-1], d[1:]) / denom) if denom > 0 else float("nan")
    half = -math.log(2) / math.log(phi) if 0 < phi < 1 else None
    return {"ols_beta": beta, "half_life_bars": half}


def print_report(res: BacktestResult, y: Leg, x: Leg, params: Params) -> None:
    m = res.metrics
    print(f"pair y={y} x={x}, bar {params.bar_ns / 1e9:g} s, z window {params.window} bars, "
          f"entry {params.entry:g} exit {params.exit:g} stop {params.stop:g}, "
          f"notional {params.notional:,.0f}")
    fees = ", ".join(f"{v} {params.fees_bps[v]:g} bps" for v in dict.fromkeys([y.venue, x.venue]))
    print(f"taker fees: {fees}; fills at the bar-close bid/ask")
    print(f"{int(m['bars'])} bars ({int(m['skipped_bars'])} skipped without both legs), "
          f"last Kalman beta {m['hedge_ratio_last']:.6g}, static OLS beta "
          f"{_fmt(m['ols_beta'], '.6g')}, spread half-life {_fmt(m['half_life_bars'], '.1f')} bars")
    print(f"trades ({len(res.trades)}):")
    for i, tr in enumerate(res.trades, 1):
        print(f"  {i:>3} {'long ' if tr.side == LONG else 'short'} {_iso(tr.entry_time)} -> "
              f"{_iso(tr.exit_time)} ({tr.reason})  z {tr.entry_z:+.2f} -> "
              f"{_fmt(tr.exit_z, '+.2f')}  q_y {tr.q_y:+.6g}  q_x {tr.q_x:+.6g}  "
              f"fees {tr.entry_fees + tr.exit_fees:.2f}  pnl {tr.pnl:+.2f}")
    print(f"net PnL {m['net_pnl']:+.2f} ({m['return'] * 100:+.3f}% of notional), Sharpe "
          f"{_fmt(m['sharpe'], '.2f')}, Sortino {_fmt(m['sortino'], '.2f')}, max drawdown "
          f"{m['max_drawdown'] * 100:.3f}% (annualised from {params.bar_ns / 1e9:g} s bars)")
    for w in res.warnings:
        print(f"warning: {w}")


def _fmt(v: Optional[float], how: str) -> str:
    return "n/a" if v is None or v != v else format(v, how)


def _iso(t: Optional[int]) -> str:
    if t is None:
        return "open"
    return datetime.fromtimestamp(t / 1e9, tz=timezone.utc).strftime("%H:%M:%S")


def write_outputs(res: BacktestResult, output: Path) -> None:
    """The per-bar table as Parquet and the trades beside it (``<stem>_trades.parquet``)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(res.bars, output)
    rows = [{k: getattr(t, k) for k in Trade.__dataclass_fields__} | {"pnl": t.pnl}
            for t in res.trades]
    trades = pa.Table.from_pylist(rows) if rows else pa.table({"side": pa.array([], pa.int64())})
    pq.write_table(trades, output.with_name(output.stem + "_trades.parquet"))


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
def setup_from_args(args: argparse.Namespace) -> Tuple[Leg, Leg, Params]:
    """The legs and parameters; :class:`UsageError` naming the option for a bad value."""
    try:
        y, x = Leg.parse(args.y), Leg.parse(args.x)
        if y == x:
            raise ValueError(f"--y and --x are the same leg ({y})")
        if not (args.q >= 0.0 and math.isfinite(args.q)):
            raise ValueError(f"--q must be a finite number >= 0, got {args.q}")
        return y, x, Params(bar_ns=duration_ns(args.bar, "--bar"), window=args.window,
                            entry=args.entry, exit=args.exit, stop=args.stop, q=args.q, r=args.r,
                            max_stale_ns=duration_ns(args.max_stale, "--max-stale"),
                            notional=args.notional, fees_bps=parse_fees(args.fees))
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


def backtest(args: argparse.Namespace) -> int:
    y, x, params = setup_from_args(args)
    if not args.data.is_dir():
        raise UsageError(f"--data {args.data}: not a directory")
    res = run_backtest(read_legs(args.data, y, x), y, x, params)
    for sig in res.signals:
        print(format_signal(sig, y, x))
    print_report(res, y, x, params)
    if args.output is not None:
        write_outputs(res, args.output)
        print(f"bars -> {args.output}")
    return EXIT_OK


def live(args: argparse.Namespace) -> int:
    """Entries and exits from the venues' Kafka ticker topics as bars close, until Ctrl+C."""
    from sabot.api import Stream
    from sabot.apps._common import kafka_config_from_args, wait_reachable

    y, x, params = setup_from_args(args)
    kafka_config = kafka_config_from_args(args)
    wait_reachable(args.bootstrap, kafka_config, timeout_s=args.connect_timeout)
    topics = list(dict.fromkeys(get_venue(leg.venue).ticker_topic for leg in (y, x)))
    group = args.group_id or f"sabot-statarb-{uuid.uuid4().hex[:8]}"
    stream = Stream.from_kafka(args.bootstrap, topics, group, order_by="timestamp",
                               from_beginning=args.from_beginning, kafka_config=kafka_config)
    builder = BarBuilder(y, x, params.bar_ns, params.max_stale_ns)
    strategy = PairStrategy(y, x, params)

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)   # SIGTERM stops as cleanly as Ctrl+C
    print(f"live: pair y={y} x={x} on {', '.join(topics)} at {args.bootstrap}, bar "
          f"{params.bar_ns / 1e9:g} s; Ctrl+C to stop", flush=True)
    realised = 0.0
    batches = iter(stream)
    try:
        for batch in batches:
            _, signals = strategy.on_bars(builder.add(pa.Table.from_batches([batch])))
            for sig in signals:
                print(format_signal(sig, y, x), flush=True)
                if sig.action in ("exit", "stop"):
                    realised += strategy.trades[-1].pnl
    except KeyboardInterrupt:
        pass
    finally:
        batches.close()                               # closes the consumer now, not at exit
        signal.signal(signal.SIGTERM, previous)
    position = "flat" if strategy.open is None else side_name(strategy.side)
    print(f"live: stopped after {builder.bars} bars, {len(strategy.trades)} closed trade(s), "
          f"realised PnL {realised:+.2f}, position {position}", flush=True)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="crypto_advanced_strategies.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True, metavar="{backtest,live}")
    common = ArgumentParser(add_help=False)
    common.add_argument("--y", default="coinbase:ETH/USD", help="first leg VENUE:SYMBOL")
    common.add_argument("--x", default="coinbase:BTC/USD", help="second leg VENUE:SYMBOL")
    common.add_argument("--bar", default="1s", help="bar length: 250ms, 1s, 1m, 1h (default 1s)")
    common.add_argument("--window", type=positive_int, default=120,
                        help="z-score window in bars (default %(default)s)")
    common.add_argument("--entry", type=positive_float, default=2.0,
                        help="|z| that opens (default %(default)s)")
    common.add_argument("--exit", type=float, default=0.5,
                        help="|z| band that closes (default %(default)s)")
    common.add_argument("--stop", type=positive_float, default=4.0,
                        help="|z| that stops out (default %(default)s)")
    common.add_argument("--q", type=float, default=Params.q,
                        help="Kalman: variance of the hedge ratio's step per bar, on prices "
                             "scaled to their first bar (default %(default)g)")
    common.add_argument("--r", type=positive_float, default=Params.r,
                        help="Kalman: observation noise variance, scaled prices (default "
                             "%(default)g); sqrt(r/q) is roughly the filter's memory in bars")
    common.add_argument("--max-stale", default="60s",
                        help="a leg's quote older than this at a bar close does not count "
                             "(default %(default)s)")
    common.add_argument("--notional", type=positive_float, default=10_000.0,
                        help="gross notional per position, quote currency (default %(default)g)")
    common.add_argument("--fees", default="",
                        help="taker fees in bps over the venues' defaults, e.g. kraken=10")
    common.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    bt = sub.add_parser("backtest", parents=[common], help="on recorded Parquet files")
    bt.add_argument("--data", type=Path, required=True,
                    help="directory holding <venue>.parquet per venue")
    bt.add_argument("--output", type=Path, default=None,
                    help="write the bars (and <stem>_trades.parquet) here")
    lv = sub.add_parser("live", parents=[common], help="on the venues' Kafka ticker topics")
    lv.add_argument("--bootstrap", default="localhost:19092", help="Kafka bootstrap servers")
    lv.add_argument("--group-id", default=None, help="consumer group (default: a fresh one)")
    lv.add_argument("--from-beginning", action="store_true",
                    help="read the topics from their beginning (a fresh group starts at the end)")
    lv.add_argument("--connect-timeout", type=positive_float, default=8.0,
                    help="give up when no broker answers within this many seconds")
    from sabot.apps._common import add_kafka_config_argument
    add_kafka_config_argument(lv)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit codes: 0 ok, 1 failure, 2 usage (bad argument, missing data, unreachable broker)."""
    from sabot.broker import BrokerUnreachableError
    from sabot.kafka import KafkaConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prog = f"{parser.prog} {args.mode}"
    try:
        return {"backtest": backtest, "live": live}[args.mode](args)
    except (UsageError, FileNotFoundError, BrokerUnreachableError, KafkaConfigError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # a failure, not a usage mistake: one line, exit 1
        logger.debug("failure", exc_info=True)
        print(f"{prog}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
