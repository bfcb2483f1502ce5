"""MLLM answer text -> grounding cues, and the one conversion out of the MLLM's input frame.

Qwen2.5-VL answers grounding prompts with absolute pixel coordinates in the frame of the
image *it was given*: the processor's resize of the original to ``image_grid_thw * patch``
pixels (14-pixel patches, sides rounded to multiples of 28, aspect kept only approximately).
Everything parsed here stays in that *input frame* until :func:`input_to_original` (boxes) or
:func:`point_to_original` (points) maps it to original image pixels; both share one scaling.

What a model says is untrusted text, so :func:`parse_answer` accepts, in order of preference:
a ```json fenced block or bare JSON (a list of objects, one object, or a bare ``[x1, y1, x2,
y2]``), boxes given as strings, nested once or as two corner pairs, corners in either order,
prose around the JSON; and when the JSON does not decode
(truncated by ``max_new_tokens``, single quotes, a missing comma) it salvages every complete
``bbox_2d`` / ``point_2d`` it can still read. An object with a point and no box is a
point-only cue (SAM2 is prompted with the point alone). Failing all JSON, Qwen2-VL's own
grounding form ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` (also with the special tokens
stripped by the decoder) is read; its coordinates are in a 0-1000 normalised frame, not the
input frame (:data:`NORM1000_HW`), and are converted from that frame instead.
Every answer gets a status, the contract's :class:`PriorStatus`. No torch, no transformers.

Several objects in one answer: :func:`ground_answer` takes the *first* whose box has area
inside the image, in answer order. Matching labels against the expression does not help:
the prompt asks the model to repeat the expression as the label, so every object carries it;
and a model lists the object it is surest of first.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.contract import PriorStatus

BoxXYXY = tuple[float, float, float, float]
PointXY = tuple[float, float]


# (height, width) of the frame Qwen2-VL's ``(x1,y1),(x2,y2)`` answers are in: 0-1000 on
# both axes, whatever the image's size.
NORM1000_HW = (1000, 1000)


@dataclass(frozen=True)
class Cue:
    """One object named in an answer: in the MLLM's resized-input frame (pixels), or, when
    ``norm1000`` (Qwen2-VL's tuple form), in the 0-1000 normalised frame."""

    box_input: BoxXYXY | None  # XYXY
    point_input: PointXY | None  # XY
    label: str | None
    norm1000: bool = False

    def frame_hw(self, input_hw: Sequence[int]) -> Sequence[int]:
        """The (height, width) of the frame this cue's coordinates are in."""
        return NORM1000_HW if self.norm1000 else input_hw


@dataclass(frozen=True)
class ParsedAnswer:
    """``status`` is OK when at least one cue has a box or a point, else NO_GROUNDING /
    UNPARSABLE."""

    status: PriorStatus
    cues: tuple[Cue, ...]  # every object read from the answer, in answer order


@dataclass(frozen=True)
class GroundingResult:
    """The grounding of one pair: the first usable cue, converted to original pixels."""

    status: PriorStatus
    # XYXY original pixels, clipped; None unless OK (and None for a point-only grounding)
    box_original: BoxXYXY | None
    # XY original pixels, clipped; the chosen cue's point (set for a point-only grounding)
    point_original: PointXY | None
    label: str | None
    cues: tuple[Cue, ...]  # all cues of the answer, input frame (for cues.parquet)
    input_hw: tuple[int, int]  # the frame the model saw: image_grid_thw[1:] * patch size
    raw_text: str


_FENCE = re.compile(r"```(?:json)?[ \t]*\n?(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE)
_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_BOX_KEYS = ("bbox_2d", "bbox", "box")
_POINT_KEYS = ("point_2d", "point")
# Salvage patterns accept a value only when it is closed (``]`` or a closing quote), so a
# box cut off mid-number by max_new_tokens is not read as a smaller one.
_SALVAGE_BOX = re.compile(
    r"""["']bbox_2d["']\s*:\s*["']?\[?\s*"""
    + r"\s*,\s*".join([f"({_NUMBER})"] * 4)
    + r"""\s*[\]"']"""
)
_SALVAGE_POINT = re.compile(
    r"""["']point_2d["']\s*:\s*["']?\[?\s*"""
    + r"\s*,\s*".join([f"({_NUMBER})"] * 2)
    + r"""\s*[\]"']"""
)
_SALVAGE_LABEL = re.compile(r"""["']label["']\s*:\s*["']([^"'\n]*)["']""")
# Qwen2-VL: ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``,
# 0-1000 normalised; decoding with skip_special_tokens leaves ``label(x1,y1),(x2,y2)``.
_TUPLE_BOX = re.compile(
    r"(?:<\|object_ref_start\|>(?P<label>.*?)<\|object_ref_end\|>\s*)?(?:<\|box_start\|>)?"
    + rf"\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)\s*,?\s*\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)"
)


def _numbers(value: Any, n: int) -> tuple[float, ...] | None:
    """``n`` finite numbers from a JSON list or a string such as ``"[1, 2, 3, 4]"``."""
    if isinstance(value, str):
        value = [float(v) for v in re.findall(_NUMBER, value)]
    if not isinstance(value, list | tuple) or len(value) != n:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return None
    out = tuple(float(v) for v in value)
    return out if all(math.isfinite(v) for v in out) else None


def _box(value: Any) -> BoxXYXY | None:
    """An XYXY box from the shapes models give: ``[x1, y1, x2, y2]`` (also as a string),
    nested once (``[[x1, y1, x2, y2]]``) or as two corners (``[[x1, y1], [x2, y2]]``); corners
    in either order (a model may name the bottom-right one first)."""
    if isinstance(value, list | tuple) and len(value) == 1 and isinstance(value[0], list):
        value = value[0]
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(corner, list | tuple) and len(corner) == 2 for corner in value)
    ):
        value = [*value[0], *value[1]]
    numbers = _numbers(value, 4)
    if numbers is None:
        return None
    x1, y1, x2, y2 = numbers
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def _first_key(obj: dict, keys: Sequence[str]) -> Any:
    return next((obj[k] for k in keys if k in obj), None)


