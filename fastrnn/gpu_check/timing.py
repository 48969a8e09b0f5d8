"""Speed: fastrnn against torch.nn (cuDNN) at the benchmark suite's CUDA anchors, interleaved.

Each case times forward (under ``no_grad``) or forward+backward (from a fixed output gradient
into the input and every weight; gradients reset untimed before each round) of a fastrnn
module and a torch.nn module with the same weights and inputs. Warm-up rounds of both come
first (Triton compiles, cuDNN picks its algorithms); then rounds alternate which one runs
first, each timed between two device synchronisations. Reported per case: each side's
median and minimum, the median and quartiles of the per-round ratio fastrnn / cuDNN (drift
that slows both cancels within a round), the time per step (median / T) and the tier that
ran. fp32 runs with torch's default flags (cuDNN may use TF32; fastrnn follows
``cudnn.allow_tf32``, so both sides see the same setting, recorded per row).

The dry run (Triton's interpreter, the reference backend standing in for cuDNN, tiny shapes,
one round) walks the same code; its rows carry ``dry_run: true`` and are not measurements.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

from . import checks, plan


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _arm(model, x, lengths, grad, direction: str, device):
    """One round of ``model``: a callable (synchronised before it returns) and its untimed prep."""
    params = list(model.parameters())

    def prep():
        for p in params:
            p.grad = None
        if x.grad is not None:
            x.grad = None

    def run():
        if direction == "fwd":
            with torch.no_grad():
                inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths is not None else x
                model(inp)
        else:
            inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths is not None else x
            out, _ = model(inp)
            y = out.data if lengths is not None else out
            y.backward(grad[: y.shape[0]] if lengths is not None else grad)
        _sync(device)

    return prep, run


def run_speed(case: plan.SpeedCase, env: checks.Env, warmup: int, rounds: int) -> dict:
    from fastrnn.kernels.launches import count_launches

    dtype, _ = plan.PRECISIONS[case.precision]
    steps, batch, hidden = case.run_shape or (case.steps, case.batch, case.hidden)
    tf32 = case.precision == "fp32" and torch.backends.cudnn.allow_tf32
    record = dict(case=case.name, kind=case.kind, direction=case.direction, steps=steps, batch=batch,
                  hidden=hidden, precision=case.precision, tier=case.tier, layers=case.layers,
                  bidirectional=case.bidirectional, packed=case.packed, tf32=bool(tf32), dry_run=env.dry_run)
    forced = case.tier if case.tier != "auto" else "auto"
    if env.dry_run and dtype == torch.bfloat16:
        return dict(record, status="n/a", why="bf16 runs on a GPU only (interpreter)")
    if forced != "auto":
        refusal = checks._tier_refusal(case.kind, forced, hidden, dtype, env)
        if refusal is not None:
            return dict(record, status=refusal[0], why=refusal[1])
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    kw = dict(input_size=hidden, hidden=hidden, layers=case.layers, bidirectional=case.bidirectional,
              dtype=dtype)
    base = checks.make_model(case.kind, "baseline", env, **kw)
    fast = checks.make_model(case.kind, "fastrnn", env, **kw)
    fast.load_state_dict(base.state_dict())
    x = torch.randn(steps, batch, hidden, generator=gen).to(env.device, dtype)
    lengths = None
    if case.packed:  # lengths uniform in 1..T (fixed seed), one of them T
        lengths = torch.randint(1, steps + 1, (batch,), generator=gen)
        lengths[0] = steps
    if case.direction == "fwd+bwd":
        x.requires_grad_()
    directions = 2 if case.bidirectional else 1
    grad = torch.randn(steps * batch if case.packed else steps, *(
        (directions * hidden,) if case.packed else (batch, directions * hidden)),
        generator=gen).to(env.device, dtype)
    arms = {"cudnn": _arm(base, x, lengths, grad, case.direction, env.device),
            "fastrnn": _arm(fast, x, lengths, grad, case.direction, env.device)}
    times: dict[str, list[float]] = {"cudnn": [], "fastrnn": []}
    start = time.monotonic()
    with checks.environ(FASTRNN_TIER=forced), count_launches() as counter:
        for _ in range(warmup):
            for prep, run in arms.values():
                prep()
                run()
        tiers, variants = checks.ran_variants(counter)
        for i in range(rounds):
            order = ("cudnn", "fastrnn") if i % 2 == 0 else ("fastrnn", "cudnn")
            for name in order:
                prep, run = arms[name]
                prep()
                _sync(env.device)
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
            if env.left() <= 0 and i >= 1:
                break  # the budget is spent: keep the rounds done
    ratios = [f / c for f, c in zip(times["fastrnn"], times["cudnn"])]
    q1, med, q3 = _quantiles(ratios)
    stats = {}
    for name, ts in times.items():
        lo, m, hi = _quantiles(ts)
        stats[name] = dict(median_s=m, min_s=min(ts), q1_s=lo, q3_s=hi, per_step_us=m / steps * 1e6)
    return dict(record, status="dry-run" if env.dry_run else "measured", tiers=tiers, variants=variants,
                rounds=len(ratios), fastrnn=stats["fastrnn"], cudnn=stats["cudnn"], ratio_median=med,
                ratio_q1=q1, ratio_q3=q3, seconds=time.monotonic() - start,
                baseline="torch.nn (cuDNN)" if not env.dry_run else "reference backend (dry run)")
