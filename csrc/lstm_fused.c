/* lstm_fused.c - instantiates the fused float32 kernels (lstm_fused_impl.h)
 * for each code path and dispatches between them at run time (lstm_fused.h).
 *
 * The x86-64 AVX-512 and AVX2 paths are compiled with per-function target
 * options, so the file itself builds for the baseline CPU and one binary is
 * correct everywhere and fast where the CPU allows.
 */
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "lstm_fused.h"

/* The fused paths are written with GCC/Clang vector extensions. A compiler
 * without them (MSVC) builds none: every path reports unsupported, the best
 * path is LSTM_PATH_NONE ("blas"), and the extension runs its BLAS path.
 * -DFASTLSTM_NO_VECTOR_PATHS makes GCC build the same way (to test it). */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(FASTLSTM_NO_VECTOR_PATHS)
#define FASTLSTM_VECTOR_PATHS 1
#endif
#if (defined(__x86_64__) || defined(_M_X64)) && defined(FASTLSTM_VECTOR_PATHS)
#define FASTLSTM_X86_PATHS 1
#endif

#include <limits.h>
#ifdef FASTLSTM_X86_PATHS
#include <immintrin.h>
#endif

/* ---- BLAS products shared by every path (each thread runs its own share) */

static int blas_threads_enter(const lstm_blas *blas)
{
    return blas->set_threads_local ? blas->set_threads_local(1) : 0;
}

static void blas_threads_leave(const lstm_blas *blas, int saved)
{
    if (blas->set_threads_local && saved > 0) blas->set_threads_local(saved);
}

/* Column-major C = alpha*op(A)*op(B) + beta*C through the caller's sgemm. */
static void gemm(const lstm_blas *blas, char ta, char tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                 const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb, float beta,
                 float *c, ptrdiff_t ldc)
{
    int im = (int)m, in = (int)n, ik = (int)k, la = (int)lda, lb = (int)ldb, lc = (int)ldc;
    const float one = 1.0f;
    if (m <= 0 || n <= 0) return;
    if (k <= 0) { /* BLAS would only scale C; keep it explicit */
        for (ptrdiff_t j = 0; j < n; ++j)
            for (ptrdiff_t i = 0; i < m; ++i) c[j * ldc + i] *= beta;
        return;
    }
    blas->sgemm(&ta, &tb, &im, &in, &ik, &one, a, &la, b, &lb, &beta, c, &lc);
}

/* Rows per BLAS call so that rows * width fits an int. */
static ptrdiff_t rows_per_call(ptrdiff_t width)
{
    ptrdiff_t r = INT_MAX / (width > 0 ? width : 1);
    return r > 0 ? r : 1;
}

/* P[:, units u0..u1 of every gate] = x . W_ih^T + b over rows of x [rows, I]. */
static void project_units(const lstm_blas *blas, ptrdiff_t rows, ptrdiff_t I, ptrdiff_t H,
                          ptrdiff_t u0, ptrdiff_t u1, const float *x, const float *W_ih,
                          const float *b, float *P)
{
    const ptrdiff_t G = 4 * H, nu = u1 - u0;
    if (nu <= 0) return;
    for (ptrdiff_t r = 0; r < rows; ++r)
        for (int g = 0; g < 4; ++g)
            memcpy(P + r * G + g * H + u0, b + g * H + u0, (size_t)nu * sizeof(float));
    const ptrdiff_t step = rows_per_call(G > I ? G : I);
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += step) {
        const ptrdiff_t nr = rows - r0 < step ? rows - r0 : step;
        for (int g = 0; g < 4; ++g)
            gemm(blas, 'T', 'N', nu, nr, I, W_ih + (g * H + u0) * I, I, x + r0 * I, I, 1.0f,
                 P + r0 * G + g * H + u0, G);
    }
}

/* After the backward time loop, one thread's share: rows r0..r1 of
 * dx = dP . W_ih, and gate rows g0..g1 (of G) of dW_ih += dP^T x,
 * dW_hh += dP^T [h0; y_0..y_{T-2}] and db += sum of dP: the sum of the
 * nparts partial sums in db_parts [nparts, G] the time loop made, or without
 * them (NULL) of dP's rows. Contiguous row ranges make one large product per
 * thread rather than many thin ones. */
