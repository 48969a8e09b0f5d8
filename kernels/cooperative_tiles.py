"""Tile helpers of the cooperative kernels (:mod:`fastrnn.kernels.cooperative`).

The tiled and the register variants of each kernel call the same helpers, so they differ
only in where the state lives: the schedule of a step (:func:`step_rows`,
:func:`backward_steps`), where a row's previous state is (:func:`state_rows`), the GEMMs
against ``W_hh`` (:func:`load_slab`, :func:`forward_gemm`, :func:`backward_gemm`) and
one tile's cell update (:func:`forward_cell`, :func:`backward_cell`), which calls the
cell's pointwise functions (``CELL_FORWARD`` / ``CELL_BACKWARD``, see
:mod:`fastrnn.cells.base`) and reads and writes the saved layout the cell's flags name.
Up to four gate slots: slot ``k`` exists when ``k < GATES``; the others carry zero tiles
(or, as arguments a cell does not read, any tile of the right shape).

Optional inputs of a call: reset flags (``resets_ptr``, uint8, one per flat row, read only
when the runtime flag ``has_resets`` is set: the state entering a flagged row's step is
zero, and no gradient leaves that row into the step before) and a cell's per-unit
parameters (``PARAMS`` rows, :func:`unit_params`, passed as three trailing tiles to the
cell's functions when ``PARAMS > 0``). Regularisers (:mod:`fastrnn.regularisers`), each
under its runtime flag: the recurrent-dropout scale ``(B, H)`` multiplies the state where it
enters ``W_hh`` (:func:`forward_gemm`) and the GEMM's gradient (:func:`scaled`); zoneout
blends the cell's new state with the one the step started from (:func:`zoneout_blend`,
mode 1: a uint8 mask per flat row, 2: the eval probability) and splits the gradient of the
blended state between the two (:func:`zoneout_split`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .precision import tf32_round


@triton.jit
def step_rows(sizes_ptr, offsets_ptr, t, B, packed):
    """``(first row, active rows)`` of timestep ``t``, both int64.

    Packed: read from the schedule's int32 tables; padded (``packed == 0``): ``t * B``
    and ``B``, with no memory access.
    """
    is_packed = packed != 0
    bs = tl.load(sizes_ptr + t, mask=is_packed, other=B).to(tl.int64)
    off = tl.load(offsets_ptr + t, mask=is_packed, other=0).to(tl.int64)
    return tl.where(is_packed, off, t.to(tl.int64) * B), bs


@triton.jit
def timestep(j, T, reverse):
    """Timestep processed ``j``-th: ``j``, or ``T - 1 - j`` for the reverse direction."""
    return j + reverse * (T - 1 - 2 * j)


@triton.jit
def unit_params(p_ptr, cols, col_mask, H, PARAMS: tl.constexpr, ACC: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rows ``0 .. PARAMS-1`` of the cell's per-unit parameters ``(PARAMS, H)`` for the units
    ``cols``, as three ``(1, BLOCK_H)`` ACC rows (zeros for the rows past ``PARAMS``)."""
    p0 = tl.zeros((1, BLOCK_H), dtype=ACC)
    p1 = p0
    p2 = p0
    if PARAMS > 0:
        p0 = tl.load(p_ptr + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
    if PARAMS > 1:
        p1 = tl.load(p_ptr + H + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
    if PARAMS > 2:
        p2 = tl.load(p_ptr + 2 * H + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
    return p0, p1, p2


@triton.jit
def reset_cut(x, resets_ptr, off, rows, row_mask, has_resets):
    """``x`` (one tile of the step whose first row is ``off``) with the rows whose flag is set
    replaced by zero; ``x`` itself without reset flags (``has_resets == 0``)."""
    if has_resets != 0:
        flags = tl.load(resets_ptr + off + rows, mask=row_mask, other=0)
        x = tl.where((flags != 0)[:, None], 0.0, x)
    return x


@triton.jit
def zoneout_blend(mask_ptr, mode, p, prev, new, offs, mask):
    """The zoned-out state of one tile: ``new`` (mode 0), ``prev`` where the uint8 mask at
    ``offs`` is set (mode 1), or ``new + p * (prev - new)`` (mode 2, eval)."""
    out = new
    if mode == 1:
        keep = tl.load(mask_ptr + offs, mask=mask, other=0) != 0
        out = tl.where(keep, prev, new)
    elif mode == 2:
        out = new + p * (prev - new)
    return out


@triton.jit
def zoneout_split(mask_ptr, mode, p, grad, offs, mask):
    """``(gradient of the cell's new value, gradient of the previous state)`` from ``grad``,
    the gradient of the zoned-out state (modes as :func:`zoneout_blend`; mode 0: ``grad``
    and a placeholder)."""
    new = grad
    prev = grad
    if mode == 1:
        keep = tl.load(mask_ptr + offs, mask=mask, other=0) != 0
        new = tl.where(keep, 0.0, grad)
        prev = tl.where(keep, grad, 0.0)
    elif mode == 2:
        new = grad * (1.0 - p)
        prev = grad * p
    return new, prev


@triton.jit
def scaled(acc, scale_ptr, rows, row_mask, cols, col_mask, H, has_scale):
    """``acc`` (rows ``rows`` of the batch, units ``cols``) times the recurrent-dropout scale
    (``has_scale``), else ``acc``: the gradient of ``h @ W_hh^T`` reaching the unscaled state."""
    if has_scale != 0:
        scale = tl.load(scale_ptr + rows[:, None] * H + cols[None, :],
                        mask=row_mask[:, None] & col_mask[None, :], other=0.0)
        acc = acc * scale.to(acc.dtype)
    return acc


@triton.jit
def state_rows(seq_ptr, seq_off, n_seq, init_ptr, rows, width):
    """Pointer to the start of each row's state before a step (``seq`` and ``init`` have
    one dtype).

    Row ``r < n_seq`` continues from ``seq[seq_off + r]`` (the previous step's rows); other
    rows start from ``init[r]`` (the first step, or a sequence that starts later in the
    reverse direction of a packed batch). One pointer per row, so a tile is one load.
    """
    # The choice of base pointer hides their alignment from the compiler; both are 16-byte
    # aligned and ``width`` (H) is a multiple of 16 wherever this is compiled, so the hint is
    # true and restores vector loads.
    ptrs = tl.where(rows < n_seq, seq_ptr + (seq_off + rows) * width, init_ptr + rows * width)
    return tl.multiple_of(ptrs, 16)


@triton.jit
def backward_steps(sizes_ptr, offsets_ptr, j, T, B, reverse, packed):
    """``(q_off, q_bs, s_off, s_bs, p_off, p_bs)`` of backward iteration ``j``: ``q`` the
    step whose gate backward runs (processing index ``j``; none when ``j == -1``), ``s``
    the step processed after it in forward (its gate gradients feed the GEMM), ``p`` the
    one processed before it. Processing indices are clamped into ``[0, T)`` before
    reading the schedule; a step that does not exist gets 0 rows."""
    zero = (B * 0).to(tl.int64)
    q_off, q_bs = step_rows(sizes_ptr, offsets_ptr, timestep(tl.maximum(j, 0), T, reverse), B, packed)
    s_off, s_bs = step_rows(sizes_ptr, offsets_ptr, timestep(tl.minimum(j + 1, T - 1), T, reverse), B, packed)
    p_off, p_bs = step_rows(sizes_ptr, offsets_ptr, timestep(tl.maximum(j - 1, 0), T, reverse), B, packed)
    q_bs = tl.where(j >= 0, q_bs, zero)
    s_bs = tl.where(j + 1 < T, s_bs, zero)
    p_bs = tl.where(j >= 1, p_bs, zero)
    return q_off, q_bs, s_off, s_bs, p_off, p_bs


@triton.jit
def tf32_operand(x, PRECISION: tl.constexpr):
    """``x`` rounded to TF32 when the dot it feeds runs in TF32 (as cuDNN does), else ``x``."""
    if PRECISION == "tf32":
        return tf32_round(x)
    else:
        return x


#: Parts of ``k`` a 1-gate cell's forward slab dot is split into (:func:`split_k`), one per
#: warp of the slab entries' 8.
SPLIT_K: tl.constexpr = tl.constexpr(8)


@triton.constexpr_function
def split_k(gates, precision, dtype, slab_k) -> bool:
    """Whether the forward's slab dot runs as a batched dot over :data:`SPLIT_K` parts of ``k``
    (then summed): for a 1-gate cell with MMA dots (``dtype``: ``W_hh``'s element type), whose
    single ``[16, SLAB_K] x [SLAB_K, 16]`` product would put every warp on the same ``16 x 16``
    tile (one warp alone spills its ``[SLAB_K, 16]`` operand). fp32 IEEE dots are FMA loops
    over every thread already. Compiled slabs are 128 columns or more (16 per part)."""
    return gates == 1 and (precision == "tf32" or dtype != tl.float32) and slab_k >= SPLIT_K


@triton.jit
def load_slab(w_hh_ptr, H, GATES: tl.constexpr, PRECISION: tl.constexpr, BLOCK_H: tl.constexpr,
              SLAB_K: tl.constexpr, FORWARD: tl.constexpr):
    """This program's ``W_hh`` slab, loaded once before the time loop, with every gate stacked
    into one dot operand (zero in padding rows, columns and gate slots):

    ``[SLOTS * BLOCK_H, SLAB_K]``, row ``g * BLOCK_H + u``, column ``k``:

    - ``FORWARD``: ``W_hh[g*H + unit u, k]`` (the GEMM ``W_hh[g*H + units] @ h^T``);
    - backward: ``W_hh[g*H + k, unit u]`` (the GEMM ``W_hh[g*H : g*H + H, units]^T @ dgates_g^T``).

    One dot operand with M = ``SLOTS * BLOCK_H`` (64 for 3-4 gates), which sm_90's wgmma
    reads from shared memory. A 1-gate forward's MMA slab (:func:`split_k`) is
    ``[SPLIT_K, BLOCK_H, SLAB_K // SPLIT_K]`` instead, element ``[s, u, j]`` at column
    ``s * SLAB_K // SPLIT_K + j``: a batched dot, one part of ``k`` per warp.

    ``SLOTS``: ``GATES`` padded to a power of two. TF32 dots get the slab rounded once. ``SLAB_K == 0`` (W_hh
    streamed): a ``(1, 1)`` placeholder, never read.
    """
    SLOTS: tl.constexpr = GATES + (GATES == 3)  # gate slots: GATES padded to 1, 2 or 4
    w = tl.zeros((1, 1), dtype=w_hh_ptr.dtype.element_ty)
    if SLAB_K > 0:
        # slab element -> W_hh[w_row, w_col], kept where ``keep`` and the column ``kk < H``
        if FORWARD and split_k(GATES, PRECISION, w_hh_ptr.dtype.element_ty, SLAB_K):
            unit = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)[None, :, None]
            PART: tl.constexpr = SLAB_K // SPLIT_K
            kk = tl.arange(0, SPLIT_K)[:, None, None] * PART + tl.arange(0, PART)[None, None, :]
            w_row, w_col, keep = unit, kk, unit < H
        else:
            r = tl.arange(0, SLOTS * BLOCK_H)[:, None]
            gate = r // BLOCK_H
            unit = tl.program_id(0) * BLOCK_H + r % BLOCK_H
            kk = tl.arange(0, SLAB_K)[None, :]
            keep = (gate < GATES) & (unit < H)
            if FORWARD:
                w_row, w_col = gate * H + unit, kk
            else:
                w_row, w_col = gate * H + kk, unit  # W_hh row g*H + k of slab row (g, u), column k
        w = tl.load(w_hh_ptr + w_row.to(tl.int64) * H + w_col, mask=keep & (kk < H), other=0.0)
        w = tf32_operand(w, PRECISION)
    return w


@triton.jit
def split_gates(acc, GATES: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """The ``[SLOTS * BLOCK_H, BLOCK_B]`` result of a stacked dot as four ``[BLOCK_B, BLOCK_H]``
    gate tiles (slot ``g`` from rows ``g * BLOCK_H ...``; zero tiles past the slots)."""
    SLOTS: tl.constexpr = GATES + (GATES == 3)  # gate slots: GATES padded to 1, 2 or 4
    a = tl.trans(acc)  # [BLOCK_B, SLOTS * BLOCK_H]
    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc.dtype)
    if SLOTS == 1:
        return a, zero, zero, zero
    elif SLOTS == 2:
        a = tl.permute(tl.reshape(a, (BLOCK_B, 2, BLOCK_H)), (0, 2, 1))
        g0, g1 = tl.split(a)
        return g0, g1, zero, zero
    else:
        # Slot g = 2 * i + j of [B, u, i, j]: split j, then i.
        a = tl.permute(tl.reshape(a, (BLOCK_B, 2, 2, BLOCK_H)), (0, 3, 1, 2))
        even, odd = tl.split(a)
        g0, g2 = tl.split(even)
        g1, g3 = tl.split(odd)
        return g0, g1, g2, g3


@triton.jit
def forward_gemm(h_rows, row_mask, w_hh_ptr, cols, col_mask, w_slab, H, scale_ptr, rows, has_scale,
                 GATES: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                 BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SLAB_K: tl.constexpr):
    """``h_{t-1} @ W_hh[g*H + units]^T`` for each gate ``g``: four ``BLOCK_B x BLOCK_H`` ACC
    tiles (zero past ``GATES``). ``h_rows``: a pointer to each row's ``h_{t-1}``
    (:func:`state_rows`); ``w_slab``: the stacked slab (``SLAB_K > 0``, :func:`load_slab`),
    one dot ``w_slab @ h^T``; else ``W_hh`` streamed here. ``has_scale``: ``h_{t-1}`` of
    batch row ``r`` enters as ``h_{t-1} * scale[r]`` (``scale_ptr``, ``(B, H)``, I/O dtype)."""
    acc0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    acc1 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    acc2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    acc3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    if SLAB_K > 0:
        SPLIT: tl.constexpr = split_k(GATES, PRECISION, w_hh_ptr.dtype.element_ty, SLAB_K)
        if SPLIT:  # [SPLIT_K, SLAB_K // SPLIT_K, 1]: part s of h^T beside part s of the slab
            PART: tl.constexpr = SLAB_K // SPLIT_K
            kk = tl.arange(0, SPLIT_K)[:, None, None] * PART + tl.arange(0, PART)[None, :, None]
        else:
            kk = tl.arange(0, SLAB_K)[:, None]
        h_mask = (kk < H) & row_mask  # h^T: k along the leading axes, batch rows along the last
        h_t = tl.load(h_rows + kk, mask=h_mask, other=0.0)
        if has_scale != 0:
            h_t = h_t * tl.load(scale_ptr + rows * H + kk, mask=h_mask, other=0.0)
        acc = tl.dot(w_slab, tf32_operand(h_t, PRECISION), input_precision=PRECISION, out_dtype=ACC)
        if SPLIT:
            acc = tl.sum(acc, axis=0)
        acc0, acc1, acc2, acc3 = split_gates(acc, GATES, BLOCK_B, BLOCK_H)
    else:
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_in = ks < H
            h_mask = row_mask[:, None] & k_in[None, :]
            h = tl.load(h_rows[:, None] + ks[None, :], mask=h_mask, other=0.0)
            if has_scale != 0:
                h = h * tl.load(scale_ptr + rows[:, None] * H + ks[None, :], mask=h_mask, other=0.0)
            h = tf32_operand(h, PRECISION)
            # W_hh^T chunk of gate g: [k, u] = W_hh[g*H + u, k].
            w_ptrs = w_hh_ptr + cols[None, :] * H + ks[:, None]
            w_mask = k_in[:, None] & col_mask[None, :]
            w = tf32_operand(tl.load(w_ptrs, mask=w_mask, other=0.0), PRECISION)
            acc0 = tl.dot(h, w, acc0, input_precision=PRECISION)
            if GATES > 1:
                w = tf32_operand(tl.load(w_ptrs + H * H, mask=w_mask, other=0.0), PRECISION)
                acc1 = tl.dot(h, w, acc1, input_precision=PRECISION)
            if GATES > 2:
                w = tf32_operand(tl.load(w_ptrs + 2 * H * H, mask=w_mask, other=0.0), PRECISION)
                acc2 = tl.dot(h, w, acc2, input_precision=PRECISION)
            if GATES > 3:
                w = tf32_operand(tl.load(w_ptrs + 3 * H * H, mask=w_mask, other=0.0), PRECISION)
                acc3 = tl.dot(h, w, acc3, input_precision=PRECISION)
    return acc0, acc1, acc2, acc3


@triton.jit
def forward_cell(xg_ptr, y_ptr, gates_ptr, hn_ptr, resets_ptr, off, rows, row_mask, cols, mask, acc0, acc1, acc2,
                 acc3, b0, b1, b2, b3, c_prev, h_prev, p0, p1, p2, H, save, has_resets, zone,
                 CELL_FORWARD: tl.constexpr, GATES: tl.constexpr, APART: tl.constexpr, SAVES: tl.constexpr,
                 EXTRA: tl.constexpr, ACC: tl.constexpr, PARAMS: tl.constexpr, HAS_C: tl.constexpr,
                 BWD_H: tl.constexpr):
    """The cell update of one tile from its recurrent GEMM ``acc0..acc3``: writes ``y``
    (and, with ``save``, what the cell keeps for the backward: ``s0..s{GATES-1}`` to the
    gates buffer when ``SAVES``, ``e`` to ``hn`` when ``EXTRA``) of the rows of ``mask``;
    returns ``(h_t, c_t)``. ``b0..b3``: ``b_hh`` of each gate (added when ``APART``);
    ``c_prev`` / ``h_prev``: this tile's state before the step in ACC (read by the cell
    only when it has a cell state / reads ``h_prev``); ``p0..p2``: the per-unit parameter
    rows (:func:`unit_params`, passed to the cell when ``PARAMS > 0``). A row flagged in
    ``resets_ptr`` (``has_resets``) starts from a zero state: its GEMM rows (``h_prev``
    times ``W_hh``), ``h_prev`` and ``c_prev`` are zeroed before the cell runs.

    ``zone``: the zoneout arguments ``(mask_h_ptr, mask_c_ptr, cell_c_ptr, cell_h_ptr,
    zoneout_h, zoneout_c, p_h, p_c, save_zoned)`` (modes: :func:`zoneout_blend`; ``h_prev``
    is read whenever ``zoneout_h`` is set): ``y`` and the returned state are the zoned-out
    ones, and with ``save_zoned`` the cell's own new ``c`` (``HAS_C``, ``zoneout_c``) and
    ``h`` (``BWD_H``, ``zoneout_h``) are kept for the backward."""
    GH = GATES * H
    if has_resets != 0:
        cut = (tl.load(resets_ptr + off + rows, mask=row_mask, other=0) != 0)[:, None]
        acc0 = tl.where(cut, 0.0, acc0)
        if GATES > 1:
            acc1 = tl.where(cut, 0.0, acc1)
        if GATES > 2:
            acc2 = tl.where(cut, 0.0, acc2)
        if GATES > 3:
            acc3 = tl.where(cut, 0.0, acc3)
        c_prev = tl.where(cut, 0.0, c_prev)
        h_prev = tl.where(cut, 0.0, h_prev)
    row_offs = (off + rows)[:, None]
    x_ptrs = xg_ptr + row_offs * GH + cols[None, :]
    # Slots past GATES take the GEMM's zero tiles.
    x0 = tl.load(x_ptrs, mask=mask, other=0.0).to(ACC)
    x1 = acc1
    x2 = acc2
    x3 = acc3
    if GATES > 1:
        x1 = tl.load(x_ptrs + H, mask=mask, other=0.0).to(ACC)
    if GATES > 2:
        x2 = tl.load(x_ptrs + 2 * H, mask=mask, other=0.0).to(ACC)
    if GATES > 3:
        x3 = tl.load(x_ptrs + 3 * H, mask=mask, other=0.0).to(ACC)
    r0 = acc0
    r1 = acc1
    r2 = acc2
    r3 = acc3
    if APART:
        r0 = acc0 + b0
        r1 = acc1 + b1
        r2 = acc2 + b2
        r3 = acc3 + b3
    if PARAMS > 0:
        h, c, s0, s1, s2, s3, e = CELL_FORWARD(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev, p0, p1, p2)
    else:
        h, c, s0, s1, s2, s3, e = CELL_FORWARD(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev)
    if SAVES:
        if save != 0:
            ty = gates_ptr.dtype.element_ty
            g_ptrs = gates_ptr + row_offs * GH + cols[None, :]
            tl.store(g_ptrs, s0.to(ty), mask=mask)
            if GATES > 1:
                tl.store(g_ptrs + H, s1.to(ty), mask=mask)
            if GATES > 2:
                tl.store(g_ptrs + 2 * H, s2.to(ty), mask=mask)
            if GATES > 3:
                tl.store(g_ptrs + 3 * H, s3.to(ty), mask=mask)
    if EXTRA:
        if save != 0:
            tl.store(hn_ptr + row_offs * H + cols[None, :], e.to(hn_ptr.dtype.element_ty), mask=mask)
    mask_h_ptr, mask_c_ptr, cell_c_ptr, cell_h_ptr, zoneout_h, zoneout_c, p_h, p_c, save_zoned = zone
    state_offs = row_offs * H + cols[None, :]
    if HAS_C:
        if zoneout_c != 0:
            if save_zoned != 0:
                tl.store(cell_c_ptr + state_offs, c.to(cell_c_ptr.dtype.element_ty), mask=mask)
            c = zoneout_blend(mask_c_ptr, zoneout_c, p_c, c_prev, c, state_offs, mask)
    if zoneout_h != 0:
        if BWD_H:
            if save_zoned != 0:
                tl.store(cell_h_ptr + state_offs, h.to(cell_h_ptr.dtype.element_ty), mask=mask)
        h = zoneout_blend(mask_h_ptr, zoneout_h, p_h, h_prev, h, state_offs, mask)
    tl.store(y_ptr + state_offs, h.to(y_ptr.dtype.element_ty), mask=mask)
    return h, c


@triton.jit
def backward_gemm(dhg_ptr, s_off, rows, s_rows, w_hh_ptr, cols, col_mask, w_slab, H,
                  GATES: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SLAB_K: tl.constexpr):
    """``dhg_s @ W_hh[:, units]`` for the rows active at step ``s`` (first row ``s_off``;
    zero for the others): one ``BLOCK_B x BLOCK_H`` ACC tile. ``w_slab``: the stacked slab
    (``SLAB_K > 0``, :func:`load_slab`), one dot for every gate; else ``W_hh`` streamed
    here."""
    GH = GATES * H
    acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    dg_rows = dhg_ptr + (s_off + rows) * GH
    if SLAB_K > 0:
        # One dot for every gate: the operand holds gate g's dgates in columns g*B ..
        # (g+1)*B - 1, so block (g, g') of the result is slab gate g times dgates of gate g';
        # only the diagonal blocks are kept (the rest is MMA work an idle tensor core does
        # instead of a dot with M = BLOCK_H = 16 per gate).
        SLOTS: tl.constexpr = GATES + (GATES == 3)  # gate slots: GATES padded to 1, 2 or 4
        kk = tl.arange(0, SLAB_K)
        slot = tl.arange(0, SLOTS)
        a_ptrs = dg_rows[None, None, :] + (slot * H)[None, :, None] + kk[:, None, None]
        a_mask = (kk < H)[:, None, None] & (slot < GATES)[None, :, None] & s_rows[None, None, :]
        a_t = tl.reshape(tl.load(a_ptrs, mask=a_mask, other=0.0), (SLAB_K, SLOTS * BLOCK_B))
        a_t = tf32_operand(a_t, PRECISION)
        r = tl.dot(w_slab, a_t, input_precision=PRECISION, out_dtype=ACC)  # [SLOTS*BLOCK_H, SLOTS*BLOCK_B]
        if SLOTS == 1:
            acc = tl.trans(r)
        else:
            r = tl.reshape(r, (SLOTS, BLOCK_H, SLOTS, BLOCK_B))
            diagonal = (slot[:, None, None, None] == slot[None, None, :, None])
            acc = tl.trans(tl.sum(tl.sum(tl.where(diagonal, r, 0.0), axis=2), axis=0))
    else:
        dg_ptrs = dg_rows[:, None]
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_in = ks < H
            a_mask = s_rows[:, None] & k_in[None, :]
            # W_hh chunk of gate g: [k, u] = W_hh[g*H + k, u].
            w_ptrs = w_hh_ptr + ks[:, None] * H + cols[None, :]
            w_mask = k_in[:, None] & col_mask[None, :]
            for gate in tl.static_range(GATES):
                a = tf32_operand(tl.load(dg_ptrs + gate * H + ks[None, :], mask=a_mask, other=0.0), PRECISION)
                w = tf32_operand(tl.load(w_ptrs + gate * H * H, mask=w_mask, other=0.0), PRECISION)
                acc = tl.dot(a, w, acc, input_precision=PRECISION)
    return acc


@triton.jit
def backward_cell(dh, dy_ptr, dc, q_off, p_off, p_bs, rows, q_rows_mask, cols, q_mask, dxg_ptr, dhg_ptr, gates_ptr,
                  c_ptr, c0_ptr, hn_ptr, y_ptr, h0_ptr, resets_ptr, p0, p1, p2, H, has_resets, zone,
                  CELL_BACKWARD: tl.constexpr, GATES: tl.constexpr, HAS_C: tl.constexpr, APART: tl.constexpr,
                  SAVES: tl.constexpr, EXTRA: tl.constexpr, BWD_H: tl.constexpr, BWD_H_PREV: tl.constexpr,
                  DIRECT: tl.constexpr, ACC: tl.constexpr, PARAMS: tl.constexpr):
    """Cell backward of step ``q`` for one tile, from ``dh_q = dh + dy_q`` (the total gradient
    reaching ``h_q``; ``dy`` read here, and read again for zoneout's part after the cell, so
    no extra tile lives across the cell) and ``dc`` (reaching ``c_q``, when ``HAS_C``): reads what the cell's flags say
    it needs (saved gates, ``e``, ``c_q`` and ``c_{q-1}``, ``h_q``, ``h_{q-1}``), writes
    ``dx_k`` to ``dxg`` (and ``dr_k`` to ``dhg`` when ``APART``) of the rows of ``q_mask``;
    returns ``(dc_prev, carry)``: ``carry`` joins the gradient of ``h_{q-1}`` outside the
    GEMM (``dh_direct`` when ``DIRECT``, plus the zoneout part when ``zoneout_h``; used only
    then), ``dc_prev`` when ``HAS_C``. ``p``: the step
    processed before ``q`` (``p_bs`` 0: every row starts from the initial state);
    ``p0..p2``: as in :func:`forward_cell`. A row of ``q`` flagged in ``resets_ptr``
    (``has_resets``) started from a zero state: the cell reads zero ``c_{q-1}`` /
    ``h_{q-1}``, and ``dc_prev`` of the row is zero (no gradient crosses a reset; the
    kernels zero the gradient reaching ``h_{q-1}``, GEMM and ``dh_direct`` together, at the
    next iteration: :func:`reset_cut`). ``zone``: ``(mask_h_ptr, mask_c_ptr, cell_c_ptr,
    cell_h_ptr, zoneout_h, zoneout_c, p_h, p_c)`` as in :func:`forward_cell`: ``dh_q`` /
    ``dc`` are split (:func:`zoneout_split`) and the cell reads its own new ``c`` / ``h``
    (``cell_c`` / ``cell_h``, kept by the forward) instead of the zoned-out ones."""
    GH = GATES * H
    q_rows = (q_off + rows)[:, None]
    state_offs = q_rows * H + cols[None, :]
    dh_q = dh + tl.load(dy_ptr + state_offs, mask=q_mask, other=0.0).to(ACC)
    # Tiles the cell does not read: any ACC tile of the shape.
    s0 = dh_q
    s1 = dh_q
    s2 = dh_q
    s3 = dh_q
    e = dh_q
    c = dh_q
    c_prev = dh_q
    h = dh_q
    h_prev = dh_q
    if HAS_C:
        c_rows = state_rows(c_ptr, p_off, p_bs, c0_ptr, rows, H)
        c_prev = tl.load(c_rows[:, None] + cols[None, :], mask=q_mask, other=0.0).to(ACC)
    if BWD_H_PREV:
        h_rows = state_rows(y_ptr, p_off, p_bs, h0_ptr, rows, H)
        h_prev = tl.load(h_rows[:, None] + cols[None, :], mask=q_mask, other=0.0).to(ACC)
    cut = rows < 0  # the reset rows of q (none without flags)
    if has_resets != 0:
        cut = tl.load(resets_ptr + q_off + rows, mask=q_rows_mask, other=0) != 0
        c_prev = tl.where(cut[:, None], 0.0, c_prev)
        h_prev = tl.where(cut[:, None], 0.0, h_prev)
    if SAVES:
        g_ptrs = gates_ptr + q_rows * GH + cols[None, :]
        s0 = tl.load(g_ptrs, mask=q_mask, other=0.0).to(ACC)
        if GATES > 1:
            s1 = tl.load(g_ptrs + H, mask=q_mask, other=0.0).to(ACC)
        if GATES > 2:
            s2 = tl.load(g_ptrs + 2 * H, mask=q_mask, other=0.0).to(ACC)
        if GATES > 3:
            s3 = tl.load(g_ptrs + 3 * H, mask=q_mask, other=0.0).to(ACC)
    mask_h_ptr, mask_c_ptr, cell_c_ptr, cell_h_ptr, zoneout_h, zoneout_c, p_h, p_c = zone
    dh_cell = dh_q
    dc_cell = dc
    if zoneout_h != 0:
        dh_cell, _ = zoneout_split(mask_h_ptr, zoneout_h, p_h, dh_q, state_offs, q_mask)
    if HAS_C:
        if zoneout_c != 0:
            dc_cell, _ = zoneout_split(mask_c_ptr, zoneout_c, p_c, dc, state_offs, q_mask)
            c = tl.load(cell_c_ptr + state_offs, mask=q_mask, other=0.0).to(ACC)
        else:
            c = tl.load(c_ptr + state_offs, mask=q_mask, other=0.0).to(ACC)
    if EXTRA:
        e = tl.load(hn_ptr + state_offs, mask=q_mask, other=0.0).to(ACC)
    if BWD_H:
        if zoneout_h != 0:
            h = tl.load(cell_h_ptr + state_offs, mask=q_mask, other=0.0).to(ACC)
        else:
            h = tl.load(y_ptr + state_offs, mask=q_mask, other=0.0).to(ACC)
    if PARAMS > 0:
        dx0, dx1, dx2, dx3, dr0, dr1, dr2, dr3, dh_direct, dc_prev = CELL_BACKWARD(
            dh_cell, dc_cell, s0, s1, s2, s3, e, c, c_prev, h, h_prev, p0, p1, p2)
    else:
        dx0, dx1, dx2, dx3, dr0, dr1, dr2, dr3, dh_direct, dc_prev = CELL_BACKWARD(
            dh_cell, dc_cell, s0, s1, s2, s3, e, c, c_prev, h, h_prev)
    # Zoneout's parts, computed again from dc and dh + dy_q (the callers keep dc and dh).
    if HAS_C:
        if zoneout_c != 0:
            dc_prev = dc_prev + zoneout_split(mask_c_ptr, zoneout_c, p_c, dc, state_offs, q_mask)[1]
    if has_resets != 0:
        dc_prev = tl.where(cut[:, None], 0.0, dc_prev)
    carry = dh  # placeholder when nothing is carried
    if DIRECT:
        carry = dh_direct
    if zoneout_h != 0:
        dh_q = dh + tl.load(dy_ptr + state_offs, mask=q_mask, other=0.0).to(ACC)
        kept_h = zoneout_split(mask_h_ptr, zoneout_h, p_h, dh_q, state_offs, q_mask)[1]
        if DIRECT:
            carry = dh_direct + kept_h
        else:
            carry = kept_h
    ty = dxg_ptr.dtype.element_ty
    dx_ptrs = dxg_ptr + q_rows * GH + cols[None, :]
    tl.store(dx_ptrs, dx0.to(ty), mask=q_mask)
    if GATES > 1:
        tl.store(dx_ptrs + H, dx1.to(ty), mask=q_mask)
    if GATES > 2:
        tl.store(dx_ptrs + 2 * H, dx2.to(ty), mask=q_mask)
    if GATES > 3:
        tl.store(dx_ptrs + 3 * H, dx3.to(ty), mask=q_mask)
    if APART:
        dr_ptrs = dhg_ptr + q_rows * GH + cols[None, :]
        tl.store(dr_ptrs, dr0.to(ty), mask=q_mask)
        if GATES > 1:
            tl.store(dr_ptrs + H, dr1.to(ty), mask=q_mask)
        if GATES > 2:
            tl.store(dr_ptrs + 2 * H, dr2.to(ty), mask=q_mask)
        if GATES > 3:
            tl.store(dr_ptrs + 3 * H, dr3.to(ty), mask=q_mask)
    return dc_prev, carry
