# cython: language_level=3
"""Shared C-level building blocks for windowed kernels, all living inside a key's state row.

* ring buffer of the last N values: ``N + 1`` doubles ``[pushed, v_0 .. v_{N-1}]``;
* rolling sum (``zsum_*``), as accurate as re-summing the window, exactly 0 for zeros;
* rolling moments (count, mean, central sums of powers 2..4) over a window of N values, from
  power sums about a shift re-based every max(N, 256) pushes (and early when the sums would
  cancel),
  with a run-of-equal-values counter so a constant window has variance exactly 0:
  ``moments_width(N)`` doubles;
* rolling max/min in amortised O(1) without data-dependent branches (van Herk / Gil-Werman
  blocks): ``4 + 2N`` doubles; runs of clean rows of a single state go block by block
  (``extreme_run_clean``);
* sorted window (ring + sorted copy) for exact rolling order statistics: ``sorted_width(N)``.

The per-row paths of the moments and the rolling extremes avoid integer division (slots wrap by
comparison).
"""
from libc.math cimport INFINITY, fabs
from libc.stdint cimport uint8_t
from libc.string cimport memcpy, memmove

from ._kernel cimport KernelIO, clean_rows, key_state, present, present_rows

cdef extern from "<math.h>":
    bint islessgreater(double x, double y) noexcept nogil   # x < y or x > y, no NaN signal

cdef extern from *:
    # branch hints (macros of the Cython preamble: __builtin_expect with GCC and Clang)
    bint likely(bint) noexcept nogil
    bint unlikely(bint) noexcept nogil


cdef inline Py_ssize_t ring_width(Py_ssize_t N) noexcept nogil:
    return N + 1


cdef inline bint ring_push(double* r, Py_ssize_t N, double x, double* evicted) noexcept nogil:
    """Push ``x``; when the ring was full, store the value it displaced and return True."""
    cdef Py_ssize_t pushed = <Py_ssize_t>r[0]
    cdef Py_ssize_t pos = pushed % N
    cdef bint full = pushed >= N
    if full:
        evicted[0] = r[1 + pos]
    r[1 + pos] = x
    r[0] = <double>(pushed + 1)
    return full


cdef inline double ring_get(const double* r, Py_ssize_t N, Py_ssize_t age) noexcept nogil:
    """The value pushed ``age`` pushes ago (0 = newest); caller ensures it is still held."""
    cdef Py_ssize_t pushed = <Py_ssize_t>r[0]
    return r[1 + (pushed - 1 - age) % N]


cdef inline Py_ssize_t ring_index(const double* r, Py_ssize_t N, Py_ssize_t age) noexcept nogil:
    """Slot (0..N-1) of the value pushed ``age`` pushes ago (0 = newest), for parallel arrays;
    the next push goes to slot ``ring_index(r, N, -1)``."""
    cdef Py_ssize_t pushed = <Py_ssize_t>r[0]
    return (pushed - 1 - age) % N


cdef inline Py_ssize_t ring_count(const double* r, Py_ssize_t N) noexcept nogil:
    cdef Py_ssize_t pushed = <Py_ssize_t>r[0]
    return pushed if pushed < N else N


# Rolling sum over the last N values, as accurate as summing the window afresh: running
# add/subtract whose rounding is bounded by eps times the magnitudes added and removed since the
# last exact re-sum (``bound``); the window is re-summed when the bound exceeds ZSUM_RESUM x |sum|
# (a large value left the window, or many pushes have accumulated), so the relative error stays
# below ZSUM_RESUM x eps (about 6e-14). A window of zeros is exactly 0: its sum is re-summed as
# soon as the bound exceeds 256 x |sum|.
# State row layout: [unused (a nonzero count in states saved by 0.1), sum, bound, pushes, ring of
# N values]; the push count wraps within [N, 2N) once the window is full, so the next slot is
# ``pushes - N`` without an integer division.  Ring slots not yet pushed hold 0 (the state row
# starts zeroed), so a push while filling "evicts" a 0.

cdef enum:
    ZSUM_RESUM = 256
    ZSUM_HEADER = 4     # [unused, sum, bound, pushes (wrapping in [N, 2N) once full)]


cdef inline Py_ssize_t zsum_width(Py_ssize_t N) noexcept nogil:
    return ZSUM_HEADER + N


ctypedef struct RollingSum:
    Py_ssize_t N, pos, held           # window, slot of the next push, values held (<= N)
    double sum, bound                 # the window's sum; its rounding bound / eps
    double* values                    # the N ring slots


