"""Helpers for the collector tests: run the real scripts as subprocesses, decode what the simulators sent."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]

#: Short backoff so reconnect-heavy tests stay fast.
FAST_ENV = {**os.environ, "SABOT_BACKOFF_BASE": "0.02", "SABOT_BACKOFF_MAX": "0.1", "PYTHONPATH": str(REPO)}


def collector_cmd(exchange: str, url: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "collectors" / f"{exchange}2parquet.py"), "--url", url, *args]


def run_collector(exchange: str, url: str, *args: str, duration: float = 1.6) -> subprocess.CompletedProcess:
    proc = subprocess.run(collector_cmd(exchange, url, "--duration", str(duration), *args),
                          env=FAST_ENV, capture_output=True, text=True, timeout=duration + 60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def final_stats(stderr: str) -> dict[str, int]:
    """Counters from the collector's last ``final:`` log line."""
    lines = [ln for ln in stderr.splitlines() if " final: " in ln]
    assert lines, f"no final status line in:\n{stderr[-2000:]}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])}


#: The canonical symbols each collector records by default (Binance lists USD pairs against
#: USDT, its own quote; Kraken also records the USDT/USD rate that prices them).
DEFAULT_SYMBOLS = {"coinbase": {"BTC/USD", "ETH/USD"}, "kraken": {"BTC/USD", "ETH/USD", "USDT/USD"},
                   "binance": {"BTC/USDT", "ETH/USDT"}}


def expected_records(exchange: str, frames: list[tuple[str, bool]]) -> list[dict]:
    """What each data frame must become, decoded independently (stdlib json, float(), pandas)."""
    out = []
    last_ticker: dict[str, dict] = {}
    for text, is_data in frames:
        msg = json.loads(text)
        if exchange == "coinbase":
            if not is_data:
                continue
            ts = pd.Timestamp(msg["timestamp"]).value
            for ev in msg["events"]:
                for t in ev["tickers"]:
                    out.append({"raw_symbol": t["product_id"], "bid": float(t["best_bid"]),
                                "ask": float(t["best_ask"]), "bid_size": float(t["best_bid_quantity"]),
                                "ask_size": float(t["best_ask_quantity"]), "price": float(t["price"]),
                                "volume_24h": float(t["volume_24_h"]), "timestamp": ts,
                                "sequence": msg["sequence_num"]})
        elif exchange == "kraken":
            for t in msg["data"]:
                out.append({"raw_symbol": t["symbol"], "bid": t["bid"], "ask": t["ask"], "bid_size": t["bid_qty"],
                            "ask_size": t["ask_qty"], "price": t["last"], "volume_24h": t["volume"],
                            "timestamp": pd.Timestamp(t["timestamp"]).value, "sequence": None})
        else:
            d = msg["data"]
            if d.get("e") == "24hrTicker":
                last_ticker[d["s"]] = d
                continue
            tk = last_ticker.get(d["s"])
            out.append({"raw_symbol": d["s"], "bid": float(d["b"]), "ask": float(d["a"]),
                        "bid_size": float(d["B"]), "ask_size": float(d["A"]),
                        "price": float(tk["c"]) if tk else None,
                        "volume_24h": float(tk["v"]) if tk else None, "sequence": d["u"]})
    return out


def assert_records_match(exchange: str, rows: list[dict], frames: list[tuple[str, bool]]) -> None:
    expected = expected_records(exchange, frames)
    assert len(rows) == len(expected)
    for i, (row, exp) in enumerate(zip(rows, expected)):
        for key, value in exp.items():
            got = row[key]
            assert got == value, f"row {i} column {key}: {got!r} != {value!r}"


def read_rows(path: str | Path) -> list[dict]:
    """Parquet rows with timestamps as integer ns (pyarrow, independent of the collector)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for name in ("timestamp", "recv_timestamp", "parent_timestamp"):
        if name in table.column_names:
            i = table.column_names.index(name)
            table = table.set_column(i, name, table.column(name).cast(pa.int64()))
    return table.to_pylist()
