"""Zoneout, recurrent dropout and DropConnect on W_hh (``zoneout=``, ``recurrent_dropout=``,
``weight_drop=`` on the layers).

- Eval: exactly the plain loop of the equations (:mod:`variant_oracle`; zoneout is its
  expectation there, the other two are off), every output and gradient.
- Training: the masks fastrnn drew are recorded (the drawing functions wrapped), and the
  plain loop run with those masks must give the same outputs and gradients; the masks
  themselves show the statistics any correct implementation has.
- Refusals, reproducibility from the seed, double backward with the masks fixed, tracing.
float64 for the exact comparisons (op order only differs: 1e-9).
"""

from __future__ import annotations

import pytest
import torch

import fastrnn
import fastrnn.functional as functional
from test_variants import randomise
from variant_oracle import run_sequence

TOL = dict(rtol=1e-7, atol=1e-9)

LAYERS = {
    "LSTM": (lambda *a, **k: fastrnn.LSTM(*a, **k), "LSTM", True),
    "GRU": (lambda *a, **k: fastrnn.GRU(*a, **k), "GRU", False),
    "RNN": (lambda *a, **k: fastrnn.RNN(*a, **k), "RNN_TANH", False),
    "LayerNormLSTM": (lambda *a, **k: fastrnn.LayerNormLSTM(*a, **k), "LayerNormLSTM", True),
    "LayerNormGRU": (lambda *a, **k: fastrnn.LayerNormGRU(*a, **k), "LayerNormGRU", False),
}


class Recorder:
    """Wraps the mask-drawing functions fastrnn calls and keeps what they returned, in order."""

    def __init__(self, monkeypatch):
        self.zoneout, self.scale, self.w_hh = [], [], []
        real_z, real_s, real_d = functional.draw_zoneout, functional.draw_recurrent_scale, functional.drop_connect

        def zone(*a, **k):
            out = real_z(*a, **k)
            self.zoneout.append(out)
            return out

        def scale(*a, **k):
            out = real_s(*a, **k)
            self.scale.append(out)
            return out

        def drop(w, p):
            out = real_d(w, p)
            self.w_hh.append(out)
            return out

        monkeypatch.setattr(functional, "draw_zoneout", zone)
        monkeypatch.setattr(functional, "draw_recurrent_scale", scale)
        monkeypatch.setattr(functional, "drop_connect", drop)


def _run_both(name, m, x, h0, c0, regularise_for):
    """fastrnn on the batch, the plain loop per sequence; returns both (outputs, h_n, c_n)."""
    lstm = LAYERS[name][2]
    out, hidden = m(x, (h0, c0) if lstm else h0)
    h_n, c_n = hidden if lstm else (hidden, None)
    outs, hs, cs = [], [], []
    for b in range(x.shape[1]):
        o, h, c = run_sequence(m, LAYERS[name][1], x[:, b], h0[:, b], c0[:, b] if lstm else None,
                               regularise=regularise_for(b))
        outs.append(o)
        hs.append(h)
        cs.append(c)
    want = (torch.stack(outs, 1), torch.stack(hs, 1), torch.stack(cs, 1) if lstm else None)
    return (out, h_n, c_n), want


def _check(m, got, want, leaves):
    for a, b in zip(got, want):
        if a is not None:
            torch.testing.assert_close(a, b, **TOL)
    gen = torch.Generator().manual_seed(3)
    weights = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in got if t is not None]
    params = [p for _, p in m.named_parameters()]

    def grads(outs):
        loss = sum((t * w).sum() for t, w in zip([t for t in outs if t is not None], weights))
        return torch.autograd.grad(loss, [*leaves, *params], retain_graph=True)

    names = ["x", "h0", "c0"][: len(leaves)] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, grads(got), grads(want)):
        torch.testing.assert_close(a, b, **TOL, msg=lambda s, name=name: f"{name}: {s}")


