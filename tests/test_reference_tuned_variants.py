"""The reference backend's hand-tuned loops against its generic loop.

torch's four cells (with ``resets`` too), the LayerNorm-LSTM / -GRU and the peephole LSTM
have loops of their own on the reference backend; the generic loop
(:mod:`fastrnn.backends.generic`, driven by the cells' torch functions) is the oracle.
Each case runs both on the same inputs and compares every output of the forward (with and
without ``save``) and every gradient of the backward that does not depend on what was
saved (``dxg``, ``dhg``, ``dh0``, ``dc0``, ``dw_hr``, ``dparams``), packed and padded, both
directions, with and without resets; the generic loop is made to raise while the tuned
one runs, so a case passes only when the tuned loop is what ran. float64 throughout. torch's
cells with resets and the peephole LSTM run the C++ loops of
:mod:`fastrnn.backends.cpu_loops` here, and their Python loops under ``cpu_loops.disabled()``.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from fastrnn.backends import cpu_loops, generic, reference, reference_norm
from fastrnn.cells import GRU, LSTM, LSTM_PEEPHOLE, RNN_RELU, RNN_TANH, Cell
from fastrnn.cells.variants import layer_norm_gru, layer_norm_lstm
from fastrnn.schedule import Schedule

DT = torch.float64
TOL = dict(rtol=1e-9, atol=1e-11)

CELLS = {
    "LSTM": (LSTM, False), "LSTM-proj": (LSTM, True), "GRU": (GRU, False), "RNN_TANH": (RNN_TANH, False),
    "RNN_RELU": (RNN_RELU, False), "LSTM_PEEPHOLE": (LSTM_PEEPHOLE, False),
    "LayerNormLSTM": (layer_norm_lstm(1e-5), False), "LayerNormGRU": (layer_norm_gru(1e-5), False),
    "LayerNormLSTM-eps": (layer_norm_lstm(0.25), False), "LayerNormGRU-eps": (layer_norm_gru(0.25), False),
}


def _inputs(cell, proj, packed, resets, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden, gates = 5, cell.gates
    size = 3 if proj else hidden
    schedule = Schedule.from_batch_sizes([4, 4, 3, 2, 2, 1]) if packed else Schedule.uniform(6, 4)
    rows, batch = schedule.rows, schedule.batch

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=DT) * scale

    inputs = dict(
        xg=randn(rows, gates * hidden), w_hh=randn(gates * hidden, size, scale=0.5),
        b_hh=randn(gates * hidden) if cell.recurrent_apart else None,
        w_hr=randn(size, hidden, scale=0.5) if proj else None,
        h0=randn(batch, size), c0=randn(batch, hidden) if cell.has_cell_state else None,
        params=randn(cell.param_rows, hidden).add_(1) if cell.param_rows else None,
    )
    flags = None
    if resets:
        flags = torch.rand(rows, generator=gen) < 0.3
        flags[0] = True  # a step where only some rows reset ...
        flags[schedule.offsets[2] : schedule.offsets[2] + schedule.batch_sizes[2]] = True  # ... and one where all do
    grads = dict(dy=randn(rows, size), dh_n=randn(batch, size),
                 dc_n=randn(batch, hidden) if cell.has_cell_state else None)
    return schedule, inputs, flags, grads


def _forward(module, cell, schedule, inputs, reverse, save, resets):
    i = inputs
    extras = {}
    if i["params"] is not None:
        extras["params"] = i["params"]
    if resets is not None:
        extras["resets"] = resets
    return module.forward(cell, i["xg"].clone(), i["w_hh"], i["b_hh"], i["w_hr"], i["h0"], i["c0"], schedule, reverse,
                          save, **extras)


def _backward(module, cell, schedule, inputs, reverse, resets, res, grads):
    i = inputs
    extras = {}
    if i["params"] is not None:
        extras["params"] = i["params"]
    if resets is not None:
        extras["resets"] = resets
    return module.backward(cell, res.saved, i["w_hh"], i["b_hh"], i["w_hr"], i["h0"], i["c0"], res.y, grads["dy"],
                           grads["dh_n"], grads["dc_n"], schedule, reverse, **extras)


@pytest.fixture
def generic_refuses(monkeypatch):
    """Make the generic loop raise; returns a context that restores it for the oracle."""

    def refuse(*args, **kwargs):
        raise AssertionError("the generic loop ran where a tuned loop should have")

    real = generic.forward, generic.backward

    class Guard:
        def __enter__(self):
            monkeypatch.setattr(generic, "forward", real[0])
            monkeypatch.setattr(generic, "backward", real[1])

        def __exit__(self, *exc):
            monkeypatch.setattr(generic, "forward", refuse)
            monkeypatch.setattr(generic, "backward", refuse)

    monkeypatch.setattr(generic, "forward", refuse)
    monkeypatch.setattr(generic, "backward", refuse)
    return Guard()


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("packed, reverse, resets", list(itertools.product([False, True], repeat=3)))
def test_tuned_loop_matches_generic(name, packed, reverse, resets, generic_refuses):
    _check_tuned_loop(name, packed, reverse, resets, generic_refuses)


@pytest.mark.parametrize("name", ["LSTM", "LSTM_PEEPHOLE", "GRU", "RNN_TANH", "RNN_RELU", "LayerNormLSTM", "LayerNormGRU"])
@pytest.mark.parametrize("packed, reverse, resets", list(itertools.product([False, True], repeat=3)))
def test_python_loop_matches_generic(name, packed, reverse, resets, generic_refuses):
    """The Python loops where the C++ loops of :mod:`fastrnn.backends.cpu_loops` stand in for
    them (the test above runs those)."""
    with cpu_loops.disabled():
        _check_tuned_loop(name, packed, reverse, resets, generic_refuses)


def _check_tuned_loop(name, packed, reverse, resets, generic_refuses):
    cell, proj = CELLS[name]
    schedule, inputs, flags, grads = _inputs(cell, proj, packed, resets)
    entering = None if flags is None else schedule.entering_resets(flags, reverse)
    tuned = _forward(reference, cell, schedule, inputs, reverse, True, entering)
    lean = _forward(reference, cell, schedule, inputs, reverse, False, entering)
    got = _backward(reference, cell, schedule, inputs, reverse, entering, tuned, grads)
    with generic_refuses:
        want = generic.forward(cell, inputs["xg"].clone(), inputs["w_hh"], inputs["b_hh"], inputs["w_hr"], inputs["h0"],
                               inputs["c0"], schedule, reverse, True, inputs["params"], entering)
        want_grads = generic.backward(cell, want.saved, inputs["w_hh"], inputs["b_hh"], inputs["w_hr"], inputs["h0"],
                                      inputs["c0"], want.y, grads["dy"], grads["dh_n"], grads["dc_n"], schedule,
                                      reverse, inputs["params"], entering)

    layout = reference.saved_layout(cell, schedule.rows, 5, DT, True, resets=resets, proj=proj)
    assert [(tuple(s.shape), s.dtype) for s in tuned.saved] == [(tuple(shape), dtype) for shape, dtype in layout]
    assert reference.saved_layout(cell, schedule.rows, 5, DT, False, resets=resets, proj=proj) == []
    assert lean.saved == ()
    for label, res in (("save", tuned), ("no save", lean)):
        for field in ("y", "h_n", "c_n"):
            a, b = getattr(res, field), getattr(want, field)
            assert (a is None) == (b is None), f"{label} {field}"
            if b is not None:
                torch.testing.assert_close(a, b, **TOL, msg=lambda s, f=field, lb=label: f"{lb} {f}: {s}")
    for field in ("dxg", "dhg", "dh0", "dc0", "dw_hr", "dparams"):
        a, b = getattr(got, field), getattr(want_grads, field)
        assert (a is None) == (b is None), field
        if b is not None:
            torch.testing.assert_close(a, b, **TOL, msg=lambda s, f=field: f"{f}: {s}")


def test_tuned_loops_are_found_for_the_variant_cells_only():
    assert reference_norm.loops(layer_norm_lstm(1e-5)) is not None
    assert reference_norm.loops(layer_norm_gru(1e-3)) is not None
    assert reference_norm.loops(LSTM_PEEPHOLE) is not None
    assert reference_norm.loops(LSTM) is None  # (torch's cells have theirs in reference.py)


def test_a_user_cell_with_a_family_name_runs_the_generic_loop(monkeypatch):
    """A cell that only borrows the family's name is not sent to the LayerNorm loop."""
    from fastrnn.cells.builtin import lstm_backward, lstm_forward

    user = Cell("LayerNormLSTM(eps=0.123456)", 4, lstm_forward, lstm_backward, has_cell_state=True)
    assert reference_norm.loops(user) is None
    schedule, inputs, _, _ = _inputs(LSTM, False, False, False)
    calls = []
    real = generic.forward
    monkeypatch.setattr(generic, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = _forward(reference, user, schedule, inputs, False, False, None)
    want = _forward(reference, LSTM, schedule, inputs, False, False, None)
    assert calls == [1]
    torch.testing.assert_close(got.y, want.y, **TOL)


def test_variant_and_reset_layouts_are_the_generic_loops():
    """The variant cells' tuned loops, and every call with resets, keep the generic loop's
    tensors: a call's layout (what fake tensors read) does not depend on which loop runs it."""
    for cell in (LSTM, GRU, RNN_TANH, LSTM_PEEPHOLE, layer_norm_lstm(1e-5), layer_norm_gru(1e-5)):
        for proj in ((False, True) if cell is LSTM else (False,)):
            want = generic.saved_layout(cell, 12, 5, DT, True, proj)
            assert reference.saved_layout(cell, 12, 5, DT, True, resets=True, proj=proj) == want
            if cell in (LSTM_PEEPHOLE,) or cell.name.startswith("LayerNorm"):
                assert reference.saved_layout(cell, 12, 5, DT, True) == want
