/* lstm_fused.c - instantiates the fused float32 kernels (lstm_fused_impl.h)
 * once per code path, and dispatches the public calls of lstm_fused.h to a
 * path through one table of their entry points.
 *
 * The x86-64 AVX-512 and AVX2 paths are compiled with per-function target
 * options, so the file itself builds for the baseline CPU and one binary is
 * correct everywhere and fast where the CPU allows.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <stdint.h>
#include "lstm_common.h"
#include "lstm_fused.h"
#include "lstm_amx.h"


/* Whether the one-row loop may project rows ahead (lstm_fused_impl.h,
 * step_project_block; lstm_fused_set_one_row_ahead). */
static volatile int lstm_one_row_ahead = 1;

void lstm_fused_set_one_row_ahead(int on) { lstm_one_row_ahead = on != 0; }

static int lstm_one_row_ahead_on(void) { return lstm_one_row_ahead; }

/* From how many bytes of gates a training forward streams them to memory
 * (lstm_common.h, LSTM_KEEP_STREAM; lstm_fused_set_stream_gates); 0: never,
 * until a caller sets it. */
static volatile ptrdiff_t lstm_stream_gates_bytes = 0;

void lstm_fused_set_stream_gates(ptrdiff_t min_bytes) { lstm_stream_gates_bytes = min_bytes; }

/* The backward's weight gradients run on AMX for blocks of at least this many
 * rows where it can (lstm_amx.h; lstm_fused_set_amx_rows); 0: never, until a
 * caller sets it. */
static volatile ptrdiff_t lstm_amx_rows = 0;

void lstm_fused_set_amx_rows(ptrdiff_t min_rows) { lstm_amx_rows = min_rows > 0 ? min_rows : 0; }

static ptrdiff_t lstm_amx_rows_setting(void) { return lstm_amx_rows; }

/* The forward's input product runs on AMX for batches of at least this many
 * rows where it can (lstm_amx.h; lstm_fused_set_amx_input_rows); 0: never,
 * until a caller sets it. */
static volatile ptrdiff_t lstm_amx_input_min = 0;

void lstm_fused_set_amx_input_rows(ptrdiff_t min_rows)
{
    lstm_amx_input_min = min_rows > 0 ? min_rows : 0;
}

static ptrdiff_t lstm_amx_input_rows_setting(void) { return lstm_amx_input_min; }

/* The forward's input products on AMX run for chunks of steps of at most this many
 * rows, whose x parts take at most this many bytes (at least one step's rows). */
#define LSTM_AMX_CHUNK_ROWS 256
#define LSTM_AMX_CHUNK_BYTES ((ptrdiff_t)512 << 10)

static int lstm_stream_gates_of(ptrdiff_t bytes)
{
    const ptrdiff_t min = lstm_stream_gates_bytes;
    return min > 0 && bytes >= min;
}

/* Lanes of the widest path's vectors (its forward panels are that many units). */
#define AVX512_LANES 16

/* The entry points of one path: lstm_fused_impl.h defines one of these,
 * kernels_<path>, for each path it is included for. */
