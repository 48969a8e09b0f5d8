"""Regularisers inside the recurrence: zoneout, recurrent (variational) dropout, DropConnect.

- **Zoneout** (Krueger et al. 2016): in training, a fresh Bernoulli mask ``m`` per (step,
  sequence, unit) with ``P(m = 1) = p`` keeps the previous state, ``h_t = m * h_{t-1} +
  (1 - m) * h~_t`` (``c_t`` likewise with its own mask and ``p_c``), ``h~_t`` the cell's new
  value; the output at step ``t`` is the zoned-out ``h_t``. In eval, the expectation:
  ``h_t = p * h_{t-1} + (1 - p) * h~_t``. The masks are drawn with torch
  (:func:`draw_zoneout`): ``(N, H)`` bools per layer-direction, one byte per element (for h and
  again for c: 64 MiB each at T=1024, B=64, H=1024).
- **Recurrent dropout** (Gal & Ghahramani 2016): one mask per (sequence, unit) per forward
  call, the same at every step: ``h_{t-1}`` becomes ``m * h_{t-1} / (1 - p)`` where it
  enters ``W_hh`` (the state itself, and GRU's direct path ``z * h_{t-1}``, are untouched).
  Passed to the time loop as the scale ``m / (1 - p)``, ``(B, H)`` in the layer's dtype.
  Identity in eval.
- **DropConnect on W_hh** (Merity et al. 2017): one mask over the entries of each ``W_hh``
  per forward call, scaled by ``1 / (1 - p)``, training only: applied to the weight before
  the layer runs (autograd carries the gradient through the mask; on the CPU, eagerly, one
  node that keeps the mask's seed and redraws the mask in its backward).

Every mask comes from torch's generator of the tensors' device (on the CPU, eagerly, as the
seed of a counter-based draw: :func:`fastrnn.backends.cpu_loops.bernoulli_mask`), so
``torch.manual_seed`` makes a run reproducible and every backend computes with the same masks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .backends import cpu_loops


def check_probability(name: str, p) -> float:
    """``p`` as a float in [0, 1), else torch's dropout error."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"{name} probability has to be between 0 and 1 (1 excluded), but got {p}")
    return float(p)


def zoneout_pair(value, has_c: bool) -> tuple[float, float]:
    """``(p_h, p_c)`` from a float (h only) or, for a cell with a cell state, a pair."""
    if isinstance(value, (tuple, list)):
        if not has_c:
            raise ValueError("zoneout: a pair (p_h, p_c) needs a cell with a cell state (LSTM); pass a float")
        if len(value) != 2:
            raise ValueError(f"zoneout: expected a float or a pair (p_h, p_c), got {value!r}")
        return check_probability("zoneout", value[0]), check_probability("zoneout", value[1])
    return check_probability("zoneout", value), 0.0


class Zoneout(NamedTuple):
    """What one layer-direction's loop needs: the masks (training) or the probabilities
    (eval) for h and c. A mask is ``(N, H)`` bool, rows in schedule order. (A named tuple:
    made at every call, where a frozen dataclass costs several times more.)"""

    mask_h: torch.Tensor | None = None
    mask_c: torch.Tensor | None = None
    p_h: float = 0.0
    p_c: float = 0.0

    @property
    def on_h(self) -> bool:
        return self.mask_h is not None or self.p_h > 0

    @property
    def on_c(self) -> bool:
        return self.mask_c is not None or self.p_c > 0

    def blend(self, which: str, prev, new, lo: int, hi: int):
        """The zoned-out state of rows ``lo:hi`` from the state entering the step and the cell's new value."""
        mask, p = (self.mask_h, self.p_h) if which == "h" else (self.mask_c, self.p_c)
        if mask is not None:
            return torch.where(mask[lo:hi], prev, new)
        if p > 0:
            return new + p * (prev - new)
        return new

    def split(self, which: str, grad, lo: int, hi: int):
        """``(gradient of the cell's new value, gradient of the previous state)`` from the
        gradient of the zoned-out state (the second is None when nothing is kept)."""
        mask, p = (self.mask_h, self.p_h) if which == "h" else (self.mask_c, self.p_c)
        if mask is not None:
            m = mask[lo:hi]
            return torch.where(m, 0, grad), torch.where(m, grad, 0)
        if p > 0:
            return grad * (1 - p), grad * p
        return grad, None


def _bernoulli(shape, p: float, device) -> torch.Tensor:
    """A bool mask, True with probability ``p``: on the CPU, eagerly, the C++ loops'
    counter-based draw (:func:`fastrnn.backends.cpu_loops.bernoulli_mask`, seeded from
    torch's generator); elsewhere ``torch.rand``."""
    if cpu_loops.draws_masks(device):
        return cpu_loops.bernoulli_mask(shape[0], shape[1], p)
    return torch.rand(shape, device=device) < p


def _keep_scale(shape, p: float, dtype, device) -> torch.Tensor:
    """``m / (1 - p)`` in ``dtype``, ``m`` a fresh Bernoulli(1 - p) mask (drawn as
    :func:`_bernoulli` draws)."""
    if cpu_loops.draws_masks(device):
        return cpu_loops.keep_scale(shape[0], shape[1], p, dtype)
    keep = torch.rand(shape, device=device) >= p
    return keep.to(dtype).mul_(1 / (1 - p))


def draw_zoneout(rows: int, hidden: int, p_h: float, p_c: float, device) -> tuple:
    """``(mask_h, mask_c)``: fresh ``(rows, H)`` Bernoulli masks (None where p is 0); on the
    CPU, eagerly, both in one call (:func:`fastrnn.backends.cpu_loops.zoneout_masks`)."""
    if cpu_loops.draws_masks(device):
        return cpu_loops.zoneout_masks(rows, hidden, p_h, p_c)
    return (None if p_h == 0 else _bernoulli((rows, hidden), p_h, device),
            None if p_c == 0 else _bernoulli((rows, hidden), p_c, device))


def draw_recurrent_scale(batch: int, hidden: int, p: float, dtype, device) -> torch.Tensor:
    """``m / (1 - p)`` with ``m`` a fresh ``(B, H)`` Bernoulli(1 - p) mask."""
    return _keep_scale((batch, hidden), p, dtype, device)


def drop_connect(w_hh: torch.Tensor, p: float) -> torch.Tensor:
    """``W_hh`` with a fresh mask over its entries, scaled by ``1 / (1 - p)`` (on the CPU,
    eagerly, in one call: :func:`fastrnn.backends.cpu_loops.drop_connect`)."""
    if w_hh.is_cpu and cpu_loops.draws_masks_eagerly():
        return cpu_loops.drop_connect(w_hh, p)
    return w_hh * _keep_scale(tuple(w_hh.shape), p, w_hh.dtype, w_hh.device)
