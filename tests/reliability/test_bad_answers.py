"""Odd MLLM answers through the parser and the real teacher, and the real teacher (tiny
random Qwen2.5-VL + SAM2) over odd images and expressions.

The rule for several objects in one answer: the first whose box has area inside the image,
in answer order (``pipeline.teachers.parse.ground_answer``).
"""

import dataclasses
import re
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from bad_inputs import LONG_EXPRESSION, NON_ASCII, READABLE, make_bad_refer_release
from tiny_models import (
    TINY_QWEN_MAX_PIXELS,
    TINY_QWEN_MIN_PIXELS,
    make_tiny_qwen,
    tiny_qwen_config,
    tiny_sam2_config,
    tiny_sam2_prior,
)

from pipeline.config import DataConfig, PathsConfig, PipelineConfig, PriorsConfig
from pipeline.contract import PriorStatus, teacher_hash
from pipeline.datasets.manifest import write_manifest
from pipeline.datasets.refcoco import build_refcoco
from pipeline.generate import generate
from pipeline.store.layout import part_zarr_path, read_part_attrs
from pipeline.store.reader import PriorStore
from pipeline.teachers.parse import Cue, ground_answer, parse_answer
from pipeline.teachers.qwen import build_grounder
from pipeline.teachers.qwen_sam2 import QwenSam2Teacher

INPUT_HW, ORIGINAL_HW = (100, 200), (50, 400)  # x scales by 2, y by 1/2

ANSWERS = {
    # answer -> (status, box_original, point_original)
    "empty": ("", PriorStatus.UNPARSABLE, None, None),
    "prose": ("I cannot see any such object.", PriorStatus.NO_GROUNDING, None, None),
    "truncated": ('```json\n[{"bbox_2d": [10, 20, 3', PriorStatus.UNPARSABLE, None, None),
    "truncated after a box": (
        '[{"bbox_2d": [10, 20, 30, 40], "point_2d": [15, 30], "label": "a very lo',
        PriorStatus.OK,
        (20, 10, 60, 20),
        (30, 15),
    ),
    "several boxes: the first": (
        '[{"bbox_2d": [10, 20, 30, 40]}, {"bbox_2d": [50, 60, 70, 80]}]',
        PriorStatus.OK,
        (20, 10, 60, 20),
        None,
    ),
    "several boxes: the first inside": (
        '[{"bbox_2d": [300, 20, 330, 40]}, {"bbox_2d": [50, 60, 70, 80]}]',
        PriorStatus.OK,
        (100, 30, 140, 40),
        None,
    ),
    "partly outside: clipped": (
        '[{"bbox_2d": [-20, -10, 250, 90]}]',
        PriorStatus.OK,
        (0, 0, 400, 45),
        None,
    ),
    "wholly outside": ('[{"bbox_2d": [210, 10, 260, 50]}]', PriorStatus.INVALID_BOX, None, None),
    "negative": ('[{"bbox_2d": [-50, -40, -10, -5]}]', PriorStatus.INVALID_BOX, None, None),
    "zero area": ('[{"bbox_2d": [10, 20, 10, 40]}]', PriorStatus.INVALID_BOX, None, None),
    "NaN": ('[{"bbox_2d": [NaN, 20, 30, 40]}]', PriorStatus.UNPARSABLE, None, None),
    "infinity": ('[{"bbox_2d": [10, 20, Infinity, 40]}]', PriorStatus.UNPARSABLE, None, None),
    "nan string": ('[{"bbox_2d": "[nan, 20, 30, 40]"}]', PriorStatus.UNPARSABLE, None, None),
    "swapped corners": ('[{"bbox_2d": [30, 40, 10, 20]}]', PriorStatus.OK, (20, 10, 60, 20), None),
    "nested": ('[{"bbox_2d": [[10, 20, 30, 40]]}]', PriorStatus.OK, (20, 10, 60, 20), None),
    "point only": ('{"point_2d": [15, 30]}', PriorStatus.OK, None, (30, 15)),
    "point only, outside": ('{"point_2d": [500, 30]}', PriorStatus.INVALID_BOX, None, None),
    "qwen2-vl": (
        "<|object_ref_start|>the dog<|object_ref_end|><|box_start|>(100,200),(500,800)<|box_end|>",
        PriorStatus.OK,
        (40, 10, 200, 40),
        None,
    ),
    "qwen2-vl, tokens stripped": (
        "the dog(100, 200),(500, 800)",
        PriorStatus.OK,
        (40, 10, 200, 40),
        None,
    ),
}


