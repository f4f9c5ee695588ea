"""Dropout masks drawn from a seeded generator: the one helper that ``fastlstm.LSTM`` (between
layers) and the char model's ``Dropout`` layer share, so that both draw masks the same way
and a checkpoint of the generator's state replays them exactly.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["keep_mask"]


def keep_mask(rng: np.random.Generator, shape: tuple[int, ...], p: float) -> NDArray[np.bool_]:
    """Dropout's keep mask: True with probability 1 - p (to within 2**-16) per element.

    16 random bits per element, four to a raw 64-bit draw: a quarter of the cost
    of uniform floats.

    Parameters
    ----------
    rng : numpy.random.Generator
        The generator to draw from (its bit generator advances).
    shape : tuple of int
        Shape of the mask.
    p : float
        Drop probability in [0, 1).

    Returns
    -------
    ndarray of bool
        The mask, ``shape``.
    """
    size = int(np.prod(shape))
    raw = rng.bit_generator.random_raw((size + 3) // 4)
    bits = raw.view(np.uint16)[:size].reshape(shape)
    return bits >= np.uint16(min(round(p * 65536), 65535))
