"""Resident kernels: the whole time loop of one layer-direction in one launch.

One program owns ``BLOCK_B`` batch rows and *all* hidden units. It loads the recurrent
weight ``W_hh`` once, before the loop (the compiler keeps it on chip: shared memory and
registers), keeps the state in ``ACC`` registers (fp32; fp64 for fp64 I/O) for the whole
sequence, and runs ``for t in range(T)`` inside the kernel. Programs never wait for each
other (each owns its rows of the state), so Triton's interpreter runs them as they are.

Forward (``resident_forward_kernel``), per step ``t`` in processing order::

    pre = h.to(io) @ W_hh^T (+ b_hh for GRU) + xg[rows of t]     one tl.dot per gate
    cell forward (kernels/cells.py) -> h_t, c_t                   fp32 state
    y[rows of t] = h_t; gates / c_t / W_hn h + b_hn -> saved rows when ``save``
    rows of the tile that are not active at t keep their state

and at the end ``h_n``, ``c_n`` (each row's state after its last step).

Backward (``resident_backward_kernel``), per step in reverse processing order, with
``dh`` / ``dc`` the gradient state (initialised from ``dh_n`` / ``dc_n``)::

    dh_t = dh + dy[rows of t]
    cell backward (kernels/cells.py) -> gate gradients -> dxg (and dhg for GRU)
    dh = dgates.to(io) @ W_hh (+ dh_t * z for GRU); dc = dc_prev      active rows only

and at the end ``dh0``, ``dc0``. The weight gradients are whole-sequence GEMMs in the
engine, after the loop.

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

Compile-time choices: the cell kind, ``ACC``, ``PRECISION`` (TF32 or IEEE), ``BLOCK_B``,
``BLOCK_H`` and the warps, from :mod:`fastrnn.kernels.fits`. ``T``, ``B``, ``H``, the
direction and ``save`` are runtime arguments (``do_not_specialize``): no shape, batch
size or sequence length recompiles.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


from . import fits
from .cells import (
    KIND_IDS,
    legacy_gru_backward as gru_backward,
    legacy_gru_forward as gru_forward,
    gru_hidden_bias,
    legacy_lstm_backward as lstm_backward,
    legacy_lstm_forward as lstm_forward,
    legacy_rnn_relu_backward as rnn_relu_backward,
    legacy_rnn_relu_forward as rnn_relu_forward,
    legacy_rnn_tanh_backward as rnn_tanh_backward,
    legacy_rnn_tanh_forward as rnn_tanh_forward,
)
from .launches import aligned_input  # noqa: F401 (used by the backend)
from .launches import checked_pointers as _pointers
from .launches import record

# --------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------


@triton.jit
def _step_rows(t, sizes_ptr, offsets_ptr, uniform_b):
    """``(first row, active rows)`` of timestep ``t``: computed for a padded batch
    (``uniform_b > 0``), read from the schedule's device tensors for a packed one."""
    if uniform_b > 0:
        off = t.to(tl.int64) * uniform_b
        bs = uniform_b
    else:
        off = tl.load(offsets_ptr + t).to(tl.int64)
        bs = tl.load(sizes_ptr + t)
    return off, bs


@triton.jit
def _timestep(j, T, reverse):
    """Timestep processed ``j``-th: ``j`` forward, ``T - 1 - j`` for the reverse direction."""
    return j + reverse * (T - 1 - 2 * j)


@triton.jit
def _load_weight(w_ptr, units, ks, H, TRANSPOSED: tl.constexpr):
    """One gate block of ``W_hh`` (``H x H`` from ``w_ptr``) as a ``BLOCK_H x BLOCK_H`` tile.

    ``TRANSPOSED``: tile ``[k, j] = W[j, k]`` (the forward GEMM ``h @ W^T``); else
    ``[j, k] = W[j, k]`` (the backward GEMM ``dgates @ W``). Padding is zero.
    """
    if TRANSPOSED:
        offs = units[None, :] * H + ks[:, None]
        mask = (ks < H)[:, None] & (units < H)[None, :]
    else:
        offs = units[:, None] * H + ks[None, :]
        mask = (units < H)[:, None] & (ks < H)[None, :]
    return tl.load(w_ptr + offs, mask=mask, other=0.0)


