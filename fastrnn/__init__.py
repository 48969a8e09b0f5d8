"""fastrnn: drop-in ``torch.nn`` RNN, LSTM and GRU on a handwritten-backward engine.

On CUDA the time loop runs in fused Triton kernels; on the CPU torch's own kernels or the
reference loops (C++ for torch's cells and the variants, torch ops otherwise) run the same
engine. A cell of one's own is a :class:`Cell` (:mod:`fastrnn.cells`), run as a layer by
:class:`Recurrent`. See README.md.
"""

from . import cells, functional
from .cells import Cell
from .layer_norm import LayerNormGRU, LayerNormGRUCell, LayerNormLSTM, LayerNormLSTMCell
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .recurrent import Recurrent

__all__ = [
    "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "Recurrent", "Cell", "cells", "functional",
    "LayerNormLSTM", "LayerNormGRU", "LayerNormLSTMCell", "LayerNormGRUCell",
]
__version__ = "0.1.0"
