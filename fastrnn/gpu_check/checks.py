"""Correctness: each case against torch.nn (cuDNN) and a float64 run, every output and gradient.

A case builds three models with the same weights (drawn in float64, rounded to the case's
dtype): fastrnn on the Triton backend (with ``FASTRNN_TIER`` forcing the case's tier), the
baseline in the case's dtype (``torch.nn``, i.e. cuDNN, for the built-in kinds; the
reference backend for a custom cell, and for every kind in the dry run), and the truth (the
baseline's implementation in float64 on the same rounded weights and inputs). It runs each
forward and backward from the same output gradients and compares ``y``, ``h_n``, ``c_n`` and
the gradients of the input, ``h0``, ``c0`` and every parameter (:func:`compare`; the
tolerances are :data:`fastrnn.gpu_check.plan.FLOOR`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
import traceback
import zlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import cells as fcells

from . import plan

BUILTIN = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")


@dataclass
class Env:
    """What every check needs to know about the run."""

    device: torch.device
    dry_run: bool
    sms: int
    tol_scale: float
    start: float
    deadline: float
    log: Callable[[str], None]
    only: str | None = None
    coop_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    custom_cells: dict = field(default_factory=dict)  # name -> Cell from an example file

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.deadline - time.monotonic()


@contextlib.contextmanager
def environ(**values):
    """Set (a str) or unset (None) environment variables for the block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def precision(tf32: bool):
    """TF32 on or off for cuDNN and torch's matmuls (fastrnn's kernels follow cuDNN's flag)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def cell_of(kind: str):
    return fcells.get(kind)


def make_model(kind: str, impl: str, env: Env, input_size: int, hidden: int, layers: int, bidirectional: bool,
               dtype: torch.dtype) -> torch.nn.Module:
    """``impl``: ``"fastrnn"`` (Triton backend), ``"baseline"`` / ``"truth"`` (torch.nn on a
    GPU for the built-in kinds, else fastrnn's reference backend)."""
    kw = dict(num_layers=layers, bidirectional=bidirectional, device=env.device, dtype=dtype)
    backend = "triton" if impl == "fastrnn" else "reference"
    if kind not in BUILTIN:
        recurrent = getattr(fastrnn, "Recurrent", None)
        if recurrent is None:
            raise NotImplementedError("fastrnn.Recurrent (modules of a custom cell) is not available")
        return recurrent(kind, input_size, hidden, backend=backend, **kw)
    use_torch = impl != "fastrnn" and not env.dry_run
    if kind in ("LSTM", "GRU"):
        cls = getattr(torch.nn if use_torch else fastrnn, kind)
        return cls(input_size, hidden, **kw) if use_torch else cls(input_size, hidden, backend=backend, **kw)
    nonlinearity = "tanh" if kind == "RNN_TANH" else "relu"
    if use_torch:
        return torch.nn.RNN(input_size, hidden, nonlinearity=nonlinearity, **kw)
    return fastrnn.RNN(input_size, hidden, nonlinearity=nonlinearity, backend=backend, **kw)


@dataclass
class Problem:
    """Inputs of one case in float64 (already rounded to the case's dtype)."""

    x: torch.Tensor
    lengths: torch.Tensor | None
    h0: torch.Tensor | None
    c0: torch.Tensor | None
    seed: int


def lengths_for(batch: int, steps: int, gen: torch.Generator) -> torch.Tensor:
    """Unsorted lengths in [1, steps], one of them ``steps``."""
    lengths = torch.randint(1, steps + 1, (batch,), generator=gen)
    lengths[batch // 2] = steps
    return lengths


def run_model(model, prob: Problem, dtype, has_c: bool, grad_out: dict | None, seed: int):
    """Forward and backward of ``model`` on ``prob`` cast to ``dtype``; returns ``(outputs,
    grads, grad_out)``. ``grad_out`` (float64, per output) is drawn on first use."""
    x = prob.x.to(dtype).requires_grad_()
    h0 = prob.h0.to(dtype).requires_grad_() if prob.h0 is not None else None
    c0 = prob.c0.to(dtype).requires_grad_() if (has_c and prob.c0 is not None) else None
    inp = pack_padded_sequence(x, prob.lengths, enforce_sorted=False) if prob.lengths is not None else x
    state = None if h0 is None else ((h0, c0) if has_c else h0)
    out, hn = model(inp, state)
    y = out.data if prob.lengths is not None else out
    h_n, c_n = hn if has_c else (hn, None)
    outputs = {"y": y, "h_n": h_n}
    if has_c:
        outputs["c_n"] = c_n
    if grad_out is None:
        gen = torch.Generator().manual_seed(seed + 1)
        grad_out = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64).to(dtype).double()
                    for k, v in outputs.items()}
    leaves = {"input": x}
    if h0 is not None:
        leaves["h0"] = h0
    if c0 is not None:
        leaves["c0"] = c0
    leaves.update(dict(model.named_parameters()))
    grads = torch.autograd.grad(list(outputs.values()), list(leaves.values()),
                                [grad_out[k].to(device=v.device, dtype=v.dtype) for k, v in outputs.items()],
                                allow_unused=True)
    result = {k: v.detach() for k, v in outputs.items()}
    result.update({f"d{k}": (g.detach() if g is not None else None) for k, g in zip(leaves, grads)})
    return result, grad_out


