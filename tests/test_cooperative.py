"""The cooperative tier (kernels/cooperative.py) in Triton's interpreter, every program in
its own thread (tests/threaded_interpreter.py), against the reference backend.

``FASTRNN_TIER=cooperative`` forces the tier. The launch configurations are replaced by
small ones so that every hidden size splits over at least 3 programs (``BLOCK_H`` 4 for
H=16, 16 above) and ``W_hh`` is either streamed in ``BLOCK_K = 16`` chunks or kept as a
slab (``SLAB_K`` = the next power of two >= H): the tiled configuration with ``BLOCK_B =
8`` tiles and, unless a test leaves them out, register variants of 8 and 16 rows per
program. The device is given 8 SMs, so (3 or 4 hidden slices) a launch has at most 2
groups of programs: a batch of 17 rows runs the register variant of 16 rows (2 groups,
the second partial) or, without register variants, the tiled one (3 tiles: tiles 0, 2
and 1 over 2 groups); 5 rows run the register variant of 8 rows. The real choice
(:func:`fastrnn.kernels.fits.cooperative_variant`) picks the variant, and each test
asserts which one ran. The interpreter needs no ``tl.dot`` minimum of 16; the GPU
configurations are covered by the compile report. Buffers the backend allocates are
filled with NaN, so a store a kernel skips fails loudly.

Tolerances (``TOL``), as in tests/test_triton_backend.py (the same comparison, one layer
here instead of two): fp64 1e-10 (same math, another summation order); fp32 rtol 1e-4 /
atol 2e-5 (eps 1.2e-7 times reductions of up to 4H = 256 terms and N = 102 rows for the
weight gradients); fp16 2e-2 (the triton run rounds its I/O to fp16 at every step, 2^-11
relative each, and is compared with a float64 reference run on the same fp16-rounded
inputs).
The parity grid is a pairwise selection (tests/helpers.pairwise) of kind x dtype x H x B x
T x packed x bidirectional x where W_hh lives x where the state lives (registers or the
tiled fallback); the full product runs with FASTRNN_FULL=1.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings

import pytest
import torch
import triton
import triton.language as tl
from helpers import pairwise
from threaded_interpreter import threaded_programs

from torch.nn.utils.rnn import pack_padded_sequence

from fastrnn import cells
from fastrnn.cells import base as cells_base
from fastrnn.backends import triton as triton_backend
from fastrnn.backends.triton import buffers, policy, selfcheck
from fastrnn.backends.triton import cooperative as coop_launcher
from fastrnn.functional import Schedule, recurrent_layer, recurrent_stack
from fastrnn.kernels import cells as kernel_cells
from fastrnn.kernels import cooperative, fits
from fastrnn.kernels.launches import count_launches

KINDS = tuple(cell.name for cell in cells.BUILTIN)
GATES = {cell.name: cell.gates for cell in cells.BUILTIN}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "fp64": torch.float64}
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=2e-5),
    torch.float16: dict(rtol=2e-2, atol=2e-2),
}
INPUT = 3
SMS = 8
#: Generous: a program in the interpreter may wait seconds for the others at a barrier.
INTERPRETER_TIMEOUT_US = 30_000_000


REGISTER_ROWS = (8, 16)


def small_configs(hidden: int, slab: bool, block_h: int | None = None, registers=REGISTER_ROWS,
                  backward_streams: bool = False) -> tuple:
    """Configurations that split ``hidden`` over at least 3 programs: the tiled one (8-row
    tiles), then register variants of ``registers`` rows per program. ``backward_streams``:
    the forward keeps the slab, the backward streams ``W_hh`` (as the table's large slabs)."""
    block_h = block_h or (4 if hidden <= 16 else 16)
    slab_k = triton_next_pow2(hidden) if slab else 0
    tiled = cooperative.CoopConfig(8, block_h, 16, 4, 1, slab_k, False, backward_streams)
    return (tiled, *(tiled._replace(block_b=rows, registers=True) for rows in registers))


def ran(counter) -> set:
    """``(direction, registers, rows per tile or program)`` of every cooperative launch counted."""
    return {(direction, cfg.registers, cfg.block_b) for (tier, direction, cfg) in counter.configs
            if tier == "cooperative"}


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@pytest.fixture
def coop(monkeypatch):
    """Force the cooperative tier, run launches threaded; yields a setter for the config."""
    monkeypatch.setenv("FASTRNN_TIER", "cooperative")
    monkeypatch.setattr(buffers, "FILL_NAN", True)
    monkeypatch.setattr(cooperative, "BARRIER_TIMEOUT_US", INTERPRETER_TIMEOUT_US)
    # 8 "SMs": H=16/40/64 (4/3/4 hidden slices) also get 2 groups of batch tiles.
    monkeypatch.setattr(coop_launcher, "sm_count", lambda device: SMS)
    # fp32 GEMMs in IEEE precision (TF32 rounds the operands, also in the interpreter:
    # test_tf32_rounds_the_operands covers it).
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    chosen = {}

    def use(slab: bool, block_h: int | None = None, registers=REGISTER_ROWS, backward_streams: bool = False):
        def configs(dtype, hidden, tf32=False, *device):  # device: (arch, shared memory per block)
            chosen[hidden] = small_configs(hidden, slab, block_h, registers, backward_streams)
            return chosen[hidden]

        monkeypatch.setattr(cooperative, "cooperative_configs", configs)
        return chosen

    with threaded_programs():
        yield use


def _lengths(batch: int, steps: int) -> list[int]:
    """Unsorted lengths in [1, steps], the longest equal to ``steps`` (so T is exercised)."""
    return [steps if b == 1 or batch == 1 else 1 + (5 * b + 2) % steps for b in range(batch)]


def _problem(kind, batch, steps, hidden, bidirectional, packed, seed=0):
    """One layer: flat input, schedule, h0, c0 and per-direction weights, float64."""
    gen = torch.Generator().manual_seed(seed)
    directions = 2 if bidirectional else 1
    x = torch.randn(steps, batch, INPUT, generator=gen, dtype=torch.float64)
    if packed:
        pack = pack_padded_sequence(x, torch.tensor(_lengths(batch, steps)), enforce_sorted=False)
        flat, schedule = pack.data, Schedule.from_batch_sizes(pack.batch_sizes)
    else:
        flat, schedule = x.reshape(steps * batch, INPUT), Schedule.uniform(steps, batch)
    assert schedule.batch == batch
    bound = 1 / math.sqrt(hidden)
    g = GATES[kind]
    shapes = [(g * hidden, INPUT), (g * hidden, hidden), (g * hidden,), (g * hidden,)]
    weights = [[(torch.rand(s, generator=gen, dtype=torch.float64) * 2 - 1) * bound for s in shapes]
               for _ in range(directions)]
    h0 = torch.randn(directions, batch, hidden, generator=gen, dtype=torch.float64)
    c0 = torch.randn(directions, batch, hidden, generator=gen, dtype=torch.float64) if kind == "LSTM" else None
    return flat, schedule, h0, c0, weights


def _run(kind, backend, dtype, problem, bidirectional):
    """Outputs and gradients of a fixed random linear loss, all leaves cast to ``dtype``."""
    flat, schedule, h0, c0, weights = problem
    leaves = [flat, h0] + ([c0] if c0 is not None else []) + [w for lw in weights for w in lw]
    leaves = [t.to(dtype).requires_grad_() for t in leaves]
    x, h, c = leaves[0], leaves[1], (leaves[2] if c0 is not None else None)
    ws = leaves[3 if c0 is not None else 2 :]
    layer_weights = [tuple(ws[4 * i : 4 * i + 4]) + (None,) for i in range(len(weights))]
    y, h_n, c_n = recurrent_stack(kind, x, schedule, h, c, layer_weights, bidirectional=bidirectional, backend=backend)
    outs = [y, h_n] + ([c_n] if c_n is not None else [])
    gen = torch.Generator().manual_seed(99)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype)).sum() for o in outs)
    return [o.detach() for o in outs], list(torch.autograd.grad(loss, leaves))


