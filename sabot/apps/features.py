"""Trade- and book-based features per venue and symbol, from recorded or live data.

    sabot research features --parquet DIR [--venue V ...] [--bar 1s]
                            [--vpin-bucket-volume X] [--output FILE.parquet]

reads the collectors' trades files (``*-trades.parquet``, ``sabot collect --channels trades``)
and book files (``*-book.parquet``, ``--channels book``) under ``DIR`` and computes, per venue
and symbol, with the Sabot kernels (``by="symbol"``, state per symbol):

* from trades: ``signed_volume`` (+size for a buy, −size for a sell), ``vwap`` (cumulative
  Σp·q/Σq), ``vpin`` (Easley, López de Prado & O'Hara 2012, equal-volume buckets) and
  ``kyle_lambda`` (the OLS slope of the price change ``price_diff1`` on the signed volume over
  the last ``kyle_window`` trades).  A trade's sign is the aggressor side the record carries
  (``sign="side"``, the default: the venue says who initiated the trade); ``sign="tick"``
  signs by the tick rule instead (``trade_sign``), for data without a reliable side;
* from book rows: ``ofi`` (Cont, Kukanov & Stoikov 2014, on the best levels), ``l1_imbalance``
  (best level), ``depth_imbalance`` over the top ``n_levels`` levels and the multi-level OFI
  ``ofi_1 .. ofi_N`` (Xu, Gould & Howison 2018: the OFI of each of those levels).

:func:`trade_features` and :func:`book_features` take a table (recorded data) or a
:class:`sabot.api.Stream` (live: ``Stream.from_kafka(..., "<venue>-trades",
schema=TRADE_SCHEMA)``), where they add one ``.map`` whose kernels keep their state in the
operator (checkpointed with the stream).  The command aggregates the rows into bars of
``--bar`` per (venue, symbol) (:func:`feature_bars`) and writes those to Parquet.
"""
from __future__ import annotations

import argparse
import functools
import logging
import numbers
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sabot.fintech import (depth_imbalance, diff, kyle_lambda, l1_imbalance, multi_level_ofi,
                           ofi, signed_volume, tick_rule, vpin, vwap)
from sabot.timeunits import duration_ns

log = logging.getLogger(__name__)

__all__ = ["BOOK_FEATURES", "TRADE_FEATURES", "auto_bucket_volume", "book_features", "feature_bars", "features",
           "read_recorded", "summary", "trade_features"]

#: Columns :func:`trade_features` appends (``trade_sign`` too with ``sign="tick"``).
TRADE_FEATURES = ("signed_volume", "vwap", "vpin", "price_diff1", "kyle_lambda")
#: Columns :func:`book_features` appends, then ``ofi_1 .. ofi_N`` (the multi-level OFI).
BOOK_FEATURES = ("ofi", "l1_imbalance", "depth_imbalance")

#: Buckets in one VPIN value (Easley, López de Prado & O'Hara use 50).
DEFAULT_VPIN_BUCKETS = 50
#: Without ``--vpin-bucket-volume``, a symbol's bucket is a round size (1, 2 or 5 × 10^k) of at
#: most its recorded volume over this many buckets (:func:`auto_bucket_volume`).
AUTO_BUCKETS_PER_RECORDING = 4 * DEFAULT_VPIN_BUCKETS
DEFAULT_KYLE_WINDOW = 50
DEFAULT_DEPTH_LEVELS = 5
SIGNS = ("side", "tick")

Tabular = Union[pa.Table, pa.RecordBatch]


# ---------------------------------------------------------------------------------------------
# Row features: one function per record kind, for tables and Streams alike
# ---------------------------------------------------------------------------------------------
def _trade_step(batch: Tabular, *, vpin_bucket_volume: float, vpin_buckets: int,
                kyle_window: int, sign: str, by: str) -> Tabular:
    """The trade features of one batch; every stateful kernel is a function form, so inside a
    Stream operator each keeps its state in the operator's scope."""
    side_column = "side"
    if sign == "tick":
        batch = tick_rule(batch, "price", by=by)
        side_column = "trade_sign"
    out = signed_volume(batch, volume_column="size", side_column=side_column)
    out = vwap(out, "price", "size", by=by)
    out = vpin(out, vpin_bucket_volume, vpin_buckets, volume_column="size",
               side_column=side_column, by=by)
    out = diff(out, "price", 1, by=by)
    return kyle_lambda(out, "price_diff1", "signed_volume", kyle_window, by=by)


