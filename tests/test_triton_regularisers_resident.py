"""Zoneout and recurrent dropout on the resident tier (kernels/resident.py), in Triton's
interpreter.

``FASTRNN_TIER=resident`` forces the tier; every case counts the launches (one resident
forward and one resident backward per layer-direction, nothing else), so a silent fall back
to another tier fails it. Oracle: the reference backend on a module with the same parameters
and the same masks (``torch.manual_seed`` before each run: the masks are drawn with torch in
``fastrnn.functional``, the same on every backend); every output (``out``, ``h_n``, ``c_n``)
and the gradient of every input and parameter, fp64 to 1e-10, fp32 to 1e-5. Training (zoneout
masks, the recurrent-dropout scale) and eval (zoneout as its expectation with ``p_h`` /
``p_c``). The probabilities are exact in fp32 (the kernels read the eval probabilities as fp32
scalars; the recurrent-dropout scale ``1 / (1 - p)`` is exact for p = 0.5). Each case also
checks that the regularisers act (without them the outputs differ).

The saved tuple has the layout every tier shares: a forward on this tier and the backward
of the reference backend (and the other way round) give the reference's gradients.

A call with regularisers runs the kernels' ``REGULARISED`` specialisation; the entries whose
regularised kernels do not compile clean (``fits.RESIDENT_UNREGULARISED``) send such calls to
the step tier. The interpreter has no registers to spill, so the parity tests run every entry
on this tier (the record emptied); the last tests keep the record and check the step tier
runs those calls, plain calls of the same entries staying here.
"""

from __future__ import annotations

import pytest
import torch
from test_triton_extras_resident import _on_resident, _problem, _resets, _run

import fastrnn
from fastrnn.backends import generic
from fastrnn.backends import triton as triton_backend
from fastrnn.backends.triton import buffers, selfcheck
from fastrnn.backends.triton import resident as resident_launcher
from fastrnn.kernels import fits, resident
from fastrnn.kernels.launches import count_launches
from fastrnn.regularisers import Zoneout
from fastrnn.schedule import Schedule

ZONEOUT = {"LSTM": (0.25, 0.375), "PEEPHOLE": (0.375, 0.25), "GRU": 0.375, "RNN_TANH": 0.25}
RECURRENT_DROPOUT = 0.5
DTYPES = {"fp64": torch.float64, "fp32": torch.float32}
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
REGULARISERS = ("zoneout", "recurrent_scale")
#: The record as the table has it (the fixture empties it for the parity tests).
EXCLUDED = fits.RESIDENT_UNREGULARISED


@pytest.fixture(autouse=True)
def _resident(monkeypatch):
    monkeypatch.setattr(buffers, "FILL_NAN", True)  # a skipped store shows up as NaN
    monkeypatch.setattr(selfcheck, "checked", {})
    monkeypatch.setenv("FASTRNN_TIER", "resident")
    monkeypatch.delenv("FASTRNN_SELF_CHECK", raising=False)
    monkeypatch.setattr(fits, "RESIDENT_UNREGULARISED", frozenset())
    # fp64 runs only in the interpreter: the peephole cell's fp64 entry (left out of the
    # table: its backward spills on sm_90) is LSTM's here, as in test_triton_extras_resident
    entry = ("LSTM_PEEPHOLE", "float64", 32)
    if entry not in fits.RESIDENT:
        monkeypatch.setattr(fits, "RESIDENT", {**fits.RESIDENT, entry: fits.RESIDENT[("LSTM", "float64", 32)]})


def _modules(kind, layers, bidir, dtype, packed, dropout, regularised=True):
    """``(triton module, reference module, inputs)`` with equal random parameters (non-zero
    peepholes) and the regularisers of ``kind`` (none when not ``regularised``)."""
    base = "LSTM" if kind == "PEEPHOLE" else kind
    (tri, _), inputs = _problem(base, layers, bidir, dtype, packed, peephole=kind == "PEEPHOLE")
    cls = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN_TANH": fastrnn.RNN}[base]
    options = dict(peephole=True) if kind == "PEEPHOLE" else {}
    if regularised:
        options.update(zoneout=ZONEOUT[kind], recurrent_dropout=RECURRENT_DROPOUT if dropout else 0.0)
    mods = [cls(tri.input_size, tri.hidden_size, num_layers=layers, bidirectional=bidir, backend=b, **options).to(dtype)
            for b in ("triton", "reference")]
    for m in mods:
        m.load_state_dict(tri.state_dict())
    return mods, inputs


