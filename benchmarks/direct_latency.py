#!/usr/bin/env python
"""Tick-to-signal latency of the live monitor: the direct path against the Kafka path.

Tick-to-signal latency is the wall clock at the decision minus the record's ``recv_timestamp``
(taken by the collector right after the WebSocket yields the frame); the monitor keeps one
value per record decided on and writes them all to its final summary JSON.

Per round, on the same load (the three local exchange servers of :data:`sabot.sim.SIMULATORS`
at ``--rate`` quotes/s each, in this process, and the embedded broker):

* **direct**: ``sabot monitor --direct --summary-json ...`` (the collectors' connection loops in
  the monitor's process, every record still produced to Kafka; ``--parquet-dir`` with
  ``--parquet``);
* **kafka**: one ``sabot collect VENUE -k`` per venue and ``sabot monitor`` reading the ticker
  topics (``-F`` too with ``--parquet``);
* **floor** (``--baseline``): one process writes its wall clock to a local TCP socket
  ``3 x rate`` times a second, an idle asyncio loop in another subtracts it on receipt: what the
  machine's scheduler and network stack alone add to any receive-to-decision latency here.

``--code DIR`` (repeatable) runs the monitors from another copy of the package (e.g. an older
commit exported with ``git archive``, compiled modules copied in), so a before/after table comes
from the same machine state: rounds interleave every code tree and path.  The table gives
p50/p99/p99.9 and the maximum (ms) of every latency of every round per (code, path), and the
median of the per-round p99s.

    python benchmarks/direct_latency.py --duration 20 --rate 100 --rounds 3
    python benchmarks/direct_latency.py --paths direct --parquet --code /tmp/before --code .
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATHS = ("direct", "kafka")


def wait_for(condition, timeout_s: float, every_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every_s)
    return bool(condition())


def _records(path: Path) -> int:
    try:
        return sum(json.loads(path.read_text())["records"].values())
    except (OSError, ValueError, KeyError):
        return 0


def _child_env(code: Path) -> Dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(code), "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost"}


def _stop(proc: subprocess.Popen, timeout: float = 60) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # (SIGINT is ignored by children of a background job)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""  # (None: the output went to a file)


def run_round(path: str, code: Path, urls: Dict[str, str], bootstrap: str, duration: float,
              parquet: bool, workdir: Path, fees: Optional[str] = None,
              chrt: Optional[int] = None) -> dict:
    """One monitor run of ``duration`` seconds once it decides; its final summary JSON."""
    summary = workdir / f"summary-{path}.json"
    summary.unlink(missing_ok=True)
    py = sys.executable
    children: List[subprocess.Popen] = []
    env = _child_env(code)
    # the monitor's output goes to a file: a pipe nobody reads until the end fills up and
    # then blocks the monitor's every alert line
    log_path = workdir / f"monitor-{path}.log"
    log = open(log_path, "w")
    prefix = ["chrt", "-f", str(chrt)] if chrt else []
    monitor_cmd = [*prefix, py, "-m", "sabot", "monitor", "--bootstrap", bootstrap,
                   "--summary-json", str(summary), "--summary-every", "1e9",
                   "--output", str(workdir / f"opportunities-{path}.jsonl"),
                   *(["--fees", fees] if fees else [])]
    try:
        if path == "direct":
            monitor_cmd += ["--direct", "--url", ",".join(f"{v}={u}" for v, u in urls.items()),
                            "--status-interval", "1e9"]
            if parquet:
                monitor_cmd += ["--parquet-dir", str(workdir / "pq-direct"), "--row-group-seconds", "2"]
            monitor = subprocess.Popen(monitor_cmd, cwd=workdir, env=env, text=True,
                                       stdout=log, stderr=subprocess.STDOUT)
            children.append(monitor)
        else:
            monitor = subprocess.Popen(monitor_cmd + ["--fast-groups"], cwd=workdir, env=env,
                                       text=True, stdout=log, stderr=subprocess.STDOUT)
            children.append(monitor)
            for v, u in urls.items():
                cmd = [py, "-m", "sabot", "collect", v, "-k", "--url", u, "--bootstrap", bootstrap,
                       "--status-interval", "1e9"]
                if parquet:
                    cmd += ["-F", "-o", str(workdir / "pq-kafka" / f"{v}.parquet"),
                            "--row-group-seconds", "2"]
                children.append(subprocess.Popen(cmd, cwd=workdir, env=env, text=True,
                                                 stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL))
        if not wait_for(lambda: _records(summary) > 0 or monitor.poll() is not None, 90):
            raise RuntimeError(f"{path}: the monitor decided on nothing within 90 s")
        if monitor.poll() is not None:
            raise RuntimeError(f"{path}: the monitor exited early:\n{_stop(monitor)[-2000:]}")
        deadline = time.monotonic() + duration
        wait_for(lambda: monitor.poll() is not None, max(0.0, deadline - time.monotonic()), 0.5)
    finally:
        for c in reversed(children):
            _stop(c)
        log.close()
    lines = [ln for ln in log_path.read_text().splitlines() if "ARBITRAGE" not in ln]
    final = json.loads(summary.read_text()) if summary.exists() else {}
    return {"latencies": np.asarray(final.get("latencies_ms", []), dtype=float),
            "code": monitor.returncode, "tail": "\n".join(lines[-20:])}


_FLOOR_SCRIPT = """
import asyncio, json, socket, struct, sys, time
rate, duration = float(sys.argv[1]), float(sys.argv[2])
out = []

