/* lstm_common.h - internal to csrc/: what every time loop of the C backend
 * shares, so that each rule exists once: how threads split work, how BLAS
 * products are cut to fit BLAS's int sizes, and the products over many rows
 * (defined per dtype in lstm_blas_loop.c, used by the fused paths as well).
 */
#ifndef FASTLSTM_LSTM_COMMON_H
#define FASTLSTM_LSTM_COMMON_H

#include <limits.h>
#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "lstm_blas_loop.h"

/* The fused paths (float32 and bf16) are written with GCC/Clang vector extensions. A compiler
 * without them (MSVC) builds none: every path reports unsupported, the best
 * path is LSTM_PATH_BLAS, and the extension runs the BLAS loops (bf16
 * weights: on float32 copies of the rounded weights).
 * -DFASTLSTM_NO_VECTOR_PATHS makes GCC build the same way (to test it). */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(FASTLSTM_NO_VECTOR_PATHS)
#define FASTLSTM_VECTOR_PATHS 1
#endif
#if (defined(__x86_64__) || defined(_M_X64)) && defined(FASTLSTM_VECTOR_PATHS)
#define FASTLSTM_X86_PATHS 1
#include <immintrin.h>
#endif

#ifdef FASTLSTM_X86_PATHS
/* What the CPU runs, for the x86-64 code paths (lstm_fused.c, lstm_bf16.c). */
static inline int lstm_cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static inline int lstm_cpu_has_avx512(void)
{
    return lstm_cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#endif

/* The highest path number below count that `supported` accepts, else none. */
static inline int lstm_best_path_of(int count, int (*supported)(int), int none)
{
    for (int path = count - 1; path >= 0; --path)
        if (supported(path)) return path;
    return none;
}

/* Parallel regions written once as macros: `LSTM_PARALLEL(n) { ... }` runs
 * the block on n threads (on one when n <= 1 or without OpenMP), and
 * LSTM_BARRIER() waits for the whole team inside it. */
#if defined(_MSC_VER) && !defined(__clang__)
#define LSTM_PRAGMA(x) __pragma(x)
#else
#define LSTM_PRAGMA(x) _Pragma(#x)
#endif
/* Functions compiled for more than the baseline CPU (the x86-64 paths): those
 * between LSTM_TARGET_BEGIN(gcc, clang) and LSTM_TARGET_END() get the target
 * options `gcc` (GCC's, which may tune too) or `clang` (a feature list). */
#ifdef __clang__
#define LSTM_TARGET_BEGIN(gcc, clang) \
    LSTM_PRAGMA(clang attribute push(__attribute__((target(clang))), apply_to = function))
#define LSTM_TARGET_END() LSTM_PRAGMA(clang attribute pop)
#else
#define LSTM_TARGET_BEGIN(gcc, clang) LSTM_PRAGMA(GCC push_options) LSTM_PRAGMA(GCC target(gcc))
#define LSTM_TARGET_END() LSTM_PRAGMA(GCC pop_options)
#endif

#if defined(_OPENMP) && (defined(__GNUC__) || defined(__clang__)) && !defined(_WIN32)
#include <sched.h>
/* The team's barrier, our own: libgomp's `omp barrier` ends in a futex wake (a
 * system call) on the last thread to arrive even where no thread sleeps, about
 * 0.2 us on this kind of VM, at every step of a time loop (on one thread, 0.2 us
 * of a 0.27 us step at H=16). This one is an atomic count and a generation: the
 * waiters spin on the generation, then yield the core (a team with more threads
 * than cores still moves on). A team of one skips it. LSTM_PARALLEL declares the
 * barrier of its region (one region per function). */
typedef struct {
    int count, generation;
} lstm_barrier;

static inline void lstm_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline void lstm_barrier_wait(lstm_barrier *b)
{
    const int nt = omp_get_num_threads();
    if (nt <= 1) return;
    const int gen = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == nt) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->generation, gen + 1, __ATOMIC_RELEASE);
        return;
    }
    for (int spins = 0; __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == gen; ++spins) {
        if (spins < 1000)
            lstm_cpu_relax();
        else
            sched_yield();
    }
}

#define LSTM_PARALLEL(n)                                  \
    lstm_barrier lstm_bar_ __attribute__((unused)) = {0, 0}; \
    LSTM_PRAGMA(omp parallel num_threads(n) if ((n) > 1) shared(lstm_bar_))
