# cython: language_level=3
"""Online statistics: log returns, Welford mean/variance, EWMA, EW covariance, rolling z-score."""
from libc.math cimport NAN, log, sqrt
from libc.stdint cimport uint32_t, uint64_t

from ._kernel cimport (Kernel, KernelIO, emit, key_state, local_to_state, non_finite_mark,
                      present, present_rows, report_finite, row_state, set_null,
                      state_to_local)
from ._simd cimport avx2_active, avx2_void, avx512_void, cpu_has_avx512f
from ._kernel import numeric_input, output, value_input
from ._columns import check_positive_int, check_unit_interval
from ._scope import call_kernel
from ._naming import renamed as _renamed, upgrade_state as _upgrade_state
from ._window cimport (Var, var_constant, var_full, var_load, var_m2, var_mean, var_push_row,
                       var_store, var_width)


cdef class LogReturns(Kernel):
    """r_t = ln(p_t / p_{t-1}) per key; first row of a key null; p <= 0 is treated as missing.

    ``price_column`` None reads ``price``, else ``close`` (bars)."""
    def __init__(self, price_column=None, *, by=None, **renamed):
        if renamed:
            bound = _renamed("log_returns", renamed, dict(
                price_column=price_column, by=by)).values()
            price_column, by = bound
        self.declare("log_returns", [value_input("price_column", price_column)],
                     [output("log_return")], stride=1, by=by,
                     config=dict(price_column=price_column))

    def load_state_dict(self, dict d):
        """Also state saved before the naming rule (old names or old default recorded)."""
        Kernel.load_state_dict(self, _upgrade_state(d, self.config))

    cdef void init_state(self, double* st) noexcept nogil:
        st[0] = NAN                                   # previous price

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double p
        cdef double* st
        if (io.slot == NULL and io.n > 1 and present_rows(io.ok, io.n) == io.n
                and _log_returns_clean(io)):
            return
        for i in range(io.n):
            p = io.x[0][i]
            st = key_state(io, i)
            if not present(io, i) or not p > 0.0:     # null, NaN or p <= 0
                set_null(io, 0, i)
                continue
            emit(io, 0, i, _log(p / st[0]))           # NaN (no previous) -> null
            st[0] = p


# ------------------------------------------------------------ log returns without keys
# ln(p_t / p_{t-1}) in a loop that vectorises: the logarithm of a positive normal double by
# fdlibm's method (error below 1 ulp), written without branches or calls.  Every log return,
# on the fast path or not, goes through ``_log``, so results do not depend on how a batch is
# split or which path ran it.

cdef extern from *:
    """
    #include <string.h>
    static inline uint64_t sabot_double_bits(double x) { uint64_t u; memcpy(&u, &x, 8); return u; }
    static inline double sabot_bits_double(uint64_t u) { double x; memcpy(&x, &u, 8); return x; }
    static const double sabot_ln2_hi = 6.93147180369123816490e-01;  /* 3fe62e42 fee00000 */
    static const double sabot_ln2_lo = 1.90821492927058770002e-10;  /* 3dea39ef 35793c76 */
    static const double sabot_lg1 = 6.666666666666735130e-01;       /* 3fe55555 55555593 */
    static const double sabot_lg2 = 3.999999999940941908e-01;       /* 3fd99999 9997fa04 */
    static const double sabot_lg3 = 2.857142874366239149e-01;       /* 3fd24924 94229359 */
    static const double sabot_lg4 = 2.222219843214978396e-01;       /* 3fcc71c5 1d8e78af */
    static const double sabot_lg5 = 1.818357216161805012e-01;       /* 3fc74664 96cb03de */
    static const double sabot_lg6 = 1.531383769920937332e-01;       /* 3fc39a09 d078c69f */
    static const double sabot_lg7 = 1.479819860511658591e-01;       /* 3fc2f112 df3e5244 */
    static const double sabot_min_normal = 2.2250738585072014e-308;
    static const double sabot_max_finite = 1.7976931348623157e308;
    """
    uint64_t _bits "sabot_double_bits"(double x) noexcept nogil
    void _prefetch "__builtin_prefetch"(const void* address) noexcept nogil
    double _from_bits "sabot_bits_double"(uint64_t u) noexcept nogil
    const double LN2_HI "sabot_ln2_hi"
    const double LN2_LO "sabot_ln2_lo"
    const double LG1 "sabot_lg1"
    const double LG2 "sabot_lg2"
    const double LG3 "sabot_lg3"
    const double LG4 "sabot_lg4"
    const double LG5 "sabot_lg5"
    const double LG6 "sabot_lg6"
    const double LG7 "sabot_lg7"
    const double DBL_MIN_NORMAL "sabot_min_normal"
    const double DBL_MAX_FINITE "sabot_max_finite"

