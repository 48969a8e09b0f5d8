"""torch.func transforms through fastrnn layers (issue 8, items 4 and 5).

``torch.func.grad``, ``vjp``, ``jacrev``, ``vmap`` (over a batch of inputs, and over
stacked parameters with ``functional_call``) and ``functional_call`` give torch.nn's
results (float64; torch.nn's own modules have no vmap rule, so the reference for vmap is
a Python loop over torch.nn calls). Forward-mode AD (``torch.func.jvp``, ``jacfwd``,
``torch.func.hessian``, ``torch.autograd.forward_ad``) is refused before any work with an
error that names the reverse-mode alternatives; those alternatives are shown to work.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vjp, vmap
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn.ops import FORWARD_AD_MESSAGE
from helpers import TOL

F64 = torch.float64
TOL64 = TOL[F64]
MODULES = [
    pytest.param("LSTM", dict(num_layers=2, bidirectional=True), id="LSTM-L2-bidir"),
    pytest.param("LSTM", dict(proj_size=2), id="LSTM-proj2"),
    pytest.param("GRU", dict(), id="GRU"),
    pytest.param("RNN", dict(nonlinearity="relu"), id="RNN-relu"),
    pytest.param("LSTMCell", dict(), id="LSTMCell"),
    pytest.param("GRUCell", dict(), id="GRUCell"),
    pytest.param("RNNCell", dict(), id="RNNCell"),
]


def _pair(cls, kwargs, backend="reference"):
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(3, 4, dtype=F64, **kwargs)
    fast = getattr(fastrnn, cls)(3, 4, dtype=F64, backend=backend, **kwargs)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _x(cls, *lead, seed=1):
    gen = torch.Generator().manual_seed(seed)
    shape = (*lead, 2, 3) if cls.endswith("Cell") else (*lead, 5, 2, 3)
    return torch.randn(shape, generator=gen, dtype=F64)


def _first(out):
    """The main output of a module call: ``output`` of a layer, ``h'`` of a cell."""
    return out[0] if isinstance(out, tuple) else out


def _close_trees(a, b):
    la, lb = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    assert len(la) == len(lb) and len(la) > 0
    for u, v in zip(la, lb):
        torch.testing.assert_close(u, v, **TOL64)


@pytest.mark.parametrize("cls, kwargs", MODULES)
def test_grad_of_parameters_and_input(cls, kwargs):
    ref, fast = _pair(cls, kwargs)
    x = _x(cls)
    params = {k: v.detach() for k, v in ref.named_parameters()}

    def loss(module):
        return lambda p, x: _first(functional_call(module, p, (x,))).pow(3).sum()

    _close_trees(grad(loss(fast), argnums=(0, 1))(params, x), grad(loss(ref), argnums=(0, 1))(params, x))


@pytest.mark.parametrize("cls, kwargs", MODULES)
def test_jacrev_and_vjp(cls, kwargs):
    ref, fast = _pair(cls, kwargs)
    x = _x(cls)
    j_ref = jacrev(lambda x: _first(ref(x)))(x)
    j_fast = jacrev(lambda x: _first(fast(x)))(x)
    assert j_ref.abs().max() > 1e-3
    _close_trees(j_fast, j_ref)
    out, fn = vjp(lambda x: _first(fast(x)), x)
    v = torch.randn_like(out)
    (g,) = fn(v)
    _close_trees(g, torch.einsum("...,...abc->abc" if not cls.endswith("Cell") else "...,...ab->ab", v, j_ref))


@pytest.mark.parametrize("cls, kwargs", MODULES)
def test_vmap_over_a_batch_of_inputs(cls, kwargs):
    ref, fast = _pair(cls, kwargs)
    xs = _x(cls, 3)
    got = vmap(lambda x: fast(x))(xs)
    want = [ref(x) for x in xs]
    want = torch.utils._pytree.tree_map(lambda *ts: torch.stack(ts), *want)
    _close_trees(got, want)


