"""Step kernels: one launch per timestep of one layer-direction, any cell.

The cell (:class:`fastrnn.cells.Cell`) arrives as compile-time arguments
(``cell.kernel_constexprs()``): its pointwise functions ``CELL_FORWARD`` /
``CELL_BACKWARD``, its gate count ``GATES`` and the flags saying which states and saved
values it uses. The kernels hold the GEMMs, the loops and the memory traffic, never a gate
equation.

Forward (``recurrent_step_forward_kernel``), one launch per step ``t``::

    r_k = h_{t-1} @ W_hh[k]^T (+ b_hh[k] when APART)    fp32 accumulation, k < GATES
    h, c, s_*, e = CELL_FORWARD(x_k from xg[t rows], r_k, h_{t-1}, c_{t-1})
    h -> the output rows of step t; c -> the cell-state buffer (HAS_C);
    s_0..s_{GATES-1} (SAVES) / e (EXTRA) -> saved rows when SAVE

Backward (``recurrent_step_backward_kernel``), one launch per backward step: the
recurrent GEMM of the step ``s`` processed just before (``dh = dr_s @ W_hh``) fused with
the pointwise backward of the next step ``q`` (the step processed before ``s`` in the
forward pass). The first backward launch has no step ``s`` (``k_len = 0``) and is
pointwise only. For a cell with a path from ``h_{t-1}`` to ``h_t`` outside the GEMM
(``DIRECT``, GRU's ``dh * z``), the launch of ``q`` leaves ``dh_direct`` of ``q`` in the
rows of ``q`` of the ``dh`` state buffer, and the next launch adds it to its GEMM result.

Grid: ``(cdiv(rows, BLOCK_B), cdiv(H, BLOCK_H))``. A program owns a ``BLOCK_B x BLOCK_H``
tile of the hidden state and computes that tile of every gate (GATES accumulators),
looping over the reduction dimension in ``BLOCK_K`` chunks. No program reads what another
program of the same launch writes: the previous hidden state is read from the previous
step's output rows (or ``h0``) and written to the current step's rows (ping-pong over the
output sequence); the backward GEMM reads the recurrent gradients of step ``s`` and writes
those of step ``q``; the ``dh`` / ``dc`` / no-save ``c`` state buffers are only touched
pointwise, each element by the one program that owns it.

Packed sequences: each step's first row (``off``), active rows (``bs``), and the previous
step's first row and row count (``prev_off``, ``n_prev``) are runtime scalars; row
``r < n_prev`` continues from the previous step, a row ``r >= n_prev`` starts from the
initial state (the reverse direction of a packed batch, whose active batch grows).

Resets: with ``has_resets`` (a runtime flag), a row whose reset flag is set reads a zero
previous state (``h``, ``c`` and its GEMM rows) in the forward and in the backward; the
backward gives no gradient to the state before it (its rows of ``dh = dr_s @ W_hh`` and its
``dc_prev`` are zeroed). A cell with per-unit parameters (``PARAMS`` rows, a compile-time
count) gets them as three more per-unit tiles of both pointwise functions.

Regularisers (runtime flags, no specialisation): the recurrent-dropout scale (``has_scale``)
multiplies the state where it enters the forward GEMM, and the backward GEMM's result.
Zoneout (``zoneout_h`` / ``zoneout_c``: the masks in training, ``p_h`` / ``p_c`` in eval)
blends each step's new state with the one it started from; the cell's own new ``c`` / ``h``
are kept apart for the backward, which splits the gradient of the zoned state: the cell's
share goes to the cell backward, the rest reaches the previous state the way ``dh_direct``
does (through the ``dh`` buffer rows of ``q``) and ``dc_prev``.

Runtime integers are never specialised (``do_not_specialize``), so no shape, step or
batch size triggers a recompile; the only compile-time choices are the cell, SAVE, the
dtype, TF32, and the block configuration picked from ``H`` (and, where that one spills on
the device's arch, from the cell: :func:`step_config`).
:func:`specialisations` lists every combination, for the ahead-of-time compile report.
Pointers are assumed 16-byte aligned (the launchers copy a misaligned tensor), which the
report compiles with.
"""

from __future__ import annotations

