"""The reference backend: the CPU path and the oracle of the tests.

One forward and one backward time loop per cell kind, next to its equations, in torch ops.
On the CPU (float32 / float64), torch's cells (the LSTM without ``proj_size``), the
peephole LSTM and the LayerNorm cells run the same loops in C++ (:mod:`fastrnn.backends.cpu_loops`: the same
inputs, saved tensors and results, a fraction of the time per step); the loops here are
what they stand in for, what runs elsewhere, and what the tests compare them with. The loops
build no autograd graph: they write into preallocated buffers in place, and everything
that does not depend on the recurrence (activation derivatives, ``tanh(c)``) is computed
for the whole sequence in one op before the backward loop, so each step is a handful of
kernels around one GEMM.

``resets`` keep these loops: the steps where a row starts from zero mask that row's
entering state and, in the backward, the gradient leaving it; the other steps run as
without resets. The LayerNorm-LSTM / -GRU and peephole cells have loops of the same kind in
:mod:`fastrnn.backends.reference_norm`; every other cell runs the generic loop of
:mod:`fastrnn.backends.generic`, driven by the cell's torch pointwise functions.

See :mod:`fastrnn.backends.base` for the interface and the state-buffer model of packed
sequences.
"""

from __future__ import annotations

import torch

from ..kinds import CellKind
from ..schedule import Schedule
from ..cells.variants import LSTM_PEEPHOLE
from . import cpu_loops, generic, reference_norm
from .base import BackwardResult, ForwardResult

name = "reference"


def _slot(schedule: Schedule, t: int) -> tuple[int, int]:
    off, bs = schedule.offsets[t], schedule.batch_sizes[t]
    return off, off + bs


def _previous_rows(seq, init, prev, bs):
    """Rows ``[:bs]`` of the state before a step, without copying when possible.

    ``prev`` is the ``(lo, hi)`` slot of the previously processed step in ``seq``, or None
    before the first step. The forward direction only loses rows (a view of the previous
    step); the reverse direction of a packed batch gains rows, which start from ``init``.
    """
    if prev is None:
        return init[:bs]
    lo, hi = prev
    if hi - lo >= bs:
        return seq[lo : lo + bs]
    return torch.cat([seq[lo:hi], init[hi - lo : bs]])


def _head(t, bs):
    """``t[:bs]``, without a slicing op when ``t`` has ``bs`` rows already (padded input)."""
    return t if t.shape[0] == bs else t[:bs]


def _state_rows(h, init, bs):
    """Rows ``[:bs]`` of the state before a step, from the previous step's output ``h``
    (``bs`` rows or more going forward; fewer in the reverse direction of a packed batch,
    whose newly started sequences begin from ``init``)."""
    n = h.shape[0]
    if n >= bs:
        return _head(h, bs)
    return torch.cat([h, init[n:bs]])


def _backward_order(schedule: Schedule, reverse: bool, dh, dy):
    """Timesteps in backward order, each with the ``dy`` rows of the step after it (None
    after the last one).

    Adds the first step's ``dy`` to ``dh``: inside the loop, the ``dy`` of the next step is
    added by :func:`_recurrent_grad` (fused into its GEMM where it can be).
    """
    steps = list(reversed(schedule.order(reverse)))
    dy_rows = dy.split_with_sizes(schedule.batch_sizes)
    if steps:
        first = dy_rows[steps[0]]
        _head(dh, first.shape[0]).add_(first)
    return zip(steps, [dy_rows[t] for t in steps[1:]] + [None])


def _recurrent_grad(dh, dgates, w_hh, dy_next, carry=None):
    """``dh[:bs] = dgates @ W_hh (+ carry[0] * carry[1])``, then ``+= dy_next``.

    ``dy_next`` is the ``dy`` of the step processed next (None after the last one).
    ``carry`` is the direct path of ``h_{t-1}`` into ``h_t`` (GRU: ``dh * z``). When the
    next step has as many rows, its ``dy`` is the GEMM's addend (one op fewer per step).
    """
    bs = dgates.shape[0]
    out = _head(dh, bs)
    base = None
    if dy_next is not None and dy_next.shape[0] == bs:
        base = dy_next if carry is None else torch.addcmul(dy_next, *carry)
        dy_next = None
    if base is None and carry is not None:
        base = carry[0] * carry[1]
    if base is None:
        torch.mm(dgates, w_hh, out=out)
    else:
        torch.addmm(base, dgates, w_hh, out=out)
    if dy_next is not None:
        _head(dh, dy_next.shape[0]).add_(dy_next)


