# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Flat JSON objects → Arrow columns, one pass per message, no Python objects per value.

Each message must be one JSON object (RFC 8259).  Members whose name is a schema field are
parsed straight into column buffers (float64, int64, string, bool); other members are skipped
(any JSON value, nested or not).  A message that is not valid JSON, gives a field a value of
the wrong type, or gives a field twice, is rejected as a whole (its partial values are never written) and reported with
a reason; the other messages are decoded.  Used by :mod:`sabot.api._decode`.
"""
from libc.stdlib cimport malloc, realloc, free, strtod
from libc.math cimport isfinite
from libc.string cimport memcmp, memcpy
from libc.stdint cimport int64_t, int32_t, uint8_t, uint32_t, uint64_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_Check

import time

import numpy as np
import pyarrow as pa


cdef inline char* _data_ptr(object arr):
    """Address of a contiguous numpy array's data."""
    return <char*><size_t>arr.__array_interface__["data"][0]

DEF T_FLOAT = 0
DEF T_INT = 1
DEF T_STR = 2
DEF T_BOOL = 3

# record checks per field (``checks=`` of FlatJsonDecoder)
DEF C_FINITE = 1     # float: finite
DEF C_POSITIVE = 2   # float: > 0
DEF C_NONNEG = 4     # float: >= 0
DEF C_NOCTRL = 8     # string: no control character (C0, DEL, C1)
DEF C_WINDOW = 16    # integer ns: within the window around the message's reference time

#: names of the check bits, for :mod:`sabot.api._decode`
CHECKS = {"finite": C_FINITE, "positive": C_POSITIVE, "nonneg": C_NONNEG,
          "noctrl": C_NOCTRL, "window": C_WINDOW}

DEF S_UNSET = 0
DEF S_NULL = 1
DEF S_VALUE = 2


cdef struct Slot:
    int state
    double d
    int64_t i
    const char* s
    Py_ssize_t slen
    bint escaped


cdef struct StrBuf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef inline int _grow(StrBuf* b, Py_ssize_t extra) noexcept nogil:
    """Room for ``extra`` more bytes (capacity doubled from 4 KiB); -1, nothing changed, when
    memory runs out.  Needs no GIL (the encoder formats rows without it)."""
    cdef Py_ssize_t need = b.size + extra
    cdef Py_ssize_t cap
    cdef char* p
    if need <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 4096
    while cap < need:
        cap *= 2
    p = <char*>realloc(b.data, cap)
    if p == NULL:
        return -1
    b.data = p
    b.cap = cap
    return 0


cdef inline int strbuf_reserve(StrBuf* b, Py_ssize_t extra) except -1:
    """:func:`_grow`, raising MemoryError."""
    if _grow(b, extra) < 0:
        raise MemoryError()
    return 0


cdef inline const char* skip_ws(const char* p, const char* end) noexcept nogil:
    while p < end and (p[0] == c' ' or p[0] == c'\t' or p[0] == c'\n' or p[0] == c'\r'):
        p += 1
    return p


cdef Py_ssize_t utf8_error(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Offset of the first byte that is not valid UTF-8 (as Python's strict decoder: no
    overlong forms, no surrogates, nothing above U+10FFFF), or -1 when all of p[0:n] is."""
    cdef Py_ssize_t i = 0, k, need
    cdef unsigned char c, c1
    cdef uint64_t word
    # ASCII, 8 bytes at a time (almost every message is ASCII only)
    while i + 8 <= n:
        memcpy(&word, p + i, 8)
        if word & 0x8080808080808080ULL:
            break
        i += 8
    while i < n:
        c = p[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            need = 1
        elif 0xE0 <= c <= 0xEF:
            need = 2
        elif 0xF0 <= c <= 0xF4:
            need = 3
        else:
            return i
        if i + need >= n:  # truncated sequence
            return i
        c1 = p[i + 1]
        if (c1 & 0xC0) != 0x80:
            return i
        if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 > 0x9F) \
                or (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 > 0x8F):
            return i
        for k in range(2, need + 1):
            if (p[i + k] & 0xC0) != 0x80:
                return i
        i += need + 1
    return -1


cdef bint has_control(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Whether UTF-8 text p[0:n] holds a control character (U+0000-001F, U+007F-009F)."""
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] < 0x20 or p[i] == 0x7F:
            return True
        if p[i] == 0xC2 and i + 1 < n and 0x80 <= p[i + 1] <= 0x9F:
            return True
    return False


cdef inline int hexval(char c) noexcept nogil:
    if c'0' <= c <= c'9':
        return c - c'0'
    if c'a' <= c <= c'f':
        return c - c'a' + 10
    if c'A' <= c <= c'F':
        return c - c'A' + 10
    return -1


cdef const char* scan_string(const char* p, const char* end, bint* escaped) noexcept nogil:
    """p points just after the opening quote; returns the closing quote or NULL."""
    escaped[0] = False
    while p < end:
        if p[0] == c'"':
            return p
        if p[0] == c'\\':
            escaped[0] = True
            p += 2
            continue
        if <unsigned char>p[0] < 0x20:
            return NULL
        p += 1
    return NULL


cdef const char* scan_number(const char* p, const char* end, bint* is_int) noexcept nogil:
    """Validate a JSON number starting at p; returns the first char after it or NULL."""
    is_int[0] = True
    if p < end and p[0] == c'-':
        p += 1
    if p >= end:
        return NULL
    if p[0] == c'0':
        p += 1
    elif c'1' <= p[0] <= c'9':
        while p < end and c'0' <= p[0] <= c'9':
            p += 1
    else:
        return NULL
    if p < end and p[0] == c'.':
        is_int[0] = False
        p += 1
        if p >= end or not (c'0' <= p[0] <= c'9'):
            return NULL
        while p < end and c'0' <= p[0] <= c'9':
            p += 1
    if p < end and (p[0] == c'e' or p[0] == c'E'):
        is_int[0] = False
        p += 1
        if p < end and (p[0] == c'+' or p[0] == c'-'):
            p += 1
        if p >= end or not (c'0' <= p[0] <= c'9'):
            return NULL
        while p < end and c'0' <= p[0] <= c'9':
            p += 1
    return p


cdef const char* skip_value(const char* p, const char* end, int depth) noexcept nogil:
    """Skip any JSON value starting at p; returns the char after it or NULL."""
    cdef bint esc, isint, is_obj
    cdef char close
    if depth > 64 or p >= end:
        return NULL
    if p[0] == c'"':
        p = scan_string(p + 1, end, &esc)
        return NULL if p == NULL else p + 1
    if p[0] == c'{' or p[0] == c'[':
        close = c'}' if p[0] == c'{' else c']'
        is_obj = p[0] == c'{'
        p = skip_ws(p + 1, end)
        if p < end and p[0] == close:
            return p + 1
        while True:
            if is_obj:
                if p >= end or p[0] != c'"':
                    return NULL
                p = scan_string(p + 1, end, &esc)
                if p == NULL:
                    return NULL
                p = skip_ws(p + 1, end)
                if p >= end or p[0] != c':':
                    return NULL
                p = skip_ws(p + 1, end)
            p = skip_value(p, end, depth + 1)
            if p == NULL:
                return NULL
            p = skip_ws(p, end)
            if p >= end:
                return NULL
            if p[0] == c',':
                p = skip_ws(p + 1, end)
                continue
            if p[0] == close:
                return p + 1
            return NULL
    if end - p >= 4 and memcmp(p, b"true", 4) == 0:
        return p + 4
    if end - p >= 5 and memcmp(p, b"false", 5) == 0:
        return p + 5
    if end - p >= 4 and memcmp(p, b"null", 4) == 0:
        return p + 4
    return scan_number(p, end, &isint)