def _cue_from_object(obj: dict) -> tuple[Cue | None, bool]:
    """The object's cue (None without a readable box or point) and whether it named a box
    or point that could not be read (wrong length, not numbers, NaN or infinite)."""
    raw_box, raw_point = _first_key(obj, _BOX_KEYS), _first_key(obj, _POINT_KEYS)
    box = _box(raw_box)
    point = _numbers(raw_point, 2)
    malformed = (raw_box is not None and box is None) or (raw_point is not None and point is None)
    if box is None and point is None:
        return None, malformed
    label = obj.get("label")
    return Cue(box, point, label if isinstance(label, str) else None), malformed


def _cues_from_json(value: Any) -> tuple[list[Cue], bool]:
    """Cues from a decoded answer (an object, a list of objects, or one bare box list), and
    whether some object named a box or point that could not be read."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return [], False
    bare_box = _box(value)
    if bare_box is not None:
        return [Cue(bare_box, None, None)], False
    read = [_cue_from_object(item) for item in value if isinstance(item, dict)]
    return [cue for cue, _ in read if cue is not None], any(bad for _, bad in read)


def _decode_json_values(body: str) -> tuple[list[Any], str]:
    """Decode successive JSON values, each starting at the next ``[`` or ``{``, skipping the
    prose between them (some answers list objects without an enclosing list).

    Returns:
        (values, rest): the decoded values and the text from the first bracket that did not
        decode (empty when everything did), for :func:`_salvage_cues`.
    """
    decoder, values, pos = json.JSONDecoder(), [], 0
    while True:
        starts = [i for i in (body.find("[", pos), body.find("{", pos)) if i >= 0]
        if not starts:
            return values, ""
        try:
            value, pos = decoder.raw_decode(body, min(starts))
        except json.JSONDecodeError:
            return values, body[min(starts) :]
        values.append(value)


def _salvage_cues(body: str) -> list[Cue]:
    """Complete boxes and points from malformed JSON, one cue per ``{``-delimited chunk."""
    cues = []
    for chunk in body.split("{"):
        box = _SALVAGE_BOX.search(chunk)
        point = _SALVAGE_POINT.search(chunk)
        if box is None and point is None:
            continue
        label = _SALVAGE_LABEL.search(chunk)
        cues.append(
            Cue(
                _box([float(g) for g in box.groups()]) if box else None,
                _numbers([float(g) for g in point.groups()], 2) if point else None,
                label.group(1) if label else None,
            )
        )
    return cues


def _tuple_cues(text: str) -> list[Cue]:
    """Qwen2-VL's ``(x1,y1),(x2,y2)`` boxes (0-1000 normalised frame), in answer order."""
    cues = []
    for match in _TUPLE_BOX.finditer(text):
        box = _box([float(g) for g in match.groups()[1:]])
        if box is not None:
            label = match.group("label")
            cues.append(Cue(box, None, label.strip() if label else None, norm1000=True))
    return cues


def _looks_like_json(body: str, fenced: bool) -> bool:
    return (
        fenced
        or "{" in body
        or body.lstrip().startswith("[")
        or any(key in body for key in ("bbox_2d", "point_2d"))
    )


def parse_answer(text: str) -> ParsedAnswer:
    """Read the grounding cues of one MLLM answer (coordinates stay in the input frame).

    Status: OK when some cue has a box or a point; UNPARSABLE for an empty answer, an
    object whose box or point cannot be read (NaN, infinite, not four numbers), or JSON-like
    text (a fence, a ``{``, a leading ``[``, a cue key) that neither decodes nor yields a
    cue; NO_GROUNDING when JSON decoded but names no object, or for prose with no JSON and
    no Qwen2-VL box.
    """
    if not text.strip():
        return ParsedAnswer(PriorStatus.UNPARSABLE, ())
    fence = _FENCE.search(text)
    body = fence.group(1) if fence else text
    values, rest = _decode_json_values(body)
    cues, malformed = [], False
    for value in values:
        found, bad = _cues_from_json(value)
        cues += found
        malformed |= bad
    cues += _salvage_cues(rest)
    if not cues:
        cues = _tuple_cues(text)
    if cues:
        status = PriorStatus.OK
    elif malformed or (not values and _looks_like_json(body, fence is not None)):
        status = PriorStatus.UNPARSABLE
    else:
        status = PriorStatus.NO_GROUNDING
    return ParsedAnswer(status, tuple(cues))


def _check_hw(hw: Sequence[int], name: str) -> tuple[int, int]:
    if len(hw) != 2 or not all(int(v) == v and v > 0 for v in hw):
        raise ValueError(f"{name}: expected (height, width) of positive integers, got {hw!r}")
    return int(hw[0]), int(hw[1])


def _scale_clip(
    xy_input: Sequence[float], input_hw: Sequence[int], original_hw: Sequence[int]
) -> tuple[float, ...]:
    """Map flat (x, y, x, y, ...) pixels from the input frame to original pixels, clipped.

    Each axis scales by original/input size (the processor resizes each axis on its own),
    then clips to [0, W] x [0, H], the original image's pixel-edge extent.
    """
    h_in, w_in = _check_hw(input_hw, "input_hw")
    h, w = _check_hw(original_hw, "original_hw")
    out = []
    for i, v in enumerate(xy_input):
        scale, extent = (w / w_in, w) if i % 2 == 0 else (h / h_in, h)
        out.append(min(max(v * scale, 0.0), float(extent)))
    return tuple(out)


def input_to_original(
    box_input: BoxXYXY, input_hw: Sequence[int], original_hw: Sequence[int]
) -> BoxXYXY | None:
    """XYXY box from the MLLM input frame (``input_hw``) to original pixels (``original_hw``).

    Returns:
        the clipped box, or None when it has no positive area inside the image (zero-width,
        inverted, or wholly outside).
    """
    x1, y1, x2, y2 = _scale_clip(box_input, input_hw, original_hw)
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def point_to_original(
    point_input: PointXY, input_hw: Sequence[int], original_hw: Sequence[int]
) -> PointXY:
    """XY point from the MLLM input frame to original pixels, clipped to the image."""
    x, y = _scale_clip(point_input, input_hw, original_hw)
    return x, y


def _point_inside(point_input: PointXY, input_hw: Sequence[int]) -> bool:
    h_in, w_in = _check_hw(input_hw, "input_hw")
    x, y = point_input
    return 0 <= x <= w_in and 0 <= y <= h_in


def ground_answer(
    text: str, input_hw: Sequence[int], original_hw: Sequence[int]
) -> GroundingResult:
    """Parse one answer and pick the pair's grounding.

    The rule: the first cue, in answer order, whose box has area inside the image after the
    conversion to original pixels (with that cue's point, if any); failing that, the first
    point-only cue whose point lies inside the image (a point prompt without a box). Boxes
    given but none usable, or only points outside the image: INVALID_BOX.
    """
    parsed = parse_answer(text)
    status, box, point, label = parsed.status, None, None, None
    if parsed.status is PriorStatus.OK:
        status = PriorStatus.INVALID_BOX
        for cue in parsed.cues:
            frame = cue.frame_hw(input_hw)
            box = input_to_original(cue.box_input, frame, original_hw) if cue.box_input else None
            if box is not None:
                status, label = PriorStatus.OK, cue.label
                if cue.point_input is not None:
                    point = point_to_original(cue.point_input, frame, original_hw)
                break
        else:
            for cue in parsed.cues:
                frame = cue.frame_hw(input_hw)
                if cue.box_input is None and _point_inside(cue.point_input, frame):
                    status, label = PriorStatus.OK, cue.label
                    point = point_to_original(cue.point_input, frame, original_hw)
                    break
    return GroundingResult(
        status=status,
        box_original=box,
        point_original=point,
        label=label,
        cues=parsed.cues,
        input_hw=_check_hw(input_hw, "input_hw"),
        raw_text=text,
    )
