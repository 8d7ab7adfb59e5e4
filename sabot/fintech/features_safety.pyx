# cython: language_level=3
"""Features (lag, diff, rolling min/max/std/skew/kurt, autocorrelation, tick rule, signed volume)
and safety checks (stale quotes, price bands, fat fingers, circuit breaker, throttle, MAD outliers).

Rules beyond the kernel conventions of :mod:`sabot.fintech._kernel` (documented exceptions and choices):

* ``lag`` / ``diff`` shift nulls through: a null (or NaN) is a value in the lag chain, so the row
  ``lag`` rows after a null gets a null lag; the null row itself still receives ``x_{t-lag}``.
* Safety flags (``price_band_guard``, ``fat_finger_guard``, ``circuit_breaker``) treat a null or
  NaN input as flagged (``True``); ``stale_quote_detector`` and ``throttle_check`` flag a row with
  a null timestamp. Such rows never touch the state (a null price never trips the breaker latch).
* Warm-up rows (fewer than ``window`` values in a key) are null.
* Undefined results are null: skew/kurt of a constant window, autocorr with a constant leg,
  the trade sign before the first non-zero tick.
"""
from libc.math cimport NAN, fabs, floor, sqrt
from libc.stdint cimport int64_t

from ._kernel cimport (Kernel, KernelIO, emit, key_state, local_to_state, present, row_state,
                      set_null, state_to_local)
from ._kernel import BOOL, I64, numeric_input, output, side_input, time_input, value_input
from ._columns import check_positive, check_positive_int
from ._naming import renamed as _renamed, upgrade_state as _upgrade_state
from ._scope import call_kernel
from ._window cimport (
    Extreme, extreme_count, extreme_load, extreme_run_clean, extreme_step,
    extreme_store, extreme_push, extreme_width,
    MOM_HEADER, moments_central, moments_constant, moments_count, moments_m2,
    moments_step,
    moments_width, ring_get, ring_index, ring_push, ring_width, sorted_lower_bound,
    sorted_push, sorted_width,
)
from ._window cimport Var, sqrt_pair, var_full, var_load, var_m2, var_push_row, var_store, var_width


cdef inline bint _is_nan(double x) noexcept nogil:
    return x != x


# ================================================================== lag / diff

cdef class _LagBase(Kernel):
    """Shared by Lag and Diff: a ring of each key's last ``k`` values, nulls included (as NaN)."""
    cdef Py_ssize_t k
    cdef bint differenced

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, k = self.k
        cdef double x, old
        cdef double* st
        for i in range(io.n):
            st = key_state(io, i)
            x = io.x[0][i] if present(io, i) else NAN
            if ring_push(st, k, x, &old):
                emit(io, 0, i, x - old if self.differenced else old)
            else:
                set_null(io, 0, i)


cdef class Lag(_LagBase):
    """``{column}_lag{lag}`` = x_{t-lag} per key, carried across batches (first ``lag`` rows of a
    key null; the old name ``k`` is accepted for ``lag``).

    Nulls shift through (an exception to the null rule): a null/NaN row is a value in the chain. Reference: a
    per-key hand loop (``pandas.Series.shift(k)`` per key).
    """
    def __init__(self, column, lag=1, *, by=None, **renamed):
        if renamed:
            column, lag, by = _renamed("lag", renamed, dict(column=column, lag=lag,
                                                                by=by)).values()
        self.k = check_positive_int("lag", lag)
        self.differenced = False
        self.declare("lag", [numeric_input("column", column)],
                     [output(f"{column}_lag{self.k}")], stride=ring_width(self.k), by=by,
                     config=dict(column=column, lag=self.k))

    def load_state_dict(self, dict d):
        """Also state saved before the naming rule (old names or old default recorded)."""
        Kernel.load_state_dict(self, _upgrade_state(d, self.config))


cdef class Diff(_LagBase):
    """``{column}_diff{lag}`` = x_t - x_{t-lag} per key; null when either value is null/NaN
    (the old name ``k`` is accepted for ``lag``).

    Reference: per-key ``pandas.Series.diff(k)`` (nulls kept in the chain like ``lag``).
    """
    def __init__(self, column, lag=1, *, by=None, **renamed):
        if renamed:
            column, lag, by = _renamed("diff", renamed, dict(column=column, lag=lag,
                                                                by=by)).values()
        self.k = check_positive_int("lag", lag)
        self.differenced = True
        self.declare("diff", [numeric_input("column", column)],
                     [output(f"{column}_diff{self.k}")], stride=ring_width(self.k), by=by,
                     config=dict(column=column, lag=self.k))

    def load_state_dict(self, dict d):
        """Also state saved before the naming rule (old names or old default recorded)."""
        Kernel.load_state_dict(self, _upgrade_state(d, self.config))


# ================================================================== rolling min / max

cdef class _RollingExtreme(Kernel):
    cdef Py_ssize_t window
    cdef bint keep_max

    cdef void run(self, KernelIO* io) noexcept nogil:
        if self.keep_max:
            _rolling_extreme(io, self.window, True)
        else:
            _rolling_extreme(io, self.window, False)


