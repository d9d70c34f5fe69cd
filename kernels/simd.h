/* AVX-512 helpers shared by poolkit's compiled CPU kernels (elementwise.c, attention.c, linear.c, int8.c):
 * bf16 loads and stores of 16 lanes, the exponentials and the activations. Defined where the compiler targets
 * AVX512F/BW/DQ/VL (POOLKIT_AVX512: Skylake-SP and later, Zen 4); POOLKIT_AVX512BF16 where it targets AVX512-BF16
 * too, whose conversion the bf16 stores then use (without it they round in integers, to the same bits). Every
 * function is static inline. A change here rebuilds every kernel: poolkit.kernels.compiler keys its cache on the
 * headers beside a source. */
#ifndef POOLKIT_SIMD_H
#define POOLKIT_SIMD_H

#include <stdint.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#include <immintrin.h>
#define POOLKIT_AVX512 1
#if defined(__AVX512BF16__)
#define POOLKIT_AVX512BF16 1
#endif

/* 16 bf16 values, widened to float32 (exactly). */
static inline __m512 bf16x16(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* 16 floats rounded to bf16 (to nearest even), as 16-bit lanes: AVX512-BF16's conversion (subnormal results
 * may flush to zero), else the same rounding in integers (a NaN stays a quiet NaN). */
static inline __m256i bf16_bits16(__m512 v) {
#ifdef POOLKIT_AVX512BF16
    return (__m256i)_mm512_cvtneps_pbh(v);
#else
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
    rounded = _mm512_mask_or_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), bits, _mm512_set1_epi32(0x400000));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
#endif
}

/* 16 floats rounded to bf16 and stored. */
static inline void put_bf16x16(uint16_t *p, __m512 v) { _mm256_storeu_si256((__m256i *)p, bf16_bits16(v)); }

/* 16 floats rounded to bf16 and widened back: the value a bf16 store then load would give. */
static inline __m512 round_bf16x16(__m512 v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16_bits16(v)), 16));
}

static inline __m512 exp16(__m512 x) {
    /* e^x = 2^n * e^r, n = round(x / ln 2), |r| <= ln(2) / 2: a degree-6 Taylor polynomial
     * (relative error < 2e-7), scaled with vscalefps; below -100 it is e^-100, above 88 infinite. */
    const __m512 log2e = _mm512_set1_ps(1.44269504f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693145752f);
    const __m512 ln2_lo = _mm512_set1_ps(1.42860677e-6f);
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-100.0f)), _mm512_set1_ps(100.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
    r = _mm512_fnmadd_ps(n, ln2_lo, r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 exp2_16(__m512 x) {
    /* 2^x = 2^n * 2^f, n = round(x), |f| <= 1/2: a degree-5 polynomial (relative error < 4e-6,
     * far below a bf16 rounding), scaled with vscalefps; x is clamped at -125 (2^-125, not 0: the
     * softmax's keys are never all that far below its maximum). */
    x = _mm512_max_ps(x, _mm512_set1_ps(-125.0f));
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.3333558e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* x * sigmoid(y) = x / (1 + e^-y), as torch computes it (x / infinity below y = -88). */
static inline __m512 times_sigmoid16(__m512 x, __m512 y) {
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), y))));
}

/* x * Phi(x), Phi the standard normal distribution (the erf GELU): with z = |x| / sqrt 2,
 * erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), P the Chebyshev fit of Numerical Recipes'
 * erfcc (relative error < 1.2e-7 for every z >= 0); Phi(x) = 1 - erfc(z) / 2 for x >= 0 and
 * erfc(z) / 2 below, so the result is accurate relative to itself on both tails. Beyond
 * z = 9.1 (x < -12.87) the tail is taken as 0 (|x Phi(x)| < 5e-37 there, below bf16's normal range)
 * and not computed: further out erfc(z) / 2 is a subnormal float, whose every product costs the CPU
 * a microcode assist (a large layer of such inputs ran ten times slower). */
static inline __m512 gelu_erf16(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
    __m512 z = _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(0.70710678f));
    const __mmask16 far = _mm512_cmp_ps_mask(z, _mm512_set1_ps(9.1f), _CMP_GT_OQ);
    z = _mm512_min_ps(z, _mm512_set1_ps(9.1f)); /* NaN: 9.1, and x carries the NaN through */
    __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(half, z, one));
    __m512 p = _mm512_set1_ps(0.17087277f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.82215223f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.48851587f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.13520398f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.27886807f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.18628806f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.09678418f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.37409196f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.00002368f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.26551223f));
    __m512 tail = _mm512_mul_ps(_mm512_mul_ps(t, half), exp16(_mm512_fnmadd_ps(z, z, p))); /* erfc(z) / 2 */
    tail = _mm512_mask_blend_ps(far, tail, _mm512_setzero_ps());
    __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mul_ps(x, _mm512_mask_blend_ps(negative, _mm512_sub_ps(one, tail), tail));
}

/* An activation on 16 lanes, by code: 0 none, 1 silu, 2 gelu (tanh approximation), 3 relu,
 * 4 gelu (erf); `act` is a constant where it is inlined. */
static inline __attribute__((always_inline)) __m512 activate16(__m512 x, int act) {
    switch (act) {
    case 1:
        return times_sigmoid16(x, x);
    case 2: {
        /* 0.5 x (1 + tanh(u)) = x sigmoid(2 u), u = sqrt(2 / pi) (x + 0.044715 x^3) */
        __m512 u2 = _mm512_mul_ps(x, _mm512_fmadd_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(2.0f * 0.7978845608f * 0.044715f),
                                                     _mm512_set1_ps(2.0f * 0.7978845608f)));
        return times_sigmoid16(x, u2);
    }
    case 3: /* max(x, 0), NaN kept as torch's relu keeps it */
        return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), x, _mm512_setzero_ps());
    case 4:
        return gelu_erf16(x);
    default:
        return x;
    }
}

/* CASE(a, f) with the activation code `act` (0..4, as activate16's) and the 0/1 `flag` as constants: one
 * instance of an epilogue that inlines activate16 per activation and flag, so neither is a branch in its loops. */
#define ACTIVATION_CASES(CASE, act, flag)                                                                        \
    do {                                                                                                         \
        if (flag) {                                                                                              \
            ACTIVATION_SWITCH(CASE, act, 1)                                                                      \
        } else {                                                                                                 \
            ACTIVATION_SWITCH(CASE, act, 0)                                                                      \
        }                                                                                                        \
    } while (0)
#define ACTIVATION_SWITCH(CASE, act, f)                                                                          \
    switch (act) {                                                                                               \
    case 0: CASE(0, f); break;                                                                                   \
    case 1: CASE(1, f); break;                                                                                   \
    case 2: CASE(2, f); break;                                                                                   \
    case 3: CASE(3, f); break;                                                                                   \
    default: CASE(4, f); break;                                                                                  \
    }

#endif

/* 1 where this build has the AVX-512 code above, else 0: what an AVX-512 kernel's availability function returns. */
#ifdef POOLKIT_AVX512
#define POOLKIT_AVX512_BUILT 1
#else
#define POOLKIT_AVX512_BUILT 0
#endif
#endif
