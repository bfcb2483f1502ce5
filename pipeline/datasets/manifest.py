"""The sample manifest: one Parquet row per image–expression pair (DESIGN.md section 3).

Both dataset builders (RefCOCO family, synthetic) produce :class:`Sample` rows and write
them with :func:`write_manifest`; every later stage reads them with :func:`read_manifest`.
``image_path`` is relative to the manifest's image root, which is stored in the Parquet
schema metadata relative to the manifest file's own folder, so a copied or moved working
tree (``dvc exp run`` temp copies) still resolves its images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import ALL_SPLITS, PathsConfig, PipelineConfig
from pipeline.contract import ROLE_SPLITS, select_pairs
from pipeline.tables import read_table, write_table_atomic

SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),  # {dataset}/{split}/{ref_id}/{sent_id}
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("image_id", pa.int64()),
        ("image_path", pa.string()),  # relative to the manifest's image root
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("ref_id", pa.int64()),
        ("ann_id", pa.int64()),
        ("sent_id", pa.int64()),
        ("expression", pa.string()),
        ("mask", pa.string()),  # COCO RLE (compressed counts) as a JSON string
        ("category", pa.string()),
        ("expr_kind", pa.string()),  # synthetic only: attribute|spatial|ordinal|relation
    ]
)
IMAGE_ROOT_KEY = b"l2l.image_root"


@dataclass(frozen=True)
class Sample:
    """One image–expression pair, in manifest column order."""

    sample_id: str
    dataset: str
    split: str
    image_id: int
    image_path: str
    height: int
    width: int
    ref_id: int
    ann_id: int
    sent_id: int
    expression: str
    mask: str
    category: str
    expr_kind: str | None = None


@dataclass
class PreparedDataset:
    """What a dataset builder returns: the pairs, the folder their ``image_path`` is relative
    to, and the items it skipped as ``(item, reason)`` (logged and counted by the CLI)."""

    samples: list[Sample]
    image_root: Path
    skipped: list[tuple[str, str]]


assert [f.name for f in fields(Sample)] == SCHEMA.names, "Sample and SCHEMA drifted apart"


def sample_id(dataset: str, split: str, ref_id: int, sent_id: int) -> str:
    return f"{dataset}/{split}/{ref_id}/{sent_id}"


def encode_mask(mask: np.ndarray) -> str:
    """(H, W) bool/uint8 mask -> compressed COCO RLE as a JSON string."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return json.dumps({"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()})


def decode_mask(rle_json: str) -> np.ndarray:
    """Compressed COCO RLE JSON string -> (H, W) uint8 mask in {0, 1}."""
    from pycocotools import mask as mask_utils

    rle = json.loads(rle_json)
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})


def write_manifest(samples: list[Sample], path: str | Path, image_root: str | Path) -> None:
    """Write ``samples`` (sorted by sample_id for a byte-stable file) atomically to ``path``."""
    path = Path(path)
    rows = sorted((asdict(s) for s in samples), key=lambda r: r["sample_id"])
    root = os.path.relpath(Path(image_root).resolve(), path.parent.resolve())
    schema = SCHEMA.with_metadata({IMAGE_ROOT_KEY: root.encode()})
    write_table_atomic(pa.Table.from_pylist(rows, schema=schema), path)


def read_manifest(path: str | Path) -> pa.Table:
    return read_table(path, "manifest", "l2l-priors prepare")


def read_partition(path: str | Path) -> pa.Table:
    """The image-level partition of train: sample_id, role (``pipeline.split``)."""
    return read_table(path, "partition", "l2l-priors split")


def read_pairs(paths: PathsConfig, split: str) -> pa.Table:
    """The manifest rows of ``split``, a partition role (labeled/unlabeled/held_out) or a dataset
    split (train/val/test/testA/...); see :func:`pipeline.contract.select_pairs`."""
    manifest = read_manifest(paths.samples)
    partition = read_partition(paths.partition) if split in ROLE_SPLITS else None
    return select_pairs(manifest, split, partition)


