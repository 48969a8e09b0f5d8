"""``native``: torch's own fused CPU kernels, one layer-direction at a time.

``torch.nn`` on the CPU runs two different engines (``use_mkldnn`` in
aten/src/ATen/native/RNN.cpp, torch 2.13):

- LSTM, padded input, no ``proj_size``, float32 (bfloat16 on CPUs with bf16 support;
  float16 without grad): oneDNN's fused RNN primitive, one ``aten::mkldnn_rnn_layer``
  per layer-direction, and ``aten::mkldnn_rnn_layer_backward`` for the gradients, which
  reads an opaque oneDNN *workspace* the training forward filled.
- everything else (GRU, RNN, LSTM with ``proj_size`` or packed input): a C++ time loop
  of ATen ops, with a per-step autograd graph when gradients are needed.

This backend calls exactly those kernels, so its results are torch.nn's:

- forward without ``save`` (inference): ``torch._VF.lstm / gru / rnn_tanh / rnn_relu``
  with one layer, the op ``torch.nn`` itself calls, which picks oneDNN or the C++ loop by
  the rule above (float32 LSTM goes straight to ``mkldnn_rnn_layer``, which is the same
  kernel with one dispatch less). The reverse direction runs the forward kernel on the
  sequences reversed in time (a flip for padded input, a row permutation for packed).
- forward with ``save`` and backward: float32 LSTM, padded, no projection only (oneDNN's
  training kernels); ``saved = (workspace, c_n)``.

What it cannot do, and :func:`auto_cpu_backend` therefore never asks of it: any cell but
torch's four (:func:`refuse_cell`: ``auto`` runs ``reference`` for those), GRU / RNN /
packed / projected / non-float32 LSTM *with* gradients (torch.nn builds a per-step
autograd graph there, which cannot live inside a custom op; fastrnn's own ``reference``
engine is faster anyway), and training under tracing: the size of oneDNN's workspace is
only known once the kernel has run (torch's own fake kernel for ``mkldnn_rnn_layer``
returns an empty workspace, and its LSTM decomposition uses oneDNN only for inference):
:func:`saved_layout` gives the size oneDNN reported for the same sizes earlier in this
process, and refuses symbolic or never-run sizes with a clear error.

Implements the layer contract: :func:`layer_forward`, :func:`layer_backward`,
:func:`saved_layout` (what ``torch.ops.fastrnn.layer_forward`` runs for ``"native"``:
torch.compile / torch.export / torch.func, and the functional API with gradients).

Plain eager calls take shorter routes to the same kernels, because at the seed examples'
size (T=10, B=1, H=32) a whole ``torch.nn`` layer takes 100-450 us on a CPU and every
tensor view, Python call or ``autograd.Function`` in between shows in the ratio:

- the modules run ``torch.nn``'s own forward (``_FastRNNBase._runs_torch_forward``): the
  same ``torch._VF`` call for the whole stack, with torch's own autograd nodes for oneDNN's
  LSTM (its backward is differentiable, so second derivatives stay exact);
- :func:`fastrnn.functional.stack` runs inference in one ``torch._VF`` call
  (:func:`stack_inference`).

The rule ``auto`` follows on the CPU is :func:`auto_cpu_backend`.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from ..kinds import CellKind
from ..schedule import Schedule

name = "native"

#: ``ideep::rnn_kind::LSTM``, the ``mode`` torch passes to ``mkldnn_rnn_layer``.
_ONEDNN_LSTM_MODE = 2

# torch._VF resolves its attributes on every access (a few microseconds each): once here.
VF_OPS = {
    CellKind.LSTM: torch._VF.lstm,
    CellKind.GRU: torch._VF.gru,
    CellKind.RNN_TANH: torch._VF.rnn_tanh,
    CellKind.RNN_RELU: torch._VF.rnn_relu,
}
_HAS_ONEDNN = torch.backends.mkldnn.is_available()

#: Workspace bytes oneDNN allocated for an LSTM training forward, by (T, B, I, H, dtype):
#: the only source of that size (see :func:`saved_layout`). One int per shape seen.
_WORKSPACE_BYTES: dict[tuple, int] = {}


# --------------------------------------------------------------------------------------
# The rule `auto` follows on the CPU
# --------------------------------------------------------------------------------------


def onednn_enabled() -> bool:
    """oneDNN is compiled in and not switched off (``torch.backends.mkldnn.flags``)."""
    return _HAS_ONEDNN and torch._C._get_mkldnn_enabled()


def onednn_trains(kind: CellKind, dtype: torch.dtype, packed: bool, proj: bool) -> bool:
    """True when oneDNN's LSTM training kernels run this layer (what :func:`layer_forward`
    accepts with ``save``): float32 LSTM, padded, no projection, oneDNN enabled."""
    return kind is CellKind.LSTM and dtype == torch.float32 and not packed and not proj and onednn_enabled()


#: The cells torch's kernels implement, by name (a name test: TorchDynamo traces it, while
#: a dict lookup keyed by a cell definition makes it hash the frozen dataclass's fields).
TORCH_CELLS = frozenset(cell.name for cell in VF_OPS)


def refuse_cell(kind: CellKind) -> None:
    """Raise, before any work, for a cell torch's kernels do not implement."""
    if kind.name not in TORCH_CELLS:
        raise RuntimeError(
            f"fastrnn: backend 'native' runs torch's own kernels, which only implement torch's cells "
            f"(LSTM, GRU, RNN_TANH, RNN_RELU), not {kind.name!r}; use backend='reference' or 'triton' "
            "(or 'auto')"
        )