cdef inline void _rolling_extreme(KernelIO* io, Py_ssize_t N, bint keep_max) noexcept nogil:
    """One pass; inlined with ``keep_max`` a constant. Without ``by`` the extreme stays in
    registers for the whole batch and, once warmed up, runs of clean rows go through
    ``extreme_run_clean`` (null / NaN rows and warm-up row by row)."""
    cdef Py_ssize_t i = 0
    cdef double x, v
    cdef double* st
    cdef Extreme q
    if io.slot == NULL:
        q = extreme_load(io.state, N)
        while i < io.n:
            if q.blocks != 0.0:            # warmed up: the clean rows from i at once
                i += extreme_run_clean(&q, io.x[0] + i, NULL if io.ok == NULL else io.ok + i,
                                       io.out[0] + i, io.n - i, keep_max)
                if i == io.n:
                    break
            x = io.x[0][i]
            if not present(io, i) or _is_nan(x):
                set_null(io, 0, i)
            else:
                v = extreme_step(&q, x, keep_max)
                if q.pushes < N:
                    set_null(io, 0, i)
                else:
                    io.out[0][i] = v
            i += 1
        extreme_store(&q, io.state)
        return
    for i in range(io.n):
        x = io.x[0][i]
        if not present(io, i) or _is_nan(x):
            set_null(io, 0, i)
            continue
        st = key_state(io, i)
        v = extreme_push(st, N, x, keep_max)
        if extreme_count(st) < N:
            set_null(io, 0, i)
        else:
            io.out[0][i] = v


cdef class RollingMin(_RollingExtreme):
    """``rolling_min``: min of the last ``window`` values (van Herk / Gil-Werman blocks, amortised O(1)).

    Reference: ``pandas.Series.rolling(window).min()`` on the valid rows.
    """
    def __init__(self, column, window=20, *, by=None, **renamed):
        if renamed:
            bound = _renamed("rolling_min", renamed, dict(
                column=column, window=window, by=by)).values()
            column, window, by = bound
        self.window = check_positive_int("window", window)
        self.keep_max = False
        self.declare("rolling_min", [numeric_input("column", column)], [output("rolling_min")],
                     stride=extreme_width(self.window), by=by, partition_keys=True,
                     config=dict(column=column, window=self.window))


cdef class RollingMax(_RollingExtreme):
    """``rolling_max``: max of the last ``window`` values (van Herk / Gil-Werman blocks, amortised O(1)).

    Reference: ``pandas.Series.rolling(window).max()`` on the valid rows.
    """
    def __init__(self, column, window=20, *, by=None, **renamed):
        if renamed:
            bound = _renamed("rolling_max", renamed, dict(
                column=column, window=window, by=by)).values()
            column, window, by = bound
        self.window = check_positive_int("window", window)
        self.keep_max = True
        self.declare("rolling_max", [numeric_input("column", column)], [output("rolling_max")],
                     stride=extreme_width(self.window), by=by, partition_keys=True,
                     config=dict(column=column, window=self.window))


# ================================================================== rolling std / skew / kurt

cdef enum Moment:
    STD = 0
    SKEW = 1
    KURT = 2


cdef class _RollingMoment(Kernel):
    """Rolling central moments (``_window.moments_*``): O(1) per row in the window length."""
    cdef Py_ssize_t window
    cdef double ddof
    cdef int moment

    cdef void run(self, KernelIO* io) noexcept nogil:
        if self.moment == STD:
            if io.slot == NULL:
                _std_rows(io, self.window, self.ddof, False)
            else:
                _std_rows(io, self.window, self.ddof, True)
        elif io.slot == NULL:
            _moment_rows(io, self.window, self.ddof, self.moment, False)
        else:
            _moment_rows(io, self.window, self.ddof, self.moment, True)


cdef inline double _std_m2(KernelIO* io, Var* v, Py_ssize_t i, double inv_n, bint keyed,
                          bint full) noexcept nogil:
    """M2 of row ``i``'s window after pushing its value; NaN for a null row or during warm-up
    (``full``: the window is known to be full)."""
    if not var_push_row(io, v, i, inv_n, keyed):
        return NAN
    return var_m2(v) if full or var_full(v) else NAN


cdef inline void _std_rows(KernelIO* io, Py_ssize_t N, double ddof, bint keyed) noexcept nogil:
    """rolling_std on the rolling variance block (no third and fourth moments):
    sqrt(M2 / (N - ddof)), two rows per square-root instruction."""
    cdef Py_ssize_t i = 0
    cdef double a, b, inv_n = 1.0 / N, inv_dof = 1.0 / (N - ddof)
    cdef double* out = io.out[0]
    cdef Var v
    v = var_load(io.state, N)     # keyed: rows then open their key's state (var_push_row)
    if not keyed:
        while i < io.n and not var_full(&v):             # warm-up
            out[i] = sqrt(_std_m2(io, &v, i, inv_n, False, False) * inv_dof)
            i += 1
    while i + 1 < io.n:
        a = _std_m2(io, &v, i, inv_n, keyed, not keyed)
        b = _std_m2(io, &v, i + 1, inv_n, keyed, not keyed)
        sqrt_pair(out + i, a * inv_dof, b * inv_dof)
        i += 2
    if i < io.n:
        out[i] = sqrt(_std_m2(io, &v, i, inv_n, keyed, not keyed) * inv_dof)
    if not keyed:
        var_store(&v, io.state)


