"""Referring expressions of the synthetic scenes: what singles an object out, in words.

An expression denotes its target and no other object of the scene; four kinds
(``Sample.expr_kind``): ``attribute`` (a minimal distinguishing subset of size, colour and
shape), ``spatial`` (the extreme member of a look-alike group), ``ordinal`` (a rank inside a
group of three or more) and ``relation`` (the only group member on one side of a uniquely
described anchor). Spatial words compare object centres in image pixels (x right, y down) and
need a clear gap between the centres they order. See :mod:`pipeline.datasets.synthetic`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from pipeline.config import SyntheticConfig

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
