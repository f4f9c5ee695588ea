"""Find OpenBLAS's per-thread thread-count setter in SciPy's BLAS (ctypes).

The C backend's fused kernels run BLAS products from inside their own
threads; with ``openblas_set_num_threads_local(1)`` each of those calls stays
on its thread instead of waking OpenBLAS's worker threads, which would
otherwise spin on the same cores. Returns 0 when SciPy's BLAS is not an
OpenBLAS that has it (the kernels then still work, just less well isolated).
"""

import ctypes
import glob
import os

from .. import _config

_NAMES = ("openblas_set_num_threads_local", "scipy_openblas_set_num_threads_local",
          "scipy_openblas_set_num_threads_local64_")


def _scipy_blas_libraries():
    import scipy
    root = os.path.dirname(os.path.dirname(scipy.__file__))
    patterns = ("scipy.libs/libscipy_openblas*", "scipy/.dylibs/libscipy_openblas*",
                "scipy.libs/libopenblas*")
    for pattern in patterns:
        yield from sorted(glob.glob(os.path.join(root, pattern)))


def set_threads_local_address():
    """Address of the setter as an int, or 0 if unavailable or disabled."""
    if not _config.blas_local_threads():
        return 0
    for path in _scipy_blas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _NAMES:
            fn = getattr(lib, name, None)
            if fn is not None:
                return ctypes.cast(fn, ctypes.c_void_p).value or 0
    return 0
