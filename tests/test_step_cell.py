"""The step tier runs a cell it has never heard of: a user's definition, in Triton's interpreter.

The cell here is a two-gate minimal gated unit (``z = sigmoid(x0 + r0)``,
``n = tanh(x1 + r1)``, ``h = n + z * (h_prev - n)``): two gates (a count no built-in
cell has), saved gates, ``h_prev`` read forward and backward, and a direct path from
``h_prev`` to ``h`` outside the recurrent GEMM (``dh * z``). Its step-tier forward and
backward are compared with autograd through the cell's own torch functions, over uniform
and packed batches in both directions (a packed reverse pass starts sequences midway,
whose ``dh0`` rows the kernels finish).
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl  # noqa: F401 (the interpreter wants it in a jitted function's module)

from fastrnn.backends.triton import buffers
from fastrnn.backends.triton import step as step_launcher
from fastrnn.cells import base as cell_base
from fastrnn.cells import Cell
from fastrnn.functional import Schedule
from fastrnn.kernels import recurrent_step
from fastrnn.kernels.cells import sigmoid, tanh


def mgu_forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev):
    z, n = torch.sigmoid(x0 + r0), torch.tanh(x1 + r1)
    return n + z * (h_prev - n), None, z, n, None, None, None


def mgu_backward(dh, dc, z, n, s2, s3, e, c, c_prev, h, h_prev):
    dz = dh * (h_prev - n) * z * (1 - z)
    dn = dh * (1 - z) * (1 - n * n)
    return dz, dn, None, None, dz, dn, None, None, dh * z, None


@triton.jit
def mgu_forward_tl(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev):
    z = sigmoid(x0 + r0)
    n = tanh(x1 + r1)
    return n + z * (h_prev - n), c_prev, z, n, n, n, n


@triton.jit
def mgu_backward_tl(dh, dc, z, n, s2, s3, e, c, c_prev, h, h_prev):
    dz = dh * (h_prev - n) * z * (1.0 - z)
    dn = dh * (1.0 - z) * (1.0 - n * n)
    return dz, dn, dn, dn, dz, dn, dn, dn, dh * z, dc


@pytest.fixture
def mgu(monkeypatch):
    """The user's cell, defined in a registry of its own (other tests see only torch's cells)."""
    monkeypatch.setattr(cell_base, "_REGISTRY", dict(cell_base._REGISTRY))
    monkeypatch.setenv("FASTRNN_TIER", "step")
    monkeypatch.setattr(buffers, "FILL_NAN", True)
    return Cell("TEST_MGU", 2, mgu_forward, mgu_backward, mgu_forward_tl, mgu_backward_tl,
                forward_reads_h_prev=True, backward_reads_h_prev=True, direct_h_grad=True)


def _reference(cell, xg, w_hh, h0, schedule, reverse):
    """``(y, h_n)`` of the cell's torch functions, step by step (differentiable)."""
    hidden = w_hh.shape[1]
    state, ys = h0, {}
    zero = torch.zeros(1, dtype=xg.dtype)
    for t in schedule.order(reverse):
        off, bs = schedule.offsets[t], schedule.batch_sizes[t]
        h_prev = state[:bs]
        r = h_prev @ w_hh.t()
        x = xg[off : off + bs]
        h = cell.torch_forward(x[:, :hidden], x[:, hidden:], zero, zero, r[:, :hidden], r[:, hidden:], zero, zero,
                               h_prev, None)[0]
        ys[t] = h
        state = torch.cat([h, state[bs:]])
    return torch.cat([ys[t] for t in range(schedule.steps)]), state


SCHEDULES = {"uniform": Schedule.uniform(4, 3), "packed": Schedule.from_batch_sizes([5, 5, 3, 2, 2, 1])}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("schedule", list(SCHEDULES), ids=list(SCHEDULES))
@pytest.mark.parametrize("dtype, hidden", [(torch.float64, 5), (torch.float32, 33)], ids=["fp64-H5", "fp32-H33"])
def test_user_cell_on_the_step_tier(mgu, schedule, reverse, dtype, hidden):
    schedule = SCHEDULES[schedule]
    gen = torch.Generator().manual_seed(3)
    n_rows, batch = schedule.rows, schedule.batch
    xg = torch.randn(n_rows, 2 * hidden, generator=gen, dtype=torch.float64)
    w_hh = torch.randn(2 * hidden, hidden, generator=gen, dtype=torch.float64) / hidden ** 0.5
    h0 = torch.randn(batch, hidden, generator=gen, dtype=torch.float64)
    dy = torch.randn(n_rows, hidden, generator=gen, dtype=torch.float64)
    dh_n = torch.randn(batch, hidden, generator=gen, dtype=torch.float64)

    leaves = [t.clone().requires_grad_() for t in (xg, w_hh, h0)]
    y_ref, h_n_ref = _reference(mgu, *leaves, schedule, reverse)
    dxg_ref, _, dh0_ref = torch.autograd.grad((y_ref * dy).sum() + (h_n_ref * dh_n).sum(), leaves)

    xg_t, w_t, h0_t = (t.to(dtype) for t in (xg, w_hh, h0))
    with recurrent_step.count_launches() as launches:
        fwd = step_launcher.forward(mgu, xg_t, w_t, None, None, h0_t, None, schedule, reverse, True)
        bwd = step_launcher.backward(mgu, fwd.saved, w_t, None, None, h0_t, None, fwd.y, dy.to(dtype),
                                            dh_n.to(dtype), None, schedule, reverse)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(fwd.y.double(), y_ref.detach(), **tol)
    torch.testing.assert_close(fwd.h_n.double(), h_n_ref.detach(), **tol)
    torch.testing.assert_close(bwd.dxg.double(), dxg_ref, **tol)
    torch.testing.assert_close(bwd.dh0.double(), dh0_ref, **tol)
    assert bwd.dhg is bwd.dxg  # b_hh folded: the recurrent gradient is the input one
    assert launches.tiers == {("step", "forward"): schedule.steps, ("step", "backward"): schedule.steps}


def test_user_cell_gets_report_rows(mgu):
    """A cell defined before the report is listed with torch's cells, as forward with and
    without SAVE and one backward per dtype-config, each with and without H_ALIGNED."""
    rows = [s for s in recurrent_step.specialisations() if s.kind == "TEST_MGU"]
    assert len(rows) == 3 * 2 * 4 * 2  # two configurations per kernel
    assert all(s.constexprs["CELL_FORWARD"] is mgu_forward_tl for s in rows)
    assert {s.constexprs["GATES"] for s in rows} == {2}
