"""Is this checkout's training faster than another revision's? Whole ``l2l-train run``s of both,
alternating, on the same data.

    .venv/bin/python benchmarks/revision_speed.py --base HEAD~1   # -> results/revision_speed.json
    .venv/bin/python benchmarks/revision_speed.py --base main --epochs 1 --steps 20 --rounds 1

``--base`` is checked out into a git worktree under ``benchmarks/work/``; each arm runs its own
code (the CLI started from its tree) with its own ``params.yaml``, on the data of ``--data``
(``dvc repro`` first: manifests, priors, the pretrained encoder), ``--epochs`` x ``--steps``
steps, models and metrics kept apart. The arms alternate over ``--rounds`` rounds (order
rotating). Per run: the trainer's own samples/s (training steps only, as ``l2l-train run``
reports it) and the wall time of the whole command (start-up, validation and checkpoints
included); the ratios are medians of per-round ratios. Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from common import REPO, RESULTS, describe_machine, paired_ratio, rotated, write_result

WORK = REPO / "benchmarks" / "work" / "revision_speed"


def commit_of(revision: str) -> str:
    """The commit ``revision`` names in this repository."""
    return subprocess.run(
        ["git", "rev-parse", revision], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()


def worktree(revision: str) -> tuple[Path, str]:
    """A checkout of ``revision`` (made once, updated when it moved) and its commit."""
    commit = commit_of(revision)
    tree = WORK / "base"
    if not tree.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), commit], cwd=REPO, check=True
        )
    subprocess.run(["git", "checkout", "--detach", "-q", commit], cwd=tree, check=True)
    return tree, commit


def arm_params(tree: Path, data: Path, out: Path, epochs: int, steps: int) -> Path:
    """``tree``'s params.yaml reading ``data``, writing under ``out``, at the given budget."""
    params = yaml.safe_load((tree / "params.yaml").read_text())
    for name in ("prepared", "manifests", "priors"):
        params["paths"][name] = str(data / name)
    params["paths"] |= {"models": str(out / "models"), "metrics": str(out / "metrics")}
    visual = params["model"]["visual"]
    if visual.get("path") and not Path(visual["path"]).is_absolute():
        visual["path"] = str(REPO / visual["path"])
    params["train"] |= {"epochs": epochs, "steps_per_epoch": steps}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_arm(tree: Path, params: Path) -> dict[str, float]:
    """One ``l2l-train run`` from scratch with ``tree``'s code: its samples/s and wall time."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-m", "l2l_train.cli", "run", "--params", str(params), "--restart"]
    tick = time.perf_counter()
    subprocess.run(command, cwd=tree, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - tick
    metrics_dir = Path(yaml.safe_load(params.read_text())["paths"]["metrics"])
    metrics = json.loads((metrics_dir / "train" / "metrics.json").read_text())
    return {"samples_per_s": metrics["speed"]["samples_per_s"], "wall_s": wall}


def run(args: argparse.Namespace) -> dict[str, Any]:
    base_tree, base_commit = worktree(args.base)
    head_commit = commit_of("HEAD")
    data = Path(args.data).resolve()
    trees = {"base": base_tree, "this": REPO}
    params = {
        name: arm_params(tree, data, WORK / name, args.epochs, args.steps)
        for name, tree in trees.items()
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for round_index in range(args.rounds):
        for name in rotated(list(trees), round_index):
            runs[name].append(run_arm(trees[name], params[name]))
            print(f"round {round_index}: {name}: {runs[name][-1]}", flush=True)

    def series(name: str, key: str) -> list[float]:
        return [r[key] for r in runs[name]]

    return {
        "benchmark": "revision_speed",
        "command": "benchmarks/revision_speed.py",
        "machine": describe_machine(torch.device("cpu")),
        "config": {
            "base": args.base,
            "base_commit": base_commit,
            "this_commit": head_commit,
            "dirty": bool(
                subprocess.run(
                    ["git", "status", "--porcelain", "--untracked-files=no"],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                ).stdout.strip()
            ),
            "epochs": args.epochs,
            "steps_per_epoch": args.steps,
            "rounds": args.rounds,
        },
        "runs": runs,
        "samples_per_s_this_over_base": paired_ratio(
            series("this", "samples_per_s"), series("base", "samples_per_s")
        ),
        "wall_base_over_this": paired_ratio(series("base", "wall_s"), series("this", "wall_s")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--data", default=str(REPO / "data"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "revision_speed.json"))
    args = parser.parse_args()
    result = run(args)
    write_result(Path(args.out), result)
    print(
        f"this checkout: {result['samples_per_s_this_over_base']:.2f}x the training samples/s "
        f"of {args.base}, whole run {result['wall_base_over_this']:.2f}x faster"
    )


if __name__ == "__main__":
    main()
