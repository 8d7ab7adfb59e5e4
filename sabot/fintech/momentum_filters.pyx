# cython: language_level=3
"""Momentum and filters with TA-Lib conventions: EMA, SMA, MACD, RSI, Bollinger, Kalman,
Donchian, stochastic oscillator, ATR, OBV.

TA-Lib conventions: an indicator is null for its lookback rows (TA-Lib's "lookback"), seeds are
simple averages, and rows with a null/NaN input are skipped as if absent (the kernel null rule).
"""
from libc.math cimport fabs, fmax, NAN, sqrt

from ._kernel cimport (Kernel, KernelIO, key_state, local_to_state, present, row_state, set_null,
                      state_to_local)
from ._kernel import NUMERIC, numeric_input, output, value_input
from ._columns import (check_positive, check_positive_int, check_unit_interval, require_column,
                       require_numeric)
from ._naming import renamed as _renamed, upgrade_state as _upgrade_state

cdef extern from *:
    # a hint to bring the cache line at an address in (never faults; GCC and Clang)
    void _prefetch "__builtin_prefetch"(const void* address) noexcept nogil


cdef inline void _ahead(const KernelIO* io, Py_ssize_t i) noexcept nogil:
    """Every 8 rows, ask for the input 1 KiB ahead: recurrences run at the latency of their
    arithmetic and leave memory idle, and a batch's first rows otherwise wait on memory.
    Measured to pay in RSI's loop (4.1 -> 3.2 ns/row); EMA, MACD and Bollinger did not gain."""
    if (i & 7) == 0:
        _prefetch(io.x[0] + i + 128)
from ._scope import call_kernel
from ._window cimport (
    ZSUM_HEADER, extreme_push, extreme_width,
    RollingSum, zsum_count, zsum_load, zsum_push, zsum_step, zsum_step_full, zsum_store, zsum_width,
)
from ._window cimport (Var, sqrt_pair, var_full, var_load, var_m2, var_mean, var_push_row, var_store,
                       var_width)


cdef class EMA(Kernel):
    """Exponential moving average.

    ``period=N``: TA-Lib EMA, k = 2/(N+1), seeded with the SMA of the first N values, null for
    the first N−1. ``alpha=a`` (default 0.1 when neither is given): s_0 = x_0,
    s_t = a·x_t + (1−a)·s_{t−1}, as pandas ``ewm(alpha=a, adjust=False)``.
    """
    cdef double k
    cdef Py_ssize_t period                     # 0: alpha mode

    def __init__(self, column=None, alpha=None, *, period=None, by=None, **renamed):
        if renamed:
            bound = _renamed("ema", renamed, dict(
                column=column, alpha=alpha, period=period, by=by)).values()
            column, alpha, period, by = bound
        if alpha is not None and period is not None:
            raise ValueError("ema: give alpha or period, not both")
        if period is not None:
            self.period = check_positive_int("period", period)
            self.k = 2.0 / (self.period + 1.0)
        else:
            self.period = 0
            self.k = check_unit_interval("alpha", 0.1 if alpha is None else alpha)
        self.declare("ema", [value_input("column", column)], [output("ema")], stride=3, by=by,
                     config=dict(column=column, alpha=alpha, period=period))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, N = self.period
        cdef double x, k = self.k, b = 1.0 - self.k
        cdef double local[3]
        cdef double* st                                   # count, seed sum, value
        cdef bint keyed = io.slot != NULL
        state_to_local(io, local, 3)
        for i in range(io.n):
            x = io.x[0][i]
            st = row_state(io, i, local, keyed)
            if not present(io, i) or x != x:
                set_null(io, 0, i)
                continue
            st[0] += 1.0
            if N == 0:
                st[2] = x if st[0] == 1.0 else k * x + b * st[2]
            elif st[0] < N:
                st[1] += x
                set_null(io, 0, i)
                continue
            elif st[0] == N:
                st[2] = (st[1] + x) / N
            else:
                st[2] = k * x + b * st[2]
            io.out[0][i] = st[2]
        local_to_state(io, local, 3)