@triton.jit
def _load_weights(w_hh_ptr, cols, H, G: tl.constexpr, TRANSPOSED: tl.constexpr):
    """``W_hh`` once: the ``G`` gate blocks as tiles of :func:`_load_weight` (gates a kind
    lacks get the first tile again, never read)."""
    w0 = _load_weight(w_hh_ptr, cols, cols, H, TRANSPOSED)
    w1 = w0
    w2 = w0
    w3 = w0
    if G > 1:
        w1 = _load_weight(w_hh_ptr + H * H, cols, cols, H, TRANSPOSED)
        w2 = _load_weight(w_hh_ptr + 2 * H * H, cols, cols, H, TRANSPOSED)
    if G > 3:
        w3 = _load_weight(w_hh_ptr + 3 * H * H, cols, cols, H, TRANSPOSED)
    return w0, w1, w2, w3


# --------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["T", "B", "uniform_b", "reverse", "save", "H"])
def resident_forward_kernel(
    xg_ptr,  # (N, G*H) input projection, rows grouped by timestep
    w_hh_ptr,  # (G*H, H) recurrent weight
    b_hh_ptr,  # (G*H,) recurrent bias (GRU only; zeros when the layer has none)
    h0_ptr,  # (B, H) initial hidden state
    c0_ptr,  # (B, H) initial cell state (LSTM)
    y_ptr,  # (N, H) out: hidden state of every step
    h_n_ptr,  # (B, H) out: final hidden state of each sequence
    c_n_ptr,  # (B, H) out: final cell state (LSTM)
    gates_ptr,  # (N, G*H) out when save: activations (LSTM i,f,g,o / GRU r,z,n)
    c_seq_ptr,  # (N, H) ACC out when save: cell state of every step (LSTM)
    hn_seq_ptr,  # (N, H) out when save: W_hn h + b_hn of every step (GRU)
    sizes_ptr,  # (T,) int32 active rows per step (packed; unused when uniform_b > 0)
    offsets_ptr,  # (T,) int32 first row per step (packed; unused when uniform_b > 0)
    T,  # timesteps
    B,  # sequences (rows of h0 / h_n)
    uniform_b,  # B for a padded batch (every step has B rows), 0 for a packed one
    reverse,  # 1: process t = T-1 .. 0
    save,  # 1: write gates / c / hn for backward
    H,  # hidden size (== size of h: no projection on this tier)
    KIND: tl.constexpr,  # 0 LSTM, 1 GRU, 2 RNN tanh, 3 RNN relu
    ACC: tl.constexpr,  # accumulation / state dtype: fp32, or fp64 for fp64 I/O
    PRECISION: tl.constexpr,  # tl.dot input precision: "ieee" or "tf32"
    BLOCK_B: tl.constexpr,  # batch rows per program
    BLOCK_H: tl.constexpr,  # H padded to a power of two >= 16
):
    G: tl.constexpr = 4 if KIND == 0 else (3 if KIND == 1 else 1)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    col_mask = cols < H
    tile_mask = (rows < B)[:, None] & col_mask[None, :]
    GH = G * H

    # The recurrent weight, once: one transposed (H x H) tile per gate.
    w0, w1, w2, w3 = _load_weights(w_hh_ptr, cols, H, G, True)
    b_r, b_z, b_n = gru_hidden_bias(b_hh_ptr, cols, col_mask, H, KIND, ACC, BLOCK_H)

    state_offs = rows[:, None] * H + cols[None, :]
    h = tl.load(h0_ptr + state_offs, mask=tile_mask, other=0.0).to(ACC)
    if KIND == 0:
        c = tl.load(c0_ptr + state_offs, mask=tile_mask, other=0.0).to(ACC)

    for j in range(T):
        t = _timestep(j, T, reverse)
        off, bs = _step_rows(t, sizes_ptr, offsets_ptr, uniform_b)
        # Active rows, real columns: padding columns of the state stay 0 (an inf in the
        # state times a zero-padded weight is NaN there, which the next GEMM would spread).
        mask = (rows < bs)[:, None] & col_mask[None, :]
        # 64-bit scalar base of the step, 32-bit offsets inside the tile (B*G*H < 2^31).
        x_ptrs = xg_ptr + off * GH + (rows[:, None] * GH + cols[None, :])
        gate_ptrs = gates_ptr + off * GH + (rows[:, None] * GH + cols[None, :])
        seq_offs = off * H + state_offs
        hx = h.to(w0.dtype)  # the GEMM runs on I/O-dtype operands (tensor cores), fp32 result
        zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        a0 = tl.dot(hx, w0, zero, input_precision=PRECISION)
        if G > 1:
            a1 = tl.dot(hx, w1, zero, input_precision=PRECISION)
            a2 = tl.dot(hx, w2, zero, input_precision=PRECISION)
        if G > 3:
            a3 = tl.dot(hx, w3, zero, input_precision=PRECISION)
        if KIND == 0:
            i, f, g, o, c_new, h_new = lstm_forward(
                a0 + tl.load(x_ptrs, mask=mask, other=0.0).to(ACC),
                a1 + tl.load(x_ptrs + H, mask=mask, other=0.0).to(ACC),
                a2 + tl.load(x_ptrs + 2 * H, mask=mask, other=0.0).to(ACC),
                a3 + tl.load(x_ptrs + 3 * H, mask=mask, other=0.0).to(ACC),
                c,
            )
            c = tl.where(mask, c_new, c)
            if save:
                ty = gates_ptr.dtype.element_ty
                tl.store(gate_ptrs, i.to(ty), mask=mask)
                tl.store(gate_ptrs + H, f.to(ty), mask=mask)
                tl.store(gate_ptrs + 2 * H, g.to(ty), mask=mask)
                tl.store(gate_ptrs + 3 * H, o.to(ty), mask=mask)
                tl.store(c_seq_ptr + seq_offs, c_new.to(c_seq_ptr.dtype.element_ty), mask=mask)
        elif KIND == 1:
            hn = a2 + b_n
            r, z, n, h_new = gru_forward(
                tl.load(x_ptrs, mask=mask, other=0.0).to(ACC),
                tl.load(x_ptrs + H, mask=mask, other=0.0).to(ACC),
                tl.load(x_ptrs + 2 * H, mask=mask, other=0.0).to(ACC),
                a0 + b_r,
                a1 + b_z,
                hn,
                h,
            )
            if save:
                ty = gates_ptr.dtype.element_ty
                tl.store(gate_ptrs, r.to(ty), mask=mask)
                tl.store(gate_ptrs + H, z.to(ty), mask=mask)
                tl.store(gate_ptrs + 2 * H, n.to(ty), mask=mask)
                tl.store(hn_seq_ptr + seq_offs, hn.to(hn_seq_ptr.dtype.element_ty), mask=mask)
        elif KIND == 2:
            h_new = rnn_tanh_forward(a0 + tl.load(x_ptrs, mask=mask, other=0.0).to(ACC))
        else:
            h_new = rnn_relu_forward(a0 + tl.load(x_ptrs, mask=mask, other=0.0).to(ACC))
        tl.store(y_ptr + seq_offs, h_new.to(y_ptr.dtype.element_ty), mask=mask)
        h = tl.where(mask, h_new, h)

    tl.store(h_n_ptr + state_offs, h.to(h_n_ptr.dtype.element_ty), mask=tile_mask)
    if KIND == 0:
        tl.store(c_n_ptr + state_offs, c.to(c_n_ptr.dtype.element_ty), mask=tile_mask)


