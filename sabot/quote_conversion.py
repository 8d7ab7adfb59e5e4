"""Quotes in one quote currency priced in another through a live rate (``BTC/USDT`` as ``BTC/USD``).

USDT is its own quote currency: Binance's ``BTCUSDT`` is ``BTC/USDT``, not ``BTC/USD``.  To
compare it with a USD book, each quote is converted through the latest quote of a venue that
lists the rate (``USDT/USD`` on Kraken, by default), taking the side a trade would take::

    bid_usd = bid_usdt · rate_bid     sell BTC for USDT, then sell the USDT for USD at the rate's bid
    ask_usd = ask_usdt · rate_ask     buy USDT with USD at the rate's ask, then buy BTC with it

so the converted spread is the quote's spread widened by the rate's: an edge computed on converted
quotes is net of the conversion (its spread; a fee on the conversion leg is not charged, as an
arbitrageur holding both currencies converts rarely, not per trade).  The converted row keeps its
venue and time, its ``symbol`` becomes ``BASE/USD``, and it carries the multipliers it was priced
with, ``fx_bid`` and ``fx_ask`` (null on a row that needed no conversion).

A quote is priced only with a rate no older than ``max_age_ms`` relative to the quote's own
``timestamp``; a quote without such a rate is not priced: it is skipped and counted (a venue's
USDT quotes do not silently become USD ones).

Two forms, the same arithmetic (:func:`apply_rates`):

* :class:`LiveQuoteConverter`: on arrival, the latest rate received (the live monitor);
* :func:`convert_quotes`: in event time, each quote with the latest rate at or before its
  timestamp, an ASOF join on the quote currency (replays, research, ``--align event-time``).

Folding USDT into USD without a rate stays available as an explicit choice:
``normalize_symbols(batch, quote_aliases=USDT_AS_USD)`` or the commands' ``--usdt-as-usd``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["RateSource", "DEFAULT_RATE_VENUE", "parse_rate_source", "quote_currency",
           "apply_rates", "rate_rows", "LiveQuoteConverter", "convert_quotes"]

log = logging.getLogger(__name__)

#: The venue whose ``USDT/USD`` quotes price USDT books by default.
DEFAULT_RATE_VENUE = "kraken"

#: Default oldest rate (ms, relative to the quote converted) a conversion may use.
DEFAULT_MAX_AGE_MS = 10_000.0


@dataclass(frozen=True)
class RateSource:
    """Where the rate ``currency``/``target`` comes from: ``venue``'s quotes of that symbol."""

    currency: str = "USDT"
    target: str = "USD"
    venue: str = DEFAULT_RATE_VENUE

    @property
    def symbol(self) -> str:
        """The rate's canonical symbol, e.g. ``USDT/USD``."""
        return f"{self.currency}/{self.target}"

    def describe(self) -> str:
        """``"kraken USDT/USD"``: the text the monitor's records and log lines carry."""
        return f"{self.venue} {self.symbol}"


def parse_rate_source(venue: str, currency: str = "USDT", target: str = "USD") -> RateSource:
    """The rate source of ``--usdt-rate VENUE``; ``ValueError`` naming an unregistered venue."""
    from sabot.venues import venue_names

    names = venue_names()
    if venue not in names:
        raise ValueError(f"--usdt-rate: unknown venue {venue!r} (venues: {', '.join(names)})")
    return RateSource(currency, target, venue)


def quote_currency(symbols: pa.Array) -> pa.Array:
    """The quote currency (text after ``/``) of each canonical ``BASE/QUOTE`` symbol."""
    parts = pc.split_pattern(symbols, "/", max_splits=1)
    return pc.list_element(parts, 1)


def _f64(batch: pa.RecordBatch, name: str) -> np.ndarray:
    col = batch.column(batch.schema.get_field_index(name))
    if col.type != pa.float64():
        col = col.cast(pa.float64())
    return col.to_numpy(zero_copy_only=False)