static void backward_products(const lstm_blas *blas, ptrdiff_t T, ptrdiff_t N, ptrdiff_t I,
                              ptrdiff_t H, ptrdiff_t g0, ptrdiff_t g1, ptrdiff_t r0, ptrdiff_t r1,
                              const float *x, const float *W_ih, const float *h0, const float *y,
                              const float *dP, float *dx, float *dW_ih, float *dW_hh, float *db,
                              const float *db_parts, int nparts)
{
    const ptrdiff_t G = 4 * H, ng = g1 - g0, rows = T * N;
    const ptrdiff_t step = rows_per_call(G > I ? (G > H ? G : H) : (I > H ? I : H));
    for (ptrdiff_t a = r0; a < r1; a += step) {
        const ptrdiff_t nr = r1 - a < step ? r1 - a : step;
        gemm(blas, 'N', 'N', I, nr, G, W_ih, I, dP + a * G, G, 0.0f, dx + a * I, I);
    }
    if (ng <= 0) return;
    for (ptrdiff_t a = 0; a < rows; a += step) {
        const ptrdiff_t nr = rows - a < step ? rows - a : step;
        gemm(blas, 'N', 'T', I, ng, nr, x + a * I, I, dP + a * G + g0, G, 1.0f, dW_ih + g0 * I, I);
    }
    gemm(blas, 'N', 'T', H, ng, N, h0, H, dP + g0, G, 1.0f, dW_hh + g0 * H, H);
    for (ptrdiff_t a = N; a < rows; a += step) {
        const ptrdiff_t nr = rows - a < step ? rows - a : step;
        gemm(blas, 'N', 'T', H, ng, nr, y + (a - N) * H, H, dP + a * G + g0, G, 1.0f,
             dW_hh + g0 * H, H);
    }
    const float *from = db_parts ? db_parts : dP;
    const ptrdiff_t nsum = db_parts ? nparts : rows;
    for (ptrdiff_t r = 0; r < nsum; ++r) {
        const float *d = from + r * G + g0;
        for (ptrdiff_t j = 0; j < ng; ++j) db[g0 + j] += d[j];
    }
}

/* Vectors per backward panel, per path (read by backward_units below too). */
#define BV_AVX512 4
#define BV_OTHER 2

/* portable: 4 lanes, which every SIMD ISA has (SSE2, NEON) or emulates */
#ifdef FASTLSTM_VECTOR_PATHS
#define SFX portable
#define VL 4
#define RF 2
#define RB 6
#define BV BV_OTHER
#include "lstm_fused_impl.h"
#undef SFX
#undef VL
#undef RF
#undef RB
#undef BV

#ifdef FASTLSTM_X86_PATHS
#pragma GCC push_options
#pragma GCC target("avx2,fma,tune=haswell")
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#endif
#define SFX avx2
#define VL 8
#define RF 2
#define RB 6
#define BV BV_OTHER
#include "lstm_fused_impl.h"
#undef SFX
#undef VL
#undef RF
#undef RB
#undef BV
#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx2,fma")
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma"))), apply_to = function)
#endif
#define SFX avx512
#define VL 16
#define RF 6
#define RB 6
#define BV BV_AVX512
#include "lstm_fused_impl.h"
#undef SFX
#undef VL
#undef RF
#undef RB
#undef BV
#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options
#endif
#endif /* FASTLSTM_VECTOR_PATHS */

int lstm_fused_path_supported(int path)
{
    switch (path) {
#ifdef FASTLSTM_VECTOR_PATHS
    case LSTM_PATH_PORTABLE:
        return 1;
#endif
#ifdef FASTLSTM_X86_PATHS
    case LSTM_PATH_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case LSTM_PATH_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
#endif
    default:
        return 0;
    }
}

