"""LayerNorm-LSTM / -GRU and the peephole LSTM against plain loops of their equations.

The oracle (:mod:`variant_oracle`) is written in the tests from the published equations,
one sequence at a time; every output and every gradient (input, h0, c0, every parameter
including the LayerNorm gains/biases and peephole weights) is compared, on the reference
backend (what ``auto`` runs on the CPU). Gains, biases and peepholes are drawn at random
(their init, 1 / 0 / 0, would hide a wrong index). float64: the two sides differ only in
op order, a few ulps times the recurrence's condition at T <= 6, so 1e-9; float32 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

import fastrnn
from variant_oracle import run_cell, run_sequence

TOL = {torch.float64: dict(rtol=1e-7, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-5)}

LAYERS = {
    "LayerNormLSTM": (lambda *a, **k: fastrnn.LayerNormLSTM(*a, **k), True),
    "LayerNormGRU": (lambda *a, **k: fastrnn.LayerNormGRU(*a, **k), False),
    "LSTM": (lambda *a, **k: fastrnn.LSTM(*a, peephole=True, **k), True),
}


def randomise(m, gen):
    """Every parameter drawn again (LayerNorm gains around 1, the rest around 0)."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5 + (1.0 if "ln_" in name and "weight" in name else 0.0))


def _loss_weights(gen, *tensors):
    return [None if t is None else torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in tensors]


def _grads(loss, m, leaves):
    params = [p for _, p in m.named_parameters()]
    return torch.autograd.grad(loss, [*leaves, *params], allow_unused=False)


def _compare(kind, m, form, with_h0, dtype, backend="reference", resets_at=(), lstm=None):
    """Run ``m`` on a batch in ``form`` and the oracle sequence by sequence; compare all
    (``kind``: the oracle's equations; ``lstm``: whether ``m`` carries a cell state)."""
    gen = torch.Generator().manual_seed(1)
    lstm = LAYERS[kind][1] if lstm is None else lstm
    layers_dir = m.num_layers * (2 if m.bidirectional else 1)
    lengths = [4, 6, 3] if form == "packed" else ([5] if form == "unbatched" else [5, 5])
    seqs = [torch.randn(n, m.input_size, generator=gen, dtype=dtype) for n in lengths]
    batch = len(lengths)
    h0 = torch.randn(layers_dir, batch, m.hidden_size, generator=gen, dtype=dtype) if with_h0 else None
    c0 = torch.randn(layers_dir, batch, m.hidden_size, generator=gen, dtype=dtype) if (with_h0 and lstm) else None
    flags = [torch.zeros(n, dtype=torch.bool) for n in lengths]
    for b, t in resets_at:
        flags[b][t] = True
    for t in [*seqs, h0, c0]:
        if t is not None:
            t.requires_grad_()

    # fastrnn
    if form == "packed":
        inp = pack_sequence(seqs, enforce_sorted=False)
        resets = pack_sequence(flags, enforce_sorted=False) if resets_at else None
    elif form == "unbatched":
        inp, resets = seqs[0], (flags[0] if resets_at else None)
    else:
        inp = torch.stack(seqs, 0 if m.batch_first else 1)
        resets = torch.stack(flags, 0 if m.batch_first else 1) if resets_at else None
    hx = None
    if with_h0:
        hx = ((h0[:, 0], c0[:, 0]) if lstm else h0[:, 0]) if form == "unbatched" else ((h0, c0) if lstm else h0)
    m.backend = backend
    out, hidden = m(inp, hx, resets=resets)
    h_n, c_n = hidden if lstm else (hidden, None)
    if form == "packed":
        padded, _ = pad_packed_sequence(out)
        outs = [padded[: n, b] for b, n in enumerate(lengths)]
    elif form == "unbatched":
        outs, h_n, c_n = [out], h_n.unsqueeze(1), (c_n.unsqueeze(1) if c_n is not None else None)
    else:
        outs = list(out.unbind(0 if m.batch_first else 1))
    # oracle
    ref_outs, ref_h, ref_c = [], [], []
    for b, x in enumerate(seqs):
        zeros = torch.zeros(layers_dir, m.hidden_size, dtype=dtype)
        hb = h0[:, b] if h0 is not None else zeros
        cb = (c0[:, b] if c0 is not None else zeros) if lstm else None
        o, h, c = run_sequence(m, kind, x, hb, cb, flags[b] if resets_at else None)
        ref_outs.append(o)
        ref_h.append(h)
        ref_c.append(c)
    ref_h = torch.stack(ref_h, 1)
    ref_c = torch.stack(ref_c, 1) if lstm else None
    for got, want in zip(outs, ref_outs):
        torch.testing.assert_close(got, want, **TOL[dtype])
    torch.testing.assert_close(h_n, ref_h, **TOL[dtype])
    if lstm:
        torch.testing.assert_close(c_n, ref_c, **TOL[dtype])

    weights = _loss_weights(gen, *ref_outs, ref_h, ref_c)
    leaves = [t for t in [*seqs, h0, c0] if t is not None]

    def loss(o, h, c):
        total = sum((a * w).sum() for a, w in zip(o, weights[: len(o)])) + (h * weights[len(o)]).sum()
        return total + ((c * weights[len(o) + 1]).sum() if c is not None else 0)

    got = _grads(loss(outs, h_n, c_n), m, leaves)
    want = _grads(loss(ref_outs, ref_h, ref_c), m, leaves)
    names = [f"input{i}" for i in range(len(seqs))] + ["h0", "c0"][: len(leaves) - len(seqs)] + [
        n for n, _ in m.named_parameters()]
    for name, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, **TOL[dtype], msg=lambda s, name=name: f"{name}: {s}")
        assert torch.isfinite(g).all()