def check_against_reference(kind, dtype, batch, steps, hidden, bidirectional, packed):
    """Outputs and every gradient of one layer (both directions when bidirectional)."""
    problem = _problem(kind, batch, steps, hidden, bidirectional, packed)
    ref_dtype = dtype
    if dtype == torch.float16:
        # Same fp16-rounded inputs on both sides; the reference computes in float64.
        round16 = lambda t: None if t is None else t.half().double()  # noqa: E731
        flat, schedule, h0, c0, weights = problem
        problem = (round16(flat), schedule, round16(h0), round16(c0), [[round16(w) for w in lw] for lw in weights])
        ref_dtype = torch.float64
    out_t, grad_t = _run(kind, "triton", dtype, problem, bidirectional)
    out_r, grad_r = _run(kind, "reference", ref_dtype, problem, bidirectional)
    for name, a, e in zip(["y", "h_n", "c_n"], out_t, out_r):
        assert a.dtype == dtype
        torch.testing.assert_close(a.to(ref_dtype), e, **TOL[dtype], msg=lambda m: f"{name}: {m}")
    names = ["x", "h0"] + (["c0"] if kind == "LSTM" else [])
    names += [f"dir{i}.{w}" for i in range(len(problem[4])) for w in ("w_ih", "w_hh", "b_ih", "b_hh")]
    assert len(grad_t) == len(names) == len(grad_r)
    for name, a, e in zip(names, grad_t, grad_r):
        assert a is not None and e is not None, f"missing gradient {name}"
        torch.testing.assert_close(a.to(ref_dtype), e, **TOL[dtype], msg=lambda m: f"grad {name}: {m}")


FACTORS = dict(
    kind=list(KINDS), dtype=list(DTYPES), hidden=[16, 40, 64], batch=[1, 5, 17], steps=[1, 6],
    packed=[False, True], bidirectional=[False, True], slab=[False, True], state=["registers", "tiled"],
)


def _param(c, marks=()):
    ident = (f"{c['kind']}-{c['dtype']}-H{c['hidden']}-B{c['batch']}-T{c['steps']}"
             + ("-packed" if c["packed"] else "") + ("-bi" if c["bidirectional"] else "")
             + ("-slab" if c["slab"] else "-stream") + f"-{c['state']}")
    return pytest.param(*c.values(), id=ident, marks=marks)


def _expected_launches(batch: int, state: str) -> set:
    """What the launches of a parity case must be: the register variant of 8 rows for
    B <= 8, of 16 rows for B = 17 (2 groups); the tiled one when there is no register variant."""
    if state == "tiled":
        return {("forward", False, 8), ("backward", False, 8)}
    rows = 8 if batch <= 8 else 16
    return {("forward", True, rows), ("backward", True, rows)}


QUICK = [_param(c) for c in pairwise(FACTORS)]
_QUICK_IDS = {p.id for p in QUICK}
FULL = [
    p for p in (_param(dict(zip(FACTORS, v)), marks=(pytest.mark.slow,)) for v in itertools.product(*FACTORS.values()))
    if p.id not in _QUICK_IDS
]


def check_against_step_tier(kind, dtype, batch, steps, hidden, bidirectional, packed):
    """Every output and gradient of the cooperative run equals the step tier's (same dtype);
    returns the launch counter of the cooperative run."""
    problem = _problem(kind, batch, steps, hidden, bidirectional, packed)
    with count_launches() as n:
        out_c, grad_c = _run(kind, "triton", dtype, problem, bidirectional)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTRNN_TIER", "step")
        out_s, grad_s = _run(kind, "triton", dtype, problem, bidirectional)
    assert len(out_c) == len(out_s) and len(grad_c) == len(grad_s)
    for k, (a, e) in enumerate(zip(out_c + grad_c, out_s + grad_s)):
        assert a is not None and e is not None, k
        torch.testing.assert_close(a, e, **TOL[dtype], msg=lambda m: f"tensor {k}: {m}")
    return n


