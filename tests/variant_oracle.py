"""Plain torch loops of the published equations, one sequence at a time: the oracle of the
variant-cell and reset tests (written here, independent of fastrnn's engine and cells).

``run_module(m, kind, sequences, h0, c0, resets)`` reads a layer module's parameters by
their torch names and runs every layer and direction of every sequence step by step, with
autograd recording everything, so the gradients of the loop are the reference gradients.

Equations:
- LSTM (torch): ``i, f, g, o`` from ``W_ih x + b_ih + W_hh h + b_hh``; peephole adds
  ``w_ci * c_{t-1}``, ``w_cf * c_{t-1}`` to ``i``, ``f`` and ``w_co * c_t`` to ``o`` (ONNX P).
- GRU (torch): ``r, z`` from the sums, ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``.
- RNN tanh.
- LayerNorm-LSTM (Ba et al. 2016, eqs. 20-22): ``gates = LN(W_ih x + b_ih) + LN(W_hh h + b_hh)``
  over the 4H vector, ``c = s(f) c + s(i) tanh(g)``, ``h = s(o) tanh(LN(c))``.
- LayerNorm-GRU: ``a = LN(W_ih x + b_ih)``, ``b = LN(W_hh h + b_hh)``, ``r = s(a_r + b_r)``,
  ``z = s(a_z + b_z)``, ``n = tanh(a_n + r * b_n)``, ``h = (1 - z) n + z h``.
- Resets: the state entering step ``t`` of a sequence is zero where ``resets[t]``; going in
  reverse, the state carried from ``t`` into ``t - 1`` is zero where ``resets[t]``.
"""

from __future__ import annotations

import torch


def layer_norm(v, weight, bias, eps):
    """LayerNorm over the last dimension, biased variance, eps inside the square root."""
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    return (v - mean) / torch.sqrt(var + eps) * weight + bias


def _linear(x, w, b):
    out = x @ w.t()
    return out if b is None else out + b


def step(kind, p, x, h, c, eps=1e-5):
    """One step of one sequence: ``x`` ``(I,)``, ``h``/``c`` ``(H,)`` -> ``(h, c)``."""
    s = torch.sigmoid
    if kind == "LSTM":
        gi, gf, gg, go = (_linear(x, p["w_ih"], p["b_ih"]) + _linear(h, p["w_hh"], p["b_hh"])).chunk(4)
        if "w_ci" in p:
            i, f = s(gi + p["w_ci"] * c), s(gf + p["w_cf"] * c)
            c = f * c + i * torch.tanh(gg)
            o = s(go + p["w_co"] * c)
        else:
            i, f, o = s(gi), s(gf), s(go)
            c = f * c + i * torch.tanh(gg)
        return o * torch.tanh(c), c
    if kind == "GRU":
        ar, az, an = _linear(x, p["w_ih"], p["b_ih"]).chunk(3)
        br, bz, bn = _linear(h, p["w_hh"], p["b_hh"]).chunk(3)
        r, z = s(ar + br), s(az + bz)
        n = torch.tanh(an + r * bn)
        return (1 - z) * n + z * h, None
    if kind == "RNN_TANH":
        return torch.tanh(_linear(x, p["w_ih"], p["b_ih"]) + _linear(h, p["w_hh"], p["b_hh"])), None
    if kind == "LayerNormLSTM":
        pre = layer_norm(_linear(x, p["w_ih"], p["b_ih"]), p["ln_ih_weight"], p["ln_ih_bias"], eps) + layer_norm(
            _linear(h, p["w_hh"], p["b_hh"]), p["ln_hh_weight"], p["ln_hh_bias"], eps)
        gi, gf, gg, go = pre.chunk(4)
        c = s(gf) * c + s(gi) * torch.tanh(gg)
        return s(go) * torch.tanh(layer_norm(c, p["ln_c_weight"], p["ln_c_bias"], eps)), c
    if kind == "LayerNormGRU":
        a = layer_norm(_linear(x, p["w_ih"], p["b_ih"]), p["ln_ih_weight"], p["ln_ih_bias"], eps)
        b = layer_norm(_linear(h, p["w_hh"], p["b_hh"]), p["ln_hh_weight"], p["ln_hh_bias"], eps)
        ar, az, an = a.chunk(3)
        br, bz, bn = b.chunk(3)
        r, z = s(ar + br), s(az + bz)
        n = torch.tanh(an + r * bn)
        return (1 - z) * n + z * h, None
    raise ValueError(kind)


