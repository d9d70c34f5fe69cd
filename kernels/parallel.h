/* Splitting a kernel's work over threads, shared by poolkit's compiled CPU kernels: OpenMP's, the
 * pool torch's own parallel loops run on (torch's libgomp, loaded before any kernel, is the one a
 * kernel built with -fopenmp binds to), so that a kernel called between two matmuls runs on the
 * threads that are already awake instead of competing with them for the cores. Built without
 * OpenMP the parts run one after another on the calling thread. A change here rebuilds every
 * kernel: poolkit.kernels.compiler keys its cache on the headers beside a source. */
#ifndef POOLKIT_PARALLEL_H
#define POOLKIT_PARALLEL_H

#include <stdint.h>

/* STATEMENT (an int expression: 0, or a failure code) for [begin, end) ranges covering [0, count)
 * in at most `workers` contiguous parts, one per thread; `code` gets the OR of their results. One
 * part runs on the calling thread without entering OpenMP at all (a forked child, whose copy of
 * the runtime still counts its parent's threads, must not). */
#define PARALLEL_RANGES(count, workers, code, begin, end, STATEMENT)                                         \
    do {                                                                                                      \
        int64_t count_ = (count), parts_ = (workers) < 1 ? 1 : (workers);                                     \
        if (parts_ > count_) parts_ = count_ < 1 ? 1 : count_;                                                \
        int64_t step_ = (count_ + parts_ - 1) / parts_;                                                       \
        int code_ = 0;                                                                                        \
        if (parts_ == 1) {                                                                                    \
            int64_t begin = 0, end = count_;                                                                  \
            if (begin < end) code_ = (STATEMENT);                                                             \
        } else {                                                                                              \
            _Pragma("omp parallel for num_threads(parts_) schedule(static, 1) reduction(| : code_)")          \
            for (int64_t part_ = 0; part_ < parts_; part_++) {                                                \
                int64_t begin = part_ * step_, end = begin + step_ < count_ ? begin + step_ : count_;         \
                if (begin < end) code_ |= (STATEMENT);                                                        \
            }                                                                                                 \
        }                                                                                                     \
        (code) = code_;                                                                                       \
    } while (0)

#endif