def _check_case(coop, kind, dtype, hidden, batch, steps, packed, bidirectional, slab, state):
    chosen = coop(slab, registers=REGISTER_ROWS if state == "registers" else ())
    if kind == "RNN_RELU" and dtype == "fp16":
        # relu' flips where a pre-activation lies within fp16 rounding of 0, so an fp16 run
        # and the float64 reference disagree there by O(1) whatever the kernel (the step tier
        # shows the same mismatches; measured here: H40-B17-T6-packed-bi, grad x off by 0.078
        # at 2 of 189 elements). The tiers round at the same points (fp16 y, fp16 GEMM
        # operands, fp32 sums), so the step tier is the oracle here, as in test_resident.py.
        n = check_against_step_tier(kind, DTYPES[dtype], batch, steps, hidden, bidirectional, packed)
    else:
        with count_launches() as n:
            check_against_reference(kind, DTYPES[dtype], batch, steps, hidden, bidirectional, packed)
    assert ran(n) == _expected_launches(batch, state)
    assert n.forward == n.backward == (2 if bidirectional else 1)
    assert {cfg.slab_k for cfg in chosen[hidden]} == {triton_next_pow2(hidden) if slab else 0}
    assert -(-hidden // chosen[hidden][0].block_h) >= 3  # split over at least 3 programs


@pytest.mark.parametrize(", ".join(FACTORS), QUICK)
def test_cooperative_matches_reference(coop, kind, dtype, hidden, batch, steps, packed, bidirectional, slab, state):
    _check_case(coop, kind, dtype, hidden, batch, steps, packed, bidirectional, slab, state)


@pytest.mark.parametrize("state", ["registers", "tiled"])
@pytest.mark.parametrize("kind", KINDS)
def test_slab_forward_with_streamed_backward(coop, kind, state):
    """The table's large slabs: the forward keeps W_hh on chip, the backward streams it
    (``backward_streams``); every output and gradient as the reference (fp32, packed, both
    directions)."""
    chosen = coop(True, registers=REGISTER_ROWS if state == "registers" else (), backward_streams=True)
    with count_launches() as n:
        check_against_reference(kind, torch.float32, 5, 6, 40, True, True)
    assert ran(n) == _expected_launches(5, state)
    assert {(cfg.slab_k, cfg.backward_slab_k) for cfg in chosen[40]} == {(64, 0)}


@pytest.mark.parametrize("slab", [False, True], ids=["stream", "slab"])
def test_tf32_rounds_the_operands(coop, monkeypatch, slab):
    """fp32 with TF32 allowed: the GEMM operands are rounded to TF32 (the interpreter runs the
    same rounding as the compiled ``cvt.rna.tf32.f32``), so the run differs from the IEEE one
    by TF32 rounding (~2^-11 relative per operand), not by more, and not by nothing."""
    coop(slab)
    problem = _problem("LSTM", 5, 6, 40, True, True)
    ieee_out, ieee_grad = _run("LSTM", "triton", torch.float32, problem, True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    tf32_out, tf32_grad = _run("LSTM", "triton", torch.float32, problem, True)
    largest = 0.0
    for a, e in zip(tf32_out + tf32_grad, ieee_out + ieee_grad):
        torch.testing.assert_close(a, e, rtol=2e-2, atol=2e-2)
        largest = max(largest, (a - e).abs().max().item())
    assert largest > 1e-6  # the rounding happened


@pytest.mark.parametrize(", ".join(FACTORS), FULL)
def test_cooperative_matches_reference_full(coop, kind, dtype, hidden, batch, steps, packed, bidirectional, slab,
                                            state):
    _check_case(coop, kind, dtype, hidden, batch, steps, packed, bidirectional, slab, state)


# --------------------------------------------------------------------------------------
# Gradcheck, cross-tier saved tensors, launch count, barrier failure
# --------------------------------------------------------------------------------------


def _small_layer(kind, hidden=6, in_size=2, seed=0):
    """Inputs of one tiny packed layer (lengths 3, 2, 1), float64 leaves."""
    gen = torch.Generator().manual_seed(seed)
    schedule = Schedule.from_batch_sizes([3, 2, 1])
    g = GATES[kind]

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()

    x = rnd(schedule.rows, in_size)
    h0 = rnd(schedule.batch, hidden)
    c0 = rnd(schedule.batch, hidden) if kind == "LSTM" else None
    weights = [rnd(g * hidden, in_size, scale=0.5), rnd(g * hidden, hidden, scale=0.5), rnd(g * hidden),
               rnd(g * hidden)]
    return schedule, x, h0, c0, weights


def _gradcheck_param(kind, reverse, slab, state):
    ident = f"{kind}-{'reverse' if reverse else 'forward'}-{'slab' if slab else 'stream'}-{state}"
    quick = {("LSTM", True, False, "registers"), ("GRU", False, True, "registers"), ("LSTM", False, True, "tiled")}
    marks = () if (kind, reverse, slab, state) in quick else (pytest.mark.slow,)
    return pytest.param(kind, reverse, slab, state, id=ident, marks=marks)


@pytest.mark.parametrize(
    "kind, reverse, slab, state",
    [_gradcheck_param(k, r, s, v) for k in ("LSTM", "GRU", "RNN_TANH") for r in (False, True) for s in (False, True)
     for v in ("registers", "tiled")],
)
def test_cooperative_gradcheck(coop, kind, reverse, slab, state):
    """fp64 gradcheck (fast mode) through the cooperative kernels: H=6 over 3 programs,
    a packed batch (lengths 3, 2, 1), the register variant (8 rows per program) or the
    tiled one (its 8-row tiles). ~4-6 s each in the interpreter: three run by default."""
    coop(slab, block_h=2, registers=(8,) if state == "registers" else ())
    schedule, x, h0, c0, weights = _small_layer(kind)
    leaves = [x, h0] + ([c0] if c0 is not None else []) + weights

    def fn(*args):
        c = args[2] if kind == "LSTM" else None
        w = args[3:] if kind == "LSTM" else args[2:]
        y, h_n, c_n = recurrent_layer(kind, args[0], schedule, args[1], c, tuple(w) + (None,), reverse=reverse,
                                      backend="triton")
        return (y, h_n) if c_n is None else (y, h_n, c_n)

    with count_launches() as n:
        assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)
    assert ran(n) == {("forward", state == "registers", 8), ("backward", state == "registers", 8)}


@pytest.mark.parametrize("state", ["registers", "tiled"])
@pytest.mark.parametrize("kind", KINDS)
def test_inference_without_saving_matches_reference(coop, kind, state):
    """Under no_grad nothing is saved (LSTM: the tiled kernel keeps its cell state in one
    (B, H) buffer; the register kernel writes its final c there once)."""
    coop(False, registers=REGISTER_ROWS if state == "registers" else ())
    flat, schedule, h0, c0, weights = _problem(kind, 17, 6, 16, True, True)
    lw = [tuple(w) + (None,) for w in weights]
    with torch.no_grad(), count_launches() as n:
        out_t = recurrent_stack(kind, flat, schedule, h0, c0, lw, bidirectional=True, backend="triton")
    assert ran(n) == {("forward", state == "registers", 16 if state == "registers" else 8)}
    with torch.no_grad():
        out_r = recurrent_stack(kind, flat, schedule, h0, c0, lw, bidirectional=True, backend="reference")
    assert (out_t[2] is None) == (kind != "LSTM") == (out_r[2] is None)
    for name, a, e in zip(["y", "h_n", "c_n"], out_t, out_r):
        if e is not None:
            torch.testing.assert_close(a, e, **TOL[torch.float64], msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("state", ["registers", "tiled"])
@pytest.mark.parametrize("slab", [False, True], ids=["stream", "slab"])
@pytest.mark.parametrize("kind", KINDS)
def test_inf_in_the_state_does_not_spread_through_the_padding(coop, kind, slab, state):
    """+inf in one element of h0 at H=5 (BLOCK_H 4: the second program's slice and the
    slab are padded): the outputs and gradients have the reference backend's NaN / inf
    pattern and values (an inf times a zero-padded weight must stay out of the state,
    in registers or in the buffers)."""
    coop(slab, block_h=4, registers=REGISTER_ROWS if state == "registers" else ())
    gen = torch.Generator().manual_seed(3)
    g, hidden = GATES[kind], 5
    schedule = Schedule.from_batch_sizes([3, 3, 2, 1])
    x = torch.randn(schedule.rows, 2, generator=gen, dtype=torch.float64)
    h0 = torch.randn(3, hidden, generator=gen, dtype=torch.float64)
    h0[1, 2] = float("inf")
    c0 = torch.randn(3, hidden, generator=gen, dtype=torch.float64) if kind == "LSTM" else None
    w = [torch.randn(*s, generator=gen, dtype=torch.float64) * 0.4
         for s in [(g * hidden, 2), (g * hidden, hidden), (g * hidden,), (g * hidden,)]]

    def run(backend):
        leaves = [t.clone().requires_grad_() for t in [x, h0] + ([c0] if c0 is not None else []) + w]
        c = leaves[2] if c0 is not None else None
        outs = [o for o in recurrent_layer(kind, leaves[0], schedule, leaves[1], c, tuple(leaves[-4:]) + (None,),
                                           backend=backend) if o is not None]
        grads = torch.autograd.grad(sum(o.sum() for o in outs), leaves, allow_unused=True)
        return outs + [gr for gr in grads if gr is not None]

    with warnings.catch_warnings(), count_launches() as n:
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "invalid value" inside the interpreter
        got, expected = run("triton"), run("reference")
    assert {registers for (_, registers, _) in ran(n)} == {state == "registers"}
    assert len(got) == len(expected)
    for k, (a, e) in enumerate(zip(got, expected)):
        assert torch.equal(a.isnan(), e.isnan()) and torch.equal(a.isinf(), e.isinf()), k
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, equal_nan=True)


CROSS = [("registers", "step"), ("step", "registers"), ("tiled", "step"), ("step", "tiled"), ("registers", "tiled"),
         ("tiled", "registers")]


@pytest.mark.parametrize("forward_side, backward_side", CROSS)
@pytest.mark.parametrize("kind", KINDS)
def test_saved_tensors_cross_tiers(coop, monkeypatch, kind, forward_side, backward_side):
    """One tier's (or cooperative variant's) backward reads the other's saved tuple (same
    layout): the gradients equal those of the reference backend."""

    def use(side):
        monkeypatch.setenv("FASTRNN_TIER", "step" if side == "step" else "cooperative")
        coop(False, registers=(8,) if side == "registers" else ())

    schedule, x, h0, c0, weights = _small_layer(kind)
    w = tuple(weights) + (None,)
    use(forward_side)
    with count_launches() as fwd:
        y, h_n, c_n = recurrent_layer(kind, x, schedule, h0, c0, w, reverse=True, backend="triton")
    outs = [o for o in (y, h_n, c_n) if o is not None]
    leaves = [x, h0] + ([c0] if c0 is not None else []) + weights
    gen = torch.Generator().manual_seed(3)
    probes = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]
    use(backward_side)
    with count_launches() as bwd:
        grads = torch.autograd.grad(sum((o * p).sum() for o, p in zip(outs, probes)), leaves)
    for counter, side, direction in ((fwd, forward_side, "forward"), (bwd, backward_side, "backward")):
        if side == "step":
            assert counter.tiers["step", direction] == 3 and not ran(counter)
        else:
            assert ran(counter) == {(direction, side == "registers", 8)}
    ref = recurrent_layer(kind, x, schedule, h0, c0, w, reverse=True, backend="reference")
    ref_outs = [o for o in ref if o is not None]
    ref_grads = torch.autograd.grad(sum((o * p).sum() for o, p in zip(ref_outs, probes)), leaves)
    for a, e in zip(outs + list(grads), ref_outs + list(ref_grads)):
        torch.testing.assert_close(a, e, **TOL[torch.float64])


