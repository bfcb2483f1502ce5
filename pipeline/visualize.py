"""Pictures of single pairs for ``l2l-priors show``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from pipeline.config import PipelineConfig
from pipeline.datasets.manifest import decode_mask, image_root, load_rgb, read_manifest

GT_COLOUR = np.array([0, 200, 0], dtype=np.float32)


def overlay_mask(rgb: np.ndarray, mask: np.ndarray, colour: np.ndarray, alpha: float = 0.45):
    """(H, W, 3) uint8 image with (H, W) {0,1} mask tinted in ``colour`` -> (H, W, 3) uint8."""
    out = rgb.astype(np.float32)
    sel = mask.astype(bool)
    out[sel] = (1 - alpha) * out[sel] + alpha * colour
    return out.clip(0, 255).astype(np.uint8)


def caption_panel(panels: list[np.ndarray], caption: str):
    """Lay ``panels`` (equal-height (H, W, 3) uint8) side by side above a caption line."""
    from PIL import Image, ImageDraw, ImageFont

    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels)
    font = ImageFont.load_default(size=max(12, height // 24))
    text_h = int(font.size * 1.8)
    canvas = Image.new("RGB", (width, height + text_h), "white")
    x = 0
    for panel in panels:
        canvas.paste(Image.fromarray(panel), (x, 0))
        x += panel.shape[1]
    ImageDraw.Draw(canvas).text((4, height + 2), caption, fill="black", font=font)
    return canvas


def load_pair(cfg: PipelineConfig, sample_id: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """The manifest row, (H, W, 3) uint8 image and (H, W) gt mask of ``sample_id``."""
    manifest = read_manifest(cfg.paths.samples)
    hit = manifest.filter(pc.equal(manifest["sample_id"], sample_id))
    if hit.num_rows == 0:
        raise KeyError(f"sample_id {sample_id!r} is not in {cfg.paths.samples}")
    row = hit.to_pylist()[0]
    rgb = np.asarray(load_rgb(image_root(cfg.paths.samples, manifest) / row["image_path"]))
    return row, rgb, decode_mask(row["mask"])


def render_sample(cfg: PipelineConfig, sample_id: str, out: str | Path) -> None:
    """Write a PNG of the pair with its expression and ground-truth mask overlaid."""
    row, rgb, gt = load_pair(cfg, sample_id)
    panels = [rgb, overlay_mask(rgb, gt, GT_COLOUR)]
    scale = max(1, 384 // max(rgb.shape[:2]))  # small synthetic images are hard to read at 1x
    panels = [p.repeat(scale, 0).repeat(scale, 1) for p in panels]
    picture = caption_panel(
        panels, f'{row["sample_id"]}: "{row["expression"]}"  (green: ground truth)'
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
