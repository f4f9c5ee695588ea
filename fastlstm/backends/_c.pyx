# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""C backend: whole-sequence LSTM forward/backward/step with the time loop in C.

Same caller-allocates contract as fastlstm/backends/reference.py (read it
there). Products go to BLAS through scipy.linalg.cython_blas (no link step);
the gate math is the fused pointwise step in csrc/lstm_cell.c. The GIL is
released for the whole sequence and nothing is allocated in the time loop.
BLAS is column-major: a row-major [r, c] array is its transpose to BLAS,
hence the swapped operands below.
"""

cimport cython
from cython cimport floating
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv

NAME = "c"

cdef extern from "lstm_cell.h" nogil:
    void lstm_cell_forward_f32(Py_ssize_t N, Py_ssize_t H, float *gates,
                               const float *c_prev, float *c, float *h)
    void lstm_cell_forward_f64(Py_ssize_t N, Py_ssize_t H, double *gates,
                               const double *c_prev, double *c, double *h)
    void lstm_cell_backward_f32(Py_ssize_t N, Py_ssize_t H, const float *gates,
                                const float *c_prev, const float *c,
                                const float *dy, const float *dh_next,
                                float *dc, float *dgates)
    void lstm_cell_backward_f64(Py_ssize_t N, Py_ssize_t H, const double *gates,
                                const double *c_prev, const double *c,
                                const double *dy, const double *dh_next,
                                double *dc, double *dgates)
    void lstm_fill_rows_f32(Py_ssize_t rows, Py_ssize_t G, const float *bias, float *out)
    void lstm_fill_rows_f64(Py_ssize_t rows, Py_ssize_t G, const double *bias, double *out)
    void lstm_sum_rows_f32(Py_ssize_t rows, Py_ssize_t G, const float *d, float *db)
    void lstm_sum_rows_f64(Py_ssize_t rows, Py_ssize_t G, const double *d, double *db)

cdef extern from "lstm_fused.h" nogil:
    int lstm_fused_best_path()
    int lstm_fused_path_supported(int path)
    const char *lstm_fused_path_name(int path)
    int lstm_fused_max_threads()
    Py_ssize_t lstm_fused_forward_pack_size(int path, Py_ssize_t Ip, Py_ssize_t H)
    Py_ssize_t lstm_fused_backward_pack_size(int path, Py_ssize_t H)
    void lstm_fused_pack_forward(int path, Py_ssize_t Ip, Py_ssize_t H, const float *W_ih,
                                 const float *W_hh, float *W_f)
    void lstm_fused_pack_backward(int path, Py_ssize_t H, const float *W_hh, float *W_b)
    ctypedef void (*lstm_sgemm_fn)(const char *, const char *, const int *, const int *,
                                   const int *, const float *, const float *, const int *,
                                   const float *, const int *, const float *, float *, const int *)
    ctypedef void (*lstm_sgemv_fn)(const char *, const int *, const int *, const float *,
                                   const float *, const int *, const float *, const int *,
                                   const float *, float *, const int *)
    ctypedef int (*lstm_set_threads_fn)(int)
    ctypedef struct lstm_blas:
        lstm_sgemm_fn sgemm
        lstm_sgemv_fn sgemv
        lstm_set_threads_fn set_threads_local
    void lstm_fused_forward(const lstm_blas *blas, int path, int nthreads, int by_rows, Py_ssize_t T,
                            Py_ssize_t N, Py_ssize_t I, Py_ssize_t Ip, Py_ssize_t H, const float *x,
                            const float *W_ih, const float *b, const float *W_f,
                            const float *h0, const float *c0, float *gates, int keep, float *y,
                            float *cs)
    void lstm_fused_backward(const lstm_blas *blas, int path, int nthreads, int by_rows, Py_ssize_t T,
                             Py_ssize_t N, Py_ssize_t I, Py_ssize_t H, const float *x,
                             const float *W_ih, const float *h0, const float *c0, const float *y,
                             const float *cs, const float *W_b, float *gates, const float *dy,
                             float *dh, float *dc, float *dx, float *dW_ih, float *dW_hh, float *db)
    void lstm_fused_step(const lstm_blas *blas, int path, int nthreads, Py_ssize_t L, Py_ssize_t N,
                         Py_ssize_t I0, Py_ssize_t H, const float *x, const float *const *W_ih,
                         const float *const *W_hh, const float *const *b, const float *h,
                         const float *c, float *gates, float *h_out, float *c_out)
    void lstm_fused_activations(int path, Py_ssize_t n, const float *x, float *sig, float *th)

import numpy as np
from .. import _config
from ._blas_threads import set_threads_local_address

cdef lstm_blas _BLAS
_BLAS.sgemm = <lstm_sgemm_fn>sgemm
_BLAS.sgemv = <lstm_sgemv_fn>sgemv
_BLAS.set_threads_local = <lstm_set_threads_fn><size_t>set_threads_local_address()
#: Whether SciPy's OpenBLAS is kept to one thread inside the kernels' threads.
BLAS_THREADS_ISOLATED = _BLAS.set_threads_local != NULL

_PATHS = {"portable": 0, "avx2": 1, "avx512": 2}
#: Kernel paths this CPU can run, fastest first ("blas" always works).
KERNELS = [name for name in ("avx512", "avx2", "portable") if lstm_fused_path_supported(_PATHS[name])] + ["blas"]


#: The fastest path this CPU runs (what "auto" means).
_BEST = lstm_fused_path_name(lstm_fused_best_path()).decode()


def kernel_path():
    """The float32 kernel path the next call will use (FASTLSTM_KERNEL or the fastest)."""
    name = _config.kernel()
    if name == "auto":
        return _BEST
    if name not in KERNELS:
        raise ValueError(f"kernel path {name!r} is not supported on this CPU; "
                         f"supported: {', '.join(KERNELS)}")
    return name


def max_threads():
    """Threads the fused kernels may use (OpenMP's count, or FASTLSTM_NUM_THREADS)."""
    return _config.num_threads(lstm_fused_max_threads())


def activations(str path, const float[::1] x):
    """(sigmoid(x), tanh(x)) as the fused kernels of `path` compute them (for tests)."""
    if path not in KERNELS or path == "blas":
        raise ValueError(f"path {path!r} has no fused kernels here; expected one of "
                         f"{', '.join(k for k in KERNELS if k != 'blas')}")
    cdef Py_ssize_t n = x.shape[0]
    sig = np.empty(n, np.float32)
    th = np.empty(n, np.float32)
    cdef float[::1] s = sig, t = th
    cdef int code = _PATHS[path]
    if n:
        with nogil:
            lstm_fused_activations(code, n, &x[0], &s[0], &t[0])
    return sig, th


cdef float[::1] _aligned_floats(Py_ssize_t n):
    """A 64-byte aligned float32 buffer of n elements (packed weights)."""
    raw = np.empty(n + 16, np.float32)
    cdef Py_ssize_t off = ((-raw.ctypes.data) % 64) // 4
    return raw[off:off + n]


# BLAS takes 32-bit ints: products over T*N rows are cut into chunks below this.
cdef Py_ssize_t BLAS_INT_MAX = 2147483647


cdef inline void _gemm(char ta, char tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       floating alpha, const floating *a, Py_ssize_t lda,
                       const floating *b, Py_ssize_t ldb, floating beta,
                       floating *c, Py_ssize_t ldc) noexcept nogil:
    """Column-major C = alpha*op(A)*op(B) + beta*C; every size fits an int."""
    cdef int im = <int>m, jn = <int>n, kk = <int>k
    cdef int la = <int>lda, lb = <int>ldb, lc = <int>ldc
    if m == 0 or n == 0:
        return
    if floating is float:
        sgemm(&ta, &tb, &im, &jn, &kk, &alpha, <float *>a, &la, <float *>b, &lb,
              &beta, c, &lc)
    else:
        dgemm(&ta, &tb, &im, &jn, &kk, &alpha, <double *>a, &la, <double *>b, &lb,
              &beta, c, &lc)


cdef inline void _gemv(char ta, Py_ssize_t m, Py_ssize_t n, floating alpha,
                       const floating *a, Py_ssize_t lda, const floating *x,
                       floating beta, floating *y) noexcept nogil:
    """Column-major y = alpha*op(A)*x + beta*y, unit strides."""
    cdef int im = <int>m, jn = <int>n, la = <int>lda, one = 1
    if floating is float:
        sgemv(&ta, &im, &jn, &alpha, <float *>a, &la, <float *>x, &one, &beta, y, &one)
    else:
        dgemv(&ta, &im, &jn, &alpha, <double *>a, &la, <double *>x, &one, &beta, y, &one)


cdef inline void _add_recurrent(Py_ssize_t N, Py_ssize_t H, const floating *W_hh,
                                const floating *h, floating *P) noexcept nogil:
    """P [N, G] += h [N, H] . W_hh^T; a matrix-vector product when N = 1."""
    if N == 1:
        _gemv(c'T', H, 4 * H, <floating>1, W_hh, H, h, <floating>1, P)
    else:
        _gemm(c'T', c'N', 4 * H, N, H, <floating>1, W_hh, H, h, H, <floating>1, P, 4 * H)


cdef inline void _back_recurrent(Py_ssize_t N, Py_ssize_t H, const floating *W_hh,
                                 const floating *dP, floating *dh) noexcept nogil:
    """dh [N, H] = dP [N, G] . W_hh."""
    if N == 1:
        _gemv(c'N', H, 4 * H, <floating>1, W_hh, H, dP, <floating>0, dh)
    else:
        _gemm(c'N', c'N', H, N, 4 * H, <floating>1, W_hh, H, dP, 4 * H, <floating>0, dh, H)


cdef inline void _cell_forward(Py_ssize_t N, Py_ssize_t H, floating *gates,
                               const floating *c_prev, floating *c, floating *h) noexcept nogil:
    if floating is float:
        lstm_cell_forward_f32(N, H, gates, c_prev, c, h)
    else:
        lstm_cell_forward_f64(N, H, gates, c_prev, c, h)


cdef inline void _cell_backward(Py_ssize_t N, Py_ssize_t H, const floating *gates,
                                const floating *c_prev, const floating *c,
                                const floating *dy, const floating *dh_next,
                                floating *dc, floating *dgates) noexcept nogil:
    if floating is float:
        lstm_cell_backward_f32(N, H, gates, c_prev, c, dy, dh_next, dc, dgates)
    else:
        lstm_cell_backward_f64(N, H, gates, c_prev, c, dy, dh_next, dc, dgates)


cdef inline Py_ssize_t _steps_per_chunk(Py_ssize_t N) noexcept nogil:
    """Time steps whose N rows fit one BLAS int."""
    cdef Py_ssize_t s = BLAS_INT_MAX // (N if N > 0 else 1)
    return s if s > 0 else 1


cdef _check(str name, tuple got, tuple want):
    # Memory safety only (the public API has already validated): a wrong shape
    # here would make the C code read or write out of bounds.
    if got != want:
        raise ValueError(f"{name} has shape {got}, expected {want}")


cdef _check_entry(str name, Py_ssize_t l, tuple got, tuple want):
    # _check for entry l of a list of per-layer arrays (its name made only on failure)
    if got != want:
        _check(f"{name}[{l}]", got, want)


def _shape(a):
    return tuple(a.shape[:a.ndim])


def forward(const floating[:, :, ::1] x, const floating[:, ::1] h0, const floating[:, ::1] c0,
            const floating[:, ::1] W_ih, const floating[:, ::1] W_hh, const floating[::1] b,
            floating[:, :, ::1] y, floating[:, ::1] hT, floating[:, ::1] cT,
            floating[:, :, ::1] gates, floating[:, :, ::1] cs, bint keep=True):
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef Py_ssize_t G = 4 * H
    _check("h0", _shape(h0), (N, H)); _check("c0", _shape(c0), (N, H))
    _check("W_ih", _shape(W_ih), (G, I)); _check("W_hh", _shape(W_hh), (G, H))
    _check("b", _shape(b), (G,)); _check("y", _shape(y), (T, N, H))
    _check("hT", _shape(hT), (N, H)); _check("cT", _shape(cT), (N, H))
    _check("gates", _shape(gates), (T, N, G)); _check("cs", _shape(cs), (T, N, H))
    if N == 0 or H == 0:
        return
    if T == 0:
        hT[:, :] = h0
        cT[:, :] = c0
        return
    cdef Py_ssize_t t, t0, steps, chunk = _steps_per_chunk(N)
    cdef const floating *h_prev
    cdef const floating *c_prev
    cdef int path = -1, nthreads = 1, by_rows = 0
    cdef Py_ssize_t Ip = 0
    cdef float[::1] packed
    if floating is float:
        name = kernel_path()
        if name != "blas":
            path = _PATHS[name]
            nthreads = _config.threads_for(N, H, lstm_fused_max_threads())
            if I > 0 and _config.fuse_input(I, H, N, nthreads):
                Ip = I
            packed = _aligned_floats(lstm_fused_forward_pack_size(path, Ip, H))
            by_rows = _config.split_by_rows(4 * packed.shape[0], nthreads)
            with nogil:
                lstm_fused_pack_forward(path, Ip, H, &W_ih[0, 0] if Ip else NULL, &W_hh[0, 0],
                                        &packed[0])
    with nogil:
        if path >= 0:
            if floating is float:
                # Without keep (inference) the fused kernels store no activated gates.
                lstm_fused_forward(&_BLAS, path, nthreads, by_rows, T, N, I, Ip, H, &x[0, 0, 0],
                                   &W_ih[0, 0], &b[0], &packed[0], &h0[0, 0], &c0[0, 0],
                                   &gates[0, 0, 0], keep, &y[0, 0, 0], &cs[0, 0, 0])
        else:
            # Input projection of every step: P = x . W_ih^T + b.
            t0 = 0
            while t0 < T:
                steps = min(chunk, T - t0)
                if floating is float:
                    lstm_fill_rows_f32(steps * N, G, &b[0], &gates[t0, 0, 0])
                else:
                    lstm_fill_rows_f64(steps * N, G, &b[0], &gates[t0, 0, 0])
                if I > 0:
                    _gemm(c'T', c'N', G, steps * N, I, <floating>1, &W_ih[0, 0], I,
                          &x[t0, 0, 0], I, <floating>1, &gates[t0, 0, 0], G)
                t0 += steps
            h_prev = &h0[0, 0]
            c_prev = &c0[0, 0]
            for t in range(T):
                _add_recurrent(N, H, &W_hh[0, 0], h_prev, &gates[t, 0, 0])
                _cell_forward(N, H, &gates[t, 0, 0], c_prev, &cs[t, 0, 0], &y[t, 0, 0])
                h_prev = &y[t, 0, 0]
                c_prev = &cs[t, 0, 0]
        memcpy(&hT[0, 0], &y[T - 1, 0, 0], N * H * sizeof(floating))
        memcpy(&cT[0, 0], &cs[T - 1, 0, 0], N * H * sizeof(floating))


def backward(const floating[:, :, ::1] x, const floating[:, ::1] h0, const floating[:, ::1] c0,
             const floating[:, ::1] W_ih, const floating[:, ::1] W_hh,
             const floating[:, :, ::1] y, floating[:, :, ::1] gates, const floating[:, :, ::1] cs,
             const floating[:, :, ::1] dy, const floating[:, ::1] dhT, const floating[:, ::1] dcT,
             floating[:, :, ::1] dx, floating[:, ::1] dh0, floating[:, ::1] dc0,
             floating[:, ::1] dW_ih, floating[:, ::1] dW_hh, floating[::1] db):
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef Py_ssize_t G = 4 * H
    _check("h0", _shape(h0), (N, H)); _check("c0", _shape(c0), (N, H))
    _check("W_ih", _shape(W_ih), (G, I)); _check("W_hh", _shape(W_hh), (G, H))
    _check("y", _shape(y), (T, N, H)); _check("gates", _shape(gates), (T, N, G))
    _check("cs", _shape(cs), (T, N, H)); _check("dy", _shape(dy), (T, N, H))
    _check("dhT", _shape(dhT), (N, H)); _check("dcT", _shape(dcT), (N, H))
    _check("dx", _shape(dx), (T, N, I)); _check("dh0", _shape(dh0), (N, H))
    _check("dc0", _shape(dc0), (N, H)); _check("dW_ih", _shape(dW_ih), (G, I))
    _check("dW_hh", _shape(dW_hh), (G, H)); _check("db", _shape(db), (G,))
    if N == 0 or H == 0:
        if T * N * I > 0:
            dx[:, :, :] = 0
        return
    # dh0 and dc0 carry the running gradients through the loop: the step
    # kernel reads dh0 before the product overwrites it with the next dh.
    dh0[:, :] = dhT
    dc0[:, :] = dcT
    if T == 0:
        return
    cdef Py_ssize_t t, t0, steps, chunk = _steps_per_chunk(N)
    cdef const floating *c_prev
    cdef int path = -1, nthreads = 1, by_rows = 0
    cdef float[::1] packed
    if floating is float:
        name = kernel_path()
        if name != "blas":
            path = _PATHS[name]
            nthreads = _config.threads_for(N, H, lstm_fused_max_threads())
            packed = _aligned_floats(lstm_fused_backward_pack_size(path, H))
            by_rows = _config.split_by_rows(4 * packed.shape[0], nthreads)
            with nogil:
                lstm_fused_pack_backward(path, H, &W_hh[0, 0], &packed[0])
    with nogil:
        if path >= 0:
            if floating is float:
                lstm_fused_backward(&_BLAS, path, nthreads, by_rows, T, N, I, H, &x[0, 0, 0], &W_ih[0, 0],
                                    &h0[0, 0], &c0[0, 0], &y[0, 0, 0], &cs[0, 0, 0], &packed[0],
                                    &gates[0, 0, 0], &dy[0, 0, 0], &dh0[0, 0], &dc0[0, 0],
                                    &dx[0, 0, 0], &dW_ih[0, 0], &dW_hh[0, 0], &db[0])
        else:
            for t in range(T - 1, -1, -1):
                c_prev = &cs[t - 1, 0, 0] if t > 0 else &c0[0, 0]
                # gates[t] (activations) -> gates[t] (pre-activation gradients), in place.
                _cell_backward(N, H, &gates[t, 0, 0], c_prev, &cs[t, 0, 0], &dy[t, 0, 0],
                               &dh0[0, 0], &dc0[0, 0], &gates[t, 0, 0])
                _back_recurrent(N, H, &W_hh[0, 0], &gates[t, 0, 0], &dh0[0, 0])
            # All-steps products: dx = dP . W_ih, dW_ih += dP^T . x,
            # dW_hh += dP^T . [h0, y_0 .. y_{T-2}], db += sum of dP.
            t0 = 0
            while t0 < T:
                steps = min(chunk, T - t0)
                if I > 0:
                    _gemm(c'N', c'N', I, steps * N, G, <floating>1, &W_ih[0, 0], I,
                          &gates[t0, 0, 0], G, <floating>0, &dx[t0, 0, 0], I)
                    _gemm(c'N', c'T', I, G, steps * N, <floating>1, &x[t0, 0, 0], I,
                          &gates[t0, 0, 0], G, <floating>1, &dW_ih[0, 0], I)
                if floating is float:
                    lstm_sum_rows_f32(steps * N, G, &gates[t0, 0, 0], &db[0])
                else:
                    lstm_sum_rows_f64(steps * N, G, &gates[t0, 0, 0], &db[0])
                t0 += steps
            _gemm(c'N', c'T', H, G, N, <floating>1, &h0[0, 0], H,
                  &gates[0, 0, 0], G, <floating>1, &dW_hh[0, 0], H)
            t0 = 1
            while t0 < T:
                steps = min(chunk, T - t0)
                _gemm(c'N', c'T', H, G, steps * N, <floating>1, &y[t0 - 1, 0, 0], H,
                      &gates[t0, 0, 0], G, <floating>1, &dW_hh[0, 0], H)
                t0 += steps


def step(const floating[:, ::1] x_t, const floating[:, ::1] h, const floating[:, ::1] c,
         const floating[:, ::1] W_ih, const floating[:, ::1] W_hh, const floating[::1] b,
         floating[:, ::1] h_out, floating[:, ::1] c_out, floating[:, ::1] gates):
    cdef Py_ssize_t N = x_t.shape[0], I = x_t.shape[1], H = h.shape[1], G = 4 * H
    _check("h", _shape(h), (N, H)); _check("c", _shape(c), (N, H))
    _check("W_ih", _shape(W_ih), (G, I)); _check("W_hh", _shape(W_hh), (G, H))
    _check("b", _shape(b), (G,)); _check("h_out", _shape(h_out), (N, H))
    _check("c_out", _shape(c_out), (N, H)); _check("gates", _shape(gates), (N, G))
    if N == 0 or H == 0:
        return
    with nogil:
        if floating is float:
            lstm_fill_rows_f32(N, G, &b[0], &gates[0, 0])
        else:
            lstm_fill_rows_f64(N, G, &b[0], &gates[0, 0])
        if I > 0:
            if N == 1:
                _gemv(c'T', I, G, <floating>1, &W_ih[0, 0], I, &x_t[0, 0], <floating>1, &gates[0, 0])
            else:
                _gemm(c'T', c'N', G, N, I, <floating>1, &W_ih[0, 0], I, &x_t[0, 0], I,
                      <floating>1, &gates[0, 0], G)
        _add_recurrent(N, H, &W_hh[0, 0], &h[0, 0], &gates[0, 0])
        _cell_forward(N, H, &gates[0, 0], &c[0, 0], &c_out[0, 0], &h_out[0, 0])


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


def step_layers(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates):
    """One step of an L-layer stack: lists W_ih, W_hh, b of L arrays; h, c,
    h_out, c_out [L, N, H]; gates [N, G] workspace (see reference.step_layers)."""
    cdef Py_ssize_t L = len(W_ih), N = x_t.shape[0], I0 = x_t.shape[1], H = h.shape[2]
    cdef Py_ssize_t G = 4 * H, l
    if len(W_hh) != L or len(b) != L:
        raise ValueError(f"W_ih, W_hh and b must have one entry per layer, got {len(W_ih)}, {len(W_hh)}, {len(b)}")
    for name, a, want in (("h", h, (L, N, H)), ("c", c, (L, N, H)), ("h_out", h_out, (L, N, H)),
                          ("c_out", c_out, (L, N, H)), ("gates", gates, (N, G))):
        _check(name, tuple(a.shape), want)
    for l in range(L):
        _check_entry("W_ih", l, tuple(W_ih[l].shape), (G, I0 if l == 0 else H))
        _check_entry("W_hh", l, tuple(W_hh[l].shape), (G, H))
        _check_entry("b", l, tuple(b[l].shape), (G,))
    name = kernel_path() if x_t.dtype == np.float32 else "blas"
    if name == "blas" or N == 0 or H == 0:
        for l in range(L):
            step(x_t if l == 0 else h_out[l - 1], h[l], c[l], W_ih[l], W_hh[l], b[l],
                 h_out[l], c_out[l], gates)
        return
    cdef int path = _PATHS[name]
    cdef int nthreads = _config.threads_for(N, H, lstm_fused_max_threads(), step=True)
    cdef const float[:, ::1] xv = x_t
    cdef const float[:, :, ::1] hv = h
    cdef const float[:, :, ::1] cv = c
    cdef float[:, :, ::1] hov = h_out
    cdef float[:, :, ::1] cov = c_out
    cdef float[:, ::1] gv = gates
    cdef const float[:, ::1] wv
    cdef const float[::1] bv
    cdef const float **ptrs = <const float **>malloc(3 * L * sizeof(float *))
    if ptrs == NULL:
        raise MemoryError()
    try:
        for l in range(L):
            wv = W_ih[l]
            ptrs[l] = &wv[0, 0] if wv.shape[1] > 0 else NULL
            wv = W_hh[l]
            ptrs[L + l] = &wv[0, 0]
            bv = b[l]
            ptrs[2 * L + l] = &bv[0]
        with nogil:
            lstm_fused_step(&_BLAS, path, nthreads, L, N, I0, H, &xv[0, 0], ptrs, ptrs + L,
                            ptrs + 2 * L, &hv[0, 0, 0], &cv[0, 0, 0], &gv[0, 0],
                            &hov[0, 0, 0], &cov[0, 0, 0])
    finally:
        free(ptrs)
