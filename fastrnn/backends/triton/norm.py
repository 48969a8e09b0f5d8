"""LayerNorm-LSTM / -GRU launcher: every LayerNorm call of the triton backend comes here.

A LayerNorm over the ``G*H`` recurrent pre-activation needs whole rows in one program. The
resident tier's programs hold whole rows: where one of its LayerNorm entries fits the layer
(:mod:`.norm_resident`), the pass is one launch. Otherwise (and with ``FASTRNN_TIER=step``)
it runs here on the step tier as a torch GEMM plus one row-kernel launch per step
(:mod:`fastrnn.kernels.norm_rows`): the step tier's GEMM kernels own a tile of ``H``, not
whole rows. The cooperative tier's programs own 16 hidden units each and do not run these
cells (a forced ``FASTRNN_TIER=cooperative`` is an error that says so).

Forward, per step: ``r = (h_prev * scale) W_hh^T + b_hh`` (``torch.addmm`` into the step's
rows of ``r``; ``h_prev * scale`` is a ``(B, H)`` buffer the previous launch wrote), then
the row kernel (LN(r), the gates, the state update, LN(c), zoneout, the next GEMM's input).
Backward, per step: the row kernel (LN(c) backward, the gates' backward, LN(r) backward),
then ``dh_prev += (dr @ W_hh) * scale`` in torch (and the reset rows zeroed). The
LayerNorm gains' and biases' gradients are reduced in torch after the loop from ``dxg``,
the saved ``r`` / ``c`` and the per-step gradient of LN(c)'s output the kernel writes.

Saved (:func:`saved_layout`): gates ``(N, G*H)`` and ``r`` ``(N, G*H)`` in the I/O dtype,
then for the LSTM ``c`` ``(N, H)`` in the accumulation dtype (the zoned-out state with
zoneout of ``c``, followed by the cell's own ``c``).
"""

from __future__ import annotations

import torch

from ...schedule import Schedule
from ..base import BackwardResult, ForwardResult
from . import buffers, norm_resident, policy

def cell_eps(cell) -> float | None:
    """``eps`` of a LayerNorm-LSTM / -GRU cell made by its factory, None for any other cell."""
    from ..reference_norm import _eps, _made_by
    from ...cells.variants import layer_norm_gru, layer_norm_lstm

    name = getattr(cell, "name", None)
    if not isinstance(name, str):
        return None
    for prefix, make in (("LayerNormLSTM", layer_norm_lstm), ("LayerNormGRU", layer_norm_gru)):
        eps = _eps(name, prefix)
        if eps is not None and _made_by(cell, make):
            return eps
    return None


def runs(cell) -> bool:
    """Whether ``cell`` runs on this path."""
    return cell_eps(cell) is not None


def _kernels():
    from ...kernels import norm_rows  # imports triton

    return norm_rows


def size_refusal(hidden: int, dtype) -> str | None:
    """Why the row kernels cannot take this hidden size (None when they can)."""
    limit = _kernels().max_hidden(dtype)
    if hidden > limit:
        return (f"the LayerNorm row kernels hold whole rows in registers and take hidden_size <= {limit} in "
                f"{str(dtype).replace('torch.', '')}, got {hidden}")
    return None


def refusal(cell, hidden: int, w_hr, dtype=torch.float32) -> str | None:
    """Why this path cannot run the call (None when it can)."""
    if w_hr is not None:
        return f"cell {cell.name!r} has no projection (proj_size)"
    reason = size_refusal(hidden, dtype)
    if reason:
        return reason
    if policy.requested_tier() == "cooperative":
        return (f"{policy.TIER_ENV}=cooperative: the cooperative tier does not run {cell.name} (its LayerNorm over "
                f"the {cell.gates}*H gate vector needs whole rows, which its programs of 16 hidden units do not "
                f"hold); unset {policy.TIER_ENV} or set it to resident or step")
    return None


def check(cell, hidden: int, w_hr, dtype) -> None:
    reason = refusal(cell, hidden, w_hr, dtype)
    if reason:
        raise RuntimeError(f"fastrnn: backend='triton': {reason}; use backend='reference'")


