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
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from pipeline.config import SyntheticConfig
from pipeline.datasets.manifest import PreparedDataset, Sample, encode_mask, sample_id

DATASET = "synthetic"
SPLITS = ("train", "val", "test")
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "green": (40, 160, 70),
    "blue": (40, 80, 200),
    "yellow": (225, 200, 40),
    "purple": (130, 60, 170),
    "orange": (235, 130, 30),
}
SIZES = ("small", "large")
EXPR_KINDS = ("attribute", "spatial", "ordinal", "relation")

# Attributes in the order their words appear in a noun phrase ("the small red circle").
ATTRIBUTES = ("size", "color", "shape")
# The noun when the shape itself is not part of the description ("the red shape").
GENERIC_NOUN = "shape"
# Every subset of ATTRIBUTES, smallest first: a descriptor names the attributes a phrase uses.
DESCRIPTORS = tuple(
    combo for r in range(len(ATTRIBUTES) + 1) for combo in itertools.combinations(ATTRIBUTES, r)
)

# direction -> (centre axis, sign): sign * centre is smaller the further the object lies
# that way, so every direction is "sort ascending".
DIRECTIONS = {"left": (0, 1.0), "right": (0, -1.0), "top": (1, 1.0), "bottom": (1, -1.0)}
SPATIAL_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
SUPERLATIVES = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "bottommost"}
RELATIONS = {"left": "left of", "right": "right of", "top": "above", "bottom": "below"}
# Ranks past the fifth are not how people refer to things; rank 0 is the spatial kind.
ORDINALS = ("first", "second", "third", "fourth", "fifth")

# Ids derive from the image id so they are unique across splits without a global counter:
# the config caps objects per scene at 12 and expressions per target at 3.
OBJECT_ID_STRIDE = 100  # object_id = image_id * stride + draw_order
SENT_ID_STRIDE = 10  # sent_id = ref_id * stride + expression index