#define LSTM_BARRIER() lstm_barrier_wait(&lstm_bar_)
#elif defined(_OPENMP)
#define LSTM_PARALLEL(n) LSTM_PRAGMA(omp parallel num_threads(n) if ((n) > 1))
#define LSTM_BARRIER() LSTM_PRAGMA(omp barrier)
#else
#define LSTM_PARALLEL(n)
#define LSTM_BARRIER()
#endif

/* One thread of a parallel region: its number, the team's size, and the
 * BLAS thread count it replaced (see lstm_team_join). */
typedef struct {
    int tid, nt, blas_saved;
} lstm_team;

/* Called first by every thread of a region. Each thread runs its share of
 * the big products single-threaded (set_threads_local), so that BLAS worker
 * threads never compete with ours for the cores. */
static inline lstm_team lstm_team_join(const lstm_blas *blas)
{
    lstm_team me = {0, 1, 0};
#ifdef _OPENMP
    me.tid = omp_get_thread_num();
    me.nt = omp_get_num_threads();
#endif
    me.blas_saved = blas->set_threads_local ? blas->set_threads_local(1) : 0;
    return me;
}

static inline void lstm_team_leave(const lstm_blas *blas, lstm_team me)
{
    if (blas->set_threads_local && me.blas_saved > 0) blas->set_threads_local(me.blas_saved);
}

/* Items [lo, hi) of n: thread me's contiguous share. Shares differ by at most
 * one item, so no thread waits long at the barrier that follows. */
typedef struct {
    ptrdiff_t lo, hi;
} lstm_range;

static inline lstm_range lstm_share(ptrdiff_t n, lstm_team me)
{
    lstm_range r = {n * me.tid / me.nt, n * (me.tid + 1) / me.nt};
    return r;
}

/* The calling OpenMP thread's share of [0, n) in whole units of `unit` items
 * (a cache line's worth): what a pass split over the threads by columns or bytes
 * writes without two threads sharing a line. The whole range outside a
 * parallel region. */
static inline lstm_range lstm_thread_units(ptrdiff_t n, ptrdiff_t unit)
{
    int me = 0, team = 1;
#ifdef _OPENMP
    me = omp_get_thread_num();
    team = omp_get_num_threads();
#endif
    const ptrdiff_t units = (n + unit - 1) / unit;
    lstm_range r = {units * me / team * unit, units * (me + 1) / team * unit};
    if (r.hi > n) r.hi = n;
    if (r.lo > n) r.lo = n;
    return r;
}

/* keep = LSTM_KEEP_STREAM: a training forward stores its kept gates past the
 * caches, in non-temporal stores (lstm_vec_impl.h, keep_gate), where they are
 * too large to stay there until backward reads them and each thread's weights
 * stream from L3 at every step (ordinary stores would read each line first and
 * push the weights out of L2). Which calls do is a process-wide size set by the
 * caller (lstm_fused_set_stream_gates; the rule and its measurements are
 * fastlstm/_config.py's stream_gates_bytes). */
#define LSTM_KEEP_STREAM 2

/* Orders a thread's non-temporal stores before what follows (a barrier, or the
 * end of the call): they are weakly ordered on x86. */
static inline void lstm_stream_fence(void)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_ia32_sfence();
#endif
}

/* Rows per BLAS call so that rows * width (the largest offset BLAS may form
 * from an int leading dimension) fits an int: products over all T*N rows are
 * cut into calls of this many rows. */
static inline ptrdiff_t lstm_rows_per_call(ptrdiff_t width)
{
    const ptrdiff_t r = INT_MAX / (width > 0 ? width : 1);
    return r > 0 ? r : 1;
}

/* Variable lengths (the `batch` argument of the time loops): with the rows
 * sorted by length, longest first, step t runs the first batch[t] rows
 * (non-increasing in t, each >= 1), and the per-step arrays are packed: step
 * t's rows follow step t-1's (torch's PackedSequence layout). NULL: every
 * step runs all N rows, which is the [T, N, ...] layout. */
static inline ptrdiff_t lstm_rows_at(const ptrdiff_t *batch, ptrdiff_t t, ptrdiff_t N)
{
    return batch ? batch[t] : N;
}

/* Rows of the packed arrays: the sum of batch[0..T-1], or T*N. */
static inline ptrdiff_t lstm_total_rows(const ptrdiff_t *batch, ptrdiff_t T, ptrdiff_t N)
{
    ptrdiff_t rows = 0;
    if (!batch) return T * N;
    for (ptrdiff_t t = 0; t < T; ++t) rows += batch[t];
    return rows;
}

