/* lstm_fused_impl.h - body of the fused float32 LSTM time loops (lstm_fused.h):
 * the gate math of backward (FN(backward_gates)), and the forward, backward
 * and step loops (the vector activations and the forward gate math, FN(cell),
 * are in lstm_vec_impl.h, shared with the bf16 loops).
 *
 * Included once per code path by lstm_fused.c, with these defined (and
 * undefined again at the end):
 *   SFX  name suffix of the path       VL  lanes of one vector (floats)
 *   RF   rows per forward block        RB  rows per backward block
 *   BV   vectors per backward panel (its width is BV * VL units)
 * Written with GCC/Clang vector extensions so that one source becomes
 * AVX-512, AVX2 or portable code by the target it is compiled for.
 */
#include "lstm_vec_impl.h"

/* Sum of the lanes, by halving (a few shuffles instead of VL-1 extracts). */
INLINE float FN(hsum)(VF v)
{
    float lanes[VL];
    FN(store)(lanes, v);
    for (int width = VL / 2; width >= 1; width /= 2)
        for (int i = 0; i < width; ++i) lanes[i] += lanes[i + width];
    return lanes[0];
}

/* y[0..3] += 4 rows of A (leading dimension lda) . x [k], sharing the loads of x. */
INLINE void FN(dot4)(ptrdiff_t k, const float *a0, ptrdiff_t lda, const float *x, float *y)
{
    const float *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
    VF s0 = FN(splat)(0.0f), s1 = s0, s2 = s0, s3 = s0;
    ptrdiff_t j = 0;
    for (; j + VL <= k; j += VL) {
        VF xv = FN(load)(x + j);
        s0 += FN(load)(a0 + j) * xv;
        s1 += FN(load)(a1 + j) * xv;
        s2 += FN(load)(a2 + j) * xv;
        s3 += FN(load)(a3 + j) * xv;
    }
    if (j < k) {
        VF xv = FN(loadn)(x + j, k - j);
        s0 += FN(loadn)(a0 + j, k - j) * xv;
        s1 += FN(loadn)(a1 + j, k - j) * xv;
        s2 += FN(loadn)(a2 + j, k - j) * xv;
        s3 += FN(loadn)(a3 + j, k - j) * xv;
    }
    y[0] += FN(hsum)(s0);
    y[1] += FN(hsum)(s1);
    y[2] += FN(hsum)(s2);
    y[3] += FN(hsum)(s3);
}

/* y[0] += one row a [k] . x [k]. */
INLINE void FN(dot1)(ptrdiff_t k, const float *a, const float *x, float *y)
{
    VF s = FN(splat)(0.0f);
    ptrdiff_t j = 0;
    for (; j + VL <= k; j += VL) s += FN(load)(a + j) * FN(load)(x + j);
    if (j < k) s += FN(loadn)(a + j, k - j) * FN(loadn)(x + j, k - j);
    y[0] += FN(hsum)(s);
}

/* y [m] += A [m, k] (row-major, leading dimension lda) . x [k]: the products
 * of a one-row step, four rows at a time; from the last row to the first
 * when descending (see step). */
INLINE void FN(gemv_rows)(ptrdiff_t m, ptrdiff_t k, const float *a, ptrdiff_t lda,
                          const float *x, float *y, int descending)
{
    const ptrdiff_t m4 = m - m % 4;
    if (!descending) {
        for (ptrdiff_t r = 0; r < m4; r += 4) FN(dot4)(k, a + r * lda, lda, x, y + r);
        for (ptrdiff_t r = m4; r < m; ++r) FN(dot1)(k, a + r * lda, x, y + r);
    } else {
        for (ptrdiff_t r = m - 1; r >= m4; --r) FN(dot1)(k, a + r * lda, x, y + r);
        for (ptrdiff_t r = m4 - 4; r >= 0; r -= 4) FN(dot4)(k, a + r * lda, lda, x, y + r);
    }
}


/* ---- work items of a step -------------------------------------------------
 * A step's work is (panel, row block) items. Each thread runs a contiguous
 * range of them, so that the threads' loads differ by at most one item, with
 * the rows spread evenly over the blocks (32 = 6+6+5+5+5+5, not 6*5+2).
 * In panel-major order (by_rows = 0) the threads split the hidden units: each
 * reads its share of the weights (and shares at most one panel), but all of
 * the previous step's rows, half of them written by another core. While an
 * item runs, its k loop fetches one line per k of the panel the thread reads
 * next (its first again at the next step) towards L2, a k-line share per row
 * block, so that weights larger than L2 stream from L3 while the FMAs run;
 * blocks past the panel's end touch their own panel. In block-major order
 * (by_rows = 1) the threads split the batch rows: each reads all of the
 * weights, which must then fit in its L2, but only rows it wrote itself.
 * down: the thread runs its items backwards (forward steps alternate), and
 * fetches the panel before instead of the one after. */
typedef struct { ptrdiff_t p, n0, n1; const char *pf; } FN(work);

INLINE FN(work) FN(work_item)(ptrdiff_t w, int by_rows, ptrdiff_t N, ptrdiff_t nblocks,
                              ptrdiff_t npanels, ptrdiff_t pfirst, ptrdiff_t plast,
                              const float *W, ptrdiff_t panel_floats, ptrdiff_t k, int down)
{
    FN(work) it;
    const ptrdiff_t blk = by_rows ? w / npanels : w % nblocks;
    it.p = by_rows ? w % npanels : w / nblocks;
    it.n0 = N * blk / nblocks;
    it.n1 = N * (blk + 1) / nblocks;
    if (by_rows) {
        it.pf = (const char *)(W + it.p * panel_floats); /* in L2 already */
    } else {
        const ptrdiff_t pn = down ? (it.p > pfirst ? it.p - 1 : plast) : (it.p < plast ? it.p + 1 : pfirst);
        const char *next = (const char *)(W + pn * panel_floats);
        it.pf = blk * k * 64 < panel_floats * (ptrdiff_t)sizeof(float)
                    ? next + blk * k * 64 : (const char *)(W + it.p * panel_floats);
    }
    return it;
}

/* This thread's work items of a step of n rows: blocks of rb rows times
 * npanels panels, and the first and last panel it touches (for prefetching). */
typedef struct { ptrdiff_t w0, w1, nblocks, pfirst, plast; } FN(items);

INLINE FN(items) FN(step_items)(lstm_team me, ptrdiff_t n, ptrdiff_t rb, ptrdiff_t npanels)
{
    FN(items) s;
    s.nblocks = (n + rb - 1) / rb;
    const lstm_range mine = lstm_share(npanels * s.nblocks, me);
    s.w0 = mine.lo;
    s.w1 = mine.hi;
    s.pfirst = s.nblocks ? s.w0 / s.nblocks : 0;
    s.plast = s.w1 > s.w0 ? (s.w1 - 1) / s.nblocks : s.pfirst;
    return s;
}

/* rows[r] = src + r * lds for r < R: the row pointers of R rows of a strided array. */
INLINE void FN(strided_rows)(const int R, const float *src, ptrdiff_t lds, const float **rows)
{
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) rows[r] = src + r * lds;
}

/* acc[r][g] += the K-row product of R rows (rows[r][k], each row anywhere) with a
 * panel's rows Wp[k] (4 gates x VL units each): the inner loop of the forward and
 * projection blocks. pf: a line to prefetch per k (advanced by 64 bytes), or
 * NULL; returns it advanced. */
INLINE const char *FN(panel_products)(const int R, ptrdiff_t K, const float *Wp,
                                      const float *const *rows, VF acc[][4], const char *pf)
{
    for (ptrdiff_t k = 0; k < K; ++k) {
        const float *w = Wp + k * 4 * VL;
        if (pf) {
            __builtin_prefetch(pf, 0, 2);
            pf += 64;
        }
        VF w0 = FN(load)(w), w1 = FN(load)(w + VL);
        VF w2 = FN(load)(w + 2 * VL), w3 = FN(load)(w + 3 * VL);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            VF b = FN(splat)(rows[r][k]);
            acc[r][0] += b * w0;
            acc[r][1] += b * w1;
            acc[r][2] += b * w2;
            acc[r][3] += b * w3;
        }
    }
    return pf;
}

/* ---- the projection's products on panels packed once per call ------------
 * A projected layer multiplies by W_hr [P, H] at every step: h_t = m_t .
 * W_hr^T in the forward, dm_t = dh_t . W_hr in the backward. A BLAS call per
 * step packs its share of W_hr again at every step (a copy of 1 MB per step
 * at H=1024, P=256); these pack it once per call, in panels of 4*VL columns.
 *
 * pack_columns: panels p0..p1-1 of B [K, cols], element (k, c) at W[k * wk +
 * c * wc] (W_hr^T: wk = 1, wc = H; W_hr: wk = H, wc = 1): panel q holds rows
 * 0..K-1 of columns q*4*VL.., zero past cols. */
static void FN(pack_columns)(ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t K, ptrdiff_t cols,
                             const float *W, ptrdiff_t wk, ptrdiff_t wc, float *out)
{
    const ptrdiff_t PW = 4 * VL;
    for (ptrdiff_t q = p0; q < p1; ++q) {
        float *panel = out + q * K * PW;
        for (int u = 0; u < PW; ++u) {
            const ptrdiff_t c = q * PW + u;
            if (c >= cols) {
                for (ptrdiff_t k = 0; k < K; ++k) panel[k * PW + u] = 0.0f;
                continue;
            }
            const float *w = W + c * wc;
            for (ptrdiff_t k = 0; k < K; ++k) panel[k * PW + u] = w[k * wk];
        }
    }
}

/* out [R rows, the panel's nvalid columns] (leading dimension ldo) = src [R,
 * K] (leading dimension lds) . one panel of pack_columns. */
INLINE void FN(panel_block)(const int R, ptrdiff_t K, ptrdiff_t nvalid, const float *Wp,
                            const float *src, ptrdiff_t lds, float *out, ptrdiff_t ldo,
                            const char *pf)
{
    VF acc[RF][4];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
        acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = FN(splat)(0.0f);
    const float *rows[RF];
    FN(strided_rows)(R, src, lds, rows);
    FN(panel_products)(R, K, Wp, rows, acc, pf);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
            const ptrdiff_t n = nvalid - v * VL;
            if (n > 0) FN(storen)(out + r * ldo + v * VL, acc[r][v], n < VL ? n : VL);
        }
}

#define PANEL_CASE(R_)                                                          \
    case R_:                                                                    \
        FN(panel_block)(R_, K, nvalid, Wp, src, lds, out, ldo, pf);            \
        break;

static void FN(panel_rows)(int R, ptrdiff_t K, ptrdiff_t nvalid, const float *Wp,
                           const float *src, ptrdiff_t lds, float *out, ptrdiff_t ldo,
                           const char *pf)
{
    switch (R) {
    PANEL_CASE(1) PANEL_CASE(2)
#if RF >= 3
    PANEL_CASE(3) PANEL_CASE(4)
#endif
#if RF >= 5
    PANEL_CASE(5) PANEL_CASE(6)
#endif
    default: break;
    }
}

/* out [n rows, cols] (leading dimension ldo) = src [n, K] (lds) . B [K, cols]
 * packed by pack_columns in Wp, this thread's share of (panel, row block)
 * items; the caller puts a barrier after it. */
