"""Triton backend: the time loops of :mod:`fastrnn.backends.base` as Triton kernels.

Three kernel tiers run a layer-direction (:func:`tier_for` picks one per launch):

- **step** (any size): one :func:`~fastrnn.kernels.recurrent_step.forward_stepper` launch
  per timestep (recurrent GEMM + input projection + activations + state update; ``h_t`` is
  written straight into the output rows of its step). Backward: one
  :func:`~fastrnn.kernels.recurrent_step.backward_stepper` launch per timestep (the
  recurrent GEMM of one step fused with the pointwise gate backward of the step before
  it); the last ``dh0 = dgates_first @ W_hh`` is a torch GEMM.
- **resident** (``W_hh`` fits one SM, no ``proj_size``; :mod:`fastrnn.kernels.fits`):
  one launch runs the whole forward time loop, one launch the whole backward loop
  (:mod:`fastrnn.kernels.resident`); ``h_n``, ``c_n``, ``dh0`` and ``dc0`` come out of the
  kernels.
- **cooperative** (larger ``H`` on a GPU, no ``proj_size``): one launch per pass spread
  over the SMs, ``cdiv(H, 16)`` programs with a grid barrier per step
  (:mod:`fastrnn.kernels.cooperative`), per group of batch rows. Where one tile of 16 or
  64 rows per program fits the SMs (``B <= 64 x floor(SMs / cdiv(H, 16))``), the
  register variant keeps ``c`` / ``dh`` / ``dc`` in registers; a larger batch runs the
  tiled variant (state in global buffers). :func:`_coop_launch_config` picks the variant
  per launch from ``B``; the launch counter records it. A barrier that times out makes
  the launch raise ``BarrierTimeout``; the call then reruns on the step tier with one
  warning (or the error propagates when ``FASTRNN_TIER=cooperative`` forced the tier).

LSTM with ``proj_size`` (step tier): the projection ``h_t = m_t @ W_hr^T`` is a torch
``mm`` per step after the step kernel (which writes ``m_t`` to a ``(B, H)`` buffer), and
in backward ``dh`` / ``dm = dh @ W_hr`` are torch ops per step before a pointwise step
kernel; the launch count per step stays one, but each step also runs these torch ops.

Precision: fp32 accumulation (fp64 for fp64 I/O); the LSTM cell state and the ``dh`` /
``dc`` state of backward are kept in that accumulation dtype whatever the I/O dtype;
gates are saved in the I/O dtype. fp32 GEMMs use TF32 only when
``torch.backends.cudnn.allow_tf32`` is on.

Saved for backward (the ``saved`` tuple, the same layout whatever tier ran, so every
tier's backward reads every tier's forward): LSTM ``(gates (N, 4H) i,f,g,o, c (N, H)
fp32)``; GRU ``(gates (N, 3H) r,z,n, W_hn h + b_hn (N, H))``; plain RNN nothing
(backward reads ``y``).

Tier choice (:func:`tier_for`): from the cell kind, ``H``, ``proj_size``, the dtype and
the device's shared memory per block and SM count, never from ``T`` or ``B`` (``B`` only
picks the cooperative tier's variant, above); ``FASTRNN_TIER`` forces one. First use: the
first time a persistent tier runs a (device, kind, dtype, block size) in a process, a
small problem is run through it (the cooperative tier: through each of its variants for
that layer) and through the step tier and compared (``FASTRNN_SELF_CHECK``); a mismatch
or a failure warns once and that key uses the step tier for the rest of the process.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from ..kinds import CellKind
from ..schedule import Schedule
from .base import BackwardResult, ForwardResult

name = "triton"

#: Tests switch this on to allocate every buffer the kernels write filled with NaN, so a
#: store a kernel skips shows up as NaN instead of stale memory.
FILL_NAN = False


def _kernels():
    from ..kernels import recurrent_step  # imports triton

    return recurrent_step


def _resident():
    from ..kernels import resident  # imports triton

    return resident


def _interpreted() -> bool:
    """True when the kernels are Triton interpreter objects (CPU execution)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_kernels().recurrent_step_forward_kernel, InterpretedFunction)


def unavailable_reason(device: torch.device) -> str | None:
    """Why this backend cannot run on ``device`` in this process, or None when it can.

    CUDA devices need a working CUDA runtime. CPU tensors only run when the kernels were
    created as Triton interpreter objects (the interpreter was switched on before
    ``fastrnn.kernels`` was first imported).
    """
    interpreted = _interpreted()
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available in this process"
        return None
    if device.type == "cpu":
        if interpreted:
            return None
        return "its kernels need a CUDA device; CPU tensors only run in Triton's interpreter"
    return f"no Triton kernels for device type {device.type!r}"


def _new(shape, dtype, device) -> torch.Tensor:
    if FILL_NAN:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tf32() -> bool:
    return bool(torch.backends.cudnn.allow_tf32)


def saved_layout(kind: CellKind, rows, hidden, dtype, save):
    """Shapes and dtypes of the ``saved`` tuple :func:`forward` returns (from sizes alone).

    The same for every kernel tier: the gates ``(N, G*H)``, then for a cell with a cell
    state (LSTM) ``c`` ``(N, H)`` in the accumulation dtype, else ``e`` ``(N, H)`` (GRU's
    ``W_hn h + b_hn``; a placeholder for a cell that saves none); plain RNN nothing.
    """
    if not save or kind.gates == 1:
        return []
    if kind.has_cell_state:
        return [((rows, kind.gates * hidden), dtype), ((rows, hidden), _acc_dtype(dtype))]
    return [((rows, kind.gates * hidden), dtype), ((rows, hidden), dtype)]