@pytest.mark.parametrize("kind", KINDS)
def test_one_launch_per_layer_direction_and_pass(coop, kind):
    """2 layers, bidirectional, T=3: 4 forward launches and 4 backward launches in all."""
    coop(False, block_h=4)
    hidden = 8
    flat, schedule, h0, c0, weights = _problem(kind, 2, 3, hidden, True, True)
    lw = [tuple(w.requires_grad_() for w in d) + (None,) for d in weights]
    # The second layer reads 2H features: its own weights of that input size.
    gen = torch.Generator().manual_seed(1)
    g = GATES[kind]
    shapes = ((g * hidden, 2 * hidden), (g * hidden, hidden), (g * hidden,), (g * hidden,))
    lw += [tuple((torch.randn(s, generator=gen, dtype=torch.float64) * 0.2).requires_grad_() for s in shapes) + (None,)
           for _ in range(2)]
    h0 = torch.cat([h0, h0])
    c0 = torch.cat([c0, c0]) if c0 is not None else None
    with count_launches() as fwd:
        y, h_n, c_n = recurrent_stack(kind, flat, schedule, h0, c0, lw, bidirectional=True, backend="triton")
    with count_launches() as bwd:
        y.sum().backward()
    assert (fwd.forward, fwd.backward) == (4, 0)
    assert (bwd.forward, bwd.backward) == (0, 4)


