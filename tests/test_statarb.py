"""examples/crypto_advanced_strategies.py: the pairs backtest on a synthetic cointegrated pair
recorded in the collectors' Parquet schema (hedge ratio, entries on a pushed spread, PnL against
an independent pandas recomputation), the live mode against the real embedded broker (the
signals it prints equal the backtest's on the same rows), and one-line usage errors."""
from __future__ import annotations

import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from example_modules import load_example
from sabot.schema import exchange_schema
from sabot.venues import default_fees, get_venue

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "crypto_advanced_strategies.py"
SEC = 1_000_000_000
RAW = {"coinbase": lambda s: s.replace("/", "-"), "kraken": lambda s: s}

sa = load_example("crypto_advanced_strategies")


# ----------------------------------------------------------------------------------------------
# Synthetic cointegrated pair: y = beta·x + e, e an AR(1) (mean-reverting) spread
# ----------------------------------------------------------------------------------------------
def cointegrated(n: int, beta: float, key: int, shock_at: int, shock: float,
                 x0: float = 30_000.0) -> tuple:
    """Per-second mids of x (a random walk) and y = beta·x + e; e jumps by ``shock`` for ten
    seconds from ``shock_at``."""
    rng = np.random.default_rng(key)
    x = x0 * np.exp(np.cumsum(rng.normal(0.0, 5e-4, n)))
    e = np.zeros(n)
    for i in range(1, n):
        e[i] = 0.9 * e[i - 1] + rng.normal(0.0, 0.5 * beta * x0 / 1800)
    e[shock_at:shock_at + 10] += shock
    return x, beta * x + e


