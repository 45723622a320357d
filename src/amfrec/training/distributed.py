"""Data-parallel training under torchrun: every rank holds the whole (frozen) backbone and the adapter,
reads its slice of each global batch, and the adapter's gradients are averaged across ranks before the
identical optimiser step on every rank (what DistributedDataParallel does; it is done here by hand because
the adapter is not called through one `forward` that DDP could wrap: the model reads its item table, user
projector and head at several places). Each rank validates its share of the validation users
(`rank_share`), and the metric is their mean over every rank (`mean_over_ranks`). After training, every rank
scores its share of the calibration and test users too and the rows are gathered (`gather_rows`); choices
are made on rank 0 and sent to every rank (`from_main`); only rank 0 writes files.

`train.batch_size` stays the global batch: with W ranks each reads batch_size / W rows, so a W-process run
takes the same steps as one process (equal to float rounding). Backend: gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Ranks:
    """The process group torchrun describes in the environment (joined on the first call); one process
    without torchrun. The backend is nccl where CUDA is available, else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        log.info("rank %d of %d joined (%s)", dist.get_rank(), world, backend)
    return Ranks(rank=dist.get_rank(), world=dist.get_world_size())


def shard(ranks: Ranks, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """This rank's contiguous slice of each (B, ...) tensor; B must divide by the world size. Four tensors
    (history, candidates, target (P, ...), lengths (B,)) are P windows in B chunks: sliced by chunk."""
    if ranks.world == 1:
        return tensors
    if len(tensors) == 4:
        *windows, lengths = tensors
        part = _rank_slice(ranks, len(lengths))
        ends = torch.cumsum(lengths, 0).tolist()
        lo, hi = (ends[part.start - 1] if part.start else 0), ends[part.stop - 1]
        return (*(t[lo:hi] for t in windows), lengths[part])
    part = _rank_slice(ranks, tensors[0].shape[0])
    return tuple(t[part] for t in tensors)


def _rank_slice(ranks: Ranks, b: int) -> slice:
    if b % ranks.world:
        raise ValueError(f"train.batch_size {b} is not divisible by the {ranks.world} processes")
    part = b // ranks.world
    return slice(ranks.rank * part, (ranks.rank + 1) * part)


def rank_share(ranks: Ranks, n: int) -> torch.Tensor:
    """(n // world or one more,) long: the rows of n this rank evaluates, every world-th from its rank (so
    every rank gets a like mix of a split sorted by anything)."""
    return torch.arange(ranks.rank, n, ranks.world)


def gather_rows(ranks: Ranks, part: torch.Tensor, n: int) -> torch.Tensor:
    """(n, ...) on every rank: the rows of n that each rank computed for its ``rank_share``, put back in
    order. part: this rank's (len(rank_share(ranks, n)), ...) rows. One process: ``part``."""
    if ranks.world == 1:
        return part
    per_rank = -(-n // ranks.world)  # the largest share; the others are padded to it for all_gather
    padded = torch.zeros((per_rank, *part.shape[1:]), dtype=part.dtype, device=_comm_device())
    padded[: len(part)] = part
    gathered = [torch.empty_like(padded) for _ in range(ranks.world)]
    dist.all_gather(gathered, padded)
    full = part.new_empty((n, *part.shape[1:]))
    for r, rows in enumerate(gathered):
        share = len(range(r, n, ranks.world))
        full[r : n : ranks.world] = rows[:share].to(part.device)
    return full


def from_main(ranks: Ranks, value: object) -> object:
    """Rank 0's `value` on every rank (a choice made once, so that every rank applies the same one)."""
    if ranks.world == 1:
        return value
    box = [value if ranks.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(ranks: Ranks, value: float, n: int) -> float:
    """The mean over every rank's examples of a per-example mean: ``value`` over this rank's ``n`` examples
    (ignored when n is 0), weighted by n, summed in float64. One process: ``value``."""
    if ranks.world == 1:
        return value
    total = torch.tensor([value * n if n else 0.0, float(n)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return float(total[0] / total[1])


def average_gradients(ranks: Ranks, params: list[nn.Parameter]) -> None:
    """Replace every gradient by its mean over the ranks (one flattened all-reduce)."""
    if ranks.world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ranks.world
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def _comm_device() -> torch.device:
    """Where collective tensors must live: this rank's GPU under nccl (which moves no CPU tensor), else the
    CPU (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def leave_process_group() -> None:
    """The end of a torchrun command: wait for every rank, then close the process group. (A rank that
    exits while another still uses the group can abort in gloo's teardown: "terminate called without an
    active exception".) Nothing without a process group."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        dist.barrier()
