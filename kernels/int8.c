/* poolkit's int8 linear layer in C (see int8.py): on CPUs with AMX-INT8 the whole layer, the rows'
 * rounding to uint8 levels, the integer matmul on AMX tiles and the rescale + bias + float channels +
 * activation on each block of results (poolkit_int8_amx); elsewhere the passes around oneDNN's
 * integer matmul: the rounding of each row (poolkit_quantize_rows) and the rescale of the matmul's
 * output (poolkit_rescale_rows, poolkit_rescale_rows_bf16).
 *
 * Plain C, compiled once per machine by poolkit.kernels.compiler (-O3 -march=native) and called
 * through ctypes on tensors' data pointers, split over threads by parallel.h. Each row is read
 * twice (its range, then its levels) while it is in cache and written once, where torch took five
 * passes over the whole input and a uint8 copy.
 *
 * dtype codes: 0 float32, 1 bfloat16. The exported functions return 0, 1 when out of memory, 2 where
 * this build lacks what they need (AVX-512, VNNI, AMX-INT8), 3 for a bad argument.
 */
#define _GNU_SOURCE
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parallel.h"
#include "simd.h"
#include "amx.h"

#if defined(POOLKIT_AMX) && defined(__AMX_INT8__)
#define POOLKIT_AMX_INT8 1
#endif
#if defined(POOLKIT_AVX512) && defined(__AVX512VNNI__)
#define POOLKIT_VNNI 1
#endif

static inline float bf16_value(const uint16_t *p, int64_t i) {
    union {
        uint32_t u;
        float f;
    } v;
    v.u = (uint32_t)p[i] << 16;
    return v.f;
}

/* Input x[row][col] of the layer (dtype x_dtype, row stride x_stride elements) as float32. */
static inline float input_at(const void *x, int x_dtype, int64_t x_stride, int64_t row, int64_t col) {
    return x_dtype == 0 ? ((const float *)x)[row * x_stride + col] : bf16_value((const uint16_t *)x + row * x_stride, col);
}

/* A row's level width for the range [low, high] (zero included) in `levels` steps, at least the
 * smallest normal float (whose reciprocal is finite: a row of zeros stays zeros), into *step, and
 * its level of 0.0 rounded to a whole number into *zero; returns the width. */
static inline float level_width(float low, float high, int levels, float *step, float *zero) {
    float s = (high - low) / (float)levels;
    s = s > FLT_MIN ? s : FLT_MIN;
    *step = s;
    *zero = rintf(-low / s);
    return s;
}

/* One row's levels: the range of x * inv_smooth (zero included), `levels` steps across it, the level
 * of 0.0 rounded to a whole number, each value rounded to nearest even and clamped to [0, levels]. */
#define QUANTIZE_ROW(LOAD)                                                                         \
    do {                                                                                           \
        float low = 0.0f, high = 0.0f;                                                             \
        if (inv_smooth) {                                                                          \
            _Pragma("omp simd reduction(min : low) reduction(max : high)")                        \
            for (int64_t i = 0; i < k; i++) {                                                      \
                float v = LOAD * inv_smooth[i];                                                    \
                low = v < low ? v : low;                                                           \
                high = v > high ? v : high;                                                        \
            }                                                                                      \
        } else {                                                                                   \
            _Pragma("omp simd reduction(min : low) reduction(max : high)")                        \
            for (int64_t i = 0; i < k; i++) {                                                      \
                float v = LOAD;                                                                    \
                low = v < low ? v : low;                                                           \
                high = v > high ? v : high;                                                        \
            }                                                                                      \
        }                                                                                          \
        float inv = 1.0f / level_width(low, high, levels, step, zero), z = *zero, top = (float)levels; \
        if (inv_smooth) {                                                                          \
            _Pragma("omp simd")                                                                    \
            for (int64_t i = 0; i < k; i++) {                                                      \
                float v = rintf(LOAD * inv_smooth[i] * inv) + z;                                   \
                out[i] = (uint8_t)(v < 0.0f ? 0.0f : (v > top ? top : v));                        \
            }                                                                                      \
        } else {                                                                                   \
            _Pragma("omp simd")                                                                    \
            for (int64_t i = 0; i < k; i++) {                                                      \
                float v = rintf(LOAD * inv) + z;                                                   \
                out[i] = (uint8_t)(v < 0.0f ? 0.0f : (v > top ? top : v));                         \
            }                                                                                      \
        }                                                                                          \
    } while (0)

#ifdef POOLKIT_AVX512
/* 16 values' levels: v * inv rounded to the nearest whole number (ties to even: the conversion's
 * default rounding, as rintf's), plus the level of zero, clamped to [0, top], stored as uint8. */
static inline void put_levels16(uint8_t *out, __m512 v, __m512 inv, __m512i zero, __m512i top) {
    __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv)), zero);
    q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_setzero_si512()), top);
    _mm_storeu_si128((__m128i *)out, _mm512_cvtepi32_epi8(q));
}
#endif

#ifdef POOLKIT_AVX512
/* 64 values' levels for 255 levels, put_levels16's arithmetic four vectors at a time, packed: the levels before
 * the clamp packed to int16 then uint8 with saturation, which is the clamp to [0, 255] (a value past the
 * range's ends by a rounding is -1 or 256; a NaN's conversion, INT_MIN, gives 0, as max(q, 0) does),
 * in place of two clamps and a narrowing per vector. The packs work within 128-bit lanes: lane l of
 * the result holds values 4l .. 4l + 3 of v[0], v[1], v[2], v[3] in turn (v[t] holds values
 * 16 t .. 16 t + 15 of the 64), which the caller puts back in place. */
static inline __m512i levels_packed64(const __m512 v[4], __m512 inv, __m512i zero) {
    __m512i q[4];
    for (int t = 0; t < 4; t++) q[t] = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v[t], inv)), zero);
    return _mm512_packus_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
}

/* levels_packed64's bytes put back in place and stored at out. */
static inline void put_levels64(uint8_t *out, const __m512 v[4], __m512 inv, __m512i zero) {
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_si512((void *)out, _mm512_permutexvar_epi32(order, levels_packed64(v, inv, zero)));
}

/* round_row for a bf16 row of k (a multiple of 64) into 255 levels, 64 values a step: each 32 bf16
 * loaded at once and widened as its even and its odd values (a shift, a mask) rather than 16 at a
 * time, and levels_packed64's packs, whose lanes (even values, then odd) one byte shuffle and one qword
 * permute put back in order. The same arithmetic as round_row's, value by value. */