@pytest.mark.parametrize("case", ANSWERS)
def test_ground_answer_matrix(case):
    answer, status, box, point = ANSWERS[case]
    result = ground_answer(answer, INPUT_HW, ORIGINAL_HW)
    assert result.status is status
    assert result.box_original == (pytest.approx(box) if box else None)
    assert result.point_original == (pytest.approx(point) if point else None)
    assert result.raw_text == answer


def test_qwen2_vl_cues_are_in_the_normalised_frame_with_their_label():
    parsed = parse_answer(ANSWERS["qwen2-vl"][0])
    assert parsed.cues == (Cue((100, 200, 500, 800), None, "the dog", norm1000=True),)


def test_json_wins_over_tuple_text():
    parsed = parse_answer('At (1, 2), (3, 4): [{"bbox_2d": [10, 20, 30, 40]}]')
    assert parsed.cues == (Cue((10, 20, 30, 40), None, None),)


# ----------------------------------------------------------------------------- SAM2


@pytest.fixture(scope="module")
def sam2_prior():
    prior = tiny_sam2_prior(size=32)
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    prior.set_image(rgb)
    return prior


def test_sam2_prompts_a_point_without_a_box(sam2_prior):
    boxes = np.array([[4, 4, 30, 40], [np.nan] * 4], np.float32)
    points = np.array([[np.nan, np.nan], [20, 20]], np.float32)
    masks = sam2_prior.predict(boxes, points)
    assert masks.finite.all() and masks.prob.shape == (2, 32, 32)
    # The box row is the same box-only prompt it is alone.
    alone = sam2_prior.predict(boxes[:1], points[:1])
    np.testing.assert_allclose(masks.prob[0], alone.prob[0], atol=1e-6)
    with pytest.raises(ValueError, match="neither a finite box nor a finite point"):
        sam2_prior.predict(np.full((1, 4), np.nan, np.float32), np.full((1, 2), np.nan))
    with pytest.raises(ValueError, match="need a point"):
        sam2_prior.predict(np.full((1, 4), np.nan, np.float32))


# ----------------------------------------------------------------------------- real teacher

# What the driven model answers for each expression of the bad release.
ANSWER_FOR = {
    "the thing": '[{"bbox_2d": [2, 3, 20, 18], "label": "the thing"}]',
    LONG_EXPRESSION: '```json\n[{"bbox_2d": [2, 3, 20, 18], "point_2d": [9, 9], "label": "the big',
    NON_ASCII[0]: '[{"point_2d": [9, 9], "label": "der Hund"}]',
    NON_ASCII[
        1
    ]: "<|object_ref_start|>狗<|object_ref_end|><|box_start|>(100,200),(500,800)<|box_end|>",
    NON_ASCII[2]: "There is no such object 🙁",
}
STATUS_FOR = {e: PriorStatus.OK for e in ANSWER_FOR} | {NON_ASCII[2]: PriorStatus.NO_GROUNDING}


