"""``torch.autograd.gradcheck`` (float64) of the handwritten backward of one layer.

``fastrnn.functional.recurrent_layer(..., backend="reference")`` is checked against
finite differences for every cell kind (LSTM, LSTM with projection, GRU, RNN tanh, RNN
relu), forward and reverse direction, uniform (padded) and variable-length (packed)
schedules, with and without biases. The differentiated inputs are x, h0, c0 and every
weight and bias (and W_hr for the projection); the outputs are y, h_n and c_n.

ReLU kink: finite differences straddling a pre-activation of 0 see a slope between 0 and
1, which is not the analytic derivative. Each relu case draws its tensors from seeds
0, 1, 2, ... and uses the first draw whose every pre-activation (recomputed here with a
plain torch loop, independent of fastrnn) is at least ``RELU_MARGIN`` away from 0. With
gradcheck's eps = 1e-6 and weights of norm O(1), a perturbation moves a pre-activation by
far less than the margin, so no difference quotient crosses the kink.
"""

from __future__ import annotations

import pytest
import torch

from fastrnn.functional import Schedule, recurrent_layer

F64 = torch.float64
RELU_MARGIN = 1e-3
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
# batch sizes per step of a packed batch of 4 sequences with lengths 5, 3, 3, 1
PACKED = (4, 3, 3, 1, 1)


def _schedule(name: str) -> Schedule:
    return Schedule.uniform(4, 3) if name == "uniform" else Schedule.from_batch_sizes(list(PACKED))


def _tensors(kind, schedule, inp, hidden, proj, bias, seed):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=F64) * scale).requires_grad_()

    out = proj or hidden
    g = GATES[kind]
    x = randn(schedule.rows, inp)
    h0 = randn(schedule.batch, out)
    c0 = randn(schedule.batch, hidden) if kind == "LSTM" else None
    w_ih = randn(g * hidden, inp, scale=0.5)
    w_hh = randn(g * hidden, out, scale=0.5)
    b_ih = randn(g * hidden) if bias else None
    b_hh = randn(g * hidden) if bias else None
    w_hr = randn(proj, hidden, scale=0.5) if proj else None
    return x, h0, c0, (w_ih, w_hh, b_ih, b_hh, w_hr)


def _relu_preactivations(x, h0, weights, schedule, reverse):
    """Every pre-activation of an RNN relu layer, by a plain torch loop over the schedule."""
    w_ih, w_hh, b_ih, b_hh, _ = weights
    state = h0.detach().clone()
    pre_all = []
    with torch.no_grad():
        for t in schedule.order(reverse):
            off, bs = schedule.offsets[t], schedule.batch_sizes[t]
            pre = x[off : off + bs] @ w_ih.t() + state[:bs] @ w_hh.t()
            if b_ih is not None:
                pre = pre + b_ih + b_hh
            state[:bs] = pre.clamp_min(0)
            pre_all.append(pre.flatten())
    return torch.cat(pre_all)


def _draw(kind, schedule, reverse, inp, hidden, proj, bias):
    for seed in range(100):
        x, h0, c0, weights = _tensors(kind, schedule, inp, hidden, proj, bias, seed)
        if kind != "RNN_RELU":
            return x, h0, c0, weights
        if _relu_preactivations(x, h0, weights, schedule, reverse).abs().min() >= RELU_MARGIN:
            return x, h0, c0, weights
    raise AssertionError("no draw with relu pre-activations away from the kink in 100 seeds")


CASES = [
    pytest.param(kind, proj, sched, reverse, bias, id=f"{kind}{'-proj2' if proj else ''}-{sched}"
                 f"{'-reverse' if reverse else ''}{'' if bias else '-nobias'}")
    for kind, proj in (("LSTM", 0), ("LSTM", 2), ("GRU", 0), ("RNN_TANH", 0), ("RNN_RELU", 0))
    for sched in ("uniform", "packed")
    for reverse in (False, True)
    for bias in (True, False)
    if bias or (sched == "packed" and not reverse)  # no-bias: one schedule per kind is enough
]


@pytest.mark.parametrize("kind, proj, sched, reverse, bias", CASES)
def test_layer_gradcheck(kind, proj, sched, reverse, bias):
    schedule = _schedule(sched)
    inp, hidden = 2, 3
    x, h0, c0, weights = _draw(kind, schedule, reverse, inp, hidden, proj, bias)
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    inputs = [t for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) if t is not None]

    def layer(*args):
        it = iter(args)
        xx, hh = next(it), next(it)
        cc = next(it) if c0 is not None else None
        wih, whh = next(it), next(it)
        bih, bhh = (next(it), next(it)) if bias else (None, None)
        whr = next(it) if proj else None
        y, h_n, c_n = recurrent_layer(kind, xx, schedule, hh, cc, (wih, whh, bih, bhh, whr),
                                      reverse=reverse, backend="reference")
        return (y, h_n) if c_n is None else (y, h_n, c_n)

    # every output is differentiated w.r.t. every input (no unused input slips through)
    outs = layer(*inputs)
    assert outs[0].shape == (schedule.rows, proj or hidden)
    assert torch.autograd.gradcheck(layer, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    grads = torch.autograd.grad(sum(o.sum() for o in outs), inputs)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_relu_draws_really_avoid_the_kink():
    """The margin rule is applied: a chosen draw has no pre-activation within the margin."""
    for sched in ("uniform", "packed"):
        for reverse in (False, True):
            schedule = _schedule(sched)
            x, h0, _, weights = _draw("RNN_RELU", schedule, reverse, 2, 3, 0, True)
            pre = _relu_preactivations(x, h0, weights, schedule, reverse)
            assert pre.numel() == schedule.rows * 3
            assert pre.abs().min() >= RELU_MARGIN
            assert (pre < 0).any() and (pre > 0).any()  # both sides of the kink are exercised
