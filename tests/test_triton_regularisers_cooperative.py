"""Zoneout and recurrent dropout on the cooperative tier (kernels/cooperative.py), in Triton's
interpreter with every program in its own thread (tests/threaded_interpreter.py).

``FASTRNN_TIER=cooperative`` forces the tier with the small launch configurations of
tests/test_cooperative.py (``H = 16`` over 4 programs, 8 "SMs"): the register variant of 8
rows or the tiled kernel (8-row tiles). Each case asserts that every launch of the call was
a cooperative one of the expected variant.

Oracle: the reference backend on the same module with the same masks (``torch.manual_seed``
before each run: the masks are drawn with torch in ``fastrnn.functional``, the same on every
backend), every output (``out``, ``h_n``, ``c_n``) and every gradient (input, ``h0``, ``c0``,
every parameter). Training (zoneout masks and the recurrent-dropout scale) and eval (zoneout
as its expectation with ``p_h`` / ``p_c``). fp64 to 1e-10; fp32 to 1e-5 against a float64
run on the same inputs. The probabilities are exact in fp32 (the kernels read the eval
probabilities as fp32 scalars; the recurrent-dropout scale is ``1 / (1 - p)`` in the layer's
dtype, exact for p = 0.5).
"""

from __future__ import annotations

import pytest
import torch
from test_cooperative import INTERPRETER_TIMEOUT_US, SMS, ran, small_configs
from test_triton_extras_cooperative import DTYPES, HIDDEN, INPUT, _assert_close, _gradients, _leaves, _problem
from threaded_interpreter import threaded_programs
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from fastrnn.backends.triton import buffers
from fastrnn.backends.triton import cooperative as coop_launcher
from fastrnn.backends.triton import step as step_launcher
from fastrnn.kernels import cooperative
from fastrnn.kernels.launches import count_launches

ZONEOUT = {"LSTM": (0.25, 0.375), "PEEPHOLE": (0.375, 0.25), "GRU": 0.375, "RNN_TANH": 0.25}
RECURRENT_DROPOUT = 0.5
MODULES = {
    "LSTM": lambda **kw: fastrnn.LSTM(INPUT, HIDDEN, **kw),
    "GRU": lambda **kw: fastrnn.GRU(INPUT, HIDDEN, **kw),
    "RNN_TANH": lambda **kw: fastrnn.RNN(INPUT, HIDDEN, nonlinearity="tanh", **kw),
    "PEEPHOLE": lambda **kw: fastrnn.LSTM(INPUT, HIDDEN, peephole=True, **kw),
}


@pytest.fixture
def coop(monkeypatch):
    """Force the cooperative tier with small configurations, programs threaded; yields a
    setter: ``registers`` True offers the register variants (8 and 16 rows), False only
    the tiled kernel."""
    monkeypatch.setenv("FASTRNN_TIER", "cooperative")
    monkeypatch.setattr(buffers, "FILL_NAN", True)
    monkeypatch.setattr(cooperative, "BARRIER_TIMEOUT_US", INTERPRETER_TIMEOUT_US)
    monkeypatch.setattr(coop_launcher, "sm_count", lambda device: SMS)
    # The backend admits a call with these inputs only when the step tier (where any call
    # can fall back) reads them too. Here the cooperative tier is forced and every test
    # asserts that only cooperative launches ran. (A no-op once the step tier lists them.)
    monkeypatch.setattr(step_launcher, "EXTRAS", ("params", "resets", "zoneout", "recurrent_scale"), raising=False)

    def use(slab: bool, registers: bool):
        rows = (8, 16) if registers else ()
        monkeypatch.setattr(cooperative, "cooperative_configs",
                            lambda dtype, hidden, tf32=False, *device: small_configs(hidden, slab, registers=rows))

    with threaded_programs():
        yield use