def reset_steps(resets, schedule: Schedule):
    """Per timestep, how the state entering it is reset: None (no row), True (every row)
    or the ``(bs, 1)`` bool mask of the rows that start from zero.

    One host read of ``resets`` per call: the steps without a reset (most of them) then run
    exactly the loop without resets.
    """
    if resets is None:
        return None
    flags = resets.tolist()
    cuts = []
    for lo, bs in zip(schedule.offsets, schedule.batch_sizes):
        count = sum(flags[lo : lo + bs])
        cuts.append(None if count == 0 else True if count == bs else resets[lo : lo + bs].unsqueeze(1))
    return cuts


def reset_state(state, cut, zero):
    """``state`` (the state entering a step) with the rows ``cut`` marks set to zero
    (``zero``: a zero tensor of at least its shape)."""
    if cut is None:
        return state
    if cut is True:
        return _head(zero, state.shape[0])
    return state.masked_fill(cut, 0)


def reset_in_place(state, cut):
    """Zero, in place, the rows of ``state`` that ``cut`` marks (see :func:`reset_steps`)."""
    if cut is True:
        state.zero_()
    elif cut is not None:
        state.masked_fill_(cut, 0)
    return state


def lstm_gate_factors(gates_seq, c_prev, tanh_c):
    """The LSTM gates' derivatives for a whole sequence, ``[g i (1-i), c_prev f (1-f),
    i (1-g^2), tanh_c o (1-o)]`` (``gates_seq`` holds the activated ``i, f, g, o``): each
    step of a backward loop scales its rows by ``dc`` / ``dh`` in place. Written with out= and
    in-place ops: fresh large temporaries cost page faults on the CPU."""
    i, f, g, o = gates_seq.chunk(4, 1)
    dgates = torch.mul(gates_seq, gates_seq)
    torch.sub(gates_seq, dgates, out=dgates)  # s * (1 - s) for the sigmoid gates
    di, df, dg, do = dgates.chunk(4, 1)
    torch.mul(g, g, out=dg).neg_().add_(1).mul_(i)  # (1 - g^2) * i
    di.mul_(g)
    df.mul_(c_prev)
    do.mul_(tanh_c)
    return dgates


def reset_sequence(seq, resets):
    """A whole sequence of entering states with the reset rows zeroed (for the backward's
    whole-sequence factors)."""
    return seq if resets is None else seq.masked_fill(resets.unsqueeze(1), 0)


def cut_recurrent_grad(dh, dgates, w_hh, dy_next, cut, carry=None, dc=None):
    """:func:`_recurrent_grad` for a step whose entering state was reset in the rows ``cut``
    marks: no gradient reaches the state before them (``dh``, and ``dc`` when given, zero
    there), while ``dy_next`` (the earlier step's own output gradient) is added to every row."""
    bs = dgates.shape[0]
    if cut is True:
        dh[:bs].zero_()
        if dc is not None:
            dc[:bs].zero_()
    else:
        _recurrent_grad(dh, dgates, w_hh, None, carry)
        dh[:bs].masked_fill_(cut, 0)
        if dc is not None:
            dc[:bs].masked_fill_(cut, 0)
    if dy_next is not None:
        _head(dh, dy_next.shape[0]).add_(dy_next)


# --------------------------------------------------------------------------------------
# LSTM
#   i, f, g, o = sigmoid(xi + W_hi h), sigmoid(xf + W_hf h), tanh(xg + W_hg h), sigmoid(xo + W_ho h)
#   c' = f * c + i * g
#   m  = o * tanh(c')
#   h' = m                 (or m @ W_hr^T with proj_size)
# --------------------------------------------------------------------------------------


