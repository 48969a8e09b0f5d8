"""Backend choice: ``"auto"``, ``"reference"``, ``"triton"`` or ``"native"``.

Precedence: an explicit ``backend=`` on the module or function, else the
``FASTRNN_BACKEND`` environment variable (read at each call), else ``"auto"``.
``"auto"`` picks ``triton`` for CUDA tensors when Triton imports; on the CPU it follows
:func:`fastrnn.backends.native.auto_cpu_backend` for each call (``native``, torch's own
CPU kernels, or ``reference``). Asking for ``triton`` or ``native`` where it cannot run is
an error, never a silent fallback.

A concrete backend is known to :mod:`fastrnn.ops` by its name; :func:`layer_impl` gives
the *layer implementation* behind a name (``layer_forward``, ``layer_backward``,
``saved_layout``: see :class:`fastrnn.engine.LoopLayer`).
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import torch

from . import native, reference
from ..kinds import CellKind

BACKENDS = ("auto", "reference", "triton", "native")
ENV_VAR = "FASTRNN_BACKEND"


# os.environ.get raises and catches a KeyError inside when the variable is unset: ~5 us per
# call on a cold cache, 4 % of a whole layer at T=10, B=1. CPython's os.environ keeps its
# entries in a plain dict (``_data``, encoded keys) that a miss does not raise on.
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey(ENV_VAR) if _ENV_DATA is not None and hasattr(os.environ, "encodekey") else None


def env_backend() -> str | None:
    """``FASTRNN_BACKEND`` as it is now (read at each call), or None when unset."""
    if _ENV_KEY is None:
        return os.environ.get(ENV_VAR)
    raw = _ENV_DATA.get(_ENV_KEY)
    return None if raw is None else os.environ.decodevalue(raw)


def validate_backend_name(name: str | None) -> str | None:
    """Check a ``backend=`` argument; None means "ask the environment at call time"."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")
    return name


def _triton_backend():
    """The triton backend module, or an ImportError that says why it cannot load."""
    from . import triton  # imports triton and fastrnn.kernels lazily

    return triton


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the triton backend cannot run on ``device`` in this process, or None if it can."""
    try:
        # the backend module imports triton lazily: its checks are where the import fails
        return _triton_backend().unavailable_reason(device)
    except ImportError as exc:
        return f"triton could not be imported ({exc})"


class Call(NamedTuple):
    """What ``auto`` looks at on the CPU (:func:`~fastrnn.backends.native.auto_cpu_backend`)."""

    kind: CellKind
    dtype: torch.dtype
    packed: bool
    proj: bool
    needs_grad: bool
    tracing: bool
    hidden: int = 0  #: hidden size (0: not given)


def resolve_name(name: str | None, device: torch.device, call: Call | None = None) -> str:
    """The concrete backend (``"reference"``, ``"triton"`` or ``"native"``) for a call on
    ``device``; ``call`` describes it (``auto`` on the CPU needs it; without it, ``auto``
    gives ``reference`` there).

    An explicit ``name`` is checked here too (a module's ``backend`` attribute may have
    been set after construction).
    """
    validate_backend_name(name)
    if name is None:
        name = env_backend() or "auto"
        if name not in BACKENDS:
            raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {name!r}")
    if name == "reference":
        return "reference"
    if name == "native":
        if device.type != "cpu":
            raise RuntimeError(f"fastrnn: backend='native' runs torch's CPU kernels and cannot run on {device}")
        return "native"
    if name == "auto":
        if device.type != "cuda":
            if call is None or device.type != "cpu":
                return "reference"
            return native.auto_cpu_backend(
                call.kind, call.dtype, packed=call.packed, proj=call.proj, needs_grad=call.needs_grad,
                tracing=call.tracing,
            )
        reason = triton_unavailable_reason(device)
        if reason is None and call is not None:
            reason = _triton_backend().refuses_cell(call.kind, call.hidden, call.dtype)
        if reason is None:
            return "triton"
        # No silent slow paths: the reference loop on a GPU is correct but far slower.
        warnings.warn(
            f"fastrnn: the triton backend cannot run on {device} ({reason}); using the "
            "reference backend, a step-by-step PyTorch loop. Pass backend='reference' to "
            "silence this warning.",
            RuntimeWarning,
            stacklevel=3,
        )
        return "reference"
    reason = triton_unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(f"fastrnn: backend='triton' cannot run on {device}: {reason}")
    return "triton"


def triton_refuses(wants: tuple) -> str | None:
    """Why the triton backend cannot run a call whose time loop takes ``wants`` (``"resets"``,
    ``"zoneout"``, ``"recurrent_scale"``), or None when it can."""
    return _triton_backend().refuses_loop_inputs(wants)


def resolve(name: str | None, device: torch.device):
    """Time-loop backend module (``reference`` or ``triton``) for a call on ``device``
    (``native`` has no time loop of its own: not a name this accepts)."""
    if name == "native":
        raise ValueError("fastrnn: 'native' is a layer implementation, not a time-loop backend")
    return _triton_backend() if resolve_name(name, device) == "triton" else reference


_LAYERS: dict = {}


def layer_impl(name: str):
    """The layer implementation of the concrete backend ``name`` (built once)."""
    impl = _LAYERS.get(name)
    if impl is None:
        from ..engine import LoopLayer

        if name == "reference":
            impl = LoopLayer(reference)
        elif name == "native":
            impl = native  # implements the three functions itself
        elif name == "triton":
            impl = LoopLayer(_triton_backend())
        else:
            raise ValueError(f"fastrnn: unknown backend {name!r}")
        _LAYERS[name] = impl
    return impl