cdef class SMA(Kernel):
    """Simple moving average of the last ``window`` values (TA-Lib SMA); null during warm-up."""
    cdef Py_ssize_t window

    def __init__(self, column=None, window=20, *, by=None, **renamed):
        if renamed:
            bound = _renamed("sma", renamed, dict(
                column=column, window=window, by=by)).values()
            column, window, by = bound
        self.window = check_positive_int("window", window)
        self.declare("sma", [value_input("column", column)], [output("sma")],
                     stride=zsum_width(self.window), by=by, partition_keys=True,
                     config=dict(column=column, window=self.window))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, N = self.window
        cdef double x, inv_n = 1.0 / N
        cdef RollingSum q
        if io.slot == NULL:                 # one sum, in registers for the whole batch
            q = zsum_load(io.state, N)
            i = 0
            while i < io.n and q.held < N:  # the window fills: null until it holds N values
                x = io.x[0][i]
                if present(io, i) and x == x:
                    zsum_step(&q, x)
                    if q.held == N:
                        io.out[0][i] = q.sum * inv_n
                        i += 1
                        break
                set_null(io, 0, i)
                i += 1
            for i in range(i, io.n):
                x = io.x[0][i]
                if not present(io, i) or x != x:
                    set_null(io, 0, i)
                    continue
                io.out[0][i] = zsum_step_full(&q, x) * inv_n
            zsum_store(&q, io.state)
            return
        for i in range(io.n):
            x = io.x[0][i]
            if not present(io, i) or x != x:
                set_null(io, 0, i)
                continue
            x = zsum_push(key_state(io, i), N, x) * inv_n
            io.out[0][i] = x if zsum_count(key_state(io, i), N) == N else NAN


cdef class MACD(Kernel):
    """TA-Lib MACD: EMA(fast) − EMA(slow) with k = 2/(N+1), signal = EMA(signal) of the line.

    ``fast_period``, ``slow_period``, ``signal_period`` (TA-Lib's fastperiod, slowperiod,
    signalperiod; the old names ``fast``, ``slow``, ``signal`` are accepted).  As TA-Lib does,
    the slow EMA is seeded with the SMA of the first ``slow_period`` values and the fast EMA
    with the SMA of the last ``fast_period`` of those; the signal EMA is seeded with the SMA of
    the first ``signal_period`` MACD values. All three outputs are null for
    slow_period + signal_period − 2 rows.
    """
    cdef Py_ssize_t fast, slow, signal

    def __init__(self, column=None, fast_period=12, slow_period=26, signal_period=9, *,
                 by=None, **renamed):
        if renamed:
            column, fast_period, slow_period, signal_period, by = _renamed("macd", renamed, dict(
                column=column, fast_period=fast_period, slow_period=slow_period,
                signal_period=signal_period, by=by)).values()
        fast = check_positive_int("fast_period", fast_period, 2)
        slow = check_positive_int("slow_period", slow_period, 2)
        self.signal = check_positive_int("signal_period", signal_period)
        self.fast, self.slow = (slow, fast) if fast > slow else (fast, slow)  # TA-Lib swaps
        self.declare("macd", [value_input("column", column)],
                     [output("macd"), output("macd_signal"), output("macd_hist")], stride=6,
                     by=by, config=dict(column=column, fast_period=fast, slow_period=slow,
                                        signal_period=signal_period))

    def load_state_dict(self, dict d):
        """Also state saved before the naming rule (old names or old default recorded)."""
        Kernel.load_state_dict(self, _upgrade_state(d, self.config))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef MacdParams p
        cdef MacdState m
        cdef double* st
        p.F, p.S, p.G = self.fast, self.slow, self.signal
        p.kf, p.ks, p.kg = 2.0 / (p.F + 1.0), 2.0 / (p.S + 1.0), 2.0 / (p.G + 1.0)
        p.bf, p.bs, p.bg = 1.0 - p.kf, 1.0 - p.ks, 1.0 - p.kg
        if io.slot == NULL:                 # one state, in registers for the whole batch
            m = macd_load(io.state)
            for i in range(io.n):
                if present(io, i):
                    _macd_step(io, i, &m, &p)
                else:
                    set_null(io, 0, i); set_null(io, 1, i); set_null(io, 2, i)
            macd_store(&m, io.state)
            return
        for i in range(io.n):
            if not present(io, i):
                set_null(io, 0, i); set_null(io, 1, i); set_null(io, 2, i)
                continue
            st = key_state(io, i)
            m = macd_load(st)
            _macd_step(io, i, &m, &p)
            macd_store(&m, st)