@pytest.mark.parametrize("cls, kwargs", MODULES)
def test_vmap_over_stacked_parameters(cls, kwargs):
    """An ensemble: the same input through two parameter sets."""
    ref, fast = _pair(cls, kwargs)
    x = _x(cls)
    stacked = {k: torch.stack([v.detach(), 0.8 * v.detach()]) for k, v in ref.named_parameters()}
    got = vmap(lambda p: functional_call(fast, p, (x,)))(stacked)
    want = [functional_call(ref, {k: v[i] for k, v in stacked.items()}, (x,)) for i in range(2)]
    want = torch.utils._pytree.tree_map(lambda *ts: torch.stack(ts), *want)
    _close_trees(got, want)


def test_per_sample_gradients_vmap_of_grad():
    """vmap(grad(...)): per-sample weight gradients, the torch.func recipe."""
    ref, fast = _pair("GRU", {})
    xs = _x("GRU", 3)
    params = {k: v.detach() for k, v in ref.named_parameters()}

    def loss(module):
        return lambda p, x: functional_call(module, p, (x,))[0].pow(2).sum()

    got = vmap(grad(loss(fast)), in_dims=(None, 0))(params, xs)
    want = [grad(loss(ref))(params, x) for x in xs]
    want = torch.utils._pytree.tree_map(lambda *ts: torch.stack(ts), *want)
    _close_trees(got, want)


def test_functional_call_with_packed_input():
    ref, fast = _pair("LSTM", dict(num_layers=2))
    x = _x("LSTM")
    pack = pack_padded_sequence(x, torch.tensor([5, 3]), enforce_sorted=False)
    params = {k: v.detach() * 1.1 for k, v in ref.named_parameters()}
    out_r, h_r = functional_call(ref, params, (pack,))
    out_f, h_f = functional_call(fast, params, (pack,))
    _close_trees((out_f.data, h_f), (out_r.data, h_r))


def test_grad_through_the_triton_backend():
    """torch.func.grad runs the triton forward (interpreter); its backward is the exact
    differentiable one (torch.func always builds the graph)."""
    ref, fast = _pair("LSTM", dict(), backend="triton")
    x = _x("LSTM")
    params = {k: v.detach() for k, v in ref.named_parameters()}

    def loss(module):
        return lambda p: functional_call(module, p, (x,))[0].pow(2).sum()

    _close_trees(grad(loss(fast))(params), grad(loss(ref))(params))


# --------------------------------------------------------------------------------------
# Forward-mode AD: refused, with what to use instead
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("transform", ["jvp", "jacfwd", "hessian", "forward_ad"])
@pytest.mark.parametrize("cls", ["LSTM", "GRUCell"])
def test_forward_mode_is_refused_with_a_clear_error(cls, transform, monkeypatch):
    _, fast = _pair(cls, {})
    x = _x(cls)
    ran = []
    import fastrnn.ops as ops

    real = ops.LayerFunction.apply
    monkeypatch.setattr(ops.LayerFunction, "apply", lambda *a: ran.append(1) or real(*a))

    def f(x):
        return _first(fast(x)).sum()

    with pytest.raises(RuntimeError, match="forward-mode AD") as info:
        if transform == "jvp":
            jvp(f, (x,), (torch.ones_like(x),))
        elif transform == "jacfwd":
            jacfwd(f)(x)
        elif transform == "hessian":
            torch.func.hessian(f)(x)
        else:
            with fwAD.dual_level():
                f(fwAD.make_dual(x, torch.ones_like(x)))
    assert str(info.value) == FORWARD_AD_MESSAGE
    assert "jacrev" in str(info.value) and "hessian" in str(info.value)
    assert ran == []  # refused before any work


def test_the_named_alternatives_work():
    """What the message recommends instead of forward mode: reverse-over-reverse."""
    ref, fast = _pair("GRU", {})
    x = _x("GRU")
    h_ref = torch.autograd.functional.hessian(lambda x: ref(x)[0].pow(3).sum(), x)
    h_fast = torch.autograd.functional.hessian(lambda x: fast(x)[0].pow(3).sum(), x)
    _close_trees(h_fast, h_ref)
    j_ref = jacrev(jacrev(lambda x: ref(x)[0].pow(3).sum()))(x)
    j_fast = jacrev(jacrev(lambda x: fast(x)[0].pow(3).sum()))(x)
    _close_trees(j_fast, j_ref)
