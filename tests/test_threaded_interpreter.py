"""The threaded-interpreter helper (tests/threaded_interpreter.py) and the grid barrier of
the cooperative tier (kernels/cooperative.py) on small kernels written for these tests."""

from __future__ import annotations

import time

import pytest
import torch
import triton
import triton.language as tl
from threaded_interpreter import threaded_programs
from triton.runtime import interpreter

from fastrnn.kernels.cooperative import grid_barrier


@triton.jit
def _program_ids_kernel(out_ptr):
    pid = tl.program_id(0)
    tl.store(out_ptr + pid, pid * 10 + tl.num_programs(0))


@triton.jit(do_not_specialize=["T", "timeout_us"])
def _ring_kernel(buf_ptr, sync_ptr, T, timeout_us, BLOCK: tl.constexpr):
    """Step t: program p writes row (t, p) = row (t - 1, p + 1) + 1; a barrier per step."""
    pid = tl.program_id(0)
    n = tl.num_programs(0)
    offs = tl.arange(0, BLOCK)
    tl.store(buf_ptr + pid * BLOCK + offs, (pid * 100 + offs).to(tl.float32))
    ok = grid_barrier(sync_ptr, 0, -1, timeout_us)
    t = 1
    while (t < T) & ok:
        row = tl.load(buf_ptr + ((t - 1) * n + (pid + 1) % n) * BLOCK + offs)
        tl.store(buf_ptr + (t * n + pid) * BLOCK + offs, row + 1.0)
        ok = grid_barrier(sync_ptr, t, -1, timeout_us)
        t += 1


@triton.jit
def _failing_kernel(out_ptr):
    pid = tl.program_id(0)
    tl.assume(pid != 2)  # the interpreter checks assumptions: program 2 raises
    tl.store(out_ptr + pid, pid)


def _ring_expected(programs, steps, block):
    rows = torch.empty(steps, programs, block)
    rows[0] = torch.arange(programs)[:, None] * 100.0 + torch.arange(block)
    for t in range(1, steps):
        rows[t] = rows[t - 1].roll(-1, dims=0) + 1
    return rows


def test_each_thread_sees_its_own_program_id():
    out = torch.full((6,), -1, dtype=torch.int32)
    with threaded_programs():
        _program_ids_kernel[(6,)](out)
    assert out.tolist() == [p * 10 + 6 for p in range(6)]


def test_ring_exchange_through_per_step_barriers():
    """4 programs, 7 steps (DESIGN.md's measurement): right values, no flag, every counter 4."""
    programs, steps, block = 4, 7, 8
    buf = torch.full((steps * programs, block), float("nan"))
    sync = torch.zeros(1 + steps, dtype=torch.int32)
    start = time.monotonic()
    with threaded_programs():
        _ring_kernel[(programs,)](buf, sync, steps, 30_000_000, BLOCK=block)
    assert time.monotonic() - start < 30
    assert sync[0].item() == 0
    assert sync[1:].tolist() == [programs] * steps
    torch.testing.assert_close(buf.view(steps, programs, block), _ring_expected(programs, steps, block), rtol=0, atol=0)


def test_without_threads_the_barrier_times_out_and_flags_it():
    """The plain interpreter runs the programs one after another: programs 0 and 1 time out
    at barrier 0 (the flag records it) and leave; program 2, the last, finds everyone
    arrived there, does step 1 and then times out alone at barrier 1."""
    programs, steps, block = 3, 4, 8
    buf = torch.full((steps * programs, block), float("nan"))
    sync = torch.zeros(1 + steps, dtype=torch.int32)
    _ring_kernel[(programs,)](buf, sync, steps, 50_000, BLOCK=block)
    assert sync[0].item() == 1  # 1 + the index of the barrier that timed out first
    assert sync[1:].tolist() == [3, 1, 0, 0]
    rows = buf.view(steps, programs, block)
    assert not torch.isnan(rows[0]).any()
    assert torch.isnan(rows[1, :2]).all() and not torch.isnan(rows[1, 2]).any()
    assert torch.isnan(rows[2:]).all()


def test_a_failing_program_raises_in_the_launching_thread():
    out = torch.zeros(4, dtype=torch.int32)
    with threaded_programs(), pytest.raises(Exception, match="Assume failed"):
        _failing_kernel[(4,)](out)


def test_the_interpreter_is_restored_afterwards():
    with threaded_programs():
        assert interpreter.GridExecutor.__name__ == "_ThreadedGridExecutor"
    assert type(interpreter.interpreter_builder) is interpreter.InterpreterBuilder
    assert interpreter.GridExecutor.__name__ == "GridExecutor"
    out = torch.full((3,), -1, dtype=torch.int32)
    _program_ids_kernel[(3,)](out)  # the plain sequential loop again
    assert out.tolist() == [3, 13, 23]


def test_device_function_patching_is_serialised_while_programs_run_in_threads():
    """Programs patching triton.language from one module's globals while another program's
    first call of a device function adds names there raised "dictionary changed size during
    iteration": inside threaded_programs both go through one lock, and are restored after."""
    from triton.runtime import interpreter as interp

    from fastrnn import _threaded_interpreter as threaded

    real_patch, real_rewrite = interp._patch_lang, interp.InterpretedFunction.rewrite
    with threaded.threaded_programs():
        assert interp._patch_lang is threaded._locked_patch_lang
        assert interp.InterpretedFunction.rewrite is threaded._locked_rewrite
    assert interp._patch_lang is real_patch
    assert interp.InterpretedFunction.rewrite is real_rewrite
