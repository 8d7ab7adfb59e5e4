/* Run-time choice of instruction set for element-wise loops (see _simd.pyx).
 *
 * SABOT_AVX2_VOID is the return type of a loop's AVX2 copy: `void` compiled for AVX2 (4-wide
 * double vectors) by GCC/Clang on x86, while the rest of the module stays at the build's
 * baseline (SSE2 by default).  The AVX2 copy only calls the portable inline loop, which the
 * compiler inlines and vectorises again for AVX2.  "avx2" does not include FMA, so no
 * multiply-add is fused and every operation rounds exactly as in the portable copy.
 * Elsewhere both names fall back to the portable loop.
 */
#ifndef SABOT_SIMD_H
#define SABOT_SIMD_H

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define SABOT_AVX2_VOID __attribute__((target("avx2"))) void
/* 8-wide copies for the heaviest loops (a vectorised logarithm): AVX-512F with 512-bit vectors
 * preferred (GCC otherwise keeps 256-bit ones); no FMA either, so rounding is unchanged. */
#if defined(__clang__)
#define SABOT_AVX512_VOID __attribute__((target("avx512f"))) void
#else
#define SABOT_AVX512_VOID __attribute__((target("avx512f,prefer-vector-width=512"))) void
#endif
static inline int sabot_cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;  /* also checks the OS saves YMM registers */
}
static inline int sabot_cpu_has_avx512f(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
}
#else
#define SABOT_AVX2_VOID void
#define SABOT_AVX512_VOID void
static inline int sabot_cpu_has_avx2(void) { return 0; }
static inline int sabot_cpu_has_avx512f(void) { return 0; }
#endif

#endif
