"""The triton backend's step tier against the reference backend, in Triton's interpreter on CPU.

(``FASTRNN_TIER=step`` for every test here; tests/test_resident.py runs the same check,
``check_against_reference``, on the resident tier.)

Every output (y, h_n, c_n) and every gradient (x, h0, c0, each weight and bias) of
``recurrent_stack`` with ``backend="triton"`` is compared with ``backend="reference"``.
Buffers the backend allocates are filled with NaN (``FILL_NAN``), so a store a kernel
skips fails loudly. The quick subset runs by default, the full grid with FASTRNN_FULL=1.

Tolerances (``_TOL``):
- float64: both sides compute the same math in a different order (blocked dot products
  vs BLAS); a few ulps times the depth of the recurrence (2 layers x T <= 7) -> 1e-10.
- float32: the same at eps 1.2e-7, with reductions over up to 4H = 132 terms per gate
  and N rows for the weight gradients -> rtol 1e-4 / atol 2e-5 (the project's TOL).
- float16: the triton run keeps fp16 I/O (inputs, weights, y, gates, gradients all
  rounded to fp16, relative 2^-11 ~ 4.9e-4 each) but accumulates in fp32; it is compared
  with the reference run in float64 on the *same fp16-rounded* inputs, so only the
  kernel's own roundings count. Each step rounds its gates and output once; the
  gradients pass through ~2 layers x 7 steps of such roundings and sums of up to N = 35
  rows of fp16 values for the weight gradients -> 2e-2 (measured: max |a - e| / (1 + |e|)
  = 5.4e-3 over every kind, H in 3, 33, packed or not, bidirectional, B=5, T=7).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from fastrnn.backends import triton as triton_backend
from fastrnn.backends.triton import buffers
from fastrnn.functional import Schedule, recurrent_stack

KINDS = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "fp64": torch.float64}
_TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=2e-5),
    torch.float16: dict(rtol=2e-2, atol=2e-2),
}
INPUT = 3


@pytest.fixture(autouse=True)
def _nan_fill(monkeypatch):
    monkeypatch.setattr(buffers, "FILL_NAN", True)


@pytest.fixture(autouse=True)
def _step_tier(monkeypatch):
    """These are the step tier's tests (tests/test_resident.py runs the resident tier)."""
    monkeypatch.setenv("FASTRNN_TIER", "step")


