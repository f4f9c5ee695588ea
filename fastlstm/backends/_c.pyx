# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""C backend: whole-sequence LSTM forward/backward/step, every time loop in C.

Same caller-allocates contract as fastlstm/backends/reference.py (read it
there). This layer only checks shapes (memory safety), packs weights,
chooses the path, threads and fusion (fastlstm/_config.py) and calls:
csrc/lstm_fused.h has the fused float32 paths, csrc/lstm_blas_loop.h the
BLAS path (float64, and float32 with FASTLSTM_KERNEL=blas). Products go to
BLAS through scipy.linalg.cython_blas (no link step). The GIL is released
for the whole sequence. Variable lengths and the reverse direction go through
a StepOrder (_steps.py): the C loops see sorted rows, packed step by step. The
float32 forward's loop reads x and writes y where they lie in the padded batch
(the StepOrder says where; no copies in or out); the rest is packed.
"""

from cython cimport floating
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv

NAME = "c"

cdef extern from "lstm_blas_loop.h" nogil:
    ctypedef void (*lstm_sgemm_fn)(const char *, const char *, const int *, const int *,
                                   const int *, const float *, const float *, const int *,
                                   const float *, const int *, const float *, float *, const int *)
    ctypedef void (*lstm_dgemm_fn)(const char *, const char *, const int *, const int *,
                                   const int *, const double *, const double *, const int *,
                                   const double *, const int *, const double *, double *, const int *)
    ctypedef void (*lstm_sgemv_fn)(const char *, const int *, const int *, const float *,
                                   const float *, const int *, const float *, const int *,
                                   const float *, float *, const int *)
    ctypedef void (*lstm_dgemv_fn)(const char *, const int *, const int *, const double *,
                                   const double *, const int *, const double *, const int *,
                                   const double *, double *, const int *)
    ctypedef int (*lstm_set_threads_fn)(int)
    ctypedef struct lstm_blas:
        lstm_sgemm_fn sgemm
        lstm_dgemm_fn dgemm
        lstm_sgemv_fn sgemv
        lstm_dgemv_fn dgemv
        lstm_set_threads_fn set_threads_local
    void lstm_adam_step_f32(int nthreads, Py_ssize_t n, float *p, const float *g, float *m,
                            float *v, float c1, float c2, float a, float e, float wd)
    void lstm_adam_step_f64(int nthreads, Py_ssize_t n, double *p, const double *g, double *m,
                            double *v, double c1, double c2, double a, double e, double wd)
    void lstm_parallel_matmul_f32(const lstm_blas *blas, int nthreads, char ta, char tb,
                                  Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float *a,
                                  Py_ssize_t lda, const float *b, Py_ssize_t ldb, float *c,
                                  Py_ssize_t ldc)
    void lstm_parallel_matmul_f64(const lstm_blas *blas, int nthreads, char ta, char tb,
                                  Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const double *a,
                                  Py_ssize_t lda, const double *b, Py_ssize_t ldb, double *c,
                                  Py_ssize_t ldc)
    void lstm_scatter_add_rows_f32(int nthreads, Py_ssize_t rows, Py_ssize_t G, const int64_t *ids,
                                   const float *src, float *dst)
    void lstm_scatter_add_rows_f64(int nthreads, Py_ssize_t rows, Py_ssize_t G, const int64_t *ids,
                                   const double *src, double *dst)
    void lstm_splitmix_words(int nthreads, uint64_t key, Py_ssize_t n, uint64_t *out)
    void lstm_zero_bytes(int nthreads, Py_ssize_t n, void *p)
    void lstm_dropout_f32(int nthreads, Py_ssize_t n, const uint16_t *bits, unsigned threshold,
                          float scale, const float *x, float *y, float *mask)
    void lstm_dropout_f64(int nthreads, Py_ssize_t n, const uint16_t *bits, unsigned threshold,
                          double scale, const double *x, double *y, double *mask)
    void lstm_move_rows_f32(int nthreads, Py_ssize_t rows, Py_ssize_t F, const int64_t *src_rows,
                            const float *src, float *dst)
    void lstm_move_rows_f64(int nthreads, Py_ssize_t rows, Py_ssize_t F, const int64_t *src_rows,
                            const double *src, double *dst)
    void lstm_blas_forward_f32(const lstm_blas *blas, Py_ssize_t T, Py_ssize_t N,
                               const Py_ssize_t *batch, Py_ssize_t I, Py_ssize_t H, Py_ssize_t P,
                               const float *x, const float *W_ih, const float *W_hh,
                               const float *W_hr, const float *b, const float *h0,
                               const float *c0, float *gates, float *y, float *cs, float *ms)
    void lstm_blas_forward_f64(const lstm_blas *blas, Py_ssize_t T, Py_ssize_t N,
                               const Py_ssize_t *batch, Py_ssize_t I, Py_ssize_t H, Py_ssize_t P,
                               const double *x, const double *W_ih, const double *W_hh,
                               const double *W_hr, const double *b, const double *h0,
                               const double *c0, double *gates, double *y, double *cs, double *ms)
    void lstm_blas_backward_f32(const lstm_blas *blas, Py_ssize_t T, Py_ssize_t N,
                                const Py_ssize_t *batch, Py_ssize_t I, Py_ssize_t H, Py_ssize_t P,
                                const float *x, const float *W_ih, const float *W_hh,
                                const float *W_hr, const float *h0, const float *c0,
                                const float *y, const float *h_prev, const float *cs,
                                const float *ms, float *gates, const float *dy, float *dh,
                                float *dc, float *dx, float *dW_ih, float *dW_hh, float *dW_hr,
                                float *db, float *work)
    void lstm_blas_backward_f64(const lstm_blas *blas, Py_ssize_t T, Py_ssize_t N,
                                const Py_ssize_t *batch, Py_ssize_t I, Py_ssize_t H, Py_ssize_t P,
                                const double *x, const double *W_ih, const double *W_hh,
                                const double *W_hr, const double *h0, const double *c0,
                                const double *y, const double *h_prev, const double *cs,
                                const double *ms, double *gates, const double *dy, double *dh,
                                double *dc, double *dx, double *dW_ih, double *dW_hh,
                                double *dW_hr, double *db, double *work)
    void lstm_blas_step_f32(const lstm_blas *blas, Py_ssize_t L, Py_ssize_t N, Py_ssize_t I0,
                            Py_ssize_t H, const float *x, const float *const *W_ih,
                            const float *const *W_hh, const float *const *b, const float *h,
                            const float *c, float *gates, float *h_out, float *c_out)
    void lstm_blas_step_f64(const lstm_blas *blas, Py_ssize_t L, Py_ssize_t N, Py_ssize_t I0,
                            Py_ssize_t H, const double *x, const double *const *W_ih,
                            const double *const *W_hh, const double *const *b, const double *h,
                            const double *c, double *gates, double *h_out, double *c_out)

cdef extern from "lstm_amx.h" nogil:
    int lstm_amx_ready()


cdef extern from "lstm_fused.h" nogil:
    enum:
        LSTM_PATH_BLAS
        LSTM_PATH_COUNT
        LSTM_KEEP_RING
    int lstm_fused_best_path()
    int lstm_fused_path_supported(int path)
    const char *lstm_fused_path_name(int path)
    int lstm_fused_max_threads()
    void lstm_fused_set_one_row_ahead(int on)
    void lstm_fused_set_stream_gates(Py_ssize_t min_bytes)
    void lstm_fused_set_amx_rows(Py_ssize_t min_rows)
    void lstm_fused_set_amx_input_rows(Py_ssize_t min_rows)
    Py_ssize_t lstm_fused_panel_row_bytes()
    Py_ssize_t lstm_fused_forward_pack_size(int path, Py_ssize_t Ip, Py_ssize_t H, Py_ssize_t R)
    Py_ssize_t lstm_fused_backward_pack_size(int path, Py_ssize_t H, Py_ssize_t R)
    Py_ssize_t lstm_fused_backward_work_size(int nthreads, Py_ssize_t N, Py_ssize_t rows,
                                             Py_ssize_t I, Py_ssize_t H, Py_ssize_t P)
    void lstm_fused_pack_forward(int path, Py_ssize_t Ip, Py_ssize_t H, Py_ssize_t R,
                                 const float *W_ih, const float *W_hh, float *W_f)
    void lstm_fused_pack_backward(int path, Py_ssize_t H, Py_ssize_t R, const float *W_hh,
                                  float *W_b)
    ctypedef struct lstm_rows_place:
        const Py_ssize_t *x
        const Py_ssize_t *y
        const Py_ssize_t *perm
        const int64_t *ids
        const float *table
    void lstm_fused_forward(const lstm_blas *blas, int path, int nthreads, int by_rows, Py_ssize_t T,
                            Py_ssize_t N, const Py_ssize_t *batch, Py_ssize_t I, Py_ssize_t Ip,
                            Py_ssize_t H, Py_ssize_t P, const float *x, const float *W_ih,
                            const float *b, const float *W_hh, float *W_f, float *W_x,
                            const float *W_hr, const float *h0, const float *c0, float *gates,
                            int keep, float *y, float *cs, float *ms, int rev,
                            const lstm_rows_place *place, Py_ssize_t ldy)
    void lstm_fused_backward(const lstm_blas *blas, int path, int nthreads, int by_rows, Py_ssize_t T,
                             Py_ssize_t N, const Py_ssize_t *batch, Py_ssize_t I, Py_ssize_t H,
                             Py_ssize_t P, const float *x, const float *W_ih, const float *W_b,
                             const float *W_hr, const float *h0, const float *c0, const float *y,
                             const float *h_prev, const float *cs, const float *ms, float *gates,
                             const float *dy, float *dh, float *dc, float *dx, float *dW_ih,
                             float *dW_hh, float *dW_hr, float *db, float *work, int rev,
                             const int64_t *ids, Py_ssize_t V, float *dtab)
    void lstm_fused_step(const lstm_blas *blas, int path, int nthreads, Py_ssize_t L, Py_ssize_t N,
                         Py_ssize_t I0, Py_ssize_t H, const float *x, const float *const *W_ih,
                         const float *const *W_hh, const float *const *b, const float *h,
                         const float *c, float *gates, float *h_out, float *c_out)
    void lstm_fused_activations(int path, Py_ssize_t n, const float *x, float *sig, float *th)
    int lstm_fused_softmax_xent(int path, int nthreads, Py_ssize_t M, Py_ssize_t V, const float *logits,
                                const int64_t *targets, float scale, float *dl, double *row_loss)


cdef extern from "lstm_bf16.h" nogil:
    enum:
        LSTM_BF16_NONE
        LSTM_BF16_COUNT
    int lstm_bf16_best_path()
    int lstm_bf16_path_supported(int path)
    const char *lstm_bf16_path_name(int path)
    void lstm_bf16_round(Py_ssize_t n, const float *x, uint16_t *out)
    void lstm_bf16_widen(Py_ssize_t n, const uint16_t *inp, float *out)
    Py_ssize_t lstm_bf16_pack_size(Py_ssize_t NG, Py_ssize_t U, Py_ssize_t I, Py_ssize_t Kb)
    void lstm_bf16_pack(Py_ssize_t NG, Py_ssize_t U, Py_ssize_t I, Py_ssize_t Kb, const float *A,
                        const float *B, uint32_t *Wp)
    Py_ssize_t lstm_bf16_work_size(int nthreads, Py_ssize_t N, Py_ssize_t I0, Py_ssize_t H)
    void lstm_bf16_forward(int path, int nthreads, Py_ssize_t L, Py_ssize_t T, Py_ssize_t N,
                           Py_ssize_t I0, Py_ssize_t H, const float *x, const uint32_t **Wp,
                           const float **b, const float *h0, const float *c0, float *y,
                           float *seq, float *h_n, float *c_n, int reverse, float *work)
    void lstm_bf16_dense(int path, Py_ssize_t N, Py_ssize_t K, Py_ssize_t V, const uint32_t *Wp,
                         const float *h, float *z, float *work)

import threading

import numpy as np
from .. import _config
from ._blas_threads import set_threads_local_address
from ._steps import StepOrder, scratch

#: The keyword options of the backend contract this backend runs.
OPTIONS = ("lengths", "reverse", "projection", "projected", "projected_rows")
#: Every loop releases the GIL: the two directions of a bidirectional layer may run
#: at the same time on threads of their own (functional.run_directions).
SIDE_BY_SIDE = True
_NO_BATCH = np.empty(0, np.intp)

cdef lstm_blas _BLAS
_BLAS.sgemm = <lstm_sgemm_fn>sgemm
_BLAS.dgemm = <lstm_dgemm_fn>dgemm
_BLAS.sgemv = <lstm_sgemv_fn>sgemv
_BLAS.dgemv = <lstm_dgemv_fn>dgemv
_BLAS.set_threads_local = <lstm_set_threads_fn><size_t>set_threads_local_address()

#: Path numbers by name ("blas": no fused kernels).
_PATHS = {lstm_fused_path_name(p).decode(): p for p in range(LSTM_PATH_BLAS, LSTM_PATH_COUNT)}
#: Kernel paths this CPU and build can run, fastest first ("blas" always works).
SUPPORTED_KERNELS = [lstm_fused_path_name(p).decode() for p in range(LSTM_PATH_COUNT - 1, -1, -1)
                     if lstm_fused_path_supported(p)] + ["blas"]

#: The fastest path this CPU runs (what "auto" means).
_BEST = lstm_fused_path_name(lstm_fused_best_path()).decode()
#: What the fuse rule (_config.fuse_input) assumes a streamed panel row costs.
_PANEL_ROW_BYTES = lstm_fused_panel_row_bytes()


def kernel_path():
    """The float32 kernel path the next call will use (FASTLSTM_KERNEL or the fastest)."""
    name = _config.kernel()
    if name == "auto":
        return _BEST
    if name not in SUPPORTED_KERNELS:
        raise ValueError(f"kernel path {name!r} is not supported on this CPU; "
                         f"supported: {', '.join(SUPPORTED_KERNELS)}")
    return name


#: bf16 kernel paths this CPU and build run, fastest first (empty where none was built:
#: bf16 weights then run the float32 kernels on float32 copies of the rounded weights).
BF16_KERNELS = [lstm_bf16_path_name(p).decode() for p in range(LSTM_BF16_COUNT - 1, -1, -1)
                if lstm_bf16_path_supported(p)]
_BF16_PATHS = {lstm_bf16_path_name(p).decode(): p for p in range(LSTM_BF16_COUNT)}


def bf16_path():
    """The bf16 kernel path the next bf16 call will use (FASTLSTM_BF16_KERNEL or the
    fastest), or "none" where this build has no bf16 kernels."""
    name = _config.bf16_kernel()
    if not BF16_KERNELS:
        return "none"
    if name == "auto":
        return BF16_KERNELS[0]
    if name not in BF16_KERNELS:
        raise ValueError(f"bf16 kernel path {name!r} is not supported on this CPU; "
                         f"supported: {', '.join(BF16_KERNELS)}")
    return name


def bf16_round(const float[::1] x):
    """x rounded to bfloat16 (nearest, ties to even; NaN stays NaN), as uint16 bit patterns."""
    out = np.empty(x.shape[0], np.uint16)
    cdef uint16_t[::1] o = out
    if x.shape[0]:
        with nogil:
            lstm_bf16_round(x.shape[0], &x[0], &o[0])
    return out


def bf16_widen(const uint16_t[::1] bits):
    """The float32 values of bf16 bit patterns (exact)."""
    out = np.empty(bits.shape[0], np.float32)
    cdef float[::1] o = out
    if bits.shape[0]:
        with nogil:
            lstm_bf16_widen(bits.shape[0], &bits[0], &o[0])
    return out


class Bf16Panels:
    """Weights rounded to bf16 and packed for the bf16 kernels (csrc/lstm_bf16.h): NG
    gate blocks of U units over I + Kb columns ([A | B])."""

    __slots__ = ("NG", "U", "I", "Kb", "words")

    def __init__(self, NG, U, I, Kb, words):
        self.NG, self.U, self.I, self.Kb, self.words = NG, U, I, Kb, words


def bf16_pack(A, const float[:, ::1] B, Py_ssize_t NG):
    """[A | B] (A: (NG*U, I) or None; B: (NG*U, Kb)), rounded to bf16 and packed."""
    cdef Py_ssize_t rows = B.shape[0], Kb = B.shape[1], I = 0
    cdef const float[:, ::1] a
    if NG <= 0 or rows % NG:
        raise ValueError(f"B has {rows} rows, not a multiple of NG={NG}")
    if A is not None:
        a = A
        I = a.shape[1]
        _check("A", _shape(A), (rows, I))
    cdef Py_ssize_t n = lstm_bf16_pack_size(NG, rows // NG, I, Kb)
    raw = np.empty(n + 16, np.uint32)
    off = ((-raw.ctypes.data) % 64) // 4
    words = raw[off:off + n]
    cdef uint32_t[::1] w = words
    if n:
        with nogil:
            lstm_bf16_pack(NG, rows // NG, I, Kb, &a[0, 0] if I else NULL,
                           &B[0, 0] if Kb else NULL, &w[0])
    return Bf16Panels(NG, rows // NG, I, Kb, words)


cdef int _bf16_code() except -2:
    name = bf16_path()
    if name == "none":
        raise ValueError("this build has no bf16 kernels (bf16_path() is 'none')")
    return _BF16_PATHS[name]


def bf16_forward(const float[:, :, ::1] x, list packed, list b, const float[:, :, ::1] h0,
                 const float[:, :, ::1] c0, float[:, :, ::1] y, float[:, :, ::1] h_n,
                 float[:, :, ::1] c_n, bint reverse=False):
    """Inference over T steps of an L-layer stack on bf16 weights (lstm_bf16_forward):
    x (T, N, I0); packed: L Bf16Panels of [W_ih | W_hh] (bf16_pack(W_ih, W_hh, 4));
    b: L float32 (4H,) bias sums; h0, c0, h_n, c_n (L, N, H); y (T, N, H) OUT."""
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], I0 = x.shape[2], L = len(packed)
    cdef Py_ssize_t H = h0.shape[2], l
    if L == 0 or len(b) != L:
        raise ValueError(f"packed and b need one entry per layer, got {len(packed)} and {len(b)}")
    _need("h0", h0.shape, 3, L, N, H)
    _need("c0", c0.shape, 3, L, N, H)
    _need("y", y.shape, 3, T, N, H)
    _need("h_n", h_n.shape, 3, L, N, H)
    _need("c_n", c_n.shape, 3, L, N, H)
    for l in range(L):
        p = packed[l]
        if (p.NG, p.U, p.I, p.Kb) != (4, H, I0 if l == 0 else H, H):
            raise ValueError(f"packed[{l}] holds ({4 * p.U}, {p.I} + {p.Kb}) weights, expected "
                             f"({4 * H}, {I0 if l == 0 else H} + {H})")
        _check_entry("b", l, tuple(b[l].shape), (4 * H,))
    if T == 0 or N == 0 or H == 0:
        h_n[...] = h0
        c_n[...] = c0
        return
    cdef int code = _bf16_code()
    cdef int nthreads = _config.threads_for(N, H, lstm_fused_max_threads(), step=T == 1)
    work_arr = np.empty(lstm_bf16_work_size(nthreads, N, I0, H), np.float32)
    seq_arr = np.empty(T * N * H if L > 1 else 1, np.float32)
    cdef float[::1] work = work_arr
    cdef float[::1] seq = seq_arr
    cdef const uint32_t **wp = <const uint32_t **>malloc(L * sizeof(uint32_t *))
    cdef const float **bp = <const float **>malloc(L * sizeof(float *))
    cdef const uint32_t[::1] wv
    cdef const float[::1] bv
    try:
        if wp == NULL or bp == NULL:
            raise MemoryError()
        for l in range(L):
            wv = packed[l].words
            bv = b[l]
            wp[l] = &wv[0]
            bp[l] = &bv[0]
        with nogil:
            lstm_bf16_forward(code, nthreads, L, T, N, I0, H, &x[0, 0, 0], wp, bp, &h0[0, 0, 0],
                              &c0[0, 0, 0], &y[0, 0, 0], &seq[0], &h_n[0, 0, 0], &c_n[0, 0, 0],
                              reverse, &work[0])
    finally:
        free(wp)
        free(bp)


def bf16_dense(const float[:, ::1] h, packed):
    """h (N, K) . W^T with W (V, K) packed by bf16_pack(None, W, 1): the (N, V) sums."""
    cdef Py_ssize_t N = h.shape[0], K = h.shape[1], V = packed.U
    if (packed.NG, packed.I, packed.Kb) != (1, 0, K):
        raise ValueError(f"packed holds ({packed.U}, {packed.I} + {packed.Kb}) weights, expected ({V}, {K})")
    z = np.zeros((N, V), np.float32)
    cdef float[:, ::1] zv = z
    cdef const uint32_t[::1] wv = packed.words
    cdef int code = _bf16_code()
    work_arr = np.empty(lstm_bf16_work_size(1, min(N, 4), K, 0), np.float32)
    cdef float[::1] work = work_arr
    if N and V and K:
        with nogil:
            lstm_bf16_dense(code, N, K, V, &wv[0], &h[0, 0], &zv[0, 0], &work[0])
    return z


def amx_ready():
    """Whether the C backward can compute its weight gradients on Intel AMX here (csrc/lstm_amx.h)."""
    return bool(lstm_amx_ready())


def max_threads():
    """Threads the fused kernels may use (OpenMP's count, or FASTLSTM_NUM_THREADS)."""
    return _config.num_threads(lstm_fused_max_threads())


def activations(str path, const float[::1] x):
    """(sigmoid(x), tanh(x)) as the fused kernels of `path` compute them (for tests)."""
    if path not in SUPPORTED_KERNELS or path == "blas":
        raise ValueError(f"path {path!r} has no fused kernels here; expected one of "
                         f"{', '.join(k for k in SUPPORTED_KERNELS if k != 'blas')}")
    cdef Py_ssize_t n = x.shape[0]
    sig = np.empty(n, np.float32)
    th = np.empty(n, np.float32)
    cdef float[::1] s = sig, t = th
    cdef int code = _PATHS[path]
    if n:
        with nogil:
            lstm_fused_activations(code, n, &x[0], &s[0], &t[0])
    return sig, th


_PACK_BUFFERS = threading.local()


cdef float[::1] _aligned_floats(Py_ssize_t n, int slot=0):
    """A 64-byte aligned float32 buffer of n elements for packed weights: the calling
    thread's own (one per slot), kept between calls (a fresh multi-megabyte array would
    cost a page fault per 4 KiB at every call, a fifth of a small batch's forward)."""
    name = "raw" if slot == 0 else f"raw{slot}"
    raw = getattr(_PACK_BUFFERS, name, None)
    if raw is None or raw.shape[0] < n + 16:
        raw = np.empty(n + 16, np.float32)
        setattr(_PACK_BUFFERS, name, raw)
    cdef Py_ssize_t off = ((-raw.ctypes.data) % 64) // 4
    return raw[off:off + n]


def _aligned_new(Py_ssize_t n):
    """A fresh 64-byte aligned float32 array of n elements (the panels a PackedForward keeps)."""
    raw = np.empty(n + 16, np.float32)
    off = ((-raw.ctypes.data) % 64) // 4
    return raw[off:off + n]


class PackedForward:
    """The float32 weights of one (layer, direction) with their forward panels packed
    once for many inference calls (``forward(..., packed=...)``): ``W_ih`` (G, I) and
    ``W_hh`` (G, K), float32 C-contiguous, which the caller must not change after (the
    panels would no longer match; fastlstm.LSTM keeps copies of its own). The layout
    depends on the path and on whether the input projection is fused (Ip), not on the
    threads (each thread packs its panels at the same place), so the panels are made on
    first use for each (path, Ip) and hold for any thread count or split. Thread-safe."""

    def __init__(self, W_ih, W_hh):
        self.W_ih = np.ascontiguousarray(W_ih, np.float32)
        self.W_hh = np.ascontiguousarray(W_hh, np.float32)
        if self.W_ih.ndim != 2 or self.W_hh.ndim != 2 or self.W_ih.shape[0] != self.W_hh.shape[0] \
                or self.W_hh.shape[0] % 4:
            raise ValueError(f"W_ih and W_hh must be (4H, I) and (4H, K), got {self.W_ih.shape} "
                             f"and {self.W_hh.shape}")
        self._panels = {}
        self._lock = threading.Lock()

    def panels(self, int path, Py_ssize_t Ip, bint hh=True):
        """[W_ih (Ip columns) | W_hh] packed for `path` (hh False: W_ih alone, the
        hoisted projection's W_x, with Ip = I)."""
        key = (path, Ip, hh)
        with self._lock:
            out = self._panels.get(key)
            if out is None:
                out = self._panels[key] = self._pack(path, Ip, hh)
            return out

    def _pack(self, int path, Py_ssize_t Ip, bint hh):
        cdef const float[:, ::1] wi = self.W_ih
        cdef const float[:, ::1] wh = self.W_hh
        cdef Py_ssize_t H = wh.shape[0] // 4, R = wh.shape[1] if hh else 0
        arr = _aligned_new(lstm_fused_forward_pack_size(path, Ip, H, R))
        cdef float[::1] out = arr
        cdef const float *a = &wi[0, 0] if Ip and wi.shape[1] else NULL
        cdef const float *w = &wh[0, 0] if R and wh.shape[1] else NULL
        if out.shape[0]:
            with nogil:
                lstm_fused_pack_forward(path, Ip, H, R, a, w, &out[0])
        return arr


cdef int _blas_share() except -1:
    """The BLAS thread count for a BLAS-path loop on this thread: its share while
    the directions run side by side (_config.thread_share), else 0 (BLAS's own)."""
    share = _config.thread_share_now()
    return share if share is not None and _BLAS.set_threads_local != NULL else 0


def _with_blas_share(fn, *args, **kwargs):
    """fn(*args, **kwargs) with this thread's BLAS calls on its share of the threads."""
    cdef int share = _blas_share(), saved = 0
    if share:
        saved = _BLAS.set_threads_local(share)
    try:
        return fn(*args, **kwargs)
    finally:
        if share and saved > 0:
            _BLAS.set_threads_local(saved)


cdef int _fused_path(floating dtype_tag):
    """The fused path of this call, or LSTM_PATH_BLAS (float64 always runs there)."""
    if floating is double:
        path = LSTM_PATH_BLAS
    else:
        path = _PATHS[kernel_path()]
    return path


cdef _check(str name, tuple got, tuple want):
    # Memory safety only (the public API has already validated): a wrong shape
    # here would make the C code read or write out of bounds.
    if got != want:
        raise ValueError(f"{name} has shape {got}, expected {want}")


cdef _check_all(tuple expected):
    # _check for each (name, array, shape) of expected
    for name, a, want in expected:
        _check(name, _shape(a), want)


cdef inline int _need(str name, const Py_ssize_t *shape, int ndim, Py_ssize_t d0,
                      Py_ssize_t d1=0, Py_ssize_t d2=0) except -1:
    # _check on a typed memoryview's extents, in C: no Python object is made unless
    # it raises (a small call checks a dozen arrays; as tuples that cost microseconds)
    cdef Py_ssize_t want[3]
    want[0], want[1], want[2] = d0, d1, d2
    cdef int i
    for i in range(ndim):
        if shape[i] != want[i]:
            _check(name, tuple([shape[j] for j in range(ndim)]), tuple([want[j] for j in range(ndim)]))
    return 0


cdef _check_entry(str name, Py_ssize_t l, tuple got, tuple want):
    # _check for entry l of a list of per-layer arrays (its name made only on failure)
    if got != want:
        _check(f"{name}[{l}]", got, want)


def _shape(a):
    return tuple(a.shape[:a.ndim])


cdef tuple _forward_setup(int path, const floating[:, ::1] W_ih, const floating[:, ::1] W_hh,
                          Py_ssize_t N, Py_ssize_t H, Py_ssize_t rows, prepacked=None):
    """(buffer for the packed weights, buffer for W_ih packed for a hoisted projection
    on the fused kernels or None, Ip, threads, by_rows) of a fused forward over rows
    rows (the fuse, projection, thread and split rules of _config; the threads of the
    loop pack the weights there); (None, None, 0, 1, 0) on the BLAS path. W_hh has
    K = H columns, or P with a projection. prepacked (a PackedForward of these
    weights, or None): both buffers are its panels, packed already (the same rules
    choose which, so the loop runs as it would have on panels it packed itself)."""
    cdef Py_ssize_t I = W_ih.shape[1], K = W_hh.shape[1], Ip = 0
    if path == LSTM_PATH_BLAS:
        return None, None, 0, 1, 0
    nthreads = _config.threads_for(N, H, lstm_fused_max_threads())
    if I > 0 and _config.fuse_input(I, H, N, nthreads, _PANEL_ROW_BYTES, K):
        Ip = I
    if N == 1:
        lstm_fused_set_one_row_ahead(_config.one_row_ahead())
    lstm_fused_set_amx_input_rows(_config.amx_input_rows(I, H))
    n = lstm_fused_forward_pack_size(path, Ip, H, K)
    lstm_fused_set_stream_gates(_config.stream_gates_bytes(4 * n // max(1, nthreads)))
    packed = prepacked.panels(path, Ip) if prepacked is not None else _aligned_floats(n)
    by_rows = _config.split_by_rows(4 * n, nthreads)
    packed_x = None
    if Ip == 0 and _config.project_in_kernel(rows, I):
        packed_x = prepacked.panels(path, I, False) if prepacked is not None else \
            _aligned_floats(lstm_fused_forward_pack_size(path, I, H, 0), 1)
    return packed, packed_x, Ip, nthreads, by_rows


cdef tuple _backward_setup(int path, const floating[:, ::1] W_hh, Py_ssize_t N, Py_ssize_t H,
                           Py_ssize_t rows, Py_ssize_t I, Py_ssize_t P):
    """(packed W_hh, threads, by_rows, workspace) of a fused backward (the float32
    workspace in this thread's scratch buffer); (None, 1, 0, None) on the BLAS path."""
    cdef Py_ssize_t K = W_hh.shape[1]
    cdef float[::1] packed
    if path == LSTM_PATH_BLAS:
        return None, 1, 0, None
    nthreads = _config.threads_for(N, H, lstm_fused_max_threads())
    lstm_fused_set_amx_rows(_config.amx_rows())
    packed = _aligned_floats(lstm_fused_backward_pack_size(path, H, K))
    by_rows = _config.split_by_rows(4 * packed.shape[0], nthreads)
    work = None
    if floating is float:
        with nogil:
            lstm_fused_pack_backward(path, H, K, &W_hh[0, 0], &packed[0])
        work = scratch("backward", (lstm_fused_backward_work_size(nthreads, N, rows, I, H, P),),
                       np.float32)
    return packed, nthreads, by_rows, work


cdef Py_ssize_t _row_stride(const Py_ssize_t *shape, const Py_ssize_t *strides, int ndim,
                            Py_ssize_t item, Py_ssize_t width) except -1:
    # The stride in elements between the rows of `width` contiguous values of an array
    # [T, N, width] (ndim 3) or [rows, width]: width when C-contiguous, more when its rows
    # lie evenly spaced (one direction's half of a bidirectional output: 2 * width);
    # ValueError for any other layout.
    cdef Py_ssize_t row, size = 1, i
    for i in range(ndim):
        size *= shape[i]
    if size == 0:
        return width
    row = strides[ndim - 2] if ndim == 2 or shape[1] > 1 else strides[0]
    if strides[ndim - 1] != item or row % item or row < width * item \
            or (ndim == 3 and shape[1] > 1 and shape[0] > 1 and strides[0] != shape[1] * strides[1]):
        raise ValueError(f"y's rows must be {width} contiguous values, evenly spaced; got strides "
                         f"{tuple([strides[i] for i in range(ndim)])}")
    return row // item


def _strided_rows(y, width):
    """_row_stride of the NumPy array y [T, N, width] or [rows, width]."""
    cdef Py_ssize_t shape[3]
    cdef Py_ssize_t strides[3]
    cdef int i
    for i in range(y.ndim):
        shape[i], strides[i] = y.shape[i], y.strides[i]
    return _row_stride(shape, strides, y.ndim, y.itemsize, width)


def _forward_plain(const floating[:, :, ::1] x, const floating[:, ::1] h0, const floating[:, ::1] c0,
                   const floating[:, ::1] W_ih, const floating[:, ::1] W_hh, const floating[::1] b,
                   floating[:, :, :] y, floating[:, ::1] hT, floating[:, ::1] cT,
                   floating[:, :, ::1] gates, floating[:, :, ::1] cs, bint keep=True,
                   bint projected=False, prepacked=None, bint rev=False, projected_rows=None):
    # rev: a reverse pass over full lengths in place (the fused float32 loops only). y: C
    # contiguous, or (the fused float32 loops) rows of H contiguous values one stride apart.
    # projected_rows: (table [V, G], ids [T * N] int64 in [0, V)): with projected, row r of
    # the input projection is table[ids[r]], which the fused float32 loops read from the
    # table (lstm_rows_place.ids) and the other paths gather into gates first
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t ldy = _row_stride(y.shape, y.strides, 3, sizeof(floating), H)
    if projected and I != 0:
        raise ValueError(f"with projected gates x must be (T, N, 0), got I = {I}")
    cdef lstm_rows_place where
    cdef lstm_rows_place *wp = NULL
    cdef const int64_t[::1] row_ids
    cdef const float[:, ::1] row_table
    if projected_rows is not None:
        table, ids = projected_rows
        table = np.ascontiguousarray(table)
        if not projected:
            raise ValueError("projected_rows needs projected")
        if table.ndim != 2 or table.shape[1] != G or table.dtype != np.asarray(gates).dtype:
            raise ValueError(f"projected_rows: the table must be (V, {G}) of the gates' dtype, "
                             f"got {table.shape} {table.dtype}")
        ids = _table_ids("projected_rows", ids, table.shape[0], T * N)
    _need("h0", h0.shape, 2, N, H)
    _need("c0", c0.shape, 2, N, H)
    _need("W_ih", W_ih.shape, 2, G, I)
    _need("W_hh", W_hh.shape, 2, G, H)
    _need("b", b.shape, 1, G)
    _need("y", y.shape, 3, T, N, H)
    _need("hT", hT.shape, 2, N, H)
    _need("cT", cT.shape, 2, N, H)
    _need("gates", gates.shape, 3, T, N, G)
    _need("cs", cs.shape, 3, T, N, H)
    if N == 0 or H == 0:
        return
    if T == 0:
        hT[:, :] = h0
        cT[:, :] = c0
        return
    cdef int path = _fused_path(<floating>0), nthreads, by_rows
    if rev and (floating is double or path == LSTM_PATH_BLAS):
        raise ValueError("a reverse pass in place runs on the fused float32 loops only")
    if ldy != H and (floating is double or path == LSTM_PATH_BLAS):
        raise ValueError("a y of strided rows runs on the fused float32 loops only")
    if projected_rows is not None:
        if floating is float and path != LSTM_PATH_BLAS:
            row_table = table
            row_ids = ids
            where.x = NULL
            where.y = NULL
            where.perm = NULL
            where.ids = &row_ids[0]
            where.table = &row_table[0, 0]
            wp = &where
        else:  # the BLAS loops read gates: gather them first
            move_rows(ids, table, np.asarray(gates).reshape(T * N, G))
    cdef Py_ssize_t last = 0 if rev else T - 1, n
    cdef Py_ssize_t last_c = last  # the time of cT's rows in cs
    cdef Py_ssize_t Ip
    cdef float[::1] packed
    cdef float[::1] packed_x
    cdef float *pxp = NULL
    # projected: NULL x tells the loops that gates hold the input projection already
    cdef const floating *xp = NULL
    if not projected:
        xp = &x[0, 0, 0]
    weights, weights_x, Ip, nthreads, by_rows = _forward_setup(path, W_ih, W_hh, N, H,
                                                               0 if projected else T * N, prepacked)
    # Prepacked: NULL W_hh (and W_ih where the projection reads W_x) tells the loop its
    # panels are packed already.
    cdef const floating *wih = &W_ih[0, 0]
    cdef const floating *whh = &W_hh[0, 0]
    if weights is not None:
        packed = weights
        if prepacked is not None:
            whh = NULL
    if weights_x is not None:
        packed_x = weights_x
        pxp = &packed_x[0]
        if prepacked is not None:
            wih = NULL
    with nogil:
        if floating is double:
            lstm_blas_forward_f64(&_BLAS, T, N, NULL, I, H, 0, xp, &W_ih[0, 0],
                                  &W_hh[0, 0], NULL, &b[0], &h0[0, 0], &c0[0, 0], &gates[0, 0, 0],
                                  &y[0, 0, 0], &cs[0, 0, 0], NULL)
        elif path == LSTM_PATH_BLAS:
            lstm_blas_forward_f32(&_BLAS, T, N, NULL, I, H, 0, xp, &W_ih[0, 0],
                                  &W_hh[0, 0], NULL, &b[0], &h0[0, 0], &c0[0, 0], &gates[0, 0, 0],
                                  &y[0, 0, 0], &cs[0, 0, 0], NULL)
        else:
            # Without keep (inference) the fused kernels store no activated gates, and
            # c_t only in a ring of two steps' rows (LSTM_KEEP_RING): the last step's are
            # rows N.. of cs where it is odd, else 0..
            lstm_fused_forward(&_BLAS, path, nthreads, by_rows, T, N, NULL, I, Ip, H, 0,
                               xp, wih, &b[0], whh, &packed[0], pxp, NULL, &h0[0, 0],
                               &c0[0, 0], &gates[0, 0, 0], keep if keep else LSTM_KEEP_RING,
                               &y[0, 0, 0], &cs[0, 0, 0], NULL, rev, wp, ldy)
            if not keep:
                last_c = (T - 1) % 2
        for n in range(N):
            memcpy(&hT[n, 0], &y[last, n, 0], H * sizeof(floating))
        memcpy(&cT[0, 0], &cs[last_c, 0, 0], N * H * sizeof(floating))


def _backward_plain(const floating[:, :, ::1] x, const floating[:, ::1] h0, const floating[:, ::1] c0,
                    const floating[:, ::1] W_ih, const floating[:, ::1] W_hh,
                    const floating[:, :, ::1] y, floating[:, :, ::1] gates, const floating[:, :, ::1] cs,
                    const floating[:, :, ::1] dy, const floating[:, ::1] dhT, const floating[:, ::1] dcT,
                    floating[:, :, ::1] dx, floating[:, ::1] dh0, floating[:, ::1] dc0,
                    floating[:, ::1] dW_ih, floating[:, ::1] dW_hh, floating[::1] db,
                    bint rev=False, projected_rows_grad=None):
    # projected_rows_grad: (ids [T * N] int64 in [0, V), dtab [V, G]) after a forward on
    # projected_rows: dtab += dP's rows added up by id (the table's gradient), by the fused
    # float32 loops as they sum the weight gradients, else by scatter_add_rows after them
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef Py_ssize_t G = 4 * H
    cdef const int64_t[::1] tab_ids
    cdef float[:, ::1] tab_grad
    cdef const int64_t *idp = NULL
    cdef float *dtp = NULL
    cdef Py_ssize_t V = 0
    if projected_rows_grad is not None:
        ids, dtab = projected_rows_grad
        if type(dtab) is not np.ndarray or dtab.ndim != 2 or dtab.shape[1] != G or \
                dtab.dtype != np.asarray(gates).dtype or not dtab.flags.c_contiguous:
            raise ValueError(f"projected_rows_grad: the table's gradient must be a C-contiguous "
                             f"(V, {G}) array of the gates' dtype")
        ids = _table_ids("projected_rows_grad", ids, dtab.shape[0], T * N)
    _need("h0", h0.shape, 2, N, H)
    _need("c0", c0.shape, 2, N, H)
    _need("W_ih", W_ih.shape, 2, G, I)
    _need("W_hh", W_hh.shape, 2, G, H)
    _need("y", y.shape, 3, T, N, H)
    _need("gates", gates.shape, 3, T, N, G)
    _need("cs", cs.shape, 3, T, N, H)
    _need("dy", dy.shape, 3, T, N, H)
    _need("dhT", dhT.shape, 2, N, H)
    _need("dcT", dcT.shape, 2, N, H)
    _need("dx", dx.shape, 3, T, N, I)
    _need("dh0", dh0.shape, 2, N, H)
    _need("dc0", dc0.shape, 2, N, H)
    _need("dW_ih", dW_ih.shape, 2, G, I)
    _need("dW_hh", dW_hh.shape, 2, G, H)
    _need("db", db.shape, 1, G)
    if N == 0 or H == 0:
        if T * N * I > 0:
            dx[:, :, :] = 0
        return
    # dh0 and dc0 carry the running gradients through the loop (dh_T, dc_T in).
    dh0[:, :] = dhT
    dc0[:, :] = dcT
    if T == 0:
        return
    cdef int path = _fused_path(<floating>0), nthreads, by_rows
    if rev and (floating is double or path == LSTM_PATH_BLAS):
        raise ValueError("a reverse pass in place runs on the fused float32 loops only")
    cdef bint fused_rows = projected_rows_grad is not None and floating is float and \
        path != LSTM_PATH_BLAS and not rev
    if fused_rows and T * N:
        tab_ids = ids
        tab_grad = dtab
        idp = &tab_ids[0]
        dtp = &tab_grad[0, 0]
        V = dtab.shape[0]
    cdef float[::1] packed, work
    weights, nthreads, by_rows, workspace = _backward_setup(path, W_hh, N, H, T * N, I, 0)
    if weights is not None:
        packed = weights
        work = workspace
    with nogil:
        if floating is double:
            lstm_blas_backward_f64(&_BLAS, T, N, NULL, I, H, 0, &x[0, 0, 0], &W_ih[0, 0],
                                   &W_hh[0, 0], NULL, &h0[0, 0], &c0[0, 0], &y[0, 0, 0], NULL,
                                   &cs[0, 0, 0], NULL, &gates[0, 0, 0], &dy[0, 0, 0], &dh0[0, 0],
                                   &dc0[0, 0], &dx[0, 0, 0], &dW_ih[0, 0], &dW_hh[0, 0], NULL,
                                   &db[0], NULL)
        elif path == LSTM_PATH_BLAS:
            lstm_blas_backward_f32(&_BLAS, T, N, NULL, I, H, 0, &x[0, 0, 0], &W_ih[0, 0],
                                   &W_hh[0, 0], NULL, &h0[0, 0], &c0[0, 0], &y[0, 0, 0], NULL,
                                   &cs[0, 0, 0], NULL, &gates[0, 0, 0], &dy[0, 0, 0], &dh0[0, 0],
                                   &dc0[0, 0], &dx[0, 0, 0], &dW_ih[0, 0], &dW_hh[0, 0], NULL,
                                   &db[0], NULL)
        else:
            lstm_fused_backward(&_BLAS, path, nthreads, by_rows, T, N, NULL, I, H, 0, &x[0, 0, 0],
                                &W_ih[0, 0], &packed[0], NULL, &h0[0, 0], &c0[0, 0], &y[0, 0, 0],
                                NULL, &cs[0, 0, 0], NULL, &gates[0, 0, 0], &dy[0, 0, 0],
                                &dh0[0, 0], &dc0[0, 0], &dx[0, 0, 0], &dW_ih[0, 0], &dW_hh[0, 0],
                                NULL, &db[0], &work[0] if work.shape[0] else NULL, rev, idp, V,
                                dtp)
    if projected_rows_grad is not None and not fused_rows:
        scatter_add_rows(ids, np.asarray(gates).reshape(T * N, G), dtab)


cdef _check_batch(const Py_ssize_t[::1] batch, Py_ssize_t T, Py_ssize_t N, Py_ssize_t rows):
    # Memory safety for the packed loops: T steps of 1..N rows, non-increasing, rows in all.
    cdef Py_ssize_t t, total = 0
    if batch.shape[0] == 0:
        if T * N != rows:
            raise ValueError(f"{rows} packed rows, expected T*N = {T * N}")
        return
    if batch.shape[0] != T:
        raise ValueError(f"batch has {batch.shape[0]} steps, expected {T}")
    for t in range(T):
        if batch[t] < 1 or batch[t] > (batch[t - 1] if t else N):
            raise ValueError(f"batch[{t}] = {batch[t]} is not in [1, {batch[t - 1] if t else N}]")
        total += batch[t]
    if total != rows:
        raise ValueError(f"batch sums to {total}, expected {rows} packed rows")


cdef _table_ids(str name, ids, Py_ssize_t V, Py_ssize_t rows):
    """ids as a C-contiguous int64 [rows] array of rows of a V-row table (projected_rows and
    projected_rows_grad), else a ValueError that names ``name``."""
    ids = np.ascontiguousarray(ids, np.int64).reshape(-1)
    if len(ids) != rows:
        raise ValueError(f"{name}: {len(ids)} ids for {rows} rows")
    if len(ids) and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"{name}: ids must lie in [0, {V}), got [{ids.min()}, {ids.max()}]")
    return ids


cdef _check_indices(str name, const Py_ssize_t[::1] a, Py_ssize_t n):
    # ValueError unless every a[r] lies in [0, n)
    cdef Py_ssize_t r, lo = 0, hi = -1
    for r in range(a.shape[0]):
        lo = min(lo, a[r])
        hi = max(hi, a[r])
    if a.shape[0] and (lo < 0 or hi >= n):
        raise ValueError(f"{name} must lie in [0, {n}), got [{lo}, {hi}]")


cdef _check_place(place, perm, const Py_ssize_t[::1] batch, Py_ssize_t T, Py_ssize_t N,
                  Py_ssize_t x_rows, Py_ssize_t y_rows, Py_ssize_t P):
    # Memory safety for placed rows: every place a row of x and y, every perm a batch row,
    # and room in y for the zeros of every step.
    cdef const Py_ssize_t[::1] pm = perm
    if P:
        raise ValueError("placed rows run without a projection")
    if batch.shape[0] == 0:
        raise ValueError("placed rows need the batch of each step")
    if pm.shape[0] != N:
        raise ValueError(f"perm has {pm.shape[0]} rows, expected N = {N}")
    if x_rows != y_rows or y_rows < T * N:
        raise ValueError(f"placed x and y must have the same T_pad * N >= {T * N} rows, "
                         f"got {x_rows} and {y_rows}")
    _check_indices("place", place, y_rows)
    _check_indices("perm", pm, N)


def _forward_packed(const floating[:, ::1] x, const floating[:, ::1] h0, const floating[:, ::1] c0,
                    const floating[:, ::1] W_ih, const floating[:, ::1] W_hh,
                    const floating[:, ::1] W_hr, const floating[::1] b,
                    const Py_ssize_t[::1] batch, floating[:, :] y, floating[:, ::1] gates,
                    floating[:, ::1] cs, floating[:, ::1] ms, int keep, Py_ssize_t T,
                    prepacked=None, place=None, perm=None):
    """The forward loop on packed rows (StepOrder): x [rows, I], y [rows, K],
    gates [rows, G], cs and ms [rows, H]; h0 [N, K], c0 [N, H] sorted; batch
    [T] rows per step, or empty for T*N rows in order. W_hr [P, H] (P = 0:
    none). float32 takes its fused path (with a projection the recurrent product runs
    on P features and the projection is one more product per step), float64 the BLAS
    loop. place [rows] and perm [N] (intp; float32 fused path, a batch, no projection):
    x and y are the padded arrays [T_pad * N, I] and [T_pad * N, K] instead, packed row
    r at their row place[r], and y's rows of ended sequences at times < T are zeroed
    (lstm_rows_place); gates and cs stay packed. With place, y's rows may also lie one
    stride apart rather than K (one direction's half of a bidirectional output). keep:
    0, 1 or (the fused float32 path) LSTM_KEEP_RING: c_t only in a ring of two steps'
    rows of cs (csrc/lstm_fused.h)."""
    cdef Py_ssize_t I = x.shape[1], N = c0.shape[0], H = c0.shape[1]
    cdef Py_ssize_t rows = x.shape[0] if place is None else len(place)
    cdef Py_ssize_t P = W_hr.shape[0], K = P if P else H, G = 4 * H
    _need("h0", h0.shape, 2, N, K)
    _need("W_ih", W_ih.shape, 2, G, I)
    _need("W_hh", W_hh.shape, 2, G, K)
    _need("W_hr", W_hr.shape, 2, P, H)
    _need("b", b.shape, 1, G)
    cdef Py_ssize_t ldy = _row_stride(y.shape, y.strides, 2, sizeof(floating), K)
    if place is None:
        _need("y", y.shape, 2, rows, K)
        if ldy != K:
            raise ValueError("y must be C-contiguous without place")
    else:
        _check_place(place, perm, batch, T, N, x.shape[0], y.shape[0], P)
        _need("y", y.shape, 2, x.shape[0], K)
    _need("gates", gates.shape, 2, rows, G)
    _need("cs", cs.shape, 2, rows, H)
    _need("ms", ms.shape, 2, rows if P else 0, H)
    _check_batch(batch, T, N, rows)
    if rows == 0 or H == 0:
        return
    cdef const Py_ssize_t *bp = &batch[0] if batch.shape[0] else NULL
    cdef const floating *whr = &W_hr[0, 0] if P else NULL
    cdef floating *msp = &ms[0, 0] if P else NULL
    cdef int path = _fused_path(<floating>0), nthreads, by_rows
    if place is not None and (floating is double or path == LSTM_PATH_BLAS):
        raise ValueError("placed rows run on the fused float32 loops only")
    if keep == LSTM_KEEP_RING and (floating is double or path == LSTM_PATH_BLAS):
        raise ValueError("a ring of c_t (LSTM_KEEP_RING) runs on the fused float32 loops only")
    cdef Py_ssize_t Ip
    cdef float[::1] packed
    cdef float[::1] packed_x
    cdef float *pxp = NULL
    weights, weights_x, Ip, nthreads, by_rows = _forward_setup(path, W_ih, W_hh, N, H, rows,
                                                               prepacked)
    cdef lstm_rows_place where
    cdef lstm_rows_place *wp = NULL
    cdef const Py_ssize_t[::1] place_rows
    cdef const Py_ssize_t[::1] perm_rows
    if place is not None:
        place_rows = place
        perm_rows = perm
        where.x = &place_rows[0]
        where.y = &place_rows[0]
        where.perm = &perm_rows[0]
        where.ids = NULL
        where.table = NULL
        wp = &where
        if Ip == 0 and weights_x is None:
            # the BLAS projection reads x packed
            xp = scratch("x", (rows, I), np.float32)
            move_rows(np.asarray(place, np.int64), x, xp)
            x = xp
            where.x = NULL
    cdef const floating *wih = &W_ih[0, 0]
    cdef const floating *whh = &W_hh[0, 0]
    if weights is not None:
        packed = weights
        if prepacked is not None:
            whh = NULL  # the panels are packed already (as in _forward_plain)
    if weights_x is not None:
        packed_x = weights_x
        pxp = &packed_x[0]
        if prepacked is not None:
            wih = NULL
    with nogil:
        if floating is double:
            lstm_blas_forward_f64(&_BLAS, T, N, bp, I, H, P, &x[0, 0], &W_ih[0, 0], &W_hh[0, 0],
                                  whr, &b[0], &h0[0, 0], &c0[0, 0], &gates[0, 0], &y[0, 0],
                                  &cs[0, 0], msp)
        elif path == LSTM_PATH_BLAS:
            lstm_blas_forward_f32(&_BLAS, T, N, bp, I, H, P, &x[0, 0], &W_ih[0, 0], &W_hh[0, 0],
                                  whr, &b[0], &h0[0, 0], &c0[0, 0], &gates[0, 0], &y[0, 0],
                                  &cs[0, 0], msp)
        else:
            lstm_fused_forward(&_BLAS, path, nthreads, by_rows, T, N, bp, I, Ip, H, P, &x[0, 0],
                               wih, &b[0], whh, &packed[0], pxp, whr, &h0[0, 0],
                               &c0[0, 0], &gates[0, 0], keep, &y[0, 0], &cs[0, 0], msp, 0, wp,
                               ldy)


def _backward_packed(const floating[:, ::1] x, const floating[:, ::1] h0,
                     const floating[:, ::1] c0, const floating[:, ::1] W_ih,
                     const floating[:, ::1] W_hh, const floating[:, ::1] W_hr,
                     const floating[:, ::1] y, const floating[:, ::1] h_prev,
                     const floating[:, ::1] cs, const floating[:, ::1] ms,
                     floating[:, ::1] gates, const floating[:, ::1] dy, floating[:, ::1] dh,
                     floating[:, ::1] dc, floating[:, ::1] dx, floating[:, ::1] dW_ih,
                     floating[:, ::1] dW_hh, floating[:, ::1] dW_hr, floating[::1] db,
                     const Py_ssize_t[::1] batch, Py_ssize_t T):
    """The backward loop on packed rows, as _forward_packed; h_prev [rows, K] is the
    h each row read (empty: h0, then y one step behind, for T*N rows in order);
    dh [N, K] and dc [N, H] (sorted) carry dh_T, dc_T in and dh_0, dc_0 out."""
    cdef Py_ssize_t rows = x.shape[0], I = x.shape[1], N = c0.shape[0], H = c0.shape[1]
    cdef Py_ssize_t P = W_hr.shape[0], K = P if P else H, G = 4 * H
    _need("h0", h0.shape, 2, N, K)
    _need("W_ih", W_ih.shape, 2, G, I)
    _need("W_hh", W_hh.shape, 2, G, K)
    _need("y", y.shape, 2, rows, K)
    _need("h_prev", h_prev.shape, 2, rows if h_prev.shape[0] else 0, K)
    _need("cs", cs.shape, 2, rows, H)
    _need("ms", ms.shape, 2, rows if P else 0, H)
    _need("gates", gates.shape, 2, rows, G)
    _need("dy", dy.shape, 2, rows, K)
    _need("dh", dh.shape, 2, N, K)
    _need("dc", dc.shape, 2, N, H)
    _need("dx", dx.shape, 2, rows, I)
    _need("dW_ih", dW_ih.shape, 2, G, I)
    _need("dW_hh", dW_hh.shape, 2, G, K)
    _need("dW_hr", dW_hr.shape, 2, P, H)
    _need("db", db.shape, 1, G)
    _check_batch(batch, T, N, rows)
    if batch.shape[0] and h_prev.shape[0] == 0:
        raise ValueError("packed rows of several lengths need h_prev")
    if rows == 0 or H == 0:
        return
    cdef const Py_ssize_t *bp = &batch[0] if batch.shape[0] else NULL
    cdef const floating *hp = &h_prev[0, 0] if h_prev.shape[0] else NULL
    cdef const floating *whr = &W_hr[0, 0] if P else NULL
    cdef const floating *msp = &ms[0, 0] if P else NULL
    cdef floating *dwhr = &dW_hr[0, 0] if P else NULL
    cdef int path = _fused_path(<floating>0), nthreads, by_rows
    cdef float[::1] packed, fused_work
    weights, nthreads, by_rows, workspace = _backward_setup(path, W_hh, N, H, rows, I, P)
    if weights is not None:
        packed = weights
        fused_work = workspace
    # the BLAS loops' workspace (with a projection)
    cdef floating[::1] work = np.empty(rows * P + N * H if P and weights is None else 1,
                                       np.float32 if floating is float else np.float64)
    with nogil:
        if floating is double:
            lstm_blas_backward_f64(&_BLAS, T, N, bp, I, H, P, &x[0, 0], &W_ih[0, 0], &W_hh[0, 0],
                                   whr, &h0[0, 0], &c0[0, 0], &y[0, 0], hp, &cs[0, 0], msp,
                                   &gates[0, 0], &dy[0, 0], &dh[0, 0], &dc[0, 0], &dx[0, 0],
                                   &dW_ih[0, 0], &dW_hh[0, 0], dwhr, &db[0], &work[0])
        elif path == LSTM_PATH_BLAS:
            lstm_blas_backward_f32(&_BLAS, T, N, bp, I, H, P, &x[0, 0], &W_ih[0, 0], &W_hh[0, 0],
                                   whr, &h0[0, 0], &c0[0, 0], &y[0, 0], hp, &cs[0, 0], msp,
                                   &gates[0, 0], &dy[0, 0], &dh[0, 0], &dc[0, 0], &dx[0, 0],
                                   &dW_ih[0, 0], &dW_hh[0, 0], dwhr, &db[0], &work[0])
        else:
            lstm_fused_backward(&_BLAS, path, nthreads, by_rows, T, N, bp, I, H, P, &x[0, 0],
                                &W_ih[0, 0], &packed[0], whr, &h0[0, 0], &c0[0, 0], &y[0, 0], hp,
                                &cs[0, 0], msp, &gates[0, 0], &dy[0, 0], &dh[0, 0], &dc[0, 0],
                                &dx[0, 0], &dW_ih[0, 0], &dW_hh[0, 0], dwhr, &db[0],
                                &fused_work[0] if fused_work.shape[0] else NULL, 0, NULL, 0, NULL)


def _rows_view(a, rows, width):
    """The first rows x width elements of the C-contiguous array a, as [rows, width]
    (a backend-private packed layout inside the caller's [T, N, width] buffer)."""
    return a.reshape(-1)[:rows * width].reshape(rows, width)


#: forward takes ``packed=`` (a PackedForward of its W_ih and W_hh): the float32 fused
#: loops then read panels packed once instead of packing them at every call.
PACKED_WEIGHTS = True

#: forward's y may be a view whose rows lie one stride apart (a direction's half of a
#: bidirectional layer's output): the fused float32 loops write it in place.
ROW_STRIDED_Y = True


def forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, keep=True, *, lengths=None,
            reverse=False, W_hr=None, ms=None, projected=False, packed=None, projected_rows=None):
    """The backend contract's forward (fastlstm/backends/reference.py). With lengths,
    reverse or W_hr the rows go through a StepOrder: packed in step order for the C
    loops, and y and the final state back in place; gates, cs and ms then hold the
    packed layout (what backward reads back). projected: the plain loop only.
    packed: None, or a PackedForward holding these very W_ih and W_hh arrays (ignored
    by float64 and the BLAS path, which pack nothing of their own). y may be a view
    whose rows of K values lie one stride apart (``ROW_STRIDED_Y``): the fused float32
    loops without a projection write it in place, the others through a copy."""
    if packed is not None and (packed.W_ih is not W_ih or packed.W_hh is not W_hh):
        raise ValueError("packed must be a PackedForward of this call's W_ih and W_hh arrays")
    if _config.thread_share_now() is not None:
        return _with_blas_share(_forward, x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, keep,
                                lengths, reverse, W_hr, ms, projected, packed, projected_rows)
    return _forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, keep, lengths, reverse, W_hr, ms,
                    projected, packed, projected_rows)


