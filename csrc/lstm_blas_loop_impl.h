/* lstm_blas_loop_impl.h - body of the BLAS path's time loops (lstm_blas_loop.h)
 * and of the products every path shares (lstm_common.h), for one dtype.
 *
 * Included once per dtype by lstm_blas_loop.c with these defined:
 *   REAL  float or double          SFX  name suffix (f32, f64)
 *   GEMM, GEMV  the lstm_blas members for REAL (sgemm, sgemv or dgemm, dgemv)
 *   SQRT  sqrtf or sqrt
 * BLAS is column-major: a row-major [r, c] array is its transpose to BLAS,
 * hence the swapped operands below.
 */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)

/* Column-major C = op(A) op(B) + beta C; every size fits an int and k > 0
 * (with k = 0 a leading dimension of 0 would be a BLAS argument error, so
 * callers skip products over nothing). Nothing to do for an empty C. */
static void FN(gemm)(const lstm_blas *blas, char ta, char tb, ptrdiff_t m, ptrdiff_t n,
                     ptrdiff_t k, const REAL *a, ptrdiff_t lda, const REAL *b, ptrdiff_t ldb,
                     REAL beta, REAL *c, ptrdiff_t ldc)
{
    int im = (int)m, in = (int)n, ik = (int)k, la = (int)lda, lb = (int)ldb, lc = (int)ldc;
    const REAL one = 1;
    if (m <= 0 || n <= 0) return;
    blas->GEMM(&ta, &tb, &im, &in, &ik, &one, a, &la, b, &lb, &beta, c, &lc);
}

