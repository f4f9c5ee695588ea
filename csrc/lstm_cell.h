/* lstm_cell.h - the BLAS path's gate math: one time step's pointwise LSTM
 * cell, forward and backward, scalar C for float and double. The BLAS-path
 * time loops (lstm_blas_loop_impl.h) call them once per step between BLAS
 * products; the fused float32 paths have their own vector copy in
 * lstm_fused_impl.h. Nothing here allocates, validates or knows about Python.
 *
 * Letters: N batch, H hidden size, G = 4H. Gate order i, f, g, o: row n of a
 * gates block holds [i(H) | f(H) | g(H) | o(H)], the layout of x.W_ih^T.
 * All arrays are C-contiguous. Sizes are ptrdiff_t so that N*G never wraps.
 */
#ifndef FASTLSTM_LSTM_CELL_H
#define FASTLSTM_LSTM_CELL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Forward step.
 *   gates:  [N, G] INOUT  pre-activations (bias and both products added) in;
 *                         activated gates (sigma(i), sigma(f), tanh(g), sigma(o)) out,
 *                         which is what the backward step needs.
 *   c_prev: [N, H] IN     cell state of the previous step.
 *   c:      [N, H] OUT    new cell state c = f*c_prev + i*g. May not alias c_prev.
 *   h:      [N, H] OUT    new hidden state h = o*tanh(c).
 */
void lstm_cell_forward_f32(ptrdiff_t N, ptrdiff_t H, float *gates,
                           const float *c_prev, float *c, float *h);
void lstm_cell_forward_f64(ptrdiff_t N, ptrdiff_t H, double *gates,
                           const double *c_prev, double *c, double *h);

/* Backward step (derivatives written on the saved activations).
 *   gates:   [N, G] IN     activated gates saved by the forward step.
 *   c_prev:  [N, H] IN     cell state of the previous step (c0 at t = 0).
 *   c:       [N, H] IN     cell state of this step.
 *   dy:      [N, H] IN     gradient reaching h_t from the layer's output.
 *   dh_next: [N, H] IN     gradient reaching h_t from step t+1 (dP[t+1].W_hh),
 *                         or NULL when dy already holds all of it.
 *   dc:      [N, H] INOUT  gradient reaching c_t from step t+1 in;
 *                          gradient reaching c_{t-1} out.
 *   dgates:  [N, G] OUT    gradient of the pre-activations of this step.
 *                          May alias gates exactly (each element is read
 *                          before it is written), never partially overlap.
 */
void lstm_cell_backward_f32(ptrdiff_t N, ptrdiff_t H, const float *gates,
                            const float *c_prev, const float *c,
                            const float *dy, const float *dh_next,
                            float *dc, float *dgates);
void lstm_cell_backward_f64(ptrdiff_t N, ptrdiff_t H, const double *gates,
                            const double *c_prev, const double *c,
                            const double *dy, const double *dh_next,
                            double *dc, double *dgates);

#ifdef __cplusplus
}
#endif

#endif
