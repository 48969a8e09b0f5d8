"""Shared test setup.

The Triton interpreter must be switched on before any kernel module is imported (the
``@triton.jit`` decorator reads it), so it is set here, at the very top, for every test
run on this CPU-only project. ``FASTRNN_FULL=1`` runs the full grids marked ``slow``.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

FULL = os.environ.get("FASTRNN_FULL", "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    if FULL or config.getoption("-m"):
        return
    skip = pytest.mark.skip(reason="full grid: set FASTRNN_FULL=1 (or -m slow) to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _ieee_fp32(monkeypatch):
    """fp32 runs in IEEE precision unless a test turns TF32 on: the kernels round TF32 dot
    operands to nearest (in the interpreter too), which the fp32 tolerances of the parity
    tests do not allow; the TF32 tests set ``allow_tf32`` themselves."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