void FN(lstm_gemm)(const lstm_blas *blas, char ta, char tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                   const REAL *a, ptrdiff_t lda, const REAL *b, ptrdiff_t ldb, REAL beta, REAL *c,
                   ptrdiff_t ldc)
{
    if (k <= 0 && beta == 1) return;
    FN(gemm)(blas, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

/* y = op(A) x + beta y for column-major A [m, n], unit strides: the product
 * of a one-row step, which a GEMM would run as a matrix product of width 1. */
static void FN(gemv)(const lstm_blas *blas, char ta, ptrdiff_t m, ptrdiff_t n, const REAL *a,
                     ptrdiff_t lda, const REAL *x, REAL beta, REAL *y)
{
    int im = (int)m, in = (int)n, la = (int)lda, inc = 1;
    const REAL one = 1;
    blas->GEMV(&ta, &im, &in, &one, a, &la, x, &inc, &beta, y, &inc);
}

void FN(lstm_add_product)(const lstm_blas *blas, ptrdiff_t rows, ptrdiff_t K, ptrdiff_t G,
                          ptrdiff_t c0, ptrdiff_t c1, const REAL *in, const REAL *W, REAL *P)
{
    if (K > 0)
        FN(gemm)(blas, 'T', 'N', c1 - c0, rows, K, W + c0 * K, K, in, K, 1, P + c0, G);
}

void FN(lstm_project)(const lstm_blas *blas, ptrdiff_t rows, ptrdiff_t I, ptrdiff_t G,
                      ptrdiff_t c0, ptrdiff_t c1, const REAL *x, const REAL *W_ih, const REAL *b,
                      REAL *P)
{
    const ptrdiff_t step = lstm_rows_per_call(G > I ? G : I);
    /* x NULL: P holds the caller's input projection, bias included, already */
    if (c1 <= c0 || !x) return;
    for (ptrdiff_t r = 0; r < rows; ++r)
        memcpy(P + r * G + c0, b + c0, (size_t)(c1 - c0) * sizeof(REAL));
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += step)
        FN(lstm_add_product)(blas, rows - r0 < step ? rows - r0 : step, I, G, c0, c1, x + r0 * I,
                             W_ih, P + r0 * G);
}

/* P [N, G] INOUT += in [N, K] IN . W [G, K]^T IN: a product of one step, a
 * matrix-vector product for a single sequence (N = 1). */
static void FN(add_step_product)(const lstm_blas *blas, ptrdiff_t N, ptrdiff_t K, ptrdiff_t G,
                                 const REAL *in, const REAL *W, REAL *P)
{
    if (N == 1 && K > 0)
        FN(gemv)(blas, 'T', K, G, W, K, in, 1, P);
    else
        FN(lstm_add_product)(blas, N, K, G, 0, G, in, W, P);
}

/* db [g0..g1) += the sum of the nparts rows of db_parts [nparts, G] when it
 * is not NULL, else of dP's rows [rows, G]. */
static void FN(sum_db)(ptrdiff_t G, ptrdiff_t g0, ptrdiff_t g1, REAL *db, const REAL *db_parts,
                       int nparts, const REAL *dP, ptrdiff_t rows)
{
    const REAL *from = db_parts ? db_parts : dP;
    const ptrdiff_t nsum = db_parts ? nparts : rows;
    for (ptrdiff_t r = 0; r < nsum; ++r) {
        const REAL *d = from + r * G;
        for (ptrdiff_t j = g0; j < g1; ++j) db[j] += d[j];
    }
}

/* Contiguous ranges of rows and gate rows: one large product per thread
 * rather than many thin ones. */
void FN(lstm_backward_products)(const lstm_blas *blas, ptrdiff_t T, ptrdiff_t N, ptrdiff_t rows,
                                ptrdiff_t I, ptrdiff_t H, ptrdiff_t K, ptrdiff_t g0, ptrdiff_t g1,
                                ptrdiff_t r0, ptrdiff_t r1, const REAL *x, const REAL *W_ih,
                                const REAL *h0, const REAL *y, const REAL *h_prev,
                                const REAL *dP, REAL *dx, REAL *dW_ih, REAL *dW_hh, REAL *db,
                                const REAL *db_parts, int nparts, int rev)
{
    const ptrdiff_t G = 4 * H, ng = g1 - g0;
    const ptrdiff_t step = lstm_rows_per_call(G > I ? (G > H ? G : H) : (I > H ? I : H));
    (void)T;
    for (ptrdiff_t a = r0; a < r1; a += step) {
        const ptrdiff_t nr = r1 - a < step ? r1 - a : step;
        FN(gemm)(blas, 'N', 'N', I, nr, G, W_ih, I, dP + a * G, G, 0, dx + a * I, I);
    }
    if (ng <= 0) return;
    for (ptrdiff_t a = 0; a < rows; a += step) {
        const ptrdiff_t nr = rows - a < step ? rows - a : step;
        FN(gemm)(blas, 'N', 'T', I, ng, nr, x + a * I, I, dP + a * G + g0, G, 1, dW_ih + g0 * I,
                 I);
    }
    if (h_prev) {
        for (ptrdiff_t a = 0; a < rows; a += step) {
            const ptrdiff_t nr = rows - a < step ? rows - a : step;
            FN(gemm)(blas, 'N', 'T', K, ng, nr, h_prev + a * K, K, dP + a * G + g0, G, 1,
                     dW_hh + g0 * K, K);
        }
    } else if (!rev) {
        /* h_{t-1} is h0 for the first N rows of dP, then y shifted by one step */
        FN(gemm)(blas, 'N', 'T', K, ng, N, h0, K, dP + g0, G, 1, dW_hh + g0 * K, K);
        for (ptrdiff_t a = N; a < rows; a += step) {
            const ptrdiff_t nr = rows - a < step ? rows - a : step;
            FN(gemm)(blas, 'N', 'T', K, ng, nr, y + (a - N) * K, K, dP + a * G + g0, G, 1,
                     dW_hh + g0 * K, K);
        }
    } else {
        /* time ran backwards: the last N rows read h0, the others y one step later */
        FN(gemm)(blas, 'N', 'T', K, ng, N, h0, K, dP + (rows - N) * G + g0, G, 1,
                 dW_hh + g0 * K, K);
        for (ptrdiff_t a = 0; a < rows - N; a += step) {
            const ptrdiff_t nr = rows - N - a < step ? rows - N - a : step;
            FN(gemm)(blas, 'N', 'T', K, ng, nr, y + (a + N) * K, K, dP + a * G + g0, G, 1,
                     dW_hh + g0 * K, K);
        }
    }
    FN(sum_db)(G, g0, g1, db, db_parts, nparts, dP, rows);
}

/* The h that dP's row r read: h_prev [rows, K] when given, else h0 for the
 * first step's N rows and y one step behind (rev: the last N rows read h0,
 * the others y one step ahead), as in lstm_backward_products. */
static const REAL *FN(h_read)(ptrdiff_t r, ptrdiff_t rows, ptrdiff_t N, ptrdiff_t K,
                              const REAL *h0, const REAL *y, const REAL *h_prev, int rev)
{
    if (h_prev) return h_prev + r * K;
    if (!rev) return r < N ? h0 + r * K : y + (r - N) * K;
    return r >= rows - N ? h0 + (r - (rows - N)) * K : y + (r + N) * K;
}

/* d [j0..j1) = columns j0..j1 of the row [xr (I) | hr (K) | zeros]. */
static void FN(xh_columns)(REAL *d, ptrdiff_t j0, ptrdiff_t j1, const REAL *xr, ptrdiff_t I,
                           const REAL *hr, ptrdiff_t K)
{
    for (ptrdiff_t j = j0; j < j1;) {
        const REAL *src = j < I ? xr + j : j < I + K ? hr + (j - I) : NULL;
        const ptrdiff_t end = j < I ? I : j < I + K ? I + K : j1, n = (end < j1 ? end : j1) - j;
        if (src)
            memcpy(d + (j - j0), src, (size_t)n * sizeof(REAL));
        else
            memset(d + (j - j0), 0, (size_t)n * sizeof(REAL));
        j += n;
    }
}

void FN(lstm_gather_xh)(ptrdiff_t a, ptrdiff_t nr, ptrdiff_t N, ptrdiff_t rows, ptrdiff_t I,
                        ptrdiff_t K, ptrdiff_t ld, ptrdiff_t pw, const REAL *x, const REAL *h0,
                        const REAL *y, const REAL *h_prev, int rev, REAL *xh)
{
    for (ptrdiff_t r = 0; r < nr; ++r) {
        const REAL *xr = x + (a + r) * I, *hr = FN(h_read)(a + r, rows, N, K, h0, y, h_prev, rev);
        for (ptrdiff_t j0 = 0; j0 < ld; j0 += pw) {
            const ptrdiff_t w = ld - j0 < pw ? ld - j0 : pw;
            FN(xh_columns)(xh + j0 * nr + r * w, j0, j0 + w, xr, I, hr, K);
        }
    }
}

void FN(lstm_backward_sum_grads)(ptrdiff_t I, ptrdiff_t K, ptrdiff_t G, ptrdiff_t W,
                                 ptrdiff_t g0, ptrdiff_t g1, const REAL *parts, int nparts,
                                 REAL *dW_ih, REAL *dW_hh, REAL *db, const REAL *db_parts,
                                 int ndb, const REAL *dP, ptrdiff_t rows)
{
    for (ptrdiff_t g = g0; g < g1; ++g) {
        REAL *wi = dW_ih + g * I, *wh = dW_hh + g * K;
        for (int p = 0; p < nparts; ++p) {
            const REAL *s = parts + (p * G + g) * W;
            for (ptrdiff_t j = 0; j < I; ++j) wi[j] += s[j];
            for (ptrdiff_t j = 0; j < K; ++j) wh[j] += s[I + j];
        }
    }
    FN(sum_db)(G, g0, g1, db, db_parts, ndb, dP, rows);
}

void FN(lstm_parallel_matmul)(const lstm_blas *blas, int nthreads, char ta, char tb,
                              ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const REAL *a, ptrdiff_t lda,
                              const REAL *b, ptrdiff_t ldb, REAL *c, ptrdiff_t ldc)
{
    LSTM_PARALLEL(nthreads)
    {
        const lstm_team me = lstm_team_join(blas);
        const lstm_range r = lstm_share(M, me);
        if (r.hi > r.lo) {
            if (K > 0) {
                /* row-major C = A B is column-major C^T = B^T A^T: BLAS reads each
                 * row-major operand as its transpose, so the flags carry over */
                const REAL *ar = ta == 'T' ? a + r.lo : a + r.lo * lda;
                FN(gemm)(blas, tb, ta, N, r.hi - r.lo, K, b, ldb, ar, lda, 0, c + r.lo * ldc, ldc);
            } else {
                for (ptrdiff_t i = r.lo; i < r.hi; ++i) memset(c + i * ldc, 0, (size_t)N * sizeof(REAL));
            }
        }
        lstm_team_leave(blas, me);
    }
}

void FN(lstm_scatter_add_rows)(int nthreads, ptrdiff_t rows, ptrdiff_t G, const int64_t *ids,
                               const REAL *src, REAL *dst)
{
    /* the threads split the columns (in whole cache lines), so that no two write one
     * element and each element sums its rows in row order: the same numbers on any
     * number of threads */
    (void)nthreads;
#ifdef _OPENMP
    LSTM_PRAGMA(omp parallel num_threads(nthreads) if (nthreads > 1))
#endif
    {
        const lstm_range c = lstm_thread_units(G, 64 / (ptrdiff_t)sizeof(REAL));
        for (ptrdiff_t r = 0; r < rows && c.hi > c.lo; ++r) {
            REAL *d = dst + ids[r] * G;
            const REAL *s = src + r * G;
            for (ptrdiff_t j = c.lo; j < c.hi; ++j) d[j] += s[j];
        }
    }
}

void FN(lstm_dropout)(int nthreads, ptrdiff_t n, const uint16_t *bits, unsigned threshold,
                      REAL scale, const REAL *x, REAL *y, REAL *mask)
{
    (void)nthreads;
    /* two loops without a branch inside, so that each vectorizes (one loop with
     * "if (mask)" in it ran scalar: 2 ns an element, four times a copy) */
    if (mask) {
#ifdef _OPENMP
        LSTM_PRAGMA(omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static))
#endif
        for (ptrdiff_t i = 0; i < n; ++i) {
            const REAL m = bits[i] >= threshold ? scale : (REAL)0;
            mask[i] = m;
            y[i] = x[i] * m;
        }
    } else {
#ifdef _OPENMP
        LSTM_PRAGMA(omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static))
#endif
        for (ptrdiff_t i = 0; i < n; ++i)
            y[i] = x[i] * (bits[i] >= threshold ? scale : (REAL)0);
    }
}