class Reader(asyncio.Protocol):
    def __init__(self):
        self.buf = b""
    def data_received(self, data):
        now = time.time_ns()
        self.buf += data
        while len(self.buf) >= 8:
            (sent,) = struct.unpack("<q", self.buf[:8])
            self.buf = self.buf[8:]
            out.append((now - sent) / 1e6)


async def main():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    def connected():
        proto = Reader()
        proto.connection_lost = lambda exc: done.done() or done.set_result(None)
        return proto
    server = await loop.create_server(connected, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    await done
    server.close()
    print(json.dumps(out), flush=True)

asyncio.run(main())
"""

_SENDER_SCRIPT = """
import socket, struct, sys, time
port, rate, duration = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
period, end = 1.0 / rate, time.monotonic() + duration
due = time.monotonic()
while due < end:
    time.sleep(max(0.0, due - time.monotonic()))
    s.sendall(struct.pack("<q", time.time_ns()))
    due += period
s.close()
"""


def socket_floor(rate: float, duration: float, chrt: Optional[int] = None) -> np.ndarray:
    """What the machine alone adds between a frame sent on a local socket and the callback of
    an idle asyncio loop that reads it (ms): one process sends its wall clock ``rate`` times a
    second, another (an asyncio ``Protocol``, nothing else to do) subtracts it on receipt.
    The floor under any receive-to-decision latency measured on the same machine."""
    prefix = ["chrt", "-f", str(chrt)] if chrt else []
    reader = subprocess.Popen([*prefix, sys.executable, "-c", _FLOOR_SCRIPT, str(rate),
                               str(duration)], stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None
    port = reader.stdout.readline().strip()
    subprocess.run([sys.executable, "-c", _SENDER_SCRIPT, port, str(rate), str(duration)],
                   check=True)
    out, _ = reader.communicate(timeout=60)
    return np.asarray(json.loads(out), dtype=float)


def _ms(x: Optional[float], width: int = 0) -> str:
    return f"{'n/a':>{width}}" if x is None else f"{x:>{width}.3f}"


def stats(values: np.ndarray) -> Dict[str, Optional[float]]:
    if not len(values):
        return {"n": 0, "p50": None, "p99": None, "p999": None, "max": None}
    return {"n": int(len(values)), "p50": float(np.percentile(values, 50)),
            "p99": float(np.percentile(values, 99)), "p999": float(np.percentile(values, 99.9)),
            "max": float(values.max())}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=20.0, help="seconds per monitor run")
    p.add_argument("--rate", type=float, default=100.0, help="quotes/s per exchange server")
    p.add_argument("--rounds", type=int, default=1, help="rounds (each runs every code and path)")
    p.add_argument("--paths", default="direct,kafka", help="direct, kafka or both (default)")
    p.add_argument("--parquet", action="store_true", help="also write Parquet (row group every 2 s)")
    p.add_argument("--code", action="append", type=Path, default=None,
                   help="a directory holding the sabot package to run the monitors from "
                        "(repeatable; default this checkout)")
    p.add_argument("--baseline", action="store_true",
                   help="also measure the floor: a local socket into an idle asyncio loop")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--fees", default=None,
                   help="the monitors' --fees (default theirs: each venue's taker fee)")
    p.add_argument("--chrt", type=int, default=None, metavar="PRIORITY",
                   help="run the monitors under chrt -f PRIORITY (SCHED_FIFO: the scheduler runs "
                        "them before every ordinary process; needs CAP_SYS_NICE)")
    p.add_argument("--json", type=Path, default=None, help="write every figure here too")
    args = p.parse_args(argv)

    from sabot.broker import TICKER_TOPICS, EmbeddedBroker
    from sabot.sim import SIMULATORS
    from sabot.venues import venue_names

    paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    bad = [x for x in paths if x not in PATHS]
    if bad:
        p.error(f"--paths: unknown path(s) {bad}; choose from {PATHS}")
    codes = [c.resolve() for c in (args.code or [ROOT])]
    venues = venue_names()
    sims = [SIMULATORS[v](seed=args.seed, rate=args.rate) for v in venues]
    samples: Dict[tuple, List[np.ndarray]] = {}
    exit_codes: Dict[tuple, List[int]] = {}
    with EmbeddedBroker(port=0, topics=TICKER_TOPICS, partitions=1) as broker, \
            tempfile.TemporaryDirectory(prefix="direct-latency-") as tmp:
        for sim in sims:
            sim.start()
        try:
            urls = {v: sim.url for v, sim in zip(venues, sims)}
            for r in range(args.rounds):
                for code in codes:
                    for path in paths:
                        key = (str(code), path)
                        res = run_round(path, code, urls, broker.bootstrap, args.duration,
                                        args.parquet, Path(tmp), args.fees, args.chrt)
                        samples.setdefault(key, []).append(res["latencies"])
                        exit_codes.setdefault(key, []).append(res["code"])
                        s = stats(res["latencies"])
                        print(f"round {r + 1} {path:<6} {code}: n={s['n']} p50={_ms(s['p50'])} "
                              f"p99={_ms(s['p99'])} p999={_ms(s['p999'])} ms exit={res['code']}",
                              flush=True)
                        if res["code"] != 0 or not s["n"]:
                            print(res["tail"], flush=True)
        finally:
            for sim in sims:
                sim.stop()
    baseline = (socket_floor(args.rate * len(venues), args.duration, args.chrt)
                if args.baseline else None)

    rows = []
    print(f"\n{args.rate:g} quotes/s per venue x {len(venues)} venues, {args.duration:g} s x "
          f"{args.rounds} rounds{', with Parquet' if args.parquet else ''}; latency in ms")
    print(f"{'path':<8} {'code':<28} {'n':>7} {'p50':>7} {'p99':>7} {'p99.9':>7} {'max':>8} "
          f"{'p99 med':>8}")
    for (code, path), runs in samples.items():
        s = stats(np.concatenate(runs))
        p99s = [stats(x)["p99"] for x in runs if len(x)]
        med = statistics.median(p99s) if p99s else None
        rows.append({"path": path, "code": code, **s, "p99_median_of_rounds": med,
                     "exit_codes": exit_codes[(code, path)]})
        print(f"{path:<8} {code[-28:]:<28} {s['n']:>7} {_ms(s['p50'], 7)} {_ms(s['p99'], 7)} "
              f"{_ms(s['p999'], 7)} {_ms(s['max'], 8)} {_ms(med, 8)}")
    if baseline is not None:
        s = stats(baseline)
        rows.append({"path": "socket-floor", "code": "", **s})
        print(f"{'floor':<8} {'socket -> idle asyncio loop':<28} {s['n']:>7} {s['p50']:>7.3f} "
              f"{s['p99']:>7.3f} {s['p999']:>7.3f} {s['max']:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