def _dummies(dtype: torch.dtype, device):
    """Placeholders for the pointer arguments a specialisation does not read, in the dtypes
    its signature expects: ``(I/O dtype, accumulation dtype)``."""
    return torch.empty(8, dtype=dtype, device=device), torch.empty(8, dtype=_acc_dtype(dtype), device=device)


def _gru_bias(kind: CellKind, b_hh, hidden: int, dtype, device, prep, dummy):
    """The recurrent bias the kernels add inside the step for a cell that keeps it apart
    (GRU; zeros for a layer without bias); a placeholder for the other cells (their
    ``b_hh`` is folded into ``xg``)."""
    if not kind.recurrent_apart:
        return dummy
    return prep(b_hh) if b_hh is not None else torch.zeros(kind.gates * hidden, dtype=dtype, device=device)


def _save_buffers(kind: CellKind, n_rows: int, hidden: int, dtype, device, save: bool, dummy):
    """``(gates, hn)`` the forward kernels fill when saving: activated gates ``(N, G*H)`` and
    GRU's ``W_hn h + b_hn`` ``(N, H)`` (placeholders otherwise). The LSTM cell-state
    buffer is tier-specific."""
    gates = _new((n_rows, kind.gates * hidden), dtype, device) if save else dummy
    hn = _new((n_rows, hidden), dtype, device) if (save and kind.saves_extra) else dummy
    return gates, hn


def _saved(kind: CellKind, save: bool, gates, c_seq, hn) -> tuple:
    """The ``saved`` tuple of every tier (:func:`saved_layout`)."""
    if not save or kind.gates == 1:
        return ()
    return (gates, c_seq) if kind.has_cell_state else (gates, hn)


def _grad_buffers(kind: CellKind, n_rows: int, hidden: int, dtype, device):
    """``(dxg, dhg)`` the backward kernels fill; one buffer unless GRU (whose recurrent-gate
    gradient differs from the input-projection one)."""
    dxg = _new((n_rows, kind.gates * hidden), dtype, device)
    return dxg, (_new((n_rows, kind.gates * hidden), dtype, device) if kind.recurrent_apart else dxg)


def _step_forward(kind: CellKind, xg, w_hh, b_hh, w_hr, h0, c0, schedule: Schedule, reverse: bool, save: bool):
    """The forward time loop on the step tier: one launch per timestep."""
    ks = _kernels()
    prep = ks.aligned_input
    dtype, device = xg.dtype, xg.device
    acc = _acc_dtype(dtype)
    hidden, state = w_hh.shape[0] // kind.gates, w_hh.shape[1]
    n_rows, batch = xg.shape[0], schedule.batch
    has_c = kind.has_cell_state
    save = save and (kind.saves_gates or kind.saves_extra or has_c)  # plain RNN backward only reads y
    proj = w_hr is not None

    xg, w_hh, h0 = prep(xg), prep(w_hh), prep(h0)
    dummy_io, dummy_acc = _dummies(dtype, device)
    y = _new((n_rows, state), dtype, device)
    gates, hn = _save_buffers(kind, n_rows, hidden, dtype, device, save, dummy_io)
    bias = _gru_bias(kind, b_hh, hidden, dtype, device, prep, dummy_io)
    if has_c:
        c0 = prep(c0)
        # With save, every step's c is kept; without, one (B, H) buffer updated in place
        # (rows < n_prev read it, new rows read c0; each row is written by its own program).
        c_buf = _new((n_rows, hidden) if save else (batch, hidden), acc, device)
    else:
        c0, c_buf = dummy_io, dummy_acc
    m_buf = _new((batch, hidden), dtype, device) if proj else None
    w_hr_t = w_hr.t() if proj else None

    tensors = dict(
        xg_ptr=xg, w_hh_ptr=w_hh, b_hh_ptr=bias, h_seq_ptr=y, h0_ptr=h0, out_ptr=m_buf if proj else y,
        c_prev_ptr=c_buf, c_init_ptr=c0, c_out_ptr=c_buf, gates_ptr=gates, extra_ptr=hn,
    )
    prev_off, n_prev = 0, 0
    launch = ks.forward_stepper(kind, tensors, hidden=hidden, save=save, tf32=_tf32())
    for t in schedule.order(reverse):
        off, bs = schedule.offsets[t], schedule.batch_sizes[t]
        ints = dict(
            off=off, bs=bs, prev_off=prev_off, n_prev=n_prev, out_off=0 if proj else off,
            c_prev_off=prev_off if save else 0, c_out_off=off if save else 0, H=hidden, P=state,
        )
        launch(ints)
        if proj:
            torch.mm(m_buf[:bs], w_hr_t, out=y[off : off + bs])
        prev_off, n_prev = off, bs

    c_n = None
    if has_c:
        c_n = (schedule.final(c_buf, reverse) if save else c_buf).to(dtype)
    saved = _saved(kind, save, gates, c_buf, hn)
    return ForwardResult(y, schedule.final(y, reverse), c_n, saved)


