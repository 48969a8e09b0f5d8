"""Triton backend: the time loops of :mod:`fastrnn.backends.base` as one kernel launch per step.

Forward: one :func:`~fastrnn.kernels.recurrent_step.forward_stepper` launch per timestep
(recurrent GEMM + input projection + activations + state update; ``h_t`` is written
straight into the output rows of its step). Backward: one
:func:`~fastrnn.kernels.recurrent_step.backward_stepper` launch per timestep (the recurrent
GEMM of one step fused with the pointwise gate backward of the step before it); the
last ``dh0 = dgates_first @ W_hh`` is a torch GEMM.

LSTM with ``proj_size``: the projection ``h_t = m_t @ W_hr^T`` is a torch ``mm`` per step
after the step kernel (which writes ``m_t`` to a ``(B, H)`` buffer), and in backward
``dh`` / ``dm = dh @ W_hr`` are torch ops per step before a pointwise step kernel; the
launch count per step stays one, but each step also runs these torch ops.

Precision: fp32 accumulation (fp64 for fp64 I/O); the LSTM cell state and the ``dh`` /
``dc`` state buffers of backward are kept in that accumulation dtype whatever the I/O
dtype; gates are saved in the I/O dtype. fp32 GEMMs use TF32 only when
``torch.backends.cudnn.allow_tf32`` is on.

Saved for backward (the ``saved`` tuple, private to this backend): LSTM ``(gates (N, 4H)
i,f,g,o, c (N, H) fp32)``; GRU ``(gates (N, 3H) r,z,n, W_hn h + b_hn (N, H))``; plain RNN
nothing (backward reads ``y``).
"""

from __future__ import annotations

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


def forward(kind: CellKind, xg, w_hh, b_hh, w_hr, h0, c0, schedule: Schedule, reverse: bool, save: bool):
    """Run the forward time loop; see :mod:`fastrnn.backends.base`."""
    import os  # TEMPORARY until the tier choice of the resident branch is merged

    if os.environ.get("FASTRNN_TIER") == "cooperative" and w_hr is None:
        cfg = cooperative_config(kind, w_hh.shape[1], xg.dtype, xg.device)
        return forward_cooperative(kind, xg, w_hh, b_hh, h0, c0, schedule, reverse, save, cfg)
    ks = _kernels()
    prep = ks.aligned_input
    dtype, device = xg.dtype, xg.device
    if dtype == torch.bfloat16 and _interpreted():
        # Measured: the interpreter's tl.dot on bfloat16 operands returns wrong values.
        raise RuntimeError(
            "fastrnn: the triton backend cannot run bfloat16 in Triton's interpreter (its "
            "bfloat16 tl.dot is wrong); use backend='reference' or float16/float32 on the CPU"
        )
    acc = _acc_dtype(dtype)
    gates_n = kind.gates
    hidden, state = w_hh.shape[0] // gates_n, w_hh.shape[1]
    n_rows, batch = xg.shape[0], schedule.batch
    is_lstm, is_gru = kind is CellKind.LSTM, kind is CellKind.GRU
    save = save and gates_n > 1  # plain RNN backward only reads y
    proj = w_hr is not None

    xg, w_hh, h0 = prep(xg), prep(w_hh), prep(h0)
    dummy_io = torch.empty(8, dtype=dtype, device=device)
    dummy_acc = torch.empty(8, dtype=acc, device=device)
    y = _new((n_rows, state), dtype, device)
    gates = _new((n_rows, gates_n * hidden), dtype, device) if save else dummy_io
    hn = _new((n_rows, hidden), dtype, device) if (save and is_gru) else dummy_io
    if is_gru:
        bias = prep(b_hh) if b_hh is not None else torch.zeros(3 * hidden, dtype=dtype, device=device)
    else:
        bias = dummy_io
    if is_lstm:
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
        c_prev_ptr=c_buf, c_init_ptr=c0, c_out_ptr=c_buf, gates_ptr=gates, hn_ptr=hn,
    )
    prev_off, n_prev = 0, 0
    launch = ks.forward_stepper(kind.value, tensors, hidden=hidden, save=save, tf32=_tf32())
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
    if is_lstm:
        c_n = (schedule.final(c_buf, reverse) if save else c_buf).to(dtype)
    if is_lstm and save:
        saved = (gates, c_buf)
    elif is_gru and save:
        saved = (gates, hn)
    else:
        saved = ()
    return ForwardResult(y, schedule.final(y, reverse), c_n, saved)


