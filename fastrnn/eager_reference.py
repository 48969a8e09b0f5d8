"""The short path of a plain eager call of the reference backend.

A layer-direction on the reference backend runs here when the call is plain eager
(:func:`fastrnn.ops.eager_call`): the input projection (:func:`fastrnn.engine.input_projection`),
the backend's forward time loop (:func:`fastrnn.backends.reference.forward`), and in backward
its backward loop (:func:`fastrnn.backends.reference.backward`) and the weight gradients
(:func:`fastrnn.engine.weight_grads`), called directly. The results, the saved tensors and the
backward rule are those of the general eager path (:class:`fastrnn.ops._EagerLayer` over
:class:`fastrnn.engine.LoopLayer`), which reaches the same functions through a layer
implementation and its keyword dictionaries, rebuilt in backward: at T=10, B=1, where the C++
loops take a few microseconds, that routing cost about 30 us of an LSTM's 0.55 ms forward and
backward here (1 thread), a few percent of what a regulariser may add. A backward that must
itself be differentiable (``create_graph``) or that runs under vmap takes the general rule
(:func:`fastrnn.ops._grads`).
"""

from __future__ import annotations

import torch

from . import engine, ops
from .backends import reference

_functorch = torch._C._functorch


def _loop_keywords(schedule, reverse, params, loop) -> dict:
    """The backend's optional time-loop keywords, only those present, as the layer
    implementation gives them (:meth:`fastrnn.engine.LoopLayer._extras`)."""
    return engine.LoopLayer._extras(schedule, reverse, params, ops._flat_resets(loop[0]), ops._zoneout(loop), loop[4])


def forward(kind, x, batch_sizes, h0, c0, weights, params, loop, reverse, save, owned=True, owned_x=False):
    """``(y shaped like x with P features, h_n, c_n | None, (schedule, keywords, y rows,
    saved))`` of one layer-direction; ``owned``: ``y`` is not a view of the rows
    (else it may be, for a caller that copies it); ``owned_x``: ``x`` is the input
    projection and the caller's scratch (:func:`fastrnn.engine.input_projection`)."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    flat, schedule = ops._flat(x, batch_sizes)
    keywords = _loop_keywords(schedule, reverse, params, loop)
    with ops.no_autocast(x.device.type):
        xg, inner_bias = engine.input_projection(kind, flat, w_ih, b_ih, b_hh, owned_x)
        res = reference.forward(kind, xg, w_hh, inner_bias, w_hr, h0, c0, schedule, reverse, save, **keywords)
    y = res.y
    if batch_sizes is None:
        y = y.view(x.shape[0], x.shape[1], y.shape[1])
        if owned:
            y = ops._owned(y)
    return y, res.h_n, res.c_n, (schedule, keywords, res.y, tuple(res.saved))


class ReferenceLayer(torch.autograd.Function):
    """One layer-direction on this path when autograd records the call; with ``stacked``,
    the whole stack, its results as :func:`fastrnn.ops.layer_run` gives them then (the copy of
    ``y`` and the final states' ``(1, B, ·)`` made here, not by three more autograd nodes;
    none of them a view, so that ``h_n.detach_()`` works)."""

    @staticmethod
    def forward(ctx, kind, x, spec, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params):
        batch_sizes, loop, reverse, stacked = spec
        y, h_n, c_n, (schedule, keywords, y_rows, saved) = forward(
            kind, x, batch_sizes, h0, c0, (w_ih, w_hh, b_ih, b_hh, w_hr), params, loop, reverse, True, not stacked)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params, y_rows, *saved)
        keywords.pop("params", None)  # (backward reads params from the saved tensors)
        ctx.layer = (kind, schedule, reverse, batch_sizes, keywords, loop, stacked)
        ctx.set_materialize_grads(False)
        if stacked:  # (y: a view of the saved rows)
            y, h_n = y.clone(), ops._owned(h_n.unsqueeze(0))
            c_n = None if c_n is None else ops._owned(c_n.unsqueeze(0))
        return (y, h_n, c_n) if c_n is not None else (y, h_n)

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n=None):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params, y, *saved = ctx.saved_tensors
        kind, schedule, reverse, batch_sizes, keywords, loop, stacked = ctx.layer
        if stacked:  # (the final states' gradients come (1, B, ·))
            dh_n, dc_n = (None if g is None else g[0] for g in (dh_n, dc_n))
        need = ctx.needs_input_grad
        # (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params): forward's arguments 1 and 3 to 10
        needs = (need[1], *need[3:11])
        inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params)
        if torch.is_grad_enabled() or torch._C._are_functorch_transforms_active() or any(
                g is not None and _functorch.is_legacy_batchedtensor(g) for g in (dy, dh_n, dc_n)):
            # (create_graph or vmap: the general rule, from the same saved tensors)
            y_seq = y if batch_sizes is not None else y.view(x.shape[0], x.shape[1], y.shape[1])
            grads = ops._grads(kind, "reference", reverse, x, batch_sizes, inputs, y_seq, saved, (dy, dh_n, dc_n),
                               needs, loop=loop)
            return (None, grads[0], None, *grads[1:])
        rows = schedule.rows
        dy = torch.zeros_like(y) if dy is None else dy.reshape(rows, dy.shape[-1])
        dh_n = torch.zeros_like(h0) if dh_n is None else dh_n
        if not kind.has_cell_state:
            dc_n = None
        elif dc_n is None:
            dc_n = torch.zeros_like(c0)
        if params is not None:
            keywords = dict(keywords, params=params)
        with ops.no_autocast(x.device.type):
            res = reference.backward(kind, tuple(saved), w_hh, b_hh if kind.recurrent_bias_inside else None, w_hr,
                                     h0, c0, y, dy.contiguous(), dh_n.contiguous(),
                                     None if dc_n is None else dc_n.contiguous(), schedule, reverse, **keywords)
            g = engine.weight_grads(schedule, reverse, res, x.reshape(rows, x.shape[-1]), h0, w_ih, b_ih, b_hh, y,
                                    needs, params, keywords.get("resets"), keywords.get("recurrent_scale"))
        dx = None if g.x is None else g.x.view(x.shape)
        return None, dx, None, g.h0, g.c0, g.w_ih, g.w_hh, g.b_ih, g.b_hh, g.w_hr, g.params
