"""Cross-exchange arbitrage monitor: every registered venue's tickers from Kafka (``sabot monitor``).

The venues, their topics and default taker fees come from the venue registry
(:mod:`sabot.venues`).

Live pipeline (default, ``--align arrival``): decide on every quote as it arrives::

    from_kafka(<venue>-ticker for every venue)   one consumer, no re-ordering
    → normalize_symbols                          (USDT stays USDT: BTC/USDT)
    → LiveQuoteConverter: USDT quotes priced in USD through the latest Kraken USDT/USD quote
      (bid · rate bid, ask · rate ask; :mod:`sabot.quote_conversion`), or skipped and counted
      when no rate of at most --rate-max-age-ms is known
    → ArrivalAsofJoin: the arriving quote with the latest quote of every other venue for its
      symbol (ignored when older than 500 ms relative to the arriving one)
    → best buy-at-ask / sell-at-bid pair net of both venues' taker fees → log + record

Direct (``--direct --url VENUE=ws://...,...``): no Kafka consumer; every venue's collector
connection loop runs in this process (the collectors' classes, validation and exit codes) and
each batch of records goes straight into the on-arrival decision (:class:`ArrivalDecision`,
the steps above after the Kafka source) while every record is still produced to its venue's
topic (and, with ``--parquet-dir``, written to ``<dir>/<venue>.parquet``)::

    collector loops → DecisionSink → ArrivalDecision    and    → KafkaSink (→ ParquetSink)

Replay / research (``--align event-time``): one ``Stream`` per venue in event-time order, then
the deterministic streaming joins ``first ⋈asof second ⋈asof ...`` in registry order (by
symbol, backward, 500 ms tolerance); a row of the first venue is decided once the other
venues' watermarks pass it.  Each venue's USDT quotes are priced with the rate venue's latest
USDT/USD quote at or before them (an event-time ASOF join on the quote currency).

For every joined row and every ordered pair of venues present (buy at ``b``, sell at ``s``)::

    gross_bps     = (bid_s − ask_b) / ask_b · 1e4
    net_bps       = gross_bps − fee_b − fee_s
    edge_per_unit = ask_b · net_bps / 1e4          (quote currency per unit of base)

A pair qualifies when ``net_bps >= --min-edge-bps`` and ``net_bps > 0`` (the pair with the
largest ``net_bps`` is the row's signal, :func:`opportunities`).

Each (symbol, buy venue, sell venue) opportunity is followed from OPEN to CLOSE
(:class:`OpportunityTracker`): it opens on the first qualifying evaluation, is updated (best and
mean net edge, evaluations) while the symbol's evaluations still qualify, and closes on the
first that does not - ``close_reason`` "edge" (below the threshold), "stale" (a quote older than
the tolerance, missing or unusable) or "end" (the run ended).  It is reported twice: an alert
line and an ``event: "open"`` JSON line when it opens, and an alert line and an
``event: "close"`` JSON line (``duration_s`` from the first qualifying quote to the quote that
closed it, in event time) when it closes.  The summary counts opened opportunities.

A venue that sends a bid or ask that is missing, NaN, infinite, zero or negative has that quote
skipped and counted (``skipped_quotes`` in the summary, a rate-limited warning in the log): it
never becomes "the latest quote" of its venue, and no edge computed from such a price - nor any
edge that is not a finite number - is ever reported.  Tick-to-signal latency is the wall-clock
time of the decision (after the batch's signals are computed) minus the newest collector
``recv_timestamp`` among the quotes it used;
it is measured on ticks received after the monitor's first decision (a backlog that waited in
Kafka while the consumer group was being joined is not tick-to-signal latency).

    sabot monitor --bootstrap localhost:19092 --fees 6 --min-edge-bps 0 \\
        --output data/opportunities.jsonl
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot.api import Stream
from sabot.api.arrival import ArrivalAsofJoin
from sabot.apps._common import (BrokerUnreachableError, add_kafka_config_argument,
                                feed_until_stopped, kafka_config_from_args, wait_reachable)
from sabot.fintech import ArbitrageOpportunities, midprice, normalize_symbols
from sabot.kafka import LIVE_FETCH_WAIT_MAX_MS, fast_consumer_config, live_consumer_config
from sabot.metrics import LatencyBuffer
from sabot.quote_conversion import (DEFAULT_MAX_AGE_MS, DEFAULT_RATE_VENUE, EventTimePricing,
                                    LiveQuoteConverter, RateSource, parse_rate_source)
from sabot.schema import TICKER_SCHEMA
from sabot.symbols import DEFAULT_QUOTE_ALIASES, USDT_AS_USD
from sabot.venues import default_fees, get_venue, venue_names

log = logging.getLogger("arbitrage")

#: The registered venues when this module was imported (the monitor itself asks the registry
#: when it starts, so a venue registered later takes part too).
VENUES: Tuple[str, ...] = venue_names()


def fees_text(fees: Optional[Mapping[str, float]] = None) -> str:
    """``"name=bps,..."`` of ``fees`` (default: every venue's default taker fee)."""
    return ",".join(f"{v}={f:g}" for v, f in (fees or default_fees()).items())


DEFAULT_FEES = fees_text()
TOLERANCE_MS = 500
QUOTE_COLUMNS = ("timestamp", "recv_timestamp", "symbol", "exchange", "bid", "ask", "midprice",
                 "fx_bid", "fx_ask")
ALIGNMENTS = ("arrival", "event-time")


def parse_fees(text: str, venues: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """``"name=bps,..."`` (one entry per venue) → dict; one number applies to every venue.

    ``venues`` defaults to every registered venue."""
    venues = tuple(venues) if venues is not None else venue_names()
    text = text.strip()
    try:
        if "=" not in text:
            return {v: float(text) for v in venues}
        fees = {}
        for part in text.split(","):
            name, _, value = part.partition("=")
            fees[name.strip()] = float(value)
    except ValueError:
        raise ValueError(f"--fees: cannot read {text!r}; expected e.g. {fees_text()!r}") from None
    missing = [v for v in venues if v not in fees]
    if missing:
        raise ValueError(f"--fees: no fee for {', '.join(missing)} (got {text!r})")
    bad = {k: v for k, v in fees.items() if not (0.0 <= v < float("inf"))}
    if bad:
        raise ValueError(f"--fees: fees must be finite and >= 0 bps, got {bad}")
    return fees


def _f64(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A float column as numpy with NaN for nulls (absent venue: column missing → all NaN)."""
    idx = batch.schema.get_field_index(name)
    if idx < 0:
        return np.full(batch.num_rows, np.nan)
    col = batch.column(idx)
    if col.type != pa.float64():
        col = col.cast(pa.float64())
    return col.to_numpy(zero_copy_only=False)  # nulls come out as NaN


def _ns(batch: pa.RecordBatch, name: str) -> np.ndarray:
    idx = batch.schema.get_field_index(name)
    if idx < 0:
        return np.full(batch.num_rows, np.iinfo(np.int64).min, dtype=np.int64)
    col = batch.column(idx)
    if pa.types.is_timestamp(col.type):
        if col.type.unit != "ns":
            col = col.cast(pa.timestamp("ns", tz=col.type.tz))
        col = col.view(pa.int64())
    elif col.type != pa.int64():
        col = col.cast(pa.int64())
    if col.null_count:
        col = col.fill_null(np.iinfo(np.int64).min)
    return col.to_numpy(zero_copy_only=False)


@functools.lru_cache(maxsize=8)
def _edge_kernel(fees: Tuple[Tuple[str, float], ...], min_edge_bps: float) -> ArbitrageOpportunities:
    """The arbitrage kernel of one fee schedule, built once (it keeps no state between rows)."""
    venues = [v for v, _ in fees]
    return ArbitrageOpportunities(None, dict(fees), min_edge_bps,
                                  ask_columns={v: f"{v}_ask" for v in venues},
                                  bid_columns={v: f"{v}_bid" for v in venues})


def usable_price(values: np.ndarray) -> np.ndarray:
    """Per value: a price a decision may use (finite and > 0; NaN, inf and <= 0 are not)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values > 0)


def _usable_quotes(joined: pa.RecordBatch, venues: Sequence[str]) -> Tuple[pa.RecordBatch, int]:
    """``joined`` with every ``<venue>_bid`` / ``<venue>_ask`` value that is not a usable
    price (inf, NaN, <= 0) replaced by null - the venue is then absent from that row - and the
    number of such values (nulls, a venue simply not quoted, are not counted)."""
    bad_total = 0
    for v in venues:
        for side in ("bid", "ask"):
            name = f"{v}_{side}"
            idx = joined.schema.get_field_index(name)
            values = _f64(joined, name)
            ok = usable_price(values)
            col = joined.column(idx)
            bad = int((~ok).sum()) - col.null_count
            if bad:
                bad_total += bad
                clean = pa.array(np.where(ok, values, np.nan), pa.float64(), mask=~ok)
                joined = joined.set_column(idx, pa.field(name, pa.float64()), clean)
    return joined, bad_total


def best_edges(joined: pa.RecordBatch, fees_bps: Mapping[str, float], min_edge_bps: float = 0.0,
               venues: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """The best buy-at-ask / sell-at-bid pair per row of a batch joined across ``venues``
    (default: every registered venue).

    ``sabot.fintech.ArbitrageOpportunities`` on ``<venue>_ask`` / ``<venue>_bid``; a venue
    whose bid or ask is null, NaN, infinite or <= 0 is absent from that row.  Returns numpy
    arrays: ``buy`` / ``sell`` (venue index, -1 where fewer than two venues are present),
    ``buy_price``, ``sell_price``, ``gross_bps``, ``net_bps``, ``edge_per_unit``,
    ``is_opportunity``; and two counts: ``bad_quotes`` (bid/ask values skipped as unusable)
    and ``nonfinite_edges`` (rows whose best edge overflowed to a non-finite number, e.g.
    from an absurd 1e308 bid; they get no pair and are never an opportunity).  Ties keep the
    first pair in venue order.
    """
    venues = tuple(venues) if venues is not None else venue_names()
    present = set(joined.schema.names)
    for column in [f"{v}_{side}" for v in venues for side in ("ask", "bid")]:
        if column not in present:  # a venue not joined yet: absent from every row
            joined = joined.append_column(column, pa.nulls(joined.num_rows, pa.float64()))
    joined, bad_quotes = _usable_quotes(joined, venues)
    out = _edge_kernel(tuple((v, float(fees_bps[v])) for v in venues), float(min_edge_bps))(joined)

    def venue_index(name: str) -> np.ndarray:
        indices = out[name].indices      # null (no pair) as NaN in numpy: -1
        if not indices.null_count:
            return indices.to_numpy(zero_copy_only=False).astype(np.int64)
        return np.nan_to_num(indices.to_numpy(zero_copy_only=False), nan=-1).astype(np.int64)

    result = {name: _f64(out, name) for name in ("buy_price", "sell_price", "gross_bps", "net_bps")}
    result["buy"] = venue_index("buy_venue")
    result["sell"] = venue_index("sell_venue")
    with np.errstate(over="ignore", invalid="ignore"):
        result["edge_per_unit"] = result["buy_price"] * result["net_bps"] / 1e4
    flag = out["is_opportunity"]
    result["is_opportunity"] = np.array((flag.fill_null(False) if flag.null_count else flag)
                                        .to_numpy(zero_copy_only=False), dtype=bool)
    # a pair was chosen but its figures are not finite numbers: no decision on this row
    overflow = (result["buy"] >= 0) & ~(np.isfinite(result["net_bps"])
                                        & np.isfinite(result["gross_bps"])
                                        & np.isfinite(result["edge_per_unit"]))
    if overflow.any():
        for name in ("buy_price", "sell_price", "gross_bps", "net_bps", "edge_per_unit"):
            result[name] = np.where(overflow, np.nan, result[name])
        result["buy"] = np.where(overflow, -1, result["buy"])
        result["sell"] = np.where(overflow, -1, result["sell"])
        result["is_opportunity"] = result["is_opportunity"] & ~overflow
    result["bad_quotes"] = bad_quotes
    result["nonfinite_edges"] = int(overflow.sum())
    return result


def opportunities(joined: pa.RecordBatch, fees_bps: Mapping[str, float], min_edge_bps: float = 0.0,
                  venues: Optional[Sequence[str]] = None, skipped: Optional[Dict[str, int]] = None
                  ) -> List[dict]:
    """The rows of ``joined`` that are opportunities, as dicts (the monitor's core decision).

    Unusable prices are skipped (see :func:`best_edges`); with ``skipped`` given, their counts
    are added to ``skipped["bad_quotes"]`` and ``skipped["nonfinite_edges"]``."""
    venues = tuple(venues) if venues is not None else venue_names()
    e = best_edges(joined, fees_bps, min_edge_bps, venues)
    if skipped is not None:
        for key in ("bad_quotes", "nonfinite_edges"):
            skipped[key] = skipped.get(key, 0) + e[key]
    idx = np.flatnonzero(e["is_opportunity"])
    if not len(idx):
        return []
    symbols = joined.column(joined.schema.get_field_index("symbol")).to_pylist()
    ts = _ns(joined, "timestamp")
    recv = {v: _ns(joined, f"{v}_recv_timestamp") for v in venues
            if joined.schema.get_field_index(f"{v}_recv_timestamp") >= 0}
    out = []
    for i in idx:
        buy, sell = venues[e["buy"][i]], venues[e["sell"][i]]
        out.append({
            "symbol": symbols[i], "timestamp_ns": int(ts[i]),
            "buy_venue": buy, "sell_venue": sell,
            # when the collectors received the two quotes decided on (which quotes they were)
            "buy_recv_ns": int(recv[buy][i]) if buy in recv else None,
            "sell_recv_ns": int(recv[sell][i]) if sell in recv else None,
            "buy_price": float(e["buy_price"][i]), "sell_price": float(e["sell_price"][i]),
            "gross_bps": float(e["gross_bps"][i]), "net_bps": float(e["net_bps"][i]),
            "edge_per_unit": float(e["edge_per_unit"][i]),
        })
    return out


def newest_recv_ns(joined: pa.RecordBatch, venues: Optional[Sequence[str]] = None) -> np.ndarray:
    """Per row, the newest collector receive time among the venues' quotes used (ns)."""
    venues = tuple(venues) if venues is not None else venue_names()
    cols = [_ns(joined, f"{v}_recv_timestamp") for v in venues]
    return np.max(np.vstack(cols), axis=0)


def format_opportunity(o: Mapping) -> str:
    """The opportunity as one log line (the demo shows these lines): a record of
    :func:`opportunities` or an ``event: "open"`` record as the quotes it was found on, an
    ``event: "close"`` record as how long it stood, why it closed and its best and mean edge."""
    if o.get("event") == "close":
        return (f"🔥 ARBITRAGE CLOSED: {o['symbol']}  buy {o['buy_venue']}  sell {o['sell_venue']}  "
                f"after {o['duration_s']:.3f} s ({CLOSE_TEXT.get(o['close_reason'], o['close_reason'])})"
                f"  net best {o['best_net_bps']:.2f} bps, mean {o['mean_net_bps']:.2f} bps over "
                f"{o['evaluations']} evaluations  [{o['id']}]")
    return (f"🔥 ARBITRAGE: {o['symbol']}  buy {o['buy_venue']} @ {o['buy_price']:,.2f}  "
            f"sell {o['sell_venue']} @ {o['sell_price']:,.2f}  spread {o['gross_bps']:.2f} bps "
            f"(net {o['net_bps']:.2f} bps after fees)  edge {o['edge_per_unit']:,.4f} per unit")


CLOSE_TEXT = {"edge": "edge fell below the threshold", "stale": "a quote went stale or missing",
              "end": "still open when the run ended"}


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """numpy's default (linear) percentile; None when there are no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


# -------------------------------------------------------------------------------------------
# The opportunity lifecycle
# -------------------------------------------------------------------------------------------
#: Why an opportunity closed: its net edge fell below the threshold ("edge"); one of its two
#: quotes was older than the join tolerance, missing or unusable ("stale"); the run ended
#: while it was still open ("end").
CLOSE_REASONS = ("edge", "stale", "end")


def _pair_matrices(joined: pa.RecordBatch, fees_bps: Mapping[str, float],
                   venues: Sequence[str]) -> Tuple[Dict[str, np.ndarray], int]:
    """Every ordered venue pair's figures at once, as ``(buy venue, sell venue, row)`` arrays
    (the diagonal, a venue against itself, is never present): ``buy_price``, ``sell_price``,
    ``gross_bps``, ``net_bps``, ``edge_per_unit``, ``present``; and the number of bid/ask
    values skipped as unusable (see :func:`_usable_quotes`).

    One numpy expression per figure over every pair instead of a loop over the pairs: the
    arithmetic is :func:`pair_edges`'s, element by element, so the values are the same."""
    n = joined.num_rows
    k = len(venues)
    asks = np.empty((k, n))
    bids = np.empty((k, n))
    nulls = 0
    for j, v in enumerate(venues):
        for side, dest in (("ask", asks), ("bid", bids)):
            idx = joined.schema.get_field_index(f"{v}_{side}")
            if idx < 0:  # a venue not joined yet: absent from every row
                dest[j] = np.nan
                nulls += n
                continue
            dest[j] = _f64(joined, f"{v}_{side}")
            nulls += joined.column(idx).null_count
    ok_ask, ok_bid = usable_price(asks), usable_price(bids)
    bad = int((~ok_ask).sum() + (~ok_bid).sum()) - nulls
    if bad:
        asks = np.where(ok_ask, asks, np.nan)
        bids = np.where(ok_bid, bids, np.nan)
    # a usable price outside these bounds may make some figure overflow (an absurd 1e308 bid)
    with np.errstate(invalid="ignore"):
        extreme = bool(((asks > EXTREME_PRICE) | (asks < 1 / EXTREME_PRICE)
                        | (bids > EXTREME_PRICE) | (bids < 1 / EXTREME_PRICE)).any())
    fee = np.array([float(fees_bps[v]) for v in venues])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ask = asks[:, None, :]                      # buy venue b on axis 0
        bid = bids[None, :, :]                      # sell venue s on axis 1
        gross = (bid - ask) / ask * 1e4
        net = gross - fee[:, None, None] - fee[None, :, None]
        per_unit = ask * net / 1e4
        ok = np.isfinite(gross) & np.isfinite(net) & np.isfinite(per_unit)
    ok[np.arange(k), np.arange(k)] = False
    nan = np.nan
    out = {"buy_price": np.where(ok, ask, nan), "sell_price": np.where(ok, bid, nan),
           "gross_bps": np.where(ok, gross, nan), "net_bps": np.where(ok, net, nan),
           "edge_per_unit": np.where(ok, per_unit, nan), "present": ok, "extreme": extreme}
    return out, bad


#: Usable prices within [1/EXTREME_PRICE, EXTREME_PRICE] give finite figures for every pair
#: (|gross| <= 1e64 bps, |edge per unit| <= 1e94), whatever the fees.
EXTREME_PRICE = 1e30

_PAIR_FIELDS = ("buy_price", "sell_price", "gross_bps", "net_bps", "edge_per_unit", "present")


def pair_edges(joined: pa.RecordBatch, fees_bps: Mapping[str, float],
               venues: Optional[Sequence[str]] = None
               ) -> Tuple[Dict[Tuple[str, str], Dict[str, np.ndarray]], int]:
    """Every ordered venue pair's figures per row of a joined batch: buy at ``b``'s ask, sell
    at ``s``'s bid, the same arithmetic as :func:`best_edges` but for each pair rather than the
    row's best one (an opportunity is followed per pair).

    Returns ``({(b, s): {"buy_price", "sell_price", "gross_bps", "net_bps", "edge_per_unit",
    "present"}}, bad_quotes)``; ``present`` is False where either quote is missing or unusable
    or the figures are not finite numbers (their values are then NaN)."""
    venues = tuple(venues) if venues is not None else venue_names()
    m, bad = _pair_matrices(joined, fees_bps, venues)
    out: Dict[Tuple[str, str], Dict[str, np.ndarray]] = {}
    for i, b in enumerate(venues):
        for j, s in enumerate(venues):
            if i != j:
                out[(b, s)] = {name: m[name][i, j] for name in _PAIR_FIELDS}
    return out, bad


_INT64_MIN = int(np.iinfo(np.int64).min)


def _num(x: float) -> Optional[float]:
    """A finite float, or None (JSON has no NaN)."""
    return float(x) if np.isfinite(x) else None


class OpportunityTracker:
    """Follows each (symbol, buy venue, sell venue) opportunity from OPEN to CLOSE.

    An opportunity opens on the first evaluation whose net edge qualifies (``>= min_edge_bps``
    and ``> 0``), is updated while later evaluations of the symbol still qualify (best and
    mean net edge, number of evaluations) and closes on the first evaluation that does not:
    ``close_reason`` "edge" (its net edge fell below the threshold) or "stale" (one of its
    quotes is older than the join tolerance, missing or unusable); :meth:`close_all` closes
    what is left at the end of a run ("end").  Staleness is found when the symbol is next
    evaluated (any venue's quote of it arrives): a symbol that stops being quoted altogether
    keeps its opportunities open until it is quoted again or the run ends.

    Times are event times.  A pair's evaluation happens at the newer event time of its two
    quotes where the joined row carries them (``<venue>_timestamp``: the on-arrival join),
    else at the row's ``timestamp`` (the event-time joins, whose rows come in event-time
    order).  On arrival a lagging venue's quotes arrive late, but they keep the times the
    exchange gave them: an opportunity opens when both its quotes stood in the market, not
    when the later one reached us.  ``opened_ns`` is the time of the first qualifying
    evaluation, ``last_ns`` of the last one, ``closed_ns`` of the evaluation that closed it
    (the quote that ended it) - for "stale" at most ``last_ns`` + the join tolerance (when its
    quotes became too old to use), for "end" ``last_ns``.  ``duration_s`` is
    ``closed_ns - opened_ns``: how long the opportunity stood, up to the quote that ended it.
    Times never run backwards within one pair (each is at least the previous one), so the
    opportunities of a pair never overlap.  ``timestamp_ns`` stays the evaluated row's own.

    :meth:`update` returns the records to report, in order: one ``event: "open"`` record
    (the fields of :func:`opportunities`, plus ``id`` and ``opened_ns``) and, later, one
    ``event: "close"`` record (the same fields for the quotes of the closing evaluation - a
    missing quote's fields are null - plus ``opened_ns``, ``last_ns``, ``closed_ns``,
    ``duration_s``, ``close_reason``, ``best_net_bps``, ``mean_net_bps``, ``evaluations``).
    """

    def __init__(self, fees_bps: Mapping[str, float], min_edge_bps: float = 0.0,
                 venues: Optional[Sequence[str]] = None, tolerance_ms: float = TOLERANCE_MS,
                 run_id: Optional[str] = None, fx_source: Optional[str] = None) -> None:
        self.venues = tuple(venues) if venues is not None else venue_names()
        #: the rate that priced quotes of another quote currency ("kraken USDT/USD"), if any
        self.fx_source = fx_source
        self.fees = {v: float(fees_bps[v]) for v in self.venues}
        self.min_edge_bps = float(min_edge_bps)
        self.tolerance_ns = int(tolerance_ms * 1_000_000)
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.open: Dict[Tuple[str, str, str], dict] = {}
        #: per (symbol, buy, sell), when its last opportunity closed (the next opens later)
        self.last_closed: Dict[Tuple[str, str, str], int] = {}
        self.opened = 0
        self.closed = 0
        self.bad_quotes = 0
        #: the unusable bid/ask values of the last batch evaluated (:meth:`update`)
        self.last_bad_quotes = 0
        #: whether the last batch held a usable price so large or small that a pair's figures
        #: may not be finite numbers (see :meth:`Monitor.on_batch`)
        self.last_extreme = False

    def update(self, joined: pa.RecordBatch) -> List[dict]:
        """Evaluate every row of a joined batch (in order) for every venue pair; the open and
        close records this caused."""
        self.last_bad_quotes = 0
        self.last_extreme = False
        if not joined.num_rows:
            return []
        m, bad = _pair_matrices(joined, self.fees, self.venues)
        self.last_extreme = m["extreme"]
        self.bad_quotes += bad
        self.last_bad_quotes = bad
        with np.errstate(invalid="ignore"):
            q_all = m["present"] & (m["net_bps"] >= self.min_edge_bps) & (m["net_bps"] > 0)
        any_q = q_all.any(axis=(0, 1))
        if not self.open and not any_q.any():  # nothing open, nothing qualifies: no event
            return []
        venues = self.venues
        pairs = [(i, j, b, s) for i, b in enumerate(venues) for j, s in enumerate(venues) if i != j]
        edges = {(b, s): {name: m[name][i, j] for name in _PAIR_FIELDS} for i, j, b, s in pairs}
        qualifies = {(b, s): q_all[i, j] for i, j, b, s in pairs}
        symbols = joined.column(joined.schema.get_field_index("symbol")).to_pylist()
        ts = _ns(joined, "timestamp")
        # only rows of symbols that have (or may get) an open opportunity need a look
        watched = {k[0] for k in self.open} | {symbols[i] for i in np.flatnonzero(any_q)}
        if not watched:
            return []
        recv = {v: _ns(joined, f"{v}_recv_timestamp") for v in self.venues}
        fx = {(v, side): _f64(joined, f"{v}_fx_{side}") for v in self.venues
              for side in ("bid", "ask")}
        quote_ts = {v: _ns(joined, f"{v}_timestamp") for v in self.venues
                    if joined.schema.get_field_index(f"{v}_timestamp") >= 0}
        missing = np.iinfo(np.int64).min
        events: List[dict] = []
        for i, sym in enumerate(symbols):
            if sym not in watched:
                continue
            row_ns = int(ts[i])
            for (b, s), e in edges.items():
                key = (sym, b, s)
                state = self.open.get(key)
                q = qualifies[(b, s)][i]
                if not q and state is None:
                    continue
                tb = ts_ = None
                if b in quote_ts and s in quote_ts:
                    tb, ts_ = int(quote_ts[b][i]), int(quote_ts[s][i])
                    tb, ts_ = (None if tb == missing else tb), (None if ts_ == missing else ts_)
                self._evaluate(key, state, bool(q), bool(e["present"][i]), row_ns, tb, ts_,
                               functools.partial(self._quote, sym, b, s, e, i, row_ns, recv, fx),
                               events)
        return events

    def _evaluate(self, key: Tuple[str, str, str], state: Optional[dict], qualifies: bool,
                  present: bool, row_ns: int, tb: Optional[int], ts_: Optional[int],
                  quote: "functools.partial[dict]", events: List[dict]) -> None:
        """One evaluation of the pair ``key`` on a row (the lifecycle of the class docstring):
        open, update or close its opportunity; the records caused are appended to ``events``.
        ``tb``/``ts_``: the event times of the buy and sell venues' quotes (None: unknown);
        ``quote()`` makes the row's record of the pair (only called when one is needed)."""
        if qualifies:
            now = row_ns
            if tb is not None and ts_ is not None:
                now = max(tb, ts_)
            record = quote()
            if state is None:
                now = max(now, self.last_closed.get(key, now))
                self.opened += 1
                oid = f"{self.run_id}-{self.opened}"
                self.open[key] = {"id": oid, "opened_ns": now, "last_ns": now,
                                  "best": record["net_bps"], "sum": record["net_bps"],
                                  "n": 1, "last_quote": record}
                events.append({"event": "open", "id": oid, **record, "opened_ns": now})
            else:
                state["last_ns"] = max(state["last_ns"], now)
                state["best"] = max(state["best"], record["net_bps"])
                state["sum"] += record["net_bps"]
                state["n"] += 1
                state["last_quote"] = record
        elif state is not None:
            now = row_ns
            if present:
                reason = "edge"
                if tb is not None and ts_ is not None:  # the newer quote ended it
                    now = max(tb, ts_)
            else:
                reason = "stale"
                now = min(now, state["last_ns"] + self.tolerance_ns)
            events.append(self._close(key, quote(), reason, max(now, state["last_ns"])))

    def update_row(self, sym: str, row_ns: int, quotes: Sequence[Optional[tuple]]) -> List[dict]:
        """:meth:`update` for one joined row given as Python values (the direct path's
        decision, :class:`FastArrival`): ``quotes[j]`` is venue ``j``'s quote joined onto the
        row - ``(timestamp_ns, bid, ask, recv_ns, fx_bid, fx_ask)`` with None for a null
        value - or None where the venue has no quote within the tolerance.  The same
        arithmetic, element by element, as :func:`pair_edges`, and the same lifecycle."""
        venues, fees, events = self.venues, self.fees, []
        asks: List[Optional[float]] = []
        bids: List[Optional[float]] = []
        bad = 0
        for q in quotes:
            ask = bid = None
            if q is not None:
                if q[2] is not None:
                    if math.isfinite(q[2]) and q[2] > 0:
                        ask = q[2]
                    else:
                        bad += 1
                if q[1] is not None:
                    if math.isfinite(q[1]) and q[1] > 0:
                        bid = q[1]
                    else:
                        bad += 1
            asks.append(ask)
            bids.append(bid)
        self.bad_quotes += bad
        self.last_bad_quotes += bad
        min_edge = self.min_edge_bps
        isfinite = math.isfinite
        for bi, b in enumerate(venues):
            for si, s in enumerate(venues):
                if bi == si:
                    continue
                key = (sym, b, s)
                state = self.open.get(key)
                ask, bid = asks[bi], bids[si]
                present = False
                figures = None
                if ask is not None and bid is not None:
                    gross = (bid - ask) / ask * 1e4
                    net = gross - fees[b] - fees[s]
                    per_unit = ask * net / 1e4
                    present = isfinite(gross) and isfinite(net) and isfinite(per_unit)
                    if present:
                        figures = (ask, bid, gross, net, per_unit)
                q = present and net >= min_edge and net > 0
                if not q and state is None:
                    continue
                qb, qs = quotes[bi], quotes[si]
                tb = qb[0] if qb is not None else None
                ts_ = qs[0] if qs is not None else None
                self._evaluate(key, state, q, present, row_ns, tb, ts_,
                               functools.partial(self._row_quote, sym, b, s, qb, qs, figures,
                                                 row_ns), events)
        return events

    def _row_quote(self, sym: str, b: str, s: str, qb: Optional[tuple], qs: Optional[tuple],
                   figures: Optional[tuple], ts: int) -> dict:
        """:meth:`_quote` from :meth:`update_row`'s Python values."""
        buy_price, sell_price, gross, net, per_unit = figures or (None,) * 5
        quote = {"symbol": sym, "timestamp_ns": ts, "buy_venue": b, "sell_venue": s,
                 "buy_recv_ns": qb[3] if qb is not None else None,
                 "sell_recv_ns": qs[3] if qs is not None else None,
                 "buy_price": buy_price, "sell_price": sell_price,
                 "gross_bps": gross, "net_bps": net, "edge_per_unit": per_unit}
        buy_fx = qb[5] if qb is not None else None
        sell_fx = qs[4] if qs is not None else None
        quote["buy_fx_rate"], quote["sell_fx_rate"] = buy_fx, sell_fx
        quote["fx_source"] = (self.fx_source if buy_fx is not None or sell_fx is not None
                              else None)
        return quote

    def close_all(self) -> List[dict]:
        """Close every opportunity still open (``close_reason`` "end") at its last qualifying
        evaluation; the close records."""
        return [self._close(key, state["last_quote"], "end", state["last_ns"])
                for key, state in list(self.open.items())]

    def _quote(self, sym: str, b: str, s: str, e: Mapping[str, np.ndarray], i: int,
               ts: int, recv: Mapping[str, np.ndarray],
               fx: Optional[Mapping[Tuple[str, str], np.ndarray]] = None) -> dict:
        def recv_ns(v: str) -> Optional[int]:
            value = int(recv[v][i])
            return None if value == np.iinfo(np.int64).min else value

        quote = {"symbol": sym, "timestamp_ns": ts, "buy_venue": b, "sell_venue": s,
                 "buy_recv_ns": recv_ns(b), "sell_recv_ns": recv_ns(s),
                 "buy_price": _num(e["buy_price"][i]), "sell_price": _num(e["sell_price"][i]),
                 "gross_bps": _num(e["gross_bps"][i]), "net_bps": _num(e["net_bps"][i]),
                 "edge_per_unit": _num(e["edge_per_unit"][i])}
        if fx is not None:  # the multipliers a converted quote was priced with (null: native)
            buy_fx, sell_fx = _num(fx[(b, "ask")][i]), _num(fx[(s, "bid")][i])
            quote["buy_fx_rate"], quote["sell_fx_rate"] = buy_fx, sell_fx
            quote["fx_source"] = (self.fx_source if buy_fx is not None or sell_fx is not None
                                  else None)
        return quote

    def _close(self, key: Tuple[str, str, str], quote: dict, reason: str, closed_ns: int) -> dict:
        state = self.open.pop(key)
        self.closed += 1
        self.last_closed[key] = closed_ns
        return {"event": "close", "id": state["id"], **quote,
                "opened_ns": state["opened_ns"], "last_ns": state["last_ns"],
                "closed_ns": closed_ns, "duration_s": (closed_ns - state["opened_ns"]) / 1e9,
                "close_reason": reason, "best_net_bps": state["best"],
                "mean_net_bps": state["sum"] / state["n"], "evaluations": state["n"]}


# -------------------------------------------------------------------------------------------
# The streaming pipeline
# -------------------------------------------------------------------------------------------
class Counter:
    """Counts rows per venue as they leave the Kafka source (before any join)."""

    def __init__(self, venues: Optional[Sequence[str]] = None) -> None:
        self.rows: Dict[str, int] = {v: 0 for v in (venues if venues is not None else venue_names())}

    def __call__(self, venue: str):
        def count(batch: pa.RecordBatch) -> pa.RecordBatch:
            self.rows[venue] += batch.num_rows
            return batch
        count.__qualname__ = f"count({venue})"
        return count

    def by_exchange(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Counts each row under its ``exchange`` value (one stream carrying every venue)."""
        if batch.num_rows <= 8:  # a live tick: cheaper in Python than a compute call
            rows = self.rows
            for venue in batch.column("exchange").to_pylist():
                if venue in rows:
                    rows[venue] += 1
            return batch
        for item in pc.value_counts(batch.column("exchange")).to_pylist():
            if item["values"] in self.rows:
                self.rows[item["values"]] += item["counts"]
        return batch


class QuoteGuard:
    """Drops quotes whose bid or ask is missing, NaN, infinite, zero or negative, before they
    reach a join (where one would become its venue's "latest quote"); counts them per venue
    and logs the first few and then every 1000th (a venue sending garbage must not flood the
    log, nor go unnoticed)."""

    def __init__(self, venues: Optional[Sequence[str]] = None) -> None:
        self.skipped: Dict[str, int] = {v: 0 for v in (venues if venues is not None else venue_names())}
        self.total = 0

    def __call__(self, batch: pa.RecordBatch) -> Optional[pa.RecordBatch]:
        ok = usable_price(_f64(batch, "bid")) & usable_price(_f64(batch, "ask"))
        if ok.all():
            return batch
        bad = batch.filter(pa.array(~ok))
        venues = (bad.column("exchange").to_pylist() if "exchange" in bad.schema.names
                  else ["?"] * bad.num_rows)
        for i, venue in enumerate(venues):
            self.skipped[venue] = self.skipped.get(venue, 0) + 1
            self.total += 1
            if self.total <= 5 or self.total % 1000 == 0:
                row = bad.slice(i, 1).to_pylist()[0]
                log.warning("skipped quote #%d from %s: %s bid=%r ask=%r (prices must be finite "
                            "and > 0)", self.total, venue, row.get("symbol"), row.get("bid"),
                            row.get("ask"))
        return batch.filter(pa.array(ok)) if ok.any() else None


class SymbolNormaliser:
    """``normalize_symbols`` with the monitor's quote aliases (none by default: ``BTC/USDT``
    stays a USDT quote; :data:`~sabot.symbols.USDT_AS_USD` with ``--usdt-as-usd``)."""

    def __init__(self, quote_aliases: Mapping[str, str] = DEFAULT_QUOTE_ALIASES) -> None:
        self.quote_aliases = dict(quote_aliases)

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return normalize_symbols(batch, quote_aliases=self.quote_aliases)


def venue_stream(bootstrap: str, venue: str, group_id: str, counter: Counter, *,
                 from_beginning: bool, fast_groups: bool,
                 guard: Optional[QuoteGuard] = None,
                 kafka_config: Optional[Mapping[str, str]] = None,
                 normaliser: Optional[SymbolNormaliser] = None,
                 rates: Optional[Stream] = None,
                 pricing: Optional["EventTimePricing"] = None,
                 rate_max_age_ms: float = DEFAULT_MAX_AGE_MS) -> Stream:
    """The venue's ticker topic → unusable quotes skipped → normalised symbols → (with
    ``rates``: USDT quotes priced in USD through the latest rate at or before each, an event-time
    ASOF join on the quote currency, :mod:`sabot.quote_conversion`) → midprice, in event-time
    order."""
    from sabot.quote_conversion import with_quote_currency

    extra = fast_consumer_config() if fast_groups else {}
    stream = (Stream.from_kafka(bootstrap, get_venue(venue).ticker_topic, group_id,
                                from_beginning=from_beginning, order_by="timestamp",
                                max_latency_ms=10, commit="async", kafka_config=kafka_config,
                                **extra)
              .map(counter(venue))
              .map(guard if guard is not None else QuoteGuard())
              .map(normaliser if normaliser is not None else SymbolNormaliser()))
    if rates is not None and pricing is not None:
        stream = (stream.map(with_quote_currency)
                  .asof_join(rates, on="timestamp", by="quote_currency",
                             tolerance_ms=rate_max_age_ms)
                  .map(pricing))
    else:
        stream = stream.map(_native_quotes)
    return stream.map(midprice).select(*QUOTE_COLUMNS)


def _native_quotes(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Quotes priced in their own quote currency: null ``fx_bid``/``fx_ask``."""
    for name in ("fx_bid", "fx_ask"):
        if name not in batch.schema.names:
            batch = batch.append_column(name, pa.nulls(batch.num_rows, pa.float64()))
    return batch


def rate_stream(bootstrap: str, source: RateSource, group_id: str, *, from_beginning: bool,
                fast_groups: bool, kafka_config: Optional[Mapping[str, str]] = None) -> Stream:
    """``source``'s rate quotes (e.g. Kraken ``USDT/USD``) in event-time order, as the right side
    of the event-time conversion (:class:`~sabot.quote_conversion.RateQuotes`)."""
    from sabot.quote_conversion import RateQuotes

    extra = fast_consumer_config() if fast_groups else {}
    return (Stream.from_kafka(bootstrap, get_venue(source.venue).ticker_topic, group_id,
                              from_beginning=from_beginning, order_by="timestamp",
                              max_latency_ms=10, commit="async", kafka_config=kafka_config,
                              **extra)
            .map(QuoteGuard([source.venue]))
            .map(SymbolNormaliser())
            .map(RateQuotes(source)))


#: The columns the on-arrival join keeps per venue: what a decision uses.
ARRIVAL_COLUMNS = ("bid", "ask", "recv_timestamp", "fx_bid", "fx_ask")


def arrival_stream(bootstrap: str, group_id: str, counter: Counter, *, from_beginning: bool,
                   fast_groups: bool, tolerance_ms: float = TOLERANCE_MS,
                   fetch_wait_max_ms: int = LIVE_FETCH_WAIT_MAX_MS,
                   guard: Optional[QuoteGuard] = None,
                   kafka_config: Optional[Mapping[str, str]] = None,
                   venues: Optional[Sequence[str]] = None,
                   normaliser: Optional[SymbolNormaliser] = None,
                   converter: Optional[LiveQuoteConverter] = None) -> Stream:
    """Every venue's topic through one consumer, quotes of another quote currency priced
    through the latest rate received (:class:`~sabot.quote_conversion.LiveQuoteConverter`),
    each quote joined on arrival with the latest quote of the other venues
    (:class:`sabot.api.arrival.ArrivalAsofJoin`)."""
    venues = tuple(venues) if venues is not None else venue_names()
    extra = {**(fast_consumer_config() if fast_groups else {}),
             **live_consumer_config(**{"fetch.wait.max.ms": fetch_wait_max_ms})}
    join = ArrivalAsofJoin(venues, source_column="exchange", by="symbol", on="timestamp",
                           columns=ARRIVAL_COLUMNS, tolerance_ms=tolerance_ms)
    return (Stream.from_kafka(bootstrap, [get_venue(v).ticker_topic for v in venues], group_id,
                              from_beginning=from_beginning, max_latency_ms=50, commit="async",
                              kafka_config=kafka_config, **extra)
            .map(counter.by_exchange)
            .map(guard if guard is not None else QuoteGuard())
            .map(normaliser if normaliser is not None else SymbolNormaliser())
            .map(converter if converter is not None else LiveQuoteConverter())
            .map(join))  # keeps only what a decision uses: bid, ask, times, rates per venue


#: The ticker columns the on-arrival decision reads (the direct path builds only these).
DECISION_SCHEMA = pa.schema([TICKER_SCHEMA.field(name) for name in (
    "exchange", "symbol", "raw_symbol", "timestamp", "recv_timestamp", "bid", "ask")])


class ArrivalDecision:
    """The on-arrival decision of :func:`arrival_stream` on one batch of quotes of any venues,
    without the Kafka source: count per venue, skip unusable quotes, normalise the symbols,
    join on arrival (:class:`~sabot.api.arrival.ArrivalAsofJoin`), then ``monitor.on_batch``.

    ``sabot monitor --direct`` calls it with the records the collectors' connection loops
    hand over in this process; the same steps, in the same order, as the Kafka path's."""

    def __init__(self, monitor: "Monitor", tolerance_ms: float = TOLERANCE_MS) -> None:
        self.monitor = monitor
        self.join = ArrivalAsofJoin(monitor.venues, source_column="exchange", by="symbol",
                                    on="timestamp", columns=ARRIVAL_COLUMNS,
                                    tolerance_ms=tolerance_ms)

        self.fast = FastArrival(monitor, self.join)

    def __call__(self, batch: pa.RecordBatch) -> None:
        batch = self.monitor.counter.by_exchange(batch)
        usable = self.monitor.guard(batch)
        if usable is None:
            return
        priced = self.monitor.converter(self.monitor.normaliser(usable))
        if priced is not None:
            self.monitor.on_batch(self.join(priced))

    def decide_records(self, records: Sequence[dict],
                       count: Optional[Callable[[int], None]] = None) -> bool:
        """Decide on ``records`` (the collectors' dicts, in arrival order) without building
        Arrow batches, when :class:`FastArrival` can (every record well-formed, every price
        ordinary), calling ``count(len(records))`` first; False, having changed nothing, when
        they need the batch path (:meth:`__call__`) instead."""
        prepared = self.fast.prepare(records)
        if prepared is None:
            return False
        if count is not None:
            count(len(prepared))
        self.fast.decide(prepared)
        return True


#: Prices the direct path's Python decision takes (the rest go the Arrow way): within these
#: bounds a quote priced through a rate stays within [1/EXTREME_PRICE, EXTREME_PRICE], so no
#: figure of any pair can overflow.
ORDINARY_PRICE = (1e-15, 1e15)


class FastArrival:
    """The on-arrival decision on a few records at a time, in Python values: the steps of
    :class:`ArrivalDecision` (count per venue, quote guard, symbols, USDT pricing, on-arrival
    join, decision) row by row, with their state shared - the counters, the converter's rate,
    the join's latest quotes (:class:`~sabot.api.arrival.ArrivalAsofJoin`'s arrays) and the
    opportunity tracker - so a batch may go either way and the next one continues.

    Why: a live tick is one record, and the Arrow way costs some 100 compute calls per batch
    whatever its size (about 0.7 ms on a busy 2-core machine); row by row it is some 50 us.

    :meth:`prepare` takes records only when the Arrow way would neither reject nor skip any of
    them and every price is ordinary (:data:`ORDINARY_PRICE`, also the quotes already joined
    for the symbols concerned and the rate in use): then the two ways give the same figures,
    element by element the same floating-point operations, and the same records."""

    def __init__(self, monitor: "Monitor", join: ArrivalAsofJoin) -> None:
        self.monitor = monitor
        self.join = join
        self.source_of = {v: i for i, v in enumerate(join.sources)}
        self._symbols: Dict[str, Optional[str]] = {}
        conv = monitor.converter
        self._suffix = "/" + conv.source.currency
        self._target = conv.source.target
        if list(join.sources) != list(monitor.venues) or join.on != "timestamp":
            raise ValueError("FastArrival needs the monitor's venues as the join's sources")
        if list(join.columns) != ["timestamp", *ARRIVAL_COLUMNS]:
            raise ValueError(f"FastArrival joins rows of {['timestamp', *ARRIVAL_COLUMNS]}, "
                             f"the join keeps {join.columns}")

    def _symbol(self, raw: str) -> Optional[str]:
        """The normalised symbol (the monitor's quote aliases), None when it cannot be read."""
        try:
            return self._symbols[raw]
        except KeyError:
            pass
        from sabot.symbols import normalize_symbol

        try:
            out: Optional[str] = normalize_symbol(raw, None, self.monitor.normaliser.quote_aliases)
        except ValueError:
            out = None
        if len(self._symbols) < 10_000:
            self._symbols[raw] = out
        return out

    def prepare(self, records: Sequence[dict]) -> Optional[list]:
        """``[(venue index, venue, symbol, record)]`` when every record can go this way; else
        None.  Changes nothing."""
        lo, hi = ORDINARY_PRICE
        low = -(1 << 63)
        high = 1 << 63
        out = []
        keys = set()
        for rec in records:
            venue = rec.get("exchange")
            j = self.source_of.get(venue) if type(venue) is str else None
            t, r = rec.get("timestamp"), rec.get("recv_timestamp")
            bid, ask = rec.get("bid"), rec.get("ask")
            sym = rec.get("symbol")
            if (j is None or type(sym) is not str or type(rec.get("raw_symbol")) is not str
                    or type(t) is not int or type(r) is not int
                    or not low < t < high or not low < r < high
                    or type(bid) is not float or type(ask) is not float
                    or not lo <= bid <= hi or not lo <= ask <= hi):
                return None
            norm = self._symbol(sym)
            if norm is None:
                return None
            keys.add(norm)
            if norm.endswith(self._suffix):
                keys.add(norm.split("/", 1)[0] + "/" + self._target)
            out.append((j, venue, norm, rec))
        rate = self.monitor.converter.rate
        if rate is not None and not (lo <= rate[1] <= hi and lo <= rate[2] <= hi):
            return None
        # the quotes already joined for these symbols: ordinary too (a null is allowed)
        lo2, hi2 = 1 / EXTREME_PRICE, EXTREME_PRICE
        bid_i, ask_i = self.join.columns.index("bid"), self.join.columns.index("ask")
        for key in keys:
            for row in self.join.latest(key):
                if row is None:
                    continue
                b, a = row[bid_i], row[ask_i]
                if not ((b is None or lo2 <= b <= hi2) and (a is None or lo2 <= a <= hi2)):
                    return None
        return out

    def decide(self, prepared: list) -> None:
        """The decision on the records :meth:`prepare` accepted (see the class docstring)."""
        m = self.monitor
        rows = m.counter.rows
        for _, venue, _, _ in prepared:
            if venue in rows:
                rows[venue] += 1
        joined = []
        price_one = m.converter.price_one
        for j, venue, sym, rec in prepared:
            t = rec["timestamp"]
            priced = price_one(venue, sym, t, rec["bid"], rec["ask"])
            if priced is None:  # a USDT quote without a rate: counted by the converter
                continue
            sym, bid, ask, fx_bid, fx_ask = priced
            joined.append((sym, t, self._join(j, sym, t, bid, ask, rec["recv_timestamp"],
                                              fx_bid, fx_ask)))
        if joined:
            m.on_rows(joined)

    def _join(self, j: int, key: str, t: int, bid: float, ask: float, recv: int,
              fx_bid: Optional[float], fx_ask: Optional[float]) -> List[Optional[tuple]]:
        """:meth:`ArrivalAsofJoin.join_row` for one row: it becomes venue ``j``'s latest quote
        of ``key``; every venue's latest quote of ``key`` within the tolerance, as
        ``(timestamp, bid, ask, recv, fx_bid, fx_ask)`` with None for a null (or None for the
        venue)."""
        return self.join.join_row(j, key, (t, bid, ask, recv, fx_bid, fx_ask))


def joined_stream(first: Stream, *others: Stream, tolerance_ms: float = TOLERANCE_MS) -> Stream:
    """The event-time ASOF joins: each row of ``first`` with the latest quote of every other
    venue's stream (by symbol, backward, within ``tolerance_ms``), joined in the order given."""
    joined = first
    for other in others:
        joined = joined.asof_join(other, on="timestamp", by="symbol", tolerance_ms=tolerance_ms)
    return joined


class Monitor:
    """Evaluates joined batches, logs and records opportunities, tracks latency."""

    def __init__(self, fees: Mapping[str, float], min_edge_bps: float, output: Optional[Path],
                 summary_path: Optional[Path], summary_every_s: float, quiet: bool = False,
                 venues: Optional[Sequence[str]] = None,
                 tolerance_ms: float = TOLERANCE_MS,
                 rate_source: Optional[RateSource] = RateSource(),
                 rate_max_age_ms: float = DEFAULT_MAX_AGE_MS) -> None:
        self.venues = tuple(venues) if venues is not None else venue_names()
        self.fees = dict(fees)
        self.min_edge_bps = min_edge_bps
        #: USDT quotes: priced in USD through ``rate_source`` (default Kraken USDT/USD), or
        #: with ``rate_source=None`` read as USD (``--usdt-as-usd``)
        self.rate_source = rate_source
        self.normaliser = SymbolNormaliser(DEFAULT_QUOTE_ALIASES if rate_source is not None
                                           else USDT_AS_USD)
        self.converter = LiveQuoteConverter(rate_source or RateSource(), rate_max_age_ms)
        #: event-time pricing (``--align event-time``) counts into the same per-venue dict
        self.pricing = EventTimePricing(rate_source or RateSource(), self.converter.unpriced)
        #: each (symbol, buy venue, sell venue) opportunity from open to close
        self.tracker = OpportunityTracker(
            self.fees, min_edge_bps, self.venues, tolerance_ms,
            fx_source=rate_source.describe() if rate_source is not None else None)
        self.output = open(output, "w", encoding="utf-8") if output else None
        self.summary_path = summary_path
        self.summary_every_s = summary_every_s
        self.quiet = quiet
        self.counter = Counter(self.venues)
        #: event-time alignment: each venue's own stream (its Kafka source counts what it fetched)
        self.venue_streams: Optional[Dict[str, Stream]] = None
        #: the streams whose Kafka sources count the messages they skipped (set by :func:`run`)
        self.sources: List[Stream] = []
        self.guard = QuoteGuard(self.venues)
        self.skipped: Dict[str, int] = {"bad_quotes": 0, "nonfinite_edges": 0}
        self.evaluations = 0
        #: tick-to-signal latencies (ms), one per evaluated quote received after the first decision
        self.latencies = LatencyBuffer()
        self.started = time.monotonic()
        self._last_print = self.started
        self._first_decision_ns: Optional[int] = None
        # The summary JSON is rewritten twice a second by a thread, also while no quote
        # arrives, so that whoever watches it (the demo) sees the last records read.
        self._write_lock = threading.Lock()
        self._stop_writer = threading.Event()
        self._writer: Optional[threading.Thread] = None
        if summary_path is not None:
            self._writer = threading.Thread(target=self._write_periodically, name="summary-writer",
                                            daemon=True)
            self._writer.start()

    def _write_periodically(self, every_s: float = 0.5) -> None:
        while not self._stop_writer.wait(every_s):
            try:
                self.write_summary()
            except Exception as exc:  # a full disk must not stop the monitor; say so
                log.warning("could not write the summary %s: %s", self.summary_path, exc)

    @property
    def n_opportunities(self) -> int:
        """Opportunities opened so far (a standing one counts once)."""
        return self.tracker.opened

    def on_batch(self, joined: pa.RecordBatch) -> None:
        """Decide on a joined batch (open/close records), then do the bookkeeping: the
        decision's time is taken before the skip counts and the report, which do not change it."""
        events = self.tracker.update(joined)
        decided_ns = time.time_ns()
        if self._first_decision_ns is None:
            self._first_decision_ns = decided_ns
        recv = newest_recv_ns(joined, self.venues)
        self.latencies.extend((decided_ns - recv[recv >= self._first_decision_ns]) / 1e6)
        # the counts of unusable quotes and non-finite best edges, as the summary always had:
        # the tracker counted the unusable values of this batch; a best edge can only be
        # non-finite with an absurd price in the batch (then the best pairs are computed)
        self.skipped["bad_quotes"] += self.tracker.last_bad_quotes
        if self.tracker.last_extreme:
            e = best_edges(joined, self.fees, self.min_edge_bps, self.venues)
            self.skipped["nonfinite_edges"] += e["nonfinite_edges"]
        self.evaluations += joined.num_rows
        self.report(events, decided_ns)
        now = time.monotonic()
        if now - self._last_print >= self.summary_every_s:
            self._last_print = now
            print(self.summary_line("📊 summary", exact=False), flush=True)

    def on_rows(self, rows: Sequence[Tuple[str, int, Sequence[Optional[tuple]]]]) -> None:
        """:meth:`on_batch` for joined rows given as Python values (the direct path's
        :class:`FastArrival`): ``(symbol, timestamp_ns, quotes)`` per row, ``quotes`` as
        :meth:`OpportunityTracker.update_row` takes them."""
        tracker = self.tracker
        bad_before = tracker.bad_quotes
        events: List[dict] = []
        for sym, row_ns, quotes in rows:
            events += tracker.update_row(sym, row_ns, quotes)
        decided_ns = time.time_ns()
        if self._first_decision_ns is None:
            self._first_decision_ns = decided_ns
        first = self._first_decision_ns
        lat = []
        for _, _, quotes in rows:
            newest = max((q[3] for q in quotes if q is not None and q[3] is not None),
                         default=_INT64_MIN)
            if newest >= first:
                lat.append((decided_ns - newest) / 1e6)
        self.latencies.extend(lat)
        # ordinary prices only (FastArrival.prepare): no pair's figures can be non-finite
        self.skipped["bad_quotes"] += tracker.bad_quotes - bad_before
        self.evaluations += len(rows)
        self.report(events, decided_ns)
        now = time.monotonic()
        if now - self._last_print >= self.summary_every_s:
            self._last_print = now
            print(self.summary_line("📊 summary", exact=False), flush=True)

    def report(self, events: Sequence[dict], decided_ns: int) -> None:
        """Each open/close record as an alert line and a JSON line (with the wall-clock time
        of the decision, ``decided_ns``)."""
        for o in events:
            print(format_opportunity(o), flush=True)
            if self.output:
                self.output.write(json.dumps({**o, "decided_ns": decided_ns}) + "\n")
        if events and self.output:
            self.output.flush()

    def fetched(self) -> Dict[str, int]:
        """Records fetched from Kafka per venue.  On arrival every fetched record is read at
        once; with the event-time alignment a venue's newest records wait in its source until
        the other partitions' timestamps pass them, so "fetched" can run ahead of "records"."""
        if self.venue_streams is None:
            return dict(self.counter.rows)
        out = {}
        for venue, stream in self.venue_streams.items():
            out[venue] = sum(m.get("messages", 0) for name, m in stream.metrics.items()
                             if name.startswith("from_kafka("))
        return out

    def source_skipped(self) -> int:
        """Messages the Kafka sources skipped as undecodable or invalid (a price that is not a
        finite positive number, for one): consumed, counted and logged there, never a record."""
        return sum(int(m.get("decode_errors", 0)) for stream in self.sources
                   for name, m in stream.metrics.items() if name.startswith("from_kafka("))

    @property
    def latencies_ms(self) -> np.ndarray:
        """Every tick-to-signal latency so far (ms), in decision order (a copy)."""
        return self.latencies.values().copy()

    def summary(self, with_latencies: bool = True, exact: Optional[bool] = None) -> dict:
        """The counts and latency percentiles; ``exact`` (default: ``with_latencies``) computes
        the percentiles from every latency, else from the histogram (see
        :class:`LatencyBuffer`: cheap while the decisions run)."""
        latencies = self.latencies.values()
        if not (with_latencies if exact is None else exact):
            p50, p99 = self.latencies.approx_percentiles([50, 99])
        elif len(latencies):
            p50, p99 = (float(v) for v in np.percentile(latencies, [50, 99]))
        else:
            p50 = p99 = None
        return {
            "records": dict(self.counter.rows),
            "fetched": self.fetched(),
            "source_skipped": self.source_skipped(),
            "evaluations": self.evaluations,
            "opportunities": self.n_opportunities,
            "closed": self.tracker.closed,
            "open_now": len(self.tracker.open),
            "skipped_quotes": dict(self.guard.skipped),
            "unpriced_quotes": dict(self.converter.unpriced),
            "fx_source": self.rate_source.describe() if self.rate_source is not None else None,
            "skipped_edges": dict(self.skipped),
            "latency_ms_p50": p50,
            "latency_ms_p99": p99,
            **({"latencies_ms": latencies.tolist()} if with_latencies else {}),
            "fees_bps": self.fees,
            "min_edge_bps": self.min_edge_bps,
            "elapsed_s": time.monotonic() - self.started,
        }

    def summary_line(self, head: str, exact: bool = True) -> str:
        """One line of counts and latency percentiles (``exact=False``: from the histogram, as
        the periodic lines on the event loop do)."""
        s = self.summary(with_latencies=False, exact=exact)
        p50 = "n/a" if s["latency_ms_p50"] is None else f"{s['latency_ms_p50']:.1f} ms"
        p99 = "n/a" if s["latency_ms_p99"] is None else f"{s['latency_ms_p99']:.1f} ms"
        recs = ", ".join(f"{v} {n}" for v, n in s["records"].items())
        skipped = (sum(s["skipped_quotes"].values()) + sum(s["skipped_edges"].values())
                   + s["source_skipped"])
        unpriced = sum(s["unpriced_quotes"].values())
        return (f"{head}: {s['opportunities']} opportunities in {s['evaluations']} evaluations; "
                f"tick-to-signal p50 {p50}, p99 {p99}; records read: {recs}"
                + (f"; skipped unusable quotes: {skipped}" if skipped else "")
                + (f"; quotes without a {s['fx_source']} rate: {unpriced}" if unpriced else ""))

    def write_summary(self, final: bool = False) -> None:
        """The summary JSON (every latency only in the final one: the periodic ones stay small)."""
        if self.summary_path is None:
            return
        with self._write_lock:
            tmp = self.summary_path.with_suffix(self.summary_path.suffix + ".tmp")
            tmp.write_text(json.dumps(self.summary(with_latencies=final)))
            os.replace(tmp, self.summary_path)

    def close(self) -> None:
        """Close the opportunities still open (``close_reason`` "end"), the record file and
        write the final summary."""
        self.report(self.tracker.close_all(), time.time_ns())
        self._stop_writer.set()
        if self._writer is not None:
            self._writer.join()
        if self.output:
            self.output.close()
        self.write_summary(final=True)


def run(args: argparse.Namespace) -> int:
    """Run the monitor until Ctrl+C, SIGTERM or ``--duration``; 0 after a clean stop.

    Raises ``ValueError`` (bad ``--fees``, ``--kafka-config``) and
    :class:`BrokerUnreachableError`, which :func:`main` reports in one line (exit code 2)."""
    for name in ("url", "parquet_dir", "record_arrivals", "channels"):
        if getattr(args, name, None) is not None:
            raise ValueError(f"--{name.replace('_', '-')} is an option of --direct")
    venues = venue_names()
    fees = parse_fees(args.fees, venues)
    kafka_config = kafka_config_from_args(args)
    args.bootstrap = (args.bootstrap or kafka_config.get("bootstrap.servers")
                      or os.environ.get("SABOT_KAFKA_BOOTSTRAP") or "localhost:19092")
    rate_source = rate_source_of(args)
    wait_reachable(args.bootstrap, kafka_config, timeout_s=args.connect_timeout)
    monitor = Monitor(fees, args.min_edge_bps, args.output, args.summary_json, args.summary_every,
                      venues=venues, tolerance_ms=args.tolerance_ms, rate_source=rate_source,
                      rate_max_age_ms=args.rate_max_age_ms)
    group = args.group_id or f"sabot-arbitrage-{uuid.uuid4().hex[:8]}"
    if args.align == "arrival":
        joined = arrival_stream(args.bootstrap, group, monitor.counter,
                                from_beginning=args.from_beginning, fast_groups=args.fast_groups,
                                tolerance_ms=args.tolerance_ms,
                                fetch_wait_max_ms=args.fetch_wait_max_ms, guard=monitor.guard,
                                kafka_config=kafka_config, venues=venues,
                                normaliser=monitor.normaliser, converter=monitor.converter)
        monitor.sources = [joined]
    else:
        def rates_for(v: str) -> Optional[Stream]:  # every venue but the rate's own is priced
            if rate_source is None or v == rate_source.venue:
                return None
            return rate_stream(args.bootstrap, rate_source, f"{group}-{v}-rate",
                               from_beginning=args.from_beginning, fast_groups=args.fast_groups,
                               kafka_config=kafka_config)

        streams = [venue_stream(args.bootstrap, v, f"{group}-{v}", monitor.counter,
                                from_beginning=args.from_beginning, fast_groups=args.fast_groups,
                                guard=monitor.guard, kafka_config=kafka_config,
                                normaliser=monitor.normaliser, rates=rates_for(v),
                                pricing=monitor.pricing, rate_max_age_ms=args.rate_max_age_ms)
                   for v in venues]
        joined = joined_stream(*streams, tolerance_ms=args.tolerance_ms)
        monitor.venue_streams = dict(zip(venues, streams))
        monitor.sources = list(streams)

    print(f"Arbitrage monitor on {args.bootstrap}: fees (bps) "
          + ", ".join(f"{v}={f:g}" for v, f in fees.items())
          + f", min edge {args.min_edge_bps:g} bps, ASOF tolerance {args.tolerance_ms:g} ms, "
          f"alignment: {args.align}; {pricing_text(rate_source)}", flush=True)
    try:
        feed_until_stopped(joined, monitor.on_batch, args.duration)
    finally:
        monitor.close()
    print(monitor.summary_line("📊 final summary"), flush=True)
    return 0


def rate_source_of(args: argparse.Namespace) -> Optional[RateSource]:
    """The USDT/USD rate source of ``--usdt-rate``, or None with ``--usdt-as-usd``."""
    if getattr(args, "usdt_as_usd", False):
        return None
    return parse_rate_source(getattr(args, "usdt_rate", DEFAULT_RATE_VENUE))


def pricing_text(rate_source: Optional[RateSource]) -> str:
    """How USDT quotes are priced, for the start line."""
    if rate_source is None:
        return "USDT read as USD (--usdt-as-usd)"
    return f"USDT quotes priced in USD through {rate_source.describe()} (bid/ask side by side)"


def parse_urls(text: Optional[str], venues: Sequence[str]) -> Dict[str, Optional[str]]:
    """``--url "name=ws://...,name=ws://..."`` → ``{venue: url}`` for every venue (None: the
    venue's own exchange endpoint); ``ValueError`` naming the entry that cannot be read."""
    urls: Dict[str, Optional[str]] = {v: None for v in venues}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, url = part.partition("=")
        name, url = name.strip(), url.strip()
        if not sep or not url:
            raise ValueError(f"--url: cannot read {part!r}; expected e.g. "
                             f"{venues[0]}=ws://127.0.0.1:8765")
        if name not in urls:
            raise ValueError(f"--url: unknown venue {name!r} (venues: {', '.join(venues)})")
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"--url: {name}={url!r} is not a ws:// or wss:// address")
        urls[name] = url
    return urls


#: The GIL switch interval while the direct path runs (Python's default is 5 ms).
DIRECT_SWITCH_INTERVAL_S = 0.0005


def run_direct(args: argparse.Namespace) -> int:
    """``--direct``: every venue's collector connection loop in this process, each record
    decided on as it arrives (:class:`ArrivalDecision` behind a
    :class:`~sabot.collectors.direct.DecisionSink`) and produced to the venue's Kafka topic
    (and written to ``--parquet-dir/<venue>.parquet`` when asked).

    The exit code follows the collectors' rules (:mod:`sabot.apps.collect`): 0 when every
    record reached every sink and every decision was made; 1 when records were not delivered
    to Kafka or not written to Parquet, the broker could not be reached at start, a venue
    accepted none of the symbols, or a decision failed.  Raises ``ValueError`` for a usage
    mistake (exit code 2 from :func:`command`)."""
    import asyncio

    from confluent_kafka import KafkaException

    from sabot.apps.collect import _summary, book_path, book_topic, trades_path, trades_topic
    from sabot.collectors.base import UnknownChannelError
    from sabot.collectors.connection import ConnectionSettings, Stats, run_collector
    from sabot.collectors.direct import DirectDecisions
    from sabot.collectors.sinks import KafkaSink, KafkaUnavailable, ParquetSink
    from sabot.kafka import KafkaConfigError

    if args.align != "arrival":
        raise ValueError(f"--direct decides on arrival; --align {args.align} reads Kafka")
    venues = venue_names()
    fees = parse_fees(args.fees, venues)
    urls = parse_urls(args.url, venues)
    rate_source = rate_source_of(args)
    kafka_config = kafka_config_from_args(args)
    bootstrap = args.bootstrap
    if bootstrap is None and "bootstrap.servers" not in kafka_config:
        bootstrap = os.environ.get("SABOT_KAFKA_BOOTSTRAP") or "localhost:19092"
    channels = parse_direct_channels(args.channels)
    collectors, sinks, kafkas, parquets, stats = {}, {}, {}, {}, {}
    topics = {"ticker": lambda v: get_venue(v).ticker_topic, "trades": trades_topic,
              "book": book_topic}
    for v in venues:
        cls = get_venue(v).collector_class
        aliases = USDT_AS_USD if rate_source is None else DEFAULT_QUOTE_ALIASES
        try:
            collectors[v] = (cls(list(cls.default_symbols), quote_aliases=aliases)
                             if channels == ("ticker",) else
                             cls(list(cls.default_symbols), quote_aliases=aliases, channels=channels))
        except UnknownChannelError as exc:
            raise ValueError(f"--channels: {v}: {exc}") from None
        local_rest = _local_rest_url(urls[v])
        if "book" in channels and getattr(collectors[v], "rest_url", None) and local_rest:
            collectors[v].rest_url = local_rest  # the local server serves the book snapshots
        kafkas[v] = {}
        for ch in channels:
            sink_cls = getattr(cls, "kafka_sink", KafkaSink) if ch == "ticker" else KafkaSink
            try:
                kafka = sink_cls(bootstrap, topics[ch](v), kafka_config=kafka_config,
                                 flush_timeout=args.flush_timeout)
            except (KafkaException, KafkaConfigError, ValueError, TypeError) as exc:
                raise ValueError(f"Kafka client configuration refused: {exc}") from None
            try:
                kafka.check(args.connect_timeout)
            except KafkaUnavailable as exc:
                log.error("%s", exc)
                return 1
            kafkas[v][ch] = kafka
        stats[v] = Stats()
    for v in venues if args.parquet_dir is not None else ():  # once Kafka answered
        cls = get_venue(v).collector_class
        path = Path(args.parquet_dir) / f"{v}.parquet"
        paths = {"ticker": path, "trades": trades_path(path), "book": book_path(path)}
        parquets[v] = {}
        for ch in channels:
            sink_cls = getattr(cls, "parquet_sink", ParquetSink) if ch == "ticker" else ParquetSink
            extra = {} if ch == "ticker" else {"channel": ch}
            try:
                parquets[v][ch] = sink_cls(paths[ch], v, row_group_seconds=args.row_group_seconds,
                                           background=True, **extra)
            except OSError as exc:
                raise ValueError(f"--parquet-dir {args.parquet_dir}: cannot write there "
                                 f"({exc.strerror or exc})") from None
    monitor = Monitor(fees, args.min_edge_bps, args.output, args.summary_json, args.summary_every,
                      venues=venues, tolerance_ms=args.tolerance_ms, rate_source=rate_source,
                      rate_max_age_ms=args.rate_max_age_ms)
    decisions = DirectDecisions(ArrivalDecision(monitor, args.tolerance_ms), DECISION_SCHEMA,
                                record_path=args.record_arrivals)
    for v in venues:  # per channel: the tickers also to the decision
        routes = {ch: [kafkas[v][ch], *([parquets[v][ch]] if v in parquets else [])]
                  for ch in channels}
        routes["ticker"].insert(0, decisions.sink(v))
        sinks[v] = routes if channels != ("ticker",) else routes["ticker"]
    print(f"Arbitrage monitor, direct from the collectors (Kafka {bootstrap or kafka_config.get('bootstrap.servers')} "
          "records every message): fees (bps) "
          + ", ".join(f"{v}={f:g}" for v, f in fees.items())
          + f", min edge {args.min_edge_bps:g} bps, ASOF tolerance {args.tolerance_ms:g} ms, "
          f"alignment: arrival; {pricing_text(rate_source)}", flush=True)

    async def main() -> None:
        stops = {v: asyncio.Event() for v in venues}
        loop = asyncio.get_running_loop()

        def stop_all(*_: object) -> None:
            for event in stops.values():
                event.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop_all)
        timer = loop.call_later(args.duration, stop_all) if args.duration else None
        try:
            await asyncio.gather(*(run_collector(
                collectors[v], sinks[v],
                ConnectionSettings(url=urls[v], status_interval=args.status_interval,
                                   subscribe_line=f"{v}: Subscribed; streaming to the monitor and "
                                                  + " and ".join(f"Kafka topic '{k.topic}'"
                                                                 for k in kafkas[v].values())),
                stops[v], stats[v]) for v in venues))
        finally:
            if timer:
                timer.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    # Latency: what was allocated to start up is never garbage (the collector's full passes
    # then walk only what the run allocates), and another thread holding the GIL (the Parquet
    # writer, the summary writer) gives it back to the event loop within 0.5 ms, not 5 ms.
    gc.collect()
    gc.freeze()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, DIRECT_SWITCH_INTERVAL_S))
    try:
        asyncio.run(main())
    finally:
        sys.setswitchinterval(switch)
        gc.unfreeze()  # (a caller in the same process gets its collector back as it was)
        decisions.close()
        for v in venues:
            for sink in [*kafkas[v].values(), *parquets.get(v, {}).values()]:
                try:
                    sink.close()
                except Exception:  # one failing sink must not stop the others from closing
                    log.exception("%s: closing sink %r failed", v, sink)
        monitor.close()
    codes = [_summary(v, stats[v], list(kafkas[v].values()), list(parquets.get(v, {}).values()),
                      None) for v in venues]
    print(monitor.summary_line("📊 final summary"), flush=True)
    if decisions.errors or decisions.rejected:
        log.error("direct decisions: %d failed, %d records could not be decided on",
                  decisions.errors, decisions.rejected)
        return 1
    return max(codes)