ctypedef struct MacdParams:
    Py_ssize_t F, S, G                  # fast, slow and signal periods
    double kf, ks, kg, bf, bs, bg       # their smoothing factors k = 2/(N+1) and 1 - k


ctypedef struct MacdState:
    Py_ssize_t count                    # values seen
    double slow, fast, signal           # seed sums while filling, then the EMAs


cdef inline MacdState macd_load(const double* st) noexcept nogil:
    cdef MacdState m
    m.count = <Py_ssize_t>st[0]
    m.slow = st[1]
    m.fast = st[2]
    m.signal = st[3]
    return m


cdef inline void macd_store(const MacdState* m, double* st) noexcept nogil:
    st[0] = <double>m.count
    st[1] = m.slow
    st[2] = m.fast
    st[3] = m.signal


cdef inline void _macd_step(KernelIO* io, Py_ssize_t i, MacdState* m,
                            const MacdParams* p) noexcept nogil:
    """Push row ``i``'s value (NaN: skipped) and write its three outputs (null in warm-up)."""
    cdef double x = io.x[0][i], line
    cdef Py_ssize_t c
    if x != x:
        set_null(io, 0, i); set_null(io, 1, i); set_null(io, 2, i)
        return
    m.count += 1
    c = m.count
    if c < p.S:
        m.slow += x
        if c > p.S - p.F:
            m.fast += x
    elif c == p.S:
        m.slow = (m.slow + x) / p.S
        m.fast = (m.fast + x) / p.F
    else:
        m.slow = p.ks * x + p.bs * m.slow
        m.fast = p.kf * x + p.bf * m.fast
    if c < p.S + p.G - 1:
        if c >= p.S:
            m.signal += m.fast - m.slow
        set_null(io, 0, i); set_null(io, 1, i); set_null(io, 2, i)
        return
    line = m.fast - m.slow
    if c == p.S + p.G - 1:
        m.signal = (m.signal + line) / p.G
    else:
        m.signal = p.kg * line + p.bg * m.signal
    io.out[0][i] = line
    io.out[1][i] = m.signal
    io.out[2][i] = line - m.signal


cdef class RSI(Kernel):
    """TA-Lib RSI: Wilder-smoothed average gain/loss over ``period`` changes, 0..100.

    The first value (row ``period``) uses the simple averages of the first ``period`` changes;
    then avg = (avg·(N−1) + change)/N. 100·gain/(gain+loss); 0 when there was no movement.
    """
    cdef Py_ssize_t period

    def __init__(self, column=None, period=14, *, by=None, **renamed):
        if renamed:
            bound = _renamed("rsi", renamed, dict(
                column=column, period=period, by=by)).values()
            column, period, by = bound
        self.period = check_positive_int("period", period, 2)
        self.declare("rsi", [value_input("column", column)], [output("rsi")], stride=4, by=by,
                     config=dict(column=column, period=self.period))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, N = self.period
        cdef double x, keep = (N - 1.0) / N, inv_n = 1.0 / N  # Wilder: avg·(N−1)/N + change/N
        cdef double* st
        cdef Wilder w
        if io.slot == NULL:                 # one state, in registers for the whole batch
            w = wilder_load(io.state)
            for i in range(io.n):
                _ahead(io, i)
                x = io.x[0][i]
                io.out[0][i] = _rsi_step(&w, x, N, keep, inv_n) if present(io, i) else NAN
            wilder_store(&w, io.state)
            return
        for i in range(io.n):
            x = io.x[0][i]
            if not present(io, i):
                set_null(io, 0, i)
                continue
            st = key_state(io, i)
            w = wilder_load(st)
            io.out[0][i] = _rsi_step(&w, x, N, keep, inv_n)
            wilder_store(&w, st)


