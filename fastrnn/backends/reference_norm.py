"""The reference backend's own loops for the LayerNorm-LSTM and LayerNorm-GRU cells (and,
through :func:`loops`, the peephole LSTM's of :mod:`fastrnn.backends.reference_peephole`).

Loops of the same kind as torch's cells' in :mod:`fastrnn.backends.reference` (equations in
:mod:`fastrnn.cells.variants`): no autograd graph, buffers allocated once per call and
written in place, and everything that does not depend on the recurrence computed for the
whole sequence in one op before the backward loop. The generic loop would split each step
into gate slots, call the cell's out-of-place functions and copy their results back; these
run each step as a handful of ops around its GEMM.

The backward of a row-wise LayerNorm ``y = x_hat * w + b`` (``x_hat = (x - mean) * rstd``
over ``D`` features) is ``dx = rstd * (w dy) - rstd * mean(w dy) - rstd * x_hat * mean(w dy x_hat)``.
Per step, the two means of every row are one batched product ``dy (bs, 1, D) @ K (bs, D, 2)``
(``K = [w / D, w x_hat / D]``, made for the whole sequence from the saved input) and the
correction one more, ``[m0, m1] @ L`` with ``L = [-rstd, -rstd x_hat]``.

Saved layout (:func:`saved_layout`, the generic loop's for the same cells, so that a call
has the same layout whichever loop runs it):

- LayerNorm-LSTM: gates ``(N, 4H)`` (``sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)``), the
  recurrent pre-activation ``r = h_prev W_hh^T + b_hh`` ``(N, 4H)``, ``c`` ``(N, H)``;
- LayerNorm-GRU: gates ``(N, 3H)`` (``r_g, z, n``) and ``r`` ``(N, 3H)``.

The backward recomputes the normalisations' statistics from ``r`` and ``c`` for the whole
sequence at once.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from ..cells.variants import LSTM_PEEPHOLE, layer_norm_gru, layer_norm_lstm
from . import reference as ref, reference_peephole
from .base import BackwardResult, ForwardResult


class Loops(NamedTuple):
    """A cell's tuned loops: ``forward(xg, w_hh, b_hh, h0, c0, schedule, reverse, save,
    params, cuts)``, ``backward(saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule, reverse,
    params, resets, cuts)`` and ``layout(rows, hidden, dtype)`` (``cuts``:
    :func:`fastrnn.backends.reference.reset_steps`)."""

    forward: Callable
    backward: Callable
    layout: Callable
    norm: tuple | None = None  #: ``("lstm" | "gru", eps)`` for the LayerNorm cells (their C++ loops)


_LOOPS: dict = {}


def loops(cell) -> Loops | None:
    """The tuned loops of ``cell``, or None when it runs the generic loop."""
    try:
        return _LOOPS[cell]
    except KeyError:
        found = _LOOPS[cell] = _find(cell)
        return found


def _eps(name: str, prefix: str) -> float | None:
    """``eps`` of a family cell's name ``"Prefix(eps=...)"``, or None."""
    if not (name.startswith(prefix + "(eps=") and name.endswith(")")):
        return None
    try:
        return float(name[len(prefix) + 5 : -1])
    except ValueError:
        return None


def _find(cell) -> Loops | None:
    if cell is LSTM_PEEPHOLE:
        return Loops(reference_peephole.forward, reference_peephole.backward, reference_peephole.layout)
    name = getattr(cell, "name", None)
    if not isinstance(name, str):
        return None
    for prefix, make, forward, backward, layout, family in (
        ("LayerNormLSTM", layer_norm_lstm, _ln_lstm_forward, _ln_lstm_backward, _ln_lstm_layout, "lstm"),
        ("LayerNormGRU", layer_norm_gru, _ln_gru_forward, _ln_gru_backward, _ln_gru_layout, "gru"),
    ):
        eps = _eps(name, prefix)
        if eps is not None and _made_by(cell, make):
            return Loops(_with_eps(forward, eps), _with_eps(backward, eps), layout, (family, eps))
    return None


