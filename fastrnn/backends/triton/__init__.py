"""Triton backend: the time loops of :mod:`fastrnn.backends.base` as Triton kernels.

Three kernel tiers run a layer-direction; each has a launcher module here with the same
``forward`` / ``backward`` signature:

- :mod:`.step` (any size): one launch per timestep;
- :mod:`.resident` (``W_hh`` fits one SM): one launch per pass, the time loop inside;
- :mod:`.cooperative` (larger ``H`` on a GPU): one launch per pass spread over the SMs,
  a grid barrier per step.

:mod:`.policy` picks the tier (``FASTRNN_TIER`` forces one), :mod:`.selfcheck` checks a
persistent tier against the step tier at first use and handles a cooperative launch that
fails, :mod:`.buffers` holds what every launcher allocates and the ``saved`` layout. The
kernels themselves are in :mod:`fastrnn.kernels`; every launch runs under a device guard
of its tensors' device.
"""

from __future__ import annotations

import torch

from ...schedule import Schedule
from ..base import loop_inputs
from . import buffers, cooperative, norm, policy, resident, selfcheck, step
from .policy import TIERS, tier_for  # noqa: F401 (public)

name = "triton"
LAUNCHERS = {"step": step, "resident": resident, "cooperative": cooperative}


def saved_layout(cell, rows, hidden, dtype, save, **loop):
    """Shapes and dtypes of the ``saved`` tuple (:func:`buffers.saved_layout`; the LayerNorm
    cells': :func:`norm.saved_layout`)."""
    layout = norm.saved_layout if norm.runs(cell) else buffers.saved_layout
    return layout(cell, rows, hidden, dtype, save, **loop)


def _interpreted() -> bool:
    """True when the kernels are Triton interpreter objects (CPU execution)."""
    from triton.runtime.interpreter import InterpretedFunction

    from ...kernels import recurrent_step

    return isinstance(recurrent_step.recurrent_step_forward_kernel, InterpretedFunction)


def unavailable_reason(device: torch.device) -> str | None:
    """Why this backend cannot run on ``device`` in this process, or None when it can.

    CUDA devices need a working CUDA runtime. CPU tensors only run when the kernels were
    created as Triton interpreter objects (the interpreter was switched on before
    ``fastrnn.kernels`` was first imported).
    """
    interpreted = _interpreted()
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available in this process"
        return None
    if device.type == "cpu":
        if interpreted:
            return None
        return "its kernels need a CUDA device; CPU tensors only run in Triton's interpreter"
    return f"no Triton kernels for device type {device.type!r}"


def _tier_refusal(tier: str, wants: tuple) -> str | None:
    """Why ``tier`` cannot run a call with these optional inputs (``"params"``, ``"resets"``),
    or None; a launcher module lists what it reads in ``EXTRAS``."""
    missing = [w for w in wants if w not in getattr(LAUNCHERS[tier], "EXTRAS", ())]
    if not missing:
        return None
    what = {"params": "a cell's per-unit parameters", "resets": "reset flags", "zoneout": "zoneout masks",
            "recurrent_scale": "a recurrent-dropout scale"}
    return f"the {tier} tier's kernels do not read {' or '.join(what[m] for m in missing)} yet"


def refuses_loop_inputs(wants: tuple) -> str | None:
    """Why a call whose time loop takes ``wants`` cannot run on this backend (None when the
    step tier, where every call can go, reads them)."""
    return _tier_refusal("step", tuple(wants))


def refuses_cell(cell, hidden: int = 0, dtype=None) -> str | None:
    """Why this backend cannot run ``cell`` (None when it can; the LayerNorm-LSTM / -GRU
    run on :mod:`.norm`, up to its largest hidden size when ``hidden`` and ``dtype`` are given)."""
    if norm.runs(cell):
        return norm.size_refusal(hidden, dtype) if hidden and dtype is not None else None
    reason = cell.why_not_triton()
    if not reason and cell.param_rows:
        reason = _tier_refusal("step", ("params",))
    return reason or None


