"""Bad images through every stage that opens one: ``load_rgb``, ``prepare`` (refer format),
``generate`` with the simulated teacher, and the trainer's pair loading. (The real teacher's
pass over the same images is in ``test_bad_answers.py``, which drives its answers.)

Readable odd images (alpha, greyscale, CMYK, 16-bit, 1x1, 10000x50, 4000x10) load as the RGB
uint8 pixels they hold; unreadable ones (truncated, missing) are skipped by prepare with a
reason, stored as ``unreadable_image`` by generate, and named with their sample by the trainer.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from bad_inputs import (
    EXPRESSIONS,
    NON_ASCII,
    READABLE,
    TOLERANCE,
    UNREADABLE,
    make_bad_refer_release,
    write_readable,
)
from fault_injection import build_generate_workspace, run_cli

from pipeline.config import load_pipeline_config
from pipeline.contract import PriorStatus, teacher_hash
from pipeline.datasets.manifest import image_root, load_rgb, read_manifest, read_pairs
from pipeline.store.reader import PriorStore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def readable(tmp_path_factory):
    return write_readable(tmp_path_factory.mktemp("readable"))


@pytest.mark.parametrize("kind", READABLE)
def test_load_rgb_gives_the_pixels_as_rgb_uint8(readable, kind):
    path, expected = readable[kind]
    rgb = np.asarray(load_rgb(path))
    assert rgb.dtype == np.uint8 and rgb.shape == expected.shape
    diff = np.abs(rgb.astype(int) - expected.astype(int)).max()
    assert diff <= TOLERANCE.get(kind, 0), f"{kind}: off by {diff}"


def test_sixteen_bit_greyscale_is_scaled_not_clipped(readable):
    rgb = np.asarray(load_rgb(readable["grey16_png"][0]))
    # Pillow's own conversion would make every value above 255 white.
    assert len(np.unique(rgb)) > 200 and rgb.min() == 0 and rgb.max() == 65195 >> 8


@pytest.mark.parametrize("kind", UNREADABLE)
def test_unreadable_images_raise_naming_the_file(tmp_path, kind):
    path = tmp_path / "broken.jpg"
    UNREADABLE[kind](path)
    with pytest.raises(OSError, match=r"broken\.jpg"):
        load_rgb(path)


# ----------------------------------------------------------------------------- prepare


def refer_params(tmp_path: Path, release: dict) -> Path:
    params = {
        "data": {
            "dataset": "refcoco",
            "root": str(release["root"]),
            "images": str(release["images"]),
            "workers": 1,
        },
        "paths": {n: str(tmp_path / n) for n in ("prepared", "manifests", "priors")},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True))
    return path


@pytest.mark.slow
def test_prepare_keeps_readable_images_and_counts_skips_with_reasons(tmp_path):
    release = make_bad_refer_release(tmp_path / "raw")
    params = refer_params(tmp_path, release)
    result = run_cli("pipeline.cli", "prepare", "--params", str(params))
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "Traceback" not in out

    manifest = read_manifest(load_pipeline_config(params).paths.samples).to_pylist()
    words = [e for e in EXPRESSIONS if e.strip()]
    assert {r["image_path"] for r in manifest} == {release["files"][k].name for k in READABLE}
    assert len(manifest) == len(READABLE) * len(words)
    # Expressions are stored as written (stripped): long and non-ASCII ones unchanged.
    assert sorted({r["expression"] for r in manifest}) == sorted(words)
    for r in manifest:
        kind = r["image_path"].rsplit(".", 1)[0]
        assert (r["height"], r["width"]) == release["expected"][kind].shape[:2]

    blank = len(READABLE) * (len(EXPRESSIONS) - len(words))
    skipped = len(UNREADABLE) + blank
    assert f"{skipped} items skipped" in out
    assert f"{blank} x sentence: empty expression" in out
    assert "1 x image: image file missing: <path>" in out
    assert "truncated" in out
    report = json.loads((tmp_path / "prepared" / "report.json").read_text())
    assert len(report["skipped"]) == skipped
    reasons = {s["item"]: s["reason"] for s in report["skipped"]}
    assert any("missing.png" in item and "missing" in why for item, why in reasons.items())


# ----------------------------------------------------------------------------- generate


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A prepared and split small synthetic dataset (params.yaml in the returned folder)."""
    return build_generate_workspace(tmp_path_factory.mktemp("synthetic"), train_images=16).parent