def _made_by(cell, factory) -> bool:
    """Whether ``cell`` is the family's own definition (its pointwise functions are the
    factory's), not a user cell that borrowed the family's name."""
    fn = cell.torch_forward
    return (getattr(fn, "__module__", None) == factory.__module__
            and getattr(fn, "__qualname__", None) == f"{factory.__qualname__}.<locals>.forward")


def _with_eps(fn, eps):
    def run(*args):
        return fn(*args, eps)

    run.__name__ = fn.__name__
    return run


def saved_layout(cell, rows, hidden, dtype, save):
    """Shapes and dtypes of the ``saved`` tuple of ``cell``'s tuned forward."""
    return loops(cell).layout(rows, hidden, dtype) if save else []


def _ln_lstm_layout(rows, hidden, dtype):
    return [((rows, 4 * hidden), dtype), ((rows, 4 * hidden), dtype), ((rows, hidden), dtype)]


def _ln_gru_layout(rows, hidden, dtype):
    return [((rows, 3 * hidden), dtype), ((rows, 3 * hidden), dtype)]


def _norm_factors(x, weight, eps):
    """``(x_hat, rstd * weight, K, L)`` of a row-wise LayerNorm of ``x`` (N, D) for the
    backward (see the module docstring); ``x_hat`` is a new tensor the caller may reuse."""
    rows, width = x.shape
    x_hat, _, rstd = torch.native_layer_norm(x, (width,), None, None, eps)
    k = x.new_empty(rows, 2, width)
    k[:, 0].copy_((weight / width).expand(rows, width))
    torch.mul(x_hat, weight / width, out=k[:, 1])
    lmat = x.new_empty(rows, 2, width)
    lmat[:, 0].copy_(rstd.expand(rows, width)).neg_()
    torch.mul(x_hat, rstd, out=lmat[:, 1]).neg_()
    return x_hat, torch.mul(rstd, weight), k.transpose(1, 2), lmat


# --------------------------------------------------------------------------------------
# LayerNorm-LSTM
#   r = h W_hh^T + b_hh;  i, f, g, o = act(x + LN(r; ln_hh))
#   c' = f * c + i * g;   h' = o * tanh(LN(c'; ln_c))
# --------------------------------------------------------------------------------------