def _reverse_in_place(x, lengths, reverse, W_hr):
    """Whether a reverse pass runs on the [T, N] arrays as they are (the fused float32
    loops run time backwards): full lengths, no projection; else a StepOrder copies."""
    if not reverse or W_hr is not None or x.dtype != np.float32 or _fused_path(<float>0) == LSTM_PATH_BLAS:
        return False
    return lengths is None or bool(np.all(np.asarray(lengths) == x.shape[0]))


def _placed_plan(const Py_ssize_t[::1] lens, Py_ssize_t T, bint reverse):
    """StepOrder's arrays for the placed forward (x and y read and written where they lie in
    the padded batch), in one pass: perm [N] (the rows by length, longest first, ties in
    batch order), batch [steps] (rows of each step), placed [rows] (each packed row's row of
    the padded batch as [T * N, F]: t * N + n, t = s or, reverse, len - 1 - s), last [N]
    (sorted row i's packed row at its last step, -1 for a length of 0), ring_last [N] (its
    row of c_t in an inference forward's ring, LSTM_KEEP_RING: (last step odd ? batch[0]
    : 0) + i, or -1), steps and rows. lens: N values in [0, T] (checked by the caller)."""
    cdef Py_ssize_t N = lens.shape[0], i, s, off, steps, rows = 0
    perm_a = np.argsort(-np.asarray(lens), kind="stable").astype(np.intp, copy=False)
    cdef const Py_ssize_t[::1] perm = perm_a
    cdef Py_ssize_t[::1] sl = np.empty(N, np.intp)
    for i in range(N):
        sl[i] = lens[perm[i]]
    steps = sl[0] if N else 0
    batch_a = np.empty(steps, np.intp)
    cdef Py_ssize_t[::1] batch = batch_a
    i = N
    for s in range(steps):  # rows longer than s: a prefix of the sorted rows
        while i > 0 and sl[i - 1] <= s:
            i -= 1
        batch[s] = i
        rows += i
    placed_a = np.empty(rows, np.intp)
    last_a = np.full(N, -1, np.intp)
    ring_a = np.full(N, -1, np.intp)
    cdef Py_ssize_t[::1] placed = placed_a
    cdef Py_ssize_t[::1] last = last_a
    cdef Py_ssize_t[::1] ring_last = ring_a
    off = 0
    for s in range(steps):
        for i in range(batch[s]):
            placed[off + i] = ((sl[i] - 1 - s) if reverse else s) * N + perm[i]
            if s == sl[i] - 1:
                last[i] = off + i
                ring_last[i] = (s % 2) * batch[0] + i
        off += batch[s]
    return perm_a, batch_a, placed_a, last_a, ring_a, steps, rows