static void FN(panel_product)(lstm_team me, ptrdiff_t n, ptrdiff_t K, ptrdiff_t cols,
                              const float *Wp, const float *src, ptrdiff_t lds, float *out,
                              ptrdiff_t ldo)
{
    const ptrdiff_t PW = 4 * VL, np = (cols + PW - 1) / PW;
    const FN(items) s = FN(step_items)(me, n, RF, np);
    for (ptrdiff_t w = s.w0; w < s.w1; ++w) {
        const FN(work) it = FN(work_item)(w, 0, n, s.nblocks, np, s.pfirst, s.plast, Wp, K * PW,
                                           K, 0);
        const ptrdiff_t c0 = it.p * PW;
        FN(panel_rows)((int)(it.n1 - it.n0), K, cols - c0 < PW ? cols - c0 : PW,
                       Wp + it.p * K * PW, src + it.n0 * lds, lds, out + it.n0 * ldo + c0, ldo,
                       it.pf);
    }
}

/* ---- forward ------------------------------------------------------------
 * One block: R rows x one panel of VL units (all four gates). The product
 * h_prev[rows] . W_hh^T[:, panel] goes to registers, and with x_rows also
 * x_t[rows] . W_ih^T[:, panel] (the input projection fused into the step,
 * panel rows 0..I-1, W_hh's after them) plus the bias; without it the
 * hoisted projection is read from gates. The gates are finished in
 * registers and written out, unless keep is 0 (an inference pass keeps
 * nothing for backward, and saves the stores and the cache lines they would
 * take from the weights). Rows may lie anywhere: x_rows (NULL: no fused
 * projection), h_prev and h are a pointer per row (h's at the panel's first
 * unit); c_prev, gates and c are R consecutive rows. */
INLINE void FN(forward_block)(const int R, ptrdiff_t H, ptrdiff_t I, ptrdiff_t KR, ptrdiff_t nvalid,
                              const float *Wp, const float *const *x_rows, const float *bias,
                              const float *const *h_prev, const float *c_prev, float *gates,
                              const float *const *pre_rows, ptrdiff_t ps, int pre_bias, int keep,
                              float *c, float *const *h, const char *pf)
{
    const ptrdiff_t G = 4 * H;
    VF acc[RF][4];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
        acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = FN(splat)(0.0f);
    if (x_rows) {
        pf = FN(panel_products)(R, I, Wp, x_rows, acc, pf);
        Wp += I * 4 * VL;
    }
    FN(panel_products)(R, KR, Wp, h_prev, acc, pf);
    VF add[4];
    if (x_rows) {
        add[0] = FN(loadn)(bias, nvalid);
        add[1] = FN(loadn)(bias + H, nvalid);
        add[2] = FN(loadn)(bias + 2 * H, nvalid);
        add[3] = FN(loadn)(bias + 3 * H, nvalid);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
        float *pre = gates + r * G;
        if (!x_rows) {
            /* pre_rows' gates lie ps apart (H in a table's rows, VL in the rows of an
             * input product on AMX, which leaves the bias to this sum: pre_bias); pre's
             * H apart */
            const float *src = pre_rows ? pre_rows[r] : pre;
            const ptrdiff_t gs = pre_rows ? ps : H;
            add[0] = FN(loadn)(src, nvalid);
            add[1] = FN(loadn)(src + gs, nvalid);
            add[2] = FN(loadn)(src + 2 * gs, nvalid);
            add[3] = FN(loadn)(src + 3 * gs, nvalid);
            if (pre_bias) {
                add[0] += FN(loadn)(bias, nvalid);
                add[1] += FN(loadn)(bias + H, nvalid);
                add[2] += FN(loadn)(bias + 2 * H, nvalid);
                add[3] += FN(loadn)(bias + 3 * H, nvalid);
            }
        }
        FN(cell)(acc[r], add, c_prev + r * H, pre, keep, H, nvalid, c + r * H, h[r]);
    }
}

#define FWD_CASE(R_)                                                                        \
    case R_:                                                                                \
        FN(forward_block)(R_, H, I, KR, nvalid, Wp, x_rows, bias, h_prev, c_prev, gates,    \
                          pre_rows, ps, pre_bias, keep, c, h, pf);                          \
        break;

static void FN(forward_rows)(int R, ptrdiff_t H, ptrdiff_t I, ptrdiff_t KR, ptrdiff_t nvalid,
                             const float *Wp, const float *const *x_rows, const float *bias,
                             const float *const *h_prev, const float *c_prev, float *gates,
                             const float *const *pre_rows, ptrdiff_t ps, int pre_bias, int keep,
                             float *c, float *const *h, const char *pf)
{
    switch (R) {
    FWD_CASE(1) FWD_CASE(2)
#if RF >= 3
    FWD_CASE(3) FWD_CASE(4)
#endif
#if RF >= 5
    FWD_CASE(5) FWD_CASE(6)
#endif
    default: break;
    }
}

/* Panel p holds, for k over [W_ih^T rows (Ip of them, 0 if not fused);
 * W_hh^T rows (H)], the 4 gates x VL units of that row. */
#if VL == 16 && defined(FASTLSTM_X86_PATHS)
/* dst[k * stride + u] = src[u * lds + k] for u < nrows (<= 16), k < ncols: a
 * block of rows stored column by column, 16 x 16 at a time (lanes u >= nrows
 * are left as they are). */
static void FN(transpose_rows)(ptrdiff_t nrows, ptrdiff_t ncols, const float *src, ptrdiff_t lds,
                               float *dst, ptrdiff_t stride)
{
    for (ptrdiff_t k0 = 0; k0 < ncols; k0 += 16) {
        const ptrdiff_t nk = ncols - k0 < 16 ? ncols - k0 : 16;
        const __mmask16 kmask = (__mmask16)((1u << nk) - 1u);
        __m512 r[16], a[16], b[16];
        for (int u = 0; u < 16; ++u)
            r[u] = u < nrows ? _mm512_maskz_loadu_ps(kmask, src + u * lds + k0) : _mm512_setzero_ps();
        for (int i = 0; i < 8; ++i) {
            a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        for (int i = 0; i < 4; ++i) {
            b[4 * i + 0] = _mm512_shuffle_ps(a[4 * i + 0], a[4 * i + 2], 0x44);
            b[4 * i + 1] = _mm512_shuffle_ps(a[4 * i + 0], a[4 * i + 2], 0xEE);
            b[4 * i + 2] = _mm512_shuffle_ps(a[4 * i + 1], a[4 * i + 3], 0x44);
            b[4 * i + 3] = _mm512_shuffle_ps(a[4 * i + 1], a[4 * i + 3], 0xEE);
        }
        /* b[4i + c] holds, in 128-bit lane L, column 4L + c of rows 4i..4i+3 */
        const __mmask16 umask = (__mmask16)((1u << nrows) - 1u);
        for (int c = 0; c < 4; ++c) {
            const __m512 e0 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0x88);
            const __m512 e1 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0xDD);
            const __m512 f0 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0x88);
            const __m512 f1 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0xDD);
            const __m512 col[4] = {_mm512_shuffle_f32x4(e0, f0, 0x88), _mm512_shuffle_f32x4(e1, f1, 0x88),
                                   _mm512_shuffle_f32x4(e0, f0, 0xDD), _mm512_shuffle_f32x4(e1, f1, 0xDD)};
            for (int L = 0; L < 4; ++L)
                if (4 * L + c < nk)
                    _mm512_mask_storeu_ps(dst + (k0 + 4 * L + c) * stride, umask, col[L]);
        }
    }
}
#endif

/* Panels p0..p1-1 of the forward pack (the threads of a time loop each pack
 * their own share, which then starts out in their own cache). */
static void FN(pack_panels)(ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t Ip, ptrdiff_t H, ptrdiff_t R,
                            const float *W_ih, const float *W_hh, float *W_f)
{
    const ptrdiff_t npanels = (H + VL - 1) / VL, K = Ip + R, stride = 4 * VL;
    /* Row by row of W_ih and W_hh (contiguous reads): a row's values go to one
     * lane of the panel rows, 4 * VL floats apart; lanes past H stay zero.
     * (Faster than gathering a panel row from VL rows of W: AVX-512 gathers
     * are slow on AMD Zen, and a call at N = 1 spent a fifth of its time here.) */
    if (H % VL && p1 == npanels && p0 < p1)
        memset(W_f + (npanels - 1) * K * stride, 0, (size_t)(K * stride) * sizeof(float));
#if VL == 16 && defined(FASTLSTM_X86_PATHS)
    /* 16 rows x 16 columns at a time, transposed in registers */
    for (ptrdiff_t p = p0; p < p1; ++p) {
        const ptrdiff_t nv = H - p * VL < VL ? H - p * VL : VL;
        for (int g = 0; g < 4; ++g) {
            const ptrdiff_t j0 = g * H + p * VL;
            float *dst = W_f + p * K * stride + g * VL;
            if (Ip) FN(transpose_rows)(nv, Ip, W_ih + j0 * Ip, Ip, dst, stride);
            if (R) FN(transpose_rows)(nv, R, W_hh + j0 * R, R, dst + Ip * stride, stride);
        }
    }
    return;
#endif
    for (ptrdiff_t p = p0; p < p1; ++p)
        for (int g = 0; g < 4; ++g)
            for (ptrdiff_t u = 0; u < VL && p * VL + u < H; ++u) {
                const ptrdiff_t j = g * H + p * VL + u;
                float *dst = W_f + p * K * stride + g * VL + u;
                const float *a = Ip ? W_ih + j * Ip : NULL, *w = R ? W_hh + j * R : NULL;
                for (ptrdiff_t k = 0; k < Ip; ++k) dst[k * stride] = a[k];
                dst += Ip * stride;
                for (ptrdiff_t k = 0; k < R; ++k) dst[k * stride] = w[k];
            }
}

static void FN(pack_forward)(ptrdiff_t Ip, ptrdiff_t H, ptrdiff_t R, const float *W_ih,
                             const float *W_hh, float *W_f)
{
    FN(pack_panels)(0, (H + VL - 1) / VL, Ip, H, R, W_ih, W_hh, W_f);
}

/* ---- the hoisted input projection on the fused kernels ----------------------
 * gates [rows, G] = x [rows, I] . W_ih^T + b for the units of one panel, with
 * W_ih packed as a forward panel without W_hh (pack_panels with R = 0): R
 * rows at a time, the panel's 4 gates x VL units in registers, as the forward
 * blocks run. BLAS would pack x and W_ih again at every call and, at the few
 * rows of a small batch, runs below the FMA rate this reaches. */
/* gates[r] = acc[r] + bias for R rows of a panel (nvalid units): the end of a
 * projection block, hoisted or run ahead inside the steps. */
INLINE void FN(store_projected)(const int R, ptrdiff_t H, ptrdiff_t nvalid, VF acc[][4],
                                const float *bias, float *gates)
{
    const ptrdiff_t G = 4 * H;
    VF add[4];
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) add[g] = FN(loadn)(bias + g * H, nvalid);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int g = 0; g < 4; ++g) FN(storen)(gates + r * G + g * H, acc[r][g] + add[g], nvalid);
}

