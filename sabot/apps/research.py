"""Crypto research: features, a mean-reversion backtest, the arbitrage study, export, live.

    sabot research --parquet data/coinbase.parquet --output features.parquet
    sabot backtest --parquet data/coinbase.parquet --output equity.png [--bar 1min]
    sabot research report --opportunities data/opportunities.jsonl

and, with every mode (``examples/crypto_research_platform.py MODE`` runs the same code)::

    crypto_research_platform.py arbitrage --parquet data/ --output opportunities.parquet
    crypto_research_platform.py export    --parquet data/coinbase.parquet --topic features
    crypto_research_platform.py live      --bootstrap localhost:19092 --topic coinbase-ticker

Features (per symbol, ``by='symbol'``, state carried across batches, so a file read in any
batch size gives the same columns): midprice, quoted_spread, l1_imbalance, microprice,
log_return, ewma, zscore, realized_var, riskmetrics_vol, MACD, RSI, Bollinger bands, CUSUM of the
z-score, historical VaR of the log returns.  One venue per run (the ``exchange`` column must hold
one value; pick one with ``--exchange``), since a symbol's state must see one price series.

Backtest rule, per symbol, on the feature rows in time order (position held from one row to
the next)::

    target = +1 if zscore < -z_entry and rsi < rsi_low      (stretched down: buy)
             -1 if zscore >  z_entry and rsi > rsi_high     (stretched up: sell)
              0 if |zscore| < z_exit                         (back to the mean: flat)
             previous position otherwise (also while zscore or rsi is null)
    r_t     = mid_t / mid_{t-1} - 1
    ret_t   = pos_{t-1} · r_t - |pos_t - pos_{t-1}| · (fee_bps + slippage_bps) / 1e4
    equity  = Π (1 + ret_t)

Sharpe and Sortino come from bar returns, not tick returns: the equity is resampled to bars of
``--bar`` (default one minute; a bar's close is its last tick's equity, a bar without ticks
keeps the previous close) and ``R_k = close_k / close_{k-1} - 1``::

    Sharpe  = mean(R) / std(R, ddof=1)          · √(bars per year)
    Sortino = mean(R) / √(mean(min(R, 0)²))     · √(bars per year)     (365-day year)

With fewer than 30 bars a year cannot be extrapolated: a warning says so and the per-bar
figures are shown instead (marked ``*``; ``annualised: false`` in the JSON).  Max drawdown =
max(1 − equity / running peak) over every tick (not annualised); turnover = Σ|Δpos|; hit rate =
share of the rows held in a position whose ``pos_{t-1}·r_t`` is positive.  The figure (with
matplotlib) shows equity and buy-and-hold over UTC time with a drawdown panel.

The opportunity report turns the arbitrage monitor's open/close records - or recorded quotes
re-evaluated under any fee schedule - into a per-pair table (per day, net edge, duration)::

    sabot research report --opportunities data/opportunities.jsonl
    sabot research report --parquet data/ --fees coinbase=6,kraken=16,binance=10
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sabot.api import Stream
from sabot.apps._common import (BrokerUnreachableError, add_kafka_config_argument,
                                kafka_config_from_args, wait_reachable)
from sabot.fintech import (
    CUSUM, EWMA, MACD, RSI, BollingerBands, HistoricalVaR, LogReturns, RealizedVar,
    RiskMetricsVol, RollingZScore, l1_imbalance, microprice, midprice, quoted_spread,
)

log = logging.getLogger("sabot.research")

SECONDS_PER_YEAR = 365.0 * 24 * 3600
MODES = ("live", "research", "backtest", "arbitrage", "export", "report")
#: What to install for the optional parts (progress bar, equity plot).
RESEARCH_EXTRA_HINT = "pip install 'sabot-marketdata[research]'"


class _NoBar:
    """Stands in for a tqdm progress bar when tqdm is not installed (or no bar is wanted)."""

    def __init__(self, **kwargs: object) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------
class Features:
    """The research feature set; one instance carries every kernel's per-symbol state."""

    def __init__(self, by: str = "symbol", zscore_window: int = 100, var_window: int = 250) -> None:
        self.by = by
        self.kernels = [
            LogReturns(price_column="midprice", by=by),
            EWMA(column="midprice", alpha=0.05, by=by),
            RollingZScore(column="midprice", window=zscore_window, by=by),
            RealizedVar(returns_column="log_return", window=zscore_window, by=by),
            RiskMetricsVol(returns_column="log_return", lambda_param=0.94, by=by),
            MACD(column="midprice", by=by),
            RSI(column="midprice", period=14, by=by),
            BollingerBands(column="midprice", window=20, k=2.0, by=by),
            CUSUM(column="zscore", k=0.5, h=5.0, by=by),
            HistoricalVaR(column="log_return", alpha=0.05, window=var_window, by=by),
        ]
        self.exchange: Optional[str] = None

    def _check_one_venue(self, batch: pa.RecordBatch) -> None:
        if "exchange" not in batch.schema.names or not batch.num_rows:
            return
        values = pc.unique(batch.column("exchange").cast(pa.string())).to_pylist()
        seen = set(values) | ({self.exchange} if self.exchange else set())
        if len(seen) > 1:
            raise ValueError(f"column 'exchange' holds several venues ({', '.join(sorted(map(str, seen)))}); "
                             "features need one venue per run: pass --exchange NAME")
        self.exchange = values[0]

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        self._check_one_venue(batch)
        out = microprice(l1_imbalance(quoted_spread(midprice(batch))))
        for k in self.kernels:
            out = k(out)
        return out


