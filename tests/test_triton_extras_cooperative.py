"""Reset flags and per-unit cell parameters on the cooperative tier (kernels/cooperative.py),
in Triton's interpreter with every program in its own thread (tests/threaded_interpreter.py).

``FASTRNN_TIER=cooperative`` forces the tier; the launch configurations are the small ones
of tests/test_cooperative.py (``small_configs``: ``H = 16`` over 4 programs of 4 units, 8
"SMs", so a launch has 2 groups of batch rows), the register variant of 8 rows or, with no
register variant offered, the tiled kernel (8-row tiles). Each case asserts that every
launch of the call was a cooperative one of the expected variant (no fallback to the step
tier, which reads the same inputs).

Two oracles, for every output (``out``, ``h_n``, ``c_n``) and every gradient (input, ``h0``,
``c0``, every parameter, the peephole weights included):

- the reference backend on the same module (``backend='reference'``), with the same resets;
- for resets, a segment-wise run: every episode of every sequence run on its own by the
  reference backend without resets, from a zero state (the first episode of the forward
  direction from ``h0`` unless it is reset at its first step; the last episode of the
  reverse direction from ``h0``), every layer and direction.

Tolerances: fp64 1e-10 (same math, another summation order), fp32 1e-5 against a float64
run on the same inputs (small sizes: T <= 6, B <= 3, H = 16).
"""

from __future__ import annotations

import pytest
import torch
from test_cooperative import INTERPRETER_TIMEOUT_US, SMS, ran, small_configs
from threaded_interpreter import threaded_programs
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from fastrnn.backends.triton import buffers
from fastrnn.backends.triton import cooperative as coop_launcher
from fastrnn.backends.triton import step as step_launcher
from fastrnn.kernels import cooperative
from fastrnn.kernels.launches import count_launches

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
DTYPES = {"fp64": torch.float64, "fp32": torch.float32}
INPUT, HIDDEN = 3, 16
MODULES = {
    "LSTM": lambda **kw: fastrnn.LSTM(INPUT, HIDDEN, **kw),
    "GRU": lambda **kw: fastrnn.GRU(INPUT, HIDDEN, **kw),
    "RNN_TANH": lambda **kw: fastrnn.RNN(INPUT, HIDDEN, nonlinearity="tanh", **kw),
    "PEEPHOLE": lambda **kw: fastrnn.LSTM(INPUT, HIDDEN, peephole=True, **kw),
}


@pytest.fixture
def coop(monkeypatch):
    """Force the cooperative tier with small configurations, programs threaded; yields a
    setter: ``registers`` True offers the register variants (8 and 16 rows), False only
    the tiled kernel."""
    monkeypatch.setenv("FASTRNN_TIER", "cooperative")
    monkeypatch.setattr(buffers, "FILL_NAN", True)
    monkeypatch.setattr(cooperative, "BARRIER_TIMEOUT_US", INTERPRETER_TIMEOUT_US)
    monkeypatch.setattr(coop_launcher, "sm_count", lambda device: SMS)
    # The backend admits a call with resets or a cell with per-unit parameters only when the
    # step tier (where any call can fall back) reads them too. Here the cooperative tier is
    # forced and every test asserts that only cooperative launches ran; a fallback to the
    # step tier fails anyway. (A no-op once the step tier lists them itself.)
    monkeypatch.setattr(step_launcher, "EXTRAS", ("params", "resets"), raising=False)

    def use(slab: bool, registers: bool):
        rows = (8, 16) if registers else ()
        monkeypatch.setattr(cooperative, "cooperative_configs",
                            lambda dtype, hidden, tf32=False, *device: small_configs(hidden, slab, registers=rows))

    with threaded_programs():
        yield use


# --------------------------------------------------------------------------------------
# Problems and runs
# --------------------------------------------------------------------------------------


def _module(kind, layers, bidirectional, seed=0):
    """A float64 module with random weights; the peephole weights non-zero (they start at 0)."""
    torch.manual_seed(seed)
    module = MODULES[kind](num_layers=layers, bidirectional=bidirectional, dtype=torch.float64, backend="reference")
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("weight_c"):
                p.copy_(torch.rand(p.shape, dtype=p.dtype) - 0.5)
    return module


def _problem(kind, steps, batch, layers, bidirectional, packed, with_resets, seed=0):
    """``(x (T, B, I), lengths or None, resets (T, B) or None, h0, c0 or None)``, float64.
    Resets: random (about a third of the steps), plus one at step 0 (the forward direction
    starts from zero there), one in the middle of a sequence and one at the last step of
    the longest (the reverse direction's first step)."""
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(steps, batch, INPUT, generator=gen, dtype=torch.float64)
    lengths = None
    if packed:  # unsorted lengths, the longest equal to T
        lengths = [steps if b == 1 else 1 + (3 * b + 2) % steps for b in range(batch)]
    resets = None
    if with_resets:
        resets = torch.rand(steps, batch, generator=gen) < 0.35
        resets[0, 0] = True  # a reset at the first step (the forward direction ignores h0 there)
        resets[steps // 2, batch - 1] = True  # one inside a sequence
        resets[steps - 1, 1 % batch] = True  # one at the last step (the reverse direction's first)
    states = layers * (2 if bidirectional else 1)
    h0 = torch.randn(states, batch, HIDDEN, generator=gen, dtype=torch.float64)
    c0 = torch.randn(states, batch, HIDDEN, generator=gen, dtype=torch.float64) if kind in ("LSTM", "PEEPHOLE") else None
    return x, lengths, resets, h0, c0


def _loss_weights(shapes, seed=99):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]


