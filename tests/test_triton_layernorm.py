"""LayerNorm-LSTM / -GRU on the triton backend (a torch GEMM plus one row-kernel launch per
step: fastrnn/backends/triton/norm.py, kernels/norm_rows.py), in Triton's interpreter.

Oracles: the reference backend on a module with the same parameters and the same call
(same regulariser masks: ``torch.manual_seed`` before each run), and the plain loops of the
published equations in ``variant_oracle`` (through ``test_variants._compare``). Every output
(``out``, ``h_n``, ``c_n``) and every gradient (input, ``h0``, ``c0``, every parameter, the
LayerNorm gains and biases included). fp64 to 1e-10 (the two sides differ in op order only;
the equations' oracle keeps test_variants' 1e-9); fp32 to 1e-5: the row statistics are
reduced in another order than torch's layer_norm (about 1 ulp of the mean and variance),
which the gates and T <= 6 steps carry to a few ulps of O(1) values, the same bound as the
other fp32 parity tests of the triton backend. Buffers are filled with NaN first
(``buffers.FILL_NAN``) so a store a kernel skips shows.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_triton_extras_step import BATCH, INPUT, STEPS, _assert_same, _pair, _problem, _whole
from test_variants import _compare, randomise
from variant_oracle import run_cell

import fastrnn
from fastrnn import backends
from fastrnn.backends import triton as triton_backend
from fastrnn.backends.triton import buffers, norm
from fastrnn.kernels import norm_rows
from fastrnn.kernels.launches import count_launches
from fastrnn.regularisers import Zoneout
from fastrnn.schedule import Schedule

KINDS = ("LayerNormLSTM", "LayerNormGRU")
F64, F32 = torch.float64, torch.float32


@pytest.fixture(autouse=True)
def _nan_buffers(monkeypatch):
    monkeypatch.setattr(buffers, "FILL_NAN", True)
    monkeypatch.setenv("FASTRNN_TIER", "step")  # (the resident tier's: tests/test_triton_layernorm_resident.py)


def _check(kind, dtype, hidden=5, packed=False, resets=False, seed=0, train=None, **kwargs):
    """Triton vs reference on one call; asserts one row-kernel launch per step of each
    layer-direction, each way (all on the step tier)."""
    fast, ref = _pair(kind, hidden, dtype, seed, **kwargs)
    leaves, flags, lengths = _problem(fast, packed, resets, dtype, seed)
    has_c = kind == "LayerNormLSTM"
    if train is not None:
        fast.train(train)
        ref.train(train)
    torch.manual_seed(11)
    with count_launches() as n:
        got = _whole(fast, leaves, flags, lengths, packed, has_c)
    launches = fast.num_layers * (2 if fast.bidirectional else 1) * max(lengths)
    assert dict(n.tiers) == {("step", "forward"): launches, ("step", "backward"): launches}
    torch.manual_seed(11)
    want = _whole(ref, leaves, flags, lengths, packed, has_c)
    _assert_same(got, want, dtype, f"{kind} triton vs reference")
    return got, fast, leaves, flags, lengths


CASES = [
    # layers, bidirectional, packed, resets
    (1, False, False, False),
    (2, True, False, False),
    (1, True, True, False),
    (2, False, True, True),
    (1, True, False, True),
    (1, True, True, True),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layers, bidirectional, packed, resets", CASES)
def test_against_reference_fp64(kind, layers, bidirectional, packed, resets):
    got, fast, leaves, flags, lengths = _check(kind, F64, packed=packed, resets=resets, num_layers=layers,
                                               bidirectional=bidirectional)
    if resets:  # the flags change the result: the comparison is not of a no-op
        plain = _whole(fast, leaves, flags, lengths, packed, kind == "LayerNormLSTM", use_resets=False)
        assert not torch.allclose(plain["out"], got["out"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hidden", [1, 5, 8, 20, 24])
def test_hidden_sizes(kind, hidden):
    """H = 1 (LN(c) over one unit: zero variance), H not a power of two, H past 16 (a
    32-wide padded row), H a multiple of 8 (the H_ALIGNED specialisation)."""
    _check(kind, F64, hidden=hidden, packed=True, resets=True, bidirectional=True)


@pytest.mark.parametrize("kind", KINDS)
def test_float32(kind):
    _check(kind, F32, hidden=6, packed=True, resets=True, num_layers=2, bidirectional=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("train", [True, False])
def test_regularisers(kind, train):
    """Zoneout (training masks / eval expectation) and recurrent dropout (training), with
    resets and packed rows; the regularisers act (without them the output differs)."""
    zone = (0.25, 0.375) if kind == "LayerNormLSTM" else 0.375
    got, *_ = _check(kind, F64, packed=True, resets=True, bidirectional=True, train=train, zoneout=zone,
                     recurrent_dropout=0.5)
    plain, *_ = _check(kind, F64, packed=True, resets=True, bidirectional=True, train=train)
    assert not torch.allclose(plain["out"], got["out"])


ORACLE_CASES = [
    # layers, bidirectional, batch_first, form, with_h0, bias, resets (sequence, step)
    (1, False, False, "padded", True, True, ()),
    (2, True, True, "padded", False, True, ((0, 2),)),
    (1, True, False, "packed", True, True, ((1, 3), (2, 0))),
    (2, False, False, "packed", False, False, ()),
    (1, False, True, "unbatched", True, True, ((0, 1),)),
    (1, True, False, "unbatched", False, True, ()),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layers, bidirectional, batch_first, form, with_h0, bias, resets_at", ORACLE_CASES)
def test_against_equations(kind, layers, bidirectional, batch_first, form, with_h0, bias, resets_at):
    cls = getattr(fastrnn, kind)
    m = cls(3, 4, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias,
            dtype=F64)
    randomise(m, torch.Generator().manual_seed(2))
    with count_launches() as n:
        _compare(kind, m, form, with_h0, F64, backend="triton", resets_at=resets_at)
    assert n.forward > 0 and set(n.tiers) == {("step", "forward"), ("step", "backward")}


@pytest.mark.parametrize("kind", KINDS)
def test_eps(kind):
    m = getattr(fastrnn, kind)(3, 4, eps=0.5, dtype=F64)
    randomise(m, torch.Generator().manual_seed(4))
    _compare(kind, m, "padded", True, F64, backend="triton")


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind):
    """fp64 gradcheck through the layer: input, h0, c0, W_hh and the LayerNorm parameters
    (fast mode: random directional derivatives, a few evaluations per input instead of
    one per element, which the interpreter makes minutes long)."""
    lstm = kind == "LayerNormLSTM"
    m = getattr(fastrnn, kind)(2, 3, bidirectional=True, dtype=F64, backend="triton")
    randomise(m, torch.Generator().manual_seed(5))
    names = ["weight_hh_l0", "bias_hh_l0", "ln_hh_weight_l0", "ln_hh_bias_l0", "ln_ih_weight_l0_reverse"]
    names += ["ln_c_weight_l0", "ln_c_bias_l0_reverse"] if lstm else []
    params = dict(m.named_parameters())
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 2, 2, generator=gen, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 2, 3, generator=gen, dtype=F64, requires_grad=True)
    c0 = torch.randn(2, 2, 3, generator=gen, dtype=F64, requires_grad=True)
    chosen = [params[n].detach().clone().requires_grad_() for n in names]

    def run(x, h0, c0, *ps):
        values = dict(params, **dict(zip(names, ps)))
        out, hidden = torch.func.functional_call(m, values, (x, (h0, c0) if lstm else h0))
        return (out, *hidden) if lstm else (out, hidden)

    assert torch.autograd.gradcheck(run, (x, h0, c0, *chosen) if lstm else (x, h0, h0.detach(), *chosen),
                                    eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("kind", KINDS)
def test_cell_api(kind):
    """``LayerNormLSTMCell`` / ``LayerNormGRUCell`` on backend='triton' against the equations."""
    lstm = kind == "LayerNormLSTM"
    cell = getattr(fastrnn, kind + "Cell")(3, 4, dtype=F64, backend="triton")
    randomise(cell, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(6)
    x, h, c = (torch.randn(2, n, generator=gen, dtype=F64, requires_grad=True) for n in (3, 4, 4))
    with count_launches() as n:
        got = cell(x, (h, c) if lstm else h)
    assert n.tiers == {("step", "forward"): 1}
    got = got if lstm else (got, None)
    want = run_cell(cell, kind, x, h, c if lstm else None)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-10)
    leaves = [x, h, c] if lstm else [x, h]
    w = torch.randn(got[0].shape, generator=gen, dtype=F64)

    def loss(pair):
        return (pair[0] * w).sum() + (pair[1].sum() if lstm else 0)

    params = list(cell.parameters())
    for a, b in zip(torch.autograd.grad(loss(got), leaves + params), torch.autograd.grad(loss(want), leaves + params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_forced_tiers(monkeypatch):
    """FASTRNN_TIER=step runs the row kernels; cooperative says it cannot, before any launch;
    ``tier_for`` tells the same (and the resident tier where an entry fits, the step tier past
    its entries)."""
    m = fastrnn.LayerNormGRU(3, 4, backend="triton")
    x = torch.randn(2, 2, 3)
    monkeypatch.setenv("FASTRNN_TIER", "step")
    with count_launches() as n:
        m(x)
    assert n.tiers == {("step", "forward"): 2}
    for kind in KINDS:
        assert triton_backend.tier_for(f"{kind}(eps=1e-05)", 16, 0, F32, torch.device("cpu")) == "step"
    monkeypatch.setenv("FASTRNN_TIER", "cooperative")
    with count_launches() as n, pytest.raises(RuntimeError, match="FASTRNN_TIER=cooperative: the cooperative tier "
                                              "does not run LayerNormGRU"):
        m(x)
    assert n.forward == 0
    with pytest.raises(RuntimeError, match="FASTRNN_TIER=cooperative"):
        triton_backend.tier_for("LayerNormLSTM(eps=1e-05)", 16, 0, F32, torch.device("cpu"))
    monkeypatch.setenv("FASTRNN_TIER", "auto")
    for kind in KINDS:
        assert triton_backend.tier_for(f"{kind}(eps=1e-05)", 16, 0, F32, torch.device("cpu")) == "resident"
        assert triton_backend.tier_for(f"{kind}(eps=1e-05)", 256, 0, F32, torch.device("cpu")) == "step"
    monkeypatch.setenv("FASTRNN_TIER", "resident")
    with pytest.raises(RuntimeError, match="FASTRNN_TIER=resident"):
        triton_backend.tier_for("LayerNormLSTM(eps=1e-05)", 256, 0, F32, torch.device("cpu"))


def test_refusals_before_work():
    """A hidden size past the row kernels' limit is refused before any launch."""
    cell = fastrnn.cells.get("LayerNormLSTM(eps=1e-05)")
    hidden = norm_rows.max_hidden(F32) + 1
    sched = Schedule.uniform(2, 1)
    assert "hidden_size <= 2048 in float32" in norm.refusal(cell, hidden, None, F32)
    assert "hidden_size <= 1024 in float64" in norm.refusal(cell, 1025, None, F64)
    assert norm.refusal(cell, 2048, None, F32) is None
    assert "no projection" in norm.refusal(cell, 4, torch.zeros(2, 4))
    with count_launches() as n, pytest.raises(RuntimeError, match="hidden_size <= 2048"):
        triton_backend.forward(cell, torch.zeros(2, 4 * hidden), torch.zeros(4 * hidden, 1), None, None,
                               torch.zeros(1, 1), torch.zeros(1, hidden), sched, False, True)
    assert n.forward == 0
    assert triton_backend.refuses_cell(cell) is None
    assert norm.runs(cell) and not norm.runs(fastrnn.cells.get("LSTM"))


