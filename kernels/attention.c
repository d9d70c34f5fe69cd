/* poolkit's packed (varlen) attention for CPUs with AVX-512, in bf16 with AVX512-BF16 and on AMX
 * tiles where the CPU has them (see attention.py for the contract).
 *
 * One call attends every sequence of a packed batch: no padding, no per-length grouping, no
 * concatenation. Plain C on data pointers, compiled once per machine by poolkit.kernels.compiler
 * (-O3 -march=native) and called through ctypes. Three builds of the products share everything else:
 * poolkit_varlen_attention multiplies on AMX tiles (AMX-BF16, where the Linux kernel grants the tile
 * state: poolkit_attention_available), poolkit_varlen_attention_avx512 with AVX512-BF16's
 * vdpbf16ps (Zen 4, Cooper Lake and later: poolkit_attention_avx512_available) and
 * poolkit_varlen_attention_f32, on every AVX-512 CPU (Skylake-SP, Cascade Lake, Ice Lake too:
 * poolkit_attention_f32_available), float32 inputs with FMAs, a float32 softmax and float32
 * probabilities.
 *
 * For each sequence and key/value head the values are packed once (AMX: transposed into the
 * tiles' layout, the keys copied contiguous; AVX-512: each pair of keys' values interleaved, dim by
 * dim; float32: the keys and the values copied contiguous, d floats a row, where the fused q, k, v
 * rows' stride would put a head's rows in a few of L1's sets: 1.00-1.17x the attention, most at 512
 * tokens and 64 dims). Then for each query head and block of 16 queries, the queries pair-interleaved
 * (dim pair x query, 32 bits each; loaded by row and transposed in registers, pack_queries):
 *   1. the transposed scores S^T = K Q^T in float32, so that one vector holds one key's scores for
 *      the 16 queries (AMX: 32 keys per tile product; AVX-512: one key's dim pair broadcast against
 *      the 16 queries' pairs, 8 keys at a time; float32 without a mask or a prefix: two blocks of
 *      queries at a time, each key value broadcast once for both);
 *   2. an exact softmax per query, lane-wise: the maximum over the keys it sees, then
 *      2^((s - max) * scale * log2(e)) and its sum (soft-capping first where asked), the probabilities
 *      rounded to bfloat16 and pair-interleaved, hidden keys written as zeros;
 *   3. the outputs in float32 (AMX: O^T = V^T P^T on the tiles; AVX-512: O = P V, a query's
 *      probability pair broadcast against 16 dims of a key pair's values), divided by each query's
 *      sum and rounded once to bfloat16.
 * This is the arithmetic of torch's CPU flash-attention kernel (bf16 products, float32
 * accumulation and softmax, bf16 probabilities for the second product), two-pass instead of
 * online: a block's scores for the longest sequence (L x 16 floats) stay in the cache.
 *
 * poolkit_prefix_attention_avx512 and _f32 (the prefix_attention op) run sequences that continue
 * prefixes computed already: a sequence's queries sit at the positions after its prefix and attend
 * causally to the prefix's keys (read in place from the prefix tensors) and then to its own, in the
 * same three steps; the bf16 build packs a prefix's value pairs once for the sequences that continue
 * it one after another, and each sequence's own from the prefix's last whole pair on.
 *
 * Masks are ranges, never tensors: query i of a sequence sees keys [lo_i, hi_i) with
 * lo_i = max(0, i - window) and hi_i = causal ? i + 1 : min(L, i + window + 1) (window < 0: none);
 * keys outside every row's range are skipped (AMX: in 32-key steps, AVX-512: in pairs), keys inside
 * every row's range take no mask.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "simd.h"
#include "amx.h"
#include "parallel.h"

/* 1 when this build has the AMX kernel and the process may use AMX tiles (asked once, Linux >= 5.16). */
int poolkit_attention_available(void) {
#ifdef POOLKIT_AMX
    return amx_permitted();
#else
    return 0;
#endif
}

/* 1 when this build has the AVX512-BF16 kernel. */
int poolkit_attention_avx512_available(void) {
#ifdef POOLKIT_AVX512BF16
    return 1;
#else
    return 0;
#endif
}

/* 1 when this build has the float32 kernel (AVX-512, with or without AVX512-BF16). */
int poolkit_attention_f32_available(void) { return POOLKIT_AVX512_BUILT; }

/* The AVX-512 code: the float32 build needs AVX-512 alone; the bf16 builds' products and roundings
 * (vdpbf16ps, vcvtne2ps2bf16) are compiled where the target has AVX512-BF16, and their entry points
 * refuse elsewhere (WITH_AVX512), so the `wide` 0 paths below never run in a build without it. */
#ifdef POOLKIT_AVX512

/* cap * tanh(x / cap) = cap * (1 - 2 / (e^(2x / cap) + 1)), the exponent clamped to +-80. */
static inline __m512 softcap16(__m512 x, float cap) {
    __m512 y = _mm512_mul_ps(x, _mm512_set1_ps(2.0f / cap));
    __m512 e = exp16(_mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(-80.0f)), _mm512_set1_ps(80.0f)));
    __m512 t = _mm512_sub_ps(_mm512_set1_ps(1.0f), _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
    return _mm512_mul_ps(t, _mm512_set1_ps(cap));
}

static inline __mmask16 lanes(int64_t lo, int64_t hi) {
    /* The lanes n in [lo, hi) of 16. */
    if (lo < 0) lo = 0;
    if (hi > 16) hi = 16;
    if (hi <= lo) return 0;
    return (__mmask16)((((uint32_t)1 << (hi - lo)) - 1) << lo);
}

static inline __m512i byte_offsets(int64_t stride) {
    /* 0, stride, ..., 15 stride elements of 2 bytes, as byte offsets for a gather */
    return _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                              _mm512_set1_epi32((int)(stride * 2)));
}

/* 16-bit lanes 0..15 and 16..31 of a vector interleaved: (0, 16, 1, 17, ...). */
static inline __m512i interleave_halves(__m512i x) {
    const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                           22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(order, x);
}

