"""The ``native`` backend (torch's own CPU kernels) called directly through its layer contract.

Each case builds a one-layer *bidirectional* ``torch.nn`` module (so both the forward and
the reverse direction are covered) and a ``fastrnn`` twin on the ``reference`` backend
with the same state_dict, then runs :func:`fastrnn.backends.native.layer_forward` (and
:func:`~fastrnn.backends.native.layer_backward`) once per direction and compares:

- outputs: the direction's half of ``output``, ``h_n[d]``, ``c_n[d]``;
- gradients (LSTM training, the only case the backend has a backward for): for upstream
  gradients ``dy, dh_n, dc_n`` given to direction ``d`` only (zero for the other one), the
  gradients of ``x``, ``h0[d]``, ``c0[d]`` and the direction's four weights, against
  ``torch.autograd.grad`` through ``torch.nn`` and through the reference backend.

Tolerances: ``helpers.TOL``. The inference kernels are torch.nn's own (results are
bit-identical in practice); the reference backend differs by float32 rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn.backends import native
from fastrnn.kinds import CellKind
from fastrnn.schedule import Schedule
from helpers import TOL

F32, F64 = torch.float32, torch.float64
VARIANTS = {  # name -> (torch.nn class, constructor kwargs, CellKind)
    "LSTM": ("LSTM", {}, CellKind.LSTM),
    "LSTM_PROJ": ("LSTM", {"proj_size": 3}, CellKind.LSTM),
    "GRU": ("GRU", {}, CellKind.GRU),
    "RNN_TANH": ("RNN", {"nonlinearity": "tanh"}, CellKind.RNN_TANH),
    "RNN_RELU": ("RNN", {"nonlinearity": "relu"}, CellKind.RNN_RELU),
}
INPUT, HIDDEN = 5, 7
LENGTHS = [3, 6, 1, 4]  # unsorted, includes 1 and the full length T = 6


def _pair(variant, bias, dtype):
    cls, kwargs, kind = VARIANTS[variant]
    ref = getattr(torch.nn, cls)(INPUT, HIDDEN, bias=bias, bidirectional=True, dtype=dtype, **kwargs)
    fast = getattr(fastrnn, cls)(INPUT, HIDDEN, bias=bias, bidirectional=True, dtype=dtype, backend="reference",
                                 **kwargs)
    fast.load_state_dict(ref.state_dict())
    return ref, fast, kind


def _weights(module, d):
    sfx = "_l0_reverse" if d else "_l0"
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
    return tuple(getattr(module, n + sfx, None) for n in names)


def _inputs(kind, form, dtype, proj, steps=6, batch=4):
    out = proj or HIDDEN
    x = torch.randn(steps, batch, INPUT, dtype=dtype)
    h0 = torch.randn(2, batch, out, dtype=dtype)
    c0 = torch.randn(2, batch, HIDDEN, dtype=dtype) if kind is CellKind.LSTM else None
    if form == "padded":
        packed = None
        flat, schedule = x.reshape(steps * batch, INPUT), Schedule.uniform(steps, batch)
    else:
        packed = pack_padded_sequence(x, torch.tensor(LENGTHS[:batch]), enforce_sorted=False)
        flat, schedule = packed.data, Schedule.from_batch_sizes(packed.batch_sizes)
    return x, packed, h0, c0, flat, schedule


def _module_run(module, kind, x, packed, h0, c0):
    """``(output rows (N, 2P), h_n, c_n | None)`` of a module, states in packed order."""
    hx = (h0, c0) if kind is CellKind.LSTM else h0
    if packed is not None:
        # the module takes hx in the caller's order and permutes it; give it that order
        unsort = packed.unsorted_indices
        hx = (h0[:, unsort], c0[:, unsort]) if kind is CellKind.LSTM else h0[:, unsort]
        out, state = module(packed, hx)
        out = out.data
        sort = packed.sorted_indices
        state = (state[0][:, sort], state[1][:, sort]) if kind is CellKind.LSTM else state[:, sort]
    else:
        out, state = module(x, hx)
        out = out.reshape(-1, out.shape[-1])
    if kind is CellKind.LSTM:
        return out, state[0], state[1]
    return out, state, None


def _close(actual, expected, dtype, what):
    assert actual is not None, f"{what}: missing"
    torch.testing.assert_close(actual, expected, **TOL[dtype], msg=lambda m: f"{what}: {m}")


# --------------------------------------------------------------------------------------
# Inference: every kind, padded and packed, both directions
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("form", ["padded", "packed"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_inference_matches_torch_nn_and_reference(variant, form, bias, dtype):
    ref, fast, kind = _pair(variant, bias, dtype)
    proj = ref.proj_size if kind is CellKind.LSTM else 0
    x, packed, h0, c0, flat, schedule = _inputs(kind, form, dtype, proj)
    with torch.no_grad():
        expected = [_module_run(m, kind, x, packed, h0, c0) for m in (ref, fast)]
        out_size = proj or HIDDEN
        for d in (0, 1):
            y, h_n, c_n, saved = native.layer_forward(
                kind, flat, schedule, h0[d], None if c0 is None else c0[d], *_weights(ref, d), d == 1, False
            )
            assert saved == ()
            for (out, hn, cn), who in zip(expected, ("torch.nn", "reference")):
                _close(y, out[:, d * out_size : (d + 1) * out_size], dtype, f"{who} y[{d}]")
                _close(h_n, hn[d], dtype, f"{who} h_n[{d}]")
                if kind is CellKind.LSTM:
                    _close(c_n, cn[d], dtype, f"{who} c_n[{d}]")
                else:
                    assert c_n is None


def test_inference_under_grad_mode_builds_no_graph():
    """Called with grad mode on and weights that require grad (as a custom op's kernel may
    be), the inference path returns plain tensors: no autograd graph inside the layer."""
    ref, _, kind = _pair("GRU", True, F32)
    _, _, h0, _, flat, schedule = _inputs(kind, "padded", F32, 0)
    y, h_n, _, _ = native.layer_forward(kind, flat, schedule, h0[0], None, *_weights(ref, 0), False, False)
    assert not y.requires_grad and y.grad_fn is None and not h_n.requires_grad


# --------------------------------------------------------------------------------------
# Training: oneDNN's LSTM forward + backward
# --------------------------------------------------------------------------------------


def _module_grads(module, kind, x, h0, c0, d, dy, dh_n, dc_n):
    """Gradients of (x, h0[d], c0[d], direction d's weights) for upstream grads on direction d."""
    x, h0, c0 = (t.detach().clone().requires_grad_() for t in (x, h0, c0))
    out, (hn, cn) = module(x, (h0, c0))
    hidden = hn.shape[-1]
    loss = (out[..., d * hidden : (d + 1) * hidden] * dy).sum() + (hn[d] * dh_n).sum() + (cn[d] * dc_n).sum()
    weights = [w for w in _weights(module, d)[:4] if w is not None]
    grads = torch.autograd.grad(loss, [x, h0, c0, *weights])
    outputs = (out[..., d * hidden : (d + 1) * hidden].detach(), hn[d].detach(), cn[d].detach())
    return outputs, (grads[0], grads[1][d], grads[2][d], *grads[3:])


@pytest.mark.parametrize("steps, batch", [(1, 1), (7, 4), (10, 1)], ids=["T1-B1", "T7-B4", "T10-B1"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_lstm_training_matches_torch_nn_and_reference(bias, steps, batch):
    ref, fast, kind = _pair("LSTM", bias, F32)
    x, _, h0, c0, flat, schedule = _inputs(kind, "padded", F32, 0, steps, batch)
    for d in (0, 1):
        gen = torch.Generator().manual_seed(d)
        dy = torch.randn(steps, batch, HIDDEN, generator=gen)
        dh_n, dc_n = torch.randn(batch, HIDDEN, generator=gen), torch.randn(batch, HIDDEN, generator=gen)
        y, h_n, c_n, saved = native.layer_forward(kind, flat, schedule, h0[d], c0[d], *_weights(ref, d), d == 1, True)
        assert all(t.grad_fn is None for t in (y, h_n, c_n, *saved))
        needs = (True, True, True, True, True, bias, bias, False)
        grads = native.layer_backward(
            kind, schedule, d == 1, flat, h0[d], c0[d], *_weights(ref, d), y, saved,
            dy.reshape(-1, HIDDEN), dh_n, dc_n, needs,
        )
        assert grads[7] is None and (bias or grads[5] is grads[6] is None)
        names = ["dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"][: 7 if bias else 5]
        for module, who in ((ref, "torch.nn"), (fast, "reference")):
            (out, hn, cn), expected = _module_grads(module, kind, x, h0, c0, d, dy, dh_n, dc_n)
            _close(y, out.reshape(-1, HIDDEN), F32, f"{who} y[{d}]")
            _close(h_n, hn, F32, f"{who} h_n[{d}]")
            _close(c_n, cn, F32, f"{who} c_n[{d}]")
            got = [grads[0].view(steps, batch, INPUT), *grads[1:7]]
            for name, g, e in zip(names, got, expected):
                _close(g, e, F32, f"{who} {name}[{d}]")


def test_lstm_backward_needs_and_odd_strides():
    """Gradients not asked for are None; non-contiguous operands (an expanded ``dy`` as
    ``sum().backward()`` produces, a transposed input) give the same gradients."""
    ref, _, kind = _pair("LSTM", True, F32)
    steps, batch = 5, 3
    x_bf = torch.randn(batch, steps, INPUT)  # batch-first storage: x is a transposed view
    flat = x_bf.transpose(0, 1).reshape(steps * batch, INPUT)
    flat_t = x_bf.transpose(0, 1)  # non-contiguous (T, B, I) view
    h0, c0 = torch.randn(batch, HIDDEN), torch.randn(batch, HIDDEN)
    schedule = Schedule.uniform(steps, batch)
    w = _weights(ref, 0)
    y, h_n, c_n, saved = native.layer_forward(kind, flat, schedule, h0, c0, *w, False, True)
    dy = torch.ones(1, 1).expand(steps * batch, HIDDEN)  # stride 0
    zeros = torch.zeros(batch, HIDDEN)
    all_needs = (True,) * 7 + (False,)
    full = native.layer_backward(kind, schedule, False, flat, h0, c0, *w, y, saved, dy, zeros, zeros, all_needs)
    some = native.layer_backward(
        kind, schedule, False, flat_t.reshape(steps * batch, INPUT), h0, c0, *w, y, saved,
        dy.contiguous(), zeros, zeros, (False, True, False, True, False, False, True, False),
    )
    assert [g is None for g in some] == [True, False, True, False, True, True, False, True]
    for k in (1, 3, 6):
        torch.testing.assert_close(some[k], full[k], rtol=0, atol=0)
    # and the gradient of sum(y) through torch.nn
    xr = flat.view(steps, batch, INPUT).clone().requires_grad_()
    with torch.no_grad():
        for name in ("weight_ih_l0_reverse", "weight_hh_l0_reverse"):
            getattr(ref, name).zero_()
    out, _ = ref(xr, (torch.stack([h0, h0]), torch.stack([c0, c0])))
    (dx_ref,) = torch.autograd.grad(out[..., :HIDDEN].sum(), [xr])
    _close(full[0].view(steps, batch, INPUT), dx_ref, F32, "dx")


# --------------------------------------------------------------------------------------
# What the backend refuses, and its fake layout
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant, form, dtype",
    [("GRU", "padded", F32), ("RNN_TANH", "padded", F32), ("LSTM", "packed", F32), ("LSTM", "padded", F64),
     ("LSTM_PROJ", "padded", F32)],
)
def test_training_outside_onednn_is_refused_before_work(variant, form, dtype):
    ref, _, kind = _pair(variant, True, dtype)
    proj = ref.proj_size if kind is CellKind.LSTM else 0
    _, _, h0, c0, flat, schedule = _inputs(kind, form, dtype, proj)
    with pytest.raises(RuntimeError, match="backend 'native' computes gradients only for float32 LSTM"):
        native.layer_forward(kind, flat, schedule, h0[0], None if c0 is None else c0[0], *_weights(ref, 0), False,
                             True)


def test_saved_layout():
    """Without ``save``: nothing. With it: the workspace oneDNN allocated for these sizes in
    this process (and ``c_n``), exactly the shapes and dtypes ``layer_forward`` returns;
    sizes never run (or symbolic ones, under tracing) raise before any work."""
    for kind in CellKind:
        assert native.saved_layout(kind, 60, 4, 5, 7, 0, F32, False) == []
    with pytest.raises(RuntimeError, match="only known when the kernel runs"):
        native.saved_layout(CellKind.LSTM, 13 * 3, 3, 11, 9, 0, F32, True)
    ref, _, kind = _pair("LSTM", True, F32)
    _, _, h0, c0, flat, schedule = _inputs(kind, "padded", F32, 0, 13, 3)
    *_, saved = native.layer_forward(kind, flat, schedule, h0[0], c0[0], *_weights(ref, 0), False, True)
    layout = native.saved_layout(CellKind.LSTM, 13 * 3, 3, INPUT, HIDDEN, 0, F32, True)
    assert layout == [(tuple(t.shape), t.dtype) for t in saved]
    assert saved[0].dtype == torch.uint8 and saved[0].numel() > 0


# --------------------------------------------------------------------------------------
# The rule `auto` follows on the CPU
# --------------------------------------------------------------------------------------

# (kind, dtype, packed, proj, needs_grad, tracing) -> backend, written from the rule in the
# README (not from the code): inference -> native; float32 padded LSTM without projection
# training outside tracing -> native; every other training call -> reference.
RULE_TABLE = [
    (CellKind.LSTM, F32, False, False, False, False, "native"),
    (CellKind.LSTM, F32, False, False, True, False, "native"),
    (CellKind.LSTM, F32, False, False, True, True, "reference"),
    (CellKind.LSTM, F32, False, False, False, True, "native"),
    (CellKind.LSTM, F32, True, False, True, False, "reference"),
    (CellKind.LSTM, F32, True, False, False, False, "native"),
    (CellKind.LSTM, F32, False, True, True, False, "reference"),
    (CellKind.LSTM, F32, False, True, False, False, "native"),
    (CellKind.LSTM, F64, False, False, True, False, "reference"),
    (CellKind.LSTM, F64, False, False, False, False, "native"),
    (CellKind.LSTM, torch.bfloat16, False, False, True, False, "reference"),
    (CellKind.GRU, F32, False, False, True, False, "reference"),
    (CellKind.GRU, F32, False, False, False, False, "native"),
    (CellKind.GRU, F32, True, False, False, True, "native"),
    (CellKind.RNN_TANH, F32, False, False, True, False, "reference"),
    (CellKind.RNN_TANH, F64, True, False, False, False, "native"),
    (CellKind.RNN_RELU, F32, False, False, True, True, "reference"),
    (CellKind.RNN_RELU, F32, False, False, False, False, "native"),
]


@pytest.mark.parametrize("kind, dtype, packed, proj, needs_grad, tracing, expected", RULE_TABLE)
def test_auto_rule(kind, dtype, packed, proj, needs_grad, tracing, expected):
    got = native.auto_cpu_backend(kind, dtype, packed=packed, proj=proj, needs_grad=needs_grad, tracing=tracing)
    assert got == expected


def test_auto_rule_without_onednn():
    """With oneDNN switched off, torch.nn runs its C++ loop for LSTM: so does inference
    here (through _VF), and LSTM training goes to the reference engine."""
    with torch.backends.mkldnn.flags(enabled=False):
        assert native.auto_cpu_backend(CellKind.LSTM, F32, packed=False, proj=False, needs_grad=True,
                                       tracing=False) == "reference"
        ref, _, kind = _pair("LSTM", True, F32)
        x, packed, h0, c0, flat, schedule = _inputs(kind, "padded", F32, 0)
        with torch.no_grad():
            out, hn, cn = _module_run(ref, kind, x, packed, h0, c0)
            y, h_n, c_n, _ = native.layer_forward(kind, flat, schedule, h0[1], c0[1], *_weights(ref, 1), True, False)
        _close(y, out[:, HIDDEN:], F32, "y")
        _close(c_n, cn[1], F32, "c_n")