PLACEMENT_TRIES = 50  # positions tried per object before it is left out of the scene
SCENE_TRIES = 20  # fresh scenes tried before the config is declared unsatisfiable
# (grid cells across the image, relative amplitude) of the background's smooth noise octaves.
BACKGROUND_OCTAVES = ((4, 1.0), (16, 0.35))
BACKGROUND_GREY = (90.0, 170.0)  # base grey level range: muted, never a palette colour
BACKGROUND_TINT = 12.0  # per-channel offset of the base grey

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


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape. ``cx``/``cy``: its centre in image pixels (x right, y down)."""

    draw_order: int
    shape: str
    color: str
    size: str
    cx: float
    cy: float
    extent: float  # distance from the centre to the farthest vertex, pixels
    rgb: tuple[int, int, int]  # the jittered shade it is drawn in

    def key(self, direction: str) -> float:
        """Signed centre coordinate: smaller means further towards ``direction``."""
        axis, sign = DIRECTIONS[direction]
        return sign * (self.cx if axis == 0 else self.cy)


@dataclass(frozen=True)
class Scene:
    """A rendered scene and its expressions.

    ``image``: (H, W, 3) uint8 RGB. ``labels``: (H, W) int16, 0 background, ``k + 1`` where
    object ``k`` (draw order) is visible. ``expressions``: draw order of each target ->
    ``(expr_kind, text)`` pairs.
    """

    image: np.ndarray
    labels: np.ndarray
    objects: tuple[SceneObject, ...]
    expressions: dict[int, list[tuple[str, str]]]


# ----------------------------------------------------------------------------- rendering


def scene_rng(cfg: SyntheticConfig, split: str, index: int) -> np.random.Generator:
    """The generator that image ``index`` of ``split`` draws everything from."""
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r} (expected one of {SPLITS})")
    return np.random.default_rng([cfg.seed, SPLITS.index(split), index])


def _unit_polygon(shape: str) -> np.ndarray:
    """(V, 2) vertices of ``shape`` with circumradius 1 around the origin, y down."""
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    first_angle, sides = {
        "square": (np.pi / 4, 4),  # axis-aligned edges
        "diamond": (-np.pi / 2, 4),  # a vertex at the top: a square turned 45 degrees
        "triangle": (-np.pi / 2, 3),  # pointing up
        "hexagon": (-np.pi / 2, 6),
    }[shape]
    angles = first_angle + np.arange(sides) * 2 * np.pi / sides
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _polygon_area(vertices: np.ndarray) -> float:
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _extent_scale(shape: str) -> float:
    """Circumradius of ``shape`` with the area of the unit circle."""
    if shape == "circle":
        return 1.0
    return math.sqrt(math.pi / _polygon_area(_unit_polygon(shape)))


def shape_mask(shape: str, cx: float, cy: float, extent: float, size: int) -> np.ndarray:
    """(size, size) bool mask of a shape drawn without anti-aliasing, so the pixels it covers
    in the image and in the label map are exactly the same set."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([cx - extent, cy - extent, cx + extent, cy + extent], fill=1)
    else:
        vertices = _unit_polygon(shape) * extent + np.array([cx, cy])
        draw.polygon([tuple(v) for v in vertices.tolist()], fill=1)
    return np.asarray(canvas, dtype=bool)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size, 3) float32 noise in about [-1, 1], smooth over ``size / cells`` pixels."""
    coarse = rng.uniform(-1.0, 1.0, (3, cells, cells)).astype(np.float32)
    channels = [
        np.asarray(Image.fromarray(c).resize((size, size), Image.Resampling.BICUBIC))
        for c in coarse
    ]
    return np.stack(channels, axis=-1)


def _background(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """(S, S, 3) float32 textured grey background, before pixel noise."""
    base = rng.uniform(*BACKGROUND_GREY) + rng.uniform(-BACKGROUND_TINT, BACKGROUND_TINT, 3)
    texture = sum(
        weight * _smooth_noise(rng, cfg.image_size, cells) for cells, weight in BACKGROUND_OCTAVES
    )
    return (base + cfg.background_amplitude * texture).astype(np.float32)


def _grow(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool mask dilated by one pixel (4-neighbourhood)."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def _place(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    labels: np.ndarray,
    full_areas: list[int],
    shape: str,
    extent: float,
    keep_off: np.ndarray,
) -> tuple[float, float, np.ndarray] | None:
    """A centre (image pixels) for a new top-most shape that keeps it inside the image, off
    the ``keep_off`` pixels, and leaves every object below it at least ``min_visible`` of its
    full area; None if none of PLACEMENT_TRIES random centres does."""
    size = cfg.image_size
    lo, hi = extent, size - 1 - extent
    if lo > hi:
        return None
    for _ in range(PLACEMENT_TRIES):
        cx, cy = rng.uniform(lo, hi, 2)
        mask = shape_mask(shape, float(cx), float(cy), extent, size)
        if (mask & keep_off).any():
            continue
        left_visible = np.bincount(labels[~mask], minlength=len(full_areas) + 1)[1:]
        if np.all(left_visible >= cfg.min_visible * np.asarray(full_areas)):
            return float(cx), float(cy), mask
    return None


def _place_objects(
    rng: np.random.Generator, cfg: SyntheticConfig
) -> tuple[tuple[SceneObject, ...], np.ndarray]:
    """Sample and place a scene's objects. Returns them in draw order and the (S, S) int16
    label map (0 background, k + 1 where object k is visible)."""
    for _ in range(SCENE_TRIES):
        count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        shapes = rng.choice(SHAPES, int(rng.integers(1, cfg.max_kinds + 1)), replace=False)
        colors = rng.choice(list(COLORS), int(rng.integers(1, cfg.max_kinds + 1)), replace=False)
        labels = np.zeros((cfg.image_size, cfg.image_size), np.int16)
        objects: list[SceneObject] = []
        full_areas: list[int] = []
        for _ in range(count):
            shape = str(rng.choice(shapes))
            color = str(rng.choice(colors))
            size = str(rng.choice(SIZES))
            radius = cfg.small_radius if size == "small" else cfg.large_radius
            radius *= cfg.image_size * rng.uniform(1 - cfg.size_jitter, 1 + cfg.size_jitter)
            jitter = rng.integers(-cfg.shade_jitter, cfg.shade_jitter + 1, 3)
            rgb = tuple(int(v) for v in np.clip(np.array(COLORS[color]) + jitter, 0, 255))
            extent = radius * _extent_scale(shape)
            # Same-coloured shapes that overlap or touch would merge into one blob whose
            # inner boundary no one could see, so keep a pixel of something else between them.
            same_color = [o.draw_order + 1 for o in objects if o.color == color]
            keep_off = _grow(np.isin(labels, same_color))
            placed = _place(rng, cfg, labels, full_areas, shape, extent, keep_off)
            if placed is None:
                continue
            cx, cy, mask = placed
            labels[mask] = len(objects) + 1
            full_areas.append(int(mask.sum()))
            objects.append(SceneObject(len(objects), shape, color, size, cx, cy, extent, rgb))
        if len(objects) >= cfg.min_objects:
            return tuple(objects), labels
    raise ValueError(
        f"data.synthetic: could not place {cfg.min_objects} objects in a {cfg.image_size}px image "
        f"with min_visible={cfg.min_visible} in {SCENE_TRIES} scenes; lower large_radius, "
        f"min_objects or min_visible"
    )


def generate_scene(cfg: SyntheticConfig, split: str, index: int) -> Scene:
    """Render image ``index`` of ``split`` and describe its targets (deterministic)."""
    rng = scene_rng(cfg, split, index)
    canvas = _background(rng, cfg)
    objects, labels = _place_objects(rng, cfg)
    for obj in objects:
        canvas[labels == obj.draw_order + 1] = obj.rgb
    canvas += rng.normal(0.0, cfg.pixel_noise, canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    expressions = describe_targets(objects, rng, cfg)
    return Scene(image, labels, objects, expressions)


# ----------------------------------------------------------------------------- expressions


def _group(
    objects: tuple[SceneObject, ...], like: SceneObject, attrs: tuple[str, ...]
) -> list[SceneObject]:
    """The objects sharing ``like``'s values of ``attrs`` (``like`` included)."""
    return [o for o in objects if all(getattr(o, a) == getattr(like, a) for a in attrs)]