/* A block's queries packed: `units` 32-bit units a query (a float32 dim, or a bf16 dim pair) from
 * `rows` rows `row_bytes` apart, unit p of query n at out[16 p + n], the rows past `rows` zero.
 * Sixteen units at a time are loaded by row and transposed in registers (a gather a unit took some
 * 10% of the float32 attention); the last units, fewer than 16, are gathered. */
static inline void pack_queries(const char *base, int64_t row_bytes, int64_t rows, int64_t units, uint32_t *out) {
    int64_t p = 0;
    for (; p + 16 <= units; p += 16) {
        __m512 r[16];
        for (int n = 0; n < 16; n++) r[n] = n < rows ? _mm512_loadu_ps(base + n * row_bytes + 4 * p) : _mm512_setzero_ps();
        transpose16(r);
        for (int t = 0; t < 16; t++) _mm512_storeu_ps((float *)(out + (p + t) * 16), r[t]);
    }
    for (; p < units; p++) /* row_bytes is even: byte_offsets' stride in 2-byte elements */
        _mm512_storeu_si512((void *)(out + p * 16), _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), lanes(0, rows),
                                                                                byte_offsets(row_bytes / 2), base + 4 * p, 1));
}

static inline int32_t load32(const void *p) {
    int32_t x;
    memcpy(&x, p, sizeof x);
    return x;
}

/* The three builds of the products: bf16 on AMX tiles, bf16 with AVX512-BF16, float32 with FMAs. */
enum { AVX512_BF16 = 0, AMX_BF16 = 1, AVX512_F32 = 2 };

typedef struct {
    uint16_t *keys;   /* AMX, float32: the sequence's keys of one head, contiguous: keys (AMX: zero-padded to 32) x d */
    uint16_t *values; /* packed values (AMX: blocks32 x d/16 tiles; AVX-512 bf16: key pairs x d pairs; float32: keys x d) */
    uint32_t *query;  /* the block's queries, packed: dim pair x 16 queries (float32: dim x 16 queries); room for two */
    float *scores;    /* S^T: keys x 16 queries, float32; room for two (scores_pair: the second block's from padded * 16) */
    uint16_t *probs;  /* P^T packed: key pairs x 16 queries x 2, bf16 (float32: keys x 16 queries) */
    float *acc;       /* AMX: 16 x 16 float32 */
} workspace;

/* Step 2 for a block of queries q0 .. q0 + rows - 1 whose scores S^T for the keys [first, last) are
 * in w->scores (row j - k0, k0 even and at most first): the probabilities of the keys [k0, k1) (k1
 * even, at least last) into w->probs (bf16 pair-interleaved; float32 with `wide`, where 2^x is the
 * degree-6 polynomial of exp2_16_f32 instead of exp2_16's degree 5), the keys no query sees as
 * zeros. Returns each query's 1 / (sum of its exponentials), 0 in lanes past the block. Keys in
 * [a, b) are seen by every query of the block and take no mask (lanes past the sequence hold finite
 * scores, never read). */
static inline __attribute__((always_inline)) __m512 softmax_block(const workspace *w, int64_t q0, int64_t rows,
                                                                  int64_t len, float scale, int causal, int64_t window,
                                                                  float softcap, int64_t first, int64_t last,
                                                                  int64_t k0, int64_t k1, int wide) {
    __mmask16 live = lanes(0, rows);
    int64_t a = window >= 0 ? q0 + rows - 1 - window : 0;
    int64_t b = causal ? q0 + 1 : (window >= 0 ? q0 + window + 1 : len);
    if (a < first) a = first;
    if (b > last) b = last;
    if (b < a) b = a;
#define EDGE_MASK(j)                                                                                              \
    ((__mmask16)(live & lanes(causal ? (j) - q0 : (window >= 0 ? (j) - q0 - window : 0),                          \
                              window >= 0 ? (j) - q0 + window + 1 : 16)))
#define ROW(j) (w->scores + ((j) - k0) * 16)
    float step = scale;
    if (softcap > 0.0f) {
        for (int64_t j = first; j < last; j++)
            _mm512_storeu_ps(ROW(j), softcap16(_mm512_mul_ps(_mm512_loadu_ps(ROW(j)), _mm512_set1_ps(scale)), softcap));
        step = 1.0f;
    }
    __m512 top0 = _mm512_set1_ps(-INFINITY), top1 = top0, top2 = top0, top3 = top0;
    int64_t j = a;
    for (; j + 4 <= b; j += 4) {
        top0 = _mm512_max_ps(top0, _mm512_loadu_ps(ROW(j)));
        top1 = _mm512_max_ps(top1, _mm512_loadu_ps(ROW(j + 1)));
        top2 = _mm512_max_ps(top2, _mm512_loadu_ps(ROW(j + 2)));
        top3 = _mm512_max_ps(top3, _mm512_loadu_ps(ROW(j + 3)));
    }
    for (; j < b; j++) top0 = _mm512_max_ps(top0, _mm512_loadu_ps(ROW(j)));
    for (j = first; j < last; j = j + 1 == a ? b : j + 1) {
        if (j >= a && j < b) continue; /* a == b: no unmasked keys */
        top1 = _mm512_mask_max_ps(top1, EDGE_MASK(j), top1, _mm512_loadu_ps(ROW(j)));
    }
    __m512 top = _mm512_max_ps(_mm512_max_ps(top0, top1), _mm512_max_ps(top2, top3));
    top = _mm512_maskz_mov_ps(live, top); /* rows past the sequence: 0, not -inf */
    /* e^((s - max) * step) = 2^(s * step * log2(e) - max * step * log2(e)) */
    float base = 1.44269504f;
    __m512 scl = _mm512_set1_ps(step * base);
    __m512 shift = _mm512_mul_ps(top, _mm512_set1_ps(-step * base));
#define EXP(x) (wide ? exp2_16_f32(x) : exp2_16(x))
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    for (j = k0; j < k1; j += 2) {
        __m512 e0, e1;
        if (j >= a && j + 2 <= b) {
            e0 = EXP(_mm512_fmadd_ps(_mm512_loadu_ps(ROW(j)), scl, shift));
            e1 = EXP(_mm512_fmadd_ps(_mm512_loadu_ps(ROW(j + 1)), scl, shift));
        } else {
            __mmask16 m0 = j >= first && j < last ? (j >= a && j < b ? live : EDGE_MASK(j)) : 0;
            __mmask16 m1 = j + 1 >= first && j + 1 < last ? (j + 1 >= a && j + 1 < b ? live : EDGE_MASK(j + 1)) : 0;
            e0 = m0 ? _mm512_maskz_mov_ps(m0, EXP(_mm512_fmadd_ps(_mm512_loadu_ps(ROW(j)), scl, shift)))
                    : _mm512_setzero_ps();
            e1 = m1 ? _mm512_maskz_mov_ps(m1, EXP(_mm512_fmadd_ps(_mm512_loadu_ps(ROW(j + 1)), scl, shift)))
                    : _mm512_setzero_ps();
        }
        sum0 = _mm512_add_ps(sum0, e0);
        sum1 = _mm512_add_ps(sum1, e1);
        if (wide) {
            _mm512_storeu_ps((float *)w->probs + (j - k0) * 16, e0);
            _mm512_storeu_ps((float *)w->probs + (j + 1 - k0) * 16, e1);
        } else {
#ifdef POOLKIT_AVX512BF16
            __m512i pair = (__m512i)_mm512_cvtne2ps_pbh(e1, e0); /* e0's 16 bf16, then e1's */
            _mm512_storeu_si512((void *)(w->probs + (j - k0) * 16), interleave_halves(pair));
#endif
        }
    }
#undef EDGE_MASK
#undef ROW
#undef EXP
    return _mm512_maskz_div_ps(live, _mm512_set1_ps(1.0f), _mm512_add_ps(sum0, sum1));
}

