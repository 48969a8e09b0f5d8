"""Resident kernels of the LayerNorm-LSTM / -GRU: the whole time loop of a pass in one launch.

As :mod:`fastrnn.kernels.resident`: one program owns ``BLOCK_B`` batch rows and *all* hidden
units, loads ``W_hh`` once before an in-kernel ``for t in range(T)`` loop and keeps the state
in ``ACC`` registers. Owning whole rows is what a LayerNorm over the ``G*H`` gate vector of a
row needs, so the normalisation runs in registers beside the recurrent GEMM; the cell math is
that of the step tier's row kernels (:mod:`fastrnn.kernels.norm_rows`: :func:`row_stats`,
:func:`ln_lstm_forward`, ...; equations: :mod:`fastrnn.cells.variants`).

Forward (``resident_norm_forward_kernel``), per step ``t`` in processing order::

    r_k = (h * scale).to(io) @ W_k^T + b_hh_k         one tl.dot per gate; r rounded to io
    pre = x + LN(r; ln_hh)                            fp32 statistics over the G*H values of a row
    LSTM: c = s(f) c_prev + s(i) tanh(g),  h = s(o) tanh(LN(c; ln_c))
    GRU:  h = n + z (h_prev - n)
    zoneout of c / h; y[rows of t] = h; gates, r, c (and the cell's own c) -> saved rows

A reset row starts from a zero state (so its ``r`` is ``b_hh``). Backward
(``resident_norm_backward_kernel``), per step in reverse processing order: the LN(c)
backward, the gates' backward and the LN(r) backward (:func:`ln_lstm_backward` /
:func:`ln_gru_backward`) give ``dx`` (``dxg``), ``dr`` (``dhg``), ``dc_prev`` and, for the
LSTM, the gradient of LN(c)'s output (``dn``); then ``dh_prev = (sum_k dr_k @ W_k) * scale``
plus what reaches ``h_prev`` outside the GEMM (GRU's ``dh * z``, zoneout's kept share); no
gradient crosses a reset. The LayerNorm gains' gradients are reduced after the loop by the
launcher from ``dxg``, the saved ``r`` / ``c`` and ``dn``, as on the step tier.

Saved layout: that of the step tier's LayerNorm path (:mod:`fastrnn.backends.triton.norm`):
gates ``(N, G*H)`` and ``r`` ``(N, G*H)`` in the I/O dtype, then for the LSTM ``c`` ``(N, H)``
in ``ACC`` (the zoned-out state with zoneout of ``c``, followed by the cell's own ``c``), so
a forward on either path and a backward on the other agree.

Per-unit parameters ``p_ptr``, ``(G*2 [+ 2], H)``: ``ln_hh`` gain (G rows), ``ln_hh`` bias
(G rows), then for the LSTM the ``ln_c`` gain and bias; ``eps`` is a one-element ``ACC``
tensor (one kernel whatever the cell's eps). Packed rows, ``T``, ``B``, ``H``, the
direction, ``save`` and the regularisers' flags are runtime arguments as in
:mod:`fastrnn.kernels.resident`; ``REGULARISED`` (zoneout or a recurrent-dropout scale) and
``H_ALIGNED`` are compile-time ones. What compiles clean is in
:data:`fastrnn.kernels.fits.RESIDENT_NORM`.
"""

from __future__ import annotations

from itertools import product
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import fits
from .cells import recurrent_bias
from .launches import checked_pointers as _pointers
from .launches import record
from .norm_rows import ln_gru_backward, ln_gru_forward, ln_lstm_backward, ln_lstm_forward
from .precision import ENABLE_FP_FUSION
from .resident_tiles import (
    acc_type, aligned, aligned_backward, aligned_shared, dot_operand, flag_rows, h_aligned, kernel_config, launched_on,
    load_weights, reset_rows, step_rows,
    store_gates, timestep, zone_blend, zone_weight,
)


@triton.jit
def _unit(p_ptr, k, H, cols, col_mask, ACC: tl.constexpr):
    """Row ``k`` of the ``(rows, H)`` LayerNorm parameters as a ``(1, BLOCK_H)`` tile."""
    return tl.load(p_ptr + k * H + cols, mask=col_mask, other=0.0).to(ACC)[None, :]