@pytest.mark.parametrize("state", ["registers", "tiled"])
def test_barrier_failure_ends_with_the_documented_error(coop, monkeypatch, state):
    """A launch in which program 1 never arrives ends within about two barrier timeouts
    with BarrierTimeout (the forced tier raises; it does not fall back), in either variant."""
    coop(False, registers=REGISTER_ROWS if state == "registers" else ())
    timeout_s = 1.0
    monkeypatch.setattr(cooperative, "BARRIER_TIMEOUT_US", int(timeout_s * 1e6))
    monkeypatch.setattr(cooperative, "ABSENT_PROGRAM", 1)
    flat, schedule, h0, c0, weights = _problem("GRU", 5, 6, 40, False, False)
    lw = [tuple(weights[0]) + (None,)]
    start = time.monotonic()
    with pytest.raises(cooperative.BarrierTimeout, match=r"grid barrier 0: a program did not arrive within 1 s"), \
            count_launches() as n:
        recurrent_stack("GRU", flat, schedule, h0, None, lw, backend="triton")
    elapsed = time.monotonic() - start
    assert ran(n) == {("forward", state == "registers", 8)}
    # Every program waits once at barrier 0 (about one timeout), then leaves; the rest is
    # the interpreter's work for the first step. Far from a hang.
    assert elapsed < 2 * timeout_s + 10, elapsed


def test_sequential_interpreter_times_out_instead_of_hanging(monkeypatch):
    """Without the threaded helper the interpreter runs program 0 to its first barrier
    alone: the barrier times out and the launch reports it (never a hang)."""
    monkeypatch.setenv("FASTRNN_TIER", "cooperative")
    monkeypatch.setattr(cooperative, "BARRIER_TIMEOUT_US", 200_000)
    monkeypatch.setattr(cooperative, "cooperative_configs",
                        lambda dtype, hidden, tf32=False, *device: small_configs(hidden, False))
    flat, schedule, h0, c0, weights = _problem("RNN_TANH", 2, 3, 16, False, False)
    with pytest.raises(cooperative.BarrierTimeout):
        recurrent_stack("RNN_TANH", flat, schedule, h0, None, [tuple(weights[0]) + (None,)], backend="triton")


# --------------------------------------------------------------------------------------
# Tier choice, fallback on a barrier timeout, first-use check
# --------------------------------------------------------------------------------------

GPU = torch.device("cuda")  # only named: the device queries below are replaced


@pytest.fixture
def on_a_gpu(monkeypatch):
    """The tier choice as on an sm_90 GPU with 132 SMs (no kernel runs)."""
    monkeypatch.setattr(policy, "device_limits", lambda device: (90, fits.SHARED_LIMIT[90]))
    monkeypatch.setattr(coop_launcher, "sm_count", lambda device: 132)
    monkeypatch.setattr(selfcheck, "checked", {})
    monkeypatch.delenv("FASTRNN_TIER", raising=False)
    monkeypatch.setenv("FASTRNN_SELF_CHECK", "0")


@pytest.mark.parametrize(
    "kind, hidden, proj, dtype, expected",
    [
        ("LSTM", 64, 0, torch.float16, "resident"),
        ("LSTM", 80, 0, torch.bfloat16, "cooperative"),  # LSTM fp16/bf16 resident stops at 64
        ("LSTM", 768, 0, torch.bfloat16, "cooperative"),
        ("GRU", 768, 0, torch.float32, "cooperative"),
        ("RNN_TANH", 2112, 0, torch.float16, "cooperative"),  # 132 programs of 16 units
        ("RNN_RELU", 2128, 0, torch.float16, "step"),  # 133 programs
        ("LSTM", 776, 0, torch.bfloat16, "step"),  # not a multiple of 16
        ("LSTM", 768, 256, torch.bfloat16, "step"),  # proj_size
        ("GRU", 768, 0, torch.float64, "step"),  # fp64 is not compiled for GPUs
    ],
)
def test_auto_choice_on_a_gpu(on_a_gpu, kind, hidden, proj, dtype, expected):
    assert triton_backend.tier_for(kind, hidden, proj, dtype, GPU) == expected


