"""Tuned reference loops for torch's four cells with zoneout or recurrent dropout.

The generic loop (:mod:`fastrnn.backends.generic`) runs any cell with the regularisers,
through the cell's torch functions and a copy of every saved value per step; for LSTM,
GRU and the plain RNNs (without ``proj_size``) these loops do the same arithmetic the way
the loops of :mod:`fastrnn.backends.reference` do: the activations in place in the input
projection, the activation derivatives for the whole sequence before the backward loop,
and per step only the GEMM, the state update and the regularisers' own ops.

They keep the generic loop's saved layout (:func:`fastrnn.backends.generic.saved_layout`),
so a call's saved tensors are the same whichever loop ran it. The semantics
(:class:`fastrnn.regularisers.Zoneout`, the recurrent-dropout scale) are the generic
loop's:

- the state entering a step (reset rows zeroed) is ``h_prev`` / ``c_prev``; the GEMM reads
  ``h_prev * scale`` (recurrent dropout), the cell's direct use of ``h_prev`` (GRU) does not;
- zoneout blends the cell's new value with the entering state: ``where(mask, prev, new)``
  in training, ``new + p * (prev - new)`` in eval; the blended state is the output and what
  the next step reads;
- backward: the gradient of a blended state splits into the cell's part and the entering
  state's part (:meth:`Zoneout.split`); the GEMM's gradient ``dr @ W_hh`` is scaled by the
  recurrent-dropout scale before the direct and zoneout parts join it.
"""

from __future__ import annotations

import torch

from ..kinds import CellKind
from .base import BackwardResult, ForwardResult
from .reference import _state_rows, lstm_gate_factors, reset_sequence, reset_state

CELLS = (CellKind.LSTM, CellKind.GRU, CellKind.RNN_TANH, CellKind.RNN_RELU)


def runs(kind, w_hr) -> bool:
    """Whether these loops run a call of cell ``kind`` (no ``proj_size``)."""
    return w_hr is None and kind in CELLS


def _zoned(zoneout, which: str) -> bool:
    return zoneout is not None and (zoneout.on_h if which == "h" else zoneout.on_c)


def _blend(zoneout, which: str, prev, new, lo: int, hi: int, out):
    """The zoned-out state of rows ``lo:hi``, written to ``out``."""
    mask, p = (zoneout.mask_h, zoneout.p_h) if which == "h" else (zoneout.mask_c, zoneout.p_c)
    if mask is not None:
        return torch.where(mask[lo:hi], prev, new, out=out)
    return torch.lerp(new, prev, p, out=out)  # new + p * (prev - new)


class _Split:
    """Splits the gradient of one zoned-out state (``which``: ``"h"`` or ``"c"``) into the
    cell's part and the entering state's part, per step, into two buffers made once per call
    (the step's mask rows come from one split of the whole mask)."""

    def __init__(self, zoneout, which: str, like, schedule):
        self.on = _zoned(zoneout, which)
        if not self.on:
            return
        mask, self.p = (zoneout.mask_h, zoneout.p_h) if which == "h" else (zoneout.mask_c, zoneout.p_c)
        self.masks = None if mask is None else mask.split_with_sizes(schedule.batch_sizes)
        width = like.shape[1]
        self.zero = like.new_zeros(schedule.batch, width)
        self.cell_part = like.new_empty(schedule.batch, width)
        self.kept_part = like.new_empty(schedule.batch, width)

    def __call__(self, grad, t: int, bs: int):
        """``(gradient of the cell's new value, gradient of the entering state or None)``."""
        if not self.on:
            return grad, None
        cell, kept = self.cell_part[:bs], self.kept_part[:bs]
        if self.masks is not None:
            m, zero = self.masks[t], self.zero[:bs]
            return torch.where(m, zero, grad, out=cell), torch.where(m, grad, zero, out=kept)
        return torch.mul(grad, 1 - self.p, out=cell), torch.mul(grad, self.p, out=kept)


def _gemm_grad(out, dr, w_hh, rscale, bs, *addends):
    """``out = (dr @ W_hh) * scale + sum(addends)`` (the gradient reaching ``h_prev``)."""
    torch.mm(dr, w_hh, out=out)
    if rscale is not None:
        out.mul_(rscale[:bs])
    for a in addends:
        if a is not None:
            out.add_(a)


def _cut(cut, *grads):
    """No gradient crosses into the state before a reset."""
    for g in grads:
        if cut is True:
            g.zero_()
        elif cut is not None:
            g.masked_fill_(cut, 0)


def _cuts(cuts, t):
    return None if cuts is None else cuts[t]


# --------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------