typedef struct {
    ptrdiff_t lanes;          /* units per forward panel */
    ptrdiff_t backward_units; /* units per backward panel */
    int (*cpu_has)(void);
    void (*pack_forward)(ptrdiff_t Ip, ptrdiff_t H, ptrdiff_t R, const float *W_ih,
                         const float *W_hh, float *W_f);
    void (*pack_backward)(ptrdiff_t H, ptrdiff_t R, const float *W_hh, float *W_b);
    void (*forward)(const lstm_blas *blas, int nthreads, int by_rows, ptrdiff_t T, ptrdiff_t N,
                    const ptrdiff_t *batch, ptrdiff_t I, ptrdiff_t Ip, ptrdiff_t H, ptrdiff_t P,
                    const float *x, const float *W_ih, const float *b, const float *W_hh,
                    float *W_f, float *W_x, const float *W_hr, const float *h0, const float *c0,
                    float *gates, int keep, float *y, float *cs, float *ms, int rev,
                    const lstm_rows_place *place, ptrdiff_t ldy);
    void (*backward)(const lstm_blas *blas, int nthreads, int by_rows, ptrdiff_t T, ptrdiff_t N,
                     const ptrdiff_t *batch, ptrdiff_t I, ptrdiff_t H, const float *x,
                     const float *W_ih, const float *h0, const float *c0, const float *y,
                     const float *h_prev, const float *cs, const float *W_b, float *gates,
                     const float *dy, float *dh, float *dc, float *dx, float *dW_ih,
                     float *dW_hh, float *db, float *work, int rev, const int64_t *ids,
                     ptrdiff_t V, float *dtab);
    void (*backward_proj)(const lstm_blas *blas, int nthreads, ptrdiff_t T, ptrdiff_t N,
                          const ptrdiff_t *batch, ptrdiff_t I, ptrdiff_t H, ptrdiff_t P,
                          const float *x, const float *W_ih, const float *W_b,
                          const float *W_hr, const float *h0, const float *c0, const float *y,
                          const float *h_prev, const float *cs, const float *ms, float *gates,
                          const float *dy, float *dh, float *dc, float *dx, float *dW_ih,
                          float *dW_hh, float *dW_hr, float *db, float *work);
    void (*step)(const lstm_blas *blas, int nthreads, ptrdiff_t L, ptrdiff_t N, ptrdiff_t I0,
                 ptrdiff_t H, const float *x, const float *const *W_ih, const float *const *W_hh,
                 const float *const *b, const float *h, const float *c, float *gates,
                 float *h_out, float *c_out, int descending);
    void (*row_panels)(ptrdiff_t p0, ptrdiff_t p1, int down, ptrdiff_t Ip, ptrdiff_t H,
                       const float *W_f, const float *x, const float *add, const float *h_prev,
                       float *c, float *h);
    void (*dot_rows)(ptrdiff_t m, ptrdiff_t k, const float *a, const float *x, float *y);
    void (*activations)(ptrdiff_t n, const float *x, float *sig, float *th);
    void (*softmax_xent)(int nthreads, ptrdiff_t M, ptrdiff_t V, const float *logits,
                         const int64_t *targets, float scale, float *dl, double *row_loss);
} path_kernels;

#ifdef FASTLSTM_VECTOR_PATHS
/* portable: 4 lanes, which every SIMD ISA has (SSE2, NEON) or emulates */
static int cpu_has_portable(void) { return 1; }
#define SFX portable
#define VL 4
#define RF 2
#define RB 6
#define BV 2
#include "lstm_fused_impl.h"

#ifdef FASTLSTM_X86_PATHS
static int cpu_has_avx2(void) { return lstm_cpu_has_avx2(); }
LSTM_TARGET_BEGIN("avx2,fma,tune=haswell", "avx2,fma")
#define SFX avx2
#define VL 8
#define RF 2
#define RB 6
#define BV 2
#include "lstm_fused_impl.h"
LSTM_TARGET_END()

static int cpu_has_avx512(void) { return lstm_cpu_has_avx512(); }
LSTM_TARGET_BEGIN("avx512f,avx512dq,avx512vl,avx2,fma", "avx512f,avx512dq,avx512vl,avx2,fma")
#define SFX avx512
#define VL AVX512_LANES
#define RF 6
#define RB 6
#define BV 4
#include "lstm_fused_impl.h"
LSTM_TARGET_END()
#endif
#endif /* FASTLSTM_VECTOR_PATHS */

/* The paths built into this binary, by path number (NULL: not built). */
static const path_kernels *kernels_of(int path)
{
    switch (path) {
#ifdef FASTLSTM_VECTOR_PATHS
    case LSTM_PATH_PORTABLE: return &kernels_portable;
#endif
#ifdef FASTLSTM_X86_PATHS
    case LSTM_PATH_AVX2: return &kernels_avx2;
    case LSTM_PATH_AVX512: return &kernels_avx512;
#endif
    default: return NULL;
    }
}

int lstm_fused_path_supported(int path)
{
    const path_kernels *k = kernels_of(path);
    return k && k->cpu_has();
}

