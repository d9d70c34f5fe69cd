/* poolkit's fused elementwise CPU kernels (see elementwise.py for the contracts).
 *
 * Plain C, compiled once per machine by poolkit.kernels.compiler with the system's C compiler
 * (-O3 -march=native) and called through ctypes on tensors' data pointers. Each row is widened
 * into a float32 scratch row, computed in float32 and rounded once into its output dtype, so
 * one read and one write replace the several passes (and roundings) of the unfused ops.
 *
 * With AVX512-BF16 (-march=native on a CPU that has it), bf16 rows whose width is a multiple of
 * 16 take fast paths with the same arithmetic in fewer passes: 16 lanes at a time, rounding with
 * the CPU's own conversion (subnormal results may flush to zero), float partial sums folded into
 * a double every 256 elements. Other rows, dtypes and CPUs take the generic code.
 *
 * The activations (poolkit_activation) exist only with AVX512-BF16: elsewhere oneDNN's fused
 * post-ops apply them.
 *
 * dtype codes: 0 float32, 1 bfloat16. Rows of an input are addressed as
 * base + (i / inner) * outer_stride + (i % inner) * inner_stride (in elements), so strided views
 * (the query heads of a fused qkv output) are read in place; outputs are contiguous.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "simd.h"
#include "parallel.h"

typedef union {
    uint32_t u;
    float f;
} bits;

static inline float bf16_to_float(uint16_t h) {
    bits v;
    v.u = (uint32_t)h << 16;
    return v.f;
}

/* Round to nearest even, as torch's float -> bfloat16 cast; NaN stays NaN. */
static inline uint16_t float_to_bf16(float f) {
    bits v;
    v.f = f;
    uint32_t rounded = (v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16;
    return (f != f) ? (uint16_t)((v.u >> 16) | 0x40u) : (uint16_t)rounded;
}

static inline const void *row_at(const void *base, int dtype, int64_t i, int64_t inner, int64_t outer_stride,
                                 int64_t inner_stride) {
    int64_t offset = (i / inner) * outer_stride + (i % inner) * inner_stride;
    return dtype ? (const void *)((const uint16_t *)base + offset) : (const void *)((const float *)base + offset);
}

static void load(const void *src, int dtype, float *restrict dst, int64_t n) {
    if (dtype == 0) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    const uint16_t *s = (const uint16_t *)src;
#pragma omp simd
    for (int64_t j = 0; j < n; j++) dst[j] = bf16_to_float(s[j]);
}

static void load_add(const void *src, int dtype, float *restrict dst, int64_t n) {
    if (dtype == 0) {
        const float *s = (const float *)src;
#pragma omp simd
        for (int64_t j = 0; j < n; j++) dst[j] += s[j];
        return;
    }
    const uint16_t *s = (const uint16_t *)src;
#pragma omp simd
    for (int64_t j = 0; j < n; j++) dst[j] += bf16_to_float(s[j]);
}

static void store(const float *restrict src, void *dst, int dtype, int64_t n) {
    if (dtype == 0) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    uint16_t *d = (uint16_t *)dst;
#pragma omp simd
    for (int64_t j = 0; j < n; j++) d[j] = float_to_bf16(src[j]);
}

static void round_to(float *restrict x, int dtype, int64_t n) {
    if (dtype == 0) return;
#pragma omp simd
    for (int64_t j = 0; j < n; j++) x[j] = bf16_to_float(float_to_bf16(x[j]));
}

#ifdef POOLKIT_AVX512BF16
/* bf16 rows whose width is a multiple of 16, with AVX512-BF16 (one instruction rounds 16 floats):
 * the same arithmetic as the generic code in fewer passes. */

/* The sum of 16-lane float partial sums, folded into a double every 256 elements. */
#define POOLKIT_FOLD 256

static void residual_row(const uint16_t *x, const float *residual, const float *w, const float *b, float *wide,
                         uint16_t *low, int64_t n, float eps, int rms) {
    double total = 0.0;
    for (int64_t k = 0; k < n; k += POOLKIT_FOLD) {
        __m512 part = _mm512_setzero_ps();
        for (int64_t j = k; j < n && j < k + POOLKIT_FOLD; j += 16) {
            __m512 v = bf16x16(x + j);
            if (residual) v = _mm512_add_ps(v, _mm512_loadu_ps(residual + j));
            _mm512_storeu_ps(wide + j, v);
            part = rms ? _mm512_fmadd_ps(v, v, part) : _mm512_add_ps(v, part);
        }
        total += _mm512_reduce_add_ps(part);
    }
    __m512 shift, scale;
    if (rms) {
        shift = _mm512_setzero_ps();
        scale = _mm512_set1_ps(1.0f / sqrtf((float)(total / (double)n) + eps));
    } else {
        float mean = (float)(total / (double)n);
        shift = _mm512_set1_ps(mean);
        double var = 0.0;
        for (int64_t k = 0; k < n; k += POOLKIT_FOLD) {
            __m512 part = _mm512_setzero_ps();
            for (int64_t j = k; j < n && j < k + POOLKIT_FOLD; j += 16) {
                __m512 d = _mm512_sub_ps(_mm512_loadu_ps(wide + j), shift);
                part = _mm512_fmadd_ps(d, d, part);
            }
            var += _mm512_reduce_add_ps(part);
        }
        scale = _mm512_set1_ps(1.0f / sqrtf((float)(var / (double)n) + eps));
    }
    for (int64_t j = 0; j < n; j += 16) {
        __m512 o = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(wide + j), shift), scale);
        o = rms ? _mm512_mul_ps(_mm512_loadu_ps(w + j), o) : _mm512_fmadd_ps(o, _mm512_loadu_ps(w + j), _mm512_loadu_ps(b + j));
        _mm512_storeu_ps(wide + j, o);
        if (low) put_bf16x16(low + j, o);
    }
}

