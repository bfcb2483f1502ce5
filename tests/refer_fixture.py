"""A tiny refer-format release on disk (refs pickle, instances.json, JPEGs) for tests.

Every mask is a union of axis-aligned rectangles ``(x0, y0, x1, y1)`` with integer corners in
image pixels, half-open: the pixels ``x0 <= x < x1``, ``y0 <= y < y1``, so a rectangle's area
is ``(x1 - x0) * (y1 - y0)``. That is pycocotools' rasterisation of the polygon
``[x0, y0, x1, y0, x1, y1, x0, y1]`` (pixel (x, y) being the unit square whose top-left corner
is (x, y)): measured with pycocotools 2.0.11, ``[2, 3, 6, 3, 6, 8, 2, 8]`` on a 10x10 image
fills exactly columns 2..5 and rows 3..7, area 20. The uncompressed RLE below is built by hand
from the same rectangles (column-major runs, starting with background), independently of
pycocotools.

Content (image size is width x height)::

    image 1  RGB   40x32  ann 101 polygon             (4, 6, 14, 16)                area 100
                          ann 102 polygon             (20, 4, 36, 12)               area 128
    image 2  L     48x36  ann 103 two-part polygon    (2, 2, 8, 6) + (20, 10, 30, 20) 24 + 100 = 124
    image 3  CMYK  40x32  ann 104 uncompressed RLE    (10, 5, 15, 25)               area 100
    image 4  RGB   40x32  ann 105 compressed RLE      (5, 5, 12, 9)                 area 28
                          ann 106 empty segmentation

    ref 1  ann 101  train  2 sentences (one padded with spaces)
    ref 2  ann 102  train  3 sentences, the third blank  -> 2 rows
    ref 3  ann 103  val    2 sentences
    ref 4  ann 104  testA  1 sentence
    ref 5  ann 105  testA  2 sentences
    ref 6  ann 106  train  empty segmentation            -> skipped
    ref 7  ann 999  val    ann_id not in instances.json  -> skipped
    ref 8  ann 101  testB  image_id 9 not in instances   -> skipped

Rows: train 4, val 2, testA 3; 9 in all.

:func:`make_split_fixture` writes the same images and annotations with clean refs instead, one
image per evaluation split of the release (RefCOCO/RefCOCO+ unc: val, testA, testB; RefCOCOg
umd: val, test), for evaluation on every split.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.config import DataConfig

CATEGORIES = {1: "person", 3: "car", 18: "dog"}
IMAGES = {  # image id -> (PIL mode, (width, height))
    1: ("RGB", (40, 32)),
    2: ("L", (48, 36)),
    3: ("CMYK", (40, 32)),
    4: ("RGB", (40, 32)),
}
ANNOTATIONS = {  # ann id -> (image id, category id, segmentation kind, rectangles)
    101: (1, 1, "polygon", [(4, 6, 14, 16)]),
    102: (1, 18, "polygon", [(20, 4, 36, 12)]),
    103: (2, 3, "polygon", [(2, 2, 8, 6), (20, 10, 30, 20)]),
    104: (3, 1, "rle", [(10, 5, 15, 25)]),
    105: (4, 18, "compressed_rle", [(5, 5, 12, 9)]),
    106: (4, 3, "empty", []),
}
REFS = [  # (ref id, ann id, image id, category id, split, sentences)
    (1, 101, 1, 1, "train", ["  the man on the left ", "person left"]),
    (2, 102, 1, 18, "train", ["dog", "brown dog on the right", "   "]),
    (3, 103, 2, 3, "val", ["the car", "red car in front"]),
    (4, 104, 3, 1, "testA", ["standing woman"]),
    (5, 105, 4, 18, "testA", ["small dog", "dog top left"]),
    (6, 106, 4, 3, "train", ["the car"]),
    (7, 999, 4, 1, "val", ["nobody"]),
    (8, 101, 9, 1, "testB", ["ghost"]),
]


def file_name(image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg"


def rect_mask(height: int, width: int, rects: list[tuple[int, int, int, int]]) -> np.ndarray:
    """(height, width) uint8 mask of the union of half-open pixel rectangles."""
    mask = np.zeros((height, width), np.uint8)
    for x0, y0, x1, y1 in rects:
        mask[y0:y1, x0:x1] = 1
    return mask


def _column_major_runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts: run lengths down columns, the first run background."""
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def _segmentation(kind: str, height: int, width: int, rects: list) -> Any:
    if kind == "polygon":
        return [[x0, y0, x1, y0, x1, y1, x0, y1] for x0, y0, x1, y1 in rects]
    if kind == "rle":
        return {
            "size": [height, width],
            "counts": _column_major_runs(rect_mask(height, width, rects)),
        }
    if kind == "compressed_rle":
        from pycocotools import mask as mask_utils

        rle = mask_utils.encode(np.asfortranarray(rect_mask(height, width, rects)))
        return {"size": [height, width], "counts": rle["counts"].decode()}  # as COCO JSON stores it
    return []