def test_auto_never_picks_the_cooperative_tier_in_the_interpreter(monkeypatch):
    monkeypatch.delenv("FASTRNN_TIER", raising=False)
    assert {triton_backend.tier_for(k, h, 0, d, "cpu") for k in KINDS for h in (128, 768, 2048)
            for d in (torch.float32, torch.float16)} <= {"resident", "step"}


@pytest.mark.parametrize(
    "hidden, proj, dtype, message",
    [(768, 256, torch.bfloat16, "proj_size"), (2128, 0, torch.float16, "more than the 132 SMs"),
     (776, 0, torch.float16, "multiple of 16"), (768, 0, torch.float64, "float64")],
)
def test_forcing_cooperative_where_it_cannot_run_is_an_error(on_a_gpu, monkeypatch, hidden, proj, dtype, message):
    monkeypatch.setenv("FASTRNN_TIER", "cooperative")
    with pytest.raises(RuntimeError, match=message):
        triton_backend.tier_for("LSTM", hidden, proj, dtype, GPU)


def test_config_table_choices():
    """What fits.COOPERATIVE gives: the forward keeps W_hh on chip for fp16/bf16 with H in
    (64, 1024], fp32 TF32 (64, 256], fp32 IEEE (64, 512]; the backward keeps it only for
    fp16/bf16 up to 256; everything else streams."""
    for dtype, tf32, largest, backward in ((torch.bfloat16, False, 1024, 256), (torch.float16, False, 1024, 256),
                                           (torch.float32, True, 256, 0), (torch.float32, False, 512, 0)):
        assert fits.cooperative_config(dtype, 64, tf32).slab_k == 0
        for hidden in (80, 128, 200, 256, 384, 512, 768, 1024, 1040):
            cfg = fits.cooperative_config(dtype, hidden, tf32)
            slab = triton_next_pow2(hidden) if hidden <= largest else 0
            assert cfg.slab_k == slab, (dtype, tf32, hidden)
            assert cfg.backward_slab_k == (slab if slab <= backward else 0), (dtype, tf32, hidden)
    assert fits.cooperative_config(torch.float32, 768, True).num_stages > 1  # the TF32 stream is pipelined
    assert fits.cooperative_max_hidden(108) == 1728 and fits.cooperative_max_hidden(132) == 2112


@pytest.mark.parametrize("dtype, tf32", [(torch.bfloat16, False), (torch.float16, False), (torch.float32, False),
                                         (torch.float32, True)])
@pytest.mark.parametrize("hidden", [96, 768])
def test_register_variants_of_the_table(dtype, tf32, hidden):
    """Each cooperative configuration has register variants of 16 and 64 rows with the same
    place for W_hh, and the launch choice on an H100 (132 SMs) takes the smallest that
    fits one tile of rows per program, else the tiled configuration."""
    configs = fits.cooperative_configs(dtype, hidden, tf32)
    tiled, *registers = configs
    assert tiled == fits.cooperative_config(dtype, hidden, tf32) and not tiled.registers
    # 64 rows per program beside a slab only for fp16/bf16 at 128 (larger slabs leave no
    # shared memory for a [SLAB_K, 64] operand).
    rows = (16, 64) if tiled.slab_k == 0 or (tiled.slab_k == 128 and dtype != torch.float32) else (16,)
    assert [(c.registers, c.block_b, c.slab_k, c.backward_slab_k, c.block_h) for c in registers] == [
        (True, r, tiled.slab_k, tiled.backward_slab_k, 16) for r in rows]
    groups = 132 // (hidden // 16)  # H=96: 6 slices, 22 groups; H=768: 48 slices, 2 groups
    expected = {1: registers[0], 16 * groups: registers[0]}
    if len(rows) == 2:
        expected.update({16 * groups + 1: registers[1], 64 * groups: registers[1], 64 * groups + 1: tiled})
    else:
        expected.update({16 * groups + 1: tiled})
    for batch, cfg in expected.items():
        assert fits.cooperative_variant(configs, hidden, batch, 132) == cfg, batch
    assert fits.cooperative_max_register_batch(dtype, hidden, 132, tf32) == rows[-1] * groups


def test_register_limits_on_common_gpus():
    """The largest batch that runs the register variant: the rows of its largest register
    variant x the groups left next to cdiv(H, 16) slices; bf16 with an on-chip slab (H in
    (128, 1024]) has 16-row variants only, the streamed H = 2048 64-row ones."""
    limits = {(sms, h): fits.cooperative_max_register_batch(torch.bfloat16, h, sms)
              for sms in (108, 132) for h in (256, 512, 768, 1024, 2048)}
    assert limits == {(108, 256): 96, (108, 512): 48, (108, 768): 32, (108, 1024): 16, (108, 2048): 0,
                      (132, 256): 128, (132, 512): 64, (132, 768): 32, (132, 1024): 32, (132, 2048): 64}


@pytest.mark.parametrize("batch, registers, rows", [(5, True, 8), (17, True, 16), (40, False, 8)])
def test_the_variant_that_runs_is_the_one_the_batch_fits(coop, batch, registers, rows):
    """8 SMs, H=40 (3 slices of 16 units): at most 2 groups. 5 rows -> the register
    variant of 8 rows (1 group); 17 -> of 16 rows (2 groups); 40 -> more than 2 x 16 rows,
    so the tiled kernel (5 tiles of 8 over 2 groups); each gives the reference's results."""
    coop(False)
    with count_launches() as n:
        check_against_reference("LSTM", torch.float64, batch, 3, 40, False, True)
    assert ran(n) == {("forward", registers, rows), ("backward", registers, rows)}
    assert n.configs.total() == 2


