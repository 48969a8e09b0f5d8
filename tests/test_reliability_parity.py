"""Reliability 1: property-based parity with torch.nn (hypothesis), float64.

Each example draws a whole configuration (cell kind, layers, bias, batch_first,
bidirectional, proj_size, nonlinearity, sizes, T, padded / packed with unsorted lengths /
unbatched, with or without hx) and checks every output and every gradient (input, h0,
c0, each parameter) against ``torch.nn`` with the state_dict copied
(``helpers.assert_parity``).

Profiles, chosen with ``FASTRNN_HYPOTHESIS_PROFILE`` (default ``ci``):

- ``ci``: bounded and derandomized (the same examples on every run, so CI is
  reproducible); no deadline (the first call of a shape pays allocation, and the Triton
  interpreter is slow).
- ``full``: many more examples, randomized, for a soak run.

They are registered here, not in ``conftest.py`` (shared), and applied per test through
``settings(parent=...)`` so other test modules' hypothesis settings are untouched. The
triton backend runs in the interpreter, so it gets a fraction of the examples and tiny
sizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence

from helpers import assert_parity, make_pair

# The autouse seed fixture in conftest is function-scoped; it is harmless here because
# every tensor is generated from a seed that hypothesis draws.
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("ci", max_examples=100, derandomize=True, database=None, **_COMMON)
settings.register_profile("full", max_examples=1500, **_COMMON)
PROFILE_NAME = os.environ.get("FASTRNN_HYPOTHESIS_PROFILE", "ci")
PROFILE = settings.get_profile(PROFILE_NAME)

# The interpreter costs ~1.5 ms per tiny launch and a config runs 2*T launches per
# layer-direction at least: a fifth of the examples (at least 8) keeps the ci run short.
TRITON_EXAMPLES = max(8, PROFILE.max_examples // 5)
REFERENCE_SETTINGS = settings(parent=PROFILE)
TRITON_SETTINGS = settings(parent=PROFILE, max_examples=TRITON_EXAMPLES)
CELL_SETTINGS = settings(parent=PROFILE, max_examples=max(10, PROFILE.max_examples // 2))
TRITON_CELL_SETTINGS = settings(parent=PROFILE, max_examples=max(5, TRITON_EXAMPLES // 2))


@dataclass(frozen=True)
class Config:
    mode: str  # "RNN_TANH", "RNN_RELU", "LSTM", "GRU"
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    bidirectional: bool
    proj_size: int
    steps: int
    batch: int
    layout: str  # "padded", "packed", "unbatched"
    lengths: tuple[int, ...]  # packed only
    with_hx: bool
    seed: int

    @property
    def cls(self) -> str:
        return "RNN" if self.mode.startswith("RNN") else self.mode

    def module_kwargs(self) -> dict:
        kw = dict(num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                  bidirectional=self.bidirectional, dtype=torch.float64)
        if self.cls == "RNN":
            kw["nonlinearity"] = "tanh" if self.mode == "RNN_TANH" else "relu"
        if self.cls == "LSTM":
            kw["proj_size"] = self.proj_size
        return kw


@st.composite
def configs(draw, tiny: bool) -> Config:
    cap, max_steps, max_layers = (6, 3, 2) if tiny else (40, 12, 3)
    mode = draw(st.sampled_from(["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]))
    hidden = draw(st.integers(1, cap))
    proj = 0
    if mode == "LSTM" and hidden > 1 and draw(st.booleans()):
        proj = draw(st.integers(1, hidden - 1))  # torch requires proj_size < hidden_size
    steps = draw(st.integers(1, max_steps))
    batch = draw(st.integers(1, cap))
    layout = draw(st.sampled_from(["padded", "packed", "unbatched"]))
    lengths = ()
    if layout == "packed":
        lengths = tuple(draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch)))
    return Config(
        mode=mode,
        input_size=draw(st.integers(1, cap)),
        hidden_size=hidden,
        num_layers=draw(st.integers(1, max_layers)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
        proj_size=proj,
        steps=steps,
        batch=1 if layout == "unbatched" else batch,
        layout=layout,
        lengths=lengths,
        with_hx=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _inputs(cfg: Config):
    gen = torch.Generator().manual_seed(cfg.seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    directions = 2 if cfg.bidirectional else 1
    out_size = cfg.proj_size or cfg.hidden_size
    if cfg.layout == "unbatched":
        inp = randn(cfg.steps, cfg.input_size)
        state_shape = (cfg.num_layers * directions,)
    else:
        shape = (cfg.batch, cfg.steps) if cfg.batch_first else (cfg.steps, cfg.batch)
        inp = randn(*shape, cfg.input_size)
        if cfg.layout == "packed":
            inp = pack_padded_sequence(inp, torch.tensor(cfg.lengths), batch_first=cfg.batch_first,
                                       enforce_sorted=False)
        state_shape = (cfg.num_layers * directions, cfg.batch)
    hx = None
    if cfg.with_hx:
        h0 = randn(*state_shape, out_size)
        hx = (h0, randn(*state_shape, cfg.hidden_size)) if cfg.cls == "LSTM" else h0
    return inp, hx


def _check(cfg: Config, backend: str):
    note(repr(cfg))
    torch.manual_seed(cfg.seed)  # parameter init
    ref, fast = make_pair(cfg.cls, cfg.input_size, cfg.hidden_size, backend=backend, **cfg.module_kwargs())
    inp, hx = _inputs(cfg)
    assert_parity(ref, fast, inp, hx, dtype=torch.float64)


@REFERENCE_SETTINGS
@given(cfg=configs(tiny=False))
def test_random_config_parity_reference(cfg):
    _check(cfg, "reference")


@TRITON_SETTINGS
@given(cfg=configs(tiny=True))
def test_random_config_parity_triton(cfg):
    _check(cfg, "triton")


# --------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------


@st.composite
def cell_configs(draw, tiny: bool):
    cap = 6 if tiny else 40
    cls = draw(st.sampled_from(["RNNCell", "LSTMCell", "GRUCell"]))
    kwargs = dict(bias=draw(st.booleans()), dtype=torch.float64)
    if cls == "RNNCell":
        kwargs["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    return dict(
        cls=cls, input_size=draw(st.integers(1, cap)), hidden_size=draw(st.integers(1, cap)),
        batch=draw(st.one_of(st.none(), st.integers(1, cap))),  # None: unbatched
        with_hx=draw(st.booleans()), kwargs=kwargs, seed=draw(st.integers(0, 2**31 - 1)),
    )


def _check_cell(cfg, backend):
    note(repr(cfg))
    torch.manual_seed(cfg["seed"])
    ref, fast = make_pair(cfg["cls"], cfg["input_size"], cfg["hidden_size"], backend=backend, **cfg["kwargs"])
    lead = () if cfg["batch"] is None else (cfg["batch"],)
    inp = torch.randn(*lead, cfg["input_size"], dtype=torch.float64, requires_grad=True)
    hx = None
    if cfg["with_hx"]:
        n = 2 if cfg["cls"] == "LSTMCell" else 1
        states = tuple(torch.randn(*lead, cfg["hidden_size"], dtype=torch.float64, requires_grad=True)
                       for _ in range(n))
        hx = states if n == 2 else states[0]
    assert_parity(ref, fast, inp, hx, dtype=torch.float64)


@CELL_SETTINGS
@given(cfg=cell_configs(tiny=False))
def test_random_cell_parity_reference(cfg):
    _check_cell(cfg, "reference")


@TRITON_CELL_SETTINGS
@given(cfg=cell_configs(tiny=True))
def test_random_cell_parity_triton(cfg):
    _check_cell(cfg, "triton")


def test_ci_profile_is_reproducible_and_bounded():
    ci = settings.get_profile("ci")
    assert ci.derandomize and ci.database is None and ci.deadline is None
    assert ci.max_examples <= 100 < settings.get_profile("full").max_examples