def _final_rows(const float[:, :] src, rows_of, const Py_ssize_t[::1] last,
                const Py_ssize_t[::1] perm, const float[:, :] initial, float[:, :] out):
    """out[perm[i]] = sorted row i's state at its last step: src[last[i]] (or, with rows_of,
    src[rows_of[last[i]]]), or initial[perm[i]] for a length of 0 (last[i] = -1)."""
    cdef Py_ssize_t N = perm.shape[0], F = out.shape[1], i, j, r, n
    cdef const Py_ssize_t[::1] where
    cdef bint mapped = rows_of is not None
    if mapped:
        where = rows_of
    for i in range(N):
        n = perm[i]
        r = last[i]
        if r >= 0 and mapped:
            r = where[r]
        for j in range(F):
            out[n, j] = src[r, j] if r >= 0 else initial[n, j]


def _forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, keep, lengths, reverse, W_hr, ms,
             projected=False, packed=None, projected_rows=None):
    ldy = None  # y's row stride where it is not C-contiguous
    if not y.flags.c_contiguous:
        in_place = (y.dtype == np.float32 and W_hr is None and not projected
                    and _fused_path(<float>0) != LSTM_PATH_BLAS)
        if in_place:
            ldy = _strided_rows(y, y.shape[2])  # (raises for an uneven layout)
            if lengths is not None and not reverse and bool(np.all(np.asarray(lengths) == x.shape[0])):
                lengths = None  # every row runs all T steps: the plain loop
        else:
            tmp = np.empty(y.shape, y.dtype)
            _forward(x, h0, c0, W_ih, W_hh, b, tmp, hT, cT, gates, cs, keep, lengths, reverse, W_hr,
                     ms, projected, packed, projected_rows)
            y[...] = tmp
            return
    if lengths is None and not reverse and W_hr is None:
        _forward_plain(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, keep, projected, packed,
                       projected_rows=projected_rows)
        return
    if projected_rows is not None:
        raise NotImplementedError("projected_rows runs without lengths, reverse or a projection")
    if not projected and _reverse_in_place(x, lengths, reverse, W_hr):
        _forward_plain(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, keep, False, packed, True)
        return
    if projected:
        raise NotImplementedError("projected gates run without lengths, reverse or a projection")
    T, N = x.shape[:2]
    H, K = cs.shape[2], W_hh.shape[1]
    P = 0 if W_hr is None else W_hr.shape[0]
    dt = x.dtype
    want = [("y", y, (T, N, K)), ("hT", hT, (N, K)), ("cT", cT, (N, H)), ("gates", gates, (T, N, 4 * H)),
            ("cs", cs, (T, N, H))]
    if P:
        want.append(("ms", ms, (T, N, H)))
    _check_all(tuple(want))
    lens = np.full(N, T, np.intp) if lengths is None else np.ascontiguousarray(lengths, np.intp)
    if lens.shape != (N,) or (N and (lens.min() < 0 or lens.max() > T)):
        raise ValueError(f"lengths must be {N} values in [0, T] = [0, {T}], got shape {lens.shape}"
                         + (f" and values from {lens.min()} to {lens.max()}" if lens.size else ""))
    if not P and dt == np.float32 and _fused_path(<float>0) != LSTM_PATH_BLAS \
            and (reverse or (N and lens.min() < T)):
        # the loop reads x and writes y where they are (no copies in or out)
        perm, batch, placed, last, ring_last, steps, rows = _placed_plan(lens, T, reverse)
        if rows == 0 or H == 0:
            y[...] = 0
            hT[...] = h0
            cT[...] = c0
            return
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        # y as [T * N, K] rows (a view: C-contiguous, or rows evenly spaced)
        y2 = y.reshape(T * N, K) if ldy is None else np.lib.stride_tricks.as_strided(
            y, (T * N, K), (y.strides[2] * ldy, y.strides[2]))
        cp = _rows_view(cs, rows, H)
        # inference: c_t in a ring of two steps' rows (LSTM_KEEP_RING), each row's last at
        # ring_last
        _forward_packed(x.reshape(T * N, x.shape[2]), h0[perm], c0[perm], W_ih,
                        W_hh, np.empty((0, H), dt), b, batch, y2,
                        _rows_view(gates, rows, 4 * H), cp, np.empty((0, H), dt),
                        keep if keep else LSTM_KEEP_RING, steps, packed, placed, perm)
        y[steps:] = 0
        _final_rows(y2, placed, last, perm, h0, hT)
        _final_rows(cp, None, last if keep else ring_last, perm, c0, cT)
        return
    order = StepOrder(lengths, T, N, reverse, move_rows)
    if order.rows == 0 or H == 0:
        y[...] = 0
        hT[...] = h0
        cT[...] = c0
        return
    rows = order.rows
    # the packed copies live in this thread's scratch buffers (fresh ones cost page faults)
    yp = _rows_view(y, rows, K) if order.identity else scratch("y", (rows, K), dt)
    cp = _rows_view(cs, rows, H)
    _forward_packed(order.packed(x, "x"), order.sorted(h0), order.sorted(c0), W_ih, W_hh,
                    W_hr if P else np.empty((0, H), dt), b,
                    order.batch if not order.identity else _NO_BATCH, yp,
                    _rows_view(gates, rows, 4 * H), cp,
                    _rows_view(ms, rows, H) if P else np.empty((0, H), dt), keep, order.steps,
                    packed)
    order.unpack(yp, y)
    order.final(yp, h0, hT)
    order.final(cp, c0, cT)


