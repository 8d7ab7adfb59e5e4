# cython: language_level=3
"""Microstructure: mid/micro price, quoted/effective spread, L1 and depth imbalance, OFI, VPIN."""
from libc.math cimport fabs, NAN
from libc.stdint cimport uint32_t

import pyarrow as pa

from ._kernel cimport (MAX_COLUMNS, Kernel, KernelIO, emit, emit_marked, input_present, key_state,
                      present, report_finite, set_null, valid_or_null)
from ._simd cimport avx2_active, avx2_void
from ._kernel import numeric_input, output, side_input
from ._columns import check_positive, check_positive_int, require_numeric
from ._scope import call_kernel
from ._naming import renamed as _renamed


cdef class Midprice(Kernel):
    """m = (b + a) / 2."""
    def __init__(self, *, bid_column="bid", ask_column="ask", **renamed):
        if renamed:
            bound = _renamed("midprice", renamed, dict(
                bid_column=bid_column, ask_column=ask_column)).values()
            bid_column, ask_column = bound
        self.declare("midprice", [numeric_input("bid_column", bid_column),
                                  numeric_input("ask_column", ask_column)],
                     [output("midprice")],
                     config=dict(bid_column=bid_column, ask_column=ask_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef uint32_t marks = 0
        for i in range(io.n):
            marks |= emit_marked(io, 0, i, valid_or_null(
                io, i, 0.5 * (io.x[0][i] + io.x[1][i]), True))
        report_finite(io, 0, marks)


cdef inline void microprice_rows(KernelIO* io) noexcept nogil:
    """The loop of :class:`Microprice` (dispatched, see ``_simd.pxd``)."""
    cdef Py_ssize_t i
    cdef double b, a, B, A
    cdef uint32_t marks = 0
    for i in range(io.n):
        b = io.x[0][i]; a = io.x[1][i]; B = io.x[2][i]; A = io.x[3][i]
        marks |= emit_marked(io, 0, i, valid_or_null(
            io, i, (b * A + a * B) / (A + B), A + B != 0.0))
    report_finite(io, 0, marks)


cdef avx2_void microprice_rows_avx2(KernelIO* io) noexcept nogil:
    microprice_rows(io)


cdef class Microprice(Kernel):
    """Size-weighted mid: (b·A + a·B)/(A + B), A = ask size, B = bid size; A + B = 0 → null."""
    def __init__(self, *, bid_column="bid", ask_column="ask", bid_size_column="bid_size",
                 ask_size_column="ask_size", **renamed):
        if renamed:
            bound = _renamed("microprice", renamed, dict(
                bid_column=bid_column, ask_column=ask_column, bid_size_column=bid_size_column,
                ask_size_column=ask_size_column)).values()
            bid_column, ask_column, bid_size_column, ask_size_column = bound
        self.declare("microprice", [numeric_input("bid_column", bid_column),
                                    numeric_input("ask_column", ask_column),
                                    numeric_input("bid_size_column", bid_size_column),
                                    numeric_input("ask_size_column", ask_size_column)],
                     [output("microprice")],
                     config=dict(bid_column=bid_column, ask_column=ask_column,
                                 bid_size_column=bid_size_column,
                                 ask_size_column=ask_size_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        if avx2_active():
            microprice_rows_avx2(io)
        else:
            microprice_rows(io)


cdef inline void quoted_spread_rows(KernelIO* io) noexcept nogil:
    """The loop of :class:`QuotedSpread` (dispatched, see ``_simd.pxd``)."""
    cdef Py_ssize_t i
    cdef double b, a
    cdef uint32_t marks = 0
    for i in range(io.n):
        b = io.x[0][i]; a = io.x[1][i]
        marks |= emit_marked(io, 0, i, valid_or_null(
            io, i, (a - b) / (0.5 * (a + b)) * 1e4, a + b != 0.0))
    report_finite(io, 0, marks)


cdef avx2_void quoted_spread_rows_avx2(KernelIO* io) noexcept nogil:
    quoted_spread_rows(io)


cdef class QuotedSpread(Kernel):
    """(a − b) / ((a + b)/2) · 1e4, in basis points."""
    def __init__(self, *, bid_column="bid", ask_column="ask", **renamed):
        if renamed:
            bound = _renamed("quoted_spread", renamed, dict(
                bid_column=bid_column, ask_column=ask_column)).values()
            bid_column, ask_column = bound
        self.declare("quoted_spread", [numeric_input("bid_column", bid_column),
                                       numeric_input("ask_column", ask_column)],
                     [output("quoted_spread")],
                     config=dict(bid_column=bid_column, ask_column=ask_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        if avx2_active():
            quoted_spread_rows_avx2(io)
        else:
            quoted_spread_rows(io)


cdef inline void effective_spread_rows(KernelIO* io) noexcept nogil:
    """The loop of :class:`EffectiveSpread` (dispatched, see ``_simd.pxd``)."""
    cdef Py_ssize_t i
    cdef double p, m
    cdef uint32_t marks = 0
    for i in range(io.n):
        p = io.x[0][i]; m = io.x[1][i]
        marks |= emit_marked(io, 0, i, valid_or_null(
            io, i, 2.0 * fabs(p - m) / m * 1e4, m != 0.0))
    report_finite(io, 0, marks)


cdef avx2_void effective_spread_rows_avx2(KernelIO* io) noexcept nogil:
    effective_spread_rows(io)


cdef class EffectiveSpread(Kernel):
    """2·|p − m| / m · 1e4, in basis points."""
    def __init__(self, *, price_column="exec_price", mid_column="midprice", **renamed):
        if renamed:
            bound = _renamed("effective_spread", renamed, dict(
                price_column=price_column, mid_column=mid_column)).values()
            price_column, mid_column = bound
        self.declare("effective_spread", [numeric_input("price_column", price_column),
                                          numeric_input("mid_column", mid_column)],
                     [output("effective_spread")],
                     config=dict(price_column=price_column, mid_column=mid_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        if avx2_active():
            effective_spread_rows_avx2(io)
        else:
            effective_spread_rows(io)


cdef inline void l1_imbalance_rows(KernelIO* io) noexcept nogil:
    """The loop of :class:`L1Imbalance` (dispatched, see ``_simd.pxd``)."""
    cdef Py_ssize_t i
    cdef double B, A
    cdef uint32_t marks = 0
    for i in range(io.n):
        B = io.x[0][i]; A = io.x[1][i]
        marks |= emit_marked(io, 0, i, valid_or_null(
            io, i, (B - A) / (B + A), B + A != 0.0))
    report_finite(io, 0, marks)


cdef avx2_void l1_imbalance_rows_avx2(KernelIO* io) noexcept nogil:
    l1_imbalance_rows(io)


cdef class L1Imbalance(Kernel):
    """(B − A) / (B + A) with B = bid size, A = ask size; B + A = 0 → null."""
    def __init__(self, *, bid_size_column="bid_size", ask_size_column="ask_size", **renamed):
        if renamed:
            bound = _renamed("l1_imbalance", renamed, dict(
                bid_size_column=bid_size_column, ask_size_column=ask_size_column)).values()
            bid_size_column, ask_size_column = bound
        self.declare("l1_imbalance", [numeric_input("bid_size_column", bid_size_column),
                                      numeric_input("ask_size_column", ask_size_column)],
                     [output("l1_imbalance")],
                     config=dict(bid_size_column=bid_size_column,
                                 ask_size_column=ask_size_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        if avx2_active():
            l1_imbalance_rows_avx2(io)
        else:
            l1_imbalance_rows(io)


cdef class _LevelSum(Kernel):
    """Σ of the present values (neither null nor NaN) of up to ``MAX_COLUMNS`` columns per row,
    null when none is present: one step of :class:`DepthImbalance`, which sums more levels than
    one kernel reads by carrying the partial sum from step to step."""
    cdef int n_columns

    def __init__(self, columns, sum_column):
        columns = list(columns)
        self.n_columns = len(columns)
        self.declare("depth_imbalance", [numeric_input("size column", c) for c in columns],
                     [output(sum_column)],
                     config=dict(columns=columns, sum_column=sum_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef int j
        cdef double s, v
        cdef bint seen
        for i in range(io.n):
            s = 0.0
            seen = False
            for j in range(self.n_columns):
                if input_present(io, j, i):
                    v = io.x[j][i]
                    if v == v:
                        s += v
                        seen = True
            io.out[0][i] = s if seen else NAN


#: Columns that hold each side's summed depth while :class:`DepthImbalance` runs.
_BID_DEPTH = "__depth_imbalance_bid"
_ASK_DEPTH = "__depth_imbalance_ask"


def _level_columns(param, columns, prefix, Py_ssize_t n_levels):
    """The size columns of one side: ``columns`` as given, else ``<prefix>1 .. <prefix>N``."""
    if columns is None:
        return [f"{prefix}{i}" for i in range(1, n_levels + 1)]
    if isinstance(columns, str):
        raise TypeError(f"{param} must be a list of column names, got the string {columns!r}")
    columns = [str(c) for c in columns]
    if len(columns) != n_levels:
        raise ValueError(f"{param} names {len(columns)} columns; n_levels is {n_levels}")
    return columns


def _sum_steps(columns, sum_column):
    """Kernels summing ``columns`` into ``sum_column``: the first reads up to MAX_COLUMNS
    levels, each next one the partial sum and up to MAX_COLUMNS - 1 more levels."""
    steps = [_LevelSum(columns[:MAX_COLUMNS], sum_column)]
    rest = columns[MAX_COLUMNS:]
    while rest:
        steps.append(_LevelSum([sum_column] + rest[:MAX_COLUMNS - 1], sum_column))
        rest = rest[MAX_COLUMNS - 1:]
    return steps


cdef class DepthImbalance(Kernel):
    """Depth imbalance over the top N levels: (Σ_{i≤N} B_i − Σ_{i≤N} A_i) / (Σ B_i + Σ A_i),
    B_i, A_i the bid and ask sizes at level i (the book records' ``bid_size_i``,
    ``ask_size_i``).  Stateless.

    A missing level (null or NaN: a book thinner than N levels) adds nothing to its side; the
    result is null when every level of both sides is missing or the total depth is 0.  With one
    side empty it is +1 or −1.  ``n_levels=1`` on ``bid_size_1``/``ask_size_1`` is
    :func:`l1_imbalance`.
    """
    cdef readonly Py_ssize_t n_levels
    cdef list _steps
    cdef list _levels                                 # (param, column) of every level read

    def __init__(self, n_levels=5, *, bid_size_columns=None, ask_size_columns=None, **renamed):
        if renamed:
            bound = _renamed("depth_imbalance", renamed, dict(
                n_levels=n_levels, bid_size_columns=bid_size_columns,
                ask_size_columns=ask_size_columns)).values()
            n_levels, bid_size_columns, ask_size_columns = bound
        self.n_levels = check_positive_int("n_levels", n_levels)
        bids = _level_columns("bid_size_columns", bid_size_columns, "bid_size_", self.n_levels)
        asks = _level_columns("ask_size_columns", ask_size_columns, "ask_size_", self.n_levels)
        self._steps = _sum_steps(bids, _BID_DEPTH) + _sum_steps(asks, _ASK_DEPTH)
        self._levels = ([("bid_size_columns", c) for c in bids]
                        + [("ask_size_columns", c) for c in asks])
        self.declare("depth_imbalance", [numeric_input("bid_size_columns", _BID_DEPTH),
                                         numeric_input("ask_size_columns", _ASK_DEPTH)],
                     [output("depth_imbalance")],
                     config=dict(n_levels=self.n_levels,
                                 bid_size_columns=None if bid_size_columns is None else bids,
                                 ask_size_columns=None if ask_size_columns is None else asks))

    def __call__(self, batch):
        """``batch`` with ``depth_imbalance`` appended (any data :mod:`sabot.interop` takes)."""
        if not isinstance(batch, (pa.RecordBatch, pa.Table)):
            from .. import interop
            return interop.apply(self, batch, self.output_names, what="depth_imbalance input")
        for param, column in self._levels:            # errors name the caller's columns only
            require_numeric(batch.schema, column, param)
        work = batch
        for step in self._steps:
            step.nulls = self.nulls
            work = step(work)
        return Kernel.__call__(self, work).drop_columns([_BID_DEPTH, _ASK_DEPTH])

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double B, A, d
        cdef bint has_b, has_a
        for i in range(io.n):
            B = io.x[0][i]; A = io.x[1][i]
            has_b = input_present(io, 0, i) and B == B
            has_a = input_present(io, 1, i) and A == A
            if not has_b:
                B = 0.0
            if not has_a:
                A = 0.0
            d = B + A
            if (has_b or has_a) and d != 0.0:
                io.out[0][i] = (B - A) / d
            else:
                io.out[0][i] = NAN


cdef class OFI(Kernel):
    """Order-flow imbalance of Cont, Kukanov & Stoikov (2014), per key; first row null.

    e_t = 1[b_t ≥ b_{t−1}]·B_t − 1[b_t ≤ b_{t−1}]·B_{t−1} − 1[a_t ≤ a_{t−1}]·A_t
          + 1[a_t ≥ a_{t−1}]·A_{t−1}
    """
    def __init__(self, *, bid_column="bid", ask_column="ask", bid_size_column="bid_size",
                 ask_size_column="ask_size", by=None, **renamed):
        if renamed:
            bound = _renamed("ofi", renamed, dict(
                bid_column=bid_column, ask_column=ask_column, bid_size_column=bid_size_column,
                ask_size_column=ask_size_column, by=by)).values()
            bid_column, ask_column, bid_size_column, ask_size_column, by = bound
        self.declare("ofi", [numeric_input("bid_column", bid_column),
                             numeric_input("ask_column", ask_column),
                             numeric_input("bid_size_column", bid_size_column),
                             numeric_input("ask_size_column", ask_size_column)],
                     [output("ofi")], stride=5, by=by,
                     config=dict(bid_column=bid_column, ask_column=ask_column,
                                 bid_size_column=bid_size_column,
                                 ask_size_column=ask_size_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double b, a, B, A, e
        cdef double* st                               # seen, b, a, B, A of the previous row
        for i in range(io.n):
            b = io.x[0][i]; a = io.x[1][i]; B = io.x[2][i]; A = io.x[3][i]
            st = key_state(io, i)
            if not present(io, i) or b != b or a != a or B != B or A != A:
                set_null(io, 0, i)
                continue
            if st[0] == 0.0:
                set_null(io, 0, i)
            else:
                e = 0.0
                if b >= st[1]:
                    e += B
                if b <= st[1]:
                    e -= st[3]
                if a <= st[2]:
                    e -= A
                if a >= st[2]:
                    e += st[4]
                io.out[0][i] = e
            st[0] = 1.0; st[1] = b; st[2] = a; st[3] = B; st[4] = A


cdef enum:
    VPIN_HEADER = 5     # buy volume, sell volume in the open bucket, full buckets, sum, fill


cdef class VPIN(Kernel):
    """Volume-synchronised probability of informed trading (Easley, López de Prado, O'Hara 2012).

    Trades fill equal-volume buckets of size V in order; a trade larger than a bucket's free
    room is split across buckets. VPIN = Σ|V_buy − V_sell| / (n·V) over the last n full
    buckets; null until n buckets are full. Buckets persist across batches, per key.
    """
    cdef double bucket_vol
    cdef Py_ssize_t n_buckets

    def __init__(self, bucket_vol=100000.0, n_buckets=50, *, volume_column="volume",
                 side_column="side", by=None, **renamed):
        if renamed:
            bound = _renamed("vpin", renamed, dict(
                bucket_vol=bucket_vol, n_buckets=n_buckets, volume_column=volume_column,
                side_column=side_column, by=by)).values()
            bucket_vol, n_buckets, volume_column, side_column, by = bound
        self.bucket_vol = check_positive("bucket_vol", bucket_vol)
        self.n_buckets = check_positive_int("n_buckets", n_buckets)
        self.declare("vpin", [numeric_input("volume_column", volume_column),
                              side_input("side_column", side_column)],
                     [output("vpin")], stride=VPIN_HEADER + self.n_buckets, by=by,
                     config=dict(bucket_vol=bucket_vol, n_buckets=self.n_buckets,
                                 volume_column=volume_column, side_column=side_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i, k, n = self.n_buckets, full
        cdef double V = self.bucket_vol, v, side, room, take
        cdef double* st
        cdef double* ring
        for i in range(io.n):
            v = io.x[0][i]; side = io.x[1][i]
            st = key_state(io, i)
            ring = st + VPIN_HEADER
            if not present(io, i) or v != v or side != side or v < 0.0:
                set_null(io, 0, i)
                continue
            while v > 0.0:
                room = V - st[4]
                take = v if v < room else room
                if side > 0.0:
                    st[0] += take
                else:
                    st[1] += take
                v -= take
                if take == room:                      # bucket full: close it
                    full = <Py_ssize_t>st[2]
                    ring[full % n] = fabs(st[0] - st[1])
                    st[2] = <double>(full + 1)
                    st[0] = 0.0; st[1] = 0.0; st[4] = 0.0
                    st[3] = 0.0
                    for k in range(n if full + 1 >= n else full + 1):
                        st[3] += ring[k]
                else:
                    st[4] += take
            if st[2] < n:
                set_null(io, 0, i)
            else:
                io.out[0][i] = st[3] / (n * V)


def midprice(batch, *, bid_column="bid", ask_column="ask", **renamed):
    """Append ``midprice`` = (bid + ask)/2."""
    if renamed:
        bound = _renamed("midprice", renamed, dict(
            bid_column=bid_column, ask_column=ask_column)).values()
        bid_column, ask_column = bound
    return Midprice(bid_column=bid_column, ask_column=ask_column)(batch)


def microprice(batch, *, bid_column="bid", ask_column="ask", bid_size_column="bid_size",
               ask_size_column="ask_size", **renamed):
    """Append ``microprice`` = (b·A + a·B)/(A + B)."""
    if renamed:
        bound = _renamed("microprice", renamed, dict(
            bid_column=bid_column, ask_column=ask_column, bid_size_column=bid_size_column,
            ask_size_column=ask_size_column)).values()
        bid_column, ask_column, bid_size_column, ask_size_column = bound
    return Microprice(bid_column=bid_column, ask_column=ask_column,
                      bid_size_column=bid_size_column, ask_size_column=ask_size_column)(batch)


def quoted_spread(batch, *, bid_column="bid", ask_column="ask", **renamed):
    """Append ``quoted_spread`` = (a − b)/mid · 1e4 (bps)."""
    if renamed:
        bound = _renamed("quoted_spread", renamed, dict(
            bid_column=bid_column, ask_column=ask_column)).values()
        bid_column, ask_column = bound
    return QuotedSpread(bid_column=bid_column, ask_column=ask_column)(batch)


def effective_spread(batch, *, price_column="exec_price", mid_column="midprice", **renamed):
    """Append ``effective_spread`` = 2|p − m|/m · 1e4 (bps)."""
    if renamed:
        bound = _renamed("effective_spread", renamed, dict(
            price_column=price_column, mid_column=mid_column)).values()
        price_column, mid_column = bound
    return EffectiveSpread(price_column=price_column, mid_column=mid_column)(batch)


def l1_imbalance(batch, *, bid_size_column="bid_size", ask_size_column="ask_size", **renamed):
    """Append ``l1_imbalance`` = (B − A)/(B + A)."""
    if renamed:
        bound = _renamed("l1_imbalance", renamed, dict(
            bid_size_column=bid_size_column, ask_size_column=ask_size_column)).values()
        bid_size_column, ask_size_column = bound
    return L1Imbalance(bid_size_column=bid_size_column, ask_size_column=ask_size_column)(batch)


def depth_imbalance(batch, n_levels=5, *, bid_size_columns=None, ask_size_columns=None,
                    **renamed):
    """Append ``depth_imbalance`` = (ΣB_i − ΣA_i)/(ΣB_i + ΣA_i) over the top ``n_levels``
    levels (``bid_size_1..N``, ``ask_size_1..N`` unless the columns are named)."""
    if renamed:
        bound = _renamed("depth_imbalance", renamed, dict(
            n_levels=n_levels, bid_size_columns=bid_size_columns,
            ask_size_columns=ask_size_columns)).values()
        n_levels, bid_size_columns, ask_size_columns = bound
    return call_kernel(DepthImbalance, batch, n_levels=n_levels,
                       bid_size_columns=bid_size_columns, ask_size_columns=ask_size_columns)


def ofi(batch, *, bid_column="bid", ask_column="ask", bid_size_column="bid_size",
        ask_size_column="ask_size", by=None, **renamed):
    """Append ``ofi``, the Cont–Kukanov–Stoikov order-flow imbalance per key."""
    if renamed:
        bound = _renamed("ofi", renamed, dict(
            bid_column=bid_column, ask_column=ask_column, bid_size_column=bid_size_column,
            ask_size_column=ask_size_column, by=by)).values()
        bid_column, ask_column, bid_size_column, ask_size_column, by = bound
    return call_kernel(OFI, batch, bid_column=bid_column, ask_column=ask_column,
                       bid_size_column=bid_size_column, ask_size_column=ask_size_column, by=by)


def multi_level_ofi(batch, n_levels=5, *, by=None, **renamed):
    """Append ``ofi_1 .. ofi_N``: the multi-level order-flow imbalance of Xu, Gould & Howison
    (2018), the Cont–Kukanov–Stoikov OFI of each of the top ``n_levels`` levels, level m from
    ``bid_price_m``, ``ask_price_m``, ``bid_size_m``, ``ask_size_m`` (the book records'
    columns).  Per key, one :class:`OFI` per level (state carried across batches inside a
    Stream operator, so any batching gives the same values): a key's first row is null, and a
    row where level m is missing is null in ``ofi_m`` and leaves that level's state as it was.
    ``ofi_1`` on the best levels equals :func:`ofi`."""
    if renamed:
        n_levels, by = _renamed("multi_level_ofi", renamed, dict(
            n_levels=n_levels, by=by)).values()
    n = check_positive_int("n_levels", n_levels)
    names = [f"ofi_{m}" for m in range(1, n + 1)]
    if not isinstance(batch, (pa.RecordBatch, pa.Table)):
        from .. import interop
        return interop.apply(lambda b: multi_level_ofi(b, n, by=by), batch, names,
                             what="multi_level_ofi input")
    out = batch
    saved = None                                      # a column called ``ofi`` already there
    if "ofi" in out.schema.names:
        saved = (out.schema.get_field_index("ofi"), out.column("ofi"))
        out = out.remove_column(saved[0])
    for m, name in enumerate(names, 1):
        out = call_kernel(OFI, out, bid_column=f"bid_price_{m}", ask_column=f"ask_price_{m}",
                          bid_size_column=f"bid_size_{m}", ask_size_column=f"ask_size_{m}",
                          by=by)
        if name in out.schema.names:                  # computed again: replaced in place
            out = out.set_column(out.schema.get_field_index(name), name, out.column("ofi"))
            out = out.remove_column(out.schema.get_field_index("ofi"))
        else:
            out = out.rename_columns([name if c == "ofi" else c for c in out.schema.names])
    if saved is not None:
        out = out.add_column(saved[0], "ofi", saved[1])
    return out


def vpin(batch, bucket_vol=100000.0, n_buckets=50, *, volume_column="volume",
         side_column="side", by=None, **renamed):
    """Append ``vpin`` over the last ``n_buckets`` volume buckets of size ``bucket_vol``."""
    if renamed:
        bound = _renamed("vpin", renamed, dict(
            bucket_vol=bucket_vol, n_buckets=n_buckets, volume_column=volume_column,
            side_column=side_column, by=by)).values()
        bucket_vol, n_buckets, volume_column, side_column, by = bound
    return call_kernel(VPIN, batch, bucket_vol=bucket_vol, n_buckets=n_buckets,
                       volume_column=volume_column, side_column=side_column, by=by)
