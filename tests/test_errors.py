"""Bad input raises torch.nn's own error: same exception type, same message.

The expected error is computed in the test, by calling torch.nn with the same input; it
is never a copy of a message. Where torch's message is an implementation accident (a
hidden state whose dtype differs from the input fails inside a GEMM or oneDNN with
"mat1 and mat2 must have the same dtype" / "get_mkldnn_dtype: unsupported data type",
and a cell's input of the wrong dtype fails inside the GEMM too), fastrnn raises the same
exception type with a message that names what is wrong.

Nothing runs before the checks: an autouse fixture makes the engine's
entry ``fastrnn.ops.layer`` and the reference backend's ``forward`` raise
``RanBeforeCheck``; every error test would then see that instead of the validation error.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
import fastrnn.backends.reference as reference
import fastrnn.ops as ops
from fastrnn.functional import Schedule, recurrent_layer, recurrent_stack
from helpers import make_pair

F64 = torch.float64
T, B, I, H = 4, 3, 5, 6  # all distinct: a transposed or misread dimension cannot pass


class RanBeforeCheck(Exception):
    pass


# tests whose input is valid and must run (the sentinel is off for them)
RUNS_FOR_REAL = {"test_explicit_backend_overrides_bogus_environment_variable"}


@pytest.fixture(autouse=True)
def nothing_runs(request, monkeypatch):
    if request.function.__name__ in RUNS_FOR_REAL:
        return

    def fail(*args, **kwargs):
        raise RanBeforeCheck("the engine ran before the input was validated")

    monkeypatch.setattr(ops, "layer", fail)
    monkeypatch.setattr(reference, "forward", fail)


def torch_error(fn) -> Exception:
    with pytest.raises(Exception) as info:
        fn()
    assert not isinstance(info.value, RanBeforeCheck)
    return info.value


def assert_same_error(ref_fn, fast_fn):
    """fastrnn raises exactly torch's exception type with exactly torch's message."""
    expected = torch_error(ref_fn)
    with pytest.raises(type(expected), match="^" + re.escape(str(expected)) + "$") as info:
        fast_fn()
    assert type(info.value) is type(expected)


def _seq(cls, **kw):
    return make_pair(cls, I, H, dtype=F64, **kw)


def _state(*shape, dtype=F64):
    return torch.randn(shape, dtype=dtype)


def test_sentinel_is_effective():
    """Valid input does reach the patched engine (so the other tests prove an order)."""
    _, fast = _seq("LSTM")
    with pytest.raises(RanBeforeCheck):
        fast(_state(T, B, I))


# --------------------------------------------------------------------------------------
# RNN / LSTM / GRU
# --------------------------------------------------------------------------------------

SEQ = [
    pytest.param("RNN", dict(), id="RNN"),
    pytest.param("RNN", dict(nonlinearity="relu", num_layers=2, bidirectional=True), id="RNN-relu-L2-bidir"),
    pytest.param("LSTM", dict(), id="LSTM"),
    pytest.param("LSTM", dict(num_layers=2, proj_size=2), id="LSTM-L2-proj2"),
    pytest.param("LSTM", dict(bidirectional=True, batch_first=True), id="LSTM-bidir-bf"),
    pytest.param("GRU", dict(), id="GRU"),
    pytest.param("GRU", dict(num_layers=3, batch_first=True), id="GRU-L3-bf"),
]


def _n(kw):
    return kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)


def _good_hx(cls, kw, batch=B, unbatched=False):
    lead = (_n(kw),) if unbatched else (_n(kw), batch)
    h = _state(*lead, kw.get("proj_size") or H)
    return (h, _state(*lead, H)) if cls == "LSTM" else h


def _x(kw, batch=B, steps=T, size=I, dtype=F64):
    shape = (batch, steps) if kw.get("batch_first") else (steps, batch)
    return _state(*shape, size, dtype=dtype)


def _bad_hidden(cls, kw):
    """(name, hx) with one wrong dimension each, for (T, B, I) input."""
    n, p = _n(kw), kw.get("proj_size") or H
    wrong_h = {
        "h-layers": (n + 1, B, p), "h-batch": (n, B + 1, p), "h-size": (n, B, p + 1),
    }
    if cls != "LSTM":
        return [(k, _state(*s)) for k, s in wrong_h.items()]
    cases = [(k, (_state(*s), _state(n, B, H))) for k, s in wrong_h.items()]
    wrong_c = {"c-layers": (n + 1, B, H), "c-batch": (n, B + 1, H), "c-size": (n, B, H + 1)}
    cases += [(k, (_state(n, B, p), _state(*s))) for k, s in wrong_c.items()]
    if kw.get("proj_size"):
        cases.append(("h-size-is-hidden-not-proj", (_state(n, B, H), _state(n, B, H))))
    return cases


@pytest.mark.parametrize("cls, kw", SEQ)
def test_wrong_input_size(cls, kw):
    ref, fast = _seq(cls, **kw)
    x = _x(kw, size=I + 1)
    assert_same_error(lambda: ref(x), lambda: fast(x))
    assert_same_error(lambda: ref(x[0]), lambda: fast(x[0]))  # unbatched
    packed = pack_padded_sequence(x, torch.tensor([T, 1, 2]), batch_first=bool(kw.get("batch_first")),
                                  enforce_sorted=False)
    # torch.nn.LSTM skips its argument checks for PackedSequence input and fails later (a
    # GEMM shape message); fastrnn applies the check torch applies to padded input
    assert_same_error(lambda: ref(x if cls == "LSTM" else packed), lambda: fast(packed))


@pytest.mark.parametrize("cls, kw", SEQ)
def test_wrong_hidden_shape(cls, kw):
    ref, fast = _seq(cls, **kw)
    x = _x(kw)
    cases = _bad_hidden(cls, kw)
    assert len(cases) >= 3
    for name, hx in cases:
        assert_same_error(lambda: ref(x, hx), lambda: fast(x, hx))


@pytest.mark.parametrize("cls, kw", SEQ)
def test_wrong_hidden_shape_packed(cls, kw):
    ref, fast = _seq(cls, **kw)
    x = _x(kw)
    packed = pack_padded_sequence(x, torch.tensor([2, T, 1]), batch_first=bool(kw.get("batch_first")),
                                  enforce_sorted=False)
    # torch.nn.LSTM skips its argument checks for PackedSequence input (a wrong hx then
    # crashes the process inside ATen on torch 2.13): the expected error is the one torch
    # gives for the same hx with padded input, which fastrnn applies to packed input too
    ref_input = x if cls == "LSTM" else packed
    cases = _bad_hidden(cls, kw) + [("2-D hx", _good_hx(cls, kw, unbatched=True))]
    for name, hx in cases:
        if cls == "LSTM" and name == "2-D hx":
            # no torch reference: torch.nn.LSTM has no rank check for packed input and
            # crashes; fastrnn, like torch.nn.RNN/GRU on packed input, permutes hx and then
            # checks its size (test_packed_lstm_with_2d_hx_raises below)
            continue
        if name.endswith("-batch"):
            # a larger hx batch passes torch: it index_selects hx with sorted_indices
            # before checking, keeping B rows; fastrnn does the same and goes on to run
            continue
        assert_same_error(lambda: ref(ref_input, hx), lambda: fast(packed, hx))


@pytest.mark.parametrize("kw", [dict(), dict(bidirectional=True), dict(num_layers=2, proj_size=2)],
                         ids=["LSTM", "LSTM-bidir", "LSTM-L2-proj2"])
def test_packed_lstm_with_2d_hx_raises(kw):
    _, fast = _seq("LSTM", **kw)
    packed = pack_padded_sequence(_x({}), torch.tensor([2, T, 1]), enforce_sorted=False)
    with pytest.raises(RuntimeError):  # not RanBeforeCheck: raised by the checks
        fast(packed, _good_hx("LSTM", kw, unbatched=True))


@pytest.mark.parametrize("cls", ["RNN", "GRU"])
def test_packed_hx_with_larger_batch_is_accepted_like_torch(cls):
    ref, fast = _seq(cls)
    packed = pack_padded_sequence(_x({}), torch.tensor([2, T, 1]), enforce_sorted=False)
    hx = _state(1, B + 1, H)
    assert ref(packed, hx)[1].shape == (1, B, H)
    with pytest.raises(RanBeforeCheck):  # past validation, like torch
        fast(packed, hx)


@pytest.mark.parametrize("cls, kw", SEQ)
def test_wrong_hidden_shape_unbatched(cls, kw):
    ref, fast = _seq(cls, **kw)
    x = _x(kw)[0] if kw.get("batch_first") else _x(kw)[:, 0]
    n, p = _n(kw), kw.get("proj_size") or H
    bad = [_state(n + 1, p), _state(n, p + 1)]
    if cls == "LSTM":
        bad = [(h, _state(n, H)) for h in bad] + [(_state(n, p), _state(n, H + 1))]
    for hx in bad:
        assert_same_error(lambda: ref(x, hx), lambda: fast(x, hx))


@pytest.mark.parametrize("cls, kw", SEQ)
def test_hx_rank_mismatch(cls, kw):
    ref, fast = _seq(cls, **kw)
    x = _x(kw)
    unbatched_x = x[0] if kw.get("batch_first") else x[:, 0]
    cases = [(x, _good_hx(cls, kw, unbatched=True)), (unbatched_x, _good_hx(cls, kw))]
    if cls == "LSTM":
        h3, c3 = _good_hx(cls, kw)
        h2, c2 = _good_hx(cls, kw, unbatched=True)
        cases += [(x, (h3, c2)), (x, (h2, c3)), (unbatched_x, (h2, c3))]
    for inp, hx in cases:
        assert_same_error(lambda: ref(inp, hx), lambda: fast(inp, hx))


@pytest.mark.parametrize("cls, kw", SEQ)
@pytest.mark.parametrize("shape", [(), (I,), (2, T, B, I)], ids=["0D", "1D", "4D"])
def test_input_of_wrong_rank(cls, kw, shape):
    ref, fast = _seq(cls, **kw)
    x = _state(*shape)
    assert_same_error(lambda: ref(x), lambda: fast(x))
    if len(shape) == 4:
        assert_same_error(lambda: ref(x, _good_hx(cls, kw)), lambda: fast(x, _good_hx(cls, kw)))


@pytest.mark.parametrize("cls, kw", SEQ)
def test_input_that_is_not_a_tensor(cls, kw):
    ref, fast = _seq(cls, **kw)
    x = [_x(kw)]
    assert_same_error(lambda: ref(x), lambda: fast(x))


@pytest.mark.parametrize("cls, kw", SEQ)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_input_dtype_differs_from_weights(cls, kw, dtype):
    ref, fast = _seq(cls, **kw)  # float64 weights
    x = _x(kw, dtype=dtype)
    assert_same_error(lambda: ref(x), lambda: fast(x))
    assert_same_error(lambda: ref(x[0]), lambda: fast(x[0]))
    hx = _good_hx(cls, kw)
    assert_same_error(lambda: ref(x, hx), lambda: fast(x, hx))


@pytest.mark.parametrize("cls, kw", SEQ)
def test_hidden_dtype_differs_from_input(cls, kw):
    """Accident in torch (a GEMM/oneDNN message): same type, a fastrnn message naming both."""
    ref, fast = _seq(cls, **kw)
    x = _x(kw)
    hx = _good_hx(cls, kw)
    hx = (hx[0].float(), hx[1]) if cls == "LSTM" else hx.float()
    expected = torch_error(lambda: ref(x, hx))
    with pytest.raises(type(expected), match=r"fastrnn: hidden state dtype \(torch.float32\) does not "
                       r"match input dtype \(torch.float64\)"):
        fast(x, hx)


# --------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------

CELLS = [
    pytest.param("RNNCell", dict(), id="RNNCell"),
    pytest.param("RNNCell", dict(nonlinearity="relu"), id="RNNCell-relu"),
    pytest.param("LSTMCell", dict(), id="LSTMCell"),
    pytest.param("GRUCell", dict(), id="GRUCell"),
]


def _cell_hx(cls, *shape):
    return (_state(*shape), _state(*shape)) if cls == "LSTMCell" else _state(*shape)


@pytest.mark.parametrize("cls, kw", CELLS)
def test_cell_wrong_sizes(cls, kw):
    ref, fast = _seq(cls, **kw)
    cases = [
        (_state(B, I + 1), None),                 # input size
        (_state(I + 1), None),                    # input size, unbatched
        (_state(B, I), _cell_hx(cls, B, H + 1)),  # hidden size
        (_state(B, I), _cell_hx(cls, B + 1, H)),  # batch mismatch
        (_state(I), _cell_hx(cls, H + 1)),        # hidden size, unbatched
        (_state(B, I + 1), _cell_hx(cls, B + 1, H + 1)),
    ]
    if cls == "LSTMCell":
        cases += [(_state(B, I), (_state(B, H), _state(B, H + 1))), (_state(B, I), (_state(B, H), _state(B + 1, H)))]
    for x, hx in cases:
        assert_same_error(lambda: ref(x, hx), lambda: fast(x, hx))


@pytest.mark.parametrize("cls, kw", CELLS)
def test_cell_wrong_ranks(cls, kw):
    ref, fast = _seq(cls, **kw)
    cases = [
        (_state(1, B, I), None),                  # 3-D input
        (_state(), None),                         # 0-D input
        (_state(B, I), _cell_hx(cls, 1, B, H)),   # 3-D hx
        (_state(I), _cell_hx(cls, B, H)),         # unbatched input, batched hx
        (_state(B, I), _cell_hx(cls, H)),         # batched input, unbatched hx
    ]
    if cls == "LSTMCell":
        cases += [(_state(B, I), (_state(B, H), _state(1, B, H))), (_state(B, I), (_state(B, H), _state(H)))]
    for x, hx in cases:
        assert_same_error(lambda: ref(x, hx), lambda: fast(x, hx))


@pytest.mark.parametrize("cls, kw", CELLS)
@pytest.mark.parametrize("which", ["input", "hidden"])
def test_cell_dtype_mismatch(cls, kw, which):
    """Accident in torch (the GEMM's message): same type, a message naming both dtypes."""
    ref, fast = _seq(cls, **kw)
    x, hx = _state(B, I), _cell_hx(cls, B, H)
    if which == "input":
        x = x.float()
    else:
        hx = (hx[0].float(), hx[1]) if cls == "LSTMCell" else hx.float()
    expected = torch_error(lambda: ref(x, hx))
    with pytest.raises(type(expected)) as info:
        fast(x, hx)
    assert "float32" in str(info.value) and "float64" in str(info.value), str(info.value)


# --------------------------------------------------------------------------------------
# Backend names
# --------------------------------------------------------------------------------------

ALL_CLASSES = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_bogus_backend_argument(cls):
    with pytest.raises(ValueError, match="backend must be one of .*'bogus'"):
        getattr(fastrnn, cls)(I, H, backend="bogus")


def _run(cls, module):
    x = _state(B, I) if cls.endswith("Cell") else _state(T, B, I)
    return module(x)


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_bogus_backend_environment_variable(cls, monkeypatch):
    monkeypatch.setenv("FASTRNN_BACKEND", "bogus")
    module = getattr(fastrnn, cls)(I, H, dtype=F64)  # constructing is fine: read at call time
    with pytest.raises(ValueError, match="FASTRNN_BACKEND must be one of .*'bogus'"):
        _run(cls, module)


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_explicit_backend_overrides_bogus_environment_variable(cls, monkeypatch):
    monkeypatch.setenv("FASTRNN_BACKEND", "bogus")
    ref, fast = make_pair(cls, I, H, backend="reference", dtype=F64)
    x = _state(B, I) if cls.endswith("Cell") else _state(T, B, I)
    out_f, out_r = fast(x), ref(x)
    torch.testing.assert_close(out_f, out_r)


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_bogus_backend_set_after_construction(cls):
    module = getattr(fastrnn, cls)(I, H, dtype=F64)
    module.backend = "bogus"
    with pytest.raises(ValueError, match="'bogus'"):
        _run(cls, module)


def test_bogus_backend_in_functional_api():
    x, h0 = _state(T * B, I), _state(B, H)
    weights = (_state(H, I), _state(H, H), None, None, None)
    with pytest.raises(ValueError, match="'bogus'"):
        recurrent_layer("RNN_TANH", x, Schedule.uniform(T, B), h0, None, weights, backend="bogus")
    with pytest.raises(ValueError, match="'bogus'"):
        recurrent_stack("RNN_TANH", x, Schedule.uniform(T, B), h0[None], None, [weights], backend="bogus")