cdef double[23] _POW10
for _k in range(23):
    _POW10[_k] = 10.0 ** _k


cdef inline bint _digit(char c) noexcept nogil:
    return c'0' <= c <= c'9'


cdef const char* scan_parse_double(const char* p, const char* end, double* out,
                                   bint* is_int) noexcept nogil:
    """:func:`scan_number` and :func:`parse_double` in one pass: validates the JSON number
    at p (returns the first char after it, or NULL) and stores the double nearest to it in
    ``out``.

    Fast path (Clinger 1990): when the decimal significand has at most 15 digits and the
    power of ten is at most 22, both are exact doubles and one IEEE multiply or divide gives the
    correctly rounded result.  Everything else goes to ``strtod``."""
    cdef const char* s = p
    cdef uint64_t m = 0
    cdef int digits = 0, frac = 0
    cdef bint neg = False, slow = False
    cdef double v
    is_int[0] = True
    if s < end and s[0] == c'-':
        neg = True
        s += 1
    if s >= end:
        return NULL
    if s[0] == c'0':
        s += 1
    elif c'1' <= s[0] <= c'9':
        while s < end and _digit(s[0]):
            digits += 1
            m = m * 10 + <uint64_t>(s[0] - c'0')
            s += 1
            if digits > 15:
                slow = True
                while s < end and _digit(s[0]):
                    s += 1
                break
    else:
        return NULL
    if s < end and s[0] == c'.':
        is_int[0] = False
        s += 1
        if s >= end or not _digit(s[0]):
            return NULL
        while s < end and _digit(s[0]):
            if m or s[0] != c'0':
                digits += 1
            m = m * 10 + <uint64_t>(s[0] - c'0')
            frac += 1
            s += 1
            if digits > 15 or frac > 22:
                slow = True
                while s < end and _digit(s[0]):
                    s += 1
                break
    if s < end and (s[0] == c'e' or s[0] == c'E'):
        is_int[0] = False
        slow = True
        s += 1
        if s < end and (s[0] == c'+' or s[0] == c'-'):
            s += 1
        if s >= end or not _digit(s[0]):
            return NULL
        while s < end and _digit(s[0]):
            s += 1
    if slow:
        out[0] = strtod(p, NULL)
    else:
        v = <double>m
        if frac:
            v = v / _POW10[frac]
        out[0] = -v if neg else v
    return s


cdef int parse_int64(const char* p, const char* q, int64_t* out) noexcept nogil:
    cdef bint neg = False
    cdef uint32_t digit
    cdef unsigned long long v = 0
    if p[0] == c'-':
        neg = True
        p += 1
    while p < q:
        digit = <uint32_t>(p[0] - c'0')
        if v > 922337203685477580ULL or (v == 922337203685477580ULL and digit > (8 if neg else 7)):
            return -1
        v = v * 10 + digit
        p += 1
    out[0] = -<int64_t>v if neg else <int64_t>v
    return 0


cdef Py_ssize_t unescape_into(const char* s, Py_ssize_t n, char* out) noexcept nogil:
    """Decode JSON escapes of s[0:n] into out (at most n bytes); -1 on a bad escape."""
    cdef Py_ssize_t i = 0, o = 0
    cdef uint32_t cp, lo
    cdef int k, h
    while i < n:
        if s[i] != c'\\':
            out[o] = s[i]
            o += 1
            i += 1
            continue
        i += 1
        if i >= n:
            return -1
        c = s[i]
        i += 1
        if c == c'"' or c == c'\\' or c == c'/':
            out[o] = c
        elif c == c'b':
            out[o] = c'\b'
        elif c == c'f':
            out[o] = c'\f'
        elif c == c'n':
            out[o] = c'\n'
        elif c == c'r':
            out[o] = c'\r'
        elif c == c't':
            out[o] = c'\t'
        elif c == c'u':
            if i + 4 > n:
                return -1
            cp = 0
            for k in range(4):
                h = hexval(s[i + k])
                if h < 0:
                    return -1
                cp = cp * 16 + h
            i += 4
            if 0xD800 <= cp <= 0xDBFF:
                if i + 6 > n or s[i] != c'\\' or s[i + 1] != c'u':
                    return -1
                lo = 0
                for k in range(4):
                    h = hexval(s[i + 2 + k])
                    if h < 0:
                        return -1
                    lo = lo * 16 + h
                if not (0xDC00 <= lo <= 0xDFFF):
                    return -1
                i += 6
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
            elif 0xDC00 <= cp <= 0xDFFF:
                return -1
            # UTF-8 encode (an escape of 6 or 12 input bytes yields at most 4 output bytes)
            if cp < 0x80:
                out[o] = <char>cp
            elif cp < 0x800:
                out[o] = <char>(0xC0 | (cp >> 6)); o += 1
                out[o] = <char>(0x80 | (cp & 0x3F))
            elif cp < 0x10000:
                out[o] = <char>(0xE0 | (cp >> 12)); o += 1
                out[o] = <char>(0x80 | ((cp >> 6) & 0x3F)); o += 1
                out[o] = <char>(0x80 | (cp & 0x3F))
            else:
                out[o] = <char>(0xF0 | (cp >> 18)); o += 1
                out[o] = <char>(0x80 | ((cp >> 12) & 0x3F)); o += 1
                out[o] = <char>(0x80 | ((cp >> 6) & 0x3F)); o += 1
                out[o] = <char>(0x80 | (cp & 0x3F))
        else:
            return -1
        o += 1
    return o


_TYPE_CODES = {pa.float64(): T_FLOAT, pa.int64(): T_INT, pa.string(): T_STR, pa.bool_(): T_BOOL}
_TYPE_NAMES = {T_FLOAT: "number", T_INT: "integer", T_STR: "string", T_BOOL: "boolean"}


def supports(schema):
    """True when every field type has a native parser (float64, int64, string, bool)."""
    return all(f.type in _TYPE_CODES for f in schema)


def _same_layout(reader_type, out_type):
    """Whether the reader's column can be handed out as ``out_type`` without conversion:
    the same type, or JSON's integer nanoseconds as a ``timestamp('ns')`` (same buffers)."""
    if out_type == reader_type:
        return True
    return (reader_type == pa.int64() and pa.types.is_timestamp(out_type)
            and out_type.unit == "ns")


