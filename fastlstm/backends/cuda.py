"""CUDA backend (Numba): the reference.py contract on an NVIDIA GPU.

Each argument may be a NumPy array (copied to the device and, for outputs,
back) or a device array (a Numba device array or anything with
``__cuda_array_interface__``: CuPy, PyTorch CUDA tensors), used in place.
Forward: one GEMM for the input projection of all steps, then the time loop,
either one persistent cooperative launch (W_hh slices kept in shared memory)
or one fused launch per step (FASTLSTM_CUDA_LOOP). Backward mirrors it, then
GEMMs over all steps for dx, dW_ih, dW_hh. Kernels: _cuda_kernels.py.
Importing this module raises ImportError when numba-cuda, a GPU or the CUDA
compiler libraries (NVVM, libdevice) are missing, saying which and how to fix it
(NUMBA_ENABLE_CUDASIM=1, set before numba is imported, runs the simulator).
"""

import contextlib
import contextvars
import ctypes
import math
import threading
import warnings
from typing import NamedTuple

import numpy as np

try:
    import numba
    from numba import cuda
except ImportError as exc:  # the optional extra is not installed
    raise ImportError(f"numba-cuda is not installed ({exc}); pip install 'fastlstm[cuda]'") from exc

from .. import _config
from .. import _validate as v

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)

#: How to get the CUDA compiler libraries numba-cuda needs (NVVM, libdevice, NVRTC).
TOOLKIT_FIX = ("pip install 'fastlstm[cuda]' (numba-cuda[cu12]: NVVM, libdevice and NVRTC as wheels; they "
               "run on CUDA 12 and 13 drivers; next to PyTorch's CUDA 13 wheels use numba-cuda[cu13]), "
               "or conda install -c conda-forge cuda-nvcc cuda-nvrtc, or set CUDA_HOME to a CUDA toolkit")


def _nvvm_problem(nvvm=None, libs=None):
    """None when numba-cuda finds NVVM and libdevice (what it compiles kernels with), else
    why not and how to fix it. ``nvvm`` and ``libs``: numba.cuda.cudadrv's modules (tests pass fakes)."""
    try:
        if nvvm is None or libs is None:
            from numba.cuda.cudadrv import libs, nvvm
        if not getattr(nvvm, "is_available", lambda: True)():
            raise RuntimeError("libNVVM could not be loaded")
        nvvm.NVVM()  # loads libNVVM; NvvmSupportError without it
        if not libs.get_libdevice():  # finds libdevice (and NVRTC, which numba-cuda also looks up there)
            raise RuntimeError("libdevice.10.bc not found")
    except Exception as exc:  # noqa: BLE001 (any failure here is a missing or broken toolkit)
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        return (f"a CUDA driver is here but numba-cuda cannot find NVVM/libdevice, the CUDA compiler "
                f"libraries it builds kernels with ({detail}); {TOOLKIT_FIX}")
    return None


def _gpu_problem(driver=None):
    """Why numba.cuda.is_available() is False: no CUDA driver, a driver that sees no GPU,
    or (the driver works) no NVVM. ``driver``: numba-cuda's Driver (tests pass fakes)."""
    try:
        if driver is None:
            from numba.cuda.cudadrv.driver import driver
        try:
            _ = driver.is_available  # initialises the driver once; a failure stays in initialization_error
        except Exception:  # noqa: BLE001 (the same failure, read below)
            pass
        error = driver.initialization_error
    except Exception as exc:  # noqa: BLE001 (numba-cuda internals changed: say what we know)
        error = f"{type(exc).__name__}: {exc}"
    simulator = "NUMBA_ENABLE_CUDASIM=1 runs the CUDA simulator instead"
    if error is None:  # the driver works: what numba.cuda.is_available() missed is NVVM
        return _nvvm_problem() or f"numba.cuda.is_available() is False; {simulator}"
    error = " ".join(str(error).split())
    if "NO_DEVICE" in error:
        return (f"a CUDA driver is here but it sees no GPU ({error}); check CUDA_VISIBLE_DEVICES "
                f"and nvidia-smi; {simulator}")
    return f"no usable CUDA GPU or driver ({error}); {simulator}"


if not cuda.is_available():  # always True under the simulator
    raise ImportError(_gpu_problem())

