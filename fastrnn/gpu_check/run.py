"""The command: argument parsing, the time budget, the phases in order, the result files."""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

#: SM count the dry run gives Triton's interpreter (where the tier choice assumes an H100's
#: 132): with 2, a hidden size of 32 (2 programs per group of rows) reaches all three
#: cooperative variants at batches of 5, 17 and 65 rows instead of thousands.
DRY_RUN_SMS = 2
#: Phases stop starting new work at these fractions of the budget (correctness first; the
#: speed phase gets the rest, and whatever an earlier phase leaves).
PHASE_END = {"self-check": 0.15, "correctness": 0.55, "extras": 0.72, "speed": 1.0}
REPO = Path(__file__).resolve().parents[2]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fastrnn.gpu_check", description=__doc__)
    p.add_argument("--out", required=True, type=Path, help="folder for gpu-<device>.json/.png/.md")
    p.add_argument("--dry-run", action="store_true",
                   help="on the CPU in Triton's interpreter, tiny shapes, no speed claims (for CI)")
    p.add_argument("--quick", action="store_true", help="a ~3-minute subset (fewer cases)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new work after this many seconds (default 420; 180 with --quick)")
    p.add_argument("--only", default=None, help="run only the correctness / speed cases whose name contains this")
    p.add_argument("--tol-scale", type=float, default=1.0,
                   help="multiply every correctness bound (0: any difference fails; for testing the verdict)")
    return p.parse_args(argv)