cdef class FlatJsonDecoder:
    """Decode lists of JSON message values into Arrow arrays of ``schema`` (see module
    docstring); ``output_types`` (default: the schema's) may give a timestamp('ns') type for an
    int64 field, which is then built as that type directly."""

    cdef object schema
    cdef list output_types
    cdef int nfields
    cdef list names
    cdef list name_bytes
    cdef int* types
    cdef const char** name_ptrs
    cdef Py_ssize_t* name_lens
    cdef Slot* slots
    cdef StrBuf scratch
    cdef int* checks
    cdef object explain
    cdef bint has_age, has_ahead
    cdef int64_t max_age_ns, max_ahead_ns

    def __cinit__(self, schema, output_types=None, checks=None, explain=None,
                  max_age_ns=None, max_ahead_ns=None):
        """``checks``: per field, a mask of :data:`CHECKS` (default: floats finite); a record
        failing one is rejected with ``explain(field_index, value, reference_ns)`` as reason.
        ``max_age_ns`` / ``max_ahead_ns``: the window of ``window`` fields (None: unbounded)."""
        self.scratch.data = NULL
        self.scratch.size = 0
        self.scratch.cap = 0
        if not supports(schema):
            raise TypeError(f"unsupported field types in {schema}")
        self.schema = schema
        self.output_types = [f.type for f in schema] if output_types is None else list(output_types)
        if len(self.output_types) != len(schema) or not all(
                _same_layout(f.type, t) for f, t in zip(schema, self.output_types)):
            raise TypeError(f"output types {self.output_types} do not match {schema}")
        self.nfields = len(schema)
        self.names = list(schema.names)
        self.name_bytes = [n.encode("utf-8") for n in self.names]
        self.types = <int*>malloc(max(1, self.nfields) * sizeof(int))
        self.name_ptrs = <const char**>malloc(max(1, self.nfields) * sizeof(char*))
        self.name_lens = <Py_ssize_t*>malloc(max(1, self.nfields) * sizeof(Py_ssize_t))
        self.slots = <Slot*>malloc(max(1, self.nfields) * sizeof(Slot))
        self.checks = <int*>malloc(max(1, self.nfields) * sizeof(int))
        if not (self.types and self.name_ptrs and self.name_lens and self.slots and self.checks):
            raise MemoryError()
        if checks is None:
            checks = [C_FINITE if f.type == pa.float64() else 0 for f in schema]
        if len(checks) != self.nfields:
            raise ValueError(f"checks: {len(checks)} masks for {self.nfields} fields")
        for k in range(self.nfields):
            self.checks[k] = int(checks[k])
        self.explain = explain
        self.has_age = max_age_ns is not None
        self.has_ahead = max_ahead_ns is not None
        self.max_age_ns = max_age_ns if max_age_ns is not None else 0
        self.max_ahead_ns = max_ahead_ns if max_ahead_ns is not None else 0
        for k, f in enumerate(schema):
            self.types[k] = _TYPE_CODES[f.type]
            self.name_ptrs[k] = PyBytes_AS_STRING(self.name_bytes[k])
            self.name_lens[k] = PyBytes_GET_SIZE(self.name_bytes[k])

    def __dealloc__(self):
        free(self.types)
        free(self.name_ptrs)
        free(self.name_lens)
        free(self.slots)
        free(self.checks)
        free(self.scratch.data)

    cdef inline int lookup(self, const char* k, Py_ssize_t n) noexcept nogil:
        cdef int f
        for f in range(self.nfields):
            if self.name_lens[f] == n and memcmp(self.name_ptrs[f], k, n) == 0:
                return f
        return -1

    cdef object fail(self, int f, object value, int64_t ref):
        """The reason a record breaks the check of field ``f``."""
        if self.explain is not None:
            return self.explain(f, value, ref)
        return f"{self.names[f]}={value!r}: rejected"

    cdef object parse_one(self, const char* p, const char* end, int64_t ref):
        """Fill self.slots from one message; None if it is valid, else the reason."""
        cdef int f, t, c
        cdef double d
        cdef int64_t vi
        cdef Py_ssize_t ulen
        cdef const char* q
        cdef bint esc, isint
        cdef const char* key
        cdef Py_ssize_t klen
        for f in range(self.nfields):
            self.slots[f].state = S_UNSET
        p = skip_ws(p, end)
        if p >= end:
            return "empty message value"
        if p[0] != c'{':
            return "not a JSON object"
        p = skip_ws(p + 1, end)
        if p < end and p[0] == c'}':
            p += 1
        else:
            while True:
                if p >= end or p[0] != c'"':
                    return "invalid JSON: expected a member name"
                q = scan_string(p + 1, end, &esc)
                if q == NULL:
                    return "invalid JSON: unterminated string"
                key = p + 1
                klen = q - key
                if esc:  # a member name with escapes ("b\u0069d" is "bid")
                    strbuf_reserve(&self.scratch, klen)
                    klen = unescape_into(key, klen, self.scratch.data)
                    if klen < 0:
                        return "invalid JSON: invalid escape in member name"
                    f = self.lookup(self.scratch.data, klen)
                else:
                    f = self.lookup(key, klen)
                if f >= 0 and self.slots[f].state != S_UNSET:
                    # ambiguous (RFC 8259 leaves it open); the Arrow reader refuses it too
                    return f"field {self.names[f]!r} given twice"
                p = skip_ws(q + 1, end)
                if p >= end or p[0] != c':':
                    return "invalid JSON: expected ':'"
                p = skip_ws(p + 1, end)
                if p >= end:
                    return "invalid JSON: truncated"
                if f < 0:
                    q = skip_value(p, end, 0)
                    if q == NULL:
                        return "invalid JSON value"
                    p = q
                elif end - p >= 4 and memcmp(p, b"null", 4) == 0:
                    self.slots[f].state = S_NULL
                    p += 4
                else:
                    t = self.types[f]
                    if t == T_FLOAT or t == T_INT:
                        if t == T_FLOAT:
                            q = scan_parse_double(p, end, &d, &isint)
                        else:
                            q = scan_number(p, end, &isint)
                        if q == NULL:
                            if p[0] == c'"' or p[0] == c't' or p[0] == c'f' or p[0] == c'{' or p[0] == c'[':
                                return f"field {self.names[f]!r}: expected {_TYPE_NAMES[t]}, got {_json_kind(p[0])}"
                            else:
                                return f"field {self.names[f]!r}: invalid JSON number {_token(p, end)}"
                        c = self.checks[f]
                        if t == T_FLOAT:
                            self.slots[f].d = d
                            if c and (not isfinite(d) or (c & C_POSITIVE and not d > 0)
                                      or (c & C_NONNEG and not d >= 0)):
                                return self.fail(f, d, ref)
                        else:
                            if not isint:
                                return f"field {self.names[f]!r}: expected integer, got {(<bytes>p[:q - p]).decode('utf-8', 'replace')}"
                            if parse_int64(p, q, &self.slots[f].i) < 0:
                                return f"field {self.names[f]!r}: integer out of int64 range"
                            if c & C_WINDOW:
                                vi = self.slots[f].i
                                if ((self.has_ahead and vi > ref + self.max_ahead_ns)
                                        or (self.has_age and vi < ref - self.max_age_ns)):
                                    return self.fail(f, vi, ref)
                        self.slots[f].state = S_VALUE
                        p = q
                    elif t == T_STR:
                        if p[0] != c'"':
                            return f"field {self.names[f]!r}: expected string, got {_json_kind(p[0])}"
                        q = scan_string(p + 1, end, &esc)
                        if q == NULL:
                            return "invalid JSON: unterminated string"
                        if esc:
                            strbuf_reserve(&self.scratch, q - p)
                            ulen = unescape_into(p + 1, q - (p + 1), self.scratch.data)
                            if ulen < 0:
                                return f"field {self.names[f]!r}: invalid escape in string"
                            if self.checks[f] & C_NOCTRL and has_control(
                                    <const unsigned char*>self.scratch.data, ulen):
                                return self.fail(f, (<bytes>self.scratch.data[:ulen]).decode(
                                    "utf-8", "replace"), ref)
                        elif self.checks[f] & C_NOCTRL and has_control(
                                <const unsigned char*>(p + 1), q - (p + 1)):
                            return self.fail(f, (<bytes>p[1:q - p]).decode("utf-8", "replace"),
                                             ref)
                        self.slots[f].s = p + 1
                        self.slots[f].slen = q - (p + 1)
                        self.slots[f].escaped = esc
                        self.slots[f].state = S_VALUE
                        p = q + 1
                    else:  # bool
                        if end - p >= 4 and memcmp(p, b"true", 4) == 0:
                            self.slots[f].i = 1
                            p += 4
                        elif end - p >= 5 and memcmp(p, b"false", 5) == 0:
                            self.slots[f].i = 0
                            p += 5
                        else:
                            return f"field {self.names[f]!r}: expected boolean, got {_json_kind(p[0])}"
                        self.slots[f].state = S_VALUE
                p = skip_ws(p, end)
                if p >= end:
                    return "invalid JSON: truncated object"
                if p[0] == c',':
                    p = skip_ws(p + 1, end)
                    continue
                if p[0] == c'}':
                    p += 1
                    break
                return "invalid JSON: expected ',' or '}'"
        p = skip_ws(p, end)
        if p != end:
            return "invalid JSON: trailing characters after the object"
        return None

    def decode(self, list values, ref_ns=None):
        """``(arrays, bad)``: one Arrow array per field of the decoded messages in order, and
        ``[(index, reason)]`` of the others.  ``ref_ns``: per message, the reference time of
        the window checks (int64 ns; negative or None: the time of the call).  One allocation for all validity bytes and one for
        all 8-byte values, whatever the number of fields (the per-call cost of a 1-message
        batch is what a live consumer pays per tick)."""
        cdef Py_ssize_t n = len(values), row = 0, i, o
        cdef int f, t, nf = self.nfields
        cdef object v
        cdef const char* p
        cdef object problem
        cdef list bad = []
        cdef Slot* s
        cdef int64_t now = time.time_ns()
        cdef int64_t ref = now
        cdef object refs = None
        cdef int64_t* rptr = NULL
        if ref_ns is not None:
            refs = np.ascontiguousarray(ref_ns, dtype=np.int64)
            if len(refs) != n:
                raise ValueError(f"ref_ns: {len(refs)} times for {n} messages")
            rptr = <int64_t*>_data_ptr(refs) if n else NULL
        # column buffers: row f of ``validity``; 8-byte values, bools and string offsets in
        # slices of ``fixed`` (n + 1 8-byte slots per field, enough for each kind)
        cdef object validity = np.empty(nf * max(n, 1), dtype=np.uint8)
        cdef object fixed = np.empty(nf * (n + 1), dtype=np.int64)
        cdef uint8_t* vbase = <uint8_t*>_data_ptr(validity)
        cdef char* fbase = _data_ptr(fixed)
        cdef uint8_t** vptr = <uint8_t**>malloc(max(1, nf) * sizeof(uint8_t*))
        cdef char** dptr = <char**>malloc(max(1, nf) * sizeof(char*))
        cdef int32_t** optr = <int32_t**>malloc(max(1, nf) * sizeof(int32_t*))
        cdef StrBuf* sbuf = <StrBuf*>malloc(max(1, nf) * sizeof(StrBuf))
        cdef Py_ssize_t* nulls = <Py_ssize_t*>malloc(max(1, nf) * sizeof(Py_ssize_t))
        if not (vptr and dptr and optr and sbuf and nulls):
            free(vptr); free(dptr); free(optr); free(sbuf); free(nulls)
            raise MemoryError()
        try:
            for f in range(nf):
                sbuf[f].data = NULL
                sbuf[f].size = 0
                sbuf[f].cap = 0
                nulls[f] = 0
                vptr[f] = vbase + f * max(n, 1)
                dptr[f] = fbase + f * (n + 1) * 8
                if self.types[f] == T_STR:
                    optr[f] = <int32_t*>dptr[f]
                    optr[f][0] = 0
            for i in range(n):
                v = values[i]
                if not PyBytes_Check(v):
                    if v is None:
                        bad.append((i, "empty message value"))
                        continue
                    v = bytes(v)
                p = PyBytes_AS_STRING(v)
                o = utf8_error(<const unsigned char*>p, PyBytes_GET_SIZE(v))
                if o >= 0:  # not JSON (RFC 8259: UTF-8), wherever it is in the message
                    bad.append((i, f"invalid UTF-8 at byte {o}"))
                    continue
                if rptr != NULL:
                    ref = rptr[i] if rptr[i] >= 0 else now
                problem = self.parse_one(p, p + PyBytes_GET_SIZE(v), ref)
                if problem is not None:
                    bad.append((i, problem))
                    continue
                for f in range(nf):
                    s = &self.slots[f]
                    t = self.types[f]
                    if s.state != S_VALUE:
                        vptr[f][row] = 0
                        nulls[f] += 1
                        if t == T_FLOAT:
                            (<double*>dptr[f])[row] = 0.0
                        elif t == T_INT:
                            (<int64_t*>dptr[f])[row] = 0
                        elif t == T_BOOL:
                            (<uint8_t*>dptr[f])[row] = 0
                        else:
                            optr[f][row + 1] = <int32_t>sbuf[f].size
                        continue
                    vptr[f][row] = 1
                    if t == T_FLOAT:
                        (<double*>dptr[f])[row] = s.d
                    elif t == T_INT:
                        (<int64_t*>dptr[f])[row] = s.i
                    elif t == T_BOOL:
                        (<uint8_t*>dptr[f])[row] = <uint8_t>s.i
                    else:
                        strbuf_reserve(&sbuf[f], s.slen)
                        if s.escaped:
                            # validated in parse_one, cannot fail here
                            o = unescape_into(s.s, s.slen, sbuf[f].data + sbuf[f].size)
                        else:
                            memcpy(sbuf[f].data + sbuf[f].size, s.s, s.slen)
                            o = s.slen
                        sbuf[f].size += o
                        if sbuf[f].size > 2147483647:
                            raise OverflowError("string column exceeds 2 GiB in one batch")
                        optr[f][row + 1] = <int32_t>sbuf[f].size
                row += 1
            columns = []
            fixed_buf = pa.py_buffer(fixed)
            for f in range(nf):
                t = self.types[f]
                out_type = self.output_types[f]
                vbuf = None
                if nulls[f]:
                    vbuf = pa.py_buffer(np.packbits(validity[f * max(n, 1):f * max(n, 1) + row],
                                                    bitorder="little"))
                if t == T_FLOAT or t == T_INT:
                    data = fixed_buf.slice(f * (n + 1) * 8, row * 8)
                    columns.append(pa.Array.from_buffers(out_type, row, [vbuf, data],
                                                         null_count=nulls[f]))
                elif t == T_BOOL:
                    data = pa.py_buffer(np.packbits(
                        fixed[f * (n + 1):f * (n + 1) + n + 1].view(np.uint8)[:row],
                        bitorder="little"))
                    columns.append(pa.Array.from_buffers(out_type, row, [vbuf, data],
                                                         null_count=nulls[f]))
                else:
                    obuf = fixed_buf.slice(f * (n + 1) * 8, (row + 1) * 4)
                    sdata = pa.py_buffer((<char*>sbuf[f].data)[:sbuf[f].size] if sbuf[f].size else b"")
                    col = pa.Array.from_buffers(out_type, row, [vbuf, obuf, sdata],
                                                null_count=nulls[f])
                    if sbuf[f].size and np.frombuffer(sdata, dtype=np.uint8).max() >= 0x80:
                        col.validate(full=True)  # non-ASCII: check UTF-8 (ArrowInvalid if bad)
                    columns.append(col)
            return columns, bad
        finally:
            for f in range(nf):
                free(sbuf[f].data)
            free(vptr); free(dptr); free(optr); free(sbuf); free(nulls)


