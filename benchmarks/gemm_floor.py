"""The GEMM floor of the LayerNorm variants' CPU cases: how much of the eager loop's time
(``test_variants.EagerLayerNorm``, the baseline of ``LNLSTM`` / ``LNGRU``) is the matrix
products any implementation of the layer computes, timed alone with torch's GEMM.

Forward: the input projection of all steps and one ``h @ W_hh^T`` per step. Backward: one
``dr @ W_hh`` per step, then ``dW_hh``, ``dW_ih`` and ``dx`` as whole-sequence products.
A floor over 0.5 of the eager loop's time means no implementation built on this GEMM meets
the 0.5x target there. A second bound needs no GEMM library at all: the forward's
multiply-adds (``2 * rows * K * N`` per product) at the best rate this machine reaches, that of
one large square product (4096^3, torch's GEMM: its peak, not what 64-row steps get). Prints
the fastest of 7 runs of each, in ms::

    python benchmarks/gemm_floor.py
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastrnn  # noqa: E402
from test_variants import EagerLayerNorm  # noqa: E402

CASES = [(100, 32, 256), (50, 64, 512)]  # (T, B, H = input size): the grid's two largest


def fastest(fn, runs: int = 7) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def peak_gflops(n: int = 4096) -> float:
    """The best fp32 GEMM rate here: one ``n x n x n`` product, GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / fastest(lambda: a @ b) / 1e6


def main():
    torch.manual_seed(0)
    peak = peak_gflops()
    print(f"peak: {peak:.0f} GFLOP/s (a 4096^3 product)")
    for cls, gates in ((fastrnn.LayerNormLSTM, 4), (fastrnn.LayerNormGRU, 3)):
        for steps, batch, hidden in CASES:
            layer = cls(hidden, hidden)
            eager = EagerLayerNorm(layer)
            x = torch.randn(steps, batch, hidden)
            xr = x.clone().requires_grad_()
            grad_y = torch.randn(steps, batch, hidden)
            w_ih, w_hh = torch.randn(gates * hidden, hidden), torch.randn(gates * hidden, hidden)
            bias, h = torch.randn(gates * hidden), torch.randn(batch, hidden)
            xg = torch.empty(steps * batch, gates * hidden)
            dr, dh = torch.randn(steps * batch, gates * hidden), torch.empty(batch, hidden)
            rows = x.view(steps * batch, hidden)

            def forward_gemms():
                torch.addmm(bias, rows, w_ih.t(), out=xg)
                for t in range(steps):
                    torch.addmm(bias, h, w_hh.t(), out=xg[t * batch:(t + 1) * batch])

            def backward_gemms():
                for t in range(steps):
                    torch.mm(dr[t * batch:(t + 1) * batch], w_hh, out=dh)
                dr.t() @ rows, dr.t() @ rows, dr @ w_ih

            with torch.no_grad():
                eager_f, gemm_f = fastest(lambda: eager(x)), fastest(forward_gemms)
            eager_fb = fastest(lambda: eager(xr)[0].backward(grad_y))
            gemm_fb = gemm_f + fastest(backward_gemms)
            at_peak = 2 * 2 * steps * batch * hidden * gates * hidden / peak / 1e6  # input + recurrent products
            print(f"{cls.__name__} T={steps} B={batch} H={hidden}: forward eager {eager_f:.1f}, GEMMs {gemm_f:.1f} "
                  f"({gemm_f / eager_f:.2f}), its multiply-adds at peak {at_peak:.1f} ({at_peak / eager_f:.2f}); "
                  f"forward+backward eager {eager_fb:.1f}, GEMMs {gemm_fb:.1f} ({gemm_fb / eager_fb:.2f})")


if __name__ == "__main__":
    main()
