"""Where a training process runs: its device and, under torchrun, its rank among the others.

Under ``torchrun`` every rank trains on its own batches inside DistributedDataParallel; the
RPLE agent's states are all-gathered before it acts and its transitions after
(:func:`gather_rows`), so every rank's agent sees the same data, draws the same noise and
stays identical without broadcasting weights. Rank 0 alone logs and writes checkpoints.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from l2l_train.config import TrainConfig


def resolve_device(kind: Literal["auto", "cpu", "cuda"], local_rank: int = 0) -> torch.device:
    """``cuda:local_rank`` for cuda (auto: when CUDA is available), else the CPU."""
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch finds no CUDA device")
    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX tiles): without
    it, bf16 autocast on the CPU emulates the type and runs slower than fp32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def amp_enabled(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether ``device`` runs the model under bf16 autocast: ``train.amp`` on a GPU,
    ``train.amp_cpu`` on a CPU that computes bf16 in hardware (:func:`cpu_computes_bf16`)."""
    if device.type == "cuda":
        return cfg.amp
    return cfg.amp_cpu and cpu_computes_bf16()


def autocast(device: torch.device, amp: bool) -> torch.autocast:
    """bf16 autocast on ``device`` where ``amp`` is on (:func:`amp_enabled`); a no-op otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


@dataclass(frozen=True)
class Runtime:
    """Where this process runs and its place among the ranks."""

    device: torch.device
    rank: int = 0
    world: int = 1
    amp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def start_runtime(cfg: TrainConfig) -> Runtime:
    """The device for this process and, under torchrun (``WORLD_SIZE`` > 1), the process
    group: nccl on GPUs, gloo on CPUs. The world must be ``cfg.processes`` ranks."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if world != cfg.processes:
        raise ValueError(
            f"train.processes is {cfg.processes} but this process is one of {world} ranks "
            f"(WORLD_SIZE): run `l2l-train run`, which starts train.processes ranks itself, "
            f"or set train.processes: {world}"
        )
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device=device, rank=rank, world=world, amp=amp_enabled(cfg, device))


def thread_share(processes: int) -> int | None:
    """Threads for each of ``processes`` processes that run at once: an equal share of the
    cores this process may use, at least one; None when ``OMP_NUM_THREADS`` is set (the
    caller's choice, which the processes inherit)."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, len(os.sched_getaffinity(0)) // processes)


def torchrun_command(processes: int, args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """argv and environment that run ``python -m l2l_train.cli *args`` as ``processes`` DDP
    ranks on this machine (torchrun, standalone rendezvous on a free port), each with its
    :func:`thread_share` of the cores: at the embedded model's size a second thread speeds a
    step less than a second rank does (``benchmarks/processes_speed.py``)."""
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "l2l_train.cli",
        *args,
    ]
    env = dict(os.environ)
    threads = thread_share(processes)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return argv, env


def stop_runtime(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather_rows(rows: Tensor, rt: Runtime) -> Tensor:
    """Every rank's rows in rank order (equal row counts per rank).

    Shapes: rows (B, ...) -> (world * B, ...).
    """
    if not rt.distributed:
        return rows
    parts = [torch.empty_like(rows) for _ in range(rt.world)]
    dist.all_gather(parts, rows.contiguous())
    return torch.cat(parts)


def broadcast_buffers(module: nn.Module, rt: Runtime) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them at
    the start of each forward, so between steps each rank holds the statistics of its own
    last batches; evaluation syncs them first so every rank scores the checkpointed model."""
    if rt.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def own_rows(rows: Tensor, rt: Runtime) -> Tensor:
    """This rank's block of rows gathered by :func:`gather_rows`."""
    batch = rows.shape[0] // rt.world
    return rows[rt.rank * batch : (rt.rank + 1) * batch]


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device`` (asynchronous from pinned memory)."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()
    }
