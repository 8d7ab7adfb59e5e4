"""Crypto research: features, a mean-reversion backtest, the arbitrage study, export, live.

    sabot research --parquet data/coinbase.parquet --output features.parquet
    sabot backtest --parquet data/coinbase.parquet --output equity.png

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
    equity  = Π (1 + ret_t);   Sharpe = mean(ret)/std(ret, ddof=1) · √(seconds per year / Δt)

with Δt the median spacing of the symbol's timestamps (crypto trades all year: 365 days).
Max drawdown = max(1 − equity / running peak); turnover = Σ|Δpos|; hit rate = share of the rows
held in a position whose ``pos_{t-1}·r_t`` is positive.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional

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

SECONDS_PER_YEAR = 365.0 * 24 * 3600
MODES = ("live", "research", "backtest", "arbitrage", "export")
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


def parquet_inputs(where: Path) -> List[str]:
    if where.is_dir():
        files = sorted(str(p) for p in where.glob("*.parquet"))
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
    periods = SECONDS_PER_YEAR / dt if dt > 0 else float("nan")
    sd = float(np.std(ret, ddof=1)) if len(ret) > 1 else float("nan")
    sharpe = float(np.mean(ret) / sd * np.sqrt(periods)) if sd > 0 else float("nan")
    peak = np.maximum.accumulate(equity)
    held = prev != 0
    return {
        "rows": int(len(mid)), "median_dt_s": dt, "sharpe": sharpe,
        "total_return": float(equity[-1] - 1.0) if len(equity) else 0.0,
        "max_drawdown": float(np.max(1.0 - equity / peak)) if len(equity) else 0.0,
        "turnover": float(trades.sum()), "trades": int(np.count_nonzero(trades)),
        "hit_rate": float(np.mean(gross[held] > 0)) if held.any() else float("nan"),
        "equity": equity, "ts_ns": ts_ns,
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
    fig, ax = plt.subplots(figsize=(10, 5))
    for sym, res in results.items():
        x = (res["ts_ns"] - res["ts_ns"][0]) / 1e9
        ax.plot(x, res["equity"], label=sym)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("equity (start = 1)")
    ax.set_title(f"z-score/RSI mean reversion, fee {args.fee_bps:g} bps + slippage {args.slippage_bps:g} bps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)
    metrics = {s: {k: v for k, v in r.items() if k not in ("equity", "ts_ns")} for s, r in results.items()}
    output.with_suffix(".json").write_text(json.dumps(metrics, indent=2))
    print(f"{'symbol':<10} {'rows':>7} {'Δt (s)':>8} {'Sharpe':>8} {'return':>9} {'max DD':>8} "
          f"{'turnover':>9} {'hit rate':>9}")
    for sym, m in metrics.items():
        print(f"{sym:<10} {m['rows']:>7} {m['median_dt_s']:>8.3f} {m['sharpe']:>8.2f} "
              f"{m['total_return']:>9.4%} {m['max_drawdown']:>8.4%} {m['turnover']:>9.0f} "
              f"{m['hit_rate']:>9.2%}")
    print(f"equity curve: {output}; metrics: {output.with_suffix('.json')}")
    return 0


# ---------------------------------------------------------------------------------------------
# Arbitrage study on Parquet
# ---------------------------------------------------------------------------------------------
def arbitrage(args: argparse.Namespace) -> int:
    """The arbitrage monitor's decision (:func:`sabot.apps.monitor.opportunities`) on every
    quote of the first registered venue, ASOF-joined with the others' ``<venue>.parquet``."""
    from sabot.apps import monitor as arb
    from sabot.fintech import asof_join, midprice as mid_kernel, normalize_symbols
    from sabot.venues import venue_names

    folder = args.parquet
    venues = venue_names()
    tables = {}
    for v in venues:
        t = pq.read_table(folder / f"{v}.parquet")
        t = mid_kernel(normalize_symbols(t)).select(list(arb.QUOTE_COLUMNS))
        tables[v] = t.sort_by([("timestamp", "ascending")])
    joined = tables[venues[0]]
    for v in venues[1:]:
        joined = asof_join(joined, tables[v], on="timestamp", by="symbol",
                           tolerance_ms=args.tolerance_ms)
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


def add_research_arguments(p: argparse.ArgumentParser) -> None:
    """``sabot research``: features of a ticker Parquet file into a features Parquet file."""
    _add_input_arguments(p)
    p.add_argument("--output", type=Path, default=None,
                   help="features Parquet (default data/features.parquet)")
    p.set_defaults(mode="research")


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

    if getattr(args, "topic", "") is None:
        args.topic = venues()[0].ticker_topic if args.mode == "live" else "features"
    modes = {"research": research, "backtest": backtest, "arbitrage": arbitrage,
             "export": export, "live": live}
    try:
        return modes[args.mode](args)
    except (ValueError, FileNotFoundError, BrokerUnreachableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: Optional[Iterable[str]] = None, prog: Optional[str] = None) -> int:
    return command(build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