def tick_batches(paths: List[str], exchange: Optional[str], batch_size: int,
                 progress: bool = True) -> Iterator[pa.RecordBatch]:
    """Ticker rows from Parquet (optionally one venue), with a progress bar (when tqdm is
    installed)."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = _NoBar

    total = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    with tqdm(total=total, unit="rows", disable=not progress, file=sys.stderr, leave=False) as bar:
        for batch in Stream.from_parquet(paths, batch_size=batch_size):
            bar.update(batch.num_rows)
            if exchange is not None:
                batch = batch.filter(pc.equal(batch.column("exchange").cast(pa.string()), exchange))
                if not batch.num_rows:
                    continue
            yield batch


#: The columns that make a Parquet file a ticker record file (the channel files ``-trades`` and
#: ``-book`` and the feature outputs lack some of them or carry ``top_changed``/``trade_id``).
_TICKER_COLUMNS = frozenset({"exchange", "symbol", "timestamp", "recv_timestamp", "bid", "ask",
                             "price", "volume_24h"})


def _is_ticker_file(path: Path) -> bool:
    try:
        names = set(pq.read_schema(path).names)
    except (OSError, pa.ArrowException):
        return False
    return _TICKER_COLUMNS <= names and not names & {"top_changed", "trade_id", "ewma"}


def parquet_inputs(where: Path) -> List[str]:
    """The ticker files at ``where``: a file, a glob, or every ticker file in a directory (the
    collectors' ``-trades``/``-book`` files and earlier outputs beside them are left out)."""
    if where.is_dir():
        found = sorted(where.glob("*.parquet"))
        files = [str(p) for p in found if _is_ticker_file(p)]
        skipped = [p.name for p in found if str(p) not in files]
        if skipped:
            log.info("%s: not ticker files, left out: %s", where, ", ".join(skipped))
    else:
        files = sorted(str(p) for p in where.parent.glob(where.name)) if any(c in where.name for c in "*?[") \
            else [str(where)]
    if not files:
        raise FileNotFoundError(f"no Parquet files at {where}")
    return files


def compute_features(paths: List[str], exchange: Optional[str], batch_size: int,
                     progress: bool = True) -> Iterator[pa.RecordBatch]:
    feats = Features()
    for batch in tick_batches(paths, exchange, batch_size, progress):
        yield feats(batch)


def research(args: argparse.Namespace) -> int:
    paths = parquet_inputs(args.parquet)
    output = args.output or Path("data/features.parquet")
    output.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    rows = 0
    last: Dict[str, dict] = {}
    t0 = time.perf_counter()
    try:
        for out in compute_features(paths, args.exchange, args.batch_size, not args.no_progress):
            if writer is None:
                writer = pq.ParquetWriter(output, out.schema)
            writer.write_batch(out)
            rows += out.num_rows
            tail = out.slice(max(out.num_rows - 64, 0)).to_pylist()
            for r in tail:
                last[r["symbol"]] = r
    finally:
        if writer is not None:
            writer.close()
    print(f"wrote {rows:,} feature rows to {output} in {time.perf_counter() - t0:.2f} s")
    print(f"{'symbol':<10} {'midprice':>12} {'zscore':>8} {'rsi':>7} {'rm vol':>10} {'VaR 5%':>10}")
    for sym, r in sorted(last.items()):
        def f(x, fmt):
            return format(x, fmt) if x is not None else "-"
        print(f"{sym:<10} {f(r['midprice'], '12.2f')} {f(r['zscore'], '8.2f')} {f(r['rsi'], '7.1f')} "
              f"{f(r['riskmetrics_vol'], '10.2e')} {f(r['var'], '10.2e')}")
    return 0


# ---------------------------------------------------------------------------------------------
# Backtest
# ---------------------------------------------------------------------------------------------
#: The bar the backtest's returns are resampled to before Sharpe and Sortino (``--bar``).
DEFAULT_BAR = "1min"
#: Fewer bars than this and Sharpe/Sortino are not annualised (the per-bar figures are shown,
#: with a warning): a handful of returns says nothing about a year.
MIN_BARS_TO_ANNUALISE = 30
_BAR_UNITS = {"ms": 1_000_000, "s": 1_000_000_000, "min": 60_000_000_000, "m": 60_000_000_000,
              "h": 3_600_000_000_000, "d": 86_400_000_000_000}


def parse_bar(text: str) -> int:
    """``"1min"``, ``"5s"``, ``"250ms"``, ``"1h"``, ``"1d"`` → nanoseconds (> 0); ValueError
    naming the option and the value otherwise."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)\s*", str(text))
    ns = int(float(m.group(1)) * _BAR_UNITS[m.group(2)]) if m else 0
    if ns <= 0:
        raise ValueError(f"--bar: cannot read {text!r}; expected a positive length such as "
                         f"1min, 5s, 250ms, 1h or 1d")
    return ns


def bar_equity(ts_ns: np.ndarray, equity: np.ndarray, bar_ns: int) -> Tuple[np.ndarray, np.ndarray]:
    """The equity at the close of each bar (bars start at multiples of ``bar_ns`` since the
    epoch; a bar without ticks keeps the previous close), from the first tick's bar to the last
    one's: ``(bar start times ns, closes)``."""
    if not len(ts_ns):
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    ts = np.asarray(ts_ns, dtype=np.int64)
    first = ts[0] // bar_ns
    idx = ts // bar_ns - first
    n = int(idx[-1]) + 1
    closes = np.full(n, np.nan)
    last = np.flatnonzero(np.diff(idx, append=idx[-1] + 1))  # each bar's last tick
    closes[idx[last]] = np.asarray(equity, dtype=float)[last]
    filled = np.maximum.accumulate(np.where(np.isnan(closes), -1, np.arange(n)))
    return (first + np.arange(n)) * bar_ns, closes[filled]


def bar_metrics(ts_ns: np.ndarray, equity: np.ndarray, bar_ns: int) -> dict:
    """Sharpe and Sortino of the bar returns, annualised when there are at least
    :data:`MIN_BARS_TO_ANNUALISE` bars (else None, with ``annualised`` False), and per bar.

    Bar returns: ``close_k / close_{k-1} - 1`` with the first bar measured from the starting
    equity 1.  Sharpe = mean / std (ddof=1); Sortino = mean / downside deviation, the root mean
    square of ``min(return, 0)`` over every bar; annualised by √(bars per year), a year being
    365 days (crypto trades every day)."""
    _, closes = bar_equity(ts_ns, equity, bar_ns)
    ret = np.diff(np.concatenate([[1.0], closes]))
    ret = ret / np.concatenate([[1.0], closes[:-1]]) if len(ret) else ret
    n = len(ret)
    mean = float(np.mean(ret)) if n else float("nan")
    sd = float(np.std(ret, ddof=1)) if n > 1 else float("nan")
    down = float(np.sqrt(np.mean(np.minimum(ret, 0.0) ** 2))) if n else float("nan")
    sharpe_bar = mean / sd if sd > 0 else float("nan")
    sortino_bar = mean / down if down > 0 else float("nan")
    annualised = n >= MIN_BARS_TO_ANNUALISE
    scale = np.sqrt(SECONDS_PER_YEAR * 1e9 / bar_ns)
    return {"bar_s": bar_ns / 1e9, "bars": n, "annualised": annualised,
            "sharpe": float(sharpe_bar * scale) if annualised else None,
            "sortino": float(sortino_bar * scale) if annualised else None,
            "sharpe_per_bar": sharpe_bar, "sortino_per_bar": sortino_bar,
            "mean_return_per_bar": mean, "std_return_per_bar": sd}


def positions(zscore: np.ndarray, rsi: np.ndarray, z_entry: float, z_exit: float,
              rsi_low: float, rsi_high: float) -> np.ndarray:
    """The rule's position after each row (NaN features hold the previous position)."""
    pos = np.zeros(len(zscore))
    p = 0.0
    for i in range(len(zscore)):
        z, r = zscore[i], rsi[i]
        if not (np.isnan(z) or np.isnan(r)):
            if z < -z_entry and r < rsi_low:
                p = 1.0
            elif z > z_entry and r > rsi_high:
                p = -1.0
            elif abs(z) < z_exit:
                p = 0.0
        pos[i] = p
    return pos


def backtest_symbol(ts_ns: np.ndarray, mid: np.ndarray, zscore: np.ndarray, rsi: np.ndarray,
                    args: argparse.Namespace) -> dict:
    pos = positions(zscore, rsi, args.z_entry, args.z_exit, args.rsi_low, args.rsi_high)
    r = np.zeros(len(mid))
    r[1:] = mid[1:] / mid[:-1] - 1.0
    prev = np.concatenate([[0.0], pos[:-1]])
    gross = prev * r
    trades = np.abs(pos - prev)
    ret = gross - trades * (args.fee_bps + args.slippage_bps) / 1e4
    equity = np.cumprod(1.0 + ret)
    dt = float(np.median(np.diff(ts_ns))) / 1e9 if len(ts_ns) > 1 else float("nan")
    peak = np.maximum.accumulate(equity)
    held = prev != 0
    bar_ns = parse_bar(getattr(args, "bar", DEFAULT_BAR))
    return {
        "rows": int(len(mid)), "median_dt_s": dt,
        "span_s": float(ts_ns[-1] - ts_ns[0]) / 1e9 if len(ts_ns) else 0.0,
        **bar_metrics(ts_ns, equity, bar_ns),
        "total_return": float(equity[-1] - 1.0) if len(equity) else 0.0,
        "buy_and_hold_return": float(mid[-1] / mid[0] - 1.0) if len(mid) else 0.0,
        "max_drawdown": float(np.max(1.0 - equity / peak)) if len(equity) else 0.0,
        "turnover": float(trades.sum()), "trades": int(np.count_nonzero(trades)),
        "hit_rate": float(np.mean(gross[held] > 0)) if held.any() else float("nan"),
        "equity": equity, "ts_ns": ts_ns, "mid": mid,
    }


def backtest(args: argparse.Namespace) -> int:
    try:
        import matplotlib
    except ImportError:
        raise ValueError(f"backtest plots its equity curve with matplotlib, which is not "
                         f"installed: {RESEARCH_EXTRA_HINT}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = parquet_inputs(args.parquet)
    cols = ["symbol", "timestamp", "midprice", "zscore", "rsi"]
    parts = [out.select(cols) for out in compute_features(paths, args.exchange, args.batch_size,
                                                           not args.no_progress)]
    if not parts:
        raise ValueError(f"no rows in {args.parquet}")
    table = pa.Table.from_batches(parts)
    results = {}
    for sym in sorted(pc.unique(table.column("symbol")).to_pylist()):
        t = table.filter(pc.equal(table.column("symbol"), sym))
        ts = t.column("timestamp").cast(pa.int64()).to_numpy()
        num = {c: t.column(c).to_numpy(zero_copy_only=False).astype(float) for c in cols[2:]}
        results[sym] = backtest_symbol(ts, num["midprice"], num["zscore"], num["rsi"], args)
    output = args.output or Path("data/equity.png")
    output.parent.mkdir(parents=True, exist_ok=True)
    plot_equity(plt, results, output,
                f"z-score/RSI mean reversion, fee {args.fee_bps:g} bps + slippage "
                f"{args.slippage_bps:g} bps")
    metrics = {s: {k: v for k, v in r.items() if k not in ("equity", "ts_ns", "mid")}
               for s, r in results.items()}
    output.with_suffix(".json").write_text(json.dumps(metrics, indent=2))
    print_backtest(metrics, args.bar)
    print(f"equity curve: {output}; metrics: {output.with_suffix('.json')}")
    return 0


def print_backtest(metrics: Dict[str, dict], bar: str) -> None:
    """The backtest table: annualised Sharpe/Sortino where the span allows, else the per-bar
    figures under a warning that says why."""
    short = [s for s, m in metrics.items() if not m["annualised"]]
    for sym in short:
        m = metrics[sym]
        print(f"warning: {sym}: {m['bars']} bar{'s' if m['bars'] != 1 else ''} of {bar} "
              f"({m['span_s']:.0f} s of data), fewer than {MIN_BARS_TO_ANNUALISE}: Sharpe and Sortino are not annualised; the "
              f"figures shown are per {bar} bar", file=sys.stderr)
    print(f"Sharpe and Sortino from {bar} bars, annualised over 365 days"
          + ("; per bar where marked *" if short else ""))
    print(f"{'symbol':<10} {'rows':>7} {'bars':>6} {'Sharpe':>9} {'Sortino':>9} {'return':>9} "
          f"{'buy&hold':>9} {'max DD':>8} {'turnover':>9} {'hit rate':>9}")
    for sym, m in metrics.items():
        if m["annualised"]:
            sharpe, sortino = f"{m['sharpe']:>9.2f}", f"{m['sortino']:>9.2f}"
        else:
            sharpe, sortino = f"{m['sharpe_per_bar']:>8.4f}*", f"{m['sortino_per_bar']:>8.4f}*"
        print(f"{sym:<10} {m['rows']:>7} {m['bars']:>6} {sharpe} {sortino} "
              f"{m['total_return']:>9.4%} {m['buy_and_hold_return']:>9.4%} "
              f"{m['max_drawdown']:>8.4%} {m['turnover']:>9.0f} {m['hit_rate']:>9.2%}")


def plot_equity(plt, results: Dict[str, dict], output: Path, title: str) -> None:
    """Equity (solid) and buy-and-hold (dashed) per symbol over UTC time, drawdown below."""
    import matplotlib.dates as mdates

    fig, (ax, dd) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1]})
    for sym, res in results.items():
        when = np.asarray(res["ts_ns"], dtype="datetime64[ns]").astype("datetime64[us]").tolist()
        line, = ax.plot(when, res["equity"], label=f"{sym} strategy")
        ax.plot(when, res["mid"] / res["mid"][0], linestyle="--", color=line.get_color(),
                alpha=0.6, label=f"{sym} buy and hold")
        peak = np.maximum.accumulate(res["equity"])
        dd.plot(when, -(1.0 - res["equity"] / peak) * 100, color=line.get_color(), label=sym)
    ax.set_ylabel("equity (start = 1)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    dd.set_ylabel("drawdown (%)")
    dd.set_xlabel("time (UTC)")
    dd.xaxis.set_major_formatter(mdates.ConciseDateFormatter(dd.xaxis.get_major_locator()))
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Arbitrage study on Parquet
# ---------------------------------------------------------------------------------------------
def arbitrage(args: argparse.Namespace) -> int:
    """The arbitrage monitor's decision (:func:`sabot.apps.monitor.opportunities`) on every
    quote of the first registered venue, ASOF-joined with the others' ``<venue>.parquet``."""
    from sabot.apps import monitor as arb
    from sabot.venues import venue_names

    venues = venue_names()
    joined = _joined_quotes(args.parquet, args.tolerance_ms)
    fees = arb.parse_fees(args.fees, venues)
    rows: List[dict] = []
    for batch in joined.to_batches():
        rows.extend(arb.opportunities(batch, fees, args.min_edge_bps, venues))
    output = args.output or Path("data/arbitrage_study.parquet")
    output.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("symbol", pa.string()), ("timestamp_ns", pa.int64()),
                        ("buy_venue", pa.string()), ("sell_venue", pa.string()),
                        ("buy_price", pa.float64()), ("sell_price", pa.float64()),
                        ("gross_bps", pa.float64()), ("net_bps", pa.float64()),
                        ("edge_per_unit", pa.float64())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), output)
    print(f"{joined.num_rows:,} {venues[0]} quotes joined with {', '.join(venues[1:])} (ASOF "
          f"{args.tolerance_ms:g} ms); {len(rows):,} opportunities net of fees -> {output}")
    pairs: Dict[tuple, List[float]] = {}
    for o in rows:
        pairs.setdefault((o["symbol"], o["buy_venue"], o["sell_venue"]), []).append(o["net_bps"])
    for (sym, b, s), nets in sorted(pairs.items()):
        print(f"  {sym:<9} buy {b:<8} sell {s:<8} {len(nets):>6} times, net mean "
              f"{np.mean(nets):.2f} bps, max {np.max(nets):.2f} bps")
    return 0


