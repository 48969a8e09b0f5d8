"""Distributed training and activation checkpointing with fastrnn layers (compatibility table).

- DDP and FSDP2 (``fully_shard``) on two CPU processes (gloo): each rank runs half of the
  batch; the synchronised gradients equal the gradients of the whole batch on one process,
  and equal torch.nn's under DDP.
- ``torch.utils.checkpoint`` (reentrant and not): recomputation gives the gradients of the
  plain run.
Float64; the reductions sum the same terms in another order -> the float64 TOL.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.checkpoint import checkpoint

import fastrnn
from helpers import TOL

F64 = torch.float64
WORLD = 2


def _model(impl):
    torch.manual_seed(0)
    return getattr(impl, "LSTM")(3, 4, num_layers=2, dtype=F64)


def _batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(5, 4, 3, generator=gen, dtype=F64)


def _worker(rank, path, wrapper, out_dir):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=WORLD)
    try:
        for impl_name, impl in (("fastrnn", fastrnn), ("torch", torch.nn)):
            if wrapper == "fsdp" and impl_name == "torch":
                continue  # FSDP of torch.nn.LSTM is not the comparison here (see the test)
            model = _model(impl)
            if wrapper == "ddp":
                wrapped = torch.nn.parallel.DistributedDataParallel(model)
            else:
                from torch.distributed.fsdp import fully_shard

                wrapped = fully_shard(model)
            x = _batch()[:, rank * 2 : (rank + 1) * 2]
            out, _ = wrapped(x)
            # mean over the whole batch: each rank's share, DDP/FSDP average across ranks
            (out.pow(2).sum() / 2).backward()
            grads = []
            for p in model.parameters():
                g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                grads.append(g.detach().clone())
            if rank == 0:
                torch.save(grads, os.path.join(out_dir, f"{wrapper}-{impl_name}.pt"))
            del wrapped, model, out
        # Both ranks done before either tears the group down: a rank that destroyed its gloo
        # group while the other still used it aborted once in CI ("terminate called without an
        # active exception", SIGABRT).
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp"])
def test_data_parallel_gradients_equal_the_whole_batch(wrapper, tmp_path):
    path = tempfile.mktemp(dir=tmp_path)
    mp.start_processes(_worker, args=(path, wrapper, str(tmp_path)), nprocs=WORLD, start_method="spawn")
    model = _model(fastrnn)
    out, _ = model(_batch())
    (out.pow(2).sum() / (2 * WORLD)).backward()
    got = torch.load(tmp_path / f"{wrapper}-fastrnn.pt")
    assert len(got) == len(list(model.parameters()))
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad, **TOL[F64])
    if wrapper == "ddp":
        for g, t in zip(got, torch.load(tmp_path / "ddp-torch.pt")):
            torch.testing.assert_close(g, t, **TOL[F64])


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_activation_checkpointing(use_reentrant, backend):
    torch.manual_seed(0)
    model = fastrnn.GRU(3, 4, num_layers=2, dtype=F64, backend=backend)
    x0 = _batch()
    grads = []
    for mode in ("plain", "checkpoint"):
        x = x0.clone().requires_grad_()
        if mode == "plain":
            out, h = model(x)
        else:
            out, h = checkpoint(model, x, use_reentrant=use_reentrant)
        (out.sin().sum() + h.pow(2).sum()).backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in model.parameters()])
        model.zero_grad()
    for a, e in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, e, **TOL[F64])
