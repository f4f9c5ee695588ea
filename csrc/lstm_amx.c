/* lstm_amx.c - Intel AMX for the float32 weight gradients (lstm_amx.h): the
 * CPU and OS check, the split of float32 into three bf16 parts, the packing of
 * the operands' parts into tiles and the blocked product. Built on x86-64
 * Linux with GCC >= 11 or Clang >= 12, with per-function target options (the
 * file builds for the baseline CPU); stubs elsewhere.
 */
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "lstm_amx.h"

#if defined(__x86_64__) && defined(__linux__) && !defined(FASTLSTM_NO_VECTOR_PATHS) && \
    ((defined(__clang__) && __clang_major__ >= 12) ||                                    \
     (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define LSTM_AMX_BUILT 1
#endif

#ifdef LSTM_AMX_BUILT
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "lstm_common.h"

/* Linux: a process asks once for the tiles' state (XFEATURE_XTILEDATA = 18). */
#define LSTM_ARCH_REQ_XCOMP_PERM 0x1023
#define LSTM_XFEATURE_XTILEDATA 18

static int lstm_amx_check(void)
{
    unsigned a, b, c, d;
    if (!lstm_cpu_has_avx512() || !__builtin_cpu_supports("avx512bw")) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const int tile = (d >> 24) & 1, bf16 = (d >> 22) & 1;
    if (!tile || !bf16 || a < 1) return 0;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !((a >> 5) & 1)) return 0; /* AVX512-BF16 */
    return syscall(SYS_arch_prctl, LSTM_ARCH_REQ_XCOMP_PERM, LSTM_XFEATURE_XTILEDATA) == 0;
}

int lstm_amx_ready(void)
{
    static int state = -1; /* checked once; the same answer for every thread */
    int s = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
    if (s < 0) {
        s = lstm_amx_check();
        __atomic_store_n(&state, s, __ATOMIC_RELEASE);
    }
    return s;
}

/* Palette 1, every tile 16 rows of 64 bytes: C tiles 0-3, A tiles 4-5, B tiles 6-7.
 * Static: ldtilecfg reads it through an asm operand, which the compiler might not
 * count as a use of a local's stores. */
static const struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) lstm_amx_config = {
    1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

/* bf16 values of one tile (16 rows of 32) */
#define TILE 512
/* rows of n per block: the C partial sums go to memory and back once a block */
#define KC 384

LSTM_TARGET_BEGIN("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma",
                  "amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")

/* The three bf16 parts (round to nearest even) of 16 floats. */
static inline void split16(__m512 v, __m256i part[3])
{
    for (int j = 0; j < 3; ++j) {
        part[j] = (__m256i)_mm512_cvtneps_pbh(v);
        if (j < 2)
            v = _mm512_sub_ps(v, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(part[j]), 16)));
    }
}

/* A tiles of one block: for column tile ct (16 columns of xh) and k-step s (32 rows),
 * part j at A + ((ct * ks + s) * 3 + j) * TILE, element [c][k]; zero past n and W. */
static void pack_a(ptrdiff_t n, ptrdiff_t k0, ptrdiff_t kr, ptrdiff_t ks, ptrdiff_t nct, ptrdiff_t W,
                   const float *xh, ptrdiff_t pw, uint16_t *A)
{
    uint16_t parts[3][16];
    for (ptrdiff_t ct = 0; ct < nct; ++ct) {
        const ptrdiff_t c0 = ct * 16, j0 = c0 / pw * pw, w = W - j0 < pw ? W - j0 : pw;
        for (ptrdiff_t s = 0; s < ks; ++s) {
            uint16_t *dst = A + (ct * ks + s) * 3 * TILE;
            for (int k = 0; k < 32; ++k) {
                const ptrdiff_t r = k0 + s * 32 + k;
                if (c0 < W && s * 32 + k < kr) {
                    __m256i p[3];
                    split16(_mm512_loadu_ps(xh + j0 * n + r * w + (c0 - j0)), p);
                    for (int j = 0; j < 3; ++j) _mm256_storeu_si256((__m256i *)parts[j], p[j]);
                } else {
                    memset(parts, 0, sizeof parts);
                }
                for (int j = 0; j < 3; ++j)
                    for (int c = 0; c < 16; ++c) dst[j * TILE + c * 32 + k] = parts[j][c];
            }
        }
    }
}

