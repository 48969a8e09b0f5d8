"""The reference backend's time loop for any cell, driven by its torch pointwise functions.

:mod:`fastrnn.backends.reference` keeps a hand-tuned loop for each of torch's four cells
and runs every other :class:`~fastrnn.cells.Cell` here: one loop over the
:class:`~fastrnn.schedule.Schedule` (packed rows, either direction, ``h0`` / ``c0``) that
calls ``cell.torch_forward`` / ``cell.torch_backward`` on each step's rows (see
:mod:`fastrnn.cells.base` for the pointwise interface). It builds no autograd graph (it
runs under ``no_grad``) and writes every step into buffers allocated once per call; each
step is the recurrent GEMM plus the cell's own pointwise ops.

Saved layout (:func:`saved_layout`), in this order, each present only when needed:

- ``gates (N, G*H)``: ``s0 .. s{G-1}`` of every step, when ``cell.saves_gates``;
- ``extra (N, extra_width * H)``: ``e`` of every step, when ``cell.saves_extra``;
- ``c (N, H)``: the cell state after every step, when ``cell.has_cell_state``;
- ``m (N, H)``: the cell's output before the projection, with ``w_hr`` (LSTM's
  ``proj_size``; a state of ``P`` features is then ``y = m W_hr^T``).

Backward reads the previous states (``h_prev``, ``c_prev``) back from ``y`` / ``c`` and
``h0`` / ``c0`` (:meth:`Schedule.previous`), so nothing else is kept.

``params`` (the cell's ``p``) is passed to both pointwise functions; ``resets`` zeroes the
state entering the rows it marks (and, in the backward, the gradient leaving them).
"""

from __future__ import annotations

import torch

from ..cells import MAX_GATES
from ..schedule import Schedule
from .base import BackwardResult, ForwardResult

name = "reference"

#: The most tensors :func:`forward` keeps (``fastrnn.ops.SAVED_SLOTS``).
MAX_SAVED = 3


def saved_layout(cell, rows, hidden, dtype, save, proj: bool = False):
    """Shapes and dtypes of the ``saved`` tuple :func:`forward` returns (from sizes alone)."""
    if not save:
        return []
    layout = []
    if cell.saves_gates:
        layout.append(((rows, cell.gates * hidden), dtype))
    if cell.saves_extra:
        layout.append(((rows, cell.extra_width * hidden), dtype))
    layout += [((rows, hidden), dtype)] * (int(cell.has_cell_state) + int(proj))
    if len(layout) > MAX_SAVED:
        raise ValueError(f"fastrnn: cell {cell.name!r} would keep {len(layout)} tensors per layer; at most "
                         f"{MAX_SAVED} fit (saves_gates, saves_extra, a cell state and proj_size together)")
    return layout


def _previous_rows(seq, init, prev, bs):
    """Rows ``[:bs]`` of the state before a step: the previously processed step's rows of
    ``seq`` (``prev = (lo, hi)``, None before the first step), completed from ``init`` in the
    reverse direction of a packed batch, whose newly started sequences begin there."""
    if prev is None:
        return init[:bs]
    lo, hi = prev
    if hi - lo >= bs:
        return seq[lo : lo + bs]
    return torch.cat([seq[lo:hi], init[hi - lo : bs]])


def _slots(block, hidden, gates, zero):
    """``block (bs, G*H)`` as the four gate slots of the pointwise interface (zeros past G)."""
    parts = list(block.split(hidden, 1)) if gates > 1 else [block]
    return parts + [zero] * (MAX_GATES - gates)


def _zeroed(state, resets, lo, hi):
    """``state`` with the rows whose step starts an episode set to zero."""
    if resets is None or state is None:
        return state
    return torch.where(resets[lo:hi].unsqueeze(1), 0, state)


def forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule: Schedule, reverse, save, params=None, resets=None):
    """Run the forward time loop; see :mod:`fastrnn.backends.base`."""
    with torch.no_grad():
        return _forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule, reverse, save, params, resets)


