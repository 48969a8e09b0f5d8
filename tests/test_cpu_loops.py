"""The LSTM's C++ CPU loops (:mod:`fastrnn.backends.cpu_loops`) against the Python loops they
stand in for.

The Python loops are themselves checked against the generic loop
(``test_reference_tuned_variants.py``, ``test_reference_regularised.py``) and against plain
loops of the equations (``test_variants.py``, ``test_regularisers.py``, ``test_resets.py``,
which now run the C++ loops wherever they apply). Here both run the same layer on the same
inputs and the same masks (the same seed before each run): every output and every gradient
(input, h0, c0, each parameter), padded and packed with unsorted lengths, both directions,
two layers, with resets, in training and eval, each regulariser alone and together, the
peephole LSTM; and a counter proves the C++ loops ran.

Tolerances: float64 runs the same formulas with libm's exp/tanh in another order of
operations (1e-9). float32 uses a polynomial exp (about 1 ulp) and a GEMM in another
summation order: a few float32 ulps per step over six steps and two layers (rtol 2e-5,
atol 2e-6).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn.backends import cpu_loops
from test_variants import randomise

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-6)}
VARIANTS = {
    "zoneout": dict(zoneout=(0.3, 0.4)),
    "zoneout_h": dict(zoneout=0.3),
    "zoneout_c": dict(zoneout=(0.0, 0.4)),
    "rdrop": dict(recurrent_dropout=0.4),
    "both": dict(zoneout=(0.3, 0.4), recurrent_dropout=0.4),
    "peephole": dict(peephole=True),
    "resets_only": dict(),
}
# The wide cases' gradients reach about 70 and sum 520 rows each: 1e-4 is about 1.5e-6 of
# the largest, a dozen float32 ulps.
WIDE = dict(rtol=1e-4, atol=1e-4)
H_VARIANTS = {  # the cells without a cell state
    "zoneout": dict(zoneout=0.3),
    "rdrop": dict(recurrent_dropout=0.4),
    "both": dict(zoneout=0.3, recurrent_dropout=0.4),
    "resets_only": dict(),
}
MAKERS = {
    "GRU": lambda **k: fastrnn.GRU(3, 5, **k),
    "RNN_TANH": lambda **k: fastrnn.RNN(3, 5, **k),
    "RNN_RELU": lambda **k: fastrnn.RNN(3, 5, nonlinearity="relu", **k),
}


@pytest.fixture
def cpp_calls(monkeypatch):
    """Counts the C++ loops' forward and backward calls."""
    calls = {"forward": 0, "backward": 0}
    for name in ("forward", "backward", "norm_forward", "norm_backward"):
        real = getattr(cpu_loops, name)

        def counted(*a, _real=real, _name=name.replace("norm_", ""), **k):
            calls[_name] += 1
            return _real(*a, **k)

        monkeypatch.setattr(cpu_loops, name, counted)
    return calls


@pytest.fixture(params=["packed_gemm", "aten_gemm"])
def gemm_route(request):
    """The wide cases' per-step GEMMs (float32, above the small-product size) both ways: MKL's
    packed product, ``W_hh`` packed once per call (where torch has it), and ATen's GEMM."""
    if request.param == "aten_gemm":
        with cpu_loops.unpacked_gemm():
            yield request.param
        return
    if not cpu_loops.packed_gemm():
        pytest.skip("torch was built without MKL's packed GEMM interface")
    yield request.param


@pytest.fixture(params=["whole", "parts"])
def split(request):
    """The loops' rows both ways: as one part (the small layers here stay one), and split
    into parts that each run the whole time loop for their rows on two threads
    (:func:`fastrnn.backends.cpu_loops.row_parts`), padded and packed rows alike."""
    if request.param == "parts":
        with cpu_loops.row_parts(2):
            yield request.param
        return
    yield request.param


