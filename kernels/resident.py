"""Resident kernels: the whole time loop of one layer-direction in one launch.

One program owns ``BLOCK_B`` batch rows and *all* hidden units. It loads the recurrent
weight ``W_hh`` once, before the loop (the compiler keeps it on chip: shared memory and
registers), keeps the state in ``ACC`` registers (fp32; fp64 for fp64 I/O) for the whole
sequence, and runs ``for t in range(T)`` inside the kernel. Programs never wait for each
other (each owns its rows of the state), so Triton's interpreter runs them as they are.

The cell is data: its compile-time arguments (:meth:`fastrnn.cells.Cell.kernel_constexprs`)
give the pointwise functions ``CELL_FORWARD`` / ``CELL_BACKWARD``, the gate count ``GATES``
and flags for what it carries, keeps and reads; the kernels hold the loop, the GEMMs and
the memory traffic (the interface is described in :mod:`fastrnn.cells.base`).

Forward (``resident_forward_kernel``), per step ``t`` in processing order::

    r_k = h.to(io) @ W_k^T (+ b_hk when APART), x_k = xg[rows of t, gate k]   one tl.dot per gate
    h_t, c_t, s_0..3, e = CELL_FORWARD(x_0..3, r_0..3, h, c)      fp32 state
    y[rows of t] = h_t; s_k (SAVES) / e (EXTRA) / c_t (HAS_C) -> saved rows when ``save``
    rows of the tile that are not active at t keep their state

and at the end ``h_n``, ``c_n`` (each row's state after its last step).

Backward (``resident_backward_kernel``), per step in reverse processing order, with
``dh`` / ``dc`` the gradient state (initialised from ``dh_n`` / ``dc_n``)::

    dh_t = dh + dy[rows of t]
    dx_k, dr_k, dh_direct, dc_prev = CELL_BACKWARD(dh_t, dc, saved s_k / e / c, h, h_prev)
    dxg <- dx_k (and dhg <- dr_k when APART)
    dh = sum_k dr_k.to(io) @ W_k (+ dh_direct when DIRECT); dc = dc_prev    active rows only

and at the end ``dh0``, ``dc0``. The weight gradients are whole-sequence GEMMs in the
engine, after the loop.

Optional inputs of a call: a cell with per-unit parameters (``PARAMS`` rows, a compile-time
argument only such cells pass) gets them as three ``(1, BLOCK_H)`` rows, loaded once, after
the other arguments of ``CELL_FORWARD`` / ``CELL_BACKWARD``. Reset flags (``has_resets``, a
runtime int: no second specialisation) zero the state entering a flagged row's step in the
forward; the backward gives the cell that zero ``h_prev`` / ``c_prev`` and stops ``dh`` /
``dc`` at the row, so no gradient crosses a reset (``dh0`` / ``dc0`` included). Regularisers
(``REGULARISED``, a compile-time flag a call with them passes; runtime flags say which):
the recurrent-dropout scale of the GEMM's input; zoneout, the cell's own c / h kept apart.
Entries whose regularised kernels do not compile clean have none
(:data:`fits.RESIDENT_UNREGULARISED`): such calls run on the step tier.

Packed sequences: each step's active batch size and first row come from two int32
device tensors (``sizes_ptr``, ``offsets_ptr``); a padded batch passes
``uniform_b = B`` instead and the kernel computes ``B`` and ``t * B`` itself, so a padded
call needs no host-to-device copy (a CUDA graph can capture the launch). Row ``r`` is
active at step ``t`` when ``r < batch_sizes[t]``; inactive rows keep their state, which
is exactly the reference semantics of :mod:`fastrnn.backends.base`: a finished sequence
keeps its final state, and in the reverse direction a sequence that starts later starts
from its initial state.

Shapes: ``H`` is padded to the power of two ``BLOCK_H`` (>= 32; ``tl.dot`` needs 16)
with masks. This tier runs layers without ``proj_size`` (``P == H``): with a projection
the triton backend uses the step tier (see :mod:`fastrnn.kernels.fits`).

Offsets: each step's first row enters as a 64-bit scalar, the offsets inside a step
are 32-bit (up to ``B * G * H``; the backend runs batches past 2^31 on the step tier).

Compile-time choices: the cell, ``ACC``, ``PRECISION`` (TF32 or IEEE), ``BLOCK_B``,
``BLOCK_H`` and the warps, from :mod:`fastrnn.kernels.fits`, and ``H_ALIGNED`` (``H % 8 == 0``:
vector loads of its rows; in the backward where the device has room for that kernel,
:func:`~fastrnn.kernels.resident_tiles.aligned_backward`). TF32 dots get operands rounded to
nearest (:func:`fastrnn.kernels.precision.tf32_round`; ``W_hh`` once, before the loop), and
every launch pins FP fusion (:data:`fastrnn.kernels.precision.ENABLE_FP_FUSION`). ``T``, ``B``, ``H``, the
direction and ``save`` are runtime arguments (``do_not_specialize``): no shape, batch
size or sequence length recompiles.
"""

