"""Evaluation on every split a refer release defines: eval.splits checked against the dataset
at load, ``all`` resolved from the manifest, and prepare -> split -> train -> eval on
refer-format fixtures with RefCOCO's (val, testA, testB) and RefCOCOg umd's (val, test); the
test-time flip's arithmetic."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from refer_fixture import make_split_fixture
from trainer_workspace import IMAGE_SIZE, tiny_model
from typer.testing import CliRunner

from l2l_train.cli import app
from l2l_train.config import load_trainer_params
from l2l_train.evaluate import segment
from l2l_train.loop import run_training
from pipeline.config import load_pipeline_config
from pipeline.datasets.manifest import expand_splits, read_manifest
from pipeline.offline import run_offline_stages
from pipeline.schema import ConfigError


def write(tmp_path, params: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


REFCOCO = {"dataset": "refcoco", "split_by": "unc"}


@pytest.mark.parametrize(
    ("data", "eval_cfg", "message"),
    [
        (
            REFCOCO,
            {"splits": ["val", "test"]},
            "eval.splits[1]: 'test' is not a split of refcoco (unc), which defines val, testA, "
            "testB (and train; roles labeled, unlabeled, held_out); eval.splits: [all] scores every one",
        ),
        (
            {"dataset": "refcocog", "split_by": "umd"},
            {"splits": ["val", "testA"]},
            "eval.splits[1]: 'testA' is not a split of refcocog (umd), which defines val, test",
        ),
        ({}, {"splits": ["val", "tset"]}, "eval.splits[1]: 'tset' is not a split of synthetic"),
        (REFCOCO, {"splits": ["all"], "val_split": "test"}, "eval.val_split: 'test' is not"),
        (REFCOCO, {"splits": ["all", "val"]}, "eval.splits: all already names every split"),
        (REFCOCO, {"splits": ["val", "val"]}, "eval.splits: a split is listed twice"),
        (REFCOCO, {"splits": []}, "eval.splits: empty"),
    ],
)
def test_eval_splits_must_be_splits_of_the_dataset(tmp_path, data, eval_cfg, message):
    with pytest.raises(ConfigError) as err:
        load_trainer_params(write(tmp_path, {"data": data, "eval": eval_cfg}))
    assert message in str(err.value)


def test_eval_splits_that_the_dataset_defines_load(tmp_path):
    for data, splits in (
        (REFCOCO, ["val", "testA", "testB"]),
        ({"dataset": "refcoco+", "split_by": "unc"}, ["testB", "labeled"]),
        ({"dataset": "refcocog", "split_by": "umd"}, ["val", "test"]),
        (REFCOCO, ["all"]),
        ({}, ["val", "test", "train"]),
        # RefCOCO's Google release is not in the table: its names are checked when scored.
        ({"dataset": "refcoco", "split_by": "google"}, ["val", "testC"]),
    ):
        params = load_trainer_params(write(tmp_path, {"data": data, "eval": {"splits": splits}}))
        assert params.eval.splits == tuple(splits)


# ----------------------------------------------------------------------------- end to end

RELEASES = [
    ("refcoco", "unc", ("val", "testA", "testB")),
    ("refcocog", "umd", ("val", "test")),
]


def refer_workspace(root, dataset: str, split_by: str) -> tuple[dict, object]:
    """A split fixture prepared and partitioned under ``root`` (no priors), and the params of
    a tiny supervised run on it that evaluates every split (``eval.splits: [all]``)."""
    fx = make_split_fixture(root / "raw", dataset, split_by)
    params = {
        "data": {
            "dataset": dataset,
            "split_by": split_by,
            "root": str(fx["root"]),
            "images": str(fx["images"]),
        },
        "priors": {"splits": []},
        "paths": {name: str(root / name) for name in ("prepared", "manifests", "priors")}
        | {"models": str(root / "models"), "metrics": str(root / "metrics")},
        "model": tiny_model(root),
        "train": {
            "method": "supervised",
            "image_size": IMAGE_SIZE,
            "epochs": 1,
            "steps_per_epoch": 1,
            "batch_size_x": 2,
            "num_workers": 0,
        },
        "eval": {"splits": ["all"], "batch_size": 8},
    }
    path = write(root, params)
    run_offline_stages(load_pipeline_config(path))
    return fx, path


@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "split_by", "splits"), RELEASES)
def test_prepare_keeps_every_split_and_eval_scores_each(tmp_path, dataset, split_by, splits):
    fx, path = refer_workspace(tmp_path, dataset, split_by)
    params = load_trainer_params(path)
    manifest = read_manifest(params.paths.samples)
    counts = {s: manifest["split"].to_pylist().count(s) for s in ("train", *splits)}
    assert counts == fx["rows_per_split"]
    # `all`: every split but train, in the order the papers report them; beside the roles
    # (priors.splits' default) it expands in place.
    samples, order = params.paths.samples, params.data.eval_splits or ()
    assert expand_splits(["all"], samples, order) == splits
    assert expand_splits(["val"], samples, order) == ("val",)
    roles = ("labeled", "unlabeled")
    assert expand_splits([*roles, "all"], samples, order) == (*roles, *splits)
    assert expand_splits(["val", "all"], samples, order) == splits  # val once
    assert expand_splits(["val", "labeled", "val"], samples, order) == ("val", "labeled")

    run_training(params)
    result = CliRunner().invoke(app, ["eval", "--params", str(path)])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "metrics" / "eval.json").read_text())["splits"]
    assert tuple(scores) == splits  # one entry per split, every sentence of each
    for split in splits:
        assert scores[split]["pairs"] == fx["rows_per_split"][split]
        assert 0.0 <= scores[split]["oIoU"] <= 1.0
    # A split the release does not define names the ones it does.
    other = "test" if "testA" in splits else "testA"
    result = CliRunner().invoke(app, ["eval", "--params", str(path), "--split", other])
    assert result.exit_code == 1 and f"no pairs in split {other!r}" in result.output


class ProbeSegmentor(torch.nn.Module):
    """Logits = the image's first channel + 10 x the first token id (+ 100 x the prior)."""

    def forward(self, images, prior=None, prior_present=None, input_ids=None, attention_mask=None):
        logits = images[:, :1] + 10 * input_ids[:, :1, None, None].float()
        return logits if prior is None else logits + 100 * prior


