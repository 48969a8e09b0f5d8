"""Small Triton kernels whose PTX the tests of :mod:`fastrnn.kernels.ptx` read.

A cooperative-style kernel with a correct grid barrier (the primitives of
:func:`fastrnn.kernels.cooperative.grid_barrier`) and broken variants of it, plus TF32 dot
kernels with and without :func:`fastrnn.kernels.precision.tf32_round` on the operands.
Compiled ahead of time only (no launch), in a process with Triton's interpreter off.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastrnn.kernels.fits import KernelConfig
from fastrnn.kernels.precision import tf32_round


@triton.jit
def _barrier(sync_ptr, index, timeout_us, BEFORE: tl.constexpr, EVERY_THREAD: tl.constexpr,
             AFTER: tl.constexpr, BLOCK: tl.constexpr):
    if BEFORE:
        tl.debug_barrier()
    counter = sync_ptr + 1 + index
    if EVERY_THREAD:
        tl.atomic_add(counter + tl.zeros([BLOCK], tl.int32), 1, sem="release", scope="gpu")
    else:
        tl.atomic_add(counter, 1, sem="release", scope="gpu")
    timeout_ns = timeout_us.to(tl.int64) * 1000
    arrived = tl.atomic_poll(counter, tl.num_programs(0), sem="acquire", scope="gpu", timeout_ns=timeout_ns)
    if AFTER:
        tl.debug_barrier()
    if not arrived:
        tl.atomic_cas(sync_ptr, 0, index + 1, sem="relaxed", scope="gpu")
    return arrived


@triton.jit
def ring_kernel(x_ptr, sync_ptr, T, timeout_us, BLOCK: tl.constexpr, BEFORE: tl.constexpr,
                EVERY_THREAD: tl.constexpr, AFTER: tl.constexpr):
    """Each step, every program reads its neighbour's row of step ``t`` and writes its own
    row of step ``t + 1``; a grid barrier between steps."""
    pid = tl.program_id(0)
    n = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    t = 0
    ok = True
    while (t < T) & ok:
        v = tl.load(x_ptr + (t * n + (pid + 1) % n) * BLOCK + cols)
        tl.store(x_ptr + ((t + 1) * n + pid) * BLOCK + cols, v * 0.5 + 1.0)
        ok = _barrier(sync_ptr, t, timeout_us, BEFORE, EVERY_THREAD, AFTER, BLOCK)
        t += 1


#: The broken variants: constexprs of ring_kernel -> the problem the checker must report.
RING_VARIANTS = {
    "correct": dict(BEFORE=True, EVERY_THREAD=False, AFTER=True),
    "no_bar_before_release": dict(BEFORE=False, EVERY_THREAD=False, AFTER=True),
    "release_by_every_thread": dict(BEFORE=True, EVERY_THREAD=True, AFTER=True),
    "no_bar_after_acquire": dict(BEFORE=True, EVERY_THREAD=False, AFTER=False),
}


@triton.jit
def tf32_dot_kernel(a_ptr, b_ptr, c_ptr, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
                    ROUND: tl.constexpr):
    """``c = a @ b`` for one ``[M, K] x [K, N]`` fp32 tile in TF32, the operands rounded by
    :func:`tf32_round` first when ``ROUND``."""
    m, n, k = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
    a = tl.load(a_ptr + m[:, None] * K + k[None, :])
    b = tl.load(b_ptr + k[:, None] * N + n[None, :])
    if ROUND:
        a = tf32_round(a)
        b = tf32_round(b)
    c = tl.dot(a, b, input_precision="tf32")
    tl.store(c_ptr + m[:, None] * N + n[None, :], c)



@triton.jit
def tf32_loop_kernel(w_ptr, h_ptr, out_ptr, T, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
                     ROUND_W: tl.constexpr, ROUND_H: tl.constexpr):
    """``out[t] = w @ h[t]`` for ``t < T`` in TF32: ``w`` (``[M, K]``) loaded once before the
    loop (kept on chip), ``h[t]`` (``[K, N]``) loaded each step; each rounded when asked."""
    m, n, k = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
    w = tl.load(w_ptr + m[:, None] * K + k[None, :])
    if ROUND_W:
        w = tf32_round(w)
    for t in range(T):
        h = tl.load(h_ptr + t * K * N + k[:, None] * N + n[None, :])
        if ROUND_H:
            h = tf32_round(h)
        tl.store(out_ptr + t * M * N + m[:, None] * N + n[None, :], tl.dot(w, h, input_precision="tf32"))

@triton.jit
def tf32_round_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    """``y = tf32_round(x)`` elementwise (the interpreter runs the bit form)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tf32_round(tl.load(x_ptr + offs, mask=mask)), mask=mask)


