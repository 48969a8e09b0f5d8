"""The resident tier (one launch per pass) against the reference backend, in Triton's
interpreter on CPU.

Every test forces the tier with ``FASTRNN_TIER=resident`` and counts the launches, so a
silent fall back to the step tier would fail it. Buffers the backend allocates are filled
with NaN (``FILL_NAN``), so a store a kernel skips fails loudly.

- Parity (``check_against_reference`` of tests/test_triton_backend.py: every output y,
  h_n, c_n and every gradient x, h0, c0, each weight and bias of a 2-layer stack, against
  the reference backend; its docstring justifies the tolerances per dtype): every kind,
  fp32/fp16/fp64, H in (1, 3, 17, 33, 64), B in (1, 5, 17) (17 rows = two batch tiles of
  16), T in (1, 7), packed with unsorted lengths or padded, one or two directions. The
  quick run takes a pairwise selection (every pair of factor values at least once); the
  full product runs with FASTRNN_FULL=1.
- fp64 gradcheck through the resident tier with h0/c0 and variable lengths.
- Launch counts: one forward and one backward launch per layer-direction.
- Module parity with torch.nn under ``FASTRNN_TIER=resident`` (a representative subset of
  tests/test_triton_modules.py; proj_size runs on the step tier, see tests/test_tiers.py).
- A cell defined outside fastrnn (two gates, reads ``h_prev`` both ways, a direct gradient to
  ``h_prev``): its report rows and table entries (those of its gate count), and its forward and
  backward through the resident launchers against autograd on its torch functions.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import triton
import triton.language as tl
from helpers import LaunchSpy, assert_parity, make_pair, pairwise
from test_triton_backend import _TOL, _problem, _run, check_against_reference
from test_triton_gradcheck import _inputs as gradcheck_inputs
from torch.nn.utils.rnn import pack_padded_sequence

from fastrnn import cells
from fastrnn.backends.triton import buffers
from fastrnn.cells import base as cell_base
from fastrnn.functional import Schedule, recurrent_layer
from fastrnn.kernels import fits, resident
from fastrnn.kernels.cells import sigmoid, tanh
from fastrnn.kernels.recurrent_step import count_launches

KINDS = tuple(cell.name for cell in cells.BUILTIN)
GATES = {cell.name: cell.gates for cell in cells.BUILTIN}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "fp64": torch.float64}


#: fp64 entries the GPU table lacks: LSTM / GRU at BLOCK_H = 64 need more shared memory
#: than any SM has in fp64 (the LSTM backward 270 KB), so on a device they run the step
#: tier. fp64 exists for gradcheck; to check the resident kernels' fp64 arithmetic at
#: H = 33 and 64 all the same, the tests add interpreter-only entries for them.
INTERPRETER_ONLY = {
    (kind, "float64", 64): fits.ResidentFit(fits.KernelConfig(16, 64, 4), fits.KernelConfig(16, 64, 4),
                                            {80: 0, 90: 0})
    for kind in ("LSTM", "GRU")
}


@pytest.fixture(autouse=True)
def _resident(monkeypatch):
    monkeypatch.setattr(buffers, "FILL_NAN", True)
    monkeypatch.setenv("FASTRNN_TIER", "resident")
    assert not set(INTERPRETER_ONLY) & set(fits.RESIDENT), "the table has these now: drop them here"
    monkeypatch.setattr(fits, "RESIDENT", {**fits.RESIDENT, **INTERPRETER_ONLY})


def _only_resident(n, forward: int, backward: int):
    """Exactly ``forward`` / ``backward`` launches, all of them resident-tier launches."""
    expected = {("resident", "forward"): forward, ("resident", "backward"): backward}
    assert dict(n.tiers) == {k: v for k, v in expected.items() if v}, dict(n.tiers)
    assert (n.forward, n.backward) == (forward, backward)


# --------------------------------------------------------------------------------------
# Parity with the reference backend
# --------------------------------------------------------------------------------------

FACTORS = dict(
    kind=list(KINDS), dtype=list(DTYPES), hidden=[1, 3, 17, 33, 64], batch=[1, 5, 17], steps=[1, 7],
    bidirectional=[False, True], packed=[False, True],
)


def _case(c, marks=()):
    ident = f"{c['kind']}-B{c['batch']}-T{c['steps']}-H{c['hidden']}-{c['dtype']}"
    ident += ("-bi" if c["bidirectional"] else "") + ("-packed" if c["packed"] else "")
    return pytest.param(c["kind"], DTYPES[c["dtype"]], c["batch"], c["steps"], c["hidden"], c["bidirectional"],
                        c["packed"], id=ident, marks=marks)


QUICK = [_case(c) for c in pairwise(FACTORS)]
_QUICK_IDS = {p.id for p in QUICK}
FULL = [
    p for p in (_case(dict(zip(FACTORS, values)), marks=(pytest.mark.slow,))
                for values in itertools.product(*FACTORS.values()))
    if p.id not in _QUICK_IDS
]
ARGS = "kind, dtype, batch, steps, hidden, bidirectional, packed"


def _check(kind, dtype, batch, steps, hidden, bidirectional, packed, monkeypatch):
    layer_directions = 2 * (2 if bidirectional else 1)  # both checks run 2 layers
    if kind == "RNN_RELU" and dtype == torch.float16:
        # relu' flips where a pre-activation lies within fp16 rounding of 0, so the fp16
        # run and the fp64 reference disagree there by O(1) whatever the kernel (the step
        # tier shows the same mismatches, e.g. B17-T7-H64: grad x off by 0.33 at one
        # element). Both tiers round at the same points (fp16 y, fp16 GEMM operands,
        # fp32 sums): resident vs step measured <= 3.2e-3 relative over every kind at
        # B17-T7-H64, so the step tier is the oracle here, at the fp16 tolerance.
        n = check_against_step_tier(kind, dtype, batch, steps, hidden, bidirectional, packed, monkeypatch)
    else:
        with count_launches() as n:
            check_against_reference(kind, dtype, batch, steps, hidden, bidirectional, packed)
    _only_resident(n, layer_directions, layer_directions)


def check_against_step_tier(kind, dtype, batch, steps, hidden, bidirectional, packed, monkeypatch):
    """Every output and gradient of the resident run equals the step tier's (same dtype);
    returns the launch counter of the resident run."""
    problem = _problem(kind, batch, steps, hidden, bidirectional, packed)
    with count_launches() as n:
        out_r, grad_r = _run(kind, "triton", dtype, problem, bidirectional)
    monkeypatch.setenv("FASTRNN_TIER", "step")
    out_s, grad_s = _run(kind, "triton", dtype, problem, bidirectional)
    monkeypatch.setenv("FASTRNN_TIER", "resident")
    assert len(out_r) == len(out_s) and len(grad_r) == len(grad_s)
    for k, (a, e) in enumerate(zip(out_r + grad_r, out_s + grad_s)):
        assert a is not None and e is not None, k
        torch.testing.assert_close(a, e, **_TOL[dtype], msg=lambda m: f"tensor {k}: {m}")
    return n


@pytest.mark.parametrize(ARGS, QUICK)
def test_resident_matches_reference(kind, dtype, batch, steps, hidden, bidirectional, packed, monkeypatch):
    _check(kind, dtype, batch, steps, hidden, bidirectional, packed, monkeypatch)


@pytest.mark.parametrize(ARGS, FULL)
def test_resident_matches_reference_full(kind, dtype, batch, steps, hidden, bidirectional, packed, monkeypatch):
    _check(kind, dtype, batch, steps, hidden, bidirectional, packed, monkeypatch)


@pytest.mark.parametrize("tier", ["resident", "step"])
@pytest.mark.parametrize("hidden", [33, 40], ids=["H33", "H40-aligned"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_tf32_rounds_dot_operands(kind, hidden, tier, monkeypatch):
    """fp32 with ``allow_tf32``: the dots run on operands rounded to TF32 (10-bit mantissa),
    so every output and gradient moves off the IEEE run by TF32 rounding but stays within
    TF32 error of the fp64 reference (H40: the aligned forward specialisation)."""
    monkeypatch.setenv("FASTRNN_TIER", tier)
    problem = _problem(kind, 5, 7, hidden, False, True)
    with count_launches() as n:
        ieee_out, ieee_grad = _run(kind, "triton", torch.float32, problem, False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    tf32_out, tf32_grad = _run(kind, "triton", torch.float32, problem, False)
    ref_out, ref_grad = _run(kind, "reference", torch.float64, problem, False)
    assert n.tiers[tier, "forward"] >= 2 and n.tiers[tier, "backward"] >= 2, dict(n.tiers)
    moved = 0.0
    for k, (a, i, e) in enumerate(zip(tf32_out + tf32_grad, ieee_out + ieee_grad, ref_out + ref_grad)):
        assert a is not None and i is not None and e is not None, k
        torch.testing.assert_close(a.double(), e, rtol=1e-2, atol=5e-3, msg=lambda m: f"tensor {k}: {m}")
        moved = max(moved, (a - i).abs().max().item())
    assert moved > 1e-5, "TF32 results equal IEEE ones: the operands were not rounded"


@pytest.mark.parametrize("kind, hidden", [("LSTM", 24), ("LSTM", 64), ("GRU", 40), ("RNN_TANH", 72)])
def test_aligned_backward(kind, hidden, monkeypatch):
    """fp16 with H a multiple of 8 (BLOCK_H 32, 64, 128): every backward launch runs the
    ``H_ALIGNED`` kernel (resident_tiles.ALIGNED_BACKWARD), every output and gradient matches
    the reference backend, and equals the plain backward's run (the table emptied) bit for bit:
    the alignment changes how rows load, not what is computed. H = 44 (not a multiple of 8)
    runs the plain backward."""
    from fastrnn.kernels import resident_tiles

    spy = LaunchSpy(resident.resident_backward_kernel)
    monkeypatch.setattr(resident, "resident_backward_kernel", spy)
    check_against_reference(kind, torch.float16, 5, 7, hidden, True, True)
    assert spy.aligned == [True] * 4
    problem = _problem(kind, 5, 7, hidden, True, True)
    aligned = _run(kind, "triton", torch.float16, problem, True)
    with monkeypatch.context() as table:
        table.setattr(resident_tiles, "ALIGNED_BACKWARD", {})
        plain = _run(kind, "triton", torch.float16, problem, True)
    assert spy.aligned[-4:] == [False] * 4
    for k, (a, p) in enumerate(zip(aligned[0] + aligned[1], plain[0] + plain[1])):
        assert torch.equal(a, p), k
    _run(kind, "triton", torch.float16, _problem(kind, 2, 2, 44, False, False), False)
    assert spy.aligned[-2:] == [False] * 2


def test_quick_selection_covers_the_issue_grid():
    """The quick run exercises every value of every factor (and every pair of them)."""
    for name, values in FACTORS.items():
        assert {c[name] for c in pairwise(FACTORS)} == set(values), name


# --------------------------------------------------------------------------------------
# fp64 gradcheck through the resident kernels
# --------------------------------------------------------------------------------------

MODES = [pytest.param(True, id="fast"), pytest.param(False, id="full", marks=pytest.mark.slow)]


@pytest.mark.parametrize("fast_mode", MODES)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_resident(kind, reverse, fast_mode):
    """Lengths 3, 2, 1 (packed; the reverse direction's batch grows), h0 / c0 / every
    weight and bias as inputs; tests/test_triton_gradcheck.py explains fast_mode."""
    schedule, x, h0, c0, weights, _ = gradcheck_inputs(kind)
    leaves = [x, h0] + ([c0] if c0 is not None else []) + weights

    def fn(*args):
        x, h0 = args[0], args[1]
        c0 = args[2] if kind == "LSTM" else None
        w = args[3:] if kind == "LSTM" else args[2:]
        y, h_n, c_n = recurrent_layer(kind, x, schedule, h0, c0, tuple(w) + (None,), reverse=reverse, backend="triton")
        return (y, h_n) if c_n is None else (y, h_n, c_n)

    with count_launches() as n:
        assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast_mode)
    assert n.forward > 0 and n.backward > 0
    assert set(n.tiers) == {("resident", "forward"), ("resident", "backward")}, dict(n.tiers)


# --------------------------------------------------------------------------------------
# Launch counts
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True], ids=["uniform", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind", KINDS)
def test_launch_count_is_one_per_pass(kind, reverse, packed):
    """One forward and one backward launch for T = 6 steps (the step tier makes 6 + 6)."""
    steps, batch, hidden = 6, 3, 4
    schedule = Schedule.from_batch_sizes([3, 3, 2, 2, 1, 1]) if packed else Schedule.uniform(steps, batch)
    g = GATES[kind]
    x = torch.randn(schedule.rows, 2, requires_grad=True)
    h0 = torch.randn(batch, hidden, requires_grad=True)
    c0 = torch.randn(batch, hidden, requires_grad=True) if kind == "LSTM" else None
    shapes = [(g * hidden, 2), (g * hidden, hidden), (g * hidden,), (g * hidden,)]
    weights = tuple(torch.randn(*s, requires_grad=True) for s in shapes)
    with count_launches() as fwd:
        y, h_n, c_n = recurrent_layer(kind, x, schedule, h0, c0, weights + (None,), reverse=reverse, backend="triton")
    _only_resident(fwd, 1, 0)
    loss = y.sum() + h_n.sum() + (c_n.sum() if c_n is not None else 0)
    with count_launches() as bwd:
        loss.backward()
    _only_resident(bwd, 0, 1)
    assert all(t.grad is not None for t in (x, h0) + weights)


# --------------------------------------------------------------------------------------
# Module parity with torch.nn (float64: helpers.TOL explains the tolerances)
# --------------------------------------------------------------------------------------

MODULES = [
    pytest.param("LSTM", dict(num_layers=2, bidirectional=True), False, id="LSTM-2layer-bi"),
    pytest.param("LSTM", dict(batch_first=True), True, id="LSTM-batch_first-packed"),
    pytest.param("GRU", dict(num_layers=2, bidirectional=True), True, id="GRU-2layer-bi-packed"),
    pytest.param("GRU", dict(bias=False), False, id="GRU-nobias"),
    pytest.param("RNN", dict(nonlinearity="relu", bidirectional=True), True, id="RNN_RELU-bi-packed"),
    pytest.param("RNN", dict(num_layers=2), False, id="RNN_TANH-2layer"),
]


@pytest.mark.parametrize("cls, kwargs, packed", MODULES)
def test_module_parity_resident(cls, kwargs, packed):
    hidden, in_size, steps, batch = 5, 3, 4, 3
    ref, fast = make_pair(cls, in_size, hidden, backend="triton", dtype=torch.float64, **kwargs)
    first = kwargs.get("batch_first", False)
    x = torch.randn((batch, steps, in_size) if first else (steps, batch, in_size), dtype=torch.float64)
    if packed:
        x = pack_padded_sequence(x.requires_grad_(), torch.tensor([2, 4, 1]), batch_first=first, enforce_sorted=False)
    else:
        x.requires_grad_()
    layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    h0 = torch.randn(layers, batch, hidden, dtype=torch.float64, requires_grad=True)
    hx = (h0, torch.randn(layers, batch, hidden, dtype=torch.float64, requires_grad=True)) if cls == "LSTM" else h0
    with count_launches() as n:
        assert_parity(ref, fast, x, hx, dtype=torch.float64)
    _only_resident(n, layers, layers)


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_parity_resident(cls):
    ref, fast = make_pair(cls, 3, 4, backend="triton", dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    hx = (h, torch.randn(2, 4, dtype=torch.float64, requires_grad=True)) if cls == "LSTMCell" else h
    with count_launches() as n:
        assert_parity(ref, fast, x, hx, dtype=torch.float64)
    _only_resident(n, 1, 1)


def test_inference_saves_nothing_and_matches(monkeypatch):
    """Under no_grad the resident forward writes no saved tensors (save=0) and still
    returns y, h_n, c_n equal to the reference."""
    saves = []
    launch = resident.launch_forward

    def spy(kind, tensors, ints, **kw):
        saves.append(ints["save"])
        return launch(kind, tensors, ints, **kw)

    monkeypatch.setattr(resident, "launch_forward", spy)
    gen = torch.Generator().manual_seed(0)
    schedule = Schedule.from_batch_sizes([5, 4, 2, 2])
    x = torch.randn(schedule.rows, 3, generator=gen, dtype=torch.float64)
    h0 = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    c0 = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    w = tuple(torch.randn(*s, generator=gen, dtype=torch.float64) * 0.4 for s in [(24, 3), (24, 6), (24,), (24,)])
    for reverse in (False, True):
        with torch.no_grad(), count_launches() as n:
            out = recurrent_layer("LSTM", x, schedule, h0, c0, w + (None,), reverse=reverse, backend="triton")
        _only_resident(n, 1, 0)
        ref = recurrent_layer("LSTM", x, schedule, h0, c0, w + (None,), reverse=reverse, backend="reference")
        for a, e in zip(out, ref):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    assert saves == [0, 0]


@pytest.mark.parametrize("kind", KINDS)
def test_inf_in_the_state_does_not_spread_through_the_padding(kind):
    """+inf in one element of h0 at H=5 (padded to 32 columns): an inf times a zero-padded
    weight is NaN, which must stay out of the state. Outputs and gradients have the
    reference backend's NaN / inf pattern and values."""
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
        ws = tuple(leaves[-4:]) + (None,)
        outs = [o for o in recurrent_layer(kind, leaves[0], schedule, leaves[1], c, ws, backend=backend)
                if o is not None]
        grads = torch.autograd.grad(sum(o.sum() for o in outs), leaves, allow_unused=True)
        return outs + [gr for gr in grads if gr is not None]

    got, expected = run("triton"), run("reference")
    assert len(got) == len(expected)
    for k, (a, e) in enumerate(zip(got, expected)):
        assert torch.equal(a.isnan(), e.isnan()) and torch.equal(a.isinf(), e.isinf()), k
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, equal_nan=True)


