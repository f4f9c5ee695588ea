/* lstm_blas_loop.h - the BLAS path of the C backend: whole-sequence LSTM time
 * loops, float32 and float64, with every product a call to the caller's BLAS
 * and the gate math in the scalar cell functions of lstm_cell.c. Float64
 * always runs here; float32 when FASTLSTM_KERNEL=blas or no fused path was
 * built. Plain C, no Python.h; nothing is allocated.
 *
 * Letters: T steps, N batch, I input size, H hidden size, G = 4H, L layers.
 * Arrays are C-contiguous; every size must fit an int (BLAS's) except T*N,
 * which the loops cut into chunks.
 */
#ifndef FASTLSTM_LSTM_BLAS_LOOP_H
#define FASTLSTM_LSTM_BLAS_LOOP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* BLAS entry points, passed in by the caller (csrc/ links no BLAS): the
 * Fortran interfaces of sgemm, dgemm, sgemv and dgemv. set_threads_local,
 * when not NULL, sets the BLAS library's thread count for the calling thread
 * only and returns the previous one (OpenBLAS's
 * openblas_set_num_threads_local); the fused paths' threads use it. */
typedef void (*lstm_sgemm_fn)(const char *transa, const char *transb, const int *m,
                              const int *n, const int *k, const float *alpha,
                              const float *a, const int *lda, const float *b, const int *ldb,
                              const float *beta, float *c, const int *ldc);
typedef void (*lstm_dgemm_fn)(const char *transa, const char *transb, const int *m,
                              const int *n, const int *k, const double *alpha,
                              const double *a, const int *lda, const double *b, const int *ldb,
                              const double *beta, double *c, const int *ldc);
typedef void (*lstm_sgemv_fn)(const char *trans, const int *m, const int *n, const float *alpha,
                              const float *a, const int *lda, const float *x, const int *incx,
                              const float *beta, float *y, const int *incy);
typedef void (*lstm_dgemv_fn)(const char *trans, const int *m, const int *n, const double *alpha,
                              const double *a, const int *lda, const double *x, const int *incx,
                              const double *beta, double *y, const int *incy);
typedef int (*lstm_set_threads_fn)(int);
typedef struct {
    lstm_sgemm_fn sgemm;
    lstm_dgemm_fn dgemm;
    lstm_sgemv_fn sgemv;
    lstm_dgemv_fn dgemv;
    lstm_set_threads_fn set_threads_local;
} lstm_blas;

/* Forward pass of one layer: one product for the input projection of all
 * steps, then per step the recurrent product and the cell (and with a
 * projection, one more product: h_t = W_hr . m_t).
 *   batch: [T] or NULL  rows per step with variable lengths (lstm_common.h:
 *                       the per-step arrays below are then packed, `rows`
 *                       rows in all instead of T*N)
 *   P:     0, or the projection size (0 < P < H); K = P, or H without one
 *   x:     [rows, I] IN, or NULL: gates hold the input projection (x . W_ih^T
 *          + b, the caller's) on entry, and W_ih and b are not read
 *   W_ih:  [G, I] IN, W_hh: [G, K] IN, W_hr: [P, H] IN (NULL when P = 0)
 *   b:     [G] IN        b_ih + b_hh
 *   h0:    [N, K] IN, c0: [N, H] IN   (rows sorted as batch says)
 *   gates: [rows, G] OUT  activated gates (what backward reads)
 *   y:     [rows, K] OUT  h_t
 *   cs:    [rows, H] OUT  c_t
 *   ms:    [rows, H] OUT  o * tanh(c_t) before the projection (only with P)
 */
void lstm_blas_forward_f32(const lstm_blas *blas, ptrdiff_t T, ptrdiff_t N, const ptrdiff_t *batch,
                           ptrdiff_t I, ptrdiff_t H, ptrdiff_t P, const float *x,
                           const float *W_ih, const float *W_hh, const float *W_hr,
                           const float *b, const float *h0, const float *c0, float *gates,
                           float *y, float *cs, float *ms);
