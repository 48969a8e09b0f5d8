"""Reliability 2: hostile inputs behave like torch.nn.

Every case computes torch.nn's behaviour in the test (the same error type and message, or
the same result) and requires fastrnn to match it. Exceptions:

- hx of the wrong dtype: torch's CPU message for LSTM is an accident of oneDNN
  ("get_mkldnn_dtype: unsupported data type"), so only the error type is compared and
  fastrnn's message must name both dtypes. torch.nn accepts one such input (a float64
  LSTM / LSTMCell with a float32 c0, promoted); fastrnn rejects it on purpose.
- PackedSequence input of the wrong dtype to LSTM: torch.nn.LSTM skips its own dtype
  check for packed input and fails inside a matmul; fastrnn gives the error torch gives
  for the same data padded.
- ``*Cell`` modules with an input of the wrong dtype: torch spells dtypes ``Long`` /
  ``Float``, fastrnn ``torch.int64`` / ``torch.float32``; the type is compared and the
  message must name both dtypes.
- NaN / Inf: outputs must have torch's NaN / Inf pattern and values. Gradients keep
  torch's NaN pattern for NaN inputs; with Inf inputs, ``0 * inf`` inside the weight
  gradient GEMMs is summed in a different order than torch's per-step products (an
  implementation detail of the BLAS call), so only the input / h0 gradients' pattern is
  compared there, and every gradient must be computed.

A different device than the weights' needs a second device; the ``meta`` device gives a
meaningful check of the mismatch errors (and of shape-only runs), so it is used.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from helpers import TOL, assert_parity, make_pair, run_with_grads

BACKENDS = ["reference", "triton"]

SEQ_CASES = [
    pytest.param("RNN", dict(nonlinearity="tanh"), id="RNN_TANH"),
    pytest.param("RNN", dict(nonlinearity="relu"), id="RNN_RELU"),
    pytest.param("LSTM", {}, id="LSTM"),
    pytest.param("GRU", {}, id="GRU"),
]
CELL_CASES = [
    pytest.param("RNNCell", id="RNNCell"),
    pytest.param("LSTMCell", id="LSTMCell"),
    pytest.param("GRUCell", id="GRUCell"),
]

# tiny shapes: the triton cases run in the interpreter
I, H, T, B = 3, 4, 3, 2

C10_NAMES = {
    torch.float64: "Double", torch.float32: "Float", torch.float16: "Half", torch.bfloat16: "BFloat16",
    torch.int64: "Long", torch.int32: "Int", torch.bool: "Bool",
}


def _names_dtype(message: str, dtype: torch.dtype) -> bool:
    return str(dtype) in message or C10_NAMES[dtype] in message


def _outcome(fn):
    """``("ok", result)`` or ``(exception type, message)``: what a call does."""
    try:
        return "ok", fn()
    except Exception as exc:  # noqa: BLE001 - the exception itself is what is compared
        return type(exc), str(exc)


def _hx(cls, layers_dirs, batch, size, dtype=torch.float64, **kw):
    lead = (layers_dirs,) if batch is None else (layers_dirs, batch)
    h = torch.randn(*lead, size, dtype=dtype, **kw)
    return (h, torch.randn(*lead, size, dtype=dtype, **kw)) if cls == "LSTM" else h


def _pair(cls, backend, *args, **kw):
    kw.setdefault("dtype", torch.float64)
    return make_pair(cls, *args, backend=backend, **kw)


def _assert_same_error(ref_call, fast_call):
    expected, actual = _outcome(ref_call), _outcome(fast_call)
    assert expected[0] != "ok", "torch.nn accepted this input; the case is mis-built"
    assert actual[0] is expected[0], f"torch.nn raised {expected}, fastrnn gave {actual}"
    assert actual[1] == expected[1]


# --------------------------------------------------------------------------------------
# Empty batch, empty sequence
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tbi", "bti"])
@pytest.mark.parametrize("cls, kw", SEQ_CASES)
def test_empty_batch_matches_torch(cls, kw, batch_first, backend):
    ref, fast = _pair(cls, backend, I, H, num_layers=2, bidirectional=True, batch_first=batch_first, **kw)
    shape = (0, T, I) if batch_first else (T, 0, I)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert_parity(ref, fast, x)
    assert_parity(ref, fast, x, _hx(cls, 4, 0, H, requires_grad=True))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", CELL_CASES)
def test_cell_empty_batch_matches_torch(cls, backend):
    ref, fast = _pair(cls, backend, I, H)
    x = torch.randn(0, I, dtype=torch.float64, requires_grad=True)
    assert_parity(ref, fast, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "shape, batch_first", [((0, B, I), False), ((B, 0, I), True), ((0, I), False)], ids=["tbi", "bti", "unbatched"]
)
@pytest.mark.parametrize("cls, kw", SEQ_CASES)
def test_zero_length_sequence_raises_like_torch(cls, kw, shape, batch_first, backend):
    ref, fast = _pair(cls, backend, I, H, batch_first=batch_first, **kw)
    x = torch.randn(shape, dtype=torch.float64)
    _assert_same_error(lambda: ref(x), lambda: fast(x))
    assert "Expected sequence length to be larger than 0 in RNN" in _outcome(lambda: fast(x))[1]


# --------------------------------------------------------------------------------------
# Non-contiguous, transposed and expanded (stride-0) inputs and states
# --------------------------------------------------------------------------------------


class _Viewed(torch.nn.Module):
    """Wraps a recurrent module: ``forward`` turns contiguous leaves into the hostile views.

    The views are made inside the graph, so gradients flow back through them to the
    leaves that ``helpers.assert_parity`` compares, and each view is checked to really be
    non-contiguous (else the case would test nothing).
    """

    def __init__(self, rnn, view_input, view_state):
        super().__init__()
        self.rnn = rnn
        self.view_input, self.view_state = view_input, view_state

    def forward(self, inp, hx=None):
        inp = self.view_input(inp)
        data = inp.data if isinstance(inp, PackedSequence) else inp
        assert not data.is_contiguous(), data.stride()
        if hx is None:
            return self.rnn(inp)
        hx = tuple(self.view_state(h) for h in hx) if isinstance(hx, tuple) else self.view_state(hx)
        for h in hx if isinstance(hx, tuple) else (hx,):
            assert not h.is_contiguous(), h.stride()
        return self.rnn(inp, hx)


def _rand(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


# name: (batch_first, leaf shape of the input, input view, leaf shape of one state, state view)
VIEW_CASES = {
    # (B, T, I) data fed to a time-major module as a transposed view, and vice versa
    "transposed-tbi": (False, (B, T, I), lambda x: x.transpose(0, 1), (B, 2, H), lambda h: h.transpose(0, 1)),
    "transposed-bti": (True, (T, B, I), lambda x: x.transpose(0, 1), (H, B, 2), lambda h: h.permute(2, 1, 0)),
    # strided slices: every other timestep / feature column
    "strided-time": (False, (2 * T, B, I), lambda x: x[::2], (2, B, 2 * H), lambda h: h[..., ::2]),
    "strided-feature": (False, (T, B, 2 * I), lambda x: x[..., 1::2], (2, 2 * B, H), lambda h: h[:, ::2]),
    # feature dimension outermost in memory
    "permuted": (True, (I, B, T), lambda x: x.permute(1, 2, 0), (2, H, B), lambda h: h.transpose(1, 2)),
    # stride 0: one row repeated over batch and time
    "expanded": (False, (1, 1, I), lambda x: x.expand(T, B, I), (2, 1, H), lambda h: h.expand(2, B, H)),
    "expanded-time": (True, (B, 1, I), lambda x: x.expand(B, T, I), (1, 1, 1), lambda h: h.expand(2, B, H)),
}


# In the interpreter the quick run covers one transposed, one strided and one expanded
# case; the full grid (FASTRNN_FULL=1) runs them all.
TRITON_QUICK_VIEWS = ("transposed-tbi", "strided-feature", "expanded")


def _backend_grid(names, quick_for_triton):
    return [
        pytest.param(backend, name, id=f"{name}-{backend}",
                     marks=[pytest.mark.slow] if backend == "triton" and name not in quick_for_triton else [])
        for backend in BACKENDS
        for name in names
    ]


@pytest.mark.parametrize("backend, view", _backend_grid(list(VIEW_CASES), TRITON_QUICK_VIEWS))
@pytest.mark.parametrize("cls, kw", SEQ_CASES)
def test_noncontiguous_inputs_and_states_match_torch(cls, kw, view, backend):
    batch_first, in_shape, view_input, state_shape, view_state = VIEW_CASES[view]
    ref, fast = _pair(cls, backend, I, H, num_layers=2, batch_first=batch_first, **kw)
    ref, fast = _Viewed(ref, view_input, view_state), _Viewed(fast, view_input, view_state)
    x = _rand(*in_shape)
    assert_parity(ref, fast, x)
    hx = (_rand(*state_shape), _rand(*state_shape)) if cls == "LSTM" else _rand(*state_shape)
    assert_parity(ref, fast, x, hx)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, kw", SEQ_CASES)
def test_noncontiguous_unbatched_and_packed_match_torch(cls, kw, backend):
    ref, fast = _pair(cls, backend, I, H, **kw)
    # unbatched (T, I) as the transpose of an (I, T) leaf
    v_ref, v_fast = (_Viewed(m, lambda x: x.t(), lambda h: h[:, ::2]) for m in (ref, fast))
    state = (_rand(1, 2 * H), _rand(1, 2 * H)) if cls == "LSTM" else _rand(1, 2 * H)
    assert_parity(v_ref, v_fast, _rand(I, T), state)

    # PackedSequence whose data is a transposed view
    lengths = torch.tensor([2, 3, 1])
    n_rows = int(lengths.sum())
    batch_sizes = torch.tensor([3, 2, 1])

    def packed_view(data_t):
        return PackedSequence(data_t.t(), batch_sizes, torch.tensor([1, 0, 2]), torch.tensor([1, 0, 2]))

    v_ref, v_fast = (_Viewed(m, packed_view, lambda h: h.permute(2, 1, 0)) for m in (ref, fast))
    state = (_rand(H, 3, 1), _rand(H, 3, 1)) if cls == "LSTM" else _rand(H, 3, 1)
    assert_parity(v_ref, v_fast, _rand(I, n_rows), state)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", CELL_CASES)
def test_cell_noncontiguous_and_expanded_match_torch(cls, backend):
    ref, fast = _pair(cls, backend, I, H)
    n_states = 2 if cls == "LSTMCell" else 1
    for view_input, in_shape, view_state, state_shape in [
        (lambda x: x.t(), (I, B), lambda h: h.t(), (H, B)),
        (lambda x: x.expand(B, I), (1, I), lambda h: h.expand(B, H), (1, H)),
        (lambda x: x[::2], (2 * B, I), lambda h: h[:, 1::2], (B, 2 * H)),
    ]:
        v_ref, v_fast = (_Viewed(m, view_input, view_state) for m in (ref, fast))
        states = tuple(_rand(*state_shape) for _ in range(n_states))
        assert_parity(v_ref, v_fast, _rand(*in_shape), states if n_states == 2 else states[0])


# --------------------------------------------------------------------------------------
# Wrong dtypes and shapes
# --------------------------------------------------------------------------------------

BAD_INPUT_DTYPES = [torch.float32, torch.float16, torch.int64, torch.int32, torch.bool]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", BAD_INPUT_DTYPES, ids=str)
@pytest.mark.parametrize("cls, kw", SEQ_CASES)
def test_input_dtype_other_than_weights_raises_like_torch(cls, kw, dtype, backend):
    ref, fast = _pair(cls, backend, I, H, **kw)  # float64 weights
    x = torch.randn(T, B, I, dtype=torch.float64).to(dtype)
    _assert_same_error(lambda: ref(x), lambda: fast(x))
    packed = pack_padded_sequence(x, torch.tensor([3, 2]))
    if cls == "LSTM":
        # torch.nn.LSTM skips check_forward_args for PackedSequence input and fails later
        # inside the matmul ("mat1 and mat2 must have the same dtype"); fastrnn keeps the
        # check torch applies to padded input (and that torch.nn.RNN/GRU apply to packed).
        expected = _outcome(lambda: ref(x))
        actual = _outcome(lambda: fast(packed))
        assert (actual[0], actual[1]) == (expected[0], expected[1])
    else:
        _assert_same_error(lambda: ref(packed), lambda: fast(packed))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", BAD_INPUT_DTYPES, ids=str)
@pytest.mark.parametrize("cls", CELL_CASES)
def test_cell_input_dtype_other_than_weights_raises_clearly(cls, dtype, backend):
    ref, fast = _pair(cls, backend, I, H)
    x = torch.randn(B, I, dtype=torch.float64).to(dtype)
    expected, actual = _outcome(lambda: ref(x)), _outcome(lambda: fast(x))
    assert expected[0] is RuntimeError, expected
    assert actual[0] is expected[0], actual
    assert _names_dtype(actual[1], dtype) and _names_dtype(actual[1], torch.float64), actual[1]


def _bad_shapes(cls):
    """(id, hx) pairs with a wrong shape for a 2-layer module on (T, B, I) input."""
    good = (2, B, H)
    wrong = {"batch": (2, B + 1, H), "layers": (1, B, H), "hidden": (2, B, H + 1), "rank": (B, H)}
    if cls != "LSTM":
        return [(k, torch.randn(s, dtype=torch.float64)) for k, s in wrong.items()]
    cases = []
    for k, s in wrong.items():
        cases.append((f"h-{k}", (torch.randn(s, dtype=torch.float64), torch.randn(good, dtype=torch.float64))))
        cases.append((f"c-{k}", (torch.randn(good, dtype=torch.float64), torch.randn(s, dtype=torch.float64))))
    return cases


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, kw", SEQ_CASES)
def test_hx_of_wrong_shape_raises_like_torch(cls, kw, backend):
    ref, fast = _pair(cls, backend, I, H, num_layers=2, **kw)
    x = torch.randn(T, B, I, dtype=torch.float64)
    for case, hx in _bad_shapes(cls):
        expected, actual = _outcome(lambda: ref(x, hx)), _outcome(lambda: fast(x, hx))
        assert expected[0] != "ok", case
        assert (actual[0], actual[1]) == (expected[0], expected[1]), case
    # unbatched input with a batched hx
    _assert_same_error(lambda: ref(x[:, 0], _hx(cls, 2, B, H)), lambda: fast(x[:, 0], _hx(cls, 2, B, H)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", CELL_CASES)
def test_cell_hx_of_wrong_shape_raises_like_torch(cls, backend):
    ref, fast = _pair(cls, backend, I, H)
    x = torch.randn(B, I, dtype=torch.float64)
    n = 2 if cls == "LSTMCell" else 1
    for shape in [(B + 1, H), (B, H + 1), (1, B, H)]:
        hx = tuple(torch.randn(shape, dtype=torch.float64) for _ in range(n))
        hx = hx if n == 2 else hx[0]
        _assert_same_error(lambda: ref(x, hx), lambda: fast(x, hx))


WRONG_STATE_DTYPES = [
    pytest.param(torch.float32, torch.float64, id="weights-fp32-state-fp64"),
    pytest.param(torch.float64, torch.float32, id="weights-fp64-state-fp32"),
    pytest.param(torch.float32, torch.int64, id="weights-fp32-state-int64"),
]


# (cls, kw, which state is wrong): only LSTM has a cell state.
WRONG_STATE_CASES = [
    pytest.param(*case.values, which, id=f"{which}-{case.id}")
    for which in ("h", "c") for case in SEQ_CASES if which == "h" or case.values[0] == "LSTM"
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weight_dtype, state_dtype", WRONG_STATE_DTYPES)
@pytest.mark.parametrize("cls, kw, which", WRONG_STATE_CASES)
def test_hx_of_wrong_dtype_raises_runtime_error_naming_dtypes(cls, kw, which, weight_dtype, state_dtype, backend):
    """fastrnn always raises a RuntimeError that names both dtypes.

    torch.nn raises RuntimeError too, with an accidental message, except for one case it
    accepts: a float64 LSTM with a float32 c0 (the cell update promotes it). fastrnn
    rejects that as well rather than guess a state dtype.
    """
    ref, fast = _pair(cls, backend, I, H, dtype=weight_dtype, **kw)
    x = torch.randn(T, B, I, dtype=weight_dtype)
    hx = _hx(cls, 1, B, H, dtype=weight_dtype)
    bad = torch.zeros(1, B, H, dtype=state_dtype)
    if cls == "LSTM":
        hx = (bad, hx[1]) if which == "h" else (hx[0], bad)
    else:
        hx = bad
    expected, actual = _outcome(lambda: ref(x, hx)), _outcome(lambda: fast(x, hx))
    torch_accepts = cls == "LSTM" and which == "c" and (weight_dtype, state_dtype) == (torch.float64, torch.float32)
    assert expected[0] is ("ok" if torch_accepts else RuntimeError), expected
    assert actual[0] is RuntimeError, actual
    assert _names_dtype(actual[1], state_dtype) and _names_dtype(actual[1], weight_dtype), actual[1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", CELL_CASES)
def test_cell_hx_of_wrong_dtype_raises_runtime_error_naming_dtypes(cls, backend):
    ref, fast = _pair(cls, backend, I, H)
    x = torch.randn(B, I, dtype=torch.float64)
    n = 2 if cls == "LSTMCell" else 1
    for k in range(n):
        states = [torch.randn(B, H, dtype=torch.float64) for _ in range(n)]
        states[k] = states[k].float()
        hx = tuple(states) if n == 2 else states[0]
        expected, actual = _outcome(lambda: ref(x, hx)), _outcome(lambda: fast(x, hx))
        # torch.nn.LSTMCell accepts a float32 c0 with float64 weights (promotion); fastrnn
        # rejects it, as for LSTM (see above)
        torch_accepts = cls == "LSTMCell" and k == 1
        assert expected[0] is ("ok" if torch_accepts else RuntimeError), expected
        assert actual[0] is RuntimeError, actual
        assert _names_dtype(actual[1], torch.float32) and _names_dtype(actual[1], torch.float64), actual[1]


# --------------------------------------------------------------------------------------
# Devices (meta stands in for a second device)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, kw", SEQ_CASES)
def test_device_mismatch_raises_like_torch(cls, kw, backend):
    x_cpu = torch.randn(T, B, I, dtype=torch.float64)
    x_meta = x_cpu.to("meta")
    ref, fast = _pair(cls, backend, I, H, **kw)
    _assert_same_error(lambda: ref(x_meta), lambda: fast(x_meta))  # input elsewhere than weights
    hx_meta = tuple(h.to("meta") for h in _hx(cls, 1, B, H)) if cls == "LSTM" else _hx(cls, 1, B, H).to("meta")
    _assert_same_error(lambda: ref(x_cpu, hx_meta), lambda: fast(x_cpu, hx_meta))  # hidden elsewhere
    ref_meta, fast_meta = _pair(cls, backend, I, H, device="meta", **kw)
    _assert_same_error(lambda: ref_meta(x_cpu), lambda: fast_meta(x_cpu))  # weights elsewhere


@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"])
def test_meta_device_gives_torch_shapes(cls):
    """Shape-only runs (deferred init, FSDP) on the meta device work as with torch.nn.

    Reference backend only: meta tensors have no data for a Triton kernel to read.
    """
    ref, fast = _pair(cls, "reference", I, H, device="meta")
    x = torch.randn((T, B, I) if "Cell" not in cls else (B, I), device="meta", dtype=torch.float64)
    expected, actual = run_shapes(ref(x)), run_shapes(fast(x))
    assert actual == expected


def run_shapes(result):
    if torch.is_tensor(result):
        return [(tuple(result.shape), result.dtype, result.device.type)]
    return [s for r in result for s in run_shapes(r)]


# --------------------------------------------------------------------------------------
# NaN, Inf, huge values
# --------------------------------------------------------------------------------------


def _assert_same_pattern(actual, expected, what):
    assert torch.equal(actual.isnan(), expected.isnan()), f"{what}: NaN pattern differs"
    assert torch.equal(actual.isinf(), expected.isinf()), f"{what}: Inf pattern differs"
    torch.testing.assert_close(actual, expected, equal_nan=True, **TOL[torch.float64], msg=what)


SPECIAL = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}


@pytest.mark.parametrize("where", ["input", "h0"])
@pytest.mark.parametrize("backend, value", _backend_grid(list(SPECIAL), ("nan", "+inf")))
@pytest.mark.parametrize("cls, kw", SEQ_CASES)
def test_nan_and_inf_propagate_like_torch(cls, kw, value, where, backend):
    ref, fast = _pair(cls, backend, I, H, **kw)
    x = torch.randn(T, B + 1, I, dtype=torch.float64)
    hx = _hx(cls, 1, B + 1, H)
    h0 = hx[0] if cls == "LSTM" else hx
    if where == "input":
        x[1, 1, 0] = SPECIAL[value]  # one sequence, mid-sequence, one feature
    else:
        h0[0, 1, 2] = SPECIAL[value]
    x.requires_grad_()
    for h in hx if cls == "LSTM" else (hx,):
        h.requires_grad_()
    out_r, in_r, par_r = run_with_grads(ref, x, hx)
    out_f, in_f, par_f = run_with_grads(fast, x, hx)
    assert any(o.isnan().any() or o.isinf().any() for o in out_r) or value != "nan", "case must poison outputs"
    for k, (a, e) in enumerate(zip(out_f, out_r)):
        _assert_same_pattern(a, e, f"output[{k}]")
    assert len(in_f) == len(in_r) and len(par_f) == len(par_r)
    for k, (a, e) in enumerate(zip(in_f, in_r)):
        _assert_same_pattern(a, e, f"input/hx grad[{k}]")
    for k, (a, e) in enumerate(zip(par_f, par_r)):
        assert a is not None and a.shape == e.shape, f"param grad[{k}]"
        if value == "nan":
            assert torch.equal(a.isnan(), e.isnan()), f"param grad[{k}]: NaN pattern differs"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, kw", SEQ_CASES)
def test_huge_activations_stay_finite_and_match_torch(cls, kw, backend):
    """|x| ~ 1e4 in float32: every gate saturates; exp overflow must not leak NaN/Inf.

    The gates' pre-activations reach about 1e4, where one fp32 ulp is about 1e-3; a sigmoid
    that is not fully saturated changes relatively by as much as its argument changes
    absolutely, so two correct implementations that sum the products in another order (a
    different GEMM, or the same GEMM on another thread count) differ by about 1e-3
    relatively, a few ulps at most. The tolerance allows a few (rtol 4e-3, atol 1e-3), not
    fp32's usual one."""
    ref, fast = make_pair(cls, I, H, backend=backend, **kw)
    x = (torch.randn(T, B, I) * 1e4).requires_grad_()
    hx = _hx(cls, 1, B, H, dtype=torch.float32)
    hx = tuple(h.mul(1e4).requires_grad_() for h in hx) if cls == "LSTM" else hx.mul(1e4).requires_grad_()
    out_r, in_r, par_r = run_with_grads(ref, x, hx)
    out_f, in_f, par_f = run_with_grads(fast, x, hx)
    for what, actual, expected in (("output", out_f, out_r), ("input/hx grad", in_f, in_r), ("param grad", par_f, par_r)):
        assert len(actual) == len(expected)
        for k, (a, e) in enumerate(zip(actual, expected)):
            assert torch.isfinite(e).all(), f"torch.nn itself overflowed in {what}[{k}]; case mis-built"
            assert torch.isfinite(a).all(), f"{what}[{k}] not finite"
            torch.testing.assert_close(a, e, rtol=4e-3, atol=1e-3, msg=lambda m: f"{what}[{k}]: {m}")


# --------------------------------------------------------------------------------------
# requires_grad on only some inputs
# --------------------------------------------------------------------------------------

GRAD_SUBSETS = ["input", "h0", "c0", "input+c0", "none"]
# (cls, kw, subset): only LSTM has c0.
GRAD_SUBSET_CASES = [
    pytest.param(*case.values, subset, id=f"{subset}-{case.id}")
    for subset in GRAD_SUBSETS for case in SEQ_CASES if "c0" not in subset or case.values[0] == "LSTM"
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, kw, subset", GRAD_SUBSET_CASES)
def test_requires_grad_on_some_inputs_matches_torch(cls, kw, subset, backend):
    ref, fast = _pair(cls, backend, I, H, num_layers=2, bidirectional=True, **kw)
    parts = subset.split("+")
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad="input" in parts)
    hx = _hx(cls, 4, B, H)
    if cls == "LSTM":
        hx = (hx[0].requires_grad_("h0" in parts), hx[1].requires_grad_("c0" in parts))
    else:
        hx.requires_grad_("h0" in parts)
    assert_parity(ref, fast, x, hx)