# --------------------------------------------------------------------------------------
# A cell defined outside fastrnn: the kernels take it as data
# --------------------------------------------------------------------------------------
# Two gates (a count no built-in cell has), h_prev read by the forward and the backward, a
# gradient to h_prev outside the GEMM, b_hh folded: f = sigmoid(x0 + r0),
# n = tanh(x1 + r1), h = f * n + (1 - f) * h_prev; saves f, n.


def _gated_forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev):
    f, n = torch.sigmoid(x0 + r0), torch.tanh(x1 + r1)
    return f * n + (1 - f) * h_prev, None, f, n, None, None, None


def _gated_backward(dh, dc, f, n, s2, s3, e, c, c_prev, h, h_prev):
    df = dh * (n - h_prev) * f * (1 - f)
    dn = dh * f * (1 - n * n)
    return df, dn, None, None, df, dn, None, None, dh * (1 - f), None


@triton.jit
def _gated_forward_triton(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev):
    f = sigmoid(x0 + r0)
    n = tanh(x1 + r1)
    return f * n + (1.0 - f) * h_prev, c_prev, f, n, n, n, n


@triton.jit
def _gated_backward_triton(dh, dc, f, n, s2, s3, e, c, c_prev, h, h_prev):
    df = dh * (n - h_prev) * f * (1.0 - f)
    dn = dh * f * (1.0 - n * n)
    return df, dn, dn, dn, df, dn, dn, dn, dh * (1.0 - f), dc


