"""examples/ and the research application: the platform (zip_async + streaming chained ASOF),
the snippets, and every mode of ``sabot research`` / ``sabot backtest`` /
crypto_research_platform.py — each against an independent pandas/numpy/TA-Lib computation.  Market data comes from the real collectors recording local exchange servers,
or from a generated Parquet file where the test needs a long, mean-reverting series."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from example_modules import load_example
from sabot.apps.research import Features
from sabot.venues import venue_names

ROOT = Path(__file__).resolve().parents[1]
EXCHANGES = venue_names()
PY = sys.executable


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# ----------------------------------------------------------------------------------------------
# Data: what the collectors record from the local exchange servers
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    from sabot.sim import SIMULATORS

    out = tmp_path_factory.mktemp("collected")
    sims = {ex: SIMULATORS[ex](0, seed=11, rate=60.0).start() for ex in EXCHANGES}
    try:
        procs = [subprocess.Popen([PY, str(ROOT / "collectors" / f"{ex}2parquet.py"), "-F",
                                   "--url", sims[ex].url, "-o", str(out / f"{ex}.parquet"),
                                   "--duration", "3.5"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
                 for ex in EXCHANGES]
        for p in procs:
            assert p.wait(timeout=60) == 0
    finally:
        for s in sims.values():
            s.stop()
    for ex in EXCHANGES:
        assert pq.ParquetFile(out / f"{ex}.parquet").metadata.num_rows > 60
    return out


def _pandas_three_way(folder: Path, tolerance_ms: float = 500, usdt_in_usd: bool = False) -> pd.DataFrame:
    """pandas.merge_asof reference of first ⋈ second ⋈ ... (registry order), per-venue features;
    ``usdt_in_usd``: USDT quotes priced in USD through Kraken's USDT/USD first (as the
    arbitrage study does)."""
    from usdt_reference import price_usdt_in_usd

    raw = {ex: pq.read_table(folder / f"{ex}.parquet").to_pandas() for ex in EXCHANGES}
    frames = {}
    for ex in EXCHANGES:
        df = raw[ex]
        if usdt_in_usd and ex != "kraken":
            df = price_usdt_in_usd(df, raw["kraken"])
        df = df[["timestamp", "symbol", "bid", "ask", "bid_size", "ask_size"]].copy()
        df[f"{ex}_bid"], df[f"{ex}_ask"] = df.pop("bid"), df.pop("ask")
        df[f"{ex}_midprice"] = (df[f"{ex}_bid"] + df[f"{ex}_ask"]) / 2
        bs, as_ = df.pop("bid_size"), df.pop("ask_size")
        df[f"{ex}_l1_imbalance"] = (bs - as_) / (bs + as_)
        frames[ex] = df.sort_values("timestamp", kind="stable")
    tol = pd.Timedelta(milliseconds=tolerance_ms)
    j = frames[EXCHANGES[0]]
    for ex in EXCHANGES[1:]:
        j = pd.merge_asof(j, frames[ex], on="timestamp", by="symbol", tolerance=tol)
    return j


# ----------------------------------------------------------------------------------------------
# multi_exchange_platform.py
# ----------------------------------------------------------------------------------------------
def test_platform_zip_async_three_way_asof_matches_pandas(collected):
    plat = load_example("multi_exchange_platform")

    async def collect():
        streams = plat.venue_streams(collected, None, batch_size=37)
        return [t async for t in plat.platform(streams)]

    got = pa.concat_tables(asyncio.run(collect()), promote_options="permissive").to_pandas()
    ref = _pandas_three_way(collected)
    assert len(got) == len(ref)
    got = got.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)
    ref = ref.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)
    for ex in EXCHANGES:
        for col in (f"{ex}_midprice", f"{ex}_l1_imbalance"):
            np.testing.assert_allclose(got[col].to_numpy(float), ref[col].to_numpy(float),
                                       rtol=1e-12, equal_nan=True, err_msg=col)
    mids = ref[[f"{ex}_midprice" for ex in EXCHANGES]].to_numpy(float)
    for i in range(len(ref)):
        present = [(m, ex) for m, ex in zip(mids[i], EXCHANGES) if m == m]
        if len(present) < 2:
            assert pd.isna(got.loc[i, "gross_bps"])
            continue
        lo = min(present, key=lambda t: t[0])  # first venue wins ties, as the kernel documents
        hi = max(present, key=lambda t: t[0])
        assert got.loc[i, "gross_bps"] == pytest.approx((hi[0] - lo[0]) / lo[0] * 1e4, abs=1e-9)
        if hi[0] != lo[0]:
            assert (got.loc[i, "buy_venue"], got.loc[i, "sell_venue"]) == (lo[1], hi[1])


def test_platform_script_runs(collected, tmp_path):
    out = tmp_path / "joined.parquet"
    proc = _run("examples/multi_exchange_platform.py", "--parquet", str(collected), "--output", str(out))
    assert "cheapest" in proc.stdout and "BTC/USD" in proc.stdout
    assert pq.ParquetFile(out).metadata.num_rows == pq.ParquetFile(collected / "coinbase.parquet").metadata.num_rows


# ----------------------------------------------------------------------------------------------
# snippets.py
# ----------------------------------------------------------------------------------------------
def test_snippets_run_as_written_on_collector_output(collected):
    proc = _run("examples/snippets.py", str(collected))
    assert "three-exchange ASOF" in proc.stdout
    snip = load_example("snippets")
    aligned = snip.three_exchange_asof(collected).to_pandas()
    ref = _pandas_three_way(collected)
    for ex in EXCHANGES:
        np.testing.assert_allclose(np.sort(aligned[f"{ex}_midprice"].to_numpy(float)),
                                   np.sort(ref[f"{ex}_midprice"].to_numpy(float)), equal_nan=True)
    dq = snip.data_quality(collected).to_pandas().set_index("product_id")
    cb = pq.read_table(collected / "coinbase.parquet").to_pandas()
    assert dict(dq["rows"]) == dict(cb.groupby("product_id").size())
    assert (dq["missing_parent_timestamp"] == 0).all()
    # triangular: max of the two cycles, minus fees (fx_crypto's documented definition)
    ab, bc, ac = 0.0523, 65_000.0, 3_410.0
    fwd, rev = (ab * bc / ac - 1) * 1e4 - 30, (ac / (ab * bc) - 1) * 1e4 - 30
    assert snip.triangle()["arb_edge_bps"][0].as_py() == pytest.approx(max(fwd, rev), rel=1e-12)
    spot = 65_000.0
    carry = snip.cash_and_carry(spot)["carry_edge_bps"][0].as_py()
    expected = 1e4 * (0.0015 * 365 / 30 + 0.0001 * 3 * 365) - 20 * 365 / 30
    assert carry == pytest.approx(expected, rel=1e-9)


# ----------------------------------------------------------------------------------------------
# sabot research / sabot backtest / crypto_research_platform.py
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ticks(tmp_path_factory):
    """Two symbols interleaved, irregular spacing, mean-reverting mids (so the rule trades)."""
    rng = np.random.default_rng(5)
    n = 4000
    which = rng.integers(0, 2, n)
    ts = 1_700_000_000_000_000_000 + np.cumsum(rng.integers(20, 120, n)) * 1_000_000
    level = {0: 0.0, 1: 0.0}
    base = np.array([65_000.0, 3_400.0])
    mid = np.empty(n)
    for i in range(n):
        k = which[i]
        level[k] = 0.97 * level[k] + rng.normal(0, 4e-4)
        mid[i] = base[k] * np.exp(level[k])
    half = mid * rng.uniform(0.5e-4, 1.5e-4, n)
    table = pa.table({
        "exchange": pa.array(["coinbase"] * n),
        "symbol": pa.array(np.array(["BTC/USD", "ETH/USD"])[which]),
        "raw_symbol": pa.array(np.array(["BTC-USD", "ETH-USD"])[which]),
        "timestamp": pa.array(ts, pa.timestamp("ns", tz="UTC")),
        "recv_timestamp": pa.array(ts + 5_000_000, pa.timestamp("ns", tz="UTC")),
        "bid": mid - half, "ask": mid + half,
        "bid_size": rng.uniform(0.1, 3, n), "ask_size": rng.uniform(0.1, 3, n),
    })
    path = tmp_path_factory.mktemp("ticks") / "coinbase.parquet"
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def features_file(ticks, tmp_path_factory):
    out = tmp_path_factory.mktemp("features") / "features.parquet"
    _run("-m", "sabot", "research", "--parquet", str(ticks),
         "--output", str(out), "--batch-size", "333", "--no-progress")
    return out


def test_research_features_per_symbol_match_references(ticks, features_file):
    import talib

    feats = pq.read_table(features_file).to_pandas()
    raw = pq.read_table(ticks).to_pandas()
    assert len(feats) == len(raw)
    for col in ("log_return", "ewma", "zscore", "realized_var", "riskmetrics_vol", "macd", "rsi",
                "bb_upper", "cusum_stat", "var", "quoted_spread", "l1_imbalance", "microprice"):
        assert col in feats.columns, col
    for sym in ("BTC/USD", "ETH/USD"):
        f = feats[feats.symbol == sym].reset_index(drop=True)
        r = raw[raw.symbol == sym].reset_index(drop=True)
        mid = ((r.bid + r.ask) / 2).to_numpy()
        np.testing.assert_allclose(f.midprice, mid, rtol=1e-15)
        lr = np.concatenate([[np.nan], np.log(mid[1:] / mid[:-1])])
        np.testing.assert_allclose(f.log_return.to_numpy(float), lr, rtol=1e-9, equal_nan=True)
        np.testing.assert_allclose(f.ewma, pd.Series(mid).ewm(alpha=0.05, adjust=False).mean(), rtol=1e-12)
        roll = pd.Series(mid).rolling(100)
        z = (mid - roll.mean()) / roll.std(ddof=1)
        np.testing.assert_allclose(f.zscore.to_numpy(float), z.to_numpy(), rtol=1e-6, atol=1e-9,
                                   equal_nan=True)
        np.testing.assert_allclose(f.rsi.to_numpy(float), talib.RSI(mid, 14), rtol=1e-9, equal_nan=True)
        var = -pd.Series(lr).rolling(250).quantile(0.05, interpolation="linear")
        np.testing.assert_allclose(f["var"].to_numpy(float), var.to_numpy(), rtol=1e-9, equal_nan=True)
        # per-key state equals running the symbol alone, in one batch
        alone = Features()(pa.RecordBatch.from_pandas(r, preserve_index=False)).to_pandas()
        for col in ("zscore", "rsi", "macd", "cusum_stat", "var", "riskmetrics_vol"):
            np.testing.assert_allclose(f[col].to_numpy(float), alone[col].to_numpy(float),
                                       rtol=1e-9, equal_nan=True, err_msg=col)


def _reference_backtest(df: pd.DataFrame, fee_bps: float, slip_bps: float, z_entry=2.0, z_exit=0.5,
                        rsi_low=30.0, rsi_high=70.0) -> dict:
    """The rule written plainly over a pandas frame of one symbol's features."""
    pos, held = [], 0
    for z, r in zip(df.zscore, df.rsi):
        if pd.notna(z) and pd.notna(r):
            if z < -z_entry and r < rsi_low:
                held = 1
            elif z > z_entry and r > rsi_high:
                held = -1
            elif abs(z) < z_exit:
                held = 0
        pos.append(held)
    pos = pd.Series(pos, dtype=float)
    prev = pos.shift(1, fill_value=0.0)
    r = df.midprice.reset_index(drop=True).pct_change().fillna(0.0)
    gross = prev * r
    trades = (pos - prev).abs()
    ret = gross - trades * (fee_bps + slip_bps) / 1e4
    equity = (1 + ret).cumprod()
    dt = pd.Series(df.timestamp.to_numpy()).diff().dt.total_seconds().median()
    # Sharpe/Sortino come from bar returns: tests/test_backtest.py checks them
    return {"max_drawdown": (1 - equity / equity.cummax()).max(),
            "turnover": trades.sum(), "hit_rate": (gross[prev != 0] > 0).mean(),
            "total_return": equity.iloc[-1] - 1, "median_dt_s": dt}


