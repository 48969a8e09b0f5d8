"""Each layer-direction as a ``torch.library`` custom op, so PyTorch sees one opaque op.

``torch.ops.fastrnn.layer_forward`` runs one direction of one recurrent layer over a whole
sequence; ``torch.ops.fastrnn.layer_backward`` is its first-order backward. Both have fake
(meta) implementations computed from shapes alone, so ``torch.compile``, ``torch.export``
and ``torch.func`` trace *one* op per layer-direction with symbolic shapes — never the
Python time loop inside, which would unroll ``T`` and recompile for every new length.

Autograd is registered on ``layer_forward``:

- first-order backward (the usual ``loss.backward()``): ``layer_backward``, the backend's
  handwritten reverse time loop and whole-sequence weight-gradient GEMMs;
- a backward that must itself be differentiable (``create_graph=True`` with anything that
  requires grad: ``gradgradcheck``, ``hessian``, gradient penalties, ``torch.func``
  transforms, which always build the graph): the layer is recomputed with the plain
  differentiable recurrence of :mod:`fastrnn.differentiable` and differentiated by autograd,
  so derivatives of every order are exact, whatever the backend.

Sequences: padded input is ``x (T, B, I)`` with ``batch_sizes=None`` (then ``y`` is
``(T, B, P)``); packed input is ``x (N, I)``, the data of a ``PackedSequence``, with its
``batch_sizes`` (CPU int64), and ``y`` is ``(N, P)``. ``T`` is never a Python int in the
traced program: it is a (symbolic) dimension of ``x``.

Optional inputs follow the weights: ``params``, the cell's per-unit parameters
``(param_rows, H)`` (a gradient input like the weights); then the time loop's inputs that
take no gradient (:data:`LOOP_INPUTS`): ``resets``, bool, shaped like ``x`` without its
features, True where a sequence starts a new episode (see :mod:`fastrnn.engine`);
``zoneout_h`` / ``zoneout_c``, bool masks, ``(N, H)`` rows in ``y``'s order or shaped like
``y`` (training zoneout), and
``zoneout_p`` ``[p_h, p_c]`` (eval zoneout, or ``[]``); ``recurrent_scale`` ``(B, H)``, the
recurrent-dropout scale of the state entering ``W_hh`` (:mod:`fastrnn.regularisers`).
``w_ih`` may be None: ``x`` is then the input projection itself.

The op's outputs are ``(y, h_n, c_n, s0, s1, s2, s3)``: ``c_n`` is an empty tensor for cells
without a cell state, and ``s0..s3`` hold what the backward needs (the backend's ``saved``
tuple, padded with empty tensors; all empty unless ``save``).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import backends, differentiable, onnx_export
from .backends.base import loop_inputs
from .kinds import CellKind
from .regularisers import Zoneout
from .schedule import Schedule

_functorch = torch._C._functorch

#: Number of ``saved`` outputs of ``layer_forward`` (the most any backend keeps).
SAVED_SLOTS = 4
#: The time loop's optional inputs that take no gradient, after ``params`` among the op's arguments.
LOOP_INPUTS = ("resets", "zoneout_h", "zoneout_c", "zoneout_p", "recurrent_scale")
NO_LOOP = (None, None, None, [], None)
#: The inputs of ``layer_forward`` that can receive a gradient, in the order of ``needs``.
GRAD_INPUTS = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "params")
# Their positions among layer_forward's arguments.
_GRAD_POSITIONS = (2, 4, 5, 6, 7, 8, 9, 10, 11)


@functools.lru_cache(maxsize=64)
def _uniform(steps: int, batch: int) -> Schedule:
    return Schedule.uniform(steps, batch)


def _flat_resets(resets: Tensor | None) -> Tensor | None:
    """``resets`` as one bool per flat row (``(T, B)`` padded or ``(N,)`` packed)."""
    return None if resets is None else resets.reshape(-1)


def _zoneout(loop):
    """The :class:`~fastrnn.regularisers.Zoneout` of a call's loop inputs, or None."""
    _, mask_h, mask_c, probs, _ = loop
    p_h, p_c = (list(probs) + [0.0, 0.0])[:2] if probs else (0.0, 0.0)
    if mask_h is None and mask_c is None and not (p_h or p_c):
        return None
    mask_h, mask_c = (m if m is None or m.dim() == 2 else m.reshape(-1, m.shape[-1]) for m in (mask_h, mask_c))
    return Zoneout(mask_h, mask_c, float(p_h), float(p_c))