static inline void round_row_bf16_64(const uint16_t *row, const float *inv_smooth, int64_t k, uint8_t *out, float *step,
                                     float *zero) {
    const __m512i high_half = _mm512_set1_epi32((int32_t)0xFFFF0000u);
    const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
#define HALVES(i, e, o)                                                                                           \
    do {                                                                                                          \
        __m512i pair = _mm512_loadu_si512((const void *)(row + (i)));                                             \
        e = _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16));                                                     \
        o = _mm512_castsi512_ps(_mm512_and_si512(pair, high_half));                                               \
        if (inv_smooth) {                                                                                         \
            __m512 s0 = _mm512_loadu_ps(inv_smooth + (i)), s1 = _mm512_loadu_ps(inv_smooth + (i) + 16);           \
            e = _mm512_mul_ps(e, _mm512_permutex2var_ps(s0, evens, s1));                                          \
            o = _mm512_mul_ps(o, _mm512_permutex2var_ps(s0, odds, s1));                                           \
        }                                                                                                         \
    } while (0)
    __m512 low16 = _mm512_setzero_ps(), high16 = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 32) {
        __m512 e, o;
        HALVES(i, e, o);
        low16 = _mm512_min_ps(low16, _mm512_min_ps(e, o));
        high16 = _mm512_max_ps(high16, _mm512_max_ps(e, o));
    }
    const __m512 inv = _mm512_set1_ps(1.0f / level_width(_mm512_reduce_min_ps(low16), _mm512_reduce_max_ps(high16), 255, step, zero));
    const __m512i z16 = _mm512_set1_epi32((int32_t)*zero);
    /* Bytes of a 16-byte lane after the packs: the even values of 8, then the odd; interleaved again. */
    const __m512i interleave = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15));
    const __m512i lanes = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7); /* the first 32 values' qwords, then the next 32's */
    for (int64_t i = 0; i < k; i += 64) {
        __m512 v[4];
        HALVES(i, v[0], v[1]);
        HALVES(i + 32, v[2], v[3]);
        __m512i bytes = _mm512_shuffle_epi8(levels_packed64(v, inv, z16), interleave);
        _mm512_storeu_si512((void *)(out + i), _mm512_permutexvar_epi64(lanes, bytes));
    }
#undef HALVES
}
#endif

/* Row r of x ([m, k], row stride x_stride elements, dtype x_dtype: 0 or 1) rounded into out (k uint8),
 * its level width into *step and its level of zero into *zero; inv_smooth ([k] float32) or NULL
 * multiplies the inputs first. */
static inline void round_row(const void *x, int x_dtype, int64_t x_stride, int64_t r, const float *inv_smooth,
                             int64_t k, int levels, uint8_t *out, float *step, float *zero) {
#ifdef POOLKIT_AVX512
    if (x_dtype == 1 && levels == 255 && k % 64 == 0) {
        round_row_bf16_64((const uint16_t *)x + r * x_stride, inv_smooth, k, out, step, zero);
        return;
    }
    if (k % 16 == 0) { /* the same arithmetic in AVX-512, 16 values at a time: 3-4x the compiler's own */
        const char *row = (const char *)x + r * x_stride * (x_dtype ? 2 : 4);
#define LOAD16(i) (x_dtype ? bf16x16((const uint16_t *)row + (i)) : _mm512_loadu_ps((const float *)row + (i)))
        __m512 low16 = _mm512_setzero_ps(), high16 = _mm512_setzero_ps();
        for (int64_t i = 0; i < k; i += 16) {
            __m512 v = inv_smooth ? _mm512_mul_ps(LOAD16(i), _mm512_loadu_ps(inv_smooth + i)) : LOAD16(i);
            low16 = _mm512_min_ps(low16, v);
            high16 = _mm512_max_ps(high16, v);
        }
        const __m512 inv = _mm512_set1_ps(1.0f / level_width(_mm512_reduce_min_ps(low16), _mm512_reduce_max_ps(high16), levels, step, zero));
        const __m512i z16 = _mm512_set1_epi32((int32_t)*zero), top = _mm512_set1_epi32(levels);
        int64_t i = 0;
        if (levels == 255) /* a float32 row (a bf16 one of 64s went to round_row_bf16_64) */
            for (; i + 64 <= k; i += 64) {
                __m512 v[4];
                for (int t = 0; t < 4; t++)
                    v[t] = inv_smooth ? _mm512_mul_ps(LOAD16(i + 16 * t), _mm512_loadu_ps(inv_smooth + i + 16 * t)) : LOAD16(i + 16 * t);
                put_levels64(out + i, v, inv, z16);
            }
        for (; i < k; i += 16) {
            __m512 v = inv_smooth ? _mm512_mul_ps(LOAD16(i), _mm512_loadu_ps(inv_smooth + i)) : LOAD16(i);
            put_levels16(out + i, v, inv, z16, top);
        }
#undef LOAD16
        return;
    }
#endif
    if (x_dtype == 0) {
        const float *row = (const float *)x + r * x_stride;
        QUANTIZE_ROW(row[i]);
    } else {
        const uint16_t *row = (const uint16_t *)x + r * x_stride;
        QUANTIZE_ROW(bf16_value(row, i));
    }
}

#ifdef POOLKIT_AVX512
/* The normalized-free Hadamard transform of 16 values in one vector (Sylvester's order: lane i gets
 * sum_j (-1)^popcount(i & j) x_j): four butterfly stages, each a swap of lanes 1, 2, 4, 8 apart and
 * an add or subtract by lane. */
static inline __m512 hadamard16(__m512 x) {
    const __m512 s1 = _mm512_setr_ps(1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1);
    const __m512 s2 = _mm512_setr_ps(1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1);
    const __m512 s4 = _mm512_setr_ps(1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1);
    const __m512 s8 = _mm512_setr_ps(1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1);
    x = _mm512_fmadd_ps(x, s1, _mm512_permute_ps(x, 0xB1));
    x = _mm512_fmadd_ps(x, s2, _mm512_permute_ps(x, 0x4E));
    x = _mm512_fmadd_ps(x, s4, _mm512_shuffle_f32x4(x, x, 0xB1));
    return _mm512_fmadd_ps(x, s8, _mm512_shuffle_f32x4(x, x, 0x4E));
}
#endif

/* Row r of x times inv_smooth (or not), then times the block-diagonal normalized Hadamard matrix of
 * blocks of `block` (a power of two dividing k), into out (k float32): int8.py's hadamard_rows, by
 * butterflies (the reference's matmul sums in another order: the two agree to float32's rounding). */
static void rotate_row(const void *x, int x_dtype, int64_t x_stride, int64_t r, const float *inv_smooth, int64_t block,
                       int64_t k, float *out) {
    const float norm = 1.0f / sqrtf((float)block);
#ifdef POOLKIT_AVX512
    if (k % 16 == 0 && block >= 16) {
        const char *row = (const char *)x + r * x_stride * (x_dtype ? 2 : 4);
        const __m512 scale = _mm512_set1_ps(norm);
        for (int64_t i = 0; i < k; i += 16) {
            __m512 v = x_dtype ? bf16x16((const uint16_t *)row + i) : _mm512_loadu_ps((const float *)row + i);
            if (inv_smooth) v = _mm512_mul_ps(v, _mm512_loadu_ps(inv_smooth + i));
            _mm512_storeu_ps(out + i, hadamard16(_mm512_mul_ps(v, scale)));
        }
        for (int64_t d = 16; d < block; d *= 2)
            for (int64_t i = 0; i < k; i += 2 * d)
                for (int64_t j = i; j < i + d; j += 16) {
                    __m512 a = _mm512_loadu_ps(out + j), b = _mm512_loadu_ps(out + j + d);
                    _mm512_storeu_ps(out + j, _mm512_add_ps(a, b));
                    _mm512_storeu_ps(out + j + d, _mm512_sub_ps(a, b));
                }
        return;
    }
#endif
    for (int64_t i = 0; i < k; i++)
        out[i] = input_at(x, x_dtype, x_stride, r, i) * (inv_smooth ? inv_smooth[i] : 1.0f) * norm;
    for (int64_t d = 1; d < block; d *= 2)
        for (int64_t i = 0; i < k; i += 2 * d)
            for (int64_t j = i; j < i + d; j++) {
                float a = out[j], b = out[j + d];
                out[j] = a + b;
                out[j + d] = a - b;
            }
}

