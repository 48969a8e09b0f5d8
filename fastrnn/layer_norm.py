"""LayerNorm-LSTM and LayerNorm-GRU: layers and cells.

``LayerNormLSTM`` / ``LayerNormGRU`` take ``torch.nn.LSTM`` / ``torch.nn.GRU``'s arguments,
parameters (names, shapes, init) and inputs and outputs, plus, per layer-direction, the
LayerNorm gains and biases ``ln_ih_weight_l{k}``, ``ln_ih_bias_l{k}``, ``ln_hh_weight_l{k}``,
``ln_hh_bias_l{k}`` (``G*H`` each) and, for the LSTM, ``ln_c_weight_l{k}``, ``ln_c_bias_l{k}``
(``H`` each), ``_reverse`` for the second direction; gains start at 1, biases at 0. The cells
have the same parameters without the ``_l{k}`` suffix. Equations: :mod:`fastrnn.cells.variants`.

The normalisation of the input projection ``LN(W_ih x + b_ih)`` does not depend on the
recurrence: it runs over the whole sequence before each layer's time loop; the recurrent
one and the cell state's run inside it (the cell's pointwise functions).

Example::

    >>> import torch, fastrnn
    >>> lstm = fastrnn.LayerNormLSTM(10, 20, num_layers=2, batch_first=True)
    >>> out, (h_n, c_n) = lstm(torch.randn(4, 7, 10))
    >>> out.shape, h_n.shape
    (torch.Size([4, 7, 20]), torch.Size([2, 4, 20]))
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .cell_modules import _FastCellBase
from .cells.variants import layer_norm_gru, layer_norm_lstm
from .modules import _FastRNNBase

__all__ = ["LayerNormLSTM", "LayerNormGRU", "LayerNormLSTMCell", "LayerNormGRUCell"]

_GRU_PROJ_MESSAGE = "proj_size argument is only supported for LSTM, not RNN or GRU"


def _refuses_proj_size(message):
    """A constructor that raises ``ValueError(message)`` when ``proj_size`` is passed."""

    def wrap(init):
        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            if "proj_size" in kwargs:
                raise ValueError(message)
            init(self, *args, **kwargs)

        return __init__

    return wrap


def _stems(lstm: bool, gates: int, hidden: int) -> dict:
    shapes = {
        "ln_ih_weight": (gates * hidden,), "ln_ih_bias": (gates * hidden,),
        "ln_hh_weight": (gates * hidden,), "ln_hh_bias": (gates * hidden,),
    }
    if lstm:
        shapes.update(ln_c_weight=(hidden,), ln_c_bias=(hidden,))
    return shapes


def _cell_p(get, lstm: bool, gates: int, hidden: int) -> torch.Tensor:
    """The cell's ``p`` ``(param_rows, H)`` from its parameters (``get(stem)``)."""
    parts = [get("ln_hh_weight").view(gates, hidden), get("ln_hh_bias").view(gates, hidden)]
    if lstm:
        parts += [get("ln_c_weight").view(1, hidden), get("ln_c_bias").view(1, hidden)]
    return torch.cat(parts)


class _LayerNormBase(_FastRNNBase, nn.RNNBase):
    _lstm = True
    _kind = None  # (the cell of this eps, set by the constructor)

    def _setup(self, mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
               device, dtype, eps, backend, regularisers):
        nn.RNNBase.__init__(
            self, mode, input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
            dropout=dropout, bidirectional=bidirectional, device=device, dtype=dtype,
        )
        self.eps = float(eps)
        self._kind = (layer_norm_lstm if self._lstm else layer_norm_gru)(self.eps)
        self._register_unit_params(_stems(self._lstm, self._kind.gates, hidden_size), device, dtype)
        self._init_unit_params()  # (the weights keep the draws torch.nn's constructor made)
        self._init_backend(backend)
        self._init_regularisers(*regularisers)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps}"

    def flatten_parameters(self) -> None:
        """Nothing to do: fastrnn reads the parameters as they are (cuDNN's flat weight
        buffer is for torch's own kernels, which do not run this cell)."""

    def _count(self) -> int:
        return self.num_layers * (2 if self.bidirectional else 1)

    def _cell_params(self):
        gates, hidden = self._kind.gates, self.hidden_size
        return [_cell_p(lambda stem: self._unit_param(stem, idx), self._lstm, gates, hidden)
                for idx in range(self._count())]

    def _input_norm(self):
        count = self._count()
        return ([self._unit_param("ln_ih_weight", i) for i in range(count)],
                [self._unit_param("ln_ih_bias", i) for i in range(count)], self.eps)