def backward(x, h0, c0, W_ih, W_hh, y, gates, cs, dy, dhT, dcT, dx, dh0, dc0, dW_ih, dW_hh, db,
             *, lengths=None, reverse=False, W_hr=None, ms=None, dW_hr=None,
             projected_rows_grad=None):
    """The backend contract's backward, after forward with the same options.
    projected_rows_grad: (ids, dtab) after a forward with projected_rows (their ids):
    dtab [V, G] += the rows of dP added up by id, the table's gradient."""
    if _config.thread_share_now() is not None:
        return _with_blas_share(_backward, x, h0, c0, W_ih, W_hh, y, gates, cs, dy, dhT, dcT, dx,
                                dh0, dc0, dW_ih, dW_hh, db, lengths, reverse, W_hr, ms, dW_hr,
                                projected_rows_grad)
    return _backward(x, h0, c0, W_ih, W_hh, y, gates, cs, dy, dhT, dcT, dx, dh0, dc0, dW_ih, dW_hh,
                     db, lengths, reverse, W_hr, ms, dW_hr, projected_rows_grad)


def _backward(x, h0, c0, W_ih, W_hh, y, gates, cs, dy, dhT, dcT, dx, dh0, dc0, dW_ih, dW_hh, db,
              lengths, reverse, W_hr, ms, dW_hr, projected_rows_grad=None):
    if not y.flags.c_contiguous:  # (a forward's strided y: the loops read it packed)
        y = np.ascontiguousarray(y)
    if lengths is None and not reverse and W_hr is None:
        _backward_plain(x, h0, c0, W_ih, W_hh, y, gates, cs, dy, dhT, dcT, dx, dh0, dc0, dW_ih,
                        dW_hh, db, projected_rows_grad=projected_rows_grad)
        return
    if projected_rows_grad is not None:
        raise NotImplementedError("projected_rows_grad runs without lengths, reverse or a projection")
    if _reverse_in_place(x, lengths, reverse, W_hr):
        _backward_plain(x, h0, c0, W_ih, W_hh, y, gates, cs, dy, dhT, dcT, dx, dh0, dc0, dW_ih,
                        dW_hh, db, True)
        return
    T, N, I = x.shape
    H, K = cs.shape[2], W_hh.shape[1]
    P = 0 if W_hr is None else W_hr.shape[0]
    dt = x.dtype
    want = [("y", y, (T, N, K)), ("gates", gates, (T, N, 4 * H)), ("cs", cs, (T, N, H)),
            ("dy", dy, (T, N, K)), ("dhT", dhT, (N, K)), ("dcT", dcT, (N, H)),
            ("dx", dx, (T, N, I)), ("dh0", dh0, (N, K)), ("dc0", dc0, (N, H))]
    if P:
        want += [("ms", ms, (T, N, H)), ("dW_hr", dW_hr, (P, H))]
    _check_all(tuple(want))
    order = StepOrder(lengths, T, N, reverse, move_rows)
    if order.rows == 0 or H == 0:
        dx[...] = 0
        dh0[...] = dhT
        dc0[...] = dcT
        return
    rows = order.rows
    dh = order.sorted(dhT)
    dc = order.sorted(dcT)
    dxp = _rows_view(dx, rows, I) if order.identity else scratch("dx", (rows, I), dt)
    _backward_packed(order.packed(x, "x"), order.sorted(h0), order.sorted(c0), W_ih, W_hh,
                     W_hr if P else np.empty((0, H), dt), _rows_view(y, rows, K) if order.identity
                     else np.empty((rows, K), dt),
                     np.empty((0, K), dt) if order.identity else order.h_prev(h0, y, "h_prev"),
                     _rows_view(cs, rows, H), _rows_view(ms, rows, H) if P else np.empty((0, H), dt),
                     _rows_view(gates, rows, 4 * H), order.packed(dy, "dy"), dh, dc, dxp, dW_ih, dW_hh,
                     dW_hr if P else np.empty((0, H), dt), db,
                     order.batch if not order.identity else _NO_BATCH, order.steps)
    order.unpack(dxp, dx)
    order.unsort(dh, dh0)
    order.unsort(dc, dc0)


