"""The refer-format loader on a tiny real-format fixture (see tests/refer_fixture.py)."""

import pickle
import re
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from refer_fixture import fixture_config, make_refer_fixture, truncate_jpeg

from pipeline.config import DataConfig
from pipeline.datasets.manifest import decode_mask, load_rgb
from pipeline.datasets.refcoco import ReferFormatError, ann_mask, build_refcoco
from pipeline.schema import ConfigError


@pytest.fixture
def fx(tmp_path):
    return make_refer_fixture(tmp_path)


def skip_reasons(prepared) -> dict[str, str]:
    return dict(prepared.skipped)


def test_rows_per_split_and_image(fx):
    prepared = build_refcoco(fixture_config(fx))
    assert Counter(s.split for s in prepared.samples) == fx["rows_per_split"]
    assert Counter(s.image_id for s in prepared.samples) == fx["rows_per_image"]
    assert prepared.image_root == fx["images"]
    assert all((fx["images"] / s.image_path).is_file() for s in prepared.samples)


def test_masks_match_the_rectangles(fx):
    prepared = build_refcoco(fixture_config(fx))
    seen = set()
    for s in prepared.samples:
        mask = decode_mask(s.mask)
        assert mask.shape == (s.height, s.width)
        assert int(mask.sum()) == fx["areas"][s.ann_id]
        np.testing.assert_array_equal(mask, fx["masks"][s.ann_id])
        seen.add(s.ann_id)
    # polygon, multi-part polygon, uncompressed RLE, compressed RLE all decoded
    assert seen == {101, 102, 103, 104, 105}


def test_sample_fields(fx):
    samples = {s.sample_id: s for s in build_refcoco(fixture_config(fx)).samples}
    for sid, s in samples.items():
        assert sid == f"refcoco/{s.split}/{s.ref_id}/{s.sent_id}"
        assert re.fullmatch(r"refcoco/(train|val|testA)/\d+/\d+", sid)
        assert s.dataset == "refcoco" and s.expr_kind is None
    first = samples["refcoco/train/1/10"]
    assert first.expression == "the man on the left"  # stripped
    assert (first.category, first.ann_id, first.image_id) == ("person", 101, 1)
    assert (first.height, first.width) == (32, 40)
    assert samples["refcoco/val/3/30"].category == "car"
    assert (samples["refcoco/val/3/30"].height, samples["refcoco/val/3/30"].width) == (36, 48)


def test_greyscale_and_cmyk_images_load_as_rgb(fx):
    prepared = build_refcoco(fixture_config(fx))
    for image_id, mode in ((2, "L"), (3, "CMYK")):
        rows = [s for s in prepared.samples if s.image_id == image_id]
        assert len(rows) == fx["rows_per_image"][image_id]
        path = prepared.image_root / rows[0].image_path
        with load_rgb(path) as img, Image.open(path) as raw:
            assert (raw.mode, img.mode) == (mode, "RGB")


def test_defects_are_skipped_with_reasons(fx):
    reasons = skip_reasons(build_refcoco(fixture_config(fx)))
    ref_id, sent_id = fx["blank_sentence"]
    assert reasons[f"sentence refcoco/train/{ref_id}/{sent_id}"] == "empty expression"
    assert "empty segmentation" in reasons[f"ref refcoco/train/{fx['empty_segmentation_ref']}"]
    assert (
        "ann_id 999 is not in instances.json" in reasons[f"ref refcoco/val/{fx['unknown_ann_ref']}"]
    )
    assert (
        "image_id 9 is not in instances.json"
        in reasons[f"ref refcoco/testB/{fx['unknown_image_ref']}"]
    )
    assert len(reasons) == 4


def test_truncated_and_missing_images_skip_their_pairs(fx):
    truncate_jpeg(fx["image_files"][2])
    fx["image_files"][3].unlink()
    prepared = build_refcoco(fixture_config(fx, verify_images=True))
    reasons = skip_reasons(prepared)
    assert "truncated" in reasons["image 2 (COCO_train2014_000000000002.jpg)"]
    assert str(fx["image_files"][2]) in reasons["image 2 (COCO_train2014_000000000002.jpg)"]
    assert reasons["image 3 (COCO_train2014_000000000003.jpg)"].startswith("image file missing")
    assert {s.image_id for s in prepared.samples} == {1, 4}
    assert len(prepared.samples) == 9 - 2 - 1


def test_header_check_only_without_verify(fx):
    truncate_jpeg(fx["image_files"][2])
    prepared = build_refcoco(fixture_config(fx, verify_images=False))
    assert len(prepared.samples) == 9  # the header parses; decoding is left to later stages
    assert not any(item.startswith("image") for item, _ in prepared.skipped)