#ifdef POOLKIT_AVX512
/* rotate_row then round_row for blocks of 64 (k a multiple of 64), in two passes instead of four:
 * each block's four vectors transformed in registers (hadamard16, then the two stages across them)
 * while its range is taken, kept unnormalized in scratch; the normalization (1/8, exact) goes into
 * the range and the levels' factor, so the levels are those of the normalized values. */
static inline void rotate_round_row64(const void *x, int x_dtype, int64_t x_stride, int64_t r, const float *inv_smooth,
                                      int64_t k, int levels, float *scratch, uint8_t *out, float *step, float *zero) {
    const char *row = (const char *)x + r * x_stride * (x_dtype ? 2 : 4);
    __m512 low16 = _mm512_setzero_ps(), high16 = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 64) {
        __m512 v[4];
        for (int t = 0; t < 4; t++) {
            int64_t at = i + 16 * t;
            v[t] = x_dtype ? bf16x16((const uint16_t *)row + at) : _mm512_loadu_ps((const float *)row + at);
            if (inv_smooth) v[t] = _mm512_mul_ps(v[t], _mm512_loadu_ps(inv_smooth + at));
            v[t] = hadamard16(v[t]);
        }
        __m512 a0 = _mm512_add_ps(v[0], v[1]), a1 = _mm512_sub_ps(v[0], v[1]);
        __m512 a2 = _mm512_add_ps(v[2], v[3]), a3 = _mm512_sub_ps(v[2], v[3]);
        v[0] = _mm512_add_ps(a0, a2);
        v[2] = _mm512_sub_ps(a0, a2);
        v[1] = _mm512_add_ps(a1, a3);
        v[3] = _mm512_sub_ps(a1, a3);
        for (int t = 0; t < 4; t++) {
            low16 = _mm512_min_ps(low16, v[t]);
            high16 = _mm512_max_ps(high16, v[t]);
            _mm512_storeu_ps(scratch + i + 16 * t, v[t]);
        }
    }
    float s = level_width(_mm512_reduce_min_ps(low16) * 0.125f, _mm512_reduce_max_ps(high16) * 0.125f, levels, step, zero);
    const __m512 inv = _mm512_set1_ps(0.125f / s);
    const __m512i z16 = _mm512_set1_epi32((int32_t)*zero), top = _mm512_set1_epi32(levels);
    if (levels == 255) {
        for (int64_t i = 0; i < k; i += 64) {
            const __m512 v[4] = {_mm512_loadu_ps(scratch + i), _mm512_loadu_ps(scratch + i + 16), _mm512_loadu_ps(scratch + i + 32),
                                 _mm512_loadu_ps(scratch + i + 48)};
            put_levels64(out + i, v, inv, z16);
        }
        return;
    }
    for (int64_t i = 0; i < k; i += 16) put_levels16(out + i, _mm512_loadu_ps(scratch + i), inv, z16, top);
}
#endif

/* round_row of row r after rotate_row when `rotation` (a block size; 0: none), scratch: k floats. */
static inline void quantize_row(const void *x, int x_dtype, int64_t x_stride, int64_t r, const float *inv_smooth,
                                int64_t rotation, float *scratch, int64_t k, int levels, uint8_t *out, float *step,
                                float *zero) {
    if (!rotation) {
        round_row(x, x_dtype, x_stride, r, inv_smooth, k, levels, out, step, zero);
        return;
    }
#ifdef POOLKIT_AVX512
    if (rotation == 64) {
        rotate_round_row64(x, x_dtype, x_stride, r, inv_smooth, k, levels, scratch, out, step, zero);
        return;
    }
#endif
    rotate_row(x, x_dtype, x_stride, r, inv_smooth, rotation, k, scratch);
    round_row(scratch, 0, 0, 0, NULL, k, levels, out, step, zero);
}

/* Whether `rotation` is a block size quantize_row takes for rows of k: 0, or a power of two dividing k. */
static inline int rotation_ok(int64_t rotation, int64_t k) {
    return rotation == 0 || (rotation > 1 && (rotation & (rotation - 1)) == 0 && k % rotation == 0);
}

/* Rows [begin, end) of x rounded into q ([m, k] uint8, contiguous), with each row's level width in
 * step[m] and level of zero in zero[m] (quantize_row; 1 when out of memory, 3 for a bad argument). */
static int quantize_rows(const void *x, int x_dtype, int64_t x_stride, const float *inv_smooth, int64_t rotation,
                         int64_t k, int levels, uint8_t *q, float *step, float *zero, int64_t begin, int64_t end) {
    if ((x_dtype != 0 && x_dtype != 1) || !rotation_ok(rotation, k))
        return 3;
    float *scratch = rotation ? malloc((size_t)k * sizeof(float)) : NULL;
    if (rotation && !scratch) return 1;
    for (int64_t r = begin; r < end; r++)
        quantize_row(x, x_dtype, x_stride, r, inv_smooth, rotation, scratch, k, levels, q + r * k, step + r, zero + r);
    free(scratch);
    return 0;
}


/* Rows [begin, end) of y ([m, n] float32, contiguous; the matmul's sum_k q w times the weight row's
 * scale) rescaled in place to step[r] * (y - zero[r] * wsum[j]) + bias[j] + sum_i x[r, cols[i]] * eweight[i, j]:
 * wsum ([n]) is each weight row's sum times its scale, bias ([n]) or NULL; cols ([c] int64) are the
 * input channels kept in float, read from the layer's input x (dtype x_dtype, row stride x_stride),
 * and eweight ([c, n]) their weight columns (c may be 0), added while the row is in cache instead of
 * in a pass (and a gather) of their own. (A float32 layer's activation stays torch's: an erf GELU
 * computed here with simd.h's AVX-512 code made all-MiniLM-L6-v2 slower, not faster. A bf16
 * layer's comes in rescale_rows_bf16, where it saves the narrowing pass too.) */
static int rescale_rows(float *y, int64_t n, const float *step, const float *zero, const float *wsum, const float *bias,
                        const void *x, int x_dtype, int64_t x_stride, const int64_t *cols, const float *eweight, int64_t c,
                        int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
        float *row = y + r * n;
        const float s = step[r], shift = zero[r];
        if (bias) {
#pragma omp simd
            for (int64_t j = 0; j < n; j++)
                row[j] = s * (row[j] - shift * wsum[j]) + bias[j];
        } else {
#pragma omp simd
            for (int64_t j = 0; j < n; j++)
                row[j] = s * (row[j] - shift * wsum[j]);
        }
        for (int64_t i = 0; i < c; i++) {
            const float e = input_at(x, x_dtype, x_stride, r, cols[i]);
            const float *w = eweight + i * n;
#pragma omp simd
            for (int64_t j = 0; j < n; j++)
                row[j] += e * w[j];
        }
    }
    return 0;
}

/* rescale_rows, then the activation (act: simd.h's codes, 0 none, 1 silu, 2 gelu tanh, 3 relu, 4 gelu
 * erf), written to out ([m, n] bf16, contiguous) rounded once: a bf16 model's int8 layer in one pass
 * over its output, where the float32 rescale, the activation's pass and the narrowing took three.
 * n a multiple of 16; returns 2 where this build has no AVX-512. */
