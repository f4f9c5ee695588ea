"""Input checks and conversions at the edge of the public API.

Every error names the argument, what was expected and what was given. Inputs
that are merely inconvenient (lists, other float dtypes, non-contiguous or
Fortran-ordered arrays) are converted instead of rejected; a torch tensor that
requires grad is refused with a pass-``.detach()`` TypeError. ``is_device_array``
is the one rule for "this array is in GPU memory".
"""

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype):
    """The layer dtype: float32 or float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def check_dropout(name, value):
    """A dropout probability: a real number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_size(name, value, minimum=1):
    """A positive integer size such as hidden_size."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def as_real_array(name, value, dtype):
    """Convert to a C-contiguous array of ``dtype``; reject non-real data."""
    if type(value) is np.ndarray and value.dtype == dtype and value.flags.c_contiguous:
        return value  # already what is asked for (the common case; one step per character)
    arr = _host_array(name, value, ValueError)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers (float or int), got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)


def check_shape(name, arr, expected, letters):
    """Check arr.shape against ``expected`` (None matches any size)."""
    if arr.ndim != len(expected):
        raise ValueError(f"{name} must be {len(expected)}-D {letters}, got shape {arr.shape}")
    for got, want in zip(arr.shape, expected):
        if want is not None and got != want:
            want_str = "(" + ", ".join("?" if w is None else str(w) for w in expected) + ")"
            raise ValueError(f"{name} must have shape {letters} = {want_str}, got shape {arr.shape}")
    return arr


def is_device_array(value, name=None):
    """True for an array in GPU memory: a Numba device array or anything with ``__cuda_array_interface__``.

    The one rule for "is this on the device" (``fastlstm.backends`` and the cuda
    backend ask it). A CUDA tensor that requires grad (a ``torch.nn.Parameter``,
    an activation in an autograd graph) is a TypeError saying to pass
    ``.detach()``: torch refuses to export its memory, and it is found from its
    ``is_cuda`` and ``requires_grad`` flags without asking. ``name`` names the
    argument in that error when the caller knows it.
    """
    if isinstance(value, np.ndarray):
        return False
    if getattr(value, "__cuda_ndarray__", False):  # Numba device arrays, the simulator's too
        return True
    if getattr(value, "is_cuda", None) is True and getattr(value, "requires_grad", None) is True:
        raise _requires_grad_error(name, value, "CUDA")
    try:
        return hasattr(value, "__cuda_array_interface__")  # hasattr catches AttributeError only
    except RuntimeError as exc:  # a property that refuses: torch's, for a tensor that requires grad
        if "grad" in str(exc):
            raise _requires_grad_error(name, value, "CUDA") from exc
        raise TypeError(f"{_what(name, value)} has __cuda_array_interface__ but it cannot be read: {exc}") from exc


def _what(name, value):
    """The argument's name, or "an input of shape (...)" when the caller does not know it."""
    if name:
        return name
    shape = getattr(value, "shape", None)
    try:
        return f"an input of shape {tuple(shape)}" if shape is not None else "an input"
    except TypeError:
        return "an input"


def _requires_grad_error(name, value, kind):
    """The TypeError for a torch tensor that requires grad: pass ``.detach()``."""
    call = f"{name}.detach()" if name and " " not in name else "tensor.detach()"
    return TypeError(f"{_what(name, value)} is a {kind} tensor that requires grad: pass {call} (fastlstm "
                     "computes its own gradients; its results are not part of torch's autograd graph)")


def host_dtype(name, value):
    """The dtype ``value`` has as a host array (a torch tensor that requires grad is the
    TypeError that says to detach it; what NumPy cannot convert has no float dtype)."""
    if getattr(value, "requires_grad", None) is True and hasattr(value, "detach"):
        raise _requires_grad_error(name, value, "torch")
    try:
        return np.asarray(value).dtype
    except (ValueError, TypeError):
        return np.dtype(object)


def _host_array(name, value, error):
    """np.asarray(value); a device array or a tensor that requires grad is a TypeError, a failed
    conversion ``error``."""
    if is_device_array(value, name):
        raise TypeError(f"{name} is a device array; it must be a host (NumPy) array here")
    if getattr(value, "requires_grad", None) is True and hasattr(value, "detach"):  # torch refuses numpy()
        raise _requires_grad_error(name, value, "torch")
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise error(f"{name} could not be converted to an array: {exc}") from exc


def check_lengths(name, value, N, T):
    """Per-sequence lengths: N integers in [0, T] (an array-like on the host)."""
    arr = _host_array(name, value, TypeError)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.shape != (N,):
        raise ValueError(f"{name} must have shape (N,) = ({N},), got shape {arr.shape}")
    if N and (arr.min() < 0 or arr.max() > T):
        raise ValueError(f"{name} must be in [0, T] = [0, {T}], got values from {arr.min()} to {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def as_pair(name, value):
    """A state given as a pair (h, c); None stays None."""
    if value is None:
        return None
    if isinstance(value, np.ndarray) or not isinstance(value, (tuple, list)) or len(value) != 2:
        kind = f"an array of shape {value.shape}" if isinstance(value, np.ndarray) else repr(type(value).__name__)
        raise TypeError(f"{name} must be a pair (h, c) of arrays, got {kind}")
    return value[0], value[1]
