"""Expected time per step of a compiled kernel, from its static profile: an expectation,
not a measurement (no GPU has run these kernels here).

The model: every program of a persistent launch runs on its own SM, all at once, so one
step of the launch takes as long as one program's step:

    memory  = global bytes / (L2 bandwidth / SMs)  +  on-chip W_hh bytes / shared bandwidth per SM
    compute = MMA flops / (tensor throughput / SMs)       (fp32 IEEE: CUDA-core FMA throughput)
    step    = max(memory, compute) + grid barriers x barrier latency

The global bytes, W_hh bytes and dot flops come from the TTGIR (:func:`fastrnn.kernels.
ttgir.time_loop_accesses`, nested loops scaled by their trip counts at the shape), the
flops multiplied by the work duplication the PTX shows (``mma`` flops run by all warps /
flops of the dots: 4 when four warps each compute the same 16-row tile), the barriers are
the grid-barrier releases in the PTX's time loop. Not modelled: latency (a step of a
small problem is latency-bound: loads, ``bar.sync``, the pointwise math), L1 hits,
occupancy, the launch itself. So read it as a lower bound of the step time.

Each constant below names its public source.
"""

from __future__ import annotations

from typing import NamedTuple


class GPU(NamedTuple):
    name: str
    sms: int
    clock_hz: float  # boost clock the peak figures are quoted at
    l2_bytes_per_s: float  # whole chip
    shared_bytes_per_clock_per_sm: int
    tensor_flops: dict  # dtype label -> dense flops/s, whole chip (fp32: CUDA-core FMA)


