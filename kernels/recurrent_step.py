"""Step kernels: one launch per timestep of one layer-direction, every cell kind.

Forward (``recurrent_step_forward_kernel``), one launch per step ``t``::

    gates = h_{t-1} @ W_hh^T (+ b_hh for GRU) + xg[t rows]      fp32 accumulation
    activations and state update                                 fp32 cell state
    h_t -> the output rows of step t; gates / c / W_hn h + b_hn -> saved rows when SAVE

Backward (``recurrent_step_backward_kernel``), one launch per backward step: the
recurrent GEMM of the step ``s`` processed just before (``dh = dgates_s @ W_hh``, plus
``dh_s * z_s`` for GRU) fused with the pointwise gate backward of the next step ``q``
(the step processed before ``s`` in the forward pass). The first backward launch has no
step ``s`` (``k_len = 0``) and is pointwise only.

Grid: ``(cdiv(rows, BLOCK_B), cdiv(H, BLOCK_H))``. A program owns a ``BLOCK_B x BLOCK_H``
tile of the hidden state and computes that tile of every gate (G accumulators), looping
over the reduction dimension in ``BLOCK_K`` chunks. No program reads what another
program of the same launch writes: the previous hidden state is read from the previous
step's output rows (or ``h0``) and written to the current step's rows (ping-pong over the
output sequence); the backward GEMM reads the gate gradients of step ``s`` and writes
those of step ``q``; the ``dh`` / ``dc`` / no-save ``c`` state buffers are only touched
pointwise, each element by the one program that owns it.

Packed sequences: each step's first row (``off``), active rows (``bs``), and the previous
step's first row and row count (``prev_off``, ``n_prev``) are runtime scalars; row
``r < n_prev`` continues from the previous step, a row ``r >= n_prev`` starts from the
initial state (the reverse direction of a packed batch, whose active batch grows).

Runtime integers are never specialised (``do_not_specialize``), so no shape, step or
batch size triggers a recompile; the only compile-time choices are the cell kind, SAVE,
the dtype, TF32, and the block configuration picked from ``H`` (:func:`step_config`).
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
from .cells import (
    GATES,
    KIND_IDS,
    legacy_gru_backward as gru_backward,
    legacy_gru_forward as gru_forward,
    legacy_lstm_backward as lstm_backward,
    legacy_lstm_forward as lstm_forward,
    legacy_rnn_relu_backward as rnn_relu_backward,
    legacy_rnn_relu_forward as rnn_relu_forward,
    legacy_rnn_tanh_backward as rnn_tanh_backward,
    legacy_rnn_tanh_forward as rnn_tanh_forward,
)

# --------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------


@triton.jit
def _load_state(seq_ptr, seq_off, n_seq, init_ptr, rows, cols, width, mask, ACC: tl.constexpr):
    """State before a step, tile ``rows x cols`` of a ``width``-wide state.

    Row ``r < n_seq`` reads ``seq[seq_off + r]`` (the previous step's rows), other rows
    read ``init[r]`` (the initial state). Both loads are upcast to ``ACC``.
    """
    from_seq = (rows < n_seq)[:, None]
    seq = tl.load(seq_ptr + (seq_off + rows)[:, None] * width + cols[None, :], mask=mask & from_seq, other=0.0)
    init = tl.load(init_ptr + rows[:, None] * width + cols[None, :], mask=mask & (~from_seq), other=0.0)
    return tl.where(from_seq, seq.to(ACC), init.to(ACC))


# --------------------------------------------------------------------------------------
# Forward step
# --------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["off", "bs", "prev_off", "n_prev", "out_off", "c_prev_off", "c_out_off", "H", "P"])
def recurrent_step_forward_kernel(
    xg_ptr,  # (N, G*H) input projection; rows [off, off + bs) are this step's
    w_hh_ptr,  # (G*H, P) recurrent weight
    b_hh_ptr,  # (G*H,) recurrent bias (GRU only; zeros when the layer has none)
    h_seq_ptr,  # (N, P) output sequence y: read at the previous step's rows
    h0_ptr,  # (B, P) initial hidden state
    out_ptr,  # (*, H) where h_t is written: y itself, or the (B, H) LSTM m buffer with proj_size
    c_prev_ptr,  # (*, H) ACC: cell state of the previous step (LSTM)
    c_init_ptr,  # (B, H) initial cell state c0 (LSTM)
    c_out_ptr,  # (*, H) ACC: where c_t is written (LSTM)
    gates_ptr,  # (N, G*H) saved gate activations (SAVE; LSTM i,f,g,o / GRU r,z,n)
    hn_ptr,  # (N, H) saved W_hn h + b_hn (SAVE; GRU)
    off,  # first row of this step in xg / y
    bs,  # active rows of this step
    prev_off,  # first row of the previous step in y
    n_prev,  # rows of the previous step (0 before the first step)
    out_off,  # row of out_ptr that row 0 of this step is written to
    c_prev_off,  # row of c_prev_ptr holding row 0 of the previous step
    c_out_off,  # row of c_out_ptr that row 0 of this step is written to
    H,  # hidden size
    P,  # size of the recurrent state h (proj_size, or H)
    KIND: tl.constexpr,  # 0 LSTM, 1 GRU, 2 RNN tanh, 3 RNN relu
    SAVE: tl.constexpr,  # keep what backward needs
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 I/O
    PRECISION: tl.constexpr,  # tl.dot input precision: "ieee" or "tf32"
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    G: tl.constexpr = 4 if KIND == 0 else (3 if KIND == 1 else 1)
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
    off = off.to(tl.int64)
    prev_off = prev_off.to(tl.int64)
    row_mask = rows < bs
    col_mask = cols < H
    mask = row_mask[:, None] & col_mask[None, :]
    GH = G * H

    # h_{t-1} @ W_hh^T, one accumulator per gate; W_hh^T tile of gate g is rows g*H + cols.
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
        h = tl.where(from_seq, h_seq, h_init)
        w_offs = cols[None, :] * P + ks[:, None]
        w_mask = k_mask[:, None] & col_mask[None, :]
        w = tl.load(w_hh_ptr + w_offs, mask=w_mask, other=0.0)
        acc0 = tl.dot(h, w, acc0, input_precision=PRECISION)
        if G > 1:
            w = tl.load(w_hh_ptr + H * P + w_offs, mask=w_mask, other=0.0)
            acc1 = tl.dot(h, w, acc1, input_precision=PRECISION)
            w = tl.load(w_hh_ptr + 2 * H * P + w_offs, mask=w_mask, other=0.0)
            acc2 = tl.dot(h, w, acc2, input_precision=PRECISION)
        if G > 3:
            w = tl.load(w_hh_ptr + 3 * H * P + w_offs, mask=w_mask, other=0.0)
            acc3 = tl.dot(h, w, acc3, input_precision=PRECISION)

    x_ptrs = xg_ptr + (off + rows)[:, None] * GH + cols[None, :]
    out_ptrs = out_ptr + (out_off + rows)[:, None] * H + cols[None, :]
    gate_ptrs = gates_ptr + (off + rows)[:, None] * GH + cols[None, :]
    if KIND == 0:
        c_prev = _load_state(c_prev_ptr, c_prev_off.to(tl.int64), n_prev, c_init_ptr, rows, cols, H, mask, ACC)
        i, f, g, o, c, h_new = lstm_forward(
            acc0 + tl.load(x_ptrs, mask=mask, other=0.0).to(ACC),
            acc1 + tl.load(x_ptrs + H, mask=mask, other=0.0).to(ACC),
            acc2 + tl.load(x_ptrs + 2 * H, mask=mask, other=0.0).to(ACC),
            acc3 + tl.load(x_ptrs + 3 * H, mask=mask, other=0.0).to(ACC),
            c_prev,
        )
        c_out = c_out_ptr + (c_out_off + rows)[:, None] * H + cols[None, :]
        tl.store(c_out, c.to(c_out_ptr.dtype.element_ty), mask=mask)
        if SAVE:
            ty = gates_ptr.dtype.element_ty
            tl.store(gate_ptrs, i.to(ty), mask=mask)
            tl.store(gate_ptrs + H, f.to(ty), mask=mask)
            tl.store(gate_ptrs + 2 * H, g.to(ty), mask=mask)
            tl.store(gate_ptrs + 3 * H, o.to(ty), mask=mask)
    elif KIND == 1:
        # torch's GRU: b_hn is inside the reset gate's product, so all of b_hh is added here.
        b_ptrs = b_hh_ptr + cols
        hn = acc2 + tl.load(b_ptrs + 2 * H, mask=col_mask, other=0.0).to(ACC)[None, :]
        h_prev = _load_state(h_seq_ptr, prev_off, n_prev, h0_ptr, rows, cols, P, mask, ACC)
        r, z, n, h_new = gru_forward(
            tl.load(x_ptrs, mask=mask, other=0.0).to(ACC),
            tl.load(x_ptrs + H, mask=mask, other=0.0).to(ACC),
            tl.load(x_ptrs + 2 * H, mask=mask, other=0.0).to(ACC),
            acc0 + tl.load(b_ptrs, mask=col_mask, other=0.0).to(ACC)[None, :],
            acc1 + tl.load(b_ptrs + H, mask=col_mask, other=0.0).to(ACC)[None, :],
            hn,
            h_prev,
        )
        if SAVE:
            ty = gates_ptr.dtype.element_ty
            tl.store(gate_ptrs, r.to(ty), mask=mask)
            tl.store(gate_ptrs + H, z.to(ty), mask=mask)
            tl.store(gate_ptrs + 2 * H, n.to(ty), mask=mask)
            tl.store(hn_ptr + (off + rows)[:, None] * H + cols[None, :], hn.to(hn_ptr.dtype.element_ty), mask=mask)
    elif KIND == 2:
        h_new = rnn_tanh_forward(acc0 + tl.load(x_ptrs, mask=mask, other=0.0).to(ACC))
    else:
        h_new = rnn_relu_forward(acc0 + tl.load(x_ptrs, mask=mask, other=0.0).to(ACC))
    tl.store(out_ptrs, h_new.to(out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------
# Backward step
# --------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["s_off", "s_bs", "k_len", "q_off", "q_bs", "q_prev_off", "q_n_prev", "H", "P"])
def recurrent_step_backward_kernel(
    dg_ptr,  # (N, G*H) gradient of h @ W_hh^T (+ b_hh) at step s: the GEMM operand
    w_hh_ptr,  # (G*H, P) recurrent weight
    dxg_ptr,  # (N, G*H) out: gradient of the input projection at step q
    dhg_ptr,  # (N, G*H) out: gradient of h @ W_hh^T + b_hh at step q (GRU; else unused)
    dy_ptr,  # (N, P) gradient of the output sequence
    dh_ptr,  # (B, P) ACC state buffer: dh reaching each sequence's state; updated in place
    dc_ptr,  # (B, H) ACC state buffer: dc (LSTM); updated in place
    dm_ptr,  # (B, H) gradient of m at step q, computed outside (LSTM with proj_size; DM_GIVEN)
    gates_ptr,  # (N, G*H) saved activations
    c_seq_ptr,  # (N, H) ACC saved cell states (LSTM)
    c0_ptr,  # (B, H) initial cell state (LSTM)
    hn_ptr,  # (N, H) saved W_hn h + b_hn (GRU)
    h_seq_ptr,  # (N, P) output sequence y (GRU: previous state; RNN: activation derivative)
    h0_ptr,  # (B, P) initial hidden state (GRU)
    s_off,  # first row of step s
    s_bs,  # rows of step s (0: no step s)
    k_len,  # reduction length of the GEMM: G*H, or 0 to skip it
    q_off,  # first row of step q
    q_bs,  # rows of step q
    q_prev_off,  # first row of the step before q (in processing order)
    q_n_prev,  # its row count (0 when q is the first processed step)
    H,  # hidden size
    P,  # size of h (== H unless DM_GIVEN)
    KIND: tl.constexpr,  # 0 LSTM, 1 GRU, 2 RNN tanh, 3 RNN relu
    DM_GIVEN: tl.constexpr,  # LSTM with proj_size: dm read from dm_ptr, no GEMM here
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    G: tl.constexpr = 4 if KIND == 0 else (3 if KIND == 1 else 1)
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
    s_off = s_off.to(tl.int64)
    q_off = q_off.to(tl.int64)
    GH = G * H
    col_mask = cols < H
    s_rows = rows < s_bs
    q_rows = rows < q_bs
    q_mask = q_rows[:, None] & col_mask[None, :]

    if DM_GIVEN:
        dh = tl.load(dm_ptr + rows[:, None] * H + cols[None, :], mask=q_mask, other=0.0).to(ACC)
    else:
        # dh_{s-1} = dgates_s @ W_hh (+ dh_s * z_s for GRU) for the rows of step s; rows
        # beyond keep what the state buffer holds (dh_n, or a finished dh0 row).
        any_mask = (s_rows | q_rows)[:, None] & col_mask[None, :]
        dh_ptrs = dh_ptr + rows[:, None] * P + cols[None, :]
        dh_old = tl.load(dh_ptrs, mask=any_mask, other=0.0)
        acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        for k0 in range(0, k_len, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            k_mask = ks < k_len
            a_mask = s_rows[:, None] & k_mask[None, :]
            a = tl.load(dg_ptr + (s_off + rows)[:, None] * GH + ks[None, :], mask=a_mask, other=0.0)
            w_mask = k_mask[:, None] & col_mask[None, :]
            w = tl.load(w_hh_ptr + ks[:, None] * P + cols[None, :], mask=w_mask, other=0.0)
            acc = tl.dot(a, w, acc, input_precision=PRECISION)
        if KIND == 1:
            z_ptrs = gates_ptr + (s_off + rows)[:, None] * GH + H + cols[None, :]
            z_s = tl.load(z_ptrs, mask=s_rows[:, None] & col_mask[None, :], other=0.0)
            acc += dh_old * z_s.to(ACC)
        dh = tl.where(s_rows[:, None], acc, dh_old)
        dh += tl.load(dy_ptr + (q_off + rows)[:, None] * P + cols[None, :], mask=q_mask, other=0.0).to(ACC)
        tl.store(dh_ptrs, dh, mask=any_mask)

    # Pointwise gate backward of step q, with dh the total gradient reaching h_q.
    g_ptrs = gates_ptr + (q_off + rows)[:, None] * GH + cols[None, :]
    dx_ptrs = dxg_ptr + (q_off + rows)[:, None] * GH + cols[None, :]
    ty = dxg_ptr.dtype.element_ty
    if KIND == 0:
        c_prev = _load_state(c_seq_ptr, q_prev_off.to(tl.int64), q_n_prev, c0_ptr, rows, cols, H, q_mask, ACC)
        dc_ptrs = dc_ptr + rows[:, None] * H + cols[None, :]
        di, df, dg, do, dc_prev = lstm_backward(
            dh,
            tl.load(dc_ptrs, mask=q_mask, other=0.0).to(ACC),
            tl.load(g_ptrs, mask=q_mask, other=0.0).to(ACC),
            tl.load(g_ptrs + H, mask=q_mask, other=0.0).to(ACC),
            tl.load(g_ptrs + 2 * H, mask=q_mask, other=0.0).to(ACC),
            tl.load(g_ptrs + 3 * H, mask=q_mask, other=0.0).to(ACC),
            tl.load(c_seq_ptr + (q_off + rows)[:, None] * H + cols[None, :], mask=q_mask, other=0.0).to(ACC),
            c_prev,
        )
        tl.store(dx_ptrs, di.to(ty), mask=q_mask)
        tl.store(dx_ptrs + H, df.to(ty), mask=q_mask)
        tl.store(dx_ptrs + 2 * H, dg.to(ty), mask=q_mask)
        tl.store(dx_ptrs + 3 * H, do.to(ty), mask=q_mask)
        tl.store(dc_ptrs, dc_prev, mask=q_mask)
    elif KIND == 1:
        h_prev = _load_state(h_seq_ptr, q_prev_off.to(tl.int64), q_n_prev, h0_ptr, rows, cols, P, q_mask, ACC)
        # dh * z (the path to h_prev outside the GEMM) is added by the launch of the step
        # before, which holds z_s next to its GEMM; unused here.
        dr, dz, dn, dhn, _ = gru_backward(
            dh,
            tl.load(g_ptrs, mask=q_mask, other=0.0).to(ACC),
            tl.load(g_ptrs + H, mask=q_mask, other=0.0).to(ACC),
            tl.load(g_ptrs + 2 * H, mask=q_mask, other=0.0).to(ACC),
            tl.load(hn_ptr + (q_off + rows)[:, None] * H + cols[None, :], mask=q_mask, other=0.0).to(ACC),
            h_prev,
        )
        dh_ptrs_g = dhg_ptr + (q_off + rows)[:, None] * GH + cols[None, :]
        tl.store(dx_ptrs, dr.to(ty), mask=q_mask)
        tl.store(dx_ptrs + H, dz.to(ty), mask=q_mask)
        tl.store(dx_ptrs + 2 * H, dn.to(ty), mask=q_mask)
        tl.store(dh_ptrs_g, dr.to(ty), mask=q_mask)
        tl.store(dh_ptrs_g + H, dz.to(ty), mask=q_mask)
        tl.store(dh_ptrs_g + 2 * H, dhn.to(ty), mask=q_mask)
    elif KIND == 2:
        y = tl.load(h_seq_ptr + (q_off + rows)[:, None] * P + cols[None, :], mask=q_mask, other=0.0).to(ACC)
        tl.store(dx_ptrs, rnn_tanh_backward(dh, y).to(ty), mask=q_mask)
    else:
        y = tl.load(h_seq_ptr + (q_off + rows)[:, None] * P + cols[None, :], mask=q_mask, other=0.0).to(ACC)
        tl.store(dx_ptrs, rnn_relu_backward(dh, y).to(ty), mask=q_mask)


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
# tiles (less masked work), everything else 32-wide tiles with 4 warps: a step kernel's
# grid is small (B/16 x H/32 programs), so wider tiles would leave SMs idle.
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


def forward_constexprs(kind: str, save: bool, dtype: torch.dtype, tf32: bool, cfg: StepConfig) -> dict:
    """Compile-time arguments of the forward kernel (plain RNNs save nothing: SAVE False)."""
    return dict(
        KIND=KIND_IDS[kind], SAVE=bool(save) and GATES[kind] > 1, ACC=_acc(dtype),
        PRECISION=_precision(dtype, tf32), BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k,
    )


def backward_constexprs(kind: str, dm_given: bool, dtype: torch.dtype, tf32: bool, cfg: StepConfig) -> dict:
    """Compile-time arguments of the backward kernel (DM_GIVEN only for LSTM)."""
    return dict(
        KIND=KIND_IDS[kind], DM_GIVEN=bool(dm_given) and kind == "LSTM", ACC=_acc(dtype),
        PRECISION=_precision(dtype, tf32), BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k,
    )


# Pointer arguments in order, with the dtype each holds: "io" (the layer's dtype) or
# "acc" (fp32; fp64 for fp64 I/O). The launchers pass tensors of exactly these dtypes.
FORWARD_POINTERS = (
    ("xg_ptr", "io"), ("w_hh_ptr", "io"), ("b_hh_ptr", "io"), ("h_seq_ptr", "io"), ("h0_ptr", "io"),
    ("out_ptr", "io"), ("c_prev_ptr", "acc"), ("c_init_ptr", "io"), ("c_out_ptr", "acc"),
    ("gates_ptr", "io"), ("hn_ptr", "io"),
)
FORWARD_INTS = ("off", "bs", "prev_off", "n_prev", "out_off", "c_prev_off", "c_out_off", "H", "P")
BACKWARD_POINTERS = (
    ("dg_ptr", "io"), ("w_hh_ptr", "io"), ("dxg_ptr", "io"), ("dhg_ptr", "io"), ("dy_ptr", "io"),
    ("dh_ptr", "acc"), ("dc_ptr", "acc"), ("dm_ptr", "acc"), ("gates_ptr", "io"), ("c_seq_ptr", "acc"),
    ("c0_ptr", "io"), ("hn_ptr", "io"), ("h_seq_ptr", "io"), ("h0_ptr", "io"),
)
BACKWARD_INTS = ("s_off", "s_bs", "k_len", "q_off", "q_bs", "q_prev_off", "q_n_prev", "H", "P")


class Specialisation(NamedTuple):
    """One compiled variant a launcher can choose: what the AOT report compiles."""

    kernel: object  # the @triton.jit function
    kernel_name: str
    kind: str
    dtype: torch.dtype
    label: str  # dtype / precision / flags, for the report
    config: StepConfig
    constexprs: dict
    pointers: tuple  # ((name, "io" | "acc"), ...)
    ints: tuple


def specialisations(dtypes=(torch.float32, torch.float16, torch.bfloat16)) -> list[Specialisation]:
    """Every (kernel, kind, dtype, TF32, SAVE / DM_GIVEN, config) the launchers can pick."""
    out = []
    for dtype in dtypes:
        for tf32 in ((False, True) if dtype == torch.float32 else (False,)):
            for kind in KIND_IDS:
                for cfg in CONFIGS:
                    name = str(dtype).replace("torch.", "") + ("-tf32" if tf32 else "")
                    for save in ((False, True) if GATES[kind] > 1 else (False,)):
                        out.append(Specialisation(
                            recurrent_step_forward_kernel, "forward", kind, dtype,
                            name + ("-save" if save else ""), cfg,
                            forward_constexprs(kind, save, dtype, tf32, cfg), FORWARD_POINTERS, FORWARD_INTS,
                        ))
                    for dm_given in ((False, True) if kind == "LSTM" else (False,)):
                        out.append(Specialisation(
                            recurrent_step_backward_kernel, "backward", kind, dtype,
                            name + ("-dm" if dm_given else ""), cfg,
                            backward_constexprs(kind, dm_given, dtype, tf32, cfg), BACKWARD_POINTERS, BACKWARD_INTS,
                        ))
    return out


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def forward_stepper(kind: str, tensors: dict, *, hidden: int, save: bool, tf32: bool):
    """Prepare the forward steps of one time loop; returns ``launch(ints)``, one step each.

    ``tensors`` maps each name of :data:`FORWARD_POINTERS` to a contiguous, 16-byte
    aligned tensor (unused ones: any tensor of the right dtype); they are checked and the
    block configuration and compile-time arguments are picked once here, not per step.
    ``ints`` maps each name of :data:`FORWARD_INTS` to a Python int.
    """
    cfg = step_config(hidden)
    pointers = _pointers(FORWARD_POINTERS, tensors)
    constexprs = forward_constexprs(kind, save, tensors["xg_ptr"].dtype, tf32, cfg)
    blocks_h = triton.cdiv(hidden, cfg.block_h)

    def launch(ints: dict) -> None:
        grid = (triton.cdiv(ints["bs"], cfg.block_b), blocks_h)
        recurrent_step_forward_kernel[grid](
            *pointers, *(ints[k] for k in FORWARD_INTS), **constexprs, num_warps=cfg.num_warps
        )
        record("step", "forward")

    return launch


def backward_stepper(kind: str, tensors: dict, *, hidden: int, dm_given: bool, tf32: bool):
    """As :func:`forward_stepper` for the backward steps (names of
    :data:`BACKWARD_POINTERS` / :data:`BACKWARD_INTS`); a launch's grid covers
    ``max(s_bs, q_bs)`` rows."""
    cfg = step_config(hidden)
    pointers = _pointers(BACKWARD_POINTERS, tensors)
    constexprs = backward_constexprs(kind, dm_given, tensors["dxg_ptr"].dtype, tf32, cfg)
    blocks_h = triton.cdiv(hidden, cfg.block_h)

    def launch(ints: dict) -> None:
        grid = (triton.cdiv(max(ints["s_bs"], ints["q_bs"]), cfg.block_b), blocks_h)
        recurrent_step_backward_kernel[grid](
            *pointers, *(ints[k] for k in BACKWARD_INTS), **constexprs, num_warps=cfg.num_warps
        )
        record("step", "backward")

    return launch
