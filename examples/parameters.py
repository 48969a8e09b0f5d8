"""A tour of the constructor arguments and the shapes they give.

Each entry builds a layer, feeds it an input (and sometimes an initial state) and prints
the shapes of ``output`` and ``h_n``. ``L`` is ``num_layers``, ``D`` 2 when
``bidirectional`` else 1, ``H`` the hidden size and ``P`` the LSTM's ``proj_size``:

- ``output``: ``(T, B, D*H)`` (``(B, T, D*H)`` with ``batch_first``; ``D*P`` with ``proj_size``)
- ``h_n``: ``(D*L, B, H)`` (``(D*L, B, P)`` with ``proj_size``); the LSTM's ``c_n`` keeps ``H``

Run it with ``--impl torch`` and ``--impl fastrnn``: the shapes are the same. Writes
``parameters.png``, the table as a figure.

    python examples/parameters.py --impl fastrnn
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def rnn_library(impl: str):
    """``fastrnn`` or ``torch.nn``: the same constructors."""
    if impl == "fastrnn":
        import fastrnn as library
    elif impl == "torch":
        from torch import nn as library
    else:
        raise ValueError(f"impl must be 'fastrnn' or 'torch', got {impl!r}")
    return library


# (description, class name, constructor kwargs, input shape, initial state shape or None)
TOUR = (
    ("RNN(5, 8)", "RNN", dict(input_size=5, hidden_size=8), (3, 2, 5), None),
    ("RNN(5, 8, num_layers=2), h0 given", "RNN", dict(input_size=5, hidden_size=8, num_layers=2), (3, 2, 5), (2, 2, 8)),
    ("RNN(5, 8, nonlinearity='relu')", "RNN", dict(input_size=5, hidden_size=8, nonlinearity="relu"), (3, 2, 5), None),
    ("RNN(5, 8, bias=False)", "RNN", dict(input_size=5, hidden_size=8, bias=False), (3, 2, 5), None),
    ("RNN(5, 8, batch_first=True)", "RNN", dict(input_size=5, hidden_size=8, batch_first=True), (2, 3, 5), None),
    ("RNN(5, 8), unbatched input", "RNN", dict(input_size=5, hidden_size=8), (3, 5), None),
    ("GRU(5, 8, num_layers=3, dropout=0.5)", "GRU", dict(input_size=5, hidden_size=8, num_layers=3, dropout=0.5), (3, 2, 5), None),
    ("GRU(5, 8, bidirectional=True)", "GRU", dict(input_size=5, hidden_size=8, bidirectional=True), (3, 2, 5), None),
    ("GRU(5, 8, num_layers=2, bidirectional=True, batch_first=True)", "GRU",
     dict(input_size=5, hidden_size=8, num_layers=2, bidirectional=True, batch_first=True), (2, 3, 5), (4, 2, 8)),
    ("LSTM(5, 8)", "LSTM", dict(input_size=5, hidden_size=8), (3, 2, 5), None),
    ("LSTM(5, 8, proj_size=4)", "LSTM", dict(input_size=5, hidden_size=8, proj_size=4), (3, 2, 5), None),
    ("LSTM(5, 8, num_layers=2, proj_size=4, bidirectional=True), (h0, c0) given", "LSTM",
     dict(input_size=5, hidden_size=8, num_layers=2, proj_size=4, bidirectional=True), (3, 2, 5), (4, 2, 4)),
)


def tour(impl: str = "fastrnn", seed: int = 0) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """Run every entry of ``TOUR``; returns ``(description, output shape, h_n shape)``."""
    lib = rnn_library(impl)
    torch.manual_seed(seed)
    rows = []
    for description, name, kwargs, input_shape, state_shape in TOUR:
        layer = getattr(lib, name)(**kwargs)
        x = torch.randn(*input_shape)
        hx = None
        if state_shape is not None:
            h0 = torch.randn(*state_shape)
            if name == "LSTM":
                # c0 has the hidden size H even when h0 has the projection size P
                c0 = torch.randn(*state_shape[:-1], kwargs["hidden_size"])
                hx = (h0, c0)
            else:
                hx = h0
        output, hidden = layer(x, hx)
        h_n = hidden[0] if name == "LSTM" else hidden
        rows.append((description, tuple(output.shape), tuple(h_n.shape)))
    return rows


def plot(rows, path: Path, impl: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 0.3 * len(rows) + 0.8))
    ax.axis("off")
    table = ax.table(
        cellText=[[d, str(entry[3]), str(o), str(h)] for (d, o, h), entry in zip(rows, TOUR)],
        colLabels=["layer", "input", "output", "h_n"],
        loc="center",
        cellLoc="left",
        colWidths=[0.61, 0.13, 0.13, 0.13],
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    ax.set_title(f"constructor arguments and shapes ({impl})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(impl: str = "fastrnn", out: str | Path = DEFAULT_OUT, seed: int = 0):
    """Print and plot the tour (``out/parameters.png``); return its rows."""
    rows = tour(impl=impl, seed=seed)
    width = max(len(d) for d, _, _ in rows)
    for (description, _, _, input_shape, _), (_, output_shape, h_n_shape) in zip(TOUR, rows):
        print(f"{description:<{width}}  input {str(input_shape):<11} -> output {str(output_shape):<11} h_n {h_n_shape}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, out / "parameters.png", impl)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", choices=("fastrnn", "torch"), default="fastrnn")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    main(impl=args.impl, out=args.out)
    print(f"wrote {Path(args.out) / 'parameters.png'}")