INLINE void FN(project_block)(const int R, ptrdiff_t H, ptrdiff_t I, ptrdiff_t nvalid,
                              const float *Wp, const float *const *x, const float *bias,
                              float *gates)
{
    VF acc[RF][4];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
        acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = FN(splat)(0.0f);
    FN(panel_products)(R, I, Wp, x, acc, NULL);
    FN(store_projected)(R, H, nvalid, acc, bias, gates);
}

#define PROJ_CASE(R_)                                                     \
    case R_:                                                              \
        FN(project_block)(R_, H, I, nvalid, Wp, x, bias, gates);          \
        break;

static void FN(project_rows)(int R, ptrdiff_t H, ptrdiff_t I, ptrdiff_t nvalid, const float *Wp,
                             const float *const *x, const float *bias, float *gates)
{
    switch (R) {
    PROJ_CASE(1) PROJ_CASE(2)
#if RF >= 3
    PROJ_CASE(3) PROJ_CASE(4)
#endif
#if RF >= 5
    PROJ_CASE(5) PROJ_CASE(6)
#endif
    default: break;
    }
}

/* ---- one-row steps that project rows ahead ----------------------------------
 * A step of one row (N = 1) reads its W_hh panels from L2 (or L3) and makes one
 * FMA per float loaded, so the FMA units mostly wait; the hoisted projection is
 * the opposite (its panel in L1, 4 R FMAs per four vectors loaded). So the one-row
 * loop projects the next PB rows during the PB steps before them: at step t,
 * the panels of the (t mod PB)-th share of the thread's panels run the products
 * of both in the same k loop (FN(step_project_block)). The sums are the same,
 * in the same order, as those of the separate loops: the results do not change. */
#define PB 4
/* Where the one-row loop projects ahead: I of at least LSTM_ONE_ROW_MIN_INPUT (a
 * smaller projection has little to hide) and W_hh and W_ih together at most
 * LSTM_ONE_ROW_MAX_BYTES (each W_ih panel is read again every PB steps: from L3
 * that is cheap, from memory not). Measured on an AMD EPYC Zen 5 (2 cores, 1 MB L2
 * each, 32 MB L3; T=100, N=1, I=H, 1 and 2 threads): 0.93-0.98x the time of the
 * separate loops at H = 128-512, 1.0x at I = 32-64, 1.43x at H = 1024 (32 MB). */
#ifndef LSTM_ONE_ROW_DEFINED
#define LSTM_ONE_ROW_DEFINED
#define LSTM_ONE_ROW_MIN_INPUT 64
#define LSTM_ONE_ROW_MAX_BYTES ((ptrdiff_t)16 << 20)
#endif

INLINE void FN(step_project_block)(const int R, ptrdiff_t H, ptrdiff_t I, ptrdiff_t KR,
                                   ptrdiff_t nvalid, const float *Wp, const float *Wx,
                                   const float *xr, const float *bias, float *grows,
                                   const float *h_prev, const float *c_prev, float *gates,
                                   int keep, float *c, float *h, const char *pf)
{
    const ptrdiff_t kc = I < KR ? I : KR;
    VF acc[1][4], pacc[PB][4];
    acc[0][0] = acc[0][1] = acc[0][2] = acc[0][3] = FN(splat)(0.0f);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
        pacc[r][0] = pacc[r][1] = pacc[r][2] = pacc[r][3] = FN(splat)(0.0f);
    for (ptrdiff_t k = 0; k < kc; ++k) {
        const float *w = Wp + k * 4 * VL, *u = Wx + k * 4 * VL;
        if (pf) {
            __builtin_prefetch(pf, 0, 2);
            pf += 64;
        }
        const VF hb = FN(splat)(h_prev[k]);
        acc[0][0] += hb * FN(load)(w);
        acc[0][1] += hb * FN(load)(w + VL);
        acc[0][2] += hb * FN(load)(w + 2 * VL);
        acc[0][3] += hb * FN(load)(w + 3 * VL);
        const VF u0 = FN(load)(u), u1 = FN(load)(u + VL);
        const VF u2 = FN(load)(u + 2 * VL), u3 = FN(load)(u + 3 * VL);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            const VF b = FN(splat)(xr[r * I + k]);
            pacc[r][0] += b * u0;
            pacc[r][1] += b * u1;
            pacc[r][2] += b * u2;
            pacc[r][3] += b * u3;
        }
    }
    const float *hrow[1] = {h_prev + kc}, *xrows[PB];
    FN(strided_rows)(R, xr + kc, I, xrows);
    FN(panel_products)(1, KR - kc, Wp + kc * 4 * VL, hrow, acc, pf);
    FN(panel_products)(R, I - kc, Wx + kc * 4 * VL, xrows, pacc, NULL);
    FN(store_projected)(R, H, nvalid, pacc, bias, grows);
    VF add[4];
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) add[g] = FN(loadn)(gates + g * H, nvalid);
    FN(cell)(acc[0], add, c_prev, gates, keep, H, nvalid, c, h);
}

#define STEP_PROJ_CASE(R_)                                                                   \
    case R_:                                                                                 \
        FN(step_project_block)(R_, H, I, KR, nvalid, Wp, Wx, xr, bias, grows, h_prev, c_prev, \
                               gates, keep, c, h, pf);                                       \
        break;

static void FN(step_project_rows)(int R, ptrdiff_t H, ptrdiff_t I, ptrdiff_t KR, ptrdiff_t nvalid,
                                  const float *Wp, const float *Wx, const float *xr,
                                  const float *bias, float *grows, const float *h_prev,
                                  const float *c_prev, float *gates, int keep, float *c,
                                  float *h, const char *pf)
{
    switch (R) {
    STEP_PROJ_CASE(1) STEP_PROJ_CASE(2) STEP_PROJ_CASE(3) STEP_PROJ_CASE(4)
    default: break;
    }
}

/* Panels p0..p1-1 of the projection of all rows: W_ih packed into W_x by
 * this thread (its panels only; W_ih NULL: W_x holds them already, packed once
 * for many calls), then each panel over every row. Row r of x is x + r * I, or
 * x + xplace[r] * I when xplace is given. */
static void FN(project_panels)(ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t rows, ptrdiff_t I,
                               ptrdiff_t H, const float *x, const ptrdiff_t *xplace,
                               const float *W_ih, const float *b, float *W_x, float *gates)
{
    const ptrdiff_t G = 4 * H, nblocks = (rows + RF - 1) / RF;
    if (W_ih) FN(pack_panels)(p0, p1, I, H, 0, W_ih, NULL, W_x);
    for (ptrdiff_t p = p0; p < p1; ++p) {
        const ptrdiff_t j0 = p * VL, nvalid = H - j0 < VL ? H - j0 : VL;
        for (ptrdiff_t blk = 0; blk < nblocks; ++blk) {
            const ptrdiff_t r0 = rows * blk / nblocks, r1 = rows * (blk + 1) / nblocks;
            const float *xr[RF];
            for (ptrdiff_t r = r0; r < r1; ++r) xr[r - r0] = x + (xplace ? xplace[r] : r) * I;
            FN(project_rows)((int)(r1 - r0), H, I, nvalid, W_x + p * I * 4 * VL, xr, b + j0,
                             gates + r0 * G + j0);
        }
    }
}

/* p[0..n) = 0 (a padded row of y): its whole cache lines past the caches
 * (non-temporal stores: no read of the lines first; the lengths forward
 * 0.987-0.989x the time of memset's), the part lines at its ends as usual. The
 * thread fences before the call returns. */
static void FN(zero_row)(float *p, ptrdiff_t n)
{
#if VL == 16 && defined(FASTLSTM_X86_PATHS)
    const ptrdiff_t head = (ptrdiff_t)((64 - ((uintptr_t)p & 63)) & 63) / (ptrdiff_t)sizeof(float);
    if (!((uintptr_t)p & (sizeof(float) - 1)) && n >= head + VL) {
        const VF zero = FN(splat)(0.0f);
        if (head) FN(storen)(p, zero, head);
        ptrdiff_t i = head;
        for (; i + VL <= n; i += VL) _mm512_stream_ps(p + i, _mm512_setzero_ps());
        if (i < n) FN(storen)(p + i, zero, n - i);
        return;
    }
#endif
    memset(p, 0, (size_t)n * sizeof(float));
}