void FN(lstm_move_rows)(int nthreads, ptrdiff_t rows, ptrdiff_t F, const int64_t *from,
                        const REAL *src, REAL *dst)
{
    (void)nthreads;
#ifdef _OPENMP
    LSTM_PRAGMA(omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static))
#endif
    for (ptrdiff_t r = 0; r < rows; ++r) {
        if (from[r] >= 0)
            memcpy(dst + r * F, src + from[r] * F, (size_t)F * sizeof(REAL));
        else
            memset(dst + r * F, 0, (size_t)F * sizeof(REAL));
    }
}

void FN(lstm_adam_step)(int nthreads, ptrdiff_t n, REAL *p, const REAL *g, REAL *m, REAL *v,
                        REAL c1, REAL c2, REAL a, REAL e, REAL wd)
{
    (void)nthreads;
    /* the operations, and their order, of fastlstm/charlm/nn.py's Adam.step: the same
     * numbers, in one pass instead of a dozen */
#ifdef _OPENMP
    LSTM_PRAGMA(omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static))
#endif
    for (ptrdiff_t i = 0; i < n; ++i) {
        const REAL gi = wd != 0 ? g[i] + wd * p[i] : g[i];
        const REAL mi = m[i] + (gi - m[i]) * c1;
        const REAL vi = v[i] + (gi * gi - v[i]) * c2;
        m[i] = mi;
        v[i] = vi;
        p[i] -= mi / (SQRT(vi) + e) * a;
    }
}

