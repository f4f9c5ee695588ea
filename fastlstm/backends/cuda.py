"""CUDA backend (Numba): the reference.py contract on an NVIDIA GPU.

Each argument may be a NumPy array (copied to the device and, for outputs,
back) or a device array (a Numba device array or anything with
``__cuda_array_interface__``: CuPy, PyTorch CUDA tensors), used in place.
Forward: one GEMM for the input projection of all steps, then the time loop,
either one persistent cooperative launch (W_hh slices kept in shared memory)
or one fused launch per step (FASTLSTM_CUDA_LOOP). Backward mirrors it, then
GEMMs over all steps for dx, dW_ih, dW_hh. Kernels: _cuda_kernels.py.
Importing this module raises ImportError when numba-cuda or a GPU is missing
(NUMBA_ENABLE_CUDASIM=1, set before numba is imported, runs the simulator).
"""

import ctypes
import math
import warnings

import numpy as np

try:
    import numba
    from numba import cuda
except ImportError as exc:  # the optional extra is not installed
    raise ImportError(f"numba-cuda is not installed ({exc}); pip install 'fastlstm[cuda]'") from exc

from .. import _config
from .. import _validate as v

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)
if not cuda.is_available():
    raise ImportError("no usable CUDA GPU or driver (numba.cuda.is_available() is False); "
                      "NUMBA_ENABLE_CUDASIM=1 runs the CUDA simulator instead")

if not SIMULATOR:
    # numba-cuda loads its NumPy typing lazily, at the first compile; a NumPy it does
    # not know (numba-cuda 0.30 with NumPy 2.5: np.row_stack is gone) would surface
    # there as a bare AttributeError. Load it now so the backend reports it instead.
    try:
        from numba.cuda import cudaimpl  # noqa: F401
    except (AttributeError, ImportError) as exc:
        raise ImportError(
            f"numba-cuda {getattr(numba.cuda, '__version__', '?')} does not load with NumPy "
            f"{np.__version__} ({exc}); install a NumPy this numba-cuda supports "
            "(or a newer numba-cuda)") from exc

from ._cuda_kernels import PERSISTENT_THREADS, kernels  # noqa: E402

NAME = "cuda"
on_device = True                            # this module is also the layer's array namespace
THREADS = 16 if SIMULATOR else 256          # threads per block of the elementwise kernels
MAX_BLOCKS = 1 if SIMULATOR else 4096       # grid-stride kernels cap their grid here
_persistent_refused = set()                 # shapes whose cooperative grid does not fit
#: "tiled" (shared-memory, register-blocked) or "simple" (one thread per output,
#: what the simulator runs in the layer tests; tests run the tiled one directly).
GEMM = "simple" if SIMULATOR else "tiled"


# -- device arrays --------------------------------------------------------------
def is_device_array(a):
    """True for Numba device arrays and objects with __cuda_array_interface__."""
    return bool(cuda.devicearray.is_cuda_ndarray(a)) or hasattr(a, "__cuda_array_interface__")


def _from_interface(obj):
    if not SIMULATOR:
        return cuda.as_cuda_array(obj)
    # The simulator's "device" memory is host memory: view it as a NumPy array.
    face = obj.__cuda_array_interface__
    dtype = np.dtype(face["typestr"])
    shape = tuple(face["shape"])
    count = int(np.prod(shape))
    if face.get("strides") is not None and face["strides"] != tuple(
            np.empty(shape, dtype).strides):
        raise ValueError("non-contiguous __cuda_array_interface__ arrays are not supported; "
                         "make the array C-contiguous on the device first")
    buf = (ctypes.c_char * (count * dtype.itemsize)).from_address(face["data"][0]) if count else b""
    host = np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)
    return cuda.simulator.cudadrv.devicearray.FakeCUDAArray(host)


def as_device(a):
    """A Numba device array for ``a``: device arrays as they are, host arrays copied over."""
    if cuda.devicearray.is_cuda_ndarray(a):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        return _from_interface(a)
    return cuda.to_device(np.ascontiguousarray(a))


def as_device_array(name, value, dtype):
    """Validated device array of ``dtype`` for the public API (host input is copied over)."""
    dtype = np.dtype(dtype)
    if not is_device_array(value):
        return cuda.to_device(v.as_real_array(name, value, dtype))
    d = as_device(value)
    if d.dtype != dtype:
        raise TypeError(f"{name} is a device array of dtype {d.dtype}; this computation runs in "
                        f"{dtype}: convert it on the device first")
    if d.size and not d.is_c_contiguous():
        raise ValueError(f"{name} must be a C-contiguous device array (copy it on the device first)")
    return d


as_array = as_device_array


