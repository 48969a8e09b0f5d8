"""Run every program of an interpreted Triton launch in its own Python thread (the tests and
``python -m fastrnn.gpu_check --dry-run`` run the cooperative tier this way).

Triton's interpreter runs a launch's programs one after another (a loop over
``set_grid_idx``), so a kernel whose programs wait for each other at a grid barrier
hangs there: program 0 waits for programs that have not started. Inside
:func:`threaded_programs`, each program of every interpreted launch runs in its own
thread instead, all of them at once, so a barrier works as on a GPU whose grid is
co-resident.

How (triton 3.9's ``triton/runtime/interpreter.py``):

- The interpreter keeps the current program id in one attribute of one object,
  ``interpreter_builder.grid_idx``, which ``tl.program_id`` reads. Here that object's
  class is swapped for a subclass whose ``grid_idx`` is a property backed by a
  ``threading.local``, so each thread sees its own program id.
- ``GridExecutor`` (one per launch) calls ``self.fn(**args)`` once per program inside
  its loop. The subclass used here wraps ``fn`` so that each call starts a thread for
  that program and returns at once; the call for the last program joins them all (with a
  time limit: a launch that never finishes is an error here, not a hang) and re-raises
  the first exception a program raised. Everything the executor does after its loop
  (restoring patched names, copying arguments back) therefore still happens after every
  program has finished.
- A call of a ``@triton.jit`` device function first patches ``triton.language`` by reading
  its module's globals, and its first call rewrites the function and adds names to those
  same globals. Two programs doing that at once in one module raise "dictionary changed
  size during iteration": both steps run under one lock here (each is done once per
  function; the calls themselves run concurrently).
- ``tl.atomic_poll`` keeps its meaning (each element polled until it equals the expected
  value or the time budget ``timeout_ns`` is spent, one budget for the whole call) but
  sleeps briefly between reads, which releases the GIL so that spinning programs do not
  starve the ones doing work.

The interpreter's atomics (``_interpreter.atomic_rmw`` / ``atomic_cas``) act on the
tensors' memory with real atomic instructions, so they are atomic across threads.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import time

import numpy as np
import triton.language as tl
from triton.runtime import interpreter as _interp

#: Longest a threaded launch may take before it counts as hung (seconds).
JOIN_TIMEOUT_S = 600.0

_POLL_SLEEP_S = 20e-6
_local = threading.local()
_lock = threading.Lock()
_depth = 0
#: Serialises the interpreter's patching and rewriting of device functions across programs.
_rewrite_lock = threading.RLock()
_REAL_PATCH_LANG = _interp._patch_lang
_REAL_REWRITE = _interp.InterpretedFunction.rewrite


def _locked_patch_lang(fn):
    with _rewrite_lock:
        return _REAL_PATCH_LANG(fn)


def _locked_rewrite(self):
    with _rewrite_lock:
        return _REAL_REWRITE(self)


class _ThreadedBuilder(_interp.InterpreterBuilder):
    """The interpreter's builder with a per-thread program id and a GIL-friendly poll."""

    @property
    def grid_idx(self):
        return getattr(_local, "grid_idx", None)

    @grid_idx.setter
    def grid_idx(self, value):
        _local.grid_idx = value

    def create_atomic_poll(self, ptr, expected, timeout_ns, sem, scope):
        matched = np.zeros(ptr.data.shape, dtype=np.bool_)
        start = time.perf_counter_ns()
        budget = None if timeout_ns is None else int(timeout_ns.data.item())
        for index in np.ndindex(ptr.data.shape):
            element = _interp.TensorHandle(np.asarray(ptr.data[index]), ptr.dtype)
            while True:
                if self.create_load(element, None, True).data.item() == expected.data[index]:
                    matched[index] = True
                    break
                if budget is not None and time.perf_counter_ns() - start >= budget:
                    break
                time.sleep(_POLL_SLEEP_S)
        return _interp.TensorHandle(matched, tl.int1)


class _ThreadedGridExecutor(_interp.GridExecutor):
    """A launch whose programs each run in their own thread (see the module docstring)."""

    def __init__(self, fn, *args, **kwargs):
        super().__init__(fn, *args, **kwargs)
        body = self.fn
        threads: list[threading.Thread] = []
        errors: list[BaseException] = []

        def program(idx, kwargs):
            _local.grid_idx = idx
            try:
                body(**kwargs)
            except BaseException as exc:  # handed to the launching thread below
                errors.append(exc)

        def spawn(**kwargs):
            builder = _interp.interpreter_builder
            idx, last = builder.grid_idx, tuple(d - 1 for d in builder.grid_dim)
            thread = threading.Thread(target=program, args=(idx, kwargs), daemon=True, name=f"triton-program-{idx}")
            threads.append(thread)
            thread.start()
            if idx != last:
                return
            deadline = time.monotonic() + JOIN_TIMEOUT_S
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            alive = [t.name for t in threads if t.is_alive()]
            threads.clear()
            if alive:
                raise TimeoutError(f"threaded launch still running after {JOIN_TIMEOUT_S} s: {alive}")
            if errors:
                raise errors[0]

        # The executor reads the kernel's signature from ``self.fn`` (inspect.getcallargs).
        functools.update_wrapper(spawn, body)
        spawn.__signature__ = inspect.signature(body)
        self.fn = spawn


@contextlib.contextmanager
def threaded_programs():
    """Inside the ``with`` block, interpreted launches run each program in its own thread.

    Example::

        with threaded_programs():
            kernel[(4,)](...)   # the 4 programs run concurrently; a grid barrier works
    """
    global _depth
    builder = _interp.interpreter_builder
    with _lock:
        if _depth == 0:
            saved_idx = builder.__dict__.pop("grid_idx", None)
            builder.__class__ = _ThreadedBuilder
            builder.grid_idx = saved_idx
            _interp.GridExecutor = _ThreadedGridExecutor
            _interp._patch_lang = _locked_patch_lang
            _interp.InterpretedFunction.rewrite = _locked_rewrite
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _interp.GridExecutor = _ThreadedGridExecutor.__mro__[1]
                _interp._patch_lang = _REAL_PATCH_LANG
                _interp.InterpretedFunction.rewrite = _REAL_REWRITE
                builder.__class__ = _interp.InterpreterBuilder
                builder.__dict__["grid_idx"] = None