def _xywh_box(rects: list) -> list[int]:
    """COCO ``bbox`` [x, y, width, height] in pixels around the rectangles."""
    if not rects:
        return [0, 0, 0, 0]
    x0, y0 = min(r[0] for r in rects), min(r[1] for r in rects)
    return [x0, y0, max(r[2] for r in rects) - x0, max(r[3] for r in rects) - y0]


def _write_image(path: Path, mode: str, size: tuple[int, int], seed: int) -> None:
    width, height = size
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, "JPEG", quality=90)


def _write_release(root: Path, dataset: str, split_by: str, refs: list) -> dict:
    """Images, ``instances.json`` and ``refs(<split_by>).p`` with ``refs`` (rows as in
    :data:`REFS`) under ``root``; returns the folders, image files and expected masks."""
    refer_root, image_dir = root / "refer", root / "images"
    dataset_dir = refer_root / dataset
    dataset_dir.mkdir(parents=True)
    image_dir.mkdir()

    image_files = {}
    for image_id, (mode, size) in IMAGES.items():
        image_files[image_id] = image_dir / file_name(image_id)
        _write_image(image_files[image_id], mode, size, seed=image_id)

    annotations, masks = [], {}
    for ann_id, (image_id, category_id, kind, rects) in ANNOTATIONS.items():
        width, height = IMAGES[image_id][1]
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": _segmentation(kind, height, width, rects),
                "area": sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in rects),
                "bbox": _xywh_box(rects),
                "iscrowd": int(kind != "polygon"),
            }
        )
        if rects:
            masks[ann_id] = rect_mask(height, width, rects)
    instances = {
        "images": [
            {"id": i, "file_name": file_name(i), "height": size[1], "width": size[0]}
            for i, (_, size) in IMAGES.items()
        ],
        "annotations": annotations,
        "categories": [
            {"id": i, "name": name, "supercategory": name} for i, name in CATEGORIES.items()
        ],
    }
    (dataset_dir / "instances.json").write_text(json.dumps(instances))

    pickled = []
    for ref_id, ann_id, image_id, category_id, split, sents in refs:
        sentences = [
            {
                "sent_id": ref_id * 10 + k,
                "sent": s,
                "raw": s.strip().capitalize(),
                "tokens": s.split(),
            }
            for k, s in enumerate(sents)
        ]
        pickled.append(
            {
                "ref_id": ref_id,
                "ann_id": ann_id,
                "image_id": image_id,
                "split": split,
                "category_id": category_id,
                "sentences": sentences,
                "sent_ids": [s["sent_id"] for s in sentences],
                "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            }
        )
    with (dataset_dir / f"refs({split_by}).p").open("wb") as fh:
        pickle.dump(pickled, fh, protocol=2)  # the protocol of the published (Python 2) pickles
    return {
        "root": refer_root,
        "images": image_dir,
        "dataset": dataset,
        "split_by": split_by,
        "image_files": image_files,
        "masks": masks,
    }


def make_refer_fixture(root: Path, dataset: str = "refcoco", split_by: str = "unc") -> dict:
    """Write the release described in the module docstring under ``root``.

    Returns a dict: ``root`` (data.root) and ``images`` (data.images) folders, ``dataset``,
    ``split_by``, ``image_files`` {image id: path}, ``image_modes`` {image id: PIL mode},
    ``rows_per_split``, ``rows_per_image``, ``areas`` {ann id: pixels}, ``masks`` {ann id:
    expected (H, W) uint8 mask}, and the defects: ``blank_sentence`` (ref id, sent id),
    ``empty_segmentation_ref``, ``unknown_ann_ref``, ``unknown_image_ref``."""
    return _write_release(root, dataset, split_by, REFS) | {
        "image_modes": {i: mode for i, (mode, _) in IMAGES.items()},
        "rows_per_split": {"train": 4, "val": 2, "testA": 3},
        "rows_per_image": {1: 4, 2: 2, 3: 1, 4: 2},
        "areas": {101: 10 * 10, 102: 16 * 8, 103: 6 * 4 + 10 * 10, 104: 5 * 20, 105: 7 * 4},
        "blank_sentence": (2, 22),
        "empty_segmentation_ref": 6,
        "unknown_ann_ref": 7,
        "unknown_image_ref": 8,
    }


# Every evaluation split of a release holds pairs, on images of its own (as in the real
# releases, where no image is shared between splits): train on image 1, then one image per
# evaluation split, in EVAL_SPLITS order. RefCOCO/RefCOCO+ (unc): val, testA, testB;
# RefCOCOg (umd): val, test.
SPLIT_RELEASES = {
    ("refcoco", "unc"): ("val", "testA", "testB"),
    ("refcoco+", "unc"): ("val", "testA", "testB"),
    ("refcocog", "umd"): ("val", "test"),
}


def make_split_fixture(root: Path, dataset: str = "refcoco", split_by: str = "unc") -> dict:
    """A release with pairs in every split ``dataset`` (``split_by``) defines: refs 1-2 of
    :data:`REFS` on image 1 in train (4 rows), then images 2, 3, 4 (anns 103, 104, 105) in
    the evaluation splits of :data:`SPLIT_RELEASES`, 2, 1 and 2 sentences.

    Returns what :func:`make_refer_fixture` does for the folders and masks, and
    ``rows_per_split``."""
    splits = SPLIT_RELEASES[(dataset, split_by)]
    targets = [(3, 103, 2, 3), (4, 104, 3, 1), (5, 105, 4, 18)]  # ref, ann, image, category
    sentences = [["the car", "red car in front"], ["standing woman"], ["small dog", "dog top left"]]
    refs = [(1, 101, 1, 1, "train", ["the man on the left", "person left"])]
    refs.append((2, 102, 1, 18, "train", ["dog", "brown dog on the right"]))
    rows = {"train": 4}
    for k, (ref_id, ann_id, image_id, category_id) in enumerate(targets):
        split = splits[min(k, len(splits) - 1)]  # umd: images 3 and 4 both in test
        refs.append((ref_id, ann_id, image_id, category_id, split, sentences[k]))
        rows[split] = rows.get(split, 0) + len(sentences[k])
    return _write_release(root, dataset, split_by, refs) | {"rows_per_split": rows}


def fixture_config(fixture: dict, **overrides: Any) -> DataConfig:
    """The ``DataConfig`` that reads ``fixture`` (fields in ``overrides`` replace defaults)."""
    fields = {
        "dataset": fixture["dataset"],
        "split_by": fixture["split_by"],
        "root": str(fixture["root"]),
        "images": str(fixture["images"]),
    }
    return DataConfig(**(fields | overrides))


def truncate_jpeg(path: Path, keep_after_scan: int = 16) -> None:
    """Cut a JPEG a few bytes into its entropy-coded scan: the header still parses, the
    pixels do not decode."""
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\xff\xda") + keep_after_scan])