@triton.jit
def _gate_dot(hx, w, b, zero, IO: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """``hx @ w + b`` rounded to the I/O dtype (what the saved ``r`` holds), in ``ACC``."""
    return (tl.dot(hx, w, zero, input_precision=PRECISION) + b).to(IO).to(ACC)


@triton.jit
def _load_gates(ptrs, H, mask, GATES: tl.constexpr, ACC: tl.constexpr):
    """Slots ``0 .. GATES-1`` of a ``(rows, GATES*H)`` buffer in ``ACC`` (zeros past ``GATES``)."""
    v0 = tl.load(ptrs, mask=mask, other=0.0).to(ACC)
    v1 = tl.load(ptrs + H, mask=mask, other=0.0).to(ACC)
    v2 = tl.load(ptrs + 2 * H, mask=mask, other=0.0).to(ACC)
    v3 = v2 * 0.0
    if GATES > 3:
        v3 = tl.load(ptrs + 3 * H, mask=mask, other=0.0).to(ACC)
    return v0, v1, v2, v3


# --------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["T", "B", "uniform_b", "reverse", "save", "H", "has_resets", "has_scale", "zoneout_h",
                               "zoneout_c", "p_h", "p_c"])
def resident_norm_forward_kernel(
    xg_ptr,  # (N, G*H) io: LN(W_ih x + b_ih), rows grouped by timestep
    w_hh_ptr,  # (G*H, H) io
    b_hh_ptr,  # (G*H,) io (zeros when the layer has no bias)
    h0_ptr, c0_ptr,  # (B, H) io
    y_ptr,  # (N, H) io out: every step's h
    h_n_ptr, c_n_ptr,  # (B, H) io out
    gates_ptr,  # (N, G*H) io out (save): activated gates
    r_ptr,  # (N, G*H) io out (save): h_prev W_hh^T + b_hh
    c_seq_ptr,  # (N, H) acc out (save, LSTM): c after every step (zoned out)
    cell_c_ptr,  # (N, H) acc out (save, zoneout of c): the cell's own c
    sizes_ptr, offsets_ptr,  # (T,) int32 per-step rows and first row (packed)
    p_ptr,  # (param_rows, H) io: ln_hh gain, ln_hh bias, [ln_c gain, ln_c bias]
    eps_ptr,  # (1,) acc
    resets_ptr,  # (N,) uint8 (has_resets)
    scale_ptr,  # (B, H) io: recurrent-dropout scale (has_scale)
    mask_h_ptr, mask_c_ptr,  # (N, H) uint8 zoneout masks (mode 1)
    T, B, uniform_b, reverse, save, H, has_resets, has_scale, zoneout_h, zoneout_c, p_h, p_c,
    GATES: tl.constexpr, HAS_C: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr, H_ALIGNED: tl.constexpr, REGULARISED: tl.constexpr,
):
    H = aligned(H, H_ALIGNED)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    col_mask = cols < H
    cm = col_mask[None, :]
    tile_mask = (rows < B)[:, None] & cm
    GH = GATES * H
    io = y_ptr.dtype.element_ty

    w0, w1, w2, w3 = load_weights(w_hh_ptr, cols, H, GATES, True)
    w0, w1 = dot_operand(w0, PRECISION), dot_operand(w1, PRECISION)
    w2, w3 = dot_operand(w2, PRECISION), dot_operand(w3, PRECISION)
    b0, b1, b2, b3 = recurrent_bias(b_hh_ptr, cols, col_mask, H, GATES, True, ACC, BLOCK_H)
    eps = tl.load(eps_ptr)
    lw0 = _unit(p_ptr, 0, H, cols, col_mask, ACC)
    lw1 = _unit(p_ptr, 1, H, cols, col_mask, ACC)
    lw2 = _unit(p_ptr, 2, H, cols, col_mask, ACC)
    lb0 = _unit(p_ptr, GATES, H, cols, col_mask, ACC)
    lb1 = _unit(p_ptr, GATES + 1, H, cols, col_mask, ACC)
    lb2 = _unit(p_ptr, GATES + 2, H, cols, col_mask, ACC)

    state_offs = rows[:, None] * H + cols[None, :]
    if REGULARISED:
        scale = tl.load(scale_ptr + state_offs, mask=tile_mask & flag_rows(rows, has_scale)[:, None], other=1.0)
    h = tl.load(h0_ptr + state_offs, mask=tile_mask, other=0.0).to(ACC)
    c = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    if HAS_C:
        c = tl.load(c0_ptr + state_offs, mask=tile_mask, other=0.0).to(ACC)

    for j in range(T):
        t = timestep(j, T, reverse)
        off, bs = step_rows(t, sizes_ptr, offsets_ptr, uniform_b)
        mask = (rows < bs)[:, None] & cm
        if has_resets:
            cut = reset_rows(resets_ptr, off, rows, bs)[:, None]
            h = tl.where(cut, 0.0, h)
            if HAS_C:
                c = tl.where(cut, 0.0, c)
        gate_offs = off * GH + (rows[:, None] * GH + cols[None, :])
        x_ptrs = xg_ptr + gate_offs
        seq_offs = off * H + state_offs
        hx = h
        if REGULARISED:
            hx = h * scale.to(ACC)
        hx = dot_operand(hx.to(w0.dtype), PRECISION)
        zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        r0 = _gate_dot(hx, w0, b0, zero, io, ACC, PRECISION)
        x0 = tl.load(x_ptrs, mask=mask, other=0.0).to(ACC)
        r1 = _gate_dot(hx, w1, b1, zero, io, ACC, PRECISION)
        x1 = tl.load(x_ptrs + H, mask=mask, other=0.0).to(ACC)
        r2 = _gate_dot(hx, w2, b2, zero, io, ACC, PRECISION)
        x2 = tl.load(x_ptrs + 2 * H, mask=mask, other=0.0).to(ACC)
        if save:
            store_gates(r_ptr + gate_offs, r0, r1, r2, r2, H, mask, 3)
        if HAS_C:
            r3 = _gate_dot(hx, w3, b3, zero, io, ACC, PRECISION)
            x3 = tl.load(x_ptrs + 3 * H, mask=mask, other=0.0).to(ACC)
            if save:
                tl.store(r_ptr + gate_offs + 3 * H, r3.to(io), mask=mask)
            h_new, c_new, s0, s1, s2, s3 = ln_lstm_forward(
                x0, x1, x2, x3, r0, r1, r2, r3, c, lw0, lw1, lw2, _unit(p_ptr, 3, H, cols, col_mask, ACC), lb0, lb1,
                lb2, _unit(p_ptr, 7, H, cols, col_mask, ACC), _unit(p_ptr, 8, H, cols, col_mask, ACC),
                _unit(p_ptr, 9, H, cols, col_mask, ACC), cm, H, eps)
            if REGULARISED:
                if zoneout_c != 0:
                    if save:
                        tl.store(cell_c_ptr + seq_offs, c_new, mask=mask)
                    c_new = zone_blend(c, c_new, mask_c_ptr, zoneout_c, p_c, seq_offs, mask, rows)
            if save:
                tl.store(c_seq_ptr + seq_offs, c_new, mask=mask)
            c = tl.where(mask, c_new, c)
        else:
            h_new, s0, s1, s2 = ln_gru_forward(x0, x1, x2, r0, r1, r2, h, lw0, lw1, lw2, lb0, lb1, lb2, cm, H, eps)
            s3 = s2
        if REGULARISED:
            if zoneout_h != 0:
                h_new = zone_blend(h, h_new, mask_h_ptr, zoneout_h, p_h, seq_offs, mask, rows)
        if save:
            store_gates(gates_ptr + gate_offs, s0, s1, s2, s3, H, mask, GATES)
        tl.store(y_ptr + seq_offs, h_new.to(io), mask=mask)
        h = tl.where(mask, h_new, h)

    tl.store(h_n_ptr + state_offs, h.to(io), mask=tile_mask)
    if HAS_C:
        tl.store(c_n_ptr + state_offs, c.to(io), mask=tile_mask)


