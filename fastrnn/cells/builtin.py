"""torch's four cells as definitions: LSTM, GRU, RNN with tanh, RNN with relu.

Equations (torch's, gate order as in its stacked weights; ``x_k`` / ``r_k`` are the input
and recurrent pre-activations of gate ``k``):

- LSTM ``i, f, g, o = sigmoid(x0 + r0), sigmoid(x1 + r1), tanh(x2 + r2), sigmoid(x3 + r3)``,
  ``c = f * c_prev + i * g``, ``h = o * tanh(c)``.
- GRU (``b_hn`` inside the reset product, so ``b_hh`` stays with ``r_k``):
  ``r = sigmoid(x0 + r0)``, ``z = sigmoid(x1 + r1)``, ``n = tanh(x2 + r * r2)``,
  ``h = (1 - z) * n + z * h_prev``.
- RNN ``h = tanh(x0 + r0)`` or ``h = relu(x0 + r0)``.

The Triton versions of the same functions are in :mod:`fastrnn.kernels.cells`.
"""

from __future__ import annotations

import torch

from .base import Cell

_K = "fastrnn.kernels.cells:"


def lstm_forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev):
    i, f, g, o = torch.sigmoid(x0 + r0), torch.sigmoid(x1 + r1), torch.tanh(x2 + r2), torch.sigmoid(x3 + r3)
    c = f * c_prev + i * g
    return o * torch.tanh(c), c, i, f, g, o, None


def lstm_backward(dh, dc, i, f, g, o, e, c, c_prev, h, h_prev):
    tc = torch.tanh(c)
    dc_total = dc + dh * o * (1 - tc * tc)
    di = dc_total * g * i * (1 - i)
    df = dc_total * c_prev * f * (1 - f)
    dg = dc_total * i * (1 - g * g)
    do = dh * tc * o * (1 - o)
    return di, df, dg, do, di, df, dg, do, None, dc_total * f


def gru_forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev):
    r, z = torch.sigmoid(x0 + r0), torch.sigmoid(x1 + r1)
    n = torch.tanh(x2 + r * r2)
    return n + z * (h_prev - n), None, r, z, n, None, r2


def gru_backward(dh, dc, r, z, n, s3, hn, c, c_prev, h, h_prev):
    dn = dh * (1 - z) * (1 - n * n)
    dz = dh * (h_prev - n) * z * (1 - z)
    dr = dn * hn * r * (1 - r)
    return dr, dz, dn, None, dr, dz, dn * r, None, dh * z, None


def rnn_tanh_forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev):
    return torch.tanh(x0 + r0), None, None, None, None, None, None


def rnn_tanh_backward(dh, dc, s0, s1, s2, s3, e, c, c_prev, h, h_prev):
    d = dh * (1 - h * h)
    return d, None, None, None, d, None, None, None, None, None


def rnn_relu_forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev):
    return torch.relu(x0 + r0), None, None, None, None, None, None


def rnn_relu_backward(dh, dc, s0, s1, s2, s3, e, c, c_prev, h, h_prev):
    # torch's relu' zeroes only where the output is <= 0 (NaN passes the gradient)
    d = torch.where(h <= 0, torch.zeros_like(dh), dh)
    return d, None, None, None, d, None, None, None, None, None


LSTM = Cell(
    "LSTM", 4, lstm_forward, lstm_backward, _K + "lstm_forward", _K + "lstm_backward",
    has_cell_state=True,
)
GRU = Cell(
    "GRU", 3, gru_forward, gru_backward, _K + "gru_forward", _K + "gru_backward",
    recurrent_apart=True, saves_extra=True, forward_reads_h_prev=True, backward_reads_h_prev=True,
    direct_h_grad=True,
)
RNN_TANH = Cell(
    "RNN_TANH", 1, rnn_tanh_forward, rnn_tanh_backward, _K + "rnn_tanh_forward", _K + "rnn_tanh_backward",
    saves_gates=False, backward_reads_h=True,
)
RNN_RELU = Cell(
    "RNN_RELU", 1, rnn_relu_forward, rnn_relu_backward, _K + "rnn_relu_forward", _K + "rnn_relu_backward",
    saves_gates=False, backward_reads_h=True,
)

#: torch's cells, in the order of the ``mode`` strings of ``torch.nn.RNNBase``.
BUILTIN = (LSTM, GRU, RNN_TANH, RNN_RELU)
