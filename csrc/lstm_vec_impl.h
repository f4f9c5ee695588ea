/* lstm_vec_impl.h - the vector toolkit of the fused kernels, shared by the float32
 * loops (lstm_fused_impl.h) and the bf16 inference loops (lstm_bf16_impl.h): the
 * vector types, loads and stores of n lanes, sigmoid and tanh, and the forward gate
 * math of one row of units (FN(cell)).
 *
 * Included by those files once per code path, with SFX (name suffix) and VL (lanes)
 * defined; the including file undefines what this one defines (FN, VF, VI, CAT,
 * CAT_, INLINE) at its end.
 */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)
#define VF FN(vf)
#define VI FN(vi)

typedef float VF __attribute__((vector_size(VL * 4), aligned(4)));
typedef int VI __attribute__((vector_size(VL * 4), aligned(4)));
/* for loads and stores anywhere in a float array (through memcpy, GCC
 * splits AVX2 loads into 16-byte halves that go through the stack) */
typedef float FN(vf_mem) __attribute__((vector_size(VL * 4), aligned(4), may_alias));

#define INLINE static inline __attribute__((always_inline))

/* s - 0 folds to s exactly (0 + s would not: -0 + 0 = +0), so the compiler
 * emits one broadcast load instead of a scalar add plus a shuffle, which
 * competes with the FMAs for port 5 in the inner loops. */
INLINE VF FN(splat)(float s) { return s - (VF){0}; }
INLINE VF FN(load)(const float *p) { return *(const FN(vf_mem) *)p; }
INLINE void FN(store)(float *p, VF v) { *(FN(vf_mem) *)p = v; }

/* The first n lanes (0 <= n <= VL) from or to memory; the others read as 0.
 * On x86 these are masked loads and stores: a memcpy of n bytes would be a
 * library call, across which no vector register survives, and the compiler
 * then keeps the accumulators of the inner loops on the stack. */
INLINE VF FN(loadn)(const float *p, ptrdiff_t n)
{
    if (n >= VL) return FN(load)(p);
#if VL == 16 && defined(FASTLSTM_X86_PATHS)
    return (VF)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p);
#elif VL == 8 && defined(FASTLSTM_X86_PATHS)
    const VI lanes = {0, 1, 2, 3, 4, 5, 6, 7};
    return (VF)_mm256_maskload_ps(p, (__m256i)(lanes < (int)n));
#else
    float tmp[VL] = {0};
    memcpy(tmp, p, (size_t)n * sizeof(float));
    return FN(load)(tmp);
#endif
}
INLINE void FN(storen)(float *p, VF v, ptrdiff_t n)
{
    if (n >= VL) { FN(store)(p, v); return; }
#if VL == 16 && defined(FASTLSTM_X86_PATHS)
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), (__m512)v);
#elif VL == 8 && defined(FASTLSTM_X86_PATHS)
    const VI lanes = {0, 1, 2, 3, 4, 5, 6, 7};
    _mm256_maskstore_ps(p, (__m256i)(lanes < (int)n), (__m256)v);
#else
    float tmp[VL];
    FN(store)(tmp, v);
    memcpy(p, tmp, (size_t)n * sizeof(float));
#endif
}

INLINE VF FN(select)(VI mask, VF a, VF b)
{
    return (VF)((mask & (VI)a) | (~mask & (VI)b));
}

INLINE VF FN(abs)(VF x) { return (VF)((VI)x & 0x7fffffff); }

#if VL == 16 && defined(FASTLSTM_X86_PATHS)
/* AVX-512: the gate math competes with the FMAs for the same two ports, so
 * these spend as few instructions as they can. exp rounds with vrndscaleps
 * and scales by 2^n with vscalefps; reciprocals are rcp14 plus one Newton
 * step (about 2^-28). Within 3 ulp of sigmoid and tanh (tests/
 * test_activations.py), except sigmoid below -87, which returns its value at
 * -87 (1.6e-38) instead of a denormal or 0; NaN stays NaN. */
