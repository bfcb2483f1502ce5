"""Image-level labelled/unlabelled partition: property, determinism, tiny ratios."""

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.config import SplitConfig
from pipeline.contract import ROLE_SPLITS
from pipeline.datasets.manifest import read_partition
from pipeline.schema import ConfigError, build_section
from pipeline.split import partition, role_counts, write_partition


def make_manifest(n_images: int, pairs_per_image: int = 3, n_val: int = 2) -> pa.Table:
    rows = []
    for image_id in range(n_images + n_val):
        split = "train" if image_id < n_images else "val"
        for k in range(pairs_per_image):
            ref_id = image_id * 10 + k // 2  # two sentences on the first ref of each image
            rows.append(
                {
                    "sample_id": f"d/{split}/{ref_id}/{image_id * 100 + k}",
                    "split": split,
                    "image_id": image_id,
                    "ref_id": ref_id,
                }
            )
    return pa.Table.from_pylist(rows)


def roles_by_image(manifest: pa.Table, part: pa.Table) -> dict[int, set[str]]:
    joined = manifest.join(part, "sample_id").to_pylist()
    by_image: dict[int, set[str]] = {}
    for row in joined:
        by_image.setdefault(row["image_id"], set()).add(row["role"])
    return by_image


def test_partition_is_image_level_and_covers_train_only():
    manifest = make_manifest(200)
    part = partition(manifest, SplitConfig(labeled_ratio=0.1, seed=22))
    assert part.num_rows == 200 * 3  # val rows are not partitioned
    by_image = roles_by_image(manifest, part)
    assert all(len(roles) == 1 for roles in by_image.values())
    labeled = [i for i, roles in by_image.items() if roles == {"labeled"}]
    assert len(labeled) == 20
    counts = role_counts(manifest, part)
    assert (counts["labeled"].images, counts["labeled"].pairs, counts["labeled"].refs) == (
        20,
        60,
        40,
    )
    assert counts["unlabeled"].images == 180


def test_tiny_ratio_still_labels_one_image():
    part = partition(make_manifest(50), SplitConfig(labeled_ratio=0.001, seed=0))
    assert pc.sum(pc.equal(part["role"], "labeled")).as_py() == 3  # one image, three pairs


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    manifest = make_manifest(300)
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    write_partition(partition(manifest, SplitConfig(0.05, seed=22)), a)
    # Shuffled input rows must not change the output.
    shuffled = manifest.take(np.random.default_rng(1).permutation(manifest.num_rows))
    write_partition(partition(shuffled, SplitConfig(0.05, seed=22)), b)
    write_partition(partition(manifest, SplitConfig(0.05, seed=23)), c)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert read_partition(a).column_names == ["sample_id", "role"]


def test_held_out_images_leave_the_labelled_ones_and_no_role_trains_on_them():
    manifest = make_manifest(200)
    plain = partition(manifest, SplitConfig(labeled_ratio=0.1, seed=22))
    held = partition(manifest, SplitConfig(labeled_ratio=0.1, seed=22, holdout_ratio=0.2))
    by_image = roles_by_image(manifest, held)
    assert all(len(roles) == 1 for roles in by_image.values())
    images = {role: {i for i, r in by_image.items() if r == {role}} for role in ROLE_SPLITS}
    plain_labeled = {i for i, r in roles_by_image(manifest, plain).items() if r == {"labeled"}}
    assert images["labeled"] == plain_labeled  # the same 20 labelled images either way
    # 20 % of all 200 train images, drawn from the 180 that were unlabelled.
    assert (len(images["held_out"]), len(images["unlabeled"])) == (40, 140)
    counts = role_counts(manifest, held)
    assert (counts["held_out"].images, counts["held_out"].pairs) == (40, 120)
    assert [split for split in ROLE_SPLITS if split != "held_out"] == ["labeled", "unlabeled"]


def test_no_held_out_images_at_ratio_zero_and_other_seed_other_images():
    manifest = make_manifest(100)
    assert "held_out" not in partition(manifest, SplitConfig(0.1, seed=22))["role"].to_pylist()
    a, b = (
        partition(manifest, SplitConfig(0.1, seed=s, holdout_ratio=0.1)).filter(
            pc.equal(pc.field("role"), "held_out")
        )
        for s in (22, 23)
    )
    assert a.num_rows == b.num_rows == 30
    assert a["sample_id"].to_pylist() != b["sample_id"].to_pylist()


def test_a_held_out_part_that_leaves_no_unlabelled_image_fails_with_the_key():
    with pytest.raises(ConfigError, match=re.escape("labeled_ratio (0.5) + holdout_ratio (0.5)")):
        build_section(SplitConfig, {"labeled_ratio": 0.5, "holdout_ratio": 0.5}, "split")
    # Two images: one labelled, and a held-out part of at least one image takes the other.
    with pytest.raises(ValueError, match="leaves no unlabelled train image of 2"):
        partition(make_manifest(2), SplitConfig(0.5, seed=0, holdout_ratio=0.01))
