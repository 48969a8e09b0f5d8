"""Cell definitions: :class:`Cell`, torch's four cells, and the registry by name.

A new cell kind is one :class:`Cell` (see :mod:`fastrnn.cells.base` for the pointwise
interface and ``examples/custom_cell.py`` for a complete one); every backend and kernel
tier reads it from there.
"""

from .base import MAX_GATES, Cell, defined, get
from .builtin import BUILTIN, GRU, LSTM, RNN_RELU, RNN_TANH
from .variants import LSTM_PEEPHOLE, layer_norm_gru, layer_norm_lstm

__all__ = ["Cell", "get", "defined", "BUILTIN", "LSTM", "GRU", "RNN_TANH", "RNN_RELU", "MAX_GATES",
           "LSTM_PEEPHOLE", "layer_norm_lstm", "layer_norm_gru"]
