"""A plain, differentiable layer and its backward: the path of higher-order derivatives.

The fast engines compute first derivatives by hand and build no autograd graph. When a
backward itself must be differentiable (``create_graph=True`` with anything that requires
grad: ``gradgradcheck``, ``hessian``, a gradient penalty, the ``torch.func`` transforms),
:mod:`fastrnn.ops` calls :func:`layer_backward` instead: the same gradients written as
ordinary out-of-place torch ops, one step at a time. Autograd, ``vmap`` and every other
transform see through them, so derivatives of every order are exact. (Differentiating a
recomputed forward with ``torch.autograd.grad`` inside the backward would be shorter, but
``vmap`` over such a nested ``autograd.grad`` — what ``torch.func.jacrev`` does — is not
reliable; explicit formulas are.)

The pointwise math is the cell's own (``cell.torch_forward`` / ``cell.torch_backward``,
out-of-place torch ops: see :mod:`fastrnn.cells.base`), the same for torch's four cells
and a user's; around it, each step's recurrent GEMM ``h W_hh^T`` (``+ b_hh`` when the cell
keeps it apart, else folded into the input projection) and its transpose, and for LSTM
with ``proj_size`` the projection ``h' = m W_hr^T`` of the cell's output ``m``.

Packed sequences follow :mod:`fastrnn.schedule`: step ``t`` updates rows ``[:bs_t]`` of a
``(B, ·)`` state and leaves the others as they were.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .cells import MAX_GATES, Cell
from .schedule import Schedule


class _Step(NamedTuple):
    """What one forward step computed (everything its backward reads)."""

    t: int
    h_prev: torch.Tensor  # (bs, P)
    c_prev: torch.Tensor | None  # (bs, H)
    kept: tuple  # s0 .. s3 of the cell
    extra: torch.Tensor | None  # e of the cell
    h: torch.Tensor  # the cell's output (m, before the projection, with W_hr)
    c: torch.Tensor | None  # (bs, H)
    cut: torch.Tensor | None  # (bs, 1) bool: the state entering this step was zeroed
    state: torch.Tensor  # (bs, P) the state entering the step (h_prev is what entered W_hh)


def _update(state, new, bs):
    return new if bs == state.shape[0] else torch.cat([new, state[bs:]])


def _slots(block, hidden, gates, zero):
    """``block (bs, G*H)`` as the four gate slots of the pointwise interface (zeros past G)."""
    parts = list(block.split(hidden, 1)) if gates > 1 else [block]
    return parts + [zero] * (MAX_GATES - gates)


def _zeroed(state, cut):
    return state if (cut is None or state is None) else torch.where(cut, 0, state)


def _forward(cell: Cell, x, schedule: Schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, params=None,
             resets=None, zoneout=None, rscale=None):
    """Run the layer; returns ``(y (N, P), h_n, c_n | None, steps)``.

    ``x`` is the input projection itself when ``w_ih`` is None; ``params`` the cell's
    ``p``; ``resets`` ``(N,)`` bool (see :mod:`fastrnn.engine`); ``zoneout`` a
    :class:`~fastrnn.regularisers.Zoneout`, ``rscale`` ``(B, H)`` the recurrent-dropout scale.
    """
    apart = cell.recurrent_apart
    fold = b_hh is not None and not apart
    bias = b_ih
    if fold:
        bias = b_hh if b_ih is None else b_ih + b_hh
    if w_ih is None:
        xg = x if bias is None else x + bias
    else:
        xg = F.linear(x, w_ih, bias)
    inner_bias = b_hh if apart else None
    p = () if params is None else (params,)
    entering = None if resets is None else schedule.entering_resets(resets, reverse).unsqueeze(1)
    gates = cell.gates
    hidden = w_hh.shape[0] // gates
    zero = xg.new_zeros(schedule.batch, hidden)
    h, c = h0, (c0 if cell.has_cell_state else None)
    ys, steps = [None] * schedule.steps, []
    for t in schedule.order(reverse):
        lo, bs = schedule.offsets[t], schedule.batch_sizes[t]
        cut = None if entering is None else entering[lo : lo + bs]
        hp = _zeroed(h[:bs], cut)
        cp = None if c is None else _zeroed(c[:bs], cut)
        h_in = hp if rscale is None else hp * rscale[:bs]
        rec = F.linear(h_in, w_hh, inner_bias)
        z = zero[:bs]
        out, c_new, *kept = cell.torch_forward(
            *_slots(xg[lo : lo + bs], hidden, gates, z), *_slots(rec, hidden, gates, z), hp, cp, *p
        )
        steps.append(_Step(t, h_in, cp, tuple(kept[:MAX_GATES]), kept[MAX_GATES], out, c_new, cut, hp))
        if zoneout is not None:
            out = zoneout.blend("h", hp, out, lo, lo + bs)
            c_new = zoneout.blend("c", cp, c_new, lo, lo + bs) if c_new is not None else None
        h_new = out if w_hr is None else F.linear(out, w_hr)
        ys[t] = h_new
        h = _update(h, h_new, bs)
        if c is not None:
            c = _update(c, c_new, bs)
    return torch.cat(ys), h, c, steps


def layer(kind: Cell, x, schedule: Schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse: bool, params=None,
          resets=None, zoneout=None, rscale=None):
    """One layer-direction: ``(y (N, P), h_n (B, P), c_n (B, H) | None)``, differentiable."""
    y, h_n, c_n, _ = _forward(kind, x, schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, params, resets,
                              zoneout, rscale)
    return y, h_n, c_n


def layer_backward(kind: Cell, x, schedule: Schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse: bool,
                   dy, dh_n, dc_n, params=None, resets=None, zoneout=None, rscale=None):
    """Gradients of ``(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, params)`` (``None`` for an
    absent input) for output gradients ``dy (N, P)``, ``dh_n (B, P)``, ``dc_n (B, H) | None``,
    computed with differentiable torch ops from the inputs alone."""
    cell = kind
    _, _, _, steps = _forward(cell, x, schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, params, resets,
                              zoneout, rscale)
    p = () if params is None else (params,)
    dparams = None
    gates = cell.gates
    apart = cell.recurrent_apart
    dh, dc = dh_n, (dc_n if cell.has_cell_state else None)
    dxg, dhg, h_prevs, ms, dms = [None] * schedule.steps, [None] * schedule.steps, [], [], []
    for s in reversed(steps):
        lo, bs = schedule.offsets[s.t], schedule.batch_sizes[s.t]
        dh_t = dh[:bs] + dy[lo : lo + bs]  # everything that reaches h_t
        dc_t = None if dc is None else dc[:bs]
        keep_dh = keep_dc = None
        if zoneout is not None:  # (with a projection, zoneout is refused before any work)
            dh_t, keep_dh = zoneout.split("h", dh_t, lo, lo + bs)
            if dc_t is not None:
                dc_t, keep_dc = zoneout.split("c", dc_t, lo, lo + bs)
        dm = dh_t
        if w_hr is not None:
            dm = dh_t @ w_hr
            ms.append(s.h)
            dms.append(dh_t)
        grads = cell.torch_backward(dm, dc_t, *s.kept, s.extra, s.c, s.c_prev, s.h, s.state, *p)
        if params is not None:
            dparams = grads[2 * MAX_GATES + 2] if dparams is None else dparams + grads[2 * MAX_GATES + 2]
        dx_t = torch.cat(grads[:gates], 1) if gates > 1 else grads[0]
        if apart:
            dr = grads[MAX_GATES : MAX_GATES + gates]
            dh_t_g = torch.cat(dr, 1) if gates > 1 else dr[0]
        else:
            dh_t_g = dx_t
        dh_prev = dh_t_g @ w_hh
        if rscale is not None:
            dh_prev = dh_prev * rscale[:bs]
        if cell.direct_h_grad:
            dh_prev = dh_prev + grads[2 * MAX_GATES]
        if keep_dh is not None:
            dh_prev = dh_prev + keep_dh
        dh_prev = _zeroed(dh_prev, s.cut)  # (no gradient crosses a reset)
        if dc is not None:
            dc_prev = grads[2 * MAX_GATES + 1] if keep_dc is None else grads[2 * MAX_GATES + 1] + keep_dc
            dc = _update(dc, _zeroed(dc_prev, s.cut), bs)
        dxg[s.t], dhg[s.t] = dx_t, dh_t_g
        h_prevs.append(s.h_prev)
        dh = _update(dh, dh_prev, bs)
    dxg_all = torch.cat(dxg)
    # dW_hh pairs each step's recurrent-gate gradient with the state it read.
    dhg_steps = torch.cat([dhg[s.t] for s in reversed(steps)])
    dw_hh = dhg_steps.t() @ torch.cat(h_prevs)
    db_ih = dxg_all.sum(0) if b_ih is not None else None
    db_hh = dhg_steps.sum(0) if b_hh is not None else None
    dw_hr = None
    if w_hr is not None:
        dw_hr = torch.cat(dms).t() @ torch.cat(ms)
    if w_ih is None:
        return dxg_all, dh, dc, None, dw_hh, db_ih, db_hh, dw_hr, dparams
    return dxg_all @ w_ih, dh, dc, dxg_all.t() @ x, dw_hh, db_ih, db_hh, dw_hr, dparams
