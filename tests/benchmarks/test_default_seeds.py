"""benchmarks/default_seeds.py: the default's training over seeds, arms paired with it."""

from __future__ import annotations

import json

import pytest
import yaml
from benchmark_scripts import import_benchmark
from trainer_workspace import variant


@pytest.fixture(scope="module")
def default_seeds():
    return import_benchmark("default_seeds")


def test_an_arm_is_a_name_and_dotted_yaml_overrides(default_seeds):
    name, overrides = default_seeds.parse_arm(
        ["warm", "train.spm_warmup_steps=300", "train.fusion.bq=0.4", "model.context_stages=[]"]
    )
    assert name == "warm"
    assert overrides == {
        "train": {"spm_warmup_steps": 300, "fusion": {"bq": 0.4}},
        "model": {"context_stages": []},
    }
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        default_seeds.parse_arm(["warm", "train.lr"])
    with pytest.raises(SystemExit, match="a name other than"):
        default_seeds.parse_arm(["default", "train.lr=0.1"])


def test_a_run_keeps_the_base_but_its_arm_seed_and_folders(default_seeds, tmp_path):
    base = {"train": {"seed": 22, "lr": 0.001, "fusion": {"bq": 0.25, "bu": 0.2}}, "paths": {}}
    params = default_seeds.run_params(base, {"train": {"fusion": {"bq": 0.4}}}, 23, tmp_path)
    assert params["train"] == {"seed": 23, "lr": 0.001, "fusion": {"bq": 0.4, "bu": 0.2}}
    assert params["paths"] == {
        "models": str(tmp_path / "models"),
        "metrics": str(tmp_path / "metrics"),
    }
    assert base["train"]["seed"] == 22  # the base is not modified


def test_arms_are_paired_with_the_default_seed_by_seed(default_seeds):
    runs = {
        "default": {1: {"best_val_oIoU": 0.50}, 2: {"best_val_oIoU": 0.54}},
        "arm": {1: {"best_val_oIoU": 0.53}, 2: {"best_val_oIoU": 0.53}},
    }
    summary = default_seeds.summarize(runs, [1, 2])
    assert summary["default"]["best_val_oIoU"]["mean"] == pytest.approx(0.52)
    # (0.50 - 0.52)^2 + (0.54 - 0.52)^2 = 0.0008 over 1 degree of freedom.
    assert summary["default"]["best_val_oIoU"]["std"] == pytest.approx(0.0008**0.5)
    assert "paired_with_default" not in summary["default"]
    paired = summary["arm"]["paired_with_default"]
    # Differences +0.03 and -0.01: mean +0.01, std sqrt(0.0008).
    assert paired["mean"] == pytest.approx(0.01)
    assert paired["std"] == pytest.approx(0.0008**0.5)
    assert paired["by_seed"] == pytest.approx({"1": 0.03, "2": -0.01})
    assert paired["above"] == 1


@pytest.mark.slow
def test_runs_are_trained_once_and_a_changed_arm_stops(default_seeds, trainer_workspace, tmp_path):
    params = variant(trainer_workspace, tmp_path)
    work, out = tmp_path / "work", tmp_path / "seeds.json"
    common = ["--params", str(params), "--work", str(work), "--out", str(out), "--seeds", "2"]
    default_seeds.main([*common, "--arm", "slow", "train.lr=0.0001"])
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"default", "slow"}
    run = result["runs"]["slow"]["2"]
    assert run["best_val_oIoU"] == max(run["val_oIoU_per_epoch"])
    assert len(run["val_oIoU_per_epoch"]) == 1  # the workspace's one epoch
    assert result["summary"]["slow"]["paired_with_default"]["by_seed"].keys() == {"2"}
    trained = yaml.safe_load((work / "slow" / "s2" / "params.yaml").read_text())
    assert (trained["train"]["seed"], trained["train"]["lr"]) == (2, 0.0001)
    # A second call reuses the finished runs: their checkpoints are not rewritten.
    latest = work / "default" / "s2" / "models" / "latest.pt"
    written = latest.stat().st_mtime_ns
    default_seeds.main([*common, "--arm", "slow", "train.lr=0.0001"])
    assert latest.stat().st_mtime_ns == written
    assert json.loads(out.read_text())["runs"] == result["runs"]
    with pytest.raises(SystemExit, match="other params"):
        default_seeds.main([*common, "--arm", "slow", "train.lr=0.0002"])
    # An arm whose params the trainer rejects leaves no checkpoint: once its key is spelt
    # right it trains in the same folder.
    with pytest.raises(RuntimeError, match=r"see .*typo/s2/log\.txt"):
        default_seeds.main([*common, "--arm", "typo", "train.lrr=0.0002"])
    default_seeds.main([*common, "--arm", "typo", "train.lr=0.0002"])
    fixed = yaml.safe_load((work / "typo" / "s2" / "params.yaml").read_text())
    assert fixed["train"]["lr"] == 0.0002 and "lrr" not in fixed["train"]
    assert json.loads(out.read_text())["runs"]["typo"]["2"]["best_val_oIoU"] > 0
