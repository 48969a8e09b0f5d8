"""The variant layers against what people run without them, interleaved in the same run.

- ``LNLSTM`` / ``LNGRU``: ``fastrnn.LayerNormLSTM`` / ``LayerNormGRU`` against an eager loop of
  the same equations written with torch ops (:class:`EagerLayerNorm`: the input projection
  and its LayerNorm for the whole sequence at once, then one step at a time, as such code is
  written today); target at most 0.5x its time. A third arm, ``torch.nn.LSTM`` / ``GRU``
  without LayerNorm, gives the scale.
- ``peephole``: ``fastrnn.LSTM(peephole=True)`` against ``fastrnn.LSTM`` (the same layer
  without peepholes); target at most 1.15x.
- ``resets``: ``fastrnn.LSTM`` / ``GRU`` / ``RNN`` with reset flags (a reset every 10 steps
  in every sequence) against the same layer without; target at most 1.15x.
- ``zoneout`` (0.1; ``(0.1, 0.1)`` for the LSTM), ``rdrop`` (recurrent dropout 0.25), ``wdrop``
  (DropConnect 0.5): training (``fwd+bwd``) only, against the same layer without; target at
  most 1.15x.

Both passes (``fwd`` under no_grad, ``fwd+bwd``), on the CPU grid of ``test_throughput.py``
(fp32; fp16 too on CUDA, where the same cases are collected for the GPU run). Each case
times its arms in turns (``interleave.py``) and records the paired ratio fastrnn / baseline;
``conftest.py`` prints them as a second table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import fastrnn
from fastrnn.backends import Call, resolve_name

import interleave
from test_throughput import DTYPE_NAMES, GPU_ONLY_REASON, GRID, bench_device, rounds_for, timed_arm, warmup_for

TARGETS = {"LNLSTM": 0.5, "LNGRU": 0.5, "peephole": 1.15, "resets": 1.15, "zoneout": 1.15, "rdrop": 1.15,
           "wdrop": 1.15}
REGULARISERS = {"zoneout": lambda kind: dict(zoneout=(0.1, 0.1) if kind == "LSTM" else 0.1),
                "rdrop": lambda kind: dict(recurrent_dropout=0.25), "wdrop": lambda kind: dict(weight_drop=0.5)}


class EagerLayerNorm(torch.nn.Module):
    """A LayerNorm-LSTM / -GRU layer as an eager loop of torch ops (the baseline)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer  # the fastrnn module whose parameters it reads
        self.lstm = isinstance(layer, fastrnn.LayerNormLSTM)

    def forward(self, x):
        m = self.layer
        hidden = m.hidden_size
        width = m.ln_ih_weight_l0.shape[0]  # G * H
        gates = F.layer_norm(F.linear(x, m.weight_ih_l0, m.bias_ih_l0), (width,), m.ln_ih_weight_l0,
                             m.ln_ih_bias_l0, m.eps)
        h = x.new_zeros(x.shape[1], hidden)
        c = x.new_zeros(x.shape[1], hidden)
        outs = []
        for t in range(x.shape[0]):
            rec = F.layer_norm(F.linear(h, m.weight_hh_l0, m.bias_hh_l0), (width,), m.ln_hh_weight_l0,
                               m.ln_hh_bias_l0, m.eps)
            if self.lstm:
                i, f, g, o = (gates[t] + rec).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (hidden,), m.ln_c_weight_l0, m.ln_c_bias_l0, m.eps))
            else:
                ar, az, an = gates[t].chunk(3, 1)
                br, bz, bn = rec.chunk(3, 1)
                r, z = torch.sigmoid(ar + br), torch.sigmoid(az + bz)
                n = torch.tanh(an + r * bn)
                h = n + z * (h - n)
            outs.append(h)
        return torch.stack(outs), h


@dataclass(frozen=True)
class VariantCase:
    variant: str  # "LNLSTM" | "LNGRU" | "peephole" | "resets"
    kind: str  # the layer: "LSTM" | "GRU" | "RNN"
    direction: str
    steps: int
    batch: int
    hidden: int
    input: int
    dtype: torch.dtype = torch.float32

    @property
    def name(self) -> str:
        shape = f"T{self.steps}-B{self.batch}" + (f"-I{self.input}" if self.input != self.hidden else "")
        label = self.variant if self.variant.startswith("LN") else f"{self.kind}-{self.variant}"
        name = f"{label}-{self.direction}-{shape}-H{self.hidden}"
        return name if self.dtype == torch.float32 else f"{name}-{DTYPE_NAMES[self.dtype]}"


def variant_cases(device) -> list[VariantCase]:
    """The CPU grid in fp32, and in fp16 for the GPU run (collected everywhere, skipped with
    the reason on the CPU)."""
    dtypes = (torch.float32, torch.float16)
    out = []
    for variant, kinds in (("LNLSTM", ("LSTM",)), ("LNGRU", ("GRU",)), ("peephole", ("LSTM",)),
                           ("resets", ("LSTM", "GRU", "RNN"))):
        for kind in kinds:
            for direction in ("fwd", "fwd+bwd"):
                for steps, batch, inp, hidden in GRID:
                    for dtype in dtypes:
                        out.append(VariantCase(variant, kind, direction, steps, batch, hidden, inp, dtype))
    for variant in REGULARISERS:
        for kind in ("LSTM", "GRU", "RNN"):
            for steps, batch, inp, hidden in GRID:
                for dtype in dtypes:
                    out.append(VariantCase(variant, kind, "fwd+bwd", steps, batch, hidden, inp, dtype))
    return out


