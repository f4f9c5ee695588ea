/* lstm_fused.h - the fused float32 paths of the C backend: LSTM time loops
 * with the recurrent product fused into the gate math, on W_hh packed once
 * per call (by the loop's own threads, each its share), or once for many
 * calls (inference on fixed weights), into register-blocked panels. Plain C (OpenMP optional), no
 * Python.h. The BLAS path (float64, and float32 without a fused path) is in
 * lstm_blas_loop.h.
 *
 * Why: a BLAS call per step re-packs W_hh every time and runs the gate math
 * as a separate pass. Here each thread owns a fixed set of hidden units (a
 * "panel"), keeps its share of W_hh hot in its cache across steps, computes
 * the product for those units into registers and finishes their gates there.
 * Threads meet at one barrier per step.
 *
 * Three code paths from one source (csrc/lstm_fused_impl.h), chosen at run
 * time from the CPU: AVX-512 (16-lane panels), AVX2 (8) and portable (4,
 * plain C vectors that any compiler lowers for any CPU, aarch64 included).
 * Packed layouts depend on the path: pack with the path you run. A path this
 * CPU or build cannot run is replaced by the fastest one it can (never an
 * illegal instruction); where none was built the calls do nothing.
 *
 * Letters: T steps, N batch, H hidden, G = 4H; U = lanes of the path.
 */
#ifndef FASTLSTM_LSTM_FUSED_H
#define FASTLSTM_LSTM_FUSED_H

#include <stddef.h>
#include "lstm_blas_loop.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Kernel paths; LSTM_PATH_BLAS (no fused kernels: lstm_blas_loop.h) is what
 * lstm_fused_best_path says where no fused path can run. */
enum {
    LSTM_PATH_BLAS = -1,
    LSTM_PATH_PORTABLE = 0,
    LSTM_PATH_AVX2 = 1,
    LSTM_PATH_AVX512 = 2,
    LSTM_PATH_COUNT = 3 /* number of fused paths */
};

/* Fastest path this CPU (and this build) supports. */
int lstm_fused_best_path(void);
/* Whether `path` can run here (compiled in and supported by the CPU). */
int lstm_fused_path_supported(int path);
/* Name of a path ("avx512", "avx2", "portable"; "blas" for LSTM_PATH_BLAS). */
const char *lstm_fused_path_name(int path);
/* Number of OpenMP threads available (1 without OpenMP). */
int lstm_fused_max_threads(void);

/* Whether a forward of one row (N = 1) projects its next rows inside the steps
 * (on: the default) or hoists the projection as larger batches do (off): a
 * process-wide switch, set by the caller's cache rule (fastlstm/_config.py,
 * one_row_ahead). Either way the results are the same, bit for bit. */
void lstm_fused_set_one_row_ahead(int on);

/* The backward of the AVX-512 path computes its weight gradients on Intel AMX
 * (lstm_amx.h: float32 products from bf16 parts, as exact as float32's) for
 * every block of at least min_rows rows, where the CPU and OS allow it; 0:
 * never (the default). Process-wide, set by the caller (fastlstm/_config.py,
 * amx_rows). */
void lstm_fused_set_amx_rows(ptrdiff_t min_rows);

/* The forward of the AVX-512 path computes each step's input product x_t .
 * W_ih^T on Intel AMX (lstm_amx.h) in batches of at least min_rows rows, where
 * the CPU and OS allow it; 0: never (the default). Process-wide, set by the
 * caller (fastlstm/_config.py, amx_input_rows). */
void lstm_fused_set_amx_input_rows(ptrdiff_t min_rows);

/* A training forward whose gates take at least min_bytes stores them past the
 * caches (lstm_common.h, LSTM_KEEP_STREAM); 0: never. Process-wide, set by the
 * caller (fastlstm/_config.py, stream_gates_bytes). The results are the same. */
void lstm_fused_set_stream_gates(ptrdiff_t min_bytes);

/* Bytes per k-row of a packed forward panel at its widest (AVX-512: 4 gates
 * x 16 units x 4 bytes): what fastlstm/_config.py's fuse_input rule assumes
 * a streamed panel costs, for every path. */
ptrdiff_t lstm_fused_panel_row_bytes(void);

/* Floats needed by the forward pack (W_f; R = H, or P with a projection) and
 * the backward pack (W_b). */
