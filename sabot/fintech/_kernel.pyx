# cython: language_level=3
"""The one kernel base every kernel in :mod:`sabot.fintech` is built on.

Calling convention: ``kernel(batch) -> same type as batch`` with the output
columns appended (or replaced in place when the name exists). A ``Table`` is processed batch by
batch with state carried, so chunked columns are never concatenated.

Nulls and NaN: a row with a null or NaN input gets null outputs and does not touch the state.
Null inputs are found here (Arrow validity bitmaps, combined once into ``io.ok``); NaN is checked
by each kernel on the values it reads.  A kernel built in ``"nan"`` mode (``config["nulls"]``,
see :func:`sabot.fintech.missing`) leaves those float outputs NaN, without a validity bitmap.

Other data (polars, pandas, numpy, Arrow-capsule objects) is converted by :mod:`sabot.interop`
and the result given back as the same kind.
"""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pat

from cpython.ref cimport Py_REFCNT

cdef extern from "sys/mman.h" nogil:
    int madvise(void* addr, size_t length, int advice)
    int MADV_HUGEPAGE
from libc.stdint cimport uint32_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from .. import interop
from ._columns import NAN as NAN_MODE, NULL as NULL_MODE, check_missing, current_missing
from ._columns import missing as _missing_mode
from ._columns import (
    require_column,
    require_numeric,
    resolve_value_column,
    with_columns,
)

#: Version of the dictionaries returned by ``Kernel.state_dict``.
STATE_VERSION = 1

# Input kinds.
AUTO = "auto"          # a value column; None means "price, else the only numeric column"
NUMERIC = "numeric"    # a named numeric column, cast once to float64
TIME = "time"          # an Arrow timestamp (any unit) or int64 nanoseconds
SIDE = "side"          # +1/-1 numbers or 'buy'/'sell' strings, read as +1.0/-1.0

# Output kinds.
F64 = "f8"
BOOL = "bool"
I64 = "i8"
LABEL = "label"


def value_input(param, name):
    """A value column argument that may be None (auto-resolved from the batch)."""
    return (param, name, AUTO)


def numeric_input(param, name):
    return (param, name, NUMERIC)


def time_input(param, name):
    return (param, name, TIME)


def side_input(param, name):
    return (param, name, SIDE)


def output(name, kind=F64, labels=None):
    """An output column; ``labels`` are the strings a LABEL output's codes stand for."""
    return (name, kind, tuple(labels) if labels is not None else None)


cdef inline uintptr_t _address(object buf):
    return <uintptr_t>buf.address


cdef inline uintptr_t _values_address(object arr):
    """Address of element 0 of an 8-byte-wide fixed-size Arrow array, slice offset applied."""
    cdef Py_ssize_t offset = arr.offset
    return _address(arr.buffers()[1]) + <uintptr_t>(offset * 8)


cdef bint _any_non_finite(const double* v, Py_ssize_t n) noexcept nogil:
    """Whether any of ``v[0:n]`` is NaN or ±inf (OR of their ``non_finite_mark``); the usual
    answer, no, costs a fraction of an exact count."""
    cdef uint32_t seen = 0
    cdef Py_ssize_t i
    for i in range(n):
        seen |= non_finite_mark(v[i])
    return (seen >> 31) != 0


cdef Py_ssize_t _count_nan(const double* v, Py_ssize_t n) noexcept nogil:
    """How many of ``v[0:n]`` are NaN, from the bit patterns (exponent all ones, mantissa
    nonzero) in 32-bit halves: plain SSE2 integer compares, so the loop vectorises on any
    x86-64 (a floating ``v != v`` count does not, nor do 64-bit integer compares).  Skipped
    when a quick pass finds nothing non-finite."""
    cdef const int32_t* half = <const int32_t*>v
    cdef Py_ssize_t i
    cdef int32_t hi, lo, count = 0
    cdef Py_ssize_t total = 0, start, stop
    if not _any_non_finite(v, n):
        return 0
    # int32 counters vectorise better than 64-bit ones: count in blocks below 2**31 rows.
    for start in range(0, n, 1 << 30):
        stop = min(n, start + (1 << 30))
        count = 0
        for i in range(start, stop):
            lo = half[2 * i]
            hi = half[2 * i + 1] & 0x7FFFFFFF
            count += (hi > 0x7FF00000) | ((hi == 0x7FF00000) & (lo != 0))
        total += count
    return total


cdef void _nan_to_null(double* v, uint8_t* bitmap, Py_ssize_t n,
                       Py_ssize_t n_nan) noexcept nogil:
    """Validity bitmap of ``v[0:n]`` (bit clear where NaN), given that ``n_nan`` values are NaN;
    NaN slots are zeroed (Arrow's convention for the value under a null).

    Only the bytes between the first and the last NaN are computed (branch-free); the rest are
    all-valid.  Indicators' nulls are usually their leading lookback rows, so this is cheap."""
    cdef Py_ssize_t i, base, byte_i, first = 0, last = 0, seen = 0
    cdef uint8_t bits
    cdef bint ok
    while v[first] == v[first]:
        first += 1
    for i in range(first, n):
        seen += v[i] != v[i]
        if seen == n_nan:
            last = i
            break
    memset(bitmap, 0xFF, (n + 7) >> 3)
    for byte_i in range(first >> 3, (last >> 3) + 1):
        base = byte_i << 3
        bits = 0
        for i in range(min(8, n - base)):
            ok = v[base + i] == v[base + i]
            bits |= <uint8_t>(ok << i)
            v[base + i] = v[base + i] if ok else 0.0
        bitmap[byte_i] = bits


