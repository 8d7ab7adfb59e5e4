# cython: language_level=3
"""Rolling sum over the last N values, as accurate as summing the window afresh.

Kept by running add/subtract; the rounding of that is at most ~eps times the sum of the
magnitudes added and removed since the last exact re-sum (``A``). The window is re-summed
exactly whenever ``A`` exceeds ``ZSUM_RESUM`` times the current |sum| (a large value has left
the window) and at least every N pushes, so the relative error stays ~1e-13 whatever the data.
A count of the nonzero values held makes a window of zeros (flat prices: zero returns, zero
ranges, clamped estimates) exactly 0. Layout: ``[nonzero count, sum, A, ring of N values]``.
"""
from ._window cimport ring_count, ring_push

cdef enum:
    ZSUM_RESUM = 256


cdef inline Py_ssize_t zsum_width(Py_ssize_t N) noexcept nogil:
    return 3 + N + 1


cdef inline double zsum_push(double* z, Py_ssize_t N, double x) noexcept nogil:
    """Add ``x`` to the sum of the last ``N`` values (evicting the oldest) and return the sum."""
    cdef double* ring = z + 3
    cdef double old, s
    cdef Py_ssize_t k, n
    if ring_push(ring, N, x, &old):
        z[1] -= old
        z[2] += old if old >= 0.0 else -old
        if old != 0.0:
            z[0] -= 1.0
    z[1] += x
    z[2] += x if x >= 0.0 else -x
    if x != 0.0:
        z[0] += 1.0
    if z[0] == 0.0:
        z[1] = 0.0
        z[2] = 0.0
        return 0.0
    s = z[1] if z[1] >= 0.0 else -z[1]
    if (<Py_ssize_t>ring[0]) % N == 0 or z[2] > ZSUM_RESUM * s:
        n = ring_count(ring, N)
        z[1] = 0.0
        z[2] = 0.0
        for k in range(n):
            z[1] += ring[1 + k]
            z[2] += ring[1 + k] if ring[1 + k] >= 0.0 else -ring[1 + k]
    return z[1]


cdef inline Py_ssize_t zsum_count(const double* z, Py_ssize_t N) noexcept nogil:
    """Values in the window (saturates at N)."""
    return ring_count(z + 3, N)