# ---------------------------------------------------------------------------------------------
# The opportunity report
# ---------------------------------------------------------------------------------------------
REPORT_COLUMNS = ("symbol", "buy_venue", "sell_venue", "opportunities", "per_day",
                  "edge_mean_bps", "edge_median_bps", "edge_best_bps",
                  "duration_p50_s", "duration_p90_s", "duration_p99_s", "unclosed")


_RECORD_FIELDS = {
    "open": ("id", "symbol", "buy_venue", "sell_venue", "opened_ns"),
    "close": ("id", "symbol", "buy_venue", "sell_venue", "opened_ns", "closed_ns", "duration_s",
              "mean_net_bps", "best_net_bps"),
}


def read_opportunity_records(path: Path) -> List[dict]:
    """The monitor's open/close JSON lines; ValueError naming the file, line and what is wrong
    (a line that is not JSON, or a record with no ``event`` - e.g. a file of per-decision
    records)."""
    records = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"--opportunities {path}: {exc.strerror or exc}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise ValueError(f"{path}:{n}: not a JSON line: {line[:80]!r}") from None
        if not isinstance(rec, dict) or rec.get("event") not in ("open", "close"):
            raise ValueError(f"{path}:{n}: not an opportunity open/close record (field 'event' "
                             f"is {rec.get('event') if isinstance(rec, dict) else None!r})")
        for field in _RECORD_FIELDS[rec["event"]]:
            value = rec.get(field)
            numeric = field not in ("id", "symbol", "buy_venue", "sell_venue")
            if value is None or (numeric and (isinstance(value, bool) or not isinstance(value, (int, float))
                                              or not np.isfinite(value))):
                raise ValueError(f"{path}:{n}: {rec['event']} record: field {field!r} is "
                                 f"{value!r}")
        records.append(rec)
    return records


