"""The engine around a time-loop backend: one layer-direction, forward and backward.

A time-loop backend (``reference``, ``triton``; interface in :mod:`fastrnn.backends.base`)
only runs the recurrence over a precomputed input projection. :class:`LoopLayer` turns it
into a *layer implementation*, the three functions :mod:`fastrnn.ops` calls:

Forward:  ``xg = x @ W_ih^T + b`` for all ``N`` rows in one GEMM (``x`` is ``xg`` already
          when ``w_ih`` is None: the caller projected and normalised it), then the
          backend's forward time loop, which saves only what its backward loop needs.
Backward: the backend's reverse time loop gives the gate gradients of every step and
          ``dh0`` / ``dc0``; ``dx``, ``dW_ih``, ``dW_hh`` and the biases are then
          whole-sequence GEMMs and reductions here.

Two optional inputs reach the time loop: ``params``, the cell's per-unit parameters
``(param_rows, H)`` (peepholes, LayerNorm gains), and ``resets``, one bool per row: the
row's sequence starts a new episode at that step. The loop receives ``resets`` for its own
direction (:meth:`Schedule.entering_resets`): the state *entering* a row's step is zero.

No autograd graph is built by any of this: :mod:`fastrnn.ops` registers the backward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .backends.base import loop_inputs
from .kinds import CellKind
from .schedule import Schedule


class LayerGrads(NamedTuple):
    """Gradients of one layer-direction; None where not asked for."""

    x: torch.Tensor | None
    h0: torch.Tensor | None
    c0: torch.Tensor | None
    w_ih: torch.Tensor | None
    w_hh: torch.Tensor | None
    b_ih: torch.Tensor | None
    b_hh: torch.Tensor | None
    w_hr: torch.Tensor | None
    params: torch.Tensor | None = None


def input_projection(kind: CellKind, x, w_ih, b_ih, b_hh, owned: bool = False):
    """``(xg, inner_bias)``: ``xg = x @ W_ih^T`` plus every bias the cell adds outside its
    recurrent product, for all rows in one GEMM (``x`` is the projection already when
    ``w_ih`` is None; ``owned``: that projection is the caller's scratch, which the backend
    may overwrite, rather than a copy of it); ``inner_bias`` is ``b_hh`` where the cell
    applies it inside (GRU's ``b_hn``), else None."""
    fold_bias = b_hh is not None and not kind.recurrent_bias_inside
    bias = b_ih
    if fold_bias:
        bias = b_hh if b_ih is None else b_ih + b_hh
    if w_ih is None:
        if bias is not None:
            xg = x + bias
        else:
            xg = x if owned else x.clone()  # (the backend may overwrite xg)
    elif bias is None:
        xg = x @ w_ih.t()
    else:
        xg = torch.addmm(bias, x, w_ih.t())
    return xg, (b_hh if (b_hh is not None and kind.recurrent_bias_inside) else None)


def weight_grads(schedule: Schedule, reverse: bool, res, x, h0, w_ih, b_ih, b_hh, y, needs, params=None,
                 entering=None, recurrent_scale=None) -> LayerGrads:
    """The layer's gradients from the backward loop's result ``res``: ``dx``, ``dW_ih``,
    ``dW_hh`` and the biases as whole-sequence GEMMs and reductions, None where ``needs``
    is False. ``entering``: the direction's entering resets (the state entering those rows
    was zero), ``recurrent_scale``: recurrent dropout's scale of that state."""
    need_x, need_h0, need_c0, need_w_ih, need_w_hh, need_b_ih, need_b_hh, need_w_hr, *need_p = needs
    if w_ih is None:
        dx = res.dxg if need_x else None
        dw_ih = None
    else:
        dx = res.dxg @ w_ih if need_x else None
        dw_ih = res.dxg.t() @ x if need_w_ih else None
    dw_hh = None
    if need_w_hh:
        if entering is None and recurrent_scale is None:
            dw_hh = schedule.previous_product(res.dhg, y, h0, reverse)
        else:  # the state as it entered W_hh: zero after a reset, scaled by recurrent dropout
            prev = schedule.previous(y, h0, reverse)
            if entering is not None:
                prev = torch.where(entering.unsqueeze(1), 0, prev)
            if recurrent_scale is not None:
                prev = schedule.scale_rows(prev, recurrent_scale)
            dw_hh = res.dhg.t() @ prev
    db_ih = res.dxg.sum(0) if (b_ih is not None and need_b_ih) else None
    db_hh = None
    if b_hh is not None and need_b_hh:
        db_hh = db_ih.clone() if (res.dhg is res.dxg and db_ih is not None) else res.dhg.sum(0)
    dparams = res.dparams if (params is not None and need_p and need_p[0]) else None
    return LayerGrads(
        dx, res.dh0 if need_h0 else None, res.dc0 if need_c0 else None, dw_ih, dw_hh, db_ih, db_hh,
        res.dw_hr if need_w_hr else None, dparams,
    )


class LoopLayer:
    """Layer implementation over a time-loop backend module (see the module docstring).

    Args:
        backend: a module implementing :mod:`fastrnn.backends.base`, plus
            ``saved_layout(kind, rows, hidden, dtype, save)``.
    """

    def __init__(self, backend):
        self.backend = backend
        self.name = backend.name

    @staticmethod
    def _extras(schedule, reverse, params, resets, zoneout=None, recurrent_scale=None) -> dict:
        """The optional time-loop arguments, given to the backend only when present (resets
        turned into this direction's "state entering the row is zero")."""
        if resets is not None:
            resets = schedule.entering_resets(resets, reverse)
        return loop_inputs(params, resets, zoneout, recurrent_scale)

    def layer_forward(self, kind: CellKind, x, schedule: Schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                      reverse: bool, save: bool, params=None, resets=None, zoneout=None, recurrent_scale=None):
        """``(y (N, P), h_n (B, P), c_n (B, H) | None, saved)`` of one layer-direction.

        ``x`` is ``(N, I)`` flat rows ordered by ``schedule`` (``(N, G*H)``, the input
        projection itself, when ``w_ih`` is None); ``saved`` is the backend's private tuple
        for :meth:`layer_backward` (empty unless ``save``); ``resets`` ``(N,)`` bool or None.
        """
        xg, inner_bias = input_projection(kind, x, w_ih, b_ih, b_hh)
        res = self.backend.forward(kind, xg, w_hh, inner_bias, w_hr, h0, c0, schedule, reverse, save,
                                   **self._extras(schedule, reverse, params, resets, zoneout, recurrent_scale))
        return res.y, res.h_n, res.c_n, tuple(res.saved)

    def layer_backward(self, kind: CellKind, schedule: Schedule, reverse: bool, x, h0, c0, w_ih, w_hh,
                       b_ih, b_hh, w_hr, y, saved, dy, dh_n, dc_n, needs, params=None, resets=None, zoneout=None,
                       recurrent_scale=None) -> LayerGrads:
        """Gradients of ``(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params)``, None where
        ``needs`` is False (``needs`` may leave out ``params``)."""
        inner_bias = b_hh if (b_hh is not None and kind.recurrent_bias_inside) else None
        extras = self._extras(schedule, reverse, params, resets, zoneout, recurrent_scale)
        res = self.backend.backward(
            kind, tuple(saved), w_hh, inner_bias, w_hr, h0, c0, y,
            dy.contiguous(), dh_n.contiguous(), dc_n.contiguous() if dc_n is not None else None,
            schedule, reverse, **extras,
        )
        return weight_grads(schedule, reverse, res, x, h0, w_ih, b_ih, b_hh, y, needs, params, extras.get("resets"),
                            recurrent_scale)

    def saved_layout(self, kind: CellKind, rows, batch, input_size, hidden, proj, dtype, save, resets=False,
                     zoneout=None):
        """``[(shape, dtype), ...]`` of ``saved`` from sizes alone (for fake tensors);
        ``resets``: the call has loop inputs (resets, zoneout, recurrent dropout);
        ``zoneout``: ``(on_h, on_c)`` or None."""
        if resets:
            return self.backend.saved_layout(kind, rows, hidden, dtype, save, resets=True, proj=bool(proj),
                                             zoneout=zoneout)
        return self.backend.saved_layout(kind, rows, hidden, dtype, save)