static void FN(forward)(const lstm_blas *blas, int nthreads, int by_rows, ptrdiff_t T,
                        ptrdiff_t N, const ptrdiff_t *batch, ptrdiff_t I, ptrdiff_t Ip,
                        ptrdiff_t H, ptrdiff_t P, const float *x, const float *W_ih,
                        const float *b, const float *W_hh, float *W_f, float *W_x,
                        const float *W_hr, const float *h0, const float *c0, float *gates,
                        int keep, float *y, float *cs, float *ms, int rev,
                        const lstm_rows_place *place, ptrdiff_t ldy)
{
    /* KR: the width of h (P with a projection, whose cell output m goes to ms
     * and h = m . W_hr^T is one more product, after a barrier) */
    const ptrdiff_t *xplace = place ? place->x : NULL, *yplace = place ? place->y : NULL;
    /* the input projection by rows of a table (x NULL, Ip = 0), or gates on entry */
    const int64_t *ids = place ? place->ids : NULL;
    const float *table = place ? place->table : NULL;
    /* x . W_ih^T on AMX (lstm_amx.h, lstm_fused_set_amx_input_rows): for a fused input
     * (Ip) of a batch of at least that many rows, where the CPU and OS allow it, the
     * first step of each chunk of steps (ch_rows rows in all) multiplies the chunk's
     * rows of x with W_ih's parts (W_xa, packed once a call) on the tiles, for each
     * panel the thread runs in any of its steps, into the thread's xw [panel, chunk
     * row, 4 gates x VL]; the float32 panels then hold W_hh only (Ip = 0 from here
     * on), the blocks add their rows of xw and the bias, and the threads split the
     * units (by rows, a thread's rows of a chunk lie apart). Measured
     * (bench/AB_RESULTS.md): AMX slows the FMAs that follow it for tens of
     * microseconds, so a product every step gains less; all of x . W_ih^T before the
     * steps sends its gates out to memory and back; whole steps on AMX (both
     * products) waste the tiles of steps with few rows. */
    const ptrdiff_t Ix = Ip; /* the fused input's width (x's row stride) */
    const ptrdiff_t npanels = (H + VL - 1) / VL;
    /* the rows of a chunk of steps whose products run at once: up to LSTM_AMX_CHUNK_ROWS,
     * and x's parts of them at most LSTM_AMX_CHUNK_BYTES; always at least one step */
    ptrdiff_t ch_rows = LSTM_AMX_CHUNK_BYTES / (3 * 2 * 32 * lstm_amx_ksteps(Ix) + 1);
    ch_rows = ch_rows < LSTM_AMX_CHUNK_ROWS ? ch_rows : LSTM_AMX_CHUNK_ROWS;
    ch_rows = ch_rows > N ? ch_rows : N;
    const ptrdiff_t ch16 = lstm_amx_rows16(ch_rows);
    const ptrdiff_t xa_size = 3 * ch16 * 32 * lstm_amx_ksteps(Ix), xw_size = npanels * ch16 * 4 * VL;
    uint16_t *W_xa = NULL, *xa_all = NULL;
    float *xw_all = NULL;
#if VL == 16 && defined(FASTLSTM_X86_PATHS)
    const ptrdiff_t amx_min = lstm_amx_input_rows_setting();
    if (Ip && W_hh && amx_min && N >= amx_min && lstm_amx_ready()) {
        const int nt = nthreads > 1 ? nthreads : 1;
        W_xa = lstm_amx_alloc((size_t)(npanels * lstm_amx_input_panel_size(Ix)) * sizeof(uint16_t));
        xa_all = lstm_amx_alloc((size_t)(nt * xa_size) * sizeof(uint16_t));
        xw_all = lstm_amx_alloc((size_t)(nt * xw_size) * sizeof(float));
        if (W_xa && xa_all && xw_all) {
            Ip = 0;
            by_rows = 0; /* (split by rows, each thread's rows of a chunk lie apart) */
        } else { /* no memory: the float32 loop as usual */
            lstm_amx_free(W_xa);
            lstm_amx_free(xa_all);
            lstm_amx_free(xw_all);
            W_xa = xa_all = NULL;
            xw_all = NULL;
        }
    }
#endif
    const ptrdiff_t G = 4 * H, KR = P ? P : H, K = Ip + KR;
    /* the row strides of y and of m (the cell's output: ms, or y itself) */
    const ptrdiff_t ly = ldy > 0 ? ldy : KR, lm = P ? H : ly;
    const ptrdiff_t rows = lstm_total_rows(batch, T, N);
    float *m = P ? ms : y;
    /* W_hr^T [H, P] in panels of 4*VL of its P columns (NULL: no memory, a BLAS
     * call per step instead) */
    const ptrdiff_t npp = (P + 4 * VL - 1) / (4 * VL);
    float *W_r = P ? malloc((size_t)(npp * H * 4 * VL) * sizeof(float)) : NULL;
    /* keep = LSTM_KEEP_RING: c_t in a ring of two steps' rows (lstm_fused.h) */
    const int ring = keep == LSTM_KEEP_RING;
    const ptrdiff_t ring1 = lstm_rows_at(batch, 0, N); /* the odd steps' first row */
    if (ring) keep = 0;
    if (keep && lstm_stream_gates_of(rows * G * (ptrdiff_t)sizeof(float))) keep = LSTM_KEEP_STREAM;
    LSTM_PARALLEL(nthreads)
    {
        const lstm_team me = lstm_team_join(blas);
        const lstm_range pp = lstm_share(P, me);
        /* Each thread packs, and projects for, the units it runs the most of. */
        const lstm_range p = lstm_share(npanels, me);
        if (W_hh) FN(pack_panels)(p.lo, p.hi, Ip, H, KR, W_ih, W_hh, W_f);
        /* AMX: W_ih's parts; the thread's parts of a chunk's rows of x (xa) and their
         * products (xw: the chunk's panels of the thread's items, from the first) */
        uint16_t *xa = W_xa ? xa_all + me.tid * xa_size : NULL;
        float *xw = W_xa ? xw_all + me.tid * xw_size : NULL;
        if (W_xa) {
            lstm_amx_input_pack(p.lo, p.hi, Ix, H, W_ih, W_xa);
            lstm_amx_begin();
        }
        if (W_r) {
            const lstm_range q = lstm_share(npp, me);
            FN(pack_columns)(q.lo, q.hi, H, P, W_hr, 1, H, W_r);
        }
        /* one row at every step (rows == T: a reverse pass or a length packs them so
         * too), projected PB rows ahead (see step_project_block) */
        const int one_row = lstm_one_row_ahead_on() && !Ip && x && W_x && !P && !place && ly == KR
                            && N == 1 && rows == T && T > PB
                            && I >= LSTM_ONE_ROW_MIN_INPUT
                            && G * (KR + I) * (ptrdiff_t)sizeof(float) <= LSTM_ONE_ROW_MAX_BYTES;
        if (W_xa) {
            /* the input product runs inside the steps */
        } else if (!Ip && x && W_x) {
            /* (a reverse pass's first PB steps are the last PB rows) */
            const ptrdiff_t r0 = one_row && rev ? rows - PB : 0;
            FN(project_panels)(p.lo, p.hi, one_row ? PB : rows, I, H, x + r0 * I, xplace, W_ih,
                               b, W_x, gates + r0 * G);
        } else if (!Ip) {
            /* Hoisted projection for every step at once, split by units. */
            const ptrdiff_t u0 = p.lo * VL, u1 = p.hi * VL < H ? p.hi * VL : H;
            for (int g = 0; g < 4; ++g)
                lstm_project_f32(blas, rows, I, G, g * H + u0, g * H + u1, x, W_ih, b, gates);
        }
        /* the steps read other threads' panels (and gates, by rows) */
        if (W_hh || !Ip || W_r) {
            LSTM_BARRIER();
        }
        /* Step t's Nt rows start at row `off` of the packed arrays; they are
         * the first Nt rows of the step before (at off_prev). */
        ptrdiff_t off = 0, off_prev = 0;
        /* AMX: the chunk's end step, first row and first panel */
        /* (and its first step, and the packed row after its last) */
        ptrdiff_t ch_t1 = 0, ch_r0 = 0, ch_q0 = 0, ch_t0 = 0, ch_end = 0;
        for (ptrdiff_t t = 0; t < T; ++t) {
            const ptrdiff_t Nt = lstm_rows_at(batch, t, N);
            if (rev) { /* time runs backwards over the [T, N] rows (batch is NULL) */
                off = (T - 1 - t) * N;
                off_prev = (T - t) * N;
            }
            const FN(items) s = FN(step_items)(me, Nt, RF, npanels);
            const float *h_prev = t ? y + off_prev * ly : h0;
            /* this step's and the step before's first row of c_t in cs */
            const ptrdiff_t coff = ring ? (t & 1) * ring1 : off;
            const ptrdiff_t coff_prev = ring ? !(t & 1) * ring1 : off_prev;
            const float *c_prev = t ? cs + coff_prev * H : c0;
            if (yplace && Nt < N) {
                /* the padded zeros of time t: the rows that ran out before it */
                const lstm_range z = lstm_share(N - Nt, me);
                for (ptrdiff_t n = Nt + z.lo; n < Nt + z.hi; ++n)
                    FN(zero_row)(y + (t * N + place->perm[n]) * ly, KR);
            }
            /* Every other step runs the items backwards: it starts on the
             * panels the step before read last, still in L2 when this thread's
             * share of the weights is larger than L2 (read in the same order
             * each step, LRU would have evicted every panel before its reuse).
             * Each panel's sums are its own: the order changes no result. */
            const int down = (int)(t & 1);
            /* AMX: at the first step of a chunk, x . W_ih^T of its steps' rows for the
             * panels the thread runs in any of them (the threads split by units here) */
            if (xw && t >= ch_t1) {
                ptrdiff_t t1 = t, nr = 0, q0 = npanels, q1 = -1;
                do {
                    const ptrdiff_t n1 = lstm_rows_at(batch, t1, N);
                    if (t1 > t && nr + n1 > ch_rows) break;
                    const FN(items) s1 = FN(step_items)(me, n1, RF, npanels);
                    if (s1.w1 > s1.w0) {
                        q0 = s1.pfirst < q0 ? s1.pfirst : q0;
                        q1 = s1.plast > q1 ? s1.plast : q1;
                    }
                    nr += n1;
                    ++t1;
                } while (t1 < T);
                /* the chunk's rows: step t's on, or (reverse: batch is NULL) step t1 - 1's */
                ch_r0 = rev ? (T - t1) * N : off;
                ch_t0 = t;
                ch_t1 = t1;
                ch_end = off + nr;
                ch_q0 = q0;
                if (q1 >= q0) {
                    lstm_amx_input_rows(nr, Ix, x, xplace, ch_r0, xa);
                    lstm_amx_input_products(lstm_amx_rows16(nr), Ix, xa,
                                            W_xa + q0 * lstm_amx_input_panel_size(Ix), q1 - q0 + 1,
                                            xw, ch16 * 4 * VL);
                }
            }
            /* one_row: the rows this step projects, and its share of the panels */
            const ptrdiff_t ahead = one_row ? (t / PB + 1) * PB : T;
            const ptrdiff_t nahead = ahead < T ? (T - ahead < PB ? T - ahead : PB) : 0;
            const ptrdiff_t arow = rev ? T - ahead - nahead : ahead; /* their first row */
            for (ptrdiff_t i = s.w0; i < s.w1; ++i) {
                const ptrdiff_t w = down ? s.w0 + s.w1 - 1 - i : i;
                const FN(work) it = FN(work_item)(w, by_rows, Nt, s.nblocks, npanels, s.pfirst,
                                                   s.plast, W_f, K * 4 * VL, K, down);
                const ptrdiff_t j0 = it.p * VL, n0 = it.n0, r0 = off + it.n0;
                const ptrdiff_t nvalid = H - j0 < VL ? H - j0 : VL;
                if (nahead && (it.p - p.lo) * PB / (p.hi - p.lo) == t % PB) {
                    FN(step_project_rows)((int)nahead, H, I, KR, nvalid, W_f + it.p * K * 4 * VL,
                                          W_x + it.p * I * 4 * VL, x + arow * I, b + j0,
                                          gates + arow * G + j0, h_prev, c_prev + j0,
                                          gates + r0 * G + j0, keep, cs + (coff + n0) * H + j0,
                                          m + r0 * lm + j0, it.pf);
                    continue;
                }
                /* the block's rows: packed at r0.., or placed in the padded x and y */
                const float *xr[RF], *hr[RF], *pr[RF];
                float *hout[RF];
                for (ptrdiff_t r = 0; r < it.n1 - n0; ++r) {
                    const ptrdiff_t row = r0 + r, prev = off_prev + n0 + r;
                    if (Ip) xr[r] = x + (xplace ? xplace[row] : row) * Ip;
                    if (ids) pr[r] = table + ids[row] * G + j0;
                    if (xw) pr[r] = xw + ((it.p - ch_q0) * ch16 + row - ch_r0) * 4 * VL;
                    hr[r] = !t ? h0 + (n0 + r) * KR : y + (yplace ? yplace[prev] : prev) * ly;
                    hout[r] = m + (yplace ? yplace[row] : row) * lm + j0;
                }
                FN(forward_rows)((int)(it.n1 - n0), H, Ip, KR, nvalid, W_f + it.p * K * 4 * VL,
                                 Ip ? xr : NULL, b + j0, hr, c_prev + n0 * H + j0,
                                 gates + r0 * G + j0, ids || xw ? pr : NULL, xw ? VL : H,
                                 xw != NULL, keep, cs + (coff + n0) * H + j0, hout, it.pf);
            }
            if (xw && !rev && ch_t1 < T) {
                /* the next chunk's rows of x into L2, a share of them at each step of
                 * this chunk (the next chunk's first step reads them all, to make their
                 * parts; from memory, that took twice the time): the lengths forward
                 * 0.983-0.991x the time */
                const ptrdiff_t n = rows - ch_end < ch_rows ? rows - ch_end : ch_rows;
                const ptrdiff_t k = ch_t1 - ch_t0, i = t - ch_t0;
                const ptrdiff_t a = ch_end + n * i / k, z = ch_end + n * (i + 1) / k;
                for (ptrdiff_t r = a; r < z; ++r) {
                    const char *row = (const char *)(x + (xplace ? xplace[r] : r) * Ix);
                    for (ptrdiff_t c = 0; c < Ix * (ptrdiff_t)sizeof(float); c += 64)
                        __builtin_prefetch(row + c, 0, 2);
                }
            }
            if (keep == LSTM_KEEP_STREAM) lstm_stream_fence();
            LSTM_BARRIER();
            if (P) {
                /* y[rows] = m[rows] . W_hr^T */
                if (W_r)
                    FN(panel_product)(me, Nt, H, P, W_r, ms + off * H, H, y + off * P, P);
                else
                    lstm_gemm_f32(blas, 'T', 'N', pp.hi - pp.lo, Nt, H, W_hr + pp.lo * H, H,
                                  ms + off * H, H, 0.0f, y + off * P + pp.lo, P);
                LSTM_BARRIER();
            }
            off_prev = off;
            off += Nt;
        }
        if (xw) lstm_amx_end();
        if (yplace) lstm_stream_fence(); /* (zero_row) */
        lstm_team_leave(blas, me);
    }
    free(W_r);
    lstm_amx_free(W_xa);
    lstm_amx_free(xa_all);
    lstm_amx_free(xw_all);
}

