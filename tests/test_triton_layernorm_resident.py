"""LayerNorm-LSTM / -GRU on the resident tier (one launch per layer-direction and pass:
kernels/resident_norm.py, fastrnn/backends/triton/norm_resident.py), in Triton's interpreter.

``FASTRNN_TIER=resident`` is forced (unless a test says otherwise). Oracle: the reference
backend on a module with the same parameters and the same call (regulariser masks: the same
``torch.manual_seed`` before each run). Every output (``out``, ``h_n``, ``c_n``) and every
gradient (input, ``h0``, ``c0``, every parameter, the LayerNorm gains and biases included).
fp64 to 1e-10, fp32 to 1e-5 (the bounds of tests/test_triton_layernorm.py: the row
statistics are reduced in another order than torch's layer_norm). Buffers are filled with
NaN first (``buffers.FILL_NAN``) so a store a kernel skips shows.
"""

from __future__ import annotations

import pytest
import torch
from helpers import LaunchSpy
from test_triton_extras_step import _assert_same, _pair, _problem, _whole
from test_variants import randomise

import fastrnn
from fastrnn.backends.triton import buffers, norm, norm_resident
from fastrnn.kernels import fits, resident_norm
from fastrnn.kernels.launches import count_launches
from fastrnn.regularisers import Zoneout
from fastrnn.schedule import Schedule

KINDS = ("LayerNormLSTM", "LayerNormGRU")
F64, F32 = torch.float64, torch.float32


@pytest.fixture(autouse=True)
def _resident(monkeypatch):
    monkeypatch.setattr(buffers, "FILL_NAN", True)
    monkeypatch.setenv("FASTRNN_TIER", "resident")


def _run(module, leaves, flags, lengths, packed, has_c, train):
    if train is not None:
        module.train(train)
    torch.manual_seed(11)
    return _whole(module, leaves, flags, lengths, packed, has_c)


def _check(kind, dtype, hidden=5, packed=False, resets=False, seed=0, train=None, tier="resident", **kwargs):
    """Triton vs reference on one call; asserts the launches: one resident launch per
    layer-direction each way (``tier="step"``: one row-kernel launch per step)."""
    fast, ref = _pair(kind, hidden, dtype, seed, **kwargs)
    leaves, flags, lengths = _problem(fast, packed, resets, dtype, seed)
    has_c = kind == "LayerNormLSTM"
    with count_launches() as n:
        got = _run(fast, leaves, flags, lengths, packed, has_c, train)
    launches = fast.num_layers * (2 if fast.bidirectional else 1) * (max(lengths) if tier == "step" else 1)
    assert dict(n.tiers) == {(tier, "forward"): launches, (tier, "backward"): launches}
    want = _run(ref, leaves, flags, lengths, packed, has_c, train)
    _assert_same(got, want, dtype, f"{kind} triton ({tier}) vs reference")
    return got, fast, leaves, flags, lengths