from __future__ import annotations

from itertools import product
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import fits
from .cells import recurrent_bias
from .launches import aligned_input  # noqa: F401 (used by the backend)
from .launches import checked_pointers as _pointers
from .launches import record
from .precision import ENABLE_FP_FUSION
from .resident_tiles import (  # noqa: F401 (cell_of, triton_cells: used by the report)
    acc_type, aligned, aligned_backward, aligned_shared, cell_of, dot_operand, flag_rows, h_aligned, kernel_config,
    launched_on, load_params, load_weights, reset_rows, step_rows, store_gates, timestep, triton_cells, zone_blend,
    zone_weight,
)

# --------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["T", "B", "uniform_b", "reverse", "save", "H", "has_resets", "has_scale", "zoneout_h",
                               "zoneout_c", "save_zoned", "p_h", "p_c"])
def resident_forward_kernel(
    xg_ptr,  # (N, G*H) input projection, rows grouped by timestep
    w_hh_ptr,  # (G*H, H) recurrent weight
    b_hh_ptr,  # (G*H,) recurrent bias when APART (zeros when the layer has none)
    h0_ptr,  # (B, H) initial hidden state
    c0_ptr,  # (B, H) initial cell state (HAS_C)
    y_ptr,  # (N, H) out: hidden state of every step
    h_n_ptr,  # (B, H) out: final hidden state of each sequence
    c_n_ptr,  # (B, H) out: final cell state (HAS_C)
    gates_ptr,  # (N, G*H) out when save and SAVES: the cell's s0 .. s{G-1}
    c_seq_ptr,  # (N, H) ACC out when save and HAS_C: cell state of every step
    hn_seq_ptr,  # (N, H) out when save and EXTRA: the cell's e of every step
    sizes_ptr,  # (T,) int32 active rows per step (packed; unused when uniform_b > 0)
    offsets_ptr,  # (T,) int32 first row per step (packed; unused when uniform_b > 0)
    p_ptr,  # (PARAMS, H) the cell's per-unit parameters (PARAMS > 0)
    resets_ptr,  # (N,) uint8: 1 where the state entering the row's step is zero (has_resets)
    scale_ptr,  # (B, H) recurrent-dropout scale of the state entering the GEMM (has_scale)
    mask_h_ptr,  # (N, H) uint8 zoneout masks of h / c: nonzero keeps the previous state (mode 1)
    mask_c_ptr,
    cell_c_ptr,  # (N, H) ACC out: the cell's own new c, before zoneout (save_zoned, c zoned out)
    cell_h_ptr,  # (N, H) out: the cell's own new h (save_zoned, h zoned out, BWD_H)
    T,  # timesteps
    B,  # sequences (rows of h0 / h_n)
    uniform_b,  # B for a padded batch (every step has B rows), 0 for a packed one
    reverse,  # 1: process t = T-1 .. 0
    save,  # 1: write what the backward reads (gates / e / c)
    H,  # hidden size (== size of h: no projection on this tier)
    has_resets,  # 1: read resets_ptr
    has_scale,  # 1: read scale_ptr
    zoneout_h,  # zoneout of h / c: 0 none, 1 the masks (training), 2 p_h / p_c (eval)
    zoneout_c,
    save_zoned,  # 1: keep the cell's own new c / h of a zoned-out state for the backward
    p_h,  # fp32 zoneout probabilities (mode 2)
    p_c,
    CELL_FORWARD: tl.constexpr,  # the cell's pointwise forward (fastrnn.cells)
    CELL_BACKWARD: tl.constexpr,  # (the backward kernel's; both kernels take every cell constexpr)
    GATES: tl.constexpr,  # stacked gate blocks G (1 to 4)
    HAS_C: tl.constexpr,  # the cell carries c
    APART: tl.constexpr,  # b_hh is added to h @ W_hh^T here (not folded into xg)
    SAVES: tl.constexpr,  # save keeps s0 .. s{G-1}
    EXTRA: tl.constexpr,  # save keeps e
    FWD_H_PREV: tl.constexpr,  # (the forward always passes h_prev)
    BWD_H: tl.constexpr,
    BWD_H_PREV: tl.constexpr,
    DIRECT: tl.constexpr,
    ACC: tl.constexpr,  # accumulation / state dtype: fp32, or fp64 for fp64 I/O
    PRECISION: tl.constexpr,  # tl.dot input precision: "ieee" or "tf32"
    BLOCK_B: tl.constexpr,  # batch rows per program
    BLOCK_H: tl.constexpr,  # H padded to a power of two >= 16
    H_ALIGNED: tl.constexpr,  # the launcher guarantees H % 8 == 0 (16-byte rows of 16-bit data)
    PARAMS: tl.constexpr = 0,  # rows of the cell's per-unit parameters (0: the cell has none)
    REGULARISED: tl.constexpr = False,  # the call has zoneout / a recurrent-dropout scale (runtime flags say which)
):
    H = aligned(H, H_ALIGNED)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    col_mask = cols < H
    tile_mask = (rows < B)[:, None] & col_mask[None, :]
    GH = GATES * H

    # The recurrent weight, once: one transposed (H x H) tile per gate (TF32-rounded once).
    w0, w1, w2, w3 = load_weights(w_hh_ptr, cols, H, GATES, True)
    w0, w1 = dot_operand(w0, PRECISION), dot_operand(w1, PRECISION)
    w2, w3 = dot_operand(w2, PRECISION), dot_operand(w3, PRECISION)
    b0, b1, b2, b3 = recurrent_bias(b_hh_ptr, cols, col_mask, H, GATES, APART, ACC, BLOCK_H)
    p0, p1, p2 = load_params(p_ptr, cols, col_mask, H, PARAMS, ACC, BLOCK_H)

    state_offs = rows[:, None] * H + cols[None, :]
    if REGULARISED:  # the recurrent-dropout scale, once (read at each step, its addresses spilled)
        scale = tl.load(scale_ptr + state_offs, mask=tile_mask & flag_rows(rows, has_scale)[:, None], other=1.0)
    h = tl.load(h0_ptr + state_offs, mask=tile_mask, other=0.0).to(ACC)
    c = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    if HAS_C:
        c = tl.load(c0_ptr + state_offs, mask=tile_mask, other=0.0).to(ACC)

    for j in range(T):
        t = timestep(j, T, reverse)
        off, bs = step_rows(t, sizes_ptr, offsets_ptr, uniform_b)
        # Active rows, real columns: padding columns of the state stay 0 (an inf in the
        # state times a zero-padded weight is NaN there, which the next GEMM would spread).
        mask = (rows < bs)[:, None] & col_mask[None, :]
        if has_resets:
            # A reset row starts from zero (it is active: the step overwrites its state).
            cut = reset_rows(resets_ptr, off, rows, bs)[:, None]
            h = tl.where(cut, 0.0, h)
            if HAS_C:
                c = tl.where(cut, 0.0, c)
        # 64-bit scalar base of the step, 32-bit offsets inside the tile (B*G*H < 2^31).
        x_ptrs = xg_ptr + off * GH + (rows[:, None] * GH + cols[None, :])
        gate_ptrs = gates_ptr + off * GH + (rows[:, None] * GH + cols[None, :])
        seq_offs = off * H + state_offs
        hx = dot_operand(h.to(w0.dtype), PRECISION)  # I/O-dtype operands (tensor cores), fp32 result
        if REGULARISED:
            hx = dot_operand((h * scale.to(ACC)).to(w0.dtype), PRECISION)
        zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        # Gate k: r_k = h @ W_k^T (+ b_k), x_k from xg; slots k >= GATES stay zero. Each
        # dot beside its load: all dots first compiled to 255 registers and a spill (GRU
        # fp16 BLOCK_H 128, sm_90), this order to 196 and none.
        r0 = tl.dot(hx, w0, zero, input_precision=PRECISION)
        x0 = tl.load(x_ptrs, mask=mask, other=0.0).to(ACC)
        r1, r2, r3 = zero, zero, zero
        x1, x2, x3 = zero, zero, zero
        if GATES > 1:
            r1 = tl.dot(hx, w1, zero, input_precision=PRECISION)
            x1 = tl.load(x_ptrs + H, mask=mask, other=0.0).to(ACC)
        if GATES > 2:
            r2 = tl.dot(hx, w2, zero, input_precision=PRECISION)
            x2 = tl.load(x_ptrs + 2 * H, mask=mask, other=0.0).to(ACC)
        if GATES > 3:
            r3 = tl.dot(hx, w3, zero, input_precision=PRECISION)
            x3 = tl.load(x_ptrs + 3 * H, mask=mask, other=0.0).to(ACC)
        if APART:
            r0, r1, r2, r3 = r0 + b0, r1 + b1, r2 + b2, r3 + b3
        if PARAMS > 0:
            h_new, c_new, s0, s1, s2, s3, e = CELL_FORWARD(x0, x1, x2, x3, r0, r1, r2, r3, h, c, p0, p1, p2)
        else:
            h_new, c_new, s0, s1, s2, s3, e = CELL_FORWARD(x0, x1, x2, x3, r0, r1, r2, r3, h, c)
        # Zoneout: the cell's own new c / h kept for the backward, the zoned-out ones go on.
        if HAS_C:
            if REGULARISED:
                if zoneout_c != 0:
                    if save_zoned:
                        tl.store(cell_c_ptr + seq_offs, c_new.to(cell_c_ptr.dtype.element_ty), mask=mask)
                    c_new = zone_blend(c, c_new, mask_c_ptr, zoneout_c, p_c, seq_offs, mask, rows)
            c = tl.where(mask, c_new, c)
        if REGULARISED:
            if zoneout_h != 0:
                if BWD_H:
                    if save_zoned:
                        tl.store(cell_h_ptr + seq_offs, h_new.to(cell_h_ptr.dtype.element_ty), mask=mask)
                h_new = zone_blend(h, h_new, mask_h_ptr, zoneout_h, p_h, seq_offs, mask, rows)
        if save:
            if SAVES:
                store_gates(gate_ptrs, s0, s1, s2, s3, H, mask, GATES)
            if EXTRA:
                tl.store(hn_seq_ptr + seq_offs, e.to(hn_seq_ptr.dtype.element_ty), mask=mask)
            if HAS_C:
                tl.store(c_seq_ptr + seq_offs, c_new.to(c_seq_ptr.dtype.element_ty), mask=mask)
        tl.store(y_ptr + seq_offs, h_new.to(y_ptr.dtype.element_ty), mask=mask)
        h = tl.where(mask, h_new, h)

    tl.store(h_n_ptr + state_offs, h.to(h_n_ptr.dtype.element_ty), mask=tile_mask)
    if HAS_C:
        tl.store(c_n_ptr + state_offs, c.to(c_n_ptr.dtype.element_ty), mask=tile_mask)


