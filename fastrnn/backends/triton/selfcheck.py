"""The first-use check of a persistent tier, and what a failed launch falls back to.

The first time a persistent tier runs a (device, cell, dtype, variant) in a process, a
small problem is run through it (the cooperative tier: through each of its launch
configurations for that layer) and through the step tier and compared
(``FASTRNN_SELF_CHECK``); a mismatch or a failure warns once and that key uses the step
tier for the rest of the process. A cooperative launch whose grid barrier times out or
that the device refuses does the same (or raises when ``FASTRNN_TIER`` forced the tier).
"""

from __future__ import annotations

import os
import warnings

import torch

from ...kinds import CellKind
from ...schedule import Schedule
from . import cooperative, policy, resident, step

SELF_CHECK_ENV = "FASTRNN_SELF_CHECK"
PERSISTENT = {"resident": resident, "cooperative": cooperative}

#: (tier, device, cell name, dtype, variant) -> True (checked, agrees) / False (use the
#: step tier: the check failed, or a cooperative launch of that key failed).
checked: dict = {}

_CHECK_TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float32: dict(rtol=2e-3, atol=2e-3),  # TF32 may be on: both tiers, different sums
    torch.float16: dict(rtol=2e-2, atol=2e-2),
    torch.bfloat16: dict(rtol=6e-2, atol=6e-2),
}


def enabled(device: torch.device) -> bool:
    """``FASTRNN_SELF_CHECK``: ``0`` off, ``1`` on everywhere (also in Triton's interpreter,
    which is how the tests exercise it), unset / ``auto``: on for CUDA devices only."""
    value = os.environ.get(SELF_CHECK_ENV, "auto") or "auto"
    if value not in ("0", "1", "auto"):
        raise ValueError(f"{SELF_CHECK_ENV} must be 0, 1 or auto, got {value!r}")
    if value == "auto":
        return device.type == "cuda"
    return value == "1"


def variant(tier: str, hidden: int, dtype, device) -> str:
    """What a persistent tier compiles for this layer on ``device``: its first-use check key and name."""
    from ...kernels import fits

    if tier == "cooperative":
        return "configurations " + ", ".join(cfg.label for cfg in cooperative.configs(hidden, dtype, device))
    return f"BLOCK_H {fits.resident_block_h(hidden)}"


def _problem(cell, hidden: int, dtype, device, reverse: bool, batch: int = 19):
    """A small problem: ``batch`` sequences (19: two 16-row batch tiles, the second
    partial), 5 steps; packed with ragged lengths in the reverse direction, padded in the
    forward one (the two ways the kernels read the schedule)."""
    gen = torch.Generator().manual_seed(1234)
    steps = 5
    if reverse:
        schedule = Schedule.from_batch_sizes([batch] + [max(1, batch - k) for k in (4, 8, 13, 17)])
    else:
        schedule = Schedule.uniform(steps, batch)
    gates = cell.gates

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    xg = rnd(schedule.rows, gates * hidden)
    w_hh = rnd(gates * hidden, hidden, scale=hidden**-0.5)
    b_hh = rnd(gates * hidden, scale=0.1) if cell.recurrent_apart else None
    h0 = rnd(batch, hidden)
    c0 = rnd(batch, hidden) if cell.has_cell_state else None
    dy = rnd(schedule.rows, hidden)
    dh_n = rnd(batch, hidden)
    dc_n = rnd(batch, hidden) if cell.has_cell_state else None
    return schedule, xg, w_hh, b_hh, h0, c0, dy, dh_n, dc_n