def backward(kind: CellKind, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse: bool):
    """Run the backward time loop; see :mod:`fastrnn.backends.base`."""
    import os  # TEMPORARY until the tier choice of the resident branch is merged

    if os.environ.get("FASTRNN_TIER") == "cooperative" and w_hr is None:
        cfg = cooperative_config(kind, w_hh.shape[1], y.dtype, y.device)
        return backward_cooperative(kind, saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, cfg)
    ks = _kernels()
    prep = ks.aligned_input
    dtype, device = y.dtype, y.device
    acc = _acc_dtype(dtype)
    gates_n = kind.gates
    hidden, state = w_hh.shape[0] // gates_n, w_hh.shape[1]
    n_rows = y.shape[0]
    is_lstm, is_gru = kind is CellKind.LSTM, kind is CellKind.GRU
    proj = w_hr is not None
    dummy_io = torch.empty(8, dtype=dtype, device=device)
    dummy_acc = torch.empty(8, dtype=acc, device=device)

    w_hh, y, dy, h0 = prep(w_hh), prep(y), prep(dy), prep(h0)
    # Unused pointer arguments get dummies of the dtype the kernel signature expects.
    gates, hn, c_seq = dummy_io, dummy_io, dummy_acc
    if is_lstm:
        gates, c_seq = saved
        c0 = prep(c0)
    else:
        c0 = dummy_io
        if is_gru:
            gates, hn = saved

    dxg = _new((n_rows, gates_n * hidden), dtype, device)
    dhg = _new((n_rows, gates_n * hidden), dtype, device) if is_gru else dxg
    dh = dh_n.to(acc, copy=True).contiguous()  # (B, P) state buffer, becomes dh0
    dc = dc_n.to(acc, copy=True).contiguous() if is_lstm else dummy_acc
    dm = _new((dh.shape[0], hidden), acc, device) if proj else dummy_acc
    dh_seq = _new((n_rows, state), acc, device) if proj else None
    w_hh_acc = w_hh.to(acc)
    w_hr_acc = w_hr.to(acc) if proj else None

    tensors = dict(
        dg_ptr=dhg, w_hh_ptr=w_hh, dxg_ptr=dxg, dhg_ptr=dhg, dy_ptr=dy, dh_ptr=dh, dc_ptr=dc, dm_ptr=dm,
        gates_ptr=gates, c_seq_ptr=c_seq, c0_ptr=c0, hn_ptr=hn, h_seq_ptr=y, h0_ptr=h0,
    )
    order = list(schedule.order(reverse))  # forward processing order
    offsets, sizes = schedule.offsets, schedule.batch_sizes
    launch = ks.backward_stepper(kind.value, tensors, hidden=hidden, dm_given=proj, tf32=_tf32())
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
    # later in a packed reverse pass were finished by the kernels already).
    lo, bs = offsets[order[0]], sizes[order[0]]
    first = dh[:bs].clone()
    dh[:bs] = dhg[lo : lo + bs].to(acc) @ w_hh_acc
    if is_gru:
        dh[:bs] += first * gates[lo : lo + bs, hidden : 2 * hidden].to(acc)

    dw_hr = None
    if proj:
        o = gates[:, 3 * hidden :].to(acc)
        dw_hr = (dh_seq.t() @ (o * torch.tanh(c_seq))).to(dtype)
    return BackwardResult(
        dxg, dhg, dh.to(dtype), dc.to(dtype) if is_lstm else None, dw_hr,
    )


# --------------------------------------------------------------------------------------
# Cooperative tier (kernels/cooperative.py): one launch per layer-direction and pass
# --------------------------------------------------------------------------------------


def _cooperative():
    from ..kernels import cooperative  # imports triton

    return cooperative


