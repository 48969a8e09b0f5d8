"""Kernel tier choice of the triton backend, in Triton's interpreter on CPU.

- ``tier_for`` (the choice a launch makes, read by the benchmarks): small H whose W_hh fits
  one SM runs resident, proj_size and large H run the step tier, never depending on T or B;
  the device's shared memory per block decides what fits (CPU = an sm_90 reference GPU).
- ``FASTRNN_TIER``: read at each call; forcing a tier that cannot run the case is a clear
  error raised before any kernel launch.
- The saved tuple has one layout whatever tier ran: the forward of either tier feeds the
  backward of the other.
- The first-use check (``FASTRNN_SELF_CHECK=1`` switches it on in the interpreter): a
  correct tier passes silently; a forced mismatch or failure gives exactly one warning and
  the step tier's results from then on; ``FASTRNN_SELF_CHECK=0`` skips it.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from fastrnn.backends import triton as triton_backend
from fastrnn.backends.triton import buffers, policy, selfcheck
from fastrnn.backends.triton import tier_for
from fastrnn.functional import Schedule, recurrent_layer
from fastrnn.kernels import fits, resident
from fastrnn.kernels.recurrent_step import count_launches

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
CPU = torch.device("cpu")
f16, f32, f64, bf16 = torch.float16, torch.float32, torch.float64, torch.bfloat16


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.setattr(buffers, "FILL_NAN", True)
    monkeypatch.setattr(selfcheck, "checked", {})
    monkeypatch.delenv("FASTRNN_TIER", raising=False)
    monkeypatch.delenv("FASTRNN_SELF_CHECK", raising=False)


def _layer(kind, hidden=4, steps=5, batch=3, packed=True, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    schedule = Schedule.from_batch_sizes([batch] * 2 + [2] * (steps - 3) + [1]) if packed else Schedule.uniform(
        steps, batch)
    g = GATES[kind]

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    x = rnd(schedule.rows, 2)
    h0 = rnd(batch, hidden)
    c0 = rnd(batch, hidden) if kind == "LSTM" else None
    weights = (rnd(g * hidden, 2, scale=0.5), rnd(g * hidden, hidden, scale=0.5), rnd(g * hidden), rnd(g * hidden))
    return schedule, x, h0, c0, weights


def _run(kind, problem, reverse=False, backend="triton", backward_tier=None, monkeypatch=None):
    """Outputs and gradients of every leaf; ``backward_tier`` switches FASTRNN_TIER
    between the forward and the backward."""
    schedule, x, h0, c0, weights = problem
    leaves = [x, h0] + ([c0] if c0 is not None else []) + list(weights)
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    x, h0 = leaves[0], leaves[1]
    c0 = leaves[2] if kind == "LSTM" else None
    w = tuple(leaves[3:] if kind == "LSTM" else leaves[2:]) + (None,)
    outs = [o for o in recurrent_layer(kind, x, schedule, h0, c0, w, reverse=reverse, backend=backend)
            if o is not None]
    if backward_tier is not None:
        monkeypatch.setenv("FASTRNN_TIER", backward_tier)
    gen = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum() for o in outs)
    return [o.detach() for o in outs] + list(torch.autograd.grad(loss, leaves))


# --------------------------------------------------------------------------------------
# The choice
# --------------------------------------------------------------------------------------

CHOICES = [
    # small H: W_hh fits one SM -> one launch per pass
    ("LSTM", 1, 0, f32, "resident"),
    ("LSTM", 64, 0, f16, "resident"),
    ("LSTM", 64, 0, bf16, "resident"),
    ("GRU", 17, 0, f64, "resident"),
    # fp64 LSTM / GRU beyond 32: the backward's W_hh does not fit in fp64
    ("LSTM", 33, 0, f64, "step"),
    ("GRU", 64, 0, f32, "resident"),
    ("RNN_TANH", 17, 0, f32, "resident"),
    ("RNN_RELU", 3, 0, f16, "resident"),
    # proj_size: the step tier (documented fallback)
    ("LSTM", 64, 32, f16, "step"),
    # fp32 LSTM at H=128: W_hh alone is 256 KB, more than any SM's shared memory
    ("LSTM", 128, 0, f32, "step"),
    # large H: the step tier (the cooperative tier of issue 10 will take these)
    ("LSTM", 768, 0, bf16, "step"),
    ("GRU", 1024, 0, f32, "step"),
    ("RNN_TANH", 4096, 0, f16, "step"),
]


@pytest.mark.parametrize("kind, hidden, proj, dtype, expected", CHOICES,
                         ids=[f"{c[0]}-H{c[1]}-P{c[2]}-{str(c[3])[6:]}" for c in CHOICES])
def test_auto_choice(kind, hidden, proj, dtype, expected):
    assert tier_for(kind, hidden, proj, dtype, CPU) == expected


def test_choice_reads_the_fits_table_and_the_device(monkeypatch):
    """Every table entry runs resident exactly where the device has the shared memory it
    needs (fits.py records it per arch) and fits.RESIDENT_ARCH_MISSES does not rule it out
    on the device's arch; elsewhere it runs the step tier."""
    assert fits.RESIDENT, "the resident table is empty"
    for (kind, dtype_name, block_h), fit in fits.RESIDENT.items():
        dtype = getattr(torch, dtype_name)
        for arch, limit in ((80, fits.SHARED_LIMIT[80]), (90, fits.SHARED_LIMIT[90]), (86, 101376), (75, 65536)):
            monkeypatch.setattr(policy, "device_limits", lambda device, a=arch, s=limit: (a, s))
            runs = fits.shared_needed(fit, arch) <= limit and not fits.resident_arch_miss(kind, dtype, block_h, arch)
            expected = "resident" if runs else "step"
            assert tier_for(kind, block_h, 0, dtype, CPU) == expected, (kind, dtype_name, block_h, arch)
    monkeypatch.setattr(policy, "device_limits", lambda device: (90, 0))
    assert tier_for("LSTM", 8, 0, f32, CPU) == "step"


