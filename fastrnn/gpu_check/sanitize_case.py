"""One resident and one cooperative launch (forward and backward) of a small fp16 LSTM, for
``compute-sanitizer`` to watch (run by :func:`fastrnn.gpu_check.extras.sanitizer`).

The cooperative tier's grid barrier waits at most ``BARRIER_TIMEOUT_US``; under the
sanitizer every instruction is much slower, so that limit is raised here (to 60 s) so that a
slow barrier is not mistaken for a missing program.
"""

from __future__ import annotations

import os

import torch

import fastrnn


def main() -> None:
    os.environ["FASTRNN_SELF_CHECK"] = "0"  # only the two launches under test
    try:
        from fastrnn.kernels import cooperative

        cooperative.BARRIER_TIMEOUT_US = 60_000_000
    except (ImportError, AttributeError):
        pass
    torch.manual_seed(0)
    for tier in ("resident", "cooperative"):
        os.environ["FASTRNN_TIER"] = tier
        model = fastrnn.LSTM(32, 32, backend="triton", device="cuda", dtype=torch.float16)
        x = torch.randn(4, 5, 32, device="cuda", dtype=torch.float16, requires_grad=True)
        y, _ = model(x)
        y.float().sum().backward()
        torch.cuda.synchronize()
        print(f"sanitize_case: {tier} ran", flush=True)
    print("sanitize_case: done", flush=True)


if __name__ == "__main__":
    main()
