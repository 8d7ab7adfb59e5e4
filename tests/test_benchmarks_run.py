"""The benchmarks still run: every ``compare_peers`` case and every asv benchmark, once, small.

Timings are not checked here (speed lives in the benchmarks themselves); this keeps the suites
from rotting when an API they call changes.  A peer only in the ``bench`` extras (DuckDB) is
left out of its case when not installed.
"""
from __future__ import annotations

import importlib
import inspect
import itertools
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

PEER_MODULES = sorted(p.stem for p in BENCH.glob("peers_*.py"))
SUITES = sorted(p.stem for p in (BENCH / "suites").glob("bench_*.py"))

#: module-level sizes of the asv suites, shrunk for one smoke run each
SMALL = {"ROWS": 5000, "N_ROWS": 5000, "N": 5000, "FRAMES": 200, "BATCH_ROWS": 1024,
         "CHUNK": 1000}


@pytest.mark.parametrize("module_name", PEER_MODULES)
def test_every_compare_peers_case_runs(module_name):
    module = importlib.import_module(module_name)
    cases = list(module.cases(0.0005))
    assert cases
    for case, rows, fns in cases:
        assert rows > 0, case
        assert "sabot" in fns or any(label.startswith("sabot") for label in fns), case
        for label, fn in fns.items():
            fn()


def _param_sets(cls) -> list:
    params = getattr(cls, "params", None)
    if params is None:
        return [()]
    if isinstance(params, tuple) or (params and isinstance(params[0], list)):
        return list(itertools.product(*params))       # several parameters
    return [(p,) for p in params]                     # one parameter


@pytest.mark.parametrize("suite", SUITES)
def test_every_asv_benchmark_runs(suite, monkeypatch):
    module = importlib.import_module(f"suites.{suite}")
    for name, value in SMALL.items():
        if isinstance(getattr(module, name, None), int):
            monkeypatch.setattr(module, name, value)
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if c.__module__ == module.__name__]
    ran = 0
    for cls in classes:
        methods = [m for m in dir(cls) if m.startswith(("time_", "track_", "peakmem_", "mem_"))]
        for args in _param_sets(cls) if methods else []:
            bench = cls()
            if hasattr(bench, "setup"):
                bench.setup(*args)
            try:
                for m in methods:
                    getattr(bench, m)(*args)
                    ran += 1
            finally:
                if hasattr(bench, "teardown"):
                    bench.teardown(*args)
    assert ran, f"{suite}: no benchmark found"