def _step_backward(kind: CellKind, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule,
                   reverse: bool):
    """The backward time loop on the step tier: one launch per timestep."""
    ks = _kernels()
    prep = ks.aligned_input
    dtype, device = y.dtype, y.device
    acc = _acc_dtype(dtype)
    gates_n = kind.gates
    hidden, state = w_hh.shape[0] // gates_n, w_hh.shape[1]
    n_rows = y.shape[0]
    has_c = kind.has_cell_state
    proj = w_hr is not None
    dummy_io, dummy_acc = _dummies(dtype, device)

    w_hh, y, dy, h0 = prep(w_hh), prep(y), prep(dy), prep(h0)
    # Unused pointer arguments get dummies of the dtype the kernel signature expects.
    gates, hn, c_seq = dummy_io, dummy_io, dummy_acc
    if has_c:
        gates, c_seq = saved
        c0 = prep(c0)
    else:
        c0 = dummy_io
        if saved:  # (gates, e): e a placeholder unless the cell saves it
            gates, hn = saved

    dxg, dhg = _grad_buffers(kind, n_rows, hidden, dtype, device)
    dh = dh_n.to(acc, copy=True).contiguous()  # (B, P) state buffer, becomes dh0
    dc = dc_n.to(acc, copy=True).contiguous() if has_c else dummy_acc
    dm = _new((dh.shape[0], hidden), acc, device) if proj else dummy_acc
    dh_seq = _new((n_rows, state), acc, device) if proj else None
    w_hh_acc = w_hh.to(acc)
    w_hr_acc = w_hr.to(acc) if proj else None

    tensors = dict(
        dr_ptr=dhg, w_hh_ptr=w_hh, dxg_ptr=dxg, dhg_ptr=dhg, dy_ptr=dy, dh_ptr=dh, dc_ptr=dc, dm_ptr=dm,
        gates_ptr=gates, c_seq_ptr=c_seq, c0_ptr=c0, extra_ptr=hn, h_seq_ptr=y, h0_ptr=h0,
    )
    order = list(schedule.order(reverse))  # forward processing order
    offsets, sizes = schedule.offsets, schedule.batch_sizes
    launch = ks.backward_stepper(kind, tensors, hidden=hidden, dm_given=proj, tf32=_tf32())
    for j in range(len(order) - 1, -1, -1):
        q = order[j]  # the step whose gate backward runs now
        s = order[j + 1] if j + 1 < len(order) else None  # the step processed after q
        p = order[j - 1] if j > 0 else None  # the step processed before q
        q_off, q_bs = offsets[q], sizes[q]
        s_off, s_bs = (offsets[s], sizes[s]) if s is not None else (0, 0)
        if proj:
            # dh (P wide) and dm = dh @ W_hr (H wide) are torch ops here; the kernel is
            # then pointwise only (DM_GIVEN).
            if s is not None:
                dh[:s_bs] = dxg[s_off : s_off + s_bs].to(acc) @ w_hh_acc
            dh[:q_bs] += dy[q_off : q_off + q_bs]
            dh_seq[q_off : q_off + q_bs] = dh[:q_bs]
            torch.mm(dh[:q_bs], w_hr_acc, out=dm[:q_bs])
        ints = dict(
            s_off=s_off, s_bs=s_bs, k_len=0 if (s is None or proj) else gates_n * hidden,
            q_off=q_off, q_bs=q_bs, q_prev_off=offsets[p] if p is not None else 0,
            q_n_prev=sizes[p] if p is not None else 0, H=hidden, P=state,
        )
        launch(ints)

    # dh0: the recurrent GEMM of the first processed step (rows of sequences that started
    # later in a packed reverse pass were finished by the kernels already), plus the
    # dh_direct the last launch left in its rows.
    lo, bs = offsets[order[0]], sizes[order[0]]
    direct = dh[:bs].clone() if kind.direct_h_grad else None
    dh[:bs] = dhg[lo : lo + bs].to(acc) @ w_hh_acc
    if direct is not None:
        dh[:bs] += direct

    dw_hr = None
    if proj:
        o = gates[:, 3 * hidden :].to(acc)
        dw_hr = (dh_seq.t() @ (o * torch.tanh(c_seq))).to(dtype)
    return BackwardResult(
        dxg, dhg, dh.to(dtype), dc.to(dtype) if has_c else None, dw_hr,
    )


# --------------------------------------------------------------------------------------
# Resident tier: one launch per pass
# --------------------------------------------------------------------------------------


def _step_tables(schedule: Schedule, device):
    """``(uniform_b, sizes, offsets)`` for the resident kernels: a padded batch passes its
    ``B`` and placeholder tensors (no host-to-device copy), a packed one its per-step
    batch sizes and first rows as int32 device tensors (made once per schedule)."""
    if schedule.is_uniform:
        dummy = torch.empty(8, dtype=torch.int32, device=device)
        return schedule.batch, dummy, dummy
    sizes, offsets = schedule.device_tables(device)
    return 0, sizes, offsets


