/* lstm_generate.h - the character model's compiled generation loop: per new
 * character the L-layer step (lstm_fused.h), the dense layer, temperature,
 * top-k and the draw, feeding each drawn character back as the next input,
 * without returning to the caller. Plain C, no Python.h; float32 weights, or
 * bf16 weights (lstm_bf16.h) with float32 sums.
 *
 * The draw is the Gumbel-max trick: argmax(z / temperature + G) with G the
 * caller's noise, so that the caller's random stream (NumPy's, in blocks)
 * decides the text; the temperature is folded into the dense weights.
 */
#ifndef FASTLSTM_LSTM_GENERATE_H
#define FASTLSTM_LSTM_GENERATE_H

#include <stddef.h>
#include <stdint.h>
#include "lstm_blas_loop.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The model, as the loop reads it. Letters: L layers, H hidden, V vocabulary,
 * I0 the input size of layer 0 (E with an embedding, else 1), G = 4H. */
typedef struct {
    ptrdiff_t L, H, I0, V;
    const float *const *W_ih; /* [L] of [G, I_l] (I_0 = I0, then H) */
    const float *const *W_hh; /* [L] of [G, H] */
    const float *const *b;    /* [L] of [G]: b_ih + b_hh */
    const float *emb;         /* [V, I0] embedding, or NULL: the input is id / V (I0 = 1) */
    const float *WT;          /* [H, V] dense weights, transposed, times 1 / temperature */
    const float *bias;        /* [V] dense bias times 1 / temperature */
    ptrdiff_t top_k;          /* sample among the top_k likeliest (0 < top_k < V), else 0 */
    /* Optional, for batches (N >= 2) on a fused path: [L] of [W_ih | W_hh] packed by
     * lstm_fused_pack_forward(path, I_l, H, H) once for the whole generation, and the
     * threads and split of lstm_fused_forward; NULL: every step is lstm_fused_step. */
    const float *const *W_f;
    int batch_threads, by_rows;
    /* Optional: bf16 weights (lstm_bf16.h). With W_bf16 set ([L] of [W_ih | W_hh]
     * packed by lstm_bf16_pack(4, H, I_l, H, ...)), every step is lstm_bf16_forward on
     * bf16_path with bf16_threads, and the logits come from WT_bf16 (the dense weights
     * [V, H] times 1 / temperature, packed by lstm_bf16_pack(1, V, 0, H, NULL, W));
     * W_ih, W_hh, W_f and WT are then not read. NULL: float32. */
    const uint32_t *const *W_bf16;
    const uint32_t *WT_bf16;
    int bf16_path, bf16_threads;
} lstm_gen_model;

/* Floats of workspace lstm_generate needs for N rows. */
ptrdiff_t lstm_generate_work_size(const lstm_gen_model *m, ptrdiff_t N);

/* n characters for each of N independent rows (samples). Character k of row r
 * comes from the logits of the row's current top-layer output, plus
 * noise[k, r] (Gumbel noise already plus the scaled bias; noise NULL: greedy,
 * the argmax of the logits plus bias); then every row's character is fed
 * back: one step of the stack (batch N) moves h, c on.
 *   h_top: [N, H] INOUT     the top layer's output that the next logits read
 *   h, c:  [L, N, H] INOUT  the carried state
 *   noise: [n, N, V] IN or NULL
 *   work:  [lstm_generate_work_size(m, N)] scratch
 *   ids:   [n, N] OUT (-1 from the first position where scratch memory ran out)
 * A row's logits and draw depend on that row only; the step's products for
 * N > 1 sum in another order than for one row (float rounding).
 * path and nthreads as for lstm_fused_step (LSTM_PATH_BLAS: the BLAS loop's step). */
void lstm_generate(const lstm_blas *blas, int path, int nthreads, const lstm_gen_model *m,
                   ptrdiff_t n, ptrdiff_t N, const float *noise, float *h_top, float *h, float *c,
                   float *work, int *ids);

/* One row (one sample) on weights packed once for the whole generation, in
 * one team of threads for a whole chunk (no team started per character), the
 * embedding folded into a table. Letters as above; G = 4H. */
typedef struct {
    ptrdiff_t L, H, V;
    const float *table;       /* [V, G]: layer 0's input projection of each id, plus b[0] */
    const float *const *b;    /* [L] of [G]: b_ih + b_hh (b[0] is not read: in the table) */
    /* float32: [L] of lstm_fused_pack_forward(path, l ? H : 0, H, H, W_ih[l], W_hh[l]) and the
     * dense weights [V, H] times 1 / temperature; bf16 (W_bf16 set, W not read): [L] of
     * lstm_bf16_pack(4, H, l ? H : 0, H, W_ih[l], W_hh[l]) and the dense weights packed by
     * lstm_bf16_pack(1, V, 0, H, NULL, dense), on bf16_path */
    const float *const *W;
    const float *dense;
    const uint32_t *const *W_bf16;
    const uint32_t *dense_bf16;
    int bf16_path;
    const float *bias;        /* [V] dense bias times 1 / temperature */
    ptrdiff_t top_k;          /* as in lstm_gen_model */
} lstm_gen_row;

/* Floats of workspace lstm_generate_row needs with nthreads threads. */
ptrdiff_t lstm_generate_row_work_size(const lstm_gen_row *m, int nthreads);

/* n characters of one row, as lstm_generate with N = 1 draws them (the same
 * noise; the sums may round differently): h, c [L, H] INOUT the carried
 * state (h[L - 1] is what the first logits read), noise [n, V] or NULL,
 * ids [n] OUT. path: the fused float32 path (float32 weights) and nthreads
 * the team (each thread takes its share of the units of every layer and of
 * the logits; three barriers per character with two layers). */
void lstm_generate_row(const lstm_blas *blas, int path, int nthreads, const lstm_gen_row *m,
                       ptrdiff_t n, const float *noise, float *h, float *c, float *work, int *ids);

#ifdef __cplusplus
}
#endif

#endif
