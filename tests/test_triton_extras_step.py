"""The step tier with reset flags and a cell's per-unit parameters, in Triton's interpreter.

The step tier (forced with ``FASTRNN_TIER=step``) runs ``layer(x, hx, resets=...)`` and the
peephole LSTM (per-unit weights ``weight_ci/cf/co``); every output (out, h_n, c_n) and every
gradient (input, h0, c0, every parameter) is compared with two oracles:

- the reference backend running the same call (resets and peepholes included);
- for resets, a plain segment-wise run: each episode run on its own by the reference
  backend without resets, from a zero state (``h0`` / ``c0`` only where an episode's first
  processed step is the sequence's: the first episode going forward unless the sequence
  starts with a reset, the last episode in the reverse direction).

fp64 to 1e-10, fp32 to 1e-5, small sizes (T <= 6, B <= 3, H <= 16).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from fastrnn.backends import triton as triton_backend
from fastrnn.backends.triton import buffers
from fastrnn.backends.triton import step as step_launcher
from fastrnn.kernels import recurrent_step
from fastrnn.kernels.recurrent_step import count_launches

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
STEPS, BATCH, INPUT = 6, 3, 3
LENGTHS = [4, 6, 3]  # packed, unsorted
# episode starts (time, sequence): a reset at t = 0, several in one sequence, resets on
# the last step of a packed sequence (t = 3 of sequence 0, t = 2 of sequence 2)
RESETS = [(0, 0), (2, 0), (3, 1), (5, 1), (2, 2), (3, 0)]


@pytest.fixture(autouse=True)
def _step_tier(monkeypatch):
    monkeypatch.setattr(buffers, "FILL_NAN", True)  # a skipped store shows up as NaN
    monkeypatch.setenv("FASTRNN_TIER", "step")


def _pair(cls, hidden, dtype, seed, **kwargs):
    """A triton and a reference module with identical (random) parameters; peephole
    weights non-zero."""
    torch.manual_seed(seed)
    fast = getattr(fastrnn, cls)(INPUT, hidden, backend="triton", **kwargs).to(dtype)
    with torch.no_grad():
        for name, p in fast.named_parameters():
            p.copy_(torch.randn(p.shape, dtype=torch.float64) * 0.5)
    ref = getattr(fastrnn, cls)(INPUT, hidden, backend="reference", **kwargs).to(dtype)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _problem(module, packed, with_resets, dtype, seed):
    """Padded input ``(T, B, I)`` (zero past each length), initial states, reset flags
    ``(T, B)`` and the lengths."""
    gen = torch.Generator().manual_seed(seed)
    lengths = LENGTHS if packed else [STEPS] * BATCH
    x = torch.randn(STEPS, BATCH, INPUT, generator=gen, dtype=torch.float64)
    for b, n in enumerate(lengths):
        x[n:, b] = 0
    slots = module.num_layers * (2 if module.bidirectional else 1)
    state = getattr(module, "proj_size", 0) or module.hidden_size
    h0 = torch.randn(slots, BATCH, state, generator=gen, dtype=torch.float64)
    c0 = torch.randn(slots, BATCH, module.hidden_size, generator=gen, dtype=torch.float64)
    resets = torch.zeros(STEPS, BATCH, dtype=torch.bool)
    if with_resets:
        for t, b in RESETS:
            resets[t, b] = True
    leaves = [t.to(dtype).requires_grad_() for t in (x, h0, c0)]
    return leaves, resets, lengths


def _loss_weights(out_shape, slots, state, hidden, dtype):
    gen = torch.Generator().manual_seed(99)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype)
            for s in (out_shape, (slots, BATCH, state), (slots, BATCH, hidden))]


def _grads(module, outs, leaves, has_c):
    """Outputs and the gradients of a fixed random linear function of them: input, h0,
    c0 (LSTM), then every parameter by name."""
    out, h_n, c_n = outs
    weights = _loss_weights(out.shape, h_n.shape[0], h_n.shape[2], module.hidden_size, out.dtype)
    loss = (out * weights[0]).sum() + (h_n * weights[1]).sum()
    if has_c:
        loss = loss + (c_n * weights[2]).sum()
    used = leaves if has_c else leaves[:2]
    names = [n for n, _ in module.named_parameters()]
    grads = torch.autograd.grad(loss, used + list(module.parameters()), allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, used + list(module.parameters()))]
    labels = ["out", "h_n"] + (["c_n"] if has_c else []) + ["grad input", "grad h0"] + (
        ["grad c0"] if has_c else []) + [f"grad {n}" for n in names]
    values = [out, h_n] + ([c_n] if has_c else []) + grads
    return dict(zip(labels, (v.detach() for v in values)))


def _whole(module, leaves, resets, lengths, packed, has_c, use_resets=True):
    """The module on the whole batch (resets passed as the call's flags)."""
    x, h0, c0 = leaves
    hx = (h0, c0) if has_c else h0
    if packed:
        inp = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
        flags = pack_padded_sequence(resets, torch.tensor(lengths), enforce_sorted=False)
        out, hn = module(inp, hx, resets=flags if use_resets else None)
        out = pad_packed_sequence(out, total_length=STEPS)[0]
    else:
        out, hn = module(x, hx, resets=resets if use_resets else None)
    h_n, c_n = hn if has_c else (hn, None)
    return _grads(module, (out, h_n, c_n), leaves, has_c)


def _segments(module, leaves, resets, lengths, has_c):
    """Each episode of each sequence run on its own (no resets), from zero states except
    where the sequence's own initial state enters, then put back together."""
    x, h0, c0 = leaves
    dirs = 2 if module.bidirectional else 1
    outs, h_n, c_n = [], [], []
    for b, n in enumerate(lengths):
        starts = [0] + [t for t in range(1, n) if resets[t, b]] + [n]
        pieces, finals = [], {}
        for k in range(len(starts) - 1):
            t0, t1 = starts[k], starts[k + 1]
            first, last = k == 0 and not resets[0, b], k == len(starts) - 2
            # an initial-state slot is the sequence's own where that direction starts here
            keep = torch.tensor([(first if s % dirs == 0 else last) for s in range(h0.shape[0])])
            mask = keep.view(-1, 1, 1).to(x.dtype)
            h = h0[:, b : b + 1] * mask
            hx = (h, c0[:, b : b + 1] * mask) if has_c else h
            out, hn = module(x[t0:t1, b : b + 1], hx)
            pieces.append(out)
            hn = hn if has_c else (hn, None)
            for s in range(h0.shape[0]):  # forward slots end with the last episode, reverse with the first
                if (s % dirs == 0 and last) or (s % dirs == 1 and k == 0):
                    finals[s] = [t[s, 0] if t is not None else None for t in hn]
        seq = torch.cat(pieces)
        outs.append(torch.cat([seq, seq.new_zeros(STEPS - n, 1, seq.shape[2])]))
        h_n.append(torch.stack([finals[s][0] for s in range(h0.shape[0])]))
        c_n.append(torch.stack([finals[s][1] for s in range(h0.shape[0])]) if has_c else None)
    out = torch.cat(outs, 1)
    h_n = torch.stack(h_n, 1)
    c_n = torch.stack(c_n, 1) if has_c else None
    return _grads(module, (out, h_n, c_n), leaves, has_c)


def _assert_same(actual, expected, dtype, what):
    assert list(actual) == list(expected), f"{what}: results {list(actual)} vs {list(expected)}"
    for key in expected:
        a, e = actual[key], expected[key]
        assert torch.isfinite(a).all(), f"{what}: {key} has non-finite values"
        torch.testing.assert_close(a, e, **TOL[dtype], msg=lambda m: f"{what}: {key}: {m}")


def _check(cls, kwargs, packed, with_resets, dtype, hidden=5, seed=0):
    fast, ref = _pair(cls, hidden, dtype, seed, **kwargs)
    leaves, resets, lengths = _problem(fast, packed, with_resets, dtype, seed)
    has_c = cls == "LSTM"
    with count_launches() as n:
        got = _whole(fast, leaves, resets, lengths, packed, has_c)
    # the step tier ran every launch: one per step of each layer-direction, each way
    launches = fast.num_layers * (2 if fast.bidirectional else 1) * max(lengths)
    assert dict(n.tiers) == {("step", "forward"): launches, ("step", "backward"): launches}
    expected = _whole(ref, leaves, resets, lengths, packed, has_c)
    _assert_same(got, expected, dtype, "triton vs reference")
    if with_resets:
        _assert_same(got, _segments(ref, leaves, resets, lengths, has_c), dtype, "triton vs segment-wise")
        # the flags change the result (the comparison above is not of a no-op)
        plain = _whole(ref, leaves, resets, lengths, packed, has_c, use_resets=False)
        assert not torch.allclose(plain["out"], got["out"])
    return got


CELLS = [("LSTM", {}), ("GRU", {}), ("RNN", {"nonlinearity": "tanh"})]


@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bi"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cls, kwargs", CELLS, ids=[c for c, _ in CELLS])
def test_resets_fp64(cls, kwargs, packed, bidirectional):
    # two layers wherever the run is one-directional or packed (the second layer reads the
    # first's output, episode boundaries and all)
    layers = 2 if (packed or not bidirectional) else 1
    _check(cls, dict(kwargs, num_layers=layers, bidirectional=bidirectional), packed, True, torch.float64)


