/* lstm_generate.c - the character model's generation loop (lstm_generate.h). */
#include <math.h>
#include <string.h>
#include "lstm_fused.h"
#include "lstm_generate.h"

ptrdiff_t lstm_generate_work_size(const lstm_gen_model *m)
{
    /* logits [V], logits without noise [V], top-k scratch [V], gates [G],
     * the next state [2 L H], one input row [I0] */
    return 3 * m->V + 4 * m->H + 2 * m->L * m->H + m->I0;
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

void lstm_generate(const lstm_blas *blas, int path, int nthreads, const lstm_gen_model *m,
                   ptrdiff_t n, const float *noise, float *h_top, float *h, float *c,
                   float *work, int *ids)
{
    const ptrdiff_t L = m->L, H = m->H, V = m->V, LH = L * H;
    float *z = work, *zk = z + V, *sel = zk + V, *gates = sel + V, *h2 = gates + 4 * H;
    float *c2 = h2 + LH, *x = c2 + LH;
    for (ptrdiff_t k = 0; k < n; ++k) {
        /* logits = h_top . WT (+ the noise, which carries the bias, or the bias) */
        const float *add = noise ? noise + k * V : m->bias;
        memset(zk, 0, (size_t)V * sizeof(float));
        for (ptrdiff_t j = 0; j < H; ++j) {
            const float hj = h_top[j], *w = m->WT + j * V;
            for (ptrdiff_t v = 0; v < V; ++v) zk[v] += hj * w[v];
        }
        for (ptrdiff_t v = 0; v < V; ++v) z[v] = zk[v] + add[v];
        if (noise && m->top_k > 0 && m->top_k < V) {
            /* keep the top_k likeliest by the logits before the noise */
            for (ptrdiff_t v = 0; v < V; ++v) zk[v] += m->bias[v];
            memcpy(sel, zk, (size_t)V * sizeof(float));
            const float threshold = kth_largest(sel, V, m->top_k);
            for (ptrdiff_t v = 0; v < V; ++v)
                if (zk[v] < threshold) z[v] = -INFINITY;
        }
        const int id = argmax(z, V);
        ids[k] = id;
        /* feed it back: one step of the stack */
        if (m->emb) {
            memcpy(x, m->emb + (ptrdiff_t)id * m->I0, (size_t)m->I0 * sizeof(float));
        } else {
            x[0] = (float)((double)id / (double)V);
        }
        if (path == LSTM_PATH_BLAS)
            lstm_blas_step_f32(blas, L, 1, m->I0, H, x, m->W_ih, m->W_hh, m->b, h, c, gates, h2, c2);
        else
            lstm_fused_step(blas, path, nthreads, L, 1, m->I0, H, x, m->W_ih, m->W_hh, m->b, h, c,
                            gates, h2, c2);
        memcpy(h, h2, (size_t)LH * sizeof(float));
        memcpy(c, c2, (size_t)LH * sizeof(float));
        memcpy(h_top, h2 + (L - 1) * H, (size_t)H * sizeof(float));
    }
}