cdef str _token(const char* p, const char* end):
    """The text of the value starting at p (up to a delimiter, at most 32 bytes), for reasons."""
    cdef const char* q = p
    while q < end and q - p < 32 and not (q[0] == c',' or q[0] == c'}' or q[0] == c']'
                                           or q[0] == c' ' or q[0] == c'\n' or q[0] == c'\t'
                                           or q[0] == c'\r'):
        q += 1
    return (<bytes>p[:q - p]).decode("utf-8", "replace")


cdef str _json_kind(char c):
    if c == c'"':
        return "string"
    if c == c't' or c == c'f':
        return "boolean"
    if c == c'{':
        return "object"
    if c == c'[':
        return "array"
    if c == c'-' or (c'0' <= c <= c'9'):
        return "number"
    return "invalid value"


# ------------------------------------------------------------------------------------------------
# Encoding: Arrow columns -> one flat JSON object per row (the ``to_kafka`` sink)
# ------------------------------------------------------------------------------------------------
from cpython.object cimport PyObject
from cpython.list cimport PyList_GET_ITEM
from cpython.bytes cimport PyBytes_FromStringAndSize


cdef extern from "Python.h":
    char* _repr_double "PyOS_double_to_string" (double val, char format_code, int precision,
                                                 int flags, int* type)
    void PyErr_Clear()
    void PyMem_Free(void* p)
    int Py_DTSF_ADD_DOT_0

