# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled L2 order book: fixed-point price levels in sorted C arrays.

Prices and sizes are held as ``int64`` fixed-point numbers (``value * 10**decimals``), so a level
is two machine integers, lookups are a binary search and inserts/deletes one ``memmove``: no
Python object exists per level.  Keeping the venue's own decimal scale makes the exchange's
decimal strings round-trip exactly, which is what Kraken's CRC32 checksum needs
(``str(fixed_point)`` is the price with the dot removed and leading zeros stripped).

Both sides are stored best-first: asks ascending by price, bids descending (kept as ascending
negated keys).  Typical books have 10-1000 levels per side; arrays beat trees at that size.

The module also holds the byte-level scanner for Kraken's ``book`` frames (parse + apply +
checksum without building Python dicts), used by :class:`sabot.book.venues.KrakenBooks`.
"""
from libc.stdint cimport int64_t, uint32_t, uint8_t, INT64_MAX
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memmove, memcpy
from libc.math cimport NAN
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize

import numpy as np

cdef int MAX_DECIMALS = 18

cdef int64_t POW10[19]
cdef double INV_POW10[19]
cdef int _k
POW10[0] = 1
INV_POW10[0] = 1.0
for _k in range(1, 19):
    POW10[_k] = POW10[_k - 1] * 10
    INV_POW10[_k] = 1.0 / <double>POW10[_k]

# CRC-32 (IEEE 802.3, the zlib polynomial), slicing-by-8 tables.
cdef uint32_t CRC_TABLE[8][256]
cdef uint32_t _c
cdef int _i, _j
for _i in range(256):
    _c = <uint32_t>_i
    for _j in range(8):
        if _c & 1:
            _c = 0xEDB88320 ^ (_c >> 1)
        else:
            _c = _c >> 1
    CRC_TABLE[0][_i] = _c
for _i in range(256):
    for _j in range(1, 8):
        CRC_TABLE[_j][_i] = (CRC_TABLE[_j - 1][_i] >> 8) ^ CRC_TABLE[0][CRC_TABLE[_j - 1][_i] & 0xFF]

# "00".."99": two decimal digits per table entry
cdef char DIGIT_PAIRS[200]
for _i in range(100):
    DIGIT_PAIRS[2 * _i] = <char>(48 + _i // 10)
    DIGIT_PAIRS[2 * _i + 1] = <char>(48 + _i % 10)

BID = 0
ASK = 1


class BookError(ValueError):
    """A book message or value that cannot be applied (names the field and the value)."""


cdef inline uint32_t _crc_update(uint32_t crc, const char* buf, Py_ssize_t n) noexcept nogil:
    cdef const uint8_t* p = <const uint8_t*>buf
    cdef uint32_t one, two
    while n >= 8:
        one = crc ^ (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24))
        two = <uint32_t>p[4] | (<uint32_t>p[5] << 8) | (<uint32_t>p[6] << 16) | (<uint32_t>p[7] << 24)
        crc = (CRC_TABLE[7][one & 0xFF] ^ CRC_TABLE[6][(one >> 8) & 0xFF]
               ^ CRC_TABLE[5][(one >> 16) & 0xFF] ^ CRC_TABLE[4][one >> 24]
               ^ CRC_TABLE[3][two & 0xFF] ^ CRC_TABLE[2][(two >> 8) & 0xFF]
               ^ CRC_TABLE[1][(two >> 16) & 0xFF] ^ CRC_TABLE[0][two >> 24])
        p += 8
        n -= 8
    while n > 0:
        crc = CRC_TABLE[0][(crc ^ p[0]) & 0xFF] ^ (crc >> 8)
        p += 1
        n -= 1
    return crc


cdef inline int _utoa(int64_t v, char* out) noexcept nogil:
    """Decimal digits of v >= 0 into out (no terminator); returns the length ("0" for zero)."""
    cdef char tmp[24]
    cdef int pos = 24, r
    if v == 0:
        out[0] = 48
        return 1
    while v >= 100:
        r = <int>(v % 100)
        v //= 100
        pos -= 2
        tmp[pos] = DIGIT_PAIRS[2 * r]
        tmp[pos + 1] = DIGIT_PAIRS[2 * r + 1]
    if v >= 10:
        pos -= 2
        tmp[pos] = DIGIT_PAIRS[2 * v]
        tmp[pos + 1] = DIGIT_PAIRS[2 * v + 1]
    else:
        pos -= 1
        tmp[pos] = <char>(48 + v)
    memcpy(out, tmp + pos, 24 - pos)
    return 24 - pos


cdef int parse_fixed(const char* s, Py_ssize_t n, int decimals, int64_t* out) noexcept nogil:
    """Parse an unsigned decimal literal into fixed point at ``decimals``.

    Returns 0 on success, -1 if the text is not a plain decimal (sign, exponent, junk, empty),
    -2 if it has non-zero digits beyond ``decimals``, -3 if it does not fit in int64.
    """
    cdef Py_ssize_t i = 0
    cdef int64_t v = 0
    cdef int frac = 0, digits = 0, seen_dot = 0
    cdef char ch
    if n <= 0:
        return -1
    while i < n:
        ch = s[i]
        if ch >= 48 and ch <= 57:
            if seen_dot:
                if frac >= decimals:
                    if ch != 48:
                        return -2
                    i += 1
                    continue
                frac += 1
            if v > (INT64_MAX - (ch - 48)) // 10:
                return -3
            v = v * 10 + (ch - 48)
            digits += 1
        elif ch == 46 and not seen_dot:
            seen_dot = 1
        else:
            return -1
        i += 1
    if digits == 0:
        return -1
    if frac < decimals:
        if v > 0 and v > INT64_MAX // POW10[decimals - frac]:
            return -3
        v = v * POW10[decimals - frac]
    out[0] = v
    return 0


cdef inline int count_decimals(const char* s, Py_ssize_t n) noexcept nogil:
    """Number of digits after the '.' in a decimal literal (0 if none)."""
    cdef Py_ssize_t i
    for i in range(n):
        if s[i] == 46:
            return <int>(n - i - 1)
    return 0


cdef str _fmt_fixed(int64_t v, int decimals):
    """Fixed point back to its decimal string with exactly ``decimals`` fraction digits."""
    if decimals == 0:
        return str(v)
    cdef str digits = str(v).rjust(decimals + 1, "0")
    return digits[:-decimals] + "." + digits[-decimals:]


cdef object _parse_error(str field, object value, int code, int decimals):
    if code == -2:
        return BookError(f"{field} {value!r} has more than {decimals} decimals (the book's scale)")
    if code == -3:
        return BookError(f"{field} {value!r} is too large for the book's scale ({decimals} decimals)")
    return BookError(f"{field} {value!r} is not a plain non-negative decimal number")


cdef class Book:
    """One symbol's L2 book: price levels per side, best first, in fixed point.

    ``price_decimals``/``qty_decimals`` fix the scale (the venue's tick and lot precision, or
    any scale at least as fine).  ``max_depth`` (0 = unlimited) truncates each side after every
    applied message, as venues with a subscribed depth require.
    """
    cdef int64_t* keys[2]
    cdef int64_t* qtys[2]
    cdef Py_ssize_t n[2]
    cdef Py_ssize_t cap[2]
    cdef readonly int price_decimals
    cdef readonly int qty_decimals
    cdef readonly Py_ssize_t max_depth
    cdef double pscale, qscale

    def __cinit__(self, int price_decimals=10, int qty_decimals=8, Py_ssize_t max_depth=0):
        cdef int s
        if price_decimals < 0 or price_decimals > MAX_DECIMALS:
            raise BookError(f"price_decimals {price_decimals!r} must be within 0..{MAX_DECIMALS}")
        if qty_decimals < 0 or qty_decimals > MAX_DECIMALS:
            raise BookError(f"qty_decimals {qty_decimals!r} must be within 0..{MAX_DECIMALS}")
        if max_depth < 0:
            raise BookError(f"max_depth {max_depth!r} must be >= 0")
        self.price_decimals = price_decimals
        self.qty_decimals = qty_decimals
        self.max_depth = max_depth
        self.pscale = <double>POW10[price_decimals]
        self.qscale = <double>POW10[qty_decimals]
        for s in range(2):
            self.cap[s] = 64
            self.n[s] = 0
            self.keys[s] = <int64_t*>malloc(64 * sizeof(int64_t))
            self.qtys[s] = <int64_t*>malloc(64 * sizeof(int64_t))
            if self.keys[s] == NULL or self.qtys[s] == NULL:
                raise MemoryError()

    def __dealloc__(self):
        cdef int s
        for s in range(2):
            free(self.keys[s])
            free(self.qtys[s])

    # ---------------------------------------------------------------- core (C level)
    cdef int _grow(self, int side) except -1:
        cdef Py_ssize_t cap = self.cap[side] * 2
        cdef int64_t* k = <int64_t*>realloc(self.keys[side], cap * sizeof(int64_t))
        if k == NULL:
            raise MemoryError()
        self.keys[side] = k
        cdef int64_t* q = <int64_t*>realloc(self.qtys[side], cap * sizeof(int64_t))
        if q == NULL:
            raise MemoryError()
        self.qtys[side] = q
        self.cap[side] = cap
        return 0

    cdef inline Py_ssize_t _lower(self, int side, int64_t key) noexcept nogil:
        cdef Py_ssize_t lo = 0, hi = self.n[side], mid
        cdef int64_t* k = self.keys[side]
        while lo < hi:
            mid = (lo + hi) >> 1
            if k[mid] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef int set_fixed(self, int side, int64_t price, int64_t qty) except -1:
        """Set (qty > 0) or delete (qty == 0) the level at ``price`` on ``side``."""
        cdef int64_t key = -price if side == 0 else price
        cdef Py_ssize_t i = self._lower(side, key)
        cdef Py_ssize_t n = self.n[side]
        cdef int64_t* k = self.keys[side]
        cdef int64_t* q = self.qtys[side]
        if i < n and k[i] == key:
            if qty == 0:
                memmove(k + i, k + i + 1, (n - i - 1) * sizeof(int64_t))
                memmove(q + i, q + i + 1, (n - i - 1) * sizeof(int64_t))
                self.n[side] = n - 1
            else:
                q[i] = qty
            return 0
        if qty == 0:
            return 0
        if n == self.cap[side]:
            self._grow(side)
            k = self.keys[side]
            q = self.qtys[side]
        memmove(k + i + 1, k + i, (n - i) * sizeof(int64_t))
        memmove(q + i + 1, q + i, (n - i) * sizeof(int64_t))
        k[i] = key
        q[i] = qty
        self.n[side] = n + 1
        return 0

    cdef void _truncate(self, Py_ssize_t depth) noexcept nogil:
        if depth > 0:
            if self.n[0] > depth:
                self.n[0] = depth
            if self.n[1] > depth:
                self.n[1] = depth

    cdef int set_text(self, int side, const char* p, Py_ssize_t pn, const char* q, Py_ssize_t qn) except -1:
        cdef int64_t price, qty
        cdef int rc = parse_fixed(p, pn, self.price_decimals, &price)
        if rc != 0:
            raise _parse_error("price", p[:pn].decode("utf-8", "replace"), rc, self.price_decimals)
        rc = parse_fixed(q, qn, self.qty_decimals, &qty)
        if rc != 0:
            raise _parse_error("qty", q[:qn].decode("utf-8", "replace"), rc, self.qty_decimals)
        if price == 0 and qty != 0:
            raise BookError(f"price {p[:pn].decode('utf-8', 'replace')!r} must be > 0")
        return self.set_fixed(side, price, qty)

    cdef uint32_t checksum_top(self, Py_ssize_t levels) noexcept nogil:
        """Kraken's CRC32: top ``levels`` asks (low->high) then bids (high->low), price and
        qty as their decimal digits without '.' and leading zeros."""
        cdef uint32_t crc = <uint32_t>0xFFFFFFFFu
        cdef char buf[1024]
        cdef int m = 0, side, t
        cdef Py_ssize_t i, top
        for t in range(2):
            side = 1 - t
            top = self.n[side] if self.n[side] < levels else levels
            for i in range(top):
                if m > 1024 - 40:                 # flush (more than ~25 levels per side)
                    crc = _crc_update(crc, buf, m)
                    m = 0
                m += _utoa(-self.keys[side][i] if side == 0 else self.keys[side][i], buf + m)
                m += _utoa(self.qtys[side][i], buf + m)
        crc = _crc_update(crc, buf, m)
        return crc ^ <uint32_t>0xFFFFFFFFu

    # ---------------------------------------------------------------- Python API
    @staticmethod
    def side_code(side) -> int:
        """0 for bids ("bid", "bids", "buy", 0), 1 for asks ("ask", "asks", "offer", "sell", 1)."""
        if side in (0, "bid", "bids", "buy", "b"):
            return 0
        if side in (1, "ask", "asks", "offer", "sell", "a"):
            return 1
        raise BookError(f"side {side!r} is not a bid or ask side")

    def set(self, side, price, qty) -> None:
        """Set a level from decimal strings (or ints/floats via ``str``); qty 0 deletes it."""
        cdef int s = Book.side_code(side)
        cdef bytes pb = (price if isinstance(price, str) else repr(price)).encode()
        cdef bytes qb = (qty if isinstance(qty, str) else repr(qty)).encode()
        self.set_text(s, pb, len(pb), qb, len(qb))

    def delete(self, side, price) -> None:
        """Remove the level at ``price`` (a no-op if absent)."""
        self.set(side, price, "0")

    def set_fixed_point(self, side, int64_t price, int64_t qty) -> None:
        """Set a level from fixed-point integers at the book's scale; qty 0 deletes."""
        if price <= 0 or qty < 0:
            raise BookError(f"level price={price!r} qty={qty!r}: price must be > 0, qty >= 0")
        self.set_fixed(Book.side_code(side), price, qty)

    def apply_levels(self, side, levels) -> None:
        """Apply ``[[price, qty], ...]`` decimal-string pairs to one side (qty "0" deletes)."""
        cdef int s = Book.side_code(side)
        cdef const char* p
        cdef const char* q
        cdef Py_ssize_t pn, qn
        for level in levels:
            price = level[0]
            qty = level[1]
            if not isinstance(price, str) or not isinstance(qty, str):
                self.set(s, price, qty)
                continue
            p = PyUnicode_AsUTF8AndSize(price, &pn)
            q = PyUnicode_AsUTF8AndSize(qty, &qn)
            self.set_text(s, p, pn, q, qn)

    def clear(self) -> None:
        """Remove every level on both sides."""
        self.n[0] = 0
        self.n[1] = 0

    def snapshot(self, bids, asks) -> None:
        """Replace the whole book with ``bids`` and ``asks`` (``[[price, qty], ...]``)."""
        self.clear()
        self.apply_levels(0, bids)
        self.apply_levels(1, asks)
        self._truncate(self.max_depth)

    def truncate(self, Py_ssize_t depth=-1) -> None:
        """Keep the best ``depth`` levels per side (default: the book's ``max_depth``)."""
        self._truncate(self.max_depth if depth < 0 else depth)

    def __len__(self):
        return self.n[0] + self.n[1]

    @property
    def bid_levels(self) -> int:
        return self.n[0]

    @property
    def ask_levels(self) -> int:
        return self.n[1]

    def bbo(self):
        """``(bid, bid_size, ask, ask_size)`` as floats; NaN for an empty side."""
        cdef double b = NAN, bs = NAN, a = NAN, az = NAN
        if self.n[0]:
            b = -self.keys[0][0] / self.pscale
            bs = self.qtys[0][0] / self.qscale
        if self.n[1]:
            a = self.keys[1][0] / self.pscale
            az = self.qtys[1][0] / self.qscale
        return (b, bs, a, az)

    def top(self, Py_ssize_t n):
        """Top ``n`` levels as four float64 arrays (bid px, bid qty, ask px, ask qty), best
        first, NaN-padded when a side has fewer than ``n`` levels."""
        out = np.full((4, n), np.nan)
        cdef double[:, ::1] o = out
        cdef Py_ssize_t i
        for i in range(min(n, self.n[0])):
            o[0, i] = -self.keys[0][i] / self.pscale
            o[1, i] = self.qtys[0][i] / self.qscale
        for i in range(min(n, self.n[1])):
            o[2, i] = self.keys[1][i] / self.pscale
            o[3, i] = self.qtys[1][i] / self.qscale
        return out[0], out[1], out[2], out[3]

    cdef void fill_top(self, Py_ssize_t n, double* out) noexcept nogil:
        """Top n into out[4*n] (bid px, bid qty, ask px, ask qty blocks), NaN padded."""
        cdef Py_ssize_t i
        for i in range(4 * n):
            out[i] = NAN
        for i in range(n if n < self.n[0] else self.n[0]):
            out[i] = -self.keys[0][i] / self.pscale
            out[n + i] = self.qtys[0][i] / self.qscale
        for i in range(n if n < self.n[1] else self.n[1]):
            out[2 * n + i] = self.keys[1][i] / self.pscale
            out[3 * n + i] = self.qtys[1][i] / self.qscale

    def levels(self, side, Py_ssize_t n=-1):
        """``[(price, qty), ...]`` best first as exact decimal strings at the book's scale."""
        cdef int s = Book.side_code(side)
        cdef Py_ssize_t i, top = self.n[s] if n < 0 or n > self.n[s] else n
        return [(_fmt_fixed(-self.keys[s][i] if s == 0 else self.keys[s][i], self.price_decimals),
                 _fmt_fixed(self.qtys[s][i], self.qty_decimals)) for i in range(top)]

    def levels_fixed(self, side):
        """``(prices, qtys)`` int64 arrays (fixed point) of one side, best first."""
        cdef int s = Book.side_code(side)
        cdef Py_ssize_t i, n = self.n[s]
        prices = np.empty(n, dtype=np.int64)
        qtys = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] pv = prices
        cdef int64_t[::1] qv = qtys
        for i in range(n):
            pv[i] = -self.keys[s][i] if s == 0 else self.keys[s][i]
            qv[i] = self.qtys[s][i]
        return prices, qtys

    def checksum(self, Py_ssize_t levels=10) -> int:
        """Kraken's book CRC32 over the top ``levels`` levels (10 on Kraken)."""
        return self.checksum_top(levels)

    def __eq__(self, other):
        if not isinstance(other, Book):
            return NotImplemented
        cdef Book o = <Book>other
        if (o.price_decimals, o.qty_decimals) != (self.price_decimals, self.qty_decimals):
            from decimal import Decimal           # different scales: compare the values
            return all([(Decimal(p), Decimal(q)) for p, q in self.levels(s)]
                       == [(Decimal(p), Decimal(q)) for p, q in o.levels(s)] for s in (0, 1))
        cdef int s
        cdef Py_ssize_t i
        for s in range(2):
            if self.n[s] != o.n[s]:
                return False
            for i in range(self.n[s]):
                if self.keys[s][i] != o.keys[s][i] or self.qtys[s][i] != o.qtys[s][i]:
                    return False
        return True

    def __repr__(self):
        b, bs, a, az = self.bbo()
        return f"Book(bids={self.n[0]}, asks={self.n[1]}, bbo={b}x{bs} / {a}x{az})"


