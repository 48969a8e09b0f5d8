"""The pointwise math of each recurrent cell kind, forward and backward, once.

Every kernel tier (the step tier of :mod:`fastrnn.kernels.recurrent_step`, the resident
tier of :mod:`fastrnn.kernels.resident`, the cooperative tier) calls these
``@triton.jit`` functions: a tier decides how it loops, tiles and moves data, never how a
gate is computed. Each function takes register tiles of any (matching) shape, already
upcast to the accumulation dtype (fp32, or fp64 for fp64 I/O), and returns tiles of the
same shape. ``pre_*`` are pre-activations (``h @ W_hh^T`` + the input projection).

Equations (torch's, gate order as in the stacked weights):

- LSTM: ``i, f, o = sigmoid(pre_i, pre_f, pre_o)``, ``g = tanh(pre_g)``,
  ``c = f * c_prev + i * g``, ``h = o * tanh(c)``.
- GRU: ``r = sigmoid(x_r + hr)``, ``z = sigmoid(x_z + hz)``, ``n = tanh(x_n + r * hn)``,
  ``h = (1 - z) * n + z * h_prev``, where ``hr, hz, hn = W_h{r,z,n} h_prev + b_h{r,z,n}``.
- RNN: ``h = tanh(pre)`` or ``h = relu(pre)``.

Backward functions take ``dh``, the total gradient reaching the cell's output ``h``
(the next step's recurrent gradient plus the gradient of ``y`` at this step), and the
values forward kept; they return the gradients of the pre-activations and of the state
carried to the previous step through the cell's own pointwise path (``dc_prev`` for
LSTM, ``dh * z`` for GRU). The recurrent GEMM ``dpre @ W_hh`` stays in the kernels.

Adding a cell kind: its two functions here, an id in :data:`KIND_IDS` / :data:`GATES`,
its reference in :mod:`fastrnn.backends.reference`, and one branch per kernel that
calls them.
"""

from __future__ import annotations

import triton
import triton.language as tl

#: Compile-time id of each cell kind (the ``KIND`` constexpr of every kernel).
KIND_IDS = {"LSTM": 0, "GRU": 1, "RNN_TANH": 2, "RNN_RELU": 3}
#: Stacked gate blocks in ``W_ih`` / ``W_hh`` per kind.
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@triton.jit
def sigmoid(x):
    """``1 / (1 + exp(-x))``: exp overflows to inf for very negative x, and 1 / inf = 0 (no NaN)."""
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    """``2 * sigmoid(2x) - 1``: finite for every finite x (the exp-ratio form is NaN for large |x|)."""
    return 2.0 * sigmoid(2.0 * x) - 1.0


# --------------------------------------------------------------------------------------
# LSTM
# --------------------------------------------------------------------------------------


@triton.jit
def legacy_lstm_forward(pre_i, pre_f, pre_g, pre_o, c_prev):
    """One LSTM cell: returns ``(i, f, g, o, c, h)``."""
    i = sigmoid(pre_i)
    f = sigmoid(pre_f)
    g = tanh(pre_g)
    o = sigmoid(pre_o)
    c = f * c_prev + i * g
    h = o * tanh(c)
    return i, f, g, o, c, h


@triton.jit
def legacy_lstm_backward(dh, dc, i, f, g, o, c, c_prev):
    """LSTM cell backward from the saved gates and cell states.

    ``dh``: gradient reaching ``h``; ``dc``: gradient reaching ``c`` from the next step.
    Returns ``(d pre_i, d pre_f, d pre_g, d pre_o, dc_prev)``.
    """
    tc = tanh(c)
    dc_total = dc + dh * o * (1.0 - tc * tc)
    di = dc_total * g * i * (1.0 - i)
    df = dc_total * c_prev * f * (1.0 - f)
    dg = dc_total * i * (1.0 - g * g)
    do = dh * tc * o * (1.0 - o)
    return di, df, dg, do, dc_total * f


# --------------------------------------------------------------------------------------
# GRU
# --------------------------------------------------------------------------------------


@triton.jit
def legacy_gru_forward(x_r, x_z, x_n, hr, hz, hn, h_prev):
    """One GRU cell (torch's rule: ``b_hn`` inside ``r * (...)``): returns ``(r, z, n, h)``.

    ``x_*``: input projection of each gate (``W_i* x + b_i*``); ``h*``: ``W_h* h_prev + b_h*``.
    """
    r = sigmoid(x_r + hr)
    z = sigmoid(x_z + hz)
    n = tanh(x_n + r * hn)
    h = n + z * (h_prev - n)
    return r, z, n, h


