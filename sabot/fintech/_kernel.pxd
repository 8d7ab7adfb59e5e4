# cython: language_level=3
"""C-level contract shared by every kernel module.

A kernel is a subclass of :class:`Kernel` that declares its columns, parameters and outputs in
``__init__`` and implements two ``nogil`` methods:

* ``init_state(st)``: initial values of one key's state row (``stride`` doubles; default zeros);
* ``run(io)``: the math, one pass over ``io.n`` rows reading ``io.x[j]`` and writing ``io.out[j]``.

While ``run`` executes, NaN in an output marks a null (``set_null`` writes NaN; ``emit`` writes any
value, so an undefined result is null too); the base turns NaN into Arrow nulls afterwards and
builds a validity bitmap only when there is one.  Outputs are therefore plain ``double`` stores,
which lets loops vectorise and keeps state in registers (no byte-wide bitmap stores that may
alias anything).

The base class does everything else: column resolution and errors, zero-copy float64 views of
Arrow buffers (casting other numeric types once), the combined null mask, per-key state slots
for ``by=`` (with ``declare(..., partition_keys=True)``, batches with enough rows per key run
key by key through the unkeyed loop: ``Kernel._run_partitioned``), output buffers from Arrow's
memory pool, and append-or-replace of output columns.
"""
from libc.math cimport NAN
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

cdef enum:
    MAX_COLUMNS = 8
    RUN_BLOCK = 16384       # rows per ``run`` call: outputs are still in cache when checked

ctypedef struct KernelIO:
    Py_ssize_t n                    # rows in this batch
    const double* x[MAX_COLUMNS]    # float64 inputs in declaration order (time inputs excluded)
    const int64_t* t                # the time input (int64 ns since epoch), if declared
    const uint8_t* ok               # 1 where every input is non-null; NULL when no input has nulls
    const int32_t* slot             # key slot per row; NULL without ``by`` (everything in slot 0)
    double* state                   # state rows, ``stride`` doubles per key slot
    Py_ssize_t stride
    double* out[MAX_COLUMNS]        # output values; NaN marks a null (see set_null)
    const uint8_t* xvalid[MAX_COLUMNS]  # validity bitmap of each value input; NULL when no nulls
    Py_ssize_t xoffset[MAX_COLUMNS]     # bit offset of row 0 in ``xvalid[j]`` (slices)
    bint all_finite[MAX_COLUMNS]    # set by ``report_finite``: output j holds no NaN (no scan)


cdef inline bint present(const KernelIO* io, Py_ssize_t i) noexcept nogil:
    """Row ``i`` has no null input (NaN is checked by the kernel on the values it reads)."""
    return io.ok == NULL or io.ok[i] != 0


cdef inline bint input_present(const KernelIO* io, int j, Py_ssize_t i) noexcept nogil:
    """Value input ``j`` is non-null at row ``i`` (for kernels that treat inputs one by one)."""
    cdef Py_ssize_t b
    if io.xvalid[j] == NULL:
        return True
    b = i + io.xoffset[j]
    return (io.xvalid[j][b >> 3] >> (b & 7)) & 1


cdef inline double valid_or_null(const KernelIO* io, Py_ssize_t i, double value,
                                 bint defined) noexcept nogil:
    """``value`` where row ``i`` has no null input and ``defined`` holds, else NaN (null).

    A select, not a branch: element-wise loops written with it vectorise."""
    if io.ok != NULL:
        defined = defined and io.ok[i] != 0
    return value if defined else NAN


cdef inline uint32_t non_finite_mark(double value) noexcept nogil:
    """Bit 31 set when ``value`` is NaN or ±inf (exponent all ones: adding one unit to it
    carries out).  An element-wise loop ORs the marks of what it writes (a few integer ops per
    row, free in a memory-bound loop, and it vectorises) and calls :func:`report_finite`."""
    cdef uint64_t bits = (<uint64_t*>&value)[0]
    return (<uint32_t>(bits >> 32) & 0x7FF00000) + 0x00100000


cdef inline uint32_t emit_marked(KernelIO* io, int j, Py_ssize_t i, double value) noexcept nogil:
    """:func:`emit` that also returns the value's :func:`non_finite_mark`."""
    io.out[j][i] = value
    return non_finite_mark(value)


cdef inline void report_finite(KernelIO* io, int j, uint32_t marks) noexcept nogil:
    """Output ``j`` of this ``run`` is known to hold no NaN when no mark has bit 31: the base
    then skips its NaN scan of the block."""
    io.all_finite[j] = (marks >> 31) == 0


cdef enum:
    CLEAN_GROUP = 64        # rows checked at once by ``clean_rows`` / ``present_rows``


cdef inline Py_ssize_t present_rows(const uint8_t* ok, Py_ssize_t n) noexcept nogil:
    """Length of the leading run of ``ok[0:n]`` that is nonzero (``ok`` NULL: ``n``); nulls
    counted in groups of CLEAN_GROUP rows (a loop that vectorises)."""
    cdef Py_ssize_t i = 0, k, stop, nulls
    if ok == NULL:
        return n
    while i < n:
        stop = i + CLEAN_GROUP if n - i > CLEAN_GROUP else n
        nulls = 0
        for k in range(i, stop):
            nulls += ok[k] == 0
        if nulls != 0:
            break
        i = stop
    while i < n and ok[i] != 0:
        i += 1
    return i


