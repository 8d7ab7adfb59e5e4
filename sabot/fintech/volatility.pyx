# cython: language_level=3
"""Volatility estimators over trailing windows of returns or bars.

Windows count the key's valid rows only: a row with a null/NaN input (or a non-positive price
where a logarithm is taken) gets a null output and is not part of any window. Rows before a
window is full are null. Rolling sums are kept by running add/subtract, re-summed exactly every
``window`` pushes, so rounding never accumulates beyond one window, and exactly 0
for a window of zeros (``_sums.zsum_push``).
"""
from libc.math cimport M_PI, NAN, fabs, log, sqrt

from ._kernel cimport Kernel, KernelIO, emit, key_state, present, set_null
from ._kernel import numeric_input, output
from ._columns import check_positive_int
from ._scope import call_kernel
from ._naming import renamed as _renamed
from ._window cimport zsum_count, zsum_push, zsum_width

# pi / (6 - 4 sqrt(3) + pi): MedRV scale (Andersen, Dobrev & Schaumburg 2012).
cdef double MEDRV_SCALE = M_PI / (6.0 - 4.0 * sqrt(3.0) + M_PI)


cdef inline double _median3(double a, double b, double c) noexcept nogil:
    cdef double lo = a if a < b else b
    cdef double hi = a if a > b else b
    if c < lo:
        return lo
    if c > hi:
        return hi
    return c


cdef inline double _log_ratio(double num, double den) noexcept nogil:
    """ln(num/den) for positive prices; NaN (treated as missing) otherwise."""
    if not (num > 0.0 and den > 0.0):
        return NAN
    return log(num / den)


def _check_lambda(value):
    v = float(value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"lambda_param must be in [0, 1), got {value!r}")
    return v


cdef class RealizedVar(Kernel):
    """RV_t = sum of r^2 over the last ``window`` returns (numpy reference)."""
    cdef Py_ssize_t window

    def __init__(self, returns_column="log_return", window=20, *, by=None, **renamed):
        if renamed:
            bound = _renamed("realized_var", renamed, dict(
                returns_column=returns_column, window=window, by=by)).values()
            returns_column, window, by = bound
        self.window = check_positive_int("window", window)
        self.declare("realized_var", [numeric_input("returns_column", returns_column)],
                     [output("realized_var")], stride=zsum_width(self.window), by=by,
                     config=dict(returns_column=returns_column, window=self.window))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, N = self.window
        cdef double r, s
        cdef double* st
        for i in range(io.n):
            r = io.x[0][i]
            if not present(io, i) or r != r:
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            s = zsum_push(st, N, r * r)
            if zsum_count(st, N) < N:
                set_null(io, 0, i)
            else:
                io.out[0][i] = s


cdef class BipowerVar(Kernel):
    """BV_t = (pi/2) * sum_{i=2..N} |r_i||r_{i-1}| over the last N = ``window`` returns.

    Barndorff-Nielsen & Shephard (2004), without the N/(N-1) finite-sample factor.
    The N-1 products of neighbouring returns inside the window are summed.
    """
    cdef Py_ssize_t window

    def __init__(self, returns_column="log_return", window=20, *, by=None, **renamed):
        if renamed:
            bound = _renamed("bipower_var", renamed, dict(
                returns_column=returns_column, window=window, by=by)).values()
            returns_column, window, by = bound
        self.window = check_positive_int("window", window, minimum=2)
        self.declare("bipower_var", [numeric_input("returns_column", returns_column)],
                     [output("bipower_var")], stride=2 + zsum_width(self.window - 1), by=by,
                     config=dict(returns_column=returns_column, window=self.window))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, M = self.window - 1
        cdef double r, a, s
        cdef double* st                       # [seen, |r_prev|, rolling sum of products]
        for i in range(io.n):
            r = io.x[0][i]
            if not present(io, i) or r != r:
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            a = fabs(r)
            if st[0] == 0.0:
                st[0] = 1.0
                st[1] = a
                set_null(io, 0, i)
                continue
            s = zsum_push(st + 2, M, a * st[1])
            st[1] = a
            if zsum_count(st + 2, M) < M:
                set_null(io, 0, i)
            else:
                io.out[0][i] = 0.5 * M_PI * s


