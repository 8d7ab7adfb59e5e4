# cython: language_level=3
"""Cross-asset kernels over two inputs: asynchronous covariance, lead-lag, pairs spreads.

* :func:`hayashi_yoshida_cov` / :func:`hayashi_yoshida_corr`: the Hayashi–Yoshida (2005)
  estimator of integrated covariance from two asynchronously observed series, per tumbling
  window. Both inputs must be sorted by their timestamp column.
* :func:`xcorr_leadlag`: Pearson cross-correlation of two aligned return series over lags.
* :func:`pairs_spread` and :class:`KalmanHedgeRatio`: row-aligned price pairs.
"""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pat

from libc.math cimport NAN, sqrt
from libc.stdint cimport int64_t

from ._kernel cimport Kernel, KernelIO, emit, key_state, present, set_null
from ._kernel import _as_float64, _as_int64_ns, numeric_input, output
from ._naming import renamed as _renamed
from ._columns import (
    check_batch, check_positive_int, check_unit_interval, require_column, require_numeric,
)
from ._scope import current_scope


# ------------------------------------------------------------------------------ inputs


def _column(batch, name):
    col = batch.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pat.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col


#: Columns a returns input without a name reads, first present wins: ``returns`` (read by
#: name before), then ``log_return``, what ``log_returns`` appends.
RETURNS_COLUMNS = ("returns", "log_return")


def _returns(batch, column, role):
    """float64 numpy of ``column`` with NaN where null (checked numeric); ``column`` None:
    the first of RETURNS_COLUMNS the batch has."""
    if column is None:
        column = next((c for c in RETURNS_COLUMNS if c in batch.schema.names), None)
        if column is None:
            raise KeyError(f"{role}: no 'returns' or 'log_return' column; columns present: "
                           f"{', '.join(batch.schema.names) or '(none)'}; pass returns_column=...")
    require_numeric(batch.schema, column, role)
    arr = _as_float64(_column(batch, column), column)
    if arr.null_count:
        arr = pc.fill_null(arr, NAN)
    return np.ascontiguousarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)


def _times(batch, column, role):
    """int64 nanoseconds of ``column`` (timestamp or int64 ns), no nulls, non-decreasing."""
    require_column(batch.schema, column, role)
    arr = _as_int64_ns(_column(batch, column), column)
    if arr.null_count:
        raise ValueError(f"{role} {column!r} has {arr.null_count} null timestamp(s)")
    t = np.ascontiguousarray(arr.cast(pa.int64()).to_numpy(), dtype=np.int64)
    if t.size > 1:
        back = np.flatnonzero(t[1:] < t[:t.size - 1])
        if back.size:
            raise ValueError(f"{role} {column!r} is not sorted: row {back[0] + 1} is earlier than "
                             f"row {back[0]}; sort both inputs by {column!r}")
    return t


# ------------------------------------------------------------------------------ Hayashi–Yoshida


cdef Py_ssize_t _intervals(const int64_t[::1] t, const double[::1] r, int64_t[::1] start,
                           int64_t[::1] end, double[::1] value) noexcept nogil:
    """The return intervals (start, end] of one series; returns how many.

    A valid (non-NaN) return at row i ends at t_i and starts where the previous valid return
    ended; the first valid return starts at the row just before it (the first row only marks
    the start of the first interval, so a return on row 0 has no interval and is not used).
    """
    cdef Py_ssize_t i, k = 0, n = t.shape[0]
    cdef int64_t prev = 0
    cdef bint have_prev = False
    for i in range(n):
        if r[i] != r[i]:
            continue
        if not have_prev:
            if i == 0:
                continue
            prev = t[i - 1]
            have_prev = True
        start[k] = prev
        end[k] = t[i]
        value[k] = r[i]
        prev = t[i]
        k += 1
    return k


cdef inline int64_t _window_of(int64_t t, int64_t w) noexcept nogil:
    """floor(t / w) for w > 0."""
    cdef int64_t q = t // w
    if (t % w != 0) and ((t < 0) != (w < 0)):
        q -= 1
    return q