def _lengths(batch: int, steps: int) -> list[int]:
    """Unsorted lengths with the longest equal to ``steps`` (so T is exercised)."""
    pattern = [max(1, steps - 4), steps, 1, max(1, steps - 2), max(1, steps // 2)]
    return [pattern[i % len(pattern)] for i in range(batch)] if batch > 1 else [steps]


def _problem(kind, batch, steps, hidden, bidirectional, packed, layers=2, dtype=torch.float64, seed=0):
    """Flat input, schedule, h0, c0 and per-layer weights (torch's init scale), float64."""
    gen = torch.Generator().manual_seed(seed)
    directions = 2 if bidirectional else 1
    x = torch.randn(steps, batch, INPUT, generator=gen, dtype=torch.float64)
    if packed:
        pack = pack_padded_sequence(x, torch.tensor(_lengths(batch, steps)), enforce_sorted=False)
        flat, schedule = pack.data, Schedule.from_batch_sizes(pack.batch_sizes)
    else:
        flat, schedule = x.reshape(steps * batch, INPUT), Schedule.uniform(steps, batch)
    bound = 1 / math.sqrt(hidden)
    gates = GATES[kind]
    weights = []
    for layer in range(layers):
        in_size = INPUT if layer == 0 else directions * hidden
        for _ in range(directions):
            shapes = [(gates * hidden, in_size), (gates * hidden, hidden), (gates * hidden,), (gates * hidden,)]
            weights.append([(torch.rand(s, generator=gen, dtype=torch.float64) * 2 - 1) * bound for s in shapes])
    h0 = torch.randn(layers * directions, batch, hidden, generator=gen, dtype=torch.float64)
    c0 = torch.randn(layers * directions, batch, hidden, generator=gen, dtype=torch.float64) if kind == "LSTM" else None
    return flat, schedule, h0, c0, weights


def _run(kind, backend, dtype, problem, bidirectional):
    """Outputs and gradients of a fixed random linear loss, all leaves cast to ``dtype``."""
    flat, schedule, h0, c0, weights = problem
    leaves = [flat, h0] + ([c0] if c0 is not None else []) + [w for layer in weights for w in layer]
    leaves = [t.to(dtype).requires_grad_() for t in leaves]
    x, h, c = leaves[0], leaves[1], (leaves[2] if c0 is not None else None)
    ws = leaves[3 if c0 is not None else 2 :]
    layer_weights = [tuple(ws[4 * i : 4 * i + 4]) + (None,) for i in range(len(weights))]
    y, h_n, c_n = recurrent_stack(kind, x, schedule, h, c, layer_weights, bidirectional=bidirectional, backend=backend)
    outs = [y, h_n] + ([c_n] if c_n is not None else [])
    gen = torch.Generator().manual_seed(99)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach() for o in outs], list(grads)


def check_against_reference(kind, dtype, batch, steps, hidden, bidirectional, packed):
    problem = _problem(kind, batch, steps, hidden, bidirectional, packed)
    ref_dtype = dtype
    if dtype == torch.float16:
        # Same fp16-rounded inputs on both sides; the reference computes in float64.
        round16 = lambda t: None if t is None else t.half().double()  # noqa: E731
        flat, schedule, h0, c0, weights = problem
        weights = [[round16(w) for w in layer] for layer in weights]
        problem = (round16(flat), schedule, round16(h0), round16(c0), weights)
        ref_dtype = torch.float64
    out_t, grad_t = _run(kind, "triton", dtype, problem, bidirectional)
    out_r, grad_r = _run(kind, "reference", ref_dtype, problem, bidirectional)
    names = ["y", "h_n", "c_n"][: len(out_r)]
    for name, a, e in zip(names, out_t, out_r):
        assert a.dtype == dtype
        torch.testing.assert_close(a.to(ref_dtype), e, **_TOL[dtype], msg=lambda m: f"{name}: {m}")
    grad_names = ["x", "h0"] + (["c0"] if kind == "LSTM" else [])
    grad_names += [f"layer{i}.{w}" for i in range(len(problem[4])) for w in ("w_ih", "w_hh", "b_ih", "b_hh")]
    assert len(grad_t) == len(grad_names)
    for name, a, e in zip(grad_names, grad_t, grad_r):
        assert a is not None and e is not None, f"missing gradient {name}"
        torch.testing.assert_close(a.to(ref_dtype), e, **_TOL[dtype], msg=lambda m: f"grad {name}: {m}")


def _case(kind, dtype, batch, steps, hidden, bidirectional, packed, marks=()):
    ident = f"{kind}-B{batch}-T{steps}-H{hidden}-{dtype}"
    ident += ("-bi" if bidirectional else "") + ("-packed" if packed else "")
    return pytest.param(kind, DTYPES[dtype], batch, steps, hidden, bidirectional, packed, id=ident, marks=marks)


QUICK = [
    _case("LSTM", "fp32", 5, 7, 17, True, True),
    _case("LSTM", "fp16", 5, 7, 3, False, True),
    _case("LSTM", "fp64", 1, 1, 33, True, False),
    _case("GRU", "fp32", 5, 7, 33, True, True),
    _case("GRU", "fp16", 5, 7, 17, True, False),
    _case("GRU", "fp64", 1, 7, 1, False, True),
    _case("RNN_TANH", "fp32", 5, 7, 1, True, True),
    _case("RNN_TANH", "fp64", 5, 1, 17, True, True),
    _case("RNN_RELU", "fp16", 5, 7, 33, True, True),
    _case("RNN_RELU", "fp32", 1, 7, 3, False, False),
]
_QUICK_IDS = {p.id for p in QUICK}
FULL = [
    c
    for c in (
        _case(k, d, b, t, h, bi, pk, marks=(pytest.mark.slow,))
        for k, d, h, b, t, bi, pk in itertools.product(
            KINDS, DTYPES, (1, 3, 17, 33), (1, 5), (1, 7), (False, True), (False, True)
        )
    )
    if c.id not in _QUICK_IDS
]


@pytest.mark.parametrize("kind, dtype, batch, steps, hidden, bidirectional, packed", QUICK)
def test_triton_matches_reference(kind, dtype, batch, steps, hidden, bidirectional, packed):
    check_against_reference(kind, dtype, batch, steps, hidden, bidirectional, packed)


@pytest.mark.parametrize("kind, dtype, batch, steps, hidden, bidirectional, packed", FULL)
def test_triton_matches_reference_full(kind, dtype, batch, steps, hidden, bidirectional, packed):
    check_against_reference(kind, dtype, batch, steps, hidden, bidirectional, packed)


def test_lstm_proj_size_matches_reference():
    """LSTM with proj_size (per-step torch projection), 2 layers, bidirectional, packed."""
    gen = torch.Generator().manual_seed(3)
    hidden, proj, batch, steps = 5, 3, 4, 4
    x = torch.randn(steps, batch, INPUT, generator=gen, dtype=torch.float64)
    pack = pack_padded_sequence(x, torch.tensor([2, 4, 1, 3]), enforce_sorted=False)
    schedule = Schedule.from_batch_sizes(pack.batch_sizes)
    weights = []
    for layer in range(2):
        in_size = INPUT if layer == 0 else 2 * proj
        for _ in range(2):
            shapes = [(4 * hidden, in_size), (4 * hidden, proj), (4 * hidden,), (4 * hidden,), (proj, hidden)]
            weights.append([torch.randn(s, generator=gen, dtype=torch.float64) * 0.4 for s in shapes])
    h0 = torch.randn(4, batch, proj, generator=gen, dtype=torch.float64)
    c0 = torch.randn(4, batch, hidden, generator=gen, dtype=torch.float64)

    def run(backend):
        leaves = [t.clone().requires_grad_() for t in [pack.data, h0, c0] + [w for lw in weights for w in lw]]
        lw = [tuple(leaves[3 + 5 * i : 8 + 5 * i]) for i in range(4)]
        outs = recurrent_stack(
            "LSTM", leaves[0], schedule, leaves[1], leaves[2], lw, bidirectional=True, backend=backend
        )
        g = torch.Generator().manual_seed(5)
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in outs)
        return list(outs) + list(torch.autograd.grad(loss, leaves))

    for k, (a, e) in enumerate(zip(run("triton"), run("reference"))):
        torch.testing.assert_close(a, e, **_TOL[torch.float64], msg=lambda m: f"tensor {k}: {m}")


