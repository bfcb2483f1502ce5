"""Image-level labelled/unlabelled partition: property, determinism, tiny ratios."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import SplitConfig
from pipeline.datasets.manifest import read_partition
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
