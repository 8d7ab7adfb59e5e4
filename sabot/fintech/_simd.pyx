# cython: language_level=3
"""Which copy of the dispatched element-wise loops runs (see ``_simd.pxd``).

``avx2`` when the CPU (and OS) supports AVX2, else ``portable`` (the build's baseline, SSE2 on
x86-64).  Both copies give bit-identical results: same operations in the same order, no fused
multiply-add.  The environment variable ``SABOT_SIMD`` is read once, at import: ``auto`` (the
default) or ``portable`` to force the portable loops.
"""
import os

PORTABLE = "portable"
AVX2 = "avx2"

cdef bint _avx2 = False


cdef bint avx2_active() noexcept nogil:
    return _avx2


def available_paths() -> tuple:
    """The loop copies this CPU can run, portable first."""
    return (PORTABLE, AVX2) if cpu_has_avx2() else (PORTABLE,)


def simd_path() -> str:
    """The copy in use: ``"avx2"`` or ``"portable"``."""
    return AVX2 if _avx2 else PORTABLE


def _use_path(path: str) -> str:
    """Switch to ``path`` (one of :func:`available_paths`) and return the previous one.

    For tests and benchmarks that compare both copies in one process."""
    global _avx2
    if path not in available_paths():
        raise ValueError(f"SIMD path {path!r} is not available on this CPU; "
                         f"choose one of {available_paths()}")
    previous = simd_path()
    _avx2 = path == AVX2
    return previous


def _path_from_environment() -> str:
    setting = os.environ.get("SABOT_SIMD", "auto").strip().lower() or "auto"
    if setting == "auto":
        return AVX2 if cpu_has_avx2() else PORTABLE
    if setting == PORTABLE:
        return PORTABLE
    raise ValueError(f"SABOT_SIMD={os.environ['SABOT_SIMD']!r}: expected 'auto' or 'portable'")


_use_path(_path_from_environment())