# --------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["T", "B", "uniform_b", "reverse", "H", "has_resets", "has_scale", "zoneout_h",
                               "zoneout_c", "p_h", "p_c"])
def resident_norm_backward_kernel(
    w_hh_ptr,  # (G*H, H) io
    h0_ptr, c0_ptr,  # (B, H) io
    y_ptr,  # (N, H) io: forward output (GRU: h_prev of the next step)
    dy_ptr,  # (N, H) io
    dh_n_ptr, dc_n_ptr,  # (B, H) io
    gates_ptr, r_ptr,  # (N, G*H) io: saved gates and r
    c_seq_ptr,  # (N, H) acc: saved c (what the next step read)
    cell_c_ptr,  # (N, H) acc: the cell's own c (c_seq without zoneout of c)
    dxg_ptr,  # (N, G*H) io out
    dhg_ptr,  # (N, G*H) io out: dr
    dn_ptr,  # (N, H) acc out (LSTM): the gradient of LN(c)'s output
    dh0_ptr, dc0_ptr,  # (B, H) io out
    sizes_ptr, offsets_ptr, p_ptr, eps_ptr, resets_ptr, scale_ptr, mask_h_ptr, mask_c_ptr,
    T, B, uniform_b, reverse, H, has_resets, has_scale, zoneout_h, zoneout_c, p_h, p_c,
    GATES: tl.constexpr, HAS_C: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr, H_ALIGNED: tl.constexpr, REGULARISED: tl.constexpr,
):
    H = aligned(H, H_ALIGNED)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    col_mask = cols < H
    cm = col_mask[None, :]
    tile_mask = (rows < B)[:, None] & cm
    GH = GATES * H
    ty = dxg_ptr.dtype.element_ty

    w0, w1, w2, w3 = load_weights(w_hh_ptr, cols, H, GATES, False)
    w0, w1 = dot_operand(w0, PRECISION), dot_operand(w1, PRECISION)
    w2, w3 = dot_operand(w2, PRECISION), dot_operand(w3, PRECISION)
    eps = tl.load(eps_ptr)
    lw0 = _unit(p_ptr, 0, H, cols, col_mask, ACC)
    lw1 = _unit(p_ptr, 1, H, cols, col_mask, ACC)
    lw2 = _unit(p_ptr, 2, H, cols, col_mask, ACC)

    state_offs = rows[:, None] * H + cols[None, :]
    dh = tl.load(dh_n_ptr + state_offs, mask=tile_mask, other=0.0).to(ACC)
    dc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    if HAS_C:
        dc = tl.load(dc_n_ptr + state_offs, mask=tile_mask, other=0.0).to(ACC)
    if REGULARISED:
        scale = tl.load(scale_ptr + state_offs, mask=tile_mask & flag_rows(rows, has_scale)[:, None], other=1.0)

    for jj in range(T):
        j = T - 1 - jj  # processing index of this step in the forward pass
        t = timestep(j, T, reverse)
        off, bs = step_rows(t, sizes_ptr, offsets_ptr, uniform_b)
        mask = (rows < bs)[:, None] & cm
        # keep: active rows whose step did not start from a reset (their state before the
        # step was zero: masked out of the loads of c_prev / h_prev; no gradient crosses it)
        live = rows < bs
        if has_resets:
            live = live & ~reset_rows(resets_ptr, off, rows, bs)
        keep = live[:, None] & cm
        gate_offs = off * GH + (rows[:, None] * GH + cols[None, :])
        seq_offs = off * H + state_offs
        p_off = off * 0
        n_prev = bs * 0
        if j > 0:
            p_off, n_prev = step_rows(timestep(j - 1, T, reverse), sizes_ptr, offsets_ptr, uniform_b)
        from_seq = (rows < n_prev)[:, None]
        prev_offs = p_off * H + state_offs
        zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)

        dh_t = dh + tl.load(dy_ptr + seq_offs, mask=mask, other=0.0).to(ACC)
        dh_cell = dh_t
        if REGULARISED:
            if zoneout_h != 0:
                dh_cell = (1.0 - zone_weight(mask_h_ptr, zoneout_h, p_h, seq_offs, mask, rows)) * dh_t
        s0, s1, s2, s3 = _load_gates(gates_ptr + gate_offs, H, mask, GATES, ACC)
        r0, r1, r2, r3 = _load_gates(r_ptr + gate_offs, H, mask, GATES, ACC)
        if HAS_C:
            c_prev = tl.where(
                from_seq,
                tl.load(c_seq_ptr + prev_offs, mask=keep & from_seq, other=0.0).to(ACC),
                tl.load(c0_ptr + state_offs, mask=keep & (~from_seq), other=0.0).to(ACC),
            )
            c_t = tl.load(cell_c_ptr + seq_offs, mask=mask, other=0.0).to(ACC)
            dc_t = dc
            if REGULARISED:
                if zoneout_c != 0:
                    dc_t = (1.0 - zone_weight(mask_c_ptr, zoneout_c, p_c, seq_offs, mask, rows)) * dc
            dx0, dx1, dx2, dx3, dr0, dr1, dr2, dr3, dc_prev, dn = ln_lstm_backward(
                dh_cell, dc_t, s0, s1, s2, s3, r0, r1, r2, r3, c_t, c_prev, lw0, lw1, lw2,
                _unit(p_ptr, 3, H, cols, col_mask, ACC), _unit(p_ptr, 8, H, cols, col_mask, ACC),
                _unit(p_ptr, 9, H, cols, col_mask, ACC), cm, H, eps)
            tl.store(dn_ptr + seq_offs, dn, mask=mask)
            direct = zero
        else:
            h_prev = tl.where(
                from_seq,
                tl.load(y_ptr + prev_offs, mask=keep & from_seq, other=0.0).to(ACC),
                tl.load(h0_ptr + state_offs, mask=keep & (~from_seq), other=0.0).to(ACC),
            )
            dx0, dx1, dx2, dr0, dr1, dr2, direct = ln_gru_backward(
                dh_cell, s0, s1, s2, r0, r1, r2, h_prev, lw0, lw1, lw2, _unit(p_ptr, 5, H, cols, col_mask, ACC),
                cm, H, eps)
            dx3, dr3 = zero, zero
        # the GEMM reads dr as stored (I/O dtype), as the step tier's
        dr0, dr1, dr2, dr3 = dr0.to(ty), dr1.to(ty), dr2.to(ty), dr3.to(ty)
        store_gates(dxg_ptr + gate_offs, dx0, dx1, dx2, dx3, H, mask, GATES)
        store_gates(dhg_ptr + gate_offs, dr0, dr1, dr2, dr3, H, mask, GATES)
        acc = tl.dot(dot_operand(dr0, PRECISION), w0, zero, input_precision=PRECISION)
        acc = tl.dot(dot_operand(dr1, PRECISION), w1, acc, input_precision=PRECISION)
        acc = tl.dot(dot_operand(dr2, PRECISION), w2, acc, input_precision=PRECISION)
        if GATES > 3:
            acc = tl.dot(dot_operand(dr3, PRECISION), w3, acc, input_precision=PRECISION)
        if REGULARISED:
            if has_scale:
                acc = acc * scale.to(ACC)
            if zoneout_h != 0:
                acc += zone_weight(mask_h_ptr, zoneout_h, p_h, seq_offs, mask, rows) * dh_t
        acc += direct
        dh = tl.where(keep, acc, tl.where(mask, 0.0, dh))
        if HAS_C:
            if REGULARISED:
                if zoneout_c != 0:
                    dc_prev += zone_weight(mask_c_ptr, zoneout_c, p_c, seq_offs, mask, rows) * dc
            dc = tl.where(keep, dc_prev, tl.where(mask, 0.0, dc))

    tl.store(dh0_ptr + state_offs, dh.to(dh0_ptr.dtype.element_ty), mask=tile_mask)
    if HAS_C:
        tl.store(dc0_ptr + state_offs, dc.to(dc0_ptr.dtype.element_ty), mask=tile_mask)