cdef inline Py_ssize_t clean_rows(const double* x, const uint8_t* ok, Py_ssize_t n) noexcept nogil:
    """Length of the leading run of ``x[0:n]`` that is present (see ``present_rows``) and not
    NaN.

    Groups of up to CLEAN_GROUP values are checked at once by their sum, in four independent
    partial sums (a loop that vectorises): NaN if any value is (NaN + y is NaN; infinities of
    both signs may also give NaN, which only sends the group to the exact check).  The first
    NaN is then found in the group that has one."""
    cdef Py_ssize_t i = 0, k, stop
    cdef double s0, s1, s2, s3, total
    n = present_rows(ok, n)
    while i < n:
        stop = i + CLEAN_GROUP if n - i > CLEAN_GROUP else n
        s0 = 0.0; s1 = 0.0; s2 = 0.0; s3 = 0.0
        for k in range(i, stop - 3, 4):
            s0 += x[k]
            s1 += x[k + 1]
            s2 += x[k + 2]
            s3 += x[k + 3]
        for k in range(i + (stop - i) // 4 * 4, stop):
            s0 += x[k]
        total = (s0 + s1) + (s2 + s3)
        if total != total:
            break
        i = stop
    while i < n and x[i] == x[i]:
        i += 1
    return i


cdef inline double* key_state(const KernelIO* io, Py_ssize_t i) noexcept nogil:
    """The state row of row ``i``'s key."""
    if io.slot == NULL:
        return io.state
    return io.state + <Py_ssize_t>io.slot[i] * io.stride


cdef inline double* row_state(const KernelIO* io, Py_ssize_t i, double* local,
                              bint keyed) noexcept nogil:
    """The state row of row ``i``: ``local`` without ``by`` (see :func:`state_to_local`), else
    the row of the key's slot.  ``keyed`` is ``io.slot != NULL``, passed in so that a kernel
    can compile its loop twice with it constant (``if io.slot == NULL: rows(io, False)``)
    where the compiler would not split the loop on its own (loops with inner loops)."""
    if not keyed:
        return local
    return io.state + <Py_ssize_t>io.slot[i] * io.stride


cdef inline void state_to_local(const KernelIO* io, double* local, int width) noexcept nogil:
    """Without ``by``, copy the single state row into ``local``, an array on the kernel's stack.

    Recurrences use ``local`` through :func:`row_state` and call :func:`local_to_state` after the
    loop: the compiler then keeps the state in registers instead of storing and re-loading it
    on every row (the loads and stores through ``io.state`` could alias the inputs)."""
    cdef int k
    if io.slot == NULL:
        for k in range(width):
            local[k] = io.state[k]


cdef inline void local_to_state(const KernelIO* io, const double* local, int width) noexcept nogil:
    """Write ``local`` back to the single state row (the counterpart of ``state_to_local``)."""
    cdef int k
    if io.slot == NULL:
        for k in range(width):
            io.state[k] = local[k]


cdef inline void set_null(KernelIO* io, int j, Py_ssize_t i) noexcept nogil:
    """Output ``j`` is null at row ``i`` (NaN until the base builds the validity bitmap)."""
    io.out[j][i] = NAN


cdef inline void emit(KernelIO* io, int j, Py_ssize_t i, double value) noexcept nogil:
    """Output ``j`` at row ``i`` is ``value``; NaN (an undefined result) becomes null."""
    io.out[j][i] = value


cdef class Kernel:
    cdef readonly str name
    cdef readonly object by
    cdef readonly dict config
    cdef list _inputs
    cdef list _outputs
    cdef readonly Py_ssize_t stride
    cdef object _state                  # numpy (slots, stride) float64, grown on demand
    cdef double* _state_ptr             # its data pointer (NULL before the first slot)
    cdef object _plan_schema            # the schema ``_plan`` was resolved for
    cdef list _plan                     # (kind, name, field index, read without cast) per input
    cdef Py_ssize_t _n_slots
    cdef dict _slot_of_key
    cdef list _keys
    cdef bint _partition_keys           # keyed batches run key by key (see _run_partitioned)
    cdef char* _scratch                 # its reused scratch memory (malloc), _scratch_bytes long
    cdef size_t _scratch_bytes

    cdef void init_state(self, double* st) noexcept nogil
    cdef void run(self, KernelIO* io) noexcept nogil
    cdef void _run_blocks(self, KernelIO* io, int n_out, Py_ssize_t* n_nan) noexcept nogil
    cdef bint _run_partitioned(self, KernelIO* io, int n_out, Py_ssize_t* n_nan) noexcept nogil
    cdef object _process(self, batch)
    cdef object _key_slots(self, keys)
    cdef Py_ssize_t _new_slot(self, key) except -1
