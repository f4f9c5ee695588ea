"""show_config(): what fastlstm runs on here (versions, backends, BLAS, threads)."""

import os
import platform
import sys


def config():
    """A dict describing this installation."""
    import numpy
    import scipy

    from . import __version__
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
    c = _load("c")
    if c is not None:
        info["c_openmp"] = bool(getattr(c, "OPENMP", False))
        info["c_kernel"] = c.kernel_path()
        info["c_kernels_supported"] = list(c.KERNELS)
        info["c_threads"] = c.max_threads()
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [
            {k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "filepath")}
            for d in threadpool_info() if d.get("user_api") in ("blas", "openmp")
        ]
    except ImportError:
        info["blas"] = "install threadpoolctl to see the BLAS libraries and their threads"
    return info


def show_config():
    """Print (and return) what fastlstm runs on: versions, backends, BLAS, threads."""
    info = config()
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
    return info