# --------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["T", "B", "uniform_b", "reverse", "H", "has_resets", "has_scale", "zoneout_h",
                               "zoneout_c", "p_h", "p_c"])
def resident_backward_kernel(
    w_hh_ptr,  # (G*H, H) recurrent weight
    h0_ptr,  # (B, H) initial hidden state (h_prev of a row's first step, BWD_H_PREV)
    c0_ptr,  # (B, H) initial cell state (HAS_C)
    y_ptr,  # (N, H) forward output: h of each step (BWD_H), h_prev of the next (BWD_H_PREV)
    dy_ptr,  # (N, H) gradient of y
    dh_n_ptr,  # (B, H) gradient of h_n
    dc_n_ptr,  # (B, H) gradient of c_n (HAS_C)
    gates_ptr,  # (N, G*H) saved s0 .. s{G-1} (SAVES)
    c_seq_ptr,  # (N, H) ACC saved cell states (HAS_C)
    hn_seq_ptr,  # (N, H) saved e (EXTRA)
    dxg_ptr,  # (N, G*H) out: gradient of the input projection (dx_k)
    dhg_ptr,  # (N, G*H) out when APART: gradient of h @ W_hh^T + b_hh (dr_k); else unused
    dh0_ptr,  # (B, H) out: gradient of h0
    dc0_ptr,  # (B, H) out: gradient of c0 (HAS_C)
    sizes_ptr,  # (T,) int32 active rows per step (packed; unused when uniform_b > 0)
    offsets_ptr,  # (T,) int32 first row per step (packed; unused when uniform_b > 0)
    p_ptr,  # (PARAMS, H) the cell's per-unit parameters (PARAMS > 0)
    resets_ptr,  # (N,) uint8: 1 where the state entering the row's step is zero (has_resets)
    scale_ptr,  # (B, H) recurrent-dropout scale (has_scale): multiplies the GEMM's dh_prev
    mask_h_ptr,  # (N, H) uint8 zoneout masks of h / c (mode 1)
    mask_c_ptr,
    cell_c_ptr,  # (N, H) ACC: the cell's own new c (HAS_C; c_seq holds the zoned c: the same without zoneout)
    cell_h_ptr,  # (N, H): the cell's own new h (BWD_H; y holds the zoned h: the same without zoneout)
    T,  # timesteps
    B,  # sequences
    uniform_b,  # B for a padded batch, 0 for a packed one
    reverse,  # 1: the forward pass processed t = T-1 .. 0
    H,  # hidden size
    has_resets,  # 1: read resets_ptr
    has_scale,  # 1: read scale_ptr
    zoneout_h,  # zoneout of h / c: 0 none, 1 the masks (training), 2 p_h / p_c (eval)
    zoneout_c,
    p_h,  # fp32 zoneout probabilities (mode 2)
    p_c,
    CELL_FORWARD: tl.constexpr,  # (the forward kernel's; both kernels take every cell constexpr)
    CELL_BACKWARD: tl.constexpr,  # the cell's pointwise backward (fastrnn.cells)
    GATES: tl.constexpr,
    HAS_C: tl.constexpr,
    APART: tl.constexpr,  # dr_k differs from dx_k: stored in dhg, the GEMM reads dr_k
    SAVES: tl.constexpr,
    EXTRA: tl.constexpr,
    FWD_H_PREV: tl.constexpr,
    BWD_H: tl.constexpr,  # the cell backward reads h (this step's y)
    BWD_H_PREV: tl.constexpr,  # the cell backward reads h_prev
    DIRECT: tl.constexpr,  # dh_direct joins the gradient of h_prev outside the GEMM
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    H_ALIGNED: tl.constexpr,
    PARAMS: tl.constexpr = 0,
    REGULARISED: tl.constexpr = False,
):
    H = aligned(H, H_ALIGNED)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    col_mask = cols < H
    tile_mask = (rows < B)[:, None] & col_mask[None, :]
    GH = GATES * H

    # W_hh once, one (H x H) tile per gate, for dh_prev = sum_k dr_k @ W_k (TF32-rounded once).
    w0, w1, w2, w3 = load_weights(w_hh_ptr, cols, H, GATES, False)
    w0, w1 = dot_operand(w0, PRECISION), dot_operand(w1, PRECISION)
    w2, w3 = dot_operand(w2, PRECISION), dot_operand(w3, PRECISION)
    p0, p1, p2 = load_params(p_ptr, cols, col_mask, H, PARAMS, ACC, BLOCK_H)

    state_offs = rows[:, None] * H + cols[None, :]
    dh = tl.load(dh_n_ptr + state_offs, mask=tile_mask, other=0.0).to(ACC)
    dc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    if HAS_C:
        dc = tl.load(dc_n_ptr + state_offs, mask=tile_mask, other=0.0).to(ACC)
    ty = dxg_ptr.dtype.element_ty
    if REGULARISED:
        scale = tl.load(scale_ptr + state_offs, mask=tile_mask & flag_rows(rows, has_scale)[:, None], other=1.0)

    for jj in range(T):
        j = T - 1 - jj  # processing index of this step in the forward pass
        t = timestep(j, T, reverse)
        off, bs = step_rows(t, sizes_ptr, offsets_ptr, uniform_b)
        # Active rows, real columns: padding columns of the state stay 0 (an inf in the
        # state times a zero-padded weight is NaN there, which the next GEMM would spread).
        mask = (rows < bs)[:, None] & col_mask[None, :]
        # keep: active rows whose step did not start from a reset. A reset row's step read a
        # zero state (masked out of the loads of c_prev / h_prev below), and no gradient
        # crosses the reset (its dh / dc become 0 after the step). Folded into masks rather
        # than a where on each tile after a flag load: measured, that spilled (GRU fp16
        # BLOCK_H 32 backward, sm_80; peephole LSTM fp16/bf16 BLOCK_H 64 and TF32, sm_90).
        live = rows < bs
        if has_resets:
            live = live & ~reset_rows(resets_ptr, off, rows, bs)
        keep = live[:, None] & col_mask[None, :]
        gate_offs = off * GH + (rows[:, None] * GH + cols[None, :])  # 64-bit base, 32-bit tile
        seq_offs = off * H + state_offs
        g_ptrs = gates_ptr + gate_offs
        dx_ptrs = dxg_ptr + gate_offs
        zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        dh_t = dh + tl.load(dy_ptr + seq_offs, mask=mask, other=0.0).to(ACC)
        # What the cell backward reads (zero tiles for what this cell does not keep): the
        # state before the step first, then this step's saved values.
        s0, s1, s2, s3 = zero, zero, zero, zero
        e, c_t, c_prev, h_t, h_prev = zero, zero, zero, zero, zero
        if HAS_C or BWD_H_PREV:
            # The state before step t: the previous processed step's rows for rows that
            # were active there, the initial state for the others (j == 0, or rows that
            # start later in the reverse direction of a packed batch).
            p_off = off * 0
            n_prev = bs * 0
            if j > 0:
                p_off, n_prev = step_rows(timestep(j - 1, T, reverse), sizes_ptr, offsets_ptr, uniform_b)
            from_seq = (rows < n_prev)[:, None]
            prev_offs = p_off * H + state_offs
        if HAS_C:
            c_prev = tl.where(
                from_seq,
                tl.load(c_seq_ptr + prev_offs, mask=keep & from_seq, other=0.0).to(ACC),
                tl.load(c0_ptr + state_offs, mask=keep & (~from_seq), other=0.0).to(ACC),
            )
        if BWD_H_PREV:
            h_prev = tl.where(
                from_seq,
                tl.load(y_ptr + prev_offs, mask=keep & from_seq, other=0.0).to(ACC),
                tl.load(h0_ptr + state_offs, mask=keep & (~from_seq), other=0.0).to(ACC),
            )
        if SAVES:
            s0 = tl.load(g_ptrs, mask=mask, other=0.0).to(ACC)
            if GATES > 1:
                s1 = tl.load(g_ptrs + H, mask=mask, other=0.0).to(ACC)
            if GATES > 2:
                s2 = tl.load(g_ptrs + 2 * H, mask=mask, other=0.0).to(ACC)
            if GATES > 3:
                s3 = tl.load(g_ptrs + 3 * H, mask=mask, other=0.0).to(ACC)
        if EXTRA:
            e = tl.load(hn_seq_ptr + seq_offs, mask=mask, other=0.0).to(ACC)
        if HAS_C:
            if REGULARISED:  # the cell's own new c (c_seq holds the zoned one)
                c_t = tl.load(cell_c_ptr + seq_offs, mask=mask, other=0.0).to(ACC)
            else:
                c_t = tl.load(c_seq_ptr + seq_offs, mask=mask, other=0.0).to(ACC)
        if BWD_H:
            if REGULARISED:
                h_t = tl.load(cell_h_ptr + seq_offs, mask=mask, other=0.0).to(ACC)
            else:
                h_t = tl.load(y_ptr + seq_offs, mask=mask, other=0.0).to(ACC)
        # Zoneout: a share w of dh_t goes straight to h_prev (after the GEMM, mask and dy read again),
        # the rest to the cell. Branch-free, or before the loads above, this spilled (LSTM fp64 32).
        dc_t = dc
        if REGULARISED:
            if zoneout_h != 0:
                dh_t = (1.0 - zone_weight(mask_h_ptr, zoneout_h, p_h, seq_offs, mask, rows)) * dh_t
            if HAS_C:
                if zoneout_c != 0:
                    dc_t = (1.0 - zone_weight(mask_c_ptr, zoneout_c, p_c, seq_offs, mask, rows)) * dc
        if PARAMS > 0:
            dx0, dx1, dx2, dx3, dr0, dr1, dr2, dr3, dh_direct, dc_prev = CELL_BACKWARD(
                dh_t, dc_t, s0, s1, s2, s3, e, c_t, c_prev, h_t, h_prev, p0, p1, p2)
        else:
            dx0, dx1, dx2, dx3, dr0, dr1, dr2, dr3, dh_direct, dc_prev = CELL_BACKWARD(
                dh_t, dc_t, s0, s1, s2, s3, e, c_t, c_prev, h_t, h_prev)
        # The GEMM reads the gradients as stored (I/O dtype), like the step tier. With APART
        # dr_k is converted before any store: converting after the dxg stores spilled 8 B
        # in the GRU fp16/bf16 BLOCK_H 128 backward on sm_90 (capped at 128 registers).
        if APART:
            dr0, dr1, dr2, dr3 = dr0.to(ty), dr1.to(ty), dr2.to(ty), dr3.to(ty)
            store_gates(dx_ptrs, dx0, dx1, dx2, dx3, H, mask, GATES)
            store_gates(dhg_ptr + gate_offs, dr0, dr1, dr2, dr3, H, mask, GATES)
        else:
            dr0, dr1, dr2, dr3 = dx0.to(ty), dx1.to(ty), dx2.to(ty), dx3.to(ty)
            store_gates(dx_ptrs, dr0, dr1, dr2, dr3, H, mask, GATES)
        acc = zero
        if DIRECT:
            acc = dh_direct
        if REGULARISED:  # dh_direct joins after the scale (below)
            acc = zero
        acc = tl.dot(dot_operand(dr0, PRECISION), w0, acc, input_precision=PRECISION)
        if GATES > 1:
            acc = tl.dot(dot_operand(dr1, PRECISION), w1, acc, input_precision=PRECISION)
        if GATES > 2:
            acc = tl.dot(dot_operand(dr2, PRECISION), w2, acc, input_precision=PRECISION)
        if GATES > 3:
            acc = tl.dot(dot_operand(dr3, PRECISION), w3, acc, input_precision=PRECISION)
        # The GEMM's result times the recurrent-dropout scale, then zoneout's share and dh_direct.
        if REGULARISED:
            if has_scale:
                acc = acc * scale.to(ACC)
            if zoneout_h != 0:
                dh_keep = dh + tl.load(dy_ptr + seq_offs, mask=mask, other=0.0).to(ACC)
                acc += zone_weight(mask_h_ptr, zoneout_h, p_h, seq_offs, mask, rows) * dh_keep
            if DIRECT:
                acc += dh_direct
        # (the other nesting of these selects crashed LLVM's SLP vectorizer: LSTM fp32, sm_90)
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
# Launch choices (shared with the compile report so the two cannot drift)
# --------------------------------------------------------------------------------------