def _auto_picks_cooperative(monkeypatch):
    """Make auto choose the cooperative tier on CPU tensors (it never does by itself there)."""
    monkeypatch.delenv("FASTRNN_TIER", raising=False)
    monkeypatch.setattr(policy, "chosen_tier", lambda *args: ("cooperative", False))


def test_barrier_timeout_under_auto_reruns_on_the_step_tier_with_one_warning(coop, monkeypatch):
    """The launch in which program 1 never arrives raises inside the backend; the call is
    rerun on the step tier (right results), with one warning, and later calls of that
    layer go to the step tier directly."""
    coop(False)
    monkeypatch.setattr(selfcheck, "checked", {})
    _auto_picks_cooperative(monkeypatch)
    monkeypatch.setattr(cooperative, "BARRIER_TIMEOUT_US", 500_000)
    monkeypatch.setattr(cooperative, "ABSENT_PROGRAM", 1)
    problem = _problem("GRU", 5, 4, 16, False, True)
    expected = _run("GRU", "reference", torch.float64, problem, False)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        with count_launches() as first:
            got = _run("GRU", "triton", torch.float64, problem, False)
        with count_launches() as second:
            again = _run("GRU", "triton", torch.float64, problem, False)
    timeouts = [w for w in records if "grid barrier" in str(w.message)]
    assert len(timeouts) == 1, [str(w.message) for w in records]
    assert "run on the step tier" in str(timeouts[0].message)
    assert first.tiers["cooperative", "forward"] == 1 and first.tiers["step", "forward"] == 4
    assert first.tiers["cooperative", "backward"] == 0 and first.tiers["step", "backward"] == 4
    assert set(second.tiers) == {("step", "forward"), ("step", "backward")}
    for result in (got, again):
        for a, e in zip(result[0] + result[1], expected[0] + expected[1]):
            torch.testing.assert_close(a, e, **TOL[torch.float64])


def test_first_use_check_covers_the_cooperative_tier(coop, monkeypatch):
    """With the check on, the first cooperative use of a key runs the check problem through
    every variant of this tier (here the tiled one and registers of 8 rows) and the step
    tier (silently, they agree); a timed-out check falls back."""
    coop(False, registers=(8,))
    monkeypatch.setattr(selfcheck, "checked", {})
    monkeypatch.setenv("FASTRNN_SELF_CHECK", "1")
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        with count_launches() as n:
            assert triton_backend.tier_for("LSTM", 16, 0, torch.float64, "cpu") == "cooperative"
    assert not [w for w in records if "fastrnn" in str(w.message)]
    # Every variant of the layer, both directions: a forward with and one without saving,
    # and a backward.
    variants = small_configs(16, False, registers=(8,))
    assert set(n.configs) == {("cooperative", d, cfg) for d in ("forward", "backward") for cfg in variants}
    assert all(count == (4 if d == "forward" else 2) for (_, d, _), count in n.configs.items())
    assert list(selfcheck.checked.values()) == [True]
    # A check whose launch never completes a barrier (program 1 absent): under auto the
    # layer falls back to the step tier with one warning.
    monkeypatch.setattr(cooperative, "BARRIER_TIMEOUT_US", 300_000)
    monkeypatch.setattr(cooperative, "ABSENT_PROGRAM", 1)
    _auto_picks_cooperative(monkeypatch)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        assert triton_backend.tier_for("GRU", 16, 0, torch.float64, "cpu") == "step"
        assert triton_backend.tier_for("GRU", 16, 0, torch.float64, "cpu") == "step"
    found = [w for w in records if "disagrees with the step tier" in str(w.message)]
    assert len(found) == 1 and "BarrierTimeout" in str(found[0].message)


def test_first_use_check_catches_a_wrong_register_variant(coop, monkeypatch):
    """The check runs the register variant too: a register forward whose y is off (the
    tiled one is right) makes the layer fall back to the step tier with one warning that
    names the register configuration."""
    coop(False, registers=(8,))
    monkeypatch.setattr(selfcheck, "checked", {})
    monkeypatch.setenv("FASTRNN_SELF_CHECK", "1")
    _auto_picks_cooperative(monkeypatch)
    launch = cooperative.launch_forward

    def wrong_when_registers(kind, tensors, ints, cfg, *args):
        launch(kind, tensors, ints, cfg, *args)
        if cfg.registers:
            tensors["y_ptr"].add_(1.0)

    monkeypatch.setattr(cooperative, "launch_forward", wrong_when_registers)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        assert triton_backend.tier_for("RNN_TANH", 16, 0, torch.float64, "cpu") == "step"
        assert triton_backend.tier_for("RNN_TANH", 16, 0, torch.float64, "cpu") == "step"
    found = [w for w in records if "disagrees with the step tier" in str(w.message)]
    assert len(found) == 1, [str(w.message) for w in records]
    assert "y differs" in str(found[0].message) and "(R8-H4-K16-w4s1)" in str(found[0].message)


# --------------------------------------------------------------------------------------
# A cell defined outside fastrnn runs on the cooperative tier with no kernel edit
# --------------------------------------------------------------------------------------


@triton.jit
def _two_gate_forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev):
    """A 2-gate cell for these tests: ``z = sigmoid(x0 + r0)``, ``n = tanh(x1 + r1)``,
    ``h = n + z * (h_prev - n)``; keeps ``z, n``."""
    z = 1.0 / (1.0 + tl.exp(-(x0 + r0)))
    n = kernel_cells.tanh(x1 + r1)
    return n + z * (h_prev - n), c_prev, z, n, n, n, n