CASES = [
    # layers, bidirectional, packed, resets
    (1, False, False, False),
    (2, True, False, False),
    (1, True, True, False),
    (2, False, True, True),
    (1, True, True, True),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layers, bidirectional, packed, resets", CASES)
def test_against_reference_fp64(kind, layers, bidirectional, packed, resets):
    got, fast, leaves, flags, lengths = _check(kind, F64, packed=packed, resets=resets, num_layers=layers,
                                               bidirectional=bidirectional)
    if resets:  # the flags change the result: the comparison is not of a no-op
        plain = _whole(fast, leaves, flags, lengths, packed, kind == "LayerNormLSTM", use_resets=False)
        assert not torch.allclose(plain["out"], got["out"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hidden", [1, 5, 20])
def test_hidden_sizes(kind, hidden):
    """H = 1 (LN(c) over one unit: zero variance), H not a power of two, H past 16 (all in
    the 32-wide padded tile)."""
    _check(kind, F64, hidden=hidden, packed=True, resets=True, bidirectional=True)


@pytest.mark.parametrize("kind", KINDS)
def test_float32(kind):
    _check(kind, F32, hidden=6, packed=True, resets=True, num_layers=2, bidirectional=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_regularisers(kind, train, dtype):
    """Zoneout (training masks / eval expectation) and recurrent dropout (training), with
    resets and packed rows; the regularisers act (without them the output differs). An
    entry without regularised kernels (fits.RESIDENT_NORM_UNREGULARISED) runs the call on
    the step path."""
    zone = (0.25, 0.375) if kind == "LayerNormLSTM" else 0.375
    tier = "resident" if fits.resident_norm_regularised(kind, dtype, 5, on_gpu=False) else "step"
    got, *_ = _check(kind, dtype, packed=True, resets=True, bidirectional=True, train=train, zoneout=zone,
                     recurrent_dropout=0.5, tier=tier)
    plain, *_ = _check(kind, dtype, packed=True, resets=True, bidirectional=True, train=train)
    assert not torch.allclose(plain["out"], got["out"])


@pytest.mark.parametrize("kind", KINDS)
def test_unregularised_entry_runs_regularisers_on_the_step_path(kind, monkeypatch):
    """An entry without regularised kernels sends a call with zoneout to the step path
    (the same results), and the same call without regularisers to the resident tier."""
    key = (kind, "float32", 32)
    monkeypatch.setattr(fits, "RESIDENT_NORM_UNREGULARISED", frozenset({key}))
    zone = (0.25, 0.375) if kind == "LayerNormLSTM" else 0.375
    _check(kind, F32, packed=True, resets=True, train=True, zoneout=zone, tier="step")
    _check(kind, F32, packed=True, resets=True, train=True)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind):
    """fp64 gradcheck through the layer: input, h0, c0, W_hh and the LayerNorm parameters
    (gradcheck's fast mode: random projections of the Jacobian, each input's numerical one
    against the analytical; the full Jacobian through this tier's interpreted kernel took two
    minutes; this file's parity tests compare every gradient with the reference backend's)."""
    lstm = kind == "LayerNormLSTM"
    m = getattr(fastrnn, kind)(2, 3, dtype=F64, backend="triton")
    randomise(m, torch.Generator().manual_seed(5))
    names = ["weight_hh_l0", "bias_hh_l0", "ln_hh_weight_l0", "ln_hh_bias_l0", "ln_ih_weight_l0"]
    names += ["ln_c_weight_l0", "ln_c_bias_l0"] if lstm else []
    params = dict(m.named_parameters())
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 2, 2, generator=gen, dtype=F64, requires_grad=True)
    h0 = torch.randn(1, 2, 3, generator=gen, dtype=F64, requires_grad=True)
    c0 = torch.randn(1, 2, 3, generator=gen, dtype=F64, requires_grad=True)
    chosen = [params[n].detach().clone().requires_grad_() for n in names]

    def run(x, h0, c0, *ps):
        values = dict(params, **dict(zip(names, ps)))
        out, hidden = torch.func.functional_call(m, values, (x, (h0, c0) if lstm else h0))
        return (out, *hidden) if lstm else (out, hidden)

    with count_launches() as n:
        run(x, h0, c0, *chosen)
    assert dict(n.tiers) == {("resident", "forward"): 1}
    assert torch.autograd.gradcheck(run, (x, h0, c0, *chosen) if lstm else (x, h0, h0.detach(), *chosen),
                                    eps=1e-6, atol=1e-7, fast_mode=True)


def _layer_call(kind, zoned):
    """The backend's arguments for one LayerNorm layer-direction (packed, with resets; with
    ``zoned``: zoneout masks of h and c and a recurrent-dropout scale)."""
    cell = fastrnn.cells.get(f"{kind}(eps=1e-05)")
    gen = torch.Generator().manual_seed(3)
    sched = Schedule.from_batch_sizes([3, 3, 2, 1])
    hidden, rows, width = 5, 9, cell.gates * 5

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64) * 0.5

    args = dict(xg=rand(rows, width), w_hh=rand(width, hidden), b_hh=rand(width), h0=rand(3, hidden),
                c0=rand(3, hidden) if cell.has_cell_state else None)
    resets = torch.zeros(rows, dtype=torch.bool)
    resets[[1, 4, 8]] = True
    extras = dict(params=rand(cell.param_rows, hidden) + 1, resets=resets)
    if zoned:
        extras["zoneout"] = Zoneout(mask_h=torch.rand(rows, hidden, generator=gen) < 0.3,
                                    mask_c=torch.rand(rows, hidden, generator=gen) < 0.4)
        extras["recurrent_scale"] = (torch.rand(3, hidden, generator=gen) < 0.7).to(F64) * 2
    return cell, sched, args, extras


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("zoned", [False, True])
def test_paths_read_each_others_saved(kind, reverse, zoned, monkeypatch):
    """A resident forward's saved tuple drives the step path's backward and the other way
    round: every result and the saved tensors themselves agree (with zoneout of c the
    saved tuple holds the cell's own c too)."""
    # (every entry runs regularisers here: which kernels spill on a GPU is not this test's matter)
    monkeypatch.setattr(fits, "RESIDENT_NORM_UNREGULARISED", frozenset())
    cell, sched, a, extras = _layer_call(kind, zoned)
    loop = (cell, a["xg"], a["w_hh"], a["b_hh"], None, a["h0"], a["c0"], sched, reverse, True)
    with count_launches() as n:
        res = norm.forward(*loop, **extras)
    assert dict(n.tiers) == {("resident", "forward"): 1}
    monkeypatch.setenv("FASTRNN_TIER", "step")
    with count_launches() as n:
        step = norm.forward(*loop, **extras)
    assert dict(n.tiers) == {("step", "forward"): sched.steps}
    for got, want in ((res.y, step.y), (res.h_n, step.h_n), (res.c_n, step.c_n)):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert len(res.saved) == len(step.saved) == len(norm.saved_layout(cell, 9, 5, F64, True, **extras))
    for got, want in zip(res.saved, step.saved):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    gen = torch.Generator().manual_seed(4)
    dy = torch.randn(res.y.shape, generator=gen, dtype=F64)
    dh_n = torch.randn(res.h_n.shape, generator=gen, dtype=F64)
    dc_n = torch.randn(res.h_n.shape, generator=gen, dtype=F64) if cell.has_cell_state else None
    grads = (a["w_hh"], a["b_hh"], None, a["h0"], a["c0"], res.y, dy, dh_n, dc_n, sched, reverse)
    with count_launches() as n:
        stepped = norm.backward(cell, res.saved, *grads, **extras)
    assert dict(n.tiers) == {("step", "backward"): sched.steps}
    with count_launches() as n:
        cross = [norm_resident.backward(cell, step.saved, *grads, **extras),
                 norm_resident.backward(cell, res.saved, *grads, **extras)]
    assert dict(n.tiers) == {("resident", "backward"): 2}
    for got in cross:
        for field in ("dxg", "dhg", "dh0", "dc0", "dparams"):
            g, w = getattr(got, field), getattr(stepped, field)
            assert (g is None) == (w is None), field
            if w is not None:
                torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=lambda m, f=field: f"{f}: {m}")