def constexprs(kind, dtype: torch.dtype, tf32: bool, cfg: fits.KernelConfig, aligned: bool = False,
               regularised: bool = False) -> dict:
    """Compile-time arguments of either resident kernel (the same names for both): the
    cell's (:meth:`~fastrnn.cells.Cell.kernel_constexprs`; ``PARAMS`` 0 for a cell without
    per-unit parameters, the kernels' default, named so the report's signature has it) and
    the launch's (``REGULARISED``: a call with zoneout or a recurrent-dropout scale)."""
    out = dict(
        **cell_of(kind).kernel_constexprs(), ACC=acc_type(dtype), PRECISION=fits.dot_precision(dtype, tf32),
        BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, H_ALIGNED=bool(aligned),
    )
    out.setdefault("PARAMS", 0)
    out["REGULARISED"] = bool(regularised)
    return out


#: Compile options of every resident launch (and of the report's compiles).
OPTIONS = dict(enable_fp_fusion=ENABLE_FP_FUSION)


# Pointer arguments in order, with the dtype each holds: "io" (the layer's dtype), "acc" (fp32;
# fp64 for fp64 I/O), "i32" or "u8" (flags, masks). The launchers pass exactly these dtypes.
REGULARISER_POINTERS = (
    ("scale_ptr", "io"), ("mask_h_ptr", "u8"), ("mask_c_ptr", "u8"), ("cell_c_ptr", "acc"), ("cell_h_ptr", "io"),
)
FORWARD_POINTERS = (
    ("xg_ptr", "io"), ("w_hh_ptr", "io"), ("b_hh_ptr", "io"), ("h0_ptr", "io"), ("c0_ptr", "io"),
    ("y_ptr", "io"), ("h_n_ptr", "io"), ("c_n_ptr", "io"), ("gates_ptr", "io"), ("c_seq_ptr", "acc"),
    ("hn_seq_ptr", "io"), ("sizes_ptr", "i32"), ("offsets_ptr", "i32"), ("p_ptr", "io"), ("resets_ptr", "u8"),
) + REGULARISER_POINTERS
FORWARD_INTS = ("T", "B", "uniform_b", "reverse", "save", "H", "has_resets", "has_scale", "zoneout_h", "zoneout_c",
                "save_zoned", "p_h", "p_c")
