"""Where a call's arrays live: host (NumPy) or a CUDA device.

The layer and the functional API allocate, convert and reshuffle arrays
through one of these namespaces, so the same code serves NumPy inputs (any
backend) and device inputs (the cuda backend, whose module offers the same
names: as_array, empty, zeros, copy, swap01, multiply, to_host).
"""

import numpy as np

from . import _validate as v
from .backends import get_backend, is_device_array


class HostArrays:
    """NumPy arrays in host memory."""

    on_device = False
    as_array = staticmethod(v.as_real_array)
    empty = staticmethod(np.empty)
    zeros = staticmethod(np.zeros)

    @staticmethod
    def copy(a):
        return a.copy()

    @staticmethod
    def swap01(a):
        """(A, B, F) -> (B, A, F), contiguous (batch_first at the edge)."""
        return np.ascontiguousarray(a.transpose(1, 0, 2))

    @staticmethod
    def multiply(a, b):
        return a * b

    @staticmethod
    def to_host(a):
        return a

    @staticmethod
    def add(a, b):
        return a + b

    @staticmethod
    def concat_features(arrays):
        """(T, N, F_k) arrays -> (T, N, sum F_k): the directions of a layer side by side."""
        return np.concatenate(arrays, axis=2)

    @staticmethod
    def take_features(a, start, stop):
        """a[..., start:stop], contiguous."""
        return np.ascontiguousarray(a[..., start:stop])


def backend_and_arrays(backend, name, value):
    """The backend module for ``backend`` and input ``value``, and its array namespace.

    A device array goes with the cuda backend (and its device namespace);
    asking another backend for one is a TypeError that says what to do.
    """
    be = get_backend(backend, (value,))
    if not is_device_array(value):
        return be, HostArrays
    if be.NAME != "cuda":
        raise TypeError(f"{name} is a device array but the {be.NAME!r} backend works on host "
                        f"(NumPy) arrays: use backend='cuda' or 'auto', or copy it to the host")
    return be, be
