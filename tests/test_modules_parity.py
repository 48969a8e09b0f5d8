"""Parity of the drop-in modules with torch.nn: outputs and every gradient.

Each case builds a ``torch.nn`` module and its fastrnn twin with the state_dict copied
(``helpers.make_pair``) and checks, with ``helpers.assert_parity``: the output (or the
PackedSequence data), h_n, c_n, and the gradients of the input, h0, c0 and every
parameter.

Grid (layers): variant (RNN tanh, RNN relu, GRU, LSTM, LSTM with proj_size) x
num_layers (1, 2, 3) x bias x batch_first x bidirectional x H (1, 3, 17) x I (1, 5) x
T (1, 9) x B (1, 4) x with/without hx x input form (padded, packed with sorted lengths,
packed with unsorted lengths via ``enforce_sorted=False``, unbatched). Packed lengths
always include 1 when B > 1. Grid (cells): kind x bias x batched/unbatched x hx x H x I x B.

- Quick (default): pairwise selections (``helpers.pairwise``): every value of every
  option meets every value of every other option; float64, and a third of
  it again in float32.
- Full (``FASTRNN_FULL=1``, marked ``slow``): the whole cross product in float64, and
  the pairwise selection in float32 (cells: the whole product in both). Its ids are only
  generated when ``FASTRNN_FULL=1`` is set (``-m slow`` alone shows one skipped
  placeholder), to keep quick collection fast.
- Backend: the grids run on ``FASTRNN_PARITY_BACKEND`` (default ``reference``;
  ``FASTRNN_PARITY_BACKEND=triton`` runs the same suite on the Triton backend in the
  interpreter). A small representative triton subset (``triton-*`` ids) always runs.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, replace

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from helpers import assert_parity, make_pair, pairwise

FULL = os.environ.get("FASTRNN_FULL", "") not in ("", "0")  # as in conftest
GRID_BACKEND = os.environ.get("FASTRNN_PARITY_BACKEND", "reference")
PROJ = {3: 2, 17: 5}  # proj_size for each hidden size (torch needs proj_size < hidden_size)
DTYPE_NAME = {torch.float64: "f64", torch.float32: "f32"}


@dataclass(frozen=True)
class Case:
    variant: str  # "RNN_TANH", "RNN_RELU", "GRU", "LSTM", "LSTM_PROJ"
    layers: int
    bias: bool
    batch_first: bool
    bidirectional: bool
    hidden: int
    inp: int
    steps: int
    batch: int
    hx: bool
    form: str  # "padded", "packed_sorted", "packed_unsorted", "unbatched"
    dtype: torch.dtype = torch.float64
    backend: str = GRID_BACKEND

    @property
    def cls(self) -> str:
        return "RNN" if self.variant.startswith("RNN") else self.variant.split("_")[0]

    @property
    def proj(self) -> int:
        return PROJ[self.hidden] if self.variant == "LSTM_PROJ" else 0

    @property
    def id(self) -> str:
        name = {"RNN_TANH": "RNN", "RNN_RELU": "RNN-relu"}.get(self.variant, self.cls)
        parts = [name, f"L{self.layers}"]
        parts += [] if self.bias else ["nobias"]
        parts += ["bf"] if self.batch_first else []
        parts += ["bidir"] if self.bidirectional else []
        parts += [f"proj{self.proj}"] if self.proj else []
        parts += [f"H{self.hidden}", f"I{self.inp}", f"B{self.batch}", f"T{self.steps}", self.form]
        parts += ["hx" if self.hx else "nohx", DTYPE_NAME[self.dtype]]
        if self.backend != "reference":
            parts.insert(0, self.backend)
        return "-".join(parts)


LAYER_FACTORS = dict(
    variant=["RNN_TANH", "RNN_RELU", "GRU", "LSTM", "LSTM_PROJ"],
    layers=[1, 2, 3],
    bias=[True, False],
    batch_first=[False, True],
    bidirectional=[False, True],
    hidden=[1, 3, 17],
    inp=[1, 5],
    steps=[1, 9],
    batch=[1, 4],
    hx=[False, True],
    form=["padded", "packed_sorted", "packed_unsorted", "unbatched"],
)


def _layer_valid(c: dict) -> bool:
    if c["variant"] == "LSTM_PROJ" and c["hidden"] not in PROJ:
        return False
    # unbatched input has no batch dimension: it stands for B = 1
    return not (c["form"] == "unbatched" and c["batch"] != 1)


def _lengths(steps: int, batch: int, form: str) -> list[int]:
    """Packed lengths: the full length, 1, and values between; unsorted unless asked."""
    pool = [steps, 1, max(1, (steps + 1) // 2), max(1, steps - 2)][:batch]
    if form == "packed_sorted":
        return sorted(pool, reverse=True)
    return [pool[i] for i in (2, 0, 3, 1)[:batch]] if batch == 4 else pool


def _layer_inputs(case: Case):
    kw = dict(dtype=case.dtype)
    directions = 2 if case.bidirectional else 1
    out = case.proj or case.hidden
    if case.form == "unbatched":
        x = torch.randn(case.steps, case.inp, **kw)
        state = (case.layers * directions,)
    else:
        shape = (case.batch, case.steps) if case.batch_first else (case.steps, case.batch)
        x = torch.randn(*shape, case.inp, **kw)
        state = (case.layers * directions, case.batch)
    x.requires_grad_()
    if case.form.startswith("packed"):
        lengths = torch.tensor(_lengths(case.steps, case.batch, case.form))
        x = pack_padded_sequence(
            x, lengths, batch_first=case.batch_first, enforce_sorted=case.form == "packed_sorted"
        )
    hx = None
    if case.hx:
        h0 = torch.randn(*state, out, **kw).requires_grad_()
        hx = (h0, torch.randn(*state, case.hidden, **kw).requires_grad_()) if case.cls == "LSTM" else h0
    return x, hx


def _check_layer(case: Case):
    kwargs = dict(num_layers=case.layers, bias=case.bias, batch_first=case.batch_first,
                  bidirectional=case.bidirectional, dtype=case.dtype)
    if case.cls == "RNN":
        kwargs["nonlinearity"] = "relu" if case.variant == "RNN_RELU" else "tanh"
    if case.cls == "LSTM":
        kwargs["proj_size"] = case.proj
    ref, fast = make_pair(case.cls, case.inp, case.hidden, backend=case.backend, **kwargs)
    x, hx = _layer_inputs(case)
    assert_parity(ref, fast, x, hx, dtype=case.dtype)


# two independent pairwise selections: every pair of option values is met at least twice
# (in different company), still < 10 s
QUICK_LAYERS = [Case(**c) for seed in (0, 1) for c in pairwise(LAYER_FACTORS, _layer_valid, seed=seed)]
QUICK_LAYERS = list(dict.fromkeys(QUICK_LAYERS))
# float32: the error analysis differs (TOL[float32]); a third of the quick set suffices
QUICK_LAYERS_F32 = [replace(c, dtype=torch.float32) for c in QUICK_LAYERS[::3]]
FULL_LAYERS = [
    Case(**dict(zip(LAYER_FACTORS, values)))
    for values in itertools.product(*LAYER_FACTORS.values())
    if _layer_valid(dict(zip(LAYER_FACTORS, values)))
]
FULL_LAYERS_F32 = [replace(c, dtype=torch.float32) for c in QUICK_LAYERS]


def _params(cases, *marks):
    return [pytest.param(c, id=c.id, marks=marks) for c in cases]


def _full_params(cases):
    """The full grid's params, generated only with FASTRNN_FULL=1: ~19k ids that would all
    be skipped cost several seconds of collection in every quick run."""
    if FULL:
        return _params(cases)
    return [pytest.param(None, id="full-grid", marks=pytest.mark.skip(reason="full grid: set FASTRNN_FULL=1"))]


@pytest.mark.parametrize("case", _params(QUICK_LAYERS + QUICK_LAYERS_F32))
def test_layer_parity(case):
    _check_layer(case)


@pytest.mark.slow
@pytest.mark.parametrize("case", _full_params(FULL_LAYERS + FULL_LAYERS_F32))
def test_layer_parity_full(case):
    _check_layer(case)


def test_quick_layer_grid_covers_every_option_value():
    """The pairwise selection really holds every value of every factor (and proj cases)."""
    for name, values in LAYER_FACTORS.items():
        seen = {getattr(c, name) for c in QUICK_LAYERS}
        assert seen == set(values), name
    assert {c.dtype for c in QUICK_LAYERS_F32} == {torch.float32}
    assert {c.variant for c in QUICK_LAYERS_F32} >= {"LSTM", "GRU"}


# --------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellCase:
    kind: str  # "RNN_TANH", "RNN_RELU", "GRU", "LSTM"
    bias: bool
    batched: bool
    hx: bool
    hidden: int
    inp: int
    batch: int
    dtype: torch.dtype = torch.float64
    backend: str = GRID_BACKEND

    @property
    def cls(self) -> str:
        return "RNNCell" if self.kind.startswith("RNN") else f"{self.kind}Cell"

    @property
    def id(self) -> str:
        parts = [self.cls + ("-relu" if self.kind == "RNN_RELU" else "")]
        parts += [] if self.bias else ["nobias"]
        parts += [f"H{self.hidden}", f"I{self.inp}"]
        parts += [f"B{self.batch}"] if self.batched else ["unbatched"]
        parts += ["hx" if self.hx else "nohx", DTYPE_NAME[self.dtype]]
        if self.backend != "reference":
            parts.insert(0, self.backend)
        return "-".join(parts)


CELL_FACTORS = dict(
    kind=["RNN_TANH", "RNN_RELU", "GRU", "LSTM"],
    bias=[True, False],
    batched=[True, False],
    hx=[False, True],
    hidden=[1, 3, 17],
    inp=[1, 5],
    batch=[1, 4],
)


def _cell_valid(c: dict) -> bool:
    return c["batched"] or c["batch"] == 1


def _check_cell(case: CellCase):
    kwargs = dict(bias=case.bias, dtype=case.dtype)
    if case.kind.startswith("RNN"):
        kwargs["nonlinearity"] = "relu" if case.kind == "RNN_RELU" else "tanh"
    ref, fast = make_pair(case.cls, case.inp, case.hidden, backend=case.backend, **kwargs)
    lead = (case.batch,) if case.batched else ()
    x = torch.randn(*lead, case.inp, dtype=case.dtype).requires_grad_()
    hx = None
    if case.hx:
        h = torch.randn(*lead, case.hidden, dtype=case.dtype).requires_grad_()
        hx = (h, torch.randn(*lead, case.hidden, dtype=case.dtype).requires_grad_()) if case.kind == "LSTM" else h
    assert_parity(ref, fast, x, hx, dtype=case.dtype)


QUICK_CELLS = [CellCase(**c) for c in pairwise(CELL_FACTORS, _cell_valid, seed=0)]
QUICK_CELLS_F32 = [replace(c, dtype=torch.float32) for c in QUICK_CELLS[::3]]
FULL_CELLS = [
    CellCase(**dict(zip(CELL_FACTORS, values)))
    for values in itertools.product(*CELL_FACTORS.values())
    if _cell_valid(dict(zip(CELL_FACTORS, values)))
]
FULL_CELLS_F32 = [replace(c, dtype=torch.float32) for c in FULL_CELLS]


@pytest.mark.parametrize("case", _params(QUICK_CELLS + QUICK_CELLS_F32))
def test_cell_parity(case):
    _check_cell(case)


@pytest.mark.slow
@pytest.mark.parametrize("case", _full_params(FULL_CELLS + FULL_CELLS_F32))
def test_cell_parity_full(case):
    _check_cell(case)


def test_quick_cell_grid_covers_every_option_value():
    for name, values in CELL_FACTORS.items():
        assert {getattr(c, name) for c in QUICK_CELLS} == set(values), name


# --------------------------------------------------------------------------------------
# Triton backend: a small representative subset, always collected. Tiny shapes, because
# the Triton interpreter (TRITON_INTERPRET=1, set in conftest) costs ~1.5 ms per launch.
# --------------------------------------------------------------------------------------

_T = dict(dtype=torch.float64, backend="triton")
TRITON_CELLS = [
    CellCase("LSTM", bias=True, batched=True, hx=True, hidden=3, inp=5, batch=4, **_T),
    CellCase("GRU", bias=True, batched=False, hx=True, hidden=3, inp=1, batch=1, **_T),
    CellCase("RNN_RELU", bias=False, batched=True, hx=False, hidden=3, inp=5, batch=4, **_T),
]
TRITON_LAYERS = [
    Case("GRU", 1, True, True, False, hidden=3, inp=5, steps=5, batch=4, hx=True, form="packed_unsorted", **_T),
    Case("RNN_TANH", 1, True, False, True, hidden=3, inp=5, steps=5, batch=4, hx=True, form="padded", **_T),
    Case("LSTM_PROJ", 2, True, False, False, hidden=3, inp=5, steps=5, batch=4, hx=True, form="padded", **_T),
]


@pytest.mark.parametrize("case", _params(TRITON_CELLS))
def test_cell_parity_triton(case):
    _check_cell(case)


@pytest.mark.parametrize("case", _params(TRITON_LAYERS))
def test_layer_parity_triton(case):
    _check_layer(case)
