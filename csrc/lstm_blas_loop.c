/* lstm_blas_loop.c - the BLAS path's time loops (lstm_blas_loop.h) and the
 * BLAS products every path shares (lstm_common.h), instantiated for float and
 * double from one source, lstm_blas_loop_impl.h.
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