def opportunity_report(records: Sequence[dict], span_ns: Optional[int] = None
                       ) -> Tuple[pa.Table, float]:
    """Per pair (symbol, buy venue, sell venue): opportunities opened, the same scaled to a
    day, the mean and median of each opportunity's mean net edge, the best net edge, and the
    50/90/99th percentiles of the durations (numpy's linear percentiles).  Edges and durations
    come from the close records; an open record without its close (a monitor that did not stop
    cleanly) is counted in ``opportunities`` and ``unclosed``.

    ``span_ns`` is the time observed; by default from the first ``opened_ns`` to the last
    ``closed_ns`` in the records (the monitor may have watched longer: then the daily figure
    is an upper bound).  Returns ``(table, span in seconds)``, sorted by symbol and pair."""
    opens: Dict[tuple, List[dict]] = {}
    closes: Dict[tuple, List[dict]] = {}
    for r in records:
        key = (r["symbol"], r["buy_venue"], r["sell_venue"])
        (opens if r["event"] == "open" else closes).setdefault(key, []).append(r)
    if span_ns is None:
        starts = [r["opened_ns"] for r in records if r["event"] == "open"]
        ends = [r["closed_ns"] for r in records if r["event"] == "close"] or starts
        span_ns = (max(ends) - min(starts)) if starts else 0
    days = span_ns / 86_400e9
    rows = []
    for key in sorted(set(opens) | set(closes)):
        o, c = opens.get(key, []), closes.get(key, [])
        n = len(o)
        edges = np.array([r["mean_net_bps"] for r in c], dtype=float)
        best = np.array([r["best_net_bps"] for r in c], dtype=float)
        durations = np.array([r["duration_s"] for r in c], dtype=float)

        def pct(q: float) -> Optional[float]:
            return float(np.percentile(durations, q)) if len(durations) else None

        closed_ids = {r["id"] for r in c}
        rows.append({"symbol": key[0], "buy_venue": key[1], "sell_venue": key[2],
                     "opportunities": n, "per_day": n / days if days > 0 else None,
                     "edge_mean_bps": float(edges.mean()) if len(edges) else None,
                     "edge_median_bps": float(np.median(edges)) if len(edges) else None,
                     "edge_best_bps": float(best.max()) if len(best) else None,
                     "duration_p50_s": pct(50), "duration_p90_s": pct(90),
                     "duration_p99_s": pct(99),
                     "unclosed": sum(1 for r in o if r["id"] not in closed_ids)})
    schema = pa.schema([("symbol", pa.string()), ("buy_venue", pa.string()),
                        ("sell_venue", pa.string()), ("opportunities", pa.int64()),
                        *[(name, pa.float64()) for name in REPORT_COLUMNS[4:-1]],
                        ("unclosed", pa.int64())])
    return pa.Table.from_pylist(rows, schema=schema), span_ns / 1e9