def auto_cpu_backend(kind: CellKind, dtype: torch.dtype, *, packed: bool, proj: bool, needs_grad: bool,
                     tracing: bool) -> str:
    """The backend ``auto`` runs on the CPU for one call: ``"native"`` or ``"reference"``.

    Args:
        kind: the cell kind.
        dtype: the dtype the layers compute in.
        packed: the input is a ``PackedSequence``.
        proj: LSTM with ``proj_size > 0``.
        needs_grad: autograd will record the call (grad mode on and an input or weight
            requires grad), so the forward must keep what the backward needs.
        tracing: ``torch.compile`` / ``torch.export`` / a ``torch.func`` transform / fake
            tensors are running the call (see :func:`is_tracing`).

    The rule (measured on the CPU grid, see the README):

    0. A cell other than torch's four: ``reference`` (torch has no kernel for it).
    1. Without gradients: ``native`` — torch's own inference kernels (oneDNN's LSTM, the
       C++ loop for GRU and RNN), the same kernels and results as ``torch.nn`` (fastrnn's
       Python time loop took 1.0-8x their time at inference on the CPU benchmark grid; its
       C++ loops are faster for GRU and RNN, but not torch's own results).
    2. With gradients, float32 LSTM on padded input without ``proj_size``, not tracing:
       ``native`` — oneDNN's fused training forward and backward, what ``torch.nn`` runs;
       the reference LSTM's Python loop took 3-5x its time at B <= 8 (its C++ loops, with
       peepholes, resets or a regulariser, take 0.69-1.01x at T=100 and 1.0-1.1x at T=10,
       B=1 on the CPU grid: not a reason to leave torch's own kernels and results).
    3. Every other call with gradients: ``reference`` — GRU and RNN training on fastrnn's
       own engine (its C++ loops) take 0.11-0.90x ``torch.nn``'s time on the grid
       (torch.nn builds a per-step autograd graph there); LSTM with packed input or ``proj_size`` runs torch's
       C++ loop in torch.nn too; under tracing the oneDNN workspace has no size known in
       advance.

    Nothing here depends on ``T`` or ``B``, so a compiled program never recompiles for a new
    sequence length or batch size because of this choice.
    """
    if kind.name not in TORCH_CELLS:
        return "reference"
    if not needs_grad:
        return "native"
    if not tracing and onednn_trains(kind, dtype, packed, proj):
        return "native"
    return "reference"


