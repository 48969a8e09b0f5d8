"""The variant layers and resets under PyTorch's tracers: torch.compile (one graph, no
break, equal to eager), torch.export with a dynamic sequence length, torch.func, and ONNX
(a peephole LSTM is one ONNX ``LSTM`` node with its ``P`` input; LayerNorm cells and resets
are refused with a clear error). Equality with eager is exact: the same ops run."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.export import Dim, export

import fastrnn
from test_variants import randomise

LAYERS = {
    "LayerNormLSTM": lambda **k: fastrnn.LayerNormLSTM(3, 4, **k),
    "LayerNormGRU": lambda **k: fastrnn.LayerNormGRU(3, 4, **k),
    "PeepholeLSTM": lambda **k: fastrnn.LSTM(3, 4, peephole=True, **k),
    "GRU": lambda **k: fastrnn.GRU(3, 4, **k),
}


class WithResets(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, resets):
        out, hidden = self.rnn(x, resets=resets)
        return out, hidden


def _make(name, **kwargs):
    torch.manual_seed(0)
    m = LAYERS[name](**kwargs)
    randomise(m, torch.Generator().manual_seed(1))
    return m


def _inputs(steps=5, batch=2, seed=2):
    gen = torch.Generator().manual_seed(seed)
    resets = torch.zeros(steps, batch, dtype=torch.bool)
    resets[2, 0] = True
    return torch.randn(steps, batch, 3, generator=gen), resets


def _outputs_and_grads(fn, module, x, resets):
    x = x.clone().requires_grad_()
    leaves = torch.utils._pytree.tree_leaves(fn(x, resets))
    loss = sum((t * (k + 1)).sin().sum() for k, t in enumerate(leaves))
    return [t.detach() for t in leaves] + list(torch.autograd.grad(loss, [x, *module.parameters()]))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(LAYERS))
def test_compile_one_graph_equal_to_eager(name):
    module = WithResets(_make(name, num_layers=2, bidirectional=True))
    x, resets = _inputs()
    explained = torch._dynamo.explain(module)(x, resets)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    torch._dynamo.reset()
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    got = _outputs_and_grads(compiled, module, x, resets)
    want = _outputs_and_grads(module, module, x, resets)
    for a, e in zip(got, want):
        assert torch.equal(a, e)


@pytest.mark.parametrize("name", list(LAYERS))
def test_export_dynamic_length(name):
    module = WithResets(_make(name, bidirectional=True))
    x, resets = _inputs()
    steps = Dim("T", min=2, max=4096)
    ep = export(module, (x, resets), dynamic_shapes=({0: steps}, {0: steps}))
    nodes = [n for n in ep.graph.nodes if n.op == "call_function" and n.target is torch.ops.fastrnn.layer_forward.default]
    assert len(nodes) == 2
    for length in (3, 9):
        x2, r2 = _inputs(steps=length, seed=length)
        got = torch.utils._pytree.tree_leaves(ep.module()(x2, r2))
        want = torch.utils._pytree.tree_leaves(module(x2, r2))
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(LAYERS))
def test_func_grad_and_vmap(name):
    module = _make(name, dtype=torch.float64)
    params = {k: v.detach() for k, v in module.named_parameters()}
    x, resets = _inputs()
    x = x.double()

    def loss(p, x):
        out, _ = torch.func.functional_call(module, p, (x,), {"resets": resets})
        return out.pow(2).sum()

    grads = torch.func.grad(loss)(params, x)
    want = torch.autograd.grad(loss(dict(module.named_parameters()), x), list(module.parameters()))
    for (k, g), w in zip(grads.items(), want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=k)
    batched = torch.func.vmap(lambda xi: loss(params, xi))(torch.stack([x, 2 * x]))
    torch.testing.assert_close(batched, torch.stack([loss(params, x), loss(params, 2 * x)]))


onnx = pytest.importorskip("onnx", reason="the onnx package is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")


def _onnx_export(module, args, path, dynamic_shapes=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False)
    program.save(str(path))
    return onnx.load(str(path))


@pytest.mark.parametrize("kwargs", [dict(num_layers=2, bidirectional=True), dict(batch_first=True)])
def test_onnx_peephole_lstm_is_one_node_per_layer_direction_with_p(kwargs, tmp_path):
    module = _make("PeepholeLSTM", **kwargs).eval()
    bf = kwargs.get("batch_first", False)

    def sample(steps):
        return torch.randn((2, steps, 3) if bf else (steps, 2, 3))

    dynamic = ({1 if bf else 0: Dim("T", min=2, max=4096)},)
    model = _onnx_export(module, (sample(5),), tmp_path / "m.onnx", dynamic)
    lstm_nodes = [n for n in model.graph.node if n.op_type == "LSTM"]
    layer_dirs = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    assert len(lstm_nodes) == layer_dirs
    assert all(len(n.input) >= 8 and n.input[7] for n in lstm_nodes), "no P input"
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    for steps in (9, 2):
        x = sample(steps)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            want = torch.utils._pytree.tree_leaves(module(x))
        for a, e in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(a), e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, args, message", [
    ("LayerNormLSTM", None, "has no ONNX operator"),
    ("LayerNormGRU", None, "has no ONNX operator"),
    ("GRU", "resets", "resets inside a sequence have no ONNX operator"),
])
def test_onnx_refuses_what_it_cannot_express(name, args, message, tmp_path):
    x, resets = _inputs()
    module = WithResets(_make(name)) if args else _make(name)
    with warnings.catch_warnings(), pytest.raises(Exception) as info:
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x, resets) if args else (x,), dynamo=True, verbose=False)
    assert "fastrnn: ONNX export: " in str(info.value) and message in str(info.value)