def _lstm_forward(xg, w_hh, w_hr, h0, c0, schedule, reverse, save, cuts):
    n_rows, hidden = xg.shape[0], c0.shape[1]
    batch = schedule.batch
    y = xg.new_empty(n_rows, h0.shape[1])
    # With `save`, c of every step is kept for backward and each step writes its own rows;
    # without, one (B, H) cell-state buffer is updated in place (rows beyond the active
    # batch keep their final value).
    c_seq = xg.new_empty(n_rows, hidden) if save else c0.clone()
    # tanh(c) is computed anyway for h; keeping it saves backward a pass of tanh over N*H.
    # A call with resets keeps the generic loop's layout instead (gates, c and, with a
    # projection, m): the layout of a call with loop inputs is the same whichever loop runs.
    generic_layout = save and cuts is not None
    tanh_c_seq = xg.new_empty(n_rows, hidden) if save and not generic_layout else None
    tanh_buf = xg.new_empty(batch, hidden) if generic_layout else None
    m_seq = xg.new_empty(n_rows, hidden) if generic_layout and w_hr is not None else None
    m_buf = xg.new_empty(batch, hidden) if w_hr is not None and m_seq is None else None
    w_hh_t = w_hh.t().contiguous()  # one copy per call; the per-step GEMMs run faster on it
    w_hr_t = w_hr.t() if w_hr is not None else None
    zero_c = torch.zeros_like(c0) if save and cuts is not None else None
    prev = None
    for t in schedule.order(reverse):
        lo, hi = _slot(schedule, t)
        bs = hi - lo
        cut = None if cuts is None else cuts[t]
        # The gates overwrite this step's input projection in place (xg belongs to the
        # call): no second (N, 4H) buffer, no copy of xg into the GEMM's output.
        if cut is None:
            gates = xg[lo:hi].addmm_(_previous_rows(y, h0, prev, bs), w_hh_t)
        elif cut is True:
            gates = xg[lo:hi]  # every row starts from h = 0
        else:
            gates = xg[lo:hi].addmm_(_previous_rows(y, h0, prev, bs).masked_fill(cut, 0), w_hh_t)
        gates[:, : 2 * hidden].sigmoid_()
        gates[:, 2 * hidden : 3 * hidden].tanh_()
        gates[:, 3 * hidden :].sigmoid_()
        i, f, g, o = gates.chunk(4, 1)
        if save:
            c_prev = reset_state(_previous_rows(c_seq, c0, prev, bs), cut, zero_c)
            cs = torch.mul(f, c_prev, out=c_seq[lo:hi])
        else:
            cs = reset_in_place(c_seq[:bs], cut).mul_(f)
        cs.addcmul_(i, g)
        h_out = y[lo:hi] if w_hr is None else m_buf[:bs] if m_seq is None else m_seq[lo:hi]
        if save:
            tanh_out = tanh_buf[:bs] if generic_layout else tanh_c_seq[lo:hi]
            torch.mul(torch.tanh(cs, out=tanh_out), o, out=h_out)
        else:
            torch.tanh(cs, out=h_out).mul_(o)
        if w_hr is not None:
            torch.mm(h_out, w_hr_t, out=y[lo:hi])
        prev = (lo, hi)
    c_n = schedule.final(c_seq, reverse) if save else c_seq
    if not save:
        saved = ()
    elif generic_layout:
        saved = (xg, c_seq) if m_seq is None else (xg, c_seq, m_seq)
    else:
        saved = (xg, c_seq, tanh_c_seq)
    return ForwardResult(y, schedule.final(y, reverse), c_n, saved)


