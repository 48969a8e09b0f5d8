"""Ahead-of-time compile report of every kernel specialisation, no GPU needed.

Run as ``python -m fastrnn.kernels.report [--jobs N]``. For each specialisation the
launchers can choose and each arch of :data:`ARCHS` (sm_80, sm_86, sm_89, sm_90, sm_100;
``--arch N``, repeatable: only those, for a check), it compiles the kernel with
``triton.compile`` for that target, reads registers and spills (``LOCAL`` / ``STACK``)
from the cubin with ``cuobjdump --dump-resource-usage`` and the shared memory from the
compiled metadata, and prints one row. The specialisations:

- step tier (:func:`fastrnn.kernels.recurrent_step.specialisations`): cell kind x dtype /
  TF32 x SAVE or DM_GIVEN x block configuration;
- resident tier (:func:`fastrnn.kernels.resident.specialisations`): every defined cell with
  Triton functions x its entries of :data:`fastrnn.kernels.fits.RESIDENT` (dtype x block
  configuration, :func:`fastrnn.kernels.fits.resident_entries`), forward and backward, fp32
  in both IEEE and TF32 precision;
- LayerNorm row kernels (:func:`fastrnn.kernels.norm_rows.specialisations`, ``norm-*``, the
  step tier's LayerNorm-LSTM / -GRU path): cell x dtype x SAVE x row configuration, forward
  and backward;
- the resident tier's LayerNorm kernels (:func:`fastrnn.kernels.resident_norm.specialisations`,
  ``resident-norm-*``): every entry of :data:`fastrnn.kernels.fits.RESIDENT_NORM`, as the
  resident tier's;
- cooperative tier (:func:`fastrnn.kernels.cooperative.specialisations`): every entry of
  :data:`fastrnn.kernels.fits.COOPERATIVE` (the tiled kernels, ``coop-*``) and of
  :data:`fastrnn.kernels.fits.COOPERATIVE_REGISTERS` (the register variants,
  ``coop-reg-*``) x cell kind, forward and backward, compiled with
  ``launch_cooperative_grid`` and ``H`` a multiple of 16, as launched.

Each row also carries a static profile of one time step and four assertions
(:mod:`fastrnn.kernels.report_checks`: W_hh not loaded from global memory in the time loop
where the specialisation keeps it on chip, no scalar 16-bit global loads in fp16/bf16
kernels but of tiles a thread holds 2 bytes of, TF32 dot operands rounded, the grid barrier right by control flow); which of them
fail a row is switched per tier there (:data:`~fastrnn.kernels.report_checks.ENFORCED`),
the others are listed in the row's ``open`` column. The report ends with the expected
time per step of the benchmark anchor shapes (:mod:`fastrnn.kernels.expected`).

Exit status 1 when any compile fails, anything spills (but what ``norm_rows.ACCEPTED_STACK``
accepts), registers pass 255, shared memory passes the per-block limit of the arch (the
compiler does not fail on that by itself: the launch would), or an enforced assertion fails. A resident row also fails when
it needs more shared memory than :mod:`fastrnn.kernels.fits` records for that arch (the
tier choice reads that number to decide whether an entry runs on a device). A row the
choice never launches on an arch (:func:`launched_on`) is compiled and shown, marked "not
launched on this arch", and fails nothing.

``--write PATH`` also writes the table and its summary as Markdown (the repository keeps
``docs/compile-report.md``), headed by a fingerprint of what it was made from: the list of
specialisation rows and a hash of the kernel sources. :func:`fingerprint` recomputes it
without compiling, so a test can tell when the file is stale. ``--import MODULE_OR_PATH``
(repeatable) imports a module or a ``.py`` file first, so that cells it defines are
listed with the built-in ones.

``--sweep`` compiles the resident candidates instead (every kind x dtype x ``BLOCK_H``
x ``num_warps``) and prints the :data:`~fastrnn.kernels.fits.RESIDENT` table they give.

It must run in a process where Triton's interpreter is off: with it on, ``@triton.jit``
builds interpreter objects, which cannot be compiled (the report refuses, exit 2).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import cooperative, expected, fits, norm_rows, recurrent_step, report_checks, resident, resident_norm

#: Largest shared memory one block may use (opt-in maximum), bytes.
SHARED_LIMIT = fits.SHARED_LIMIT
#: The archs every row is compiled for. On sm_86 / sm_89 / sm_100 the choice drops what spills
#: or does not fit there (:func:`launched_on`), marked "not launched on this arch".
ARCHS = (80, 86, 89, 90, 100)
MAX_REGISTERS = 255

_TYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
_RESOURCE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def _cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def specialisations(tier: str = "all") -> list:
    """Every specialisation of ``tier`` ("step", "norm", "resident", "resident-norm",
    "cooperative" or "all"), in report order ("norm": the LayerNorm row kernels the step tier
    launches for those cells; "resident-norm": the resident tier's LayerNorm kernels)."""
    step = recurrent_step.specialisations() if tier in ("all", "step") else []
    step += norm_rows.specialisations() if tier in ("all", "norm") else []
    step += resident.specialisations() if tier in ("all", "resident") else []
    step += resident_norm.specialisations() if tier in ("all", "resident-norm") else []
    return step + (cooperative.specialisations() if tier in ("all", "cooperative") else [])


def signature_of(spec) -> tuple[dict, dict, dict]:
    """``(signature, constexprs, attrs)`` for :class:`ASTSource`, as the launcher calls it."""
    roles = {
        "io": "*" + _TYPE[spec.dtype],
        "acc": "*" + _TYPE[torch.float64 if spec.dtype == torch.float64 else torch.float32],
        "i32": "*i32",
        "u8": "*u8",
    }
    signature, attrs = {}, {}
    for index, (name, role) in enumerate(spec.pointers):
        signature[name] = roles[role]
        attrs[(index,)] = [["tt.divisibility", 16]]  # the launchers pass 16-byte aligned tensors
    multiples = getattr(spec, "divisible_by_16", ())
    for index, name in enumerate(spec.ints, start=len(spec.pointers)):
        # do_not_specialize: plain 32-bit ints (fp32 for a spec's ``floats``), no value hints
        signature[name] = "fp32" if name in getattr(spec, "floats", ()) else "i32"
        if name in multiples:  # specialised by the launch: always a multiple of 16 there
            attrs[(index,)] = [["tt.divisibility", 16]]
    for name in spec.constexprs:
        signature[name] = "constexpr"
    return signature, dict(spec.constexprs), attrs


def compile_spec(spec, arch: int) -> dict:
    """Compile ``spec`` for ``sm_<arch>``; a result row (never raises).

    The compile runs in a forked child process: LLVM inside Triton aborts the whole
    process on some inputs (measured: an SLPVectorizer assertion for one resident
    backward kernel on sm_90), and such a crash must be a failed row, not a lost report.
    """
    # Triton 3.9 warns once per process that its FP-fusion default will change; the
    # launch path compiles with the same default, so the report keeps it and stays quiet.
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    _warm_up(arch)
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_compile_child, args=(spec, arch, send))
    child.start()
    send.close()
    try:
        row = receive.recv()
    except EOFError:
        row = None
    child.join()
    if row is None:
        row = _row(spec, arch)
        row["error"] = f"the compiler crashed (exit code {child.exitcode})"
    return row


