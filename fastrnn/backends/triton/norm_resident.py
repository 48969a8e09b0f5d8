"""LayerNorm-LSTM / -GRU on the resident tier: the whole time loop of a pass in one launch
(:mod:`fastrnn.kernels.resident_norm`), where an entry of
:data:`fastrnn.kernels.fits.RESIDENT_NORM` fits the layer and the device; else the step
tier's LayerNorm path (:mod:`.norm`: a torch GEMM and a row kernel per step) runs it.

The saved tuple is the step path's (:func:`.norm.saved_layout`), and the LayerNorm gains'
gradients are reduced by the same function after the loop, so either path's backward reads
either path's forward.
"""

from __future__ import annotations

import torch

from ...schedule import Schedule
from ..base import BackwardResult, ForwardResult
from . import buffers, policy

#: The optional inputs that need ``REGULARISED`` kernels.
REGULARISERS = ("zoneout", "recurrent_scale")


def _kernels():
    from ...kernels import resident_norm  # imports triton

    return resident_norm


def _family(cell) -> str:
    return "LayerNormLSTM" if cell.has_cell_state else "LayerNormGRU"


def refusal(cell, hidden: int, dtype, device, schedule: Schedule) -> str | None:
    """Why the resident tier cannot run this LayerNorm layer at all (None when it can):
    no entry for its size and dtype, the device's shared memory, or a batch the kernels'
    32-bit in-step offsets cannot address (or an empty one)."""
    from ...kernels import fits

    device = torch.device(device)
    arch, shared = policy.device_limits(device)
    reason = fits.resident_norm_refusal(_family(cell), hidden, dtype, arch, shared, device.type == "cuda")
    if reason is None and not 0 < schedule.batch * cell.gates * hidden < policy.RESIDENT_MAX_OFFSET:
        reason = f"a batch of {schedule.batch} sequences is outside what its 32-bit offsets address"
    return reason


def variant(cell, hidden: int, dtype, device) -> str:
    """The entry a launch of this layer compiles (the first-use check's key)."""
    fit = _fit(cell, hidden, dtype, device)
    return "no entry" if fit is None else f"BLOCK_H {fit.forward.block_h}"


def refuses_regularisers(cell, hidden: int, dtype, device, wants) -> str | None:
    """Why this tier cannot run a call with the optional inputs ``wants`` (None when it can):
    entries of :data:`fastrnn.kernels.fits.RESIDENT_NORM_UNREGULARISED` have no kernels with
    zoneout or recurrent dropout."""
    from ...kernels import fits

    on_gpu = torch.device(device).type == "cuda"
    arch = policy.device_limits(torch.device(device))[0]
    if not set(REGULARISERS) & set(wants) or fits.resident_norm_regularised(_family(cell), dtype, hidden, on_gpu,
                                                                            arch):
        return None
    return (f"the resident tier has no kernels with zoneout or recurrent dropout for {cell.name} "
            f"{fits.dtype_name(dtype)} with hidden size {hidden}")


def chosen(cell, hidden: int, dtype, device, schedule: Schedule, wants) -> bool:
    """Whether this call runs here: ``FASTRNN_TIER`` unset / ``auto`` or ``resident``, an
    entry that fits (a forced ``resident`` that cannot run the layer is an error), and
    kernels for the call's regularisers (without them the call goes to the step path, as
    the resident tier's other cells do)."""
    requested = policy.requested_tier()
    if requested not in ("auto", "resident"):
        return False
    reason = refusal(cell, hidden, dtype, device, schedule)
    if reason is not None:
        if requested == "resident" and schedule.batch > 0:
            raise RuntimeError(f"fastrnn: {policy.TIER_ENV}=resident cannot run {cell.name} with hidden_size={hidden}, "
                               f"{dtype}: {reason}")
        return False
    return refuses_regularisers(cell, hidden, dtype, device, wants) is None


def _fit(cell, hidden: int, dtype, device):
    from ...kernels import fits

    return fits.resident_norm_fit(_family(cell), dtype, hidden, torch.device(device).type == "cuda")


def _optional(cell, hidden, params, resets, zoneout, recurrent_scale, dummy_io, prep) -> tuple[dict, dict]:
    t, scalars = buffers.loop_tensors(cell, hidden, params, resets, zoneout, recurrent_scale, dummy_io, prep)
    return dict(p_ptr=t["params"], resets_ptr=t["resets"], scale_ptr=t["scale"], mask_h_ptr=t["mask_h"],
                mask_c_ptr=t["mask_c"]), scalars


def forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule: Schedule, reverse: bool, save: bool, params=None,
            resets=None, zoneout=None, recurrent_scale=None):
    """The forward time loop in one launch; see :mod:`fastrnn.backends.base`."""
    from ...kernels.launches import aligned_input as prep

    from .norm import _eps_tensor, cell_eps

    ks = _kernels()
    dtype, device = xg.dtype, xg.device
    acc = buffers.acc_dtype(dtype)
    has_c = cell.has_cell_state
    hidden = w_hh.shape[1]
    width = cell.gates * hidden
    n_rows, batch = xg.shape[0], schedule.batch
    keep_c = buffers.zoned(cell, zoneout)[0] if save else False
    dummy_io, dummy_acc = buffers.dummies(dtype, device)
    y = buffers.new((n_rows, hidden), dtype, device)
    h_n = buffers.new((batch, hidden), dtype, device)
    c_n = buffers.new((batch, hidden), dtype, device) if has_c else dummy_io
    gates = buffers.new((n_rows, width), dtype, device) if save else dummy_io
    r = buffers.new((n_rows, width), dtype, device) if save else dummy_io
    c_seq = buffers.new((n_rows, hidden), acc, device) if (save and has_c) else dummy_acc
    cell_c = buffers.new((n_rows, hidden), acc, device) if keep_c else dummy_acc
    bias = prep(b_hh) if b_hh is not None else torch.zeros(width, dtype=dtype, device=device)
    uniform_b, sizes, offsets = buffers.step_tables(schedule, device)
    optional, scalars = _optional(cell, hidden, params, resets, zoneout, recurrent_scale, dummy_io, prep)
    tensors = dict(
        xg_ptr=prep(xg), w_hh_ptr=prep(w_hh), b_hh_ptr=bias, h0_ptr=prep(h0), c0_ptr=prep(c0) if has_c else dummy_io,
        y_ptr=y, h_n_ptr=h_n, c_n_ptr=c_n, gates_ptr=gates, r_ptr=r, c_seq_ptr=c_seq, cell_c_ptr=cell_c,
        sizes_ptr=sizes, offsets_ptr=offsets, eps_ptr=_eps_tensor(cell_eps(cell), acc, device), **optional,
    )
    ints = dict(T=schedule.steps, B=batch, uniform_b=uniform_b, reverse=int(reverse), save=int(save), H=hidden,
                **scalars)
    ks.launch("forward", cell, tensors, ints, fit=_fit(cell, hidden, dtype, device),
              tf32=buffers.tf32())
    saved = ()
    if save:
        saved = (gates, r) + ((c_seq,) if has_c else ()) + ((cell_c,) if keep_c else ())
    return ForwardResult(y, h_n, c_n if has_c else None, saved)


def backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse: bool,
             params=None, resets=None, zoneout=None, recurrent_scale=None):
    """The backward time loop in one launch; returns the LayerNorm gains' and biases'
    gradient as ``dparams`` (:func:`.norm._param_grad`)."""
    from ...kernels.launches import aligned_input as prep

    from .norm import _eps_tensor, _param_grad, cell_eps

    ks = _kernels()
    dtype, device = y.dtype, y.device
    acc = buffers.acc_dtype(dtype)
    has_c = cell.has_cell_state
    hidden = w_hh.shape[1]
    width = cell.gates * hidden
    n_rows, batch = y.shape[0], schedule.batch
    eps = cell_eps(cell)
    dummy_io, dummy_acc = buffers.dummies(dtype, device)
    keep_c = buffers.zoned(cell, zoneout)[0]
    gates, r = saved[0], saved[1]
    c_seq = saved[2] if has_c else dummy_acc
    c_cell = saved[3] if keep_c else c_seq
    dxg = buffers.new((n_rows, width), dtype, device)
    dhg = buffers.new((n_rows, width), dtype, device)
    dn = buffers.new((n_rows, hidden), acc, device) if has_c else dummy_acc
    dh0 = buffers.new((batch, hidden), dtype, device)
    dc0 = buffers.new((batch, hidden), dtype, device) if has_c else dummy_io
    if has_c and dc_n is None:
        dc_n = torch.zeros(batch, hidden, dtype=dtype, device=device)
    uniform_b, sizes, offsets = buffers.step_tables(schedule, device)
    optional, scalars = _optional(cell, hidden, params, resets, zoneout, recurrent_scale, dummy_io, prep)
    tensors = dict(
        w_hh_ptr=prep(w_hh), h0_ptr=prep(h0), c0_ptr=prep(c0) if has_c else dummy_io, y_ptr=prep(y), dy_ptr=prep(dy),
        dh_n_ptr=prep(dh_n), dc_n_ptr=prep(dc_n) if has_c else dummy_io, gates_ptr=prep(gates), r_ptr=prep(r),
        c_seq_ptr=prep(c_seq), cell_c_ptr=prep(c_cell), dxg_ptr=dxg, dhg_ptr=dhg, dn_ptr=dn, dh0_ptr=dh0,
        dc0_ptr=dc0, sizes_ptr=sizes, offsets_ptr=offsets, eps_ptr=_eps_tensor(eps, acc, device), **optional,
    )
    ints = dict(T=schedule.steps, B=batch, uniform_b=uniform_b, reverse=int(reverse), H=hidden, **scalars)
    ks.launch("backward", cell, tensors, ints, fit=_fit(cell, hidden, dtype, device),
              tf32=buffers.tf32(), limits=policy.device_limits(device))
    dparams = None
    if params is not None:
        dparams = _param_grad(cell, eps, hidden, gates, r, c_cell, dxg, dn, acc).to(params.dtype)
    return BackwardResult(dxg, dhg, dh0, dc0 if has_c else None, None, dparams)
