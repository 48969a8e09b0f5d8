"""The first-use check of the LayerNorm cells' resident kernels (``FASTRNN_SELF_CHECK=1``
switches it on in Triton's interpreter): they run a small problem against the step tier's
LayerNorm path once per key; a disagreement warns once and the layer runs the step path
from then on (an error under ``FASTRNN_TIER=resident``), as the other cells' persistent
tiers do (tests/test_tiers.py)."""

from __future__ import annotations

import pytest
import torch

import fastrnn
from fastrnn.backends.triton import norm_resident, selfcheck
from fastrnn.kernels.launches import count_launches


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(selfcheck, "checked", {})
    monkeypatch.setenv("FASTRNN_SELF_CHECK", "1")
    monkeypatch.delenv("FASTRNN_TIER", raising=False)


def _layers(seed=0):
    torch.manual_seed(seed)
    fast = fastrnn.LayerNormGRU(3, 5, dtype=torch.float64, backend="triton")
    ref = fastrnn.LayerNormGRU(3, 5, dtype=torch.float64, backend="reference")
    ref.load_state_dict(fast.state_dict())
    with torch.no_grad():
        for p in (*fast.parameters(), *ref.parameters()):
            p.add_(0.1)  # gains off 1, biases off 0
    return fast, ref


def _off_by_a_little(monkeypatch):
    real = norm_resident.forward

    def wrong(*args, **kwargs):
        out = real(*args, **kwargs)
        return out._replace(y=out.y + 1e-3)

    monkeypatch.setattr(norm_resident, "forward", wrong)


def test_agreeing_kernels_run_resident():
    fast, ref = _layers()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    fast(x)  # the first call runs the check
    assert list(selfcheck.checked.values()) == [True]
    with count_launches() as n:
        got, _ = fast(x)
    assert dict(n.tiers) == {("resident", "forward"): 1}
    torch.testing.assert_close(got, ref(x)[0], rtol=1e-10, atol=1e-10)


def test_a_disagreement_warns_once_and_runs_the_step_path(monkeypatch):
    _off_by_a_little(monkeypatch)
    fast, ref = _layers()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="resident kernel tier disagrees with the step tier"):
        fast(x)
    assert list(selfcheck.checked.values()) == [False]
    with count_launches() as n:
        got, _ = fast(x)  # no second warning (pytest's filter turns one into an error below)
    assert dict(n.tiers) == {("step", "forward"): 4}
    torch.testing.assert_close(got, ref(x)[0], rtol=1e-10, atol=1e-10)


def test_a_disagreement_under_a_forced_resident_tier_raises(monkeypatch):
    _off_by_a_little(monkeypatch)
    monkeypatch.setenv("FASTRNN_TIER", "resident")
    fast, _ = _layers()
    with pytest.raises(RuntimeError, match="FASTRNN_TIER=resident: the first-use check of the resident tier"):
        fast(torch.randn(4, 2, 3, dtype=torch.float64))
