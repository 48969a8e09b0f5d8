"""Resident tier launcher: the whole time loop of a pass in one launch
(:mod:`fastrnn.kernels.resident`; ``W_hh`` fits one SM, no ``proj_size``: see
:mod:`fastrnn.kernels.fits`). ``h_n``, ``c_n``, ``dh0`` and ``dc0`` come out of the kernels."""

from __future__ import annotations

import torch

from ...schedule import Schedule
from ..base import BackwardResult, ForwardResult
from . import buffers

#: The optional inputs these kernels read (the backend passes them only to such a launcher).
EXTRAS = ("params", "resets", "zoneout", "recurrent_scale")


def _kernels():
    from ...kernels import resident  # imports triton

    return resident


def fit_for(cell, hidden: int, dtype):
    """The block configuration the resident kernels use for this layer."""
    from ...kernels import fits

    return fits.resident_fit(cell.name, dtype, hidden)


def _loop_args(cell, hidden, params, resets, zoneout, recurrent_scale, dummy_io, prep) -> tuple[dict, dict]:
    """The resident kernels' pointers and runtime scalars of a call's optional inputs
    (:func:`buffers.loop_tensors`; the cell's own new c / h buffers are the caller's)."""
    t, scalars = buffers.loop_tensors(cell, hidden, params, resets, zoneout, recurrent_scale, dummy_io, prep)
    tensors = dict(p_ptr=t["params"], resets_ptr=t["resets"], scale_ptr=t["scale"], mask_h_ptr=t["mask_h"],
                   mask_c_ptr=t["mask_c"])
    return tensors, scalars


def refuses_extras(cell, hidden: int, dtype, wants, device=None) -> str | None:
    """Why this tier cannot run a call of ``cell`` at this size and dtype with the optional
    inputs ``wants`` on ``device`` although :data:`EXTRAS` lists them (None when it can):
    entries whose kernels with zoneout / recurrent dropout do not compile clean
    (:data:`fastrnn.kernels.fits.RESIDENT_UNREGULARISED`; on the device's arch,
    :data:`~fastrnn.kernels.fits.RESIDENT_ARCH_MISSES`) run such calls on the step tier."""
    from ...kernels import fits
    from .policy import device_limits

    arch = None if device is None else device_limits(torch.device(device))[0]
    if not {"zoneout", "recurrent_scale"} & set(wants) or fits.resident_regularised(cell, dtype, hidden, arch):
        return None
    return (f"the resident tier has no kernels with zoneout or recurrent dropout for {cell.name} "
            f"{fits.dtype_name(dtype)} with hidden size {hidden}")


def _refuse_projection(w_hr, zoneout) -> None:
    if zoneout is not None and w_hr is not None:
        raise ValueError("fastrnn: zoneout is not supported with proj_size")


def forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule: Schedule, reverse: bool, save: bool, config=None,
            params=None, resets=None, zoneout=None, recurrent_scale=None):
    """The forward time loop on the resident tier (``config``: the block configuration,
    None for :func:`fit_for`'s; ``params`` / ``resets`` / ``zoneout`` / ``recurrent_scale``:
    see :mod:`fastrnn.backends.base`)."""
    _refuse_projection(w_hr, zoneout)
    rs = _kernels()
    prep = rs.aligned_input
    dtype, device = xg.dtype, xg.device
    acc = buffers.acc_dtype(dtype)
    hidden = w_hh.shape[1]
    n_rows, batch = xg.shape[0], schedule.batch
    has_c = cell.has_cell_state
    keep_c, keep_h = buffers.zoned(cell, zoneout) if save else (False, False)
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
    optional, loop_ints = _loop_args(cell, hidden, params, resets, zoneout, recurrent_scale, dummy_io, prep)
    # the cell's own new c / h of a zoned-out state, kept for the backward
    cell_c = buffers.new((n_rows, hidden), acc, device) if keep_c else None
    cell_h = buffers.new((n_rows, hidden), dtype, device) if keep_h else None
    tensors.update(optional, cell_c_ptr=dummy_acc if cell_c is None else cell_c,
                   cell_h_ptr=dummy_io if cell_h is None else cell_h)
    ints = dict(T=schedule.steps, B=batch, uniform_b=uniform_b, reverse=int(reverse), save=int(save), H=hidden,
                save_zoned=int(keep_c or keep_h), **loop_ints)
    rs.launch_forward(cell, tensors, ints, fit=fit, tf32=buffers.tf32())
    saved = buffers.saved(cell, save, gates, c_seq, extra, cell_c, cell_h)
    return ForwardResult(y, h_n, c_n if has_c else None, saved)


def backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse: bool,
             config=None, params=None, resets=None, zoneout=None, recurrent_scale=None):
    """The backward time loop on the resident tier (the cell reads its own new c / h: the
    saved ones of a zoned-out state, else ``c_seq`` / ``y``)."""
    from .policy import device_limits

    _refuse_projection(w_hr, zoneout)
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
    optional, loop_ints = _loop_args(cell, hidden, params, resets, zoneout, recurrent_scale, dummy_io, prep)
    cell_c, cell_h = buffers.unpack_zoneout(cell, saved, zoneout)
    tensors.update(optional, cell_c_ptr=tensors["c_seq_ptr"] if cell_c is None else prep(cell_c),
                   cell_h_ptr=tensors["y_ptr"] if cell_h is None else prep(cell_h))
    ints = dict(T=schedule.steps, B=batch, uniform_b=uniform_b, reverse=int(reverse), H=hidden, **loop_ints)
    rs.launch_backward(cell, tensors, ints, fit=fit, tf32=buffers.tf32(), limits=device_limits(device))
    return BackwardResult(dxg, dhg, dh0, dc0 if has_c else None, None)
