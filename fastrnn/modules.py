"""Drop-in modules: ``RNN``, ``LSTM``, ``GRU`` and their cells.

``RNN``, ``LSTM`` and ``GRU`` subclass ``torch.nn.RNNBase`` and take the rest of their
``torch.nn`` namesake's methods (its argument checks, ``permute_hidden``), so the
constructor, parameter names, init, ``state_dict``, ``repr`` and argument checks are
torch's own; only ``forward`` is replaced, by the fastrnn engine. They are *not*
instances of ``torch.nn.LSTM`` (etc.): TorchDynamo refuses to trace any instance of
``torch.nn.RNN``, ``GRU`` or ``LSTM`` (a hard check in its module builder, lifted only by
the global ``torch._dynamo.config.allow_rnn``), and ``torch.compile`` / ``torch.export``
of a model holding a fastrnn layer must work. ``isinstance(m, torch.nn.RNNBase)`` holds.
The cells subclass their ``torch.nn`` namesakes directly.

One extra keyword, ``backend`` (``"auto"``, ``"reference"``, ``"triton"``, or None to
follow ``FASTRNN_BACKEND``).

Example::

    >>> import torch, fastrnn
    >>> lstm = fastrnn.LSTM(10, 20, num_layers=2, batch_first=True)
    >>> out, (h_n, c_n) = lstm(torch.randn(4, 7, 10))
    >>> out.shape, h_n.shape, c_n.shape
    (torch.Size([4, 7, 20]), torch.Size([2, 4, 20]), torch.Size([2, 4, 20]))
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import onnx_export
from ._docs import with_torch_docs
from ._quantization import warns_when_quantized
from .backends import validate_backend_name
from .functional import autocast_enabled, stack
from .kinds import CellKind

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]


class _FastRNNBase:
    """``forward`` shared by RNN, LSTM and GRU; mixed in before the ``torch.nn`` class."""

    # torch's wording differs per class for a wrong input rank
    _input_dim_message = "{name}: Expected input to be 2D or 3D, got {dim}D instead"

    def _init_backend(self, backend):
        self.backend = validate_backend_name(backend)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.backend is None else f"{s}, backend={self.backend!r}"

    def __prepare_scriptable__(self):
        # torch.jit.script calls this before compiling a module: refuse with the reason.
        from .ops import TORCHSCRIPT_MESSAGE

        raise RuntimeError(TORCHSCRIPT_MESSAGE)

    @property
    def _kind(self) -> CellKind:
        return CellKind.from_mode(self.mode, getattr(self, "nonlinearity", "tanh"))

    def _layer_weights(self):
        names = self._flat_weights_names
        per_layer = len(names) // (self.num_layers * (2 if self.bidirectional else 1))
        weights = []
        for start in range(0, len(names), per_layer):
            params = {n.split("_l")[0]: getattr(self, n) for n in names[start : start + per_layer]}
            weights.append(
                (params["weight_ih"], params["weight_hh"], params.get("bias_ih"), params.get("bias_hh"), params.get("weight_hr"))
            )
        return weights

    def _zeros(self, input, batch, size):
        directions = 2 if self.bidirectional else 1
        return torch.zeros(self.num_layers * directions, batch, size, dtype=input.dtype, device=input.device)

    def forward(self, input, hx=None):
        """Run the recurrence; same arguments and results as the ``torch.nn`` module."""
        kind = self._kind
        lstm = kind.has_cell_state
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        packed = isinstance(input, PackedSequence)
        is_batched = True
        if packed:
            if onnx_export.exporting():  # before int(batch_sizes[0]), which export cannot trace
                raise RuntimeError(f"fastrnn: ONNX export: {onnx_export.PACKED_REASON}")
            data, batch_sizes, sorted_indices, unsorted_indices = input
            batch = int(batch_sizes[0])
            if hx is not None:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            if input.dim() not in (2, 3):
                raise ValueError(self._input_dim_message.format(name=type(self).__name__, dim=input.dim()))
            is_batched = input.dim() == 3
            if hx is not None:
                self._check_hx_rank(hx, is_batched)
                if not is_batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if lstm else hx.unsqueeze(1)
            if not is_batched:
                input = input.unsqueeze(0 if self.batch_first else 1)
            data = input
            batch = input.size(0) if self.batch_first else input.size(1)
        if hx is None:
            h0 = self._zeros(data, batch, out_size)
            hx = (h0, self._zeros(data, batch, self.hidden_size)) if lstm else h0
        self.check_forward_args(data, hx, batch_sizes)

        seq = data if packed else (input.transpose(0, 1) if self.batch_first else input)
        h0, c0 = hx if lstm else (hx, None)
        y, h_n, c_n = stack(
            kind, seq, batch_sizes, h0, c0, self._layer_weights(),
            bidirectional=self.bidirectional, dropout=self.dropout, training=self.training,
            backend=self.backend,
        )
        hidden = (h_n, c_n) if lstm else h_n
        if packed:
            return PackedSequence(y, batch_sizes, sorted_indices, unsorted_indices), self.permute_hidden(
                hidden, unsorted_indices
            )
        output = y.transpose(0, 1) if self.batch_first else y
        if not is_batched:
            output = output.squeeze(0 if self.batch_first else 1)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if lstm else hidden.squeeze(1)
        return output, hidden

    def _check_hx_rank(self, hx, is_batched):
        want = 3 if is_batched else 2
        which = "batched 3-D" if is_batched else "unbatched 2-D"
        if self._kind.has_cell_state:
            if hx[0].dim() != want or hx[1].dim() != want:
                raise RuntimeError(
                    f"For {which} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                )
        elif hx.dim() != want:
            raise RuntimeError(f"For {which} input, hx should also be {want}-D but got {hx.dim()}-D tensor")


@with_torch_docs
@warns_when_quantized
class RNN(_FastRNNBase, nn.RNNBase):
    """Drop-in ``torch.nn.RNN`` (tanh or relu) running on the fastrnn engine.

    Input ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``), ``(T, I)`` unbatched, or a
    ``PackedSequence``; ``hx`` ``(L*D, B, H)``. Returns ``(output, h_n)`` as torch does.
    """

    _input_dim_message = "{name}: Expected input to be 2D or 3D, got {dim}D tensor instead"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
    ) -> None:
        # torch.nn.RNN.__init__'s checks (its own `super()` call needs an instance of
        # torch.nn.RNN, which this class is not: see the module docstring).
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if nonlinearity not in modes:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        nn.RNNBase.__init__(
            self, modes[nonlinearity], input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
            dropout=dropout, bidirectional=bidirectional, device=device, dtype=dtype,
        )
        self._init_backend(backend)


@with_torch_docs
@warns_when_quantized
class LSTM(_FastRNNBase, nn.RNNBase):
    """Drop-in ``torch.nn.LSTM`` (with ``proj_size``) running on the fastrnn engine.

    Returns ``(output, (h_n, c_n))`` with ``h_n`` ``(L*D, B, P)`` and ``c_n`` ``(L*D, B, H)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
    ) -> None:
        nn.RNNBase.__init__(
            self, "LSTM", input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
            dropout=dropout, bidirectional=bidirectional, proj_size=proj_size, device=device, dtype=dtype,
        )
        self._init_backend(backend)

    # torch.nn.LSTM's own methods: the (h, c) checks and permutation.
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden


