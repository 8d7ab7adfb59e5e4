# cython: language_level=3
"""Rolling sum that is exactly 0 when every value in its window is 0.

``_window.sum_push`` keeps the sum by add/subtract (re-summed every N pushes), so once large
values leave the window a residue of rounding (~1e-16 of them) can remain; relative to a window
of zeros (flat prices: zero returns, zero ranges, clamped estimates) that residue is infinite.
Counting the nonzero values in the window makes that case exact. Layout: ``[nonzero count,
sum_push state]``.
"""
from ._window cimport ring_get, sum_count, sum_push, sum_width


cdef inline Py_ssize_t zsum_width(Py_ssize_t N) noexcept nogil:
    return 1 + sum_width(N)


cdef inline double zsum_push(double* z, Py_ssize_t N, double x) noexcept nogil:
    """Add ``x`` to the sum of the last ``N`` values and return the sum."""
    cdef double s
    if sum_count(z + 1, N) == N and ring_get(z + 2, N, N - 1) != 0.0:
        z[0] -= 1.0                                 # a nonzero value is evicted
    if x != 0.0:
        z[0] += 1.0
    s = sum_push(z + 1, N, x)
    return s if z[0] > 0.0 else 0.0


cdef inline Py_ssize_t zsum_count(const double* z, Py_ssize_t N) noexcept nogil:
    """Values in the window (saturates at N)."""
    return sum_count(z + 1, N)
