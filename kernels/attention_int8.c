/* poolkit's packed (varlen) attention with integer products, for int8 models on CPUs with
 * AVX512-VNNI (the varlen_attention_int8 op; see attention.py for the contract).
 *
 * The float32 build of attention.c spends two thirds of its time in the two products, one FMA per
 * multiply-add. Here both run on VNNI's integer dot products, the softmax stays float32:
 *   1. keys rounded to int8 per key (each its own scale, the largest |k| at 127), once per sequence
 *      and key/value head; queries to int8 per query, offset by 128 to the unsigned bytes VPDPBUSD
 *      takes (the offset's product taken back through each key's sum, the accumulator's start);
 *      S^T = K Q^T as VPDPBUSD of 4 dims a lane, one key's 4 bytes broadcast against 16 queries',
 *      exact in int32, then times the key's scale (the query's is a positive factor of its whole
 *      row, taken into the softmax's scale);
 *   2. the softmax per query, lane-wise, as attention.c's (its maximum, then 2^x), the
 *      probabilities rounded to 12 bits (the largest to 4095) and pair-interleaved as int16, the
 *      sum of the rounded ones kept in int32;
 *   3. the values rounded to int16 at 11 bits per dimension (the largest |v| of the dimension over
 *      the sequence at 1023), pair-interleaved; O = P V as VPDPWSSD of a key pair a lane, exact in
 *      int32 for 256 pairs (2 x 256 x 4095 x 1023 < 2^31) and summed in float32 between such
 *      chunks, then times each dimension's scale and 1 / the query's sum.
 * On all-MiniLM-L6-v2 the roundings alone keep a least cosine of 0.99998 (keys and queries) and
 * 0.99999 (probabilities and values) to the float model; int8 calibration measures the whole.
 *
 * Calls: float32 or bf16 q, k, v and out, bidirectional or causal (no window, no bias, no key_lens), d
 * a multiple of 16 up to 256; attention_int8.py hands every other call to the float kernels. bf16 is
 * widened to float32 a sequence's head at a time in the thread's scratch (an int8 model in bf16 on a
 * CPU whose bf16 attention has no AMX tiles), and the outputs rounded back. Causal
 * blocks score the keys up to their last query, the last few hidden from the queries before them.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "simd.h"
#include "parallel.h"

#if defined(POOLKIT_AVX512) && defined(__AVX512VNNI__)
#define POOLKIT_VNNI 1
#endif

/* 1 when this build has the kernel (AVX-512 with VNNI). */
int poolkit_attention_int8_available(void) {
#ifdef POOLKIT_VNNI
    return 1;
#else
    return 0;
#endif
}

#ifdef POOLKIT_VNNI

#define PROB_LEVELS 4095.0f  /* the largest probability, 2^12 - 1 */
#define VALUE_LEVELS 1023.0f /* the largest |value| of a dimension, 2^10 - 1 */
#define EXACT_PAIRS 256      /* key pairs whose products an int32 sums exactly */

typedef struct {
    int8_t *keys;       /* the sequence's keys of one head, rounded: keys x d */
    int32_t *key_start; /* per key: -128 x the sum of its rounded dims (the queries' offset taken back) */
    float *key_scale;   /* per key: its largest |k| / 127 */
    uint32_t *values;   /* key pairs x d: two int16 a dim, the even key's in the low half */
    float *value_scale; /* per dim: its largest |v| / VALUE_LEVELS */
    uint8_t *rows;      /* the block's 16 queries rounded and offset, 16 x d bytes */
    uint32_t *query;    /* the same packed: 4 dims (32 bits) x 16 queries */
    float *scores;      /* S^T: keys x 16 queries, times each key's scale */
    uint32_t *probs;    /* P^T: key pairs x 16 queries, two int16 each */
} workspace;

/* The rows of the fused q, k, v projection lie a few KB apart, each on its own page: the hardware
 * prefetcher does not follow them, so each row's lines are asked for AHEAD rows before it is read. */
#define AHEAD 8
static inline void prefetch_row(const float *row, int64_t d) {
    for (int64_t t = 0; t < d; t += 16) _mm_prefetch((const char *)(row + t), _MM_HINT_T0);
}

/* The largest |x| of n floats (n a multiple of 16). */
static inline float largest(const float *x, int64_t n) {
    __m512 m = _mm512_setzero_ps();
    for (int64_t t = 0; t < n; t += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + t)));
    return _mm512_reduce_max_ps(m);
}

