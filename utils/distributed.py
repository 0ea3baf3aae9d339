"""Distributed data parallel with PyTorch's own ``torch.distributed``, launched by ``torchrun``.

``torchrun`` starts one process per GPU (or per CPU slot) and sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` (plus the rendezvous address); one node::

    torchrun --nproc_per_node 4 train.py --config configs/cityscapes.yaml

two nodes (run the same line on each, with the first node's address)::

    torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d \\
             --rdzv-endpoint node0.example.org:29500 --rdzv-id cityscapes-run \\
             train.py --config configs/cityscapes.yaml

Without those variables everything here is a single process and every helper
is a no-op. The backend is NCCL on GPUs and gloo on the CPU.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Sized

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs, metrics and TensorBoard."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(device: torch.device) -> tuple:
    """Join the process group torchrun describes; returns (DistInfo, this process's device).

    On CUDA each process takes the GPU of its ``LOCAL_RANK``; the CPU uses gloo.
    """
    if not launched_by_torchrun():
        return DistInfo(), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs are visible; "
                               "lower --nproc_per_node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, local, world), device


def cleanup() -> None:
    if initialized():
        dist.destroy_process_group()


def _reduce_device(fallback: torch.device) -> torch.device:
    return fallback if dist.get_backend() == "nccl" else torch.device("cpu")


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any process (e.g. Ctrl-C reached one of them), so all stop together."""
    if not initialized():
        return flag
    value = torch.tensor([1 if flag else 0], device=_reduce_device(device))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(values: Dict[str, float], device: torch.device) -> Dict[str, float]:
    """Average each float over the processes (every process must pass the same keys)."""
    if not initialized() or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_reduce_device(device))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist()))


def sum_over_ranks(value: float, device: torch.device) -> float:
    if not initialized():
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_reduce_device(device))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process.

    DDP broadcasts buffers before each training forward, so after the last one
    every process holds running statistics updated by its own batch. Without
    this, each process would validate its shard with slightly different
    weights from the ones rank 0 saves.
    """
    if not initialized():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def barrier() -> None:
    if initialized():
        dist.barrier()


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: every sample exactly once over all processes.

    Used for validation: ``DistributedSampler`` pads the split with repeated
    samples to make the shards equal, which would count those images twice in
    the confusion matrix. Here shards differ by at most one sample and the
    summed matrix equals the single-process one exactly.
    """

    def __init__(self, data: Sized, rank: int, world_size: int) -> None:
        self.indices: List[int] = list(range(rank, len(data), world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
