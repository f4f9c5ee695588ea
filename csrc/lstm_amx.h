/* lstm_amx.h - float32 products on Intel AMX tiles (lstm_amx.c): the weight
 * gradients of the fused backward (lstm_fused_impl.h, weight_grads) and the
 * input product x_t . W_ih^T of the fused forward's steps (FN(forward)).
 *
 * AMX multiplies bf16 tiles only. Each float32 operand is split into three
 * bf16 parts, a = a0 + a1 + a2 (8 significant bits each: all 24 of a float,
 * exactly, for normal values), and a.b is summed from the six part products
 * that float32 can see, a0.b0 + (a0.b1 + a1.b0) + (a0.b2 + a1.b1 + a2.b0);
 * the three left out are below 2^-24 of a.b. Each part product is exact in
 * the tiles' float32 sums, so the result is as close to the exact product as
 * a float32 loop's (tests/test_amx.py), summed in another order.
 *
 * Every function may be called in any build: where AMX was not compiled in
 * (another compiler, OS or CPU family) lstm_amx_ready() is 0 and
 * lstm_amx_grads returns 0 without doing anything.
 */
#ifndef FASTLSTM_LSTM_AMX_H
#define FASTLSTM_LSTM_AMX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when this CPU has AMX-BF16 and AVX512-BF16 and the OS lets this process use
 * the tiles (asked for once, with Linux's arch_prctl); 0 otherwise. */
int lstm_amx_ready(void);

/* C [G, W] (+)= dP [n, G]^T . xh [n, W] (= unless accumulate), xh as
 * lstm_gather_xh lays it out (panels of pw columns; W a multiple of 16), on the
 * calling thread. Returns 1, or 0 (C untouched) where AMX cannot run or its
 * buffers cannot be had: the caller then runs its own loop. */
int lstm_amx_grads(ptrdiff_t n, ptrdiff_t G, ptrdiff_t W, const float *dP, const float *xh,
                   ptrdiff_t pw, float *C, int accumulate);

/* ---- the forward's input product, a chunk of steps' rows at a time --------
 * Layouts (uint16 bf16 values; ks = k-steps of 32 inputs, I rounded up):
 * - W_ih's parts, a panel of 16 units (all four gates) at B + p *
 *   lstm_amx_input_panel_size(I): for gate g, k-step s and part j a VNNI tile
 *   (row m holds the 16 units' inputs 2m and 2m + 1 of the k-step) at
 *   ((g * ks + s) * 3 + j) * 512;
 * - rows of x, A = lstm_amx_input_rows: part j of row r at
 *   A + (j * n16 + r) * 32 * ks, n16 the rows rounded up to 16 (zero past n
 *   rows and I columns). */
static inline ptrdiff_t lstm_amx_ksteps(ptrdiff_t I) { return (I + 31) / 32; }
static inline ptrdiff_t lstm_amx_rows16(ptrdiff_t n) { return (n + 15) / 16 * 16; }
static inline ptrdiff_t lstm_amx_input_panel_size(ptrdiff_t I) { return 4 * lstm_amx_ksteps(I) * 3 * 512; }

/* 64-byte aligned memory for tiles to load, or NULL (always, where AMX was
 * not compiled in); lstm_amx_free frees it. */
void *lstm_amx_alloc(size_t bytes);
void lstm_amx_free(void *p);

/* The calling thread takes the tiles (before lstm_amx_input_products) and gives
 * them back (a thread holding them saves 8 KB more at each context switch). */
void lstm_amx_begin(void);
void lstm_amx_end(void);

/* Panels p0..p1-1 of W_ih [4H, I] into B. */
void lstm_amx_input_pack(ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t I, ptrdiff_t H, const float *W_ih,
                         uint16_t *B);

/* Rows row0..row0+n-1 of x (row r at x + (place ? place[r] : r) * I) into A. */
void lstm_amx_input_rows(ptrdiff_t n, ptrdiff_t I, const float *x, const ptrdiff_t *place,
                         ptrdiff_t row0, uint16_t *A);

/* out + p * ldo [n16, 64] = A's n16 rows . panel p of B (its 4 gates x 16 units,
 * gate g at columns 16g..16g+15) for p < np, on the calling thread's tiles. */
void lstm_amx_input_products(ptrdiff_t n16, ptrdiff_t I, const uint16_t *A, const uint16_t *B,
                             ptrdiff_t np, float *out, ptrdiff_t ldo);

#ifdef __cplusplus
}
#endif

#endif