def _ln_lstm_forward(xg, w_hh, b_hh, h0, c0, schedule, reverse, save, params, cuts, eps):
    rows, hidden = xg.shape[0], c0.shape[1]
    width = 4 * hidden
    sizes = schedule.batch_sizes
    w_r, b_r, w_c, b_c = params[0:4].reshape(-1), params[4:8].reshape(-1), params[8], params[9]
    # One activation op per step: tanh(a) = 2 sigmoid(2a) - 1, so the g block's input and
    # LayerNorm gain and bias are doubled and all four gates take one sigmoid; c then reads
    # s = sigmoid(2a) as i * g = 2 i s - i, and the saved g is 2 s - 1 after the loop.
    g_cols = slice(2 * hidden, 3 * hidden)
    w_r, b_r = w_r.clone(), b_r.clone()
    w_r[g_cols].mul_(2)
    b_r[g_cols].mul_(2)
    xg[:, g_cols].mul_(2)
    y = xg.new_empty(rows, hidden)
    r_seq = xg.new_empty(rows if save else schedule.batch, width)
    # With `save` every step writes its own rows of c; without, one (B, H) buffer is
    # updated in place (rows beyond the active batch keep their final value).
    c_seq = xg.new_empty(rows, hidden) if save else c0.clone()
    w_hh_t = w_hh.t().contiguous()  # one copy per call; the per-step GEMMs run faster on it
    # Each step's rows, as views made once; the gates overwrite the input projection in
    # place (xg belongs to the call).
    gate_rows, y_rows = xg.split_with_sizes(sizes), y.split_with_sizes(sizes)
    i_rows, f_rows, s_rows, o_rows = (xg[:, a * hidden : b * hidden].split_with_sizes(sizes)
                                      for a, b in ((0, 1), (1, 2), (2, 3), (3, 4)))
    r_rows = r_seq.split_with_sizes(sizes) if save else None
    c_rows = c_seq.split_with_sizes(sizes) if save else None
    zero_h = torch.zeros_like(h0) if cuts is not None else None
    zero_c = torch.zeros_like(c0) if cuts is not None and save else None
    h = c = None
    for t in schedule.order(reverse):
        bs = sizes[t]
        cut = None if cuts is None else cuts[t]
        hs = h0[:bs] if h is None else ref._state_rows(h, h0, bs)
        if cut is not None:
            hs = ref.reset_state(hs, cut, zero_h)
        r = r_rows[t] if save else r_seq[:bs]
        if b_hh is None:
            torch.mm(hs, w_hh_t, out=r)
        else:
            torch.addmm(b_hh, hs, w_hh_t, out=r)
        gate_rows[t].add_(torch.layer_norm(r, (width,), w_r, b_r, eps)).sigmoid_()
        if save:
            cp = c0[:bs] if c is None else ref._state_rows(c, c0, bs)
            if cut is not None:
                cp = ref.reset_state(cp, cut, zero_c)
            c = torch.mul(f_rows[t], cp, out=c_rows[t])
        else:
            c = ref.reset_in_place(c_seq[:bs], cut).mul_(f_rows[t])
        c.addcmul_(i_rows[t], s_rows[t], value=2).sub_(i_rows[t])  # + i * g
        h = torch.mul(torch.layer_norm(c, (hidden,), w_c, b_c, eps).tanh_(), o_rows[t], out=y_rows[t])
    c_n = schedule.final(c_seq, reverse) if save else c_seq
    if save:
        xg[:, g_cols].mul_(2).sub_(1)  # g = 2 s - 1
    saved = (xg, r_seq, c_seq) if save else ()
    return ForwardResult(y, schedule.final(y, reverse), c_n, saved)


def _ln_lstm_backward(saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, params, resets, cuts, eps):
    gates_seq, r_seq, c_seq = saved
    rows, hidden = c_seq.shape
    sizes = schedule.batch_sizes
    w_r, w_c, b_c = params[0:4].reshape(-1), params[8], params[9]
    i, f, g, o = gates_seq.chunk(4, 1)
    c_prev = ref.reset_sequence(schedule.previous(c_seq, c0, reverse), resets)
    c_hat, wr_c, k_c, l_c = _norm_factors(c_seq, w_c, eps)
    tcn = torch.addcmul(b_c, c_hat, w_c).tanh_()  # tanh(LN(c))
    # Whole-sequence factors (as the LSTM's): dgates = [dc*i', dc*f', dc*g', dh*o'] with
    #   i' = g*i*(1-i), f' = c_prev*f*(1-f), g' = i*(1-g^2), o' = tanh(LN(c))*o*(1-o);
    # dgates starts as these factors and each step multiplies its rows by dc / dh in place.
    dgates = ref.lstm_gate_factors(gates_seq, c_prev, tcn)
    # The gradient reaching LN(c)'s output: dh * o * (1 - tanh(LN(c))^2).
    dn_factor = tcn.mul_(tcn).neg_().add_(1).mul_(o)
    r_hat, wr_r, k_r, l_r = _norm_factors(r_seq, w_r, eps)

    dh, dc = dh_n.clone(), dc_n.clone()
    dn_seq = dy.new_empty(rows, hidden)  # the gradient of LN(c)'s output, for its gain and bias
    dr = dy.new_empty(rows, 4 * hidden)
    dgate_rows, dr_rows = dgates.split_with_sizes(sizes), dr.split_with_sizes(sizes)
    dn_rows, dnf_rows, wrc_rows, wrr_rows, f_rows = (
        s.split_with_sizes(sizes) for s in (dn_seq, dn_factor, wr_c, wr_r, f))
    kc_rows, lc_rows, kr_rows, lr_rows = (s.split_with_sizes(sizes) for s in (k_c, l_c, k_r, l_r))
    for t, dy_next in ref._backward_order(schedule, reverse, dh, dy):
        bs = sizes[t]
        dhs, dcs = ref._head(dh, bs), dc[:bs]
        # dc += LN_c backward of dn = dh * dn_factor
        dn = torch.mul(dhs, dnf_rows[t], out=dn_rows[t])
        dcs.addcmul_(dn, wrc_rows[t])
        dcs.unsqueeze(1).baddbmm_(torch.bmm(dn.unsqueeze(1), kc_rows[t]), lc_rows[t])
        step = dgate_rows[t].view(bs, 4, hidden)
        step[:, :3].mul_(dcs.unsqueeze(1))
        step[:, 3].mul_(dhs)
        dcs.mul_(f_rows[t])
        # dr = LN_hh backward of the gates' gradient
        d = dgate_rows[t]
        drs = torch.mul(d, wrr_rows[t], out=dr_rows[t])
        drs.unsqueeze(1).baddbmm_(torch.bmm(d.unsqueeze(1), kr_rows[t]), lr_rows[t])
        cut = None if cuts is None else cuts[t]
        if cut is None:
            ref._recurrent_grad(dh, drs, w_hh, dy_next)
        else:
            ref.cut_recurrent_grad(dh, drs, w_hh, dy_next, cut, dc=dc)
    dparams = torch.cat((
        r_hat.mul_(dgates).sum(0).view(4, hidden), dgates.sum(0).view(4, hidden),
        c_hat.mul_(dn_seq).sum(0, keepdim=True), dn_seq.sum(0, keepdim=True),
    )).to(params.dtype)
    return BackwardResult(dgates, dr, dh, dc, None, dparams)