def noun_phrase(obj: SceneObject, attrs: tuple[str, ...]) -> str:
    """``obj`` described by ``attrs`` without the article: "small red circle", "red shape"."""
    words = [getattr(obj, a) for a in ("size", "color") if a in attrs]
    return " ".join([*words, obj.shape if "shape" in attrs else GENERIC_NOUN])


def minimal_descriptors(
    objects: tuple[SceneObject, ...], target: SceneObject
) -> list[tuple[str, ...]]:
    """The smallest attribute subsets that single out ``target``; empty if none does (it has
    a look-alike twin)."""
    for r in range(1, len(ATTRIBUTES) + 1):
        unique = [d for d in DESCRIPTORS if len(d) == r and _group(objects, target, d) == [target]]
        if unique:
            return unique
    return []


def rank_is_clear(
    group: list[SceneObject], target: SceneObject, direction: str, rank: int, margin: float
) -> bool:
    """Whether ``target`` is the ``rank``-th (0-based) of ``group`` counted from
    ``direction`` with at least ``margin`` pixels between consecutive centres up to and
    including the one after it, so no nudge of ``margin`` changes the count."""
    ordered = sorted(group, key=lambda o: o.key(direction))
    if ordered[rank] is not target:
        return False
    keys = [o.key(direction) for o in ordered]
    return all(keys[i + 1] - keys[i] >= margin for i in range(min(rank + 1, len(keys) - 1)))


def _attribute_expressions(objects: tuple[SceneObject, ...], target: SceneObject) -> list[str]:
    return [f"the {noun_phrase(target, d)}" for d in minimal_descriptors(objects, target)]


