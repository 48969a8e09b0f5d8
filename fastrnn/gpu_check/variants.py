"""The variant layers on the device: peephole LSTM, LayerNorm-LSTM / -GRU, resets inside a
sequence, zoneout and recurrent dropout (training, the same masks on both sides: the seed
is set before each run), on each kernel tier forced in turn, against the reference backend
on the same device (float32, IEEE: TF32 off), outputs and every gradient.

A variant a tier cannot run goes where the backend sends it (the step tier, or the
reference backend with its warning); the record says where each ran.
"""

from __future__ import annotations

import warnings

import torch

import fastrnn

from . import checks

#: name -> (factory(input, hidden, **kw), carries a cell state, uses resets)
MODELS = {
    "LSTM-peephole+resets": (lambda i, h, **k: fastrnn.LSTM(i, h, peephole=True, **k), True, True),
    "GRU+resets": (lambda i, h, **k: fastrnn.GRU(i, h, **k), False, True),
    "LayerNormLSTM": (lambda i, h, **k: fastrnn.LayerNormLSTM(i, h, **k), True, False),
    "LayerNormGRU": (lambda i, h, **k: fastrnn.LayerNormGRU(i, h, **k), False, False),
    "LSTM-zoneout+rdrop": (lambda i, h, **k: fastrnn.LSTM(i, h, zoneout=(0.2, 0.3), recurrent_dropout=0.3, **k),
                           True, False),
    "GRU-zoneout+rdrop+resets": (lambda i, h, **k: fastrnn.GRU(i, h, zoneout=0.2, recurrent_dropout=0.3, **k),
                                 False, True),
}
TIERS = ("step", "resident", "cooperative")
#: fp32 IEEE on both sides, T <= 12: a few ulps per step in different orders of summation
BOUND = 1e-4


def _run(model, x, hx, resets, grad_seed: int):
    torch.manual_seed(grad_seed)  # the same regulariser masks on both sides
    x = x.detach().clone().requires_grad_()
    out, hidden = model(x, hx, resets=resets)
    leaves = [out, *(hidden if isinstance(hidden, tuple) else (hidden,))]
    gen = torch.Generator().manual_seed(grad_seed)
    loss = sum((t * torch.randn(t.shape, generator=gen).to(t.device)).sum() for t in leaves)
    grads = torch.autograd.grad(loss, [x, *model.parameters()])
    return [t.detach() for t in leaves] + list(grads)


def variants_check(env: checks.Env) -> dict:
    gpu = env.device.type == "cuda"
    steps, batch, inp, hidden = (12, 5, 24, 32) if gpu else (3, 2, 4, 16)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(steps, batch, inp, generator=gen).to(env.device)
    resets = torch.zeros(steps, batch, dtype=torch.bool)
    resets[steps // 2, 0] = resets[1, batch - 1] = True
    resets = resets.to(env.device)
    rows, worst = [], 0.0
    with checks.precision(False):
        for name, (make, has_c, uses_resets) in MODELS.items():
            torch.manual_seed(0)
            ref = make(inp, hidden, num_layers=2, bidirectional=True, backend="reference").to(env.device)
            with torch.no_grad():
                for p in ref.parameters():  # peepholes and LayerNorm parameters away from their init
                    p.add_(torch.randn(p.shape, generator=gen).to(p.device) * 0.1)
            fast = make(inp, hidden, num_layers=2, bidirectional=True, backend="triton").to(env.device)
            fast.load_state_dict(ref.state_dict())
            h0 = torch.randn(4, batch, hidden, generator=gen).to(env.device)
            hx = (h0, torch.randn(4, batch, hidden, generator=gen).to(env.device)) if has_c else h0
            flags = resets if uses_resets else None
            want = _run(ref, x, hx, flags, 7)
            for tier in TIERS:
                context = env.coop_context() if tier == "cooperative" else checks.environ()
                with context, checks.environ(FASTRNN_TIER=tier), warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        got = _run(fast, x, hx, flags, 7)
                    except RuntimeError as exc:  # a tier's clear refusal is a record, not a pass
                        rows.append(dict(model=name, tier=tier, status="refused", why=str(exc)))
                        continue
                error = max(checks.normwise_error(a, b) for a, b in zip(got, want))
                worst = max(worst, error)
                rows.append(dict(model=name, tier=tier, error=error, status="ok" if error <= BOUND * env.tol_scale
                                 else "fail", warnings=[str(w.message) for w in caught]))
    failed = [r for r in rows if r["status"] == "fail"]
    return dict(status="fail" if failed else "ok", worst_error=worst, bound=BOUND * env.tol_scale, rows=rows)