def test_test_time_flip_averages_the_mirrored_pairs_logits_mirrored_back():
    images = torch.tensor([1.0, 2.0, 3.0]).expand(1, 3, 1, 3)
    text = {"input_ids": torch.tensor([[1]]), "attention_mask": torch.tensor([[1]])}
    flipped = {"input_ids": torch.tensor([[2]]), "attention_mask": torch.tensor([[1]])}
    model = ProbeSegmentor()
    plain = segment(model, images, text)
    assert plain.tolist() == [[[[11.0, 12.0, 13.0]]]]
    # Mirror: [3, 2, 1] + 20 = [23, 22, 21], mirrored back [21, 22, 23]; mean with [11, 12, 13].
    assert segment(model, images, text, text_flipped=flipped).tolist() == [[[[16.0, 17.0, 18.0]]]]
    # The prior is mirrored with the image: plain [11, 12, 113]; mirrored input [123, 22, 21],
    # back [21, 22, 123].
    prior = torch.tensor([0.0, 0.0, 1.0]).view(1, 1, 1, 3)
    present = torch.tensor([True])
    both = segment(model, images, text, prior, present, text_flipped=flipped)
    assert both.tolist() == [[[[16.0, 17.0, 118.0]]]]


class FixedLogits(torch.nn.Module):
    """Each batch's logits are the next of ``logits`` (B, 1, H, W), whatever the input."""

    def __init__(self, logits: list[torch.Tensor]) -> None:
        super().__init__()
        self.logits = iter(logits)

    def forward(self, images, prior=None, prior_present=None, input_ids=None, attention_mask=None):
        return next(self.logits)


def test_one_pass_scores_every_threshold_by_hand():
    """Two 1x4 pairs. Pair 1: logits 2, 0.5, -0.5, -2 (p 0.88, 0.62, 0.38, 0.12), mask 1110;
    pair 2: logits -2, -2, -2, 0 (p 0.12, 0.12, 0.12, 0.5), mask 0001. At 0.3: pair 1 I/U 3/3,
    pair 2 1/1; at 0.5: 2/3 and 1/1 (p 0.5 counts as foreground); at 0.7: 1/3 and 0/1."""
    from l2l_train.evaluate import evaluate, evaluate_thresholds

    logits = torch.tensor([[2.0, 0.5, -0.5, -2.0], [-2.0, -2.0, -2.0, 0.0]]).view(2, 1, 1, 4)
    batch = {
        "image": torch.zeros(2, 3, 1, 4, dtype=torch.uint8),
        "prior": torch.zeros(2, 1, 1, 4),
        "prior_present": torch.zeros(2, dtype=torch.bool),
        "input_ids": torch.ones(2, 1, dtype=torch.long),
        "attention_mask": torch.ones(2, 1, dtype=torch.long),
        "mask": torch.tensor([[1, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.uint8).view(2, 1, 4),
    }
    cpu = torch.device("cpu")
    scores = evaluate_thresholds(
        FixedLogits([logits]), [batch], device=cpu, amp=False, thresholds=(0.3, 0.5, 0.7)
    )
    assert [s["oIoU"] for s in scores] == pytest.approx([4 / 4, 3 / 4, 1 / 4])
    assert [s["mIoU"] for s in scores] == pytest.approx([1.0, (2 / 3 + 1) / 2, (1 / 3) / 2])
    assert [s["prec@0.5"] for s in scores] == pytest.approx([1.0, 1.0, 0.0])
    one = evaluate(FixedLogits([logits]), [batch], device=cpu, amp=False, threshold=0.5)
    assert one == pytest.approx(scores[1])
