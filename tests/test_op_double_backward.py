"""Second derivatives through fastrnn layers are exact (issue 8, item 1).

A first-order backward runs the handwritten engine (``torch.ops.fastrnn.layer_backward``);
a backward that must itself be differentiated (``create_graph=True``) runs
:func:`fastrnn.differentiable.layer_backward`, plain differentiable torch ops. Checked here,
in float64:

- ``gradgradcheck`` (finite differences of the gradient) for every kind — RNN tanh/relu,
  LSTM with and without ``proj_size``, GRU, the three cells — padded and packed, on the
  reference backend and (a subset, in Triton's interpreter) the triton backend; the
  differentiated inputs are x, h0, c0 and every parameter;
- ``torch.autograd.functional.hessian`` / ``hvp`` equal torch.nn's;
- a gradient-penalty loss gives torch.nn's weight gradients (the penalty's share included);
- torch's own ``test_LSTM_grad_and_gradgrad`` / ``test_GRU_grad_and_gradgrad`` recipe;
- which backward runs when: the fast op for first order, the differentiable one under
  ``create_graph``.

Tolerances: gradgradcheck's defaults (atol 1e-5, rtol 1e-3 on finite differences with
eps 1e-6 in float64); comparisons with torch.nn in float64 use the project's float64 TOL
(both sides do the same math in a different order).

ReLU: a finite difference straddling a pre-activation of 0 sees neither slope. The relu
cases draw weights from seeds 0, 1, ... and keep the first whose every pre-activation
(recomputed by a plain loop here) is at least ``RELU_MARGIN`` from 0.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.autograd import gradgradcheck
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
import fastrnn.differentiable as differentiable
import fastrnn.engine
from helpers import TOL

F64 = torch.float64
T, B, I, H = 3, 2, 2, 3
LENGTHS = torch.tensor([3, 1])  # unsorted when reversed below: exercises sorted_indices
RELU_MARGIN = 1e-3

LAYER_CASES = [
    pytest.param("RNN", dict(nonlinearity="tanh"), id="RNN-tanh"),
    pytest.param("RNN", dict(nonlinearity="relu"), id="RNN-relu"),
    pytest.param("LSTM", dict(), id="LSTM"),
    pytest.param("LSTM", dict(proj_size=2), id="LSTM-proj2"),
    pytest.param("GRU", dict(), id="GRU"),
    pytest.param("LSTM", dict(num_layers=2, bidirectional=True), id="LSTM-L2-bidir"),
    pytest.param("GRU", dict(bidirectional=True, bias=False), id="GRU-bidir-nobias"),
]
CELL_CASES = [
    pytest.param("RNNCell", dict(nonlinearity="tanh"), id="RNNCell-tanh"),
    pytest.param("RNNCell", dict(nonlinearity="relu"), id="RNNCell-relu"),
    pytest.param("LSTMCell", dict(), id="LSTMCell"),
    pytest.param("GRUCell", dict(), id="GRUCell"),
]


def _pair(cls, kwargs, backend="reference", seed=0):
    torch.manual_seed(seed)
    ref = getattr(torch.nn, cls)(I, H, dtype=F64, **kwargs)
    fast = getattr(fastrnn, cls)(I, H, dtype=F64, backend=backend, **kwargs)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _relu_margin_ok(module, x, h0) -> bool:
    """Every pre-activation of a one-layer relu RNN / RNNCell is at least RELU_MARGIN from 0."""
    w_ih, w_hh, b_ih, b_hh = (getattr(module, n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")) \
        if hasattr(module, "weight_ih") else (module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0)
    with torch.no_grad():
        seq = x if x.dim() == 3 else x.unsqueeze(0)
        h = h0.reshape(-1, w_hh.shape[1])
        for t in range(seq.shape[0]):
            pre = seq[t] @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh
            if pre.abs().min() < RELU_MARGIN:
                return False
            h = pre.relu()
    return True


def _problem(cls, kwargs, backend="reference"):
    """``(ref, fast, x, states)``; for relu, the first seed whose pre-activations are clear of 0."""
    cell = cls.endswith("Cell")
    for seed in range(50):
        ref, fast = _pair(cls, kwargs, backend, seed)
        gen = torch.Generator().manual_seed(100 + seed)
        x = torch.randn((B, I) if cell else (T, B, I), generator=gen, dtype=F64)
        if cell:
            states = [torch.randn(B, H, generator=gen, dtype=F64) for _ in range(2 if cls == "LSTMCell" else 1)]
        else:
            d = 2 if kwargs.get("bidirectional") else 1
            layers = kwargs.get("num_layers", 1) * d
            out = kwargs.get("proj_size") or H
            states = [torch.randn(layers, B, out, generator=gen, dtype=F64)]
            if cls == "LSTM":
                states.append(torch.randn(layers, B, H, generator=gen, dtype=F64))
        if kwargs.get("nonlinearity") != "relu" or _relu_margin_ok(ref, x, states[0]):
            return ref, fast, x, states
    raise AssertionError("no seed keeps the relu pre-activations clear of 0")


def _call(module, names, cls, packed, x, *rest):
    """Module output as a flat tuple, with ``rest`` = states then parameters (by ``names``)."""
    n_states = len(rest) - len(names)
    states, params = rest[:n_states], rest[n_states:]
    if cls.endswith("Cell"):
        hx = states[0] if cls != "LSTMCell" else tuple(states)
        out = functional_call(module, dict(zip(names, params)), (x, hx))
        return out if isinstance(out, tuple) else (out,)
    hx = states[0] if cls != "LSTM" else tuple(states)
    inp = pack_padded_sequence(x, LENGTHS, enforce_sorted=False) if packed else x
    out, h = functional_call(module, dict(zip(names, params)), (inp, hx))
    y = out.data if packed else out
    return (y, *(h if isinstance(h, tuple) else (h,)))


def _gradgradcheck(module, cls, packed, x, states, fast_mode=False):
    names = [n for n, _ in module.named_parameters()]
    leaves = [t.detach().clone().requires_grad_() for t in (x, *states, *module.parameters())]
    fn = functools.partial(_call, module, names, cls, packed)
    return gradgradcheck(fn, leaves, fast_mode=fast_mode)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cls, kwargs", LAYER_CASES)
def test_gradgradcheck_layers_reference(cls, kwargs, packed):
    _, fast, x, states = _problem(cls, kwargs)
    # the 2-layer bidirectional stack has ~400 inputs: random projections (fast_mode), 1 s not 20 s
    assert _gradgradcheck(fast, cls, packed, x, states, fast_mode=kwargs.get("num_layers", 1) > 1)


@pytest.mark.parametrize("cls, kwargs", CELL_CASES)
def test_gradgradcheck_cells_reference(cls, kwargs):
    _, fast, x, states = _problem(cls, kwargs)
    assert _gradgradcheck(fast, cls, False, x, states)


TRITON_CASES = [
    pytest.param("LSTM", dict(), True, id="LSTM-packed"),
    pytest.param("GRU", dict(bidirectional=True), False, id="GRU-bidir"),
    pytest.param("RNN", dict(nonlinearity="relu"), True, id="RNN-relu-packed"),
    pytest.param("LSTM", dict(proj_size=2), False, id="LSTM-proj2"),
    pytest.param("LSTMCell", dict(), False, id="LSTMCell"),
]


@pytest.mark.parametrize("cls, kwargs, packed", TRITON_CASES)
def test_gradgradcheck_triton(cls, kwargs, packed):
    """The forward runs the Triton kernels (interpreter); fast_mode keeps it to seconds."""
    _, fast, x, states = _problem(cls, kwargs, backend="triton")
    assert _gradgradcheck(fast, cls, packed, x, states, fast_mode=True)


def test_torch_LSTM_and_GRU_grad_and_gradgrad_recipe():
    """torch's test_nn ``test_LSTM_grad_and_gradgrad`` / ``test_GRU_grad_and_gradgrad``:
    gradcheck and gradgradcheck of the flattened module outputs w.r.t. the input, with and
    without bias — here with ``check_batched_grad`` on too (vmap over the backward)."""
    hsize = 4
    gen = torch.Generator().manual_seed(0)
    inp = torch.rand(1, 3, hsize, generator=gen, dtype=F64, requires_grad=True)
    for cls in ("LSTM", "GRU"):
        for bias in (True, False):
            mod = getattr(fastrnn, cls)(hsize, hsize, bias=bias, dtype=F64)

            def flat(x, mod=mod):
                out = mod(x)
                return tuple(t if isinstance(t, torch.Tensor) else tt for t in out for tt in t)

            assert torch.autograd.gradcheck(flat, inp, check_batched_grad=True)
            assert gradgradcheck(flat, inp, check_batched_grad=True)


def _loss(out):
    y = out[0]
    return (y.sin() * y).sum() + sum((h * h * h).sum() for h in (out[1] if isinstance(out[1], tuple) else (out[1],)))


@pytest.mark.parametrize("cls, kwargs", LAYER_CASES[:5])
def test_hessian_and_hvp_match_torch(cls, kwargs):
    ref, fast, x, states = _problem(cls, kwargs)
    hx = tuple(states) if cls == "LSTM" else states[0]
    h_ref = torch.autograd.functional.hessian(lambda x: _loss(ref(x, hx)), x)
    h_fast = torch.autograd.functional.hessian(lambda x: _loss(fast(x, hx)), x)
    assert h_ref.abs().max() > 1e-3  # a real, non-zero Hessian
    torch.testing.assert_close(h_fast, h_ref, **TOL[F64])

    # Hessian-vector product w.r.t. the recurrent weight
    v = torch.randn_like(ref.weight_hh_l0)

    def by_w(module):
        def f(w):
            return _loss(functional_call(module, {"weight_hh_l0": w}, (x, hx)))

        return torch.autograd.functional.hvp(f, module.weight_hh_l0.detach(), v)[1]

    hv_ref, hv_fast = by_w(ref), by_w(fast)
    assert hv_ref.abs().max() > 1e-3
    torch.testing.assert_close(hv_fast, hv_ref, **TOL[F64])


@pytest.mark.parametrize("cls, kwargs", LAYER_CASES + CELL_CASES)
def test_gradient_penalty_weight_gradients_match_torch(cls, kwargs):
    """loss = f(out) + 10 (||d out / d x|| - 1)^2: the penalty's share reaches every weight."""
    ref, fast, x, states = _problem(cls, kwargs)
    grads = []
    for module in (ref, fast):
        xx = x.clone().requires_grad_()
        if cls.endswith("Cell"):
            out = module(xx, tuple(states) if cls == "LSTMCell" else states[0])
            y = out[0] if isinstance(out, tuple) else out
        else:
            y = module(xx, tuple(states) if cls == "LSTM" else states[0])[0]
        (dx,) = torch.autograd.grad(y.pow(2).sum(), xx, create_graph=True)
        loss = y.sum() + 10 * (dx.norm() - 1) ** 2
        grads.append(torch.autograd.grad(loss, [xx, *module.parameters()]))
    for a, e in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, e, **TOL[F64])