class LayerNormLSTM(_LayerNormBase):
    """An LSTM with LayerNorm on its input and recurrent pre-activations and on the cell
    state as it enters the output (Ba et al. 2016); see the module docstring.

    Inputs and outputs as ``torch.nn.LSTM`` (``hx = (h0, c0)``, ``(output, (h_n, c_n))``,
    ``batch_first``, unbatched, ``PackedSequence``), plus ``forward(..., resets=...)``.
    """

    @_refuses_proj_size("fastrnn.LayerNormLSTM: proj_size is not supported (LayerNorm-LSTM has no projection)")
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        eps: float = 1e-5,
        backend: str | None = None,
        zoneout=0.0,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        self._setup("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                    device, dtype, eps, backend, (zoneout, recurrent_dropout, weight_drop))

    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden


class LayerNormGRU(_LayerNormBase):
    """A GRU with LayerNorm on its input and recurrent pre-activations; see the module
    docstring. Inputs and outputs as ``torch.nn.GRU``, plus ``forward(..., resets=...)``."""

    _lstm = False

    @_refuses_proj_size(_GRU_PROJ_MESSAGE)
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        eps: float = 1e-5,
        backend: str | None = None,
        zoneout: float = 0.0,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        self._setup("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                    device, dtype, eps, backend, (zoneout, recurrent_dropout, weight_drop))


class _LayerNormCellBase(_FastCellBase, nn.RNNCellBase):
    _lstm = True

    def _setup(self, input_size, hidden_size, bias, device, dtype, eps, backend):
        self.eps = float(eps)
        kind = (layer_norm_lstm if self._lstm else layer_norm_gru)(self.eps)
        nn.RNNCellBase.__init__(self, input_size, hidden_size, bias, num_chunks=kind.gates, device=device,
                                dtype=dtype)
        self._kind = kind
        for stem, shape in _stems(self._lstm, kind.gates, hidden_size).items():
            self.register_parameter(stem, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self.reset_parameters()
        self._init_backend(backend)

    def reset_parameters(self) -> None:
        """torch's init of the weights (``torch.nn.LSTMCell``'s draws), gains 1, biases 0."""
        if not hasattr(self, "_kind"):
            return  # (RNNCellBase's constructor calls this before the LayerNorm parameters exist)
        self._init_torch_weights()
        for stem in _stems(self._lstm, self._kind.gates, self.hidden_size):
            nn.init.constant_(getattr(self, stem), 1.0 if stem.endswith("_weight") else 0.0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps}"

    def forward(self, input, hx=None):
        """One step: ``(h', c')`` for the LSTM cell, ``h'`` for the GRU cell."""
        states_count = 2 if self._lstm else 1
        input, states, is_batched = self._prepare(input, hx, states_count)
        p = _cell_p(lambda stem: getattr(self, stem), self._lstm, self._kind.gates, self.hidden_size)
        h, c = self._step(self._kind, input, states, [p], ([self.ln_ih_weight], [self.ln_ih_bias], self.eps))
        if self._lstm:
            return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))
        return h if is_batched else h.squeeze(0)


class LayerNormLSTMCell(_LayerNormCellBase):
    """One step of :class:`LayerNormLSTM`: ``torch.nn.LSTMCell``'s parameters and inputs,
    plus ``ln_ih_weight``, ``ln_ih_bias``, ``ln_hh_weight``, ``ln_hh_bias`` (``4H``) and
    ``ln_c_weight``, ``ln_c_bias`` (``H``); returns ``(h', c')``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 eps: float = 1e-5, backend: str | None = None) -> None:
        self._setup(input_size, hidden_size, bias, device, dtype, eps, backend)


class LayerNormGRUCell(_LayerNormCellBase):
    """One step of :class:`LayerNormGRU`: ``torch.nn.GRUCell``'s parameters and inputs,
    plus ``ln_ih_weight``, ``ln_ih_bias``, ``ln_hh_weight``, ``ln_hh_bias`` (``3H``);
    returns ``h'``."""

    _lstm = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 eps: float = 1e-5, backend: str | None = None) -> None:
        self._setup(input_size, hidden_size, bias, device, dtype, eps, backend)
