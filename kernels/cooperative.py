"""Cooperative kernels: one layer-direction in one launch spread over the GPU's SMs.

The grid is ``(cdiv(H, BLOCK_H), groups)``, at most one program per SM in all, launched
with ``launch_cooperative_grid=True`` (the driver refuses a grid that cannot be
co-resident instead of letting it hang). Program ``(p, g)`` owns hidden units
``[p * BLOCK_H, (p + 1) * BLOCK_H)`` with *all* gates of those units, and the batch rows
of its group ``g``. Each cell update is local to one program; only the hidden state
(forward) and the gate gradients (backward) cross programs, through global memory, with
one grid barrier per step (:mod:`fastrnn.kernels.barrier`).

The cell is data: every kernel takes the compile-time arguments of
:meth:`fastrnn.cells.Cell.kernel_constexprs` (its pointwise functions ``CELL_FORWARD`` /
``CELL_BACKWARD``, ``GATES`` and the flags saying which states it carries and reads) and
calls the cell through the tile helpers of :mod:`fastrnn.kernels.cooperative_tiles`; no
kernel knows a gate equation.

Two variants of each kernel (:func:`kernels_for`), chosen per launch from the batch size
(:func:`choose_config`, never from ``T``):

- **register** (``cooperative_*_registers_kernel``, ``CoopConfig.registers``): group ``g``
  is the one tile of rows ``[g * BLOCK_B, (g + 1) * BLOCK_B)`` and ``groups = cdiv(B,
  BLOCK_B)``, so each program owns the same rows for the whole launch and keeps their
  state in ACC registers across the time loop: the cell state ``c`` (``HAS_C``) and, for a
  cell that reads ``h_prev`` (``FWD_H_PREV``), its own ``h`` in forward, ``dh`` and ``dc``
  in backward. Runs when that grid fits the SMs for one of the register row counts of
  :data:`fastrnn.kernels.fits.COOPERATIVE_REGISTERS` (16, 64); the smallest that fits.
- **tiled** (``cooperative_forward_kernel`` / ``cooperative_backward_kernel``): the
  fallback for larger batches. Group ``g`` is the ``BLOCK_B``-row tiles ``g, g + groups,
  ...`` (``groups`` > 1 only where SMs are left over, see :func:`grid`), so a program
  loops over tiles each step and its state cannot stay in registers: ``dh`` and ``dc``
  live in ``(B, H)`` fp32 buffers of which each program touches only its own tiles and
  columns (they start as ``dh_n`` / ``dc_n`` and end as ``dh0`` / ``dc0``), and the cell
  state of forward is read back from the ``c`` rows the program wrote one step before
  (the saved ``c`` sequence, or a ``(B, H)`` buffer without save).

Forward, per step ``t`` in processing order, each program, for its active rows::

    r_g = h_{t-1} @ W_hh[g*H + units]^T (+ b_hh when APART);  x_g = xg[t rows, g*H + units]
    CELL_FORWARD(x, r, h_{t-1}, c_{t-1}) -> h_t, c_t, saved     fp32 accumulation/state
    y[t rows, units] = h_t; saved gates / e / c of its units -> saved rows (save)
    grid barrier: every program's h_t is in y before anyone reads it at t + 1

Backward, per step ``q`` in reverse processing order (``s`` is the step processed after
``q`` in forward)::

    dh[units] = dhg_s @ W_hh[:, units] (+ dh_direct_s, DIRECT)  rows active at s
    dh_q = dh + dy[q rows, units]                                rows active at q
    CELL_BACKWARD -> dxg (and dhg, APART) of q, dc               its units
    grid barrier: every program's dhg_q is written before the GEMM of the next step

and one more GEMM after the loop gives ``dh0``.

Where ``W_hh`` lives (``SLAB_K``, :data:`fastrnn.kernels.fits.COOPERATIVE`; the backward's:
``CoopConfig.backward_slab_k``): ``SLAB_K > 0``: every gate's rows of the program's units
stacked into one ``[SLOTS * BLOCK_H, SLAB_K]`` operand (``SLOTS``: ``GATES`` padded to 1, 2
or 4), loaded once and kept in shared memory; each step is one dot with M = ``SLOTS *
BLOCK_H`` (64 for 3-4 gates: no warp repeats another's rows; sm_90's wgmma reads the slab
from shared memory). ``SLAB_K == 0``: streamed from L2 in ``BLOCK_K`` chunks inside each
step, one dot per gate (once per batch tile; once per step in the register variant); a
kernel whose dots are single ``16 x 16`` tiles runs one warp (:func:`kernel_config`), so
no warp repeats another's. A grid barrier that timed out ends the launch with
:class:`~fastrnn.kernels.barrier.BarrierTimeout` (budget :data:`BARRIER_TIMEOUT_US`).

Packed sequences: each step's active batch size and first row are read from the
schedule's int32 device tables (:meth:`fastrnn.schedule.Schedule.device_tables`, made once
per schedule); a padded batch passes ``packed = 0`` and the kernel computes ``B`` and
``t * B`` itself (no host-to-device copy, CUDA-graph friendly).

Optional inputs (:mod:`fastrnn.backends.base`): reset flags, uint8 per flat row, read only
when ``has_resets`` is set: a flagged row's step starts from a zero state (its GEMM rows,
``h_{t-1}`` and ``c_{t-1}`` are zeroed before the cell), and in backward the gradient
reaching that state (``dh`` after the GEMM and ``dh_direct``, ``dc_prev``) is zeroed;
a cell's per-unit parameters (``p_ptr``, ``PARAMS`` rows, loaded once per program); the
recurrent-dropout scale and zoneout (:mod:`fastrnn.kernels.cooperative_tiles`): zoneout's
part of ``dh_q`` joins ``dh_direct`` on its way to the next GEMM (the "carry").

Compile-time choices: the variant, the cell (with ``PARAMS``), ``ACC``, ``PRECISION`` (TF32
or IEEE), the block sizes and ``SLAB_K``; ``T``, ``B``, the direction, ``packed``, ``save``,
``has_resets``, the regulariser flags and probabilities and the barrier arguments are runtime
values (``do_not_specialize``). ``H`` is a runtime value too, but Triton specialises it on
divisibility by 16: with ``H % 16 == 0`` the rows of ``W_hh``, ``y`` and ``xg`` are known
16-byte aligned, so loads vectorise and the streamed ``W_hh`` chunks are software-pipelined
(measured: otherwise every bf16 load was a scalar ``ld.global.b16``, nothing pipelined). On
a GPU the tier therefore runs only ``H % 16 == 0`` (:func:`fastrnn.kernels.fits.
cooperative_refusal`), the specialisation the report compiles; Triton's interpreter runs any
``H``. :func:`specialisations` lists every combination the launcher can pick, for the compile
report: every defined cell that has Triton functions.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..cells import defined
from . import fits
from .barrier import BarrierTimeout, barrier_ptx_problems, check_sync, grid_barrier  # noqa: F401 (re-exported)
from .cells import recurrent_bias
from .cooperative_args import (  # noqa: F401 (re-exported: the launcher, the report and tests read them here)
    BACKWARD_INTS,
    BACKWARD_POINTERS,
    FORWARD_INTS,
    FORWARD_POINTERS,
    LAUNCH_OPTIONS,
    Specialisation,
    cell_of,
    configs_for,
    constexprs,
    kernel_config,
    kernel_names,
)
from .cooperative_tiles import (
    backward_cell,
    backward_gemm,
    backward_steps,
    forward_cell,
    forward_gemm,
    load_slab,
    reset_cut,
    scaled,
    state_rows,
    step_rows,
    timestep,
    unit_params,
)
from .fits import CoopConfig
from .launches import aligned_input  # noqa: F401 (used by the backend)
from .launches import checked_pointers as _pointers
from .launches import record
from .precision import ENABLE_FP_FUSION

#: Time budget of one grid barrier, microseconds. A healthy step takes microseconds; the
#: budget only bounds how long a broken launch (a program that never arrives) runs.
BARRIER_TIMEOUT_US = 1_000_000

#: Tests set this to a program id that then never arrives at any barrier (-1: none).
ABSENT_PROGRAM = -1


# --------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["T", "B", "reverse", "packed", "save", "has_resets", "timeout_us", "absent",
                               "has_scale", "zoneout_h", "zoneout_c", "save_zoned", "p_h", "p_c"])
def cooperative_forward_kernel(
    xg_ptr,  # (N, GATES*H) input projection, rows grouped by timestep
    w_hh_ptr,  # (GATES*H, H) recurrent weight
    b_hh_ptr,  # (GATES*H,) recurrent bias (APART only; zeros when the layer has none)
    h0_ptr,  # (B, H) initial hidden state
    c0_ptr,  # (B, H) ACC initial cell state (HAS_C)
    y_ptr,  # (N, H) out: h of every step (read back at the next step by every program)
    c_ptr,  # ACC out, HAS_C: (N, H) c of every step with save, else a (B, H) buffer (see the kernels)
    gates_ptr,  # (N, GATES*H) out (save, SAVES): the cell's s0..s{GATES-1}
    hn_ptr,  # (N, H) out (save, EXTRA): the cell's e
    sizes_ptr,  # (T,) int32 active rows of each step (packed only)
    offsets_ptr,  # (T,) int32 first row of each step (packed only)
    sync_ptr,  # (1 + T,) int32, zero at launch: failure flag, one counter per barrier
    resets_ptr,  # (N,) uint8: 1 where the state entering the row's step is zero (has_resets)
    p_ptr,  # (PARAMS, H) the cell's per-unit parameters (PARAMS > 0)
    scale_ptr,  # (B, H) recurrent-dropout scale of the state entering W_hh (has_scale)
    mask_h_ptr, mask_c_ptr,  # (N, H) uint8 zoneout masks of h / c (zoneout_h / zoneout_c == 1)
    cell_c_ptr,  # (N, H) ACC out: the cell's own new c before zoneout (save_zoned, zoneout_c, HAS_C)
    cell_h_ptr,  # (N, H) out: the cell's own new h before zoneout (save_zoned, zoneout_h, BWD_H)
    T,  # timesteps
    B,  # batch size (rows of h0)
    H,  # hidden size
    reverse,  # 1: process t = T-1 .. 0
    packed,  # 1: per-step rows from sizes_ptr / offsets_ptr; 0: every step has B rows
    save,  # 1: write what the backward reads (gates / e / c of every step)
    has_resets,  # 1: read resets_ptr
    timeout_us,  # time budget of each grid barrier, microseconds
    absent,  # test switch: this program never arrives at a barrier (-1: none)
    has_scale,  # 1: read scale_ptr
    zoneout_h, zoneout_c,  # zoneout of h / c: 0 none, 1 the masks (training), 2 p_h / p_c (eval)
    save_zoned,  # 1: write cell_c / cell_h (what the backward reads with zoneout)
    p_h, p_c,  # fp32 zoneout probabilities (mode 2)
    CELL_FORWARD: tl.constexpr,  # the cell (Cell.kernel_constexprs): its pointwise forward,
    CELL_BACKWARD: tl.constexpr,  # ... backward (unused here),
    GATES: tl.constexpr,  # ... gate blocks (1 to 4),
    HAS_C: tl.constexpr,  # ... carries a cell state c,
    APART: tl.constexpr,  # ... adds b_hh to the recurrent pre-activation,
    SAVES: tl.constexpr,  # ... keeps s0..s{GATES-1},
    EXTRA: tl.constexpr,  # ... keeps e,
    FWD_H_PREV: tl.constexpr,  # ... reads h_prev in forward,
    BWD_H: tl.constexpr, BWD_H_PREV: tl.constexpr, DIRECT: tl.constexpr,  # (backward flags, unused here)
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 I/O
    PRECISION: tl.constexpr,  # tl.dot input precision: "ieee" or "tf32"
    BLOCK_B: tl.constexpr,  # rows per tile
    BLOCK_H: tl.constexpr,  # hidden units per program
    BLOCK_K: tl.constexpr,  # reduction chunk when streaming W_hh (SLAB_K == 0)
    SLAB_K: tl.constexpr,  # > 0: W_hh slab loaded once, padded to SLAB_K >= H
    PARAMS: tl.constexpr = 0,  # rows of p_ptr (the cell's; 0: none)
):
    """The tiled forward: program ``(p, g)`` loops over the batch tiles ``g, g + groups, ...``
    each step; the cell state goes through ``c_ptr`` (the saved sequence, or a ``(B, H)``
    state buffer without ``save``)."""
    cols = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    w_slab = load_slab(w_hh_ptr, H, GATES, PRECISION, BLOCK_H, SLAB_K, True)
    b0, b1, b2, b3 = recurrent_bias(b_hh_ptr, cols, col_mask, H, GATES, APART, ACC, BLOCK_H)
    p0, p1, p2 = unit_params(p_ptr, cols, col_mask, H, PARAMS, ACC, BLOCK_H)
    zone = (mask_h_ptr, mask_c_ptr, cell_c_ptr, cell_h_ptr, zoneout_h, zoneout_c, p_h, p_c, save_zoned)

    prev_off = (B * 0).to(tl.int64)  # first row of the previous step
    n_prev = (B * 0).to(tl.int64)  # its active rows (0: every row starts from h0)
    ok = T >= 0
    j = 0
    while (j < T) & ok:
        off, bs = step_rows(sizes_ptr, offsets_ptr, timestep(j, T, reverse), B, packed)
        c_prev_off = prev_off * save  # c rows: the saved sequence, or the (B, H) buffer
        c_out_off = off * save
        for b0_row in range(tl.program_id(1) * BLOCK_B, bs, tl.num_programs(1) * BLOCK_B):
            rows = b0_row + tl.arange(0, BLOCK_B).to(tl.int64)
            row_mask = rows < bs
            mask = row_mask[:, None] & col_mask[None, :]
            h_rows = state_rows(y_ptr, prev_off, n_prev, h0_ptr, rows, H)
            acc0, acc1, acc2, acc3 = forward_gemm(h_rows, row_mask, w_hh_ptr, cols, col_mask, w_slab, H, scale_ptr,
                                                  rows, has_scale, GATES, ACC, PRECISION, BLOCK_B, BLOCK_H,
                                                  BLOCK_K, SLAB_K)
            c_prev = acc0  # placeholders for what the cell does not read
            h_prev = acc0
            if HAS_C:
                c_rows = state_rows(c_ptr, c_prev_off, n_prev, c0_ptr, rows, H)
                c_prev = tl.load(c_rows[:, None] + cols[None, :], mask=mask, other=0.0)
            if FWD_H_PREV:
                h_prev = tl.load(h_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            elif zoneout_h != 0:
                h_prev = tl.load(h_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            h_new, c = forward_cell(xg_ptr, y_ptr, gates_ptr, hn_ptr, resets_ptr, off, rows, row_mask, cols, mask,
                                    acc0, acc1, acc2, acc3, b0, b1, b2, b3, c_prev, h_prev, p0, p1, p2, H, save,
                                    has_resets, zone, CELL_FORWARD, GATES, APART, SAVES, EXTRA, ACC, PARAMS, HAS_C,
                                    BWD_H)
            if HAS_C:
                c_ptrs = c_ptr + (c_out_off + rows)[:, None] * H + cols[None, :]
                tl.store(c_ptrs, c.to(c_ptr.dtype.element_ty), mask=mask)

        if j + 1 < T:
            ok = grid_barrier(sync_ptr, j, absent, timeout_us)
        prev_off = off
        n_prev = bs
        j += 1


@triton.jit(do_not_specialize=["T", "B", "reverse", "packed", "save", "has_resets", "timeout_us", "absent",
                               "has_scale", "zoneout_h", "zoneout_c", "save_zoned", "p_h", "p_c"])
def cooperative_forward_registers_kernel(
    xg_ptr, w_hh_ptr, b_hh_ptr, h0_ptr, c0_ptr, y_ptr,
    c_ptr,  # ACC out, HAS_C: (N, H) c of every step with save, else (B, H): c_n, written once at the end
    gates_ptr, hn_ptr, sizes_ptr, offsets_ptr, sync_ptr, resets_ptr, p_ptr,
    scale_ptr, mask_h_ptr, mask_c_ptr, cell_c_ptr, cell_h_ptr,
    T, B, H, reverse, packed, save, has_resets, timeout_us, absent,
    has_scale, zoneout_h, zoneout_c, save_zoned, p_h, p_c,
    CELL_FORWARD: tl.constexpr, CELL_BACKWARD: tl.constexpr, GATES: tl.constexpr, HAS_C: tl.constexpr,
    APART: tl.constexpr, SAVES: tl.constexpr, EXTRA: tl.constexpr, FWD_H_PREV: tl.constexpr, BWD_H: tl.constexpr,
    BWD_H_PREV: tl.constexpr, DIRECT: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,  # rows per program: all the rows of its group (B <= groups * BLOCK_B)
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SLAB_K: tl.constexpr, PARAMS: tl.constexpr = 0,
):
    """The register forward (arguments as :func:`cooperative_forward_kernel`): program
    ``(p, g)`` owns rows ``[g * BLOCK_B, (g + 1) * BLOCK_B)`` for the whole launch, so
    the cell state (and, ``FWD_H_PREV``, its own ``h`` for the cell update) of its rows and
    units stays in ACC registers across the time loop."""
    cols = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    w_slab = load_slab(w_hh_ptr, H, GATES, PRECISION, BLOCK_H, SLAB_K, True)
    b0, b1, b2, b3 = recurrent_bias(b_hh_ptr, cols, col_mask, H, GATES, APART, ACC, BLOCK_H)
    p0, p1, p2 = unit_params(p_ptr, cols, col_mask, H, PARAMS, ACC, BLOCK_H)
    zone = (mask_h_ptr, mask_c_ptr, cell_c_ptr, cell_h_ptr, zoneout_h, zoneout_c, p_h, p_c, save_zoned)

    first = tl.program_id(1) * BLOCK_B
    rows = first + tl.arange(0, BLOCK_B).to(tl.int64)
    state_mask = (rows < B)[:, None] & col_mask[None, :]
    state_offs = rows[:, None] * H + cols[None, :]
    # This program's state (padding columns stay 0). A row keeps its value while it is not
    # active: a finished sequence its last state, a later-starting one its initial state.
    c = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    h = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    if HAS_C:
        c = tl.load(c0_ptr + state_offs, mask=state_mask, other=0.0).to(ACC)
    if FWD_H_PREV:
        h = tl.load(h0_ptr + state_offs, mask=state_mask, other=0.0).to(ACC)

    prev_off = (B * 0).to(tl.int64)  # first row of the previous step
    n_prev = (B * 0).to(tl.int64)  # its active rows (0: every row starts from h0)
    ok = T >= 0
    j = 0
    while (j < T) & ok:
        off, bs = step_rows(sizes_ptr, offsets_ptr, timestep(j, T, reverse), B, packed)
        if first < bs:  # else no row of this program is active at this step
            row_mask = rows < bs
            mask = row_mask[:, None] & col_mask[None, :]
            h_rows = state_rows(y_ptr, prev_off, n_prev, h0_ptr, rows, H)
            acc0, acc1, acc2, acc3 = forward_gemm(h_rows, row_mask, w_hh_ptr, cols, col_mask, w_slab, H, scale_ptr,
                                                  rows, has_scale, GATES, ACC, PRECISION, BLOCK_B, BLOCK_H,
                                                  BLOCK_K, SLAB_K)
            h_prev = h
            if not FWD_H_PREV:
                if zoneout_h != 0:  # zoneout reads h_{t-1} (y of the step before, or h0)
                    h_prev = tl.load(h_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            h_new, c_new = forward_cell(xg_ptr, y_ptr, gates_ptr, hn_ptr, resets_ptr, off, rows, row_mask, cols,
                                        mask, acc0, acc1, acc2, acc3, b0, b1, b2, b3, c, h_prev, p0, p1, p2, H, save,
                                        has_resets, zone, CELL_FORWARD, GATES, APART, SAVES, EXTRA, ACC, PARAMS,
                                        HAS_C, BWD_H)
            if HAS_C:
                c = tl.where(mask, c_new, c)
                if save != 0:
                    c_ptrs = c_ptr + (off + rows)[:, None] * H + cols[None, :]
                    tl.store(c_ptrs, c_new.to(c_ptr.dtype.element_ty), mask=mask)
            if FWD_H_PREV:
                h = tl.where(mask, h_new, h)

        if j + 1 < T:
            ok = grid_barrier(sync_ptr, j, absent, timeout_us)
        prev_off = off
        n_prev = bs
        j += 1
    if HAS_C:
        if save == 0:
            tl.store(c_ptr + state_offs, c.to(c_ptr.dtype.element_ty), mask=state_mask)


# --------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["T", "B", "reverse", "packed", "has_resets", "timeout_us", "absent",
                               "has_scale", "zoneout_h", "zoneout_c", "p_h", "p_c"])
def cooperative_backward_kernel(
    w_hh_ptr,  # (GATES*H, H) recurrent weight
    dxg_ptr,  # (N, GATES*H) out: gradient of the input projection
    dhg_ptr,  # (N, GATES*H) out: gradient of h @ W_hh^T + b_hh (APART; else dxg_ptr itself)
    dy_ptr,  # (N, H) gradient of the output sequence
    dh_ptr,  # (B, H) ACC: dh_n in, dh0 out; each program touches its own columns
    dc_ptr,  # (B, H) ACC: dc_n in, dc0 out (HAS_C)
    gates_ptr,  # (N, GATES*H) saved s0..s{GATES-1} (SAVES)
    c_ptr,  # (N, H) ACC saved cell states (HAS_C)
    c0_ptr,  # (B, H) ACC initial cell state (HAS_C)
    hn_ptr,  # (N, H) saved e (EXTRA)
    y_ptr,  # (N, H) output sequence (h of the step, BWD_H; previous state, BWD_H_PREV)
    h0_ptr,  # (B, H) initial hidden state (BWD_H_PREV)
    sizes_ptr,  # (T,) int32 active rows of each step (packed only)
    offsets_ptr,  # (T,) int32 first row of each step (packed only)
    sync_ptr,  # (1 + T,) int32, zero at launch: failure flag, one counter per barrier
    resets_ptr, p_ptr,  # as in cooperative_forward_kernel: no gradient leaves a reset row into the step before
    scale_ptr, mask_h_ptr, mask_c_ptr,  # as in cooperative_forward_kernel
    cell_c_ptr, cell_h_ptr,  # (N, H) the forward's cell_c / cell_h (zoneout_c and HAS_C / zoneout_h and BWD_H)
    T, B, H, reverse, packed, has_resets, timeout_us, absent,  # as in cooperative_forward_kernel
    has_scale, zoneout_h, zoneout_c, p_h, p_c,  # likewise
    CELL_FORWARD: tl.constexpr,  # the cell, as in cooperative_forward_kernel
    CELL_BACKWARD: tl.constexpr,
    GATES: tl.constexpr,
    HAS_C: tl.constexpr,
    APART: tl.constexpr,  # dr (the GEMM operand, in dhg) differs from dx
    SAVES: tl.constexpr,
    EXTRA: tl.constexpr,
    FWD_H_PREV: tl.constexpr,
    BWD_H: tl.constexpr,  # the cell backward reads h of the step
    BWD_H_PREV: tl.constexpr,  # ... reads h of the step before
    DIRECT: tl.constexpr,  # dh_direct joins the gradient of h_prev outside the GEMM
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr, SLAB_K: tl.constexpr, PARAMS: tl.constexpr = 0,
):
    """The tiled backward: program ``(p, g)`` loops over the batch tiles ``g, g + groups, ...``
    each step; ``dh`` and ``dc`` go through the ``(B, H)`` buffers ``dh_ptr`` / ``dc_ptr``."""
    cols = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    w_slab = load_slab(w_hh_ptr, H, GATES, PRECISION, BLOCK_H, SLAB_K, False)
    p0, p1, p2 = unit_params(p_ptr, cols, col_mask, H, PARAMS, ACC, BLOCK_H)
    zone = (mask_h_ptr, mask_c_ptr, cell_c_ptr, cell_h_ptr, zoneout_h, zoneout_c, p_h, p_c)

    ok = T >= 0
    j = T - 1  # processing index of step q; j == -1: only the final GEMM (dh0)
    while (j >= -1) & ok:
        q_off, q_bs, s_off, s_bs, p_off, p_bs = backward_steps(sizes_ptr, offsets_ptr, j, T, B, reverse, packed)
        for b0 in range(tl.program_id(1) * BLOCK_B, tl.maximum(q_bs, s_bs), tl.num_programs(1) * BLOCK_B):
            rows = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
            s_rows = rows < s_bs
            q_rows = rows < q_bs
            s_mask = s_rows[:, None] & col_mask[None, :]
            q_mask = q_rows[:, None] & col_mask[None, :]
            any_mask = s_mask | q_mask
            dh_ptrs = dh_ptr + rows[:, None] * H + cols[None, :]
            # dh_n (a sequence's last step), the direct path dh_direct_s, or a finished dh0.
            dh_old = tl.load(dh_ptrs, mask=any_mask, other=0.0)
            acc = backward_gemm(dhg_ptr, s_off, rows, s_rows, w_hh_ptr, cols, col_mask, w_slab, H,
                                GATES, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K, SLAB_K)
            acc = scaled(acc, scale_ptr, rows, s_rows, cols, col_mask, H, has_scale)
            if DIRECT:  # the carry of s (dh_direct and the zoneout part of dh_s)
                acc += dh_old
            elif zoneout_h != 0:
                acc += dh_old
            dh = reset_cut(tl.where(s_rows[:, None], acc, dh_old), resets_ptr, s_off, rows, s_rows, has_resets)
            dc = dh
            dc_ptrs = dc_ptr + rows[:, None] * H + cols[None, :]
            if HAS_C:
                dc = tl.load(dc_ptrs, mask=q_mask, other=0.0).to(ACC)
            dc_prev, carry = backward_cell(dh, dy_ptr, dc, q_off, p_off, p_bs, rows, q_rows, cols, q_mask, dxg_ptr,
                                           dhg_ptr, gates_ptr, c_ptr, c0_ptr, hn_ptr, y_ptr, h0_ptr, resets_ptr,
                                           p0, p1, p2, H, has_resets, zone, CELL_BACKWARD, GATES, HAS_C, APART,
                                           SAVES, EXTRA, BWD_H, BWD_H_PREV, DIRECT, ACC, PARAMS)
            if HAS_C:
                tl.store(dc_ptrs, dc_prev.to(dc_ptr.dtype.element_ty), mask=q_mask)
            dh_keep = dh
            if DIRECT:
                # Rows of q carry dh_direct_q (and zoneout's part) to the GEMM of the next iteration.
                dh_keep = tl.where(q_rows[:, None], carry, dh)
            elif zoneout_h != 0:
                dh_keep = tl.where(q_rows[:, None], carry, dh)
            tl.store(dh_ptrs, dh_keep.to(dh_ptr.dtype.element_ty), mask=any_mask)

        if j >= 0:
            ok = grid_barrier(sync_ptr, T - 1 - j, absent, timeout_us)
        j -= 1


@triton.jit(do_not_specialize=["T", "B", "reverse", "packed", "has_resets", "timeout_us", "absent",
                               "has_scale", "zoneout_h", "zoneout_c", "p_h", "p_c"])
def cooperative_backward_registers_kernel(
    w_hh_ptr, dxg_ptr, dhg_ptr, dy_ptr,
    dh_ptr,  # (B, H) ACC: dh_n in, dh0 out (read once before the loop, written once after it)
    dc_ptr,  # (B, H) ACC: dc_n in, dc0 out (HAS_C; likewise)
    gates_ptr, c_ptr, c0_ptr, hn_ptr, y_ptr, h0_ptr, sizes_ptr, offsets_ptr, sync_ptr, resets_ptr, p_ptr,
    scale_ptr, mask_h_ptr, mask_c_ptr, cell_c_ptr, cell_h_ptr,
    T, B, H, reverse, packed, has_resets, timeout_us, absent, has_scale, zoneout_h, zoneout_c, p_h, p_c,
    CELL_FORWARD: tl.constexpr, CELL_BACKWARD: tl.constexpr, GATES: tl.constexpr, HAS_C: tl.constexpr,
    APART: tl.constexpr, SAVES: tl.constexpr, EXTRA: tl.constexpr, FWD_H_PREV: tl.constexpr, BWD_H: tl.constexpr,
    BWD_H_PREV: tl.constexpr, DIRECT: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,  # rows per program: all the rows of its group (B <= groups * BLOCK_B)
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SLAB_K: tl.constexpr, PARAMS: tl.constexpr = 0,
):
    """The register backward (arguments as :func:`cooperative_backward_kernel`): program
    ``(p, g)`` owns rows ``[g * BLOCK_B, (g + 1) * BLOCK_B)`` for the whole launch, so
    ``dh`` and ``dc`` of its rows and units stay in ACC registers across the time loop."""
    cols = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    w_slab = load_slab(w_hh_ptr, H, GATES, PRECISION, BLOCK_H, SLAB_K, False)
    p0, p1, p2 = unit_params(p_ptr, cols, col_mask, H, PARAMS, ACC, BLOCK_H)
    zone = (mask_h_ptr, mask_c_ptr, cell_c_ptr, cell_h_ptr, zoneout_h, zoneout_c, p_h, p_c)

    first = tl.program_id(1) * BLOCK_B
    rows = first + tl.arange(0, BLOCK_B).to(tl.int64)
    state_mask = (rows < B)[:, None] & col_mask[None, :]
    state_offs = rows[:, None] * H + cols[None, :]
    # dh: dh_n, then (a row at a time) the gradient reaching h of the step being processed,
    # the direct path dh_direct between the cell and the next GEMM, finally dh0. Padding
    # columns stay 0.
    dh = tl.load(dh_ptr + state_offs, mask=state_mask, other=0.0).to(ACC)
    dc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    if HAS_C:
        dc = tl.load(dc_ptr + state_offs, mask=state_mask, other=0.0).to(ACC)

    ok = T >= 0
    j = T - 1  # processing index of step q; j == -1: only the final GEMM (dh0)
    while (j >= -1) & ok:
        q_off, q_bs, s_off, s_bs, p_off, p_bs = backward_steps(sizes_ptr, offsets_ptr, j, T, B, reverse, packed)
        if first < tl.maximum(q_bs, s_bs):  # else no row of this program is active at q or s
            s_rows = rows < s_bs
            q_rows = rows < q_bs
            s_mask = s_rows[:, None] & col_mask[None, :]
            q_mask = q_rows[:, None] & col_mask[None, :]
            acc = backward_gemm(dhg_ptr, s_off, rows, s_rows, w_hh_ptr, cols, col_mask, w_slab, H,
                                GATES, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K, SLAB_K)
            acc = scaled(acc, scale_ptr, rows, s_rows, cols, col_mask, H, has_scale)
            if DIRECT:  # the carry of s
                acc += dh
            elif zoneout_h != 0:
                acc += dh
            dh = reset_cut(tl.where(s_mask, acc, dh), resets_ptr, s_off, rows, s_rows, has_resets)
            dc_prev, carry = backward_cell(dh, dy_ptr, dc, q_off, p_off, p_bs, rows, q_rows, cols, q_mask, dxg_ptr,
                                           dhg_ptr, gates_ptr, c_ptr, c0_ptr, hn_ptr, y_ptr, h0_ptr, resets_ptr,
                                           p0, p1, p2, H, has_resets, zone, CELL_BACKWARD, GATES, HAS_C, APART,
                                           SAVES, EXTRA, BWD_H, BWD_H_PREV, DIRECT, ACC, PARAMS)
            if HAS_C:
                dc = tl.where(q_mask, dc_prev, dc)
            if DIRECT:
                # Rows of q carry dh_direct_q (and zoneout's part) to the GEMM of the next iteration.
                dh = tl.where(q_mask, carry, dh)
            elif zoneout_h != 0:
                dh = tl.where(q_mask, carry, dh)

        if j >= 0:
            ok = grid_barrier(sync_ptr, T - 1 - j, absent, timeout_us)
        j -= 1
    tl.store(dh_ptr + state_offs, dh.to(dh_ptr.dtype.element_ty), mask=state_mask)
    if HAS_C:
        tl.store(dc_ptr + state_offs, dc.to(dc_ptr.dtype.element_ty), mask=state_mask)


# --------------------------------------------------------------------------------------
# Launch choices (the arguments themselves: :mod:`fastrnn.kernels.cooperative_args`)
# --------------------------------------------------------------------------------------


def cooperative_configs(dtype: torch.dtype, hidden: int, tf32: bool, arch: int | None = fits.REFERENCE_ARCH,
                        shared_limit: int | None = None) -> tuple[CoopConfig, ...]:
    """The configurations for ``hidden`` units on a device of ``arch`` with ``shared_limit``
    bytes per block, the tiled one first, then its register variants
    (:func:`fastrnn.kernels.fits.cooperative_configs`)."""
    return fits.cooperative_configs(dtype, hidden, tf32, arch, shared_limit)


def choose_config(configs, hidden: int, batch: int, max_programs: int) -> CoopConfig:
    """The configuration a launch of ``batch`` rows uses (:func:`fastrnn.kernels.fits.cooperative_variant`)."""
    return fits.cooperative_variant(configs, hidden, batch, max_programs)


def kernels_for(cfg: CoopConfig) -> tuple:
    """``(forward kernel, backward kernel)`` of a configuration: the register kernels
    when ``cfg.registers``, else the tiled ones (one signature for both)."""
    if cfg.registers:
        return cooperative_forward_registers_kernel, cooperative_backward_registers_kernel
    return cooperative_forward_kernel, cooperative_backward_kernel


def specialisations(dtypes=(torch.float32, torch.float16, torch.bfloat16)) -> list[Specialisation]:
    """Every (kernel, cell, dtype, TF32, configuration) the launcher can pick: every cell
    defined so far (:func:`fastrnn.cells.defined`) that has Triton functions."""
    out = []
    for dtype in dtypes:
        for tf32 in ((False, True) if dtype == torch.float32 else (False,)):
            name = fits.dtype_name(dtype) + ("-tf32" if tf32 else "")
            for cell in defined():
                if not cell.runs_on_triton:
                    continue
                for cfg in configs_for(dtype, tf32):
                    ce = constexprs(cell, dtype, tf32, cfg)
                    options = dict(LAUNCH_OPTIONS, num_stages=cfg.num_stages, enable_fp_fusion=ENABLE_FP_FUSION)
                    (fwd, bwd), (fwd_name, bwd_name) = kernels_for(cfg), kernel_names(cfg)
                    fwd_cfg, bwd_cfg = (kernel_config(cfg, cell, dtype, tf32, f) for f in (True, False))
                    out.append(Specialisation(fwd, fwd_name, cell.name, dtype, name, fwd_cfg, ce,
                                              FORWARD_POINTERS, FORWARD_INTS, options, ("H",)))
                    ce = constexprs(cell, dtype, tf32, cfg, forward=False)
                    out.append(Specialisation(bwd, bwd_name, cell.name, dtype, name, bwd_cfg, ce,
                                              BACKWARD_POINTERS, BACKWARD_INTS, options, ("H",)))
    return out


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def grid(hidden: int, batch: int, cfg: CoopConfig, max_programs: int) -> tuple[int, int]:
    """``(hidden slices, batch groups)``: ``cdiv(hidden, BLOCK_H)`` slices (must fit
    ``max_programs``), and

    - register variant: ``cdiv(batch, BLOCK_B)`` groups, one tile of rows each (the grid
      must fit ``max_programs``: :func:`choose_config` picks it only then);
    - tiled: as many groups of batch tiles as the remaining programs allow (at most one per
      tile), so a larger batch spreads over more SMs.
    """
    slices = triton.cdiv(hidden, cfg.block_h)
    if slices > max_programs:
        raise ValueError(f"fastrnn.kernels: {slices} programs do not fit {max_programs}")
    if cfg.registers:
        groups = fits.cooperative_groups(batch, cfg)
        if slices * groups > max_programs:
            raise ValueError(f"fastrnn.kernels: {slices} x {groups} programs do not fit {max_programs} "
                             f"(a batch of {batch} needs the tiled configuration)")
        return slices, groups
    return slices, max(1, min(triton.cdiv(batch, cfg.block_b), max_programs // slices))


def launch_forward(cell, tensors: dict, ints: dict, cfg: CoopConfig, tf32: bool, max_programs: int) -> None:
    """One forward launch over all ``T`` steps; raises :class:`BarrierTimeout` on a timeout.

    ``cell``: a :class:`~fastrnn.cells.Cell` or its name. ``tensors`` maps each name of
    :data:`FORWARD_POINTERS` to a contiguous, 16-byte aligned tensor (``sync_ptr``: int32
    zeros, ``1 + T``); ``ints`` the names of :data:`FORWARD_INTS` except the barrier
    arguments, which come from this module. ``cfg``: a configuration of
    :func:`cooperative_configs` (the register kernel when ``cfg.registers``), recorded with
    the launch (:func:`fastrnn.kernels.launches.count_launches`). ``max_programs``: the SM
    count (one program per SM at most; see :func:`grid`).
    """
    _launch("forward", cell, tensors, ints, cfg, tf32, max_programs)


def launch_backward(cell, tensors: dict, ints: dict, cfg: CoopConfig, tf32: bool, max_programs: int) -> None:
    """As :func:`launch_forward`, for :data:`BACKWARD_POINTERS` / :data:`BACKWARD_INTS`."""
    _launch("backward", cell, tensors, ints, cfg, tf32, max_programs)


def _launch(direction: str, cell, tensors: dict, ints: dict, cfg: CoopConfig, tf32: bool,
            max_programs: int) -> None:
    forward = direction == "forward"
    names, int_names = (FORWARD_POINTERS, FORWARD_INTS) if forward else (BACKWARD_POINTERS, BACKWARD_INTS)
    io_dtype = tensors["xg_ptr" if forward else "dxg_ptr"].dtype
    ints = dict(ints, timeout_us=BARRIER_TIMEOUT_US, absent=ABSENT_PROGRAM)
    kernels_for(cfg)[0 if forward else 1][grid(ints["H"], ints["B"], cfg, max_programs)](
        *_pointers(names, tensors), *(ints[k] for k in int_names), **constexprs(cell, io_dtype, tf32, cfg, forward),
        num_warps=kernel_config(cfg, cell, io_dtype, tf32, forward).num_warps, num_stages=cfg.num_stages,
        enable_fp_fusion=ENABLE_FP_FUSION, **LAUNCH_OPTIONS,
    )
    record("cooperative", direction, cfg)
    check_sync(tensors["sync_ptr"], direction, BARRIER_TIMEOUT_US)
