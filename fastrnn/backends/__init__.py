"""Backend choice: ``"auto"``, ``"reference"`` or ``"triton"``.

Precedence: an explicit ``backend=`` on the module or function, else the
``FASTRNN_BACKEND`` environment variable (read at each call), else ``"auto"``.
``"auto"`` picks ``triton`` for CUDA tensors when Triton imports, else ``reference``.
Asking for ``triton`` where it cannot run is an error, never a silent fallback.

A concrete backend is known to :mod:`fastrnn.ops` by its name; :func:`layer_impl` gives
the *layer implementation* behind a name (``layer_forward``, ``layer_backward``,
``saved_layout``: see :class:`fastrnn.engine.LoopLayer`).
"""

from __future__ import annotations

import os
import warnings

import torch

from . import reference

BACKENDS = ("auto", "reference", "triton")
ENV_VAR = "FASTRNN_BACKEND"


def validate_backend_name(name: str | None) -> str | None:
    """Check a ``backend=`` argument; None means "ask the environment at call time"."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")
    return name


def _triton_backend():
    """The triton backend module, or an ImportError that says why it cannot load."""
    from . import triton_backend  # imports triton and fastrnn.kernels lazily

    return triton_backend


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the triton backend cannot run on ``device`` in this process, or None if it can."""
    try:
        # the backend module imports triton lazily: its checks are where the import fails
        return _triton_backend().unavailable_reason(device)
    except ImportError as exc:
        return f"triton could not be imported ({exc})"


def resolve_name(name: str | None, device: torch.device) -> str:
    """The concrete backend (``"reference"`` or ``"triton"``) for a call on ``device``.

    An explicit ``name`` is checked here too (a module's ``backend`` attribute may have
    been set after construction).
    """
    validate_backend_name(name)
    if name is None:
        name = os.environ.get(ENV_VAR, "auto") or "auto"
        if name not in BACKENDS:
            raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {name!r}")
    if name == "reference":
        return "reference"
    if name == "auto":
        if device.type != "cuda":
            return "reference"
        reason = triton_unavailable_reason(device)
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


def resolve(name: str | None, device: torch.device):
    """Backend module (``reference`` or ``triton_backend``) for a call on ``device``."""
    return _triton_backend() if resolve_name(name, device) == "triton" else reference


_LAYERS: dict = {}


def layer_impl(name: str):
    """The layer implementation of the concrete backend ``name`` (built once)."""
    impl = _LAYERS.get(name)
    if impl is None:
        from ..engine import LoopLayer

        if name == "reference":
            impl = LoopLayer(reference)
        elif name == "triton":
            impl = LoopLayer(_triton_backend())
        else:
            raise ValueError(f"fastrnn: unknown backend {name!r}")
        _LAYERS[name] = impl
    return impl