def saved_layout(cell, rows, hidden, dtype, save, zoneout=None, **_loop):
    """Shapes and dtypes of the ``saved`` tuple (from sizes alone)."""
    if not save:
        return []
    width = cell.gates * hidden
    layout = [((rows, width), dtype), ((rows, width), dtype)]
    if cell.has_cell_state:
        layout.append(((rows, hidden), buffers.acc_dtype(dtype)))
        if buffers.zoned(cell, zoneout)[0]:
            layout.append(((rows, hidden), buffers.acc_dtype(dtype)))
    return layout


_EPS: dict = {}


def _eps_tensor(eps: float, dtype, device) -> torch.Tensor:
    """``eps`` as a one-element tensor in the accumulation dtype (exact for fp64), made once."""
    key = (eps, dtype, str(device))
    t = _EPS.get(key)
    if t is None:
        t = _EPS[key] = torch.full((4,), eps, dtype=dtype, device=device)
    return t


def forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule: Schedule, reverse: bool, save: bool, params=None,
            resets=None, zoneout=None, recurrent_scale=None):
    """The forward time loop; see :mod:`fastrnn.backends.base`: on the resident tier where it
    runs the layer (:func:`_resident`), else the step path (:func:`step_forward`)."""
    hidden = w_hh.shape[0] // cell.gates
    check(cell, hidden, w_hr, xg.dtype)
    if _resident(cell, hidden, xg.dtype, xg.device, schedule, zoneout, recurrent_scale):
        return norm_resident.forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule, reverse, save, params, resets,
                                     zoneout, recurrent_scale)
    return step_forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule, reverse, save, params, resets, zoneout,
                        recurrent_scale)


def _resident(cell, hidden: int, dtype, device, schedule: Schedule, zoneout, recurrent_scale) -> bool:
    """Whether the resident tier runs this call: chosen (:func:`norm_resident.chosen`) and its
    first-use check against the step path passed (:func:`selfcheck.norm_resident_agrees`)."""
    from . import selfcheck

    wants = tuple(k for k, v in (("zoneout", zoneout), ("recurrent_scale", recurrent_scale)) if v is not None)
    return (norm_resident.chosen(cell, hidden, dtype, device, schedule, wants)
            and selfcheck.norm_resident_agrees(cell, hidden, dtype, device))


def step_forward(cell, xg, w_hh, b_hh, w_hr, h0, c0, schedule: Schedule, reverse: bool, save: bool, params=None,
                 resets=None, zoneout=None, recurrent_scale=None):
    """The step path's forward: a torch GEMM and one row-kernel launch per step."""
    from ...kernels.launches import aligned_input as prep, record

    ks = _kernels()
    dtype, device = xg.dtype, xg.device
    acc = buffers.acc_dtype(dtype)
    gates_n, has_c = cell.gates, cell.has_cell_state
    hidden = w_hh.shape[0] // gates_n
    width = gates_n * hidden
    n_rows, batch = xg.shape[0], schedule.batch
    keep_c = buffers.zoned(cell, zoneout)[0] if save else False
    xg, w_hh, h0 = prep(xg), prep(w_hh), prep(h0)
    dummy_io, dummy_acc = buffers.dummies(dtype, device)
    y = buffers.new((n_rows, hidden), dtype, device)
    r = buffers.new((n_rows if save else batch, width), dtype, device)
    gates = buffers.new((n_rows, width), dtype, device) if save else dummy_io
    bias = prep(b_hh) if b_hh is not None else torch.zeros(width, dtype=dtype, device=device)
    if has_c:
        c0 = prep(c0)
        c_buf = buffers.new((n_rows, hidden) if save else (batch, hidden), acc, device)
    else:
        c0, c_buf = dummy_io, dummy_acc
    cell_c = buffers.new((n_rows, hidden), acc, device) if keep_c else dummy_acc
    extras, ints = buffers.loop_tensors(cell, hidden, params, resets, zoneout, recurrent_scale, dummy_io, prep)
    # the state the GEMM reads: h times the recurrent-dropout scale (rows of sequences that
    # start later in a packed reverse pass keep h0's until their first step)
    hbuf = (h0 * extras["scale"] if recurrent_scale is not None else h0.clone()).contiguous()
    w_t = w_hh.t()
    cfg = ks.row_config(hidden, dtype, policy.device_limits(device)[0], _family(cell), save)
    consts = ks.constexprs(cell, dtype, cfg, save, ks.h_aligned(hidden))
    pointers = (xg, r, bias, y, h0, hbuf, c_buf, c0, c_buf, gates, extras["params"],
                _eps_tensor(cell_eps(cell), acc, device), extras["resets"], extras["scale"], extras["mask_h"],
                extras["mask_c"], cell_c)
    tail = (ints["has_resets"], ints["has_scale"], ints["zoneout_h"], ints["zoneout_c"], ints["p_h"], ints["p_c"])
    prev_off, n_prev = 0, 0
    for t in schedule.order(reverse):
        off, bs = schedule.offsets[t], schedule.batch_sizes[t]
        r_off = off if save else 0
        torch.addmm(bias, hbuf[:bs], w_t, out=r[r_off : r_off + bs])
        grid = ((bs + cfg.block_b - 1) // cfg.block_b,)
        ks.ln_forward_kernel[grid](
            *pointers, off, bs, prev_off, n_prev, r_off, prev_off if save else 0, off if save else 0, hidden, *tail,
            **consts, num_warps=cfg.num_warps, **ks.OPTIONS,
        )
        record("step", "forward")
        prev_off, n_prev = off, bs
    c_n = None
    if has_c:
        c_n = (schedule.final(c_buf, reverse) if save else c_buf).to(dtype)
    saved = ()
    if save:
        saved = (gates, r) + ((c_buf,) if has_c else ()) + ((cell_c,) if keep_c else ())
    return ForwardResult(y, schedule.final(y, reverse), c_n, saved)


def backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse: bool,
             params=None, resets=None, zoneout=None, recurrent_scale=None):
    """The backward time loop (no gradient crosses a reset); returns the LayerNorm gains'
    and biases' gradient as ``dparams``. The tier is the forward's (the same choice)."""
    hidden = w_hh.shape[0] // cell.gates
    check(cell, hidden, w_hr, y.dtype)
    if _resident(cell, hidden, y.dtype, y.device, schedule, zoneout, recurrent_scale):
        return norm_resident.backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule, reverse,
                                      params, resets, zoneout, recurrent_scale)
    return step_backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, params,
                         resets, zoneout, recurrent_scale)