# column kinds of encode_arrow: how a row's value is read from the Arrow buffers
DEF K_F64 = 0
DEF K_F32 = 1
DEF K_I8 = 2
DEF K_I16 = 3
DEF K_I32 = 4
DEF K_I64 = 5
DEF K_U8 = 6
DEF K_U16 = 7
DEF K_U32 = 8
DEF K_U64 = 9
DEF K_BOOL = 10
DEF K_STR32 = 11   # string: int32 offsets
DEF K_STR64 = 12   # large_string: int64 offsets
DEF K_TS = 13      # timestamp: int64 times ``scale`` (to nanoseconds)
DEF K_RAW = 14     # a list of JSON texts, one per row (any other type)

#: Arrow type id -> kind, for the types read straight from their buffers
_ARROW_KINDS = {pa.float64().id: K_F64, pa.float32().id: K_F32, pa.int8().id: K_I8,
                pa.int16().id: K_I16, pa.int32().id: K_I32, pa.int64().id: K_I64,
                pa.uint8().id: K_U8, pa.uint16().id: K_U16, pa.uint32().id: K_U32,
                pa.uint64().id: K_U64, pa.bool_().id: K_BOOL, pa.string().id: K_STR32,
                pa.large_string().id: K_STR64, pa.timestamp("ns").id: K_TS}
_NS_PER = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_WIDTH = {K_F64: 8, K_F32: 4, K_I8: 1, K_I16: 2, K_I32: 4, K_I64: 8, K_U8: 1, K_U16: 2,
          K_U32: 4, K_U64: 8, K_TS: 8}


def encodable(pa_type):
    """Whether :func:`encode_arrow` reads a column of ``pa_type`` straight from its buffers."""
    return pa_type.id in _ARROW_KINDS


cdef struct EncCol:
    int kind
    const char* key          # '"name":'
    Py_ssize_t keylen
    const uint8_t* data      # values, at the array's first row (bool: the bitmap's base)
    int64_t bit_offset       # bool: the array's offset in bits
    const uint8_t* valid     # validity bitmap's base, or NULL (no nulls)
    int64_t valid_offset     # the array's offset in that bitmap
    const int32_t* off32     # string: n + 1 offsets, at the array's first row
    const int64_t* off64     # large string: same
    int64_t datalen          # string: bytes in the data buffer
    int64_t scale            # timestamp: nanoseconds per unit
    const char** raw         # K_RAW: each row's JSON text ...
    Py_ssize_t* raw_len      # ... and its length (the bytes kept alive by the caller)


# what went wrong formatting rows without the GIL (raised once it is held again)
DEF ERR_MEMORY = 1
DEF ERR_TIMESTAMP = 2
DEF ERR_OFFSETS = 3


cdef struct EncError:
    int code
    Py_ssize_t column
    Py_ssize_t row
    int64_t value


cdef inline int _put(StrBuf* b, const char* s, Py_ssize_t n) noexcept nogil:
    cdef char* d
    if b.size + n > b.cap and _grow(b, n) < 0:
        return -1
    d = b.data + b.size
    # short pieces (member names, numbers) as two overlapping fixed-size moves, which the
    # compiler inlines, instead of a call into the C library per piece; reads stay in s[0:n]
    if n >= 8 and n <= 16:
        memcpy(d, s, 8)
        memcpy(d + n - 8, s + n - 8, 8)
    elif n >= 4 and n < 8:
        memcpy(d, s, 4)
        memcpy(d + n - 4, s + n - 4, 4)
    elif n < 4:
        if n > 0:
            d[0] = s[0]
            d[n >> 1] = s[n >> 1]
            d[n - 1] = s[n - 1]
    else:
        memcpy(d, s, n)
    b.size += n
    return 0


