/* lstm_bf16_impl.h - body of the bf16-weight inference loops (lstm_bf16.h):
 * the product of a block of rows with one packed panel (16 units x NG gate
 * blocks) accumulated in float32 registers, then the LSTM gate math of those
 * units (lstm_vec_impl.h's FN(cell)) or, for a dense layer, the logits.
 *
 * Included once per code path by lstm_bf16.c, with these defined (and
 * undefined again at the end):
 *   SFX  name suffix of the path     VL  lanes of one vector (floats)
 *   RB   most rows per block         DP  1: VDPBF16PS on bf16 activations,
 *                                        0: weights widened to float32
 */
#include "lstm_vec_impl.h"

/* vectors per 16-unit panel row of one gate block */
#define UV (16 / VL)
#define VU FN(vu)
typedef uint32_t VU __attribute__((vector_size(VL * 4), aligned(4)));
typedef uint32_t FN(vu_mem) __attribute__((vector_size(VL * 4), aligned(4), may_alias));
INLINE VU FN(load_words)(const uint32_t *p) { return *(const FN(vu_mem) *)p; }

/* One block: R rows x one panel, NG gate blocks (4: an LSTM layer; 1: a dense
 * layer). act: the rows' inputs, stride lda floats ([x_t | h_{t-1}], padded as
 * the panel's columns; with DP, the same as bf16 pairs at the start of each row).
 * KP: pairs of columns. With NG = 4 the gates are finished here: b [G] (at the
 * panel), c_prev / c / h at stride H (at the panel; c may be c_prev); with
 * NG = 1 the sums go to z (stride ldz). nvalid: units of the panel that exist. */
INLINE void FN(bf16_block)(const int R, const int NG, ptrdiff_t KP, const uint32_t *Wp,
                           const float *act, ptrdiff_t lda, ptrdiff_t H, ptrdiff_t nvalid,
                           const float *b, const float *c_prev, float *c, float *h, float *z,
                           ptrdiff_t ldz)
{
    /* One row has too few sums in flight to hide the latency of the FMAs:
     * it keeps two sets (even and odd columns, or pairs), added at the end. */
    enum { SETS = 2 };
    VF acc[SETS][RB][4][UV];
#pragma GCC unroll 64
    for (int s = 0; s < SETS; ++s)
#pragma GCC unroll 64
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
            for (int g = 0; g < NG; ++g)
#pragma GCC unroll 4
                for (int u = 0; u < UV; ++u) acc[s][r][g][u] = FN(splat)(0.0f);
#if DP
    /* each row's words sit at the start of its lda floats (bf16_activations) */
    const uint32_t *a32 = (const uint32_t *)act;
    for (ptrdiff_t q = 0; q < KP; q += 2) {
#pragma GCC unroll 2
        for (int s = 0; s < 2; ++s) {
            const uint32_t *w = Wp + (q + s) * NG * 16;
#pragma GCC unroll 4
            for (int g = 0; g < NG; ++g) {
                const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + g * 16);
#pragma GCC unroll 64
                for (int r = 0; r < R; ++r) {
                    const __m512bh xv = (__m512bh)_mm512_set1_epi32((int)a32[r * lda + q + s]);
                    const int set = R == 1 ? s : 0;
                    acc[set][r][g][0] = (VF)_mm512_dpbf16_ps((__m512)acc[set][r][g][0], wv, xv);
                }
            }
        }
    }
#else
    for (ptrdiff_t q = 0; q < KP; ++q) {
        const uint32_t *w = Wp + q * NG * 16;
#pragma GCC unroll 4
        for (int g = 0; g < NG; ++g)
#pragma GCC unroll 4
            for (int u = 0; u < UV; ++u) {
                const VU wv = FN(load_words)(w + g * 16 + u * VL);
                const VF lo = (VF)(wv << 16), hi = (VF)(wv & 0xffff0000u);
#pragma GCC unroll 64
                for (int r = 0; r < R; ++r) {
                    const VF x0 = FN(splat)(act[r * lda + 2 * q]);
                    const VF x1 = FN(splat)(act[r * lda + 2 * q + 1]);
                    if (R == 1 && UV == 1) {
                        acc[0][r][g][u] += lo * x0;
                        acc[1][r][g][u] += hi * x1;
                    } else {
                        acc[0][r][g][u] += lo * x0 + hi * x1;
                    }
                }
            }
    }
