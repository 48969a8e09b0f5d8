"""fastrnn vs torch.nn: RNN, LSTM and GRU, forward and forward+backward, side by side.

Each case is one benchmark group holding two entries, ``torch.nn`` and ``fastrnn``, with
the same weights (``load_state_dict``) and the same input, timed in the same run, so
``conftest.py`` can print (and plot) their ratio.

- ``fwd``: inference, under ``torch.no_grad()``.
- ``fwd+bwd``: forward, then backward from a fixed ``grad_output`` into the input and
  every weight (gradients are reset to None, untimed, before each round).

Cases:

- The grid (every device): LSTM, GRU, RNN x (T=10, B=1, I=1, H=32) (the sine->cosine
  example), (T=100, B=1, H=128), (T=100, B=8, H=64), (T=100, B=32, H=256), (T=50, B=64,
  H=512), one layer, ``I == H`` unless given; fp32, plus fp16 on CUDA.
- GPU cases (CUDA only; collected and skipped with the reason elsewhere): LSTM and GRU at
  the public anchor shapes (B=16, T=1024, H=768) and (B=64, T=1000, H=128) in fp16, bf16
  and fp32; a packed batch with ragged lengths (B=64, T=1000, H=128, lengths uniform in
  1..T, fixed seed); a 2-layer bidirectional LSTM at both anchor shapes. Each fastrnn entry
  records its kernel tier in ``extra_info["tier"]``; ``FASTRNN_TIER`` forces one (recorded too).

One untimed warm-up round per entry absorbs Triton autotuning and compilation and cuDNN's
algorithm choice; on CUDA the timed function synchronises before returning. Rounds: see
``conftest.py``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn.backends import resolve
from fastrnn.kinds import CellKind

IMPLS = ("torch", "fastrnn")
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
GPU_ONLY_REASON = "CUDA-only case (issue 9's GPU anchor shapes); this run is on the CPU"


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


# (T, B, I, H): issue 11's CPU grid, small to training-sized
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


def _params():
    device = bench_device()
    for case in all_cases(device):
        marks = pytest.mark.skip(reason=GPU_ONLY_REASON) if case.gpu_only and device.type != "cuda" else ()
        for impl in IMPLS:
            yield pytest.param(case, impl, id=f"{case.name}-{impl}", marks=marks)


def _backend_name(device: torch.device) -> str:
    """The fastrnn backend a module with ``backend=None`` runs on ``device``."""
    return resolve(None, device).__name__.rsplit(".", 1)[-1].removesuffix("_backend")


def fastrnn_tier(case: Case, device: torch.device) -> str | None:
    """The Triton kernel tier fastrnn runs ``case`` on (None off CUDA): the backend's
    ``tier_for`` where it exists, else ``"step"`` (one launch per step, the only tier then)."""
    if device.type != "cuda" or _backend_name(device) != "triton":
        return None
    from fastrnn.backends import triton_backend

    tier_for = getattr(triton_backend, "tier_for", None)
    if tier_for is None:
        return "step"
    return str(tier_for(CellKind.from_mode(case.kind, "tanh"), case.hidden, 0, case.dtype, device))


# Rounds per group, chosen by the first entry of the group that runs, so both entries of a
# case are timed over the same number of rounds.
_ROUNDS: dict[str, int] = {}
TARGET_SECONDS = {"cpu": 2.0, "cuda": 0.5}
MIN_ROUNDS, MAX_ROUNDS = 5, 500


def rounds_for(group: str, device: torch.device, run, setup) -> int:
    """``FASTRNN_BENCH_ROUNDS``, else enough rounds for about ``FASTRNN_BENCH_SECONDS`` (2 s on
    the CPU, 0.5 s on CUDA) of the first entry's time, within [5, 500]: the small CPU cases
    (0.1-4 ms) get 500 rounds, a 0.4 s case gets 5."""
    if os.environ.get("FASTRNN_BENCH_ROUNDS"):
        return int(os.environ["FASTRNN_BENCH_ROUNDS"])
    if group not in _ROUNDS:
        target = float(os.environ.get("FASTRNN_BENCH_SECONDS") or TARGET_SECONDS.get(device.type, 2.0))
        if setup is not None:
            setup()
        start = time.perf_counter()
        run()
        once = time.perf_counter() - start
        _ROUNDS[group] = max(MIN_ROUNDS, min(MAX_ROUNDS, math.ceil(target / max(once, 1e-6))))
    return _ROUNDS[group]


def _model(case: Case, impl: str, device: torch.device):
    torch.manual_seed(0)
    kw = dict(num_layers=case.layers, bidirectional=case.bidirectional)
    reference = getattr(torch.nn, case.kind)(case.input, case.hidden, **kw)
    if impl == "torch":
        model = reference
    else:
        model = getattr(fastrnn, case.kind)(case.input, case.hidden, **kw)
        model.load_state_dict(reference.state_dict())
    return model.to(device=device, dtype=case.dtype)


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


@pytest.mark.parametrize("case, impl", list(_params()))
def test_throughput(benchmark, case: Case, impl: str):
    device = bench_device()
    model = _model(case, impl, device)
    x, grad_out, lengths = _inputs(case, device)
    cuda = device.type == "cuda"
    if case.packed:
        grad_out = pack_padded_sequence(grad_out, lengths, enforce_sorted=False).data

    def forward():
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if case.packed else x
        out, _ = model(inp)
        return out.data if case.packed else out

    if case.direction == "fwd":

        def run():
            with torch.no_grad():
                out = forward()
            if cuda:
                torch.cuda.synchronize(device)
            return out

        setup = None
    else:
        x.requires_grad_(True)

        def run():
            forward().backward(grad_out)
            if cuda:
                torch.cuda.synchronize(device)

        def setup():
            model.zero_grad(set_to_none=True)
            x.grad = None

    if impl == "torch":
        backend_name = "cudnn" if cuda and torch.backends.cudnn.enabled else "aten"
        tier = None
    else:
        backend_name = _backend_name(device)
        tier = fastrnn_tier(case, device)

    # warm-up (untimed): autotuning, compilation, cuDNN's algorithm choice
    if setup is not None:
        setup()
    run()
    rounds = rounds_for(case.name, device, run, setup)

    benchmark.group = case.name
    benchmark.extra_info.update(
        {
            "impl": impl,
            "backend": backend_name,
            "fastrnn_backend": _backend_name(device),
            "tier": tier,
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
            "rounds": rounds,
        }
    )
    benchmark.pedantic(run, setup=setup, rounds=rounds, warmup_rounds=0, iterations=1)
