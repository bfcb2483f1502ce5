"""MLLM answer parsing and the input-frame -> original-pixel conversion, against hand-written
answers and hand-computed boxes."""

import pytest

from pipeline.contract import PriorStatus
from pipeline.teachers.parse import (
    Cue,
    ground_answer,
    input_to_original,
    parse_answer,
    point_to_original,
)

FENCED = (
    '```json\n[{"bbox_2d": [14, 28, 42, 56], "point_2d": [28, 42], "label": "the red ball"}]\n```'
)


@pytest.mark.parametrize(
    ("answer", "status", "cues"),
    [
        # Qwen2.5-VL's usual form: a fenced JSON list.
        (FENCED, PriorStatus.OK, [Cue((14, 28, 42, 56), (28, 42), "the red ball")]),
        # Several objects, bare list: all kept, in answer order.
        (
            '[{"bbox_2d": [1, 2, 30, 40], "label": "a"}, {"bbox_2d": [5, 6, 70, 80.5]}]',
            PriorStatus.OK,
            [Cue((1, 2, 30, 40), None, "a"), Cue((5, 6, 70, 80.5), None, None)],
        ),
        # One bare object with prose around it.
        (
            'Sure! {"bbox_2d": [10, 20, 30, 40], "label": "dog"} is the dog.',
            PriorStatus.OK,
            [Cue((10, 20, 30, 40), None, "dog")],
        ),
        # A bare box list.
        ("[10, 20, 30, 40]", PriorStatus.OK, [Cue((10, 20, 30, 40), None, None)]),
        # Box given as a string.
        (
            '[{"bbox_2d": "[10, 20, 30, 40]", "point_2d": "15, 25"}]',
            PriorStatus.OK,
            [Cue((10, 20, 30, 40), (15, 25), None)],
        ),
        # Corners in the wrong order: the box is the same rectangle.
        ('[{"bbox_2d": [30, 40, 10, 20]}]', PriorStatus.OK, [Cue((10, 20, 30, 40), None, None)]),
        ('[{"bbox_2d": [10, 40, 30, 20]}]', PriorStatus.OK, [Cue((10, 20, 30, 40), None, None)]),
        # A box nested once, and a box as two corner points.
        ('[{"bbox_2d": [[10, 20, 30, 40]]}]', PriorStatus.OK, [Cue((10, 20, 30, 40), None, None)]),
        ("[[10, 20, 30, 40]]", PriorStatus.OK, [Cue((10, 20, 30, 40), None, None)]),
        (
            '{"bbox_2d": [[30, 40], [10, 20]], "label": "c"}',
            PriorStatus.OK,
            [Cue((10, 20, 30, 40), None, "c")],
        ),
        # Objects listed without an enclosing list.
        (
            '{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6, 7, 8]}',
            PriorStatus.OK,
            [Cue((1, 2, 3, 4), None, None), Cue((5, 6, 7, 8), None, None)],
        ),
        # Truncated by max_new_tokens: the complete first object is salvaged, the second's
        # half-written box is not read as a shorter one.
        (
            '```json\n[{"bbox_2d": [1, 2, 30, 40], "label": "a"}, {"bbox_2d": [5, 6, 7',
            PriorStatus.OK,
            [Cue((1, 2, 30, 40), None, "a")],
        ),
        # Python-style quotes do not decode as JSON but are salvaged.
        (
            "[{'bbox_2d': [1, 2, 30, 40], 'point_2d': [9, 9], 'label': 'cat'}]",
            PriorStatus.OK,
            [Cue((1, 2, 30, 40), (9, 9), "cat")],
        ),
        # A missing comma.
        (
            '[{"bbox_2d": [1, 2, 30, 40] "label": "x"}]',
            PriorStatus.OK,
            [Cue((1, 2, 30, 40), None, "x")],
        ),
        # Cut off inside the first box: JSON was meant, nothing is readable.
        ('```json\n[{"bbox_2d": [12, 30, 20', PriorStatus.UNPARSABLE, []),
        ("", PriorStatus.UNPARSABLE, []),
        ("   \n", PriorStatus.UNPARSABLE, []),
        ('{"bbox_2d": [12, 30', PriorStatus.UNPARSABLE, []),
        # Prose without JSON: the model found nothing.
        ("There is no such object in the image.", PriorStatus.NO_GROUNDING, []),
        ("I see [no] dog here.", PriorStatus.NO_GROUNDING, []),
        # Decoded JSON naming no object.
        ("```json\n[]\n```", PriorStatus.NO_GROUNDING, []),
        # A point without a box is a point-only cue.
        ('[{"point_2d": [3, 4], "label": "p"}]', PriorStatus.OK, [Cue(None, (3, 4), "p")]),
        # A box that is not four finite numbers cannot be read.
        ('[{"bbox_2d": [1, 2, 3], "label": "short"}]', PriorStatus.UNPARSABLE, []),
        ('[{"bbox_2d": [1, 2, true, 4]}]', PriorStatus.UNPARSABLE, []),
    ],
)
def test_parse_answer(answer, status, cues):
    parsed = parse_answer(answer)
    assert parsed.status is status
    assert list(parsed.cues) == cues


