"""The strict params loader: unknown keys, wrong types and ranges fail with the dotted key."""

from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import yaml

from l2l_train.config import load_trainer_params
from pipeline.config import config_hash, load_pipeline_config, to_dict
from pipeline.schema import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_repo_params_load_in_both_packages():
    pipeline_cfg = load_pipeline_config(REPO / "params.yaml")
    trainer_cfg = load_trainer_params(REPO / "params.yaml")
    assert pipeline_cfg.data == trainer_cfg.data
    assert pipeline_cfg.split.labeled_ratio == 0.05


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"split": {"labeled_ratio": "five"}},
            "split.labeled_ratio: expected a float in (0, 1), got 'five'",
        ),
        (
            {"split": {"labeled_ratio": 1.5}},
            "split.labeled_ratio: expected a float in (0, 1), got 1.5",
        ),
        (
            {"split": {"labeled_ratio": 0}},
            "split.labeled_ratio: expected a float in (0, 1), got 0.0",
        ),
        ({"split": {"seed": 1.5}}, "split.seed: expected an int, got 1.5"),
        ({"split": {"seed": True}}, "split.seed: expected an int, got True"),
        (
            {"split": {"ratio": 0.1}},
            "split.ratio: unknown key (expected one of: labeled_ratio, seed, holdout_ratio)",
        ),
        (
            {"data": {"dataset": "coco"}},
            "data.dataset: expected one of 'synthetic', 'refcoco', 'refcoco+', 'refcocog', got 'coco'",
        ),
        (
            {"data": {"synthetic": {"image_size": 8}}},
            "data.synthetic.image_size: expected an int in [32, 2048], got 8",
        ),
        ({"data": {"synthetic": {"imagesize": 64}}}, "data.synthetic.imagesize: unknown key"),
        (
            {"data": {"synthetic": 3}},
            "data.synthetic: expected a mapping of SyntheticConfig keys, got 3",
        ),
        (
            {"priors": {"splits": "unlabeled"}},
            "priors.splits: expected a list of strings, got 'unlabeled'",
        ),
        ({"priors": {"splits": ["unlabeled", 3]}}, "priors.splits[1]: expected a string, got 3"),
        ({"spilt": {"seed": 1}}, "spilt: unknown key"),
    ],
)
def test_bad_values_name_the_key(tmp_path, params, message):
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(write(tmp_path, params))
    assert message in str(err.value)


def test_trainer_sections_are_checked_by_the_trainer_loader_only(tmp_path):
    path = write(tmp_path, {"train": {"epochs": "many"}})
    assert load_pipeline_config(path).split.seed == 22  # not the pipeline's section
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an int"):
        load_trainer_params(path)


def test_defaults_frozen_and_hash_stable(tmp_path):
    cfg = load_pipeline_config(write(tmp_path, {"priors": {"splits": ["unlabeled", "val"]}}))
    assert cfg.priors.splits == ("unlabeled", "val")
    assert cfg.data.synthetic.image_size == 128  # absent keys take the dataclass default
    with pytest.raises(FrozenInstanceError):
        cfg.split.seed = 3
    assert to_dict(cfg.priors)["splits"] == ["unlabeled", "val"]
    again = load_pipeline_config(write(tmp_path, {"priors": {"splits": ["unlabeled", "val"]}}))
    assert config_hash(cfg.priors) == config_hash(again.priors)
    assert config_hash(cfg.priors) != config_hash(load_pipeline_config(write(tmp_path, {})).priors)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_pipeline_config(tmp_path / "nope.yaml")
    path = tmp_path / "params.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_pipeline_config(path)


@pytest.mark.parametrize(
    ("device", "local_rank", "expected"),
    [
        ("auto", None, "cuda:0"),
        ("auto", "3", "cuda:3"),
        ("cuda", "1", "cuda:1"),
        ("cuda:2", "1", "cuda:2"),
    ],
)
def test_teacher_device_follows_local_rank(monkeypatch, device, local_rank, expected):
    """torchrun's workers each take their own GPU; an explicit cuda:N is kept."""
    import torch

    from pipeline.config import resolve_placement

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert resolve_placement(device, "auto") == (expected, "bfloat16")


def test_teacher_device_without_cuda_is_the_cpu(monkeypatch):
    import torch

    from pipeline.config import resolve_placement

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_placement("auto", "auto") == ("cpu", "float32")
