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

One extra keyword, ``backend`` (``"auto"``, ``"reference"``, ``"triton"``, ``"native"``,
or None to follow ``FASTRNN_BACKEND``); ``LSTM`` and ``LSTMCell`` take ``peephole=True``
(per-unit peephole weights ``weight_ci/cf/co``, ONNX LSTM's ``P``), and the layers'
``forward`` takes ``resets`` (bool flags where a sequence starts a new episode: the state
entering that step is zero, in every layer and direction).

Example::

    >>> import torch, fastrnn
    >>> lstm = fastrnn.LSTM(10, 20, num_layers=2, batch_first=True)
    >>> out, (h_n, c_n) = lstm(torch.randn(4, 7, 10))
    >>> out.shape, h_n.shape, c_n.shape
    (torch.Size([4, 7, 20]), torch.Size([2, 4, 20]), torch.Size([2, 4, 20]))
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import onnx_export, ops
from ._docs import with_torch_docs
from ._quantization import warns_when_quantized
from .backends import env_backend, native, validate_backend_name
from .cell_modules import GRUCell, LSTMCell, RNNCell
from .cells.variants import LSTM_PEEPHOLE, PEEPHOLE_WEIGHTS as _PEEPHOLES
from . import functional
from .functional import stack
from .regularisers import check_probability, zoneout_pair
from .kinds import CellKind

_TORCH_KINDS = tuple(CellKind)

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]


