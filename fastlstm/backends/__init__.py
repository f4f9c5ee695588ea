"""Backend registry and dispatch.

A backend is a module with ``forward``, ``backward`` and ``step`` following
the caller-allocates contract written at the top of ``reference.py``. Order
of choice: an explicit ``backend=`` name, then FASTLSTM_BACKEND, then
automatic (device arrays to CUDA, host arrays to C when built, else NumPy).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Iterable

from .. import _config, _validate

KNOWN = _config.BACKENDS
_MODULES = {"c": "fastlstm.backends._c", "cuda": "fastlstm.backends.cuda",
            "numpy": "fastlstm.backends.reference"}
_loaded: dict[str, ModuleType] = {}
_reasons: dict[str, str] = {}


def _load(name):
    if name not in _loaded and name not in _reasons:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name])
        except Exception as exc:  # missing extension, numba or GPU
            _reasons[name] = f"{type(exc).__name__}: {exc}"
    return _loaded.get(name)


def available_backends() -> list[str]:
    """Names of the backends usable in this process, fastest first.

    Returns
    -------
    list of str
        A subset of ``["cuda", "c", "numpy"]``; "numpy" is always there.
        ``unavailable_reasons()`` says why any other is missing.

    Examples
    --------
    >>> import fastlstm
    >>> "numpy" in fastlstm.available_backends()
    True
    """
    return [n for n in ("cuda", "c", "numpy") if _load(n) is not None]


def unavailable_reasons() -> dict[str, str]:
    """Why each known backend that is not available could not be loaded.

    Returns
    -------
    dict of str to str
        Backend name to the error its import raised (for example a missing
        numba-cuda, no GPU, or no compiled extension).
    """
    available_backends()
    return dict(_reasons)


def check_name(name: str) -> str:
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


def is_device_array(a: Any, name: str | None = None) -> bool:
    """True for arrays in GPU memory: ``__cuda_array_interface__`` or a Numba device array.

    A CUDA tensor that requires grad is a TypeError that says to pass ``.detach()``
    (naming the argument when ``name`` is given); the rule is ``_validate.is_device_array``.
    """
    return bool(_validate.is_device_array(a, name))


def get_backend(name: str = "auto", arrays: Iterable[Any] = ()) -> ModuleType:
    """The backend module for ``name`` ("auto" or a backend name) and these inputs."""
    name = check_name(name)
    if name == "auto":
        name = _config.backend_override() or "auto"
        if name != "auto" and name not in KNOWN:
            raise ValueError(f"unknown backend {name!r} (from {_config.BACKEND_ENV}); known "
                             f"backends: {', '.join(KNOWN)}; available here: "
                             f"{', '.join(available_backends())}")
    if name != "auto":
        return _require(name)
    if any(is_device_array(a) for a in arrays) and _load("cuda") is not None:
        return _loaded["cuda"]
    if _load("c") is not None:
        return _loaded["c"]
    return _require("numpy")
