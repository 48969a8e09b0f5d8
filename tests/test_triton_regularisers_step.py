"""Zoneout and recurrent dropout on the step tier (kernels/recurrent_step.py), in Triton's
interpreter.

``FASTRNN_TIER=step`` forces the tier; each case asserts that every launch of the call was a
step launch (one per step of each layer-direction, each way). Oracle: the reference backend
on the same module with the same masks (``torch.manual_seed`` before each run: the masks are
drawn with torch in ``fastrnn.functional``, the same on every backend), every output
(``out``, ``h_n``, ``c_n``) and every gradient (input, ``h0``, ``c0``, every parameter).
Training (zoneout masks and the recurrent-dropout scale) and eval (zoneout as its
expectation with ``p_h`` / ``p_c``); fp64 to 1e-10, fp32 to 1e-5. The probabilities are exact
in fp32 (the kernels read the eval probabilities as fp32 scalars; the recurrent-dropout
scale is ``1 / (1 - p)`` in the layer's dtype, exact for p = 0.5). Each case also checks
that the regularisers act (without them the reference gives other outputs).
"""

from __future__ import annotations

import pytest
import torch
from test_triton_extras_step import _assert_same, _pair, _problem, _whole

import fastrnn
from fastrnn.backends import triton as triton_backend
from fastrnn.backends.triton import buffers
from fastrnn.backends.triton import step as step_launcher
from fastrnn.kernels import recurrent_step
from fastrnn.kernels.recurrent_step import count_launches

ZONEOUT = {"LSTM": (0.25, 0.375), "PEEPHOLE": (0.375, 0.25), "GRU": 0.375, "RNN_TANH": 0.25}
RECURRENT_DROPOUT = 0.5
MODULES = {  # (class name, keyword arguments) of tests/test_triton_extras_step.py's _pair
    "LSTM": ("LSTM", {}),
    "PEEPHOLE": ("LSTM", {"peephole": True}),
    "GRU": ("GRU", {}),
    "RNN_TANH": ("RNN", {"nonlinearity": "tanh"}),
}


@pytest.fixture(autouse=True)
def _step_tier(monkeypatch):
    monkeypatch.setattr(buffers, "FILL_NAN", True)  # a skipped store shows up as NaN
    monkeypatch.setenv("FASTRNN_TIER", "step")


def _modules(kind, layers, bidirectional, dropout, dtype, hidden=5, regularised=True):
    """A triton and a reference module with identical random parameters (peepholes non-zero)."""
    cls, kwargs = MODULES[kind]
    regularisers = dict(zoneout=ZONEOUT[kind], recurrent_dropout=RECURRENT_DROPOUT if dropout else 0.0)
    return _pair(cls, hidden, dtype, 0, num_layers=layers, bidirectional=bidirectional, **kwargs,
                 **(regularisers if regularised else {}))


def _run(module, problem, packed, training, with_resets, seed=7):
    """Outputs and gradients of ``module`` in training or eval mode; the masks come from
    ``torch.manual_seed(seed)``."""
    leaves, resets, lengths = problem
    module.train(training)
    torch.manual_seed(seed)
    return _whole(module, leaves, resets, lengths, packed, isinstance(module, fastrnn.LSTM), use_resets=with_resets)


CASES = [
    # kind, dtype, training, recurrent dropout, layers, bidirectional, packed, resets
    ("LSTM", "fp64", True, True, 1, True, True, False),
    ("LSTM", "fp64", True, True, 2, False, False, False),
    ("LSTM", "fp32", True, True, 2, True, True, False),
    ("LSTM", "fp64", False, False, 1, True, False, False),
    ("LSTM", "fp32", False, False, 1, False, True, False),
    ("LSTM", "fp64", True, True, 1, True, True, True),
    ("GRU", "fp64", True, True, 1, True, False, False),
    ("GRU", "fp64", True, True, 2, False, True, False),
    ("GRU", "fp32", True, True, 1, True, True, False),
    ("GRU", "fp64", False, False, 1, True, True, False),
    ("GRU", "fp64", True, True, 1, True, True, True),
    ("RNN_TANH", "fp64", True, True, 2, True, True, False),
    ("RNN_TANH", "fp64", False, False, 1, False, False, False),
    ("RNN_TANH", "fp32", True, False, 1, True, False, False),
    ("RNN_TANH", "fp64", True, False, 1, False, True, True),
    ("PEEPHOLE", "fp64", True, True, 1, True, True, False),
    ("PEEPHOLE", "fp64", False, False, 1, False, True, False),
    ("PEEPHOLE", "fp32", True, True, 1, False, False, True),
]
DTYPES = {"fp64": torch.float64, "fp32": torch.float32}