def forward_rows(x, h0, c0, W_ih, W_hh, b, batch, y, gates, cs, keep=True, *, W_hr=None,
                 ms=None):
    """The forward loop on rows the caller has packed already (torch's PackedSequence.data):
    x [rows, I], step t's batch[t] rows after step t-1's, sorted longest first (batch
    [T] intp, non-increasing, each >= 1); h0 [N, K] and c0 [N, H] in that sorted order
    (N = batch[0]); y [rows, K], gates [rows, 4H], cs [rows, H] (and ms [rows, H] with
    W_hr [P, H]) OUT in the same layout. The final state is each sequence's row at its
    last step of y and cs (the caller reads it). No StepOrder: nothing is copied."""
    H = c0.shape[1]
    dt = x.dtype
    P = 0 if W_hr is None else W_hr.shape[0]
    args = (x, h0, c0, W_ih, W_hh, W_hr if P else np.empty((0, H), dt), b, batch, y, gates, cs,
            ms if P else np.empty((0, H), dt), keep, batch.shape[0])
    if _config.thread_share_now() is not None:
        return _with_blas_share(_forward_packed, *args)
    _forward_packed(*args)


def backward_rows(x, h0, c0, W_ih, W_hh, y, h_prev, gates, cs, dy, dh, dc, dx, dW_ih, dW_hh, db,
                  batch, *, W_hr=None, ms=None, dW_hr=None):
    """The backward loop after forward_rows, in its layout: h_prev [rows, K] the h each
    row read (h0 at step 0, else y at the previous step); dh [N, K] and dc [N, H]
    (sorted) carry the gradient at each sequence's last step in and dh_0, dc_0 out;
    dx [rows, I] OUT; dW_ih, dW_hh, db (and dW_hr with W_hr) accumulate. gates is
    overwritten."""
    H = c0.shape[1]
    dt = x.dtype
    P = 0 if W_hr is None else W_hr.shape[0]
    none = np.empty((0, H), dt)
    args = (x, h0, c0, W_ih, W_hh, W_hr if P else none, y, h_prev, cs, ms if P else none, gates,
            dy, dh, dc, dx, dW_ih, dW_hh, dW_hr if P else none, db, batch, batch.shape[0])
    if _config.thread_share_now() is not None:
        return _with_blas_share(_backward_packed, *args)
    _backward_packed(*args)