def test_nan_fill_is_active():
    """The fixture really makes fresh buffers NaN (so the checks above can catch skipped stores)."""
    assert buffers.FILL_NAN
    assert torch.isnan(buffers.new((2, 3), torch.float32, torch.device("cpu"))).all()


def test_triton_available_on_cpu_under_interpreter():
    assert triton_backend.unavailable_reason(torch.device("cpu")) is None


@pytest.mark.parametrize("kind", KINDS)
def test_inference_without_saving_matches_reference(kind):
    """Under no_grad the backend saves nothing (LSTM keeps one (B, H) cell buffer)."""
    problem = _problem(kind, 5, 7, 17, True, True, layers=1)
    flat, schedule, h0, c0, weights = problem
    lw = [tuple(w) + (None,) for w in weights]
    with torch.no_grad():
        out_t = recurrent_stack(kind, flat, schedule, h0, c0, lw, bidirectional=True, backend="triton")
        out_r = recurrent_stack(kind, flat, schedule, h0, c0, lw, bidirectional=True, backend="reference")
    for name, a, e in zip(["y", "h_n", "c_n"], out_t, out_r):
        if e is None:
            assert a is None
            continue
        torch.testing.assert_close(a, e, **_TOL[torch.float64], msg=lambda m: f"{name}: {m}")


def test_bfloat16_refused_in_interpreter():
    problem = _problem("GRU", 2, 2, 3, False, False, layers=1)
    flat, schedule, h0, c0, weights = problem
    lw = [tuple(w.bfloat16() for w in weights[0]) + (None,)]
    with pytest.raises(RuntimeError, match="bfloat16"):
        recurrent_stack("GRU", flat.bfloat16(), schedule, h0.bfloat16(), None, lw, backend="triton")
