"""``l2l-priors report``: how good the stored teacher priors are where ground truth is known.

Frame: a stored prior is an (S, S) map in the *square-stretched* image frame. It is resized
bilinearly to the pair's original H x W and thresholded at 0.5 (``p >= 0.5``, as the
trainer's ``binarize``), then compared with the ground-truth mask in original pixels: the
evaluation protocol of referring segmentation, independent of the prior size and of the
trainer's input size. (For the embedded default, 128 x 128 images with priors at 128, the
frames coincide and nothing is resized.)

Per pair ``I = sum(pred & gt)``, ``U = sum(pred | gt)``; mean IoU over pairs and overall IoU
``oIoU = sum(I) / sum(U)``, as in ``l2l_train.metrics`` (an empty union counts IoU 0). A
pair whose stored status is not OK (no grounding, unparsable answer, ...) has no mask and
counts IoU 0: the trainer gets nothing useful from it either. A pair without a stored row
is left out of the IoU and counted as ``missing``.

Outputs under ``<paths.metrics>/priors/``: ``<split>.json`` (the figures),
``<split>_iou_hist.csv`` (columns ``bin,count``, for ``dvc plots``) and
``<split>_iou_hist.png``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from pipeline.config import PipelineConfig
from pipeline.contract import (
    PriorStatus,
    intersection_union,
    pair_image_hashes,
    pair_keys,
    resize_prob,
    teacher_hash,
    teacher_identity,
)
from pipeline.datasets.manifest import decode_mask, image_root, read_pairs
from pipeline.store.reader import PriorStore

IOU_THRESHOLD = 0.5  # the binarisation of the paper's prior-quality figure
PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
HISTOGRAM_BINS = 10  # equal-width IoU bins over [0, 1]
READ_BATCH = 256  # priors decoded per store read; bounds memory on large splits


def prior_intersection_union(prob_square: np.ndarray | None, gt: np.ndarray) -> tuple[int, int]:
    """I and U of one prior against its ground truth in the original frame.

    Shapes:
        prob_square: (S, S) square-stretched frame, or None for "no mask" (empty prediction).
        gt: (H, W) {0, 1} original pixels.
    Returns:
        (sum(pred & gt), sum(pred | gt)) with ``pred = resize(prob) >= 0.5``.
    """
    gt = gt.astype(bool)
    if prob_square is None:
        return 0, int(gt.sum())
    pred = resize_prob(prob_square, gt.shape) >= IOU_THRESHOLD
    inter, union = intersection_union(pred, gt)
    return int(inter), int(union)


def summarize(inter: np.ndarray, union: np.ndarray, status: np.ndarray) -> dict[str, Any]:
    """Prior-quality figures from per-pair counts.

    Shapes:
        inter, union (n,) pixel counts; status (n,) :class:`PriorStatus` codes, ``MISSING``
        for pairs without a stored prior (left out of every IoU figure).
    Returns:
        mean_iou, oiou, mean_iou_ok (over OK pairs only), precision@t, histogram (IoU bin
        edges and counts), status_counts (lower-case status names, ``missing`` included),
        pairs and evaluated. IoU figures are None when no pair is evaluated.
    """
    status = np.asarray(status)
    scored = status != PriorStatus.MISSING
    inter = np.asarray(inter, np.float64)[scored]
    union = np.asarray(union, np.float64)[scored]
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    ok = status[scored] == PriorStatus.OK
    counts, edges = np.histogram(iou, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    evaluated = int(scored.sum())
    return {
        "pairs": len(status),
        "evaluated": evaluated,
        "mean_iou": float(iou.mean()) if evaluated else None,
        # All-empty unions give 0, as each such pair's IoU is 0.
        "oiou": float(inter.sum() / max(union.sum(), 1)) if evaluated else None,
        "mean_iou_ok": float(iou[ok].mean()) if ok.any() else None,
        "precision": {
            f"{t:.1f}": float((iou >= t).mean()) if evaluated else None
            for t in PRECISION_THRESHOLDS
        },
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "status_counts": {
            s.name.lower(): int((status == s).sum()) for s in PriorStatus if (status == s).any()
        },
    }


def score_pairs(
    store: PriorStore, keys: Sequence[str], masks: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """I, U and status of every pair, reading priors ``READ_BATCH`` at a time.

    ``masks`` are the pairs' ground truths as manifest RLE strings. Returns (n,) int64 I,
    (n,) int64 U and (n,) int8 status (``MISSING`` where the store has no row).
    """
    n = len(keys)
    inter, union = np.zeros(n, np.int64), np.zeros(n, np.int64)
    status = np.full(n, PriorStatus.MISSING, np.int8)
    if len(store) == 0:
        return inter, union, status
    for start in range(0, n, READ_BATCH):
        stop = min(start + READ_BATCH, n)
        prob, status[start:stop] = store.get(keys[start:stop], missing_ok=True)
        for i in range(start, stop):
            if status[i] != PriorStatus.MISSING:
                mask = prob[i - start] if status[i] == PriorStatus.OK else None
                inter[i], union[i] = prior_intersection_union(mask, decode_mask(masks[i]))
    return inter, union, status


def prior_quality(cfg: PipelineConfig, split: str) -> dict[str, Any]:
    """Quality of the configured teacher's stored priors on ``split``'s pairs with ground
    truth (see the module docstring for the frame and conventions).

    Raises ``ValueError`` if the store holds none of those pairs' priors.
    """
    t_hash = teacher_hash(cfg.priors)
    table = read_pairs(cfg.paths, split)
    with_gt = table.filter(pc.invert(pc.fill_null(pc.equal(table["mask"], ""), True)))
    pairs = with_gt.select(["image_path", "expression"]).to_pylist()
    keys = pair_keys(pairs, pair_image_hashes(pairs, image_root(cfg.paths.samples)), t_hash)
    store = PriorStore.open(cfg.paths.priors, teacher_hash=t_hash)
    inter, union, status = score_pairs(store, keys, with_gt["mask"].to_pylist())
    result = summarize(inter, union, status)
    if result["evaluated"] == 0:
        raise ValueError(
            f"no priors of teacher {cfg.priors.teacher} ({t_hash}) for the {len(keys)} pairs of "
            f"split {split!r} in {cfg.paths.priors}: run `l2l-priors generate --split {split}`"
        )
    rows = sum(info.entries for info in store.parts.values())
    store_bytes = store.nbytes_on_disk()
    return {
        "split": split,
        "teacher": teacher_identity(cfg.priors),
        "teacher_hash": t_hash,
        "pairs_without_gt": table.num_rows - with_gt.num_rows,
        **result,
        "threshold": IOU_THRESHOLD,
        "frame": "original pixels (prior resized bilinearly from the square-stretched frame)",
        "non_ok_counts_as_zero_iou": True,
        "store_bytes": store_bytes,
        "stored_rows": rows,
        "bytes_per_pair": store_bytes / rows,
    }


def histogram_rows(histogram: dict[str, list]) -> list[dict[str, Any]]:
    """CSV rows ``{"bin": "0.0-0.1", "count": n}`` of a :func:`summarize` histogram."""
    edges, counts = histogram["edges"], histogram["counts"]
    return [
        {"bin": f"{lo:.1f}-{hi:.1f}", "count": c}
        for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)
    ]


def plot_histogram(report: dict[str, Any], path: Path) -> None:
    """PNG bar chart of the per-pair IoU histogram (matplotlib's Agg canvas, no display)."""
    from matplotlib.figure import Figure

    edges = np.asarray(report["histogram"]["edges"])
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(
        edges[:-1],
        report["histogram"]["counts"],
        width=np.diff(edges),
        align="edge",
        edgecolor="white",
    )
    ax.set_xlim(0, 1)
    ax.set_xlabel("prior IoU vs ground truth (threshold 0.5; non-ok status = 0)")
    ax.set_ylabel("pairs")
    ax.set_title(
        f"{report['split']} [{report['teacher']['teacher']}]: mean IoU {report['mean_iou']:.3f}, "
        f"oIoU {report['oiou']:.3f}, n={report['evaluated']}"
    )
    fig.savefig(path, dpi=100)


def write_report(report: dict[str, Any], metrics_dir: str | Path) -> dict[str, Path]:
    """Write ``report`` (from :func:`prior_quality`) as JSON, histogram CSV and PNG under
    ``<metrics_dir>/priors/``; returns the paths by kind (json, csv, png)."""
    folder = Path(metrics_dir) / "priors"
    folder.mkdir(parents=True, exist_ok=True)
    split = report["split"]
    paths = {
        "json": folder / f"{split}.json",
        "csv": folder / f"{split}_iou_hist.csv",
        "png": folder / f"{split}_iou_hist.png",
    }
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    with paths["csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["bin", "count"])
        writer.writeheader()
        writer.writerows(histogram_rows(report["histogram"]))
    plot_histogram(report, paths["png"])
    return paths
