"""``tuned_fusion``: the linear-fusion weight chosen on labelled training pairs held out of the
labelled loss, never on val or test.

The paper's Table 14 ("tuned linear fusion") trains the "Baseline w/ MLLM" target
``alpha p_w + beta q`` (``alpha + beta = 1``) at several fixed weights. Here ``alpha`` is chosen
inside one run, on data the run may look at:

- :func:`holdout_rows` sets a seeded fraction ``train.tuned_fusion.holdout`` of the labelled
  *images* aside (all pairs of an image on one side, as the partition does); their pairs never
  enter the labelled loss, and they need teacher priors (``priors.splits`` has ``labeled``);
- before every epoch the run (:class:`~l2l_train.loop.Run`) calls :func:`fusion_scores`: the
  model predicts each held-out pair as the weak pass does (no prior input), in eval mode so
  the pass changes nothing in the model (no BatchNorm statistics, no random draws); for each
  ``alpha`` of :func:`alpha_grid` the fused map is upsampled to the image's original size,
  binarised at 0.5 and counted against the ground truth as evaluation counts a prediction
  (:func:`fusion_counts`). Only pairs with a teacher prior count: elsewhere every ``alpha``
  gives ``p_w``;
- :func:`best_alpha` takes the ``alpha`` with the highest oIoU (ties: the first in the grid),
  which the training step's linear target uses until the next epoch.

The first choice is made before step 1, from the untrained model's ``p_w``; the choice of the
epoch is checkpointed with the run, so a resume mid-epoch keeps it.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from l2l_train.pairs import normalize_images
from l2l_train.runtime import autocast
from pipeline.config import SplitConfig
from pipeline.contract import intersection_union as count_intersection_union
from pipeline.contract import labeled_images

log = logging.getLogger(__name__)


def alpha_grid(points: int) -> Tensor:
    """``points`` weights evenly spaced over [0, 1], rounded so 11 points are 0, 0.1, ... 1.

    Returns: (points,) float64.
    """
    if points < 2:
        raise ValueError(f"points: expected >= 2, got {points}")
    return torch.tensor([round(k / (points - 1), 9) for k in range(points)], dtype=torch.float64)


def holdout_rows(rows: pa.Table, ratio: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """Split labelled manifest rows by image into (kept for the labelled loss, held out):
    ``max(1, round(ratio * images))`` images held out, drawn with ``seed`` as the partition
    draws its labelled images (:func:`pipeline.contract.labeled_images`).

    Raises ``ValueError`` when fewer than two labelled images leave nothing to train on.
    """
    image_ids = rows["image_id"].to_numpy()
    images = len(set(image_ids.tolist()))
    held = labeled_images(image_ids, SplitConfig(labeled_ratio=ratio, seed=seed))
    if len(held) >= images:
        raise ValueError(
            f"tuned_fusion holds out {len(held)} of {images} labelled images "
            f"(train.tuned_fusion.holdout = {ratio}): none left for the labelled loss; "
            "label more images (split.labeled_ratio) or lower the holdout"
        )
    is_held = pc.is_in(rows["image_id"], pa.array(held))
    return rows.filter(pc.invert(is_held)), rows.filter(is_held)


def fusion_counts(p_w: Tensor, q: Tensor, gt: Tensor, alphas: Tensor) -> Tensor:
    """Intersection and union with ``gt`` of ``alpha p_w + (1 - alpha) q >= 0.5``, summed
    over the batch, for each ``alpha``.

    Shapes: p_w, q (B, 1, H, W) probabilities; gt (B, H, W), nonzero = foreground;
    alphas (A,). Returns: (A, 2) float64 as (intersection, union) pixel counts.
    """
    if p_w.dim() != 4 or p_w.shape[1] != 1 or q.shape != p_w.shape:
        raise ValueError(
            f"p_w, q: expected two (B, 1, H, W) maps, got {tuple(p_w.shape)} and {tuple(q.shape)}"
        )
    if gt.shape != (p_w.shape[0], *p_w.shape[2:]):
        raise ValueError(f"gt: expected {(p_w.shape[0], *p_w.shape[2:])}, got {tuple(gt.shape)}")
    a = alphas.to(device=p_w.device, dtype=torch.float64).view(-1, 1, 1, 1)  # (A, 1, 1, 1)
    fused = a * p_w[:, 0].double() + (1.0 - a) * q[:, 0].double()  # (A, B, H, W)
    inter, union = count_intersection_union(fused >= 0.5, gt.bool())  # (A, B) each
    return torch.stack([inter.sum(1), union.sum(1)], dim=1).double()


def best_alpha(counts: Tensor, alphas: Tensor) -> float:
    """The ``alpha`` of the highest oIoU ``I / U`` (0 where ``U`` is 0); ties go to the
    first in ``alphas``.

    Shapes: counts (A, 2) as (intersection, union), alphas (A,).
    """
    inter, union = counts[:, 0], counts[:, 1]
    oiou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))
    # argmax of the first maximum: torch.argmax does not promise which of equal values.
    first = int(torch.nonzero(oiou == oiou.max())[0, 0])
    return float(alphas[first])


@torch.no_grad()
def fusion_scores(
    model: nn.Module,
    loader: DataLoader,
    alphas: Tensor,
    *,
    device: torch.device,
    amp: bool,
) -> Tensor:
    """:func:`fusion_counts` over every pair with a teacher prior of ``loader`` (an
    :func:`~l2l_train.data.eval_loader` of the held-out pairs), at each image's original
    size, summed over the DDP ranks; restores the model's train/eval mode afterwards.

    Returns: (A, 2) float64 as (intersection, union).
    """
    was_training = model.training
    model.eval()
    counts = torch.zeros(len(alphas), 2, dtype=torch.float64, device=device)
    for batch in loader:
        present = batch["prior_present"]
        if not present.any():
            continue
        with autocast(device, amp):
            # No prior input: p_w as the weak pass makes it.
            logits = model(
                normalize_images(batch["image"].to(device)),
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
            )
        p_w = torch.sigmoid(logits.float())
        q = batch["prior"].to(device)
        for k in present.nonzero()[:, 0].tolist():
            gt = batch["mask"][k].to(device)  # (h, w) original resolution
            # Bilinear resizing is linear, so resizing p_w and q then fusing is resizing the
            # fused map, for every alpha at once.
            pair = torch.cat([p_w[k : k + 1], q[k : k + 1]])
            up = F.interpolate(pair, size=tuple(gt.shape), mode="bilinear", align_corners=False)
            counts += fusion_counts(up[:1], up[1:], gt[None], alphas)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    model.train(was_training)
    return counts


def log_choice(alphas: Tensor, counts: Tensor, chosen: float, epoch: int) -> None:
    """One log line: the held-out oIoU of each alpha and the one chosen."""
    inter, union = counts[:, 0].tolist(), counts[:, 1].clamp_min(1).tolist()
    scores = ", ".join(
        f"{a:g}: {i / u:.3f}" for a, i, u in zip(alphas.tolist(), inter, union, strict=True)
    )
    log.info(
        "epoch %d: tuned_fusion alpha %.2f (held-out oIoU by alpha: %s)", epoch, chosen, scores
    )