# --------------------------------------------------------------------------------------
# Launch choices (shared with the compile report)
# --------------------------------------------------------------------------------------

#: Compile options of every launch (and of the report's compiles).
OPTIONS = dict(enable_fp_fusion=ENABLE_FP_FUSION)


def options(family: str, dtype: torch.dtype, direction: str, cfg: fits.KernelConfig) -> dict:
    """:data:`OPTIONS`, with ``maxnreg=255`` where :data:`fits.RESIDENT_NORM_MAXNREG` lists the
    kernel (ptxas otherwise capped some of them at 128 registers and spilled; for others the
    cap is what compiles clean)."""
    key = (family, fits.dtype_name(dtype), cfg.block_h, direction)
    return dict(OPTIONS, maxnreg=255) if key in fits.RESIDENT_NORM_MAXNREG else dict(OPTIONS)


FORWARD_POINTERS = (
    ("xg_ptr", "io"), ("w_hh_ptr", "io"), ("b_hh_ptr", "io"), ("h0_ptr", "io"), ("c0_ptr", "io"), ("y_ptr", "io"),
    ("h_n_ptr", "io"), ("c_n_ptr", "io"), ("gates_ptr", "io"), ("r_ptr", "io"), ("c_seq_ptr", "acc"),
    ("cell_c_ptr", "acc"), ("sizes_ptr", "i32"), ("offsets_ptr", "i32"), ("p_ptr", "io"), ("eps_ptr", "acc"),
    ("resets_ptr", "u8"), ("scale_ptr", "io"), ("mask_h_ptr", "u8"), ("mask_c_ptr", "u8"),
)
FORWARD_INTS = ("T", "B", "uniform_b", "reverse", "save", "H", "has_resets", "has_scale", "zoneout_h", "zoneout_c",
                "p_h", "p_c")