cdef inline void _moment_rows(KernelIO* io, Py_ssize_t N, double ddof, int moment,
                              bint keyed) noexcept nogil:
    cdef Py_ssize_t i
    cdef double x, n = <double>N, g1 = 0.0, g2 = 0.0, g3 = 0.0
    cdef double inv_n = 1.0 / n
    cdef double c[3]
    cdef double hdr[MOM_HEADER]
    cdef double* st
    cdef double* h
    if moment == SKEW:      # sqrt(n(n-1))/(n-2) * (m3/n) / (m2/n)^1.5 = g1 * m3 / m2^1.5
        g1 = sqrt(n * (n - 1.0)) * sqrt(n) / (n - 2.0)
    elif moment == KURT:    # ((n^2-1) n m4/m2^2 - 3(n-1)^2) / ((n-2)(n-3)) = g2 m4/m2^2 - g3
        g2 = (n * n - 1.0) * n / ((n - 2.0) * (n - 3.0))
        g3 = 3.0 * (n - 1.0) * (n - 1.0) / ((n - 2.0) * (n - 3.0))
    state_to_local(io, hdr, MOM_HEADER)
    for i in range(io.n):
        x = io.x[0][i]
        if not present(io, i) or _is_nan(x):
            set_null(io, 0, i)
            continue
        st = key_state(io, i)
        h = row_state(io, i, hdr, keyed)
        moments_step(h, st + MOM_HEADER, N, x, True)
        if moments_count(h) < N:
            set_null(io, 0, i)
        elif moments_constant(h):
            set_null(io, 0, i)                    # 0/0: undefined for a constant window
        else:
            moments_central(h, c)
            if moment == SKEW:
                emit(io, 0, i, g1 * c[1] / (c[0] * sqrt(c[0])))
            else:
                emit(io, 0, i, g2 * c[2] / (c[0] * c[0]) - g3)
    local_to_state(io, hdr, MOM_HEADER)


cdef class RollingStd(_RollingMoment):
    """``rolling_std`` = sqrt(sum (x - mean)^2 / (N - ddof)) over the last N values.

    Reference: ``pandas.Series.rolling(window).std(ddof=ddof)``; a constant window gives 0.
    """
    def __init__(self, column, window=20, ddof=1, *, by=None, **renamed):
        if renamed:
            bound = _renamed("rolling_std", renamed, dict(
                column=column, window=window, ddof=ddof, by=by)).values()
            column, window, ddof, by = bound
        self.window = check_positive_int("window", window)
        ddof = check_positive_int("ddof", ddof, minimum=0)
        if ddof >= self.window:
            raise ValueError(f"ddof must be < window ({self.window}), got {ddof}")
        self.ddof = ddof
        self.moment = STD
        self.declare("rolling_std", [numeric_input("column", column)], [output("rolling_std")],
                     stride=var_width(self.window), by=by, partition_keys=True,
                     config=dict(column=column, window=self.window, ddof=ddof))


cdef class RollingSkew(_RollingMoment):
    """``rolling_skew``: bias-corrected sample skewness over the last N values.

    G1 = sqrt(N(N-1))/(N-2) * m3 / m2^1.5 with m_p = sum (x - mean)^p / N (Fisher-Pearson,
    as ``pandas.Series.rolling(window).skew()``). A constant window is null (pandas: NaN).
    """
    def __init__(self, column, window=20, *, by=None, **renamed):
        if renamed:
            bound = _renamed("rolling_skew", renamed, dict(
                column=column, window=window, by=by)).values()
            column, window, by = bound
        self.window = check_positive_int("window", window, minimum=3)
        self.moment = SKEW
        self.declare("rolling_skew", [numeric_input("column", column)], [output("rolling_skew")],
                     stride=moments_width(self.window), by=by,
                     config=dict(column=column, window=self.window))


cdef class RollingKurt(_RollingMoment):
    """``rolling_kurt``: bias-corrected excess kurtosis over the last N values.

    G2 = ((N^2-1) m4/m2^2 - 3(N-1)^2) / ((N-2)(N-3)) with m_p = sum (x - mean)^p / N, as
    ``pandas.Series.rolling(window).kurt()``. A constant window is null (pandas: NaN).
    """
    def __init__(self, column, window=20, *, by=None, **renamed):
        if renamed:
            bound = _renamed("rolling_kurt", renamed, dict(
                column=column, window=window, by=by)).values()
            column, window, by = bound
        self.window = check_positive_int("window", window, minimum=4)
        self.moment = KURT
        self.declare("rolling_kurt", [numeric_input("column", column)], [output("rolling_kurt")],
                     stride=moments_width(self.window), by=by,
                     config=dict(column=column, window=self.window))


# ================================================================== autocorrelation

cdef enum:
    AC_HEADER = 7       # [Ka, Kb, Sa, Sb, Saa, Sbb, Sab]: sums of a - Ka, b - Kb and products


