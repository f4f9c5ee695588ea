/* lstm_cell.c - the BLAS path's pointwise LSTM step, forward and backward
 * (see lstm_cell.h).
 *
 * One template (a macro) instantiated for float and double, so that both
 * dtypes share one source. The sigmoid is written on exp(-|x|), which never
 * overflows, and NaN inputs propagate to NaN outputs.
 */
#include <math.h>
#include "lstm_cell.h"

#define DEFINE_LSTM_CELL(SUFFIX, real, EXP, TANH, FABS)                        \
    static inline real sigmoid_##SUFFIX(real x)                                \
    {                                                                          \
        real e = EXP(-FABS(x));                                                \
        real s = (real)1 / ((real)1 + e);                                      \
        return x >= (real)0 ? s : e * s;                                       \
    }                                                                          \
                                                                               \
    void lstm_cell_forward_##SUFFIX(ptrdiff_t N, ptrdiff_t H, real *gates,     \
                                    const real *c_prev, real *c, real *h)      \
    {                                                                          \
        for (ptrdiff_t n = 0; n < N; ++n) {                                    \
            real *gi = gates + n * 4 * H;                                      \
            real *gf = gi + H, *gg = gi + 2 * H, *go = gi + 3 * H;             \
            const real *cp = c_prev + n * H;                                   \
            real *cn = c + n * H, *hn = h + n * H;                             \
            for (ptrdiff_t j = 0; j < H; ++j) {                                \
                real i = sigmoid_##SUFFIX(gi[j]);                              \
                real f = sigmoid_##SUFFIX(gf[j]);                              \
                real g = TANH(gg[j]);                                          \
                real o = sigmoid_##SUFFIX(go[j]);                              \
                real cj = f * cp[j] + i * g;                                   \
                gi[j] = i; gf[j] = f; gg[j] = g; go[j] = o;                    \
                cn[j] = cj;                                                    \
                hn[j] = o * TANH(cj);                                          \
            }                                                                  \
        }                                                                      \
    }                                                                          \
                                                                               \
    void lstm_cell_backward_##SUFFIX(ptrdiff_t N, ptrdiff_t H,                 \
                                     const real *gates, const real *c_prev,    \
                                     const real *c, const real *dy,            \
                                     const real *dh_next, real *dc,            \
                                     real *dgates)                             \
    {                                                                          \
        for (ptrdiff_t n = 0; n < N; ++n) {                                    \
            const real *gi = gates + n * 4 * H;                                \
            const real *gf = gi + H, *gg = gi + 2 * H, *go = gi + 3 * H;       \
            real *di = dgates + n * 4 * H;                                     \
            real *df = di + H, *dg = di + 2 * H, *dO = di + 3 * H;             \
            const real *cp = c_prev + n * H, *cn = c + n * H;                  \
            const real *dyn = dy + n * H;                                      \
            const real *dhn = dh_next ? dh_next + n * H : NULL;                \
            real *dcn = dc + n * H;                                            \
            for (ptrdiff_t j = 0; j < H; ++j) {                                \
                real i = gi[j], f = gf[j], g = gg[j], o = go[j];               \
                real dh = dhn ? dyn[j] + dhn[j] : dyn[j];                      \
                real tc = TANH(cn[j]);                                         \
                real dct = dcn[j] + dh * o * ((real)1 - tc * tc);              \
                di[j] = dct * g * i * ((real)1 - i);                           \
                df[j] = dct * cp[j] * f * ((real)1 - f);                       \
                dg[j] = dct * i * ((real)1 - g * g);                           \
                dO[j] = dh * tc * o * ((real)1 - o);                           \
                dcn[j] = dct * f;                                              \
            }                                                                  \
        }                                                                      \
    }

DEFINE_LSTM_CELL(f32, float, expf, tanhf, fabsf)
DEFINE_LSTM_CELL(f64, double, exp, tanh, fabs)
