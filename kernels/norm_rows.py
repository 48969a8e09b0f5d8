"""Row kernels of the LayerNorm-LSTM / -GRU cells (equations: :mod:`fastrnn.cells.variants`).

A LayerNorm over the ``G*H`` recurrent pre-activation of a row needs the whole row in one
program, which the step tier's GEMM kernels (a tile of ``H`` per program) do not have. So
a step is a torch GEMM plus one launch of a row kernel here:

Forward (``ln_forward_kernel``), per step, after the launcher's
``r = h_{t-1} W_hh^T + b_hh`` (``torch.addmm`` into the step's rows of ``r``)::

    pre = x + LN(r; ln_hh)        (fp32 statistics: biased variance, eps inside the sqrt)
    LSTM: c = s(f) c_prev + s(i) tanh(g),  h = s(o) tanh(LN(c; ln_c))
    GRU:  h = n + z (h_prev - n)
    h -> y rows and the (B, H) state the next GEMM reads (times the recurrent-dropout
    scale); c -> the cell-state buffer; gates, r (reset rows) -> the saved rows when SAVE

Backward (``ln_backward_kernel``), per step, before the launcher's ``dh_prev += dr @ W_hh``:
the LN(c) backward, the gates' backward and the LN(r) backward give ``dx`` (``dxg``), ``dr``
(``dhg``) and ``dc_prev``; the kernel leaves in the ``dh`` rows of the step what reaches
``h_prev`` outside the GEMM (GRU's ``dh * z``, zoneout's kept share) and, for the LSTM, the
gradient of LN(c)'s output in ``dn`` (the launcher reduces it to the ``ln_c`` gradients after
the loop; the ``ln_hh`` gradients come from ``dxg`` and the saved ``r``).

Grid ``(cdiv(rows, BLOCK_B),)``: a program owns ``BLOCK_B`` rows and every gate of them, as
``(BLOCK_B, BLOCK_H)`` tiles, ``BLOCK_H`` the next power of two >= ``H`` (masked columns).
The pointwise math is in ``@triton.jit`` functions on those gate tiles with an explicit
column mask and count (:func:`row_stats`, :func:`norm_backward`, :func:`ln_lstm_forward`,
...), usable by any kernel whose programs hold whole rows.

Packed rows, reset flags, zoneout and the recurrent-dropout scale are runtime scalars as in
:mod:`fastrnn.kernels.recurrent_step` (row ``r < n_prev`` continues from the previous step,
a later row from ``h0`` / ``c0``; a reset row reads a zero state and its ``r`` is ``b_hh``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .cells import sigmoid, tanh
from .fits import dtype_name
from .precision import ENABLE_FP_FUSION
from .step_tiles import aligned, flag_rows, reset_rows, zone_blend, zone_split

# --------------------------------------------------------------------------------------
# Pointwise functions on gate tiles (whole rows: every column of a row is in the tiles)
# --------------------------------------------------------------------------------------


@triton.jit
def row_stats(t0, t1, t2, t3, col_mask, count, eps, GATES: tl.constexpr):
    """``(mean, rstd)`` of each row over the valid columns of the first ``GATES`` tiles
    (``count`` values), as ``(BLOCK_B, 1)`` columns: biased variance, ``eps`` inside the
    square root (``torch.nn.functional.layer_norm``)."""
    s = tl.sum(tl.where(col_mask, t0, 0.0), 1)
    if GATES > 1:
        s += tl.sum(tl.where(col_mask, t1, 0.0), 1)
    if GATES > 2:
        s += tl.sum(tl.where(col_mask, t2, 0.0), 1)
    if GATES > 3:
        s += tl.sum(tl.where(col_mask, t3, 0.0), 1)
    mean = (s / count)[:, None]
    d = tl.where(col_mask, t0 - mean, 0.0)
    v = tl.sum(d * d, 1)
    if GATES > 1:
        d = tl.where(col_mask, t1 - mean, 0.0)
        v += tl.sum(d * d, 1)
    if GATES > 2:
        d = tl.where(col_mask, t2 - mean, 0.0)
        v += tl.sum(d * d, 1)
    if GATES > 3:
        d = tl.where(col_mask, t3 - mean, 0.0)
        v += tl.sum(d * d, 1)
    var = v / count + eps
    if var.dtype == tl.float64:
        rstd = 1.0 / tl.sqrt(var)
    else:  # (IEEE rounding: tl.sqrt on fp32 may compile to an approximation)
        rstd = 1.0 / tl.sqrt_rn(var)
    return mean, rstd[:, None]


@triton.jit
def normalised(t, mean, rstd, col_mask):
    """``(t - mean) * rstd`` on the valid columns, 0 on the others."""
    return tl.where(col_mask, (t - mean) * rstd, 0.0)


@triton.jit
def norm_backward(a0, a1, a2, a3, n0, n1, n2, n3, rstd, col_mask, count, GATES: tl.constexpr):
    """The input gradient of a row-wise LayerNorm from ``a_k = dy_k * w_k`` (the output
    gradient times the gain) and the normalised input ``n_k``:
    ``rstd * (a - mean(a) - n * mean(a * n))``, means over the row's ``count`` values."""
    a0 = tl.where(col_mask, a0, 0.0)
    m1 = tl.sum(a0, 1)
    m2 = tl.sum(a0 * n0, 1)
    if GATES > 1:
        a1 = tl.where(col_mask, a1, 0.0)
        m1 += tl.sum(a1, 1)
        m2 += tl.sum(a1 * n1, 1)
    if GATES > 2:
        a2 = tl.where(col_mask, a2, 0.0)
        m1 += tl.sum(a2, 1)
        m2 += tl.sum(a2 * n2, 1)
    if GATES > 3:
        a3 = tl.where(col_mask, a3, 0.0)
        m1 += tl.sum(a3, 1)
        m2 += tl.sum(a3 * n3, 1)
    m1 = (m1 / count)[:, None]
    m2 = (m2 / count)[:, None]
    return (rstd * (a0 - m1 - n0 * m2), rstd * (a1 - m1 - n1 * m2), rstd * (a2 - m1 - n2 * m2),
            rstd * (a3 - m1 - n3 * m2))