INLINE VF FN(recip)(VF d)
{
    const __m512 dv = (__m512)d, r = _mm512_rcp14_ps(dv);
    const __m512 err = _mm512_fnmadd_ps(dv, r, _mm512_set1_ps(1.0f));
    return (VF)_mm512_fmadd_ps(r, err, r);
}

/* exp(x) = 2^n (1 + q) for -104 <= x <= 88.7 (NaN stays NaN): Cody-Waite
 * reduction to r in [-ln2/2, ln2/2], q = r + r^2 Q(r) with a degree-4 Q
 * fitted for relative error (3e-9 in exact arithmetic). q is e^r - 1 without
 * the rounding of adding 1, which tanh needs near 0. */
INLINE __m512 FN(exp_parts)(__m512 x, __m512 *q)
{
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.381461276e-3f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.368710056e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166838899e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666652113e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.999999404e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    *q = _mm512_mul_ps(p, r);
    return n;
}

/* exp(x) for x <= 0 (the softmax's shifted logits), x clamped to -104 from below
 * (the result is then 0 or the smallest denormal; max keeps a NaN x). */
INLINE VF FN(exp_neg)(VF xv)
{
    __m512 q;
    const __m512 n = FN(exp_parts)(_mm512_max_ps(_mm512_set1_ps(-104.0f), (__m512)xv), &q);
    return (VF)_mm512_scalef_ps(_mm512_add_ps(q, _mm512_set1_ps(1.0f)), n);
}

/* 1 / (1 + exp(-x)), with x clamped to [-87, 104] so that exp(-x) neither
 * overflows nor leaves the reduction's range (max/min keep a NaN x). */
INLINE VF FN(sigmoid)(VF xv)
{
    __m512 x = _mm512_min_ps(_mm512_set1_ps(104.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), (__m512)xv));
    __m512 q;
    const __m512 n = FN(exp_parts)(_mm512_castsi512_ps(_mm512_xor_si512(
        _mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u))), &q);
    const __m512 e = _mm512_scalef_ps(_mm512_add_ps(q, _mm512_set1_ps(1.0f)), n);
    return FN(recip)((VF)_mm512_add_ps(e, _mm512_set1_ps(1.0f)));
}

/* tanh |x| = -m / (2 + m) with m = expm1(-2|x|) = 2^n q + (2^n - 1), which
 * keeps its relative accuracy near 0 (n = 0 there), and the sign of x. */
INLINE VF FN(tanh)(VF xv)
{
    const __m512 x = (__m512)xv, one = _mm512_set1_ps(1.0f);
    const __m512 y = _mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_mul_ps((__m512)FN(abs)(xv), _mm512_set1_ps(-2.0f)));
    __m512 q;
    const __m512 n = FN(exp_parts)(y, &q);
    const __m512 m = _mm512_add_ps(_mm512_scalef_ps(q, n), _mm512_sub_ps(_mm512_scalef_ps(one, n), one));
    /* m / d: rcp14, then one Newton step on the quotient itself (about 2^-28) */
    const __m512 d = _mm512_add_ps(m, _mm512_set1_ps(2.0f)), r = _mm512_rcp14_ps(d);
    const __m512 t0 = _mm512_mul_ps(m, r);
    const __m512 t = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, t0, m), t0);
    /* |t| with the sign of x: the sign bit from x, the others from t (t <= 0) */
    return (VF)_mm512_castsi512_ps(_mm512_ternarylogic_epi32(
        _mm512_castps_si512(t), _mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u), 0xD8));
}
#else
/* exp(x) for x <= 0 (all the activations need): Cody-Waite reduction to
 * r in [-ln2/2, ln2/2] and a degree-6 polynomial (Cephes' expf), about 1 ulp.
 * Below -87 it returns 0 (the true value is denormal); NaN stays NaN. */
