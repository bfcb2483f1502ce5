"""The embedded synthetic referring-segmentation dataset (DESIGN.md section 5).

Each image is a scene of flat-coloured shapes on a textured background, later objects
occluding earlier ones. Every *target* object gets 1..``max_expressions`` referring
expressions that denote it and no other object of its scene, of four kinds
(``Sample.expr_kind``):

- ``attribute``: a minimal distinguishing subset of size, colour and shape
  ("the small red circle", "the red shape");
- ``spatial``: the extreme member of a look-alike group ("the square on the left",
  "the topmost red triangle");
- ``ordinal``: a rank inside a group of three or more ("the second triangle from the right");
- ``relation``: the only group member on one side of a uniquely described anchor
  ("the circle left of the blue star").

Spatial words compare object centres in image pixels (x right, y down) and are only used
with a clear gap (``spatial_margin`` x image size) between the centres they order.

Deterministic: image ``index`` of ``split`` draws everything from its own numpy Generator
seeded by ``(seed, split, index)``, so one split's scenes do not depend on the other splits'
sizes, and the PNG bytes are a function of the config alone.

Outputs under ``cfg.dir``: ``images/{split}/{image_id:06d}.png`` and ``objects.parquet``
(one row per object of every scene, :data:`OBJECTS_SCHEMA`), which the simulated teacher
reads to pick distractors.

Modules: ``synthetic_scenes`` draws the scenes, ``synthetic_text`` describes their targets,
this one writes the dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.config import SyntheticConfig
from pipeline.datasets.manifest import PreparedDataset, Sample, encode_mask, sample_id
from pipeline.datasets.synthetic_scenes import SPLITS, Scene, generate_scene

DATASET = "synthetic"

# Ids derive from the image id so they are unique across splits without a global counter:
# the config caps objects per scene at 12 and expressions per target at 3.
OBJECT_ID_STRIDE = 100  # object_id = image_id * stride + draw_order
SENT_ID_STRIDE = 10  # sent_id = ref_id * stride + expression index

OBJECTS_FILE = "objects.parquet"
OBJECTS_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("object_id", pa.int64()),  # = ann_id of the object's samples
        ("split", pa.string()),
        ("shape", pa.string()),
        ("color", pa.string()),
        ("size", pa.string()),
        ("draw_order", pa.int32()),  # 0 is drawn first (bottom-most)
        ("cx", pa.float64()),  # shape centre, image pixels
        ("cy", pa.float64()),
        ("bbox", pa.list_(pa.int32(), 4)),  # x, y, w, h of the visible mask, pixels
        ("area", pa.int64()),  # visible pixels
        ("mask", pa.string()),  # visible region, COCO RLE JSON
    ]
)


def _bbox(mask: np.ndarray) -> list[int]:
    """x, y, w, h (pixels) of a non-empty (H, W) mask."""
    ys, xs = np.nonzero(mask)
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


def _scene_records(
    scene: Scene, split: str, image_id: int, image_path: str, size: int
) -> tuple[list[dict], list[Sample]]:
    """The scene's objects-table rows and its manifest samples."""
    rows, samples = [], []
    for obj in scene.objects:
        visible = scene.labels == obj.draw_order + 1
        object_id = image_id * OBJECT_ID_STRIDE + obj.draw_order
        rle = encode_mask(visible)
        rows.append(
            {
                "image_id": image_id,
                "object_id": object_id,
                "split": split,
                "shape": obj.shape,
                "color": obj.color,
                "size": obj.size,
                "draw_order": obj.draw_order,
                "cx": obj.cx,
                "cy": obj.cy,
                "bbox": _bbox(visible),
                "area": int(visible.sum()),
                "mask": rle,
            }
        )
        for j, (kind, text) in enumerate(scene.expressions.get(obj.draw_order, [])):
            sent_id = object_id * SENT_ID_STRIDE + j
            samples.append(
                Sample(
                    sample_id=sample_id(DATASET, split, object_id, sent_id),
                    dataset=DATASET,
                    split=split,
                    image_id=image_id,
                    image_path=image_path,
                    height=size,
                    width=size,
                    ref_id=object_id,
                    ann_id=object_id,
                    sent_id=sent_id,
                    expression=text,
                    mask=rle,
                    category=obj.shape,
                    expr_kind=kind,
                )
            )
    return rows, samples


def build_synthetic(
    cfg: SyntheticConfig, progress: Callable[[], None] | None = None
) -> PreparedDataset:
    """Generate the dataset under ``cfg.dir`` (images and ``objects.parquet``) and return its
    samples; ``progress`` is called once per image. Image ids run 1.. over train, val, test."""
    root = Path(cfg.dir)
    counts = {"train": cfg.train_images, "val": cfg.val_images, "test": cfg.test_images}
    rows: list[dict] = []
    samples: list[Sample] = []
    image_id = 0
    for split in SPLITS:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        for index in range(counts[split]):
            image_id += 1
            scene = generate_scene(cfg, split, index)
            image_path = f"images/{split}/{image_id:06d}.png"
            Image.fromarray(scene.image).save(root / image_path, format="PNG")
            scene_rows, scene_samples = _scene_records(
                scene, split, image_id, image_path, cfg.image_size
            )
            rows.extend(scene_rows)
            samples.extend(scene_samples)
            if progress is not None:
                progress()
    tmp = root / f"{OBJECTS_FILE}.tmp"
    pq.write_table(pa.Table.from_pylist(rows, schema=OBJECTS_SCHEMA), tmp)
    tmp.replace(root / OBJECTS_FILE)
    return PreparedDataset(samples=samples, image_root=root, skipped=[])
