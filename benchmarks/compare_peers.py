#!/usr/bin/env python
"""Time Sabot beside its peers (TA-Lib, numpy, pandas, polars, DuckDB, cryptofeed's order-book) on the same data, in one run.

Every ``benchmarks/peers_*.py`` module exposes ``cases(scale) -> [(name, rows, {label: fn})]``;
the entry labelled ``sabot`` is ours, the others are peers. Each fn runs once per timing; data is
generated before timing. Prints the median of ``--repeat`` runs in ns/row and our ratio to the
fastest peer (< 1 means Sabot is faster).

    python benchmarks/compare_peers.py                 # 10M-row cases, 5 runs each
    python benchmarks/compare_peers.py --scale 0.1 --only ewma
    python benchmarks/compare_peers.py --modules book   # order books (rows = book updates)
"""
from __future__ import annotations

import argparse
import gc
import importlib
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up (imports, allocator, caches)
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="row-count multiplier (1.0 = full size)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per entry (median reported)")
    parser.add_argument("--only", default="", help="run cases whose name contains this text")
    parser.add_argument("--modules", default="", help="comma list of peers_* modules (default all)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))
    sys.path.append(str(HERE.parent))  # the source tree, when sabot is built in place
    names = sorted(p.stem for p in HERE.glob("peers_*.py"))
    if args.modules:
        wanted = {f"peers_{m.removeprefix('peers_')}" for m in args.modules.split(",")}
        names = [n for n in names if n in wanted]
    header = f"{'case':<46} {'rows':>11} {'sabot ns/row':>13} {'best peer':<24} {'peer ns/row':>12} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for module_name in names:
        module = importlib.import_module(module_name)
        for case, rows, fns in module.cases(args.scale):
            if args.only and args.only not in case:
                continue
            results = {}
            for label, fn in fns.items():
                try:
                    results[label] = median_seconds(fn, args.repeat) / rows * 1e9
                except Exception as exc:  # a peer that cannot run this case is reported, not fatal
                    print(f"  {case}: {label} failed: {exc}")
            ours = results.pop("sabot", None)
            if ours is None:
                continue
            if results:
                best = min(results, key=results.get)
                print(f"{case:<46} {rows:>11,} {ours:>13.2f} {best:<24} {results[best]:>12.2f} "
                      f"{ours / results[best]:>7.2f}")
                for label, ns in sorted(results.items(), key=lambda kv: kv[1])[1:]:
                    print(f"{'':<46} {'':>11} {'':>13} {label:<24} {ns:>12.2f} {ours / ns:>7.2f}")
            else:
                print(f"{case:<46} {rows:>11,} {ours:>13.2f}")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
