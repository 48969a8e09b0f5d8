"""Triton backend at module level (vs torch.nn), launch counts, and backend choice.

Runs in Triton's interpreter on CPU (tests/conftest.py switches it on).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import assert_parity, make_pair
from torch.nn.utils.rnn import pack_padded_sequence

from fastrnn.backends import triton as triton_backend
from fastrnn.backends.triton import buffers
from fastrnn.functional import Schedule, recurrent_layer
from fastrnn.kernels.recurrent_step import count_launches

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@pytest.fixture(autouse=True)
def _nan_fill(monkeypatch):
    monkeypatch.setattr(buffers, "FILL_NAN", True)


@pytest.fixture(autouse=True)
def _step_tier(monkeypatch):
    """The step tier's tests (tests/test_resident.py and tests/test_tiers.py run the others)."""
    monkeypatch.setenv("FASTRNN_TIER", "step")


# --------------------------------------------------------------------------------------
# Parity with torch.nn (float64: helpers.TOL explains the tolerances)
# --------------------------------------------------------------------------------------

MODULES = [
    pytest.param("LSTM", dict(num_layers=2, bidirectional=True), False, id="LSTM-2layer-bi"),
    pytest.param("LSTM", dict(proj_size=2, batch_first=True), False, id="LSTM-proj-batch_first"),
    pytest.param("GRU", dict(num_layers=2, bidirectional=True), True, id="GRU-2layer-bi-packed"),
    pytest.param("GRU", dict(bias=False), False, id="GRU-nobias"),
    pytest.param("RNN", dict(nonlinearity="relu", bidirectional=True), True, id="RNN_RELU-bi-packed"),
    pytest.param("RNN", dict(num_layers=2), False, id="RNN_TANH-2layer"),
]


@pytest.mark.parametrize("cls, kwargs, packed", MODULES)
def test_module_parity(cls, kwargs, packed):
    hidden, in_size, steps, batch = 5, 3, 4, 3
    ref, fast = make_pair(cls, in_size, hidden, backend="triton", dtype=torch.float64, **kwargs)
    first = kwargs.get("batch_first", False)
    x = torch.randn((batch, steps, in_size) if first else (steps, batch, in_size), dtype=torch.float64)
    if packed:
        x = pack_padded_sequence(x.requires_grad_(), torch.tensor([2, 4, 1]), enforce_sorted=False)
    else:
        x.requires_grad_()
    layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    state = kwargs.get("proj_size", 0) or hidden
    h0 = torch.randn(layers, batch, state, dtype=torch.float64, requires_grad=True)
    if cls == "LSTM":
        hx = (h0, torch.randn(layers, batch, hidden, dtype=torch.float64, requires_grad=True))
    else:
        hx = h0
    assert_parity(ref, fast, x, hx, dtype=torch.float64)


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_parity(cls):
    ref, fast = make_pair(cls, 3, 4, backend="triton", dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    hx = (h, torch.randn(2, 4, dtype=torch.float64, requires_grad=True)) if cls == "LSTMCell" else h
    assert_parity(ref, fast, x, hx, dtype=torch.float64)


# --------------------------------------------------------------------------------------
# Launch counts: one step kernel per timestep in each direction of the time loop
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True], ids=["uniform", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind", list(GATES))
def test_launch_count(kind, reverse, packed):
    steps, batch, hidden = 5, 3, 4
    schedule = Schedule.from_batch_sizes([3, 3, 2, 2, 1]) if packed else Schedule.uniform(steps, batch)
    g = GATES[kind]
    x = torch.randn(schedule.rows, 2, requires_grad=True)
    h0 = torch.randn(batch, hidden, requires_grad=True)
    c0 = torch.randn(batch, hidden, requires_grad=True) if kind == "LSTM" else None
    shapes = [(g * hidden, 2), (g * hidden, hidden), (g * hidden,), (g * hidden,)]
    weights = tuple(torch.randn(*s, requires_grad=True) for s in shapes)
    with count_launches() as fwd:
        y, h_n, c_n = recurrent_layer(kind, x, schedule, h0, c0, weights + (None,), reverse=reverse, backend="triton")
    assert (fwd.forward, fwd.backward) == (steps, 0)
    loss = y.sum() + h_n.sum() + (c_n.sum() if c_n is not None else 0)
    with count_launches() as bwd:
        loss.backward()
    assert (bwd.forward, bwd.backward) == (0, steps)


def test_launch_count_reference_backend_is_zero():
    """The counter only counts step kernels (the reference backend launches none)."""
    x = torch.randn(6, 2)
    with count_launches() as n:
        recurrent_layer("GRU", x, Schedule.uniform(3, 2), torch.zeros(2, 4), None,
                        (torch.randn(12, 2), torch.randn(12, 4), None, None, None), backend="reference")
    assert (n.forward, n.backward) == (0, 0)


# --------------------------------------------------------------------------------------
# Backend availability
# --------------------------------------------------------------------------------------


def test_triton_refused_on_cpu_without_interpreter():
    """Without the interpreter, backend='triton' on CPU tensors is a clear error."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import torch, fastrnn\n"
        "m = fastrnn.GRU(2, 3, backend='triton')\n"
        "try:\n"
        "    m(torch.randn(2, 1, 2))\n"
        "except RuntimeError as e:\n"
        "    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERR fastrnn: backend='triton' cannot run on cpu" in out.stdout
    assert "interpreter" in out.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_triton_reason_for_cuda_without_cuda():
    assert "CUDA is not available" in triton_backend.unavailable_reason(torch.device("cuda"))