def _mask(steps, batch, lengths):
    """(T, B, 1) float64: 1 at the valid steps of each sequence."""
    if lengths is None:
        return torch.ones(steps, batch, 1, dtype=torch.float64)
    return (torch.arange(steps)[:, None] < torch.tensor(lengths)[None, :]).double().unsqueeze(2)


def _gradients(module, leaves, outs, lengths):
    """``[out, h_n, (c_n)]`` detached, then the gradient of a fixed random linear loss with
    respect to ``leaves`` (input, h0, (c0)) and every parameter of ``module``, named."""
    steps, batch = outs[0].shape[:2]
    weights = _loss_weights([o.shape for o in outs])
    weights[0] = weights[0] * _mask(steps, batch, lengths)  # padding of a packed output is no output
    loss = sum((o.double() * w).sum() for o, w in zip(outs, weights))
    params = dict(module.named_parameters())
    grads = torch.autograd.grad(loss, list(leaves.values()) + list(params.values()))
    names = [f"grad {n}" for n in list(leaves) + list(params)]
    return dict(zip(["out", "h_n", "c_n"], [o.detach().double() for o in outs])), dict(zip(names, grads))


def _leaves(x, h0, c0, dtype):
    leaves = dict(input=x.to(dtype).requires_grad_(), h0=h0.to(dtype).requires_grad_())
    if c0 is not None:
        leaves["c0"] = c0.to(dtype).requires_grad_()
    return leaves


def _run_module(module, backend, dtype, problem):
    """Outputs and gradients of ``module`` (a copy in ``dtype`` on ``backend``) with resets."""
    x, lengths, resets, h0, c0 = problem
    module = _copy(module, backend, dtype)
    leaves = _leaves(x, h0, c0, dtype)
    hx = (leaves["h0"], leaves["c0"]) if c0 is not None else leaves["h0"]
    if lengths is None:
        out, hidden = module(leaves["input"], hx, resets=resets)
    else:
        packed = pack_padded_sequence(leaves["input"], torch.tensor(lengths), enforce_sorted=False)
        flags = None
        if resets is not None:
            flags = pack_padded_sequence(resets, torch.tensor(lengths), enforce_sorted=False)
        out, hidden = module(packed, hx, resets=flags)
        out = pad_packed_sequence(out, total_length=x.shape[0])[0]
    outs = [out] + (list(hidden) if c0 is not None else [hidden])
    return _gradients(module, leaves, outs, lengths)


def _copy(module, backend, dtype):
    clone = _module_like(module)
    clone.load_state_dict(module.state_dict())
    clone.backend = backend
    return clone.to(dtype)


def _module_like(module):
    kind = {fastrnn.GRU: "GRU", fastrnn.RNN: "RNN_TANH"}.get(type(module), "LSTM")
    if getattr(module, "peephole", False):
        kind = "PEEPHOLE"
    return MODULES[kind](num_layers=module.num_layers, bidirectional=module.bidirectional, dtype=torch.float64,
                         backend="reference")


def _episodes(resets, length):
    """``[(start, stop), ...]`` of one sequence of ``length`` steps: a new episode at each
    flagged step (a flag at step 0 starts the first one)."""
    cuts = [t for t in range(1, length) if bool(resets[t])]
    bounds = [0] + cuts + [length]
    return list(zip(bounds[:-1], bounds[1:]))


def _run_segments(module, dtype, problem):
    """The segment-wise oracle: every episode of every sequence on its own, on the reference
    backend without resets, from a zero state except the forward direction's first episode
    (``h0``, unless flagged at step 0) and the reverse direction's last (``h0``)."""
    x, lengths, resets, h0, c0 = problem
    module = _copy(module, "reference", dtype)
    leaves = _leaves(x, h0, c0, dtype)
    steps, batch = x.shape[:2]
    directions = 2 if module.bidirectional else 1
    is_forward = torch.tensor([d == 0 for _ in range(module.num_layers) for d in range(directions)])
    out = torch.zeros(steps, batch, directions * HIDDEN, dtype=dtype)
    finals = [[None] * batch for _ in range(1 if c0 is None else 2)]
    for b in range(batch):
        length = steps if lengths is None else lengths[b]
        episodes = _episodes(resets[:, b], length)
        columns = []
        for k, (start, stop) in enumerate(episodes):
            keep = torch.zeros(is_forward.shape, dtype=dtype)
            if k == 0 and not bool(resets[0, b]):
                keep = keep + is_forward.to(dtype)
            if k == len(episodes) - 1:
                keep = keep + (~is_forward).to(dtype)
            keep = keep[:, None, None]
            hx = leaves["h0"][:, b : b + 1] * keep
            if c0 is not None:
                hx = (hx, leaves["c0"][:, b : b + 1] * keep)
            seg_out, seg_hidden = module(leaves["input"][start:stop, b : b + 1], hx)
            columns.append(seg_out)
            seg_hidden = seg_hidden if c0 is not None else (seg_hidden,)
            if k == 0:
                first = seg_hidden
            if k == len(episodes) - 1:
                last = seg_hidden
        pad = torch.zeros(steps - length, 1, directions * HIDDEN, dtype=dtype)
        out = out.index_copy(1, torch.tensor([b]), torch.cat(columns + [pad]))
        for i in range(len(finals)):
            # forward direction: the state after the last episode; reverse: after the first
            finals[i][b] = torch.where(is_forward[:, None, None], last[i], first[i])
    outs = [out] + [torch.cat(f, dim=1) for f in finals]
    return _gradients(module, leaves, outs, lengths)