def _with_masks(module, inputs, resets, training, resident_only, seed=7):
    """Outputs and gradients of ``module`` in training or eval mode, the masks drawn from
    ``torch.manual_seed(seed)``; on the triton backend checked to be resident launches only."""
    module.train(training)
    torch.manual_seed(seed)
    return _on_resident(module, inputs, resets) if resident_only else _run(module, inputs, resets)


def _assert_close(got, expected, dtype, what):
    assert got.keys() == expected.keys(), (what, sorted(got), sorted(expected))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], **TOL[dtype], msg=lambda m: f"{what}, {name}: {m}")


CASES = [
    # kind, dtype, training, recurrent dropout, layers, bidirectional, packed, resets
    ("LSTM", "fp64", True, True, 1, True, True, False),
    ("LSTM", "fp64", True, True, 2, False, False, False),
    ("LSTM", "fp32", True, True, 1, True, True, False),
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


def _case_id(case):
    kind, dtype, training, dropout, layers, bi, packed, resets = case
    return (f"{kind}-{dtype}-" + ("train" if training else "eval") + ("-rdrop" if dropout else "")
            + f"-L{layers}" + ("-bi" if bi else "") + ("-packed" if packed else "-padded")
            + ("-resets" if resets else ""))


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_regularisers_match_the_reference(case):
    kind, dtype, training, dropout, layers, bi, packed, with_resets = case
    dtype = DTYPES[dtype]
    (tri, ref), inputs = _modules(kind, layers, bi, dtype, packed, dropout)
    resets = _resets(inputs["lengths"], seed=1) if with_resets else None
    got = _with_masks(tri, inputs, resets, training, True)
    _assert_close(got, _with_masks(ref, inputs, resets, training, False), dtype, "triton vs reference")
    if kind == "PEEPHOLE":
        assert got["grad weight_ci_l0"].abs().max() > 0  # the peepholes are in the gradient
    # The regularisers act: without them the outputs differ.
    (plain, _), _ = _modules(kind, layers, bi, dtype, packed, dropout, regularised=False)
    assert not torch.allclose(_with_masks(plain, inputs, resets, training, True)["out"], got["out"])


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH"])
def test_recurrent_dropout_alone(kind):
    """Recurrent dropout without zoneout (GRU: its direct path ``z * h_prev`` unscaled): in
    training against the reference with the same scale, in eval the module without it."""
    (tri, ref), inputs = _modules(kind, 1, True, torch.float64, True, True, regularised=False)
    (plain, _), _ = _modules(kind, 1, True, torch.float64, True, True, regularised=False)
    for m in (tri, ref):
        m.recurrent_dropout = RECURRENT_DROPOUT
    got = _with_masks(tri, inputs, None, True, True)
    _assert_close(got, _with_masks(ref, inputs, None, True, False), torch.float64, "training: triton vs reference")
    assert not torch.allclose(_with_masks(plain, inputs, None, True, True)["out"], got["out"])
    _assert_close(_with_masks(tri, inputs, None, False, True), _with_masks(plain, inputs, None, False, True),
                  torch.float64, "eval: the identity")


CELLS = {"LSTM": fastrnn.cells.LSTM, "PEEPHOLE": fastrnn.cells.LSTM_PEEPHOLE, "GRU": fastrnn.cells.GRU,
         "RNN_TANH": fastrnn.cells.get("RNN_TANH")}


def _layer(cell, steps, batch, hidden, training, seed=5):
    """One layer-direction's loop inputs with zoneout (masks or probabilities) and a scale."""
    gen = torch.Generator().manual_seed(seed)
    rows = steps * batch

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    if training:
        zone = Zoneout(mask_h=torch.rand(rows, hidden, generator=gen) < 0.3,
                       mask_c=(torch.rand(rows, hidden, generator=gen) < 0.3) if cell.has_cell_state else None)
    else:
        zone = Zoneout(p_h=0.25, p_c=0.375 if cell.has_cell_state else 0.0)
    scale = (torch.rand(batch, hidden, generator=gen) >= 0.5).to(torch.float64) * 2
    c0 = rnd(batch, hidden) if cell.has_cell_state else None
    params = torch.rand(cell.param_rows, hidden, generator=gen, dtype=torch.float64) if cell.param_rows else None
    b_hh = rnd(cell.gates * hidden) if cell.recurrent_apart else None  # (the others' is folded into xg)
    grads = (rnd(rows, hidden), rnd(batch, hidden), rnd(batch, hidden) if cell.has_cell_state else None)
    return (rnd(rows, cell.gates * hidden), rnd(cell.gates * hidden, hidden) / 4, b_hh, rnd(batch, hidden), c0,
            params, zone, scale, grads)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_saved_tuple_is_shared_with_the_reference(kind, training):
    """The saved tuple has :func:`buffers.saved_layout`'s shapes and dtypes, and each backend's
    backward reads the other's forward: resident forward + reference backward, and reference
    forward + resident backward, give the reference's results (packed, reverse direction)."""
    cell = CELLS[kind]
    steps, batch, hidden = 5, 3, 8
    xg, w_hh, b_hh, h0, c0, params, zone, scale, (dy, dh_n, dc_n) = _layer(cell, steps, batch, hidden, training)
    schedule = Schedule.from_batch_sizes([3, 3, 2, 2, 1])  # lengths 5, 4, 2
    rows = schedule.rows
    xg, dy = xg[:rows], dy[:rows]
    if zone.mask_h is not None:
        zone = Zoneout(mask_h=zone.mask_h[:rows], mask_c=None if zone.mask_c is None else zone.mask_c[:rows])
    loop = dict(params=params, zoneout=zone, recurrent_scale=scale)
    args = (cell, xg, w_hh, b_hh, None, h0, c0, schedule, True, True)
    want_f = generic.forward(*args, **loop)
    with count_launches() as n:
        got_f = triton_backend.forward(*args, **loop)
    assert dict(n.tiers) == {("resident", "forward"): 1}
    layout = triton_backend.saved_layout(cell, rows, hidden, torch.float64, True, zoneout=(zone.on_h, zone.on_c))
    assert [(tuple(t.shape), t.dtype) for t in got_f.saved] == [(tuple(s), d) for s, d in layout]
    assert [(tuple(t.shape), t.dtype) for t in want_f.saved] == [(tuple(s), d) for s, d in layout]
    for name in ("y", "h_n", "c_n"):
        if getattr(want_f, name) is not None:
            torch.testing.assert_close(getattr(got_f, name), getattr(want_f, name), rtol=1e-10, atol=1e-10)
    for a, b in zip(got_f.saved, want_f.saved):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)

    def back(fn, fwd):
        return fn(cell, fwd.saved, w_hh, b_hh, None, h0, c0, fwd.y, dy, dh_n, dc_n, schedule, True, **loop)

    want = back(generic.backward, want_f)
    for fwd, label in ((want_f, "reference forward"), (got_f, "resident forward")):
        with count_launches() as n:
            got = back(triton_backend.backward, fwd)
        assert dict(n.tiers) == {("resident", "backward"): 1}, label
        for name in ("dxg", "dhg", "dh0", "dc0"):
            if getattr(want, name) is not None:
                torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-10, atol=1e-10,
                                           msg=lambda m: f"{label}, {name}: {m}")
        cross = back(generic.backward, got_f)  # the reference backward on the resident forward
        torch.testing.assert_close(cross.dxg, want.dxg, rtol=1e-10, atol=1e-10)