static int rescale_rows_bf16(const float *y, int64_t n, const float *step, const float *zero, const float *wsum,
                             const float *bias, const void *x, int x_dtype, int64_t x_stride, const int64_t *cols,
                             const float *eweight, int64_t c, int act, uint16_t *out, int64_t begin, int64_t end) {
#ifdef POOLKIT_AVX512
    for (int64_t r = begin; r < end; r++) {
        const float *row = y + r * n;
        uint16_t *o = out + r * n;
        const __m512 s = _mm512_set1_ps(step[r]), shift = _mm512_set1_ps(zero[r]);
        for (int64_t j = 0; j < n; j += 16) {
            __m512 v = _mm512_mul_ps(s, _mm512_fnmadd_ps(shift, _mm512_loadu_ps(wsum + j), _mm512_loadu_ps(row + j)));
            if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + j));
            for (int64_t i = 0; i < c; i++)
                v = _mm512_fmadd_ps(_mm512_set1_ps(input_at(x, x_dtype, x_stride, r, cols[i])), _mm512_loadu_ps(eweight + i * n + j), v);
            switch (act) { /* a constant per call: one branch the predictor learns */
            case 0: put_bf16x16(o + j, v); break;
            case 1: put_bf16x16(o + j, activate16(v, 1)); break;
            case 2: put_bf16x16(o + j, activate16(v, 2)); break;
            case 3: put_bf16x16(o + j, activate16(v, 3)); break;
            default: put_bf16x16(o + j, activate16(v, 4)); break;
            }
        }
    }
    return 0;
#else
    (void)y; (void)n; (void)step; (void)zero; (void)wsum; (void)bias; (void)x; (void)x_dtype; (void)x_stride; (void)cols;
    (void)eweight; (void)c; (void)act; (void)out; (void)begin; (void)end;
    return 2;
#endif
}

/* The whole int8 layer on AMX-INT8 tiles, for CPUs that have them (Sapphire Rapids and later).
 *
 * The weight is packed once (poolkit_int8_pack) into blocks of 32 output columns, each two 16-column
 * tiles in the tiles' quad-interleaved layout for every 64 inputs. Rows go in chunks of chunk_rows:
 * each chunk's rows are first rounded to uint8 levels (quantize_row: the prologue, into a scratch
 * buffer the tiles then load from, zero-padded to 32 rows), then for every block of columns, 32 rows
 * at a time, four int32 accumulator tiles (2 x 2 of 16 x 16) sum the exact uint8 x int8 products
 * (TDPBUSD), two tile loads of rows and two of weights per four tile products. The previous 32 x 32
 * block's epilogue runs on the vector units between these tile products: each row's zero point taken
 * off exactly (acc - zero * sum_k w: one float32 FMA up to 512 inputs, integers beyond), then times
 * the row's and the column's scales, the bias, the float channels' products, the activation, and one
 * rounding to the output's dtype. The
 * float channels (a few input channels too large to round with the rest) go on bf16 tiles after the
 * integer ones, each value and weight as two bf16 halves (within 2^-16 of the float32 product):
 * adding their products in the epilogue instead, eight FMAs a vector, made it the layer's
 * bottleneck. Nothing but the output is written; the input is read once to round
 * it (twice where the layer is split by columns over threads: each thread rounds the rows itself).
 *
 * Tiles (configure_tiles: 16 rows of 64 bytes each) 0-3: accumulators (rows 0-15 / 16-31 x columns
 * of tile 6 / 7); 4, 5: 16 rows of 64 uint8 inputs each; 6, 7: the block's two weight tiles. */

/* 1 when this build has poolkit_int8_amx and the process may use AMX tiles (asked once, Linux >= 5.16). */
int poolkit_int8_amx_available(void) {
#ifdef POOLKIT_AMX_INT8
    return amx_permitted();
#else
    return 0;
#endif
}

/* Pack the int8 weight w ([n, k] row-major, n a multiple of 32, k of 64) into n / 32 blocks:
 * packed[((j * k / 64 + c) * 2 + t) * 1024 + r * 64 + 4 * col + e] = w[32 j + 16 t + col][64 c + 4 r + e]. */
void poolkit_int8_pack(const int8_t *w, int64_t k, int64_t n, int8_t *packed) {
    int64_t chunks = k / 64;
    for (int64_t column = 0; column < n; column++) {
        int64_t j = column / 32, t = column % 32 / 16, col = column % 16;
        const int8_t *src = w + column * k;
        for (int64_t c = 0; c < chunks; c++) {
            int8_t *tile = packed + ((j * chunks + c) * 2 + t) * 1024 + 4 * col;
            for (int r = 0; r < 16; r++) memcpy(tile + r * 64, src + 64 * c + 4 * r, 4);
        }
    }
}

#if defined(POOLKIT_AMX_INT8) || defined(POOLKIT_VNNI)

/* One call's layer: its input, weights and output (see poolkit_int8_amx, poolkit_int8_vnni). */
typedef struct {
    const void *x;
    int x_dtype;
    int64_t x_stride, rows, k, n;
    const float *inv_smooth;
    int64_t rotation;         /* the rows' Hadamard block (0: none) */
    const int8_t *packed;
    const float *scale;       /* [n]: the weight rows' scales */
    const int32_t *sums;      /* [n]: the weight rows' sums */
    const float *bias;        /* [n] or NULL */
    const int64_t *cols;      /* [c]: the input channels kept in float */
    int64_t c, kk;            /* kk: their tile width, 3 c rounded up to 32 (0 without channels) */
    const uint16_t *cpacked;  /* their weights' bf16 halves in tiles (poolkit_int8_channels in int8.py) */
    void *out;                /* [rows, n] (gated: [rows, n / 2]), contiguous, float32 or bf16 */
    int64_t chunk_rows;
    const float *cweight;     /* the float channels' weights [c, n] as they are (the VNNI kernel's) */
    int gated;                /* 0: a plain layer; 1 or 2: a gated one, its gate the first or the second n / 2 columns */
} int8_layer;

/* The two halves of 16 columns a block of results holds (each half's first column of the n), and its
 * first column in an output row. A plain layer's block j is columns 32 j .. 32 j + 31, written
 * there; a gated layer's is the gate's columns 16 j .. 16 j + 15 and the up columns they multiply,
 * whose product goes to column 16 j of the [rows, n / 2] output. */
typedef struct {
    int64_t half[2], out;
} int8_block;

static inline int8_block block_columns(const int8_layer *L, int64_t j) {
    const int64_t inner = L->n / 2;
    const int8_block plain = {{32 * j, 32 * j + 16}, 32 * j};
    const int8_block gated = {{16 * j + (L->gated == 1 ? 0 : inner), 16 * j + (L->gated == 1 ? inner : 0)}, 16 * j};
    return L->gated ? gated : plain;
}

/* The packed weight's tile of the 16 columns from `col` (a multiple of 16) for the first 64 inputs:
 * poolkit_int8_pack's layout holds, for each block of 32 columns and each 64 inputs, the block's two
 * 16-column tiles of 1,024 bytes; the next 64 inputs' tile is 2,048 bytes on. */
static inline const int8_t *weight_tile(const int8_layer *L, int64_t col) {
    return L->packed + (col / 32) * (L->k / 64) * 2048 + (col / 16 % 2) * 1024;
}