/* The keys any query of the block q0 .. q0 + rows - 1 sees: [*first, *last). */
static inline void seen_keys(int64_t q0, int64_t rows, int64_t len, int causal, int64_t window, int64_t *first,
                             int64_t *last) {
    int64_t f = window >= 0 ? q0 - window : 0;
    int64_t l = causal ? q0 + rows : (window >= 0 ? q0 + rows + window : len);
    *first = f < 0 ? 0 : f;
    *last = l > len ? len : l;
}

/* Eight consecutive S^T rows. */
static inline void store_rows8(float *out, __m512 s0, __m512 s1, __m512 s2, __m512 s3, __m512 s4, __m512 s5, __m512 s6,
                               __m512 s7) {
    _mm512_storeu_ps(out, s0);
    _mm512_storeu_ps(out + 16, s1);
    _mm512_storeu_ps(out + 32, s2);
    _mm512_storeu_ps(out + 48, s3);
    _mm512_storeu_ps(out + 64, s4);
    _mm512_storeu_ps(out + 80, s5);
    _mm512_storeu_ps(out + 96, s6);
    _mm512_storeu_ps(out + 112, s7);
}

/* Step 1: S^T rows of the keys [first, last) for the block's packed queries, row j - k0 of scores (k: the
 * sequence's first key of this head, k_stride in elements). A step of the products is 4 bytes of a key
 * broadcast against the 16 queries' 64-byte vector of w->query: a bf16 dim pair (vdpbf16ps) or, with `wide`
 * (a constant where it is inlined), one float32 dim (FMA); 8 keys at a time, then one with two sums. */
static inline __attribute__((always_inline)) void scores_block(const workspace *w, const void *k, int64_t k_stride,
                                                               int64_t d, int64_t first, int64_t last, int64_t k0,
                                                               int wide) {
    const int64_t steps = wide ? d : d / 2;
    const int64_t row_bytes = k_stride * (wide ? 4 : 2);
    const float *query = (const float *)w->query;
#define KEY(c) _mm512_castsi512_ps(_mm512_set1_epi32(load32(c)))
#ifdef POOLKIT_AVX512BF16
#define STEP(s, q, key) s = wide ? _mm512_fmadd_ps(q, key, s) : _mm512_dpbf16_ps(s, (__m512bh)(q), (__m512bh)(key))
#else
#define STEP(s, q, key) s = _mm512_fmadd_ps(q, key, s)
#endif
    int64_t j = first;
    for (; j + 8 <= last; j += 8) {
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
        const char *r = (const char *)k + j * row_bytes;
        for (int64_t p = 0; p < steps; p++) {
            __m512 qp = _mm512_loadu_ps(query + 16 * p);
            const char *c = r + 4 * p;
#define DOT(s, n) STEP(s, qp, KEY(c + (n) * row_bytes))
            DOT(s0, 0); DOT(s1, 1); DOT(s2, 2); DOT(s3, 3); DOT(s4, 4); DOT(s5, 5); DOT(s6, 6); DOT(s7, 7);
#undef DOT
        }
        store_rows8(w->scores + (j - k0) * 16, s0, s1, s2, s3, s4, s5, s6, s7);
    }
    for (; j < last; j++) {
        __m512 s0 = _mm512_setzero_ps(), s1 = s0;
        const char *r = (const char *)k + j * row_bytes;
        int64_t p = 0;
        for (; p + 1 < steps; p += 2) {
            STEP(s0, _mm512_loadu_ps(query + 16 * p), KEY(r + 4 * p));
            STEP(s1, _mm512_loadu_ps(query + 16 * p + 16), KEY(r + 4 * p + 4));
        }
        if (p < steps) STEP(s0, _mm512_loadu_ps(query + 16 * p), KEY(r + 4 * p));
        _mm512_storeu_ps(w->scores + (j - k0) * 16, _mm512_add_ps(s0, s1));
    }
#undef KEY
#undef STEP
}

/* Step 1 in float32 for two blocks of queries that see the same keys [first, last) (w's and wb's packed
 * queries and scores): each key value, broadcast once, multiplies both blocks' query vectors, so that
 * a step loads 2 + 8 values for 16 FMAs in place of 1 + 8 for 8 (1.03-1.10x the attention). Each
 * score is scores_block's sum, in the same order. */