def _inputs(name, m, steps=5, batch=3):
    gen = torch.Generator().manual_seed(2)
    dirs = m.num_layers * (2 if m.bidirectional else 1)
    x = torch.randn(steps, batch, m.input_size, generator=gen, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(dirs, batch, m.hidden_size, generator=gen, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(dirs, batch, m.hidden_size, generator=gen, dtype=torch.float64, requires_grad=True)
    return x, h0, c0


@pytest.mark.parametrize("name", list(LAYERS))
def test_eval_is_the_plain_loop(name):
    make, _, lstm = LAYERS[name]
    zoneout = (0.3, 0.4) if lstm else 0.3
    m = make(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64, zoneout=zoneout, recurrent_dropout=0.5,
             weight_drop=0.5).eval()
    randomise(m, torch.Generator().manual_seed(1))
    x, h0, c0 = _inputs(name, m)
    p_h, p_c = (zoneout if lstm else (zoneout, None))
    got, want = _run_both(name, m, x, h0, c0, lambda b: lambda idx: dict(zoneout_h=p_h, zoneout_c=p_c))
    _check(m, got, want, [x, h0, c0] if lstm else [x, h0])


@pytest.mark.parametrize("name", list(LAYERS))
def test_training_equals_the_plain_loop_with_the_same_masks(name, monkeypatch):
    make, _, lstm = LAYERS[name]
    zoneout = (0.3, 0.4) if lstm else 0.3
    m = make(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64, zoneout=zoneout, recurrent_dropout=0.4,
             weight_drop=0.3).train()
    randomise(m, torch.Generator().manual_seed(1))
    x, h0, c0 = _inputs(name, m)
    rec = Recorder(monkeypatch)
    out, hidden = m(x, (h0, c0) if lstm else h0)
    assert len(rec.zoneout) == len(rec.scale) == len(rec.w_hh) == 4  # one per layer-direction

    def regularise_for(b):
        def per_idx(idx):
            mask_h, mask_c = rec.zoneout[idx]
            reg = dict(w_hh=rec.w_hh[idx], scale=rec.scale[idx][b],
                       zoneout_h=mask_h.view(x.shape[0], x.shape[1], -1)[:, b])
            if lstm:
                reg["zoneout_c"] = mask_c.view(x.shape[0], x.shape[1], -1)[:, b]
            return reg
        return per_idx

    # the loop reads the recorded masks; fastrnn's outputs were made with them
    outs = []
    hs, cs = [], []
    for b in range(x.shape[1]):
        o, h, c = run_sequence(m, LAYERS[name][1], x[:, b], h0[:, b], c0[:, b] if lstm else None,
                               regularise=regularise_for(b))
        outs.append(o)
        hs.append(h)
        cs.append(c)
    h_n, c_n = hidden if lstm else (hidden, None)
    want = (torch.stack(outs, 1), torch.stack(hs, 1), torch.stack(cs, 1) if lstm else None)
    _check(m, (out, h_n, c_n), want, [x, h0, c0] if lstm else [x, h0])


def test_zoneout_statistics_and_masks_per_step():
    """The fraction of units carried over is within 4 standard deviations of p; the masks
    differ from step to step."""
    p = 0.3
    m = fastrnn.GRU(8, 64, zoneout=p).train()
    x = torch.randn(50, 64, 8)
    with torch.no_grad():
        out, _ = m(x)
    kept = (out[1:] == out[:-1]).double()
    n = kept.numel()
    assert abs(kept.mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5
    assert not torch.equal(kept[0], kept[1])


def test_recurrent_dropout_masks(monkeypatch):
    """One mask per (sequence, unit), scaled by 1 / (1 - p), different across sequences; the
    training equality above shows it is the same at every step."""
    p = 0.4
    rec = Recorder(monkeypatch)
    m = fastrnn.LSTM(4, 256, recurrent_dropout=p).train()
    m(torch.randn(3, 32, 4))
    (scale,) = rec.scale
    assert scale.shape == (32, 256)
    values = scale.unique()
    assert len(values) == 2 and values[0] == 0 and abs(values[1].item() - 1 / (1 - p)) < 1e-6
    dropped = (scale == 0).double().mean().item()
    assert abs(dropped - p) < 4 * (p * (1 - p) / scale.numel()) ** 0.5
    assert not torch.equal(scale[0], scale[1])


def test_weight_drop_zero_gradient_fraction():
    p = 0.4
    m = fastrnn.GRU(8, 128, weight_drop=p).train()
    out, _ = m(torch.randn(6, 16, 8))
    out.sum().backward()
    zero = (m.weight_hh_l0.grad == 0).double().mean().item()
    n = m.weight_hh_l0.numel()
    assert abs(zero - p) < 4 * (p * (1 - p) / n) ** 0.5
    assert (m.weight_ih_l0.grad == 0).double().mean().item() < 0.01


def test_reproducible_from_the_seed():
    m = fastrnn.LSTM(3, 8, num_layers=2, zoneout=(0.2, 0.3), recurrent_dropout=0.3, weight_drop=0.2).train()
    x = torch.randn(6, 4, 3)
    torch.manual_seed(123)
    a, _ = m(x)
    torch.manual_seed(123)
    b, _ = m(x)
    c, _ = m(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kwargs, message", [
    (dict(zoneout=1.0), "zoneout probability has to be between 0 and 1"),
    (dict(zoneout=-0.1), "zoneout probability has to be between 0 and 1"),
    (dict(recurrent_dropout=1.5), "recurrent_dropout probability has to be between 0 and 1"),
    (dict(weight_drop=1.0), "weight_drop probability has to be between 0 and 1"),
    (dict(zoneout=(0.1, 1.0)), "zoneout probability has to be between 0 and 1"),
])
def test_bad_probabilities_raise_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fastrnn.LSTM(3, 4, **kwargs)


def test_pair_needs_a_cell_state_and_proj_size_is_refused():
    with pytest.raises(ValueError, match="a pair"):
        fastrnn.GRU(3, 4, zoneout=(0.1, 0.2))
    with pytest.raises(ValueError, match="not supported with proj_size"):
        fastrnn.LSTM(3, 4, proj_size=2, zoneout=0.1)


def test_off_changes_nothing():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4)
    m = fastrnn.LSTM(3, 4, zoneout=0.0, recurrent_dropout=0.0, weight_drop=0.0)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(m(x)[0], ref(x)[0])
    assert "zoneout" not in repr(m)


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_gradgradcheck_with_fixed_masks(name):
    make, _, lstm = LAYERS[name]
    m = make(2, 3, dtype=torch.float64, zoneout=(0.3, 0.3) if lstm else 0.3, recurrent_dropout=0.3,
             weight_drop=0.3).train()
    names = [n for n, _ in m.named_parameters()]
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)

    def f(x, *params):
        torch.manual_seed(7)  # the same masks at every call
        out, _ = torch.func.functional_call(m, dict(zip(names, params)), (x,))
        return out

    params = [p.detach().clone().requires_grad_() for _, p in m.named_parameters()]
    assert torch.autograd.gradcheck(f, (x, *params))
    assert torch.autograd.gradgradcheck(f, (x, *params))


