"""Image-level labelled/unlabelled partition of the train split (DESIGN.md section 3).

The unit of the partition is the *image*: all pairs on one image share a role, so a labelled
and an unlabelled expression never describe the same picture. The labelled images are a
seeded sample of ``max(1, round(ratio * n_images))`` train images, so even 0.1 % of a small
set labels one image. ``split.holdout_ratio`` withholds a further sample of the other images
from training (role ``held_out``), a part of train to tune on instead of val. The output is
sorted and written with fixed Parquet options, so the same seed and manifest give the same
file byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import SplitConfig
from pipeline.contract import ROLE_SPLITS, held_out_images, labeled_images
from pipeline.tables import write_table_atomic

PARTITION_SCHEMA = pa.schema([("sample_id", pa.string()), ("role", pa.string())])


@dataclass(frozen=True)
class RoleCounts:
    images: int
    refs: int
    pairs: int


def partition(manifest: pa.Table, cfg: SplitConfig) -> pa.Table:
    """Partition the manifest's ``train`` rows: a table (sample_id, role) sorted by sample_id."""
    train = manifest.filter(pc.equal(manifest["split"], "train"))
    if train.num_rows == 0:
        raise ValueError("the manifest has no 'train' rows to partition")
    image_ids = train["image_id"].to_numpy()
    labeled, unlabeled, held_out = ROLE_SPLITS
    roles = np.full(len(image_ids), unlabeled, dtype=object)
    roles[np.isin(image_ids, labeled_images(image_ids, cfg))] = labeled
    roles[np.isin(image_ids, held_out_images(image_ids, cfg))] = held_out
    if cfg.holdout_ratio > 0 and unlabeled not in roles:
        raise ValueError(
            f"split.holdout_ratio {cfg.holdout_ratio:g} leaves no unlabelled train image "
            f"of {len(np.unique(image_ids))}"
        )
    table = pa.table(
        {"sample_id": train["sample_id"], "role": pa.array(roles)}, schema=PARTITION_SCHEMA
    )
    return table.sort_by("sample_id")


def role_counts(manifest: pa.Table, part: pa.Table) -> dict[str, RoleCounts]:
    """Images, refs and pairs per role."""
    joined = manifest.select(["sample_id", "image_id", "ref_id"]).join(part, "sample_id")
    counts = {}
    for role in ROLE_SPLITS:
        rows = joined.filter(pc.equal(joined["role"], role))
        counts[role] = RoleCounts(
            images=len(pc.unique(rows["image_id"])),
            refs=len(pc.unique(rows["ref_id"])),
            pairs=rows.num_rows,
        )
    return counts


def write_partition(part: pa.Table, path: str | Path) -> None:
    write_table_atomic(part, path, compression="zstd")
