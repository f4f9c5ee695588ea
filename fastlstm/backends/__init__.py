"""Backend registry and dispatch.

A backend is a module with ``forward``, ``backward`` and ``step`` following
the caller-allocates contract written at the top of ``reference.py``. Order
of choice: an explicit ``backend=`` name, then FASTLSTM_BACKEND, then
automatic (device arrays to CUDA, host arrays to C when built, else NumPy).
"""

import importlib

from .. import _config

KNOWN = ("c", "cuda", "numpy")
_MODULES = {"c": "fastlstm.backends._c", "cuda": "fastlstm.backends.cuda",
            "numpy": "fastlstm.backends.reference"}
_loaded = {}
_reasons = {}


def _load(name):
    if name not in _loaded and name not in _reasons:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name])
        except Exception as exc:  # missing extension, numba or GPU
            _reasons[name] = f"{type(exc).__name__}: {exc}"
    return _loaded.get(name)


def available_backends():
    """Names of the backends usable in this process, fastest first."""
    return [n for n in ("cuda", "c", "numpy") if _load(n) is not None]


def unavailable_reasons():
    """Why each known backend that is not available could not be loaded."""
    available_backends()
    return dict(_reasons)


def check_name(name):
    """Validate a ``backend=`` argument early; returns it normalised."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    name = name.strip().lower()
    if name != "auto":
        _require(name)
    return name


def _require(name):
    if name not in KNOWN:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(KNOWN)}; "
                         f"available here: {', '.join(available_backends())}")
    module = _load(name)
    if module is None:
        raise ValueError(f"backend {name!r} is not available ({_reasons[name]}); "
                         f"available here: {', '.join(available_backends())}")
    return module


def is_device_array(a):
    return hasattr(a, "__cuda_array_interface__")


def get_backend(name="auto", arrays=()):
    """The backend module for ``name`` ("auto" or a backend name) and these inputs."""
    name = check_name(name)
    if name == "auto":
        name = _config.backend_override() or "auto"
    if name != "auto":
        return _require(name)
    if any(is_device_array(a) for a in arrays) and _load("cuda") is not None:
        return _loaded["cuda"]
    if _load("c") is not None:
        return _loaded["c"]
    return _require("numpy")
