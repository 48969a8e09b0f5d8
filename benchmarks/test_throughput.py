"""fastrnn vs torch.nn: RNN, LSTM and GRU, forward and forward+backward.

Each case is one benchmark group holding two entries, ``torch.nn`` and ``fastrnn``, with
the same weights (``load_state_dict``) and the same input, so the two read side by side
and ``conftest.py`` can print their ratio. One layer, unidirectional, ``I == H``.

- ``fwd``: inference, under ``torch.no_grad()``.
- ``fwd+bwd``: forward, then backward from a fixed ``grad_output`` into the input and
  every weight (gradients are reset to None, untimed, before each round).

On CUDA the timed function synchronises before returning, and an fp16 case joins each
fp32 one (cuDNN runs its persistent kernels for fp16 LSTM/RNN at these shapes). On the
CPU only fp32 runs. One untimed warm-up round per entry absorbs Triton autotuning and
compilation and cuDNN's algorithm choice.
"""

from __future__ import annotations

import os

import pytest
import torch

import fastrnn
from fastrnn.backends import resolve

KINDS = ("LSTM", "GRU", "RNN")
PASSES = ("fwd", "fwd+bwd")
# (T, B, I == H)
SHAPES = ((100, 32, 256), (50, 64, 512), (100, 1, 128))
DTYPES = (torch.float32, torch.float16)
IMPLS = ("torch", "fastrnn")
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16"}


def bench_device() -> torch.device:
    """``FASTRNN_BENCH_DEVICE`` (``cuda`` / ``cpu``), else CUDA when available, else the CPU."""
    name = os.environ.get("FASTRNN_BENCH_DEVICE", "") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _backend_name(device: torch.device) -> str:
    """The fastrnn backend a module with ``backend=None`` runs on ``device``."""
    return resolve(None, device).__name__.rsplit(".", 1)[-1].removesuffix("_backend")


def _rounds(device: torch.device, batch: int) -> int:
    if os.environ.get("FASTRNN_BENCH_ROUNDS"):
        return int(os.environ["FASTRNN_BENCH_ROUNDS"])
    if device.type == "cuda":
        return 20
    # The CPU suite has to finish in a few minutes: a large-shape forward+backward
    # takes about a second per round here.
    return 10 if batch == 1 else 3


def _cudnn_persistent_eligible(device, dtype, kind, batch, hidden) -> bool:
    # cuDNN's persistent algorithms: half precision, one layer, unidirectional,
    # H % 128 == 0, batch <= 128, LSTM/RNN only (never GRU).
    return device.type == "cuda" and dtype == torch.float16 and kind != "GRU" and hidden % 128 == 0 and batch <= 128


def _cases():
    for kind in KINDS:
        for direction in PASSES:
            for steps, batch, hidden in SHAPES:
                for dtype in DTYPES:
                    marks = ()
                    if dtype == torch.float16 and bench_device().type != "cuda":
                        marks = pytest.mark.skip(reason="fp16 cases run on CUDA only")
                    for impl in IMPLS:
                        yield pytest.param(
                            kind, direction, steps, batch, hidden, dtype, impl,
                            id=f"{kind}-{direction}-T{steps}-B{batch}-H{hidden}-{DTYPE_NAMES[dtype]}-{impl}",
                            marks=marks,
                        )


def _group(kind, direction, steps, batch, hidden, dtype) -> str:
    name = f"{kind}-{direction}-T{steps}-B{batch}-H{hidden}"
    return name if dtype == torch.float32 else f"{name}-{DTYPE_NAMES[dtype]}"


@pytest.mark.parametrize("kind, direction, steps, batch, hidden, dtype, impl", list(_cases()))
def test_throughput(benchmark, kind, direction, steps, batch, hidden, dtype, impl):
    device = bench_device()
    torch.manual_seed(0)
    reference = getattr(torch.nn, kind)(hidden, hidden)
    if impl == "torch":
        model = reference
    else:
        model = getattr(fastrnn, kind)(hidden, hidden)
        model.load_state_dict(reference.state_dict())
    model = model.to(device=device, dtype=dtype)

    x = torch.randn(steps, batch, hidden, device=device, dtype=dtype)
    grad_out = torch.randn(steps, batch, hidden, device=device, dtype=dtype)
    cuda = device.type == "cuda"

    if direction == "fwd":
        x.requires_grad_(False)

        def run():
            with torch.no_grad():
                out = model(x)
            if cuda:
                torch.cuda.synchronize(device)
            return out

        setup = None
    else:
        x.requires_grad_(True)

        def run():
            out, _ = model(x)
            out.backward(grad_out)
            if cuda:
                torch.cuda.synchronize(device)

        def setup():
            model.zero_grad(set_to_none=True)
            x.grad = None

    if impl == "torch":
        impl_name = "torch.nn (cuDNN)" if cuda and torch.backends.cudnn.enabled else f"torch.nn ({device.type.upper()})"
        backend_name = "cudnn" if cuda and torch.backends.cudnn.enabled else "aten"
    else:
        impl_name = "fastrnn"
        backend_name = _backend_name(device)

    benchmark.group = _group(kind, direction, steps, batch, hidden, dtype)
    benchmark.extra_info.update(
        {
            "impl": impl_name,
            "impl_short": impl,
            "backend": backend_name,
            "fastrnn_backend": _backend_name(device),
            "kind": kind,
            "pass": direction,
            "shape": {"T": steps, "B": batch, "I": hidden, "H": hidden, "layers": 1, "bidirectional": False},
            "dtype": DTYPE_NAMES[dtype],
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if cuda else "CPU",
            "torch_threads": torch.get_num_threads(),
            "allow_tf32": bool(torch.backends.cudnn.allow_tf32) if cuda else None,
            "cudnn_persistent_eligible": _cudnn_persistent_eligible(device, dtype, kind, batch, hidden),
        }
    )
    benchmark.pedantic(run, setup=setup, rounds=_rounds(device, batch), warmup_rounds=1, iterations=1)
