"""Autocast: fastrnn modules give torch.nn's output dtypes and no dtype-mismatch error.

On the CPU torch.nn's autocast behaviour is per implementation (see
``fastrnn.functional._autocast_dtype``); each case is compared with what torch.nn does
in the same test run, not with a hard-coded table. torch.nn.LSTM fails inside oneDNN
under CPU autocast, so for it fastrnn is checked against an fp32 run at bf16 tolerance.
"""

import pytest
import torch

from helpers import TOL, make_pair

CASES = [
    pytest.param("RNN", (3, 2, 5), id="RNN"),
    pytest.param("GRU", (3, 2, 5), id="GRU"),
    pytest.param("RNNCell", (2, 5), id="RNNCell"),
    pytest.param("GRUCell", (2, 5), id="GRUCell"),
    pytest.param("LSTMCell", (2, 5), id="LSTMCell"),
]


def _tensors(result):
    if torch.is_tensor(result):
        return [result]
    return [t for r in result for t in _tensors(r)]


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=["in-fp32", "in-bf16"])
@pytest.mark.parametrize("cls, shape", CASES)
def test_cpu_autocast_matches_torch_dtypes(cls, shape, input_dtype):
    ref, fast = make_pair(cls, 5, 7)
    x = torch.randn(shape).to(input_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _tensors(ref(x))
        actual = _tensors(fast(x))
    assert [t.dtype for t in actual] == [t.dtype for t in expected]
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.float(), e.float(), **TOL[torch.bfloat16])


def test_cpu_autocast_lstm_runs_in_bf16_and_trains_fp32_params():
    ref, fast = make_pair("LSTM", 5, 7, num_layers=2)
    x = torch.randn(4, 3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = fast(x)
    assert (out.dtype, h.dtype, c.dtype) == (torch.bfloat16,) * 3
    expected, (eh, ec) = ref(x)  # torch.nn.LSTM itself fails under CPU autocast: fp32 oracle
    for a, e in ((out, expected), (h, eh), (c, ec)):
        torch.testing.assert_close(a.float(), e, **TOL[torch.bfloat16])
    out.float().sum().backward()
    for name, p in fast.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA autocast needs a CUDA device")
@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
def test_cuda_autocast_matches_torch_dtypes(cls):
    ref, fast = make_pair(cls, 5, 7, device="cuda")
    x = torch.randn(3, 2, 5, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        expected = _tensors(ref(x))
        actual = _tensors(fast(x))
    assert [t.dtype for t in actual] == [t.dtype for t in expected]
