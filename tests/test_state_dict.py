"""state_dict, parameters and repr are torch.nn's own.

For every module kind (incl. proj_size, bidirectional, several layers, no bias): the
state_dict has torch's keys and shapes; it loads both ways with ``strict=True``; after
loading, both modules give the same outputs; ``parameters()`` / ``named_parameters()``
come in torch's order; ``repr`` is torch's when ``backend`` is None.
"""

from __future__ import annotations

import pytest
import torch

import fastrnn
from helpers import TOL

F64 = torch.float64

MODULES = [
    pytest.param("RNN", (5, 3), dict(), id="RNN-L1"),
    pytest.param("RNN", (5, 3), dict(num_layers=2, nonlinearity="relu", bidirectional=True), id="RNN-relu-L2-bidir"),
    pytest.param("RNN", (1, 17), dict(num_layers=3, bias=False), id="RNN-L3-nobias-H17-I1"),
    pytest.param("LSTM", (5, 3), dict(), id="LSTM-L1"),
    pytest.param("LSTM", (5, 3), dict(num_layers=2, bidirectional=True), id="LSTM-L2-bidir"),
    pytest.param("LSTM", (5, 17), dict(num_layers=2, proj_size=5), id="LSTM-L2-proj5-H17"),
    pytest.param("LSTM", (5, 17), dict(num_layers=3, proj_size=2, bidirectional=True, bias=False),
                 id="LSTM-L3-bidir-proj2-nobias"),
    pytest.param("LSTM", (5, 3), dict(batch_first=True, dropout=0.25, num_layers=2), id="LSTM-L2-bf-dropout"),
    pytest.param("GRU", (5, 3), dict(), id="GRU-L1"),
    pytest.param("GRU", (5, 3), dict(num_layers=2, bidirectional=True), id="GRU-L2-bidir"),
    pytest.param("GRU", (1, 1), dict(bias=False), id="GRU-nobias-H1-I1"),
    pytest.param("RNNCell", (5, 3), dict(), id="RNNCell"),
    pytest.param("RNNCell", (5, 3), dict(nonlinearity="relu", bias=False), id="RNNCell-relu-nobias"),
    pytest.param("LSTMCell", (5, 3), dict(), id="LSTMCell"),
    pytest.param("LSTMCell", (1, 17), dict(bias=False), id="LSTMCell-nobias-H17-I1"),
    pytest.param("GRUCell", (5, 3), dict(), id="GRUCell"),
]


def _build(cls, args, kwargs, fast: bool, **extra):
    mod = getattr(fastrnn if fast else torch.nn, cls)(*args, dtype=F64, **kwargs, **extra)
    return mod.eval()


def _input(cls, args, kwargs):
    if cls.endswith("Cell"):
        return torch.randn(4, args[0], dtype=F64)
    return torch.randn(4, 6, args[0], dtype=F64)  # (T, B, I), or (B, T, I) with batch_first


def _assert_same_outputs(a, b, x):
    with torch.no_grad():
        out_a, out_b = a(x), b(x)
    flat_a = [out_a] if torch.is_tensor(out_a) else [out_a[0], *(out_a[1] if isinstance(out_a[1], tuple) else [out_a[1]])]
    flat_b = [out_b] if torch.is_tensor(out_b) else [out_b[0], *(out_b[1] if isinstance(out_b[1], tuple) else [out_b[1]])]
    assert len(flat_a) == len(flat_b)
    for ta, tb in zip(flat_a, flat_b):
        torch.testing.assert_close(ta, tb, **TOL[F64])


@pytest.mark.parametrize("cls, args, kwargs", MODULES)
def test_same_keys_and_shapes(cls, args, kwargs):
    ref, fast = _build(cls, args, kwargs, False), _build(cls, args, kwargs, True)
    sd_ref, sd_fast = ref.state_dict(), fast.state_dict()
    assert list(sd_fast) == list(sd_ref)
    assert [v.shape for v in sd_fast.values()] == [v.shape for v in sd_ref.values()]
    assert [v.dtype for v in sd_fast.values()] == [v.dtype for v in sd_ref.values()]


@pytest.mark.parametrize("cls, args, kwargs", MODULES)
def test_torch_to_fastrnn_strict(cls, args, kwargs):
    ref, fast = _build(cls, args, kwargs, False), _build(cls, args, kwargs, True)
    result = fast.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in ref.state_dict().items():
        assert torch.equal(fast.state_dict()[key], value), key
    _assert_same_outputs(fast, ref, _input(cls, args, kwargs))


@pytest.mark.parametrize("cls, args, kwargs", MODULES)
def test_fastrnn_to_torch_strict(cls, args, kwargs):
    fast = _build(cls, args, kwargs, True)
    torch.manual_seed(123)  # a different init for the receiver, so loading must change it
    ref = _build(cls, args, kwargs, False)
    assert any(not torch.equal(a, b) for a, b in zip(ref.state_dict().values(), fast.state_dict().values()))
    result = ref.load_state_dict(fast.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in fast.state_dict().items():
        assert torch.equal(ref.state_dict()[key], value), key
    _assert_same_outputs(fast, ref, _input(cls, args, kwargs))


@pytest.mark.parametrize("cls, args, kwargs", MODULES)
def test_parameter_order_and_shapes(cls, args, kwargs):
    ref, fast = _build(cls, args, kwargs, False), _build(cls, args, kwargs, True)
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert [p.shape for p in fast.parameters()] == [p.shape for p in ref.parameters()]
    assert [n for n, _ in fast.named_buffers()] == [n for n, _ in ref.named_buffers()]


@pytest.mark.parametrize("cls, args, kwargs", MODULES)
def test_same_init_under_same_seed(cls, args, kwargs):
    """The constructor is torch's: the same seed gives the same parameters."""
    torch.manual_seed(7)
    ref = _build(cls, args, kwargs, False)
    torch.manual_seed(7)
    fast = _build(cls, args, kwargs, True)
    for (name, a), b in zip(fast.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("cls, args, kwargs", MODULES)
def test_repr_is_torchs_without_backend(cls, args, kwargs):
    ref, fast = _build(cls, args, kwargs, False), _build(cls, args, kwargs, True)
    assert repr(fast) == repr(ref)
    named = _build(cls, args, kwargs, True, backend="reference")
    assert "backend='reference'" in repr(named)
    assert repr(named).replace(", backend='reference'", "") == repr(ref)


@pytest.mark.parametrize("cls, args, kwargs", MODULES)
def test_class_hierarchy(cls, args, kwargs):
    """``isinstance(m, torch.nn.RNNBase)`` holds, ``isinstance(m, torch.nn.LSTM)`` does not.

    TorchDynamo refuses to trace any instance of ``torch.nn.RNN``, ``GRU`` or ``LSTM``
    (``torch._dynamo.config.allow_rnn``), so the layers subclass ``RNNBase`` to stay
    compilable (tests/test_op_compile.py). Their methods are still torch's own.
    """
    fast = _build(cls, args, kwargs, True)
    torch_cls = getattr(torch.nn, cls)
    if cls.endswith("Cell"):  # TorchDynamo has no such check on the cells: torch's subclasses
        assert isinstance(fast, torch_cls)
    else:
        assert isinstance(fast, torch.nn.RNNBase)
        assert not isinstance(fast, torch_cls)
    assert type(fast).__name__ == cls
    if cls == "LSTM":
        assert type(fast).check_forward_args is torch.nn.LSTM.check_forward_args
        assert type(fast).permute_hidden is torch.nn.LSTM.permute_hidden