#endif
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int u = 0; u < UV; ++u) {
            const ptrdiff_t j = u * VL, nv = nvalid - j < VL ? nvalid - j : VL;
            if (nv <= 0) break;
            VF pre[4];
#pragma GCC unroll 4
            for (int g = 0; g < NG; ++g) pre[g] = acc[0][r][g][u] + acc[1][r][g][u];
            if (NG == 1) {
                FN(storen)(z + r * ldz + j, pre[0], nv);
            } else {
                const VF add[4] = {FN(loadn)(b + j, nv), FN(loadn)(b + H + j, nv),
                                   FN(loadn)(b + 2 * H + j, nv), FN(loadn)(b + 3 * H + j, nv)};
                FN(cell)(pre, add, c_prev + r * H + j, NULL, 0, H, nv, c + r * H + j,
                         h + r * H + j);
            }
        }
}

#define BF16_CASE(R_)                                                                          \
    case R_:                                                                                   \
        if (NG == 4)                                                                           \
            FN(bf16_block)(R_, 4, KP, Wp, act, lda, H, nvalid, b, c_prev, c, h, NULL, 0);      \
        else                                                                                   \
            FN(bf16_block)(R_, 1, KP, Wp, act, lda, 0, nvalid, NULL, NULL, NULL, NULL, z, ldz); \
        break;

static void FN(bf16_rows)(int R, int NG, ptrdiff_t KP, const uint32_t *Wp, const float *act,
                          ptrdiff_t lda, ptrdiff_t H, ptrdiff_t nvalid, const float *b,
                          const float *c_prev, float *c, float *h, float *z, ptrdiff_t ldz)
{
    switch (R) {
    BF16_CASE(1)
#if RB >= 2
    BF16_CASE(2) BF16_CASE(3) BF16_CASE(4)
#endif
    default: break;
    }
}

/* The activations of rows [0, n) of a block: [in (Iin columns) | 0 pad to
 * even | rec (Kr columns) | 0 pad] per row, stride lda floats (lda a multiple
 * of 32, every float past the columns zero); with DP converted to bf16 pairs
 * (in place: a row of lda floats becomes lda / 2 words at its start). */
static void FN(bf16_activations)(ptrdiff_t n, const float *in, ptrdiff_t Iin, const float *rec,
                                 ptrdiff_t Kr, float *act, ptrdiff_t lda)
{
    const ptrdiff_t Ie = (Iin + 1) / 2 * 2;
    for (ptrdiff_t r = 0; r < n; ++r) {
        float *row = act + r * lda;
        memset(row, 0, (size_t)lda * sizeof(float));
        if (Iin) memcpy(row, in + r * Iin, (size_t)Iin * sizeof(float));
        if (Kr) memcpy(row + Ie, rec + r * Kr, (size_t)Kr * sizeof(float));
#if DP
        /* RNE (NaN kept quiet): 32 floats -> 16 words, written behind the reads */
        for (ptrdiff_t k = 0; k < lda; k += 32) {
            const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(row + k + 16),
                                                   _mm512_loadu_ps(row + k));
            _mm512_storeu_si512((uint32_t *)row + k / 2, (__m512i)v);
        }
#endif
    }
}

/* Layer-major: each layer runs all T steps (its panels stay in the threads'
 * caches), then the next one reads its outputs. Threads split (panel, row
 * block) items as lstm_share says, the same items at every step, so that each
 * thread updates its own units of c in place; one barrier per step. */
static void FN(bf16_forward)(int nthreads, ptrdiff_t L, ptrdiff_t T, ptrdiff_t N, ptrdiff_t I0,
                             ptrdiff_t H, const float *x, const uint32_t *const *Wp,
                             const float *const *b, const float *h0, const float *c0, float *y,
                             float *seq, float *h_n, float *c_n, int reverse, float *work)
{
    const ptrdiff_t npanels = (H + 15) / 16, nblocks = (N + RB - 1) / RB, NH = N * H;
    const ptrdiff_t lda = bf16_lda(I0 > H ? I0 : H, H);
    LSTM_PARALLEL(nthreads)
    {
        lstm_team me = {0, 1, 0};
#ifdef _OPENMP
        me.tid = omp_get_thread_num();
        me.nt = omp_get_num_threads();
#endif
        float *act = work + me.tid * N * lda;
        const lstm_range items = lstm_share(npanels * nblocks, me);
        const float *in = x;
        for (ptrdiff_t l = 0; l < L; ++l) {
            const ptrdiff_t I = l ? H : I0;
            const ptrdiff_t KP = bf16_pairs(I, H);
            float *out = (L - 1 - l) % 2 == 0 ? y : seq;
            float *cl = c_n + l * NH;
            for (ptrdiff_t s = 0; s < T; ++s) {
                const ptrdiff_t t = reverse ? T - 1 - s : s, tp = reverse ? t + 1 : t - 1;
                const float *h_prev = s ? out + tp * NH : h0 + l * NH;
                const float *c_prev = s ? cl : c0 + l * NH;
                FN(bf16_activations)(N, in + t * N * I, I, h_prev, H, act, lda);
                for (ptrdiff_t w = items.lo; w < items.hi; ++w) {
                    const ptrdiff_t p = w / nblocks, n0 = N * (w % nblocks) / nblocks;
                    const ptrdiff_t n1 = N * (w % nblocks + 1) / nblocks, j0 = p * 16;
                    FN(bf16_rows)((int)(n1 - n0), 4, KP, Wp[l] + p * KP * 4 * 16, act + n0 * lda,
                                  lda, H, H - j0 < 16 ? H - j0 : 16, b[l] + j0, c_prev + n0 * H + j0,
                                  cl + n0 * H + j0, out + t * NH + n0 * H + j0, NULL, 0);
                }
                LSTM_BARRIER();
            }
            /* the final h of this layer: its output at the last step */
            const lstm_range share = lstm_share(NH, me);
            const ptrdiff_t last = reverse ? 0 : T - 1;
            memcpy(h_n + l * NH + share.lo, out + last * NH + share.lo,
                   (size_t)(share.hi - share.lo) * sizeof(float));
            in = out;
        }
    }
}