@triton.jit
def gru_hidden_bias(b_hh_ptr, cols, col_mask, H, KIND: tl.constexpr, ACC: tl.constexpr, BLOCK_H: tl.constexpr):
    """GRU's ``b_hh`` for the hidden units ``cols``, as ``(1, BLOCK_H)`` rows ``b_hr, b_hz,
    b_hn`` in ``ACC`` (the tiers that keep it in registers for the whole loop). Zero
    placeholders for the other kinds, which fold ``b_hh`` into the input projection."""
    b_r = tl.zeros((1, BLOCK_H), dtype=ACC)
    b_z = b_r
    b_n = b_r
    if KIND == 1:
        b_r = tl.load(b_hh_ptr + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
        b_z = tl.load(b_hh_ptr + H + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
        b_n = tl.load(b_hh_ptr + 2 * H + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
    return b_r, b_z, b_n


@triton.jit
def legacy_gru_backward(dh, r, z, n, hn, h_prev):
    """GRU cell backward from the saved gates and ``hn = W_hn h_prev + b_hn``.

    Returns ``(dr, dz, dn, dhn, dh_direct)``: ``dr, dz, dn`` are the gradients of the
    gate pre-activations on the input side (``dxg``); on the recurrent side
    (``h @ W_hh^T + b_hh``) they are ``dr, dz, dhn`` with ``dhn = dn * r``;
    ``dh_direct = dh * z`` is the gradient reaching ``h_prev`` outside the GEMM.
    """
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dz = dh * (h_prev - n) * z * (1.0 - z)
    dr = dn * hn * r * (1.0 - r)
    return dr, dz, dn, dn * r, dh * z


# --------------------------------------------------------------------------------------
# Plain RNN
# --------------------------------------------------------------------------------------


@triton.jit
def legacy_rnn_tanh_forward(pre):
    return tanh(pre)


@triton.jit
def legacy_rnn_tanh_backward(dh, h):
    """Gradient of the pre-activation from the cell's output ``h`` (= ``y`` of the step)."""
    return dh * (1.0 - h * h)


@triton.jit
def legacy_rnn_relu_forward(pre):
    # relu that keeps NaN, like torch (NaN < 0 is False).
    return tl.where(pre < 0, 0.0, pre)


@triton.jit
def legacy_rnn_relu_backward(dh, h):
    # torch's relu' zeroes only where the output is <= 0 (NaN passes the gradient).
    return tl.where(h <= 0, 0.0, dh)


# --------------------------------------------------------------------------------------
# The pointwise interface of fastrnn.cells (every tier calls these through the cell's
# CELL_FORWARD / CELL_BACKWARD compile-time arguments; see fastrnn/cells/base.py).
# --------------------------------------------------------------------------------------


@triton.jit
def lstm_forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev):
    """LSTM: ``(h, c, i, f, g, o, unused)``."""
    i = sigmoid(x0 + r0)
    f = sigmoid(x1 + r1)
    g = tanh(x2 + r2)
    o = sigmoid(x3 + r3)
    c = f * c_prev + i * g
    h = o * tanh(c)
    return h, c, i, f, g, o, h


@triton.jit
def lstm_backward(dh, dc, i, f, g, o, e, c, c_prev, h, h_prev):
    """LSTM backward from the saved gates and cell states: ``dx == dr`` (b_hh folded)."""
    tc = tanh(c)
    dc_total = dc + dh * o * (1.0 - tc * tc)
    di = dc_total * g * i * (1.0 - i)
    df = dc_total * c_prev * f * (1.0 - f)
    dg = dc_total * i * (1.0 - g * g)
    do = dh * tc * o * (1.0 - o)
    return di, df, dg, do, di, df, dg, do, dh, dc_total * f


@triton.jit
def gru_forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev):
    """GRU (torch's rule, ``r2 = W_hn h_prev + b_hn``): ``(h, unused, r, z, n, unused, r2)``."""
    r = sigmoid(x0 + r0)
    z = sigmoid(x1 + r1)
    n = tanh(x2 + r * r2)
    h = n + z * (h_prev - n)
    return h, c_prev, r, z, n, n, r2


@triton.jit
def gru_backward(dh, dc, r, z, n, s3, hn, c, c_prev, h, h_prev):
    """GRU backward: ``dx = (dr, dz, dn)``, recurrent ``(dr, dz, dn * r)``, ``dh * z`` direct."""
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dz = dh * (h_prev - n) * z * (1.0 - z)
    dr = dn * hn * r * (1.0 - r)
    dhn = dn * r
    return dr, dz, dn, dn, dr, dz, dhn, dhn, dh * z, dc


@triton.jit
def rnn_tanh_forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev):
    h = tanh(x0 + r0)
    return h, c_prev, h, h, h, h, h


@triton.jit
def rnn_tanh_backward(dh, dc, s0, s1, s2, s3, e, c, c_prev, h, h_prev):
    """From the step's output ``h``: ``dpre = dh * (1 - h^2)``."""
    d = dh * (1.0 - h * h)
    return d, d, d, d, d, d, d, d, dh, dc


@triton.jit
def rnn_relu_forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev):
    # relu that keeps NaN, like torch (NaN < 0 is False)
    pre = x0 + r0
    h = tl.where(pre < 0, 0.0, pre)
    return h, c_prev, h, h, h, h, h


@triton.jit
def rnn_relu_backward(dh, dc, s0, s1, s2, s3, e, c, c_prev, h, h_prev):
    # torch's relu' zeroes only where the output is <= 0 (NaN passes the gradient)
    d = tl.where(h <= 0, 0.0, dh)
    return d, d, d, d, d, d, d, d, dh, dc


@triton.jit
def recurrent_bias(b_hh_ptr, cols, col_mask, H, GATES: tl.constexpr, APART: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_H: tl.constexpr):
    """``b_hh`` of the hidden units ``cols`` as four ``(1, BLOCK_H)`` rows, one per gate slot,
    in ``ACC``: loaded for the gates of a cell whose recurrent pre-activation keeps its bias
    (``APART``), zeros otherwise (the engine folded ``b_hh`` into the input projection)."""
    b0 = tl.zeros((1, BLOCK_H), dtype=ACC)
    b1 = b0
    b2 = b0
    b3 = b0
    if APART:
        b0 = tl.load(b_hh_ptr + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
        if GATES > 1:
            b1 = tl.load(b_hh_ptr + H + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
        if GATES > 2:
            b2 = tl.load(b_hh_ptr + 2 * H + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
        if GATES > 3:
            b3 = tl.load(b_hh_ptr + 3 * H + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
    return b0, b1, b2, b3