# ==================================================================== Kraken frame scanner
#
# A minimal JSON scanner over the raw frame bytes: it finds keys wherever they are (never by
# position), keeps numbers as their original text (the checksum needs the exact digits), and
# skips anything it does not need.  Returns -1 on malformed input.

cdef inline Py_ssize_t _ws(const char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and (s[i] == 32 or s[i] == 10 or s[i] == 13 or s[i] == 9):
        i += 1
    return i


cdef Py_ssize_t _string_end(const char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """i at the opening quote; returns the index just past the closing quote."""
    i += 1
    while i < n:
        if s[i] == 92:
            i += 2
            continue
        if s[i] == 34:
            return i + 1
        i += 1
    return -1


cdef Py_ssize_t _skip(const char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Skip one JSON value starting at i (after whitespace); returns the index past it."""
    cdef int depth = 0
    cdef char ch
    i = _ws(s, i, n)
    if i >= n:
        return -1
    ch = s[i]
    if ch == 34:
        return _string_end(s, i, n)
    if ch == 123 or ch == 91:
        while i < n:
            ch = s[i]
            if ch == 34:
                i = _string_end(s, i, n)
                if i < 0:
                    return -1
                continue
            if ch == 123 or ch == 91:
                depth += 1
            elif ch == 125 or ch == 93:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return -1
    while i < n and s[i] != 44 and s[i] != 125 and s[i] != 93 and s[i] != 32 and s[i] != 10 and s[i] != 13 and s[i] != 9:
        i += 1
    return i


cdef inline bint _key_is(const char* s, Py_ssize_t a, Py_ssize_t b, const char* key, Py_ssize_t kn) noexcept nogil:
    """Whether the quoted key s[a:b] (quotes included) equals key."""
    cdef Py_ssize_t j
    if b - a - 2 != kn:
        return False
    for j in range(kn):
        if s[a + 1 + j] != key[j]:
            return False
    return True


cdef inline void _scalar_span(const char* s, Py_ssize_t a, Py_ssize_t b, Py_ssize_t* sa, Py_ssize_t* sb) noexcept nogil:
    """The text of a scalar value s[a:b] without surrounding quotes."""
    if b - a >= 2 and s[a] == 34:
        sa[0] = a + 1
        sb[0] = b - 1
    else:
        sa[0] = a
        sb[0] = b


cdef class _Levels:
    """Scratch buffer of (price span, qty span) pairs from one side of a frame."""
    cdef Py_ssize_t* spans
    cdef Py_ssize_t n, cap

    def __cinit__(self):
        self.cap = 256
        self.n = 0
        self.spans = <Py_ssize_t*>malloc(self.cap * 4 * sizeof(Py_ssize_t))
        if self.spans == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.spans)

    cdef int push(self, Py_ssize_t pa, Py_ssize_t pb, Py_ssize_t qa, Py_ssize_t qb) except -1:
        cdef Py_ssize_t* sp
        if self.n == self.cap:
            sp = <Py_ssize_t*>realloc(self.spans, self.cap * 8 * sizeof(Py_ssize_t))
            if sp == NULL:
                raise MemoryError()
            self.spans = sp
            self.cap *= 2
        sp = self.spans + 4 * self.n
        sp[0] = pa
        sp[1] = pb
        sp[2] = qa
        sp[3] = qb
        self.n += 1
        return 0


cdef Py_ssize_t _scan_levels(const char* s, Py_ssize_t i, Py_ssize_t n, _Levels out) except -2:
    """Scan ``[{"price":..,"qty":..}, ...]`` at i into out; returns the index past the array,
    or -1 if malformed."""
    cdef Py_ssize_t ka, kb, va, vb, pa, pb, qa, qb, sa, sb
    out.n = 0
    i = _ws(s, i, n)
    if i >= n or s[i] != 91:
        return -1
    i = _ws(s, i + 1, n)
    if i < n and s[i] == 93:
        return i + 1
    while i < n:
        if s[i] != 123:
            return -1
        pa = pb = qa = qb = -1
        i = _ws(s, i + 1, n)
        while i < n and s[i] != 125:
            if s[i] != 34:
                return -1
            ka = i
            kb = _string_end(s, i, n)
            if kb < 0:
                return -1
            i = _ws(s, kb, n)
            if i >= n or s[i] != 58:
                return -1
            va = _ws(s, i + 1, n)
            vb = _skip(s, va, n)
            if vb < 0:
                return -1
            _scalar_span(s, va, vb, &sa, &sb)
            if _key_is(s, ka, kb, b"price", 5):
                pa = sa
                pb = sb
            elif _key_is(s, ka, kb, b"qty", 3):
                qa = sa
                qb = sb
            i = _ws(s, vb, n)
            if i < n and s[i] == 44:
                i = _ws(s, i + 1, n)
        if i >= n or pa < 0 or qa < 0:
            return -1
        out.push(pa, pb, qa, qb)
        i = _ws(s, i + 1, n)
        if i < n and s[i] == 44:
            i = _ws(s, i + 1, n)
            continue
        if i < n and s[i] == 93:
            return i + 1
        return -1
    return -1


cdef class KrakenScanner:
    """Parses Kraken v2 ``book`` frames (bytes or str) and applies them to books.

    ``books`` maps symbol -> :class:`Book` and is shared with the caller.  For a symbol without
    a book, a snapshot creates one; its scale is ``precision[symbol]`` when given (the pair's
    price and qty precision from the ``instrument`` channel) or else the largest number of
    decimals seen in the snapshot (the wire carries full precision with trailing zeros).
    """
    cdef public dict books
    cdef public dict precision
    cdef public Py_ssize_t depth
    cdef _Levels bids, asks

    def __init__(self, dict books, dict precision=None, Py_ssize_t depth=10):
        self.books = books
        self.precision = precision if precision is not None else {}
        self.depth = depth
        self.bids = _Levels()
        self.asks = _Levels()

    cdef Book _new_book(self, str symbol, const char* s):
        cdef int pd = 0, qd = 0, d
        cdef Py_ssize_t i
        cdef _Levels lv
        if symbol in self.precision:
            pd, qd = self.precision[symbol]
        else:
            for lv in (self.bids, self.asks):
                for i in range(lv.n):
                    d = count_decimals(s + lv.spans[4 * i], lv.spans[4 * i + 1] - lv.spans[4 * i])
                    if d > pd:
                        pd = d
                    d = count_decimals(s + lv.spans[4 * i + 2], lv.spans[4 * i + 3] - lv.spans[4 * i + 2])
                    if d > qd:
                        qd = d
        return Book(pd, qd, self.depth)

    cdef int _apply(self, Book book, int side, _Levels lv, const char* s) except -1:
        cdef Py_ssize_t i
        cdef Py_ssize_t* sp
        for i in range(lv.n):
            sp = lv.spans + 4 * i
            book.set_text(side, s + sp[0], sp[1] - sp[0], s + sp[2], sp[3] - sp[2])
        return 0

    def scan(self, frame):
        """Apply one frame.  Returns a list of ``(symbol, is_snapshot, sent_checksum,
        computed_checksum, timestamp_ns or None)`` per data item, or ``None`` when the frame is
        not a ``book`` frame.  Raises :class:`BookError` on a malformed frame or value; an
        update for a symbol without a book is reported with ``computed_checksum = -1`` and not
        applied.  One pass over the bytes when ``channel`` and ``type`` precede ``data`` (as
        Kraken sends them), two otherwise.
        """
        cdef bytes raw = frame.encode() if isinstance(frame, str) else bytes(frame)
        cdef const char* s = PyBytes_AS_STRING(raw)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
        cdef Py_ssize_t i, ka, kb, va, vb, data_a = -1
        cdef int is_book = 0, snapshot = -1
        cdef list results = None
        i = _ws(s, 0, n)
        if i >= n or s[i] != 123:
            raise BookError(f"frame {raw[:80]!r} is not a JSON object")
        i = _ws(s, i + 1, n)
        while i < n and s[i] != 125:
            if s[i] != 34:
                raise BookError(f"frame {raw[:80]!r} is not valid JSON")
            ka = i
            kb = _string_end(s, i, n)
            i = _ws(s, kb, n) if kb > 0 else n
            if i >= n or s[i] != 58:
                raise BookError(f"frame {raw[:80]!r} is not valid JSON")
            va = _ws(s, i + 1, n)
            if _key_is(s, ka, kb, b"data", 4) and is_book and snapshot >= 0:
                results = []
                vb = self._data(raw, s, n, va, snapshot, results)
            else:
                vb = _skip(s, va, n)
                if vb < 0:
                    raise BookError(f"frame {raw[:80]!r} is not valid JSON")
                if _key_is(s, ka, kb, b"channel", 7):
                    is_book = _key_is(s, va, vb, b"book", 4)
                elif _key_is(s, ka, kb, b"type", 4):
                    if _key_is(s, va, vb, b"snapshot", 8):
                        snapshot = 1
                    elif _key_is(s, va, vb, b"update", 6):
                        snapshot = 0
                elif _key_is(s, ka, kb, b"data", 4):
                    data_a = va
            i = _ws(s, vb, n)
            if i < n and s[i] == 44:
                i = _ws(s, i + 1, n)
        if not is_book:
            return None
        if results is not None:
            return results
        if snapshot < 0:
            raise BookError(f"book frame type must be 'snapshot' or 'update': {raw[:120]!r}")
        if data_a < 0:
            raise BookError(f"book frame has no data array: {raw[:120]!r}")
        results = []
        self._data(raw, s, n, data_a, snapshot, results)
        return results

    cdef Py_ssize_t _data(self, bytes raw, const char* s, Py_ssize_t n, Py_ssize_t i, int snapshot,
                          list results) except -1:
        """Apply the ``data`` array at i; returns the index just past it."""
        cdef Py_ssize_t ka, kb, va, vb, sa, sb
        cdef Py_ssize_t sym_a, sym_b, ck_a, ck_b, ts_a, ts_b
        cdef int64_t sent, ts_ns
        cdef bint has_bids, has_asks
        cdef Book book
        if i >= n or s[i] != 91:
            raise BookError(f"book frame has no data array: {raw[:120]!r}")
        i = _ws(s, i + 1, n)
        while i < n and s[i] != 93:
            if s[i] != 123:
                raise BookError(f"book data item is not an object: {raw[:120]!r}")
            sym_a = ck_a = ts_a = -1
            sym_b = ck_b = ts_b = -1
            has_bids = has_asks = False
            i = _ws(s, i + 1, n)
            while i < n and s[i] != 125:
                if s[i] != 34:
                    raise BookError(f"book data item is not valid JSON: {raw[:120]!r}")
                ka = i
                kb = _string_end(s, i, n)
                i = _ws(s, kb, n) if kb > 0 else n
                if i >= n or s[i] != 58:
                    raise BookError(f"book data item is not valid JSON: {raw[:120]!r}")
                va = _ws(s, i + 1, n)
                if _key_is(s, ka, kb, b"bids", 4):
                    vb = _scan_levels(s, va, n, self.bids)
                    if vb < 0:
                        raise BookError(f"book bids are malformed: {raw[va:va + 80]!r}")
                    has_bids = True
                elif _key_is(s, ka, kb, b"asks", 4):
                    vb = _scan_levels(s, va, n, self.asks)
                    if vb < 0:
                        raise BookError(f"book asks are malformed: {raw[va:va + 80]!r}")
                    has_asks = True
                else:
                    vb = _skip(s, va, n)
                    if vb < 0:
                        raise BookError(f"book data item is not valid JSON: {raw[:120]!r}")
                    _scalar_span(s, va, vb, &sa, &sb)
                    if _key_is(s, ka, kb, b"symbol", 6):
                        sym_a = sa
                        sym_b = sb
                    elif _key_is(s, ka, kb, b"checksum", 8):
                        ck_a = sa
                        ck_b = sb
                    elif _key_is(s, ka, kb, b"timestamp", 9):
                        ts_a = sa
                        ts_b = sb
                i = _ws(s, vb, n)
                if i < n and s[i] == 44:
                    i = _ws(s, i + 1, n)
            if i >= n:
                raise BookError(f"book data item is not valid JSON: {raw[:120]!r}")
            i = _ws(s, i + 1, n)                    # past the item's '}'
            if i < n and s[i] == 44:
                i = _ws(s, i + 1, n)
            if sym_a < 0:
                raise BookError(f"book data item has no symbol: {raw[:120]!r}")
            symbol = raw[sym_a:sym_b].decode()
            if not has_bids:
                self.bids.n = 0
            if not has_asks:
                self.asks.n = 0
            sent = -1
            if ck_a >= 0:
                if parse_fixed(s + ck_a, ck_b - ck_a, 0, &sent) != 0 or sent > 0xFFFFFFFF:
                    raise BookError(f"checksum {raw[ck_a:ck_b].decode('utf-8', 'replace')!r} of "
                                    f"{symbol!r} is not a uint32")
            timestamp = None
            if ts_a >= 0:
                if rfc3339_ns(s + ts_a, ts_b - ts_a, &ts_ns) != 0:
                    raise BookError(f"timestamp {raw[ts_a:ts_b].decode('utf-8', 'replace')!r} of "
                                    f"{symbol!r} is not an RFC 3339 UTC time")
                timestamp = ts_ns
            if snapshot:
                book = self._new_book(symbol, s)
                self._apply(book, 0, self.bids, s)
                self._apply(book, 1, self.asks, s)
                book._truncate(self.depth)
                self.books[symbol] = book
            else:
                book = self.books.get(symbol)
                if book is None:
                    results.append((symbol, False, sent, -1, timestamp))
                    continue
                try:
                    self._apply(book, 0, self.bids, s)
                    self._apply(book, 1, self.asks, s)
                except BookError:
                    del self.books[symbol]          # half applied: wait for a new snapshot
                    raise
                book._truncate(self.depth)
            results.append((symbol, bool(snapshot), sent, book.checksum_top(10), timestamp))
        if i >= n:
            raise BookError(f"book data array is not closed: {raw[:120]!r}")
        return i + 1


def crc32(data) -> int:
    """CRC-32 (zlib polynomial) of bytes; the same function the checksum uses."""
    cdef bytes b = data.encode() if isinstance(data, str) else bytes(data)
    return _crc_update(0xFFFFFFFF, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b)) ^ 0xFFFFFFFF


# ==================================================================== BookSet
cdef class BookSet:
    """Books keyed by symbol, with their output as Arrow record batches.

    After applying a message to ``book(symbol)`` call :meth:`emit` with the message's exchange
    time and local receive time (integer ns since the epoch).  It records

    * a top-of-book row when the best bid/offer (price or size) changed since the symbol's
      last row, and
    * a depth row (levels 1..``depth`` of both sides, wide format) when any of those levels
      changed.

    :meth:`flush_tob` / :meth:`flush_depth` return and clear what was recorded; the output does
    not depend on when you flush.  Schemas: :data:`sabot.book.TOB_SCHEMA` and
    :func:`sabot.book.depth_schema`.
    """
    cdef readonly str exchange
    cdef readonly Py_ssize_t depth
    cdef public dict books
    cdef dict _last            # symbol -> bytes of the last depth row (4*depth doubles)
    cdef dict _last_bbo        # symbol -> tuple of the last BBO
    cdef public int price_decimals
    cdef public int qty_decimals
    cdef public Py_ssize_t max_depth
    cdef list _t_sym, _t_ts, _t_recv, _t_vals
    cdef list _d_sym, _d_ts, _d_recv
    cdef bytearray _d_rows
    cdef double* _scratch

    def __cinit__(self, *args, **kwargs):
        self._scratch = NULL

    def __init__(self, str exchange, Py_ssize_t depth=10, int price_decimals=10,
                 int qty_decimals=8, Py_ssize_t max_depth=0):
        if depth < 1:
            raise BookError(f"depth {depth!r} must be >= 1")
        self.exchange = exchange
        self.depth = depth
        self.books = {}
        self._last = {}
        self._last_bbo = {}
        self.price_decimals = price_decimals
        self.qty_decimals = qty_decimals
        self.max_depth = max_depth
        self._scratch = <double*>malloc(4 * depth * sizeof(double))
        if self._scratch == NULL:
            raise MemoryError()
        self._reset_buffers()

    def __dealloc__(self):
        free(self._scratch)

    cdef _reset_buffers(self):
        self._t_sym = []
        self._t_ts = []
        self._t_recv = []
        self._t_vals = []
        self._d_sym = []
        self._d_ts = []
        self._d_recv = []
        self._d_rows = bytearray()

    def book(self, str symbol) -> Book:
        """The book of ``symbol``, created empty (at the set's scale) on first use."""
        b = self.books.get(symbol)
        if b is None:
            b = Book(self.price_decimals, self.qty_decimals, self.max_depth)
            self.books[symbol] = b
        return b

    def __contains__(self, symbol):
        return symbol in self.books

    def __getitem__(self, symbol):
        return self.books[symbol]

    def discard(self, str symbol) -> None:
        """Forget ``symbol``'s book (e.g. when it went out of sync); its next rows start anew."""
        self.books.pop(symbol, None)
        self._last.pop(symbol, None)
        self._last_bbo.pop(symbol, None)

    def emit(self, str symbol, int64_t timestamp, int64_t recv_timestamp) -> int:
        """Record ``symbol``'s rows if its top changed; returns bit 1 = BBO row, bit 2 = depth row."""
        cdef Book b = self.books[symbol]
        cdef Py_ssize_t d = self.depth
        cdef int flags = 0
        b.fill_top(d, self._scratch)
        row = (<char*>self._scratch)[:4 * d * sizeof(double)]
        if self._last.get(symbol) != row:
            self._last[symbol] = row
            self._d_sym.append(symbol)
            self._d_ts.append(timestamp)
            self._d_recv.append(recv_timestamp)
            self._d_rows += row
            flags |= 2
        bbo = b.bbo()
        last = self._last_bbo.get(symbol)
        if last is None or not _same_bbo(last, bbo):
            self._last_bbo[symbol] = bbo
            self._t_sym.append(symbol)
            self._t_ts.append(timestamp)
            self._t_recv.append(recv_timestamp)
            self._t_vals.append(bbo)
            flags |= 1
        return flags

    @property
    def pending(self):
        """``(top-of-book rows, depth rows)`` recorded and not yet flushed."""
        return len(self._t_sym), len(self._d_sym)

    def flush_tob(self):
        """The recorded top-of-book rows as one record batch (possibly empty); clears them."""
        import pyarrow as pa
        from sabot.book._schema import TOB_SCHEMA
        vals = np.array(self._t_vals, dtype=np.float64).reshape(-1, 4)
        batch = pa.record_batch([
            pa.array([self.exchange] * len(self._t_sym), pa.string()),
            pa.array(self._t_sym, pa.string()),
            pa.array(np.asarray(self._t_ts, dtype=np.int64)).cast(TOB_SCHEMA.field("timestamp").type),
            pa.array(np.asarray(self._t_recv, dtype=np.int64)).cast(TOB_SCHEMA.field("recv_timestamp").type),
            pa.array(vals[:, 0], from_pandas=True),
            pa.array(vals[:, 1], from_pandas=True),
            pa.array(vals[:, 2], from_pandas=True),
            pa.array(vals[:, 3], from_pandas=True),
        ], schema=TOB_SCHEMA)
        self._t_sym = []
        self._t_ts = []
        self._t_recv = []
        self._t_vals = []
        return batch

    def flush_depth(self):
        """The recorded depth rows as one record batch (possibly empty); clears them."""
        import pyarrow as pa
        from sabot.book._schema import depth_schema
        schema = depth_schema(self.depth)
        d = self.depth
        rows = np.frombuffer(bytes(self._d_rows), dtype=np.float64).reshape(-1, 4 * d)
        cols = [
            pa.array([self.exchange] * len(self._d_sym), pa.string()),
            pa.array(self._d_sym, pa.string()),
            pa.array(np.asarray(self._d_ts, dtype=np.int64)).cast(schema.field("timestamp").type),
            pa.array(np.asarray(self._d_recv, dtype=np.int64)).cast(schema.field("recv_timestamp").type),
        ]
        # row layout: bid px[d], bid qty[d], ask px[d], ask qty[d]; schema: per level i,
        # bid_price_i, bid_size_i, ask_price_i, ask_size_i
        for i in range(d):
            for block in range(4):
                cols.append(pa.array(np.ascontiguousarray(rows[:, block * d + i]), from_pandas=True))
        batch = pa.record_batch(cols, schema=schema)
        self._d_sym = []
        self._d_ts = []
        self._d_recv = []
        self._d_rows = bytearray()
        return batch


cdef inline bint _same_bbo(tuple a, tuple b):
    cdef int i
    for i in range(4):
        x = a[i]
        y = b[i]
        if x != y and not (x != x and y != y):
            return False
    return True


# ==================================================================== timestamps
cdef inline int64_t _days_from_civil(int64_t y, int64_t m, int64_t d) noexcept nogil:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    cdef int64_t era, yoe, doy, doe
    if m <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef inline int _digits(const char* s, Py_ssize_t a, Py_ssize_t n, int64_t* out) noexcept nogil:
    cdef int64_t v = 0
    cdef Py_ssize_t i
    for i in range(a, a + n):
        if s[i] < 48 or s[i] > 57:
            return -1
        v = v * 10 + (s[i] - 48)
    out[0] = v
    return 0


cdef int rfc3339_ns(const char* s, Py_ssize_t n, int64_t* out) noexcept nogil:
    """``YYYY-MM-DDTHH:MM:SS[.fraction]Z`` -> ns since the epoch; -1 if not that form.
    Fraction digits beyond nanoseconds are truncated."""
    cdef int64_t y, mo, d, h, mi, sec, frac = 0
    cdef Py_ssize_t i, k = 0
    if n < 20 or s[n - 1] != 90 or s[4] != 45 or s[7] != 45 or (s[10] != 84 and s[10] != 32) \
            or s[13] != 58 or s[16] != 58:
        return -1
    if (_digits(s, 0, 4, &y) or _digits(s, 5, 2, &mo) or _digits(s, 8, 2, &d)
            or _digits(s, 11, 2, &h) or _digits(s, 14, 2, &mi) or _digits(s, 17, 2, &sec)):
        return -1
    if mo < 1 or mo > 12 or d < 1 or d > 31 or h > 23 or mi > 59 or sec > 60:
        return -1
    if n > 20:
        if s[19] != 46 or n == 21:
            return -1
        for i in range(20, n - 1):
            if s[i] < 48 or s[i] > 57:
                return -1
            if k < 9:
                frac = frac * 10 + (s[i] - 48)
                k += 1
        while k < 9:
            frac *= 10
            k += 1
    out[0] = ((_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec) * 1000000000) + frac
    return 0


def parse_rfc3339_ns(text):
    """``2024-10-03T02:46:57.050170Z`` -> integer ns since the epoch (None stays None).

    A value not in that form raises :class:`BookError` naming it.
    """
    if text is None:
        return None
    cdef Py_ssize_t n
    cdef const char* s
    cdef int64_t out
    if not isinstance(text, str):
        raise BookError(f"timestamp {text!r} is not an RFC 3339 UTC time")
    s = PyUnicode_AsUTF8AndSize(text, &n)
    if rfc3339_ns(s, n, &out) != 0:
        raise BookError(f"timestamp {text!r} is not an RFC 3339 UTC time")
    return out
