"""The autograd engine: one ``torch.autograd.Function`` per layer-direction.

Forward:  ``xg = x @ W_ih^T + b`` for all ``T*B`` rows in one GEMM, then the backend's
          forward time loop, which saves only what its backward loop needs.
Backward: the backend's reverse time loop gives the gate gradients of every step and
          ``dh0`` / ``dc0``; ``dx``, ``dW_ih``, ``dW_hh`` and the biases are then
          whole-sequence GEMMs and reductions here.

No per-step autograd graph is ever built.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .kinds import CellKind
from .schedule import Schedule


class RecurrentLayer(torch.autograd.Function):
    """One direction of one recurrent layer over a flat sequence.

    Inputs (tensors may be None where noted):
        backend: module implementing :mod:`fastrnn.backends.base`.
        kind: :class:`~fastrnn.kinds.CellKind`.
        schedule: :class:`~fastrnn.schedule.Schedule` of the flat rows.
        reverse: process timesteps from last to first.
        x: ``(N, I)`` input rows.
        h0: ``(B, P)``; c0: ``(B, H)`` for LSTM, else None.
        w_ih ``(G*H, I)``, w_hh ``(G*H, P)``, b_ih / b_hh ``(G*H,)`` or None,
        w_hr ``(P, H)`` or None.

    Returns:
        ``(y, h_n, c_n)`` for LSTM, ``(y, h_n)`` otherwise; ``y`` is ``(N, P)``.
    """

    @staticmethod
    def forward(ctx, backend, kind, schedule, reverse, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
        fold_bias = b_ih is not None and not kind.recurrent_bias_inside
        if b_ih is None:
            xg = x @ w_ih.t()
        else:
            xg = torch.addmm(b_ih + b_hh if fold_bias else b_ih, x, w_ih.t())
        inner_bias = b_hh if (b_hh is not None and kind.recurrent_bias_inside) else None
        save = any(ctx.needs_input_grad[4:])
        res = backend.forward(kind, xg, w_hh, inner_bias, w_hr, h0, c0, schedule, reverse, save)
        del xg
        ctx.backend, ctx.kind, ctx.schedule, ctx.reverse = backend, kind, schedule, reverse
        ctx.has_bias = b_ih is not None
        ctx.n_saved = len(res.saved)
        if save:
            # Save only what backward reads: x for dW_ih, W_ih for dx, b_hh only where the
            # step uses it (GRU).
            need = ctx.needs_input_grad
            ctx.save_for_backward(
                x if need[7] else None, h0, c0, w_ih if need[4] else None, w_hh,
                inner_bias, w_hr, res.y, *res.saved,
            )
        if kind.has_cell_state:
            return res.y, res.h_n, res.c_n
        return res.y, res.h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n=None):
        x, h0, c0, w_ih, w_hh, inner_bias, w_hr, y, *saved = ctx.saved_tensors
        kind, schedule, reverse = ctx.kind, ctx.schedule, ctx.reverse
        res = ctx.backend.backward(
            kind, tuple(saved), w_hh, inner_bias, w_hr, h0, c0, y,
            dy.contiguous(), dh_n.contiguous(),
            dc_n.contiguous() if dc_n is not None else None,
            schedule, reverse,
        )
        need = ctx.needs_input_grad
        dx = res.dxg @ w_ih if need[4] else None
        dw_ih = res.dxg.t() @ x if need[7] else None
        dw_hh = None
        if need[8]:
            dw_hh = schedule.previous_product(res.dhg, y, h0, reverse)
        db_ih = res.dxg.sum(0) if (ctx.has_bias and need[9]) else None
        db_hh = None
        if ctx.has_bias and need[10]:
            db_hh = db_ih if (res.dhg is res.dxg and db_ih is not None) else res.dhg.sum(0)
        dh0 = res.dh0 if need[5] else None
        dc0 = res.dc0 if need[6] else None
        dw_hr = res.dw_hr if need[11] else None
        return None, None, None, None, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr


def run_layer(backend, kind: CellKind, schedule: Schedule, reverse: bool, x, h0, c0, weights):
    """Apply :class:`RecurrentLayer`; ``weights`` is ``(w_ih, w_hh, b_ih, b_hh, w_hr)``.

    Returns ``(y, h_n, c_n)`` with ``c_n`` None unless LSTM.

    Under ``no_grad`` / ``inference_mode``, ``Function.apply`` still sets
    ``needs_input_grad`` from ``requires_grad``, so the layer would ask the backend to keep
    every step's gates for a backward that cannot happen. Detached inputs (the same values;
    no graph is built either way) make it save nothing.
    """
    if not torch.is_grad_enabled():
        x, h0, c0 = (None if t is None else t.detach() for t in (x, h0, c0))
        weights = tuple(None if w is None else w.detach() for w in weights)
    out = RecurrentLayer.apply(backend, kind, schedule, reverse, x, h0, c0, *weights)
    if kind.has_cell_state:
        return out
    return out[0], out[1], None