ctypedef struct Wilder:
    Py_ssize_t count                # prices seen
    double prev, gain, loss         # last price, average gain and loss (sums while filling)


cdef inline Wilder wilder_load(const double* st) noexcept nogil:
    cdef Wilder w
    w.count = <Py_ssize_t>st[0]
    w.prev = st[1]
    w.gain = st[2]
    w.loss = st[3]
    return w


cdef inline void wilder_store(const Wilder* w, double* st) noexcept nogil:
    st[0] = <double>w.count
    st[1] = w.prev
    st[2] = w.gain
    st[3] = w.loss


cdef inline double _rsi_step(Wilder* w, double x, Py_ssize_t N, double keep,
                             double inv_n) noexcept nogil:
    """Push price ``x`` (NaN: skipped); the RSI, or NaN (null) during warm-up."""
    cdef double d, up, down
    if x != x:
        return NAN
    w.count += 1
    if w.count == 1:
        w.prev = x
        return NAN
    d = x - w.prev
    w.prev = x
    up = d if d > 0.0 else 0.0
    down = -d if d < 0.0 else 0.0
    if w.count <= N:                        # the first N - 1 changes: summed
        w.gain += up
        w.loss += down
        return NAN
    if w.count == N + 1:                    # the N-th: the simple averages
        w.gain = (w.gain + up) / N
        w.loss = (w.loss + down) / N
    else:
        w.gain = w.gain * keep + up * inv_n
        w.loss = w.loss * keep + down * inv_n
    return 100.0 * w.gain / (w.gain + w.loss) if w.gain + w.loss != 0.0 else 0.0


cdef class BollingerBands(Kernel):
    """TA-Lib BBANDS (SMA middle band): mid ± k·σ, σ the population std of the window."""
    cdef Py_ssize_t window
    cdef double k

    def __init__(self, column=None, window=20, k=2.0, *, by=None, **renamed):
        if renamed:
            bound = _renamed("bollinger_bands", renamed, dict(
                column=column, window=window, k=k, by=by)).values()
            column, window, k, by = bound
        self.window = check_positive_int("window", window)
        self.k = check_positive("k", k)
        self.declare("bollinger_bands", [value_input("column", column)],
                     [output("bb_mid"), output("bb_upper"), output("bb_lower")],
                     stride=var_width(self.window), by=by, partition_keys=True,
                     config=dict(column=column, window=self.window, k=k))

    cdef void run(self, KernelIO* io) noexcept nogil:
        if io.slot == NULL:
            _bollinger_rows(io, self.window, self.k, False)
        else:
            _bollinger_rows(io, self.window, self.k, True)


cdef inline double _bollinger_m2(KernelIO* io, Var* v, Py_ssize_t i, double inv_n, bint keyed,
                                bint full) noexcept nogil:
    """Push row ``i``, write its middle band and return M2 (NaN: null row or warm-up)."""
    io.out[0][i] = NAN
    if not var_push_row(io, v, i, inv_n, keyed):
        return NAN
    if not (full or var_full(v)):
        return NAN
    io.out[0][i] = var_mean(v)
    return var_m2(v)


cdef inline void _bands(KernelIO* io, Py_ssize_t i, double width) noexcept nogil:
    io.out[1][i] = io.out[0][i] + width
    io.out[2][i] = io.out[0][i] - width


