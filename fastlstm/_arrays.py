"""Where a call's arrays live: host (NumPy) or a CUDA device.

The layer and the functional API allocate, convert and reshuffle arrays
through one of these namespaces, so the same code serves NumPy inputs (any
backend) and device inputs (the cuda backend, whose module offers the same
names: as_array, empty, zeros, copy, swap01, multiply, to_host).
``on_callers_stream`` makes a public call's device work run on the caller's
CUDA stream.
"""

import functools
import sys

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
    on_device = is_device_array(value, name)   # names the argument in its errors
    be = get_backend(backend, (value,))
    if not on_device:
        return be, HostArrays
    if be.NAME != "cuda":
        raise TypeError(f"{name} is a device array but the {be.NAME!r} backend works on host "
                        f"(NumPy) arrays: use backend='cuda' or 'auto', or copy it to the host")
    return be, be


def on_callers_stream(pick):
    """Decorator for the public calls that take device arrays: the call's launches and
    copies go on the caller's CUDA stream (PyTorch's or CuPy's current stream, the
    stream of a Numba array; backends.cuda.callers_stream), chosen from the arrays
    ``pick(*args, **kwargs)`` returns. Costs one dictionary lookup when the cuda
    backend was never loaded."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            cuda = sys.modules.get("fastlstm.backends.cuda")
            if cuda is None:
                return fn(*args, **kwargs)
            with cuda.callers_stream(*pick(*args, **kwargs)):
                return fn(*args, **kwargs)
        return call
    return wrap
