/* AMX tile set-up shared by poolkit's AMX kernels (attention.c, linear.c): whether the process may
 * use the tiles, and every tile configured as 16 rows of 64 bytes for the length of one call, the
 * caller's configuration kept. Include after defining _GNU_SOURCE (for syscall) and after simd.h;
 * POOLKIT_AMX is defined where the compiler targets AMX-BF16 and AVX512-BF16. A change here
 * rebuilds every kernel: poolkit.kernels.compiler keys its cache on the headers beside a source. */
#ifndef POOLKIT_AMX_H
#define POOLKIT_AMX_H

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(POOLKIT_AVX512BF16)
#define POOLKIT_AMX 1
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

#define POOLKIT_ARCH_REQ_XCOMP_PERM 0x1023
#define POOLKIT_XFEATURE_XTILEDATA 18

/* 1 when Linux (>= 5.16) grants this process the tile state; asking again is harmless. */
static inline int amx_permitted(void) {
    return syscall(SYS_arch_prctl, POOLKIT_ARCH_REQ_XCOMP_PERM, POOLKIT_XFEATURE_XTILEDATA) == 0;
}

typedef struct {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Keep the calling thread's tile configuration (oneDNN's, torch's) in `saved`, then configure
 * tiles 0-7 as 16 rows of 64 bytes each. */
static inline void configure_tiles(tile_config *saved) {
    _tile_storeconfig(saved);
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

/* Zero tiles 0-3, the four accumulators of the kernels' 2 x 2 blocks of tile products. */
static inline void zero_accumulators(void) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
}

/* Give the thread back the configuration configure_tiles kept (or release the tiles if it had none). */
static inline void restore_tiles(const tile_config *saved) {
    if (saved->palette)
        _tile_loadconfig(saved);
    else
        _tile_release();
}
#endif
#endif