/* The sum of a bf16 row and 16 lanes of its residual (NULL: none) at j, written to total: bf16 and rounded with a
 * bf16 residual; float32, not rounded, with `wide` (a bf16 sublayer output joining a float32 residual stream). */
static inline __attribute__((always_inline)) __m512 add_residual16(const uint16_t *x, const void *residual, void *total,
                                                                   int64_t j, int wide) {
    __m512 v = bf16x16(x + j);
    if (wide) {
        v = _mm512_add_ps(v, _mm512_loadu_ps((const float *)residual + j));
        _mm512_storeu_ps((float *)total + j, v);
    } else if (residual) {
        v = round_bf16x16(_mm512_add_ps(v, bf16x16((const uint16_t *)residual + j)));
        put_bf16x16((uint16_t *)total + j, v);
    }
    return v;
}

/* One bf16 row's RMSNorm in bf16, after add_residual16 (`wide` a constant where it is inlined). */
static inline __attribute__((always_inline)) void rms_row_bf16(const uint16_t *x, const void *residual, void *total,
                                                               int wide, const float *w, uint16_t *out, int64_t n,
                                                               float eps) {
    double squares = 0.0;
    for (int64_t k = 0; k < n; k += POOLKIT_FOLD) {
        __m512 part = _mm512_setzero_ps();
        for (int64_t j = k; j < n && j < k + POOLKIT_FOLD; j += 16) {
            __m512 v = add_residual16(x, residual, total, j, wide);
            part = _mm512_fmadd_ps(v, v, part);
        }
        squares += _mm512_reduce_add_ps(part);
    }
    __m512 scale = _mm512_set1_ps(1.0f / sqrtf((float)(squares / (double)n) + eps));
    for (int64_t j = 0; j < n; j += 16) {
        __m512 v = wide ? _mm512_loadu_ps((const float *)total + j) : bf16x16((residual ? (const uint16_t *)total : x) + j);
        put_bf16x16(out + j, _mm512_mul_ps(_mm512_mul_ps(v, scale), _mm512_loadu_ps(w + j)));
    }
}

static void rotary_row_bf16(const uint16_t *x, const uint16_t *c, const uint16_t *s, uint16_t *o, int64_t half) {
    for (int64_t j = 0; j < half; j += 16) {
        __m512 a = bf16x16(x + j), b = bf16x16(x + j + half);
        put_bf16x16(o + j, _mm512_fmsub_ps(a, bf16x16(c + j), _mm512_mul_ps(b, bf16x16(s + j))));
        put_bf16x16(o + j + half, _mm512_fmadd_ps(b, bf16x16(c + j + half), _mm512_mul_ps(a, bf16x16(s + j + half))));
    }
}
#endif

static inline void *row_out(void *base, int dtype, int64_t i, int64_t n) {
    return dtype ? (void *)((uint16_t *)base + i * n) : (void *)((float *)base + i * n);
}

