"""Step tier launcher: one kernel launch per timestep (:mod:`fastrnn.kernels.recurrent_step`).

Forward: each launch fuses the recurrent GEMM, the input projection, the cell and the
state update; ``h_t`` is written straight into the output rows of its step. Backward:
each launch fuses the recurrent GEMM of one step with the pointwise cell backward of the
step before it; the last ``dh0 = dr_first @ W_hh`` is a torch GEMM.

LSTM with ``proj_size`` runs only here: the projection ``h_t = m_t @ W_hr^T`` is a torch
``mm`` per step after the step kernel (which writes ``m_t`` to a ``(B, H)`` buffer), and
in backward ``dh`` / ``dm = dh @ W_hr`` are torch ops per step before a pointwise step
kernel; the launch count per step stays one, but each step also runs these torch ops.

Every call can run here: a cell's per-unit parameters (``params``), reset flags
(``resets``), zoneout (``zoneout``: masks in training, probabilities in eval) and the
recurrent-dropout scale (``recurrent_scale``) are read by the step kernels (:data:`EXTRAS`),
and the other tiers send the calls they cannot run to this one.
"""

from __future__ import annotations

import torch

from ...schedule import Schedule
from ..base import BackwardResult
from . import buffers, policy


#: The optional inputs this tier's kernels read (see :mod:`fastrnn.backends.triton`).
EXTRAS = ("params", "resets", "zoneout", "recurrent_scale")


def _loop_args(cell, hidden, params, resets, zoneout, recurrent_scale, dummy_io, dummy_acc, prep, cell_c=None,
               cell_h=None) -> tuple[dict, dict]:
    """The step kernels' pointers and runtime scalars of a call's optional inputs
    (:func:`buffers.loop_tensors`), with the cell's own new c / h buffers of a zoned-out state."""
    t, scalars = buffers.loop_tensors(cell, hidden, params, resets, zoneout, recurrent_scale, dummy_io, prep)
    tensors = dict(p_ptr=t["params"], rst_ptr=t["resets"], scale_ptr=t["scale"], mask_h_ptr=t["mask_h"],
                   mask_c_ptr=t["mask_c"], cell_c_ptr=dummy_acc if cell_c is None else cell_c,
                   cell_h_ptr=dummy_io if cell_h is None else cell_h)
    return tensors, scalars


def _refuse_projection(w_hr, zoneout) -> None:
    if zoneout is not None and w_hr is not None:
        raise ValueError("fastrnn: zoneout is not supported with proj_size")


def _kernels():
    from ...kernels import recurrent_step  # imports triton

    return recurrent_step


def forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule: Schedule, reverse: bool, save: bool, config=None,
            params=None, resets=None, zoneout=None, recurrent_scale=None):
    """The forward time loop on the step tier (``config`` is unused: the block sizes follow
    ``H``); ``params`` / ``resets`` / ``zoneout`` / ``recurrent_scale`` as in
    :mod:`fastrnn.backends.base`."""
    _refuse_projection(w_hr, zoneout)
    ks = _kernels()
    prep = ks.aligned_input
    dtype, device = xg.dtype, xg.device
    acc = buffers.acc_dtype(dtype)
    hidden, state = w_hh.shape[0] // cell.gates, w_hh.shape[1]
    n_rows, batch = xg.shape[0], schedule.batch
    has_c = cell.has_cell_state
    keep_c, keep_h = buffers.zoned(cell, zoneout) if save else (False, False)
    save = buffers.saves(cell, save)
    proj = w_hr is not None

    xg, w_hh, h0 = prep(xg), prep(w_hh), prep(h0)
    dummy_io, dummy_acc = buffers.dummies(dtype, device)
    y = buffers.new((n_rows, state), dtype, device)
    gates, extra = buffers.save_buffers(cell, n_rows, hidden, dtype, device, save, dummy_io)
    bias = buffers.recurrent_bias(cell, b_hh, hidden, dtype, device, prep, dummy_io)
    if has_c:
        c0 = prep(c0)
        # With save, every step's c is kept; without, one (B, H) buffer updated in place
        # (rows < n_prev read it, new rows read c0; each row is written by its own program).
        c_buf = buffers.new((n_rows, hidden) if save else (batch, hidden), acc, device)
    else:
        c0, c_buf = dummy_io, dummy_acc
    m_buf = buffers.new((batch, hidden), dtype, device) if proj else None
    w_hr_t = w_hr.t() if proj else None

    tensors = dict(
        xg_ptr=xg, w_hh_ptr=w_hh, b_hh_ptr=bias, h_seq_ptr=y, h0_ptr=h0, out_ptr=m_buf if proj else y,
        c_prev_ptr=c_buf, c_init_ptr=c0, c_out_ptr=c_buf, gates_ptr=gates, extra_ptr=extra,
    )
    # the cell's own new c / h of a zoned-out state, kept for the backward
    cell_c = buffers.new((n_rows, hidden), acc, device) if keep_c else None
    cell_h = buffers.new((n_rows, hidden), dtype, device) if keep_h else None
    extras, loop_ints = _loop_args(cell, hidden, params, resets, zoneout, recurrent_scale, dummy_io, dummy_acc, prep,
                                   cell_c, cell_h)
    tensors.update(extras)
    loop_ints["save_zoned"] = int(keep_c or keep_h)
    prev_off, n_prev = 0, 0
    launch = ks.forward_stepper(cell, tensors, hidden=hidden, save=save, tf32=buffers.tf32(),
                                arch=policy.device_limits(device)[0])
    for t in schedule.order(reverse):
        off, bs = schedule.offsets[t], schedule.batch_sizes[t]
        ints = dict(
            off=off, bs=bs, prev_off=prev_off, n_prev=n_prev, out_off=0 if proj else off,
            c_prev_off=prev_off if save else 0, c_out_off=off if save else 0, H=hidden, P=state,
            **loop_ints,
        )
        launch(ints)
        if proj:
            torch.mm(m_buf[:bs], w_hr_t, out=y[off : off + bs])
        prev_off, n_prev = off, bs

    return buffers.forward_result(cell, save, y, c_buf, gates, extra, schedule, reverse, cell_c, cell_h)


def backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse: bool,
             config=None, params=None, resets=None, zoneout=None, recurrent_scale=None):
    """The backward time loop on the step tier (no gradient crosses a reset: see the kernels)."""
    _refuse_projection(w_hr, zoneout)
    ks = _kernels()
    prep = ks.aligned_input
    dtype, device = y.dtype, y.device
    acc = buffers.acc_dtype(dtype)
    gates_n = cell.gates
    hidden, state = w_hh.shape[0] // gates_n, w_hh.shape[1]
    n_rows = y.shape[0]
    has_c = cell.has_cell_state
    proj = w_hr is not None
    dummy_io, dummy_acc = buffers.dummies(dtype, device)

    w_hh, y, dy, h0 = prep(w_hh), prep(y), prep(dy), prep(h0)
    # Unused pointer arguments get dummies of the dtype the kernel signature expects.
    gates, extra, c_seq = buffers.unpack_saved(cell, saved, dummy_io, dummy_acc)
    c0 = prep(c0) if has_c else dummy_io

    dxg, dhg = buffers.grad_buffers(cell, n_rows, hidden, dtype, device)
    dh = dh_n.to(acc, copy=True).contiguous()  # (B, P) state buffer, becomes dh0
    dc = dc_n.to(acc, copy=True).contiguous() if has_c else dummy_acc
    dm = buffers.new((dh.shape[0], hidden), acc, device) if proj else dummy_acc
    dh_seq = buffers.new((n_rows, state), acc, device) if proj else None
    w_hh_acc = w_hh.to(acc)
    w_hr_acc = w_hr.to(acc) if proj else None

    tensors = dict(
        dr_ptr=dhg, w_hh_ptr=w_hh, dxg_ptr=dxg, dhg_ptr=dhg, dy_ptr=dy, dh_ptr=dh, dc_ptr=dc, dm_ptr=dm,
        gates_ptr=gates, c_seq_ptr=c_seq, c0_ptr=c0, extra_ptr=extra, h_seq_ptr=y, h0_ptr=h0,
    )
    cell_c, cell_h = buffers.unpack_zoneout(cell, saved, zoneout)
    extras, loop_ints = _loop_args(cell, hidden, params, resets, zoneout, recurrent_scale, dummy_io, dummy_acc, prep,
                                   None if cell_c is None else prep(cell_c), None if cell_h is None else prep(cell_h))
    tensors.update(extras)
    scale = None if recurrent_scale is None else recurrent_scale.to(acc)
    order = list(schedule.order(reverse))  # forward processing order
    offsets, sizes = schedule.offsets, schedule.batch_sizes
    launch = ks.backward_stepper(cell, tensors, hidden=hidden, dm_given=proj, tf32=buffers.tf32(),
                                 arch=policy.device_limits(device)[0])
    for j in range(len(order) - 1, -1, -1):
        q = order[j]  # the step whose gate backward runs now
        s = order[j + 1] if j + 1 < len(order) else None  # the step processed after q
        p = order[j - 1] if j > 0 else None  # the step processed before q
        q_off, q_bs = offsets[q], sizes[q]
        s_off, s_bs = (offsets[s], sizes[s]) if s is not None else (0, 0)
        if proj:
            # dh (P wide) and dm = dh @ W_hr (H wide) are torch ops here; the kernel is
            # then pointwise only (DM_GIVEN).
            if s is not None:
                dh[:s_bs] = dxg[s_off : s_off + s_bs].to(acc) @ w_hh_acc
                if scale is not None:
                    dh[:s_bs] *= scale[:s_bs]
                if resets is not None:
                    dh[:s_bs].masked_fill_(resets[s_off : s_off + s_bs, None], 0)
            dh[:q_bs] += dy[q_off : q_off + q_bs]
            dh_seq[q_off : q_off + q_bs] = dh[:q_bs]
            torch.mm(dh[:q_bs], w_hr_acc, out=dm[:q_bs])
        ints = dict(
            s_off=s_off, s_bs=s_bs, k_len=0 if (s is None or proj) else gates_n * hidden,
            q_off=q_off, q_bs=q_bs, q_prev_off=offsets[p] if p is not None else 0,
            q_n_prev=sizes[p] if p is not None else 0, H=hidden, P=state, **loop_ints,
        )
        launch(ints)

    # dh0: the recurrent GEMM of the first processed step (rows of sequences that started
    # later in a packed reverse pass were finished by the kernels already), times the
    # recurrent-dropout scale, plus what the last launch left in its rows (dh_direct, the
    # zoned-out part of dh).
    lo, bs = offsets[order[0]], sizes[order[0]]
    carried = cell.direct_h_grad or (loop_ints["zoneout_h"] != 0 and not proj)
    direct = dh[:bs].clone() if carried else None
    dh[:bs] = dhg[lo : lo + bs].to(acc) @ w_hh_acc
    if scale is not None:
        dh[:bs] *= scale[:bs]
    if direct is not None:
        dh[:bs] += direct
    if resets is not None:  # sequences whose first step is a reset: no gradient reaches h0
        dh[:bs].masked_fill_(resets[lo : lo + bs, None], 0)

    dw_hr = None
    if proj:
        # m = o * tanh(c): the projection exists only for torch's LSTM (gate o is slot 3)
        o = gates[:, 3 * hidden :].to(acc)
        dw_hr = (dh_seq.t() @ (o * torch.tanh(c_seq))).to(dtype)
    return BackwardResult(dxg, dhg, dh.to(dtype), dc.to(dtype) if has_c else None, dw_hr)