cdef void _hy_windows(const int64_t[::1] sa, const int64_t[::1] ea, const double[::1] ra,
                      Py_ssize_t na,
                      const int64_t[::1] sb, const int64_t[::1] eb, const double[::1] rb,
                      Py_ssize_t nb, int64_t w, int64_t first,
                      double[::1] cov, double[::1] rv_a, double[::1] rv_b,
                      int64_t[::1] cnt_a, int64_t[::1] cnt_b) noexcept nogil:
    """Per window k (returns ending in [(first+k)·w, (first+k+1)·w)): Σ r_a·r_b over pairs of
    overlapping intervals, Σ r_a², Σ r_b² and the counts."""
    cdef Py_ssize_t i = 0, j0 = 0, lo, j, a_end, b_end, k
    cdef int64_t win, hi_s, lo_e
    cdef double acc
    while i < na or j0 < nb:
        # the next window holding a return of either series
        if i < na and (j0 >= nb or ea[i] <= eb[j0]):
            win = _window_of(ea[i], w)
        else:
            win = _window_of(eb[j0], w)
        k = win - first
        a_end = i
        while a_end < na and _window_of(ea[a_end], w) == win:
            rv_a[k] += ra[a_end] * ra[a_end]
            a_end += 1
        b_end = j0
        while b_end < nb and _window_of(eb[b_end], w) == win:
            rv_b[k] += rb[b_end] * rb[b_end]
            b_end += 1
        cnt_a[k] = a_end - i
        cnt_b[k] = b_end - j0
        acc = 0.0
        lo = j0
        while i < a_end:
            # B intervals overlapping (sa[i], ea[i]] are contiguous: ends > sa[i], starts < ea[i]
            while lo < b_end and eb[lo] <= sa[i]:
                lo += 1
            j = lo
            while j < b_end and sb[j] < ea[i]:
                hi_s = sa[i] if sa[i] > sb[j] else sb[j]
                lo_e = ea[i] if ea[i] < eb[j] else eb[j]
                if hi_s < lo_e:
                    acc += ra[i] * rb[j]
                j += 1
            i += 1
        cov[k] = acc
        j0 = b_end


def _hayashi_yoshida(batch_a, batch_b, window_ms, returns_column, timestamp_column):
    check_batch(batch_a)
    check_batch(batch_b)
    cdef int64_t w = check_positive_int("window_ms", window_ms) * 1_000_000
    ta = _times(batch_a, timestamp_column, "batch_a timestamp column")
    tb = _times(batch_b, timestamp_column, "batch_b timestamp column")
    ra = _returns(batch_a, returns_column, "batch_a returns_column")
    rb = _returns(batch_b, returns_column, "batch_b returns_column")
    sa, ea, va = (np.empty(ta.size, np.int64), np.empty(ta.size, np.int64),
                  np.empty(ta.size, np.float64))
    sb, eb, vb = (np.empty(tb.size, np.int64), np.empty(tb.size, np.int64),
                  np.empty(tb.size, np.float64))
    cdef Py_ssize_t na = _intervals(ta, ra, sa, ea, va)
    cdef Py_ssize_t nb = _intervals(tb, rb, sb, eb, vb)
    ends = np.concatenate([ea[:na], eb[:nb]])
    cdef int64_t first = 0, last = -1
    if ends.size:
        first = int(np.floor_divide(ends.min(), w))
        last = int(np.floor_divide(ends.max(), w))
    n_win = last - first + 1
    cov = np.zeros(n_win)
    rv_a = np.zeros(n_win)
    rv_b = np.zeros(n_win)
    cnt_a = np.zeros(n_win, np.int64)
    cnt_b = np.zeros(n_win, np.int64)
    if n_win:
        _hy_windows(sa, ea, va, na, sb, eb, vb, nb, w, first, cov, rv_a, rv_b, cnt_a, cnt_b)
    empty = (cnt_a == 0) | (cnt_b == 0)
    t_type = batch_a.schema.field(timestamp_column).type
    out_type = pa.timestamp("ns", tz=t_type.tz) if pat.is_timestamp(t_type) else pa.int64()
    starts = (first + np.arange(n_win, dtype=np.int64)) * w
    columns = {
        "window_start": pa.array(starts).cast(out_type),
        "window_end": pa.array(starts + w).cast(out_type),
        "n_a": pa.array(cnt_a),
        "n_b": pa.array(cnt_b),
    }
    return cov, rv_a, rv_b, empty, columns


def _result(batch_a, columns):
    out = pa.RecordBatch.from_pydict(columns)
    return pa.Table.from_batches([out]) if isinstance(batch_a, pa.Table) else out