def test_backtest_figures_match_a_pandas_computation(ticks, features_file, tmp_path):
    png = tmp_path / "equity.png"
    proc = _run("-m", "sabot", "backtest", "--parquet", str(ticks),
                "--output", str(png), "--fee-bps", "2", "--slippage-bps", "0.5", "--no-progress")
    assert "Sharpe" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads(png.with_suffix(".json").read_text())
    feats = pq.read_table(features_file).to_pandas()
    for sym in ("BTC/USD", "ETH/USD"):
        ref = _reference_backtest(feats[feats.symbol == sym].reset_index(drop=True), 2.0, 0.5)
        got = metrics[sym]
        assert got["turnover"] >= 4, "the generated series should make the rule trade"
        for k, v in ref.items():
            assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (sym, k)


def test_arbitrage_study_matches_pandas(collected, tmp_path):
    out = tmp_path / "arb.parquet"
    _run("examples/crypto_research_platform.py", "arbitrage", "--parquet", str(collected),
         "--output", str(out), "--fees", "coinbase=1,kraken=1,binance=1")
    got = pq.read_table(out).to_pandas()
    ref = _pandas_three_way(collected, usdt_in_usd=True)
    expected = 0
    for row in ref.itertuples(index=False):
        best = None
        for b in EXCHANGES:
            for s in EXCHANGES:
                ask_b, bid_s = getattr(row, f"{b}_ask"), getattr(row, f"{s}_bid")
                if b != s and ask_b > 0 and bid_s > 0:
                    net = (bid_s - ask_b) / ask_b * 1e4 - 2.0
                    best = net if best is None else max(best, net)
        expected += best is not None and best > 0
    assert expected > 0
    assert len(got) == expected
    assert (got.net_bps > 0).all()