if not SIMULATOR:
    _problem = _nvvm_problem()
    if _problem is not None:  # numba.cuda.is_available() checks NVVM loosely, libdevice not at all
        raise ImportError(_problem)

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

try:  # numba-cuda 0.2x+ warns with its own class, not numba.core's
    from numba.cuda.core.errors import NumbaPerformanceWarning
except ImportError:
    from numba.core.errors import NumbaPerformanceWarning  # type: ignore[no-redef]

NAME = "cuda"
on_device = True                            # this module is also the layer's array namespace
THREADS = 16 if SIMULATOR else 256          # threads per block of the elementwise kernels
MAX_BLOCKS = 1 if SIMULATOR else 4096       # grid-stride kernels cap their grid here
_persistent_refused = set()                 # shapes whose cooperative grid does not fit
#: "tiled" (shared-memory, register-blocked) or "simple" (one thread per output,
#: what the simulator runs in the layer tests; tests run the tiled one directly).
GEMM = "simple" if SIMULATOR else "tiled"


# -- device arrays --------------------------------------------------------------
def is_device_array(a, name=None):
    """True for Numba device arrays and objects with __cuda_array_interface__; a CUDA tensor
    that requires grad is a TypeError saying to pass .detach() (the rule: _validate.is_device_array)."""
    return bool(cuda.devicearray.is_cuda_ndarray(a)) or v.is_device_array(a, name)


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


# -- the caller's stream -----------------------------------------------------------
# Every launch and copy of one public call goes on one stream, chosen from the
# caller's arrays by stream_handle: PyTorch's or CuPy's current stream for their
# tensors, the stream a Numba device array was made on, the "stream" entry of a
# version-3 __cuda_array_interface__; else the default stream. (PyTorch's side
# streams are non-blocking: work on the legacy default stream would not wait for
# them, nor they for it.) Arrays this module allocates remember the stream, so a
# backward finds its forward's stream in the saved arrays.
_CALL_STREAM: contextvars.ContextVar = contextvars.ContextVar("fastlstm_cuda_stream", default=None)
_STREAMS: dict = {}                          # handle -> Numba stream object, made once
LEGACY_DEFAULT_STREAM, PER_THREAD_DEFAULT_STREAM = 1, 2   # the interface's two special handles


def stream_handle(a):
    """The CUDA stream (its handle; 0 for the default stream) the caller uses ``a`` on,
    or None when ``a`` does not say (a host array, or a device array on the default stream)."""
    if a is None or isinstance(a, np.ndarray):
        return None
    if isinstance(a, CallStream):
        return int(a) or None
    if cuda.devicearray.is_cuda_ndarray(a):
        s = getattr(a, "stream", 0)
        return int(s) or None if s and not SIMULATOR else None
    top = type(a).__module__.partition(".")[0]
    if top == "torch" and getattr(a, "is_cuda", False):
        import torch
        return int(torch.cuda.current_stream(a.device).cuda_stream) or None
    if top == "cupy":
        import cupy
        return int(cupy.cuda.get_current_stream().ptr) or None
    try:
        face = a.__cuda_array_interface__
    except Exception:  # noqa: BLE001 (torch raises RuntimeError for tensors that require grad)
        return None
    handle = face.get("stream") if isinstance(face, dict) else None
    return None if handle in (None, LEGACY_DEFAULT_STREAM) else int(handle)


def _stream_object(handle):
    """What Numba takes for stream ``handle`` (0: the default stream)."""
    if not handle or SIMULATOR:
        return 0
    s = _STREAMS.get(handle)
    if s is None:
        s = cuda.per_thread_default_stream() if handle == PER_THREAD_DEFAULT_STREAM \
            else cuda.external_stream(handle)
        _STREAMS[handle] = s
    return s


@contextlib.contextmanager
def callers_stream(*arrays):
    """Run the enclosed work on the stream of the first of ``arrays`` that names one
    (stream_handle); inside an enclosing call's scope, that call's stream stays."""
    if _CALL_STREAM.get() is not None:
        yield
        return
    handle = next((h for h in map(stream_handle, arrays) if h is not None), 0)
    token = _CALL_STREAM.set(handle)
    try:
        yield
    finally:
        _CALL_STREAM.reset(token)