def step(const floating[:, ::1] x_t, const floating[:, ::1] h, const floating[:, ::1] c,
         const floating[:, ::1] W_ih, const floating[:, ::1] W_hh, const floating[::1] b,
         floating[:, ::1] h_out, floating[:, ::1] c_out, floating[:, ::1] gates):
    """One step of one layer, on the BLAS path for both dtypes (see reference.step)."""
    cdef Py_ssize_t N = x_t.shape[0], I = x_t.shape[1], H = h.shape[1], G = 4 * H
    _need("h", h.shape, 2, N, H)
    _need("c", c.shape, 2, N, H)
    _need("W_ih", W_ih.shape, 2, G, I)
    _need("W_hh", W_hh.shape, 2, G, H)
    _need("b", b.shape, 1, G)
    _need("h_out", h_out.shape, 2, N, H)
    _need("c_out", c_out.shape, 2, N, H)
    _need("gates", gates.shape, 2, N, G)
    if N == 0 or H == 0:
        return
    cdef const floating *wi = &W_ih[0, 0] if I > 0 else NULL
    cdef const floating *wh = &W_hh[0, 0]
    cdef const floating *bb = &b[0]
    with nogil:
        if floating is float:
            lstm_blas_step_f32(&_BLAS, 1, N, I, H, &x_t[0, 0], &wi, &wh, &bb, &h[0, 0], &c[0, 0],
                               &gates[0, 0], &h_out[0, 0], &c_out[0, 0])
        else:
            lstm_blas_step_f64(&_BLAS, 1, N, I, H, &x_t[0, 0], &wi, &wh, &bb, &h[0, 0], &c[0, 0],
                               &gates[0, 0], &h_out[0, 0], &c_out[0, 0])


cdef extern from *:
    """
    #ifdef FASTLSTM_OPENMP
    #define FASTLSTM_BUILT_WITH_OPENMP 1
    #else
    #define FASTLSTM_BUILT_WITH_OPENMP 0
    #endif
    """
    int FASTLSTM_BUILT_WITH_OPENMP

#: Whether this extension was compiled with OpenMP.
OPENMP = bool(FASTLSTM_BUILT_WITH_OPENMP)


cdef void _layer_pointers(list W_ih, list W_hh, list b, const floating **ptrs) except *:
    """ptrs [3L] OUT: W_ih[l] (NULL when it has no columns), then W_hh[l], then b[l].
    The lists keep the arrays alive for as long as the pointers are used."""
    cdef Py_ssize_t L = len(W_ih), l
    cdef const floating[:, ::1] w
    cdef const floating[::1] v
    for l in range(L):
        w = W_ih[l]
        ptrs[l] = &w[0, 0] if w.shape[1] > 0 else NULL
        w = W_hh[l]
        ptrs[L + l] = &w[0, 0]
        v = b[l]
        ptrs[2 * L + l] = &v[0]


def step_layers(x_t, h, c, list W_ih, list W_hh, list b, h_out, c_out, gates, *, W_hr=None):
    """One step of an L-layer stack: lists W_ih, W_hh, b of L arrays; h, c,
    h_out, c_out [L, N, H]; gates [N, G] workspace (see reference.step_layers).
    With W_hr (a list of L [P, H] projections), h and h_out are [L, N, P]: each
    layer is one step of the BLAS loop, its projection included."""
    if W_hr is None:
        _step_layers(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates)
        return
    L = len(W_ih)
    if not (len(W_hh) == len(b) == len(W_hr) == L and len(h) == len(c) == len(h_out) == len(c_out) == L):
        raise ValueError("W_ih, W_hh, b, W_hr, h, c, h_out and c_out need one entry per layer")
    ms = np.empty(c.shape[1:], c.dtype)
    for layer in range(L):
        inp = x_t if layer == 0 else h_out[layer - 1]
        _forward_packed(inp, h[layer], c[layer], W_ih[layer], W_hh[layer], W_hr[layer], b[layer],
                        _NO_BATCH, h_out[layer], gates, c_out[layer], ms, False, 1)


def _step_layers(const floating[:, ::1] x_t, const floating[:, :, ::1] h,
                 const floating[:, :, ::1] c, list W_ih, list W_hh, list b,
                 floating[:, :, ::1] h_out, floating[:, :, ::1] c_out, floating[:, ::1] gates):
    cdef Py_ssize_t L = len(W_ih), N = x_t.shape[0], I0 = x_t.shape[1], H = h.shape[2]
    cdef Py_ssize_t G = 4 * H, l
    if len(W_hh) != L or len(b) != L:
        raise ValueError(f"W_ih, W_hh and b must have one entry per layer, got {len(W_ih)}, {len(W_hh)}, {len(b)}")
    _need("h", h.shape, 3, L, N, H)
    _need("c", c.shape, 3, L, N, H)
    _need("h_out", h_out.shape, 3, L, N, H)
    _need("c_out", c_out.shape, 3, L, N, H)
    _need("gates", gates.shape, 2, N, G)
    for l in range(L):
        _check_entry("W_ih", l, tuple(W_ih[l].shape), (G, I0 if l == 0 else H))
        _check_entry("W_hh", l, tuple(W_hh[l].shape), (G, H))
        _check_entry("b", l, tuple(b[l].shape), (G,))
    if L == 0 or N == 0 or H == 0:
        return
    cdef int path = _fused_path(<floating>0), nthreads = 1
    if path != LSTM_PATH_BLAS:
        nthreads = _config.threads_for(N, H, lstm_fused_max_threads(), step=True)
    cdef const floating **ptrs = <const floating **>malloc(3 * L * sizeof(floating *))
    if ptrs == NULL:
        raise MemoryError()
    try:
        _layer_pointers(W_ih, W_hh, b, ptrs)
        with nogil:
            if floating is double:
                lstm_blas_step_f64(&_BLAS, L, N, I0, H, &x_t[0, 0], ptrs, ptrs + L, ptrs + 2 * L,
                                   &h[0, 0, 0], &c[0, 0, 0], &gates[0, 0], &h_out[0, 0, 0],
                                   &c_out[0, 0, 0])
            elif path == LSTM_PATH_BLAS:
                lstm_blas_step_f32(&_BLAS, L, N, I0, H, &x_t[0, 0], ptrs, ptrs + L, ptrs + 2 * L,
                                   &h[0, 0, 0], &c[0, 0, 0], &gates[0, 0], &h_out[0, 0, 0],
                                   &c_out[0, 0, 0])
            else:
                lstm_fused_step(&_BLAS, path, nthreads, L, N, I0, H, &x_t[0, 0], ptrs, ptrs + L,
                                ptrs + 2 * L, &h[0, 0, 0], &c[0, 0, 0], &gates[0, 0],
                                &h_out[0, 0, 0], &c_out[0, 0, 0])
    finally:
        free(ptrs)