cdef inline int _put_int(StrBuf* b, int64_t v) noexcept nogil:
    cdef char tmp[24]
    cdef int k = 24
    cdef uint64_t u
    cdef bint neg = v < 0
    u = <uint64_t>(-(v + 1)) + 1 if neg else <uint64_t>v
    while True:
        k -= 1
        tmp[k] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if neg:
        k -= 1
        tmp[k] = c'-'
    return _put(b, tmp + k, 24 - k)


cdef const char* _HEX = b"0123456789abcdef"


cdef extern from *:
    # GCC/Clang's 128-bit integer: exact products of a 53-bit significand and 10^d (d <= 21)
    ctypedef unsigned long long u128 "unsigned __int128"

cdef u128[22] _POW10_U128
_POW10_U128[0] = 1
for _k in range(1, 22):
    _POW10_U128[_k] = _POW10_U128[_k - 1] * 10


cdef inline bint _decimal_fits(uint64_t m, int s, bint low_closer, int d,
                               uint64_t* digits) noexcept nogil:
    """For x = m 2^-s: ``digits`` = y = round(x 10^d) (ties to even), and whether the decimal
    y 10^-d reads back as x, i.e. lies in x's rounding interval (m - 1/2, m + 1/2) 2^-s
    (m - 1/4 below when x is a power of two; the bounds included when m is even, as a reader
    rounding ties to even would return x).  Exact: 4 y 2^s and (4m +- 2) 10^d are compared
    as 128-bit integers (m < 2^53, 10^d < 2^70, s <= 66)."""
    cdef u128 p = _POW10_U128[d]
    cdef u128 t = <u128>m * p
    cdef u128 half = (<u128>1) << (s - 1)
    cdef u128 y = (t + half) >> s
    cdef u128 lhs, lo, hi
    if (t & ((half << 1) - 1)) == half and (y & 1):
        y -= 1
    digits[0] = <uint64_t>y
    lhs = y << (s + 2)
    lo = <u128>(4 * m - (1 if low_closer else 2)) * p
    hi = <u128>(4 * m + 2) * p
    if m & 1:
        return lo < lhs and lhs < hi
    return lo <= lhs and lhs <= hi


cdef inline bint _short_fits(double ax, int d, uint64_t* digits) noexcept nogil:
    """The same question as :func:`_decimal_fits` for ax 10^d < 2^53 (up to 15 significant
    digits), in doubles: y and 10^d are exact and the division is correctly rounded, so y / 10^d
    is the double a reader returns for the decimal y 10^-d."""
    cdef double scaled = ax * _POW10[d]
    cdef uint64_t y
    if scaled >= 9007199254740992.0:
        return False
    y = <uint64_t>(scaled + 0.5)
    digits[0] = y
    return <double>y / _POW10[d] == ax


cdef int _put_double(StrBuf* b, double x) noexcept nogil:
    """A finite double in the shortest decimal form that reads back to exactly ``x``, the
    same text as Python's ``repr``.

    For 1e-4 <= |x| < 1e15 (prices, sizes: written positionally, as ``repr`` does): with
    x = m 2^-s, the fewest decimals d for which the nearest decimal y 10^-d lies in x's
    rounding interval (:func:`_decimal_fits`, exact integer arithmetic); among d-decimal
    values the nearest is the only candidate, and the fewest decimals are the fewest
    significant digits (Steele & White's shortest output, as ``repr`` gives).  15 significant
    digits are tried first, in doubles (:func:`_short_fits`): when they fit, the shortest
    form is theirs without trailing zeros; when they do not, neither does any shorter form,
    and 16 or 17 do (exact integers).  Other magnitudes: Python's
    shortest round-trip ``repr``."""
    cdef double ax = -x if x < 0 else x
    cdef uint64_t bits, m, y, u
    cdef int s, d, d15, e10, k, nd
    cdef bint low_closer
    cdef char tmp[48]
    cdef char digits[24]
    cdef char* txt
    if ax >= 1e-4 and ax < 1e15:
        memcpy(&bits, &ax, 8)
        m = (bits & 0xFFFFFFFFFFFFFULL) | 0x10000000000000ULL
        s = 1075 - <int>(bits >> 52)
        low_closer = (bits & 0xFFFFFFFFFFFFFULL) == 0
        e10 = 0  # about floor(log10(ax)); a miss by one only costs a step of the search
        if ax >= 1.0:
            while e10 < 14 and ax >= _POW10[e10 + 1]:
                e10 += 1
        else:
            while e10 > -4 and ax * _POW10[-e10] < 1.0:
                e10 -= 1
        d15 = 14 - e10
        if _short_fits(ax, d15, &y):
            # 15 significant digits or fewer.  A shorter form v that reads back lies within
            # half an ulp of x (< 2^-53 x), so x 10^d15 is within 0.12 of the integer v 10^d15
            # and y is v with zeros appended: dropping them gives the fewest decimals
            d = d15
            while d > 0 and y % 10 == 0:
                y //= 10
                d -= 1
        else:  # 16 or 17
            d = d15 + 1
            while d <= 21 and not _decimal_fits(m, s, low_closer, d, &y):
                d += 1
        if d <= 21:
            nd = 0
            u = y
            while True:
                digits[nd] = <char>(48 + u % 10)
                nd += 1
                u //= 10
                if u == 0:
                    break
            k = 0
            if x < 0:
                tmp[k] = c'-'
                k += 1
            if d == 0:
                while nd:
                    nd -= 1
                    tmp[k] = digits[nd]
                    k += 1
                tmp[k] = c'.'
                tmp[k + 1] = c'0'
                k += 2
            elif nd > d:
                while nd > d:
                    nd -= 1
                    tmp[k] = digits[nd]
                    k += 1
                tmp[k] = c'.'
                k += 1
                while nd:
                    nd -= 1
                    tmp[k] = digits[nd]
                    k += 1
            else:
                tmp[k] = c'0'
                tmp[k + 1] = c'.'
                k += 2
                while d > nd:
                    tmp[k] = c'0'
                    k += 1
                    d -= 1
                while nd:
                    nd -= 1
                    tmp[k] = digits[nd]
                    k += 1
            return _put(b, tmp, k)
    with gil:  # rare magnitudes: Python's own repr
        txt = _repr_double(x, c'r', 0, Py_DTSF_ADD_DOT_0, NULL)
        if txt == NULL:
            PyErr_Clear()
            return -1
        k = _put(b, txt, strlen_(txt))
        PyMem_Free(txt)
    return k