def _book_step(batch: Tabular, *, n_levels: int, by: str) -> Tabular:
    """The book features of one batch (see :func:`_trade_step` for the state)."""
    out = ofi(batch, by=by)
    out = l1_imbalance(out)
    out = depth_imbalance(out, n_levels)
    return multi_level_ofi(out, n_levels, by=by)


def _whole(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _check(sign: str, vpin_bucket_volume: float, vpin_buckets: int, kyle_window: int) -> None:
    if sign not in SIGNS:
        raise ValueError(f"sign: {sign!r} is not one of {', '.join(SIGNS)}")
    if (isinstance(vpin_bucket_volume, bool) or not isinstance(vpin_bucket_volume, numbers.Real)
            or not 0 < vpin_bucket_volume < float("inf")):
        raise ValueError(f"vpin_bucket_volume: must be a positive number, got {vpin_bucket_volume!r}")
    _whole("vpin_buckets", vpin_buckets, 1)
    _whole("kyle_window", kyle_window, 2)


def _apply(data: Any, step: Any, by: str, what: str) -> Any:
    """``step`` as a ``.map`` of a Stream, or on a whole table at once (fresh state).  A table
    keyed by symbol must hold one venue: the state is per symbol, and two venues' prices of a
    symbol are two series."""
    from sabot.api import Stream

    if isinstance(data, Stream):
        return data.map(step)
    if not isinstance(data, (pa.Table, pa.RecordBatch)):
        from sabot.interop import to_arrow

        data = to_arrow(data, what=f"{what} input")
    if by == "symbol" and "exchange" in data.schema.names:
        venues = pc.unique(data.column("exchange")).drop_null().to_pylist()
        if len(venues) > 1:
            raise ValueError(f"{what}: rows of {len(venues)} venues ({', '.join(sorted(venues))})"
                             f"; give one venue's rows per call (state is per symbol)")
    return step(data)


def trade_features(data: Any, *, vpin_bucket_volume: float, vpin_buckets: int = DEFAULT_VPIN_BUCKETS,
                   kyle_window: int = DEFAULT_KYLE_WINDOW, sign: str = "side",
                   by: str = "symbol") -> Any:
    """Trade records (``price``, ``size``, ``side``, ``symbol``) with :data:`TRADE_FEATURES`
    appended, per ``by``: a table gives a table; a Stream gives the Stream with one more
    ``.map`` (state carried across batches, checkpointed with the stream).

    One venue's trades per call: the state is per symbol, and two venues' prices of one
    symbol are two series.  ``sign="side"`` signs by the recorded aggressor side,
    ``"tick"`` by the tick rule."""
    _check(sign, vpin_bucket_volume, vpin_buckets, kyle_window)
    return _apply(data, functools.partial(
        _trade_step, vpin_bucket_volume=float(vpin_bucket_volume), vpin_buckets=int(vpin_buckets),
        kyle_window=int(kyle_window), sign=sign, by=by), by, "trade_features")


def book_features(data: Any, *, n_levels: int = DEFAULT_DEPTH_LEVELS, by: str = "symbol") -> Any:
    """Book records (``bid``, ``ask``, ``bid_size``, ``ask_size``, ``bid_price_i``,
    ``bid_size_i``, ``ask_price_i``, ``ask_size_i``) with :data:`BOOK_FEATURES` and
    ``ofi_1 .. ofi_<n_levels>`` appended, per ``by``, one venue per call; a table gives a
    table, a Stream the Stream with one more ``.map``."""
    n_levels = _whole("n_levels", n_levels, 1)
    return _apply(data, functools.partial(_book_step, n_levels=n_levels, by=by), by,
                  "book_features")


# ---------------------------------------------------------------------------------------------
# Recorded files
# ---------------------------------------------------------------------------------------------
def read_recorded(folder: Path, kind: str, venues: Optional[Sequence[str]] = None) -> Dict[str, pa.Table]:
    """Every ``*-<kind>.parquet`` file under ``folder`` (kind ``trades`` or ``book``), in name
    order, as one table per venue (the ``exchange`` column), rows in recorded order."""
    files = sorted(folder.glob(f"*-{kind}.parquet"))
    parts: Dict[str, List[pa.Table]] = {}
    for path in files:
        table = pq.read_table(path)
        if "exchange" not in table.column_names:
            raise ValueError(f"{path}: no 'exchange' column; not a {kind} file of sabot collect")
        for venue in pc.unique(table.column("exchange")).to_pylist():
            if venues and venue not in venues:
                continue
            parts.setdefault(venue, []).append(
                table.filter(pc.equal(table.column("exchange"), venue)))
    return {v: pa.concat_tables(p, promote_options="default") for v, p in sorted(parts.items())}


def _symbols(table: pa.Table) -> List[str]:
    return sorted(pc.unique(table.column("symbol")).to_pylist())


def auto_bucket_volume(total_volume: float, n_buckets: int = AUTO_BUCKETS_PER_RECORDING) -> float:
    """The VPIN bucket volume for a symbol that traded ``total_volume``: the largest 1, 2 or
    5 × 10^k not above ``total_volume / n_buckets`` (so at least ``n_buckets`` buckets fill).
    Round, because a bucket of exactly total / n would end on the recording's last trade, where
    rounding alone decides whether the last bucket is full; and round sizes are what one
    compares across days.  1.0 when nothing traded."""
    target = total_volume / n_buckets
    if not target > 0 or not np.isfinite(target):
        return 1.0
    k = 10.0 ** np.floor(np.log10(target))
    return float(max(m * k for m in (1.0, 2.0, 5.0) if m * k <= target * (1 + 1e-12)))


def _venue_trade_features(table: pa.Table, vpin_bucket_volume: Optional[float],
                          vpin_buckets: int, kyle_window: int, sign: str) -> pa.Table:
    """One venue's trades with their features.  With a bucket volume every symbol uses it;
    without, each symbol's bucket is :func:`auto_bucket_volume` of its recorded volume
    (symbols trade in units too different for one bucket size)."""
    if vpin_bucket_volume is not None:
        return trade_features(table, vpin_bucket_volume=vpin_bucket_volume,
                              vpin_buckets=vpin_buckets, kyle_window=kyle_window, sign=sign)
    out = []
    for symbol in _symbols(table):
        rows = table.filter(pc.equal(table.column("symbol"), symbol))
        total = pc.sum(rows.column("size")).as_py() or 0.0
        if not total > 0:
            log.warning("%s: no traded volume; its VPIN is null", symbol)
        bucket = auto_bucket_volume(total)
        out.append(trade_features(rows, vpin_bucket_volume=bucket, vpin_buckets=vpin_buckets,
                                  kyle_window=kyle_window, sign=sign))
    return pa.concat_tables(out)


def _bar_column(table: pa.Table, bar_ns: int) -> pa.Array:
    ts = pc.cast(table.column("timestamp"), pa.int64()).to_numpy()
    return pa.array((ts // bar_ns) * bar_ns, pa.int64()).cast(pa.timestamp("ns", tz="UTC"))


def feature_bars(trades: Optional[pa.Table], book: Optional[pa.Table], bar_ns: int) -> pa.Table:
    """Feature rows in bars of ``bar_ns`` per (exchange, symbol, bar start):

    ``trades``, ``volume``, ``bar_vwap`` (Σp·q/Σq within the bar), ``signed_volume`` (Σ), the
    bar's last ``vwap`` (cumulative), ``vpin`` and ``kyle_lambda``; ``book_updates``, ``ofi``
    and ``ofi_1 .. ofi_N`` (Σ within the bar: OFI adds up over intervals) and the last
    ``l1_imbalance`` and ``depth_imbalance``.  A "last" is the bar's last non-null value.  A bar with trades but
    no book rows (or the reverse) has nulls for the other side's columns."""
    keys = ["exchange", "symbol", "bar"]
    frames = []
    if trades is not None and trades.num_rows:
        t = trades.append_column("bar", _bar_column(trades, bar_ns)).append_column(
            "pq", pc.multiply(trades.column("price"), trades.column("size")))
        g = t.group_by(keys, use_threads=False).aggregate([
            ("price", "count"), ("size", "sum"), ("pq", "sum"), ("signed_volume", "sum"),
            ("vwap", "last"), ("vpin", "last"), ("kyle_lambda", "last")])
        frames.append(pa.table({
            **{k: g.column(k) for k in keys},
            "trades": g.column("price_count"), "volume": g.column("size_sum"),
            "bar_vwap": pc.divide(g.column("pq_sum"), g.column("size_sum")),
            "signed_volume": g.column("signed_volume_sum"), "vwap": g.column("vwap_last"),
            "vpin": g.column("vpin_last"), "kyle_lambda": g.column("kyle_lambda_last")}))
    if book is not None and book.num_rows:
        b = book.append_column("bar", _bar_column(book, bar_ns))
        levels = [c for c in book.column_names if c.startswith("ofi_")]
        g = b.group_by(keys, use_threads=False).aggregate([
            ("timestamp", "count"), ("ofi", "sum"), ("l1_imbalance", "last"),
            ("depth_imbalance", "last")] + [(c, "sum") for c in levels])
        frames.append(pa.table({
            **{k: g.column(k) for k in keys},
            "book_updates": g.column("timestamp_count"), "ofi": g.column("ofi_sum"),
            "l1_imbalance": g.column("l1_imbalance_last"),
            "depth_imbalance": g.column("depth_imbalance_last"),
            **{c: g.column(f"{c}_sum") for c in levels}}))
    if not frames:
        raise ValueError("no trade or book rows to make bars of")
    out = frames[0] if len(frames) == 1 else frames[0].join(
        frames[1], keys, join_type="full outer", use_threads=False, coalesce_keys=True)
    return out.sort_by([(k, "ascending") for k in keys])


def summary(trades: Optional[pa.Table], book: Optional[pa.Table]) -> List[dict]:
    """One dict per (exchange, symbol): trade and book row counts, volume, the final
    cumulative VWAP, the last VPIN and Kyle's lambda, total OFI, mean imbalances."""
    rows: Dict[Tuple[str, str], dict] = {}
    if trades is not None and trades.num_rows:
        g = trades.group_by(["exchange", "symbol"], use_threads=False).aggregate([
            ("price", "count"), ("size", "sum"), ("vwap", "last"), ("vpin", "last"),
            ("kyle_lambda", "last")])
        for r in g.to_pylist():
            rows.setdefault((r["exchange"], r["symbol"]), {}).update(
                trades=r["price_count"], volume=r["size_sum"], vwap=r["vwap_last"],
                vpin=r["vpin_last"], kyle_lambda=r["kyle_lambda_last"])
    if book is not None and book.num_rows:
        g = book.group_by(["exchange", "symbol"], use_threads=False).aggregate([
            ("timestamp", "count"), ("ofi", "sum"), ("l1_imbalance", "mean"),
            ("depth_imbalance", "mean")])
        for r in g.to_pylist():
            rows.setdefault((r["exchange"], r["symbol"]), {}).update(
                book_rows=r["timestamp_count"], ofi=r["ofi_sum"],
                l1_imbalance=r["l1_imbalance_mean"], depth_imbalance=r["depth_imbalance_mean"])
    return [{"exchange": v, "symbol": s, **rows[(v, s)]} for v, s in sorted(rows)]


def features(folder: Path, *, venues: Optional[Sequence[str]] = None,
             vpin_bucket_volume: Optional[float] = None, vpin_buckets: int = DEFAULT_VPIN_BUCKETS,
             kyle_window: int = DEFAULT_KYLE_WINDOW, n_levels: int = DEFAULT_DEPTH_LEVELS,
             sign: str = "side") -> Tuple[Optional[pa.Table], Optional[pa.Table]]:
    """The trade and book feature rows of every venue recorded under ``folder`` (either is
    None when no such file holds rows), venue by venue."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--parquet: {folder} is not a directory")
    trade_tables = read_recorded(folder, "trades", venues)
    book_tables = read_recorded(folder, "book", venues)
    if not trade_tables and not book_tables:
        which = f" of {', '.join(venues)}" if venues else ""
        raise FileNotFoundError(f"no trades or book rows{which} in {folder} "
                                f"(*-trades.parquet, *-book.parquet: sabot collect "
                                f"--channels trades,book)")
    trades, books = [], []
    for kind, tables in (("trades", trade_tables), ("book", book_tables)):
        for venue, table in tables.items():
            if not table.num_rows:
                continue
            try:
                if kind == "trades":
                    trades.append(_venue_trade_features(table, vpin_bucket_volume, vpin_buckets,
                                                        kyle_window, sign))
                else:
                    books.append(book_features(table, n_levels=n_levels))
            except KeyError as exc:             # a column the files lack (older files, --levels)
                raise ValueError(f"{venue} {kind} rows in {folder}: {exc.args[0]}") from None
    return (pa.concat_tables(trades) if trades else None,
            pa.concat_tables(books) if books else None)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def add_features_arguments(p: argparse.ArgumentParser) -> None:
    """``sabot research features``: VWAP, VPIN, Kyle's lambda, signed volume, OFI and depth
    imbalance per venue and symbol from recorded trades and book files."""
    from sabot.clitools import positive_float, positive_int

    p.add_argument("--parquet", type=Path, default=Path("data"),
                   help="directory of the collectors' *-trades.parquet and *-book.parquet files "
                        "(default %(default)s)")
    p.add_argument("--venue", action="append", default=None, metavar="V",
                   help="only this venue (repeatable; default every venue found)")
    p.add_argument("--bar", default="1s", help="bar length of the written rows, e.g. 1s, 1min "
                                               "(default %(default)s)")
    p.add_argument("--vpin-bucket-volume", type=positive_float, default=None, metavar="X",
                   help="VPIN bucket volume for every symbol (default: per symbol, the largest "
                        "1, 2 or 5 x 10^k not above its recorded volume / "
                        f"{AUTO_BUCKETS_PER_RECORDING})")
    p.add_argument("--vpin-buckets", type=positive_int, default=DEFAULT_VPIN_BUCKETS,
                   help="buckets per VPIN value (default %(default)s)")
    p.add_argument("--kyle-window", type=positive_int, default=DEFAULT_KYLE_WINDOW,
                   help="trades per Kyle's lambda regression (default %(default)s)")
    p.add_argument("--levels", type=positive_int, default=DEFAULT_DEPTH_LEVELS,
                   help="book levels of the depth imbalance and the multi-level OFI "
                        "(default %(default)s)")
    p.add_argument("--sign", choices=SIGNS, default="side",
                   help="trade sign: the recorded aggressor side (default) or the tick rule")
    p.add_argument("--output", type=Path, default=None,
                   help="feature bars Parquet (default <DIR>/trade_book_features.parquet, "
                        "apart from the ticker features' features.parquet)")
    p.set_defaults(mode="features")


def _fmt(x: Any, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)


def print_summary(rows: List[dict], out: Any = None) -> None:
    """The per-(venue, symbol) table on ``out`` (stdout)."""
    out = out or sys.stdout
    print(f"{'venue':<10} {'symbol':<12} {'trades':>7} {'volume':>12} {'vwap':>12} {'vpin':>6} "
          f"{'kyle':>10} {'book':>7} {'ofi':>11} {'imb L1':>7} {'imb LN':>7}", file=out)
    for r in rows:
        print(f"{r['exchange']:<10} {r['symbol']:<12} {_fmt(r.get('trades'), '7d')} "
              f"{_fmt(r.get('volume'), '12.4f')} {_fmt(r.get('vwap'), '12.4f')} "
              f"{_fmt(r.get('vpin'), '6.3f')} {_fmt(r.get('kyle_lambda'), '10.3e')} "
              f"{_fmt(r.get('book_rows'), '7d')} {_fmt(r.get('ofi'), '11.4f')} "
              f"{_fmt(r.get('l1_imbalance'), '7.3f')} {_fmt(r.get('depth_imbalance'), '7.3f')}",
              file=out)


def features_command(args: argparse.Namespace) -> int:
    """Run ``sabot research features``; bad options and missing files raise ValueError /
    FileNotFoundError, which the research command prints as one line (exit 2)."""
    bar_ns = duration_ns(args.bar, "--bar")
    trades, book = features(args.parquet, venues=args.venue,
                            vpin_bucket_volume=args.vpin_bucket_volume,
                            vpin_buckets=args.vpin_buckets, kyle_window=args.kyle_window,
                            n_levels=args.levels, sign=args.sign)
    bars = feature_bars(trades, book, bar_ns)
    output = args.output or args.parquet / "trade_book_features.parquet"
    output.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(bars, output)
    print_summary(summary(trades, book))
    print(f"wrote {bars.num_rows:,} feature bars ({args.bar}) to {output}")
    return 0
