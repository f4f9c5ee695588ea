/* lstm_bf16.c - the bf16-weight inference kernels (lstm_bf16.h): the
 * conversions and the packing (plain C, every build), and the loops of
 * lstm_bf16_impl.h instantiated once per code path, dispatched through one
 * table. The x86-64 paths are compiled with per-function target options, so
 * the file builds for the baseline CPU and runs the fastest path it finds.
 */
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <stddef.h>
#include "lstm_common.h"
#include "lstm_bf16.h"

/* ---- conversions and packing (every build) ------------------------------- */
static uint16_t bf16_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

void lstm_bf16_round(ptrdiff_t n, const float *x, uint16_t *out)
{
    for (ptrdiff_t i = 0; i < n; ++i) out[i] = bf16_of(x[i]);
}

void lstm_bf16_widen(ptrdiff_t n, const uint16_t *in, float *out)
{
    for (ptrdiff_t i = 0; i < n; ++i) {
        const uint32_t u = (uint32_t)in[i] << 16;
        memcpy(out + i, &u, sizeof u);
    }
}

/* Pairs of packed columns for I columns of A and Kb of B (an even number). */
static ptrdiff_t bf16_pairs(ptrdiff_t I, ptrdiff_t Kb)
{
    return ((I + 1) / 2 * 2 + Kb + 3) / 4 * 2;
}

/* Floats per row of the activations buffer (a multiple of 32: the DP path
 * converts 32 at a time). */
static ptrdiff_t bf16_lda(ptrdiff_t I, ptrdiff_t Kb)
{
    return (2 * bf16_pairs(I, Kb) + 31) / 32 * 32;
}

ptrdiff_t lstm_bf16_pack_size(ptrdiff_t NG, ptrdiff_t U, ptrdiff_t I, ptrdiff_t Kb)
{
    return (U + 15) / 16 * bf16_pairs(I, Kb) * NG * 16;
}

void lstm_bf16_pack(ptrdiff_t NG, ptrdiff_t U, ptrdiff_t I, ptrdiff_t Kb, const float *A,
                    const float *B, uint32_t *Wp)
{
    const ptrdiff_t KP = bf16_pairs(I, Kb), Ie = (I + 1) / 2 * 2;
    memset(Wp, 0, (size_t)lstm_bf16_pack_size(NG, U, I, Kb) * sizeof(uint32_t));
    /* row by row of A and B (contiguous reads): row j is lane u of gate block g */
    for (ptrdiff_t g = 0; g < NG; ++g)
        for (ptrdiff_t j = 0; j < U; ++j) {
            const ptrdiff_t p = j / 16, u = j % 16, row = g * U + j;
            uint32_t *dst = Wp + p * KP * NG * 16 + g * 16 + u;
            for (ptrdiff_t k = 0; k < I; ++k)
                dst[k / 2 * NG * 16] |= (uint32_t)bf16_of(A[row * I + k]) << (16 * (k % 2));
            for (ptrdiff_t k = 0; k < Kb; ++k) {
                const ptrdiff_t kk = Ie + k;
                dst[kk / 2 * NG * 16] |= (uint32_t)bf16_of(B[row * Kb + k]) << (16 * (kk % 2));
            }
        }
}

ptrdiff_t lstm_bf16_work_size(int nthreads, ptrdiff_t N, ptrdiff_t I0, ptrdiff_t H)
{
    return (ptrdiff_t)(nthreads > 1 ? nthreads : 1) * N * bf16_lda(I0 > H ? I0 : H, H);
}

/* ---- the paths ------------------------------------------------------------ */
typedef struct {
    int (*cpu_has)(void);
    void (*forward)(int nthreads, ptrdiff_t L, ptrdiff_t T, ptrdiff_t N, ptrdiff_t I0, ptrdiff_t H,
                    const float *x, const uint32_t *const *Wp, const float *const *b,
                    const float *h0, const float *c0, float *y, float *seq, float *h_n,
                    float *c_n, int reverse, float *work);
    void (*dense)(ptrdiff_t N, ptrdiff_t K, ptrdiff_t V, const uint32_t *Wp, const float *h,
                  float *z, float *work);
    void (*row_activations)(const float *in, ptrdiff_t I, const float *h, ptrdiff_t H,
                            float *act);
    void (*row_panels)(ptrdiff_t p0, ptrdiff_t p1, int down, ptrdiff_t I, ptrdiff_t H,
                       const uint32_t *Wp, const float *act, const float *add, float *c,
                       float *h);
    void (*dense_panels)(ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t K, ptrdiff_t V, const uint32_t *Wp,
                         const float *h, float *z, float *work);
} bf16_kernels;

#ifdef FASTLSTM_VECTOR_PATHS
static int cpu_has_portable(void) { return 1; }
#define SFX portable
#define VL 4
#define RB 1
#define DP 0
#include "lstm_bf16_impl.h"

#ifdef FASTLSTM_X86_PATHS
static int cpu_has_avx2(void) { return lstm_cpu_has_avx2(); }
LSTM_TARGET_BEGIN("avx2,fma,tune=haswell", "avx2,fma")
#define SFX avx2
#define VL 8
#define RB 1
#define DP 0
#include "lstm_bf16_impl.h"
LSTM_TARGET_END()

