"""The reference backend's tuned loops for torch's four cells with zoneout or recurrent
dropout (:mod:`fastrnn.backends.reference_regularised`) against its generic loop, which
``tests/test_regularisers.py`` checks against plain loops of the equations.

Both loops see the same masks (the same seed before each run); every output and every
gradient (input, h0, c0, each parameter) must agree, in training and eval, padded and
packed with unsorted lengths, both directions, two layers, with reset flags, each
regulariser alone and together. float64: the loops differ only in op order (1e-9).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn.backends import cpu_loops, reference_regularised
from test_variants import randomise


@pytest.fixture(autouse=True)
def python_loops():
    """These are the Python loops' tests (``test_cpu_loops.py`` compares the LSTM's C++ loops
    with them)."""
    with cpu_loops.disabled():
        yield

TOL = dict(rtol=1e-7, atol=1e-9)

MAKERS = {
    "LSTM": lambda **k: fastrnn.LSTM(3, 4, **k),
    "GRU": lambda **k: fastrnn.GRU(3, 4, **k),
    "RNN_TANH": lambda **k: fastrnn.RNN(3, 4, **k),
    "RNN_RELU": lambda **k: fastrnn.RNN(3, 4, nonlinearity="relu", **k),
}
REGULARISERS = {
    "zoneout": lambda lstm: dict(zoneout=(0.3, 0.4) if lstm else 0.3),
    "zoneout_h": lambda lstm: dict(zoneout=0.3),
    "zoneout_c": lambda lstm: dict(zoneout=(0.0, 0.4) if lstm else 0.3),
    "rdrop": lambda lstm: dict(recurrent_dropout=0.4),
    "both": lambda lstm: dict(zoneout=(0.3, 0.4) if lstm else 0.3, recurrent_dropout=0.4),
}


def _run(m, lstm, packed, seed):
    gen = torch.Generator().manual_seed(2)
    steps, batch = 6, 4
    dirs = m.num_layers * (2 if m.bidirectional else 1)
    x = torch.randn(steps, batch, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(dirs, batch, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(dirs, batch, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    resets = torch.zeros(steps, batch, dtype=torch.bool)
    resets[2, 1] = resets[4, 0] = resets[3, 2] = True
    lengths = torch.tensor([4, 6, 3, 5])
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
    rst = pack_padded_sequence(resets, lengths, enforce_sorted=False) if packed else resets
    torch.manual_seed(seed)
    out, hidden = m(inp, (h0, c0) if lstm else h0, resets=rst)
    out = out.data if packed else out
    outs = [out, *(hidden if lstm else (hidden,))]
    weights = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in outs]
    loss = sum((t * w).sum() for t, w in zip(outs, weights))
    leaves = [x, h0, c0] if lstm else [x, h0]
    grads = torch.autograd.grad(loss, [*leaves, *m.parameters()])
    names = ["x", "h0", "c0"][: len(leaves)] + [n for n, _ in m.named_parameters()]
    return [t.detach() for t in outs], dict(zip(names, grads))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reg", list(REGULARISERS))
@pytest.mark.parametrize("kind", list(MAKERS))
def test_tuned_loops_equal_the_generic_loop(kind, reg, packed, training, monkeypatch):
    lstm = kind == "LSTM"
    m = MAKERS[kind](num_layers=2, bidirectional=True, dtype=torch.float64, backend="reference",
                     **REGULARISERS[reg](lstm)).train(training)
    randomise(m, torch.Generator().manual_seed(1))
    calls = []
    real = reference_regularised.forward
    monkeypatch.setattr(reference_regularised, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    got_out, got_grads = _run(m, lstm, packed, seed=5)
    # (recurrent dropout is the identity in eval: the loops without regularisers run then)
    assert bool(calls) == (training or reg != "rdrop"), calls
    monkeypatch.setattr(reference_regularised, "runs", lambda kind, w_hr: False)
    want_out, want_grads = _run(m, lstm, packed, seed=5)
    for a, b in zip(got_out, want_out):
        torch.testing.assert_close(a, b, **TOL)
    for name, a in got_grads.items():
        torch.testing.assert_close(a, want_grads[name], **TOL, msg=lambda s, name=name: f"{name}: {s}")


@pytest.mark.parametrize("kind", list(MAKERS))
def test_inference_without_grad(kind, monkeypatch):
    """A forward that saves nothing (no_grad) gives the generic loop's outputs."""
    lstm = kind == "LSTM"
    m = MAKERS[kind](dtype=torch.float64, backend="reference", **REGULARISERS["both"](lstm)).train()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.manual_seed(3)
        got = m(x)
        monkeypatch.setattr(reference_regularised, "runs", lambda kind, w_hr: False)
        torch.manual_seed(3)
        want = m(x)
    torch.testing.assert_close(got, want, **TOL)