/* total = x (+ residual), rounded to total's dtype; out = RMSNorm(total):
 * weight * total * rsqrt(mean(total^2) + eps), or total * rsqrt(...) * (1 + weight) with offset. */
static int rms_norm_rows(const void *x, int x_dtype, int64_t inner, int64_t outer_stride, int64_t inner_stride,
                         const void *residual, int residual_dtype, void *total, int total_dtype, const void *weight,
                         int weight_dtype, void *out, int out_dtype, int64_t row_begin, int64_t row_end, int64_t n,
                         float eps, int offset) {
    float *buf = (float *)malloc((size_t)n * 2 * sizeof(float));
    if (!buf) return 1;
    float *w = buf + n;
    load(weight, weight_dtype, w, n);
    if (offset) {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) w[j] += 1.0f;
    }
#ifdef POOLKIT_AVX512BF16
    int narrow = !residual || (residual_dtype == 1 && total_dtype == 1); /* a bf16 sum, or none */
    int wide = residual && residual_dtype == 0 && total_dtype == 0;       /* a float32 sum */
    if (x_dtype == 1 && out_dtype == 1 && (narrow || wide) && n % 16 == 0) {
        for (int64_t i = row_begin; i < row_end; i++) {
            const uint16_t *xi = (const uint16_t *)row_at(x, 1, i, inner, outer_stride, inner_stride);
            const void *ri = residual ? row_out((void *)residual, residual_dtype, i, n) : NULL;
            void *ti = residual ? row_out(total, total_dtype, i, n) : NULL;
            if (wide)
                rms_row_bf16(xi, ri, ti, 1, w, (uint16_t *)out + i * n, n, eps);
            else
                rms_row_bf16(xi, ri, ti, 0, w, (uint16_t *)out + i * n, n, eps);
        }
        free(buf);
        return 0;
    }
#endif
    for (int64_t i = row_begin; i < row_end; i++) {
        load(row_at(x, x_dtype, i, inner, outer_stride, inner_stride), x_dtype, buf, n);
        if (residual) {
            load_add(row_out((void *)residual, residual_dtype, i, n), residual_dtype, buf, n);
            round_to(buf, total_dtype, n);
            store(buf, row_out(total, total_dtype, i, n), total_dtype, n);
        }
        double squares = 0.0;
#pragma omp simd reduction(+ : squares)
        for (int64_t j = 0; j < n; j++) squares += (double)buf[j] * buf[j];
        float scale = 1.0f / sqrtf((float)(squares / (double)n) + eps);
#pragma omp simd
        for (int64_t j = 0; j < n; j++) buf[j] = buf[j] * scale * w[j];
        store(buf, row_out(out, out_dtype, i, n), out_dtype, n);
    }
    free(buf);
    return 0;
}

/* wide = norm(x + residual) in float32 (LayerNorm, or RMSNorm with rms); low = wide in low's dtype. */
static int residual_norm_rows(const void *x, int x_dtype, const void *residual, int residual_dtype,
                              const void *weight, const void *bias, int weight_dtype, float *wide, void *low,
                              int low_dtype, int64_t row_begin, int64_t row_end, int64_t n, float eps, int rms) {
    float *buf = (float *)malloc((size_t)n * 3 * sizeof(float));
    if (!buf) return 1;
    float *w = buf + n, *b = buf + 2 * n;
    load(weight, weight_dtype, w, n);
    if (bias)
        load(bias, weight_dtype, b, n);
    else
        memset(b, 0, (size_t)n * sizeof(float));
#ifdef POOLKIT_AVX512BF16
    if (x_dtype == 1 && (!residual || residual_dtype == 0) && (!low || low_dtype == 1) && n % 16 == 0) {
        for (int64_t i = row_begin; i < row_end; i++)
            residual_row((const uint16_t *)x + i * n, residual ? (const float *)residual + i * n : NULL, w, b, wide + i * n,
                         low ? (uint16_t *)low + i * n : NULL, n, eps, rms);
        free(buf);
        return 0;
    }
#endif
    for (int64_t i = row_begin; i < row_end; i++) {
        load(row_out((void *)x, x_dtype, i, n), x_dtype, buf, n);
        if (residual) load_add(row_out((void *)residual, residual_dtype, i, n), residual_dtype, buf, n);
        float *o = wide + i * n;
        if (rms) {
            double squares = 0.0;
#pragma omp simd reduction(+ : squares)
            for (int64_t j = 0; j < n; j++) squares += (double)buf[j] * buf[j];
            float scale = 1.0f / sqrtf((float)(squares / (double)n) + eps);
#pragma omp simd
            for (int64_t j = 0; j < n; j++) o[j] = w[j] * (buf[j] * scale);
        } else {
            double sum = 0.0, var = 0.0;
#pragma omp simd reduction(+ : sum)
            for (int64_t j = 0; j < n; j++) sum += buf[j];
            float mean = (float)(sum / (double)n);
#pragma omp simd reduction(+ : var)
            for (int64_t j = 0; j < n; j++) var += (double)(buf[j] - mean) * (buf[j] - mean);
            float rstd = 1.0f / sqrtf((float)(var / (double)n) + eps);
#pragma omp simd
            for (int64_t j = 0; j < n; j++) o[j] = (buf[j] - mean) * rstd * w[j] + b[j];
        }
        if (low) store(o, row_out(low, low_dtype, i, n), low_dtype, n);
    }
    free(buf);
    return 0;
}

