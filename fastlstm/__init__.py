"""fastlstm: fast, exact LSTM forward and backward passes for NumPy.

Public API: ``LSTM`` (multi-layer, torch.nn.LSTM conventions), the functional
single-layer ``lstm_forward`` / ``lstm_backward``, ``available_backends()``
and ``show_config()``.
"""

__version__ = "0.1.0"

from ._info import show_config
from .backends import available_backends
from .functional import LSTMCache, lstm_backward, lstm_forward
from .layer import LSTM

__all__ = ["LSTM", "LSTMCache", "lstm_forward", "lstm_backward", "available_backends",
           "show_config", "__version__"]