/* B tiles of gate tiles gt0, gt0 + 1: for tile t, k-step s and part j at
 * B + ((t * ks + s) * 3 + j) * TILE, rows of k pairs: element [m][g][e] =
 * dP[k0 + s * 32 + 2m + e][(gt0 + t) * 16 + g]; zero past the block and G. */
static void pack_b(ptrdiff_t k0, ptrdiff_t kr, ptrdiff_t ks, ptrdiff_t gt0, ptrdiff_t G,
                   const float *dP, uint16_t *B)
{
    for (ptrdiff_t s = 0; s < ks; ++s)
        for (int m = 0; m < 16; ++m)
            for (int t = 0; t < 2; ++t) {
                const ptrdiff_t g0 = (gt0 + t) * 16, ng = G - g0 < 16 ? (g0 < G ? G - g0 : 0) : 16;
                const __mmask16 m16 = (__mmask16)((1u << ng) - 1u);
                uint16_t *dst = B + (t * ks + s) * 3 * TILE;
                const ptrdiff_t a = s * 32 + 2 * m;
                /* dP's rows are 4G bytes apart, past what the hardware prefetcher follows */
                _mm_prefetch((const char *)(dP + (k0 + a + 16) * G + g0), _MM_HINT_T0);
                _mm_prefetch((const char *)(dP + (k0 + a + 17) * G + g0), _MM_HINT_T0);
                const __m512 v0 = a < kr ? _mm512_maskz_loadu_ps(m16, dP + (k0 + a) * G + g0) : _mm512_setzero_ps();
                const __m512 v1 = a + 1 < kr ? _mm512_maskz_loadu_ps(m16, dP + (k0 + a + 1) * G + g0)
                                             : _mm512_setzero_ps();
                __m256i p0[3], p1[3];
                split16(v0, p0);
                split16(v1, p1);
                for (int j = 0; j < 3; ++j) {
                    const __m256i lo = _mm256_unpacklo_epi16(p0[j], p1[j]);
                    const __m256i hi = _mm256_unpackhi_epi16(p0[j], p1[j]);
                    _mm256_storeu_si256((__m256i *)(dst + j * TILE + m * 32), _mm256_permute2x128_si256(lo, hi, 0x20));
                    _mm256_storeu_si256((__m256i *)(dst + j * TILE + m * 32 + 16),
                                        _mm256_permute2x128_si256(lo, hi, 0x31));
                }
            }
}

/* Ct [Wq, Gp] (+)= the block's A [2 column tiles] . B [2 gate tiles] for every pair of
 * column tiles: C tiles 0-3 over the block's ks k-steps, each k-step the six part
 * products of B's part j with A's parts i, i + j <= 2 (small ones first). */
static void block_product(ptrdiff_t ks, ptrdiff_t ncp, ptrdiff_t gp, ptrdiff_t Gp, const uint16_t *A,
                          const uint16_t *B, float *Ct, int fresh)
{
    const ptrdiff_t ldc = Gp * (ptrdiff_t)sizeof(float);
    for (ptrdiff_t cp = 0; cp < ncp; ++cp) {
        float *c00 = Ct + (2 * cp * 16) * Gp + gp * 32, *c01 = c00 + 16;
        float *c10 = c00 + 16 * Gp, *c11 = c10 + 16;
        if (fresh) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
        } else {
            _tile_loadd(0, c00, ldc);
            _tile_loadd(1, c01, ldc);
            _tile_loadd(2, c10, ldc);
            _tile_loadd(3, c11, ldc);
        }
        const uint16_t *a0 = A + (2 * cp) * ks * 3 * TILE, *a1 = A + (2 * cp + 1) * ks * 3 * TILE;
        const uint16_t *b0 = B, *b1 = B + ks * 3 * TILE;
        for (ptrdiff_t s = 0; s < ks; ++s) {
            const ptrdiff_t o = s * 3 * TILE;
            for (int j = 2; j >= 0; --j) {
                _tile_loadd(6, b0 + o + j * TILE, 64);
                _tile_loadd(7, b1 + o + j * TILE, 64);
                for (int i = 2 - j; i >= 0; --i) {
                    _tile_loadd(4, a0 + o + i * TILE, 64);
                    _tile_loadd(5, a1 + o + i * TILE, 64);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(1, 4, 7);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
            }
        }
        _tile_stored(0, c00, ldc);
        _tile_stored(1, c01, ldc);
        _tile_stored(2, c10, ldc);
        _tile_stored(3, c11, ldc);
    }
}

