/* lstm_bf16.h - reduced-precision inference: LSTM weights rounded to bfloat16
 * and stored in 16 bits, products accumulated in float32. Not exact: each
 * weight is off by at most 2^-8 of itself (round to nearest even), so a gate's
 * pre-activation is off by at most 2^-8 * sum_k |w_k x_k| plus float32's own
 * rounding (the avx512bf16 path rounds the activations x to bf16 too: 2^-7).
 * Plain C (OpenMP optional), no Python.h.
 *
 * Why: at N = 1 a step is bound by reading the weights; in 16 bits they take
 * half the bytes, and the tutorial model's (2.3 MB instead of 4.7) fit in two
 * cores' L2 caches instead of streaming from L3 at every character.
 *
 * Paths, chosen at run time from the CPU (like lstm_fused.h's): avx512bf16
 * (VDPBF16PS: pairs of bf16 products per lane, activations rounded to bf16),
 * avx512 and avx2 (16-bit weights widened to float32 by a shift, then FMAs on
 * float32 activations), portable (the same in plain C vectors). A build
 * without vector extensions (FASTLSTM_NO_VECTOR_PATHS, MSVC) has none of
 * them: lstm_bf16_best_path says LSTM_BF16_NONE, and the caller runs its
 * float32 kernels on the widened weights (lstm_bf16_widen) instead. The
 * conversions and the packing exist in every build.
 *
 * Packed layout (the same for every path): the rows of W [NG * U, K] (NG
 * gate blocks of U units, e.g. 4 gates of H for an LSTM layer, 1 block of V
 * for a dense layer) in panels of 16 units; in a panel, for each pair of
 * k-columns (2q, 2q + 1), for each gate block, 16 32-bit words: unit u's
 * bf16 of column 2q in the low half and of column 2q + 1 in the high half
 * (what VDPBF16PS multiplies, and two float32 vectors by a shift and a mask).
 * The columns are those of A [NG * U, I] (may be none), zero padded to an
 * even count, then of B [NG * U, Kb], zero padded so that the pairs come in
 * an even number; units past U are zero.
 */
#ifndef FASTLSTM_LSTM_BF16_H
#define FASTLSTM_LSTM_BF16_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    LSTM_BF16_NONE = -1, /* no bf16 kernels in this build */
    LSTM_BF16_PORTABLE = 0,
    LSTM_BF16_AVX2 = 1,
    LSTM_BF16_AVX512 = 2,
    LSTM_BF16_AVX512BF16 = 3,
    LSTM_BF16_COUNT = 4 /* number of paths */
};

/* Fastest bf16 path this CPU and build run (LSTM_BF16_NONE: none). */
int lstm_bf16_best_path(void);
/* Whether `path` can run here. */
int lstm_bf16_path_supported(int path);
/* "portable", "avx2", "avx512", "avx512bf16"; "none" for LSTM_BF16_NONE. */
const char *lstm_bf16_path_name(int path);

/* out[i] = x[i] rounded to bfloat16 (nearest, ties to even; NaN stays a
 * quiet NaN of the same sign; values past the largest bf16 round to inf). */
void lstm_bf16_round(ptrdiff_t n, const float *x, uint16_t *out);
/* out[i] = the float32 value of the bf16 in[i] (exact). */
void lstm_bf16_widen(ptrdiff_t n, const uint16_t *in, float *out);

/* 32-bit words of a packed matrix of NG blocks of U units and I + Kb columns. */
ptrdiff_t lstm_bf16_pack_size(ptrdiff_t NG, ptrdiff_t U, ptrdiff_t I, ptrdiff_t Kb);
/* A: [NG * U, I] IN (NULL when I = 0), B: [NG * U, Kb] IN; Wp: [pack_size] OUT. */
void lstm_bf16_pack(ptrdiff_t NG, ptrdiff_t U, ptrdiff_t I, ptrdiff_t Kb, const float *A,
                    const float *B, uint32_t *Wp);

/* Floats of workspace lstm_bf16_forward needs (nthreads threads, N rows,
 * the widest layer input I0 or H). */
ptrdiff_t lstm_bf16_work_size(int nthreads, ptrdiff_t N, ptrdiff_t I0, ptrdiff_t H);

/* An inference pass of an L-layer stack over T steps, layer after layer.
 *   x:     [T, N, I0] IN
 *   Wp[l]: layer l's [W_ih | W_hh] packed by lstm_bf16_pack(4, H, I_l, H,
 *          W_ih, W_hh) (I_0 = I0, then H) IN
 *   b[l]:  [G] IN  b_ih + b_hh (float32)
 *   h0, c0: [L, N, H] IN
 *   y:     [T, N, H] OUT  the top layer's h_t
 *   seq:   [T, N, H] workspace between layers (unused, may be NULL, when L = 1)
 *   h_n, c_n: [L, N, H] OUT  final states (must not alias h0, c0)
 *   reverse: run the steps from t = T-1 down to 0 (a reverse direction)
 *   work:  [lstm_bf16_work_size(nthreads, N, I0, H)] scratch
 * A path this CPU cannot run is replaced by the best it can; nothing runs
 * where there is none (LSTM_BF16_NONE). */
void lstm_bf16_forward(int path, int nthreads, ptrdiff_t L, ptrdiff_t T, ptrdiff_t N, ptrdiff_t I0,
                       ptrdiff_t H, const float *x, const uint32_t *const *Wp,
                       const float *const *b, const float *h0, const float *c0, float *y,
                       float *seq, float *h_n, float *c_n, int reverse, float *work);

/* z [N, V] OUT = h [N, K] IN . W^T, W [V, K] packed by lstm_bf16_pack(1, V,
 * 0, K, NULL, W) (a dense layer without its bias), on the calling thread;
 * work: [lstm_bf16_work_size(1, min(N, 4), K, 0)] scratch. */
void lstm_bf16_dense(int path, ptrdiff_t N, ptrdiff_t K, ptrdiff_t V, const uint32_t *Wp,
                     const float *h, float *z, float *work);

/* For loops that run their own team of threads (the generation loop at one
 * row), on the calling thread:
 * lstm_bf16_row_size(I, H): floats of one row's activations [in | h];
 * lstm_bf16_row_activations: act [row_size(I, H)] OUT from in [I] and h [H];
 * lstm_bf16_row_panels: panels p0..p1-1 (16 units each; down: from the last)
 *   of one layer's step, Wp = lstm_bf16_pack(4, H, I, H, W_ih, W_hh), add [G]
 *   the bias (or, with I = 0, the input's whole part of the pre-activations),
 *   c [H] INOUT and h [H] OUT at those units;
 * lstm_bf16_dense_panels: z [p0 * 16, min(V, p1 * 16)) OUT of one row h [K]
 *   on a dense layer packed as for lstm_bf16_dense; work [row_size(0, K)]. */
ptrdiff_t lstm_bf16_row_size(ptrdiff_t I, ptrdiff_t H);
void lstm_bf16_row_activations(int path, const float *in, ptrdiff_t I, const float *h, ptrdiff_t H,
                               float *act);
void lstm_bf16_row_panels(int path, ptrdiff_t p0, ptrdiff_t p1, int down, ptrdiff_t I, ptrdiff_t H,
                          const uint32_t *Wp, const float *act, const float *add, float *c,
                          float *h);
void lstm_bf16_dense_panels(int path, ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t K, ptrdiff_t V,
                            const uint32_t *Wp, const float *h, float *z, float *work);

#ifdef __cplusplus
}
#endif

#endif
