"""Which tier runs a layer: the tier choice, its environment variable, the device limits.

The choice is made from the cell, ``H``, ``proj_size``, the dtype and the device's shared
memory per block and SM count, never from ``T`` or ``B`` (``B`` only picks the
cooperative tier's variant); the table of what fits is :mod:`fastrnn.kernels.fits`.
``FASTRNN_TIER`` forces a tier. A persistent tier also passes a first-use check
(:mod:`.selfcheck`) before it is used.
"""

from __future__ import annotations

import functools
import os

import torch

from ...kinds import CellKind
from ...schedule import Schedule
from . import cooperative

TIERS = ("auto", "step", "resident", "cooperative")
TIER_ENV = "FASTRNN_TIER"

#: The resident kernels address a tile with a 64-bit base (the step's first row) plus
#: 32-bit offsets up to ``B * G * H``; a batch past this runs the step tier instead.
RESIDENT_MAX_OFFSET = 2**31


def requested_tier() -> str:
    name = os.environ.get(TIER_ENV, "auto") or "auto"
    if name not in TIERS:
        raise ValueError(f"{TIER_ENV} must be one of {TIERS}, got {name!r}")
    return name


def device_limits(device: torch.device) -> tuple[int, int]:
    """``(compute capability as major*10+minor, shared memory per block in bytes)`` that
    the tier choice uses for ``device``.

    A CUDA device reports its own (the opt-in maximum, which is what a launch may use).
    Any other device (CPU tensors in Triton's interpreter) is treated as the reference
    GPU of :data:`fastrnn.kernels.fits.REFERENCE_ARCH` (sm_90: 232448 bytes), so the tests
    exercise the choice a GPU of that kind makes.
    """
    from ...kernels import fits

    if device.type == "cuda":
        return _cuda_limits(device.index if device.index is not None else torch.cuda.current_device())
    return fits.REFERENCE_ARCH, fits.SHARED_LIMIT[fits.REFERENCE_ARCH]


@functools.lru_cache(maxsize=None)
def _cuda_limits(index: int) -> tuple[int, int]:
    import triton

    major, minor = torch.cuda.get_device_capability(index)
    shared = triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]
    return major * 10 + minor, int(shared)


def refusal(tier: str, kind: str, hidden: int, proj_size: int, dtype, device) -> str | None:
    """Why ``tier`` cannot run this layer on ``device`` (None: it can)."""
    from ...kernels import fits

    if tier == "step":
        return None
    arch, shared = device_limits(device)
    if tier == "cooperative":
        return fits.cooperative_refusal(kind, hidden, proj_size, dtype, cooperative.sm_count(device),
                                        device.type == "cuda", arch, shared)
    return fits.resident_refusal(kind, hidden, proj_size, dtype, arch, shared)


def chosen_tier(kind: str, hidden: int, proj_size: int, dtype, device) -> tuple[str, bool]:
    """``(tier, forced)`` before the first-use check: the forced tier (an error when it
    cannot run the case) or, for ``auto``, the fastest tier that can."""
    requested = requested_tier()
    if requested != "auto":
        reason = refusal(requested, kind, hidden, proj_size, dtype, device)
        if reason is not None:
            raise RuntimeError(
                f"fastrnn: {TIER_ENV}={requested} cannot run {kind} with hidden_size={hidden}, "
                f"proj_size={proj_size}, {dtype} on {device}: {reason}"
            )
        return requested, True
    # Preference order: resident (no grid barrier), then cooperative (W_hh spread over the
    # SMs, a grid barrier per step), then step. The cooperative tier is chosen on its own
    # only on a GPU: Triton's interpreter runs a grid's programs one after another, so a
    # grid barrier could only time out there (the tests run it with one thread per program).
    for tier in ("resident", "cooperative"):
        if tier == "cooperative" and device.type != "cuda":
            continue
        if refusal(tier, kind, hidden, proj_size, dtype, device) is None:
            return tier, False
    return "step", False


def tier_for(kind, hidden: int, proj_size: int, dtype, device) -> str:
    """The kernel tier a launch of this layer would use: ``"step"``, ``"resident"`` or
    ``"cooperative"``.

    Decided by the cell (or its name), ``hidden``, ``proj_size`` (0 for none), the dtype
    and the device's shared memory per block and SM count, never by ``T`` or ``B``.
    ``FASTRNN_TIER=auto|step|resident|cooperative`` (read at each call) forces a tier;
    forcing one that cannot run the case raises a RuntimeError. On CPU tensors (Triton's
    interpreter) the device is taken to be an sm_90 GPU (:func:`device_limits`). Includes
    the first-use check of a persistent tier (which runs it once), so the answer is what
    the launch will do.

    Example::

        >>> tier_for("LSTM", 64, 0, torch.float16, torch.device("cpu"))  # doctest: +SKIP
        'resident'
    """
    from . import norm, norm_resident, selfcheck

    if norm.runs(CellKind(kind)):  # the LayerNorm cells: the resident tier where it fits, else the step tier's
        cell, device = CellKind(kind), torch.device(device)
        reason = norm.refusal(cell, hidden, None, dtype)
        if reason:
            raise RuntimeError(f"fastrnn: {reason}")
        requested = requested_tier()
        if requested in ("auto", "resident"):
            one_row = Schedule.uniform(1, 1)  # (the check of the batch size is the launch's)
            reason = norm_resident.refusal(cell, hidden, dtype, device, one_row)
            if reason is None:
                return "resident" if selfcheck.norm_resident_agrees(cell, hidden, dtype, device) else "step"
            if requested == "resident":
                raise RuntimeError(f"fastrnn: {TIER_ENV}=resident cannot run {cell.name} with hidden_size={hidden}, "
                                   f"{dtype}: {reason}")
        return "step"
    kind = CellKind(kind).value
    device = torch.device(device)
    tier, forced = chosen_tier(kind, hidden, proj_size, dtype, device)
    if tier != "step":
        tier = selfcheck.first_use_check(tier, forced, kind, hidden, dtype, device)
    return tier


def layer_tier(cell, w_hh, w_hr, dtype, device, schedule: Schedule) -> str:
    """:func:`tier_for`, and the two cases a launch cannot take to a persistent tier
    whatever the table says: an empty batch (nothing to launch) and, on the resident tier,
    a batch whose 32-bit in-step offsets ``B * G * H`` would pass 2^31 (over 4 million
    sequences at H = 128); both run the step tier, which gives the same results and saved
    layout."""
    hidden = w_hh.shape[0] // cell.gates
    proj_size = w_hr.shape[0] if w_hr is not None else 0
    tier = tier_for(cell, hidden, proj_size, dtype, device)
    if tier == "resident" and not 0 < schedule.batch * cell.gates * hidden < RESIDENT_MAX_OFFSET:
        return "step"
    if tier == "cooperative" and schedule.batch == 0:
        return "step"
    return tier