class CallStream(int):
    """A call's stream handle, kept by a training forward's cache so that its backward
    runs on the same stream (as PyTorch's autograd does)."""


def call_stream():
    """The stream of the call in progress, as a CallStream."""
    return CallStream(_CALL_STREAM.get() or 0)


def buffer_tag():
    """The call's stream handle: buffers kept across calls are kept per stream."""
    return _CALL_STREAM.get() or 0


def current_stream():
    """The stream this call's work goes on (a Numba stream object, or 0 for the default)."""
    return _stream_object(_CALL_STREAM.get() or 0)


_LAUNCHES: dict = {}
_LAUNCH_CACHE_LIMIT = 4096


def _launch(kernel, grid, block, smem=0):
    """``kernel`` configured for this grid, block and dynamic shared memory on the call's
    stream. Configurations are kept (the same shapes come back every step), and Numba's
    low-occupancy warning is silenced: our small grids (one per step of a small batch)
    are deliberate, and the user's own launches still warn."""
    handle = _CALL_STREAM.get() or 0
    if SIMULATOR:  # the simulator's kernel[...] configures the kernel object itself: no keeping
        return kernel[grid, block, 0, smem]
    key = (kernel, grid, block, handle, smem)
    configured = _LAUNCHES.get(key)
    if configured is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NumbaPerformanceWarning)
            configured = kernel[grid, block, _stream_object(handle), smem]
        if len(_LAUNCHES) >= _LAUNCH_CACHE_LIMIT:
            _LAUNCHES.clear()
        _LAUNCHES[key] = configured
    return configured


def _grid(count):
    return max(1, min(MAX_BLOCKS, math.ceil(count / THREADS)))


def _each(kernel, count):
    """``kernel`` launched grid-stride over ``count`` items (the elementwise kernels)."""
    return _launch(kernel, _grid(count), THREADS)


# -- device arrays ------------------------------------------------------------------
def as_device(a):
    """A Numba device array for ``a``: device arrays as they are, host arrays copied over."""
    if cuda.devicearray.is_cuda_ndarray(a):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        return _from_interface(a)
    return cuda.to_device(np.ascontiguousarray(a), stream=current_stream())


def as_device_array(name, value, dtype):
    """Validated device array of ``dtype`` for the public API (host input is copied over)."""
    dtype = np.dtype(dtype)
    if not is_device_array(value):
        return cuda.to_device(v.as_real_array(name, value, dtype), stream=current_stream())
    d = as_device(value)
    if d.dtype != dtype:
        raise TypeError(f"{name} is a device array of dtype {d.dtype}; this computation runs in "
                        f"{dtype}: convert it on the device first")
    if d.size and not d.is_c_contiguous():
        raise ValueError(f"{name} must be a C-contiguous device array (copy it on the device first)")
    return d


as_array = as_device_array


def empty(shape, dtype):
    return cuda.device_array(shape, np.dtype(dtype), stream=current_stream())


def zeros(shape, dtype):
    """Zeros on the device, set there (a memset on the call's stream, no upload)."""
    if SIMULATOR:
        return cuda.to_device(np.zeros(shape, dtype))
    out = empty(shape, dtype)
    if out.size:
        from numba.cuda.cudadrv.driver import device_memset
        device_memset(out, 0, out.nbytes, stream=current_stream())
    return out


def copy(a):
    out = empty(a.shape, a.dtype)
    if a.size:
        out.copy_to_device(a, stream=current_stream())
    return out


def to_host(a):
    stream = current_stream()
    out = a.copy_to_host(stream=stream)
    if stream:
        stream.synchronize()
    return out


class _Scratch:
    """Device buffers that do not outlive one call (W_hh transposed, lengths, the
    previous-h and dh arrays of backward), kept for the next call of the same shape on
    the same stream instead of a cuMemAlloc/cuMemFree each time. Work on one stream
    runs in order, so a buffer given back at the end of a call is free for the next
    call on that stream."""

    LIMIT_BYTES = 1 << 30  # kept, all shapes together; past it the pool starts again

    def __init__(self):
        self._free = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, shape, dtype):
        key = (tuple(shape), np.dtype(dtype).str, buffer_tag())
        with self._lock:
            kept = self._free.get(key)
            if kept:
                a = kept.pop()
                self._bytes -= a.nbytes
                return a
        return empty(shape, dtype)

    def give(self, *arrays):
        tag = buffer_tag()
        with self._lock:
            for a in arrays:
                if a is None:
                    continue
                if self._bytes + a.nbytes > self.LIMIT_BYTES:
                    self._free.clear()
                    self._bytes = 0
                self._free.setdefault((tuple(a.shape), a.dtype.str, tag), []).append(a)
                self._bytes += a.nbytes


