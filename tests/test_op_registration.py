"""The custom ops' registration is sound: ``torch.library.opcheck``.

opcheck runs each op against its schema (no input mutated or aliased), its fake
implementation (shapes, dtypes and strides of every output, as torch.compile and
torch.export will assume them), its autograd registration, and AOTAutograd with dynamic
shapes. Every cell kind, padded and packed, with and without bias / projection.
"""

from __future__ import annotations

import pytest
import torch

import fastrnn  # noqa: F401  (registers the ops)

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
CASES = [
    pytest.param(kind, packed, proj, bias, id=f"{kind}-{'packed' if packed else 'padded'}{'-proj' if proj else ''}{'' if bias else '-nobias'}")
    for kind, packed, proj, bias in [
        ("LSTM", False, 0, True), ("LSTM", True, 2, True), ("LSTM", True, 0, False),
        ("GRU", False, 0, True), ("GRU", True, 0, True), ("RNN_TANH", True, 0, False), ("RNN_RELU", False, 0, True),
    ]
]


def _forward_args(kind, packed, proj, bias, backend="reference", reverse=False):
    gen = torch.Generator().manual_seed(0)
    g, hidden, inp = GATES[kind], 3, 2
    state = proj or hidden

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    if packed:
        batch_sizes = torch.tensor([3, 2, 1])
        x = rnd(6, inp)
    else:
        batch_sizes = None
        x = rnd(4, 3, inp)
    return (
        kind, backend, x, batch_sizes, rnd(3, state), rnd(3, hidden) if kind == "LSTM" else None,
        rnd(g * hidden, inp), rnd(g * hidden, state), rnd(g * hidden) if bias else None,
        rnd(g * hidden) if bias else None, rnd(state, hidden) if proj else None, None, None, None, None, [], None,
        reverse, True,
    )


@pytest.mark.parametrize("kind, packed, proj, bias", CASES)
def test_opcheck_layer_forward(kind, packed, proj, bias):
    args = _forward_args(kind, packed, proj, bias, reverse=packed)
    torch.library.opcheck(torch.ops.fastrnn.layer_forward.default, args)


@pytest.mark.parametrize("kind, packed, proj, bias", CASES)
def test_opcheck_layer_backward(kind, packed, proj, bias):
    args = _forward_args(kind, packed, proj, bias)
    with torch.no_grad():
        y, h_n, c_n, s0, s1, s2, s3 = torch.ops.fastrnn.layer_forward(*args)
    detached = [a.detach() if torch.is_tensor(a) else a for a in args[:18]]
    dc_n = torch.randn_like(c_n) if kind == "LSTM" else None
    needs = [True, True, kind == "LSTM", True, True, bias, bias, bool(proj), False]
    backward_args = (*detached, y, s0, s1, s2, s3, torch.randn_like(y), torch.randn_like(h_n), dc_n, needs)
    torch.library.opcheck(torch.ops.fastrnn.layer_backward.default, backward_args)


def test_opcheck_triton_backend():
    args = _forward_args("GRU", True, 0, True, backend="triton")
    torch.library.opcheck(torch.ops.fastrnn.layer_forward.default, args)


def _with_loop_inputs(kind, packed, reverse):
    """Forward arguments with every optional input of the loop: peephole parameters (LSTM),
    resets, zoneout masks and a recurrent-dropout scale."""
    args = list(_forward_args(kind, packed, 0, True, reverse=reverse))
    gen = torch.Generator().manual_seed(1)
    x, hidden = args[2], 3
    rows = x.shape[:-1]
    if kind == "LSTM":
        args[0] = "LSTM_PEEPHOLE"
        args[11] = torch.randn(3, hidden, generator=gen, dtype=torch.float64).requires_grad_()
    args[12] = torch.rand(rows, generator=gen) < 0.3
    args[13] = torch.rand((*rows, hidden), generator=gen) < 0.3
    args[14] = (torch.rand((*rows, hidden), generator=gen) < 0.3) if kind == "LSTM" else None
    args[16] = (torch.rand(3, hidden, generator=gen, dtype=torch.float64) < 0.7).double() / 0.7
    return tuple(args)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH"])
@pytest.mark.parametrize("packed", [False, True])
def test_opcheck_with_every_loop_input(kind, packed):
    args = _with_loop_inputs(kind, packed, reverse=packed)
    torch.library.opcheck(torch.ops.fastrnn.layer_forward.default, args)
    with torch.no_grad():
        y, h_n, c_n, s0, s1, s2, s3 = torch.ops.fastrnn.layer_forward(*args)
    detached = [a.detach() if torch.is_tensor(a) else a for a in args[:18]]
    dc_n = torch.randn_like(c_n) if kind == "LSTM" else None
    needs = [True, True, kind == "LSTM", True, True, True, True, False, kind == "LSTM"]
    backward_args = (*detached, y, s0, s1, s2, s3, torch.randn_like(y), torch.randn_like(h_n), dc_n, needs)
    torch.library.opcheck(torch.ops.fastrnn.layer_backward.default, backward_args)


def test_opcheck_eval_zoneout_and_input_projection():
    """Eval zoneout (probabilities, no masks) and ``w_ih`` None (x is the projection)."""
    args = list(_forward_args("GRU", False, 0, True))
    args[2] = torch.randn(4, 3, 9, dtype=torch.float64, requires_grad=True)
    args[6] = None
    args[15] = [0.3, 0.0]
    torch.library.opcheck(torch.ops.fastrnn.layer_forward.default, tuple(args))