@with_torch_docs
@warns_when_quantized
class GRU(_FastRNNBase, nn.RNNBase):
    """Drop-in ``torch.nn.GRU`` (torch's ``b_hn`` rule) running on the fastrnn engine."""

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
        backend: str | None = None,
    ) -> None:
        nn.RNNBase.__init__(
            self, "GRU", input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
            dropout=dropout, bidirectional=bidirectional, device=device, dtype=dtype,
        )
        self._init_backend(backend)


# --------------------------------------------------------------------------------------
# Cells: one timestep through the same engine (T = 1)
# --------------------------------------------------------------------------------------


class _FastCellBase:
    def _init_backend(self, backend):
        self.backend = validate_backend_name(backend)

    __prepare_scriptable__ = _FastRNNBase.__prepare_scriptable__

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

    def _step(self, kind, input, states):
        """Check, run one step, return ``(h', c' | None)`` batched."""
        if input.dtype != self.weight_ih.dtype and not autocast_enabled(input.device.type):
            raise RuntimeError(
                f"mat1 and mat2 must have the same dtype, but got {input.dtype} and {self.weight_ih.dtype}"
            )
        self._check_states(input, states)
        h0 = states[0].unsqueeze(0)
        c0 = states[1].unsqueeze(0) if len(states) > 1 else None
        weights = [(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, None)]
        _, h_n, c_n = stack(kind, input.unsqueeze(0), None, h0, c0, weights, backend=self.backend, cell=True)
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
    """Drop-in ``torch.nn.LSTMCell``; returns ``(h', c')``."""

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
        input, states, is_batched = self._prepare(input, hx, 2)
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