_NAMES = {
    "w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh",
    "w_ci": "weight_ci", "w_cf": "weight_cf", "w_co": "weight_co",
    "ln_ih_weight": "ln_ih_weight", "ln_ih_bias": "ln_ih_bias", "ln_hh_weight": "ln_hh_weight",
    "ln_hh_bias": "ln_hh_bias", "ln_c_weight": "ln_c_weight", "ln_c_bias": "ln_c_bias",
}


def params_of(m, layer=None, reverse=False) -> dict:
    """The parameters of one layer-direction of ``m`` (a cell when ``layer`` is None)."""
    sfx = "" if layer is None else f"_l{layer}{'_reverse' if reverse else ''}"
    out = {}
    for short, name in _NAMES.items():
        if hasattr(m, name + sfx):
            out[short] = getattr(m, name + sfx)
    out.setdefault("b_ih", None)
    out.setdefault("b_hh", None)
    return out


def run_sequence(m, kind, x, h0, c0, resets=None, regularise=None):
    """One sequence ``x`` ``(T, I)`` through every layer and direction of ``m``.

    ``h0``/``c0`` ``(L*D, H)``; ``resets`` ``(T,)`` bool or None. ``regularise(idx)`` (idx:
    layer * D + direction) may give a dict for that layer-direction: ``w_hh`` (the weight to
    use: DropConnect), ``scale`` ``(H,)`` (recurrent dropout: ``h_{t-1} * scale`` enters
    ``W_hh``), ``zoneout_h`` / ``zoneout_c``: ``(T, H)`` bool masks (training: keep the
    previous value where True) or floats (eval: ``p * prev + (1 - p) * new``). Returns
    ``(out (T, D*H), h_n (L*D, H), c_n (L*D, H) | None)``.
    """
    directions = 2 if m.bidirectional else 1
    steps = x.shape[0]
    eps = getattr(m, "eps", 1e-5)
    h_n, c_n = [], []
    inp = x
    for layer in range(m.num_layers):
        outs = []
        for d in range(directions):
            idx = layer * directions + d
            p = params_of(m, layer, d == 1)
            reg = regularise(idx) if regularise is not None else {}
            if "w_hh" in reg:
                p = dict(p, w_hh=reg["w_hh"])
            h, c = h0[idx], (c0[idx] if c0 is not None else None)
            ys = [None] * steps
            order = range(steps - 1, -1, -1) if d == 1 else range(steps)
            for t in order:
                cut = False
                if resets is not None:
                    if d == 0:
                        cut = bool(resets[t])
                    else:
                        cut = t + 1 < steps and bool(resets[t + 1])
                if cut:
                    h = torch.zeros_like(h)
                    c = None if c is None else torch.zeros_like(c)
                h_prev, c_prev = h, c
                if "scale" in reg:
                    # the scaled state enters W_hh only: run the step with a W_hh that scales
                    # its input columns (the same product), the state itself unchanged
                    p_step = dict(p, w_hh=p["w_hh"] * reg["scale"])
                else:
                    p_step = p
                h, c = step(kind, p_step, inp[t], h, c, eps)
                h = _zone(reg.get("zoneout_h"), t, h_prev, h)
                if c is not None:
                    c = _zone(reg.get("zoneout_c"), t, c_prev, c)
                ys[t] = h
            outs.append(torch.stack(ys))
            h_n.append(h)
            c_n.append(c)
        inp = torch.cat(outs, -1)
    return inp, torch.stack(h_n), (torch.stack(c_n) if c0 is not None else None)


def _zone(spec, t, prev, new):
    if spec is None:
        return new
    if isinstance(spec, float):
        return spec * prev + (1 - spec) * new
    return torch.where(spec[t], prev, new)


def run_cell(cell, kind, x, h, c):
    """One step of a cell module on a batch ``x`` ``(B, I)``."""
    p = params_of(cell)
    hs, cs = [], []
    for b in range(x.shape[0]):
        hb, cb = step(kind, p, x[b], h[b], None if c is None else c[b], getattr(cell, "eps", 1e-5))
        hs.append(hb)
        cs.append(cb)
    return torch.stack(hs), (torch.stack(cs) if c is not None else None)