/* out [rows, P] = in [rows, H] . W_hr [P, H]^T: the projection of one step. */
static void FN(project_out)(const lstm_blas *blas, ptrdiff_t rows, ptrdiff_t H, ptrdiff_t P,
                            const REAL *in, const REAL *W_hr, REAL *out)
{
    if (rows == 1)
        FN(gemv)(blas, 'T', H, P, W_hr, H, in, 0, out);
    else
        FN(gemm)(blas, 'T', 'N', P, rows, H, W_hr, H, in, H, 0, out, P);
}

void FN(lstm_blas_forward)(const lstm_blas *blas, ptrdiff_t T, ptrdiff_t N, const ptrdiff_t *batch,
                           ptrdiff_t I, ptrdiff_t H, ptrdiff_t P, const REAL *x, const REAL *W_ih,
                           const REAL *W_hh, const REAL *W_hr, const REAL *b, const REAL *h0,
                           const REAL *c0, REAL *gates, REAL *y, REAL *cs, REAL *ms)
{
    const ptrdiff_t G = 4 * H, K = P ? P : H;
    if (T <= 0 || N <= 0 || H <= 0) return;
    FN(lstm_project)(blas, lstm_total_rows(batch, T, N), I, G, 0, G, x, W_ih, b, gates);
    ptrdiff_t off = 0, off_prev = 0;
    for (ptrdiff_t t = 0; t < T; ++t) {
        const ptrdiff_t Nt = lstm_rows_at(batch, t, N);
        const REAL *h_prev = t ? y + off_prev * K : h0;
        const REAL *c_prev = t ? cs + off_prev * H : c0;
        REAL *Pt = gates + off * G;
        FN(add_step_product)(blas, Nt, K, G, h_prev, W_hh, Pt);
        if (P) {
            /* the cell's output o * tanh(c) is kept in ms; h is its projection */
            FN(lstm_cell_forward)(Nt, H, Pt, c_prev, cs + off * H, ms + off * H);
            FN(project_out)(blas, Nt, H, P, ms + off * H, W_hr, y + off * P);
        } else {
            FN(lstm_cell_forward)(Nt, H, Pt, c_prev, cs + off * H, y + off * H);
        }
        off_prev = off;
        off += Nt;
    }
}

