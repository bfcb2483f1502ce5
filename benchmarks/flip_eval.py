"""Does the test-time flip (``eval.flip``) lift trained checkpoints? Each one scored both ways.

    .venv/bin/python benchmarks/flip_eval.py --checkpoints A/best.pt B/best.pt ...
        [--params params.yaml] [--split val] [--prior none] [--threads 2]

Why: a checkpoint's score moves by 3-5 val oIoU points from one training seed to the next, so
a change that needs retraining cannot show a gain of one or two points in a few seeds. The
test-time flip needs none: the same weights are scored without it and with it (each pair's
logits averaged with those of its mirror image, whose prior is mirrored too and whose
expression has left and right swapped, mirrored back), so the per-checkpoint difference
carries no training noise. Scoring uses ``l2l-train eval``'s own path (``run_eval``) with only
``eval.flip`` changed; the time of each scoring is recorded beside it.

Writes ``benchmarks/results/flip_eval.json``: per checkpoint the split's metrics both ways and
the oIoU gain, and the gains' mean and sample std over the checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from common import RESULTS, describe_machine, summarize_gains, write_result


def score_both_ways(params, checkpoint: Path, split: str, prior: str) -> dict:
    """``checkpoint``'s metrics on ``split`` without and with the test-time flip, and the
    seconds each scoring took."""
    from l2l_train.evaluate import run_eval

    scored = {}
    for flip in (False, True):
        flipped = dataclasses.replace(params, eval=dataclasses.replace(params.eval, flip=flip))
        start = time.perf_counter()
        metrics = run_eval(flipped, checkpoint, [split], prior)["splits"][split]
        scored["flip" if flip else "plain"] = {**metrics, "seconds": time.perf_counter() - start}
    scored["oIoU_gain"] = scored["flip"]["oIoU"] - scored["plain"]["oIoU"]
    return scored


def main(argv: Sequence[str] | None = None) -> None:
    from l2l_train.config import load_trainer_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", type=Path, required=True)
    parser.add_argument("--params", default="params.yaml", help="data paths and eval settings")
    parser.add_argument("--split", default="val")
    parser.add_argument("--prior", choices=("none", "teacher"), default="none")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "flip_eval.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = load_trainer_params(args.params)
    missing = [str(c) for c in args.checkpoints if not c.is_file()]
    if missing:
        sys.exit(f"--checkpoints: not found: {', '.join(missing)}")
    runs = {}
    for checkpoint in args.checkpoints:
        runs[str(checkpoint)] = score_both_ways(params, checkpoint, args.split, args.prior)
        run = runs[str(checkpoint)]
        print(
            f"{checkpoint}: {args.split} oIoU {run['plain']['oIoU']:.4f} -> "
            f"{run['flip']['oIoU']:.4f} with the flip ({run['oIoU_gain']:+.4f})"
        )
    summary = summarize_gains([run["oIoU_gain"] for run in runs.values()])
    print(f"gain {summary['mean']:+.4f} +- {summary['std']:.4f} ({summary['positive']} positive)")
    write_result(
        args.out,
        {
            "benchmark": "flip_eval",
            "machine": describe_machine(torch.device("cpu")),
            "threads": args.threads,
            "params": args.params,
            "split": args.split,
            "prior": args.prior,
            "runs": runs,
            "oIoU_gain": summary,
        },
    )


if __name__ == "__main__":
    main()