static void scores_pair(const workspace *w, const workspace *wb, const float *k, int64_t k_stride, int64_t d,
                        int64_t first, int64_t last, int64_t k0) {
    const float *qa = (const float *)w->query, *qb = (const float *)wb->query;
    int64_t j = first;
    for (; j + 8 <= last; j += 8) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        __m512 b0 = a0, b1 = a0, b2 = a0, b3 = a0, b4 = a0, b5 = a0, b6 = a0, b7 = a0;
        const float *r = k + j * k_stride;
        for (int64_t p = 0; p < d; p++) {
            const __m512 x = _mm512_loadu_ps(qa + 16 * p), y = _mm512_loadu_ps(qb + 16 * p);
#define DOT2(n)                                                                                                   \
    do {                                                                                                          \
        const __m512 key = _mm512_set1_ps(r[(n) * k_stride + p]);                                                  \
        a##n = _mm512_fmadd_ps(x, key, a##n);                                                                    \
        b##n = _mm512_fmadd_ps(y, key, b##n);                                                                    \
    } while (0)
            DOT2(0); DOT2(1); DOT2(2); DOT2(3); DOT2(4); DOT2(5); DOT2(6); DOT2(7);
#undef DOT2
        }
        store_rows8(w->scores + (j - k0) * 16, a0, a1, a2, a3, a4, a5, a6, a7);
        store_rows8(wb->scores + (j - k0) * 16, b0, b1, b2, b3, b4, b5, b6, b7);
    }
    if (j < last) {
        scores_block(w, k, k_stride, d, j, last, k0, 1);
        scores_block(wb, k, k_stride, d, j, last, k0, 1);
    }
}

/* --- AVX512-BF16 products --- */

/* Values of the keys [from, to) of one key/value head, each pair of keys interleaved dim by dim:
 * 32 bits (value of key 2p, value of key 2p + 1) for pair p and dim m at out[(p - from / 2) * d + m],
 * zero past `to`. Key j's values are row j of `pre` for j < split (a prefix's keys), else row
 * j - split of `v` (the sequence's own); strides in elements. from is even; d a multiple of 16. */
static void pack_value_pairs(const uint16_t *pre, int64_t pre_stride, int64_t split, const uint16_t *v, int64_t stride,
                             int64_t from, int64_t to, int64_t d, uint32_t *out) {
    for (int64_t key = from; key < to; key += 2) {
        const uint16_t *even = key < split ? pre + key * pre_stride : v + (key - split) * stride;
        const uint16_t *odd = key + 1 < split ? pre + (key + 1) * pre_stride : v + (key + 1 - split) * stride;
        for (int64_t m = 0; m < d; m += 16) {
            __m256i lo = _mm256_loadu_si256((const __m256i *)(even + m));
            __m256i hi = key + 1 < to ? _mm256_loadu_si256((const __m256i *)(odd + m)) : _mm256_setzero_si256();
            __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            _mm512_storeu_si512((void *)(out + ((key - from) / 2) * d + m), interleave_halves(both));
        }
    }
}

#ifdef POOLKIT_AVX512BF16
/* Step 3 for `nq` queries (block rows r0 .. r0 + nq - 1) and `nv` x 16 dims from dim m0: each query's
 * probability pair broadcast against a key pair's values; nq * nv <= 16 accumulators. Key pair p's
 * packed values are row p of `pre` for p < split (a prefix's pairs), else row p - split of w->values. */
static inline __attribute__((always_inline)) void outputs_avx512(const workspace *w, const uint32_t *pre, int64_t split,
                                                                 int64_t d, int64_t m0, int nv, int nq, int64_t r0,
                                                                 int64_t rows, int64_t k0, int64_t k1, const float *inv,
                                                                 uint16_t *out, int64_t out_stride) {
    __m512 acc[16];
    for (int i = 0; i < nq * nv; i++) acc[i] = _mm512_setzero_ps();
    const uint32_t *probs = (const uint32_t *)w->probs + r0;
    const uint32_t *own = (const uint32_t *)w->values + m0;
    for (int64_t pair = 0; pair < (k1 - k0) / 2; pair++) {
        int64_t p = k0 / 2 + pair;
        const uint32_t *values = p < split ? pre + p * d + m0 : own + (p - split) * d;
        __m512bh v[4];
        for (int t = 0; t < nv; t++) v[t] = (__m512bh)_mm512_loadu_si512((const void *)(values + 16 * t));
        for (int r = 0; r < nq; r++) {
            __m512bh p = (__m512bh)_mm512_set1_epi32((int32_t)probs[pair * 16 + r]);
            for (int t = 0; t < nv; t++) acc[r * nv + t] = _mm512_dpbf16_ps(acc[r * nv + t], v[t], p);
        }
    }
    for (int r = 0; r < nq && r0 + r < rows; r++) {
        __m512 factor = _mm512_set1_ps(inv[r0 + r]);
        for (int t = 0; t < nv; t++) put_bf16x16(out + (r0 + r) * out_stride + m0 + 16 * t, _mm512_mul_ps(acc[r * nv + t], factor));
    }
}
#define OUTPUTS_BF16(nv, nq) outputs_avx512(w, pv, split / 2, d, m0, nv, nq, r0, rows, k0, k1, inv, (uint16_t *)out, out_stride)
#else
#define OUTPUTS_BF16(nv, nq) (void)0
#endif

/* --- float32 products (FMAs) --- */

/* Step 3 in float32 for `nq` queries (block rows r0 ..) and `nv` x 16 dims from dim m0: each
 * query's probability broadcast against a key's values, read in place: key j's are row j of `pre`
 * for j < split (a prefix's keys), else row j - split of `v` (the sequence's own, of this head). */