/* ---- backward ----------------------------------------------------------- */
/* The gate gradients of one row x VL units (n of them valid), given the
 * recurrent part of dh; they are also added to sum[0..3] (for db; lanes past
 * n get zeros). */
INLINE void FN(backward_gates)(ptrdiff_t H, ptrdiff_t n, VF dh_rec, float *gr,
                               const float *c_prev, const float *c, const float *dy, float *dc,
                               VF *sum)
{
    VF i = FN(loadn)(gr, n), f = FN(loadn)(gr + H, n);
    VF g = FN(loadn)(gr + 2 * H, n), o = FN(loadn)(gr + 3 * H, n);
    VF dhv = dh_rec + FN(loadn)(dy, n);
    VF tc = FN(tanh)(FN(loadn)(c, n));
    VF dct = FN(loadn)(dc, n) + dhv * o * (1.0f - tc * tc);
    const VF di = dct * g * i * (1.0f - i), df = dct * FN(loadn)(c_prev, n) * f * (1.0f - f);
    const VF dg = dct * i * (1.0f - g * g), dout = dhv * tc * o * (1.0f - o);
    FN(storen)(gr, di, n);
    FN(storen)(gr + H, df, n);
    FN(storen)(gr + 2 * H, dg, n);
    FN(storen)(gr + 3 * H, dout, n);
    FN(storen)(dc, dct * f, n);
    sum[0] += di;
    sum[1] += df;
    sum[2] += dg;
    sum[3] += dout;
}

/* One block: R rows x one panel of BV*VL units, doing what mode says
 * (lstm_bwd_mode). A step adds its rows' gate gradients to db_part (the
 * calling thread's partial db at the panel, or NULL for none). */
INLINE void FN(backward_block)(const int R, lstm_bwd_mode mode, ptrdiff_t H, ptrdiff_t nvalid,
                               const float *Wp, const float *dP_next, float *gates,
                               const float *c_prev, const float *c, const float *dy,
                               float *dh, ptrdiff_t ldh, float *dc, float *db_part,
                               const char *pf)
{
    const ptrdiff_t G = 4 * H;
    ptrdiff_t nv[BV];
#pragma GCC unroll 4
    for (int v = 0; v < BV; ++v) {
        const ptrdiff_t left = nvalid - v * VL;
        nv[v] = left < 0 ? 0 : left < VL ? left : VL;
    }
    VF acc[RB][BV];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < BV; ++v)
            acc[r][v] = FN(splat)(0.0f);
    if (mode == LSTM_BWD_LAST) {
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
            for (int v = 0; v < BV; ++v)
                acc[r][v] = FN(loadn)(dh + r * ldh + v * VL, nv[v]);
    } else {
        for (ptrdiff_t k = 0; k < G; ++k, pf += 64) {
            const float *w = Wp + k * BV * VL;
            __builtin_prefetch(pf, 0, 2);
            VF wv[BV];
#pragma GCC unroll 4
            for (int v = 0; v < BV; ++v)
                wv[v] = FN(load)(w + v * VL);
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r) {
                VF b = FN(splat)(dP_next[r * G + k]);
#pragma GCC unroll 4
                for (int v = 0; v < BV; ++v)
                    acc[r][v] += b * wv[v];
            }
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < BV; ++v) {
        if (nv[v] <= 0) continue;
        VF sum[4] = {FN(splat)(0.0f), FN(splat)(0.0f), FN(splat)(0.0f), FN(splat)(0.0f)};
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            const ptrdiff_t off = r * H + v * VL;
            if (mode == LSTM_BWD_DH0)
                FN(storen)(dh + r * ldh + v * VL, acc[r][v], nv[v]);
            else
                FN(backward_gates)(H, nv[v], acc[r][v], gates + r * G + v * VL, c_prev + off,
                                   c + off, dy + off, dc + off, sum);
        }
        if (mode != LSTM_BWD_DH0 && db_part)
#pragma GCC unroll 4
            for (int g = 0; g < 4; ++g) {
                float *d = db_part + g * H + v * VL;
                FN(storen)(d, FN(loadn)(d, nv[v]) + sum[g], nv[v]);
            }
    }
}

#define BWD_CASE(R_)                                                                     \
    case R_:                                                                             \
        FN(backward_block)(R_, mode, H, nvalid, Wp, dP_next, gates, c_prev, c, dy, dh, ldh, \
                           dc, db_part, pf);                                             \
        break;

_Static_assert(RB == 6, "backward_rows has cases for 1..6 rows");

static void FN(backward_rows)(int R, lstm_bwd_mode mode, ptrdiff_t H, ptrdiff_t nvalid, const float *Wp,
                              const float *dP_next, float *gates, const float *c_prev,
                              const float *c, const float *dy, float *dh, ptrdiff_t ldh,
                              float *dc, float *db_part, const char *pf)
{
    switch (R) {
    BWD_CASE(1) BWD_CASE(2) BWD_CASE(3) BWD_CASE(4) BWD_CASE(5) BWD_CASE(6)
    default: break;
    }
}

/* W_hh [G, R] (R = H, or P with a projection) in panels of BV * VL of its R
 * columns, each panel all G rows. */
static void FN(pack_backward_panels)(ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t H, ptrdiff_t R,
                                     const float *W_hh, float *W_b)
{
    const ptrdiff_t G = 4 * H;
    for (ptrdiff_t p = p0; p < p1; ++p)
        for (ptrdiff_t k = 0; k < G; ++k)
            for (int u = 0; u < BV * VL; ++u) {
                ptrdiff_t j = p * BV * VL + u;
                W_b[(p * G + k) * BV * VL + u] = j < R ? W_hh[k * R + j] : 0.0f;
            }
}

static void FN(pack_backward)(ptrdiff_t H, ptrdiff_t R, const float *W_hh, float *W_b)
{
    FN(pack_backward_panels)(0, (R + BV * VL - 1) / (BV * VL), H, R, W_hh, W_b);
}

/* Rows [n0, n1) of a backward step whose first Nnext rows go on to a next
 * step (mode STEP for them) and whose others end here (LAST: the given dh);
 * a block across the boundary runs as two calls. */
static void FN(backward_split)(lstm_bwd_mode mode, ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t Nnext,
                               ptrdiff_t H, ptrdiff_t nvalid, const float *Wp,
                               const float *dP_next, float *gates, const float *c_prev,
                               const float *c, const float *dy, float *dh, float *dc,
                               float *db_part, const char *pf)
{
    const ptrdiff_t G = 4 * H;
    const ptrdiff_t cut = mode != LSTM_BWD_STEP ? n0 : Nnext < n0 ? n0 : Nnext > n1 ? n1 : Nnext;
    if (cut > n0)
        FN(backward_rows)((int)(cut - n0), LSTM_BWD_STEP, H, nvalid, Wp, dP_next, gates, c_prev, c,
                          dy, dh, H, dc, db_part, pf);
    if (n1 > cut) {
        const ptrdiff_t k = cut - n0;
        FN(backward_rows)((int)(n1 - cut), mode == LSTM_BWD_STEP ? LSTM_BWD_LAST : mode, H, nvalid,
                          Wp, dP_next ? dP_next + k * G : NULL, gates + k * G,
                          c_prev ? c_prev + k * H : NULL, c ? c + k * H : NULL,
                          dy ? dy + k * H : NULL, dh + k * H, H, dc ? dc + k * H : NULL, db_part,
                          pf);
    }
}

/* ---- the weight gradients over all rows (after a backward loop) ------------
 * C [G, Wp] (+)= dP [n, G]^T . xh [n, Wp] on one thread's rows, Wp a multiple
 * of VL and xh's rows zero padded to it: tiles of R gate rows x V vectors of
 * columns, summed in registers over GKC rows at a time. dP's entries are
 * broadcast from its own layout and xh's rows read as vectors, so that nothing
 * is packed (a BLAS product first copies all of dP into its blocks, a fifth of
 * its time here). For each block of rows the gate rows are the outer loop: a
 * tile's lines of dP stay in L1 across the columns, the block of xh in L2,
 * gathered in panels of a tile's width (lstm_gather_xh) so that a tile reads
 * its rows of xh as one stream, fetched 8 rows ahead. Against rows Wp apart
 * (2.4 KB at the peer model's second layer, past the stride an Intel core's
 * prefetcher follows) the peer model's forward+backward took 0.93x the time,
 * 0.92x at H = I = 512 (Intel Xeon with AMX, 2 threads; bench/AB_RESULTS.md). */
#define GKC 128
INLINE void FN(grads_tile)(const int R, const int V, ptrdiff_t nk, ptrdiff_t G, ptrdiff_t Wp,
                           ptrdiff_t xs, const float *dP, const float *xh, float *C, int first)
{
    VF acc[RB][BV];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v)
            acc[r][v] = first ? FN(splat)(0.0f) : FN(load)(C + r * Wp + v * VL);
    for (ptrdiff_t k = 0; k < nk; ++k) {
        const float *xr = xh + k * xs, *dr = dP + k * G;
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) __builtin_prefetch(xr + 8 * xs + v * VL, 0, 3);
        VF w[BV];
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) w[v] = FN(load)(xr + v * VL);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            const VF b = FN(splat)(dr[r]);
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v) acc[r][v] += b * w[v];
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) FN(store)(C + r * Wp + v * VL, acc[r][v]);
}

#if BV >= 4
#define GRADS_V34(R_) GRADS_V(R_, 3) GRADS_V(R_, 4)
#else
#define GRADS_V34(R_)
#endif
#define GRADS_V(R_, V_)                                                 \
    case V_:                                                            \
        FN(grads_tile)(R_, V_, nk, G, Wp, xs, dP, xh, C, first);        \
        break;
