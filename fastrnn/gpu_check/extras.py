"""Checks beyond the case grid: barrier stress, torch.compile, the variant layers, a second
device, compute-sanitizer.

Each returns a dict with ``check``, ``status`` (ok / fail / error / skipped) and details.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import replace

import torch

import fastrnn

from . import checks, plan, variants


def _guard(name: str, fn, env: checks.Env) -> dict:
    start = time.monotonic()
    try:
        out = fn(env)
    except Exception as exc:  # the check itself failed: an error row, never a silent pass
        out = dict(status="error", why=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=-8))
    out = dict(check=name, **out)
    out["seconds"] = time.monotonic() - start
    env.log(f"{name}: {out['status']} {out.get('why', '')}".rstrip())
    return out


def barrier_stress(env: checks.Env, launches: int) -> dict:
    """Many cooperative forward launches back to back (no synchronisation between them), then
    the same split over two CUDA streams at once (two grids sharing the SMs: sized so both fit,
    16 programs each); every output must equal the first bit for bit (the same kernel on the
    same inputs sums in the same order), and the first must match the step tier."""
    from fastrnn.kernels.launches import count_launches

    gpu = env.device.type == "cuda"
    dtype = torch.float16 if gpu else torch.float32
    hidden, batch, steps = (256, 16, 32) if gpu else (32, 3, 2)
    gen = torch.Generator().manual_seed(7)
    with checks.precision(False), checks.environ(FASTRNN_TIER="cooperative"), env.coop_context():
        model = fastrnn.LSTM(hidden, hidden, backend="triton", device=env.device, dtype=dtype)
        x = torch.randn(steps, batch, hidden, generator=gen).to(env.device, dtype)
        with torch.no_grad(), count_launches() as counter:
            first = model(x)[0]
            outs = [model(x)[0] for _ in range(launches)]
            streams = "skipped: no CUDA streams in Triton's interpreter"
            stream_outs = []
            if gpu:
                other = copy.deepcopy(model)
                s1, s2 = torch.cuda.Stream(env.device), torch.cuda.Stream(env.device)
                s1.wait_stream(torch.cuda.current_stream(env.device))
                s2.wait_stream(torch.cuda.current_stream(env.device))
                for _ in range(max(1, launches // 2)):
                    with torch.cuda.stream(s1):
                        stream_outs.append(model(x)[0])
                    with torch.cuda.stream(s2):
                        stream_outs.append(other(x)[0])
                torch.cuda.current_stream(env.device).wait_stream(s1)
                torch.cuda.current_stream(env.device).wait_stream(s2)
                torch.cuda.synchronize(env.device)
                streams = f"{len(stream_outs)} launches on two streams"
        with checks.environ(FASTRNN_TIER="step"), torch.no_grad():
            step = model(x)[0]
    diffs = [(o.float() - first.float()).abs().max().item() for o in outs + stream_outs]
    vs_step = checks.normwise_error(first, step.double())
    bound = env.tol_scale * plan.FLOOR["fp16" if gpu else "fp32"]
    ok = max(diffs, default=0.0) == 0.0 and vs_step <= bound
    _, variants = checks.ran_variants(counter)
    return dict(status="ok" if ok else "fail", launches=len(outs) + len(stream_outs) + 1, streams=streams,
                max_difference_between_launches=max(diffs, default=0.0), error_vs_step=vs_step, bound=bound,
                variants=variants, shape=dict(T=steps, B=batch, H=hidden, dtype=str(dtype)))


def compile_check(env: checks.Env) -> dict:
    """``torch.compile(mode="reduce-overhead")`` (CUDA graphs) of a padded LSTM layer: three
    calls (warm-up, capture, replay), each equal to eager. The dry run compiles with the
    ``eager`` backend (Dynamo's tracing only: CUDA graphs need a GPU)."""
    gpu = env.device.type == "cuda"
    steps, batch, inp, hidden = (16, 8, 32, 64) if gpu else (3, 2, 4, 32)
    gen = torch.Generator().manual_seed(3)
    with checks.precision(False):
        model = fastrnn.LSTM(inp, hidden, backend="triton", device=env.device, dtype=torch.float32)
        x = torch.randn(steps, batch, inp, generator=gen).to(env.device)
        with torch.no_grad():
            eager_y, (eager_h, eager_c) = model(x)
            torch._dynamo.reset()
            mode = dict(mode="reduce-overhead") if gpu else dict(backend="eager")
            compiled = torch.compile(model, **mode)
            errors = []
            for _ in range(3):
                y, (h, c) = compiled(x)
                # CUDA-graph outputs are overwritten by the next replay: compare before it
                errors.append(max(checks.normwise_error(a, b) for a, b in
                                  ((y, eager_y), (h, eager_h), (c, eager_c))))
            if gpu:
                torch.cuda.synchronize(env.device)
    bound = env.tol_scale * 1e-6
    ok = max(errors) <= bound
    return dict(status="ok" if ok else "fail", mode=str(mode), errors_per_call=errors, bound=bound)


def second_device(env: checks.Env) -> dict:
    """A 2-layer bidirectional packed LSTM on ``cuda:1`` (the current device stays cuda:0)
    against torch.nn there."""
    if env.device.type != "cuda":
        return dict(status="skipped", why="dry run: no CUDA device")
    if torch.cuda.device_count() < 2:
        return dict(status="skipped", why="one device")
    other = replace(env, device=torch.device("cuda:1"))
    case = plan.CorrCase("LSTM", "auto", "fp32", "packed", "L2-bi-h0", plan.SMALL)
    rec = checks.run_case(case, other)
    return dict(status=rec["status"], why=rec.get("why", ""), case=rec)


def _sanitizer_path() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.exists(os.path.join(root, "bin", "compute-sanitizer")):
            return os.path.join(root, "bin", "compute-sanitizer")
    return None


def sanitizer(env: checks.Env, per_tool_s: float = 150.0) -> list[dict]:
    """``compute-sanitizer --tool racecheck`` and ``--tool synccheck`` over one resident and
    one cooperative launch (forward and backward) of a small LSTM
    (:mod:`fastrnn.gpu_check.sanitize_case`, a subprocess)."""
    out = []
    exe = _sanitizer_path()
    for tool in ("racecheck", "synccheck"):
        name = f"compute-sanitizer {tool}"
        if env.device.type != "cuda":
            out.append(dict(check=name, status="skipped", why="dry run: no CUDA device"))
            continue
        if exe is None:
            out.append(dict(check=name, status="skipped", why="compute-sanitizer is not installed"))
            continue
        timeout = min(per_tool_s, env.left())
        if timeout < 20:
            out.append(dict(check=name, status="not run", why="time budget spent"))
            continue
        start = time.monotonic()
        cmd = [exe, "--tool", tool, sys.executable, "-m", "fastrnn.gpu_check.sanitize_case"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            text = proc.stdout + proc.stderr
            m = re.search(r"ERROR SUMMARY:\s*(\d+)", text)
            errors = int(m.group(1)) if m else None
            ok = proc.returncode == 0 and errors == 0 and "sanitize_case: done" in text
            rec = dict(check=name, status="ok" if ok else "fail", returncode=proc.returncode, errors=errors,
                       output_tail=text[-3000:])
        except subprocess.TimeoutExpired as exc:
            tail = ((exc.stdout or b"") + (exc.stderr or b""))[-3000:]
            rec = dict(check=name, status="error", why=f"timed out after {timeout:.0f} s",
                       output_tail=tail.decode(errors="replace") if isinstance(tail, bytes) else str(tail))
        rec["seconds"] = time.monotonic() - start
        env.log(f"{name}: {rec['status']} (errors: {rec.get('errors')})")
        out.append(rec)
    return out


def run_all(env: checks.Env, quick: bool, out: list | None = None) -> list[dict]:
    """Every extra check, in order, each skipped once the phase's time is spent; appended to
    ``out`` as they finish."""
    launches = (64 if quick else 256) if env.device.type == "cuda" else 3
    jobs = [
        ("barrier stress", lambda e: barrier_stress(e, launches)),
        ("torch.compile reduce-overhead", compile_check),
        ("variant layers and resets per tier", variants.variants_check),
        ("model on cuda:1", second_device),
    ]
    out = [] if out is None else out
    for name, fn in jobs:
        if env.left() <= 0:
            out.append(dict(check=name, status="not run", why="time budget spent"))
            continue
        out.append(_guard(name, fn, env))
    out.extend(sanitizer(env))
    return out
