"""Segmentation losses as free tensor functions (paper eq. 22, appendix B.3).

The segmentor predicts one foreground logit per pixel, (B, 1, H, W). Labels are (B, H, W)
integer maps (uint8 or long) with 0 background, 1 foreground and :data:`IGNORE_INDEX`
for pixels that carry no supervision: padding in ground truth, unselected or boundary pixels
in pseudo-labels. One foreground logit is the two-class softmax with logits (0, z), so the
binary cross-entropy here equals the paper's two-class cross-entropy.

``L = L_sup + lambda_u * (L_ce + lambda_dice * L_dice)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from l2l_train.config import LossConfig

# A label-format constant shared by ground-truth masks, pseudo-labels and these losses, so
# it is not a tunable: changing it in one place only would silently break the others.
IGNORE_INDEX = 255
BACKGROUND, FOREGROUND = 0, 1


class UnsupervisedLoss(NamedTuple):
    total: Tensor  # L_ce + lambda_dice * L_dice, scalar
    ce: Tensor
    dice: Tensor


def _check(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits: expected (B, 1, H, W), got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"labels: expected (B, H, W) = {(logits.shape[0], *logits.shape[2:])} to match the "
            f"logits, got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point:
        raise ValueError(
            f"labels: expected an integer map (0, 1, {IGNORE_INDEX}), got {labels.dtype}"
        )


def weighted_ce(
    logits: Tensor, labels: Tensor, bg_weight: float = 1.0, fg_weight: float = 1.0
) -> Tensor:
    """Pixel cross-entropy over non-ignored pixels with per-class weights.

    Normalised like ``torch.nn.functional.cross_entropy(weight=...)``: the weighted sum of
    pixel losses divided by the sum of the weights of the kept pixels. No kept pixel gives 0.

    Shapes: logits (B, 1, H, W), labels (B, H, W) in {0, 1, IGNORE_INDEX}.
    Returns: scalar.
    """
    _check(logits, labels)
    labels = labels.long()
    z = logits[:, 0].float()  # losses in fp32 under bf16 autocast
    pixel = F.binary_cross_entropy_with_logits(z, (labels == FOREGROUND).float(), reduction="none")
    weight = torch.where(labels == FOREGROUND, fg_weight, bg_weight) * (labels != IGNORE_INDEX)
    return (weight * pixel).sum() / weight.sum().clamp_min(torch.finfo(torch.float32).tiny)


def dice_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Foreground Dice over non-ignored pixels, ``1 - 2 sum(p t) / (sum(p) + sum(t))`` per
    image, averaged over the images whose selection contains foreground. An image without
    selected foreground has no Dice target and is skipped; none at all gives 0, not NaN.

    Shapes: logits (B, 1, H, W), labels (B, H, W) in {0, 1, IGNORE_INDEX}.
    Returns: scalar.
    """
    _check(logits, labels)
    labels = labels.long()
    keep = (labels != IGNORE_INDEX).float()
    target = (labels == FOREGROUND).float()
    prob = torch.sigmoid(logits[:, 0].float()) * keep
    inter = (prob * target).flatten(1).sum(1)
    target_sum = target.flatten(1).sum(1)
    has_fg = target_sum > 0
    per_image = 1.0 - 2.0 * inter / (prob.flatten(1).sum(1) + target_sum).clamp_min(1e-12)
    # A mask rather than boolean indexing: no host sync, and the empty case stays 0.
    return (per_image * has_fg).sum() / has_fg.sum().clamp_min(1)


def supervised_loss(logits_x: Tensor, mask_x: Tensor, cfg: LossConfig) -> Tensor:
    """``L_sup``: class-weighted cross-entropy on labelled pairs (``loss.bg_weight`` and
    ``loss.fg_weight``; the paper's 0.9 and 1.1 suit RefCOCO, see
    :class:`~l2l_train.config.LossConfig`) plus ``loss.lambda_dice_sup`` times Dice.

    Shapes: logits_x (B, 1, H, W), mask_x (B, H, W). Returns: scalar.
    """
    ce = weighted_ce(logits_x, mask_x, cfg.bg_weight, cfg.fg_weight)
    if not cfg.lambda_dice_sup:
        return ce
    return ce + cfg.lambda_dice_sup * dice_loss(logits_x, mask_x)


def unsupervised_loss(logits_s: Tensor, pseudo: Tensor, cfg: LossConfig) -> UnsupervisedLoss:
    """Strong-view prediction against weak-view pseudo-labels: cross-entropy on the selected
    pixels with ``loss.unsup_bg_weight`` and ``loss.unsup_fg_weight`` (1.0 / 1.0: the paper
    weights classes for labelled data only) plus Dice on the selected foreground.

    Shapes: logits_s (B, 1, H, W), pseudo (B, H, W) in {0, 1, IGNORE_INDEX}.
    """
    ce = weighted_ce(logits_s, pseudo, cfg.unsup_bg_weight, cfg.unsup_fg_weight)
    dice = dice_loss(logits_s, pseudo)
    return UnsupervisedLoss(total=ce + cfg.lambda_dice * dice, ce=ce, dice=dice)


def total_loss(l_sup: Tensor, l_unsup: Tensor, cfg: LossConfig) -> Tensor:
    """``L = L_sup + lambda_u * L_unsup`` with ``L_unsup = L_ce + lambda_dice * L_dice``."""
    return l_sup + cfg.lambda_u * l_unsup