# --------------------------------------------------------------------------------------
# LayerNorm-GRU
#   r = h W_hh^T + b_hh;  b = LN(r; ln_hh)
#   r_g = sigmoid(x_r + b_r), z = sigmoid(x_z + b_z), n = tanh(x_n + r_g * b_n)
#   h' = (1 - z) * n + z * h
# --------------------------------------------------------------------------------------


def _ln_gru_forward(xg, w_hh, b_hh, h0, c0, schedule, reverse, save, params, cuts, eps):
    rows, hidden = xg.shape[0], h0.shape[1]
    width = 3 * hidden
    sizes = schedule.batch_sizes
    w_r, b_r = params[0:3].reshape(-1), params[3:6].reshape(-1)
    y = xg.new_empty(rows, hidden)
    r_seq = xg.new_empty(rows if save else schedule.batch, width)
    w_hh_t = w_hh.t().contiguous()  # one copy per call; the per-step GEMMs run faster on it
    # r_g, z, n overwrite the step's input projection in place (xg belongs to the call).
    rz_rows, rg_rows, z_rows, n_rows = (xg[:, a * hidden : b * hidden].split_with_sizes(sizes)
                                        for a, b in ((0, 2), (0, 1), (1, 2), (2, 3)))
    y_rows = y.split_with_sizes(sizes)
    r_rows = r_seq.split_with_sizes(sizes) if save else None
    zero = torch.zeros_like(h0) if cuts is not None else None
    split = [2 * hidden, hidden]
    h = None
    for t in schedule.order(reverse):
        bs = sizes[t]
        hs = h0[:bs] if h is None else ref._state_rows(h, h0, bs)
        if cuts is not None:
            hs = ref.reset_state(hs, cuts[t], zero)
        r = r_rows[t] if save else r_seq[:bs]
        if b_hh is None:
            torch.mm(hs, w_hh_t, out=r)
        else:
            torch.addmm(b_hh, hs, w_hh_t, out=r)
        b_rz, b_n = torch.layer_norm(r, (width,), w_r, b_r, eps).split_with_sizes(split, 1)
        rz_rows[t].add_(b_rz).sigmoid_()
        n = n_rows[t].addcmul_(rg_rows[t], b_n).tanh_()
        h = torch.lerp(n, hs, z_rows[t], out=y_rows[t])  # n + z * (h - n)
    saved = (xg, r_seq) if save else ()
    return ForwardResult(y, schedule.final(y, reverse), None, saved)