from itertools import product
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .launches import LaunchCounter, aligned_input, count_launches, record  # noqa: F401 (re-exported)
from .launches import checked_pointers as _pointers
from .cells import recurrent_bias
from .fits import dtype_name
from .step_tiles import aligned as _aligned, dot_operand as _dot_operand, load_gate as _load_gate
from .step_tiles import load_params, load_state as _load_state, reset_rows, store_gates as _store_gates
from .step_tiles import flag_rows, zone_blend, zone_split
from .step_args import BACKWARD_INTS, BACKWARD_POINTERS, CONFIGS, FORWARD_INTS, FORWARD_POINTERS, OPTIONS  # noqa: F401
from .step_args import StepConfig, backward_constexprs, forward_constexprs, sizes_aligned, step_config  # noqa: F401
from .step_args import DEFAULT_CONFIG, configs as step_configs, small_on_arch
from .step_args import FLOATS, has_projection as _has_projection, saves_something as _saves_something

# --------------------------------------------------------------------------------------
# Forward step
# --------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["off", "bs", "prev_off", "n_prev", "out_off", "c_prev_off", "c_out_off", "H", "P",
                               "has_resets", "has_scale", "zoneout_h", "zoneout_c", "save_zoned", "p_h", "p_c"])
def recurrent_step_forward_kernel(
    xg_ptr,  # (N, GATES*H) input projection; rows [off, off + bs) are this step's
    w_hh_ptr,  # (GATES*H, P) recurrent weight
    b_hh_ptr,  # (GATES*H,) recurrent bias (APART only; zeros when the layer has none)
    h_seq_ptr,  # (N, P) output sequence y: read at the previous step's rows
    h0_ptr,  # (B, P) initial hidden state
    out_ptr,  # (*, H) where h_t is written: y itself, or the (B, H) LSTM m buffer with proj_size
    c_prev_ptr,  # (*, H) ACC: cell state of the previous step (HAS_C)
    c_init_ptr,  # (B, H) initial cell state c0 (HAS_C)
    c_out_ptr,  # (*, H) ACC: where c_t is written (HAS_C)
    gates_ptr,  # (N, GATES*H) saved s_0 .. s_{GATES-1} (SAVE and SAVES)
    extra_ptr,  # (N, H) saved e (SAVE and EXTRA)
    p_ptr,  # (PARAMS, H) the cell's per-unit parameters (PARAMS > 0)
    rst_ptr,  # (N,) uint8 reset flags: nonzero where a row starts from a zero state (has_resets)
    scale_ptr,  # (B, P) recurrent-dropout scale of the state entering the GEMM (has_scale)
    mask_h_ptr,  # (N, H) uint8 zoneout masks of h / c: nonzero keeps the previous state (mode 1)
    mask_c_ptr,
    cell_c_ptr,  # (N, H) ACC: the cell's own new c, before zoneout (save_zoned, c zoned out)
    cell_h_ptr,  # (N, H): the cell's own new h (save_zoned, h zoned out, BWD_H)
    off,  # first row of this step in xg / y
    bs,  # active rows of this step
    prev_off,  # first row of the previous step in y
    n_prev,  # rows of the previous step (0 before the first step)
    out_off,  # row of out_ptr that row 0 of this step is written to
    c_prev_off,  # row of c_prev_ptr holding row 0 of the previous step
    c_out_off,  # row of c_out_ptr that row 0 of this step is written to
    H,  # hidden size
    P,  # size of the recurrent state h (proj_size, or H)
    has_resets,  # 1: read rst_ptr (a runtime flag, not a specialisation)
    has_scale,  # 1: read scale_ptr
    zoneout_h,  # zoneout of h / c: 0 none, 1 the masks (training), 2 p_h / p_c (eval)
    zoneout_c,
    save_zoned,  # 1: keep the cell's own new c / h of a zoned-out state for the backward
    p_h,  # fp32 zoneout probabilities (mode 2)
    p_c,
    CELL_FORWARD: tl.constexpr,  # the cell (fastrnn.cells.Cell.kernel_constexprs)
    CELL_BACKWARD: tl.constexpr,
    GATES: tl.constexpr,
    HAS_C: tl.constexpr,
    APART: tl.constexpr,
    SAVES: tl.constexpr,
    EXTRA: tl.constexpr,
    FWD_H_PREV: tl.constexpr,
    BWD_H: tl.constexpr,
    BWD_H_PREV: tl.constexpr,
    DIRECT: tl.constexpr,
    SAVE: tl.constexpr,  # keep what backward needs
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 I/O
    PRECISION: tl.constexpr,  # tl.dot input precision: "ieee" or "tf32"
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    H_ALIGNED: tl.constexpr,  # the launcher guarantees H % 8 == 0 and P % 8 == 0 (16-byte rows)
    PARAMS: tl.constexpr = 0,  # rows of p_ptr (0: a cell without per-unit parameters)
):
    H = _aligned(H, H_ALIGNED)
    P = _aligned(P, H_ALIGNED)
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
    off = off.to(tl.int64)
    prev_off = prev_off.to(tl.int64)
    row_mask = rows < bs
    col_mask = cols < H
    mask = row_mask[:, None] & col_mask[None, :]
    GH = GATES * H
    HP = H.to(tl.int64) * P  # one gate block of W_hh: a product of sizes, so 64-bit

    # h_{t-1} @ W_hh^T, one accumulator per gate; W_hh^T tile of gate k is rows k*H + cols.
    acc0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    acc1 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    acc2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    acc3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    for k0 in range(0, P, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        k_mask = ks < P
        from_seq = (rows < n_prev)[:, None]
        h_mask = row_mask[:, None] & k_mask[None, :]
        h_seq = tl.load(h_seq_ptr + (prev_off + rows)[:, None] * P + ks[None, :], mask=h_mask & from_seq, other=0.0)
        h_init = tl.load(h0_ptr + rows[:, None] * P + ks[None, :], mask=h_mask & (~from_seq), other=0.0)
        # recurrent dropout scales the GEMM's operand only (branch-free: no load without it;
        # a select, not a multiply by a default 1: that gave fp32 LSTM a ptxas stack frame)
        scale_mask = h_mask & flag_rows(rows, has_scale)[:, None]
        scale = tl.load(scale_ptr + rows[:, None] * P + ks[None, :], mask=scale_mask, other=0.0)
        h = tl.where(from_seq, h_seq, h_init)
        h = _dot_operand(tl.where(scale_mask, h * scale, h), PRECISION)
        w_offs = cols[None, :] * P + ks[:, None]
        w_mask = k_mask[:, None] & col_mask[None, :]
        w = _dot_operand(tl.load(w_hh_ptr + w_offs, mask=w_mask, other=0.0), PRECISION)
        acc0 = tl.dot(h, w, acc0, input_precision=PRECISION)
        if GATES > 1:
            w = _dot_operand(tl.load(w_hh_ptr + HP + w_offs, mask=w_mask, other=0.0), PRECISION)
            acc1 = tl.dot(h, w, acc1, input_precision=PRECISION)
        if GATES > 2:
            w = _dot_operand(tl.load(w_hh_ptr + 2 * HP + w_offs, mask=w_mask, other=0.0), PRECISION)
            acc2 = tl.dot(h, w, acc2, input_precision=PRECISION)
        if GATES > 3:
            w = _dot_operand(tl.load(w_hh_ptr + 3 * HP + w_offs, mask=w_mask, other=0.0), PRECISION)
            acc3 = tl.dot(h, w, acc3, input_precision=PRECISION)
    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    if FWD_H_PREV:
        h_prev = _load_state(h_seq_ptr, prev_off, n_prev, h0_ptr, rows, cols, P, mask, ACC)
    else:  # read only by zoneout of h (branch-free: no load without it)
        zoned = mask & flag_rows(rows, zoneout_h)[:, None]
        h_prev = _load_state(h_seq_ptr, prev_off, n_prev, h0_ptr, rows, cols, P, zoned, ACC)
    c_prev = zero
    if HAS_C:
        c_prev = _load_state(c_prev_ptr, c_prev_off.to(tl.int64), n_prev, c_init_ptr, rows, cols, H, mask, ACC)
    # A row that starts an episode reads a zero state: h_prev, c_prev and its GEMM rows.
    # Branch-free (without has_resets no flag is loaded: rows < bs * 0 masks them all, and
    # every select keeps its value): a scalar `if has_resets` here gave some fp32
    # specialisations a ptxas stack frame.
    cut = reset_rows(rst_ptr, off, rows, rows < bs * has_resets)[:, None]
    acc0 = tl.where(cut, 0.0, acc0)
    acc1 = tl.where(cut, 0.0, acc1)
    acc2 = tl.where(cut, 0.0, acc2)
    acc3 = tl.where(cut, 0.0, acc3)
    h_prev = tl.where(cut, 0.0, h_prev)
    c_prev = tl.where(cut, 0.0, c_prev)
    if APART:
        # b_hh belongs to the recurrent pre-activation (it cannot be folded into xg)
        b0, b1, b2, b3 = recurrent_bias(b_hh_ptr, cols, col_mask, H, GATES, APART, ACC, BLOCK_H)
        acc0 += b0
        acc1 += b1
        acc2 += b2
        acc3 += b3
    x_ptrs = xg_ptr + (off + rows)[:, None] * GH + cols[None, :]
    x0 = _load_gate(x_ptrs, 0, H, mask, GATES, ACC, BLOCK_B, BLOCK_H)
    x1 = _load_gate(x_ptrs, 1, H, mask, GATES, ACC, BLOCK_B, BLOCK_H)
    x2 = _load_gate(x_ptrs, 2, H, mask, GATES, ACC, BLOCK_B, BLOCK_H)
    x3 = _load_gate(x_ptrs, 3, H, mask, GATES, ACC, BLOCK_B, BLOCK_H)
    if PARAMS > 0:
        p0, p1, p2 = load_params(p_ptr, cols, col_mask, H, PARAMS, ACC, BLOCK_H)
        h_new, c, s0, s1, s2, s3, e = CELL_FORWARD(x0, x1, x2, x3, acc0, acc1, acc2, acc3, h_prev, c_prev,
                                                   p0, p1, p2)
    else:
        h_new, c, s0, s1, s2, s3, e = CELL_FORWARD(x0, x1, x2, x3, acc0, acc1, acc2, acc3, h_prev, c_prev)
    # Zoneout: the cell's own values are kept for the backward, the zoned-out ones go on.
    new_rows = (off + rows)[:, None] * H + cols[None, :]
    if HAS_C:
        keep_c = mask & flag_rows(rows, save_zoned * zoneout_c)[:, None]
        tl.store(cell_c_ptr + new_rows, c.to(cell_c_ptr.dtype.element_ty), mask=keep_c)
        c = zone_blend(c_prev, c, mask_c_ptr, zoneout_c, p_c, off, rows, cols, H, mask)
        c_out = c_out_ptr + (c_out_off + rows)[:, None] * H + cols[None, :]
        tl.store(c_out, c.to(c_out_ptr.dtype.element_ty), mask=mask)
    if BWD_H:
        keep_h = mask & flag_rows(rows, save_zoned * zoneout_h)[:, None]
        tl.store(cell_h_ptr + new_rows, h_new.to(cell_h_ptr.dtype.element_ty), mask=keep_h)
    h_new = zone_blend(h_prev, h_new, mask_h_ptr, zoneout_h, p_h, off, rows, cols, H, mask)
    if SAVE:
        if SAVES:
            _store_gates(gates_ptr + (off + rows)[:, None] * GH + cols[None, :], H, s0, s1, s2, s3, mask, GATES)
        if EXTRA:
            e_ptrs = extra_ptr + (off + rows)[:, None] * H + cols[None, :]
            tl.store(e_ptrs, e.to(extra_ptr.dtype.element_ty), mask=mask)
    out_ptrs = out_ptr + (out_off + rows)[:, None] * H + cols[None, :]
    tl.store(out_ptrs, h_new.to(out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------
# Backward step
# --------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["s_off", "s_bs", "k_len", "q_off", "q_bs", "q_prev_off", "q_n_prev", "H", "P",
                               "has_resets", "has_scale", "zoneout_h", "zoneout_c", "p_h", "p_c"])
def recurrent_step_backward_kernel(
    dr_ptr,  # (N, GATES*H) dr at step s, the GEMM operand (dhg when APART, else dxg)
    w_hh_ptr,  # (GATES*H, P) recurrent weight
    dxg_ptr,  # (N, GATES*H) out: dx, gradient of the input projection at step q
    dhg_ptr,  # (N, GATES*H) out: dr, gradient of the recurrent pre-activation at step q (APART)
    dy_ptr,  # (N, P) gradient of the output sequence
    dh_ptr,  # (B, P) ACC state buffer: dh reaching each sequence's state; updated in place
    dc_ptr,  # (B, H) ACC state buffer: dc (HAS_C); updated in place
    dm_ptr,  # (B, H) gradient of m at step q, computed outside (LSTM with proj_size; DM_GIVEN)
    gates_ptr,  # (N, GATES*H) saved s_0 .. s_{GATES-1} (SAVES)
    c_seq_ptr,  # (N, H) ACC saved cell states (HAS_C)
    c0_ptr,  # (B, H) initial cell state (HAS_C)
    extra_ptr,  # (N, H) saved e (EXTRA)
    h_seq_ptr,  # (N, P) output sequence y: h of step q (BWD_H), h_prev of q (BWD_H_PREV)
    h0_ptr,  # (B, P) initial hidden state (BWD_H_PREV)
    p_ptr,  # (PARAMS, H) the cell's per-unit parameters (PARAMS > 0)
    rst_ptr,  # (N,) uint8 reset flags: nonzero where a row starts from a zero state (has_resets)
    scale_ptr,  # (B, P) recurrent-dropout scale (has_scale): multiplies dr_s @ W_hh
    mask_h_ptr,  # (N, H) uint8 zoneout masks of h / c (mode 1)
    mask_c_ptr,
    cell_c_ptr,  # (N, H) ACC: the cell's own new c (c zoned out; c_seq holds the zoned c)
    cell_h_ptr,  # (N, H): the cell's own new h (h zoned out, BWD_H; y holds the zoned h)
    s_off,  # first row of step s
    s_bs,  # rows of step s (0: no step s)
    k_len,  # reduction length of the GEMM: GATES*H, or 0 to skip it
    q_off,  # first row of step q
    q_bs,  # rows of step q
    q_prev_off,  # first row of the step before q (in processing order)
    q_n_prev,  # its row count (0 when q is the first processed step)
    H,  # hidden size
    P,  # size of h (== H unless DM_GIVEN)
    has_resets,  # 1: read rst_ptr (a runtime flag, not a specialisation)
    has_scale,  # 1: read scale_ptr
    zoneout_h,  # zoneout of h / c: 0 none, 1 the masks (training), 2 p_h / p_c (eval)
    zoneout_c,
    p_h,  # fp32 zoneout probabilities (mode 2)
    p_c,
    CELL_FORWARD: tl.constexpr,  # the cell (fastrnn.cells.Cell.kernel_constexprs)
    CELL_BACKWARD: tl.constexpr,
    GATES: tl.constexpr,
    HAS_C: tl.constexpr,
    APART: tl.constexpr,
    SAVES: tl.constexpr,
    EXTRA: tl.constexpr,
    FWD_H_PREV: tl.constexpr,
    BWD_H: tl.constexpr,
    BWD_H_PREV: tl.constexpr,
    DIRECT: tl.constexpr,
    DM_GIVEN: tl.constexpr,  # LSTM with proj_size: dm read from dm_ptr, no GEMM here
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    H_ALIGNED: tl.constexpr,  # the launcher guarantees H % 8 == 0 and P % 8 == 0 (16-byte rows)
    PARAMS: tl.constexpr = 0,  # rows of p_ptr (0: a cell without per-unit parameters)
):
    H = _aligned(H, H_ALIGNED)
    P = _aligned(P, H_ALIGNED)
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
    s_off = s_off.to(tl.int64)
    q_off = q_off.to(tl.int64)
    GH = GATES * H
    col_mask = cols < H
    s_rows = rows < s_bs
    q_rows = rows < q_bs
    q_mask = q_rows[:, None] & col_mask[None, :]
    any_mask = (s_rows | q_rows)[:, None] & col_mask[None, :]
    dh_ptrs = dh_ptr + rows[:, None] * P + cols[None, :]

    if DM_GIVEN:
        dh = tl.load(dm_ptr + rows[:, None] * H + cols[None, :], mask=q_mask, other=0.0).to(ACC)
    else:
        # dh_{s-1} = dr_s @ W_hh (times the recurrent-dropout scale) for the rows of step s,
        # plus what the previous launch left in those rows (the dh_direct of step s when
        # DIRECT, its zoned-out part of dh with zoneout of h); rows beyond keep what the
        # state buffer holds (dh_n, or a finished dh0 row).
        dh_old = tl.load(dh_ptrs, mask=any_mask, other=0.0)
        acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        for k0 in range(0, k_len, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            # k_len is GH or 0 (no iteration): the mask against GH keeps its divisibility
            # known with H_ALIGNED, so the dr rows load as vectors, not 2-byte scalars.
            k_mask = ks < GH
            a_mask = s_rows[:, None] & k_mask[None, :]
            a = tl.load(dr_ptr + (s_off + rows)[:, None] * GH + ks[None, :], mask=a_mask, other=0.0)
            w_mask = k_mask[:, None] & col_mask[None, :]
            w = tl.load(w_hh_ptr + ks[:, None] * P + cols[None, :], mask=w_mask, other=0.0)
            acc = tl.dot(_dot_operand(a, PRECISION), _dot_operand(w, PRECISION), acc, input_precision=PRECISION)
        if has_scale:
            acc *= tl.load(scale_ptr + rows[:, None] * P + cols[None, :], mask=any_mask, other=1.0).to(ACC)
        if DIRECT:
            acc += dh_old
        elif zoneout_h != 0:
            acc += dh_old
        dh = tl.where(s_rows[:, None], acc, dh_old)
        if has_resets:
            # no gradient crosses a reset: a row of s that started an episode gives h_q none
            dh = tl.where(reset_rows(rst_ptr, s_off, rows, s_rows)[:, None], 0.0, dh)
        dh += tl.load(dy_ptr + (q_off + rows)[:, None] * P + cols[None, :], mask=q_mask, other=0.0).to(ACC)
        if not DIRECT:
            if zoneout_h == 0:
                tl.store(dh_ptrs, dh, mask=any_mask)

    # Pointwise backward of step q, with dh the total gradient reaching h_q; with zoneout,
    # the cell's share of it and of dc (dh_keep / dc_keep reach the previous state).
    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    dh_all = dh
    dh_keep = zero
    if zoneout_h != 0:
        dh, dh_keep = zone_split(dh, mask_h_ptr, zoneout_h, p_h, q_off, rows, cols, H, q_mask)
    h_prev = zero
    if BWD_H_PREV:
        h_prev = _load_state(h_seq_ptr, q_prev_off.to(tl.int64), q_n_prev, h0_ptr, rows, cols, P, q_mask, ACC)
    c_prev = zero
    dc = zero
    dc_ptrs = dc_ptr + rows[:, None] * H + cols[None, :]
    if HAS_C:
        c_prev = _load_state(c_seq_ptr, q_prev_off.to(tl.int64), q_n_prev, c0_ptr, rows, cols, H, q_mask, ACC)
        dc = tl.load(dc_ptrs, mask=q_mask, other=0.0).to(ACC)
    dc_keep = zero
    if zoneout_c != 0:
        dc, dc_keep = zone_split(dc, mask_c_ptr, zoneout_c, p_c, q_off, rows, cols, H, q_mask)
    q_cut = rows < 0  # rows of q that start an episode: their previous state is zero
    if has_resets:
        q_cut = reset_rows(rst_ptr, q_off, rows, q_rows)
        h_prev = tl.where(q_cut[:, None], 0.0, h_prev)
        c_prev = tl.where(q_cut[:, None], 0.0, c_prev)
    g_ptrs = gates_ptr + (q_off + rows)[:, None] * GH + cols[None, :]
    s0 = zero
    s1 = zero
    s2 = zero
    s3 = zero
    if SAVES:
        s0 = _load_gate(g_ptrs, 0, H, q_mask, GATES, ACC, BLOCK_B, BLOCK_H)
        s1 = _load_gate(g_ptrs, 1, H, q_mask, GATES, ACC, BLOCK_B, BLOCK_H)
        s2 = _load_gate(g_ptrs, 2, H, q_mask, GATES, ACC, BLOCK_B, BLOCK_H)
        s3 = _load_gate(g_ptrs, 3, H, q_mask, GATES, ACC, BLOCK_B, BLOCK_H)
    e = zero
    if EXTRA:
        e = tl.load(extra_ptr + (q_off + rows)[:, None] * H + cols[None, :], mask=q_mask, other=0.0).to(ACC)
    # the cell's own c / h of step q: saved apart when zoned out (c_seq / y hold the zoned ones)
    c = zero
    if HAS_C:
        if zoneout_c != 0:
            c = tl.load(cell_c_ptr + (q_off + rows)[:, None] * H + cols[None, :], mask=q_mask, other=0.0).to(ACC)
        else:
            c = tl.load(c_seq_ptr + (q_off + rows)[:, None] * H + cols[None, :], mask=q_mask, other=0.0).to(ACC)
    h = zero
    if BWD_H:
        if zoneout_h != 0:
            h = tl.load(cell_h_ptr + (q_off + rows)[:, None] * H + cols[None, :], mask=q_mask, other=0.0).to(ACC)
        else:
            h = tl.load(h_seq_ptr + (q_off + rows)[:, None] * P + cols[None, :], mask=q_mask, other=0.0).to(ACC)
    if PARAMS > 0:
        p0, p1, p2 = load_params(p_ptr, cols, col_mask, H, PARAMS, ACC, BLOCK_H)
        dx0, dx1, dx2, dx3, dr0, dr1, dr2, dr3, dh_direct, dc_prev = CELL_BACKWARD(
            dh, dc, s0, s1, s2, s3, e, c, c_prev, h, h_prev, p0, p1, p2
        )
    else:
        dx0, dx1, dx2, dx3, dr0, dr1, dr2, dr3, dh_direct, dc_prev = CELL_BACKWARD(
            dh, dc, s0, s1, s2, s3, e, c, c_prev, h, h_prev
        )
    _store_gates(dxg_ptr + (q_off + rows)[:, None] * GH + cols[None, :], H, dx0, dx1, dx2, dx3, q_mask, GATES)
    if APART:
        _store_gates(dhg_ptr + (q_off + rows)[:, None] * GH + cols[None, :], H, dr0, dr1, dr2, dr3, q_mask, GATES)
    if HAS_C:
        if zoneout_c != 0:
            dc_prev += dc_keep
        if has_resets:
            dc_prev = tl.where(q_cut[:, None], 0.0, dc_prev)
        tl.store(dc_ptrs, dc_prev, mask=q_mask)
    if not DM_GIVEN:
        # rows of q: dh_direct and dh_keep, which the next launch adds to its GEMM result;
        # rows of s only (a sequence that started at s): their finished dh0
        if DIRECT:
            tl.store(dh_ptrs, tl.where(q_rows[:, None], dh_direct + dh_keep, dh_all), mask=any_mask)
        elif zoneout_h != 0:
            tl.store(dh_ptrs, tl.where(q_rows[:, None], dh_keep, dh_all), mask=any_mask)


# --------------------------------------------------------------------------------------
# Launch choices (shared with the compile report so the two cannot drift)
# --------------------------------------------------------------------------------------


class Specialisation(NamedTuple):
    """One compiled variant a launcher can choose: what the AOT report compiles."""

    kernel: object  # the @triton.jit function
    kernel_name: str
    kind: str  # the cell's name
    dtype: torch.dtype
    label: str  # dtype / precision / flags, for the report
    config: StepConfig
    constexprs: dict
    pointers: tuple  # ((name, "io" | "acc" | "u8"), ...)
    ints: tuple
    options: dict = OPTIONS  # compile options besides num_warps
    floats: tuple = FLOATS  # the ints that are fp32 scalars

    def launched_on(self, arch: int) -> bool:
        """Whether the launchers pick this variant on compute capability ``arch``: the 16-wide
        configuration always (H <= 16), the default one where :func:`step_config` keeps it."""
        c = self.constexprs
        return self.config != DEFAULT_CONFIG or not small_on_arch(
            self.kind, self.dtype, c["PRECISION"] == "tf32", c["H_ALIGNED"], arch, self.kernel_name)


def specialisations(dtypes=(torch.float32, torch.float16, torch.bfloat16)) -> list[Specialisation]:
    """Every (kernel, cell, dtype, TF32, SAVE / DM_GIVEN, config) the launchers can pick:
    every cell defined so far that has Triton functions (a user's cell included)."""
    from fastrnn import cells

    out = []
    for dtype in dtypes:
        for tf32 in ((False, True) if dtype == torch.float32 else (False,)):
            for cell in (c for c in cells.defined() if c.runs_on_triton):
                pairs = zip(step_configs(dtype, tf32, "forward"), step_configs(dtype, tf32, "backward"))
                for (forward_cfg, backward_cfg), aligned in product(pairs, (False, True)):
                    name = dtype_name(dtype) + ("-tf32" if tf32 else "") + ("-a8" if aligned else "")
                    for save in ((False, True) if _saves_something(cell) else (False,)):
                        out.append(Specialisation(
                            recurrent_step_forward_kernel, "forward", cell.name, dtype,
                            name + ("-save" if save else ""), forward_cfg,
                            forward_constexprs(cell, save, dtype, tf32, forward_cfg, aligned), FORWARD_POINTERS,
                            FORWARD_INTS,
                        ))
                    for dm_given in ((False, True) if _has_projection(cell) else (False,)):
                        out.append(Specialisation(
                            recurrent_step_backward_kernel, "backward", cell.name, dtype,
                            name + ("-dm" if dm_given else ""), backward_cfg,
                            backward_constexprs(cell, dm_given, dtype, tf32, backward_cfg, aligned), BACKWARD_POINTERS,
                            BACKWARD_INTS,
                        ))
    return out


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _configs(cell, hidden: int, dtype: torch.dtype, tf32: bool, arch: int | None, kernel: str) -> dict:
    """``{H_ALIGNED: block configuration}`` of a time loop (:func:`step_config` per variant)."""
    return {aligned: step_config(hidden, cell, dtype, tf32, aligned, arch, kernel) for aligned in (False, True)}


def forward_stepper(cell, tensors: dict, *, hidden: int, save: bool, tf32: bool, arch: int | None = None):
    """Prepare the forward steps of one time loop of ``cell`` (a :class:`fastrnn.cells.Cell`
    or its name); returns ``launch(ints)``, one step each.

    ``tensors`` maps each name of :data:`FORWARD_POINTERS` to a contiguous, 16-byte
    aligned tensor (unused ones: any tensor of the right dtype); they are checked and the
    block configurations and compile-time arguments are picked once here, not per step
    (``arch``: the device's compute capability, None: the tables' choice).
    ``ints`` maps each name of :data:`FORWARD_INTS` to a Python int.
    """
    dtype = tensors["xg_ptr"].dtype
    cfgs = _configs(cell, hidden, dtype, tf32, arch, "forward")
    pointers = _pointers(FORWARD_POINTERS, tensors)
    constexprs = {aligned: forward_constexprs(cell, save, dtype, tf32, cfg, aligned) for aligned, cfg in cfgs.items()}

    def launch(ints: dict) -> None:
        aligned = sizes_aligned(ints["H"], ints["P"])
        cfg = cfgs[aligned]
        grid = (triton.cdiv(ints["bs"], cfg.block_b), triton.cdiv(hidden, cfg.block_h))
        recurrent_step_forward_kernel[grid](
            *pointers, *(ints[k] for k in FORWARD_INTS), **constexprs[aligned], num_warps=cfg.num_warps, **OPTIONS,
        )
        record("step", "forward")

    return launch


def backward_stepper(cell, tensors: dict, *, hidden: int, dm_given: bool, tf32: bool, arch: int | None = None):
    """As :func:`forward_stepper` for the backward steps (names of
    :data:`BACKWARD_POINTERS` / :data:`BACKWARD_INTS`); a launch's grid covers
    ``max(s_bs, q_bs)`` rows."""
    dtype = tensors["dxg_ptr"].dtype
    cfgs = _configs(cell, hidden, dtype, tf32, arch, "backward")
    pointers = _pointers(BACKWARD_POINTERS, tensors)
    constexprs = {aligned: backward_constexprs(cell, dm_given, dtype, tf32, cfg, aligned)
                  for aligned, cfg in cfgs.items()}

    def launch(ints: dict) -> None:
        aligned = sizes_aligned(ints["H"], ints["P"])
        cfg = cfgs[aligned]
        grid = (triton.cdiv(max(ints["s_bs"], ints["q_bs"]), cfg.block_b), triton.cdiv(hidden, cfg.block_h))
        recurrent_step_backward_kernel[grid](
            *pointers, *(ints[k] for k in BACKWARD_INTS), **constexprs[aligned], num_warps=cfg.num_warps, **OPTIONS,
        )
        record("step", "backward")

    return launch
