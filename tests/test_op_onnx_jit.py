"""ONNX export and TorchScript (issue 8, items 6 and 7).

ONNX (``torch.onnx.export(..., dynamo=True)``): each layer-direction becomes one standard
ONNX ``LSTM`` / ``GRU`` / ``RNN`` node (as torch.nn's own export gives), with the sequence
length a dynamic dimension. Each exported model is run by onnxruntime at a sequence
length other than the one it was exported with, and compared with the eager module
(float32: onnxruntime and torch run different kernels; 1e-5 relative / 1e-6 absolute,
measured differences are ~1e-7). What ONNX cannot express (``proj_size``, a
PackedSequence input) and the TorchScript-based exporter are refused with a clear error.

TorchScript (``torch.jit.script`` / ``trace``, deprecated upstream) is refused with an
error that names what to use instead.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn.ops import TORCHSCRIPT_MESSAGE

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytest.importorskip("onnxscript", reason="onnxscript (the dynamo ONNX exporter's library) is not installed")

CASES = [
    pytest.param("LSTM", dict(num_layers=2, bidirectional=True), ["LSTM"] * 4, id="LSTM-L2-bidir"),
    pytest.param("LSTM", dict(batch_first=True, bias=False), ["LSTM"], id="LSTM-bf-nobias"),
    pytest.param("GRU", dict(bidirectional=True), ["GRU"] * 2, id="GRU-bidir"),
    pytest.param("RNN", dict(nonlinearity="relu", num_layers=2), ["RNN"] * 2, id="RNN-relu-L2"),
    pytest.param("RNN", dict(), ["RNN"], id="RNN-tanh"),
    pytest.param("LSTMCell", dict(), ["LSTM"], id="LSTMCell"),
    pytest.param("GRUCell", dict(), ["GRU"], id="GRUCell"),
    pytest.param("RNNCell", dict(nonlinearity="relu"), ["RNN"], id="RNNCell-relu"),
]


def _export(module, x, dynamic_shapes, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (x,), dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False)
    program.save(str(path))
    return onnx.load(str(path))


@pytest.mark.parametrize("cls, kwargs, ops", CASES)
def test_onnx_export_gives_the_onnx_recurrent_operator(cls, kwargs, ops, tmp_path):
    torch.manual_seed(0)
    module = getattr(fastrnn, cls)(3, 4, **kwargs).eval()
    cell = cls.endswith("Cell")
    bf = kwargs.get("batch_first", False)

    def sample(steps):
        if cell:
            return torch.randn(2, 3)
        return torch.randn((2, steps, 3) if bf else (steps, 2, 3))

    dynamic = None if cell else ({1 if bf else 0: torch.export.Dim("T", min=2, max=4096)},)
    model = _export(module, sample(5), dynamic, tmp_path / "model.onnx")
    assert [n.op_type for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN")] == ops
    assert not any("fastrnn" in n.op_type or n.domain not in ("", "ai.onnx") for n in model.graph.node)
    if not cell:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert dims[1 if bf else 0].dim_param, "the sequence length is not a dynamic dimension"

    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    for steps in ((9, 2) if not cell else (1,)):
        x = sample(steps)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            want = torch.utils._pytree.tree_leaves(module(x))
        assert len(got) == len(want)
        for a, e in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(a), e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make, message",
    [
        pytest.param(lambda: (fastrnn.LSTM(3, 4, proj_size=2), torch.randn(5, 2, 3)), "proj_size", id="proj_size"),
        pytest.param(
            lambda: (_Packed(), torch.randn(5, 2, 3)), "PackedSequence", id="packed",
        ),
    ],
)
def test_onnx_refuses_what_onnx_cannot_express(make, message, tmp_path):
    module, x = make()
    with warnings.catch_warnings(), pytest.raises(Exception) as info:
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), dynamo=True, verbose=False)
    assert f"fastrnn: ONNX export: " in str(info.value) and message in str(info.value)


class _Packed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = fastrnn.GRU(3, 4)

    def forward(self, x):
        out, h = self.rnn(pack_padded_sequence(x, torch.tensor([5, 3])))
        return out.data, h


def test_torchscript_based_onnx_exporter_is_refused(tmp_path):
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match=r"dynamo=True"):
        warnings.simplefilter("ignore")
        torch.onnx.export(fastrnn.LSTM(3, 4), (torch.randn(5, 2, 3),), str(tmp_path / "m.onnx"), dynamo=False)


@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"])
def test_torchscript_is_refused_with_what_to_use(cls):
    module = getattr(fastrnn, cls)(3, 4)
    x = torch.randn(2, 3) if cls.endswith("Cell") else torch.randn(5, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError) as scripted:
            torch.jit.script(module)
        with pytest.raises(RuntimeError) as traced:
            torch.jit.trace(module, (x,))
    for info in (scripted, traced):
        assert str(info.value) == TORCHSCRIPT_MESSAGE
        assert "torch.compile" in str(info.value) and "torch.export" in str(info.value)
