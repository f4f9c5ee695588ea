/* lstm_blas_loop.c - the BLAS path's time loops (lstm_blas_loop.h) and the
 * BLAS products every path shares (lstm_common.h), instantiated for float and
 * double from one source, lstm_blas_loop_impl.h; and dropout's random words.
 */
#include <math.h>
#include <string.h>
#include "lstm_cell.h"
#include "lstm_common.h"

#define REAL float
#define SFX f32
#define GEMM sgemm
#define GEMV sgemv
#define SQRT sqrtf
#include "lstm_blas_loop_impl.h"
#undef REAL
#undef SFX
#undef GEMM
#undef GEMV
#undef SQRT

#define REAL double
#define SFX f64
#define GEMM dgemm
#define GEMV dgemv
#define SQRT sqrt
#include "lstm_blas_loop_impl.h"
#undef REAL
#undef SFX
#undef GEMM
#undef GEMV
#undef SQRT

void lstm_splitmix_words(int nthreads, uint64_t key, ptrdiff_t n, uint64_t *out)
{
    (void)nthreads;
#ifdef _OPENMP
    LSTM_PRAGMA(omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static))
#endif
    for (ptrdiff_t i = 0; i < n; ++i) {
        uint64_t z = key + (uint64_t)(i + 1) * UINT64_C(0x9E3779B97F4A7C15);
        z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
        out[i] = z ^ (z >> 31);
    }
}

void lstm_zero_bytes(int nthreads, ptrdiff_t n, void *p)
{
    (void)nthreads;
#ifdef _OPENMP
    LSTM_PRAGMA(omp parallel num_threads(nthreads) if (nthreads > 1))
#endif
    {
        const lstm_range r = lstm_thread_units(n, 64);
        if (r.hi > r.lo) memset((char *)p + r.lo, 0, (size_t)(r.hi - r.lo));
    }
}