cdef class Autocorr(Kernel):
    """``autocorr``: Pearson correlation of the pairs (x_i, x_{i-lag}) within the last ``window``
    values (``window - lag`` pairs), per key. Null during warm-up and when either leg is constant.

    Sums of a - Ka, b - Kb and their products about one shift per leg (a = x_i, b = x_{i-lag}),
    re-based exactly to the legs' means every ``window`` pushes, or early when a shift has drifted
    or a far pair has just left, so that the sums would cancel: O(1) amortised per row.
    Reference: ``numpy.corrcoef(w[lag:], w[:-lag])`` per window.
    State: header, ring of the window, and for each held value the length of the run of equal
    values ending at it (a leg is constant iff that run covers all its pairs).
    """
    cdef Py_ssize_t lag, window

    def __init__(self, column, lag=1, window=100, *, by=None, **renamed):
        if renamed:
            bound = _renamed("autocorr", renamed, dict(
                column=column, lag=lag, window=window, by=by)).values()
            column, lag, window, by = bound
        self.lag = check_positive_int("lag", lag)
        self.window = check_positive_int("window", window)
        if self.window < self.lag + 2:
            raise ValueError(
                f"window must be >= lag + 2 (at least two pairs), got window={self.window}, "
                f"lag={self.lag}")
        self.declare("autocorr", [numeric_input("column", column)], [output("autocorr")],
                     stride=AC_HEADER + ring_width(self.window) + self.window, by=by,
                     config=dict(column=column, lag=self.lag, window=self.window))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, pushed, W = self.window, L = self.lag, P = W - L
        cdef double x, old, a, b, prev_run, va, vb, cov, r, far_a, far_b
        cdef double* st
        cdef double* ring
        cdef double* runs
        for i in range(io.n):
            x = io.x[0][i]
            if not present(io, i) or _is_nan(x):
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            far_a = 0.0
            far_b = 0.0
            ring = st + AC_HEADER
            runs = ring + ring_width(W)
            pushed = <Py_ssize_t>ring[0]
            if pushed == 0:
                st[0] = x
                st[1] = x
                prev_run = 0.0
            else:
                prev_run = runs[ring_index(ring, W, 0)] if ring_get(ring, W, 0) == x else 0.0
            runs[ring_index(ring, W, -1)] = prev_run + 1.0   # the slot x is about to take
            if ring_push(ring, W, x, &old):           # drop the pair (x_{t-P}, x_{t-W})
                a = ring_get(ring, W, P) - st[0]
                b = old - st[1]
                st[2] -= a; st[3] -= b; st[4] -= a * a; st[5] -= b * b; st[6] -= a * b
                far_a = a * a
                far_b = b * b
            pushed += 1
            if pushed > L:                            # add the pair (x_t, x_{t-L})
                a = x - st[0]
                b = ring_get(ring, W, L) - st[1]
                st[2] += a; st[3] += b; st[4] += a * a; st[5] += b * b; st[6] += a * b
            if (pushed < W or runs[ring_index(ring, W, 0)] >= P
                    or runs[ring_index(ring, W, L)] >= P):
                if pushed % W == 0:
                    _autocorr_rebase(st, ring, W, L)
                set_null(io, 0, i)
                continue
            va = st[4] - st[2] * st[2] / P
            vb = st[5] - st[3] * st[3] / P
            if (pushed % W == 0 or st[4] + P * far_a > 1e3 * va
                    or st[5] + P * far_b > 1e3 * vb):
                # periodic, or a shift drifted / a far pair just left: the sums would cancel
                _autocorr_rebase(st, ring, W, L)
                va = st[4] - st[2] * st[2] / P
                vb = st[5] - st[3] * st[3] / P
            cov = st[6] - st[2] * st[3] / P
            if not (va > 0.0 and vb > 0.0):
                set_null(io, 0, i)
                continue
            r = cov / (sqrt(va) * sqrt(vb))
            io.out[0][i] = 1.0 if r > 1.0 else (-1.0 if r < -1.0 else r)


cdef void _autocorr_rebase(double* st, const double* ring, Py_ssize_t W,
                           Py_ssize_t L) noexcept nogil:
    """Recompute the pair sums exactly about each leg's mean (ring full, W - L pairs)."""
    cdef Py_ssize_t age, P = W - L
    cdef double ta = 0.0, tb = 0.0, a, b
    for age in range(P):
        ta += ring_get(ring, W, age)
        tb += ring_get(ring, W, age + L)
    st[0] = ta / P
    st[1] = tb / P
    st[2] = 0.0; st[3] = 0.0; st[4] = 0.0; st[5] = 0.0; st[6] = 0.0
    for age in range(P):
        a = ring_get(ring, W, age) - st[0]
        b = ring_get(ring, W, age + L) - st[1]
        st[2] += a; st[3] += b; st[4] += a * a; st[5] += b * b; st[6] += a * b


# ================================================================== trade classification

