"""Classify sequences by which of two markers came first: a task that needs memory.

Each sequence has ``length`` steps of 3 input channels: channel 0 is noise, channel 1
carries a single pulse (marker A) and channel 2 a single pulse (marker B), at two random
distinct steps. The label is 1 when A comes before B. The network reads the whole
sequence and classifies from the last timestep's output alone (a Linear layer on
``output[:, -1]``), so it must remember which pulse it saw first, possibly many steps
back.

``--cell rnn|lstm|gru`` picks the recurrent layer; ``--impl fastrnn|torch`` picks the
library (the one differing line is the import in ``rnn_library``). Prints the test
accuracy and writes ``sequence_classifier_<cell>.png`` (loss and accuracy curves).

    python examples/sequence_classifier.py --cell lstm --steps 300
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
CELLS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def rnn_library(impl: str):
    """``fastrnn`` or ``torch.nn``: both have ``RNN``, ``LSTM`` and ``GRU``."""
    if impl == "fastrnn":
        import fastrnn as library
    elif impl == "torch":
        from torch import nn as library
    else:
        raise ValueError(f"impl must be 'fastrnn' or 'torch', got {impl!r}")
    return library


def make_batch(batch: int, length: int, generator: torch.Generator, noise: float = 0.3):
    """Inputs (batch, length, 3) and labels (batch,): 1 if marker A precedes marker B."""
    x = torch.zeros(batch, length, 3)
    x[:, :, 0] = noise * torch.randn(batch, length, generator=generator)
    # two distinct positions per sequence: a random permutation's first two entries
    positions = torch.rand(batch, length, generator=generator).argsort(dim=1)[:, :2]
    rows = torch.arange(batch)
    x[rows, positions[:, 0], 1] = 1.0  # marker A
    x[rows, positions[:, 1], 2] = 1.0  # marker B
    labels = (positions[:, 0] < positions[:, 1]).long()
    return x, labels


class LastStepClassifier(torch.nn.Module):
    def __init__(self, library, cell: str, hidden_size: int = 32, classes: int = 2):
        super().__init__()
        self.rnn = getattr(library, CELLS[cell])(input_size=3, hidden_size=hidden_size, batch_first=True)
        self.head = torch.nn.Linear(hidden_size, classes)

    def forward(self, x):
        """x: (B, T, 3) -> logits (B, classes), from the last timestep's output."""
        output, _ = self.rnn(x)
        return self.head(output[:, -1])


def accuracy(model, x, labels) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == labels).float().mean().item()


def train(cell="lstm", impl="fastrnn", steps=300, length=20, batch=64, seed=0, lr=0.01):
    """Train; returns (history of (step, loss, validation accuracy), test accuracy)."""
    torch.manual_seed(seed)
    data = torch.Generator().manual_seed(seed)
    model = LastStepClassifier(rnn_library(impl), cell)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    x_val, y_val = make_batch(512, length, data)
    history = []
    for step in range(steps):
        x, y = make_batch(batch, length, data)
        model.train()
        loss = loss_fn(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 10 == 0 or step == steps - 1:
            model.eval()
            history.append((step, loss.item(), accuracy(model, x_val, y_val)))
    x_test, y_test = make_batch(1000, length, data)
    model.eval()
    return history, accuracy(model, x_test, y_test)


def plot(history, test_accuracy, path: Path, cell: str, impl: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses, accuracies = zip(*history)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(steps, losses)
    left.set_xlabel("step")
    left.set_ylabel("cross-entropy (training batch)")
    left.set_title(f"{CELLS[cell]} ({impl})")
    right.plot(steps, accuracies, label="validation")
    right.axhline(0.5, color="grey", linestyle=":", label="chance")
    right.axhline(test_accuracy, color="green", linestyle="--", label=f"test {test_accuracy:.3f}")
    right.set_ylim(0.0, 1.02)
    right.set_xlabel("step")
    right.set_ylabel("accuracy")
    right.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(cell="lstm", impl="fastrnn", steps=300, length=20, out=DEFAULT_OUT, seed=0) -> float:
    """Train, plot to ``out/sequence_classifier_<cell>.png``, return the test accuracy."""
    history, test_accuracy = train(cell=cell, impl=impl, steps=steps, length=length, seed=seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot(history, test_accuracy, out / f"sequence_classifier_{cell}.png", cell, impl)
    return test_accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", choices=tuple(CELLS), default="lstm")
    parser.add_argument("--impl", choices=("fastrnn", "torch"), default="fastrnn")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    acc = main(cell=args.cell, impl=args.impl, steps=args.steps, length=args.length, out=args.out, seed=args.seed)
    print(f"{CELLS[args.cell]} ({args.impl}): test accuracy {acc:.3f} (chance 0.5)")
    print(f"wrote {Path(args.out) / f'sequence_classifier_{args.cell}.png'}")