def forward(kind, xg, w_hh, b_hh, h0, c0, schedule, reverse, save, cuts, zoneout=None, recurrent_scale=None):
    """The forward loop of ``kind`` (see :func:`runs`); the saved tuple is the generic loop's."""
    with torch.no_grad():
        if kind is CellKind.LSTM:
            return _lstm_forward(xg, w_hh, h0, c0, schedule, reverse, save, cuts, zoneout, recurrent_scale)
        if kind is CellKind.GRU:
            return _gru_forward(xg, w_hh, b_hh, h0, schedule, reverse, save, cuts, zoneout, recurrent_scale)
        return _rnn_forward(kind, xg, w_hh, h0, schedule, reverse, save, cuts, zoneout, recurrent_scale)


def _entering(h, h0, bs, cut, zero, rscale, scaled):
    """``(h_prev, the GEMM's input)`` of a step from the previous step's output rows (the
    input scaled by the recurrent-dropout scale into ``scaled``, a buffer made once per call)."""
    hs = reset_state(_state_rows(h, h0, bs), cut, zero)
    return hs, (hs if rscale is None else torch.mul(hs, rscale[:bs], out=scaled[:bs]))


def _rnn_forward(kind, xg, w_hh, h0, schedule, reverse, save, cuts, zoneout, rscale):
    # The cell's own new h overwrites the step's input projection in place (xg belongs to
    # the call); with zoneout of h the output is a second buffer and xg is the saved cell_h.
    w_hh_t = w_hh.t().contiguous()
    act = torch.Tensor.tanh_ if kind is CellKind.RNN_TANH else torch.Tensor.relu_
    sizes, offsets = schedule.batch_sizes, schedule.offsets
    zoned = _zoned(zoneout, "h")
    y = torch.empty_like(xg) if zoned else xg
    x_rows, y_rows = xg.split_with_sizes(sizes), y.split_with_sizes(sizes)
    zero = torch.zeros_like(h0)
    scaled = torch.empty_like(h0) if rscale is not None else None
    h = h0
    for t in schedule.order(reverse):
        bs, lo = sizes[t], offsets[t]
        hs, h_in = _entering(h, h0, bs, _cuts(cuts, t), zero, rscale, scaled)
        h_new = act(x_rows[t].addmm_(h_in, w_hh_t))
        h = _blend(zoneout, "h", hs, h_new, lo, lo + bs, y_rows[t]) if zoned else h_new
    saved = (xg,) if save and zoned else ()
    return ForwardResult(y, schedule.final(y, reverse), None, saved)


def _gru_forward(xg, w_hh, b_hh, h0, schedule, reverse, save, cuts, zoneout, rscale):
    hidden = h0.shape[1]
    w_hh_t = w_hh.t().contiguous()
    sizes, offsets = schedule.batch_sizes, schedule.offsets
    y = xg.new_empty(xg.shape[0], hidden)
    hn_seq = xg.new_empty(xg.shape[0], hidden)
    hg_buf = xg.new_empty(schedule.batch, 3 * hidden)
    new_buf = xg.new_empty(schedule.batch, hidden)
    rz_rows, r_rows, z_rows, n_rows = (xg[:, a:b].split_with_sizes(sizes) for a, b in (
        (0, 2 * hidden), (0, hidden), (hidden, 2 * hidden), (2 * hidden, 3 * hidden)))
    y_rows, hn_rows = y.split_with_sizes(sizes), hn_seq.split_with_sizes(sizes)
    zoned = _zoned(zoneout, "h")
    zero = torch.zeros_like(h0)
    scaled = torch.empty_like(h0) if rscale is not None else None
    h = h0
    for t in schedule.order(reverse):
        bs, lo = sizes[t], offsets[t]
        hs, h_in = _entering(h, h0, bs, _cuts(cuts, t), zero, rscale, scaled)
        hg = hg_buf[:bs]
        if b_hh is None:
            torch.mm(h_in, w_hh_t, out=hg)
        else:
            torch.addmm(b_hh, h_in, w_hh_t, out=hg)
        rz_rows[t].add_(hg[:, : 2 * hidden]).sigmoid_()
        hn = hn_rows[t].copy_(hg[:, 2 * hidden :])
        n = n_rows[t].addcmul_(r_rows[t], hn).tanh_()
        h_new = torch.sub(hs, n, out=new_buf[:bs] if zoned else y_rows[t]).mul_(z_rows[t]).add_(n)
        h = _blend(zoneout, "h", hs, h_new, lo, lo + bs, y_rows[t]) if zoned else h_new
    saved = (xg, hn_seq) if save else ()
    return ForwardResult(y, schedule.final(y, reverse), None, saved)


