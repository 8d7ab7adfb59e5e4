# cython: language_level=3
"""Liquidity estimators over trailing windows.

Windows count the key's valid rows only: a row with a null/NaN input (or an input outside the
estimator's domain, stated per kernel) gets a null output and is not part of any window. Rows
before a window is full are null.
"""
from libc.math cimport NAN, exp, fabs, log, sqrt

from ._kernel cimport Kernel, KernelIO, emit, key_state, present, set_null
from ._kernel import numeric_input, output
from ._columns import check_positive_int
from ._scope import call_kernel
from ._naming import renamed as _renamed
from ._window cimport ring_count, ring_push
from ._window cimport zsum_count, zsum_push, zsum_width

# ---------------------------------------------------------------- rolling co-moments
# Rolling sums over the last M pairs (x, y) about shifts (Kx, Ky), with header
# [n, Kx, Ky, Sx, Sy, Sxx, Sxy, Syy, run of equal x, last x, run of equal y, last y, Axx, Ayy]
# then a ring of x and a ring of y. Add/subtract leaves rounding of ~eps * A (A = sum of the
# squared deviations added and removed since the last exact pass); the sums are recomputed
# exactly about the window means every M pushes and whenever A exceeds CO_RESUM times the
# current centred sum, so results are as accurate as a two-pass computation on the window.
# The equal-value runs make constant x (or y) give exactly 0.

cdef enum:
    CO_HEADER = 14
    CO_RESUM = 256


cdef inline Py_ssize_t comoments_width(Py_ssize_t M) noexcept nogil:
    return CO_HEADER + 2 * (M + 1)


cdef inline void _co_add(double* c, double x, double y, double sign) noexcept nogil:
    cdef double dx = x - c[1], dy = y - c[2]
    c[0] += sign
    c[3] += sign * dx
    c[4] += sign * dy
    c[5] += sign * dx * dx
    c[6] += sign * dx * dy
    c[7] += sign * dy * dy
    c[12] += dx * dx
    c[13] += dy * dy


cdef inline bint _x_constant(const double* c) noexcept nogil:
    return c[8] >= c[0]


cdef inline bint _y_constant(const double* c) noexcept nogil:
    return c[10] >= c[0]


cdef inline double comoments_sxx(const double* c) noexcept nogil:
    """Sum of squared deviations of x from its window mean (exactly 0 for constant x)."""
    cdef double s
    if _x_constant(c):
        return 0.0
    s = c[5] - c[3] * c[3] / c[0]
    return s if s > 0.0 else 0.0


cdef inline double comoments_syy(const double* c) noexcept nogil:
    """Sum of squared deviations of y from its window mean (exactly 0 for constant y)."""
    cdef double s
    if _y_constant(c):
        return 0.0
    s = c[7] - c[4] * c[4] / c[0]
    return s if s > 0.0 else 0.0


cdef inline double comoments_sxy(const double* c) noexcept nogil:
    """Sum of co-deviations of x and y from their window means (0 when x or y is constant)."""
    if _x_constant(c) or _y_constant(c):
        return 0.0
    return c[6] - c[3] * c[4] / c[0]


cdef inline void _co_exact(double* c, Py_ssize_t M) noexcept nogil:
    """Recompute every sum exactly about the window means (two passes over the rings)."""
    cdef const double* rx = c + CO_HEADER
    cdef const double* ry = c + CO_HEADER + M + 1
    cdef Py_ssize_t k, n = ring_count(rx, M)
    cdef double dx, dy, mx = 0.0, my = 0.0
    for k in range(n):
        mx += rx[1 + k]
        my += ry[1 + k]
    c[1] = mx / n
    c[2] = my / n
    c[3] = 0.0; c[4] = 0.0; c[5] = 0.0; c[6] = 0.0; c[7] = 0.0
    for k in range(n):
        dx = rx[1 + k] - c[1]
        dy = ry[1 + k] - c[2]
        c[3] += dx; c[4] += dy; c[5] += dx * dx; c[6] += dx * dy; c[7] += dy * dy
    c[12] = c[5]
    c[13] = c[7]


cdef inline void comoments_push(double* c, Py_ssize_t M, double x, double y) noexcept nogil:
    """Add the pair (x, y) to the window of the last ``M`` pairs (evicting the oldest)."""
    cdef double* rx = c + CO_HEADER
    cdef double* ry = c + CO_HEADER + M + 1
    cdef double old_x = 0.0, old_y = 0.0
    if c[0] == 0.0:
        c[1] = x
        c[2] = y
    ring_push(ry, M, y, &old_y)
    if ring_push(rx, M, x, &old_x):
        _co_add(c, old_x, old_y, -1.0)
    _co_add(c, x, y, 1.0)
    c[8] = c[8] + 1.0 if (x == c[9] and c[8] > 0.0) else 1.0
    c[9] = x
    c[10] = c[10] + 1.0 if (y == c[11] and c[10] > 0.0) else 1.0
    c[11] = y
    if ((<Py_ssize_t>rx[0]) % M == 0
            or (not _x_constant(c) and c[12] > CO_RESUM * comoments_sxx(c))
            or (not _y_constant(c) and c[13] > CO_RESUM * comoments_syy(c))):
        _co_exact(c, M)


