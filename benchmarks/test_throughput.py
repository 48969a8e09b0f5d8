"""fastrnn vs torch.nn: RNN, LSTM and GRU, forward and forward+backward, interleaved.

Each case is one test: a ``torch.nn`` module and a ``fastrnn`` module with the same weights
(``load_state_dict``), the same input and ``grad_output``, the same thread count, timed in
turns, one round of each (``interleave.py``: the order inside a round alternates,
torch-first then fastrnn-first). Untimed warm-up rounds of both come first. The statistics
per case (``extra_info``, then ``conftest.py``'s table, JSON and plot): each
implementation's median and minimum, the median and quartiles of the per-round paired ratios
``fastrnn_i / torch_i`` (the headline: drift of the machine that slows both cancels in each
round's ratio), and the ratio of the minima.

pytest-benchmark: one entry per case, whose timed function is one fastrnn round (the torch.nn
rounds run in pedantic's untimed ``setup``, timed by the suite itself); ``extra_info`` holds
the case (shape, dtype, device, the backend fastrnn's ``auto`` chose, kernel tier), the
round order, every round's times of both and the interleaved statistics, so
``--benchmark-json`` carries the whole comparison.

- ``fwd``: inference, under ``torch.no_grad()``.
- ``fwd+bwd``: forward, then backward from a fixed ``grad_output`` into the input and
  every weight (gradients are reset to None, untimed, before each round).

``FASTRNN_BENCH_AA=1`` adds the A/A control: a second ``torch.nn`` module (the same weights,
loaded the way fastrnn's are) as a third arm of the same interleaving; its paired ratio to
``torch.nn`` shows the noise floor of the machine for that case in that run.

Cases:

- The grid (every device): LSTM, GRU, RNN x (T=10, B=1, I=1, H=32) (the sine->cosine
  example), (T=100, B=1, H=128), (T=100, B=8, H=64), (T=100, B=32, H=256), (T=50, B=64,
  H=512), one layer, ``I == H`` unless given; fp32, plus fp16 on CUDA.
- GPU cases (CUDA only; collected and skipped with the reason elsewhere): LSTM and GRU at
  the public anchor shapes (B=16, T=1024, H=768) and (B=64, T=1000, H=128) in fp16, bf16
  and fp32; a packed batch with ragged lengths (B=64, T=1000, H=128, lengths uniform in
  1..T, fixed seed); a 2-layer bidirectional LSTM at both anchor shapes. The fastrnn side
  records its kernel tier in ``extra_info["tier"]``; ``FASTRNN_TIER`` forces one (recorded too).

The first untimed round of each arm absorbs Triton autotuning and compilation, cuDNN's
algorithm choice and oneDNN's primitive creation; on CUDA every timed function synchronises
before returning. Rounds and warm-up: :func:`rounds_for`, :func:`warmup_for`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn.backends import Call, env_backend, resolve_name
from fastrnn.kinds import CellKind

import interleave

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
GPU_ONLY_REASON = "CUDA-only case (GPU anchor shapes); this run is on the CPU"


@dataclass(frozen=True)
class Case:
    kind: str  # "LSTM" | "GRU" | "RNN"
    direction: str  # "fwd" | "fwd+bwd"
    steps: int
    batch: int
    hidden: int
    input: int
    dtype: torch.dtype = torch.float32
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False
    gpu_only: bool = False

    @property
    def name(self) -> str:
        shape = f"T{self.steps}-B{self.batch}" + (f"-I{self.input}" if self.input != self.hidden else "")
        name = f"{self.kind}-{self.direction}-{shape}-H{self.hidden}"
        if self.layers > 1 or self.bidirectional:
            name += f"-L{self.layers}" + ("-bi" if self.bidirectional else "")
        if self.packed:
            name += "-packed"
        return name if self.dtype == torch.float32 else f"{name}-{DTYPE_NAMES[self.dtype]}"


def bench_device() -> torch.device:
    """``FASTRNN_BENCH_DEVICE`` (``cuda`` / ``cpu``), else CUDA when available, else the CPU."""
    name = os.environ.get("FASTRNN_BENCH_DEVICE", "") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# (T, B, I, H): the CPU grid, from the sine-to-cosine example's size to training-sized
GRID = ((10, 1, 1, 32), (100, 1, 128, 128), (100, 8, 64, 64), (100, 32, 256, 256), (50, 64, 512, 512))
# (T, B, H): public GPU anchors (NX-AI/flashrnn's H100 benchmark; cuDNN's persistent range)
ANCHORS = ((1024, 16, 768), (1000, 64, 128))
GPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def all_cases(device: torch.device) -> list[Case]:
    cases = []
    grid_dtypes = (torch.float32, torch.float16) if device.type == "cuda" else (torch.float32,)
    for kind in ("LSTM", "GRU", "RNN"):
        for direction in ("fwd", "fwd+bwd"):
            for steps, batch, inp, hidden in GRID:
                for dtype in grid_dtypes:
                    cases.append(Case(kind, direction, steps, batch, hidden, inp, dtype))
    for kind in ("LSTM", "GRU"):
        for direction in ("fwd", "fwd+bwd"):
            for dtype in GPU_DTYPES:
                for steps, batch, hidden in ANCHORS:
                    cases.append(Case(kind, direction, steps, batch, hidden, hidden, dtype, gpu_only=True))
                cases.append(Case(kind, direction, 1000, 64, 128, 128, dtype, packed=True, gpu_only=True))
    for direction in ("fwd", "fwd+bwd"):
        for dtype in GPU_DTYPES:
            for steps, batch, hidden in ANCHORS:
                cases.append(Case("LSTM", direction, steps, batch, hidden, hidden, dtype, layers=2,
                                  bidirectional=True, gpu_only=True))
    return cases


def aa_enabled() -> bool:
    """``FASTRNN_BENCH_AA=1``: time a second torch.nn module as a third arm (the A/A control)."""
    return os.environ.get("FASTRNN_BENCH_AA", "") not in ("", "0")


def _params():
    device = bench_device()
    for case in all_cases(device):
        marks = pytest.mark.skip(reason=GPU_ONLY_REASON) if case.gpu_only and device.type != "cuda" else ()
        yield pytest.param(case, id=case.name, marks=marks)


def backend_setting() -> str:
    """What fastrnn modules are asked to run: ``FASTRNN_BACKEND``, else ``auto``."""
    return env_backend() or "auto"


def chosen_backend(case: Case, device: torch.device) -> str:
    """The concrete backend fastrnn runs ``case`` on with ``backend=None``: ``auto`` decides
    per call on the CPU (:func:`fastrnn.backends.native.auto_cpu_backend`: ``native`` or
    ``reference``, from the kind, dtype, packed input and whether gradients are recorded),
    and picks ``triton`` on CUDA; ``FASTRNN_BACKEND`` overrides, as everywhere."""
    call = Call(CellKind.from_mode(case.kind, "tanh"), case.dtype, packed=case.packed, proj=False,
                needs_grad=case.direction == "fwd+bwd", tracing=False)
    return resolve_name(None, device, call)


def fastrnn_tier(case: Case, device: torch.device, backend: str) -> str | None:
    """The Triton kernel tier fastrnn runs ``case`` on (None off the triton backend): the
    backend's ``tier_for`` where it exists, else ``"step"`` (one launch per step, the only
    tier then)."""
    if device.type != "cuda" or backend != "triton":
        return None
    from fastrnn.backends import triton as triton_backend

    tier_for = getattr(triton_backend, "tier_for", None)
    if tier_for is None:
        return "step"
    return str(tier_for(CellKind.from_mode(case.kind, "tanh"), case.hidden, 0, case.dtype, device))


TARGET_SECONDS = {"cpu": 2.0, "cuda": 0.5}
MIN_ROUNDS, MAX_ROUNDS = 5, 500


def rounds_for(device: torch.device, seconds_per_round: float) -> int:
    """``FASTRNN_BENCH_ROUNDS``, else enough rounds for about ``FASTRNN_BENCH_SECONDS`` (2 s on
    the CPU, 0.5 s on CUDA) of timing per implementation, from the mean time of one round of
    torch.nn and fastrnn, within [5, 500]: the small CPU cases (0.1-4 ms) get 500 rounds, a
    0.4 s case 5. A case's timed part thus takes about twice that (three times with A/A)."""
    if os.environ.get("FASTRNN_BENCH_ROUNDS"):
        return int(os.environ["FASTRNN_BENCH_ROUNDS"])
    target = float(os.environ.get("FASTRNN_BENCH_SECONDS") or TARGET_SECONDS.get(device.type, 2.0))
    return max(MIN_ROUNDS, min(MAX_ROUNDS, math.ceil(target / max(seconds_per_round, 1e-6))))


