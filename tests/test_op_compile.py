"""torch.compile sees one opaque op per layer-direction (issue 8, item 2).

- ``torch.compile(module, fullgraph=True)`` works for all six modules, forward and
  backward, on both backends (triton in Triton's interpreter), with 0 graph breaks
  (``torch._dynamo.explain``); compiled outputs and gradients equal eager ones exactly
  (the compiled graph calls the same op on the same inputs).
- No recompilation per sequence length: over 6 different T the compiled model builds at
  most 2 graphs (the first, static, then one with a dynamic T).
- A PackedSequence input compiles too (with a graph break: ``int(batch_sizes[0])`` in
  torch.nn's own argument checks is data-dependent) and matches eager.
- The first compile of an LSTM at T=50, B=16, H=128 (Inductor, forward + backward) is
  timed and printed (the target is < 10 s on this machine; a timing, not an assert).

Most tests compile with the ``aot_eager`` backend: it runs Dynamo and AOTAutograd (so the
ops' fake implementations and the registered backward are traced) without Inductor's
code generation, which costs seconds per graph and adds nothing to what is checked here.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn

F32 = torch.float32

MODULES = [
    pytest.param("RNN", dict(num_layers=2, nonlinearity="relu"), id="RNN-relu-L2"),
    pytest.param("LSTM", dict(bidirectional=True, proj_size=2), id="LSTM-bidir-proj2"),
    pytest.param("GRU", dict(batch_first=True), id="GRU-bf"),
    pytest.param("RNNCell", dict(), id="RNNCell"),
    pytest.param("LSTMCell", dict(), id="LSTMCell"),
    pytest.param("GRUCell", dict(), id="GRUCell"),
]
BACKENDS = ["reference", "triton"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _module(cls, kwargs, backend, size=4):
    torch.manual_seed(0)
    return getattr(fastrnn, cls)(3, size, backend=backend, **kwargs)


def _input(cls, kwargs, steps=5, batch=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    if cls.endswith("Cell"):
        return torch.randn(batch, 3, generator=gen)
    shape = (batch, steps, 3) if kwargs.get("batch_first") else (steps, batch, 3)
    return torch.randn(shape, generator=gen)


def _run(fn, module, x):
    """Outputs and the gradients of input and parameters, for a fixed loss."""
    x = x.clone().requires_grad_()
    out = fn(x)
    leaves = torch.utils._pytree.tree_leaves(out)
    loss = sum((t * (k + 1)).sin().sum() for k, t in enumerate(leaves))
    grads = torch.autograd.grad(loss, [x, *module.parameters()])
    return [t.detach() for t in leaves], list(grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, kwargs", MODULES)
def test_fullgraph_no_breaks_and_equal_to_eager(cls, kwargs, backend):
    module = _module(cls, kwargs, backend)
    x = _input(cls, kwargs)
    explained = torch._dynamo.explain(module)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    torch._dynamo.reset()

    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    out_c, grads_c = _run(compiled, module, x)
    out_e, grads_e = _run(module, module, x)
    assert len(out_c) == len(out_e) and len(grads_c) == len(grads_e)
    for a, e in zip(out_c + grads_c, out_e + grads_e):
        assert torch.equal(a, e)


RECOMPILE_CASES = [
    pytest.param(*MODULES[0].values, "reference", id="RNN-relu-L2-reference"),
    pytest.param(*MODULES[1].values, "reference", id="LSTM-bidir-proj2-reference"),
    pytest.param(*MODULES[2].values, "reference", id="GRU-bf-reference"),
    # the interpreter runs each step's kernels in Python: one triton case
    pytest.param(*MODULES[2].values, "triton", id="GRU-bf-triton"),
]


@pytest.mark.parametrize("cls, kwargs, backend", RECOMPILE_CASES)
def test_no_recompile_per_sequence_length(cls, kwargs, backend):
    module = _module(cls, kwargs, backend)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    lengths = (2, 3, 4, 5, 6, 7)
    for steps in lengths:
        x = _input(cls, kwargs, steps=steps)
        out_c, grads_c = _run(compiled, module, x)
        out_e, grads_e = _run(module, module, x)
        for a, e in zip(out_c + grads_c, out_e + grads_e):
            assert torch.equal(a, e)
    print(f"\n[compile] {cls} {backend}: {counter.frame_count} graphs over T={lengths}")
    assert counter.frame_count <= 2


def test_torch_nn_is_not_compiled_where_fastrnn_is():
    """The comparison: TorchDynamo does not trace torch.nn.LSTM at all (0 graphs: the module
    runs eagerly behind a graph break, and ``fullgraph=True`` raises); fastrnn's LSTM is one
    graph holding its op, and at most 2 graphs over 6 lengths."""
    ref = torch.nn.LSTM(3, 4)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(ref, backend=counter)
    for steps in (3, 5, 7, 9, 11, 13):
        compiled(torch.randn(steps, 2, 3))
    assert counter.frame_count == 0
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match="RNN, GRU, or LSTM"):
        torch.compile(ref, backend="aot_eager", fullgraph=True)(torch.randn(3, 2, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_input_compiles_and_matches_eager(backend):
    module = _module("LSTM", dict(num_layers=2), backend)
    x = _input("LSTM", {}, steps=4, batch=3)
    lengths = torch.tensor([2, 4, 1])

    def fn(x):
        out, (h, c) = module(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return out.data, h, c

    compiled = torch.compile(fn, backend="aot_eager")
    out_c, grads_c = _run(compiled, module, x)
    out_e, grads_e = _run(fn, module, x)
    for a, e in zip(out_c + grads_c, out_e + grads_e):
        assert torch.equal(a, e)


def test_first_compile_time_lstm_inductor():
    """T=50, B=16, H=128 LSTM: the first call of ``torch.compile(model)`` (Inductor), forward
    and backward. Printed, not asserted (a timing on a shared machine)."""
    module = fastrnn.LSTM(128, 128, backend="reference")
    x = torch.randn(50, 16, 128, requires_grad=True)
    start = time.perf_counter()
    compiled = torch.compile(module, fullgraph=True)
    out, _ = compiled(x)
    out.sum().backward()
    elapsed = time.perf_counter() - start
    print(f"\n[compile] first compile + run of LSTM T=50 B=16 H=128 (inductor, fwd+bwd): {elapsed:.1f} s")
    eager, _ = module(x)
    torch.testing.assert_close(out, eager)