def _case_id(case):
    kind, dtype, training, dropout, layers, bi, packed, resets = case
    return (f"{kind}-{dtype}-" + ("train" if training else "eval") + ("-rdrop" if dropout else "")
            + f"-L{layers}" + ("-bi" if bi else "") + ("-packed" if packed else "-padded")
            + ("-resets" if resets else ""))


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_regularisers_match_the_reference(case):
    kind, dtype, training, dropout, layers, bi, packed, resets = case
    dtype = DTYPES[dtype]
    fast, ref = _modules(kind, layers, bi, dropout, dtype)
    problem = _problem(fast, packed, resets, dtype, 0)
    with count_launches() as n:
        got = _run(fast, problem, packed, training, resets)
    launches = layers * (2 if bi else 1) * max(problem[2])
    assert dict(n.tiers) == {("step", "forward"): launches, ("step", "backward"): launches}
    want = _run(ref, problem, packed, training, resets)
    _assert_same(got, want, dtype, "triton vs reference")
    if kind == "PEEPHOLE":
        assert got["grad weight_ci_l0"].abs().max() > 0  # the peepholes are in the gradient
    # The regularisers act: without them the reference gives other outputs.
    _, plain = _modules(kind, layers, bi, dropout, dtype, regularised=False)
    assert not torch.allclose(_run(plain, problem, packed, training, resets)["out"], got["out"])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH"])
def test_inference_matches_the_reference(kind, training):
    """A forward without gradients (nothing saved: the cell state goes through the ``(B, H)``
    buffer updated in place) with zoneout and the recurrent-dropout scale, packed, both ways."""
    fast, ref = _modules(kind, 1, True, True, torch.float64, hidden=16)  # the aligned specialisation
    leaves, _, lengths = _problem(fast, True, False, torch.float64, 1)
    runs = []
    for module in (fast, ref):
        module.train(training)
        torch.manual_seed(3)
        with torch.no_grad(), count_launches() as n:
            packed = torch.nn.utils.rnn.pack_padded_sequence(leaves[0], torch.tensor(lengths), enforce_sorted=False)
            hx = (leaves[1], leaves[2]) if kind == "LSTM" else leaves[1]
            out, hidden = module(packed, hx)
        runs.append([torch.nn.utils.rnn.pad_packed_sequence(out)[0]] + list(hidden if kind == "LSTM" else [hidden]))
        if module is fast:
            assert dict(n.tiers) == {("step", "forward"): 2 * max(lengths)}
    for got, want in zip(*runs):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _layer_inputs(cell, steps, batch, hidden, seed=5):
    gen = torch.Generator().manual_seed(seed)
    rows = steps * batch

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    zone = fastrnn.regularisers.Zoneout(
        mask_h=torch.rand(rows, hidden, generator=gen) < 0.3,
        mask_c=(torch.rand(rows, hidden, generator=gen) < 0.3) if cell.has_cell_state else None)
    c0 = rnd(batch, hidden) if cell.has_cell_state else None
    params = torch.rand(cell.param_rows, hidden, generator=gen, dtype=torch.float64) if cell.param_rows else None
    return (rnd(rows, cell.gates * hidden), rnd(cell.gates * hidden, hidden) / 4, rnd(cell.gates * hidden),
            rnd(batch, hidden), c0, params, zone)


