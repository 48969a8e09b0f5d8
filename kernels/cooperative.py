"""Cooperative kernels: one layer-direction in one launch spread over the GPU's SMs.

The grid is ``(cdiv(H, BLOCK_H), groups)``, at most one program per SM in all, launched
with ``launch_cooperative_grid=True`` (the driver refuses a grid that cannot be
co-resident instead of letting it hang). Program ``(p, g)`` owns hidden units
``[p * BLOCK_H, (p + 1) * BLOCK_H)`` with *all* gates of those units, and the batch rows
of its group ``g``. Each cell update is local to one program; only the hidden state
(forward) and the gate gradients (backward) cross programs, through global memory, with
one grid barrier per step.

Two variants of each kernel (:func:`kernels_for`), chosen per launch from the batch size
(:func:`choose_config`, never from ``T``):

- **register** (``cooperative_*_registers_kernel``, ``CoopConfig.registers``): group ``g``
  is the one tile of rows ``[g * BLOCK_B, (g + 1) * BLOCK_B)`` and ``groups = cdiv(B,
  BLOCK_B)``, so each program owns the same rows for the whole launch and keeps their
  state in ACC registers across the time loop: the LSTM cell state ``c`` (and GRU's own
  ``h`` for its cell update) in forward, ``dh`` and ``dc`` in backward. Runs when that grid
  fits the SMs for one of the register row counts of
  :data:`fastrnn.kernels.fits.COOPERATIVE_REGISTERS` (16, 64); the smallest that fits.
- **tiled** (``cooperative_forward_kernel`` / ``cooperative_backward_kernel``): the
  fallback for larger batches. Group ``g`` is the ``BLOCK_B``-row tiles ``g, g + groups,
  ...`` (``groups`` > 1 only where SMs are left over, see :func:`grid`), so a program
  loops over tiles each step and its state cannot stay in registers: ``dh`` and ``dc``
  live in ``(B, H)`` fp32 buffers of which each program touches only its own tiles and
  columns (they start as ``dh_n`` / ``dc_n`` and end as ``dh0`` / ``dc0``), and the LSTM
  cell state of forward is read back from the ``c`` rows the program wrote one step
  before (the saved ``c`` sequence, or a ``(B, H)`` buffer without save).

Both call the same tile helpers (the GEMM against ``W_hh``, the cell update), so they
differ only in where the state lives.

Forward, per step ``t`` in processing order, each program, for its active rows::

    pre_g = h_{t-1} @ W_hh[g*H + units]^T (+ b_hh for GRU) + xg[t rows, g*H + units]
    cell forward (kernels/cells.py) -> h_t, c_t of its units     fp32 accumulation/state
    y[t rows, units] = h_t; gates / c / W_hn h + b_hn of its units -> saved rows (save)
    grid barrier: every program's h_t is in y before anyone reads it at t + 1

Backward, per step ``q`` in reverse processing order (``s`` is the step processed after
``q`` in forward)::

    dh[units] = dhg_s @ W_hh[:, units] (+ dh_s * z_s, GRU)      rows active at s
    dh_q = dh + dy[q rows, units]                                rows active at q
    cell backward (kernels/cells.py) -> dxg / dhg of q, dc      its units
    grid barrier: every program's dhg_q is written before the GEMM of the next step

and one more GEMM after the loop gives ``dh0``. The GEMMs are ``G`` dots of ``(BLOCK_B x
K) @ (K x BLOCK_H)``, one per gate (all gates of the program's units).

Where ``W_hh`` lives (``SLAB_K``; :data:`fastrnn.kernels.fits.COOPERATIVE` says which, from
compiling each candidate):

- ``SLAB_K > 0``: the program's slab (``G`` blocks of ``BLOCK_H x H``, padded to
  ``SLAB_K`` = the next power of two >= H) is loaded once before the time loop and stays
  on chip (shared memory / registers) for the whole launch;
- ``SLAB_K == 0``: the slab is streamed from global memory (L2) in ``BLOCK_K`` chunks
  inside each step, once per batch tile (once per step in the register variant); any
  ``H`` works. All slabs together are
  ``W_hh`` itself, which stays in L2 on the GPUs this targets.

The grid barrier (:func:`grid_barrier`): a CTA barrier, then one ``release`` atomic add
on a counter of its own per barrier (``sync[1 + i]``), then an ``acquire`` poll until the
counter equals the number of programs, bounded by ``timeout_us``. A counter per barrier
avoids the reuse race of a single counter polled for equality (a fast program moving the
counter past the value a slow one waits for). The counters are zeroed by the launcher as
a fresh zero-filled buffer (no host synchronisation). On timeout a program records the
failing barrier in ``sync[0]`` (first failure wins) and leaves its loop; every other
program then times out at the same or the next barrier, so a broken launch ends within
about two timeouts. The launcher reads ``sync[0]`` and raises
:class:`BarrierTimeout`; the triton backend then reruns the call on the step tier (or
raises, when this tier was forced).

Packed sequences: each step's active batch size and first row are read from the
schedule's int32 device tables (:meth:`fastrnn.schedule.Schedule.device_tables`, made once
per schedule); a padded batch passes ``packed = 0`` and the kernel computes ``B`` and
``t * B`` itself (no host-to-device copy, CUDA-graph friendly).

Compile-time choices: the variant, the cell kind, ``ACC``, ``PRECISION`` (TF32 or IEEE),
the block sizes and ``SLAB_K``; ``T``, ``B``, the direction, ``packed``, ``save`` and the barrier
arguments are runtime values (``do_not_specialize``). ``H`` is a runtime value too, but
Triton specialises it on divisibility by 16: with ``H % 16 == 0`` the rows of ``W_hh``,
``y`` and ``xg`` are known 16-byte aligned, so loads vectorise and the streamed ``W_hh``
chunks are software-pipelined (measured: otherwise every bf16 load was a scalar
``ld.global.b16`` and nothing was pipelined). On a GPU the tier therefore runs only
``H % 16 == 0`` (:func:`fastrnn.kernels.fits.cooperative_refusal`), the specialisation the
report compiles; Triton's interpreter runs any ``H``. :func:`specialisations` lists every
combination the launcher can pick, for the compile report.

Cost of the safety net: reading ``sync[0]`` after a launch is one host synchronisation
per launch (while a CUDA graph is being captured it becomes an asynchronous device
assertion instead, see :func:`_check_sync`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch
import triton
import triton.language as tl

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
from . import fits
from .fits import CoopConfig
from .launches import aligned_input  # noqa: F401 (used by the backend)
from .launches import checked_pointers as _pointers
from .launches import record

#: Time budget of one grid barrier, microseconds. A healthy step takes microseconds; the
#: budget only bounds how long a broken launch (a program that never arrives) runs.
BARRIER_TIMEOUT_US = 1_000_000

#: Tests set this to a program id that then never arrives at any barrier (-1: none).
ABSENT_PROGRAM = -1


class BarrierTimeout(RuntimeError):
    """A cooperative launch ended because a grid barrier timed out (its results are invalid)."""


# --------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------


@triton.jit
def grid_barrier(sync_ptr, index, absent, timeout_us):
    """Grid-wide barrier number ``index``; returns False (and flags ``sync[0]``) on timeout.

    ``timeout_us``: the time budget of the poll in microseconds (int32 up to ~35 minutes).

    ``sync_ptr``: int32, ``sync[0]`` the failure flag (0, or 1 + the first barrier that
    timed out), ``sync[1 + i]`` the arrival counter of barrier ``i`` (zero at launch).
    Every program of the (1-D or 2-D) grid arrives. ``absent``: the linear id of a program
    that skips its arrival (a test switch; -1 in normal use).
    """
    # Every thread's stores of this step are done before the one release below.
    tl.debug_barrier()
    counter = sync_ptr + 1 + index
    if tl.program_id(0) + tl.program_id(1) * tl.num_programs(0) != absent:
        tl.atomic_add(counter, 1, sem="release", scope="gpu")
    programs = tl.num_programs(0) * tl.num_programs(1)
    timeout_ns = timeout_us.to(tl.int64) * 1000
    arrived = tl.atomic_poll(counter, programs, sem="acquire", scope="gpu", timeout_ns=timeout_ns)
    tl.debug_barrier()
    if not arrived:
        tl.atomic_cas(sync_ptr, 0, index + 1, sem="relaxed", scope="gpu")
    return arrived


@triton.jit
def _step_rows(sizes_ptr, offsets_ptr, t, B, packed):
    """``(first row, active rows)`` of timestep ``t``, both int64.

    Packed: read from the schedule's int32 tables; padded (``packed == 0``): ``t * B``
    and ``B``, with no memory access.
    """
    is_packed = packed != 0
    bs = tl.load(sizes_ptr + t, mask=is_packed, other=B).to(tl.int64)
    off = tl.load(offsets_ptr + t, mask=is_packed, other=0).to(tl.int64)
    return tl.where(is_packed, off, t.to(tl.int64) * B), bs


@triton.jit
def _timestep(j, T, reverse):
    """Timestep processed ``j``-th: ``j``, or ``T - 1 - j`` for the reverse direction."""
    return j + reverse * (T - 1 - 2 * j)


@triton.jit
def _state_rows(seq_ptr, seq_off, n_seq, init_ptr, rows, width):
    """Pointer to the start of each row's state before a step (``seq`` and ``init`` have
    one dtype).

    Row ``r < n_seq`` continues from ``seq[seq_off + r]`` (the previous step's rows); other
    rows start from ``init[r]`` (the first step, or a sequence that starts later in the
    reverse direction of a packed batch). One pointer per row, so a tile is one load.
    """
    return tl.where(rows < n_seq, seq_ptr + (seq_off + rows) * width, init_ptr + rows * width)


@triton.jit
def _load_slab(w_hh_ptr, cols, col_mask, H, G: tl.constexpr, ACC: tl.constexpr, SLAB_K: tl.constexpr,
               FORWARD: tl.constexpr):
    """This program's ``W_hh`` slab, once: ``G`` tiles of ``SLAB_K x BLOCK_H`` (padding zero).

    ``FORWARD``: tile ``[k, u] = W_hh[g*H + u, k]`` (the GEMM ``h @ W_hh^T``); else
    ``[k, u] = W_hh[g*H + k, u]`` (the GEMM ``dgates @ W_hh``). Gates a kind lacks get the
    first tile again (never read). ``SLAB_K == 0`` (W_hh streamed): ``(1, 1)`` placeholders,
    never read.
    """
    w0 = tl.zeros((1, 1), dtype=ACC)
    w1 = w0
    w2 = w0
    w3 = w0
    if SLAB_K > 0:
        kk = tl.arange(0, SLAB_K)
        if FORWARD:
            w_ptrs = w_hh_ptr + cols[None, :] * H + kk[:, None]
        else:
            w_ptrs = w_hh_ptr + kk[:, None] * H + cols[None, :]
        w_mask = (kk < H)[:, None] & col_mask[None, :]
        w0 = tl.load(w_ptrs, mask=w_mask, other=0.0)
        w1 = w0
        w2 = w0
        w3 = w0
        if G > 1:
            w1 = tl.load(w_ptrs + H * H, mask=w_mask, other=0.0)
            w2 = tl.load(w_ptrs + 2 * H * H, mask=w_mask, other=0.0)
        if G > 3:
            w3 = tl.load(w_ptrs + 3 * H * H, mask=w_mask, other=0.0)
    return w0, w1, w2, w3


@triton.jit
def _forward_gemm(h_rows, row_mask, w_hh_ptr, cols, col_mask, w0, w1, w2, w3, H,
                  G: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SLAB_K: tl.constexpr):
    """``h_{t-1} @ W_hh[g*H + units]^T`` for each gate ``g``: ``G`` (of 4) ``BLOCK_B x BLOCK_H``
    ACC tiles (the unused ones zero). ``h_rows``: a pointer to each row's ``h_{t-1}``
    (:func:`_state_rows`); ``w0..w3``: the slab (``SLAB_K > 0``), else streamed here."""
    acc0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    acc1 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    acc2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    acc3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    if SLAB_K > 0:
        kk = tl.arange(0, SLAB_K)
        h = tl.load(h_rows[:, None] + kk[None, :], mask=row_mask[:, None] & (kk < H)[None, :], other=0.0)
        acc0 = tl.dot(h, w0, acc0, input_precision=PRECISION)
        if G > 1:
            acc1 = tl.dot(h, w1, acc1, input_precision=PRECISION)
            acc2 = tl.dot(h, w2, acc2, input_precision=PRECISION)
        if G > 3:
            acc3 = tl.dot(h, w3, acc3, input_precision=PRECISION)
    else:
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_in = ks < H
            h = tl.load(h_rows[:, None] + ks[None, :], mask=row_mask[:, None] & k_in[None, :], other=0.0)
            # W_hh^T chunk of gate g: [k, u] = W_hh[g*H + u, k].
            w_ptrs = w_hh_ptr + cols[None, :] * H + ks[:, None]
            w_mask = k_in[:, None] & col_mask[None, :]
            acc0 = tl.dot(h, tl.load(w_ptrs, mask=w_mask, other=0.0), acc0, input_precision=PRECISION)
            if G > 1:
                w = tl.load(w_ptrs + H * H, mask=w_mask, other=0.0)
                acc1 = tl.dot(h, w, acc1, input_precision=PRECISION)
                w = tl.load(w_ptrs + 2 * H * H, mask=w_mask, other=0.0)
                acc2 = tl.dot(h, w, acc2, input_precision=PRECISION)
            if G > 3:
                w = tl.load(w_ptrs + 3 * H * H, mask=w_mask, other=0.0)
                acc3 = tl.dot(h, w, acc3, input_precision=PRECISION)
    return acc0, acc1, acc2, acc3


@triton.jit
def _forward_cell(xg_ptr, y_ptr, gates_ptr, hn_ptr, off, rows, cols, mask, acc0, acc1, acc2, acc3,
                  b_r, b_z, b_n, c_prev, h_prev, H, save, KIND: tl.constexpr, ACC: tl.constexpr):
    """The cell update of one tile (kernels/cells.py) from its recurrent pre-activations:
    writes ``y`` (and, with ``save``, the gates / GRU's ``W_hn h + b_hn``) of the rows of
    ``mask``; returns ``(h_t, c_t)`` (``c_t``: ``c_prev`` unless LSTM). ``c_prev`` (LSTM)
    and ``h_prev`` (GRU): this tile's state before the step, ACC."""
    G: tl.constexpr = 4 if KIND == 0 else (3 if KIND == 1 else 1)
    GH = G * H
    x_ptrs = xg_ptr + (off + rows)[:, None] * GH + cols[None, :]
    g_ptrs = gates_ptr + (off + rows)[:, None] * GH + cols[None, :]
    c = c_prev
    if KIND == 0:
        i, f, g, o, c, h_new = lstm_forward(
            acc0 + tl.load(x_ptrs, mask=mask, other=0.0).to(ACC),
            acc1 + tl.load(x_ptrs + H, mask=mask, other=0.0).to(ACC),
            acc2 + tl.load(x_ptrs + 2 * H, mask=mask, other=0.0).to(ACC),
            acc3 + tl.load(x_ptrs + 3 * H, mask=mask, other=0.0).to(ACC),
            c_prev,
        )
        if save != 0:
            ty = gates_ptr.dtype.element_ty
            tl.store(g_ptrs, i.to(ty), mask=mask)
            tl.store(g_ptrs + H, f.to(ty), mask=mask)
            tl.store(g_ptrs + 2 * H, g.to(ty), mask=mask)
            tl.store(g_ptrs + 3 * H, o.to(ty), mask=mask)
    elif KIND == 1:
        hn = acc2 + b_n
        r, z, n, h_new = gru_forward(
            tl.load(x_ptrs, mask=mask, other=0.0).to(ACC),
            tl.load(x_ptrs + H, mask=mask, other=0.0).to(ACC),
            tl.load(x_ptrs + 2 * H, mask=mask, other=0.0).to(ACC),
            acc0 + b_r,
            acc1 + b_z,
            hn,
            h_prev,
        )
        if save != 0:
            ty = gates_ptr.dtype.element_ty
            tl.store(g_ptrs, r.to(ty), mask=mask)
            tl.store(g_ptrs + H, z.to(ty), mask=mask)
            tl.store(g_ptrs + 2 * H, n.to(ty), mask=mask)
            hn_ptrs = hn_ptr + (off + rows)[:, None] * H + cols[None, :]
            tl.store(hn_ptrs, hn.to(hn_ptr.dtype.element_ty), mask=mask)
    elif KIND == 2:
        h_new = rnn_tanh_forward(acc0 + tl.load(x_ptrs, mask=mask, other=0.0).to(ACC))
    else:
        h_new = rnn_relu_forward(acc0 + tl.load(x_ptrs, mask=mask, other=0.0).to(ACC))
    tl.store(y_ptr + (off + rows)[:, None] * H + cols[None, :], h_new.to(y_ptr.dtype.element_ty), mask=mask)
    return h_new, c


@triton.jit
def _backward_gemm(dhg_ptr, s_off, rows, s_rows, w_hh_ptr, cols, col_mask, w0, w1, w2, w3, H,
                   G: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SLAB_K: tl.constexpr):
    """``dhg_s @ W_hh[:, units]`` for the rows active at step ``s`` (first row ``s_off``;
    zero for the others): one ``BLOCK_B x BLOCK_H`` ACC tile. ``w0..w3``: the slab
    (``SLAB_K > 0``), else streamed here."""
    GH = G * H
    acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    dg_ptrs = dhg_ptr + (s_off + rows)[:, None] * GH
    if SLAB_K > 0:
        kk = tl.arange(0, SLAB_K)
        a_mask = s_rows[:, None] & (kk < H)[None, :]
        acc = tl.dot(tl.load(dg_ptrs + kk[None, :], mask=a_mask, other=0.0), w0, acc, input_precision=PRECISION)
        if G > 1:
            a = tl.load(dg_ptrs + H + kk[None, :], mask=a_mask, other=0.0)
            acc = tl.dot(a, w1, acc, input_precision=PRECISION)
            a = tl.load(dg_ptrs + 2 * H + kk[None, :], mask=a_mask, other=0.0)
            acc = tl.dot(a, w2, acc, input_precision=PRECISION)
        if G > 3:
            a = tl.load(dg_ptrs + 3 * H + kk[None, :], mask=a_mask, other=0.0)
            acc = tl.dot(a, w3, acc, input_precision=PRECISION)
    else:
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_in = ks < H
            a_mask = s_rows[:, None] & k_in[None, :]
            # W_hh chunk of gate g: [k, u] = W_hh[g*H + k, u].
            w_ptrs = w_hh_ptr + ks[:, None] * H + cols[None, :]
            w_mask = k_in[:, None] & col_mask[None, :]
            for gate in tl.static_range(G):
                a = tl.load(dg_ptrs + gate * H + ks[None, :], mask=a_mask, other=0.0)
                w = tl.load(w_ptrs + gate * H * H, mask=w_mask, other=0.0)
                acc = tl.dot(a, w, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _backward_cell(dh_q, dc, q_off, p_off, p_bs, rows, cols, q_mask, dxg_ptr, dhg_ptr, gates_ptr, c_ptr, c0_ptr,
                   hn_ptr, y_ptr, h0_ptr, H, KIND: tl.constexpr, ACC: tl.constexpr):
    """Gate backward of step ``q`` for one tile (kernels/cells.py), from ``dh_q`` (the total
    gradient reaching ``h_q``) and, LSTM, ``dc`` (reaching ``c_q``): writes ``dxg`` (and
    GRU's ``dhg``) of the rows of ``q_mask``; returns ``(dc_prev, dh_direct)``: LSTM's
    gradient reaching ``c_{q-1}`` (else ``dc``) and GRU's ``dh_q * z_q`` (else ``dh_q``).
    ``p``: the step processed before ``q`` (``p_bs`` 0: every row starts from the initial
    state)."""
    G: tl.constexpr = 4 if KIND == 0 else (3 if KIND == 1 else 1)
    GH = G * H
    g_ptrs = gates_ptr + (q_off + rows)[:, None] * GH + cols[None, :]
    dx_ptrs = dxg_ptr + (q_off + rows)[:, None] * GH + cols[None, :]
    ty = dxg_ptr.dtype.element_ty
    dc_prev = dc
    dh_direct = dh_q
    if KIND == 0:
        c_rows = _state_rows(c_ptr, p_off, p_bs, c0_ptr, rows, H)
        c_prev = tl.load(c_rows[:, None] + cols[None, :], mask=q_mask, other=0.0).to(ACC)
        di, df, dg, do, dc_prev = lstm_backward(
            dh_q,
            dc,
            tl.load(g_ptrs, mask=q_mask, other=0.0).to(ACC),
            tl.load(g_ptrs + H, mask=q_mask, other=0.0).to(ACC),
            tl.load(g_ptrs + 2 * H, mask=q_mask, other=0.0).to(ACC),
            tl.load(g_ptrs + 3 * H, mask=q_mask, other=0.0).to(ACC),
            tl.load(c_ptr + (q_off + rows)[:, None] * H + cols[None, :], mask=q_mask, other=0.0).to(ACC),
            c_prev,
        )
        tl.store(dx_ptrs, di.to(ty), mask=q_mask)
        tl.store(dx_ptrs + H, df.to(ty), mask=q_mask)
        tl.store(dx_ptrs + 2 * H, dg.to(ty), mask=q_mask)
        tl.store(dx_ptrs + 3 * H, do.to(ty), mask=q_mask)
    elif KIND == 1:
        h_rows = _state_rows(y_ptr, p_off, p_bs, h0_ptr, rows, H)
        h_prev = tl.load(h_rows[:, None] + cols[None, :], mask=q_mask, other=0.0).to(ACC)
        dr, dz, dn, dhn, dh_direct = gru_backward(
            dh_q,
            tl.load(g_ptrs, mask=q_mask, other=0.0).to(ACC),
            tl.load(g_ptrs + H, mask=q_mask, other=0.0).to(ACC),
            tl.load(g_ptrs + 2 * H, mask=q_mask, other=0.0).to(ACC),
            tl.load(hn_ptr + (q_off + rows)[:, None] * H + cols[None, :], mask=q_mask, other=0.0).to(ACC),
            h_prev,
        )
        tl.store(dx_ptrs, dr.to(ty), mask=q_mask)
        tl.store(dx_ptrs + H, dz.to(ty), mask=q_mask)
        tl.store(dx_ptrs + 2 * H, dn.to(ty), mask=q_mask)
        dhg_ptrs = dhg_ptr + (q_off + rows)[:, None] * GH + cols[None, :]
        tl.store(dhg_ptrs, dr.to(ty), mask=q_mask)
        tl.store(dhg_ptrs + H, dz.to(ty), mask=q_mask)
        tl.store(dhg_ptrs + 2 * H, dhn.to(ty), mask=q_mask)
    elif KIND == 2:
        h = tl.load(y_ptr + (q_off + rows)[:, None] * H + cols[None, :], mask=q_mask, other=0.0).to(ACC)
        tl.store(dx_ptrs, rnn_tanh_backward(dh_q, h).to(ty), mask=q_mask)
    else:
        h = tl.load(y_ptr + (q_off + rows)[:, None] * H + cols[None, :], mask=q_mask, other=0.0).to(ACC)
        tl.store(dx_ptrs, rnn_relu_backward(dh_q, h).to(ty), mask=q_mask)
    return dc_prev, dh_direct


@triton.jit
def _backward_steps(sizes_ptr, offsets_ptr, j, T, B, reverse, packed):
    """``(q_off, q_bs, s_off, s_bs, p_off, p_bs)`` of backward iteration ``j``: ``q`` the
    step whose gate backward runs (processing index ``j``; none when ``j == -1``), ``s``
    the step processed after it in forward (its gate gradients feed the GEMM), ``p`` the
    one processed before it. Processing indices are clamped into ``[0, T)`` before
    reading the schedule; a step that does not exist gets 0 rows."""
    zero = (B * 0).to(tl.int64)
    q_off, q_bs = _step_rows(sizes_ptr, offsets_ptr, _timestep(tl.maximum(j, 0), T, reverse), B, packed)
    s_off, s_bs = _step_rows(sizes_ptr, offsets_ptr, _timestep(tl.minimum(j + 1, T - 1), T, reverse), B, packed)
    p_off, p_bs = _step_rows(sizes_ptr, offsets_ptr, _timestep(tl.maximum(j - 1, 0), T, reverse), B, packed)
    q_bs = tl.where(j >= 0, q_bs, zero)
    s_bs = tl.where(j + 1 < T, s_bs, zero)
    p_bs = tl.where(j >= 1, p_bs, zero)
    return q_off, q_bs, s_off, s_bs, p_off, p_bs


# --------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["T", "B", "reverse", "packed", "save", "timeout_us", "absent"])
def cooperative_forward_kernel(
    xg_ptr,  # (N, G*H) input projection, rows grouped by timestep
    w_hh_ptr,  # (G*H, H) recurrent weight
    b_hh_ptr,  # (G*H,) recurrent bias (GRU only; zeros when the layer has none)
    h0_ptr,  # (B, H) initial hidden state
    c0_ptr,  # (B, H) ACC initial cell state (LSTM)
    y_ptr,  # (N, H) out: h of every step (read back at the next step by every program)
    c_ptr,  # ACC out, LSTM: (N, H) c of every step with save, else a (B, H) buffer (see the kernels)
    gates_ptr,  # (N, G*H) out (save): LSTM i,f,g,o / GRU r,z,n
    hn_ptr,  # (N, H) out (save, GRU): W_hn h + b_hn
    sizes_ptr,  # (T,) int32 active rows of each step (packed only)
    offsets_ptr,  # (T,) int32 first row of each step (packed only)
    sync_ptr,  # (1 + T,) int32, zero at launch: failure flag, one counter per barrier
    T,  # timesteps
    B,  # batch size (rows of h0)
    H,  # hidden size
    reverse,  # 1: process t = T-1 .. 0
    packed,  # 1: per-step rows from sizes_ptr / offsets_ptr; 0: every step has B rows
    save,  # 1: write gates / c / hn of every step for backward
    timeout_us,  # time budget of each grid barrier, microseconds
    absent,  # test switch: this program never arrives at a barrier (-1: none)
    KIND: tl.constexpr,  # 0 LSTM, 1 GRU, 2 RNN tanh, 3 RNN relu
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 I/O
    PRECISION: tl.constexpr,  # tl.dot input precision: "ieee" or "tf32"
    BLOCK_B: tl.constexpr,  # rows per tile
    BLOCK_H: tl.constexpr,  # hidden units per program
    BLOCK_K: tl.constexpr,  # reduction chunk when streaming W_hh (SLAB_K == 0)
    SLAB_K: tl.constexpr,  # > 0: W_hh slab loaded once, padded to SLAB_K >= H
):
    """The tiled forward: program ``(p, g)`` loops over the batch tiles ``g, g + groups, ...``
    each step; the LSTM cell state goes through ``c_ptr`` (the saved sequence, or a
    ``(B, H)`` state buffer without ``save``)."""
    G: tl.constexpr = 4 if KIND == 0 else (3 if KIND == 1 else 1)
    cols = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    w0, w1, w2, w3 = _load_slab(w_hh_ptr, cols, col_mask, H, G, ACC, SLAB_K, True)
    b_r, b_z, b_n = gru_hidden_bias(b_hh_ptr, cols, col_mask, H, KIND, ACC, BLOCK_H)

    prev_off = (B * 0).to(tl.int64)  # first row of the previous step
    n_prev = (B * 0).to(tl.int64)  # its active rows (0: every row starts from h0)
    ok = T >= 0
    j = 0
    while (j < T) & ok:
        off, bs = _step_rows(sizes_ptr, offsets_ptr, _timestep(j, T, reverse), B, packed)
        c_prev_off = prev_off * save  # c rows: the saved sequence, or the (B, H) buffer
        c_out_off = off * save
        for b0 in range(tl.program_id(1) * BLOCK_B, bs, tl.num_programs(1) * BLOCK_B):
            rows = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
            row_mask = rows < bs
            mask = row_mask[:, None] & col_mask[None, :]
            h_rows = _state_rows(y_ptr, prev_off, n_prev, h0_ptr, rows, H)
            acc0, acc1, acc2, acc3 = _forward_gemm(h_rows, row_mask, w_hh_ptr, cols, col_mask, w0, w1, w2, w3, H,
                                                   G, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K, SLAB_K)
            c_prev = acc0
            h_prev = acc0
            if KIND == 0:
                c_rows = _state_rows(c_ptr, c_prev_off, n_prev, c0_ptr, rows, H)
                c_prev = tl.load(c_rows[:, None] + cols[None, :], mask=mask, other=0.0)
            if KIND == 1:
                h_prev = tl.load(h_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            h_new, c = _forward_cell(xg_ptr, y_ptr, gates_ptr, hn_ptr, off, rows, cols, mask, acc0, acc1, acc2, acc3,
                                     b_r, b_z, b_n, c_prev, h_prev, H, save, KIND, ACC)
            if KIND == 0:
                c_ptrs = c_ptr + (c_out_off + rows)[:, None] * H + cols[None, :]
                tl.store(c_ptrs, c.to(c_ptr.dtype.element_ty), mask=mask)

        if j + 1 < T:
            ok = grid_barrier(sync_ptr, j, absent, timeout_us)
        prev_off = off
        n_prev = bs
        j += 1


@triton.jit(do_not_specialize=["T", "B", "reverse", "packed", "save", "timeout_us", "absent"])
def cooperative_forward_registers_kernel(
    xg_ptr, w_hh_ptr, b_hh_ptr, h0_ptr, c0_ptr, y_ptr,
    c_ptr,  # ACC out, LSTM: (N, H) c of every step with save, else (B, H): c_n, written once at the end
    gates_ptr, hn_ptr, sizes_ptr, offsets_ptr, sync_ptr,
    T, B, H, reverse, packed, save, timeout_us, absent,
    KIND: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,  # rows per program: all the rows of its group (B <= groups * BLOCK_B)
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SLAB_K: tl.constexpr,
):
    """The register forward (arguments as :func:`cooperative_forward_kernel`): program
    ``(p, g)`` owns rows ``[g * BLOCK_B, (g + 1) * BLOCK_B)`` for the whole launch, so
    the LSTM cell state (and GRU's own ``h``, for its cell update) of its rows and units
    stays in ACC registers across the time loop."""
    G: tl.constexpr = 4 if KIND == 0 else (3 if KIND == 1 else 1)
    cols = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    w0, w1, w2, w3 = _load_slab(w_hh_ptr, cols, col_mask, H, G, ACC, SLAB_K, True)
    b_r, b_z, b_n = gru_hidden_bias(b_hh_ptr, cols, col_mask, H, KIND, ACC, BLOCK_H)

    first = tl.program_id(1) * BLOCK_B
    rows = first + tl.arange(0, BLOCK_B).to(tl.int64)
    state_mask = (rows < B)[:, None] & col_mask[None, :]
    state_offs = rows[:, None] * H + cols[None, :]
    # This program's state (padding columns stay 0). A row keeps its value while it is not
    # active: a finished sequence its last state, a later-starting one its initial state.
    c = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    h = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    if KIND == 0:
        c = tl.load(c0_ptr + state_offs, mask=state_mask, other=0.0).to(ACC)
    if KIND == 1:
        h = tl.load(h0_ptr + state_offs, mask=state_mask, other=0.0).to(ACC)

    prev_off = (B * 0).to(tl.int64)  # first row of the previous step
    n_prev = (B * 0).to(tl.int64)  # its active rows (0: every row starts from h0)
    ok = T >= 0
    j = 0
    while (j < T) & ok:
        off, bs = _step_rows(sizes_ptr, offsets_ptr, _timestep(j, T, reverse), B, packed)
        if first < bs:  # else no row of this program is active at this step
            row_mask = rows < bs
            mask = row_mask[:, None] & col_mask[None, :]
            h_rows = _state_rows(y_ptr, prev_off, n_prev, h0_ptr, rows, H)
            acc0, acc1, acc2, acc3 = _forward_gemm(h_rows, row_mask, w_hh_ptr, cols, col_mask, w0, w1, w2, w3, H,
                                                   G, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K, SLAB_K)
            h_new, c_new = _forward_cell(xg_ptr, y_ptr, gates_ptr, hn_ptr, off, rows, cols, mask, acc0, acc1, acc2,
                                         acc3, b_r, b_z, b_n, c, h, H, save, KIND, ACC)
            if KIND == 0:
                c = tl.where(mask, c_new, c)
                if save != 0:
                    c_ptrs = c_ptr + (off + rows)[:, None] * H + cols[None, :]
                    tl.store(c_ptrs, c_new.to(c_ptr.dtype.element_ty), mask=mask)
            if KIND == 1:
                h = tl.where(mask, h_new, h)

        if j + 1 < T:
            ok = grid_barrier(sync_ptr, j, absent, timeout_us)
        prev_off = off
        n_prev = bs
        j += 1
    if KIND == 0:
        if save == 0:
            tl.store(c_ptr + state_offs, c.to(c_ptr.dtype.element_ty), mask=state_mask)


# --------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["T", "B", "reverse", "packed", "timeout_us", "absent"])
def cooperative_backward_kernel(
    w_hh_ptr,  # (G*H, H) recurrent weight
    dxg_ptr,  # (N, G*H) out: gradient of the input projection
    dhg_ptr,  # (N, G*H) out: gradient of h @ W_hh^T + b_hh (GRU; else dxg_ptr itself)
    dy_ptr,  # (N, H) gradient of the output sequence
    dh_ptr,  # (B, H) ACC: dh_n in, dh0 out; each program touches its own columns
    dc_ptr,  # (B, H) ACC: dc_n in, dc0 out (LSTM)
    gates_ptr,  # (N, G*H) saved gate activations
    c_ptr,  # (N, H) ACC saved cell states (LSTM)
    c0_ptr,  # (B, H) ACC initial cell state (LSTM)
    hn_ptr,  # (N, H) saved W_hn h + b_hn (GRU)
    y_ptr,  # (N, H) output sequence (GRU: previous state; RNN: activation derivative)
    h0_ptr,  # (B, H) initial hidden state (GRU)
    sizes_ptr,  # (T,) int32 active rows of each step (packed only)
    offsets_ptr,  # (T,) int32 first row of each step (packed only)
    sync_ptr,  # (1 + T,) int32, zero at launch: failure flag, one counter per barrier
    T,
    B,
    H,
    reverse,
    packed,
    timeout_us,
    absent,
    KIND: tl.constexpr,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SLAB_K: tl.constexpr,
):
    """The tiled backward: program ``(p, g)`` loops over the batch tiles ``g, g + groups, ...``
    each step; ``dh`` and ``dc`` go through the ``(B, H)`` buffers ``dh_ptr`` / ``dc_ptr``."""
    G: tl.constexpr = 4 if KIND == 0 else (3 if KIND == 1 else 1)
    cols = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    w0, w1, w2, w3 = _load_slab(w_hh_ptr, cols, col_mask, H, G, ACC, SLAB_K, False)

    ok = T >= 0
    j = T - 1  # processing index of step q; j == -1: only the final GEMM (dh0)
    while (j >= -1) & ok:
        q_off, q_bs, s_off, s_bs, p_off, p_bs = _backward_steps(sizes_ptr, offsets_ptr, j, T, B, reverse, packed)
        for b0 in range(tl.program_id(1) * BLOCK_B, tl.maximum(q_bs, s_bs), tl.num_programs(1) * BLOCK_B):
            rows = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
            s_rows = rows < s_bs
            q_rows = rows < q_bs
            s_mask = s_rows[:, None] & col_mask[None, :]
            q_mask = q_rows[:, None] & col_mask[None, :]
            any_mask = s_mask | q_mask
            dh_ptrs = dh_ptr + rows[:, None] * H + cols[None, :]
            # dh_n (a sequence's last step), the GRU path dh_s * z_s, or a finished dh0.
            dh_old = tl.load(dh_ptrs, mask=any_mask, other=0.0)
            acc = _backward_gemm(dhg_ptr, s_off, rows, s_rows, w_hh_ptr, cols, col_mask, w0, w1, w2, w3, H,
                                 G, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K, SLAB_K)
            if KIND == 1:
                acc += dh_old
            dh = tl.where(s_rows[:, None], acc, dh_old)
            dh_q = dh + tl.load(dy_ptr + (q_off + rows)[:, None] * H + cols[None, :], mask=q_mask, other=0.0).to(ACC)
            dc = dh_q
            dc_ptrs = dc_ptr + rows[:, None] * H + cols[None, :]
            if KIND == 0:
                dc = tl.load(dc_ptrs, mask=q_mask, other=0.0).to(ACC)
            dc_prev, dh_direct = _backward_cell(dh_q, dc, q_off, p_off, p_bs, rows, cols, q_mask, dxg_ptr, dhg_ptr,
                                                gates_ptr, c_ptr, c0_ptr, hn_ptr, y_ptr, h0_ptr, H, KIND, ACC)
            if KIND == 0:
                tl.store(dc_ptrs, dc_prev.to(dc_ptr.dtype.element_ty), mask=q_mask)
            dh_keep = dh
            if KIND == 1:
                # Rows of q carry dh_q * z_q to the GEMM of the next iteration (same rows).
                dh_keep = tl.where(q_rows[:, None], dh_direct, dh)
            tl.store(dh_ptrs, dh_keep.to(dh_ptr.dtype.element_ty), mask=any_mask)

        if j >= 0:
            ok = grid_barrier(sync_ptr, T - 1 - j, absent, timeout_us)
        j -= 1


@triton.jit(do_not_specialize=["T", "B", "reverse", "packed", "timeout_us", "absent"])
def cooperative_backward_registers_kernel(
    w_hh_ptr, dxg_ptr, dhg_ptr, dy_ptr,
    dh_ptr,  # (B, H) ACC: dh_n in, dh0 out (read once before the loop, written once after it)
    dc_ptr,  # (B, H) ACC: dc_n in, dc0 out (LSTM; likewise)
    gates_ptr, c_ptr, c0_ptr, hn_ptr, y_ptr, h0_ptr, sizes_ptr, offsets_ptr, sync_ptr,
    T, B, H, reverse, packed, timeout_us, absent,
    KIND: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,  # rows per program: all the rows of its group (B <= groups * BLOCK_B)
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SLAB_K: tl.constexpr,
):
    """The register backward (arguments as :func:`cooperative_backward_kernel`): program
    ``(p, g)`` owns rows ``[g * BLOCK_B, (g + 1) * BLOCK_B)`` for the whole launch, so
    ``dh`` and ``dc`` of its rows and units stay in ACC registers across the time loop."""
    G: tl.constexpr = 4 if KIND == 0 else (3 if KIND == 1 else 1)
    cols = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    w0, w1, w2, w3 = _load_slab(w_hh_ptr, cols, col_mask, H, G, ACC, SLAB_K, False)

    first = tl.program_id(1) * BLOCK_B
    rows = first + tl.arange(0, BLOCK_B).to(tl.int64)
    state_mask = (rows < B)[:, None] & col_mask[None, :]
    state_offs = rows[:, None] * H + cols[None, :]
    # dh: dh_n, then (a row at a time) the gradient reaching h of the step being processed,
    # GRU's dh * z between the cell and the next GEMM, finally dh0. Padding columns stay 0.
    dh = tl.load(dh_ptr + state_offs, mask=state_mask, other=0.0).to(ACC)
    dc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    if KIND == 0:
        dc = tl.load(dc_ptr + state_offs, mask=state_mask, other=0.0).to(ACC)

    ok = T >= 0
    j = T - 1  # processing index of step q; j == -1: only the final GEMM (dh0)
    while (j >= -1) & ok:
        q_off, q_bs, s_off, s_bs, p_off, p_bs = _backward_steps(sizes_ptr, offsets_ptr, j, T, B, reverse, packed)
        if first < tl.maximum(q_bs, s_bs):  # else no row of this program is active at q or s
            s_rows = rows < s_bs
            q_rows = rows < q_bs
            s_mask = s_rows[:, None] & col_mask[None, :]
            q_mask = q_rows[:, None] & col_mask[None, :]
            acc = _backward_gemm(dhg_ptr, s_off, rows, s_rows, w_hh_ptr, cols, col_mask, w0, w1, w2, w3, H,
                                 G, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K, SLAB_K)
            if KIND == 1:
                acc += dh
            dh = tl.where(s_mask, acc, dh)
            dh_q = dh + tl.load(dy_ptr + (q_off + rows)[:, None] * H + cols[None, :], mask=q_mask, other=0.0).to(ACC)
            dc_prev, dh_direct = _backward_cell(dh_q, dc, q_off, p_off, p_bs, rows, cols, q_mask, dxg_ptr, dhg_ptr,
                                                gates_ptr, c_ptr, c0_ptr, hn_ptr, y_ptr, h0_ptr, H, KIND, ACC)
            if KIND == 0:
                dc = tl.where(q_mask, dc_prev, dc)
            if KIND == 1:
                # Rows of q carry dh_q * z_q to the GEMM of the next iteration (same rows).
                dh = tl.where(q_mask, dh_direct, dh)

        if j >= 0:
            ok = grid_barrier(sync_ptr, T - 1 - j, absent, timeout_us)
        j -= 1
    tl.store(dh_ptr + state_offs, dh.to(dh_ptr.dtype.element_ty), mask=state_mask)
    if KIND == 0:
        tl.store(dc_ptr + state_offs, dc.to(dc_ptr.dtype.element_ty), mask=state_mask)


# --------------------------------------------------------------------------------------
# Launch choices (shared with the compile report so the two cannot drift)
# --------------------------------------------------------------------------------------


def cooperative_configs(dtype: torch.dtype, hidden: int, tf32: bool) -> tuple[CoopConfig, ...]:
    """The configurations for ``hidden`` units, the tiled one first, then its register
    variants (:func:`fastrnn.kernels.fits.cooperative_configs`)."""
    return fits.cooperative_configs(dtype, hidden, tf32)


def choose_config(configs, hidden: int, batch: int, max_programs: int) -> CoopConfig:
    """The configuration a launch of ``batch`` rows uses (:func:`fastrnn.kernels.fits.cooperative_variant`)."""
    return fits.cooperative_variant(configs, hidden, batch, max_programs)


def _precision(dtype: torch.dtype, tf32: bool) -> str:
    # TF32 only for fp32 and only when the user allowed it (cuDNN's rule for nn.LSTM).
    return fits.dot_precision(dtype, tf32)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def constexprs(kind: str, dtype: torch.dtype, tf32: bool, cfg: CoopConfig) -> dict:
    """Compile-time arguments of both kernels."""
    return dict(
        KIND=KIND_IDS[kind], ACC=_acc(dtype), PRECISION=_precision(dtype, tf32),
        BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k, SLAB_K=cfg.slab_k,
    )


# Pointer arguments in order, with what each holds: "io" (the layer's dtype), "acc" (fp32;
# fp64 for fp64 I/O) or "i32". Runtime integers are int32.
FORWARD_POINTERS = (
    ("xg_ptr", "io"), ("w_hh_ptr", "io"), ("b_hh_ptr", "io"), ("h0_ptr", "io"), ("c0_ptr", "acc"),
    ("y_ptr", "io"), ("c_ptr", "acc"), ("gates_ptr", "io"), ("hn_ptr", "io"), ("sizes_ptr", "i32"),
    ("offsets_ptr", "i32"), ("sync_ptr", "i32"),
)
FORWARD_INTS = ("T", "B", "H", "reverse", "packed", "save", "timeout_us", "absent")  # all int32
BACKWARD_POINTERS = (
    ("w_hh_ptr", "io"), ("dxg_ptr", "io"), ("dhg_ptr", "io"), ("dy_ptr", "io"), ("dh_ptr", "acc"),
    ("dc_ptr", "acc"), ("gates_ptr", "io"), ("c_ptr", "acc"), ("c0_ptr", "acc"), ("hn_ptr", "io"),
    ("y_ptr", "io"), ("h0_ptr", "io"), ("sizes_ptr", "i32"), ("offsets_ptr", "i32"), ("sync_ptr", "i32"),
)
BACKWARD_INTS = ("T", "B", "H", "reverse", "packed", "timeout_us", "absent")  # all int32
#: Options every cooperative launch (and every compile of the report) uses.
LAUNCH_OPTIONS = dict(launch_cooperative_grid=True, maxnreg=255)


class Specialisation(NamedTuple):
    """One compiled variant the launcher can choose: what the compile report compiles."""

    kernel: object
    kernel_name: str
    kind: str
    dtype: torch.dtype
    label: str
    config: CoopConfig
    constexprs: dict
    pointers: tuple  # ((name, "io" | "acc" | "i32"), ...)
    ints: tuple  # names of the int32 arguments
    options: dict  # compile options besides num_warps (num_stages, cooperative launch, maxnreg)
    divisible_by_16: tuple  # ints the launches specialise as multiples of 16


def configs_for(dtype: torch.dtype, tf32: bool) -> list[CoopConfig]:
    """Every configuration of :data:`fastrnn.kernels.fits.COOPERATIVE` and
    :data:`~fastrnn.kernels.fits.COOPERATIVE_REGISTERS` for ``dtype`` / ``tf32``."""
    key = (fits.dtype_name(dtype), _precision(dtype, tf32))
    tiled = [cfg for (name, precision, _), cfg in sorted(fits.COOPERATIVE.items()) if (name, precision) == key]
    registers = [cfg for (name, precision, *_), cfg in sorted(fits.COOPERATIVE_REGISTERS.items())
                 if (name, precision) == key]
    return tiled + registers


def kernels_for(cfg: CoopConfig) -> tuple:
    """``(forward kernel, backward kernel)`` of a configuration: the register kernels
    when ``cfg.registers``, else the tiled ones (one signature for both)."""
    if cfg.registers:
        return cooperative_forward_registers_kernel, cooperative_backward_registers_kernel
    return cooperative_forward_kernel, cooperative_backward_kernel


def kernel_names(cfg: CoopConfig) -> tuple[str, str]:
    """The report's names of :func:`kernels_for`."""
    prefix = "coop-reg" if cfg.registers else "coop"
    return f"{prefix}-forward", f"{prefix}-backward"


def specialisations(dtypes=(torch.float32, torch.float16, torch.bfloat16)) -> list[Specialisation]:
    """Every (kernel, kind, dtype, TF32, configuration) the launcher can pick."""
    out = []
    for dtype in dtypes:
        for tf32 in ((False, True) if dtype == torch.float32 else (False,)):
            name = fits.dtype_name(dtype) + ("-tf32" if tf32 else "")
            for kind in KIND_IDS:
                for cfg in configs_for(dtype, tf32):
                    ce = constexprs(kind, dtype, tf32, cfg)
                    options = dict(LAUNCH_OPTIONS, num_stages=cfg.num_stages)
                    (fwd, bwd), (fwd_name, bwd_name) = kernels_for(cfg), kernel_names(cfg)
                    out.append(Specialisation(fwd, fwd_name, kind, dtype, name, cfg, ce,
                                              FORWARD_POINTERS, FORWARD_INTS, options, ("H",)))
                    out.append(Specialisation(bwd, bwd_name, kind, dtype, name, cfg, ce,
                                              BACKWARD_POINTERS, BACKWARD_INTS, options, ("H",)))
    return out


_RELEASE_ADD = re.compile(r"\b(?:red|atom)\.[a-z0-9_.]*\brelease\b[a-z0-9_.]*\.add\.")
_ACQUIRE = re.compile(r"\bfence\.(?:acq_rel|acquire)\.gpu\b|\bld\.acquire\.gpu\b")


def barrier_ptx_problems(ptx: str) -> list[str]:
    """What is missing from a compiled cooperative kernel's PTX for :func:`grid_barrier` to
    be a release/acquire grid barrier with a time limit (empty: nothing).

    Checked: a GPU-scope release atomic add (the arrival), a read of ``%globaltimer``
    (the poll's time limit), a GPU-scope acquire (``fence.acq_rel.gpu`` on sm_80,
    ``fence.acquire.gpu`` on sm_90, or an acquire load) and a CTA barrier (``bar.sync``).
    """
    problems = []
    releases = [m.group(0) for m in _RELEASE_ADD.finditer(ptx)]
    if not any(".gpu." in r or r.startswith(("red.gpu", "atom.gpu")) for r in releases):
        problems.append("no gpu-scope release atomic add")
    if "%globaltimer" not in ptx:
        problems.append("no %globaltimer read (the poll has no time limit)")
    if not _ACQUIRE.search(ptx):
        problems.append("no gpu-scope acquire after the poll")
    if "bar.sync" not in ptx:
        problems.append("no CTA barrier (bar.sync)")
    return problems


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _check_sync(sync: torch.Tensor, what: str) -> None:
    """Raise :class:`BarrierTimeout` when a program of the launch flagged a timeout.

    Reading the flag waits for the launch (one host synchronisation per launch). While a
    CUDA graph is being captured the flag cannot be read; the check is then an
    asynchronous device assertion, which fails the graph's replay loudly instead.
    """
    if sync.is_cuda and torch.cuda.is_current_stream_capturing():
        torch._assert_async(sync[0] == 0, f"fastrnn: cooperative {what} kernel: a grid barrier timed out")
        return
    failed = int(sync[0].item())
    if failed:
        raise BarrierTimeout(
            f"fastrnn: the cooperative {what} kernel stopped at grid barrier {failed - 1}: a program did "
            f"not arrive within {BARRIER_TIMEOUT_US / 1e6:g} s (its results are discarded)"
        )


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


def launch_forward(kind: str, tensors: dict, ints: dict, cfg: CoopConfig, tf32: bool, max_programs: int) -> None:
    """One forward launch over all ``T`` steps; raises :class:`BarrierTimeout` on a timeout.

    ``tensors`` maps each name of :data:`FORWARD_POINTERS` to a contiguous, 16-byte aligned
    tensor (``sync_ptr``: int32 zeros, ``1 + T``); ``ints`` the names of
    :data:`FORWARD_INTS` except the barrier arguments, which come from this module.
    ``cfg``: a configuration of :func:`cooperative_configs` (the register kernel when
    ``cfg.registers``), recorded with the launch (:func:`fastrnn.kernels.launches.count_launches`).
    ``max_programs``: the SM count (one program per SM at most; see :func:`grid`).
    """
    _launch("forward", kind, tensors, ints, cfg, tf32, max_programs)


def launch_backward(kind: str, tensors: dict, ints: dict, cfg: CoopConfig, tf32: bool, max_programs: int) -> None:
    """As :func:`launch_forward`, for :data:`BACKWARD_POINTERS` / :data:`BACKWARD_INTS`."""
    _launch("backward", kind, tensors, ints, cfg, tf32, max_programs)


def _launch(direction: str, kind: str, tensors: dict, ints: dict, cfg: CoopConfig, tf32: bool,
            max_programs: int) -> None:
    forward = direction == "forward"
    names, int_names = (FORWARD_POINTERS, FORWARD_INTS) if forward else (BACKWARD_POINTERS, BACKWARD_INTS)
    io_dtype = tensors["xg_ptr" if forward else "dxg_ptr"].dtype
    ints = dict(ints, timeout_us=BARRIER_TIMEOUT_US, absent=ABSENT_PROGRAM)
    kernel = kernels_for(cfg)[0 if forward else 1]
    kernel[grid(ints["H"], ints["B"], cfg, max_programs)](
        *_pointers(names, tensors), *(ints[k] for k in int_names), **constexprs(kind, io_dtype, tf32, cfg),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **LAUNCH_OPTIONS,
    )
    record("cooperative", direction, cfg)
    _check_sync(tensors["sync_ptr"], direction)