_scratch = _Scratch()


def swap01(a):
    """(A, B, F) -> (B, A, F), contiguous, on the device (batch_first at the edge)."""
    out = empty((a.shape[1], a.shape[0], a.shape[2]), a.dtype)
    if a.size:
        _each(kernels(a.dtype).swap01, a.size)(a, out)
    return out


def _elementwise(kernel_name, a, b):
    out = empty(a.shape, a.dtype)
    if a.size:
        kernel = getattr(kernels(a.dtype), kernel_name)
        _each(kernel, a.size)(a.reshape(a.size), b.reshape(b.size), out.reshape(out.size))
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
        d = cuda.to_device(a, stream=current_stream()) if upload else empty(a.shape, a.dtype)
        self._back.append((d, a))
        return d

    def finish(self):
        stream = current_stream()
        for d, host in self._back:
            if host.size:
                d.copy_to_host(host, stream=stream)
        if stream and self._back:
            stream.synchronize()


# -- kernel launches ----------------------------------------------------------------
def _gemm(k, A, B, C, bias=None, ta=0, tb=0, accumulate=0):
    M, P = C.shape
    if M == 0 or P == 0:
        return
    if bias is None:
        bias = _no_bias(C.dtype)
    if GEMM == "simple":
        _each(k.gemm_simple, M * P)(A, B, C, bias, ta, tb, accumulate)
        return
    blocks, threads = gemm_launch(M, P, k.gemm_tile, k.gemm_threads)
    _launch(k.gemm, blocks, threads)(A, B, C, bias, ta, tb, accumulate)


_NO_BIAS: dict = {}


def _no_bias(dtype):
    """An empty bias array of ``dtype`` (the GEMM without a bias), made once."""
    key = np.dtype(dtype).str
    if key not in _NO_BIAS:
        _NO_BIAS[key] = cuda.device_array(0, dtype)
    return _NO_BIAS[key]

#: The largest grid x a CUDA device takes.
MAX_GRID_X = 2**31 - 1


def gemm_launch(M, P, tile, side):
    """(grid, block) of the tiled GEMM for an (M, P) output: one block per tile, on
    grid x (see _cuda_kernels.gemm)."""
    blocks = math.ceil(M / tile) * math.ceil(P / tile)
    if blocks > MAX_GRID_X:
        raise ValueError(f"a product of {M} x {P} outputs needs {blocks} tiles, more than a grid holds")
    return (blocks,), (side, side)


class PersistentPlan(NamedTuple):
    """How a persistent kernel is launched: ``blocks`` blocks of ``threads`` threads,
    each owning ``units`` hidden units; with ``use_smem`` their W_hh slice
    (``smem_bytes``) is kept in shared memory."""
    blocks: int
    units: int
    threads: int
    use_smem: bool
    smem_bytes: int


#: Shared memory every CUDA device gives a block without opting in.
DEFAULT_BLOCK_SMEM = 48 * 1024


