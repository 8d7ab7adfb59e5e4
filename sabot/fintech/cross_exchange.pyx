# cython: language_level=3
"""Cross-exchange kernels: the spread between two venues, and the best arbitrage across venues.

Venue names come from the price column names: the part before the last underscore
(``'coinbase_midprice'`` → ``'coinbase'``, ``'binance_us_mid'`` → ``'binance_us'``; a name with
no underscore is its own venue). Pass ``price_columns`` as a dict ``{venue: column}`` to name
the venues yourself.
"""
from libc.math cimport INFINITY
from libc.stdint cimport uint32_t

from ._kernel cimport (MAX_COLUMNS, Kernel, KernelIO, emit, emit_marked, input_present,
                      report_finite, set_null, valid_or_null)
from ._kernel import BOOL, LABEL, numeric_input, output
from ._naming import renamed as _renamed


cdef class CrossExchangeSpread(Kernel):
    """``spread_bps = (a − b)/a·1e4``: how far venue b trades below venue a, in bps of a.

    A price <= 0 makes the row null.
    """

    def __init__(self, a_column, b_column, **renamed):
        if renamed:
            bound = _renamed("cross_exchange_spread", renamed, dict(
                a_column=a_column, b_column=b_column)).values()
            a_column, b_column = bound
        self.declare("cross_exchange_spread",
                     [numeric_input("a_column", a_column), numeric_input("b_column", b_column)],
                     [output("spread_bps")], config=dict(a_column=a_column, b_column=b_column))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef double a, b
        cdef uint32_t marks = 0
        for i in range(io.n):
            a = io.x[0][i]
            b = io.x[1][i]
            marks |= emit_marked(io, 0, i, valid_or_null(
                io, i, (a - b) / a * 1e4, (a > 0.0) & (b > 0.0)))
        report_finite(io, 0, marks)


def cross_exchange_spread(batch, a_column, b_column, **renamed):
    """Append ``spread_bps`` = (a−b)/a·1e4."""
    if renamed:
        bound = _renamed("cross_exchange_spread", renamed, dict(
            a_column=a_column, b_column=b_column)).values()
        a_column, b_column = bound
    return CrossExchangeSpread(a_column, b_column)(batch)


def venue_name(column):
    """The venue a price column belongs to: the part before its last underscore."""
    head, sep, _ = column.rpartition("_")
    return head if sep and head else column


def _venues(price_columns):
    """(venue names, column names) from a list of columns or a ``{venue: column}`` dict."""
    if isinstance(price_columns, str):
        raise TypeError("price_columns must be a list of column names or a {venue: column} dict,"
                        f" got the string {price_columns!r}")
    if isinstance(price_columns, dict):
        venues = [str(v) for v in price_columns]
        columns = list(price_columns.values())
    else:
        columns = list(price_columns)
        venues = [venue_name(c) for c in columns]
    if not 2 <= len(columns) <= MAX_COLUMNS:
        raise ValueError(f"price_columns: need 2 to {MAX_COLUMNS} venues, got {len(columns)}")
    for name in venues:
        if venues.count(name) > 1:
            raise ValueError(f"price_columns: venue {name!r} appears twice ({columns}); "
                             "pass a {venue: column} dict to name the venues")
    if len(set(columns)) != len(columns):
        raise ValueError(f"price_columns: a column is repeated ({columns})")
    return venues, columns


def _fee(venue, value):
    v = float(value)
    if not (0.0 <= v < INFINITY):
        raise ValueError(f"fees_bps for venue {venue!r} must be a finite number >= 0, got {value!r}")
    return v