@triton.jit
def ln_lstm_forward(x0, x1, x2, x3, r0, r1, r2, r3, c_prev, w0, w1, w2, w3, b0, b1, b2, b3, wc, bc, col_mask, H,
                    eps):
    """LayerNorm-LSTM step: ``(h, c, i, f, g, o)`` (``w_k`` / ``b_k``: ``ln_hh`` of gate k,
    ``wc`` / ``bc``: ``ln_c``; ``(1, BLOCK_H)`` tiles)."""
    mean, rstd = row_stats(r0, r1, r2, r3, col_mask, 4 * H, eps, 4)
    i = sigmoid(x0 + (r0 - mean) * rstd * w0 + b0)
    f = sigmoid(x1 + (r1 - mean) * rstd * w1 + b1)
    g = tanh(x2 + (r2 - mean) * rstd * w2 + b2)
    o = sigmoid(x3 + (r3 - mean) * rstd * w3 + b3)
    c = f * c_prev + i * g
    c_mean, c_rstd = row_stats(c, c, c, c, col_mask, H, eps, 1)
    h = o * tanh((c - c_mean) * c_rstd * wc + bc)
    return h, c, i, f, g, o


@triton.jit
def ln_lstm_backward(dh, dc, i, f, g, o, r0, r1, r2, r3, c, c_prev, w0, w1, w2, w3, wc, bc, col_mask, H, eps):
    """LayerNorm-LSTM step backward: ``(di, df, dg, do, dr0, dr1, dr2, dr3, dc_prev, dn)``;
    ``d*`` the gates' pre-activation gradients (``dxg``), ``dr_k`` of ``r`` (``dhg``), ``dn``
    the gradient of LN(c)'s output (for the ``ln_c`` gradients)."""
    c_mean, c_rstd = row_stats(c, c, c, c, col_mask, H, eps, 1)
    c_hat = normalised(c, c_mean, c_rstd, col_mask)
    tcn = tanh(c_hat * wc + bc)
    do = dh * tcn * o * (1.0 - o)
    dn = dh * o * (1.0 - tcn * tcn)
    dcn, _u1, _u2, _u3 = norm_backward(dn * wc, dn, dn, dn, c_hat, c_hat, c_hat, c_hat, c_rstd, col_mask, H, 1)
    dc_total = dc + dcn
    di = dc_total * g * i * (1.0 - i)
    df = dc_total * c_prev * f * (1.0 - f)
    dg = dc_total * i * (1.0 - g * g)
    mean, rstd = row_stats(r0, r1, r2, r3, col_mask, 4 * H, eps, 4)
    n0 = normalised(r0, mean, rstd, col_mask)
    n1 = normalised(r1, mean, rstd, col_mask)
    n2 = normalised(r2, mean, rstd, col_mask)
    n3 = normalised(r3, mean, rstd, col_mask)
    dr0, dr1, dr2, dr3 = norm_backward(di * w0, df * w1, dg * w2, do * w3, n0, n1, n2, n3, rstd, col_mask, 4 * H, 4)
    return di, df, dg, do, dr0, dr1, dr2, dr3, dc_total * f, dn