cdef inline void _bollinger_rows(KernelIO* io, Py_ssize_t N, double k, bint keyed) noexcept nogil:
    """mid ± k·sqrt(M2 / N) = mid ± sqrt(k²/N · M2), two rows per square-root instruction."""
    cdef Py_ssize_t i = 0
    cdef double a, b, c = k * k / N, inv_n = 1.0 / N
    cdef double width[2]
    cdef Var v
    v = var_load(io.state, N)     # keyed: rows then open their key's state (var_push_row)
    if not keyed:
        while i < io.n and not var_full(&v):             # warm-up
            _bands(io, i, sqrt(_bollinger_m2(io, &v, i, inv_n, False, False) * c))
            i += 1
    while i + 1 < io.n:
        a = _bollinger_m2(io, &v, i, inv_n, keyed, not keyed)
        b = _bollinger_m2(io, &v, i + 1, inv_n, keyed, not keyed)
        sqrt_pair(width, a * c, b * c)
        _bands(io, i, width[0])
        _bands(io, i + 1, width[1])
        i += 2
    if i < io.n:
        _bands(io, i, sqrt(_bollinger_m2(io, &v, i, inv_n, keyed, not keyed) * c))
    if not keyed:
        var_store(&v, io.state)


cdef class Kalman1D(Kernel):
    """Random-walk Kalman filter: x̂_0 = z_0, P_0 = 1; P⁻ = P + q, K = P⁻/(P⁻ + r),
    x̂ = x̂ + K(z − x̂), P = (1 − K)P⁻."""
    cdef double q, r

    def __init__(self, column=None, q=0.001, r=0.1, *, by=None, **renamed):
        if renamed:
            bound = _renamed("kalman_1d", renamed, dict(
                column=column, q=q, r=r, by=by)).values()
            column, q, r, by = bound
        self.q = check_positive("q", q, allow_zero=True)
        self.r = check_positive("r", r)
        self.declare("kalman_1d", [value_input("column", column)], [output("kalman")], stride=3,
                     by=by, config=dict(column=column, q=q, r=r))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double z, p, gain
        cdef double* st                                   # seen, estimate, P
        for i in range(io.n):
            z = io.x[0][i]
            st = key_state(io, i)
            if not present(io, i) or z != z:
                set_null(io, 0, i)
                continue
            if st[0] == 0.0:
                st[0] = 1.0; st[1] = z; st[2] = 1.0
            else:
                p = st[2] + self.q
                gain = p / (p + self.r)
                st[1] = st[1] + gain * (z - st[1])
                st[2] = (1.0 - gain) * p
            io.out[0][i] = st[1]


cdef class DonchianChannel(Kernel):
    """Highest high / lowest low of the last ``window`` rows (TA-Lib MAX/MIN) and their mid.

    Reads ``high_column``/``low_column`` when given; else ``column`` for both when given; else
    ``price`` for both when the batch has it; else ``high`` and ``low`` when it has both (the
    bars of ``Stream.tumbling``); else the value column for both.
    """
    cdef Py_ssize_t window
    cdef bint bars_if_present

    def __init__(self, column=None, window=20, *, high_column=None, low_column=None, by=None,
                 **renamed):
        if renamed:
            bound = _renamed("donchian_channel", renamed, dict(
                column=column, window=window, high_column=high_column, low_column=low_column,
                by=by)).values()
            column, window, high_column, low_column, by = bound
        self.window = check_positive_int("window", window)
        if (high_column is None) != (low_column is None):
            raise ValueError("donchian_channel: give both high_column and low_column, or neither")
        self.bars_if_present = column is None and high_column is None
        if high_column is None:
            inputs = [value_input("column", column)]
        else:
            inputs = [numeric_input("high_column", high_column),
                      numeric_input("low_column", low_column)]
        self.declare("donchian_channel", inputs,
                     [output("donchian_high"), output("donchian_low"), output("donchian_mid")],
                     stride=2 * extreme_width(self.window), by=by,
                     config=dict(column=column, window=self.window, high_column=high_column,
                                 low_column=low_column))

    def resolve_columns(self, schema):
        """The inputs for ``schema``: ``high`` and ``low`` of bars (no ``price``) when no column
        is named."""
        names = schema.names
        if self.bars_if_present and "price" not in names and "high" in names and "low" in names:
            require_numeric(schema, "high", "high column")
            require_numeric(schema, "low", "low column")
            if self.by is not None:
                require_column(schema, self.by, "by column")
            return [(NUMERIC, "high"), (NUMERIC, "low")]
        return Kernel.resolve_columns(self, schema)

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, N = self.window
        cdef double h, l, hi, lo
        cdef const double* lows = io.x[1] if io.x[1] != NULL else io.x[0]
        cdef double* st
        for i in range(io.n):
            h = io.x[0][i]; l = lows[i]
            st = key_state(io, i)
            if not present(io, i) or h != h or l != l:
                set_null(io, 0, i); set_null(io, 1, i); set_null(io, 2, i)
                continue
            hi = extreme_push(st, N, h, True)
            lo = extreme_push(st + extreme_width(N), N, l, False)
            if <Py_ssize_t>st[0] < N:
                set_null(io, 0, i); set_null(io, 1, i); set_null(io, 2, i)
                continue
            io.out[0][i] = hi
            io.out[1][i] = lo
            io.out[2][i] = 0.5 * (hi + lo)


