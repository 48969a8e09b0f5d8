"""Dropout between layers, as torch.nn applies it.

torch.nn drops each layer's output except the last one's, in training only; h_n / c_n
and the final output are never dropped. torch draws its masks inside ATen, so training
outputs cannot be compared value for value; instead:

- eval mode (dropout > 0, several layers) is plain parity;
- p = 1.0 in training is deterministic (every dropped activation is 0): full parity with
  torch.nn in training mode, gradients included;
- a recording/deterministic stand-in for ``torch.nn.functional.dropout`` shows where
  fastrnn applies dropout: exactly ``num_layers - 1`` calls, with the module's ``p``, on
  the outputs of layers 1..L-1 (checked against torch.nn stacks of the first k layers),
  and, with a fixed mask, outputs and all gradients equal a stack of single-layer
  torch.nn modules with that mask applied between layers;
- training output differs from eval, and one seed gives one result.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastrnn
from helpers import TOL, assert_parity, make_pair

F64 = torch.float64
T, B, I, H = 5, 3, 4, 3

CONFIGS = [
    pytest.param("LSTM", dict(num_layers=2), id="LSTM-L2"),
    pytest.param("LSTM", dict(num_layers=3, proj_size=2, bidirectional=True), id="LSTM-L3-bidir-proj2"),
    pytest.param("GRU", dict(num_layers=3), id="GRU-L3"),
    pytest.param("GRU", dict(num_layers=2, bidirectional=True, batch_first=True), id="GRU-L2-bidir-bf"),
    pytest.param("RNN", dict(num_layers=2, nonlinearity="relu"), id="RNN-relu-L2"),
    pytest.param("RNN", dict(num_layers=3, bias=False, bidirectional=True), id="RNN-L3-nobias-bidir"),
]


def _input(kwargs):
    shape = (B, T, I) if kwargs.get("batch_first") else (T, B, I)
    return torch.randn(*shape, dtype=F64).requires_grad_()


def _out_size(kwargs):
    return kwargs.get("proj_size") or H


def _hx(cls, kwargs):
    n = kwargs["num_layers"] * (2 if kwargs.get("bidirectional") else 1)
    h0 = torch.randn(n, B, _out_size(kwargs), dtype=F64).requires_grad_()
    return (h0, torch.randn(n, B, H, dtype=F64).requires_grad_()) if cls == "LSTM" else h0


def _layers_of(state_dict, layer):
    """The state_dict of layer ``layer`` renamed as layer 0 of a one-layer module."""
    out = {}
    for key, value in state_dict.items():
        base, _, rest = key.rpartition(f"_l{layer}")
        if base and rest in ("", "_reverse"):
            out[f"{base}_l0{rest}"] = value
    return out


class TorchStack(nn.Module):
    """``num_layers`` single-layer torch.nn modules with ``between`` applied between them."""

    def __init__(self, cls, kwargs, state_dict, between):
        super().__init__()
        one = dict(kwargs, num_layers=1, dropout=0.0)
        self.cls, self.between, self.kwargs = cls, between, kwargs
        self.layers = nn.ModuleList()
        for j in range(kwargs["num_layers"]):
            size = I if j == 0 else _out_size(kwargs) * (2 if kwargs.get("bidirectional") else 1)
            layer = getattr(nn, cls)(size, H, dtype=F64, **one)
            layer.load_state_dict(_layers_of(state_dict, j), strict=True)
            self.layers.append(layer)

    def forward(self, x, hx=None):
        d = 2 if self.kwargs.get("bidirectional") else 1
        bf = self.kwargs.get("batch_first", False)
        hs, cs = [], []
        for j, layer in enumerate(self.layers):
            if j > 0:
                seq = x.transpose(0, 1) if bf else x  # the mask is defined on time-major rows
                seq = self.between(seq.reshape(-1, seq.shape[-1])).view(seq.shape)
                x = seq.transpose(0, 1) if bf else seq
            if hx is None:
                x, state = layer(x)
            elif self.cls == "LSTM":
                x, state = layer(x, (hx[0][j * d : (j + 1) * d], hx[1][j * d : (j + 1) * d]))
            else:
                x, state = layer(x, hx[j * d : (j + 1) * d])
            if self.cls == "LSTM":
                hs.append(state[0])
                cs.append(state[1])
            else:
                hs.append(state)
        return (x, (torch.cat(hs), torch.cat(cs))) if self.cls == "LSTM" else (x, torch.cat(hs))


def _fixed_mask_dropout(p):
    """A deterministic dropout: the k-th call of a forward pass gets mask number k."""
    calls = []

    def dropout(x, p_=p, training=True, inplace=False):
        gen = torch.Generator().manual_seed(1000 + len(calls) % 100)
        keep = (torch.rand(x.shape, generator=gen, dtype=F64) >= p).to(x.dtype)
        calls.append(x.shape)
        return x * keep / (1 - p)

    return dropout, calls


@pytest.mark.parametrize("cls, kwargs", CONFIGS)
def test_eval_mode_matches_torch(cls, kwargs):
    ref, fast = make_pair(cls, I, H, dropout=0.4, dtype=F64, **kwargs)
    ref.eval(), fast.eval()
    assert_parity(ref, fast, _input(kwargs), _hx(cls, kwargs))
    assert_parity(ref, fast, _input(kwargs))


@pytest.mark.parametrize("cls, kwargs", CONFIGS)
def test_p_one_in_training_matches_torch(cls, kwargs):
    """p = 1 drops everything deterministically: layer k > 1 sees zeros, in both."""
    ref, fast = make_pair(cls, I, H, dropout=1.0, dtype=F64, **kwargs)
    ref.train(), fast.train()
    assert_parity(ref, fast, _input(kwargs), _hx(cls, kwargs))


@pytest.mark.parametrize("cls, kwargs", CONFIGS)
def test_dropout_called_between_layers_only(cls, kwargs, monkeypatch):
    """Exactly L-1 calls, with p and training=True, each on the output of layers 1..L-1."""
    ref, fast = make_pair(cls, I, H, dropout=0.3, dtype=F64, **kwargs)
    ref.eval()
    fast.train()
    seen = []

    def spy(x, p=0.5, training=True, inplace=False):
        seen.append((x.detach().clone(), p, training, inplace))
        return x  # identity: the model then computes what torch's eval model computes

    monkeypatch.setattr(F, "dropout", spy)
    x, hx = _input(kwargs), _hx(cls, kwargs)
    out, state = fast(x, hx)
    layers = kwargs["num_layers"]
    assert len(seen) == layers - 1
    assert all(p == 0.3 and training and not inplace for _, p, training, inplace in seen)

    # what each call received is the output of the first k layers (torch.nn, time-major rows)
    sd = ref.state_dict()
    for k, (received, *_) in enumerate(seen, start=1):
        partial = getattr(nn, cls)(I, H, dtype=F64, **dict(kwargs, num_layers=k))
        partial.load_state_dict({key: v for key, v in sd.items() if int(key.split("_l")[1][0]) < k})
        d = 2 if kwargs.get("bidirectional") else 1
        if cls == "LSTM":
            h = (hx[0][: k * d], hx[1][: k * d])
        else:
            h = hx[: k * d]
        with torch.no_grad():
            y, _ = partial(x, h)
        if kwargs.get("batch_first"):
            y = y.transpose(0, 1)
        # received: (T, B, F) time-major, the layout the layers pass to each other
        torch.testing.assert_close(received.reshape(-1, received.shape[-1]), y.reshape(-1, y.shape[-1]), **TOL[F64])

    # the final output and h_n / c_n are not dropped: identity dropout == torch eval
    out_ref, state_ref = ref(x, hx)
    torch.testing.assert_close(out, out_ref, **TOL[F64])
    torch.testing.assert_close(state, state_ref, **TOL[F64])


@pytest.mark.parametrize("cls, kwargs", CONFIGS)
def test_fixed_mask_matches_torch_stack_with_gradients(cls, kwargs, monkeypatch):
    """With one deterministic mask, fastrnn == single-layer torch.nn modules + that mask."""
    p = 0.4
    ref, fast = make_pair(cls, I, H, dropout=p, dtype=F64, **kwargs)
    fast.train()
    dropout, calls = _fixed_mask_dropout(p)
    monkeypatch.setattr(F, "dropout", dropout)
    mask_twin, _ = _fixed_mask_dropout(p)
    stack = TorchStack(cls, kwargs, ref.state_dict(), mask_twin)
    # same parameter order as the fastrnn module (gradients are compared in order)
    assert [tuple(p.shape) for p in stack.parameters()] == [tuple(p.shape) for p in fast.parameters()]
    assert_parity(stack, fast, _input(kwargs), _hx(cls, kwargs))
    assert len(calls) == kwargs["num_layers"] - 1  # only fastrnn calls F.dropout here


@pytest.mark.parametrize("cls, kwargs", CONFIGS)
@pytest.mark.parametrize("training, p", [(False, 0.3), (True, 0.0)], ids=["eval-p0.3", "train-p0"])
def test_no_dropout_call_when_inactive(cls, kwargs, training, p, monkeypatch):
    fast = getattr(fastrnn, cls)(I, H, dropout=p, dtype=F64, **kwargs).train(training)
    calls = []
    monkeypatch.setattr(F, "dropout", lambda x, *a, **k: calls.append(1) or x)
    fast(_input(kwargs))
    assert calls == []


@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
def test_one_layer_with_dropout_warns_like_torch_and_is_inactive(cls):
    with warnings.catch_warnings(record=True) as w_ref:
        warnings.simplefilter("always")
        ref = getattr(nn, cls)(I, H, dropout=0.5, dtype=F64)
    with warnings.catch_warnings(record=True) as w_fast:
        warnings.simplefilter("always")
        fast = getattr(fastrnn, cls)(I, H, dropout=0.5, dtype=F64)
    assert [str(w.message) for w in w_ref] != []
    assert [(w.category, str(w.message)) for w in w_fast] == [(w.category, str(w.message)) for w in w_ref]
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=F64)
    with torch.no_grad():
        out_train = fast.train()(x)[0]
        out_eval = fast.eval()(x)[0]
        out_ref = ref.train()(x)[0]
    torch.testing.assert_close(out_train, out_eval, rtol=0, atol=0)
    torch.testing.assert_close(out_train, out_ref, **TOL[F64])


@pytest.mark.parametrize("cls, kwargs", CONFIGS)
def test_training_differs_from_eval_and_is_seeded(cls, kwargs):
    fast = getattr(fastrnn, cls)(I, H, dropout=0.5, dtype=F64, **kwargs)
    x = torch.randn(*_input(kwargs).shape, dtype=F64)
    with torch.no_grad():
        out_eval = fast.eval()(x)[0]
        fast.train()
        torch.manual_seed(11)
        out_a = fast(x)[0]
        torch.manual_seed(11)
        out_b = fast(x)[0]
        torch.manual_seed(12)
        out_c = fast(x)[0]
    assert not torch.allclose(out_a, out_eval)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    assert not torch.equal(out_a, out_c)