def _resident_forward(kind: CellKind, xg, w_hh, b_hh, h0, c0, schedule: Schedule, reverse: bool, save: bool, fit):
    """The forward time loop on the resident tier: one launch."""
    rs = _resident()
    prep = rs.aligned_input
    dtype, device = xg.dtype, xg.device
    acc = _acc_dtype(dtype)
    hidden = w_hh.shape[1]
    n_rows, batch = xg.shape[0], schedule.batch
    has_c = kind.has_cell_state
    save = save and (kind.saves_gates or kind.saves_extra or has_c)  # plain RNN backward only reads y
    dummy_io, dummy_acc = _dummies(dtype, device)

    y = _new((n_rows, hidden), dtype, device)
    h_n = _new((batch, hidden), dtype, device)
    c_n = _new((batch, hidden), dtype, device) if has_c else dummy_io
    gates, hn_seq = _save_buffers(kind, n_rows, hidden, dtype, device, save, dummy_io)
    c_seq = _new((n_rows, hidden), acc, device) if (save and has_c) else dummy_acc
    bias = _gru_bias(kind, b_hh, hidden, dtype, device, prep, dummy_io)
    uniform_b, sizes, offsets = _step_tables(schedule, device)
    tensors = dict(
        xg_ptr=prep(xg), w_hh_ptr=prep(w_hh), b_hh_ptr=bias, h0_ptr=prep(h0),
        c0_ptr=prep(c0) if has_c else dummy_io, y_ptr=y, h_n_ptr=h_n, c_n_ptr=c_n, gates_ptr=gates,
        c_seq_ptr=c_seq, hn_seq_ptr=hn_seq, sizes_ptr=sizes, offsets_ptr=offsets,
    )
    ints = dict(T=schedule.steps, B=batch, uniform_b=uniform_b, reverse=int(reverse), save=int(save), H=hidden)
    rs.launch_forward(kind, tensors, ints, fit=fit, tf32=_tf32())
    saved = _saved(kind, save, gates, c_seq, hn_seq)
    return ForwardResult(y, h_n, c_n if has_c else None, saved)


def _resident_backward(kind: CellKind, saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse: bool, fit):
    """The backward time loop on the resident tier: one launch."""
    rs = _resident()
    prep = rs.aligned_input
    dtype, device = y.dtype, y.device
    hidden = w_hh.shape[1]
    n_rows, batch = y.shape[0], schedule.batch
    has_c = kind.has_cell_state
    dummy_io, dummy_acc = _dummies(dtype, device)
    gates, c_seq, hn_seq = dummy_io, dummy_acc, dummy_io
    if has_c:
        gates, c_seq = saved
    elif saved:
        gates, hn_seq = saved

    dxg, dhg = _grad_buffers(kind, n_rows, hidden, dtype, device)
    dh0 = _new((batch, hidden), dtype, device)
    dc0 = _new((batch, hidden), dtype, device) if has_c else dummy_io
    if has_c and dc_n is None:
        dc_n = torch.zeros(batch, hidden, dtype=dtype, device=device)
    uniform_b, sizes, offsets = _step_tables(schedule, device)
    tensors = dict(
        w_hh_ptr=prep(w_hh), h0_ptr=prep(h0), c0_ptr=prep(c0) if has_c else dummy_io, y_ptr=prep(y),
        dy_ptr=prep(dy), dh_n_ptr=prep(dh_n), dc_n_ptr=prep(dc_n) if has_c else dummy_io,
        gates_ptr=prep(gates), c_seq_ptr=prep(c_seq), hn_seq_ptr=prep(hn_seq), dxg_ptr=dxg, dhg_ptr=dhg,
        dh0_ptr=dh0, dc0_ptr=dc0, sizes_ptr=sizes, offsets_ptr=offsets,
    )
    ints = dict(T=schedule.steps, B=batch, uniform_b=uniform_b, reverse=int(reverse), H=hidden)
    rs.launch_backward(kind, tensors, ints, fit=fit, tf32=_tf32())
    return BackwardResult(dxg, dhg, dh0, dc0 if has_c else None, None)


# --------------------------------------------------------------------------------------
# Cooperative tier (kernels/cooperative.py): one launch per layer-direction and pass
# --------------------------------------------------------------------------------------


def _cooperative():
    from ..kernels import cooperative  # imports triton

    return cooperative


def _sm_count(device: torch.device) -> int:
    """SMs of ``device``: a cooperative grid has at most one program per SM. Any other
    device (Triton's interpreter) is taken to be the reference GPU (an H100, 132 SMs)."""
    from ..kernels import fits

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return fits.REFERENCE_SMS


def _coop_configs(hidden: int, dtype: torch.dtype):
    """The cooperative launch configurations of this layer: the tiled one, then its
    register variants (:func:`fastrnn.kernels.fits.cooperative_configs`)."""
    return _cooperative().cooperative_configs(dtype, hidden, _tf32())


def _coop_launch_config(hidden: int, batch: int, dtype: torch.dtype, device):
    """The configuration a cooperative launch of ``batch`` rows uses: a register variant
    when one tile of rows per program fits the SMs, else the tiled one
    (:func:`fastrnn.kernels.fits.cooperative_variant`)."""
    return _cooperative().choose_config(_coop_configs(hidden, dtype), hidden, batch, _sm_count(device))


