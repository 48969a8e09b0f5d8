"""Cooperative tier launcher: one launch per pass spread over the SMs
(:mod:`fastrnn.kernels.cooperative`): ``cdiv(H, 16)`` programs per group of batch rows
with a grid barrier per step. Where one tile of 16 or 64 rows per program fits the SMs
(``B <= 64 x floor(SMs / cdiv(H, 16))``), the register variant keeps ``c`` / ``dh`` /
``dc`` in registers; a larger batch runs the tiled variant (state in global buffers).

Both passes read a cell's per-unit parameters (``params``), reset flags (``resets``),
zoneout (``zoneout``: masks or eval probabilities) and the recurrent-dropout scale
(``recurrent_scale``) when the call has them (:data:`EXTRAS`).

A launch raises :class:`~fastrnn.kernels.cooperative.BarrierTimeout` when a grid barrier
timed out, and :class:`LaunchRefused` when the driver refused the grid (its programs
cannot all be resident at once: MPS SM limits, other contexts on the GPU) or the kernel
needs more shared memory than the device gives; the backend then reruns the call on the
step tier.
"""

from __future__ import annotations

import torch

from ...schedule import Schedule
from ..base import BackwardResult
from . import buffers


#: The optional inputs of :mod:`fastrnn.backends.base` these kernels read.
EXTRAS = ("params", "resets", "zoneout", "recurrent_scale")


class LaunchRefused(RuntimeError):
    """The device refused a cooperative launch (nothing ran)."""


def _kernels():
    from ...kernels import cooperative  # imports triton

    return cooperative


def sm_count(device: torch.device) -> int:
    """SMs of ``device``: a cooperative grid has at most one program per SM. Any other
    device (Triton's interpreter) is taken to be the reference GPU (an H100, 132 SMs)."""
    from ...kernels import fits

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return fits.REFERENCE_SMS


def configs(hidden: int, dtype: torch.dtype, device):
    """The cooperative launch configurations of this layer on ``device``: the tiled one,
    then its register variants (:func:`fastrnn.kernels.fits.cooperative_configs`), those
    whose shared memory fits the device's per block (:func:`.policy.device_limits`)."""
    from .policy import device_limits  # (policy imports this module)

    arch, shared = device_limits(torch.device(device))
    return _kernels().cooperative_configs(dtype, hidden, buffers.tf32(), arch, shared)


def launch_config(hidden: int, batch: int, dtype: torch.dtype, device):
    """The configuration a launch of ``batch`` rows uses: a register variant when one tile
    of rows per program fits the SMs, else the tiled one."""
    return _kernels().choose_config(configs(hidden, dtype, device), hidden, batch, sm_count(device))


#: Words of the errors a driver or Triton gives for a grid or block it will not launch.
_REFUSALS = ("cooperative launch", "too many blocks", "out of resource", "outofresources")


def _launch(launcher, cell, tensors, ints, cfg, device):
    try:
        launcher(cell, tensors, ints, cfg, buffers.tf32(), sm_count(device))
    except _kernels().BarrierTimeout:
        raise
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}".lower()
        if any(word in text for word in _REFUSALS):
            raise LaunchRefused(f"the cooperative launch was refused ({type(exc).__name__}: {exc})") from exc
        raise


def _loop_args(cell, hidden, params, resets, zoneout, recurrent_scale, prep, dummy_io) -> tuple[dict, dict]:
    """The kernels' pointers and runtime scalars of a call's optional inputs
    (:func:`buffers.loop_tensors`)."""
    t, scalars = buffers.loop_tensors(cell, hidden, params, resets, zoneout, recurrent_scale, dummy_io, prep)
    tensors = dict(resets_ptr=t["resets"], p_ptr=t["params"], scale_ptr=t["scale"], mask_h_ptr=t["mask_h"],
                   mask_c_ptr=t["mask_c"])
    return tensors, scalars


def forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule: Schedule, reverse: bool, save: bool, config=None,
            params=None, resets=None, zoneout=None, recurrent_scale=None):
    """The forward time loop on the cooperative tier (no ``proj_size``); ``config``: the
    launch configuration (None: the one :func:`launch_config` picks for this batch);
    ``params``, ``resets``, ``zoneout`` and ``recurrent_scale`` as in
    :mod:`fastrnn.backends.base`. With zoneout and ``save``, the cell's own new ``c`` /
    ``h`` are kept after the usual saved tensors (:mod:`.buffers`)."""
    coop = _kernels()
    prep = coop.aligned_input
    dtype, device = xg.dtype, xg.device
    acc = buffers.acc_dtype(dtype)
    hidden = w_hh.shape[0] // cell.gates
    n_rows, batch = xg.shape[0], schedule.batch
    cfg = config or launch_config(hidden, batch, dtype, device)
    has_c = cell.has_cell_state
    keep_c, keep_h = (save and keep for keep in buffers.zoned(cell, zoneout))
    save = buffers.saves(cell, save)

    xg, w_hh, h0 = prep(xg), prep(w_hh), prep(h0)
    dummy_io, dummy_acc = buffers.dummies(dtype, device)
    y = buffers.new((n_rows, hidden), dtype, device)
    gates, extra = buffers.save_buffers(cell, n_rows, hidden, dtype, device, save, dummy_io)
    bias = buffers.recurrent_bias(cell, b_hh, hidden, dtype, device, prep, dummy_io)
    if has_c:
        c0 = prep(c0.to(acc))  # (B, H): read in the accumulation dtype, like c itself
        # With save, every step's c; without, (B, H): the tiled kernel's state buffer, or
        # the final c the register kernel writes once.
        c_buf = buffers.new((n_rows, hidden) if save else (batch, hidden), acc, device)
    else:
        c0, c_buf = dummy_acc, dummy_acc
    uniform_b, sizes, offsets = buffers.step_tables(schedule, device)
    extras, loop_ints = _loop_args(cell, hidden, params, resets, zoneout, recurrent_scale, prep, dummy_io)
    cell_c = buffers.new((n_rows, hidden), acc, device) if keep_c else None
    cell_h = buffers.new((n_rows, hidden), dtype, device) if keep_h else None
    tensors = dict(
        xg_ptr=xg, w_hh_ptr=w_hh, b_hh_ptr=bias, h0_ptr=h0, c0_ptr=c0, y_ptr=y, c_ptr=c_buf,
        gates_ptr=gates, hn_ptr=extra, sizes_ptr=sizes, offsets_ptr=offsets,
        sync_ptr=torch.zeros(1 + schedule.steps, dtype=torch.int32, device=device), **extras,
        cell_c_ptr=dummy_acc if cell_c is None else cell_c, cell_h_ptr=dummy_io if cell_h is None else cell_h,
    )
    ints = dict(T=schedule.steps, B=batch, H=hidden, reverse=int(reverse), packed=int(uniform_b == 0),
                save=int(save), save_zoned=int(keep_c or keep_h), **loop_ints)
    _launch(coop.launch_forward, cell, tensors, ints, cfg, device)

    return buffers.forward_result(cell, save, y, c_buf, gates, extra, schedule, reverse, cell_c, cell_h)


def backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse: bool,
             config=None, params=None, resets=None, zoneout=None, recurrent_scale=None):
    """The backward time loop on the cooperative tier; ``config`` and the optional inputs as
    in :func:`forward`."""
    coop = _kernels()
    prep = coop.aligned_input
    dtype, device = y.dtype, y.device
    acc = buffers.acc_dtype(dtype)
    hidden = w_hh.shape[0] // cell.gates
    n_rows = y.shape[0]
    cfg = config or launch_config(hidden, dh_n.shape[0], dtype, device)
    has_c = cell.has_cell_state
    dummy_io, dummy_acc = buffers.dummies(dtype, device)

    w_hh, y, dy, h0 = prep(w_hh), prep(y), prep(dy), prep(h0)
    c0 = prep(c0.to(acc)) if has_c else dummy_acc
    gates, extra, c_seq = (prep(t) for t in buffers.unpack_saved(cell, saved, dummy_io, dummy_acc))
    cell_c, cell_h = buffers.unpack_zoneout(cell, saved, zoneout)
    dxg, dhg = buffers.grad_buffers(cell, n_rows, hidden, dtype, device)
    dh = dh_n.to(acc, copy=True).contiguous()  # dh_n in, dh0 out (state buffer of the tiled kernel)
    if has_c and dc_n is None:
        dc_n = torch.zeros(dh_n.shape[0], hidden, dtype=dtype, device=device)
    dc = dc_n.to(acc, copy=True).contiguous() if has_c else dummy_acc
    uniform_b, sizes, offsets = buffers.step_tables(schedule, device)
    extras, loop_ints = _loop_args(cell, hidden, params, resets, zoneout, recurrent_scale, prep, dummy_io)
    tensors = dict(
        w_hh_ptr=w_hh, dxg_ptr=dxg, dhg_ptr=dhg, dy_ptr=dy, dh_ptr=dh, dc_ptr=dc, gates_ptr=gates,
        c_ptr=c_seq, c0_ptr=c0, hn_ptr=extra, y_ptr=y, h0_ptr=h0, sizes_ptr=sizes, offsets_ptr=offsets,
        sync_ptr=torch.zeros(1 + schedule.steps, dtype=torch.int32, device=device), **extras,
        cell_c_ptr=dummy_acc if cell_c is None else prep(cell_c),
        cell_h_ptr=dummy_io if cell_h is None else prep(cell_h),
    )
    ints = dict(T=schedule.steps, B=dh.shape[0], H=hidden, reverse=int(reverse), packed=int(uniform_b == 0),
                **loop_ints)
    _launch(coop.launch_backward, cell, tensors, ints, cfg, device)
    return BackwardResult(dxg, dhg, dh.to(dtype), dc.to(dtype) if has_c else None, None)