cdef extern from "lstm_generate.h" nogil:
    ctypedef struct lstm_gen_model:
        Py_ssize_t L, H, I0, V
        const float **W_ih
        const float **W_hh
        const float **b
        const float *emb
        const float *WT
        const float *bias
        Py_ssize_t top_k
        const float **W_f
        int batch_threads, by_rows
        const uint32_t **W_bf16
        const uint32_t *WT_bf16
        int bf16_path, bf16_threads
    ctypedef struct lstm_gen_row:
        Py_ssize_t L, H, V
        const float *table
        const float **b
        const float **W
        const float *dense
        const uint32_t **W_bf16
        const uint32_t *dense_bf16
        int bf16_path
        const float *bias
        Py_ssize_t top_k
    Py_ssize_t lstm_generate_row_work_size(const lstm_gen_row *m, int nthreads)
    void lstm_generate_row(const lstm_blas *blas, int path, int nthreads, const lstm_gen_row *m,
                           Py_ssize_t n, const float *noise, float *h, float *c, float *work,
                           int *ids)
    Py_ssize_t lstm_generate_work_size(const lstm_gen_model *m, Py_ssize_t N)
    void lstm_generate(const lstm_blas *blas, int path, int nthreads, const lstm_gen_model *m,
                       Py_ssize_t n, Py_ssize_t N, const float *noise, float *h_top, float *h,
                       float *c, float *work, int *ids)


def pack_generate(list W_ih, list W_hh):
    """The layers' [W_ih | W_hh] packed for the fused one-step forward of a batched
    generation (``generate(..., packed=)``): a list of L arrays, or None where the
    float32 kernels have no fused path. Pack again when the weights change."""
    cdef int path = _fused_path(<float>0)
    cdef const float[:, ::1] wi
    cdef const float[:, ::1] wh
    cdef float[::1] out
    cdef Py_ssize_t H, I
    if path == LSTM_PATH_BLAS:
        return None
    packed = []
    for l in range(len(W_ih)):
        wi, wh = W_ih[l], W_hh[l]
        H, I = wh.shape[1], wi.shape[1]
        raw = np.empty(lstm_fused_forward_pack_size(path, I, H, H) + 16, np.float32)
        off = ((-raw.ctypes.data) % 64) // 4
        arr = raw[off:off + raw.shape[0] - 16]
        out = arr
        with nogil:
            lstm_fused_pack_forward(path, I, H, H, &wi[0, 0] if I else NULL, &wh[0, 0], &out[0])
        packed.append((path, arr))
    return packed