def _loop_extras(params, loop) -> dict:
    """The optional time-loop keywords of a layer implementation, only when present."""
    return loop_inputs(params, _flat_resets(loop[0]), _zoneout(loop), loop[4])


def _params_keyword(params) -> dict:
    return {} if params is None else {"params": params}


def _flat(x: Tensor, batch_sizes: Tensor | None) -> tuple[Tensor, Schedule]:
    """``(x as (N, I) rows, its schedule)`` of a padded ``(T, B, I)`` or packed ``(N, I)`` input."""
    if batch_sizes is None:
        steps, batch = x.shape[0], x.shape[1]
        return x.reshape(steps * batch, x.shape[2]), _uniform(steps, batch)
    return x, Schedule.from_batch_sizes(batch_sizes)


def no_autocast(device_type: str):
    """Autocast off inside an op: it computes in its inputs' dtype (the callers cast first)."""
    if not torch._C._is_any_autocast_enabled():  # (one C call: the common case, every layer)
        return contextlib.nullcontext()
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _owned(t: Tensor) -> Tensor:
    """``t`` as a tensor of its own rather than a view of an op-internal buffer.

    An op output that autograd sees as a view cannot be modified in place ("Output 0 of
    LayerFunction is a view ..."), while torch.nn's outputs can: ``out.add_(1)`` must work.
    The buffer it views is private to the op, so dropping the view relation is safe.
    """
    return t.detach() if t._is_view() else t


def _rows(x: Tensor, batch_sizes: Tensor | None):
    return x.shape[0] * x.shape[1] if batch_sizes is None else x.shape[0]


def _layout(kind: CellKind, backend: str, x, batch_sizes, h0, w_ih, w_hh, w_hr, save: bool, loop=NO_LOOP):
    hidden = w_hh.shape[0] // kind.gates
    proj = w_hr.shape[0] if w_hr is not None else 0
    zoneout = _zoneout(loop)
    extra = {}
    if loop[0] is not None or loop[4] is not None or zoneout is not None:  # (a loop input: its own layout)
        extra = {"resets": True, "zoneout": None if zoneout is None else (zoneout.on_h, zoneout.on_c)}
    return backends.layer_impl(backend).saved_layout(
        kind, _rows(x, batch_sizes), h0.shape[0], x.shape[-1], hidden, proj, x.dtype, save, **extra
    )


def _padded_saved(saved: Sequence[Tensor], like: Tensor) -> list[Tensor]:
    if len(saved) > SAVED_SLOTS:
        raise AssertionError(f"a backend saved {len(saved)} tensors; ops.SAVED_SLOTS is {SAVED_SLOTS}")
    return list(saved) + [like.new_empty(0) for _ in range(SAVED_SLOTS - len(saved))]


# --------------------------------------------------------------------------------------
# layer_forward
# --------------------------------------------------------------------------------------