def _run(m, dtype, packed, seed, steps=6, batch=4, resets=True, nan=False):
    gen = torch.Generator().manual_seed(2)
    dirs = m.num_layers * (2 if m.bidirectional else 1)
    size = m.hidden_size
    x = torch.randn(steps, batch, m.input_size, generator=gen, dtype=dtype)
    if nan:
        x[2, 1, 0] = float("nan")
    x.requires_grad_()
    h0 = torch.randn(dirs, batch, size, generator=gen, dtype=dtype, requires_grad=True)
    c0 = torch.randn(dirs, batch, size, generator=gen, dtype=dtype, requires_grad=True)
    lstm = isinstance(m, (fastrnn.LSTM, fastrnn.LayerNormLSTM))
    flags = torch.zeros(steps, batch, dtype=torch.bool)
    if resets:
        flags[2, 1] = flags[steps - 2, 0] = flags[steps // 2, 2] = True
    if packed:
        lengths = torch.tensor([steps - 2, steps, steps - 3, steps - 1] + [steps] * (batch - 4))
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False)
        rst = pack_padded_sequence(flags, lengths, enforce_sorted=False)
    else:
        inp, rst = x, flags
    torch.manual_seed(seed)
    out, hidden = m(inp, (h0, c0) if lstm else h0, resets=rst if resets else None)
    out = out.data if packed else out
    outs = [out, *(hidden if lstm else (hidden,))]
    weights = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in outs]
    loss = sum((t * w).nansum() for t, w in zip(outs, weights))
    leaves = [x, h0, c0] if lstm else [x, h0]
    grads = torch.autograd.grad(loss, [*leaves, *m.parameters()])
    names = ["x", "h0", "c0"][: len(leaves)] + [n for n, _ in m.named_parameters()]
    return [t.detach() for t in outs], dict(zip(names, grads))


def _compare(m, dtype, packed, resets=True, tol=None, **kw):
    got_out, got_grads = _run(m, dtype, packed, seed=5, resets=resets, **kw)
    with cpu_loops.disabled():
        want_out, want_grads = _run(m, dtype, packed, seed=5, resets=resets, **kw)
    for a, b in zip(got_out, want_out):
        torch.testing.assert_close(a, b, **(tol or TOL[dtype]), equal_nan=True)
    for name, a in got_grads.items():
        torch.testing.assert_close(a, want_grads[name], **(tol or TOL[dtype]), equal_nan=True,
                                   msg=lambda s, name=name: f"{name}: {s}")


def test_packed_gemm_route_matches_aten():
    """The packed product gives ATen's GEMM's results: the same float32 LSTM, GRU and
    LayerNorm-LSTM, every output and gradient within a float32 ulp or two."""
    if not cpu_loops.packed_gemm():
        pytest.skip("torch was built without MKL's packed GEMM interface")
    for make in (lambda: fastrnn.LSTM(4, 64, backend="reference", peephole=True),
                 lambda: fastrnn.GRU(4, 96, backend="reference"),
                 lambda: fastrnn.LayerNormLSTM(4, 64, backend="reference")):
        m = make()
        randomise(m, torch.Generator().manual_seed(6))
        got_out, got_grads = _run(m, torch.float32, True, seed=5, steps=4, batch=130)
        with cpu_loops.unpacked_gemm():
            want_out, want_grads = _run(m, torch.float32, True, seed=5, steps=4, batch=130)
        for a, b in zip(got_out, want_out):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        for name, a in got_grads.items():
            torch.testing.assert_close(a, want_grads[name], rtol=1e-6, atol=1e-6)


def test_the_loops_build():
    """CI and this machine have a C++ compiler: the C++ loops must build here (a failed
    build falls back to the Python loops with a warning, which would leave them untested)."""
    assert cpu_loops.available()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cpp_loops_equal_the_python_loops(variant, packed, training, dtype, cpp_calls, split):
    m = fastrnn.LSTM(3, 5, num_layers=2, bidirectional=True, dtype=dtype, backend="reference",
                     **VARIANTS[variant]).train(training)
    randomise(m, torch.Generator().manual_seed(1))
    _compare(m, dtype, packed)
    assert cpp_calls == {"forward": 4, "backward": 4}, cpp_calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("variant", list(H_VARIANTS))