def ticks(venue: str, symbol: str, t0: int, mids: np.ndarray, key: int) -> pa.Table:
    """Two quotes per second in the venue's collector schema: one early in the second at the
    previous mid, the last one at this second's mid; half-spread 1 bp."""
    rng = np.random.default_rng(key)
    n = mids.size
    early = t0 + np.arange(n, dtype=np.int64) * SEC + rng.integers(1, SEC // 3, n)
    late = t0 + np.arange(n, dtype=np.int64) * SEC + rng.integers(SEC // 2, SEC - 1, n)
    ts = np.empty(2 * n, dtype=np.int64)
    ts[0::2], ts[1::2] = early, late
    mid = np.empty(2 * n)
    mid[0::2] = np.concatenate([[mids[0]], mids[:-1]])
    mid[1::2] = mids
    half = mid * 1e-4
    m = 2 * n
    cols = {
        "exchange": [venue] * m, "symbol": [symbol] * m, "raw_symbol": [RAW[venue](symbol)] * m,
        "timestamp": pa.array(ts).cast(pa.timestamp("ns", tz="UTC")),
        "recv_timestamp": pa.array(ts + 3_000_000).cast(pa.timestamp("ns", tz="UTC")),
        "bid": mid - half, "ask": mid + half, "bid_size": np.ones(m), "ask_size": np.ones(m),
        "price": mid, "volume_24h": np.full(m, 1e4), "sequence": np.arange(m, dtype=np.int64),
    }
    schema = exchange_schema(venue)
    for f in schema:
        if f.name not in cols:
            cols[f.name] = pa.nulls(m, f.type)
    return pa.table(cols, schema=schema)


def write_recording(folder: Path, tables: list) -> None:
    """``<venue>.parquet`` per venue, rows in time order (as a collector writes them)."""
    by_venue: dict = {}
    for t in tables:
        by_venue.setdefault(t["exchange"][0].as_py(), []).append(t)
    for venue, parts in by_venue.items():
        pq.write_table(pa.concat_tables(parts).sort_by("timestamp"), folder / f"{venue}.parquet")


# ----------------------------------------------------------------------------------------------
# Independent recomputation (pandas/numpy) from the trade list and the recorded quotes
# ----------------------------------------------------------------------------------------------
def quotes_at(folder: Path, leg, times_ns, stale_ns: int) -> pd.DataFrame:
    df = pd.read_parquet(folder / f"{leg.venue}.parquet")
    df = df[df["symbol"] == leg.symbol][["timestamp", "bid", "ask"]].sort_values("timestamp")
    clock = pd.DataFrame({"timestamp": pd.to_datetime(np.asarray(times_ns), utc=True)})
    return pd.merge_asof(clock, df, on="timestamp", direction="backward",
                         tolerance=pd.Timedelta(stale_ns, "ns"))


def recompute(folder: Path, y, x, trades, bar_times, params) -> tuple:
    """(total net PnL from the trades, PnL per bar) from the Parquet quotes and the trades'
    quantities; fills buy at the ask and sell at the bid, fees from the venue registry."""
    fees = default_fees()
    qy = quotes_at(folder, y, bar_times, params.max_stale_ns)
    qx = quotes_at(folder, x, bar_times, params.max_stale_ns)
    mid_y = ((qy["bid"] + qy["ask"]) / 2).to_numpy()
    mid_x = ((qx["bid"] + qx["ask"]) / 2).to_numpy()
    index = {int(t): i for i, t in enumerate(bar_times)}
    total = 0.0
    bar_pnl = np.zeros(len(bar_times))
    for tr in trades:
        i, j = index[tr.entry_time], index[tr.exit_time]
        legs = ((tr.q_y, qy, mid_y, fees[y.venue]), (tr.q_x, qx, mid_x, fees[x.venue]))
        for q, quotes, mid, fee_bps in legs:
            buy_in = quotes["ask"][i] if q > 0 else quotes["bid"][i]
            sell_out = quotes["bid"][j] if q > 0 else quotes["ask"][j]
            cost = abs(q) * (buy_in + sell_out) * fee_bps / 1e4
            total += q * (sell_out - buy_in) - cost
            bar_pnl[i] -= q * (buy_in - mid[i]) + abs(q) * buy_in * fee_bps / 1e4
            bar_pnl[j] += q * (sell_out - mid[j]) - abs(q) * sell_out * fee_bps / 1e4
            bar_pnl[i + 1:j + 1] += q * np.diff(mid[i:j + 1])
    return total, bar_pnl


PARAMS = dict(bar_ns=SEC, window=60, entry=2.0, exit=0.5, stop=6.0)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """ETH-like y on Kraken against BTC-like x on Coinbase, beta 0.06, the spread pushed in
    second 700."""
    folder = tmp_path_factory.mktemp("statarb")
    x, y = cointegrated(1200, 0.06, key=5, shock_at=700, shock=12.0)
    t0 = 1_760_000_000 * SEC
    write_recording(folder, [ticks("coinbase", "BTC/USD", t0, x, 1),
                             ticks("kraken", "ETH/USD", t0, y, 2)])
    return folder


def test_backtest_finds_beta_trades_the_push_and_pnl_matches_recomputation(recorded):
    y, x = sa.Leg.parse("kraken:ETH/USD"), sa.Leg.parse("coinbase:BTC/USD")
    params = sa.Params(**{**PARAMS, "entry": 3.0, "stop": 8.0})   # only the push crosses 3
    res = sa.run_backtest(sa.read_legs(recorded, y, x), y, x, params)
    bars = res.bars
    times = bars["timestamp"].cast(pa.int64()).to_numpy()
    assert bars.num_rows == 1199          # the last bar has no later quote: not final

    beta = bars["hedge_ratio"].to_numpy()
    assert abs(beta[-1] - 0.06) < 0.06 * 0.005
    assert np.all(np.abs(beta[100:] - 0.06) < 0.06 * 0.01)

    # the push lands in second 700: the bar closing at 701 s sells the spread, and the trade
    # is closed when the push ends ten seconds later
    t_shock = 1_760_000_000 * SEC + 701 * SEC
    pushed = [s for s in res.signals if s.action == "enter" and s.time == t_shock]
    assert pushed and pushed[0].side == sa.SHORT and pushed[0].z > params.entry
    trade = next(tr for tr in res.trades if tr.entry_time == t_shock)
    assert trade.reason == "exit" and t_shock + 10 * SEC <= trade.exit_time <= t_shock + 12 * SEC
    assert trade.pnl > 0                   # the spread came back

    # every entry is past the entry band, every exit back inside the exit band (or beyond)
    z = dict(zip(times.tolist(), bars["zscore"].to_pylist()))
    for tr in res.trades:
        assert params.entry < abs(z[tr.entry_time]) < params.stop
        assert np.sign(z[tr.entry_time]) == -tr.side
        if tr.reason == "exit":
            assert tr.side * z[tr.exit_time] > -params.exit
        if tr.reason == "stop":
            assert tr.side * z[tr.exit_time] < -params.stop
        # sized to the notional at the entry mids, hedged with the entry beta
        row = int(np.searchsorted(times, tr.entry_time))
        gross = abs(tr.q_y) * bars["y_mid"][row].as_py() + abs(tr.q_x) * bars["x_mid"][row].as_py()
        assert gross == pytest.approx(params.notional, rel=1e-12)
        assert tr.q_x == pytest.approx(-tr.hedge_ratio * tr.q_y, rel=1e-12)
    assert len(res.trades) >= 2

    total, bar_pnl = recompute(recorded, y, x, res.trades, times, params)
    assert res.metrics["net_pnl"] == pytest.approx(total, rel=1e-9, abs=1e-6)
    assert sum(tr.pnl for tr in res.trades) == pytest.approx(total, rel=1e-9, abs=1e-6)
    np.testing.assert_allclose(bars["pnl"].to_numpy(), bar_pnl, rtol=1e-9, atol=1e-7)

    r = pd.Series(bar_pnl / params.notional)
    per_year = 365 * 86400
    sharpe = r.mean() / r.std() * math.sqrt(per_year)
    sortino = r.mean() / math.sqrt((r.clip(upper=0) ** 2).mean()) * math.sqrt(per_year)
    assert res.metrics["sharpe"] == pytest.approx(sharpe, rel=1e-9)
    assert res.metrics["sortino"] == pytest.approx(sortino, rel=1e-9)
    equity = params.notional + r.cumsum() * params.notional
    peak = np.maximum(equity.cummax(), params.notional)
    assert res.metrics["max_drawdown"] == pytest.approx(float((1 - equity / peak).max()), abs=1e-12)
    assert any("annualised figures" in w for w in res.warnings)   # 20 minutes, not a year


def test_bars_start_at_the_earliest_quote_of_either_leg():
    """x quotes before y's first quote: x's quote still closes y's first bar (not 'late');
    a quote exactly at a bar's close belongs to that bar, (T − Δ, T]."""
    y, x = sa.Leg("coinbase", "ETH/USD"), sa.Leg("kraken", "BTC/USD")
    rows = [("kraken", "BTC/USD", 3_000, 100.0, 101.0), ("coinbase", "ETH/USD", 10_500, 5.0, 5.5),
            ("kraken", "BTC/USD", 12_500, 102.0, 103.0)]
    table = pa.table({
        "exchange": [r[0] for r in rows], "symbol": [r[1] for r in rows],
        "timestamp": pa.array([r[2] * 1_000_000 for r in rows]).cast(pa.timestamp("ns", tz="UTC")),
        "bid": [r[3] for r in rows], "ask": [r[4] for r in rows]})
    builder = sa.BarBuilder(y, x, SEC, 60 * SEC)
    bars = builder.add(table)
    assert builder.late_quotes == 0
    assert bars["timestamp"].cast(pa.int64()).to_pylist() == [11 * SEC, 12 * SEC]
    assert bars["x_mid"].to_pylist() == [100.5, 100.5] and bars["y_mid"].to_pylist() == [5.25, 5.25]
    assert builder.skipped_bars == 8        # 3 s .. 10 s: no y quote yet


def test_report_and_outputs(recorded, tmp_path, capsys):
    out = tmp_path / "bars.parquet"
    assert sa.main(["backtest", "--data", str(recorded), "--y", "kraken:ETH/USD",
                    "--x", "coinbase:BTC/USD", "--window", "60", "--entry", "3", "--stop", "8",
                    "--output", str(out)]) == 0
    text = capsys.readouterr().out
    trades = pq.read_table(tmp_path / "bars_trades.parquet").to_pandas()
    bars = pq.read_table(out)
    assert bars.num_rows == 1199 and len(trades) >= 2
    assert f"trades ({len(trades)}):" in text
    assert f"net PnL {bars['pnl'].to_numpy().sum():+.2f}" in text
    assert trades["pnl"].sum() == pytest.approx(bars["pnl"].to_numpy().sum(), rel=1e-9)
    assert "taker fees: kraken 16 bps, coinbase 6 bps" in text
    assert "warning: the bars span 0.333 hours" in text


def test_stop_and_no_reentry_until_back_at_the_mean():
    """Spread pushed past the entry, then past the stop: stopped out, and no new position
    while |z| stays beyond the entry band, until |z| < exit."""
    rng = np.random.default_rng(3)
    n = 200
    x = 30_000 * np.exp(np.cumsum(rng.normal(0, 5e-4, n)))
    e = rng.normal(0, 1.0, n)
    e[120] += 4.0
    e[121:135] += np.linspace(9, 3, 14)
    y = 0.06 * x + e
    t0 = 1_760_000_000
    times = pa.array((t0 + np.arange(n)) * SEC).cast(pa.timestamp("ns", tz="UTC"))
    bars = pa.table({"timestamp": times,
                     "y_bid": y - 0.1, "y_ask": y + 0.1, "y_mid": y,
                     "x_bid": x - 1, "x_ask": x + 1, "x_mid": x})
    params = sa.Params(window=60, entry=2.5, exit=0.5, stop=4.0)
    strategy = sa.PairStrategy(sa.Leg("coinbase", "A"), sa.Leg("kraken", "B"), params)
    out, signals = strategy.on_bars(bars)
    z = np.array(out["zscore"].to_pylist(), dtype=float)
    at = {int(s.time // SEC - t0): s for s in signals}
    assert at[120].action == "enter" and at[120].side == sa.SHORT
    assert at[121].action == "stop" and z[121] > params.stop
    rearm = 121 + int(np.argmax(np.abs(z[121:]) < params.exit))
    assert (np.abs(z[122:rearm]) > params.entry).any()     # would have entered again
    assert not [k for k in at if 121 < k <= rearm]
    assert out["position"].to_pylist()[120:122] == [sa.SHORT, sa.FLAT]


def test_too_few_bars_for_the_window_is_said(recorded):
    y, x = sa.Leg.parse("kraken:ETH/USD"), sa.Leg.parse("coinbase:BTC/USD")
    res = sa.run_backtest(sa.read_legs(recorded, y, x), y, x, sa.Params(window=1500))
    assert res.warnings[0].startswith("only 1199 bars, fewer than the z-score window of 1500")
    assert res.trades == [] and res.metrics["net_pnl"] == 0.0 and res.metrics["sharpe"] is None


def test_batching_does_not_change_the_result(recorded):
    y, x = sa.Leg.parse("kraken:ETH/USD"), sa.Leg.parse("coinbase:BTC/USD")
    params = sa.Params(**PARAMS)
    ticks_ = sa.read_legs(recorded, y, x)
    whole = sa.run_backtest(ticks_, y, x, params)
    pieces = sa.run_backtest(ticks_, y, x, params, batch_rows=37)
    assert pieces.signals == whole.signals
    np.testing.assert_allclose(pieces.bars["zscore"].to_numpy(zero_copy_only=False),
                               whole.bars["zscore"].to_numpy(zero_copy_only=False), rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# Live: the real embedded broker, the venues' ticker topics
# ----------------------------------------------------------------------------------------------
def _produce(bootstrap: str, table: pa.Table) -> None:
    import orjson
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    topic = get_venue(table["exchange"][0].as_py()).ticker_topic
    cols = {n: (table[n].cast(pa.int64()) if pa.types.is_timestamp(table[n].type) else table[n])
            .to_pylist() for n in table.column_names}
    for row in zip(*cols.values()):
        rec = {k: v for k, v in zip(cols, row) if v is not None}
        p.produce(topic, key=rec["symbol"].encode(), value=orjson.dumps(rec))
        p.poll(0)
    assert p.flush(30) == 0


def _reader(pipe, lines: "queue.Queue[str]") -> None:
    for line in pipe:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def test_live_prints_the_backtest_signals_and_stops_cleanly_on_ctrl_c(kafka_broker, tmp_path):
    # one asset on two venues; a symbol of its own so other tests' records do not mix in
    symbol = f"SA{os.getpid() % 10_000}/USD"
    x, y = cointegrated(420, 1.0, key=9, shock_at=250, shock=60.0)
    # ending just now: later than records other tests may have put in these session-wide topics, so
    # the time-ordered read cannot hand ours over behind them
    t0 = (time.time_ns() // SEC - 420 - 2) * SEC
    tables = [ticks("coinbase", symbol, t0, y, 3), ticks("kraken", symbol, t0, x, 4)]
    write_recording(tmp_path, tables)
    for t in tables:
        _produce(kafka_broker.bootstrap, t)

    y_leg, x_leg = sa.Leg("coinbase", symbol), sa.Leg("kraken", symbol)
    params = sa.Params(**PARAMS)
    res = sa.run_backtest(sa.read_legs(tmp_path, y_leg, x_leg), y_leg, x_leg, params)
    expected = [sa.format_signal(s, y_leg, x_leg) for s in res.signals if s.action != "end"]
    assert len(expected) >= 2

    proc = subprocess.Popen(
        [sys.executable, "-u", str(SCRIPT), "live", "--bootstrap", kafka_broker.bootstrap,
         "--y", str(y_leg), "--x", str(x_leg), "--from-beginning", "--bar", "1s",
         "--window", "60", "--stop", "6"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    got, out = [], []
    deadline = time.monotonic() + 90
    try:
        while len(got) < len(expected) and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                break
            out.append(line)
            if not line.startswith("live:"):
                got.append(line)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    while True:
        line = lines.get(timeout=10)
        if line is None:
            break
        out.append(line)
        if not line.startswith("live:"):
            got.append(line)
    stderr = proc.stderr.read()
    assert rc == 0, stderr[-2000:]
    assert got == expected, "\n".join(out) + stderr[-2000:]
    assert out[-1].startswith("live: stopped after")
    assert "Traceback" not in stderr


# ----------------------------------------------------------------------------------------------
# Usage mistakes: one line, exit code 2
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["backtest"], "--data"),
    (["backtest", "--data", "{d}", "--y", "nosuch:BTC/USD"], "'nosuch'"),
    (["backtest", "--data", "{d}", "--y", "BTC/USD"], "'BTC/USD'"),
    (["backtest", "--data", "{d}", "--entry", "1", "--exit", "1.5"], "exit < entry"),
    (["backtest", "--data", "{d}", "--bar", "0s"], "--bar"),
    (["backtest", "--data", "{d}", "--fees", "kraken=abc"], "kraken=abc"),
    (["backtest", "--data", "{d}/missing"], "missing"),
    (["backtest", "--data", "{d}", "--y", "binance:ETH/USD"], "binance.parquet"),
    (["backtest", "--data", "{d}", "--y", "kraken:SOL/USD"], "'SOL/USD'"),
    (["backtest", "--data", "{d}", "--window", "0"], "--window"),
    (["live", "--bootstrap", "127.0.0.1:1", "--connect-timeout", "0.2"], "127.0.0.1:1"),
    (["sideways"], "sideways"),
])
def test_usage_mistakes_are_one_line_and_exit_2(recorded, capsys, argv, needle):
    argv = [a.replace("{d}", str(recorded)) for a in argv]
    try:
        rc = sa.main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and needle in err, err


def test_the_script_exits_2_in_one_line_when_run(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "backtest", "--data", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"crypto_advanced_strategies.py backtest: error: --data {tmp_path}: no coinbase.parquet "
        f"there (record it with `sabot demo --data-dir {tmp_path}` or the coinbase collector)"]
