"""bf16 weights for inference (``LSTM.inference_weights("bf16")``): the one rule for
rounding float32 to bfloat16 (NumPy, the reference of the C conversions), the check of
a precision argument, and the snapshot of a layer's rounded weights that inference
calls read (with the C backend's packed panels, made on first use).

Not exact: a bf16 weight keeps 8 significant bits, so each is off by at most 2^-8 of
itself (:data:`UNIT_ROUNDOFF`), and a gate's pre-activation by at most
2^-8 * sum_k |w_k x_k| (plus float32's own rounding; the avx512bf16 kernels round the
activations x to bf16 as well: 2^-7).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._packed import WeightSnapshot

#: The precisions of inference weights: exact float32, or bf16 (rounded, not exact).
PRECISIONS = ("float32", "bf16")
#: Largest relative error of one weight rounded to bf16 (round to nearest even).
UNIT_ROUNDOFF = 2.0 ** -8


def round_bf16(a: Any) -> np.ndarray:
    """float32 array of ``a``'s values rounded to bfloat16 (nearest, ties to even; NaN
    stays NaN, inf stays inf, values past the largest bf16 round to inf)."""
    x = np.ascontiguousarray(a, np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    nan = np.isnan(x)
    rounded[nan] = ((u[nan] >> 16) | 0x40) << 16  # a quiet NaN of the same sign
    return rounded.astype(np.uint32).view(np.float32).reshape(x.shape)


def check_precision(name: str, value: Any, dtype: np.dtype) -> str:
    """``value`` as one of :data:`PRECISIONS` (None means float32); a ValueError naming
    ``name`` for anything else, and for bf16 on a float64 layer."""
    if value is None:
        return "float32"
    if not isinstance(value, str) or value.lower() not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, PRECISIONS))} (or None for "
                         f"float32), got {value!r}")
    value = value.lower()
    if value == "bf16" and dtype != np.float32:
        raise ValueError(f"{name}='bf16' needs a float32 layer, this one is {dtype}: bf16 weights "
                         "are a float32 inference speed-up (float64 is for exact work)")
    return value


class Bf16Weights(WeightSnapshot):
    """A layer's weights rounded to bf16 once: ``weights(index)`` gives (W_ih, W_hh, b,
    W_hr or None) of one (layer, direction) as float32 arrays holding the rounded values
    (biases stay float32: b = b_ih + b_hh), ``panels(be, index)`` the C backend's packed
    form of [W_ih | W_hh] (see :class:`fastlstm._packed.WeightSnapshot`)."""

    def convert(self, a: np.ndarray, dtype: np.dtype) -> np.ndarray:
        return round_bf16(a)

    def pack(self, be: Any, W_ih: np.ndarray, W_hh: np.ndarray) -> Any:
        return be.bf16_pack(W_ih, W_hh, 4)