@pytest.fixture
def gated_cell(monkeypatch):
    """The two-gate cell, defined for this test only (the registry is restored after it)."""
    monkeypatch.setattr(cell_base, "_REGISTRY", dict(cell_base._REGISTRY))
    return cells.Cell(
        "TWO_GATE_TEST", 2, _gated_forward, _gated_backward, _gated_forward_triton, _gated_backward_triton,
        forward_reads_h_prev=True, backward_reads_h_prev=True, direct_h_grad=True,
    )


def test_a_users_cell_is_compiled_with_the_entries_of_its_gate_count(gated_cell):
    """A cell the table does not name borrows the entries of the tabled cell with the fewest
    gates at least its own (GRU's for two gates) and gets its own rows in the report."""
    gru = fits.resident_entries("GRU")
    assert fits.resident_entries(gated_cell) == fits.resident_entries(gated_cell.name) == gru
    assert fits.resident_fit(gated_cell.name, torch.float16, 100) == fits.resident_fit("GRU", torch.float16, 100)
    specs = resident.specialisations()
    mine = [(s.kernel_name, s.label, s.config) for s in specs if s.kind == gated_cell.name]
    assert mine == [(s.kernel_name, s.label, s.config) for s in specs if s.kind == "GRU"]
    assert all(s.constexprs["GATES"] == 2 and s.constexprs["CELL_FORWARD"] is _gated_forward_triton
               for s in specs if s.kind == gated_cell.name)
    assert {s.kind for s in specs} == {c.name for c in cells.defined() if c.runs_on_triton} >= {gated_cell.name}


