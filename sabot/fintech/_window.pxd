# cython: language_level=3
"""Shared C-level building blocks for windowed kernels, all living inside a key's state row.

* ring buffer of the last N values: ``N + 1`` doubles ``[pushed, v_0 .. v_{N-1}]``;
* rolling mean/variance by Welford add/remove with a run-of-equal-values counter (a constant
  window has variance exactly 0, as pandas gives): ``VAR_WIDTH`` doubles
  ``[nobs, mean, ssqdm, equal_run, last]``;
* monotonic deque for rolling max/min in amortised O(1): ``3 + 2N`` doubles
  ``[pushed, head, length, values N, indices N]``.
"""

cdef enum:
    VAR_WIDTH = 5


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


cdef inline Py_ssize_t ring_count(const double* r, Py_ssize_t N) noexcept nogil:
    cdef Py_ssize_t pushed = <Py_ssize_t>r[0]
    return pushed if pushed < N else N


cdef inline void var_add(double* v, double x) noexcept nogil:
    cdef double delta
    v[0] += 1.0
    if x == v[4] and v[0] > 1.0:
        v[3] += 1.0
    else:
        v[3] = 1.0
    v[4] = x
    delta = x - v[1]
    v[1] += delta / v[0]
    v[2] += delta * (x - v[1])


cdef inline void var_remove(double* v, double x) noexcept nogil:
    cdef double delta
    v[0] -= 1.0
    if v[0] <= 0.0:
        v[0] = 0.0
        v[1] = 0.0
        v[2] = 0.0
        return
    delta = x - v[1]
    v[1] -= delta / v[0]
    v[2] -= delta * (x - v[1])


cdef inline double var_mean(const double* v) noexcept nogil:
    """Window mean; exactly the repeated value when the window is constant."""
    if v[3] >= v[0]:
        return v[4]
    return v[1]


cdef inline double var_value(const double* v, double ddof) noexcept nogil:
    """Window variance with ``ddof``; NaN when nobs <= ddof; exactly 0 for a constant window."""
    cdef double s
    if v[0] - ddof <= 0.0:
        return 0.0 / 0.0
    if v[3] >= v[0]:
        return 0.0
    s = v[2] / (v[0] - ddof)
    return s if s > 0.0 else 0.0


cdef inline Py_ssize_t deque_width(Py_ssize_t N) noexcept nogil:
    return 3 + 2 * N


cdef inline double deque_push(double* d, Py_ssize_t N, double x, bint keep_max) noexcept nogil:
    """Push ``x`` and return the max (``keep_max``) or min of the last ``N`` pushed values."""
    cdef Py_ssize_t t = <Py_ssize_t>d[0]
    cdef Py_ssize_t head = <Py_ssize_t>d[1]
    cdef Py_ssize_t length = <Py_ssize_t>d[2]
    cdef double* values = d + 3
    cdef double* index = d + 3 + N
    cdef Py_ssize_t back
    cdef double v
    if length > 0 and <Py_ssize_t>index[head] <= t - N:
        head = (head + 1) % N
        length -= 1
    while length > 0:
        back = (head + length - 1) % N
        v = values[(<Py_ssize_t>index[back]) % N]
        if (v <= x) if keep_max else (v >= x):
            length -= 1
        else:
            break
    index[(head + length) % N] = <double>t
    length += 1
    values[t % N] = x
    d[0] = <double>(t + 1)
    d[1] = <double>head
    d[2] = <double>length
    return values[(<Py_ssize_t>index[head]) % N]


cdef inline Py_ssize_t deque_count(const double* d) noexcept nogil:
    """Values pushed so far (compare with N for warm-up)."""
    return <Py_ssize_t>d[0]
