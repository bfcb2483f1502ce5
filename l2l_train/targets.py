"""How each method makes its unlabelled targets: the plan, ``q_hat``, and the pseudo-labels.

``train.method`` (with the l2l switches ``spm`` and ``rple``) decides (:func:`plan_method`):
whether unlabelled pairs are used, whether the teacher's priors are read, which *target
strategy* turns the weak prediction ``p_w`` and the prior ``q`` into ``q_hat``
(:data:`TARGET_STRATEGIES`, pure functions ``(p_w, q, present, cfg) -> q_hat``), where the
thresholds come from, and whether whole pairs are filtered out. ``q_hat`` then becomes a
three-way pseudo-label under per-sample thresholds, with an ignore band around the foreground
edge (:func:`pseudo_labels`); the thresholds come from the RPLE agent (:mod:`l2l_train.rple`),
from CATM's class-wise statistics (:class:`ClassThresholds`) or are static
(:func:`static_thresholds`). The agreement filter (:func:`agreement_keep`) ignores every pixel
of a pair whose two sources are not both confident and in agreement; ``train.ignore_conflicts``
ignores only the pixels where they fall on opposite sides of 0.5 (:func:`conflict_pixels`).

The three stronger MLLM baselines of the paper's appendix (Tables 14-15) all start from the
linear fusion ``alpha p_w + (1 - alpha) q`` of "Baseline w/ MLLM":

- ``tuned_fusion``: ``alpha`` chosen before every epoch on labelled training pairs held out of
  the labelled loss (:mod:`l2l_train.tuning`), static thresholds;
- ``agreement_filter``: ``alpha = train.fusion.alpha`` (0.5), static thresholds, pairs kept
  only when both sources are confident and agree (:func:`agreement_keep`);
- ``catm``: ``alpha = train.fusion.alpha``, class-wise adaptive thresholds
  (:class:`ClassThresholds`, FreeMatch's self-adaptive thresholding: the paper's source for
  its "CATM-style" baseline, Moon et al. 2024, could not be checked).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from l2l_train.config import AgreementConfig, FusionConfig, TrainConfig
from l2l_train.losses import BACKGROUND, FOREGROUND, IGNORE_INDEX
from l2l_train.spm import certainty, fuse, linear_fusion

THRESHOLD_DIM = 2  # (tau_fg, tau_bg)

Fusion = Literal["none", "fixed", "tuned", "spm", "teacher"]


@dataclass(frozen=True)
class MethodPlan:
    """What ``train.method`` (with the l2l switches ``spm`` and ``rple``) turns on."""

    unlabeled: bool  # trains on unlabelled pairs
    teacher: bool  # reads the teacher's priors (model input, fusion)
    fusion: Fusion  # the target strategy that makes q_hat from p_w and q
    rple: bool  # thresholds from the agent, else static train.tau_fg / tau_bg (or CATM's)
    catm: bool = False  # thresholds from class-wise adaptive statistics (ClassThresholds)
    agreement_filter: bool = False  # pairs whose two sources disagree are ignored whole


def plan_method(cfg: TrainConfig) -> MethodPlan:
    """supervised: labelled pairs only, no prior. fixmatch (the paper's "Baseline w/o MLLM"):
    static thresholds on the model's own weak prediction, no teacher anywhere. fixed_fusion
    ("Baseline w/ MLLM"): static thresholds on ``alpha p_w + (1 - alpha) q``, alpha 0.5;
    tuned_fusion, agreement_filter and catm change one thing each (module docstring). l2l:
    SPM fusion (``p_w`` when ``spm`` is off) and RPLE thresholds (static when ``rple`` is off)."""
    if cfg.method == "supervised":
        return MethodPlan(unlabeled=False, teacher=False, fusion="none", rple=False)
    if cfg.method == "fixmatch":
        return MethodPlan(unlabeled=True, teacher=False, fusion="none", rple=False)
    if cfg.method == "fixed_fusion":
        return MethodPlan(unlabeled=True, teacher=True, fusion="fixed", rple=False)
    if cfg.method == "tuned_fusion":
        return MethodPlan(unlabeled=True, teacher=True, fusion="tuned", rple=False)
    if cfg.method == "agreement_filter":
        return MethodPlan(True, True, "fixed", rple=False, agreement_filter=True)
    if cfg.method == "catm":
        return MethodPlan(True, True, "fixed", rple=False, catm=True)
    return MethodPlan(
        unlabeled=True, teacher=True, fusion="spm" if cfg.spm else "none", rple=cfg.rple
    )


# ----------------------------------------------------------------------------- target strategies


def own_prediction(p_w: Tensor, q: Tensor, present: Tensor, cfg: FusionConfig) -> Tensor:
    """FixMatch's target: the weak prediction itself; the prior is not used."""
    return p_w


def linear_target(p_w: Tensor, q: Tensor, present: Tensor, cfg: FusionConfig) -> Tensor:
    """The paper's "Baseline w/ MLLM": ``alpha p_w + (1 - alpha) q`` where the prior is
    present, ``alpha = cfg.alpha`` (0.5 by default; for tuned_fusion the step passes the
    alpha chosen on held-out labelled pairs)."""
    return linear_fusion(p_w, q, present, cfg.alpha)


def spm_target(p_w: Tensor, q: Tensor, present: Tensor, cfg: FusionConfig) -> Tensor:
    """L2L's calibrated prior: SPM's pixel-weighted logit fusion (:func:`~l2l_train.spm.fuse`)."""
    return fuse(p_w, q, present, cfg).q_hat


def teacher_target(p_w: Tensor, q: Tensor, present: Tensor, cfg: FusionConfig) -> Tensor:
    """The teacher's prior alone where it is present (SPM's warm-up, ``train.spm_warmup_steps``)."""
    return linear_fusion(p_w, q, present, 0.0)


TargetStrategy = Callable[[Tensor, Tensor, Tensor, FusionConfig], Tensor]

# Shapes of every strategy: p_w, q (B, 1, S, S) probabilities, present (B,) bool -> q_hat
# (B, 1, S, S), detached; where the prior is absent every strategy gives p_w.
TARGET_STRATEGIES: dict[Fusion, TargetStrategy] = {
    "none": own_prediction,
    "fixed": linear_target,
    "tuned": linear_target,  # the same rule; the loop sets cfg.alpha every epoch
    "spm": spm_target,
    "teacher": teacher_target,
}


def fusion_at(fusion: Fusion, step: int | None, warmup_steps: int) -> Fusion:
    """The target strategy after ``step`` training steps (None: outside training):
    ``fusion``, except that SPM takes the teacher's prior alone for the first
    ``warmup_steps`` (``train.spm_warmup_steps``), while the student is far below its teacher."""
    if fusion == "spm" and step is not None and step < warmup_steps:
        return "teacher"
    return fusion


# ----------------------------------------------------------------------------- agreement filter


def agreement_keep(
    p_w: Tensor, q: Tensor, agree: Tensor, present: Tensor, cfg: AgreementConfig
) -> Tensor:
    """Which pairs keep their pseudo-label under the agreement filter: the prior is present,
    both sources are confident, ``mean c(p_w) >= cfg.confidence`` and
    ``mean c(q) >= cfg.confidence`` with ``c(p) = |2p - 1|`` averaged over the pair's pixels
    (the paper's figure-1 sample confidence), and they agree, ``A > cfg.threshold`` with
    ``A`` SPM's soft IoU of ``p_w`` and ``q`` (:func:`~l2l_train.spm.agreement`).

    Shapes: p_w, q (B, 1, H, W); agree (B,); present (B,) bool -> (B,) bool.
    """
    confident_w = certainty(p_w).flatten(1).mean(1) >= cfg.confidence
    confident_q = certainty(q).flatten(1).mean(1) >= cfg.confidence
    return present & confident_w & confident_q & (agree > cfg.threshold)


def conflict_pixels(p_w: Tensor, q: Tensor, present: Tensor) -> Tensor:
    """The pixels where the weak prediction and the teacher prior conflict: the prior is
    present and the two fall on opposite sides of 0.5 (``p_w >= 0.5`` but ``q < 0.5``, or the
    reverse). ``train.ignore_conflicts`` ignores them in the pseudo-labels.

    Shapes: p_w, q (B, 1, H, W); present (B,) bool -> (B, H, W) bool.
    """
    return ((p_w[:, 0] >= 0.5) != (q[:, 0] >= 0.5)) & present.view(-1, 1, 1)


# ----------------------------------------------------------------------------- CATM thresholds


def class_statistics(q_hat: Tensor) -> Tensor:
    """Per-sample pixel sums :class:`ClassThresholds` updates from: the confidence
    ``max(q_hat, 1 - q_hat)``, the foreground probability ``q_hat`` and the pixel count.

    Shapes: q_hat (B, 1, H, W) -> (B, 3) float64.
    """
    q = q_hat.detach().double().flatten(1)
    pixels = torch.full_like(q[:, 0], q.shape[1])
    return torch.stack([torch.maximum(q, 1.0 - q).sum(1), q.sum(1), pixels], dim=1)


class ClassThresholds:
    """CATM-style class-wise adaptive thresholds. The paper's baseline cites Moon et al.
    (2024), which could not be checked; this is FreeMatch's self-adaptive thresholding (SAT;
    Wang et al., "FreeMatch: Self-adaptive Thresholding for Semi-supervised Learning",
    ICLR 2023), with the pixels of ``q_hat`` as the samples and two classes (background 0,
    foreground 1), updated once per step from every rank's unlabelled batch:

    - global threshold ``tau <- m tau + (1 - m) mean(max(q_hat, 1 - q_hat))``, from 1/C = 0.5;
    - class-wise expectation ``p(c) <- m p(c) + (1 - m) mean(prob of c)``, prob of fg
      ``q_hat``, of bg ``1 - q_hat``, each from 0.5;
    - class threshold ``tau(c) = p(c) / max(p) * tau`` (FreeMatch's MaxNorm).

    A pixel is pseudo-labelled with its argmax class when its confidence reaches that class's
    threshold. With two classes the argmax class's confidence is at least 0.5, so on
    ``q_hat`` this is ``q_hat >= max(0.5, tau(fg))`` for foreground and
    ``q_hat <= min(0.5, 1 - tau(bg))`` for background: the (tau_fg, tau_bg) pair
    :func:`pseudo_labels` takes (at q_hat = 0.5 exactly, foreground wins the tie).
    """

    def __init__(self, momentum: float) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1), got {momentum}")
        self.momentum = momentum
        self.confidence = torch.tensor(0.5, dtype=torch.float64)  # tau
        self.class_prob = torch.tensor([0.5, 0.5], dtype=torch.float64)  # p(bg), p(fg)

    def update(self, stats: Tensor) -> None:
        """One EMA step from ``stats``, the (N, 3) rows of :func:`class_statistics` of every
        rank's samples (the same on every rank, so the thresholds stay in step)."""
        total = stats.detach().double().cpu().sum(0)
        if total[2] <= 0:
            return
        mean_conf, mean_fg = total[0] / total[2], total[1] / total[2]
        m = self.momentum
        self.confidence = m * self.confidence + (1.0 - m) * mean_conf
        batch_prob = torch.stack([1.0 - mean_fg, mean_fg])
        self.class_prob = m * self.class_prob + (1.0 - m) * batch_prob

    def class_thresholds(self) -> Tensor:
        """(2,) float64 ``tau(c)`` for (bg, fg)."""
        return self.class_prob / self.class_prob.max() * self.confidence

    def thresholds(self, batch: int, device: torch.device | str | None = None) -> Tensor:
        """The current (tau_fg, tau_bg) on ``q_hat`` for ``batch`` samples.

        Returns: (B, 2) float32.
        """
        tau_bg, tau_fg = self.class_thresholds().tolist()
        pair = [max(0.5, tau_fg), min(0.5, 1.0 - tau_bg)]
        return torch.tensor([pair], device=device).repeat(batch, 1)

    def state_dict(self) -> dict[str, Any]:
        return {"confidence": self.confidence.clone(), "class_prob": self.class_prob.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.confidence = state["confidence"].double().cpu().clone()
        self.class_prob = state["class_prob"].double().cpu().clone()


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
