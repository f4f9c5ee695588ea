"""Functional single-layer LSTM for users who keep their own weights.

``lstm_forward`` / ``lstm_backward`` validate, allocate and call a backend;
the multi-layer ``fastlstm.LSTM`` is built on the private helpers here.
Time-major: x is (T, N, I); the state is a pair of (N, H) arrays. Device
arrays (CUDA) in give device arrays out, computed by the cuda backend.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _validate as v
from ._arrays import HostArrays, backend_and_arrays
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


class Workspace:
    """Reuses the large per-call buffers (gates, c_t) of one layer object.

    Fresh multi-megabyte arrays cost page faults on every call; a layer that
    is called again with the same shapes gets its previous buffers back. At
    most ``limit`` buffers are kept. A buffer taken belongs to its caller until
    given back, so calls from several threads never share one (hence the lock).
    """

    def __init__(self, limit=8):
        self.limit = limit
        self._free = []
        self._lock = threading.Lock()

    def take(self, shape, dtype):
        with self._lock:
            for k, a in enumerate(self._free):
                if a.shape == shape and a.dtype == dtype:
                    return self._free.pop(k)
        return np.empty(shape, dtype)

    def give(self, *arrays):
        with self._lock:
            self._free.extend(arrays)
            del self._free[:-self.limit]


def run_forward(be, x, h0, c0, W_ih, W_hh, b, training, hT=None, cT=None, workspace=None,
                xp=HostArrays):
    """Validated arrays in; (y, hT, cT, cache or None) out. ``xp``: where x lives."""
    T, N, _ = x.shape
    H = W_hh.shape[1]
    dt = x.dtype
    if xp.on_device:
        workspace = None  # the workspace keeps host buffers
    take = workspace.take if workspace is not None else xp.empty
    y = xp.empty((T, N, H), dt)
    hT = xp.empty((N, H), dt) if hT is None else hT
    cT = xp.empty((N, H), dt) if cT is None else cT
    gates = take((T, N, 4 * H), dt)
    cs = take((T, N, H), dt)
    be.forward(x, h0, c0, W_ih, W_hh, b, y, hT, cT, gates, cs, keep=training)
    if training:
        return y, hT, cT, LSTMCache(be, x, h0, c0, W_ih, W_hh, y, gates, cs, arrays=xp)
    if workspace is not None:
        workspace.give(gates, cs)
    return y, hT, cT, None


def run_backward(cache, dy, dhT, dcT, dW_ih, dW_hh, db, dh0=None, dc0=None, workspace=None):
    """Validated arrays in; (dx, dh0, dc0) out; parameter gradients accumulate."""
    if cache.consumed:
        raise RuntimeError("backward was already run on this forward pass; run a training forward again")
    x = cache.x
    dt = x.dtype
    N, H = cache.h0.shape
    xp = cache.arrays
    if xp.on_device:
        workspace = None
    dx = xp.empty(x.shape, dt)
    dh0 = xp.empty((N, H), dt) if dh0 is None else dh0
    dc0 = xp.empty((N, H), dt) if dc0 is None else dc0
    cache.consumed = True  # the backend overwrites the saved gates
    cache.backend.backward(x, cache.h0, cache.c0, cache.W_ih, cache.W_hh, cache.y,
                           cache.gates, cache.cs, dy, dhT, dcT, dx, dh0, dc0, dW_ih, dW_hh, db)
    if workspace is not None:
        workspace.give(cache.gates, cache.cs)
    cache.gates = cache.cs = None
    return dx, dh0, dc0


def _state_or_zeros(name, state, N, H, dt, xp=HostArrays):
    pair = v.as_pair(name, state)
    if pair is None:
        return xp.zeros((N, H), dt), xp.zeros((N, H), dt)
    out = []
    for k, value in enumerate(pair):
        if value is None:
            out.append(xp.zeros((N, H), dt))
            continue
        arr = xp.as_array(f"{name}[{k}]", value, dt)
        out.append(v.check_shape(f"{name}[{k}]", arr, (N, H), "(N, H)"))
    return tuple(out)


def lstm_forward(x: Any, weight_ih: Any, weight_hh: Any, bias_ih: Any = None, bias_hh: Any = None,
                 state: Any = None, *, training: bool = True,
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
    weight_hh : array_like, shape (4H, H)
    bias_ih, bias_hh : array_like, shape (4H,), optional
    state : pair of array_like (h0, c0), each (N, H), optional
        Zeros when omitted.
    training : bool
        Keep what ``lstm_backward`` needs (returned as the cache).
    backend : str
        "auto", "c", "numpy" or "cuda".

    Returns
    -------
    y : ndarray (T, N, H)
        h_t for every step.
    (h_n, c_n) : pair of ndarray (N, H)
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
    if is_device_array(weight_ih):
        # The interface's typestr, not .dtype: a torch tensor's dtype is not NumPy's.
        face = getattr(weight_ih, "__cuda_array_interface__", None)
        dt = np.dtype(face["typestr"] if face is not None else weight_ih.dtype)
    else:
        dt = np.asarray(weight_ih).dtype
    dt = v.check_dtype(dt if dt.kind == "f" else np.float32)
    be, xp = backend_and_arrays(backend, "x", x)
    W_ih = v.check_shape("weight_ih", xp.as_array("weight_ih", weight_ih, dt), (None, None), "(4H, I)")
    G, I = W_ih.shape
    if G == 0 or G % 4:
        raise ValueError(f"weight_ih must have shape (4H, I) with H >= 1, got shape {W_ih.shape}")
    H = G // 4
    W_hh = v.check_shape("weight_hh", xp.as_array("weight_hh", weight_hh, dt), (G, H), "(4H, H)")
    b = np.zeros(G, dt)
    for name, bias in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if bias is not None:
            bias = xp.to_host(xp.as_array(name, bias, dt))  # G numbers: summed on the host
            b += v.check_shape(name, bias, (G,), "(4H,)")
    x = v.check_shape("x", xp.as_array("x", x, dt), (None, None, I), "(T, N, I)")
    h0, c0 = _state_or_zeros("state", state, x.shape[1], H, dt, xp)
    y, hT, cT, cache = run_forward(be, x, h0, c0, W_ih, W_hh, xp.as_array("b", b, dt), training, xp=xp)
    return y, (hT, cT), cache


def lstm_backward(cache: LSTMCache, dy: Any,
                  dstate: Any = None) -> tuple[Any, tuple[Any, Any], dict[str, Any]]:
    """Gradients of one layer from the cache of a training ``lstm_forward``.

    Parameters
    ----------
    cache : LSTMCache
        From ``lstm_forward(..., training=True)``; consumed (one backward per forward).
    dy : array_like, shape (T, N, H)
        Gradient of the loss with respect to ``y``.
    dstate : pair (dh_n, dc_n) of array_like (N, H), optional
        Gradient with respect to the final state; zeros when omitted.

    Returns
    -------
    dx : ndarray (T, N, I)
        Gradient with respect to x.
    (dh0, dc0) : pair of ndarray (N, H)
        Gradient with respect to the initial state.
    grads : dict
        ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (the two bias
        gradients are equal); device arrays when the forward ran on the device.
    """
    if not isinstance(cache, LSTMCache):
        raise TypeError("cache must be the LSTMCache returned by lstm_forward(..., training=True), "
                        f"got {type(cache).__name__}")
    T, N, _ = cache.x.shape
    G, I = cache.W_ih.shape
    H = G // 4
    dt = cache.x.dtype
    xp = cache.arrays
    dy = v.check_shape("dy", xp.as_array("dy", dy, dt), (T, N, H), "(T, N, H)")
    dhT, dcT = _state_or_zeros("dstate", dstate, N, H, dt, xp)
    dW_ih = xp.zeros((G, I), dt)
    dW_hh = xp.zeros((G, H), dt)
    db = xp.zeros(G, dt)
    dx, dh0, dc0 = run_backward(cache, dy, dhT, dcT, dW_ih, dW_hh, db)
    grads = {"weight_ih": dW_ih, "weight_hh": dW_hh, "bias_ih": db, "bias_hh": xp.copy(db)}
    return dx, (dh0, dc0), grads
