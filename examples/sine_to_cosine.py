"""Predict cos(t) from sin(t) with a one-layer RNN, one window of t at a time.

Step k feeds the 10 samples of sin(t) for t in [k*pi, (k+1)*pi) to an RNN (hidden size
32, batch_first) with a Linear head on every timestep, and regresses cos(t) with an MSE
loss (Adam, lr 0.02). The hidden state is carried from one window to the next, detached:
the first sample of each window is sin(k*pi) = 0 whatever k, while cos(k*pi) is +1 or -1,
so only the state carried over from the previous window tells the two apart.

The windows are half-open (10 samples pi/10 apart, the next window starts where this
one stops). With closed windows (``linspace`` including both ends) the last sample of
one window repeats as the first of the next; measured with seed 0, that made training
chaotic around step 250 for torch.nn and fastrnn alike (loss spikes above 1), and
float-level differences then decided which run recovered.

Switch between fastrnn and torch.nn with ``--impl``: the one line that differs is the
import in ``rnn_library``. Writes ``sine_to_cosine.png`` to ``--out``.

    python examples/sine_to_cosine.py --impl fastrnn --steps 300
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def rnn_library(impl: str):
    """``fastrnn`` or ``torch.nn``: both have ``RNN`` with the same signature."""
    if impl == "fastrnn":
        import fastrnn as library
    elif impl == "torch":
        from torch import nn as library
    else:
        raise ValueError(f"impl must be 'fastrnn' or 'torch', got {impl!r}")
    return library


class SineToCosine(torch.nn.Module):
    def __init__(self, library, hidden_size: int = 32):
        super().__init__()
        self.rnn = library.RNN(input_size=1, hidden_size=hidden_size, num_layers=1, batch_first=True)
        self.head = torch.nn.Linear(hidden_size, 1)

    def forward(self, x, h):
        """x: (B, T, 1), h: (1, B, H) or None -> prediction (B, T, 1), h_n (1, B, H)."""
        y, h_n = self.rnn(x, h)
        return self.head(y), h_n


def window(k: int, length: int = 10):
    """t, sin(t), cos(t) at ``length`` points of [k*pi, (k+1)*pi), shaped (1, length, 1)."""
    t = k * math.pi + math.pi * torch.arange(length, dtype=torch.float32) / length
    return t, torch.sin(t).view(1, length, 1), torch.cos(t).view(1, length, 1)


def train(steps: int = 300, impl: str = "fastrnn", seed: int = 0, lr: float = 0.02):
    """Train; returns (losses, last window's t, target, prediction)."""
    torch.manual_seed(seed)
    model = SineToCosine(rnn_library(impl))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.MSELoss()
    losses, h = [], None
    for k in range(steps):
        t, x, target = window(k)
        prediction, h = model(x, h)
        h = h.detach()  # carry the state into the next window, but not its graph
        loss = loss_fn(prediction, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses, t, target.flatten(), prediction.detach().flatten()


def plot(losses, t, target, prediction, path: Path, impl: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(t.numpy(), target.numpy(), "o-", label="target cos(t)")
    left.plot(t.numpy(), prediction.numpy(), "x--", label="prediction")
    left.set_xlabel("t")
    left.set_title(f"last window ({impl})")
    left.legend()
    right.semilogy(losses)
    right.set_xlabel("step (window)")
    right.set_ylabel("MSE")
    right.set_title("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(steps: int = 300, impl: str = "fastrnn", out: str | Path = DEFAULT_OUT, seed: int = 0) -> list[float]:
    """Train, plot to ``out/sine_to_cosine.png``, return the loss of every step."""
    losses, t, target, prediction = train(steps=steps, impl=impl, seed=seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot(losses, t, target, prediction, out / "sine_to_cosine.png", impl)
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", choices=("fastrnn", "torch"), default="fastrnn")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    losses = main(steps=args.steps, impl=args.impl, out=args.out, seed=args.seed)
    tail = losses[-20:]
    print(f"{args.impl}: first loss {losses[0]:.4f}, final loss {losses[-1]:.5f}, "
          f"mean of the last {len(tail)} {sum(tail) / len(tail):.5f}")
    print(f"wrote {Path(args.out) / 'sine_to_cosine.png'}")