@pytest.mark.parametrize("cls, kwargs", CELLS, ids=[c for c, _ in CELLS])
def test_resets_fp32(cls, kwargs):
    _check(cls, dict(kwargs, num_layers=2, bidirectional=True), True, True, torch.float32)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bi"])
def test_resets_with_proj_size(bidirectional):
    """LSTM with ``proj_size``: the host-side dh / dm of the step tier's backward respect resets."""
    _check("LSTM", dict(proj_size=3, bidirectional=bidirectional), True, True, torch.float64)


def test_resets_on_every_row():
    """Every step a reset: each step starts from zero, and h0 / c0 get no gradient."""
    fast, ref = _pair("LSTM", 5, torch.float64, 3, peephole=True, bidirectional=True)
    leaves, resets, lengths = _problem(fast, True, False, torch.float64, 3)
    resets[:] = True
    got = _whole(fast, leaves, resets, lengths, True, True)
    _assert_same(got, _whole(ref, leaves, resets, lengths, True, True), torch.float64, "triton vs reference")
    forward_slots = got["grad h0"][0::2]  # reverse slots still enter each sequence's last step
    assert torch.equal(forward_slots, torch.zeros_like(forward_slots))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("with_resets", [False, True], ids=["no-resets", "resets"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_peephole(packed, with_resets, dtype):
    kwargs = dict(peephole=True, num_layers=2 if packed else 1, bidirectional=True)
    got = _check("LSTM", kwargs, packed, with_resets, dtype)
    for name in ("weight_ci_l0", "weight_cf_l0", "weight_co_l0_reverse"):
        assert got[f"grad {name}"].abs().max() > 0, name  # the peepholes are in the gradient


def test_peephole_aligned_hidden():
    """H a multiple of 8 (the aligned specialisation), 16 wide, resets, forward only."""
    _check("LSTM", dict(peephole=True), True, True, torch.float64, hidden=16)


def test_peephole_weights_reach_the_kernels():
    """The peephole weights change the step tier's result (zeroing them must not be a no-op)."""
    fast, ref = _pair("LSTM", 5, torch.float64, 1, peephole=True)
    leaves, resets, lengths = _problem(fast, False, False, torch.float64, 1)
    with_peep = _whole(fast, leaves, resets, lengths, False, True)
    with torch.no_grad():
        for stem in ("weight_ci_l0", "weight_cf_l0", "weight_co_l0"):
            getattr(fast, stem).zero_()
            getattr(ref, stem).zero_()
    without = _whole(fast, leaves, resets, lengths, False, True)
    assert not torch.allclose(with_peep["out"], without["out"])
    _assert_same(without, _whole(ref, leaves, resets, lengths, False, True), torch.float64, "zero peepholes")


def test_step_tier_reads_both_extras():
    """Every other tier's calls with params or resets fall back here: the step launcher
    lists both, and the backend would refuse neither."""
    assert {"params", "resets"} <= set(step_launcher.EXTRAS)
    assert triton_backend.refuses_loop_inputs(("resets",)) is None
    assert triton_backend.refuses_cell(fastrnn.cells.LSTM_PEEPHOLE) is None


def test_specialisations_pass_the_extras():
    """The report compiles what the launchers launch: the reset-flag pointer (u8) and the
    parameter pointer in both kernels, ``has_resets`` a runtime int, PARAMS a constexpr
    (3 for the peephole LSTM, 0 for the others)."""
    specs = recurrent_step.specialisations()
    for spec in specs:
        assert ("rst_ptr", "u8") in spec.pointers and ("p_ptr", "io") in spec.pointers
        assert "has_resets" in spec.ints and "has_resets" not in spec.constexprs
        assert spec.constexprs["PARAMS"] == (3 if spec.kind == "LSTM_PEEPHOLE" else 0)
    assert {s.kernel_name for s in specs if s.kind == "LSTM_PEEPHOLE"} == {"forward", "backward"}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_peephole_cell_without_params_reads_zeros(reverse):
    """A call of the step launcher for the peephole cell without ``params`` (the first-use
    check's problem) runs with zero peepholes, i.e. as torch's LSTM, never reading past a
    placeholder; the same call with ``params`` given differs."""
    from fastrnn.functional import Schedule

    gen = torch.Generator().manual_seed(5)
    hidden, schedule = 12, Schedule.from_batch_sizes([3, 3, 2, 1])

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    xg, w_hh, h0, c0 = rnd(schedule.rows, 4 * hidden), rnd(4 * hidden, hidden) * 0.5, rnd(3, hidden), rnd(3, hidden)
    dy, dh_n, dc_n = rnd(schedule.rows, hidden), rnd(3, hidden), rnd(3, hidden)

    def run(cell, **extras):
        fwd = step_launcher.forward(cell, xg, w_hh, None, None, h0, c0, schedule, reverse, True, **extras)
        bwd = step_launcher.backward(cell, fwd.saved, w_hh, None, None, h0, c0, fwd.y, dy, dh_n, dc_n, schedule,
                                     reverse, **extras)
        return [fwd.y, fwd.h_n, fwd.c_n, bwd.dxg, bwd.dh0, bwd.dc0]

    plain = run(fastrnn.cells.LSTM)
    for a, e in zip(run(fastrnn.cells.LSTM_PEEPHOLE), plain):
        torch.testing.assert_close(a, e, **TOL[torch.float64])
    with_params = run(fastrnn.cells.LSTM_PEEPHOLE, params=rnd(3, hidden))
    assert not torch.allclose(with_params[0], plain[0])
