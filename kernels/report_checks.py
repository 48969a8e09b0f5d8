"""What the compile report reads from each compiled kernel besides its resources: a static
profile of one time step and four assertions (see :mod:`fastrnn.kernels.report`).

Profile (per program, one time step, static: each instruction of the time loop once,
nested loops once): ``ld_bytes`` global bytes loaded (PTX, :func:`fastrnn.kernels.ptx.
static_profile`), ``w_bytes`` the part whose pointer derives from ``w_hh_ptr`` (TTGIR data
flow, :func:`fastrnn.kernels.ttgir.time_loop_accesses`), ``mma`` MMA instructions,
``bar_sync`` CTA barriers and ``grid_barriers`` grid-barrier releases. A step-tier kernel
is one step (one launch per step): the whole kernel counts.

Assertions (:data:`ASSERTIONS`), each run on every row it applies to:

- ``on_chip``: a row whose specialisation keeps W_hh on chip (:func:`w_hh_on_chip`) has no
  global load of W_hh inside its time loop;
- ``no_scalar16``: an fp16/bf16 kernel has no scalar 16-bit global load (2-byte loads:
  what a row of unknown alignment compiles to) but those of loads whose every thread holds
  2 bytes of the tile (:func:`fastrnn.kernels.ttgir.two_byte_loads`: a ``16 x 16`` 16-bit
  tile over 8 warps is one element per thread, two 8-bit mask elements are one 2-byte
  vector): no alignment makes those wider. The PTX count of 2-byte loads must not exceed
  the TTGIR count of such loads;
- ``tf32_rounded``: every operand of a TF32 dot is rounded by ``cvt.rna.tf32.f32``
  (:func:`fastrnn.kernels.ttgir.tf32_dot_unrounded`);
- ``barrier``: the cooperative grid barrier is right by control flow
  (:func:`fastrnn.kernels.ptx.barrier_problems`);
- ``distinct_warps``: no dot's layout puts more warps over its result than it has tiles,
  so no warp computes what another does (:func:`fastrnn.kernels.ttgir.repeated_dots`).

:data:`ENFORCED` says, per tier, which of them fail a row; a failing assertion that is not
enforced is listed in the row's ``open`` column instead. Turn one on for a tier when its
kernels satisfy it.
"""

from __future__ import annotations

import torch

from . import ptx, resident_tiles, ttgir

ASSERTIONS = ("on_chip", "no_scalar16", "tf32_rounded", "barrier", "distinct_warps")

#: tier -> the assertions that fail a row of that tier (False: reported as open;
#: ``"aligned"``: fails the rows whose specialisation guarantees 16-byte rows, ``H_ALIGNED``,
#: and is open on the others, whose hidden size may be any: 2-byte loads are all such a row
#: can do). ``barrier`` applies to the cooperative tier only. Every cooperative row is
#: compiled as launched, with ``H`` a multiple of 16 (the only hidden sizes the tier runs on
#: a GPU), so ``no_scalar16`` fails any of its rows. ``distinct_warps``: ``"listed"`` fails a
#: resident row but those :data:`fastrnn.kernels.resident_tiles.REPEATED_WARPS` accepts
#: (fewer warps spill there), which are open.
ENFORCED = {
    "step": {"on_chip": True, "no_scalar16": "aligned", "tf32_rounded": True, "distinct_warps": True},
    "resident": {"on_chip": True, "no_scalar16": "aligned", "tf32_rounded": True, "distinct_warps": "listed"},
    "cooperative": {"on_chip": True, "no_scalar16": True, "tf32_rounded": True, "barrier": True,
                    "distinct_warps": True},
    # the LayerNorm row kernels (norm-*): as the step tier's, which launches them
    "norm": {"on_chip": True, "no_scalar16": "aligned", "tf32_rounded": True, "distinct_warps": True},
}


#: 32-bit registers one thread block may hold (sm_80 - sm_100; CUDA C++ Programming Guide,
#: "Compute Capabilities": 64 K per block and per SM).
REGISTER_FILE = 65536


