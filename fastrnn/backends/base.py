"""The small interface a backend implements: the time loop of one layer-direction.

The engine (:mod:`fastrnn.engine`) does everything that is a whole-sequence operation in
torch — the input projection GEMM before the loop, and the weight / input gradient GEMMs
after the backward loop. A backend only runs the two time loops:

``forward(kind, xg, w_hh, b_hh, w_hr, h0, c0, schedule, reverse, save)``
    ``xg``  ``(N, G*H)`` input projection ``x @ W_ih^T + b_ih`` (plus ``b_hh`` unless
    ``kind.recurrent_bias_inside``), rows ordered by :class:`~fastrnn.schedule.Schedule`.
    ``w_hh`` ``(G*H, P)``; ``b_hh`` ``(G*H,)`` or None (only passed for GRU);
    ``w_hr`` ``(P, H)`` or None (LSTM projection); ``h0`` ``(B, P)``; ``c0`` ``(B, H)`` or None.
    Returns a :class:`ForwardResult`; ``saved`` holds what backward needs and is
    opaque to the engine (empty when ``save`` is False). ``xg`` belongs to the call: the
    backend may overwrite it (the reference backend turns it into the saved gates).

``backward(kind, saved, w_hh, b_hh, w_hr, h0, c0, y, dy, dh_n, dc_n, schedule, reverse)``
    ``dy`` ``(N, P)``, ``dh_n`` ``(B, P)``, ``dc_n`` ``(B, H)`` or None.
    Returns a :class:`BackwardResult`.

Both take two keywords, passed only when the call has them: ``params``, the cell's
per-unit parameters ``(param_rows, H)`` (its pointwise functions' ``p``; the backward
returns their gradient as ``dparams``), and ``resets``, ``(N,)`` bool: True where the
state entering that row's step is zero (h and c); the gradient reaching the state
before such a step is then zero too, and the cell's backward reads the zeroed state.

Sequences where a step has fewer active rows than ``B`` (packed input) keep the state of
their inactive rows untouched: think of one state buffer ``S`` of ``B`` rows that step
``t`` reads and rewrites in rows ``[:batch_sizes[t]]``; its final content is ``h_n``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class ForwardResult(NamedTuple):
    y: torch.Tensor  #: (N, P) hidden state of every step
    h_n: torch.Tensor  #: (B, P) final hidden state of each sequence
    c_n: torch.Tensor | None  #: (B, H) final cell state (LSTM) or None
    saved: tuple[torch.Tensor, ...]  #: backend-private tensors for backward


class BackwardResult(NamedTuple):
    dxg: torch.Tensor  #: (N, G*H) gradient of the input projection
    dhg: torch.Tensor  #: (N, G*H) gradient of ``h_{t-1} @ W_hh^T + b_hh`` (is ``dxg`` unless GRU)
    dh0: torch.Tensor  #: (B, P)
    dc0: torch.Tensor | None  #: (B, H) or None
    dw_hr: torch.Tensor | None  #: (P, H) projection weight gradient, or None
    dparams: torch.Tensor | None = None  #: (param_rows, H) gradient of the cell's parameters


def loop_inputs(params=None, resets=None, zoneout=None, recurrent_scale=None) -> dict:
    """The optional keywords of a backend's time loops, only those present (a backend that
    reads none of them is called exactly as before they existed)."""
    given = {}
    if params is not None:
        given["params"] = params
    if resets is not None:
        given["resets"] = resets
    if zoneout is not None:
        given["zoneout"] = zoneout
    if recurrent_scale is not None:
        given["recurrent_scale"] = recurrent_scale
    return given
