"""A recurrent cell of one's own: a coupled input-forget LSTM (CIFG), trained on sine -> cosine.

CIFG is an LSTM whose forget gate is tied to its input gate, so it has three gate blocks
(``i, g, o``) instead of four::

    i = sigmoid(x_i + r_i)    g = tanh(x_g + r_g)    o = sigmoid(x_o + r_o)
    f = 1 - i
    c = f * c_prev + i * g
    h = o * tanh(c)

where ``x_k`` is gate ``k``'s input projection ``x W_ik^T + b_ik (+ b_hk)`` and ``r_k`` its
recurrent one ``h_prev W_hk^T``. This file defines it as a :class:`fastrnn.Cell`: its
pointwise forward and backward once in torch (the reference backend's loop, and the exact
second derivatives) and once as ``@triton.jit`` functions (every Triton kernel tier calls
them; defined only when triton imports). ``fastrnn.Recurrent(CIFG, ...)`` then is a
multi-layer, bidirectional, packed-sequence-ready module with torch's parameter names
(``weight_ih_l0`` of shape ``(3*H, I)``, ...) and ``torch.nn.LSTM``'s inputs and outputs.

The script checks the layer against a plain torch loop of the equations above (outputs,
final states, and the gradients of the input, the initial states and every parameter),
then trains it to predict cos(t) from sin(t), one window of 10 samples at a time with the
state carried over (the task of ``examples/sine_to_cosine.py``).

The backend follows ``FASTRNN_BACKEND`` (``reference`` on the CPU by default; ``triton``
on a GPU, with ``FASTRNN_TIER`` to force a kernel tier), as for every fastrnn module.

    python examples/custom_cell.py --steps 150
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import fastrnn

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


# --------------------------------------------------------------------------------------
# The cell: pointwise math in torch (tensors (rows, H)) ...
# --------------------------------------------------------------------------------------


def cifg_forward(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev):
    """``(h, c, i, g, o, -, -)``: the step's output, cell state, and the gates kept for backward."""
    i, g, o = torch.sigmoid(x0 + r0), torch.tanh(x1 + r1), torch.sigmoid(x2 + r2)
    c = (1 - i) * c_prev + i * g
    return o * torch.tanh(c), c, i, g, o, None, None


def cifg_backward(dh, dc, i, g, o, s3, e, c, c_prev, h, h_prev):
    """Gradients of the three pre-activations (input and recurrent side alike: ``b_hh`` is
    folded into the input projection) and of ``c_prev``."""
    tc = torch.tanh(c)
    dc_total = dc + dh * o * (1 - tc * tc)
    di = dc_total * (g - c_prev) * i * (1 - i)  # i enters c twice: i * g and (1 - i) * c_prev
    dg = dc_total * i * (1 - g * g)
    do = dh * tc * o * (1 - o)
    return di, dg, do, None, di, dg, do, None, None, dc_total * (1 - i)


# ... and the same math as Triton functions (register tiles in the accumulation dtype).
try:
    import triton
    import triton.language as tl  # noqa: F401  (Triton's interpreter wants it among a jit function's globals)

    from fastrnn.kernels.cells import sigmoid, tanh
except ImportError:  # no triton: the cell runs on the reference backend only
    triton = None

if triton is not None:

    @triton.jit
    def cifg_forward_triton(x0, x1, x2, x3, r0, r1, r2, r3, h_prev, c_prev):
        i = sigmoid(x0 + r0)
        g = tanh(x1 + r1)
        o = sigmoid(x2 + r2)
        c = (1.0 - i) * c_prev + i * g
        h = o * tanh(c)
        return h, c, i, g, o, o, h  # (the last two slots are unused: any tile will do)

    @triton.jit
    def cifg_backward_triton(dh, dc, i, g, o, s3, e, c, c_prev, h, h_prev):
        tc = tanh(c)
        dc_total = dc + dh * o * (1.0 - tc * tc)
        di = dc_total * (g - c_prev) * i * (1.0 - i)
        dg = dc_total * i * (1.0 - g * g)
        do = dh * tc * o * (1.0 - o)
        return di, dg, do, do, di, dg, do, do, dh, dc_total * (1.0 - i)

else:
    cifg_forward_triton = cifg_backward_triton = None


CIFG = fastrnn.Cell(
    "CIFG", 3, cifg_forward, cifg_backward, cifg_forward_triton, cifg_backward_triton, has_cell_state=True,
)


# --------------------------------------------------------------------------------------
# The check: the layer against a plain loop of the equations
# --------------------------------------------------------------------------------------


def plain_cifg(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """One CIFG layer, step by step with autograd: ``x (T, B, I)`` -> ``(y, h_n, c_n)``."""
    h, c, ys = h0, c0, []
    for x_t in x:
        gi, gg, go = (x_t @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh).chunk(3, 1)
        i, g, o = torch.sigmoid(gi), torch.tanh(gg), torch.sigmoid(go)
        c = (1 - i) * c + i * g
        h = o * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys), h, c


