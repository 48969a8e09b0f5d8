"""``python -m fastrnn.gpu_check --out DIR [--dry-run] [--quick] [--budget-s 420]``: prove fastrnn
on a GPU in one prepared command.

In order, within a time budget (new work stops starting at ``--budget-s``; whatever was
gathered is still written):

1. Correctness, on the device against torch.nn (cuDNN) and a float64 run: the first-use
   self-check's verdict per persistent tier; a grid of every kernel tier forced in turn (the
   cooperative tier's register variants of 16 and 64 rows and its tiled variant, each reached
   by its batch size) x every defined cell kind (a custom cell from
   ``examples/custom_cell.py`` against the reference backend) x fp32 IEEE, TF32, fp16, bf16 x
   padded / packed (unsorted lengths) x a 2-layer bidirectional stack with h0 / one layer
   without, every output and gradient compared (:mod:`.checks`, tolerances in :mod:`.plan`),
   ordered so that its first cases cover every pair of values; one anchor shape per tier; a
   barrier stress (back-to-back cooperative launches, and on two streams); torch.compile
   (reduce-overhead) against eager; a model on ``cuda:1``; compute-sanitizer racecheck and
   synccheck (:mod:`.extras`).
2. Speed against cuDNN at the benchmark suite's CUDA anchors, ``auto`` and each tier forced,
   interleaved rounds (:mod:`.timing`).
3. ``DIR/gpu-<device>.json``, ``.png`` and ``.md`` (:mod:`.report`). Exit status 1 on any
   correctness failure, 2 when it cannot run here, 3 when stopped by SIGTERM / SIGINT before
   the end with no failure so far (what was gathered is written either way).

``--dry-run`` walks the same code on the CPU in Triton's interpreter (tiny shapes, the
reference backend standing in for cuDNN, timing rows marked as not measurements).
"""

from .run import main

__all__ = ["main"]