cdef enum:
    _HX_LOW = 0x6147a           # fdlibm's range of high mantissa bits for its "near" formula
    _HX_HIGH = 0x6b851


cdef inline double _ln_normal(double x) noexcept nogil:
    """ln x for a positive, normal, finite ``x`` by fdlibm's ``__ieee754_log`` (error below
    1 ulp): x = 2^k m with m in [sqrt(2)/2, sqrt(2)), f = m - 1, s = f / (2 + f),
    ln(1 + f) = 2s + s R(s^2), its two final formulas chosen by a select instead of a branch
    and k converted through the bits of 2^52 (integer and double operations that vectorise
    with SSE2).  With ``-ffp-contract=off`` every copy of the loop rounds the same way."""
    cdef uint64_t u = _bits(x)
    cdef uint64_t half = (((u >> 32) & 0x000fffff) + 0x95f64) & 0x100000   # m >= sqrt(2): x / 2
    cdef double m = _from_bits((u & 0x000fffffffffffffULL) | ((half ^ 0x3ff00000ULL) << 32))
    cdef double dk = (_from_bits(0x4330000000000000ULL | ((u >> 52) + (half >> 20)))
                      - 4503599627370496.0) - 1023.0
    # the high mantissa bits as 1.hx (exact), compared instead of the integer hx
    cdef double high = _from_bits((u & 0x000fffff00000000ULL) | 0x3ff0000000000000ULL)
    cdef double f = m - 1.0
    cdef double s = f / (2.0 + f)
    cdef double z = s * s
    cdef double w = z * z
    cdef double t1 = w * (LG2 + w * (LG4 + w * LG6))
    cdef double t2 = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)))
    cdef double r = t2 + t1
    cdef double hfsq = 0.5 * f * f
    cdef double near = dk * LN2_HI - ((hfsq - (s * (hfsq + r) + dk * LN2_LO)) - f)
    cdef double other = dk * LN2_HI - ((s * (f - r) - dk * LN2_LO) - f)
    cdef uint64_t pick = 0ULL - <uint64_t>((high >= 1.0 + _HX_LOW / 1048576.0)
                                           & (high <= 1.0 + _HX_HIGH / 1048576.0))
    return _from_bits((_bits(near) & pick) | (_bits(other) & ~pick))     # a select, no branch


cdef inline bint _normal(double x) noexcept nogil:
    return (x >= DBL_MIN_NORMAL) & (x <= DBL_MAX_FINITE)


cdef inline double _log(double x) noexcept nogil:
    """ln x: ``_ln_normal`` for positive normal finite x, the C library otherwise (NaN,
    0, subnormal, inf)."""
    if _normal(x):
        return _ln_normal(x)
    return log(x)


cdef inline uint32_t _log_ratio_rows(const double* x, double* out, Py_ssize_t n) noexcept nogil:
    """``out[i] = ln(x[i] / x[i-1])`` for i in 1..n-1; returns the OR of the results'
    ``non_finite_mark`` with bit 0 set when a ratio was not a positive normal double (those
    rows then need ``_log``) and bit 1 when a price was not > 0 or NaN (the block then needs
    the row loop).  One pass: the prices are checked in the same loop."""
    cdef Py_ssize_t i
    cdef double r
    cdef uint32_t marks = 0, abnormal = 0, bad = 0
    for i in range(1, n):
        bad |= not (x[i] > 0.0)
        r = x[i] / x[i - 1]
        abnormal |= not _normal(r)
        r = _ln_normal(r)
        out[i] = r
        marks |= non_finite_mark(r)
    return marks | abnormal | (bad << 1)


cdef avx2_void _log_ratio_rows_avx2(const double* x, double* out, Py_ssize_t n,
                                    uint32_t* marks) noexcept nogil:
    marks[0] = _log_ratio_rows(x, out, n)


cdef avx512_void _log_ratio_rows_avx512(const double* x, double* out, Py_ssize_t n,
                                        uint32_t* marks) noexcept nogil:
    marks[0] = _log_ratio_rows(x, out, n)


cdef bint _avx512 = cpu_has_avx512f()      # the 8-wide copy, where the AVX2 path is in use


def _use_avx512(bint on):
    """Private, for tests: whether log returns take their AVX-512 copy where the AVX2 path is
    in use (only where the CPU has it); returns the previous setting."""
    global _avx512
    previous = _avx512
    _avx512 = on and cpu_has_avx512f()
    return previous


