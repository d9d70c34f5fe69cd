/* poolkit's bf16 linear layers for CPUs with AMX (see linear.py for the ops' contracts).
 *
 * out = act(x @ W^T + b), or a gated feed-forward's act(gate) * up, in one pass: the matmul on
 * AMX tiles with float32 accumulation, and the bias, the activation and the gate's product
 * applied to each 32 x 32 block of results while it is in the cache, rounded once to bf16. Plain
 * C on data pointers, compiled once per machine by poolkit.kernels.compiler (-O3 -march=native)
 * and called through ctypes; it exists only where the compiler targets AMX-BF16 and AVX512-BF16
 * and the Linux kernel grants the tile state (poolkit_linear_available).
 *
 * The weight is packed once (poolkit_linear_pack) into blocks of two 16-column tiles, each the
 * tiles' pair-interleaved layout for every 32 input features: block j holds output columns
 * first + j * step .. + 15 and second + j * step .. + 15. A plain layer packs columns 32 j and
 * 32 j + 16 (first 0, second 16, step 32); a gated one its gate's columns 16 j and its up
 * projection's (first the gate's offset, second the up's, step 16), so that one block yields 16
 * finished outputs.
 *
 * The loop: rows in chunks of chunk_rows (the caller's choice: 32 rows that stay in L1 when the
 * whole weight fits L2, else about 768 KiB of rows that stay in L2 while the weights stream by),
 * each chunk first copied into the tiles' order (1 KiB per tile load, read in a row; zero-padded
 * to 32 rows), then for every column block (its weights, 2 KiB per 32 inputs) 32 rows at a time:
 * four accumulator tiles (2 x 2 of 16 x 16) over the inputs, two tile loads of rows and two of
 * weights per four tile products. The previous 32 x 32 block's bias, activation and rounding run
 * on the vector units interleaved with these tile products (the tiles compute while the vector
 * units finish the last result), so a cheap epilogue costs almost nothing.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"
#include "amx.h"
#include "parallel.h"

/* 1 when this build has the kernel and the process may use AMX tiles (asked once, Linux >= 5.16). */
int poolkit_linear_available(void) {
#ifdef POOLKIT_AMX
    return amx_permitted();
#else
    return 0;
#endif
}

/* Pack the bf16 weight w ([n, k] row-major, k a multiple of 32) into `blocks` blocks (see the top):
 * packed[((j * k / 32 + c) * 2 + t) * 512 + r * 32 + 2 * col + e] = w[column][32 c + 2 r + e],
 * column = (t ? second : first) + j * step + col. */
void poolkit_linear_pack(const uint16_t *w, int64_t k, int64_t blocks, int64_t first, int64_t second, int64_t step,
                         uint16_t *packed) {
    int64_t chunks = k / 32;
    for (int64_t j = 0; j < blocks; j++)
        for (int t = 0; t < 2; t++)
            for (int col = 0; col < 16; col++) {
                const uint16_t *src = w + ((t ? second : first) + j * step + col) * k;
                for (int64_t c = 0; c < chunks; c++) {
                    uint16_t *tile = packed + ((j * chunks + c) * 2 + t) * 512 + 2 * col;
                    for (int r = 0; r < 16; r++) {
                        tile[r * 32] = src[32 * c + 2 * r];
                        tile[r * 32 + 1] = src[32 * c + 2 * r + 1];
                    }
                }
            }
}

#ifdef POOLKIT_AMX

/* Tiles (configure_tiles: 16 rows of 64 bytes each) 0-3: accumulators (rows 0-15 / 16-31 x columns
 * of tile 6 / 7); 4, 5: 16 rows of inputs each; 6, 7: the block's two weight tiles. */

/* A 32 x 32 block of float32 results waiting for its epilogue. */
typedef struct {
    float acc[32 * 32]; /* row r: the first tile's 16 columns, then the second's */
    uint16_t *out;      /* output row 0, column of the block's first output */
    int64_t out_stride;
    const float *bias;  /* the block's 32 biases in packed order, or NULL */
    int64_t rows;       /* rows to write (0: none pending) */
} pending;