def _forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule, reverse, save, params, resets):
    rows, gates = xg.shape[0], cell.gates
    hidden = xg.shape[1] // gates
    has_c = cell.has_cell_state
    y = xg.new_empty(rows, h0.shape[1])
    c_seq = xg.new_empty(rows, hidden) if has_c else None
    gate_seq = xg.new_empty(rows, gates * hidden) if save and cell.saves_gates else None
    extra_seq = xg.new_empty(rows, cell.extra_width * hidden) if save and cell.saves_extra else None
    m_seq = xg.new_empty(rows, hidden) if w_hr is not None else None
    zero = xg.new_zeros(schedule.batch, hidden)
    w_hh_t = w_hh.t().contiguous()  # one copy per call; the per-step GEMMs run faster on it
    w_hr_t = w_hr.t() if w_hr is not None else None
    p = () if params is None else (params,)
    prev = None
    for t in schedule.order(reverse):
        lo, bs = schedule.offsets[t], schedule.batch_sizes[t]
        hi = lo + bs
        h_prev = _zeroed(_previous_rows(y, h0, prev, bs), resets, lo, hi)
        c_prev = _zeroed(_previous_rows(c_seq, c0, prev, bs), resets, lo, hi) if has_c else None
        rec = h_prev @ w_hh_t if b_hh is None else torch.addmm(b_hh, h_prev, w_hh_t)
        z = zero[:bs]
        h, c, *kept = cell.torch_forward(
            *_slots(xg[lo:hi], hidden, gates, z), *_slots(rec, hidden, gates, z), h_prev, c_prev, *p
        )
        if w_hr is None:
            y[lo:hi].copy_(h)
        else:
            m_seq[lo:hi].copy_(h)
            torch.mm(m_seq[lo:hi], w_hr_t, out=y[lo:hi])
        if has_c:
            c_seq[lo:hi].copy_(c)
        if gate_seq is not None:
            for k in range(gates):
                gate_seq[lo:hi, k * hidden : (k + 1) * hidden].copy_(kept[k])
        if extra_seq is not None:
            extra_seq[lo:hi].copy_(kept[4])
        prev = (lo, hi)
    c_n = schedule.final(c_seq, reverse) if has_c else None
    saved = tuple(s for s in (gate_seq, extra_seq, c_seq, m_seq) if s is not None) if save else ()
    return ForwardResult(y, schedule.final(y, reverse), c_n, saved)


def backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse, params=None,
             resets=None):
    """Run the backward time loop; see :mod:`fastrnn.backends.base`."""
    with torch.no_grad():
        return _backward(cell, saved, w_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, params, resets)


def _backward(cell, saved, w_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, params, resets):
    saved = list(saved)
    gate_seq = saved.pop(0) if cell.saves_gates else None
    extra_seq = saved.pop(0) if cell.saves_extra else None
    c_seq = saved.pop(0) if cell.has_cell_state else None
    m_seq = saved.pop(0) if w_hr is not None else None
    gates = cell.gates
    hidden = w_hh.shape[0] // gates
    apart = cell.recurrent_apart
    h_prev_seq = schedule.previous(y, h0, reverse) if cell.backward_reads_h_prev else None
    c_prev_seq = schedule.previous(c_seq, c0, reverse) if c_seq is not None else None
    h_prev_seq = _zeroed(h_prev_seq, resets, 0, dy.shape[0])
    c_prev_seq = _zeroed(c_prev_seq, resets, 0, dy.shape[0])
    p = () if params is None else (params,)
    dparams = None if params is None else torch.zeros_like(params)
    h_seq = (y if w_hr is None else m_seq) if cell.backward_reads_h else None
    dxg = dy.new_empty(dy.shape[0], gates * hidden)
    dhg = dy.new_empty(dxg.shape) if apart else dxg
    dh_seq = dy.new_empty(dy.shape) if w_hr is not None else None
    dh = dh_n.clone()
    dc = dc_n.clone() if c_seq is not None else None
    none4 = [None] * MAX_GATES

    def rows(seq, lo, hi):
        return None if seq is None else seq[lo:hi]

    for t in reversed(schedule.order(reverse)):
        lo, bs = schedule.offsets[t], schedule.batch_sizes[t]
        hi = lo + bs
        dh_t = dh[:bs] + dy[lo:hi]  # everything that reaches this step's state
        if w_hr is None:
            dm = dh_t
        else:
            dh_seq[lo:hi].copy_(dh_t)
            dm = dh_t @ w_hr
        kept = none4 if gate_seq is None else list(gate_seq[lo:hi].split(hidden, 1)) + none4[gates:]
        grads = cell.torch_backward(
            dm, dc[:bs] if dc is not None else None, *kept, rows(extra_seq, lo, hi), rows(c_seq, lo, hi),
            rows(c_prev_seq, lo, hi), rows(h_seq, lo, hi), rows(h_prev_seq, lo, hi), *p,
        )
        if dparams is not None:
            dparams.add_(grads[2 * MAX_GATES + 2])
        for k in range(gates):
            dxg[lo:hi, k * hidden : (k + 1) * hidden].copy_(grads[k])
            if apart:
                dhg[lo:hi, k * hidden : (k + 1) * hidden].copy_(grads[MAX_GATES + k])
        torch.mm(dhg[lo:hi], w_hh, out=dh[:bs])
        if cell.direct_h_grad:
            dh[:bs].add_(grads[2 * MAX_GATES])
        if dc is not None:
            dc[:bs].copy_(grads[2 * MAX_GATES + 1])
        if resets is not None:
            # no gradient crosses into the state before a reset
            cut = resets[lo:hi].unsqueeze(1)
            dh[:bs].masked_fill_(cut, 0)
            if dc is not None:
                dc[:bs].masked_fill_(cut, 0)
    dw_hr = dh_seq.t() @ m_seq if w_hr is not None else None
    return BackwardResult(dxg, dhg, dh, dc, dw_hr, dparams)