#define GRADS_R(R_)                                                     \
    case R_:                                                            \
        switch (V) {                                                    \
        GRADS_V(R_, 1) GRADS_V(R_, 2) GRADS_V34(R_)                     \
        default: break;                                                 \
        }                                                               \
        break;

_Static_assert(BV == 2 || BV == 4, "grads_tiles has cases for 1..BV vectors");

static void FN(grads_tiles)(int R, int V, ptrdiff_t nk, ptrdiff_t G, ptrdiff_t Wp, ptrdiff_t xs,
                            const float *dP, const float *xh, float *C, int first)
{
    switch (R) {
    GRADS_R(1) GRADS_R(2) GRADS_R(3) GRADS_R(4) GRADS_R(5) GRADS_R(6)
    default: break;
    }
}
#undef GRADS_V34
#undef GRADS_V
#undef GRADS_R

/* tab_part [V, G] (+)= the rows a..a+n-1 of dP added up by id (a thread's part of
 * the table's gradient: lstm_fused_backward's ids). */
static void FN(scatter_rows)(ptrdiff_t a, ptrdiff_t n, ptrdiff_t G, const int64_t *ids,
                             const float *dP, float *tab_part)
{
    for (ptrdiff_t r = a; r < a + n; ++r) {
        float *d = tab_part + ids[r] * G;
        const float *s = dP + r * G;
        ptrdiff_t j = 0;
        for (; j + VL <= G; j += VL) FN(store)(d + j, FN(load)(d + j) + FN(load)(s + j));
        for (; j < G; ++j) d[j] += s[j];
    }
}

/* C [G, Wp] (+)= dP [n, G]^T . xh, xh n rows of Wp columns in panels of
 * BV * VL columns (lstm_gather_xh: panel v0 / BV at xh + v0 * VL * n, its rows
 * w = min(BV * VL, Wp - v0 * VL) apart), so that each tile streams its panel.
 * With ids ([n], NULL: none), each block of GKC rows of dP is also added up by
 * id into tab_part right after its tiles, while it is in L2. */
static void FN(grads_product)(ptrdiff_t n, ptrdiff_t G, ptrdiff_t Wp, const float *dP,
                              const float *xh, float *C, int first, const int64_t *ids,
                              float *tab_part)
{
    const ptrdiff_t nvec = Wp / VL;
    for (ptrdiff_t k0 = 0; k0 < n; k0 += GKC) {
        const ptrdiff_t nk = n - k0 < GKC ? n - k0 : GKC;
        const int fst = first && k0 == 0;
        for (ptrdiff_t g0 = 0; g0 < G; g0 += RB) {
            const int R = G - g0 < RB ? (int)(G - g0) : RB;
            for (ptrdiff_t v0 = 0; v0 < nvec; v0 += BV) {
                const int V = nvec - v0 < BV ? (int)(nvec - v0) : BV;
                const ptrdiff_t w = V * VL;
                FN(grads_tiles)(R, V, nk, G, Wp, w, dP + k0 * G + g0, xh + v0 * VL * n + k0 * w,
                                C + g0 * Wp + v0 * VL, fst);
            }
        }
        if (ids) FN(scatter_rows)(k0, nk, G, ids, dP, tab_part);
    }
}

/* The workspace of the weight gradients' parts (lstm_fused_backward_work_size),
 * or NULL where they do not go in parts (lstm_grads_in_parts) or there is none. */
static float *FN(grads_parts)(float *work, int nthreads, ptrdiff_t rows, ptrdiff_t I,
                              ptrdiff_t H, ptrdiff_t K)
{
    return work && lstm_grads_in_parts(rows, nthreads, 4 * H, lstm_grads_width(I + K)) ? work
                                                                                       : NULL;
}

/* Where weight_grads keeps W_ih packed as backward panels: after the parts and
 * the xh blocks. */
static float *FN(dx_panels)(float *parts, int nthreads, ptrdiff_t rows, ptrdiff_t I, ptrdiff_t H,
                            ptrdiff_t K)
{
    return parts + lstm_grads_work(rows, nthreads, 4 * H, lstm_grads_width(I + K));
}

/* Each thread packs its share of those panels, before the time loop (whose
 * barriers publish them); nothing without parts. */
static void FN(pack_dx)(lstm_team me, int nthreads, ptrdiff_t rows, ptrdiff_t I, ptrdiff_t H,
                        ptrdiff_t K, const float *W_ih, float *work)
{
    float *parts = FN(grads_parts)(work, nthreads, rows, I, H, K);
    const lstm_range mine = lstm_share((I + BV * VL - 1) / (BV * VL), me);
    if (parts)
        FN(pack_backward_panels)(mine.lo, mine.hi, H, I, W_ih,
                                 FN(dx_panels)(parts, nthreads, rows, I, H, K));
}

/* After a backward loop (every thread, after a barrier): dx, dW_ih, dW_hh and
 * db from dP = gates [rows, G]. In parts (grads_parts) each thread sums the
 * weight gradients of its own rows into its part (grads_product over [x | h
 * read]) and computes its rows of dx; weight_grads_sum adds the parts up
 * after a barrier (returns 1: call it). Else in separate BLAS products
 * (lstm_common.h; returns 0). K = H, or P with a projection. */
static int FN(weight_grads)(const lstm_blas *blas, lstm_team me, int nthreads, ptrdiff_t T,
                            ptrdiff_t N, ptrdiff_t rows, ptrdiff_t I, ptrdiff_t H, ptrdiff_t K,
                            const float *x, const float *W_ih, const float *h0, const float *y,
                            const float *h_prev, const float *gates, float *dx, float *dW_ih,
                            float *dW_hh, float *db, const float *db_parts, int ndb, float *work,
                            int rev, const int64_t *ids, float *tab_part)
{
    const ptrdiff_t G = 4 * H, Wp = lstm_grads_width(I + K);
    const lstm_range r = lstm_share(rows, me);
    work = FN(grads_parts)(work, nthreads, rows, I, H, K);
    if (!work) {
        const lstm_range g = lstm_share(G, me);
        lstm_backward_products_f32(blas, T, N, rows, I, H, K, g.lo, g.hi, r.lo, r.hi, x, W_ih, h0,
                                   y, h_prev, gates, dx, dW_ih, dW_hh, db, db_parts, ndb, rev);
        return 0;
    }
    const ptrdiff_t chunk = lstm_grads_chunk(rows, nthreads, Wp);
    const ptrdiff_t nparts = nthreads > 1 ? nthreads : 1;
    float *part = work + me.tid * G * Wp, *xh = work + (nparts * G + me.tid * chunk) * Wp;
    /* dx = dP . W_ih on this thread's rows, by the backward loop's own blocks
     * on W_ih packed as its panels (pack_dx) */
    const ptrdiff_t PW = BV * VL, npanels = (I + PW - 1) / PW;
    const float *W_ix = FN(dx_panels)(work, nthreads, rows, I, H, K);
    for (ptrdiff_t p = 0; p < npanels; ++p) {
        const float *Wp_ = W_ix + p * G * PW;
        const ptrdiff_t j0 = p * PW, nvalid = I - j0 < PW ? I - j0 : PW;
        for (ptrdiff_t a = r.lo; a < r.hi; a += RB)
            FN(backward_rows)((int)(r.hi - a < RB ? r.hi - a : RB), LSTM_BWD_DH0, H, nvalid, Wp_,
                              gates + a * G, NULL, NULL, NULL, NULL, dx + a * I + j0, I, NULL,
                              NULL, (const char *)Wp_);
    }
    for (ptrdiff_t a = r.lo; a < r.hi; a += chunk) {
        const ptrdiff_t nr = r.hi - a < chunk ? r.hi - a : chunk;
        lstm_gather_xh_f32(a, nr, N, rows, I, K, Wp, BV * VL, x, h0, y, h_prev, rev, xh);
#if VL == 16 && defined(FASTLSTM_X86_PATHS)
        /* on AMX where it can (lstm_amx.h; the table's rows need this loop) */
        const ptrdiff_t amx_rows = lstm_amx_rows_setting();
        if (amx_rows && nr >= amx_rows && !ids &&
            lstm_amx_grads(nr, G, Wp, gates + a * G, xh, BV * VL, part, a != r.lo))
            continue;
#endif
        FN(grads_product)(nr, G, Wp, gates + a * G, xh, part, a == r.lo, ids ? ids + a : NULL,
                          tab_part);
    }
    if (r.hi <= r.lo) memset(part, 0, (size_t)(G * Wp) * sizeof(float));
    return 1;
}

static void FN(weight_grads_sum)(lstm_team me, ptrdiff_t rows, ptrdiff_t I, ptrdiff_t H,
                                 ptrdiff_t K, const float *gates, float *dW_ih, float *dW_hh,
                                 float *db, const float *db_parts, int ndb, const float *work)
{
    const lstm_range g = lstm_share(4 * H, me);
    lstm_backward_sum_grads_f32(I, K, 4 * H, lstm_grads_width(I + K), g.lo, g.hi, work, me.nt,
                                dW_ih, dW_hh, db, db_parts, ndb, gates, rows);
}