def hayashi_yoshida_cov(batch_a, batch_b, window_ms=60000, *, returns_column=None,
                        timestamp_column="timestamp", **renamed):
    """Hayashi–Yoshida covariance per tumbling window of ``window_ms``.

    ``returns_column`` None reads ``returns``, else ``log_return`` (the output of
    ``log_returns``).

    Each valid return r_i of a series covers the half-open interval I_i = (t_{prev}, t_i]
    (see below); the estimator for a window is::

        hy_cov = Σ_i Σ_j r_a,i · r_b,j · 1[I_a,i ∩ I_b,j ≠ ∅]

    over the returns of A and of B whose interval ends in the window (Hayashi & Yoshida 2005,
    "On covariance estimation of non-synchronously observed diffusion processes").
    Intervals overlap when max(starts) < min(ends); so equal end times in both series overlap,
    touching intervals ((s, t] and (t, u]) do not, and an empty interval (two rows of one
    series with the same timestamp) overlaps nothing.

    Interval starts: a valid return ends at its row's timestamp and starts where that series'
    previous valid return ended; the first valid return starts at the timestamp of the row
    just before it (the first row of each input only marks where its first interval begins,
    which is where :func:`log_returns` puts its null). Null/NaN returns are skipped, so the
    next valid return spans the gap, as a log return across a missing price does.

    Windows: ``[k·W, (k+1)·W)`` in epoch time (W = ``window_ms``), a return belonging to the
    window holding its end time; one row per window from the first to the last window holding
    a return of either series, with ``window_start``, ``window_end`` (exclusive), ``n_a``,
    ``n_b`` (returns in the window) and ``hy_cov``, null when either series has no return
    in the window. Timestamps: Arrow timestamps of any unit, or int64 nanoseconds.

    Returns a RecordBatch (a Table when ``batch_a`` is a Table).
    """
    if renamed:
        bound = _renamed("hayashi_yoshida_cov", renamed, dict(
            window_ms=window_ms, returns_column=returns_column,
            timestamp_column=timestamp_column)).values()
        window_ms, returns_column, timestamp_column = bound
    cov, _, _, empty, columns = _hayashi_yoshida(batch_a, batch_b, window_ms, returns_column,
                                                 timestamp_column)
    columns["hy_cov"] = pa.array(cov, mask=empty)
    return _result(batch_a, columns)


def hayashi_yoshida_corr(batch_a, batch_b, window_ms=60000, *, returns_column=None,
                         timestamp_column="timestamp", **renamed):
    """Hayashi–Yoshida correlation per window: ``hy_corr = hy_cov / sqrt(RV_a·RV_b)``.

    RV = Σ r² over the series' returns in the window; windows and intervals as in
    :func:`hayashi_yoshida_cov`. Null where either series has no return in the window or
    RV_a·RV_b = 0.
    """
    if renamed:
        bound = _renamed("hayashi_yoshida_corr", renamed, dict(
            window_ms=window_ms, returns_column=returns_column,
            timestamp_column=timestamp_column)).values()
        window_ms, returns_column, timestamp_column = bound
    cov, rv_a, rv_b, empty, columns = _hayashi_yoshida(batch_a, batch_b, window_ms,
                                                       returns_column, timestamp_column)
    denom = rv_a * rv_b
    null = empty | ~(denom > 0.0)
    corr = np.divide(cov, np.sqrt(denom), out=np.zeros_like(cov), where=~null)
    columns["hy_corr"] = pa.array(corr, mask=null)
    return _result(batch_a, columns)


# ------------------------------------------------------------------------------ lead-lag


cdef double _pearson_at_lag(const double[::1] a, const double[::1] b, Py_ssize_t lag) noexcept nogil:
    """Pearson correlation of the pairs (a_t, b_{t+lag}) where both are valid; NaN when fewer
    than 2 pairs or a constant side."""
    cdef Py_ssize_t n = a.shape[0], t, lo, hi, m = 0
    cdef double x, y, sx = 0.0, sy = 0.0, mx, my, cxy = 0.0, cxx = 0.0, cyy = 0.0
    lo = -lag if lag < 0 else 0
    hi = n - lag if lag > 0 else n
    for t in range(lo, hi):
        x = a[t]
        y = b[t + lag]
        if x == x and y == y:
            sx += x
            sy += y
            m += 1
    if m < 2:
        return NAN
    mx = sx / m
    my = sy / m
    for t in range(lo, hi):
        x = a[t]
        y = b[t + lag]
        if x == x and y == y:
            cxy += (x - mx) * (y - my)
            cxx += (x - mx) * (x - mx)
            cyy += (y - my) * (y - my)
    if not (cxx > 0.0 and cyy > 0.0):
        return NAN
    return cxy / sqrt(cxx * cyy)