BACKWARD_POINTERS = (
    ("w_hh_ptr", "io"), ("h0_ptr", "io"), ("c0_ptr", "io"), ("y_ptr", "io"), ("dy_ptr", "io"),
    ("dh_n_ptr", "io"), ("dc_n_ptr", "io"), ("gates_ptr", "io"), ("c_seq_ptr", "acc"), ("hn_seq_ptr", "io"),
    ("dxg_ptr", "io"), ("dhg_ptr", "io"), ("dh0_ptr", "io"), ("dc0_ptr", "io"), ("sizes_ptr", "i32"),
    ("offsets_ptr", "i32"), ("p_ptr", "io"), ("resets_ptr", "u8"),
) + REGULARISER_POINTERS
BACKWARD_INTS = ("T", "B", "uniform_b", "reverse", "H", "has_resets", "has_scale", "zoneout_h", "zoneout_c", "p_h",
                 "p_c")
FLOATS = ("p_h", "p_c")  #: the runtime scalars typed fp32 (the others are ints)


class Specialisation(NamedTuple):
    """One compiled variant the launchers can choose: what the AOT report compiles."""

    kernel: object  # the @triton.jit function
    kernel_name: str  # "resident-forward" / "resident-backward"
    kind: str  # the cell's name
    dtype: torch.dtype
    label: str  # dtype / precision, for the report
    config: fits.KernelConfig
    constexprs: dict
    pointers: tuple  # ((name, "io" | "acc" | "i32"), ...)
    ints: tuple
    shared_limit: dict  # arch -> bytes this entry may use there (fits.py), None: not run there
    options: dict = OPTIONS  # compile options besides num_warps
    floats: tuple = FLOATS  # the names in ``ints`` typed fp32
    launched_on = launched_on  # where a launch may pick it, as far as its own record says