cdef class StochasticOsc(Kernel):
    """TA-Lib STOCHF: %K = 100·(C − LL_k)/(HH_k − LL_k) (0 when HH = LL), %D = SMA_d(%K).

    ``k_window`` (TA-Lib's fastk_period) rows for the highest high and lowest low, ``d_window``
    (fastd_period) values of %K in its SMA; the old names ``k_period``, ``d_period`` are
    accepted.  ``close_column`` None reads ``price``, else ``close`` (bars).  Both outputs are
    null for the k_window + d_window − 2 lookback rows.
    """
    cdef Py_ssize_t k_window, d_window

    def __init__(self, k_window=14, d_window=3, *, high_column="high", low_column="low",
                 close_column=None, by=None, **renamed):
        if renamed:
            (k_window, d_window, high_column, low_column, close_column,
             by) = _renamed("stochastic_osc", renamed, dict(
                k_window=k_window, d_window=d_window, high_column=high_column,
                low_column=low_column, close_column=close_column, by=by)).values()
        self.k_window = check_positive_int("k_window", k_window)
        self.d_window = check_positive_int("d_window", d_window)
        self.declare("stochastic_osc", [numeric_input("high_column", high_column),
                                        numeric_input("low_column", low_column),
                                        value_input("close_column", close_column)],
                     [output("stoch_k"), output("stoch_d")],
                     stride=2 * extreme_width(self.k_window) + zsum_width(self.d_window), by=by,
                     config=dict(k_window=self.k_window, d_window=self.d_window,
                                 high_column=high_column, low_column=low_column,
                                 close_column=close_column))

    def load_state_dict(self, dict d):
        """Also state saved before the naming rule (old names or old default recorded)."""
        Kernel.load_state_dict(self, _upgrade_state(d, self.config))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, K = self.k_window, D = self.d_window
        cdef double h, l, c, hh, ll, fast_k, s
        cdef double* st
        cdef double* ks
        for i in range(io.n):
            h = io.x[0][i]; l = io.x[1][i]; c = io.x[2][i]
            st = key_state(io, i)
            if not present(io, i) or h != h or l != l or c != c:
                set_null(io, 0, i); set_null(io, 1, i)
                continue
            hh = extreme_push(st, K, h, True)
            ll = extreme_push(st + extreme_width(K), K, l, False)
            if <Py_ssize_t>st[0] < K:
                set_null(io, 0, i); set_null(io, 1, i)
                continue
            fast_k = 100.0 * (c - ll) / (hh - ll) if hh != ll else 0.0
            ks = st + 2 * extreme_width(K)
            s = zsum_push(ks, D, fast_k)
            if zsum_count(ks, D) < D:
                set_null(io, 0, i); set_null(io, 1, i)
                continue
            io.out[0][i] = fast_k
            io.out[1][i] = s / D