def test_the_launcher_and_specialisations_read_the_regularisers(monkeypatch):
    """The launcher lists them; the report compiles what the launcher launches: the masks
    (u8), the cell's own c (acc) and h (io), the scale (io), the flags runtime ints and the
    probabilities fp32 runtime scalars in both kernels; one compile-time flag, ``REGULARISED``:
    each entry's plain specialisations, and its ``-reg`` ones unless the record excludes it."""
    monkeypatch.setattr(fits, "RESIDENT_UNREGULARISED", EXCLUDED)
    assert set(REGULARISERS) <= set(resident_launcher.EXTRAS)
    zone_pointers = {("scale_ptr", "io"), ("mask_h_ptr", "u8"), ("mask_c_ptr", "u8"), ("cell_c_ptr", "acc"),
                     ("cell_h_ptr", "io")}
    flags = {"has_scale", "zoneout_h", "zoneout_c", "p_h", "p_c"}
    specs = resident.specialisations()
    for spec in specs:
        assert zone_pointers <= set(spec.pointers)
        assert flags <= set(spec.ints)
        assert set(spec.floats) == {"p_h", "p_c"}
        assert not (flags | {"save_zoned"}) & set(spec.constexprs)
        assert ("save_zoned" in spec.ints) == (spec.kernel_name == "resident-forward")
        assert spec.constexprs["REGULARISED"] == spec.label.endswith("-reg")
    plain = {(s.kernel_name, s.kind, s.label, s.config) for s in specs if not s.constexprs["REGULARISED"]}
    reg = {(s.kernel_name, s.kind, s.label[: -len("-reg")], s.config) for s in specs if s.constexprs["REGULARISED"]}
    assert reg < plain
    # (the cells with entries of their own: a user cell defined by another test borrows them)
    own = {k for (k, _, _) in fits.RESIDENT}
    entries = {(s.kind, fits.dtype_name(s.dtype), s.config.block_h) for s in specs
               if s.constexprs["REGULARISED"] and s.kind in own}
    assert entries and not entries & EXCLUDED
    tabled = {(k, d, bh) for (k, d, bh) in fits.RESIDENT if k in {s.kind for s in specs}}
    assert entries == tabled - EXCLUDED


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_forward_without_saving(kind, training):
    """A forward that saves nothing (inference) with zoneout and the scale: the outputs of the
    reference, an empty saved tuple."""
    cell = CELLS[kind]
    xg, w_hh, b_hh, h0, c0, params, zone, scale, _ = _layer(cell, 4, 3, 8, training, seed=6)
    schedule = Schedule.uniform(4, 3)
    args = (cell, xg, w_hh, b_hh, None, h0, c0, schedule, False, False)
    loop = dict(params=params, zoneout=zone, recurrent_scale=scale)
    with count_launches() as n:
        got = triton_backend.forward(*args, **loop)
    assert dict(n.tiers) == {("resident", "forward"): 1}
    want = generic.forward(*args, **loop)
    assert tuple(got.saved) == ()
    for name in ("y", "h_n", "c_n"):
        if getattr(want, name) is not None:
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-10, atol=1e-10)