cdef inline RollingSum zsum_load(double* z, Py_ssize_t N) noexcept nogil:
    """Open the rolling sum stored in the state row ``z`` (keep it in registers over a run)."""
    cdef RollingSum q
    cdef Py_ssize_t pushed = <Py_ssize_t>z[3]
    if pushed >= 2 * N:                      # a plain push count (state saved before the wrap)
        pushed = N + pushed % N
    q.N = N
    q.held = pushed if pushed < N else N
    q.pos = pushed - N if pushed >= N else pushed
    q.sum = z[1]
    q.bound = z[2]
    q.values = z + ZSUM_HEADER
    return q


cdef inline void zsum_store(const RollingSum* q, double* z) noexcept nogil:
    z[1] = q.sum
    z[2] = q.bound
    z[3] = <double>(q.N + q.pos if q.held == q.N else q.pos)


cdef inline void _zsum_resum(RollingSum* q) noexcept nogil:
    cdef Py_ssize_t k
    q.sum = 0.0
    q.bound = 0.0
    for k in range(q.held):
        q.sum += q.values[k]
        q.bound += fabs(q.values[k])


cdef inline double zsum_step_full(RollingSum* q, double x) noexcept nogil:
    """``zsum_step`` once the window is full (``q.held == q.N``): the hot path of a long run."""
    cdef double old = q.values[q.pos]
    q.values[q.pos] = x
    q.pos += 1
    if q.pos == q.N:
        q.pos = 0
    q.sum += x - old
    q.bound += fabs(x) + fabs(old)
    if q.bound > ZSUM_RESUM * fabs(q.sum):   # also makes a window of zeros exactly 0
        _zsum_resum(q)
    return q.sum


cdef inline double zsum_step(RollingSum* q, double x) noexcept nogil:
    """Add ``x`` to the sum of the last ``N`` values (evicting the oldest) and return the sum.
    One addition per accumulator on the row-to-row dependency chain; the exact re-sum is an
    inline loop, so an unkeyed kernel keeps ``q`` in registers for a whole batch."""
    if q.held == q.N:
        return zsum_step_full(q, x)
    q.held += 1                             # filling: the slot holds 0 (evicts nothing)
    return zsum_step_full(q, x)


cdef inline double zsum_push(double* z, Py_ssize_t N, double x) noexcept nogil:
    """``zsum_step`` on the state row ``z`` (one row: keyed kernels, kernels with several sums)."""
    cdef RollingSum q = zsum_load(z, N)
    cdef double s = zsum_step(&q, x)
    zsum_store(&q, z)
    return s


cdef inline Py_ssize_t zsum_count(const double* z, Py_ssize_t N) noexcept nogil:
    """Values in the window (saturates at N) of the state row ``z``."""
    return <Py_ssize_t>z[3] if z[3] < N else N


cdef enum:
    MOM_HEADER = 10     # [nobs, shift K, S1, S2, S3, S4, equal_run, last, next slot, pushes]
    MOM_REBASE = 256    # re-base at least every max(N, MOM_REBASE) pushes (rounded up to N)


cdef inline Py_ssize_t moments_width(Py_ssize_t N) noexcept nogil:
    """Doubles for rolling moments over ``N`` values (header + ring of the window)."""
    return MOM_HEADER + N


cdef inline void _mom_add(double* m, double x, int sign, bint higher) noexcept nogil:
    cdef double d = x - m[1], d2 = d * d
    m[0] += sign
    m[2] += sign * d
    m[3] += sign * d2
    if higher:
        m[4] += sign * d2 * d
        m[5] += sign * d2 * d2


cdef inline void _mom_rebase(double* m, const double* values, Py_ssize_t N,
                             bint higher) noexcept nogil:
    """Recompute the power sums exactly about the window mean (bounds rounding drift)."""
    cdef Py_ssize_t k, n = <Py_ssize_t>m[9] if m[9] < N else N
    cdef double total = 0.0, d, d2
    for k in range(n):
        total += values[k]
    m[1] = total / n
    m[2] = 0.0; m[3] = 0.0; m[4] = 0.0; m[5] = 0.0
    for k in range(n):
        d = values[k] - m[1]
        d2 = d * d
        m[2] += d; m[3] += d2
        if higher:
            m[4] += d2 * d; m[5] += d2 * d2


