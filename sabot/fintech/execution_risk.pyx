# cython: language_level=3
"""Execution and risk kernels.

Stateful kernels follow the null rule (a row with a null/NaN input gets null outputs and does
not touch the state) and null warm-up; windows count the key's valid rows only.
"""
from statistics import NormalDist

import numpy as np
import pyarrow as pa

from libc.math cimport NAN, floor, sqrt

from ._kernel cimport Kernel, KernelIO, emit, key_state, present, set_null
from ._kernel import BOOL, numeric_input, output, side_input, value_input
from ._columns import check_positive, check_positive_int
from ._scope import call_kernel
from ._naming import renamed as _renamed, upgrade_state as _upgrade_state
from ._window cimport (
    moments_constant, moments_count, moments_m2, moments_m3, moments_m4, moments_mean,
    moments_push, moments_width, ring_count, ring_push, sorted_push, sorted_width,
)


def _check_probability(name, value):
    v = float(value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return v


# ---------------------------------------------------------------- sorted window
# (sorted_width / sorted_push live in _window.pxd)

cdef inline double sorted_quantile(const double* w, Py_ssize_t N, Py_ssize_t n,
                                   double q) noexcept nogil:
    """numpy ``quantile(method='linear')`` of the ``n`` held values, same arithmetic.

    virtual index h = (n-1) q; g = h - floor(h); a, b the neighbours; a + (b-a) g, or
    b - (b-a)(1-g) when g >= 0.5 (numpy's ``_lerp``).
    """
    cdef const double* s = w + N + 1
    cdef double h = (n - 1) * q
    cdef double lo_f = floor(h)
    cdef Py_ssize_t lo = <Py_ssize_t>lo_f
    cdef Py_ssize_t hi = lo + 1 if lo + 1 < n else n - 1
    cdef double g = h - lo_f, a = s[lo], b = s[hi], d = b - a
    if g >= 0.5:
        return b - d * (1.0 - g)
    return a + d * g


# ---------------------------------------------------------------- kernels

cdef class VWAP(Kernel):
    """vwap_t = sum(p v) / sum(v), cumulative per key from its first valid row.

    Null where the cumulative volume is 0 (numpy ``cumsum`` reference).  ``price_column`` None
    reads ``price``, else ``close`` (bars).
    """
    def __init__(self, price_column=None, volume_column="volume", *, by=None, **renamed):
        if renamed:
            bound = _renamed("vwap", renamed, dict(
                price_column=price_column, volume_column=volume_column, by=by)).values()
            price_column, volume_column, by = bound
        self.declare("vwap", [value_input("price_column", price_column),
                              numeric_input("volume_column", volume_column)],
                     [output("vwap")], stride=2, by=by,
                     config=dict(price_column=price_column, volume_column=volume_column))

    def load_state_dict(self, dict d):
        """Also state saved before the naming rule (old names or old default recorded)."""
        Kernel.load_state_dict(self, _upgrade_state(d, self.config))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double p, v
        cdef double* st                       # [sum p v, sum v]
        for i in range(io.n):
            p = io.x[0][i]
            v = io.x[1][i]
            if not present(io, i) or p != p or v != v:
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            st[0] += p * v
            st[1] += v
            emit(io, 0, i, st[0] / st[1] if st[1] != 0.0 else NAN)


cdef class ImplementationShortfall(Kernel):
    """IS = side (exec/arrival - 1) 1e4 bps; side +1 buy / -1 sell; arrival <= 0 → null."""
    def __init__(self, exec_price_column="exec_price", arrival_price_column="arrival_price",
                 side_column="side", **renamed):
        if renamed:
            bound = _renamed("implementation_shortfall", renamed, dict(
                exec_price_column=exec_price_column, arrival_price_column=arrival_price_column,
                side_column=side_column)).values()
            exec_price_column, arrival_price_column, side_column = bound
        self.declare("implementation_shortfall",
                     [numeric_input("exec_price_column", exec_price_column),
                      numeric_input("arrival_price_column", arrival_price_column),
                      side_input("side_column", side_column)],
                     [output("implementation_shortfall_bps")],
                     config=dict(exec_price_column=exec_price_column,
                                 arrival_price_column=arrival_price_column,
                                 side_column=side_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double e, a
        for i in range(io.n):
            e = io.x[0][i]
            a = io.x[1][i]
            if not present(io, i) or not a > 0.0:
                set_null(io, 0, i)
                continue
            emit(io, 0, i, io.x[2][i] * (e / a - 1.0) * 1e4)


cdef class ArrivalPriceImpact(Kernel):
    """impact = side (exec - mid) / mid 1e4 bps; side +1 buy / -1 sell; mid <= 0 → null."""
    def __init__(self, exec_price_column="exec_price", arrival_mid_column="arrival_mid",
                 side_column="side", **renamed):
        if renamed:
            bound = _renamed("arrival_price_impact", renamed, dict(
                exec_price_column=exec_price_column, arrival_mid_column=arrival_mid_column,
                side_column=side_column)).values()
            exec_price_column, arrival_mid_column, side_column = bound
        self.declare("arrival_price_impact",
                     [numeric_input("exec_price_column", exec_price_column),
                      numeric_input("arrival_mid_column", arrival_mid_column),
                      side_input("side_column", side_column)],
                     [output("arrival_impact_bps")],
                     config=dict(exec_price_column=exec_price_column,
                                 arrival_mid_column=arrival_mid_column,
                                 side_column=side_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double e, m
        for i in range(io.n):
            e = io.x[0][i]
            m = io.x[1][i]
            if not present(io, i) or not m > 0.0:
                set_null(io, 0, i)
                continue
            emit(io, 0, i, io.x[2][i] * (e - m) / m * 1e4)


cdef class CUSUM(Kernel):
    """Two-sided Page (1954) CUSUM: S+ = max(0, S+ + x - k), S- = max(0, S- - x - k).

    ``cusum_alarm`` is True when S+ > h or S- > h; both sums then reset to 0 for the next row.
    ``cusum_stat`` is signed: S+ when S+ >= S-, else -S- (the values before any reset, so an
    alarm row shows the statistic that crossed h).
    """
    cdef double k, h

    def __init__(self, column="value", k=0.5, h=5.0, *, by=None, **renamed):
        if renamed:
            bound = _renamed("cusum", renamed, dict(
                column=column, k=k, h=h, by=by)).values()
            column, k, h, by = bound
        self.k = check_positive("k", k, allow_zero=True)
        self.h = check_positive("h", h)
        self.declare("cusum", [numeric_input("column", column)],
                     [output("cusum_stat"), output("cusum_alarm", BOOL)], stride=2, by=by,
                     config=dict(column=column, k=self.k, h=self.h))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double x, up, down, k = self.k, h = self.h
        cdef double* st                       # [S+, S-]
        for i in range(io.n):
            x = io.x[0][i]
            if not present(io, i) or x != x:
                set_null(io, 0, i)
                set_null(io, 1, i)
                continue
            st = key_state(io, i)
            up = st[0] + x - k
            down = st[1] - x - k
            up = up if up > 0.0 else 0.0
            down = down if down > 0.0 else 0.0
            io.out[0][i] = up if up >= down else -down
            if up > h or down > h:
                io.out[1][i] = 1.0
                st[0] = 0.0
                st[1] = 0.0
            else:
                io.out[1][i] = 0.0
                st[0] = up
                st[1] = down


cdef class HistoricalVaR(Kernel):
    """VaR_t = -quantile_alpha of the last N = ``window`` values (numpy linear interpolation)."""
    cdef double alpha
    cdef Py_ssize_t window

    def __init__(self, column="pnl", alpha=0.05, window=250, *, by=None, **renamed):
        if renamed:
            bound = _renamed("historical_var", renamed, dict(
                column=column, alpha=alpha, window=window, by=by)).values()
            column, alpha, window, by = bound
        self.alpha = _check_probability("alpha", alpha)
        self.window = check_positive_int("window", window)
        self.declare("historical_var", [numeric_input("column", column)], [output("var")],
                     stride=sorted_width(self.window), by=by,
                     config=dict(column=column, alpha=self.alpha, window=self.window))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, n, N = self.window
        cdef double x
        cdef double* st
        for i in range(io.n):
            x = io.x[0][i]
            if not present(io, i) or x != x:
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            n = sorted_push(st, N, x)
            if n < N:
                set_null(io, 0, i)
            else:
                io.out[0][i] = -sorted_quantile(st, N, n, self.alpha)


cdef class HistoricalCVaR(Kernel):
    """CVaR_t = -mean of the window's values <= its alpha-quantile (quantile as HistoricalVaR)."""
    cdef double alpha
    cdef Py_ssize_t window

    def __init__(self, column="pnl", alpha=0.05, window=250, *, by=None, **renamed):
        if renamed:
            bound = _renamed("historical_cvar", renamed, dict(
                column=column, alpha=alpha, window=window, by=by)).values()
            column, alpha, window, by = bound
        self.alpha = _check_probability("alpha", alpha)
        self.window = check_positive_int("window", window)
        self.declare("historical_cvar", [numeric_input("column", column)], [output("cvar")],
                     stride=sorted_width(self.window), by=by,
                     config=dict(column=column, alpha=self.alpha, window=self.window))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, j, n, N = self.window
        cdef double x, q, total
        cdef double* st
        cdef const double* s
        for i in range(io.n):
            x = io.x[0][i]
            if not present(io, i) or x != x:
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            n = sorted_push(st, N, x)
            if n < N:
                set_null(io, 0, i)
                continue
            q = sorted_quantile(st, N, n, self.alpha)
            s = st + N + 1
            total = 0.0
            j = 0
            while j < n and s[j] <= q:
                total += s[j]
                j += 1
            io.out[0][i] = -total / j


cdef class CornishFisherVaR(Kernel):
    """VaR_t = -(mu + sigma z_cf) over the last N = ``window`` values (Cornish-Fisher 1938).

    z = Phi^-1(alpha); z_cf = z + (z^2-1) S/6 + (z^3-3z) K/24 - (2z^3-5z) S^2/36 with the
    window's population skewness S = m3/m2^1.5 and excess kurtosis K = m4/m2^2 - 3 (m_k the
    central moments with divisor n: ``scipy.stats.skew/kurtosis`` with bias=True), mu the
    mean and sigma the sample standard deviation (ddof=1). A constant window gives -mu.
    """
    cdef double alpha, z
    cdef Py_ssize_t window

    def __init__(self, alpha=0.05, column="pnl", window=250, *, by=None, **renamed):
        if renamed:
            bound = _renamed("cornish_fisher_var", renamed, dict(
                alpha=alpha, column=column, window=window, by=by)).values()
            alpha, column, window, by = bound
        self.alpha = _check_probability("alpha", alpha)
        self.window = check_positive_int("window", window, minimum=2)
        self.z = NormalDist().inv_cdf(self.alpha)
        self.declare("cornish_fisher_var", [numeric_input("column", column)],
                     [output("cf_var")], stride=moments_width(self.window), by=by,
                     config=dict(alpha=self.alpha, column=column, window=self.window))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, N = self.window
        cdef double x, n, mu, m2, skew, kurt, sigma, zcf, z = self.z
        cdef double* st
        for i in range(io.n):
            x = io.x[0][i]
            if not present(io, i) or x != x:
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            moments_push(st, N, x, True)
            n = moments_count(st)
            if n < N:
                set_null(io, 0, i)
                continue
            mu = moments_mean(st)
            if moments_constant(st):
                io.out[0][i] = -mu
                continue
            m2 = moments_m2(st) / n
            skew = (moments_m3(st) / n) / (m2 * sqrt(m2))
            kurt = (moments_m4(st) / n) / (m2 * m2) - 3.0
            sigma = sqrt(moments_m2(st) / (n - 1.0))
            zcf = (z + (z * z - 1.0) * skew / 6.0 + (z * z * z - 3.0 * z) * kurt / 24.0
                   - (2.0 * z * z * z - 5.0 * z) * skew * skew / 36.0)
            emit(io, 0, i, -(mu + sigma * zcf))


# ---------------------------------------------------------------- function forms

def vwap(batch, price_column=None, volume_column="volume", *, by=None, **renamed):
    """Append ``vwap`` = cumulative sum(p v)/sum(v) per key."""
    if renamed:
        bound = _renamed("vwap", renamed, dict(
            price_column=price_column, volume_column=volume_column, by=by)).values()
        price_column, volume_column, by = bound
    return call_kernel(VWAP, batch, price_column=price_column, volume_column=volume_column,
                       by=by)


def implementation_shortfall(batch, *, exec_price_column="exec_price",
                             arrival_price_column="arrival_price", side_column="side", **renamed):
    """Append ``implementation_shortfall_bps`` = side (exec/arrival - 1) 1e4 (stateless)."""
    if renamed:
        bound = _renamed("implementation_shortfall", renamed, dict(
            exec_price_column=exec_price_column, arrival_price_column=arrival_price_column,
            side_column=side_column)).values()
        exec_price_column, arrival_price_column, side_column = bound
    return ImplementationShortfall(exec_price_column, arrival_price_column, side_column)(batch)


def arrival_price_impact(batch, *, exec_price_column="exec_price",
                         arrival_mid_column="arrival_mid", side_column="side", **renamed):
    """Append ``arrival_impact_bps`` = side (exec - mid)/mid 1e4 (stateless)."""
    if renamed:
        bound = _renamed("arrival_price_impact", renamed, dict(
            exec_price_column=exec_price_column, arrival_mid_column=arrival_mid_column,
            side_column=side_column)).values()
        exec_price_column, arrival_mid_column, side_column = bound
    return ArrivalPriceImpact(exec_price_column, arrival_mid_column, side_column)(batch)


def cusum(batch, column="value", k=0.5, h=5.0, *, by=None, **renamed):
    """Append ``cusum_stat`` and ``cusum_alarm`` (two-sided Page CUSUM, reset on alarm)."""
    if renamed:
        bound = _renamed("cusum", renamed, dict(
            column=column, k=k, h=h, by=by)).values()
        column, k, h, by = bound
    return call_kernel(CUSUM, batch, column=column, k=k, h=h, by=by)


def historical_var(batch, column="pnl", alpha=0.05, window=250, *, by=None, **renamed):
    """Append ``var`` = -quantile_alpha of the last ``window`` values (numpy linear)."""
    if renamed:
        bound = _renamed("historical_var", renamed, dict(
            column=column, alpha=alpha, window=window, by=by)).values()
        column, alpha, window, by = bound
    return call_kernel(HistoricalVaR, batch, column=column, alpha=alpha, window=window, by=by)


def historical_cvar(batch, column="pnl", alpha=0.05, window=250, *, by=None, **renamed):
    """Append ``cvar`` = -mean of the window's values <= its alpha-quantile."""
    if renamed:
        bound = _renamed("historical_cvar", renamed, dict(
            column=column, alpha=alpha, window=window, by=by)).values()
        column, alpha, window, by = bound
    return call_kernel(HistoricalCVaR, batch, column=column, alpha=alpha, window=window, by=by)


def cornish_fisher_var(batch, alpha=0.05, column="pnl", window=250, *, by=None, **renamed):
    """Append ``cf_var`` (Cornish-Fisher VaR from the window's mean, std, skew and kurtosis)."""
    if renamed:
        bound = _renamed("cornish_fisher_var", renamed, dict(
            alpha=alpha, column=column, window=window, by=by)).values()
        alpha, column, window, by = bound
    return call_kernel(CornishFisherVaR, batch, alpha=alpha, column=column, window=window,
                       by=by)


def optimal_ac_schedule(Q, T, sigma, gamma, eta, n_slices=None, *, permanent_impact=0.0,
                        **renamed):
    """Almgren–Chriss (2000) optimal liquidation schedule, discrete-time closed form.

    ``gamma`` is the risk aversion lambda, ``eta`` the temporary impact, ``permanent_impact``
    the permanent impact (it only enters through eta~ = eta - permanent_impact tau / 2).
    With tau = T/N (N = ``n_slices``; None → ceil(T), T in slice units), kappa solves
    cosh(kappa tau) = 1 + tau^2 lambda sigma^2 / (2 eta~) (Almgren & Chriss 2000,
    "Optimal execution of portfolio transactions", J. Risk 3(2), §2 discrete trajectory;
    kappa → sqrt(lambda sigma^2/eta~) as tau → 0) and
    x_j = Q sinh(kappa (T - t_j)) / sinh(kappa T), t_j = j tau, j = 0..N (x_j = Q (1 - j/N)
    when lambda sigma^2 = 0). Returns a RecordBatch with ``slice`` (j), ``time`` (t_j),
    ``holdings`` (x_j: Q at j = 0, exactly 0 at j = N) and ``trade`` (x_{j-1} - x_j; 0 at j = 0).
    """
    if renamed:
        bound = _renamed("optimal_ac_schedule", renamed, dict(
            Q=Q, T=T, sigma=sigma, gamma=gamma, eta=eta, n_slices=n_slices,
            permanent_impact=permanent_impact)).values()
        Q, T, sigma, gamma, eta, n_slices, permanent_impact = bound
    Q = float(Q)
    if Q != Q or abs(Q) == float("inf"):
        raise ValueError(f"Q must be a finite number, got {Q!r}")
    T = check_positive("T", T)
    sigma = check_positive("sigma", sigma, allow_zero=True)
    lam = check_positive("gamma", gamma, allow_zero=True)
    eta = check_positive("eta", eta)
    perm = check_positive("permanent_impact", permanent_impact, allow_zero=True)
    N = int(np.ceil(T)) if n_slices is None else check_positive_int("n_slices", n_slices)
    tau = T / N
    eta_tilde = eta - 0.5 * perm * tau
    if not eta_tilde > 0.0:
        raise ValueError(
            f"eta - permanent_impact*tau/2 must be > 0 (got {eta_tilde!r}); use more slices "
            "or a larger eta"
        )
    j = np.arange(N + 1)
    remaining = (N - j) * tau                 # T - t_j, exactly 0 at j = N
    y = 0.5 * tau * tau * lam * sigma * sigma / eta_tilde
    if y == 0.0:
        holdings = Q * (N - j) / N
    else:
        kappa = np.log1p(y + np.sqrt(y * (2.0 + y))) / tau        # arccosh(1 + y) / tau
        # sinh(k(T-t))/sinh(kT) = e^{-kt} (1 - e^{-2k(T-t)}) / (1 - e^{-2kT}), overflow-free
        holdings = Q * np.exp(-kappa * j * tau) * np.expm1(-2.0 * kappa * remaining) \
            / np.expm1(-2.0 * kappa * T)
    holdings[0] = Q
    holdings[N] = 0.0
    trade = np.concatenate([[0.0], holdings[:N] - holdings[1:]])
    return pa.RecordBatch.from_arrays(
        [pa.array(j, pa.int64()), pa.array(j * tau), pa.array(holdings), pa.array(trade)],
        names=["slice", "time", "holdings", "trade"],
    )