def empty(shape, dtype):
    return cuda.device_array(shape, np.dtype(dtype))


def zeros(shape, dtype):
    return cuda.to_device(np.zeros(shape, dtype))


def copy(a):
    out = cuda.device_array(a.shape, a.dtype)
    if a.size:
        out.copy_to_device(a)
    return out


def to_host(a):
    return a.copy_to_host()


def _grid(count):
    return max(1, min(MAX_BLOCKS, math.ceil(count / THREADS)))


def swap01(a):
    """(A, B, F) -> (B, A, F), contiguous, on the device (batch_first at the edge)."""
    out = cuda.device_array((a.shape[1], a.shape[0], a.shape[2]), a.dtype)
    if a.size:
        kernels(a.dtype).swap01[_grid(a.size), THREADS](a, out)
    return out


def _elementwise(kernel_name, a, b):
    out = cuda.device_array(a.shape, a.dtype)
    if a.size:
        kernel = getattr(kernels(a.dtype), kernel_name)
        kernel[_grid(a.size), THREADS](a.reshape(a.size), b.reshape(b.size), out.reshape(out.size))
    return out


def multiply(a, b):
    return _elementwise("multiply", a, b)


def device_info():
    """Name and compute capability of the current device (for show_config)."""
    if SIMULATOR:
        return "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
    return f"{name} (compute capability {dev.compute_capability[0]}.{dev.compute_capability[1]}, " \
           f"{dev.MULTIPROCESSOR_COUNT} SMs)"


class _Args:
    """Device views of the contract's arguments; host outputs are copied back at the end."""

    def __init__(self):
        self._back = []

    def inp(self, a):
        return as_device(a)

    def out(self, a, upload=False):
        if is_device_array(a):
            return as_device(a)
        d = cuda.to_device(a) if upload else cuda.device_array(a.shape, a.dtype)
        self._back.append((d, a))
        return d

    def finish(self):
        for d, host in self._back:
            if host.size:
                d.copy_to_host(host)


# -- kernel launches ----------------------------------------------------------------
def _gemm(k, A, B, C, bias=None, ta=0, tb=0, accumulate=0):
    M, P = C.shape
    if M == 0 or P == 0:
        return
    if bias is None:
        bias = cuda.device_array(0, C.dtype)
    if GEMM == "simple":
        k.gemm_simple[_grid(M * P), THREADS](A, B, C, bias, ta, tb, accumulate)
        return
    blocks, threads = gemm_launch(M, P, k.gemm_tile, k.gemm_threads)
    k.gemm[blocks, threads](A, B, C, bias, ta, tb, accumulate)


#: The largest grid x a CUDA device takes.
MAX_GRID_X = 2**31 - 1


def gemm_launch(M, P, tile, side):
    """(grid, block) of the tiled GEMM for an (M, P) output: one block per tile, on
    grid x (see _cuda_kernels.gemm)."""
    blocks = math.ceil(M / tile) * math.ceil(P / tile)
    if blocks > MAX_GRID_X:
        raise ValueError(f"a product of {M} x {P} outputs needs {blocks} tiles, more than a grid holds")
    return (blocks,), (side, side)


def _persistent_plan(N, H, itemsize):
    """(blocks, units per block, threads, use shared memory, shared bytes) or None."""
    if _config.cuda_loop() == "steps":
        return None
    if SIMULATOR:
        # The simulator synchronises a grid only when it is one block.
        blocks, hb, threads = 1, H, max(1, min(THREADS, N * H))
    else:
        sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
        blocks = min(H, sms)
        hb = math.ceil(H / blocks)
        blocks = math.ceil(H / hb)
        threads = min(PERSISTENT_THREADS, 32 * math.ceil(N * hb / 32))
    smem = 4 * hb * H * itemsize
    use_smem = smem <= _config.cuda_smem_bytes()
    return blocks, hb, threads, use_smem, smem if use_smem else 0


def _try_persistent(kernel, plan, key, *args):
    """Launch a persistent kernel; False when its cooperative grid cannot be co-resident.

    The device is asked first (max_cooperative_grid_blocks for the compiled kernel at
    this block and shared-memory size). Too large: in auto mode a warning (once per
    shape) and the caller loops per step; with FASTLSTM_CUDA_LOOP=persistent an error.
    Anything else (compile errors, launch faults) is raised, never hidden.
    """
    if plan is None or key in _persistent_refused:
        return False
    blocks, hb, threads, use_smem, smem = plan
    args = (*args, hb, use_smem)
    if not SIMULATOR:
        compiled = kernel.compile(tuple(kernel.typeof_pyval(a) for a in args))
        fits = compiled.max_cooperative_grid_blocks(threads, smem)
        if fits < blocks:
            reason = (f"a cooperative grid of {blocks} blocks of {threads} threads "
                      f"({smem} bytes of shared memory each) does not fit on this device, "
                      f"which allows {fits} such blocks")
            if _config.cuda_loop() == "persistent":
                raise RuntimeError(f"FASTLSTM_CUDA_LOOP=persistent: {reason}")
            warnings.warn(f"fastlstm cuda: {reason}; running one launch per step for "
                          f"N={key[1]}, H={key[2]}", RuntimeWarning, stacklevel=3)
            _persistent_refused.add(key)
            return False
    kernel[blocks, threads, 0, smem](*args)
    return True