/* Whether the arguments both one-pass kernels read alike are ones they take. */
static int int8_layer_ok(const int8_layer *L, int act, int out_dtype) {
    return (L->x_dtype == 0 || L->x_dtype == 1) && (out_dtype == 0 || out_dtype == 1) && act >= 0 && act <= 4 && L->k > 0 &&
           L->gated >= 0 && L->gated <= 2 &&
           L->k % 64 == 0 && L->n > 0 && L->n % 32 == 0 && L->chunk_rows > 0 && L->chunk_rows % 32 == 0 && L->c >= 0 &&
           rotation_ok(L->rotation, L->k);
}

/* One row's 32 finished values of a block written at out + at (elements), in bf16 or float32. */
static inline void put_row32(const int8_layer *L, int64_t at, const __m512 v[2], int bf16) {
    if (bf16) {
        put_bf16x32((uint16_t *)L->out + at, v[0], v[1]);
    } else {
        _mm512_storeu_ps((float *)L->out + at, v[0]);
        _mm512_storeu_ps((float *)L->out + at + 16, v[1]);
    }
}

/* Row `row`'s 32 values of block b (its two halves), finished but for the activation: activated and
 * written; or, in a gated layer, act(gate) * up written as 16 values. */
static inline __attribute__((always_inline)) void put_block_row(const int8_layer *L, int64_t row, int8_block b, __m512 v[2],
                                                                int act, int bf16) {
    if (L->gated) {
        const __m512 y = _mm512_mul_ps(activate16(v[0], act), v[1]);
        const int64_t at = row * (L->n / 2) + b.out;
        if (bf16)
            put_bf16x16((uint16_t *)L->out + at, y);
        else
            _mm512_storeu_ps((float *)L->out + at, y);
        return;
    }
    for (int h = 0; h < 2; h++) v[h] = activate16(v[h], act);
    put_row32(L, row * L->n + b.out, v, bf16);
}

/* A one-pass kernel's work on rows [row_begin, row_end) x column blocks [block_begin, block_end), `span`
 * the rows of its scratch (a chunk's, rounded up to 32). Returns 0, or 1 when out of memory. */
typedef int (*int8_range_fn)(const int8_layer *L, int act, int bf16, int64_t row_begin, int64_t row_end, int64_t span,
                             int64_t block_begin, int64_t block_end);

/* `range` on the groups of 32 rows [group_begin, group_end) (the last may be short); nothing when empty. */
static int int8_groups(const int8_layer *L, int act, int bf16, int8_range_fn range, int64_t group_begin, int64_t group_end,
                       int64_t block_begin, int64_t block_end) {
    int64_t row_begin = group_begin * 32, row_end = group_end * 32 < L->rows ? group_end * 32 : L->rows;
    if (row_begin >= row_end || block_begin >= block_end) return 0;
    int64_t span = row_end - row_begin < L->chunk_rows ? row_end - row_begin : L->chunk_rows;
    return range(L, act, bf16, row_begin, row_end, (span + 31) / 32 * 32, block_begin, block_end);
}

/* `range` over the whole layer, split over `workers` threads by groups of 32 rows (by_rows) or by blocks
 * of 32 columns. */
static int int8_split(const int8_layer *L, int act, int out_dtype, int by_rows, int64_t workers, int8_range_fn range) {
    int64_t groups = (L->rows + 31) / 32, blocks = L->n / 32;
    int code;
    if (by_rows)
        PARALLEL_RANGES(groups, workers, code, begin, end, int8_groups(L, act, out_dtype, range, begin, end, 0, blocks));
    else
        PARALLEL_RANGES(blocks, workers, code, begin, end, int8_groups(L, act, out_dtype, range, 0, groups, begin, end));
    return code;
}

#endif

#ifdef POOLKIT_AMX_INT8

/* A 32 x 32 block of int32 sums (and of float channel products) waiting for its epilogue. */
typedef struct {
    int32_t acc[32 * 32]; /* row r: the first tile's 16 columns, then the second's */
    float facc[32 * 32];  /* the same for the float channels' products */
    int64_t row;          /* the block's first row (in x and out) */
    int8_block cols;      /* its columns */
    const float *step;    /* its rows' level widths and levels of zero */
    const float *zero;
    int64_t rows; /* rows to write (0: none pending) */
} int8_pending;

/* v rounded to the nearest bf16, ties to even (v finite). */
static inline uint16_t bf16_bits(float v) {
    union {
        float f;
        uint32_t u;
    } b = {v};
    return (uint16_t)((b.u + 0x7FFFu + ((b.u >> 16) & 1u)) >> 16);
}

/* Row r's float channels as the channel tiles' row: the bf16 nearest each value (h) twice, then
 * the bf16 nearest its remainder (l), zero-padded to kk; against the weights' rows (w's nearest bf16
 * wh, its remainder's wl, wh again) the products h wh + h wl + l wh give x w within 2^-16 of it. */
static inline void channel_row(const int8_layer *L, int64_t r, uint16_t *out) {
    for (int64_t ch = 0; ch < L->c; ch++) {
        float v = input_at(L->x, L->x_dtype, L->x_stride, r, L->cols[ch]);
        uint16_t h = bf16_bits(v);
        float rest = isfinite(v) ? v - bf16_value(&h, 0) : 0.0f;
        out[ch] = out[L->c + ch] = h;
        out[2 * L->c + ch] = bf16_bits(rest);
    }
    for (int64_t i = 3 * L->c; i < L->kk; i++) out[i] = 0;
}

/* Rows [r0, r1) of a pending block: zero point, scales, bias, float channels, activation, rounding. */
static inline __attribute__((always_inline)) void int8_finish(const int8_layer *L, int8_pending *p, int64_t r0,
                                                              int64_t r1, int act, int bf16) {
    if (r1 > p->rows) r1 = p->rows;
    const int64_t *half = p->cols.half;
    /* Up to 512 inputs every sum, zero * sum and their difference is a whole number below 2^24 in
     * magnitude (255 x 127 x 512), so one float32 FMA takes the zero point off exactly: the same
     * values as the integers' multiply, subtraction and conversion, in two operations instead of four
     * (a 384 -> 1,536 layer with its erf GELU, whose epilogue is longer than its tiles: 1.08-1.18x). */
    const int in_float = L->k <= 512;
    const __m512 fsums[2] = {_mm512_cvtepi32_ps(_mm512_loadu_si512(L->sums + half[0])),
                             _mm512_cvtepi32_ps(_mm512_loadu_si512(L->sums + half[1]))};
    for (int64_t r = r0; r < r1; r++) {
        const __m512 s = _mm512_set1_ps(p->step[r]);
        const __m512i z = _mm512_set1_epi32((int32_t)p->zero[r]);
        const __m512 zf = _mm512_set1_ps(p->zero[r]);
        __m512 v[2];
        for (int h = 0; h < 2; h++) {
            __m512i acc = _mm512_load_si512(p->acc + r * 32 + 16 * h);
            __m512 exact = in_float ? _mm512_fnmadd_ps(zf, fsums[h], _mm512_cvtepi32_ps(acc))
                                    : _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_mullo_epi32(z, _mm512_loadu_si512(L->sums + half[h]))));
            __m512 a = _mm512_mul_ps(exact, _mm512_loadu_ps(L->scale + half[h]));
            v[h] = L->bias ? _mm512_fmadd_ps(s, a, _mm512_loadu_ps(L->bias + half[h])) : _mm512_mul_ps(s, a);
            if (L->kk) v[h] = _mm512_add_ps(v[h], _mm512_load_ps(p->facc + r * 32 + 16 * h));
        }
        put_block_row(L, p->row + r, p->cols, v, act, bf16);
    }
}

