/* lstm_generate.c - the character model's generation loop (lstm_generate.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "lstm_common.h"
#include "lstm_fused.h"
#include "lstm_bf16.h"
#include "lstm_generate.h"

ptrdiff_t lstm_generate_work_size(const lstm_gen_model *m, ptrdiff_t N)
{
    /* gates [N, G], the next state [2 L N H], the inputs [N, I0]; each thread's
     * logits, logits without noise and top-k scratch are its own (malloc) */
    const ptrdiff_t bf16 = m->W_bf16 ? lstm_bf16_work_size(m->bf16_threads, N, m->I0, m->H) : 0;
    return N * (4 * m->H + 2 * m->L * m->H + m->I0) + bf16;
}

/* Floats of each drawing thread's own scratch: logits, logits without noise,
 * top-k, and the bf16 dense layer's activations. */
static ptrdiff_t draw_scratch(const lstm_gen_model *m)
{
    return 3 * m->V + (m->WT_bf16 ? lstm_bf16_work_size(1, 1, m->H, 0) : 0);
}

/* The k-th largest of a[0..n-1] (1 <= k <= n); a is reordered. */
static float kth_largest(float *a, ptrdiff_t n, ptrdiff_t k)
{
    ptrdiff_t lo = 0, hi = n - 1, want = k - 1; /* index in descending order */
    while (lo < hi) {
        const float pivot = a[lo + (hi - lo) / 2];
        ptrdiff_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot) ++i;
            while (a[j] < pivot) --j;
            if (i <= j) {
                const float t = a[i];
                a[i++] = a[j];
                a[j--] = t;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return a[want];
    }
    return a[want];
}

/* The first index of the largest value (NumPy's argmax: a NaN wins at once). */
static int argmax(const float *z, ptrdiff_t n)
{
    ptrdiff_t best = 0;
    for (ptrdiff_t v = 0; v < n; ++v) {
        if (z[v] != z[v]) return (int)v;
        if (z[v] > z[best]) best = v;
    }
    return (int)best;
}

/* The character drawn from logits zk [V] (without the bias; clobbered) plus
 * `add` (the noise with the bias, or the bias) under top-k; z, sel: [V]. */
static int pick(ptrdiff_t V, ptrdiff_t top_k, const float *bias, float *zk, const float *add,
                int sampled, float *z, float *sel)
{
    for (ptrdiff_t v = 0; v < V; ++v) z[v] = zk[v] + add[v];
    if (sampled && top_k > 0 && top_k < V) {
        /* keep the top_k likeliest by the logits before the noise */
        for (ptrdiff_t v = 0; v < V; ++v) zk[v] += bias[v];
        memcpy(sel, zk, (size_t)V * sizeof(float));
        const float threshold = kth_largest(sel, V, top_k);
        for (ptrdiff_t v = 0; v < V; ++v)
            if (zk[v] < threshold) z[v] = -INFINITY;
    }
    return argmax(z, V);
}

/* The character one row draws from its logits (h_top . WT, plus `add`: its
 * noise with the bias, or the bias) under top-k. */
static int draw(const lstm_gen_model *m, const float *h_top, const float *add, int sampled,
                float *z, float *zk, float *sel, float *bf16_work)
{
    const ptrdiff_t H = m->H, V = m->V;
    if (m->WT_bf16) {
        lstm_bf16_dense(m->bf16_path, 1, H, V, m->WT_bf16, h_top, zk, bf16_work);
    } else {
        memset(zk, 0, (size_t)V * sizeof(float));
        for (ptrdiff_t j = 0; j < H; ++j) {
            const float hj = h_top[j], *w = m->WT + j * V;
            for (ptrdiff_t v = 0; v < V; ++v) zk[v] += hj * w[v];
        }
    }
    return pick(V, m->top_k, m->bias, zk, add, sampled, z, sel);
}