static inline __attribute__((always_inline)) void outputs_f32(const workspace *w, const float *pre, int64_t pre_stride,
                                                              int64_t split, const float *v, int64_t v_stride,
                                                              int64_t m0, int nv, int nq, int64_t r0, int64_t rows,
                                                              int64_t first, int64_t last, int64_t k0, const float *inv,
                                                              float *out, int64_t out_stride) {
    __m512 acc[16];
    for (int i = 0; i < nq * nv; i++) acc[i] = _mm512_setzero_ps();
    const float *probs = (const float *)w->probs + r0;
    for (int64_t j = first; j < last; j++) {
        const float *row = (j < split ? pre + j * pre_stride : v + (j - split) * v_stride) + m0;
        __m512 x[4];
        for (int t = 0; t < nv; t++) x[t] = _mm512_loadu_ps(row + 16 * t);
        for (int r = 0; r < nq; r++) {
            __m512 p = _mm512_set1_ps(probs[(j - k0) * 16 + r]);
            for (int t = 0; t < nv; t++) acc[r * nv + t] = _mm512_fmadd_ps(p, x[t], acc[r * nv + t]);
        }
    }
    for (int r = 0; r < nq && r0 + r < rows; r++) {
        __m512 factor = _mm512_set1_ps(inv[r0 + r]);
        for (int t = 0; t < nv; t++) _mm512_storeu_ps(out + (r0 + r) * out_stride + m0 + 16 * t, _mm512_mul_ps(acc[r * nv + t], factor));
    }
}

/* One block of up to 16 queries (positions q0 .. q0 + rows - 1) of one head against its keys, with
 * AVX-512: bf16 (`wide` 0; values packed by pack_value_pairs) or float32 (`wide` 1; values read
 * from v, the sequence's first value of this head: attend's contiguous copy without a prefix). Keys
 * are read from k (the sequence's first key of this head: in place, or that copy); out: the head's
 * output of the block's first query. The first `split` positions are a prefix's (len counts them):
 * their keys are rows of `pk`, their values rows of `pv` (bf16: its packed pairs, split / 2 of
 * them), and k, v hold the keys from position split on. `scored`: w->scores holds the block's
 * scores already (scores_pair), so step 1 is skipped. */
static void attend_block_vec(const workspace *w, const void *k, int64_t k_stride, const float *v, int64_t v_stride,
                             const void *pk, int64_t pk_stride, const void *pv, int64_t pv_stride, int64_t split,
                             int64_t q0, int64_t rows, int64_t len, int64_t d, float scale, int causal, int64_t window,
                             float softcap, int wide, int scored, void *out, int64_t out_stride) {
    int64_t first, last;
    seen_keys(q0, rows, len, causal, window, &first, &last);
    int64_t k0 = first & ~(int64_t)1, k1 = (last + 1) & ~(int64_t)1;
    int64_t mid = last < split ? last : split, lo = first > split ? first : split;
    if (scored) {
        /* step 1 done already (scores_pair) */
    } else if (wide) {
        if (first < mid) scores_block(w, pk, pk_stride, d, first, mid, k0, 1);
        if (lo < last) scores_block(w, k, k_stride, d, lo - split, last - split, k0 - split, 1);
    } else {
        if (first < mid) scores_block(w, pk, pk_stride, d, first, mid, k0, 0);
        if (lo < last) scores_block(w, k, k_stride, d, lo - split, last - split, k0 - split, 0);
    }
    float inv[16];
    _mm512_storeu_ps(inv, softmax_block(w, q0, rows, len, scale, causal, window, softcap, first, last, k0, k1, wide));
    /* constant widths (nv x 16 dims for nq queries), so that the accumulators live in registers */
#define OUTPUTS(nv, nq)                                                                                           \
    (wide ? outputs_f32(w, pv, pv_stride, split, v, v_stride, m0, nv, nq, r0, rows, first, last, k0, inv,          \
                        (float *)out, out_stride)                                                                 \
          : OUTPUTS_BF16(nv, nq))
    OUTPUT_BLOCKS(OUTPUTS, d, rows)
#undef OUTPUTS
}

#endif /* POOLKIT_AVX512 */

#ifdef POOLKIT_AMX

/* Tiles (configure_tiles: 16 rows of 64 bytes each) 0-3: accumulators (scores of 4 key blocks, or
 * 4 x 16 output dims); 4: queries or probabilities; 5-7: keys or values. */

/* Tile numbers are immediates: tile 4 + c % 4 holds the queries' chunk c. */
#define LOAD_QUERY(c, ptr)                                                                                        \
    switch ((c) & 3) {                                                                                            \
    case 0: _tile_loadd(4, ptr, 64); break;                                                                       \
    case 1: _tile_loadd(5, ptr, 64); break;                                                                       \
    case 2: _tile_loadd(6, ptr, 64); break;                                                                       \
    default: _tile_loadd(7, ptr, 64); break;                                                                      \
    }
#define DP_QUERY(acc, a, c)                                                                                       \
    switch ((c) & 3) {                                                                                            \
    case 0: _tile_dpbf16ps(acc, a, 4); break;                                                                     \
    case 1: _tile_dpbf16ps(acc, a, 5); break;                                                                     \
    case 2: _tile_dpbf16ps(acc, a, 6); break;                                                                     \
    default: _tile_dpbf16ps(acc, a, 7); break;                                                                    \
    }

/* Values of one sequence and key/value head, transposed for O^T = V^T P^T: tile (block kb of 32
 * keys, dims 16 t .. 16 t + 15) holds, in row m, dim 16 t + m of the block's 32 keys (zero past
 * the sequence). Each gather reads two dims of 16 keys. */
static void pack_values(const uint16_t *v, int64_t stride, int64_t len, int64_t d, int64_t blocks, uint16_t *out) {
    int64_t dtiles = d / 16;
    const __m512i rows = byte_offsets(stride);
    for (int64_t kb = 0; kb < blocks; kb++) {
        for (int64_t half = 0; half < 2; half++) {
            int64_t key = kb * 32 + half * 16;
            __mmask16 live = lanes(0, len - key);
            const uint16_t *src = v + key * stride;
            for (int64_t m = 0; m < d; m += 2) {
                __m512i pairs = live ? _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, rows, src + m, 1)
                                     : _mm512_setzero_si512();
                uint16_t *tile = out + (kb * dtiles + m / 16) * 512 + (m % 16) * 32 + half * 16;
                _mm256_storeu_si256((__m256i *)tile, _mm512_cvtepi32_epi16(pairs));
                _mm256_storeu_si256((__m256i *)(tile + 32), _mm512_cvtepi32_epi16(_mm512_srli_epi32(pairs, 16)));
            }
        }
    }
}

