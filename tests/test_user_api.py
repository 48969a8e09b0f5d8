"""What a user sees around the modules: ``help()``, constructor signatures, quantization,
and the autocast precision the README states.

Expected values come from torch at test time (its docstrings, its constructor overloads,
what its quantization and autocast do), never from fastrnn's own tables.
"""

from __future__ import annotations

import inspect
import pydoc
import re
import typing
import warnings

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn._quantization import QuantizationWarning

LAYERS = ("RNN", "LSTM", "GRU")
CELLS = ("RNNCell", "LSTMCell", "GRUCell")
ALL = LAYERS + CELLS


def _help(cls) -> str:
    return pydoc.render_doc(cls, renderer=pydoc.plaintext)


def _torch_doc_lines(name: str) -> list[str]:
    """The lines of torch.nn.<name>'s docstring that help(fastrnn.<name>) must show."""
    lines = inspect.cleandoc(getattr(nn, name).__doc__).splitlines()
    keep, skip_options = [], False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(".. include::"):
            skip_options = True  # a Sphinx include and its option lines name files of torch's docs build
            continue
        if skip_options and re.match(r":\S+:", stripped):
            continue
        skip_options = False
        if stripped and not stripped.startswith(f">>> rnn = nn.{name}("):
            keep.append(stripped)
    return keep


@pytest.mark.parametrize("name", ALL)
def test_help_shows_torch_documentation_and_fastrnn_section(name):
    text = _help(getattr(fastrnn, name))
    shown = {line.strip(" |") for line in text.splitlines()}
    expected = _torch_doc_lines(name)
    assert len(expected) > 20
    missing = [line for line in expected if line not in shown]
    assert not missing, missing[:5]
    assert len(getattr(fastrnn, name).__doc__) > len(inspect.cleandoc(getattr(nn, name).__doc__)) * 0.9
    # fastrnn's own part: the backend keyword and what differs
    assert "Extra keyword argument:" in shown and "backend: ``\"auto\"``, ``\"reference\"``, ``\"triton\"``" in text
    assert f"Differences from ``torch.nn.{name}``:" in shown
    # torch's example runs with the fastrnn class (tests/test_docs.py runs it)
    assert f">>> rnn = fastrnn.{name}(" in text and f">>> rnn = nn.{name}(" not in text


def _torch_signature(name: str) -> inspect.Signature:
    if name in LAYERS:  # torch documents these through typing overloads; the first is the real one
        init = typing.get_overloads(getattr(nn, name).__init__)[0]
    else:
        init = getattr(nn, name).__init__
    sig = inspect.signature(init)
    return sig.replace(parameters=list(sig.parameters.values())[1:])  # drop self


@pytest.mark.parametrize("name", ALL)
def test_constructor_signature_is_torchs_plus_backend(name):
    """torch's parameters, in torch's order with torch's defaults, then fastrnn's own, all
    keyword-only and off by default."""
    ours = inspect.signature(getattr(fastrnn, name))
    theirs = _torch_signature(name)
    params = list(ours.parameters.values())
    count = len(theirs.parameters)
    assert [(p.name, p.default, p.kind) for p in params[:count]] == [
        (p.name, p.default, p.kind) for p in theirs.parameters.values()
    ]
    extra = {"backend": None}
    if name in ("RNN", "LSTM", "GRU"):
        extra.update(zoneout=0.0, recurrent_dropout=0.0, weight_drop=0.0)
    if name in ("LSTM", "LSTMCell"):
        extra["peephole"] = False
    assert {p.name: p.default for p in params[count:]} == extra
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[count:])
    assert f"{name}(input_size: 'int', hidden_size: 'int'" in _help(getattr(fastrnn, name))


POSITIONAL = {
    "RNN": (4, 5, 2, "relu", False, True, 0.25, True),
    "LSTM": (4, 5, 2, False, True, 0.25, True, 3),
    "GRU": (4, 5, 2, False, True, 0.25, True),
    "RNNCell": (4, 5, False, "relu"),
    "LSTMCell": (4, 5, False),
    "GRUCell": (4, 5, False),
}
ATTRIBUTES = ("mode", "nonlinearity", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
              "bidirectional", "proj_size")


@pytest.mark.parametrize("name", ALL)
def test_constructor_arguments_mean_what_they_mean_for_torch(name):
    args = POSITIONAL[name]
    ours = getattr(fastrnn, name)(*args, dtype=torch.float64, backend="reference")
    theirs = getattr(nn, name)(*args, dtype=torch.float64)
    for attr in ATTRIBUTES:
        assert getattr(ours, attr, None) == getattr(theirs, attr, None), attr
    assert {k: (v.shape, v.dtype) for k, v in ours.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in theirs.state_dict().items()
    }
    assert ours.backend == "reference"
    assert repr(ours) == repr(theirs)[:-1] + ", backend='reference')"