void FN(lstm_blas_backward)(const lstm_blas *blas, ptrdiff_t T, ptrdiff_t N, const ptrdiff_t *batch,
                            ptrdiff_t I, ptrdiff_t H, ptrdiff_t P, const REAL *x, const REAL *W_ih,
                            const REAL *W_hh, const REAL *W_hr, const REAL *h0, const REAL *c0,
                            const REAL *y, const REAL *h_prev, const REAL *cs, const REAL *ms,
                            REAL *gates, const REAL *dy, REAL *dh, REAL *dc, REAL *dx, REAL *dW_ih,
                            REAL *dW_hh, REAL *dW_hr, REAL *db, REAL *work)
{
    const ptrdiff_t G = 4 * H, K = P ? P : H;
    if (T <= 0 || N <= 0 || H <= 0) return;
    const ptrdiff_t rows = lstm_total_rows(batch, T, N);
    /* with a projection: dh_t [rows, P] for dW_hr, then dm [N, H] */
    REAL *dhs = work, *dm = P ? work + rows * P : NULL;
    ptrdiff_t off = rows;
    for (ptrdiff_t t = T - 1; t >= 0; --t) {
        const lstm_back_step st = lstm_step_back(batch, t, T, N, off);
        const ptrdiff_t Nt = st.Nt, off_prev = st.off_prev;
        off = st.off;
        REAL *dP = gates + off * G;
        const REAL *c_prev = t ? cs + off_prev * H : c0;
        /* in place: the activated gates of step t become its dP; dh (rows that
         * end at this step still hold dh_T) is read here before the product
         * below overwrites its first Nt rows with dh_{t-1} */
        if (P) {
            REAL *dht = dhs + off * P;
            const REAL *dyt = dy + off * P;
            for (ptrdiff_t k = 0; k < Nt * P; ++k) dht[k] = dyt[k] + dh[k];
            if (Nt == 1)
                FN(gemv)(blas, 'N', H, P, W_hr, H, dht, 0, dm);
            else
                FN(gemm)(blas, 'N', 'N', H, Nt, P, W_hr, H, dht, P, 0, dm, H);
            FN(lstm_cell_backward)(Nt, H, dP, c_prev, cs + off * H, dm, NULL, dc, dP);
        } else {
            FN(lstm_cell_backward)(Nt, H, dP, c_prev, cs + off * H, dy + off * H, dh, dc, dP);
        }
        if (Nt == 1)
            FN(gemv)(blas, 'N', K, G, W_hh, K, dP, 0, dh);
        else
            FN(gemm)(blas, 'N', 'N', K, Nt, G, W_hh, K, dP, G, 0, dh, K);
    }
    FN(lstm_backward_products)(blas, T, N, rows, I, H, K, 0, G, 0, rows, x, W_ih, h0, y, h_prev,
                               gates, dx, dW_ih, dW_hh, db, NULL, 0, 0);
    if (P) {
        /* dW_hr [P, H] += dh_t^T . m_t over every row */
        const ptrdiff_t step = lstm_rows_per_call(H > P ? H : P);
        for (ptrdiff_t a = 0; a < rows; a += step) {
            const ptrdiff_t nr = rows - a < step ? rows - a : step;
            FN(gemm)(blas, 'N', 'T', H, P, nr, ms + a * H, H, dhs + a * P, P, 1, dW_hr, H);
        }
    }
}

void FN(lstm_blas_step)(const lstm_blas *blas, ptrdiff_t L, ptrdiff_t N, ptrdiff_t I0,
                        ptrdiff_t H, const REAL *x, const REAL *const *W_ih,
                        const REAL *const *W_hh, const REAL *const *b, const REAL *h,
                        const REAL *c, REAL *gates, REAL *h_out, REAL *c_out)
{
    const ptrdiff_t G = 4 * H;
    if (N <= 0 || H <= 0) return;
    for (ptrdiff_t l = 0; l < L; ++l) {
        const ptrdiff_t off = l * N * H;
        for (ptrdiff_t n = 0; n < N; ++n) memcpy(gates + n * G, b[l], (size_t)G * sizeof(REAL));
        FN(add_step_product)(blas, N, l ? H : I0, G, l ? h_out + off - N * H : x, W_ih[l], gates);
        FN(add_step_product)(blas, N, H, G, h + off, W_hh[l], gates);
        FN(lstm_cell_forward)(N, H, gates, c + off, c_out + off, h_out + off);
    }
}

#undef FN
#undef CAT
#undef CAT_