def test_forced_and_auto_tiers(monkeypatch):
    """resident (forced or auto) runs one launch; step the row kernels; cooperative says it
    cannot; a forced resident without an entry for the size says so before any launch, auto
    takes such a layer to the step path."""
    m = fastrnn.LayerNormGRU(3, 4, backend="triton")
    x = torch.randn(2, 2, 3)
    for tier, want in (("resident", {("resident", "forward"): 1}), ("", {("resident", "forward"): 1}),
                       ("step", {("step", "forward"): 2})):
        monkeypatch.setenv("FASTRNN_TIER", tier)
        with count_launches() as n:
            m(x)
        assert dict(n.tiers) == want, tier
    monkeypatch.setenv("FASTRNN_TIER", "cooperative")
    with count_launches() as n, pytest.raises(RuntimeError, match="the cooperative tier does not run LayerNormGRU"):
        m(x)
    assert n.forward == 0
    big = max(bh for (k, d, bh) in fits.RESIDENT_NORM if (k, d) == ("LayerNormLSTM", "float32")) + 1
    wide = fastrnn.LayerNormLSTM(2, big, backend="triton")
    x = torch.randn(1, 1, 2)
    monkeypatch.setenv("FASTRNN_TIER", "resident")
    with count_launches() as n, pytest.raises(RuntimeError, match="FASTRNN_TIER=resident cannot run LayerNormLSTM"):
        wide(x)
    assert n.forward == 0
    monkeypatch.delenv("FASTRNN_TIER")
    with count_launches() as n:
        wide(x)
    assert dict(n.tiers) == {("step", "forward"): 1}


