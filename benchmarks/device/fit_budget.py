"""Steps per epoch of the ablation's runs that fit a time budget, from a calibration: the
same runs, all at once as the real table will run them, for one epoch of a few steps.

    python benchmarks/device/fit_budget.py CALIB_WORK SECONDS EPOCHS [--cap N]

For each calibration run (``<work>/<row>/seed<k>/``, as ``benchmarks/ablation.py`` leaves
it): the training loop's seconds per step once warm, one validation (the log's seconds from
the epoch's last step line to its epoch line), the rest of its training process's wall time
(start-up, data, text cache, the first steps' warm-up) and its ``l2l-train eval`` seconds.
A run of EPOCHS epochs of S steps then takes
``start-up + EPOCHS * (S * step + validation) + eval``; prints the largest S (a multiple
of 10, at most ``--cap``) with which the slowest run fits SECONDS, or 0 when none does.

Seconds per step once warm: the loop logs every 50 steps the epoch's mean speed so far, so
two step lines give the time between them. On a GPU the first steps (CUDA context, kernel
selection) are several times slower than the rest, so the calibration should run one epoch
of at least 100 steps, a multiple of 50; with fewer, the epoch's mean is used (safe, slow).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path

STAMP = r"\[(\d\d/\d\d/\d\d \d\d:\d\d:\d\d)\]"


def run_costs(folder: Path) -> dict[str, float]:
    """Seconds per step once warm, per validation, of start-up and of the final eval of one
    calibration run (one epoch)."""
    result = json.loads((folder / "result.json").read_text())
    log = (folder / "log.txt").read_text()
    # (step, the epoch's mean samples/s up to it) of every step line
    lines = [
        (int(k), float(v)) for k, v in re.findall(r"step (\d+)/\d+ .* ([\d.]+) samples/s", log)
    ]
    # The log leaves out a time stamp equal to the line before's: a step line without one
    # makes the validation look longer (a safe error).
    stamps = re.findall(STAMP + r" INFO +(step|epoch) ", log)
    if not lines or len(stamps) < 2 or [k for _, k in stamps[-2:]] != ["step", "epoch"]:
        raise SystemExit(
            f"{folder}: no step line before the epoch line in log.txt; the calibration needs "
            "one epoch of at least 50 steps (the loop logs every 50)"
        )
    steps_per_s = float(re.findall(r"([\d.]+) steps/s", log)[-1])  # the epoch line's
    steps = result["budget"]["steps_per_epoch"]
    if result["budget"]["epochs"] != 1:
        raise SystemExit(f"{folder}: a calibration run has one epoch")
    step_s = 1 / steps_per_s
    if len(lines) >= 2 and lines[-1][0] == steps:
        # Samples per step from the epoch's end, then the clock at each of the last two lines.
        samples = lines[-1][1] / steps_per_s
        (k1, c1), (k2, c2) = lines[-2:]
        step_s = samples * (k2 / c2 - k1 / c1) / (k2 - k1)
    validation = (when(stamps[-1][0]) - when(stamps[-2][0])).total_seconds() + 1  # 1 s stamps
    return {
        "step_s": step_s,
        "validation_s": validation,
        "startup_s": max(0.0, result["train_s"] - steps / steps_per_s - validation),
        "eval_s": result["eval_s"],
    }


def when(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%m/%d/%y %H:%M:%S")


def fit_steps(costs: list[dict[str, float]], seconds: float, epochs: int, cap: int) -> int:
    """The largest multiple of 10 steps per epoch (<= cap) that every run fits in ``seconds``."""
    best = cap
    for c in costs:
        room = seconds - c["startup_s"] - c["eval_s"] - epochs * c["validation_s"]
        best = min(best, int(room / (epochs * c["step_s"])))
    return max(0, best // 10 * 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("seconds", type=float)
    parser.add_argument("epochs", type=int)
    parser.add_argument("--cap", type=int, default=600)
    args = parser.parse_args()
    folders = sorted(p.parent for p in args.work.glob("*/seed*/result.json"))
    if not folders:
        raise SystemExit(f"{args.work}: no finished calibration run (*/seed*/result.json)")
    costs = [run_costs(folder) for folder in folders]
    for folder, c in zip(folders, costs, strict=True):
        print(
            f"{folder.parent.name}/{folder.name}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in c.items()),
            file=sys.stderr,
        )
    print(fit_steps(costs, args.seconds, args.epochs, args.cap))


if __name__ == "__main__":
    main()