def test_penalty_share_is_not_zero():
    """The double-backward term of the penalty is a real, non-zero contribution."""
    _, fast, x, states = _problem("LSTM", {})
    xx = x.clone().requires_grad_()
    y = fast(xx, tuple(states))[0]
    (dx,) = torch.autograd.grad(y.pow(2).sum(), xx, create_graph=True)
    penalty = (dx.norm() - 1) ** 2
    g = torch.autograd.grad(penalty, list(fast.parameters()))
    assert all(t.abs().max() > 1e-6 for t in g)


def test_first_order_runs_the_engine_and_create_graph_the_differentiable_path(monkeypatch):
    # The handwritten backward is counted where its weight gradients are made
    # (engine.weight_grads): eager CPU calls of the C++ loops reach it from fastrnn.eager_cpu,
    # other eager calls through the layer implementation (ops._EagerLayer), traced ones
    # through the fastrnn::layer_backward op; all end there.
    calls = {"engine": 0, "differentiable": 0}
    real_diff = differentiable.layer_backward
    real_engine = fastrnn.engine.weight_grads

    def spy_diff(*args, **kwargs):
        calls["differentiable"] += 1
        return real_diff(*args, **kwargs)

    def spy_engine(*args, **kwargs):
        calls["engine"] += 1
        return real_engine(*args, **kwargs)

    monkeypatch.setattr(differentiable, "layer_backward", spy_diff)
    monkeypatch.setattr(fastrnn.engine, "weight_grads", spy_engine)
    _, fast, x, states = _problem("GRU", {})
    xx = x.clone().requires_grad_()

    fast(xx, states[0])[0].sum().backward()
    assert calls == {"engine": 1, "differentiable": 0}

    calls.update(engine=0, differentiable=0)
    torch.autograd.grad(fast(xx, states[0])[0].sum(), xx, create_graph=True)
    assert calls == {"engine": 0, "differentiable": 1}