@triton.jit
def ln_gru_forward(x0, x1, x2, r0, r1, r2, h_prev, w0, w1, w2, b0, b1, b2, col_mask, H, eps):
    """LayerNorm-GRU step: ``(h, r_g, z, n)``."""
    mean, rstd = row_stats(r0, r1, r2, r2, col_mask, 3 * H, eps, 3)
    rg = sigmoid(x0 + (r0 - mean) * rstd * w0 + b0)
    z = sigmoid(x1 + (r1 - mean) * rstd * w1 + b1)
    n = tanh(x2 + rg * ((r2 - mean) * rstd * w2 + b2))
    return n + z * (h_prev - n), rg, z, n


@triton.jit
def ln_gru_backward(dh, rg, z, n, r0, r1, r2, h_prev, w0, w1, w2, b2, col_mask, H, eps):
    """LayerNorm-GRU step backward: ``(drg, dz, dn, dr0, dr1, dr2, dh_direct)``."""
    mean, rstd = row_stats(r0, r1, r2, r2, col_mask, 3 * H, eps, 3)
    n0 = normalised(r0, mean, rstd, col_mask)
    n1 = normalised(r1, mean, rstd, col_mask)
    n2 = normalised(r2, mean, rstd, col_mask)
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dz = dh * (h_prev - n) * z * (1.0 - z)
    drg = dn * (n2 * w2 + b2) * rg * (1.0 - rg)
    dr0, dr1, dr2, _u = norm_backward(drg * w0, dz * w1, dn * rg * w2, dn, n0, n1, n2, n2, rstd, col_mask, 3 * H, 3)
    return drg, dz, dn, dr0, dr1, dr2, dh * z


# --------------------------------------------------------------------------------------
# Row kernels
# --------------------------------------------------------------------------------------


@triton.jit
def _gate(ptr, row_base, k, H, cols, mask, ACC: tl.constexpr):
    """Gate ``k`` of the rows at ``row_base`` (element offsets of each row's start) in ``ACC``."""
    return tl.load(ptr + row_base + k * H + cols[None, :], mask=mask, other=0.0).to(ACC)


@triton.jit
def _unit(ptr, k, H, cols, col_mask, ACC: tl.constexpr):
    """Row ``k`` of a ``(rows, H)`` per-unit parameter as a ``(1, BLOCK_H)`` tile."""
    return tl.load(ptr + k * H + cols, mask=cols < H, other=0.0).to(ACC)[None, :]


@triton.jit
def _state(seq_ptr, init_ptr, seq_off, rows, n_prev, cols, H, mask, cut, ACC: tl.constexpr):
    """The state entering a step: row ``r < n_prev`` from ``seq`` rows ``seq_off + r``, later
    rows from ``init``; zero where ``cut``."""
    cont = (rows < n_prev)[:, None]
    col = cols[None, :]
    a = tl.load(seq_ptr + (seq_off + rows.to(tl.int64))[:, None] * H + col, mask=mask & cont, other=0.0).to(ACC)
    b = tl.load(init_ptr + rows.to(tl.int64)[:, None] * H + col, mask=mask & (~cont), other=0.0).to(ACC)
    return tl.where(cut, 0.0, tl.where(cont, a, b))


@triton.jit(do_not_specialize=["off", "bs", "prev_off", "n_prev", "r_off", "c_prev_off", "c_out_off", "H",
                               "has_resets", "has_scale", "zoneout_h", "zoneout_c", "p_h", "p_c"])