def _launched_tiers(run):
    with count_launches() as n:
        result = run()
    return {tier for tier, _ in n.tiers}, result


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_a_regularised_call_of_an_excluded_entry_runs_on_the_step_tier(monkeypatch, training):
    """GRU fp64 with ``BLOCK_H`` 32 is in the record: with zoneout and recurrent dropout it
    runs on the step tier (also with the resident tier forced) and gives the reference's
    outputs and gradients; the same module without them runs on the resident tier."""
    monkeypatch.setattr(fits, "RESIDENT_UNREGULARISED", EXCLUDED)
    assert ("GRU", "float64", 32) in EXCLUDED
    (tri, ref), inputs = _modules("GRU", 1, True, torch.float64, True, True)
    assert fits.resident_block_h(tri.hidden_size) == 32
    tiers, got = _launched_tiers(lambda: _with_masks(tri, inputs, None, training, False))
    assert tiers == {"step"}
    _assert_close(got, _with_masks(ref, inputs, None, training, False), torch.float64, "step tier vs reference")
    (plain, plain_ref), _ = _modules("GRU", 1, True, torch.float64, True, True, regularised=False)
    tiers, got = _launched_tiers(lambda: _with_masks(plain, inputs, None, training, False))
    assert tiers == {"resident"}
    _assert_close(got, _with_masks(plain_ref, inputs, None, training, False), torch.float64, "plain call")


def test_an_excluded_entry_refuses_a_regularised_launch(monkeypatch):
    """The resident launcher never runs an excluded entry with regularisers: the tier choice
    refuses the call (``refuses_extras``) and a launch that comes anyway raises."""
    monkeypatch.setattr(fits, "RESIDENT_UNREGULARISED", EXCLUDED)
    cell = CELLS["GRU"]
    assert resident_launcher.refuses_extras(cell, 16, torch.float64, ("zoneout",)) is not None
    assert resident_launcher.refuses_extras(cell, 16, torch.float64, ("recurrent_scale",)) is not None
    assert resident_launcher.refuses_extras(cell, 16, torch.float64, ("resets",)) is None
    assert resident_launcher.refuses_extras(cell, 16, torch.float32, ("zoneout",)) is None
    xg, w_hh, b_hh, h0, c0, params, zone, scale, _ = _layer(cell, 4, 3, 16, True, seed=6)
    with pytest.raises(ValueError, match="RESIDENT_UNREGULARISED"):
        resident_launcher.forward(cell, xg, w_hh, b_hh, None, h0, c0, Schedule.uniform(4, 3), False, False,
                                  zoneout=zone, recurrent_scale=scale)