/* Step t of a backward loop over packed steps (t = T-1 .. 0), given `next`,
 * the row where step t + 1 starts (all the rows at t = T-1): its rows Nt, how
 * many of them go on to step t + 1 (Nnext), and where steps t and t - 1 start. */
typedef struct {
    ptrdiff_t Nt, Nnext, off, off_prev;
} lstm_back_step;

static inline lstm_back_step lstm_step_back(const ptrdiff_t *batch, ptrdiff_t t, ptrdiff_t T,
                                            ptrdiff_t N, ptrdiff_t next)
{
    lstm_back_step s;
    s.Nt = lstm_rows_at(batch, t, N);
    s.Nnext = t + 1 < T ? lstm_rows_at(batch, t + 1, N) : 0;
    s.off = next - s.Nt;
    s.off_prev = t ? s.off - lstm_rows_at(batch, t - 1, N) : 0;
    return s;
}

/* What a fused backward block does (backward_block in lstm_fused_impl.h). */
typedef enum {
    LSTM_BWD_LAST,   /* the step t = T-1: the recurrent dh is the given dh_T */
    LSTM_BWD_STEP,   /* a step t < T-1: the recurrent dh is dP[t+1] . W_hh */
    LSTM_BWD_DH0     /* after the steps: dh_0 = dP[0] . W_hh, no gate math */
} lstm_bwd_mode;

/* The products shared by the BLAS path and the fused paths, defined per
 * dtype in lstm_blas_loop.c (float versions below; _f64 alike). Columns
 * c0..c1 of G = 4H: the BLAS path takes all of them in one product, a fused
 * thread the columns of its units, one gate block at a time.
 *
 * lstm_add_product: P [rows, G] INOUT at columns c0..c1 += in [rows, K] IN .
 *   W [G, K]^T IN (rows c0..c1 of W), one matrix product; rows*G fits an int.
 * lstm_project: P [rows, G] OUT at columns c0..c1 = x [rows, I] IN .
 *   W_ih [G, I]^T IN + b [G] IN, for any number of rows. x NULL: P is IN, the
 *   caller's input projection (bias included), left as it is.
 * lstm_backward_products: after a backward time loop, dP = gates [rows, G] IN
 *   (rows = T*N, or fewer when packed): dx [rows, I] OUT = dP . W_ih [G, I]
 *   at rows r0..r1, and at gate rows g0..g1 (of G): dW_ih [G, I] +=
 *   dP^T . x [rows, I], dW_hh [G, K] += dP^T . (the h each row read): h_prev
 *   [rows, K] when it is not NULL, else [h0 [N, K]; y [T-1 steps of N, K]]
 *   (rev: a pass that ran time backwards over [T, N] rows, so that the last
 *   step's rows read h0 and the others y one step later);
 *   db [G] += the sum of the nparts rows of db_parts [nparts, G] when it is
 *   not NULL, else of dP's rows. K is H, or P with a projection.
 */
/* lstm_gemm: BLAS's column-major C = op(A) op(B) + beta C with ptrdiff_t sizes
 *   (each fits an int; nothing happens for an empty C or k = 0 with beta 1). */
void lstm_gemm_f32(const lstm_blas *blas, char ta, char tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                   const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb, float beta,
                   float *c, ptrdiff_t ldc);
void lstm_add_product_f32(const lstm_blas *blas, ptrdiff_t rows, ptrdiff_t K, ptrdiff_t G,
                          ptrdiff_t c0, ptrdiff_t c1, const float *in, const float *W, float *P);
void lstm_project_f32(const lstm_blas *blas, ptrdiff_t rows, ptrdiff_t I, ptrdiff_t G,
                      ptrdiff_t c0, ptrdiff_t c1, const float *x, const float *W_ih,
                      const float *b, float *P);
void lstm_backward_products_f32(const lstm_blas *blas, ptrdiff_t T, ptrdiff_t N, ptrdiff_t rows,
                                ptrdiff_t I, ptrdiff_t H, ptrdiff_t K, ptrdiff_t g0, ptrdiff_t g1,
                                ptrdiff_t r0, ptrdiff_t r1, const float *x, const float *W_ih,
                                const float *h0, const float *y, const float *h_prev,
                                const float *dP, float *dx, float *dW_ih, float *dW_hh, float *db,
                                const float *db_parts, int nparts, int rev);

