"""The grid barrier of the cooperative tier, and the checks around it.

- :func:`grid_barrier` (device): a CTA barrier, then one ``release`` atomic add on a
  counter of its own per barrier (``sync[1 + i]``), then an ``acquire`` poll until the
  counter equals the number of programs, bounded by a time budget. A counter per barrier
  avoids the reuse race of a single counter polled for equality (a fast program moving the
  counter past the value a slow one waits for). The counters are zeroed by the launcher
  as a fresh zero-filled buffer (no host synchronisation). On timeout a program records
  the failing barrier in ``sync[0]`` (first failure wins) and leaves its loop; every other
  program then times out at the same or the next barrier, so a broken launch ends within
  about two timeouts.
- :func:`check_sync` (host): reads ``sync[0]`` after a launch and raises
  :class:`BarrierTimeout`; the triton backend then reruns the call on the step tier (or
  raises, when the cooperative tier was forced). Reading the flag is one host
  synchronisation per launch; while a CUDA graph is being captured it becomes an
  asynchronous device assertion instead.
- :func:`barrier_ptx_problems`: what the compile report looks for in a compiled
  cooperative kernel's PTX.
"""

from __future__ import annotations

import re

import torch
import triton
import triton.language as tl


class BarrierTimeout(RuntimeError):
    """A cooperative launch ended because a grid barrier timed out (its results are invalid)."""


@triton.jit
def grid_barrier(sync_ptr, index, absent, timeout_us):
    """Grid-wide barrier number ``index``; returns False (and flags ``sync[0]``) on timeout.

    ``timeout_us``: the time budget of the poll in microseconds (int32 up to ~35 minutes).

    ``sync_ptr``: int32, ``sync[0]`` the failure flag (0, or 1 + the first barrier that
    timed out), ``sync[1 + i]`` the arrival counter of barrier ``i`` (zero at launch).
    Every program of the (1-D or 2-D) grid arrives. ``absent``: the linear id of a program
    that skips its arrival (a test switch; -1 in normal use).
    """
    # Every thread's stores of this step are done before the one release below.
    tl.debug_barrier()
    counter = sync_ptr + 1 + index
    if tl.program_id(0) + tl.program_id(1) * tl.num_programs(0) != absent:
        tl.atomic_add(counter, 1, sem="release", scope="gpu")
    programs = tl.num_programs(0) * tl.num_programs(1)
    timeout_ns = timeout_us.to(tl.int64) * 1000
    arrived = tl.atomic_poll(counter, programs, sem="acquire", scope="gpu", timeout_ns=timeout_ns)
    tl.debug_barrier()
    if not arrived:
        tl.atomic_cas(sync_ptr, 0, index + 1, sem="relaxed", scope="gpu")
    return arrived


def check_sync(sync: torch.Tensor, what: str, timeout_us: int) -> None:
    """Raise :class:`BarrierTimeout` when a program of the launch flagged a timeout in
    ``sync[0]``; ``what`` names the kernel, ``timeout_us`` is the budget it ran with.

    Reading the flag waits for the launch (one host synchronisation per launch). While a
    CUDA graph is being captured the flag cannot be read; the check is then an
    asynchronous device assertion, which fails the graph's replay loudly instead.
    """
    if sync.is_cuda and torch.cuda.is_current_stream_capturing():
        torch._assert_async(sync[0] == 0, f"fastrnn: cooperative {what} kernel: a grid barrier timed out")
        return
    failed = int(sync[0].item())
    if failed:
        raise BarrierTimeout(
            f"fastrnn: the cooperative {what} kernel stopped at grid barrier {failed - 1}: a program did "
            f"not arrive within {timeout_us / 1e6:g} s (its results are discarded)"
        )


_RELEASE_ADD = re.compile(r"\b(?:red|atom)\.[a-z0-9_.]*\brelease\b[a-z0-9_.]*\.add\.")
_ACQUIRE = re.compile(r"\bfence\.(?:acq_rel|acquire)\.gpu\b|\bld\.acquire\.gpu\b")


def barrier_ptx_problems(ptx: str) -> list[str]:
    """What is missing from a compiled cooperative kernel's PTX for :func:`grid_barrier` to
    be a release/acquire grid barrier with a time limit (empty: nothing).

    Checked: a GPU-scope release atomic add (the arrival), a read of ``%globaltimer``
    (the poll's time limit), a GPU-scope acquire (``fence.acq_rel.gpu`` on sm_80,
    ``fence.acquire.gpu`` on sm_90, or an acquire load) and a CTA barrier (``bar.sync``).
    """
    problems = []
    releases = [m.group(0) for m in _RELEASE_ADD.finditer(ptx)]
    if not any(".gpu." in r or r.startswith(("red.gpu", "atom.gpu")) for r in releases):
        problems.append("no gpu-scope release atomic add")
    if "%globaltimer" not in ptx:
        problems.append("no %globaltimer read (the poll has no time limit)")
    if not _ACQUIRE.search(ptx):
        problems.append("no gpu-scope acquire after the poll")
    if "bar.sync" not in ptx:
        problems.append("no CTA barrier (bar.sync)")
    return problems