def _cooperative_forward(kind: CellKind, xg, w_hh, b_hh, h0, c0, schedule: Schedule, reverse: bool, save: bool,
                         cfg=None):
    """The forward time loop on the cooperative tier: one launch (no ``proj_size``); the
    same results and ``saved`` layout as the other tiers. ``cfg``: the launch configuration
    (None: the one :func:`_coop_launch_config` picks for this batch). Raises
    :class:`~fastrnn.kernels.cooperative.BarrierTimeout` when a grid barrier timed out."""
    coop = _cooperative()
    prep = coop.aligned_input
    dtype, device = xg.dtype, xg.device
    acc = _acc_dtype(dtype)
    gates_n = kind.gates
    hidden = w_hh.shape[0] // gates_n
    n_rows, batch = xg.shape[0], schedule.batch
    cfg = cfg or _coop_launch_config(hidden, batch, dtype, device)
    has_c = kind.has_cell_state
    save = save and gates_n > 1  # plain RNN backward only reads y

    xg, w_hh, h0 = prep(xg), prep(w_hh), prep(h0)
    dummy_io, dummy_acc = _dummies(dtype, device)
    y = _new((n_rows, hidden), dtype, device)
    gates, hn = _save_buffers(kind, n_rows, hidden, dtype, device, save, dummy_io)
    bias = _gru_bias(kind, b_hh, hidden, dtype, device, prep, dummy_io)
    if has_c:
        c0 = prep(c0.to(acc))  # (B, H): read in the accumulation dtype, like c itself
        # With save, every step's c; without, (B, H): the tiled kernel's state buffer, or
        # the final c the register kernel writes once.
        c_buf = _new((n_rows, hidden) if save else (batch, hidden), acc, device)
    else:
        c0, c_buf = dummy_acc, dummy_acc
    uniform_b, sizes, offsets = _step_tables(schedule, device)
    packed = int(uniform_b == 0)
    tensors = dict(
        xg_ptr=xg, w_hh_ptr=w_hh, b_hh_ptr=bias, h0_ptr=h0, c0_ptr=c0, y_ptr=y, c_ptr=c_buf,
        gates_ptr=gates, hn_ptr=hn, sizes_ptr=sizes, offsets_ptr=offsets,
        sync_ptr=torch.zeros(1 + schedule.steps, dtype=torch.int32, device=device),
    )
    ints = dict(T=schedule.steps, B=batch, H=hidden, reverse=int(reverse), packed=packed, save=int(save))
    coop.launch_forward(kind, tensors, ints, cfg, _tf32(), _sm_count(device))

    c_n = None
    if has_c:
        c_n = (schedule.final(c_buf, reverse) if save else c_buf).to(dtype)
    saved = _saved(kind, save, gates, c_buf, hn)
    return ForwardResult(y, schedule.final(y, reverse), c_n, saved)


def _cooperative_backward(kind: CellKind, saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse: bool,
                          cfg=None):
    """The backward time loop on the cooperative tier: one launch; reads the ``saved``
    tuple of any tier (one layout). ``cfg`` as in :func:`_cooperative_forward`. Raises
    ``BarrierTimeout`` when a grid barrier timed out."""
    coop = _cooperative()
    prep = coop.aligned_input
    dtype, device = y.dtype, y.device
    acc = _acc_dtype(dtype)
    gates_n = kind.gates
    hidden = w_hh.shape[0] // gates_n
    n_rows = y.shape[0]
    cfg = cfg or _coop_launch_config(hidden, dh_n.shape[0], dtype, device)
    has_c = kind.has_cell_state
    dummy_io, dummy_acc = _dummies(dtype, device)

    w_hh, y, dy, h0 = prep(w_hh), prep(y), prep(dy), prep(h0)
    gates, hn, c_seq = dummy_io, dummy_io, dummy_acc
    c0 = prep(c0.to(acc)) if has_c else dummy_acc
    if saved:  # (gates, c) or (gates, e): see saved_layout
        gates, second = (prep(t) for t in saved)
        c_seq, hn = (second, hn) if has_c else (c_seq, second)
    dxg, dhg = _grad_buffers(kind, n_rows, hidden, dtype, device)
    dh = dh_n.to(acc, copy=True).contiguous()  # dh_n in, dh0 out (state buffer of the tiled kernel)
    if has_c and dc_n is None:
        dc_n = torch.zeros(dh_n.shape[0], hidden, dtype=dtype, device=device)
    dc = dc_n.to(acc, copy=True).contiguous() if has_c else dummy_acc
    uniform_b, sizes, offsets = _step_tables(schedule, device)
    packed = int(uniform_b == 0)
    tensors = dict(
        w_hh_ptr=w_hh, dxg_ptr=dxg, dhg_ptr=dhg, dy_ptr=dy, dh_ptr=dh, dc_ptr=dc, gates_ptr=gates,
        c_ptr=c_seq, c0_ptr=c0, hn_ptr=hn, y_ptr=y, h0_ptr=h0, sizes_ptr=sizes, offsets_ptr=offsets,
        sync_ptr=torch.zeros(1 + schedule.steps, dtype=torch.int32, device=device),
    )
    ints = dict(T=schedule.steps, B=dh.shape[0], H=hidden, reverse=int(reverse), packed=packed)
    coop.launch_backward(kind, tensors, ints, cfg, _tf32(), _sm_count(device))
    return BackwardResult(dxg, dhg, dh.to(dtype), dc.to(dtype) if has_c else None, None)


# --------------------------------------------------------------------------------------
# Tier choice
# --------------------------------------------------------------------------------------

TIERS = ("auto", "step", "resident", "cooperative")
TIER_ENV = "FASTRNN_TIER"
SELF_CHECK_ENV = "FASTRNN_SELF_CHECK"


def _requested_tier() -> str:
    name = os.environ.get(TIER_ENV, "auto") or "auto"
    if name not in TIERS:
        raise ValueError(f"{TIER_ENV} must be one of {TIERS}, got {name!r}")
    return name


def device_limits(device: torch.device) -> tuple[int, int]:
    """``(compute capability as major*10+minor, shared memory per block in bytes)`` that
    the tier choice uses for ``device``.

    A CUDA device reports its own (the opt-in maximum, which is what a launch may use).
    Any other device (CPU tensors in Triton's interpreter) is treated as the reference
    GPU of :data:`fastrnn.kernels.fits.REFERENCE_ARCH` (sm_90: 232448 bytes), so the tests
    exercise the choice a GPU of that kind makes.
    """
    from ..kernels import fits

    if device.type == "cuda":
        return _cuda_limits(device.index if device.index is not None else torch.cuda.current_device())
    return fits.REFERENCE_ARCH, fits.SHARED_LIMIT[fits.REFERENCE_ARCH]