def expand_splits(
    splits: Sequence[str], samples: str | Path, release_order: Sequence[str] = ()
) -> tuple[str, ...]:
    """``splits`` with ``all`` replaced, in place, by every split of the manifest at
    ``samples`` but train (RefCOCO: val, testA, testB; RefCOCOg umd: val, test), in
    ``release_order`` (:data:`~pipeline.config.EVAL_SPLITS`), then by name; a split named twice
    is kept once. Roles and other names pass through."""
    if ALL_SPLITS not in splits:
        return tuple(dict.fromkeys(splits))
    present = set(read_manifest(samples)["split"].to_pylist()) - {"train"}
    if not present:
        raise ValueError(f"{samples}: no split besides train to evaluate")
    order = list(release_order)
    every = sorted(present, key=lambda s: (order.index(s) if s in order else len(order), s))
    expanded = [name for s in splits for name in (every if s == ALL_SPLITS else [s])]
    return tuple(dict.fromkeys(expanded))


def prior_splits(cfg: PipelineConfig, split: str | None = None) -> Iterator[str]:
    """What ``generate`` and ``report`` cover, in order: ``split`` (a CLI's ``--split``), else
    ``priors.splits``, each split once. ``all`` expands to the dataset's evaluation splits
    when it is reached (it reads the manifest), so the splits before it, and a bad teacher
    config found on the first of them, come first."""
    seen = set()
    for entry in [split] if split else cfg.priors.splits:
        for name in expand_splits([entry], cfg.paths.samples, cfg.data.eval_splits or ()):
            if name not in seen:
                seen.add(name)
                yield name


def image_root(path: str | Path, table: pa.Table | None = None) -> Path:
    """The folder that the manifest at ``path``'s ``image_path`` column is relative to."""
    path = Path(path)
    meta = (table.schema if table is not None else pq.read_schema(path)).metadata or {}
    if IMAGE_ROOT_KEY not in meta:
        raise ValueError(f"{path}: not an L2L manifest (no {IMAGE_ROOT_KEY.decode()} metadata)")
    # Relative to the real file, so a symlinked manifest (one per experiment) still resolves.
    return (path.resolve().parent / meta[IMAGE_ROOT_KEY].decode()).resolve()


def load_rgb(path: str | Path):
    """Open an image file as an RGB PIL image (8 bits per channel), fully decoded.

    Greyscale, CMYK, palette and RGBA inputs are converted (alpha is dropped, the colour
    under it kept). 16-bit greyscale is scaled to 8 bits by its high byte, as Pillow itself
    reduces 16-bit colour PNGs; Pillow's own conversion would clip every value above 255 to
    white. Raises ``OSError`` naming the file if it cannot be read.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode.startswith("I;16") or img.mode == "I":
                wide = np.asarray(img, dtype=np.int64)  # I;16B and friends read as numbers
                grey = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
                return Image.fromarray(grey, "L").convert("RGB")
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise OSError(f"unreadable image {path}: {err}") from err


def split_counts(samples: list[Sample]) -> dict[str, dict[str, int]]:
    """Per split: number of pairs and of distinct images."""
    counts: dict[str, dict[str, Any]] = {}
    for s in samples:
        entry = counts.setdefault(s.split, {"pairs": 0, "images": set()})
        entry["pairs"] += 1
        entry["images"].add(s.image_id)
    return {
        split: {"pairs": c["pairs"], "images": len(c["images"])}
        for split, c in sorted(counts.items())
    }


def write_prepare_report(prepared: PreparedDataset, dataset: str, path: str | Path) -> None:
    """Provenance of a prepared dataset: source, pairs and images per split, and every
    skipped item with its reason (the DVC ``prepare`` stage's record of what it read)."""
    counts = split_counts(prepared.samples)
    report = {
        "dataset": dataset,
        "image_root": str(prepared.image_root),
        "pairs": {split: c["pairs"] for split, c in counts.items()},
        "images": {split: c["images"] for split, c in counts.items()},
        "skipped": [{"item": item, "reason": reason} for item, reason in prepared.skipped],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