ptrdiff_t lstm_fused_forward_pack_size(int path, ptrdiff_t Ip, ptrdiff_t H, ptrdiff_t R);
ptrdiff_t lstm_fused_backward_pack_size(int path, ptrdiff_t H, ptrdiff_t R);

/* W_ih: [G, Ip] IN (unused when Ip = 0), W_hh: [G, R] IN (R = H, or P with
 * a projection). W_f: [forward_pack_size(path, Ip, H, R)] OUT:
 * [W_ih | W_hh]^T in panels of U units x 4 gates, zero padded. Ip = I fuses
 * the input projection into the steps (worth it while both weights stay in
 * cache); Ip = 0 packs W_hh only and the projection is hoisted into one
 * product over all steps. */
void lstm_fused_pack_forward(int path, ptrdiff_t Ip, ptrdiff_t H, ptrdiff_t R, const float *W_ih,
                             const float *W_hh, float *W_f);
/* W_hh: [G, R] IN (R = H, or P with a projection).  W_b:
 * [backward_pack_size(path, H, R)] OUT, the R columns of W_hh in panels of 4U
 * on AVX-512 and 2U on the other paths, zero padded. */
void lstm_fused_pack_backward(int path, ptrdiff_t H, ptrdiff_t R, const float *W_hh, float *W_b);

/* Where the rows of a forward with a batch (variable lengths) live when they stay
 * in the caller's padded [T_pad, N, ...] arrays instead of packed ones: the loop
 * then reads x and writes y in place, and no copy goes in or out.
 *   x:    [rows] or NULL: packed row r's x is row x[r] of the padded x (viewed as
 *         [T_pad * N, I]); NULL: x is packed. Not with the BLAS projection (Ip =
 *         0 and W_x NULL), which reads x packed.
 *   y:    [rows]: packed row r's h is written to row y[r] of the padded y
 *         ([T_pad * N, K]), where the next step reads it back; and at each step t,
 *         row t * N + perm[n] of y is set to 0 for every sorted row n that has
 *         ended (n >= batch[t]). Rows of times T..T_pad-1 are the caller's.
 *   perm: [N] the batch row of each sorted row.
 * Only without a projection (P = 0); gates and cs stay packed.
 * Or, for a forward on the caller's input projection (x NULL, Ip = 0, no batch
 * needed, P = 0; x, y and perm NULL):
 *   ids, table: row r's input projection (bias included) is row ids[r] of table
 *         ([V, G], ids in [0, V), unchecked), read by the loop itself, instead of
 *         gates[r] on entry (the char model's embedding folded into a table; no
 *         gather of [rows, G] first). gates are written as ever. */
typedef struct {
    const ptrdiff_t *x, *y, *perm;
    const int64_t *ids;
    const float *table;
} lstm_rows_place;