def ln_forward_kernel(
    xg_ptr,  # (N, G*H) io: LN(W_ih x + b_ih), rows in schedule order
    r_ptr,  # (N or B, G*H) io: h_prev W_hh^T + b_hh of this step's rows, from the launcher's GEMM
    b_hh_ptr,  # (G*H,) io: b_hh (zeros without bias): r of a reset row
    y_ptr,  # (N, H) io: every step's h
    h0_ptr,  # (B, H) io
    hbuf_ptr,  # (B, H) io: the state the next step's GEMM reads (times the recurrent-dropout scale)
    c_prev_ptr,  # acc: c of the previous step (saved rows, or the (B, H) buffer updated in place)
    c0_ptr,  # (B, H) io
    c_out_ptr,  # acc: c of this step
    gates_ptr,  # (N, G*H) io: activated gates (SAVE)
    p_ptr,  # (param_rows, H) io: ln_hh weight (G rows), ln_hh bias (G rows), [ln_c weight, ln_c bias]
    eps_ptr,  # (1,) acc: the LayerNorm eps
    rst_ptr,  # (N,) uint8 reset flags (has_resets)
    scale_ptr,  # (B, H) io: recurrent-dropout scale (has_scale)
    mask_h_ptr, mask_c_ptr,  # (N, H) uint8 zoneout masks (zoneout_h / zoneout_c == 1)
    cell_c_ptr,  # (N, H) acc: the cell's own c before zoneout (SAVE and zoneout_c)
    off, bs, prev_off, n_prev, r_off, c_prev_off, c_out_off, H, has_resets, has_scale, zoneout_h, zoneout_c, p_h, p_c,
    GATES: tl.constexpr, HAS_C: tl.constexpr, SAVE: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    H_ALIGNED: tl.constexpr,  # the launcher guarantees H % 8 == 0 (16-byte rows of 16-bit elements)
):
    H = aligned(H, H_ALIGNED)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    row_mask = rows < bs
    col_mask = (cols < H)[None, :]
    mask = row_mask[:, None] & col_mask
    width = GATES * H
    rows64 = rows.to(tl.int64)
    eps = tl.load(eps_ptr)
    cut = reset_rows(rst_ptr, off, rows, rows < bs * has_resets)[:, None]

    x_base = (off + rows64)[:, None] * width
    r_base = (r_off + rows64)[:, None] * width
    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    x0 = _gate(xg_ptr, x_base, 0, H, cols, mask, ACC)
    x1 = _gate(xg_ptr, x_base, 1, H, cols, mask, ACC)
    x2 = _gate(xg_ptr, x_base, 2, H, cols, mask, ACC)
    # a reset row's r is b_hh (its GEMM read a state that is zero there)
    r0 = tl.where(cut, _unit(b_hh_ptr, 0, H, cols, col_mask, ACC), _gate(r_ptr, r_base, 0, H, cols, mask, ACC))
    r1 = tl.where(cut, _unit(b_hh_ptr, 1, H, cols, col_mask, ACC), _gate(r_ptr, r_base, 1, H, cols, mask, ACC))
    r2 = tl.where(cut, _unit(b_hh_ptr, 2, H, cols, col_mask, ACC), _gate(r_ptr, r_base, 2, H, cols, mask, ACC))
    x3, r3 = zero, zero
    if GATES > 3:
        x3 = _gate(xg_ptr, x_base, 3, H, cols, mask, ACC)
        r3 = tl.where(cut, _unit(b_hh_ptr, 3, H, cols, col_mask, ACC), _gate(r_ptr, r_base, 3, H, cols, mask, ACC))
    if SAVE:  # the saved r of a reset row is what the step normalised
        io = r_ptr.dtype.element_ty
        keep = mask & cut
        tl.store(r_ptr + r_base + cols[None, :], r0.to(io), mask=keep)
        tl.store(r_ptr + r_base + H + cols[None, :], r1.to(io), mask=keep)
        tl.store(r_ptr + r_base + 2 * H + cols[None, :], r2.to(io), mask=keep)
        if GATES > 3:
            tl.store(r_ptr + r_base + 3 * H + cols[None, :], r3.to(io), mask=keep)

    h_prev = _state(y_ptr, h0_ptr, prev_off, rows, n_prev, cols, H, mask, cut, ACC)
    w0 = _unit(p_ptr, 0, H, cols, col_mask, ACC)
    w1 = _unit(p_ptr, 1, H, cols, col_mask, ACC)
    w2 = _unit(p_ptr, 2, H, cols, col_mask, ACC)
    b0 = _unit(p_ptr, GATES, H, cols, col_mask, ACC)
    b1 = _unit(p_ptr, GATES + 1, H, cols, col_mask, ACC)
    b2 = _unit(p_ptr, GATES + 2, H, cols, col_mask, ACC)
    state_base = rows64[:, None] * H + cols[None, :]
    if HAS_C:
        w3 = _unit(p_ptr, 3, H, cols, col_mask, ACC)
        b3 = _unit(p_ptr, 7, H, cols, col_mask, ACC)
        wc = _unit(p_ptr, 8, H, cols, col_mask, ACC)
        bc = _unit(p_ptr, 9, H, cols, col_mask, ACC)
        c_prev = _state(c_prev_ptr, c0_ptr, c_prev_off, rows, n_prev, cols, H, mask, cut, ACC)
        h, c, s0, s1, s2, s3 = ln_lstm_forward(x0, x1, x2, x3, r0, r1, r2, r3, c_prev, w0, w1, w2, w3, b0, b1, b2,
                                               b3, wc, bc, col_mask, H, eps)
        c_base = (c_out_off + rows64)[:, None] * H + cols[None, :]
        if SAVE:
            keep_c = mask & flag_rows(rows, zoneout_c)[:, None]
            tl.store(cell_c_ptr + (off + rows64)[:, None] * H + cols[None, :], c, mask=keep_c)
        c = zone_blend(c_prev, c, mask_c_ptr, zoneout_c, p_c, off, rows64, cols, H, mask)
        tl.store(c_out_ptr + c_base, c, mask=mask)
    else:
        h, s0, s1, s2 = ln_gru_forward(x0, x1, x2, r0, r1, r2, h_prev, w0, w1, w2, b0, b1, b2, col_mask, H, eps)
        s3 = s2
    h = zone_blend(h_prev, h, mask_h_ptr, zoneout_h, p_h, off, rows64, cols, H, mask)
    io = y_ptr.dtype.element_ty
    tl.store(y_ptr + (off + rows64)[:, None] * H + cols[None, :], h.to(io), mask=mask)
    scaled = mask & flag_rows(rows, has_scale)[:, None]
    scale = tl.load(scale_ptr + state_base, mask=scaled, other=1.0).to(ACC)
    tl.store(hbuf_ptr + state_base, (h * scale).to(io), mask=mask)
    if SAVE:
        g_ptrs = gates_ptr + x_base + cols[None, :]
        tl.store(g_ptrs, s0.to(io), mask=mask)
        tl.store(g_ptrs + H, s1.to(io), mask=mask)
        tl.store(g_ptrs + 2 * H, s2.to(io), mask=mask)
        if GATES > 3:
            tl.store(g_ptrs + 3 * H, s3.to(io), mask=mask)


