/* lstm_amx.c - Intel AMX for float32 products (lstm_amx.h): the CPU and OS
 * check, the split of float32 into three bf16 parts, and for the weight
 * gradients and the forward's input product the packing of the operands'
 * parts into tiles and the blocked products. Built on x86-64
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
/* rows of n per block: C's tiles are loaded and stored once a block */
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

/* Two rows of 16 floats (zero past nv values; a NULL row reads as zeros) as the
 * three parts of one VNNI tile row: dst[j * TILE + 2c + e] = part j of row e's value c. */
static inline void pair_row(const float *r0, const float *r1, __mmask16 nv, uint16_t *dst)
{
    __m256i p0[3], p1[3];
    split16(r0 ? _mm512_maskz_loadu_ps(nv, r0) : _mm512_setzero_ps(), p0);
    split16(r1 ? _mm512_maskz_loadu_ps(nv, r1) : _mm512_setzero_ps(), p1);
    for (int j = 0; j < 3; ++j) {
        const __m256i lo = _mm256_unpacklo_epi16(p0[j], p1[j]), hi = _mm256_unpackhi_epi16(p0[j], p1[j]);
        _mm256_storeu_si256((__m256i *)(dst + j * TILE), _mm256_permute2x128_si256(lo, hi, 0x20));
        _mm256_storeu_si256((__m256i *)(dst + j * TILE + 16), _mm256_permute2x128_si256(lo, hi, 0x31));
    }
}

/* A 16 x 16 matrix of 32-bit values transposed in place (rows r[i] become its columns). */
static inline void transpose16(__m512i r[16])
{
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 4; ++i) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
        r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
    }
}

/* dst's three part tiles (TILE apart) = src's, each transposed as 16 x 16 pairs
 * (32-bit values; src 64-byte aligned). */
static void transpose_parts(const uint16_t *src, uint16_t *dst)
{
    for (int j = 0; j < 3; ++j) {
        __m512i r[16];
        for (int m = 0; m < 16; ++m) r[m] = _mm512_load_si512(src + j * TILE + m * 32);
        transpose16(r);
        for (int m = 0; m < 16; ++m) _mm512_storeu_si512(dst + j * TILE + m * 32, r[m]);
    }
}

/* B tiles of a block of kr rows from k0: xh's pairs of rows, for column tile ct
 * (16 columns) and k-step s, part j at B + ((ct * ks + s) * 3 + j) * TILE (VNNI:
 * row m holds columns c of rows 2m and 2m + 1); zero past the block and W. xh as
 * lstm_gather_xh lays it out: panel j0 / pw, row r at xh + j0 * n + r * w. */
static void pack_xh(ptrdiff_t n, ptrdiff_t k0, ptrdiff_t kr, ptrdiff_t ks, ptrdiff_t nct, ptrdiff_t W,
                    const float *xh, ptrdiff_t pw, uint16_t *B)
{
    for (ptrdiff_t ct = 0; ct < nct; ++ct) {
        const ptrdiff_t c0 = ct * 16, j0 = c0 / pw * pw, w = W - j0 < pw ? W - j0 : pw;
        const float *col = c0 < W ? xh + j0 * n + (c0 - j0) : NULL;
        for (ptrdiff_t s = 0; s < ks; ++s)
            for (int m = 0; m < 16; ++m) {
                const ptrdiff_t a = s * 32 + 2 * m;
                pair_row(col && a < kr ? col + (k0 + a) * w : NULL,
                         col && a + 1 < kr ? col + (k0 + a + 1) * w : NULL, 0xffff,
                         B + (ct * ks + s) * 3 * TILE + m * 32);
            }
    }
}

/* A tiles of gate tiles gt0 and gt0 + 1 (16 gates each) over a block: dP^T, for tile
 * t, k-step s and part j at A + ((t * ks + s) * 3 + j) * TILE, row g = the 32 rows'
 * values of gate g (zero past the block and G): a VNNI tile of dP's pairs of rows,
 * transposed as 16 x 16 pairs. */
static void pack_dpt(ptrdiff_t k0, ptrdiff_t kr, ptrdiff_t ks, ptrdiff_t gt0, ptrdiff_t G,
                     const float *dP, uint16_t *A)
{
    uint16_t vnni[3 * TILE] __attribute__((aligned(64)));
    for (int t = 0; t < 2; ++t) {
        const ptrdiff_t g0 = (gt0 + t) * 16, ng = G - g0 < 16 ? (g0 < G ? G - g0 : 0) : 16;
        const __mmask16 nv = (__mmask16)((1u << ng) - 1u);
        for (ptrdiff_t s = 0; s < ks; ++s) {
            for (int m = 0; m < 16; ++m) {
                const ptrdiff_t a = s * 32 + 2 * m;
                /* dP's rows lie 4G bytes apart, past what the hardware prefetcher follows */
                _mm_prefetch((const char *)(dP + (k0 + a + 16) * G + g0), _MM_HINT_T0);
                _mm_prefetch((const char *)(dP + (k0 + a + 17) * G + g0), _MM_HINT_T0);
                pair_row(ng && a < kr ? dP + (k0 + a) * G + g0 : NULL,
                         ng && a + 1 < kr ? dP + (k0 + a + 1) * G + g0 : NULL, nv, vnni + m * 32);
            }
            transpose_parts(vnni, A + (t * ks + s) * 3 * TILE);
        }
    }
}