/* Rows [row_begin, row_end) x column blocks [block_begin, block_end); q, step, zero, crows (the rows'
 * channel tiles' rows, kk bf16 each): scratch for one chunk of rows (chunk_rows rounded up to 32);
 * scratch: k floats for a rotated row. */
static inline __attribute__((always_inline)) void int8_blocks(const int8_layer *L, int64_t row_begin, int64_t row_end,
                                                              int64_t block_begin, int64_t block_end, uint8_t *q,
                                                              float *step, float *zero, uint16_t *crows, float *scratch,
                                                              int act, int bf16) {
    const int64_t k = L->k, chunks = k / 64, kk = L->kk;
    const int64_t per_step = (32 + chunks - 1) / chunks; /* epilogue rows per tile step */
    int8_pending slot __attribute__((aligned(64)));
    int8_pending *p = &slot;
    p->rows = 0;
    for (int64_t m0 = row_begin; m0 < row_end; m0 += L->chunk_rows) {
        const int64_t m_end = m0 + L->chunk_rows < row_end ? m0 + L->chunk_rows : row_end;
        if (p->rows) { /* the last chunk's last block, before its rows' scales are overwritten */
            int8_finish(L, p, 0, 32, act, bf16);
            p->rows = 0;
        }
        for (int64_t i = 0; i < (m_end - m0 + 31) / 32 * 32; i++) {
            if (m0 + i < m_end) {
                quantize_row(L->x, L->x_dtype, L->x_stride, m0 + i, L->inv_smooth, L->rotation, scratch, k, 255, q + i * k,
                             step + i, zero + i);
                if (kk) channel_row(L, m0 + i, crows + i * kk);
            } else {
                memset(q + i * k, 0, (size_t)k);
                if (kk) memset(crows + i * kk, 0, (size_t)kk * 2);
                step[i] = zero[i] = 0.0f;
            }
        }
        for (int64_t j = block_begin; j < block_end; j++) {
            const int8_block b = block_columns(L, j);
            const int8_t *w0 = weight_tile(L, b.half[0]), *w1 = weight_tile(L, b.half[1]);
            for (int64_t m = m0; m < m_end; m += 32) {
                const uint8_t *a = q + (m - m0) * k;
                zero_accumulators();
                for (int64_t c = 0; c < chunks; c++) {
                    _tile_loadd(4, a + c * 64, k);
                    _tile_loadd(6, w0 + c * 2048, 64);
                    _tile_loadd(7, w1 + c * 2048, 64);
                    _tile_loadd(5, a + 16 * k + c * 64, k);
                    _tile_dpbusd(0, 4, 6);
                    _tile_dpbusd(1, 4, 7);
                    _tile_dpbusd(2, 5, 6);
                    _tile_dpbusd(3, 5, 7);
                    if (p->rows) int8_finish(L, p, c * per_step, (c + 1) * per_step, act, bf16);
                }
                _tile_stored(0, p->acc, 128);
                _tile_stored(1, p->acc + 16, 128);
                _tile_stored(2, p->acc + 512, 128);
                _tile_stored(3, p->acc + 512 + 16, 128);
                if (kk) { /* the float channels' products on bf16 tiles, into the same four */
                    /* the channel tiles' layout is the weight's, in bf16 pairs: 512 elements a tile */
                    const uint16_t *a2 = crows + (m - m0) * kk;
                    const uint16_t *c0 = L->cpacked + (b.half[0] / 32) * (kk / 32) * 1024 + (b.half[0] / 16 % 2) * 512;
                    const uint16_t *c1 = L->cpacked + (b.half[1] / 32) * (kk / 32) * 1024 + (b.half[1] / 16 % 2) * 512;
                    zero_accumulators();
                    for (int64_t c = 0; c < kk / 32; c++) {
                        _tile_loadd(4, a2 + c * 32, kk * 2);
                        _tile_loadd(6, c0 + c * 1024, 64);
                        _tile_loadd(7, c1 + c * 1024, 64);
                        _tile_loadd(5, a2 + 16 * kk + c * 32, kk * 2);
                        _tile_dpbf16ps(0, 4, 6);
                        _tile_dpbf16ps(1, 4, 7);
                        _tile_dpbf16ps(2, 5, 6);
                        _tile_dpbf16ps(3, 5, 7);
                    }
                    _tile_stored(0, p->facc, 128);
                    _tile_stored(1, p->facc + 16, 128);
                    _tile_stored(2, p->facc + 512, 128);
                    _tile_stored(3, p->facc + 512 + 16, 128);
                }
                p->row = m;
                p->cols = b;
                p->step = step + (m - m0);
                p->zero = zero + (m - m0);
                p->rows = m_end - m < 32 ? m_end - m : 32;
            }
        }
    }
    if (p->rows) int8_finish(L, p, 0, 32, act, bf16);
}

/* int8_blocks with its scratch: an int8_range_fn. */
static int int8_range(const int8_layer *L, int act, int bf16, int64_t row_begin, int64_t row_end, int64_t span,
                      int64_t block_begin, int64_t block_end) {
    uint8_t *q = NULL;
    uint16_t *crows = NULL;
    float *scales = malloc((size_t)(span * 2 + L->k) * sizeof(float)); /* steps, zeros, a rotated row */
    if (!scales || posix_memalign((void **)&q, 64, (size_t)(span * L->k)) ||
        posix_memalign((void **)&crows, 64, (size_t)(span * (L->kk ? L->kk : 32) * 2))) {
        free(scales);
        free(q);
        return 1;
    }
    tile_config saved; /* the caller's thread's configuration (oneDNN's, torch's), given back after */
    configure_tiles(&saved);
    /* One instance per activation and output dtype: the epilogue inlined with both constants. */
#define INT8_CASE(A, B)                                                                                          \
    int8_blocks(L, row_begin, row_end, block_begin, block_end, q, scales, scales + span, crows, scales + 2 * span, A, B)
    ACTIVATION_CASES(INT8_CASE, act, bf16);
#undef INT8_CASE
    restore_tiles(&saved);
    free(q);
    free(crows);
    free(scales);
    return 0;
}

#endif

/* The whole int8 layer with AVX512-VNNI, for CPUs that have it without AMX (Cascade Lake, Ice Lake,
 * Zen 4): poolkit_int8_amx's arithmetic on the vector units. Each chunk of rows is rounded to uint8
 * levels (quantize_row) into a scratch buffer, with its float channels' values beside; then for every
 * block of 32 columns (the weight packed once by poolkit_int8_pack: for each 4 inputs, 16 columns' 4
 * int8 weights in one 64-byte vector, the layout both TDPBUSD and VPDPBUSD read) VNNI_ROWS rows at a
 * time sum their exact uint8 x int8 products in 2 x VNNI_ROWS int32 registers (VPDPBUSD: four
 * products a lane, each row's four levels broadcast from memory), and the epilogue runs on the
 * registers: each row's zero point taken off in integers, the scales, the bias, the float channels'
 * products (an FMA each: a few channels against k / 4 products a lane), the activation, one rounding
 * to the output's dtype. The block's weights (k x 32 bytes) stay in L1 while the chunk's rows pass. */