/* The keys of one sequence and head (`len` rows `stride` floats apart) into w->keys, each row at
 * its own scale, and each row's start for step 1. */
static void round_keys(const workspace *w, const float *k, int64_t stride, int64_t len, int64_t d) {
    for (int64_t n = 0; n < len; n++) {
        const float *row = k + n * stride;
        if (n + AHEAD < len) prefetch_row(row + AHEAD * stride, d);
        float top = largest(row, d);
        __m512 inv = _mm512_set1_ps(top > 0.0f ? 127.0f / top : 0.0f);
        __m512i sum = _mm512_setzero_si512();
        for (int64_t t = 0; t < d; t += 16) {
            __m512i x = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + t), inv));
            sum = _mm512_add_epi32(sum, x);
            _mm_storeu_si128((__m128i *)(w->keys + n * d + t), _mm512_cvtepi32_epi8(x));
        }
        w->key_start[n] = -128 * _mm512_reduce_add_epi32(sum);
        w->key_scale[n] = top / 127.0f;
    }
}

/* The values of one sequence and head into w->values, each dimension at its own scale. */
static void round_values(const workspace *w, const float *v, int64_t stride, int64_t len, int64_t d) {
    __m512 top[16];
    for (int64_t t = 0; t < d; t += 16) top[t / 16] = _mm512_setzero_ps();
    for (int64_t n = 0; n < len; n++) {
        if (n + AHEAD < len) prefetch_row(v + (n + AHEAD) * stride, d);
        for (int64_t t = 0; t < d; t += 16) top[t / 16] = _mm512_max_ps(top[t / 16], _mm512_abs_ps(_mm512_loadu_ps(v + n * stride + t)));
    }
    for (int64_t t = 0; t < d; t += 16) {
        _mm512_storeu_ps(w->value_scale + t, _mm512_mul_ps(top[t / 16], _mm512_set1_ps(1.0f / VALUE_LEVELS)));
        __mmask16 some = _mm512_cmp_ps_mask(top[t / 16], _mm512_setzero_ps(), _CMP_GT_OQ);
        top[t / 16] = _mm512_maskz_div_ps(some, _mm512_set1_ps(VALUE_LEVELS), top[t / 16]); /* now the inverse */
    }
    for (int64_t n = 0; n < len; n += 2) {
        const float *even_row = v + n * stride, *odd_row = even_row + stride;
        for (int64_t t = 0; t < d; t += 16) {
            __m512i even = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(even_row + t), top[t / 16]));
            __m512i odd = n + 1 < len ? _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(odd_row + t), top[t / 16]))
                                      : _mm512_setzero_si512();
            __m512i pair = _mm512_or_si512(_mm512_and_si512(even, _mm512_set1_epi32(0xffff)), _mm512_slli_epi32(odd, 16));
            _mm512_storeu_si512((void *)(w->values + (n / 2) * d + t), pair);
        }
    }
}

/* The block's `rows` queries (rows `stride` floats apart) rounded to bytes (their value + 128; rows
 * past `rows` 128, a zero query) and packed into w->query; `scale` gets each query's scale (0 past
 * `rows`). */
static void round_queries(const workspace *w, const float *q, int64_t stride, int64_t rows, int64_t d, float *scale) {
    for (int64_t r = 0; r < 16; r++) {
        uint8_t *out = w->rows + r * d;
        if (r >= rows) {
            memset(out, 128, (size_t)d);
            scale[r] = 0.0f;
            continue;
        }
        const float *row = q + r * stride;
        prefetch_row(row + 16 * stride, d); /* the next block's row r (a read past the tensor is only a hint) */
        float top = largest(row, d);
        __m512 inv = _mm512_set1_ps(top > 0.0f ? 127.0f / top : 0.0f);
        for (int64_t t = 0; t < d; t += 16) {
            __m512i x = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + t), inv));
            _mm_storeu_si128((__m128i *)(out + t), _mm512_cvtepi32_epi8(_mm512_add_epi32(x, _mm512_set1_epi32(128))));
        }
        scale[r] = top / 127.0f;
    }
    int64_t units = d / 4; /* 32-bit units (4 dims) a query */
    for (int64_t p = 0; p < units; p += 16) {
        __mmask16 some = (__mmask16)(units - p >= 16 ? 0xffff : (1u << (units - p)) - 1);
        __m512 r[16];
        for (int n = 0; n < 16; n++) r[n] = _mm512_maskz_loadu_ps(some, w->rows + n * d + 4 * p);
        transpose16(r);
        for (int64_t t = 0; t < 16 && p + t < units; t++) _mm512_storeu_ps((float *)(w->query + (p + t) * 16), r[t]);
    }
}

