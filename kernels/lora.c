/* poolkit's LoRA delta on the CPU (see lora.py's lora_delta_cpu): for each run of rows an adapter
 * owns, the shrink to its rank and the expand back, added to the base layer's output in place.
 *
 * Both factors of each slot the call uses are first transposed to float32, once per call (a few hundred
 * thousand values a layer, against the base matmul's hundreds of millions of products; made per run
 * instead, it cost more than the products where every sequence is a run): A as [in, width] (ranks
 * padded to 16), B as [width, out]. The runs' rows then go in blocks of LORA_ROWS, split over threads
 * by blocks. For a block, each input value is broadcast against 16 ranks of its A row into one
 * accumulator a row (no horizontal sums), giving the block's rank values in float32; the expand then
 * adds, for every 16 output columns, sum_r s[r] * B[:, r] to the rows' outputs. Nothing is gathered
 * or copied: x and out are read and written where they are, and each output row is rounded once to
 * its dtype. A run's last block of fewer rows computes its last row again in the places of the
 * missing ones and stores only its own.
 *
 * Plain C, compiled once per machine by poolkit.kernels.compiler; needs AVX-512 (simd.h), else
 * poolkit_lora_delta returns 2 and lora.py's torch reference runs. dtype codes: 0 float32, 1 bf16
 * (x, out and the factors alike). Returns 0, 1 when out of memory, 2 without AVX-512, 3 for a bad
 * argument. */
#include <stdint.h>
#include <stdlib.h>

#include "parallel.h"
#include "simd.h"

/* 1 when this build has poolkit_lora_delta's AVX-512 code. */
int poolkit_lora_available(void) { return POOLKIT_AVX512_BUILT; }

#ifdef POOLKIT_AVX512
/* Rows a block shrinks and expands together: eight accumulators hide the FMAs' latency. */
#define LORA_ROWS 8

typedef struct {
    const void *x, *a, *b;
    void *out;
    int64_t x_stride, out_stride, in, features, width;
    const int64_t *segments; /* [count][3]: start, stop, slot */
    int64_t count;
    int dtype;
} lora_call;

static inline __m512 load16(const void *p, int dtype, int64_t i) {
    return dtype ? bf16x16((const uint16_t *)p + i) : _mm512_loadu_ps((const float *)p + i);
}

static inline void store16(void *p, int dtype, int64_t i, __m512 v) {
    if (dtype)
        put_bf16x16((uint16_t *)p + i, v);
    else
        _mm512_storeu_ps((float *)p + i, v);
}

static inline float bf16_float(uint16_t h) {
    union {
        uint32_t u;
        float f;
    } v = {(uint32_t)h << 16};
    return v.f;
}

static inline const void *row_of(const void *base, int dtype, int64_t stride, int64_t row) {
    return (const char *)base + row * stride * (dtype ? 2 : 4);
}

/* Rows [row, row + rows) (rows <= LORA_ROWS): their rank values into s ([LORA_ROWS][wpad]) from the
 * slot's transposed shrink at ([in][wpad], wpad: width rounded up to 16, zero columns past width), then
 * their outputs plus s times its transposed expand bt ([width][features]). */
static void lora_rows(const lora_call *C, int64_t row, int64_t rows, const float *at, const float *bt, float *s) {
    enum { ROWS = LORA_ROWS };
    const int64_t in = C->in, width = C->width, features = C->features, wpad = (width + 15) & ~(int64_t)15;
    const int dtype = C->dtype;
    const void *xs[LORA_ROWS];
    void *outs[LORA_ROWS];
    for (int i = 0; i < ROWS; i++) { /* a short block repeats its last row, computed and not stored */
        const int64_t at_row = row + (i < rows ? i : rows - 1);
        xs[i] = row_of(C->x, dtype, C->x_stride, at_row);
        outs[i] = (void *)row_of(C->out, dtype, C->out_stride, at_row);
    }
    /* each input value broadcast against 16 ranks of its shrink row: no horizontal sums */
#define SHRINK(VALUE)                                                                                            \
    for (int64_t k = 0; k < in; k++) {                                                                           \
        const __m512 av = _mm512_loadu_ps(at + k * wpad + r0);                                                   \
        _Pragma("GCC unroll 8") for (int i = 0; i < ROWS; i++) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(VALUE), av, acc[i]); \
    }
    for (int64_t r0 = 0; r0 < wpad; r0 += 16) {
        __m512 acc[LORA_ROWS];
#pragma GCC unroll 8
        for (int i = 0; i < ROWS; i++) acc[i] = _mm512_setzero_ps();
        if (dtype)
            SHRINK(bf16_float(((const uint16_t *)xs[i])[k]))
        else
            SHRINK(((const float *)xs[i])[k])
#pragma GCC unroll 8
        for (int i = 0; i < ROWS; i++) _mm512_storeu_ps(s + i * wpad + r0, acc[i]);
    }
#undef SHRINK
    for (int64_t n = 0; n < features; n += 16) {
        __m512 o[LORA_ROWS];
#pragma GCC unroll 8
        for (int i = 0; i < ROWS; i++) o[i] = load16(outs[i], dtype, n);
        for (int64_t r = 0; r < width; r++) {
            const __m512 bv = _mm512_loadu_ps(bt + r * features + n);
#pragma GCC unroll 8
            for (int i = 0; i < ROWS; i++) o[i] = _mm512_fmadd_ps(_mm512_set1_ps(s[i * wpad + r]), bv, o[i]);
        }
        for (int i = 0; i < rows; i++) store16(outs[i], dtype, n, o[i]);
    }
}