static int cpu_has_avx512(void) { return lstm_cpu_has_avx512(); }
LSTM_TARGET_BEGIN("avx512f,avx512dq,avx512vl,avx2,fma", "avx512f,avx512dq,avx512vl,avx2,fma")
#define SFX avx512
#define VL 16
#define RB 4
#define DP 0
#include "lstm_bf16_impl.h"
LSTM_TARGET_END()

/* VDPBF16PS needs GCC 10 or clang 9 (older compilers build the other paths). */
#if (defined(__clang__) && __clang_major__ >= 9) || (!defined(__clang__) && __GNUC__ >= 10)
#define FASTLSTM_AVX512BF16_PATH 1
static int cpu_has_avx512bf16(void)
{
    return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
}
LSTM_TARGET_BEGIN("avx512f,avx512dq,avx512vl,avx512bw,avx512bf16,avx2,fma", "avx512f,avx512dq,avx512vl,avx512bw,avx512bf16,avx2,fma")
#define SFX avx512bf16
#define VL 16
#define RB 4
#define DP 1
#include "lstm_bf16_impl.h"
LSTM_TARGET_END()
#endif /* the compiler has AVX512_BF16 */
#endif
#endif /* FASTLSTM_VECTOR_PATHS */

/* The paths built into this binary, by path number (NULL: not built). */
static const bf16_kernels *kernels_of(int path)
{
    switch (path) {
#ifdef FASTLSTM_VECTOR_PATHS
    case LSTM_BF16_PORTABLE: return &bf16_kernels_portable;
#endif
#ifdef FASTLSTM_X86_PATHS
    case LSTM_BF16_AVX2: return &bf16_kernels_avx2;
    case LSTM_BF16_AVX512: return &bf16_kernels_avx512;
#endif
#ifdef FASTLSTM_AVX512BF16_PATH
    case LSTM_BF16_AVX512BF16: return &bf16_kernels_avx512bf16;
#endif
    default: return NULL;
    }
}

int lstm_bf16_path_supported(int path)
{
    const bf16_kernels *k = kernels_of(path);
    return k && k->cpu_has();
}

int lstm_bf16_best_path(void)
{
    return lstm_best_path_of(LSTM_BF16_COUNT, lstm_bf16_path_supported, LSTM_BF16_NONE);
}

const char *lstm_bf16_path_name(int path)
{
    static const char *const names[LSTM_BF16_COUNT] = {"portable", "avx2", "avx512", "avx512bf16"};
    return path >= 0 && path < LSTM_BF16_COUNT ? names[path] : "none";
}

/* The kernels of `path`, or of the best path here when it cannot run (never
 * an illegal instruction); NULL without any. */
static const bf16_kernels *usable(int path)
{
    return kernels_of(lstm_bf16_path_supported(path) ? path : lstm_bf16_best_path());
}

void lstm_bf16_forward(int path, int nthreads, ptrdiff_t L, ptrdiff_t T, ptrdiff_t N, ptrdiff_t I0,
                       ptrdiff_t H, const float *x, const uint32_t *const *Wp,
                       const float *const *b, const float *h0, const float *c0, float *y,
                       float *seq, float *h_n, float *c_n, int reverse, float *work)
{
    const bf16_kernels *k = usable(path);
    if (k && L > 0 && T > 0 && N > 0 && H > 0)
        k->forward(nthreads, L, T, N, I0, H, x, Wp, b, h0, c0, y, seq, h_n, c_n, reverse, work);
}

void lstm_bf16_dense(int path, ptrdiff_t N, ptrdiff_t K, ptrdiff_t V, const uint32_t *Wp,
                     const float *h, float *z, float *work)
{
    const bf16_kernels *k = usable(path);
    if (k && N > 0 && V > 0) k->dense(N, K, V, Wp, h, z, work);
}

ptrdiff_t lstm_bf16_row_size(ptrdiff_t I, ptrdiff_t H)
{
    return bf16_lda(I, H);
}

void lstm_bf16_row_activations(int path, const float *in, ptrdiff_t I, const float *h, ptrdiff_t H,
                               float *act)
{
    const bf16_kernels *k = usable(path);
    if (k) k->row_activations(in, I, h, H, act);
}

void lstm_bf16_row_panels(int path, ptrdiff_t p0, ptrdiff_t p1, int down, ptrdiff_t I, ptrdiff_t H,
                          const uint32_t *Wp, const float *act, const float *add, float *c,
                          float *h)
{
    const bf16_kernels *k = usable(path);
    if (k && p1 > p0) k->row_panels(p0, p1, down, I, H, Wp, act, add, c, h);
}

void lstm_bf16_dense_panels(int path, ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t K, ptrdiff_t V,
                            const uint32_t *Wp, const float *h, float *z, float *work)
{
    const bf16_kernels *k = usable(path);
    if (k && p1 > p0) k->dense_panels(p0, p1, K, V, Wp, h, z, work);
}