/* One block of up to 16 queries (positions q0 .. q0 + rows - 1) of one head against its keys. */
static void attend_block(const workspace *w, int64_t q0, int64_t rows,
                         int64_t len, int64_t d, float scale, int causal, int64_t window, float softcap,
                         uint16_t *out, int64_t out_stride) {
    int64_t chunks = d / 32, dtiles = d / 16;
    int64_t first, last;
    seen_keys(q0, rows, len, causal, window, &first, &last);
    int64_t k0 = first & ~(int64_t)31, k1 = (last + 31) & ~(int64_t)31; /* aligned to 32 keys */

    /* 1. S^T = K Q^T, 32 keys at a time */
    if (chunks <= 4)
        for (int64_t c = 0; c < chunks; c++) LOAD_QUERY(c, w->query + c * 256);
    for (int64_t g = k0; g < k1; g += 32) {
        const uint16_t *a0 = w->keys + g * d, *a1 = a0 + 16 * d;
        _tile_zero(0);
        _tile_zero(1);
        for (int64_t c = 0; c < chunks; c++) {
            if (chunks > 4) LOAD_QUERY(c, w->query + c * 256);
            _tile_loadd(2, a0 + c * 32, d * 2);
            DP_QUERY(0, 2, c);
            _tile_loadd(3, a1 + c * 32, d * 2);
            DP_QUERY(1, 3, c);
        }
        float *s = w->scores + (g - k0) * 16;
        _tile_stored(0, s, 64);
        _tile_stored(1, s + 256, 64);
    }

    /* 2. softmax per query */
    __m512 inv = softmax_block(w, q0, rows, len, scale, causal, window, softcap, first, last, k0, k1, 0);

    /* 3. O^T = V^T P^T, 4 x 16 output dims at a time */
    for (int64_t t0 = 0; t0 < dtiles; t0 += 4) {
        int64_t n = dtiles - t0 < 4 ? dtiles - t0 : 4;
        zero_accumulators();
        for (int64_t g = k0; g < k1; g += 32) {
            const uint16_t *base = w->values + ((g >> 5) * dtiles + t0) * 512;
            _tile_loadd(4, w->probs + (g - k0) * 16, 64);
            _tile_loadd(5, base, 64);
            _tile_dpbf16ps(0, 5, 4);
            if (n > 1) {
                _tile_loadd(6, base + 512, 64);
                _tile_dpbf16ps(1, 6, 4);
            }
            if (n > 2) {
                _tile_loadd(7, base + 1024, 64);
                _tile_dpbf16ps(2, 7, 4);
            }
            if (n > 3) {
                _tile_loadd(5, base + 1536, 64);
                _tile_dpbf16ps(3, 5, 4);
            }
        }
        for (int64_t t = 0; t < n; t++) {
            switch (t) {
            case 0: _tile_stored(0, w->acc, 64); break;
            case 1: _tile_stored(1, w->acc, 64); break;
            case 2: _tile_stored(2, w->acc, 64); break;
            default: _tile_stored(3, w->acc, 64); break;
            }
            /* acc[m][n]: dim 16 (t0 + t) + m of query q0 + n, gathered by query */
            float factor[16];
            _mm512_storeu_ps(factor, inv);
            const __m512i column = _mm512_set_epi32(240, 224, 208, 192, 176, 160, 144, 128, 112, 96, 80, 64, 48, 32, 16, 0);
            for (int64_t r = 0; r < rows; r++) {
                __m512 x = _mm512_mul_ps(_mm512_i32gather_ps(column, w->acc + r, 4), _mm512_set1_ps(factor[r]));
                _mm256_storeu_si256((__m256i *)(out + (q0 + r) * out_stride + (t0 + t) * 16), (__m256i)_mm512_cvtneps_pbh(x));
            }
        }
    }
}

#endif /* POOLKIT_AMX */

#ifdef POOLKIT_AVX512

/* A batch's prefixes (prefix_attention): sequence s continues the starts[s] keys and values at rows
 * offsets[s] .. of pk / pv (token strides in elements, heads d apart); no prefixes where starts is NULL. */
typedef struct {
    const void *k, *v;
    int64_t k_stride, v_stride;
    const int64_t *starts, *offsets;
} prefixes;

/* A batch without prefixes (varlen_attention). */
static const prefixes NO_PREFIXES = {0};

/* Attention of query heads [h_begin, h_end) of a packed batch in one of the three builds (`mode`);
 * q, k, v, out: bf16, or float32 for AVX512_F32, strides in elements; max_len: the longest sequence
 * with its prefix. With prefixes (AVX-512 builds only) a sequence's queries sit at the positions
 * after its prefix, causally: the AVX-512 bf16 build packs a prefix's values once for the sequences
 * that continue it one after another. */
