"""The reference backend's own loop for the peephole LSTM (:data:`fastrnn.cells.LSTM_PEEPHOLE`).

The LSTM's loop of :mod:`fastrnn.backends.reference` plus the three per-unit terms
(equations in :mod:`fastrnn.cells.variants`, ``p = [w_ci, w_cf, w_co]``)::

    i = sigmoid(x_i + w_ci * c),  f = sigmoid(x_f + w_cf * c),  g = tanh(x_g)
    c' = f * c + i * g,  o = sigmoid(x_o + w_co * c'),  h' = o * tanh(c')

The backward folds the peepholes into whole-sequence factors, so each step is as many ops
as the LSTM's: ``dc_total = dc + dh * (o (1 - tanh(c')^2) + w_co tanh(c') o (1 - o))`` and
``dc_prev = dc_total * (f + w_ci i' + w_cf f')`` (``i'``, ``f'`` the gates' factors).

Saved layout (:func:`layout`, the generic loop's for this cell): gates ``(N, 4H)``
(i, f, g, o) and ``c`` ``(N, H)``; the backward recomputes ``tanh(c)`` in one op.
"""

from __future__ import annotations

import torch

from . import reference as ref
from .base import BackwardResult, ForwardResult


def layout(rows, hidden, dtype):
    return [((rows, 4 * hidden), dtype), ((rows, hidden), dtype)]


def forward(xg, w_hh, b_hh, h0, c0, schedule, reverse, save, params, cuts):
    rows, hidden = xg.shape[0], c0.shape[1]
    sizes = schedule.batch_sizes
    w_if, w_co = params[0:2], params[2]
    y = xg.new_empty(rows, hidden)
    # With `save`, c of every step is kept for backward; without, one (B, H) cell-state
    # buffer is updated in place (rows beyond the active batch keep their final value).
    c_seq = xg.new_empty(rows, hidden) if save else c0.clone()
    w_hh_t = w_hh.t().contiguous()  # one copy per call; the per-step GEMMs run faster on it
    # Each step's rows, as views made once; the gates overwrite the input projection in
    # place (xg belongs to the call).
    gate_rows, y_rows = xg.split_with_sizes(sizes), y.split_with_sizes(sizes)
    pair_rows = xg.view(rows, 4, hidden)[:, :2].split_with_sizes(sizes)
    if_rows, i_rows, f_rows, g_rows, o_rows = (xg[:, a * hidden : b * hidden].split_with_sizes(sizes)
                                               for a, b in ((0, 2), (0, 1), (1, 2), (2, 3), (3, 4)))
    c_rows = c_seq.split_with_sizes(sizes) if save else None
    zero_c = torch.zeros_like(c0) if cuts is not None and save else None
    h = c = None
    for t in schedule.order(reverse):
        bs = sizes[t]
        cut = None if cuts is None else cuts[t]
        if cut is not True:  # (every row reset: h = 0 adds nothing)
            hs = h0[:bs] if h is None else ref._state_rows(h, h0, bs)
            if cut is not None:
                hs = hs.masked_fill(cut, 0)
            gate_rows[t].addmm_(hs, w_hh_t)
        if save:
            cp = c0[:bs] if c is None else ref._state_rows(c, c0, bs)
            if cut is not None:
                cp = ref.reset_state(cp, cut, zero_c)
        else:
            cp = ref.reset_in_place(c_seq[:bs], cut)
        pair_rows[t].addcmul_(cp.unsqueeze(1), w_if)  # x_i += w_ci * c, x_f += w_cf * c
        if_rows[t].sigmoid_()
        g_rows[t].tanh_()
        c = torch.mul(f_rows[t], cp, out=c_rows[t]) if save else cp.mul_(f_rows[t])
        c.addcmul_(i_rows[t], g_rows[t])
        o = o_rows[t].addcmul_(c, w_co).sigmoid_()
        h = torch.tanh(c, out=y_rows[t]).mul_(o)
    c_n = schedule.final(c_seq, reverse) if save else c_seq
    saved = (xg, c_seq) if save else ()
    return ForwardResult(y, schedule.final(y, reverse), c_n, saved)


def backward(saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, params, resets, cuts):
    gates_seq, c_seq = saved
    rows, hidden = c_seq.shape
    tanh_c = torch.tanh(c_seq)
    sizes = schedule.batch_sizes
    w_ci, w_cf, w_co = params[0], params[1], params[2]
    i, f, g, o = gates_seq.chunk(4, 1)
    c_prev = ref.reset_sequence(schedule.previous(c_seq, c0, reverse), resets)
    # dgates starts as the factors [i', f', g', o'] (i' = g i (1-i), f' = c_prev f (1-f),
    # g' = i (1-g^2), o' = tanh(c) o (1-o)); each step multiplies its rows by dc_total / dh.
    dgates = ref.lstm_gate_factors(gates_seq, c_prev, tanh_c)
    di, df, dg, do = dgates.chunk(4, 1)
    # dc_total = dc + dh * (o (1 - tanh(c)^2) + w_co o')
    dc_from_h = torch.mul(tanh_c, tanh_c).neg_().add_(1).mul_(o).addcmul_(do, w_co)
    # dc_prev = dc_total * (f + w_ci i' + w_cf f')
    carry = torch.addcmul(f, di, w_ci).addcmul_(df, w_cf)

    dh, dc = dh_n.clone(), dc_n.clone()
    step_rows = dgates.view(rows, 4, hidden).split_with_sizes(sizes)
    gate_rows, from_h_rows, carry_rows = (s.split_with_sizes(sizes) for s in (dgates, dc_from_h, carry))
    for t, dy_next in ref._backward_order(schedule, reverse, dh, dy):
        bs = sizes[t]
        dhs, dcs = ref._head(dh, bs), dc[:bs]
        dcs.addcmul_(dhs, from_h_rows[t])
        step = step_rows[t]
        step[:, :3].mul_(dcs.unsqueeze(1))
        step[:, 3].mul_(dhs)
        dcs.mul_(carry_rows[t])
        cut = None if cuts is None else cuts[t]
        if cut is None:
            ref._recurrent_grad(dh, gate_rows[t], w_hh, dy_next)
        else:
            ref.cut_recurrent_grad(dh, gate_rows[t], w_hh, dy_next, cut, dc=dc)
    dparams = torch.stack((
        torch.mul(di, c_prev).sum(0), c_prev.mul_(df).sum(0), torch.mul(do, c_seq).sum(0),
    )).to(params.dtype)
    return BackwardResult(dgates, dgates, dh, dc, None, dparams)