/* Rows [r0, r1) of a pending block: bias, activation (times the up projection when gated), bf16. */
static inline __attribute__((always_inline)) void finish_rows(pending *p, int64_t r0, int64_t r1, int act, int gated) {
    if (r1 > p->rows) r1 = p->rows;
    for (int64_t r = r0; r < r1; r++) {
        __m512 a = _mm512_load_ps(p->acc + r * 32), b = _mm512_load_ps(p->acc + r * 32 + 16);
        if (p->bias) {
            a = _mm512_add_ps(a, _mm512_loadu_ps(p->bias));
            b = _mm512_add_ps(b, _mm512_loadu_ps(p->bias + 16));
        }
        uint16_t *o = p->out + r * p->out_stride;
        if (gated) {
            put_bf16x16(o, _mm512_mul_ps(activate16(a, act), b));
        } else {
            put_bf16x32(o, activate16(a, act), activate16(b, act));
        }
    }
}

/* Rows [m0, m_end) of x in the tiles' order, zero-padded to a multiple of 32 rows: for each group
 * of 32 rows and each 32 inputs c, the two 16-row tiles of 64 bytes, contiguous
 * (out[(g * k / 32 + c) * 1024 + h * 512 + r * 32 + e] = x[m0 + 32 g + 16 h + r][32 c + e]), so that
 * every tile load reads 1 KiB in a row. */
static void pack_rows(const uint16_t *x, int64_t x_stride, int64_t m0, int64_t m_end, int64_t k, uint16_t *out) {
    int64_t chunks = k / 32;
    int64_t padded = (m_end - m0 + 31) / 32 * 32;
    for (int64_t i = 0; i < padded; i++) {
        uint16_t *dst = out + (i / 32) * chunks * 1024 + (i % 32) * 32;
        if (m0 + i < m_end) {
            const uint16_t *src = x + (m0 + i) * x_stride;
            for (int64_t c = 0; c < chunks; c++) memcpy(dst + c * 1024, src + c * 32, 64);
        } else {
            for (int64_t c = 0; c < chunks; c++) memset(dst + c * 1024, 0, 64);
        }
    }
}

static inline __attribute__((always_inline)) void linear_blocks(
    const uint16_t *x, int64_t x_stride, int64_t row_begin, int64_t row_end, uint16_t *rows_packed, const uint16_t *packed,
    int64_t k, int64_t block_begin, int64_t block_end, const float *bias, uint16_t *out, int64_t out_stride,
    int64_t chunk_rows, int act, int gated) {
    int64_t chunks = k / 32;
    int64_t per_step = (32 + chunks - 1) / chunks; /* epilogue rows per tile step */
    int64_t width = gated ? 16 : 32;               /* outputs per block */
    pending slot __attribute__((aligned(64)));
    pending *p = &slot;
    p->rows = 0;
    for (int64_t m0 = row_begin; m0 < row_end; m0 += chunk_rows) {
        int64_t m_end = m0 + chunk_rows < row_end ? m0 + chunk_rows : row_end;
        pack_rows(x, x_stride, m0, m_end, k, rows_packed);
        for (int64_t j = block_begin; j < block_end; j++) {
            const uint16_t *w = packed + j * chunks * 1024;
            for (int64_t m = m0; m < m_end; m += 32) {
                int64_t rows = m_end - m < 32 ? m_end - m : 32;
                const uint16_t *a = rows_packed + (m - m0) * k;
                zero_accumulators();
                for (int64_t c = 0; c < chunks; c++) {
                    _tile_loadd(4, a + c * 1024, 64);
                    _tile_loadd(6, w + c * 1024, 64);
                    _tile_loadd(7, w + c * 1024 + 512, 64);
                    _tile_loadd(5, a + c * 1024 + 512, 64);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(1, 4, 7);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                    if (p->rows) finish_rows(p, c * per_step, (c + 1) * per_step, act, gated);
                }
                _tile_stored(0, p->acc, 128);
                _tile_stored(1, p->acc + 16, 128);
                _tile_stored(2, p->acc + 512, 128);
                _tile_stored(3, p->acc + 512 + 16, 128);
                p->out = out + m * out_stride + j * width;
                p->out_stride = out_stride;
                p->bias = bias ? bias + j * 32 : NULL;
                p->rows = rows;
            }
        }
    }
    if (p->rows) finish_rows(p, 0, 32, act, gated);
}

