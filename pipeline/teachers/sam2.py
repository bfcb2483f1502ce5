"""SAM2 box-prompted soft masks: one image embedding, then every expression of that image.

:func:`build_sam2_prior` is the only place that constructs SAM2. :class:`SAM2Prior` has an
explicit lifecycle, like SAM2's own predictor: :meth:`SAM2Prior.set_image` encodes an image
once, then :meth:`SAM2Prior.predict` prompts it with the boxes (and points) of all that
image's expressions in one batched mask-decoder call.

Frames: prompts are XYXY / XY in original image pixels. SAM2 resizes the image to an
``image_size`` square *without* keeping its aspect ratio, and its low-resolution logits
(``image_size / 4`` on a side, 256 at the usual 1024) cover that square: they are the
*square-stretched* image frame, the frame the prior store keeps (``prob`` at ``priors.size``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pipeline.config import SAM2Config, resolve_placement

if TYPE_CHECKING:
    import torch


class SoftMasks(NamedTuple):
    """Soft masks of n prompts on one image, square-stretched frame."""

    prob: np.ndarray  # (n, size, size) float32 foreground probability; 0 where not finite
    finite: np.ndarray  # (n,) bool: False where SAM2's logits held NaN/inf


def best_mask_logits(logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Per prompt, the candidate mask SAM2 scores highest (its predicted IoU).

    Shapes:
        logits: (n, C, h, w), C candidates per prompt (1, or 3 with multimask output).
        scores: (n, C).
    Returns:
        (n, h, w) logits.
    """
    import torch

    return logits[torch.arange(len(logits)), scores.argmax(dim=1)]


def logits_to_prob(logits: torch.Tensor, size: int) -> SoftMasks:
    """Sigmoid of mask logits at ``size`` x ``size``; rows with any NaN/inf are flagged.

    Logits are resized (bilinear, as SAM2 upsamples its own) before the sigmoid, so the
    interpolation happens where the model's output is linear.

    Shapes:
        logits: (n, h, w), square-stretched frame.
    Returns:
        SoftMasks with prob (n, size, size) float32, finite (n,) bool; flagged rows are 0.
    """
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    finite = torch.isfinite(logits).flatten(1).all(dim=1)
    if logits.shape[-2:] != (size, size):
        logits = F.interpolate(
            logits[:, None], size=(size, size), mode="bilinear", align_corners=False
        )[:, 0]
    prob = torch.where(finite[:, None, None], torch.sigmoid(logits), 0.0)
    return SoftMasks(prob.cpu().numpy(), finite.cpu().numpy())