def apply_rates(batch: pa.RecordBatch, needs: np.ndarray, fx_bid: np.ndarray, fx_ask: np.ndarray,
                target: str) -> pa.RecordBatch:
    """``batch`` with the rows where ``needs`` holds priced in ``target``: ``bid · fx_bid``,
    ``ask · fx_ask``, symbol ``BASE/<target>``, and ``fx_bid``/``fx_ask`` columns (null on
    rows that needed no conversion).  Every row of ``needs`` must carry a usable rate."""
    bid, ask = _f64(batch, "bid"), _f64(batch, "ask")
    names = batch.schema.names
    columns = list(batch.columns)
    fields = list(batch.schema)
    for name, values, rate in (("bid", bid, fx_bid), ("ask", ask, fx_ask)):
        i = names.index(name)
        columns[i] = pa.array(np.where(needs, values * rate, values), pa.float64(),
                              mask=np.isnan(values))
        fields[i] = pa.field(name, pa.float64())
    i = names.index("symbol")
    symbols = batch.column(i)
    if needs.any():
        base = pc.list_element(pc.split_pattern(symbols, "/", max_splits=1), 0)
        converted = pc.binary_join_element_wise(base, pa.scalar(target), "/")
        symbols = pc.if_else(pa.array(needs), converted, symbols)
    columns[i] = symbols.cast(pa.string())
    fields[i] = pa.field("symbol", pa.string())
    out = pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields))
    for name, rate in (("fx_bid", fx_bid), ("fx_ask", fx_ask)):
        if name in names:
            out = out.drop_columns([name])
        out = out.append_column(name, pa.array(np.where(needs, rate, np.nan), pa.float64(),
                                               mask=~needs))
    return out


def _native(batch: pa.RecordBatch, target: str) -> pa.RecordBatch:
    """:func:`apply_rates` with no row to price: the same batch (bid, ask and symbol fields as
    it makes them, null ``fx_bid``/``fx_ask``), built without copying when bid and ask are
    float64 columns without nulls or NaN (live quotes, past the quote guard)."""
    names = batch.schema.names
    n = batch.num_rows
    columns = list(batch.columns)
    for name in ("bid", "ask"):
        col = columns[names.index(name)]
        if col.type != pa.float64() or col.null_count:
            break
        values = col.to_numpy(zero_copy_only=False)
        if np.isnan(values).any():
            break
    else:
        fields = list(batch.schema)
        for name, typ in (("bid", pa.float64()), ("ask", pa.float64()), ("symbol", pa.string())):
            i = names.index(name)
            if name == "symbol":
                columns[i] = columns[i].cast(pa.string())
            fields[i] = pa.field(name, typ)
        keep = [i for i, name in enumerate(names) if name not in ("fx_bid", "fx_ask")]
        columns = [columns[i] for i in keep] + [pa.nulls(n, pa.float64())] * 2
        fields = [fields[i] for i in keep] + [pa.field("fx_bid", pa.float64()),
                                              pa.field("fx_ask", pa.float64())]
        return pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields))
    none = np.zeros(n, dtype=bool)
    return apply_rates(batch, none, np.ones(n), np.ones(n), target)


def rate_rows(batch: pa.RecordBatch, source: RateSource) -> np.ndarray:
    """Row indices of ``batch`` that are ``source``'s rate quotes (its venue, its symbol)."""
    sym = batch.column(batch.schema.get_field_index("symbol"))
    mask = pc.equal(sym, source.symbol)
    if "exchange" in batch.schema.names:
        mask = pc.and_(mask, pc.equal(batch.column(batch.schema.get_field_index("exchange")),
                                      source.venue))
    return np.flatnonzero(np.asarray(mask.fill_null(False).to_numpy(zero_copy_only=False)))


def _ns(batch: pa.RecordBatch, name: str) -> np.ndarray:
    col = batch.column(batch.schema.get_field_index(name))
    if pa.types.is_timestamp(col.type):
        if col.type.unit != "ns":
            col = col.cast(pa.timestamp("ns", tz=col.type.tz))
        col = col.view(pa.int64())
    return col.cast(pa.int64()).to_numpy(zero_copy_only=False)


