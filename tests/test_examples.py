"""The examples run, write their figure, and show what they claim (issue 5).

Each example is loaded from ``examples/`` by path and its ``main`` called with a tmp
output directory. Numbers the assertions rely on were measured on this project's CPU
machine (torch 2.13.0) and are quoted next to each threshold.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"fastrnn_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    # The examples are tiny (H=32): extra intra-op threads only add contention on the
    # shared CI cores. Restored afterwards so other tests keep the default.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_png(path: Path):
    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG with content"


def test_sine_to_cosine_learns_and_matches_torch(tmp_path, one_thread):
    example = load_example("sine_to_cosine")
    steps = 300  # the script's default: about 7 s per run here with one thread
    losses = example.main(steps=steps, impl="fastrnn", out=tmp_path / "fastrnn")
    torch_losses = example.main(steps=steps, impl="torch", out=tmp_path / "torch")
    assert len(losses) == len(torch_losses) == steps
    assert all(math.isfinite(v) for v in losses)

    final = sum(losses[-20:]) / 20
    torch_final = sum(torch_losses[-20:]) / 20
    # Predicting 0 everywhere scores mean(cos^2) = 0.5 (the first step's loss was 0.54).
    # Measured, seed 0: 0.0066 for fastrnn and for torch.nn after 300 steps (0.0015 after
    # 150; seeds 1-3 gave 0.0000-0.011 after 300). 0.02 leaves room for float-level
    # drift and still needs a real fit.
    assert final < 0.02, f"mean loss of the last 20 steps {final:.4f}"
    # Same seed, same initial weights: the two runs agreed to 4 digits when measured.
    assert final < 2 * torch_final and torch_final < 2 * final, (final, torch_final)
    assert losses[0] == pytest.approx(torch_losses[0], rel=1e-5)
    assert_png(tmp_path / "fastrnn" / "sine_to_cosine.png")


def test_sequence_classifier_beats_chance(tmp_path, one_thread):
    example = load_example("sequence_classifier")
    # Measured, seed 0: GRU 1.000 test accuracy after 60 steps (RNN 0.85, LSTM 0.92);
    # chance is 0.5 (the two orders are equally likely).
    accuracy = example.main(cell="gru", impl="fastrnn", steps=60, out=tmp_path)
    assert accuracy > 0.8, accuracy
    assert_png(tmp_path / "sequence_classifier_gru.png")


def test_manual_cells_match_the_textbook_equations(tmp_path):
    example = load_example("manual_cells")
    diffs = example.main(impl="fastrnn", out=tmp_path)
    expected = {
        "RNNCell h'", "LSTMCell h'", "LSTMCell c'", "GRUCell h'",
        "RNN output", "RNN h_n", "GRU output", "GRU h_n", "LSTM output", "LSTM h_n", "LSTM c_n",
    }
    assert set(diffs) == expected
    worst = {name: value for name, value in diffs.items() if not value < 1e-6}
    assert not worst, f"differences of 1e-6 or more (float64): {worst}"
    assert_png(tmp_path / "manual_cells.png")


def test_parameter_tour_shapes_match_torch(tmp_path):
    example = load_example("parameters")
    fast_rows = example.main(impl="fastrnn", out=tmp_path / "fastrnn")
    torch_rows = example.main(impl="torch", out=tmp_path / "torch")
    assert len(fast_rows) == len(example.TOUR) > 0
    assert fast_rows == torch_rows
    # The tour includes torch's documented case: RNN(5, 8, num_layers=2), input (3, 2, 5),
    # h0 (2, 2, 8) -> output (3, 2, 8), h_n (2, 2, 8).
    assert ("RNN(5, 8, num_layers=2), h0 given", (3, 2, 8), (2, 2, 8)) in fast_rows
    assert_png(tmp_path / "fastrnn" / "parameters.png")