int lstm_fused_best_path(void)
{
    return lstm_best_path_of(LSTM_PATH_COUNT, lstm_fused_path_supported, LSTM_PATH_BLAS);
}

const char *lstm_fused_path_name(int path)
{
    static const char *const names[LSTM_PATH_COUNT] = {"portable", "avx2", "avx512"};
    return path >= 0 && path < LSTM_PATH_COUNT ? names[path] : "blas";
}

int lstm_fused_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

ptrdiff_t lstm_fused_panel_row_bytes(void)
{
    return 4 * AVX512_LANES * (ptrdiff_t)sizeof(float);
}

/* The kernels of `path`, or of the fastest path this CPU runs when it cannot
 * run that one (so a wrong request never executes an illegal instruction);
 * NULL where no fused path was built. */
static const path_kernels *usable(int path)
{
    return kernels_of(lstm_fused_path_supported(path) ? path : lstm_fused_best_path());
}

ptrdiff_t lstm_fused_forward_pack_size(int path, ptrdiff_t Ip, ptrdiff_t H, ptrdiff_t R)
{
    const path_kernels *k = usable(path);
    return k ? (H + k->lanes - 1) / k->lanes * k->lanes * 4 * (Ip + R) : 0;
}

ptrdiff_t lstm_fused_backward_pack_size(int path, ptrdiff_t H, ptrdiff_t R)
{
    const path_kernels *k = usable(path);
    return k ? (R + k->backward_units - 1) / k->backward_units * k->backward_units * 4 * H : 0;
}

void lstm_fused_pack_forward(int path, ptrdiff_t Ip, ptrdiff_t H, ptrdiff_t R, const float *W_ih,
                             const float *W_hh, float *W_f)
{
    const path_kernels *k = usable(path);
    if (k) k->pack_forward(Ip, H, R, W_ih, W_hh, W_f);
}

void lstm_fused_pack_backward(int path, ptrdiff_t H, ptrdiff_t R, const float *W_hh, float *W_b)
{
    const path_kernels *k = usable(path);
    if (k) k->pack_backward(H, R, W_hh, W_b);
}

void lstm_fused_forward(const lstm_blas *blas, int path, int nthreads, int by_rows,
                        ptrdiff_t T, ptrdiff_t N, const ptrdiff_t *batch, ptrdiff_t I,
                        ptrdiff_t Ip, ptrdiff_t H, ptrdiff_t P, const float *x, const float *W_ih,
                        const float *b, const float *W_hh, float *W_f, float *W_x,
                        const float *W_hr, const float *h0, const float *c0, float *gates,
                        int keep, float *y, float *cs, float *ms, int rev,
                        const lstm_rows_place *place, ptrdiff_t ldy)
{
    const path_kernels *k = usable(path);
    /* (placed rows need the batch of each step and no projection; a row stride of y
     * other than its width, no projection) */
    if (k && T > 0 && N > 0 && H > 0
        && (!place || (P == 0 && (batch || (place->ids && !x && Ip == 0 && !place->x && !place->y))))
        && (ldy <= 0 || ldy == (P > 0 ? P : H) || (P == 0 && ldy >= H)))
        k->forward(blas, nthreads, by_rows, T, N, batch, I, Ip, H, P, x, W_ih, b, W_hh, W_f, W_x,
                   W_hr, h0, c0, gates, keep, y, cs, ms, rev && !batch, place, ldy);
}

ptrdiff_t lstm_fused_backward_work_size(int nthreads, ptrdiff_t N, ptrdiff_t rows, ptrdiff_t I,
                                        ptrdiff_t H, ptrdiff_t P)
{
    const ptrdiff_t K = P > 0 ? P : H, G = 4 * H, Wp = lstm_grads_width(I + K);
    const ptrdiff_t parts = lstm_grads_work(rows, nthreads, G, Wp);
    /* and W_ih in backward panels (at most 64 wide) */
    return (P > 0 ? rows * P + N * H : 0) + (parts ? parts + (I + 63) / 64 * 64 * G : 0);
}