def _ln_gru_backward(saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, params, resets, cuts, eps):
    gates_seq, r_seq = saved
    rows, hidden = y.shape
    width = 3 * hidden
    sizes = schedule.batch_sizes
    w_r, b_r = params[0:3].reshape(-1), params[3:6].reshape(-1)
    rg, z, n = gates_seq.chunk(3, 1)
    h_prev = ref.reset_sequence(schedule.previous(y, h0, reverse), resets)
    r_hat, _, rstd = torch.native_layer_norm(r_seq, (width,), None, None, eps)
    b_n = torch.addcmul(b_r[2 * hidden :], r_hat[:, 2 * hidden :], w_r[2 * hidden :])
    # With dh the total gradient reaching h' at a step (the GRU's factors, b_n for W_hn h):
    #   dx = dh * [F_r, F_z, F_n]: F_n = (1-z)(1-n^2), F_z = (h-n) z (1-z), F_r = F_n b_n r_g (1-r_g)
    #   d = dh * [F_r, F_z, F_n r_g], the gradient of LN(r)'s output, whose backward is
    #   dr = rstd * (w d) - rstd * mean(w d) - rstd * r_hat * mean(w d r_hat)
    #   dh_prev = dh * z + dr @ W_hh
    dxg = torch.empty_like(gates_seq)
    dxr, dxz, dxn = dxg.chunk(3, 1)
    torch.mul(n, n, out=dxn).neg_().add_(1)  # 1 - n^2
    torch.mul(z, dxn, out=dxr)
    dxn.sub_(dxr)  # (1 - z) * (1 - n^2)
    torch.mul(rg, rg, out=dxr)
    torch.sub(rg, dxr, out=dxr).mul_(b_n).mul_(dxn)
    torch.mul(z, z, out=dxz)
    torch.sub(z, dxz, out=dxz).mul_(h_prev.sub_(n))
    # w * [F_r, F_z, F_n r_g]: every term of dr is dh times a whole-sequence factor, so the
    # first term is a buffer scaled per step and the two means a product with dh itself.
    wd = dxg.clone()
    wd[:, 2 * hidden :].mul_(rg)
    wd.mul_(w_r)
    dr = torch.mul(wd, rstd)
    k = y.new_empty(rows, 2, hidden)
    torch.sum(wd.view(rows, 3, hidden), 1, out=k[:, 0])
    torch.sum(wd.mul_(r_hat).view(rows, 3, hidden), 1, out=k[:, 1])
    k.div_(width)
    lmat = y.new_empty(rows, 2, width)
    lmat[:, 0].copy_(rstd.expand(rows, width)).neg_()
    torch.mul(r_hat, rstd, out=lmat[:, 1]).neg_()

    dh = dh_n.clone()
    dxg_rows, dr_rows = (s.view(rows, 3, hidden).split_with_sizes(sizes) for s in (dxg, dr))
    z_rows, k_rows, l_rows = (s.split_with_sizes(sizes) for s in (z, k.transpose(1, 2), lmat))
    for t, dy_next in ref._backward_order(schedule, reverse, dh, dy):
        bs = sizes[t]
        dhs = ref._head(dh, bs)
        scale = dhs.unsqueeze(1)
        dxg_rows[t].mul_(scale)
        drs = dr_rows[t].mul_(scale).view(bs, 1, width)
        drs.baddbmm_(torch.bmm(scale, k_rows[t]), l_rows[t])
        drs = drs.view(bs, width)
        cut = None if cuts is None else cuts[t]
        if cut is None:
            ref._recurrent_grad(dh, drs, w_hh, dy_next, carry=(dhs, z_rows[t]))
        else:
            ref.cut_recurrent_grad(dh, drs, w_hh, dy_next, cut, carry=(dhs, z_rows[t]))
    d = dxg.clone()
    d[:, 2 * hidden :].mul_(rg)
    dparams = torch.cat((r_hat.mul_(d).sum(0).view(3, hidden), d.sum(0).view(3, hidden))).to(params.dtype)
    return BackwardResult(dxg, dr, dh, None, None, dparams)