def generate(list W_ih, list W_hh, list b, emb, const float[:, ::1] WT, const float[::1] bias,
             Py_ssize_t top_k, noise, float[:, ::1] h_top, float[:, :, ::1] h, float[:, :, ::1] c,
             Py_ssize_t n, packed=None, bf16=None):
    """n characters for each of N samples from the compiled generation loop
    (csrc/lstm_generate.h), float32.

    W_ih, W_hh, b: the L layers (b = b_ih + b_hh); emb: the (V, E) embedding or None
    (input id / V); WT (H, V) and bias (V,): the dense layer times 1 / temperature;
    top_k: 0 for all; noise: (n, N, V) Gumbel noise plus bias, or None (greedy);
    h_top (N, H), h and c (L, N, H): the carried state, moved on in place.
    packed: pack_generate's result for these weights, or None (each step then runs
    without packing: best for one sample).
    bf16: None, or (layers, dense) for bf16 weights (not exact): the L layers' [W_ih | W_hh]
    as bf16_pack(W_ih[l], W_hh[l], 4) and bf16_pack(None, WT.T, 1); the steps and the
    logits then run on them (W_ih, W_hh, WT and packed are checked, not read).
    Returns the (n, N) ids (int32). The GIL is released for the whole chunk."""
    cdef Py_ssize_t L = len(W_ih), N = h.shape[1], H = h.shape[2], V = WT.shape[1], l
    cdef const float[:, ::1] e
    cdef const float[:, :, ::1] nz
    cdef lstm_gen_model m
    if L == 0 or len(W_hh) != L or len(b) != L:
        raise ValueError(f"W_ih, W_hh and b need one entry per layer, got {len(W_ih)}, {len(W_hh)}, {len(b)}")
    I0 = W_ih[0].shape[1]
    _need("WT", WT.shape, 2, H, V)
    _need("bias", bias.shape, 1, V)
    _need("h_top", h_top.shape, 2, N, H)
    _need("h", h.shape, 3, L, N, H)
    _need("c", c.shape, 3, L, N, H)
    for l in range(L):
        _check_entry("W_ih", l, tuple(W_ih[l].shape), (4 * H, I0 if l == 0 else H))
        _check_entry("W_hh", l, tuple(W_hh[l].shape), (4 * H, H))
        _check_entry("b", l, tuple(b[l].shape), (4 * H,))
    if emb is not None:
        e = emb
        _check("emb", _shape(emb), (V, I0))
    elif I0 != 1:
        raise ValueError(f"without an embedding the input is one number per step, got W_ih[0] with {I0} columns")
    if noise is not None:
        nz = noise
        _check("noise", _shape(noise), (n, N, V))
    if not 0 <= top_k:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    ids = np.empty((max(n, 0), N), np.intc)
    cdef int[:, ::1] out = ids
    if n <= 0 or N == 0 or H == 0 or V == 0:
        return ids
    cdef const float **ptrs = <const float **>malloc(3 * L * sizeof(float *))
    if ptrs == NULL:
        raise MemoryError()
    cdef int path = _fused_path(<float>0), nthreads = 1
    if path != LSTM_PATH_BLAS:
        nthreads = _config.threads_for(N, H, lstm_fused_max_threads(), step=True)
    cdef const float **wf = NULL
    cdef const float[::1] wv
    m.W_f, m.batch_threads, m.by_rows = NULL, 1, 0
    m.W_bf16, m.WT_bf16, m.bf16_path, m.bf16_threads = NULL, NULL, 0, 1
    cdef const uint32_t **wb = NULL
    cdef const uint32_t[::1] bw
    if bf16 is not None:
        layers, dense = bf16
        if len(layers) != L or dense.NG != 1 or (dense.U, dense.I, dense.Kb) != (V, 0, H) or any(
                (p.NG, p.U, p.I, p.Kb) != (4, H, I0 if l == 0 else H, H) for l, p in enumerate(layers)):
            free(ptrs)
            raise ValueError("bf16 was packed from weights of other shapes")
        wb = <const uint32_t **>malloc(L * sizeof(uint32_t *))
        if wb == NULL:
            free(ptrs)
            raise MemoryError()
        for l in range(L):
            bw = layers[l].words
            wb[l] = &bw[0]
        bw = dense.words
        m.W_bf16, m.WT_bf16 = wb, &bw[0]
        try:
            m.bf16_path = _bf16_code()
        except ValueError:
            free(ptrs)
            free(wb)
            raise
        m.bf16_threads = _config.threads_for(N, H, lstm_fused_max_threads(), step=True)
    if packed is not None and path != LSTM_PATH_BLAS and N >= 2:
        if len(packed) != L or any(p != path for p, _ in packed):
            raise ValueError("packed was made for other weights or another kernel path: call pack_generate again")
        wf = <const float **>malloc(L * sizeof(float *))
        if wf == NULL:
            free(ptrs)
            raise MemoryError()
        for l in range(L):
            wv = packed[l][1]
            if wv.shape[0] != lstm_fused_forward_pack_size(path, I0 if l == 0 else H, H, H):
                free(ptrs)
                free(wf)
                raise ValueError(f"packed[{l}] does not fit these weights: call pack_generate again")
            wf[l] = &wv[0]
        m.W_f = wf
        m.batch_threads = _config.threads_for(N, H, lstm_fused_max_threads())
        m.by_rows = _config.split_by_rows(4 * sum(a.shape[0] for _, a in packed) // L, m.batch_threads)
    try:
        _layer_pointers(W_ih, W_hh, b, ptrs)
        m.L, m.H, m.I0, m.V = L, H, I0, V
        m.W_ih, m.W_hh, m.b = ptrs, ptrs + L, ptrs + 2 * L
        m.emb = &e[0, 0] if emb is not None else NULL
        m.WT, m.bias, m.top_k = &WT[0, 0], &bias[0], top_k
        work_array = np.empty(lstm_generate_work_size(&m, N), np.float32)
        _run_generate(&m, path, nthreads, n, N, &nz[0, 0, 0] if noise is not None else NULL, h_top,
                      h, c, work_array, out)
    finally:
        free(ptrs)
        free(wf)
        free(wb)
    if (ids < 0).any():
        raise MemoryError("the generation loop ran out of memory for its scratch buffers")
    return ids


class RowPack:
    """One sample's generation weights, packed once (pack_generate_row): layer 0's input
    folded into a (V, 4H) table, every layer's panels, the dense weights."""

    __slots__ = ("L", "H", "V", "path", "bf16", "table", "b", "layers", "dense")

    def __init__(self, L, H, V, path, bf16, table, b, layers, dense):
        self.L, self.H, self.V, self.path, self.bf16 = L, H, V, path, bf16
        self.table, self.b, self.layers, self.dense = table, b, layers, dense


def pack_generate_row(list W_ih, list W_hh, list b, inputs, dense, bint bf16=False):
    """Pack a one-sample generation once (for ``generate_row``): W_ih, W_hh, b (b_ih +
    b_hh) the L layers; inputs (V, I0) layer 0's input for each id (the embedding rows,
    or id / V); dense (V, H) the dense weights times 1 / temperature. bf16: the weights
    rounded to bf16 (not exact). Layer 0's input projection of every id, plus its bias,
    becomes one (V, 4H) table (summed in float64). None where no kernel runs this: the
    BLAS path for float32, no bf16 kernels for bf16."""
    cdef Py_ssize_t L = len(W_ih), l, H, V, Ip
    cdef int path = _fused_path(<float>0)
    cdef const float[:, ::1] wi
    cdef const float[:, ::1] wh
    cdef float[::1] out
    if L == 0 or len(W_hh) != L or len(b) != L:
        raise ValueError(f"W_ih, W_hh and b need one entry per layer, got {len(W_ih)}, {len(W_hh)}, {len(b)}")
    if (path == LSTM_PATH_BLAS and not bf16) or (bf16 and bf16_path() == "none"):
        return None
    H = W_hh[0].shape[1]
    V = dense.shape[0]
    I0 = W_ih[0].shape[1]
    _check("inputs", _shape(inputs), (V, I0))
    _check("dense", _shape(dense), (V, H))
    for l in range(L):
        _check_entry("W_ih", l, tuple(W_ih[l].shape), (4 * H, I0 if l == 0 else H))
        _check_entry("W_hh", l, tuple(W_hh[l].shape), (4 * H, H))
        _check_entry("b", l, tuple(b[l].shape), (4 * H,))
    table = np.ascontiguousarray(
        (np.asarray(inputs, np.float64) @ np.asarray(W_ih[0], np.float64).T
         + np.asarray(b[0], np.float64)).astype(np.float32))
    biases = [np.ascontiguousarray(x, np.float32) for x in b]
    layers = []
    for l in range(L):
        if bf16:
            layers.append(bf16_pack(None if l == 0 else W_ih[l], W_hh[l], 4))
            continue
        wi, wh = W_ih[l], W_hh[l]
        Ip = 0 if l == 0 else H
        arr = _aligned_new(lstm_fused_forward_pack_size(path, Ip, H, H))
        out = arr
        with nogil:
            lstm_fused_pack_forward(path, Ip, H, H, &wi[0, 0] if Ip else NULL, &wh[0, 0], &out[0])
        layers.append(arr)
    if bf16:
        dense_packed = bf16_pack(None, np.ascontiguousarray(dense, np.float32), 1)
    else:
        dense_packed = np.ascontiguousarray(dense, np.float32)
    return RowPack(L, H, V, path, bool(bf16), table, biases, layers, dense_packed)


def generate_row(pack, const float[::1] bias, Py_ssize_t top_k, noise, float[:, ::1] h,
                 float[:, ::1] c, Py_ssize_t n):
    """n characters of one sample on a ``pack_generate_row`` pack (csrc/lstm_generate.h's
    lstm_generate_row): bias (V,) the dense bias times 1 / temperature; top_k 0 for all;
    noise (n, V) Gumbel noise plus bias, or None (greedy); h, c (L, H) the carried state,
    moved on in place (h[L-1] is the top layer's output the first logits read). Returns
    the (n,) ids (int32). The GIL is released for the whole chunk."""
    cdef Py_ssize_t L = pack.L, H = pack.H, V = pack.V, l
    cdef const float[:, ::1] nz
    cdef const float[:, ::1] tab = pack.table
    cdef const float[::1] fv
    cdef const uint32_t[::1] wv
    cdef const float[:, ::1] dn
    cdef lstm_gen_row m
    _need("bias", bias.shape, 1, V)
    _need("h", h.shape, 2, L, H)
    _need("c", c.shape, 2, L, H)
    if noise is not None:
        nz = noise
        _check("noise", _shape(noise), (n, V))
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if pack.path != _fused_path(<float>0) and not pack.bf16:
        raise ValueError("pack was made for another kernel path: call pack_generate_row again")
    ids = np.empty(max(n, 0), np.intc)
    cdef int[::1] out = ids
    if n <= 0 or H == 0 or V == 0:
        return ids
    cdef int nthreads = _config.threads_for(1, H, lstm_fused_max_threads(), step=True)
    cdef const float **fp = <const float **>malloc(2 * L * sizeof(float *))
    cdef const uint32_t **bp = <const uint32_t **>malloc(L * sizeof(uint32_t *))
    try:
        if fp == NULL or bp == NULL:
            raise MemoryError()
        memset(&m, 0, sizeof(m))
        m.L, m.H, m.V, m.top_k = L, H, V, top_k
        m.table, m.bias = &tab[0, 0], &bias[0]
        for l in range(L):
            fv = pack.b[l]
            fp[L + l] = &fv[0]
        m.b = fp + L
        if pack.bf16:
            for l in range(L):
                wv = pack.layers[l].words
                bp[l] = &wv[0]
            wv = pack.dense.words
            m.W_bf16, m.dense_bf16, m.bf16_path = bp, &wv[0], _bf16_code()
        else:
            for l in range(L):
                fv = pack.layers[l]
                fp[l] = &fv[0]
            dn = pack.dense
            m.W, m.dense = fp, &dn[0, 0]
        work_array = np.empty(lstm_generate_row_work_size(&m, nthreads), np.float32)
        _run_generate_row(&m, pack.path, nthreads, n, &nz[0, 0] if noise is not None else NULL,
                          h, c, work_array, out)
    finally:
        free(fp)
        free(bp)
    return ids


cdef void _run_generate_row(const lstm_gen_row *m, int path, int nthreads, Py_ssize_t n,
                            const float *noise, float[:, ::1] h, float[:, ::1] c,
                            float[::1] work, int[::1] ids) except *:
    with nogil:
        lstm_generate_row(&_BLAS, path, nthreads, m, n, noise, &h[0, 0], &c[0, 0], &work[0],
                          &ids[0])


cdef void _run_generate(const lstm_gen_model *m, int path, int nthreads, Py_ssize_t n, Py_ssize_t N,
                        const float *noise, float[:, ::1] h_top, float[:, :, ::1] h,
                        float[:, :, ::1] c, float[::1] work, int[:, ::1] ids) except *:
    with nogil:
        lstm_generate(&_BLAS, path, nthreads, m, n, N, noise, &h_top[0, 0], &h[0, 0, 0],
                      &c[0, 0, 0], &work[0], &ids[0, 0])


def _row_major(a, str name):
    """(the C-contiguous array under a, 'N' or 'T'): a itself, or the C-contiguous
    transpose of an F-contiguous a."""
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {a.shape}")
    if a.flags.c_contiguous:
        return a, ord("N")
    if a.flags.f_contiguous:
        return a.T, ord("T")
    raise ValueError(f"{name} must be C- or F-contiguous")


def matmul(a, b, out, int threads):
    """out [M, N] = a [M, K] @ b [K, N], the rows of out split over ``threads`` of the
    kernels' OpenMP threads, each share one single-threaded BLAS call (the dense
    layer's products: the LSTM kernels' threads are awake and idle between their
    loops). a and b C- or F-contiguous, out C-contiguous, all float32 or all float64."""
    A, ta = _row_major(a, "a")
    B, tb = _row_major(b, "b")
    if out.ndim != 2 or not out.flags.c_contiguous or out.shape != (a.shape[0], b.shape[1]) \
            or b.shape[0] != a.shape[1]:
        raise ValueError(f"matmul: a {a.shape}, b {b.shape}, out {out.shape} do not fit")
    if not (a.dtype == b.dtype == out.dtype) or a.dtype not in (np.float32, np.float64):
        raise TypeError(f"matmul: a, b and out must share float32 or float64, got {a.dtype}, "
                        f"{b.dtype}, {out.dtype}")
    if out.size:
        _matmul(A, B, out, ta, tb, a.shape[0], b.shape[1], a.shape[1], max(1, threads))
    return out


def _matmul(const floating[:, ::1] A, const floating[:, ::1] B, floating[:, ::1] C, char ta,
            char tb, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, int threads):
    cdef Py_ssize_t lda = max(1, A.shape[1]), ldb = max(1, B.shape[1])
    cdef const floating *ap = &A[0, 0] if A.shape[0] * A.shape[1] else NULL
    cdef const floating *bp = &B[0, 0] if B.shape[0] * B.shape[1] else NULL
    with nogil:
        if floating is float:
            lstm_parallel_matmul_f32(&_BLAS, threads, ta, tb, M, N, K, ap, lda, bp, ldb, &C[0, 0], N)
        else:
            lstm_parallel_matmul_f64(&_BLAS, threads, ta, tb, M, N, K, ap, lda, bp, ldb, &C[0, 0], N)


def scatter_add_rows(const int64_t[::1] ids, const floating[:, ::1] src, floating[:, ::1] dst):
    """dst[ids[r]] += src[r] for every row r (the gradient of the gather dst[ids]):
    ids [rows] int64 in [0, V), src [rows, G], dst [V, G] INOUT."""
    cdef Py_ssize_t rows = src.shape[0], G = src.shape[1], V = dst.shape[0], r
    if ids.shape[0] != rows or dst.shape[1] != G:
        raise ValueError(f"scatter_add_rows: ids {ids.shape[0]}, src {_shape(src)}, dst {_shape(dst)}")
    for r in range(rows):
        if ids[r] < 0 or ids[r] >= V:
            raise IndexError(f"id {ids[r]} at row {r} is outside [0, {V})")
    if rows == 0 or G == 0:
        return
    cdef int nthreads = _pass_threads(rows * G * sizeof(floating))
    with nogil:
        if floating is float:
            lstm_scatter_add_rows_f32(nthreads, rows, G, &ids[0], &src[0, 0], &dst[0, 0])
        else:
            lstm_scatter_add_rows_f64(nthreads, rows, G, &ids[0], &src[0, 0], &dst[0, 0])


#: Bytes from which the elementwise passes (dropout, move_rows, scatter_add_rows, adam_step,
#: fill_zero, splitmix_words, softmax_xent)
#: run on the threads; below, starting them costs more than they save.
THREADED_PASS_BYTES = 256 * 1024


cdef int _pass_threads(Py_ssize_t nbytes):
    return max_threads() if nbytes >= THREADED_PASS_BYTES else 1


def softmax_xent(const float[:, ::1] logits, const int64_t[::1] targets, float[:, ::1] out,
                 double scale):
    """Softmax cross-entropy of float32 rows (fastlstm/charlm/nn.py's softmax_cross_entropy):
    logits [M, V], targets [M] int64 in [0, V), out [M, V] OUT (may be logits) =
    (softmax - onehot) * scale; returns each row's loss, float64 [M]
    (log sum exp(x - max) - (x[target] - max)), or None where the kernel path is "blas" or
    no fused kernels were built (the caller then computes it in NumPy)."""
    cdef Py_ssize_t M = logits.shape[0], V = logits.shape[1], r
    if targets.shape[0] != M or out.shape[0] != M or out.shape[1] != V:
        raise ValueError(f"softmax_xent: logits {_shape(logits)}, targets {targets.shape[0]}, "
                         f"out {_shape(out)}")
    for r in range(M):
        if targets[r] < 0 or targets[r] >= V:
            raise IndexError(f"target {targets[r]} at row {r} is outside [0, {V})")
    name = kernel_path()
    if name == "blas":
        return None
    loss = np.empty(M, np.float64)
    cdef double[::1] lv = loss
    cdef int path = _PATHS[name], ok
    cdef int nthreads = _pass_threads(M * V * 4)
    if M == 0 or V == 0:
        return loss
    with nogil:
        ok = lstm_fused_softmax_xent(path, nthreads, M, V, &logits[0, 0], &targets[0], <float>scale,
                                     &out[0, 0], &lv[0])
    return loss if ok else None


def fill_zero(floating[::1] a):
    """a[:] = 0, on the threads from THREADED_PASS_BYTES."""
    cdef Py_ssize_t n = a.shape[0] * sizeof(floating)
    if n == 0:
        return
    cdef int nthreads = _pass_threads(n)
    with nogil:
        lstm_zero_bytes(nthreads, n, &a[0])


def splitmix_words(uint64_t key, uint64_t[::1] out):
    """out[i] = word i + 1 of the SplitMix64 sequence from state key (fastlstm/_dropout.py's
    random bits; its NumPy fallback computes the same words); on the threads from
    THREADED_PASS_BYTES."""
    cdef Py_ssize_t n = out.shape[0]
    if n == 0:
        return
    cdef int nthreads = _pass_threads(n * 8)
    with nogil:
        lstm_splitmix_words(nthreads, key, n, &out[0])


def dropout(const uint16_t[::1] bits, unsigned threshold, double scale, const floating[::1] x,
            floating[::1] y, floating[::1] mask=None):
    """Inverted dropout (fastlstm/_dropout.py): y = x * m, m = (bits >= threshold) * scale
    (0 or scale; bit for bit (x * keep) * scale), and mask = m when given. 1-D arrays of one
    length; y may be x; on the threads from THREADED_PASS_BYTES."""
    cdef Py_ssize_t n = x.shape[0]
    if bits.shape[0] != n or y.shape[0] != n or (mask is not None and mask.shape[0] != n):
        raise ValueError(f"dropout: bits {bits.shape[0]}, x {n}, y {y.shape[0]}"
                         + ("" if mask is None else f", mask {mask.shape[0]}") + ": lengths differ")
    if n == 0:
        return
    cdef int nthreads = _pass_threads(n * sizeof(floating))
    cdef floating *mp = NULL if mask is None else &mask[0]
    with nogil:
        if floating is float:
            lstm_dropout_f32(nthreads, n, &bits[0], threshold, <float>scale, &x[0], &y[0], mp)
        else:
            lstm_dropout_f64(nthreads, n, &bits[0], threshold, scale, &x[0], &y[0], mp)


def move_rows(const int64_t[::1] src_rows, const floating[:, ::1] src, floating[:, ::1] dst):
    """dst[r] = src[src_rows[r]], or zeros where src_rows[r] is -1 (StepOrder's gathers and
    scatters, fastlstm/backends/_steps.py): src_rows [rows] int64 in [-1, len(src)), src [S, F],
    dst [rows, F] OUT, not overlapping src."""
    cdef Py_ssize_t rows = dst.shape[0], F = dst.shape[1], S = src.shape[0], r
    if src_rows.shape[0] != rows or src.shape[1] != F:
        raise ValueError(f"move_rows: src_rows {src_rows.shape[0]}, src {_shape(src)}, dst {_shape(dst)}")
    for r in range(rows):
        if src_rows[r] < -1 or src_rows[r] >= S:
            raise IndexError(f"source row {src_rows[r]} at row {r} is outside [-1, {S})")
    if rows == 0 or F == 0:
        return
    cdef int nthreads = _pass_threads(dst.nbytes)
    with nogil:
        if floating is float:
            lstm_move_rows_f32(nthreads, rows, F, &src_rows[0], &src[0, 0] if S else NULL,
                               &dst[0, 0])
        else:
            lstm_move_rows_f64(nthreads, rows, F, &src_rows[0], &src[0, 0] if S else NULL,
                               &dst[0, 0])


def adam_step(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v,
              double c1, double c2, double a, double e, double wd):
    """One Adam step over 1-D arrays, in place (csrc/lstm_blas_loop.h: the rule and order of
    fastlstm/charlm/nn.py's Adam.step; the scalars are rounded to the arrays' dtype first)."""
    cdef Py_ssize_t n = p.shape[0]
    if g.shape[0] != n or m.shape[0] != n or v.shape[0] != n:
        raise ValueError(f"adam_step: sizes {n}, {g.shape[0]}, {m.shape[0]}, {v.shape[0]} differ")
    if n == 0:
        return
    cdef int nthreads = _pass_threads(n * sizeof(floating))
    with nogil:
        if floating is float:
            lstm_adam_step_f32(nthreads, n, &p[0], &g[0], &m[0], &v[0], <float>c1, <float>c2,
                               <float>a, <float>e, <float>wd)
        else:
            lstm_adam_step_f64(nthreads, n, &p[0], &g[0], &m[0], &v[0], c1, c2, a, e, wd)
