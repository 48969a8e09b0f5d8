"""Functional API: the layer-level recurrences the modules are built from.

Sequences are *flat*: ``(N, features)`` rows grouped by timestep, as in
``PackedSequence.data`` (see :mod:`fastrnn.schedule`). A padded ``(T, B, F)`` tensor is
flat after ``.reshape(T * B, F)`` with ``Schedule.uniform(T, B)``.

Example::

    >>> import torch, fastrnn
    >>> from fastrnn.functional import recurrent_stack, Schedule
    >>> lstm = torch.nn.LSTM(5, 8)
    >>> x = torch.randn(7, 3, 5)
    >>> weights = [tuple(lstm.all_weights[0]) + (None,)]
    >>> y, h_n, c_n = recurrent_stack("LSTM", x.reshape(21, 5), Schedule.uniform(7, 3),
    ...                               torch.zeros(1, 3, 8), torch.zeros(1, 3, 8), weights)
    >>> y.shape, h_n.shape
    (torch.Size([21, 8]), torch.Size([1, 3, 8]))
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F

from . import backends, ops
from .backends import cpu_loops
from .regularisers import draw_recurrent_scale, draw_zoneout, drop_connect
from .kinds import CellKind
from .schedule import Schedule

__all__ = ["Schedule", "CellKind", "recurrent_layer", "recurrent_stack", "stack", "check_tensors"]

LayerWeights = tuple  # (w_ih, w_hh, b_ih | None, b_hh | None, w_hr | None)


def _kind(kind) -> CellKind:
    return CellKind(kind)


def check_tensors(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor | None, weights: Sequence[LayerWeights]) -> None:
    """Raise before any work if devices or dtypes disagree (torch's messages where it has one)."""
    dtype, device = x.dtype, x.device  # (read once: each property read builds an object)
    if x.is_complex() or not x.is_floating_point():
        raise ValueError(f"fastrnn: input must be a floating point tensor, got {dtype}")
    w0 = weights[0][0]
    if device != w0.device:
        raise RuntimeError(
            "Input and parameter tensors are not at the same device, found input tensor at "
            f"{device} and parameter tensor at {w0.device}"
        )
    for name, state in (("hidden", h0), ("cell", c0)):
        if state is None:
            continue
        if state.device != device:
            raise RuntimeError(
                "Input and hidden tensors are not at the same device, found input tensor at "
                f"{device} and {name} tensor at {state.device}"
            )
        if state.dtype != dtype:
            raise RuntimeError(
                f"fastrnn: {name} state dtype ({state.dtype}) does not match input dtype ({dtype})"
            )
    for layer in weights:
        for w in layer:
            if w is not None and (w.dtype != dtype or w.device != device):
                raise RuntimeError(
                    f"fastrnn: parameter of dtype {w.dtype} on {w.device} does not match input "
                    f"of dtype {dtype} on {device}"
                )


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled``, False for device types without autocast (e.g. ``meta``,
    where torch's query raises instead of answering)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _autocast_dtype(device: torch.device, kind: CellKind, cell: bool, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype torch.nn computes in under autocast on ``device``, or None (no autocast).

    Measured on torch 2.13: on CUDA every RNN op runs in the autocast dtype (cuDNN's
    autocast wrapper, and ``*_cell`` are on the lower-precision list). On the CPU no RNN op
    has an autocast kernel; what comes out depends on the implementation: RNN and
    RNNCell give the autocast dtype, GRU, GRUCell and LSTMCell compute in the input's
    dtype (float32 for float32 input, bfloat16 for bfloat16 input), and LSTM fails inside
    oneDNN. fastrnn gives the same output dtypes, running LSTM in the autocast dtype like
    RNN instead of failing.
    """
    if not torch._C._is_any_autocast_enabled() or not autocast_enabled(device.type):
        return None  # (the first test is one C call: the common case, every call)
    if device.type == "cpu" and (kind is CellKind.GRU or (cell and kind is CellKind.LSTM)):
        return dtype
    return torch.get_autocast_dtype(device.type)


def _call(kind: CellKind, x, batch_sizes, h0, c0, weights: Sequence[LayerWeights], extra=()) -> backends.Call:
    """What ``auto`` needs to know about a call on the CPU (see :mod:`fastrnn.backends`);
    ``extra``: more tensors of the call that may require a gradient."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, *(w for layer in weights for w in layer), *extra)
    )
    return backends.Call(
        kind, x.dtype, batch_sizes is not None, weights[0][4] is not None, needs_grad,
        backends.native.is_tracing(x), weights[0][1].shape[0] // kind.gates,
    )


def _sequence(x: torch.Tensor, schedule: Schedule):
    """The ops' form of a flat sequence: ``(x (T, B, I), None)`` when padded, else
    ``(x (N, I), batch_sizes)``."""
    if schedule.is_uniform:
        return x.view(schedule.steps, schedule.batch, x.shape[1]), None
    return x, torch.tensor(schedule.batch_sizes, dtype=torch.int64)


_LOOP_WORDS = {"resets": "resets inside a sequence", "zoneout": "zoneout", "recurrent_scale": "recurrent dropout"}


def _with_loop_inputs(name: str, backend: str | None, device: torch.device, wants: tuple) -> str:
    """The backend that runs a call whose time loop takes ``wants`` (``"resets"``,
    ``"zoneout"``, ``"recurrent_scale"``): torch's kernels have none of them, so ``auto`` runs
    ``reference`` where it would have run them; asking for them is an error."""
    if not wants or name == "reference":
        return name
    what = " and ".join(_LOOP_WORDS[w] for w in wants)
    requested = backend if backend is not None else (backends.env_backend() or "auto")
    if name == "native":
        if requested == "native":
            raise RuntimeError(
                f"fastrnn: backend 'native' runs torch's own kernels, which have no {what}; use "
                "backend='reference' or 'auto'"
            )
        return "reference"
    if name == "triton":
        reason = backends.triton_refuses(wants)
        if reason is not None:
            if requested == "triton":
                raise RuntimeError(f"fastrnn: backend='triton' cannot run {what}: {reason}")
            warnings.warn(
                f"fastrnn: the triton backend cannot run {what} ({reason}); using the reference backend, "
                "a step-by-step PyTorch loop. Pass backend='reference' to silence this warning.",
                RuntimeWarning, stacklevel=4,
            )
            return "reference"
    return name


def _zoneout_inputs(zoneout, training: bool, x, hidden: int, has_c: bool):
    """``(mask_h, mask_c, probabilities)`` for one layer-direction: fresh ``(N, H)`` masks,
    rows as the output's, in training; the probabilities in eval."""
    p_h, p_c = zoneout if has_c else (zoneout[0], 0.0)
    if not training:
        return None, None, [p_h, p_c]
    mask_h, mask_c = draw_zoneout(x.shape[:-1].numel(), hidden, p_h, p_c, x.device)
    return mask_h, mask_c, []


def recurrent_layer(
    kind,
    x: torch.Tensor,
    schedule: Schedule,
    h0: torch.Tensor,
    c0: torch.Tensor | None,
    weights: LayerWeights,
    *,
    reverse: bool = False,
    backend: str | None = None,
):
    """One direction of one recurrent layer (no checks; see :func:`recurrent_stack`).

    Args:
        kind: a :class:`~fastrnn.cells.Cell` or the name of one (``"LSTM"``, ``"GRU"``,
            ``"RNN_TANH"``, ``"RNN_RELU"``, or a user's cell).
        x: ``(N, I)`` flat input rows.
        schedule: batch sizes of the rows.
        h0: ``(B, P)``; c0: ``(B, H)`` for a cell with a cell state, else None.
        weights: ``(w_ih (G*H, I), w_hh (G*H, P), b_ih, b_hh, w_hr (P, H) | None)``
            (``w_hr``: LSTM only).
        reverse: run from the last timestep to the first.

    Returns:
        ``(y (N, P), h_n (B, P), c_n (B, H) | None)``.
    """
    kind = _kind(kind)
    seq, batch_sizes = _sequence(x, schedule)
    name = backends.resolve_name(backend, x.device, _call(kind, x, batch_sizes, h0, c0, [weights]))
    if name == "native":
        backends.native.refuse_cell(kind)
    y, h_n, c_n = ops.layer(kind, name, seq, batch_sizes, h0, c0, weights, reverse)
    return y.reshape(x.shape[0], y.shape[-1]), h_n, c_n


def recurrent_stack(
    kind,
    x: torch.Tensor,
    schedule: Schedule,
    h0: torch.Tensor,
    c0: torch.Tensor | None,
    weights: Sequence[LayerWeights],
    *,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    backend: str | None = None,
    cell: bool = False,
):
    """A stack of recurrent layers, as ``torch.nn.RNN/LSTM/GRU`` compute it.

    Args:
        kind: cell kind (see :func:`recurrent_layer`).
        x: ``(N, I)`` flat input rows.
        schedule: batch sizes of the rows; ``schedule.batch == B``.
        h0: ``(L*D, B, P)``; c0: ``(L*D, B, H)`` for LSTM, else None.
        weights: ``L*D`` tuples, layer-major then direction (torch's order).
        bidirectional: ``D = 2`` when True.
        dropout: probability applied to each layer's output except the last, in training.
        training: whether dropout is active.
        cell: the call comes from a ``*Cell`` module (only changes the autocast dtype).

    Returns:
        ``(y (N, D*P), h_n (L*D, B, P), c_n (L*D, B, H) | None)``.
    """
    if schedule.steps == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    seq, batch_sizes = _sequence(x, schedule)
    y, h_n, c_n = stack(
        kind, seq, batch_sizes, h0, c0, weights, bidirectional=bidirectional, dropout=dropout,
        training=training, backend=backend, cell=cell,
    )
    return y.reshape(x.shape[0], y.shape[-1]), h_n, c_n


def _normed_projection(x, weights, input_norm, idx: int, fused: bool):
    """A LayerNorm cell's input ``LN(x W_ih^T + b_ih)`` (the layer-direction's gain and bias),
    the weights its layer then takes (no ``W_ih``, ``b_ih``; ``b_hh`` stays inside the
    recurrent LayerNorm), and whether that input is the layer's own scratch. ``fused``: made
    in place by the C++ loops' row pass."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    gain, shift, eps = input_norm[0][idx], input_norm[1][idx], input_norm[2]
    if fused:
        proj = torch.mm(x.reshape(-1, x.shape[-1]), w_ih.t())
        cpu_loops.layer_norm_rows_(proj, b_ih, gain, shift, eps)
        return proj.view(*x.shape[:-1], proj.shape[-1]), (None, w_hh, None, b_hh, w_hr), True
    proj = F.linear(x, w_ih, b_ih)
    return F.layer_norm(proj, (proj.shape[-1],), gain, shift, eps), (None, w_hh, None, b_hh, w_hr), False


def stack(
    kind,
    x: torch.Tensor,
    batch_sizes: torch.Tensor | None,
    h0: torch.Tensor,
    c0: torch.Tensor | None,
    weights: Sequence[LayerWeights],
    *,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    backend: str | None = None,
    cell: bool = False,
    params: Sequence[torch.Tensor] | None = None,
    input_norm: tuple | None = None,
    resets: torch.Tensor | None = None,
    zoneout: tuple[float, float] = (0.0, 0.0),
    recurrent_dropout: float = 0.0,
    weight_drop: float = 0.0,
):
    """:func:`recurrent_stack` on the ops' sequence form, what the modules call.

    ``x`` is ``(T, B, I)`` padded (``batch_sizes`` None) or ``(N, I)`` packed rows with the
    ``PackedSequence``'s ``batch_sizes``. No Python value here depends on ``T``, so
    ``torch.compile`` traces it once for every sequence length.

    ``params``: the cell's per-unit parameters of each layer-direction (``(param_rows, H)``).
    ``input_norm``: ``(weights, biases, eps)``, a LayerNorm over the ``G*H`` features of each
    layer-direction's input projection (LayerNorm cells), applied before its time loop.
    ``resets``: bool, ``(T, B)`` padded or ``(N,)`` packed, True where a sequence starts a
    new episode; every layer and direction restarts there from a zero state.
    ``zoneout`` ``(p_h, p_c)``, ``recurrent_dropout``, ``weight_drop``: the regularisers of
    :mod:`fastrnn.regularisers`, their masks drawn here for each layer-direction (zoneout
    also acts in eval, as its expectation; the other two only in training).

    Returns:
        ``(y, h_n (L*D, B, P), c_n (L*D, B, H) | None)``, ``y`` shaped like ``x`` with
        ``D*P`` features.
    """
    kind = _kind(kind)
    if weights[0][4] is not None and kind is not CellKind.LSTM:
        raise ValueError(f"fastrnn: proj_size is only supported for LSTM, not for cell {kind.name!r}")
    if (x.shape[0] if batch_sizes is None else batch_sizes.shape[0]) == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    cast = _autocast_dtype(x.device, kind, cell, x.dtype)
    if cast is not None:
        # torch.nn RNNs are on autocast's lower-precision list: run entirely in that dtype;
        # the casts are differentiable, so fp32 parameters still receive gradients.
        def to(t):
            return None if t is None else t.to(cast)

        x, h0, c0 = to(x), to(h0), to(c0)
        weights = [tuple(to(w) for w in layer) for layer in weights]
        params = None if params is None else [to(p) for p in params]
        if input_norm is not None:
            input_norm = ([to(w) for w in input_norm[0]], [to(b) for b in input_norm[1]], input_norm[2])
    check_tensors(x, h0, c0, weights)
    extra = () if params is None else params
    if input_norm is not None:
        extra = [*extra, *input_norm[0], *input_norm[1]]
    call = _call(kind, x, batch_sizes, h0, c0, weights, extra)
    name = backends.resolve_name(backend, x.device, call)
    if name == "native":
        backends.native.refuse_cell(kind)
    p_h, p_c = zoneout
    zoneout_on = p_h > 0 or (p_c > 0 and kind.has_cell_state)
    rd_on = recurrent_dropout > 0 and training
    wants = tuple(w for w, on in (("resets", resets is not None), ("zoneout", zoneout_on),
                                  ("recurrent_scale", rd_on)) if on)
    name = _with_loop_inputs(name, backend, x.device, wants)
    if name == "native" and not call.needs_grad and ops.eager_call(x):
        ops.refuse_forward_ad((x, h0, c0, *(w for layer in weights for w in layer)))
        # Inference on torch's own kernels, eagerly: the whole stack in the one call
        # torch.nn makes (the per-layer op path costs more than 5 % at T=10, B=1).
        with ops.no_autocast(x.device.type):
            return backends.native.stack_inference(
                kind, x, batch_sizes, h0, c0, weights, bidirectional, dropout, training
            )
    directions = 2 if bidirectional else 1
    num_layers = len(weights) // directions
    stacked = num_layers * directions == 1  # (then the layer's results are the stack's)
    # Eager CPU inference of a LayerNorm cell on the C++ loops: the input projection's
    # LayerNorm in place (cpu_loops.layer_norm_rows_), the result the loop's own scratch.
    fused_norm = (input_norm is not None and name == "reference" and not call.needs_grad and ops.eager_call(x)
                  and cpu_loops.runs(x))
    h_n, c_n = [], []
    for layer in range(num_layers):
        outputs = []
        for d in range(directions):
            idx = layer * directions + d
            layer_x, layer_weights = x, weights[idx]
            if weight_drop > 0 and training:
                layer_weights = (layer_weights[0], drop_connect(layer_weights[1], weight_drop), *layer_weights[2:])
            owned_x = False
            if input_norm is not None:
                layer_x, layer_weights, owned_x = _normed_projection(x, layer_weights, input_norm, idx,
                                                                      fused_norm)
            y, h, c, finished = ops.layer_run(
                kind, name, layer_x, batch_sizes, h0[idx], None if c0 is None else c0[idx], layer_weights, d == 1,
                None if params is None else params[idx], resets,
                _zoneout_inputs(zoneout, training, x, h0.shape[-1], kind.has_cell_state) if zoneout_on else None,
                draw_recurrent_scale(h0.shape[1], h0.shape[-1], recurrent_dropout, x.dtype, x.device)
                if rd_on else None, stacked, owned_x,
            )
            if finished:
                return y, h, c
            outputs.append(y)
            h_n.append(h)
            c_n.append(c)
        x = outputs[0] if directions == 1 else torch.cat(outputs, -1)
        if dropout > 0 and training and layer < num_layers - 1:
            x = F.dropout(x, dropout, training=True)
    if directions == 1 and x.requires_grad:
        # The last layer saved its output for its backward; the caller may modify what it
        # receives in place (torch.nn's output allows it), so it gets its own copy.
        x = x.clone()
    return x, torch.stack(h_n), (torch.stack(c_n) if c0 is not None else None)