CASES = [
    # (layers, bidirectional, batch_first, form, with_h0, bias)
    (1, False, False, "padded", True, True),
    (2, True, True, "padded", False, True),
    (1, True, False, "packed", True, True),
    (2, False, False, "packed", False, False),
    (1, False, True, "unbatched", True, True),
    (1, True, False, "unbatched", False, True),
]


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("layers, bidirectional, batch_first, form, with_h0, bias", CASES)
def test_layer_against_equations(kind, layers, bidirectional, batch_first, form, with_h0, bias):
    m = LAYERS[kind][0](3, 4, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias,
                        dtype=torch.float64)
    randomise(m, torch.Generator().manual_seed(2))
    _compare(kind, m, form, with_h0, torch.float64)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_layer_float32(kind):
    m = LAYERS[kind][0](3, 5, num_layers=2, bidirectional=True)
    randomise(m, torch.Generator().manual_seed(3))
    _compare(kind, m, "padded", True, torch.float32)


@pytest.mark.parametrize("kind", ["LayerNormLSTM", "LayerNormGRU"])
def test_eps_is_used(kind):
    m = LAYERS[kind][0](3, 4, eps=0.5, dtype=torch.float64)
    randomise(m, torch.Generator().manual_seed(4))
    assert m.eps == 0.5 and "eps=0.5" in repr(m)
    _compare(kind, m, "padded", True, torch.float64)