def device_limits():
    """(multiprocessors, shared bytes a block may opt into) of the current device."""
    if SIMULATOR:
        return 1, DEFAULT_BLOCK_SMEM
    dev = cuda.get_current_device()
    try:
        optin = int(dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
    except (AttributeError, ValueError):  # an older driver binding
        optin = DEFAULT_BLOCK_SMEM
    return int(dev.MULTIPROCESSOR_COUNT), max(optin, DEFAULT_BLOCK_SMEM)


def persistent_plan(N, H, itemsize, limits=None):
    """The PersistentPlan for a batch of N rows of H units (None when the per-step loop
    is forced). Blocks: one per multiprocessor at most. Shared memory: a block's slice
    of W_hh (4 * units * H numbers) when it fits in what the block may opt into
    (``limits``: device_limits()), capped by FASTLSTM_CUDA_SMEM_BYTES when that is set."""
    if _config.cuda_loop() == "steps":
        return None
    sms, optin = device_limits() if limits is None else limits
    if SIMULATOR:
        # The simulator synchronises a grid only when it is one block.
        blocks, hb, threads = 1, H, max(1, min(THREADS, N * H))
    else:
        blocks = min(H, sms)
        hb = math.ceil(H / blocks)
        blocks = math.ceil(H / hb)
        threads = min(PERSISTENT_THREADS, 32 * math.ceil(N * hb / 32))
    smem = 4 * hb * H * itemsize
    cap = _config.cuda_smem_bytes()
    budget = optin if cap is None else min(cap, optin)
    use_smem = smem <= budget
    return PersistentPlan(blocks, hb, threads, use_smem, smem if use_smem else 0)


def _compile(kernel, args):
    """The compiled kernel a launch with ``args`` runs (numba compiles once per signature)."""
    return kernel.compile(tuple(kernel.typeof_pyval(a) for a in args))


_SMEM_ALLOWED: dict = {}  # compiled kernel -> dynamic shared bytes it is allowed


def allow_dynamic_shared(compiled, nbytes):
    """Let ``compiled`` launch with ``nbytes`` of dynamic shared memory: above 48 KiB a
    kernel needs the MAX_DYNAMIC_SHARED_SIZE_BYTES attribute, which numba-cuda does not
    set (the CUDA driver call that numba uses for its carveout attribute)."""
    if nbytes <= DEFAULT_BLOCK_SMEM or _SMEM_ALLOWED.get(compiled, 0) >= nbytes:
        return
    from numba.cuda.cudadrv import driver as drv
    cufunc = compiled._codelibrary.get_cufunc()   # numba-cuda has no public handle for this
    attr = drv.binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    if hasattr(drv.driver, "cuKernelSetAttribute"):   # numba-cuda >= 0.2x loads CUkernels
        drv.driver.cuKernelSetAttribute(attr, nbytes, cufunc.handle, cufunc.device.id)
    else:
        drv.driver.cuFuncSetAttribute(cufunc.handle, attr, nbytes)
    _SMEM_ALLOWED[compiled] = nbytes


def _try_persistent(kernel, plan, key, *args):
    """Launch a persistent kernel; False when its cooperative grid cannot be co-resident.

    The device is asked first (max_cooperative_grid_blocks for the compiled kernel at
    this block and shared-memory size, after allowing that much shared memory). Too
    large: in auto mode a warning (once per shape) and the caller loops per step; with
    FASTLSTM_CUDA_LOOP=persistent an error. Anything else (compile errors, launch
    faults) is raised, never hidden.
    """
    if plan is None or key in _persistent_refused:
        return False
    blocks, hb, threads, use_smem, smem = plan
    args = (*args, hb, use_smem)
    if not SIMULATOR:
        compiled = _compile(kernel, args)
        allow_dynamic_shared(compiled, smem)
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
    _launch(kernel, blocks, threads, smem)(*args)
    return True


_FULL_LENGTHS: dict = {}   # (T, N, stream) -> a device array of N times T (kernels only read it)


def _lengths_on_device(lengths, T, N):
    """Each row's length as a device array (T for every row when lengths is None). The
    full-length array is made once per shape and stream: an upload from pageable host
    memory waits for the stream to drain, which would stall every call."""
    if lengths is None:
        key = (T, N, buffer_tag())
        if key not in _FULL_LENGTHS:
            if len(_FULL_LENGTHS) > 256:
                _FULL_LENGTHS.clear()
            _FULL_LENGTHS[key] = cuda.to_device(np.full(N, T, np.int64), stream=current_stream())
        return _FULL_LENGTHS[key]
    lens = _scratch.take((N,), np.int64)
    lens.copy_to_device(np.asarray(lengths, np.int64), stream=current_stream())
    return lens


def _run_forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, lengths=None, reverse=False,
                 W_hr=None, ms=None):
    """The forward contract on device arrays (lengths a host array or None)."""
    T, N, I = x.shape
    H = cs.shape[2]
    K = W_hh.shape[1]  # features of h: H, or P with a projection
    G = 4 * H
    stream = current_stream()
    if N == 0:
        return
    if T == 0:
        hT.copy_to_device(h0, stream=stream)
        cT.copy_to_device(c0, stream=stream)
        return
    k = kernels(x.dtype)
    _gemm(k, x.reshape(T * N, I), W_ih, gates.reshape(T * N, G), bias=b, tb=1)
    WhhT = _scratch.take((K, G), x.dtype)
    _each(k.transpose, G * K)(W_hh, WhhT)
    lens = _lengths_on_device(lengths, T, N)
    plain = lengths is None and not reverse and W_hr is None
    plan = persistent_plan(N, H, x.dtype.itemsize) if plain else None
    if not _try_persistent(k.forward_persistent, plan, ("fwd", N, H, x.dtype.str),
                           lens, gates, cs, y, h0, c0, WhhT):
        if lengths is not None:
            _each(k.zero_past_lengths, y.size)(y, lens)  # outputs past the ends are zero
            if W_hr is not None:  # read by backward's dW_hr product, where dh is zero
                _each(k.zero_past_lengths, ms.size)(ms, lens)
        out = y if W_hr is None else ms
        step = _each(k.forward_step, N * H)
        project = _each(k.rows_product, N * K)
        for s in range(T):
            step(s, lens, reverse, gates, cs, y, out, h0, c0, WhhT)
            if W_hr is not None:
                project(s, lens, reverse, ms, W_hr, y, True, True)
    if plain:
        hT.copy_to_device(y[T - 1], stream=stream)
        cT.copy_to_device(cs[T - 1], stream=stream)
    else:
        _each(k.final_state, N * (K + H))(lens, reverse, y, cs, h0, c0, hT, cT)
    _scratch.give(WhhT, None if lengths is None else lens)