@triton.jit(do_not_specialize=["q_off", "q_bs", "prev_off", "n_prev", "H", "has_resets", "zoneout_h", "zoneout_c",
                               "p_h", "p_c"])
def ln_backward_kernel(
    gates_ptr,  # (N, G*H) io: saved activated gates
    r_ptr,  # (N, G*H) io: saved r
    c_seq_ptr,  # (N, H) acc: the state c after every step (what the next step read)
    c_cell_ptr,  # (N, H) acc: the cell's own c (c_seq without zoneout of c)
    c0_ptr,  # (B, H) io
    y_ptr,  # (N, H) io
    h0_ptr,  # (B, H) io
    dy_ptr,  # (N, H) io
    dh_ptr,  # (B, H) acc state: in: the gradient reaching h of this step from later steps; out: the
    #          part reaching h_prev outside the GEMM
    dc_ptr,  # (B, H) acc state: dc in, dc_prev out
    dxg_ptr,  # (N, G*H) io
    dhg_ptr,  # (N, G*H) io: dr
    dn_ptr,  # (N, H) acc: the gradient of LN(c)'s output (LSTM)
    p_ptr, eps_ptr, rst_ptr, mask_h_ptr, mask_c_ptr,
    q_off, q_bs, prev_off, n_prev, H, has_resets, zoneout_h, zoneout_c, p_h, p_c,
    GATES: tl.constexpr, HAS_C: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    H_ALIGNED: tl.constexpr,  # the launcher guarantees H % 8 == 0
):
    H = aligned(H, H_ALIGNED)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    row_mask = rows < q_bs
    col_mask = (cols < H)[None, :]
    mask = row_mask[:, None] & col_mask
    width = GATES * H
    rows64 = rows.to(tl.int64)
    eps = tl.load(eps_ptr)
    cut = reset_rows(rst_ptr, q_off, rows, rows < q_bs * has_resets)[:, None]
    state_base = rows64[:, None] * H + cols[None, :]
    seq_base = (q_off + rows64)[:, None] * H + cols[None, :]
    g_base = (q_off + rows64)[:, None] * width

    dh = tl.load(dh_ptr + state_base, mask=mask, other=0.0) + tl.load(dy_ptr + seq_base, mask=mask, other=0.0).to(ACC)
    dh, dh_keep = zone_split(dh, mask_h_ptr, zoneout_h, p_h, q_off, rows64, cols, H, mask)
    s0 = _gate(gates_ptr, g_base, 0, H, cols, mask, ACC)
    s1 = _gate(gates_ptr, g_base, 1, H, cols, mask, ACC)
    s2 = _gate(gates_ptr, g_base, 2, H, cols, mask, ACC)
    r0 = _gate(r_ptr, g_base, 0, H, cols, mask, ACC)
    r1 = _gate(r_ptr, g_base, 1, H, cols, mask, ACC)
    r2 = _gate(r_ptr, g_base, 2, H, cols, mask, ACC)
    w0 = _unit(p_ptr, 0, H, cols, col_mask, ACC)
    w1 = _unit(p_ptr, 1, H, cols, col_mask, ACC)
    w2 = _unit(p_ptr, 2, H, cols, col_mask, ACC)
    io = dxg_ptr.dtype.element_ty
    d_ptrs = dxg_ptr + g_base + cols[None, :]
    dr_ptrs = dhg_ptr + g_base + cols[None, :]
    if HAS_C:
        s3 = _gate(gates_ptr, g_base, 3, H, cols, mask, ACC)
        r3 = _gate(r_ptr, g_base, 3, H, cols, mask, ACC)
        w3 = _unit(p_ptr, 3, H, cols, col_mask, ACC)
        wc = _unit(p_ptr, 8, H, cols, col_mask, ACC)
        bc = _unit(p_ptr, 9, H, cols, col_mask, ACC)
        dc = tl.load(dc_ptr + state_base, mask=mask, other=0.0)
        dc, dc_keep = zone_split(dc, mask_c_ptr, zoneout_c, p_c, q_off, rows64, cols, H, mask)
        c = tl.load(c_cell_ptr + seq_base, mask=mask, other=0.0)
        c_prev = _state(c_seq_ptr, c0_ptr, prev_off, rows, n_prev, cols, H, mask, cut, ACC)
        dx0, dx1, dx2, dx3, dr0, dr1, dr2, dr3, dc_prev, dn = ln_lstm_backward(
            dh, dc, s0, s1, s2, s3, r0, r1, r2, r3, c, c_prev, w0, w1, w2, w3, wc, bc, col_mask, H, eps)
        tl.store(dc_ptr + state_base, tl.where(cut, 0.0, dc_prev + dc_keep), mask=mask)
        tl.store(dn_ptr + seq_base, dn, mask=mask)
        tl.store(d_ptrs + 3 * H, dx3.to(io), mask=mask)
        tl.store(dr_ptrs + 3 * H, dr3.to(io), mask=mask)
        direct = dh_keep
    else:
        b2 = _unit(p_ptr, 5, H, cols, col_mask, ACC)
        h_prev = _state(y_ptr, h0_ptr, prev_off, rows, n_prev, cols, H, mask, cut, ACC)
        dx0, dx1, dx2, dr0, dr1, dr2, direct = ln_gru_backward(dh, s0, s1, s2, r0, r1, r2, h_prev, w0, w1, w2, b2,
                                                               col_mask, H, eps)
        direct += dh_keep
    tl.store(d_ptrs, dx0.to(io), mask=mask)
    tl.store(d_ptrs + H, dx1.to(io), mask=mask)
    tl.store(d_ptrs + 2 * H, dx2.to(io), mask=mask)
    tl.store(dr_ptrs, dr0.to(io), mask=mask)
    tl.store(dr_ptrs + H, dr1.to(io), mask=mask)
    tl.store(dr_ptrs + 2 * H, dr2.to(io), mask=mask)
    # (the launcher adds dr @ W_hh to these rows, and zeroes the reset rows after it)
    tl.store(dh_ptr + state_base, tl.where(cut, 0.0, direct), mask=mask)


