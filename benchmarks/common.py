"""Helpers the benchmark scripts share: the machine's description, interleaved timing, FLOP
counting and peak throughput for MFU, a throwaway synthetic workspace, and JSON results.

Timing on a noisy machine: compare arms that run in alternation (:func:`interleaved_blocks`)
as ratios of medians, never figures taken minutes apart.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# The CLIs of the venv that runs the benchmark, so runs use the same install.
L2L_TRAIN = Path(sys.executable).parent / "l2l-train"
L2L_PRIORS = Path(sys.executable).parent / "l2l-priors"

# Dense bf16 tensor-core peaks in FLOP/s (vendor datasheets, no sparsity), by a substring of
# torch.cuda.get_device_name(); the first match wins, so PCIe/NVL variants come before the
# plain name, which means the SXM part.
GPU_BF16_DENSE_PEAK: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("RTX A6000", 154.8e12),
    ("A10G", 70e12),
    ("L4", 121e12),
)


# ----------------------------------------------------------------------------- machine


def pick_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (an error naming the problem when torch sees no GPU) or ``auto``."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: expected auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch finds no CUDA device")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device) -> dict[str, Any]:
    """Device name, torch version, threads, CPU count and the load average over 1, 5 and 15
    minutes (a shared machine's other work slows every figure), for every result file."""
    info: dict[str, Any] = {
        "device": device.type,
        "device_name": cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "device_name": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
        }
    return info


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers what it launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- timing


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """The arms' order in round ``round_index``: each arm goes first in turn, so drift in the
    machine's speed hits all of them alike."""
    shift = round_index % len(names)
    return [*names[shift:], *names[:shift]]


def interleaved_blocks(
    arms: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    block: int,
    warmup: int,
    settle: int,
    device: torch.device,
) -> dict[str, list[float]]:
    """Mean seconds per call of each arm, one figure per round.

    Each arm first runs ``warmup`` untimed calls. Then every round runs each arm for a block
    of ``block`` consecutive calls, the arms' order rotating from round to round so drift in
    the machine's speed hits all of them alike. The first ``settle`` calls of every block are
    run but not timed: work the previous arm left in flight (a DataLoader's workers refilling
    their prefetch queue, say) lands there instead of in this arm's figure.

    Returns: arm name -> ``rounds`` block means, in round order.
    """
    if not 0 <= settle < block:
        raise ValueError(f"settle: expected 0 <= settle < block ({block}), got {settle}")
    for call in arms.values():
        for _ in range(warmup):
            call()
    synchronize(device)
    names = list(arms)
    means: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in rotated(names, round_index):
            for _ in range(settle):
                arms[name]()
            synchronize(device)
            start = time.perf_counter()
            for _ in range(block - settle):
                arms[name]()
            synchronize(device)
            means[name].append((time.perf_counter() - start) / (block - settle))
    return means


def summarize(seconds: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the values themselves."""
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "values_s": list(seconds),
    }


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of the per-round ratios of two interleaved arms: each ratio compares figures
    taken moments apart, so slow drift of the machine cancels."""
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))


# ----------------------------------------------------------------------------- FLOPs


def _cpu_attention_formulas() -> dict[Any, Callable[..., int]]:
    """FlopCounterMode knows the CUDA fused-attention kernels but not the CPU one, which
    scaled_dot_product_attention picks on the CPU; it does the same matmuls. Formulas take
    shapes (FlopCounterMode converts the tensors)."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    def forward(query, key, value, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(query, key, value)

    def backward(
        grad_out, query, key, value, *args: Any, out_shape: Any = None, **kwargs: Any
    ) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)

    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }


@dataclass(frozen=True)
class FlopCount:
    total: int
    by_module: dict[str, int]  # dotted module path (as FlopCounterMode names it) -> FLOPs

    def children(self, root: str) -> dict[str, int]:
        """FLOPs per child of module ``root``. A child that never runs itself (a ModuleList)
        is the sum of its shallowest members that do. Attribution is exact for forward
        passes; backward ops are attributed only approximately by FlopCounterMode."""
        shallowest: dict[str, int] = {}
        for name in self.by_module:
            parts = name.split(".")
            if name.startswith(root + ".") and len(parts) > 1:
                child = parts[1]
                shallowest[child] = min(shallowest.get(child, len(parts)), len(parts))
        totals: dict[str, int] = {}
        for name, flops in self.by_module.items():
            parts = name.split(".")
            if name.startswith(root + ".") and len(parts) == shallowest.get(parts[1]):
                totals[parts[1]] = totals.get(parts[1], 0) + flops
        return totals


def count_flops(fn: Callable[[], Any]) -> tuple[Any, FlopCount]:
    """Run ``fn`` once under FlopCounterMode; returns its result and the FLOPs counted
    (matmuls, convolutions and attention, forward and backward; elementwise ops are not
    counted, as usual for MFU), in all and per module."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())
    with counter:
        result = fn()
    by_module = {
        name: sum(counts.values())
        for name, counts in counter.get_flop_counts().items()
        if name != "Global"
    }
    return result, FlopCount(counter.get_total_flops(), by_module)