@functools.lru_cache(maxsize=None)
def _cuda_limits(index: int) -> tuple[int, int]:
    import triton

    major, minor = torch.cuda.get_device_capability(index)
    shared = triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]
    return major * 10 + minor, int(shared)


def _refusal(tier: str, kind: str, hidden: int, proj_size: int, dtype, device) -> str | None:
    """Why ``tier`` cannot run this layer on ``device`` (None: it can)."""
    from ..kernels import fits

    if tier == "step":
        return None
    if tier == "cooperative":
        return fits.cooperative_refusal(kind, hidden, proj_size, dtype, _sm_count(device), device.type == "cuda")
    arch, shared = device_limits(device)
    return fits.resident_refusal(kind, hidden, proj_size, dtype, arch, shared)


def _chosen_tier(kind: str, hidden: int, proj_size: int, dtype, device) -> tuple[str, bool]:
    """``(tier, forced)`` before the first-use check: the forced tier (an error when it
    cannot run the case) or, for ``auto``, the fastest tier that can."""
    requested = _requested_tier()
    if requested != "auto":
        reason = _refusal(requested, kind, hidden, proj_size, dtype, device)
        if reason is not None:
            raise RuntimeError(
                f"fastrnn: {TIER_ENV}={requested} cannot run {kind} with hidden_size={hidden}, "
                f"proj_size={proj_size}, {dtype} on {device}: {reason}"
            )
        return requested, True
    # Preference order: resident (no grid barrier), then cooperative (W_hh spread over the
    # SMs, a grid barrier per step), then step. The cooperative tier is chosen on its own
    # only on a GPU: Triton's interpreter runs a grid's programs one after another, so a
    # grid barrier could only time out there (the tests run it with one thread per program).
    for tier in ("resident", "cooperative"):
        if tier == "cooperative" and device.type != "cuda":
            continue
        if _refusal(tier, kind, hidden, proj_size, dtype, device) is None:
            return tier, False
    return "step", False


def tier_for(kind, hidden: int, proj_size: int, dtype, device) -> str:
    """The kernel tier a launch of this layer would use: ``"step"``, ``"resident"`` or
    ``"cooperative"``.

    Decided by the cell kind, ``hidden``, ``proj_size`` (0 for none), the dtype and the
    device's shared memory per block and SM count, never by ``T`` or ``B`` (``B`` picks
    only the variant of a cooperative launch: state in registers or in buffers); the
    table is :mod:`fastrnn.kernels.fits`; ``auto`` picks the cooperative tier only on CUDA
    devices.
    ``FASTRNN_TIER=auto|step|resident|cooperative`` (read at each call) forces a tier;
    forcing one that cannot run the case raises a RuntimeError.
    On CPU tensors (Triton's interpreter) the device is taken to be an sm_90 GPU
    (:func:`device_limits`). Includes the first-use check of a persistent tier (which
    runs it once, see the module docstring), so the answer is what the launch will do.

    Example::

        >>> tier_for("LSTM", 64, 0, torch.float16, torch.device("cpu"))  # doctest: +SKIP
        'resident'
    """
    kind = CellKind(kind).value
    device = torch.device(device)
    tier, forced = _chosen_tier(kind, hidden, proj_size, dtype, device)
    if tier != "step":
        tier = _first_use_check(tier, forced, kind, hidden, dtype, device)
    return tier


def _fit(kind: str, hidden: int, dtype):
    from ..kernels import fits

    return fits.resident_fit(kind, dtype, hidden)


def _persistent_forward(tier: str, kind: CellKind, xg, w_hh, b_hh, h0, c0, schedule: Schedule, reverse: bool,
                        save: bool, config=None):
    """The forward loop on a persistent tier (one launch per pass); ``config``: a cooperative
    launch configuration to force (the first-use check), else chosen from the batch."""
    if tier == "resident":
        fit = _fit(kind.value, w_hh.shape[1], xg.dtype)
        return _resident_forward(kind, xg, w_hh, b_hh, h0, c0, schedule, reverse, save, fit)
    if tier == "cooperative":
        return _cooperative_forward(kind, xg, w_hh, b_hh, h0, c0, schedule, reverse, save, config)
    raise NotImplementedError(f"fastrnn: no {tier} tier")


def _persistent_backward(tier: str, kind: CellKind, saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule,
                         reverse: bool, config=None):
    """The backward loop on a persistent tier (one launch per pass); ``config`` as in
    :func:`_persistent_forward`."""
    if tier == "resident":
        fit = _fit(kind.value, w_hh.shape[1], y.dtype)
        return _resident_backward(kind, saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, fit)
    if tier == "cooperative":
        return _cooperative_backward(kind, saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, config)
    raise NotImplementedError(f"fastrnn: no {tier} tier")


def _variant(tier: str, hidden: int, dtype) -> str:
    """What a persistent tier compiles for this layer: its first-use check key and name."""
    from ..kernels import fits

    if tier == "cooperative":
        return "configurations " + ", ".join(cfg.label for cfg in _coop_configs(hidden, dtype))
    return f"BLOCK_H {fits.resident_block_h(hidden)}"


# --------------------------------------------------------------------------------------
# First-use self-check
# --------------------------------------------------------------------------------------

#: (tier, device, kind, dtype, variant) -> True (checked, agrees) / False (use the step
#: tier: the check failed, or a cooperative launch of that key timed out at a barrier).
_checked: dict = {}

