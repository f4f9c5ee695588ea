"""show_config(): what fastlstm runs on here (versions, backends, BLAS, threads, the
C kernel path picked for this CPU, the FASTLSTM_* settings in force). ``config()``
returns the same facts as a dict; a bad setting is reported there, never raised.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any


def config() -> dict[str, Any]:
    """Describe this installation.

    Returns
    -------
    dict
        ``fastlstm``, ``python``, ``platform``, ``numpy`` and ``scipy`` versions;
        ``backends`` (the names usable here, fastest first) and ``unavailable``
        (why each other backend could not be loaded); ``cpu_count``. With the C
        backend: ``c_openmp`` (built with OpenMP), ``c_kernel`` (the float32 code
        path that runs: ``"avx512"``, ``"avx2"``, ``"portable"``, or ``"blas"``
        when ``FASTLSTM_KERNEL`` asks for it), ``c_kernels_supported`` (the paths
        this CPU can run), ``c_bf16_kernel`` (the path of bf16-weight inference,
        ``LSTM.inference_weights("bf16")``: ``"avx512bf16"`` (VDPBF16PS), ``"avx512"``,
        ``"avx2"`` or ``"portable"`` (weights widened to float32), or ``"none"`` in a
        build without vector kernels, where the float32 kernels run on the rounded
        weights), ``c_bf16_kernels_supported`` and ``c_threads``. With the cuda backend: ``cuda_device``
        (the GPU's name, compute capability and SMs, or the simulator) and
        ``numba``. ``mpi4py``: its version, or how to install it (for data-parallel
        ``mpiexec -n K fastlstm train``; found without importing it). ``blas``: the BLAS and OpenMP
        libraries loaded and their threads (needs threadpoolctl). ``settings``: the
        ``FASTLSTM_*`` variables set, and ``setting_problems`` for any that cannot be
        used (a bad value, an unknown name); ``OPENBLAS_CORETYPE`` when it is set.

    See Also
    --------
    show_config : Print the same.
    """
    import numpy
    import scipy

    from . import __version__, _config
    from .backends import _load, available_backends, unavailable_reasons

    info = {
        "fastlstm": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "backends": available_backends(),
        "unavailable": unavailable_reasons(),
        "cpu_count": os.cpu_count(),
    }
    settings, problems = _config.settings()
    info["settings"] = settings or "none (every FASTLSTM_* variable unset: the defaults)"
    if problems:
        info["setting_problems"] = problems
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    if coretype:
        info["OPENBLAS_CORETYPE"] = (f"{coretype}: forces this OpenBLAS kernel instead of the one "
                                     "it picks for this CPU (can be 2x slower; unset it)")
    c = _load("c")
    if c is not None:
        info["c_openmp"] = bool(getattr(c, "OPENMP", False))
        info["c_kernel"] = _reported(c.kernel_path)
        info["c_kernels_supported"] = list(c.SUPPORTED_KERNELS)
        info["c_bf16_kernel"] = _reported(c.bf16_path)
        info["c_bf16_kernels_supported"] = list(c.BF16_KERNELS)
        info["c_threads"] = _reported(c.max_threads)
    gpu = _load("cuda")
    if gpu is not None:
        import numba
        info["cuda_device"] = gpu.device_info()
        info["numba"] = numba.__version__
    info["mpi4py"] = _version_of("mpi4py") or "not installed (pip install 'fastlstm[mpi]' to train on MPI)"
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [
            {k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "filepath")}
            for d in threadpool_info() if d.get("user_api") in ("blas", "openmp")
        ]
    except ImportError:
        info["blas"] = "install threadpoolctl to see the BLAS libraries and their threads"
    return info


def _version_of(dist):
    """The installed version of a distribution, or None (nothing is imported)."""
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _reported(fn):
    """fn(), or the error a bad setting makes it raise, as text (show_config never raises)."""
    try:
        return fn()
    except ValueError as exc:
        return f"error: {exc}"


def show_config(mode: str = "stdout") -> dict[str, Any] | None:
    """Print what fastlstm runs on here: versions, backends, BLAS, threads, kernel path.

    The ``c_kernel`` line names the float32 code path of the C backend that runs on
    this CPU (``avx512``, ``avx2`` or ``portable``; picked at run time, so one
    x86-64 wheel serves every x86-64 CPU); ``c_bf16_kernel`` the path of bf16-weight
    inference (``avx512bf16``, ``avx512``, ``avx2``, ``portable`` or ``none``). Bad ``FASTLSTM_*`` settings are listed,
    not raised.

    Parameters
    ----------
    mode : {"stdout", "dicts"}
        "stdout" prints and returns None (as ``numpy.show_config``); "dicts" prints
        nothing and returns the facts as a dict (:func:`config`).

    Returns
    -------
    dict or None
        The facts with ``mode="dicts"``; None when they are printed.

    Examples
    --------
    >>> import fastlstm
    >>> fastlstm.show_config()  # doctest: +SKIP
    fastlstm: 0.1.0
    ...
    c_kernel: avx512
    ...
    c_bf16_kernel: avx512bf16
    """
    if mode not in ("stdout", "dicts"):
        raise ValueError(f"mode must be 'stdout' or 'dicts', got {mode!r}")
    info = config()
    if mode == "dicts":
        return info
    for key, value in info.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            print(f"{key}:")
            for item in value:
                print("  - " + ", ".join(f"{k}={v}" for k, v in item.items()))
        elif isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    return None