class LiveQuoteConverter:
    """On arrival: prices every quote in ``source.currency`` in ``source.target`` with the
    latest usable rate quote received from ``source.venue`` (see the module docstring).

    Call it on batches of normalised quotes (``exchange``, ``symbol``, ``timestamp``,
    ``bid``, ``ask``); it returns the batch with the convertible rows priced and the rows it
    could not price removed (``None`` when none is left).  ``unpriced`` counts those per venue;
    the first few and every 1000th are logged.  The rate quotes themselves pass through
    unchanged (``USDT/USD`` is a market of its own)."""

    def __init__(self, source: RateSource = RateSource(),
                 max_age_ms: float = DEFAULT_MAX_AGE_MS) -> None:
        if not max_age_ms > 0:
            raise ValueError(f"max_age_ms must be > 0, got {max_age_ms}")
        self.source = source
        self.max_age_ns = int(max_age_ms * 1_000_000)
        #: the rate in use: (timestamp ns, bid, ask), None before the first usable rate quote
        self.rate: Optional[Tuple[int, float, float]] = None
        self.unpriced: Dict[str, int] = {}
        self.converted = 0
        self._suffix = "/" + source.currency

    @property
    def unpriced_total(self) -> int:
        return sum(self.unpriced.values())

    #: Batches of at most this many rows (a live tick) read their symbols as Python strings
    #: rather than through Arrow compute calls, whose fixed cost dominates for a few rows.
    FEW_ROWS = 8

    def _masks(self, batch: pa.RecordBatch) -> Tuple[np.ndarray, np.ndarray]:
        """Per row: whether it is quoted in ``source.currency`` (to be priced), and whether it
        is one of ``source``'s rate quotes (its venue, its symbol)."""
        n = batch.num_rows
        symbols = batch.column(batch.schema.get_field_index("symbol"))
        if n > self.FEW_ROWS:
            needs = np.asarray(pc.ends_with(symbols, self._suffix).fill_null(False)
                               .to_numpy(zero_copy_only=False), dtype=bool)
            is_rate = np.zeros(n, dtype=bool)
            is_rate[rate_rows(batch, self.source)] = True
            return needs, is_rate
        syms = symbols.to_pylist()
        suffix, symbol = self._suffix, self.source.symbol
        needs = np.array([s is not None and s.endswith(suffix) for s in syms], dtype=bool)
        if "exchange" in batch.schema.names:
            venues = batch.column(batch.schema.get_field_index("exchange")).to_pylist()
            venue = self.source.venue
            is_rate = np.array([s == symbol and v == venue for s, v in zip(syms, venues)],
                               dtype=bool)
        else:
            is_rate = np.array([s == symbol for s in syms], dtype=bool)
        return needs, is_rate

    def _rates(self, batch: pa.RecordBatch, is_rate: np.ndarray
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per row, in arrival order, the rate in use once the rows before it were seen: its
        (timestamp ns, bid, ask) - NaN where there is none - and the row's own timestamp; a
        usable rate quote (finite, ``0 < bid <= ask``) becomes the rate from the next row on,
        and the last one stays the rate (``self.rate``) for the batches after this one."""
        n = batch.num_rows
        ts, bid, ask = _ns(batch, "timestamp"), _f64(batch, "bid"), _f64(batch, "ask")
        with np.errstate(invalid="ignore"):
            usable = is_rate & np.isfinite(bid) & np.isfinite(ask) & (0 < bid) & (bid <= ask)
        # the latest usable rate row strictly before each row (-1: none in this batch)
        latest = np.maximum.accumulate(np.where(usable, np.arange(n), -1))
        before = np.concatenate(([-1], latest[:-1]))
        have = before >= 0
        take = np.where(have, before, 0)
        prev = self.rate if self.rate is not None else (np.nan, np.nan, np.nan)
        rate_ts = np.where(have, ts[take], prev[0]) if n else np.empty(0)
        rate_bid = np.where(have, bid[take], prev[1]) if n else np.empty(0)
        rate_ask = np.where(have, ask[take], prev[2]) if n else np.empty(0)
        if usable.any():
            j = int(latest[-1])
            self.rate = (int(ts[j]), float(bid[j]), float(ask[j]))
        return rate_ts, rate_bid, rate_ask, ts

    def _observe_rates(self, batch: pa.RecordBatch) -> None:
        _, is_rate = self._masks(batch)
        if is_rate.any():
            self._rates(batch, is_rate)

    def __call__(self, batch: pa.RecordBatch) -> Optional[pa.RecordBatch]:
        if not batch.num_rows:
            return batch
        needs, is_rate = self._masks(batch)
        if not needs.any():
            if is_rate.any():
                self._rates(batch, is_rate)
            return _native(batch, self.source.target)
        # in arrival order: a rate quote earlier in the batch prices the quotes after it
        n = batch.num_rows
        rate_ts, rate_bid, rate_ask, ts = self._rates(batch, is_rate)
        with np.errstate(invalid="ignore"):
            ok = needs & ~is_rate & np.isfinite(rate_bid) & (rate_ts >= ts - self.max_age_ns)
        fx_bid = np.where(ok, rate_bid, np.nan)
        fx_ask = np.where(ok, rate_ask, np.nan)
        priced = needs & np.isfinite(fx_bid)
        unpriced = needs & ~priced
        self.converted += int(priced.sum())
        out = apply_rates(batch, priced, fx_bid, fx_ask, self.source.target)
        if unpriced.any():
            self._count_unpriced(batch, unpriced)
            keep = ~unpriced
            if not keep.any():
                return None
            out = out.filter(pa.array(keep))
        return out

    def price_one(self, venue: str, symbol: str, t: int, bid: float, ask: float
                  ) -> Optional[Tuple[str, float, float, Optional[float], Optional[float]]]:
        """One quote as Python values, in arrival order: what :meth:`__call__` does for that
        row.  A rate quote of ``source`` (finite, ``0 < bid <= ask``) becomes the rate and passes
        unchanged; a quote in ``source.currency`` is priced - ``(BASE/<target>, bid · fx_bid,
        ask · fx_ask, fx_bid, fx_ask)`` - or counted and ``None`` without a rate no older than
        ``max_age_ms``; any other passes as ``(symbol, bid, ask, None, None)``."""
        if symbol == self.source.symbol and venue == self.source.venue:
            if math.isfinite(bid) and math.isfinite(ask) and 0 < bid <= ask:
                self.rate = (t, bid, ask)
        elif symbol.endswith(self._suffix):
            rate = self.rate
            if rate is None or not rate[0] >= t - self.max_age_ns:
                self.count_unpriced(venue, symbol)
                return None
            self.converted += 1
            return (symbol.split("/", 1)[0] + "/" + self.source.target, bid * rate[1],
                    ask * rate[2], rate[1], rate[2])
        return symbol, bid, ask, None, None

    def _count_unpriced(self, batch: pa.RecordBatch, unpriced: np.ndarray) -> None:
        venues = (batch.column(batch.schema.get_field_index("exchange")).to_pylist()
                  if "exchange" in batch.schema.names else ["?"] * batch.num_rows)
        symbols = batch.column(batch.schema.get_field_index("symbol")).to_pylist()
        for i in np.flatnonzero(unpriced):
            self.count_unpriced(venues[i], symbols[i])

    def count_unpriced(self, venue: str, symbol: str) -> None:
        """Count (and log the first few and every 1000th) a quote of ``venue`` that could not
        be priced."""
        self.unpriced[venue] = self.unpriced.get(venue, 0) + 1
        total = self.unpriced_total
        if total <= 5 or total % 1000 == 0:
            why = ("no rate received yet" if self.rate is None
                   else f"the latest is older than {self.max_age_ns / 1e6:g} ms")
            log.warning("quote #%d not priced in %s: %s %s needs a %s rate (%s)", total,
                        self.source.target, venue, symbol, self.source.describe(), why)


def with_quote_currency(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with a ``quote_currency`` column (the join key of the event-time conversion)."""
    if "quote_currency" in batch.schema.names:
        batch = batch.drop_columns(["quote_currency"])
    return batch.append_column("quote_currency",
                               quote_currency(batch.column(batch.schema.get_field_index("symbol"))))


RATE_SCHEMA = pa.schema([("timestamp", pa.timestamp("ns", tz="UTC")),
                         ("quote_currency", pa.string()),
                         ("fx_bid", pa.float64()), ("fx_ask", pa.float64())])


class RateQuotes:
    """The usable rate quotes of ``source`` in a batch of normalised quotes, as rows of
    :data:`RATE_SCHEMA` keyed by the currency they price (the right side of the event-time
    conversion)."""

    def __init__(self, source: RateSource) -> None:
        self.source = source

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        idx = rate_rows(batch, self.source) if batch.num_rows else np.array([], np.int64)
        if len(idx):
            bid, ask = _f64(batch, "bid")[idx], _f64(batch, "ask")[idx]
            with np.errstate(invalid="ignore"):
                ok = np.isfinite(bid) & np.isfinite(ask) & (bid > 0) & (bid <= ask)
            idx = idx[ok]
        take = pa.array(idx, pa.int64())
        ts = batch.column(batch.schema.get_field_index("timestamp")).take(take)
        if not pa.types.is_timestamp(ts.type):
            ts = ts.cast(pa.int64()).view(pa.timestamp("ns", tz="UTC")) if len(idx) else \
                pa.array([], pa.timestamp("ns", tz="UTC"))
        ts = ts.cast(pa.timestamp("ns", tz="UTC"))
        return pa.RecordBatch.from_arrays(
            [ts, pa.array([self.source.currency] * len(idx), pa.string()),
             pa.array(_f64(batch, "bid")[idx], pa.float64()),
             pa.array(_f64(batch, "ask")[idx], pa.float64())], schema=RATE_SCHEMA)


class EventTimePricing:
    """After the ASOF join of :func:`with_quote_currency` quotes with :class:`RateQuotes`
    (``fx_bid``/``fx_ask`` of the latest rate at or before each quote, within the join's
    tolerance): prices the rows in ``source.currency``, removes the ones without a rate and
    counts them per venue in ``unpriced``."""

    def __init__(self, source: RateSource, unpriced: Optional[Dict[str, int]] = None) -> None:
        self.source = source
        self.unpriced: Dict[str, int] = unpriced if unpriced is not None else {}

    def price(self, batch: pa.RecordBatch) -> Tuple[pa.RecordBatch, np.ndarray]:
        """Every row of ``batch`` with the priceable ones priced, and the mask of the rows in
        ``source.currency`` without a rate (counted in ``unpriced``)."""
        qc = batch.column(batch.schema.get_field_index("quote_currency"))
        needs = np.asarray(pc.equal(qc, self.source.currency).fill_null(False)
                           .to_numpy(zero_copy_only=False), dtype=bool)
        fx_bid, fx_ask = _f64(batch, "fx_bid"), _f64(batch, "fx_ask")
        priced = needs & np.isfinite(fx_bid) & np.isfinite(fx_ask)
        out = apply_rates(batch.drop_columns(["quote_currency"]), priced, fx_bid, fx_ask,
                          self.source.target)
        unpriced = needs & ~priced
        if unpriced.any():
            venues = (batch.column(batch.schema.get_field_index("exchange")).to_pylist()
                      if "exchange" in batch.schema.names else ["?"] * batch.num_rows)
            for i in np.flatnonzero(unpriced):
                self.unpriced[venues[i]] = self.unpriced.get(venues[i], 0) + 1
        return out, unpriced

    def __call__(self, batch: pa.RecordBatch) -> Optional[pa.RecordBatch]:
        out, unpriced = self.price(batch)
        if not unpriced.any():
            return out
        return None if unpriced.all() else out.filter(pa.array(~unpriced))


def convert_quotes(quotes: pa.Table, rates: pa.Table, source: RateSource = RateSource(),
                   max_age_ms: float = DEFAULT_MAX_AGE_MS) -> Tuple[pa.Table, int]:
    """In event time: each quote of ``quotes`` in ``source.currency`` priced with the latest
    ``source`` rate quote of ``rates`` at or before its ``timestamp`` and no older than
    ``max_age_ms`` (an ASOF join on the quote currency).  Returns the priced table (unpriceable
    rows removed) and how many rows could not be priced."""
    from sabot.fintech import asof_join

    right = pa.Table.from_batches([RateQuotes(source)(b) for b in rates.to_batches()],
                                  RATE_SCHEMA).sort_by("timestamp")
    left = quotes.combine_chunks().to_batches()
    left = with_quote_currency(left[0] if left else pa.RecordBatch.from_pylist([], quotes.schema))
    joined = asof_join(pa.Table.from_batches([left]), right, on="timestamp", by="quote_currency",
                       tolerance_ms=max_age_ms).combine_chunks().to_batches()
    batch = joined[0] if joined else None
    if batch is None:  # no rows at all
        return quotes, 0
    out, unpriced = EventTimePricing(source).price(batch)
    return pa.Table.from_batches([out.filter(pa.array(~unpriced))]), int(unpriced.sum())