void lstm_blas_forward_f64(const lstm_blas *blas, ptrdiff_t T, ptrdiff_t N, const ptrdiff_t *batch,
                           ptrdiff_t I, ptrdiff_t H, ptrdiff_t P, const double *x,
                           const double *W_ih, const double *W_hh, const double *W_hr,
                           const double *b, const double *h0, const double *c0, double *gates,
                           double *y, double *cs, double *ms);

/* Backward pass of one layer: per step (t = T-1 .. 0) the cell and
 * dh = dP[t] . W_hh, then the products over all steps.
 *   batch, P, x, W_ih, W_hh, W_hr, h0, c0, y, cs, ms  IN  as in the forward pass
 *   h_prev: [rows, K] IN or NULL  the h each row read (needed when packed;
 *                       NULL: h0, then y one step behind)
 *   gates: [rows, G] INOUT activated gates in; pre-activation gradients dP out
 *   dy:    [rows, K] IN
 *   dh:    [N, K] INOUT   dh_T in; dh_0 out
 *   dc:    [N, H] INOUT   dc_T in; dc_0 out
 *   dx:    [rows, I] OUT
 *   dW_ih: [G, I], dW_hh: [G, K], dW_hr: [P, H], db: [G]  INOUT accumulated (+=)
 *   work:  [rows * P + N * H] workspace with a projection (else unused)
 */
void lstm_blas_backward_f32(const lstm_blas *blas, ptrdiff_t T, ptrdiff_t N,
                            const ptrdiff_t *batch, ptrdiff_t I, ptrdiff_t H, ptrdiff_t P,
                            const float *x, const float *W_ih, const float *W_hh,
                            const float *W_hr, const float *h0, const float *c0, const float *y,
                            const float *h_prev, const float *cs, const float *ms, float *gates,
                            const float *dy, float *dh, float *dc, float *dx, float *dW_ih,
                            float *dW_hh, float *dW_hr, float *db, float *work);
void lstm_blas_backward_f64(const lstm_blas *blas, ptrdiff_t T, ptrdiff_t N,
                            const ptrdiff_t *batch, ptrdiff_t I, ptrdiff_t H, ptrdiff_t P,
                            const double *x, const double *W_ih, const double *W_hh,
                            const double *W_hr, const double *h0, const double *c0,
                            const double *y, const double *h_prev, const double *cs,
                            const double *ms, double *gates, const double *dy, double *dh,
                            double *dc, double *dx, double *dW_ih, double *dW_hh, double *dW_hr,
                            double *db, double *work);

/* One time step of an L-layer stack (generation with a carried state).
 *   x:       [N, I0] IN
 *   W_ih[l]: [G, I_l] IN (I_0 = I0, I_l = H after; may be NULL when I_l = 0),
 *   W_hh[l]: [G, H] IN, b[l]: [G] IN (b_ih + b_hh)        l = 0 .. L-1
 *   h, c:    [L, N, H] IN   carried state
 *   gates:   [N, G] workspace
 *   h_out, c_out: [L, N, H] OUT  new state (must not alias h, c)
 */
void lstm_blas_step_f32(const lstm_blas *blas, ptrdiff_t L, ptrdiff_t N, ptrdiff_t I0,
                        ptrdiff_t H, const float *x, const float *const *W_ih,
                        const float *const *W_hh, const float *const *b, const float *h,
                        const float *c, float *gates, float *h_out, float *c_out);
void lstm_blas_step_f64(const lstm_blas *blas, ptrdiff_t L, ptrdiff_t N, ptrdiff_t I0,
                        ptrdiff_t H, const double *x, const double *const *W_ih,
                        const double *const *W_hh, const double *const *b, const double *h,
                        const double *c, double *gates, double *h_out, double *c_out);

/* One Adam step (PyTorch's rule, bias corrections folded into a and e) over n
 * elements: with g' = g + wd p, m = m + (g' - m) c1, v = v + (g'^2 - v) c2,
 * p -= m / (sqrt(v) + e) a. p, m, v [n] INOUT, g [n] IN; c1 = 1 - beta1,
 * c2 = 1 - beta2 (the trainer's optimizer, fastlstm/charlm/nn.py). On nthreads threads
 * (elementwise: the same numbers on any number). */