@triton.jit
def _trivial_kernel(ptr):
    tl.store(ptr, 1)


_warm: set = set()


def _warm_up(arch: int) -> None:
    """Compile a trivial kernel once per process and arch: the first compile of a process
    sets up Triton's backend (~0.4 s measured), which forked children then inherit
    instead of each paying it again."""
    if arch not in _warm:
        triton.compile(ASTSource(fn=_trivial_kernel, signature={"ptr": "*i32"}, constexprs={}),
                       target=GPUTarget("cuda", arch, 32))
        _warm.add(arch)


def _row(spec, arch: int) -> dict:
    kind = getattr(spec.kind, "name", spec.kind)  # a cell kind's name, or the name itself
    return dict(kernel=f"{spec.kernel_name}:{kind}", dtype=spec.label, config=spec.config.label,
                arch=f"sm_{arch}", regs=-1, spills=-1, shared=-1, ok=False, error="", launched=True,
                ld_bytes=-1, w_bytes=-1, mma=-1, bar_sync=-1, grid_barriers=-1, open="")


def _coop_key(spec) -> tuple | None:
    """A cooperative row's :data:`fits.COOPERATIVE` key (None for another tier's row)."""
    coop = isinstance(spec.config, fits.CoopConfig)
    return (fits.dtype_name(spec.dtype), spec.constexprs["PRECISION"], spec.config.slab_k) if coop else None