def parse_direct_channels(text: Optional[str]) -> Tuple[str, ...]:
    """``--channels`` of the direct path: a comma-separated list that includes ``ticker`` (the
    decision reads it); ``ValueError`` in one line otherwise."""
    channels = tuple(dict.fromkeys(c.strip() for c in (text or "ticker").split(",") if c.strip()))
    if "ticker" not in channels:
        raise ValueError(f"--channels {text!r}: the direct path decides on the tickers; include ticker")
    unknown = [c for c in channels if c not in ("ticker", "trades", "book")]
    if unknown:
        raise ValueError(f"--channels: unknown channel {unknown[0]!r}; accepted: ticker, trades, book")
    return channels


def _local_rest_url(ws_url: Optional[str]) -> Optional[str]:
    """``http://host:port`` of a local exchange server's WebSocket address (it serves the REST
    book snapshots on the same port); None for any other address."""
    if not ws_url or "://" not in ws_url:
        return None
    hostport = ws_url.split("://", 1)[1].split("/", 1)[0]
    host = hostport.rsplit(":", 1)[0].strip("[]")
    return f"http://{hostport}" if host in ("127.0.0.1", "localhost", "::1") else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The monitor's options (``sabot monitor`` and ``python -m sabot.apps.monitor``)."""
    p.add_argument("--bootstrap", default=None,
                   help="Kafka bootstrap servers (else bootstrap.servers from --kafka-config, else "
                        "env SABOT_KAFKA_BOOTSTRAP, else localhost:19092)")
    add_kafka_config_argument(p)
    p.add_argument("--connect-timeout", type=float, default=8.0,
                   help="give up when no broker answers at --bootstrap within this many seconds "
                        "(default %(default)s)")
    p.add_argument("--fees", default=DEFAULT_FEES,
                   help="taker fee per venue in bps, e.g. %(default)s (or one number for all)")
    p.add_argument("--min-edge-bps", type=float, default=0.0, help="smallest net edge to report")
    p.add_argument("--tolerance-ms", type=float, default=TOLERANCE_MS, help="ASOF tolerance")
    usdt = p.add_mutually_exclusive_group()
    usdt.add_argument("--usdt-rate", default=DEFAULT_RATE_VENUE, metavar="VENUE",
                      help="price USDT quotes in USD through this venue's live USDT/USD quotes: "
                           "bid x rate bid, ask x rate ask (default %(default)s)")
    usdt.add_argument("--usdt-as-usd", action="store_true",
                      help="read USDT as USD instead (BTC/USDT compared with BTC/USD as if the "
                           "USDT/USD rate were 1)")
    p.add_argument("--rate-max-age-ms", type=float, default=DEFAULT_MAX_AGE_MS,
                   help="oldest USDT/USD rate (relative to the quote) a conversion may use; a "
                        "quote without one is skipped and counted (default %(default)g)")
    p.add_argument("--align", choices=ALIGNMENTS, default="arrival",
                   help="arrival: decide on each quote as it arrives, against the latest quote of "
                        "the other venues (live); event-time: deterministic event-time ASOF "
                        "joins on the rows of the first registered venue (replay, research) "
                        "(default %(default)s)")
    p.add_argument("--fetch-wait-max-ms", type=int, default=LIVE_FETCH_WAIT_MAX_MS,
                   help="consumer fetch.wait.max.ms with --align arrival (default %(default)s; the "
                        "embedded broker sleeps this long per fetch, and stops answering "
                        "fetches that come much faster than this after a while)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--output", type=Path, default=None,
                   help="JSON lines record of opportunities: one 'open' and one 'close' record "
                        "each")
    p.add_argument("--summary-json", type=Path, default=None,
                   help="keep a JSON summary (counts, latencies) here, rewritten twice a second")
    p.add_argument("--summary-every", type=float, default=10.0, help="seconds between summary lines")
    p.add_argument("--group-id", default=None, help="consumer group prefix (default: a fresh one)")
    p.add_argument("--from-beginning", action="store_true", help="read the topics from their start")
    p.add_argument("--fast-groups", action="store_true",
                   help="short consumer-group timeouts (embedded broker only; real Kafka rejects them)")
    direct = p.add_argument_group(
        "direct path", "--direct: run every venue's collector in this process and decide on each "
                       "record as it arrives, while still producing every record to its Kafka topic")
    direct.add_argument("--direct", action="store_true",
                        help="collect in this process instead of reading the ticker topics")
    direct.add_argument("--url", default=None, metavar="VENUE=URL,...",
                        help="WebSocket endpoint per venue, e.g. coinbase=ws://127.0.0.1:8765 "
                             "(default: each exchange's own)")
    direct.add_argument("--channels", default=None, metavar="LIST",
                        help="channels each collector records over its one connection: ticker "
                             "(always: the decision reads it), trades, book (default ticker); "
                             "with book on, Coinbase's tickers follow its book")
    direct.add_argument("--parquet-dir", type=Path, default=None,
                        help="also write each venue's records to DIR/<venue>.parquet")
    direct.add_argument("--row-group-seconds", type=float, default=10.0,
                        help="Parquet row group at least every N s (default %(default)g)")
    direct.add_argument("--flush-timeout", type=float, default=30.0,
                        help="seconds to wait at exit for Kafka to acknowledge what was produced; "
                             "the rest is reported as undelivered (exit code 1) (default %(default)g)")
    direct.add_argument("--status-interval", type=float, default=30.0,
                        help="seconds between the collectors' status lines (default %(default)g)")
    direct.add_argument("--record-arrivals", type=Path, default=None, metavar="FILE",
                        help="write every record decided on, in arrival order, as JSON lines "
                             "(batch number and record) to replay a run")


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
        return run_direct(args) if getattr(args, "direct", False) else run(args)
    except (ValueError, BrokerUnreachableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl+C before streaming began (e.g. during the broker check)
        log.info("interrupted before streaming started")
        return 130


def main(argv: Optional[Iterable[str]] = None, prog: Optional[str] = None) -> int:
    return command(build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