def matmul_flops_per_s(
    device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5
) -> float:
    """Best FLOP/s of a ``size``-square matmul in ``dtype`` over ``repeats`` timed calls
    (after one untimed call): what this machine attains on the easiest dense work."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def gpu_bf16_peak(name: str) -> float | None:
    """Datasheet dense bf16 FLOP/s of a GPU by its torch name; None when not in the table."""
    return next((peak for key, peak in GPU_BF16_DENSE_PEAK if key in name), None)


def peak_flops(device: torch.device) -> dict[str, Any]:
    """The peak MFU divides by, and where it comes from.

    CUDA: the datasheet dense bf16 peak of the device (a measured bf16 matmul where the
    device is not in :data:`GPU_BF16_DENSE_PEAK`). CPU: no datasheet figure is at hand, so
    the best measured fp32 matmul on this machine with torch's threads stands in for it.
    Both report the measured matmul too.

    Returns: ``{"flops_per_s", "source", "matmul_flops_per_s"}``.
    """
    if device.type == "cuda":
        measured = matmul_flops_per_s(device, torch.bfloat16, 8192)
        name = torch.cuda.get_device_name(device)
        datasheet = gpu_bf16_peak(name)
        if datasheet is not None:
            source = f"datasheet dense bf16 peak of {name}"
            return {"flops_per_s": datasheet, "source": source, "matmul_flops_per_s": measured}
        source = f"measured 8192^2 bf16 matmul ({name} is not in the datasheet table)"
        return {"flops_per_s": measured, "source": source, "matmul_flops_per_s": measured}
    measured = matmul_flops_per_s(device, torch.float32, 2048)
    source = f"measured 2048^2 fp32 matmul on this CPU, {torch.get_num_threads()} threads"
    return {"flops_per_s": measured, "source": source, "matmul_flops_per_s": measured}


# ----------------------------------------------------------------------------- data


def merge_nested(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge_nested(merged[key], value)
        else:
            merged[key] = value
    return merged


def synthetic_workspace(root: Path, overrides: Mapping[str, Any]) -> Path:
    """A self-contained embedded workspace under ``root``, built the way ``dvc repro``
    builds ``data/``: the synthetic dataset, its labelled/unlabelled partition and the
    configured teacher's priors for ``priors.splits``.

    ``overrides``: params.yaml sections on top of the defaults (nested keys merged), e.g.
    ``{"data": {"synthetic": {"train_images": 40}}}``; data and paths always point under
    ``root``. Returns the written ``root/params.yaml``.
    """
    from pipeline.config import load_pipeline_config
    from pipeline.offline import run_offline_stages

    inside = {
        "data": {"synthetic": {"dir": str(root / "synthetic")}},
        "paths": {
            name: str(root / name)
            for name in ("prepared", "manifests", "priors", "models", "metrics")
        },
    }
    params = merge_nested(dict(overrides), inside)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    run_offline_stages(load_pipeline_config(path))
    return path


# ----------------------------------------------------------------------------- runs


def run_command(args: list[str], log: Path, threads: int | None = None) -> float:
    """Run ``args`` in the repository with stdout and stderr appended to ``log`` (``threads``:
    its OMP_NUM_THREADS); returns wall seconds. A non-zero exit raises, naming the log."""
    env = None if threads is None else os.environ | {"OMP_NUM_THREADS": str(threads)}
    tick = time.perf_counter()
    with log.open("a") as out:
        done = subprocess.run(
            args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: see {log}")
    return time.perf_counter() - tick


def mean_std(values: Sequence[float | None]) -> tuple[float, float] | None:
    """Mean and sample std of the values present (std 0 for one), None for none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else 0.0


def summarize_gains(gains: Sequence[float]) -> dict:
    """Mean, sample std (0 for one checkpoint) and how many of the gains are positive."""
    return {
        "mean": statistics.fmean(gains),
        "std": statistics.stdev(gains) if len(gains) > 1 else 0.0,
        "positive": sum(g > 0 for g in gains),
        "checkpoints": len(gains),
    }


# ----------------------------------------------------------------------------- results


def write_result(path: Path, result: Mapping[str, Any]) -> None:
    """Write ``result`` as indented JSON, atomically (a temp file renamed over ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