BACKWARD_POINTERS = (
    ("w_hh_ptr", "io"), ("h0_ptr", "io"), ("c0_ptr", "io"), ("y_ptr", "io"), ("dy_ptr", "io"), ("dh_n_ptr", "io"),
    ("dc_n_ptr", "io"), ("gates_ptr", "io"), ("r_ptr", "io"), ("c_seq_ptr", "acc"), ("cell_c_ptr", "acc"),
    ("dxg_ptr", "io"), ("dhg_ptr", "io"), ("dn_ptr", "acc"), ("dh0_ptr", "io"), ("dc0_ptr", "io"),
    ("sizes_ptr", "i32"), ("offsets_ptr", "i32"), ("p_ptr", "io"), ("eps_ptr", "acc"), ("resets_ptr", "u8"),
    ("scale_ptr", "io"), ("mask_h_ptr", "u8"), ("mask_c_ptr", "u8"),
)
BACKWARD_INTS = ("T", "B", "uniform_b", "reverse", "H", "has_resets", "has_scale", "zoneout_h", "zoneout_c", "p_h",
                 "p_c")
FLOATS = ("p_h", "p_c")
DIRECTIONS = ("forward", "backward")
#: The cell families these kernels run, by the prefix of a LayerNorm cell's name.
FAMILIES = ("LayerNormLSTM", "LayerNormGRU")


