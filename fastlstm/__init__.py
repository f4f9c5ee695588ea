"""fastlstm: fast, exact LSTM forward and backward passes for NumPy.

Public API: ``LSTM`` (multi-layer, torch.nn.LSTM conventions), ``LSTMCell``, the functional
single-layer ``lstm_forward`` / ``lstm_backward``, ``available_backends()``
and ``show_config()``. Importing it without the compiled C backend warns once
(a ``RuntimeWarning``), unless ``FASTLSTM_BACKEND`` names a backend or
``FASTLSTM_PUREPYTHON=1`` says that the pure-NumPy install is intended.
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib.util as _importlib_util
import warnings as _warnings

from . import _config
from ._info import show_config
from .backends import available_backends
from .cell import LSTMCell
from .functional import LSTMCache, lstm_backward, lstm_forward
from .keras import from_keras, to_keras
from .layer import LSTM
from .onnx import from_onnx, to_onnx

__all__ = ["LSTM", "LSTMCell", "LSTMCache", "lstm_forward", "lstm_backward", "available_backends",
           "show_config", "to_onnx", "from_onnx", "from_keras", "to_keras", "__version__"]


def _warn_without_c_backend() -> None:
    # find_spec looks for the extension's file without loading it (loading would import
    # SciPy's BLAS): the import stays as fast as it was.
    if _importlib_util.find_spec("fastlstm.backends._c") is not None:
        return
    if _config.backend_override() is not None:  # a backend was chosen by name
        return
    try:
        if _config.pure_python():
            return
    except _config.ConfigError:  # a bad value is reported by show_config, not at import
        pass
    _warnings.warn(
        "fastlstm: the compiled C backend is not installed (no wheel for this platform and no "
        "working C compiler at install time, or FASTLSTM_PUREPYTHON=1); running on the "
        "pure-NumPy backend, which is correct but much slower. Install a wheel, or reinstall "
        "with a C compiler; set FASTLSTM_BACKEND=numpy to silence this warning.",
        RuntimeWarning, stacklevel=3)  # the line that imports fastlstm


_warn_without_c_backend()
