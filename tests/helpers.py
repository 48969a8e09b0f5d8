"""Shared test helpers: module pairs with copied weights, and full output+gradient parity.

Tolerances per dtype (``TOL``), and why:
- float64: both sides do the same math in a different op order; differences are a few
  ulps times the condition of the recurrence (T <= 12 here), so 1e-9 absolute.
- float32: same argument at eps 1.2e-7; GEMM blocking differs between MKL paths, and the
  error grows with T and with the size of the reductions (dW sums N rows): 2e-5 / 1e-4.
- float16: fp16 I/O with fp32 accumulation on our side vs torch's own path: 1 part in
  1e3 per step, a few steps deep -> 1e-2.
- bfloat16: 8 bits of mantissa -> 5e-2.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence

import fastrnn

TOL = {
    torch.float64: dict(rtol=1e-7, atol=1e-9),
    torch.float32: dict(rtol=1e-4, atol=2e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}


def make_pair(cls_name: str, *args, backend=None, **kwargs):
    """A ``torch.nn.<cls_name>`` and a ``fastrnn.<cls_name>`` with identical parameters."""
    ref = getattr(torch.nn, cls_name)(*args, **kwargs)
    fast = getattr(fastrnn, cls_name)(*args, backend=backend, **kwargs)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _flatten(obj):
    """Tensors of a module result in a fixed order (PackedSequence -> its data)."""
    if isinstance(obj, PackedSequence):
        return [obj.data]
    if torch.is_tensor(obj):
        return [obj]
    out = []
    for o in obj:
        out.extend(_flatten(o))
    return out


def _clone_leaf(t):
    if t is None:
        return None
    if isinstance(t, PackedSequence):
        data = t.data.detach().clone().requires_grad_(t.data.requires_grad)
        return PackedSequence(data, t.batch_sizes, t.sorted_indices, t.unsorted_indices)
    if isinstance(t, (tuple, list)):
        return type(t)(_clone_leaf(x) for x in t)
    return t.detach().clone().requires_grad_(t.requires_grad)


def _leaves(inp, hx):
    leaves = [t for t in _flatten(inp) if t.requires_grad]
    if hx is not None:
        leaves += [t for t in _flatten(hx) if t.requires_grad]
    return leaves


def run_with_grads(module, inp, hx=None, seed: int = 1234):
    """Run ``module(inp, hx)``; return ``(outputs, input/hx grads, parameter grads)``.

    The loss is a fixed random linear function of every output (weights drawn from
    ``seed``), so every output's gradient path is exercised with distinct values.
    """
    inp, hx = _clone_leaf(inp), _clone_leaf(hx)
    result = module(inp) if hx is None else module(inp, hx)
    outs = _flatten(result)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o)).sum() for o in outs)
    leaves = _leaves(inp, hx)
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)
    return [o.detach() for o in outs], list(grads[: len(leaves)]), list(grads[len(leaves) :])


def assert_close_all(actual, expected, dtype, what):
    assert len(actual) == len(expected), f"{what}: {len(actual)} tensors vs {len(expected)}"
    for k, (a, e) in enumerate(zip(actual, expected)):
        assert a is not None and e is not None, f"{what}[{k}]: missing gradient ({a is None}, {e is None})"
        torch.testing.assert_close(a, e, **TOL[dtype], msg=lambda m: f"{what}[{k}]: {m}")


def assert_parity(ref, fast, inp, hx=None, dtype=torch.float64):
    """Outputs, input/h0/c0 gradients and every parameter gradient of ``fast`` match ``ref``."""
    out_r, in_r, par_r = run_with_grads(ref, inp, hx)
    out_f, in_f, par_f = run_with_grads(fast, inp, hx)
    assert_close_all(out_f, out_r, dtype, "output")
    assert_close_all(in_f, in_r, dtype, "input/hx grad")
    names = [n for n, p in fast.named_parameters() if p.requires_grad]
    assert len(par_f) == len(names)
    for n, a, e in zip(names, par_f, par_r):
        assert_close_all([a], [e], dtype, f"grad {n}")


def pairwise(factors: dict, valid=None, seed: int = 0, candidates: int = 48) -> list[dict]:
    """A deterministic selection of combinations that covers every pair of factor values.

    ``factors`` maps a name to its list of values; ``valid(combo) -> bool`` rules out
    combinations that cannot exist (e.g. ``proj_size >= hidden_size``). Every pair of
    values that can occur together in a valid combination occurs in at least one selected
    combination, so each value of each factor is exercised with each value of every other
    factor. Greedy (AETG-style): each round draws ``candidates`` valid combinations with a
    seeded RNG, plus one built around the first uncovered pair, and keeps the one that
    covers most uncovered pairs. Same arguments, same result.
    """
    import itertools
    import random

    names = list(factors)
    valid = valid or (lambda combo: True)
    rng = random.Random(seed)

    def pairs(c):
        return {(a, factors[a].index(c[a]), b, factors[b].index(c[b])) for a, b in itertools.combinations(names, 2)}

    def complete(fixed):
        """A valid combination containing ``fixed``, or None (200 random tries)."""
        for _ in range(200):
            combo = {n: fixed[n] if n in fixed else rng.choice(factors[n]) for n in names}
            if valid(combo):
                return combo
        return None

    uncovered = set()
    for a, b in itertools.combinations(names, 2):
        for i, va in enumerate(factors[a]):
            for j, vb in enumerate(factors[b]):
                # a pair counts only if some valid combination holds it
                if complete({a: va, b: vb}) is not None:
                    uncovered.add((a, i, b, j))
    chosen = []
    while uncovered:
        a, i, b, j = min(uncovered)
        pool = [complete({a: factors[a][i], b: factors[b][j]})]
        pool += [c for c in (complete({}) for _ in range(candidates)) if c is not None]
        best = max(pool, key=lambda c: len(pairs(c) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


class LaunchSpy:
    """Stands in for a ``@triton.jit`` kernel: records each launch's ``H_ALIGNED`` in
    ``aligned`` and runs the kernel."""

    def __init__(self, kernel):
        self.kernel, self.aligned = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.aligned.append(kwargs["H_ALIGNED"])
            return self.kernel[grid](*args, **kwargs)

        return launch