DIRECTIONS = ("forward", "backward")


def kernel_of(direction: str) -> tuple:
    """``(kernel, pointers, ints)`` of ``direction`` ("forward" or "backward"), the kernel
    looked up when asked (so a test can stand in for it)."""
    if direction == "forward":
        return resident_forward_kernel, FORWARD_POINTERS, FORWARD_INTS
    return resident_backward_kernel, BACKWARD_POINTERS, BACKWARD_INTS


def specialisations(dtypes=None) -> list[Specialisation]:
    """Every (kernel, cell, dtype, TF32, ``H_ALIGNED``, ``REGULARISED``, block configuration) a
    launch may choose: for each cell of :func:`triton_cells`, its entries of :data:`fits.RESIDENT`
    (:func:`fits.resident_entries`); the forward also with ``H_ALIGNED`` (:func:`h_aligned`), the
    backward too where :data:`ALIGNED_BACKWARD` has the entry (:func:`aligned_shared`);
    label ``-reg``: with ``REGULARISED``, for the entries :func:`fits.resident_regularised` runs."""
    out = []
    for cell in triton_cells():
        for (dtype_name, block_h), fit in fits.resident_entries(cell).items():
            dtype = getattr(torch, dtype_name)
            if dtypes is not None and dtype not in dtypes:
                continue
            for reg in (False, True) if fits.resident_regularised(cell, dtype, block_h) else (False,):
                for tf32, aligned, direction in product((False, True), (False, True), DIRECTIONS):
                    shared = aligned_shared(cell.name, dtype, block_h, direction, aligned, fit)
                    if (tf32 and dtype != torch.float32) or shared is None:
                        continue
                    label = dtype_name + ("-tf32" if tf32 else "") + ("-a8" if aligned else "") + ("-reg" if reg else "")
                    kernel, pointers, ints = kernel_of(direction)
                    cfg = kernel_config(getattr(fit, direction), cell.name, dtype, tf32, direction, reg, aligned)
                    out.append(Specialisation(
                        kernel, f"resident-{direction}", cell.name, dtype, label, cfg,
                        constexprs(cell, dtype, tf32, cfg, aligned, reg), pointers, ints, shared,
                    ))
    return out


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def launch(direction: str, kind, tensors: dict, ints: dict, *, fit: fits.ResidentFit, tf32: bool,
           limits: tuple[int, int] = (fits.REFERENCE_ARCH, fits.SHARED_LIMIT[fits.REFERENCE_ARCH])) -> None:
    """One launch of ``direction``'s kernel over the whole sequence, for the cell ``kind``
    (a :class:`~fastrnn.cells.Cell` or its name).

    ``tensors`` maps each name of the direction's pointers (:data:`FORWARD_POINTERS` /
    :data:`BACKWARD_POINTERS`) to a contiguous, 16-byte aligned tensor (unused ones: any
    tensor of the right dtype); ``ints`` maps each name of :data:`FORWARD_INTS` /
    :data:`BACKWARD_INTS` to a Python int (:data:`FLOATS`: a float). Grid: ``cdiv(B, BLOCK_B)``
    programs. Optional inputs may be left out (regularisers: the cell's own c / h is then ``c_seq`` / ``y``).
    A call with regularisers runs ``REGULARISED`` kernels; refused on :data:`fits.RESIDENT_UNREGULARISED` entries.
    ``limits``: the device's ``(compute capability, shared memory per block)``, which decide
    whether a backward with ``H % 8 == 0`` runs its aligned kernel (:func:`aligned_backward`).
    """
    kernel, pointers, int_names = kernel_of(direction)
    cfg = getattr(fit, direction)
    if "p_ptr" not in tensors and cell_of(kind).param_rows:
        raise ValueError(f"fastrnn.kernels: cell {cell_of(kind).name!r} needs its per-unit parameters (p_ptr)")
    w = tensors["w_hh_ptr"]
    u8, io = w.new_zeros(16, dtype=torch.uint8), w.new_empty(8)
    tensors = {"p_ptr": io, "resets_ptr": u8, "scale_ptr": io, "mask_h_ptr": u8, "mask_c_ptr": u8,
               "cell_c_ptr": tensors["c_seq_ptr"], "cell_h_ptr": tensors.get("y_ptr", io), **tensors}
    ints = {"has_resets": 0, "has_scale": 0, "zoneout_h": 0, "zoneout_c": 0, "save_zoned": 0, "p_h": 0.0, "p_c": 0.0,
            **ints}
    regularised = bool(ints["has_scale"] or ints["zoneout_h"] or ints["zoneout_c"])
    if regularised and not fits.resident_regularised(cell_of(kind), w.dtype, ints["H"]):
        raise ValueError(f"fastrnn.kernels: no regularised resident kernels for {cell_of(kind).name} {w.dtype} "
                         f"with H={ints['H']} (fits.RESIDENT_UNREGULARISED)")
    name, grid = cell_of(kind).name, (triton.cdiv(ints["B"], cfg.block_b),)
    aligned = h_aligned(direction, ints["H"], aligned_backward(name, w.dtype, cfg.block_h, regularised, *limits))
    kernel[grid](
        *_pointers(pointers, tensors), *(ints[k] for k in int_names),
        **constexprs(kind, w.dtype, tf32, cfg, aligned, regularised),
        num_warps=kernel_config(cfg, name, w.dtype, tf32, direction, regularised, aligned).num_warps, **OPTIONS,
    )
    record("resident", direction)


def launch_forward(kind, tensors: dict, ints: dict, **options) -> None:
    """The forward launch (:func:`launch`)."""
    launch("forward", kind, tensors, ints, **options)


def launch_backward(kind, tensors: dict, ints: dict, **options) -> None:
    """The backward launch (:func:`launch`)."""
    launch("backward", kind, tensors, ints, **options)
