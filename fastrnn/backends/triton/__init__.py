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
from . import buffers, cooperative, policy, resident, selfcheck, step
from .buffers import saved_layout  # noqa: F401 (the backend interface)
from .policy import TIERS, tier_for  # noqa: F401 (public)

name = "triton"
LAUNCHERS = {"step": step, "resident": resident, "cooperative": cooperative}


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


#: Why a call with ``resets`` cannot run here (the kernels do not read reset flags yet).
RESETS_REFUSAL = "the Triton kernels do not read reset flags yet"


def _refuse(cell, dtype) -> None:
    if not cell.runs_on_triton:
        raise RuntimeError(f"fastrnn: {cell.why_not_triton()}; run it with backend='reference'")
    if dtype == torch.bfloat16 and _interpreted():
        # Measured: the interpreter's tl.dot on bfloat16 operands returns wrong values.
        raise RuntimeError(
            "fastrnn: the triton backend cannot run bfloat16 in Triton's interpreter (its "
            "bfloat16 tl.dot is wrong); use backend='reference' or float16/float32 on the CPU"
        )


def _fallible():
    from ...kernels.cooperative import BarrierTimeout

    return BarrierTimeout, cooperative.LaunchRefused


def forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule: Schedule, reverse: bool, save: bool):
    """Run the forward time loop on the tier :func:`tier_for` picks; see :mod:`fastrnn.backends.base`."""
    _refuse(cell, xg.dtype)
    from ...kernels.launches import device_guard

    with device_guard(xg.device):
        tier = policy.layer_tier(cell, w_hh, w_hr, xg.dtype, xg.device, schedule)
        if tier != "step":
            try:
                return LAUNCHERS[tier].forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule, reverse, save)
            except _fallible() as exc:  # nothing the failed launch wrote is used
                selfcheck.cooperative_failed(exc, cell, w_hh.shape[1], xg.dtype, xg.device)
        return step.forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule, reverse, save)


def backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse: bool):
    """Run the backward time loop on the tier :func:`tier_for` picks (every tier reads the
    ``saved`` tuple of every other); see :mod:`fastrnn.backends.base`."""
    from ...kernels.launches import device_guard

    with device_guard(y.device):
        tier = policy.layer_tier(cell, w_hh, w_hr, y.dtype, y.device, schedule)
        if tier != "step":
            try:
                return LAUNCHERS[tier].backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule,
                                                reverse)
            except _fallible() as exc:
                selfcheck.cooperative_failed(exc, cell, w_hh.shape[1], y.dtype, y.device)
        return step.backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule, reverse)