def _models(case: VariantCase, device):
    """``(fastrnn module, baseline callable's module, scale module | None, resets | None)``."""
    torch.manual_seed(0)
    resets = None
    scale = None
    if case.variant.startswith("LN"):
        fast = (fastrnn.LayerNormLSTM if case.kind == "LSTM" else fastrnn.LayerNormGRU)(case.input, case.hidden)
        baseline = EagerLayerNorm(fast)
        scale = getattr(torch.nn, case.kind)(case.input, case.hidden)
    elif case.variant == "peephole":
        baseline = fastrnn.LSTM(case.input, case.hidden)
        fast = fastrnn.LSTM(case.input, case.hidden, peephole=True)
        fast.load_state_dict(baseline.state_dict(), strict=False)
        with torch.no_grad():
            for stem in ("weight_ci_l0", "weight_cf_l0", "weight_co_l0"):
                getattr(fast, stem).normal_(0, 0.1)
    elif case.variant in REGULARISERS:
        baseline = getattr(fastrnn, case.kind)(case.input, case.hidden)
        fast = getattr(fastrnn, case.kind)(case.input, case.hidden, **REGULARISERS[case.variant](case.kind))
        fast.load_state_dict(baseline.state_dict())
    else:
        baseline = getattr(fastrnn, case.kind)(case.input, case.hidden)
        fast = getattr(fastrnn, case.kind)(case.input, case.hidden)
        fast.load_state_dict(baseline.state_dict())
        resets = torch.zeros(case.steps, case.batch, dtype=torch.bool, device=device)
        resets[10::10] = True
    fast, baseline = fast.to(device=device, dtype=case.dtype), baseline.to(device=device, dtype=case.dtype)
    if scale is not None:
        scale = scale.to(device=device, dtype=case.dtype)
    return fast, baseline, scale, resets


def _arm(module, x, grad_out, direction, device, resets=None):
    def forward():
        out = module(x) if resets is None else module(x, resets=resets)
        return out[0]

    return timed_arm(forward, direction, module, x, grad_out, device)


BASELINES = {"LNLSTM": "eager LayerNorm-LSTM loop", "LNGRU": "eager LayerNorm-GRU loop",
             "peephole": "fastrnn.LSTM without peepholes", "resets": "the same layer without resets",
             "zoneout": "the same layer without zoneout", "rdrop": "the same layer without it",
             "wdrop": "the same layer without it"}


def _params():
    device = bench_device()
    for case in variant_cases(device):
        gpu_only = case.dtype != torch.float32
        marks = pytest.mark.skip(reason=GPU_ONLY_REASON) if gpu_only and device.type != "cuda" else ()
        yield pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_variant_throughput(benchmark, case: VariantCase):
    device = bench_device()
    fast, baseline, scale, resets = _models(case, device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(case.steps, case.batch, case.input, generator=gen).to(device=device, dtype=case.dtype)
    grad_out = torch.randn(case.steps, case.batch, case.hidden, generator=gen).to(device=device, dtype=case.dtype)
    if case.direction == "fwd+bwd":
        x.requires_grad_(True)
    arms = {"fastrnn": _arm(fast, x, grad_out, case.direction, device, resets),
            "baseline": _arm(baseline, x, grad_out, case.direction, device)}
    if scale is not None:
        arms["scale"] = _arm(scale, x, grad_out, case.direction, device)
    interleave.run_rounds(arms, 1)
    first = interleave.run_rounds(arms, 1)
    rounds = rounds_for(device, (first["baseline"][0] + first["fastrnn"][0]) / 2)
    warmup = warmup_for(rounds)
    interleave.run_rounds(arms, warmup - 1)
    timed = interleave.Rounds(arms, rounds, timed="fastrnn")
    benchmark.group = case.name
    benchmark.pedantic(timed.target, setup=timed.setup, rounds=rounds, warmup_rounds=0, iterations=1)
    times = timed.finish()
    call = Call(fast._kind, case.dtype, packed=False, proj=False, needs_grad=case.direction == "fwd+bwd",
                tracing=False)
    backend = resolve_name(None, device, call)
    wants = {"resets": ("resets",), "zoneout": ("zoneout",), "rdrop": ("recurrent_scale",)}.get(case.variant, ())
    if wants:
        from fastrnn.functional import _with_loop_inputs

        backend = _with_loop_inputs(backend, None, device, wants)
    benchmark.extra_info.update({
        "variant": case.variant, "kind": case.kind, "pass": case.direction, "backend": backend,
        "shape": {"T": case.steps, "B": case.batch, "I": case.input, "H": case.hidden},
        "dtype": DTYPE_NAMES[case.dtype], "device": str(device), "baseline": BASELINES[case.variant],
        "target": TARGETS[case.variant], "rounds": timed.done, "warmup_rounds": warmup,
        "torch_threads": torch.get_num_threads(), "tier_forced": os.environ.get("FASTRNN_TIER") or None,
        "stats": {name: interleave.arm_stats(ts) for name, ts in times.items()},
        "variant_ratio": interleave.paired(times["fastrnn"], times["baseline"]),
        "scale_ratio": interleave.paired(times["fastrnn"], times["scale"]) if scale is not None else None,
    })
