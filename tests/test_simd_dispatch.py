"""Run-time SIMD dispatch (sabot/fintech/_simd): the portable and AVX2 copies of the dividing
element-wise loops give bit-identical output, equal bit for bit to numpy's IEEE arithmetic in
the same operation order, with the same nulls (null input, NaN, zero denominator)."""
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from sabot.fintech import _simd, fx_crypto, microstructure
from sabot.fintech import (effective_spread, l1_imbalance, microprice, quoted_spread,
                           triangular_arbitrage)

ROOT = Path(__file__).resolve().parents[1]
PATHS = [pytest.param(p, marks=pytest.mark.skipif(p not in _simd.available_paths(),
                                                  reason=f"this CPU cannot run {p}"))
         for p in (_simd.PORTABLE, _simd.AVX2)]

# name: (function, input columns, numpy formula in the kernel's operation order, denominator)
KERNELS = {
    "quoted_spread": (quoted_spread, ("bid", "ask"),
                      lambda b, a: (a - b) / (0.5 * (a + b)) * 1e4, lambda b, a: a + b),
    "l1_imbalance": (l1_imbalance, ("bid_size", "ask_size"),
                     lambda B, A: (B - A) / (B + A), lambda B, A: B + A),
    "effective_spread": (effective_spread, ("exec_price", "midprice"),
                         lambda p, m: 2.0 * np.abs(p - m) / m * 1e4, lambda p, m: m),
    "microprice": (microprice, ("bid", "ask", "bid_size", "ask_size"),
                   lambda b, a, B, A: (b * A + a * B) / (A + B), lambda b, a, B, A: A + B),
}

SPECIALS = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 5e-324, -5e-324, 2.2250738585072014e-308,
            1.7976931348623157e308, -1.7976931348623157e308, 1e-300, 1e300]
VALUES = st.one_of(st.sampled_from(SPECIALS),
                   st.floats(allow_nan=True, allow_infinity=True, width=64),
                   st.floats(1e-3, 1e5))


def run_on(path, name, batch):
    """The kernel's output column computed by the ``path`` copy of its loop."""
    fn, _, _, _ = KERNELS[name]
    previous = _simd._use_path(path)
    try:
        return fn(batch)[name]
    finally:
        _simd._use_path(previous)


def reference(name, batch):
    """(valid mask, values) by numpy: null where an input is null, the denominator is 0 or the
    result is NaN."""
    _, columns, formula, denominator = KERNELS[name]
    xs = [batch[c].to_numpy(zero_copy_only=False).astype(np.float64) for c in columns]
    null = np.zeros(batch.num_rows, dtype=bool)
    for c in columns:
        null |= batch[c].is_null().to_numpy(zero_copy_only=False)
    with np.errstate(all="ignore"):
        values = formula(*xs)
        null |= (denominator(*xs) == 0.0) | np.isnan(values)
    return ~null, values


def assert_bits_equal(out, valid, values, label):
    """``out`` (Arrow float64) has exactly the nulls ``~valid`` and the bits of ``values``."""
    out_valid = ~out.is_null().to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(out_valid, valid, err_msg=f"{label}: null positions")
    got = out.to_numpy(zero_copy_only=False).astype(np.float64)[valid].view(np.int64)
    want = np.asarray(values, dtype=np.float64)[valid].view(np.int64)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (f"{label}: {bad.size} values differ in their bits, first at valid row "
                           f"{bad[0]}: {got[bad[0]:bad[0] + 1].view(np.float64)} vs "
                           f"{want[bad[0]:bad[0] + 1].view(np.float64)}")
    assert out.null_count == int((~valid).sum()), f"{label}: null_count"


def assert_paths_agree(name, batch):
    valid, values = reference(name, batch)
    outputs = {}
    for path in _simd.available_paths():
        outputs[path] = run_on(path, name, batch)
        assert_bits_equal(outputs[path], valid, values, f"{name} [{path}] vs numpy")
    portable = outputs[_simd.PORTABLE]
    for path, out in outputs.items():
        assert out.equals(portable), f"{name}: {path} differs from portable"
        assert (out.buffers()[0] is None) == (portable.buffers()[0] is None), \
            f"{name}: {path} and portable disagree on having a validity bitmap"


