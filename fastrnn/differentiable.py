"""A plain, differentiable layer and its backward: the path of higher-order derivatives.

The fast engines compute first derivatives by hand and build no autograd graph. When a
backward itself must be differentiable (``create_graph=True`` with anything that requires
grad: ``gradgradcheck``, ``hessian``, a gradient penalty, the ``torch.func`` transforms),
:mod:`fastrnn.ops` calls :func:`layer_backward` instead: the same gradients written as
ordinary out-of-place torch ops, one step at a time. Autograd, ``vmap`` and every other
transform see through them, so derivatives of every order are exact. (Differentiating a
recomputed forward with ``torch.autograd.grad`` inside the backward would be shorter, but
``vmap`` over such a nested ``autograd.grad`` — what ``torch.func.jacrev`` does — is not
reliable; explicit formulas are.)

The equations (torch's gate order and torch's GRU rule, ``b_hn`` inside the reset product)::

    LSTM  i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (x W_ih^T + b_ih + h W_hh^T + b_hh)
          c' = f * c + i * g;   m = o * tanh(c');   h' = m W_hr^T  (no W_hr: h' = m)
    GRU   r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr);  z likewise
          n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn));   h' = (1 - z) * n + z * h
    RNN   h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh),  act = tanh | relu

Packed sequences follow :mod:`fastrnn.schedule`: step ``t`` updates rows ``[:bs_t]`` of a
``(B, ·)`` state and leaves the others as they were.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .kinds import CellKind
from .schedule import Schedule


class _Step(NamedTuple):
    """What one forward step computed (everything its backward reads)."""

    t: int
    h_prev: torch.Tensor  # (bs, P)
    c_prev: torch.Tensor | None  # (bs, H)
    gates: torch.Tensor  # activated gates: LSTM i,f,g,o; GRU r,z,n; RNN the output
    extra: torch.Tensor | None  # LSTM tanh(c'); GRU W_hn h + b_hn
    m: torch.Tensor | None  # LSTM with W_hr: o * tanh(c')


def _update(state, new, bs):
    return new if bs == state.shape[0] else torch.cat([new, state[bs:]])


def _forward(kind: CellKind, x, schedule: Schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """Run the layer; returns ``(y (N, P), h_n, c_n | None, steps)``."""
    fold = b_ih is not None and not kind.recurrent_bias_inside
    xg = F.linear(x, w_ih, (b_ih + b_hh) if fold else b_ih)
    inner_bias = b_hh if kind.recurrent_bias_inside else None
    h, c = h0, c0
    ys, steps = [None] * schedule.steps, []
    for t in schedule.order(reverse):
        lo, bs = schedule.offsets[t], schedule.batch_sizes[t]
        hp = h[:bs]
        cp = None if c is None else c[:bs]
        hg = F.linear(hp, w_hh, inner_bias)
        xs = xg[lo : lo + bs]
        extra = m = None
        if kind is CellKind.LSTM:
            i, f, g, o = (xs + hg).chunk(4, 1)
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            c_new = f * cp + i * g
            extra = torch.tanh(c_new)
            h_new = o * extra
            if w_hr is not None:
                m, h_new = h_new, F.linear(h_new, w_hr)
            gates = torch.cat([i, f, g, o], 1)
            c = _update(c, c_new, bs)
        elif kind is CellKind.GRU:
            xr, xz, xn = xs.chunk(3, 1)
            hr, hz, extra = hg.chunk(3, 1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * extra)
            h_new = n + z * (hp - n)
            gates = torch.cat([r, z, n], 1)
        else:
            pre = xs + hg
            h_new = torch.tanh(pre) if kind is CellKind.RNN_TANH else torch.relu(pre)
            gates = h_new
        steps.append(_Step(t, hp, cp, gates, extra, m))
        ys[t] = h_new
        h = _update(h, h_new, bs)
    return torch.cat(ys), h, c, steps


def layer(kind: CellKind, x, schedule: Schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse: bool):
    """One layer-direction: ``(y (N, P), h_n (B, P), c_n (B, H) | None)``, differentiable."""
    y, h_n, c_n, _ = _forward(kind, x, schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    return y, h_n, c_n


def layer_backward(kind: CellKind, x, schedule: Schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse: bool,
                   dy, dh_n, dc_n):
    """Gradients of ``(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)`` (``None`` for an absent
    input) for output gradients ``dy (N, P)``, ``dh_n (B, P)``, ``dc_n (B, H) | None``,
    computed with differentiable torch ops from the inputs alone."""
    _, _, _, steps = _forward(kind, x, schedule, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    dh, dc = dh_n, dc_n
    dxg, dhg, h_prevs, ms, dms = [None] * schedule.steps, [None] * schedule.steps, [], [], []
    for s in reversed(steps):
        lo, bs = schedule.offsets[s.t], schedule.batch_sizes[s.t]
        dh_t = dh[:bs] + dy[lo : lo + bs]  # everything that reaches h_t
        if kind is CellKind.LSTM:
            i, f, g, o = s.gates.chunk(4, 1)
            dm = dh_t
            if w_hr is not None:
                dm = dh_t @ w_hr
                ms.append(s.m)
                dms.append(dh_t)
            dc_t = dc[:bs] + dm * o * (1 - s.extra * s.extra)
            dpre = torch.cat([dc_t * g * i * (1 - i), dc_t * s.c_prev * f * (1 - f), dc_t * i * (1 - g * g),
                              dm * s.extra * o * (1 - o)], 1)
            dc = _update(dc, dc_t * f, bs)
            dx_t = dh_t_g = dpre
            dh_prev = dpre @ w_hh
        elif kind is CellKind.GRU:
            r, z, n = s.gates.chunk(3, 1)
            dn_pre = dh_t * (1 - z) * (1 - n * n)
            dz_pre = dh_t * (s.h_prev - n) * z * (1 - z)
            dr_pre = dn_pre * s.extra * r * (1 - r)
            dx_t = torch.cat([dr_pre, dz_pre, dn_pre], 1)
            dh_t_g = torch.cat([dr_pre, dz_pre, dn_pre * r], 1)
            dh_prev = dh_t * z + dh_t_g @ w_hh
        else:
            if kind is CellKind.RNN_TANH:
                dx_t = dh_t * (1 - s.gates * s.gates)
            else:  # torch's relu' passes the gradient where the output is not <= 0 (NaN too)
                dx_t = torch.where(s.gates <= 0, torch.zeros_like(dh_t), dh_t)
            dh_t_g = dx_t
            dh_prev = dx_t @ w_hh
        dxg[s.t], dhg[s.t] = dx_t, dh_t_g
        h_prevs.append(s.h_prev)
        dh = _update(dh, dh_prev, bs)
    dxg_all = torch.cat(dxg)
    # dW_hh pairs each step's recurrent-gate gradient with the state it read.
    dhg_steps = torch.cat([dhg[s.t] for s in reversed(steps)])
    dw_hh = dhg_steps.t() @ torch.cat(h_prevs)
    db_ih = db_hh = None
    if b_ih is not None:
        db_ih = dxg_all.sum(0)
        db_hh = dhg_steps.sum(0)
    dw_hr = None
    if w_hr is not None:
        dw_hr = torch.cat(dms).t() @ torch.cat(ms)
    dc0 = dc if kind is CellKind.LSTM else None
    return dxg_all @ w_ih, dh, dc0, dxg_all.t() @ x, dw_hh, db_ih, db_hh, dw_hr
