"""Collector throughput: parse+normalise µs/message per exchange, and sustained messages/s end to end.

Sustained rate: a local simulator sends ``--count`` ticker frames as fast as it can; the real
collector script (subprocess, one core) writes them to Parquet; rate = records / (last - first
receive time) read back from the file.  Run: ``PYTHONPATH=. python benchmarks/collector_throughput.py``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from peers_collectors import cases  # noqa: E402
from sabot.sim import SIMULATORS  # noqa: E402


def parse_cost() -> None:
    for name, rows, fns in cases():
        fn = fns["sabot"]
        best = min(_timed(fn) for _ in range(7))
        print(f"{name:28s} {best / rows * 1e6:6.2f} µs/message (best of 7, {rows} messages)")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sustained(exchange: str, count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, SIMULATORS[exchange](rate=0, count=count) as sim:
        out = Path(tmp) / "o.parquet"
        cmd = [sys.executable, str(REPO / "collectors" / f"{exchange}2parquet.py"), "--url", sim.url, "-F",
               "-o", str(out), "--row-group-size", "50000"]
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while sim.sent_count < count and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(2)
        proc.wait(60)
        t = pq.read_table(out, columns=["recv_timestamp"])
        ts = t.column("recv_timestamp").cast("int64")
        span = (pc.max(ts).as_py() - pc.min(ts).as_py()) / 1e9
        print(f"{exchange:9s} sustained: {t.num_rows} records in {span:.2f} s = {t.num_rows / span:,.0f} msg/s "
              f"(sent {sim.sent_count})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=100_000)
    a = ap.parse_args()
    print(f"load average: {os.getloadavg()}")
    parse_cost()
    for ex in ("coinbase", "kraken", "binance"):
        sustained(ex, a.count)