def _lstm_backward(saved, w_hh, w_hr, c0, dy, dh_n, dc_n, schedule, reverse, resets, cuts):
    m_seq = None
    if cuts is None:
        gates_seq, c_seq, tanh_c = saved
    else:  # (the generic loop's layout: see _lstm_forward)
        gates_seq, c_seq, *kept = saved
        tanh_c = torch.tanh(c_seq)
        m_seq = kept[0] if kept else None
    hidden = c_seq.shape[1]
    i, f, g, o = gates_seq.chunk(4, 1)
    # Whole-sequence factors: dgates_pre = [dc*i', dc*f', dc*g', dm*o'] with
    #   i' = g*i*(1-i), f' = c_prev*f*(1-f), g' = i*(1-g^2), o' = tanh(c)*o*(1-o);
    # dgates starts as these factors and each step multiplies its rows by dc / dm in place.
    # Written with out= and in-place ops: fresh large temporaries cost page faults on the CPU.
    dgates = lstm_gate_factors(gates_seq, reset_sequence(schedule.previous(c_seq, c0, reverse), resets), tanh_c)
    dc_from_m = torch.mul(tanh_c, tanh_c).neg_().add_(1).mul_(o)  # dc += dm * o * (1 - tanh(c)^2)

    dh, dc = dh_n.clone(), dc_n.clone()
    dh_seq = torch.empty_like(dy) if w_hr is not None else None
    for t, dy_next in _backward_order(schedule, reverse, dh, dy):
        lo, hi = _slot(schedule, t)
        bs = hi - lo
        dhs, dcs = dh[:bs], dc[:bs]
        if w_hr is None:
            dm = dhs
        else:
            dh_seq[lo:hi].copy_(dhs)
            dm = dhs @ w_hr
        dcs.addcmul_(dm, dc_from_m[lo:hi])
        step = dgates[lo:hi].view(bs, 4, hidden)
        step[:, :3].mul_(dcs.unsqueeze(1))
        step[:, 3].mul_(dm)
        dcs.mul_(f[lo:hi])
        cut = None if cuts is None else cuts[t]
        if cut is None:
            _recurrent_grad(dh, dgates[lo:hi], w_hh, dy_next)
        else:
            cut_recurrent_grad(dh, dgates[lo:hi], w_hh, dy_next, cut, dc=dc)
    dw_hr = None
    if w_hr is not None:
        dw_hr = dh_seq.t() @ (o * tanh_c if m_seq is None else m_seq)
    return BackwardResult(dgates, dgates, dh, dc, dw_hr)


# --------------------------------------------------------------------------------------
# GRU (torch's rule: b_hn sits inside the reset gate's product)
#   r = sigmoid(xr + W_hr h + b_hr)
#   z = sigmoid(xz + W_hz h + b_hz)
#   n = tanh(xn + r * (W_hn h + b_hn))
#   h' = (1 - z) * n + z * h
# --------------------------------------------------------------------------------------


def _gru_forward(xg, w_hh, b_hh, h0, schedule, reverse, save, cuts):
    n_rows, hidden = xg.shape[0], h0.shape[1]
    batch = schedule.batch
    y = xg.new_empty(n_rows, hidden)
    hn_seq = xg.new_empty(n_rows, hidden) if save else None
    hg_buf = xg.new_empty(batch, 3 * hidden)
    w_hh_t = w_hh.t().contiguous()  # one copy per call; the per-step GEMMs run faster on it
    # Each step's rows of every sequence, as views made once (a slice per step and
    # sequence would cost more than the step's arithmetic at small sizes). r, z, n
    # overwrite the step's input projection in place (xg belongs to the call).
    sizes = schedule.batch_sizes
    rz_rows, r_rows, z_rows, n_rows = (xg[:, a:b].split_with_sizes(sizes) for a, b in (
        (0, 2 * hidden), (0, hidden), (hidden, 2 * hidden), (2 * hidden, 3 * hidden)))
    y_rows = y.split_with_sizes(sizes)
    hn_rows = hn_seq.split_with_sizes(sizes) if save else None
    zero = torch.zeros_like(h0) if cuts is not None else None
    h = h0
    for t in schedule.order(reverse):
        bs = sizes[t]
        hs = _state_rows(h, h0, bs)
        if cuts is not None:
            hs = reset_state(hs, cuts[t], zero)
        hg = _head(hg_buf, bs)
        if b_hh is None:
            torch.mm(hs, w_hh_t, out=hg)
        else:
            torch.addmm(b_hh, hs, w_hh_t, out=hg)
        rz_rows[t].add_(hg[:, : 2 * hidden]).sigmoid_()
        hn = hg[:, 2 * hidden :]
        if save:
            hn_rows[t].copy_(hn)
        n = n_rows[t].addcmul_(r_rows[t], hn).tanh_()
        h = torch.sub(hs, n, out=y_rows[t]).mul_(z_rows[t]).add_(n)  # n + z * (h - n)
    saved = (xg, hn_seq) if save else ()
    return ForwardResult(y, schedule.final(y, reverse), None, saved)