/* C [G, W] (+)= the block's A [2 gate tiles] . B [2 column tiles] over every pair of
 * column tiles: C tiles 0-3 over the block's ks k-steps, each k-step the six part
 * products of B's part j with A's parts i, i + j <= 2 (small ones first). Tiles
 * past G or W go through a scratch tile. fresh: C starts at zero. */
static void block_product(ptrdiff_t ks, ptrdiff_t ncp, ptrdiff_t gt0, ptrdiff_t G, ptrdiff_t W,
                          const uint16_t *A, const uint16_t *B, float *C, int fresh)
{
    float spare[4][256] __attribute__((aligned(64)));
    const ptrdiff_t ldc = W * (ptrdiff_t)sizeof(float);
    for (ptrdiff_t cp = 0; cp < ncp; ++cp) {
        /* tile q = 2 * (gate tile) + (column tile): where it lies, its rows and columns */
        float *at[4];
        ptrdiff_t ld[4], rows[4], cols[4];
        for (int q = 0; q < 4; ++q) {
            const ptrdiff_t g0 = (gt0 + q / 2) * 16, c0 = (2 * cp + q % 2) * 16;
            rows[q] = G - g0 < 16 ? (g0 < G ? G - g0 : 0) : 16;
            cols[q] = c0 < W ? 16 : 0;
            const int whole = rows[q] == 16 && cols[q] == 16;
            at[q] = whole ? C + g0 * W + c0 : spare[q];
            ld[q] = whole ? ldc : 64;
            if (!whole) {
                memset(spare[q], 0, sizeof spare[q]);
                if (!fresh)
                    for (ptrdiff_t r = 0; r < rows[q] && cols[q]; ++r)
                        memcpy(spare[q] + r * 16, C + (g0 + r) * W + c0, 16 * sizeof(float));
            }
        }
        __asm__ __volatile__("" ::: "memory");
        if (fresh) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
        } else {
            _tile_loadd(0, at[0], ld[0]);
            _tile_loadd(1, at[1], ld[1]);
            _tile_loadd(2, at[2], ld[2]);
            _tile_loadd(3, at[3], ld[3]);
        }
        const uint16_t *a0 = A, *a1 = A + ks * 3 * TILE;
        const uint16_t *b0 = B + (2 * cp) * ks * 3 * TILE, *b1 = B + (2 * cp + 1) * ks * 3 * TILE;
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
        _tile_stored(0, at[0], ld[0]);
        _tile_stored(1, at[1], ld[1]);
        _tile_stored(2, at[2], ld[2]);
        _tile_stored(3, at[3], ld[3]);
        __asm__ __volatile__("" ::: "memory");
        for (int q = 0; q < 4; ++q)
            if (at[q] == spare[q]) {
                const ptrdiff_t g0 = (gt0 + q / 2) * 16, c0 = (2 * cp + q % 2) * 16;
                for (ptrdiff_t r = 0; r < rows[q] && cols[q]; ++r)
                    memcpy(C + (g0 + r) * W + c0, spare[q] + r * 16, 16 * sizeof(float));
            }
    }
}

static void *alloc64(size_t bytes)
{
    void *p = NULL;
    return posix_memalign(&p, 64, bytes ? bytes : 64) ? NULL : p;
}

void *lstm_amx_alloc(size_t bytes) { return alloc64(bytes); }

void lstm_amx_free(void *p) { free(p); }

void lstm_amx_begin(void) { _tile_loadconfig(&lstm_amx_config); }

void lstm_amx_end(void) { _tile_release(); }

