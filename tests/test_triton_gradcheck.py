"""fp64 ``torch.autograd.gradcheck`` through the triton backend (Triton's interpreter).

Every cell kind, both directions, a packed schedule whose batch shrinks (so the reverse
direction's active batch grows), gradients of x, h0, c0, every weight and bias; one LSTM
with ``proj_size``. Numerical Jacobians need tiny shapes: B=3, T=3, H=2. By default
gradcheck runs in ``fast_mode`` (it checks random projections ``v^T J u`` of the Jacobian:
a few evaluations instead of two per input element, ~1 s instead of ~13 s each in the
interpreter); the full Jacobian check runs in the slow grid (FASTRNN_FULL=1).
"""

from __future__ import annotations

import pytest
import torch

from fastrnn.backends.triton import buffers
from fastrnn.functional import Schedule, recurrent_layer

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@pytest.fixture(autouse=True)
def _nan_fill(monkeypatch):
    monkeypatch.setattr(buffers, "FILL_NAN", True)


@pytest.fixture(autouse=True)
def _step_tier(monkeypatch):
    """The step tier's tests (tests/test_resident.py and tests/test_tiers.py run the others)."""
    monkeypatch.setenv("FASTRNN_TIER", "step")


def _inputs(kind, hidden=2, in_size=2, proj=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    schedule = Schedule.from_batch_sizes([3, 2, 1])  # lengths 3, 2, 1
    state = proj or hidden
    g = GATES[kind]

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()

    x = rnd(schedule.rows, in_size)
    h0 = rnd(schedule.batch, state)
    c0 = rnd(schedule.batch, hidden) if kind == "LSTM" else None
    # relu: keep pre-activations away from 0, where relu has no derivative.
    weights = [rnd(g * hidden, in_size, scale=0.5), rnd(g * hidden, state, scale=0.5), rnd(g * hidden), rnd(g * hidden)]
    w_hr = rnd(proj, hidden, scale=0.5) if proj else None
    return schedule, x, h0, c0, weights, w_hr


MODES = [pytest.param(True, id="fast"), pytest.param(False, id="full", marks=pytest.mark.slow)]


@pytest.mark.parametrize("fast_mode", MODES)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind", list(GATES))
def test_gradcheck(kind, reverse, fast_mode):
    schedule, x, h0, c0, weights, w_hr = _inputs(kind)
    leaves = [x, h0] + ([c0] if c0 is not None else []) + weights

    def fn(*args):
        x, h0 = args[0], args[1]
        c0 = args[2] if kind == "LSTM" else None
        w = args[3:] if kind == "LSTM" else args[2:]
        y, h_n, c_n = recurrent_layer(kind, x, schedule, h0, c0, tuple(w) + (None,), reverse=reverse, backend="triton")
        return (y, h_n) if c_n is None else (y, h_n, c_n)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast_mode)


@pytest.mark.parametrize("fast_mode", MODES)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gradcheck_lstm_proj(reverse, fast_mode):
    schedule, x, h0, c0, weights, w_hr = _inputs("LSTM", hidden=3, proj=2)
    leaves = [x, h0, c0] + weights + [w_hr]

    def fn(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
        y, h_n, c_n = recurrent_layer(
            "LSTM", x, schedule, h0, c0, (w_ih, w_hh, b_ih, b_hh, w_hr), reverse=reverse, backend="triton"
        )
        return y, h_n, c_n

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast_mode)