def xcorr_leadlag(batch_a, batch_b, max_lag=10, alpha=0.94, *, returns_column=None,
                  **renamed):
    """Cross-correlation of two row-aligned return series at lags −L..L.

    ``corrs[k]`` is the Pearson correlation of the pairs (a_t, b_{t+k}) with both values valid
    (``np.corrcoef(a[:n−k], b[k:])`` for k > 0): a positive best lag means A leads B by k rows.
    ``best_lag`` / ``best_corr`` are the lag with the largest |corr| (ties: the smaller |k|,
    then the negative lag) and its signed correlation; None when no lag has a correlation.
    Undefined correlations (fewer than 2 pairs, a constant side) are None in ``corrs``.

    ``alpha`` is validated and accepted for compatibility with the original Sabot API only: that API documents it
    as EWMA smoothing but never applies it, and neither does this function.

    Returns ``{'best_lag': int | None, 'best_corr': float | None, 'corrs': {lag: float | None}}``.
    """
    if renamed:
        bound = _renamed("xcorr_leadlag", renamed, dict(
            max_lag=max_lag, alpha=alpha, returns_column=returns_column)).values()
        max_lag, alpha, returns_column = bound
    check_batch(batch_a)
    check_batch(batch_b)
    cdef Py_ssize_t L = check_positive_int("max_lag", max_lag, minimum=0)
    check_unit_interval("alpha", alpha)
    a = _returns(batch_a, returns_column, "batch_a returns_column")
    b = _returns(batch_b, returns_column, "batch_b returns_column")
    if a.size != b.size:
        raise ValueError(f"xcorr_leadlag needs row-aligned inputs: batch_a has {a.size} rows, "
                         f"batch_b has {b.size}")
    corrs = {}
    best_lag, best_corr = None, None
    cdef Py_ssize_t k
    cdef double c
    for k in sorted(range(-L, L + 1), key=lambda v: (abs(v), v)):
        c = _pearson_at_lag(a, b, k)
        corrs[k] = None if c != c else c
        if c == c and (best_corr is None or abs(c) > abs(best_corr)):
            best_lag, best_corr = k, c
    return {"best_lag": best_lag, "best_corr": best_corr,
            "corrs": {k: corrs[k] for k in range(-L, L + 1)}}


# ------------------------------------------------------------------------------ price pairs

_B_COLUMN = "__sabot_price_b"


def _paired(batch_a, batch_b, b_column):
    """``batch_a`` with batch_b's ``b_column`` appended under an internal name (row-aligned)."""
    check_batch(batch_a)
    check_batch(batch_b)
    if batch_a.num_rows != batch_b.num_rows:
        raise ValueError(f"price pairs must be row-aligned: batch_a has {batch_a.num_rows} rows, "
                         f"batch_b has {batch_b.num_rows}")
    require_numeric(batch_b.schema, b_column, "batch_b price column")
    col = batch_b.column(b_column)
    if isinstance(batch_a, pa.RecordBatch) and isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    elif isinstance(batch_a, pa.Table) and not isinstance(col, pa.ChunkedArray):
        col = pa.chunked_array([col])
    return batch_a.append_column(_B_COLUMN, col)


