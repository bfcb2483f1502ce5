"""Weak and strong image views for weak-to-strong consistency (DESIGN.md section 4, paper
appendix A.2); the strong *text* view is :mod:`l2l_train.eda`.

- Weak view: the dataset resizes; :func:`weak_view` flips horizontally at random, and a flip
  also flips the mask and the prior and swaps left/right words in the expression
  (:func:`flip_expression`), so the text still describes the flipped image.
- Strong image view: the weak image plus ``num_ops`` intensity ops (:func:`strong_image`).
  None of them moves a pixel, so the weak view's pseudo-label, mask and prior stay aligned
  with the strong image without any coordinate mapping.

Images are ``(3, H, W)`` tensors, ``uint8`` or float in ``[0, 1]`` (before normalisation).
Randomness comes from an explicit ``torch.Generator``, so a view is reproducible from its seed.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from l2l_train.config import AugmentConfig

# ----------------------------------------------------------------------------- weak view

# "left"/"right" as a whole word or the stem of a directional compound. Hyphenated forms
# ("left-most", "left-hand") match through the hyphen's word boundary; "leftover", "bright"
# and "copyright" have no boundary where "left"/"right" would start or end.
_DIRECTION = re.compile(r"\b(left|right)(most|hand|handed|ward|wards)?\b", re.IGNORECASE)
_OPPOSITE = {"left": "right", "right": "left"}


def _like_case(word: str, model: str) -> str:
    """``word`` (lowercase) in the case pattern of ``model``: UPPER, Title or lower."""
    if model.isupper():
        return word.upper()
    if model[0].isupper():
        return word.capitalize()
    return word


def flip_expression(text: str) -> str:
    """Swap left and right in ``text`` as a horizontal flip of the image requires.

    Whole words and compounds only (left <-> right, leftmost <-> rightmost, left-most <->
    right-most, lefthand, left-handed, leftward(s)), case kept ("Left" -> "Right", "LEFT" ->
    "RIGHT"); "leftover", "bright", "copyright" are left alone.
    """

    def swap(match: re.Match[str]) -> str:
        stem, suffix = match.group(1), match.group(2) or ""
        return _like_case(_OPPOSITE[stem.lower()], stem) + suffix

    return _DIRECTION.sub(swap, text)


def with_flips(expressions: Sequence[str]) -> list[str]:
    """Each expression and its left/right-flipped form (:func:`flip_expression`), the text of
    a flipped weak view or of a mirrored evaluation pair."""
    return [form for e in expressions for form in (e, flip_expression(e))]


class View(NamedTuple):
    """One augmented image–expression pair, all in the same (possibly flipped) pixel frame."""

    image: Tensor  # (3, H, W)
    mask: Tensor | None  # (H, W) ground truth, where known
    prior: Tensor | None  # (1, H, W) teacher prior, where one exists
    expression: str


def hflip_sample(image: Tensor, mask: Tensor | None, prior: Tensor | None, expression: str) -> View:
    """Mirror a pair left to right: image, mask and prior along width, words via
    :func:`flip_expression`.

    Shapes: image (3, H, W), mask (H, W), prior (1, H, W); each flipped along its last axis.
    Returns: the flipped :class:`View`.
    """
    _check_same_frame(image, mask, prior)
    flip = functools.partial(torch.flip, dims=(-1,))
    return View(
        image=flip(image),
        mask=None if mask is None else flip(mask),
        prior=None if prior is None else flip(prior),
        expression=flip_expression(expression),
    )


def weak_view(
    image: Tensor,
    mask: Tensor | None,
    prior: Tensor | None,
    expression: str,
    flip_prob: float,
    generator: torch.Generator,
) -> View:
    """The weak view of a resized pair: :func:`hflip_sample` with probability ``flip_prob``.

    Shapes: as :func:`hflip_sample`. Returns: a :class:`View` (the inputs when not flipped).
    """
    if torch.rand((), generator=generator).item() < flip_prob:
        return hflip_sample(image, mask, prior, expression)
    _check_same_frame(image, mask, prior)
    return View(image, mask, prior, expression)


def _check_same_frame(image: Tensor, mask: Tensor | None, prior: Tensor | None) -> None:
    _check_image(image, batched=False)
    size = tuple(image.shape[-2:])
    if mask is not None and (mask.ndim != 2 or tuple(mask.shape) != size):
        raise ValueError(f"mask: expected shape {size} to match the image, got {tuple(mask.shape)}")
    if prior is not None and (prior.ndim != 3 or tuple(prior.shape) != (1, *size)):
        raise ValueError(
            f"prior: expected shape {(1, *size)} to match the image, got {tuple(prior.shape)}"
        )


def _check_image(image: Tensor, batched: bool) -> None:
    expected = "(B, 3, H, W) or (3, H, W)" if batched else "(3, H, W)"
    if image.ndim not in ((3, 4) if batched else (3,)) or image.shape[-3] != 3:
        raise ValueError(f"image: expected shape {expected}, got {tuple(image.shape)}")
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise ValueError(f"image: expected uint8 or float in [0, 1], got {image.dtype}")


# ----------------------------------------------------------------------------- strong image


def _gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    # A kernel of +-3 sigma holds 99.7% of the mass; reflect padding needs it to fit the image.
    radius = min(math.ceil(3 * sigma), min(image.shape[-2:]) - 1)
    return TF.gaussian_blur(image, [2 * radius + 1] * 2, [sigma, sigma])


# op -> (image, magnitude) -> image. Every op maps a pixel from its own value, its 3x3 (sharpness)
# or Gaussian (blur) neighbourhood and whole-image statistics, never from another location.
_INTENSITY_OPS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "identity": lambda image, _: image,
    "autocontrast": lambda image, _: TF.autocontrast(image),
    "equalize": lambda image, _: TF.equalize(image),
    "gaussian_blur": _gaussian_blur,
    "contrast": TF.adjust_contrast,
    "sharpness": TF.adjust_sharpness,
    "color": TF.adjust_saturation,
    "brightness": TF.adjust_brightness,
    "posterize": lambda image, bits: TF.posterize(image, int(bits)),
}

# op -> the AugmentConfig field holding its [lo, hi] magnitude range (ops absent take none).
_MAGNITUDE_FIELD = {
    "gaussian_blur": "blur_sigma",
    "contrast": "contrast",
    "sharpness": "sharpness",
    "color": "color",
    "brightness": "brightness",
    "posterize": "posterize_bits",
}


def apply_intensity_op(image: Tensor, op: str, magnitude: float = 0.0) -> Tensor:
    """Apply one intensity op of the strong pool.

    ``magnitude``: Gaussian sigma in pixels (``gaussian_blur``), PIL enhancement factor
    (``contrast``, ``sharpness``, ``color``, ``brightness``; 1 = unchanged), bits kept
    (``posterize``); ignored by ``identity``, ``autocontrast``, ``equalize``.
    Shapes: image (3, H, W), uint8 or float in [0, 1]. Returns: same shape, dtype and range.
    """
    if op not in _INTENSITY_OPS:
        raise ValueError(f"op: expected one of {', '.join(_INTENSITY_OPS)}, got {op!r}")
    return _INTENSITY_OPS[op](image, magnitude)


def sample_intensity_ops(cfg: AugmentConfig, generator: torch.Generator) -> list[tuple[str, float]]:
    """Draw ``cfg.num_ops`` ops from ``cfg.ops`` (with replacement), each with a magnitude drawn
    uniformly from its configured range (posterize bits uniformly among the integers).

    Returns: ``[(op, magnitude), ...]`` in application order.
    """
    drawn = []
    for _ in range(cfg.num_ops):
        op = cfg.ops[int(torch.randint(len(cfg.ops), (), generator=generator))]
        magnitude = 0.0
        if op in _MAGNITUDE_FIELD:
            lo, hi = getattr(cfg, _MAGNITUDE_FIELD[op])
            if op == "posterize":
                magnitude = float(torch.randint(int(lo), int(hi) + 1, (), generator=generator))
            else:
                magnitude = lo + (hi - lo) * torch.rand((), generator=generator).item()
        drawn.append((op, magnitude))
    return drawn


def strong_image(image: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """The strong image view: the weak image through ops from :func:`sample_intensity_ops`,
    drawn independently for each image of a batch. Geometry is untouched, so the weak view's
    mask, prior and pseudo-label apply as they are.

    Shapes: image (3, H, W) or (B, 3, H, W), uint8 or float in [0, 1].
    Returns: same shape, dtype and range.
    """
    _check_image(image, batched=True)
    if image.ndim == 4:
        return torch.stack([strong_image(one, cfg, generator) for one in image])
    for op, magnitude in sample_intensity_ops(cfg, generator):
        image = apply_intensity_op(image, op, magnitude)
    return image