# ---------------------------------------------------------------- kernels

cdef class KyleLambda(Kernel):
    """lambda_t = cov(r, q) / var(q): OLS slope of returns on signed volume over the last N pairs.

    Kyle (1985) price impact; equals ``numpy.polyfit(q, r, 1)[0]`` on each window. Null during
    warm-up and when q is constant over the window (slope undefined).
    """
    cdef Py_ssize_t window

    def __init__(self, returns_column="log_return", volume_column="signed_volume", window=20,
                 *, by=None, **renamed):
        if renamed:
            bound = _renamed("kyle_lambda", renamed, dict(
                returns_column=returns_column, volume_column=volume_column, window=window,
                by=by)).values()
            returns_column, volume_column, window, by = bound
        self.window = check_positive_int("window", window, minimum=2)
        self.declare("kyle_lambda", [numeric_input("returns_column", returns_column),
                                     numeric_input("volume_column", volume_column)],
                     [output("kyle_lambda")], stride=comoments_width(self.window), by=by,
                     config=dict(returns_column=returns_column, volume_column=volume_column,
                                 window=self.window))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, N = self.window
        cdef double r, q, sxx
        cdef double* st
        for i in range(io.n):
            r = io.x[0][i]
            q = io.x[1][i]
            if not present(io, i) or r != r or q != q:
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            comoments_push(st, N, q, r)
            sxx = comoments_sxx(st)
            if st[0] < N or sxx == 0.0:
                set_null(io, 0, i)
            else:
                emit(io, 0, i, comoments_sxy(st) / sxx)


cdef class AmihudIlliquidity(Kernel):
    """ILLIQ_t = mean(|r| / v) over the last N rows with v > 0 (Amihud 2002).

    Rows with v <= 0 are treated as missing: their output is null and they are not part of
    the window (so the window always holds N defined ratios).
    """
    cdef Py_ssize_t window

    def __init__(self, returns_column="log_return", volume_column="volume", window=20, *,
                 by=None, **renamed):
        if renamed:
            bound = _renamed("amihud_illiquidity", renamed, dict(
                returns_column=returns_column, volume_column=volume_column, window=window,
                by=by)).values()
            returns_column, volume_column, window, by = bound
        self.window = check_positive_int("window", window)
        self.declare("amihud_illiquidity", [numeric_input("returns_column", returns_column),
                                            numeric_input("volume_column", volume_column)],
                     [output("amihud_illiquidity")], stride=zsum_width(self.window), by=by,
                     config=dict(returns_column=returns_column, volume_column=volume_column,
                                 window=self.window))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, N = self.window
        cdef double r, v, s
        cdef double* st
        for i in range(io.n):
            r = io.x[0][i]
            v = io.x[1][i]
            if not present(io, i) or r != r or not v > 0.0:
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            s = zsum_push(st, N, fabs(r) / v)
            if zsum_count(st, N) < N:
                set_null(io, 0, i)
            else:
                emit(io, 0, i, s / N)


cdef class RollSpread(Kernel):
    """S_t = 2 sqrt(-cov(r_t, r_{t-1})) if cov < 0 else 0 (Roll 1984).

    cov is the sample covariance (ddof=1, as ``numpy.cov``) of the N-1 neighbouring pairs
    (r_{i-1}, r_i) inside the last N = ``window`` returns (N >= 3).
    """
    cdef Py_ssize_t window

    def __init__(self, returns_column="log_return", window=20, *, by=None, **renamed):
        if renamed:
            bound = _renamed("roll_spread", renamed, dict(
                returns_column=returns_column, window=window, by=by)).values()
            returns_column, window, by = bound
        self.window = check_positive_int("window", window, minimum=3)
        self.declare("roll_spread", [numeric_input("returns_column", returns_column)],
                     [output("roll_spread")], stride=2 + comoments_width(self.window - 1),
                     by=by, config=dict(returns_column=returns_column, window=self.window))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, M = self.window - 1
        cdef double r, cov
        cdef double* st                       # [seen, r_prev, co-moments of M pairs]
        for i in range(io.n):
            r = io.x[0][i]
            if not present(io, i) or r != r:
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            if st[0] == 0.0:
                st[0] = 1.0
                st[1] = r
                set_null(io, 0, i)
                continue
            comoments_push(st + 2, M, st[1], r)
            st[1] = r
            if st[2] < M:
                set_null(io, 0, i)
                continue
            cov = comoments_sxy(st + 2) / (M - 1.0)
            io.out[0][i] = 2.0 * sqrt(-cov) if cov < 0.0 else 0.0


cdef double CS_K = 3.0 - 2.0 * sqrt(2.0)