static int attend(int mode, const void *q, int64_t q_stride, const void *k, int64_t k_stride, const void *v,
                  int64_t v_stride, void *out, const int64_t *cu, int64_t nseq, int64_t max_len, int64_t heads,
                  int64_t kv_heads, int64_t d, float scale, int causal, int64_t window, float softcap,
                  const prefixes *pre, int64_t h_begin, int64_t h_end) {
    const int64_t size = mode == AVX512_F32 ? 4 : 2; /* bytes an element */
#define AT(p, i) ((const char *)(p) + (i) * size)
    int64_t padded = (max_len + 31) & ~(int64_t)31;
    int64_t group = heads / kv_heads, g_begin = h_begin / group, g_end = (h_end - 1) / group + 1;
    int64_t longest = 0; /* the longest prefix */
    for (int64_t s = 0; pre->starts && s < nseq; s++) longest = pre->starts[s] > longest ? pre->starts[s] : longest;
    workspace w;
    size_t sizes[7] = {
        (size_t)padded * d * size,
        (size_t)d * 32 * sizeof(float),
        mode != AVX512_BF16 ? (size_t)padded * d * size : 64,
        (size_t)padded * 32 * sizeof(float),
        (size_t)padded * 16 * sizeof(float),
        (size_t)16 * 16 * sizeof(float),
        mode == AVX512_BF16 ? (size_t)(g_end - g_begin) * (size_t)(longest / 2) * (size_t)d * sizeof(uint32_t) + 64 : 64,
    };
    void *parts[7] = {0};
    for (int i = 0; i < 7; i++) {
        if (posix_memalign(&parts[i], 64, sizes[i])) {
            for (int j = 0; j < i; j++) free(parts[j]);
            return 1;
        }
    }
    w.values = parts[0];
    w.query = parts[1];
    w.keys = parts[2];
    w.scores = parts[3];
    w.probs = parts[4];
    w.acc = parts[5];
    uint32_t *prefix_pairs = parts[6]; /* per key/value head g_begin .., the packed pairs of the prefix below */
    int64_t packed_offset = -1, packed_start = -1;

#ifdef POOLKIT_AMX
    /* Keep whatever tile configuration the caller's thread had (oneDNN's, torch's). */
    tile_config saved;
    if (mode == AMX_BF16) configure_tiles(&saved);
#endif

    for (int64_t s = 0; s < nseq; s++) {
        int64_t t0 = cu[s], len = cu[s + 1] - cu[s];
        int64_t start = pre->starts ? pre->starts[s] : 0, offset = start ? pre->offsets[s] : 0;
        if (len <= 0) continue;
        if (len == 1 && start == 0) {
            /* One token sees only itself: its output is its value, exactly (the engine's filler
             * sequences are such tokens). */
            for (int64_t h = h_begin; h < h_end; h++)
                memcpy((char *)out + (t0 * heads * d + h * d) * size, AT(v, t0 * v_stride + (h / group) * d), (size_t)(d * size));
            continue;
        }
        if (mode == AVX512_BF16 && start && (offset != packed_offset || start != packed_start)) {
            for (int64_t g = g_begin; g < g_end; g++)
                pack_value_pairs((const uint16_t *)AT(pre->v, offset * pre->v_stride + g * d), pre->v_stride, start, NULL, 0, 0,
                                 start & ~(int64_t)1, d, prefix_pairs + (g - g_begin) * (longest / 2) * d);
            packed_offset = offset;
            packed_start = start;
        }
        for (int64_t g = g_begin; g < g_end; g++) {
            const void *keys = AT(k, t0 * k_stride + g * d), *values = AT(v, t0 * v_stride + g * d);
            int64_t ks = k_stride, vs = v_stride; /* their strides as the blocks read them */
            const void *pk = start ? AT(pre->k, offset * pre->k_stride + g * d) : NULL;
            const void *pv = start ? AT(pre->v, offset * pre->v_stride + g * d) : NULL;
#ifdef POOLKIT_AMX
            if (mode == AMX_BF16) {
                pack_values(values, v_stride, len, d, (len + 31) / 32, w.values);
                for (int64_t n = 0; n < len; n++) memcpy(w.keys + n * d, AT(keys, n * k_stride), (size_t)d * 2);
                memset(w.keys + len * d, 0, (size_t)(((len + 31) & ~(int64_t)31) - len) * d * 2);
            }
#endif
            if (mode == AVX512_F32 && !start) {
                for (int64_t n = 0; n < len; n++) {
                    memcpy((float *)w.keys + n * d, AT(keys, n * k_stride), (size_t)d * 4);
                    memcpy((float *)w.values + n * d, AT(values, n * v_stride), (size_t)d * 4);
                }
                keys = w.keys;
                values = w.values;
                ks = vs = d;
            }
            if (mode == AVX512_BF16) {
                /* the pairs from the prefix's last whole pair on; those before it are the prefix's, packed above */
                pack_value_pairs(pv, pre->v_stride, start, values, v_stride, start & ~(int64_t)1, start + len, d,
                                 (uint32_t *)w.values);
                pv = prefix_pairs + (g - g_begin) * (longest / 2) * d;
            }
            int64_t h_lo = g * group > h_begin ? g * group : h_begin;
            int64_t h_hi = (g + 1) * group < h_end ? (g + 1) * group : h_end;
            for (int64_t h = h_lo; h < h_hi; h++) {
                for (int64_t q0 = 0; q0 < len; q0 += 16) {
                    int64_t rows = len - q0 < 16 ? len - q0 : 16;
                    /* bf16: query n's dimension pair (2 p, 2 p + 1) at 16 p + n; float32: its dim p */
                    pack_queries(AT(q, (t0 + q0) * q_stride + h * d), q_stride * size, rows, mode == AVX512_F32 ? d : d / 2,
                                 w.query);
                    char *o = (char *)out + (t0 * heads * d + h * d) * size;
                    if (mode == AVX512_F32 && !start && !causal && window < 0 && q0 + 16 < len) {
                        /* this block and the next see every key: their scores together, then each one's
                         * softmax and outputs */
                        int64_t rows_b = len - q0 - 16 < 16 ? len - q0 - 16 : 16;
                        workspace wb = w;
                        wb.query = w.query + d * 16;
                        wb.scores = w.scores + padded * 16;
                        pack_queries(AT(q, (t0 + q0 + 16) * q_stride + h * d), q_stride * size, rows_b, d, wb.query);
                        scores_pair(&w, &wb, (const float *)keys, ks, d, 0, len, 0);
                        attend_block_vec(&w, keys, ks, values, vs, pk, pre->k_stride, pv, pre->v_stride, 0, q0, rows, len,
                                         d, scale, causal, window, softcap, 1, 1, o + q0 * heads * d * size, heads * d);
                        attend_block_vec(&wb, keys, ks, values, vs, pk, pre->k_stride, pv, pre->v_stride, 0, q0 + 16,
                                         rows_b, len, d, scale, causal, window, softcap, 1, 1,
                                         o + (q0 + 16) * heads * d * size, heads * d);
                        q0 += 16;
                        continue;
                    }
                    switch (mode) {
#ifdef POOLKIT_AMX
                    case AMX_BF16:
                        attend_block(&w, q0, rows, len, d, scale, causal, window, softcap, (uint16_t *)o, heads * d);
                        break;
#endif
                    default:
                        attend_block_vec(&w, keys, ks, values, vs, pk, pre->k_stride, pv, pre->v_stride,
                                         start, start + q0, rows, start + len, d, scale, causal, window, softcap,
                                         mode == AVX512_F32, 0, o + q0 * heads * d * size, heads * d);
                    }
                }
            }
        }
    }
#undef AT

#ifdef POOLKIT_AMX
    if (mode == AMX_BF16) restore_tiles(&saved);
#endif
    for (int i = 0; i < 7; i++) free(parts[i]);
    return 0;
}