# --------------------------------------------------------------------------------------
# Launch choices (shared by the launcher and the compile report)
# --------------------------------------------------------------------------------------

#: The largest hidden size the row kernels take, per accumulation width: a program holds
#: the ``G*H`` values of r and x of its rows in registers (fp32: 8 warps x 255 registers
#: hold the LSTM's 2 x 4 x 2048 and what the gates need; past it they spill).
MAX_HIDDEN = {4: 2048, 8: 1024}


def max_hidden(dtype: torch.dtype) -> int:
    """The largest ``H`` the row kernels run for I/O dtype ``dtype``."""
    return MAX_HIDDEN[8 if dtype == torch.float64 else 4]


#: Compile options of every launch (and of the report's compiles).
OPTIONS = dict(enable_fp_fusion=ENABLE_FP_FUSION)


class RowConfig(NamedTuple):
    """Rows per program, the padded row width and warps, picked from ``H`` and the dtype."""

    block_b: int
    block_h: int
    num_warps: int

    @property
    def label(self) -> str:
        return f"B{self.block_b}-H{self.block_h}-w{self.num_warps}"


#: Row configurations that replace :func:`base_config`'s on an arch the tables are not made for,
#: where its choice spills: ``(compute capability, cell family, dtype, SAVE)`` -> configuration
#: (forward kernel). On sm_86 / sm_89 the LayerNorm-LSTM's 16-bit saving forward of a
#: 1024-wide row keeps an 8-byte stack frame with 16 warps, none with 8; on sm_100 its fp32
#: saving forward of 256-wide rows (4 per program) 8 B with 8 warps, none with 4.
ARCH_CONFIGS = {**{(arch, "LayerNormLSTM", d, True): RowConfig(1, 1024, 8)
                   for arch in (86, 89) for d in ("float16", "bfloat16")},
                (100, "LayerNormLSTM", "float32", True): RowConfig(4, 256, 4)}
#: Backward kernels with no spill-free configuration on an arch: ``(compute capability, cell
#: family, dtype, BLOCK_H, H_ALIGNED)``. The LayerNorm-LSTM's 16-bit backward of a 2048-wide
#: row with ``H`` not a multiple of 8 spills 8-848 B on sm_86 / sm_89 at 4 to 32 warps (its
#: fp32 kernel does not), so the launcher runs that backward on fp32 copies there
#: (:func:`fp32_backward`).
FP32_BACKWARD = frozenset((arch, "LayerNormLSTM", d, 2048, False)
                          for arch in (86, 89) for d in ("float16", "bfloat16"))
