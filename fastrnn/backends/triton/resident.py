"""Resident tier launcher: the whole time loop of a pass in one launch
(:mod:`fastrnn.kernels.resident`; ``W_hh`` fits one SM, no ``proj_size``: see
:mod:`fastrnn.kernels.fits`). ``h_n``, ``c_n``, ``dh0`` and ``dc0`` come out of the kernels."""

from __future__ import annotations

import torch

from ...schedule import Schedule
from ..base import BackwardResult, ForwardResult
from . import buffers

#: The optional inputs these kernels read (the backend passes them only to such a launcher).
EXTRAS = ("params", "resets")


def _kernels():
    from ...kernels import resident  # imports triton

    return resident


def fit_for(cell, hidden: int, dtype):
    """The block configuration the resident kernels use for this layer."""
    from ...kernels import fits

    return fits.resident_fit(cell.name, dtype, hidden)


def _extras(cell, params, resets, hidden: int, dummy_io, prep) -> tuple[dict, int]:
    """``(pointer tensors, has_resets)`` of the optional inputs this tier reads
    (:func:`buffers.loop_tensors`)."""
    t, scalars = buffers.loop_tensors(cell, hidden, params, resets, None, None, dummy_io, prep)
    return dict(p_ptr=t["params"], resets_ptr=t["resets"]), scalars["has_resets"]

def forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule: Schedule, reverse: bool, save: bool, config=None,
            params=None, resets=None):
    """The forward time loop on the resident tier (``config``: the block configuration,
    None for :func:`fit_for`'s; ``params`` / ``resets``: see :mod:`fastrnn.backends.base`)."""
    rs = _kernels()
    prep = rs.aligned_input
    dtype, device = xg.dtype, xg.device
    acc = buffers.acc_dtype(dtype)
    hidden = w_hh.shape[1]
    n_rows, batch = xg.shape[0], schedule.batch
    has_c = cell.has_cell_state
    save = buffers.saves(cell, save)
    fit = config or fit_for(cell, hidden, dtype)
    dummy_io, dummy_acc = buffers.dummies(dtype, device)

    y = buffers.new((n_rows, hidden), dtype, device)
    h_n = buffers.new((batch, hidden), dtype, device)
    c_n = buffers.new((batch, hidden), dtype, device) if has_c else dummy_io
    gates, extra = buffers.save_buffers(cell, n_rows, hidden, dtype, device, save, dummy_io)
    c_seq = buffers.new((n_rows, hidden), acc, device) if (save and has_c) else dummy_acc
    bias = buffers.recurrent_bias(cell, b_hh, hidden, dtype, device, prep, dummy_io)
    uniform_b, sizes, offsets = buffers.step_tables(schedule, device)
    tensors = dict(
        xg_ptr=prep(xg), w_hh_ptr=prep(w_hh), b_hh_ptr=bias, h0_ptr=prep(h0),
        c0_ptr=prep(c0) if has_c else dummy_io, y_ptr=y, h_n_ptr=h_n, c_n_ptr=c_n, gates_ptr=gates,
        c_seq_ptr=c_seq, hn_seq_ptr=extra, sizes_ptr=sizes, offsets_ptr=offsets,
    )
    optional, has_resets = _extras(cell, params, resets, hidden, dummy_io, prep)
    tensors.update(optional)
    ints = dict(T=schedule.steps, B=batch, uniform_b=uniform_b, reverse=int(reverse), save=int(save), H=hidden,
                has_resets=has_resets)
    rs.launch_forward(cell, tensors, ints, fit=fit, tf32=buffers.tf32())
    saved = buffers.saved(cell, save, gates, c_seq, extra)
    return ForwardResult(y, h_n, c_n if has_c else None, saved)


def backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse: bool,
             config=None, params=None, resets=None):
    """The backward time loop on the resident tier."""
    rs = _kernels()
    prep = rs.aligned_input
    dtype, device = y.dtype, y.device
    hidden = w_hh.shape[1]
    n_rows, batch = y.shape[0], schedule.batch
    has_c = cell.has_cell_state
    fit = config or fit_for(cell, hidden, dtype)
    dummy_io, dummy_acc = buffers.dummies(dtype, device)
    gates, extra, c_seq = buffers.unpack_saved(cell, saved, dummy_io, dummy_acc)

    dxg, dhg = buffers.grad_buffers(cell, n_rows, hidden, dtype, device)
    dh0 = buffers.new((batch, hidden), dtype, device)
    dc0 = buffers.new((batch, hidden), dtype, device) if has_c else dummy_io
    if has_c and dc_n is None:
        dc_n = torch.zeros(batch, hidden, dtype=dtype, device=device)
    uniform_b, sizes, offsets = buffers.step_tables(schedule, device)
    tensors = dict(
        w_hh_ptr=prep(w_hh), h0_ptr=prep(h0), c0_ptr=prep(c0) if has_c else dummy_io, y_ptr=prep(y),
        dy_ptr=prep(dy), dh_n_ptr=prep(dh_n), dc_n_ptr=prep(dc_n) if has_c else dummy_io,
        gates_ptr=prep(gates), c_seq_ptr=prep(c_seq), hn_seq_ptr=prep(extra), dxg_ptr=dxg, dhg_ptr=dhg,
        dh0_ptr=dh0, dc0_ptr=dc0, sizes_ptr=sizes, offsets_ptr=offsets,
    )
    optional, has_resets = _extras(cell, params, resets, hidden, dummy_io, prep)
    tensors.update(optional)
    ints = dict(T=schedule.steps, B=batch, uniform_b=uniform_b, reverse=int(reverse), H=hidden, has_resets=has_resets)
    rs.launch_backward(cell, tensors, ints, fit=fit, tf32=buffers.tf32())
    return BackwardResult(dxg, dhg, dh0, dc0 if has_c else None, None)
