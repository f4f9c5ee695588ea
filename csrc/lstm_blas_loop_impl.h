/* lstm_blas_loop_impl.h - body of the BLAS path's time loops (lstm_blas_loop.h)
 * and of the products every path shares (lstm_common.h), for one dtype.
 *
 * Included once per dtype by lstm_blas_loop.c with these defined:
 *   REAL  float or double          SFX  name suffix (f32, f64)
 *   GEMM, GEMV  the lstm_blas members for REAL (sgemm, sgemv or dgemm, dgemv)
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
    if (c1 <= c0) return;
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

/* Contiguous ranges of rows and gate rows: one large product per thread
 * rather than many thin ones. */
void FN(lstm_backward_products)(const lstm_blas *blas, ptrdiff_t T, ptrdiff_t N, ptrdiff_t I,
                                ptrdiff_t H, ptrdiff_t g0, ptrdiff_t g1, ptrdiff_t r0,
                                ptrdiff_t r1, const REAL *x, const REAL *W_ih, const REAL *h0,
                                const REAL *y, const REAL *dP, REAL *dx, REAL *dW_ih,
                                REAL *dW_hh, REAL *db, const REAL *db_parts, int nparts)
{
    const ptrdiff_t G = 4 * H, ng = g1 - g0, rows = T * N;
    const ptrdiff_t step = lstm_rows_per_call(G > I ? (G > H ? G : H) : (I > H ? I : H));
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
    /* h_{t-1} is h0 for the first N rows of dP, then y shifted by one step */
    FN(gemm)(blas, 'N', 'T', H, ng, N, h0, H, dP + g0, G, 1, dW_hh + g0 * H, H);
    for (ptrdiff_t a = N; a < rows; a += step) {
        const ptrdiff_t nr = rows - a < step ? rows - a : step;
        FN(gemm)(blas, 'N', 'T', H, ng, nr, y + (a - N) * H, H, dP + a * G + g0, G, 1,
                 dW_hh + g0 * H, H);
    }
    const REAL *from = db_parts ? db_parts : dP;
    const ptrdiff_t nsum = db_parts ? nparts : rows;
    for (ptrdiff_t r = 0; r < nsum; ++r) {
        const REAL *d = from + r * G + g0;
        for (ptrdiff_t j = 0; j < ng; ++j) db[g0 + j] += d[j];
    }
}

void FN(lstm_blas_forward)(const lstm_blas *blas, ptrdiff_t T, ptrdiff_t N, ptrdiff_t I,
                           ptrdiff_t H, const REAL *x, const REAL *W_ih, const REAL *W_hh,
                           const REAL *b, const REAL *h0, const REAL *c0, REAL *gates, REAL *y,
                           REAL *cs)
{
    const ptrdiff_t G = 4 * H;
    if (T <= 0 || N <= 0 || H <= 0) return;
    FN(lstm_project)(blas, T * N, I, G, 0, G, x, W_ih, b, gates);
    for (ptrdiff_t t = 0; t < T; ++t) {
        const REAL *h_prev = t ? y + (t - 1) * N * H : h0;
        const REAL *c_prev = t ? cs + (t - 1) * N * H : c0;
        REAL *P = gates + t * N * G;
        FN(add_step_product)(blas, N, H, G, h_prev, W_hh, P);
        FN(lstm_cell_forward)(N, H, P, c_prev, cs + t * N * H, y + t * N * H);
    }
}

void FN(lstm_blas_backward)(const lstm_blas *blas, ptrdiff_t T, ptrdiff_t N, ptrdiff_t I,
                            ptrdiff_t H, const REAL *x, const REAL *W_ih, const REAL *W_hh,
                            const REAL *h0, const REAL *c0, const REAL *y, const REAL *cs,
                            REAL *gates, const REAL *dy, REAL *dh, REAL *dc, REAL *dx,
                            REAL *dW_ih, REAL *dW_hh, REAL *db)
{
    const ptrdiff_t G = 4 * H;
    if (T <= 0 || N <= 0 || H <= 0) return;
    for (ptrdiff_t t = T - 1; t >= 0; --t) {
        REAL *dP = gates + t * N * G;
        const REAL *c_prev = t ? cs + (t - 1) * N * H : c0;
        /* in place: the activated gates of step t become its dP; dh is read
         * here before the product below overwrites it with dh_{t-1} */
        FN(lstm_cell_backward)(N, H, dP, c_prev, cs + t * N * H, dy + t * N * H, dh, dc, dP);
        if (N == 1)
            FN(gemv)(blas, 'N', H, G, W_hh, H, dP, 0, dh);
        else
            FN(gemm)(blas, 'N', 'N', H, N, G, W_hh, H, dP, G, 0, dh, H);
    }
    FN(lstm_backward_products)(blas, T, N, I, H, 0, G, 0, T * N, x, W_ih, h0, y, gates, dx,
                               dW_ih, dW_hh, db, NULL, 0);
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
