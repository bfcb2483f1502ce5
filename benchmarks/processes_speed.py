"""How to spend a machine's cores on training: ranks or threads. Samples/s of ``l2l-train run``
(training time only, as its metrics report it) for the embedded default with

- ``1 rank x 1 thread``;
- ``1 rank x N threads`` (N = the cores this process may use): one process, torch's threads;
- ``N ranks x 1 thread``: ``train.processes: N``, DDP over gloo.

    .venv/bin/python benchmarks/processes_speed.py            # -> results/processes_speed.json
    .venv/bin/python benchmarks/processes_speed.py --steps 10 --rounds 1   # smoke run

A throwaway workspace is built first (synthetic data, partition, simulated-teacher priors, as
``dvc repro`` would). Each arm is a whole CLI run of ``--steps`` steps from scratch, with the
repository's model, method and per-rank batch sizes; the arms alternate over ``--rounds``
rounds (order rotating) and are compared as the median of per-round ratios to the one-process
arm with every core as threads, the default before ``train.processes``. Run nothing else
meanwhile: the arms are there to share the cores among themselves only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from common import (
    L2L_TRAIN,
    REPO,
    RESULTS,
    describe_machine,
    paired_ratio,
    synthetic_workspace,
    write_result,
)


def arms(cores: int) -> dict[str, tuple[int, int]]:
    """Arm name -> (ranks, threads per rank), the reference (every core as threads) first."""
    return {
        f"1 rank x {cores} threads": (1, cores),
        "1 rank x 1 thread": (1, 1),
        f"{cores} ranks x 1 thread": (cores, 1),
    }


def workspace_params(
    base: dict[str, Any], train_images: int, num_workers: int | None
) -> dict[str, Any]:
    """The repository's params with a smaller embedded dataset (the step does not depend on
    its size), the teacher's priors for every role a training step reads and, when given,
    ``num_workers`` DataLoader workers per stream and rank."""
    train = base["train"] if num_workers is None else {**base["train"], "num_workers": num_workers}
    return {
        **base,
        "train": train,
        "data": {
            **base["data"],
            "synthetic": {
                **base["data"]["synthetic"],
                "train_images": train_images,
                "val_images": 10,
                "test_images": 1,
            },
        },
        "priors": {**base["priors"], "splits": ["labeled", "unlabeled"]},
        "eval": {**base["eval"], "splits": ["val"]},
    }


def run_arm(params: dict[str, Any], folder: Path, ranks: int, threads: int, steps: int) -> float:
    """One ``l2l-train run`` of ``steps`` steps from scratch as ``ranks`` x ``threads``;
    returns its training samples/s."""
    params = {
        **params,
        "train": {**params["train"], "epochs": 1, "steps_per_epoch": steps, "processes": ranks},
        "paths": {
            **params["paths"],
            "models": str(folder / "models"),
            "metrics": str(folder / "metrics"),
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with (folder / "log.txt").open("w") as log:
        done = subprocess.run(
            [str(L2L_TRAIN), "run", "--params", str(folder / "params.yaml"), "--restart"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    if done.returncode != 0:  # the log's folder is temporary: show its end
        tail = (folder / "log.txt").read_text()[-3000:]
        raise RuntimeError(f"{ranks} x {threads}: l2l-train run failed:\n{tail}")
    metrics = json.loads((folder / "metrics" / "train" / "metrics.json").read_text())
    return metrics["speed"]["samples_per_s"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        raise SystemExit("processes_speed: needs at least 2 cores to compare ranks and threads")
    machine = describe_machine(torch.device("cpu"))
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    started = time.perf_counter()
    plan = arms(cores)
    names = list(plan)
    speeds: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="processes_speed-") as folder:
        root = Path(folder)
        params = yaml.safe_load(
            synthetic_workspace(
                root / "workspace", workspace_params(base, args.train_images, args.num_workers)
            ).read_text()
        )
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                ranks, threads = plan[name]
                arm_folder = root / f"round{round_index}" / f"{ranks}x{threads}"
                speeds[name].append(run_arm(params, arm_folder, ranks, threads, args.steps))
    reference = speeds[names[0]]
    return {
        "benchmark": "processes_speed",
        "command": " ".join(["benchmarks/processes_speed.py", *sys.argv[1:]]),
        "machine": machine,
        "cores": cores,
        "steps": args.steps,
        "rounds": args.rounds,
        "per_rank_batch": [params["train"]["batch_size_x"], params["train"]["batch_size_u"]],
        "num_workers": params["train"]["num_workers"],
        "samples_per_s": speeds,
        "ratio_to_reference": {name: paired_ratio(speeds[name], reference) for name in names},
        "reference": names[0],
        "wall_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=80, help="training steps per arm run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per arm, interleaved")
    parser.add_argument("--train-images", type=int, default=120)
    parser.add_argument("--num-workers", type=int, help="per stream and rank (default: params')")
    parser.add_argument("--out", type=Path, default=RESULTS / "processes_speed.json")
    args = parser.parse_args()
    result = run(args)
    write_result(args.out, result)
    print(f"{'arm':<24} {'samples/s (median)':>20} {'vs ' + result['reference']:>24}")
    for name, values in result["samples_per_s"].items():
        median = statistics.median(values)
        print(f"{name:<24} {median:>20.1f} {result['ratio_to_reference'][name]:>24.2f}")


if __name__ == "__main__":
    main()