def _sm_count(device: torch.device) -> int:
    """Programs a cooperative grid may have: the SM count (no limit in the interpreter)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1 << 30


def cooperative_config(kind: CellKind, hidden: int, dtype: torch.dtype, device: torch.device):
    """The cooperative launch configuration for this layer on ``device``, or None."""
    return _cooperative().cooperative_config(dtype, hidden, _sm_count(device), _tf32())


def _device_schedule(schedule: Schedule, device: torch.device) -> tuple[torch.Tensor, int]:
    """``(sched, packed)``: per-step sizes then first rows (int32) for a packed batch; a
    padded one passes a placeholder and ``packed = 0`` (no host-to-device copy)."""
    if schedule.is_uniform:
        return torch.empty(8, dtype=torch.int32, device=device), 0
    table = torch.tensor(schedule.batch_sizes + schedule.offsets, dtype=torch.int32)
    return table.to(device), 1


def forward_cooperative(kind: CellKind, xg, w_hh, b_hh, h0, c0, schedule: Schedule, reverse: bool, save: bool, cfg):
    """The forward time loop as one cooperative launch (no ``proj_size``); same results and
    ``saved`` layout as :func:`forward`. Raises ``BarrierTimeout`` when a barrier timed out."""
    coop = _cooperative()
    prep = _kernels().aligned_input
    dtype, device = xg.dtype, xg.device
    acc = _acc_dtype(dtype)
    gates_n = kind.gates
    hidden = w_hh.shape[0] // gates_n
    n_rows, batch = xg.shape[0], schedule.batch
    is_lstm, is_gru = kind is CellKind.LSTM, kind is CellKind.GRU
    save = save and gates_n > 1  # plain RNN backward only reads y

    xg, w_hh, h0 = prep(xg), prep(w_hh), prep(h0)
    dummy_io = torch.empty(8, dtype=dtype, device=device)
    dummy_acc = torch.empty(8, dtype=acc, device=device)
    y = _new((n_rows, hidden), dtype, device)
    gates = _new((n_rows, gates_n * hidden), dtype, device) if save else dummy_io
    hn = _new((n_rows, hidden), dtype, device) if (save and is_gru) else dummy_io
    if is_gru:
        bias = prep(b_hh) if b_hh is not None else torch.zeros(3 * hidden, dtype=dtype, device=device)
    else:
        bias = dummy_io
    if is_lstm:
        c0 = prep(c0.to(acc))  # (B, H): read in the accumulation dtype, like c itself
        c_buf = _new((n_rows, hidden) if save else (batch, hidden), acc, device)
    else:
        c0, c_buf = dummy_acc, dummy_acc
    sched, packed = _device_schedule(schedule, device)
    tensors = dict(
        xg_ptr=xg, w_hh_ptr=w_hh, b_hh_ptr=bias, h0_ptr=h0, c0_ptr=c0, y_ptr=y, c_ptr=c_buf,
        gates_ptr=gates, hn_ptr=hn, sched_ptr=sched,
        sync_ptr=torch.zeros(1 + schedule.steps, dtype=torch.int32, device=device),
    )
    ints = dict(T=schedule.steps, B=batch, H=hidden, reverse=int(reverse), packed=packed, save=int(save))
    coop.launch_forward(kind.value, tensors, ints, cfg, _tf32(), _sm_count(device))

    c_n = None
    if is_lstm:
        c_n = (schedule.final(c_buf, reverse) if save else c_buf).to(dtype)
    if is_lstm and save:
        saved = (gates, c_buf)
    elif is_gru and save:
        saved = (gates, hn)
    else:
        saved = ()
    return ForwardResult(y, schedule.final(y, reverse), c_n, saved)


def backward_cooperative(kind: CellKind, saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse: bool, cfg):
    """The backward time loop as one cooperative launch; accepts the ``saved`` tuple of any
    tier (same layout). Raises ``BarrierTimeout`` when a barrier timed out."""
    coop = _cooperative()
    prep = _kernels().aligned_input
    dtype, device = y.dtype, y.device
    acc = _acc_dtype(dtype)
    gates_n = kind.gates
    hidden = w_hh.shape[0] // gates_n
    n_rows = y.shape[0]
    is_lstm, is_gru = kind is CellKind.LSTM, kind is CellKind.GRU
    dummy_io = torch.empty(8, dtype=dtype, device=device)
    dummy_acc = torch.empty(8, dtype=acc, device=device)

    w_hh, y, dy, h0 = prep(w_hh), prep(y), prep(dy), prep(h0)
    gates, hn, c_seq = dummy_io, dummy_io, dummy_acc
    c0 = prep(c0.to(acc)) if is_lstm else dummy_acc
    if is_lstm:
        gates, c_seq = (prep(t) for t in saved)
    elif is_gru:
        gates, hn = (prep(t) for t in saved)
    dxg = _new((n_rows, gates_n * hidden), dtype, device)
    dhg = _new((n_rows, gates_n * hidden), dtype, device) if is_gru else dxg
    dh = dh_n.to(acc, copy=True).contiguous()  # dh_n in, dh0 out
    dc = dc_n.to(acc, copy=True).contiguous() if is_lstm else dummy_acc
    sched, packed = _device_schedule(schedule, device)
    tensors = dict(
        w_hh_ptr=w_hh, dxg_ptr=dxg, dhg_ptr=dhg, dy_ptr=dy, dh_ptr=dh, dc_ptr=dc, gates_ptr=gates,
        c_ptr=c_seq, c0_ptr=c0, hn_ptr=hn, y_ptr=y, h0_ptr=h0, sched_ptr=sched,
        sync_ptr=torch.zeros(1 + schedule.steps, dtype=torch.int32, device=device),
    )
    ints = dict(T=schedule.steps, B=dh.shape[0], H=hidden, reverse=int(reverse), packed=packed)
    coop.launch_backward(kind.value, tensors, ints, cfg, _tf32(), _sm_count(device))
    return BackwardResult(dxg, dhg, dh.to(dtype), dc.to(dtype) if is_lstm else None, None)
