"""Tile helpers of the step kernels (:mod:`fastrnn.kernels.recurrent_step`): loads and stores
of state, gate and per-unit parameter tiles, and the ``tl.dot`` operand rounding."""

from __future__ import annotations

import triton
import triton.language as tl

from .precision import tf32_round


@triton.jit
def aligned(n, ALIGNED: tl.constexpr):
    """``n``, known to the compiler as a multiple of 8 when ``ALIGNED`` (the launcher's
    promise): ``(n // 8) * 8`` is ``n`` then, and its divisibility makes rows of 16-bit
    elements 16-byte vector loads (``H`` / ``P`` are not specialised, so nothing else tells it)."""
    if ALIGNED:
        return (n // 8) * 8
    else:
        return n


@triton.jit
def dot_operand(x, PRECISION: tl.constexpr):
    """``x`` as a ``tl.dot`` operand: rounded to TF32 (nearest, as cuDNN) for a TF32 dot,
    which would otherwise truncate the fp32 bits; unchanged otherwise."""
    if PRECISION == "tf32":
        return tf32_round(x)
    else:
        return x


@triton.jit
def load_state(seq_ptr, seq_off, n_seq, init_ptr, rows, cols, width, mask, ACC: tl.constexpr):
    """State before a step, tile ``rows x cols`` of a ``width``-wide state.

    Row ``r < n_seq`` reads ``seq[seq_off + r]`` (the previous step's rows), other rows
    read ``init[r]`` (the initial state). Both loads are upcast to ``ACC``.
    """
    from_seq = (rows < n_seq)[:, None]
    seq = tl.load(seq_ptr + (seq_off + rows)[:, None] * width + cols[None, :], mask=mask & from_seq, other=0.0)
    init = tl.load(init_ptr + rows[:, None] * width + cols[None, :], mask=mask & (~from_seq), other=0.0)
    return tl.where(from_seq, seq.to(ACC), init.to(ACC))


@triton.jit
def load_gate(ptrs, k: tl.constexpr, H, mask, GATES: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr,
              BLOCK_H: tl.constexpr):
    """Gate block ``k`` of a ``(rows, GATES*H)`` buffer (``ptrs``: its block 0), in ``ACC``;
    a zero tile for a slot ``k >= GATES``."""
    if k < GATES:
        return tl.load(ptrs + k * H, mask=mask, other=0.0).to(ACC)
    else:
        return tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)


@triton.jit
def store_gates(ptrs, H, v0, v1, v2, v3, mask, GATES: tl.constexpr):
    """Store gate blocks ``0 .. GATES-1`` of a ``(rows, GATES*H)`` buffer (``ptrs``: block 0)."""
    ty = ptrs.dtype.element_ty
    tl.store(ptrs, v0.to(ty), mask=mask)
    if GATES > 1:
        tl.store(ptrs + H, v1.to(ty), mask=mask)
    if GATES > 2:
        tl.store(ptrs + 2 * H, v2.to(ty), mask=mask)
    if GATES > 3:
        tl.store(ptrs + 3 * H, v3.to(ty), mask=mask)


@triton.jit
def load_params(p_ptr, cols, col_mask, H, PARAMS: tl.constexpr, ACC: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rows ``0 .. PARAMS-1`` of a cell's ``(PARAMS, H)`` per-unit parameters at the hidden
    units ``cols``, as three ``(1, BLOCK_H)`` tiles in ``ACC`` (zeros for rows ``>= PARAMS``)."""
    p0 = tl.load(p_ptr + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
    p1 = tl.zeros((1, BLOCK_H), dtype=ACC)
    p2 = p1
    if PARAMS > 1:
        p1 = tl.load(p_ptr + H + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
    if PARAMS > 2:
        p2 = tl.load(p_ptr + 2 * H + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
    return p0, p1, p2


@triton.jit
def reset_rows(rst_ptr, off, rows, row_mask):
    """Which of ``rows`` (a step's rows from ``off``) start from a zero state: the step's
    reset flags (one ``uint8`` per row), False past ``row_mask``."""
    return tl.load(rst_ptr + off + rows, mask=row_mask, other=0) != 0


@triton.jit
def zone_blend(prev, new, mask_ptr, mode, p, off, rows, cols, H, mask):
    """Zoneout of a step's new state ``new`` (rows ``off + rows`` of the ``(N, H)`` uint8
    mask): mode 1 keeps ``prev`` where the mask is set, mode 2 blends ``new + p * (prev -
    new)`` (eval), mode 0 gives ``new``. Branch-free: without mode 1 no mask is loaded."""
    on = ((rows * 0 + mode) == 1)[:, None]
    kept = tl.load(mask_ptr + (off + rows)[:, None] * H + cols[None, :], mask=mask & on, other=0) != 0
    return tl.where(mode == 2, new + p * (prev - new), tl.where(kept, prev, new))


@triton.jit
def zone_split(grad, mask_ptr, mode, p, off, rows, cols, H, mask):
    """``(gradient of the cell's new value, gradient kept for the previous state)`` from the
    gradient of a zoned-out state (mode 1: the mask of rows ``off + rows``; mode 2: ``p``)."""
    on = ((rows * 0 + mode) == 1)[:, None]
    kept = tl.load(mask_ptr + (off + rows)[:, None] * H + cols[None, :], mask=mask & on, other=0) != 0
    if mode == 2:
        new, old = grad * (1 - p), grad * p
    else:
        new, old = tl.where(kept, 0.0, grad), tl.where(kept, grad, 0.0)
    return new, old


@triton.jit
def flag_rows(rows, flag):
    """The runtime scalar test ``flag != 0`` as a vector shaped like ``rows``, to combine with
    a load or store mask (a branch-free switch; Triton's interpreter takes no scalar bool there)."""
    return (rows * 0 + flag) != 0