cdef class TickRule(Kernel):
    """``trade_sign`` (int64): +1 uptick, -1 downtick, a zero tick repeats the last sign.

    Per key; the first trade and zero ticks before any non-zero tick are null (no sign known).
    Null/NaN prices are null and skipped. Reference: a hand loop (Lee-Ready tick test).
    ``price_column`` None reads ``price``, else ``close`` (bars: the close-to-close tick).
    """
    def __init__(self, price_column=None, *, by=None, **renamed):
        if renamed:
            bound = _renamed("tick_rule", renamed, dict(
                price_column=price_column, by=by)).values()
            price_column, by = bound
        self.declare("tick_rule", [value_input("price_column", price_column)],
                     [output("trade_sign", I64)], stride=2, by=by,
                     config=dict(price_column=price_column))

    def load_state_dict(self, dict d):
        """Also state saved before the naming rule (old names or old default recorded)."""
        Kernel.load_state_dict(self, _upgrade_state(d, self.config))

    cdef void init_state(self, double* st) noexcept nogil:
        st[0] = NAN                                   # previous price
        st[1] = 0.0                                   # last non-zero sign

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double p
        cdef double* st
        for i in range(io.n):
            p = io.x[0][i]
            if not present(io, i) or _is_nan(p):
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            if p > st[0]:
                st[1] = 1.0
            elif p < st[0]:
                st[1] = -1.0
            st[0] = p
            if st[1] == 0.0:
                set_null(io, 0, i)
            else:
                io.out[0][i] = st[1]