cdef inline void moments_step(double* m, double* values, Py_ssize_t N, double x,
                              bint higher) noexcept nogil:
    """Add ``x`` to the window of the last ``N`` values (evicting the oldest when full).

    ``m``: the MOM_HEADER scalars (a copy in locals for unkeyed state, see ``row_state``),
    ``values``: the N ring slots.  ``higher``: also keep the third and fourth power sums
    (needed by ``moments_m3``, ``moments_m4`` and ``moments_central``; mean and variance need
    only the first two).

    Power sums S_p = sum (x - K)^p about a shift K near the mean, re-based exactly at least
    every max(N, MOM_REBASE) pushes and whenever the mean drifts far from K or a far value is
    evicted, so the sums never suffer catastrophic cancellation or unbounded drift.  Slot and
    push counters are kept in floating point (no int/float conversion on the dependency chain).
    """
    cdef double old, far = 0.0, slot = m[8], fN = <double>N
    cdef Py_ssize_t every
    if m[0] == 0.0:
        m[1] = x
    if m[9] >= fN:
        old = values[<Py_ssize_t>slot]
        _mom_add(m, old, -1, higher)
        far = (old - m[1]) * (old - m[1])
    values[<Py_ssize_t>slot] = x
    m[9] += 1.0
    slot += 1.0
    if slot == fN:
        slot = 0.0
    m[8] = slot
    _mom_add(m, x, 1, higher)
    if x == m[7] and m[0] > 1.0 and m[6] > 0.0:
        m[6] += 1.0
    else:
        m[6] = 1.0
    m[7] = x
    # Re-base periodically, and early when the sums hold terms 17x the window's m2: the mean
    # has moved more than 4 standard deviations from the shift (d² > 16·var, i.e. with far = 0
    # 17·S1² > 16·n·S2), or a value that far just left (its removal cancels). Constant windows
    # need no re-base (their moments are exactly 0 by the equal-run counter).
    if m[6] < m[0] and (m[3] + m[0] * far) * m[0] > 17.0 * (m[3] * m[0] - m[2] * m[2]):
        _mom_rebase(m, values, N, higher)
    elif slot == 0.0:
        every = N * ((MOM_REBASE + N - 1) // N)
        if (<Py_ssize_t>m[9]) % every == 0:
            _mom_rebase(m, values, N, higher)


cdef inline void moments_push(double* m, Py_ssize_t N, double x, bint higher) noexcept nogil:
    """``moments_step`` on a state row ``m`` (header and ring together)."""
    moments_step(m, m + MOM_HEADER, N, x, higher)


# Rolling mean and variance over the last N values (sliding Welford), for kernels that need no
# higher moments: while filling, Welford's add; once full, when x replaces the evicted o,
# mean' = mean + (x − o)/N and M2' = M2 + (x − o)·((x − mean') + (o − mean)), on values
# shifted by K (the first value, then the mean at each re-sum) so that a large level costs no
# precision.  Each update's rounding is about eps·(x − o)²; the squares are summed (E) and both
# sums are recomputed exactly (``sabot_var_resum``: one pass about the running mean, two when
# that would cancel) when E exceeds VAR_RESUM x M2, so the relative error stays near
# VAR_RESUM·eps (a level jump leaving the window triggers it), and at least every
# max(N, MOM_REBASE) pushes (rounded up to N).
# An equal-run counter detects a constant window; its state is then set exactly (K = the value,
# mean − K = M2 = 0), so its variance is exactly 0 and its mean exactly the value.
# Layout: [n, mean − K, M2, equal run, last value, slot of the next push, pushes since the last
# periodic re-sum, E, K, ring of N values].
# Kernels open the state as a ``Var`` (``var_load``): once per run without ``by``, so it lives
# in registers, or once per row with it, push with ``var_push`` (which also rejects NaN) and
# write it back with ``var_store``.  Square roots are taken in the row loop, two rows at a time
# (``sqrt_pair``): the divider then works beside the update, at half the instructions.

cdef enum:
    VAR_HEADER = 9
    VAR_RESUM = 256


cdef inline Py_ssize_t var_width(Py_ssize_t N) noexcept nogil:
    return VAR_HEADER + N


ctypedef struct Var:
    Py_ssize_t N, every             # window; pushes between periodic re-sums (a multiple of N)
    Py_ssize_t n, run, since        # values held, equal-run length, pushes since the last
                                    # periodic re-sum
    double mean, m2, err, K, last   # mean − K, M2 (>= 0 or NaN), rounding budget E, K, last value
    double* values                  # the ring (N slots)
    double* pos                     # its slot for the next push
    double* end                     # values + N


cdef inline void var_reopen(Var* v, double* d) noexcept nogil:
    """Load state row ``d`` into ``v``, whose window ``N`` (and re-sum period) it keeps: a
    keyed loop opens each row's key state so, without recomputing the period (a division)."""
    v.n = <Py_ssize_t>d[0]
    v.mean = d[1]
    v.m2 = d[2]
    v.run = <Py_ssize_t>d[3]
    v.last = d[4]
    v.since = <Py_ssize_t>d[6]
    v.err = d[7]
    v.K = d[8]
    v.values = d + VAR_HEADER
    v.pos = v.values + <Py_ssize_t>d[5]
    v.end = v.values + v.N


cdef inline Var var_load(double* d, Py_ssize_t N) noexcept nogil:
    """Open the rolling variance stored in state row ``d`` (header and ring)."""
    cdef Var v
    v.N = N
    v.every = N * ((MOM_REBASE + N - 1) // N)
    var_reopen(&v, d)
    return v


cdef inline void var_store(const Var* v, double* d) noexcept nogil:
    d[0] = <double>v.n
    d[1] = v.mean
    d[2] = v.m2
    d[3] = <double>v.run
    d[4] = v.last
    d[5] = <double>(v.pos - v.values)
    d[6] = <double>v.since
    d[7] = v.err
    d[8] = v.K


cdef extern from *:
    """
    /* Exact mean and M2 of v[:n] for the rolling variance (_window.pxd).  Corrected two-pass
       formula (Chan, Golub & LeVeque 1983) about a centre c: d = v - c,
       M2 = sum d^2 - (sum d)^2 / n, mean = c + (sum d) / n.  One pass about the running mean
       when that loses at most a bit ((sum d)^2 / n <= (sum d^2) / 2: c is within a standard
       deviation of the mean), else a first pass for c = the plain mean; M2 >= 0, NaN stays NaN.
       Four partial sums per pass.  C, to keep it out of line: inlined, its registers would
       crowd the callers' per-row loops. */
    typedef struct { double K, mean, m2; } sabot_var_sums;
    #if defined(__GNUC__)
    /* two lanes: the same four partial sums as the scalar loop, in two packed registers */
    typedef double sabot_v2d __attribute__((vector_size(16), aligned(8), may_alias));
    #endif
    static sabot_var_sums sabot_var_about(const double* v, Py_ssize_t n, double c) {
        sabot_var_sums s;
        Py_ssize_t k, m = n - n % 4;
        double a0, a1, a2, a3, b0, b1, b2, b3, d0;
    #if defined(__GNUC__)
        sabot_v2d cc = {c, c}, a01 = {0.0, 0.0}, a23 = a01, b01 = a01, b23 = a01, d01, d23;
        for (k = 0; k < m; k += 4) {
            d01 = *(const sabot_v2d*)(v + k) - cc;
            d23 = *(const sabot_v2d*)(v + k + 2) - cc;
            a01 += d01; a23 += d23; b01 += d01 * d01; b23 += d23 * d23;
        }
        a0 = a01[0]; a1 = a01[1]; a2 = a23[0]; a3 = a23[1];
        b0 = b01[0]; b1 = b01[1]; b2 = b23[0]; b3 = b23[1];
    #else
        double d1, d2, d3;
        a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = 0.0;
        for (k = 0; k < m; k += 4) {
            d0 = v[k] - c; d1 = v[k + 1] - c; d2 = v[k + 2] - c; d3 = v[k + 3] - c;
            a0 += d0; a1 += d1; a2 += d2; a3 += d3;
            b0 += d0 * d0; b1 += d1 * d1; b2 += d2 * d2; b3 += d3 * d3;
        }
    #endif
        for (k = m; k < n; k++) { d0 = v[k] - c; a0 += d0; b0 += d0 * d0; }
        s.K = c;
        s.mean = (a0 + a1) + (a2 + a3);     /* sum d, then sum d^2 */
        s.m2 = (b0 + b1) + (b2 + b3);
        return s;
    }
    #if defined(__GNUC__)
    __attribute__((noinline))
    #endif
    static sabot_var_sums sabot_var_resum(const double* v, Py_ssize_t n, double c) {
        sabot_var_sums s = sabot_var_about(v, n, c);
        Py_ssize_t k;
        double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
        if (!(s.mean * s.mean <= 0.5 * n * s.m2)) {
            for (k = 0; k + 4 <= n; k += 4) { a0 += v[k]; a1 += v[k + 1]; a2 += v[k + 2]; a3 += v[k + 3]; }
            for (; k < n; k++) a0 += v[k];
            s = sabot_var_about(v, n, ((a0 + a1) + (a2 + a3)) / (double)n);
        }
        s.m2 -= s.mean * s.mean / (double)n;
        s.mean /= (double)n;
        if (s.m2 < 0.0) s.m2 = 0.0;
        return s;
    }
    /* sqrt of two values, one packed instruction where SSE2 is there (x86-64 always) */
    #if defined(__SSE2__) || defined(_M_X64) || defined(_M_AMD64)
    #include <emmintrin.h>
    static inline void sabot_sqrt_pair(double* out, double a, double b) {
        __m128d r = _mm_sqrt_pd(_mm_set_pd(b, a));
        out[0] = _mm_cvtsd_f64(r);          /* double stores: no may-alias vector store that */
        out[1] = _mm_cvtsd_f64(_mm_unpackhi_pd(r, r));  /* would force reloads around it */
    }
    #else
    static inline void sabot_sqrt_pair(double* out, double a, double b) {
        out[0] = sqrt(a);
        out[1] = sqrt(b);
    }
    #endif
    """
    ctypedef struct sabot_var_sums:
        double K, mean, m2          # the centre c (new shift K), mean − K, M2
    sabot_var_sums sabot_var_resum(const double* values, Py_ssize_t n, double c) noexcept nogil
    # out[0] = sqrt(a), out[1] = sqrt(b) (correctly rounded, as ``sqrt``)
    void sqrt_pair "sabot_sqrt_pair"(double* out, double a, double b) noexcept nogil


cdef inline void _var_ring_push(Var* v, double x) noexcept nogil:
    """Store ``x`` in the ring slot of the next push; count pushes for the periodic re-sum."""
    cdef double* pos = v.pos
    pos[0] = x
    pos += 1
    if unlikely(pos == v.end):
        pos = v.values
        v.since += v.N
        if v.since >= v.every:             # periodic re-sum: exhaust the budget
            v.since = 0
            v.err = INFINITY
    v.pos = pos


cdef inline bint var_push(Var* v, double x, double inv_n) noexcept nogil:
    """Push ``x`` (``inv_n`` = 1/N) and return True; NaN is not pushed (False).  One comparison
    with the last value serves both the NaN test and the equal run; a push that leaves the
    window constant sets its exact state instead of updating."""
    cdef double y, old, delta, mean
    cdef sabot_var_sums s
    if unlikely(not islessgreater(x, v.last)):     # x == last, or x is NaN
        if x != x:
            return False
        v.run += 1
        if v.run >= (v.n + 1 if v.n < v.N else v.N):     # the window after this push
            _var_ring_push(v, x)
            if v.n < v.N:
                v.n += 1
            v.K = x
            v.mean = 0.0
            v.m2 = x - x                   # 0, NaN for an infinite value
            v.err = 0.0
            return True
    else:
        v.run = 1
        v.last = x
    if likely(v.n >= v.N):
        y = x - v.K
        old = v.pos[0] - v.K
        delta = y - old
        mean = v.mean + delta * inv_n
        v.m2 += delta * ((y - mean) + (old - v.mean))
        v.mean = mean
    else:
        if v.n == 0:
            v.K = x
        y = x - v.K
        v.n += 1
        delta = y - v.mean
        v.mean += delta / <double>v.n
        v.m2 += delta * (y - v.mean)
    v.err += delta * delta
    _var_ring_push(v, x)
    if unlikely(not (v.err <= VAR_RESUM * v.m2)):    # NaN (an inf pushed) too
        s = sabot_var_resum(v.values, v.n, v.K + v.mean)
        v.K = s.K
        v.mean = s.mean
        v.m2 = s.m2
        v.err = 0.0
    return True


cdef inline bint var_push_row(KernelIO* io, Var* v, Py_ssize_t i, double inv_n,
                              bint keyed) noexcept nogil:
    """``var_push`` of row ``i``'s value (input 0): with ``keyed``, ``v`` (from ``var_load``)
    is first loaded from the row's key state and stored back after.  False for a null or NaN
    row (nothing pushed)."""
    cdef double* st
    if not present(io, i):
        return False
    if keyed:
        st = key_state(io, i)
        var_reopen(v, st)
    if not var_push(v, io.x[0][i], inv_n):
        return False
    if keyed:
        var_store(v, st)
    return True


cdef inline bint var_full(const Var* v) noexcept nogil:
    """The window holds N values."""
    return likely(v.n >= v.N)


cdef inline bint var_constant(const Var* v) noexcept nogil:
    """Every value in the window is identical (variance exactly 0)."""
    return v.run >= v.n


cdef inline double var_mean(const Var* v) noexcept nogil:
    return v.K + v.mean


cdef inline double var_m2(const Var* v) noexcept nogil:
    """Sum of squared deviations from the window mean (>= 0, exactly 0 when constant; NaN
    while an infinite value is in the window)."""
    return v.m2


cdef inline double moments_count(const double* m) noexcept nogil:
    return m[0]


cdef inline bint moments_constant(const double* m) noexcept nogil:
    """Every value in the window is identical (variance exactly 0)."""
    return m[6] >= m[0]


cdef inline double moments_mean(const double* m) noexcept nogil:
    if m[6] >= m[0]:
        return m[7]
    return m[1] + m[2] / m[0]


cdef inline double moments_m2(const double* m) noexcept nogil:
    """Sum of squared deviations from the window mean (>= 0; exactly 0 when constant)."""
    cdef double s
    if m[6] >= m[0]:
        return 0.0
    s = m[3] - m[2] * m[2] / m[0]
    return s if s > 0.0 else 0.0


cdef inline double moments_m3(const double* m) noexcept nogil:
    """Sum of cubed deviations from the window mean."""
    cdef double n = m[0], a = m[2] / m[0]
    if m[6] >= m[0]:
        return 0.0
    return m[4] - 3.0 * a * m[3] + 3.0 * a * a * m[2] - n * a * a * a


cdef inline double moments_m4(const double* m) noexcept nogil:
    """Sum of fourth-power deviations from the window mean."""
    cdef double n = m[0], a = m[2] / m[0], a2 = a * a
    if m[6] >= m[0]:
        return 0.0
    return m[5] - 4.0 * a * m[4] + 6.0 * a2 * m[3] - 4.0 * a2 * a * m[2] + n * a2 * a2


cdef inline void moments_central(const double* m, double* c) noexcept nogil:
    """m2, m3, m4 at once into ``c[0..2]`` (one division; same values as moments_m2/m3/m4)."""
    cdef double n = m[0], a = m[2] / m[0], a2 = a * a, s2
    if m[6] >= m[0]:
        c[0] = 0.0; c[1] = 0.0; c[2] = 0.0
        return
    s2 = m[3] - a * m[2]
    c[0] = s2 if s2 > 0.0 else 0.0
    c[1] = m[4] - 3.0 * a * m[3] + 3.0 * a2 * m[2] - n * a2 * a
    c[2] = m[5] - 4.0 * a * m[4] + 6.0 * a2 * m[3] - 4.0 * a2 * a * m[2] + n * a2 * a2


cdef inline double moments_var(const double* m, double ddof) noexcept nogil:
    """Window variance with ``ddof`` (NaN when nobs <= ddof)."""
    if m[0] - ddof <= 0.0:
        return 0.0 / 0.0
    return moments_m2(m) / (m[0] - ddof)


# Rolling max/min over the last N values (van Herk / Gil-Werman): pushes are cut into blocks of
# N; the window ending at a push is the suffix of the previous block after the push's position
# plus the prefix of the current block up to it.  Suffix extremes of a block are computed once
# when it completes (N comparisons every N pushes), the prefix extreme as values arrive: two
# comparisons per row amortised and no data-dependent branches (a monotonic deque pops a random
# number of entries per row, a branch misprediction each time).
# Layout: [pushes, prefix extreme, position of the next push, completed blocks, values N, suffix N].

cdef enum:
    EXTREME_HEADER = 4


cdef inline Py_ssize_t extreme_width(Py_ssize_t N) noexcept nogil:
    return EXTREME_HEADER + 2 * N


ctypedef struct Extreme:
    Py_ssize_t N, pos                 # window, position of the next push in its block
    double pushes, blocks, prefix     # values pushed, completed blocks, extreme of this block
    double* values                    # the current block (positions < pos) then the previous
    double* suffix                    # suffix extremes of the previous block


cdef inline Extreme extreme_load(double* d, Py_ssize_t N) noexcept nogil:
    """Open the rolling extreme stored in ``d`` (keep it in registers over a run of rows)."""
    cdef Extreme q
    q.N = N
    q.pushes = d[0]
    q.prefix = d[1]
    q.pos = <Py_ssize_t>d[2]
    q.blocks = d[3]
    q.values = d + EXTREME_HEADER
    q.suffix = d + EXTREME_HEADER + N
    return q


cdef inline void extreme_store(const Extreme* q, double* d) noexcept nogil:
    d[0] = q.pushes
    d[1] = q.prefix
    d[2] = <double>q.pos
    d[3] = q.blocks


cdef inline double _better(double a, double b, bint keep_max) noexcept nogil:
    if keep_max:
        return a if a > b else b
    return a if a < b else b


cdef inline void _extreme_suffixes(const double* values, double* suffix, Py_ssize_t N,
                                   bint keep_max) noexcept nogil:
    """``suffix[k]`` = extreme of ``values[k..N-1]`` (a completed block, scanned backwards)."""
    cdef Py_ssize_t k
    cdef double v = values[N - 1]
    suffix[N - 1] = v
    for k in range(N - 2, -1, -1):
        v = _better(values[k], v, keep_max)
        suffix[k] = v


cdef inline double extreme_step(Extreme* q, double x, bint keep_max) noexcept nogil:
    """Push ``x`` and return the max (``keep_max``, pass a constant) or min of the last ``N``
    pushed values."""
    cdef Py_ssize_t N = q.N, pos = q.pos
    q.values[pos] = x
    q.prefix = x if pos == 0 else _better(q.prefix, x, keep_max)
    q.pushes += 1.0
    if pos == N - 1:                       # block complete: its suffix extremes, a new block
        _extreme_suffixes(q.values, q.suffix, N, keep_max)
        q.blocks += 1.0
        q.pos = 0
        return q.prefix
    q.pos = pos + 1
    if q.blocks == 0.0:                    # still in the first block: the window is its prefix
        return q.prefix
    return _better(q.suffix[pos + 1], q.prefix, keep_max)


cdef inline double extreme_push(double* d, Py_ssize_t N, double x, bint keep_max) noexcept nogil:
    """``extreme_step`` on the rolling extreme stored in ``d`` (one row)."""
    cdef Extreme q = extreme_load(d, N)
    cdef double v = extreme_step(&q, x, keep_max)
    extreme_store(&q, d)
    return v


cdef inline Py_ssize_t extreme_count(const double* d) noexcept nogil:
    """Values pushed so far (compare with N for warm-up)."""
    return <Py_ssize_t>d[0]


# Fast path for runs of clean rows (unkeyed kernels).  Once the first block is complete, a row
# that is present and not NaN needs no per-row bookkeeping, and a whole block of N such rows at a
# block boundary needs only the previous block's suffix extremes: one loop carries the forward
# prefix extreme of the block (merged with the previous suffix into the outputs) and,
# interleaved, the backward suffix extremes of the block (for the next block), two independent
# chains per iteration that overlap, no branch per row; the same loop sums the next block's
# values, NaN if one of them is NaN, so the input is read once.  The state's ``values`` array
# is free while pos == 0, so the suffix arrays of consecutive blocks alternate between
# ``suffix`` and ``values``.  Every comparison has the operands in the order of
# ``extreme_step`` (even the sign of a zero agrees), and the state left is exactly what
# ``extreme_step`` row by row leaves.


cdef inline void _extreme_rows(Extreme* q, const double* x, double* out, Py_ssize_t m,
                               bint keep_max) noexcept nogil:
    """Push ``m`` clean rows that stay within the current block (``pos + m <= N``) of an
    extreme past its first block; completing the block computes its suffix extremes."""
    cdef Py_ssize_t k, N = q.N, pos = q.pos, end = pos + m
    cdef Py_ssize_t stop = end if end < N else N - 1
    cdef double p = q.prefix
    if m == 0:
        return
    if pos == 0:
        p = x[0]                           # a new block: better(x, x) == x starts the prefix
    for k in range(pos, stop):
        q.values[k] = x[k - pos]
        p = _better(p, x[k - pos], keep_max)
        out[k - pos] = _better(q.suffix[k + 1], p, keep_max)
    q.pushes += <double>m
    if end < N:
        q.prefix = p
        q.pos = end
        return
    q.values[N - 1] = x[m - 1]             # the block's last row completes it
    p = _better(p, x[m - 1], keep_max)
    out[m - 1] = p
    q.prefix = p
    _extreme_suffixes(q.values, q.suffix, N, keep_max)
    q.blocks += 1.0
    q.pos = 0


cdef inline double _extreme_block(const double* x, const double* prev, double* suffix,
                                  double* out, Py_ssize_t N, const double* ahead,
                                  double* ahead_sum, bint keep_max) noexcept nogil:
    """One block of N rows at a block boundary: ``out[k]`` = extreme of the previous block's
    values after position k (``prev[k + 1]``) and of ``x[0..k]``; ``suffix[k]`` = extreme of
    ``x[k..N-1]``.  Returns the block's extreme (its last prefix).  Also sums ``ahead[0:N]``
    into ``ahead_sum``: NaN when one of them is (the NaN check of the next block, in the
    same loop)."""
    cdef Py_ssize_t k
    cdef double p = x[0], s = x[N - 1], c = ahead[N - 1]
    suffix[N - 1] = s
    for k in range(N - 1):
        out[k] = _better(prev[k + 1], p, keep_max)
        p = _better(p, x[k + 1], keep_max)
        s = _better(x[N - 2 - k], s, keep_max)
        suffix[N - 2 - k] = s
        c += ahead[k]
    out[N - 1] = p
    ahead_sum[0] = c
    return p


cdef inline Py_ssize_t extreme_run_clean(Extreme* q, const double* x, const uint8_t* ok,
                                         double* out, Py_ssize_t n, bint keep_max) noexcept nogil:
    """Push the leading clean rows of ``x[0:n]`` (present and not NaN, see ``clean_rows``) into
    an extreme past its first block (``q.blocks >= 1``), write their windows' extremes to
    ``out`` and return how many were pushed: all up to the first null or NaN row (rarely
    fewer, after infinities of both signs; the caller goes on row by row either way).

    The same outputs and final state as ``extreme_step`` on each row, with about two
    comparisons per row.  The rows up to the next block boundary and after the last whole
    block go row by row (``_extreme_rows``); the whole blocks in between through
    ``_extreme_block``, each checking the next block for NaN as it goes (so the data is read
    once); nulls are found beforehand."""
    cdef Py_ssize_t N = q.N, done, m
    cdef double* prev = q.suffix
    cdef double* spare = q.values
    cdef double* t
    cdef const double* ahead
    cdef double check = 0.0
    done = clean_rows(x, ok, min(n, (N - q.pos) % N))     # finish the current block
    _extreme_rows(q, x, out, done, keep_max)
    if q.pos != 0:
        return done
    n = done + present_rows(NULL if ok == NULL else ok + done, n - done)   # stop at a null
    if n - done >= N and clean_rows(x + done, NULL, N) == N:
        while True:
            # the next block's values are checked while this one runs (none left: this one
            # again, harmlessly)
            ahead = x + done + N if n - done >= 2 * N else x + done
            q.prefix = _extreme_block(x + done, prev, spare, out + done, N, ahead, &check,
                                      keep_max)
            t = prev
            prev = spare
            spare = t
            done += N
            q.pushes += <double>N
            q.blocks += 1.0
            if ahead != x + done or check != check:
                break
    if prev != q.suffix:
        memcpy(q.suffix, prev, N * sizeof(double))
    if done >= N:
        memcpy(q.values, x + done - N, N * sizeof(double))   # the last block, as per row
    m = clean_rows(x + done, NULL, min(n - done, N))
    _extreme_rows(q, x + done, out + done, m, keep_max)
    return done + m


# Sorted window: the last N values twice, a ring (arrival order, N + 1 doubles) and a sorted
# copy (N doubles), kept sorted by binary search + one memmove of the values between the evicted
# value's slot and the new value's slot: O(log N) search, O(N) move (N/3 values on average).

cdef inline Py_ssize_t sorted_width(Py_ssize_t N) noexcept nogil:
    return N + 1 + N


cdef inline Py_ssize_t sorted_lower_bound(const double* s, Py_ssize_t n, double x) noexcept nogil:
    """First index with s[i] >= x (branch-free halving: a conditional move per step)."""
    cdef Py_ssize_t base = 0, half
    if n == 0:
        return 0
    while n > 1:
        half = n >> 1
        base = base + half if s[base + half] < x else base
        n -= half
    return base + (s[base] < x)


cdef inline Py_ssize_t sorted_push(double* w, Py_ssize_t N, double x) noexcept nogil:
    """Push ``x`` (evicting the oldest value when full); return the number of values held."""
    cdef double* s = w + N + 1
    cdef Py_ssize_t n = ring_count(w, N), pos, out
    cdef double old
    pos = sorted_lower_bound(s, n, x)
    if ring_push(w, N, x, &old):
        # replace ``old`` by ``x``: shift only the values between their two positions
        out = sorted_lower_bound(s, n, old)
        if pos > out:
            memmove(s + out, s + out + 1, (pos - 1 - out) * sizeof(double))
            s[pos - 1] = x
        else:
            memmove(s + pos + 1, s + pos, (out - pos) * sizeof(double))
            s[pos] = x
        return n
    memmove(s + pos + 1, s + pos, (n - pos) * sizeof(double))
    s[pos] = x
    return n + 1
