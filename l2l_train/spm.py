"""SPM: calibrate the teacher prior with the model's weak-view prediction (paper eq. 4-6).

All maps are foreground probabilities in the trainer's square input frame, shaped
(B, 1, H, W); per-image quantities are (B,). The fused map ``q_hat`` is a training target
and structural guidance, never a path for gradients, so every output here is detached.

Forms (DESIGN.md section 4; the paper's extracted text lost its equations):

- certainty ``c(p) = |2p - 1|``
- agreement ``A = sum(p_w q) / (sum(p_w) + sum(q) - sum(p_w q) + eps)`` (soft IoU per image)
- weight ``w = clip(b0 + bA A + bq c(q) + bu (1 - c(p_w)), w_min, w_max)``
- fusion ``q_hat = sigmoid((1 - w) logit(clamp(p_w)) + w logit(clamp(q)))``, clamp to
  ``[eps, 1 - eps]``; where the prior is missing ``q_hat = p_w`` and ``A = 0``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from l2l_train.config import FusionConfig


class Fused(NamedTuple):
    """SPM output, all detached."""

    q_hat: Tensor  # (B, 1, H, W) calibrated prior
    agreement: Tensor  # (B,) soft IoU of p_w and q; 0 where the prior is missing
    weight: Tensor  # (B, 1, H, W) weight on the prior; 0 where the prior is missing


def _check_pair(p_w: Tensor, q: Tensor, prior_present: Tensor | None = None) -> None:
    if p_w.dim() != 4 or p_w.shape[1] != 1:
        raise ValueError(f"p_w: expected a (B, 1, H, W) probability map, got {tuple(p_w.shape)}")
    if q.shape != p_w.shape:
        raise ValueError(f"q: expected the shape of p_w {tuple(p_w.shape)}, got {tuple(q.shape)}")
    if prior_present is not None and prior_present.shape != (p_w.shape[0],):
        raise ValueError(
            f"prior_present: expected a ({p_w.shape[0]},) bool vector, got {tuple(prior_present.shape)}"
        )


def certainty(p: Tensor) -> Tensor:
    """Margin certainty ``|2p - 1|``: 0 at p = 0.5, 1 at p in {0, 1}.

    Shapes: p (...) -> (...).
    """
    return (2.0 * p - 1.0).abs()


def agreement(p_w: Tensor, q: Tensor, eps: float) -> Tensor:
    """Soft IoU of two probability maps, per image.

    Shapes: p_w, q (B, 1, H, W) -> (B,).
    """
    _check_pair(p_w, q)
    inter = (p_w * q).flatten(1).sum(1)
    union = p_w.flatten(1).sum(1) + q.flatten(1).sum(1) - inter
    return inter / (union + eps)


def prior_weight(p_w: Tensor, q: Tensor, agree: Tensor, cfg: FusionConfig) -> Tensor:
    """Pixel weight on the prior: more trust where the model is unsure or the prior certain,
    less where the two disagree over the whole image.

    Shapes: p_w, q (B, 1, H, W), agree (B,) -> (B, 1, H, W).
    """
    image_term = cfg.b0 + cfg.bA * agree.view(-1, 1, 1, 1)
    w = image_term + cfg.bq * certainty(q) + cfg.bu * (1.0 - certainty(p_w))
    return w.clamp(cfg.w_min, cfg.w_max)


def logit_fusion(p_w: Tensor, q: Tensor, w: Tensor, eps: float) -> Tensor:
    """``sigmoid((1 - w) logit(p_w) + w logit(q))`` with both maps clamped to [eps, 1 - eps]
    so certain pixels keep finite logits.

    Shapes: p_w, q, w (B, 1, H, W) -> (B, 1, H, W).
    """
    logit_w = torch.logit(p_w.clamp(eps, 1.0 - eps))
    logit_q = torch.logit(q.clamp(eps, 1.0 - eps))
    return torch.sigmoid((1.0 - w) * logit_w + w * logit_q)


def fuse(p_w: Tensor, q: Tensor, prior_present: Tensor, cfg: FusionConfig) -> Fused:
    """SPM calibrated prior for a batch; rows without a prior pass ``p_w`` through unchanged.

    ``q`` rows where ``prior_present`` is False are ignored (any finite filler will do).

    Shapes: p_w, q (B, 1, H, W) probabilities; prior_present (B,) bool.
    Returns: :class:`Fused` with q_hat (B, 1, H, W), agreement (B,), weight (B, 1, H, W).
    """
    _check_pair(p_w, q, prior_present)
    p_w, q = p_w.detach().float(), q.detach().float()
    present = prior_present.to(device=p_w.device, dtype=torch.bool)
    a = torch.where(present, agreement(p_w, q, cfg.eps), torch.zeros((), device=p_w.device))
    w = prior_weight(p_w, q, a, cfg)
    w = torch.where(present.view(-1, 1, 1, 1), w, torch.zeros((), device=p_w.device))
    fused = logit_fusion(p_w, q, w, cfg.eps)
    q_hat = torch.where(present.view(-1, 1, 1, 1), fused, p_w)
    return Fused(q_hat=q_hat, agreement=a, weight=w)


def linear_fusion(p_w: Tensor, q: Tensor, prior_present: Tensor, alpha: float = 0.5) -> Tensor:
    """Linear fusion ``alpha p_w + (1 - alpha) q``, ``p_w`` where the prior is missing: the
    paper's "Baseline w/ MLLM" at ``alpha = 0.5``, its Table 14 and ``tuned_fusion`` elsewhere.

    Shapes: p_w, q (B, 1, H, W); prior_present (B,) bool -> (B, 1, H, W), detached.
    """
    _check_pair(p_w, q, prior_present)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a weight in [0, 1], got {alpha}")
    p_w, q = p_w.detach().float(), q.detach().float()
    present = prior_present.to(device=p_w.device, dtype=torch.bool).view(-1, 1, 1, 1)
    return torch.where(present, alpha * p_w + (1.0 - alpha) * q, p_w)
