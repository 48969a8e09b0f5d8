"""Drop-in cells: ``RNNCell``, ``LSTMCell``, ``GRUCell``, one timestep through the same engine (T = 1).

They subclass their ``torch.nn`` namesakes directly (constructor, parameters, init,
``state_dict``) and replace ``forward``. ``LSTMCell`` takes ``peephole=True`` like
:class:`fastrnn.LSTM`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._docs import with_torch_docs
from ._quantization import warns_when_quantized
from .backends import validate_backend_name
from .cells.variants import LSTM_PEEPHOLE, PEEPHOLE_WEIGHTS as _PEEPHOLES
from .functional import autocast_enabled, stack
from .kinds import CellKind

__all__ = ["RNNCell", "LSTMCell", "GRUCell"]



class _FastCellBase:
    def _init_backend(self, backend):
        self.backend = validate_backend_name(backend)

    def _init_torch_weights(self) -> None:
        """``torch.nn``'s cell init of ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``
        (the same draws in the same order), for a cell with parameters of its own besides."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            weight = getattr(self, name, None)
            if weight is not None:
                nn.init.uniform_(weight, -stdv, stdv)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this before compiling a module: refuse with the reason.
        from .ops import TORCHSCRIPT_MESSAGE

        raise RuntimeError(TORCHSCRIPT_MESSAGE)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.backend is None else f"{s}, backend={self.backend!r}"

    def _check_states(self, input, states):
        # torch's checks (aten check_rnn_cell_forward_input / _hidden), same wording
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}")
        for i, h in enumerate(states):
            if input.size(0) != h.size(0):
                raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{i} batch size {h.size(0)}")
            if h.size(1) != self.hidden_size:
                raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got {h.size(1)}, expected {self.hidden_size}")

    def _step(self, kind, input, states, params=None, input_norm=None):
        """Check, run one step, return ``(h', c' | None)`` batched."""
        if input.dtype != self.weight_ih.dtype and not autocast_enabled(input.device.type):
            raise RuntimeError(
                f"mat1 and mat2 must have the same dtype, but got {input.dtype} and {self.weight_ih.dtype}"
            )
        self._check_states(input, states)
        h0 = states[0].unsqueeze(0)
        c0 = states[1].unsqueeze(0) if len(states) > 1 else None
        weights = [(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, None)]
        _, h_n, c_n = stack(kind, input.unsqueeze(0), None, h0, c0, weights, backend=self.backend, cell=True,
                            params=params, input_norm=input_norm)
        return h_n[0], (c_n[0] if c_n is not None else None)

    def _prepare(self, input, hx, n_states):
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            states = tuple(hx) if n_states == 2 else (hx,)
            for i, value in enumerate(states):
                if value.dim() not in (1, 2):
                    what = f"hx[{i}]" if n_states == 2 else "hidden"
                    raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {value.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            states = (zeros,) * n_states
        elif not is_batched:
            states = tuple(s.unsqueeze(0) for s in states)
        return input, states, is_batched


@with_torch_docs
@warns_when_quantized
class RNNCell(_FastCellBase, nn.RNNCell):
    """Drop-in ``torch.nn.RNNCell``: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    Input ``(B, I)`` or ``(I,)``; ``hx`` ``(B, H)`` or ``(H,)``; returns ``h'``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias=bias, nonlinearity=nonlinearity, device=device, dtype=dtype)
        self._init_backend(backend)

    def forward(self, input, hx=None):
        input, states, is_batched = self._prepare(input, hx, 1)
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        h, _ = self._step(CellKind.from_mode("RNN", self.nonlinearity), input, states)
        return h if is_batched else h.squeeze(0)


@with_torch_docs
@warns_when_quantized
class LSTMCell(_FastCellBase, nn.LSTMCell):
    """Drop-in ``torch.nn.LSTMCell``; returns ``(h', c')``. ``peephole=True`` adds
    ``weight_ci``, ``weight_cf``, ``weight_co`` (``H`` each, zero at init; see ``LSTM``)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
        peephole: bool = False,
    ) -> None:
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.peephole = bool(peephole)
        if self.peephole:
            for stem in _PEEPHOLES:
                self.register_parameter(stem, nn.Parameter(torch.zeros(hidden_size, device=device, dtype=dtype)))
        self._init_backend(backend)

    def reset_parameters(self) -> None:
        """torch's init of the weights (its draws), peephole weights zero."""
        self._init_torch_weights()
        for stem in _PEEPHOLES if getattr(self, "peephole", False) else ():
            nn.init.zeros_(getattr(self, stem))

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return f"{s}, peephole=True" if self.peephole else s

    def forward(self, input, hx=None):
        input, states, is_batched = self._prepare(input, hx, 2)
        if self.peephole:
            params = [torch.stack([getattr(self, stem) for stem in _PEEPHOLES])]
            h, c = self._step(LSTM_PEEPHOLE, input, states, params)
        else:
            h, c = self._step(CellKind.LSTM, input, states)
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))


@with_torch_docs
@warns_when_quantized
class GRUCell(_FastCellBase, nn.GRUCell):
    """Drop-in ``torch.nn.GRUCell``; returns ``h'``."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self._init_backend(backend)

    def forward(self, input, hx=None):
        input, states, is_batched = self._prepare(input, hx, 1)
        h, _ = self._step(CellKind.GRU, input, states)
        return h if is_batched else h.squeeze(0)
