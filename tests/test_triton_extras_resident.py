"""Reset flags and a cell's per-unit parameters on the resident tier, in Triton's interpreter.

Every test forces the tier (``FASTRNN_TIER=resident``) and counts the launches: one forward
and one backward resident launch per layer-direction and nothing else, so a silent fall back
to another tier fails it. Buffers the backend allocates are filled with NaN (``FILL_NAN``).

- Resets (LSTM, GRU, RNN_TANH; padded and packed with unsorted lengths; one or two
  directions; one or two layers; with ``h0`` / ``c0``; fp64 and fp32; a reset at a
  sequence's first step, which cuts ``h0`` off): ``backend='triton'`` against the reference
  backend with the same resets, and against a segment-wise run, each episode of each
  sequence a sequence of its own on the reference backend without resets (from a zero
  state; the first episode going forward and the last one going backward start from
  ``h0``). Every output (out, h_n, c_n) and the gradient of every input and parameter.
- The peephole LSTM (non-zero ``weight_ci/cf/co``), with and without resets: the same
  checks, the peephole weights' gradients included.

The other tiers do not read resets or per-unit parameters in this branch, so the backend's
refusal (which asks the step tier, where every call can go) is lifted for these tests; the
launch counts show the calls ran on the resident tier.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from fastrnn.backends.triton import buffers, selfcheck
from fastrnn.kernels import fits
from fastrnn.kernels.launches import count_launches

MODULES = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN_TANH": fastrnn.RNN}
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
INPUT, HIDDEN, STEPS = 3, 16, 6
#: Lengths of the packed batch: unsorted, so the module sorts and unsorts it.
LENGTHS = [4, 6, 3]


@pytest.fixture(autouse=True)
def _resident(monkeypatch):
    monkeypatch.setattr(buffers, "FILL_NAN", True)
    monkeypatch.setattr(selfcheck, "checked", {})
    monkeypatch.setenv("FASTRNN_TIER", "resident")
    monkeypatch.delenv("FASTRNN_SELF_CHECK", raising=False)
    # fp64 runs only in the interpreter: the peephole cell's fp64 entry (left out of the table
    # because its backward spills on sm_90) is LSTM's here
    entry = ("LSTM_PEEPHOLE", "float64", 32)
    assert entry not in fits.RESIDENT, "the table has this entry now: drop it here"
    monkeypatch.setattr(fits, "RESIDENT", {**fits.RESIDENT, entry: fits.RESIDENT[("LSTM", "float64", 32)]})


def _resets(lengths, seed):
    """``(T, B)`` bool: a few episode starts inside each sequence, and one at a sequence's
    first step (its ``h0`` is cut off going forward)."""
    gen = torch.Generator().manual_seed(seed)
    resets = torch.rand(STEPS, len(lengths), generator=gen) < 0.3
    resets[0, 1] = True
    resets[2, 0] = True
    resets[3, 2] = True
    for b, n in enumerate(lengths):
        resets[n:, b] = False
    return resets


def _problem(kind, layers, bidir, dtype, packed, peephole=False, seed=0):
    """``(triton module, reference module, inputs)``, the modules with equal parameters."""
    gen = torch.Generator().manual_seed(seed)
    extra = dict(peephole=True) if peephole else {}
    mods = [MODULES[kind](INPUT, HIDDEN, num_layers=layers, bidirectional=bidir, backend=b, **extra)
            for b in ("triton", "reference")]
    with torch.no_grad():
        for name, p in mods[0].named_parameters():
            # non-zero peephole weights (the module starts them at zero)
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * (0.5 if "weight_c" in name else 0.3))
    mods = [m.to(dtype) for m in mods]
    mods[1].load_state_dict(mods[0].state_dict())
    lengths = LENGTHS if packed else [STEPS] * len(LENGTHS)
    batch, dirs = len(lengths), 2 if bidir else 1

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    x = rnd(STEPS, batch, INPUT)
    for b, n in enumerate(lengths):
        x[n:, b] = 0
    h0 = rnd(layers * dirs, batch, HIDDEN)
    c0 = rnd(layers * dirs, batch, HIDDEN) if kind == "LSTM" else None
    # the loss: fixed random weights of every output (zero on padding)
    w_out = rnd(STEPS, batch, dirs * HIDDEN)
    for b, n in enumerate(lengths):
        w_out[n:, b] = 0
    weights = (w_out, rnd(*h0.shape), rnd(*h0.shape))
    return mods, dict(x=x, h0=h0, c0=c0, lengths=lengths, packed=packed, weights=weights)


def _leaves(module, inputs):
    leaves = {k: inputs[k].detach().clone().requires_grad_() for k in ("x", "h0", "c0") if inputs[k] is not None}
    return leaves, dict(module.named_parameters())


def _results(outs, leaves, params, weights):
    """Outputs and the gradients of a loss made of all of them, by name."""
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    names = list(leaves) + list(params)
    grads = torch.autograd.grad(loss, list(leaves.values()) + list(params.values()))
    result = dict(zip(("out", "h_n", "c_n"), (o.detach() for o in outs)))
    result.update({f"grad {n}": g for n, g in zip(names, grads)})
    return result


def _run(module, inputs, resets):
    """The whole batch in one call (``resets`` None: without)."""
    leaves, params = _leaves(module, inputs)
    x, lengths = leaves["x"], inputs["lengths"]
    hx = (leaves["h0"], leaves["c0"]) if "c0" in leaves else leaves["h0"]
    if inputs["packed"]:
        seq = pack_padded_sequence(x, lengths, enforce_sorted=False)
        flags = None if resets is None else pack_padded_sequence(resets, lengths, enforce_sorted=False)
        out, state = module(seq, hx, resets=flags)
        out = pad_packed_sequence(out, total_length=STEPS)[0]
    else:
        out, state = module(x, hx, resets=resets)
    states = list(state) if isinstance(state, tuple) else [state]
    return _results([out] + states, leaves, params, inputs["weights"])


def _segmentwise(module, inputs, resets):
    """Each episode of each sequence run as a sequence of its own, without resets: from a
    zero state, except the first episode going forward (unless a reset starts it) and the last
    one going backward, which start from ``h0`` / ``c0``."""
    leaves, params = _leaves(module, inputs)
    x, lengths = leaves["x"], inputs["lengths"]
    dirs = 2 if module.bidirectional else 1
    has_c = "c0" in leaves
    outs, finals = [], []  # per sequence: its out (T, D*H), its final states [(L*D, H)] per state
    for b, n in enumerate(lengths):
        starts = [0] + [t for t in range(1, n) if resets[t, b]]
        ends = starts[1:] + [n]
        pieces, first_states, last_states = [], None, None
        for k, (s, e) in enumerate(zip(starts, ends)):
            from_h0 = [(d == 0 and k == 0 and not resets[0, b]) or (d == 1 and k == len(starts) - 1)
                       for _ in range(module.num_layers) for d in range(dirs)]

            def init(state):
                zero = torch.zeros_like(state[0, b])
                return torch.stack([state[i, b] if use else zero for i, use in enumerate(from_h0)])[:, None]

            hx = (init(leaves["h0"]), init(leaves["c0"])) if has_c else init(leaves["h0"])
            y, state = module(x[s:e, b : b + 1], hx)
            pieces.append(y[:, 0])
            state = [st[:, 0] for st in (state if has_c else (state,))]
            first_states = first_states or state
            last_states = state
        pad = x.new_zeros(STEPS - n, dirs * HIDDEN)
        outs.append(torch.cat(pieces + [pad]))
        # final state: going forward the last episode's, going backward the first one's
        finals.append([torch.stack([(last if i % dirs == 0 else first)[i] for i in range(len(last))])
                       for first, last in zip(first_states, last_states)])
    out = torch.stack(outs, 1)
    states = [torch.stack([f[j] for f in finals], 1) for j in range(len(finals[0]))]
    return _results([out] + states, leaves, params, inputs["weights"])


def _assert_close(got, expected, dtype, what):
    assert got.keys() == expected.keys(), (what, sorted(got), sorted(expected))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], **TOL[dtype], msg=lambda m: f"{what}, {name}: {m}")


def _on_resident(module, inputs, resets):
    """``_run`` on the triton backend, checked to be resident launches only."""
    with count_launches() as n:
        result = _run(module, inputs, resets)
    per_pass = module.num_layers * (2 if module.bidirectional else 1)
    assert dict(n.tiers) == {("resident", "forward"): per_pass, ("resident", "backward"): per_pass}, dict(n.tiers)
    return result


# (layout, bidirectional, layers)
CASES = [("padded", False, 2), ("packed", True, 1), ("padded", True, 2), ("packed", False, 1)]
DTYPES = {"fp64": torch.float64, "fp32": torch.float32}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout,bidir,layers", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("kind", MODULES)
def test_resets(kind, layout, bidir, layers, dtype):
    dtype = DTYPES[dtype]
    (tri, ref), inputs = _problem(kind, layers, bidir, dtype, packed=layout == "packed")
    resets = _resets(inputs["lengths"], seed=1)
    got = _on_resident(tri, inputs, resets)
    _assert_close(got, _run(ref, inputs, resets), dtype, "against the reference backend")
    _assert_close(got, _segmentwise(ref, inputs, resets), dtype, "against the episodes run one by one")
    # the flags did something: without them the outputs differ
    plain = _on_resident(tri, inputs, None)
    assert not torch.allclose(plain["out"], got["out"])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_resets", [False, True], ids=["plain", "resets"])
@pytest.mark.parametrize("layout,bidir,layers", [("padded", True, 2), ("packed", True, 1)], ids=lambda v: str(v))
def test_peephole(layout, bidir, layers, with_resets, dtype):
    dtype = DTYPES[dtype]
    (tri, ref), inputs = _problem("LSTM", layers, bidir, dtype, packed=layout == "packed", peephole=True)
    assert all(p.abs().min() > 0 for n, p in tri.named_parameters() if "weight_c" in n)
    resets = _resets(inputs["lengths"], seed=2) if with_resets else None
    got = _on_resident(tri, inputs, resets)
    assert any(name.startswith("grad weight_ci") for name in got)
    _assert_close(got, _run(ref, inputs, resets), dtype, "against the reference backend")
    if with_resets:
        _assert_close(got, _segmentwise(ref, inputs, resets), dtype, "against the episodes run one by one")
    # the peepholes did something: the plain LSTM with the same other weights differs
    plain = fastrnn.LSTM(INPUT, HIDDEN, num_layers=layers, bidirectional=bidir, backend="triton").to(dtype)
    plain.load_state_dict({k: v for k, v in tri.state_dict().items() if "weight_c" not in k})
    assert not torch.allclose(_on_resident(plain, inputs, resets)["out"], got["out"])