def _lstm_forward(xg, w_hh, h0, c0, schedule, reverse, save, cuts, zoneout, rscale):
    hidden = c0.shape[1]
    w_hh_t = w_hh.t().contiguous()
    sizes, offsets = schedule.batch_sizes, schedule.offsets
    zoned_h, zoned_c = _zoned(zoneout, "h"), _zoned(zoneout, "c")
    y = xg.new_empty(xg.shape[0], hidden)
    c_seq = xg.new_empty(xg.shape[0], hidden)
    cell_c = xg.new_empty(xg.shape[0], hidden) if zoned_c and save else None
    c_buf = xg.new_empty(schedule.batch, hidden)
    h_buf = xg.new_empty(schedule.batch, hidden)
    g_rows, y_rows, c_rows = (s.split_with_sizes(sizes) for s in (xg, y, c_seq))
    cell_c_rows = cell_c.split_with_sizes(sizes) if cell_c is not None else None
    zero = torch.zeros_like(h0)
    scaled = torch.empty_like(h0) if rscale is not None else None
    h, c = h0, c0
    for t in schedule.order(reverse):
        bs, lo = sizes[t], offsets[t]
        cut = _cuts(cuts, t)
        hs, h_in = _entering(h, h0, bs, cut, zero, rscale, scaled)
        cs = reset_state(_state_rows(c, c0, bs), cut, zero)
        gates = g_rows[t].addmm_(h_in, w_hh_t)
        gates[:, : 2 * hidden].sigmoid_()
        gates[:, 2 * hidden : 3 * hidden].tanh_()
        gates[:, 3 * hidden :].sigmoid_()
        i, f, g, o = gates.chunk(4, 1)
        c_out = (cell_c_rows[t] if cell_c_rows is not None else c_buf[:bs]) if zoned_c else c_rows[t]
        c_new = torch.mul(f, cs, out=c_out).addcmul_(i, g)
        h_new = torch.tanh(c_new, out=h_buf[:bs] if zoned_h else y_rows[t]).mul_(o)
        c = _blend(zoneout, "c", cs, c_new, lo, lo + bs, c_rows[t]) if zoned_c else c_new
        h = _blend(zoneout, "h", hs, h_new, lo, lo + bs, y_rows[t]) if zoned_h else h_new
    if not save:
        saved = ()
    else:
        saved = (xg, c_seq) if cell_c is None else (xg, c_seq, cell_c)
    return ForwardResult(y, schedule.final(y, reverse), schedule.final(c_seq, reverse), saved)


# --------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------


def backward(kind, saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, resets, cuts, zoneout=None,
             recurrent_scale=None):
    """The backward loop of ``kind`` for the tuple its forward saved."""
    with torch.no_grad():
        if kind is CellKind.LSTM:
            return _lstm_backward(saved, w_hh, c0, dy, dh_n, dc_n, schedule, reverse, resets, cuts, zoneout,
                                  recurrent_scale)
        if kind is CellKind.GRU:
            return _gru_backward(saved, w_hh, h0, y, dy, dh_n, schedule, reverse, resets, cuts, zoneout,
                                 recurrent_scale)
        return _rnn_backward(kind, saved, w_hh, y, dy, dh_n, schedule, reverse, cuts, zoneout, recurrent_scale)


def _rnn_backward(kind, saved, w_hh, y, dy, dh_n, schedule, reverse, cuts, zoneout, rscale):
    h_new = saved[0] if saved else y  # the cell's own new h (zoneout of h keeps it apart)
    # d pre-activation = dh * act'(pre): 1 - h^2 for tanh, [not h <= 0] for relu (torch's
    # threshold_backward).
    if kind is CellKind.RNN_TANH:
        dxg = torch.mul(h_new, h_new).neg_().add_(1)
    else:
        dxg = (h_new <= 0).logical_not_().to(h_new.dtype)
    sizes = schedule.batch_sizes
    dxg_rows, dy_rows = dxg.split_with_sizes(sizes), dy.split_with_sizes(sizes)
    split_h = _Split(zoneout, "h", dy, schedule)
    dh = dh_n.clone()
    for t in reversed(schedule.order(reverse)):
        bs = sizes[t]
        dh_t = dh[:bs].add_(dy_rows[t])
        d_new, keep = split_h(dh_t, t, bs)
        step = dxg_rows[t].mul_(d_new)
        _gemm_grad(dh_t, step, w_hh, rscale, bs, keep)
        _cut(_cuts(cuts, t), dh_t)
    return BackwardResult(dxg, dxg, dh, None, None)