/* The pieces of the fused paths' weight gradients (lstm_fused_impl.h,
 * weight_grads): each thread sums dP^T . [x | h read] over its own rows into a
 * part of its own, and after a barrier the parts are added up.
 * lstm_gather_xh: rows a..a+nr of [x | h read] (x [rows, I], h read as in
 *   lstm_backward_products, K wide), zero padded to ld >= I + K columns, OUT
 *   in xh in panels of pw columns (the last one narrower where pw does not
 *   divide ld): panel j0 / pw holds columns j0..j0+w-1 of every row, row r at
 *   xh [j0 * nr + r * w], so that a product reading a panel streams it.
 * lstm_backward_sum_grads: at gate rows g0..g1, dW_ih [G, I] += the sum of the
 *   nparts parts' first I columns (parts [nparts, G, W] IN, W >= I + K), dW_hh
 *   [G, K] += of their next K; db as in lstm_backward_products. */
void lstm_gather_xh_f32(ptrdiff_t a, ptrdiff_t nr, ptrdiff_t N, ptrdiff_t rows, ptrdiff_t I,
                        ptrdiff_t K, ptrdiff_t ld, ptrdiff_t pw, const float *x, const float *h0,
                        const float *y, const float *h_prev, int rev, float *xh);
void lstm_backward_sum_grads_f32(ptrdiff_t I, ptrdiff_t K, ptrdiff_t G, ptrdiff_t W,
                                 ptrdiff_t g0, ptrdiff_t g1, const float *parts, int nparts,
                                 float *dW_ih, float *dW_hh, float *db, const float *db_parts,
                                 int ndb, const float *dP, ptrdiff_t rows);

/* Columns of xh and of the parts: I + K rounded up to 16 floats (a whole
 * number of vectors on every path). */
static inline ptrdiff_t lstm_grads_width(ptrdiff_t width) { return (width + 15) / 16 * 16; }

/* Rows of xh per gather in weight_grads: a thread's share of the rows, at
 * most LSTM_GRADS_CHUNK_FLOATS elements (8 MB of float32) and at least
 * LSTM_GRADS_CHUNK_MIN_ROWS rows. (The sanitizer build makes both tiny, so
 * that its tests run many chunks.) */
#ifndef LSTM_GRADS_CHUNK_FLOATS
#define LSTM_GRADS_CHUNK_FLOATS ((ptrdiff_t)1 << 21)
#endif
#ifndef LSTM_GRADS_CHUNK_MIN_ROWS
#define LSTM_GRADS_CHUNK_MIN_ROWS 256
#endif
static inline ptrdiff_t lstm_grads_chunk(ptrdiff_t rows, int nthreads, ptrdiff_t width)
{
    const ptrdiff_t nt = nthreads > 1 ? nthreads : 1, share = (rows + nt - 1) / nt;
    ptrdiff_t chunk = (ptrdiff_t)LSTM_GRADS_CHUNK_FLOATS / (width > 0 ? width : 1);
    if (chunk < LSTM_GRADS_CHUNK_MIN_ROWS) chunk = LSTM_GRADS_CHUNK_MIN_ROWS;
    if (chunk > share) chunk = share;
    return chunk > 0 ? chunk : 1;
}

/* Whether the weight gradients go in parts: while the parts stay small (at
 * most 64 MB of float32 in all; each is as large as the weights) and each
 * thread has rows enough that adding its part up costs little beside its
 * product. Else they are separate BLAS products (lstm_backward_products). */
static inline int lstm_grads_in_parts(ptrdiff_t rows, int nthreads, ptrdiff_t G, ptrdiff_t width)
{
    const ptrdiff_t nt = nthreads > 1 ? nthreads : 1;
    return nt * G * width <= ((ptrdiff_t)1 << 24) && rows >= 16 * nt;
}

/* Floats of workspace for the parts on nthreads threads: a part and an xh
 * block each (0 where they do not go in parts). */
static inline ptrdiff_t lstm_grads_work(ptrdiff_t rows, int nthreads, ptrdiff_t G, ptrdiff_t width)
{
    const ptrdiff_t nt = nthreads > 1 ? nthreads : 1;
    if (!lstm_grads_in_parts(rows, nthreads, G, width)) return 0;
    return nt * (G + lstm_grads_chunk(rows, nthreads, width)) * width;
}

#endif