cdef void _and_validity(uint8_t* ok, const uint8_t* bitmap, Py_ssize_t offset,
                        Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(n):
        j = i + offset
        if not ((bitmap[j >> 3] >> (j & 7)) & 1):
            ok[i] = 0


# ------------------------------------------------------------ keyed batches, key by key
# (Kernel._run_partitioned): rows grouped by key slot in chunks, gathered, run, put back.
# Measured with 8 interleaved keys: the grouping costs about 2 ns per row, so it pays for
# kernels whose keyed loop is that much slower than their unkeyed one; at 64 rows per key the
# two paths are level (per-call costs dominate both), from 256 on key by key is ahead.

cdef Py_ssize_t _partition_min_rows = 64        # mean rows per key a batch and a chunk need
cdef Py_ssize_t _partition_chunk_rows = 4096    # rows grouped at once (scratch stays in cache)
cdef bint _partition_every_kernel = False       # tests: kernels that did not opt in too
cdef Py_ssize_t ROOM_PER_KEY_UP_TO = 16         # this many keys or fewer: no counting pass
cdef Py_ssize_t MAX_CHUNK_ROWS = 1 << 16        # more keys than this / 64: row order
cdef Py_ssize_t STREAM_ROWS = 1 << 19           # outputs of 4 MB and more bypass the cache
cdef Py_ssize_t PREFETCH_ROWS = 256             # rows ahead that grouping asks memory for


def _partition_settings(min_rows_per_key=None, chunk_rows=None, every_kernel=None):
    """Private, for tests and measurements: the settings of key-by-key runs
    ``(min_rows_per_key, chunk_rows, every_kernel)`` before this call; sets those given.
    ``min_rows_per_key`` 0 partitions every keyed batch, a huge number none; ``every_kernel``
    partitions keyed kernels that did not opt in as well."""
    global _partition_min_rows, _partition_chunk_rows, _partition_every_kernel
    previous = (_partition_min_rows, _partition_chunk_rows, _partition_every_kernel)
    if min_rows_per_key is not None:
        _partition_min_rows = max(0, int(min_rows_per_key))
    if chunk_rows is not None:
        _partition_chunk_rows = max(1, int(chunk_rows))
    if every_kernel is not None:
        _partition_every_kernel = bool(every_kernel)
    return previous


cdef inline size_t _aligned(size_t nbytes) noexcept nogil:
    """``nbytes`` rounded up to a cache line."""
    return (nbytes + 63) & ~(<size_t>63)


cdef extern from *:
    # a hint to bring the cache line at an address in (never faults; GCC and Clang)
    void prefetch "__builtin_prefetch"(const void* address) noexcept nogil


cdef void _group_rows(const int32_t* slot, Py_ssize_t m, Py_ssize_t n_keys, Py_ssize_t room,
                      Py_ssize_t* first, Py_ssize_t* end, int32_t* place,
                      const uint64_t* src, uint64_t* dst) noexcept nogil:
    """Stable sort of rows ``0..m-1`` by ``slot``: key ``k``'s rows go, in row order, to
    positions ``first[k] .. end[k] - 1``; ``place[i]`` is row ``i``'s position.  The first
    input (unless ``src`` is NULL) moves along in the same pass: ``dst[place[i]] = src[i]``.

    ``room`` > 0 (at least ``m``; for a few keys): key ``k`` starts at ``k * room``, no
    counting needed.  ``room`` 0: keys packed one after the other after a counting pass in
    four interleaved tables (a row's increment rarely waits for the previous row's to the
    same counter); ``end`` then needs ``4 * n_keys`` entries."""
    cdef Py_ssize_t i, k, total = 0, p
    cdef Py_ssize_t* c1 = end + n_keys
    cdef Py_ssize_t* c2 = end + 2 * n_keys
    cdef Py_ssize_t* c3 = end + 3 * n_keys
    if room:
        for k in range(n_keys):
            first[k] = k * room
    else:
        memset(end, 0, 4 * n_keys * sizeof(Py_ssize_t))
        for i in range(0, m - 3, 4):
            end[slot[i]] += 1
            c1[slot[i + 1]] += 1
            c2[slot[i + 2]] += 1
            c3[slot[i + 3]] += 1
        for i in range(m - m % 4, m):
            end[slot[i]] += 1
        for k in range(n_keys):
            first[k] = total
            total += end[k] + c1[k] + c2[k] + c3[k]
    for k in range(n_keys):              # end[k]: key k's cursor, then the end of its rows
        end[k] = first[k]
    for i in range(m):
        if (i & 15) == 0:                # the batch's rows ahead, from memory (a hint)
            prefetch(slot + i + PREFETCH_ROWS)
            prefetch(src + i + PREFETCH_ROWS)
            prefetch(src + i + PREFETCH_ROWS + 8)
        k = slot[i]
        p = end[k]
        end[k] = p + 1
        place[i] = <int32_t>p
        if src != NULL:
            dst[p] = src[i]


cdef void _gather(const uint64_t* src, const int32_t* place, Py_ssize_t m,
                  uint64_t* dst) noexcept nogil:
    """``dst[place[i]] = src[i]`` (8-byte values: float64 or int64)."""
    cdef Py_ssize_t i
    for i in range(m):
        dst[place[i]] = src[i]


cdef void _gather_bytes(const uint8_t* src, const int32_t* place, Py_ssize_t m,
                        uint8_t* dst) noexcept nogil:
    """``dst[place[i]] = src[i]`` (the null mask ``io.ok``)."""
    cdef Py_ssize_t i
    for i in range(m):
        dst[place[i]] = src[i]


cdef void _gather_bits(const uint8_t* bitmap, Py_ssize_t offset, const int32_t* place,
                       Py_ssize_t m, Py_ssize_t n_keys, const Py_ssize_t* first,
                       const Py_ssize_t* end, uint8_t* flags, uint8_t* dst) noexcept nogil:
    """Bit ``offset + i`` of ``bitmap`` to bit ``place[i]`` of ``dst``, through one byte per
    row in ``flags``; the bytes of ``dst`` covering each key's positions (see ``_group_rows``)
    are packed (``flags`` and ``dst`` have room for whole bytes)."""
    cdef Py_ssize_t i, b, r, k
    cdef uint8_t byte
    for i in range(m):
        b = offset + i
        flags[place[i]] = (bitmap[b >> 3] >> (b & 7)) & 1
    for k in range(n_keys):
        for b in range(first[k] >> 3, (end[k] + 7) >> 3):
            byte = 0
            for r in range(8):
                byte |= <uint8_t>(flags[8 * b + r] << r)
            dst[b] = byte


def _grouped_for_test(slots, values, validity, Py_ssize_t offset, Py_ssize_t room):
    """Private, for tests: ``(place, grouped values, grouped validity bitmap, first, end)`` of
    one chunk as ``_run_partitioned`` groups it (``_group_rows``): ``slots`` int32 key slot
    per row, ``values`` float64, ``validity`` an Arrow-style bitmap (bytes) whose row 0 is
    bit ``offset``."""
    cdef const int32_t[::1] s = np.ascontiguousarray(slots, dtype=np.int32)
    cdef const double[::1] v = np.ascontiguousarray(values, dtype=np.float64)
    cdef const uint8_t[::1] bitmap = np.frombuffer(validity, dtype=np.uint8)
    cdef Py_ssize_t m = s.shape[0], n_keys = (max(s) + 1) if m else 0
    place = np.zeros(m, dtype=np.int32)
    size = max(m, n_keys * room)
    grouped = np.full(size, np.nan)
    bits = np.zeros((size + 7) // 8, dtype=np.uint8)
    flags = np.zeros((size + 7) // 8 * 8, dtype=np.uint8)
    first = np.zeros(n_keys + 1, dtype=np.intp)
    ends = np.zeros(4 * n_keys + 1, dtype=np.intp)
    cdef int32_t[::1] p = place
    cdef double[::1] g = grouped
    cdef uint8_t[::1] b = bits
    cdef uint8_t[::1] f = flags
    cdef Py_ssize_t[::1] fi = first
    cdef Py_ssize_t[::1] en = ends
    if m:
        _group_rows(&s[0], m, n_keys, room, &fi[0], &en[0], &p[0], <const uint64_t*>&v[0],
                    <uint64_t*>&g[0])
        _gather_bits(&bitmap[0], offset, &p[0], m, n_keys, &fi[0], &en[0], &f[0], &b[0])
    return place, grouped, bits, first[:n_keys].copy(), ends[:n_keys].copy()


cdef extern from *:
    """
    #if defined(__SSE2__) || defined(_M_X64) || defined(_M_AMD64)
    #include <emmintrin.h>
    #define sabot_stream_u64(p, v) _mm_stream_si64((long long*)(p), (long long)(v))
    #define sabot_stream_fence() _mm_sfence()
    #else
    #define sabot_stream_u64(p, v) (*(p) = (v))
    #define sabot_stream_fence()
    #endif
    """
    void stream_u64 "sabot_stream_u64"(uint64_t* p, uint64_t v) noexcept nogil
    void stream_fence "sabot_stream_fence"() noexcept nogil


cdef void _ungather(const uint64_t* src, const int32_t* place, Py_ssize_t m, uint64_t* dst,
                    bint stream) noexcept nogil:
    """``dst[i] = src[place[i]]``: outputs back in row order.  ``stream``: with stores that
    bypass the cache (for outputs too large to stay in it: no read of each line first)."""
    cdef Py_ssize_t i
    if stream:
        for i in range(m):
            stream_u64(dst + i, src[place[i]])
        stream_fence()
    else:
        for i in range(m):
            dst[i] = src[place[i]]


def _as_side(arr, name):
    """+1.0 for buy, -1.0 for sell; numbers by their sign. Anything else is an error."""
    if pat.is_string(arr.type) or pat.is_large_string(arr.type):
        lowered = pc.utf8_lower(arr)
        side = pc.if_else(pc.equal(lowered, "buy"), 1.0,
                          pc.if_else(pc.equal(lowered, "sell"), -1.0, None))
        bad = pc.and_(pc.is_null(side), pc.is_valid(arr))
        if pc.any(bad).as_py():
            first = arr.filter(bad)[0].as_py()
            raise ValueError(
                f"side column {name!r}: unknown side {first!r}; expected 'buy'/'sell' or +1/-1"
            )
        return side
    if pat.is_integer(arr.type) or pat.is_floating(arr.type):
        values = arr.cast(pa.float64(), safe=False)
        zero = pc.equal(values, 0.0)
        if pc.any(zero).as_py():
            raise ValueError(f"side column {name!r}: side 0 is neither buy (+1) nor sell (-1)")
        return pc.sign(values)
    raise TypeError(f"side column {name!r} has type {arr.type}; expected string or numeric")


def _as_float64(arr, name):
    t = arr.type
    if pat.is_float64(t):
        return arr
    if pat.is_integer(t) or pat.is_floating(t) or pat.is_decimal(t):
        return arr.cast(pa.float64(), safe=False)
    raise TypeError(f"column {name!r} has type {t}; expected a numeric type")


def _as_int64_ns(arr, name):
    t = arr.type
    if pat.is_timestamp(t):
        if t.unit != "ns":
            arr = arr.cast(pa.timestamp("ns", tz=t.tz))
        return arr
    if pat.is_int64(t):
        return arr
    raise TypeError(
        f"time column {name!r} has type {t}; expected a timestamp or int64 nanoseconds"
    )


def _is_native(kind, t):
    """Whether a column of type ``t`` is read as is (no cast) for an input of ``kind``."""
    if kind == TIME:
        return pat.is_int64(t) or pat.is_timestamp(t) and t.unit == "ns"
    if kind == SIDE:
        return False
    return pat.is_float64(t)


# ---------------------------------------------------------------- output memory

#: Output buffers of at least this size are recycled (see ``_output_buffer``): 8 KiB rows.
POOL_MIN_BYTES = 64 << 10
#: At most this many buffers are kept in the recycling pool.
POOL_MAX_BUFFERS = 64
#: At most this many bytes are kept in the recycling pool.
POOL_MAX_BYTES = 512 << 20
_POOL = []


cdef void _advise_huge_pages(uintptr_t addr, Py_ssize_t nbytes) noexcept:
    """madvise(MADV_HUGEPAGE) over the whole pages of [addr, addr + nbytes)."""
    cdef uintptr_t start = (addr + 4095) & ~(<uintptr_t>4095)
    cdef uintptr_t end = (addr + <uintptr_t>nbytes) & ~(<uintptr_t>4095)
    if end > start:
        madvise(<void*>start, end - start, MADV_HUGEPAGE)


cdef inline bint _pool_free(object arr):
    """Nothing but the pool (and the caller's reference) holds ``arr``: every Arrow array built
    on it has been released."""
    return Py_REFCNT(arr) <= 2


def _output_buffer(Py_ssize_t nbytes):
    """A writable buffer of ``nbytes`` for an output column.

    Large buffers are recycled: a kernel output of a big batch is usually dropped before the
    next call, and re-using its memory spares the operating system mapping and zeroing fresh
    pages on every call (a page fault per 4 KiB, several ns per row in a VM).  A buffer is
    handed out again only once no Arrow array refers to it; at most POOL_MAX_BUFFERS buffers
    and POOL_MAX_BYTES bytes are kept."""
    cdef object arr, best = None
    cdef Py_ssize_t held
    if nbytes < POOL_MIN_BYTES:
        return pa.allocate_buffer(nbytes)
    for arr in _POOL:          # the smallest free buffer that fits: a larger one stays for a
        if (nbytes <= arr.nbytes <= 2 * nbytes and _pool_free(arr)     # larger request
                and (best is None or arr.nbytes < best.nbytes)):
            best = arr
    arr = None
    if best is not None:
        return pa.py_buffer(best).slice(0, nbytes)
    held = sum(a.nbytes for a in _POOL)
    if held + nbytes > POOL_MAX_BYTES:             # make room: forget free buffers, oldest first
        keep = []
        for a in _POOL:
            if held + nbytes > POOL_MAX_BYTES and _pool_free(a):
                held -= a.nbytes
            else:
                keep.append(a)
        a = None
        _POOL[:] = keep
    arr = np.empty(nbytes, dtype=np.uint8)
    if nbytes >= (4 << 20):             # fresh and large: fewer first-touch faults with huge pages
        _advise_huge_pages(<uintptr_t>arr.ctypes.data, nbytes)
    if held + nbytes <= POOL_MAX_BYTES and len(_POOL) < POOL_MAX_BUFFERS:
        _POOL.append(arr)
    return pa.py_buffer(arr)


_LABEL_DICTIONARIES = {}


def _label_dictionary(labels):
    """The Arrow string array of a label output's dictionary, built once per label set."""
    key = tuple(labels)
    dictionary = _LABEL_DICTIONARIES.get(key)
    if dictionary is None:
        dictionary = _LABEL_DICTIONARIES[key] = pa.array(key, pa.string())
    return dictionary


cdef object _typed_output(double* values, Py_ssize_t n, str kind, object labels, object valid,
                          object data, Py_ssize_t n_null):
    """The output column of ``kind`` from the float64 values ``run`` wrote (nulls zeroed);
    ``labels``: the dictionary array of a LABEL output.

    Integer kinds are converted here in C into recycled buffers (an Arrow cast would allocate
    and fault in a fresh buffer per call)."""
    cdef Py_ssize_t i, k, m = 8
    cdef int64_t* as_int64
    cdef int32_t* codes
    cdef int32_t n_labels, code
    cdef bint out_of_range = False
    cdef uint8_t* bits
    cdef uint8_t byte
    if kind == F64:
        return pa.Array.from_buffers(pa.float64(), n, [valid, data], null_count=n_null)
    if kind == I64:                      # in place: element i is read before it is written
        as_int64 = <int64_t*>values
        with nogil:
            for i in range(n):
                as_int64[i] = <int64_t>values[i]
        return pa.Array.from_buffers(pa.int64(), n, [valid, data], null_count=n_null)
    if kind == LABEL:
        code_buf = _output_buffer(n * 4)
        codes = <int32_t*>_address(code_buf)
        n_labels = len(labels)
        with nogil:
            for i in range(n):
                code = <int32_t>values[i]
                codes[i] = code
                out_of_range |= (code < 0) | (code >= n_labels)
        if out_of_range:                 # a kernel bug, never data: checked here, in the loop
            raise AssertionError(f"label output outside 0..{n_labels - 1}")
        indices = pa.Array.from_buffers(pa.int32(), n, [valid, code_buf], null_count=n_null)
        return pa.DictionaryArray.from_arrays(indices, labels, safe=False)
    bit_buf = pa.allocate_buffer((n + 7) // 8)      # BOOL: bit-packed value != 0
    bits = <uint8_t*>_address(bit_buf)
    with nogil:
        for i in range(0, n, 8):
            byte = 0
            if n - i < 8:
                m = n - i
            for k in range(m):
                byte |= <uint8_t>((values[i + k] != 0.0) << k)
            bits[i >> 3] = byte
    return pa.Array.from_buffers(pa.bool_(), n, [valid, bit_buf], null_count=n_null)


#: Recently encoded key columns: a chain of keyed kernels over one batch encodes its key column
#: once. Each entry holds the source array, so its buffers (whose addresses form the cache key)
#: stay alive and cannot be reused by another array while cached.
_KEY_CACHE = []
_KEY_CACHE_SIZE = 8


def _python_values(arr):
    """``arr.to_pylist()``; a string column's values are read from its buffers instead:
    pyarrow converts strings through its pandas layer, which imports pandas (about half a
    second) the first time in a process - the first batch of every keyed kernel paid it."""
    cdef Py_ssize_t i, n = len(arr)
    t = arr.type
    if not (pat.is_string(t) or pat.is_large_string(t)) or n == 0:
        return arr.to_pylist()
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32 if pat.is_string(t) else np.int64)[
        arr.offset:arr.offset + n + 1].tolist()
    data = bufs[2].to_pybytes() if bufs[2] is not None else b""
    valid = None
    if arr.null_count:
        valid = np.unpackbits(np.frombuffer(bufs[0], dtype=np.uint8),
                              bitorder="little")[arr.offset:arr.offset + n].tolist()
    return [None if valid is not None and not valid[i]
            else data[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n)]


def _encode_keys(keys):
    """(int codes per row as numpy, the distinct key values as Python objects)."""
    ident = (keys.type, len(keys), keys.offset,
             tuple(0 if b is None else b.address for b in keys.buffers()))
    for entry in _KEY_CACHE:
        if entry[0] == ident:
            return entry[2], entry[3]
    if pat.is_dictionary(keys.type) and keys.null_count == 0:
        indices, dictionary = keys.indices, keys.dictionary
    else:
        decoded = keys.dictionary_decode() if pat.is_dictionary(keys.type) else keys
        encoded = pc.dictionary_encode(decoded, null_encoding="encode")
        indices, dictionary = encoded.indices, encoded.dictionary
    # the indices have no nulls here (null keys are encoded as a value); read from their buffer
    # (``to_numpy`` goes through pyarrow's pandas layer, see _python_values)
    codes = np.frombuffer(indices.buffers()[1], dtype=np.dtype(
        f"{'u' if pat.is_unsigned_integer(indices.type) else ''}int{indices.type.bit_width}"))[
        indices.offset:indices.offset + len(indices)]
    values = _python_values(dictionary)
    _KEY_CACHE.insert(0, (ident, keys, codes, values))
    del _KEY_CACHE[_KEY_CACHE_SIZE:]
    return codes, values


cdef class Kernel:
    """Base of every kernel: declare columns, params and outputs; implement ``run``.

    Instances are callable on successive batches and carry state across them, per key when
    ``by`` is set. ``state_dict()`` / ``load_state_dict()`` / ``reset()`` checkpoint it.
    """

    def __cinit__(self, *args, **kwargs):
        self.name = type(self).__name__
        self.by = None
        self.config = {}
        self._inputs = []
        self._outputs = []
        self.stride = 0
        self._state = None
        self._state_ptr = NULL
        self._n_slots = 0
        self._slot_of_key = {}
        self._keys = []
        self._plan_schema = None
        self._plan = None
        self._partition_keys = False
        self._scratch = NULL
        self._scratch_bytes = 0

    def __dealloc__(self):
        free(self._scratch)

    def declare(self, str name, inputs, outputs, *, Py_ssize_t stride=0, by=None, config=None,
                bint partition_keys=False, nulls=None):
        """Declare the kernel: its function name, inputs, outputs and per-key state width.

        ``partition_keys``: with ``by``, run a batch key by key through the unkeyed loop when
        there are enough rows per key (see ``_run_partitioned``); for kernels whose unkeyed
        loop is much faster than their keyed one (block fast paths, state in registers).
        ``nulls``: ``"null"`` or ``"nan"`` for float outputs with no value (see ``nulls``);
        None takes the mode in effect (:func:`sabot.fintech.missing`, ``set_missing``)."""
        inputs = list(inputs)
        outputs = list(outputs)
        if sum(1 for i in inputs if i[2] != TIME) > MAX_COLUMNS or len(outputs) > MAX_COLUMNS:
            raise ValueError(f"{name}: at most {MAX_COLUMNS} value inputs and outputs")
        if sum(1 for i in inputs if i[2] == TIME) > 1:
            raise ValueError(f"{name}: at most one time input")
        if by is not None and not isinstance(by, str):
            raise TypeError(f"{name}: by must be a column name or None, got {by!r}")
        self.name = name
        self._inputs = inputs
        self._outputs = [(oname, kind, _label_dictionary(labels) if kind == LABEL else None)
                         for oname, kind, labels in outputs]
        self.stride = stride
        self.by = by
        self._partition_keys = partition_keys
        self.config = dict(config or {})
        if by is not None:
            self.config["by"] = by
        self.nulls = current_missing() if nulls is None else nulls   # in config for "nan" only

    @property
    def nulls(self):
        """``"null"`` (the default): float outputs with no value — warm-up rows, rows with a
        missing input — are Arrow nulls; ``"nan"``: they are NaN (no validity bitmap, so
        ``.to_numpy()`` works).  Boolean, integer and label outputs keep nulls either way.
        Taken from :func:`sabot.fintech.missing` / ``set_missing`` when the kernel is built;
        settable.  Part of ``config``, so a checkpoint restores into the same mode only."""
        return self.config.get("nulls", NULL_MODE)

    @nulls.setter
    def nulls(self, mode):
        if check_missing(mode) == NAN_MODE:
            self.config["nulls"] = NAN_MODE
        else:
            self.config.pop("nulls", None)

    def clone(self):
        """A new kernel of the same configuration (``nulls`` mode included), fresh state."""
        config = dict(self.config)
        mode = config.pop("nulls", NULL_MODE)
        try:
            with _missing_mode(mode):
                twin = type(self)(**config)
        except TypeError as exc:
            raise TypeError(f"{self!r} cannot be rebuilt from its configuration: {exc}") from exc
        if twin.config != self.config:
            raise TypeError(f"{self!r} rebuilt from its configuration differs: {twin!r}")
        return twin

    @property
    def output_names(self):
        return [o[0] for o in self._outputs]

    cdef void init_state(self, double* st) noexcept nogil:
        memset(st, 0, self.stride * sizeof(double))

    cdef void run(self, KernelIO* io) noexcept nogil:
        pass

    # ---------------------------------------------------------------- calling

    def __call__(self, batch):
        """``batch`` with the outputs appended: a RecordBatch or Table as is; any other data
        :mod:`sabot.interop` accepts (polars, pandas, numpy, Arrow-capsule objects; one
        array or Series for a kernel reading one column) comes back as the same kind."""
        if isinstance(batch, pa.RecordBatch):
            return self._process(batch)
        if not isinstance(batch, pa.Table):
            return interop.apply(self, batch, self.output_names, column=self._array_column(),
                                 what=f"{self.name} input")
        parts = batch.to_batches()
        if not parts:
            parts = [pa.RecordBatch.from_arrays(
                [pa.array([], type=f.type) for f in batch.schema], schema=batch.schema)]
        outs = [self._process(b) for b in parts]
        return pa.Table.from_batches(outs, schema=outs[0].schema)

    def _array_column(self):
        """The column a single array given to this kernel becomes: its one input's column
        (``price`` for an automatic value column); None when it reads several or has keys."""
        if len(self._inputs) != 1 or self.by is not None:
            return None
        return self._inputs[0][1] or "price"

    def resolve_columns(self, schema):
        """The (kind, column name) of every input, checked against ``schema``."""
        resolved = []
        for param, name, kind in self._inputs:
            if kind == AUTO:
                resolved.append((kind, resolve_value_column(schema, name, self.by, param)))
            elif kind == NUMERIC:
                require_numeric(schema, name, param)
                resolved.append((kind, name))
            else:
                require_column(schema, name, param)
                resolved.append((kind, name))
        if self.by is not None:
            require_column(schema, self.by, "by column")
        return resolved

    cdef object _process(self, batch):
        cdef KernelIO io
        cdef Py_ssize_t n = batch.num_rows
        cdef int n_x = 0, j
        cdef object arr, ok_arr = None, slots = None
        cdef uint8_t* ok_ptr = NULL
        cdef list keep = []
        cdef list data_bufs = []
        cdef Py_ssize_t n_null
        cdef Py_ssize_t n_nan[MAX_COLUMNS]
        cdef int n_out = len(self._outputs)
        cdef uint8_t* bitmap

        schema = batch.schema
        if self._plan_schema is None or not schema.equals(self._plan_schema):
            self._plan = [(kind, name, schema.get_field_index(name),
                           _is_native(kind, schema.field(name).type))
                          for kind, name in self.resolve_columns(schema)]
            self._plan_schema = schema
        memset(&io, 0, sizeof(KernelIO))
        io.n = n
        for kind, name, index, native in self._plan:
            arr = batch.column(index)
            if not native:
                if pat.is_dictionary(arr.type):
                    arr = arr.dictionary_decode()
                if kind == TIME:
                    arr = _as_int64_ns(arr, name)
                elif kind == SIDE:
                    arr = _as_side(arr, name)
                else:
                    arr = _as_float64(arr, name)
            keep.append(arr)
            if n == 0:
                continue
            if kind == TIME:
                io.t = <const int64_t*>_values_address(arr)
            else:
                io.x[n_x] = <const double*>_values_address(arr)
            if arr.null_count:
                if kind != TIME:
                    io.xvalid[n_x] = <const uint8_t*>_address(arr.buffers()[0])
                    io.xoffset[n_x] = arr.offset
                if ok_arr is None:
                    ok_arr = np.ones(n, dtype=np.uint8)
                    ok_ptr = <uint8_t*><uintptr_t>ok_arr.ctypes.data
                _and_validity(ok_ptr, <const uint8_t*>_address(arr.buffers()[0]),
                              arr.offset, n)
            if kind != TIME:
                n_x += 1
        io.ok = ok_ptr

        if self.stride > 0:
            if self.by is not None:
                slots = self._key_slots(batch.column(self.by))
                if n:
                    io.slot = <const int32_t*><uintptr_t>slots.ctypes.data
            elif self._n_slots == 0:
                self._new_slot(None)
            io.state = self._state_ptr
            io.stride = self.stride

        for j in range(len(self._outputs)):
            data = _output_buffer(n * 8)
            if n:
                io.out[j] = <double*>_address(data)
            data_bufs.append(data)

        memset(n_nan, 0, sizeof(n_nan))
        if n:
            with nogil:
                self._run_blocks(&io, n_out, n_nan)

        named = []
        nan_floats = self.config.get("nulls") == NAN_MODE
        for j, (oname, okind, labels) in enumerate(self._outputs):
            valid = None
            n_null = n_nan[j]
            if nan_floats and okind == F64:
                n_null = 0                       # "nan" mode: float outputs stay NaN
            if n_null:
                valid = pa.allocate_buffer((n + 7) // 8)
                bitmap = <uint8_t*>_address(valid)
                with nogil:
                    _nan_to_null(io.out[j], bitmap, n, n_null)
            named.append((oname, _typed_output(io.out[j], n, okind, labels, valid,
                                               data_bufs[j], n_null)))
        return with_columns(batch, named)

    cdef void _run_blocks(self, KernelIO* io, int n_out, Py_ssize_t* n_nan) noexcept nogil:
        """``run`` over blocks of RUN_BLOCK rows, counting each output block's NaN (nulls)
        while it is still in cache.  Kernels are streaming (row i depends on rows <= i and
        the state), so running a batch in blocks equals running it whole."""
        cdef KernelIO part = io[0]
        cdef Py_ssize_t start = 0, m
        cdef int j
        if (io.slot != NULL and (self._partition_keys or _partition_every_kernel)
                and self._run_partitioned(io, n_out, n_nan)):
            return
        while start < io.n:
            m = io.n - start if io.n - start < RUN_BLOCK else RUN_BLOCK
            part.n = m
            for j in range(MAX_COLUMNS):
                if io.x[j] != NULL:
                    part.x[j] = io.x[j] + start
                if io.out[j] != NULL:
                    part.out[j] = io.out[j] + start
                part.xoffset[j] = io.xoffset[j] + start
            if io.t != NULL:
                part.t = io.t + start
            if io.ok != NULL:
                part.ok = io.ok + start
            if io.slot != NULL:
                part.slot = io.slot + start
            for j in range(n_out):
                part.all_finite[j] = False
            self.run(&part)
            for j in range(n_out):
                if not part.all_finite[j]:
                    n_nan[j] += _count_nan(part.out[j], m)
            start += m

    cdef bint _run_partitioned(self, KernelIO* io, int n_out, Py_ssize_t* n_nan) noexcept nogil:
        """Run a keyed batch key by key; False (nothing done) when it has too few rows per
        key or scratch memory cannot be had, and the caller runs it in row order.

        The batch is cut into chunks of at least ``_partition_chunk_rows`` rows (and
        ``_partition_min_rows`` per key).  In each chunk the rows are grouped by key slot, in
        row order within a key (``_group_rows``), the inputs gathered key after key into
        scratch, each key's rows run as an unkeyed batch on the key's state row (``io.slot``
        NULL, so the kernel takes its unkeyed loop and block paths), and the outputs put back
        in row order (``_ungather``).  Each key sees its rows in the same order as in the
        row-order path, so outputs and state are identical, bit for bit.  The scratch (a few
        hundred kB for the default chunk: it stays in cache) is kept for the next call."""
        cdef Py_ssize_t n_keys = self._n_slots, n_chunks, rows, room, size, start, m, k, count
        cdef int j, n_x = 0
        cdef size_t need, column
        cdef char* at
        cdef Py_ssize_t* first
        cdef Py_ssize_t* end
        cdef int32_t* place
        cdef double* xs[MAX_COLUMNS]
        cdef double* outs[MAX_COLUMNS]
        cdef uint8_t* bits[MAX_COLUMNS]
        cdef int64_t* ts = NULL
        cdef uint8_t* oks = NULL
        cdef uint8_t* flags
        cdef KernelIO part
        if n_keys < 1 or io.n < _partition_min_rows * n_keys:
            return False
        if _partition_min_rows * n_keys > MAX_CHUNK_ROWS:
            return False                     # so many keys that scratch would grow too large
        while n_x < MAX_COLUMNS and io.x[n_x] != NULL:
            n_x += 1
        n_chunks = io.n // max(_partition_chunk_rows, _partition_min_rows * n_keys)
        if n_chunks < 1:
            n_chunks = 1
        rows = (io.n + n_chunks - 1) // n_chunks
        room = (rows + 7) // 8 * 8 if n_keys <= ROOM_PER_KEY_UP_TO else 0
        size = n_keys * room if room else (rows + 7) // 8 * 8   # positions in a chunk

        # scratch: per-key positions, placements, then per input and output a column
        column = _aligned(size * sizeof(double))
        need = (_aligned(n_keys * sizeof(Py_ssize_t)) + _aligned(4 * n_keys * sizeof(Py_ssize_t))
                + _aligned(rows * sizeof(int32_t)) + (n_x + n_out + (io.t != NULL)) * column
                + (io.ok != NULL) * _aligned(size) + _aligned(size))
        for j in range(n_x):
            need += (io.xvalid[j] != NULL) * _aligned(size >> 3)
        if need > self._scratch_bytes:
            free(self._scratch)
            self._scratch = <char*>malloc(need)
            self._scratch_bytes = need if self._scratch != NULL else 0
            if self._scratch == NULL:
                return False
        at = self._scratch
        first = <Py_ssize_t*>at
        at += _aligned(n_keys * sizeof(Py_ssize_t))
        end = <Py_ssize_t*>at
        at += _aligned(4 * n_keys * sizeof(Py_ssize_t))
        place = <int32_t*>at
        at += _aligned(rows * sizeof(int32_t))
        for j in range(n_x):
            xs[j] = <double*>at
            at += column
        for j in range(n_out):
            outs[j] = <double*>at
            at += column
        if io.t != NULL:
            ts = <int64_t*>at
            at += column
        if io.ok != NULL:
            oks = <uint8_t*>at
            at += _aligned(size)
        flags = <uint8_t*>at
        at += _aligned(size)
        for j in range(n_x):
            bits[j] = NULL
            if io.xvalid[j] != NULL:
                bits[j] = <uint8_t*>at
                at += _aligned(size >> 3)

        start = 0
        while start < io.n:
            m = min(rows, io.n - start)
            _group_rows(io.slot + start, m, n_keys, room, first, end, place,
                        NULL if n_x == 0 else <const uint64_t*>(io.x[0] + start),
                        NULL if n_x == 0 else <uint64_t*>xs[0])
            for j in range(n_x):
                if j > 0:
                    _gather(<const uint64_t*>(io.x[j] + start), place, m, <uint64_t*>xs[j])
                if bits[j] != NULL:
                    _gather_bits(io.xvalid[j], io.xoffset[j] + start, place, m, n_keys, first,
                                 end, flags, bits[j])
            if ts != NULL:
                _gather(<const uint64_t*>(io.t + start), place, m, <uint64_t*>ts)
            if oks != NULL:
                _gather_bytes(io.ok + start, place, m, oks)
            for k in range(n_keys):
                count = end[k] - first[k]
                if count == 0:
                    continue
                memset(&part, 0, sizeof(KernelIO))
                part.n = count
                for j in range(n_x):
                    part.x[j] = xs[j] + first[k]
                    part.xvalid[j] = bits[j]
                    part.xoffset[j] = first[k]
                for j in range(n_out):
                    part.out[j] = outs[j] + first[k]
                if ts != NULL:
                    part.t = ts + first[k]
                if oks != NULL:
                    part.ok = oks + first[k]
                part.state = io.state + k * io.stride
                part.stride = io.stride
                self._run_blocks(&part, n_out, n_nan)      # slot NULL: the unkeyed loop
            for j in range(n_out):
                _ungather(<const uint64_t*>outs[j], place, m, <uint64_t*>(io.out[j] + start),
                          io.n >= STREAM_ROWS)
            start += m
        return True

    # ---------------------------------------------------------------- per-key state

    cdef object _key_slots(self, keys):
        """int32 slot per row: keys dictionary-encoded once, new keys get new slots."""
        codes, values = _encode_keys(keys)
        lut = np.empty(len(values), dtype=np.int32)
        identity = True
        for code, key in enumerate(values):
            slot = self._slot_of_key.get(key)
            if slot is None:
                slot = self._new_slot(key)
            lut[code] = slot
            identity = identity and slot == code
        if identity and codes.dtype == np.int32:
            return codes      # slots in dictionary order (the usual case): the codes themselves
        return lut[codes]

    cdef Py_ssize_t _new_slot(self, key) except -1:
        cdef Py_ssize_t slot = self._n_slots
        cdef double* row
        if self._state is None or self._state.shape[0] <= slot:
            grown = np.empty((max(4, 2 * slot), max(self.stride, 1)), dtype=np.float64)
            if self._state is not None:
                grown[:slot] = self._state[:slot]
            self._state = grown
            self._state_ptr = <double*><uintptr_t>grown.ctypes.data
        row = self._state_ptr + slot * self.stride
        self.init_state(row)
        self._slot_of_key[key] = slot
        self._keys.append(key)
        self._n_slots += 1
        return slot

    # ---------------------------------------------------------------- checkpointing

    def state_dict(self):
        """Plain, picklable, versioned snapshot of every key's state."""
        state = self._state[:self._n_slots] if self._n_slots else np.empty((0, self.stride))
        return {
            "version": STATE_VERSION,
            "kernel": self.name,
            "config": dict(self.config),
            "keys": list(self._keys),
            "stride": self.stride,
            "state": np.ascontiguousarray(state[:, :self.stride]).tobytes(),
        }

    def load_state_dict(self, dict d):
        """Continue exactly where the snapshot ``d`` left off."""
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"{self.name}: unsupported state version {d.get('version')!r}")
        if d.get("kernel") != self.name or d.get("config") != self.config:
            raise ValueError(
                f"{self.name}: state was saved by {d.get('kernel')}({d.get('config')}), "
                f"not {self.name}({self.config})"
            )
        if d["stride"] != self.stride:
            raise ValueError(f"{self.name}: state width {d['stride']} != {self.stride}")
        keys = list(d["keys"])
        values = np.frombuffer(d["state"], dtype=np.float64).reshape(len(keys), self.stride)
        self.reset()
        if keys:
            self._state = np.empty((max(4, len(keys)), max(self.stride, 1)), dtype=np.float64)
            self._state[:len(keys), :self.stride] = values
            self._state_ptr = <double*><uintptr_t>self._state.ctypes.data
        self._keys = keys
        self._slot_of_key = {k: i for i, k in enumerate(keys)}
        self._n_slots = len(keys)

    def reset(self):
        """Forget all state (every key starts afresh)."""
        self._state = None
        self._state_ptr = NULL
        self._n_slots = 0
        self._slot_of_key = {}
        self._keys = []

    @property
    def keys(self):
        """The keys seen so far, in slot order."""
        return list(self._keys)

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({params})"
