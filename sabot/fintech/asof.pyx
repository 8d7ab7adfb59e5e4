# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""ASOF joins over Arrow batches.

Semantics are those of ``pandas.merge_asof(left, right, on=, by=, tolerance=, direction=,
allow_exact_matches=)``: every left row is kept, in order, and receives the value columns of the
right row chosen by ``direction`` among the right rows with the same ``by`` key:

* ``backward``: the last right row with ``r.on <= l.on`` (``<`` when ``allow_exact_matches`` is
  False); among equal timestamps the last one.
* ``forward``: the first right row with ``r.on >= l.on`` (``>`` when not exact); among equal
  timestamps the first one.
* ``nearest``: the backward and the forward candidate (each subject to the tolerance); the closer
  one wins, a tie goes to the backward candidate (pandas' choice).
* ``tolerance``: a candidate further than ``tolerance`` from ``l.on`` (``|l.on - r.on| > tol``)
  is no match.

Unmatched left rows get nulls in the right columns. Null keys match null keys (as in pandas).

Implementation: keys are dictionary-encoded once (short strings hashed in C; with string keys on
both sides of a large join the left's are hashed in a second thread while the right is indexed)
and the left's dictionary is mapped to the right's integer codes. When both sides are globally
sorted (the normal case) one nogil merge pass keeps the latest right row per key and writes the
matched right values straight into Arrow buffers (8-byte columns without nulls) or records the
matched row for a gather; the backward join with a key takes the right rows two at a time without
a jump (``_asof_backward``), a large left as two halves in two threads. Otherwise the right rows are grouped per key by a counting sort and a
cursor per key (positioned by binary search on first use) advances through them.

Also here: :class:`AsofJoinKernel` (right side indexed once, many left batches) and
:class:`StreamingAsofJoinKernel` / :func:`asof_join_streaming` (interleaved batches of both sides,
watermark semantics and late-row accounting described on the class).
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pat

from libc.stdint cimport INT64_MIN, int8_t, int16_t, int32_t, int64_t, uint8_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from ._columns import check_batch, require_column
from ._kernel import _output_buffer
from ..timeunits import UNIT_NS as _UNIT_NS, check_unit, duration_ns, to_ns

log = logging.getLogger(__name__)

__all__ = [
    "asof_join",
    "asof_join_table",
    "AsofJoinKernel",
    "StreamingAsofJoinKernel",
    "asof_join_streaming",
]

DEF BACKWARD = 0
DEF FORWARD = 1
DEF NEAREST = 2


_DIRECTIONS = {"backward": BACKWARD, "forward": FORWARD, "nearest": NEAREST}

#: Schema metadata key listing the columns that already carry an exchange prefix.
PREFIXED_META_KEY = b"sabot.asof.prefixed"
#: Exchanges whose ``<name>_`` prefix is recognised as "already prefixed": every registered
#: venue (a live set view of :mod:`sabot.venues`, read at each join's planning).
from ..schema import EXTRA_FIELDS as _VENUE_FIELDS

KNOWN_EXCHANGES = _VENUE_FIELDS.keys()


# --------------------------------------------------------------------------------------------
# nogil cores
# --------------------------------------------------------------------------------------------

cdef extern from *:
    """
    #include <string.h>
    /* The 8 bytes at p as one word, in a register (memcpy into a local whose address is taken
     * would keep the word on the stack: a store and a reload per key). */
    static inline uint64_t sabot_load_word(const uint8_t* p) { uint64_t w; memcpy(&w, p, 8); return w; }
    /* the n < 8 bytes at p, zero-padded (the last key of a buffer, where 8 bytes would overrun) */
    static inline uint64_t sabot_load_bytes(const uint8_t* p, size_t n) { uint64_t w = 0; memcpy(&w, p, n); return w; }
    """
    uint64_t _load_word "sabot_load_word"(const uint8_t* p) noexcept nogil
    void _prefetch "__builtin_prefetch"(const void* address) noexcept nogil
    uint64_t _load_bytes "sabot_load_bytes"(const uint8_t* p, size_t n) noexcept nogil


cdef extern from *:
    """
    /* Backward ASOF match of two globally sorted sides with a key, the join's hot loop.
     *
     * Between two left rows there are few right rows (about n_right / n_left) and how many is
     * random, so a loop "take right rows while they are at or before t" mispredicts its exit on
     * about every left row.  Here right rows are taken two at a time without a jump: each
     * comparison only selects whether last[key] is rewritten and what is added to the cursor;
     * the loop goes round again only when both were taken (rare).  The matched row's 8-byte
     * values are written straight into the output columns (no index array), masked to 0 when
     * there is no match, and the validity bits are collected in a register, a byte per 8 rows.
     * The left's global order is checked on the way (no separate pass).
     *
     * lookup: left code -> right code, keys absent on the right sent to n_keys; last: n_keys + 1
     * slots (the last stays -1), each key's latest right row among the rows before j_start
     * (-1: none), the right rows taken before the first left row.  utol: the tolerance (all ones: none).  out (if not NULL): the
     * matched right row or -1.  n_right > 0.  Returns -1, or the first left row before its
     * predecessor in time (then nothing written is meaningful: the caller takes another path). */
    static inline __attribute__((always_inline)) int64_t sabot_asof_backward_body(
            const int64_t* l_on, const int32_t* l_code, const int32_t* lookup, int64_t n_left,
            const int64_t* r_on, const int32_t* r_code, int64_t n_right, int32_t n_keys,
            int64_t* last, uint64_t utol, int64_t* out, int n_cols, const int64_t* const* srcs,
            int64_t* const* dsts, uint8_t* valid, int64_t* null_count, int64_t j_start,
            const int exact, const int to_out)
    {
        int64_t j = j_start, nulls = 0, prev = INT64_MIN, unsorted = 0, np = n_right - 1;
        for (int64_t base = 0; base < n_left; base += 8) {
            uint8_t acc = 0;
            int lim = base + 8 <= n_left ? 8 : (int)(n_left - base);
            for (int bit = 0; bit < lim; bit++) {
                int64_t i = base + bit, t = l_on[i];
                unsorted |= t < prev;
                prev = t;
                while (j < np) {
                    int64_t c0 = exact ? r_on[j] <= t : r_on[j] < t;
                    int64_t c1 = c0 & (exact ? r_on[j + 1] <= t : r_on[j + 1] < t);
                    int64_t m0 = -c0, m1 = -c1;
                    int32_t k0 = r_code[j], k1 = r_code[j + 1];
                    last[k0] = (last[k0] & ~m0) | (j & m0);
                    last[k1] = (last[k1] & ~m1) | ((j + 1) & m1);
                    j += c0 + c1;
                    if (!c1) break;
                }
                if (j >= np) {                       /* the last right row */
                    while (j < n_right && (exact ? r_on[j] <= t : r_on[j] < t)) {
                        last[r_code[j]] = j;
                        j++;
                    }
                }
                int64_t b = last[lookup[l_code[i]]];
                int64_t bs = b & ~(b >> 63);         /* a row that may be read when b = -1 */
                int64_t ok = (b >= 0) & ((uint64_t)(t - r_on[bs]) <= utol);
                if (to_out) {
                    out[i] = (b & -ok) | (ok - 1);
                } else {
                    for (int c = 0; c < n_cols; c++) dsts[c][i] = srcs[c][bs] & -ok;
                    acc |= (uint8_t)(ok << bit);
                    nulls += 1 - ok;
                }
            }
            if (!to_out) valid[base >> 3] = acc;
            if (unsorted) {
                for (int64_t i = base > 0 ? base : 1; i < n_left; i++)
                    if (l_on[i] < l_on[i - 1]) return i;
            }
        }
        if (null_count) *null_count = nulls;
        return -1;
    }

    static int64_t sabot_asof_backward(
            const int64_t* l_on, const int32_t* l_code, const int32_t* lookup, int64_t n_left,
            const int64_t* r_on, const int32_t* r_code, int64_t n_right, int32_t n_keys,
            int64_t* last, int exact, uint64_t utol, int64_t* out, int n_cols,
            const int64_t* const* srcs, int64_t* const* dsts, uint8_t* valid, int64_t* null_count,
            int64_t j_start)
    {
        if (out != NULL) {
            if (exact)
                return sabot_asof_backward_body(l_on, l_code, lookup, n_left, r_on, r_code, n_right,
                    n_keys, last, utol, out, 0, NULL, NULL, NULL, NULL, j_start, 1, 1);
            return sabot_asof_backward_body(l_on, l_code, lookup, n_left, r_on, r_code, n_right,
                n_keys, last, utol, out, 0, NULL, NULL, NULL, NULL, j_start, 0, 1);
        }
        /* the column count a constant in the common cases (a price; bid and ask; with a size):
         * the per-row column loop is unrolled and its pointers stay in registers */
    #define SABOT_ASOF_FUSED(COLS) \
        return exact \
            ? sabot_asof_backward_body(l_on, l_code, lookup, n_left, r_on, r_code, n_right, \
                n_keys, last, utol, NULL, COLS, srcs, dsts, valid, null_count, j_start, 1, 0) \
            : sabot_asof_backward_body(l_on, l_code, lookup, n_left, r_on, r_code, n_right, \
                n_keys, last, utol, NULL, COLS, srcs, dsts, valid, null_count, j_start, 0, 0)
        switch (n_cols) {
            case 1: SABOT_ASOF_FUSED(1);
            case 2: SABOT_ASOF_FUSED(2);
            case 3: SABOT_ASOF_FUSED(3);
            default: SABOT_ASOF_FUSED(n_cols);
        }
    #undef SABOT_ASOF_FUSED
    }
    """
    int64_t _asof_backward "sabot_asof_backward"(
        const int64_t* l_on, const int32_t* l_code, const int32_t* lookup, int64_t n_left,
        const int64_t* r_on, const int32_t* r_code, int64_t n_right, int32_t n_keys,
        int64_t* last, int exact, uint64_t utol, int64_t* out, int n_cols,
        const int64_t** srcs, int64_t** dsts, uint8_t* valid, int64_t* null_count,
        int64_t j_start) noexcept nogil

cdef int64_t _group_right(const int64_t* on, const int32_t* code, int64_t n, int32_t n_keys,
                          int64_t* offsets, int64_t* fill, int64_t* g_on, int64_t* g_idx,
                          int64_t* last) noexcept nogil:
    """Counting sort of the right rows by key, stable. Returns the first row that is out of
    order within its key, or -1. ``offsets`` (n_keys+1) must be zeroed."""
    cdef int64_t i, p
    cdef int32_t k
    for k in range(n_keys):
        last[k] = INT64_MIN
    for i in range(n):
        k = code[i]
        if on[i] < last[k]:
            return i
        last[k] = on[i]
        offsets[k + 1] += 1
    for k in range(n_keys):
        offsets[k + 1] += offsets[k]
        fill[k] = offsets[k]
    for i in range(n):
        k = code[i]
        p = fill[k]
        g_on[p] = on[i]
        g_idx[p] = i
        fill[k] = p + 1
    return -1


cdef int64_t _first_unsorted(const int64_t* on, int64_t n) noexcept nogil:
    cdef int64_t i
    for i in range(1, n):
        if on[i] < on[i - 1]:
            return i
    return -1


cdef inline int64_t _upper_bound(const int64_t* a, int64_t lo, int64_t hi, int64_t t) noexcept nogil:
    """First position in [lo, hi) with a[p] > t."""
    cdef int64_t mid
    while lo < hi:
        mid = lo + (hi - lo) // 2
        if a[mid] <= t:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline int64_t _lower_bound(const int64_t* a, int64_t lo, int64_t hi, int64_t t) noexcept nogil:
    """First position in [lo, hi) with a[p] >= t."""
    cdef int64_t mid
    while lo < hi:
        mid = lo + (hi - lo) // 2
        if a[mid] < t:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef int64_t _match(const int64_t* l_on, const int32_t* l_code, const int32_t* lookup, int64_t n_left,
                    const int64_t* g_on, const int64_t* g_idx, const int64_t* offsets,
                    int64_t* bcur, int64_t* fcur, int64_t* last_on,
                    int direction, bint exact, bint has_tol, int64_t tol,
                    int64_t* out) noexcept nogil:
    """Matched right row (original index, -1 if none) for every left row.

    ``bcur[k]``/``fcur[k]`` are per-key cursors (-1 = not yet positioned); ``last_on[k]`` the
    previous left ``on`` of key k. Returns the first left row out of order within its key, or -1.
    ``l_code`` NULL means one key (0); ``lookup`` (if not NULL) translates left codes to right
    codes (-1: key absent on the right); ``g_idx`` NULL means identity."""
    cdef int64_t i, t, c, start, end, b, f
    cdef int32_t k = 0
    for i in range(n_left):
        if l_code != NULL:
            k = l_code[i]
            if lookup != NULL:
                k = lookup[k]
            if k < 0:
                out[i] = -1
                continue
        t = l_on[i]
        if t < last_on[k]:
            return i
        last_on[k] = t
        start = offsets[k]
        end = offsets[k + 1]
        b = -1
        f = -1
        if direction != FORWARD:
            c = bcur[k]
            if c < 0:
                c = _upper_bound(g_on, start, end, t) if exact else _lower_bound(g_on, start, end, t)
            elif exact:
                while c < end and g_on[c] <= t:
                    c += 1
            else:
                while c < end and g_on[c] < t:
                    c += 1
            bcur[k] = c
            if c > start and (not has_tol or t - g_on[c - 1] <= tol):
                b = c - 1
        if direction != BACKWARD:
            c = fcur[k]
            if c < 0:
                c = _lower_bound(g_on, start, end, t) if exact else _upper_bound(g_on, start, end, t)
            elif exact:
                while c < end and g_on[c] < t:
                    c += 1
            else:
                while c < end and g_on[c] <= t:
                    c += 1
            fcur[k] = c
            if c < end and (not has_tol or g_on[c] - t <= tol):
                f = c
        if direction == NEAREST and b >= 0 and f >= 0:
            if g_on[f] - t < t - g_on[b]:
                b = f
        elif b < 0:
            b = f
        if b >= 0 and g_idx != NULL:
            b = g_idx[b]
        out[i] = b
    return -1


cdef struct _Fused:
    # right 8-byte value columns written straight into the output (no index array)
    int n_cols
    const int64_t** srcs
    int64_t** dsts
    uint8_t* valid
    int64_t nulls


cdef inline void _put(int64_t* out, _Fused* fz, int64_t i, int64_t r) noexcept nogil:
    cdef int c
    if out != NULL:
        out[i] = r
    if fz != NULL:
        if r >= 0:
            for c in range(fz.n_cols):
                fz.dsts[c][i] = fz.srcs[c][r]
            fz.valid[i >> 3] |= <uint8_t>(1 << (i & 7))
        else:
            for c in range(fz.n_cols):
                fz.dsts[c][i] = 0
            fz.nulls += 1


cdef void _merge_match(const int64_t* l_on, const int32_t* l_code, const int32_t* lookup,
                       int64_t n_left, const int64_t* r_on, const int32_t* r_code,
                       int64_t n_right, int32_t n_keys, int64_t* last, int64_t* nxt,
                       int direction, bint exact, bint has_tol, int64_t tol,
                       int64_t* out, _Fused* fz) noexcept nogil:
    """Both sides globally sorted: one merge pass (two for nearest). ``last[k]`` is the latest
    right row of key k at or before the current left time (backward, scanning up); ``nxt[k]`` the
    earliest at or after it (forward, scanning down). Same conventions as ``_match``; results go
    to ``out`` and/or (backward, forward) straight into the fused output columns ``fz``."""
    cdef int64_t i, j, t, b, f
    cdef int32_t k = 0
    cdef int32_t kk
    cdef _Fused* fz_b = fz if direction == BACKWARD else NULL
    cdef _Fused* fz_f = fz if direction == FORWARD else NULL
    for kk in range(n_keys):
        last[kk] = -1
        nxt[kk] = -1
    if direction != FORWARD:
        j = 0
        for i in range(n_left):
            t = l_on[i]
            if exact:
                while j < n_right and r_on[j] <= t:
                    last[r_code[j] if r_code != NULL else 0] = j
                    j += 1
            else:
                while j < n_right and r_on[j] < t:
                    last[r_code[j] if r_code != NULL else 0] = j
                    j += 1
            if l_code != NULL:
                k = l_code[i]
                if lookup != NULL:
                    k = lookup[k]
                if k < 0:
                    _put(out, fz_b, i, -1)
                    continue
            b = last[k]
            if b >= 0 and has_tol and t - r_on[b] > tol:
                b = -1
            _put(out, fz_b, i, b)
    if direction != BACKWARD:
        j = n_right - 1
        i = n_left - 1
        while i >= 0:
            t = l_on[i]
            if exact:
                while j >= 0 and r_on[j] >= t:
                    nxt[r_code[j] if r_code != NULL else 0] = j
                    j -= 1
            else:
                while j >= 0 and r_on[j] > t:
                    nxt[r_code[j] if r_code != NULL else 0] = j
                    j -= 1
            f = -1
            if l_code != NULL:
                k = l_code[i]
                if lookup != NULL:
                    k = lookup[k]
            if k >= 0:
                f = nxt[k]
                if f >= 0 and has_tol and r_on[f] - t > tol:
                    f = -1
            if direction == FORWARD:
                _put(out, fz_f, i, f)
            else:
                b = out[i]
                if b < 0 or (f >= 0 and r_on[f] - t < t - r_on[b]):
                    out[i] = f
            i -= 1


cdef int64_t _validity_from_idx(const int64_t* idx, int64_t n, uint8_t* valid) noexcept nogil:
    """Bit i set when idx[i] >= 0; returns the number of unset bits."""
    cdef int64_t i, base, nulls = 0
    cdef int64_t nfull = n >> 3
    cdef uint8_t bits
    cdef int b
    cdef bint hit
    for base in range(nfull):
        bits = 0
        for b in range(8):
            hit = idx[base * 8 + b] >= 0
            bits |= <uint8_t>(hit << b)
            nulls += not hit
        valid[base] = bits
    if n & 7:
        bits = 0
        for i in range(nfull * 8, n):
            hit = idx[i] >= 0
            bits |= <uint8_t>(hit << (i & 7))
            nulls += not hit
        valid[nfull] = bits
    return nulls


cdef void _take8(const int64_t* src, const int64_t* idx, int64_t n, int64_t* dst) noexcept nogil:
    cdef int64_t i, j
    for i in range(n):
        j = idx[i]
        dst[i] = src[j] if j >= 0 else 0


cdef int64_t _encode_strings(const uint8_t* data, int64_t data_size, const void* offsets, bint large, int64_t offset,
                             const uint8_t* valid, int64_t n, int32_t* codes, int64_t* first_rows,
                             uint64_t* slot_hash, int32_t* slot_code, uint64_t* slot_word,
                             int8_t* slot_len, int64_t mask) noexcept nogil:
    """Dictionary-encode n strings: codes[i] in first-appearance order, first_rows[c] the first
    row of code c; null rows get code -1. Open addressing (table size mask+1, power of two,
    at least twice the number of distinct values; returns -1 when it fills up).

    Keys of up to 8 bytes (symbols) are read as one zero-padded word, hashed by one multiply
    and kept in their slot (word and length), so that a repeated key is recognised by
    comparing two integers, without reading the first row's bytes again; longer keys are
    hashed by FNV-1a and compared with the first row's bytes."""
    cdef int64_t i, a, b, pos, n_codes = 0, r, ra, rb, length
    cdef uint64_t h, word = 0
    cdef int32_t c
    cdef bint short
    for i in range(n):
        if valid != NULL and not ((valid[(i + offset) >> 3] >> ((i + offset) & 7)) & 1):
            codes[i] = -1
            continue
        if large:
            a = (<const int64_t*>offsets)[i + offset]
            b = (<const int64_t*>offsets)[i + offset + 1]
        else:
            a = (<const int32_t*>offsets)[i + offset]
            b = (<const int32_t*>offsets)[i + offset + 1]
        length = b - a
        short = length <= 8
        if (i & 7) == 0:                  # ask for the keys' bytes ahead (a hint, never faults)
            _prefetch(data + a + 1024)
        if short:
            # short key (symbols): its bytes as one zero-padded word, one multiply
            if a + 8 <= data_size:
                # keep ``length`` bytes, without a branch (lengths 7 and 8 mix at random
                # in symbol columns): two shifts, as one by 64 would be undefined
                word = _load_word(data + a) & (((<uint64_t>1 << (4 * length)) << (4 * length)) - 1)
            else:
                word = _load_bytes(data + a, length)
            h = (word ^ (<uint64_t>length << 59)) * <uint64_t>0x9E3779B97F4A7C15
            h ^= h >> 32
        else:
            h = <uint64_t>14695981039346656037ULL
            for pos in range(a, b):
                h = (h ^ data[pos]) * <uint64_t>1099511628211ULL
            h ^= h >> 29
        pos = <int64_t>(h & <uint64_t>mask)
        while True:
            c = slot_code[pos]
            if c < 0:
                if 2 * (n_codes + 1) > mask + 1:
                    return -1
                slot_code[pos] = <int32_t>n_codes
                slot_hash[pos] = h
                slot_word[pos] = word
                slot_len[pos] = <int8_t>length if short else -1
                first_rows[n_codes] = i
                codes[i] = <int32_t>n_codes
                n_codes += 1
                break
            if slot_hash[pos] == h:
                if short:
                    if slot_len[pos] == length and slot_word[pos] == word:
                        codes[i] = c
                        break
                elif slot_len[pos] < 0:
                    r = first_rows[c] + offset
                    if large:
                        ra = (<const int64_t*>offsets)[r]
                        rb = (<const int64_t*>offsets)[r + 1]
                    else:
                        ra = (<const int32_t*>offsets)[r]
                        rb = (<const int32_t*>offsets)[r + 1]
                    if rb - ra == length and memcmp(data + ra, data + a, length) == 0:
                        codes[i] = c
                        break
            pos = (pos + 1) & mask
    return n_codes


cdef void _gather_fixed(const uint8_t* src, const uint8_t* src_valid, int64_t src_offset,
                        int width, const int64_t* idx, int64_t n,
                        uint8_t* dst, uint8_t* dst_valid, int64_t* null_count) noexcept nogil:
    """dst[i] = src[idx[i]] for fixed-width values; invalid when idx < 0 or the source is null."""
    cdef int64_t i, j, nulls = 0, sj
    cdef uint8_t bits = 0
    cdef bint ok
    memset(dst_valid, 0, (n + 7) // 8)
    for i in range(n):
        j = idx[i]
        ok = j >= 0
        if ok and src_valid != NULL:
            sj = j + src_offset
            ok = (src_valid[sj >> 3] >> (sj & 7)) & 1
        if ok:
            dst_valid[i >> 3] |= <uint8_t>(1 << (i & 7))
            if width == 8:
                (<int64_t*>dst)[i] = (<const int64_t*>src)[j]
            elif width == 4:
                (<int32_t*>dst)[i] = (<const int32_t*>src)[j]
            elif width == 2:
                (<int16_t*>dst)[i] = (<const int16_t*>src)[j]
            else:
                memcpy(dst + i * width, src + j * width, width)
        else:
            nulls += 1
            if width == 8:
                (<int64_t*>dst)[i] = 0
            else:
                memset(dst + i * width, 0, width)
    null_count[0] = nulls


cdef void _gather_f64_nonnull(const double* src, const int64_t* idx, int64_t n,
                              double* dst, uint8_t* dst_valid, int64_t* null_count) noexcept nogil:
    """Fast path: 8-byte source without nulls; validity built a byte (8 rows) at a time."""
    cdef int64_t i, j, base, nulls = 0
    cdef int64_t nfull = n >> 3
    cdef uint8_t bits
    cdef int b
    for base in range(nfull):
        bits = 0
        for b in range(8):
            i = base * 8 + b
            j = idx[i]
            if j >= 0:
                dst[i] = src[j]
                bits |= <uint8_t>(1 << b)
            else:
                dst[i] = 0.0
                nulls += 1
        dst_valid[base] = bits
    if n & 7:
        bits = 0
        for i in range(nfull * 8, n):
            j = idx[i]
            if j >= 0:
                dst[i] = src[j]
                bits |= <uint8_t>(1 << (i & 7))
            else:
                dst[i] = 0.0
                nulls += 1
        dst_valid[nfull] = bits
    null_count[0] = nulls


# --------------------------------------------------------------------------------------------
# Python-level helpers
# --------------------------------------------------------------------------------------------

def _alloc(int64_t nbytes):
    """An output buffer: the kernel base's recycling pool (``_kernel._output_buffer``)."""
    return _output_buffer(nbytes)


def _contiguous(col):
    """A single Array from an Array or ChunkedArray (copies only when several chunks)."""
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 1:
            return col.chunk(0)
        if col.num_chunks == 0:
            return pa.array([], type=col.type)
        if pat.is_dictionary(col.type):
            col = col.unify_dictionaries()
            ind = pa.concat_arrays([c.indices for c in col.chunks])
            return pa.DictionaryArray.from_arrays(ind, col.chunk(0).dictionary)
        return col.combine_chunks()
    return col


def _int64_view(arr) -> np.ndarray:
    """Zero-copy int64 numpy view of a fixed-width 8-byte Arrow array (nulls already excluded)."""
    bufs = arr.buffers()
    data = bufs[1]
    if data is None or len(arr) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.frombuffer(data, dtype=np.int64, count=len(arr), offset=arr.offset * 8)


def _first_null(arr) -> int:
    valid = pc.is_valid(arr)
    return int(pc.index(valid, False).as_py())


class _OnSpec:
    """How the ``on`` column is read: kind ('timestamp' / 'int'), unit, tz."""

    __slots__ = ("kind", "unit", "tz")

    def __init__(self, kind, unit, tz):
        self.kind = kind
        self.unit = unit
        self.tz = tz


def _on_spec(field, side, on_unit):
    t = field.type
    if pat.is_timestamp(t):
        return _OnSpec("timestamp", t.unit, t.tz)
    if pat.is_integer(t):
        return _OnSpec("int", check_unit(on_unit), None)
    raise TypeError(
        f"{side} column {field.name!r} has type {t}; the 'on' column must be an Arrow timestamp "
        "or an integer (unit given by on_unit)"
    )


def _common_unit(lspec, rspec, on):
    if lspec.kind != rspec.kind:
        raise TypeError(
            f"'on' column {on!r} is a {lspec.kind} on the left but a {rspec.kind} on the right"
        )
    if lspec.kind == "timestamp" and (lspec.tz is None) != (rspec.tz is None):
        raise TypeError(
            f"'on' column {on!r}: cannot join a tz-aware timestamp with a tz-naive one "
            f"(left tz={lspec.tz}, right tz={rspec.tz})"
        )
    return lspec.unit if _UNIT_NS[lspec.unit] <= _UNIT_NS[rspec.unit] else rspec.unit


def _on_values(col, spec, unit, side, on) -> np.ndarray:
    """int64 numpy array of ``on`` in ``unit``; error on nulls."""
    arr = _contiguous(col)
    if arr.null_count:
        raise ValueError(
            f"{side} column {on!r} contains nulls (first at row {_first_null(arr)}); "
            "the 'on' column must not contain nulls"
        )
    if spec.kind != "timestamp" and arr.type != pa.int64():
        arr = arr.cast(pa.int64())
    values = _int64_view(arr)
    factor = _UNIT_NS[spec.unit] // _UNIT_NS[unit]
    if factor != 1:
        values = values * np.int64(factor)
    return values


def _tolerance_in(unit, tolerance_ms, tolerance, spec):
    """Tolerance as an int in ``unit`` (floor: exact for integer differences), or None."""
    unit_ns = _UNIT_NS[unit]
    if tolerance is not None:
        if isinstance(tolerance, bool):
            raise TypeError(f"tolerance must be a timedelta or an integer, got {tolerance!r}")
        if isinstance(tolerance, (_dt.timedelta, np.timedelta64)):
            tol_ns = duration_ns(tolerance, "tolerance", allow_zero=True)
        elif isinstance(tolerance, (int, np.integer)):
            # an integer in the on column's own unit
            tol_ns = to_ns(tolerance, spec.unit)
        else:
            raise TypeError(f"tolerance must be a timedelta or an integer, got {tolerance!r}")
    elif tolerance_ms is None:
        return None
    else:
        if isinstance(tolerance_ms, bool) or not isinstance(tolerance_ms, (int, float, np.integer, np.floating)):
            raise TypeError(f"tolerance_ms must be a number or None, got {tolerance_ms!r}")
        if tolerance_ms != tolerance_ms:
            raise ValueError("tolerance_ms must not be NaN")
        tol_ns = tolerance_ms * _UNIT_NS["ms"]  # floored below: exact for integer differences
        if isinstance(tol_ns, float):
            tol_ns = int(np.floor(tol_ns)) if np.isfinite(tol_ns) else None
            if tol_ns is None:
                return None
    if tol_ns < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance if tolerance is not None else tolerance_ms!r}")
    return tol_ns // unit_ns


def _encode_string_array(arr):
    """(int32 codes, dictionary) for a string/binary Array, nulls → len(dictionary); None when
    the number of distinct values is large (the caller then uses Arrow's dictionary_encode)."""
    cdef int64_t n = len(arr)
    cdef int64_t size = 1024
    cdef int64_t n_codes, i
    cdef int32_t* codes
    cdef int64_t[::1] first
    cdef uint64_t[::1] slot_hash
    cdef int32_t[::1] slot_code
    cdef uint64_t[::1] slot_word
    cdef int8_t[::1] slot_len
    cdef const uint8_t* data
    cdef const void* offsets
    cdef const uint8_t* valid = NULL
    cdef bint large = pat.is_large_string(arr.type) or pat.is_large_binary(arr.type)
    cdef int64_t off = arr.offset
    cdef int64_t data_size
    if n == 0:
        return None
    bufs = arr.buffers()
    offsets = <const void*><uint64_t>bufs[1].address
    data = <const uint8_t*><uint64_t>bufs[2].address if bufs[2] is not None else NULL
    if data == NULL:
        return None
    data_size = bufs[2].size
    if arr.null_count and bufs[0] is not None:
        valid = <const uint8_t*><uint64_t>bufs[0].address
    # the codes live only as long as the join: a recycled buffer spares the page faults of
    # fresh memory on every call (several ns per row of a large column)
    codes_buf = _alloc(n * 4)
    codes = <int32_t*><uint64_t>codes_buf.address
    while size <= 1 << 16:
        first = np.empty(size // 2 + 1, dtype=np.int64)
        slot_hash = np.empty(size, dtype=np.uint64)
        slot_code = np.full(size, -1, dtype=np.int32)
        slot_word = np.empty(size, dtype=np.uint64)
        slot_len = np.empty(size, dtype=np.int8)
        with nogil:
            n_codes = _encode_strings(data, data_size, offsets, large, off, valid, n, codes, &first[0],
                                      &slot_hash[0], &slot_code[0], &slot_word[0], &slot_len[0],
                                      size - 1)
        if n_codes >= 0:
            dictionary = arr.take(pa.array(np.asarray(first)[:n_codes]))
            if valid != NULL:
                with nogil:
                    for i in range(n):
                        if codes[i] < 0:
                            codes[i] = <int32_t>n_codes
            return np.frombuffer(codes_buf, dtype=np.int32, count=n), dictionary
        size *= 8
    return None


def _key_dictionary(col, side, by):
    """(indices as int32 numpy with nulls mapped to len(dictionary), dictionary)."""
    arr = _contiguous(col)
    t = arr.type
    if pat.is_null(t):  # every key null
        return np.zeros(len(arr), dtype=np.int32), pa.array([], type=pa.string())
    if not pat.is_dictionary(t):
        if not (pat.is_string(t) or pat.is_large_string(t) or pat.is_integer(t)
                or pat.is_binary(t) or pat.is_large_binary(t) or pat.is_boolean(t)):
            raise TypeError(
                f"{side} 'by' column {by!r} has type {t}; expected string, integer or dictionary keys"
            )
        if pat.is_string(t) or pat.is_large_string(t) or pat.is_binary(t) or pat.is_large_binary(t):
            encoded = _encode_string_array(arr)
            if encoded is not None:
                return encoded
        arr = pc.dictionary_encode(arr)
    dictionary = arr.dictionary
    indices = arr.indices
    if indices.null_count:
        indices = indices.fill_null(len(dictionary))
    if indices.type != pa.int32():
        indices = indices.cast(pa.int32())
    bufs = indices.buffers()
    if len(indices) == 0:
        codes = np.zeros(0, dtype=np.int32)
    else:
        codes = np.frombuffer(bufs[1], dtype=np.int32, count=len(indices), offset=indices.offset * 4)
    return codes, dictionary


#: Left rows from which the left's string keys are encoded in a second thread while the right
#: side is indexed (both release the GIL for their loops; below this the thread's start costs
#: more than it saves).
OVERLAP_MIN_ROWS = 1 << 20


def _string_like(col):
    t = col.type
    return (pat.is_string(t) or pat.is_large_string(t) or pat.is_binary(t)
            or pat.is_large_binary(t))


def _start_key_encoding(col, side, by):
    """``_key_dictionary(col, side, by)`` started in a thread; returns a function that waits
    for it and returns its result (or raises its exception)."""
    box = {}

    def run():
        try:
            box["value"] = _key_dictionary(col, side, by)
        except BaseException as exc:        # handed to the waiting caller
            box["error"] = exc

    worker = threading.Thread(target=run, name="sabot-asof-keys", daemon=True)
    worker.start()

    def wait():
        worker.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return wait


def _map_left_dictionary(ldict, rdict, by):
    """int32 lookup: left dictionary slot (plus the null slot at the end) -> right code or -1."""
    if ldict.type != rdict.type:
        try:
            ldict = ldict.cast(rdict.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise TypeError(
                f"'by' column {by!r} has key type {ldict.type} on the left and {rdict.type} on the right"
            ) from exc
    pos = pc.index_in(ldict, value_set=rdict, skip_nulls=False)
    lookup = np.empty(len(ldict) + 1, dtype=np.int32)
    lookup[: len(ldict)] = pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
    lookup[len(ldict)] = len(rdict)  # null key matches null key
    return lookup


def _unsorted_error(side, on, by, row, values):
    where = f" within each {by!r} key" if by is not None else ""
    return ValueError(
        f"{side} column {on!r} is not sorted{where}: row {row} (value {values[row]}) comes "
        f"before an earlier row's larger value; sort the input by {on!r} or pass sort=True"
    )


#: Left rows from which the backward merge runs in two threads (halves of the left).
PARALLEL_MIN_ROWS = 1 << 21


cdef class _BackwardHalf:
    """One ``_asof_backward`` call prepared for another thread (``run`` releases the GIL); the
    caller keeps every array alive until the thread is joined."""
    cdef const int64_t* l_on
    cdef const int32_t* l_code
    cdef const int32_t* lookup
    cdef const int64_t* r_on
    cdef const int32_t* r_code
    cdef int64_t n_left, n_right, j_start
    cdef int32_t n_keys
    cdef int64_t* last
    cdef int exact
    cdef uint64_t utol
    cdef int64_t* out
    cdef int n_cols
    cdef const int64_t** srcs
    cdef int64_t** dsts
    cdef uint8_t* valid
    cdef int64_t* nulls
    cdef public int64_t result

    def run(self):
        with nogil:
            self.result = _asof_backward(self.l_on, self.l_code, self.lookup, self.n_left,
                                         self.r_on, self.r_code, self.n_right, self.n_keys,
                                         self.last, self.exact, self.utol, self.out, self.n_cols,
                                         self.srcs, self.dsts, self.valid, self.nulls,
                                         self.j_start)


cdef class _RightIndex:
    """The right side prepared for matching: its ``on`` values and key codes, plus (built on
    first need) the rows grouped per key. Globally sorted inputs are matched by a single merge
    pass; otherwise (or for small left batches) by per-key cursors over the grouped rows."""
    cdef public object r_on        # int64 numpy (after the optional stable sort)
    cdef public object r_code      # int32 numpy or None (no by)
    cdef public object perm        # sorted position -> original row (None = identity)
    cdef public object dictionary  # key dictionary (None without by)
    cdef public int32_t n_keys
    cdef public bint globally_sorted
    cdef public object g_on, g_idx, offsets
    cdef object side, on, by

    def __init__(self, on_values, codes, dictionary, n_keys, side, on, by, sort):
        cdef const int64_t[::1] onv
        cdef int64_t bad = -1
        self.side, self.on, self.by = side, on, by
        self.dictionary = dictionary
        self.n_keys = n_keys if codes is not None else 1
        r_on = np.ascontiguousarray(on_values, dtype=np.int64)
        r_code = None if codes is None else np.ascontiguousarray(codes, dtype=np.int32)
        self.perm = None
        if sort:
            perm = np.argsort(r_on, kind="stable")
            r_on = r_on[perm]
            if r_code is not None:
                r_code = r_code[perm]
            self.perm = perm.astype(np.int64)
        self.r_on, self.r_code = r_on, r_code
        onv = r_on
        if len(r_on):
            with nogil:
                bad = _first_unsorted(&onv[0], onv.shape[0])
        self.globally_sorted = bad < 0
        self.g_on = self.g_idx = self.offsets = None
        if not self.globally_sorted:
            if r_code is None:
                raise _unsorted_error(side, on, None, self._orig(bad), r_on)
            self._group()

    cdef int64_t _orig(self, int64_t row):
        return row if self.perm is None else int(self.perm[row])

    def _group(self):
        cdef const int64_t[::1] onv = self.r_on
        cdef const int32_t[::1] cd
        cdef int64_t[::1] off, fill, g_on, g_idx, last
        cdef int32_t nk = self.n_keys
        cdef int64_t n = onv.shape[0]
        cdef int64_t bad = -1
        if self.r_code is None:
            self.g_on = self.r_on
            self.g_idx = None
            self.offsets = np.array([0, n], dtype=np.int64)
            return
        cd = self.r_code
        off = np.zeros(nk + 1, dtype=np.int64)
        fill = np.empty(nk, dtype=np.int64)
        last = np.empty(nk, dtype=np.int64)
        g_on = np.empty(n, dtype=np.int64)
        g_idx = np.empty(n, dtype=np.int64)
        if n:
            with nogil:
                bad = _group_right(&onv[0], &cd[0], n, nk, &off[0], &fill[0],
                                   &g_on[0], &g_idx[0], &last[0])
            if bad >= 0:
                raise _unsorted_error(self.side, self.on, self.by, self._orig(bad), self.r_on)
        self.g_on = np.asarray(g_on)
        self.g_idx = np.asarray(g_idx)
        self.offsets = np.asarray(off)

    def _backward_keys(self, l_raw, lookup):
        """(left codes, lookup) for ``_asof_backward``, or None when it does not apply (no
        ``by``). The lookup sends keys absent on the right to the extra slot ``n_keys``."""
        if l_raw is None or self.r_code is None:
            return None
        lc = np.ascontiguousarray(l_raw, dtype=np.int32)
        if lookup is None:                   # left codes are right codes already
            lk = np.arange(self.n_keys + 1, dtype=np.int32)
        else:
            lk = np.array(lookup, dtype=np.int32)
            lk[lk < 0] = self.n_keys
        return lc, lk

    cdef int64_t _backward(self, const int64_t[::1] lon, keys, bint exact, tol, int64_t* out,
                           int n_cols, const int64_t** srcs, int64_t** dsts, uint8_t* valid,
                           int64_t* nulls):
        """Run ``_asof_backward`` (see there); returns its result (-1: done; else the left is
        not globally sorted).

        A large left is cut in two at a row m (a multiple of 8, so that the halves share no
        validity byte) and the halves run at once, the second in another thread: its start
        state (the right rows at or before the left row m, each key's latest) is found by a
        binary search and a walk back over the right rows until every key is seen."""
        cdef const int32_t[::1] lc = keys[0]
        cdef const int32_t[::1] lk = keys[1]
        cdef const int64_t[::1] ron = self.r_on
        cdef const int32_t[::1] rc = self.r_code
        cdef int32_t nk = self.n_keys
        cdef int64_t[::1] last = np.full(nk + 1, -1, dtype=np.int64)
        cdef int64_t[::1] last2
        cdef uint64_t utol = <uint64_t>0xFFFFFFFFFFFFFFFF if tol is None else <uint64_t><int64_t>tol
        cdef int64_t bad, n = lon.shape[0], n_right = ron.shape[0], m, j0, j, t
        cdef int64_t nulls2 = 0, seen = 0
        cdef int c
        cdef int64_t* dsts2[64]
        cdef _BackwardHalf half
        if n < PARALLEL_MIN_ROWS or n < 16 or n_cols > 64:
            with nogil:
                bad = _asof_backward(&lon[0], &lc[0], &lk[0], n, &ron[0], &rc[0], n_right, nk,
                                     &last[0], exact, utol, out, n_cols, srcs, dsts, valid,
                                     nulls, 0)
            return bad
        m = (n // 2) & ~(<int64_t>7)
        if lon[m] < lon[m - 1]:
            return m
        t = lon[m]
        last2 = np.full(nk + 1, -1, dtype=np.int64)
        with nogil:
            j0 = _upper_bound(&ron[0], 0, n_right, t) if exact else _lower_bound(&ron[0], 0, n_right, t)
            j = j0 - 1
            while j >= 0 and seen < nk:
                if last2[rc[j]] < 0:
                    last2[rc[j]] = j
                    seen += 1
                j -= 1
        for c in range(n_cols):
            dsts2[c] = dsts[c] + m
        half = _BackwardHalf()
        half.l_on, half.l_code, half.lookup, half.n_left = &lon[m], &lc[m], &lk[0], n - m
        half.r_on, half.r_code, half.n_right, half.n_keys = &ron[0], &rc[0], n_right, nk
        half.last, half.exact, half.utol = &last2[0], exact, utol
        half.out = out + m if out != NULL else NULL
        half.n_cols, half.srcs, half.dsts = n_cols, srcs, dsts2
        half.valid = valid + (m >> 3) if valid != NULL else NULL
        half.nulls, half.j_start = &nulls2, j0
        worker = threading.Thread(target=half.run, name="sabot-asof-merge", daemon=True)
        worker.start()
        try:
            with nogil:
                bad = _asof_backward(&lon[0], &lc[0], &lk[0], m, &ron[0], &rc[0], n_right, nk,
                                     &last[0], exact, utol, out, n_cols, srcs, dsts, valid,
                                     nulls, 0)
        finally:
            worker.join()
        if bad >= 0:
            return bad
        if half.result >= 0:
            return m + half.result
        if nulls != NULL:
            nulls[0] += nulls2
        return -1

    def match_into(self, l_on, l_raw, lookup, int direction, bint exact, tol, srcs):
        """Fused merge: the right columns ``srcs`` (8-byte, no nulls) at the matched rows, written
        straight into new Arrow arrays sharing one validity bitmap. ``None`` when not applicable
        (inputs not both globally sorted, nearest, small left, sorted internally): use ``match``."""
        cdef const int64_t[::1] lon = np.ascontiguousarray(l_on, dtype=np.int64)
        cdef int64_t n = lon.shape[0]
        cdef int32_t nk = self.n_keys
        cdef int64_t[::1] cur1 = np.empty(max(nk, 1), dtype=np.int64)
        cdef int64_t[::1] cur2 = np.empty(max(nk, 1), dtype=np.int64)
        cdef const int64_t[::1] ron = self.r_on
        cdef const int32_t[::1] lc
        cdef const int32_t[::1] lk
        cdef const int32_t[::1] rc
        cdef const int32_t* lc_ptr = NULL
        cdef const int32_t* lk_ptr = NULL
        cdef const int32_t* rc_ptr = NULL
        cdef bint has_tol = tol is not None
        cdef int64_t tol_v = tol if tol is not None else 0
        cdef int64_t bad = -1
        cdef int64_t n_right = ron.shape[0]
        cdef int c, n_cols = len(srcs)
        cdef _Fused fz
        cdef const int64_t* src_ptrs[64]
        cdef int64_t* dst_ptrs[64]
        if (direction == NEAREST or self.perm is not None or not self.globally_sorted or n == 0
                or n_right == 0 or n * 8 < n_right or n_cols == 0 or n_cols > 64):
            return None
        keys = self._backward_keys(l_raw, lookup) if direction == BACKWARD else None
        if keys is None:
            with nogil:
                bad = _first_unsorted(&lon[0], n)
            if bad >= 0:
                return None
        valid_buf = _alloc((n + 7) // 8)
        data_bufs = [_alloc(n * 8) for _ in range(n_cols)]
        for c in range(n_cols):
            src_ptrs[c] = (<const int64_t*><uint64_t>srcs[c].buffers()[1].address) + <int64_t>srcs[c].offset
            dst_ptrs[c] = <int64_t*><uint64_t>data_bufs[c].address
        fz.n_cols = n_cols
        fz.srcs = src_ptrs
        fz.dsts = dst_ptrs
        fz.valid = <uint8_t*><uint64_t>valid_buf.address
        fz.nulls = 0
        if keys is not None:
            if self._backward(lon, keys, exact, tol, NULL, n_cols, src_ptrs, dst_ptrs, fz.valid,
                              &fz.nulls) >= 0:
                return None                      # left not globally sorted
        else:
            if l_raw is not None:
                lc = np.ascontiguousarray(l_raw, dtype=np.int32)
                lc_ptr = &lc[0]
                if lookup is not None:
                    lk = np.ascontiguousarray(lookup, dtype=np.int32)
                    lk_ptr = &lk[0]
            if self.r_code is not None:
                rc = self.r_code
                rc_ptr = &rc[0]
            with nogil:
                memset(fz.valid, 0, (n + 7) // 8)
                _merge_match(&lon[0], lc_ptr, lk_ptr, n, &ron[0], rc_ptr, n_right, nk,
                             &cur1[0], &cur2[0], direction, exact, has_tol, tol_v, NULL, &fz)
        nulls = fz.nulls
        return [pa.Array.from_buffers(srcs[c].type, n, [valid_buf if nulls else None, data_bufs[c]],
                                      null_count=nulls) for c in range(n_cols)]

    def match(self, l_on, l_raw, lookup, int direction, bint exact, tol, side, on, by):
        """Matched right row (original index, -1 = none) per left row.

        ``l_raw``: left key codes (None without by), translated through ``lookup`` (None =
        already right codes). Raises ``ValueError`` on a left row out of order within its key."""
        cdef const int64_t[::1] lon = np.ascontiguousarray(l_on, dtype=np.int64)
        cdef int64_t n = lon.shape[0]
        cdef int32_t nk = self.n_keys
        cdef int64_t[::1] out = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] cur1 = np.full(max(nk, 1), -1, dtype=np.int64)
        cdef int64_t[::1] cur2 = np.full(max(nk, 1), -1, dtype=np.int64)
        cdef int64_t[::1] last = np.full(max(nk, 1), INT64_MIN, dtype=np.int64)
        cdef const int64_t[::1] ron = self.r_on
        cdef const int64_t[::1] g_on
        cdef const int64_t[::1] off
        cdef const int32_t[::1] lc
        cdef const int32_t[::1] lk
        cdef const int32_t[::1] rc
        cdef const int64_t[::1] gi
        cdef const int32_t* lc_ptr = NULL
        cdef const int32_t* lk_ptr = NULL
        cdef const int32_t* rc_ptr = NULL
        cdef const int64_t* gi_ptr = NULL
        cdef const int64_t* gon_ptr = NULL
        cdef const int64_t* ron_ptr = NULL
        cdef bint has_tol = tol is not None
        cdef int64_t tol_v = tol if tol is not None else 0
        cdef int64_t bad = -1
        cdef int64_t n_right = ron.shape[0]
        cdef bint done = False
        if n == 0:
            return np.asarray(out)
        if direction == BACKWARD and self.globally_sorted and n * 8 >= n_right and n_right > 0:
            keys = self._backward_keys(l_raw, lookup)
            if keys is not None:
                bad = self._backward(lon, keys, exact, tol, &out[0], 0, NULL, NULL, NULL, NULL)
                done = bad < 0
        if not done:
            if bad < 0:
                with nogil:
                    bad = _first_unsorted(&lon[0], n)
            if l_raw is not None:
                lc = np.ascontiguousarray(l_raw, dtype=np.int32)
                lc_ptr = &lc[0]
                if lookup is not None:
                    lk = np.ascontiguousarray(lookup, dtype=np.int32)
                    lk_ptr = &lk[0]
        if done:
            pass
        elif self.globally_sorted and bad < 0 and n * 8 >= n_right:
            if n_right:
                ron_ptr = &ron[0]
            if self.r_code is not None:
                rc = self.r_code
                if n_right:
                    rc_ptr = &rc[0]
            with nogil:
                _merge_match(&lon[0], lc_ptr, lk_ptr, n, ron_ptr, rc_ptr, n_right, nk,
                             &cur1[0], &cur2[0], direction, exact, has_tol, tol_v, &out[0], NULL)
        else:
            if bad >= 0 and l_raw is None:
                raise _unsorted_error(side, on, by, bad, np.asarray(lon))
            if self.offsets is None:
                self._group()
            g_on = self.g_on
            off = self.offsets
            if self.g_idx is not None:
                gi = self.g_idx
                if gi.shape[0]:
                    gi_ptr = &gi[0]
            if g_on.shape[0]:
                gon_ptr = &g_on[0]
            with nogil:
                bad = _match(&lon[0], lc_ptr, lk_ptr, n, gon_ptr, gi_ptr, &off[0], &cur1[0],
                             &cur2[0], &last[0], direction, exact, has_tol, tol_v, &out[0])
            if bad >= 0:
                raise _unsorted_error(side, on, by, bad, np.asarray(lon))
        result = np.asarray(out)
        if self.perm is not None:
            hit = result >= 0
            result[hit] = self.perm[result[hit]]
        return result


def _plain8(arr):
    """An 8-byte fixed-width array without nulls (values can be copied as int64 words)."""
    t = arr.type
    return (len(arr) > 0 and arr.null_count == 0 and not pat.is_dictionary(t)
            and (pat.is_integer(t) or pat.is_floating(t) or pat.is_timestamp(t)
                 or pat.is_duration(t) or pat.is_date64(t)) and t.bit_width == 64)


def _gather_many(cols, idx):
    """``_gather`` for several right columns; 8-byte columns without nulls share one validity
    bitmap (computed once from ``idx``) and need only a data copy."""
    cdef const int64_t[::1] ix = np.ascontiguousarray(idx, dtype=np.int64)
    cdef int64_t n = ix.shape[0]
    cdef int64_t nulls = -1
    cdef const int64_t* src
    cdef int64_t* dst
    cdef uint8_t* vptr
    cdef uint64_t src_addr
    cdef int64_t src_off
    valid_buf = None
    out = []
    for col in cols:
        arr = _contiguous(col)
        t = arr.type
        plain8 = (n > 0 and len(arr) > 0 and arr.null_count == 0 and not pat.is_dictionary(t)
                  and (pat.is_integer(t) or pat.is_floating(t) or pat.is_timestamp(t)
                       or pat.is_duration(t) or pat.is_date64(t)) and t.bit_width == 64)
        if not plain8:
            out.append(_gather(arr, idx))
            continue
        if nulls < 0:
            valid_buf = _alloc((n + 7) // 8)
            vptr = <uint8_t*><uint64_t>valid_buf.address
            with nogil:
                nulls = _validity_from_idx(&ix[0], n, vptr)
        data_buf = _alloc(n * 8)
        src_addr = arr.buffers()[1].address
        src_off = arr.offset
        src = (<const int64_t*><uint64_t>src_addr) + src_off
        dst = <int64_t*><uint64_t>data_buf.address
        with nogil:
            _take8(src, &ix[0], n, dst)
        out.append(pa.Array.from_buffers(t, n, [valid_buf if nulls else None, data_buf],
                                         null_count=nulls))
    return out


def _gather(col, idx):
    """Right column values at ``idx`` (int64 numpy, -1 → null), written into new Arrow buffers."""
    cdef const int64_t[::1] ix = np.ascontiguousarray(idx, dtype=np.int64)
    cdef int64_t n = len(ix)
    cdef int64_t nulls = 0
    cdef int width
    cdef const uint8_t* src
    cdef const uint8_t* src_valid = NULL
    cdef uint8_t* dst
    cdef uint8_t* dst_valid
    cdef int64_t off
    arr = _contiguous(col)
    t = arr.type
    fixed = (pat.is_integer(t) or pat.is_floating(t) or pat.is_timestamp(t) or pat.is_duration(t)
             or pat.is_date(t) or pat.is_time(t) or pat.is_decimal(t)) and not pat.is_dictionary(t)
    if not fixed or n == 0 or len(arr) == 0:
        ixa = np.asarray(ix)
        mask = ixa < 0
        if len(arr) == 0:
            return pa.nulls(n, type=t)
        return pc.take(arr, pa.array(ixa, mask=mask if mask.any() else None))
    width = t.bit_width // 8
    bufs = arr.buffers()
    data_buf = _alloc(n * width)
    valid_buf = _alloc((n + 7) // 8)
    dst = <uint8_t*><uint64_t>data_buf.address
    dst_valid = <uint8_t*><uint64_t>valid_buf.address
    off = arr.offset
    src = (<const uint8_t*><uint64_t>bufs[1].address) + off * width
    if arr.null_count and bufs[0] is not None:
        src_valid = <const uint8_t*><uint64_t>bufs[0].address
    with nogil:
        if width == 8 and src_valid == NULL:
            _gather_f64_nonnull(<const double*>src, &ix[0], n, <double*>dst, dst_valid, &nulls)
        else:
            _gather_fixed(src, src_valid, off, width, &ix[0], n, dst, dst_valid, &nulls)
    return pa.Array.from_buffers(t, n, [valid_buf if nulls else None, data_buf], null_count=nulls)


def _constant_exchange(batch):
    """The exchange name if ``batch`` has a non-null constant ``exchange`` column, else None."""
    idx = batch.schema.get_field_index("exchange")
    if idx < 0 or batch.num_rows == 0:
        return None
    col = batch.column(idx)
    if col.null_count:
        return None
    first = col[0].as_py()
    if not isinstance(first, str) or col[len(col) - 1].as_py() != first:
        return None
    if not pc.all(pc.equal(col, pa.scalar(first, type=col.type.value_type if pat.is_dictionary(col.type) else col.type))).as_py():
        return None
    return first


def _check_exchanges(exchanges, right_prefix):
    """Validated ``exchanges=`` argument: ``None`` or a pair ``(left venue, right venue)``,
    each a non-empty string or None."""
    if exchanges is None:
        return None
    if (isinstance(exchanges, (str, bytes)) or not isinstance(exchanges, (tuple, list))
            or len(exchanges) != 2):
        raise TypeError(f"exchanges must be a pair (left venue, right venue), got {exchanges!r}")
    for side, name in zip(("left", "right"), exchanges):
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"exchanges: the {side} venue must be a non-empty string or None, "
                            f"got {name!r}")
    if right_prefix is not None:
        raise ValueError(f"pass either right_prefix= ({right_prefix!r}) or exchanges= "
                         f"({tuple(exchanges)!r}), not both: each names the right columns")
    return (exchanges[0], exchanges[1])


def _reads_venues(right_schema, on, by, right_prefix, exchanges):
    """Whether the output names come from the inputs' ``exchange`` values (no ``exchanges=``
    nor ``right_prefix=``, and the right has an ``exchange`` value column)."""
    return (exchanges is None and right_prefix is None and "exchange" in right_schema.names
            and "exchange" not in (on, by))


def _venue_of(batch, side):
    """The venue named by a non-empty input's ``exchange`` column (None when it has none or
    several); an empty input has no venue to read: ValueError saying how to name it."""
    if batch.schema.get_field_index("exchange") < 0:
        return None
    if batch.num_rows == 0:
        raise ValueError(
            f"asof join: the {side} input has no rows, so its venue cannot be read from its "
            "'exchange' column and the output column names would differ from those of a "
            "non-empty input; pass exchanges=(left venue, right venue), e.g. "
            "exchanges=('coinbase', 'kraken'), or right_prefix= to name the columns "
            "without reading rows")
    return _constant_exchange(batch)


def _prefixed_columns(schema):
    meta = schema.metadata or {}
    raw = meta.get(PREFIXED_META_KEY)
    return set(json.loads(raw)) if raw else set()


def _already_prefixed(name, inherited, exchanges):
    return name in inherited or any(name.startswith(e + "_") for e in exchanges)


class _Plan:
    """Output naming: left columns (index, new name) then right value columns (index, new name)."""

    __slots__ = ("left", "right", "metadata")


def _plan(left_schema, right_schema, on, by, right_prefix, suffix, left_ex, right_ex):
    suffix = "_right" if suffix is None else suffix
    keys = {on} if by is None else {on, by}
    exchange_mode = right_prefix is None and right_ex is not None and right_ex != left_ex
    inherited_l = _prefixed_columns(left_schema)
    inherited_r = _prefixed_columns(right_schema)
    exchanges = set(KNOWN_EXCHANGES) | {e for e in (left_ex, right_ex) if e}
    prefixed = set()
    left = []
    for i, name in enumerate(left_schema.names):
        new = name
        if (exchange_mode and left_ex is not None and name not in keys and name != "exchange"
                and not _already_prefixed(name, inherited_l, exchanges)):
            new = f"{left_ex}_{name}"
            prefixed.add(new)
        elif name in inherited_l:
            prefixed.add(name)
        left.append((i, new))
    taken = {new for _, new in left}
    right = []
    for i, name in enumerate(right_schema.names):
        if name in keys:
            continue
        if exchange_mode and name == "exchange":
            continue
        if right_prefix is not None:
            new = f"{right_prefix}{name}"
        elif exchange_mode and not _already_prefixed(name, inherited_r, exchanges):
            new = f"{right_ex}_{name}"
            prefixed.add(new)
        else:
            new = name
            if name in inherited_r:
                prefixed.add(name)
        if new in taken:
            new = f"{new}{suffix}"
            if new in taken:
                raise ValueError(
                    f"right column {name!r} clashes with {new!r} even after adding suffix {suffix!r}; "
                    "pass right_prefix= or a different suffix="
                )
        taken.add(new)
        right.append((i, new))
    plan = _Plan()
    plan.left = left
    plan.right = right
    meta = dict(left_schema.metadata or {})
    if prefixed:
        meta[PREFIXED_META_KEY] = json.dumps(sorted(prefixed)).encode()
    plan.metadata = meta or None
    return plan


def _assemble(left, right_cols_at_idx, plan, as_table):
    """Output batch/table: left columns (renamed) then the gathered right columns."""
    names, arrays, fields = [], [], []
    lschema = left.schema
    for i, new in plan.left:
        f = lschema.field(i)
        fields.append(pa.field(new, f.type, f.nullable, f.metadata))
        arrays.append(left.column(i))
    for (i, new), arr in zip(plan.right, right_cols_at_idx):
        fields.append(pa.field(new, arr.type, True))
        arrays.append(arr)
    schema = pa.schema(fields, metadata=plan.metadata)
    if as_table:
        return pa.Table.from_arrays(
            [a if isinstance(a, pa.ChunkedArray) else pa.chunked_array([a], type=a.type) for a in arrays],
            schema=schema,
        )
    return pa.RecordBatch.from_arrays([_contiguous(a) for a in arrays], schema=schema)


def _check_direction(direction):
    try:
        return _DIRECTIONS[direction]
    except (KeyError, TypeError):
        raise ValueError(
            f"direction must be 'backward', 'forward' or 'nearest', got {direction!r}"
        ) from None


def _check_by(by):
    if by is None or isinstance(by, str):
        return by
    if isinstance(by, (list, tuple)) and len(by) == 1 and isinstance(by[0], str):
        return by[0]
    raise TypeError(f"by must be a column name or None, got {by!r}")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

class AsofJoinKernel:
    """ASOF join against a fixed right side whose per-key index is built once.

    ``kernel(left)`` equals ``asof_join(left, right, ...)`` with the constructor's parameters,
    for any number of left batches (each call is independent; cursors start by binary search, so
    a small left batch costs O(rows · log(right rows per key)), not a scan of the right side).

    Output names are the same for every left batch, empty or not.  With ``exchanges=`` or
    ``right_prefix=`` they follow from the arguments and schemas alone.  Otherwise, when the
    inputs carry an ``exchange`` column, the venues are read once: the right's from ``right``,
    the left's from the first non-empty left batch, and kept for every later batch (a loop over
    batches keeps one schema through quiet spans).  A venue that cannot be read yet (an empty
    right, or an empty first left batch) raises ``ValueError`` asking for ``exchanges=``.
    """

    def __init__(self, right, on="timestamp", by=None, tolerance_ms=1000, direction="backward", *,
                 allow_exact_matches=True, right_prefix=None, suffix=None, tolerance=None,
                 on_unit="ms", sort=False, exchanges=None):
        check_batch(right)
        self.exchanges = _check_exchanges(exchanges, right_prefix)
        self.on = on
        self.by = _check_by(by)
        self.direction = direction
        self._dir = _check_direction(direction)
        self.allow_exact_matches = bool(allow_exact_matches)
        self.right_prefix = right_prefix
        self.suffix = suffix
        self.tolerance_ms = tolerance_ms
        self.tolerance = tolerance
        self.on_unit = on_unit
        self.sort = bool(sort)
        self.right = right
        rfield = require_column(right.schema, on, "right 'on' column")
        self._rspec = _on_spec(rfield, "right", on_unit)
        if self.by is not None:
            require_column(right.schema, self.by, "right 'by' column")
        self._reads = _reads_venues(right.schema, on, self.by, right_prefix, self.exchanges)
        self._venues = self.exchanges   # (left, right) once known
        self._right_venue = None
        if self._reads and right.num_rows:
            self._right_venue = _constant_exchange(right)
        self._right_cols = {}
        self._index = None
        self._unit = None

    def _build(self, unit):
        right = self.right
        r_on = _on_values(right.column(self.on), self._rspec, unit, "right", self.on)
        if self.by is not None:
            codes, dictionary = _key_dictionary(right.column(self.by), "right", self.by)
            n_keys = len(dictionary) + 1
        else:
            codes, dictionary, n_keys = None, None, 1
        self._index = _RightIndex(r_on, codes, dictionary, n_keys, "right", self.on, self.by, self.sort)
        self._unit = unit

    def match_indices(self, left):
        """The matched right row index per left row (int64 numpy, -1 = no match)."""
        on, by = self.on, self.by
        l_on, lcodes_raw, lookup, tol = self._prepare_left(left)
        if self.sort:
            perm = np.argsort(l_on, kind="stable")
            idx_sorted = self._index.match(l_on[perm], None if lcodes_raw is None else lcodes_raw[perm],
                                           lookup, self._dir, self.allow_exact_matches, tol, "left", on, by)
            idx = np.empty_like(idx_sorted)
            idx[perm] = idx_sorted
            return idx
        return self._index.match(l_on, lcodes_raw, lookup, self._dir, self.allow_exact_matches, tol,
                                 "left", on, by)

    def _names(self, left):
        """(left venue, right venue) naming the output (see the class docstring)."""
        if self._venues is not None:
            return self._venues
        if not self._reads:
            self._venues = (None, None)
            return self._venues
        right_venue = _venue_of(self.right, "right")
        if right_venue is None:  # several venues on the right: plain names, whatever the left
            self._venues = (None, None)
            return self._venues
        self._venues = (_venue_of(left, "left"), right_venue)
        return self._venues

    def __call__(self, left):
        check_batch(left)
        left_ex, right_ex = self._names(left)
        plan = _plan(left.schema, self.right.schema, self.on, self.by, self.right_prefix,
                     self.suffix, left_ex, right_ex)
        srcs = []
        for i, _ in plan.right:
            col = self._right_cols.get(i)
            if col is None:
                col = _contiguous(self.right.column(i))
                self._right_cols[i] = col
            srcs.append(col)
        cols = None
        if not self.sort and srcs and all(_plain8(c) for c in srcs):
            cols = self._match_into(left, srcs)
        if cols is None:
            cols = _gather_many(srcs, self.match_indices(left))
        return _assemble(left, cols, plan, isinstance(left, pa.Table))

    def _prepare_left(self, left):
        check_batch(left)
        on, by = self.on, self.by
        lfield = require_column(left.schema, on, "left 'on' column")
        lspec = _on_spec(lfield, "left", self.on_unit)
        if by is not None:
            require_column(left.schema, by, "left 'by' column")
        unit = _common_unit(lspec, self._rspec, on)
        left_keys = None
        if self._index is None or self._unit != unit:
            if (by is not None and left.num_rows >= OVERLAP_MIN_ROWS
                    and _string_like(left.column(by)) and _string_like(self.right.column(by))):
                # both sides' keys need hashing: the left's in a second thread meanwhile
                left_keys = _start_key_encoding(left.column(by), "left", by)
            try:
                self._build(unit)
            except BaseException:
                if left_keys is not None:       # the right's error is the one to report
                    try:
                        left_keys()
                    except BaseException:
                        pass
                raise
            encoded = left_keys() if left_keys is not None else None
        tol = _tolerance_in(unit, self.tolerance_ms, self.tolerance, lspec)
        l_on = _on_values(left.column(on), lspec, unit, "left", on)
        if by is not None:
            if left_keys is not None:
                lcodes_raw, ldict = encoded
            else:
                lcodes_raw, ldict = _key_dictionary(left.column(by), "left", by)
            lookup = _map_left_dictionary(ldict, self._index.dictionary, by)
        else:
            lcodes_raw = lookup = None
        return l_on, lcodes_raw, lookup, tol

    def _match_into(self, left, srcs):
        l_on, lcodes_raw, lookup, tol = self._prepare_left(left)
        return self._index.match_into(l_on, lcodes_raw, lookup, self._dir, self.allow_exact_matches,
                                      tol, srcs)


def asof_join(left, right, on="timestamp", by=None, tolerance_ms=1000, direction="backward", *,
              allow_exact_matches=True, right_prefix=None, suffix=None, tolerance=None,
              on_unit="ms", sort=False, exchanges=None):
    """ASOF join: each left row gets the right row nearest in ``on`` (same ``by`` key).

    Equals ``pandas.merge_asof(left, right, on=on, by=by, tolerance=tol, direction=direction,
    allow_exact_matches=allow_exact_matches)`` row for row, with Arrow nulls where pandas gives
    NaN for "no match". ``tolerance_ms`` (None = unbounded) or ``tolerance`` (a timedelta, or an
    integer in the ``on`` unit; overrides ``tolerance_ms``). ``on``: Arrow timestamp of any unit
    (both sides converted exactly to the finer unit) or an integer in ``on_unit``.

    Inputs must be sorted by ``on`` within each key (else ``ValueError`` naming the column and
    the first out-of-order row); ``sort=True`` sorts internally (stable) and still returns the
    left rows in their original order. Output: the left's columns, then the right's value
    columns (``on``/``by`` once). Naming: ``right_prefix`` prefixes every right value column;
    ``exchanges=(left venue, right venue)`` (different venues) gives the right columns the
    ``<right venue>_`` prefix and the left's value columns the left venue's (columns already
    carrying a venue prefix are kept; the right ``exchange`` column is dropped); otherwise
    clashing right names get ``suffix`` (default ``'_right'``).

    ``exchanges=`` and ``right_prefix=`` name the output from the arguments alone, so every
    call of a batch-by-batch loop, empty inputs included, gives one schema.  Without them,
    inputs with an ``exchange`` column are named as ``exchanges=`` would name them with the
    venues read from those columns (one constant venue per side; several venues on the right:
    plain names) — the names of a full batch — and an empty input, whose venue cannot be read,
    raises ``ValueError`` asking for ``exchanges=`` rather than silently naming the columns
    differently.
    Table in → Table out (the output follows the left's type).
    """
    check_batch(left)
    require_column(left.schema, on, "left 'on' column")
    if _check_by(by) is not None:
        require_column(left.schema, _check_by(by), "left 'by' column")
    kernel = AsofJoinKernel(right, on=on, by=by, tolerance_ms=tolerance_ms, direction=direction,
                            allow_exact_matches=allow_exact_matches, right_prefix=right_prefix,
                            suffix=suffix, tolerance=tolerance, on_unit=on_unit, sort=sort,
                            exchanges=exchanges)
    return kernel(left)


def asof_join_table(left_batch, right_table, on="timestamp", by=None, tolerance_ms=1000,
                    direction="backward", *, allow_exact_matches=True, right_prefix=None,
                    suffix=None, tolerance=None, on_unit="ms", sort=False, exchanges=None):
    """``asof_join`` with the right side a ``pyarrow.Table`` (chunked columns accepted)."""
    if not isinstance(right_table, pa.Table):
        raise TypeError(f"right_table must be a pyarrow.Table, got {type(right_table).__name__}")
    return asof_join(left_batch, right_table, on=on, by=by, tolerance_ms=tolerance_ms,
                     direction=direction, allow_exact_matches=allow_exact_matches,
                     right_prefix=right_prefix, suffix=suffix, tolerance=tolerance,
                     on_unit=on_unit, sort=sort, exchanges=exchanges)


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------

cdef void _late_rows(const int64_t* on, const int32_t* code, int64_t n, int64_t g0,
                     int64_t* wm, uint8_t* late) noexcept nogil:
    """late[i] = row i is behind the global right watermark g0 (as of its batch's arrival) or
    behind its key's right watermark; ``wm`` is advanced by the rows that are not late."""
    cdef int64_t i, t
    cdef int32_t k
    for i in range(n):
        k = code[i]
        t = on[i]
        if t < g0 or t < wm[k]:
            late[i] = 1
        else:
            late[i] = 0
            wm[k] = t


cdef void _prune_mask(const int64_t* on, const int32_t* code, int64_t n, const int64_t* horizon,
                      int64_t* last_below, bint keep_below, bint has_tol, int64_t tol,
                      uint8_t* keep) noexcept nogil:
    """Right buffer rows still useful for left rows at or after ``horizon[key]``: the rows at or
    after it, plus (backward/nearest) the last row before it when within tolerance."""
    cdef int64_t i, t, h
    cdef int32_t k
    for i in range(n):
        k = code[i]
        t = on[i]
        h = horizon[k]
        if t >= h:
            keep[i] = 1
        else:
            keep[i] = 0
            if keep_below and (not has_tol or h - t <= tol):
                last_below[k] = i
    if keep_below:
        for i in range(n):
            k = code[i]
            if last_below[k] == i:
                keep[i] = 1


_STATE_VERSION = 1


def _ipc_bytes(table):
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _ipc_table(data):
    return pa.ipc.open_stream(io.BytesIO(data)).read_all()


def _schema_bytes(schema):
    return None if schema is None else schema.serialize().to_pybytes()


def _schema_from(data):
    return None if data is None else pa.ipc.read_schema(pa.py_buffer(data))


class StreamingAsofJoinKernel:
    """ASOF join of two streams of batches; results equal :func:`asof_join` on the whole inputs.

    Feed left and right batches in any interleaving with :meth:`process_left` /
    :meth:`process_right`; each returns the joined left rows that became final (possibly none);
    :meth:`flush` returns the rest at end of stream.

    Watermark (global, documented choice): ``G`` = max ``on`` seen on the right across all keys.
    Both inputs are expected to be time-ordered across batches (a merged, time-ordered feed;
    within one batch only per-key order is needed). A held left row at ``t`` is final when

    * backward: ``G > t`` (``G >= t`` without exact matches): no later right row can be ≤ t;
    * forward: its key already has a right row ≥ t (> t), or ``G > t + tolerance``;
    * nearest: the backward condition and the forward one, where the forward one also holds when
      ``G - t`` reaches the backward candidate's distance (a later row could only tie or lose).

    Late right rows: a row older than ``G`` when its batch arrives, or older than its key's last
    right row, could change results already emitted; it is counted in :attr:`late_count`, kept in
    :meth:`dead_letter` and not used. With time-ordered inputs there are none and the output equals
    the batch join exactly. The dead letter keeps at most ``max_dead_rows`` rows and
    ``max_dead_bytes`` Arrow bytes; beyond that the oldest rows go to ``dead_letter_sink``
    (a callable ``(table, reason)``, when set; with a sink every late row goes there at once) or
    are dropped, counted in :attr:`dead_letter_dropped` and announced by a rate-limited warning.

    A quiet right side: :meth:`advance_right_watermark` declares every right row up to a time
    known (the caller's idle timeout), which releases the left rows waiting for it; right rows
    arriving later at or before that time are late.

    Memory: per key the right rows that can still match (rows at or after the earliest left time
    that can still come — the oldest held left row of the key, else the left watermark — plus the
    last row before it when within tolerance); held left rows only until final. A left row older
    than what was already pruned for its key raises ``ValueError`` (left input not time-ordered).

    Output: left columns then right value columns, named as in :func:`asof_join`; rows in
    emission order, which keeps each key's left order. ``ordinal_column='name'`` appends each
    left row's 0-based arrival ordinal (for restoring the global left order: sort by it).

    One output schema for the kernel's life: the names are fixed once and never change, however
    many batches are empty.  With ``exchanges=(left venue, right venue)`` or ``right_prefix=``
    they follow from the arguments and the two input schemas, fixed as soon as a batch of each
    side (empty or not) has been seen.  Without them, inputs with an ``exchange`` column are
    named after the venue read from the first non-empty batch of each side (a stream is one
    venue; reading every batch would rename the columns whenever a span is quiet), fixed once
    both venues are known — or, if rows must be emitted before the right side has had a row
    (:meth:`advance_right_watermark`, :meth:`flush`), then, with plain names, and a warning says
    to pass ``exchanges=``.  Until the names are fixed no row is emitted and the empty batches
    returned carry the left's schema (skip empty batches; :func:`asof_join_streaming` and
    ``Stream.asof_join`` do).
    """

    def __init__(self, on="timestamp", by=None, tolerance_ms=1000, direction="backward", *,
                 allow_exact_matches=True, right_prefix=None, suffix=None, on_unit="ms",
                 tolerance=None, ordinal_column=None, max_dead_rows=100_000,
                 max_dead_bytes=64 * 1024 * 1024, exchanges=None):
        if max_dead_rows < 0 or max_dead_bytes < 0:
            raise ValueError(f"max_dead_rows and max_dead_bytes must be >= 0, got "
                             f"{max_dead_rows} and {max_dead_bytes}")
        self.max_dead_rows = int(max_dead_rows)
        self.max_dead_bytes = int(max_dead_bytes)
        #: callable(table, reason) receiving late right rows (then not kept here)
        self.dead_letter_sink = None
        self.on = on
        self.by = _check_by(by)
        self.direction = direction
        self._dir = _check_direction(direction)
        self.allow_exact_matches = bool(allow_exact_matches)
        self.right_prefix = right_prefix
        self.suffix = suffix
        self.on_unit = on_unit
        self.tolerance_ms = tolerance_ms
        self.tolerance = tolerance
        self.ordinal_column = ordinal_column
        self.exchanges = _check_exchanges(exchanges, right_prefix)
        check_unit(on_unit)
        self.reset()

    # -- state ---------------------------------------------------------------------------
    def reset(self):
        """Forget everything (schemas, buffers, watermarks, dead letters)."""
        self._keys = {}            # key value -> code
        self._key_values = []      # code -> key value
        self._wm = np.zeros(0, dtype=np.int64)        # per-key right watermark
        self._left_last = np.zeros(0, dtype=np.int64) # per-key last left on
        self._pruned = np.zeros(0, dtype=np.int64)    # per-key prune horizon
        self._G = INT64_MIN
        self._LG = INT64_MIN
        self._left_schema = None
        self._right_schema = None
        self._left_spec = None
        self._right_spec = None
        self._left_ex = None       # venue read from the first non-empty left batch
        self._right_ex = None      # ... right batch
        self._left_read = False    # a non-empty batch of that side was read
        self._right_read = False
        self._plan_cache = None    # the output names, once fixed
        self._held = None          # Table of held left rows
        self._h_on = np.zeros(0, dtype=np.int64)
        self._h_code = np.zeros(0, dtype=np.int32)
        self._h_ord = np.zeros(0, dtype=np.int64)
        self._buf = None           # Table of buffered right rows
        self._b_on = np.zeros(0, dtype=np.int64)
        self._b_code = np.zeros(0, dtype=np.int32)
        self._next_ordinal = 0
        self._late_count = 0
        self._dead = []
        self._dead_rows = 0
        self._dead_bytes = 0
        self.dead_letter_dropped = 0
        self._last_drop_warn = -1e18

    @property
    def late_count(self) -> int:
        """Right rows that arrived too late to be used (see class docstring)."""
        return self._late_count

    def dead_letter(self):
        """The late right rows, as a Table with the right's schema."""
        if self._right_schema is None:
            return pa.table({})
        return pa.Table.from_batches(self._dead, schema=self._right_schema)

    def _dead_letter_add(self, rows):
        """Keep late right rows (or hand them to ``dead_letter_sink``); the oldest beyond the
        caps go to the sink, else are dropped and counted."""
        if self.dead_letter_sink is not None:
            self.dead_letter_sink(rows, "late")
            return
        self._dead.append(rows)
        self._dead_rows += rows.num_rows
        self._dead_bytes += rows.nbytes
        dropped = 0
        while self._dead and (self._dead_rows > self.max_dead_rows
                              or self._dead_bytes > self.max_dead_bytes):
            first = self._dead[0]
            over = self._dead_rows - self.max_dead_rows
            if self._dead_bytes <= self.max_dead_bytes and over < first.num_rows:
                rest = first.slice(over)
                self._dead[0] = rest
                self._dead_bytes -= first.nbytes - rest.nbytes
                self._dead_rows -= over
                dropped += over
                continue
            self._dead.pop(0)
            self._dead_rows -= first.num_rows
            self._dead_bytes -= first.nbytes
            dropped += first.num_rows
        if dropped:
            self.dead_letter_dropped += dropped
            now = time.monotonic()
            if now - self._last_drop_warn >= 10.0:
                self._last_drop_warn = now
                log.warning("asof streaming join: dead letter full (%d rows / %d bytes kept); "
                            "oldest late right rows dropped (dead_letter_dropped=%d)",
                            self.max_dead_rows, self.max_dead_bytes, self.dead_letter_dropped)

    def state_dict(self):
        """Plain, picklable snapshot (versioned; Arrow data as IPC bytes)."""
        return {
            "version": _STATE_VERSION,
            "params": {
                "on": self.on, "by": self.by, "tolerance_ms": self.tolerance_ms,
                "tolerance": self.tolerance, "direction": self.direction,
                "allow_exact_matches": self.allow_exact_matches, "right_prefix": self.right_prefix,
                "suffix": self.suffix, "on_unit": self.on_unit, "ordinal_column": self.ordinal_column,
                "exchanges": None if self.exchanges is None else list(self.exchanges),
            },
            "key_values": list(self._key_values),
            "wm": self._wm.tolist(),
            "left_last": self._left_last.tolist(),
            "pruned": self._pruned.tolist(),
            "G": int(self._G),
            "LG": int(self._LG),
            "left_schema": _schema_bytes(self._left_schema),
            "right_schema": _schema_bytes(self._right_schema),
            "left_exchange": self._left_ex,
            "right_exchange": self._right_ex,
            "venues_read": [self._left_read, self._right_read],
            "names_fixed": self._plan_cache is not None,
            "held": None if self._held is None else _ipc_bytes(self._held),
            "h_on": self._h_on.tolist(), "h_code": self._h_code.tolist(), "h_ord": self._h_ord.tolist(),
            "buf": None if self._buf is None else _ipc_bytes(self._buf),
            "b_on": self._b_on.tolist(), "b_code": self._b_code.tolist(),
            "next_ordinal": int(self._next_ordinal),
            "late_count": int(self._late_count),
            "dead": None if not self._dead else _ipc_bytes(self.dead_letter()),
            "dead_letter_dropped": int(self.dead_letter_dropped),
        }

    def load_state_dict(self, d):
        """Restore a :meth:`state_dict` snapshot; the join continues exactly."""
        if d.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported state version {d.get('version')!r}; expected {_STATE_VERSION}")
        p = d["params"]
        mine = {"on": self.on, "by": self.by, "direction": self.direction,
                "exchanges": None if self.exchanges is None else list(self.exchanges)}
        for name, value in mine.items():
            if name in p and p[name] != value:  # (older snapshots have no exchanges)
                raise ValueError(f"state was saved with {name}={p[name]!r}, this kernel has {value!r}")
        self.reset()
        self._key_values = list(d["key_values"])
        self._keys = {v: i for i, v in enumerate(self._key_values)}
        self._wm = np.array(d["wm"], dtype=np.int64)
        self._left_last = np.array(d["left_last"], dtype=np.int64)
        self._pruned = np.array(d["pruned"], dtype=np.int64)
        self._G = d["G"]
        self._LG = d["LG"]
        self._left_schema = _schema_from(d["left_schema"])
        self._right_schema = _schema_from(d["right_schema"])
        if self._left_schema is not None:
            self._left_spec = _on_spec(self._left_schema.field(self.on), "left", self.on_unit)
        if self._right_schema is not None:
            self._right_spec = _on_spec(self._right_schema.field(self.on), "right", self.on_unit)
        self._left_ex = d["left_exchange"]
        self._right_ex = d["right_exchange"]
        # a snapshot without these keys fixed its names with the first batch of each side
        both = self._left_schema is not None and self._right_schema is not None
        self._left_read, self._right_read = d.get("venues_read", [both, both])
        if d.get("names_fixed", both):
            self._plan()
        self._held = None if d["held"] is None else _ipc_table(d["held"])
        self._h_on = np.array(d["h_on"], dtype=np.int64)
        self._h_code = np.array(d["h_code"], dtype=np.int32)
        self._h_ord = np.array(d["h_ord"], dtype=np.int64)
        self._buf = None if d["buf"] is None else _ipc_table(d["buf"])
        self._b_on = np.array(d["b_on"], dtype=np.int64)
        self._b_code = np.array(d["b_code"], dtype=np.int32)
        self._next_ordinal = d["next_ordinal"]
        self._late_count = d["late_count"]
        self._dead = [] if d["dead"] is None else _ipc_table(d["dead"]).combine_chunks().to_batches()
        self._dead_rows = sum(b.num_rows for b in self._dead)
        self._dead_bytes = sum(b.nbytes for b in self._dead)
        self.dead_letter_dropped = d.get("dead_letter_dropped", 0)

    # -- helpers -------------------------------------------------------------------------
    def _tol_ns(self):
        spec = self._left_spec or self._right_spec
        return _tolerance_in("ns", self.tolerance_ms, self.tolerance, spec)

    def _codes(self, batch, side):
        raw, dictionary = _key_dictionary(batch.column(self.by), side, self.by)
        values = dictionary.to_pylist() + [None]
        lookup = np.empty(len(values), dtype=np.int32)
        for i, v in enumerate(values):
            code = self._keys.get(v)
            if code is None:
                code = len(self._key_values)
                self._keys[v] = code
                self._key_values.append(v)
            lookup[i] = code
        n = len(self._key_values)
        if len(self._wm) < n:
            grow = n - len(self._wm)
            fill = np.full(grow, INT64_MIN, dtype=np.int64)
            self._wm = np.concatenate([self._wm, fill])
            self._left_last = np.concatenate([self._left_last, fill])
            self._pruned = np.concatenate([self._pruned, fill])
        return lookup[raw] if len(raw) else np.zeros(0, dtype=np.int32)

    def _codes_or_zero(self, batch, side):
        if self.by is None:
            if len(self._wm) == 0:
                self._wm = np.full(1, INT64_MIN, dtype=np.int64)
                self._left_last = np.full(1, INT64_MIN, dtype=np.int64)
                self._pruned = np.full(1, INT64_MIN, dtype=np.int64)
            return np.zeros(batch.num_rows, dtype=np.int32)
        return self._codes(batch, side)

    def _check_schema(self, batch, side):
        check_batch(batch)
        if isinstance(batch, pa.Table):
            batch = batch.combine_chunks()
            batch = batch.to_batches()[0] if batch.num_rows else pa.RecordBatch.from_pylist([], schema=batch.schema)
        known = self._left_schema if side == "left" else self._right_schema
        field = require_column(batch.schema, self.on, f"{side} 'on' column")
        if self.by is not None:
            require_column(batch.schema, self.by, f"{side} 'by' column")
        if known is None:
            spec = _on_spec(field, side, self.on_unit)
            if side == "left":
                self._left_schema, self._left_spec = batch.schema, spec
            else:
                self._right_schema, self._right_spec = batch.schema, spec
            other = self._right_spec if side == "left" else self._left_spec
            if other is not None:
                _common_unit(self._left_spec, self._right_spec, self.on)
        elif not batch.schema.equals(known):
            if batch.schema.names != known.names:
                raise ValueError(
                    f"{side} batch columns {batch.schema.names} differ from the first {side} batch's {known.names}"
                )
            batch = batch.cast(known)
        if batch.num_rows and not (self._left_read if side == "left" else self._right_read):
            venue = _constant_exchange(batch)
            if side == "left":
                self._left_read, self._left_ex = True, venue
            else:
                self._right_read, self._right_ex = True, venue
        return batch

    def _on_ns(self, batch, side):
        spec = self._left_spec if side == "left" else self._right_spec
        return np.ascontiguousarray(_on_values(batch.column(self.on), spec, "ns", side, self.on))

    def _names_known(self):
        """Whether the output names can be fixed now without guessing (class docstring)."""
        if self._left_schema is None or self._right_schema is None:
            return False
        if self.exchanges is not None or not _reads_venues(self._right_schema, self.on, self.by,
                                                            self.right_prefix, None):
            return True
        if not self._right_read:
            return False
        if self._right_ex is None:  # several venues on the right: plain names
            return True
        return self._left_read or self._left_schema.get_field_index("exchange") < 0

    def _plan(self):
        """The output names: fixed on first use, then never changed."""
        if self._plan_cache is None:
            if self.exchanges is not None:
                left_ex, right_ex = self.exchanges
            elif _reads_venues(self._right_schema, self.on, self.by, self.right_prefix, None):
                if not self._right_read:
                    log.warning(
                        "asof streaming join: rows emitted before the right side had a row, so "
                        "its venue is unknown; the output columns keep plain names for the rest "
                        "of the join (pass exchanges=(left venue, right venue) for venue names)")
                right_ex = self._right_ex if self._right_read else None
                left_ex = self._left_ex if right_ex is not None else None
            else:
                left_ex = right_ex = None
            self._plan_cache = _plan(self._left_schema, self._right_schema, self.on, self.by,
                                     self.right_prefix, self.suffix, left_ex, right_ex)
        return self._plan_cache

    def _empty_output(self):
        if self._left_schema is None:
            return pa.RecordBatch.from_pylist([], schema=pa.schema([]))
        if self._plan_cache is None and not self._names_known():
            out = pa.RecordBatch.from_pylist([], schema=self._left_schema)
        else:
            out = self._emit(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), empty=True)
        return out

    def _match_held(self, direction):
        n_keys = len(self._key_values) + 1 if self.by is not None else 1
        index = _RightIndex(self._b_on, self._b_code if self.by is not None else None, None,
                            n_keys, "right", self.on, self.by, False)
        return index.match(self._h_on, self._h_code if self.by is not None else None, None, direction,
                           self.allow_exact_matches, self._tol_ns(), "left", self.on, self.by)

    def _emit(self, rows, idx, empty=False):
        """Output batch for held rows ``rows`` matched to buffer rows ``idx``."""
        plan = self._plan()
        if empty or self._held is None:
            left = pa.RecordBatch.from_pylist([], schema=self._left_schema)
        else:
            left = self._held.take(pa.array(rows, type=pa.int64())).combine_chunks()
            left = left.to_batches()[0] if left.num_rows else pa.RecordBatch.from_pylist([], schema=self._left_schema)
        cols = []
        for i, _ in plan.right:
            src = self._buf.column(i) if self._buf is not None else pa.array([], type=self._right_schema.field(i).type)
            cols.append(_gather(src, idx))
        out = _assemble(left, cols, plan, False)
        if self.ordinal_column is not None:
            ords = self._h_ord[rows] if not empty else np.zeros(0, dtype=np.int64)
            out = out.append_column(self.ordinal_column, pa.array(ords, type=pa.int64()))
        return out

    def _release(self, everything=False):
        if self._held is None or len(self._h_on) == 0 or self._right_schema is None:
            return self._empty_output()
        idx = self._match_held(self._dir)
        if everything:
            final = np.ones(len(idx), dtype=bool)
        else:
            t = self._h_on
            G = self._G
            if G == INT64_MIN:
                gt = np.zeros(len(t), dtype=bool)
                ge = gt
            else:
                gt = G > t
                ge = G >= t
            exact = self.allow_exact_matches
            tol = self._tol_ns()
            back_ok = gt if exact else ge
            if self._dir == BACKWARD:
                final = back_ok
            else:
                wm_k = self._wm[self._h_code]
                fwd_ok = (wm_k >= t) if exact else (wm_k > t)
                if tol is not None and G != INT64_MIN:
                    fwd_ok |= gt & ((G - t) > tol)
                if self._dir == FORWARD:
                    final = fwd_ok
                else:
                    bidx = self._match_held(BACKWARD)
                    has_b = bidx >= 0
                    if G != INT64_MIN and has_b.any():
                        bpos = self._b_on[np.where(has_b, bidx, 0)]
                        fwd_ok |= has_b & ge & ((G - t) >= (t - bpos))
                    final = back_ok & fwd_ok
        rows = np.flatnonzero(final)
        if len(rows) == 0:
            return self._empty_output()
        out = self._emit(rows, idx[rows])
        keep = np.flatnonzero(~final)
        self._held = self._held.take(pa.array(keep, type=pa.int64()))
        self._h_on = self._h_on[keep]
        self._h_code = self._h_code[keep]
        self._h_ord = self._h_ord[keep]
        return out

    def _prune(self):
        cdef const int64_t[::1] b_on
        cdef const int32_t[::1] b_code
        cdef const int64_t[::1] horizon
        cdef int64_t[::1] last_below
        cdef uint8_t[::1] keep
        cdef int64_t n = len(self._b_on)
        cdef bint has_tol
        cdef int64_t tol_v
        if n == 0 or self._LG == INT64_MIN:
            return
        nk = len(self._wm)
        hz = np.full(nk, self._LG, dtype=np.int64)
        if len(self._h_on):
            np.minimum.at(hz, self._h_code, self._h_on)
        self._pruned = np.maximum(self._pruned, hz)
        horizon = self._pruned
        b_on = self._b_on
        b_code = np.ascontiguousarray(self._b_code, dtype=np.int32)
        last_below = np.full(nk, -1, dtype=np.int64)
        keep = np.empty(n, dtype=np.uint8)
        tol = self._tol_ns()
        has_tol = tol is not None
        tol_v = tol if has_tol else 0
        cdef bint keep_below = self._dir != FORWARD
        with nogil:
            _prune_mask(&b_on[0], &b_code[0], n, &horizon[0], &last_below[0],
                        keep_below, has_tol, tol_v, &keep[0])
        mask = np.asarray(keep).view(bool)
        if mask.all():
            return
        rows = np.flatnonzero(mask)
        self._buf = self._buf.take(pa.array(rows, type=pa.int64()))
        self._b_on = self._b_on[rows]
        self._b_code = self._b_code[rows]

    # -- public --------------------------------------------------------------------------
    def process_left(self, batch):
        """Add left rows; return the joined left rows that are now final (maybe 0 rows)."""
        batch = self._check_schema(batch, "left")
        t = self._on_ns(batch, "left")
        codes = self._codes_or_zero(batch, "left")
        n = len(t)
        if n:
            # per-key order within the batch and against earlier batches / the pruned horizon
            last = self._left_last
            floor = np.maximum(last, self._pruned)
            order = np.argsort(codes, kind="stable")
            ts, cs = t[order], codes[order]
            first = np.ones(n, dtype=bool)
            first[1:] = cs[1:] != cs[: n - 1]
            prev = np.where(first, floor[cs], np.concatenate([[INT64_MIN], ts[: n - 1]]))
            bad = ts < prev
            if bad.any():
                row = int(order[np.flatnonzero(bad)].min())
                k = int(codes[row])
                key = f" (key {self._key_values[k]!r})" if self.by is not None else ""
                raise ValueError(
                    f"left column {self.on!r}: row {row}{key} at {int(t[row])} ns is older than "
                    "left rows already seen; the streaming ASOF join needs the left input "
                    "time-ordered (per key within a batch, globally across batches)"
                )
            np.maximum.at(last, codes, t)
            self._LG = max(self._LG, int(t.max()))
        ords = np.arange(self._next_ordinal, self._next_ordinal + n, dtype=np.int64)
        self._next_ordinal += n
        tbl = pa.Table.from_batches([batch])
        self._held = tbl if self._held is None else pa.concat_tables([self._held, tbl])
        self._h_on = np.concatenate([self._h_on, t])
        self._h_code = np.concatenate([self._h_code, codes]).astype(np.int32)
        self._h_ord = np.concatenate([self._h_ord, ords])
        out = self._release()
        self._prune()
        return out

    def process_right(self, batch):
        """Add right rows; return the left rows released by the right watermark advancing."""
        cdef const int64_t[::1] tv
        cdef const int32_t[::1] cv
        cdef int64_t[::1] wm
        cdef uint8_t[::1] late
        cdef int64_t n
        cdef int64_t g0
        batch = self._check_schema(batch, "right")
        t = self._on_ns(batch, "right")
        codes = np.ascontiguousarray(self._codes_or_zero(batch, "right"), dtype=np.int32)
        n = len(t)
        if n:
            tv = t
            cv = codes
            wm = self._wm
            late = np.empty(n, dtype=np.uint8)
            g0 = self._G
            with nogil:
                _late_rows(&tv[0], &cv[0], n, g0, &wm[0], &late[0])
            mask = np.asarray(late).view(bool)
            if mask.any():
                bad = np.flatnonzero(mask)
                self._late_count += len(bad)
                self._dead_letter_add(batch.take(pa.array(bad, type=pa.int64())))
                log.log(logging.WARNING if self._late_count <= 1000 else logging.DEBUG,
                        "asof streaming join: %d late right rows sent to the dead letter", len(bad))
                good = np.flatnonzero(~mask)
                batch = batch.take(pa.array(good, type=pa.int64()))
                t = t[good]
                codes = codes[good]
            if len(t):
                tbl = pa.Table.from_batches([batch])
                self._buf = tbl if self._buf is None else pa.concat_tables([self._buf, tbl])
                self._b_on = np.concatenate([self._b_on, t])
                self._b_code = np.concatenate([self._b_code, codes]).astype(np.int32)
                self._G = max(self._G, int(t.max()))
        out = self._release()
        self._prune()
        return out

    def advance_right_watermark(self, t_ns):
        """Declare every right row at or before ``t_ns`` (ns) known — e.g. the right input has
        been quiet past an idle timeout — and return the left rows that this makes final.
        Right rows arriving later at or before ``t_ns`` are late."""
        t_ns = int(t_ns)
        if t_ns >= np.iinfo(np.int64).max:
            t_ns = np.iinfo(np.int64).max - 1
        if t_ns + 1 > self._G:
            self._G = t_ns + 1
        out = self._release()
        self._prune()
        return out

    def flush(self):
        """End of stream: every held left row, joined with the right rows known now.

        If the right input never delivered a batch, its columns are unknown: the held left
        rows are returned as they are (the left's columns, plus ``ordinal_column``) with a
        warning, rather than lost."""
        if self._right_schema is None and self._held is not None and len(self._h_on):
            n = len(self._h_on)
            log.warning("asof streaming join: the right input delivered no batch; %d left rows "
                        "emitted without right columns", n)
            out = self._held.combine_chunks().to_batches()[0]
            if self.ordinal_column is not None:
                out = out.append_column(self.ordinal_column,
                                        pa.array(self._h_ord, type=pa.int64()))
            self._held = None
            self._h_on = np.zeros(0, dtype=np.int64)
            self._h_code = np.zeros(0, dtype=np.int32)
            self._h_ord = np.zeros(0, dtype=np.int64)
            return out
        out = self._release(everything=True)
        return out


def _min_on(batch, on):
    if batch.num_rows == 0:
        return None
    col = batch.column(on)
    if pat.is_timestamp(col.type):
        col = col.cast(pa.int64())
    return pc.min(col).as_py()


def asof_join_streaming(left_stream, right_stream, on="timestamp", by=None, tolerance_ms=1000,
                        direction="backward", *, allow_exact_matches=True, right_prefix=None,
                        suffix=None, on_unit="ms", tolerance=None, ordinal_column=None,
                        exchanges=None):
    """Join two iterables of batches with :class:`StreamingAsofJoinKernel`; yields output batches.

    Batches are consumed in order of their minimum ``on`` (ties: right first, so left rows at
    that time can be released); empty outputs are skipped; the kernel is flushed at the end.
    Timestamps and integer ``on`` columns are compared after conversion to nanoseconds.
    Every yielded batch has the same schema (naming: :class:`StreamingAsofJoinKernel`).
    """
    kernel = StreamingAsofJoinKernel(on=on, by=by, tolerance_ms=tolerance_ms, direction=direction,
                                     allow_exact_matches=allow_exact_matches,
                                     right_prefix=right_prefix, suffix=suffix, on_unit=on_unit,
                                     tolerance=tolerance, ordinal_column=ordinal_column,
                                     exchanges=exchanges)
    lit, rit = iter(left_stream), iter(right_stream)

    def _ns_min(batch):
        m = _min_on(batch, on)
        if m is None:  # empty batch: consume it at once
            return INT64_MIN
        t = batch.schema.field(on).type
        unit = t.unit if pat.is_timestamp(t) else on_unit
        return to_ns(m, unit)

    lb = next(lit, None)
    rb = next(rit, None)
    while lb is not None or rb is not None:
        if rb is not None and (lb is None or _ns_min(rb) <= _ns_min(lb)):
            out = kernel.process_right(rb)
            rb = next(rit, None)
        else:
            out = kernel.process_left(lb)
            lb = next(lit, None)
        if out.num_rows:
            yield out
    out = kernel.flush()
    if out.num_rows:
        yield out
