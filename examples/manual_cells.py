"""The textbook cell equations, written out by hand, against the library's modules.

In float64, with the library module's own weights (W_ih, W_hh, b_ih, b_hh: torch's
layout, gates stacked in torch's order), one step of each cell:

    RNN:   h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
    LSTM:  i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh)        (order i, f, g, o)
           i, f, o = sigmoid(i), sigmoid(f), sigmoid(o);  g = tanh(g)
           c' = f * c + i * g;   h' = o * tanh(c')
    GRU:   r, z, n_x = split(W_ih x + b_ih);  r_h, z_h, n_h = split(W_hh h + b_hh)
           r = sigmoid(r + r_h);  z = sigmoid(z + z_h)
           n = tanh(n_x + r * n_h)          (torch's rule: b_hn sits inside r * (...))
           h' = (1 - z) * n + z * h

are compared with ``RNNCell``/``LSTMCell``/``GRUCell`` (one step) and with
``RNN``/``LSTM``/``GRU`` over a whole sequence (the same equations in a loop). Prints the
largest absolute difference of each and writes ``manual_cells.png`` (log-scale bars).

    python examples/manual_cells.py --impl fastrnn
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def rnn_library(impl: str):
    """``fastrnn`` or ``torch.nn``: both have the three layers and the three cells."""
    if impl == "fastrnn":
        import fastrnn as library
    elif impl == "torch":
        from torch import nn as library
    else:
        raise ValueError(f"impl must be 'fastrnn' or 'torch', got {impl!r}")
    return library


def rnn_step(x, h, w_ih, w_hh, b_ih, b_hh):
    return torch.tanh(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh)


def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    i, f, g, o = (x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_next = f * c + i * g
    return o * torch.tanh(c_next), c_next


def gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    r_x, z_x, n_x = (x @ w_ih.T + b_ih).chunk(3, dim=-1)
    r_h, z_h, n_h = (h @ w_hh.T + b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(r_x + r_h)
    z = torch.sigmoid(z_x + z_h)
    n = torch.tanh(n_x + r * n_h)
    return (1 - z) * n + z * h


def _cell_weights(cell):
    return cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh


def _layer_weights(layer):
    return layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0


def max_abs(a, b) -> float:
    return (a - b).abs().max().item()


def compare(impl: str = "fastrnn", seed: int = 0, batch: int = 3, steps: int = 6, input_size: int = 5,
            hidden: int = 7) -> dict[str, float]:
    """Largest |library - hand-written| of every output, in float64."""
    lib = rnn_library(impl)
    torch.manual_seed(seed)
    dt = torch.float64
    x = torch.randn(batch, input_size, dtype=dt)
    h = torch.randn(batch, hidden, dtype=dt)
    c = torch.randn(batch, hidden, dtype=dt)
    seq = torch.randn(steps, batch, input_size, dtype=dt)
    diffs = {}
    with torch.no_grad():
        cell = lib.RNNCell(input_size, hidden, dtype=dt)
        diffs["RNNCell h'"] = max_abs(cell(x, h), rnn_step(x, h, *_cell_weights(cell)))

        cell = lib.LSTMCell(input_size, hidden, dtype=dt)
        h1, c1 = cell(x, (h, c))
        h2, c2 = lstm_step(x, h, c, *_cell_weights(cell))
        diffs["LSTMCell h'"] = max_abs(h1, h2)
        diffs["LSTMCell c'"] = max_abs(c1, c2)

        cell = lib.GRUCell(input_size, hidden, dtype=dt)
        diffs["GRUCell h'"] = max_abs(cell(x, h), gru_step(x, h, *_cell_weights(cell)))

        # Whole sequences: the same step functions in a Python loop over time.
        for name, step in (("RNN", rnn_step), ("GRU", gru_step)):
            layer = getattr(lib, name)(input_size, hidden, dtype=dt)
            output, h_n = layer(seq, h.unsqueeze(0))
            state, outputs = h, []
            for t in range(steps):
                state = step(seq[t], state, *_layer_weights(layer))
                outputs.append(state)
            diffs[f"{name} output"] = max_abs(output, torch.stack(outputs))
            diffs[f"{name} h_n"] = max_abs(h_n[0], state)

        layer = lib.LSTM(input_size, hidden, dtype=dt)
        output, (h_n, c_n) = layer(seq, (h.unsqueeze(0), c.unsqueeze(0)))
        state, cell_state, outputs = h, c, []
        for t in range(steps):
            state, cell_state = lstm_step(seq[t], state, cell_state, *_layer_weights(layer))
            outputs.append(state)
        diffs["LSTM output"] = max_abs(output, torch.stack(outputs))
        diffs["LSTM h_n"] = max_abs(h_n[0], state)
        diffs["LSTM c_n"] = max_abs(c_n[0], cell_state)
    return diffs


def plot(diffs: dict[str, float], path: Path, impl: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(diffs)
    # a difference of exactly 0 cannot sit on a log axis: draw it at the fp64 epsilon
    floor = torch.finfo(torch.float64).eps
    values = [max(diffs[n], floor) for n in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(names, values)
    ax.set_xscale("log")
    ax.axvline(1e-6, color="red", linestyle=":", label="1e-6")
    ax.set_xlim(floor / 10, 1e-3)
    ax.set_xlabel("max |library - hand-written| (float64; 0 drawn at eps)")
    ax.set_title(f"{impl} vs the textbook equations")
    ax.invert_yaxis()
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(impl: str = "fastrnn", out: str | Path = DEFAULT_OUT, seed: int = 0) -> dict[str, float]:
    """Compare, print the table, plot to ``out/manual_cells.png``; return the differences."""
    diffs = compare(impl=impl, seed=seed)
    print(f"{'output':<14} max |{impl} - hand-written| (float64)")
    for name, value in diffs.items():
        print(f"{name:<14} {value:.2e}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot(diffs, out / "manual_cells.png", impl)
    return diffs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", choices=("fastrnn", "torch"), default="fastrnn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    main(impl=args.impl, out=args.out, seed=args.seed)
    print(f"wrote {Path(args.out) / 'manual_cells.png'}")
