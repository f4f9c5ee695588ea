"""Functional single-layer LSTM for users who keep their own weights.

``lstm_forward`` / ``lstm_backward`` validate, allocate and call a backend;
the multi-layer ``fastlstm.LSTM`` is built on the private helpers here.
Time-major: x is (T, N, I); the state is a pair of (N, H) arrays. Device
arrays (CUDA) in give device arrays out, computed by the cuda backend.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _config
from . import _validate as v
from ._arrays import HostArrays, backend_and_arrays, on_callers_stream
from .backends import is_device_array


@dataclass
class LSTMCache:
    """What backward needs from a training forward pass of one layer.

    Returned by ``lstm_forward(..., training=True)``; pass it to
    ``lstm_backward`` once (backward consumes the saved gates).

    Attributes
    ----------
    backend : module
        The backend that ran the forward pass (backward runs on it too).
    x, h0, c0, W_ih, W_hh, y, gates, cs : arrays
        The inputs, weights and saved results of the forward pass.
    lengths, reverse, W_hr, ms
        The forward's options (per-sequence lengths, direction, projection)
        and, with a projection, the unprojected outputs.
    consumed : bool
        Set once backward has run.
    arrays : namespace
        Where the arrays live (host or device).
    """

    backend: object
    x: np.ndarray        # [T, N, I]
    h0: np.ndarray       # [N, H]
    c0: np.ndarray       # [N, H]
    W_ih: np.ndarray     # [G, I]
    W_hh: np.ndarray     # [G, H]
    y: np.ndarray        # [T, N, H]
    gates: np.ndarray    # [T, N, G] activated gates; consumed by backward
    cs: np.ndarray       # [T, N, H]
    consumed: bool = False
    arrays: Any = HostArrays  # where the arrays live (fastlstm._arrays)
    lengths: Any = None  # [N] int64, or None: every sequence runs T steps
    reverse: bool = False
    W_hr: Any = None     # [P, H] projection, or None
    ms: Any = None       # [T, N, H] o * tanh(c_t) before the projection
    stream: Any = None   # on the device: the forward's CUDA stream (backward runs there too)
    projected: bool = False  # gates were the caller's input projection (and hold dP after backward)


def _new_scratch(shape, dtype, xp=HostArrays):
    """A fresh array (a call's gates, c_t, outputs): on the host one whose data starts a
    64-byte cache line (NumPy's large arrays start 16 bytes past one), so that the C
    kernels' vector stores split no line, a training forward may stream its gates past
    the caches (_config.stream_gates_bytes) and a lengths forward its padded outputs'
    zeros."""
    if xp.on_device:
        return xp.empty(shape, dtype)
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + nbytes].view(dtype).reshape(shape)


class Workspace:
    """Reuses the large per-call buffers (gates, c_t) of one layer object.

    Fresh multi-megabyte arrays cost page faults on every call; a layer that
    is called again with the same shapes gets its previous buffers back. At
    most ``limit`` buffers are kept. A buffer taken belongs to its caller until
    given back, so calls from several threads never share one (hence the lock).
    Device buffers (``xp``: the cuda backend's namespace) are kept apart, per CUDA
    stream (``xp.buffer_tag()``): work on one stream runs in order, so a buffer given
    back after a call's last launch is free for the next call on that stream.
    """

    #: Host buffers smaller than this are not kept: the allocator serves them
    #: without page faults, faster than the lock and the search (a small call, N=1,
    #: takes and gives back a few of them).
    SMALL_BYTES = 1 << 16

    def __init__(self, limit=8):
        self.limit = limit
        self._free = []
        self._lock = threading.Lock()

    @staticmethod
    def _where(xp):
        return (xp, xp.buffer_tag()) if xp.on_device else (xp, None)

    def take(self, shape, dtype, xp=HostArrays):
        if not xp.on_device and math.prod(shape) * np.dtype(dtype).itemsize < self.SMALL_BYTES:
            return np.empty(shape, dtype)
        where = self._where(xp)
        with self._lock:
            for k, (w, a) in enumerate(self._free):
                if w == where and a.shape == shape and a.dtype == dtype:
                    return self._free.pop(k)[1]
        return _new_scratch(shape, dtype, xp)

    def give(self, *arrays, xp=HostArrays):
        if not xp.on_device:
            arrays = tuple(a for a in arrays if a.nbytes >= self.SMALL_BYTES)
            if not arrays:
                return
        where = self._where(xp)
        with self._lock:
            self._free.extend((where, a) for a in arrays)
            del self._free[:-self.limit]


_FALLBACK_WARNED: set = set()


def _backend_with(be, options, xp):
    """``be``, or the NumPy reference when ``be`` does not run these options yet (lengths,
    reverse, projection): a warning once per backend and option, never a wrong result."""
    missing = [k for k, v in options.items() if v is not None and v is not False
               and k not in getattr(be, "OPTIONS", ())]
    if not missing:
        return be
    what = ", ".join(missing)
    if xp.on_device:
        raise NotImplementedError(f"the {be.NAME!r} backend does not run {what} yet")
    from .backends import get_backend
    key = (be.NAME, what)
    if key not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add(key)
        warnings.warn(f"fastlstm: the {be.NAME!r} backend does not run {what} yet; those calls "
                      "run on the NumPy backend (same results, slower)", RuntimeWarning, stacklevel=4)
    return get_backend("numpy")


_SIDE_POOL: list = []
_SIDE_LOCK = threading.Lock()


def _forget_side_thread():
    # A forked child has the pool object but not its thread: jobs sent there would
    # never run. The child makes its own on first use.
    global _SIDE_LOCK
    _SIDE_POOL.clear()
    _SIDE_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_side_thread)


def _side_thread():
    """One worker thread, made on first use, for the second of two tasks run side by side."""
    with _SIDE_LOCK:
        if not _SIDE_POOL:
            _SIDE_POOL.append(ThreadPoolExecutor(1, thread_name_prefix="fastlstm-direction"))
        return _SIDE_POOL[0]


def run_directions(be, tasks, xp=HostArrays, side_by_side=True):
    """Run the callables ``tasks`` (the directions of one layer) and return their results
    in order. Two of them on a backend whose kernels release the GIL
    (``be.SIDE_BY_SIDE``) with two or more threads to spare run at the same time, each
    on half of the threads: each direction's weights stay in its own cores' caches
    and neither waits for the other inside its time loop. ``side_by_side`` False: one
    after the other, each on all of the threads (_config.directions_side_by_side)."""
    if len(tasks) != 2 or not side_by_side:
        return [task() for task in tasks]
    threads = be.max_threads() if getattr(be, "SIDE_BY_SIDE", False) and not xp.on_device else 1
    if threads < 2:
        return [task() for task in tasks]
    half = threads // 2

    def shared(task, n):
        with _config.thread_share(n):
            return task()

    other = _side_thread().submit(shared, tasks[1], threads - half)
    try:
        first = shared(tasks[0], half)
    finally:
        second = other.result()  # waits (and re-raises) even when the first task failed
    return [first, second]


def _options(lengths, reverse, W_hr, ms=None, dW_hr=None, projected=False):
    """The backend call's keyword options: only those in use, so that a backend
    without them serves every call that does not need them."""
    extra = {}
    if projected:
        extra["projected"] = True
    if lengths is not None:
        extra["lengths"] = lengths
    if reverse:
        extra["reverse"] = True
    if W_hr is not None:
        extra["W_hr"] = W_hr
        extra["ms"] = ms
        if dW_hr is not None:
            extra["dW_hr"] = dW_hr
    return extra


def run_forward(be, x, h0, c0, W_ih, W_hh, b, training, hT=None, cT=None, workspace=None,
                xp=HostArrays, lengths=None, reverse=False, W_hr=None, gates=None, y=None,
                packed=None, gates_rows=None):
    """Validated arrays in; (y, hT, cT, cache or None) out. ``xp``: where x lives.

    lengths ([N] int64 or None), reverse and W_hr ([P, H] or None) as in the
    backend contract; h0, hT and y have P features with a projection. ``gates``
    ([T, N, G] or None): the caller's input projection x . W_ih^T + b (the
    contract's ``projected``; x is then [T, N, 0] and W_ih [G, 0]); the buffer
    stays the caller's, and after backward it holds the gradient of the projection.
    ``y``: where the outputs go (a buffer the caller reuses, or, for a backend with
    ``ROW_STRIDED_Y``, a view whose rows lie one stride apart), else a fresh array.
    ``packed``: W_ih and W_hh packed once (the C backend's PackedForward of these
    arrays), for a backend that reads them (``PACKED_WEIGHTS``); others pack nothing.
    ``gates_rows``: with ``gates``, (table [V, G], ids [T * N] int64 in [0, V)): the
    projection's row r is table[ids[r]] and gates is only where the rows go; a backend
    with the ``projected_rows`` option reads them from the table in its loop, for the
    others they are gathered into gates first."""
    T, N, _ = x.shape
    H = W_hh.shape[0] // 4
    K = W_hh.shape[1]  # H, or P with a projection
    dt = x.dtype
    projected = gates is not None
    if lengths is not None or reverse or W_hr is not None or projected:  # else nothing to check
        be = _backend_with(be, {"lengths": lengths, "reverse": reverse, "projection": W_hr,
                                "projected": projected}, xp)
    def take(shape):
        return workspace.take(shape, dt, xp) if workspace is not None else _new_scratch(shape, dt, xp)

    y = _new_scratch((T, N, K), dt, xp) if y is None else y
    hT = xp.empty((N, K), dt) if hT is None else hT
    cT = xp.empty((N, H), dt) if cT is None else cT
    if gates is None:
        gates = take((T, N, 4 * H))
    cs = take((T, N, H))
    ms = take((T, N, H)) if W_hr is not None else None
    extra = _options(lengths, reverse, W_hr, ms, projected=projected)
    if packed is not None and getattr(be, "PACKED_WEIGHTS", False):
        extra["packed"] = packed
    if gates_rows is not None:
        if "projected_rows" in getattr(be, "OPTIONS", ()):
            extra["projected_rows"] = gates_rows
        else:
            table, ids = gates_rows
            np.take(table, ids, axis=0, out=gates.reshape(-1, table.shape[1]))
    be.forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, keep=training, **extra)
    if training:
        return y, hT, cT, LSTMCache(be, x, h0, c0, W_ih, W_hh, y, gates, cs, arrays=xp,
                                    lengths=lengths, reverse=reverse, W_hr=W_hr, ms=ms,
                                    stream=xp.call_stream() if xp.on_device else None,
                                    projected=projected)
    if workspace is not None:
        workspace.give(*(() if projected else (gates,)), cs, *(() if ms is None else (ms,)), xp=xp)
    return y, hT, cT, None


def run_backward(cache, dy, dhT, dcT, dW_ih, dW_hh, db, dh0=None, dc0=None, workspace=None,
                 dW_hr=None, dx=None, rows_grad=None):
    """Validated arrays in; (dx, dh0, dc0) out; parameter gradients (dW_hr too, with a
    projection) accumulate. After a forward on the caller's input projection, dx is
    that projection's gradient, in the caller's buffer. ``dx``: where the input's
    gradient goes (a buffer the caller reuses), else a fresh array. ``rows_grad``:
    after a forward with ``gates_rows`` (table, ids), (ids, dtab): dtab [V, G] += the
    projection's gradient added up by id (a backend with the ``projected_rows`` option
    does it as its loops read dP; else the backend's ``scatter_add_rows`` after)."""
    if cache.consumed:
        raise RuntimeError("backward was already run on this forward pass; run a training forward again")
    x = cache.x
    dt = x.dtype
    N, K = cache.h0.shape
    H = cache.c0.shape[1]
    xp = cache.arrays
    dx = xp.empty(x.shape, dt) if dx is None else dx  # [T, N, 0] for a projected forward
    dh0 = xp.empty((N, K), dt) if dh0 is None else dh0
    dc0 = xp.empty((N, H), dt) if dc0 is None else dc0
    cache.consumed = True  # the backend overwrites the saved gates
    extra = _options(cache.lengths, cache.reverse, cache.W_hr, cache.ms, dW_hr)
    in_loop = rows_grad is not None and "projected_rows" in getattr(cache.backend, "OPTIONS", ())
    if in_loop:
        extra["projected_rows_grad"] = rows_grad
    cache.backend.backward(x, cache.h0, cache.c0, cache.W_ih, cache.W_hh, cache.y,
                           cache.gates, cache.cs, dy, dhT, dcT, dx, dh0, dc0, dW_ih, dW_hh, db,
                           **extra)
    if rows_grad is not None and not in_loop:
        from .backends import reference
        ids, dtab = rows_grad
        scatter = getattr(cache.backend, "scatter_add_rows", reference.scatter_add_rows)
        scatter(ids, cache.gates.reshape(-1, dtab.shape[1]), dtab)
    if cache.projected:
        dx = cache.gates  # dP: the gradient of the caller's projection, in its buffer
    if workspace is not None:
        workspace.give(*(() if cache.projected else (cache.gates,)), cache.cs,
                       *(() if cache.ms is None else (cache.ms,)), xp=xp)
    cache.gates = cache.cs = cache.ms = None
    return dx, dh0, dc0


def _state_or_zeros(name, state, N, H, dt, xp=HostArrays, K=None):
    """(h, c) of shapes (N, K) and (N, H) (K = H without a projection); zeros when omitted."""
    K = H if K is None else K
    pair = v.as_pair(name, state)
    shapes = ((N, K), (N, H))
    letters = ("(N, P)" if K != H else "(N, H)", "(N, H)")
    if pair is None:
        return xp.zeros(shapes[0], dt), xp.zeros(shapes[1], dt)
    out = []
    for k, value in enumerate(pair):
        if value is None:
            out.append(xp.zeros(shapes[k], dt))
            continue
        arr = xp.as_array(f"{name}[{k}]", value, dt)
        out.append(v.check_shape(f"{name}[{k}]", arr, shapes[k], letters[k]))
    return tuple(out)


def _forward_arrays(x=None, weight_ih=None, *args, **kwargs):
    return x, weight_ih, kwargs.get("state")


def _backward_arrays(cache=None, dy=None, *args, **kwargs):
    return dy, getattr(cache, "stream", None)


@on_callers_stream(_forward_arrays)
def lstm_forward(x: Any, weight_ih: Any, weight_hh: Any, bias_ih: Any = None, bias_hh: Any = None,
                 state: Any = None, *, lengths: Any = None, reverse: bool = False, W_hr: Any = None,
                 training: bool = True,
                 backend: str = "auto") -> tuple[Any, tuple[Any, Any], LSTMCache | None]:
    """Run one LSTM layer over a whole sequence.

    Parameters
    ----------
    x : array_like, shape (T, N, I)
        Input sequence, time-major. A device array (Numba, CuPy, PyTorch CUDA:
        anything with ``__cuda_array_interface__``) runs on the cuda backend
        and gives device arrays back; weights and state may then be host or
        device arrays.
    weight_ih : array_like, shape (4H, I)
        Input weights, gates stacked i, f, g, o (PyTorch's ``weight_ih_l0``).
        Its dtype (float32 or float64) sets the computation's dtype.
    weight_hh : array_like, shape (4H, H), or (4H, P) with a projection
    bias_ih, bias_hh : array_like, shape (4H,), optional
    state : pair of array_like (h0, c0), (N, H) each (h0 (N, P) with a projection), optional
        Zeros when omitted.
    lengths : array_like of N integers in [0, T], optional
        Sequence n runs its own first lengths[n] steps (torch's packed sequences):
        y is zero past them, (h_n, c_n) is each sequence's state after its last
        step, the initial state for a length of 0.
    reverse : bool
        Run each sequence from its own last step down to 0 (the reverse half of
        a bidirectional layer).
    W_hr : array_like, shape (P, H), optional
        Projection (torch's ``weight_hr_l0``, 0 < P < H): h_t = W_hr (o * tanh c_t).
    training : bool
        Keep what ``lstm_backward`` needs (returned as the cache).
    backend : str
        "auto", "c", "numpy" or "cuda".

    Returns
    -------
    y : ndarray (T, N, H), or (T, N, P) with a projection
        h_t for every step.
    (h_n, c_n) : pair of ndarray, (N, H) or (N, P), and (N, H)
        The final state.
    cache : LSTMCache or None
        Pass to ``lstm_backward``; None when ``training`` is False.

    Examples
    --------
    >>> import numpy as np, fastlstm
    >>> W_ih, W_hh = np.zeros((8, 3), np.float32), np.zeros((8, 2), np.float32)
    >>> y, (h, c), cache = fastlstm.lstm_forward(np.ones((5, 4, 3), np.float32), W_ih, W_hh)
    >>> y.shape, h.shape
    ((5, 4, 2), (4, 2))
    """
    if is_device_array(weight_ih, "weight_ih"):
        # The interface's typestr, not .dtype: a torch tensor's dtype is not NumPy's.
        face = getattr(weight_ih, "__cuda_array_interface__", None)
        dt = np.dtype(face["typestr"] if face is not None else weight_ih.dtype)
    else:
        dt = v.host_dtype("weight_ih", weight_ih)
    dt = v.check_dtype(dt if dt.kind == "f" else np.float32)
    be, xp = backend_and_arrays(backend, "x", x)
    W_ih = v.check_shape("weight_ih", xp.as_array("weight_ih", weight_ih, dt), (None, None), "(4H, I)")
    G, I = W_ih.shape
    if G == 0 or G % 4:
        raise ValueError(f"weight_ih must have shape (4H, I) with H >= 1, got shape {W_ih.shape}")
    H = G // 4
    K = H
    if W_hr is not None:
        W_hr = v.check_shape("W_hr", xp.as_array("W_hr", W_hr, dt), (None, H), "(P, H)")
        K = W_hr.shape[0]
        if not 0 < K < H:
            raise ValueError(f"W_hr must have shape (P, H) with 0 < P < H = {H}, got shape {W_hr.shape}")
    W_hh = v.check_shape("weight_hh", xp.as_array("weight_hh", weight_hh, dt), (G, K),
                         "(4H, P)" if W_hr is not None else "(4H, H)")
    biases = [v.check_shape(name, xp.as_array(name, bias, dt), (G,), "(4H,)")
              for name, bias in (("bias_ih", bias_ih), ("bias_hh", bias_hh)) if bias is not None]
    if not biases:
        b = xp.zeros(G, dt)
    else:  # summed where they live (no round trip through the host for device biases)
        b = biases[0] if len(biases) == 1 else xp.add(biases[0], biases[1])
    x = v.check_shape("x", xp.as_array("x", x, dt), (None, None, I), "(T, N, I)")
    T, N = x.shape[:2]
    lens = None if lengths is None else v.check_lengths("lengths", lengths, N, T)
    h0, c0 = _state_or_zeros("state", state, N, H, dt, xp, K)
    y, hT, cT, cache = run_forward(be, x, h0, c0, W_ih, W_hh, b, training, xp=xp,
                                   lengths=lens, reverse=bool(reverse), W_hr=W_hr)
    return y, (hT, cT), cache


@on_callers_stream(_backward_arrays)
def lstm_backward(cache: LSTMCache, dy: Any = None,
                  dstate: Any = None) -> tuple[Any, tuple[Any, Any], dict[str, Any]]:
    """Gradients of one layer from the cache of a training ``lstm_forward``.

    Parameters
    ----------
    cache : LSTMCache
        From ``lstm_forward(..., training=True)``; consumed (one backward per forward).
    dy : array_like, shaped like ``y``, or None
        Gradient of the loss with respect to ``y`` (ignored past each sequence's
        length); None for zeros (a loss on the final state only).
    dstate : pair (dh_n, dc_n) of array_like, shaped like (h_n, c_n), optional
        Gradient with respect to the final state; zeros when omitted.

    Returns
    -------
    dx : ndarray (T, N, I)
        Gradient with respect to x.
    (dh0, dc0) : pair of ndarray (N, H)
        Gradient with respect to the initial state.
    grads : dict
        ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (the two bias
        gradients are equal), and ``weight_hr`` with a projection; device arrays
        when the forward ran on the device.
    """
    if not isinstance(cache, LSTMCache):
        raise TypeError("cache must be the LSTMCache returned by lstm_forward(..., training=True), "
                        f"got {type(cache).__name__}")
    T, N, _ = cache.x.shape
    G, I = cache.W_ih.shape
    H = G // 4
    K = cache.W_hh.shape[1]
    dt = cache.x.dtype
    xp = cache.arrays
    if dy is None:
        if dstate is None:
            raise ValueError("lstm_backward needs dy or dstate (or both)")
        dy = xp.zeros((T, N, K), dt)
    letters = "(T, N, P)" if K != H else "(T, N, H)"
    dy = v.check_shape("dy", xp.as_array("dy", dy, dt), (T, N, K), letters)
    dhT, dcT = _state_or_zeros("dstate", dstate, N, H, dt, xp, K)
    dW_ih = xp.zeros((G, I), dt)
    dW_hh = xp.zeros((G, K), dt)
    db = xp.zeros(G, dt)
    dW_hr = None if cache.W_hr is None else xp.zeros(cache.W_hr.shape, dt)
    dx, dh0, dc0 = run_backward(cache, dy, dhT, dcT, dW_ih, dW_hh, db, dW_hr=dW_hr)
    grads = {"weight_ih": dW_ih, "weight_hh": dW_hh, "bias_ih": db, "bias_hh": xp.copy(db)}
    if dW_hr is not None:
        grads["weight_hr"] = dW_hr
    return dx, (dh0, dc0), grads