static void *alloc64(size_t bytes)
{
    void *p = NULL;
    return posix_memalign(&p, 64, bytes ? bytes : 64) ? NULL : p;
}

int lstm_amx_grads(ptrdiff_t n, ptrdiff_t G, ptrdiff_t W, const float *dP, const float *xh,
                   ptrdiff_t pw, float *C, int accumulate)
{
    if (!lstm_amx_ready() || n <= 0 || G <= 0 || W <= 0 || W % 16 || pw % 16) return 0;
    const ptrdiff_t nct = (W + 31) / 32 * 2, ncp = nct / 2, ngp = (G + 31) / 32;
    /* Ct's rows one line more than a multiple of 4 KB apart (not all in one cache set) */
    const ptrdiff_t Gp = ngp * 32 + 16, Wq = ncp * 32, ksmax = (KC + 31) / 32;
    float *Ct = alloc64((size_t)(Wq * Gp) * sizeof(float));
    uint16_t *A = alloc64((size_t)(nct * ksmax * 3 * TILE) * sizeof(uint16_t));
    uint16_t *B = alloc64((size_t)(2 * ksmax * 3 * TILE) * sizeof(uint16_t));
    if (!Ct || !A || !B) {
        free(Ct);
        free(A);
        free(B);
        return 0;
    }
    _tile_loadconfig(&lstm_amx_config);
    __asm__ __volatile__("" ::: "memory");
    for (ptrdiff_t k0 = 0; k0 < n; k0 += KC) {
        const ptrdiff_t kr = n - k0 < KC ? n - k0 : KC, ks = (kr + 31) / 32;
        pack_a(n, k0, kr, ks, nct, W, xh, pw, A);
        for (ptrdiff_t gp = 0; gp < ngp; ++gp) {
            pack_b(k0, kr, ks, 2 * gp, G, dP, B);
            __asm__ __volatile__("" ::: "memory"); /* the tile loads read the packs */
            block_product(ks, ncp, gp, Gp, A, B, Ct, k0 == 0);
            __asm__ __volatile__("" ::: "memory"); /* and the packs are written again */
        }
    }
    _tile_release();
    __asm__ __volatile__("" ::: "memory");
    /* C [g][c] (+)= Ct [c][g]: 16 columns of a row of C gathered at a time */
    const __m512i rows16 = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                              _mm512_set1_epi32((int)Gp));
    for (ptrdiff_t c0 = 0; c0 < W; c0 += 16)
        for (ptrdiff_t g = 0; g < G; ++g) {
            const __m512 v = _mm512_i32gather_ps(rows16, Ct + c0 * Gp + g, 4);
            float *dst = C + g * W + c0;
            _mm512_storeu_ps(dst, accumulate ? _mm512_add_ps(_mm512_loadu_ps(dst), v) : v);
        }
    free(Ct);
    free(A);
    free(B);
    return 1;
}

LSTM_TARGET_END()

#else /* no AMX in this build */

int lstm_amx_ready(void) { return 0; }

int lstm_amx_grads(ptrdiff_t n, ptrdiff_t G, ptrdiff_t W, const float *dP, const float *xh,
                   ptrdiff_t pw, float *C, int accumulate)
{
    (void)n, (void)G, (void)W, (void)dP, (void)xh, (void)pw, (void)C, (void)accumulate;
    return 0;
}
#endif
