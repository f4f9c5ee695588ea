"""Parameters and gradients shared by fastlstm.LSTM and fastlstm.LSTMCell: torch's
state_dict / load_state_dict, zero_grad, and the one rule for a parameter array
that a user replaced (checked at the edge, named in the error).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from . import _validate as v


class ParameterSet:
    """``params`` and ``grads`` (dicts of NumPy arrays, torch's names) of a layer of ``dtype``.

    Subclasses fill ``params``, ``grads``, ``_shapes`` and ``dtype`` in their constructor.
    """

    params: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]
    _shapes: dict[str, tuple[int, ...]]
    dtype: np.dtype

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, named and shaped like torch's ``state_dict()``.

        Returns
        -------
        dict of str to ndarray
            torch's names and order (``weight_ih_l{k}``, ``weight_hh_l{k}``, with bias
            ``bias_ih_l{k}``, ``bias_hh_l{k}``, then ``weight_hr_l{k}`` and the
            ``_reverse`` set for the LSTM; ``weight_ih``... for the cell); copies, so
            changing them leaves the layer alone.
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
        self._parameters_loaded()

    def _parameters_loaded(self) -> None:
        """Called after load_state_dict changed the parameters (layers that keep derived
        copies, such as bf16 inference weights, drop them here)."""

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