def _lengths_on_device(lengths, T, N):
    """Each row's length as a device array (T for every row when lengths is None)."""
    return cuda.to_device(np.full(N, T, np.int64) if lengths is None else np.asarray(lengths, np.int64))


def _run_forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, lengths=None, reverse=False,
                 W_hr=None, ms=None):
    """The forward contract on device arrays (lengths a host array or None)."""
    T, N, I = x.shape
    H = cs.shape[2]
    K = W_hh.shape[1]  # features of h: H, or P with a projection
    G = 4 * H
    if N == 0:
        return
    if T == 0:
        hT.copy_to_device(h0)
        cT.copy_to_device(c0)
        return
    k = kernels(x.dtype)
    _gemm(k, x.reshape(T * N, I), W_ih, gates.reshape(T * N, G), bias=b, tb=1)
    WhhT = cuda.device_array((K, G), x.dtype)
    k.transpose[_grid(G * K), THREADS](W_hh, WhhT)
    lens = _lengths_on_device(lengths, T, N)
    plain = lengths is None and not reverse and W_hr is None
    plan = _persistent_plan(N, H, x.dtype.itemsize) if plain else None
    if not _try_persistent(k.forward_persistent, plan, ("fwd", N, H, x.dtype.str),
                           lens, gates, cs, y, h0, c0, WhhT):
        if lengths is not None:
            k.zero_past_lengths[_grid(y.size), THREADS](y, lens)  # outputs past the ends are zero
            if W_hr is not None:  # read by backward's dW_hr product, where dh is zero
                k.zero_past_lengths[_grid(ms.size), THREADS](ms, lens)
        out = y if W_hr is None else ms
        for s in range(T):
            k.forward_step[_grid(N * H), THREADS](s, lens, reverse, gates, cs, y, out, h0, c0, WhhT)
            if W_hr is not None:
                k.rows_product[_grid(N * K), THREADS](s, lens, reverse, ms, W_hr, y, True, True)
    if plain:
        hT.copy_to_device(y[T - 1])
        cT.copy_to_device(cs[T - 1])
    else:
        k.final_state[_grid(N * (K + H)), THREADS](lens, reverse, y, cs, h0, c0, hT, cT)


#: The keyword options of the contract this backend runs.
OPTIONS = ("lengths", "reverse", "projection")


def forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, keep=True, *, lengths=None,
            reverse=False, W_hr=None, ms=None):
    io = _Args()
    x, h0, c0, W_ih, W_hh, b = (io.inp(a) for a in (x, h0, c0, W_ih, W_hh, b))
    y, hT, cT, gates, cs = (io.out(a) for a in (y, hT, cT, gates, cs))
    if W_hr is not None:
        W_hr, ms = io.inp(W_hr), io.out(ms)
    _run_forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, lengths, reverse, W_hr, ms)
    io.finish()