#ifdef POOLKIT_VNNI
/* Rows a register block sums: 8 rows x 32 columns of int32 in 16 of the 32 vector registers, enough
 * independent sums to hide VPDPBUSD's latency, with room for the two weight vectors. */
#define VNNI_ROWS 8
/* Float channels whose weights the epilogue holds in registers (2 vectors each, beside its own). */
#define VNNI_HELD 8

/* One row's four levels at input 4 g, broadcast, times both weight vectors into its two sums. */
#define VNNI_ROW(r)                                                                                              \
    do {                                                                                                         \
        int32_t four;                                                                                            \
        memcpy(&four, qc + (r) * k + 4 * g, 4);                                                                  \
        const __m512i x = _mm512_set1_epi32(four);                                                               \
        s##r##a = _mm512_dpbusd_epi32(s##r##a, x, w0);                                                           \
        s##r##b = _mm512_dpbusd_epi32(s##r##b, x, w1);                                                           \
    } while (0)

/* Rows [row, row + rows) (rows <= VNNI_ROWS; q, step, zero, cvals: theirs, VNNI_ROWS rows of q readable)
 * against the weight's column block j, written to out. The sums are named registers (an array of them
 * GCC copied and spilled every step), stored once to acc for the epilogue. */
static inline __attribute__((always_inline)) void vnni_block(const int8_layer *L, const uint8_t *q, const float *step,
                                                             const float *zero, const float *cvals, int64_t row,
                                                             int64_t rows, int64_t j, int32_t *acc, int act, int bf16) {
    const int64_t k = L->k, chunks = k / 64;
    const int8_block b = block_columns(L, j);
    const int64_t *half = b.half;
    const int8_t *t0 = weight_tile(L, half[0]), *t1 = weight_tile(L, half[1]);
    __m512i s0a = _mm512_setzero_si512(), s0b = s0a, s1a = s0a, s1b = s0a, s2a = s0a, s2b = s0a, s3a = s0a, s3b = s0a;
    __m512i s4a = s0a, s4b = s0a, s5a = s0a, s5b = s0a, s6a = s0a, s6b = s0a, s7a = s0a, s7b = s0a;
    for (int64_t c = 0; c < chunks; c++) {
        const int8_t *c0 = t0 + c * 2048, *c1 = t1 + c * 2048;
        const uint8_t *qc = q + c * 64;
        for (int g = 0; g < 16; g++) {
            const __m512i w0 = _mm512_loadu_si512(c0 + g * 64), w1 = _mm512_loadu_si512(c1 + g * 64);
            VNNI_ROW(0); VNNI_ROW(1); VNNI_ROW(2); VNNI_ROW(3); VNNI_ROW(4); VNNI_ROW(5); VNNI_ROW(6); VNNI_ROW(7);
        }
    }
    const __m512i all[VNNI_ROWS][2] = {{s0a, s0b}, {s1a, s1b}, {s2a, s2b}, {s3a, s3b}, {s4a, s4b}, {s5a, s5b}, {s6a, s6b}, {s7a, s7b}};
    for (int r = 0; r < VNNI_ROWS; r++) {
        _mm512_store_si512(acc + r * 32, all[r][0]);
        _mm512_store_si512(acc + r * 32 + 16, all[r][1]);
    }
    /* Up to VNNI_HELD float channels (the default budget's eight), their weights for the block's 32
     * columns are loaded once and held in registers across its rows, in place of two loads a product
     * (1.05-1.09x on layers with eight); the products are the same FMAs in the same order. */
    const int64_t nc = L->c;
    const int held = nc <= VNNI_HELD;
    __m512 cw[VNNI_HELD][2];
    for (int64_t ch = 0; held && ch < VNNI_HELD; ch++)
        for (int h = 0; h < 2; h++) cw[ch][h] = ch < nc ? _mm512_loadu_ps(L->cweight + ch * L->n + half[h]) : _mm512_setzero_ps();
    for (int64_t r = 0; r < rows; r++) {
        const __m512 s = _mm512_set1_ps(step[r]);
        const __m512i z = _mm512_set1_epi32((int32_t)zero[r]);
        __m512 v[2];
        for (int h = 0; h < 2; h++) {
            __m512i exact = _mm512_sub_epi32(_mm512_load_si512(acc + r * 32 + 16 * h), _mm512_mullo_epi32(z, _mm512_loadu_si512(L->sums + half[h])));
            __m512 a = _mm512_mul_ps(_mm512_cvtepi32_ps(exact), _mm512_loadu_ps(L->scale + half[h]));
            v[h] = L->bias ? _mm512_fmadd_ps(s, a, _mm512_loadu_ps(L->bias + half[h])) : _mm512_mul_ps(s, a);
        }
        if (held) {
            for (int64_t ch = 0; ch < nc; ch++) {
                const __m512 xv = _mm512_set1_ps(cvals[r * nc + ch]);
                v[0] = _mm512_fmadd_ps(xv, cw[ch][0], v[0]);
                v[1] = _mm512_fmadd_ps(xv, cw[ch][1], v[1]);
            }
        } else {
            for (int64_t ch = 0; ch < nc; ch++)
                for (int h = 0; h < 2; h++)
                    v[h] = _mm512_fmadd_ps(_mm512_set1_ps(cvals[r * nc + ch]), _mm512_loadu_ps(L->cweight + ch * L->n + half[h]), v[h]);
        }
        put_block_row(L, row + r, b, v, act, bf16);
    }
}
#undef VNNI_ROW

/* Rows [row_begin, row_end) x column blocks [block_begin, block_end), chunk by chunk; q, step, zero,
 * cvals: scratch for one chunk (chunk_rows rounded up to 32 rows); scratch: k floats for a rotated row. */
static inline __attribute__((always_inline)) void vnni_blocks(const int8_layer *L, int64_t row_begin, int64_t row_end,
                                                              int64_t block_begin, int64_t block_end, uint8_t *q,
                                                              float *step, float *zero, float *cvals, float *scratch,
                                                              int act, int bf16) {
    const int64_t k = L->k;
    int32_t acc[VNNI_ROWS * 32] __attribute__((aligned(64)));
    for (int64_t m0 = row_begin; m0 < row_end; m0 += L->chunk_rows) {
        const int64_t m_end = m0 + L->chunk_rows < row_end ? m0 + L->chunk_rows : row_end;
        const int64_t padded = (m_end - m0 + VNNI_ROWS - 1) / VNNI_ROWS * VNNI_ROWS;
        for (int64_t i = 0; i < m_end - m0; i++) {
            quantize_row(L->x, L->x_dtype, L->x_stride, m0 + i, L->inv_smooth, L->rotation, scratch, k, 255, q + i * k,
                         step + i, zero + i);
            for (int64_t ch = 0; ch < L->c; ch++) cvals[i * L->c + ch] = input_at(L->x, L->x_dtype, L->x_stride, m0 + i, L->cols[ch]);
        }
        memset(q + (m_end - m0) * k, 0, (size_t)((padded - (m_end - m0)) * k)); /* summed, never written */
        for (int64_t j = block_begin; j < block_end; j++)
            for (int64_t m = m0; m < m_end; m += VNNI_ROWS)
                vnni_block(L, q + (m - m0) * k, step + (m - m0), zero + (m - m0), cvals + (m - m0) * L->c, m,
                           m_end - m < VNNI_ROWS ? m_end - m : VNNI_ROWS, j, acc, act, bf16);
    }
}

