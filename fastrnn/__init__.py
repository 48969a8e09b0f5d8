"""fastrnn: drop-in ``torch.nn`` RNN, LSTM and GRU on a handwritten-backward engine.

On CUDA the time loop runs in fused Triton kernels; on the CPU a pure-PyTorch reference
path runs the same engine. See README.md.
"""

from . import functional
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "functional"]
__version__ = "0.1.0"
