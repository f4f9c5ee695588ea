"""fastlstm.LSTM: a multi-layer LSTM with torch.nn.LSTM's conventions.

Parameters are NumPy arrays named and shaped like torch.nn.LSTM's state_dict;
forward/backward/step validate at the edge, then run one backend call per
layer. Gradients accumulate into ``grads``; dropout (between layers, training
only) uses the layer's own seeded generator. Device (CUDA) inputs run on the
cuda backend and give device outputs; parameters and gradients stay NumPy.
Inference calls (forward with training=False, __call__, step) on one object
are safe from several threads at once: their buffers are per call or per
thread. A training forward and its backward belong to one thread.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

import numpy as np

from . import _validate as v
from ._arrays import backend_and_arrays
from ._dropout import keep_mask
from .backends import check_name
from .functional import Workspace, run_backward, run_forward


class LSTM:
    """Multi-layer LSTM, drop-in for ``torch.nn.LSTM`` on NumPy arrays.

    Parameters
    ----------
    input_size, hidden_size : int
        I and H.
    num_layers : int
        L, stacked layers.
    bias : bool
        With ``bias_ih_l{k}`` and ``bias_hh_l{k}`` (as PyTorch).
    batch_first : bool
        x and y are (N, T, features) instead of (T, N, features). States stay (L, N, H).
    dropout : float in [0, 1)
        Dropout on the output of every layer but the last, in training forward passes.
    dtype : float32 or float64
    backend : str
        "auto", "c", "numpy" or "cuda".
    seed : int or None
        Seeds initialisation (U(-1/sqrt(H), 1/sqrt(H)), like PyTorch) and dropout.

    Attributes
    ----------
    params : dict of str to ndarray
        The parameters, named and shaped like ``torch.nn.LSTM.state_dict()``.
    grads : dict of str to ndarray
        Accumulated gradients, same names and shapes.

    Examples
    --------
    >>> import numpy as np, fastlstm
    >>> lstm = fastlstm.LSTM(64, 300, num_layers=2)
    >>> y, (h_n, c_n) = lstm.forward(np.zeros((50, 30, 64), np.float32), training=True)
    >>> dx, (dh0, dc0) = lstm.backward(np.ones_like(y))
    >>> y.shape, h_n.shape
    ((50, 30, 300), (2, 30, 300))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, *,
                 dtype: Any = np.float32, backend: str = "auto", seed: int | None = None) -> None:
        self.input_size = v.check_size("input_size", input_size)
        self.hidden_size = v.check_size("hidden_size", hidden_size)
        self.num_layers = v.check_size("num_layers", num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = v.check_dropout("dropout", dropout)
        self.dtype = v.check_dtype(dtype)
        self.backend = check_name(backend)
        self._rng = np.random.default_rng(seed)
        H, G = self.hidden_size, 4 * self.hidden_size
        k = 1.0 / np.sqrt(H)
        self.params = {}
        for layer in range(self.num_layers):
            I_k = self.input_size if layer == 0 else H
            shapes: dict[str, tuple[int, ...]] = {"weight_ih": (G, I_k), "weight_hh": (G, H)}
            if self.bias:
                shapes.update(bias_ih=(G,), bias_hh=(G,))
            for name, shape in shapes.items():
                self.params[f"{name}_l{layer}"] = self._rng.uniform(-k, k, shape).astype(self.dtype)
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._shapes = {name: p.shape for name, p in self.params.items()}
        self._saved: tuple[list[Any], list[Any], tuple[int, ...], Any] | None = None
        self._per_thread = threading.local()   # bias-sum buffers, one set per thread
        self._layer_keys = [tuple(f"{name}_l{k}" for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
                            for k in range(self.num_layers)]
        self._workspace = Workspace(limit=2 * self.num_layers + 2)
        self._step_workspace = Workspace(limit=4)

    # -- parameters -------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, named and shaped like ``torch.nn.LSTM.state_dict()``.

        Returns
        -------
        dict of str to ndarray
            ``weight_ih_l{k}``, ``weight_hh_l{k}`` and (with bias) ``bias_ih_l{k}``,
            ``bias_hh_l{k}``; copies, so changing them leaves the layer alone.
        """
        return {name: p.copy() for name, p in self.params.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Copy parameters in (arrays, lists or torch tensors).

        Parameters
        ----------
        state_dict : mapping of str to array_like
            Every parameter name of this layer, with its shape.
        strict : bool
            Reject names this layer does not have.

        Raises
        ------
        KeyError
            A name is missing (or, with ``strict``, unexpected).
        ValueError
            A shape differs; nothing is loaded then.
        """
        missing = [k for k in self.params if k not in state_dict]
        if missing:
            raise KeyError(f"state_dict is missing {', '.join(missing)} "
                           f"(expected keys: {', '.join(self.params)})")
        extra = [k for k in state_dict if k not in self.params]
        if strict and extra:
            raise KeyError(f"state_dict has unexpected keys {', '.join(map(str, extra))} "
                           f"(expected keys: {', '.join(self.params)})")
        new = {}
        for name, p in self.params.items():
            value = state_dict[name]
            if hasattr(value, "detach"):  # a torch tensor
                value = value.detach().cpu().numpy()
            arr = v.as_real_array(f"state_dict[{name!r}]", value, self.dtype)
            if arr.shape != p.shape:
                raise ValueError(f"state_dict[{name!r}] must have shape {p.shape}, got {arr.shape}")
            new[name] = arr
        for name, arr in new.items():  # all checked first: no half-loaded layer
            self.params[name][...] = arr

    def zero_grad(self) -> None:
        """Set every accumulated gradient in ``grads`` to zero."""
        for g in self.grads.values():
            g[...] = 0

    def _param(self, name):
        """params[name], checked: users may have replaced the array (the one rule for
        every backend: the layer's dtype, C order, the shape the layer was made with)."""
        p = self.params[name]
        if type(p) is np.ndarray and p.dtype == self.dtype and p.flags.c_contiguous \
                and p.shape == self._shapes[name]:
            return p
        want = f"a C-contiguous {self.dtype} ndarray of shape {self._shapes[name]}"
        got = (f"{type(p).__name__} of dtype {getattr(p, 'dtype', '?')}, shape "
               f"{getattr(p, 'shape', '?')}" + ("" if getattr(getattr(p, "flags", None),
                                                      "c_contiguous", True) else ", not C-contiguous"))
        exc = ValueError if isinstance(p, np.ndarray) and p.shape != self._shapes[name] \
            else TypeError
        raise exc(f"params[{name!r}] must be {want}, got {got}; update it in place "
                  f"(params[{name!r}][...] = value) or use load_state_dict, which converts")

    def _layer_weights(self, layer):
        """W_ih, W_hh and the summed bias of one layer (the bias in a buffer of this
        thread's, rewritten on every call: the parameters may have changed)."""
        ih, hh, b_ih, b_hh = self._layer_keys[layer]
        sums = getattr(self._per_thread, "bias_sums", None)
        if sums is None:
            sums = self._per_thread.bias_sums = [np.zeros(4 * self.hidden_size, self.dtype)
                                                 for _ in range(self.num_layers)]
        b = sums[layer]
        if self.bias:
            np.add(self._param(b_ih), self._param(b_hh), out=b)
        return self._param(ih), self._param(hh), b

    def _state(self, name, state, N, xp):
        L, H = self.num_layers, self.hidden_size
        pair = v.as_pair(name, state)
        if pair is None:
            return xp.zeros((L, N, H), self.dtype), xp.zeros((L, N, H), self.dtype)
        out = []
        for k, value in enumerate(pair):
            if value is None:
                out.append(xp.zeros((L, N, H), self.dtype))
                continue
            arr = xp.as_array(f"{name}[{k}]", value, self.dtype)
            out.append(v.check_shape(f"{name}[{k}]", arr, (L, N, H), "(L, N, H)"))
        return tuple(out)

    def _dropout_mask(self, shape):
        """0 or 1/(1-p) per element, kept with probability 1-p (_dropout.keep_mask)."""
        mask = np.empty(shape, self.dtype)
        scale = self.dtype.type(1.0 / (1.0 - self.dropout))
        np.multiply(keep_mask(self._rng, shape, self.dropout), scale, out=mask)
        return mask

    # -- forward / backward ----------------------------------------------
    def __call__(self, x: Any, state: Any = None, *, training: bool = False) -> tuple[Any, tuple[Any, Any]]:
        """Same as :meth:`forward`."""
        return self.forward(x, state, training=training)

    def forward(self, x: Any, state: Any = None, *, training: bool = False) -> tuple[Any, tuple[Any, Any]]:
        """Run the whole sequence.

        Parameters
        ----------
        x : array_like, (T, N, I), or (N, T, I) with ``batch_first``
            A device array (``__cuda_array_interface__``) runs on the cuda
            backend and gives device arrays back.
        state : pair (h0, c0) of (L, N, H) arrays, optional
            Zeros when omitted.
        training : bool
            Keep what ``backward`` needs and apply dropout between layers.

        Returns
        -------
        y : ndarray, (T, N, H) or (N, T, H)
            The top layer's output at every step.
        (h_n, c_n) : pair of (L, N, H) ndarrays
            The final state of every layer.
        """
        letters = "(N, T, I)" if self.batch_first else "(T, N, I)"
        be, xp = backend_and_arrays(self.backend, "x", x)
        x = v.check_shape("x", xp.as_array("x", x, self.dtype), (None, None, self.input_size), letters)
        if self.batch_first:
            x = xp.swap01(x)
        N = x.shape[1]
        h0, c0 = self._state("state", state, N, xp)
        h_n = xp.empty(h0.shape, self.dtype)
        c_n = xp.empty(c0.shape, self.dtype)
        caches, masks = [], []
        self._saved = None
        inp = x
        for layer in range(self.num_layers):
            W_ih, W_hh, b = self._layer_weights(layer)
            y, _, _, cache = run_forward(be, inp, h0[layer], c0[layer], W_ih, W_hh, b, training,
                                         hT=h_n[layer], cT=c_n[layer], workspace=self._workspace,
                                         xp=xp)
            caches.append(cache)
            if training and self.dropout > 0 and layer < self.num_layers - 1:
                mask = xp.as_array("mask", self._dropout_mask(y.shape), self.dtype)
                masks.append(mask)
                y = xp.multiply(y, mask)
            else:
                masks.append(None)
            inp = y
        if training:
            self._saved = (caches, masks, x.shape, xp)
        if self.batch_first:
            inp = xp.swap01(inp)
        return inp, (h_n, c_n)

    def backward(self, dy: Any, dstate: Any = None) -> tuple[Any, tuple[Any, Any]]:
        """Back-propagate through the last training forward pass.

        Parameter gradients are added to ``self.grads``.

        Parameters
        ----------
        dy : array_like, shaped like the forward output y
            Gradient of the loss with respect to y.
        dstate : pair (dh_n, dc_n) of (L, N, H) arrays, optional
            Gradient with respect to the final state; zeros when omitted.

        Returns
        -------
        dx : ndarray, shaped like x
            Gradient with respect to the input.
        (dh0, dc0) : pair of (L, N, H) ndarrays
            Gradient with respect to the initial state.
        """
        if self._saved is None:
            raise RuntimeError("backward needs a preceding forward(..., training=True) "
                               "(each training forward allows one backward)")
        caches, masks, (T, N, _), xp = self._saved
        H = self.hidden_size
        if self.batch_first:
            dy = v.check_shape("dy", xp.as_array("dy", dy, self.dtype), (N, T, H), "(N, T, H)")
            dy = xp.swap01(dy)
        else:
            dy = v.check_shape("dy", xp.as_array("dy", dy, self.dtype), (T, N, H), "(T, N, H)")
        dh_n, dc_n = self._state("dstate", dstate, N, xp)
        self._saved = None
        dh0 = xp.empty(dh_n.shape, self.dtype)
        dc0 = xp.empty(dc_n.shape, self.dtype)
        grad = dy
        for layer in range(self.num_layers - 1, -1, -1):
            if masks[layer] is not None:
                grad = xp.multiply(grad, masks[layer])
            g = self.grads
            db = np.zeros(4 * H, self.dtype)
            grad, _, _ = run_backward(caches[layer], grad, dh_n[layer], dc_n[layer],
                                      g[f"weight_ih_l{layer}"], g[f"weight_hh_l{layer}"], db,
                                      dh0=dh0[layer], dc0=dc0[layer], workspace=self._workspace)
            if self.bias:
                g[f"bias_ih_l{layer}"] += db
                g[f"bias_hh_l{layer}"] += db
        if self.batch_first:
            grad = xp.swap01(grad)
        return grad, (dh0, dc0)

    # -- generation ---------------------------------------------------------
    def step(self, x_t: Any, state: Any = None) -> tuple[Any, tuple[Any, Any]]:
        """One time step with a carried state (no dropout, nothing kept).

        Parameters
        ----------
        x_t : array_like, (N, I)
            The input of this step.
        state : pair (h, c) of (L, N, H) arrays, optional
            The carried state; zeros when omitted.

        Returns
        -------
        h_t : ndarray (N, H)
            The top layer's output.
        (h, c) : pair of (L, N, H) ndarrays
            The new state, to pass to the next call.
        """
        be, xp = backend_and_arrays(self.backend, "x_t", x_t)
        x_t = v.check_shape("x_t", xp.as_array("x_t", x_t, self.dtype), (None, self.input_size), "(N, I)")
        N = x_t.shape[0]
        h, c = self._state("state", state, N, xp)
        h_new = xp.empty(h.shape, self.dtype)
        c_new = xp.empty(c.shape, self.dtype)
        gates = self._step_workspace.take((N, 4 * self.hidden_size), self.dtype)
        weights = [self._layer_weights(layer) for layer in range(self.num_layers)]
        be.step_layers(x_t, h, c, [w[0] for w in weights], [w[1] for w in weights],
                       [w[2] for w in weights], h_new, c_new, gates)
        self._step_workspace.give(gates)
        return xp.copy(h_new[-1]), (h_new, c_new)

    def __repr__(self) -> str:
        return (f"LSTM({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bias={self.bias}, batch_first={self.batch_first}, dropout={self.dropout}, "
                f"dtype={self.dtype.name}, backend={self.backend!r})")