@triton.jit
def _two_gate_backward(dh, dc, z, n, s2, s3, e, c, c_prev, h, h_prev):
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dz = dh * (h_prev - n) * z * (1.0 - z)
    return dz, dn, dn, dn, dz, dn, dn, dn, dh * z, dc


def _two_gate_torch_forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev):
    z, n = torch.sigmoid(x0 + r0), torch.tanh(x1 + r1)
    return n + z * (h_prev - n), None, z, n, None, None, None


def _two_gate_torch_backward(dh, dc, z, n, s2, s3, e, c, c_prev, h, h_prev):
    dn = dh * (1 - z) * (1 - n * n)
    dz = dh * (h_prev - n) * z * (1 - z)
    return dz, dn, None, None, dz, dn, None, None, dh * z, None


@pytest.fixture
def two_gate_cell(monkeypatch):
    """The 2-gate cell, registered only for the test (the registry is restored after it)."""
    monkeypatch.setattr(cells_base, "_REGISTRY", dict(cells_base._REGISTRY))
    return cells.Cell("COOP_TEST_TWO_GATE", 2, _two_gate_torch_forward, _two_gate_torch_backward,
                      _two_gate_forward, _two_gate_backward, forward_reads_h_prev=True,
                      backward_reads_h_prev=True, direct_h_grad=True)


def test_a_user_cell_is_in_the_compile_report(two_gate_cell):
    """Every configuration, both directions, for the new cell too: the report lists it
    without an edit (and a cell without Triton functions is left out)."""
    cells.Cell("COOP_TEST_REFERENCE_ONLY", 1, _two_gate_torch_forward, _two_gate_torch_backward)
    specs = cooperative.specialisations()
    mine = [s for s in specs if s.kind == two_gate_cell.name]
    assert len(mine) == len([s for s in specs if s.kind == "LSTM"]) > 0
    assert all(s.constexprs["CELL_FORWARD"] is _two_gate_forward and s.constexprs["GATES"] == 2 for s in mine)
    assert "COOP_TEST_REFERENCE_ONLY" not in {s.kind for s in specs}


@pytest.mark.parametrize("state", ["registers", "tiled"])
@pytest.mark.parametrize("slab", [False, True], ids=["stream", "slab"])
def test_a_user_cell_matches_its_torch_functions(coop, two_gate_cell, slab, state):
    """The cooperative forward and backward of the 2-gate cell (gate slots 2 and 3 unused,
    h_prev read in both directions, the direct path of dh) against a torch loop over the
    cell's own torch functions and autograd: y, h_n, the saved gates, dxg and dh0."""
    coop(slab, registers=REGISTER_ROWS if state == "registers" else ())
    cell, hidden, batch, steps = two_gate_cell, 40, 5 if state == "registers" else 17, 4
    gen = torch.Generator().manual_seed(5)
    xg = torch.randn(steps * batch, 2 * hidden, generator=gen, dtype=torch.float64)
    w_hh = torch.randn(2 * hidden, hidden, generator=gen, dtype=torch.float64) / math.sqrt(hidden)
    h0 = torch.randn(batch, hidden, generator=gen, dtype=torch.float64)
    dy = torch.randn(steps * batch, hidden, generator=gen, dtype=torch.float64)
    dh_n = torch.randn(batch, hidden, generator=gen, dtype=torch.float64)
    schedule = Schedule.uniform(steps, batch)

    with count_launches() as n:
        fwd = coop_launcher.forward(cell, xg, w_hh, None, None, h0, None, schedule, False, True)
        bwd = coop_launcher.backward(cell, fwd.saved, w_hh, None, None, h0, None, fwd.y, dy, dh_n, None,
                                                   schedule, False)
    assert ran(n) == {("forward", state == "registers", 8), ("backward", state == "registers", 8)}

    x_ref, h_ref = xg.clone().requires_grad_(), h0.clone().requires_grad_()
    h, ys, gates = h_ref, [], []
    zero = torch.zeros(batch, hidden, dtype=torch.float64)
    for t in range(steps):
        x0, x1 = x_ref[t * batch : (t + 1) * batch].split(hidden, dim=1)
        r0, r1 = (h @ w_hh.t()).split(hidden, dim=1)
        h, _, z, g, *_ = cell.torch_forward(x0, x1, zero, zero, r0, r1, zero, zero, h, None)
        ys.append(h)
        gates.append(torch.cat([z, g], dim=1))
    y = torch.cat(ys)
    dx_ref, dh0_ref = torch.autograd.grad((y * dy).sum() + (h * dh_n).sum(), (x_ref, h_ref))
    tol = TOL[torch.float64]
    torch.testing.assert_close(fwd.y, y.detach(), **tol)
    torch.testing.assert_close(fwd.h_n, h.detach(), **tol)
    assert fwd.c_n is None
    torch.testing.assert_close(fwd.saved[0], torch.cat(gates).detach(), **tol)
    torch.testing.assert_close(bwd.dxg, dx_ref, **tol)
    torch.testing.assert_close(bwd.dhg, dx_ref, **tol)  # not recurrent_apart: one buffer
    torch.testing.assert_close(bwd.dh0, dh0_ref, **tol)
    assert bwd.dc0 is None


@pytest.mark.parametrize("state", ["registers", "tiled"])
@pytest.mark.parametrize("kind", ["RNN_TANH", "RNN_RELU"])
def test_one_gate_slab_forward_splits_k(coop, kind, state):
    """A 1-gate cell's fp16 slab forward runs as a batched dot over parts of ``k``, one per
    warp (``cooperative_tiles.split_k``: H = 40, a 64-column slab in 8 parts of 8), packed and
    bidirectional: every output and gradient as the reference's (fp16 relu against the step
    tier, whose rounding it shares)."""
    _check_case(coop, kind, "fp16", 40, 5, 6, True, True, True, state)