def family(cell) -> str:
    """``"LayerNormLSTM"`` or ``"LayerNormGRU"``: the :data:`fits.RESIDENT_NORM` key of ``cell``."""
    return "LayerNormLSTM" if cell.has_cell_state else "LayerNormGRU"


def kernel_of(direction: str) -> tuple:
    """``(kernel, pointers, ints)`` of ``direction``."""
    if direction == "forward":
        return resident_norm_forward_kernel, FORWARD_POINTERS, FORWARD_INTS
    return resident_norm_backward_kernel, BACKWARD_POINTERS, BACKWARD_INTS


def constexprs(lstm: bool, dtype: torch.dtype, tf32: bool, cfg: fits.KernelConfig, aligned: bool = False,
               regularised: bool = False) -> dict:
    """Compile-time arguments of either kernel."""
    return dict(GATES=4 if lstm else 3, HAS_C=bool(lstm), ACC=acc_type(dtype),
                PRECISION=fits.dot_precision(dtype, tf32), BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h,
                H_ALIGNED=bool(aligned), REGULARISED=bool(regularised))


class Specialisation(NamedTuple):
    """One compiled variant a launch may choose: what the compile report compiles."""

    kernel: object
    kernel_name: str  # "resident-norm-forward" / "resident-norm-backward"
    kind: str  # the cell family
    dtype: torch.dtype
    label: str
    config: fits.KernelConfig
    constexprs: dict
    pointers: tuple
    ints: tuple
    shared_limit: dict
    options: dict = OPTIONS
    floats: tuple = FLOATS
    launched_on = launched_on  # where a launch may pick it, as far as its own record says