def recorded_shared(spec, arch: int) -> int | None:
    """The shared memory per block fits.py records for ``spec`` on ``arch``, which the tier choice
    reads (:func:`fits.shared_on`, :func:`fits.cooperative_shared`); None: the step tier's."""
    recorded = getattr(spec, "shared_limit", None)
    if recorded is not None:
        return fits.shared_on(recorded, arch)
    return None if _coop_key(spec) is None else fits.cooperative_shared(_coop_key(spec), arch)


def launched_on(spec, arch: int) -> bool:
    """Whether the tier choice may launch ``spec`` on ``arch``: a persistent entry only where its
    recorded shared memory (:func:`recorded_shared`) fits and fits.py does not rule it out there
    (:func:`fits.resident_arch_miss`, :func:`fits.cooperative_arch_miss`); a step or LayerNorm row
    kernel where its launcher picks it on that arch (the specialisation's ``launched_on``)."""
    if hasattr(spec, "launched_on") and not spec.launched_on(arch):
        return False
    if getattr(spec, "shared_limit", None) is not None and fits.resident_arch_miss(
            spec.kind, spec.dtype, spec.config.block_h, arch, bool(spec.constexprs.get("REGULARISED"))):
        return False
    if _coop_key(spec) and fits.cooperative_arch_miss(
            _coop_key(spec), spec.config.block_b if spec.config.registers else 0, arch):
        return False
    need = recorded_shared(spec, arch)
    return need is None or need <= SHARED_LIMIT[arch]


def _compile_child(spec, arch: int, send) -> None:
    send.send(_compile_in_process(spec, arch))
    send.close()


