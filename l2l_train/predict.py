"""Single-pair inference from a checkpoint: image + expression -> mask (no prior; the agent
and the teacher are training-time only), with the test-time flip where the run evaluated
with one (``eval.flip``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from l2l_train.augment import flip_expression
from l2l_train.checkpoint import load_checkpoint
from l2l_train.evaluate import model_from_checkpoint, segment, upsample_logits
from l2l_train.pairs import normalize_images, resize_image


class Predictor:
    """A trained segmentor in eval mode with its tokenizer, input size, test-time flip
    (``flip``; None: as the checkpoint's run evaluated, its ``eval.flip``) and the threshold
    its run evaluated at (``eval.threshold``)."""

    def __init__(
        self, checkpoint: str | Path, device: torch.device | str = "cpu", flip: bool | None = None
    ) -> None:
        from l2l_train.model import build_tokenizer

        self.device = torch.device(device)
        ckpt = load_checkpoint(checkpoint, map_location=self.device)
        model, model_cfg, self.image_size = model_from_checkpoint(ckpt)
        self.model = model.to(self.device).eval()
        self.tokenizer = build_tokenizer(model_cfg.text)
        # Checkpoints from before eval.flip existed evaluated without it.
        self.flip = ckpt["config"]["eval"].get("flip", False) if flip is None else flip
        self.threshold = float(ckpt["config"]["eval"]["threshold"])  # on the probability

    def text(self, expression: str) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = self.tokenizer([expression])
        return {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
        }

    @torch.no_grad()
    def probability(self, image: Image.Image, expression: str) -> np.ndarray:
        """Foreground probability at the image's original resolution, (H, W) float32."""
        rgb = np.asarray(image.convert("RGB"))
        pixels = resize_image(rgb, self.image_size)[None].to(self.device)  # (1, 3, S, S)
        flipped = self.text(flip_expression(expression)) if self.flip else None
        logits = segment(
            self.model, normalize_images(pixels), self.text(expression), text_flipped=flipped
        )
        prob = torch.sigmoid(upsample_logits(logits[0], rgb.shape[:2]))
        return prob[0].cpu().numpy()


def mask_image(mask: np.ndarray) -> Image.Image:
    """(H, W) bool mask -> greyscale PNG-ready image, 255 on the referred object."""
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


def overlay(
    image: Image.Image,
    mask: np.ndarray,
    color: tuple[int, int, int] = (255, 40, 40),
    alpha: float = 0.5,
) -> Image.Image:
    """The image with the mask tinted in ``color`` at opacity ``alpha``."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    tint = np.array(color, dtype=np.float32)
    blended = np.where(mask[..., None], (1 - alpha) * rgb + alpha * tint, rgb)
    return Image.fromarray(blended.round().astype(np.uint8))