int lstm_fused_best_path(void)
{
    if (lstm_fused_path_supported(LSTM_PATH_AVX512)) return LSTM_PATH_AVX512;
    if (lstm_fused_path_supported(LSTM_PATH_AVX2)) return LSTM_PATH_AVX2;
    if (lstm_fused_path_supported(LSTM_PATH_PORTABLE)) return LSTM_PATH_PORTABLE;
    return LSTM_PATH_NONE;
}

const char *lstm_fused_path_name(int path)
{
    switch (path) {
    case LSTM_PATH_AVX512: return "avx512";
    case LSTM_PATH_AVX2: return "avx2";
    case LSTM_PATH_PORTABLE: return "portable";
    default: return "blas";
    }
}

int lstm_fused_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static ptrdiff_t lanes(int path)
{
    return path == LSTM_PATH_AVX512 ? 16 : path == LSTM_PATH_AVX2 ? 8 : 4;
}

/* Units per backward panel: BV vectors of the path. */
static ptrdiff_t backward_units(int path)
{
    return (path == LSTM_PATH_AVX512 ? BV_AVX512 : BV_OTHER) * lanes(path);
}

/* An unsupported path falls back to the portable one (or to nothing where no
 * path was built), so a wrong request can never execute an illegal instruction. */
static int usable(int path)
{
    return lstm_fused_path_supported(path) ? path : lstm_fused_best_path();
}

ptrdiff_t lstm_fused_forward_pack_size(int path, ptrdiff_t Ip, ptrdiff_t H)
{
    ptrdiff_t u = lanes(usable(path));
    return (H + u - 1) / u * u * 4 * (Ip + H);
}

ptrdiff_t lstm_fused_backward_pack_size(int path, ptrdiff_t H)
{
    ptrdiff_t u = backward_units(usable(path));
    return (H + u - 1) / u * u * 4 * H;
}

void lstm_fused_pack_forward(int path, ptrdiff_t Ip, ptrdiff_t H, const float *W_ih,
                             const float *W_hh, float *W_f)
{
    switch (usable(path)) {
#ifdef FASTLSTM_X86_PATHS
    case LSTM_PATH_AVX512: pack_forward_avx512(Ip, H, W_ih, W_hh, W_f); break;
    case LSTM_PATH_AVX2: pack_forward_avx2(Ip, H, W_ih, W_hh, W_f); break;
#endif
#ifdef FASTLSTM_VECTOR_PATHS
    default: pack_forward_portable(Ip, H, W_ih, W_hh, W_f); break;
#else
    default: break;
#endif
    }
}

void lstm_fused_pack_backward(int path, ptrdiff_t H, const float *W_hh, float *W_b)
{
    switch (usable(path)) {
#ifdef FASTLSTM_X86_PATHS
    case LSTM_PATH_AVX512: pack_backward_avx512(H, W_hh, W_b); break;
    case LSTM_PATH_AVX2: pack_backward_avx2(H, W_hh, W_b); break;
#endif
#ifdef FASTLSTM_VECTOR_PATHS
    default: pack_backward_portable(H, W_hh, W_b); break;
#else
    default: break;
#endif
    }
}

void lstm_fused_forward(const lstm_blas *blas, int path, int nthreads, int by_rows,
                        ptrdiff_t T, ptrdiff_t N, ptrdiff_t I, ptrdiff_t Ip, ptrdiff_t H, const float *x,
                        const float *W_ih, const float *b, const float *W_f,
                        const float *h0, const float *c0, float *gates, int keep, float *y,
                        float *cs)
{
    if (T <= 0 || N <= 0 || H <= 0) return;
    switch (usable(path)) {
#ifdef FASTLSTM_X86_PATHS
    case LSTM_PATH_AVX512:
        forward_avx512(blas, nthreads, by_rows, T, N, I, Ip, H, x, W_ih, b, W_f, h0, c0,
                       gates, keep, y, cs);
        break;
    case LSTM_PATH_AVX2:
        forward_avx2(blas, nthreads, by_rows, T, N, I, Ip, H, x, W_ih, b, W_f, h0, c0,
                     gates, keep, y, cs);
        break;
#endif
#ifdef FASTLSTM_VECTOR_PATHS
    default:
        forward_portable(blas, nthreads, by_rows, T, N, I, Ip, H, x, W_ih, b, W_f, h0, c0,
                         gates, keep, y, cs);
        break;
#else
    default:
        break;
#endif
    }
}

