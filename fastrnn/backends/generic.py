"""The reference backend's time loop for any cell, driven by its torch pointwise functions.

:mod:`fastrnn.backends.reference` keeps hand-tuned loops for torch's four cells and
fastrnn's variants (peephole, LayerNorm) and runs every other :class:`~fastrnn.cells.Cell`
here, and every call with zoneout or recurrent dropout: one loop over the
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
state entering the rows it marks (and, in the backward, the gradient leaving them);
``recurrent_scale`` ``(B, H)`` multiplies the state where it enters ``W_hh`` (recurrent
dropout); ``zoneout`` (:class:`fastrnn.regularisers.Zoneout`) blends each step's new state
with the one it started from. With zoneout the saved ``c`` is the zoned-out cell state (what
the next step reads) and two more buffers may be kept: ``cell_c (N, H)``, the cell's own new
``c`` (its backward reads it), when ``c`` is zoned out, and ``cell_h (N, H)``, the cell's new
``h``, when ``h`` is zoned out and the cell's backward reads ``h``.
"""

from __future__ import annotations

import torch

from ..cells import MAX_GATES
from ..schedule import Schedule
from .base import BackwardResult, ForwardResult

name = "reference"

#: The most tensors :func:`forward` keeps (``fastrnn.ops.SAVED_SLOTS``).
MAX_SAVED = 4


def _zoned(cell, zoneout) -> tuple[bool, bool]:
    """``(keeps cell_c, keeps cell_h)`` for a call with ``zoneout`` (flags or a Zoneout)."""
    if zoneout is None:
        return False, False
    on_h, on_c = (zoneout.on_h, zoneout.on_c) if hasattr(zoneout, "on_h") else zoneout
    return bool(on_c and cell.has_cell_state), bool(on_h and cell.backward_reads_h)


def saved_layout(cell, rows, hidden, dtype, save, proj: bool = False, zoneout=None):
    """Shapes and dtypes of the ``saved`` tuple :func:`forward` returns (from sizes alone);
    ``zoneout``: ``(on_h, on_c)`` for a call with zoneout."""
    if not save:
        return []
    layout = []
    if cell.saves_gates:
        layout.append(((rows, cell.gates * hidden), dtype))
    if cell.saves_extra:
        layout.append(((rows, cell.extra_width * hidden), dtype))
    keep_c, keep_h = _zoned(cell, zoneout)
    layout += [((rows, hidden), dtype)] * (int(cell.has_cell_state) + int(keep_c) + int(keep_h) + int(proj))
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


def forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule: Schedule, reverse, save, params=None, resets=None,
            zoneout=None, recurrent_scale=None):
    """Run the forward time loop; see :mod:`fastrnn.backends.base`."""
    if zoneout is not None and w_hr is not None:
        raise ValueError("fastrnn: zoneout is not supported with proj_size")
    with torch.no_grad():
        return _forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule, reverse, save, params, resets, zoneout,
                        recurrent_scale)


def _forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule, reverse, save, params, resets, zoneout, rscale):
    rows, gates = xg.shape[0], cell.gates
    hidden = xg.shape[1] // gates
    has_c = cell.has_cell_state
    y = xg.new_empty(rows, h0.shape[1])
    c_seq = xg.new_empty(rows, hidden) if has_c else None
    gate_seq = xg.new_empty(rows, gates * hidden) if save and cell.saves_gates else None
    extra_seq = xg.new_empty(rows, cell.extra_width * hidden) if save and cell.saves_extra else None
    m_seq = xg.new_empty(rows, hidden) if w_hr is not None else None
    keep_c, keep_h = _zoned(cell, zoneout)
    cell_c = xg.new_empty(rows, hidden) if save and keep_c else None
    cell_h = xg.new_empty(rows, hidden) if save and keep_h else None
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
        h_in = h_prev if rscale is None else h_prev * rscale[:bs]
        rec = h_in @ w_hh_t if b_hh is None else torch.addmm(b_hh, h_in, w_hh_t)
        z = zero[:bs]
        h, c, *kept = cell.torch_forward(
            *_slots(xg[lo:hi], hidden, gates, z), *_slots(rec, hidden, gates, z), h_prev, c_prev, *p
        )
        if zoneout is not None:
            if cell_h is not None:
                cell_h[lo:hi].copy_(h)
            if cell_c is not None:
                cell_c[lo:hi].copy_(c)
            h = zoneout.blend("h", h_prev, h, lo, hi)
            c = zoneout.blend("c", c_prev, c, lo, hi) if has_c else None
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
    saved = tuple(s for s in (gate_seq, extra_seq, c_seq, cell_c, cell_h, m_seq) if s is not None) if save else ()
    return ForwardResult(y, schedule.final(y, reverse), c_n, saved)


def backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse, params=None,
             resets=None, zoneout=None, recurrent_scale=None):
    """Run the backward time loop; see :mod:`fastrnn.backends.base`."""
    with torch.no_grad():
        return _backward(cell, saved, w_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, params, resets,
                         zoneout, recurrent_scale)


def _backward(cell, saved, w_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, params, resets, zoneout,
              rscale):
    saved = list(saved)
    gate_seq = saved.pop(0) if cell.saves_gates else None
    extra_seq = saved.pop(0) if cell.saves_extra else None
    c_seq = saved.pop(0) if cell.has_cell_state else None
    keep_c, keep_h = _zoned(cell, zoneout)
    cell_c = saved.pop(0) if keep_c else c_seq
    cell_h = saved.pop(0) if keep_h else None
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
    h_seq = (cell_h if cell_h is not None else y if w_hr is None else m_seq) if cell.backward_reads_h else None
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
        dc_t = dc[:bs] if dc is not None else None
        keep_dh = keep_dc = None
        if zoneout is not None:  # the part that reaches the state the step started from
            dh_t, keep_dh = zoneout.split("h", dh_t, lo, hi)
            if dc_t is not None:
                dc_t, keep_dc = zoneout.split("c", dc_t, lo, hi)
        if w_hr is None:
            dm = dh_t
        else:
            dh_seq[lo:hi].copy_(dh_t)
            dm = dh_t @ w_hr
        kept = none4 if gate_seq is None else list(gate_seq[lo:hi].split(hidden, 1)) + none4[gates:]
        grads = cell.torch_backward(
            dm, dc_t, *kept, rows(extra_seq, lo, hi), rows(cell_c, lo, hi),
            rows(c_prev_seq, lo, hi), rows(h_seq, lo, hi), rows(h_prev_seq, lo, hi), *p,
        )
        if dparams is not None:
            dparams.add_(grads[2 * MAX_GATES + 2])
        for k in range(gates):
            dxg[lo:hi, k * hidden : (k + 1) * hidden].copy_(grads[k])
            if apart:
                dhg[lo:hi, k * hidden : (k + 1) * hidden].copy_(grads[MAX_GATES + k])
        torch.mm(dhg[lo:hi], w_hh, out=dh[:bs])
        if rscale is not None:
            dh[:bs].mul_(rscale[:bs])
        if cell.direct_h_grad:
            dh[:bs].add_(grads[2 * MAX_GATES])
        if keep_dh is not None:
            dh[:bs].add_(keep_dh)
        if dc is not None:
            dc[:bs].copy_(grads[2 * MAX_GATES + 1])
            if keep_dc is not None:
                dc[:bs].add_(keep_dc)
        if resets is not None:
            # no gradient crosses into the state before a reset
            cut = resets[lo:hi].unsqueeze(1)
            dh[:bs].masked_fill_(cut, 0)
            if dc is not None:
                dc[:bs].masked_fill_(cut, 0)
    dw_hr = dh_seq.t() @ m_seq if w_hr is not None else None
    return BackwardResult(dxg, dhg, dh, dc, dw_hr, dparams)
