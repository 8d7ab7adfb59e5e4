"""Build every Cython module under sabot/ (one extension per .pyx)."""
import os
import sysconfig
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

ROOT = Path(__file__).parent

# Kernel loops are written once for both keyed and unkeyed state (``row_state`` in
# sabot/fintech/_kernel.pxd); GCC must be allowed to unswitch the larger loops on "no ``by``"
# to keep unkeyed state in registers, and to inline the loop functions kernels call twice
# (``_moment_rows(io, ..., keyed)``) so that each copy is specialised.  Its SLP vectoriser packs
# pairs of recurrences (RSI's gain and loss) into one vector that is spilled on every row,
# slower than two scalar chains: off.
# -ffp-contract=off: no fused multiply-adds, in any build or loop copy, so every operation rounds
# the same way whichever instructions run it.
COMPILE_ARGS = ["-O3", "-fno-math-errno", "-ffp-contract=off"]
if "gcc" in (os.environ.get("CC") or sysconfig.get_config_var("CC") or ""):
    COMPILE_ARGS += ["--param=max-unswitch-insns=1000", "-fno-tree-slp-vectorize",
                     "--param=max-inline-insns-single=1000"]

# The default build is portable x86-64 (SSE2); the dividing element-wise loops (spreads,
# imbalance, microprice) also carry an AVX2 copy chosen at run time (sabot/fintech/_simd.h).
# SABOT_MARCH=native (or another -march value) builds everything for one CPU family, e.g. with
# AVX2: the other division- and square-root-bound kernels (rolling std) then use 4-wide vectors
# too.  Such a build runs only on CPUs with those instructions.
MARCH = os.environ.get("SABOT_MARCH", "").strip()
if MARCH:
    COMPILE_ARGS += [f"-march={MARCH}"]

extensions = [
    Extension(
        ".".join(pyx.relative_to(ROOT).with_suffix("").parts),
        [str(pyx.relative_to(ROOT))],
        extra_compile_args=COMPILE_ARGS,
    )
    for pyx in sorted((ROOT / "sabot").rglob("*.pyx"))
]

# Compile the extensions in parallel (pip builds call build_ext without -j): SABOT_BUILD_JOBS,
# else every CPU.  ``setup.py build_ext -jN`` on the command line still wins.
try:
    JOBS = max(1, int(os.environ.get("SABOT_BUILD_JOBS") or os.cpu_count() or 1))
except ValueError:
    raise SystemExit(f"SABOT_BUILD_JOBS must be a whole number, got "
                     f"{os.environ['SABOT_BUILD_JOBS']!r}") from None

setup(
    options={"build_ext": {"parallel": JOBS}},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        nthreads=JOBS,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)