/* Step 1 for keys [j, len) (their scores at rows j ..): `quads` (d / 4) VPDPBUSD a key, four keys
 * at a time. Returns each query's largest of them (the softmax's maximum, taken as they are stored). */
static inline __attribute__((always_inline)) __m512 scores_int8(const workspace *w, int64_t j, int64_t len, int64_t d,
                                                                int64_t quads) {
    __m512 top0 = _mm512_set1_ps(-INFINITY), top1 = top0;
    for (; j + 4 <= len; j += 4) {
        const int32_t *k0 = (const int32_t *)(w->keys + j * d), *k1 = k0 + d / 4, *k2 = k1 + d / 4, *k3 = k2 + d / 4;
        __m512i a0 = _mm512_set1_epi32(w->key_start[j]), a1 = _mm512_set1_epi32(w->key_start[j + 1]);
        __m512i a2 = _mm512_set1_epi32(w->key_start[j + 2]), a3 = _mm512_set1_epi32(w->key_start[j + 3]);
        for (int64_t t = 0; t < quads; t++) {
            __m512i qt = _mm512_loadu_si512((const void *)(w->query + t * 16));
            a0 = _mm512_dpbusd_epi32(a0, qt, _mm512_set1_epi32(k0[t]));
            a1 = _mm512_dpbusd_epi32(a1, qt, _mm512_set1_epi32(k1[t]));
            a2 = _mm512_dpbusd_epi32(a2, qt, _mm512_set1_epi32(k2[t]));
            a3 = _mm512_dpbusd_epi32(a3, qt, _mm512_set1_epi32(k3[t]));
        }
        float *s = w->scores + j * 16;
        __m512 y0 = _mm512_mul_ps(_mm512_cvtepi32_ps(a0), _mm512_set1_ps(w->key_scale[j]));
        __m512 y1 = _mm512_mul_ps(_mm512_cvtepi32_ps(a1), _mm512_set1_ps(w->key_scale[j + 1]));
        __m512 y2 = _mm512_mul_ps(_mm512_cvtepi32_ps(a2), _mm512_set1_ps(w->key_scale[j + 2]));
        __m512 y3 = _mm512_mul_ps(_mm512_cvtepi32_ps(a3), _mm512_set1_ps(w->key_scale[j + 3]));
        _mm512_storeu_ps(s, y0);
        _mm512_storeu_ps(s + 16, y1);
        _mm512_storeu_ps(s + 32, y2);
        _mm512_storeu_ps(s + 48, y3);
        top0 = _mm512_max_ps(top0, _mm512_max_ps(y0, y1));
        top1 = _mm512_max_ps(top1, _mm512_max_ps(y2, y3));
    }
    for (; j < len; j++) {
        const int32_t *kj = (const int32_t *)(w->keys + j * d);
        __m512i a = _mm512_set1_epi32(w->key_start[j]);
        for (int64_t t = 0; t < quads; t++)
            a = _mm512_dpbusd_epi32(a, _mm512_loadu_si512((const void *)(w->query + t * 16)), _mm512_set1_epi32(kj[t]));
        __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(a), _mm512_set1_ps(w->key_scale[j]));
        _mm512_storeu_ps(w->scores + j * 16, y);
        top0 = _mm512_max_ps(top0, y);
    }
    return _mm512_max_ps(top0, top1);
}

/* 4095 x 2^x for x <= 0 (x below -30 gives less than half a level: 0 once rounded): the degree-4
 * polynomial of 2^f for |f| <= 1/2 closest to it in relative error (under 2.6e-6, a hundredth of a
 * level at the top), its coefficients times PROB_LEVELS. */
static inline __m512 levels_exp2(__m512 x) {
    static const float c[5] = {9.57008172e-3f * PROB_LEVELS, 5.59178628e-2f * PROB_LEVELS, 2.40247458e-1f * PROB_LEVELS,
                               6.93121791e-1f * PROB_LEVELS, 9.99999285e-1f * PROB_LEVELS};
    return exp2_poly16(x, -30.0f, c, 4);
}

