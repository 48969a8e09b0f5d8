"""``auto`` on the CPU, through the modules: it runs what its rule says, with torch.nn's results.

The rule (:func:`fastrnn.backends.native.auto_cpu_backend`, README "Backends"):

- no gradients -> ``native`` (torch's own inference kernels);
- gradients, float32 LSTM, padded input, no ``proj_size``, not tracing -> ``native``
  (oneDNN's training kernels);
- every other call with gradients -> ``reference`` (fastrnn's own engine).

Each case below runs a module with the default backend (``FASTRNN_BACKEND`` unset), records
which engine ran (spies on both), checks it against the rule written out in ``_expected``
(independently of the code), and compares outputs and every gradient (input, h0, c0, each
parameter) with ``torch.nn`` and with the same module on ``backend="reference"``.

Then issue 8's guarantees for what ``auto`` picks: ``torch.compile(fullgraph=True)`` with
no recompilation for a new sequence length, ``torch.export``, ``torch.func.grad``, and exact
second derivatives (the oneDNN LSTM path included).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
import fastrnn.backends as backends
from fastrnn.backends import native, reference
from helpers import TOL, assert_close_all, assert_parity, make_pair

F32, F64 = torch.float32, torch.float64
VARIANTS = {  # id -> (class, kwargs)
    "LSTM": ("LSTM", {}),
    "LSTM-proj": ("LSTM", {"proj_size": 2}),
    "GRU": ("GRU", {}),
    "RNN_TANH": ("RNN", {"nonlinearity": "tanh"}),
    "RNN_RELU": ("RNN", {"nonlinearity": "relu"}),
}
I, H, T, B = 3, 5, 6, 3


def _expected(variant: str, form: str, dtype, grad: bool) -> str:
    """The rule, written out for the cases here."""
    if not grad:
        return "native"
    if variant == "LSTM" and form == "padded" and dtype == F32:
        return "native"
    return "reference"


@pytest.fixture
def engines(monkeypatch):
    """Which engine ran: 'native' (torch's kernels, by any of the backend's entries) or
    'reference' (fastrnn's time loop)."""
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    ran = []

    def spy(name, fn):
        def wrapper(*args, **kwargs):
            ran.append(name)
            return fn(*args, **kwargs)

        return wrapper

    for kind, op in list(native.VF_OPS.items()):
        monkeypatch.setitem(native.VF_OPS, kind, spy("native", op))
    for attr in ("layer_forward", "stack_inference"):
        monkeypatch.setattr(native, attr, spy("native", getattr(native, attr)))
    for cls in (fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU):
        monkeypatch.setattr(cls, "_torch_forward", spy("native", cls._torch_forward))
    monkeypatch.setattr(reference, "forward", spy("reference", reference.forward))
    return ran


def _inputs(cls, kwargs, form, dtype, layers_dirs=2):
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    inp = pack_padded_sequence(x, torch.tensor([4, 6, 1]), enforce_sorted=False) if form == "packed" else x
    out = kwargs.get("proj_size") or H
    h0 = torch.randn(layers_dirs, B, out, dtype=dtype, requires_grad=True)
    hx = (h0, torch.randn(layers_dirs, B, H, dtype=dtype, requires_grad=True)) if cls == "LSTM" else h0
    return inp, hx


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "nograd"])
@pytest.mark.parametrize("form", ["padded", "packed"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_auto_runs_the_rule_with_torch_results(variant, form, grad, dtype, engines):
    cls, kwargs = VARIANTS[variant]
    ref, auto = make_pair(cls, I, H, bidirectional=True, dtype=dtype, **kwargs)
    loop = make_pair(cls, I, H, bidirectional=True, dtype=dtype, backend="reference", **kwargs)[1]
    loop.load_state_dict(ref.state_dict())
    inp, hx = _inputs(cls, kwargs, form, dtype)
    if grad:
        engines.clear()
        assert_parity(ref, auto, inp, hx, dtype=dtype)
        ran = set(engines)
        assert_parity(loop, auto, inp, hx, dtype=dtype)
    else:
        with torch.no_grad():
            engines.clear()
            got = auto(inp, hx)
            ran = set(engines)
            for other in (ref, loop):
                assert_close_all(_tensors(got), _tensors(other(inp, hx)), dtype, f"output vs {other}")
    assert ran == {_expected(variant, form, dtype, grad)}


def _tensors(result):
    out, state = result
    out = out.data if hasattr(out, "batch_sizes") else out
    return [out, *(state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("variant", ["LSTM", "GRU", "RNN_TANH"])
def test_auto_multi_layer_batch_first_unbatched_and_cells(variant, engines):
    """Two layers with dropout in eval mode, batch_first, unbatched input, and the cells:
    still torch.nn's outputs and gradients (float32, training: LSTM on oneDNN)."""
    cls, kwargs = VARIANTS[variant]
    ref, auto = make_pair(cls, I, H, num_layers=2, batch_first=True, dropout=0.3, **kwargs)
    ref.eval()
    auto.eval()
    x = torch.randn(B, T, I, requires_grad=True)
    assert_parity(ref, auto, x, dtype=F32)
    assert_parity(ref, auto, torch.randn(T, I, requires_grad=True), dtype=F32)
    cell_ref, cell = make_pair(cls + "Cell", I, H, **kwargs)
    assert_parity(cell_ref, cell, torch.randn(B, I, requires_grad=True), dtype=F32)


def test_explicit_backends_are_kept(engines):
    """``backend="reference"`` never runs torch's kernels; ``backend="native"`` always does
    (and refuses gradients it cannot compute, before any work)."""
    x = torch.randn(T, B, I, requires_grad=True)
    ref, loop = make_pair("LSTM", I, H, backend="reference")
    loop(x)[0].sum().backward()
    assert set(engines) == {"reference"}
    engines.clear()
    nat = make_pair("GRU", I, H, backend="native")[1]
    with torch.no_grad():
        nat(x)
    assert set(engines) == {"native"}
    with pytest.raises(RuntimeError, match="backend 'native' computes gradients only for float32 LSTM"):
        nat(x)


def test_environment_variable_selects_native(monkeypatch, engines):
    monkeypatch.setenv(backends.ENV_VAR, "native")
    ref, fast = make_pair("LSTM", I, H)
    assert_parity(ref, fast, torch.randn(T, B, I, requires_grad=True), dtype=F32)
    assert set(engines) == {"native"}


# --------------------------------------------------------------------------------------
# Issue 8's guarantees for what auto picks
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_auto_second_derivatives_match_reference(cls, engines):
    """Double backward (float64 reference vs float32 auto: the oneDNN LSTM backward is
    differentiable in torch, GRU training runs the reference engine's exact path)."""
    ref, auto = make_pair(cls, I, H)
    loop = make_pair(cls, I, H, backend="reference", dtype=F64)[1]
    loop.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    x = torch.randn(T, B, I)
    results = []
    for module, dtype in ((auto, F32), (loop, F64)):
        xx = x.to(dtype).requires_grad_()
        y, _ = module(xx)
        (gx,) = torch.autograd.grad(y.pow(2).sum(), xx, create_graph=True)
        params = list(module.parameters())
        results.append([gx, *torch.autograd.grad(gx.pow(2).sum(), [xx, *params])])
    for a, e in zip(*results):
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-5)


def test_auto_under_torch_compile_does_not_recompile_per_length():
    """fullgraph, dynamic shapes: one graph per grad mode for every T; training traces the
    reference engine (oneDNN's workspace has no size before it runs), inference the native
    op; results are torch.nn's."""
    ref, auto = make_pair("LSTM", I, H)
    graphs = []

    def count(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(auto, fullgraph=True, dynamic=True, backend=count)
    for steps in (4, 7, 9):
        x = torch.randn(steps, B, I, requires_grad=True)
        y, _ = compiled(x)
        torch.testing.assert_close(y, ref(x)[0], **TOL[F32])
        with torch.no_grad():
            torch.testing.assert_close(compiled(x)[0], ref(x)[0], **TOL[F32])
    assert len(graphs) == 2
    names = [[n.args[1] for n in g.graph.nodes if "fastrnn.layer_forward" in str(n.target)] for g in graphs]
    assert sorted(map(tuple, names)) == [("native",), ("reference",)]


def test_explicit_native_training_under_compile_is_refused():
    auto = make_pair("LSTM", I, H, backend="native")[1]
    compiled = torch.compile(auto, fullgraph=True, dynamic=True, backend="eager")
    with pytest.raises(Exception, match="only known when the kernel runs"):
        compiled(torch.randn(5, B, I, requires_grad=True))


def test_auto_under_export_and_func():
    ref, auto = make_pair("GRU", I, H)
    x = torch.randn(T, B, I)
    program = torch.export.export(auto, (x,))
    torch.testing.assert_close(program.module()(x)[0], ref(x)[0], **TOL[F32])
    params = dict(auto.named_parameters())
    grads = torch.func.grad(lambda p: torch.func.functional_call(auto, p, (x,))[0].sum())(params)
    expected = torch.autograd.grad(ref(x)[0].sum(), list(ref.parameters()))
    for (name, g), e in zip(grads.items(), expected):
        torch.testing.assert_close(g, e, **TOL[F32], msg=lambda m: f"{name}: {m}")


def test_functional_stack_on_native_layers(engines):
    """The functional API with gradients runs oneDNN's LSTM through the layer contract
    (ops._EagerLayer -> native.layer_forward / layer_backward): torch.nn's outputs and
    gradients, and exact second derivatives through the differentiable path."""
    from fastrnn.functional import Schedule, recurrent_stack

    ref = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, requires_grad=True)
    h0, c0 = torch.randn(4, B, H, requires_grad=True), torch.randn(4, B, H, requires_grad=True)
    weights = [tuple(ref.all_weights[k]) + (None,) for k in range(4)]
    y, h_n, c_n = recurrent_stack("LSTM", x.reshape(T * B, I), Schedule.uniform(T, B), h0, c0, weights,
                                  bidirectional=True)
    assert set(engines) == {"native"}
    y_ref, (h_ref, c_ref) = ref(x, (h0, c0))
    outs, outs_ref = (y, h_n, c_n), (y_ref.reshape(T * B, -1), h_ref, c_ref)
    assert_close_all(list(outs), list(outs_ref), F32, "output")
    gen = torch.Generator().manual_seed(0)
    grads_out = [torch.randn(o.shape, generator=gen) for o in outs]
    leaves = [x, h0, c0, *ref.parameters()]
    got = torch.autograd.grad(outs, leaves, grads_out, create_graph=True)
    expected = torch.autograd.grad(outs_ref, leaves, grads_out, create_graph=True)
    assert_close_all(list(got), list(expected), F32, "grad")
    second = torch.autograd.grad(sum(g.sum() for g in got[:3]), [x, h0])
    second_ref = torch.autograd.grad(sum(g.sum() for g in expected[:3]), [x, h0])
    assert_close_all(list(second), list(second_ref), F32, "second derivative")