void lstm_fused_backward(const lstm_blas *blas, int path, int nthreads, int by_rows,
                         ptrdiff_t T, ptrdiff_t N, ptrdiff_t I, ptrdiff_t H, const float *x,
                         const float *W_ih, const float *h0, const float *c0, const float *y,
                         const float *cs, const float *W_b, float *gates, const float *dy,
                         float *dh, float *dc, float *dx, float *dW_ih, float *dW_hh, float *db)
{
    if (T <= 0 || N <= 0 || H <= 0) return;
    switch (usable(path)) {
#ifdef FASTLSTM_X86_PATHS
    case LSTM_PATH_AVX512:
        backward_avx512(blas, nthreads, by_rows, T, N, I, H, x, W_ih, h0, c0, y, cs, W_b,
                        gates, dy, dh,
                        dc, dx, dW_ih, dW_hh, db);
        break;
    case LSTM_PATH_AVX2:
        backward_avx2(blas, nthreads, by_rows, T, N, I, H, x, W_ih, h0, c0, y, cs, W_b,
                      gates, dy, dh,
                      dc, dx, dW_ih, dW_hh, db);
        break;
#endif
#ifdef FASTLSTM_VECTOR_PATHS
    default:
        backward_portable(blas, nthreads, by_rows, T, N, I, H, x, W_ih, h0, c0, y, cs, W_b,
                          gates, dy, dh,
                          dc, dx, dW_ih, dW_hh, db);
        break;
#else
    default:
        break;
#endif
    }
}

void lstm_fused_step(const lstm_blas *blas, int path, int nthreads, ptrdiff_t L, ptrdiff_t N,
                     ptrdiff_t I0, ptrdiff_t H, const float *x, const float *const *W_ih,
                     const float *const *W_hh, const float *const *b, const float *h,
                     const float *c, float *gates, float *h_out, float *c_out)
{
    /* Every other call reads the weights in the opposite order: the rows it
     * reads first are those the call before read last, still in the core's L2
     * when all of its share does not fit there. The order does not change the
     * result: each output is one row's own dot product. */
#ifdef FASTLSTM_VECTOR_PATHS
    static unsigned calls;
    const int descending = (int)(__atomic_fetch_add(&calls, 1u, __ATOMIC_RELAXED) & 1u);
#endif
    if (L <= 0 || N <= 0 || H <= 0) return;
    switch (usable(path)) {
#ifdef FASTLSTM_X86_PATHS
    case LSTM_PATH_AVX512:
        step_avx512(blas, nthreads, L, N, I0, H, x, W_ih, W_hh, b, h, c, gates, h_out, c_out,
                    descending);
        break;
    case LSTM_PATH_AVX2:
        step_avx2(blas, nthreads, L, N, I0, H, x, W_ih, W_hh, b, h, c, gates, h_out, c_out,
                  descending);
        break;
#endif
#ifdef FASTLSTM_VECTOR_PATHS
    default:
        step_portable(blas, nthreads, L, N, I0, H, x, W_ih, W_hh, b, h, c, gates, h_out, c_out,
                      descending);
        break;
#else
    default:
        break;
#endif
    }
}

void lstm_fused_activations(int path, ptrdiff_t n, const float *x, float *sig, float *th)
{
    if (n <= 0) return;
    switch (usable(path)) {
#ifdef FASTLSTM_X86_PATHS
    case LSTM_PATH_AVX512:
        activations_avx512(n, x, sig, th);
        break;
    case LSTM_PATH_AVX2:
        activations_avx2(n, x, sig, th);
        break;
#endif
#ifdef FASTLSTM_VECTOR_PATHS
    default:
        activations_portable(n, x, sig, th);
        break;
#else
    default:
        break;
#endif
    }
}