cdef class SignedVolume(Kernel):
    """``signed_volume`` = +v for buys, -v for sells (side 'buy'/'sell' or +1/-1). Stateless."""
    def __init__(self, *, volume_column="volume", side_column="side", **renamed):
        if renamed:
            bound = _renamed("signed_volume", renamed, dict(
                volume_column=volume_column, side_column=side_column)).values()
            volume_column, side_column = bound
        self.declare("signed_volume", [numeric_input("volume_column", volume_column),
                                       side_input("side_column", side_column)],
                     [output("signed_volume")],
                     config=dict(volume_column=volume_column, side_column=side_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(io.n):
            if not present(io, i):
                set_null(io, 0, i)
            else:
                emit(io, 0, i, io.x[1][i] * io.x[0][i])


# ================================================================== safety: time based

cdef class StaleQuoteDetector(Kernel):
    """``is_stale``: t - t_prev > max_age_ms, t_prev the key's previous update time.

    A key's first update is not stale; a null timestamp is flagged and not recorded. The
    comparison is in integer nanoseconds (timestamps of any unit, or int64 ns).
    Reference: hand-computed cases / ``numpy.diff`` per key.
    """
    cdef int64_t max_age_ns

    def __init__(self, max_age_ms=1000, *, timestamp_column="timestamp", by=None, **renamed):
        if renamed:
            bound = _renamed("stale_quote_detector", renamed, dict(
                max_age_ms=max_age_ms, timestamp_column=timestamp_column, by=by)).values()
            max_age_ms, timestamp_column, by = bound
        age = check_positive("max_age_ms", max_age_ms, allow_zero=True)
        self.max_age_ns = <int64_t>round(age * 1e6)
        self.declare("stale_quote_detector", [time_input("timestamp_column", timestamp_column)],
                     [output("is_stale", BOOL)], stride=2, by=by,
                     config=dict(max_age_ms=max_age_ms, timestamp_column=timestamp_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef int64_t t
        cdef double* st                               # [seen, previous time as int64 bits]
        cdef int64_t* prev
        for i in range(io.n):
            if not present(io, i):
                io.out[0][i] = 1.0
                continue
            t = io.t[i]
            st = key_state(io, i)
            prev = <int64_t*>(st + 1)
            io.out[0][i] = 1.0 if st[0] != 0.0 and t - prev[0] > self.max_age_ns else 0.0
            st[0] = 1.0
            prev[0] = t


cdef class ThrottleCheck(Kernel):
    """``throttled``: more than L = rate_limit * window_ms/1000 events in the trailing window.

    Counts the key's events (every row with a timestamp, throttled or not) with time in
    (t - window, t], this row included; throttled iff that count >= M = floor(L) + 1, i.e. the
    M-th most recent event is less than ``window_ms`` old. A ring holds the last M timestamps.
    A null timestamp is flagged and not counted. Reference: a hand loop over a list of times.
    """
    cdef int64_t window_ns
    cdef Py_ssize_t m

    def __init__(self, rate_limit=100.0, window_ms=1000, *, timestamp_column="timestamp",
                 by=None, **renamed):
        if renamed:
            bound = _renamed("throttle_check", renamed, dict(
                rate_limit=rate_limit, window_ms=window_ms, timestamp_column=timestamp_column,
                by=by)).values()
            rate_limit, window_ms, timestamp_column, by = bound
        rate = check_positive("rate_limit", rate_limit)
        window = check_positive("window_ms", window_ms)
        self.window_ns = <int64_t>round(window * 1e6)
        self.m = <Py_ssize_t>floor(rate * window / 1000.0) + 1
        self.declare("throttle_check", [time_input("timestamp_column", timestamp_column)],
                     [output("throttled", BOOL)], stride=2 + self.m, by=by,
                     config=dict(rate_limit=rate_limit, window_ms=window_ms,
                                 timestamp_column=timestamp_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, slot, M = self.m
        cdef int64_t t, oldest
        cdef double* st                               # [pushed, next slot, M times as int64]
        cdef int64_t* times
        for i in range(io.n):
            if not present(io, i):
                io.out[0][i] = 1.0
                continue
            t = io.t[i]
            st = key_state(io, i)
            times = <int64_t*>(st + 2)
            slot = <Py_ssize_t>st[1]
            times[slot] = t
            slot = 0 if slot + 1 == M else slot + 1
            st[0] += 1.0
            st[1] = <double>slot
            oldest = times[slot]                      # the M-th most recent event
            io.out[0][i] = 1.0 if st[0] >= M and t - oldest < self.window_ns else 0.0


# ================================================================== safety: price checks

cdef inline bint _outside_band(double p, double ref, double pct) noexcept nogil:
    """|p/ref - 1| > pct, or an unusable input (NaN, ref <= 0)."""
    if not (ref > 0.0):
        return True
    return not (fabs(p / ref - 1.0) <= pct)


cdef class PriceBandGuard(Kernel):
    """``price_band_violation``: |p/ref - 1| > pct. Null/NaN price or reference, or ref <= 0,
    is flagged (an exception to the null rule). Stateless; reference: numpy formula / hand cases.
    """
    cdef double pct

    def __init__(self, ref_column="mid", pct=0.05, *, price_column="price", **renamed):
        if renamed:
            bound = _renamed("price_band_guard", renamed, dict(
                ref_column=ref_column, pct=pct, price_column=price_column)).values()
            ref_column, pct, price_column = bound
        self.pct = check_positive("pct", pct)
        self.declare("price_band_guard", [numeric_input("price_column", price_column),
                                          numeric_input("ref_column", ref_column)],
                     [output("price_band_violation", BOOL)],
                     config=dict(ref_column=ref_column, pct=pct, price_column=price_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(io.n):
            io.out[0][i] = 1.0 if (not present(io, i)
                                   or _outside_band(io.x[0][i], io.x[1][i], self.pct)) else 0.0


cdef class FatFingerGuard(Kernel):
    """``fat_finger``: |p/ref - 1| > pct or |p * size| > notional_max. Any null/NaN input, or
    ref <= 0, is flagged (an exception to the null rule). Stateless; reference: numpy formula / hand cases.
    """
    cdef double pct, notional_max

    def __init__(self, ref_column="mid", pct=0.10, notional_max=1e6, *, price_column="price",
                 size_column="size", **renamed):
        if renamed:
            bound = _renamed("fat_finger_guard", renamed, dict(
                ref_column=ref_column, pct=pct, notional_max=notional_max,
                price_column=price_column, size_column=size_column)).values()
            ref_column, pct, notional_max, price_column, size_column = bound
        self.pct = check_positive("pct", pct)
        self.notional_max = check_positive("notional_max", notional_max)
        self.declare("fat_finger_guard", [numeric_input("price_column", price_column),
                                          numeric_input("ref_column", ref_column),
                                          numeric_input("size_column", size_column)],
                     [output("fat_finger", BOOL)],
                     config=dict(ref_column=ref_column, pct=pct, notional_max=notional_max,
                                 price_column=price_column, size_column=size_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double p
        for i in range(io.n):
            p = io.x[0][i]
            io.out[0][i] = 1.0 if (
                not present(io, i)
                or _outside_band(p, io.x[1][i], self.pct)
                or not (fabs(p * io.x[2][i]) <= self.notional_max)
            ) else 0.0


cdef class CircuitBreaker(Kernel):
    """``circuit_break``: latched per key once |p/ref - 1| >= pct, until ``reset()``.

    A row with a null/NaN price or reference (or ref <= 0) is flagged but does not trip the
    latch. ``reset(key)`` re-arms one key; ``reset()`` all. Reference: hand-computed cases.
    """
    cdef double pct

    def __init__(self, column="price", ref_column="ref_price", pct=0.05, *, by=None, **renamed):
        if renamed:
            bound = _renamed("circuit_breaker", renamed, dict(
                column=column, ref_column=ref_column, pct=pct, by=by)).values()
            column, ref_column, pct, by = bound
        self.pct = check_positive("pct", pct)
        self.declare("circuit_breaker", [numeric_input("column", column),
                                         numeric_input("ref_column", ref_column)],
                     [output("circuit_break", BOOL)], stride=1, by=by,
                     config=dict(column=column, ref_column=ref_column, pct=pct))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double p, ref
        cdef double* st
        for i in range(io.n):
            p = io.x[0][i]
            ref = io.x[1][i]
            if not present(io, i) or _is_nan(p) or not (ref > 0.0):
                io.out[0][i] = 1.0
                continue
            st = key_state(io, i)
            if fabs(p / ref - 1.0) >= self.pct:
                st[0] = 1.0
            io.out[0][i] = st[0]

    def reset(self, key=None):
        """Re-arm every key (``key=None``) or only ``key``; unknown keys are a ``KeyError``."""
        if key is None:
            Kernel.reset(self)
            return
        if key not in self._slot_of_key:
            raise KeyError(f"circuit_breaker: unknown key {key!r}; known keys: {self._keys}")
        self._state[self._slot_of_key[key], 0] = 0.0


# ================================================================== safety: MAD outliers

cdef double _median_deviation(const double* s, Py_ssize_t n, double med) noexcept nogil:
    """Median of |s_i - med| over sorted s: merge the deviations outward from ``med`` (both
    sides are sorted by distance) up to the middle one(s). Matches ``numpy.median``."""
    cdef Py_ssize_t right = sorted_lower_bound(s, n, med), left = right - 1, taken
    cdef Py_ssize_t hi = n >> 1, lo = hi if n & 1 else hi - 1
    cdef double d, below = 0.0
    for taken in range(hi + 1):
        if left >= 0 and (right >= n or med - s[left] <= s[right] - med):
            d = med - s[left]
            left -= 1
        else:
            d = s[right] - med
            right += 1
        if taken == lo:
            below = d
    return d if lo == hi else 0.5 * (below + d)


cdef class OutlierFlagMAD(Kernel):
    """``is_outlier``: |x_t - median| / (1.4826 * MAD) > k over the last ``window`` values,
    x_t included (like pandas rolling). MAD = median |x_i - median|. When MAD = 0 any x_t off the
    median is an outlier (score +inf) and x_t on it is not. Null during warm-up; a null/NaN x is
    null and skipped. Exact: a sorted copy of the window (``_window.sorted_push``, O(window)
    per row).
    Reference: ``numpy.median`` over ``sliding_window_view``.
    """
    cdef Py_ssize_t window
    cdef double k

    def __init__(self, column, window=100, k=3.0, *, by=None, **renamed):
        if renamed:
            bound = _renamed("outlier_flag_mad", renamed, dict(
                column=column, window=window, k=k, by=by)).values()
            column, window, k, by = bound
        self.window = check_positive_int("window", window)
        self.k = check_positive("k", k, allow_zero=True)
        self.declare("outlier_flag_mad", [numeric_input("column", column)],
                     [output("is_outlier", BOOL)], stride=sorted_width(self.window),
                     by=by, config=dict(column=column, window=self.window, k=k))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, n, N = self.window
        cdef double x, med, mad, dev
        cdef double* st
        cdef double* srt
        for i in range(io.n):
            x = io.x[0][i]
            if not present(io, i) or _is_nan(x):
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            srt = st + ring_width(N)
            n = sorted_push(st, N, x)
            if n < N:
                set_null(io, 0, i)
                continue
            med = srt[n >> 1] if n & 1 else 0.5 * (srt[(n >> 1) - 1] + srt[n >> 1])
            mad = _median_deviation(srt, n, med)
            dev = fabs(x - med)
            if mad == 0.0:
                io.out[0][i] = 1.0 if dev > 0.0 else 0.0
            else:
                io.out[0][i] = 1.0 if dev / (1.4826 * mad) > self.k else 0.0


# ================================================================== function forms

def lag(batch, column, lag=1, *, by=None, **renamed):
    """Append ``{column}_lag{lag}`` = x_{t-lag} per key (nulls shift through); ``k`` is accepted for
    ``lag``."""
    if renamed:
        column, lag, by = _renamed("lag", renamed, dict(column=column, lag=lag,
                                                            by=by)).values()
    return call_kernel(Lag, batch, column=column, lag=lag, by=by)


def diff(batch, column, lag=1, *, by=None, **renamed):
    """Append ``{column}_diff{lag}`` = x_t - x_{t-lag} per key; ``k`` is accepted for
    ``lag``."""
    if renamed:
        column, lag, by = _renamed("diff", renamed, dict(column=column, lag=lag,
                                                            by=by)).values()
    return call_kernel(Diff, batch, column=column, lag=lag, by=by)


def rolling_min(batch, column, window=20, *, by=None, **renamed):
    """Append ``rolling_min`` over the last ``window`` values (pandas rolling min)."""
    if renamed:
        bound = _renamed("rolling_min", renamed, dict(
            column=column, window=window, by=by)).values()
        column, window, by = bound
    return call_kernel(RollingMin, batch, column=column, window=window, by=by)


def rolling_max(batch, column, window=20, *, by=None, **renamed):
    """Append ``rolling_max`` over the last ``window`` values (pandas rolling max)."""
    if renamed:
        bound = _renamed("rolling_max", renamed, dict(
            column=column, window=window, by=by)).values()
        column, window, by = bound
    return call_kernel(RollingMax, batch, column=column, window=window, by=by)


def rolling_std(batch, column, window=20, ddof=1, *, by=None, **renamed):
    """Append ``rolling_std`` (pandas ``rolling(window).std(ddof)``)."""
    if renamed:
        bound = _renamed("rolling_std", renamed, dict(
            column=column, window=window, ddof=ddof, by=by)).values()
        column, window, ddof, by = bound
    return call_kernel(RollingStd, batch, column=column, window=window, ddof=ddof, by=by)


def rolling_skew(batch, column, window=20, *, by=None, **renamed):
    """Append ``rolling_skew`` (pandas ``rolling(window).skew()``; constant window null)."""
    if renamed:
        bound = _renamed("rolling_skew", renamed, dict(
            column=column, window=window, by=by)).values()
        column, window, by = bound
    return call_kernel(RollingSkew, batch, column=column, window=window, by=by)


def rolling_kurt(batch, column, window=20, *, by=None, **renamed):
    """Append ``rolling_kurt`` (pandas ``rolling(window).kurt()``, excess; constant window null)."""
    if renamed:
        bound = _renamed("rolling_kurt", renamed, dict(
            column=column, window=window, by=by)).values()
        column, window, by = bound
    return call_kernel(RollingKurt, batch, column=column, window=window, by=by)


def autocorr(batch, column, lag=1, window=100, *, by=None, **renamed):
    """Append ``autocorr``: corr(x_i, x_{i-lag}) over the last ``window`` values."""
    if renamed:
        bound = _renamed("autocorr", renamed, dict(
            column=column, lag=lag, window=window, by=by)).values()
        column, lag, window, by = bound
    return call_kernel(Autocorr, batch, column=column, lag=lag, window=window, by=by)


def signed_volume(batch, *, volume_column="volume", side_column="side", **renamed):
    """Append ``signed_volume`` = +v buy / -v sell."""
    if renamed:
        bound = _renamed("signed_volume", renamed, dict(
            volume_column=volume_column, side_column=side_column)).values()
        volume_column, side_column = bound
    return SignedVolume(volume_column=volume_column, side_column=side_column)(batch)


def tick_rule(batch, price_column=None, *, by=None, **renamed):
    """Append ``trade_sign``: +1 uptick, -1 downtick, zero tick repeats the last sign."""
    if renamed:
        bound = _renamed("tick_rule", renamed, dict(
            price_column=price_column, by=by)).values()
        price_column, by = bound
    return call_kernel(TickRule, batch, price_column=price_column, by=by)


def stale_quote_detector(batch, max_age_ms=1000, *, timestamp_column="timestamp", by=None,
                         **renamed):
    """Append ``is_stale``: time since the key's previous update > ``max_age_ms``."""
    if renamed:
        bound = _renamed("stale_quote_detector", renamed, dict(
            max_age_ms=max_age_ms, timestamp_column=timestamp_column, by=by)).values()
        max_age_ms, timestamp_column, by = bound
    return call_kernel(StaleQuoteDetector, batch, max_age_ms=max_age_ms,
                       timestamp_column=timestamp_column, by=by)


def price_band_guard(batch, ref_column="mid", pct=0.05, *, price_column="price", **renamed):
    """Append ``price_band_violation``: |p/ref - 1| > pct (null input flagged)."""
    if renamed:
        bound = _renamed("price_band_guard", renamed, dict(
            ref_column=ref_column, pct=pct, price_column=price_column)).values()
        ref_column, pct, price_column = bound
    return PriceBandGuard(ref_column=ref_column, pct=pct, price_column=price_column)(batch)


def fat_finger_guard(batch, ref_column="mid", pct=0.10, notional_max=1e6, *,
                     price_column="price", size_column="size", **renamed):
    """Append ``fat_finger``: band breach or |p * size| > notional_max (null input flagged)."""
    if renamed:
        bound = _renamed("fat_finger_guard", renamed, dict(
            ref_column=ref_column, pct=pct, notional_max=notional_max, price_column=price_column,
            size_column=size_column)).values()
        ref_column, pct, notional_max, price_column, size_column = bound
    return FatFingerGuard(ref_column=ref_column, pct=pct, notional_max=notional_max,
                          price_column=price_column, size_column=size_column)(batch)


def circuit_breaker(batch, column="price", ref_column="ref_price", pct=0.05, *, by=None,
                    **renamed):
    """Append ``circuit_break``: latched per key once |p/ref - 1| >= pct."""
    if renamed:
        bound = _renamed("circuit_breaker", renamed, dict(
            column=column, ref_column=ref_column, pct=pct, by=by)).values()
        column, ref_column, pct, by = bound
    return call_kernel(CircuitBreaker, batch, column=column, ref_column=ref_column, pct=pct,
                       by=by)


def throttle_check(batch, rate_limit=100.0, window_ms=1000, *, timestamp_column="timestamp",
                   by=None, **renamed):
    """Append ``throttled``: more than rate_limit * window events in the trailing window."""
    if renamed:
        bound = _renamed("throttle_check", renamed, dict(
            rate_limit=rate_limit, window_ms=window_ms, timestamp_column=timestamp_column,
            by=by)).values()
        rate_limit, window_ms, timestamp_column, by = bound
    return call_kernel(ThrottleCheck, batch, rate_limit=rate_limit, window_ms=window_ms,
                       timestamp_column=timestamp_column, by=by)


def outlier_flag_mad(batch, column, window=100, k=3.0, *, by=None, **renamed):
    """Append ``is_outlier``: |x - median| / (1.4826 MAD) > k over the trailing window."""
    if renamed:
        bound = _renamed("outlier_flag_mad", renamed, dict(
            column=column, window=window, k=k, by=by)).values()
        column, window, k, by = bound
    return call_kernel(OutlierFlagMAD, batch, column=column, window=window, k=k, by=by)