def _gated_reference(xg, w_hh, h0, dy, dh_n, steps, reverse):
    """y, h_n and the gradients of xg and h0 from the torch functions, by autograd."""
    xg, h0 = xg.clone().requires_grad_(), h0.clone().requires_grad_()
    batch, hidden = h0.shape
    zero = torch.zeros_like(h0)
    h, ys = h0, [None] * steps
    for t in (reversed(range(steps)) if reverse else range(steps)):
        x = xg[t * batch:(t + 1) * batch]
        xs = [x[:, k * hidden:(k + 1) * hidden] for k in range(2)]
        rs = [h @ w_hh[k * hidden:(k + 1) * hidden].t() for k in range(2)]
        h = _gated_forward(xs[0], xs[1], zero, zero, rs[0], rs[1], zero, zero, h, None)[0]
        ys[t] = h
    y = torch.cat(ys)
    dxg, dh0 = torch.autograd.grad((y * dy).sum() + (h * dh_n).sum(), (xg, h0))
    return y.detach(), h.detach(), dxg, dh0


@pytest.mark.parametrize("reverse", [0, 1], ids=["forward", "reverse"])
def test_a_users_cell_runs_on_the_resident_kernels(gated_cell, reverse):
    """Forward (y, h_n) and backward (dxg, dh0) of the two-gate cell through the resident
    launchers (fp64, 17 rows = two batch tiles, H = 5) against autograd on its torch functions."""
    gen = torch.Generator().manual_seed(5)
    steps, batch, hidden = 4, 17, 5
    n_rows = steps * batch

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    def nan(*shape):
        return torch.full(shape, float("nan"), dtype=torch.float64)

    xg, w_hh, h0 = rnd(n_rows, 2 * hidden), rnd(2 * hidden, hidden, scale=0.5), rnd(batch, hidden)
    dy, dh_n = rnd(n_rows, hidden), rnd(batch, hidden)
    io, i32 = torch.empty(8, dtype=torch.float64), torch.empty(8, dtype=torch.int32)
    fit = fits.resident_fit(gated_cell, torch.float64, hidden)
    ints = dict(T=steps, B=batch, uniform_b=batch, reverse=reverse, H=hidden)
    y, h_n, gates = nan(n_rows, hidden), nan(batch, hidden), nan(n_rows, 2 * hidden)
    resident.launch_forward(gated_cell, dict(
        xg_ptr=xg, w_hh_ptr=w_hh, b_hh_ptr=io, h0_ptr=h0, c0_ptr=io, y_ptr=y, h_n_ptr=h_n, c_n_ptr=io,
        gates_ptr=gates, c_seq_ptr=io, hn_seq_ptr=io, sizes_ptr=i32, offsets_ptr=i32,
    ), dict(ints, save=1), fit=fit, tf32=False)
    dxg, dh0 = nan(n_rows, 2 * hidden), nan(batch, hidden)
    resident.launch_backward(gated_cell.name, dict(
        w_hh_ptr=w_hh, h0_ptr=h0, c0_ptr=io, y_ptr=y, dy_ptr=dy, dh_n_ptr=dh_n, dc_n_ptr=io, gates_ptr=gates,
        c_seq_ptr=io, hn_seq_ptr=io, dxg_ptr=dxg, dhg_ptr=dxg, dh0_ptr=dh0, dc0_ptr=io, sizes_ptr=i32,
        offsets_ptr=i32,
    ), ints, fit=fit, tf32=False)
    expected = _gated_reference(xg, w_hh, h0, dy, dh_n, steps, bool(reverse))
    for name, got, want in zip(("y", "h_n", "dxg", "dh0"), (y, h_n, dxg, dh0), expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")
