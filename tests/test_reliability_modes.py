"""Reliability 5, 7, 8: determinism, backward modes, pickle / deepcopy / torch.save.

Expected values come from torch.nn run in the same test (``helpers.assert_parity``) or,
for determinism and serialisation, from fastrnn's own first run compared bitwise.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from helpers import TOL, assert_parity, make_pair, run_with_grads

BACKENDS = ["reference", "triton"]
SEQ_CASES = [
    pytest.param("RNN", dict(nonlinearity="tanh"), id="RNN_TANH"),
    pytest.param("RNN", dict(nonlinearity="relu"), id="RNN_RELU"),
    pytest.param("LSTM", dict(proj_size=3), id="LSTM-proj"),
    pytest.param("LSTM", {}, id="LSTM"),
    pytest.param("GRU", {}, id="GRU"),
]
ALL_CLASSES = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]

# tiny shapes: the triton cases run in the interpreter
I, H, T, B = 3, 4, 3, 3


def _out_size(cls, kw):
    return kw.get("proj_size") or H


def _hx(cls, kw, layer_dirs, batch=B, dtype=torch.float64, requires_grad=True):
    h = torch.randn(layer_dirs, batch, _out_size(cls, kw), dtype=dtype, requires_grad=requires_grad)
    if cls == "LSTM":
        return h, torch.randn(layer_dirs, batch, H, dtype=dtype, requires_grad=requires_grad)
    return h


# --------------------------------------------------------------------------------------
# 5. Determinism
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("cls, kw", SEQ_CASES)
def test_two_identical_runs_are_bitwise_identical(cls, kw, layout, backend):
    """float32 (where summation order shows): outputs and every gradient, bit for bit."""
    fast = make_pair(cls, I, H, num_layers=2, bidirectional=True, backend=backend, **kw)[1]
    x = torch.randn(T, B, I, requires_grad=True)
    inp = pack_padded_sequence(x, torch.tensor([2, 3, 1]), enforce_sorted=False) if layout == "packed" else x
    hx = _hx(cls, kw, 4, dtype=torch.float32)
    first = run_with_grads(fast, inp, hx)
    second = run_with_grads(fast, inp, hx)
    for what, a_list, b_list in zip(("output", "input/hx grad", "param grad"), first, second):
        assert len(a_list) == len(b_list) > 0
        for k, (a, b) in enumerate(zip(a_list, b_list)):
            assert torch.equal(a, b), f"{what}[{k}] differs between two identical runs"


# --------------------------------------------------------------------------------------
# 7. Backward modes
# --------------------------------------------------------------------------------------


def _loss(result):
    gen = torch.Generator().manual_seed(7)
    tensors = [result] if torch.is_tensor(result) else [t for r in result for t in ([r] if torch.is_tensor(r) else r)]
    return sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in tensors)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, kw", SEQ_CASES)
def test_retain_graph_second_backward_doubles_gradients(cls, kw, backend):
    ref, fast = make_pair(cls, I, H, num_layers=2, backend=backend, dtype=torch.float64, **kw)
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = _hx(cls, kw, 2, requires_grad=False)
    grads = {}
    for name, module in (("torch.nn", ref), ("fastrnn", fast)):
        xl = x.clone().requires_grad_()
        hl = tuple(h.clone().requires_grad_() for h in hx) if cls == "LSTM" else hx.clone().requires_grad_()
        leaves = [xl, *(hl if cls == "LSTM" else (hl,)), *module.parameters()]
        loss = _loss(module(xl, hl))
        loss.backward(retain_graph=True)
        once = [t.grad.clone() for t in leaves]
        loss.backward()
        twice = [t.grad.clone() for t in leaves]
        grads[name] = (once, twice)
    once, twice = grads["fastrnn"]
    for k, (a, b) in enumerate(zip(once, twice)):
        assert torch.equal(b, 2 * a), f"grad[{k}]: second backward did not add the same gradient"
    for k, (a, e) in enumerate(zip(twice, grads["torch.nn"][1])):
        torch.testing.assert_close(a, e, **TOL[torch.float64], msg=lambda m: f"grad[{k}]: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, kw", SEQ_CASES)
def test_backward_in_eval_mode_matches_torch(cls, kw, backend):
    """eval() switches inter-layer dropout off; training through it still works."""
    ref, fast = make_pair(cls, I, H, num_layers=2, dropout=0.5, backend=backend, dtype=torch.float64, **kw)
    ref.eval(), fast.eval()
    assert not fast.training
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    assert_parity(ref, fast, x, _hx(cls, kw, 2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, kw", SEQ_CASES)
def test_gradient_flows_to_h0_only(cls, kw, backend):
    """Parameters frozen, input without grad: only h0 (and not c0) requires grad."""
    ref, fast = make_pair(cls, I, H, num_layers=2, bidirectional=True, backend=backend, dtype=torch.float64, **kw)
    for p in (*ref.parameters(), *fast.parameters()):
        p.requires_grad_(False)
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = _hx(cls, kw, 4, requires_grad=False)
    hx = (hx[0].requires_grad_(), hx[1]) if cls == "LSTM" else hx.requires_grad_()
    assert_parity(ref, fast, x, hx)


def _single_parameter_cases(backend):
    """(cls, kw, layers, bidirectional): the full module for reference, a small one in the
    interpreter."""
    if backend == "reference":
        return [(c.values[0], c.values[1], 2, True) for c in SEQ_CASES]
    return [(c.values[0], c.values[1], 1, False) for c in SEQ_CASES]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_flows_to_one_parameter_only(backend):
    """Each parameter in turn is the only thing requiring grad."""
    for cls, kw, layers, bidirectional in _single_parameter_cases(backend):
        ref, fast = make_pair(cls, I, H, num_layers=layers, bidirectional=bidirectional, backend=backend,
                              dtype=torch.float64, **kw)
        layer_dirs = layers * (2 if bidirectional else 1)
        x = torch.randn(T, B, I, dtype=torch.float64)
        hx = _hx(cls, kw, layer_dirs, requires_grad=False)
        names = [n for n, _ in fast.named_parameters()]
        for name in names:
            for module in (ref, fast):
                for n, p in module.named_parameters():
                    p.requires_grad_(n == name)
            assert [n for n, p in fast.named_parameters() if p.requires_grad] == [name]
            assert_parity(ref, fast, x, hx)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cell_backward_modes_match_torch(cls, backend):
    ref, fast = make_pair(cls, I, H, backend=backend, dtype=torch.float64)
    x = torch.randn(B, I, dtype=torch.float64)
    n = 2 if cls == "LSTMCell" else 1
    states = [torch.randn(B, H, dtype=torch.float64) for _ in range(n)]
    # only h0 requires grad, parameters frozen
    for p in (*ref.parameters(), *fast.parameters()):
        p.requires_grad_(False)
    hx = (states[0].requires_grad_(), states[1]) if n == 2 else states[0].requires_grad_()
    assert_parity(ref, fast, x, hx)
    # one parameter at a time, eval mode
    ref.eval(), fast.eval()
    for name, _ in fast.named_parameters():
        for module in (ref, fast):
            for k, p in module.named_parameters():
                p.requires_grad_(k == name)
        assert_parity(ref, fast, x.clone().requires_grad_(), hx)


# --------------------------------------------------------------------------------------
# 8. Pickle / deepcopy / torch.save
# --------------------------------------------------------------------------------------


def _module_and_input(cls, backend):
    kwargs = dict(num_layers=2, bidirectional=True) if "Cell" not in cls else {}
    if cls == "LSTM":
        kwargs["proj_size"] = 3
    fast = make_pair(cls, I, H, backend=backend, **kwargs)[1]
    x = torch.randn((T, B, I) if "Cell" not in cls else (B, I))
    return fast, x


def _pickle(m):
    return pickle.loads(pickle.dumps(m))


def _torch_save_load(m):
    buffer = io.BytesIO()
    torch.save(m, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)  # a whole module needs full unpickling


def _state_dict_only(m):
    """The weights-only route: state_dict through torch.save, into a fresh module."""
    buffer = io.BytesIO()
    torch.save(m.state_dict(), buffer)
    buffer.seek(0)
    fresh = copy.deepcopy(m)
    for p in fresh.parameters():
        torch.nn.init.zeros_(p)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


ROUND_TRIPS = {"pickle": _pickle, "deepcopy": copy.deepcopy, "torch.save": _torch_save_load,
               "state_dict": _state_dict_only}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("route", list(ROUND_TRIPS))
@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_round_trip_keeps_backend_and_outputs(cls, route, backend):
    fast, x = _module_and_input(cls, backend)
    copy_ = ROUND_TRIPS[route](fast)
    assert type(copy_) is type(fast)
    assert copy_.backend == backend
    assert repr(copy_) == repr(fast)
    assert copy_ is not fast
    for (name, a), (name_b, b) in zip(fast.state_dict().items(), copy_.state_dict().items()):
        assert name == name_b and torch.equal(a, b), name
        assert a.data_ptr() != b.data_ptr(), f"{name} shares storage with the original"
    expected = fast(x)
    actual = copy_(x)
    expected = [expected] if torch.is_tensor(expected) else [t for r in expected for t in
                                                             ([r] if torch.is_tensor(r) else r)]
    actual = [actual] if torch.is_tensor(actual) else [t for r in actual for t in ([r] if torch.is_tensor(r) else r)]
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)
    # the copy trains: gradients reach its own parameters, not the original's
    _loss(copy_(x)).backward()
    assert all(p.grad is not None for p in copy_.parameters())
    assert all(p.grad is None for p in fast.parameters())
