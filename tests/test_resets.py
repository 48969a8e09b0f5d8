"""Resets inside a sequence: ``layer(x, hx, resets=...)``.

The property that defines them: a sequence with resets gives exactly what its segments
give when each is run on its own from a zero state, at every layer and direction, outputs
and gradients (no gradient crosses a reset). Checked against fastrnn itself run segment by
segment (so the property, not an implementation, is the oracle), and against the plain
loop of :mod:`variant_oracle` with an initial state. Wrong ``resets`` are refused before
any work. float64 throughout: both sides do the same math in a different order.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import fastrnn
from test_variants import LAYERS, _compare, randomise

TOL = dict(rtol=1e-7, atol=1e-9)

MAKERS = {
    "RNN_TANH": (lambda *a, **k: fastrnn.RNN(*a, **k), False),
    "LSTM": (lambda *a, **k: fastrnn.LSTM(*a, **k), True),
    "GRU": (lambda *a, **k: fastrnn.GRU(*a, **k), False),
    "LSTM_PEEPHOLE": (lambda *a, **k: fastrnn.LSTM(*a, peephole=True, **k), True),
    "LayerNormLSTM": (lambda *a, **k: fastrnn.LayerNormLSTM(*a, **k), True),
    "LayerNormGRU": (lambda *a, **k: fastrnn.LayerNormGRU(*a, **k), False),
}


def _segments(flags):
    starts = [0] + [t for t in range(1, len(flags)) if flags[t]] + [len(flags)]
    return [(a, b) for a, b in zip(starts[:-1], starts[1:]) if b > a]


@pytest.mark.parametrize("kind", list(MAKERS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_segments_run_on_their_own(kind, bidirectional):
    """Outputs, h_n and every gradient equal those of each segment run separately."""
    make, lstm = MAKERS[kind]
    m = make(3, 4, num_layers=2, bidirectional=bidirectional, dtype=torch.float64)
    randomise(m, torch.Generator().manual_seed(11))
    gen = torch.Generator().manual_seed(12)
    steps = 7
    flags = torch.zeros(steps, 3, dtype=torch.bool)
    flags[3, 0] = flags[5, 0] = True  # three segments
    flags[0, 1] = flags[1, 1] = True  # a reset at the start and one of length 1
    flags[6, 2] = True  # a last segment of length 1
    x = torch.randn(steps, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(steps, 3, 4 * (2 if bidirectional else 1), generator=gen, dtype=torch.float64)
    out, hidden = m(x, resets=flags)
    params = [p for _, p in m.named_parameters()]
    got = torch.autograd.grad((out * w).sum(), [x, *params])

    want_out = torch.empty_like(out)
    want_dx = torch.zeros_like(x)
    want_dp = [torch.zeros_like(p) for p in params]
    h_n_want = []
    for b in range(3):
        finals = []
        for lo, hi in _segments(flags[:, b]):
            xs = x[lo:hi, b : b + 1].detach().requires_grad_()
            seg_out, seg_hidden = m(xs)
            want_out[lo:hi, b] = seg_out[:, 0].detach()
            grads = torch.autograd.grad((seg_out * w[lo:hi, b : b + 1]).sum(), [xs, *params])
            want_dx[lo:hi, b] = grads[0][:, 0]
            for acc, g in zip(want_dp, grads[1:]):
                acc += g
            finals.append(seg_hidden[0] if lstm else seg_hidden)
        # forward directions end in the last segment, reverse ones in the first
        directions = 2 if bidirectional else 1
        h_n_want.append(torch.stack([finals[-1 if d % directions == 0 else 0][d, 0] for d in range(finals[0].shape[0])]))
    torch.testing.assert_close(out.detach(), want_out, **TOL)
    torch.testing.assert_close((hidden[0] if lstm else hidden).detach(), torch.stack(h_n_want, 1), **TOL)
    torch.testing.assert_close(got[0], want_dx, **TOL)
    for (name, _), g, want in zip(m.named_parameters(), got[1:], want_dp):
        torch.testing.assert_close(g, want, **TOL, msg=lambda s, name=name: f"{name}: {s}")


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("form", ["padded", "packed", "unbatched"])
def test_resets_with_initial_state_against_the_loop(kind, form):
    """With h0 (and c0): each direction starts from it, later episodes from zero; the
    gradient of h0 / c0 stops at the first reset."""
    m = LAYERS[kind][0](3, 4, bidirectional=True, batch_first=(form == "padded"), dtype=torch.float64)
    randomise(m, torch.Generator().manual_seed(13))
    resets_at = [(0, 2), (0, 3)] if form == "unbatched" else [(0, 2), (1, 0), (1, 2)]
    _compare(kind, m, form, True, torch.float64, resets_at=resets_at)


@pytest.mark.parametrize("kind", ["RNN_TANH", "GRU", "LSTM"])
@pytest.mark.parametrize("form", ["padded", "packed"])
def test_torch_cells_with_resets_against_the_loop(kind, form):
    make, lstm = MAKERS[kind]
    m = make(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    randomise(m, torch.Generator().manual_seed(14))
    _compare(kind, m, form, True, torch.float64, resets_at=[(0, 1), (1, 3)], lstm=lstm)


def test_no_gradient_crosses_a_reset_at_the_first_step():
    m = fastrnn.LSTM(3, 4, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    h0 = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
    flags = torch.tensor([[True, False]] * 1 + [[False, False]] * 3)
    out, _ = m(x, (h0, c0), resets=flags)
    dh0, dc0 = torch.autograd.grad(out.sum(), [h0, c0])
    assert torch.equal(dh0[0, 0], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(dc0[0, 0], torch.zeros(4, dtype=torch.float64))
    assert dh0[0, 1].abs().sum() > 0 and dc0[0, 1].abs().sum() > 0


def test_all_false_resets_change_nothing():
    m = fastrnn.GRU(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(m(x, resets=torch.zeros(5, 2, dtype=torch.bool))[0], m(x)[0])


def test_refusals_before_any_work(monkeypatch):
    m = fastrnn.LSTM(3, 4, batch_first=True)
    x = torch.randn(2, 5, 3)
    ran = []
    monkeypatch.setattr(fastrnn.ops, "layer", lambda *a, **k: ran.append(1))
    with pytest.raises(RuntimeError, match=r"expected \[2, 5\], got \[5, 2\]"):
        m(x, resets=torch.zeros(5, 2, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="must be a bool tensor, got dtype torch.float32"):
        m(x, resets=torch.zeros(2, 5))
    with pytest.raises(RuntimeError, match="must be on the input's device"):
        m(x, resets=torch.zeros(2, 5, dtype=torch.bool, device="meta"))
    with pytest.raises(RuntimeError, match="must be a bool tensor, got list"):
        m(x, resets=[[False] * 5] * 2)
    with pytest.raises(RuntimeError, match=r"expected \[5\], got \[2, 5\]"):
        m(x[0], resets=torch.zeros(2, 5, dtype=torch.bool))
    packed = pack_sequence([torch.randn(4, 3), torch.randn(2, 3)])
    with pytest.raises(RuntimeError, match="must be a PackedSequence of bools"):
        m(packed, resets=torch.zeros(6, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="must be packed like the input"):
        m(packed, resets=pack_sequence([torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)]))
    assert not ran


def test_native_backend_refuses_resets():
    m = fastrnn.LSTM(3, 4, backend="native")
    with pytest.raises(RuntimeError, match="backend 'native' runs torch's own kernels, which have no resets inside a sequence"):
        m(torch.randn(5, 2, 3), resets=torch.zeros(5, 2, dtype=torch.bool))


def test_resets_are_keyword_only():
    m = fastrnn.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    with pytest.raises(TypeError, match="positional arguments"):
        m(x, None, torch.zeros(5, 2, dtype=torch.bool))
