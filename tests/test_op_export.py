"""torch.export of fastrnn modules (issue 8, item 3).

``torch.export.export`` in strict and non-strict mode, of modules in train and eval mode:
the exported program holds exactly one ``fastrnn.layer_forward`` op per layer-direction
at the top level of its graph, with a dynamic sequence length; it runs at another length
and gives the eager module's outputs; it survives ``torch.export.save`` / ``load``; and
gradients flow through the exported module (the op's registered autograd) equal to eager.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch.export import Dim, export

import fastrnn

MODULES = [
    pytest.param("LSTM", dict(num_layers=2, bidirectional=True), 4, id="LSTM-L2-bidir"),
    pytest.param("LSTM", dict(proj_size=2, batch_first=True), 1, id="LSTM-proj2-bf"),
    pytest.param("GRU", dict(num_layers=2), 2, id="GRU-L2"),
    pytest.param("RNN", dict(nonlinearity="relu", bidirectional=True), 2, id="RNN-relu-bidir"),
    pytest.param("LSTMCell", dict(), 1, id="LSTMCell"),
    pytest.param("GRUCell", dict(), 1, id="GRUCell"),
    pytest.param("RNNCell", dict(), 1, id="RNNCell"),
]


def _setup(cls, kwargs, train):
    torch.manual_seed(0)
    module = getattr(fastrnn, cls)(3, 4, backend="reference", **kwargs)
    module.train(train)
    cell = cls.endswith("Cell")
    if cell:
        return module, torch.randn(2, 3), None, None
    time_dim = 1 if kwargs.get("batch_first") else 0
    shape = [2, 2, 3]
    shape[time_dim] = 6
    other = list(shape)
    other[time_dim] = 9
    return module, torch.randn(shape), torch.randn(other), ({time_dim: Dim("T", min=2, max=4096)},)


def _fastrnn_nodes(ep):
    return [n for n in ep.graph.nodes if n.op == "call_function" and n.target is torch.ops.fastrnn.layer_forward.default]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
@pytest.mark.parametrize("cls, kwargs, layer_dirs", MODULES)
def test_export_one_op_per_layer_direction_and_runs(cls, kwargs, layer_dirs, strict, train):
    module, x, x_other, dynamic = _setup(cls, kwargs, train)
    ep = export(module, (x,), strict=strict, dynamic_shapes=dynamic)
    assert len(_fastrnn_nodes(ep)) == layer_dirs
    for inp in (x, x_other) if x_other is not None else (x,):
        got = torch.utils._pytree.tree_leaves(ep.module()(inp))
        want = torch.utils._pytree.tree_leaves(module(inp))
        assert len(got) == len(want)
        for a, e in zip(got, want):
            assert torch.equal(a, e)


@pytest.mark.parametrize("cls, kwargs, layer_dirs", [MODULES[0], MODULES[2]])
def test_exported_program_save_load_and_gradients(cls, kwargs, layer_dirs):
    module, x, x_other, dynamic = _setup(cls, kwargs, train=True)
    ep = export(module, (x,), dynamic_shapes=dynamic)
    buffer = io.BytesIO()
    torch.export.save(ep, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    assert len(_fastrnn_nodes(loaded)) == layer_dirs

    exported = loaded.module()
    xe, xm = x_other.clone().requires_grad_(), x_other.clone().requires_grad_()
    out_e, _ = exported(xe)
    out_m, _ = module(xm)
    assert torch.equal(out_e, out_m)
    params_e = list(exported.parameters())
    params_m = list(module.parameters())
    assert len(params_e) == len(params_m)
    grads_e = torch.autograd.grad(out_e.sin().sum(), [xe, *params_e])
    grads_m = torch.autograd.grad(out_m.sin().sum(), [xm, *params_m])
    for a, e in zip(grads_e, grads_m):
        torch.testing.assert_close(a, e)


def test_export_with_the_triton_backend():
    """The op is the same whatever the backend; its implementation runs the kernels
    (Triton's interpreter here)."""
    torch.manual_seed(0)
    module = fastrnn.GRU(3, 4, backend="triton")
    x, x_other = torch.randn(3, 2, 3), torch.randn(5, 2, 3)
    ep = export(module, (x,), dynamic_shapes=({0: Dim("T", min=2, max=64)},))
    nodes = _fastrnn_nodes(ep)
    assert len(nodes) == 1 and nodes[0].args[1] == "triton"
    for a, e in zip(ep.module()(x_other), module(x_other)):
        assert torch.equal(a, e)