def _module(kind, layers, bidirectional, dropout: bool, seed=0):
    """A float64 module with zoneout (and recurrent dropout) and random weights; the peephole
    weights non-zero (they start at 0)."""
    torch.manual_seed(seed)
    module = MODULES[kind](num_layers=layers, bidirectional=bidirectional, dtype=torch.float64, backend="reference",
                           zoneout=ZONEOUT[kind], recurrent_dropout=RECURRENT_DROPOUT if dropout else 0.0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("weight_c"):
                p.copy_(torch.rand(p.shape, dtype=p.dtype) - 0.5)
    return module


def _run(module, backend, dtype, training, problem, seed, regularised=True):
    """Outputs and gradients of a copy of ``module`` in ``dtype`` on ``backend`` (without
    its regularisers unless ``regularised``); the masks come from ``torch.manual_seed(seed)``."""
    x, lengths, resets, h0, c0 = problem
    module = _copy(module, backend, dtype, regularised).train(training)
    leaves = _leaves(x, h0, c0, dtype)
    hx = (leaves["h0"], leaves["c0"]) if c0 is not None else leaves["h0"]
    torch.manual_seed(seed)
    if lengths is None:
        out, hidden = module(leaves["input"], hx, resets=resets)
    else:
        packed = pack_padded_sequence(leaves["input"], torch.tensor(lengths), enforce_sorted=False)
        flags = None if resets is None else pack_padded_sequence(resets, torch.tensor(lengths), enforce_sorted=False)
        out, hidden = module(packed, hx, resets=flags)
        out = pad_packed_sequence(out, total_length=x.shape[0])[0]
    outs = [out] + (list(hidden) if c0 is not None else [hidden])
    return _gradients(module, leaves, outs, lengths)


def _copy(module, backend, dtype, regularised=True):
    clone = _rebuild(module, regularised)
    clone.load_state_dict(module.state_dict())
    clone.backend = backend
    return clone.to(dtype)


def _rebuild(module, regularised):
    kind = {fastrnn.GRU: "GRU", fastrnn.RNN: "RNN_TANH"}.get(type(module), "LSTM")
    if getattr(module, "peephole", False):
        kind = "PEEPHOLE"
    regularisers = dict(zoneout=ZONEOUT[kind], recurrent_dropout=module.recurrent_dropout) if regularised else {}
    return MODULES[kind](num_layers=module.num_layers, bidirectional=module.bidirectional, dtype=torch.float64,
                         backend="reference", **regularisers)


CASES = [
    # kind, dtype, training, recurrent dropout, steps, batch, layers, bidirectional, packed, resets, slab, registers
    ("LSTM", "fp64", True, True, 6, 3, 1, True, True, False, True, True),
    ("LSTM", "fp32", True, True, 5, 3, 2, False, False, False, False, False),
    ("LSTM", "fp64", False, False, 6, 3, 1, True, False, False, False, True),
    ("LSTM", "fp64", True, True, 6, 3, 1, False, True, True, True, False),
    ("GRU", "fp64", True, True, 6, 3, 1, True, False, False, False, True),
    ("GRU", "fp64", True, True, 6, 3, 1, False, True, False, True, False),
    ("GRU", "fp32", False, False, 5, 3, 2, True, True, False, True, True),
    ("GRU", "fp64", True, True, 6, 3, 1, True, True, True, True, True),
    ("RNN_TANH", "fp64", True, True, 6, 3, 2, True, True, False, True, False),
    ("RNN_TANH", "fp64", False, False, 6, 3, 1, False, False, False, False, True),
    ("RNN_TANH", "fp32", True, False, 6, 3, 1, True, False, False, True, True),
    ("PEEPHOLE", "fp64", True, True, 6, 3, 1, True, True, False, False, True),
    ("PEEPHOLE", "fp64", False, False, 5, 3, 1, False, True, False, True, False),
    ("PEEPHOLE", "fp32", True, True, 6, 2, 1, False, False, True, True, True),
]


def _case_id(case):
    kind, dtype, training, dropout, steps, batch, layers, bi, packed, resets, slab, registers = case
    return (f"{kind}-{dtype}-" + ("train" if training else "eval") + ("-rdrop" if dropout else "")
            + f"-T{steps}-B{batch}-L{layers}" + ("-bi" if bi else "") + ("-packed" if packed else "-padded")
            + ("-resets" if resets else "") + ("-slab" if slab else "-stream")
            + ("-registers" if registers else "-tiled"))


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_regularisers_match_the_reference(coop, case):
    kind, dtype, training, dropout, steps, batch, layers, bi, packed, resets, slab, registers = case
    coop(slab, registers)
    dtype = DTYPES[dtype]
    module = _module(kind, layers, bi, dropout)
    problem = _problem(kind, steps, batch, layers, bi, packed, resets)
    with count_launches() as n:
        got_out, got_grad = _run(module, "triton", dtype, training, problem, seed=7)
    launches = layers * (2 if bi else 1)
    assert n.forward == n.backward == launches
    assert set(n.tiers) == {("cooperative", "forward"), ("cooperative", "backward")}, dict(n.tiers)
    assert ran(n) == {("forward", registers, 8), ("backward", registers, 8)}
    # The oracle runs in float64 on the same (dtype-rounded) inputs and the same masks.
    x, lengths, flags, h0, c0 = problem
    rounded = (x.to(dtype).double(), lengths, flags, h0.to(dtype).double(),
               None if c0 is None else c0.to(dtype).double())
    module64 = _copy(module, "reference", dtype).double()
    want_out, want_grad = _run(module64, "reference", torch.float64, training, rounded, seed=7)
    _assert_close(got_out, want_out, dtype, "against the reference backend")
    _assert_close(got_grad, want_grad, dtype, "against the reference backend")
    # The regularisers act: without them the reference gives other outputs.
    plain_out, _ = _run(module64, "reference", torch.float64, training, rounded, seed=7, regularised=False)
    assert not torch.allclose(plain_out["out"], want_out["out"])


@pytest.mark.parametrize("registers", [True, False], ids=["registers", "tiled"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH"])
def test_inference_matches_the_reference(coop, kind, registers):
    """A forward without gradients (nothing saved: the tiled kernel's cell state goes through
    its ``(B, H)`` buffer) with zoneout masks and the recurrent-dropout scale."""
    coop(True, registers)
    module = _module(kind, 1, True, dropout=True)
    x, lengths, _, h0, c0 = _problem(kind, 5, 3, 1, True, True, False)
    hx = (h0, c0) if c0 is not None else h0
    runs = []
    for backend in ("triton", "reference"):
        clone = _copy(module, backend, torch.float64).train()
        torch.manual_seed(3)
        with torch.no_grad(), count_launches() as n:
            out, hidden = clone(pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False), hx)
        runs.append([pad_packed_sequence(out)[0]] + (list(hidden) if c0 is not None else [hidden]))
        if backend == "triton":
            assert n.backward == 0 and ran(n) == {("forward", registers, 8)}
    for got, want in zip(*runs):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("save", [True, False], ids=["save", "nosave"])
@pytest.mark.parametrize("kind", ["LSTM", "PEEPHOLE", "GRU", "RNN_TANH"])
def test_saved_tuple_has_the_shared_layout(coop, kind, save):
    """The forward's ``saved`` tuple with zoneout has the shapes and dtypes of
    ``buffers.saved_layout`` (what every tier's backward reads): the cell's own c / h last."""
    from fastrnn.backends import triton as backend
    from fastrnn.regularisers import Zoneout
    from fastrnn.schedule import Schedule

    coop(True, True)
    cell = MODULES[kind]()._kind
    steps, batch, gates = 4, 3, cell.gates
    rows = steps * batch
    gen = torch.Generator().manual_seed(5)
    zone = Zoneout(mask_h=torch.rand(rows, HIDDEN, generator=gen) < 0.3,
                   mask_c=(torch.rand(rows, HIDDEN, generator=gen) < 0.3) if cell.has_cell_state else None)
    xg = torch.randn(rows, gates * HIDDEN, generator=gen, dtype=torch.float64)
    w_hh = torch.randn(gates * HIDDEN, HIDDEN, generator=gen, dtype=torch.float64) / 4
    b_hh = torch.randn(gates * HIDDEN, generator=gen, dtype=torch.float64)
    h0 = torch.randn(batch, HIDDEN, generator=gen, dtype=torch.float64)
    c0 = torch.randn(batch, HIDDEN, generator=gen, dtype=torch.float64) if cell.has_cell_state else None
    params = torch.rand(cell.param_rows, HIDDEN, generator=gen, dtype=torch.float64) if cell.param_rows else None
    with count_launches() as n:
        res = backend.forward(cell, xg, w_hh, b_hh, None, h0, c0, Schedule.uniform(steps, batch), False, save,
                              params=params, zoneout=zone)
    assert ran(n) == {("forward", True, 8)}
    layout = backend.saved_layout(cell, rows, HIDDEN, torch.float64, save, zoneout=(zone.on_h, zone.on_c))
    assert [(tuple(t.shape), t.dtype) for t in res.saved] == [(tuple(s), d) for s, d in layout]
    # (gates, c, cell_c); (gates, e) (GRU reads no h); (cell_h,) (a plain RNN saves nothing else)
    assert len(layout) == ({"LSTM": 3, "PEEPHOLE": 3, "GRU": 2, "RNN_TANH": 1}[kind] if save else 0)
