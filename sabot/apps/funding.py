"""Funding-rate (cash-and-carry) arbitrage monitor: spot against a perpetual (``sabot funding``).

Reads three Kafka topics through one consumer - a spot venue's tickers (default ``binance``),
a perpetual venue's tickers and its funding records (default ``binance-usdm``:
``binance-usdm-perp-ticker`` and ``binance-usdm-funding``) - keeps the latest spot quote, perp
quote and funding record per symbol, and on every arriving spot or perp quote evaluates the
carry trade: **buy spot at the ask, short the perpetual at the bid**, hold through the next
funding time, unwind::

    gross_bps      = (perp_bid − spot_ask) / spot_ask · 1e4      basis locked in on entry
    funding_bps    = funding_rate · 1e4       received by the short at next_funding_time when the
                                              rate is positive, paid when it is negative
    fees_bps       = 2 · (fee_spot + fee_perp)   taker fees on both legs, entering and unwinding
    net_bps        = gross_bps + funding_bps − fees_bps
    edge_per_unit  = spot_ask · net_bps / 1e4   (quote currency per unit of base)

The reverse trade (short spot, long the perpetual while the rate is negative) needs borrowed
spot and is not evaluated.  Funding is paid on the position's notional at the mark price; ``funding_bps`` counts it per
unit of notional (the difference to counting it per unit of spot cost is rate × basis, below
1e-8 of the notional).  Annualised, with ``h`` the funding interval in hours, the kernels of
:mod:`sabot.fintech.fx_crypto` give ``funding_apr = rate · (24/h) · 365`` (:func:`funding_apr`)
and ``carry_edge_bps = net_bps · (24/h) · 365`` (:func:`cash_and_carry_edge` with a holding
period of one funding interval, ``T_days = h/24``).  ``h`` is learnt per symbol from the
records (the step of ``next_funding_time`` when it rolls on); until then ``--funding-hours``.

A row is evaluated only when all three are known for its symbol, the spot and perp quotes are
within ``--tolerance-ms`` of each other (event time), the funding record is at most
``--funding-max-age`` seconds old and its ``next_funding_time`` is still ahead; otherwise it
is counted as skipped, by reason.  It is an opportunity when ``net_bps >= --min-edge-bps``
and ``net_bps > 0``: one alert line, and one JSON line in ``--output`` with the price-arbitrage
monitor's fields (``symbol``, ``timestamp_ns``, ``buy_venue``/``sell_venue``,
``buy_recv_ns``/``sell_recv_ns``, ``buy_price``/``sell_price``, ``gross_bps``, ``net_bps``,
``edge_per_unit``, ``decided_ns``) plus the funding ones (``funding_rate``, ``funding_bps``,
``fees_bps``, ``next_funding_time_ns``, ``funding_in_s``, ``funding_hours``, ``mark_price``,
``index_price``, ``funding_apr``, ``carry_edge_bps``, ``spot_quote``, ``perp_quote``).

USD against USDT: spot and perpetual are joined on the base asset, their canonical symbols read
with ``USDT`` as ``USD`` (:data:`sabot.symbols.USDT_AS_USD`; records keep their own quotes).  The USDT-margined perpetual against Binance spot ``BTCUSDT`` is the
clean pair (both legs in USDT).  Against a USD book (Coinbase ``BTC-USD``) the edge also holds
the USDT/USD rate, which this monitor does not price: it says so once per symbol in the log,
and each record names both quote currencies.

    sabot funding --bootstrap localhost:19092 --spot binance --perp binance-usdm \\
        --output data/funding.jsonl

Exit codes: 0 after a clean stop (Ctrl+C, SIGTERM, ``--duration``); 2 for a usage mistake or a
broker that cannot be reached, in one line.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa

from sabot.apps._common import (BrokerUnreachableError, add_kafka_config_argument,
                                feed_until_stopped, kafka_config_from_args, wait_reachable)
from sabot.metrics import LatencyBuffer
from sabot.symbols import USDT_AS_USD, normalize_symbol
from sabot.timeunits import column_ns
from sabot.venues import get_venue, perp_venue_names, venue_names

log = logging.getLogger("funding")

__all__ = ["JOINED_SCHEMA", "INPUT_SCHEMA", "CarryJoin", "FundingMonitor", "carry_edges",
           "opportunities", "format_opportunity", "funding_topic", "parse_fees", "run",
           "add_arguments", "build_parser", "command", "main"]

DEFAULT_SPOT = "binance"
DEFAULT_PERP = "binance-usdm"
TOLERANCE_MS = 500.0
FUNDING_MAX_AGE_S = 10.0
DEFAULT_FUNDING_HOURS = 8.0
_TS = pa.timestamp("ns", tz="UTC")
_INT64_MIN = np.iinfo(np.int64).min

#: What the three topics are decoded into: the ticker columns and the funding columns, each
#: record filling its own (a ticker has no funding_rate, a funding record no bid).
INPUT_SCHEMA = pa.schema([
    pa.field("exchange", pa.string(), nullable=False),
    pa.field("symbol", pa.string(), nullable=False),
    pa.field("raw_symbol", pa.string(), nullable=False),
    pa.field("timestamp", _TS, nullable=False),
    pa.field("recv_timestamp", _TS, nullable=False),
    pa.field("bid", pa.float64()),
    pa.field("ask", pa.float64()),
    pa.field("mark_price", pa.float64()),
    pa.field("index_price", pa.float64()),
    pa.field("funding_rate", pa.float64()),
    pa.field("next_funding_time", _TS),
])

#: One evaluated row: the quotes and the funding record it was decided on.
JOINED_SCHEMA = pa.schema([
    pa.field("symbol", pa.string()),
    pa.field("timestamp_ns", pa.int64()),
    pa.field("spot_bid", pa.float64()),
    pa.field("spot_ask", pa.float64()),
    pa.field("spot_recv_ns", pa.int64()),
    pa.field("perp_bid", pa.float64()),
    pa.field("perp_ask", pa.float64()),
    pa.field("perp_recv_ns", pa.int64()),
    pa.field("funding_rate", pa.float64()),
    pa.field("mark_price", pa.float64()),
    pa.field("index_price", pa.float64()),
    pa.field("next_funding_time_ns", pa.int64()),
    pa.field("funding_hours", pa.float64()),
    pa.field("spot_raw", pa.string()),
    pa.field("perp_raw", pa.string()),
])


def funding_topic(perp_venue: str) -> str:
    """The funding topic of a perpetual venue (``binance-usdm`` -> ``binance-usdm-funding``)."""
    from sabot.venues.binance_usdm import funding_topic_for

    return funding_topic_for(get_venue(perp_venue).ticker_topic)


def parse_fees(text: Optional[str], spot: str, perp: str) -> Dict[str, float]:
    """``"spot=bps,perp=bps"`` or one number for both; default (None): the venues' taker fees.

    ``ValueError`` naming the option and value for anything else."""
    if text is None:
        return {spot: float(get_venue(spot).default_fee_bps), perp: float(get_venue(perp).default_fee_bps)}
    fees: Dict[str, float] = {}
    try:
        if "=" not in text:
            fees = {spot: float(text), perp: float(text)}
        else:
            for part in text.split(","):
                name, _, value = part.partition("=")
                fees[name.strip()] = float(value)
    except ValueError:
        raise ValueError(f"--fees: cannot read {text!r}; expected e.g. '{spot}=10,{perp}=5'") from None
    missing = [v for v in (spot, perp) if v not in fees]
    if missing:
        raise ValueError(f"--fees: no fee for {', '.join(missing)} (got {text!r})")
    bad = {k: v for k, v in fees.items() if not (0.0 <= v < math.inf)}
    if bad:
        raise ValueError(f"--fees: fees must be finite and >= 0 bps, got {bad}")
    return {spot: fees[spot], perp: fees[perp]}


def _usable(x: Optional[float]) -> bool:
    return x is not None and 0.0 < x < math.inf


@dataclass
class _Quote:
    bid: float
    ask: float
    ts: int
    recv: int
    raw: str


@dataclass
class _Funding:
    rate: float
    mark: float
    index: float
    next_ns: int
    ts: int
    recv: int


class CarryJoin:
    """The latest spot quote, perp quote and funding record per symbol; each arriving quote
    becomes one joined row (:data:`JOINED_SCHEMA`) when all three are fresh.

    ``records`` counts rows read by kind (``spot``, ``perp``, ``funding``, ``other``);
    ``skipped`` counts the quotes not evaluated by reason: ``incomplete`` (not all three known
    yet), ``stale_quote``, ``stale_funding``, ``funding_passed`` (its ``next_funding_time`` is
    not ahead of the quote), ``unusable_quote`` (bid/ask missing or not finite > 0),
    ``unusable_funding``.  ``rollovers`` counts funding times seen to roll on.
    """

    def __init__(self, spot_venue: str, perp_venue: str, tolerance_ms: float = TOLERANCE_MS,
                 funding_max_age_s: float = FUNDING_MAX_AGE_S,
                 funding_hours: float = DEFAULT_FUNDING_HOURS) -> None:
        self.spot_venue = spot_venue
        self.perp_venue = perp_venue
        self.tolerance_ns = int(tolerance_ms * 1e6)
        self.funding_max_age_ns = int(funding_max_age_s * 1e9)
        self.default_hours = float(funding_hours)
        self.spot: Dict[str, _Quote] = {}
        self.perp: Dict[str, _Quote] = {}
        self.funding: Dict[str, _Funding] = {}
        self.hours: Dict[str, float] = {}
        self.records = {"spot": 0, "perp": 0, "funding": 0, "other": 0}
        self.skipped: Dict[str, int] = {}
        self.rollovers = 0
        self._keys: Dict[str, str] = {}

    def key(self, symbol: str) -> str:
        """The join key: the canonical symbol with ``USDT`` read as ``USD``."""
        k = self._keys.get(symbol)
        if k is None:
            try:
                k = normalize_symbol(symbol, quote_aliases=USDT_AS_USD)
            except ValueError:
                k = symbol
            if len(self._keys) < 4096:
                self._keys[symbol] = k
        return k

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def on_batch(self, batch: pa.RecordBatch) -> Optional[pa.RecordBatch]:
        """Read one batch of input rows (:data:`INPUT_SCHEMA`) in order; the joined rows it
        produced (None when none)."""
        if batch.num_rows == 0:
            return None
        col = batch.column
        names = batch.schema.names
        exchange = col(names.index("exchange")).to_pylist()
        symbol = col(names.index("symbol")).to_pylist()
        raw = col(names.index("raw_symbol")).to_pylist()
        ts = column_ns(col(names.index("timestamp")), "timestamp")
        recv = column_ns(col(names.index("recv_timestamp")), "recv_timestamp")

        def floats(name: str) -> List[Optional[float]]:
            i = batch.schema.get_field_index(name)
            return col(i).to_pylist() if i >= 0 else [None] * batch.num_rows

        bid, ask = floats("bid"), floats("ask")
        rate, mark, index = floats("funding_rate"), floats("mark_price"), floats("index_price")
        i_nft = batch.schema.get_field_index("next_funding_time")
        nft = (column_ns(col(i_nft), "next_funding_time") if i_nft >= 0
               else np.full(batch.num_rows, _INT64_MIN, dtype=np.int64))
        rows: List[tuple] = []
        for i in range(batch.num_rows):
            ex = exchange[i]
            k = self.key(symbol[i])
            t, r = int(ts[i]), int(recv[i])
            if ex == self.perp_venue and rate[i] is not None:
                self.records["funding"] += 1
                n = int(nft[i])
                if not (math.isfinite(rate[i]) and _usable(mark[i]) and n != _INT64_MIN):
                    self._skip("unusable_funding")
                    continue
                prev = self.funding.get(k)
                if prev is not None and n > prev.next_ns:
                    self.rollovers += 1
                    step = n - prev.next_ns
                    if t - prev.ts < step:  # seen within one interval: the step is one interval
                        self.hours[k] = step / 3.6e12
                self.funding[k] = _Funding(rate[i], mark[i], index[i] if index[i] is not None
                                           else math.nan, n, t, r)
                continue
            if ex == self.perp_venue:
                side, book = "perp", self.perp
            elif ex == self.spot_venue:
                side, book = "spot", self.spot
            else:
                self.records["other"] += 1
                continue
            self.records[side] += 1
            if not (_usable(bid[i]) and _usable(ask[i])):
                self._skip("unusable_quote")
                continue
            book[k] = _Quote(bid[i], ask[i], t, r, raw[i])
            row = self._decide(k, t)
            if row is not None:
                rows.append(row)
        if not rows:
            return None
        return pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in
                                           zip(zip(*rows), JOINED_SCHEMA)], schema=JOINED_SCHEMA)

    def _decide(self, k: str, t: int) -> Optional[tuple]:
        s, p, f = self.spot.get(k), self.perp.get(k), self.funding.get(k)
        if s is None or p is None or f is None:
            self._skip("incomplete")
            return None
        if abs(s.ts - p.ts) > self.tolerance_ns:
            self._skip("stale_quote")
            return None
        if t - f.ts > self.funding_max_age_ns:
            self._skip("stale_funding")
            return None
        if f.next_ns <= t:
            self._skip("funding_passed")
            return None
        return (k, t, s.bid, s.ask, s.recv, p.bid, p.ask, p.recv, f.rate, f.mark, f.index,
                f.next_ns, self.hours.get(k, self.default_hours), s.raw, p.raw)


def carry_edges(joined: pa.RecordBatch, spot_fee_bps: float, perp_fee_bps: float) -> Dict[str, np.ndarray]:
    """The carry trade's figures per joined row (see the module docstring for the formulas):
    ``gross_bps``, ``funding_bps``, ``fees_bps``, ``net_bps``, ``edge_per_unit``,
    ``funding_in_s``, and the annualised ``funding_apr`` and ``carry_edge_bps`` from the
    :mod:`sabot.fintech.fx_crypto` kernels (per distinct funding interval)."""
    from sabot.fintech import cash_and_carry_edge, funding_apr

    def f64(name: str) -> np.ndarray:
        return joined.column(joined.schema.get_field_index(name)).to_numpy(zero_copy_only=False).astype(float)

    spot_ask, perp_bid, rate, hours = f64("spot_ask"), f64("perp_bid"), f64("funding_rate"), f64("funding_hours")
    fees = 2.0 * (float(spot_fee_bps) + float(perp_fee_bps))
    out: Dict[str, np.ndarray] = {}
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out["gross_bps"] = (perp_bid - spot_ask) / spot_ask * 1e4
        out["funding_bps"] = rate * 1e4
        out["fees_bps"] = np.full(joined.num_rows, fees)
        out["net_bps"] = out["gross_bps"] + out["funding_bps"] - fees
        out["edge_per_unit"] = spot_ask * out["net_bps"] / 1e4
    nft = joined.column(joined.schema.get_field_index("next_funding_time_ns")).to_numpy(zero_copy_only=False)
    tsi = joined.column(joined.schema.get_field_index("timestamp_ns")).to_numpy(zero_copy_only=False)
    out["funding_in_s"] = (nft - tsi) / 1e9
    apr = np.full(joined.num_rows, np.nan)
    carry = np.full(joined.num_rows, np.nan)
    for h in np.unique(hours[np.isfinite(hours) & (hours > 0)]):
        mask = hours == h
        part = joined.filter(pa.array(mask))
        part = cash_and_carry_edge(part, fees, T_days=h / 24.0, funding_freq_hours=h,
                                   spot_column="spot_ask", perp_column="perp_bid",
                                   funding_rate_column="funding_rate")
        part = funding_apr(part, h, funding_rate_column="funding_rate")
        carry[mask] = part.column(part.schema.get_field_index("carry_edge_bps")).to_numpy(zero_copy_only=False)
        apr[mask] = part.column(part.schema.get_field_index("funding_apr")).to_numpy(zero_copy_only=False)
    out["funding_apr"] = apr
    out["carry_edge_bps"] = carry
    return out


def _quote_currency(venue: str, raw: str) -> str:
    try:
        return get_venue(venue).to_canonical_symbol(raw, {}).partition("/")[2]
    except ValueError:
        return "?"


def opportunities(joined: pa.RecordBatch, spot_venue: str, perp_venue: str,
                  fees: Mapping[str, float], min_edge_bps: float = 0.0,
                  every_row: bool = False) -> List[dict]:
    """The joined rows that are opportunities (all rows with ``every_row``), as records with
    ``is_opportunity``; a row whose figures are not finite numbers is never one."""
    e = carry_edges(joined, fees[spot_venue], fees[perp_venue])
    finite = np.isfinite(e["net_bps"]) & np.isfinite(e["gross_bps"]) & np.isfinite(e["edge_per_unit"])
    is_opp = finite & (e["net_bps"] > 0) & (e["net_bps"] >= min_edge_bps)
    idx = np.arange(joined.num_rows) if every_row else np.flatnonzero(is_opp)
    if not len(idx):
        return []
    rows = joined.to_pydict()
    out = []

    def num(x: float) -> Optional[float]:
        return float(x) if math.isfinite(x) else None

    for i in idx:
        out.append({
            "symbol": rows["symbol"][i], "timestamp_ns": rows["timestamp_ns"][i],
            "buy_venue": spot_venue, "sell_venue": perp_venue,
            "buy_recv_ns": rows["spot_recv_ns"][i], "sell_recv_ns": rows["perp_recv_ns"][i],
            "buy_price": rows["spot_ask"][i], "sell_price": rows["perp_bid"][i],
            "gross_bps": num(e["gross_bps"][i]), "net_bps": num(e["net_bps"][i]),
            "edge_per_unit": num(e["edge_per_unit"][i]),
            "funding_rate": rows["funding_rate"][i], "funding_bps": num(e["funding_bps"][i]),
            "fees_bps": float(e["fees_bps"][i]),
            "next_funding_time_ns": rows["next_funding_time_ns"][i],
            "funding_in_s": float(e["funding_in_s"][i]), "funding_hours": rows["funding_hours"][i],
            "mark_price": rows["mark_price"][i], "index_price": num(rows["index_price"][i]),
            "funding_apr": num(e["funding_apr"][i]), "carry_edge_bps": num(e["carry_edge_bps"][i]),
            "spot_quote": _quote_currency(spot_venue, rows["spot_raw"][i]),
            "perp_quote": _quote_currency(perp_venue, rows["perp_raw"][i]),
            "is_opportunity": bool(is_opp[i]),
        })
    return out


def _clock(ns: int) -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime(ns / 1e9))


def format_opportunity(o: Mapping[str, Any]) -> str:
    """The opportunity as one log line (in the price-arbitrage monitor's style)."""
    return (f"🔥 FUNDING CARRY: {o['symbol']}  buy {o['buy_venue']} @ {o['buy_price']:,.2f}  "
            f"short {o['sell_venue']} @ {o['sell_price']:,.2f}  basis {o['gross_bps']:.2f} bps "
            f"+ funding {o['funding_bps']:.2f} bps at {_clock(o['next_funding_time_ns'])} "
            f"(net {o['net_bps']:.2f} bps after fees)  edge {o['edge_per_unit']:,.4f} per unit")


def _percentile(values: Sequence[float], q: float) -> Optional[float]:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


class FundingMonitor:
    """Evaluates joined rows, logs and records opportunities, keeps the summary."""

    def __init__(self, spot_venue: str, perp_venue: str, fees: Mapping[str, float],
                 min_edge_bps: float = 0.0, output: Optional[Path] = None,
                 summary_path: Optional[Path] = None, summary_every_s: float = 10.0,
                 every_row: bool = False, join: Optional[CarryJoin] = None) -> None:
        self.spot_venue = spot_venue
        self.perp_venue = perp_venue
        self.fees = dict(fees)
        self.min_edge_bps = float(min_edge_bps)
        self.output = open(output, "w", encoding="utf-8") if output else None
        self.summary_path = summary_path
        self.summary_every_s = summary_every_s
        self.every_row = every_row
        self.join = join if join is not None else CarryJoin(spot_venue, perp_venue)
        self.evaluations = 0
        self.n_opportunities = 0
        self.best_net_bps: Optional[float] = None
        #: tick-to-signal latencies (ms); the periodic summary reads their histogram (numpy's
        #: percentile over a growing list held the GIL for longer and longer), the final one is exact
        self.latencies = LatencyBuffer()
        self.started = time.monotonic()
        self._last_summary = self.started
        self._first_decision_ns: Optional[int] = None
        self._warned_quotes: set = set()
        self._lock = threading.Lock()
        # The summary JSON is rewritten twice a second by a thread, also while nothing
        # arrives, so that whoever watches it (the demo) sees the last records read.
        self._stop_writer = threading.Event()
        self._writer: Optional[threading.Thread] = None
        if summary_path is not None:
            self._writer = threading.Thread(target=self._write_periodically,
                                            name="funding-summary-writer", daemon=True)
            self._writer.start()

    def _write_periodically(self, every_s: float = 0.5) -> None:
        while not self._stop_writer.wait(every_s):
            try:
                self.write_summary()
            except Exception as exc:  # a full disk must not stop the monitor; say so
                log.warning("could not write the summary %s: %s", self.summary_path, exc)

    def on_batch(self, batch: pa.RecordBatch) -> None:
        """One batch of input rows: join, evaluate, alert and record."""
        with self._lock:
            joined = self.join.on_batch(batch)
            if joined is not None:
                self._evaluate(joined)
        now = time.monotonic()
        if now - self._last_summary >= self.summary_every_s:
            self._last_summary = now
            with self._lock:
                line = self.summary_line("📊 funding summary")
            print(line, flush=True)

    def _evaluate(self, joined: pa.RecordBatch) -> None:
        records = opportunities(joined, self.spot_venue, self.perp_venue, self.fees,
                                self.min_edge_bps, every_row=True)
        decided_ns = time.time_ns()
        if self._first_decision_ns is None:
            self._first_decision_ns = decided_ns
        self.evaluations += len(records)
        written = False
        lat: List[float] = []
        for o in records:
            newest = max(o["buy_recv_ns"], o["sell_recv_ns"])
            if newest >= self._first_decision_ns:
                lat.append((decided_ns - newest) / 1e6)
            if o["net_bps"] is not None and (self.best_net_bps is None or o["net_bps"] > self.best_net_bps):
                self.best_net_bps = o["net_bps"]
            pair = (o["symbol"], o["spot_quote"], o["perp_quote"])
            if o["spot_quote"] != o["perp_quote"] and pair not in self._warned_quotes:
                self._warned_quotes.add(pair)
                log.warning("%s: %s quotes it in %s, %s in %s; the edge also holds the %s/%s rate, "
                            "which is not priced here", o["symbol"], self.spot_venue, o["spot_quote"],
                            self.perp_venue, o["perp_quote"], o["perp_quote"], o["spot_quote"])
            if o["is_opportunity"]:
                self.n_opportunities += 1
                print(format_opportunity(o), flush=True)
            if self.output and (o["is_opportunity"] or self.every_row):
                self.output.write(json.dumps({**o, "decided_ns": decided_ns}) + "\n")
                written = True
        self.latencies.extend(lat)
        if written and self.output:
            self.output.flush()

    @property
    def latencies_ms(self) -> List[float]:
        """Every tick-to-signal latency so far (ms)."""
        return self.latencies.values().tolist()

    def summary(self, with_latencies: bool = True, exact: Optional[bool] = None) -> dict:
        """Counts, funding and latency percentiles: exact (numpy's) when ``exact`` (default:
        ``with_latencies``, the final summary), else from the latency histogram (within 1.2 %,
        cheap from the summary thread)."""
        j = self.join
        values = self.latencies.values()
        if with_latencies if exact is None else exact:
            p50, p99 = _percentile(values, 50), _percentile(values, 99)
        else:
            p50, p99 = self.latencies.approx_percentiles([50, 99])
        funding = {k: {"funding_rate": f.rate, "next_funding_time_ns": f.next_ns,
                       "funding_hours": j.hours.get(k, j.default_hours)}
                   for k, f in sorted(j.funding.items())}
        return {
            "spot_venue": self.spot_venue, "perp_venue": self.perp_venue,
            "records": dict(j.records), "evaluations": self.evaluations,
            "opportunities": self.n_opportunities, "skipped": dict(j.skipped),
            "rollovers": j.rollovers, "funding": funding, "best_net_bps": self.best_net_bps,
            "latency_ms_p50": p50,
            "latency_ms_p99": p99,
            **({"latencies_ms": values.tolist()} if with_latencies else {}),
            "fees_bps": self.fees, "min_edge_bps": self.min_edge_bps,
            "elapsed_s": time.monotonic() - self.started,
        }

    def summary_line(self, head: str, exact: bool = False) -> str:
        s = self.summary(with_latencies=False, exact=exact)
        p50 = "n/a" if s["latency_ms_p50"] is None else f"{s['latency_ms_p50']:.1f} ms"
        p99 = "n/a" if s["latency_ms_p99"] is None else f"{s['latency_ms_p99']:.1f} ms"
        best = "n/a" if s["best_net_bps"] is None else f"{s['best_net_bps']:.2f} bps"
        rates = ", ".join(f"{k} {v['funding_rate'] * 100:.4f}% next {_clock(v['next_funding_time_ns'])}"
                          for k, v in s["funding"].items()) or "none yet"
        recs = ", ".join(f"{k} {n}" for k, n in s["records"].items())
        skipped = sum(s["skipped"].values())
        return (f"{head}: {s['opportunities']} opportunities in {s['evaluations']} evaluations; "
                f"best net {best}; funding {rates}; tick-to-signal p50 {p50}, p99 {p99}; "
                f"records read: {recs}" + (f"; not evaluated: {skipped}" if skipped else ""))

    def write_summary(self, final: bool = False) -> None:
        """The summary JSON (every latency only in the final one)."""
        if self.summary_path is None:
            return
        with self._lock:
            text = json.dumps(self.summary(with_latencies=final))
            tmp = self.summary_path.with_suffix(self.summary_path.suffix + f".{threading.get_ident()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, self.summary_path)

    def close(self) -> None:
        self._stop_writer.set()
        if self._writer is not None:
            self._writer.join()
        if self.output:
            self.output.close()
            self.output = None
        self.write_summary(final=True)


def input_stream(bootstrap: str, spot_venue: str, perp_venue: str, group_id: str, *,
                 from_beginning: bool = False, fast_groups: bool = False,
                 kafka_config: Optional[Mapping[str, str]] = None,
                 topics: Optional[Sequence[Optional[str]]] = None) -> Any:
    """The three topics through one consumer, decoded into :data:`INPUT_SCHEMA`, in arrival order.

    ``topics``: (spot tickers, perp tickers, funding) where one is not the venues' own (None:
    the venue's)."""
    from sabot.api import Stream
    from sabot.kafka import LIVE_FETCH_WAIT_MAX_MS, fast_consumer_config, live_consumer_config

    extra = {**(fast_consumer_config() if fast_groups else {}),
             **live_consumer_config(**{"fetch.wait.max.ms": LIVE_FETCH_WAIT_MAX_MS})}
    own = [get_venue(spot_venue).ticker_topic, get_venue(perp_venue).ticker_topic,
           funding_topic(perp_venue)]
    chosen = [t or d for t, d in zip(topics or (None, None, None), own)]
    return Stream.from_kafka(bootstrap, chosen, group_id, schema=INPUT_SCHEMA,
                             from_beginning=from_beginning, max_latency_ms=50, commit="async",
                             kafka_config=kafka_config, **extra)


def run(args: argparse.Namespace) -> int:
    """Run until Ctrl+C, SIGTERM or ``--duration``; 0 after a clean stop.  Raises ``ValueError``
    (bad options) and :class:`BrokerUnreachableError`, reported by :func:`command`."""
    if args.spot not in venue_names():
        raise ValueError(f"--spot {args.spot!r} is not a spot venue; known: {', '.join(venue_names())}")
    if args.perp not in perp_venue_names():
        raise ValueError(f"--perp {args.perp!r} is not a perpetual venue; known: "
                         f"{', '.join(perp_venue_names())}")
    for name in ("tolerance_ms", "funding_max_age", "funding_hours"):
        value = getattr(args, name)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"--{name.replace('_', '-')} {value!r} must be a positive number")
    fees = parse_fees(args.fees, args.spot, args.perp)
    kafka_config = kafka_config_from_args(args)
    args.bootstrap = (args.bootstrap or kafka_config.get("bootstrap.servers")
                      or os.environ.get("SABOT_KAFKA_BOOTSTRAP") or "localhost:19092")
    wait_reachable(args.bootstrap, kafka_config, timeout_s=args.connect_timeout)
    join = CarryJoin(args.spot, args.perp, args.tolerance_ms, args.funding_max_age, args.funding_hours)
    monitor = FundingMonitor(args.spot, args.perp, fees, args.min_edge_bps, args.output,
                             args.summary_json, args.summary_every, every_row=args.all_rows, join=join)
    group = args.group_id or f"sabot-funding-{uuid.uuid4().hex[:8]}"
    stream = input_stream(args.bootstrap, args.spot, args.perp, group,
                          from_beginning=args.from_beginning, fast_groups=args.fast_groups,
                          kafka_config=kafka_config,
                          topics=(args.spot_topic, args.perp_topic, args.funding_topic))

    print(f"Funding monitor on {args.bootstrap}: buy {args.spot} spot, short {args.perp}; fees (bps) "
          + ", ".join(f"{v}={f:g}" for v, f in fees.items())
          + f" (paid entering and unwinding), min edge {args.min_edge_bps:g} bps, "
          f"tolerance {args.tolerance_ms:g} ms", flush=True)
    try:
        feed_until_stopped(stream, monitor.on_batch, args.duration)
    finally:
        monitor.close()
    print(monitor.summary_line("📊 funding final summary", exact=True), flush=True)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The funding monitor's options (``sabot funding``)."""
    p.add_argument("--bootstrap", default=None,
                   help="Kafka bootstrap servers (else bootstrap.servers from --kafka-config, else "
                        "env SABOT_KAFKA_BOOTSTRAP, else localhost:19092)")
    add_kafka_config_argument(p)
    p.add_argument("--connect-timeout", type=float, default=8.0,
                   help="give up when no broker answers within this many seconds (default %(default)s)")
    p.add_argument("--spot", default=DEFAULT_SPOT,
                   help="the spot venue bought (default %(default)s: USDT quotes like the perpetual's)")
    p.add_argument("--perp", default=DEFAULT_PERP, help="the perpetual venue shorted (default %(default)s)")
    p.add_argument("--spot-topic", default=None, help="the spot tickers' topic (default: the venue's)")
    p.add_argument("--perp-topic", default=None, help="the perp tickers' topic (default: the venue's)")
    p.add_argument("--funding-topic", default=None,
                   help="the funding records' topic (default: the perp venue's, e.g. binance-usdm-funding)")
    p.add_argument("--fees", default=None,
                   help="taker fees in bps, 'SPOT=bps,PERP=bps' or one number for both (default: the "
                        "venues' own); each is paid entering and unwinding")
    p.add_argument("--min-edge-bps", type=float, default=0.0, help="smallest net edge to report")
    p.add_argument("--tolerance-ms", type=float, default=TOLERANCE_MS,
                   help="largest event-time gap between the spot and perp quotes (default %(default)g)")
    p.add_argument("--funding-max-age", type=float, default=FUNDING_MAX_AGE_S,
                   help="seconds a funding record stays usable (default %(default)g)")
    p.add_argument("--funding-hours", type=float, default=DEFAULT_FUNDING_HOURS,
                   help="funding interval until one is seen in the records (default %(default)g)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--output", type=Path, default=None, help="JSON lines record of opportunities")
    p.add_argument("--all-rows", action="store_true",
                   help="record every evaluated row in --output, not only opportunities")
    p.add_argument("--summary-json", type=Path, default=None, help="write a JSON summary here")
    p.add_argument("--summary-every", type=float, default=10.0, help="seconds between summary lines")
    p.add_argument("--group-id", default=None, help="consumer group (default: a fresh one)")
    p.add_argument("--from-beginning", action="store_true", help="read the topics from their start")
    p.add_argument("--fast-groups", action="store_true",
                   help="short consumer-group timeouts (embedded broker only; real Kafka rejects them)")


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    from sabot.clitools import ArgumentParser

    p = ArgumentParser(prog=prog, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def command(args: argparse.Namespace) -> int:
    """Run with parsed arguments; a usage mistake or an unreachable broker is one line on
    stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ValueError, BrokerUnreachableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: Optional[Iterable[str]] = None, prog: Optional[str] = None) -> int:
    return command(build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