def _gru_backward(saved, w_hh, h0, y, dy, dh_n, schedule, reverse, resets, cuts):
    gates_seq, hn_seq = saved
    hidden = hn_seq.shape[1]
    r, z, n = gates_seq.chunk(3, 1)
    # With dh the total gradient reaching h' at a step:
    #   dn_pre = dh * (1-z) * (1-n^2)
    #   dz_pre = dh * (h - n) * z * (1-z)
    #   dr_pre = dn_pre * hn * r * (1-r)
    #   dh_prev = dh * z + [dr_pre, dz_pre, dn_pre * r] @ W_hh
    # Both gradient buffers start as the factors of dh and are scaled per step in place.
    # (in-place / out= ops throughout: fresh large temporaries cost page faults on the CPU)
    dxg = torch.empty_like(gates_seq)
    dxr, dxz, dxn = dxg.chunk(3, 1)
    torch.mul(n, n, out=dxn).neg_().add_(1)  # 1 - n^2
    torch.mul(z, dxn, out=dxr)
    dxn.sub_(dxr)  # (1 - z) * (1 - n^2)
    torch.mul(r, r, out=dxr)
    torch.sub(r, dxr, out=dxr).mul_(hn_seq).mul_(dxn)  # r * (1-r) * hn * dxn
    torch.mul(z, z, out=dxz)
    h_prev = reset_sequence(schedule.previous(y, h0, reverse), resets)
    torch.sub(z, dxz, out=dxz).mul_(h_prev.sub_(n))  # z * (1-z) * (h - n)
    dhg = dxg.clone()
    dhg[:, 2 * hidden :].mul_(r)

    dh = dh_n.clone()
    sizes = schedule.batch_sizes
    dxg_rows, dhg_rows = (t.view(-1, 3, hidden).split_with_sizes(sizes) for t in (dxg, dhg))
    z_rows = z.split_with_sizes(sizes)
    for t, dy_next in _backward_order(schedule, reverse, dh, dy):
        bs = sizes[t]
        dhs = _head(dh, bs)
        scale = dhs.unsqueeze(1)
        dxg_rows[t].mul_(scale)
        dhg_t = dhg_rows[t].mul_(scale)
        cut = None if cuts is None else cuts[t]
        if cut is None:
            _recurrent_grad(dh, dhg_t.view(bs, 3 * hidden), w_hh, dy_next, carry=(dhs, z_rows[t]))
        else:
            cut_recurrent_grad(dh, dhg_t.view(bs, 3 * hidden), w_hh, dy_next, cut, carry=(dhs, z_rows[t]))
    return BackwardResult(dxg, dhg, dh, None, None)


# --------------------------------------------------------------------------------------
# Plain RNN:  h' = act(x + W_hh h),  act = tanh or relu
# --------------------------------------------------------------------------------------


def _rnn_forward(kind, xg, w_hh, h0, schedule, reverse, cuts):
    # Each step overwrites its own rows of the input projection with h' (xg belongs to the
    # call and has y's shape): one GEMM and one activation per step, in place.
    w_hh_t = w_hh.t().contiguous()  # one copy per call; the per-step GEMMs run faster on it
    act = torch.Tensor.tanh_ if kind is CellKind.RNN_TANH else torch.Tensor.relu_
    rows = xg.split_with_sizes(schedule.batch_sizes)  # each step's rows, as views, in one call
    h = h0
    for t in schedule.order(reverse):
        x_t = rows[t]
        cut = None if cuts is None else cuts[t]
        if cut is None:
            h = act(x_t.addmm_(_state_rows(h, h0, x_t.shape[0]), w_hh_t))
        elif cut is True:
            h = act(x_t)  # every row starts from h = 0
        else:
            h = act(x_t.addmm_(_state_rows(h, h0, x_t.shape[0]).masked_fill(cut, 0), w_hh_t))
    return ForwardResult(xg, schedule.final(xg, reverse), None, ())