def point_prompts(points_original: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One foreground point per prompt in SAM2's layout.

    Shapes:
        points_original: (n, 2) XY original pixels, all finite.
    Returns:
        coords (n, 1, 2) float32, labels (n, 1) int32 (1: foreground).
    """
    if not np.isfinite(points_original).all():
        raise ValueError("point_prompts: every point must be finite (prompt NaN rows box-only)")
    coords = np.asarray(points_original, dtype=np.float32)[:, None, :]
    return coords, np.ones((len(coords), 1), dtype=np.int32)


class SAM2Prior:
    """Soft masks from SAM2 for box (and point) prompts; build with :func:`build_sam2_prior`.

    Lifecycle: ``set_image(rgb)`` once per image, then ``predict(...)`` any number of times;
    ``predict`` before any ``set_image`` raises ``RuntimeError``.
    """

    def __init__(self, predictor: Any, cfg: SAM2Config, size: int, device: str, dtype: str):
        self.predictor = predictor
        self.cfg = cfg
        self.size = size
        self._device_type = device.split(":")[0]
        self._dtype = dtype
        self._image_hw: tuple[int, int] | None = None

    def _autocast(self):
        import torch

        # SAM2's own examples run the CUDA path under bfloat16 autocast; weights stay fp32.
        return torch.autocast(
            self._device_type,
            dtype=getattr(torch, self._dtype),
            enabled=self._device_type == "cuda" and self._dtype != "float32",
        )

    def set_image(self, rgb: np.ndarray) -> None:
        """Encode one image (H, W, 3) uint8 RGB; replaces the previous image's embedding."""
        if not (isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[2] == 3):
            got = rgb.shape if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise ValueError(f"set_image: expected an (H, W, 3) RGB array, got {got}")
        if rgb.dtype != np.uint8:
            raise ValueError(f"set_image: expected uint8 pixels (0-255), got {rgb.dtype}")
        with self._autocast():
            self.predictor.set_image(rgb)
        self._image_hw = rgb.shape[:2]

    def predict(
        self, boxes_original: np.ndarray, points_original: np.ndarray | None = None
    ) -> SoftMasks:
        """Soft masks of n prompts on the current image, one batched SAM2 call per kind of
        prompt (box, box and point, point alone).

        A row whose box is NaN (a point-only grounding) is prompted with its point alone,
        whatever ``cfg.use_points`` says: it must have a finite point. Otherwise points
        prompt SAM2 only when ``cfg.use_points`` is set (NaN rows mean "no point"); without
        it they are ignored, so callers pass what the grounding gave and the config decides.

        Shapes:
            boxes_original: (n, 4) XYXY original pixels (NaN rows: no box), n >= 1.
            points_original: (n, 2) XY original pixels, or None.
        Returns:
            SoftMasks, prob (n, size, size) in the square-stretched frame.
        """
        import torch

        if self._image_hw is None:
            raise RuntimeError("SAM2Prior.predict called before set_image: encode the image first")
        boxes = np.asarray(boxes_original, dtype=np.float32)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
            raise ValueError(f"predict: expected boxes of shape (n, 4), n >= 1, got {boxes.shape}")
        has_box = np.isfinite(boxes).all(axis=1)
        if self.cfg.use_points and points_original is None:
            raise ValueError("predict: priors.sam2.use_points is on but no points were given")
        if points_original is None and not has_box.all():
            raise ValueError("predict: rows without a box need a point, but no points were given")
        points = np.full((len(boxes), 2), np.nan, np.float32)
        if points_original is not None:
            points = np.asarray(points_original, dtype=np.float32)
            if points.shape != (len(boxes), 2):
                raise ValueError(
                    f"predict: expected points of shape ({len(boxes)}, 2), got {points.shape}"
                )
        finite_point = np.isfinite(points).all(axis=1)
        if not (has_box | finite_point).all():
            row = int(np.argmax(~(has_box | finite_point)))
            raise ValueError(f"predict: row {row} has neither a finite box nor a finite point")
        has_point = finite_point & (~has_box | self.cfg.use_points)
        # Each kind of prompt goes to SAM2 in its own call: in one batch, a pointless row
        # would carry a padding point, which shifts its mask (by up to 0.02) from the
        # box-only prompt it is.
        logits = torch.empty(0)
        scores = torch.empty(0)
        for rows in (
            np.flatnonzero(has_box & ~has_point),
            np.flatnonzero(has_box & has_point),
            np.flatnonzero(~has_box),
        ):
            if len(rows) == 0:
                continue
            coords, labels = point_prompts(points[rows]) if has_point[rows[0]] else (None, None)
            group_logits, group_scores = self._prompt(
                boxes[rows] if has_box[rows[0]] else None, coords, labels, len(rows)
            )
            if logits.numel() == 0:
                logits = group_logits.new_empty(len(boxes), *group_logits.shape[1:])
                scores = group_scores.new_empty(len(boxes), *group_scores.shape[1:])
            logits[rows], scores[rows] = group_logits, group_scores
        return logits_to_prob(best_mask_logits(logits, scores), self.size)

    def _prompt(
        self,
        boxes: np.ndarray | None,
        coords: np.ndarray | None,
        labels: np.ndarray | None,
        n: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One batched SAM2 decoder call for n prompts (boxes, points or both).

        Returns: logits (n, C, h, w), scores (n, C)."""
        import torch

        with torch.inference_mode(), self._autocast():
            _, scores, logits = self.predictor.predict(
                point_coords=coords,
                point_labels=labels,
                box=boxes,
                multimask_output=self.cfg.multimask_output,
                return_logits=True,
            )
        # The predictor squeezes a batch of one away; restore (n, C, h, w) / (n, C).
        logits = torch.from_numpy(logits).reshape(n, -1, *logits.shape[-2:])
        return logits, torch.from_numpy(scores).reshape(n, -1)


def build_sam2_prior(
    cfg: SAM2Config, size: int, *, allow_random_weights: bool = False
) -> SAM2Prior:
    """Build SAM2 from the config name ``cfg.config`` and the local checkpoint
    ``cfg.checkpoint`` at ``cfg.image_size``; ``size`` is the stored prior side.

    ``allow_random_weights`` (tests and benchmarks only) permits ``checkpoint: null``.
    """
    if cfg.checkpoint is None:
        if not allow_random_weights:
            raise ValueError(
                "priors.sam2.checkpoint is null: set it to a local SAM2 .pt file "
                "matching priors.sam2.config to use the qwen-sam2 teacher"
            )
    elif not Path(cfg.checkpoint).is_file():
        raise FileNotFoundError(
            f"SAM2 checkpoint not found: {cfg.checkpoint} (set by priors.sam2.checkpoint); "
            "weights cannot be downloaded here, copy the file there first"
        )
    from hydra.errors import MissingConfigException
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    device, dtype = resolve_placement(cfg.device, cfg.dtype)
    try:
        model = build_sam2(
            cfg.config,
            cfg.checkpoint,
            device=device,
            hydra_overrides_extra=[f"++model.image_size={cfg.image_size}"],
        )
    except MissingConfigException:
        raise ValueError(
            f"priors.sam2.config: no SAM2 config named {cfg.config!r} in the sam2 package "
            "(e.g. configs/sam2.1/sam2.1_hiera_l.yaml)"
        ) from None
    predictor = SAM2ImagePredictor(model)
    # The predictor hard-codes the backbone feature sizes of a 1024 input (strides 4, 8, 16);
    # at any other image_size its reshape of the features would be wrong.
    s = cfg.image_size
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return SAM2Prior(predictor, cfg, size, device, dtype)
