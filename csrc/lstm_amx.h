/* lstm_amx.h - the float32 weight gradients on Intel AMX tiles (lstm_amx.c), for
 * the fused backward (lstm_fused_impl.h, weight_grads).
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

#ifdef __cplusplus
}
#endif

#endif