@triton.jit
def fma_kernel(x_ptr, y_ptr, z_ptr, out_ptr, BLOCK: tl.constexpr):
    """``out = x * y + z``: an FMA when fusion is on, ``mul`` + ``add`` when it is off."""
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs) * tl.load(y_ptr + offs) + tl.load(z_ptr + offs))


@triton.jit
def tile16_kernel(x_ptr, m_ptr, out_ptr, stride, ROWS: tl.constexpr, COLS: tl.constexpr):
    """A ``ROWS x COLS`` fp16 tile of rows ``stride`` apart, zeroed where a uint8 mask tile
    of the same shape is 0: what a cooperative kernel's state and zoneout loads look like."""
    offs = tl.arange(0, ROWS)[:, None] * stride + tl.arange(0, COLS)[None, :]
    x = tl.load(x_ptr + offs)
    keep = tl.load(m_ptr + offs) != 0
    tl.store(out_ptr + offs, tl.where(keep, x, 0.0))


@triton.jit
def wide_kernel(x_ptr, y_ptr, N: tl.constexpr):
    """Keeps ``N / threads`` fp32 values per thread live across reductions: many registers."""
    offs = tl.arange(0, N)
    x = tl.load(x_ptr + offs)
    tl.store(y_ptr + offs, tl.exp(x) * tl.sum(x * x) + tl.sum(tl.exp(x)) * tl.sqrt(tl.sum(x)))


class _WideSpec(NamedTuple):
    """:func:`wide_kernel` as a step-tier row of the compile report, 16 warps."""

    options: dict
    kernel: object = wide_kernel
    kernel_name: str = "forward"
    kind: str = "wide"
    dtype: torch.dtype = torch.float32
    label: str = "float32"
    config: tuple = KernelConfig(1, 65536, 16)
    constexprs: dict = {"N": 65536}
    pointers: tuple = (("x_ptr", "io"), ("y_ptr", "io"))
    ints: tuple = ()


#: tile16 variants: name -> (ROWS, num_warps, stride known to be a multiple of 16)
TILE16_VARIANTS = {"one-per-thread": (16, 8, True), "mask-pair": (16, 4, True), "aligned": (64, 4, True),
                   "unaligned": (64, 4, False)}


# --------------------------------------------------------------------------------------
# Ahead-of-time compiles (run as a script, with Triton's interpreter off)
# --------------------------------------------------------------------------------------

ARCHS = (80, 90)
_ALIGNED = [["tt.divisibility", 16]]


def _compile(fn, signature, constexprs, arch, aligned=(), **options):
    signature = dict(signature, **{name: "constexpr" for name in constexprs})
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs={(i,): _ALIGNED for i in aligned})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(dict(num_warps=4), **options))