def _ranked_expressions(
    objects: tuple[SceneObject, ...], target: SceneObject, margin: float
) -> tuple[list[str], list[str]]:
    """(spatial, ordinal) expressions: rank 0 in a look-alike group is spatial, ranks 1.. in a
    group of three or more are ordinal."""
    spatial, ordinal = [], []
    for attrs in DESCRIPTORS:
        group = _group(objects, target, attrs)
        if len(group) < 2:  # a unique group is the attribute kind
            continue
        noun = noun_phrase(target, attrs)
        # A rank past 0 in a pair is the other end, which the spatial kind already covers.
        ordinal_ranks = range(1, min(len(group), len(ORDINALS))) if len(group) >= 3 else ()
        for direction in DIRECTIONS:
            if rank_is_clear(group, target, direction, 0, margin):
                spatial.append(f"the {noun} {SPATIAL_PHRASES[direction]}")
                spatial.append(f"the {SUPERLATIVES[direction]} {noun}")
            ordinal.extend(
                f"the {ORDINALS[rank]} {noun} from the {direction}"
                for rank in ordinal_ranks
                if rank_is_clear(group, target, direction, rank, margin)
            )
    return spatial, ordinal


def _relation_expressions(
    objects: tuple[SceneObject, ...], target: SceneObject, margin: float
) -> list[str]:
    """Expressions like "the circle left of the blue star": the anchor has its own unique
    attribute phrase; the target lies at least ``margin`` towards the direction from it, every
    other member of the target's group not towards it at all."""
    found = []
    for anchor in objects:
        if anchor is target:
            continue
        anchor_phrases = [noun_phrase(anchor, d) for d in minimal_descriptors(objects, anchor)]
        for attrs in DESCRIPTORS:
            group = [o for o in _group(objects, target, attrs) if o is not anchor]
            if len(group) < 2:
                continue
            for direction in DIRECTIONS:
                limit = anchor.key(direction)
                if target.key(direction) <= limit - margin and all(
                    o.key(direction) >= limit for o in group if o is not target
                ):
                    noun = noun_phrase(target, attrs)
                    found.extend(
                        f"the {noun} {RELATIONS[direction]} the {a}" for a in anchor_phrases
                    )
    return found


def expression_options(
    objects: tuple[SceneObject, ...], target: SceneObject, margin: float
) -> dict[str, list[str]]:
    """Every expression of each kind that denotes ``target`` alone; kinds without one are
    left out. ``margin``: the clear gap spatial words need, in pixels."""
    spatial, ordinal = _ranked_expressions(objects, target, margin)
    options = {
        "attribute": _attribute_expressions(objects, target),
        "spatial": spatial,
        "ordinal": ordinal,
        "relation": _relation_expressions(objects, target, margin),
    }
    return {kind: options[kind] for kind in EXPR_KINDS if options[kind]}


def describe_targets(
    objects: tuple[SceneObject, ...], rng: np.random.Generator, cfg: SyntheticConfig
) -> dict[int, list[tuple[str, str]]]:
    """Pick the scene's targets (``target_fraction`` of its describable objects, at least
    one) and 1..``max_expressions`` expressions of distinct kinds for each.
    Returns draw order -> ``(expr_kind, text)`` pairs, in draw order."""
    margin = cfg.spatial_margin * cfg.image_size
    options = {o.draw_order: expression_options(objects, o, margin) for o in objects}
    describable = [k for k, kinds in options.items() if kinds]
    if not describable:
        return {}
    count = math.ceil(cfg.target_fraction * len(describable))
    targets = sorted(int(k) for k in rng.choice(describable, count, replace=False))
    described: dict[int, list[tuple[str, str]]] = {}
    for k in targets:
        kinds = list(options[k])
        wanted = min(int(rng.integers(1, cfg.max_expressions + 1)), len(kinds))
        described[k] = []
        for i in sorted(rng.choice(len(kinds), wanted, replace=False)):
            texts = options[k][kinds[i]]
            described[k].append((kinds[i], texts[int(rng.integers(len(texts)))]))
    return described


# ----------------------------------------------------------------------------- dataset


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


def read_objects(root: str | Path) -> pa.Table:
    """The objects table of the synthetic dataset generated under ``root``."""
    path = Path(root) / OBJECTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"synthetic objects table not found: {path} (run `l2l-priors prepare` with "
            f"data.dataset: synthetic first)"
        )
    return pq.read_table(path)