def backward(x, h0, c0, W_ih, W_hh, y, gates, cs, dy, dhT, dcT, dx, dh0, dc0, dW_ih, dW_hh, db, *,
             lengths=None, reverse=False, W_hr=None, ms=None, dW_hr=None):
    io = _Args()
    x, h0, c0, W_ih, W_hh, y, cs, dy, dhT, dcT = (
        io.inp(a) for a in (x, h0, c0, W_ih, W_hh, y, cs, dy, dhT, dcT))
    gates = io.out(gates, upload=True)
    dx, dh0, dc0 = (io.out(a) for a in (dx, dh0, dc0))
    dW_ih, dW_hh, db = (io.out(a, upload=True) for a in (dW_ih, dW_hh, db))
    if W_hr is not None:
        W_hr, ms, dW_hr = io.inp(W_hr), io.inp(ms), io.out(dW_hr, upload=True)
    T, N, I = x.shape
    H = cs.shape[2]
    K = W_hh.shape[1]
    G = 4 * H
    if N == 0:
        io.finish()
        return
    if T == 0:
        dh0.copy_to_device(dhT)
        dc0.copy_to_device(dcT)
        io.finish()
        return
    k = kernels(x.dtype)
    dc = copy(dcT)
    lens = _lengths_on_device(lengths, T, N)
    plain = lengths is None and not reverse and W_hr is None
    plan = _persistent_plan(N, H, x.dtype.itemsize) if plain else None
    dhs = None
    if not _try_persistent(k.backward_persistent, plan, ("bwd", N, H, x.dtype.str),
                           lens, gates, cs, c0, dy, dhT, W_hh, dc, dh0):
        if lengths is not None:
            k.zero_past_lengths[_grid(gates.size), THREADS](gates, lens)  # no gradient there
        dm = cuda.device_array((1, N, H), x.dtype) if W_hr is not None else dc
        if W_hr is not None:
            dhs = zeros((T, N, K), x.dtype)
        for s in range(T - 1, -1, -1):
            if W_hr is not None:
                k.projected_grads_step[_grid(N * K), THREADS](s, lens, reverse, gates, dy, dhT, W_hh, dhs)
                k.rows_product[_grid(N * H), THREADS](s, lens, reverse, dhs, W_hr, dm, False, False)
            k.backward_step[_grid(N * H), THREADS](s, lens, reverse, gates, cs, c0, dy, dhT, W_hh, dc,
                                                   dm if W_hr is None else dm[0], W_hr is not None)
        k.backward_first_dh[_grid(N * K), THREADS](lens, reverse, gates, W_hh, dhT, dh0)
    dc0.copy_to_device(dc)
    dP = gates.reshape(T * N, G)
    _gemm(k, dP, W_ih, dx.reshape(T * N, I))
    if lengths is not None:  # padding may hold anything (NaN too): it must not reach dW_ih
        x = copy(x)
        k.zero_past_lengths[_grid(x.size), THREADS](x, lens)
    _gemm(k, dP, x.reshape(T * N, I), dW_ih, ta=1, accumulate=1)
    h_prev = cuda.device_array((T, N, K), x.dtype)
    k.previous_h[_grid(h_prev.size), THREADS](lens, reverse, y, h0, h_prev)
    _gemm(k, dP, h_prev.reshape(T * N, K), dW_hh, ta=1, accumulate=1)
    k.column_sums[_grid(G), THREADS](dP, db)
    if dhs is not None:
        _gemm(k, dhs.reshape(T * N, K), ms.reshape(T * N, H), dW_hr, ta=1, accumulate=1)
    io.finish()


def _step(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates, W_hr=None):
    N, I = x_t.shape
    H, K = c.shape[1], h.shape[1]
    ms = cuda.device_array((1, N, H), x_t.dtype) if W_hr is not None else None
    y = cuda.device_array((1, N, K), x_t.dtype)
    cs = cuda.device_array((1, N, H), x_t.dtype)
    _run_forward(x_t.reshape(1, N, I), h, c, W_ih, W_hh, b, y, h_out, c_out,
                 gates.reshape(1, N, 4 * H), cs, W_hr=W_hr, ms=ms)


def step(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates, *, W_hr=None):
    io = _Args()
    x_t, h, c, W_ih, W_hh, b = (io.inp(a) for a in (x_t, h, c, W_ih, W_hh, b))
    h_out, c_out, gates = (io.out(a) for a in (h_out, c_out, gates))
    _step(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates, None if W_hr is None else io.inp(W_hr))
    io.finish()


def step_layers(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates, *, W_hr=None):
    io = _Args()
    x_t, h, c = (io.inp(a) for a in (x_t, h, c))
    h_out, c_out, gates = (io.out(a) for a in (h_out, c_out, gates))
    for layer in range(len(W_ih)):
        inp = x_t if layer == 0 else h_out[layer - 1]
        _step(inp, h[layer], c[layer], io.inp(W_ih[layer]), io.inp(W_hh[layer]), io.inp(b[layer]),
              h_out[layer], c_out[layer], gates, None if W_hr is None else io.inp(W_hr[layer]))
    io.finish()


# -- the layer's array namespace: the rest of what _arrays.HostArrays offers ----------
def add(a, b):
    return _elementwise("add", a, b)


def concat_features(arrays):
    """[(T, N, F1), (T, N, F2)] -> (T, N, F1 + F2) (the two directions of a layer)."""
    a, b = arrays
    out = cuda.device_array(a.shape[:2] + (a.shape[2] + b.shape[2],), a.dtype)
    if out.size:
        kernels(a.dtype).concat_features[_grid(out.size), THREADS](a, b, out)
    return out


def take_features(a, start, stop):
    out = cuda.device_array(a.shape[:2] + (stop - start,), a.dtype)
    if out.size:
        kernels(a.dtype).take_features[_grid(out.size), THREADS](a, start, out)
    return out