#: Stack frames no configuration avoids, accepted (the report passes the row and lists it):
#: ``(compute capability, cell family, dtype, BLOCK_H, H_ALIGNED)`` of a backward kernel ->
#: bytes. The fp32 LayerNorm-LSTM backward of a 2048-wide row with ``H`` not a multiple of 8
#: keeps 8 B on sm_100 at 8 warps (776 B at 4; 88 B at 16, whose threads get 128 registers);
#: with no wider dtype to run it in, the alternative is refusing those layers' training there.
ACCEPTED_STACK = {(100, "LayerNormLSTM", "float32", 2048, False): 8}


def row_config(hidden: int, dtype: torch.dtype, arch: int | None = None, family: str | None = None,
               save: bool | None = None) -> RowConfig:
    """The configuration of cell ``family`` ("LayerNormLSTM" / "LayerNormGRU") for ``H`` =
    ``hidden`` on compute capability ``arch`` (None: the tables' own), forward (``save``
    given) or backward: :func:`base_config`, but where :data:`ARCH_CONFIGS` replaces it."""
    cfg = base_config(hidden, dtype)
    if save is None or arch is None:
        return cfg
    other = ARCH_CONFIGS.get((arch, family, dtype_name(dtype), bool(save)))
    return other if other is not None and other.block_h == cfg.block_h else cfg


def fp32_backward(family: str, hidden: int, dtype: torch.dtype, arch: int | None) -> bool:
    """Whether the backward of ``family`` at ``H`` = ``hidden`` runs on fp32 copies of its
    16-bit tensors on compute capability ``arch`` (:data:`FP32_BACKWARD`)."""
    key = (arch, family, dtype_name(dtype), base_config(hidden, dtype).block_h, h_aligned(hidden))
    return key in FP32_BACKWARD