# --------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["T", "B", "uniform_b", "reverse", "H"])
def resident_backward_kernel(
    w_hh_ptr,  # (G*H, H) recurrent weight
    h0_ptr,  # (B, H) initial hidden state (GRU: the state before the first step)
    c0_ptr,  # (B, H) initial cell state (LSTM)
    y_ptr,  # (N, H) forward output (GRU: previous state; RNN: activation derivative)
    dy_ptr,  # (N, H) gradient of y
    dh_n_ptr,  # (B, H) gradient of h_n
    dc_n_ptr,  # (B, H) gradient of c_n (LSTM)
    gates_ptr,  # (N, G*H) saved activations
    c_seq_ptr,  # (N, H) ACC saved cell states (LSTM)
    hn_seq_ptr,  # (N, H) saved W_hn h + b_hn (GRU)
    dxg_ptr,  # (N, G*H) out: gradient of the input projection
    dhg_ptr,  # (N, G*H) out: gradient of h @ W_hh^T + b_hh (GRU; else unused)
    dh0_ptr,  # (B, H) out: gradient of h0
    dc0_ptr,  # (B, H) out: gradient of c0 (LSTM)
    sizes_ptr,  # (T,) int32 active rows per step (packed; unused when uniform_b > 0)
    offsets_ptr,  # (T,) int32 first row per step (packed; unused when uniform_b > 0)
    T,  # timesteps
    B,  # sequences
    uniform_b,  # B for a padded batch, 0 for a packed one
    reverse,  # 1: the forward pass processed t = T-1 .. 0
    H,  # hidden size
    KIND: tl.constexpr,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    G: tl.constexpr = 4 if KIND == 0 else (3 if KIND == 1 else 1)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    col_mask = cols < H
    tile_mask = (rows < B)[:, None] & col_mask[None, :]
    GH = G * H

    # W_hh once, one (H x H) tile per gate, for dh_prev = sum_g dgates_g @ W_g.
    w0, w1, w2, w3 = _load_weights(w_hh_ptr, cols, H, G, False)

    state_offs = rows[:, None] * H + cols[None, :]
    dh = tl.load(dh_n_ptr + state_offs, mask=tile_mask, other=0.0).to(ACC)
    if KIND == 0:
        dc = tl.load(dc_n_ptr + state_offs, mask=tile_mask, other=0.0).to(ACC)
    ty = dxg_ptr.dtype.element_ty

    for jj in range(T):
        j = T - 1 - jj  # processing index of this step in the forward pass
        t = _timestep(j, T, reverse)
        off, bs = _step_rows(t, sizes_ptr, offsets_ptr, uniform_b)
        # Active rows, real columns: padding columns of the state stay 0 (an inf in the
        # state times a zero-padded weight is NaN there, which the next GEMM would spread).
        mask = (rows < bs)[:, None] & col_mask[None, :]
        gate_offs = off * GH + (rows[:, None] * GH + cols[None, :])  # 64-bit base, 32-bit tile
        seq_offs = off * H + state_offs
        g_ptrs = gates_ptr + gate_offs
        dx_ptrs = dxg_ptr + gate_offs
        zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        dh_t = dh + tl.load(dy_ptr + seq_offs, mask=mask, other=0.0).to(ACC)
        if KIND <= 1:
            # The state before step t: the previous processed step's rows for rows that
            # were active there, the initial state for the others (j == 0, or rows that
            # start later in the reverse direction of a packed batch).
            p_off = off * 0
            n_prev = bs * 0
            if j > 0:
                p_off, n_prev = _step_rows(_timestep(j - 1, T, reverse), sizes_ptr, offsets_ptr, uniform_b)
            from_seq = (rows < n_prev)[:, None]
            prev_offs = p_off * H + state_offs
        if KIND == 0:
            c_prev = tl.where(
                from_seq,
                tl.load(c_seq_ptr + prev_offs, mask=mask & from_seq, other=0.0).to(ACC),
                tl.load(c0_ptr + state_offs, mask=mask & (~from_seq), other=0.0).to(ACC),
            )
            di, df, dg, do, dc_prev = lstm_backward(
                dh_t,
                dc,
                tl.load(g_ptrs, mask=mask, other=0.0).to(ACC),
                tl.load(g_ptrs + H, mask=mask, other=0.0).to(ACC),
                tl.load(g_ptrs + 2 * H, mask=mask, other=0.0).to(ACC),
                tl.load(g_ptrs + 3 * H, mask=mask, other=0.0).to(ACC),
                tl.load(c_seq_ptr + seq_offs, mask=mask, other=0.0).to(ACC),
                c_prev,
            )
            di, df, dg, do = di.to(ty), df.to(ty), dg.to(ty), do.to(ty)
            tl.store(dx_ptrs, di, mask=mask)
            tl.store(dx_ptrs + H, df, mask=mask)
            tl.store(dx_ptrs + 2 * H, dg, mask=mask)
            tl.store(dx_ptrs + 3 * H, do, mask=mask)
            # The GEMM reads the gate gradients as stored (I/O dtype), like the step tier.
            acc = tl.dot(di, w0, zero, input_precision=PRECISION)
            acc = tl.dot(df, w1, acc, input_precision=PRECISION)
            acc = tl.dot(dg, w2, acc, input_precision=PRECISION)
            acc = tl.dot(do, w3, acc, input_precision=PRECISION)
            dc = tl.where(mask, dc_prev, dc)
        elif KIND == 1:
            h_prev = tl.where(
                from_seq,
                tl.load(y_ptr + prev_offs, mask=mask & from_seq, other=0.0).to(ACC),
                tl.load(h0_ptr + state_offs, mask=mask & (~from_seq), other=0.0).to(ACC),
            )
            dr, dz, dn, dhn, dh_direct = gru_backward(
                dh_t,
                tl.load(g_ptrs, mask=mask, other=0.0).to(ACC),
                tl.load(g_ptrs + H, mask=mask, other=0.0).to(ACC),
                tl.load(g_ptrs + 2 * H, mask=mask, other=0.0).to(ACC),
                tl.load(hn_seq_ptr + seq_offs, mask=mask, other=0.0).to(ACC),
                h_prev,
            )
            dr, dz, dhn = dr.to(ty), dz.to(ty), dhn.to(ty)
            dhg_ptrs = dhg_ptr + gate_offs
            tl.store(dx_ptrs, dr, mask=mask)
            tl.store(dx_ptrs + H, dz, mask=mask)
            tl.store(dx_ptrs + 2 * H, dn.to(ty), mask=mask)
            tl.store(dhg_ptrs, dr, mask=mask)
            tl.store(dhg_ptrs + H, dz, mask=mask)
            tl.store(dhg_ptrs + 2 * H, dhn, mask=mask)
            acc = tl.dot(dr, w0, dh_direct, input_precision=PRECISION)
            acc = tl.dot(dz, w1, acc, input_precision=PRECISION)
            acc = tl.dot(dhn, w2, acc, input_precision=PRECISION)
        else:
            y = tl.load(y_ptr + seq_offs, mask=mask, other=0.0).to(ACC)
            if KIND == 2:
                dpre = rnn_tanh_backward(dh_t, y).to(ty)
            else:
                dpre = rnn_relu_backward(dh_t, y).to(ty)
            tl.store(dx_ptrs, dpre, mask=mask)
            acc = tl.dot(dpre, w0, zero, input_precision=PRECISION)
        dh = tl.where(mask, acc, dh)

    tl.store(dh0_ptr + state_offs, dh.to(dh0_ptr.dtype.element_ty), mask=tile_mask)
    if KIND == 0:
        tl.store(dc0_ptr + state_offs, dc.to(dc0_ptr.dtype.element_ty), mask=tile_mask)


# --------------------------------------------------------------------------------------
# Launch choices (shared with the compile report so the two cannot drift)
# --------------------------------------------------------------------------------------


def _precision(dtype: torch.dtype, tf32: bool) -> str:
    # TF32 only for fp32 and only when the user allowed it (cuDNN's rule for nn.LSTM).
    return "tf32" if (dtype == torch.float32 and tf32) else "ieee"


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def constexprs(kind: str, dtype: torch.dtype, tf32: bool, cfg: fits.KernelConfig) -> dict:
    """Compile-time arguments of either resident kernel (the same names for both)."""
    return dict(
        KIND=KIND_IDS[kind], ACC=_acc(dtype), PRECISION=_precision(dtype, tf32),
        BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h,
    )


# Pointer arguments in order, with the dtype each holds: "io" (the layer's dtype), "acc"
# (fp32; fp64 for fp64 I/O) or "i32". The launchers pass tensors of exactly these dtypes.
FORWARD_POINTERS = (
    ("xg_ptr", "io"), ("w_hh_ptr", "io"), ("b_hh_ptr", "io"), ("h0_ptr", "io"), ("c0_ptr", "io"),
    ("y_ptr", "io"), ("h_n_ptr", "io"), ("c_n_ptr", "io"), ("gates_ptr", "io"), ("c_seq_ptr", "acc"),
    ("hn_seq_ptr", "io"), ("sizes_ptr", "i32"), ("offsets_ptr", "i32"),
)
FORWARD_INTS = ("T", "B", "uniform_b", "reverse", "save", "H")
BACKWARD_POINTERS = (
    ("w_hh_ptr", "io"), ("h0_ptr", "io"), ("c0_ptr", "io"), ("y_ptr", "io"), ("dy_ptr", "io"),
    ("dh_n_ptr", "io"), ("dc_n_ptr", "io"), ("gates_ptr", "io"), ("c_seq_ptr", "acc"), ("hn_seq_ptr", "io"),
    ("dxg_ptr", "io"), ("dhg_ptr", "io"), ("dh0_ptr", "io"), ("dc0_ptr", "io"), ("sizes_ptr", "i32"),
    ("offsets_ptr", "i32"),
)
BACKWARD_INTS = ("T", "B", "uniform_b", "reverse", "H")


class Specialisation(NamedTuple):
    """One compiled variant the launchers can choose: what the AOT report compiles."""

    kernel: object  # the @triton.jit function
    kernel_name: str  # "resident-forward" / "resident-backward"
    kind: str
    dtype: torch.dtype
    label: str  # dtype / precision, for the report
    config: fits.KernelConfig
    constexprs: dict
    pointers: tuple  # ((name, "io" | "acc" | "i32"), ...)
    ints: tuple
    shared_limit: dict  # arch -> bytes this entry may use there (fits.py), None: not run there


def specialisations(dtypes=None) -> list[Specialisation]:
    """Every (kernel, kind, dtype, TF32, block configuration) of :data:`fits.RESIDENT`."""
    out = []
    for (kind, dtype_name, _), fit in fits.RESIDENT.items():
        dtype = getattr(torch, dtype_name)
        if dtypes is not None and dtype not in dtypes:
            continue
        for tf32 in ((False, True) if dtype == torch.float32 else (False,)):
            label = dtype_name + ("-tf32" if tf32 else "")
            for name, kernel, cfg, pointers, ints in (
                ("resident-forward", resident_forward_kernel, fit.forward, FORWARD_POINTERS, FORWARD_INTS),
                ("resident-backward", resident_backward_kernel, fit.backward, BACKWARD_POINTERS, BACKWARD_INTS),
            ):
                out.append(Specialisation(
                    kernel, name, kind, dtype, label, cfg, constexprs(kind, dtype, tf32, cfg), pointers, ints,
                    dict(fit.shared),
                ))
    return out


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def launch_forward(kind: str, tensors: dict, ints: dict, *, fit: fits.ResidentFit, tf32: bool) -> None:
    """One forward launch over the whole sequence.

    ``tensors`` maps each name of :data:`FORWARD_POINTERS` to a contiguous, 16-byte
    aligned tensor (unused ones: any tensor of the right dtype); ``ints`` maps each
    name of :data:`FORWARD_INTS` to a Python int. Grid: ``cdiv(B, BLOCK_B)`` programs.
    """
    cfg = fit.forward
    pointers = _pointers(FORWARD_POINTERS, tensors)
    grid = (triton.cdiv(ints["B"], cfg.block_b),)
    resident_forward_kernel[grid](
        *pointers, *(ints[k] for k in FORWARD_INTS),
        **constexprs(kind, tensors["xg_ptr"].dtype, tf32, cfg), num_warps=cfg.num_warps,
    )
    record("resident", "forward")


def launch_backward(kind: str, tensors: dict, ints: dict, *, fit: fits.ResidentFit, tf32: bool) -> None:
    """One backward launch over the whole sequence (names of :data:`BACKWARD_POINTERS` /
    :data:`BACKWARD_INTS`)."""
    cfg = fit.backward
    pointers = _pointers(BACKWARD_POINTERS, tensors)
    grid = (triton.cdiv(ints["B"], cfg.block_b),)
    resident_backward_kernel[grid](
        *pointers, *(ints[k] for k in BACKWARD_INTS),
        **constexprs(kind, tensors["dxg_ptr"].dtype, tf32, cfg), num_warps=cfg.num_warps,
    )
    record("resident", "backward")