#endif /* POOLKIT_AVX512 */

/* Attention of every head of a packed batch of bf16 tokens, the heads split over `workers` threads.
 *
 * q: [T, heads, d] with token stride q_stride (elements), heads d apart, dims contiguous;
 * k, v: [T, kv_heads, d] likewise; out: [T, heads, d] contiguous. cu: the nseq + 1 offsets of the
 * sequences; max_len their longest length. window < 0: none; softcap <= 0: none. d: a multiple of
 * 32 up to 256 (AMX), of 16 up to 256 (AVX-512).
 * Returns 0, 1 when out of memory, 2 when this build has no such kernel. */
#define ATTENTION_ARGS                                                                                            \
    const void *q, int64_t q_stride, const void *k, int64_t k_stride, const void *v, int64_t v_stride, void *out,    \
        const int64_t *cu, int64_t nseq, int64_t max_len, int64_t heads, int64_t kv_heads, int64_t d, \
        float scale, int causal, int64_t window, float softcap, int64_t workers
#define ATTENTION_SPLIT(mode, prefix)                                                                             \
    int code;                                                                                                     \
    PARALLEL_RANGES(heads, workers, code, begin, end,                                                             \
                    attend(mode, q, q_stride, k, k_stride, v, v_stride, out, cu, nseq, max_len, heads, kv_heads, d, \
                           scale, causal, window, softcap, prefix, begin, end));                                  \
    return code
#define ATTENTION_UNUSED                                                                                          \
    (void)q; (void)q_stride; (void)k; (void)k_stride; (void)v; (void)v_stride; (void)out; (void)cu; (void)nseq;     \
    (void)max_len; (void)heads; (void)kv_heads; (void)d; (void)scale; (void)causal; (void)window; (void)softcap;   \
    (void)workers

/* An entry point's body where this build has the instruction set its kernel needs, else its
 * arguments unused (`unused`) and 2: the function exists in every build, its kernel in some. */
#ifdef POOLKIT_AMX
#define WITH_AMX(body, unused) body
#else
#define WITH_AMX(body, unused) unused; return 2
#endif
#ifdef POOLKIT_AVX512BF16
#define WITH_AVX512(body, unused) body
#else
#define WITH_AVX512(body, unused) unused; return 2
#endif
#ifdef POOLKIT_AVX512
#define WITH_AVX512_F32(body, unused) body
#else
#define WITH_AVX512_F32(body, unused) unused; return 2
#endif

int poolkit_varlen_attention(ATTENTION_ARGS) { WITH_AMX(ATTENTION_SPLIT(AMX_BF16, &NO_PREFIXES), ATTENTION_UNUSED); }

int poolkit_varlen_attention_avx512(ATTENTION_ARGS) { WITH_AVX512(ATTENTION_SPLIT(AVX512_BF16, &NO_PREFIXES), ATTENTION_UNUSED); }

/* The same in float32 (q, k, v, out float32; FMA products, float32 probabilities). */
int poolkit_varlen_attention_f32(ATTENTION_ARGS) { WITH_AVX512_F32(ATTENTION_SPLIT(AVX512_F32, &NO_PREFIXES), ATTENTION_UNUSED); }

/* prefix_attention (attention.py's contract): causal attention of sequences that continue prefixes
 * whose keys and values are computed already; sequence s's first starts[s] positions are rows
 * offsets[s] .. of pk / pv ([P, kv_heads, d], token strides pk_stride / pv_stride), max_len its
 * longest sequence with its prefix. Returns as poolkit_varlen_attention. */
#define PREFIX_ARGS                                                                                               \
    const void *q, int64_t q_stride, const void *k, int64_t k_stride, const void *v, int64_t v_stride, void *out,    \
        const int64_t *cu, int64_t nseq, int64_t max_len, int64_t heads, int64_t kv_heads, int64_t d, float scale,  \
        const void *pk, int64_t pk_stride, const void *pv, int64_t pv_stride, const int64_t *starts,               \
        const int64_t *offsets, int64_t workers
#define PREFIX_SPLIT(mode)                                                                                        \
    const prefixes given = {pk, pv, pk_stride, pv_stride, starts, offsets};                                      \
    const int causal = 1;                                                                                         \
    const int64_t window = -1;                                                                                    \
    const float softcap = 0.0f;                                                                                   \
    ATTENTION_SPLIT(mode, &given)
#define PREFIX_UNUSED                                                                                             \
    (void)q; (void)q_stride; (void)k; (void)k_stride; (void)v; (void)v_stride; (void)out; (void)cu; (void)nseq;     \
    (void)max_len; (void)heads; (void)kv_heads; (void)d; (void)scale; (void)pk; (void)pk_stride; (void)pv;          \
    (void)pv_stride; (void)starts; (void)offsets; (void)workers

int poolkit_prefix_attention_avx512(PREFIX_ARGS) { WITH_AVX512(PREFIX_SPLIT(AVX512_BF16), PREFIX_UNUSED); }

int poolkit_prefix_attention_f32(PREFIX_ARGS) { WITH_AVX512_F32(PREFIX_SPLIT(AVX512_F32), PREFIX_UNUSED); }
