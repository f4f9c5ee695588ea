/* lstm_generate.h - the character model's compiled generation loop: per new
 * character the L-layer step (lstm_fused.h), the dense layer, temperature,
 * top-k and the draw, feeding each drawn character back as the next input,
 * without returning to the caller. Plain C, no Python.h; float32.
 *
 * The draw is the Gumbel-max trick: argmax(z / temperature + G) with G the
 * caller's noise, so that the caller's random stream (NumPy's, in blocks)
 * decides the text; the temperature is folded into the dense weights.
 */
#ifndef FASTLSTM_LSTM_GENERATE_H
#define FASTLSTM_LSTM_GENERATE_H

#include <stddef.h>
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
} lstm_gen_model;

/* Floats of workspace lstm_generate needs. */
ptrdiff_t lstm_generate_work_size(const lstm_gen_model *m);

/* n characters. Character k comes from the logits of the current top-layer
 * output h_top, plus noise[k] (Gumbel noise already plus the scaled bias;
 * NULL: greedy, argmax of the logits plus bias); then it is fed back: one
 * step of the stack moves h, c on.
 *   h_top: [H] INOUT        the top layer's output that the next logits read
 *   h, c:  [L, H] INOUT     the carried state
 *   work:  [lstm_generate_work_size] scratch
 *   ids:   [n] OUT
 * path and nthreads as for lstm_fused_step (LSTM_PATH_BLAS: the BLAS loop's step). */
void lstm_generate(const lstm_blas *blas, int path, int nthreads, const lstm_gen_model *m,
                   ptrdiff_t n, const float *noise, float *h_top, float *h, float *c,
                   float *work, int *ids);

#ifdef __cplusplus
}
#endif

#endif
