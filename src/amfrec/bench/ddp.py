"""`amfrec bench --ddp N`: the frozen backbone's training throughput in 1 and in N data-parallel processes
(gloo on CPU, nccl on CUDA), the way `amfrec train` runs under torchrun: a fixed global batch split over the
processes, one gradient all-reduce per step (a buffer the size of an adapter, `grad_mb`), threads shared
evenly. Prints tokens/s for 1 and N processes and the scaling efficiency (speed-up / N).
"""

from __future__ import annotations

import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from amfrec.bench.train import train_step_tokens_per_s
from amfrec.hardware import cpu_flags, sync, usable_cores
from amfrec.llm.backbone import load_backbone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args: dict, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = f"cuda:{rank}" if cuda else "cpu"
    if not cuda:
        torch.set_num_threads(max(1, usable_cores() // world))
    backbone = load_backbone(args["backbone"], dtype=args["dtype"], device=device)
    grads = torch.zeros(args["grad_mb"] * 2**20 // 4, device=device)  # the adapter's gradient, float32
    local = args["batch_size"] // world
    train_step_tokens_per_s(backbone, local, args["seq_len"], args["answer_len"], 1)  # warm-up
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args["steps"]):
        train_step_tokens_per_s(backbone, local, args["seq_len"], args["answer_len"], 1)
        dist.all_reduce(grads)
    sync(device)
    wall = time.perf_counter() - t0
    dist.barrier()  # every rank done with its last all-reduce before any tears the group down (a rank that
    # destroyed it while the other was still finishing aborted with SIGABRT on a loaded machine)
    dist.destroy_process_group()
    if rank == 0:
        results.put(args["batch_size"] * args["seq_len"] * args["steps"] / wall)
    # Leave without the interpreter's and C++'s teardown: gloo's threads raced it and aborted the process
    # ("terminate called without an active exception", SIGABRT, once in CI on a loaded machine) after all
    # its work was done. The result is already in the pipe; nothing else is left to flush.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def tokens_per_s(world: int, **args) -> float:
    """Global tokens/s of `world` processes, each taking batch_size / world rows of every step."""
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(world, _free_port(), args, results), nprocs=world, start_method="spawn")
    return results.get()


def run_ddp_bench(
    n: int,
    backbone: str = "smollm2-135m",
    dtype: str = "auto",
    seq_len: int = 256,
    batch_size: int = 4,
    answer_len: int = 8,
    steps: int = 5,
    grad_mb: int = 8,
) -> str:
    """The table: tokens/s with 1 and `n` processes on the same global batch, and the scaling efficiency."""
    if n < 2:
        raise ValueError(f"--ddp needs at least 2 processes, got {n}")
    if batch_size % n:
        raise ValueError(f"--batch-size {batch_size} must divide by --ddp {n}")
    args = dict(backbone=backbone, dtype=dtype, seq_len=seq_len, batch_size=batch_size,
                answer_len=answer_len, steps=steps, grad_mb=grad_mb)  # fmt: skip
    one = tokens_per_s(1, **args)
    many = tokens_per_s(n, **args)
    where = (
        f"CPU flags: {cpu_flags() or 'unknown'}; {usable_cores()} usable cores"
        if not torch.cuda.is_available()
        else f"{torch.cuda.device_count()} CUDA devices"
    )
    rows = [
        where,
        f"backbone {backbone}, global batch {batch_size} x {seq_len} tokens, {grad_mb} MB all-reduced a step",
        "| processes | train tokens/s | speed-up | scaling efficiency |",
        "|---:|---:|---:|---:|",
        f"| 1 | {one:.0f} | 1.00 | 100% |",
        f"| {n} | {many:.0f} | {many / one:.2f} | {many / one / n:.0%} |",
    ]
    return "\n".join(rows)