_CHECK_TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float32: dict(rtol=2e-3, atol=2e-3),  # TF32 may be on: both tiers, different sums
    torch.float16: dict(rtol=2e-2, atol=2e-2),
    torch.bfloat16: dict(rtol=6e-2, atol=6e-2),
}


def _self_check_enabled(device: torch.device) -> bool:
    """``FASTRNN_SELF_CHECK``: ``0`` off, ``1`` on everywhere (also in Triton's interpreter,
    which is how the tests exercise it), unset / ``auto``: on for CUDA devices only."""
    value = os.environ.get(SELF_CHECK_ENV, "auto") or "auto"
    if value not in ("0", "1", "auto"):
        raise ValueError(f"{SELF_CHECK_ENV} must be 0, 1 or auto, got {value!r}")
    if value == "auto":
        return device.type == "cuda"
    return value == "1"


def _check_problem(kind: CellKind, hidden: int, dtype, device, reverse: bool, batch: int = 19):
    """A small problem for the first-use check: ``batch`` sequences (19: two 16-row batch
    tiles, the second partial), 5 steps; packed with ragged lengths in the reverse
    direction, padded in the forward one (the two ways the kernels read the schedule)."""
    gen = torch.Generator().manual_seed(1234)
    steps = 5
    if reverse:
        schedule = Schedule.from_batch_sizes([batch] + [max(1, batch - k) for k in (4, 8, 13, 17)])
    else:
        schedule = Schedule.uniform(steps, batch)
    gates = kind.gates

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    xg = rnd(schedule.rows, gates * hidden)
    w_hh = rnd(gates * hidden, hidden, scale=hidden**-0.5)
    b_hh = rnd(gates * hidden, scale=0.1) if kind is CellKind.GRU else None
    h0 = rnd(batch, hidden)
    c0 = rnd(batch, hidden) if kind is CellKind.LSTM else None
    dy = rnd(schedule.rows, hidden)
    dh_n = rnd(batch, hidden)
    dc_n = rnd(batch, hidden) if kind is CellKind.LSTM else None
    return schedule, xg, w_hh, b_hh, h0, c0, dy, dh_n, dc_n