def test_compile_one_graph_in_eval_and_training():
    m = fastrnn.LSTM(3, 4, zoneout=(0.2, 0.2), recurrent_dropout=0.3, weight_drop=0.3)
    x = torch.randn(5, 2, 3)
    for mode in (m.eval(), m.train()):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(mode)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    m.eval()
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x)[0], m(x)[0])


def test_native_backend_refuses_and_onnx_refuses(tmp_path):
    m = fastrnn.GRU(3, 4, zoneout=0.2, backend="native")
    with pytest.raises(RuntimeError, match="have no zoneout"):
        m(torch.randn(5, 2, 3))


def _lstm_pair(**kwargs):
    torch.manual_seed(0)
    fast = fastrnn.LSTM(3, 6, weight_drop=0.5, **kwargs).train()
    ref = fastrnn.LSTM(3, 6, weight_drop=0.5, backend="reference", **kwargs).train()
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _train_step(m, inp, hx, seed):
    torch.manual_seed(seed)
    out, (h, c) = m(inp, hx)
    data = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    (data.sin().sum() + h.cos().sum() + c.sum()).backward()
    return [data.detach(), h.detach(), c.detach()] + [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("form", ["padded", "with_hx", "packed"])
def test_weight_drop_on_torch_kernels_equals_the_engine(form, monkeypatch):
    """DropConnect alone on an fp32 LSTM keeps torch's own kernels on the CPU (oneDNN, with
    W_hh masked before the call) where the call is a plain padded one, and the engine
    otherwise; either way the same masks as the reference backend's (the same seed), so the
    same outputs and gradients."""
    from fastrnn.backends import native

    calls = []
    real = native.VF_OPS[fastrnn.kinds.CellKind.LSTM]
    monkeypatch.setitem(native.VF_OPS, fastrnn.kinds.CellKind.LSTM, lambda *a: calls.append(1) or real(*a))
    fast, ref = _lstm_pair(num_layers=2, bidirectional=True)
    x = torch.randn(5, 4, 3, requires_grad=True)
    hx = (torch.randn(4, 4, 6), torch.randn(4, 4, 6)) if form == "with_hx" else None

    def inp():
        return torch.nn.utils.rnn.pack_padded_sequence(x, [5, 3, 4, 2], enforce_sorted=False) if form == "packed" else x

    got = _train_step(fast, inp(), hx, seed=7)
    assert bool(calls) == (form != "packed")  # (a packed call: torch's kernels would train on autograd's loop)
    want = _train_step(ref, inp(), hx, seed=7)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # fp32: oneDNN and the loop sum differently
    torch.manual_seed(8)
    zero = (fast(x)[0].sum().backward() or fast.weight_hh_l0.grad == 0)
    assert zero.any()  # (the masks reach the gradient)


def test_weight_drop_is_off_in_eval():
    fast, _ = _lstm_pair()
    plain = fastrnn.LSTM(3, 6)
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(fast.eval()(x)[0], plain.eval()(x)[0], rtol=0, atol=0)