def normwise_error(a: torch.Tensor | None, truth: torch.Tensor | None) -> float:
    """``max|a - truth| / max|truth|`` in float64 (inf for NaN / a missing tensor)."""
    if a is None or truth is None:
        return 0.0 if a is None and truth is None else float("inf")
    a, truth = a.double(), truth.double().to(a.device)
    if a.shape != truth.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    diff = (a - truth).abs().nan_to_num(float("inf")).max().item()
    return diff / max(truth.abs().max().item(), 1e-6)


def compare(fast: dict, base: dict, truth: dict, precision_name: str, tol_scale: float) -> list[dict]:
    """One row per output / gradient: fastrnn's and the baseline's error against the truth and
    the bound fastrnn's must stay under (``tol_scale`` scales it: 0 makes any difference fail)."""
    rows = []
    for name, t in truth.items():
        e_fast = normwise_error(fast.get(name), t)
        # no baseline result (it could not run this case): the precision's floor alone
        e_base = normwise_error(base[name], t) if name in base else None
        bound = tol_scale * max(plan.FLOOR[precision_name], plan.BASELINE_FACTOR * (e_base or 0.0))
        rows.append(dict(tensor=name, error=e_fast, baseline_error=e_base, bound=bound, ok=bool(e_fast <= bound)))
    return rows


def _tier_refusal(kind: str, case_tier: str, hidden: int, dtype, env: Env) -> tuple[str, str] | None:
    """``("n/a", why)`` when the forced tier cannot run the case, ``("fail", why)`` when asking
    for it fails otherwise (e.g. its first-use check), None when it will run."""
    from fastrnn.backends.triton import tier_for

    if env.dry_run and dtype == torch.bfloat16:
        return "n/a", "Triton's interpreter computes bfloat16 tl.dot wrongly; bf16 runs on a GPU only"
    try:
        with environ(FASTRNN_TIER=case_tier):
            tier_for(kind, hidden, 0, dtype, env.device)
    except RuntimeError as exc:
        msg = str(exc)
        return ("n/a" if _refused(msg) else "fail"), msg
    return None


def _refused(message: str) -> bool:
    """A forced tier's RuntimeError says the tier cannot run the layer (a refusal by the tier
    table), not that it failed (its first-use check)."""
    return "cannot run" in message and "first-use check" not in message