def test_research_refuses_mixed_venues(collected, tmp_path):
    proc = subprocess.run([PY, "examples/crypto_research_platform.py", "research", "--parquet",
                           str(collected), "--output", str(tmp_path / "f.parquet"), "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "column 'exchange' holds several venues" in proc.stderr


def test_export_and_live_through_kafka(kafka_broker, unique_topic, ticks, features_file, tmp_path):
    from confluent_kafka import Consumer

    from sabot.api import Stream
    from sabot.kafka import assign_all

    feats = pq.read_table(features_file).to_pandas()
    # export: the features of every tick land on a Kafka topic
    topic = unique_topic("features")
    kafka_broker.create_topic(topic, partitions=3)
    _run("examples/crypto_research_platform.py", "export", "--parquet", str(ticks),
         "--bootstrap", kafka_broker.bootstrap, "--topic", topic, "--no-progress")
    c = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": topic,
                  "enable.partition.eof": False})
    assign_all(c, topic)
    got, deadline = [], time.monotonic() + 30
    while len(got) < len(feats) and time.monotonic() < deadline:
        for m in c.consume(1000, timeout=0.5):
            if m.error() is None:
                got.append(json.loads(m.value()))
    c.close()
    assert len(got) == len(feats)
    by_key = {(g["symbol"], g["timestamp"]): g for g in got}
    ts_ns = feats.timestamp.astype("int64").to_numpy()
    for i in range(0, len(feats), 97):
        g = by_key[(feats.symbol[i], int(ts_ns[i]))]
        assert (g["zscore"] is None) == pd.isna(feats.zscore[i])
        if g["zscore"] is not None:
            assert g["zscore"] == pytest.approx(feats.zscore[i], rel=1e-12)

    # live: ticks on a topic → the same features per symbol as research on the file
    ticks_topic = unique_topic("ticks")
    kafka_broker.create_topic(ticks_topic, partitions=3)
    Stream.from_parquet(ticks).to_kafka(kafka_broker.bootstrap, ticks_topic, key="symbol")
    out = tmp_path / "live.parquet"
    _run("examples/crypto_research_platform.py", "live", "--bootstrap", kafka_broker.bootstrap,
         "--topic", ticks_topic, "--from-beginning", "--duration", "8", "--output", str(out),
         "--print-every", "100")
    live = pq.read_table(out).to_pandas()
    assert len(live) == len(feats)
    for sym in ("BTC/USD", "ETH/USD"):
        a = live[live.symbol == sym].sort_values("timestamp").reset_index(drop=True)
        b = feats[feats.symbol == sym].sort_values("timestamp").reset_index(drop=True)
        for col in ("zscore", "rsi", "macd", "var", "cusum_stat"):
            np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=1e-9,
                                       equal_nan=True, err_msg=col)


# ----------------------------------------------------------------------------------------------
# A broker that cannot be reached: a clear error in bounded time, not a silent hang
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script, args", [
    ("multi_exchange_arbitrage.py", []),
    ("multi_exchange_platform.py", []),
    ("crypto_research_platform.py", ["live"]),
])
def test_examples_report_an_unreachable_broker_within_10_s(script, args):
    from sabot.broker import free_port

    bootstrap = f"127.0.0.1:{free_port()}"  # nobody listens there
    t0 = time.monotonic()
    proc = subprocess.run([PY, str(ROOT / "examples" / script), *args, "--bootstrap", bootstrap],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"error: no Kafka broker answered at {bootstrap} within 8 s" in proc.stderr
    # 8 s of trying plus the interpreter's start; generous on a loaded machine
    assert elapsed < 30, elapsed