/* out = x with its first `rotated` dimensions rotated half against half (transformers'
 * rotate_half): out[j] = a cos[j] - b sin[j], out[j + h] = b cos[j + h] + a sin[j + h] with
 * a = x[j], b = x[j + h], h = rotated / 2; the other dimensions copied. Row i of x is token
 * i / inner, whose cos and sin rows (`rotated` wide, contiguous) it reads. */
static int rotary_rows(const void *x, int x_dtype, int64_t inner, int64_t outer_stride, int64_t inner_stride,
                       const void *cos, const void *sin, int cs_dtype, void *out, int64_t row_begin, int64_t row_end,
                       int64_t n, int64_t rotated) {
    int64_t half = rotated / 2, token = -1;
#ifdef POOLKIT_AVX512BF16
    if (x_dtype == 1 && cs_dtype == 1 && half % 16 == 0) {
        for (int64_t i = row_begin; i < row_end; i++) {
            const uint16_t *src = (const uint16_t *)row_at(x, 1, i, inner, outer_stride, inner_stride);
            uint16_t *d = (uint16_t *)out + i * n;
            token = i / inner;
            rotary_row_bf16(src, (const uint16_t *)cos + token * rotated, (const uint16_t *)sin + token * rotated, d, half);
            if (n > rotated) memcpy(d + rotated, src + rotated, (size_t)(n - rotated) * 2);
        }
        return 0;
    }
#endif
    float *buf = (float *)malloc((size_t)(n + 2 * rotated) * sizeof(float));
    if (!buf) return 1;
    float *c = buf + n, *s = c + rotated;
    for (int64_t i = row_begin; i < row_end; i++) {
        if (i / inner != token) {
            token = i / inner;
            load(row_out((void *)cos, cs_dtype, token, rotated), cs_dtype, c, rotated);
            load(row_out((void *)sin, cs_dtype, token, rotated), cs_dtype, s, rotated);
        }
        const void *src = row_at(x, x_dtype, i, inner, outer_stride, inner_stride);
        load(src, x_dtype, buf, n);
        void *dst = row_out(out, x_dtype, i, n);
        if (x_dtype) {
            uint16_t *d = (uint16_t *)dst;
#pragma omp simd
            for (int64_t j = 0; j < half; j++) {
                d[j] = float_to_bf16(buf[j] * c[j] - buf[j + half] * s[j]);
                d[j + half] = float_to_bf16(buf[j + half] * c[j + half] + buf[j] * s[j + half]);
            }
            if (n > rotated) memcpy(d + rotated, (const uint16_t *)src + rotated, (size_t)(n - rotated) * 2);
        } else {
            float *d = (float *)dst;
#pragma omp simd
            for (int64_t j = 0; j < half; j++) {
                d[j] = buf[j] * c[j] - buf[j + half] * s[j];
                d[j + half] = buf[j + half] * c[j + half] + buf[j] * s[j + half];
            }
            if (n > rotated) memcpy(d + rotated, buf + rotated, (size_t)(n - rotated) * sizeof(float));
        }
    }
    free(buf);
    return 0;
}

/* The exported kernels: each of the functions above over rows [0, rows), split over `workers` threads
 * (parallel.h), in place of its row range. */