void lstm_generate(const lstm_blas *blas, int path, int nthreads, const lstm_gen_model *m,
                   ptrdiff_t n, ptrdiff_t N, const float *noise, float *h_top, float *h, float *c,
                   float *work, int *ids)
{
    const ptrdiff_t L = m->L, H = m->H, V = m->V, I0 = m->I0, LNH = L * N * H;
    float *gates = work, *h2 = gates + N * 4 * H, *c2 = h2 + LNH, *x = c2 + LNH;
    /* the rows' draws are independent: split them over the threads (one alone
     * below a few rows, where the team would cost more than it saves) */
    const int draw_threads = N >= 8 ? nthreads : 1;
    for (ptrdiff_t k = 0; k < n; ++k) {
        LSTM_PARALLEL(draw_threads)
        {
            const lstm_team me = lstm_team_join(blas);
            const lstm_range rows = lstm_share(N, me);
            float *z = malloc((size_t)draw_scratch(m) * sizeof(float));
            if (z) {
                for (ptrdiff_t r = rows.lo; r < rows.hi; ++r) {
                    const float *add = noise ? noise + (k * N + r) * V : m->bias;
                    const int id = draw(m, h_top + r * H, add, noise != NULL, z, z + V, z + 2 * V,
                                       z + 3 * V);
                    ids[k * N + r] = id;
                    /* the row's next input */
                    if (m->emb)
                        memcpy(x + r * I0, m->emb + (ptrdiff_t)id * I0, (size_t)I0 * sizeof(float));
                    else
                        x[r] = (float)((double)id / (double)V);
                }
                free(z);
            } else {
                for (ptrdiff_t r = rows.lo; r < rows.hi; ++r) ids[k * N + r] = -1;
            }
            lstm_team_leave(blas, me);
        }
        for (ptrdiff_t r = 0; r < N; ++r)
            if (ids[k * N + r] < 0) return; /* out of memory: the caller sees -1 */
        /* one step of the stack for every row */
        if (m->W_bf16) {
            /* the top layer's h to gates, the layer in between to the rest of it */
            lstm_bf16_forward(m->bf16_path, m->bf16_threads, L, 1, N, I0, H, x, m->W_bf16, m->b,
                              h, c, gates, gates + N * H, h2, c2, 0, x + N * I0);
        } else if (m->W_f && N >= 2 && path != LSTM_PATH_BLAS) {
            /* a one-step forward per layer on weights packed once (the input fused) */
            for (ptrdiff_t l = 0; l < L; ++l) {
                const ptrdiff_t I = l ? H : I0, off = l * N * H;
                lstm_fused_forward(blas, path, m->batch_threads, m->by_rows, 1, N, NULL, I, I, H, 0,
                                   l ? h2 + off - N * H : x, m->W_ih[l], m->b[l], NULL,
                                   (float *)m->W_f[l], NULL, NULL, h + off, c + off, gates, 0,
                                   h2 + off, c2 + off, NULL, 0, NULL, 0); /* W_f only read: no W_hh */
            }
        } else if (path == LSTM_PATH_BLAS)
            lstm_blas_step_f32(blas, L, N, I0, H, x, m->W_ih, m->W_hh, m->b, h, c, gates, h2, c2);
        else
            lstm_fused_step(blas, path, nthreads, L, N, I0, H, x, m->W_ih, m->W_hh, m->b, h, c,
                            gates, h2, c2);
        memcpy(h, h2, (size_t)LNH * sizeof(float));
        memcpy(c, c2, (size_t)LNH * sizeof(float));
        memcpy(h_top, h2 + (L - 1) * N * H, (size_t)(N * H) * sizeof(float));
    }
}

/* ---- one row, one team per chunk ------------------------------------------- */
/* Floats of one thread's scratch: its copy of the logits, the noisy logits,
 * top-k, and the bf16 activations (a multiple of 16: each thread's starts on
 * its own cache line). */
