"""The real teacher (tiny random Qwen2.5-VL + SAM2) end to end: refer-format images ->
generate -> prior store -> cues, through the same code path as full-size runs."""

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from refer_fixture import fixture_config, make_refer_fixture
from tiny_models import make_tiny_qwen, tiny_qwen_config, tiny_sam2_config, tiny_sam2_prior

from pipeline.config import PathsConfig, PipelineConfig, PriorsConfig
from pipeline.contract import PriorStatus, teacher_hash
from pipeline.datasets.manifest import write_manifest
from pipeline.datasets.refcoco import build_refcoco
from pipeline.generate import generate
from pipeline.store.reader import PriorStore
from pipeline.teachers.qwen import build_grounder
from pipeline.teachers.qwen_sam2 import QwenSam2Teacher

ANSWERS = [
    '```json\n[{"bbox_2d": [2, 3, 20, 18], "point_2d": [9, 9], "label": "x"}]\n```',
    "I cannot find it.",
]


@pytest.mark.slow
def test_qwen_sam2_teacher_fills_the_store(tmp_path, monkeypatch):
    fx = make_refer_fixture(tmp_path / "raw")
    qwen_dir = make_tiny_qwen(tmp_path / "qwen")
    size = 32
    cfg = PipelineConfig(
        data=fixture_config(fx),
        priors=PriorsConfig(
            teacher="qwen-sam2",
            size=size,
            mllm=tiny_qwen_config(qwen_dir, batch_size=4),
            sam2=tiny_sam2_config(),
        ),
        paths=PathsConfig(manifests=str(tmp_path / "manifests"), priors=str(tmp_path / "priors")),
    )
    prepared = build_refcoco(cfg.data)
    write_manifest(prepared.samples, cfg.paths.samples, prepared.image_root)

    grounder = build_grounder(cfg.priors.mllm)
    tokenizer = grounder.processor.tokenizer
    answered = []

    def hand_written_answers(**inputs):
        # Alternate a grounded and an ungrounded answer, so both paths reach the store.
        n = inputs["input_ids"].shape[0]
        texts = [ANSWERS[(len(answered) + i) % 2] for i in range(n)]
        answered.extend(texts)
        ids = tokenizer(texts, add_special_tokens=False, padding=True, padding_side="right")
        return torch.cat([inputs["input_ids"], torch.tensor(ids["input_ids"])], dim=1)

    monkeypatch.setattr(grounder.model, "generate", hand_written_answers)
    segmenter = tiny_sam2_prior(size=size)
    encodes = []
    original_set_image = segmenter.set_image
    monkeypatch.setattr(
        segmenter, "set_image", lambda rgb: encodes.append(1) or original_set_image(rgb)
    )

    summary = generate(cfg, "train", teacher=QwenSam2Teacher(grounder, segmenter))
    train_rows = fx["rows_per_split"]["train"]
    assert summary.computed == train_rows == len(answered)
    assert summary.status_counts == {"ok": (train_rows + 1) // 2, "no_grounding": train_rows // 2}

    store = PriorStore.open(cfg.paths.priors, teacher_hash=teacher_hash(cfg.priors))
    train = [s for s in prepared.samples if s.split == "train"]
    prob, status = store.get(store.lookup_sample([s.sample_id for s in train]))
    assert prob.shape == (train_rows, size, size)
    ok = status == PriorStatus.OK
    assert ok.sum() == (train_rows + 1) // 2
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1
    assert np.all(prob[~ok] == 0)
    # SAM2 encoded each image with a grounded pair once, not once per pair.
    assert len(encodes) == len({s.image_id for s, k in zip(train, ok, strict=True) if k})

    cues = pq.read_table(tmp_path / "priors" / "cues").to_pylist()
    assert sorted(c["raw_text"] for c in cues) == sorted(answered)
    box = next(c["box"] for c in cues if c["status"] == PriorStatus.OK)
    assert all(np.isfinite(box)) and box[2] > box[0] and box[3] > box[1]

    # A rerun computes nothing: the same teacher config finds every key.
    assert generate(cfg, "train", teacher=QwenSam2Teacher(grounder, segmenter)).computed == 0
    other = dataclasses.replace(cfg.priors.mllm, prompt="Where is {expression}?")
    assert teacher_hash(dataclasses.replace(cfg.priors, mllm=other)) != teacher_hash(cfg.priors)
