"""The cells people ask for beyond torch's four: peephole LSTM, LayerNorm-LSTM and -GRU.

Equations (``x_k`` / ``r_k`` as in :mod:`fastrnn.cells.builtin`; ``p`` the cell's per-unit
parameters, ``(param_rows, H)``):

- Peephole LSTM (ONNX LSTM's ``P`` input; ``p = [w_ci, w_cf, w_co]``):
  ``i = sigmoid(x0 + r0 + w_ci * c_prev)``, ``f = sigmoid(x1 + r1 + w_cf * c_prev)``,
  ``g = tanh(x2 + r2)``, ``c = f * c_prev + i * g``, ``o = sigmoid(x3 + r3 + w_co * c)``,
  ``h = o * tanh(c)``.
- LayerNorm-LSTM (Ba et al. 2016, eqs. 20-22): ``x_k`` is already ``LN(W_ih x + b_ih; ln_ih)``
  (the layer normalises the whole input projection before the time loop);
  ``r = h_prev W_hh^T + b_hh`` (``b_hh`` stays with ``r``: it is inside the normalisation),
  ``pre = x + LN(r; ln_hh)`` over the ``4H`` gate vector of each row,
  ``c = sigmoid(f) * c_prev + sigmoid(i) * tanh(g)``, ``h = sigmoid(o) * tanh(LN(c; ln_c))``;
  ``p = [ln_hh_weight (4 rows), ln_hh_bias (4 rows), ln_c_weight, ln_c_bias]``.
- LayerNorm-GRU: ``a = x`` (``LN(W_ih x + b_ih; ln_ih)``), ``b = LN(r; ln_hh)`` over ``3H``,
  ``r_g = sigmoid(a_r + b_r)``, ``z = sigmoid(a_z + b_z)``, ``n = tanh(a_n + r_g * b_n)``,
  ``h = (1 - z) * n + z * h_prev``; ``p = [ln_hh_weight (3 rows), ln_hh_bias (3 rows)]``.

LN is ``torch.nn.functional.layer_norm``'s: biased variance, ``eps`` inside the square root.
The LayerNorm cells keep ``r`` (``e``, ``G*H`` wide) for the backward, which recomputes the
row statistics from it and from the saved ``c``. They have no pointwise Triton functions (the
row statistics need whole rows, which the tiers' programs do not hold): the triton backend
runs them with row kernels of their own (:mod:`fastrnn.backends.triton.norm`).
The peephole cell has Triton functions (:mod:`fastrnn.kernels.cells`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import _REGISTRY, Cell, register_family


def _normalised(v, eps):
    """``((v - mean) * rstd, rstd)`` over the last dimension, as layer_norm computes them."""
    mean = v.mean(-1, keepdim=True)
    d = v - mean
    rstd = torch.rsqrt((d * d).mean(-1, keepdim=True) + eps)
    return d * rstd, rstd


def _norm_backward(dy, weight, xhat, rstd):
    """``(dx, dweight, dbias)`` of ``y = xhat * weight + bias`` for a row-wise LayerNorm."""
    dxhat = dy * weight
    dx = rstd * (dxhat - dxhat.mean(-1, keepdim=True) - xhat * (dxhat * xhat).mean(-1, keepdim=True))
    return dx, (dy * xhat).sum(0), dy.sum(0)


# --------------------------------------------------------------------------------------
# Peephole LSTM
# --------------------------------------------------------------------------------------


def peephole_forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev, p):
    i = torch.sigmoid(x0 + r0 + p[0] * c_prev)
    f = torch.sigmoid(x1 + r1 + p[1] * c_prev)
    g = torch.tanh(x2 + r2)
    c = f * c_prev + i * g
    o = torch.sigmoid(x3 + r3 + p[2] * c)
    return o * torch.tanh(c), c, i, f, g, o, None


def peephole_backward(dh, dc, i, f, g, o, e, c, c_prev, h, h_prev, p):
    tc = torch.tanh(c)
    do = dh * tc * o * (1 - o)
    dc_total = dc + dh * o * (1 - tc * tc) + do * p[2]
    di = dc_total * g * i * (1 - i)
    df = dc_total * c_prev * f * (1 - f)
    dg = dc_total * i * (1 - g * g)
    dc_prev = dc_total * f + di * p[0] + df * p[1]
    dp = torch.stack(((di * c_prev).sum(0), (df * c_prev).sum(0), (do * c).sum(0)))
    return di, df, dg, do, di, df, dg, do, None, dc_prev, dp


#: The peephole parameters' names (``torch.nn``-style stems), in the order of ``p``'s rows.
PEEPHOLE_WEIGHTS = ("weight_ci", "weight_cf", "weight_co")

def peephole_param_grad(dx, dr, c, c_prev, h, h_prev, p):
    """The peephole weights' gradient over a whole sequence (the Triton tiers' form)."""
    hidden = c.shape[1]
    di, df, do = dx[:, :hidden], dx[:, hidden : 2 * hidden], dx[:, 3 * hidden :]
    return torch.stack(((di * c_prev).sum(0), (df * c_prev).sum(0), (do * c).sum(0))).to(p.dtype)


LSTM_PEEPHOLE = Cell(
    "LSTM_PEEPHOLE", 4, peephole_forward, peephole_backward, "fastrnn.kernels.cells:peephole_forward",
    "fastrnn.kernels.cells:peephole_backward", has_cell_state=True, param_rows=3,
    torch_param_grad=peephole_param_grad,
)


# --------------------------------------------------------------------------------------
# LayerNorm-LSTM and LayerNorm-GRU (one definition per eps)
# --------------------------------------------------------------------------------------


def _family_name(family: str, eps) -> str:
    return f"{family}(eps={float(eps)!r})"


def layer_norm_lstm(eps: float = 1e-5) -> Cell:
    """The LayerNorm-LSTM cell with this ``eps`` (made once, then found by name)."""
    name = _family_name("LayerNormLSTM", eps)
    if name in _REGISTRY:
        return _REGISTRY[name]
    eps = float(eps)

    def forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev, p):
        hidden = x0.shape[1]
        r = torch.cat((r0, r1, r2, r3), 1)
        pre = torch.cat((x0, x1, x2, x3), 1) + F.layer_norm(r, (4 * hidden,), p[0:4].reshape(-1),
                                                             p[4:8].reshape(-1), eps)
        a_i, a_f, a_g, a_o = pre.split(hidden, 1)
        i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
        c = f * c_prev + i * g
        h = o * torch.tanh(F.layer_norm(c, (hidden,), p[8], p[9], eps))
        return h, c, i, f, g, o, r

    def backward(dh, dc, i, f, g, o, r, c, c_prev, h, h_prev, p):
        hidden = dh.shape[1]
        c_hat, c_rstd = _normalised(c, eps)
        tcn = torch.tanh(c_hat * p[8] + p[9])
        do = dh * tcn * o * (1 - o)
        dcn = dh * o * (1 - tcn * tcn)
        dc_norm, dw_c, db_c = _norm_backward(dcn, p[8], c_hat, c_rstd)
        dc_total = dc + dc_norm
        di = dc_total * g * i * (1 - i)
        df = dc_total * c_prev * f * (1 - f)
        dg = dc_total * i * (1 - g * g)
        dpre = torch.cat((di, df, dg, do), 1)
        r_hat, r_rstd = _normalised(r, eps)
        dr, dw_r, db_r = _norm_backward(dpre, p[0:4].reshape(-1), r_hat, r_rstd)
        dp = torch.cat((dw_r.view(4, hidden), db_r.view(4, hidden), dw_c.unsqueeze(0), db_c.unsqueeze(0)))
        dr0, dr1, dr2, dr3 = dr.split(hidden, 1)
        return di, df, dg, do, dr0, dr1, dr2, dr3, None, dc_total * f, dp

    return Cell(
        name, 4, forward, backward, has_cell_state=True, recurrent_apart=True, saves_extra=True,
        param_rows=10, extra_width=4,
    )


def layer_norm_gru(eps: float = 1e-5) -> Cell:
    """The LayerNorm-GRU cell with this ``eps`` (made once, then found by name)."""
    name = _family_name("LayerNormGRU", eps)
    if name in _REGISTRY:
        return _REGISTRY[name]
    eps = float(eps)

    def forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev, p):
        hidden = x0.shape[1]
        r = torch.cat((r0, r1, r2), 1)
        b = F.layer_norm(r, (3 * hidden,), p[0:3].reshape(-1), p[3:6].reshape(-1), eps)
        b_r, b_z, b_n = b.split(hidden, 1)
        rg, z = torch.sigmoid(x0 + b_r), torch.sigmoid(x1 + b_z)
        n = torch.tanh(x2 + rg * b_n)
        return n + z * (h_prev - n), None, rg, z, n, None, r

    def backward(dh, dc, rg, z, n, s3, r, c, c_prev, h, h_prev, p):
        hidden = dh.shape[1]
        r_hat, r_rstd = _normalised(r, eps)
        w = p[0:3].reshape(-1)
        b_n = (r_hat * w + p[3:6].reshape(-1))[:, 2 * hidden :]
        dn = dh * (1 - z) * (1 - n * n)
        dz = dh * (h_prev - n) * z * (1 - z)
        drg = dn * b_n * rg * (1 - rg)
        db = torch.cat((drg, dz, dn * rg), 1)
        dr, dw, dbias = _norm_backward(db, w, r_hat, r_rstd)
        dp = torch.cat((dw.view(3, hidden), dbias.view(3, hidden)))
        dr0, dr1, dr2 = dr.split(hidden, 1)
        return drg, dz, dn, None, dr0, dr1, dr2, None, dh * z, None, dp

    return Cell(
        name, 3, forward, backward, recurrent_apart=True, saves_extra=True, forward_reads_h_prev=True,
        backward_reads_h_prev=True, direct_h_grad=True, param_rows=6, extra_width=3,
    )


register_family("LayerNormLSTM", layer_norm_lstm)
register_family("LayerNormGRU", layer_norm_gru)