cdef inline double corwin_schultz_two_bar(double h1, double l1, double h2,
                                          double l2) noexcept nogil:
    """Corwin & Schultz (2012) spread from two consecutive bars, negative estimates set to 0.

    beta = ln(H1/L1)^2 + ln(H2/L2)^2, gamma = ln(max(H1,H2)/min(L1,L2))^2,
    alpha = (sqrt(2 beta) - sqrt(beta))/(3 - 2 sqrt2) - sqrt(gamma/(3 - 2 sqrt2)),
    S = 2 (e^alpha - 1)/(1 + e^alpha).
    """
    cdef double a1 = log(h1 / l1), a2 = log(h2 / l2)
    cdef double beta = a1 * a1 + a2 * a2
    cdef double g = log((h1 if h1 > h2 else h2) / (l1 if l1 < l2 else l2))
    cdef double alpha = (sqrt(2.0 * beta) - sqrt(beta)) / CS_K - sqrt(g * g / CS_K)
    cdef double e = exp(alpha)
    cdef double s = 2.0 * (e - 1.0) / (1.0 + e)
    return s if s > 0.0 else 0.0


cdef class CorwinSchultzSpread(Kernel):
    """Corwin & Schultz (2012) high-low spread estimator.

    Each pair of consecutive valid bars gives a two-bar estimate (negative → 0, as in the
    paper); the output is the mean of the W-1 two-bar estimates inside the last W = ``window``
    bars (W = 2: one estimate per pair of bars). Bars with L <= 0 or H < L are treated as
    missing. The paper's overnight-return adjustment is not applied.
    """
    cdef Py_ssize_t window

    def __init__(self, high_column="high", low_column="low", window=2, *, by=None, **renamed):
        if renamed:
            bound = _renamed("corwin_schultz_spread", renamed, dict(
                high_column=high_column, low_column=low_column, window=window, by=by)).values()
            high_column, low_column, window, by = bound
        self.window = check_positive_int("window", window, minimum=2)
        self.declare("corwin_schultz_spread", [numeric_input("high_column", high_column),
                                               numeric_input("low_column", low_column)],
                     [output("corwin_schultz_spread")],
                     stride=3 + zsum_width(self.window - 1), by=by,
                     config=dict(high_column=high_column, low_column=low_column,
                                 window=self.window))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, M = self.window - 1
        cdef double h, l, s
        cdef double* st                       # [seen, H_prev, L_prev, rolling sum of estimates]
        for i in range(io.n):
            h = io.x[0][i]
            l = io.x[1][i]
            if not present(io, i) or not (l > 0.0 and h >= l):    # also rejects NaN
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            if st[0] == 0.0:
                st[0] = 1.0
                st[1] = h
                st[2] = l
                set_null(io, 0, i)
                continue
            s = zsum_push(st + 3, M, corwin_schultz_two_bar(st[1], st[2], h, l))
            st[1] = h
            st[2] = l
            if zsum_count(st + 3, M) < M:
                set_null(io, 0, i)
            else:
                emit(io, 0, i, s / M)


def kyle_lambda(batch, returns_column="log_return", volume_column="signed_volume", window=20,
                *, by=None, **renamed):
    """Append ``kyle_lambda``: rolling OLS slope cov(r, q)/var(q) (numpy polyfit per window)."""
    if renamed:
        bound = _renamed("kyle_lambda", renamed, dict(
            returns_column=returns_column, volume_column=volume_column, window=window,
            by=by)).values()
        returns_column, volume_column, window, by = bound
    return call_kernel(KyleLambda, batch, returns_column=returns_column,
                       volume_column=volume_column, window=window, by=by)


def amihud_illiquidity(batch, returns_column="log_return", volume_column="volume", window=20,
                       *, by=None, **renamed):
    """Append ``amihud_illiquidity`` = mean(|r|/v) over the last ``window`` rows with v > 0."""
    if renamed:
        bound = _renamed("amihud_illiquidity", renamed, dict(
            returns_column=returns_column, volume_column=volume_column, window=window,
            by=by)).values()
        returns_column, volume_column, window, by = bound
    return call_kernel(AmihudIlliquidity, batch, returns_column=returns_column,
                       volume_column=volume_column, window=window, by=by)


def roll_spread(batch, returns_column="log_return", window=20, *, by=None, **renamed):
    """Append ``roll_spread`` = 2 sqrt(-cov(r_t, r_{t-1})) (0 when cov >= 0)."""
    if renamed:
        bound = _renamed("roll_spread", renamed, dict(
            returns_column=returns_column, window=window, by=by)).values()
        returns_column, window, by = bound
    return call_kernel(RollSpread, batch, returns_column=returns_column, window=window, by=by)


def corwin_schultz_spread(batch, high_column="high", low_column="low", window=2, *, by=None,
                          **renamed):
    """Append ``corwin_schultz_spread`` (Corwin & Schultz 2012, mean of two-bar estimates)."""
    if renamed:
        bound = _renamed("corwin_schultz_spread", renamed, dict(
            high_column=high_column, low_column=low_column, window=window, by=by)).values()
        high_column, low_column, window, by = bound
    return call_kernel(CorwinSchultzSpread, batch, high_column=high_column,
                       low_column=low_column, window=window, by=by)