def _assert_close(got, want, dtype, what):
    assert got.keys() == want.keys(), what
    for name in want:
        assert got[name] is not None and want[name] is not None, f"{what}: no {name}"
        torch.testing.assert_close(got[name].double(), want[name].double(), **TOL[dtype],
                                   msg=lambda m, name=name: f"{what}, {name}: {m}")


def _check(coop, kind, dtype, *, steps, batch, layers, bidirectional, packed, with_resets, slab, registers):
    coop(slab, registers)
    dtype = DTYPES[dtype]
    module = _module(kind, layers, bidirectional)
    problem = _problem(kind, steps, batch, layers, bidirectional, packed, with_resets)
    with count_launches() as n:
        got_out, got_grad = _run_module(module, "triton", dtype, problem)
    launches = layers * (2 if bidirectional else 1)
    assert n.forward == n.backward == launches
    assert set(n.tiers) == {("cooperative", "forward"), ("cooperative", "backward")}, dict(n.tiers)
    # B <= 8: the register variant of 8 rows, or the tiled kernel's 8-row tiles
    assert ran(n) == {("forward", registers, 8), ("backward", registers, 8)}
    # The oracles run in float64 on the same (dtype-rounded) inputs.
    x, lengths, resets, h0, c0 = problem
    rounded = (x.to(dtype).double(), lengths, resets, h0.to(dtype).double(),
               None if c0 is None else c0.to(dtype).double())
    module64 = _copy(module, "reference", dtype).double()
    want_out, want_grad = _run_module(module64, "reference", torch.float64, rounded)
    _assert_close(got_out, want_out, dtype, "against the reference backend")
    _assert_close(got_grad, want_grad, dtype, "against the reference backend")
    if with_resets:
        seg_out, seg_grad = _run_segments(module64, torch.float64, rounded)
        _assert_close(got_out, seg_out, dtype, "against the segment-wise run")
        _assert_close(got_grad, seg_grad, dtype, "against the segment-wise run")
    return got_grad


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------

CASES = [
    # kind, dtype, steps, batch, layers, bidirectional, packed, resets, slab, registers
    ("LSTM", "fp64", 6, 3, 1, False, False, True, True, True),
    ("LSTM", "fp32", 5, 3, 2, True, True, True, False, False),
    ("LSTM", "fp64", 6, 3, 1, True, True, True, True, False),
    ("GRU", "fp64", 6, 3, 1, True, True, True, False, True),
    ("GRU", "fp32", 6, 3, 2, False, False, True, True, False),
    ("GRU", "fp64", 5, 2, 1, False, True, True, True, True),
    ("RNN_TANH", "fp64", 6, 3, 2, True, False, True, False, True),
    ("RNN_TANH", "fp32", 6, 3, 1, True, True, True, True, False),
    ("PEEPHOLE", "fp64", 6, 3, 1, True, True, True, True, True),
    ("PEEPHOLE", "fp32", 5, 3, 2, False, False, True, False, False),
    ("PEEPHOLE", "fp64", 6, 3, 1, False, True, False, False, True),
    ("PEEPHOLE", "fp64", 5, 3, 2, True, False, False, True, False),
    ("PEEPHOLE", "fp32", 6, 2, 1, True, True, False, True, True),
]


def _case_id(case):
    kind, dtype, steps, batch, layers, bi, packed, resets, slab, registers = case
    return (f"{kind}-{dtype}-T{steps}-B{batch}-L{layers}" + ("-bi" if bi else "") + ("-packed" if packed else "-padded")
            + ("-resets" if resets else "") + ("-slab" if slab else "-stream")
            + ("-registers" if registers else "-tiled"))


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_extras_match_the_oracles(coop, case):
    kind, dtype, steps, batch, layers, bi, packed, resets, slab, registers = case
    grads = _check(coop, kind, dtype, steps=steps, batch=batch, layers=layers, bidirectional=bi, packed=packed,
                   with_resets=resets, slab=slab, registers=registers)
    if kind == "PEEPHOLE":
        # the peephole weights matter: their gradients are not all zero
        assert all(grads[n].abs().max() > 0 for n in grads if "weight_c" in n)