def test_auto_picks_triton_on_cuda(monkeypatch):
    """``auto`` on a CUDA device runs the LayerNorm layers on triton, without a warning."""
    monkeypatch.setattr(backends, "triton_unavailable_reason", lambda device: None)
    for kind in KINDS:
        cell = fastrnn.cells.get(f"{kind}(eps=1e-05)")
        call = backends.Call(cell, F32, False, False, True, False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert backends.resolve_name("auto", torch.device("cuda"), call) == "triton"


def test_auto_past_the_row_kernels_runs_reference_with_a_warning(monkeypatch):
    """Past the row kernels' largest hidden size ``auto`` on CUDA warns and runs the reference
    backend (as for any call triton cannot run), instead of failing; ``backend='triton'``
    raises, naming the limit."""
    from fastrnn.kernels import norm_rows

    monkeypatch.setattr(backends, "triton_unavailable_reason", lambda device: None)
    limit = norm_rows.max_hidden(F32)
    for kind in KINDS:
        cell = fastrnn.cells.get(f"{kind}(eps=1e-05)")
        call = backends.Call(cell, F32, False, False, True, False, limit + 1)
        with pytest.warns(RuntimeWarning, match=f"hidden_size <= {limit}"):
            assert backends.resolve_name("auto", torch.device("cuda"), call) == "reference"
        fits = backends.Call(cell, F32, False, False, True, False, limit)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert backends.resolve_name("auto", torch.device("cuda"), fits) == "triton"
    m = fastrnn.LayerNormGRU(2, limit + 1, backend="triton")
    with pytest.raises(RuntimeError, match=f"hidden_size <= {limit}"):
        m(torch.randn(1, 1, 2))


def test_saved_layout_matches_forward():
    """The layout fake tensors use is what the forward saves (with zoneout of c: one more)."""
    cell = fastrnn.cells.get("LayerNormLSTM(eps=1e-05)")
    sched = Schedule.from_batch_sizes([2, 2, 1])
    hidden, rows = 3, 5
    xg, w_hh = torch.randn(rows, 4 * hidden, dtype=F64), torch.randn(4 * hidden, hidden, dtype=F64)
    h0, c0, p = torch.randn(2, hidden, dtype=F64), torch.randn(2, hidden, dtype=F64), torch.randn(10, hidden, dtype=F64)
    zone = Zoneout(mask_c=torch.rand(rows, hidden) < 0.5)
    res = triton_backend.forward(cell, xg, w_hh, None, None, h0, c0, sched, False, True, params=p, zoneout=zone)
    layout = triton_backend.saved_layout(cell, rows, hidden, F64, True, resets=True, zoneout=(False, True))
    assert [(tuple(t.shape), t.dtype) for t in res.saved] == [(tuple(s), d) for s, d in layout]


def test_report_lists_every_row_configuration():
    """The compile report's norm rows cover the configuration the launcher picks for every
    hidden size it takes, forward (with and without SAVE) and backward, each cell and dtype."""
    specs = norm_rows.specialisations()
    keys = {(s.kernel_name, s.kind, s.dtype, s.config) for s in specs}
    for dtype in (F32, torch.float16, torch.bfloat16):
        for hidden in range(1, norm_rows.max_hidden(dtype) + 1, 7):
            cfg = norm_rows.row_config(hidden, dtype)
            assert cfg.block_h >= hidden
            for kind in KINDS:
                assert {("norm-forward", kind, dtype, cfg), ("norm-backward", kind, dtype, cfg)} <= keys
    # (H_ALIGNED or not; a configuration of ARCH_CONFIGS adds its forward rows of one SAVE)
    assert len(specs) == 3 * 2 * 3 * 2 * len(norm_rows.configs(F32)) + 2 * len({k[1:] for k in norm_rows.ARCH_CONFIGS})
    for (arch, family, dtype, save), cfg in norm_rows.ARCH_CONFIGS.items():
        assert ("norm-forward", family, getattr(torch, dtype), cfg) in keys
    assert {s.label for s in specs if s.kernel_name == "norm-forward"} >= {"float32", "float32-save"}


@pytest.mark.parametrize("kind", KINDS)
def test_float16_io(kind):
    """fp16 I/O, fp32 statistics and state: against the reference backend in fp64 on the same
    (fp16-representable) parameters and inputs; fp16 rounding of r, the gates and each
    step's h (about 5e-4 relative) over T = 6 steps bounds it at 1e-2."""
    fast, ref = _pair(kind, 6, torch.float16, 3, bidirectional=True)
    ref = ref.to(F64)
    ref.load_state_dict({k: v.to(F64) for k, v in fast.state_dict().items()})
    leaves, flags, lengths = _problem(fast, True, True, torch.float16, 3)
    wide = [t.detach().to(F64).requires_grad_() for t in leaves]
    has_c = kind == "LayerNormLSTM"
    got = _whole(fast, leaves, flags, lengths, True, has_c)
    want = _whole(ref, wide, flags, lengths, True, has_c)
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == torch.float16 and torch.isfinite(got[key]).all(), key
        torch.testing.assert_close(got[key].to(F64), want[key], rtol=1e-2, atol=1e-2, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("kind", KINDS)
def test_compile_one_graph(kind):
    """torch.compile (aot_eager, fullgraph) over the triton backend: the fake tensors take
    the saved layout of :func:`norm.saved_layout`; results equal eager's."""
    from test_variants_tracing import WithResets, _inputs, _outputs_and_grads

    torch._dynamo.reset()
    torch.manual_seed(0)
    module = WithResets(getattr(fastrnn, kind)(3, 4, num_layers=2, bidirectional=True, backend="triton",
                                               zoneout=0.25, recurrent_dropout=0.5).eval())
    randomise(module.rnn, torch.Generator().manual_seed(1))
    x, resets = _inputs()
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    with count_launches() as n:
        got = _outputs_and_grads(compiled, module, x, resets)
    assert n.tiers[("step", "forward")] == 4 * x.shape[0]
    want = _outputs_and_grads(module, module, x, resets)
    torch._dynamo.reset()
    for a, e in zip(got, want):
        assert torch.equal(a, e)
