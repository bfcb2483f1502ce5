"""The qwen-sam2 teacher's adapters, wired to tiny random models (see tests/tiny_models.py).

Random weights answer noise, so these tests check the plumbing: batching, left padding,
per-sample frame conversion through the real processor, SAM2's lifecycle, one image
embedding per image, shapes, ranges and flags.
"""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import (
    TINY_QWEN_MAX_PIXELS,
    TINY_QWEN_MIN_PIXELS,
    make_tiny_qwen,
    tiny_qwen_config,
    tiny_sam2_config,
    tiny_sam2_prior,
)

from pipeline.contract import PriorStatus
from pipeline.teachers.qwen import build_grounder, input_frame_sizes, processor_pixel_budget
from pipeline.teachers.sam2 import (
    SAM2Prior,
    best_mask_logits,
    build_sam2_prior,
    logits_to_prob,
    point_prompts,
)

# (height, width) of each test image and, hand-computed, the frame Qwen's processor resizes
# it to: each side rounded to a multiple of 28 within the tiny model's 3136..12544 pixels.
IMAGE_HW = [(64, 96), (128, 64), (50, 50)]
INPUT_HW = [(56, 84), (140, 56), (56, 56)]


def _image(hw, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
    return Image.fromarray(rgb)


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    return make_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen"))


@pytest.fixture(scope="module")
def images():
    return [_image(hw, seed) for seed, hw in enumerate(IMAGE_HW)]


@pytest.fixture(scope="module")
def sam2_prior():
    return tiny_sam2_prior(size=64)


def test_build_grounder_names_the_missing_folder(tmp_path):
    with pytest.raises(ValueError, match=r"priors\.mllm\.path"):
        build_grounder(tiny_qwen_config(None))
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=r"no-such-model.*priors\.mllm\.path"):
        build_grounder(tiny_qwen_config(missing))


def test_ground_end_to_end_with_random_weights(tiny_qwen_dir, images):
    grounder = build_grounder(tiny_qwen_config(tiny_qwen_dir, batch_size=2, max_new_tokens=8))
    assert grounder.processor.tokenizer.padding_side == "left"
    pair_images = [images[0], images[0], images[1], images[2], images[2]]
    expressions = ["the ball", "left square", "a very long expression about a cat", "it", "x"]
    results = grounder.ground(pair_images, expressions)
    assert len(results) == len(expressions)
    for result, image in zip(results, pair_images, strict=True):
        assert isinstance(result.status, PriorStatus)
        assert isinstance(result.raw_text, str)
        assert result.input_hw == INPUT_HW[images.index(image)]
        assert (result.box_original is not None) == (result.status is PriorStatus.OK)
    with pytest.raises(ValueError, match="one image per expression"):
        grounder.ground(images, ["only one"])


def test_ground_converts_hand_written_answers_per_sample(tiny_qwen_dir, images, monkeypatch):
    grounder = build_grounder(tiny_qwen_config(tiny_qwen_dir, batch_size=3))
    answers = [
        '```json\n[{"bbox_2d": [14, 28, 42, 56], "point_2d": [28, 42], "label": "ball"}]\n```',
        '[{"bbox_2d": [14, 35, 42, 105]}]',
        "No such object.",
    ]
    tokenizer = grounder.processor.tokenizer
    seen = {}

    def answer_instead(**inputs):
        seen.update(inputs)
        answer_ids = tokenizer(
            answers, add_special_tokens=False, padding=True, padding_side="right"
        )
        answer_ids = torch.tensor(answer_ids["input_ids"])
        return torch.cat([inputs["input_ids"], answer_ids], dim=1)

    monkeypatch.setattr(grounder.model, "generate", answer_instead)
    results = grounder.ground(images, ["the ball", "the tall box", "nothing"])

    # Left padding: each prompt ends in the last column; the image token counts differ.
    mask = seen["attention_mask"]
    assert mask[:, -1].all() and not mask[:, 0].all()
    assert input_frame_sizes(seen["image_grid_thw"], 14) == INPUT_HW
    assert [r.raw_text for r in results] == answers
    # 96x64 seen as 84x56: both axes by 8/7.
    assert results[0].status is PriorStatus.OK
    assert results[0].box_original == pytest.approx((16, 32, 48, 64))
    assert results[0].point_original == pytest.approx((32, 48))
    # 64x128 seen as 56x140: x by 64/56 = 8/7, y by 128/140 = 32/35.
    assert results[1].box_original == pytest.approx((16, 32, 48, 96))
    assert results[2].status is PriorStatus.NO_GROUNDING