@pytest.mark.slow
def test_real_teacher_over_odd_images_expressions_and_answers(tmp_path, monkeypatch):
    release = make_bad_refer_release(tmp_path / "raw")
    qwen_dir = make_tiny_qwen(tmp_path / "qwen")
    size = 32
    budget = {"min_pixels": TINY_QWEN_MIN_PIXELS * 2, "max_pixels": TINY_QWEN_MAX_PIXELS}
    cfg = PipelineConfig(
        # Header checks only: the truncated JPEG passes prepare and reaches the teacher.
        data=DataConfig(
            dataset="refcoco",
            root=str(release["root"]),
            images=str(release["images"]),
            verify_images=False,
        ),
        priors=PriorsConfig(
            teacher="qwen-sam2",
            size=size,
            mllm=tiny_qwen_config(qwen_dir, batch_size=8, **budget),
            sam2=tiny_sam2_config(),
        ),
        paths=PathsConfig(manifests=str(tmp_path / "manifests"), priors=str(tmp_path / "priors")),
    )
    prepared = build_refcoco(cfg.data)
    # The missing file is skipped by prepare; put one pair of it back, as a file deleted since.
    one = next(s for s in prepared.samples if s.image_path == release["files"]["one_pixel"].name)
    gone = dataclasses.replace(one, sample_id="refcoco/train/99/0", image_path="gone.png")
    samples = [*prepared.samples, gone]
    write_manifest(samples, cfg.paths.samples, prepared.image_root)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grounder = build_grounder(cfg.priors.mllm)
    # The budget goes through the processor's size, not the deprecated min/max_pixels.
    assert not [w for w in caught if "min_pixels" in str(w.message)]
    assert grounder.pixel_budget == budget
    tokenizer = grounder.processor.tokenizer

    def driven_answers(**inputs):
        prompts = tokenizer.batch_decode(inputs["input_ids"], skip_special_tokens=False)
        texts = []
        for prompt in prompts:
            # The longest expression the prompt holds (the long one contains no other).
            expression = max((e for e in ANSWER_FOR if e in prompt), key=len)
            texts.append(ANSWER_FOR[expression])
        ids = tokenizer(texts, add_special_tokens=False, padding=True, padding_side="right")
        return torch.cat([inputs["input_ids"], torch.tensor(ids["input_ids"])], dim=1)

    monkeypatch.setattr(grounder.model, "generate", driven_answers)
    teacher = QwenSam2Teacher(grounder, tiny_sam2_prior(size=size))
    summary = generate(cfg, "train", teacher=teacher)
    assert summary.computed == len(samples)

    store = PriorStore.open(cfg.paths.priors, teacher_hash=teacher_hash(cfg.priors))
    keys = store.lookup_sample([s.sample_id for s in samples])
    prob, status = store.get(keys)
    box, point = store.read_cues(keys)
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1
    for i, s in enumerate(samples):
        kind = s.image_path.rsplit(".", 1)[0]
        if kind in ("truncated_jpeg", "gone"):
            assert status[i] == PriorStatus.UNREADABLE_IMAGE, s.sample_id
            continue
        assert kind in READABLE
        assert status[i] == STATUS_FOR[s.expression], (kind, s.expression)
        if s.expression == NON_ASCII[0]:  # point only: no box, a point inside the image
            assert np.isnan(box[i]).all() and np.isfinite(point[i]).all()
            assert 0 <= point[i][0] <= s.width and 0 <= point[i][1] <= s.height
        if s.expression == NON_ASCII[1]:  # Qwen2-VL's 0-1000 frame, to original pixels
            expected = (0.1 * s.width, 0.2 * s.height, 0.5 * s.width, 0.8 * s.height)
            np.testing.assert_allclose(box[i], expected, rtol=1e-5)
    assert summary.status_counts["unreadable_image"] == len(ANSWER_FOR) + 1

    cues = pq.read_table(tmp_path / "priors" / "cues").to_pylist()
    # The decoder drops special tokens: Qwen2-VL's box comes back as "狗(100,200),(500,800)".
    answered = {re.sub(r"<\|[a-z_]+\|>", "", a) for a in ANSWER_FOR.values()}
    assert {c["raw_text"] for c in cues if c["raw_text"]} == answered
    attrs = read_part_attrs(part_zarr_path(cfg.paths.priors, summary.part))
    assert attrs["teacher"]["runtime"] == {"mllm_pixel_budget": budget}