def _check_variants(tier: str, hidden: int, dtype, device) -> list:
    """``(launch configuration, batch)`` pairs the first-use check runs ``tier`` with: the
    resident tier once (19 rows); the cooperative tier once per configuration a launch of
    this layer may use (the tiled one and each register variant, forced), each with a
    batch that configuration can run (19 rows, or fewer where one tile per program does
    not fit the SMs)."""
    if tier != "cooperative":
        return [(None, 19)]
    sms = _sm_count(device)
    out = []
    for cfg in _coop_configs(hidden, dtype):
        batch = 19
        if cfg.registers:
            batch = min(batch, cfg.block_b * (sms // -(-hidden // cfg.block_h)))
        out.append((cfg, batch))
    return out


def _run_check(tier: str, kind: CellKind, hidden: int, dtype, device) -> str | None:
    """Run the check problem through ``tier`` (each of its variants, see
    :func:`_check_variants`) and the step tier; a description of the first disagreement,
    or None when they agree."""
    for cfg, batch in _check_variants(tier, hidden, dtype, device):
        problem = _check_one(tier, kind, hidden, dtype, device, cfg, batch)
        if problem is not None:
            return problem if cfg is None else f"{problem} ({cfg.label})"
    return None


def _check_one(tier: str, kind: CellKind, hidden: int, dtype, device, cfg, batch: int) -> str | None:
    """One variant of the first-use check: forward with and without saving and backward, in
    both directions, against the step tier."""
    for reverse in (False, True):
        schedule, xg, w_hh, b_hh, h0, c0, dy, dh_n, dc_n = _check_problem(kind, hidden, dtype, device, reverse, batch)
        ref = _step_forward(kind, xg.clone(), w_hh, b_hh, None, h0, c0, schedule, reverse, True)
        out = _persistent_forward(tier, kind, xg.clone(), w_hh, b_hh, h0, c0, schedule, reverse, True, cfg)
        unsaved = _persistent_forward(tier, kind, xg.clone(), w_hh, b_hh, h0, c0, schedule, reverse, False, cfg)
        ref_b = _step_backward(kind, ref.saved, w_hh, b_hh, None, h0, c0, ref.y, dy, dh_n, dc_n, schedule, reverse)
        out_b = _persistent_backward(tier, kind, out.saved, w_hh, h0, c0, out.y, dy, dh_n, dc_n, schedule, reverse,
                                     cfg)
        pairs = dict(y=(out.y, ref.y), h_n=(out.h_n, ref.h_n), c_n=(out.c_n, ref.c_n),
                     dxg=(out_b.dxg, ref_b.dxg), dhg=(out_b.dhg, ref_b.dhg), dh0=(out_b.dh0, ref_b.dh0),
                     dc0=(out_b.dc0, ref_b.dc0), unsaved_y=(unsaved.y, ref.y), unsaved_h_n=(unsaved.h_n, ref.h_n),
                     unsaved_c_n=(unsaved.c_n, ref.c_n))
        pairs.update({f"saved[{i}]": (a, e) for i, (a, e) in enumerate(zip(out.saved, ref.saved))})
        for name, (a, e) in pairs.items():
            if a is None and e is None:
                continue
            if a is None or e is None or a.shape != e.shape:
                return f"{name} differs in presence or shape"
            if not torch.allclose(a.double(), e.double(), **_CHECK_TOL[dtype]):
                worst = (a.double() - e.double()).abs().nan_to_num(float("inf")).max().item()
                return f"{name} differs (max abs difference {worst:.3g}, {'reverse' if reverse else 'forward'})"
    return None


def _first_use_check(tier: str, forced: bool, kind: str, hidden: int, dtype, device) -> str:
    """``tier`` if it passed (or skipped) its first-use check for this key, else "step"."""
    key = (tier, str(device), kind, dtype, _variant(tier, hidden, dtype))
    if _checked.get(key) is False and not forced:
        return "step"
    if not _self_check_enabled(device):
        return tier
    if key not in _checked:
        try:
            problem = _run_check(tier, CellKind(kind), hidden, dtype, device)
        except Exception as exc:  # a kernel that fails to compile or launch is a failed check
            problem = f"it raised {type(exc).__name__}: {exc}"
        if problem is not None and forced:
            raise RuntimeError(
                f"fastrnn: {TIER_ENV}={tier}: the first-use check of the {tier} tier for {kind} {dtype} "
                f"({key[-1]}) on {device} failed against the step tier: {problem}"
            )
        if problem is not None:
            warnings.warn(
                f"fastrnn: the {tier} kernel tier disagrees with the step tier on {device} for {kind} "
                f"{dtype} ({key[-1]}): {problem}. Using the step tier for it for the rest of this "
                f"process (set {TIER_ENV}=step to choose it directly, {SELF_CHECK_ENV}=0 to skip the check).",
                RuntimeWarning,
                stacklevel=2,
            )
        _checked[key] = problem is None
    return tier if _checked[key] else "step"


def _cooperative_timed_out(exc: Exception, kind: CellKind, hidden: int, dtype, device) -> None:
    """A cooperative launch hit a barrier timeout (its results were discarded): raise when
    the tier was forced; else warn once and use the step tier for this key from now on."""
    if _requested_tier() == "cooperative":
        raise exc
    key = ("cooperative", str(device), kind.value, dtype, _variant("cooperative", hidden, dtype))
    if _checked.get(key) is not False:
        warnings.warn(
            f"fastrnn: {exc} This call and later ones for {kind.value} {dtype} ({key[-1]}) on {device} run "
            f"on the step tier (set {TIER_ENV}=step to choose it directly).",
            RuntimeWarning,
            stacklevel=3,
        )
    _checked[key] = False


# --------------------------------------------------------------------------------------
# The backend interface
# --------------------------------------------------------------------------------------


def _refuse_interpreted_bf16(dtype) -> None:
    if dtype == torch.bfloat16 and _interpreted():
        # Measured: the interpreter's tl.dot on bfloat16 operands returns wrong values.
        raise RuntimeError(
            "fastrnn: the triton backend cannot run bfloat16 in Triton's interpreter (its "
            "bfloat16 tl.dot is wrong); use backend='reference' or float16/float32 on the CPU"
        )


#: The resident kernels address a tile with a 64-bit base (the step's first row) plus
#: 32-bit offsets up to ``B * G * H``; a batch past this runs the step tier instead.
RESIDENT_MAX_OFFSET = 2**31


def _layer_tier(kind: CellKind, w_hh, w_hr, dtype, device, schedule: Schedule) -> str:
    """:func:`tier_for`, and the two cases a launch cannot take to the resident tier
    whatever the table says: an empty batch (nothing to launch) and a batch whose
    32-bit in-step offsets ``B * G * H`` would pass 2^31 (over 4 million sequences at
    H = 128); both run the step tier, which gives the same results and saved layout. An
    empty batch never goes to the cooperative tier either."""
    hidden = w_hh.shape[0] // kind.gates
    proj_size = w_hr.shape[0] if w_hr is not None else 0
    tier = tier_for(kind, hidden, proj_size, dtype, device)
    if tier == "resident" and not 0 < schedule.batch * kind.gates * hidden < RESIDENT_MAX_OFFSET:
        return "step"
    if tier == "cooperative" and schedule.batch == 0:
        return "step"  # nothing to launch: the step loop handles the empty batch
    return tier


def forward(kind: CellKind, xg, w_hh, b_hh, w_hr, h0, c0, schedule: Schedule, reverse: bool, save: bool):
    """Run the forward time loop on the tier :func:`tier_for` picks; see :mod:`fastrnn.backends.base`."""
    _refuse_interpreted_bf16(xg.dtype)
    tier = _layer_tier(kind, w_hh, w_hr, xg.dtype, xg.device, schedule)
    if tier != "step":
        try:
            return _persistent_forward(tier, kind, xg, w_hh, b_hh, h0, c0, schedule, reverse, save)
        except _cooperative().BarrierTimeout as exc:  # a cooperative launch whose barrier timed out
            _cooperative_timed_out(exc, kind, w_hh.shape[1], xg.dtype, xg.device)
    return _step_forward(kind, xg, w_hh, b_hh, w_hr, h0, c0, schedule, reverse, save)


def backward(kind: CellKind, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse: bool):
    """Run the backward time loop on the tier :func:`tier_for` picks (every tier reads
    the ``saved`` tuple of every other); see :mod:`fastrnn.backends.base`."""
    tier = _layer_tier(kind, w_hh, w_hr, y.dtype, y.device, schedule)
    if tier != "step":
        try:
            return _persistent_backward(tier, kind, saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule, reverse)
        except _cooperative().BarrierTimeout as exc:
            _cooperative_timed_out(exc, kind, w_hh.shape[1], y.dtype, y.device)
    return _step_backward(kind, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule, reverse)
