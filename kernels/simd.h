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

/* r[n] lane p becomes r[p] lane n: sixteen rows of 32-bit values transposed in registers (unpacks of
 * 32 then 64 bits, then two shuffles of 128-bit lanes; moves only, the bits as they are). */
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++)
        for (int h = 0; h < 2; h++) {
            __m512d a = _mm512_castps_pd(t[4 * i + h]), b = _mm512_castps_pd(t[4 * i + h + 2]);
            r[4 * i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            r[4 * i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++) {
            t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0x88);
            t[8 * i + j + 4] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0xdd);
        }
    for (int j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
    }
}

/* OUTPUTS(nv, nq) over a block's outputs, with m0 and r0 in scope: dims [0, d) in widths of nv x 16
 * (up to 4) and rows [0, rows) nq at a time (16, 8, 4 and 4 for nv 1 to 4: nv x nq accumulators, at
 * most 16, held in registers), nv and nq constants in each instance. The third step of attention.c's
 * and attention_int8.c's blocks. */
#define OUTPUT_BLOCKS(OUTPUTS, d, rows)                                                                           \
    for (int64_t m0 = 0; m0 < (d); m0 += 64) {                                                                    \
        int64_t nv = ((d) - m0) / 16 < 4 ? ((d) - m0) / 16 : 4;                                                   \
        int64_t nq = nv == 1 ? 16 : nv == 2 ? 8 : 4;                                                              \
        for (int64_t r0 = 0; r0 < (rows); r0 += nq) {                                                             \
            switch (nv) {                                                                                         \
            case 1: OUTPUTS(1, 16); break;                                                                        \
            case 2: OUTPUTS(2, 8); break;                                                                         \
            case 3: OUTPUTS(3, 4); break;                                                                         \
            default: OUTPUTS(4, 4); break;                                                                        \
            }                                                                                                     \
        }                                                                                                         \
    }

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

/* 32 floats (lo, then hi) rounded to bf16 and stored: one conversion and one store of both where the
 * CPU has AVX512-BF16's (the same bits), two of each elsewhere. */
static inline void put_bf16x32(uint16_t *p, __m512 lo, __m512 hi) {
#ifdef POOLKIT_AVX512BF16
    _mm512_storeu_si512((void *)p, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
#else
    put_bf16x16(p, lo);
    put_bf16x16(p + 16, hi);
#endif
}

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

/* 2^x = 2^n * 2^f, n = round(x), |f| <= 1/2, 2^f a polynomial in f of `degree` (its coefficients
 * c[0..degree] from the highest power), scaled with vscalefps; x clamped at `floor` first. */
static inline __attribute__((always_inline)) __m512 exp2_poly16(__m512 x, float floor, const float *c, int degree) {
    x = _mm512_max_ps(x, _mm512_set1_ps(floor));
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(c[0]);
    for (int i = 1; i <= degree; i++) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c[i]));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 exp2_16(__m512 x) {
    /* 2^x with a degree-5 polynomial (relative error < 4e-6, far below a bf16 rounding); x is
     * clamped at -125 (2^-125, not 0: the softmax's keys are never all that far below its maximum). */
    static const float c[6] = {1.3333558e-3f, 9.6181291e-3f, 5.5504109e-2f, 2.4022651e-1f, 6.9314718e-1f, 1.0f};
    return exp2_poly16(x, -125.0f, c, 5);
}

static inline __m512 exp2_16_f32(__m512 x) {
    /* 2^x to float32's precision, for arguments at most a rounding above 0 (a softmax's): the
     * degree-6 Taylor polynomial of 2^f (relative error < 2e-7, as exp16's, whose e^r with
     * |r| <= ln(2) / 2 it equals); clamped at -144 (2^-144, as exp16's e^-100). Without exp16's
     * reduction by ln 2 in two parts and its scaling by log2(e), which the softmax folds into its own
     * scale: the float32 attention 1.06-1.17x at 110-170 tokens, 1.03-1.06x at 256 and 512. */
    static const float c[7] = {1.54035304e-4f, 1.33335581e-3f, 9.61812911e-3f, 5.55041087e-2f,
                               2.40226507e-1f, 6.93147181e-1f, 1.0f};
    return exp2_poly16(x, -144.0f, c, 6);
}

/* x * sigmoid(y) = x / (1 + e^-y), as torch computes it (x / infinity below y = -88). */
static inline __m512 times_sigmoid16(__m512 x, __m512 y) {
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), y))));
}

/* The erf GELU's table (tests/kernels/test_int8.py, test_the_erf_gelu_table_is_its_fit, fits it again
 * and compares): for a = |x| on 16 intervals of width w = 12.87 / 15.49 (GELU_PER_STEP is 1 / w)
 * centred on i w, row j holds each interval's coefficient of s^j in log2 Phi(-a) ~ sum_j c_ij s^j,
 * s = a / w - i in [-1/2, 1/2]: degree-4 least squares on 96 Chebyshev nodes, within 3.2e-7 of the logarithm. */