static ptrdiff_t row_scratch(const lstm_gen_row *m)
{
    const ptrdiff_t act = m->W_bf16 ? lstm_bf16_row_size(m->H, m->H) : 0;
    return (3 * m->V + act + 15) / 16 * 16;
}

ptrdiff_t lstm_generate_row_work_size(const lstm_gen_row *m, int nthreads)
{
    /* the other h [L, H], the shared logits [V], then each thread's scratch;
     * 16 floats to align the start */
    return m->L * m->H + (m->V + 15) / 16 * 16 + 16 +
           (ptrdiff_t)(nthreads > 1 ? nthreads : 1) * row_scratch(m);
}

void lstm_generate_row(const lstm_blas *blas, int path, int nthreads, const lstm_gen_row *m,
                       ptrdiff_t n, const float *noise, float *h, float *c, float *work, int *ids)
{
    const ptrdiff_t L = m->L, H = m->H, V = m->V, G = 4 * H;
    const int bf16 = m->W_bf16 != NULL;
    const ptrdiff_t U = bf16 ? 16 : lstm_fused_lanes(path);
    if (n <= 0 || U <= 0) return;
    const ptrdiff_t npanels = (H + U - 1) / U, nlogit = bf16 ? (V + 15) / 16 : V;
    float *h2 = work, *zs = h2 + L * H;
    float *scratch = zs + (V + 15) / 16 * 16;
    scratch += ((16 - ((uintptr_t)scratch / sizeof(float)) % 16) % 16);
    const ptrdiff_t per_thread = row_scratch(m);
    LSTM_PARALLEL(nthreads)
    {
        const lstm_team me = lstm_team_join(blas);
        /* the same units of every layer, and a share of the logits (panels of
         * 16 with bf16, rows of the dense weights in float32) */
        const lstm_range p = lstm_share(npanels, me), d = lstm_share(nlogit, me);
        float *zk = scratch + me.tid * per_thread, *z = zk + V, *sel = z + V, *act = sel + V;
        float *hc = h, *hn = h2; /* this step's h of every layer, and the next */
        for (ptrdiff_t k = 0; k < n; ++k) {
            const float *top = hc + (L - 1) * H;
            if (bf16)
                lstm_bf16_dense_panels(m->bf16_path, d.lo, d.hi, H, V, m->dense_bf16, top, zs, act);
            else
                lstm_fused_dot_rows(path, d.hi - d.lo, H, m->dense + d.lo * H, top, zs + d.lo);
            LSTM_BARRIER();
            /* every thread draws the same character from the same numbers */
            memcpy(zk, zs, (size_t)V * sizeof(float));
            const float *add = noise ? noise + k * V : m->bias;
            const int id = pick(V, m->top_k, m->bias, zk, add, noise != NULL, z, sel);
            if (me.tid == 0) ids[k] = id;
            const int down = (int)(k & 1);
            for (ptrdiff_t l = 0; l < L; ++l) {
                const ptrdiff_t I = l ? H : 0;
                const float *in = l ? hn + (l - 1) * H : NULL;
                const float *addl = l ? m->b[l] : m->table + (ptrdiff_t)id * G;
                if (bf16) {
                    lstm_bf16_row_activations(m->bf16_path, in, I, hc + l * H, H, act);
                    lstm_bf16_row_panels(m->bf16_path, p.lo, p.hi, down, I, H, m->W_bf16[l], act,
                                         addl, c + l * H, hn + l * H);
                } else {
                    lstm_fused_row_panels(path, p.lo, p.hi, down, I, H, m->W[l], in, addl,
                                          hc + l * H, c + l * H, hn + l * H);
                }
                LSTM_BARRIER();
            }
            float *t = hc;
            hc = hn;
            hn = t;
        }
        lstm_team_leave(blas, me);
    }
    if (n % 2) memcpy(h, h2, (size_t)(L * H) * sizeof(float));
}