static void FN(backward)(const lstm_blas *blas, int nthreads, int by_rows, ptrdiff_t T,
                         ptrdiff_t N, const ptrdiff_t *batch, ptrdiff_t I, ptrdiff_t H,
                         const float *x, const float *W_ih, const float *h0, const float *c0,
                         const float *y, const float *h_prev, const float *cs, const float *W_b,
                         float *gates, const float *dy, float *dh, float *dc, float *dx,
                         float *dW_ih, float *dW_hh, float *db, float *work, int rev,
                         const int64_t *ids, ptrdiff_t V, float *dtab)
{
    const ptrdiff_t npanels = (H + BV * VL - 1) / (BV * VL), G = 4 * H, PW = BV * VL;
    const ptrdiff_t rows = lstm_total_rows(batch, T, N);
    /* db in one partial sum per thread, added up after the loop (without the
     * memory, lstm_backward_products sums dP over all rows instead) */
    float *db_parts = calloc((size_t)(nthreads > 1 ? nthreads : 1) * (size_t)G, sizeof(float));
    /* with ids, the table's gradient in one part per thread, each filled with the
     * rows of dP that thread sums for the weight gradients while they are in cache */
    const ptrdiff_t ntab = ids ? (ptrdiff_t)(nthreads > 1 ? nthreads : 1) * V * G : 0;
    float *tab_parts = ntab ? calloc((size_t)ntab, sizeof(float)) : NULL;

    LSTM_PARALLEL(nthreads)
    {
        const lstm_team me = lstm_team_join(blas);
        FN(pack_dx)(me, nthreads, rows, I, H, H, W_ih, work);
        /* Step t's Nt rows start at row off of the packed arrays; the first
         * Nnext of them run on to step t + 1, whose dP starts at off + Nt. */
        ptrdiff_t off = rows;
        for (ptrdiff_t t = T - 1; t >= 0; --t) {
            lstm_back_step st = lstm_step_back(batch, t, T, N, off);
            if (rev) { /* time ran backwards over the [T, N] rows (batch is NULL) */
                st.off = (T - 1 - t) * N;
                st.off_prev = (T - t) * N;
            }
            const ptrdiff_t Nt = st.Nt, Nnext = st.Nnext, off_prev = st.off_prev;
            off = st.off;
            const lstm_bwd_mode mode = t == T - 1 ? LSTM_BWD_LAST : LSTM_BWD_STEP;
            const float *dP_next = gates + (rev ? off - N : off + Nt) * G;
            const FN(items) s = FN(step_items)(me, Nt, RB, npanels);
            for (ptrdiff_t w = s.w0; w < s.w1; ++w) {
                const FN(work) it = FN(work_item)(w, by_rows, Nt, s.nblocks, npanels, s.pfirst,
                                                   s.plast, W_b, G * PW, G, 0);
                const ptrdiff_t j0 = it.p * PW, n0 = it.n0, r0 = off + n0;
                const ptrdiff_t nvalid = H - j0 < PW ? H - j0 : PW;
                const float *c_prev = t ? cs + (off_prev + n0) * H : c0 + n0 * H;
                FN(backward_split)(mode, n0, it.n1, Nnext, H, nvalid, W_b + it.p * G * PW,
                                   mode == LSTM_BWD_STEP ? dP_next + n0 * G : NULL,
                                   gates + r0 * G + j0, c_prev + j0, cs + r0 * H + j0,
                                   dy + r0 * H + j0, dh + n0 * H + j0, dc + n0 * H + j0,
                                   db_parts ? db_parts + me.tid * G + j0 : NULL, it.pf);
            }
            LSTM_BARRIER();
        }
        /* dh0 = dP[0] . W_hh: the product of a step that does not exist. */
        const ptrdiff_t N0 = lstm_rows_at(batch, 0, N);
        const float *dP0 = gates + (rev ? (T - 1) * N : 0) * G; /* step 0's rows */
        const FN(items) s = FN(step_items)(me, N0, RB, npanels);
        for (ptrdiff_t w = s.w0; w < s.w1; ++w) {
            const FN(work) it = FN(work_item)(w, by_rows, N0, s.nblocks, npanels, s.pfirst,
                                               s.plast, W_b, G * PW, G, 0);
            const ptrdiff_t j0 = it.p * PW, n0 = it.n0;
            const ptrdiff_t nvalid = H - j0 < PW ? H - j0 : PW;
            FN(backward_rows)((int)(it.n1 - n0), LSTM_BWD_DH0, H, nvalid, W_b + it.p * G * PW,
                              dP0 + n0 * G, NULL, NULL, NULL, NULL, dh + n0 * H + j0, H, NULL,
                              NULL, it.pf);
        }
        /* The all-steps products need every column of dP: wait for all. */
        LSTM_BARRIER();
        const int ndb = nthreads > 1 ? nthreads : 1;
        float *tab_part = tab_parts ? tab_parts + me.tid * V * G : NULL;
        const int parts = FN(weight_grads)(blas, me, nthreads, T, N, rows, I, H, H, x, W_ih, h0,
                                           y, h_prev, gates, dx, dW_ih, dW_hh, db, db_parts, ndb,
                                           work, rev, tab_parts ? ids : NULL, tab_part);
        if (parts) {
            LSTM_BARRIER();
            FN(weight_grads_sum)(me, rows, I, H, H, gates, dW_ih, dW_hh, db, db_parts, ndb, work);
        }
        if (ids && parts && tab_parts) { /* dtab += the parts, each thread its share */
            const lstm_range e = lstm_share(V * G, me);
            for (ptrdiff_t i = e.lo; i < e.hi; ++i) {
                float sum = dtab[i];
                for (int t = 0; t < ndb; ++t) sum += tab_parts[t * V * G + i];
                dtab[i] = sum;
            }
        } else if (ids) {
            /* the weight gradients ran as BLAS products (or no memory for the parts):
             * every row of dP by id, each thread its share of the columns (dP is
             * complete: the barrier before the weight gradients) */
            const lstm_range c = lstm_share(G, me);
            for (ptrdiff_t r = 0; r < rows; ++r)
                for (ptrdiff_t j = c.lo; j < c.hi; ++j) dtab[ids[r] * G + j] += gates[r * G + j];
        }
        lstm_team_leave(blas, me);
    }
    free(db_parts);
    free(tab_parts);
}

/* ---- backward with a projection (proj_size) ---------------------------------
 * h_t = W_hr . m_t with m_t = o * tanh(c_t) (forward: FN(forward) with P). Each
 * step is two phases with a barrier after each: every thread takes its share
 * of the P features of the gradient reaching h_t (dy_t + dP[t+1] . W_hh, a
 * BLAS call on the thread), then its hidden units: dm = dh_t . W_hr for them
 * and their gate math in vectors. Rows as in backward (batch: packed steps). */
/* dh [rows n0..n1 of a step, P] = dP [those rows, G] . W_hh [G, P] (packed in
 * W_b by lstm_fused_pack_backward with R = P), for every (P panel, row block)
 * item of this thread among npp * ceil(n / RB) (n1 - n0 = n rows). */
static void FN(proj_dh)(lstm_team me, ptrdiff_t n, ptrdiff_t H, ptrdiff_t P, const float *W_b,
                        const float *dP, float *dh, const float *dy)
{
    const ptrdiff_t G = 4 * H, PW = BV * VL, npp = (P + PW - 1) / PW;
    const FN(items) s = FN(step_items)(me, n, RB, npp);
    for (ptrdiff_t w = s.w0; w < s.w1; ++w) {
        const FN(work) it = FN(work_item)(w, 0, n, s.nblocks, npp, s.pfirst, s.plast, W_b, G * PW, G, 0);
        const ptrdiff_t j0 = it.p * PW, nvalid = P - j0 < PW ? P - j0 : PW;
        FN(backward_rows)((int)(it.n1 - it.n0), LSTM_BWD_DH0, H, nvalid, W_b + it.p * G * PW,
                          dP + it.n0 * G, NULL, NULL, NULL, NULL, dh + it.n0 * P + j0, P, NULL,
                          NULL, it.pf);
        /* dy: + dy_t on the block just written (no other thread touches it) */
        for (ptrdiff_t r = it.n0; dy && r < it.n1; ++r)
            for (ptrdiff_t q = j0; q < j0 + nvalid; ++q) dh[r * P + q] = dy[r * P + q] + dh[r * P + q];
    }
}

/* dW_hr [p0:p1, H] += dh [rows, P]^T . m [rows, H]: this thread's rows of dW_hr over
 * every row, in grads_product's tiles with m's rows read where they are (H a
 * multiple of VL; else lstm_gemm). */
static void FN(proj_weight_grads)(ptrdiff_t rows, ptrdiff_t P, ptrdiff_t H, ptrdiff_t p0,
                                  ptrdiff_t p1, const float *dhs, const float *ms, float *dW_hr)
{
    const ptrdiff_t nvec = H / VL;
    for (ptrdiff_t k0 = 0; k0 < rows; k0 += GKC) {
        const ptrdiff_t nk = rows - k0 < GKC ? rows - k0 : GKC;
        for (ptrdiff_t g0 = p0; g0 < p1; g0 += RB) {
            const int R = p1 - g0 < RB ? (int)(p1 - g0) : RB;
            for (ptrdiff_t v0 = 0; v0 < nvec; v0 += BV) {
                const int V = nvec - v0 < BV ? (int)(nvec - v0) : BV;
                FN(grads_tiles)(R, V, nk, P, H, H, dhs + k0 * P + g0, ms + k0 * H + v0 * VL,
                                dW_hr + g0 * H + v0 * VL, 0);
            }
        }
    }
}

static void FN(backward_proj)(const lstm_blas *blas, int nthreads, ptrdiff_t T, ptrdiff_t N,
                              const ptrdiff_t *batch, ptrdiff_t I, ptrdiff_t H, ptrdiff_t P,
                              const float *x, const float *W_ih, const float *W_b,
                              const float *W_hr, const float *h0,
                              const float *c0, const float *y, const float *h_prev,
                              const float *cs, const float *ms, float *gates, const float *dy,
                              float *dh, float *dc, float *dx, float *dW_ih, float *dW_hh,
                              float *dW_hr, float *db, float *work)
{
    const ptrdiff_t PW = 4 * VL, npanels = (H + PW - 1) / PW, G = 4 * H;
    const ptrdiff_t rows = lstm_total_rows(batch, T, N);
    float *dhs = work, *dm = work + rows * P; /* dh_t [rows, P]; dm [N, H] */
    float *grads_work = work + rows * P + N * H; /* lstm_fused_backward_work_size */
    /* W_hr [P, H] in panels of PW of its H columns, each thread packing and reading
     * those of its units (NULL: no memory, a BLAS call per step instead) */
    float *W_r = malloc((size_t)(npanels * P * PW) * sizeof(float));
    /* db summed by the gate math, each thread at its own units (NULL: no memory,
     * lstm_backward_products sums the gate gradients' rows instead) */
    float *db_units = calloc((size_t)G, sizeof(float));
    LSTM_PARALLEL(nthreads)
    {
        const lstm_team me = lstm_team_join(blas);
        const lstm_range pu = lstm_share(npanels, me), pp = lstm_share(P, me);
        const ptrdiff_t u0 = pu.lo * PW, u1 = pu.hi * PW < H ? pu.hi * PW : H;
        const ptrdiff_t p0 = pp.lo, p1 = pp.hi;
        if (W_r) FN(pack_columns)(pu.lo, pu.hi, P, H, W_hr, H, 1, W_r);
        FN(pack_dx)(me, nthreads, rows, I, H, P, W_ih, grads_work);
        ptrdiff_t off = rows;
        for (ptrdiff_t t = T - 1; t >= 0; --t) {
            const lstm_back_step st = lstm_step_back(batch, t, T, N, off);
            const ptrdiff_t Nt = st.Nt, Nnext = st.Nnext, off_prev = st.off_prev;
            off = st.off;
            float *dht = dhs + off * P;
            /* dh_t = dP[t+1] . W_hh for the rows that go on, then + dy_t; rows that
             * end here start from dh_T */
            FN(proj_dh)(me, Nnext, H, P, W_b, gates + (off + Nt) * G, dht, dy + off * P);
            for (ptrdiff_t n = Nnext; n < Nt; ++n) {
                const float *d = dy + (off + n) * P, *rec = dh + n * P;
                for (ptrdiff_t q = p0; q < p1; ++q) dht[n * P + q] = d[q] + rec[q];
            }
            LSTM_BARRIER();
            /* dm[:, u0:u1] = dh_t . W_hr[:, u0:u1], then the gate math of these units */
            if (W_r)
                for (ptrdiff_t q = pu.lo; q < pu.hi; ++q)
                    for (ptrdiff_t n0 = 0; n0 < Nt; n0 += RF)
                        FN(panel_rows)((int)(Nt - n0 < RF ? Nt - n0 : RF), P,
                                       H - q * PW < PW ? H - q * PW : PW, W_r + q * P * PW,
                                       dht + n0 * P, P, dm + n0 * H + q * PW, H, NULL);
            else if (u1 > u0)
                lstm_gemm_f32(blas, 'N', 'N', u1 - u0, Nt, P, W_hr + u0, H, dht, P, 0.0f, dm + u0,
                              H);
            const float *c_prev = t ? cs + off_prev * H : c0;
            for (ptrdiff_t j = u0; j < u1; j += VL) {
                const ptrdiff_t nv = u1 - j < VL ? u1 - j : VL;
                VF sum[4] = {FN(splat)(0.0f), FN(splat)(0.0f), FN(splat)(0.0f), FN(splat)(0.0f)};
                for (ptrdiff_t n = 0; n < Nt; ++n)
                    FN(backward_gates)(H, nv, FN(splat)(0.0f), gates + (off + n) * G + j,
                                       c_prev + n * H + j, cs + (off + n) * H + j, dm + n * H + j,
                                       dc + n * H + j, sum);
                if (db_units)
                    for (int q = 0; q < 4; ++q) {
                        float *d = db_units + q * H + j;
                        FN(storen)(d, FN(loadn)(d, nv) + sum[q], nv);
                    }
            }
            LSTM_BARRIER();
        }
        /* dh_0 = dP[0] . W_hh for the rows that ran (the others keep dh_T) */
        FN(proj_dh)(me, lstm_rows_at(batch, 0, N), H, P, W_b, gates, dh, NULL);
        if (FN(weight_grads)(blas, me, nthreads, T, N, rows, I, H, P, x, W_ih, h0, y, h_prev,
                             gates, dx, dW_ih, dW_hh, db, db_units, 1, grads_work, 0, NULL, NULL)) {
            LSTM_BARRIER();
            FN(weight_grads_sum)(me, rows, I, H, P, gates, dW_ih, dW_hh, db, db_units, 1,
                                 grads_work);
        }
        /* dW_hr[p0:p1] += dh^T . m over every row */
        if (H % VL == 0) {
            FN(proj_weight_grads)(rows, P, H, p0, p1, dhs, ms, dW_hr);
        } else {
            const ptrdiff_t step = lstm_rows_per_call(H > P ? H : P);
            for (ptrdiff_t a0 = 0; a0 < rows; a0 += step)
                lstm_gemm_f32(blas, 'N', 'T', H, p1 - p0, rows - a0 < step ? rows - a0 : step,
                              ms + a0 * H, H, dhs + a0 * P + p0, P, 1.0f, dW_hr + p0 * H, H);
        }
        lstm_team_leave(blas, me);
    }
    free(W_r);
    free(db_units);
}