def test_interpreter_is_treated_as_sm90():
    assert policy.device_limits(CPU) == (90, fits.SHARED_LIMIT[90])


@pytest.mark.parametrize("kind", list(GATES))
def test_choice_never_depends_on_steps_or_batch(kind):
    """Same layer shape, T in (1, 9), B in (1, 17): the same tier every time."""
    seen = set()
    for steps, batch in ((1, 1), (9, 1), (1, 17), (9, 17)):
        schedule, x, h0, c0, weights = _layer(kind, steps=max(steps, 3), batch=batch, packed=False)
        schedule = Schedule.uniform(steps, batch)
        with torch.no_grad(), count_launches() as n:
            recurrent_layer(kind, x[: schedule.rows], schedule, h0, c0, weights + (None,), backend="triton")
        seen |= {tier for tier, _ in n.tiers}
    assert seen == {"resident"}


def test_resident_block_h_is_a_power_of_two_at_least_h():
    for hidden in range(1, 300):
        block = fits.resident_block_h(hidden)
        assert block >= max(hidden, fits.MIN_BLOCK_H) and block & (block - 1) == 0
        assert block == fits.MIN_BLOCK_H or block < 2 * hidden


# --------------------------------------------------------------------------------------
# FASTRNN_TIER
# --------------------------------------------------------------------------------------


def test_forced_step_and_resident(monkeypatch):
    monkeypatch.setenv("FASTRNN_TIER", "step")
    assert tier_for("GRU", 8, 0, f32, CPU) == "step"
    monkeypatch.setenv("FASTRNN_TIER", "resident")  # read at each call
    assert tier_for("GRU", 8, 0, f32, CPU) == "resident"


@pytest.mark.parametrize("hidden, proj, message", [
    (8, 4, "proj_size"),
    (1024, 0, "no resident configuration"),
])
def test_forcing_resident_where_it_cannot_run_is_an_error_before_any_work(monkeypatch, hidden, proj, message):
    monkeypatch.setenv("FASTRNN_TIER", "resident")
    with pytest.raises(RuntimeError, match=message):
        tier_for("LSTM", hidden, proj, f32, CPU)
    x = torch.randn(6, 2)
    weights = (torch.randn(4 * hidden, 2), torch.randn(4 * hidden, proj or hidden), None, None,
               torch.randn(proj, hidden) if proj else None)
    h0, c0 = torch.zeros(2, proj or hidden), torch.zeros(2, hidden)
    with count_launches() as n, pytest.raises(RuntimeError, match="FASTRNN_TIER=resident cannot run"):
        recurrent_layer("LSTM", x, Schedule.uniform(3, 2), h0, c0, weights, backend="triton")
    assert (n.forward, n.backward) == (0, 0)