cdef class ATR(Kernel):
    """TA-Lib ATR: TR_t = max(H−L, |H−C_{t−1}|, |L−C_{t−1}|) from the second row; the first ATR
    (row ``period``) is the mean of the first ``period`` TRs, then (ATR·(N−1) + TR)/N.

    ``close_column`` None reads ``price``, else ``close``: ``atr(bars)`` runs on the output of
    ``Stream.tumbling`` as it is."""
    cdef Py_ssize_t period

    def __init__(self, period=14, *, high_column="high", low_column="low", close_column=None,
                 by=None, **renamed):
        if renamed:
            bound = _renamed("atr", renamed, dict(
                period=period, high_column=high_column, low_column=low_column,
                close_column=close_column, by=by)).values()
            period, high_column, low_column, close_column, by = bound
        self.period = check_positive_int("period", period)
        self.declare("atr", [numeric_input("high_column", high_column),
                             numeric_input("low_column", low_column),
                             value_input("close_column", close_column)],
                     [output("atr")], stride=3, by=by,
                     config=dict(period=self.period, high_column=high_column,
                                 low_column=low_column, close_column=close_column))

    def load_state_dict(self, dict d):
        """Also state saved before the naming rule (old names or old default recorded)."""
        Kernel.load_state_dict(self, _upgrade_state(d, self.config))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, N = self.period
        cdef double h, l, c, tr
        cdef double* st                                   # count, previous close, sum / ATR
        for i in range(io.n):
            h = io.x[0][i]; l = io.x[1][i]; c = io.x[2][i]
            st = key_state(io, i)
            if not present(io, i) or h != h or l != l or c != c:
                set_null(io, 0, i)
                continue
            st[0] += 1.0
            if st[0] == 1.0:
                st[1] = c
                set_null(io, 0, i)
                continue
            tr = fmax(h - l, fmax(fabs(h - st[1]), fabs(l - st[1])))
            st[1] = c
            if st[0] <= N:
                st[2] += tr
                set_null(io, 0, i)
                continue
            if st[0] == N + 1:
                st[2] = (st[2] + tr) / N
            else:
                st[2] = (st[2] * (N - 1) + tr) / N
            io.out[0][i] = st[2]


cdef class OBV(Kernel):
    """TA-Lib OBV: starts at the first volume; ± volume when the price rises/falls.

    ``price_column`` None reads ``price``, else ``close`` (bars)."""
    def __init__(self, *, price_column=None, volume_column="volume", by=None, **renamed):
        if renamed:
            bound = _renamed("obv", renamed, dict(
                price_column=price_column, volume_column=volume_column, by=by)).values()
            price_column, volume_column, by = bound
        self.declare("obv", [value_input("price_column", price_column),
                             numeric_input("volume_column", volume_column)],
                     [output("obv")], stride=3, by=by,
                     config=dict(price_column=price_column, volume_column=volume_column))

    def load_state_dict(self, dict d):
        """Also state saved before the naming rule (old names or old default recorded)."""
        Kernel.load_state_dict(self, _upgrade_state(d, self.config))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double p, v
        cdef double* st                                   # seen, previous price, OBV
        for i in range(io.n):
            p = io.x[0][i]; v = io.x[1][i]
            st = key_state(io, i)
            if not present(io, i) or p != p or v != v:
                set_null(io, 0, i)
                continue
            if st[0] == 0.0:
                st[0] = 1.0
                st[2] = v
            elif p > st[1]:
                st[2] += v
            elif p < st[1]:
                st[2] -= v
            st[1] = p
            io.out[0][i] = st[2]


def ema(batch, column=None, alpha=None, *, period=None, by=None, **renamed):
    """Append ``ema``: TA-Lib EMA with ``period``, or pandas ewm(adjust=False) with ``alpha``."""
    if renamed:
        bound = _renamed("ema", renamed, dict(
            column=column, alpha=alpha, period=period, by=by)).values()
        column, alpha, period, by = bound
    return call_kernel(EMA, batch, column=column, alpha=alpha, period=period, by=by)


def sma(batch, column=None, window=20, *, by=None, **renamed):
    """Append ``sma`` (TA-Lib SMA)."""
    if renamed:
        bound = _renamed("sma", renamed, dict(
            column=column, window=window, by=by)).values()
        column, window, by = bound
    return call_kernel(SMA, batch, column=column, window=window, by=by)