@torch.library.custom_op("fastrnn::layer_forward", mutates_args=())
def layer_forward(
    kind: str,
    backend: str,
    x: Tensor,
    batch_sizes: Optional[Tensor],
    h0: Tensor,
    c0: Optional[Tensor],
    w_ih: Optional[Tensor],
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    w_hr: Optional[Tensor],
    params: Optional[Tensor],
    resets: Optional[Tensor],
    zoneout_h: Optional[Tensor],
    zoneout_c: Optional[Tensor],
    zoneout_p: list[float],
    recurrent_scale: Optional[Tensor],
    reverse: bool,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One layer-direction; see the module docstring for shapes and outputs."""
    loop = (resets, zoneout_h, zoneout_c, zoneout_p, recurrent_scale)
    y, h_n, c_n, saved = _forward_impl(kind, backend, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                       params, loop, reverse, save)
    return (y, h_n, c_n if c_n is not None else x.new_empty(0), *_padded_saved(saved, x))


def _forward_impl(kind, backend, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params, loop, reverse,
                  save):
    """The work of ``layer_forward``: ``(y, h_n, c_n | None, saved)``, ``y`` shaped like ``x``."""
    cell = CellKind(kind)
    flat, schedule = _flat(x, batch_sizes)
    with no_autocast(x.device.type):
        y, h_n, c_n, saved = backends.layer_impl(backend).layer_forward(
            cell, flat, schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save,
            **_loop_extras(params, loop)
        )
    if batch_sizes is None:
        y = _owned(y.view(x.shape[0], x.shape[1], y.shape[1]))
    return y, h_n, c_n, saved


@layer_forward.register_fake
def _layer_forward_fake(kind, backend, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params, resets,
                        zoneout_h, zoneout_c, zoneout_p, recurrent_scale, reverse, save):
    cell = CellKind(kind)
    state = w_hh.shape[1]
    y = x.new_empty(x.shape[0], x.shape[1], state) if batch_sizes is None else x.new_empty(x.shape[0], state)
    c_n = c0.new_empty(c0.shape) if cell.has_cell_state else x.new_empty(0)
    loop = (resets, zoneout_h, zoneout_c, zoneout_p, recurrent_scale)
    layout = _layout(cell, backend, x, batch_sizes, h0, w_ih, w_hh, w_hr, save, loop)
    saved = [x.new_empty(shape, dtype=dtype) for shape, dtype in layout]
    return (y, h0.new_empty(h0.shape), c_n, *_padded_saved(saved, x))


# --------------------------------------------------------------------------------------
# layer_backward
# --------------------------------------------------------------------------------------


@torch.library.custom_op("fastrnn::layer_backward", mutates_args=())
def layer_backward(
    kind: str,
    backend: str,
    x: Tensor,
    batch_sizes: Optional[Tensor],
    h0: Tensor,
    c0: Optional[Tensor],
    w_ih: Optional[Tensor],
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    w_hr: Optional[Tensor],
    params: Optional[Tensor],
    resets: Optional[Tensor],
    zoneout_h: Optional[Tensor],
    zoneout_c: Optional[Tensor],
    zoneout_p: list[float],
    recurrent_scale: Optional[Tensor],
    reverse: bool,
    y: Tensor,
    s0: Tensor,
    s1: Tensor,
    s2: Tensor,
    s3: Tensor,
    dy: Tensor,
    dh_n: Tensor,
    dc_n: Optional[Tensor],
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params)``; an empty tensor
    where ``needs`` is False (or the input is None)."""
    cell = CellKind(kind)
    flat, schedule = _flat(x, batch_sizes)
    loop = (resets, zoneout_h, zoneout_c, zoneout_p, recurrent_scale)
    n_saved = len(_layout(cell, backend, x, batch_sizes, h0, w_ih, w_hh, w_hr, True, loop))
    y_flat = y.reshape(flat.shape[0], y.shape[-1])
    dy_flat = dy.reshape(flat.shape[0], dy.shape[-1])
    with no_autocast(x.device.type):
        grads = backends.layer_impl(backend).layer_backward(
            cell, schedule, reverse, flat, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y_flat,
            (s0, s1, s2, s3)[:n_saved], dy_flat, dh_n, dc_n if cell.has_cell_state else None, tuple(needs),
            **_loop_extras(params, loop)
        )
    grads = list(grads) + [None] * (len(GRAD_INPUTS) - len(grads))
    out = []
    for grad, name in zip(grads, GRAD_INPUTS):
        if grad is None:
            out.append(x.new_empty(0))
        elif name == "x":
            out.append(_owned(grad.view(x.shape)))
        else:
            out.append(grad)
    return tuple(out)


@layer_backward.register_fake
def _layer_backward_fake(kind, backend, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params, resets,
                         zoneout_h, zoneout_c, zoneout_p, recurrent_scale, reverse, y, s0, s1, s2, s3, dy, dh_n, dc_n,
                         needs):
    inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params)
    return tuple(
        t.new_empty(t.shape) if (need and t is not None) else x.new_empty(0) for t, need in zip(inputs, needs)
    )


# --------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------