def test_forcing_resident_over_the_device_shared_memory_is_an_error(monkeypatch):
    monkeypatch.setenv("FASTRNN_TIER", "resident")
    monkeypatch.setattr(policy, "device_limits", lambda device: (75, 1024))
    with pytest.raises(RuntimeError, match="shared memory"):
        tier_for("RNN_TANH", 8, 0, f32, CPU)


def test_unknown_tier_name(monkeypatch):
    monkeypatch.setenv("FASTRNN_TIER", "fastest")
    with pytest.raises(ValueError, match="FASTRNN_TIER must be one of"):
        tier_for("LSTM", 8, 0, f32, CPU)


def test_proj_size_runs_on_the_step_tier_under_auto():
    gen = torch.Generator().manual_seed(1)
    hidden, proj = 6, 3
    x = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    weights = (torch.randn(4 * hidden, 2, generator=gen, dtype=torch.float64), torch.randn(
        4 * hidden, proj, generator=gen, dtype=torch.float64), None, None,
               torch.randn(proj, hidden, generator=gen, dtype=torch.float64))
    h0, c0 = torch.zeros(2, proj, dtype=torch.float64), torch.zeros(2, hidden, dtype=torch.float64)
    with torch.no_grad(), count_launches() as n:
        out = recurrent_layer("LSTM", x, Schedule.uniform(4, 2), h0, c0, weights, backend="triton")
    assert dict(n.tiers) == {("step", "forward"): 4}
    ref = recurrent_layer("LSTM", x, Schedule.uniform(4, 2), h0, c0, weights, backend="reference")
    for a, e in zip(out, ref):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------
# One saved layout for every tier
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind", list(GATES))
def test_backward_of_either_tier_reads_the_saved_tuple_of_the_other(monkeypatch, kind, reverse):
    """Forward on one tier, backward on the other (FASTRNN_TIER switched in between):
    every output and gradient equals the reference backend's (fp64, packed)."""
    problem = _layer(kind, hidden=5, steps=5, batch=4)
    expected = _run(kind, problem, reverse, backend="reference")
    for first, second in (("resident", "step"), ("step", "resident")):
        monkeypatch.setenv("FASTRNN_TIER", first)
        with count_launches() as n:
            got = _run(kind, problem, reverse, backward_tier=second, monkeypatch=monkeypatch)
        assert n.tiers[first, "forward"] == (1 if first == "resident" else 5)
        assert n.tiers[second, "backward"] == (1 if second == "resident" else 5)
        assert len(got) == len(expected)
        for k, (a, e) in enumerate(zip(got, expected)):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=lambda m: f"{first}->{second} [{k}]: {m}")


@pytest.mark.parametrize("kind", list(GATES))
@pytest.mark.parametrize("dtype", [f32, f16], ids=["fp32", "fp16"])
def test_saved_tuple_has_one_layout(monkeypatch, kind, dtype):
    """Same tensors (count, shape, dtype) and values from both tiers' forward."""
    from fastrnn.kinds import CellKind

    schedule, x, h0, c0, weights = _layer(kind, hidden=6, dtype=dtype)
    ck = CellKind(kind)
    xg = (x.detach() @ weights[0].detach().t()).contiguous()
    b_hh = weights[3].detach() if kind == "GRU" else None
    saved = {}
    for tier in ("step", "resident"):
        monkeypatch.setenv("FASTRNN_TIER", tier)
        res = triton_backend.forward(ck, xg.clone(), weights[1].detach(), b_hh, None, h0.detach(),
                                     c0.detach() if c0 is not None else None, schedule, False, True)
        saved[tier] = res.saved
    step, res = saved["step"], saved["resident"]
    assert len(step) == len(res) == {"LSTM": 2, "GRU": 2}.get(kind, 0)
    for a, e in zip(res, step):
        assert (a.shape, a.dtype) == (e.shape, e.dtype)
        torch.testing.assert_close(a, e, rtol=2e-3, atol=2e-3)
    if kind == "LSTM":
        assert step[0].dtype == dtype and step[1].dtype == torch.float32  # gates I/O, c fp32
    if kind == "GRU":
        assert step[0].shape[1] == 3 * 6 and step[1].shape[1] == 6


# --------------------------------------------------------------------------------------
# First-use self-check
# --------------------------------------------------------------------------------------


def _disagreements(records):
    return [w for w in records if issubclass(w.category, RuntimeWarning) and "disagrees with the step tier" in str(
        w.message)]