/* ---- one row on weights packed once (the generation loop's own team) -----
 * Panels p0..p1-1 of one layer's step for one row, on the calling thread:
 * W_f packed by pack_forward(Ip, H, H); x [Ip] fused when Ip > 0, and add
 * [G] the bias, or with Ip = 0 the whole input part of the pre-activations
 * (layer 0's folded input). c [H] is updated in place for these units, h
 * [H] written; down runs the panels from the last (every other step: the
 * panels read last are still in L2). */
static void FN(row_panels)(ptrdiff_t p0, ptrdiff_t p1, int down, ptrdiff_t Ip, ptrdiff_t H,
                           const float *W_f, const float *x, const float *add,
                           const float *h_prev, float *c, float *h)
{
    const ptrdiff_t panel = (Ip + H) * 4 * VL;
    for (ptrdiff_t i = p0; i < p1; ++i) {
        const ptrdiff_t p = down ? p0 + p1 - 1 - i : i;
        const ptrdiff_t pn = down ? (p > p0 ? p - 1 : p1 - 1) : (p + 1 < p1 ? p + 1 : p0);
        const ptrdiff_t j0 = p * VL, nvalid = H - j0 < VL ? H - j0 : VL;
        /* keep = 0: add is only read, as the hoisted projection would be */
        const float *xr[1] = {x}, *hr[1] = {h_prev};
        float *hout[1] = {h + j0};
        FN(forward_rows)(1, H, Ip, H, nvalid, W_f + p * panel, Ip ? xr : NULL, add + j0, hr,
                         c + j0, (float *)(uintptr_t)(add + j0), NULL, H, 0, 0, c + j0, hout,
                         (const char *)(W_f + pn * panel));
    }
}

/* y [m] = A [m, k] (row-major) . x [k]: a dense layer's logits for one row. */
static void FN(dot_rows)(ptrdiff_t m, ptrdiff_t k, const float *a, const float *x, float *y)
{
    for (ptrdiff_t r = 0; r < m; ++r) y[r] = 0.0f;
    FN(gemv_rows)(m, k, a, k, x, y, 0);
}

/* ---- one step of an L-layer stack (generation) ----------------------------
 * No packing (the weights may change between calls): the products go to the
 * caller's BLAS, each thread for its own hidden units, then the gate math of
 * those units; one barrier per layer. */
static void FN(step)(const lstm_blas *blas, int nthreads, ptrdiff_t L, ptrdiff_t N, ptrdiff_t I0,
                     ptrdiff_t H, const float *x, const float *const *W_ih,
                     const float *const *W_hh, const float *const *b, const float *h,
                     const float *c, float *gates, float *h_out, float *c_out, int descending)
{
    const ptrdiff_t npanels = (H + VL - 1) / VL, G = 4 * H;
    LSTM_PARALLEL(nthreads)
    {
        const lstm_team me = lstm_team_join(blas);
        const lstm_range p = lstm_share(npanels, me);
        const ptrdiff_t u0 = p.lo * VL, u1 = p.hi * VL < H ? p.hi * VL : H;
        for (ptrdiff_t l = 0; l < L; ++l) {
            const float *in = l ? h_out + (l - 1) * N * H : x;
            const ptrdiff_t I = l ? H : I0;
            const float *hl = h + l * N * H, *cl = c + l * N * H;
            float *ho = h_out + l * N * H, *co = c_out + l * N * H;
            if (N == 1) {
                /* Dot products in place: BLAS would pack or thread a GEMV this small. */
                for (int gi = 0; gi < 4 && u1 > u0; ++gi) {
                    const int g = descending ? 3 - gi : gi;
                    float *P = gates + g * H + u0;
                    memcpy(P, b[l] + g * H + u0, (size_t)(u1 - u0) * sizeof(float));
                    /* W_ih first either way: the sums must round the same */
                    FN(gemv_rows)(u1 - u0, I, W_ih[l] + (g * H + u0) * I, I, in, P, descending);
                    FN(gemv_rows)(u1 - u0, H, W_hh[l] + (g * H + u0) * H, H, hl, P, descending);
                }
            } else {
                for (int g = 0; g < 4; ++g) {
                    const ptrdiff_t c0 = g * H + u0, c1 = g * H + u1;
                    lstm_project_f32(blas, N, I, G, c0, c1, in, W_ih[l], b[l], gates);
                    lstm_add_product_f32(blas, N, H, G, c0, c1, hl, W_hh[l], gates);
                }
            }
            for (ptrdiff_t n = 0; n < N; ++n)
                for (ptrdiff_t j = u0; j < u1; j += VL) {
                    const ptrdiff_t nv = u1 - j < VL ? u1 - j : VL;
                    const float *pre = gates + n * G + j;
                    const VF p[4] = {FN(loadn)(pre, nv), FN(loadn)(pre + H, nv),
                                     FN(loadn)(pre + 2 * H, nv), FN(loadn)(pre + 3 * H, nv)};
                    FN(cell)(p, NULL, cl + n * H + j, NULL, 0, H, nv, co + n * H + j,
                             ho + n * H + j);
                }
            LSTM_BARRIER();
        }
        lstm_team_leave(blas, me);
    }
}

/* sigmoid and tanh of n values, as the kernels compute them (for tests). */
static void FN(activations)(ptrdiff_t n, const float *x, float *sig, float *th)
{
    for (ptrdiff_t i = 0; i < n; i += VL) {
        const ptrdiff_t nv = n - i < VL ? n - i : VL;
        const VF v = FN(loadn)(x + i, nv);
        FN(storen)(sig + i, FN(sigmoid)(v), nv);
        FN(storen)(th + i, FN(tanh)(v), nv);
    }
}

/* Softmax cross-entropy of rows (lstm_fused.h, lstm_fused_softmax_xent): per row,
 * the maximum, e = exp(x - max) with the kernels' exp, s = sum e; row_loss =
 * log s - (x[target] - max); dl = (e / s - onehot) * scale, in that order (the
 * NumPy form's, fastlstm/charlm/nn.py). */
static void FN(softmax_xent)(int nthreads, ptrdiff_t M, ptrdiff_t V, const float *logits,
                             const int64_t *targets, float scale, float *dl, double *row_loss)
{
    (void)nthreads;
#ifdef _OPENMP
    LSTM_PRAGMA(omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static))
#endif
    for (ptrdiff_t r = 0; r < M; ++r) {
        const float *x = logits + r * V;
        float *d = dl + r * V;
        VI lanes;
        for (int l = 0; l < VL; ++l) lanes[l] = l;
        VF vmax = FN(splat)(-__builtin_inff());
        for (ptrdiff_t j = 0; j < V; j += VL) {
            const ptrdiff_t nv = V - j < VL ? V - j : VL;
            const VF v = FN(loadn)(x + j, nv);
            vmax = FN(select)((v > vmax) & (lanes < (int)nv), v, vmax);
            vmax = FN(select)((v != v) & (lanes < (int)nv), v, vmax); /* NaN wins, as in NumPy */
        }
        float m = vmax[0];
        for (int l = 1; l < VL; ++l)
            m = (vmax[l] > m || vmax[l] != vmax[l]) ? vmax[l] : m;
        const ptrdiff_t t = (ptrdiff_t)targets[r];
        const float picked = x[t] - m; /* before d, which may be x, is written */
        const VF vm = FN(splat)(m);
        VF vsum = FN(splat)(0.0f);
        for (ptrdiff_t j = 0; j < V; j += VL) {
            const ptrdiff_t nv = V - j < VL ? V - j : VL;
            const VF e = FN(exp_neg)(FN(loadn)(x + j, nv) - vm);
            vsum += FN(select)(lanes < (int)nv, e, FN(splat)(0.0f));
            FN(storen)(d + j, e, nv);
        }
        float s = 0.0f;
        for (int l = 0; l < VL; ++l) s += vsum[l];
        row_loss[r] = (double)logf(s) - (double)picked;
        const VF vs = FN(splat)(s), vscale = FN(splat)(scale);
        for (ptrdiff_t j = 0; j < V; j += VL) {
            const ptrdiff_t nv = V - j < VL ? V - j : VL;
            VF e = FN(loadn)(d + j, nv) / vs;
            e = e - FN(select)(lanes + (int)j == (int)t, FN(splat)(1.0f), FN(splat)(0.0f));
            FN(storen)(d + j, e * vscale, nv);
        }
    }
}

/* This path's entry in lstm_fused.c's table; cpu_has_<path> is defined there. */
static const path_kernels FN(kernels) = {VL, BV * VL, FN(cpu_has), FN(pack_forward),
                                         FN(pack_backward), FN(forward), FN(backward),
                                         FN(backward_proj), FN(step),
                                         FN(row_panels), FN(dot_rows), FN(activations),
                                         FN(softmax_xent)};

#undef FWD_CASE
#undef PROJ_CASE
#undef STEP_PROJ_CASE
#undef PB
#undef BWD_CASE
#undef GKC
#undef INLINE
#undef VF
#undef VI
#undef FN
#undef CAT
#undef CAT_
#undef SFX
#undef VL
#undef RF
#undef RB
#undef BV
