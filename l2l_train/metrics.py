"""Referring-segmentation metrics and pseudo-supervision quality, streamed over batches.

Per image-expression pair: ``I = sum(pred & gt)``, ``U = sum(pred | gt)``. Over a split:
overall IoU ``oIoU = sum(I) / sum(U)`` (the paper's headline; large objects weigh more),
mean IoU over pairs, and precision@t, the fraction of pairs with IoU >= t for
t in {0.5, ..., 0.9}. A pair whose prediction and ground truth are both empty counts IoU 0,
as in LAVT's evaluation.

The accumulators keep float64 sums in one tensor, so under DDP a single ``all_reduce``
combines every rank's share (:meth:`all_reduce`) before :meth:`compute`.

Figure 9 of the paper tracks, on unlabelled pairs with known ground truth: IoU of the raw
prior and of ``q_hat`` binarised at 0.5 (:func:`binarize` + :class:`IoUAccumulator`), and
accuracy and coverage of the pseudo-labels (:class:`PseudoLabelAccumulator`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from l2l_train.losses import IGNORE_INDEX
from pipeline.contract import intersection_union as count_intersection_union

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def _check_masks(pred: Tensor, gt: Tensor, pred_name: str = "pred") -> None:
    if pred.dim() != 3:
        raise ValueError(f"{pred_name}: expected a (B, H, W) mask, got {tuple(pred.shape)}")
    if gt.shape != pred.shape:
        raise ValueError(
            f"gt: expected the shape of {pred_name} {tuple(pred.shape)}, got {tuple(gt.shape)}"
        )


def binarize(p: Tensor, threshold: float = 0.5) -> Tensor:
    """Hard mask of a probability map: ``p >= threshold``.

    Shapes: p (B, 1, H, W) -> (B, H, W) bool.
    """
    if p.dim() != 4 or p.shape[1] != 1:
        raise ValueError(f"p: expected a (B, 1, H, W) probability map, got {tuple(p.shape)}")
    return p[:, 0] >= threshold


def intersection_union(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pair pixel counts of ``pred & gt`` and ``pred | gt`` (nonzero = foreground).

    Shapes: pred, gt (B, H, W) -> I (B,), U (B,) int64.
    """
    _check_masks(pred, gt)
    return count_intersection_union(pred.bool(), gt.bool())


def pair_iou(inter: Tensor, union: Tensor) -> Tensor:
    """IoU per pair, 0 where the union is empty.

    Shapes: inter, union (B,) -> (B,) float64.
    """
    inter, union = inter.double(), union.double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))


class SumAccumulator:
    """Named float64 running sums in one tensor, reducible across DDP ranks at once."""

    names: tuple[str, ...] = ()

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=device)

    def all_reduce(self) -> None:
        """Sum every rank's totals into every rank (no-op outside torch.distributed)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums, op=dist.ReduceOp.SUM)

    def _add(self, *values: Tensor) -> None:
        # Each sum to the accumulator's device before stacking: stack refuses a mix, and a
        # batch on the GPU can come with a count made on the CPU.
        self.sums += torch.stack([v.double().sum().to(self.sums.device) for v in values])

    def _total(self, name: str) -> float:
        return self.sums[self.names.index(name)].item()


class IoUAccumulator(SumAccumulator):
    """oIoU, mIoU and precision@{0.5..0.9} over every pair seen."""

    names = ("inter", "union", "iou", "pairs", *(f"hit@{t}" for t in PRECISION_THRESHOLDS))

    def update(self, pred: Tensor, gt: Tensor) -> None:
        """Add a batch of hard predictions. Shapes: pred, gt (B, H, W), nonzero = foreground."""
        self.update_counts(*intersection_union(pred, gt))

    def update_counts(self, inter: Tensor, union: Tensor) -> None:
        """Add per-pair intersections and unions. Shapes: inter, union (B,)."""
        iou = pair_iou(inter, union)
        hits = [iou >= t for t in PRECISION_THRESHOLDS]
        self._add(inter, union, iou, torch.ones_like(iou), *hits)

    def compute(self) -> dict[str, float]:
        pairs = self._total("pairs")
        if pairs == 0:
            raise RuntimeError("IoUAccumulator.compute() before any pair was added")
        union = self._total("union")
        metrics = {
            "oIoU": self._total("inter") / union if union > 0 else 0.0,
            "mIoU": self._total("iou") / pairs,
        }
        for t in PRECISION_THRESHOLDS:
            metrics[f"prec@{t}"] = self._total(f"hit@{t}") / pairs
        return metrics


class PseudoLabelAccumulator(SumAccumulator):
    """Pseudo-label quality against ground truth: ``accuracy`` = correct / selected pixels,
    ``coverage`` = selected / all pixels (selected = not IGNORE_INDEX)."""

    names = ("correct", "selected", "pixels")

    def update(self, labels: Tensor, gt: Tensor) -> None:
        """Shapes: labels (B, H, W) in {0, 1, IGNORE_INDEX}; gt (B, H, W) binary."""
        _check_masks(labels, gt, "labels")
        labels = labels.long()
        selected = labels != IGNORE_INDEX
        correct = selected & (labels == gt.long())
        self._add(correct, selected, torch.tensor(float(labels.numel())))

    def compute(self) -> dict[str, float]:
        pixels, selected = self._total("pixels"), self._total("selected")
        if pixels == 0:
            raise RuntimeError("PseudoLabelAccumulator.compute() before any label was added")
        return {
            "accuracy": self._total("correct") / selected if selected > 0 else float("nan"),
            "coverage": selected / pixels,
        }


class MeanAccumulator(SumAccumulator):
    """Running means of named quantities (training losses, mean thresholds): a float64 sum
    and a count per name; :meth:`compute` divides each sum by its count."""

    def __init__(self, names: Sequence[str], device: torch.device | str | None = None) -> None:
        self.names = tuple(n for name in names for n in (name, f"{name}/n"))
        super().__init__(device)

    def add(self, name: str, value: float | Tensor, count: float | Tensor = 1) -> None:
        """Add ``value`` (a sum over ``count`` items) to ``name``'s running mean."""
        i = self.names.index(name)
        self.sums[i] += value
        self.sums[i + 1] += count

    def compute(self) -> dict[str, float]:
        """The mean of every name that has a non-zero count."""
        sums = self.sums.tolist()
        return {
            name: sums[i] / sums[i + 1]
            for i, name in enumerate(self.names)
            if not name.endswith("/n") and sums[i + 1] > 0
        }