def _corrupt_resident_forward(monkeypatch):
    """Make the resident forward wrong: its output y is off by one everywhere."""
    launch = resident.launch_forward

    def wrong(kind, tensors, ints, **kw):
        launch(kind, tensors, ints, **kw)
        tensors["y_ptr"].add_(1.0)

    monkeypatch.setattr(resident, "launch_forward", wrong)


def test_self_check_passes_silently_for_a_correct_tier(monkeypatch):
    monkeypatch.setenv("FASTRNN_SELF_CHECK", "1")
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        assert tier_for("GRU", 5, 0, f32, CPU) == "resident"
    assert not _disagreements(records)
    assert list(selfcheck.checked.values()) == [True]


def test_self_check_is_off_by_default_in_the_interpreter():
    problem = _layer("LSTM")
    with count_launches() as n:
        _run("LSTM", problem)
    assert dict(n.tiers) == {("resident", "forward"): 1, ("resident", "backward"): 1}
    assert selfcheck.checked == {}


def test_forced_mismatch_falls_back_with_exactly_one_warning(monkeypatch):
    problem = _layer("LSTM", hidden=5)
    monkeypatch.setenv("FASTRNN_TIER", "step")
    expected = _run("LSTM", problem)  # the step tier's own results
    monkeypatch.delenv("FASTRNN_TIER")
    monkeypatch.setenv("FASTRNN_SELF_CHECK", "1")
    _corrupt_resident_forward(monkeypatch)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        first = _run("LSTM", problem)
        with count_launches() as n:
            second = _run("LSTM", problem, reverse=False)
        tier = tier_for("LSTM", 5, 0, torch.float64, CPU)
    assert len(_disagreements(records)) == 1, [str(w.message) for w in records]
    assert "y differs" in str(_disagreements(records)[0].message)
    assert tier == "step"
    assert set(n.tiers) == {("step", "forward"), ("step", "backward")}
    for got in (first, second):
        assert len(got) == len(expected)
        for a, e in zip(got, expected):
            assert torch.equal(a, e)


def test_a_failing_tier_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setenv("FASTRNN_SELF_CHECK", "1")

    def broken(*args, **kwargs):
        raise RuntimeError("out of resources")

    monkeypatch.setattr(resident, "launch_backward", broken)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        assert tier_for("RNN_TANH", 7, 0, f32, CPU) == "step"
        assert tier_for("RNN_TANH", 7, 0, f32, CPU) == "step"
    found = _disagreements(records)
    assert len(found) == 1 and "out of resources" in str(found[0].message)


def test_self_check_off_runs_the_tier_unchecked(monkeypatch):
    """With FASTRNN_SELF_CHECK=0 nothing compares: a wrong kernel stays in use (which is
    what the check is there to catch)."""
    monkeypatch.setenv("FASTRNN_SELF_CHECK", "0")
    _corrupt_resident_forward(monkeypatch)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        assert tier_for("LSTM", 5, 0, f64, CPU) == "resident"
    assert not _disagreements(records) and selfcheck.checked == {}


def test_forced_tier_with_a_failed_check_is_an_error(monkeypatch):
    monkeypatch.setenv("FASTRNN_SELF_CHECK", "1")
    monkeypatch.setenv("FASTRNN_TIER", "resident")
    _corrupt_resident_forward(monkeypatch)
    with pytest.raises(RuntimeError, match="first-use check"):
        tier_for("LSTM", 5, 0, f64, CPU)


def test_self_check_setting_is_validated(monkeypatch):
    monkeypatch.setenv("FASTRNN_SELF_CHECK", "yes")
    with pytest.raises(ValueError, match="FASTRNN_SELF_CHECK"):
        tier_for("LSTM", 5, 0, f64, CPU)


def test_batches_past_32_bit_step_offsets_run_on_the_step_tier(monkeypatch):
    """The resident kernels' in-step offsets are 32-bit (B*G*H < 2^31); a larger batch runs
    the step tier (shown with the limit lowered to 2*4*4: B=3 passes it, B=2 does not)."""
    monkeypatch.setattr(policy, "RESIDENT_MAX_OFFSET", 2 * 4 * 4 + 1)
    for batch, tier in ((2, "resident"), (3, "step")):
        problem = _layer("LSTM", hidden=4, steps=5, batch=batch, packed=False)
        with count_launches() as n:
            got = _run("LSTM", problem)
        assert {t for t, _ in n.tiers} == {tier}
        for a, e in zip(got, _run("LSTM", problem, backend="reference")):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
