"""Which ``eval.threshold``? Trained runs scored at a grid of thresholds on the foreground
probability, on pairs no run trained on or was chosen by (a held-out part of train).

    .venv/bin/python benchmarks/threshold_eval.py --runs RUN_DIR ... [--split held_out]
        [--thresholds 0.2 0.3 0.4 0.5 0.6] [--reference 0.5] [--threads 2]

A run folder holds the ``params.yaml`` it trained with and ``models/best.pt`` (the layout of
``ablation.py``'s and ``default_seeds.py``'s runs); each is scored with its own params (its
data, its held-out split), through ``l2l-train eval``'s own path (``run_eval`` with a
``sweep``: one set of forwards, every threshold read from the same probabilities).

Why: a trained model's probabilities need not be calibrated at 0.5, and its losses decide on
which side. L2L's pseudo-labels mark foreground only above RPLE's ``tau_fg`` (about 0.65) and
ignore a band along every edge, so pixels of the referent may end below 0.5; the supervised
rows' CE weights the rare foreground 4.0, so they may predict too much of it. A threshold
chosen on held-out pairs costs no training. Choosing it on val or test would make their
figures optimistic; ``--split`` says where it was chosen.

Writes ``benchmarks/results/threshold_eval.json`` (or ``--out``): per run the oIoU at each
threshold; per threshold the gain over ``--reference`` on the same run, its mean, sample std and
how many runs gain; and the threshold of the highest mean gain.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from common import RESULTS, describe_machine, summarize_gains, write_result

DEFAULT_THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)


def score_run(folder: Path, split: str, thresholds: Sequence[float]) -> dict[str, float]:
    """The oIoU of ``folder``'s ``models/best.pt`` on ``split`` at each threshold, keyed by
    ``str(threshold)``, scored with the run's own ``params.yaml``."""
    from l2l_train.config import load_trainer_params
    from l2l_train.evaluate import run_eval

    params = load_trainer_params(folder / "params.yaml")
    scored = run_eval(params, folder / "models" / "best.pt", [split], "none", thresholds)
    return {t: metrics["oIoU"] for t, metrics in scored["splits"][split]["sweep"].items()}


def gains_by_threshold(
    runs: Mapping[str, Mapping[str, float]], reference: str
) -> dict[str, dict[str, float]]:
    """Per threshold, the oIoU gains over ``reference`` on the same runs, summarised."""
    thresholds = next(iter(runs.values())).keys()
    return {
        t: summarize_gains([scores[t] - scores[reference] for scores in runs.values()])
        for t in thresholds
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="run folders")
    parser.add_argument("--split", default="held_out", help="where the threshold is chosen")
    parser.add_argument("--thresholds", nargs="+", type=float, default=list(DEFAULT_THRESHOLDS))
    parser.add_argument("--reference", type=float, default=0.5, help="gains are against this")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "threshold_eval.json")
    args = parser.parse_args(argv)
    missing = [
        str(run)
        for run in args.runs
        if not (run / "params.yaml").is_file() or not (run / "models" / "best.pt").is_file()
    ]
    if missing:
        sys.exit(f"--runs: no params.yaml and models/best.pt in {', '.join(missing)}")
    thresholds = sorted({*args.thresholds, args.reference})
    torch.set_num_threads(args.threads)
    runs, seconds = {}, {}
    for folder in args.runs:
        start = time.perf_counter()
        runs[str(folder)] = score_run(folder, args.split, thresholds)
        seconds[str(folder)] = time.perf_counter() - start
        print(f"{folder}: " + " ".join(f"{t} {o:.4f}" for t, o in runs[str(folder)].items()))
    gains = gains_by_threshold(runs, str(args.reference))
    best = max(gains, key=lambda t: gains[t]["mean"])
    for t, gain in gains.items():
        print(f"{t}: {gain['mean']:+.4f} +- {gain['std']:.4f} ({gain['positive']} gain)")
    print(f"highest mean gain over {args.reference} on {args.split}: threshold {best}")
    write_result(
        args.out,
        {
            "benchmark": "threshold_eval",
            "machine": describe_machine(torch.device("cpu")),
            "threads": args.threads,
            "split": args.split,
            "reference": str(args.reference),
            "runs": runs,
            "seconds": seconds,
            "oIoU_gain": gains,
            "best": best,
        },
    )


if __name__ == "__main__":
    main()
