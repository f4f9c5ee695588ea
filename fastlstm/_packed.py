"""Float32 weights packed once for inference (``LSTM.inference_weights("float32",
packed=True)``): a snapshot of a layer's weights that inference calls read, with the C
backend's forward panels of each (layer, direction) made on first use and kept.

Exact: the same kernels run on the same panels as when every call packs its own, so
the results are bit for bit those of the unpacked path (on the weights as they were
when the snapshot was taken). Why: at a small batch, packing W_ih and W_hh costs a
visible share of each call (4-15% at N = 1, T = 100); ONNX Runtime packs once too.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


class WeightSnapshot:
    """What inference snapshots share: a layer's weights converted once (``convert``),
    ``weights(index)`` giving (W_ih, W_hh, b, W_hr or None) of one (layer, direction)
    (b = b_ih + b_hh, summed as the unpacked path sums it), ``panels(be, index)`` the
    backend's packed form of that W_ih and W_hh (``pack``, made on first use and kept),
    and ``sources``, the parameter arrays it was made from (a replaced array makes it
    stale). Read-only after construction but for the panels' cache, so threads share it."""

    def __init__(self, params: dict[str, np.ndarray], layer_keys: list[tuple[Any, ...]],
                 hidden_size: int, dtype: np.dtype) -> None:
        self.sources = dict(params)
        self._weights = []
        for ih, hh, b_ih, b_hh, hr in layer_keys:
            b = np.add(params[b_ih], params[b_hh]).astype(dtype, copy=False) if b_ih is not None \
                else np.zeros(4 * hidden_size, dtype)
            self._weights.append((self.convert(params[ih], dtype), self.convert(params[hh], dtype), b,
                                  None if hr is None else self.convert(params[hr], dtype)))
        self._panels: dict[int, Any] = {}
        self._lock = threading.Lock()

    def convert(self, a: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """The snapshot's own C-contiguous copy of one weight."""
        raise NotImplementedError

    def pack(self, be: Any, W_ih: np.ndarray, W_hh: np.ndarray) -> Any:
        """The backend's packed form of one (layer, direction)'s weights."""
        raise NotImplementedError

    def weights(self, index: int) -> tuple[Any, ...]:
        return self._weights[index]

    def panels(self, be: Any, index: int) -> Any:
        with self._lock:
            p = self._panels.get(index)
            if p is None:
                W_ih, W_hh = self._weights[index][:2]
                p = self._panels[index] = self.pack(be, W_ih, W_hh)
            return p

    def stale(self, params: dict[str, np.ndarray]) -> bool:
        """Whether a parameter array was replaced since (in-place changes are not seen)."""
        return any(params.get(k) is not a for k, a in self.sources.items())


class PackedWeights(WeightSnapshot):
    """A layer's float32 weights copied once; ``panels`` is the C backend's PackedForward
    of each W_ih and W_hh (its panels packed on first use per kernel path and fusion,
    valid for any thread count). Copies, so that an in-place change cannot leave the
    panels and the weights the loops read apart."""

    def convert(self, a: np.ndarray, dtype: np.dtype) -> np.ndarray:
        return np.array(a, dtype, order="C")

    def pack(self, be: Any, W_ih: np.ndarray, W_hh: np.ndarray) -> Any:
        return be.PackedForward(W_ih, W_hh)