def compile_all() -> dict:
    """``{name: ptx}`` of every kernel the tests read (names: ``ring-<variant>-sm<arch>``,
    ``tf32-<rounded|raw>-m<M>-sm<arch>``, ``fma-<default|pinned|unfused>``,
    ``tf32-loop-w<0|1>h<0|1>-sm<arch>``, ``dot-m<M>-w<warps>-sm<arch>:ttgir``, ``tile16-<variant>`` (sm_90),
    ``<cooperative kernel name>-<dtype label>-sm<arch>``, ``wide-<maxnreg|default>-regs`` / ``-error``:
    the report row's registers and problems of a 16-warp kernel with and without ``maxnreg=255``;
    ``<name>:ttgir`` the TTGIR of the TF32 and cooperative ones)."""
    from fastrnn.kernels import cooperative, report
    from fastrnn.kernels.precision import ENABLE_FP_FUSION

    out = {}
    ring = {"x_ptr": "*fp32", "sync_ptr": "*i32", "T": "i32", "timeout_us": "i32"}
    dot = {"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32"}
    for arch in ARCHS:
        for name, flags in RING_VARIANTS.items():
            k = _compile(ring_kernel, ring, dict(BLOCK=128, **flags), arch, aligned=(0, 1))
            out[f"ring-{name}-sm{arch}"] = k.asm["ptx"]
        for rounded in (True, False):
            for m in (16, 64):  # 64 rows: wgmma on sm_90 (B from shared memory)
                k = _compile(tf32_dot_kernel, dot, dict(M=m, N=32, K=32, ROUND=rounded), arch, aligned=(0, 1, 2))
                out[f"tf32-{'rounded' if rounded else 'raw'}-m{m}-sm{arch}"] = k.asm["ptx"]
                out[f"tf32-{'rounded' if rounded else 'raw'}-m{m}-sm{arch}:ttgir"] = k.asm["ttgir"]
    loop = {"w_ptr": "*fp32", "h_ptr": "*fp32", "out_ptr": "*fp32", "T": "i32"}
    for arch in ARCHS:
        for rw, rh in ((True, True), (False, True), (True, False)):
            k = _compile(tf32_loop_kernel, loop, dict(M=64, N=32, K=32, ROUND_W=rw, ROUND_H=rh), arch,
                         aligned=(0, 1, 2))
            out[f"tf32-loop-w{int(rw)}h{int(rh)}-sm{arch}"] = k.asm["ptx"]
            out[f"tf32-loop-w{int(rw)}h{int(rh)}-sm{arch}:ttgir"] = k.asm["ttgir"]
    for arch in ARCHS:
        for m, warps in ((16, 4), (16, 1), (64, 8)):  # one 16x16 tile over 4 warps / 1 warp; 64x16 over 8
            k = _compile(tf32_dot_kernel, dot, dict(M=m, N=16, K=32, ROUND=True), arch, aligned=(0, 1, 2),
                         num_warps=warps)
            out[f"dot-m{m}-w{warps}-sm{arch}:ttgir"] = k.asm["ttgir"]
    fma = {"x_ptr": "*fp32", "y_ptr": "*fp32", "z_ptr": "*fp32", "out_ptr": "*fp32"}
    for name, options in (("default", {}), ("pinned", dict(enable_fp_fusion=ENABLE_FP_FUSION)),
                          ("unfused", dict(enable_fp_fusion=False))):
        out[f"fma-{name}"] = _compile(fma_kernel, fma, dict(BLOCK=128), 90, aligned=(0, 1, 2, 3), **options).asm["ptx"]
    tile = {"x_ptr": "*fp16", "m_ptr": "*u8", "out_ptr": "*fp16", "stride": "i32"}
    for name, (rows, warps, aligned) in TILE16_VARIANTS.items():
        k = _compile(tile16_kernel, tile, dict(ROWS=rows, COLS=16), 90, aligned=(0, 1, 2, 3) if aligned else (0, 1, 2),
                     num_warps=warps)
        out[f"tile16-{name}"], out[f"tile16-{name}:ttgir"] = k.asm["ptx"], k.asm["ttgir"]
    wanted = {("coop-forward", "float16"), ("coop-reg-backward", "float32-tf32"), ("coop-backward", "bfloat16")}
    for name, options in (("maxnreg", dict(maxnreg=255)), ("default", {})):  # 16 warps, through the report
        row = report._compile_in_process(_WideSpec(options), 90)
        out[f"wide-{name}-regs"], out[f"wide-{name}-error"] = row["regs"], row["error"]
    for spec in cooperative.specialisations():  # the cooperative kernels of this tree, compiled as the report does
        if (spec.kernel_name, spec.label) in wanted and spec.kind == "LSTM":
            wanted.discard((spec.kernel_name, spec.label))
            signature, constexprs, attrs = report.signature_of(spec)
            src = ASTSource(fn=spec.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
            options = dict(num_warps=spec.config.num_warps, **(spec.options or {}))
            for arch in ARCHS:
                k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
                out[f"{spec.kernel_name}-{spec.label}-sm{arch}"] = k.asm["ptx"]
                out[f"{spec.kernel_name}-{spec.label}-sm{arch}:ttgir"] = k.asm["ttgir"]
    assert not wanted, wanted
    return out


if __name__ == "__main__":
    import json
    import sys
    import warnings

    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    with open(sys.argv[1], "w") as f:
        json.dump(compile_all(), f)