#: NVIDIA A100 Tensor Core GPU Architecture whitepaper (2020): A100 SXM4, 108 SMs, 1410 MHz
#: boost; dense peaks 312 TFLOPS fp16/bf16, 156 TFLOPS TF32, 19.5 TFLOPS fp32 (non-tensor);
#: L2 read bandwidth 5120 bytes/clock (2.3x V100's 2048). Shared memory: 32 banks of 4 bytes
#: per clock per SM (CUDA C++ Programming Guide, "Shared Memory", compute capability 5.x
#: and later) = 128 bytes/clock/SM.
A100 = GPU("A100", 108, 1.41e9, 5120 * 1.41e9, 128,
           {"fp16": 312e12, "bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12})

#: NVIDIA H100 Tensor Core GPU datasheet / Hopper whitepaper (2022): H100 SXM5, 132 SMs;
#: dense peaks 989.4 TFLOPS fp16/bf16, 494.7 TFLOPS TF32, 66.9 TFLOPS fp32 (non-tensor);
#: 989.4e12 / (132 SMs x 4096 dense fp16 FMA per clock x 2) gives the 1830 MHz clock the
#: peaks assume. L2: NVIDIA publishes no per-clock figure for H100; ASSUMED the A100's
#: 5120 bytes/clock at 1830 MHz (9.4 TB/s; chipsandcheese.com, "Nvidia's H100: Funny L2,
#: and Tons of Bandwidth", 2023, measured more L2 bandwidth on H100 PCIe than on A100).
#: Shared memory as A100 (128 bytes/clock/SM).
H100 = GPU("H100", 132, 1.83e9, 5120 * 1.83e9, 128,
           {"fp16": 989.4e12, "bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12})

GPUS = (A100, H100)

#: Latency of one grid-wide barrier (arrive, poll, acquire), microseconds. ASSUMED: the
#: order of magnitude of cooperative-groups ``grid.sync`` that Zhang et al., "A Study of
#: Single and Multi-device Synchronization Methods in Nvidia GPUs" (IPDPS 2020,
#: arXiv:2004.05371) measured on V100/P100 (microseconds, growing with the number of
#: blocks); not measured on A100/H100 here. The first GPU run should replace it.
GRID_BARRIER_US = 2.0


def precision_of(label: str) -> str:
    """The throughput class of a report row's dtype label (``float32-tf32`` -> ``tf32``)."""
    if "tf32" in label:
        return "tf32"
    return {"float16": "fp16", "bfloat16": "bf16"}.get(label.split("-")[0], "fp32")


def expected_step_us(profile: dict, gpu: GPU) -> dict:
    """Expected microseconds per step of one program (= one step of the launch) on ``gpu``.

    ``profile``: ``global_bytes`` (loaded from global memory per step, through L2),
    ``onchip_w_bytes`` (W_hh read from shared memory / registers per step), ``flops``
    (MMA work per step, duplicated work included), ``precision`` (``fp16`` / ``bf16`` /
    ``tf32`` / ``fp32``), ``grid_barriers`` (per step). Returns the terms and ``step``.
    """
    l2 = profile["global_bytes"] / (gpu.l2_bytes_per_s / gpu.sms)
    shared = profile.get("onchip_w_bytes", 0) / (gpu.shared_bytes_per_clock_per_sm * gpu.clock_hz)
    compute = profile["flops"] / (gpu.tensor_flops[profile["precision"]] / gpu.sms)
    barrier = profile.get("grid_barriers", 0) * GRID_BARRIER_US * 1e-6
    terms = dict(l2_us=l2 * 1e6, shared_us=shared * 1e6, mma_us=compute * 1e6, barrier_us=barrier * 1e6)
    terms["step_us"] = max(l2 + shared, compute) * 1e6 + terms["barrier_us"]
    return terms


def profile_at(row: dict, values: dict, rows_per_dot: int, on_chip: bool) -> dict:
    """A row's per-step profile (:func:`expected_step_us`) at the kernel arguments
    ``values`` (e.g. ``{"H": 768, "P": 768}``): the row's time-loop accesses scaled, its
    flops multiplied by the PTX's work duplication. ``rows_per_dot``: batch rows of one
    program's recurrent dot (its ``BLOCK_B``), to count the W_hh elements an on-chip step
    reads (``flops / (2 x rows)``)."""
    from .ttgir import Access, per_step

    accesses = [Access(*a) for a in row["accesses"]]
    totals = per_step(accesses, values)
    static = per_step(accesses)
    duplication = row["ptx_mma_flops"] / static["dot_flops"] if static["dot_flops"] and row["ptx_mma_flops"] else 1.0
    item = 4 if precision_of(row["dtype"]) in ("fp32", "tf32") else 2
    onchip = totals["dot_flops"] // (2 * rows_per_dot) * item if on_chip else 0
    return dict(global_bytes=totals["load_bytes"], onchip_w_bytes=onchip, flops=totals["dot_flops"] * duplication,
                precision=precision_of(row["dtype"]), grid_barriers=row["grid_barriers"])


# --------------------------------------------------------------------------------------
# The benchmark anchor shapes
# --------------------------------------------------------------------------------------

#: (B, T, H) of the public benchmark anchors: FlashRNN's H100 benchmark shape, and a small
#: hidden size with a larger batch.
ANCHORS = ((16, 1024, 768), (64, 1000, 128))
ANCHOR_KINDS = ("LSTM", "GRU")
#: dtype label -> (torch dtype name, TF32). fp32 with TF32 is torch's default for cuDNN RNNs
#: (``torch.backends.cudnn.allow_tf32``).
ANCHOR_DTYPES = {"float16": ("float16", False), "bfloat16": ("bfloat16", False),
                 "float32-tf32": ("float32", True), "float32": ("float32", False)}
#: The arch of each GPU's rows.
GPU_ARCH = {"A100": 80, "H100": 90}


def launch_choice(kind: str, batch: int, hidden: int, dtype_name: str, tf32: bool, gpu: GPU) -> tuple:
    """``(tier, forward kernel name, backward kernel name, config label, rows per program,
    on chip)`` the tier choice makes on ``gpu`` (:mod:`fastrnn.kernels.fits`, as
    :func:`fastrnn.backends.triton.tier_for` reads it, first-use check aside)."""
    import torch

    from . import fits
    from .cooperative_args import kernel_config
    from .recurrent_step import step_config

    dtype = getattr(torch, dtype_name)
    arch = GPU_ARCH[gpu.name]
    if fits.resident_refusal(kind, hidden, 0, dtype, arch, fits.SHARED_LIMIT[arch]) is None:
        fit = fits.resident_fit(kind, dtype, hidden)
        return ("resident", "resident-forward", "resident-backward", (fit.forward.label, fit.backward.label),
                fit.forward.block_b, True)
    if fits.cooperative_refusal(kind, hidden, 0, dtype, gpu.sms, True, arch) is None:
        cfg = fits.cooperative_variant(fits.cooperative_configs(dtype, hidden, tf32, arch), hidden, batch, gpu.sms)
        prefix = "coop-reg" if cfg.registers else "coop"
        labels = tuple(kernel_config(cfg, kind, dtype, tf32, forward).label for forward in (True, False))
        return ("cooperative", f"{prefix}-forward", f"{prefix}-backward", labels, cfg.block_b, bool(cfg.slab_k))
    cfgs = [step_config(hidden, kind, dtype, tf32, kernel=kernel) for kernel in ("forward", "backward")]
    return ("step", "forward", "backward", tuple(cfg.label for cfg in cfgs), cfgs[0].block_b, False)


def anchor_rows(rows: list) -> list:
    """One entry per (kind, anchor shape, dtype): the tier, config and expected µs per step
    forward and backward on each GPU of :data:`GPUS` (None where the report has no row)."""
    index = {(r["kernel"], r["dtype"], r["config"], r["arch"]): r for r in rows}
    out = []
    for kind in ANCHOR_KINDS:
        for batch, steps, hidden in ANCHORS:
            for label, (dtype_name, tf32) in ANCHOR_DTYPES.items():
                entry = dict(kind=kind, batch=batch, steps=steps, hidden=hidden, dtype=label, gpus={})
                for gpu in GPUS:
                    tier, fwd, bwd, configs, rows_per_program, on_chip = launch_choice(
                        kind, batch, hidden, dtype_name, tf32, gpu)
                    times = []
                    for name, config in zip((fwd, bwd), configs):
                        r = index.get((f"{name}:{kind}", label, config, f"sm_{GPU_ARCH[gpu.name]}"))
                        if r is None or "accesses" not in r:
                            times.append(None)
                            continue
                        profile = profile_at(r, {"H": hidden, "P": hidden, "B": batch}, rows_per_program, on_chip)
                        times.append(expected_step_us(profile, gpu))
                    entry["gpus"][gpu.name] = dict(tier=tier, config=configs[0], forward=times[0], backward=times[1])
                out.append(entry)
    return out


def anchor_table(rows: list) -> str:
    """The Markdown table of :func:`anchor_rows`: expected forward / backward µs per step
    and the whole forward pass (T steps) in ms, per GPU."""
    def us(t):
        return "—" if t is None else f"{t['step_us']:.2f}"

    def ms(t, steps):
        return "—" if t is None else f"{t['step_us'] * steps / 1000:.2f}"

    names = [g.name for g in GPUS]
    head = ["cell", "B", "T", "H", "dtype"]
    for n in names:
        head += [f"{n} tier / config", f"{n} fwd µs/step", f"{n} bwd µs/step", f"{n} fwd ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in anchor_rows(rows):
        cells = [e["kind"], str(e["batch"]), str(e["steps"]), str(e["hidden"]), e["dtype"]]
        for n in names:
            g = e["gpus"][n]
            cells += [f"{g['tier']} `{g['config']}`", us(g["forward"]), us(g["backward"]), ms(g["forward"], e["steps"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