@pytest.mark.parametrize("kind", list(MAKERS))
def test_gru_and_rnn_cpp_loops_equal_the_python_loops(kind, variant, packed, training, dtype, cpp_calls, split):
    m = MAKERS[kind](num_layers=2, bidirectional=True, dtype=dtype, backend="reference",
                     **H_VARIANTS[variant]).train(training)
    randomise(m, torch.Generator().manual_seed(1))
    _compare(m, dtype, packed)
    assert cpp_calls == {"forward": 4, "backward": 4}, cpp_calls


@pytest.mark.parametrize("kind", list(MAKERS))
def test_gru_and_rnn_past_the_small_product_and_the_thread_split(kind, cpp_calls, gemm_route, split):
    wide = {"GRU": lambda **k: fastrnn.GRU(4, 96, **k), "RNN_TANH": lambda **k: fastrnn.RNN(4, 96, **k),
            "RNN_RELU": lambda **k: fastrnn.RNN(4, 96, nonlinearity="relu", **k)}
    m = wide[kind](backend="reference", **H_VARIANTS["both"])
    randomise(m, torch.Generator().manual_seed(4))
    _compare(m, torch.float32, packed=True, steps=4, batch=130, tol=WIDE)
    assert cpp_calls["forward"] == 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", ["LSTM", *MAKERS])
def test_plain_cells(kind, packed, dtype, cpp_calls):
    """torch's cells without any variant (the reference backend's plain loops)."""
    make = MAKERS.get(kind, lambda **k: fastrnn.LSTM(3, 5, **k))
    m = make(num_layers=2, bidirectional=True, dtype=dtype, backend="reference")
    randomise(m, torch.Generator().manual_seed(9))
    _compare(m, dtype, packed, resets=False)
    assert cpp_calls == {"forward": 4, "backward": 4}, cpp_calls


@pytest.mark.parametrize("hidden", [17, 33])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_every_tile_of_the_small_product(kind, hidden, cpp_calls, split):
    """The float per-step product in registers: tiles of 4, 2 and 1 rows, of 64 and 16
    columns (128 for a single row), then the columns left over. H = 17 and 33 give 17 to 132
    columns (forward n = G*H, backward n = H), an odd k, packed steps of 4 to 7 rows and a
    batch of one; against the Python loops
    (``torch.mm``), every output and gradient. Sums of up to 132 products in another order;
    the RNN's gradients reach about 40 here, so ``WIDE`` (1e-4 is a few float32 ulps of the
    largest)."""
    m = getattr(fastrnn, kind)(3, hidden, bidirectional=True, backend="reference")
    randomise(m, torch.Generator().manual_seed(11))
    _compare(m, torch.float32, packed=True, resets=False, batch=7, tol=WIDE)
    _compare(m, torch.float32, packed=False, resets=False, batch=1, tol=WIDE)
    assert cpp_calls == {"forward": 4, "backward": 4}, cpp_calls


