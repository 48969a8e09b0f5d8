"""The ahead-of-time compile report: every specialisation of the step, resident and
cooperative tiers compiles for every arch of report.ARCHS with no spills and
shared memory within the per-block limit (and, for the persistent tiers, within what
kernels/fits.py records, which the tier choice reads; an entry the tier choice
never launches on an arch is marked so; for the cooperative tier, tiled kernels and
register variants, with launch_cooperative_grid and a grid barrier that is right by
control flow), and the enforced assertions of kernels/report_checks.py hold.

The report compiles real GPU code, which needs Triton's interpreter off: it runs in a
subprocess whose environment drops the interpreter switch that tests/conftest.py sets.
About 1-2 s per compile (2 processes) on a cold Triton cache. The assertions themselves
are shown to fail and pass in tests/test_ptx.py (compiled and synthetic code).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from fastrnn import cells
from fastrnn.kernels import cooperative, fits, norm_rows, report, resident, resident_norm
from fastrnn.kernels.precision import ENABLE_FP_FUSION
from fastrnn.kernels.recurrent_step import CONFIGS, StepConfig, specialisations

KINDS = tuple(c.name for c in cells.BUILTIN)

ROW = re.compile(
    r"^((?:resident-|coop-reg-|coop-)?(?:forward|backward)):(\S+)\s+(\S+)\s+(\S+)\s+(sm_\d+)\s+(-?\d+)\s+(-?\d+)"
    r"\s+(-?\d+)\s+(-?\d+)\s+(-?\d+)\s+(-?\d+)\s+(-?\d+)\s+(-?\d+)\s+(.*)$"
)


@pytest.fixture(autouse=True)
def _torch_cells_only(monkeypatch):
    """The report a fresh process writes lists torch's cells (and the cells it is told to
    import); a cell another test module defined stays registered in this process, so these
    tests see the registry of a fresh process."""
    from fastrnn.cells import base

    monkeypatch.setattr(base, "_REGISTRY", {c.name: c for c in cells.BUILTIN})


def _env_without_interpreter():
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_specialisations_cover_the_launch_choices():
    specs = specialisations()
    # forward: LSTM/GRU x SAVE + 2 RNNs; backward: LSTM x DM_GIVEN + 3 -> 11 per dtype-config,
    # dtypes fp32, fp32-tf32, fp16, bf16 (torch's cells; a cell defined beside them adds its rows).
    assert {s.kind for s in specs} == {c.name for c in cells.defined() if c.runs_on_triton} >= set(KINDS)
    assert len([s for s in specs if s.kind in KINDS]) == 11 * 2 * 4 * 2  # 2 configurations, H_ALIGNED or not
    assert len({(s.kernel_name, s.kind, s.label, s.config) for s in specs}) == len(specs)
    # the 16-wide tile is one 16x16 MMA tile: one warp computes it where the dots are MMA (fp16,
    # bf16, TF32) in the forward; fp32 IEEE (FMA) and the backward keep two
    import torch

    small = {(s.kernel_name, s.dtype, s.constexprs["PRECISION"], s.config) for s in specs if s.config.block_h == 16}
    assert small == {(kernel, dtype, precision, StepConfig(16, 16, 16, 1 if mma and kernel == "forward" else 2))
                     for dtype, precision, mma in ((torch.float32, "ieee", False), (torch.float32, "tf32", True),
                                                   (torch.float16, "ieee", True), (torch.bfloat16, "ieee", True))
                     for kernel in ("forward", "backward")}


def test_resident_specialisations_are_the_fits_table():
    """Forward (with and without H_ALIGNED) + backward of every fits.RESIDENT entry, fp32
    twice (IEEE and TF32), the fp16 / bf16 backward with H_ALIGNED too (every such entry has
    an aligned backward), and every kind has resident entries in fp32, fp16 and bf16."""
    from fastrnn.kernels.resident_tiles import ALIGNED_BACKWARD

    specs = resident.specialisations()
    per_entry = {name: 3 * (2 if name == "float32" else 1) for name in ("float32", "float16", "bfloat16", "float64")}
    kinds = {s.kind for s in specs}
    sixteen = {(k, d, bh) for (k, d, bh) in fits.RESIDENT if d in ("float16", "bfloat16")}
    assert sixteen <= set(ALIGNED_BACKWARD), sixteen - set(ALIGNED_BACKWARD)
    # twice (plain and REGULARISED) where the regularised kernels compile clean
    regularised = {(k, d, bh): (k, d, bh) not in fits.RESIDENT_UNREGULARISED for (k, d, bh) in fits.RESIDENT}
    assert len(specs) == sum((per_entry[d] + ((k, d, bh) in sixteen)) * (1 + regularised[k, d, bh])
                             for (k, d, bh) in fits.RESIDENT if k in kinds)
    assert len({(s.kernel_name, s.kind, s.label, s.config) for s in specs}) == len(specs)
    for kind in KINDS:
        for dtype in ("float32", "float16", "bfloat16"):
            assert any(k == kind and d == dtype for (k, d, _) in fits.RESIDENT), (kind, dtype)
    assert {s.kernel_name for s in specs} == {"resident-forward", "resident-backward"}
    assert len(report.specialisations()) == (len(specialisations()) + len(norm_rows.specialisations()) + len(specs)
                                             + len(resident_norm.specialisations()) + len(cooperative.specialisations()))


@pytest.mark.slow
def test_kernel_report_all_rows_pass():
    """Compiles every row again (about half an hour per arch on two cores): a full-grid test. Every run
    checks the written report instead (tests/test_docs.py: docs/compile-report.md matches the
    current sources and specialisations, and every row in it passes)."""
    out = subprocess.run(
        [sys.executable, "-m", "fastrnn.kernels.report"], env=_env_without_interpreter(),
        capture_output=True, text=True, timeout=1800 * len(report.ARCHS),
    )
    rows = [m for m in (ROW.match(line) for line in out.stdout.splitlines()) if m]
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert len(rows) == len(report.specialisations()) * len(report.ARCHS)
    assert {m.group(1) for m in rows} == {"forward", "backward", "resident-forward", "resident-backward",
                                          "coop-forward", "coop-backward", "coop-reg-forward", "coop-reg-backward",
                                          "norm-forward", "norm-backward", "resident-norm-forward",
                                          "resident-norm-backward"}
    for m in rows:
        regs, spills, shared = int(m.group(6)), int(m.group(7)), int(m.group(8))
        result = m.group(14)
        assert 0 < regs <= report.MAX_REGISTERS, m.group(0)
        if result.startswith(report.NOT_LAUNCHED):
            # persistent entries that do not fit or spill on an arch (every one runs on sm_90), and
            # the step / row configurations a launcher replaces on sm_86 / sm_89 (with the rows
            # of the replacements, on sm_80 / sm_90)
            assert m.group(5) != "sm_90" or m.group(1).startswith("norm-"), m.group(0)
            continue
        assert result.split("  [open:")[0] == "pass", m.group(0)
        assert spills == 0, m.group(0)
        assert 0 <= shared <= report.SHARED_LIMIT[int(m.group(5)[3:])], m.group(0)
        if m.group(1).startswith("coop"):
            assert int(m.group(13)) == 1, m.group(0)  # one grid barrier per step
    assert {m.group(5) for m in rows} == {f"sm_{a}" for a in report.ARCHS} >= {"sm_80", "sm_90"}


def test_report_refuses_under_interpreter():
    """In this (interpreted) process the kernels cannot be compiled: a clear refusal."""
    assert report.main([]) == 2


def test_step_config_is_always_a_reported_config():
    from fastrnn.kernels.recurrent_step import step_config

    assert {step_config(h) for h in range(1, 4097)} <= set(CONFIGS)


def test_resident_choice_is_always_a_reported_entry(monkeypatch):
    """Wherever the tier choice says "resident", the configuration it launches is in the report."""
    import torch

    from fastrnn.backends.triton import tier_for

    monkeypatch.delenv("FASTRNN_TIER", raising=False)
    reported = {(s.kind, s.dtype, s.config) for s in resident.specialisations()}
    count = 0
    for kind in KINDS:
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            for hidden in range(1, 1025):
                if tier_for(kind, hidden, 0, dtype, "cpu") == "resident":
                    fit = fits.resident_fit(kind, dtype, hidden)
                    assert (kind, dtype, fit.forward) in reported and (kind, dtype, fit.backward) in reported
                    count += 1
    assert count > 0


class _Recorder:
    """Stands in for a jitted kernel: records the compile-time choices of each launch."""

    def __init__(self, kernel_name, seen):
        self.kernel_name, self.seen = kernel_name, seen

    def __getitem__(self, grid):
        def launch(*args, num_warps, **constexprs):
            options = tuple(sorted((k, constexprs.pop(k)) for k in ("enable_fp_fusion",) if k in constexprs))
            self.seen.add((self.kernel_name, tuple(sorted(constexprs.items(), key=lambda kv: kv[0])), num_warps,
                           options))

        return launch


@pytest.mark.parametrize("tf32", [False, True], ids=["ieee", "tf32"])
def test_launcher_choices_are_all_in_the_report(monkeypatch, tf32):
    """Every (kernel, constexprs, num_warps) a real step-tier call launches is a listed specialisation."""
    import torch

    from fastrnn.functional import Schedule, recurrent_layer
    from fastrnn.backends import triton as triton_backend
    from fastrnn.kernels import recurrent_step

    seen = set()
    monkeypatch.setattr(triton_backend, "_interpreted", lambda: True)  # the recorders are no interpreter objects
    monkeypatch.setattr(recurrent_step, "recurrent_step_forward_kernel", _Recorder("forward", seen))
    monkeypatch.setattr(recurrent_step, "recurrent_step_backward_kernel", _Recorder("backward", seen))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    monkeypatch.setenv("FASTRNN_TIER", "step")
    for kind, gates in (("LSTM", 4), ("GRU", 3), ("RNN_TANH", 1), ("RNN_RELU", 1)):
        for dtype in (torch.float32, torch.float16):
            for hidden in (3, 16, 33, 40):  # both block configurations, with H (and P) % 8 == 0 and not
                for proj in ((0, 2, 8)[: 3 if hidden > 8 else 2] if kind == "LSTM" else (0,)):
                    state = proj or hidden
                    x = torch.randn(4, 2, dtype=dtype, requires_grad=True)
                    w = [torch.randn(gates * hidden, 2, dtype=dtype), torch.randn(gates * hidden, state, dtype=dtype),
                         None, None, torch.randn(proj, hidden, dtype=dtype) if proj else None]
                    w = [None if t is None else t.requires_grad_() for t in w]
                    h0 = torch.zeros(2, state, dtype=dtype)
                    c0 = torch.zeros(2, hidden, dtype=dtype) if kind == "LSTM" else None
                    y, h_n, c_n = recurrent_layer(kind, x, Schedule.uniform(2, 2), h0, c0, tuple(w), backend="triton")
                    y.float().sum().backward()
                    with torch.no_grad():
                        recurrent_layer(kind, x, Schedule.uniform(2, 2), h0, c0, tuple(w), backend="triton")
    listed = {_key(s) for s in specialisations()}
    assert seen <= listed, seen - listed
    # ...and these calls reach every fp32 (this TF32 setting) and fp16 specialisation of
    # torch's cells (a cell another test module defined has rows too, never launched here).
    wanted = {
        _key(s) for s in specialisations()
        if s.kind in KINDS
        and (s.dtype == torch.float16 or (s.dtype == torch.float32 and s.label.startswith("float32-tf32") == tf32))
    }
    assert seen == wanted, wanted - seen


def _key(s):
    """What a launch records (:class:`_Recorder`): kernel, compile-time arguments, warps and
    the compile options the launch passes besides them."""
    options = tuple(sorted((getattr(s, "options", None) or {}).items()))
    return (s.kernel_name, tuple(sorted(s.constexprs.items(), key=lambda kv: kv[0])), s.config.num_warps, options)


@pytest.mark.parametrize("arch", [90, 86])
@pytest.mark.parametrize("tf32", [False, True], ids=["ieee", "tf32"])
def test_resident_launcher_choices_are_all_in_the_report(monkeypatch, tf32, arch):
    """Every (kernel, constexprs, num_warps) a real resident-tier call launches on a device
    of ``arch`` (the CPU given that arch's shared memory) is a listed specialisation the
    report marks launched on that arch, and these calls reach every such fp32 (this TF32
    setting), fp16 and fp64 one (the REGULARISED ones with a recurrent-dropout scale, where
    the tier runs it)."""
    import torch

    from fastrnn import cells
    from fastrnn.functional import Schedule, recurrent_layer
    from fastrnn.backends import triton as triton_backend
    from fastrnn.backends.triton import policy

    monkeypatch.setattr(policy, "device_limits", lambda device: (arch, fits.SHARED_LIMIT[arch]))

    seen = set()
    monkeypatch.setattr(triton_backend, "_interpreted", lambda: True)  # the recorders are no interpreter objects
    monkeypatch.setattr(resident, "resident_forward_kernel", _Recorder("resident-forward", seen))
    monkeypatch.setattr(resident, "resident_backward_kernel", _Recorder("resident-backward", seen))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    monkeypatch.delenv("FASTRNN_TIER", raising=False)
    monkeypatch.setenv("FASTRNN_SELF_CHECK", "0")
    dtypes = (torch.float32, torch.float16, torch.float64)
    block_sizes = sorted({bh for (_, _, bh) in fits.RESIDENT})
    for kind, gates in (("LSTM", 4), ("GRU", 3), ("RNN_TANH", 1), ("RNN_RELU", 1)):
        for dtype in dtypes:
            # the smallest hidden size of each block size, and one that is a multiple of 8
            # (the forward's H_ALIGNED specialisation)
            for hidden in [h for block_h in block_sizes for h in (block_h // 2 + 1, block_h // 2 + 8)]:
                if triton_backend.tier_for(kind, hidden, 0, dtype, "cpu") != "resident":
                    continue
                x = torch.randn(4, 2, dtype=dtype, requires_grad=True)
                w = [torch.randn(gates * hidden, 2, dtype=dtype), torch.randn(gates * hidden, hidden, dtype=dtype),
                     None, None, None]
                w = [None if t is None else t.requires_grad_() for t in w]
                h0 = torch.zeros(2, hidden, dtype=dtype)
                c0 = torch.zeros(2, hidden, dtype=dtype) if kind == "LSTM" else None
                y, h_n, c_n = recurrent_layer(kind, x, Schedule.uniform(2, 2), h0, c0, tuple(w), backend="triton")
                y.float().sum().backward()
                if fits.resident_regularised(kind, dtype, hidden, arch):
                    cell, sched, scale = cells.get(kind), Schedule.uniform(2, 2), torch.ones(2, hidden, dtype=dtype)
                    xg, w_hh = torch.randn(4, gates * hidden, dtype=dtype), w[1].detach()
                    b_hh = torch.zeros(gates * hidden, dtype=dtype)
                    fwd = triton_backend.forward(cell, xg, w_hh, b_hh, None, h0, c0, sched, False, True,
                                                 recurrent_scale=scale)
                    triton_backend.backward(cell, fwd.saved, w_hh, b_hh, None, h0, c0, fwd.y, torch.ones_like(fwd.y),
                                            torch.zeros_like(h0), c0, sched, False, recurrent_scale=scale)
    listed = {_key(s) for s in resident.specialisations() if report.launched_on(s, arch)}
    assert seen <= listed, seen - listed
    wanted = {
        _key(s) for s in resident.specialisations()
        if (s.dtype in (torch.float16, torch.float64) or (s.dtype == torch.float32 and ("-tf32" in s.label) == tf32))
        and report.launched_on(s, arch)
    }
    assert seen == wanted, wanted - seen


# --------------------------------------------------------------------------------------
# Cooperative tier
# --------------------------------------------------------------------------------------


def test_cooperative_kernels_run_one_warp_per_single_tile():
    """A cooperative kernel whose dots are single 16x16 MMA tiles (16 rows; W_hh streamed gate
    by gate, or a 1-gate slab in the backward) runs one warp; stacked slab dots (M = 64), FMA
    dots (fp32 IEEE), 64-row tiles and a 1-gate slab's forward keep the entry's warps."""
    import torch

    def warps(dtype, tf32, slab, kind, forward, rows=16):
        key = (fits.dtype_name(dtype), "tf32" if tf32 else "ieee", slab)
        cfg = fits.COOPERATIVE[key] if rows == 16 else fits.COOPERATIVE_REGISTERS[key + (rows,)]
        return cooperative.kernel_config(cfg, kind, dtype, tf32, forward).num_warps

    f16, f32 = torch.float16, torch.float32
    for kind in ("LSTM", "GRU", "RNN_TANH"):
        for forward in (True, False):
            assert warps(f16, False, 0, kind, forward) == 1
            assert warps(f32, True, 0, kind, forward) == 1
            assert warps(f32, False, 0, kind, forward) == 4  # FMA: every thread its own outputs
            assert warps(f16, False, 0, kind, forward, rows=64) == 4  # 64x16 over [4, 1]
        assert warps(f16, False, 1024, kind, forward=False) == 1  # the backward streams beside the slab
    for slab in (128, 256):
        assert warps(f16, False, slab, "LSTM", True) == warps(f16, False, slab, "LSTM", False) == 8
        assert warps(f16, False, slab, "RNN_TANH", True) == 8 and warps(f16, False, slab, "RNN_TANH", False) == 1
    assert warps(f16, False, 1024, "LSTM", True) == 8


def test_cooperative_specialisations_are_the_fits_table():
    """Every kind x (forward, backward) x each fits.COOPERATIVE entry and each register
    variant of fits.COOPERATIVE_REGISTERS compiled for GPUs (fp64 is interpreter-only),
    compiled as launched: cooperative grid, H a multiple of 16, the register kernels for
    the register variants."""
    import torch

    specs = cooperative.specialisations()
    gpu_entries = [key for key in fits.COOPERATIVE if key[0] != "float64"]
    gpu_registers = [key for key in fits.COOPERATIVE_REGISTERS if key[0] != "float64"]
    assert {rows for *_, rows in gpu_registers} == {16, 64}  # rows per program of the register variants
    assert len(specs) == len(KINDS) * 2 * (len(gpu_entries) + len(gpu_registers))
    entries = {(name, precision, fits.COOPERATIVE[name, precision, slab]) for name, precision, slab in gpu_entries}
    entries |= {(name, precision, fits.COOPERATIVE_REGISTERS[name, precision, slab, rows])
                for name, precision, slab, rows in gpu_registers}
    # each kernel compiled with the warps it launches with (cooperative.kernel_config)
    assert {(fits.dtype_name(s.dtype), s.constexprs["PRECISION"], s.config) for s in specs} == {
        (name, precision, cooperative.kernel_config(cfg, kind, getattr(torch, name), precision == "tf32", forward))
        for name, precision, cfg in entries for kind in {s.kind for s in specs} for forward in (True, False)}
    kernels = {
        ("forward", False): cooperative.cooperative_forward_kernel,
        ("backward", False): cooperative.cooperative_backward_kernel,
        ("forward", True): cooperative.cooperative_forward_registers_kernel,
        ("backward", True): cooperative.cooperative_backward_registers_kernel,
    }
    for s in specs:
        assert s.options["launch_cooperative_grid"] and s.options["num_stages"] == s.config.num_stages
        assert s.divisible_by_16 == ("H",)
        registers = s.kernel_name.startswith("coop-reg-")
        direction = "forward" if s.kernel_name.endswith("forward") else "backward"
        assert s.config.registers == registers
        assert s.kernel is kernels[direction, registers]
    signature, _, attrs = report.signature_of(specs[0])
    assert attrs[(len(specs[0].pointers) + specs[0].ints.index("H"),)] == [["tt.divisibility", 16]]


def test_shared_memory_limits_per_arch():
    """Per-block limits of the CUDA C++ Programming Guide: 163 KB (8.0), 99 KB (8.6, 8.9),
    227 KB (9.0, 10.0); every reported arch has one."""
    assert {a: fits.SHARED_LIMIT[a] for a in (80, 86, 89, 90, 100)} == {
        80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448}
    assert set(report.ARCHS) <= set(fits.SHARED_LIMIT)


def _plain_backward(spec, arch: int):
    """Why a resident H_ALIGNED backward row is not launched on ``arch`` although its entry
    runs there: the launch picks the plain backward (None: it picks this one)."""
    from fastrnn.kernels.resident_tiles import aligned_backward

    if not (spec.kernel_name.endswith("backward") and spec.constexprs["H_ALIGNED"]):
        return None
    reg = bool(spec.constexprs["REGULARISED"])
    picked = aligned_backward(spec.kind, spec.dtype, spec.config.block_h, reg, arch, fits.SHARED_LIMIT[arch])
    return None if picked else "the plain backward"


def test_rows_not_launched_where_the_tier_choice_refuses_them():
    """A resident entry whose recorded shared memory passes an arch's limit, or that
    fits.RESIDENT_ARCH_MISSES rules out there, is never chosen there (fits.resident_refusal;
    its ``-reg`` rows: fits.resident_regularised): its rows there are "not launched", not
    failed; a cooperative row is launched exactly where the tier choice can pick its entry on
    some hidden size (fits.cooperative_configs); a step or LayerNorm row-kernel row where its
    launcher picks that configuration on the arch (step_config, norm_rows.row_config)."""
    import torch

    from fastrnn.kernels import norm_rows
    from fastrnn.kernels.recurrent_step import step_config

    specs = report.specialisations()
    for spec in specs:
        for arch in report.ARCHS:
            launched = report.launched_on(spec, arch)
            reg = bool(spec.constexprs.get("REGULARISED"))
            if spec.kernel_name.startswith("resident-norm-"):  # (the LayerNorm cells' own table)
                refusal = fits.resident_norm_refusal(spec.kind, spec.config.block_h, spec.dtype, arch,
                                                     fits.SHARED_LIMIT[arch])
                if reg and refusal is None and not fits.resident_norm_regularised(
                        spec.kind, spec.dtype, spec.config.block_h, True, arch):
                    refusal = "regularised"
                refusal = refusal or _plain_backward(spec, arch)
                assert launched == (refusal is None), (spec.kind, spec.label, spec.config, arch, refusal)
            elif spec.kernel_name.startswith("resident-"):
                refusal = fits.resident_refusal(spec.kind, spec.config.block_h, 0, spec.dtype, arch,
                                                fits.SHARED_LIMIT[arch])
                if reg and refusal is None and not fits.resident_regularised(spec.kind, spec.dtype,
                                                                             spec.config.block_h, arch):
                    refusal = "regularised"
                refusal = refusal or _plain_backward(spec, arch)
                assert launched == (refusal is None), (spec.kind, spec.label, spec.config, arch, refusal)
            elif spec.kernel_name.startswith("coop"):
                tf32 = spec.constexprs["PRECISION"] == "tf32"
                hidden = spec.config.slab_k or 16
                forward = spec.kernel_name.endswith("forward")
                chosen = {cooperative.kernel_config(cfg, spec.kind, spec.dtype, tf32, forward)
                          for cfg in fits.cooperative_configs(spec.dtype, hidden, tf32, arch)}
                assert launched == (spec.config in chosen), (spec.label, spec.config, arch)
            elif spec.kernel_name.startswith("norm-"):  # where the launcher picks the row configuration
                save, aligned = spec.constexprs.get("SAVE"), spec.constexprs["H_ALIGNED"]
                hidden = spec.config.block_h if aligned else spec.config.block_h - 1
                picked = norm_rows.row_config(hidden, spec.dtype, arch, spec.kind, save) == spec.config
                wide = save is None and norm_rows.fp32_backward(spec.kind, hidden, spec.dtype, arch)
                assert launched == (picked and not wide), (spec.kernel_name, spec.label, spec.config, arch)
            else:  # the step tier: where step_config picks the configuration for some H
                tf32, aligned = spec.constexprs["PRECISION"] == "tf32", spec.constexprs["H_ALIGNED"]
                picked = {step_config(h, spec.kind, spec.dtype, tf32, aligned, arch, spec.kernel_name)
                          for h in (16, 17)}
                assert launched == (spec.config in picked), (spec.kind, spec.label, spec.config, arch)
    big = [s for s in specs if s.kernel_name.startswith("resident-") and max(s.shared_limit.values()) > 101376]
    assert big and all(not report.launched_on(s, 86) and report.launched_on(s, 90) for s in big)
    assert any(s.dtype == torch.float16 for s in big)


def test_result_and_assertion_columns():
    row = report._row(specialisations()[0], 80)
    row.update(regs=90, spills=0, shared=1024, ok=True, open="no_scalar16: 2 scalar 16-bit global loads")
    assert report.result_of(row) == "pass"
    assert report.assertion_failures([row])["no_scalar16"] == [f"{row['kernel']} {row['dtype']} {row['config']} sm_80"]
    row.update(ok=False, error="tf32_rounded: 2 TF32 dot operands not rounded (cvt.rna)")
    assert report.result_of(row).startswith("FAIL tf32_rounded")
    row.update(launched=False, error="shared 106496 > 101376")
    assert report.result_of(row) == "not launched on this arch (shared 106496 > 101376)"
    assert ROW.match(report._table_line(dict(row, ld_bytes=10, w_bytes=0, mma=4, bar_sync=3, grid_barriers=0)))


def test_expected_step_time_from_a_profile():
    """The model by hand: 132 SMs; 1 MB through L2 at 9.37 TB/s / 132; 1 GFLOP fp16 at
    989.4 TFLOPS / 132; one barrier at the assumed latency."""
    from fastrnn.kernels import expected

    h100 = expected.H100
    profile = dict(global_bytes=1 << 20, flops=1e9, precision="fp16", grid_barriers=1)
    t = expected.expected_step_us(profile, h100)
    l2 = (1 << 20) / (5120 * 1.83e9 / 132) * 1e6
    mma = 1e9 / (989.4e12 / 132) * 1e6
    assert t["l2_us"] == pytest.approx(l2) and t["mma_us"] == pytest.approx(mma)
    assert t["step_us"] == pytest.approx(max(l2, mma) + expected.GRID_BARRIER_US)
    slower = expected.expected_step_us(dict(profile, precision="tf32"), h100)
    assert slower["mma_us"] == pytest.approx(2 * t["mma_us"])
    assert expected.expected_step_us(profile, expected.A100)["step_us"] > t["step_us"]


def test_anchor_choices_are_rows_of_the_report():
    """Every anchor shape's tier choice names a configuration the report compiles."""
    from fastrnn.kernels import expected

    keys = {(f"{s.kernel_name}:{s.kind}", s.label, s.config.label) for s in report.specialisations()}
    for kind in expected.ANCHOR_KINDS:
        for batch, _, hidden in expected.ANCHORS:
            for label, (name, tf32) in expected.ANCHOR_DTYPES.items():
                for gpu in expected.GPUS:
                    tier, fwd, bwd, configs, _, _ = expected.launch_choice(kind, batch, hidden, name, tf32, gpu)
                    assert tier in ("resident", "cooperative")
                    assert (f"{fwd}:{kind}", label, configs[0]) in keys, (kind, batch, hidden, label, gpu.name)
                    assert (f"{bwd}:{kind}", label, configs[1]) in keys, (kind, batch, hidden, label, gpu.name)



class _CoopRecorder:
    """Stands in for a cooperative kernel: records the compile-time choices of each launch."""

    def __init__(self, kernel_name, seen):
        self.kernel_name, self.seen = kernel_name, seen

    def __getitem__(self, grid):
        def launch(*args, num_warps, num_stages, launch_cooperative_grid, maxnreg, enable_fp_fusion, **constexprs):
            assert launch_cooperative_grid and maxnreg == 255 and enable_fp_fusion == ENABLE_FP_FUSION
            pointers, ints = ((cooperative.FORWARD_POINTERS, cooperative.FORWARD_INTS) if "forward" in self.kernel_name
                              else (cooperative.BACKWARD_POINTERS, cooperative.BACKWARD_INTS))
            assert len(args) == len(pointers) + len(ints)
            assert args[len(pointers) + ints.index("H")] % 16 == 0  # as the report compiles it
            key = tuple(sorted(constexprs.items(), key=lambda kv: kv[0]))
            self.seen.add((self.kernel_name, key, num_warps, num_stages))

        return launch


@pytest.mark.parametrize("arch", [90, 86])
@pytest.mark.parametrize("tf32", [False, True], ids=["ieee", "tf32"])
def test_cooperative_launcher_choices_are_all_in_the_report(monkeypatch, tf32, arch):
    """Every (kernel, constexprs, warps, stages) a cooperative call launches on a GPU of
    ``arch`` (here: a CPU call given that GPU's tier choice and shared memory) is a listed
    specialisation the report marks launched on that arch, and these calls reach every such
    fp32 (this TF32 setting) and fp16 one: one hidden size per slab of the table and one past
    them (streamed), each on twice as many SMs as it has slices: batches of 2 (the register
    variant of 16 rows), 40 (of 64 rows where there is one: 1 group) and 200 (the tiled
    kernel)."""
    import torch

    from fastrnn.backends import triton as triton_backend
    from fastrnn.backends.triton import cooperative as coop_launcher
    from fastrnn.backends.triton import policy
    from fastrnn.functional import Schedule, recurrent_layer

    monkeypatch.setattr(policy, "device_limits", lambda device: (arch, fits.SHARED_LIMIT[arch]))
    seen = set()
    monkeypatch.setattr(triton_backend, "_interpreted", lambda: True)  # the recorders are no interpreter objects
    for name in ("forward", "backward"):
        monkeypatch.setattr(cooperative, f"cooperative_{name}_kernel", _CoopRecorder(f"coop-{name}", seen))
        monkeypatch.setattr(cooperative, f"cooperative_{name}_registers_kernel", _CoopRecorder(f"coop-reg-{name}", seen))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    monkeypatch.setenv("FASTRNN_TIER", "cooperative")
    for kind, gates in (("LSTM", 4), ("GRU", 3), ("RNN_TANH", 1), ("RNN_RELU", 1)):
        for dtype in (torch.float32, torch.float16):
            for hidden in (96, 160, 288, 544, 1040):  # slabs 128 .. 1024, then the stream
                monkeypatch.setattr(coop_launcher, "sm_count", lambda device, h=hidden: 2 * -(-h // 16))
                for batch in (2, 40, 200):
                    x = torch.randn(2 * batch, 2, dtype=dtype, requires_grad=True)
                    w = [torch.randn(gates * hidden, 2, dtype=dtype),
                         torch.randn(gates * hidden, hidden, dtype=dtype), None, None, None]
                    w = [None if t is None else t.requires_grad_() for t in w]
                    h0 = torch.zeros(batch, hidden, dtype=dtype)
                    c0 = torch.zeros(batch, hidden, dtype=dtype) if kind == "LSTM" else None
                    y, h_n, c_n = recurrent_layer(kind, x, Schedule.uniform(2, batch), h0, c0, tuple(w),
                                                  backend="triton")
                    y.float().sum().backward()

    def key(s):
        return (s.kernel_name, tuple(sorted(s.constexprs.items(), key=lambda kv: kv[0])), s.config.num_warps,
                s.config.num_stages)

    listed = {key(s) for s in cooperative.specialisations() if report.launched_on(s, arch)}
    assert seen <= listed, seen - listed
    wanted = {
        key(s) for s in cooperative.specialisations()
        if (s.dtype == torch.float16 or (s.dtype == torch.float32 and s.label.endswith("-tf32") == tf32))
        and report.launched_on(s, arch)
    }
    assert seen == wanted, wanted - seen