def test_image_size_disagreeing_with_instances_is_skipped(fx):
    Image.new("RGB", (20, 10)).save(fx["image_files"][4], "JPEG")
    reasons = skip_reasons(build_refcoco(fixture_config(fx, verify_images=False)))
    assert (
        "is 20x10 pixels, instances.json says 40x32"
        in reasons["image 4 (COCO_train2014_000000000004.jpg)"]
    )


def test_deterministic_across_workers_and_progress_per_image(fx):
    calls = []
    one = build_refcoco(fixture_config(fx, workers=1), progress=lambda: calls.append(1))
    four = build_refcoco(fixture_config(fx, workers=4))
    assert one.samples == four.samples and one.skipped == four.skipped
    assert len(calls) == 4  # images 1-4; image 9 is not in instances.json


def test_refcocog_umd(tmp_path):
    fx = make_refer_fixture(tmp_path, dataset="refcocog", split_by="umd")
    samples = build_refcoco(fixture_config(fx)).samples
    assert len(samples) == 9 and all(s.sample_id.startswith("refcocog/") for s in samples)


def test_split_by_must_fit_the_dataset():
    with pytest.raises(ConfigError, match=r"split_by 'unc' does not fit dataset 'refcocog'"):
        DataConfig(dataset="refcocog", split_by="unc")


@pytest.mark.parametrize("missing", ["root", "dataset", "refs", "instances", "images"])
def test_missing_files_name_the_file_and_layout(fx, missing):
    dataset_dir = fx["root"] / "refcoco"
    path = {
        "root": fx["root"],
        "dataset": dataset_dir,
        "refs": dataset_dir / "refs(unc).p",
        "instances": dataset_dir / "instances.json",
        "images": fx["images"],
    }[missing]
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(FileNotFoundError) as err:
        build_refcoco(fixture_config(fx))
    assert f"not found: {path};" in str(err.value)
    assert "refs(unc).p" in str(err.value) and "instances.json" in str(err.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"refs": []}, r"refs: is a dict, expected a list of refs"),
        ([{"ref_id": 1}], r"refs\[0\] \(ref_id 1\) has no 'ann_id'"),
        ("not a pickle", r"not a readable pickle"),
    ],
)
def test_malformed_pickle_names_the_file_and_ref(fx, content, expected):
    refs_path = fx["root"] / "refcoco" / "refs(unc).p"
    if isinstance(content, str):
        refs_path.write_text(content)
    else:
        refs_path.write_bytes(pickle.dumps(content))
    with pytest.raises(ReferFormatError, match=re.escape(str(refs_path)) + ".*" + expected):
        build_refcoco(fixture_config(fx))


def test_malformed_sentence_names_the_ref(fx):
    refs_path = fx["root"] / "refcoco" / "refs(unc).p"
    refs = pickle.loads(refs_path.read_bytes())
    refs[2]["sentences"][1]["sent"] = None
    refs_path.write_bytes(pickle.dumps(refs))
    with pytest.raises(
        ReferFormatError, match=r"ref_id 3 sentences\[1\] \(sent_id 31\) has sent=None"
    ):
        build_refcoco(fixture_config(fx))


@pytest.mark.parametrize(
    ("segmentation", "expected"),
    [
        ([], "empty segmentation"),
        ([[1, 2, 3, 4]], "empty segmentation"),  # 2 points: no area (and not a box)
        ([[0, 0, 5, 0, 7, 0]], "zero area"),  # collinear triangle
        ({"size": [8, 12], "counts": [96]}, "zero area"),
        ({"size": [12, 8], "counts": [96]}, r"RLE size \[12, 8\] differs"),
        ({"size": [8, 12], "counts": [10, 5]}, "counts sum to 15, not height \\* width = 96"),
        ("polygon", "segmentation is a str"),
    ],
)
def test_ann_mask_rejects_unusable_segmentations(segmentation, expected):
    with pytest.raises(ValueError, match=expected):
        ann_mask(segmentation, 8, 12)


def test_ann_mask_merges_overlapping_polygon_parts():
    # (1, 1, 5, 5) and (3, 3, 8, 7) overlap in (3, 3, 5, 5): 16 + 20 - 4 pixels
    mask = ann_mask([[1, 1, 5, 1, 5, 5, 1, 5], [3, 3, 8, 3, 8, 7, 3, 7]], 8, 12)
    assert mask.shape == (8, 12) and int(mask.sum()) == 32