int lstm_amx_grads(ptrdiff_t n, ptrdiff_t G, ptrdiff_t W, const float *dP, const float *xh,
                   ptrdiff_t pw, float *C, int accumulate)
{
    if (!lstm_amx_ready() || n <= 0 || G <= 0 || W <= 0 || W % 16 || pw % 16) return 0;
    const ptrdiff_t nct = (W + 31) / 32 * 2, ncp = nct / 2, ngp = (G + 31) / 32, ksmax = (KC + 31) / 32;
    uint16_t *B = alloc64((size_t)(nct * ksmax * 3 * TILE) * sizeof(uint16_t));
    uint16_t *A = alloc64((size_t)(2 * ksmax * 3 * TILE) * sizeof(uint16_t));
    if (!A || !B) {
        free(A);
        free(B);
        return 0;
    }
    lstm_amx_begin();
    for (ptrdiff_t k0 = 0; k0 < n; k0 += KC) {
        const ptrdiff_t kr = n - k0 < KC ? n - k0 : KC, ks = (kr + 31) / 32;
        pack_xh(n, k0, kr, ks, nct, W, xh, pw, B);
        for (ptrdiff_t gp = 0; gp < ngp; ++gp) {
            pack_dpt(k0, kr, ks, 2 * gp, G, dP, A);
            __asm__ __volatile__("" ::: "memory"); /* the tile loads read the packs */
            block_product(ks, ncp, 2 * gp, G, W, A, B, C, k0 == 0 && !accumulate);
            __asm__ __volatile__("" ::: "memory"); /* and the packs are written again */
        }
    }
    lstm_amx_end();
    free(A);
    free(B);
    return 1;
}

void lstm_amx_input_pack(ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t I, ptrdiff_t H, const float *W_ih,
                         uint16_t *B)
{
    const ptrdiff_t ks = lstm_amx_ksteps(I), size = lstm_amx_input_panel_size(I);
    for (ptrdiff_t p = p0; p < p1; ++p) {
        uint16_t *Bp = B + p * size;
        for (int g = 0; g < 4; ++g)
            for (ptrdiff_t s = 0; s < ks; ++s) {
                /* the 16 units' inputs of the k-step, a unit a row, then transposed */
                uint16_t vnni[3 * TILE] __attribute__((aligned(64)));
                const ptrdiff_t k0 = s * 32, kn = I - k0 < 32 ? I - k0 : 32;
                for (int u = 0; u < 16; ++u) {
                    const ptrdiff_t unit = p * 16 + u;
                    const float *w = unit < H ? W_ih + (g * H + unit) * I + k0 : NULL;
                    /* the 32 inputs as two rows of 16: pairs (2m, 2m + 1) come from
                     * consecutive floats, so split the row and interleave halves */
                    __m256i q0[3], q1[3];
                    const __mmask16 lo = kn >= 16 ? 0xffff : (__mmask16)((1u << kn) - 1u);
                    const __mmask16 hi = kn >= 32 ? 0xffff : kn > 16 ? (__mmask16)((1u << (kn - 16)) - 1u) : 0;
                    split16(w ? _mm512_maskz_loadu_ps(lo, w) : _mm512_setzero_ps(), q0);
                    split16(w && hi ? _mm512_maskz_loadu_ps(hi, w + 16) : _mm512_setzero_ps(), q1);
                    for (int j = 0; j < 3; ++j) {
                        _mm256_storeu_si256((__m256i *)(vnni + j * TILE + u * 32), q0[j]);
                        _mm256_storeu_si256((__m256i *)(vnni + j * TILE + u * 32 + 16), q1[j]);
                    }
                }
                /* row u now holds unit u's 32 inputs = 16 pairs; the tile wants row m
                 * = pair m of every unit */
                transpose_parts(vnni, Bp + (g * ks + s) * 3 * TILE);
            }
    }
}

void lstm_amx_input_rows(ptrdiff_t n, ptrdiff_t I, const float *x, const ptrdiff_t *place,
                         ptrdiff_t row0, uint16_t *A)
{
    const ptrdiff_t ld = 32 * lstm_amx_ksteps(I), n16 = lstm_amx_rows16(n);
    for (ptrdiff_t r = 0; r < n16; ++r) {
        const float *src = r < n ? x + (place ? place[row0 + r] : row0 + r) * I : NULL;
        for (ptrdiff_t c = 0; c < ld; c += 16) {
            const __mmask16 m = I - c >= 16 ? 0xffff : I > c ? (__mmask16)((1u << (I - c)) - 1u) : 0;
            __m256i part[3];
            split16(src && m ? _mm512_maskz_loadu_ps(m, src + c) : _mm512_setzero_ps(), part);
            for (int j = 0; j < 3; ++j)
                _mm256_storeu_si256((__m256i *)(A + (j * n16 + r) * ld + c), part[j]);
        }
    }
}