def _setup_context(ctx, inputs, output):
    (kind, backend, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params, resets, zoneout_h, zoneout_c,
     zoneout_p, recurrent_scale, reverse, save) = inputs
    y, _, _, *saved = output
    ctx.kind, ctx.backend, ctx.reverse, ctx.saved_all, ctx.zoneout_p = kind, backend, reverse, save, list(zoneout_p)
    ctx.save_for_backward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params, resets, zoneout_h, zoneout_c,
                          recurrent_scale, y, *saved)
    ctx.mark_non_differentiable(*saved)
    # Gradients of unused outputs stay None: no zero (N, G*H) tensors for the saved slots.
    ctx.set_materialize_grads(False)


def _backward(ctx, dy, dh_n, dc_n, *_saved_grads):
    (x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params, resets, zoneout_h, zoneout_c, scale, y,
     *saved) = ctx.saved_tensors
    loop = (resets, zoneout_h, zoneout_c, ctx.zoneout_p, scale)
    cell = CellKind(ctx.kind)
    needs = [ctx.needs_input_grad[i] for i in _GRAD_POSITIONS]
    inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params)
    if not ctx.saved_all and not _graph_needed(inputs, (dy, dh_n, dc_n)):
        raise RuntimeError(
            "fastrnn: layer_forward ran with save=False, so it kept nothing for backward; "
            "call it through fastrnn.ops.layer (which sets save when a gradient is needed)"
        )
    n_saved = len(_layout(cell, ctx.backend, x, batch_sizes, h0, w_ih, w_hh, w_hr, True, loop))
    grads = _grads(cell, ctx.backend, ctx.reverse, x, batch_sizes, inputs, y, saved[:n_saved],
                   (dy, dh_n, dc_n), needs, loop=loop)
    return (None, None, grads[0], None, *grads[1:], *(None,) * len(LOOP_INPUTS), None, None)


def _grads(cell, backend, reverse, x, batch_sizes, inputs, y, saved, grad_outputs, needs, direct=None, loop=NO_LOOP):
    """The backward rule of a layer-direction, shared by the op's registered autograd
    (:func:`_backward`) and the eager fast path (:class:`_EagerLayer`).

    ``grad_outputs`` ``(dy, dh_n, dc_n)`` may hold None for unused outputs (zeros are made
    here). Under ``create_graph`` with anything that requires grad: the differentiable
    backward. Otherwise the layer implementation's handwritten ``layer_backward``: through
    the ``layer_backward`` op, or, with ``direct = (impl, schedule, loop keywords)`` from an
    eager call (its forward's :func:`_loop_extras` without ``params``) and no vmap around
    this backward, by calling the implementation itself.
    """
    dy, dh_n, dc_n = grad_outputs
    h0, c0 = inputs[1], inputs[2]
    dy = torch.zeros_like(y) if dy is None else dy
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n
    if not cell.has_cell_state:
        dc_n = None
    elif dc_n is None:
        dc_n = torch.zeros_like(c0)
    if _graph_needed(inputs, (dy, dh_n, dc_n)):
        return _differentiable_grads(cell, reverse, x, batch_sizes, inputs, (dy, dh_n, dc_n), needs, loop)
    vmapped = torch._C._are_functorch_transforms_active() or any(
        g is not None and _functorch.is_legacy_batchedtensor(g) for g in (dy, dh_n, dc_n)
    )
    if direct is None or vmapped:
        # (vmap over this backward, from torch.func or gradcheck's batched grad: the op has
        # the batching rule; the legacy vmap falls back to a per-slice loop)
        raw = torch.ops.fastrnn.layer_backward(
            cell.value, backend, x, batch_sizes, *inputs[1:], *loop, reverse, y, *_padded_saved(saved, x),
            dy, dh_n, dc_n, list(needs),
        )
        return [g if need else None for g, need in zip(raw, needs)]
    impl, schedule, extras = direct
    rows = schedule.rows
    with no_autocast(x.device.type):
        grads = impl.layer_backward(
            cell, schedule, reverse, x.reshape(rows, x.shape[-1]), *inputs[1:8], y.reshape(rows, y.shape[-1]),
            tuple(saved), dy.reshape(rows, dy.shape[-1]), dh_n, dc_n, tuple(needs), **extras,
            **_params_keyword(inputs[8]),
        )
    grads = list(grads) + [None] * (len(needs) - len(grads))
    return [grads[0].view(x.shape) if grads[0] is not None else None, *grads[1:]]