cdef class ArbitrageOpportunities(Kernel):
    """Best buy-here/sell-there pair across venues, net of both venues' taker fees.

    For every ordered pair of distinct venues (buy at b, sell at s), buying at b's buy price
    B_b and selling at s's sell price S_s::

        gross_bps = (S_s − B_b)/B_b·1e4
        net_bps   = gross_bps − fee_b − fee_s

    and the pair with the largest ``net_bps`` is reported with its ``buy_price``/``sell_price``
    (ties: the earlier buy venue, then the earlier sell venue, in column order; pairs are
    compared with 1e4/B_b precomputed, so edges equal to ~1e-12 relative count as ties).
    With ``price_columns`` one price (e.g. the mid) is both B and S; with ``ask_columns`` and
    ``bid_columns`` the buy is at the ask and the sell at the bid, as a taker trades.
    ``is_opportunity = net_bps >= min_edge_bps and net_bps > 0``.

    Per venue, a null, NaN or non-positive price means that venue is absent from the row; a
    row with fewer than two venues present gets null outputs.
    """
    cdef double fee[MAX_COLUMNS]
    cdef double min_edge
    cdef int n_venues
    cdef bint quotes                          # separate ask (buy) and bid (sell) columns
    cdef readonly tuple venues

    def __init__(self, price_columns=None, fees_bps=0.0, min_edge_bps=0.0, *, ask_columns=None,
                 bid_columns=None, **renamed):
        if renamed:
            bound = _renamed("arbitrage_opportunities", renamed, dict(
                price_columns=price_columns, fees_bps=fees_bps, min_edge_bps=min_edge_bps,
                ask_columns=ask_columns, bid_columns=bid_columns)).values()
            price_columns, fees_bps, min_edge_bps, ask_columns, bid_columns = bound
        if price_columns is not None and (ask_columns is not None or bid_columns is not None):
            raise ValueError("give price_columns, or ask_columns and bid_columns, not both")
        if price_columns is None:
            if ask_columns is None or bid_columns is None:
                raise ValueError("give price_columns, or both ask_columns and bid_columns")
            venues, asks = _venues(ask_columns)
            bid_venues, bids = _venues(bid_columns)
            if bid_venues != venues:
                raise ValueError(f"ask_columns venues {venues} and bid_columns venues "
                                 f"{bid_venues} differ")
            if 2 * len(venues) > MAX_COLUMNS:
                raise ValueError(f"ask/bid columns: at most {MAX_COLUMNS // 2} venues")
            inputs = ([numeric_input(f"ask_columns[{j}]", c) for j, c in enumerate(asks)] +
                      [numeric_input(f"bid_columns[{j}]", c) for j, c in enumerate(bids)])
            self.quotes = True
        else:
            venues, columns = _venues(price_columns)
            inputs = [numeric_input(f"price_columns[{j}]", c) for j, c in enumerate(columns)]
            self.quotes = False
        if isinstance(fees_bps, dict):
            missing = [v for v in venues if v not in fees_bps]
            if missing:
                raise KeyError(f"fees_bps has no fee for venue(s) {', '.join(map(repr, missing))};"
                               f" venues: {', '.join(venues)}")
            fees = [_fee(v, fees_bps[v]) for v in venues]
        else:
            fees = [_fee(v, fees_bps) for v in venues]
        edge = float(min_edge_bps)
        if edge != edge or edge in (INFINITY, -INFINITY):
            raise ValueError(f"min_edge_bps must be finite, got {min_edge_bps!r}")
        self.min_edge = edge
        self.n_venues = len(venues)
        self.venues = tuple(venues)
        for j, f in enumerate(fees):
            self.fee[j] = f
        self.declare("arbitrage_opportunities", inputs,
                     [output("buy_venue", LABEL, labels=venues),
                      output("sell_venue", LABEL, labels=venues),
                      output("gross_bps"), output("net_bps"), output("is_opportunity", BOOL),
                      output("buy_price"), output("sell_price")],
                     config=dict(price_columns=price_columns, fees_bps=fees_bps,
                                 min_edge_bps=min_edge_bps, ask_columns=ask_columns,
                                 bid_columns=bid_columns))

    cdef void run(self, KernelIO* io) noexcept nogil:
        cdef Py_ssize_t i
        cdef int b, s, k, nv = self.n_venues, n_ok, best, best_b, best_s
        cdef int sell_at = nv if self.quotes else 0   # index of the first sell-price input
        cdef bint better
        cdef double pb[MAX_COLUMNS]
        cdef double ps[MAX_COLUMNS]
        cdef bint ok[MAX_COLUMNS]
        cdef double net, best_net, best_gross, scale
        for i in range(io.n):
            n_ok = 0
            for k in range(nv):
                pb[k] = io.x[k][i]
                ps[k] = io.x[k + sell_at][i]
                ok[k] = (input_present(io, k, i) and input_present(io, k + sell_at, i)
                         and pb[k] > 0.0 and ps[k] > 0.0)     # NaN fails > 0
                n_ok += ok[k]
            if n_ok < 2:
                for k in range(7):
                    set_null(io, k, i)
                continue
            # branch-free scan of every ordered pair (the winner is unpredictable): strict >
            # keeps the first pair of the largest net edge
            best = -1
            best_net = -INFINITY
            for b in range(nv):
                scale = 1e4 / pb[b]                   # one division per buy venue
                for s in range(nv):
                    net = (ps[s] - pb[b]) * scale - (self.fee[b] + self.fee[s])  # symmetric: ties stay ties
                    net = net if (ok[b] & ok[s] & (s != b)) else -INFINITY
                    better = net > best_net
                    best_net = net if better else best_net
                    best = b * nv + s if better else best
            best_b = best // nv
            best_s = best % nv
            best_gross = (ps[best_s] - pb[best_b]) / pb[best_b] * 1e4
            best_net = best_gross - (self.fee[best_b] + self.fee[best_s])
            io.out[0][i] = best_b
            io.out[1][i] = best_s
            emit(io, 2, i, best_gross)
            emit(io, 3, i, best_net)
            io.out[4][i] = 1.0 if (best_net >= self.min_edge and best_net > 0.0) else 0.0
            io.out[5][i] = pb[best_b]
            io.out[6][i] = ps[best_s]


def arbitrage_opportunities(batch, price_columns=None, fees_bps=0.0, min_edge_bps=0.0, *,
                            ask_columns=None, bid_columns=None, **renamed):
    """Append ``buy_venue``, ``sell_venue``, ``gross_bps``, ``net_bps``, ``is_opportunity``,
    ``buy_price``, ``sell_price``.

    Prices: one column per venue (``price_columns``, e.g. mids), or ``ask_columns`` and
    ``bid_columns`` (buy at the ask, sell at the bid). ``fees_bps``: one taker fee for every
    venue, or a ``{venue: fee}`` dict (bps). See :class:`ArbitrageOpportunities`.
    """
    if renamed:
        bound = _renamed("arbitrage_opportunities", renamed, dict(
            price_columns=price_columns, fees_bps=fees_bps, min_edge_bps=min_edge_bps,
            ask_columns=ask_columns, bid_columns=bid_columns)).values()
        price_columns, fees_bps, min_edge_bps, ask_columns, bid_columns = bound
    return ArbitrageOpportunities(price_columns, fees_bps, min_edge_bps,
                                  ask_columns=ask_columns, bid_columns=bid_columns)(batch)