#: The keyword options of the contract this backend runs.
OPTIONS = ("lengths", "reverse", "projection")


def forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, keep=True, *, lengths=None,
            reverse=False, W_hr=None, ms=None):
    with callers_stream(x, W_ih, y):
        io = _Args()
        x, h0, c0, W_ih, W_hh, b = (io.inp(a) for a in (x, h0, c0, W_ih, W_hh, b))
        y, hT, cT, gates, cs = (io.out(a) for a in (y, hT, cT, gates, cs))
        if W_hr is not None:
            W_hr, ms = io.inp(W_hr), io.out(ms)
        _run_forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, lengths, reverse, W_hr, ms)
        io.finish()


def backward(x, h0, c0, W_ih, W_hh, y, gates, cs, dy, dhT, dcT, dx, dh0, dc0, dW_ih, dW_hh, db, *,
             lengths=None, reverse=False, W_hr=None, ms=None, dW_hr=None):
    with callers_stream(dy, y, x):
        io = _Args()
        x, h0, c0, W_ih, W_hh, y, cs, dy, dhT, dcT = (
            io.inp(a) for a in (x, h0, c0, W_ih, W_hh, y, cs, dy, dhT, dcT))
        gates = io.out(gates, upload=True)
        dx, dh0, dc0 = (io.out(a) for a in (dx, dh0, dc0))
        dW_ih, dW_hh, db = (io.out(a, upload=True) for a in (dW_ih, dW_hh, db))
        if W_hr is not None:
            W_hr, ms, dW_hr = io.inp(W_hr), io.inp(ms), io.out(dW_hr, upload=True)
        _run_backward(x, h0, c0, W_ih, W_hh, y, gates, cs, dy, dhT, dcT, dx, dh0, dc0, dW_ih, dW_hh,
                      db, lengths, reverse, W_hr, ms, dW_hr)
        io.finish()