/* Forward pass of one layer, input projection included.
 *   batch: [T] or NULL  rows per step with variable lengths (lstm_common.h:
 *                       x, gates, y, cs and ms are then packed, `rows` rows in
 *                       all instead of T*N, and h0, c0 sorted as batch says)
 *   P:     0, or the projection size (0 < P < H); K = P, or H without one
 *   x:     [rows, I] IN, or NULL (then Ip = 0): gates hold the input projection
 *          (x . W_ih^T + b, the caller's) on entry, and W_ih and b are not read
 *   W_ih:  [G, I] IN
 *   b:     [G] IN         b_ih + b_hh
 *   Ip:    0 or I: the input projection fused into the steps, or hoisted
 *   W_hh:  [G, K] IN, or NULL
 *   W_f:   [forward_pack_size(path, Ip, H, K)] the packed [W_ih | W_hh]: OUT with
 *          W_hh (the threads pack it, each its own share, which then starts
 *          out in its own cache), else IN (lstm_fused_pack_forward, same path,
 *          Ip and R = K: packed once for many calls)
 *   W_x:   NULL, or [forward_pack_size(path, I, H, 0)] workspace: with Ip = 0
 *          and x, the hoisted projection runs on the fused kernels, on W_ih
 *          packed there, instead of BLAS. With W_ih NULL, W_x is IN instead
 *          (lstm_fused_pack_forward(path, I, H, 0, W_ih, NULL, W_x): packed
 *          once for many calls); W_ih may be NULL only then, or with Ip = I
 *          and W_hh NULL (nothing reads it)
 *   W_hr:  [P, H] IN (NULL when P = 0)
 *   h0:    [N, K] IN, c0: [N, H] IN
 *   gates: [rows, G] OUT   activated gates (kept for backward); with keep = 0
 *                          (inference: no backward follows) only scratch
 *   y:     [rows, K] OUT   h_t
 *   cs:    [rows, H] OUT   c_t; with keep = LSTM_KEEP_RING (below) only in its
 *                          rows of the first two steps (a ring)
 *   ms:    [rows, H] OUT   o * tanh(c_t), projected into h_t (only with P)
 * blas: lstm_blas_loop.h. Every size must fit an int for BLAS except T*N,
 * which is cut into chunks. nthreads <= 1 runs single-threaded. by_rows: the threads split each step
 * by batch rows (each reads all of W_f, and only the h rows it wrote itself)
 * instead of by hidden units (each reads its share of W_f, and all of h).
 * rev (with batch NULL): a reverse pass over full lengths, in place: step t
 * runs time T-1-t, so every [T, N, ...] array keeps its time order (no
 * copies in step order); its final state is then at time 0.
 * place: NULL, or (with batch and P = 0) where the rows are, or (x NULL, P = 0)
 *        where the input projection's rows are (lstm_rows_place).
 * ldy: 0, or without a projection the row stride of y in floats (>= H): its rows
 *      [T * N or rows, H] ldy apart instead of H (one direction's half of a
 *      bidirectional layer's output, written in place).
 */
/* keep = LSTM_KEEP_RING (an inference forward): nothing kept for backward, not
 * even every step's c_t: step t's rows of c_t go to the rows of cs from (t odd ?
 * the first step's row count : 0), where the next step reads them back (each row's
 * last c_t stays there: a row that ends leaves the steps after it). cs then needs
 * the first two steps' rows only, and 2 * N * H floats of it stay in the caches
 * instead of T * N * H going out to memory. */
#define LSTM_KEEP_RING (-1)

void lstm_fused_forward(const lstm_blas *blas, int path, int nthreads, int by_rows,
                        ptrdiff_t T, ptrdiff_t N, const ptrdiff_t *batch, ptrdiff_t I,
                        ptrdiff_t Ip, ptrdiff_t H, ptrdiff_t P, const float *x, const float *W_ih,
                        const float *b, const float *W_hh, float *W_f, float *W_x,
                        const float *W_hr, const float *h0, const float *c0, float *gates,
                        int keep, float *y, float *cs, float *ms, int rev,
                        const lstm_rows_place *place, ptrdiff_t ldy);

/* Backward pass of one layer.
 *   batch, P, x, W_ih, W_hr, h0, c0, y, cs, ms   IN  as in the forward pass
 *   h_prev: [rows, K] IN or NULL  the h each row read (needed with batch;
 *                        NULL: h0, then y one step behind)
 *   W_b:   W_hh packed by lstm_fused_pack_backward (same path, R = K) IN
 *   gates: [rows, G] INOUT activated gates in; pre-activation gradients dP out
 *   dy:    [rows, K] IN
 *   dh:    [N, K] INOUT   dh_T in; dh_0 out
 *   dc:    [N, H] INOUT   dc_T in; dc_0 out
 *   dx:    [rows, I] OUT
 *   dW_ih: [G, I], dW_hh: [G, K], dW_hr: [P, H], db: [G]  INOUT accumulated (+=)
 *   work:  [lstm_fused_backward_work_size(nthreads, N, rows, I, H, P)] workspace;
 *          NULL without a projection is allowed (dx and the weight gradients
 *          are then BLAS products, each of which copies all of dP first)
 * nthreads and by_rows as in lstm_fused_forward (W_b for W_f, dP for h); with
 * a projection the threads take their share of the P features of dh_t, then
 * of the hidden units (dm = dh_t . W_hr and the gate math), by_rows unused.
 * rev: after a forward with rev (batch and h_prev NULL, no projection).
 * ids, V, dtab: NULL, 0, NULL; or after a forward on a table's rows (lstm_rows_place
 *        ids; batch, h_prev NULL, P = 0): dtab [V, G] INOUT += the rows of dP added
 *        up by id (the table's gradient), each row while the weight gradients have
 *        it in cache, instead of a pass over all of dP after this call.
 */