def is_tracing(x: torch.Tensor) -> bool:
    """True under ``torch.compile`` / ``torch.export`` tracing, a ``torch.func`` transform,
    or for a tensor subclass (fake, functional, ...) — anything but plain eager tensors."""
    return (
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch._C._are_functorch_transforms_active()
        or type(x) not in (torch.Tensor, torch.nn.Parameter)
    )


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _grad_mode(enabled: bool):
    """Grad mode as the kernels need it: ``mkldnn_rnn_layer`` chooses its training
    (workspace-filling) kernel by grad mode; the inference kernels must not record a graph."""
    return contextlib.nullcontext() if torch.is_grad_enabled() == enabled else torch.set_grad_enabled(enabled)


@functools.lru_cache(maxsize=64)
def _reversal_index(batch_sizes: tuple[int, ...]) -> torch.Tensor:
    """Row permutation that reverses every sequence of a packed batch in time.

    Row ``(t, b)`` (step ``t`` of sequence ``b``, length ``L_b``) goes to row
    ``(L_b - 1 - t, b)``; the reversed sequences have the same lengths, hence the same
    ``batch_sizes``, and the permutation is its own inverse.
    """
    sizes = torch.tensor(batch_sizes, dtype=torch.int64)
    offsets = torch.cumsum(sizes, 0) - sizes
    step = torch.repeat_interleave(torch.arange(len(batch_sizes)), sizes)
    seq = torch.arange(int(sizes.sum())) - offsets[step]
    lengths = (sizes.unsqueeze(0) > torch.arange(batch_sizes[0]).unsqueeze(1)).sum(1)
    return offsets[lengths[seq] - 1 - step] + seq


def _check(kind: CellKind, x: torch.Tensor, schedule: Schedule, w_hr, save: bool) -> None:
    """Refuse what this backend cannot run, before any work."""
    refuse_cell(kind)
    if not x.is_cpu:
        raise RuntimeError(f"fastrnn: backend 'native' runs CPU tensors only, got {x.device}")
    if save and not onednn_trains(kind, x.dtype, not schedule.is_uniform, w_hr is not None):
        raise RuntimeError(
            "fastrnn: backend 'native' computes gradients only for float32 LSTM on padded input "
            "without proj_size, with oneDNN enabled (torch's oneDNN training kernels); got "
            f"{kind.value}, {x.dtype}, {'packed' if not schedule.is_uniform else 'padded'}"
            f"{', proj_size' if w_hr is not None else ''}. Use backend='reference' or 'auto'."
        )


def _contiguous(*tensors):
    return [None if t is None else t.contiguous() for t in tensors]


# --------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------


def _onednn_lstm(x, schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, train):
    """``aten::mkldnn_rnn_layer``: ``(y (T, B, H), h_n, c_n, workspace)``; the workspace is
    empty unless ``train``."""
    steps, batch = schedule.steps, schedule.batch
    hidden = w_hh.shape[1]
    # oneDNN reads input and states through raw pointers (no .contiguous() of its own; it
    # makes the weights contiguous and sums the biases itself)
    x3, h0, c0 = _contiguous(x.reshape(steps, batch, x.shape[1]), h0, c0)
    has_bias = b_ih is not None
    if not has_bias:  # the kernel takes bias tensors and ignores them when has_biases is False
        b_ih = b_hh = w_hh.new_zeros(4 * hidden)
    if train:
        # Inputs detached: the kernel runs with grad mode on (it picks its training kernel
        # from it) but no autograd graph may be recorded inside the layer.
        x3, h0, c0, w_ih, w_hh, b_ih, b_hh = (t.detach() for t in (x3, h0, c0, w_ih, w_hh, b_ih, b_hh))
    with _grad_mode(train):
        return torch.ops.aten.mkldnn_rnn_layer(
            x3, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, [], _ONEDNN_LSTM_MODE, hidden, 1, has_bias,
            False, False, train,
        )