cdef bint _log_returns_clean(KernelIO* io) noexcept nogil:
    """Log returns of a block without keys and without null prices; False (state untouched,
    outputs to be rewritten) when a price is not > 0 or NaN: the row loop then runs."""
    cdef const double* x = io.x[0]
    cdef double* out = io.out[0]
    cdef Py_ssize_t i, n = io.n
    cdef uint32_t marks
    if not x[0] > 0.0:
        return False
    out[0] = _log(x[0] / io.state[0])                 # NaN (no previous) -> null
    if avx2_active() and _avx512:
        _log_ratio_rows_avx512(x, out, n, &marks)
    elif avx2_active():
        _log_ratio_rows_avx2(x, out, n, &marks)
    else:
        marks = _log_ratio_rows(x, out, n)
    if marks & 2:
        return False
    if marks & 1:                                     # a ratio outside the normal range
        for i in range(1, n):
            out[i] = _log(x[i] / x[i - 1])
        marks |= <uint32_t>0x80000000                 # may hold NaN (inf / inf): count
    io.state[0] = x[n - 1]
    report_finite(io, 0, marks | non_finite_mark(out[0]))
    return True


cdef class WelfordMeanVar(Kernel):
    """Running mean and sample variance (n-1) by Welford's update; variance null for n < 2."""
    def __init__(self, column=None, *, by=None, **renamed):
        if renamed:
            column, by = _renamed("welford_mean_var", renamed, dict(column=column, by=by)).values()
        self.declare("welford_mean_var", [value_input("column", column)],
                     [output("mean"), output("variance"), output("stddev")], stride=3, by=by,
                     config=dict(column=column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double x, delta, var
        cdef double* st                               # n, mean, M2
        for i in range(io.n):
            x = io.x[0][i]
            st = key_state(io, i)
            if not present(io, i) or x != x:
                set_null(io, 0, i); set_null(io, 1, i); set_null(io, 2, i)
                continue
            st[0] += 1.0
            delta = x - st[1]
            st[1] += delta / st[0]
            st[2] += delta * (x - st[1])
            io.out[0][i] = st[1]
            if st[0] < 2.0:
                set_null(io, 1, i); set_null(io, 2, i)
            else:
                var = st[2] / (st[0] - 1.0)
                io.out[1][i] = var
                io.out[2][i] = sqrt(var)


cdef class EWMA(Kernel):
    """s_0 = x_0; s_t = a x_t + (1-a) s_{t-1}. Matches pandas ``ewm(alpha=a, adjust=False).mean()``."""
    cdef double alpha

    def __init__(self, column=None, alpha=0.94, *, by=None, **renamed):
        if renamed:
            bound = _renamed("ewma", renamed, dict(
                column=column, alpha=alpha, by=by)).values()
            column, alpha, by = bound
        self.alpha = check_unit_interval("alpha", alpha)
        self.declare("ewma", [value_input("column", column)], [output("ewma")], stride=1,
                     by=by, config=dict(column=column, alpha=alpha))

    cdef void init_state(self, double* st) noexcept nogil:
        st[0] = NAN

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double x, a = self.alpha, b = 1.0 - self.alpha
        cdef double local[1]
        cdef double* st
        cdef bint keyed = io.slot != NULL
        state_to_local(io, local, 1)
        for i in range(io.n):
            if (i & 7) == 0:
                # the recurrence runs at its arithmetic's latency and leaves memory idle: ask
                # for the input 1 KiB ahead (a batch's first rows otherwise wait on memory)
                _prefetch(io.x[0] + i + 128)
            x = io.x[0][i]
            st = row_state(io, i, local, keyed)
            if not present(io, i) or x != x:
                set_null(io, 0, i)
                continue
            if st[0] != st[0]:
                st[0] = x
            else:
                st[0] = a * x + b * st[0]
            io.out[0][i] = st[0]
        local_to_state(io, local, 1)


cdef class EWCov(Kernel):
    """EW covariance: c_t = (1-a)(c_{t-1} + a (x_t - mx_{t-1})(y_t - my_{t-1})), c_0 = 0.

    Means are EWMAs of x and y. Matches pandas ``ewm(alpha=a, adjust=False).cov(bias=True)``.
    """
    cdef double alpha

    def __init__(self, x_column="x", y_column="y", alpha=0.94, *, by=None, **renamed):
        if renamed:
            bound = _renamed("ewcov", renamed, dict(
                x_column=x_column, y_column=y_column, alpha=alpha, by=by)).values()
            x_column, y_column, alpha, by = bound
        self.alpha = check_unit_interval("alpha", alpha)
        self.declare("ewcov", [numeric_input("x_column", x_column),
                               numeric_input("y_column", y_column)],
                     [output("ewcov")], stride=3, by=by,
                     config=dict(x_column=x_column, y_column=y_column, alpha=alpha))

    cdef void init_state(self, double* st) noexcept nogil:
        st[0] = NAN                                   # mx
        st[1] = NAN                                   # my
        st[2] = 0.0                                   # c

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double x, y, a = self.alpha
        cdef double* st
        for i in range(io.n):
            x = io.x[0][i]
            y = io.x[1][i]
            st = key_state(io, i)
            if not present(io, i) or x != x or y != y:
                set_null(io, 0, i)
                continue
            if st[0] != st[0]:
                st[0] = x
                st[1] = y
            else:
                st[2] = (1.0 - a) * (st[2] + a * (x - st[0]) * (y - st[1]))
                st[0] = a * x + (1.0 - a) * st[0]
                st[1] = a * y + (1.0 - a) * st[1]
            io.out[0][i] = st[2]


cdef class RollingZScore(Kernel):
    """z_t = (x_t - mean_N) / std_N over the last N values incl. x_t (sample std, pandas rolling).

    Null during warm-up (< N values) and where the window is constant (std = 0).
    """
    cdef Py_ssize_t window

    def __init__(self, column=None, window=100, *, by=None, **renamed):
        if renamed:
            bound = _renamed("rolling_zscore", renamed, dict(
                column=column, window=window, by=by)).values()
            column, window, by = bound
        self.window = check_positive_int("window", window)
        self.declare("rolling_zscore", [value_input("column", column)], [output("zscore")],
                     stride=var_width(self.window), by=by, partition_keys=True,
                     config=dict(column=column, window=self.window))

    cdef void run(self, KernelIO* io) noexcept nogil:
        if io.slot == NULL:
            _zscore_rows(io, self.window, False)
        else:
            _zscore_rows(io, self.window, True)


cdef inline void _zscore_rows(KernelIO* io, Py_ssize_t N, bint keyed) noexcept nogil:
    cdef Py_ssize_t i
    cdef double x, inv_n = 1.0 / N, dof = N - 1.0
    cdef Var v
    v = var_load(io.state, N)     # keyed: rows then open their key's state (var_push_row)
    for i in range(io.n):
        if not var_push_row(io, &v, i, inv_n, keyed):     # null or NaN
            set_null(io, 0, i)
            continue
        x = io.x[0][i]
        if not var_full(&v) or var_constant(&v):
            set_null(io, 0, i)
        else:                               # (x − mean) / sqrt(m2 / (N − 1))
            io.out[0][i] = (x - var_mean(&v)) * sqrt(dof / var_m2(&v))
    if not keyed:
        var_store(&v, io.state)


def log_returns(batch, price_column=None, *, by=None, **renamed):
    """Append ``log_return`` = ln(p_t/p_{t-1}) per key (numpy reference)."""
    if renamed:
        bound = _renamed("log_returns", renamed, dict(
            price_column=price_column, by=by)).values()
        price_column, by = bound
    return call_kernel(LogReturns, batch, price_column=price_column, by=by)


def welford_mean_var(batch, column=None, *, by=None, **renamed):
    """Append running ``mean``, ``variance`` (n-1) and ``stddev`` (numpy cumulative reference)."""
    if renamed:
        column, by = _renamed("welford_mean_var", renamed, dict(column=column, by=by)).values()
    return call_kernel(WelfordMeanVar, batch, column=column, by=by)


def ewma(batch, column=None, alpha=0.94, *, by=None, **renamed):
    """Append ``ewma`` (pandas ``ewm(alpha, adjust=False).mean()``)."""
    if renamed:
        bound = _renamed("ewma", renamed, dict(
            column=column, alpha=alpha, by=by)).values()
        column, alpha, by = bound
    return call_kernel(EWMA, batch, column=column, alpha=alpha, by=by)


def ewcov(batch, x_column="x", y_column="y", alpha=0.94, *, by=None, **renamed):
    """Append ``ewcov`` (pandas ``ewm(alpha, adjust=False).cov(bias=True)``)."""
    if renamed:
        bound = _renamed("ewcov", renamed, dict(
            x_column=x_column, y_column=y_column, alpha=alpha, by=by)).values()
        x_column, y_column, alpha, by = bound
    return call_kernel(EWCov, batch, x_column=x_column, y_column=y_column, alpha=alpha, by=by)


def rolling_zscore(batch, column=None, window=100, *, by=None, **renamed):
    """Append ``zscore`` over a trailing window of ``window`` values (pandas rolling)."""
    if renamed:
        bound = _renamed("rolling_zscore", renamed, dict(
            column=column, window=window, by=by)).values()
        column, window, by = bound
    return call_kernel(RollingZScore, batch, column=column, window=window, by=by)