def specialisations(dtypes=None) -> list[Specialisation]:
    """Every (family, dtype, TF32, ``H_ALIGNED``, ``REGULARISED``, configuration) a launch may
    choose: the entries of :data:`fits.RESIDENT_NORM` (``-reg``: with ``REGULARISED``, for the
    entries :func:`fits.resident_norm_regularised` runs)."""
    out = []
    for (name, dtype_name, block_h), fit in fits.RESIDENT_NORM.items():
        dtype = getattr(torch, dtype_name)
        if dtypes is not None and dtype not in dtypes:
            continue
        regs = (False, True) if fits.resident_norm_regularised(name, dtype, block_h) else (False,)
        for reg, tf32, aligned, direction in product(regs, (False, True), (False, True), DIRECTIONS):
            shared = aligned_shared(name, dtype, block_h, direction, aligned, fit)
            if (tf32 and dtype != torch.float32) or shared is None:
                continue
            label = dtype_name + ("-tf32" if tf32 else "") + ("-a8" if aligned else "") + ("-reg" if reg else "")
            kernel, pointers, ints = kernel_of(direction)
            cfg = kernel_config(getattr(fit, direction), name, dtype, tf32, direction, reg, aligned)
            out.append(Specialisation(kernel, f"resident-norm-{direction}", name, dtype, label, cfg,
                                      constexprs(name == "LayerNormLSTM", dtype, tf32, cfg, aligned, reg), pointers,
                                      ints, shared, options(name, dtype, direction, cfg)))
    return out


def launch(direction: str, cell, tensors: dict, ints: dict, *, fit: fits.ResidentFit, tf32: bool,
           limits: tuple[int, int] = (fits.REFERENCE_ARCH, fits.SHARED_LIMIT[fits.REFERENCE_ARCH])) -> None:
    """One launch of ``direction``'s kernel over the whole sequence. ``tensors`` maps every
    pointer name of the direction to a contiguous, 16-byte aligned tensor of the dtype its
    role says; ``ints`` every runtime scalar. Grid: ``cdiv(B, BLOCK_B)`` programs. ``limits``:
    the device's ``(compute capability, shared memory per block)`` (:func:`aligned_backward`)."""
    kernel, pointers, int_names = kernel_of(direction)
    cfg = getattr(fit, direction)
    dtype = tensors["w_hh_ptr"].dtype
    regularised = bool(ints["has_scale"] or ints["zoneout_h"] or ints["zoneout_c"])
    on_gpu = tensors["w_hh_ptr"].device.type == "cuda"
    if regularised and not fits.resident_norm_regularised(family(cell), dtype, ints["H"], on_gpu):
        raise ValueError(f"fastrnn.kernels: no regularised resident kernels for {cell.name} {dtype} with "
                         f"H={ints['H']} (fits.RESIDENT_NORM_UNREGULARISED)")
    grid = (triton.cdiv(ints["B"], cfg.block_b),)
    aligned = h_aligned(direction, ints["H"], aligned_backward(family(cell), dtype, cfg.block_h, regularised, *limits))
    kernel[grid](
        *_pointers(pointers, tensors), *(ints[k] for k in int_names),
        **constexprs(cell.has_cell_state, dtype, tf32, cfg, aligned, regularised),
        num_warps=kernel_config(cfg, family(cell), dtype, tf32, direction, regularised, aligned).num_warps,
        **options(family(cell), dtype, direction, cfg),
    )
    record("resident", direction)