def _graph_needed(inputs, grad_outputs) -> bool:
    """True when this backward runs under ``create_graph`` and its result can depend on
    something that requires grad: the gradients must then be differentiable themselves."""
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in (*inputs, *grad_outputs))


def _differentiable_grads(cell, reverse, x, batch_sizes, inputs, grad_outputs, needs, loop=NO_LOOP):
    """First derivatives as a differentiable function of the inputs and ``grad_outputs``
    (:func:`fastrnn.differentiable.layer_backward`)."""
    flat, schedule = _flat(x, batch_sizes)
    _, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params = inputs
    dy, dh_n, dc_n = grad_outputs
    with no_autocast(x.device.type):
        grads = differentiable.layer_backward(
            cell, flat, schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
            dy.reshape(flat.shape[0], dy.shape[-1]), dh_n, dc_n, params, _flat_resets(loop[0]), _zoneout(loop),
            loop[4],
        )
    grads = (grads[0].view(x.shape),) + tuple(grads[1:])
    return [g if need else None for g, need in zip(grads, needs)]


layer_forward.register_autograd(_backward, setup_context=_setup_context)


class LayerFunction(torch.autograd.Function):
    """``layer_forward`` with the same autograd rule, in the form ``torch.func`` accepts.

    The op's own autograd registration (above) serves callers of
    ``torch.ops.fastrnn.layer_forward`` and graphs that hold the op (``torch.export``);
    ``torch.func`` transforms only accept an ``autograd.Function`` with a separate
    ``setup_context``, so :func:`layer` goes through this class, whose forward is the op.
    vmap: the rule is generated (the ops have batching rules, :func:`_vmap_loop`).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        return torch.ops.fastrnn.layer_forward(*args)

    # No `jvp`: forward-mode AD is refused in `layer` with a clear message (TorchDynamo
    # cannot trace an autograd.Function that defines `jvp`).

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)



class _EagerLayer(torch.autograd.Function):
    """The eager fast path of :func:`layer` when autograd records the call.

    The same computation and the same backward rule as the op with its registered
    autograd (:func:`_backward`): the layer implementation's ``layer_backward`` for first
    derivatives, :func:`_differentiable_grads` under ``create_graph``. What it leaves out
    is machinery an eager call does not need, measured on a 2-core CPU at the seed
    examples' size (T=10, B=1, H=32), where a whole ``torch.nn`` layer takes 100-450 us:
    the custom-op dispatch (tens of microseconds per call), the ``inspect`` argument
    binding of a new-style ``autograd.Function`` on every call, and the op's fixed output
    form (padding tensors, shapes re-derived in backward), ~200 us per forward+backward in
    all. Only plain eager calls of the other backends come here (:func:`eager_call`; the
    reference backend's take :mod:`fastrnn.eager_reference`, shorter still):
    ``torch.compile``, ``torch.export``, ``torch.func`` and tracing see the op.
    """

    @staticmethod
    def forward(ctx, kind, backend, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params, loop, reverse):
        impl = backends.layer_impl(backend)
        flat, schedule = _flat(x, batch_sizes)
        extras = _loop_extras(None, loop)  # (kept for backward, which takes params from the saved tensors)
        with no_autocast(x.device.type):
            y, h_n, c_n, saved = impl.layer_forward(kind, flat, schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                                    reverse, True, **extras, **_params_keyword(params))
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params, y, *saved)
        ctx.loop = loop
        ctx.layer = (kind, backend, impl, schedule, reverse, batch_sizes, extras)
        ctx.set_materialize_grads(False)
        y_out = y if batch_sizes is not None else _owned(y.view(x.shape[0], x.shape[1], y.shape[1]))
        return (y_out, h_n, c_n) if c_n is not None else (y_out, h_n)

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n=None):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params, y, *saved = ctx.saved_tensors
        kind, backend, impl, schedule, reverse, batch_sizes, extras = ctx.layer
        need = ctx.needs_input_grad
        needs = [need[i] for i in _GRAD_POSITIONS]
        grads = _grads(kind, backend, reverse, x, batch_sizes, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params), y,
                       saved, (dy, dh_n, dc_n), needs, direct=(impl, schedule, extras), loop=ctx.loop)
        return (None, None, grads[0], None, *grads[1:], None, None)


def eager_call(x: Tensor) -> bool:
    """True for a plain eager call: no torch.compile / torch.export / jit tracing, no
    ``torch.func`` transform, no tensor subclass (fake, functional, ...)."""
    return not (
        torch.compiler.is_compiling()
        or torch._C._are_functorch_transforms_active()
        or torch._C._get_tracing_state() is not None
        or type(x) is not Tensor
    )


# --------------------------------------------------------------------------------------
# vmap: one call per batch entry (correct for every combination of batched arguments)
# --------------------------------------------------------------------------------------


def _vmap_loop(op):
    def rule(info, in_dims, *args):
        results = []
        for i in range(info.batch_size):
            # unbatched arguments (in_dim None; a list argument's in_dims is a list of Nones)
            sliced = [a.select(d, i) if isinstance(d, int) else a for a, d in zip(args, in_dims)]
            results.append(op(*sliced))
        outs = tuple(torch.stack(parts) for parts in zip(*results))
        return outs, (0,) * len(outs)

    return rule


torch.library.register_vmap("fastrnn::layer_forward", _vmap_loop(torch.ops.fastrnn.layer_forward))
torch.library.register_vmap("fastrnn::layer_backward", _vmap_loop(torch.ops.fastrnn.layer_backward))


# --------------------------------------------------------------------------------------
# The entry the rest of fastrnn calls
# --------------------------------------------------------------------------------------


TORCHSCRIPT_MESSAGE = (
    "fastrnn: TorchScript (torch.jit.script / torch.jit.trace, deprecated upstream) cannot compile "
    "fastrnn layers: their engine is Python and Triton. Use torch.compile or torch.export instead "
    "(both supported), or torch.onnx.export(..., dynamo=True) for ONNX"
)

FORWARD_AD_MESSAGE = (
    "fastrnn: forward-mode AD (torch.func.jvp / jacfwd / torch.func.hessian, "
    "torch.autograd.forward_ad) is not supported by fastrnn layers; use reverse mode instead: "
    "torch.func.vjp / grad / jacrev, or torch.autograd.functional.jacobian / hessian / hvp / vhp "
    "(their double backward is exact)"
)


def refuse_forward_ad(tensors) -> None:
    """Raise before any work when a tangent would flow into the layer (it would be dropped)."""
    if torch._C._are_functorch_transforms_active():  # (cheap test first: this runs every call)
        from torch._C._functorch import TransformType
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

        if any(i.key() == TransformType.Jvp for i in retrieve_all_functorch_interpreters()):
            raise RuntimeError(FORWARD_AD_MESSAGE)
    if torch.autograd.forward_ad._current_level >= 0:
        for t in tensors:
            if t is not None and torch.autograd.forward_ad.unpack_dual(t).tangent is not None:
                raise RuntimeError(FORWARD_AD_MESSAGE)


def layer(kind: CellKind, backend: str, x: Tensor, batch_sizes: Tensor | None, h0: Tensor, c0: Tensor | None,
          weights: Sequence[Tensor | None], reverse: bool, params: Tensor | None = None,
          resets: Tensor | None = None, zoneout: tuple | None = None, recurrent_scale: Tensor | None = None):
    """Run one layer-direction through ``torch.ops.fastrnn.layer_forward``.

    Args:
        kind: the cell kind.
        backend: a concrete backend name (``"reference"``, ``"triton"``, ``"native"``).
        x: ``(T, B, I)`` padded input (``batch_sizes`` None) or ``(N, I)`` packed rows.
        batch_sizes: the ``PackedSequence``'s batch sizes, or None.
        h0: ``(B, P)``; c0: ``(B, H)`` for LSTM, else None.
        weights: ``(w_ih, w_hh, b_ih, b_hh, w_hr)``, torch's shapes, None where absent
            (``w_ih`` None: ``x`` is the input projection ``(·, G*H)`` itself).
        reverse: run from the last timestep to the first.
        params: the cell's per-unit parameters ``(param_rows, H)``, or None.
        resets: bool, ``(T, B)`` padded or ``(N,)`` packed: where a sequence starts anew.
        zoneout: ``(mask_h, mask_c, [p_h, p_c])``: bool masks, ``(N, H)`` rows in ``y``'s order
            or shaped like ``y`` (training) or None, and the eval probabilities (``[]`` in
            training); None: no zoneout.
        recurrent_scale: ``(B, H)`` scale of the state entering ``W_hh`` (recurrent dropout).

    Returns:
        ``(y, h_n, c_n | None)``, ``y`` shaped like ``x`` with ``P`` features.
    """
    return layer_run(kind, backend, x, batch_sizes, h0, c0, weights, reverse, params, resets, zoneout,
                     recurrent_scale)[:3]


def layer_run(kind, backend, x, batch_sizes, h0, c0, weights, reverse, params=None, resets=None, zoneout=None,
              recurrent_scale=None, stacked=False, owned_x=False):
    """:func:`layer`, and whether its results are already the whole stack's: with ``stacked``
    (the stack is this one layer-direction) the eager reference path returns them as
    :func:`fastrnn.functional.stack` does (``y`` the caller's own copy, ``(1, B, ·)`` final
    states), made inside its autograd node; every other path returns the layer's.
    ``owned_x``: ``x`` is an input projection the caller made for this call alone, which the
    eager reference path's inference may overwrite."""
    eager = eager_call(x)  # (an export traces: not eager, so an eager call skips its test)
    if not eager and onnx_export.exporting():
        if zoneout is not None or recurrent_scale is not None:
            raise RuntimeError("fastrnn: ONNX export: zoneout and recurrent dropout have no ONNX operator "
                               "(export the model in eval mode without zoneout)")
        return (*onnx_export.layer(kind, x, batch_sizes, h0, c0, weights, reverse, params, resets), False)
    if not eager and (torch.jit.is_tracing() or torch.jit.is_scripting()):
        raise RuntimeError(TORCHSCRIPT_MESSAGE)
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    if not torch.compiler.is_compiling():
        refuse_forward_ad((x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params))
    # Keep what backward needs only when autograd will record this call (the test the op's
    # autograd kernel itself makes): nothing is saved under no_grad / inference_mode.
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params))
    zoneout_h, zoneout_c, zoneout_p = zoneout if zoneout is not None else (None, None, [])
    loop = (resets, zoneout_h, zoneout_c, list(zoneout_p), recurrent_scale)  # (LOOP_INPUTS)
    if eager and backend == "reference":
        # The reference backend's functions called directly (see fastrnn.eager_reference).
        if save:
            out = eager_reference.ReferenceLayer.apply(kind, x, (batch_sizes, loop, reverse, stacked), h0, c0, w_ih,
                                                       w_hh, b_ih, b_hh, w_hr, params)
            return out[0], out[1], (out[2] if kind.has_cell_state else None), stacked
        y, h_n, c_n, _ = eager_reference.forward(kind, x, batch_sizes, h0, c0, weights, params, loop, reverse, False,
                                                 owned_x=owned_x)
        return y, h_n, (c_n if kind.has_cell_state else None), False
    if eager:
        # Plain eager call: the op's work without the dispatcher (see _EagerLayer).
        if save:
            out = _EagerLayer.apply(kind, backend, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params,
                                    loop, reverse)
            return out[0], out[1], (out[2] if kind.has_cell_state else None), False
        y, h_n, c_n, _ = _forward_impl(kind.value, backend, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                       params, loop, reverse, save)
        return y, h_n, (c_n if kind.has_cell_state else None), False
    args = (kind.value, backend, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params, *loop, reverse, save)
    if torch.compiler.is_compiling():
        # torch.compile / torch.export: the op itself (with its registered autograd), so the
        # graph holds one fastrnn op per layer-direction at its top level.
        y, h_n, c_n, *_ = torch.ops.fastrnn.layer_forward(*args)
    else:
        y, h_n, c_n, *_ = LayerFunction.apply(*args)
    return y, h_n, (c_n if kind.has_cell_state else None), False


# (last: it builds on this module's helpers)
from . import eager_reference  # noqa: E402
