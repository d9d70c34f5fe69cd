/* The passes around oneDNN's integer matmul in poolkit's int8 linear layer (see int8.py): rounding
 * each row of the input to uint8 levels, and the rescale of the matmul's output.
 *
 * Plain C, compiled once per machine by poolkit.kernels.compiler (-O3 -march=native) and called
 * through ctypes on tensors' data pointers, rows [begin, end) per call so that int8.py can split a
 * call over threads. Each row is read twice (its range, then its levels) while it is in cache and
 * written once, where torch took five passes over the whole input and a uint8 copy.
 *
 * dtype codes: 0 float32, 1 bfloat16 (inputs only). Returns 0, or 3 for an unknown dtype.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "parallel.h"
#include "simd.h"

static inline float bf16_value(const uint16_t *p, int64_t i) {
    union {
        uint32_t u;
        float f;
    } v;
    v.u = (uint32_t)p[i] << 16;
    return v.f;
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
        float s = (high - low) / (float)levels;                                                    \
        s = s > FLT_MIN ? s : FLT_MIN; /* a normal float, whose reciprocal is finite */            \
        float z = rintf(-low / s), inv = 1.0f / s, top = (float)levels;                            \
        step[r] = s;                                                                               \
        zero[r] = z;                                                                               \
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

/* Rows [begin, end) of x ([m, k], row stride x_stride elements, dtype x_dtype) rounded into q
 * ([m, k] uint8, contiguous), with each row's level width in step[m] and level of zero in zero[m];
 * inv_smooth ([k] float32) or NULL multiplies the inputs first. */
static int quantize_rows(const void *x, int x_dtype, int64_t x_stride, const float *inv_smooth, int64_t k, int levels,
                         uint8_t *q, float *step, float *zero, int64_t begin, int64_t end) {
    if (x_dtype != 0 && x_dtype != 1)
        return 3;
    for (int64_t r = begin; r < end; r++) {
        uint8_t *out = q + r * k;
        if (x_dtype == 0) {
            const float *row = (const float *)x + r * x_stride;
            QUANTIZE_ROW(row[i]);
        } else {
            const uint16_t *row = (const uint16_t *)x + r * x_stride;
            QUANTIZE_ROW(bf16_value(row, i));
        }
    }
    return 0;
}

/* Input x[row][col] of the layer (dtype x_dtype, row stride x_stride elements) as float32. */
static inline float input_at(const void *x, int x_dtype, int64_t x_stride, int64_t row, int64_t col) {
    return x_dtype == 0 ? ((const float *)x)[row * x_stride + col] : bf16_value((const uint16_t *)x + row * x_stride, col);
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
 * n a multiple of 16; returns 2 where this build has no AVX512-BF16. */
static int rescale_rows_bf16(const float *y, int64_t n, const float *step, const float *zero, const float *wsum,
                             const float *bias, const void *x, int x_dtype, int64_t x_stride, const int64_t *cols,
                             const float *eweight, int64_t c, int act, uint16_t *out, int64_t begin, int64_t end) {
#ifdef POOLKIT_AVX512BF16
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

/* The exported kernels: each of the functions above over rows [0, rows), split over `workers` threads
 * (parallel.h), in place of its row range. */
int poolkit_quantize_rows(const void *x, int x_dtype, int64_t x_stride, const float *inv_smooth, int64_t k, int levels,
                          uint8_t *q, float *step, float *zero, int64_t rows, int64_t workers) {
    int code;
    PARALLEL_RANGES(rows, workers, code, begin, end,
                    quantize_rows(x, x_dtype, x_stride, inv_smooth, k, levels, q, step, zero, begin, end));
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