cdef int _put_str(StrBuf* b, const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """A JSON string: quote, backslash and control characters escaped, UTF-8 kept as is."""
    cdef Py_ssize_t i, start = 0
    cdef unsigned char ch
    cdef char esc[6]
    if _grow(b, n + 2) < 0:
        return -1
    b.data[b.size] = c'"'
    b.size += 1
    for i in range(n):
        ch = s[i]
        if ch >= 0x20 and ch != 0x22 and ch != 0x5c:
            continue
        if _put(b, <const char*>s + start, i - start) < 0:
            return -1
        start = i + 1
        if ch == 0x22:
            if _put(b, b'\\"', 2) < 0:
                return -1
        elif ch == 0x5c:
            if _put(b, b'\\\\', 2) < 0:
                return -1
        elif ch == 0x0a:
            if _put(b, b'\\n', 2) < 0:
                return -1
        elif ch == 0x0d:
            if _put(b, b'\\r', 2) < 0:
                return -1
        elif ch == 0x09:
            if _put(b, b'\\t', 2) < 0:
                return -1
        else:
            esc[0] = c'\\'; esc[1] = c'u'; esc[2] = c'0'; esc[3] = c'0'
            esc[4] = _HEX[ch >> 4]; esc[5] = _HEX[ch & 15]
            if _put(b, esc, 6) < 0:
                return -1
    if _put(b, <const char*>s + start, n - start) < 0:
        return -1
    return _put(b, b'"', 1)


cdef inline bint _bit(const uint8_t* bits, int64_t i) noexcept nogil:
    return (bits[i >> 3] >> (i & 7)) & 1


cdef inline const uint8_t* _address(object buf):
    return <const uint8_t*><size_t>buf.address


cdef int _set_column(EncCol* col, str name, object values, Py_ssize_t n, list keep) except -1:
    """Fill ``col`` from a pyarrow Array (a type :func:`encodable` accepts) or a list of JSON
    texts; the objects whose memory it points into are appended to ``keep``."""
    cdef int kind
    cdef int64_t offset
    cdef Py_ssize_t i
    col.off32 = NULL
    col.off64 = NULL
    col.valid = NULL
    col.raw = NULL
    col.raw_len = NULL
    col.data = NULL
    col.scale = 1
    col.bit_offset = 0
    col.valid_offset = 0
    col.datalen = 0
    if isinstance(values, list):
        if len(<list>values) != n:
            raise ValueError(f"column {name!r}: {len(values)} JSON texts for {n} rows")
        for v in <list>values:
            if not PyBytes_Check(v):
                raise TypeError(f"column {name!r}: JSON texts must be bytes, "
                                f"got {type(v).__name__}")
        col.kind = K_RAW
        keep.append(values)
        ptrs = np.empty(n, dtype=np.uintp)
        lens = np.empty(n, dtype=np.intp)
        keep.append(ptrs)
        keep.append(lens)
        col.raw = <const char**><char*>_data_ptr(ptrs)
        col.raw_len = <Py_ssize_t*><char*>_data_ptr(lens)
        for i in range(n):
            v = (<list>values)[i]
            col.raw[i] = PyBytes_AS_STRING(v)
            col.raw_len[i] = PyBytes_GET_SIZE(v)
        return 0
    if not isinstance(values, pa.Array):
        raise TypeError(f"column {name!r}: expected a pyarrow Array or a list of JSON texts, "
                        f"got {type(values).__name__}")
    if len(values) != n:
        raise ValueError(f"column {name!r}: {len(values)} values for {n} rows")
    t = values.type
    kind = _ARROW_KINDS.get(t.id, -1)
    if kind < 0:
        raise TypeError(f"column {name!r}: type {t} is not encoded from its buffers")
    col.kind = kind
    offset = values.offset
    bufs = values.buffers()
    keep.append(bufs)
    if values.null_count and bufs[0] is not None:
        col.valid = _address(bufs[0])
        col.valid_offset = offset
    if kind == K_TS:
        col.scale = _NS_PER[t.unit]
    if n == 0:
        return 0
    if kind == K_BOOL:
        col.data = _address(bufs[1])
        col.bit_offset = offset
    elif kind == K_STR32:
        col.off32 = (<const int32_t*>_address(bufs[1])) + offset
        col.data = _address(bufs[2]) if bufs[2] is not None else <const uint8_t*>b""
        col.datalen = bufs[2].size if bufs[2] is not None else 0
    elif kind == K_STR64:
        col.off64 = (<const int64_t*>_address(bufs[1])) + offset
        col.data = _address(bufs[2]) if bufs[2] is not None else <const uint8_t*>b""
        col.datalen = bufs[2].size if bufs[2] is not None else 0
    else:
        col.data = _address(bufs[1]) + offset * <int>_WIDTH[kind]
    return 0


cdef inline int _put_uint(StrBuf* b, uint64_t u) noexcept nogil:
    cdef char tmp[24]
    cdef int k = 24
    while True:
        k -= 1
        tmp[k] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    return _put(b, tmp + k, 24 - k)


cdef inline bint _string_span(EncCol* col, Py_ssize_t i, int64_t* start,
                              int64_t* stop) noexcept nogil:
    """Row i's bytes in a string column's data; False if its offsets leave the data."""
    if col.kind == K_STR32:
        start[0] = col.off32[i]
        stop[0] = col.off32[i + 1]
    else:
        start[0] = col.off64[i]
        stop[0] = col.off64[i + 1]
    return 0 <= start[0] <= stop[0] <= col.datalen


cdef int _put_value(StrBuf* b, EncCol* col, Py_ssize_t i, EncError* err) noexcept nogil:
    """Row i of ``col`` as JSON; 0, or -1 with ``err`` filled (its column left to the caller)."""
    cdef double x
    cdef int64_t v, start, stop
    cdef int kind = col.kind
    cdef int rc
    if col.valid != NULL and not _bit(col.valid, col.valid_offset + i):
        rc = _put(b, b"null", 4)
    elif kind == K_F64 or kind == K_F32:
        x = (<const double*>col.data)[i] if kind == K_F64 else (<const float*>col.data)[i]
        rc = _put_double(b, x) if isfinite(x) else _put(b, b"null", 4)
    elif kind == K_I64:
        rc = _put_int(b, (<const int64_t*>col.data)[i])
    elif kind == K_TS:
        v = (<const int64_t*>col.data)[i]
        if col.scale != 1:
            if v > 9223372036854775807LL // col.scale or v < -9223372036854775807LL // col.scale:
                err.code = ERR_TIMESTAMP
                err.row = i
                err.value = v
                return -1
            v *= col.scale
        rc = _put_int(b, v)
    elif kind == K_I32:
        rc = _put_int(b, (<const int32_t*>col.data)[i])
    elif kind == K_I16:
        rc = _put_int(b, (<const short*>col.data)[i])
    elif kind == K_I8:
        rc = _put_int(b, (<const signed char*>col.data)[i])
    elif kind == K_U64:
        rc = _put_uint(b, (<const uint64_t*>col.data)[i])
    elif kind == K_U32:
        rc = _put_uint(b, (<const uint32_t*>col.data)[i])
    elif kind == K_U16:
        rc = _put_uint(b, (<const unsigned short*>col.data)[i])
    elif kind == K_U8:
        rc = _put_uint(b, col.data[i])
    elif kind == K_BOOL:
        rc = (_put(b, b"true", 4) if _bit(col.data, col.bit_offset + i)
              else _put(b, b"false", 5))
    elif kind == K_STR32 or kind == K_STR64:
        if not _string_span(col, i, &start, &stop):
            err.code = ERR_OFFSETS
            err.row = i
            return -1
        rc = _put_str(b, <const unsigned char*>col.data + start, stop - start)
    else:
        rc = _put(b, col.raw[i], col.raw_len[i])
    if rc < 0:
        err.code = ERR_MEMORY
        err.row = i
    return rc


cdef int _format_rows(EncCol* cols, Py_ssize_t ncol, Py_ssize_t n, StrBuf* buf,
                      Py_ssize_t* ends, EncError* err) noexcept nogil:
    """Every row's JSON object, one after the other in ``buf``; ``ends[i]``: where row i ends.
    Touches no Python object (runs without the GIL but for a rare float magnitude)."""
    cdef Py_ssize_t i, c
    for i in range(n):
        if _put(buf, b"{", 1) < 0:
            err.code = ERR_MEMORY
            return -1
        for c in range(ncol):
            if c > 0 and _put(buf, b",", 1) < 0:
                err.code = ERR_MEMORY
                return -1
            if _put(buf, cols[c].key, cols[c].keylen) < 0:
                err.code = ERR_MEMORY
                return -1
            if _put_value(buf, &cols[c], i, err) < 0:
                err.column = c
                return -1
        if _put(buf, b"}", 1) < 0:
            err.code = ERR_MEMORY
            return -1
        ends[i] = buf.size
    return 0


#: batches of at least this many rows are formatted without the GIL (another thread, such
#: as the consumer's, runs meanwhile); releasing it costs more than a few rows take
NOGIL_ROWS = 64


def encode_arrow(list columns, Py_ssize_t n, Py_ssize_t key_column=-1):
    """One flat JSON object (bytes) per row, members in column order, read straight from the
    Arrow buffers (no Python object per value); and, when ``key_column`` >= 0 names a string
    column, each row's value of it as UTF-8 bytes (None when null), for message keys.

    ``columns``: ``(name, values)`` per column, ``values`` a pyarrow Array of a type
    :func:`encodable` accepts (floats, integers, booleans, strings, timestamps) or a list of
    ``n`` JSON texts as bytes (any other type, encoded by the caller).  Nulls are written as
    null; so are NaN and infinities (JSON has neither).  A float is written as Python's
    ``repr`` writes it (the shortest text that reads back to it); a timestamp as integer
    nanoseconds; a string with quote, backslash and control characters escaped.  The rows are
    formatted without the GIL (from :data:`NOGIL_ROWS` rows on).

    Returns ``(texts, keys)``; ``keys`` is None unless asked for.
    """
    cdef Py_ssize_t ncol = len(columns), i, c, prev
    cdef EncCol* cols = <EncCol*>malloc(max(ncol, 1) * sizeof(EncCol))
    cdef Py_ssize_t* ends = <Py_ssize_t*>malloc(max(n, 1) * sizeof(Py_ssize_t))
    cdef EncCol* kc = NULL
    cdef StrBuf buf
    cdef EncError err
    cdef int rc
    cdef list keep = []
    cdef list out
    cdef list keys = None
    cdef list names = []
    cdef int64_t start, stop
    if cols == NULL or ends == NULL:
        free(cols)
        free(ends)
        raise MemoryError()
    buf.data = NULL
    buf.size = 0
    buf.cap = 0
    err.code = 0
    err.column = -1
    err.row = -1
    err.value = 0
    try:
        for c in range(ncol):
            name, values = columns[c]
            name = str(name)
            names.append(name)
            key = _json_key(name)
            keep.append(key)
            cols[c].key = PyBytes_AS_STRING(key)
            cols[c].keylen = PyBytes_GET_SIZE(key)
            _set_column(&cols[c], name, values, n, keep)
        if key_column >= 0:
            if key_column >= ncol or cols[key_column].kind not in (K_STR32, K_STR64):
                raise ValueError(f"key_column {key_column} is not a string column")
            kc = &cols[key_column]
        if n >= NOGIL_ROWS:
            with nogil:
                rc = _format_rows(cols, ncol, n, &buf, ends, &err)
        else:
            rc = _format_rows(cols, ncol, n, &buf, ends, &err)
        if rc < 0:
            if err.code == ERR_TIMESTAMP:
                raise ValueError(f"column {names[err.column]!r}: timestamp {err.value} (1 unit "
                                 f"= {cols[err.column].scale} ns) is outside the int64 "
                                 "nanosecond range")
            if err.code == ERR_OFFSETS:
                raise ValueError(f"column {names[err.column]!r}: string offsets of row "
                                 f"{err.row} out of the data's range")
            raise MemoryError()
        out = [None] * n
        prev = 0
        for i in range(n):
            out[i] = PyBytes_FromStringAndSize(buf.data + prev, ends[i] - prev)
            prev = ends[i]
        if kc != NULL:
            keys = [None] * n
            for i in range(n):
                if kc.valid == NULL or _bit(kc.valid, kc.valid_offset + i):
                    if not _string_span(kc, i, &start, &stop):
                        raise ValueError(f"column {names[key_column]!r}: string offsets of "
                                         f"row {i} out of the data's range")
                    keys[i] = PyBytes_FromStringAndSize(<const char*>kc.data + start,
                                                        stop - start)
        return out, keys
    finally:
        free(cols)
        free(ends)
        free(buf.data)


cdef inline Py_ssize_t strlen_(const char* s) noexcept nogil:
    cdef Py_ssize_t k = 0
    while s[k] != 0:
        k += 1
    return k


cdef bytes _json_key(object name):
    """``"name":`` with the name escaped as a JSON string."""
    cdef bytes raw = str(name).encode("utf-8")
    cdef StrBuf b
    b.data = NULL
    b.size = 0
    b.cap = 0
    try:
        if (_put_str(&b, <const unsigned char*>PyBytes_AS_STRING(raw), len(raw)) < 0
                or _put(&b, b":", 1) < 0):
            raise MemoryError()
        return PyBytes_FromStringAndSize(b.data, b.size)
    finally:
        free(b.data)


def message_fields(list msgs, int64_t unit_ns):
    """One pass over Kafka messages: ``(values, ref_ns, next_offsets)``.

    ``values``: each message's value; ``ref_ns``: int64 array of each message's timestamp
    times ``unit_ns`` (-1 when it has none or it is not positive); ``next_offsets``:
    ``{(topic, partition): last offset + 1}`` over the messages."""
    cdef Py_ssize_t n = len(msgs), i
    cdef list values = [None] * n
    cdef object ref = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] r = ref
    cdef dict offsets = {}
    cdef object m, ts, key, prev_key = None
    cdef object topic, part
    cdef int64_t t
    for i in range(n):
        m = msgs[i]
        values[i] = m.value()
        ts = m.timestamp()
        t = ts[1]
        r[i] = t * unit_ns if ts[0] and t > 0 else -1
        topic = m.topic()
        part = m.partition()
        if prev_key is None or (<tuple>prev_key)[1] != part or (<tuple>prev_key)[0] != topic:
            prev_key = (topic, part)
        offsets[prev_key] = m.offset() + 1
    return values, ref, offsets