def ran_variants(counter) -> tuple[list, list]:
    """Tiers and cooperative variants the launch counter saw."""
    tiers = sorted({tier for tier, _ in counter.tiers})
    variants = sorted({(f"R{cfg.block_b}" if getattr(cfg, "registers", False) else "tiled")
                       for tier, _, cfg in counter.configs if tier == "cooperative"})
    return tiers, variants


def run_case(case: plan.CorrCase, env: Env) -> dict:
    """Run one correctness case; a dict with its status (ok / fail / n/a / error) and rows."""
    from fastrnn.kernels.launches import count_launches

    dtype, tf32 = plan.PRECISIONS[case.precision]
    s = case.shape
    batch = s.batch
    record = dict(case=case.name, kind=case.kind, tier=case.tier, precision=case.precision, layout=case.layout,
                  structure=case.structure, anchor=case.anchor, steps=s.steps, input=s.input, hidden=s.hidden)
    if case.variant is not None:
        rows = _coop_rows(s.hidden, dtype, tf32, env.device)
        batch = plan.coop_batch(case.variant, s.hidden, env.sms, rows, small=s.batch)
        if batch is None:
            why = (f"H={s.hidden} needs more programs than the {env.sms} SMs" if -(-s.hidden // 16) > env.sms
                   else f"no {case.variant} variant for H={s.hidden} (register rows {rows})")
            return dict(record, batch=None, status="n/a", why=why)
    record["batch"] = batch
    if case.kind not in BUILTIN and getattr(fastrnn, "Recurrent", None) is None:
        return dict(record, status="n/a", why="fastrnn.Recurrent (modules of a custom cell) is not available")
    with precision(tf32):  # the tier choice (and its first-use check) see the case's TF32 setting
        refusal = _tier_refusal(case.kind, case.forced, s.hidden, dtype, env)
    if refusal is not None:
        return dict(record, status=refusal[0], why=refusal[1])
    has_c = cell_of(case.kind).has_cell_state
    seed = zlib.crc32(case.name.encode()) % (2**31)  # the same in every process
    gen = torch.Generator().manual_seed(seed)
    directions = 2 if case.bidirectional else 1

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).double().to(env.device)

    prob = Problem(
        x=rnd(s.steps, batch, s.input),
        lengths=lengths_for(batch, s.steps, gen) if case.layout == "packed" else None,
        h0=rnd(case.layers * directions, batch, s.hidden) if case.h0 else None,
        c0=rnd(case.layers * directions, batch, s.hidden) if (case.h0 and has_c) else None,
        seed=seed,
    )
    start = time.monotonic()
    try:
        with precision(tf32):
            torch.manual_seed(seed)
            truth_model = make_model(case.kind, "truth", env, s.input, s.hidden, case.layers, case.bidirectional,
                                     torch.float64)
            with torch.no_grad():
                for p in truth_model.parameters():
                    p.copy_(p.to(dtype).double())
            base_model = copy.deepcopy(truth_model).to(dtype)
            fast_model = make_model(case.kind, "fastrnn", env, s.input, s.hidden, case.layers, case.bidirectional,
                                    dtype)
            fast_model.load_state_dict(truth_model.state_dict())
            truth, grad_out = run_model(truth_model, prob, torch.float64, has_c, None, seed)
            try:
                base, _ = run_model(base_model, prob, dtype, has_c, grad_out, seed)
            except Exception as exc:  # e.g. a dtype the baseline does not support: judge by the floor
                base, base_error = {}, f"baseline raised {type(exc).__name__}: {exc}"
            else:
                base_error = None
            ctx = env.coop_context() if case.forced == "cooperative" else contextlib.nullcontext()
            with environ(FASTRNN_TIER=case.forced), count_launches() as counter, ctx:
                fast, _ = run_model(fast_model, prob, dtype, has_c, grad_out, seed)
            if env.device.type == "cuda":
                torch.cuda.synchronize(env.device)
    except Exception as exc:  # a case that raises is a failure, reported with its error
        return dict(record, status="error", why=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc(limit=-8), seconds=time.monotonic() - start)
    rows = compare(fast, base, truth, case.precision, env.tol_scale)
    tiers, variants = ran_variants(counter)
    notes = [base_error] if base_error else []
    if case.forced != "auto" and case.forced not in tiers:
        notes.append(f"forced {case.forced} but the launch counter saw {tiers}")
    if case.variant is not None and case.variant not in variants:
        notes.append(f"expected cooperative variant {case.variant}, ran {variants}")
    worst = max(rows, key=lambda r: r["error"] / r["bound"] if r["bound"] else float("inf"))
    ok = all(r["ok"] for r in rows)
    return dict(record, status="ok" if ok else "fail", ran_tiers=tiers, ran_variants=variants,
                launches=dict(forward=counter.forward, backward=counter.backward), notes=notes, rows=rows,
                worst=dict(tensor=worst["tensor"], error=worst["error"], bound=worst["bound"]),
                seconds=time.monotonic() - start)


