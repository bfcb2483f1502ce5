"""How far does one ``make run`` training draw from the default's mean? ``l2l-train run`` of
``params.yaml`` as the DVC train stage runs it (``train.processes`` ranks, the same data and
pretrained encoder), once per seed; and any params change, paired with it seed by seed.

    .venv/bin/python benchmarks/default_seeds.py --seeds 22 23 24 25
    .venv/bin/python benchmarks/default_seeds.py --seeds 22 23 \\
        --arm poly05 train.poly_power=0.5 --arm warmup300 train.spm_warmup_steps=300

Needs ``dvc repro`` first (data, priors, ``pretrain.out``). Each run trains under
``--work/<arm>/s<seed>`` from a copy of ``params.yaml`` with ``train.seed``, the arm's
``KEY=VALUE`` overrides (dotted keys, YAML values) and its own ``paths.models`` /
``paths.metrics``; a finished run with the same params is reused, an interrupted one
resumes, and one trained with other params stops the script (move its folder away; a folder
whose params ``l2l-train run`` rejected before its first checkpoint is taken over). Runs go one at a
time, each on every core: run nothing else meanwhile. Per run: validation oIoU per epoch, the
best, samples/s, and the last epoch's raw and fused prior IoU on unlabelled pairs (figure 9)
and pseudo-label accuracy. Per arm: mean ± std of the best over the seeds and, paired with the
default on each seed, the difference. Writes ``results/default_seeds.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch
import yaml
from common import (
    L2L_TRAIN,
    REPO,
    RESULTS,
    describe_machine,
    mean_std,
    merge_nested,
    run_command,
    write_result,
)

DEFAULT = "default"
# Last-epoch unlabelled figures reported per run (l2l-train run's u/ metrics).
LAST_EPOCH = ("u/prior_raw_oIoU", "u/prior_fused_oIoU", "u/pseudo_accuracy")


def parse_arm(tokens: list[str]) -> tuple[str, dict[str, Any]]:
    """``NAME KEY=VALUE ...`` -> (name, nested overrides); values are parsed as YAML."""
    name, *assignments = tokens
    if name == DEFAULT or "=" in name:
        raise SystemExit(f"--arm {' '.join(tokens)}: expected a name other than {DEFAULT!r} first")
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise SystemExit(f"--arm {name}: expected KEY=VALUE, got {assignment!r}")
        *sections, leaf = key.split(".")
        node = overrides
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = yaml.safe_load(value)
    return name, overrides


def run_params(base: dict, overrides: dict, seed: int, folder: Path) -> dict:
    """``base`` with the arm's overrides, ``train.seed`` and the run's own output folders."""
    own = {
        "train": {"seed": seed},
        "paths": {"models": str(folder / "models"), "metrics": str(folder / "metrics")},
    }
    return merge_nested(merge_nested(base, overrides), own)


def history(folder: Path) -> list[dict[str, float]] | None:
    """A finished run's per-epoch metrics (its ``latest.pt``), None if it has not finished."""
    from l2l_train.checkpoint import load_checkpoint

    latest = folder / "models" / "latest.pt"
    if not latest.is_file():
        return None
    ckpt = load_checkpoint(latest, map_location="cpu")
    epochs = ckpt["config"]["train"]["epochs"]
    done = ckpt["progress"]["history"]
    return done if len(done) == epochs else None


def train(params: dict, folder: Path) -> list[dict[str, float]]:
    """The run of ``params`` in ``folder``: reused when finished, resumed from its
    ``latest.pt`` when interrupted, else trained (its log in ``folder/log.txt``)."""
    path = folder / "params.yaml"
    # Only a checkpoint makes the folder a run: params that `l2l-train run` rejected (a
    # misspelt key, say) left none, and their corrected arm may take the folder over.
    trained = (folder / "models" / "latest.pt").is_file()
    if trained and (not path.is_file() or yaml.safe_load(path.read_text()) != params):
        raise SystemExit(f"{folder} holds a run of other params: move it away to rerun it")
    if path.is_file() and (epochs := history(folder)) is not None:
        return epochs
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    log = folder / "log.txt"
    run_command([str(L2L_TRAIN), "run", "-p", str(path)], log)
    if (epochs := history(folder)) is None:
        raise SystemExit(f"{folder}: l2l-train run ended before its last epoch: see {log}")
    return epochs


def run_record(epochs: list[dict[str, float]]) -> dict[str, Any]:
    """One run's figures from its per-epoch metrics."""
    val = [e["val/oIoU"] for e in epochs if "val/oIoU" in e]
    return {
        "val_oIoU_per_epoch": val,
        "best_val_oIoU": max(val),
        "samples_per_s": statistics.mean(e["speed/samples_per_s"] for e in epochs),
        "last_epoch": {key: epochs[-1][key] for key in LAST_EPOCH if key in epochs[-1]},
    }


def spread(values: list[float]) -> dict[str, float]:
    """:func:`~common.mean_std` of ``values``, as a JSON object."""
    return dict(zip(("mean", "std"), mean_std(values), strict=True))


def summarize(runs: dict[str, dict[int, dict]], seeds: list[int]) -> dict[str, Any]:
    """Per arm: the best val oIoU over the seeds and, but for the default, its difference
    from the default on each seed."""
    summary = {}
    for arm, by_seed in runs.items():
        best = [by_seed[s]["best_val_oIoU"] for s in seeds]
        entry: dict[str, Any] = {"best_val_oIoU": spread(best)}
        if arm != DEFAULT:
            diffs = [
                b - runs[DEFAULT][s]["best_val_oIoU"] for s, b in zip(seeds, best, strict=True)
            ]
            entry["paired_with_default"] = {
                **spread(diffs),
                "by_seed": dict(zip(map(str, seeds), diffs, strict=True)),
                "above": sum(d > 0 for d in diffs),
            }
        summary[arm] = entry
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[22, 23, 24, 25])
    parser.add_argument(
        "--arm",
        nargs="+",
        action="append",
        default=[],
        metavar="NAME KEY=VALUE",
        help="a params change to pair with the default (repeatable)",
    )
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks/work/default_seeds")
    parser.add_argument("--out", type=Path, default=RESULTS / "default_seeds.json")
    args = parser.parse_args(argv)

    base = yaml.safe_load(args.params.read_text())
    arms = dict([(DEFAULT, {}), *(parse_arm(tokens) for tokens in args.arm)])
    runs: dict[str, dict[int, dict]] = {}
    for arm, overrides in arms.items():
        for seed in args.seeds:
            folder = args.work / arm / f"s{seed}"
            epochs = train(run_params(base, overrides, seed, folder), folder)
            runs.setdefault(arm, {})[seed] = run_record(epochs)
            print(f"{arm} seed {seed}: best val oIoU {runs[arm][seed]['best_val_oIoU']:.4f}")
    summary = summarize(runs, args.seeds)
    for arm, entry in summary.items():
        best = entry["best_val_oIoU"]
        line = f"{arm:>16}: best val oIoU {100 * best['mean']:.1f} ± {100 * best['std']:.1f}"
        if paired := entry.get("paired_with_default"):
            line += f", paired {100 * paired['mean']:+.1f} ± {100 * paired['std']:.1f}"
        print(line)
    write_result(
        args.out,
        {
            "benchmark": "default_seeds",
            "machine": describe_machine(torch.device("cpu")),
            "params": str(args.params),
            "seeds": args.seeds,
            "arms": arms,
            "runs": {arm: {str(s): r for s, r in by_seed.items()} for arm, by_seed in runs.items()},
            "summary": summary,
        },
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