INLINE VF FN(exp_neg)(VF x)
{
    const VF lo = FN(splat)(-87.0f);
    VI underflow = x < lo;
    x = FN(select)(underflow, lo, x);
    const VF magic = FN(splat)(12582912.0f); /* 1.5 * 2^23: rounds to an integer */
    VF n = (x * 1.44269504088896341f + magic) - magic;
    VF r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    VF p = FN(splat)(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
    VF result = p * (VF)bits;
    return FN(select)(underflow, FN(splat)(0.0f), result);
}

/* sigmoid on exp(-|x|): never overflows. */
INLINE VF FN(sigmoid)(VF x)
{
    VF e = FN(exp_neg)(-FN(abs)(x));
    VF s = 1.0f / (1.0f + e);
    return FN(select)(x >= 0.0f, s, e * s);
}

/* tanh: an odd polynomial near 0 (Cephes' tanhf), where (1-e)/(1+e) would
 * cancel; (1-e)/(1+e) with e = exp(-2|x|) elsewhere. */
INLINE VF FN(tanh)(VF x)
{
    VF a = FN(abs)(x);
    VF e = FN(exp_neg)(-2.0f * a);
    VF big = (1.0f - e) / (1.0f + e);
    big = (VF)((VI)big | ((VI)x & (int)0x80000000u));
    VF z = x * x;
    VF p = FN(splat)(-5.70498872745e-3f);
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    VF small = p * z * x + x;
    return FN(select)(a < 0.625f, small, big);
}
#endif

/* ---- gate math ------------------------------------------------------------ */
/* Stores one gate's n values for backward: with keep = LSTM_KEEP_STREAM a whole
 * vector that starts a cache line goes past the caches (a non-temporal store:
 * no read of the line first, and no eviction of the weights for data that
 * backward reads back from memory anyway); anything else is an ordinary store.
 * The caller fences (lstm_stream_fence) before another thread reads them. */
INLINE void FN(keep_gate)(float *p, VF v, ptrdiff_t n, int keep)
{
#if VL == 16 && defined(FASTLSTM_X86_PATHS)
    if (keep == LSTM_KEEP_STREAM && n == VL && !((uintptr_t)p & 63)) {
        _mm512_stream_ps(p, (__m512)v);
        return;
    }
#elif VL == 8 && defined(FASTLSTM_X86_PATHS)
    if (keep == LSTM_KEEP_STREAM && n == VL && !((uintptr_t)p & 31)) {
        _mm256_stream_ps(p, (__m256)v);
        return;
    }
#endif
    FN(storen)(p, v, n);
}

/* The forward gate math of n <= VL units of one row, shared by the forward
 * and step loops. pi, pf, pg, po: the pre-activations; c_prev: [n] IN;
 * gates: 4 blocks of n at stride H, OUT (the activated gates) when keep
 * (FN(keep_gate));
 * c: [n] OUT = f*c_prev + i*g; h: [n] OUT = o*tanh(c). The gates are stored
 * before tanh(c) is computed, which frees their registers for it (AVX2 has
 * 16 of them), and this order keeps the forward loops' code as it was. */
INLINE void FN(cell)(const VF pre[4], const VF add[4], const float *c_prev, float *gates,
                     int keep, ptrdiff_t H, ptrdiff_t n, float *c, float *h)
{
    const VF i = FN(sigmoid)(add ? pre[0] + add[0] : pre[0]);
    const VF f = FN(sigmoid)(add ? pre[1] + add[1] : pre[1]);
    const VF g = FN(tanh)(add ? pre[2] + add[2] : pre[2]);
    const VF o = FN(sigmoid)(add ? pre[3] + add[3] : pre[3]);
    const VF cn = f * FN(loadn)(c_prev, n) + i * g;
    if (keep) {
        FN(keep_gate)(gates, i, n, keep);
        FN(keep_gate)(gates + H, f, n, keep);
        FN(keep_gate)(gates + 2 * H, g, n, keep);
        FN(keep_gate)(gates + 3 * H, o, n, keep);
    }
    FN(storen)(c, cn, n);
    FN(storen)(h, o * FN(tanh)(cn), n);
}