/* Step 2: the rounded probabilities of keys [0, len) into w->probs (a zero past an odd len);
 * returns each query's 1 / (sum of its rounded probabilities). `top`: each query's largest score;
 * `step`: each query's factor on its scores (its scale x the softmax's scale x log2(e)). */
static inline __m512 softmax_int(const workspace *w, int64_t len, __m512 top, __m512 step) {
    __m512 shift = _mm512_mul_ps(top, _mm512_sub_ps(_mm512_setzero_ps(), step));
    __m512i sum = _mm512_setzero_si512();
    for (int64_t j = 0; j < len; j += 2) {
        __m512i even = _mm512_cvtps_epi32(levels_exp2(_mm512_fmadd_ps(_mm512_loadu_ps(w->scores + j * 16), step, shift)));
        __m512i odd = j + 1 < len ? _mm512_cvtps_epi32(levels_exp2(_mm512_fmadd_ps(_mm512_loadu_ps(w->scores + j * 16 + 16), step, shift)))
                                  : _mm512_setzero_si512();
        sum = _mm512_add_epi32(sum, _mm512_add_epi32(even, odd));
        _mm512_storeu_si512((void *)(w->probs + (j / 2) * 16), _mm512_or_si512(even, _mm512_slli_epi32(odd, 16)));
    }
    return _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_cvtepi32_ps(sum));
}

/* Each of the sixteen accumulators' numbers, for a macro. */
#define EACH16(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)

/* Step 3 for `nq` queries (block rows r0 ..) and `nv` x 16 dims from dim m0 over `pairs` key pairs,
 * written to out (row r0 + r of the block, rows < `rows` only) times each dim's scale and `inv`: the
 * int32 sums of each chunk of EXACT_PAIRS converted, scaled and added to the first chunk's there.
 * Sum i (query i / nv, dims 16 (i % nv) ..) is the named register a<i> (GCC copied an array of them
 * every step, as int8.c's vnni_block notes); nq x nv <= 16. */
static inline __attribute__((always_inline)) void outputs_int(const workspace *w, int64_t pairs, int64_t d, int64_t m0,
                                                              int nv, int nq, int64_t r0, int64_t rows, const float *inv,
                                                              float *out, int64_t out_stride) {
    for (int64_t c0 = 0; c0 < pairs; c0 += EXACT_PAIRS) {
        int64_t c1 = c0 + EXACT_PAIRS < pairs ? c0 + EXACT_PAIRS : pairs;
#define ZERO(i) __m512i a##i = _mm512_setzero_si512();
        EACH16(ZERO)
#undef ZERO
        for (int64_t i = c0; i < c1; i++) {
            __m512i x[4];
            for (int t = 0; t < nv; t++) x[t] = _mm512_loadu_si512((const void *)(w->values + i * d + m0 + 16 * t));
            const int32_t *p = (const int32_t *)w->probs + i * 16 + r0;
#define PRODUCT(i) if ((i) < nq * nv) a##i = _mm512_dpwssd_epi32(a##i, x[(i) % nv], _mm512_set1_epi32(p[(i) / nv]));
            EACH16(PRODUCT)
#undef PRODUCT
        }
        const __m512i all[16] = {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15};
        for (int r = 0; r < nq && r0 + r < rows; r++) {
            __m512 factor = _mm512_set1_ps(inv[r0 + r]);
            for (int t = 0; t < nv; t++) {
                float *o = out + (r0 + r) * out_stride + m0 + 16 * t;
                __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(all[r * nv + t]),
                                         _mm512_mul_ps(_mm512_loadu_ps(w->value_scale + m0 + 16 * t), factor));
                _mm512_storeu_ps(o, c0 ? _mm512_add_ps(_mm512_loadu_ps(o), x) : x);
            }
        }
    }
}

/* Step 1 for the keys [0, seen) the block sees, `full` of them by every query (the rest, causal
 * attention's last keys up to the block's last query, by the queries at or after them: a hidden
 * one's score is -inf, which the softmax takes to 0). Returns each query's largest seen score. */