def check(steps: int = 6, batch: int = 3, input_size: int = 2, hidden: int = 5, device="cpu",
          dtype=None, seed: int = 0) -> dict[str, float]:
    """Largest absolute difference between ``fastrnn.Recurrent(CIFG, ...)`` and
    :func:`plain_cifg`, per output and per gradient; in float64 on the CPU, float32 on a
    GPU (whose kernel tiers are compiled for 32 bits and less) unless ``dtype`` is given."""
    if dtype is None:
        dtype = torch.float64 if torch.device(device).type == "cpu" else torch.float32
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = fastrnn.Recurrent(CIFG, input_size, hidden, device=device, dtype=dtype)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype).to(device).requires_grad_()

    x, h0, c0 = rnd(steps, batch, input_size), rnd(1, batch, hidden), rnd(1, batch, hidden)
    y, (h_n, c_n) = layer(x, (h0, c0))
    params = [layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0]
    y_ref, h_ref, c_ref = plain_cifg(x, h0[0], c0[0], *params)
    outputs = {"output": (y, y_ref), "h_n": (h_n[0], h_ref), "c_n": (c_n[0], c_ref)}
    weights = torch.randn(3, generator=gen, dtype=dtype).tolist()

    def loss(y, h, c):  # every output reaches the loss, each with its own weight
        return weights[0] * y.sin().sum() + weights[1] * h.cos().sum() + weights[2] * (c * c).sum()

    leaves = {"x": x, "h0": h0, "c0": c0, **dict(zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), params))}
    grads = torch.autograd.grad(loss(y, h_n[0], c_n[0]), list(leaves.values()))
    grads_ref = torch.autograd.grad(loss(y_ref, h_ref, c_ref), list(leaves.values()))
    diffs = {name: (a - b).abs().max().item() for name, (a, b) in outputs.items()}
    diffs.update({f"d {name}": (a - b).abs().max().item() for name, a, b in zip(leaves, grads, grads_ref)})
    return diffs


# --------------------------------------------------------------------------------------
# Training: sine -> cosine
# --------------------------------------------------------------------------------------


class SineToCosine(torch.nn.Module):
    def __init__(self, hidden_size: int = 32):
        super().__init__()
        self.rnn = fastrnn.Recurrent(CIFG, 1, hidden_size, batch_first=True)
        self.head = torch.nn.Linear(hidden_size, 1)

    def forward(self, x, state):
        """x: (B, T, 1), state: ((1, B, H), (1, B, H)) or None -> prediction (B, T, 1), state."""
        y, state = self.rnn(x, state)
        return self.head(y), state


def window(k: int, length: int = 10):
    """t, sin(t), cos(t) at ``length`` points of [k*pi, (k+1)*pi), shaped (1, length, 1)."""
    t = k * math.pi + math.pi * torch.arange(length, dtype=torch.float32) / length
    return t, torch.sin(t).view(1, length, 1), torch.cos(t).view(1, length, 1)


def train(steps: int = 150, seed: int = 0, lr: float = 0.02, device="cpu"):
    """Train; returns (losses, last window's t, target, prediction)."""
    torch.manual_seed(seed)
    model = SineToCosine().to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    losses, state = [], None
    for k in range(steps):
        t, x, target = window(k)
        prediction, state = model(x.to(device), state)
        state = tuple(s.detach() for s in state)  # carried into the next window, without its graph
        loss = torch.nn.functional.mse_loss(prediction, target.to(device))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses, t, target.flatten(), prediction.detach().cpu().flatten()


def plot(losses, t, target, prediction, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(t.numpy(), target.numpy(), "o-", label="target cos(t)")
    left.plot(t.numpy(), prediction.numpy(), "x--", label="prediction")
    left.set_xlabel("t")
    left.set_title("last window (CIFG)")
    left.legend()
    right.semilogy(losses)
    right.set_xlabel("step (window)")
    right.set_ylabel("MSE")
    right.set_title("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(steps: int = 150, out: str | Path | None = DEFAULT_OUT, seed: int = 0, device="cpu"):
    """Check the layer, train it, plot to ``out/custom_cell.png`` (unless ``out`` is None);
    returns ``(differences of the check, loss of every training step)``."""
    diffs = check(device=device)
    losses, t, target, prediction = train(steps=steps, seed=seed, device=device)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        plot(losses, t, target, prediction, out / "custom_cell.png")
    return diffs, losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    diffs, losses = main(steps=args.steps, out=args.out, seed=args.seed, device=args.device)
    dtype = "float64" if torch.device(args.device).type == "cpu" else "float32"
    print(f"CIFG layer vs a plain loop of its equations ({dtype}), largest difference: "
          f"{max(diffs.values()):.2e} ({max(diffs, key=diffs.get)})")
    tail = losses[-20:]
    print(f"training: first loss {losses[0]:.4f}, final loss {losses[-1]:.5f}, "
          f"mean of the last {len(tail)} {sum(tail) / len(tail):.5f}")
    print(f"wrote {Path(args.out) / 'custom_cell.png'}")