def _gru_backward(saved, w_hh, h0, y, dy, dh_n, schedule, reverse, resets, cuts, zoneout, rscale):
    gates_seq, hn_seq = saved
    hidden = hn_seq.shape[1]
    r, z, n = gates_seq.chunk(3, 1)
    # The factors of the cell's gradient for the whole sequence (see reference._gru_backward):
    #   dn = (1-z)(1-n^2), dz = z(1-z)(h_prev - n), dr = dn * hn * r(1-r); dr_n = dn * r.
    # Each step scales its rows by the gradient of the cell's new h.
    dxg = torch.empty_like(gates_seq)
    dxr, dxz, dxn = dxg.chunk(3, 1)
    torch.mul(n, n, out=dxn).neg_().add_(1)
    torch.mul(z, dxn, out=dxr)
    dxn.sub_(dxr)
    torch.mul(r, r, out=dxr)
    torch.sub(r, dxr, out=dxr).mul_(hn_seq).mul_(dxn)
    torch.mul(z, z, out=dxz)
    h_prev = reset_sequence(schedule.previous(y, h0, reverse), resets)
    torch.sub(z, dxz, out=dxz).mul_(h_prev.sub_(n))
    dhg = dxg.clone()
    dhg[:, 2 * hidden :].mul_(r)
    sizes = schedule.batch_sizes
    dxg_rows, dhg_rows = (s.view(-1, 3, hidden).split_with_sizes(sizes) for s in (dxg, dhg))
    z_rows, dy_rows = z.split_with_sizes(sizes), dy.split_with_sizes(sizes)
    split_h = _Split(zoneout, "h", dy, schedule)
    direct_buf = dy.new_empty(schedule.batch, hidden)
    dh = dh_n.clone()
    for t in reversed(schedule.order(reverse)):
        bs = sizes[t]
        dh_t = dh[:bs].add_(dy_rows[t])
        d_new, keep = split_h(dh_t, t, bs)
        direct = torch.mul(d_new, z_rows[t], out=direct_buf[:bs])  # the direct path of h_prev, unscaled
        scale = d_new.unsqueeze(1)
        dxg_rows[t].mul_(scale)
        dr = dhg_rows[t].mul_(scale).view(bs, 3 * hidden)
        _gemm_grad(dh_t, dr, w_hh, rscale, bs, direct, keep)
        _cut(_cuts(cuts, t), dh_t)
    return BackwardResult(dxg, dhg, dh, None, None)


def _lstm_backward(saved, w_hh, c0, dy, dh_n, dc_n, schedule, reverse, resets, cuts, zoneout, rscale):
    gates_seq, c_seq, *kept = saved
    c_new_seq = kept[0] if kept else c_seq  # the cell's own new c (zoneout of c keeps it apart)
    hidden = c_seq.shape[1]
    o = gates_seq[:, 3 * hidden :]
    f = gates_seq[:, hidden : 2 * hidden]
    tanh_c = torch.tanh(c_new_seq)
    dgates = lstm_gate_factors(gates_seq, reset_sequence(schedule.previous(c_seq, c0, reverse), resets), tanh_c)
    dc_from_h = torch.mul(tanh_c, tanh_c).neg_().add_(1).mul_(o)  # d c_new / d h_new
    sizes = schedule.batch_sizes
    dy_rows, f_rows, dch_rows = (s.split_with_sizes(sizes) for s in (dy, f, dc_from_h))
    step_rows = dgates.view(-1, 4, hidden).split_with_sizes(sizes)
    split_h, split_c = _Split(zoneout, "h", dy, schedule), _Split(zoneout, "c", dy, schedule)
    dh, dc = dh_n.clone(), dc_n.clone()
    for t in reversed(schedule.order(reverse)):
        bs = sizes[t]
        dh_t, dc_t = dh[:bs].add_(dy_rows[t]), dc[:bs]
        dh_new, keep_h = split_h(dh_t, t, bs)
        dc_new, keep_c = split_c(dc_t, t, bs)
        dc_new.addcmul_(dh_new, dch_rows[t])  # the whole gradient of the cell's new c
        step = step_rows[t]
        step[:, :3].mul_(dc_new.unsqueeze(1))
        step[:, 3].mul_(dh_new)
        torch.mul(dc_new, f_rows[t], out=dc_t)
        if keep_c is not None:
            dc_t.add_(keep_c)
        _gemm_grad(dh_t, step.view(bs, 4 * hidden), w_hh, rscale, bs, keep_h)
        _cut(_cuts(cuts, t), dh_t, dc_t)
    return BackwardResult(dgates, dgates, dh, dc, None)