static void FN(bf16_dense)(ptrdiff_t N, ptrdiff_t K, ptrdiff_t V, const uint32_t *Wp,
                           const float *h, float *z, float *work)
{
    const ptrdiff_t npanels = (V + 15) / 16, lda = bf16_lda(K, 0), KP = bf16_pairs(0, K);
    for (ptrdiff_t n0 = 0; n0 < N; n0 += RB) {
        const ptrdiff_t R = N - n0 < RB ? N - n0 : RB;
        FN(bf16_activations)(R, NULL, 0, h + n0 * K, K, work, lda);
        for (ptrdiff_t p = 0; p < npanels; ++p)
            FN(bf16_rows)((int)R, 1, KP, Wp + p * KP * 16, work, lda, 0,
                          V - p * 16 < 16 ? V - p * 16 : 16, NULL, NULL, NULL, NULL,
                          z + n0 * V + p * 16, V);
    }
}

/* ---- one row, for loops with their own team (the generation loop) ------- */
/* act = [in (I) | h (H)] of one row as the panels read it. */
static void FN(bf16_row_activations)(const float *in, ptrdiff_t I, const float *h, ptrdiff_t H,
                                     float *act)
{
    FN(bf16_activations)(1, in, I, h, H, act, bf16_lda(I, H));
}

/* Panels p0..p1-1 of one layer's step for one row (down: from the last).
 * add [G]: the bias, or what stands in for the input part (I = 0). */
static void FN(bf16_row_panels)(ptrdiff_t p0, ptrdiff_t p1, int down, ptrdiff_t I, ptrdiff_t H,
                                const uint32_t *Wp, const float *act, const float *add, float *c,
                                float *h)
{
    const ptrdiff_t KP = bf16_pairs(I, H), lda = bf16_lda(I, H);
    for (ptrdiff_t i = p0; i < p1; ++i) {
        const ptrdiff_t p = down ? p0 + p1 - 1 - i : i, j0 = p * 16;
        FN(bf16_rows)(1, 4, KP, Wp + p * KP * 4 * 16, act, lda, H, H - j0 < 16 ? H - j0 : 16,
                      add + j0, c + j0, c + j0, h + j0, NULL, 0);
    }
}

/* Logits z [p0 * 16, min(V, p1 * 16)) of one row h [K] (panels p0..p1-1 of a
 * dense layer); work: [bf16_lda(0, K)] scratch. */
static void FN(bf16_dense_panels)(ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t K, ptrdiff_t V,
                                  const uint32_t *Wp, const float *h, float *z, float *work)
{
    const ptrdiff_t lda = bf16_lda(0, K), KP = bf16_pairs(0, K);
    FN(bf16_activations)(1, NULL, 0, h, K, work, lda);
    for (ptrdiff_t p = p0; p < p1; ++p)
        FN(bf16_rows)(1, 1, KP, Wp + p * KP * 16, work, lda, 0, V - p * 16 < 16 ? V - p * 16 : 16,
                      NULL, NULL, NULL, NULL, z + p * 16, V);
}

/* This path's entry in lstm_bf16.c's table; cpu_has_<path> is defined there. */
static const bf16_kernels FN(bf16_kernels) = {FN(cpu_has), FN(bf16_forward), FN(bf16_dense),
                                              FN(bf16_row_activations), FN(bf16_row_panels),
                                              FN(bf16_dense_panels)};

#undef BF16_CASE
#undef UV
#undef VU
#undef INLINE
#undef VF
#undef VI
#undef FN
#undef CAT
#undef CAT_
#undef SFX
#undef VL
#undef RB
#undef DP