def test_the_plain_lstm_keeps_its_saved_layout():
    """(gates, c, tanh(c)): what :func:`fastrnn.backends.reference.saved_layout` says and the
    Python backward reads."""
    from fastrnn.backends import reference
    from fastrnn.kinds import CellKind
    from fastrnn.schedule import Schedule

    schedule = Schedule.from_batch_sizes([3, 3, 2])
    xg = torch.randn(8, 16)
    res = reference.forward(CellKind.LSTM, xg, torch.randn(16, 4), None, None, torch.randn(3, 4),
                            torch.randn(3, 4), schedule, False, True)
    layout = reference.saved_layout(CellKind.LSTM, 8, 4, torch.float32, True)
    assert [(tuple(t.shape), t.dtype) for t in res.saved] == [(tuple(s), d) for s, d in layout]
    torch.testing.assert_close(res.saved[2], torch.tanh(res.saved[1]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("resets", [True, False], ids=["resets", "no_resets"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LayerNormGRU"])
def test_layer_norm_cells(cls, packed, resets, dtype, cpp_calls, split):
    """The LayerNorm-LSTM / -GRU (gains and biases randomised: every LayerNorm parameter's
    gradient is compared), a non-default eps."""
    m = getattr(fastrnn, cls)(3, 5, num_layers=2, bidirectional=True, dtype=dtype, backend="reference", eps=1e-3)
    randomise(m, torch.Generator().manual_seed(11))
    _compare(m, dtype, packed, resets=resets)
    assert cpp_calls == {"forward": 4, "backward": 4}, cpp_calls


@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LayerNormGRU"])
def test_layer_norm_cells_wide(cls, cpp_calls, gemm_route, split):
    """Past the small GEMM and the thread split (4H = 384 features per LayerNorm row)."""
    m = getattr(fastrnn, cls)(4, 96, backend="reference")
    randomise(m, torch.Generator().manual_seed(12))
    _compare(m, torch.float32, packed=True, steps=4, batch=130, tol=WIDE)
    assert cpp_calls["forward"] == 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LayerNormGRU"])
def test_layer_norm_inference_normalises_in_place(cls, packed, bias, dtype, monkeypatch):
    """Inference of a LayerNorm layer: the input projection's LayerNorm made in place by the C++
    row pass gives every output and final state of the same
    call on the Python loops (``F.layer_norm``, then the loop), batch_first, two layers, both
    directions; and the in-place pass ran once per layer-direction."""
    m = getattr(fastrnn, cls)(3, 5, num_layers=2, bidirectional=True, bias=bias, batch_first=True, dtype=dtype,
                              backend="reference", eps=1e-3)
    randomise(m, torch.Generator().manual_seed(12))
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(4, 6, 3, generator=gen, dtype=dtype)
    h0 = torch.randn(4, 4, 5, generator=gen, dtype=dtype)
    hx = (h0, torch.randn(4, 4, 5, generator=gen, dtype=dtype)) if cls == "LayerNormLSTM" else h0
    inp = pack_padded_sequence(x, torch.tensor([4, 6, 3, 5]), batch_first=True, enforce_sorted=False) if packed else x
    passes = []
    real = cpu_loops.layer_norm_rows_
    monkeypatch.setattr(cpu_loops, "layer_norm_rows_", lambda *a: passes.append(1) or real(*a))
    with torch.no_grad():
        got = m(inp, hx)
        with cpu_loops.disabled():
            want = m(inp, hx)
    assert len(passes) == 4
    flat = [got[0].data if packed else got[0], *(got[1] if isinstance(got[1], tuple) else (got[1],))]
    ref = [want[0].data if packed else want[0], *(want[1] if isinstance(want[1], tuple) else (want[1],))]
    for a, b in zip(flat, ref):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("variant", ["peephole", "both"])
def test_without_resets(variant, cpp_calls):
    """The peephole LSTM without resets, and the regularisers without them."""
    m = fastrnn.LSTM(3, 5, bidirectional=True, dtype=torch.float64, backend="reference", **VARIANTS[variant])
    randomise(m, torch.Generator().manual_seed(3))
    _compare(m, torch.float64, packed=True, resets=False)
    assert cpp_calls == {"forward": 2, "backward": 2}, cpp_calls


@pytest.mark.parametrize("variant", ["peephole", "both"])
def test_steps_past_the_small_product_and_the_thread_split(variant, cpp_calls, gemm_route, split):
    """Batch x 4H x H above the C++ loops' own small GEMM (a library GEMM runs: see
    ``gemm_route``), and a step wide enough to split its rows between threads; packed input,
    so later steps multiply fewer rows than ``W_hh`` was packed for."""
    m = fastrnn.LSTM(4, 64, dtype=torch.float32, backend="reference", **VARIANTS[variant])
    randomise(m, torch.Generator().manual_seed(4))
    _compare(m, torch.float32, packed=True, steps=4, batch=130, tol=WIDE)
    assert cpp_calls["forward"] == 1


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LayerNormLSTM"])
def test_a_wide_w_hh_is_packed_from_itself(kind, cpp_calls, gemm_route):
    """``W_hh`` above the small-product size itself (4H x H = 147,456 at H = 192, 3H x H =
    150,528 at H = 224): MKL packs it straight from ``W_hh``, transposed by the packing, with
    no transposed copy (none of the steps takes the small product); ATen's route gets the
    copy. Both equal the Python loops, packed input (later steps have fewer rows)."""
    make = {"LSTM": lambda: fastrnn.LSTM(4, 192, peephole=True, backend="reference"),
            "GRU": lambda: fastrnn.GRU(4, 224, backend="reference"),
            "LayerNormLSTM": lambda: fastrnn.LayerNormLSTM(4, 192, backend="reference")}[kind]
    m = make()
    randomise(m, torch.Generator().manual_seed(7))
    _compare(m, torch.float32, packed=True, steps=4, batch=5, tol=WIDE)
    assert cpp_calls["forward"] == 1


def test_nan_in_the_input_spreads_as_in_the_python_loops(cpp_calls):
    m = fastrnn.LSTM(3, 5, dtype=torch.float32, backend="reference", peephole=True)
    randomise(m, torch.Generator().manual_seed(6))
    got_out, _ = _run(m, torch.float32, False, seed=1, nan=True)
    assert torch.isnan(got_out[0]).any() and not torch.isnan(got_out[0]).all()
    _compare(m, torch.float32, False, nan=True)


def test_inference_saves_nothing_and_equals_the_python_loops(cpp_calls):
    m = fastrnn.LSTM(3, 5, dtype=torch.float32, backend="reference", zoneout=(0.2, 0.3), recurrent_dropout=0.2)
    x = torch.randn(7, 3, 3)
    with torch.no_grad():
        torch.manual_seed(3)
        got = m(x)
        with cpu_loops.disabled():
            torch.manual_seed(3)
            want = m(x)
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    assert cpp_calls == {"forward": 1, "backward": 0}


def test_gradcheck_through_the_cpp_loops(cpp_calls):
    """fp64 gradcheck of the input, the initial state, W_hh and a peephole weight, with resets."""
    m = fastrnn.LSTM(2, 3, dtype=torch.float64, backend="reference", peephole=True)
    randomise(m, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(4, 2, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    h0 = torch.randn(1, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    c0 = torch.randn(1, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    w_hh = m.weight_hh_l0.detach().clone().requires_grad_()
    w_cf = m.weight_cf_l0.detach().clone().requires_grad_()
    flags = torch.tensor([[False, False], [True, False], [False, False], [False, True]])

    def f(x, h0, c0, w_hh, w_cf):
        out, (h, c) = torch.func.functional_call(m, {"weight_hh_l0": w_hh, "weight_cf_l0": w_cf}, (x, (h0, c0)),
                                                 {"resets": flags})
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, h0, c0, w_hh, w_cf), eps=1e-6, atol=1e-7)
    assert cpp_calls["forward"] >= 1 and cpp_calls["backward"] >= 1


def test_a_failed_build_warns_once_and_runs_the_python_loops(monkeypatch):
    from torch.utils import cpp_extension

    def no_compiler(*a, **k):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setitem(cpu_loops._state, "built", None)
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    m = fastrnn.LSTM(3, 4, backend="reference", peephole=True)
    x = torch.randn(5, 2, 3)
    with pytest.warns(RuntimeWarning, match="could not be built.*no C\\+\\+ compiler here"):
        got = m(x)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the second call does not warn again
        again = m(x)[0]
    assert cpu_loops.available() is False
    monkeypatch.setitem(cpu_loops._state, "built", True)
    with cpu_loops.disabled():
        want = m(x)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(again, want, rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_the_mask_draw_is_bernoulli_and_reproducible(p):
    """The regularisers' CPU masks (a counter-based hash seeded from torch's generator): the
    fraction of True within 4 standard deviations of p over 10^6 draws, pairs of neighbours
    within 4 of p^2 (no correlation along a row), the complement with ``invert``, the same
    mask after the same ``torch.manual_seed`` and another one without."""
    rows, cols = 1000, 1000
    torch.manual_seed(21)
    m = cpu_loops.bernoulli_mask(rows, cols, p)
    torch.manual_seed(21)
    again = cpu_loops.bernoulli_mask(rows, cols, p)
    other = cpu_loops.bernoulli_mask(rows, cols, p)
    assert m.dtype == torch.bool and m.shape == (rows, cols)
    assert torch.equal(m, again) and not torch.equal(m, other)
    n = rows * cols
    assert abs(m.float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5
    pairs = (m[:, 1:] & m[:, :-1]).float().mean().item()
    q = p * p
    # (overlapping pairs are not independent: twice the bound of independent ones)
    assert abs(pairs - q) < 2 * 4 * (q * (1 - q) / (rows * (cols - 1))) ** 0.5
    keep = cpu_loops.bernoulli_mask(rows, cols, p, invert=True)
    assert abs(keep.float().mean().item() - (1 - p)) < 4 * (p * (1 - p) / n) ** 0.5


def test_the_mask_draw_at_the_ends():
    assert not cpu_loops.bernoulli_mask(7, 9, 0.0).any()
    assert cpu_loops.bernoulli_mask(7, 9, 1.0).all()
    assert cpu_loops.bernoulli_mask(7, 9, 0.0, invert=True).all()


@pytest.mark.parametrize("p_h, p_c", [(0.2, 0.7), (0.2, 0.0), (0.0, 0.7)])
def test_the_zoneout_pair_is_two_mask_draws(p_h, p_c):
    """Both zoneout masks in one call: those two bernoulli_mask draws give after the same seed
    (h first), and None, with nothing drawn, where a probability is 0."""
    rows, cols = 30, 17
    torch.manual_seed(8)
    mask_h, mask_c = cpu_loops.zoneout_masks(rows, cols, p_h, p_c)
    after = torch.randint(1 << 30, ())
    torch.manual_seed(8)
    want = [cpu_loops.bernoulli_mask(rows, cols, p) if p else None for p in (p_h, p_c)]
    assert torch.equal(after, torch.randint(1 << 30, ()))
    for got, expected in zip((mask_h, mask_c), want):
        assert (got is None) == (expected is None)
        if expected is not None:
            assert got.dtype == torch.bool and torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_dropout_scale_draw(dtype):
    """The recurrent-dropout / DropConnect scale: each entry 0 or ``1 / (1 - p)`` rounded to
    the dtype (as a bool mask cast to it and multiplied by the Python float would give), kept
    with probability ``1 - p`` within 4 standard deviations, reproduced by the seed."""
    rows, cols, p = 500, 400, 0.3
    torch.manual_seed(5)
    s = cpu_loops.keep_scale(rows, cols, p, dtype)
    torch.manual_seed(5)
    again = cpu_loops.keep_scale(rows, cols, p, dtype)
    assert s.dtype == dtype and s.shape == (rows, cols) and torch.equal(s, again)
    kept = s != 0
    assert torch.equal(s, kept.to(dtype).mul_(1 / (1 - p)))
    n = rows * cols
    assert abs(kept.float().mean().item() - (1 - p)) < 4 * (p * (1 - p) / n) ** 0.5
    assert not torch.equal(s, cpu_loops.keep_scale(rows, cols, p, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_drop_connect_is_w_times_the_scale_draw(dtype):
    """The one-call DropConnect: ``w`` times the scale :func:`keep_scale` draws from the same
    seed, exactly (the 16-bit dtypes multiply by the scale rounded to them, as
    ``w * keep_scale`` does), on a non-contiguous ``w`` too; its gradient is the incoming
    gradient times that scale (the backward redraws it from the seed), and the same with
    ``create_graph`` (a differentiable gradient)."""
    rows, cols, p = 96, 40, 0.35
    w = torch.randn(cols, rows, dtype=dtype).t().requires_grad_()  # (a transposed view)
    torch.manual_seed(11)
    out = cpu_loops.drop_connect(w, p)
    torch.manual_seed(11)
    scale = cpu_loops.keep_scale(rows, cols, p, dtype)
    assert out.dtype == dtype and out.shape == (rows, cols)
    assert torch.equal(out, w.detach() * scale)
    assert (scale == 0).any() and (scale != 0).any()
    g = torch.randn(rows, cols, dtype=dtype)
    (gw,) = torch.autograd.grad(out, w, g, retain_graph=True)
    assert torch.equal(gw, g * scale)
    gg = g.clone().requires_grad_()
    (gw2,) = torch.autograd.grad(out, w, gg, create_graph=True)
    assert torch.equal(gw2, g * scale) and gw2.requires_grad
    (back,) = torch.autograd.grad(gw2, gg, torch.ones_like(gw2))
    assert torch.equal(back, torch.ones_like(back) * scale)


def test_drop_connect_second_derivatives_and_refusals():
    """fp64 gradcheck / gradgradcheck of the one-call DropConnect with its mask fixed by
    the seed; a weight that is not a 2-D floating CPU tensor is refused."""
    w = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)

    def f(w):
        torch.manual_seed(4)
        return cpu_loops.drop_connect(w, 0.4)

    assert torch.autograd.gradcheck(f, (w,))
    assert torch.autograd.gradgradcheck(f, (w,))
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():  # (a forward-mode tangent: the mask applies to it as well)
        tangent = torch.randn(12, 5, dtype=torch.float64)
        torch.manual_seed(4)
        out = cpu_loops.drop_connect(fwAD.make_dual(w.detach(), tangent), 0.4)
        torch.manual_seed(4)
        scale = cpu_loops.keep_scale(12, 5, 0.4, torch.float64)
        assert torch.equal(fwAD.unpack_dual(out).tangent, tangent * scale)
    with pytest.raises(RuntimeError, match="2-D"):
        cpu_loops.drop_connect(torch.randn(3, 4, 5), 0.4)
    with pytest.raises(RuntimeError, match="floating"):
        cpu_loops.drop_connect(torch.ones(3, 4, dtype=torch.int64), 0.4)


def test_the_regularisers_draw_their_cpu_masks_here(monkeypatch):
    """The zoneout, recurrent-dropout and DropConnect masks of a CPU layer come from it."""
    calls = []
    real = cpu_loops.bernoulli_mask
    monkeypatch.setattr(cpu_loops, "bernoulli_mask", lambda *a, **k: calls.append(a) or real(*a, **k))
    real_scale = cpu_loops.keep_scale
    monkeypatch.setattr(cpu_loops, "keep_scale", lambda *a, **k: calls.append(a[:3]) or real_scale(*a, **k))
    real_pair = cpu_loops.zoneout_masks  # (rows, cols, p_h, p_c): a GRU's p_c is 0
    monkeypatch.setattr(cpu_loops, "zoneout_masks", lambda *a, **k: calls.append(a[:3]) or real_pair(*a, **k))
    real_drop = cpu_loops.drop_connect
    monkeypatch.setattr(cpu_loops, "drop_connect", lambda w, p: calls.append((*w.shape, p)) or real_drop(w, p))
    m = fastrnn.GRU(3, 4, zoneout=0.2, recurrent_dropout=0.3, weight_drop=0.4, backend="reference")
    m(torch.randn(5, 2, 3))
    assert sorted(calls) == sorted([(10, 4, 0.2), (2, 4, 0.3), (12, 4, 0.4)]), calls


def test_the_loops_release_the_gil():
    """A long C++ loop call lets other Python threads run (the GIL is released while it
    works), as torch's own ops do: a thread that sleeps 1 ms at a time wakes within 80 ms
    throughout a forward of a few hundred ms. Held, it waits for the whole C++ loop (about
    230 ms of a 490 ms forward here, when built without the release)."""
    import threading
    import time

    m = fastrnn.GRU(64, 64, backend="reference")
    x = torch.randn(40000, 8, 64)
    with torch.no_grad():
        m(x[:10])  # (built and warm)
    stamps, done, took = [], threading.Event(), []

    def work():
        with torch.no_grad():
            start = time.perf_counter()
            m(x)
            took.append(time.perf_counter() - start)
        done.set()

    worker = threading.Thread(target=work)
    worker.start()
    while not done.is_set():
        stamps.append(time.perf_counter())
        time.sleep(0.001)
    worker.join()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert took[0] > 0.15, took  # (long enough for a held GIL to show)
    assert max(gaps) < 0.08, (max(gaps), took[0])
