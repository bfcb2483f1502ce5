"""Trainer datasets: frames, normalisation, priors (resized, absent), visit streams (one
sentence per ref per visit, rank splits, reproducibility), evaluation over every sentence."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from trainer_workspace import IMAGE_SIZE

from l2l_train.augment import flip_expression
from l2l_train.config import AugmentConfig, load_trainer_params
from l2l_train.data import (
    EvalPairs,
    LabeledPairs,
    RefVisits,
    UnlabeledPairs,
    VisitStream,
    collate_eval,
    split_eval_only,
)
from l2l_train.model import build_tokenizer
from l2l_train.pairs import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FillCache,
    PairSource,
    normalize_images,
    open_teacher_store,
    pair_source,
    resize_mask,
    resize_prior,
)
from pipeline.contract import PriorStatus
from pipeline.datasets.manifest import image_root, read_pairs


@pytest.fixture(scope="module")
def params(trainer_workspace):
    return load_trainer_params(trainer_workspace)


@pytest.fixture(scope="module")
def tokenizer(params):
    return build_tokenizer(params.model.text)


@pytest.fixture(scope="module")
def sources(params, tokenizer):
    store = open_teacher_store(params)
    return {
        role: pair_source(params, role, tokenizer, IMAGE_SIZE, store)
        for role in ("labeled", "unlabeled", "val")
    }


# ----------------------------------------------------------------------------- frames


def test_normalize_images_hand_values():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    out = normalize_images(images.contiguous())
    for c in range(3):
        assert out[0, c, 0, 0].item() == pytest.approx(-IMAGENET_MEAN[c] / IMAGENET_STD[c])
        assert out[0, c, 0, 1].item() == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
    with pytest.raises(ValueError, match="uint8"):
        normalize_images(images.float())


def test_resize_mask_is_nearest_and_prior_bilinear():
    mask = np.zeros((4, 4), np.uint8)
    mask[:, 2:] = 1
    assert resize_mask(mask, 8).tolist() == [[0] * 4 + [1] * 4] * 8
    # A linear ramp stays linear under bilinear resizing (away from the clamped borders).
    ramp = np.tile(np.linspace(0, 1, 4, dtype=np.float32), (4, 1))
    up = resize_prior(ramp, 8)
    assert up.shape == (1, 8, 8)
    expected = F.interpolate(torch.from_numpy(ramp)[None, None], size=(8, 8), mode="bilinear")
    assert torch.allclose(up, expected[0])
    assert up.min() >= 0 and up.max() <= 1


# ----------------------------------------------------------------------------- priors


def test_priors_resized_from_the_store_and_absent_where_missing(params, sources):
    store = open_teacher_store(params)
    unlabeled = sources["unlabeled"]
    row = next(i for i, k in enumerate(unlabeled.prior_key) if k is not None)
    prob, status = store.get([unlabeled.prior_key[row]])
    prior, present = unlabeled.prior(row)
    assert present == (status[0] == PriorStatus.OK)
    expected = F.interpolate(torch.from_numpy(prob)[None], size=(IMAGE_SIZE,) * 2, mode="bilinear")
    assert prior.shape == (1, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.allclose(prior, expected[0].clamp(0, 1))
    # priors.splits is [unlabeled, val]: labelled pairs have no prior and read as absent.
    labeled = sources["labeled"]
    assert labeled.prior_coverage == 0
    prior, present = labeled.prior(0)
    assert not present and not prior.any()


class _FailedStore:
    """A store whose every prior was stored with a failure status."""

    def lookup_sample(self, sample_ids):
        return ["0" * 64 for _ in sample_ids]

    def get(self, keys, missing_ok=False):
        return np.full((len(keys), 8, 8), 0.7, np.float32), np.full(
            len(keys), PriorStatus.NO_GROUNDING, np.int8
        )


def test_prior_with_failure_status_is_absent(params, tokenizer):
    rows = read_pairs(params.paths, "unlabeled").slice(0, 2)
    source = PairSource(
        rows, image_root(params.paths.samples), IMAGE_SIZE, tokenizer, _FailedStore()
    )
    assert source.prior_coverage == 1
    prior, present = source.prior(0)
    assert not present and not prior.any()


def test_required_priors_that_were_never_generated_name_the_command(params, tokenizer, tmp_path):
    empty = dataclasses.replace(
        params, paths=dataclasses.replace(params.paths, priors=str(tmp_path))
    )
    with pytest.raises(FileNotFoundError, match="l2l-priors generate --split unlabeled"):
        pair_source(
            empty,
            "unlabeled",
            tokenizer,
            IMAGE_SIZE,
            open_teacher_store(empty),
            require_priors=True,
        )


# ----------------------------------------------------------------------------- training items


def test_labeled_item_shapes_and_dtypes(sources):
    item = LabeledPairs(sources["labeled"], seed=0, augment=AugmentConfig())[0]
    assert item["img_x"].shape == (3, IMAGE_SIZE, IMAGE_SIZE) and item["img_x"].dtype == torch.uint8
    assert item["mask_x"].shape == (IMAGE_SIZE, IMAGE_SIZE) and item["mask_x"].dtype == torch.uint8
    assert set(item["mask_x"].unique().tolist()) <= {0, 1} and item["mask_x"].any()
    assert item["prior_x"].shape == (1, IMAGE_SIZE, IMAGE_SIZE)
    assert isinstance(item["expr_x"], str) and item["prior_present_x"] is False


def test_unlabeled_item_keeps_ground_truth_apart(sources):
    data = UnlabeledPairs(sources["unlabeled"], seed=0, augment=AugmentConfig(num_ops=3))
    item = data[3]
    assert item["img_u_w"].shape == item["img_u_s"].shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert any(not torch.equal(data[v]["img_u_w"], data[v]["img_u_s"]) for v in range(4))
    assert item["has_mask_u_eval"] and item["mask_u_eval"].any()
    assert "mask_x" not in item
    train, eval_only = split_eval_only(item)
    assert set(eval_only) == {"mask_u_eval", "has_mask_u_eval"}
    assert not set(eval_only) & set(train)


def test_weak_flip_mirrors_image_mask_prior_and_words(sources):
    """The same visit with and without a flip: everything mirrored, left/right swapped."""
    source = sources["unlabeled"]
    plain = UnlabeledPairs(source, seed=0, augment=AugmentConfig(flip_prob=0.0))
    flipped = UnlabeledPairs(source, seed=0, augment=AugmentConfig(flip_prob=1.0))
    visit = next(v for v in range(4 * len(plain.visits)) if " left" in plain[v]["expr_u_w"])
    a, b = plain[visit], flipped[visit]
    assert torch.equal(b["img_u_w"], a["img_u_w"].flip(-1))
    assert torch.equal(b["mask_u_eval"], a["mask_u_eval"].flip(-1))
    assert torch.equal(b["prior_u"], a["prior_u"].flip(-1))
    assert b["expr_u_w"] == a["expr_u_w"].replace("left", "right")


def test_visits_are_reproducible(sources):
    one = UnlabeledPairs(sources["unlabeled"], seed=5, augment=AugmentConfig())
    two = UnlabeledPairs(sources["unlabeled"], seed=5, augment=AugmentConfig())
    for visit in (0, 7, 1000):
        a, b = one[visit], two[visit]
        assert a["expr_u_w"] == b["expr_u_w"]
        assert torch.equal(a["img_u_s"], b["img_u_s"])


def test_one_sentence_per_ref_per_visit(sources):
    source = sources["unlabeled"]
    refs = source.refs()
    assert sum(len(r) for r in refs) == len(source)
    assert all(len(set(source.ref_id[r])) == 1 for r in refs)
    visits = RefVisits(refs, seed=0, stream=1)
    row_ref = {int(row): i for i, rows in enumerate(refs) for row in rows}
    n = len(refs)
    for epoch_pass in range(3):
        seen = [row_ref[visits(epoch_pass * n + k)[0]] for k in range(n)]
        assert sorted(seen) == list(range(n))  # every ref once per pass
    # Sentences are drawn at random: a ref with several sentences shows more than one.
    multi = next(i for i, rows in enumerate(refs) if len(rows) > 1)
    drawn = {
        visits(p * n + k)[0]
        for p in range(20)
        for k in range(n)
        if row_ref[visits(p * n + k)[0]] == multi
    }
    assert len(drawn) > 1


def test_visit_stream_splits_ranks_and_resumes():
    take = lambda stream, k: [v for v, _ in zip(stream, range(k), strict=False)]  # noqa: E731
    assert take(VisitStream(0, 0, 2), 4) == [0, 2, 4, 6]
    assert take(VisitStream(0, 1, 2), 4) == [1, 3, 5, 7]
    assert take(VisitStream(10, 1, 2), 2) == [11, 13]
    with pytest.raises(ValueError, match="rank"):
        VisitStream(0, 2, 2)


def test_fill_cache_keeps_values_until_its_budget_is_held():
    cache = FillCache(budget_bytes=2 * 16)  # two float32 (2, 2) tensors
    made = []

    def make(value: float):
        def fill():
            made.append(value)
            return torch.full((2, 2), value), True

        return fill

    first = cache.get("a", make(1.0))
    assert cache.get("a", make(9.0)) is first and made == [1.0]  # a hit makes nothing
    cache.get("b", make(2.0))
    third = cache.get("c", make(3.0))  # over budget: returned, not kept
    assert float(third[0][0, 0]) == 3.0 and third[1] is True
    cache.get("c", make(3.0))
    assert made == [1.0, 2.0, 3.0, 3.0]
    assert sorted(cache.values) == ["a", "b"] and cache.held_bytes == 32


def test_cached_pairs_read_as_uncached_and_once(params, tokenizer, monkeypatch):
    store = open_teacher_store(params)
    plain = pair_source(params, "unlabeled", tokenizer, IMAGE_SIZE, store)
    cached = pair_source(params, "unlabeled", tokenizer, IMAGE_SIZE, store, cache_mb=16)
    reads = []
    store_get, image_read = PairSource._read_prior, PairSource._read_image
    monkeypatch.setattr(PairSource, "_read_prior", lambda s, i: reads.append(i) or store_get(s, i))
    monkeypatch.setattr(PairSource, "_read_image", lambda s, i: reads.append(i) or image_read(s, i))
    for _ in range(2):
        for i in range(3):
            prior, present = cached.prior(i)
            expected_prior, expected_present = plain.prior(i)
            assert torch.equal(prior, expected_prior) and present == expected_present
            assert torch.equal(cached.image(i), plain.image(i))
            assert torch.equal(cached.mask(i), plain.mask(i))
    # Pair 0's prior and image: read once by the cached source, at every visit by the plain one.
    assert reads.count(0) == 2 + 2 * 2


# ----------------------------------------------------------------------------- evaluation


def test_eval_uses_every_sentence_at_original_resolution(params, sources):
    val = sources["val"]
    rows = read_pairs(params.paths, "val")
    data = EvalPairs(val)
    assert len(data) == rows.num_rows
    assert sorted(val.sample_id) == sorted(rows["sample_id"].to_pylist())
    batch = collate_eval([data[0], data[1]])
    assert batch["image"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert isinstance(batch["mask"], list)
    height, width = rows["height"][0].as_py(), rows["width"][0].as_py()
    assert batch["mask"][0].shape == (height, width)
    assert batch["prior_present"].dtype == torch.bool and batch["prior_present"].all()
    assert "input_ids_flipped" not in batch


def test_eval_pairs_for_the_test_time_flip_carry_the_swapped_expressions_tokens(sources):
    val = sources["val"]
    data = EvalPairs(val, flip=True)
    left = next(i for i, e in enumerate(val.expression) if "left" in e.split())
    item = data[left]
    ids, mask = val.tokens(flip_expression(val.expression[left]))
    assert torch.equal(item["input_ids_flipped"], ids)
    assert torch.equal(item["attention_mask_flipped"], mask)
    assert not torch.equal(item["input_ids_flipped"], item["input_ids"])


@pytest.mark.parametrize("flip", [False, True])
def test_evaluation_reads_cached_text_features_as_the_encoder_computes_them(params, sources, flip):
    """Validation with the frozen text encoder's cached features scores what encoding every
    batch scored (the same metrics up to rounding), with the test-time flip too."""
    from l2l_train.data import eval_loader
    from l2l_train.evaluate import eval_texts, evaluate
    from l2l_train.model import build_segmentor
    from l2l_train.text_cache import FrozenTextCache

    torch.manual_seed(0)
    model = build_segmentor(params.model)
    cpu = torch.device("cpu")
    cache = FrozenTextCache(
        model.text,
        build_tokenizer(params.model.text),
        cpu,
        eval_texts(sources["val"].expression, flip),
    )
    data = EvalPairs(sources["val"], flip)
    scored = [
        evaluate(
            model,
            eval_loader(data, 8, rank=0, world=1, num_workers=0),
            device=cpu,
            amp=False,
            threshold=0.5,
            text_cache=text_cache,
            flip=flip,
        )
        for text_cache in (None, cache)
    ]
    assert len(cache) == len(set(eval_texts(sources["val"].expression, flip)))
    batch = collate_eval([data[i] for i in range(4)])
    images = normalize_images(batch["image"])
    with torch.no_grad():
        encoded = model(images, batch["input_ids"], batch["attention_mask"])
        cached = model(images, **cache.inputs(batch["expression"]))
    torch.testing.assert_close(cached, encoded, atol=1e-4, rtol=1e-4)
    assert scored[0].keys() == scored[1].keys()
    for name, value in scored[0].items():
        assert scored[1][name] == pytest.approx(value, abs=1e-3), name
