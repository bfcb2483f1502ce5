"""Pictures of single pairs for ``l2l-priors show``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from pipeline.config import PipelineConfig
from pipeline.contract import PriorStatus
from pipeline.datasets.manifest import decode_mask, image_root, load_rgb, read_manifest

GT_COLOUR = np.array([0, 200, 0], dtype=np.float32)
BOX_COLOUR = (0, 200, 255)  # the grounding box, drawn over the prior's heat map


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


@dataclass(frozen=True)
class StoredPrior:
    """A pair's prior as the store holds it."""

    prob: np.ndarray  # (S, S) float32, square-stretched frame
    status: PriorStatus
    box: np.ndarray  # (4,) XYXY original pixels, NaN when the teacher found none


def find_prior(cfg: PipelineConfig, row: dict) -> StoredPrior | None:
    """The prior of manifest ``row`` by the configured teacher, None if the store lacks it."""
    from pipeline.contract import pair_image_hashes, pair_keys, teacher_hash
    from pipeline.store.reader import PriorStore

    t_hash = teacher_hash(cfg.priors)
    store = PriorStore.open(cfg.paths.priors, teacher_hash=t_hash)
    key = pair_keys([row], pair_image_hashes([row], image_root(cfg.paths.samples)), t_hash)[0]
    if key not in store:
        return None
    prob, status = store.get([key])
    box, _ = store.read_cues([key])
    return StoredPrior(prob[0], PriorStatus(int(status[0])), box[0])


def heat_overlay(rgb: np.ndarray, prob: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """Tint (H, W, 3) uint8 ``rgb`` by an (H, W) probability map on a red (low) to yellow
    (high) ramp, more opaque where the probability is higher -> (H, W, 3) uint8."""
    p = np.clip(prob, 0.0, 1.0)[..., None]
    colour = np.concatenate([np.full_like(p, 255.0), 255.0 * p, np.zeros_like(p)], axis=-1)
    out = (1 - alpha * p) * rgb.astype(np.float32) + alpha * p * colour
    return out.clip(0, 255).astype(np.uint8)


def draw_box(panel: np.ndarray, box_xyxy: np.ndarray, colour=BOX_COLOUR) -> np.ndarray:
    """(H, W, 3) uint8 with the XYXY box (in this panel's pixels) outlined; a NaN box
    leaves the panel as it is."""
    from PIL import Image, ImageDraw

    if not np.isfinite(box_xyxy).all():
        return panel
    picture = Image.fromarray(panel)
    width = max(1, max(panel.shape[:2]) // 192)
    ImageDraw.Draw(picture).rectangle([float(v) for v in box_xyxy], outline=colour, width=width)
    return np.asarray(picture)


def render_sample(cfg: PipelineConfig, sample_id: str, out: str | Path) -> None:
    """Write a PNG of the pair with its expression and ground-truth mask overlaid, plus, when
    the store holds a prior of the configured teacher for it, the prior's heat map (resized
    from the square-stretched frame to the image) with the grounding box."""
    from pipeline.contract import resize_prob

    row, rgb, gt = load_pair(cfg, sample_id)
    panels = [rgb, overlay_mask(rgb, gt, GT_COLOUR)]
    caption = f'{row["sample_id"]}: "{row["expression"]}"  (green: ground truth'
    prior = find_prior(cfg, row)
    if prior is not None:
        panels.append(heat_overlay(rgb, resize_prob(prior.prob, rgb.shape[:2])))
        caption += (
            f"; heat: prior of {cfg.priors.teacher}, status {prior.status.name.lower()}"
            "; cyan box: grounding"
        )
    scale = max(1, 384 // max(rgb.shape[:2]))  # small synthetic images are hard to read at 1x
    panels = [p.repeat(scale, 0).repeat(scale, 1) for p in panels]
    if prior is not None:
        panels[-1] = draw_box(panels[-1], prior.box * scale)
    picture = caption_panel(panels, caption + ")")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