#endif

/* out = act(x @ W^T + b) (or act(gate) * up when gated) for the groups of 32 rows [group_begin,
 * group_end) and the column blocks [block_begin, block_end) of a weight packed by poolkit_linear_pack.
 * x: bf16 rows of k inputs (k a multiple of 32), row i at x + i * x_stride, `rows` in all (the
 * last group zero-padded when partial);
 * bias: NULL or `blocks * 32` float32 in packed order (block j's first tile's 16, then its
 * second's); out: bf16, row i at out + i * out_stride, block j's outputs at column j * 32 (gated:
 * j * 16); chunk_rows: rows per cache chunk, a multiple of 32; act: 0 none, 1 silu, 2 gelu (tanh
 * approximation), 3 relu, 4 gelu (erf). Returns 0, 1 when out of memory, 2 without AMX, 3 for an unknown act or
 * a bad shape. */
static int linear_range(const uint16_t *x, int64_t x_stride, int64_t rows, const uint16_t *packed, int64_t k,
                        const float *bias, uint16_t *out, int64_t out_stride, int64_t chunk_rows, int act, int gated,
                        int64_t group_begin, int64_t group_end, int64_t block_begin, int64_t block_end) {
#ifdef POOLKIT_AMX
    if (act < 0 || act > 4 || k % 32 || k <= 0 || chunk_rows % 32 || chunk_rows <= 0) return 3;
    int64_t row_begin = group_begin * 32, row_end = group_end * 32 < rows ? group_end * 32 : rows;
    if (row_begin >= row_end || block_begin >= block_end) return 0;
    uint16_t *rows_packed = NULL;
    int64_t span = row_end - row_begin < chunk_rows ? row_end - row_begin : chunk_rows;
    if (posix_memalign((void **)&rows_packed, 64, (size_t)((span + 31) / 32 * 32) * k * 2)) return 1;
    tile_config saved; /* the caller's thread's configuration (oneDNN's, torch's), given back after */
    configure_tiles(&saved);
    /* One instance per activation and layer kind: the epilogue inlined with both constants. */
#define LINEAR_CASE(A, G)                                                                                        \
    linear_blocks(x, x_stride, row_begin, row_end, rows_packed, packed, k, block_begin, block_end, bias, out, out_stride, \
                  chunk_rows, A, G)
    ACTIVATION_CASES(LINEAR_CASE, act, gated);
#undef LINEAR_CASE
    restore_tiles(&saved);
    free(rows_packed);
    return 0;
#else
    (void)x; (void)x_stride; (void)rows; (void)packed; (void)k; (void)bias; (void)out; (void)out_stride;
    (void)chunk_rows; (void)act; (void)gated; (void)group_begin; (void)group_end; (void)block_begin; (void)block_end;
    return 2;
#endif
}

/* The exported kernel: linear_range over the `groups` groups of 32 rows and `blocks` blocks of 32
 * outputs, split over `workers` threads (parallel.h) by row groups (by_rows) or by output blocks. */
int poolkit_linear(const uint16_t *x, int64_t x_stride, int64_t rows, const uint16_t *packed, int64_t k,
                   const float *bias, uint16_t *out, int64_t out_stride, int64_t chunk_rows, int act, int gated,
                   int64_t groups, int64_t blocks, int by_rows, int64_t workers) {
    int code;
    if (by_rows)
        PARALLEL_RANGES(groups, workers, code, begin, end,
                        linear_range(x, x_stride, rows, packed, k, bias, out, out_stride, chunk_rows, act, gated, begin,
                                     end, 0, blocks));
    else
        PARALLEL_RANGES(blocks, workers, code, begin, end,
                        linear_range(x, x_stride, rows, packed, k, bias, out, out_stride, chunk_rows, act, gated, 0,
                                     groups, begin, end));
    return code;
}
