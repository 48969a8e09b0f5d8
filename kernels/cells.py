"""The Triton pointwise math of torch's four cells, forward and backward, once.

Every kernel tier (:mod:`fastrnn.kernels.recurrent_step`, :mod:`fastrnn.kernels.resident`,
:mod:`fastrnn.kernels.cooperative`) receives a cell's two functions as the compile-time
arguments ``CELL_FORWARD`` / ``CELL_BACKWARD`` (with the cell's flags, from
:meth:`fastrnn.cells.Cell.kernel_constexprs`) and calls them on register tiles already
upcast to the accumulation dtype: a tier decides how it loops, tiles and moves data, never
how a gate is computed. The interface (gate slots, saved values, what each result means)
is documented in :mod:`fastrnn.cells.base`; the torch twins of these functions are in
:mod:`fastrnn.cells.builtin`. A user's cell brings its own pair, written against the same
interface, and may use :func:`sigmoid` / :func:`tanh` from here.

Unused results of the fixed-arity interface return any tile of the right shape (a value
the function already has): the kernels never read them, and the compiler drops them.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    """``1 / (1 + exp(-x))``: exp overflows to inf for very negative x, and 1 / inf = 0 (no NaN)."""
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    """``2 * sigmoid(2x) - 1``: finite for every finite x (the exp-ratio form is NaN for large |x|)."""
    return 2.0 * sigmoid(2.0 * x) - 1.0


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


@triton.jit
def peephole_forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev, p0, p1, p2):
    """Peephole LSTM (``p0, p1, p2 = w_ci, w_cf, w_co``, per-unit rows): ``(h, c, i, f, g, o, unused)``."""
    i = sigmoid(x0 + r0 + p0 * c_prev)
    f = sigmoid(x1 + r1 + p1 * c_prev)
    g = tanh(x2 + r2)
    c = f * c_prev + i * g
    o = sigmoid(x3 + r3 + p2 * c)
    h = o * tanh(c)
    return h, c, i, f, g, o, h


@triton.jit
def peephole_backward(dh, dc, i, f, g, o, e, c, c_prev, h, h_prev, p0, p1, p2):
    """Peephole LSTM backward: ``dx == dr``; the peephole weights' own gradients are reductions
    of ``dx`` with ``c`` over rows and steps, made after the loop (``Cell.torch_param_grad``)."""
    tc = tanh(c)
    do = dh * tc * o * (1.0 - o)
    dc_total = dc + dh * o * (1.0 - tc * tc) + do * p2
    di = dc_total * g * i * (1.0 - i)
    df = dc_total * c_prev * f * (1.0 - f)
    dg = dc_total * i * (1.0 - g * g)
    return di, df, dg, do, di, df, dg, do, dh, dc_total * f + di * p0 + df * p1