cdef class MedRV(Kernel):
    """MedRV_t = pi/(6-4sqrt3+pi) * N/(N-2) * sum_{i=2..N-1} med(|r_{i-1}|,|r_i|,|r_{i+1}|)^2.

    Andersen, Dobrev & Schaumburg (2012), as R highfrequency's ``rMedRVar``; the window is
    exactly the last N = ``window`` returns (its N-2 median triples), N >= 3.
    """
    cdef Py_ssize_t window

    def __init__(self, returns_column="log_return", window=20, *, by=None, **renamed):
        if renamed:
            bound = _renamed("medrv", renamed, dict(
                returns_column=returns_column, window=window, by=by)).values()
            returns_column, window, by = bound
        self.window = check_positive_int("window", window, minimum=3)
        self.declare("medrv", [numeric_input("returns_column", returns_column)],
                     [output("medrv")], stride=3 + zsum_width(self.window - 2), by=by,
                     config=dict(returns_column=returns_column, window=self.window))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, N = self.window, M = self.window - 2
        cdef double r, a, m, s
        cdef double scale = MEDRV_SCALE * N / (N - 2.0)
        cdef double* st                       # [seen, |r_{t-2}|, |r_{t-1}|, rolling sum of med^2]
        for i in range(io.n):
            r = io.x[0][i]
            if not present(io, i) or r != r:
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            a = fabs(r)
            if st[0] < 2.0:
                st[0] += 1.0
                st[1] = st[2]
                st[2] = a
                set_null(io, 0, i)
                continue
            m = _median3(st[1], st[2], a)
            st[1] = st[2]
            st[2] = a
            s = zsum_push(st + 3, M, m * m)
            if zsum_count(st + 3, M) < M:
                set_null(io, 0, i)
            else:
                io.out[0][i] = scale * s


cdef class RiskMetricsVol(Kernel):
    """sigma^2_t = lambda sigma^2_{t-1} + (1-lambda) r_t^2, sigma^2_0 = r_0^2; output sigma_t.

    J.P. Morgan RiskMetrics (1996). Equals sqrt of pandas
    ``(r**2).ewm(alpha=1-lambda, adjust=False).mean()``; defined from the first return.
    """
    cdef double lam

    def __init__(self, returns_column="log_return", lambda_param=0.94, *, by=None, **renamed):
        if renamed:
            bound = _renamed("riskmetrics_vol", renamed, dict(
                returns_column=returns_column, lambda_param=lambda_param, by=by)).values()
            returns_column, lambda_param, by = bound
        self.lam = _check_lambda(lambda_param)
        self.declare("riskmetrics_vol", [numeric_input("returns_column", returns_column)],
                     [output("riskmetrics_vol")], stride=1, by=by,
                     config=dict(returns_column=returns_column, lambda_param=self.lam))

    cdef void init_state(self, double* st) noexcept nogil:
        st[0] = NAN                           # sigma^2 so far

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double r, lam = self.lam
        cdef double* st
        for i in range(io.n):
            r = io.x[0][i]
            if not present(io, i) or r != r:
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            if st[0] != st[0]:
                st[0] = r * r
            else:
                st[0] = lam * st[0] + (1.0 - lam) * r * r
            io.out[0][i] = sqrt(st[0])


cdef class ParkinsonVol(Kernel):
    """sigma_t = sqrt(sum ln(H/L)^2 / (4 ln2 N)) over the last N = ``window`` bars.

    Parkinson (1980). Bars with H <= 0 or L <= 0 are treated as missing.
    """
    cdef Py_ssize_t window

    def __init__(self, high_column="high", low_column="low", window=20, *, by=None, **renamed):
        if renamed:
            bound = _renamed("parkinson_vol", renamed, dict(
                high_column=high_column, low_column=low_column, window=window, by=by)).values()
            high_column, low_column, window, by = bound
        self.window = check_positive_int("window", window)
        self.declare("parkinson_vol", [numeric_input("high_column", high_column),
                                       numeric_input("low_column", low_column)],
                     [output("parkinson_vol")], stride=zsum_width(self.window), by=by,
                     config=dict(high_column=high_column, low_column=low_column,
                                 window=self.window))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, N = self.window
        cdef double hl, s, denom = 4.0 * log(2.0) * N
        cdef double* st
        for i in range(io.n):
            hl = _log_ratio(io.x[0][i], io.x[1][i])
            if not present(io, i) or hl != hl:
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            s = zsum_push(st, N, hl * hl)
            if zsum_count(st, N) < N:
                set_null(io, 0, i)
            else:
                io.out[0][i] = sqrt(s / denom)