static inline __attribute__((always_inline)) __m512 scores_seen(const workspace *w, int64_t full, int64_t seen, int64_t q0,
                                                                int64_t d, int64_t quads) {
    __m512 top = scores_int8(w, 0, full, d, quads);
    if (full < seen) {
        scores_int8(w, full, seen, d, quads);
        for (int64_t j = full; j < seen; j++) {
            __mmask16 sees = (__mmask16)(0xffffu << (j - q0)); /* queries q0 + r with r >= j - q0 */
            __m512 y = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), sees, _mm512_loadu_ps(w->scores + j * 16));
            _mm512_storeu_ps(w->scores + j * 16, y);
            top = _mm512_max_ps(top, y);
        }
    }
    return top;
}

/* One block of up to 16 queries of one head, positions q0 .. (rows `q_stride` floats apart), against
 * the sequence's rounded keys and values in w, all of them or (`causal`) those up to each query; out:
 * the head's output of the block's first query. */
static void attend_block_int(const workspace *w, const float *q, int64_t q_stride, int64_t q0, int64_t rows, int64_t len,
                             int64_t d, float scale, int causal, float *out, int64_t out_stride) {
    float query_scale[16];
    round_queries(w, q, q_stride, rows, d, query_scale);
    int64_t seen = causal ? q0 + rows : len, full = causal ? q0 : len;
    __m512 top;
    switch (d) { /* constant counts, so that the queries stay in registers */
    case 32: top = scores_seen(w, full, seen, q0, d, 8); break;
    case 64: top = scores_seen(w, full, seen, q0, d, 16); break;
    default: top = scores_seen(w, full, seen, q0, d, d / 4); break;
    }
    __m512 step = _mm512_mul_ps(_mm512_loadu_ps(query_scale), _mm512_set1_ps(scale * 1.44269504f));
    float inv[16];
    _mm512_storeu_ps(inv, softmax_int(w, seen, top, step));
    int64_t pairs = (seen + 1) / 2;
#define OUTPUTS(nv, nq) outputs_int(w, pairs, d, m0, nv, nq, r0, rows, inv, out, out_stride)
    OUTPUT_BLOCKS(OUTPUTS, d, rows)
#undef OUTPUTS
}

/* rows x d bf16 values, `stride` elements apart, widened to float32 rows d apart in dst. */
static void widen_rows(float *dst, const uint16_t *src, int64_t stride, int64_t rows, int64_t d) {
    for (int64_t r = 0; r < rows; r++) {
        if (r + AHEAD < rows) _mm_prefetch((const char *)(src + (r + AHEAD) * stride), _MM_HINT_T0);
        for (int64_t t = 0; t < d; t += 16) _mm512_storeu_ps(dst + r * d + t, bf16x16(src + r * stride + t));
    }
}

/* rows x d float32 values, d apart in src, rounded to bf16 (to nearest even, simd.h's rounding)
 * into rows `stride` elements apart in dst. */
static void narrow_rows(uint16_t *dst, int64_t stride, const float *src, int64_t rows, int64_t d) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t t = 0; t < d; t += 16) put_bf16x16(dst + r * stride + t, _mm512_loadu_ps(src + r * d + t));
}

/* Query heads [h_begin, h_end) of a packed batch (the arguments of poolkit_varlen_attention_int8).
 * bf16 tensors are read a sequence's head at a time into float32 rows (the keys and values once for
 * the heads that share them), and each head's outputs rounded back to bf16 from float32 rows. */
