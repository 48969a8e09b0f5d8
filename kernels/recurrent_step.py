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

Runtime integers are never specialised (``do_not_specialize``), so no shape, step or
batch size triggers a recompile; the only compile-time choices are the cell, SAVE, the
dtype, TF32, and the block configuration picked from ``H`` (:func:`step_config`).
:func:`specialisations` lists every combination, for the ahead-of-time compile report.
Pointers are assumed 16-byte aligned (the launchers copy a misaligned tensor), which the
report compiles with.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .launches import LaunchCounter, aligned_input, count_launches, record  # noqa: F401 (re-exported)
from .launches import checked_pointers as _pointers
from .cells import recurrent_bias
from .precision import ENABLE_FP_FUSION
from .step_tiles import aligned as _aligned, dot_operand as _dot_operand, load_gate as _load_gate
from .step_tiles import load_params, load_state as _load_state, reset_rows, store_gates as _store_gates

# --------------------------------------------------------------------------------------
# Forward step
# --------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["off", "bs", "prev_off", "n_prev", "out_off", "c_prev_off", "c_out_off", "H", "P",
                               "has_resets"])
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
        h = _dot_operand(tl.where(from_seq, h_seq, h_init), PRECISION)
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
    h_prev = zero
    if FWD_H_PREV:
        h_prev = _load_state(h_seq_ptr, prev_off, n_prev, h0_ptr, rows, cols, P, mask, ACC)
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
    if HAS_C:
        c_out = c_out_ptr + (c_out_off + rows)[:, None] * H + cols[None, :]
        tl.store(c_out, c.to(c_out_ptr.dtype.element_ty), mask=mask)
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
                               "has_resets"])
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
        # dh_{s-1} = dr_s @ W_hh for the rows of step s (plus, when DIRECT, the dh_direct of
        # step s the previous launch left in those rows); rows beyond keep what the state
        # buffer holds (dh_n, or a finished dh0 row).
        dh_old = tl.load(dh_ptrs, mask=any_mask, other=0.0)
        acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        for k0 in range(0, k_len, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            k_mask = ks < k_len
            a_mask = s_rows[:, None] & k_mask[None, :]
            a = tl.load(dr_ptr + (s_off + rows)[:, None] * GH + ks[None, :], mask=a_mask, other=0.0)
            w_mask = k_mask[:, None] & col_mask[None, :]
            w = tl.load(w_hh_ptr + ks[:, None] * P + cols[None, :], mask=w_mask, other=0.0)
            acc = tl.dot(_dot_operand(a, PRECISION), _dot_operand(w, PRECISION), acc, input_precision=PRECISION)
        if DIRECT:
            acc += dh_old
        dh = tl.where(s_rows[:, None], acc, dh_old)
        if has_resets:
            # no gradient crosses a reset: a row of s that started an episode gives h_q none
            dh = tl.where(reset_rows(rst_ptr, s_off, rows, s_rows)[:, None], 0.0, dh)
        dh += tl.load(dy_ptr + (q_off + rows)[:, None] * P + cols[None, :], mask=q_mask, other=0.0).to(ACC)
        if not DIRECT:
            tl.store(dh_ptrs, dh, mask=any_mask)

    # Pointwise backward of step q, with dh the total gradient reaching h_q.
    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    h_prev = zero
    if BWD_H_PREV:
        h_prev = _load_state(h_seq_ptr, q_prev_off.to(tl.int64), q_n_prev, h0_ptr, rows, cols, P, q_mask, ACC)
    c_prev = zero
    dc = zero
    dc_ptrs = dc_ptr + rows[:, None] * H + cols[None, :]
    if HAS_C:
        c_prev = _load_state(c_seq_ptr, q_prev_off.to(tl.int64), q_n_prev, c0_ptr, rows, cols, H, q_mask, ACC)
        dc = tl.load(dc_ptrs, mask=q_mask, other=0.0).to(ACC)
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
    c = zero
    if HAS_C:
        c = tl.load(c_seq_ptr + (q_off + rows)[:, None] * H + cols[None, :], mask=q_mask, other=0.0).to(ACC)
    h = zero
    if BWD_H:
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
        if has_resets:
            dc_prev = tl.where(q_cut[:, None], 0.0, dc_prev)
        tl.store(dc_ptrs, dc_prev, mask=q_mask)
    if DIRECT:
        if not DM_GIVEN:
            # rows of q: dh_direct, which the next launch adds to its GEMM result; rows of s
            # only (a sequence that started at s): their finished dh0
            tl.store(dh_ptrs, tl.where(q_rows[:, None], dh_direct, dh), mask=any_mask)


# --------------------------------------------------------------------------------------
# Launch choices (shared with the compile report so the two cannot drift)
# --------------------------------------------------------------------------------------


class StepConfig(NamedTuple):
    """Block sizes and warps of a step kernel, picked from ``H`` only (never from B or T)."""

    block_b: int
    block_h: int
    block_k: int
    num_warps: int

    @property
    def label(self) -> str:
        return f"B{self.block_b}-H{self.block_h}-K{self.block_k}-w{self.num_warps}"


# tl.dot needs every block dimension >= 16 when compiled. Small hidden sizes get 16-wide
# tiles (less masked work), everything else 32-wide tiles with 4 warps (warpsPerCTA
# [1, 4]: a 16x8 MMA tile each): a step kernel's grid is small (B/16 x H/32 programs), so
# wider tiles would leave SMs idle. The 16-wide forward's MMA dots compile to warpsPerCTA
# [2, 1], both warps on the same 16x16 tile; one warp would end that, but the fp32 IEEE
# GRU forward with SAVE then spills (255 registers, 8-72 B), so it keeps two.
SMALL_CONFIG = StepConfig(16, 16, 16, 2)
DEFAULT_CONFIG = StepConfig(16, 32, 32, 4)
CONFIGS = (SMALL_CONFIG, DEFAULT_CONFIG)


def step_config(hidden: int) -> StepConfig:
    """The block configuration for hidden size ``hidden`` (same for every dtype)."""
    return SMALL_CONFIG if hidden <= 16 else DEFAULT_CONFIG


def _precision(dtype: torch.dtype, tf32: bool) -> str:
    # TF32 only for fp32 and only when the user allowed it (cuDNN's rule for nn.LSTM).
    return "tf32" if (dtype == torch.float32 and tf32) else "ieee"


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _cell(cell):
    """The :class:`fastrnn.cells.Cell` for ``cell`` (a definition or its name)."""
    from fastrnn.cells import Cell, get

    return cell if isinstance(cell, Cell) else get(cell)


def _saves_something(cell) -> bool:
    # what a saving forward keeps: gates, e, or every step's cell state (plain RNNs: nothing,
    # their backward reads y)
    return cell.saves_gates or cell.saves_extra or cell.has_cell_state


def _has_projection(cell) -> bool:
    # proj_size (the host computes dm = dh @ W_hr and the kernel reads it) exists for LSTM only
    return cell.has_cell_state and cell.name == "LSTM"


def sizes_aligned(*sizes: int) -> bool:
    """Whether a launch runs the ``H_ALIGNED`` specialisation: every one of ``sizes`` (``H``
    and ``P``) a multiple of 8, so rows of 16-bit elements are 16-byte vector loads."""
    return all(n % 8 == 0 for n in sizes)


def _cell_constexprs(cell) -> dict:
    # PARAMS always present (0: none), so the report's compile names every argument
    return {"PARAMS": 0, **cell.kernel_constexprs()}


#: Compile options of every step launch (and of the report's compiles).
OPTIONS = dict(enable_fp_fusion=ENABLE_FP_FUSION)


def forward_constexprs(cell, save: bool, dtype: torch.dtype, tf32: bool, cfg: StepConfig,
                       aligned: bool = False) -> dict:
    """Compile-time arguments of the forward kernel for ``cell`` (a Cell or its name);
    SAVE only for a cell that keeps something."""
    cell = _cell(cell)
    return dict(
        **_cell_constexprs(cell), SAVE=bool(save) and _saves_something(cell), ACC=_acc(dtype),
        PRECISION=_precision(dtype, tf32), BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k,
        H_ALIGNED=bool(aligned),
    )


def backward_constexprs(cell, dm_given: bool, dtype: torch.dtype, tf32: bool, cfg: StepConfig,
                        aligned: bool = False) -> dict:
    """Compile-time arguments of the backward kernel for ``cell`` (DM_GIVEN only for LSTM)."""
    cell = _cell(cell)
    return dict(
        **_cell_constexprs(cell), DM_GIVEN=bool(dm_given) and _has_projection(cell), ACC=_acc(dtype),
        PRECISION=_precision(dtype, tf32), BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k,
        H_ALIGNED=bool(aligned),
    )


# Pointer arguments in order, with the dtype each holds: "io" (the layer's dtype), "acc"
# (fp32; fp64 for fp64 I/O) or "u8" (reset flags). The launchers pass tensors of exactly these dtypes.
FORWARD_POINTERS = (
    ("xg_ptr", "io"), ("w_hh_ptr", "io"), ("b_hh_ptr", "io"), ("h_seq_ptr", "io"), ("h0_ptr", "io"),
    ("out_ptr", "io"), ("c_prev_ptr", "acc"), ("c_init_ptr", "io"), ("c_out_ptr", "acc"),
    ("gates_ptr", "io"), ("extra_ptr", "io"), ("p_ptr", "io"), ("rst_ptr", "u8"),
)
FORWARD_INTS = ("off", "bs", "prev_off", "n_prev", "out_off", "c_prev_off", "c_out_off", "H", "P", "has_resets")
BACKWARD_POINTERS = (
    ("dr_ptr", "io"), ("w_hh_ptr", "io"), ("dxg_ptr", "io"), ("dhg_ptr", "io"), ("dy_ptr", "io"),
    ("dh_ptr", "acc"), ("dc_ptr", "acc"), ("dm_ptr", "acc"), ("gates_ptr", "io"), ("c_seq_ptr", "acc"),
    ("c0_ptr", "io"), ("extra_ptr", "io"), ("h_seq_ptr", "io"), ("h0_ptr", "io"), ("p_ptr", "io"), ("rst_ptr", "u8"),
)
BACKWARD_INTS = ("s_off", "s_bs", "k_len", "q_off", "q_bs", "q_prev_off", "q_n_prev", "H", "P", "has_resets")


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


def specialisations(dtypes=(torch.float32, torch.float16, torch.bfloat16)) -> list[Specialisation]:
    """Every (kernel, cell, dtype, TF32, SAVE / DM_GIVEN, config) the launchers can pick:
    every cell defined so far that has Triton functions (a user's cell included)."""
    from fastrnn import cells

    out = []
    for dtype in dtypes:
        for tf32 in ((False, True) if dtype == torch.float32 else (False,)):
            for cell in (c for c in cells.defined() if c.runs_on_triton):
                for cfg, aligned in ((cfg, aligned) for cfg in CONFIGS for aligned in (False, True)):
                    name = str(dtype).replace("torch.", "") + ("-tf32" if tf32 else "") + ("-a8" if aligned else "")
                    for save in ((False, True) if _saves_something(cell) else (False,)):
                        out.append(Specialisation(
                            recurrent_step_forward_kernel, "forward", cell.name, dtype,
                            name + ("-save" if save else ""), cfg,
                            forward_constexprs(cell, save, dtype, tf32, cfg, aligned), FORWARD_POINTERS, FORWARD_INTS,
                        ))
                    for dm_given in ((False, True) if _has_projection(cell) else (False,)):
                        out.append(Specialisation(
                            recurrent_step_backward_kernel, "backward", cell.name, dtype,
                            name + ("-dm" if dm_given else ""), cfg,
                            backward_constexprs(cell, dm_given, dtype, tf32, cfg, aligned), BACKWARD_POINTERS,
                            BACKWARD_INTS,
                        ))
    return out


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def forward_stepper(cell, tensors: dict, *, hidden: int, save: bool, tf32: bool):
    """Prepare the forward steps of one time loop of ``cell`` (a :class:`fastrnn.cells.Cell`
    or its name); returns ``launch(ints)``, one step each.

    ``tensors`` maps each name of :data:`FORWARD_POINTERS` to a contiguous, 16-byte
    aligned tensor (unused ones: any tensor of the right dtype); they are checked and the
    block configuration and compile-time arguments are picked once here, not per step.
    ``ints`` maps each name of :data:`FORWARD_INTS` to a Python int.
    """
    cfg = step_config(hidden)
    pointers = _pointers(FORWARD_POINTERS, tensors)
    constexprs = {aligned: forward_constexprs(cell, save, tensors["xg_ptr"].dtype, tf32, cfg, aligned)
                  for aligned in (False, True)}
    blocks_h = triton.cdiv(hidden, cfg.block_h)

    def launch(ints: dict) -> None:
        grid = (triton.cdiv(ints["bs"], cfg.block_b), blocks_h)
        recurrent_step_forward_kernel[grid](
            *pointers, *(ints[k] for k in FORWARD_INTS), **constexprs[sizes_aligned(ints["H"], ints["P"])],
            num_warps=cfg.num_warps, **OPTIONS,
        )
        record("step", "forward")

    return launch


def backward_stepper(cell, tensors: dict, *, hidden: int, dm_given: bool, tf32: bool):
    """As :func:`forward_stepper` for the backward steps (names of
    :data:`BACKWARD_POINTERS` / :data:`BACKWARD_INTS`); a launch's grid covers
    ``max(s_bs, q_bs)`` rows."""
    cfg = step_config(hidden)
    pointers = _pointers(BACKWARD_POINTERS, tensors)
    constexprs = {aligned: backward_constexprs(cell, dm_given, tensors["dxg_ptr"].dtype, tf32, cfg, aligned)
                  for aligned in (False, True)}
    blocks_h = triton.cdiv(hidden, cfg.block_h)

    def launch(ints: dict) -> None:
        grid = (triton.cdiv(max(ints["s_bs"], ints["q_bs"]), cfg.block_b), blocks_h)
        recurrent_step_backward_kernel[grid](
            *pointers, *(ints[k] for k in BACKWARD_INTS), **constexprs[sizes_aligned(ints["H"], ints["P"])],
            num_warps=cfg.num_warps, **OPTIONS,
        )
        record("step", "backward")

    return launch