def stored_by_sample(cfg) -> dict[str, tuple[int, np.ndarray]]:
    store = PriorStore.open(cfg.paths.priors, teacher_hash=teacher_hash(cfg.priors))
    ids = read_pairs(cfg.paths, "unlabeled")["sample_id"].to_pylist()
    prob, status = store.get(store.lookup_sample(ids))
    return {i: (int(s), p) for i, s, p in zip(ids, status, prob, strict=True)}


@pytest.mark.slow
def test_generate_simulated_marks_unreadable_images_and_goes_on(synthetic, tmp_path):
    params = synthetic / "params.yaml"
    cfg = load_pipeline_config(params)
    clean = run_cli("pipeline.cli", "generate", "--params", str(params))
    assert clean.returncode == 0, clean.stderr
    expected = stored_by_sample(cfg)

    # Replace the unlabelled images by every kind of odd file, then generate into a new store.
    pairs = read_pairs(cfg.paths, "unlabeled").to_pylist()
    root = image_root(cfg.paths.samples)
    paths = list(dict.fromkeys(p["image_path"] for p in pairs))
    kinds = [*UNREADABLE, *READABLE]
    assert len(paths) >= len(kinds)
    backup = tmp_path / "backup"
    shutil.copytree(root, backup)
    odd = write_readable(tmp_path / "odd")
    kind_of = {}
    try:
        for path, kind in zip(paths, kinds, strict=False):
            target = root / path
            if kind in UNREADABLE:
                UNREADABLE[kind](target)
            else:
                shutil.copy(odd[kind][0], target)
            kind_of[path] = kind
        second = dict(yaml.safe_load(params.read_text()))
        second["paths"] = {**second["paths"], "priors": str(tmp_path / "priors")}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(second))
        result = run_cli("pipeline.cli", "generate", "--params", str(tmp_path / "params.yaml"))
    finally:
        shutil.rmtree(root)
        shutil.copytree(backup, root)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    unreadable = [p for p in pairs if kind_of.get(p["image_path"]) in UNREADABLE]
    assert f"{len(unreadable)} x unreadable_image, e.g. {unreadable[0]['sample_id']}" in out

    got = stored_by_sample(load_pipeline_config(tmp_path / "params.yaml"))
    assert set(got) == set(expected)
    for pair in pairs:
        status, prob = got[pair["sample_id"]]
        if kind_of.get(pair["image_path"]) in UNREADABLE:
            assert status == PriorStatus.UNREADABLE_IMAGE and not prob.any()
        else:  # the simulation does not look at readable pixels
            assert status == expected[pair["sample_id"]][0]
            np.testing.assert_array_equal(prob, expected[pair["sample_id"]][1])


# ----------------------------------------------------------------------------- trainer


def test_trainer_loads_odd_images_and_names_the_sample_of_an_unreadable_one(readable, tmp_path):
    from l2l_train.pairs import PairSource, resize_image

    shutil.copytree(readable["rgba_png"][0].parent, tmp_path / "images")
    for kind in UNREADABLE:
        UNREADABLE[kind](tmp_path / "images" / f"{kind}.jpg")
    names = [readable[k][0].name for k in READABLE] + [f"{k}.jpg" for k in UNREADABLE]
    n = len(names)
    rows = pa.table(
        {
            "sample_id": [f"odd/train/{i}/0" for i in range(n)],
            "image_path": names,
            "expression": (NON_ASCII * n)[:n],
            "mask": [None] * n,
            "ref_id": list(range(n)),
            "height": [1] * n,
            "width": [1] * n,
        }
    )
    source = PairSource(rows, tmp_path / "images", image_size=32, tokenizer=None)
    for i, kind in enumerate(READABLE):
        image = source.image(i)
        assert image.dtype.is_floating_point is False and tuple(image.shape) == (3, 32, 32)
        want = resize_image(readable[kind][1], 32)
        assert (image.int() - want.int()).abs().max() <= TOLERANCE.get(kind, 0)
    for i in range(len(READABLE), n):
        with pytest.raises(OSError, match=rf"odd/train/{i}/0.*{names[i]}"):
            source.image(i)
