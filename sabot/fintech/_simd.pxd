# cython: language_level=3
"""Run-time dispatch of element-wise loops between a portable and an AVX2 copy.

A kernel writes its loop once as a ``cdef inline`` function, adds a copy declared with the
``avx2_void`` return type whose body only calls it, and in ``run`` calls the copy when
``avx2_active()``::

    cdef inline void spread_rows(KernelIO* io) noexcept nogil: ...     # the math, once
    cdef avx2_void spread_rows_avx2(KernelIO* io) noexcept nogil:
        spread_rows(io)
    ...
        if avx2_active(): spread_rows_avx2(io)
        else: spread_rows(io)
"""

cdef extern from "_simd.h":
    ctypedef void avx2_void "SABOT_AVX2_VOID"
    ctypedef void avx512_void "SABOT_AVX512_VOID"
    bint cpu_has_avx2 "sabot_cpu_has_avx2"() noexcept nogil
    bint cpu_has_avx512f "sabot_cpu_has_avx512f"() noexcept nogil

cdef bint avx2_active() noexcept nogil
