# cython: language_level=3
"""FX and crypto-derivatives kernels: triangular arbitrage, forwards/CIP, carry, funding, basis.

Conventions shared by this module:

* Rates (``r_dom``, ``r_for``) are continuously compounded, per year; ``funding_rate`` is the
  rate paid per funding interval (e.g. 0.0001 = 1 bp per 8 h).
* A row with a null or NaN input gets null outputs (the kernel null rule); prices that must be positive
  (spot, forward, perp) make the row null when they are <= 0, since the formulas divide by them
  or take their logarithm.
* Every kernel is a :class:`Kernel`; only :class:`OpenInterestDelta` keeps state.
"""
from libc.math cimport INFINITY, NAN, expm1, log
from libc.stdint cimport uint8_t, uint32_t

from ._kernel cimport (Kernel, KernelIO, emit, emit_marked, key_state, non_finite_mark, present,
                      report_finite, set_null, valid_or_null)
from ._simd cimport avx2_active, avx2_void
from ._kernel import LABEL, numeric_input, output
from ._columns import check_positive
from ._scope import call_kernel
from ._naming import renamed as _renamed

#: Labels of ``arb_route``: the forward cycle, the reverse cycle, and no profitable cycle.
ARB_ROUTES = ("AB->BC->CA", "AC->CB->BA", "none")


def _check_fee(name, value):
    """A fee in bps: finite and >= 0; ``None`` means no fee."""
    if value is None:
        return 0.0
    v = float(value)
    if not (0.0 <= v < INFINITY):
        raise ValueError(f"{name} must be a finite number >= 0 (bps), got {value!r}")
    return v


def _schema(batch):
    return batch.schema


# ------------------------------------------------------------------------------ triangular


