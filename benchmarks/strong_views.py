"""Which strong views can the student read? Its oIoU through each intensity op, by magnitude.

    .venv/bin/python benchmarks/strong_views.py [--params params.yaml]
        [--checkpoint data/models/best.pt] [--pairs 1200] [--keep 0.9] [--threads 2]

Why: the weak-to-strong consistency of every semi-supervised method here trains the strong view
of an unlabelled pair to predict the pseudo-label made on its weak view. A strong view that has
lost what the expression names (a saturation factor of 0.05 turns "the red shape" grey, a
brightness factor of 0.05 turns the scene black) is a target no model can read from its input:
the sample is spent on noise. This scores a trained checkpoint's prediction (no prior as input)
on a fixed subset of the unlabelled training pairs (their ground truth read for scoring only)
through each intensity op at magnitudes spanning FixMatch's RandAugment ranges, as a fraction
of its oIoU on the plain images (``retention``), and the strong views as ``train.augment``
draws them (one draw per pair).

``readable``: per op, the magnitudes from its mildest inward whose retention stays at or above
``--keep``, as a ``[lo, hi]`` range for ``train.augment`` (null: unreadable even at its
mildest, so left out of ``train.augment.ops``). The pairs are training pairs, not val: the
ranges are chosen without the split that scores the model.

Writes ``benchmarks/results/strong_views.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from common import RESULTS, describe_machine, write_result

ENHANCE = (0.95, 0.8, 0.65, 0.5, 0.35, 0.2, 0.05)  # PIL enhancement factors, 1 = unchanged
# op -> its magnitudes, mildest first (FixMatch's ranges; an op without one has a single 0).
GRID: dict[str, tuple[float, ...]] = {
    "identity": (0.0,),
    "autocontrast": (0.0,),
    "equalize": (0.0,),
    "gaussian_blur": (0.1, 0.5, 1.0, 1.25, 1.5, 2.0),
    "contrast": ENHANCE,
    "sharpness": ENHANCE,
    "color": ENHANCE,
    "brightness": ENHANCE,
    "posterize": (8, 7, 6, 5, 4),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="default: <paths.models>/best.pt"
    )
    parser.add_argument("--pairs", type=int, default=1200, help="unlabelled pairs scored")
    parser.add_argument("--keep", type=float, default=0.9, help="retention a readable view keeps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "strong_views.json")
    return parser.parse_args(argv)


def readable(retention: Sequence[float], magnitudes: Sequence[float], keep: float) -> list | None:
    """The ``[lo, hi]`` magnitudes of an op's longest mildest-first run of grid points whose
    retention is at least ``keep``; None when the mildest already falls below it.

    Shapes: retention, magnitudes (K,), aligned, mildest magnitude first.
    """
    run = []
    for magnitude, kept in zip(magnitudes, retention, strict=True):
        if kept < keep:
            break
        run.append(magnitude)
    return [min(run), max(run)] if run else None


def oiou(preds: Sequence[torch.Tensor], gts: Sequence[torch.Tensor]) -> float:
    """Overall IoU (summed intersections over summed unions) by the evaluation's own
    :class:`~l2l_train.metrics.IoUAccumulator`, one pair at a time (each at its original
    size). Shapes: each (H_i, W_i) bool."""
    from l2l_train.metrics import IoUAccumulator

    accumulator = IoUAccumulator()
    for pred, gt in zip(preds, gts, strict=True):
        accumulator.update(pred[None], gt[None])
    return accumulator.compute()["oIoU"]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    from learning import load_split, predict

    from l2l_train.augment import apply_intensity_op, strong_image
    from l2l_train.checkpoint import load_checkpoint
    from l2l_train.config import load_trainer_params
    from l2l_train.evaluate import model_from_checkpoint
    from l2l_train.model import build_tokenizer
    from l2l_train.pairs import open_teacher_store
    from l2l_train.text_cache import FrozenTextCache

    params = load_trainer_params(args.params)
    checkpoint = args.checkpoint or Path(params.paths.models) / "best.pt"
    model, model_cfg, size = model_from_checkpoint(load_checkpoint(checkpoint))
    data = load_split(params, "unlabeled", size, open_teacher_store(params))
    chosen = torch.randperm(len(data["expression"]), generator=torch.Generator().manual_seed(0))
    chosen = chosen[: args.pairs].tolist()
    data = {k: v[chosen] if torch.is_tensor(v) else [v[i] for i in chosen] for k, v in data.items()}
    cache = FrozenTextCache(model.text, build_tokenizer(model_cfg.text), torch.device("cpu"))
    rows = list(range(len(chosen)))
    gts = [m.bool() for m in data["mask_original"]]

    def score(images: torch.Tensor) -> float:
        return oiou(predict(model, cache, dict(data, image=images), rows, prior=False), gts)

    plain = score(data["image"])
    ops = {}
    for op, magnitudes in GRID.items():
        retention = [
            score(torch.stack([apply_intensity_op(im, op, m) for im in data["image"]])) / plain
            for m in magnitudes
        ]
        ops[op] = {
            "magnitudes": list(magnitudes),
            "retention": retention,
            "readable": readable(retention, magnitudes, args.keep),
        }
        print(op, json.dumps(ops[op]), flush=True)
    drawn = score(
        strong_image(data["image"], params.train.augment, torch.Generator().manual_seed(0))
    )
    result = {
        "benchmark": "strong_views",
        "command": " ".join(
            ["benchmarks/strong_views.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": describe_machine(torch.device("cpu")),
        "checkpoint": str(checkpoint),
        "pairs": len(chosen),
        "keep": args.keep,
        "plain_oIoU": plain,
        "augment_draws": {
            "ops": list(params.train.augment.ops),
            "oIoU": drawn,
            "retention": drawn / plain,
        },
        "ops": ops,
    }
    print(json.dumps({k: result[k] for k in ("plain_oIoU", "augment_draws")}, indent=1))
    write_result(args.out, result)


if __name__ == "__main__":
    main()