def warmup_for(rounds: int) -> int:
    """``FASTRNN_BENCH_WARMUP``, else a tenth of the timed rounds, at least 1: interleaved
    warm-up rounds after the first (cold) round of each arm, the first of them also timing
    one round for :func:`rounds_for`."""
    if os.environ.get("FASTRNN_BENCH_WARMUP"):
        return int(os.environ["FASTRNN_BENCH_WARMUP"])
    return max(1, math.ceil(rounds / 10))


def _models(case: Case, device: torch.device, aa: bool) -> dict[str, torch.nn.Module]:
    """torch.nn's module, fastrnn's with the same weights and, for the A/A control, a second
    torch.nn module that gets the weights the same way (its own parameter tensors)."""
    torch.manual_seed(0)
    kw = dict(num_layers=case.layers, bidirectional=case.bidirectional)
    reference = getattr(torch.nn, case.kind)(case.input, case.hidden, **kw)
    models = {"torch": reference, "fastrnn": getattr(fastrnn, case.kind)(case.input, case.hidden, **kw)}
    if aa:
        models["torch_aa"] = getattr(torch.nn, case.kind)(case.input, case.hidden, **kw)
    for name, model in models.items():
        if name != "torch":
            model.load_state_dict(reference.state_dict())
    return {name: model.to(device=device, dtype=case.dtype) for name, model in models.items()}