def macd(batch, column=None, fast_period=12, slow_period=26, signal_period=9, *, by=None,
         **renamed):
    """Append ``macd``, ``macd_signal``, ``macd_hist`` (TA-Lib MACD; ``fast``, ``slow``,
    ``signal`` are accepted for the three periods)."""
    if renamed:
        column, fast_period, slow_period, signal_period, by = _renamed("macd", renamed, dict(
            column=column, fast_period=fast_period, slow_period=slow_period,
            signal_period=signal_period, by=by)).values()
    return call_kernel(MACD, batch, column=column, fast_period=fast_period,
                       slow_period=slow_period, signal_period=signal_period, by=by)


def rsi(batch, column=None, period=14, *, by=None, **renamed):
    """Append ``rsi`` (TA-Lib RSI, Wilder smoothing, 0..100)."""
    if renamed:
        bound = _renamed("rsi", renamed, dict(
            column=column, period=period, by=by)).values()
        column, period, by = bound
    return call_kernel(RSI, batch, column=column, period=period, by=by)


def bollinger_bands(batch, column=None, window=20, k=2.0, *, by=None, **renamed):
    """Append ``bb_mid``, ``bb_upper``, ``bb_lower`` (TA-Lib BBANDS, population std)."""
    if renamed:
        bound = _renamed("bollinger_bands", renamed, dict(
            column=column, window=window, k=k, by=by)).values()
        column, window, k, by = bound
    return call_kernel(BollingerBands, batch, column=column, window=window, k=k, by=by)


def kalman_1d(batch, column=None, q=0.001, r=0.1, *, by=None, **renamed):
    """Append ``kalman``, a random-walk Kalman filter estimate."""
    if renamed:
        bound = _renamed("kalman_1d", renamed, dict(
            column=column, q=q, r=r, by=by)).values()
        column, q, r, by = bound
    return call_kernel(Kalman1D, batch, column=column, q=q, r=r, by=by)


def donchian_channel(batch, column=None, window=20, *, high_column=None, low_column=None,
                     by=None, **renamed):
    """Append ``donchian_high``, ``donchian_low``, ``donchian_mid`` (TA-Lib MAX/MIN)."""
    if renamed:
        bound = _renamed("donchian_channel", renamed, dict(
            column=column, window=window, high_column=high_column, low_column=low_column,
            by=by)).values()
        column, window, high_column, low_column, by = bound
    return call_kernel(DonchianChannel, batch, column=column, window=window,
                       high_column=high_column, low_column=low_column, by=by)


def stochastic_osc(batch, k_window=14, d_window=3, *, high_column="high", low_column="low",
                   close_column=None, by=None, **renamed):
    """Append ``stoch_k``, ``stoch_d`` (TA-Lib STOCHF with an SMA %D; ``k_period``,
    ``d_period`` are accepted for the two windows)."""
    if renamed:
        (k_window, d_window, high_column, low_column, close_column,
         by) = _renamed("stochastic_osc", renamed, dict(
            k_window=k_window, d_window=d_window, high_column=high_column,
            low_column=low_column, close_column=close_column, by=by)).values()
    return call_kernel(StochasticOsc, batch, k_window=k_window, d_window=d_window,
                       high_column=high_column, low_column=low_column,
                       close_column=close_column, by=by)


def atr(batch, period=14, *, high_column="high", low_column="low", close_column=None,
        by=None, **renamed):
    """Append ``atr`` (TA-Lib ATR)."""
    if renamed:
        bound = _renamed("atr", renamed, dict(
            period=period, high_column=high_column, low_column=low_column,
            close_column=close_column, by=by)).values()
        period, high_column, low_column, close_column, by = bound
    return call_kernel(ATR, batch, period=period, high_column=high_column,
                       low_column=low_column, close_column=close_column, by=by)


def obv(batch, *, price_column=None, volume_column="volume", by=None, **renamed):
    """Append ``obv`` (TA-Lib OBV)."""
    if renamed:
        bound = _renamed("obv", renamed, dict(
            price_column=price_column, volume_column=volume_column, by=by)).values()
        price_column, volume_column, by = bound
    return call_kernel(OBV, batch, price_column=price_column, volume_column=volume_column,
                       by=by)
