"""The op's outputs behave like torch.nn's: in-place operations on ``output``, ``h_n`` and
``c_n`` are allowed and the gradients through them match torch.nn's (float64, both
backends, padded, batch_first and packed input)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from helpers import TOL, make_pair

F64 = torch.float64


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("cls, kwargs, packed", [
    pytest.param("LSTM", dict(), False, id="LSTM"),
    pytest.param("GRU", dict(batch_first=True, num_layers=2), False, id="GRU-bf-L2"),
    pytest.param("RNN", dict(bidirectional=True), True, id="RNN-bidir-packed"),
    pytest.param("LSTMCell", dict(), False, id="LSTMCell"),
])
def test_in_place_ops_on_outputs(cls, kwargs, packed, backend):
    ref, fast = make_pair(cls, 3, 4, backend=backend, dtype=F64, **kwargs)
    cell = cls.endswith("Cell")
    x0 = torch.randn((2, 3) if cell else (5, 2, 3), dtype=F64)
    results = []
    for module in (ref, fast):
        x = x0.clone().requires_grad_()
        inp = pack_padded_sequence(x, torch.tensor([5, 3])) if packed else x
        out = module(inp)
        if cell:
            h, c = out
            h.mul_(2)
            c.add_(1)
            loss = (h * c).sum()
        else:
            y, state = out
            data = y.data if packed else y
            data.add_(1)
            for s in state if isinstance(state, tuple) else (state,):
                s.mul_(3)
            loss = (data.sin()).sum() + sum(s.pow(2).sum() for s in (state if isinstance(state, tuple) else (state,)))
        results.append(torch.autograd.grad(loss, [x, *module.parameters()]))
    for a, e in zip(results[1], results[0]):
        torch.testing.assert_close(a, e, **TOL[F64])


@pytest.mark.parametrize("backend", ["reference", None])
@pytest.mark.parametrize("cls, kwargs", [
    pytest.param("LSTM", dict(), id="LSTM"),
    pytest.param("LSTM", dict(zoneout=0.2), id="LSTM-zoneout"),
    pytest.param("GRU", dict(num_layers=2), id="GRU-L2"),
    pytest.param("RNN", dict(bidirectional=True), id="RNN-bidir"),
])
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_outputs_detach_in_place(cls, kwargs, backend, grad):
    """``output.detach_()`` and ``h_n.detach_()`` work as on torch.nn's outputs (a view of an
    op-internal buffer would refuse them), with and without autograd recording the call, on
    the reference backend and on what ``auto`` picks (torch's kernels for some)."""
    import fastrnn

    m = getattr(fastrnn, cls)(3, 4, backend=backend, **kwargs)
    x = torch.randn(5, 2, 3, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        y, state = m(x)
    for t in (y, *(state if isinstance(state, tuple) else (state,))):
        t.detach_()
        assert not t.requires_grad and t.grad_fn is None
