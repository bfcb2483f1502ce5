"""RPLE's state and reward (paper eq. 7-11): pure functions of ``q_hat``, the pseudo-label,
the thresholds and the model's prediction on the view the label supervises."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from l2l_train.config import AgentConfig
from l2l_train.losses import BACKGROUND, FOREGROUND, IGNORE_INDEX
from l2l_train.targets import pseudo_labels

STATE_DIM = 6


def label_fractions(labels: Tensor) -> Tensor:
    """Fractions of foreground, background and ignored pixels per image.

    Shapes: labels (B, H, W) -> (B, 3) as (r_fg, r_bg, r_ign), rows summing to 1.
    """
    flat = labels.flatten(1)
    return torch.stack(
        [(flat == v).float().mean(1) for v in (FOREGROUND, BACKGROUND, IGNORE_INDEX)], dim=1
    )


def rple_state(
    q_hat: Tensor, agree: Tensor, thresholds: Tensor, band_width: int | Tensor
) -> Tensor:
    """The agent's state ``[mean(q_hat), std(q_hat), r_fg, r_bg, r_ign, A]`` per sample,
    the ratios measured on the pseudo-label ``thresholds`` would give (population std).
    ``band_width`` as in :func:`pseudo_labels` (input-frame pixels, int or per-sample (B,)).

    Shapes: q_hat (B, 1, H, W), agree (B,), thresholds (B, 2), band_width int or (B,) -> (B, 6).
    """
    flat = q_hat.detach().float().flatten(1)
    ratios = label_fractions(pseudo_labels(q_hat.detach(), thresholds, band_width))
    return torch.cat(
        [
            flat.mean(1, keepdim=True),
            flat.std(1, correction=0, keepdim=True),
            ratios,
            agree.detach().float().view(-1, 1).to(flat.device),
        ],
        dim=1,
    )


# ----------------------------------------------------------------------------- reward


class Reward(NamedTuple):
    """Per-sample reward and its terms, all (B,)."""

    total: Tensor  # clipped reward
    separability: Tensor  # S_sep
    consistency: Tensor  # S_cons
    coverage: Tensor  # S_cov
    change: Tensor  # |dtau|


def _masked_mean(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of ``values`` over ``mask`` per image, and whether the mask is non-empty.

    Shapes: values, mask (B, H, W) -> (B,), (B,) bool; the mean is 0 where the mask is empty.
    """
    count = mask.flatten(1).sum(1)
    total = (values * mask).flatten(1).sum(1)
    return total / count.clamp_min(1), count > 0


def separability(p: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """``S_sep = sigmoid((mu_fg - mu_bg) / T)``, ``mu_c`` the mean prediction over the pixels
    selected as class c; 0 when either class has no selected pixel (nothing to separate).

    Shapes: p (B, 1, H, W) probabilities, labels (B, H, W) -> (B,).
    """
    p = p.detach().float()[:, 0]
    mu_fg, has_fg = _masked_mean(p, labels == FOREGROUND)
    mu_bg, has_bg = _masked_mean(p, labels == BACKGROUND)
    return torch.sigmoid((mu_fg - mu_bg) / temperature) * (has_fg & has_bg)


def consistency(p: Tensor, q_hat: Tensor, labels: Tensor) -> Tensor:
    """``S_cons = 1 - mean |p - q_hat|`` over the selected pixels; 0 when none is selected.

    Shapes: p, q_hat (B, 1, H, W), labels (B, H, W) -> (B,).
    """
    gap = (p.detach().float() - q_hat.detach().float()).abs()[:, 0]
    mean_gap, has_any = _masked_mean(gap, labels != IGNORE_INDEX)
    return (1.0 - mean_gap) * has_any


def coverage(labels: Tensor) -> Tensor:
    """``S_cov``: the selected (non-ignored) fraction of pixels.

    Shapes: labels (B, H, W) -> (B,).
    """
    return (labels != IGNORE_INDEX).flatten(1).float().mean(1)


def threshold_change(thresholds: Tensor, previous: Tensor) -> Tensor:
    """``|dtau| = |tau_fg - prev_fg| + |tau_bg - prev_bg|``.

    Shapes: thresholds (B, 2), previous (B, 2) or (2,) -> (B,).
    """
    return (thresholds - previous).abs().sum(-1)


def compute_reward(
    p: Tensor,
    q_hat: Tensor,
    labels: Tensor,
    thresholds: Tensor,
    previous: Tensor,
    cfg: AgentConfig,
) -> Reward:
    """The instructional gain, clipped: ``clip(l_sep S_sep + l_cons S_cons + l_cov S_cov
    - l_stab |dtau|, -R, R)``. ``p`` is the model's prediction on the view the pseudo-label
    supervises (the strong view in the loop), so S_sep and S_cons score the labels where
    they are used.

    Shapes: p, q_hat (B, 1, H, W); labels (B, H, W); thresholds (B, 2); previous (B, 2) or (2,).
    """
    s_sep = separability(p, labels, cfg.temperature)
    s_cons = consistency(p, q_hat, labels)
    s_cov = coverage(labels)
    change = threshold_change(thresholds.float(), previous.float().to(thresholds.device))
    gain = (
        cfg.lambda_sep * s_sep
        + cfg.lambda_cons * s_cons
        + cfg.lambda_cov * s_cov
        - cfg.lambda_stab * change
    )
    total = gain.clamp(-cfg.reward_clip, cfg.reward_clip)
    return Reward(
        total=total, separability=s_sep, consistency=s_cons, coverage=s_cov, change=change
    )