def test_report_lists_every_entry():
    """The compile report's resident-norm rows: each entry's forward (plain and H_ALIGNED;
    fp32 also TF32) and backward, with ``-reg`` rows where the entry runs regularisers."""
    specs = resident_norm.specialisations()
    keys = {(s.kernel_name, s.kind, s.dtype, s.label) for s in specs}
    assert fits.RESIDENT_NORM
    for (kind, dtype_name, block_h), fit in fits.RESIDENT_NORM.items():
        dtype = getattr(torch, dtype_name)
        regs = ("", "-reg") if fits.resident_norm_regularised(kind, dtype, block_h) else ("",)
        for reg in regs:
            assert ("resident-norm-forward", kind, dtype, dtype_name + "-a8" + reg) in keys
            assert ("resident-norm-backward", kind, dtype, dtype_name + reg) in keys
            if dtype == F32:
                assert ("resident-norm-backward", kind, dtype, "float32-tf32" + reg) in keys
    assert all(s.config.block_b == 16 for s in specs)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hidden", [6, 16], ids=["H6", "H16-aligned"])
def test_float16_io(kind, hidden, monkeypatch):
    """fp16 I/O, fp32 statistics and state, on the resident tier: against the reference
    backend in fp64 on the same (fp16-representable) parameters and inputs, to 1e-2 (fp16
    rounding of r, the gates and each step's h over T = 6 steps). H = 16: both directions run
    the ``H_ALIGNED`` kernels (resident_tiles.ALIGNED_BACKWARD for the backward)."""
    spy = LaunchSpy(resident_norm.resident_norm_backward_kernel)
    monkeypatch.setattr(resident_norm, "resident_norm_backward_kernel", spy)
    fast, ref = _pair(kind, hidden, torch.float16, 3, bidirectional=True)
    ref = ref.to(F64)
    ref.load_state_dict({k: v.to(F64) for k, v in fast.state_dict().items()})
    leaves, flags, lengths = _problem(fast, True, True, torch.float16, 3)
    wide = [t.detach().to(F64).requires_grad_() for t in leaves]
    has_c = kind == "LayerNormLSTM"
    with count_launches() as n:
        got = _whole(fast, leaves, flags, lengths, True, has_c)
    assert dict(n.tiers) == {("resident", "forward"): 2, ("resident", "backward"): 2}
    assert spy.aligned == [hidden % 8 == 0] * 2
    want = _whole(ref, wide, flags, lengths, True, has_c)
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == torch.float16 and torch.isfinite(got[key]).all(), key
        torch.testing.assert_close(got[key].to(F64), want[key], rtol=1e-2, atol=1e-2,
                                   msg=lambda m, key=key: f"{key}: {m}")