def _coop_rows(hidden: int, dtype, tf32: bool, device) -> tuple[int, ...]:
    """Rows per program of the cooperative register variants on ``device`` (from the config
    table, for the device's arch and shared memory)."""
    try:
        from fastrnn.backends.triton.policy import device_limits
        from fastrnn.kernels import fits

        arch, shared = device_limits(torch.device(device))
        configs = fits.cooperative_configs(dtype, hidden, tf32, arch, shared)
        rows = tuple(sorted(cfg.block_b for cfg in configs if cfg.registers))
        return rows or (16, 64)
    except Exception:  # the table's shape changed: the documented defaults
        return (16, 64)


# --------------------------------------------------------------------------------------
# First-use self-check verdicts
# --------------------------------------------------------------------------------------


def self_check_verdicts(kinds: list[str], precisions: list[str], hidden: int, env: Env,
                        out: list | None = None) -> list[dict]:
    """The first-use self-check of each persistent tier (forced, ``FASTRNN_SELF_CHECK=1``)
    for each kind and precision: ``pass`` (the tier agrees with the step tier on the check
    problem, through each of its launch variants), ``fail`` (with the check's message) or
    ``n/a`` (the tier cannot run that layer). Runs before the cases, so the verdict is the
    one the process keeps."""
    from fastrnn.backends.triton import tier_for

    out = [] if out is None else out  # filled in place: an interrupted run keeps what was done
    # both tiers for a kind and precision before the next: a budget cut leaves each tier checked
    order = sorted(precisions, key=lambda p: ("fp16", "fp32", "bf16", "tf32").index(p))
    for prec in order:
        for kind in kinds:
            for tier in ("resident", "cooperative"):
                dtype, tf32 = plan.PRECISIONS[prec]
                rec = dict(tier=tier, kind=kind, precision=prec, hidden=hidden)
                if env.left() <= 0:
                    out.append(dict(rec, verdict="not run", why="time budget spent"))
                    continue
                if env.dry_run and dtype == torch.bfloat16:
                    out.append(dict(rec, verdict="n/a", why="bf16 runs on a GPU only (interpreter)"))
                    continue
                start = time.monotonic()
                ctx = env.coop_context() if tier == "cooperative" else contextlib.nullcontext()
                try:
                    with precision(tf32), environ(FASTRNN_TIER=tier, FASTRNN_SELF_CHECK="1"), ctx:
                        got = tier_for(kind, hidden, 0, dtype, env.device)
                    verdict, why = ("pass", "") if got == tier else ("fail", f"tier_for gave {got}")
                except RuntimeError as exc:
                    msg = str(exc)
                    verdict, why = ("n/a" if _refused(msg) else "fail"), msg
                except Exception as exc:
                    verdict, why = "fail", f"{type(exc).__name__}: {exc}"
                out.append(dict(rec, verdict=verdict, why=why, seconds=time.monotonic() - start))
                env.log(f"self-check {tier} {kind} {prec}: {verdict}")
    return out
