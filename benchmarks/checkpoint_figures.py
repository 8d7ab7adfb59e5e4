"""Checkpoint size, write and restore time for 1,000 symbols x 10 stateful kernels (by symbol).

Run: ``python benchmarks/checkpoint_figures.py`` from the repo root; prints one line per figure.
The state is built by running the kernels over 20 ticks per symbol through a Stream.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from benchmarks.suites.bench_checkpoint import build_stream, ticks  # noqa: E402
from sabot.state import LocalCheckpointStore  # noqa: E402


def main() -> None:
    table = ticks(1000, 20)
    stream = build_stream(table)
    for _ in stream:
        pass
    state = stream.state_dict()
    kernels = state["operators"]
    scope = next(iter(kernels.values()))["scope"]["kernels"]
    print(f"kernel instances in the state: {len(scope)}")
    with tempfile.TemporaryDirectory() as d:
        store = LocalCheckpointStore(d)
        writes, reads = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            store.save({"t": {0: 1, 1: 2, 2: 3}}, stream.state_dict())
            writes.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            payload = store.load_latest()
            fresh = build_stream(table)
            fresh.load_state_dict(payload["state"])
            reads.append(time.perf_counter() - t0)
        size = store.last_size_bytes
    print(f"rows {table.num_rows}, symbols 1000, kernels 10")
    print(f"checkpoint size: {size / 1e6:.2f} MB")
    print(f"snapshot+write (state_dict, encode, fsync, rename): median {np.median(writes) * 1e3:.1f} ms")
    print(f"restore (read, decode, load_state_dict): median {np.median(reads) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
