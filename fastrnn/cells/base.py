"""What a recurrent cell is to fastrnn: one definition, read by every backend and tier.

A :class:`Cell` says how many stacked gate blocks its weights have, which states it
carries, how the recurrent pre-activation ``h_{t-1} W_hh^T (+ b_hh)`` meets the input one
``x_t W_ih^T + b_ih``, and its pointwise math twice: as plain torch functions (the
reference backend's loop and the differentiable form behind exact second derivatives) and
as ``@triton.jit`` functions (every kernel tier calls them with register tiles). The
kernels hold the loop, the GEMMs and the memory traffic; the cell holds the equations.

The pointwise interface, the same in torch and in Triton (tensors of shape
``(rows, H)`` in torch, tiles in Triton, all in the accumulation dtype)::

    forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev)
        -> (h, c, s0, s1, s2, s3, e)
    backward(dh, dc, s0, s1, s2, s3, e, c, c_prev, h, h_prev)
        -> (dx0, dx1, dx2, dx3, dr0, dr1, dr2, dr3, dh_direct, dc_prev)

``x_k`` is gate ``k``'s input pre-activation and ``r_k`` its recurrent one (``b_hh`` is in
``x_k`` unless ``recurrent_apart``, then in ``r_k``). Slots ``k >= gates`` carry zeros and
their results are ignored, as are ``c`` / ``dc_prev`` for a cell without a cell state.
``s_k`` (``k < gates``) and ``e`` are what the forward keeps for the backward when
``saves_gates`` / ``saves_extra``. ``dx_k`` is the gradient of ``x_k``, ``dr_k`` of ``r_k``
(the operand of the recurrent GEMM ``dr @ W_hh``; equal to ``dx_k`` unless
``recurrent_apart``), ``dh_direct`` the gradient reaching ``h_prev`` outside that GEMM
(used when ``direct_h_grad``). In torch, unused results may be ``None``.

A cell with per-unit parameters of its own (``param_rows > 0``: peepholes, LayerNorm gains
and biases) receives them as one more argument ``p`` of shape ``(param_rows, H)``, the last
of both functions, and its backward returns one more result, ``dp`` ``(param_rows, H)``:
the gradient of ``p`` summed over the step's rows. ``e`` may be wider than ``H``
(``extra_width`` blocks of ``H``), for a cell whose backward needs a whole row of its own
(a LayerNorm's input).

A definition is registered by name when it is made (:func:`get` finds it again): the name
is what crosses the ``torch.library`` op boundary. A family of definitions that differ by a
constant (a LayerNorm's ``eps``) registers a factory (:func:`register_family`): ``get``
makes ``"Family(eps=1e-05)"`` on first use, in any process.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

#: Gate slots of the pointwise interface (the kernels pass four, LSTM uses all of them).
MAX_GATES = 4
#: The most rows of per-unit parameters the kernels pass a cell (as ``p0, p1, p2``).
MAX_KERNEL_PARAMS = 3

_REGISTRY: dict[str, "Cell"] = {}
_FAMILIES: dict[str, Callable] = {}


def _resolve(fn):
    """A ``"module:attribute"`` reference imported on first use (keeps triton optional)."""
    if isinstance(fn, str):
        module, _, attr = fn.partition(":")
        return getattr(importlib.import_module(module), attr)
    return fn


@dataclass(frozen=True, eq=False)
class Cell:
    """A recurrent cell kind (see the module docstring for the pointwise interface).

    Args:
        name: unique name; also the ``mode`` fastrnn's layers report.
        gates: stacked gate blocks in ``W_ih`` / ``W_hh`` (1 to 4).
        torch_forward, torch_backward: the pointwise math in out-of-place torch ops
            (differentiable: they give exact second derivatives).
        triton_forward, triton_backward: the same math as ``@triton.jit`` functions, or
            ``"module:name"`` strings imported when a kernel first needs them; None when
            the cell runs on the reference backend only.
        has_cell_state: carries ``c`` besides ``h`` (LSTM).
        recurrent_apart: ``b_hh`` cannot be folded into the input projection: the kernels
            add it to ``h W_hh^T`` and keep the recurrent gradient ``dr`` apart (GRU).
        saves_gates: the forward keeps ``s0 .. s{gates-1}`` for the backward.
        saves_extra: the forward keeps ``e`` too.
        forward_reads_h_prev: the forward reads ``h_prev`` (GRU's interpolation).
        backward_reads_h: the backward reads ``h``, the step's output (plain RNNs).
        backward_reads_h_prev: the backward reads ``h_prev``.
        direct_h_grad: ``dh_direct`` is added to the gradient of ``h_prev``.
        param_rows: rows of the per-unit parameter ``p`` ``(param_rows, H)`` the
            pointwise functions take (0: none). The Triton functions take them as
            ``p0, p1, p2`` (per-unit rows, broadcast over the tile's rows; at most
            ``MAX_KERNEL_PARAMS``) after ``c_prev`` / ``h_prev``, and return no ``dp``.
        torch_param_grad: for a cell with ``param_rows`` that runs on Triton, the gradient
            of ``p`` from whole-sequence tensors after the backward loop:
            ``torch_param_grad(dx (N, G*H), dr (N, G*H), c, c_prev, h, h_prev, p) -> (param_rows, H)``
            (``c``, ``c_prev`` ``(N, H)`` in the accumulation dtype for a cell with a cell state;
            ``h``, ``h_prev`` ``(N, H)`` the cell's output and the state it read).
        extra_width: ``e`` has ``extra_width * H`` features.
    """

    name: str
    gates: int
    torch_forward: Callable
    torch_backward: Callable
    triton_forward: object = None
    triton_backward: object = None
    has_cell_state: bool = False
    recurrent_apart: bool = False
    saves_gates: bool = True
    saves_extra: bool = False
    forward_reads_h_prev: bool = False
    backward_reads_h: bool = False
    backward_reads_h_prev: bool = False
    direct_h_grad: bool = False
    param_rows: int = 0
    torch_param_grad: Callable | None = None
    extra_width: int = 1
    _kernel: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"fastrnn.Cell: name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.gates, int) or not 1 <= self.gates <= MAX_GATES:
            raise ValueError(f"fastrnn.Cell {self.name!r}: gates must be an int from 1 to {MAX_GATES}, got {self.gates!r}")
        for what in ("param_rows", "extra_width"):
            value = getattr(self, what)
            if not isinstance(value, int) or value < (1 if what == "extra_width" else 0):
                raise ValueError(f"fastrnn.Cell {self.name!r}: {what} must be an int >= "
                                 f"{1 if what == 'extra_width' else 0}, got {value!r}")
        known = _REGISTRY.get(self.name)
        if known is not None and known._identity() != self._identity():
            raise ValueError(f"fastrnn.Cell: a different cell named {self.name!r} is already defined")
        # (the same definition made again, e.g. a script run twice, replaces the first)
        _REGISTRY[self.name] = self

    def _identity(self) -> tuple:
        def ident(v):
            return v if isinstance(v, (str, int, bool, type(None))) else getattr(v, "__qualname__", repr(v))

        return tuple(ident(getattr(self, f)) for f in self.__dataclass_fields__ if f != "_kernel")

    # The names the engine reads (the same as CellKind's before cells were definitions).
    @property
    def value(self) -> str:
        return self.name

    @property
    def recurrent_bias_inside(self) -> bool:
        return self.recurrent_apart

    @property
    def states(self) -> tuple[str, ...]:
        """The states the cell carries from step to step."""
        return ("h", "c") if self.has_cell_state else ("h",)

    @property
    def runs_on_triton(self) -> bool:
        # (the kernels' pointwise interface has no per-unit parameters and an H-wide e)
        return self.triton_forward is not None and self.triton_backward is not None and not self._kernel_limits()

    def _kernel_limits(self) -> str:
        if self.extra_width != 1:
            return "an e wider than H, which the kernels do not save"
        if self.param_rows > MAX_KERNEL_PARAMS:
            return f"{self.param_rows} rows of per-unit parameters (the kernels pass at most {MAX_KERNEL_PARAMS})"
        if self.param_rows and self.torch_param_grad is None:
            return "per-unit parameters without torch_param_grad"
        return ""

    def why_not_triton(self) -> str:
        """Why the triton backend cannot run this cell ("" when it can)."""
        if self.triton_forward is None or self.triton_backward is None:
            return f"cell {self.name!r} has no Triton functions"
        limit = self._kernel_limits()
        return f"cell {self.name!r} has {limit}" if limit else ""

    def kernel_constexprs(self) -> dict:
        """The compile-time arguments every kernel tier takes for this cell."""
        if not self._kernel:
            if not self.runs_on_triton:
                raise RuntimeError(f"fastrnn: {self.why_not_triton()}; run it on backend='reference'")
            self._kernel.update(
                CELL_FORWARD=_resolve(self.triton_forward),
                CELL_BACKWARD=_resolve(self.triton_backward),
                GATES=self.gates,
                HAS_C=self.has_cell_state,
                APART=self.recurrent_apart,
                SAVES=self.saves_gates,
                EXTRA=self.saves_extra,
                FWD_H_PREV=self.forward_reads_h_prev,
                BWD_H=self.backward_reads_h,
                BWD_H_PREV=self.backward_reads_h_prev,
                DIRECT=self.direct_h_grad,
            )
            if self.param_rows:
                # (only then: a tier's kernels take PARAMS once they pass per-unit rows)
                self._kernel["PARAMS"] = self.param_rows
        return dict(self._kernel)

    def __repr__(self) -> str:
        return f"fastrnn.Cell({self.name!r}, gates={self.gates})"

    def __reduce__(self):
        # pickled (DDP, deepcopy of a module) by name: a definition is registered once
        return (get, (self.name,))


def register_family(prefix: str, factory: Callable) -> None:
    """Let :func:`get` make ``"prefix(key=value, ...)"`` by calling ``factory(key=value, ...)``
    (float values), which must return a cell of exactly that name."""
    _FAMILIES[prefix] = factory


def _from_family(name: str) -> "Cell | None":
    prefix, paren, rest = name.partition("(")
    factory = _FAMILIES.get(prefix)
    if factory is None or not paren or not rest.endswith(")"):
        return None
    try:
        kwargs = {k.strip(): float(v) for k, v in (item.split("=") for item in rest[:-1].split(","))}
        cell = factory(**kwargs)
    except (ValueError, TypeError):
        return None
    return cell if cell.name == name else None


def get(name: str) -> Cell:
    """The cell defined under ``name``."""
    cell = _REGISTRY.get(name)
    if cell is None:
        cell = _from_family(name) if isinstance(name, str) else None
        if cell is None:
            raise ValueError(f"fastrnn: no cell named {name!r} is defined (known: {sorted(_REGISTRY)})")
    return cell


def defined() -> tuple[Cell, ...]:
    """Every cell defined so far, built-in ones first."""
    return tuple(_REGISTRY.values())