cdef class GarmanKlassVol(Kernel):
    """sigma_t = sqrt(mean(0.5 ln(H/L)^2 - (2 ln2 - 1) ln(C/O)^2)) over the last N bars.

    Garman & Klass (1980). Non-positive prices are treated as missing; a negative mean
    (only possible for inconsistent bars, C/O outside H/L) gives null.
    """
    cdef Py_ssize_t window

    def __init__(self, open_column="open", high_column="high", low_column="low",
                 close_column="close", window=20, *, by=None, **renamed):
        if renamed:
            bound = _renamed("garman_klass_vol", renamed, dict(
                open_column=open_column, high_column=high_column, low_column=low_column,
                close_column=close_column, window=window, by=by)).values()
            open_column, high_column, low_column, close_column, window, by = bound
        self.window = check_positive_int("window", window)
        self.declare("garman_klass_vol", [numeric_input("open_column", open_column),
                                          numeric_input("high_column", high_column),
                                          numeric_input("low_column", low_column),
                                          numeric_input("close_column", close_column)],
                     [output("garman_klass_vol")], stride=zsum_width(self.window), by=by,
                     config=dict(open_column=open_column, high_column=high_column,
                                 low_column=low_column, close_column=close_column,
                                 window=self.window))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, N = self.window
        cdef double hl, co, s, k = 2.0 * log(2.0) - 1.0
        cdef double* st
        for i in range(io.n):
            hl = _log_ratio(io.x[1][i], io.x[2][i])
            co = _log_ratio(io.x[3][i], io.x[0][i])
            if not present(io, i) or hl != hl or co != co:
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            s = zsum_push(st, N, 0.5 * hl * hl - k * co * co)
            if zsum_count(st, N) < N:
                set_null(io, 0, i)
            else:
                s = s / N
                emit(io, 0, i, sqrt(s) if s >= 0.0 else NAN)


def realized_var(batch, returns_column="log_return", window=20, *, by=None, **renamed):
    """Append ``realized_var`` = sum of r^2 over the last ``window`` returns."""
    if renamed:
        bound = _renamed("realized_var", renamed, dict(
            returns_column=returns_column, window=window, by=by)).values()
        returns_column, window, by = bound
    return call_kernel(RealizedVar, batch, returns_column=returns_column, window=window, by=by)


def bipower_var(batch, returns_column="log_return", window=20, *, by=None, **renamed):
    """Append ``bipower_var`` = (pi/2) sum |r_i||r_{i-1}| within the last ``window`` returns."""
    if renamed:
        bound = _renamed("bipower_var", renamed, dict(
            returns_column=returns_column, window=window, by=by)).values()
        returns_column, window, by = bound
    return call_kernel(BipowerVar, batch, returns_column=returns_column, window=window, by=by)


def medrv(batch, returns_column="log_return", window=20, *, by=None, **renamed):
    """Append ``medrv`` (median realized variance, highfrequency ``rMedRVar``)."""
    if renamed:
        bound = _renamed("medrv", renamed, dict(
            returns_column=returns_column, window=window, by=by)).values()
        returns_column, window, by = bound
    return call_kernel(MedRV, batch, returns_column=returns_column, window=window, by=by)


def riskmetrics_vol(batch, returns_column="log_return", lambda_param=0.94, *, by=None, **renamed):
    """Append ``riskmetrics_vol`` = sqrt of the RiskMetrics EWMA variance of returns."""
    if renamed:
        bound = _renamed("riskmetrics_vol", renamed, dict(
            returns_column=returns_column, lambda_param=lambda_param, by=by)).values()
        returns_column, lambda_param, by = bound
    return call_kernel(RiskMetricsVol, batch, returns_column=returns_column,
                       lambda_param=lambda_param, by=by)


def parkinson_vol(batch, high_column="high", low_column="low", window=20, *, by=None, **renamed):
    """Append ``parkinson_vol`` (Parkinson 1980 high-low range estimator)."""
    if renamed:
        bound = _renamed("parkinson_vol", renamed, dict(
            high_column=high_column, low_column=low_column, window=window, by=by)).values()
        high_column, low_column, window, by = bound
    return call_kernel(ParkinsonVol, batch, high_column=high_column, low_column=low_column,
                       window=window, by=by)


def garman_klass_vol(batch, open_column="open", high_column="high", low_column="low",
                     close_column="close", window=20, *, by=None, **renamed):
    """Append ``garman_klass_vol`` (Garman & Klass 1980 OHLC estimator)."""
    if renamed:
        bound = _renamed("garman_klass_vol", renamed, dict(
            open_column=open_column, high_column=high_column, low_column=low_column,
            close_column=close_column, window=window, by=by)).values()
        open_column, high_column, low_column, close_column, window, by = bound
    return call_kernel(GarmanKlassVol, batch, open_column=open_column,
                       high_column=high_column, low_column=low_column,
                       close_column=close_column, window=window, by=by)