def _vf_layer(kind, x, schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """One layer-direction through ``torch._VF.<kind>`` (what ``torch.nn`` calls), no grad.

    Returns ``(y (N, P), h_n (B, P), c_n (B, H) | None)``.
    """
    params = [w for w in (w_ih, w_hh, b_ih, b_hh, w_hr) if w is not None]
    has_bias = b_ih is not None
    hx = (h0.unsqueeze(0), c0.unsqueeze(0)) if kind is CellKind.LSTM else h0.unsqueeze(0)
    op = VF_OPS[kind]
    if schedule.is_uniform:
        seq = x.view(schedule.steps, schedule.batch, x.shape[1])
        if reverse:
            seq = seq.flip(0)
        out, *state = op(seq, hx, params, has_bias, 1, 0.0, False, False, False)
        if reverse:
            out = out.flip(0)
        y = out.view(x.shape[0], out.shape[2])
    else:
        index = _reversal_index(schedule.batch_sizes) if reverse else None
        data = x.index_select(0, index) if reverse else x
        sizes = torch.tensor(schedule.batch_sizes, dtype=torch.int64)
        y, *state = op(data, sizes, hx, params, has_bias, 1, 0.0, False, False)
        if reverse:
            y = y.index_select(0, index)
    if kind is CellKind.LSTM:  # _VF.lstm returns (output, h_n, c_n), the others (output, h_n)
        h_n, c_n = state
        return y, h_n[0], c_n[0]
    return y, state[0][0], None


def layer_forward(kind: CellKind, x, schedule: Schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                  reverse: bool, save: bool):
    """One layer-direction on torch's CPU kernels (see the module docstring).

    Args:
        x: ``(N, I)`` flat rows ordered by ``schedule``; h0 ``(B, P)``; c0 ``(B, H)`` or None;
            weights as ``torch.nn``'s (``b_*`` / ``w_hr`` may be None).
        save: keep what :func:`layer_backward` needs (float32 padded LSTM without
            projection only).

    Returns:
        ``(y (N, P), h_n (B, P), c_n (B, H) | None, saved)``, all fresh tensors;
        ``saved = (workspace (uint8), c_n copy)`` with ``save``, else ``()``.
    """
    _check(kind, x, schedule, w_hr, save)
    if save:
        y, h_n, c_n, workspace = _onednn_lstm(x, schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, True)
        _WORKSPACE_BYTES[(schedule.steps, schedule.batch, x.shape[1], c_n.shape[1], x.dtype)] = workspace.numel()
        # c_n is read by the backward kernel; a copy, since no output may alias another.
        return y.view(x.shape[0], y.shape[2]), h_n, c_n, (workspace, c_n.clone())
    if (
        kind is CellKind.LSTM and w_hr is None and schedule.is_uniform and x.dtype == torch.float32
        and onednn_enabled() and x.numel() > 0
    ):
        # what _VF.lstm would run, without its per-call checks and stacking
        y, h_n, c_n, _ = _onednn_lstm(x, schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, False)
        return y.view(x.shape[0], y.shape[2]), h_n, c_n, ()
    with _grad_mode(False):
        y, h_n, c_n = _vf_layer(kind, x, schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    return y, h_n, c_n, ()


def stack_inference(kind: CellKind, x, batch_sizes, h0, c0, weights, bidirectional: bool, dropout: float,
                    training: bool):
    """A whole stack without gradients in one ``torch._VF.<kind>`` call: exactly what
    ``torch.nn``'s module calls (same kernels, dropout between layers drawn the same way).

    The eager fast path of ``auto`` for inference (:func:`fastrnn.functional.stack`): the
    per-layer contract around the same kernels costs a few tensor views and Python calls
    per layer-direction, which at T=10, B=1 is several percent of the whole call.

    Args:
        x: ``(T, B, I)`` padded (``batch_sizes`` None) or ``(N, I)`` packed rows.
        h0: ``(L*D, B, P)``; c0: ``(L*D, B, H)`` for LSTM, else None.
        weights: ``L*D`` tuples ``(w_ih, w_hh, b_ih, b_hh, w_hr)`` in torch's order.

    Returns:
        ``(y, h_n, c_n | None)`` as :func:`fastrnn.functional.stack`.
    """
    params = [w for layer in weights for w in layer if w is not None]
    hx = (h0, c0) if kind is CellKind.LSTM else h0
    num_layers = len(weights) // (2 if bidirectional else 1)
    has_bias = weights[0][2] is not None
    op = VF_OPS[kind]
    with _grad_mode(False):
        if batch_sizes is None:
            out = op(x, hx, params, has_bias, num_layers, dropout, training, bidirectional, False)
        else:
            out = op(x, batch_sizes, hx, params, has_bias, num_layers, dropout, training, bidirectional)
    if kind is CellKind.LSTM:
        return out
    return out[0], out[1], None


# --------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------


def layer_backward(kind: CellKind, schedule: Schedule, reverse: bool, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                   y, saved, dy, dh_n, dc_n, needs):
    """Gradients of ``(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)`` through
    ``aten::mkldnn_rnn_layer_backward`` (oneDNN); None where ``needs`` is False.

    ``saved`` is what :func:`layer_forward` returned with ``save``; ``dy`` ``(N, H)``,
    ``dh_n`` / ``dc_n`` ``(B, H)`` (zeros for unused outputs).
    """
    if kind is not CellKind.LSTM or w_hr is not None or not schedule.is_uniform:
        raise RuntimeError("fastrnn: backend 'native' has a backward only for LSTM on padded input without proj_size")
    workspace, c_n = saved
    steps, batch = schedule.steps, schedule.batch
    hidden = w_hh.shape[1]
    x3 = x.reshape(steps, batch, x.shape[1])
    y3 = y.reshape(steps, batch, hidden)
    dy3 = dy.reshape(steps, batch, hidden)
    h_n = y3[0] if reverse else y3[-1]  # the state after the last processed step
    # raw-pointer operands (the kernel makes the gradients and weights contiguous itself)
    x3, h0, c0, y3, h_n, c_n = _contiguous(x3, h0, c0, y3, h_n, c_n)
    has_bias = b_ih is not None
    if not has_bias:
        b_ih = b_hh = w_hh.new_zeros(4 * hidden)
    with _grad_mode(False):
        dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0 = torch.ops.aten.mkldnn_rnn_layer_backward(
            x3, w_ih, w_hh, b_ih, b_hh, h0, c0, y3, h_n, c_n, dy3, dh_n, dc_n, reverse, _ONEDNN_LSTM_MODE,
            hidden, 1, has_bias, True, False, [], False, workspace,
        )
    grads = (dx.view(x.shape[0], x.shape[1]), dh0, dc0, dw_ih, dw_hh, db_ih if has_bias else None,
             db_hh if has_bias else None, None)
    return tuple(g if need else None for g, need in zip(grads, needs))


# --------------------------------------------------------------------------------------
# Fake shapes
# --------------------------------------------------------------------------------------


def saved_layout(kind: CellKind, rows, batch, input_size, hidden, proj, dtype, save):
    """``[(shape, dtype), ...]`` of ``saved``: empty without ``save``; with it (oneDNN LSTM
    training) ``[((workspace_bytes,), uint8), ((B, H), dtype)]``.

    oneDNN chooses its workspace size inside the kernel, from the sizes, the data type and
    the CPU; no formula for it is public. The size given here is the one oneDNN allocated
    for the same ``(T, B, I, H, dtype)`` earlier in this process (recorded by
    :func:`layer_forward`): exact, and what the backward of an eager call reads. Symbolic
    sizes (``torch.compile`` with dynamic shapes, ``torch.export``) and sizes never run
    raise here, before any work: ``auto`` never asks this backend for gradients under
    tracing (:func:`auto_cpu_backend`).
    """
    if not save:
        return []
    key = None
    if all(type(v) is int for v in (rows, batch, input_size, hidden)) and batch > 0:
        key = (rows // batch, batch, input_size, hidden, dtype)
    if key not in _WORKSPACE_BYTES:
        raise RuntimeError(
            "fastrnn: backend 'native' cannot keep gradients under torch.compile / torch.export "
            "tracing: the size of oneDNN's LSTM workspace is only known when the kernel runs. "
            "Use backend='auto' (it runs 'reference' there) or backend='reference'."
        )
    return [((_WORKSPACE_BYTES[key],), torch.uint8), ((batch, hidden), dtype)]