def base_config(hidden: int, dtype: torch.dtype) -> RowConfig:
    """Up to 1024 elements of each gate tile per program (512 for fp64; one row at least),
    at most 16 rows; 8 warps from 512 elements, else 4, and 16 for a 16-bit row of 1024.
    The compile report's spill-free choice: 2048-element tiles of several rows spill in the
    LSTM backward, 16 warps cap a thread at 128 registers and spill at a 2048-wide fp32
    row, and a few kernels keep an 8-byte stack frame with 4 warps at 512 elements (fp32
    GRU backward) or 8 warps at a 1024-wide 16-bit row (LSTM forward)."""
    block_h = max(16, triton.next_power_of_2(hidden))
    block_b = max(1, min(16, (512 if dtype == torch.float64 else 1024) // block_h))
    warps = 8 if block_b * block_h >= 512 else 4
    if dtype in (torch.float16, torch.bfloat16) and block_h == 1024:
        warps = 16
    return RowConfig(block_b, block_h, warps)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def h_aligned(hidden: int) -> bool:
    """Whether a launch runs the ``H_ALIGNED`` specialisation (``H`` a multiple of 8: rows of
    16-bit elements are 16-byte vector loads)."""
    return hidden % 8 == 0


def constexprs(cell, dtype: torch.dtype, cfg: RowConfig, save: bool | None = None, aligned_rows: bool = False) -> dict:
    """Compile-time arguments of the forward kernel (``save`` given) or the backward one."""
    out = dict(GATES=cell.gates, HAS_C=cell.has_cell_state, ACC=_acc(dtype), BLOCK_B=cfg.block_b,
               BLOCK_H=cfg.block_h, H_ALIGNED=bool(aligned_rows))
    if save is not None:
        out["SAVE"] = bool(save)
    return out


# Pointer arguments in order with the dtype each holds ("io": the layer's, "acc": fp32 or
# fp64, "u8": flags and masks), and the runtime scalars (fp32 for FLOATS, else int32).
FORWARD_POINTERS = (
    ("xg_ptr", "io"), ("r_ptr", "io"), ("b_hh_ptr", "io"), ("y_ptr", "io"), ("h0_ptr", "io"), ("hbuf_ptr", "io"),
    ("c_prev_ptr", "acc"), ("c0_ptr", "io"), ("c_out_ptr", "acc"), ("gates_ptr", "io"), ("p_ptr", "io"),
    ("eps_ptr", "acc"), ("rst_ptr", "u8"), ("scale_ptr", "io"), ("mask_h_ptr", "u8"), ("mask_c_ptr", "u8"),
    ("cell_c_ptr", "acc"),
)
FORWARD_INTS = ("off", "bs", "prev_off", "n_prev", "r_off", "c_prev_off", "c_out_off", "H", "has_resets", "has_scale",
                "zoneout_h", "zoneout_c", "p_h", "p_c")
BACKWARD_POINTERS = (
    ("gates_ptr", "io"), ("r_ptr", "io"), ("c_seq_ptr", "acc"), ("c_cell_ptr", "acc"), ("c0_ptr", "io"),
    ("y_ptr", "io"), ("h0_ptr", "io"), ("dy_ptr", "io"), ("dh_ptr", "acc"), ("dc_ptr", "acc"), ("dxg_ptr", "io"),
    ("dhg_ptr", "io"), ("dn_ptr", "acc"), ("p_ptr", "io"), ("eps_ptr", "acc"), ("rst_ptr", "u8"),
    ("mask_h_ptr", "u8"), ("mask_c_ptr", "u8"),
)
BACKWARD_INTS = ("q_off", "q_bs", "prev_off", "n_prev", "H", "has_resets", "zoneout_h", "zoneout_c", "p_h", "p_c")
FLOATS = ("p_h", "p_c")



class Specialisation(NamedTuple):
    """One compiled variant the launcher can choose: what the compile report compiles."""

    kernel: object
    kernel_name: str
    kind: str  # the cell's name
    dtype: torch.dtype
    label: str
    config: RowConfig
    constexprs: dict
    pointers: tuple
    ints: tuple
    options: dict = OPTIONS
    floats: tuple = FLOATS
    w_hh_on_chip: bool = False  # (W_hh is read by the launcher's torch GEMM, never here)

    def launched_on(self, arch: int) -> bool:
        """Whether the launcher picks this variant on compute capability ``arch`` (a backward
        of :data:`FP32_BACKWARD` runs the fp32 kernel there)."""
        save, aligned = self.constexprs.get("SAVE"), self.constexprs["H_ALIGNED"]
        if save is None and (arch, self.kind, dtype_name(self.dtype), self.config.block_h, aligned) in FP32_BACKWARD:
            return False
        return row_config(self.config.block_h, self.dtype, arch, self.kind, save) == self.config

    def accepted_stack(self, arch: int) -> int:
        """Bytes of stack :data:`ACCEPTED_STACK` accepts for this variant on ``arch``."""
        if self.constexprs.get("SAVE") is not None:
            return 0
        key = (arch, self.kind, dtype_name(self.dtype), self.config.block_h, self.constexprs["H_ALIGNED"])
        return ACCEPTED_STACK.get(key, 0)


def configs(dtype: torch.dtype) -> list[RowConfig]:
    """Every configuration :func:`base_config` picks for ``dtype`` (``H`` up to :func:`max_hidden`)."""
    top = max_hidden(dtype)
    return sorted({base_config(1 << k, dtype) for k in range(top.bit_length())}, key=lambda c: c.block_h)


def specialisations(dtypes=(torch.float32, torch.float16, torch.bfloat16)) -> list[Specialisation]:
    """Every (kernel, cell, dtype, H_ALIGNED, SAVE, configuration) the launcher can pick: the
    LayerNorm-LSTM and -GRU (one kernel per family whatever its eps: eps is a pointer)."""
    from fastrnn.cells.variants import layer_norm_gru, layer_norm_lstm

    out = []
    for dtype in dtypes:
        for cell in (layer_norm_lstm(), layer_norm_gru()):
            kind = cell.name.partition("(")[0]
            for cfg, only in _configs_of(kind, dtype):
                for rows8 in (False, True):
                    name = dtype_name(dtype) + ("-a8" if rows8 else "")
                    for save in (False, True) if only is None else (only,):
                        out.append(Specialisation(ln_forward_kernel, "norm-forward", kind, dtype,
                                                  name + ("-save" if save else ""), cfg,
                                                  constexprs(cell, dtype, cfg, save, rows8), FORWARD_POINTERS,
                                                  FORWARD_INTS))
                    if only is None:
                        out.append(Specialisation(ln_backward_kernel, "norm-backward", kind, dtype, name, cfg,
                                                  constexprs(cell, dtype, cfg, None, rows8), BACKWARD_POINTERS,
                                                  BACKWARD_INTS))
    return out


def _configs_of(family: str, dtype: torch.dtype) -> list:
    """``(configuration, SAVE)`` pairs of ``family``'s specialisations: every one of
    :func:`configs` (both kernels, SAVE None: both), then those :data:`ARCH_CONFIGS` adds
    (the forward only, with its SAVE)."""
    extra = sorted({(cfg, save) for (_, f, d, save), cfg in ARCH_CONFIGS.items()
                    if f == family and d == dtype_name(dtype) and cfg not in configs(dtype)})
    return [(cfg, None) for cfg in configs(dtype)] + extra