def _variants(tier: str, hidden: int, dtype, device) -> list:
    """``(launch configuration, batch)`` pairs the check runs ``tier`` with: the resident
    tier once (19 rows); the cooperative tier once per configuration a launch of this
    layer may use (the tiled one and each register variant, forced), each with a batch
    that configuration can run."""
    if tier != "cooperative":
        return [(None, 19)]
    sms = cooperative.sm_count(device)
    out = []
    for cfg in cooperative.configs(hidden, dtype, device):
        batch = 19
        if cfg.registers:
            batch = min(batch, cfg.block_b * (sms // -(-hidden // cfg.block_h)))
        out.append((cfg, batch))
    return out


def _run(tier: str, cell, hidden: int, dtype, device) -> str | None:
    """The first disagreement between ``tier`` (each of its variants) and the step tier,
    or None when they agree."""
    for cfg, batch in _variants(tier, hidden, dtype, device):
        problem = _check_one(tier, cell, hidden, dtype, device, cfg, batch)
        if problem is not None:
            return problem if cfg is None else f"{problem} ({cfg.label})"
    return None


def _extras(cell, tier_module, hidden: int, rows: int, dtype, device) -> dict:
    """What the check passes both tiers besides the problem: the cell's per-unit parameters
    (random: zeros would hide a wrong row) and, where both tiers read them, reset flags on a
    few rows."""
    gen = torch.Generator().manual_seed(4321)
    extras = {}
    both = set(getattr(tier_module, "EXTRAS", ())) & set(getattr(step, "EXTRAS", ()))
    if cell.param_rows and "params" in both:
        extras["params"] = (torch.randn(cell.param_rows, hidden, generator=gen, dtype=torch.float64) * 0.5).to(
            device=device, dtype=dtype)
    if "resets" in both:
        extras["resets"] = (torch.rand(rows, generator=gen) < 0.2).to(device)
    return extras


def _check_one(tier: str, cell, hidden: int, dtype, device, cfg, batch: int) -> str | None:
    """Forward with and without saving and backward, in both directions, against the step
    tier."""
    tier_module = PERSISTENT[tier]

    def forward(*args, save, **extras):
        return tier_module.forward(*args, save, cfg, **extras)

    def backward(*args, **extras):
        return tier_module.backward(*args, cfg, **extras)

    return _disagreement(cell, hidden, dtype, device, batch, (forward, backward), (step.forward, step.backward),
                         lambda rows: _extras(cell, tier_module, hidden, rows, dtype, device))


def _disagreement(cell, hidden: int, dtype, device, batch: int, tier, reference, extras_for) -> str | None:
    """The first difference between a persistent path (``tier``: its ``(forward, backward)``)
    and the step path (``reference``), or None: forward with and without saving and
    backward, in both directions, with the optional inputs ``extras_for(rows)`` gives."""
    forward, backward = tier
    ref_forward, ref_backward = reference
    for reverse in (False, True):
        schedule, xg, w_hh, b_hh, h0, c0, dy, dh_n, dc_n = _problem(cell, hidden, dtype, device, reverse, batch)
        extras = extras_for(schedule.rows)
        ref = ref_forward(cell, xg.clone(), w_hh, b_hh, None, h0, c0, schedule, reverse, True, **extras)
        out = forward(cell, xg.clone(), w_hh, b_hh, None, h0, c0, schedule, reverse, save=True, **extras)
        unsaved = forward(cell, xg.clone(), w_hh, b_hh, None, h0, c0, schedule, reverse, save=False, **extras)
        ref_b = ref_backward(cell, ref.saved, w_hh, b_hh, None, h0, c0, ref.y, dy, dh_n, dc_n, schedule, reverse,
                             **extras)
        out_b = backward(cell, out.saved, w_hh, b_hh, None, h0, c0, out.y, dy, dh_n, dc_n, schedule, reverse,
                         **extras)
        pairs = dict(y=(out.y, ref.y), h_n=(out.h_n, ref.h_n), c_n=(out.c_n, ref.c_n),
                     dxg=(out_b.dxg, ref_b.dxg), dhg=(out_b.dhg, ref_b.dhg), dh0=(out_b.dh0, ref_b.dh0),
                     dc0=(out_b.dc0, ref_b.dc0), dparams=(out_b.dparams, ref_b.dparams),
                     unsaved_y=(unsaved.y, ref.y), unsaved_h_n=(unsaved.h_n, ref.h_n),
                     unsaved_c_n=(unsaved.c_n, ref.c_n))
        pairs.update({f"saved[{i}]": (a, e) for i, (a, e) in enumerate(zip(out.saved, ref.saved))})
        for name, (a, e) in pairs.items():
            if a is None and e is None:
                continue
            if a is None or e is None or a.shape != e.shape:
                return f"{name} differs in presence or shape"
            if not torch.allclose(a.double(), e.double(), **_CHECK_TOL[dtype]):
                worst = (a.double() - e.double()).abs().nan_to_num(float("inf")).max().item()
                return f"{name} differs (max abs difference {worst:.3g}, {'reverse' if reverse else 'forward'})"
    return None


def _norm_extras(cell, hidden: int, rows: int, dtype, device) -> dict:
    """The LayerNorm cells' gains and biases (random, around 1) and reset flags."""
    gen = torch.Generator().manual_seed(4321)
    params = torch.randn(cell.param_rows, hidden, generator=gen, dtype=torch.float64) * 0.5 + 1.0
    return dict(params=params.to(device=device, dtype=dtype), resets=(torch.rand(rows, generator=gen) < 0.2).to(device))


def norm_resident_agrees(cell, hidden: int, dtype, device) -> bool:
    """Whether the LayerNorm cells' resident kernels may run this layer: their first-use check
    against the step tier's LayerNorm path (as :func:`first_use_check` for the other cells),
    once per key; a mismatch warns once (raises under ``FASTRNN_TIER=resident``) and the key
    runs the step path from then on."""
    from . import norm, norm_resident

    key = ("resident-norm", str(device), cell.name, dtype, norm_resident.variant(cell, hidden, dtype, device))
    forced = policy.requested_tier() == "resident"
    if checked.get(key) is False and not forced:
        return False
    if not enabled(device):
        return True
    if key not in checked:
        try:
            problem = _disagreement(
                cell, hidden, dtype, device, 19, (norm_resident.forward, norm_resident.backward),
                (norm.step_forward, norm.step_backward), lambda rows: _norm_extras(cell, hidden, rows, dtype, device))
        except Exception as exc:  # a kernel that fails to compile or launch is a failed check
            problem = f"it raised {type(exc).__name__}: {exc}"
        if problem is not None and forced:
            raise RuntimeError(
                f"fastrnn: {policy.TIER_ENV}=resident: the first-use check of the resident tier for {cell.name} "
                f"{dtype} ({key[-1]}) on {device} failed against the step tier: {problem}")
        if problem is not None:
            warnings.warn(
                f"fastrnn: the resident kernel tier disagrees with the step tier on {device} for {cell.name} "
                f"{dtype} ({key[-1]}): {problem}. Using the step tier for it for the rest of this process (set "
                f"{policy.TIER_ENV}=step to choose it directly, {SELF_CHECK_ENV}=0 to skip the check).",
                RuntimeWarning,
                stacklevel=2,
            )
        checked[key] = problem is None
    return checked[key]


def first_use_check(tier: str, forced: bool, kind: str, hidden: int, dtype, device) -> str:
    """``tier`` if it passed (or skipped) its first-use check for this key, else "step"."""
    key = (tier, str(device), kind, dtype, variant(tier, hidden, dtype, device))
    if checked.get(key) is False and not forced:
        return "step"
    if not enabled(device):
        return tier
    if key not in checked:
        try:
            problem = _run(tier, CellKind(kind), hidden, dtype, device)
        except Exception as exc:  # a kernel that fails to compile or launch is a failed check
            problem = f"it raised {type(exc).__name__}: {exc}"
        if problem is not None and forced:
            raise RuntimeError(
                f"fastrnn: {policy.TIER_ENV}={tier}: the first-use check of the {tier} tier for {kind} {dtype} "
                f"({key[-1]}) on {device} failed against the step tier: {problem}"
            )
        if problem is not None:
            warnings.warn(
                f"fastrnn: the {tier} kernel tier disagrees with the step tier on {device} for {kind} "
                f"{dtype} ({key[-1]}): {problem}. Using the step tier for it for the rest of this "
                f"process (set {policy.TIER_ENV}=step to choose it directly, {SELF_CHECK_ENV}=0 to skip the "
                "check).",
                RuntimeWarning,
                stacklevel=2,
            )
        checked[key] = problem is None
    return tier if checked[key] else "step"


def cooperative_failed(exc: Exception, cell, hidden: int, dtype, device) -> None:
    """A cooperative launch hit a barrier timeout or was refused (nothing it wrote is
    used): raise when the tier was forced; else warn once and use the step tier for this
    key from now on."""
    if policy.requested_tier() == "cooperative":
        raise exc
    key = ("cooperative", str(device), cell.name, dtype, variant("cooperative", hidden, dtype, device))
    if checked.get(key) is not False:
        warnings.warn(
            f"fastrnn: {exc} This call and later ones for {cell.name} {dtype} ({key[-1]}) on {device} run "
            f"on the step tier (set {policy.TIER_ENV}=step to choose it directly).",
            RuntimeWarning,
            stacklevel=3,
        )
    checked[key] = False