cdef class TriangularArbitrage(Kernel):
    """Edge of the better of the two triangular cycles, in bps net of fees.

    With ``ab`` = price of A in B, ``bc`` = price of B in C and ``ac`` = price of A in C:

    * forward ``AB->BC->CA`` (sell A for B, B for C, buy A back with C):
      ``fwd = (ab·bc/ac − 1)·1e4 − fees``
    * reverse ``AC->CB->BA``: ``rev = (ac/(ab·bc) − 1)·1e4 − fees``

    ``arb_edge_bps = max(fwd, rev)`` (it may be negative: the best the triangle offers);
    ``arb_route`` names that cycle when its edge is > 0 after fees, else ``'none'``. Equal
    edges pick the forward cycle. ``fees`` is the total cost of the three legs in bps, read
    from ``fees_column`` when given (per row), else the ``fees_bps`` parameter (None → 0).
    A rate <= 0 makes the row null.
    """
    cdef double fees
    cdef bint fee_column

    def __init__(self, fees_bps=None, *, ab_column="spot_ab", bc_column="spot_bc",
                 ac_column="spot_ac", fees_column=None, **renamed):
        if renamed:
            bound = _renamed("triangular_arbitrage", renamed, dict(
                fees_bps=fees_bps, ab_column=ab_column, bc_column=bc_column, ac_column=ac_column,
                fees_column=fees_column)).values()
            fees_bps, ab_column, bc_column, ac_column, fees_column = bound
        self.fees = _check_fee("fees_bps", fees_bps)
        self.fee_column = fees_column is not None
        inputs = [numeric_input("ab_column", ab_column), numeric_input("bc_column", bc_column),
                  numeric_input("ac_column", ac_column)]
        if fees_column is not None:
            inputs.append(numeric_input("fees_column", fees_column))
        self.declare("triangular_arbitrage", inputs,
                     [output("arb_edge_bps"), output("arb_route", LABEL, labels=ARB_ROUTES)],
                     config=dict(fees_bps=fees_bps, ab_column=ab_column, bc_column=bc_column,
                                 ac_column=ac_column, fees_column=fees_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        if avx2_active():
            triangular_rows_avx2(io, self.fees, self.fee_column)
        else:
            triangular_rows(io, self.fees, self.fee_column)


cdef inline void triangular_rows(KernelIO* io, double fees, bint per_row_fee) noexcept nogil:
    """The loop of :class:`TriangularArbitrage` (dispatched, see ``_simd.pxd``); branch-free
    (the better cycle is a coin flip), so it vectorises: two divisions per row.  The columns
    are local pointers: with two outputs, a store through ``io.out`` could otherwise change
    ``io`` itself as far as the compiler knows, and the loop would not vectorise."""
    cdef Py_ssize_t i
    cdef const double* x_ab = io.x[0]
    cdef const double* x_bc = io.x[1]
    cdef const double* x_ac = io.x[2]
    cdef const double* x_fee = io.x[3] if per_row_fee else NULL
    cdef const uint8_t* ok = io.ok
    cdef double* edge = io.out[0]
    cdef double* route = io.out[1]
    cdef double ab, bc, ac, fee, q, fwd, rev, best, which
    cdef bint defined, undefined = False
    cdef uint32_t marks = 0
    for i in range(io.n):
        ab = x_ab[i]
        bc = x_bc[i]
        ac = x_ac[i]
        fee = x_fee[i] if per_row_fee else fees
        defined = (ab > 0.0) & (bc > 0.0) & (ac > 0.0) & (fee == fee)
        if ok != NULL:
            defined = defined & (ok[i] != 0)
        q = ab * bc
        fwd = (q / ac - 1.0) * 1e4 - fee
        rev = (ac / q - 1.0) * 1e4 - fee
        best = rev if fwd < rev else fwd
        which = (1.0 if fwd < rev else 0.0) if best > 0.0 else 2.0     # index in ARB_ROUTES
        marks |= non_finite_mark(best)
        undefined |= not defined          # (kept apart: a mark per select does not vectorise)
        edge[i] = best if defined else NAN
        route[i] = which if defined else NAN
    if undefined:
        marks |= non_finite_mark(NAN)
    report_finite(io, 0, marks)
    report_finite(io, 1, marks)           # the route is null only where the edge is null


cdef avx2_void triangular_rows_avx2(KernelIO* io, double fees, bint per_row_fee) noexcept nogil:
    triangular_rows(io, fees, per_row_fee)


def triangular_arbitrage(batch, fees_bps=None, *, ab_column="spot_ab", bc_column="spot_bc",
                         ac_column="spot_ac", **renamed):
    """Append ``arb_edge_bps`` and ``arb_route`` (see :class:`TriangularArbitrage`).

    Fees: the batch's ``fees_bps`` column when present (per row), else the ``fees_bps``
    parameter (None → 0), as the total cost of the cycle in bps.
    """
    if renamed:
        bound = _renamed("triangular_arbitrage", renamed, dict(
            fees_bps=fees_bps, ab_column=ab_column, bc_column=bc_column,
            ac_column=ac_column)).values()
        fees_bps, ab_column, bc_column, ac_column = bound
    fees_column = "fees_bps" if "fees_bps" in _schema(batch).names else None
    return TriangularArbitrage(fees_bps, ab_column=ab_column, bc_column=bc_column,
                               ac_column=ac_column, fees_column=fees_column)(batch)


# ------------------------------------------------------------------------------ FX


cdef class ForwardPoints(Kernel):
    """``forward_points = S·(exp((r_d − r_f)·T) − 1)`` (covered interest parity forward − spot).

    Computed with ``expm1`` so small rate differentials keep full precision.
    """
    cdef double T

    def __init__(self, T_years=1.0, *, spot_column="spot", r_dom_column="r_dom",
                 r_for_column="r_for", **renamed):
        if renamed:
            bound = _renamed("forward_points", renamed, dict(
                T_years=T_years, spot_column=spot_column, r_dom_column=r_dom_column,
                r_for_column=r_for_column)).values()
            T_years, spot_column, r_dom_column, r_for_column = bound
        self.T = check_positive("T_years", T_years)
        self.declare("forward_points",
                     [numeric_input("spot_column", spot_column),
                      numeric_input("r_dom_column", r_dom_column),
                      numeric_input("r_for_column", r_for_column)],
                     [output("forward_points")],
                     config=dict(T_years=T_years, spot_column=spot_column,
                                 r_dom_column=r_dom_column, r_for_column=r_for_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double s
        for i in range(io.n):
            s = io.x[0][i]
            if not present(io, i) or not s > 0.0:
                set_null(io, 0, i)
                continue
            emit(io, 0, i, s * expm1((io.x[1][i] - io.x[2][i]) * self.T))


def forward_points(batch, T_years=1.0, *, spot_column="spot", r_dom_column="r_dom",
                   r_for_column="r_for", **renamed):
    """Append ``forward_points`` = S·(exp((r_d−r_f)T)−1)."""
    if renamed:
        bound = _renamed("forward_points", renamed, dict(
            T_years=T_years, spot_column=spot_column, r_dom_column=r_dom_column,
            r_for_column=r_for_column)).values()
        T_years, spot_column, r_dom_column, r_for_column = bound
    return ForwardPoints(T_years, spot_column=spot_column, r_dom_column=r_dom_column,
                         r_for_column=r_for_column)(batch)


cdef class CIPBasis(Kernel):
    """Covered-interest-parity basis in bps: ``(ln(F/S)/T − (r_d − r_f))·1e4``.

    Zero when the forward is priced at parity F = S·exp((r_d − r_f)T); S or F <= 0 → null.
    """
    cdef double T

    def __init__(self, T_years=1.0, *, spot_column="spot", forward_column="forward",
                 r_dom_column="r_dom", r_for_column="r_for", **renamed):
        if renamed:
            bound = _renamed("cip_basis", renamed, dict(
                T_years=T_years, spot_column=spot_column, forward_column=forward_column,
                r_dom_column=r_dom_column, r_for_column=r_for_column)).values()
            T_years, spot_column, forward_column, r_dom_column, r_for_column = bound
        self.T = check_positive("T_years", T_years)
        self.declare("cip_basis",
                     [numeric_input("spot_column", spot_column),
                      numeric_input("forward_column", forward_column),
                      numeric_input("r_dom_column", r_dom_column),
                      numeric_input("r_for_column", r_for_column)],
                     [output("cip_basis")],
                     config=dict(T_years=T_years, spot_column=spot_column,
                                 forward_column=forward_column, r_dom_column=r_dom_column,
                                 r_for_column=r_for_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double s, f
        for i in range(io.n):
            s = io.x[0][i]
            f = io.x[1][i]
            if not present(io, i) or not (s > 0.0 and f > 0.0):
                set_null(io, 0, i)
                continue
            emit(io, 0, i, (log(f / s) / self.T - (io.x[2][i] - io.x[3][i])) * 1e4)


def cip_basis(batch, T_years=1.0, *, spot_column="spot", forward_column="forward",
              r_dom_column="r_dom", r_for_column="r_for", **renamed):
    """Append ``cip_basis`` = (ln(F/S)/T − (r_d−r_f))·1e4 (bps)."""
    if renamed:
        bound = _renamed("cip_basis", renamed, dict(
            T_years=T_years, spot_column=spot_column, forward_column=forward_column,
            r_dom_column=r_dom_column, r_for_column=r_for_column)).values()
        T_years, spot_column, forward_column, r_dom_column, r_for_column = bound
    return CIPBasis(T_years, spot_column=spot_column, forward_column=forward_column,
                    r_dom_column=r_dom_column, r_for_column=r_for_column)(batch)


cdef class CarrySignal(Kernel):
    """Carry ``r_d − r_f``, risk-adjusted to ``(r_d − r_f)/(vol·k)`` when a volatility column is read.

    ``k`` = ``risk_adj_factor``. A volatility <= 0 makes the row null.
    """
    cdef double k
    cdef bint use_vol

    def __init__(self, risk_adj_factor=1.0, *, r_dom_column="r_dom", r_for_column="r_for",
                 volatility_column=None, **renamed):
        if renamed:
            bound = _renamed("carry_signal", renamed, dict(
                risk_adj_factor=risk_adj_factor, r_dom_column=r_dom_column,
                r_for_column=r_for_column, volatility_column=volatility_column)).values()
            risk_adj_factor, r_dom_column, r_for_column, volatility_column = bound
        self.k = check_positive("risk_adj_factor", risk_adj_factor)
        self.use_vol = volatility_column is not None
        inputs = [numeric_input("r_dom_column", r_dom_column),
                  numeric_input("r_for_column", r_for_column)]
        if volatility_column is not None:
            inputs.append(numeric_input("volatility_column", volatility_column))
        self.declare("carry_signal", inputs, [output("carry_signal")],
                     config=dict(risk_adj_factor=risk_adj_factor, r_dom_column=r_dom_column,
                                 r_for_column=r_for_column, volatility_column=volatility_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double carry, vol
        for i in range(io.n):
            if not present(io, i):
                set_null(io, 0, i)
                continue
            carry = io.x[0][i] - io.x[1][i]
            if self.use_vol:
                vol = io.x[2][i]
                if not vol > 0.0:
                    set_null(io, 0, i)
                    continue
                carry = carry / (vol * self.k)
            emit(io, 0, i, carry)


def carry_signal(batch, risk_adj_factor=1.0, *, r_dom_column="r_dom", r_for_column="r_for",
                 volatility_column="volatility", **renamed):
    """Append ``carry_signal``: (r_d−r_f)/(vol·k) when ``volatility_column`` is in the batch, else r_d−r_f."""
    if renamed:
        bound = _renamed("carry_signal", renamed, dict(
            risk_adj_factor=risk_adj_factor, r_dom_column=r_dom_column, r_for_column=r_for_column,
            volatility_column=volatility_column)).values()
        risk_adj_factor, r_dom_column, r_for_column, volatility_column = bound
    vol = volatility_column if volatility_column in _schema(batch).names else None
    return CarrySignal(risk_adj_factor, r_dom_column=r_dom_column, r_for_column=r_for_column,
                       volatility_column=vol)(batch)


# ------------------------------------------------------------------------------ perpetuals


cdef class FundingAPR(Kernel):
    """``funding_apr = rate·(24/h)·365``: a per-interval funding rate as a simple annual rate."""
    cdef double per_year

    def __init__(self, funding_freq_hours=8.0, *, funding_rate_column="funding_rate", **renamed):
        if renamed:
            bound = _renamed("funding_apr", renamed, dict(
                funding_freq_hours=funding_freq_hours,
                funding_rate_column=funding_rate_column)).values()
            funding_freq_hours, funding_rate_column = bound
        self.per_year = 24.0 / check_positive("funding_freq_hours", funding_freq_hours) * 365.0
        self.declare("funding_apr", [numeric_input("funding_rate_column", funding_rate_column)],
                     [output("funding_apr")],
                     config=dict(funding_freq_hours=funding_freq_hours,
                                 funding_rate_column=funding_rate_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double per_year = self.per_year
        cdef uint32_t marks = 0
        for i in range(io.n):
            marks |= emit_marked(io, 0, i, valid_or_null(io, i, io.x[0][i] * per_year, True))
        report_finite(io, 0, marks)


def funding_apr(batch, funding_freq_hours=8.0, *, funding_rate_column="funding_rate", **renamed):
    """Append ``funding_apr`` = rate·(24/h)·365."""
    if renamed:
        bound = _renamed("funding_apr", renamed, dict(
            funding_freq_hours=funding_freq_hours,
            funding_rate_column=funding_rate_column)).values()
        funding_freq_hours, funding_rate_column = bound
    return FundingAPR(funding_freq_hours, funding_rate_column=funding_rate_column)(batch)


cdef class FundingCost(Kernel):
    """``funding_cost = position·price·rate``: paid by a long (received when negative), per interval."""

    def __init__(self, *, position_column="position", price_column="price",
                 funding_rate_column="funding_rate", **renamed):
        if renamed:
            bound = _renamed("funding_cost", renamed, dict(
                position_column=position_column, price_column=price_column,
                funding_rate_column=funding_rate_column)).values()
            position_column, price_column, funding_rate_column = bound
        self.declare("funding_cost",
                     [numeric_input("position_column", position_column),
                      numeric_input("price_column", price_column),
                      numeric_input("funding_rate_column", funding_rate_column)],
                     [output("funding_cost")],
                     config=dict(position_column=position_column, price_column=price_column,
                                 funding_rate_column=funding_rate_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef uint32_t marks = 0
        for i in range(io.n):
            marks |= emit_marked(io, 0, i, valid_or_null(
                io, i, io.x[0][i] * io.x[1][i] * io.x[2][i], True))
        report_finite(io, 0, marks)


def funding_cost(batch, *, position_column="position", price_column="price",
                 funding_rate_column="funding_rate", **renamed):
    """Append ``funding_cost`` = position·price·rate."""
    if renamed:
        bound = _renamed("funding_cost", renamed, dict(
            position_column=position_column, price_column=price_column,
            funding_rate_column=funding_rate_column)).values()
        position_column, price_column, funding_rate_column = bound
    return FundingCost(position_column=position_column, price_column=price_column,
                       funding_rate_column=funding_rate_column)(batch)


cdef class BasisAnnualized(Kernel):
    """``basis_apr = (perp/spot − 1)·365/T_days`` (simple annualisation over ``T_days``)."""
    cdef double per_year

    def __init__(self, T_days=90.0, *, perp_column="perp_price", spot_column="spot_price",
                 **renamed):
        if renamed:
            bound = _renamed("basis_annualized", renamed, dict(
                T_days=T_days, perp_column=perp_column, spot_column=spot_column)).values()
            T_days, perp_column, spot_column = bound
        self.per_year = 365.0 / check_positive("T_days", T_days)
        self.declare("basis_annualized",
                     [numeric_input("perp_column", perp_column),
                      numeric_input("spot_column", spot_column)],
                     [output("basis_apr")],
                     config=dict(T_days=T_days, perp_column=perp_column, spot_column=spot_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double perp, spot, per_year = self.per_year
        cdef uint32_t marks = 0
        for i in range(io.n):
            perp = io.x[0][i]
            spot = io.x[1][i]
            marks |= emit_marked(io, 0, i, valid_or_null(
                io, i, (perp / spot - 1.0) * per_year, (perp > 0.0) & (spot > 0.0)))
        report_finite(io, 0, marks)


def basis_annualized(batch, T_days=90.0, *, perp_column="perp_price", spot_column="spot_price",
                     **renamed):
    """Append ``basis_apr`` = (perp/spot−1)·365/T_days."""
    if renamed:
        bound = _renamed("basis_annualized", renamed, dict(
            T_days=T_days, perp_column=perp_column, spot_column=spot_column)).values()
        T_days, perp_column, spot_column = bound
    return BasisAnnualized(T_days, perp_column=perp_column, spot_column=spot_column)(batch)


cdef class OpenInterestDelta(Kernel):
    """``oi_delta = OI_t − OI_{t−1}`` per key, carried across batches; first row of a key null.

    Null/NaN rows are skipped (the next valid row differences against the last valid one).
    """

    def __init__(self, open_interest_column="open_interest", *, by=None, **renamed):
        if renamed:
            bound = _renamed("open_interest_delta", renamed, dict(
                open_interest_column=open_interest_column, by=by)).values()
            open_interest_column, by = bound
        self.declare("open_interest_delta",
                     [numeric_input("open_interest_column", open_interest_column)],
                     [output("oi_delta")], stride=1, by=by,
                     config=dict(open_interest_column=open_interest_column))

    cdef void init_state(self, double* st) noexcept nogil:
        st[0] = NAN                                   # previous open interest

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double oi
        cdef double* st
        for i in range(io.n):
            oi = io.x[0][i]
            st = key_state(io, i)
            if not present(io, i) or oi != oi:
                set_null(io, 0, i)
                continue
            emit(io, 0, i, oi - st[0])                # NaN (no previous) -> null
            st[0] = oi


def open_interest_delta(batch, open_interest_column="open_interest", *, by=None, **renamed):
    """Append ``oi_delta`` = OI_t − OI_{t−1} per key (stateful inside a Stream operator)."""
    if renamed:
        bound = _renamed("open_interest_delta", renamed, dict(
            open_interest_column=open_interest_column, by=by)).values()
        open_interest_column, by = bound
    return call_kernel(OpenInterestDelta, batch, open_interest_column=open_interest_column, by=by)


cdef class PerpFairPrice(Kernel):
    """``perp_fair_price = spot·(1 + rate)``: spot carried over one funding interval.

    ``rate`` is the funding rate per interval, so ``funding_freq_hours`` (the interval length)
    does not enter the formula; it is validated and kept so code written for the original Sabot API runs unchanged.
    """

    def __init__(self, funding_freq_hours=8.0, *, spot_column="spot_price",
                 funding_rate_column="funding_rate", **renamed):
        if renamed:
            bound = _renamed("perp_fair_price", renamed, dict(
                funding_freq_hours=funding_freq_hours, spot_column=spot_column,
                funding_rate_column=funding_rate_column)).values()
            funding_freq_hours, spot_column, funding_rate_column = bound
        check_positive("funding_freq_hours", funding_freq_hours)
        self.declare("perp_fair_price",
                     [numeric_input("spot_column", spot_column),
                      numeric_input("funding_rate_column", funding_rate_column)],
                     [output("perp_fair_price")],
                     config=dict(funding_freq_hours=funding_freq_hours, spot_column=spot_column,
                                 funding_rate_column=funding_rate_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(io.n):
            if not present(io, i):
                set_null(io, 0, i)
            else:
                emit(io, 0, i, io.x[0][i] * (1.0 + io.x[1][i]))


def perp_fair_price(batch, funding_freq_hours=8.0, *, spot_column="spot_price",
                    funding_rate_column="funding_rate", **renamed):
    """Append ``perp_fair_price`` = spot·(1+rate)."""
    if renamed:
        bound = _renamed("perp_fair_price", renamed, dict(
            funding_freq_hours=funding_freq_hours, spot_column=spot_column,
            funding_rate_column=funding_rate_column)).values()
        funding_freq_hours, spot_column, funding_rate_column = bound
    return PerpFairPrice(funding_freq_hours, spot_column=spot_column,
                         funding_rate_column=funding_rate_column)(batch)


cdef class CashAndCarryEdge(Kernel):
    """Annualised edge of long spot / short perp, in bps::

        carry_edge_bps = 1e4·[(perp/spot − 1)·365/T_days + rate·(24/h)·365] − fees_bps·365/T_days

    i.e. ``basis_apr`` (the basis earned by convergence over a holding period of ``T_days``) plus
    ``funding_apr`` (funding received by the short perp), minus the round-trip fees
    ``fees_bps`` paid once over the holding period and annualised the same way. Both terms
    follow :class:`BasisAnnualized` and :class:`FundingAPR`. spot or perp <= 0 → null.
    """
    cdef double basis_per_year, funding_per_year, fee_per_year

    def __init__(self, fees_bps=0.0, *, T_days=90.0, funding_freq_hours=8.0,
                 spot_column="spot_price", perp_column="perp_price",
                 funding_rate_column="funding_rate", **renamed):
        if renamed:
            bound = _renamed("cash_and_carry_edge", renamed, dict(
                fees_bps=fees_bps, T_days=T_days, funding_freq_hours=funding_freq_hours,
                spot_column=spot_column, perp_column=perp_column,
                funding_rate_column=funding_rate_column)).values()
            fees_bps, T_days, funding_freq_hours, spot_column, perp_column,
            funding_rate_column = bound
        fee = _check_fee("fees_bps", fees_bps)
        self.basis_per_year = 365.0 / check_positive("T_days", T_days)
        self.funding_per_year = 24.0 / check_positive("funding_freq_hours",
                                                      funding_freq_hours) * 365.0
        self.fee_per_year = fee * self.basis_per_year
        self.declare("cash_and_carry_edge",
                     [numeric_input("spot_column", spot_column),
                      numeric_input("perp_column", perp_column),
                      numeric_input("funding_rate_column", funding_rate_column)],
                     [output("carry_edge_bps")],
                     config=dict(fees_bps=fees_bps, T_days=T_days,
                                 funding_freq_hours=funding_freq_hours, spot_column=spot_column,
                                 perp_column=perp_column, funding_rate_column=funding_rate_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double spot, perp
        for i in range(io.n):
            spot = io.x[0][i]
            perp = io.x[1][i]
            if not present(io, i) or not (spot > 0.0 and perp > 0.0):
                set_null(io, 0, i)
                continue
            emit(io, 0, i, ((perp / spot - 1.0) * self.basis_per_year
                            + io.x[2][i] * self.funding_per_year) * 1e4 - self.fee_per_year)


def cash_and_carry_edge(batch, fees_bps=0.0, *, T_days=90.0, funding_freq_hours=8.0,
                        spot_column="spot_price", perp_column="perp_price",
                        funding_rate_column="funding_rate", **renamed):
    """Append ``carry_edge_bps`` (annualised, bps; see :class:`CashAndCarryEdge`)."""
    if renamed:
        bound = _renamed("cash_and_carry_edge", renamed, dict(
            fees_bps=fees_bps, T_days=T_days, funding_freq_hours=funding_freq_hours,
            spot_column=spot_column, perp_column=perp_column,
            funding_rate_column=funding_rate_column)).values()
        fees_bps, T_days, funding_freq_hours, spot_column, perp_column, funding_rate_column = bound
    return CashAndCarryEdge(fees_bps, T_days=T_days, funding_freq_hours=funding_freq_hours,
                            spot_column=spot_column, perp_column=perp_column,
                            funding_rate_column=funding_rate_column)(batch)