def _inputs(case: Case, device: torch.device):
    gen = torch.Generator().manual_seed(1)
    out_features = case.hidden * (2 if case.bidirectional else 1)
    x = torch.randn(case.steps, case.batch, case.input, generator=gen).to(device=device, dtype=case.dtype)
    grad = torch.randn(case.steps, case.batch, out_features, generator=gen).to(device=device, dtype=case.dtype)
    lengths = None
    if case.packed:  # ragged: lengths uniform in 1..T, unsorted (enforce_sorted=False)
        lengths = torch.randint(1, case.steps + 1, (case.batch,), generator=gen)
        lengths[0] = case.steps  # the padded length is T
    return x, grad, lengths


def timed_arm(forward, direction: str, model: torch.nn.Module, x, grad_out, device: torch.device) -> interleave.Arm:
    """One round of ``forward()`` (which returns the output to differentiate): under no_grad
    for ``fwd``; for ``fwd+bwd`` then backward from ``grad_out`` (gradients of ``model`` and
    the shared input ``x`` reset, untimed, before each round). Synchronises on CUDA."""
    cuda = device.type == "cuda"

    if direction == "fwd":

        def run():
            with torch.no_grad():
                out = forward()
            if cuda:
                torch.cuda.synchronize(device)
            return out

        return interleave.Arm(run)

    def run():
        forward().backward(grad_out)
        if cuda:
            torch.cuda.synchronize(device)

    def prep():
        model.zero_grad(set_to_none=True)
        x.grad = None  # x is shared by the arms: each round starts from no gradient

    return interleave.Arm(run, prep)


def _arm(case: Case, model: torch.nn.Module, x, grad_out, lengths, device: torch.device) -> interleave.Arm:
    """One round of ``model`` on the shared input: forward (no grad), or forward+backward."""

    def forward():
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if case.packed else x
        out, _ = model(inp)
        return out.data if case.packed else out

    return timed_arm(forward, case.direction, model, x, grad_out, device)


def _ms(seconds):
    return [round(s * 1e3, 6) for s in seconds]


@pytest.mark.parametrize("case", list(_params()))
def test_throughput(benchmark, case: Case):
    device = bench_device()
    cuda = device.type == "cuda"
    aa = aa_enabled()
    models = _models(case, device, aa)
    x, grad_out, lengths = _inputs(case, device)
    if case.packed:
        grad_out = pack_padded_sequence(grad_out, lengths, enforce_sorted=False).data
    if case.direction == "fwd+bwd":
        x.requires_grad_(True)
    arms = {name: _arm(case, model, x, grad_out, lengths, device) for name, model in models.items()}
    backend = chosen_backend(case, device)

    # warm-up, interleaved: one cold round of each arm (autotuning, compilation, cuDNN's
    # algorithm choice, oneDNN's primitives), then one that sets the number of rounds, then
    # the rest of the warm-up rounds
    interleave.run_rounds(arms, 1)
    first = interleave.run_rounds(arms, 1)
    rounds = rounds_for(device, (first["torch"][0] + first["fastrnn"][0]) / 2)
    warmup = warmup_for(rounds)
    interleave.run_rounds(arms, warmup - 1)

    timed = interleave.Rounds(arms, rounds, timed="fastrnn")
    benchmark.group = case.name
    benchmark.pedantic(timed.target, setup=timed.setup, rounds=rounds, warmup_rounds=0, iterations=1)
    times = timed.finish()

    stats = {name: interleave.arm_stats(ts) for name, ts in times.items()}
    ratio = interleave.paired(times["fastrnn"], times["torch"])
    benchmark.extra_info.update(
        {
            "timed": "fastrnn",  # what pytest-benchmark's own statistics of this entry are
            "backend": backend,
            "backend_setting": backend_setting(),
            "torch_backend": "cudnn" if cuda and torch.backends.cudnn.enabled else "aten",
            "tier": fastrnn_tier(case, device, backend),
            "tier_forced": os.environ.get("FASTRNN_TIER") or None,
            "kind": case.kind,
            "pass": case.direction,
            "shape": {"T": case.steps, "B": case.batch, "I": case.input, "H": case.hidden, "layers": case.layers,
                      "bidirectional": case.bidirectional, "packed": case.packed},
            "dtype": DTYPE_NAMES[case.dtype],
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if cuda else "CPU",
            "torch_threads": torch.get_num_threads(),
            "allow_tf32": bool(torch.backends.cudnn.allow_tf32) if cuda else None,
            "rounds": timed.done,
            "warmup_rounds": warmup,
            "order": timed.order_letters,
            "times_ms": {name: _ms(ts) for name, ts in times.items()},
            "stats": stats,
            "paired_ratio": ratio,
            "aa_paired_ratio": interleave.paired(times["torch_aa"], times["torch"]) if aa else None,
        }
    )