def replay_opportunities(folder: Path, fees: Dict[str, float], min_edge_bps: float,
                         tolerance_ms: float) -> Tuple[List[dict], int]:
    """The monitor's open/close records for recorded quotes (``<venue>.parquet`` per venue in
    ``folder``) under the fee schedule ``fees``: the event-time joins of ``sabot monitor
    --align event-time`` (each quote of the first venue with the latest of the others), fed to
    :class:`sabot.apps.monitor.OpportunityTracker`; opportunities still open at the end close
    with reason "end".  Returns ``(records, span of the quotes in ns)``."""
    from sabot.apps import monitor as arb

    joined = _joined_quotes(folder, tolerance_ms)
    tracker = arb.OpportunityTracker(fees, min_edge_bps, tuple(fees), tolerance_ms,
                                     run_id="replay")
    records: List[dict] = []
    for batch in joined.to_batches(max_chunksize=65_536):
        records.extend(tracker.update(batch))
    records.extend(tracker.close_all())
    ts = joined.column("timestamp").cast(pa.int64())
    span = int(pc.max(ts).as_py() - pc.min(ts).as_py()) if joined.num_rows else 0
    return records, span


def _joined_quotes(folder: Path, tolerance_ms: float) -> pa.Table:
    """The first registered venue's quotes ASOF-joined with the others' (by symbol, backward,
    within ``tolerance_ms``), from ``<venue>.parquet`` files in ``folder``.

    As the monitor does, USDT quotes are priced in USD through the recorded Kraken ``USDT/USD``
    quotes (the latest at or before each quote, :func:`sabot.quote_conversion.convert_quotes`);
    a USDT quote without a rate is left out and the number is logged."""
    from sabot.apps import monitor as arb
    from sabot.fintech import asof_join, midprice as mid_kernel, normalize_symbols
    from sabot.quote_conversion import RateSource, convert_quotes
    from sabot.venues import venue_names

    venues = venue_names()
    source = RateSource()
    raw = {}
    for v in venues:
        path = Path(folder) / f"{v}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"--parquet {folder}: no {v}.parquet (one file per venue: "
                                    f"{', '.join(f'{x}.parquet' for x in venues)})")
        raw[v] = normalize_symbols(pq.read_table(path)).sort_by([("timestamp", "ascending")])
    rates = raw.get(source.venue)
    tables = {}
    for v, t in raw.items():
        if rates is not None and v != source.venue:
            t, unpriced = convert_quotes(t, rates, source)
            if unpriced:
                log.warning("%s: %d USDT quotes without a %s rate left out", v, unpriced,
                            source.describe())
        for name in ("fx_bid", "fx_ask"):
            if name not in t.schema.names:
                t = t.append_column(name, pa.nulls(t.num_rows, pa.float64()))
        t = mid_kernel(t).select(list(arb.QUOTE_COLUMNS))
        tables[v] = t.sort_by([("timestamp", "ascending")])
    joined = tables[venues[0]]
    for v in venues[1:]:
        joined = asof_join(joined, tables[v], on="timestamp", by="symbol",
                           tolerance_ms=tolerance_ms, exchanges=(venues[0], v))  # names from
        # the venues, not from the rows: a venue with an empty file still gets its columns
    return joined


