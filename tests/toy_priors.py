"""A hand-made dataset for prior tests: non-square images whose masks are stripes of a
16 x 16 grid scaled by (2, 3), so a prior drawn on the grid maps onto the image exactly.

Images are 32 x 48 (H x W) and the prior size is 16, so one square-frame pixel covers 2 rows
and 3 columns of the image. Bilinear resizing by an integer factor of 2 or 3 and thresholding
at 0.5 gives back exactly a scaled edge (the pixel nearest an edge weighs the nearer cell
3/4 or 2/3), so IoUs can be computed by hand. Only along one axis: at a block's inner corner
the two weights multiply to 1/2, a tie. So the masks are full-width or full-height stripes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from pipeline.config import load_pipeline_config
from pipeline.datasets.manifest import Sample, encode_mask, write_manifest

H, W, S = 32, 48, 16
SCALE = (H // S, W // S)


def block(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """(S, S) uint8 mask of grid rows r0:r1 and columns c0:c1."""
    mask = np.zeros((S, S), np.uint8)
    mask[r0:r1, c0:c1] = 1
    return mask


def to_image(grid: np.ndarray) -> np.ndarray:
    """(S, S) grid -> (H, W) original frame, each cell repeated (2, 3) times."""
    return np.kron(grid, np.ones(SCALE, grid.dtype))


# sample_id -> (image file, expression, ground truth on the grid); areas in original pixels
# 192, 192, 192, 384, 384.
PAIRS = {
    "toy/val/1/1": ("a.png", "the top stripe", block(0, 2, 0, 16)),
    "toy/val/1/2": ("a.png", "the stripe at the top", block(0, 2, 0, 16)),
    "toy/val/2/3": ("b.png", "the thin bar", block(0, 16, 4, 6)),
    "toy/val/2/4": ("b.png", "the wide bar", block(0, 16, 8, 12)),
    "toy/val/3/5": ("c.png", "the low stripe", block(10, 14, 0, 16)),
}


def write_toy_dataset(root: Path) -> Path:
    """Images, manifest and params.yaml (priors.size 16, store/metrics under ``root``).

    Returns:
        the params.yaml path.
    """
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in sorted({image for image, _, _ in PAIRS.values()}):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(images / name)
    samples = [
        Sample(
            sample_id=sid,
            dataset="toy",
            split="val",
            image_id=int(sid.split("/")[2]),
            image_path=image,
            height=H,
            width=W,
            ref_id=int(sid.split("/")[2]),
            ann_id=int(sid.split("/")[3]),
            sent_id=int(sid.split("/")[3]),
            expression=expression,
            mask=encode_mask(to_image(gt)),
            category="block",
        )
        for sid, (image, expression, gt) in PAIRS.items()
    ]
    params = {
        "priors": {"size": S, "store": {"shard_rows": 2}},
        "paths": {
            "manifests": str(root / "manifests"),
            "priors": str(root / "priors"),
            "metrics": str(root / "metrics"),
        },
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    write_manifest(samples, load_pipeline_config(path).paths.samples, images)
    return path
