"""Scenes of the synthetic dataset: flat-coloured shapes on a textured background.

Later objects occlude earlier ones. Image ``index`` of ``split`` draws everything from its own
numpy Generator seeded by ``(seed, split, index)`` (:func:`scene_rng`), so one split's scenes
do not depend on the other splits' sizes. See :mod:`pipeline.datasets.synthetic`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pipeline.config import SyntheticConfig
from pipeline.datasets.synthetic_text import SceneObject, describe_targets

SPLITS = ("train", "val", "test")
# Scenes no split holds, for pretraining the student's encoder (l2l_train.pretrain): the same
# world, a random stream of its own.
PRETRAIN_STREAM = "pretrain"
STREAMS = (*SPLITS, PRETRAIN_STREAM)
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

PLACEMENT_TRIES = 50  # positions tried per object before it is left out of the scene
SCENE_TRIES = 20  # fresh scenes tried before the config is declared unsatisfiable
# (grid cells across the image, relative amplitude) of the background's smooth noise octaves.
BACKGROUND_OCTAVES = ((4, 1.0), (16, 0.35))
BACKGROUND_GREY = (90.0, 170.0)  # base grey level range: muted, never a palette colour
BACKGROUND_TINT = 12.0  # per-channel offset of the base grey


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


def scene_rng(cfg: SyntheticConfig, split: str, index: int) -> np.random.Generator:
    """The generator that image ``index`` of ``split`` (or of the pretrain stream) draws
    everything from."""
    if split not in STREAMS:
        raise ValueError(f"unknown synthetic split {split!r} (expected one of {STREAMS})")
    return np.random.default_rng([cfg.seed, STREAMS.index(split), index])


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
