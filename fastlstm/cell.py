"""fastlstm.LSTMCell: one LSTM step with torch.nn.LSTMCell's names and shapes.

forward runs one step (the backends' time loop with T = 1) and, in training,
keeps what its backward needs on a stack: backward back-propagates the most
recent training step not yet back-propagated, so calling it in reverse order
is backpropagation through time. Parameter gradients accumulate in ``grads``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _validate as v
from ._arrays import backend_and_arrays
from ._params import ParameterSet
from .backends import check_name
from .functional import LSTMCache, run_backward, run_forward


class LSTMCell(ParameterSet):
    """One LSTM step, drop-in for ``torch.nn.LSTMCell`` on NumPy arrays.

    Parameters
    ----------
    input_size, hidden_size : int
        I and H.
    bias : bool
        With ``bias_ih`` and ``bias_hh`` (as PyTorch).
    dtype : float32 or float64
    backend : str
        "auto", "c", "numpy" or "cuda".
    seed : int or None
        Seeds the initialisation, U(-1/sqrt(H), 1/sqrt(H)) for every parameter (as torch).

    Attributes
    ----------
    params, grads : dict of str to ndarray
        ``weight_ih`` (4H, I), ``weight_hh`` (4H, H), ``bias_ih``, ``bias_hh`` (4H,).

    Examples
    --------
    >>> import numpy as np, fastlstm
    >>> cell = fastlstm.LSTMCell(3, 5)
    >>> h, c = cell.forward(np.ones((2, 3), np.float32), training=True)
    >>> dx, (dh, dc) = cell.backward(np.ones_like(h))
    >>> h.shape, dx.shape
    ((2, 5), (2, 3))
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 dtype: Any = np.float32, backend: str = "auto", seed: int | None = None) -> None:
        self.input_size = v.check_size("input_size", input_size)
        self.hidden_size = v.check_size("hidden_size", hidden_size)
        self.bias = bool(bias)
        self.dtype = v.check_dtype(dtype)
        self.backend: str = check_name(backend)
        H, G = self.hidden_size, 4 * self.hidden_size
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(H)
        shapes: dict[str, tuple[int, ...]] = {"weight_ih": (G, self.input_size), "weight_hh": (G, H)}
        if self.bias:
            shapes.update(bias_ih=(G,), bias_hh=(G,))
        self.params = {name: rng.uniform(-k, k, shape).astype(self.dtype) for name, shape in shapes.items()}
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._shapes = dict(shapes)
        self._steps: list[tuple[LSTMCache, bool]] = []  # training steps not yet back-propagated

    def __call__(self, x_t: Any, state: Any = None, *, training: bool = False) -> tuple[Any, Any]:
        """Same as :meth:`forward`."""
        return self.forward(x_t, state, training=training)

    def forward(self, x_t: Any, state: Any = None, *, training: bool = False) -> tuple[Any, Any]:
        """One step.

        Parameters
        ----------
        x_t : array_like, (N, I), or (I,) unbatched
        state : pair (h, c) of (N, H) arrays ((H,) unbatched), optional
            Zeros when omitted.
        training : bool
            Keep what :meth:`backward` needs (one entry per step, until back-propagated).

        Returns
        -------
        (h, c) : pair of ndarrays (N, H) ((H,) unbatched)
            The new state.
        """
        be, xp = backend_and_arrays(self.backend, "x_t", x_t)
        x_t = xp.as_array("x_t", x_t, self.dtype)
        unbatched = len(x_t.shape) == 1
        if unbatched:
            x_t = v.check_shape("x_t", x_t, (self.input_size,), "(I,)").reshape(1, self.input_size)
        else:
            x_t = v.check_shape("x_t", x_t, (None, self.input_size), "(N, I)")
        N, H = x_t.shape[0], self.hidden_size
        h0, c0 = self._pair("state", state, N, xp, unbatched)
        W_ih, W_hh = self._param("weight_ih"), self._param("weight_hh")
        b = self._param("bias_ih") + self._param("bias_hh") if self.bias else np.zeros(4 * H, self.dtype)
        y, h, c, cache = run_forward(be, x_t.reshape(1, N, self.input_size), h0, c0, W_ih, W_hh,
                                     xp.as_array("b", b, self.dtype), training, xp=xp)
        if training:
            self._steps.append((cache, unbatched))
        return (h.reshape(H), c.reshape(H)) if unbatched else (h, c)

    def backward(self, dh: Any = None, dc: Any = None) -> tuple[Any, tuple[Any, Any]]:
        """Back-propagate the most recent training step not yet back-propagated.

        Parameters
        ----------
        dh, dc : array_like, (N, H) ((H,) unbatched), optional
            Gradient of the loss with respect to this step's h and c; zeros when
            omitted (at least one is needed).

        Returns
        -------
        dx_t : ndarray (N, I) ((I,) unbatched)
        (dh_prev, dc_prev) : pair of ndarrays (N, H)
            Gradient with respect to the state the step started from: pass them
            to the backward of the step before.
        """
        if not self._steps:
            raise RuntimeError("backward needs a forward(..., training=True) step not yet back-propagated")
        if dh is None and dc is None:
            raise ValueError("backward needs dh or dc (or both)")
        cache, unbatched = self._steps[-1]
        N, H = cache.h0.shape
        xp = cache.arrays
        dhT, dcT = self._pair("(dh, dc)", (dh, dc), N, xp, unbatched)
        self._steps.pop()
        g = self.grads
        db = np.zeros(4 * H, self.dtype)
        dx, dh0, dc0 = run_backward(cache, xp.zeros((1, N, H), self.dtype), dhT, dcT,
                                    g["weight_ih"], g["weight_hh"], db)
        if self.bias:
            g["bias_ih"] += db
            g["bias_hh"] += db
        if unbatched:
            return dx.reshape(self.input_size), (dh0.reshape(H), dc0.reshape(H))
        return dx.reshape(N, self.input_size), (dh0, dc0)

    def _pair(self, name, pair, N, xp, unbatched):
        """Two (N, H) arrays from a pair of (N, H) or, unbatched, (H,) array-likes or Nones."""
        H = self.hidden_size
        pair = v.as_pair(name, pair)
        if pair is None:
            return xp.zeros((N, H), self.dtype), xp.zeros((N, H), self.dtype)
        out = []
        for k, value in enumerate(pair):
            if value is None:
                out.append(xp.zeros((N, H), self.dtype))
                continue
            arr = xp.as_array(f"{name}[{k}]", value, self.dtype)
            if unbatched:
                out.append(v.check_shape(f"{name}[{k}]", arr, (H,), "(H,)").reshape(1, H))
            else:
                out.append(v.check_shape(f"{name}[{k}]", arr, (N, H), "(N, H)"))
        return tuple(out)

    def __repr__(self) -> str:
        return (f"LSTMCell({self.input_size}, {self.hidden_size}, bias={self.bias}, "
                f"dtype={self.dtype.name}, backend={self.backend!r})")