@st.composite
def batches(draw, columns):
    n = draw(st.integers(0, 70))
    offset = draw(st.integers(0, 5))                  # sliced input: unaligned, bit offsets
    arrays = {}
    for c in columns:
        values = draw(st.lists(VALUES, min_size=n + offset, max_size=n + offset))
        nulls = draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=n + offset,
                                                   max_size=n + offset)))
        mask = None if nulls is None else np.array(nulls, dtype=bool)
        arrays[c] = pa.array(np.array(values, dtype=np.float64), mask=mask)
    return pa.record_batch(arrays).slice(offset, n)


@pytest.mark.parametrize("name", sorted(KERNELS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_both_paths_bit_identical_to_numpy(name, data):
    assert_paths_agree(name, data.draw(batches(KERNELS[name][1])))


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_long_batches_across_run_blocks(name):
    """40,003 rows (several 16,384-row run blocks, vector tails), market-like values with a few
    nulls, NaNs, infinities and zero denominators scattered in; and the same data clean."""
    rng = np.random.default_rng(9)
    n = 40_003
    columns = KERNELS[name][1]
    clean = {c: rng.uniform(0.5, 200.0, n) for c in columns}
    assert_paths_agree(name, pa.record_batch(clean))
    dirty = {}
    for c, values in clean.items():
        values = values.copy()
        for special in (np.nan, np.inf, -np.inf, 0.0, -0.0):
            values[rng.integers(0, n, 20)] = special
        dirty[c] = pa.array(values, mask=rng.uniform(size=n) < 0.01)
    assert_paths_agree(name, pa.record_batch(dirty).slice(3))


TRIANGLE = ("spot_ab", "spot_bc", "spot_ac")


def triangular_reference(batch, fees):
    """numpy in the kernel's operation order: (edge valid, edge, route valid, route index)."""
    xs = [batch[c].to_numpy(zero_copy_only=False).astype(np.float64) for c in TRIANGLE]
    null = np.zeros(batch.num_rows, dtype=bool)
    names = list(TRIANGLE)
    if "fees_bps" in batch.schema.names:
        fee = batch["fees_bps"].to_numpy(zero_copy_only=False).astype(np.float64)
        names.append("fees_bps")
    else:
        fee = np.full(batch.num_rows, 0.0 if fees is None else fees)
    for c in names:
        null |= batch[c].is_null().to_numpy(zero_copy_only=False)
    ab, bc, ac = xs
    with np.errstate(all="ignore"):
        defined = (ab > 0.0) & (bc > 0.0) & (ac > 0.0) & (fee == fee) & ~null
        q = ab * bc
        fwd = (q / ac - 1.0) * 1e4 - fee
        rev = (ac / q - 1.0) * 1e4 - fee
        best = np.where(fwd < rev, rev, fwd)
        route = np.where(best > 0.0, np.where(fwd < rev, 1, 0), 2)
    return defined & ~np.isnan(best), best, defined, route


def assert_triangular_paths_agree(batch, fees):
    edge_valid, edge, route_valid, route = triangular_reference(batch, fees)
    outputs = {}
    for path in _simd.available_paths():
        previous = _simd._use_path(path)
        try:
            out = outputs[path] = triangular_arbitrage(batch, fees_bps=fees)
        finally:
            _simd._use_path(previous)
        assert_bits_equal(out["arb_edge_bps"], edge_valid, edge, f"triangular [{path}] edge")
        codes = out["arb_route"].indices
        np.testing.assert_array_equal(~codes.is_null().to_numpy(zero_copy_only=False),
                                      route_valid, err_msg=f"[{path}] route nulls")
        np.testing.assert_array_equal(
            codes.to_numpy(zero_copy_only=False)[route_valid], route[route_valid],
            err_msg=f"[{path}] routes")
        for column in ("arb_edge_bps", "arb_route"):   # (the inputs may hold NaN: != itself)
            assert out[column].equals(outputs[_simd.PORTABLE][column]), \
                f"triangular {column}: {path} differs from portable"


@settings(max_examples=60, deadline=None)
@given(data=st.data(), fee_column=st.booleans(), fees=st.sampled_from([None, 0.0, 3.5]))
def test_triangular_paths_bit_identical_to_numpy(data, fee_column, fees):
    """Both copies of the triangular loop (two divisions a row, two outputs, fees from the
    parameter or a column) against numpy, bit for bit."""
    columns = TRIANGLE + (("fees_bps",) if fee_column else ())
    assert_triangular_paths_agree(data.draw(batches(columns)), fees)


def test_triangular_long_batches():
    rng = np.random.default_rng(4)
    n = 40_003
    clean = {c: rng.uniform(0.5, 2.0, n) for c in TRIANGLE}
    assert_triangular_paths_agree(pa.record_batch(clean), 2.0)
    dirty = {}
    for c, values in clean.items():
        values = values.copy()
        for special in (np.nan, np.inf, 0.0, -1.0):
            values[rng.integers(0, n, 20)] = special
        dirty[c] = pa.array(values, mask=rng.uniform(size=n) < 0.01)
    dirty["fees_bps"] = pa.array(rng.uniform(0.0, 5.0, n))
    assert_triangular_paths_agree(pa.record_batch(dirty).slice(3), None)


@pytest.mark.parametrize("path", PATHS)
def test_zero_denominators_and_infinities(path):
    b = pa.record_batch({"bid_size": [0.0, -0.0, 1.0, np.inf, np.inf, 2.0, 1.0],
                         "ask_size": [0.0, 0.0, -1.0, 1.0, np.inf, 2.0, None]})
    out = run_on(path, "l1_imbalance", b)
    # (B − A)/(B + A): zero denominators (0 + 0, −0 + 0, 1 − 1) → null; inf/inf and
    # NaN/inf → NaN → null; 0/4 = 0; a null input → null
    assert out.to_pylist() == [None, None, None, None, None, 0.0, None]
    q = pa.record_batch({"bid": [1.0, -1.0, 99.0], "ask": [np.inf, 1.0, 101.0]})
    assert run_on(path, "quoted_spread", q).to_pylist() == [None, None, 2.0 / 100.0 * 1e4]
    e = pa.record_batch({"exec_price": [np.inf, 1.0], "midprice": [1.0, 0.0]})
    assert run_on(path, "effective_spread", e).to_pylist() == [np.inf, None]    # inf stays


def test_cpu_detection_matches_proc_cpuinfo():
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() not in ("x86_64", "AMD64") or not cpuinfo.exists():
        pytest.skip("needs Linux /proc/cpuinfo on x86-64")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("flags")), [])
    assert ("avx2" in _simd.available_paths()) == ("avx2" in flags)  # Linux lists it when
    # the OS also saves the YMM registers