def step_backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse: bool,
                  params=None, resets=None, zoneout=None, recurrent_scale=None):
    """The step path's backward: one row-kernel launch and a torch GEMM per step (on fp32
    copies of 16-bit tensors where the row kernels say so for the device, :func:`_fp32_backward`)."""
    from ...kernels.launches import aligned_input as prep, record

    ks = _kernels()
    dtype, device = y.dtype, y.device
    if ks.fp32_backward(_family(cell), w_hh.shape[0] // cell.gates, dtype, policy.device_limits(device)[0]):
        return _fp32_backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, params,
                              resets, zoneout, recurrent_scale)
    acc = buffers.acc_dtype(dtype)
    gates_n, has_c = cell.gates, cell.has_cell_state
    hidden = w_hh.shape[0] // gates_n
    width = gates_n * hidden
    eps = cell_eps(cell)
    n_rows = y.shape[0]
    dummy_io, dummy_acc = buffers.dummies(dtype, device)
    keep_c = buffers.zoned(cell, zoneout)[0]
    gates, r = saved[0], saved[1]
    c_seq = saved[2] if has_c else dummy_acc
    c_cell = saved[3] if keep_c else c_seq
    w_hh, y, dy, h0 = prep(w_hh), prep(y), prep(dy), prep(h0)
    c0 = prep(c0) if has_c else dummy_io
    dxg = buffers.new((n_rows, width), dtype, device)
    dhg = buffers.new((n_rows, width), dtype, device)
    dh = dh_n.to(acc, copy=True).contiguous()
    dc = dc_n.to(acc, copy=True).contiguous() if has_c else dummy_acc
    dn = buffers.new((n_rows, hidden), acc, device) if has_c else dummy_acc
    extras, ints = buffers.loop_tensors(cell, hidden, params, resets, zoneout, recurrent_scale, dummy_io, prep)
    scale = None if recurrent_scale is None else recurrent_scale.to(acc)
    cfg = ks.row_config(hidden, dtype)
    consts = ks.constexprs(cell, dtype, cfg, None, ks.h_aligned(hidden))
    pointers = (gates, r, c_seq, c_cell, c0, y, h0, dy, dh, dc, dxg, dhg, dn, extras["params"],
                _eps_tensor(eps, acc, device), extras["resets"], extras["mask_h"], extras["mask_c"])
    tail = (ints["has_resets"], ints["zoneout_h"], ints["zoneout_c"], ints["p_h"], ints["p_c"])
    fused = dtype == acc and scale is None  # the GEMM accumulates straight into dh
    grad_buf = None if fused else buffers.new((schedule.batch, hidden), dtype, device)  # (one per call)
    order = list(schedule.order(reverse))
    for j in range(len(order) - 1, -1, -1):
        q = order[j]
        q_off, q_bs = schedule.offsets[q], schedule.batch_sizes[q]
        prev_off, n_prev = (schedule.offsets[order[j - 1]], schedule.batch_sizes[order[j - 1]]) if j else (0, 0)
        grid = ((q_bs + cfg.block_b - 1) // cfg.block_b,)
        ks.ln_backward_kernel[grid](
            *pointers, q_off, q_bs, prev_off, n_prev, hidden, *tail, **consts, num_warps=cfg.num_warps, **ks.OPTIONS,
        )
        record("step", "backward")
        dr, out = dhg[q_off : q_off + q_bs], dh[:q_bs]
        if fused:
            out.addmm_(dr, w_hh)
        elif scale is None:
            out.add_(torch.mm(dr, w_hh, out=grad_buf[:q_bs]))
        else:
            out.addcmul_(torch.mm(dr, w_hh, out=grad_buf[:q_bs]), scale[:q_bs])
        if resets is not None:  # no gradient reaches the state before a reset (no host read of the flags)
            out.masked_fill_(resets[q_off : q_off + q_bs, None], 0)
    dparams = None
    if params is not None:
        dparams = _param_grad(cell, eps, hidden, gates, r, c_cell, dxg, dn, acc).to(params.dtype)
    return BackwardResult(dxg, dhg, dh.to(dtype), dc.to(dtype) if has_c else None, None, dparams)


def _family(cell) -> str:
    """The row kernels' name of ``cell``'s family ("LayerNormLSTM" / "LayerNormGRU")."""
    return cell.name.partition("(")[0]


def _fp32_backward(cell, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule: Schedule, reverse: bool,
                   params, resets, zoneout, recurrent_scale):
    """:func:`step_backward` on fp32 copies of a 16-bit call (every value is exact in fp32, the
    kernels accumulate in fp32 either way), its gradients rounded back to the call's dtype: for
    a row width whose 16-bit backward kernel has no spill-free configuration on the device
    (:data:`fastrnn.kernels.norm_rows.FP32_BACKWARD`)."""
    dtype = y.dtype

    def wide(t):
        return None if t is None or not t.is_floating_point() else t.float()

    out = step_backward(cell, tuple(wide(t) for t in saved), wide(w_hh), wide(b_hh), w_hr, wide(h0), wide(c0),
                        wide(y), wide(dy), wide(dh_n), wide(dc_n), schedule, reverse, wide(params), resets, zoneout,
                        wide(recurrent_scale))
    return BackwardResult(*(None if t is None else t.to(dtype) for t in out[:5]),
                          None if out.dparams is None else out.dparams.to(params.dtype))


def _param_grad(cell, eps, hidden, gates, r, c_cell, dxg, dn, acc):
    """``(param_rows, H)``: ``ln_hh`` gain / bias from the gradient of LN(r)'s output (``dxg``;
    GRU: its n block times ``r_g``) and the normalised ``r``; ``ln_c`` from ``dn`` and LN(c)'s
    normalised input."""
    gates_n = cell.gates
    width = gates_n * hidden
    d = dxg.to(acc, copy=True)
    if not cell.has_cell_state:
        d[:, 2 * hidden :].mul_(gates[:, :hidden])
    r_hat = torch.native_layer_norm(r.to(acc), (width,), None, None, eps)[0]
    rows = [r_hat.mul_(d).sum(0).view(gates_n, hidden), d.sum(0).view(gates_n, hidden)]
    if cell.has_cell_state:
        c_hat = torch.native_layer_norm(c_cell, (hidden,), None, None, eps)[0]
        rows += [c_hat.mul_(dn).sum(0, keepdim=True), dn.sum(0, keepdim=True)]
    return torch.cat(rows)