def _rnn_backward(kind, w_hh, y, dy, dh_n, schedule, reverse, cuts):
    # dpre = dh * act'(pre): 1 - h'^2 for tanh, [not h' <= 0] for relu (torch's relu' is 0 at
    # 0 and 1 at NaN: its threshold_backward zeroes only where h' <= 0).
    if kind is CellKind.RNN_TANH:
        dxg = torch.mul(y, y).neg_().add_(1)
    else:
        dxg = (y <= 0).logical_not_().to(y.dtype)
    dh = dh_n.clone()
    dxg_rows = dxg.split_with_sizes(schedule.batch_sizes)
    for t, dy_next in _backward_order(schedule, reverse, dh, dy):
        step = dxg_rows[t]
        step.mul_(_head(dh, step.shape[0]))
        cut = None if cuts is None else cuts[t]
        if cut is None:
            _recurrent_grad(dh, step, w_hh, dy_next)
        else:
            cut_recurrent_grad(dh, step, w_hh, dy_next, cut)
    return BackwardResult(dxg, dxg, dh, None, None)


# --------------------------------------------------------------------------------------
# Backend interface
# --------------------------------------------------------------------------------------


def saved_layout(kind, rows, hidden, dtype, save, resets=False, proj=False, zoneout=None):
    """Shapes and dtypes of the ``saved`` tuple :func:`forward` returns (from sizes alone).

    LSTM: gates ``(N, 4H)`` (i, f, g, o), ``c`` and ``tanh(c)`` ``(N, H)``; GRU: gates
    ``(N, 3H)`` (r, z, n) and ``W_hn h + b_hn`` ``(N, H)``; plain RNN: nothing (backward
    reads ``y``); the variant cells with a loop of their own:
    :func:`fastrnn.backends.reference_norm.saved_layout`; any other cell, and every call
    with ``resets`` (whichever loop runs it: the tuned loops keep the generic one's tensors
    then): :func:`fastrnn.backends.generic.saved_layout`.
    """
    if resets:
        return generic.saved_layout(kind, rows, hidden, dtype, save, proj, zoneout)
    if kind is CellKind.LSTM or kind is CellKind.GRU:
        if not save:
            return []
        extra = 2 if kind is CellKind.LSTM else 1
        return [((rows, kind.gates * hidden), dtype)] + [((rows, hidden), dtype)] * extra
    if kind is CellKind.RNN_TANH or kind is CellKind.RNN_RELU:
        return []
    if reference_norm.loops(kind) is not None:
        return reference_norm.saved_layout(kind, rows, hidden, dtype, save)
    return generic.saved_layout(kind, rows, hidden, dtype, save, proj)


def _refuse_projection(kind, w_hr):
    if w_hr is not None:
        raise ValueError(f"fastrnn: proj_size is only supported for LSTM, not for cell {kind.name!r}")


_CELLS = "cells"  # (a _cpp_loop route: cpu_loops.forward / backward)


def _cpp_loop(kind, like, w_hr, params, resets):
    """Which loops of :mod:`fastrnn.backends.cpu_loops` run a call without regularisers:
    ``_CELLS`` for torch's cells (the LSTM without ``proj_size``) and the peephole LSTM, the
    LayerNorm cells' ``("lstm" | "gru", eps)``, or None (the loops here), with or without
    resets."""
    if kind is CellKind.LSTM:
        route = _CELLS if w_hr is None else None
    elif kind in (CellKind.GRU, CellKind.RNN_TANH, CellKind.RNN_RELU):
        route = _CELLS
    elif params is None:
        route = None
    elif kind is LSTM_PEEPHOLE:
        route = _CELLS
    else:
        found = reference_norm.loops(kind)
        route = None if found is None else found.norm
    return route if route is not None and cpu_loops.runs(like) else None