void lstm_amx_input_products(ptrdiff_t n16, ptrdiff_t I, const uint16_t *A, const uint16_t *B,
                             ptrdiff_t np, float *out, ptrdiff_t ldo)
{
    const ptrdiff_t ks = lstm_amx_ksteps(I), ld = 32 * ks, ps = n16 * ld;
    const ptrdiff_t bs = lstm_amx_input_panel_size(I);
    __asm__ __volatile__("" ::: "memory"); /* the tile loads read what the caller wrote */
    /* Where 32 rows' parts fit in half of L1 (I <= 128: 24 KB), 32 rows at a time through
     * every panel: their tiles stay in L1 (a panel at a time through every row takes
     * 1.45x the time, its rows' tiles from L2). Else a panel at a time through every
     * row: the panel's parts (3 KB a k-step and gate) stay in L2 (the tutorial's
     * layer 1, I = 600: the other way, every panel's parts from L3 at each 32 rows,
     * takes the bidirectional forward 1.10x the time). */
    const int rows_outer = 3 * 32 * ld * 2 <= (24 << 10);
    const ptrdiff_t nr0 = (n16 + 31) / 32, nitems = nr0 * np;
    for (ptrdiff_t item = 0; item < nitems; ++item) {
        const ptrdiff_t r0 = 32 * (rows_outer ? item / np : item % nr0);
        const ptrdiff_t p = rows_outer ? item % np : item / nr0;
        const int two = n16 - r0 >= 32; /* two tiles of rows, or the last 16 */
        const uint16_t *Bp = B + p * bs;
        float *o = out + p * ldo + r0 * 64;
        for (int q = 0; q < 2; ++q) {
            /* gates 2q and 2q + 1: C tiles 0, 1 (rows r0..) and 2, 3 (rows r0 + 16..) */
            const uint16_t *b0 = Bp + (2 * q) * ks * 3 * TILE;
            const uint16_t *b1 = Bp + (2 * q + 1) * ks * 3 * TILE;
            _tile_zero(0);
            _tile_zero(1);
            if (two) {
                _tile_zero(2);
                _tile_zero(3);
            }
            for (ptrdiff_t s = 0; s < ks; ++s) {
                const uint16_t *a = A + r0 * ld + s * 32;
                const ptrdiff_t o3 = s * 3 * TILE;
                for (int j = 2; j >= 0; --j) {
                    _tile_loadd(6, b0 + o3 + j * TILE, 64);
                    _tile_loadd(7, b1 + o3 + j * TILE, 64);
                    for (int i = 2 - j; i >= 0; --i) {
                        const uint16_t *ai = a + i * ps;
                        _tile_loadd(4, ai, ld * 2);
                        _tile_dpbf16ps(0, 4, 6);
                        _tile_dpbf16ps(1, 4, 7);
                        if (two) {
                            _tile_loadd(5, ai + 16 * ld, ld * 2);
                            _tile_dpbf16ps(2, 5, 6);
                            _tile_dpbf16ps(3, 5, 7);
                        }
                    }
                }
            }
            _tile_stored(0, o + 2 * q * 16, 64 * sizeof(float));
            _tile_stored(1, o + (2 * q + 1) * 16, 64 * sizeof(float));
            if (two) {
                _tile_stored(2, o + 16 * 64 + 2 * q * 16, 64 * sizeof(float));
                _tile_stored(3, o + 16 * 64 + (2 * q + 1) * 16, 64 * sizeof(float));
            }
        }
    }
    __asm__ __volatile__("" ::: "memory"); /* and the caller reads what the tile stores wrote */
}

LSTM_TARGET_END()

#else /* no AMX in this build */

int lstm_amx_ready(void) { return 0; }
void lstm_amx_begin(void) {}
void lstm_amx_end(void) {}
void *lstm_amx_alloc(size_t bytes) { (void)bytes; return NULL; }
void lstm_amx_free(void *p) { (void)p; }

void lstm_amx_input_pack(ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t I, ptrdiff_t H, const float *W_ih,
                         uint16_t *B)
{
    (void)p0, (void)p1, (void)I, (void)H, (void)W_ih, (void)B;
}

void lstm_amx_input_rows(ptrdiff_t n, ptrdiff_t I, const float *x, const ptrdiff_t *place,
                         ptrdiff_t row0, uint16_t *A)
{
    (void)n, (void)I, (void)x, (void)place, (void)row0, (void)A;
}

void lstm_amx_input_products(ptrdiff_t n16, ptrdiff_t I, const uint16_t *A, const uint16_t *B,
                             ptrdiff_t np, float *out, ptrdiff_t ldo)
{
    (void)n16, (void)I, (void)A, (void)B, (void)np, (void)out, (void)ldo;
}

int lstm_amx_grads(ptrdiff_t n, ptrdiff_t G, ptrdiff_t W, const float *dP, const float *xh,
                   ptrdiff_t pw, float *C, int accumulate)
{
    (void)n, (void)G, (void)W, (void)dP, (void)xh, (void)pw, (void)C, (void)accumulate;
    return 0;
}
#endif