def _refuses_proj_size(init):
    """torch.nn.RNN / GRU's refusal of ``proj_size`` (their ``(*args, **kwargs)`` constructors
    raise it whenever the keyword is given), in front of a constructor whose signature
    (what ``inspect.signature`` and ``help`` show) stays the explicit one."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        init(self, *args, **kwargs)

    return __init__


class _FastRNNBase:
    """``forward`` shared by RNN, LSTM and GRU; mixed in before the ``torch.nn`` class."""

    # torch's wording differs per class for a wrong input rank
    _input_dim_message = "{name}: Expected input to be 2D or 3D, got {dim}D instead"

    def _init_backend(self, backend):
        self.backend = validate_backend_name(backend)

    def extra_repr(self) -> str:
        s = super().extra_repr() + self._regulariser_repr()
        return s if self.backend is None else f"{s}, backend={self.backend!r}"

    # Regularisers inside the recurrence (fastrnn.regularisers); off unless the constructor
    # was given them.
    _zoneout_pair = (0.0, 0.0)
    recurrent_dropout = 0.0
    weight_drop = 0.0

    def _init_regularisers(self, zoneout, recurrent_dropout, weight_drop) -> None:
        """Check and keep the regulariser probabilities (ValueError outside [0, 1), as torch's dropout)."""
        self._zoneout_pair = zoneout_pair(zoneout, self._kind.has_cell_state)
        self.zoneout = zoneout
        self.recurrent_dropout = check_probability("recurrent_dropout", recurrent_dropout)
        self.weight_drop = check_probability("weight_drop", weight_drop)
        if (any(self._zoneout_pair) or self.recurrent_dropout) and self.proj_size > 0:
            raise ValueError("fastrnn: zoneout and recurrent_dropout are not supported with proj_size > 0")

    @property
    def _regularised(self) -> bool:
        return bool(any(self._zoneout_pair) or self.recurrent_dropout or self.weight_drop)

    @property
    def _loop_regularised(self) -> bool:
        """A regulariser torch's kernels cannot run: zoneout, recurrent dropout, or DropConnect
        drawn between the layers of a stack with dropout (torch's kernels draw the dropout masks
        inside the call: the draws would come in another order than the engine's)."""
        return bool(any(self._zoneout_pair) or self.recurrent_dropout
                    or (self.weight_drop and self.dropout and self.num_layers > 1))

    def _regulariser_repr(self) -> str:
        parts = [f"{name}={value}" for name, value in (("zoneout", getattr(self, "zoneout", 0.0)),
                 ("recurrent_dropout", self.recurrent_dropout), ("weight_drop", self.weight_drop)) if value]
        return "".join(f", {p}" for p in parts)

    # The cell's own parameters beyond torch's weights (none for torch's cells): per
    # layer-direction name stems, e.g. ``weight_ci`` -> ``weight_ci_l0``, ``weight_ci_l0_reverse``.
    _unit_params: tuple[str, ...] = ()

    def _extra_name(self, stem: str, idx: int) -> str:
        directions = 2 if self.bidirectional else 1
        return f"{stem}_l{idx // directions}{'_reverse' if idx % directions else ''}"

    def _register_unit_params(self, shapes: dict, device, dtype) -> None:
        """One parameter per stem and layer-direction (``shapes``: stem -> shape)."""
        self._unit_params = tuple(shapes)
        for idx in range(self.num_layers * (2 if self.bidirectional else 1)):
            for stem, shape in shapes.items():
                self.register_parameter(self._extra_name(stem, idx),
                                        nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))

    def _unit_param(self, stem: str, idx: int) -> torch.Tensor:
        return getattr(self, self._extra_name(stem, idx))

    def reset_parameters(self) -> None:
        """torch's init of the weights (the same draws as the ``torch.nn`` module), then the
        cell's own parameters: gains (``*_weight``) 1, everything else 0."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in (getattr(self, n) for n in self._flat_weights_names):
            nn.init.uniform_(weight, -stdv, stdv)
        self._init_unit_params()

    def _init_unit_params(self) -> None:
        for idx in range(self.num_layers * (2 if self.bidirectional else 1)) if self._unit_params else ():
            for stem in self._unit_params:
                nn.init.constant_(self._unit_param(stem, idx), 1.0 if stem.endswith("_weight") else 0.0)

    def _cell_params(self):
        """The cell's ``p`` of each layer-direction, or None (torch's cells)."""
        return None

    def _input_norm(self):
        """``(weights, biases, eps)`` of a LayerNorm over each input projection, or None."""
        return None

    def _resets(self, resets, input, data, packed, is_batched, batch_sizes, sorted_indices):
        """``resets`` checked and in the engine's layout (``(T, B)`` padded, ``(N,)`` packed),
        before any work; torch's kind of error (RuntimeError) for a wrong argument."""
        name = type(self).__name__
        if packed:
            if not isinstance(resets, PackedSequence):
                raise RuntimeError(f"{name}: with a PackedSequence input, resets must be a PackedSequence of "
                                   f"bools with the same batch_sizes, got {type(resets).__name__}")
            same_order = (resets.sorted_indices is None) == (sorted_indices is None) and (
                sorted_indices is None or torch.equal(resets.sorted_indices, sorted_indices))
            if not torch.equal(resets.batch_sizes, batch_sizes) or not same_order:
                raise RuntimeError(f"{name}: resets must be packed like the input (same batch_sizes and "
                                   "sorted_indices: pack them with the same lengths and enforce_sorted)")
            flags, expected = resets.data, (data.shape[0],)
        else:
            if not isinstance(resets, torch.Tensor):
                raise RuntimeError(f"{name}: resets must be a bool tensor, got {type(resets).__name__}")
            flags, expected = resets, tuple(input.shape[:-1]) if is_batched else (input.shape[1 if self.batch_first else 0],)
        if flags.dtype != torch.bool:
            raise RuntimeError(f"{name}: resets must be a bool tensor, got dtype {flags.dtype}")
        if flags.device != data.device:
            raise RuntimeError(f"{name}: resets must be on the input's device ({data.device}), got {flags.device}")
        if tuple(flags.shape) != expected:
            layout = "(B, T)" if self.batch_first else "(T, B)"
            raise RuntimeError(f"{name}: resets must have the input's shape without its feature dimension, "
                               f"{layout} batched or (T,) unbatched: expected {list(expected)}, got {list(flags.shape)}")
        if packed:
            return flags
        if not is_batched:
            return flags.unsqueeze(1)
        return flags.t() if self.batch_first else flags

    def __prepare_scriptable__(self):
        # torch.jit.script calls this before compiling a module: refuse with the reason.
        from .ops import TORCHSCRIPT_MESSAGE

        raise RuntimeError(TORCHSCRIPT_MESSAGE)

    @property
    def _kind(self) -> CellKind:
        # (LSTM and GRU override this with a constant: a getattr that misses costs an
        # AttributeError inside nn.Module.__getattr__ on every call)
        return CellKind.from_mode(self.mode, getattr(self, "nonlinearity", "tanh"))

    def _layer_weights(self):
        # torch.nn.RNNBase lists each layer-direction's parameters in this order (its
        # __init__): weight_ih, weight_hh, [bias_ih, bias_hh], [weight_hr]. Read by position:
        # parsing the names on every call cost ~10 us, a tenth of a whole layer at B=1.
        names = self._flat_weights_names
        per_layer = 2 + 2 * bool(self.bias) + (self.proj_size > 0)
        params = self._parameters  # (a dictionary lookup; getattr falls back to Module.__getattr__)
        weights = []
        for start in range(0, len(names), per_layer):
            p = [params[n] if n in params else getattr(self, n) for n in names[start : start + per_layer]]
            biases = (p[2], p[3]) if self.bias else (None, None)
            weights.append((p[0], p[1], *biases, p[-1] if self.proj_size > 0 else None))
        return weights

    def _zeros(self, input, batch, size):
        directions = 2 if self.bidirectional else 1
        return torch.zeros(self.num_layers * directions, batch, size, dtype=input.dtype, device=input.device)

    def _runs_torch_forward(self, input, hx) -> bool:
        """True when this call runs on torch's own CPU kernels (backend ``native``, or
        ``auto`` when :func:`fastrnn.backends.native.auto_cpu_backend` says ``native``) in
        plain eager mode.

        Those kernels are what the ``torch.nn`` module's own ``forward`` calls, for the
        whole stack at once, with torch's own autograd nodes for oneDNN's LSTM (whose
        backward is differentiable again, so second derivatives stay exact). Any other
        route to them costs more Python per call; at T=10, B=1 a whole layer takes
        100-450 us here. So ``forward`` then runs ``torch.nn``'s own ``forward``: same
        checks, same kernels, same results. Not under autocast, tracing, ``torch.func`` or
        forward-mode AD (the engine path handles those).
        """
        # Cheapest tests first: this runs on every call, and at T=10, B=1 each microsecond
        # is 1 % of the call.
        if self._unit_params or self._kind not in _TORCH_KINDS or self._loop_regularised:
            return False  # (a cell of fastrnn's own, or a regulariser inside the loop: torch has no kernel for it)
        if torch.autograd.forward_ad._current_level >= 0:
            return False  # (the engine path refuses forward-mode AD with a clear message)
        name = self.backend if self.backend is not None else (env_backend() or "auto")
        if name != "auto" and name != "native":
            return False
        data = input.data if type(input) is PackedSequence else input
        if type(data) is not torch.Tensor:
            return False  # (not a tensor: the engine path raises torch's error)
        if self.weight_drop and self.training and not self._plain_call(input, hx):
            return False  # (DropConnect is applied by _native_forward's own call only)
        if not data.is_cpu or torch._C._is_any_autocast_enabled() or not ops.eager_call(data):
            return False
        needs_grad = torch.is_grad_enabled() and (
            data.requires_grad
            or any(h.requires_grad for h in ((hx,) if isinstance(hx, torch.Tensor) else (hx or ())))
            or any(w.requires_grad for w in self._flat_weights)
        )
        kind, packed, proj = self._kind, data is not input, self.proj_size > 0
        if name == "native":
            # torch.nn would train GRU / RNN / packed or projected LSTM on its per-step
            # autograd graph: backend 'native' refuses those (the engine path raises).
            return not needs_grad or native.onednn_trains(kind, data.dtype, packed, proj)
        return native.auto_cpu_backend(
            kind, data.dtype, packed=packed, proj=proj, needs_grad=needs_grad, tracing=False
        ) == "native"

    def _plain_call(self, input, hx) -> bool:
        """A padded batched input with no ``hx`` or a well-formed one: the case
        :meth:`_native_forward` runs itself (anything else it hands to ``torch.nn``'s forward)."""
        if type(input) is not torch.Tensor or input.dim() != 3 or hx is None:
            return type(input) is torch.Tensor and input.dim() == 3
        if self._kind is CellKind.LSTM:
            return type(hx) is tuple and len(hx) == 2 and all(type(h) is torch.Tensor and h.dim() == 3 for h in hx)
        return type(hx) is torch.Tensor and hx.dim() == 3

    def _native_forward(self, input, hx):
        """``torch.nn``'s forward on torch's own kernels (see :meth:`_runs_torch_forward`).

        The common case (padded batched input) in a few lines: torch's checks
        (``check_forward_args``) and the one ``torch._VF`` call its forward makes, with the
        parameters read from ``_parameters`` (torch's ``_update_flat_weights`` compares
        weak references on every call: ~12 us, a tenth of a layer at T=10, B=1). Anything
        else (packed or unbatched input) goes through ``torch.nn``'s forward itself.
        """
        if not self._plain_call(input, hx):
            return self._torch_forward(input, hx)
        lstm = self._kind is CellKind.LSTM
        if hx is None:
            batch = input.size(0) if self.batch_first else input.size(1)
            layers = self.num_layers * (2 if self.bidirectional else 1)
            state = self.proj_size if self.proj_size > 0 else self.hidden_size
            kw = dict(dtype=input.dtype, device=input.device)
            h0 = torch.zeros(layers, batch, state, **kw)
            hx = (h0, torch.zeros(layers, batch, self.hidden_size, **kw)) if lstm else h0
        self.check_forward_args(input, hx, None)
        params = self._parameters
        weights = [params[n] if n in params else getattr(self, n) for n in self._flat_weights_names]
        if self.weight_drop and self.training:
            # DropConnect on each W_hh, drawn in layer-direction order as the engine draws them
            weights = [functional.drop_connect(w, self.weight_drop) if n.startswith("weight_hh") else w
                       for n, w in zip(self._flat_weights_names, weights)]
        result = native.VF_OPS[self._kind](
            input, hx, weights, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional,
            self.batch_first,
        )
        if lstm:
            return result[0], (result[1], result[2])
        return result[0], result[1]

    def forward(self, input, hx=None, *traced, resets=None):
        """Run the recurrence; same arguments and results as the ``torch.nn`` module.

        ``resets`` (optional): bool, shaped like ``input`` without its feature dimension
        (``(T, B)``, ``(B, T)`` with ``batch_first``, ``(T,)`` unbatched; a ``PackedSequence``
        of bools packed like a packed input). ``True`` at ``[t, b]``: sequence ``b`` starts a
        new episode at step ``t``; every layer and direction computes that episode as if it
        were a sequence of its own, from a zero state (the first one from ``hx``), and no
        gradient crosses the boundary.
        """
        if traced:
            # TorchScript's tracer (and the exporter built on it) passes every parameter
            # positionally, None for the keyword-only ones: refuse it with the reason.
            if torch.jit.is_tracing():
                raise RuntimeError(ops.TORCHSCRIPT_MESSAGE)
            raise TypeError(f"forward() takes from 2 to 3 positional arguments but {3 + len(traced)} were given")
        if resets is None and self._runs_torch_forward(input, hx):
            return self._native_forward(input, hx)
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
            self.check_input(data, batch_sizes)  # (the zero states have the expected sizes)
        else:
            self.check_forward_args(data, hx, batch_sizes)
        if resets is not None:
            resets = self._resets(resets, input, data, packed, is_batched, batch_sizes, sorted_indices)

        seq = data if packed else (input.transpose(0, 1) if self.batch_first else input)
        h0, c0 = hx if lstm else (hx, None)
        y, h_n, c_n = stack(
            kind, seq, batch_sizes, h0, c0, self._layer_weights(),
            bidirectional=self.bidirectional, dropout=self.dropout, training=self.training,
            backend=self.backend, params=self._cell_params(), input_norm=self._input_norm(), resets=resets,
            zoneout=self._zoneout_pair, recurrent_dropout=self.recurrent_dropout, weight_drop=self.weight_drop,
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

    @_refuses_proj_size
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
        zoneout=0.0,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
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
        self._init_regularisers(zoneout, recurrent_dropout, weight_drop)

    _torch_forward = nn.RNN.forward  # torch.nn's own (see _runs_torch_forward)


@with_torch_docs
@warns_when_quantized
class LSTM(_FastRNNBase, nn.RNNBase):
    """Drop-in ``torch.nn.LSTM`` (with ``proj_size``) running on the fastrnn engine.

    Returns ``(output, (h_n, c_n))`` with ``h_n`` ``(L*D, B, P)`` and ``c_n`` ``(L*D, B, H)``.
    ``peephole=True`` adds ``weight_ci_l{k}``, ``weight_cf_l{k}``, ``weight_co_l{k}`` (``H``
    each, ``_reverse`` likewise, initialised to zero): ``i = sigmoid(... + w_ci * c_{t-1})``,
    ``f = sigmoid(... + w_cf * c_{t-1})``, ``o = sigmoid(... + w_co * c_t)``.
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
        peephole: bool = False,
        zoneout=0.0,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        if peephole and proj_size > 0:
            raise ValueError("fastrnn.LSTM: peephole=True is not supported with proj_size > 0")
        nn.RNNBase.__init__(
            self, "LSTM", input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
            dropout=dropout, bidirectional=bidirectional, proj_size=proj_size, device=device, dtype=dtype,
        )
        self.peephole = bool(peephole)
        if self.peephole:
            self._kind = LSTM_PEEPHOLE
            self._register_unit_params({stem: (hidden_size,) for stem in _PEEPHOLES}, device, dtype)
            self._init_unit_params()
        self._init_backend(backend)
        self._init_regularisers(zoneout, recurrent_dropout, weight_drop)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return f"{s}, peephole=True" if self.peephole else s

    def _cell_params(self):
        if not self.peephole:
            return None
        count = self.num_layers * (2 if self.bidirectional else 1)
        return [torch.stack([self._unit_param(stem, idx) for stem in _PEEPHOLES]) for idx in range(count)]

    # torch.nn.LSTM's own methods: the (h, c) checks and permutation.
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden
    _torch_forward = nn.LSTM.forward  # torch.nn's own (see _runs_torch_forward)
    _kind = CellKind.LSTM


@with_torch_docs
@warns_when_quantized
class GRU(_FastRNNBase, nn.RNNBase):
    """Drop-in ``torch.nn.GRU`` (torch's ``b_hn`` rule) running on the fastrnn engine."""

    @_refuses_proj_size
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
        zoneout: float = 0.0,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        nn.RNNBase.__init__(
            self, "GRU", input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
            dropout=dropout, bidirectional=bidirectional, device=device, dtype=dtype,
        )
        self._init_backend(backend)
        self._init_regularisers(zoneout, recurrent_dropout, weight_drop)

    _torch_forward = nn.GRU.forward  # torch.nn's own (see _runs_torch_forward)
    _kind = CellKind.GRU