def hub_style_qwen(tiny_qwen_dir, folder):
    """A copy of the tiny folder whose image processor config is laid out like the official
    Qwen2.5-VL's: a preprocessor_config.json with top-level min_pixels / max_pixels, no size."""
    shutil.copytree(tiny_qwen_dir, folder)
    processor_config = json.loads((folder / "processor_config.json").read_text())
    image = processor_config.pop("image_processor")
    del image["size"]
    image |= {
        "min_pixels": TINY_QWEN_MIN_PIXELS,
        "max_pixels": TINY_QWEN_MAX_PIXELS,
        "processor_class": "Qwen2_5_VLProcessor",
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(image))
    (folder / "processor_config.json").write_text(json.dumps(processor_config))
    return folder


def test_configured_pixel_budget_beats_a_hub_style_folders_min_max_pixels(tiny_qwen_dir, tmp_path):
    from transformers import AutoProcessor

    folder = hub_style_qwen(tiny_qwen_dir, tmp_path / "qwen")
    theirs = {"min_pixels": TINY_QWEN_MIN_PIXELS, "max_pixels": TINY_QWEN_MAX_PIXELS}
    assert processor_pixel_budget(AutoProcessor.from_pretrained(folder)) == theirs
    ours = {"min_pixels": TINY_QWEN_MIN_PIXELS * 2, "max_pixels": TINY_QWEN_MAX_PIXELS * 4}
    # The trap the fix avoids: size= at load is overwritten by the folder's min/max_pixels.
    trapped = AutoProcessor.from_pretrained(
        folder, size={"shortest_edge": ours["min_pixels"], "longest_edge": ours["max_pixels"]}
    )
    assert processor_pixel_budget(trapped) == theirs

    grounder = build_grounder(tiny_qwen_config(folder, **ours))
    size = grounder.processor.image_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (ours["min_pixels"], ours["max_pixels"])
    assert grounder.pixel_budget == ours
    # And the resize applies it: 200 x 200 fits ours (196 x 196 after rounding to 28), while
    # the folder's budget would shrink it to at most 12544 pixels.
    inputs = grounder.processor.image_processor(_image((200, 200), 0), return_tensors="pt")
    patch = grounder.processor.image_processor.patch_size
    assert input_frame_sizes(inputs["image_grid_thw"], patch) == [(196, 196)]

    only_max = build_grounder(tiny_qwen_config(folder, max_pixels=ours["max_pixels"]))
    assert only_max.pixel_budget == {
        "min_pixels": theirs["min_pixels"],
        "max_pixels": ours["max_pixels"],
    }


