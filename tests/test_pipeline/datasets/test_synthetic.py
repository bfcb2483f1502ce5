"""The embedded synthetic dataset: unambiguous expressions, exact masks, determinism."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import SyntheticConfig
from pipeline.datasets.manifest import decode_mask, sample_id
from pipeline.datasets.synthetic import OBJECTS_FILE, build_synthetic
from pipeline.datasets.synthetic_scenes import COLORS, generate_scene, shape_mask
from pipeline.schema import ConfigError, build_section

SMALL = {"train_images": 30, "val_images": 10, "test_images": 10}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cfg = SyntheticConfig(dir=str(tmp_path_factory.mktemp("synthetic")), **SMALL)
    calls = []
    prepared = build_synthetic(cfg, progress=lambda: calls.append(1))
    return cfg, prepared, pq.read_table(Path(cfg.dir) / OBJECTS_FILE).to_pylist(), len(calls)


# ----------------------------------------------------------------------------- the oracle
# An interpreter written from the expression grammar alone: it reads the text and the
# objects table and returns every object a careful reader could take the phrase to mean.
# Positions within `margin` pixels of each other count as "could be either order".

NP = (
    r"(?:(?P<{p}size>small|large) )?"
    r"(?:(?P<{p}color>red|green|blue|yellow|purple|orange) )?"
    r"(?P<{p}noun>circle|square|triangle|star|diamond|hexagon|shape)"
)
PLACES = {
    "on the left": "left",
    "on the right": "right",
    "at the top": "top",
    "at the bottom": "bottom",
}
ORDINAL_RANK = {"second": 1, "third": 2, "fourth": 3, "fifth": 4}
RELATION_SIDE = {"left of": "left", "right of": "right", "above": "top", "below": "bottom"}
GRAMMAR = [
    ("attribute", re.compile(rf"the {NP.format(p='t')}")),
    ("spatial", re.compile(rf"the {NP.format(p='t')} (?P<place>{'|'.join(PLACES)})")),
    ("spatial", re.compile(rf"the (?P<most>left|right|top|bottom)most {NP.format(p='t')}")),
    (
        "ordinal",
        re.compile(
            rf"the (?P<ord>{'|'.join(ORDINAL_RANK)}) {NP.format(p='t')} "
            r"from the (?P<side>left|right|top|bottom)"
        ),
    ),
    (
        "relation",
        re.compile(
            rf"the {NP.format(p='t')} (?P<rel>{'|'.join(RELATION_SIDE)}) the {NP.format(p='a')}"
        ),
    ),
]
AMBIGUOUS = -1  # returned in a denotation when an object sits inside the margin band


def _toward(obj: dict, side: str) -> float:
    """Smaller means further towards ``side`` (image pixels, y down)."""
    return {"left": obj["cx"], "right": -obj["cx"], "top": obj["cy"], "bottom": -obj["cy"]}[side]


def _fits(obj: dict, m: re.Match, p: str) -> bool:
    size, color, noun = m[f"{p}size"], m[f"{p}color"], m[f"{p}noun"]
    return (
        (size is None or obj["size"] == size)
        and (color is None or obj["color"] == color)
        and (noun == "shape" or obj["shape"] == noun)
    )


def _ranked(group: list[dict], side: str, rank: int, margin: float) -> set[int]:
    """Objects that could be the ``rank``-th (0-based) from ``side``: those with at most
    ``rank`` objects surely before them and at least ``rank`` possibly before them."""
    found = set()
    for obj in group:
        others = [_toward(g, side) for g in group if g is not obj]
        surely = sum(k <= _toward(obj, side) - margin for k in others)
        possibly = sum(k < _toward(obj, side) + margin for k in others)
        if surely <= rank <= possibly:
            found.add(obj["object_id"])
    return found


def denote(text: str, scene: list[dict], margin: float) -> tuple[str, set[int]]:
    """(kind, object ids the expression could refer to) in ``scene``."""
    for kind, pattern in GRAMMAR:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        group = [o for o in scene if _fits(o, m, "t")]
        if kind == "attribute":
            return kind, {o["object_id"] for o in group}
        if kind == "spatial":
            side = PLACES[m["place"]] if "place" in m.groupdict() else m["most"]
            return kind, _ranked(group, side, 0, margin)
        if kind == "ordinal":
            return kind, _ranked(group, m["side"], ORDINAL_RANK[m["ord"]], margin)
        anchors = [o for o in scene if _fits(o, m, "a")]
        if len(anchors) != 1:
            return kind, {AMBIGUOUS}
        side, limit = RELATION_SIDE[m["rel"]], _toward(anchors[0], RELATION_SIDE[m["rel"]])
        on_side = [o for o in group if o is not anchors[0] and _toward(o, side) < limit]
        unclear = any(_toward(o, side) > limit - margin for o in on_side)
        return kind, {o["object_id"] for o in on_side} | ({AMBIGUOUS} if unclear else set())
    raise AssertionError(f"expression outside the grammar: {text!r}")


def test_oracle_on_a_hand_built_scene():
    scene = [  # three red circles, a blue star below them
        {"object_id": 1, "shape": "circle", "color": "red", "size": "small", "cx": 10, "cy": 50},
        {"object_id": 2, "shape": "circle", "color": "red", "size": "large", "cx": 50, "cy": 50},
        {"object_id": 3, "shape": "circle", "color": "red", "size": "small", "cx": 55, "cy": 20},
        {"object_id": 4, "shape": "star", "color": "blue", "size": "small", "cx": 52, "cy": 90},
    ]
    assert denote("the large shape", scene, 10) == ("attribute", {2})
    assert denote("the small red circle", scene, 10) == ("attribute", {1, 3})
    assert denote("the circle on the left", scene, 10) == ("spatial", {1})
    assert denote("the rightmost circle", scene, 10) == ("spatial", {2, 3})  # 5 px apart
    assert denote("the topmost circle", scene, 10) == ("spatial", {3})
    assert denote("the second circle from the left", scene, 10) == ("ordinal", {2, 3})
    assert denote("the second circle from the left", scene, 4) == ("ordinal", {2})
    assert denote("the circle above the star", scene, 10) == ("relation", {1, 2, 3})
    assert denote("the small circle left of the star", scene, 10) == ("relation", {1})
    assert denote("the circle left of the star", scene, 10) == ("relation", {1, 2, AMBIGUOUS})
    assert denote("the circle left of the circle", scene, 10) == ("relation", {AMBIGUOUS})


def test_every_expression_denotes_exactly_its_target(built):
    cfg, prepared, objects, _ = built
    scenes = defaultdict(list)
    for obj in objects:
        scenes[obj["image_id"]].append(obj)
    margin = cfg.spatial_margin * cfg.image_size
    for s in prepared.samples:
        kind, referents = denote(s.expression, scenes[s.image_id], margin)
        assert kind == s.expr_kind, s
        assert referents == {s.ann_id}, (s.expression, scenes[s.image_id])


# ----------------------------------------------------------------------------- contents


def test_counts_ids_and_paths(built):
    cfg, prepared, objects, progress_calls = built
    assert progress_calls == sum(SMALL.values())
    images = {
        s: {o["image_id"] for o in objects if o["split"] == s} for s in ("train", "val", "test")
    }
    assert {s: len(ids) for s, ids in images.items()} == {"train": 30, "val": 10, "test": 10}
    assert not images["train"] & images["val"] and not images["val"] & images["test"]
    assert {s.split for s in prepared.samples} == {"train", "val", "test"}
    assert prepared.image_root == Path(cfg.dir) and prepared.skipped == []
    for s in prepared.samples:
        assert s.dataset == "synthetic" and s.ref_id == s.ann_id
        assert s.sample_id == sample_id("synthetic", s.split, s.ref_id, s.sent_id)
        assert s.image_path == f"images/{s.split}/{s.image_id:06d}.png"
        assert (s.height, s.width) == (cfg.image_size, cfg.image_size)
    assert len({s.sent_id for s in prepared.samples}) == len(prepared.samples)
    assert len({o["object_id"] for o in objects}) == len(objects)
    with Image.open(Path(cfg.dir) / prepared.samples[0].image_path) as img:
        assert (img.mode, img.size) == ("RGB", (cfg.image_size, cfg.image_size))


def test_scene_sizes_targets_and_expression_kinds(built):
    _, prepared, objects, _ = built
    per_image = Counter(o["image_id"] for o in objects)
    assert set(per_image.values()) <= set(range(2, 7))
    by_ref = defaultdict(list)
    for s in prepared.samples:
        assert s.expression.strip() == s.expression and s.expression
        by_ref[s.ref_id].append(s)
    for ref in by_ref.values():
        assert 1 <= len(ref) <= 3
        assert len({s.expr_kind for s in ref}) == len(ref)  # one expression per kind
        assert {s.category for s in ref} == {ref[0].category}
    assert len(by_ref) >= 0.6 * len(objects)  # most objects are targets
    assert set(Counter(s.expr_kind for s in prepared.samples)) == {
        "attribute",
        "spatial",
        "ordinal",
        "relation",
    }


def test_masks_are_the_visible_regions_in_the_object_colour(built):
    cfg, prepared, objects, _ = built
    by_id = {o["object_id"]: o for o in objects}
    palette = np.array(list(COLORS.values()), dtype=float)
    for s in prepared.samples:
        obj = by_id[s.ann_id]
        mask = decode_mask(s.mask).astype(bool)
        assert mask.sum() == obj["area"] > 0 and s.mask == obj["mask"]
        ys, xs = np.nonzero(mask)
        assert obj["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
        image = np.asarray(Image.open(Path(cfg.dir) / s.image_path), dtype=float)
        mean = image[mask].mean(axis=0)
        nearest = list(COLORS)[int(np.argmin(((palette - mean) ** 2).sum(axis=1)))]
        assert nearest == obj["color"], (s.sample_id, mean)
    for image_id in {o["image_id"] for o in objects}:
        masks = [decode_mask(o["mask"]) for o in objects if o["image_id"] == image_id]
        assert np.stack(masks).sum(axis=0).max() == 1  # visible regions never overlap


def test_masks_equal_the_label_map_and_pixels_exactly():
    cfg = SyntheticConfig(pixel_noise=0.0, **SMALL)
    for index in range(10):
        scene = generate_scene(cfg, "train", index)
        assert len(scene.objects) >= 2
        for obj in scene.objects:
            visible = scene.labels == obj.draw_order + 1
            # Without anti-aliasing every visible pixel is exactly the object's shade.
            assert visible.sum() > 0 and (scene.image[visible] == obj.rgb).all()
        background = scene.image[scene.labels == 0].astype(float)
        assert background.std(axis=0).min() > 3  # textured, not flat


def test_written_files_are_the_rendered_scenes(built):
    cfg, prepared, objects, _ = built
    for s in prepared.samples[:20]:
        split_start = min(o["image_id"] for o in objects if o["split"] == s.split)
        scene = generate_scene(cfg, s.split, s.image_id - split_start)
        obj = next(o for o in objects if o["object_id"] == s.ann_id)
        assert (np.asarray(Image.open(Path(cfg.dir) / s.image_path)) == scene.image).all()
        assert (decode_mask(s.mask) == (scene.labels == obj["draw_order"] + 1)).all()


def test_objects_keep_the_visible_fraction():
    cfg = SyntheticConfig(min_objects=6, max_objects=6, **SMALL)
    for index in range(5):
        scene = generate_scene(cfg, "val", index)
        for obj in scene.objects:
            full = shape_mask(obj.shape, obj.cx, obj.cy, obj.extent, cfg.image_size).sum()
            assert (scene.labels == obj.draw_order + 1).sum() >= cfg.min_visible * full


# ----------------------------------------------------------------------------- determinism


def _snapshot(root: Path, prepared) -> tuple[list, dict[str, bytes], bytes]:
    pngs = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("images/*/*.png"))}
    return prepared.samples, pngs, (root / "objects.parquet").read_bytes()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    small = {"train_images": 4, "val_images": 2, "test_images": 2}
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        cfg = SyntheticConfig(seed=seed, dir=str(tmp_path / name), **small)
        runs[name] = _snapshot(tmp_path / name, build_synthetic(cfg))
    assert runs["a"] == runs["b"]
    assert runs["a"][0] != runs["c"][0]
    assert runs["a"][1].keys() == runs["c"][1].keys() and runs["a"][1] != runs["c"][1]


def test_a_split_does_not_depend_on_the_other_split_sizes():
    base = SyntheticConfig(**SMALL)
    bigger = dataclasses.replace(base, train_images=500)
    assert (generate_scene(base, "val", 3).image == generate_scene(bigger, "val", 3).image).all()


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"min_objects": 5, "max_objects": 3}, "min_objects (5) must not exceed max_objects (3)"),
        ({"small_radius": 0.2, "large_radius": 0.1}, "small_radius (0.2) must be below"),
        ({"seed": -1}, "data.synthetic.seed: expected an int >= 0, got -1"),
    ],
)
def test_config_rejects_inconsistent_values(raw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_section(SyntheticConfig, raw, "data.synthetic")


def test_unplaceable_scene_names_the_fix():
    cfg = SyntheticConfig(
        image_size=32, min_objects=12, max_objects=12, small_radius=0.24, large_radius=0.25, **SMALL
    )
    with pytest.raises(ValueError, match="lower large_radius, min_objects or min_visible"):
        generate_scene(cfg, "train", 0)