int poolkit_rms_norm(const void *x, int x_dtype, int64_t inner, int64_t outer_stride, int64_t inner_stride,
                     const void *residual, int residual_dtype, void *total, int total_dtype, const void *weight,
                     int weight_dtype, void *out, int out_dtype, int64_t rows, int64_t workers, int64_t n,
                     float eps, int offset) {
    int code;
    PARALLEL_RANGES(rows, workers, code, begin, end,
                    rms_norm_rows(x, x_dtype, inner, outer_stride, inner_stride, residual, residual_dtype, total,
                                  total_dtype, weight, weight_dtype, out, out_dtype, begin, end, n, eps, offset));
    return code;
}

int poolkit_residual_norm(const void *x, int x_dtype, const void *residual, int residual_dtype,
                          const void *weight, const void *bias, int weight_dtype, float *wide, void *low,
                          int low_dtype, int64_t rows, int64_t workers, int64_t n, float eps, int rms) {
    int code;
    PARALLEL_RANGES(rows, workers, code, begin, end,
                    residual_norm_rows(x, x_dtype, residual, residual_dtype, weight, bias, weight_dtype, wide, low,
                                       low_dtype, begin, end, n, eps, rms));
    return code;
}

int poolkit_rotary(const void *x, int x_dtype, int64_t inner, int64_t outer_stride, int64_t inner_stride,
                   const void *cos, const void *sin, int cs_dtype, void *out, int64_t rows, int64_t workers,
                   int64_t n, int64_t rotated) {
    int code;
    PARALLEL_RANGES(rows, workers, code, begin, end,
                    rotary_rows(x, x_dtype, inner, outer_stride, inner_stride, cos, sin, cs_dtype, out, begin, end, n,
                                rotated));
    return code;
}

#ifdef POOLKIT_AVX512BF16
static inline __attribute__((always_inline)) void activation_rows(const uint16_t *y, int64_t stride, int64_t gate_offset,
                                                                  int64_t up_offset, uint16_t *out, int64_t out_stride,
                                                                  int64_t row_begin, int64_t row_end, int64_t n, int act) {
    for (int64_t i = row_begin; i < row_end; i++) {
        const uint16_t *gate = y + i * stride + gate_offset, *up = up_offset >= 0 ? y + i * stride + up_offset : NULL;
        uint16_t *o = out + i * out_stride;
        for (int64_t j = 0; j < n; j += 16) {
            __m512 v = activate16(bf16x16(gate + j), act);
            put_bf16x16(o + j, up ? _mm512_mul_ps(v, bf16x16(up + j)) : v);
        }
    }
}
#endif

/* 1 when this build has poolkit_activation (AVX512-BF16). */
int poolkit_has_activation(void) {
#ifdef POOLKIT_AVX512BF16
    return 1;
#else
    return 0;
#endif
}

/* The activation of a bf16 matmul's output, or of a gated feed-forward's gate times its up
 * projection: out[i, j] = act(gate[i, j]) (* up[i, j]) for j < n, computed in float32 from the
 * bf16 inputs and rounded once. Row i's gate starts at y + i * stride + gate_offset, its up
 * projection at y + i * stride + up_offset (none when up_offset < 0), its output at
 * out + i * out_stride (out may be y itself: in place). act: 1 silu, 2 gelu (tanh approximation),
 * the activations whose oneDNN post-ops cost more than this pass (others stay post-ops). Returns
 * 2 without AVX512-BF16 or when n is not a multiple of 16, 3 for an unknown act. */
int poolkit_activation(const void *y, int64_t stride, int64_t gate_offset, int64_t up_offset, void *out,
                       int64_t out_stride, int64_t rows, int64_t workers, int64_t n, int act) {
#ifdef POOLKIT_AVX512BF16
    if (n % 16) return 2;
    if (act != 1 && act != 2) return 3;
    const uint16_t *src = (const uint16_t *)y;
    uint16_t *dst = (uint16_t *)out;
    int code;
    PARALLEL_RANGES(rows, workers, code, begin, end,
                    ((act == 1 ? activation_rows(src, stride, gate_offset, up_offset, dst, out_stride, begin, end, n, 1)
                               : activation_rows(src, stride, gate_offset, up_offset, dst, out_stride, begin, end, n, 2)),
                     0));
    return code;
#else
    (void)y, (void)stride, (void)gate_offset, (void)up_offset, (void)out, (void)out_stride;
    (void)rows, (void)workers, (void)n, (void)act;
    return 2;
#endif
}