CELLS = {
    "LayerNormLSTM": (lambda *a, **k: fastrnn.LayerNormLSTMCell(*a, **k), True),
    "LayerNormGRU": (lambda *a, **k: fastrnn.LayerNormGRUCell(*a, **k), False),
    "LSTM": (lambda *a, **k: fastrnn.LSTMCell(*a, peephole=True, **k), True),
}


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("batched", [True, False])
def test_cell_against_equations(kind, batched):
    make, lstm = CELLS[kind]
    cell = make(3, 4, dtype=torch.float64)
    randomise(cell, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    hx = (h, c) if lstm else h
    if batched:
        out = cell(x, hx)
    else:
        out = cell(x[0], (h[0], c[0]) if lstm else h[0])
        out = (out[0].unsqueeze(0), out[1].unsqueeze(0)) if lstm else out.unsqueeze(0)
    rows = 2 if batched else 1
    want = run_cell(cell, kind, x[:rows], h[:rows], c[:rows] if lstm else None)
    got = out if lstm else (out, None)
    torch.testing.assert_close(got[0], want[0], **TOL[torch.float64])
    if lstm:
        torch.testing.assert_close(got[1], want[1], **TOL[torch.float64])
    leaves = [x, h, c] if lstm else [x, h]
    w = torch.randn(got[0].shape, generator=gen, dtype=torch.float64)
    loss_got = (got[0] * w).sum() + (got[1].sum() if lstm else 0)
    loss_want = (want[0] * w).sum() + (want[1].sum() if lstm else 0)
    for g, r in zip(_grads(loss_got, cell, leaves), _grads(loss_want, cell, leaves)):
        torch.testing.assert_close(g, r, **TOL[torch.float64])


def test_parameter_names_shapes_and_init():
    torch.manual_seed(0)
    m = fastrnn.LayerNormLSTM(3, 4, num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    for name, p in ref.named_parameters():  # torch's weights, names and draws
        assert torch.equal(getattr(m, name), p), name
    for layer in range(2):
        for sfx in ("", "_reverse"):
            for stem, size, value in (("ln_ih_weight", 16, 1.0), ("ln_ih_bias", 16, 0.0), ("ln_hh_weight", 16, 1.0),
                                      ("ln_hh_bias", 16, 0.0), ("ln_c_weight", 4, 1.0), ("ln_c_bias", 4, 0.0)):
                p = getattr(m, f"{stem}_l{layer}{sfx}")
                assert p.shape == (size,) and bool((p == value).all()), (stem, layer, sfx)
    gru = fastrnn.LayerNormGRU(3, 4)
    assert {n for n, _ in gru.named_parameters()} == {
        "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "ln_ih_weight_l0", "ln_ih_bias_l0",
        "ln_hh_weight_l0", "ln_hh_bias_l0"}
    assert gru.ln_hh_weight_l0.shape == (12,)
    peep = fastrnn.LSTM(3, 4, peephole=True, bidirectional=True)
    for stem in ("weight_ci", "weight_cf", "weight_co"):
        for sfx in ("_l0", "_l0_reverse"):
            assert torch.equal(getattr(peep, stem + sfx), torch.zeros(4))
    cell = fastrnn.LayerNormLSTMCell(3, 4)
    assert {n for n, _ in cell.named_parameters()} == {
        "weight_ih", "weight_hh", "bias_ih", "bias_hh", "ln_ih_weight", "ln_ih_bias", "ln_hh_weight",
        "ln_hh_bias", "ln_c_weight", "ln_c_bias"}
    assert set(fastrnn.LSTMCell(3, 4, peephole=True).state_dict()) >= {"weight_ci", "weight_cf", "weight_co"}


def test_peephole_zero_is_plain_lstm():
    """With zero peepholes (their init) the layer is torch's LSTM, outputs and weight grads."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4, num_layers=2, dtype=torch.float64)
    m = fastrnn.LSTM(3, 4, num_layers=2, peephole=True, dtype=torch.float64)
    m.load_state_dict(ref.state_dict(), strict=False)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out, _ = m(x)
    want, _ = ref(x)
    torch.testing.assert_close(out, want, **TOL[torch.float64])
    out.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(m.weight_hh_l1.grad, ref.weight_hh_l1.grad, **TOL[torch.float64])
    assert m.weight_co_l0.grad.abs().sum() > 0  # the peepholes learn from zero


def test_constructor_refusals():
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM, not RNN or GRU"):
        fastrnn.LayerNormGRU(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="proj_size is not supported"):
        fastrnn.LayerNormLSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="peephole=True is not supported with proj_size"):
        fastrnn.LSTM(3, 4, proj_size=2, peephole=True)
    for cls in (fastrnn.RNN, fastrnn.GRU):
        with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM, not RNN or GRU"):
            cls(3, 4, proj_size=2)


@pytest.mark.parametrize("kind", ["LayerNormLSTM", "LayerNormGRU"])
def test_hidden_size_one(kind):
    """H = 1: LN(c) over one unit has zero variance, the normalised value is its bias."""
    m = LAYERS[kind][0](2, 1, dtype=torch.float64)
    randomise(m, torch.Generator().manual_seed(7))
    _compare(kind, m, "padded", True, torch.float64)


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_like_the_loop(kind, bad):
    """NaN / Inf in the input come out where the equations put them, as the plain loop's."""
    m = LAYERS[kind][0](3, 4, dtype=torch.float64)
    randomise(m, torch.Generator().manual_seed(8))
    x = torch.randn(4, 1, 3, dtype=torch.float64)
    x[2, 0, 1] = bad
    out, _ = m(x)
    zeros = torch.zeros(1, 4, dtype=torch.float64)
    want, _, _ = run_sequence(m, kind, x[:, 0], zeros, zeros if LAYERS[kind][1] else None)
    torch.testing.assert_close(out[:, 0], want, equal_nan=True, **TOL[torch.float64])
    assert torch.isfinite(out[:2]).all()


@pytest.mark.parametrize("kind", list(LAYERS))
def test_gradcheck_and_gradgradcheck(kind):
    m = LAYERS[kind][0](2, 3, bidirectional=True, dtype=torch.float64)
    randomise(m, torch.Generator().manual_seed(9))
    lstm = LAYERS[kind][1]
    names = [n for n, _ in m.named_parameters()]
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    resets = torch.tensor([[False, False], [True, False], [False, True]])

    def f(x, h0, c0, *params):
        out, hidden = torch.func.functional_call(m, dict(zip(names, params)), (x, (h0, c0) if lstm else h0),
                                                 {"resets": resets})
        return (out, *hidden) if lstm else (out, hidden)

    params = [p.detach().clone().requires_grad_() for _, p in m.named_parameters()]
    inputs = (x, h0, c0, *params)
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_recurrent_refuses_cells_with_their_own_parameters():
    with pytest.raises(ValueError, match="has per-unit parameters of its own"):
        fastrnn.Recurrent(fastrnn.cells.LSTM_PEEPHOLE, 3, 4)
    with pytest.raises(ValueError, match="has per-unit parameters of its own"):
        fastrnn.Recurrent("LayerNormGRU(eps=1e-05)", 3, 4)


def test_layer_norm_cells_are_found_by_name_in_any_process():
    """The op carries the cell's name; a LayerNorm cell of any eps is made from it."""
    cell = fastrnn.cells.get("LayerNormLSTM(eps=0.25)")
    assert cell is fastrnn.cells.layer_norm_lstm(0.25) and cell.param_rows == 10
    with pytest.raises(ValueError, match="no cell named"):
        fastrnn.cells.get("LayerNormLSTM(eps=oops)")