def simd_path_in_subprocess(setting):
    env = {k: v for k, v in os.environ.items() if k != "SABOT_SIMD"}
    if setting is not None:
        env["SABOT_SIMD"] = setting
    return subprocess.run([sys.executable, "-c",
                           "from sabot.fintech import _simd; print(_simd.simd_path())"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_environment_variable_selects_the_path():
    best = _simd.available_paths()[-1]
    assert simd_path_in_subprocess(None).stdout.strip() == best
    assert simd_path_in_subprocess("auto").stdout.strip() == best
    assert simd_path_in_subprocess(" Portable ").stdout.strip() == "portable"
    bad = simd_path_in_subprocess("sse9")
    assert bad.returncode != 0 and "SABOT_SIMD='sse9'" in bad.stderr


def test_unavailable_path_is_refused():
    with pytest.raises(ValueError, match="'avx9'"):
        _simd._use_path("avx9")
    assert _simd.simd_path() in _simd.available_paths()


def test_avx2_copies_use_four_wide_division():
    """The AVX2 copies really are vectorised 256-bit loops (the loop was inlined into the
    ``target("avx2")`` function), read from the built extension's disassembly."""
    if "avx2" not in _simd.available_paths():
        pytest.skip("this CPU cannot run avx2")
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) not installed")
    listing = "\n\n".join(
        subprocess.run([objdump, "-d", "--no-show-raw-insn", module.__file__],
                       capture_output=True, text=True, check=True).stdout
        for module in (microstructure, fx_crypto))
    names = sorted(KERNELS) + ["triangular"]
    bodies = {}
    for block in listing.split("\n\n"):
        head = block.split(">:", 1)[0]
        for name in names:
            if head.endswith(f"{name}_rows_avx2"):
                bodies[name] = block
    if not bodies:
        pytest.skip("the extension's symbols are stripped")
    assert sorted(bodies) == names
    for name, body in bodies.items():
        assert "vdivpd" in body and ("%ymm" in body or "%zmm" in body), \
            f"{name}_rows_avx2 has no 4-wide division"
        assert "call" not in body, f"{name}_rows_avx2 calls out instead of inlining the loop"
