"""The ahead-of-time compile report: every specialisation of the step, resident and
cooperative tiers compiles for sm_80 and sm_90 with no spills and shared memory within the
per-block limit (and, for the resident tier, within what kernels/fits.py records, which
the tier choice reads; for the cooperative tier, tiled kernels and register variants, with
launch_cooperative_grid and a release/acquire grid barrier in the PTX).

The report compiles real GPU code, which needs Triton's interpreter off: it runs in a
subprocess whose environment drops the interpreter switch that tests/conftest.py sets.
About 1-2 s per compile (2 processes) on a cold Triton cache.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from fastrnn import cells
from fastrnn.kernels import cooperative, fits, report, resident
from fastrnn.kernels.precision import ENABLE_FP_FUSION
from fastrnn.kernels.recurrent_step import CONFIGS, specialisations

KINDS = tuple(c.name for c in cells.BUILTIN)

ROW = re.compile(
    r"^((?:resident-|coop-reg-|coop-)?(?:forward|backward)):(\S+)\s+(\S+)\s+(\S+)\s+(sm_\d+)\s+(-?\d+)\s+(-?\d+)"
    r"\s+(-?\d+)\s+(.*)$"
)


def _env_without_interpreter():
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_specialisations_cover_the_launch_choices():
    specs = specialisations()
    # forward: LSTM/GRU x SAVE + 2 RNNs; backward: LSTM x DM_GIVEN + 3 -> 11 per dtype-config,
    # dtypes fp32, fp32-tf32, fp16, bf16 (torch's cells; a cell defined beside them adds its rows).
    assert {s.kind for s in specs} == {c.name for c in cells.defined() if c.runs_on_triton} >= set(KINDS)
    assert len([s for s in specs if s.kind in KINDS]) == 11 * len(CONFIGS) * 4
    assert len({(s.kernel_name, s.kind, s.label, s.config) for s in specs}) == len(specs)


def test_resident_specialisations_are_the_fits_table():
    """Forward + backward of every fits.RESIDENT entry, fp32 twice (IEEE and TF32), and
    every kind has resident entries in fp32, fp16 and bf16."""
    specs = resident.specialisations()
    per_entry = {name: 2 * (2 if name == "float32" else 1) for name in ("float32", "float16", "bfloat16", "float64")}
    assert len(specs) == sum(per_entry[d] for (_, d, _) in fits.RESIDENT)
    assert len({(s.kernel_name, s.kind, s.label, s.config) for s in specs}) == len(specs)
    for kind in KINDS:
        for dtype in ("float32", "float16", "bfloat16"):
            assert any(k == kind and d == dtype for (k, d, _) in fits.RESIDENT), (kind, dtype)
    assert {s.kernel_name for s in specs} == {"resident-forward", "resident-backward"}
    assert len(report.specialisations()) == len(specialisations()) + len(specs) + len(cooperative.specialisations())


def test_kernel_report_all_rows_pass():
    out = subprocess.run(
        [sys.executable, "-m", "fastrnn.kernels.report"], env=_env_without_interpreter(),
        capture_output=True, text=True, timeout=900,
    )
    rows = [m for m in (ROW.match(line) for line in out.stdout.splitlines()) if m]
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert len(rows) == len(report.specialisations()) * len(report.ARCHS)
    assert {m.group(1) for m in rows} == {"forward", "backward", "resident-forward", "resident-backward",
                                          "coop-forward", "coop-backward", "coop-reg-forward", "coop-reg-backward"}
    for m in rows:
        regs, spills, shared = int(m.group(6)), int(m.group(7)), int(m.group(8))
        assert m.group(9) == "pass", m.group(0)
        assert 0 < regs <= report.MAX_REGISTERS, m.group(0)
        assert spills == 0, m.group(0)
        assert 0 <= shared <= report.SHARED_LIMIT[int(m.group(5)[3:])], m.group(0)
    assert {m.group(5) for m in rows} == {"sm_80", "sm_90"}


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
            self.seen.add((self.kernel_name, tuple(sorted(constexprs.items(), key=lambda kv: kv[0])), num_warps))

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
            for hidden in (3, 40):
                for proj in ((0, 2) if kind == "LSTM" else (0,)):
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
    listed = {
        (s.kernel_name, tuple(sorted(s.constexprs.items(), key=lambda kv: kv[0])), s.config.num_warps)
        for s in specialisations()
    }
    assert seen <= listed, seen - listed
    # ...and these calls reach every fp32 (this TF32 setting) and fp16 specialisation of
    # torch's cells (a cell another test module defined has rows too, never launched here).
    wanted = {
        (s.kernel_name, tuple(sorted(s.constexprs.items(), key=lambda kv: kv[0])), s.config.num_warps)
        for s in specialisations()
        if s.kind in KINDS
        and (s.dtype == torch.float16 or (s.dtype == torch.float32 and s.label.startswith("float32-tf32") == tf32))
    }
    assert seen == wanted, wanted - seen


def _key(s):
    return (s.kernel_name, tuple(sorted(s.constexprs.items(), key=lambda kv: kv[0])), s.config.num_warps)


@pytest.mark.parametrize("tf32", [False, True], ids=["ieee", "tf32"])
def test_resident_launcher_choices_are_all_in_the_report(monkeypatch, tf32):
    """Every (kernel, constexprs, num_warps) a real resident-tier call launches is a listed
    specialisation, and these calls reach every fp32 (this TF32 setting), fp16 and fp64 one."""
    import torch

    from fastrnn.functional import Schedule, recurrent_layer
    from fastrnn.backends import triton as triton_backend

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
            for block_h in block_sizes:
                hidden = block_h // 2 + 1  # the smallest hidden size of that block size
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
    listed = {_key(s) for s in resident.specialisations()}
    assert seen <= listed, seen - listed
    wanted = {
        _key(s) for s in resident.specialisations()
        if s.dtype in (torch.float16, torch.float64) or (s.dtype == torch.float32 and s.label.endswith("-tf32") == tf32)
    }
    assert seen == wanted, wanted - seen


# --------------------------------------------------------------------------------------
# Cooperative tier
# --------------------------------------------------------------------------------------


def test_cooperative_specialisations_are_the_fits_table():
    """Every kind x (forward, backward) x each fits.COOPERATIVE entry and each register
    variant of fits.COOPERATIVE_REGISTERS compiled for GPUs (fp64 is interpreter-only),
    compiled as launched: cooperative grid, H a multiple of 16, the register kernels for
    the register variants."""
    specs = cooperative.specialisations()
    gpu_entries = [key for key in fits.COOPERATIVE if key[0] != "float64"]
    gpu_registers = [key for key in fits.COOPERATIVE_REGISTERS if key[0] != "float64"]
    assert {rows for *_, rows in gpu_registers} == {16, 64}  # rows per program of the register variants
    assert len(specs) == len(KINDS) * 2 * (len(gpu_entries) + len(gpu_registers))
    assert {(fits.dtype_name(s.dtype), s.constexprs["PRECISION"], s.config) for s in specs} == {
        (name, precision, fits.COOPERATIVE[name, precision, slab]) for name, precision, slab in gpu_entries
    } | {(name, precision, fits.COOPERATIVE_REGISTERS[name, precision, slab, rows])
         for name, precision, slab, rows in gpu_registers}
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


def test_barrier_ptx_check_needs_every_part():
    """The PTX check of the report, on the barrier lines of the compiled kernels (sm_80 and
    sm_90 forms): complete -> no problem; each part removed -> that problem."""
    parts = {
        "red.global.gpu.release.add.u32 [ %rd7 + 0 ], %r9;": "release",
        "mov.u64 %rd2, %globaltimer;": "globaltimer",
        "fence.acq_rel.gpu;": "acquire",
        "bar.sync 0;": "bar.sync",
    }
    ptx = "\n".join(parts)
    assert cooperative.barrier_ptx_problems(ptx) == []
    assert cooperative.barrier_ptx_problems(ptx.replace("fence.acq_rel.gpu", "fence.acquire.gpu")) == []
    for line, what in parts.items():
        problems = cooperative.barrier_ptx_problems(ptx.replace(line, ""))
        assert len(problems) == 1 and what in problems[0], (line, problems)
    no_release = ["no gpu-scope release atomic add"]
    assert cooperative.barrier_ptx_problems(ptx.replace(".release.", ".relaxed.")) == no_release
    assert cooperative.barrier_ptx_problems(ptx.replace("acq_rel.gpu", "acq_rel.cta")) == [
        "no gpu-scope acquire after the poll"
    ]



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


@pytest.mark.parametrize("tf32", [False, True], ids=["ieee", "tf32"])
def test_cooperative_launcher_choices_are_all_in_the_report(monkeypatch, tf32):
    """Every (kernel, constexprs, warps, stages) a cooperative call launches on a GPU (here:
    a CPU call given the GPU's tier choice, on 12 SMs) is a listed specialisation, and these
    calls reach every fp32 (this TF32 setting) and fp16 one: one hidden size per slab of the
    table and one past them (streamed), each on twice as many SMs as it has slices: batches
    of 2 (the register variant of 16 rows), 40 (of 64 rows where there is one: 1 group) and
    200 (the tiled kernel)."""
    import torch

    from fastrnn.backends import triton as triton_backend
    from fastrnn.backends.triton import cooperative as coop_launcher
    from fastrnn.functional import Schedule, recurrent_layer

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

    listed = {key(s) for s in cooperative.specialisations()}
    assert seen <= listed, seen - listed
    wanted = {
        key(s) for s in cooperative.specialisations()
        if s.dtype == torch.float16 or (s.dtype == torch.float32 and s.label.endswith("-tf32") == tf32)
    }
    assert seen == wanted, wanted - seen