/* Floats of lstm_fused_backward's workspace (K = P, or H): with a projection
 * dh_t [rows, P] and dm [N, H]; then for each thread a [G, I + K] part of the
 * weight gradients and a block of rows of [x | h] (lstm_common.h), and W_ih
 * packed for dx. */
ptrdiff_t lstm_fused_backward_work_size(int nthreads, ptrdiff_t N, ptrdiff_t rows, ptrdiff_t I,
                                        ptrdiff_t H, ptrdiff_t P);

void lstm_fused_backward(const lstm_blas *blas, int path, int nthreads, int by_rows,
                         ptrdiff_t T, ptrdiff_t N, const ptrdiff_t *batch, ptrdiff_t I,
                         ptrdiff_t H, ptrdiff_t P, const float *x, const float *W_ih,
                         const float *W_b, const float *W_hr, const float *h0, const float *c0,
                         const float *y, const float *h_prev, const float *cs, const float *ms,
                         float *gates, const float *dy, float *dh, float *dc, float *dx,
                         float *dW_ih, float *dW_hh, float *dW_hr, float *db, float *work, int rev,
                         const int64_t *ids, ptrdiff_t V, float *dtab);

/* One time step of an L-layer stack, for generation with a carried state.
 *   x:       [N, I0] IN
 *   W_ih[l]: [G, I_l] IN (I_0 = I0, I_l = H after), W_hh[l]: [G, H] IN,
 *   b[l]:    [G] IN (b_ih + b_hh)                    l = 0 .. L-1
 *   h, c:    [L, N, H] IN     carried state
 *   gates:   [N, G] workspace
 *   h_out, c_out: [L, N, H] OUT  new state (must not alias h, c)
 */
void lstm_fused_step(const lstm_blas *blas, int path, int nthreads, ptrdiff_t L, ptrdiff_t N,
                     ptrdiff_t I0, ptrdiff_t H, const float *x, const float *const *W_ih,
                     const float *const *W_hh, const float *const *b, const float *h,
                     const float *c, float *gates, float *h_out, float *c_out);

/* Units per forward panel of `path` (0 where no fused path was built). */
ptrdiff_t lstm_fused_lanes(int path);

/* For loops that run their own team of threads (the generation loop at one
 * row): panels p0..p1-1 of one layer's step for one row, on the calling
 * thread. W_f: lstm_fused_pack_forward(path, Ip, H, H) IN; x: [Ip] IN (Ip >
 * 0: the input fused); add: [G] IN, the bias, or with Ip = 0 the input's
 * whole part of the pre-activations (bias included); h_prev: [H] IN; c: [H]
 * INOUT and h: [H] OUT at these panels' units. down: the panels from the
 * last to the first (the same sums). */
void lstm_fused_row_panels(int path, ptrdiff_t p0, ptrdiff_t p1, int down, ptrdiff_t Ip,
                           ptrdiff_t H, const float *W_f, const float *x, const float *add,
                           const float *h_prev, float *c, float *h);
/* y [m] OUT = A [m, k] IN (row-major) . x [k] IN, on the calling thread. */
void lstm_fused_dot_rows(int path, ptrdiff_t m, ptrdiff_t k, const float *a, const float *x,
                         float *y);

/* sigmoid and tanh of x [n], as the fused kernels of path compute them (for
 * tests of their accuracy); nothing is written on a path without kernels. */
void lstm_fused_activations(int path, ptrdiff_t n, const float *x, float *sig, float *th);

/* Softmax cross-entropy of M rows of V logits against integer targets, and its
 * gradient, in one pass over each row on nthreads threads (the char model's loss,
 * fastlstm/charlm/nn.py): logits [M, V] IN, targets [M] IN in [0, V) (unchecked),
 * dl [M, V] OUT = (softmax - onehot) * scale (may be logits), row_loss [M] OUT =
 * log sum exp(x - max) - (x[target] - max). exp is the kernels' (about 1 ulp).
 * Returns 0, and writes nothing, when path has no fused kernels here. */
int lstm_fused_softmax_xent(int path, int nthreads, ptrdiff_t M, ptrdiff_t V, const float *logits,
                            const int64_t *targets, float scale, float *dl, double *row_loss);

#ifdef __cplusplus
}
#endif

#endif