def test_proj_size_is_refused_by_rnn_and_gru_as_torch_does():
    # torch.nn raises ValueError from inside its (*args, **kwargs) constructor whenever the
    # keyword is given; fastrnn raises the same error, its signature unchanged.
    message = "^proj_size argument is only supported for LSTM, not RNN or GRU$"
    for name in ("RNN", "GRU"):
        for proj_size in (2, 0):
            with pytest.raises(ValueError, match=message):
                getattr(nn, name)(4, 5, proj_size=proj_size)
            with pytest.raises(ValueError, match=message):
                getattr(fastrnn, name)(4, 5, proj_size=proj_size)
        assert "proj_size" not in inspect.signature(getattr(fastrnn, name)).parameters


# --------------------------------------------------------------------------------------
# Quantization: torch.ao.quantization leaves fastrnn modules in float, and says so
# --------------------------------------------------------------------------------------

class _Model(nn.Module):
    def __init__(self, recurrent):
        super().__init__()
        self.recurrent = recurrent
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        out = self.recurrent(x)
        out = out[0] if isinstance(out, tuple) else out
        return self.head(out)


def _pair(name):
    ref = getattr(nn, name)(3, 6)
    fast = getattr(fastrnn, name)(3, 6)
    fast.load_state_dict(ref.state_dict())
    return _Model(ref).eval(), _Model(fast).eval()


@pytest.mark.parametrize("name", ALL)
def test_quantize_dynamic_warns_and_leaves_fastrnn_in_float(name):
    torch_model, fast_model = _pair(name)
    x = torch.randn(4, 2, 3) if name in LAYERS else torch.randn(2, 3)
    spec = {nn.Linear, getattr(nn, name)}
    torch_quantized = torch.ao.quantization.quantize_dynamic(torch_model, spec, dtype=torch.qint8)
    # torch converts the Linear head and its own module type, except nn.RNN, which it has no
    # dynamic quantized module for: the warning's hint says which
    converts = type(torch_quantized.recurrent) is not getattr(nn, name)
    assert converts == (name != "RNN")
    hint = f"load its state_dict into a torch.nn.{name}" if converts else f"has no quantized torch.nn.{name} either"
    with pytest.warns(QuantizationWarning, match=rf"leaves fastrnn\.{name} in float.*{hint}"):
        quantized = torch.ao.quantization.quantize_dynamic(fast_model, spec, dtype=torch.qint8)
    assert type(quantized.head) is type(torch_quantized.head) is not nn.Linear
    # ... and leaves fastrnn's unchanged (the warning's claim), working, with no stray attribute
    assert type(quantized.recurrent) is getattr(fastrnn, name)
    assert not hasattr(quantized.recurrent, "qconfig")
    assert quantized.recurrent.state_dict().keys() == fast_model.recurrent.state_dict().keys()
    for key, value in quantized.recurrent.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, fast_model.recurrent.state_dict()[key]), key
    out = quantized.recurrent(x)
    expected = fast_model.recurrent(x)
    for a, e in zip(out if isinstance(out, tuple) else (out,), expected if isinstance(expected, tuple) else (expected,)):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_no_warning_outside_quantization():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ALL:
            module = getattr(fastrnn, name)(3, 4)
            module(torch.randn(2, 3, 3) if name in LAYERS else torch.randn(2, 3))
            assert not hasattr(module, "qconfig")


# --------------------------------------------------------------------------------------
# Autocast on the CPU: the precision the README states
# --------------------------------------------------------------------------------------

def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", ["GRU", "GRUCell", "LSTMCell"])
def test_cpu_autocast_fastrnn_computes_in_fp32_where_torch_mixes(name):
    torch.manual_seed(0)
    ref = getattr(nn, name)(8, 16)
    fast = getattr(fastrnn, name)(8, 16)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 8) if name in LAYERS else torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch_amp, fast_amp = _first(ref(x)), _first(fast(x))
    torch_fp32, fast_fp32 = _first(ref(x)), _first(fast(x))
    assert torch_amp.dtype == fast_amp.dtype == torch.float32  # the same output dtype ...
    torch.testing.assert_close(fast_amp, fast_fp32, rtol=0, atol=0)  # ... fastrnn computes in fp32
    # torch.nn's autocast result is off its fp32 result by bfloat16 rounding (8-bit mantissa: ~4e-3
    # relative), far above fp32 rounding (~1e-7): torch.nn runs its matrix products in bf16 here.
    assert (torch_amp - torch_fp32).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["RNN", "RNNCell"])
def test_cpu_autocast_rnn_runs_in_bf16_like_torch(name):
    torch.manual_seed(0)
    fast = getattr(fastrnn, name)(8, 16)
    x = torch.randn(5, 3, 8) if name in LAYERS else torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = _first(fast(x))
    bf16 = getattr(fastrnn, name)(8, 16, dtype=torch.bfloat16)
    bf16.load_state_dict(fast.state_dict())
    assert amp.dtype == torch.bfloat16
    torch.testing.assert_close(amp, _first(bf16(x.bfloat16())), rtol=0, atol=0)