def test_chat_text_holds_the_formatted_prompt(tiny_qwen_dir):
    grounder = build_grounder(tiny_qwen_config(tiny_qwen_dir, prompt='Find "{expression}".'))
    text = grounder.chat_text("the dog")
    assert text.endswith(
        '<|vision_start|><|image_pad|><|vision_end|>Find "the dog".<|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def test_build_sam2_prior_requires_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match=r"priors\.sam2\.checkpoint"):
        build_sam2_prior(tiny_sam2_config(), 64)
    missing = tmp_path / "sam2.pt"
    with pytest.raises(FileNotFoundError, match=r"sam2\.pt.*priors\.sam2\.checkpoint"):
        build_sam2_prior(tiny_sam2_config(checkpoint=str(missing)), 64)
    with pytest.raises(ValueError, match=r"priors\.sam2\.config"):
        build_sam2_prior(
            tiny_sam2_config(config="configs/nope.yaml"), 64, allow_random_weights=True
        )


def test_sam2_predict_before_set_image_raises(sam2_prior):
    prior = SAM2Prior(sam2_prior.predictor, sam2_prior.cfg, 64, "cpu", "float32")
    with pytest.raises(RuntimeError, match="before set_image"):
        prior.predict(np.array([[0, 0, 10, 10]]))


def test_sam2_one_embedding_per_image(sam2_prior, monkeypatch):
    model = sam2_prior.predictor.model
    encode = model.forward_image
    calls = []
    monkeypatch.setattr(model, "forward_image", lambda batch: calls.append(1) or encode(batch))
    boxes = np.array([[10, 10, 60, 40], [0, 0, 96, 64], [50, 5, 90, 60]], dtype=np.float32)

    sam2_prior.set_image(np.array(_image((64, 96), 0)))
    masks = sam2_prior.predict(boxes)
    single = sam2_prior.predict(boxes[:1])
    sam2_prior.set_image(np.array(_image((120, 80), 1)))
    sam2_prior.predict(boxes)

    assert len(calls) == 2
    assert masks.prob.shape == (3, 64, 64) and masks.prob.dtype == np.float32
    assert single.prob.shape == (1, 64, 64)
    assert (masks.prob >= 0).all() and (masks.prob <= 1).all()
    assert masks.finite.tolist() == [True, True, True]
    # The batched call gives each prompt what a call of its own gives.
    np.testing.assert_allclose(single.prob[0], masks.prob[0], atol=1e-5)


def test_sam2_flags_nan_logits(sam2_prior):
    def nan_second_row(module, args, output):
        output[0][1] = float("nan")

    sam2_prior.set_image(np.array(_image((64, 96), 0)))
    hook = sam2_prior.predictor.model.sam_mask_decoder.register_forward_hook(nan_second_row)
    try:
        masks = sam2_prior.predict(np.array([[10, 10, 60, 40], [0, 0, 96, 64], [5, 5, 9, 9]]))
    finally:
        hook.remove()
    assert masks.finite.tolist() == [True, False, True]
    assert (masks.prob[1] == 0).all() and not np.isnan(masks.prob).any()


def test_sam2_multimask_keeps_the_best_scoring_mask(sam2_prior, monkeypatch):
    monkeypatch.setattr(
        sam2_prior, "cfg", dataclasses.replace(sam2_prior.cfg, multimask_output=True)
    )
    sam2_prior.set_image(np.array(_image((64, 96), 0)))
    boxes = np.array([[10, 10, 60, 40], [0, 0, 96, 64]], dtype=np.float32)
    masks = sam2_prior.predict(boxes)
    _, scores, logits = sam2_prior.predictor.predict(
        box=boxes, multimask_output=True, return_logits=True
    )
    best = torch.from_numpy(logits[np.arange(2), scores.argmax(axis=1)])
    np.testing.assert_allclose(masks.prob, torch.sigmoid(best).numpy(), atol=1e-6)


def test_sam2_points_prompt_only_when_enabled(sam2_prior, monkeypatch):
    sam2_prior.set_image(np.array(_image((64, 96), 0)))
    boxes = np.array([[10, 10, 60, 40], [0, 0, 96, 64]], dtype=np.float32)
    points = np.array([[30, 20], [np.nan, np.nan]], dtype=np.float32)
    without = sam2_prior.predict(boxes, points)
    np.testing.assert_array_equal(without.prob, sam2_prior.predict(boxes).prob)

    monkeypatch.setattr(sam2_prior, "cfg", dataclasses.replace(sam2_prior.cfg, use_points=True))
    with pytest.raises(ValueError, match="use_points"):
        sam2_prior.predict(boxes)
    with_points = sam2_prior.predict(boxes, points)
    assert with_points.prob.shape == (2, 64, 64)
    assert not np.allclose(with_points.prob[0], without.prob[0])
    # A prompt without a point is the box-only prompt, not a box plus a padding point (that
    # moved it by up to 0.02; what is left is float rounding of another batch size).
    np.testing.assert_allclose(with_points.prob[1], without.prob[1], atol=1e-5)


def test_sam2_set_image_rejects_bad_arrays(sam2_prior):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        sam2_prior.set_image(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        sam2_prior.set_image(np.zeros((8, 8, 3), dtype=np.float32))


def test_best_mask_logits_picks_the_highest_score():
    logits = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.8, 0.1, 0.2]])
    assert best_mask_logits(logits, scores).flatten().tolist() == [1.0, 3.0]


def test_logits_to_prob_hand_values():
    logits = torch.tensor([[[0.0, 2.0], [-2.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    same = logits_to_prob(logits, 2)
    s2 = 1 / (1 + np.exp(-2.0))
    np.testing.assert_allclose(same.prob[0], [[0.5, s2], [1 - s2, 0.5]], rtol=1e-6)
    # A constant logit map stays constant under bilinear resize.
    bigger = logits_to_prob(logits, 4)
    assert bigger.prob.shape == (2, 4, 4)
    np.testing.assert_allclose(bigger.prob[1], np.full((4, 4), 1 / (1 + np.exp(-1.0))), rtol=1e-6)
    flagged = logits_to_prob(torch.tensor([[[np.inf, 0.0]], [[0.0, 0.0]]]), 2)
    assert flagged.finite.tolist() == [False, True]
    np.testing.assert_array_equal(flagged.prob[0], 0.0)


def test_point_prompts_layout():
    coords, labels = point_prompts(np.array([[3.0, 4.0], [5.0, 6.0]]))
    assert coords.shape == (2, 1, 2) and labels.shape == (2, 1)
    assert coords[:, 0].tolist() == [[3.0, 4.0], [5.0, 6.0]]
    assert labels[:, 0].tolist() == [1, 1]
    with pytest.raises(ValueError, match="finite"):
        point_prompts(np.array([[np.nan, np.nan]]))