/* vnni_blocks with its scratch: an int8_range_fn. */
static int vnni_range(const int8_layer *L, int act, int bf16, int64_t row_begin, int64_t row_end, int64_t span,
                      int64_t block_begin, int64_t block_end) {
    uint8_t *q = NULL;
    float *scales = malloc((size_t)(span * (2 + L->c) + L->k) * sizeof(float)); /* steps, zeros, channels, a rotated row */
    if (!scales || posix_memalign((void **)&q, 64, (size_t)(span * L->k))) {
        free(scales);
        return 1;
    }
#define VNNI_CASE(A, B)                                                                                          \
    vnni_blocks(L, row_begin, row_end, block_begin, block_end, q, scales, scales + span, scales + 2 * span,          \
                scales + (2 + L->c) * span, A, B)
    ACTIVATION_CASES(VNNI_CASE, act, bf16);
#undef VNNI_CASE
    free(q);
    free(scales);
    return 0;
}
#endif

/* 1 when this build has poolkit_int8_vnni (built for a CPU with AVX512-VNNI). */
int poolkit_int8_vnni_available(void) {
#ifdef POOLKIT_VNNI
    return 1;
#else
    return 0;
#endif
}

/* The exported kernels: each of the functions above over rows [0, rows), split over `workers` threads
 * (parallel.h), in place of its row range. */
int poolkit_quantize_rows(const void *x, int x_dtype, int64_t x_stride, const float *inv_smooth, int64_t rotation,
                          int64_t k, int levels, uint8_t *q, float *step, float *zero, int64_t rows, int64_t workers) {
    int code;
    PARALLEL_RANGES(rows, workers, code, begin, end,
                    quantize_rows(x, x_dtype, x_stride, inv_smooth, rotation, k, levels, q, step, zero, begin, end));
    return code;
}

int poolkit_rescale_rows(float *y, int64_t n, const float *step, const float *zero, const float *wsum, const float *bias,
                         const void *x, int x_dtype, int64_t x_stride, const int64_t *cols, const float *eweight, int64_t c,
                         int64_t rows, int64_t workers) {
    int code;
    PARALLEL_RANGES(rows, workers, code, begin, end,
                    rescale_rows(y, n, step, zero, wsum, bias, x, x_dtype, x_stride, cols, eweight, c, begin, end));
    return code;
}

int poolkit_rescale_rows_bf16(const float *y, int64_t n, const float *step, const float *zero, const float *wsum,
                              const float *bias, const void *x, int x_dtype, int64_t x_stride, const int64_t *cols,
                              const float *eweight, int64_t c, int act, uint16_t *out, int64_t rows, int64_t workers) {
    int code;
    PARALLEL_RANGES(rows, workers, code, begin, end,
                    rescale_rows_bf16(y, n, step, zero, wsum, bias, x, x_dtype, x_stride, cols, eweight, c, act, out, begin, end));
    return code;
}

/* The int8 layer on AMX tiles: out[r, j] = act(step[r] * scale[j] * sum_i (q[r, i] - zero[r]) w[j, i] + bias[j]
 * + sum_i x[r, cols[i]] * e[i, j]), q, step and zero row r of x (times inv_smooth) rounded as
 * poolkit_quantize_rows rounds it (rotation: its Hadamard block, 0 none). x: [rows, k] (dtype x_dtype,
 * row stride x_stride elements);
 * packed: the weight by poolkit_int8_pack (k a multiple of 64, n of 32); scale ([n] float32) and
 * sums ([n] int32): the weight rows' scales and sums of levels; bias ([n] float32) or NULL; cols ([c]
 * int64): the float channels (c may be 0), whose weights e ([c, n]) come as cpacked, kk = 3 c rounded
 * up to 32 rows of bf16 halves in tiles (int8.py's _channel_tiles; 0 without channels); act: simd.h's
 * codes (0 none, 1 silu, 2 gelu tanh, 3 relu, 4 gelu erf); out: [rows, n] contiguous, out_dtype 0
 * float32 or 1 bf16; gated: 0 for a plain layer, 1 or 2 for a gated feed-forward's gate and up
 * projections stacked (the gate the first or the second n / 2 rows of the weight): out is then
 * [rows, n / 2], act(gate) * up, each block of 16 gate columns read beside its 16 up columns from
 * the same packed weight; chunk_rows: rows per cache chunk,
 * a multiple of 32. Split over `workers` threads by groups of 32 rows (by_rows) or by blocks of 32
 * columns. Returns 0, 1 when out of memory, 2 without AMX-INT8, 3 for a bad argument. */
int poolkit_int8_amx(const void *x, int x_dtype, int64_t x_stride, int64_t rows, const float *inv_smooth,
                     int64_t rotation, const int8_t *packed, int64_t k, int64_t n, const float *scale, const int32_t *sums, const float *bias,
                     const int64_t *cols, int64_t c, const uint16_t *cpacked, int64_t kk, int act, void *out, int out_dtype,
                     int gated, int64_t chunk_rows, int by_rows, int64_t workers) {
#ifdef POOLKIT_AMX_INT8
    const int8_layer L = {x, x_dtype, x_stride, rows, k, n, inv_smooth, rotation, packed, scale, sums, bias, cols, c, c ? kk : 0,
                          cpacked, out, chunk_rows, NULL, gated};
    if (!int8_layer_ok(&L, act, out_dtype) || kk % 32 || kk < 3 * c || (c && !cpacked)) return 3;
    return int8_split(&L, act, out_dtype, by_rows, workers, int8_range);
#else
    (void)x; (void)x_dtype; (void)x_stride; (void)rows; (void)inv_smooth; (void)rotation; (void)packed; (void)k; (void)n; (void)scale;
    (void)sums; (void)bias; (void)cols; (void)c; (void)cpacked; (void)kk; (void)act; (void)out; (void)out_dtype;
    (void)gated; (void)chunk_rows; (void)by_rows; (void)workers;
    return 2;
#endif
}

/* The int8 layer with AVX512-VNNI (see the section above): poolkit_int8_amx's arguments and result, the
 * float channels' weights cweight ([c, n] float32) as they are. Returns 2 without AVX512-VNNI. */
int poolkit_int8_vnni(const void *x, int x_dtype, int64_t x_stride, int64_t rows, const float *inv_smooth,
                      int64_t rotation, const int8_t *packed, int64_t k, int64_t n, const float *scale, const int32_t *sums,
                      const float *bias, const int64_t *cols, int64_t c, const float *cweight, int act, void *out, int out_dtype,
                      int gated, int64_t chunk_rows, int by_rows, int64_t workers) {
#ifdef POOLKIT_VNNI
    const int8_layer L = {x, x_dtype, x_stride, rows, k, n, inv_smooth, rotation, packed, scale, sums, bias, cols, c, 0, NULL,
                          out, chunk_rows, cweight, gated};
    if (!int8_layer_ok(&L, act, out_dtype) || (c && (!cols || !cweight))) return 3;
    return int8_split(&L, act, out_dtype, by_rows, workers, vnni_range);
#else
    (void)x; (void)x_dtype; (void)x_stride; (void)rows; (void)inv_smooth; (void)rotation; (void)packed; (void)k; (void)n; (void)scale;
    (void)sums; (void)bias; (void)cols; (void)c; (void)cweight; (void)act; (void)out; (void)out_dtype; (void)gated;
    (void)chunk_rows; (void)by_rows; (void)workers;
    return 2;
#endif
}