#define GELU_CUT 12.87f
#define GELU_PER_STEP 1.2035742f
static const float GELU_LOG2_TAIL[5][16] __attribute__((aligned(64))) = {
    {-1.00000005f, -2.30025826f, -4.37228882f, -7.30107119f, -11.1352643f, -15.9034648f, -21.6232493f, -28.3059429f,
     -35.9591668f, -44.5882493f, -54.1970401f, -64.7884001f, -76.3645076f, -88.927056f, -102.477386f, -117.016577f},
    {-0.956405313f, -1.66784194f, -2.48995585f, -3.37544752f, -4.29755921f, -5.24169502f, -6.19972061f, -7.1669139f,
     -8.1404087f, -9.11838997f, -10.0996635f, -11.0834163f, -12.0690786f, -13.0562403f, -14.0445993f, -15.0339287f},
    {-0.317010808f, -0.388388843f, -0.429837378f, -0.453500607f, -0.467440564f, -0.476041089f, -0.481603025f,
     -0.485357658f, -0.48798925f, -0.489894381f, -0.491312465f, -0.492393567f, -0.493234988f, -0.493901751f,
     -0.494438495f, -0.494876603f},
    {-0.0300586022f, -0.0181428811f, -0.0103278917f, -0.00597156069f, -0.00360166828f, -0.00227850889f, -0.00150802156f,
     -0.00103889601f, -0.000740998744f, -0.000544536638f, -0.000410564381f, -0.000316483407f, -0.000248691897f,
     -0.000198724662f, -0.000161151545f, -0.000132393053f},
    {0.00324999227f, 0.00250551331f, 0.00145196587f, 0.000788466472f, 0.000433232783f, 0.000247273391f, 0.000147567443f,
     9.19792636e-05f, 5.96548628e-05f, 4.00820383e-05f, 2.77818154e-05f, 1.9789056e-05f, 1.44379114e-05f,
     1.07587853e-05f, 8.16857894e-06f, 6.30598907e-06f},
};
/* 2^f on [-1/2, 1/2], degree 5 (the same fit on 64 nodes): relative error 1.1e-7. */
static const float GELU_EXP2[6] = {1.00000008f, 0.693147207f, 0.240221074f, 0.0555032721f, 0.0096760371f, 0.00134004322f};

/* x * Phi(x), Phi the standard normal distribution (the erf GELU): Phi(x) is the tail Phi(-|x|) left of
 * 0 and 1 less it right of 0. The tail is 2^(its logarithm): the logarithm from GELU_LOG2_TAIL, the
 * interval's row of coefficients gathered from the table in registers (vpermps; the interval's number is
 * the low bits of a / w + 1.5 * 2^23) and summed in s, the power of two a polynomial and vscalefps. The tail is
 * accurate relative to itself on both sides (5.5e-6 at worst, the float32 rounding of a logarithm near
 * -117), and the whole takes less than half the time of erfc through a reciprocal and e^x (Numerical
 * Recipes' erfcc, 1.5e-5 at worst here, which this replaced: 0.27 against 0.57 ns a value). Past
 * |x| = 12.87 the tail is taken as 0 (|x Phi(x)| < 5e-37 there, below bf16's normal range) and not
 * computed, so no product is a subnormal float, whose every product costs the CPU a microcode assist (a
 * large layer of such inputs ran ten times slower). NaN and -inf give NaN (x times Phi(x), as torch's), +inf
 * gives +inf. */
static inline __m512 gelu_erf16(__m512 x) {
    const __m512 cut = _mm512_set1_ps(GELU_CUT), magic = _mm512_set1_ps(12582912.0f); /* 1.5 * 2^23 */
    __m512 a = _mm512_abs_ps(x);
    const __mmask16 near = _mm512_cmp_ps_mask(a, cut, _CMP_LE_OQ); /* NaN: not near; x carries it */
    a = _mm512_min_ps(a, cut);
    __m512 steps = _mm512_mul_ps(a, _mm512_set1_ps(GELU_PER_STEP));
    __m512 rounded = _mm512_add_ps(steps, magic); /* the nearest interval's number in its low bits */
    __m512i interval = _mm512_castps_si512(rounded);
    __m512 s = _mm512_sub_ps(steps, _mm512_sub_ps(rounded, magic));
    __m512 u = _mm512_permutexvar_ps(interval, _mm512_load_ps(GELU_LOG2_TAIL[4]));
    for (int j = 3; j >= 0; j--) u = _mm512_fmadd_ps(u, s, _mm512_permutexvar_ps(interval, _mm512_load_ps(GELU_LOG2_TAIL[j])));
    __m512 n = _mm512_roundscale_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(u, n);
    __m512 p = _mm512_set1_ps(GELU_EXP2[5]);
    for (int j = 4; j >= 0; j--) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(GELU_EXP2[j]));
    __m512 tail = _mm512_maskz_scalef_ps(near, p, n); /* n >= -125: 2^n p is a normal float */
    const __mmask16 right = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
    return _mm512_mul_ps(x, _mm512_mask_sub_ps(tail, right, _mm512_set1_ps(1.0f), tail)); /* Phi(x): 1 - tail right of 0 */
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
