"""Numerics pins shared by every kernel tier: TF32 rounding of fp32 GEMM operands and the
floating-point fusion setting of the compile.

TF32. ``tl.dot(..., input_precision="tf32")`` feeds raw fp32 bits to the tensor cores'
``mma``/``wgmma ... .tf32``, which read the top 19 bits: the operands are *truncated*.
cuDNN (what ``torch.nn.LSTM`` runs with ``torch.backends.cudnn.allow_tf32``) rounds them
to nearest first. :func:`tf32_round` does the same: ``cvt.rna.tf32.f32`` (round to
nearest, ties away from zero) when compiled, and the same bit arithmetic in plain Triton
where inline assembly cannot run (Triton's interpreter refuses ``inline_asm_elementwise``).

``cvt.rna.tf32.f32`` compiles on sm_80 to integer ops (measured SASS, published by
enp1s0, "tf32-rna", 2023): when ``|x|`` is finite add ``0x1000`` (half a TF32 unit in the
last place, in sign-magnitude, so ties go away from zero and a carry moves into the
exponent), then keep the top 19 bits (``& 0xFFFFE000``). Infinities and NaNs skip the add
and are only masked. :func:`tf32_round_bits` is that, bit for bit: finite values that
round past the largest TF32 value become infinities, subnormals round like normals.

FP fusion. :data:`ENABLE_FP_FUSION` is what every launcher passes as
``enable_fp_fusion=`` and what the compile report puts in its compile options.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

#: Whether the compiler may fuse a multiply and a dependent add into one FMA.
#:
#: True, pinned: Triton 3.9 fuses by default but warns that 3.10 will not, so leaving it
#: unset would change the kernels' numerics with a Triton upgrade. Fused is the choice
#: because it is what every kernel has been compiled, reported and checked with so far
#: (the same PTX as 3.9's default, see tests/test_ptx.py) and an FMA rounds once where a
#: multiply and an add round twice. Launchers pass it at launch,
#: ``kernel[grid](..., enable_fp_fusion=ENABLE_FP_FUSION)`` (a launch option like
#: ``num_warps``, part of the compiled kernel's cache key); the compile report passes it in
#: ``triton.compile(..., options={"enable_fp_fusion": ENABLE_FP_FUSION})``. Triton's
#: interpreter drops launch options it does not know, so launchers pass it unconditionally.
#: ``TRITON_FORCE_DISABLE_FP_FUSION=1`` in the environment still overrides it (Triton's own
#: switch for debugging numerics).
ENABLE_FP_FUSION = True

#: True when ``@triton.jit`` builds kernels for Triton's interpreter (the switch its
#: decorator reads, ``TRITON_INTERPRET``, at import time): it cannot run inline assembly.
INTERPRETED = bool(knobs.runtime.interpret)

#: Compile-time switch of :func:`tf32_round`: ``cvt.rna.tf32.f32`` (compiled code) or the
#: plain bit arithmetic (the interpreter).
TF32_ROUND_ASM = tl.constexpr(not INTERPRETED)


@triton.jit
def tf32_round_asm(x):
    """``x`` (fp32) rounded to TF32 by ``cvt.rna.tf32.f32``, as fp32 with the low 13 bits zero.
    Compiled code only (sm_80 and later)."""
    return tl.inline_asm_elementwise("cvt.rna.tf32.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                     is_pure=True, pack=1)


@triton.jit
def tf32_round_bits(x):
    """``x`` (fp32) rounded to TF32 (nearest, ties away from zero) in plain Triton, bit for
    bit what ``cvt.rna.tf32.f32`` gives (see the module docstring)."""
    bits = x.to(tl.uint32, bitcast=True)
    finite = (bits & 0x7F800000) != 0x7F800000
    bits = tl.where(finite, bits + 0x1000, bits) & 0xFFFFE000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def tf32_round(x):
    """``x`` (fp32) rounded to TF32 (nearest, ties away from zero), as cuDNN does before a
    TF32 tensor-core product: the operand of a ``tl.dot(..., input_precision="tf32")``.

    Compiled: one ``cvt.rna.tf32.f32`` per element. In Triton's interpreter: the same bit
    arithmetic (:func:`tf32_round_bits`)."""
    if TF32_ROUND_ASM:
        return tf32_round_asm(x)
    else:
        return tf32_round_bits(x)


def mma_dots(dtype, tf32: bool) -> bool:
    """Whether ``tl.dot`` of ``dtype`` I/O compiles to tensor-core MMA instructions (fp16,
    bf16, fp64, fp32 with TF32): their layouts give each warp whole ``16 x 8`` tiles, so
    warps beyond a small result's tile count repeat its work. fp32 IEEE dots are FMA loops
    spread over every thread."""
    return dtype != torch.float32 or bool(tf32)