def register_file_problems(regs: int, num_warps: int) -> list[str]:
    """Why a block of ``num_warps`` warps at ``regs`` registers per thread cannot launch (empty
    when it can): each warp holds its threads' registers rounded up to 8 per thread (256 per
    warp, the allocation unit), and the block's must fit :data:`REGISTER_FILE`. ptxas keeps to
    that by itself, but not under ``maxnreg``, which overrides the block's thread count."""
    need = -(-regs // 8) * 8 * 32 * num_warps
    if need > REGISTER_FILE:
        return [f"{regs} registers x {num_warps * 32} threads need {need} > {REGISTER_FILE} (the launch is refused)"]
    return []


def aligned(spec) -> bool:
    """Whether ``spec`` is compiled for 16-byte aligned rows (``H_ALIGNED``)."""
    return bool(dict(getattr(spec, "constexprs", None) or {}).get("H_ALIGNED", False))


def enforced(spec, name: str) -> bool:
    """Whether a failure of assertion ``name`` fails ``spec``'s row (:data:`ENFORCED`)."""
    switch = ENFORCED[tier_of(spec)].get(name, True)
    if switch == "listed":
        return not resident_tiles.repeats_accepted(spec)
    return aligned(spec) if switch == "aligned" else bool(switch)


def tier_of(spec) -> str:
    name = spec.kernel_name
    if name.startswith("norm"):
        return "norm"
    return "cooperative" if name.startswith("coop") else "resident" if name.startswith("resident") else "step"


def w_hh_on_chip(spec) -> bool:
    """Whether ``spec`` claims to keep W_hh on chip for the whole time loop: its own
    ``w_hh_on_chip`` attribute when it has one, else what the tier does: the resident
    tier loads W_hh once before its loop (registers / shared memory); the cooperative tier
    does where its configuration has an on-chip slab for that direction (``slab_k`` forward,
    ``backward_slab_k`` backward, :mod:`fits`), and streams it from L2 each step otherwise; the step tier is one launch per step (W_hh is
    read every step)."""
    claim = getattr(spec, "w_hh_on_chip", None)
    if claim is not None:
        return bool(claim)
    tier = tier_of(spec)
    if tier == "resident":
        return True
    if tier == "cooperative":
        backward = "backward" in spec.kernel_name
        return bool(spec.config.backward_slab_k if backward else spec.config.slab_k)
    return False


def analyse(spec, asm: dict) -> dict:
    """The profile and assertion results of one compiled kernel (``asm``: Triton's
    ``compiled.asm`` with ``ptx`` and ``ttgir``): a dict of plain values (it travels
    through a pipe)."""
    code, ir = asm["ptx"], asm["ttgir"]
    tier = tier_of(spec)
    whole = tier in ("step", "norm")  # one launch per step: the whole kernel is one step
    profiles = list(ptx.static_profile(code).values())
    loads = mma = bars = releases = flops = 0
    for p in profiles:
        parts = (p["inside"], p["outside"]) if whole else (p["inside"],)
        for c in parts:
            mma += c["mma.sync"] + c["wgmma"] + c["tcgen05.mma"]
            bars += c["bar.sync"]
            releases += c["release"]
        loads += p["load_bytes"]["inside"] + (p["load_bytes"]["outside"] if whole else 0)
        flops += p["mma_flops"]["inside"] + (p["mma_flops"]["outside"] if whole else 0)
    accesses = ttgir.time_loop_accesses(ir, "w_hh_ptr", whole_kernel=whole)
    static = ttgir.per_step(accesses)
    failures = {}
    if w_hh_on_chip(spec):
        w_loads = [a for a in accesses if a.op == "load" and a.from_argument]
        if w_loads:
            failures["on_chip"] = f"{len(w_loads)} global loads of W_hh in the time loop ({static['w_bytes']} B)"
    if spec.dtype in (torch.float16, torch.bfloat16):
        scalar = ptx.scalar_16bit_global_loads(code)
        unavoidable = ttgir.two_byte_loads(ir)  # a thread's whole share of the load is 2 bytes
        if scalar > unavoidable:
            failures["no_scalar16"] = f"{scalar} scalar 16-bit global loads" + (
                f" ({unavoidable} of them of tiles a thread holds 2 bytes of)" if unavoidable else "")
    if "tf32" in spec.label:
        unrounded = ttgir.tf32_dot_unrounded(ir)
        if unrounded:
            failures["tf32_rounded"] = f"{len(unrounded)} TF32 dot operands not rounded (cvt.rna)"
    repeats = ttgir.repeated_dots(ir)
    if repeats:
        failures["distinct_warps"] = (f"{len(repeats)} dots computed {max(f for f, _ in repeats)}x over "
                                      "by warps repeating each other")
    if tier == "cooperative":
        problems = ptx.barrier_problems(code) if profiles else ["no kernel (.entry) in the PTX"]
        if problems:
            failures["barrier"] = "; ".join(problems)
    return dict(ld_bytes=loads, w_bytes=static["w_bytes"], mma=mma, bar_sync=bars, grid_barriers=releases,
                ptx_mma_flops=flops, on_chip=w_hh_on_chip(spec), failures=failures,
                accesses=[(a.op, a.amount, a.trips, a.from_argument, "") for a in accesses])


def verdict(spec, analysis: dict) -> tuple[list, list]:
    """``(problems, open)``: the failed assertions that fail the row (:data:`ENFORCED`), and
    those that do not, as ``name: detail`` strings."""
    problems, open_ = [], []
    for name in ASSERTIONS:
        if name in analysis["failures"]:
            (problems if enforced(spec, name) else open_).append(f"{name}: {analysis['failures'][name]}")
    return problems, open_