cdef class PairsSpread(Kernel):
    """``spread = p_a − β·p_b`` for a fixed hedge ratio β (both prices in one batch)."""
    cdef double beta

    def __init__(self, hedge_ratio=1.0, *, a_column="price", b_column="price_b", **renamed):
        if renamed:
            bound = _renamed("pairs_spread", renamed, dict(
                hedge_ratio=hedge_ratio, a_column=a_column, b_column=b_column)).values()
            hedge_ratio, a_column, b_column = bound
        beta = float(hedge_ratio)
        if not (beta == beta and abs(beta) < float("inf")):
            raise ValueError(f"hedge_ratio must be finite, got {hedge_ratio!r}")
        self.beta = beta
        self.declare("pairs_spread", [numeric_input("a_column", a_column),
                                      numeric_input("b_column", b_column)],
                     [output("spread")],
                     config=dict(hedge_ratio=hedge_ratio, a_column=a_column, b_column=b_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(io.n):
            if not present(io, i):
                set_null(io, 0, i)
            else:
                emit(io, 0, i, io.x[0][i] - self.beta * io.x[1][i])


def pairs_spread(batch_a, batch_b, hedge_ratio=1.0, *, price_column="price", **renamed):
    """``batch_a`` with ``spread`` = p_a − β·p_b appended (rows of the two inputs aligned)."""
    if renamed:
        bound = _renamed("pairs_spread", renamed, dict(
            hedge_ratio=hedge_ratio, price_column=price_column)).values()
        hedge_ratio, price_column = bound
    paired = _paired(batch_a, batch_b, price_column)
    return PairsSpread(hedge_ratio, a_column=price_column, b_column=_B_COLUMN)(
        paired).drop_columns([_B_COLUMN])


cdef class KalmanHedgeRatio(Kernel):
    """Time-varying hedge ratio β_t of p_a = β_t·p_b + ε by a scalar Kalman filter.

    Model: β_t = β_{t−1} + w (random walk, Var w = q); y_t = p_a = β_t·x_t + ε with x_t = p_b
    (Var ε = r). Prior before the first row: β = 1, P = 1. Per valid row::

        P⁻ = P + q;  S = x²·P⁻ + r;  K = P⁻·x/S;  β ← β + K·(y − β·x);  P = P⁻·r/S

    (P = (1 − K·x)·P⁻ written without cancellation). Outputs ``hedge_ratio`` = β after the
    update and ``spread`` = y − β·x with that β. Rows with a null/NaN price are null and leave
    the filter untouched. State per ``by`` key, carried across calls.

    Call with two row-aligned inputs ``kf(batch_a, batch_b)`` (``a_column`` read from batch_a,
    ``b_column`` from batch_b; result: batch_a with the outputs appended) or with one batch
    holding both columns ``kf(batch)`` (then ``a_column`` and ``b_column`` must differ).
    """
    cdef double q, r

    def __init__(self, q=0.001, r=0.1, *, a_column="price", b_column="price", by=None, **renamed):
        if renamed:
            bound = _renamed("kalman_hedge_ratio", renamed, dict(
                q=q, r=r, a_column=a_column, b_column=b_column, by=by)).values()
            q, r, a_column, b_column, by = bound
        self.q = float(q)
        if not (self.q >= 0.0 and self.q < float("inf")):
            raise ValueError(f"q must be a finite number >= 0, got {q!r}")
        self.r = float(r)
        if not (self.r > 0.0 and self.r < float("inf")):
            raise ValueError(f"r must be a finite number > 0, got {r!r}")
        self.declare("kalman_hedge_ratio", [numeric_input("a_column", a_column),
                                            numeric_input("b_column", b_column)],
                     [output("hedge_ratio"), output("spread")], stride=2, by=by,
                     config=dict(q=q, r=r, a_column=a_column, b_column=b_column))

    def __call__(self, batch_a, batch_b=None):
        a_column = self.config["a_column"]
        b_column = self.config["b_column"]
        if batch_b is None:
            if a_column == b_column:
                raise ValueError(f"one batch needs distinct a_column and b_column (both "
                                 f"{a_column!r}); or call with (batch_a, batch_b)")
            return Kernel.__call__(self, batch_a)
        paired = _paired(batch_a, batch_b, b_column)
        return self._run_paired(paired).drop_columns([_B_COLUMN])

    def _run_paired(self, paired):
        """This filter (same state) reading ``b_column`` from the appended batch_b column."""
        saved = self._inputs
        self._inputs = [saved[0], ("b_column", _B_COLUMN, saved[1][2])]
        try:
            return Kernel.__call__(self, paired)
        finally:
            self._inputs = saved

    cdef void init_state(self, double* st) noexcept nogil:
        st[0] = 1.0                                   # beta
        st[1] = 1.0                                   # P

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double y, x, p_pred, s, k, q = self.q, r = self.r
        cdef double* st
        for i in range(io.n):
            y = io.x[0][i]
            x = io.x[1][i]
            st = key_state(io, i)
            if not present(io, i) or y != y or x != x:
                set_null(io, 0, i)
                set_null(io, 1, i)
                continue
            p_pred = st[1] + q
            s = x * x * p_pred + r
            k = p_pred * x / s
            st[0] = st[0] + k * (y - st[0] * x)
            st[1] = p_pred * r / s
            emit(io, 0, i, st[0])
            emit(io, 1, i, y - st[0] * x)


def kalman_hedge_ratio(batch_a, batch_b, q=0.001, r=0.1, *, price_column="price", by=None,
                       **renamed):
    """``batch_a`` with ``hedge_ratio`` and ``spread`` from a Kalman filter on β_t.

    See :class:`KalmanHedgeRatio`; one-shot outside a Stream, stateful inside one (the
    operator's state scope finds the same filter on every call).
    """
    if renamed:
        bound = _renamed("kalman_hedge_ratio", renamed, dict(
            q=q, r=r, price_column=price_column, by=by)).values()
        q, r, price_column, by = bound
    config = dict(q=q, r=r, a_column=price_column, b_column=price_column, by=by)
    scope = current_scope()
    if scope is None:
        kf = KalmanHedgeRatio(**config)
    else:
        kf = scope.instance_for(KalmanHedgeRatio, config, lambda: KalmanHedgeRatio(**config))
    return kf(batch_a, batch_b)