def forward(kind, xg, w_hh, b_hh, w_hr, h0, c0, schedule, reverse, save, params=None, resets=None, **loop):
    """Run the forward time loop; see :mod:`fastrnn.backends.base`.

    torch's four cells and the variants of :mod:`fastrnn.backends.reference_norm` run their
    own loops, with or without ``resets``; with the regularisers (``loop``: ``zoneout``,
    ``recurrent_scale``) torch's four cells run the loops of
    :mod:`fastrnn.backends.reference_regularised` (LSTM without ``proj_size``); every other
    cell, and those calls, run the generic one.
    """
    if loop:
        if kind is not CellKind.LSTM:
            _refuse_projection(kind, w_hr)
        if reference_regularised.runs(kind, w_hr):
            if cpu_loops.runs(xg):
                return cpu_loops.forward(kind, xg, w_hh, b_hh, h0, c0, schedule, reverse, save, resets=resets, **loop)
            return reference_regularised.forward(kind, xg, w_hh, b_hh, h0, c0, schedule, reverse, save,
                                                 reset_steps(resets, schedule), **loop)
        return generic.forward(kind, xg, w_hh, b_hh, w_hr, h0, c0, schedule, reverse, save, params, resets, **loop)
    route = _cpp_loop(kind, xg, w_hr, params, resets)
    if route is _CELLS:
        return cpu_loops.forward(kind, xg, w_hh, b_hh, h0, c0, schedule, reverse, save, params, resets)
    if route is not None:
        return cpu_loops.norm_forward(route, xg, w_hh, b_hh, h0, c0, schedule, reverse, save, params, resets)
    cuts = reset_steps(resets, schedule)
    if kind is CellKind.LSTM:
        return _lstm_forward(xg, w_hh, w_hr, h0, c0, schedule, reverse, save, cuts)
    _refuse_projection(kind, w_hr)
    if kind is CellKind.GRU:
        return _gru_forward(xg, w_hh, b_hh, h0, schedule, reverse, save, cuts)
    if kind is CellKind.RNN_TANH or kind is CellKind.RNN_RELU:
        return _rnn_forward(kind, xg, w_hh, h0, schedule, reverse, cuts)
    loops = reference_norm.loops(kind)
    if loops is not None:
        with torch.no_grad():
            return loops.forward(xg, w_hh, b_hh, h0, c0, schedule, reverse, save, params, cuts)
    return generic.forward(kind, xg, w_hh, b_hh, w_hr, h0, c0, schedule, reverse, save, params, resets)


def backward(kind, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, params=None,
             resets=None, **loop):
    """Run the backward time loop; see :mod:`fastrnn.backends.base`."""
    if loop:
        if kind is not CellKind.LSTM:
            _refuse_projection(kind, w_hr)
        if reference_regularised.runs(kind, w_hr):
            if cpu_loops.runs(dy):
                return cpu_loops.backward(kind, saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule, reverse,
                                          resets=resets, **loop)
            return reference_regularised.backward(kind, saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule, reverse,
                                                  resets, reset_steps(resets, schedule), **loop)
        return generic.backward(kind, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule, reverse,
                                params, resets, **loop)
    route = _cpp_loop(kind, dy, w_hr, params, resets)
    if route is _CELLS:
        return cpu_loops.backward(kind, saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, params, resets)
    if route is not None:
        return cpu_loops.norm_backward(route, saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, params,
                                       resets)
    cuts = reset_steps(resets, schedule)
    if kind is CellKind.LSTM:
        return _lstm_backward(saved, w_hh, w_hr, c0, dy, dh_n, dc_n, schedule, reverse, resets, cuts)
    _refuse_projection(kind, w_hr)
    if kind is CellKind.GRU:
        return _gru_backward(saved, w_hh, h0, y, dy, dh_n, schedule, reverse, resets, cuts)
    if kind is CellKind.RNN_TANH or kind is CellKind.RNN_RELU:
        return _rnn_backward(kind, w_hh, y, dy, dh_n, schedule, reverse, cuts)
    loops = reference_norm.loops(kind)
    if loops is not None:
        with torch.no_grad():
            return loops.backward(saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, params, resets,
                                  cuts)
    return generic.backward(kind, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, params,
                            resets, **loop)


# (last: it builds on this module's helpers)
from . import reference_regularised  # noqa: E402