def print_report(table: pa.Table, span_s: float, source: str) -> None:
    """The report as the setup guide's table (per pair: per day, edge, duration)."""
    rows = table.to_pylist()
    total = sum(r["opportunities"] for r in rows)
    print(f"{total} opportunities in {span_s / 3600:.3f} h ({span_s:.1f} s) of {source}; "
          f"per day = count scaled from that span")

    def f(x: Optional[float], fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    print(f"{'symbol':<10} {'buy -> sell':<20} {'count':>6} {'per day':>10} {'edge mean':>10} "
          f"{'median':>8} {'best':>8} {'dur p50 s':>10} {'p90':>8} {'p99':>8}")
    for r in rows:
        print(f"{r['symbol']:<10} {r['buy_venue'] + ' -> ' + r['sell_venue']:<20} "
              f"{r['opportunities']:>6} {f(r['per_day'], '10.0f')} "
              f"{f(r['edge_mean_bps'], '10.2f')} {f(r['edge_median_bps'], '8.2f')} "
              f"{f(r['edge_best_bps'], '8.2f')} {f(r['duration_p50_s'], '10.3f')} "
              f"{f(r['duration_p90_s'], '8.3f')} {f(r['duration_p99_s'], '8.3f')}")
    unclosed = sum(r["unclosed"] for r in rows)
    if unclosed:
        print(f"warning: {unclosed} opportunities have no close record (the monitor did not stop "
              f"cleanly): counted, without edge or duration", file=sys.stderr)
    print("edges: net of fees, in bps, the mean over each opportunity's evaluations; "
          "duration: event time from opening to the quote that closed it")


def report(args: argparse.Namespace) -> int:
    """``sabot research report``: the per-pair table from the monitor's records
    (``--opportunities``) or re-evaluated from recorded quotes (``--parquet DIR --fees``)."""
    from sabot.apps import monitor as arb
    from sabot.venues import venue_names

    if args.opportunities is not None:
        records = read_opportunity_records(args.opportunities)
        table, span_s = opportunity_report(records)
        source = f"records in {args.opportunities} (first opening to last closing)"
    else:
        fees = arb.parse_fees(args.fees, venue_names())
        records, span_ns = replay_opportunities(args.parquet, fees, args.min_edge_bps,
                                                args.tolerance_ms)
        table, span_s = opportunity_report(records, span_ns)
        source = (f"quotes in {args.parquet} (first to last quote; fees "
                  f"{arb.fees_text(fees)} bps, min edge {args.min_edge_bps:g} bps)")
    print_report(table, span_s, source)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        if args.output.suffix == ".csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, args.output)
        else:
            pq.write_table(table, args.output)
        print(f"report: {args.output}")
    return 0


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """``sabot research report``: per pair, opportunities per day, net edge and duration, from
    the monitor's open/close records or from recorded quotes under any fee schedule."""
    from sabot.apps.monitor import TOLERANCE_MS, fees_text

    src = p.add_mutually_exclusive_group()
    src.add_argument("--opportunities", type=Path, default=None,
                     help="the monitor's JSON lines (sabot monitor --output)")
    src.add_argument("--parquet", type=Path, default=None,
                     help="a directory of recorded quotes, <venue>.parquet each, re-evaluated "
                          "with --fees")
    p.add_argument("--fees", default=fees_text(),
                   help="with --parquet: taker fee per venue in bps (default %(default)s)")
    p.add_argument("--min-edge-bps", type=float, default=0.0)
    p.add_argument("--tolerance-ms", type=float, default=TOLERANCE_MS)
    p.add_argument("--output", type=Path, default=None,
                   help="also write the table: .csv, else Parquet")
    p.set_defaults(mode="report")


# ---------------------------------------------------------------------------------------------
# Export to Kafka, live from Kafka
# ---------------------------------------------------------------------------------------------
def export(args: argparse.Namespace) -> int:
    paths = parquet_inputs(args.parquet)
    kafka_config = kafka_config_from_args(args)
    wait_reachable(args.bootstrap, kafka_config, timeout_s=args.connect_timeout)
    feats = Features()
    stream = Stream.from_batches(tick_batches(paths, args.exchange, args.batch_size,
                                              not args.no_progress)).map(feats)
    stream.to_kafka(args.bootstrap, args.topic, key="symbol", kafka_config=kafka_config)
    total = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    print(f"exported the features of {total:,} rows to Kafka topic '{args.topic}' on {args.bootstrap}")
    return 0


def live(args: argparse.Namespace) -> int:
    import signal

    kafka_config = kafka_config_from_args(args)
    wait_reachable(args.bootstrap, kafka_config, timeout_s=args.connect_timeout)
    feats = Features()
    group = args.group_id or f"sabot-research-{uuid.uuid4().hex[:8]}"
    stream = Stream.from_kafka(args.bootstrap, args.topic, group, from_beginning=args.from_beginning,
                               order_by="timestamp", kafka_config=kafka_config).map(feats)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    if args.duration:
        signal.signal(signal.SIGALRM, stop)
        signal.setitimer(signal.ITIMER_REAL, args.duration)
    writer = None
    rows = 0
    last: Dict[str, dict] = {}
    last_print = time.monotonic()
    try:
        for batch in stream:
            rows += batch.num_rows
            if args.output is not None:
                if writer is None:
                    writer = pq.ParquetWriter(args.output, batch.schema)
                writer.write_batch(batch)
            for r in batch.slice(max(batch.num_rows - 64, 0)).to_pylist():
                last[r["symbol"]] = r
            if time.monotonic() - last_print >= args.print_every:
                last_print = time.monotonic()
                for sym, r in sorted(last.items()):
                    print(f"{sym:<10} mid {r['midprice']:,.2f}  z {r['zscore'] if r['zscore'] is not None else float('nan'):+.2f}  "
                          f"rsi {r['rsi'] if r['rsi'] is not None else float('nan'):.1f}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if writer is not None:
            writer.close()
    print(f"live: {rows:,} feature rows from '{args.topic}'")
    return 0


def _add_input_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parquet", type=Path, default=Path("data"),
                   help="ticker Parquet file, glob or directory (arbitrage: the directory)")
    p.add_argument("--exchange", default=None, help="use only this venue's rows")
    p.add_argument("--batch-size", type=int, default=65_536)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_backtest_arguments(p: argparse.ArgumentParser) -> None:
    bt = p.add_argument_group("backtest")
    bt.add_argument("--z-entry", type=float, default=2.0)
    bt.add_argument("--z-exit", type=float, default=0.5)
    bt.add_argument("--rsi-low", type=float, default=30.0)
    bt.add_argument("--rsi-high", type=float, default=70.0)
    bt.add_argument("--fee-bps", type=float, default=6.0, help="taker fee per trade")
    bt.add_argument("--slippage-bps", type=float, default=1.0, help="slippage per trade")
    bt.add_argument("--bar", default=DEFAULT_BAR,
                    help="returns are resampled to this bar before Sharpe and Sortino, e.g. "
                         f"5s, 1min, 1h, 1d (default %(default)s); fewer than "
                         f"{MIN_BARS_TO_ANNUALISE} bars: per-bar figures, not annualised")


def add_research_arguments(p: argparse.ArgumentParser) -> None:
    """``sabot research``: features of a ticker Parquet file into a features Parquet file."""
    _add_input_arguments(p)
    p.add_argument("--output", type=Path, default=None,
                   help="features Parquet (default data/features.parquet)")
    p.set_defaults(mode="research")
    sub = p.add_subparsers(dest="research_command", metavar="[report|features]", required=False,
                           title="subcommand")
    r = sub.add_parser("report", help="per pair: opportunities per day, net edge, duration "
                                      "('sabot research report --help')",
                       description="Per pair (symbol, buy venue, sell venue): opportunities per "
                                   "day, net edge and duration percentiles, from the arbitrage "
                                   "monitor's open/close records or from recorded quotes "
                                   "re-evaluated under any fee schedule.")
    add_report_arguments(r)
    from sabot.apps.features import add_features_arguments

    f = sub.add_parser("features", help="VWAP, VPIN, Kyle's lambda, OFI, depth imbalance per "
                                        "venue and symbol from recorded trades and books "
                                        "('sabot research features --help')",
                       description=add_features_arguments.__doc__)
    add_features_arguments(f)


def add_backtest_arguments(p: argparse.ArgumentParser) -> None:
    """``sabot backtest``: the mean-reversion backtest, equity PNG and JSON metrics."""
    _add_input_arguments(p)
    p.add_argument("--output", type=Path, default=None,
                   help="equity curve PNG, metrics beside it as .json (default data/equity.png)")
    _add_backtest_arguments(p)
    p.set_defaults(mode="backtest")


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """Every mode (``examples/crypto_research_platform.py MODE``)."""
    from sabot.apps.monitor import fees_text

    from sabot.clitools import ArgumentParser  # one-line errors, no abbreviations

    p = ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=list(MODES))
    _add_input_arguments(p)
    p.add_argument("--output", type=Path, default=None,
                   help="research/live: features Parquet; backtest: equity PNG (+ .json metrics); "
                        "arbitrage: opportunities Parquet")
    _add_backtest_arguments(p)
    ar = p.add_argument_group("arbitrage")
    ar.add_argument("--fees", default=fees_text(),
                    help="taker fee per venue in bps (default %(default)s)")
    ar.add_argument("--min-edge-bps", type=float, default=0.0)
    ar.add_argument("--tolerance-ms", type=float, default=500)
    ar.add_argument("--opportunities", type=Path, default=None,
                    help="report: the monitor's JSON lines (else the quotes in --parquet DIR)")
    k = p.add_argument_group("Kafka (live, export)")
    k.add_argument("--bootstrap", default="localhost:19092")
    add_kafka_config_argument(k)
    k.add_argument("--connect-timeout", type=float, default=8.0,
                   help="give up when no broker answers within this many seconds")
    k.add_argument("--topic", default=None,
                   help="live: ticker topic (default: the first venue's); export: features topic")
    k.add_argument("--group-id", default=None)
    k.add_argument("--from-beginning", action="store_true")
    k.add_argument("--duration", type=float, default=None)
    k.add_argument("--print-every", type=float, default=5.0)
    return p


def command(args: argparse.Namespace) -> int:
    """Run ``args.mode``; a usage mistake or an unreachable broker is one line on stderr, exit 2."""
    from sabot.venues import venues

    if args.mode == "report" and args.opportunities is None and args.parquet is None:
        args.parquet = Path("data")
    if getattr(args, "topic", "") is None:
        args.topic = venues()[0].ticker_topic if args.mode == "live" else "features"
    from sabot.apps.features import features_command

    modes = {"research": research, "backtest": backtest, "arbitrage": arbitrage,
             "export": export, "live": live, "report": report, "features": features_command}
    try:
        if args.mode == "backtest":
            parse_bar(args.bar)  # a bad --bar is one line before any work
        return modes[args.mode](args)
    except (ValueError, FileNotFoundError, BrokerUnreachableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: Optional[Iterable[str]] = None, prog: Optional[str] = None) -> int:
    return command(build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
