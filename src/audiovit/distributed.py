"""Several processes under ``torchrun``: the process group, this process's rank, and the few
collectives training and prediction need. With one process every function is a no-op.

    torchrun --nproc_per_node 2 -m audiovit train DATA --out RUN       # gloo on CPU, NCCL on GPU
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    return world_size() > 1


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun described in the environment (once) and return this
    process's device: ``cuda:LOCAL_RANK`` when training on CUDA, else ``device``."""
    if not active():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # On CUDA: NCCL for the model's tensors, gloo for the few CPU-side scalars (all_sum's
        # loss and clip counts, the skip-step vote), which NCCL cannot carry.
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return device


def cleanup(ok: bool = True) -> None:
    """Leave the process group. After a normal end (``ok``) every rank first waits for the
    others, so no rank closes its connections while another still talks to it (gloo aborts a
    process whose peer hangs up mid-collective); after an error a barrier could hang, so none."""
    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if active() and dist.is_initialized():
        dist.barrier()


def all_sum(values: Sequence[float], device: torch.device | None = None) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64)."""
    if not (active() and dist.is_initialized()):
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (picklable objects)."""
    if not (active() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every world_size-th one, starting at its rank."""
    return list(items[rank() :: world_size()])