def _compile_in_process(spec, arch: int) -> dict:
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    row = _row(spec, arch)
    try:
        signature, constexprs, attrs = signature_of(spec)
        src = ASTSource(fn=spec.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        options = dict(num_warps=spec.config.num_warps, **(getattr(spec, "options", None) or {}))
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
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
        problems, noted = [], []
        if local or stack > getattr(spec, "accepted_stack", lambda arch: 0)(arch):
            problems.append(f"spills (STACK {stack}, LOCAL {local})")
        elif stack:
            noted.append(f"{stack} B of stack accepted (norm_rows.ACCEPTED_STACK)")
        if regs > MAX_REGISTERS:
            problems.append(f"{regs} registers")
        problems += report_checks.register_file_problems(regs, options["num_warps"])
        if shared > SHARED_LIMIT[arch]:
            problems.append(f"shared {shared} > {SHARED_LIMIT[arch]}")
        if options.get("launch_cooperative_grid") and not compiled.metadata.launch_cooperative_grid:
            problems.append("not compiled for a cooperative launch")
        need = recorded_shared(spec, arch)
        if need is not None and shared > need:
            problems.append(f"shared {shared} > {need} recorded in fits.py")
        analysis = report_checks.analyse(spec, compiled.asm)
        failed, open_ = report_checks.verdict(spec, analysis)
        problems += failed
        row.update({k: analysis[k] for k in ("ld_bytes", "w_bytes", "mma", "bar_sync", "grid_barriers",
                                              "ptx_mma_flops", "accesses", "on_chip")})
        row["open"] = "; ".join(open_ + noted)
        row["launched"] = launched_on(spec, arch)
        row["error"] = "; ".join(problems)
        row["ok"] = not problems or not row["launched"]
    except Exception as exc:  # a compile failure is a report row, not a crash
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return row


def compile_one(tier: str, index: int, arch: int) -> dict:
    """Compile specialisation ``index`` of :func:`specialisations` for ``sm_<arch>``."""
    return compile_spec(specialisations(tier)[index], arch)


# --------------------------------------------------------------------------------------
# The resident sweep: what goes into fits.RESIDENT
# --------------------------------------------------------------------------------------

SWEEP_DTYPES = ("float32", "float16", "bfloat16", "float64")
SWEEP_BLOCK_H = {"float64": (32, 64)}
SWEEP_BLOCK_H_DEFAULT = (32, 64, 128)
SWEEP_WARPS = (4, 8, 16)
#: The archs fits.RESIDENT records shared memory for (others: the largest; fits.RESIDENT_ARCH_MISSES).
SWEEP_ARCHS = (80, 90)


def _sweep_candidate(kind: str, dtype_name: str, block_h: int, warps: int, direction: str) -> dict:
    """Compile one resident kernel config on every arch (both precisions for fp32)."""
    dtype = getattr(torch, dtype_name)
    cfg = fits.KernelConfig(16, block_h, warps)
    kernel, pointers, ints = (
        (resident.resident_forward_kernel, resident.FORWARD_POINTERS, resident.FORWARD_INTS)
        if direction == "forward"
        else (resident.resident_backward_kernel, resident.BACKWARD_POINTERS, resident.BACKWARD_INTS)
    )
    rows = []
    for tf32 in ((False, True) if dtype == torch.float32 else (False,)):
        spec = resident.Specialisation(kernel, f"resident-{direction}", kind, dtype, dtype_name, cfg,
                                       resident.constexprs(kind, dtype, tf32, cfg), pointers, ints, None)
        rows += [compile_spec(spec, arch) for arch in SWEEP_ARCHS]
    shared = {arch: max(r["shared"] for r in rows if r["arch"] == f"sm_{arch}") for arch in SWEEP_ARCHS}
    # Clean: compiled with no spill on every arch and fits the reference arch; an entry
    # that needs more shared memory than an older arch has simply never runs there.
    clean = all(r["regs"] > 0 and r["spills"] == 0 for r in rows) and 0 < shared[fits.REFERENCE_ARCH] <= SHARED_LIMIT[
        fits.REFERENCE_ARCH]
    return dict(key=(kind, dtype_name, block_h, direction), warps=warps, clean=clean, shared=shared, rows=rows)


def _sweep_job(args):
    kind, dtype_name, block_h, direction = args
    tried = []
    weight_bytes = resident.cell_of(kind).gates * block_h * block_h * getattr(torch, dtype_name).itemsize
    if weight_bytes > SHARED_LIMIT[fits.REFERENCE_ARCH]:
        return tried  # W_hh alone is larger than any SM's shared memory
    for warps in SWEEP_WARPS:
        result = _sweep_candidate(kind, dtype_name, block_h, warps, direction)
        tried.append(result)
        if result["clean"]:
            break
    return tried


def sweep(jobs: int, only: list[str] | None = None) -> int:
    """Compile the candidates (or only the ``KIND,DTYPE,BLOCK_H`` entries of ``only``) and
    print the table rows they give."""
    wanted = {tuple(o.split(",")) for o in only} if only else None
    keys = [(kind, d, bh, direction) for kind in (c.name for c in resident.triton_cells()) for d in SWEEP_DTYPES
            for bh in SWEEP_BLOCK_H.get(d, SWEEP_BLOCK_H_DEFAULT) for direction in ("forward", "backward")
            if wanted is None or (kind, d, str(bh)) in wanted]
    with ProcessPoolExecutor(jobs) as pool:
        results = list(pool.map(_sweep_job, keys))
    chosen = {}
    for tried in results:
        for r in tried:
            for row in r["rows"]:
                print(f"# {r['key']} w{r['warps']} {row['dtype']} {row['arch']} regs {row['regs']} "
                      f"spills {row['spills']} shared {row['shared']} {'ok' if row['ok'] else row['error']}")
        last = tried[-1] if tried else None
        if last is not None and last["clean"]:
            chosen[last["key"]] = last
    print("RESIDENT = {")
    for kind in (c.name for c in resident.triton_cells()):
        for d in SWEEP_DTYPES:
            for bh in SWEEP_BLOCK_H.get(d, SWEEP_BLOCK_H_DEFAULT):
                if wanted is not None and (kind, d, str(bh)) not in wanted:
                    continue
                fwd, bwd = chosen.get((kind, d, bh, "forward")), chosen.get((kind, d, bh, "backward"))
                if fwd is None or bwd is None:
                    print(f"    # {kind} {d} {bh}: no clean configuration")
                    continue
                shared = {a: max(fwd["shared"][a], bwd["shared"][a]) for a in SWEEP_ARCHS}
                print(f"    ({kind!r}, {d!r}, {bh}): _fit({bh}, {fwd['warps']}, {bwd['warps']}, "
                      f"{shared[80]}, {shared[90]}),")
    print("}")
    return 0


def _interpreted() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(recurrent_step.recurrent_step_forward_kernel, InterpretedFunction)


def import_cells(targets) -> list[Path]:
    """Import each module name or ``.py`` path of ``targets`` (cell definitions register
    themselves when made); the source files imported, for the fingerprint."""
    files = []
    for target in targets:
        if target.endswith(".py") or os.sep in target:
            path = Path(target).resolve()
            name = f"_fastrnn_report_import_{path.stem}"
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot import {target}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        files.append(Path(module.__file__).resolve())
    return files


def row_keys(specs) -> list[str]:
    """One ``kernel dtype config arch`` line per row the report compiles, in report order."""
    keys = []
    for spec in specs:
        for arch in ARCHS:
            r = _row(spec, arch)
            keys.append(f"{r['kernel']} {r['dtype']} {r['config']} {r['arch']}")
    return keys


def sources_digest(extra_files=()) -> str:
    """sha256 over the kernel sources (``kernels/*.py``, by name) and ``extra_files``."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")) + [Path(f) for f in extra_files]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def fingerprint(imports=(), tier: str = "all") -> dict:
    """What a written report was made from, computed without compiling: the rows (after
    importing ``imports``) and the digest of the sources."""
    files = import_cells(imports)
    keys = row_keys(specialisations(tier))
    return dict(tier=tier, imports=list(imports), rows=len(keys),
                rows_sha256=hashlib.sha256("\n".join(keys).encode()).hexdigest(),
                sources_sha256=sources_digest(files))


FINGERPRINT_PREFIX = "<!-- fingerprint: "


def format_fingerprint(fp: dict) -> str:
    return FINGERPRINT_PREFIX + " ".join(
        f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in fp.items()) + " -->"


def parse_fingerprint(text: str) -> dict | None:
    """The fingerprint in a written report (None when it has none)."""
    for line in text.splitlines():
        if line.startswith(FINGERPRINT_PREFIX) and line.endswith(" -->"):
            fields = dict(item.split("=", 1) for item in line[len(FINGERPRINT_PREFIX):-4].split())
            fields["imports"] = [i for i in fields.get("imports", "").split(",") if i]
            fields["rows"] = int(fields["rows"])
            return fields
    return None


def command(fp: dict, path: str) -> str:
    """The command that writes the report ``fp`` describes to ``path``."""
    parts = ["python -m fastrnn.kernels.report"]  # (run with Triton's interpreter off: main() says so)
    if fp["tier"] != "all":
        parts.append(f"--tier {fp['tier']}")
    parts += [f"--import {i}" for i in fp["imports"]]
    return " ".join(parts + [f"--write {path}"])


_HEADER = ("kernel", "dtype", "config", "arch", "regs", "spills", "shared", "ld B/step", "W_hh B/step", "mma",
           "bar.sync", "grid barriers", "open", "result")
NOT_LAUNCHED = "not launched on this arch"


def result_of(r: dict) -> str:
    """``pass``, ``not launched on this arch`` (with what would be wrong, if anything) or
    ``FAIL <problems>``."""
    if not r["launched"] and r["regs"] >= 0:
        return NOT_LAUNCHED + (f" ({r['error']})" if r["error"] else "")
    return "pass" if r["ok"] else f"FAIL {r['error']}"


def _table_line(r: dict) -> str:
    line = (f"{r['kernel']:<27} {r['dtype']:<18} {r['config']:<18} {r['arch']:<6} {r['regs']:>5} "
            f"{r['spills']:>6} {r['shared']:>7} {r['ld_bytes']:>8} {r['w_bytes']:>7} {r['mma']:>4} "
            f"{r['bar_sync']:>4} {r['grid_barriers']:>3}  {result_of(r)}")
    return line + (f"  [open: {r['open']}]" if r["open"] else "")


def assertion_failures(rows: list) -> dict:
    """Assertion name -> the rows (``kernel dtype config arch``) where it fails, enforced
    (in ``error``) or open."""
    out = {name: [] for name in report_checks.ASSERTIONS}
    for r in rows:
        for part in (r["error"] + "; " + r["open"]).split("; "):
            name = part.split(":", 1)[0]
            if name in out:
                out[name].append(f"{r['kernel']} {r['dtype']} {r['config']} {r['arch']}")
    return out


def summary(rows: list, specs: int, archs=ARCHS) -> str:
    failed = sum(not r["ok"] for r in rows)
    idle = sum(not r["launched"] for r in rows)
    opened = {name: len(v) for name, v in assertion_failures(rows).items() if v}
    return (f"{len(rows)} rows ({specs} specialisations x {len(archs)} archs), {failed} failed, {idle} not launched "
            f"on their arch, max registers {max(r['regs'] for r in rows)}, max shared "
            f"{max(r['shared'] for r in rows)} B; assertion failures (enforced or open): "
            + (", ".join(f"{k} {v} rows" for k, v in opened.items()) or "none") + "; per arch (launched rows): "
            + ", ".join(_arch_summary([r for r in rows if r["arch"] == f"sm_{a}" and r["launched"]], a) for a in archs))


def _arch_summary(rows: list, arch: int) -> str:
    return (f"sm_{arch} {len(rows)} rows, {sum(not r['ok'] for r in rows)} failed, max registers "
            f"{max((r['regs'] for r in rows), default=0)}, max shared {max((r['shared'] for r in rows), default=0)} B")


def markdown(rows: list, specs: int, fp: dict, path: str) -> str:
    """The written report: header with the fingerprint, summary per kernel, every row."""
    spills = sum(r["spills"] > 0 for r in rows)
    lines = [
        "# Kernel compile report",
        "",
        f"Written by `{command(fp, path)}` (Triton's interpreter off; no GPU needed).",
        "Do not edit by hand: `tests/test_docs.py` recomputes the fingerprint below from the",
        "specialisations the launchers can pick and the kernel sources, and fails when this",
        "file no longer matches them. What the columns mean and what makes a row fail:",
        "[kernels.md](kernels.md#the-compile-report).",
        "",
        format_fingerprint(fp),
        "",
        f"Triton {triton.__version__}, torch {torch.__version__}. {summary(rows, specs)}, "
        f"{spills} rows with spills.",
        "",
        "| kernel | rows | failed | max registers | max spills | max shared memory (B) |",
        "|---|---|---|---|---|---|",
    ]
    by_kernel: dict = {}
    for r in rows:
        by_kernel.setdefault(r["kernel"], []).append(r)
    for kernel in sorted(by_kernel):
        group = by_kernel[kernel]
        lines.append(f"| `{kernel}` | {len(group)} | {sum(not r['ok'] for r in group)} | "
                     f"{max(r['regs'] for r in group)} | {max(r['spills'] for r in group)} | "
                     f"{max(r['shared'] for r in group)} |")
    lines += ["", "## Assertions", "",
              "Which rows fail each assertion of `fastrnn.kernels.report_checks` (enforced per tier by its "
              "`ENFORCED` table: an enforced failure fails the row, an open one is listed in the row's `open` "
              "column).", "", "| assertion | enforced for | rows failing | kernels |", "|---|---|---|---|"]
    for name, failing in assertion_failures(rows).items():
        tiers = ", ".join(t + (" (aligned rows)" if on.get(name) == "aligned" else "")
                          for t, on in report_checks.ENFORCED.items() if on.get(name)) or "none"
        kernels = sorted({f.split()[0] for f in failing})
        lines.append(f"| `{name}` | {tiers} | {len(failing)} | {', '.join(f'`{k}`' for k in kernels) or '—'} |")
    lines += ["", "## Expected time per step (an expectation, not a measurement)", "",
              "From each anchor's compiled rows (sm_80 for A100, sm_90 for H100) by "
              "`fastrnn.kernels.expected` (its constants and their sources are in that module): "
              "max(L2 + shared-memory traffic, MMA work) + grid barriers x an assumed latency. "
              "No GPU has run these kernels; latency is not modelled, so these are lower bounds.", "",
              expected.anchor_table(rows)]
    header = " | ".join(_HEADER)
    lines += ["", "## Every row", "",
              "Per program and time step, static (each instruction of the time loop once, nested loops once; "
              "a step-tier kernel is one step): global bytes loaded (PTX), of which W_hh (TTGIR data flow), "
              "MMA instructions, `bar.sync`, grid-barrier releases.", "",
              f"| {header} |", "|" + "---|" * len(_HEADER)]
    for r in rows:
        lines.append(f"| {r['kernel']} | {r['dtype']} | {r['config']} | {r['arch']} | {r['regs']} | "
                     f"{r['spills']} | {r['shared']} | {r['ld_bytes']} | {r['w_bytes']} | {r['mma']} | "
                     f"{r['bar_sync']} | {r['grid_barriers']} | {r['open'] or '—'} | {result_of(r)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile processes")
    parser.add_argument("--tier", choices=("all", "step", "norm", "resident", "resident-norm", "cooperative"),
                        default="all", help="which kernels (norm: the LayerNorm cells' row kernels; resident-norm: "
                        "their resident kernels)")
    parser.add_argument("--write", metavar="PATH", help="also write the table and summary as Markdown to PATH "
                        "(docs/compile-report.md), with the fingerprint tests/test_docs.py checks")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE_OR_PATH",
                        help="import a module or .py file first, so the cells it defines are listed (repeatable)")
    parser.add_argument("--arch", type=int, action="append", choices=sorted(SHARED_LIMIT), metavar="N",
                        help="compile for sm_N only (repeatable; default: every arch of ARCHS)")
    parser.add_argument("--sweep", action="store_true", help="compile the resident candidates, print fits.RESIDENT")
    parser.add_argument("--only", action="append", metavar="KIND,DTYPE,BLOCK_H",
                        help="with --sweep: only these entries (repeatable)")
    args = parser.parse_args(argv)
    if _interpreted():
        print("fastrnn.kernels.report: the kernels were built for Triton's interpreter (it is switched "
              "on in this environment); run the report with the interpreter off.", file=sys.stderr)
        return 2
    if args.sweep:
        import_cells(args.imports)
        return sweep(args.jobs, args.only)
    archs = tuple(sorted(set(args.arch))) if args.arch else ARCHS
    if args.write and archs != ARCHS:
        parser.error("--write compiles every arch (leave out --arch)")
    fp = fingerprint(args.imports, args.tier)
    specs = specialisations(args.tier)
    jobs = [(args.tier, i, arch) for i in range(len(specs)) for arch in archs]
    start = time.time()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=import_cells, initargs=(args.imports,)) as pool:
            rows = list(pool.map(compile_one, *zip(*jobs)))
    else:
        rows = [compile_one(*job) for job in jobs]
    header = (f"{'kernel':<27} {'dtype':<18} {'config':<18} {'arch':<6} {'regs':>5} {'spills':>6} "
              f"{'shared':>7} {'ldB':>8} {'W_hhB':>7} {'mma':>4} {'bar':>4} {'gb':>3}  result")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(_table_line(r))
    for name, failing in assertion_failures(rows).items():
        if failing:
            print(f"\n{name} fails on {len(failing)} rows:")
            print("\n".join(f"  {f}" for f in failing))
    print(f"\n{summary(rows, len(specs), archs)}, {time.time() - start:.1f} s")
    if args.tier == "all":
        print("\nExpected time per step (an expectation from the static profile, not a measurement):")
        print(expected.anchor_table(rows))
    if args.write:
        Path(args.write).write_text(markdown(rows, len(specs), fp, args.write))
        print(f"wrote {args.write}")
    return 1 if any(not r["ok"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
