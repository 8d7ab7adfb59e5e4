# cython: language_level=3
"""Online statistics: log returns, Welford mean/variance, EWMA, EW covariance, rolling z-score."""
from libc.math cimport NAN, log, sqrt

from ._kernel cimport (Kernel, KernelIO, emit, key_state, local_to_state, present, row_state,
                      set_null, state_to_local)
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
        for i in range(io.n):
            p = io.x[0][i]
            st = key_state(io, i)
            if not present(io, i) or not p > 0.0:     # null, NaN or p <= 0
                set_null(io, 0, i)
                continue
            emit(io, 0, i, log(p / st[0]))            # NaN (no previous) -> null
            st[0] = p


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