@pytest.mark.parametrize("save", [True, False], ids=["save", "nosave"])
@pytest.mark.parametrize("kind", ["LSTM", "PEEPHOLE", "GRU", "RNN_TANH"])
def test_saved_tuple_has_the_shared_layout(kind, save):
    """The forward's ``saved`` tuple with zoneout has the shapes and dtypes of
    ``buffers.saved_layout`` (what every tier's backward reads): the cell's own c / h last,
    holding the cell's own values (what the reference backend saves there)."""
    from fastrnn.backends import generic
    from fastrnn.schedule import Schedule

    cell = {"LSTM": fastrnn.cells.LSTM, "PEEPHOLE": fastrnn.cells.LSTM_PEEPHOLE, "GRU": fastrnn.cells.GRU,
            "RNN_TANH": fastrnn.cells.get("RNN_TANH")}[kind]
    steps, batch, hidden = 4, 3, 8
    xg, w_hh, b_hh, h0, c0, params, zone = _layer_inputs(cell, steps, batch, hidden)
    schedule = Schedule.uniform(steps, batch)
    b_hh = b_hh if cell.recurrent_apart else None  # (the others' b_hh is folded into xg)
    with count_launches() as n:
        res = triton_backend.forward(cell, xg, w_hh, b_hh, None, h0, c0, schedule, False, save, params=params,
                                     zoneout=zone)
    assert dict(n.tiers) == {("step", "forward"): steps}
    layout = triton_backend.saved_layout(cell, steps * batch, hidden, torch.float64, save,
                                         zoneout=(zone.on_h, zone.on_c))
    assert [(tuple(t.shape), t.dtype) for t in res.saved] == [(tuple(s), d) for s, d in layout]
    # (gates, c, cell_c); (gates, e) (GRU reads no h); (cell_h,) (a plain RNN saves nothing else)
    assert len(layout) == ({"LSTM": 3, "PEEPHOLE": 3, "GRU": 2, "RNN_TANH": 1}[kind] if save else 0)
    want = generic.forward(cell, xg, w_hh, b_hh, None, h0, c0, schedule, False, True, params=params, zoneout=zone)
    torch.testing.assert_close(res.y, want.y, rtol=1e-10, atol=1e-10)
    if save:  # the reference saves cell_c (LSTMs) or cell_h (a plain RNN) last
        cell_c, cell_h = buffers.unpack_zoneout(cell, res.saved, zone)
        own = cell_c if cell.has_cell_state else cell_h
        assert own is not None or kind == "GRU"
        if own is not None:
            torch.testing.assert_close(own, want.saved[-1], rtol=1e-10, atol=1e-10)


def test_step_tier_reads_the_regularisers():
    """Every tier's calls with zoneout or a recurrent-dropout scale can fall back here: the
    step launcher lists them, and the backend refuses none of them."""
    assert {"zoneout", "recurrent_scale"} <= set(step_launcher.EXTRAS)
    assert triton_backend.refuses_loop_inputs(("params", "resets", "zoneout", "recurrent_scale")) is None


def test_specialisations_pass_the_regularisers():
    """The report compiles what the launchers launch: the zoneout masks (u8), the cell's own
    c (acc) and h (io) and the scale (io) in both kernels, the flags runtime ints, the
    probabilities fp32 runtime scalars; no new compile-time argument."""
    specs = recurrent_step.specialisations()
    zone_pointers = {("scale_ptr", "io"), ("mask_h_ptr", "u8"), ("mask_c_ptr", "u8"), ("cell_c_ptr", "acc"),
                     ("cell_h_ptr", "io")}
    for spec in specs:
        assert zone_pointers <= set(spec.pointers)
        assert {"has_scale", "zoneout_h", "zoneout_c", "p_h", "p_c"} <= set(spec.ints)
        assert set(spec.floats) == {"p_h", "p_c"}
        assert not {"has_scale", "zoneout_h", "zoneout_c", "save_zoned", "p_h", "p_c"} & set(spec.constexprs)
    assert all("save_zoned" in s.ints for s in specs if s.kernel_name == "forward")


def test_zoneout_with_projection_is_refused():
    """The step launcher refuses zoneout with ``proj_size`` (as the reference backend)."""
    from fastrnn.schedule import Schedule

    cell = fastrnn.cells.LSTM
    xg, w_hh, b_hh, h0, c0, _, zone = _layer_inputs(cell, 2, 2, 4)
    with pytest.raises(ValueError, match="proj_size"):
        step_launcher.forward(cell, xg, w_hh, None, torch.zeros(3, 4, dtype=torch.float64), h0[:, :3], c0,
                              Schedule.uniform(2, 2), False, True, zoneout=zone)
