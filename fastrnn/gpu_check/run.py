"""The command: argument parsing, the time budget, the phases in order, the result files."""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import signal
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
    p = argparse.ArgumentParser(
        prog="python -m fastrnn.gpu_check",
        description="Prove fastrnn on a GPU in one command: correctness against torch.nn (cuDNN) and a float64 "
                    "run (every tier, cell kind and precision), then speed against cuDNN at the benchmark anchors, "
                    "within a time budget. Writes OUT/gpu-<device>.json, .png and .md; exit status 1 on any "
                    "correctness failure.")
    p.add_argument("--out", required=True, type=Path, help="folder for gpu-<device>.json/.png/.md")
    p.add_argument("--dry-run", action="store_true",
                   help="on the CPU in Triton's interpreter, tiny shapes, no speed claims (for CI)")
    p.add_argument("--quick", action="store_true", help="a ~3-minute subset (fewer cases)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new work after this many seconds (default 420; 180 with --quick)")
    p.add_argument("--only", default=None,
                   help="run only the correctness / speed cases whose name contains this (no self-check verdicts "
                        "or other checks); e.g. to rerun one failing case")
    p.add_argument("--tol-scale", type=float, default=1.0,
                   help="multiply every correctness bound (0: any difference fails; for testing the verdict)")
    return p.parse_args(argv)


def _interpreted() -> bool:
    """Whether fastrnn's kernels were built for Triton's interpreter (the caller switched it
    on before starting this process, as the dry run needs; docs/environment.md)."""
    from fastrnn.backends import triton as triton_backend

    return triton_backend._interpreted()


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
    if args.dry_run and not _interpreted():
        print("gpu_check: --dry-run runs the kernels in Triton's interpreter: switch it on for this process "
              "(docs/environment.md)", file=sys.stderr)
        return 2
    if not args.dry_run and _interpreted():
        print("gpu_check: Triton's interpreter is on in this process; switch it off for a GPU run (or pass "
              "--dry-run)", file=sys.stderr)
        return 2
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --dry-run to walk the code on the CPU", file=sys.stderr)
        return 2
    from . import checks, plan, report

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
    results: dict = dict(self_check=[], correctness=[], extras=[], speed=[])
    commit, dirty = _git()
    meta = dict(device=device_name, sms=sms, dry_run=args.dry_run, quick=args.quick, budget_s=budget,
                command="python -m fastrnn.gpu_check " + " ".join(argv), versions=_versions(), git_commit=commit,
                git_dirty=dirty, kinds=kinds, device_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
                tolerances=dict(floor=plan.FLOOR, baseline_factor=plan.BASELINE_FACTOR, tol_scale=args.tol_scale),
                interrupted=None)

    last_save = [0.0]

    def save_partial() -> None:
        """The JSON so far, between cases (at most every 10 s: it grows to megabytes): a run
        killed from outside still leaves it."""
        if time.monotonic() - last_save[0] < 10.0:
            return
        results["meta"] = dict(meta, elapsed_s=time.monotonic() - start, partial=True, not_run=None)
        report.write_json(results, args.out, slug)
        last_save[0] = time.monotonic()

    def on_signal(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _phases(args, env, budget, results, kinds, save_partial)
    except Interrupted as exc:
        meta["interrupted"] = f"stopped by {exc} at {env.elapsed():.0f} s; the results so far are written"
        log(meta["interrupted"])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    not_run = sum(r["status"] == "not run" for k in ("correctness", "speed", "extras") for r in results[k])
    results["meta"] = dict(meta, elapsed_s=time.monotonic() - start, partial=False, not_run=not_run)
    passed, reasons = report.verdict(results)
    results["verdict"] = "FAIL" if not passed else ("INCOMPLETE" if meta["interrupted"] else "PASS")
    results["failures"] = reasons
    paths = report.write_all(results, args.out, slug)
    log(f"verdict {results['verdict']}: {len(reasons)} failures; wrote " + ", ".join(str(p) for p in paths))
    return {"PASS": 0, "FAIL": 1, "INCOMPLETE": 3}[results["verdict"]]


class Interrupted(BaseException):
    """SIGTERM / SIGINT (e.g. from ``timeout``) during a phase: stop, write what was gathered.
    A BaseException (like KeyboardInterrupt), so that no ``except Exception`` on the way, a
    failed-check handler included, mistakes it for a failure of what was running."""


def _not_run(rec: dict) -> dict:
    return dict(rec, status="not run", why="time budget spent")


def _phases(args, env, budget: float, results: dict, kinds: list[str], save_partial) -> None:
    """Correctness (self-check verdicts, the case grid, the other checks), then speed; each
    phase starts no new work after its share of the budget (:data:`PHASE_END`)."""
    from . import checks, extras, plan, report, timing

    precisions = list(plan.PRECISIONS)

    def phase(name: str) -> None:
        env.deadline = env.start + PHASE_END[name] * budget
        env.log(f"--- {name} (until {PHASE_END[name] * budget:.0f} s)")

    # 1. correctness: first-use self-check verdicts, the case grid, the other checks
    phase("self-check")
    if args.dry_run:
        sc_kinds, sc_precs = (["LSTM"], ["fp32"]) if args.quick else (kinds, ["fp32", "fp16"])
    else:
        sc_kinds, sc_precs = (["LSTM", "GRU"], ["fp16"]) if args.quick else (kinds, precisions)
    if args.only is None:
        checks.self_check_verdicts(sc_kinds, sc_precs, plan.SMALL.hidden, env, results["self_check"])

    phase("correctness")
    cases = plan.correctness_cases(kinds, precisions, args.quick, args.dry_run)
    if args.only:
        cases = [c for c in cases if args.only in c.name]
    for i, case in enumerate(cases):
        save_partial()
        if env.left() <= 0:
            results["correctness"].append(_not_run(dict(case=case.name, kind=case.kind, tier=case.tier,
                                                        precision=case.precision)))
            continue
        rec = checks.run_case(case, env)
        results["correctness"].append(rec)
        why = report._why(rec) if rec["status"] != "ok" else ""
        env.log(f"case {i + 1}/{len(cases)} {case.name}: {rec['status']} {why}".rstrip())

    phase("extras")
    if args.only is None:
        extras.run_all(env, args.quick, results["extras"])

    # 2. speed
    phase("speed")
    speed = plan.speed_cases(args.quick, args.dry_run)
    if args.only:
        speed = [c for c in speed if args.only in c.name]
    warmup, rounds = (1, 1) if args.dry_run else (2, 5 if args.quick else 7)
    for i, case in enumerate(speed):
        save_partial()
        if env.left() <= 0:
            results["speed"].append(_not_run(dict(case=case.name, kind=case.kind, direction=case.direction,
                                                  tier=case.tier)))
            continue
        try:
            rec = timing.run_speed(case, env, warmup, rounds)
        except Exception as exc:  # a speed case that raises is recorded, not fatal
            rec = dict(case=case.name, kind=case.kind, direction=case.direction, tier=case.tier, status="error",
                       why=f"{type(exc).__name__}: {exc}")
        results["speed"].append(rec)
        ratio = rec.get("ratio_median")
        env.log(f"speed {i + 1}/{len(speed)} {case.name}: {rec['status']}"
                + (f" ratio {ratio:.3g}" if ratio is not None else f" {rec.get('why', '')}"))
