# cython: language_level=3
"""Shared C-level building blocks for windowed kernels, all living inside a key's state row.

* ring buffer of the last N values: ``N + 1`` doubles ``[pushed, v_0 .. v_{N-1}]``;
* rolling sum (``zsum_*``), as accurate as re-summing the window, exactly 0 for zeros;
* rolling moments (count, mean, central sums of powers 2..4) over a window of N values, from
  power sums about a shift re-based every max(N, 256) pushes (and early when the sums would
  cancel),
  with a run-of-equal-values counter so a constant window has variance exactly 0:
  ``moments_width(N)`` doubles;
* monotonic deque for rolling max/min in amortised O(1): ``3 + 2N`` doubles
  ``[pushed, head, length, values N, push indices N]``;
* sorted window (ring + sorted copy) for exact rolling order statistics: ``sorted_width(N)``.

The per-row paths of moments and the deque avoid integer division (slots wrap by comparison).
"""
from libc.math cimport fabs
from libc.string cimport memmove


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
# last exact re-sum (A); the window is re-summed when A exceeds ZSUM_RESUM x |sum| (a large value
# left the window, or many pushes have accumulated), so the relative error stays below
# ZSUM_RESUM x eps (about 6e-14). A count of nonzero values makes a window of zeros exactly 0.
# Layout: [nonzero count, sum, A, ring of N values]. The ring's push counter wraps within
# [N, 2N) once full, so the slot is found without an integer division.

cdef enum:
    ZSUM_RESUM = 256


cdef inline Py_ssize_t zsum_width(Py_ssize_t N) noexcept nogil:
    return 3 + N + 1


cdef enum:
    ZSUM_HEADER = 4     # [nonzero count, sum, A, pushes (wrapping in [N, 2N) once full)]


cdef inline double zsum_step(double* h, double* values, Py_ssize_t N, double x) noexcept nogil:
    """Add ``x`` to the sum of the last ``N`` values (evicting the oldest) and return the sum.

    ``h``: the ZSUM_HEADER scalars, ``values``: the N ring slots (``z + ZSUM_HEADER`` of a
    state row).  Kernels pass a copy of the header held in locals for unkeyed state
    (``row_state``), so the whole recurrence stays in registers.  The push counter is kept
    in floating point: no int/float conversion on the row-to-row dependency chain."""
    cdef double old, pushed = h[3], fN = <double>N
    cdef Py_ssize_t k, slot
    cdef bint full
    if pushed >= 2.0 * fN:                   # a plain push count (state saved before the wrap)
        pushed = fN + <double>((<Py_ssize_t>pushed) % N)
    full = pushed >= fN
    slot = <Py_ssize_t>(pushed - fN if full else pushed)
    old = values[slot] if full else 0.0      # evicted value (0 adds nothing while filling)
    values[slot] = x
    pushed += 1.0
    h[3] = fN if pushed == 2.0 * fN else pushed
    # one addition per accumulator on the row-to-row chain
    h[1] += x - old
    h[2] += fabs(x) + fabs(old)
    h[0] += <double>(x != 0.0) - <double>(old != 0.0)
    if h[0] == 0.0:
        h[1] = 0.0
        h[2] = 0.0
        return 0.0
    if h[2] > ZSUM_RESUM * fabs(h[1]):
        h[1] = 0.0
        h[2] = 0.0
        for k in range(N if full else slot + 1):
            h[1] += values[k]
            h[2] += fabs(values[k])
    return h[1]


cdef inline double zsum_push(double* z, Py_ssize_t N, double x) noexcept nogil:
    """``zsum_step`` on a state row ``z`` (header and ring together)."""
    return zsum_step(z, z + ZSUM_HEADER, N, x)


cdef inline Py_ssize_t zsum_count(const double* z, Py_ssize_t N) noexcept nogil:
    """Values in the window (saturates at N); ``z`` the state row or its header."""
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


cdef inline double moments_count(const double* m) noexcept nogil:
    return m[0]


cdef inline bint moments_constant(const double* m) noexcept nogil:
    """Every value in the window is identical (variance exactly 0)."""
    return m[6] >= m[0]


cdef inline double moments_mean(const double* m) noexcept nogil:
    if m[6] >= m[0]:
        return m[7]
    return m[1] + m[2] / m[0]


cdef inline double moments_mean_full(const double* m, double inv_n) noexcept nogil:
    """``moments_mean`` of a full window, given ``inv_n`` = 1/N (a multiply, not a division:
    divisions bound the throughput of the per-row loops)."""
    if m[6] >= m[0]:
        return m[7]
    return m[1] + m[2] * inv_n


cdef inline double moments_m2_full(const double* m, double inv_n) noexcept nogil:
    """``moments_m2`` of a full window, given ``inv_n`` = 1/N."""
    cdef double s
    if m[6] >= m[0]:
        return 0.0
    s = m[3] - m[2] * m[2] * inv_n
    return s if s > 0.0 else 0.0


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


cdef inline Py_ssize_t deque_width(Py_ssize_t N) noexcept nogil:
    return 3 + 2 * N


ctypedef struct Deque:
    Py_ssize_t N, t, head, length     # window, values pushed, head slot, entries
    double* values
    double* index


cdef inline Deque deque_load(double* d, Py_ssize_t N) noexcept nogil:
    """Open the deque stored in ``d`` (keep it in registers over a run of rows of one key)."""
    cdef Deque q
    q.N = N
    q.t = <Py_ssize_t>d[0]
    q.head = <Py_ssize_t>d[1]
    q.length = <Py_ssize_t>d[2]
    q.values = d + 3
    q.index = d + 3 + N
    return q


cdef inline void deque_store(const Deque* q, double* d) noexcept nogil:
    d[0] = <double>q.t
    d[1] = <double>q.head
    d[2] = <double>q.length


cdef inline double deque_step(Deque* q, double x, bint keep_max) noexcept nogil:
    """Push ``x`` and return the max (``keep_max``) or min of the last ``N`` pushed values.

    The deque holds (value, push index) pairs in a circular buffer of N slots, values
    monotonic from the head; no division in the loop (pass ``keep_max`` as a constant).
    """
    cdef Py_ssize_t N = q.N, head = q.head, length = q.length, back, slot
    cdef double* values = q.values
    if length > 0 and <Py_ssize_t>q.index[head] <= q.t - N:   # the head left the window
        head += 1
        if head == N:
            head = 0
        length -= 1
    back = head + length - 1
    if back >= N:
        back -= N
    while length > 0 and ((values[back] <= x) if keep_max else (values[back] >= x)):
        length -= 1
        back -= 1
        if back < 0:
            back += N
    slot = head + length
    if slot >= N:
        slot -= N
    values[slot] = x
    q.index[slot] = <double>q.t
    q.t += 1
    q.head = head
    q.length = length + 1
    return values[head]


cdef inline double deque_push(double* d, Py_ssize_t N, double x, bint keep_max) noexcept nogil:
    """``deque_step`` on the deque stored in ``d`` (one row)."""
    cdef Deque q = deque_load(d, N)
    cdef double v = deque_step(&q, x, keep_max)
    deque_store(&q, d)
    return v


cdef inline Py_ssize_t deque_count(const double* d) noexcept nogil:
    """Values pushed so far (compare with N for warm-up)."""
    return <Py_ssize_t>d[0]


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