@pytest.mark.parametrize(
    ("box_input", "input_hw", "original_hw", "expected"),
    [
        # Same aspect: 96x64 image seen as 84x56, both axes scale by 8/7.
        ((14, 28, 42, 56), (56, 84), (64, 96), (16, 32, 48, 64)),
        # Axes scale apart: x by 640/420 = 32/21, y by 480/280 = 12/7.
        ((42, 70, 210, 140), (280, 420), (480, 640), (64, 120, 320, 240)),
        # x by 2, y by 1/2, then clipped to the 200 x 50 image.
        ((-10, 20, 120, 90), (100, 100), (50, 200), (0, 10, 200, 45)),
        # Zero width, inverted, wholly right of the image: no area left.
        ((10, 10, 10, 50), (100, 100), (100, 100), None),
        ((30, 10, 20, 50), (100, 100), (100, 100), None),
        ((110, 10, 150, 50), (100, 100), (100, 100), None),
    ],
)
def test_input_to_original(box_input, input_hw, original_hw, expected):
    box = input_to_original(box_input, input_hw, original_hw)
    if expected is None:
        assert box is None
    else:
        assert box == pytest.approx(expected)


def test_point_to_original_scales_and_clips():
    assert point_to_original((50, 50), (100, 100), (50, 200)) == pytest.approx((100, 25))
    assert point_to_original((-5, 300), (100, 100), (50, 200)) == pytest.approx((0, 50))


@pytest.mark.parametrize("bad_hw", [(0, 10), (10,), (10.5, 10), (-1, 5)])
def test_conversion_rejects_bad_sizes(bad_hw):
    with pytest.raises(ValueError, match="input_hw"):
        input_to_original((1, 2, 3, 4), bad_hw, (10, 10))


def test_ground_answer_converts_the_chosen_cue():
    result = ground_answer(FENCED, (56, 84), (64, 96))
    assert result.status is PriorStatus.OK
    assert result.box_original == pytest.approx((16, 32, 48, 64))
    assert result.point_original == pytest.approx((32, 48))
    assert result.label == "the red ball"
    assert result.input_hw == (56, 84)
    assert result.raw_text == FENCED
    assert result.cues == (Cue((14, 28, 42, 56), (28, 42), "the red ball"),)


def test_ground_answer_skips_boxes_outside_the_image():
    answer = (
        '[{"bbox_2d": [120, 0, 150, 10], "label": "off"},'
        ' {"bbox_2d": [10, 20, 30, 40], "point_2d": [20, 30], "label": "on"}]'
    )
    result = ground_answer(answer, (100, 100), (200, 200))
    assert result.status is PriorStatus.OK
    assert result.label == "on"
    assert result.box_original == pytest.approx((20, 40, 60, 80))
    assert result.point_original == pytest.approx((40, 60))
    assert len(result.cues) == 2


def test_ground_answer_statuses_without_a_usable_box():
    empty = ground_answer('[{"bbox_2d": [5, 5, 5, 9]}]', (100, 100), (100, 100))
    assert (empty.status, empty.box_original, empty.point_original) == (
        PriorStatus.INVALID_BOX,
        None,
        None,
    )
    prose = ground_answer("Nothing matches.", (100, 100), (100, 100))
    assert (prose.status, prose.box_original, prose.raw_text) == (
        PriorStatus.NO_GROUNDING,
        None,
        "Nothing matches.",
    )
    assert ground_answer("", (100, 100), (100, 100)).status is PriorStatus.UNPARSABLE
