"""Faults only a GPU would show, checked on the CPU: the launch device and a refused launch.

- Device guard: Triton launches on the *current* CUDA device, whatever device the tensors
  are on; every launch of the triton backend must run inside a guard of its tensors'
  device. The launch counter records the guarded device of every launch, so a launch made
  outside the guard shows up as ``None``.
- A cooperative launch the device refuses (its grid cannot be co-resident: MPS SM limits,
  other contexts; or too much shared memory) reruns on the step tier with one warning, like
  a barrier timeout; it raises when ``FASTRNN_TIER=cooperative`` forced the tier; any other
  error propagates.
"""

import contextlib
import warnings

import pytest
import torch
from test_triton_backend import _problem, _run

from fastrnn.backends.triton import cooperative as coop_launcher
from fastrnn.backends.triton import policy, selfcheck
from fastrnn.kernels import cooperative
from fastrnn.kernels.launches import count_launches, device_guard, launch_device

TOL64 = dict(rtol=1e-10, atol=1e-10)  # same math on both sides, another summation order


@pytest.mark.parametrize("tier, kind, hidden", [("step", "LSTM", 5), ("resident", "GRU", 5), ("step", "RNN_TANH", 17)])
def test_every_launch_runs_under_the_guard_of_its_tensors_device(monkeypatch, tier, kind, hidden):
    monkeypatch.setenv("FASTRNN_TIER", tier)
    monkeypatch.setenv("FASTRNN_SELF_CHECK", "1")  # the first-use check launches kernels too
    monkeypatch.setattr(selfcheck, "checked", {})
    problem = _problem(kind, 3, 4, hidden, True, True, layers=1)
    with count_launches() as n:
        _run(kind, "triton", torch.float64, problem, True)
    assert n.forward > 0 and n.backward > 0
    assert dict(n.devices) == {torch.device("cpu"): n.forward + n.backward}


def test_the_guard_makes_a_cuda_device_current_and_restores_the_previous_one(monkeypatch):
    entered = []

    @contextlib.contextmanager
    def recording_device(device):
        entered.append(device)
        yield

    monkeypatch.setattr(torch.cuda, "device", recording_device)
    assert launch_device() is None
    with device_guard(torch.device("cuda", 1)):
        assert launch_device() == torch.device("cuda", 1)
        with device_guard(torch.device("cpu")):
            assert launch_device() == torch.device("cpu")
        assert launch_device() == torch.device("cuda", 1)
    assert launch_device() is None
    assert entered == [torch.device("cuda", 1)]


def _refusing(message):
    def launch(*args, **kwargs):
        raise RuntimeError(message)

    return launch


@pytest.fixture
def auto_cooperative(monkeypatch):
    """auto picks the cooperative tier (it never does on CPU tensors by itself)."""
    monkeypatch.delenv("FASTRNN_TIER", raising=False)
    monkeypatch.setattr(selfcheck, "checked", {})
    monkeypatch.setattr(policy, "chosen_tier", lambda *args: ("cooperative", False))


def test_a_refused_cooperative_launch_reruns_on_the_step_tier_with_one_warning(monkeypatch, auto_cooperative):
    monkeypatch.setattr(cooperative, "launch_forward",
                        _refusing("Triton Error [CUDA]: too many blocks in cooperative launch"))
    problem = _problem("LSTM", 3, 4, 16, False, True, layers=1)
    expected = _run("LSTM", "reference", torch.float64, problem, False)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        with count_launches() as first:
            got = _run("LSTM", "triton", torch.float64, problem, False)
        with count_launches() as second:
            again = _run("LSTM", "triton", torch.float64, problem, False)
    refused = [w for w in records if "refused" in str(w.message)]
    assert len(refused) == 1, [str(w.message) for w in records]
    assert "run on the step tier" in str(refused[0].message)
    assert first.tiers["cooperative", "forward"] == 0 and first.tiers["step", "forward"] == 4
    assert set(second.tiers) == {("step", "forward"), ("step", "backward")}
    for result in (got, again):
        for a, e in zip(result[0] + result[1], expected[0] + expected[1]):
            torch.testing.assert_close(a, e, **TOL64)


def test_a_refused_launch_raises_when_the_tier_was_forced(monkeypatch):
    monkeypatch.setenv("FASTRNN_TIER", "cooperative")
    monkeypatch.setattr(coop_launcher, "sm_count", lambda device: 132)
    monkeypatch.setattr(cooperative, "launch_forward",
                        _refusing("Triton Error [CUDA]: too many blocks in cooperative launch"))
    problem = _problem("GRU", 3, 4, 16, False, False, layers=1)
    with pytest.raises(coop_launcher.LaunchRefused, match="too many blocks"):
        _run("GRU", "triton", torch.float64, problem, False)


def test_an_error_that_is_no_refusal_propagates(monkeypatch, auto_cooperative):
    monkeypatch.setattr(cooperative, "launch_forward", _refusing("an unrelated failure"))
    problem = _problem("GRU", 3, 4, 16, False, False, layers=1)
    with pytest.raises(RuntimeError, match="an unrelated failure"):
        _run("GRU", "triton", torch.float64, problem, False)
    assert selfcheck.checked == {}