/* The floats of one used slot's factors in the call's scratch: its shrink [in][wpad], then its expand [width][features]. */
static inline int64_t factors_size(const lora_call *C) {
    return C->in * ((C->width + 15) & ~(int64_t)15) + C->width * C->features;
}

/* The blocks [begin, end) of the runs' rows, numbered run after run; factors: each used slot's
 * transposed factors (lora_transpose), at index[slot]. */
static int lora_blocks(const lora_call *C, const float *factors, const int64_t *index, int64_t begin, int64_t end) {
    const int64_t wpad = (C->width + 15) & ~(int64_t)15, size = factors_size(C);
    float *s = malloc((size_t)(LORA_ROWS * wpad) * sizeof(float));
    if (!s) return 1;
    int64_t run = 0, first = 0; /* the run block `begin` falls in, and its first block */
    for (int64_t block = begin; block < end; block++) {
        const int64_t *seg = C->segments + 3 * run;
        while (block >= first + (seg[1] - seg[0] + LORA_ROWS - 1) / LORA_ROWS) {
            first += (seg[1] - seg[0] + LORA_ROWS - 1) / LORA_ROWS;
            seg = C->segments + 3 * ++run;
        }
        const int64_t row = seg[0] + (block - first) * LORA_ROWS;
        const float *mine = factors + index[seg[2]] * size;
        lora_rows(C, row, seg[1] - row < LORA_ROWS ? seg[1] - row : LORA_ROWS, mine, mine + C->in * wpad, s);
    }
    free(s);
    return 0;
}

static inline float factor_at(const void *p, int dtype, int64_t i) {
    return dtype ? bf16_float(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* Slots [begin, end) of `used`: A [width][in] as float32 [in][wpad] (zero columns past width) and
 * B [features][width] as float32 [width][features], into factors. */
static int lora_transpose(const lora_call *C, const int64_t *used, float *factors, int64_t begin, int64_t end) {
    const int64_t in = C->in, width = C->width, features = C->features, wpad = (width + 15) & ~(int64_t)15;
    for (int64_t u = begin; u < end; u++) {
        const void *a = row_of(C->a, C->dtype, width * in, used[u]), *b = row_of(C->b, C->dtype, features * width, used[u]);
        float *at = factors + u * factors_size(C), *bt = at + in * wpad;
        for (int64_t k = 0; k < in; k++)
            for (int64_t r = 0; r < wpad; r++) at[k * wpad + r] = r < width ? factor_at(a, C->dtype, r * in + k) : 0.0f;
        for (int64_t n = 0; n < features; n++)
            for (int64_t r = 0; r < width; r++) bt[r * features + n] = factor_at(b, C->dtype, n * width + r);
    }
    return 0;
}
#endif

/* out[start:stop] += (x[start:stop] A[slot]^T) B[slot]^T for each (start, stop, slot) of segments
 * ([count][3] int64, disjoint runs); x: [T, in] (row stride x_stride elements), out: [T, features]
 * (row stride out_stride), a: [S, width, in], b: [S, features, width], contiguous; in and features
 * multiples of 16; all of dtype `dtype`. Split over `workers` threads by blocks of rows. */
int poolkit_lora_delta(const void *x, int64_t x_stride, void *out, int64_t out_stride, int dtype, const void *a,
                       const void *b, int64_t in, int64_t features, int64_t width, const int64_t *segments, int64_t count,
                       int64_t workers) {
#ifdef POOLKIT_AVX512
    if ((dtype != 0 && dtype != 1) || in <= 0 || in % 16 || features <= 0 || features % 16 || width <= 0 || count < 0)
        return 3;
    int64_t blocks = 0;
    for (int64_t i = 0; i < count; i++) {
        if (segments[3 * i + 1] < segments[3 * i]) return 3;
        blocks += (segments[3 * i + 1] - segments[3 * i] + LORA_ROWS - 1) / LORA_ROWS;
    }
    const lora_call C = {x, a, b, out, x_stride, out_stride, in, features, width, segments, count, dtype};
    int64_t slots = 0; /* the used slots, in order of first use, and each one's place among them */
    for (int64_t i = 0; i < count; i++) slots = segments[3 * i + 2] >= slots ? segments[3 * i + 2] + 1 : slots;
    int64_t *index = malloc((size_t)(2 * slots + 1) * sizeof(int64_t)), *used = index + slots, n_used = 0;
    if (!index) return 1;
    for (int64_t i = 0; i < slots; i++) index[i] = -1;
    for (int64_t i = 0; i < count; i++) {
        const int64_t slot = segments[3 * i + 2];
        if (slot < 0) {
            free(index);
            return 3;
        }
        if (index[slot] < 0 && segments[3 * i + 1] > segments[3 * i]) {
            index[slot] = n_used;
            used[n_used++] = slot;
        }
    }
    float *bt = malloc((size_t)(n_used * factors_size(&C) + 1) * sizeof(float));
    if (!bt) {
        free(index);
        return 1;
    }
    int code;
    PARALLEL_RANGES(n_used, workers, code, begin, end, lora_transpose(&C, used, bt, begin, end));
    if (!code) PARALLEL_RANGES(blocks, workers, code, begin, end, lora_blocks(&C, bt, index, begin, end));
    free(bt);
    free(index);
    return code;
#else
    (void)x; (void)x_stride; (void)out; (void)out_stride; (void)dtype; (void)a; (void)b; (void)in; (void)features;
    (void)width; (void)segments; (void)count; (void)workers;
    return 2;
#endif
}
