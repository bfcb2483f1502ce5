"""How each method makes its unlabelled targets: the plan, ``q_hat``, and the pseudo-labels.

``train.method`` (with the l2l switches ``spm`` and ``rple``) decides three things
(:func:`plan_method`): whether unlabelled pairs are used, whether the teacher's priors are
read, and which *target strategy* turns the weak prediction ``p_w`` and the prior ``q`` into
``q_hat`` (:data:`TARGET_STRATEGIES`, pure functions ``(p_w, q, present, cfg) -> q_hat``).
``q_hat`` then becomes a three-way pseudo-label under per-sample thresholds, with an ignore
band around the foreground edge (:func:`pseudo_labels`); the thresholds come from the RPLE
agent (:mod:`l2l_train.rple`) or are static (:func:`static_thresholds`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from l2l_train.config import FusionConfig, TrainConfig
from l2l_train.losses import BACKGROUND, FOREGROUND, IGNORE_INDEX
from l2l_train.spm import fixed_fusion, fuse

THRESHOLD_DIM = 2  # (tau_fg, tau_bg)

Fusion = Literal["none", "fixed", "spm"]


@dataclass(frozen=True)
class MethodPlan:
    """What ``train.method`` (with the l2l switches ``spm`` and ``rple``) turns on."""

    unlabeled: bool  # trains on unlabelled pairs
    teacher: bool  # reads the teacher's priors (model input, fusion)
    fusion: Fusion  # the target strategy that makes q_hat from p_w and q
    rple: bool  # thresholds from the agent, else static train.tau_fg / tau_bg


def plan_method(cfg: TrainConfig) -> MethodPlan:
    """supervised: labelled pairs only, no prior. fixmatch (the paper's "Baseline w/o MLLM"):
    static thresholds on the model's own weak prediction, no teacher anywhere. fixed_fusion
    ("Baseline w/ MLLM"): static thresholds on ``0.5 p_w + 0.5 q``. l2l: SPM fusion (``p_w``
    when ``spm`` is off) and RPLE thresholds (static when ``rple`` is off)."""
    if cfg.method == "supervised":
        return MethodPlan(unlabeled=False, teacher=False, fusion="none", rple=False)
    if cfg.method == "fixmatch":
        return MethodPlan(unlabeled=True, teacher=False, fusion="none", rple=False)
    if cfg.method == "fixed_fusion":
        return MethodPlan(unlabeled=True, teacher=True, fusion="fixed", rple=False)
    return MethodPlan(
        unlabeled=True, teacher=True, fusion="spm" if cfg.spm else "none", rple=cfg.rple
    )


# ----------------------------------------------------------------------------- target strategies


def own_prediction(p_w: Tensor, q: Tensor, present: Tensor, cfg: FusionConfig) -> Tensor:
    """FixMatch's target: the weak prediction itself; the prior is not used."""
    return p_w


def fixed_target(p_w: Tensor, q: Tensor, present: Tensor, cfg: FusionConfig) -> Tensor:
    """The paper's "Baseline w/ MLLM": ``0.5 p_w + 0.5 q`` where the prior is present."""
    return fixed_fusion(p_w, q, present)


def spm_target(p_w: Tensor, q: Tensor, present: Tensor, cfg: FusionConfig) -> Tensor:
    """L2L's calibrated prior: SPM's pixel-weighted logit fusion (:func:`~l2l_train.spm.fuse`)."""
    return fuse(p_w, q, present, cfg).q_hat


TargetStrategy = Callable[[Tensor, Tensor, Tensor, FusionConfig], Tensor]

# Shapes of every strategy: p_w, q (B, 1, S, S) probabilities, present (B,) bool -> q_hat
# (B, 1, S, S), detached; where the prior is absent every strategy gives p_w.
TARGET_STRATEGIES: dict[Fusion, TargetStrategy] = {
    "none": own_prediction,
    "fixed": fixed_target,
    "spm": spm_target,
}


# ----------------------------------------------------------------------------- pseudo-labels


def static_thresholds(
    batch_size: int, tau_fg: float, tau_bg: float, device: torch.device | str | None = None
) -> Tensor:
    """Fixed thresholds for every sample, for methods without RPLE.

    Returns: (B, 2) as (tau_fg, tau_bg).
    """
    if not tau_bg < tau_fg:
        raise ValueError(f"expected tau_bg < tau_fg, got tau_bg={tau_bg}, tau_fg={tau_fg}")
    return torch.tensor([[tau_fg, tau_bg]], device=device).repeat(batch_size, 1)


def band_in_input_frame(band_original: float, original_hw: Tensor, input_size: int) -> Tensor:
    """Per-sample ignore-band widths in the model's input frame for a band of
    ``band_original`` pixels of each original image, the original stretched to an
    ``input_size`` x ``input_size`` square.

    ``width = band_original * input_size / max(H, W)``, rounded to the nearest odd integer
    (a tie, at an even ``width``, goes to the smaller one) when ``band_original > 0`` and
    ``width >= 0.5``, else 0 (no band): ``[0.5, 2] -> 1``, ``(2, 4] -> 3``, ``(4, 6] -> 5``.

    Why the larger side: the stretch scales the axes differently (``S / W`` across a
    vertical boundary, ``S / H`` across a horizontal one), and one square max-pool kernel
    must serve both. Scaling by the larger side uses the smaller factor, so before the odd
    rounding the band covers at most ``band_original`` original pixels along either axis.
    The band exists to absorb a few pixels of boundary uncertainty, and over-wide bands are
    the failure this guards against (they erase small objects: at 128 -> 64 px a 3 px band
    leaves a perfect ``q_hat`` 36 % of its foreground), so the conservative side is the
    right one to err on; ties round down for the same reason. For a square original every
    choice of side agrees.

    Shapes: original_hw (B, 2) int as (H, W) -> (B,) int64 (0 or odd), on original_hw's device.
    """
    if band_original < 0:
        raise ValueError(f"band_original: expected >= 0 original pixels, got {band_original}")
    if input_size < 1:
        raise ValueError(f"input_size: expected >= 1, got {input_size}")
    if original_hw.dim() != 2 or original_hw.shape[1] != 2:
        raise ValueError(f"original_hw: expected (B, 2) as (H, W), got {tuple(original_hw.shape)}")
    if (original_hw < 1).any():
        raise ValueError("original_hw: every original side must be >= 1 pixel")
    # float64: the ties (even widths such as 3 * 480 / 720 = 2) then land exactly.
    side = original_hw.amax(dim=1).to(torch.float64)
    width = band_original * input_size / side
    # Nearest odd 2k + 1 with ties down: k = ceil((width - 2) / 2), >= 0 for width >= 0.5.
    k = torch.ceil((width - 2.0) / 2.0).clamp_min(0).to(torch.int64)
    keep = (width >= 0.5) & (band_original > 0)
    return torch.where(keep, 2 * k + 1, torch.zeros_like(k))


def _check_band_width(band_width: int | Tensor, batch: int) -> int | Tensor:
    """``band_width`` as a Python int (one width for every sample) or a (B,) int64 tensor,
    each width 0 (none) or a positive odd number of input-frame pixels."""
    if isinstance(band_width, Tensor):
        if band_width.shape != (batch,):
            raise ValueError(
                f"band_width: expected an int or a ({batch},) tensor of per-sample widths, "
                f"got shape {tuple(band_width.shape)}"
            )
        if band_width.dtype.is_floating_point or band_width.dtype.is_complex:
            raise TypeError(f"band_width: expected an integer tensor, got {band_width.dtype}")
        widths = band_width.long()
        if ((widths < 0) | ((widths % 2 == 0) & (widths != 0))).any():
            raise ValueError(
                f"band_width: expected 0 or positive odd widths, got {widths.tolist()}"
            )
        return widths
    try:
        width = operator.index(band_width)
    except TypeError:
        raise TypeError(
            f"band_width: expected an int or a (B,) int tensor of input-frame pixels, got "
            f"{band_width!r}; convert a width in original-image pixels with "
            f"band_in_input_frame"
        ) from None
    if width < 0 or (width % 2 == 0 and width != 0):
        raise ValueError(f"band_width: expected 0 or a positive odd band width, got {width}")
    return width


def foreground_edge_band(fg: Tensor, width: int | Tensor) -> Tensor:
    """Pixels within a band of ``width`` pixels centred on the foreground's edge pixels
    (foreground pixels with a non-foreground 8-neighbour): across a straight fg/bg boundary
    that is exactly ``width`` columns, ``width // 2 + 1`` of them foreground. The image border
    is not a boundary. ``width`` is one int for the batch or a (B,) int tensor of per-sample
    widths, each 0 (no band) or odd; the samples sharing a width are pooled together, so the
    cost is one max-pool per distinct width in the batch.

    Shapes: fg (B, H, W) bool, width int or (B,) int -> (B, H, W) bool.
    """
    width = _check_band_width(width, fg.shape[0])
    x = fg.float().unsqueeze(1)
    # max_pool2d pads with -inf, so the erosion treats outside the image as foreground.
    eroded = -F.max_pool2d(-x, 3, stride=1, padding=1)
    edge = x - eroded
    if not isinstance(width, Tensor):
        if width == 0:
            return torch.zeros_like(fg, dtype=torch.bool)
        return F.max_pool2d(edge, width, stride=1, padding=width // 2)[:, 0] > 0
    band = torch.zeros_like(fg, dtype=torch.bool)
    widths = width.to(fg.device)
    for w in torch.unique(widths).tolist():  # a few distinct widths per batch
        if w == 0:
            continue
        rows = (widths == w).nonzero()[:, 0]
        band[rows] = F.max_pool2d(edge[rows], w, stride=1, padding=w // 2)[:, 0] > 0
    return band


def pseudo_labels(q_hat: Tensor, thresholds: Tensor, band_width: int | Tensor) -> Tensor:
    """Three-way pseudo-label from the calibrated prior: ``q_hat >= tau_fg`` foreground,
    ``q_hat <= tau_bg`` background, the rest ignored, then the foreground edge band ignored
    as well. ``band_width`` is in pixels of ``q_hat``'s (input) frame, 0 for none: one int
    for every sample, or a (B,) int tensor of per-sample widths (0 or odd), as
    :func:`band_in_input_frame` gives for a band set in original-image pixels.

    Shapes: q_hat (B, 1, H, W), thresholds (B, 2) as (tau_fg, tau_bg), band_width int or (B,).
    Returns: (B, H, W) uint8 in {0, 1, IGNORE_INDEX}.
    """
    if q_hat.dim() != 4 or q_hat.shape[1] != 1:
        raise ValueError(f"q_hat: expected (B, 1, H, W), got {tuple(q_hat.shape)}")
    if thresholds.shape != (q_hat.shape[0], THRESHOLD_DIM):
        raise ValueError(
            f"thresholds: expected ({q_hat.shape[0]}, 2) as (tau_fg, tau_bg), "
            f"got {tuple(thresholds.shape)}"
        )
    band_width = _check_band_width(band_width, q_hat.shape[0])
    q = q_hat[:, 0]
    tau_fg = thresholds[:, 0].view(-1, 1, 1).to(q.dtype)
    tau_bg = thresholds[:, 1].view(-1, 1, 1).to(q.dtype)
    fg = q >= tau_fg
    labels = torch.full(q.shape, IGNORE_INDEX, dtype=torch.uint8, device=q.device)
    labels[q <= tau_bg] = BACKGROUND
    labels[fg] = FOREGROUND
    if isinstance(band_width, Tensor) or band_width:
        labels[foreground_edge_band(fg, band_width)] = IGNORE_INDEX
    return labels