void lstm_adam_step_f32(int nthreads, ptrdiff_t n, float *p, const float *g, float *m, float *v,
                        float c1, float c2, float a, float e, float wd);
void lstm_adam_step_f64(int nthreads, ptrdiff_t n, double *p, const double *g, double *m,
                        double *v, double c1, double c2, double a, double e, double wd);

/* Row-major c [M, N] OUT = op(a) [M, K] . op(b) [K, N], the rows of c split over
 * nthreads threads (OpenMP, each one single-threaded BLAS call): op(a) is a
 * [M, K] stored row-major with leading dimension lda (ta 'N'), or a [K, M]
 * stored so, transposed (ta 'T'); op(b) likewise ([K, N], or 'T': [N, K]).
 * The dense layer's products, on the LSTM kernels' own threads. */
void lstm_parallel_matmul_f32(const lstm_blas *blas, int nthreads, char ta, char tb, ptrdiff_t M,
                              ptrdiff_t N, ptrdiff_t K, const float *a, ptrdiff_t lda,
                              const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc);
void lstm_parallel_matmul_f64(const lstm_blas *blas, int nthreads, char ta, char tb, ptrdiff_t M,
                              ptrdiff_t N, ptrdiff_t K, const double *a, ptrdiff_t lda,
                              const double *b, ptrdiff_t ldb, double *c, ptrdiff_t ldc);

/* dst [V, G] INOUT: dst[ids[r]] += src[r] for r = 0 .. rows-1, src [rows, G] IN,
 * ids [rows] IN in [0, V) (unchecked): the gradient of a row gather (an
 * embedding, or a table of input projections by id). On nthreads threads, which
 * split the columns: the same numbers on any number. */
void lstm_scatter_add_rows_f32(int nthreads, ptrdiff_t rows, ptrdiff_t G, const int64_t *ids,
                               const float *src, float *dst);
void lstm_scatter_add_rows_f64(int nthreads, ptrdiff_t rows, ptrdiff_t G, const int64_t *ids,
                               const double *src, double *dst);

/* p [n bytes] OUT: zeros, on nthreads threads (the trainer's gradients between steps). */
void lstm_zero_bytes(int nthreads, ptrdiff_t n, void *p);

/* out [n] OUT: words 1..n of the SplitMix64 sequence from state key (word i is
 * the output function of key + i * 0x9E3779B97F4A7C15): the random bits of
 * dropout's masks (fastlstm/_dropout.py, whose NumPy fallback computes the same
 * words), on nthreads threads, the same words on any number. */
void lstm_splitmix_words(int nthreads, uint64_t key, ptrdiff_t n, uint64_t *out);

/* Inverted dropout from 16 random bits an element: m = (bits[i] >= threshold) *
 * scale (0 or scale), y[i] = x[i] * m (bit for bit (x * keep) * scale), and
 * mask[i] = m unless mask is NULL; n elements, on nthreads threads. y may be x. */
void lstm_dropout_f32(int nthreads, ptrdiff_t n, const uint16_t *bits, unsigned threshold,
                      float scale, const float *x, float *y, float *mask);
void lstm_dropout_f64(int nthreads, ptrdiff_t n, const uint16_t *bits, unsigned threshold,
                      double scale, const double *x, double *y, double *mask);

/* dst [rows, F] OUT: row r is src's row from[r] (src [*, F] IN), or zeros where
 * from[r] < 0 (from unchecked against src's rows), on nthreads threads: the
 * gathers and scatters between a padded batch and its rows in step order
 * (fastlstm/backends/_steps.py). */
void lstm_move_rows_f32(int nthreads, ptrdiff_t rows, ptrdiff_t F, const int64_t *from,
                        const float *src, float *dst);
void lstm_move_rows_f64(int nthreads, ptrdiff_t rows, ptrdiff_t F, const int64_t *from,
                        const double *src, double *dst);

#ifdef __cplusplus
}
#endif

#endif
