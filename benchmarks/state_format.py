"""Cost of the data-only state format against the pickle checkpoints it replaced.

1,000 symbols x 10 stateful kernels by symbol (EWMA, EMA, SMA, RSI, MACD, Bollinger, Kalman,
rolling std, VWAP, Welford; the state is built by running them over 20 ticks per symbol
through a Stream), checkpointed the old way (a pickle of the same payload, written, fsynced
and renamed like the store does) and the new way (:class:`~sabot.state.LocalCheckpointStore`,
without and with an HMAC state key), in the same run.  Restore = read the file, decode it and
``load_state_dict`` into a fresh stream.  The pickle path is only measured here, never used to
restore a pipeline.

Run: ``python benchmarks/state_format.py [--repeat N]`` from the repo root; prints one line
per figure (medians over N rounds).
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.suites.bench_checkpoint import build_stream, ticks  # noqa: E402
from sabot.state import LocalCheckpointStore  # noqa: E402
from sabot.state.codec import decode_state, encode_state  # noqa: E402

OFFSETS = {"t": {0: 1, 1: 2, 2: 3}}


def pickle_save(directory: Path, seq: int, state: Dict[str, Any]) -> Tuple[Path, int]:
    """The checkpoint write as it was: pickle, write .tmp, fsync, rename, fsync the dir,
    delete all but the newest two."""
    payload = {"format": 1, "seq": seq, "created": time.time(), "offsets": OFFSETS,
               "state": state}
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    final = directory / f"checkpoint-{seq:012d}.pkl"
    tmp = final.with_name(final.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for old in sorted(directory.glob("checkpoint-*.pkl"))[:-2]:
        old.unlink()
    return final, len(data)


def pickle_load(path: Path) -> Dict[str, Any]:
    with open(path, "rb") as f:
        return pickle.load(f)


def timed(fn: Callable[[], Any]) -> Tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="rounds per figure (median)")
    args = ap.parse_args()
    table = ticks(1000, 20)
    stream = build_stream(table)
    for _ in stream:
        pass
    scope = next(iter(stream.state_dict()["operators"].values()))["scope"]["kernels"]
    print(f"state: 1000 symbols, {len(scope)} kernel instances, {table.num_rows} ticks")

    results: Dict[str, Dict[str, List[float]]] = {}
    sizes: Dict[str, int] = {}
    with tempfile.TemporaryDirectory() as d:
        pdir = Path(d) / "pickle"
        pdir.mkdir()
        stores = {"new format": LocalCheckpointStore(Path(d) / "plain"),
                  "new format + HMAC": LocalCheckpointStore(Path(d) / "hmac",
                                                            state_key=b"benchmark-key")}
        for r in range(args.repeat):
            # snapshot + write (state_dict is the same for both formats and included in both)
            t, (path, size) = timed(lambda: pickle_save(pdir, r + 1, stream.state_dict()))
            results.setdefault("pickle (before)", {}).setdefault("write", []).append(t)
            sizes["pickle (before)"] = size
            t, _ = timed(lambda: build_stream(table).load_state_dict(pickle_load(path)["state"]))
            results["pickle (before)"].setdefault("restore", []).append(t)
            for name, store in stores.items():
                t, _ = timed(lambda: store.save(OFFSETS, stream.state_dict()))
                results.setdefault(name, {}).setdefault("write", []).append(t)
                sizes[name] = store.last_size_bytes
                t, _ = timed(lambda: build_stream(table).load_state_dict(
                    store.load_latest()["state"]))
                results[name].setdefault("restore", []).append(t)
        for store in stores.values():
            store.close()
    state = stream.state_dict()
    enc = [timed(lambda: encode_state(state))[0] for _ in range(args.repeat)]
    body = encode_state(state)
    dec = [timed(lambda: decode_state(body))[0] for _ in range(args.repeat)]
    pen = [timed(lambda: pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))[0]
           for _ in range(args.repeat)]
    blob = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    pde = [timed(lambda: pickle.loads(blob))[0] for _ in range(args.repeat)]

    print(f"{'format':<20} {'size':>10} {'write (ms)':>11} {'restore (ms)':>13}")
    for name, r in results.items():
        print(f"{name:<20} {sizes[name] / 1e6:>8.3f}MB {np.median(r['write']) * 1e3:>11.2f} "
              f"{np.median(r['restore']) * 1e3:>13.2f}")
    print("write = state_dict + encode + write .tmp + fsync + rename + dir fsync + delete old; "
          "restore = read + decode + load_state_dict into a fresh stream")
    print(f"encode only: state format {np.median(enc) * 1e3:.2f} ms, pickle "
          f"{np.median(pen) * 1e3:.2f} ms; decode only: state format "
          f"{np.median(dec) * 1e3:.2f} ms, pickle {np.median(pde) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