static int attend_int(const void *q, int64_t q_stride, const void *k, int64_t k_stride, const void *v, int64_t v_stride,
                      void *out, const int64_t *cu, int64_t nseq, int64_t max_len, int64_t heads, int64_t kv_heads, int64_t d,
                      float scale, int causal, int bf16, int64_t h_begin, int64_t h_end) {
    int64_t padded = (max_len + 1) & ~(int64_t)1, group = heads / kv_heads, width = bf16 ? 2 : 4;
    size_t rows = (size_t)padded * d * sizeof(float), wide = bf16 ? rows : 0;
    size_t sizes[13] = {
        (size_t)padded * d,
        (size_t)padded * sizeof(int32_t),
        (size_t)padded * sizeof(float),
        (size_t)padded / 2 * d * sizeof(uint32_t),
        (size_t)d * sizeof(float),
        (size_t)16 * d,
        (size_t)d / 4 * 16 * sizeof(uint32_t),
        (size_t)padded * 16 * sizeof(float),
        (size_t)padded / 2 * 16 * sizeof(uint32_t),
        wide, wide, wide, wide, /* bf16: a head's queries, keys, values and outputs as float32 rows */
    };
    void *parts[13] = {0};
    for (int i = 0; i < 13; i++) {
        if (posix_memalign(&parts[i], 64, sizes[i] + 64)) {
            for (int j = 0; j < i; j++) free(parts[j]);
            return 1;
        }
    }
    workspace w = {parts[0], parts[1], parts[2], parts[3], parts[4], parts[5], parts[6], parts[7], parts[8]};
    float *wq = parts[9], *wk = parts[10], *wv = parts[11], *wo = parts[12];
    const char *qb = q, *kb = k, *vb = v;
    char *ob = out;
    for (int64_t s = 0; s < nseq; s++) {
        int64_t t0 = cu[s], len = cu[s + 1] - cu[s];
        if (len <= 0) continue;
        if (len == 1) { /* one token sees only itself: its output is its value, exactly */
            for (int64_t h = h_begin; h < h_end; h++)
                memcpy(ob + (t0 * heads * d + h * d) * width, vb + (t0 * v_stride + (h / group) * d) * width, (size_t)(d * width));
            continue;
        }
        for (int64_t g = h_begin / group; g <= (h_end - 1) / group; g++) {
            const float *kk = (const float *)kb + t0 * k_stride + g * d, *vv = (const float *)vb + t0 * v_stride + g * d;
            int64_t ks = k_stride, vs = v_stride;
            if (bf16) {
                widen_rows(wk, (const uint16_t *)kb + t0 * k_stride + g * d, k_stride, len, d);
                widen_rows(wv, (const uint16_t *)vb + t0 * v_stride + g * d, v_stride, len, d);
                kk = wk, vv = wv, ks = vs = d;
            }
            round_keys(&w, kk, ks, len, d);
            round_values(&w, vv, vs, len, d);
            int64_t h_lo = g * group > h_begin ? g * group : h_begin;
            int64_t h_hi = (g + 1) * group < h_end ? (g + 1) * group : h_end;
            for (int64_t h = h_lo; h < h_hi; h++) {
                const float *qq = (const float *)qb + t0 * q_stride + h * d;
                float *oo = (float *)ob + t0 * heads * d + h * d;
                int64_t qs = q_stride, os = heads * d;
                if (bf16) {
                    widen_rows(wq, (const uint16_t *)qb + t0 * q_stride + h * d, q_stride, len, d);
                    qq = wq, oo = wo, qs = os = d;
                }
                for (int64_t q0 = 0; q0 < len; q0 += 16)
                    attend_block_int(&w, qq + q0 * qs, qs, q0, len - q0 < 16 ? len - q0 : 16, len, d, scale, causal, oo + q0 * os, os);
                if (bf16) narrow_rows((uint16_t *)ob + t0 * heads * d + h * d, heads * d, wo, len, d);
            }
        }
    }
    for (int i = 0; i < 13; i++) free(parts[i]);
    return 0;
}

#endif /* POOLKIT_VNNI */

/* Attention of every head of a packed batch of float32 (bf16: 1) tokens with integer products, the
 * heads split over `workers` threads: q [T, heads, d] with token stride q_stride (elements), heads d
 * apart; k, v [T, kv_heads, d] likewise; out [T, heads, d] contiguous, of the same dtype; cu the
 * nseq + 1 offsets of the sequences, max_len the longest; d a multiple of 16 up to 256; causal: each
 * query sees the keys up to its own position, else all of its sequence's.
 * Returns 0, 1 when out of memory, 2 when this build has no such kernel. */
int poolkit_varlen_attention_int8(const void *q, int64_t q_stride, const void *k, int64_t k_stride, const void *v,
                                  int64_t v_stride, void *out, const int64_t *cu, int64_t nseq, int64_t max_len,
                                  int64_t heads, int64_t kv_heads, int64_t d, float scale, int causal, int bf16,
                                  int64_t workers) {
#ifdef POOLKIT_VNNI
    int code;
    PARALLEL_RANGES(heads, workers, code, begin, end,
                    attend_int(q, q_stride, k, k_stride, v, v_stride, out, cu, nseq, max_len, heads, kv_heads, d, scale,
                               causal, bf16, begin, end));
    return code;
#else
    (void)q; (void)q_stride; (void)k; (void)k_stride; (void)v; (void)v_stride; (void)out; (void)cu; (void)nseq;
    (void)max_len; (void)heads; (void)kv_heads; (void)d; (void)scale; (void)causal; (void)bf16; (void)workers;
    return 2;
#endif
}
