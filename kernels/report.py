"""Ahead-of-time compile report of every step-kernel specialisation, no GPU needed.

Run as ``python -m fastrnn.kernels.report [--jobs N]``. For each specialisation the
launchers can choose (:func:`fastrnn.kernels.recurrent_step.specialisations`: cell kind x
dtype / TF32 x SAVE or DM_GIVEN x block configuration) and each of sm_80 and sm_90, it
compiles the kernel with ``triton.compile`` for that target, reads registers and spills
(``LOCAL`` / ``STACK``) from the cubin with ``cuobjdump --dump-resource-usage`` and the
shared memory from the compiled metadata, and prints one row. Exit status 1 when any
compile fails, anything spills, or shared memory passes the per-block limit.

It must run in a process where Triton's interpreter is off: with it on, ``@triton.jit``
builds interpreter objects, which cannot be compiled (the report refuses, exit 2).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import recurrent_step

#: Largest shared memory one block may use (opt-in maximum), bytes.
SHARED_LIMIT = {80: 166912, 90: 232448}
ARCHS = (80, 90)
MAX_REGISTERS = 255

_TYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
_RESOURCE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def _cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def signature_of(spec: recurrent_step.Specialisation) -> tuple[dict, dict, dict]:
    """``(signature, constexprs, attrs)`` for :class:`ASTSource`, as the launcher calls it."""
    io = "*" + _TYPE[spec.dtype]
    acc = "*" + _TYPE[torch.float64 if spec.dtype == torch.float64 else torch.float32]
    signature, attrs = {}, {}
    for index, (name, role) in enumerate(spec.pointers):
        signature[name] = io if role == "io" else acc
        attrs[(index,)] = [["tt.divisibility", 16]]  # the launchers pass 16-byte aligned tensors
    for name in spec.ints:
        signature[name] = "i32"  # do_not_specialize: plain 32-bit ints, no value hints
    for name in spec.constexprs:
        signature[name] = "constexpr"
    return signature, dict(spec.constexprs), attrs


def compile_one(index: int, arch: int) -> dict:
    """Compile specialisation ``index`` for ``sm_<arch>``; a result row (never raises)."""
    # Triton 3.9 warns once per process that its FP-fusion default will change; the
    # launch path compiles with the same default, so the report keeps it and stays quiet.
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    spec = recurrent_step.specialisations()[index]
    row = dict(kernel=f"{spec.kernel_name}:{spec.kind}", dtype=spec.label, config=spec.config.label,
               arch=f"sm_{arch}", regs=-1, spills=-1, shared=-1, ok=False, error="")
    try:
        signature, constexprs, attrs = signature_of(spec)
        src = ASTSource(fn=spec.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options=dict(num_warps=spec.config.num_warps))
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name],
                                   capture_output=True, text=True, check=True).stdout
        match = _RESOURCE.search(usage)
        if match is None:
            raise RuntimeError(f"no resource line in cuobjdump output: {usage!r}")
        regs, stack, static_shared, local = (int(v) for v in match.groups())
        shared = int(compiled.metadata.shared) + static_shared
        row.update(regs=regs, spills=stack + local, shared=shared)
        problems = []
        if stack or local:
            problems.append(f"spills (STACK {stack}, LOCAL {local})")
        if regs > MAX_REGISTERS:
            problems.append(f"{regs} registers")
        if shared > SHARED_LIMIT[arch]:
            problems.append(f"shared {shared} > {SHARED_LIMIT[arch]}")
        row["error"] = "; ".join(problems)
        row["ok"] = not problems
    except Exception as exc:  # a compile failure is a report row, not a crash
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return row


def _interpreted() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(recurrent_step.recurrent_step_forward_kernel, InterpretedFunction)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile processes")
    args = parser.parse_args(argv)
    if _interpreted():
        print("fastrnn.kernels.report: the kernels were built for Triton's interpreter (it is switched "
              "on in this environment); run the report with the interpreter off.", file=sys.stderr)
        return 2
    specs = recurrent_step.specialisations()
    jobs = [(i, arch) for i in range(len(specs)) for arch in ARCHS]
    start = time.time()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(compile_one, *zip(*jobs)))
    else:
        rows = [compile_one(i, arch) for i, arch in jobs]
    header = f"{'kernel':<18} {'dtype':<18} {'config':<18} {'arch':<6} {'regs':>5} {'spills':>6} {'shared':>7}  result"
    print(header)
    print("-" * len(header))
    for r in rows:
        result = "pass" if r["ok"] else f"FAIL {r['error']}"
        print(f"{r['kernel']:<18} {r['dtype']:<18} {r['config']:<18} {r['arch']:<6} {r['regs']:>5} "
              f"{r['spills']:>6} {r['shared']:>7}  {result}")
    failed = sum(not r["ok"] for r in rows)
    print(f"\n{len(rows)} rows ({len(specs)} specialisations x {len(ARCHS)} archs), {failed} failed, "
          f"max registers {max(r['regs'] for r in rows)}, max shared {max(r['shared'] for r in rows)} B, "
          f"{time.time() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
