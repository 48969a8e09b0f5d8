"""What every kernel tier's launchers share: launch counting, the device guard, pointer checks."""

from __future__ import annotations

import collections
import contextlib
import threading

import torch


class LaunchCounter:
    """Kernel launches since this counter was opened (see :func:`count_launches`).

    ``forward`` / ``backward`` count the launches of every tier; ``tiers`` counts them
    per ``(tier, "forward" | "backward")``; ``configs`` per ``(tier, direction, launch
    configuration)`` for the launches that record one (the cooperative tier: its
    :class:`~fastrnn.kernels.fits.CoopConfig`, whose ``registers`` says which variant ran);
    ``devices`` per device the launch was made under (:func:`device_guard`; None outside one).
    """

    def __init__(self):
        self.forward = 0
        self.backward = 0
        self.tiers = collections.Counter()
        self.configs = collections.Counter()
        self.devices = collections.Counter()


_counters: list[LaunchCounter] = []


@contextlib.contextmanager
def count_launches():
    """Count the recurrent-kernel launches made inside the ``with`` block.

    Example::

        with count_launches() as n:
            ...
        assert (n.forward, n.tiers["resident", "forward"]) == (1, 1)
    """
    counter = LaunchCounter()
    _counters.append(counter)
    try:
        yield counter
    finally:
        _counters.remove(counter)


def record(tier: str, direction: str, config=None) -> None:
    """Count one launch of ``tier``'s ``direction`` ("forward" or "backward") kernel, made
    with launch configuration ``config`` (None: not recorded)."""
    for counter in _counters:
        setattr(counter, direction, getattr(counter, direction) + 1)
        counter.tiers[tier, direction] += 1
        counter.devices[launch_device()] += 1
        if config is not None:
            counter.configs[tier, direction, config] += 1


_guard = threading.local()


@contextlib.contextmanager
def device_guard(device):
    """Make ``device`` the one kernels launch on inside the ``with`` block.

    Triton launches on the *current* CUDA device and its current stream, not on the device
    of the tensors it is given: a layer on ``cuda:1`` while ``cuda:0`` is current would pass
    device-1 pointers to a launch on device 0. Every launch of the triton backend runs
    inside this guard of its tensors' device; :func:`launch_device` tells which.
    """
    device = torch.device(device)
    previous = getattr(_guard, "device", None)
    _guard.device = device
    try:
        if device.type == "cuda":
            with torch.cuda.device(device):
                yield
        else:
            yield
    finally:
        _guard.device = previous


def launch_device():
    """The device of the innermost :func:`device_guard` of this thread, or None."""
    return getattr(_guard, "device", None)


def aligned_input(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous and 16-byte aligned, copied only when it is not.

    The kernels are compiled for 16-byte aligned pointers (one variant, the one the
    report checks); a misaligned view of an input (rare: a slice of a larger buffer) is
    copied rather than compiling a second variant. Outputs are fresh allocations.
    """
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def checked_pointers(spec, tensors: dict) -> list[torch.Tensor]:
    """The tensors of ``spec`` (``((name, role), ...)``) in order, each checked to be
    contiguous and 16-byte aligned (what the compiled kernels assume)."""
    out = []
    for name, _ in spec:
        t = tensors[name]
        if t.data_ptr() % 16 or not t.is_contiguous():
            raise ValueError(f"fastrnn.kernels: {name} must be contiguous and 16-byte aligned")
        out.append(t)
    return out