def _ensure_interpreter(argv) -> None:
    """Triton's interpreter must be on before any kernel module is imported (``@triton.jit``
    reads it then): set it, or, if a kernel module is already loaded, start again with it set."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    loaded = [m for m in sys.modules if m.startswith("fastrnn.kernels.") or m == "fastrnn.backends.triton_backend"]
    os.environ["TRITON_INTERPRET"] = "1"
    if loaded:
        os.execv(sys.executable, [sys.executable, "-m", "fastrnn.gpu_check", *argv])


def _git() -> tuple[str | None, bool | None]:
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=10)
        if commit.returncode == 0:
            return commit.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return None, None


def _versions() -> dict:
    import torch

    out = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda)
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    try:
        out["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        out["cudnn"] = None
    import fastrnn

    out["fastrnn"] = fastrnn.__version__
    return out


def load_custom_cells(log) -> list[str]:
    """Names of the cells examples/custom_cell.py defines (imported by path), if it exists."""
    path = REPO / "examples" / "custom_cell.py"
    if not path.exists():
        log("custom cell: examples/custom_cell.py not found")
        return []
    from fastrnn import cells

    before = {c.name for c in cells.defined()}
    spec = importlib.util.spec_from_file_location("fastrnn_gpu_check_custom_cell", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        log(f"custom cell: importing {path} failed: {type(exc).__name__}: {exc}")
        return []
    return [c.name for c in cells.defined() if c.name not in before]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.dry_run:
        _ensure_interpreter(argv)
    elif os.environ.get("TRITON_INTERPRET") == "1":
        print("gpu_check: TRITON_INTERPRET=1 is set; unset it for a GPU run (or pass --dry-run)", file=sys.stderr)
        return 2
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --dry-run to walk the code on the CPU", file=sys.stderr)
        return 2
    from . import checks, extras, plan, report, timing

    budget = args.budget_s if args.budget_s is not None else (180.0 if args.quick else 420.0)
    start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - start:7.1f} s] {msg}", flush=True)

    if args.dry_run:
        device = torch.device("cpu")
        os.environ.setdefault("FASTRNN_SELF_CHECK", "0")  # the verdict phase turns it on itself
        from fastrnn._threaded_interpreter import threaded_programs
        from fastrnn.kernels import cooperative, fits

        fits.REFERENCE_SMS = DRY_RUN_SMS  # what the tier choice assumes for interpreted launches
        cooperative.BARRIER_TIMEOUT_US = 60_000_000  # an interpreted program may wait seconds
        coop_context, sms, device_name, slug = threaded_programs, DRY_RUN_SMS, "CPU (Triton interpreter)", "dry-run"
    else:
        import contextlib

        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
        props = torch.cuda.get_device_properties(device)
        coop_context, sms, device_name = contextlib.nullcontext, props.multi_processor_count, props.name
        slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    env = checks.Env(device=device, dry_run=args.dry_run, sms=sms, tol_scale=args.tol_scale, start=start,
                     deadline=start + budget, log=log, only=args.only, coop_context=coop_context)
    log(f"gpu_check on {device_name}: {sms} SMs, budget {budget:.0f} s{' (dry run)' if args.dry_run else ''}")

    from fastrnn import cells

    custom = load_custom_cells(log)
    kinds = [c.name for c in cells.defined() if c.name in checks.BUILTIN or c.name in custom]
    log(f"cell kinds: {kinds}")
    precisions = list(plan.PRECISIONS)
    results = dict(self_check=[], correctness=[], extras=[], speed=[])
    not_run = 0

    def phase(name: str) -> None:
        env.deadline = start + PHASE_END[name] * budget
        log(f"--- {name} (until {PHASE_END[name] * budget:.0f} s)")

    # 1. correctness: first-use self-check verdicts, the case grid, the other checks
    phase("self-check")
    if args.dry_run:
        sc_kinds, sc_precs = (["LSTM"], ["fp32"]) if args.quick else (kinds, ["fp32", "fp16"])
    else:
        sc_kinds, sc_precs = (["LSTM", "GRU"], ["fp16"]) if args.quick else (kinds, precisions)
    if args.only is None:
        results["self_check"] = checks.self_check_verdicts(sc_kinds, sc_precs, plan.SMALL.hidden, env)

    phase("correctness")
    cases = plan.correctness_cases(kinds, precisions, args.quick, args.dry_run)
    if args.only:
        cases = [c for c in cases if args.only in c.name]
    for i, case in enumerate(cases):
        if env.left() <= 0:
            results["correctness"].append(dict(case=case.name, kind=case.kind, tier=case.tier,
                                               precision=case.precision, status="not run", why="time budget spent"))
            not_run += 1
            continue
        rec = checks.run_case(case, env)
        results["correctness"].append(rec)
        log(f"case {i + 1}/{len(cases)} {case.name}: {rec['status']} {report._why(rec) if rec['status'] != 'ok' else ''}"
            .rstrip())

    phase("extras")
    if args.only is None:
        results["extras"] = extras.run_all(env, args.quick)

    # 2. speed
    phase("speed")
    speed = plan.speed_cases(args.quick, args.dry_run)
    if args.only:
        speed = [c for c in speed if args.only in c.name]
    warmup, rounds = (1, 1) if args.dry_run else (2, 5 if args.quick else 7)
    for i, case in enumerate(speed):
        if env.left() <= 0:
            results["speed"].append(dict(case=case.name, kind=case.kind, direction=case.direction,
                                         tier=case.tier, status="not run", why="time budget spent"))
            not_run += 1
            continue
        try:
            rec = timing.run_speed(case, env, warmup, rounds)
        except Exception as exc:  # a speed case that raises is recorded, not fatal
            rec = dict(case=case.name, kind=case.kind, direction=case.direction, tier=case.tier, status="error",
                       why=f"{type(exc).__name__}: {exc}")
        results["speed"].append(rec)
        ratio = rec.get("ratio_median")
        log(f"speed {i + 1}/{len(speed)} {case.name}: {rec['status']}"
            + (f" ratio {ratio:.3g}" if ratio is not None else f" {rec.get('why', '')}"))

    # 3. results
    commit, dirty = _git()
    results["meta"] = dict(device=device_name, sms=sms, dry_run=args.dry_run, quick=args.quick, budget_s=budget,
                           elapsed_s=time.monotonic() - start, command="python -m fastrnn.gpu_check " + " ".join(argv),
                           versions=_versions(), git_commit=commit, git_dirty=dirty, kinds=kinds,
                           device_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
                           tolerances=dict(floor=plan.FLOOR, baseline_factor=plan.BASELINE_FACTOR,
                                           tol_scale=args.tol_scale),
                           not_run=not_run)
    passed, reasons = report.verdict(results)
    results["verdict"] = "PASS" if passed else "FAIL"
    results["failures"] = reasons
    paths = report.write_all(results, args.out, slug)
    log(f"verdict {results['verdict']}: {len(reasons)} failures; wrote " + ", ".join(str(p) for p in paths))
    return 0 if passed else 1
