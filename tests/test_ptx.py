"""The PTX reader (fastrnn.kernels.ptx) and the TF32 / FP-fusion pins (fastrnn.kernels.precision).

Compiled code comes from one subprocess with Triton's interpreter off (tests/conftest.py
turns it on for this process): tests/ptx_kernels.py compiles a small kernel with the grid
barrier of the cooperative tier and variants of it, TF32 dot kernels with and without
``tf32_round``, an FMA kernel under three fusion settings and three real cooperative
kernels, for sm_80 and sm_90. About 15 s with a warm Triton cache, 1-2 min cold.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastrnn.kernels import precision
from fastrnn.kernels.ptx import (Threads, barrier_problems, parse, scalar_16bit_global_loads, static_profile,
                                 tf32_mma_unrounded)
from fastrnn.kernels.ttgir import tf32_dot_unrounded

ARCHS = ("sm80", "sm90")


@pytest.fixture(scope="module")
def ptx(tmp_path_factory):
    out = tmp_path_factory.mktemp("ptx") / "ptx.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_DEFAULT_FP_FUSION",
                                                            "TRITON_FORCE_DISABLE_FP_FUSION")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("ptx_kernels.py")), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def _lines_removed(text: str, start: str, stop: str | None, what: str = "bar.sync") -> str:
    """``text`` without the ``what`` lines between the last line containing ``start`` before
    the first line containing ``stop`` (the end when None) and that line."""
    lines = text.splitlines()
    end = next(i for i, line in enumerate(lines) if stop in line) if stop else len(lines)
    begin = max(i for i, line in enumerate(lines[:end]) if start in line)
    kept = [line for i, line in enumerate(lines) if not (begin < i < end and what in line)]
    assert len(kept) < len(lines), (start, stop)
    return "\n".join(kept)


# --------------------------------------------------------------------------------------
# The grid barrier
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_correct_barrier_passes(ptx, arch):
    code = ptx[f"ring-correct-{arch}"]
    assert barrier_problems(code) == []
    # the facts the check stands on are in this code
    assert "red.global.gpu.release.add" in code and "%globaltimer" in code
    assert ("fence.acquire.gpu" if arch == "sm90" else "fence.acq_rel.gpu") in code


@pytest.mark.parametrize("arch", ARCHS)
def test_release_by_every_thread_is_rejected(ptx, arch):
    problems = barrier_problems(ptx[f"ring-release_by_every_thread-{arch}"])
    assert len(problems) == 1 and "the release" in problems[0] and "may run on 128 threads, not one" in problems[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_no_barrier_before_release_is_rejected(ptx, arch):
    """The compiled correct kernel with the bar.sync between its global store and its
    release deleted (Triton 3.9 emits its own bar.sync before a scalar atomic, so the source
    omission alone does not give this code: see the next test)."""
    code = _lines_removed(ptx[f"ring-correct-{arch}"], "st.global", "red.global.gpu.release")
    problems = barrier_problems(code)
    assert len(problems) == 1, problems
    assert re.search(r"global store `st\.global\.b32 .*` reaches the release `@%p\d+ red\.global\.gpu\.release"
                     r"\.add\.u32 .*` with no bar\.sync on the way", problems[0]), problems


@pytest.mark.parametrize("arch", ARCHS)
def test_no_barrier_after_acquire_is_rejected(ptx, arch):
    """The compiled correct kernel with every bar.sync after its acquire fence deleted
    (including the one of the poll's broadcast through shared memory)."""
    fence = "fence.acquire.gpu" if arch == "sm90" else "fence.acq_rel.gpu"
    problems = barrier_problems(_lines_removed(ptx[f"ring-correct-{arch}"], fence, None))
    assert len(problems) == 1, problems
    assert re.search(rf"the acquire `{re.escape(fence)}` reaches the global load `ld\.global\.b32 .*` with no "
                     r"bar\.sync on the way", problems[0]), problems


@pytest.mark.parametrize("arch", ARCHS)
def test_source_omissions_are_covered_by_tritons_own_barriers(ptx, arch):
    """Triton 3.9 puts a bar.sync before the scalar release (memory-barrier analysis) and one
    after the poll (its result is broadcast through shared memory), so a grid barrier that
    leaves out the explicit ``tl.debug_barrier`` still compiles to a correct one: one bar.sync
    fewer, no problem. The explicit calls keep it correct if a Triton drops its own."""
    correct = static_profile(ptx[f"ring-correct-{arch}"])["ring_kernel"]["inside"]["bar.sync"]
    for variant in ("no_bar_before_release", "no_bar_after_acquire"):
        code = ptx[f"ring-{variant}-{arch}"]
        assert static_profile(code)["ring_kernel"]["inside"]["bar.sync"] == correct - 1
        assert barrier_problems(code) == []


@pytest.mark.parametrize("arch", ARCHS)
def test_poll_needs_its_time_limit_and_an_acquire(ptx, arch):
    code = ptx[f"ring-correct-{arch}"]
    fence = "fence.acquire.gpu" if arch == "sm90" else "fence.acq_rel.gpu"
    untimed = "\n".join(line for line in code.splitlines() if "%globaltimer" not in line)
    assert any("is not in a loop bounded by %globaltimer" in p for p in barrier_problems(untimed))
    assert barrier_problems(code.replace(fence, "fence.acq_rel.cta")) == [
        "ring_kernel: no gpu-scope acquire after the poll (fence.acquire.gpu / fence.acq_rel.gpu / ld.acquire)"]
    assert barrier_problems(code.replace(".release.", ".relaxed.")) == [
        "ring_kernel: no grid-barrier release (a gpu-scope release atomic add)"]


@pytest.mark.parametrize("name", ["coop-forward-float16", "coop-reg-backward-float32-tf32", "coop-backward-bfloat16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_cooperative_kernels_pass(ptx, name, arch):
    code = ptx[f"{name}-{arch}"]
    assert barrier_problems(code) == []
    (profile,) = static_profile(code).values()
    assert profile["loop"] is not None and profile["inside"]["release"] == 1 and profile["outside"]["release"] == 0
    assert profile["inside"]["mma.sync"] > 0  # the recurrent GEMM runs in the time loop


def test_thread_sets_follow_the_predicate():
    code = """
.visible .entry k(
\t.param .u64 k_param_0,
\t.param .u32 k_param_1
)
.reqntid 128
{
\tld.param.b64 \t%rd1, [k_param_0];
\tld.param.b32 \t%r5, [k_param_1];
\tmov.u32 \t%r1, %tid.x;
\tand.b32 \t%r2, %r1, 31;
\tshr.u32 \t%r3, %r1, 5;
\tor.b32 \t%r4, %r2, %r3;
\tsetp.eq.b32 \t%p1, %r4, 0;
\tsetp.eq.b32 \t%p2, %r2, 0;
\tsetp.ne.b32 \t%p3, %r5, 7;
\tand.pred \t%p4, %p1, %p3;
\t@%p1 st.global.b32 [ %rd1 + 0 ], %r1;
\t@%p2 st.global.b32 [ %rd1 + 4 ], %r1;
\t@%p4 st.global.b32 [ %rd1 + 8 ], %r1;
\t@!%p1 bra \t$L__BB0_2;
\tst.global.b32 [ %rd1 + 12 ], %r1;
$L__BB0_2:
\tst.global.b32 [ %rd1 + 16 ], %r1;
\tret;
}
"""
    (k,) = parse(code)
    threads = Threads(k)
    stores = [ins for ins in k.instrs if ins.opcode.startswith("st.global")]
    assert [threads.of(s).bit_count() for s in stores] == [1, 4, 1, 1, 128]
    assert threads.of(stores[0]) == 1  # thread 0


# --------------------------------------------------------------------------------------
# Profiles and patterns
# --------------------------------------------------------------------------------------


def test_scalar_16bit_loads():
    code = """
.visible .entry k(.param .u64 k_param_0)
{
\tld.param.b64 %rd1, [k_param_0];
\tld.global.b16 { %rs1 }, [ %rd1 + 0 ];
\tld.global.nc.u16 %rs2, [ %rd1 + 2 ];
\tld.global.v4.b16 { %rs3, %rs4, %rs5, %rs6 }, [ %rd1 + 8 ];
\tld.global.b32 %r1, [ %rd1 + 16 ];
\tld.shared.b16 %rs7, [ %r1 + 0 ];
\tret;
}
"""
    assert scalar_16bit_global_loads(code) == 2
    (profile,) = static_profile(code).values()
    assert profile["loop"] is None and profile["outside"] == {"ld.global.2B": 2, "ld.global.8B": 1, "ld.global.4B": 1}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("m", [16, 64])
def test_tf32_round_in_compiled_code(ptx, arch, m):
    rounded, raw = ptx[f"tf32-rounded-m{m}-{arch}"], ptx[f"tf32-raw-m{m}-{arch}"]
    mma = "wgmma.mma_async" if (arch, m) == ("sm90", 64) else "mma.sync"
    assert re.search(rf"{mma}\.\S*tf32", rounded) and re.search(rf"{mma}\.\S*tf32", raw)
    assert "cvt.rna.tf32.f32" in rounded and "cvt.rna.tf32.f32" not in raw
    assert tf32_mma_unrounded(rounded) == []
    flagged = tf32_mma_unrounded(raw)
    count = raw.count(mma + ".")
    assert len(flagged) == 2 * count  # A and B of every MMA
    assert all("is not rounded by cvt.rna.tf32.f32" in p for p in flagged)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("m", [16, 64])
def test_tf32_dot_unrounded_in_ttgir(ptx, arch, m):
    assert tf32_dot_unrounded(ptx[f"tf32-rounded-m{m}-{arch}:ttgir"]) == []
    flagged = tf32_dot_unrounded(ptx[f"tf32-raw-m{m}-{arch}:ttgir"])
    assert [p.split(" (")[0] for p in flagged] == ["operand A", "operand B"], flagged


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rounded", ["w1h1", "w0h1", "w1h0"])
def test_tf32_dot_unrounded_follows_shared_memory_through_a_loop(ptx, arch, rounded):
    """W loaded once before a time loop (kept in shared memory), h copied into a pipelined
    shared buffer each step (``cp.async``): the TTGIR check follows each buffer, whichever
    of them is rounded. (The PTX check cannot tell the two buffers apart here.)"""
    flagged = [p.split(" (")[0] for p in tf32_dot_unrounded(ptx[f"tf32-loop-{rounded}-{arch}:ttgir"])]
    assert flagged == {"w1h1": [], "w0h1": ["operand A"], "w1h0": ["operand B"]}[rounded]
    assert "cp.async" in ptx[f"tf32-loop-{rounded}-{arch}"]


@pytest.mark.parametrize("arch", ARCHS)
def test_tf32_cooperative_kernel_operands_are_found(ptx, arch):
    """The TF32 cooperative kernel of this tree compiles its recurrent GEMM to TF32 dots;
    the check finds each of them (rounded or not: which is the kernels' business)."""
    ttgir = ptx[f"coop-reg-backward-float32-tf32-{arch}:ttgir"]
    dots = len(re.findall(r"= (?:tt\.dot|ttng\.warp_group_dot) ", ttgir))
    assert dots > 0 and len(tf32_dot_unrounded(ttgir)) <= 2 * dots
    assert tf32_dot_unrounded(ptx[f"coop-forward-float16-{arch}:ttgir"]) == []  # no TF32 dot in fp16


# --------------------------------------------------------------------------------------
# tf32_round in the interpreter, FP fusion
# --------------------------------------------------------------------------------------


def _tf32_reference(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> TF32 by value: round the magnitude to 10 fraction bits, ties away from zero,
    in float64 (exact); overflow to infinity; infinities and NaNs unchanged."""
    a = x.double().abs()
    _, exp = torch.frexp(a)
    ulp = torch.ldexp(torch.ones_like(a), (exp - 1).clamp(min=-126) - 10)
    r = torch.floor(a / ulp + 0.5) * ulp
    out = torch.where(torch.isfinite(a), r, a).float()  # 2**128 -> inf
    return torch.where(x.signbit(), -out, out)


def _bits(*values) -> torch.Tensor:
    return torch.tensor([v - (1 << 32) if v >= 1 << 31 else v for v in values], dtype=torch.int32).view(torch.float32)


def test_tf32_round_bit_form_matches_round_to_nearest_ties_away():
    from ptx_kernels import tf32_round_kernel

    assert not precision.TF32_ROUND_ASM  # this process runs Triton's interpreter
    g = torch.Generator().manual_seed(1)
    random = torch.randn(4000, generator=g) * torch.exp2(torch.randint(-60, 60, (4000,), generator=g).float())
    ties = _bits(0x3F801000, 0xBF801000, 0x3F803000, 0x3FFFF000, 0xBFFFF000, 0x00001000, 0x007FF000, 0x80003000)
    specials = _bits(0x7F7FFFFF, 0xFF7FFFFF, 0x7F7FEFFF, 0x7F7FF000, 0x00000001, 0x80000FFF, 0x00400FFF, 0x0)
    x = torch.cat([random, ties, specials, torch.tensor([-0.0, float("inf"), -float("inf"), 1.0, -1.5])])
    y = torch.empty_like(x)
    tf32_round_kernel[(triton_cdiv(x.numel(), 256),)](x, y, x.numel(), BLOCK=256,
                                                        enable_fp_fusion=precision.ENABLE_FP_FUSION)
    want = _tf32_reference(x)
    assert torch.equal(y.view(torch.int32), want.view(torch.int32))
    assert (y.view(torch.int32) & 0x1FFF).eq(0).all()
    # ties go away from zero, a carry moves into the exponent, the largest finite fp32 overflows
    assert y[len(random):len(random) + 5].tolist() == [1 + 2**-10, -(1 + 2**-10), 1 + 2**-9, 2.0, -2.0]
    assert y[len(random) + len(ties)].item() == float("inf")


def test_tf32_round_nan_keeps_the_top_bits():
    """NaN: no rounding add, the low 13 bits cleared (what cvt.rna.tf32.f32 compiles to)."""
    from ptx_kernels import tf32_round_kernel

    x = _bits(0x7FC00000, 0xFFC00001, 0x7F802001)
    y = torch.empty_like(x)
    tf32_round_kernel[(1,)](x, y, 3, BLOCK=4)
    assert y.view(torch.int32).tolist() == _bits(0x7FC00000, 0xFFC00000, 0x7F802000).view(torch.int32).tolist()
    assert y.isnan().all()


def test_inline_asm_does_not_run_in_the_interpreter():
    """Why tf32_round needs its compile-time switch: the interpreter refuses inline asm."""
    import triton
    import triton.language as tl

    @triton.jit
    def asm_kernel(x_ptr, y_ptr):
        tl.store(y_ptr, precision.tf32_round_asm(tl.load(x_ptr)))

    x = torch.ones(1)
    with pytest.raises(Exception, match="inline_asm not supported"):
        asm_kernel[(1,)](x, torch.empty_like(x))


def test_fp_fusion_pin_is_todays_default(ptx):
    """Compiled with ``enable_fp_fusion=ENABLE_FP_FUSION``: the same PTX as Triton 3.9's
    default (an FMA); without fusion the multiply and the add stay apart."""
    assert precision.ENABLE_FP_FUSION is True
    assert ptx["fma-pinned"] == ptx["fma-default"]
    assert "fma.rn.f32" in ptx["fma-pinned"]
    assert "fma.rn.f32" not in ptx["fma-unfused"] and "mul.rn.f32" in ptx["fma-unfused"]


def test_fp_fusion_keyword_is_ignored_by_the_interpreter():
    from ptx_kernels import fma_kernel

    x, y, z = (torch.randn(128) for _ in range(3))
    out = torch.empty(128)
    fma_kernel[(1,)](x, y, z, out, BLOCK=128, enable_fp_fusion=precision.ENABLE_FP_FUSION)
    torch.testing.assert_close(out, x * y + z)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------------------
# The compile report's assertions (fastrnn.kernels.report_checks) on compiled and synthetic code
# --------------------------------------------------------------------------------------


class _Spec:
    """The fields of a tier's Specialisation that the report's checks read."""

    def __init__(self, kernel_name="coop-forward", dtype=torch.float16, label="float16", slab_k=0, **extra):
        from fastrnn.kernels.fits import CoopConfig

        self.kernel_name, self.dtype, self.label = kernel_name, dtype, label
        self.config = CoopConfig(16, 16, 32, 4, 3, slab_k)
        for k, v in extra.items():
            setattr(self, k, v)


_EMPTY_TTGIR = "module {\n  tt.func public @k() {\n    tt.return\n  }\n}\n"


def _failures(spec, code, ir=_EMPTY_TTGIR):
    from fastrnn.kernels import report_checks

    return report_checks.analyse(spec, {"ptx": code, "ttgir": ir})["failures"]


@pytest.mark.parametrize("arch", ARCHS)
def test_report_barrier_assertion(ptx, arch):
    """The report's barrier assertion is the control-flow check: the correct ring barrier
    passes, the three broken variants fail it."""
    spec = _Spec(dtype=torch.float32, label="float32")
    assert "barrier" not in _failures(spec, ptx[f"ring-correct-{arch}"])
    fence = "fence.acquire.gpu" if arch == "sm90" else "fence.acq_rel.gpu"
    broken = {
        "release by every thread": ptx[f"ring-release_by_every_thread-{arch}"],
        "no bar.sync before the release": _lines_removed(ptx[f"ring-correct-{arch}"], "st.global",
                                                          "red.global.gpu.release"),
        "no bar.sync after the acquire": _lines_removed(ptx[f"ring-correct-{arch}"], fence, None),
    }
    for what, code in broken.items():
        assert "barrier" in _failures(spec, code), what
    assert _failures(spec, "") == {"barrier": "no kernel (.entry) in the PTX"}
    # not a cooperative kernel: no barrier asked for
    assert "barrier" not in _failures(_Spec("resident-forward", torch.float32, "float32"), ptx[f"ring-correct-{arch}"])


def test_report_scalar16_assertion():
    code = """
.visible .entry k(.param .u64 k_param_0)
{
\tld.param.b64 %rd1, [k_param_0];
\tld.global.b16 { %rs1 }, [ %rd1 + 0 ];
\tld.global.v4.b16 { %rs3, %rs4, %rs5, %rs6 }, [ %rd1 + 8 ];
\tret;
}
"""
    vector = code.replace("\tld.global.b16 { %rs1 }, [ %rd1 + 0 ];\n", "")
    assert "no_scalar16" in _failures(_Spec("resident-forward", torch.float16, "float16"), code)
    assert "no_scalar16" in _failures(_Spec("resident-forward", torch.bfloat16, "bfloat16"), code)
    assert "no_scalar16" not in _failures(_Spec("resident-forward", torch.float16, "float16"), vector)
    assert "no_scalar16" not in _failures(_Spec("resident-forward", torch.float32, "float32"), code)  # 32-bit kernel


_TWO_BYTE_TTGIR = """
#blocked = #ttg.blocked<{sizePerThread = [1, 1], threadsPerWarp = [2, 16], warpsPerCTA = [8, 1], order = [1, 0]}>
#blocked1 = #ttg.blocked<{sizePerThread = [1, 2], threadsPerWarp = [4, 8], warpsPerCTA = [4, 1], order = [1, 0]}>
module attributes {"ttg.num-warps" = 8 : i32} {
  tt.func public @k(%p: !tt.ptr<f16>) {
    %a = tt.load %pa, %m : tensor<16x16x!tt.ptr<f16>, #blocked> loc(#loc1)
    %b = tt.load %pb, %m : tensor<64x16x!tt.ptr<f16>, #blocked> loc(#loc2)
    %c = tt.load %pc : tensor<16x16x!tt.ptr<i8>, #blocked1> loc(#loc3)
    %d = tt.load %pd : tensor<16x!tt.ptr<bf16>, #ttg.slice<{dim = 1, parent = #blocked}>> loc(#loc4)
    %e = tt.load %p : !tt.ptr<f16> loc(#loc5)
    %f = tt.load %pf : tensor<16x16x!tt.ptr<f32>, #blocked> loc(#loc6)
    %g = tt.load %pg : tensor<16x16x!tt.ptr<f16>, #blocked1> loc(#loc7)
    tt.return
  }
}
"""


def test_two_byte_loads_are_the_loads_a_thread_holds_two_bytes_of():
    """Counted: a 16x16 fp16 tile over 256 threads (one element each), a uint8 tile with two
    elements per thread, a 16-element bf16 slice, an fp16 scalar. Not counted: 4 fp16
    elements per thread, fp32, 2 fp16 elements per thread."""
    from fastrnn.kernels.ttgir import two_byte_loads

    assert two_byte_loads(_TWO_BYTE_TTGIR) == 4
    two_rows = _TWO_BYTE_TTGIR.replace("16x16x!tt.ptr<f16>, #blocked>", "32x16x!tt.ptr<f16>, #blocked>")
    assert two_byte_loads(two_rows) == 3  # %a: two elements per thread


@pytest.mark.parametrize("variant", ["one-per-thread", "mask-pair", "aligned", "unaligned"])
def test_report_scalar16_assertion_on_compiled_tiles(ptx, variant):
    """A 2-byte load is a failure only where the thread's share of the tile is wider: a
    16x16 fp16 tile over 8 warps (one element per thread) and a uint8 mask with two
    elements per thread compile to 2-byte loads and pass; 64x16 rows of unknown alignment
    (8 elements per thread) load 2 bytes at a time and fail; aligned, they are vectors."""
    code, ir = ptx[f"tile16-{variant}"], ptx[f"tile16-{variant}:ttgir"]
    assert (scalar_16bit_global_loads(code) > 0) == (variant != "aligned")
    assert ("no_scalar16" in _failures(_Spec(), code, ir)) == (variant == "unaligned")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", ["coop-forward-float16", "coop-backward-bfloat16"])
def test_cooperative_16bit_kernels_pass_no_scalar16(ptx, arch, name):
    """The cooperative tier's streamed 16-bit kernels, compiled as the report does, run one
    warp (their dots are single 16x16 tiles), so a thread holds 8 elements of each tile and
    no global load is 2 bytes wide, not even the uint8 zoneout masks'; the assertion is
    enforced on the tier."""
    from fastrnn.kernels import report_checks

    code, ir = ptx[f"{name}-{arch}"], ptx[f"{name}-{arch}:ttgir"]
    assert '"ttg.num-warps" = 1' in ir
    assert scalar_16bit_global_loads(code) == 0
    assert "no_scalar16" not in _failures(_Spec(), code, ir)
    assert report_checks.enforced(_Spec(), "no_scalar16")


@pytest.mark.parametrize("arch", ARCHS)
def test_report_tf32_assertion(ptx, arch):
    spec = _Spec("resident-forward", torch.float32, "float32-tf32")
    raw, rounded = ptx[f"tf32-raw-m16-{arch}"], ptx[f"tf32-rounded-m16-{arch}"]
    assert "tf32_rounded" in _failures(spec, raw, ptx[f"tf32-raw-m16-{arch}:ttgir"])
    assert "tf32_rounded" not in _failures(spec, rounded, ptx[f"tf32-rounded-m16-{arch}:ttgir"])
    ieee = _Spec("resident-forward", torch.float32, "float32")
    assert "tf32_rounded" not in _failures(ieee, raw, ptx[f"tf32-raw-m16-{arch}:ttgir"])  # no TF32 asked for


_W_LOOP_TTGIR = """module {
  tt.func public @k(%w_hh_ptr: !tt.ptr<f16> {tt.divisibility = 16 : i32}, %x_ptr: !tt.ptr<f16>, %T: i32, %H: i32) {
    %c0_i32 = arith.constant 0 : i32
    %c1_i32 = arith.constant 1 : i32
    %c32_i32 = arith.constant 32 : i32
    %w = tt.splat %w_hh_ptr : !tt.ptr<f16> -> tensor<64x32x!tt.ptr<f16>, #blocked>
    %x = tt.splat %x_ptr : !tt.ptr<f16> -> tensor<16x32x!tt.ptr<f16>, #blocked>
    %w0 = tt.load %w : tensor<64x32x!tt.ptr<f16>, #blocked>
    %r:2 = scf.for %t = %c0_i32 to %T step %c1_i32 iter_args(%p = %w, %q = %x) -> (tensor<64x32x!tt.ptr<f16>, #blocked>, tensor<16x32x!tt.ptr<f16>, #blocked>)  : i32 {
      %xt = tt.load %q : tensor<16x32x!tt.ptr<f16>, #blocked>
      scf.for %k = %c0_i32 to %H step %c32_i32  : i32 {
        %wk = tt.load %p : tensor<64x32x!tt.ptr<f16>, #blocked>
      }
      %p2 = tt.addptr %p, %c1_i32 : tensor<64x32x!tt.ptr<f16>, #blocked>, i32
      scf.yield %p2, %q : tensor<64x32x!tt.ptr<f16>, #blocked>, tensor<16x32x!tt.ptr<f16>, #blocked>
    }
    tt.return
  }
}
"""


def test_time_loop_accesses_follow_w_hh_ptr():
    """Data flow from %w_hh_ptr through a loop-carried pointer into a load of a nested
    loop (bounds 0 to %H step 32): that load is W_hh, the x load is not, the load before
    the loop is outside the time loop."""
    from fastrnn.kernels.ttgir import per_step, time_loop_accesses

    accesses = time_loop_accesses(_W_LOOP_TTGIR)
    loads = [(a.amount, a.trips, a.from_argument) for a in accesses if a.op == "load"]
    assert loads == [(16 * 32 * 2, (), False), (64 * 32 * 2, (("H", 32),), True)], accesses
    assert per_step(accesses) == {"load_bytes": 1024 + 4096, "w_bytes": 4096, "dot_flops": 0}
    assert per_step(accesses, {"H": 96}) == {"load_bytes": 1024 + 3 * 4096, "w_bytes": 3 * 4096, "dot_flops": 0}


def test_report_on_chip_assertion():
    """A row that claims W_hh on chip fails when W_hh is loaded in the time loop; a row that
    streams it (no claim) does not; the claim comes from the tier or the spec's own
    ``w_hh_on_chip``."""
    from fastrnn.kernels import report_checks

    hoisted = _W_LOOP_TTGIR.replace("%wk = tt.load %p", "%wk = tt.addptr %p, %c1_i32")
    empty_ptx = ".visible .entry k()\n{\n\tret;\n}\n"
    slab, stream = _Spec(slab_k=128), _Spec(slab_k=0)
    assert report_checks.w_hh_on_chip(slab) and not report_checks.w_hh_on_chip(stream)
    assert report_checks.w_hh_on_chip(_Spec("resident-forward"))
    assert not report_checks.w_hh_on_chip(_Spec("forward"))
    assert report_checks.w_hh_on_chip(_Spec(slab_k=0, w_hh_on_chip=True))
    assert "on_chip" in _failures(slab, empty_ptx, _W_LOOP_TTGIR)
    assert "on_chip" in _failures(_Spec("resident-forward"), empty_ptx, _W_LOOP_TTGIR)
    assert "on_chip" not in _failures(slab, empty_ptx, hoisted)
    assert "on_chip" not in _failures(stream, empty_ptx, _W_LOOP_TTGIR)


@pytest.mark.parametrize("arch", ARCHS)
def test_report_on_chip_assertion_on_compiled_cooperative_kernels(ptx, arch):
    """The streamed cooperative kernel of this tree loads W_hh in its time loop: claimed on
    chip, the row fails; as it is (streamed), it passes."""
    code, ir = ptx[f"coop-forward-float16-{arch}"], ptx[f"coop-forward-float16-{arch}:ttgir"]
    assert "on_chip" in _failures(_Spec(w_hh_on_chip=True), code, ir)
    assert "on_chip" not in _failures(_Spec(), code, ir)


def test_enforced_switches_move_a_failure_between_fail_and_open(monkeypatch):
    from fastrnn.kernels import report_checks

    analysis = {"failures": {"no_scalar16": "3 scalar 16-bit global loads"}}
    spec = _Spec("resident-forward")
    monkeypatch.setitem(report_checks.ENFORCED, "resident", dict(report_checks.ENFORCED["resident"], no_scalar16=True))
    assert report_checks.verdict(spec, analysis) == (["no_scalar16: 3 scalar 16-bit global loads"], [])
    monkeypatch.setitem(report_checks.ENFORCED, "resident", dict(report_checks.ENFORCED["resident"], no_scalar16=False))
    assert report_checks.verdict(spec, analysis) == ([], ["no_scalar16: 3 scalar 16-bit global loads"])
    # "aligned": fails the rows compiled for 16-byte aligned rows only
    monkeypatch.setitem(report_checks.ENFORCED, "resident", dict(report_checks.ENFORCED["resident"],
                                                                 no_scalar16="aligned"))
    assert report_checks.verdict(spec, analysis) == ([], ["no_scalar16: 3 scalar 16-bit global loads"])
    aligned = _Spec("resident-forward", constexprs={"H_ALIGNED": True})
    assert report_checks.verdict(aligned, analysis) == (["no_scalar16: 3 scalar 16-bit global loads"], [])


@pytest.mark.parametrize("arch", ARCHS)
def test_substring_check_is_fooled_where_control_flow_is_not(ptx, arch):
    """Why the report checks the barrier by control flow: with the bar.sync between the
    step's stores and the release deleted, every instruction a substring search looks for
    is still in the PTX (``bar.sync`` ~29 times from layout conversions)."""
    from fastrnn.kernels.barrier import barrier_ptx_problems

    broken = _lines_removed(ptx[f"ring-correct-{arch}"], "st.global", "red.global.gpu.release")
    assert barrier_ptx_problems(broken) == [] and barrier_problems(broken) != []


_REPEATS_TTGIR = """
#blocked = #ttg.blocked<{sizePerThread = [1, 1], threadsPerWarp = [2, 16], warpsPerCTA = [4, 1], order = [1, 0]}>
#blocked1 = #ttg.blocked<{sizePerThread = [1, 1], threadsPerWarp = [4, 8], warpsPerCTA = [4, 1], order = [1, 0]}>
#mma = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [4, 1], instrShape = [16, 8]}>
#mma1 = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [1, 2], instrShape = [16, 8]}>
#mma2 = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [4, 2], instrShape = [16, 8, 16]}>
#mma3 = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [8, 1, 1], instrShape = [1, 16, 8]}>
module attributes {"ttg.num-warps" = 4 : i32} {
  tt.func public @k() {
    %a = tt.dot %x, %y, %z : tensor<16x32xf16, #ttg.dot_op<{opIdx = 0, parent = #mma, kWidth = 2}>> * tensor<32x16xf16, #ttg.dot_op<{opIdx = 1, parent = #mma, kWidth = 2}>> -> tensor<16x16xf32, #mma> loc(#loc1)
    %b = tt.dot %x, %y, %z : tensor<16x32xf16, #ttg.dot_op<{opIdx = 0, parent = #mma1, kWidth = 2}>> * tensor<32x16xf16, #ttg.dot_op<{opIdx = 1, parent = #mma1, kWidth = 2}>> -> tensor<16x16xf32, #mma1> loc(#loc2)
    %c = ttng.warp_group_dot %w, %h, %z {isAsync = true} : !ttg.memdesc<64x1024xf16, #shared, #smem> * !ttg.memdesc<1024x16xf16, #shared1, #smem> -> tensor<64x16xf32, #mma2> loc(#loc3)
    %d = tt.dot %x, %y, %z : tensor<16x16xf32, #ttg.dot_op<{opIdx = 0, parent = #blocked}>> * tensor<16x16xf32, #ttg.dot_op<{opIdx = 1, parent = #blocked}>> -> tensor<16x16xf32, #blocked> loc(#loc4)
    %e = tt.dot %x, %y, %z : tensor<8x16xf32, #ttg.dot_op<{opIdx = 0, parent = #blocked1}>> * tensor<16x8xf32, #ttg.dot_op<{opIdx = 1, parent = #blocked1}>> -> tensor<8x8xf32, #blocked1> loc(#loc5)
    %f = tt.dot %x, %y, %z : tensor<8x16x128xf16, #ttg.dot_op<{opIdx = 0, parent = #mma3, kWidth = 2}>> * tensor<8x128x16xf16, #ttg.dot_op<{opIdx = 1, parent = #mma3, kWidth = 2}>> -> tensor<8x16x16xf32, #mma3> loc(#loc6)
    %g = tt.dot %x, %y, %z : tensor<4x16x128xf16, #ttg.dot_op<{opIdx = 0, parent = #mma3, kWidth = 2}>> * tensor<4x128x16xf16, #ttg.dot_op<{opIdx = 1, parent = #mma3, kWidth = 2}>> -> tensor<4x16x16xf32, #mma3> loc(#loc7)
    tt.return
  }
}
"""


def test_repeated_dots_counts_the_warps_over_each_tile():
    """A 16x16 result over warps [4, 1] (16 rows each): 4 warps on the same rows. Over
    [1, 2] (8 columns each), a wgmma 64x16 over [4, 2] and a 16x16 FMA result whose blocked
    layout covers 8x16 per repetition: every warp its own part. An 8x8 FMA result under a
    layout covering 16x8: each element held twice. A batched 8x16x16 dot over [8, 1, 1] (one
    batch index per warp: a split of k) is distinct; a 4x16x16 one over the same 8 warps is
    computed twice."""
    from fastrnn.kernels.ttgir import repeated_dots

    found = repeated_dots(_REPEATS_TTGIR)
    assert [f for f, _ in found] == [4, 2, 2]
    assert "#mma>" in found[0][1] and "8x8xf32" in found[1][1] and "4x16x16xf32" in found[2][1]


@pytest.mark.parametrize("arch", ARCHS)
def test_repeated_dots_in_compiled_code(ptx, arch):
    """Compiled: a 16x16 TF32 dot over 4 warps repeats (each warp holds rows another holds);
    over one warp it does not, nor does a 64x16 one over 8 warps."""
    from fastrnn.kernels.ttgir import repeated_dots

    assert repeated_dots(ptx[f"dot-m16-w4-{arch}:ttgir"])
    assert all(factor > 1 for factor, _ in repeated_dots(ptx[f"dot-m16-w4-{arch}:ttgir"]))
    assert repeated_dots(ptx[f"dot-m16-w1-{arch}:ttgir"]) == []
    assert repeated_dots(ptx[f"dot-m64-w8-{arch}:ttgir"]) == []


def test_report_distinct_warps_assertion():
    """Repeated warps fail a step, LayerNorm row, cooperative and resident row, but the resident
    rows ``resident_tiles.REPEATED_WARPS`` accepts (fewer warps spill there): open."""
    from fastrnn.kernels.fits import KernelConfig
    from fastrnn.kernels import report_checks

    def verdict(spec):
        failures = _failures(spec, "", _REPEATS_TTGIR)
        assert "distinct_warps" in failures
        problems, open_ = report_checks.verdict(spec, {"failures": failures})
        return any(p.startswith("distinct_warps") for p in problems), any(o.startswith("distinct_warps") for o in open_)

    enforced, open_ = (True, False), (False, True)
    assert verdict(_Spec("forward", torch.float16, "float16")) == enforced
    assert verdict(_Spec("norm-forward", torch.float16, "float16")) == enforced
    for kind, name, dtype, label, accepted in (
            ("LSTM", "resident-backward", torch.float64, "float64", True),
            ("LSTM", "resident-forward", torch.float64, "float64", False),
            ("LSTM", "resident-backward", torch.float16, "float16", False),
            ("LayerNormGRU", "resident-norm-backward", torch.float64, "float64", True),
            ("LayerNormGRU", "resident-norm-backward", torch.float32, "float32-tf32-reg", True),
            ("LayerNormGRU", "resident-norm-backward", torch.float32, "float32-tf32", False)):
        spec = _Spec(name, dtype, label, kind=kind, constexprs={"REGULARISED": label.endswith("-reg")})
        spec.config = KernelConfig(16, 32, 8)
        assert verdict(spec) == (open_ if accepted else enforced), (kind, name, label)
    for name in ("coop-forward", "coop-reg-forward", "coop-backward"):
        for slab in (0, 256):
            assert verdict(_Spec(name, torch.float16, "float16", slab_k=slab)) == enforced, (name, slab)
    assert "distinct_warps" not in _failures(_Spec(), "", _EMPTY_TTGIR)


def test_register_file_check(ptx):
    """A block's registers, as allocated (8 per thread at a time), must fit the 65,536 of the
    register file or the launch is refused: 128 (or 121, allocated as 128) x 16 warps and
    255 x 8 warps fit, 129 x 16 does not. ptxas keeps a 16-warp kernel within that by itself,
    but compiled with ``maxnreg=255`` it takes more, and the report's row fails it."""
    from fastrnn.kernels.report_checks import register_file_problems

    assert register_file_problems(128, 16) == register_file_problems(121, 16) == register_file_problems(255, 8) == []
    assert register_file_problems(129, 16) and register_file_problems(255, 9)
    assert ptx["wide-maxnreg-regs"] > 128 and "the launch is refused" in ptx["wide-maxnreg-error"]
    assert ptx["wide-default-regs"] <= 128 and "the launch is refused" not in ptx["wide-default-error"]