void lstm_fused_backward(const lstm_blas *blas, int path, int nthreads, int by_rows,
                         ptrdiff_t T, ptrdiff_t N, const ptrdiff_t *batch, ptrdiff_t I,
                         ptrdiff_t H, ptrdiff_t P, const float *x, const float *W_ih,
                         const float *W_b, const float *W_hr, const float *h0, const float *c0,
                         const float *y, const float *h_prev, const float *cs, const float *ms,
                         float *gates, const float *dy, float *dh, float *dc, float *dx,
                         float *dW_ih, float *dW_hh, float *dW_hr, float *db, float *work, int rev,
                         const int64_t *ids, ptrdiff_t V, float *dtab)
{
    const path_kernels *k = usable(path);
    if (!k || T <= 0 || N <= 0 || H <= 0) return;
    if (ids && (batch || P > 0 || h_prev)) return; /* (refused: the table's rows are [T, N]) */
    if (P > 0)
        k->backward_proj(blas, nthreads, T, N, batch, I, H, P, x, W_ih, W_b, W_hr, h0, c0, y,
                         h_prev, cs, ms, gates, dy, dh, dc, dx, dW_ih, dW_hh, dW_hr, db, work);
    else
        k->backward(blas, nthreads, by_rows, T, N, batch, I, H, x, W_ih, h0, c0, y, h_prev, cs,
                    W_b, gates, dy, dh, dc, dx, dW_ih, dW_hh, db, work, rev && !batch && !h_prev,
                    ids, V, dtab);
}

/* Every other step call reads the weights in the opposite order: the rows it
 * reads first are those the call before read last, still in the core's L2
 * when all of its share does not fit there. The order does not change the
 * result: each output is one row's own dot product. */
static int alternate(void)
{
#ifdef FASTLSTM_VECTOR_PATHS
    static unsigned calls;
    return (int)(__atomic_fetch_add(&calls, 1u, __ATOMIC_RELAXED) & 1u);
#else
    return 0;
#endif
}

void lstm_fused_step(const lstm_blas *blas, int path, int nthreads, ptrdiff_t L, ptrdiff_t N,
                     ptrdiff_t I0, ptrdiff_t H, const float *x, const float *const *W_ih,
                     const float *const *W_hh, const float *const *b, const float *h,
                     const float *c, float *gates, float *h_out, float *c_out)
{
    const path_kernels *k = usable(path);
    if (k && L > 0 && N > 0 && H > 0)
        k->step(blas, nthreads, L, N, I0, H, x, W_ih, W_hh, b, h, c, gates, h_out, c_out,
                alternate());
}

ptrdiff_t lstm_fused_lanes(int path)
{
    const path_kernels *k = usable(path);
    return k ? k->lanes : 0;
}

void lstm_fused_row_panels(int path, ptrdiff_t p0, ptrdiff_t p1, int down, ptrdiff_t Ip,
                           ptrdiff_t H, const float *W_f, const float *x, const float *add,
                           const float *h_prev, float *c, float *h)
{
    const path_kernels *k = usable(path);
    if (k && p1 > p0) k->row_panels(p0, p1, down, Ip, H, W_f, x, add, h_prev, c, h);
}

void lstm_fused_dot_rows(int path, ptrdiff_t m, ptrdiff_t k, const float *a, const float *x,
                         float *y)
{
    const path_kernels *kp = usable(path);
    if (kp && m > 0) kp->dot_rows(m, k, a, x, y);
}

void lstm_fused_activations(int path, ptrdiff_t n, const float *x, float *sig, float *th)
{
    const path_kernels *k = usable(path);
    if (k && n > 0) k->activations(n, x, sig, th);
}

int lstm_fused_softmax_xent(int path, int nthreads, ptrdiff_t M, ptrdiff_t V, const float *logits,
                            const int64_t *targets, float scale, float *dl, double *row_loss)
{
    const path_kernels *k = usable(path);
    if (!k) return 0;
    if (M > 0 && V > 0) k->softmax_xent(nthreads, M, V, logits, targets, scale, dl, row_loss);
    return 1;
}