def _tier_with(tier: str, extras: dict, cell, hidden: int, dtype, device) -> str:
    """``tier``, or the step tier when ``tier`` cannot read the call's optional inputs (its
    launcher's ``EXTRAS`` does not list them, or its ``refuses_extras`` hook refuses them at
    this cell, size, dtype and device); an error before any work when neither can."""
    hook = getattr(LAUNCHERS[tier], "refuses_extras", None)
    if not extras or (_tier_refusal(tier, tuple(extras)) is None
                      and (hook is None or hook(cell, hidden, dtype, tuple(extras), device) is None)):
        return tier
    reason = _tier_refusal("step", tuple(extras))
    if reason is not None:
        raise RuntimeError(f"fastrnn: backend='triton': {reason}; use backend='reference'")
    return "step"


def _refuse(cell, dtype) -> None:
    reason = refuses_cell(cell)
    if reason:
        raise RuntimeError(f"fastrnn: backend='triton': {reason}; run it with backend='reference'")
    if dtype == torch.bfloat16 and _interpreted():
        # Measured: the interpreter's tl.dot on bfloat16 operands returns wrong values.
        raise RuntimeError(
            "fastrnn: the triton backend cannot run bfloat16 in Triton's interpreter (its "
            "bfloat16 tl.dot is wrong); use backend='reference' or float16/float32 on the CPU"
        )


def _fallible():
    from ...kernels.cooperative import BarrierTimeout

    return BarrierTimeout, cooperative.LaunchRefused


def forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule: Schedule, reverse: bool, save: bool, params=None,
            resets=None, zoneout=None, recurrent_scale=None):
    """Run the forward time loop on the tier :func:`tier_for` picks; see :mod:`fastrnn.backends.base`."""
    _refuse(cell, xg.dtype)
    from ...kernels.launches import device_guard

    extras = loop_inputs(params, resets, zoneout, recurrent_scale)
    with device_guard(xg.device):
        if norm.runs(cell):
            return norm.forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule, reverse, save, **extras)
        tier = _tier_with(policy.layer_tier(cell, w_hh, w_hr, xg.dtype, xg.device, schedule), extras, cell,
                          w_hh.shape[1], xg.dtype, xg.device)
        if tier != "step":
            try:
                return LAUNCHERS[tier].forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule, reverse, save,
                                               **extras)
            except _fallible() as exc:  # nothing the failed launch wrote is used
                selfcheck.cooperative_failed(exc, cell, w_hh.shape[1], xg.dtype, xg.device)
        return step.forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule, reverse, save, **extras)


def backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse: bool,
             params=None, resets=None, zoneout=None, recurrent_scale=None):
    """Run the backward time loop on the tier :func:`tier_for` picks (every tier reads the
    ``saved`` tuple of every other); see :mod:`fastrnn.backends.base`."""
    from ...kernels.launches import device_guard

    extras = loop_inputs(params, resets, zoneout, recurrent_scale)
    with device_guard(y.device):
        if norm.runs(cell):
            return norm.backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule, reverse,
                                 **extras)
        tier = _tier_with(policy.layer_tier(cell, w_hh, w_hr, y.dtype, y.device, schedule), extras, cell,
                          w_hh.shape[1], y.dtype, y.device)
        res = None
        if tier != "step":
            try:
                res = LAUNCHERS[tier].backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule,
                                               reverse, **extras)
            except _fallible() as exc:
                selfcheck.cooperative_failed(exc, cell, w_hh.shape[1], y.dtype, y.device)
        if res is None:
            res = step.backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule, reverse,
                                **extras)
    if params is None:
        return res
    return res._replace(dparams=_param_grad(cell, saved, res, h0, c0, y, schedule, reverse, params, resets,
                                            zoneout))


def _param_grad(cell, saved, res, h0, c0, y, schedule, reverse, params, resets, zoneout=None):
    """The gradient of the cell's per-unit parameters from whole-sequence tensors
    (``cell.torch_param_grad``), after the backward loop."""
    c_seq = c_prev = None
    if cell.has_cell_state:
        c_seq = saved[1]
        c_prev = schedule.previous(c_seq, c0.to(c_seq.dtype), reverse)
        cell_c, _ = buffers.unpack_zoneout(cell, saved, zoneout)
        if cell_c is not None:  # (the cell's own new c, before zoneout)
            c_seq = cell_c
    h_prev = schedule.previous(y, h0, reverse)
    if resets is not None:
        cut = resets.unsqueeze(1)
        h_prev = torch.where(cut, 0, h_prev)
        c_prev = None if c_prev is None else torch.where(cut, 0, c_prev)
    return cell.torch_param_grad(res.dxg, res.dhg, c_seq, c_prev, y, h_prev, params)