def _run_backward(x, h0, c0, W_ih, W_hh, y, gates, cs, dy, dhT, dcT, dx, dh0, dc0, dW_ih, dW_hh, db,
                  lengths, reverse, W_hr, ms, dW_hr):
    """The backward contract on device arrays (lengths a host array or None)."""
    T, N, I = x.shape
    H = cs.shape[2]
    K = W_hh.shape[1]
    G = 4 * H
    stream = current_stream()
    if N == 0:
        return
    if T == 0:
        dh0.copy_to_device(dhT, stream=stream)
        dc0.copy_to_device(dcT, stream=stream)
        return
    k = kernels(x.dtype)
    dc = _scratch.take(dcT.shape, x.dtype)
    dc.copy_to_device(dcT, stream=stream)
    lens = _lengths_on_device(lengths, T, N)
    plain = lengths is None and not reverse and W_hr is None
    plan = persistent_plan(N, H, x.dtype.itemsize) if plain else None
    dhs = dm = None
    if not _try_persistent(k.backward_persistent, plan, ("bwd", N, H, x.dtype.str),
                           lens, gates, cs, c0, dy, dhT, W_hh, dc, dh0):
        if lengths is not None:
            _each(k.zero_past_lengths, gates.size)(gates, lens)  # no gradient there
        if W_hr is not None:
            dm = _scratch.take((1, N, H), x.dtype)
            dhs = zeros((T, N, K), x.dtype)
        step = _each(k.backward_step, N * H)
        project = _each(k.rows_product, N * H)
        grads_step = _each(k.projected_grads_step, N * K)
        for s in range(T - 1, -1, -1):
            if W_hr is not None:
                grads_step(s, lens, reverse, gates, dy, dhT, W_hh, dhs)
                project(s, lens, reverse, dhs, W_hr, dm, False, False)
            step(s, lens, reverse, gates, cs, c0, dy, dhT, W_hh, dc, dc if W_hr is None else dm[0],
                 W_hr is not None)
        _each(k.backward_first_dh, N * K)(lens, reverse, gates, W_hh, dhT, dh0)
    dc0.copy_to_device(dc, stream=stream)
    dP = gates.reshape(T * N, G)
    _gemm(k, dP, W_ih, dx.reshape(T * N, I))
    x_used = x
    if lengths is not None:  # padding may hold anything (NaN too): it must not reach dW_ih
        x_used = _scratch.take(x.shape, x.dtype)
        x_used.copy_to_device(x, stream=stream)
        _each(k.zero_past_lengths, x.size)(x_used, lens)
    _gemm(k, dP, x_used.reshape(T * N, I), dW_ih, ta=1, accumulate=1)
    h_prev = _scratch.take((T, N, K), x.dtype)
    _each(k.previous_h, h_prev.size)(lens, reverse, y, h0, h_prev)
    _gemm(k, dP, h_prev.reshape(T * N, K), dW_hh, ta=1, accumulate=1)
    _each(k.column_sums, G)(dP, db)
    if dhs is not None:
        _gemm(k, dhs.reshape(T * N, K), ms.reshape(T * N, H), dW_hr, ta=1, accumulate=1)
    _scratch.give(dc, None if lengths is None else lens, dm, h_prev, None if x_used is x else x_used)


def _step(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates, W_hr=None):
    N, I = x_t.shape
    H, K = c.shape[1], h.shape[1]
    ms = empty((1, N, H), x_t.dtype) if W_hr is not None else None
    y = empty((1, N, K), x_t.dtype)
    cs = empty((1, N, H), x_t.dtype)
    _run_forward(x_t.reshape(1, N, I), h, c, W_ih, W_hh, b, y, h_out, c_out,
                 gates.reshape(1, N, 4 * H), cs, W_hr=W_hr, ms=ms)


def step(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates, *, W_hr=None):
    with callers_stream(x_t, h):
        io = _Args()
        x_t, h, c, W_ih, W_hh, b = (io.inp(a) for a in (x_t, h, c, W_ih, W_hh, b))
        h_out, c_out, gates = (io.out(a) for a in (h_out, c_out, gates))
        _step(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates, None if W_hr is None else io.inp(W_hr))
        io.finish()


def step_layers(x_t, h, c, W_ih, W_hh, b, h_out, c_out, gates, *, W_hr=None):
    with callers_stream(x_t, h):
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
    out = empty(a.shape[:2] + (a.shape[2] + b.shape[2],), a.dtype)
    if out.size:
        _each(kernels(a.dtype).concat_features, out.size)(a, b, out)
    return out


def take_features(a, start, stop):
    out = empty(a.shape[:2] + (stop - start,), a.dtype)
    if out.size:
        _each(kernels(a.dtype).take_features, out.size)(a, start, out)
    return out
