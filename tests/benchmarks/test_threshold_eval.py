"""benchmarks/threshold_eval.py: trained runs scored at a grid of thresholds."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import import_benchmark
from trainer_workspace import variant


@pytest.fixture(scope="module")
def threshold_eval():
    return import_benchmark("threshold_eval")


def test_gains_are_against_the_reference_on_the_same_run_by_hand(threshold_eval):
    runs = {"a": {"0.3": 0.52, "0.5": 0.50}, "b": {"0.3": 0.59, "0.5": 0.60}}
    gains = threshold_eval.gains_by_threshold(runs, "0.5")
    assert gains["0.5"]["mean"] == 0.0 and gains["0.5"]["positive"] == 0
    # +0.02 and -0.01: mean 0.005, sample std sqrt((0.015^2 + 0.015^2) / 1).
    assert gains["0.3"]["mean"] == pytest.approx(0.005)
    assert gains["0.3"]["std"] == pytest.approx((2 * 0.015**2) ** 0.5)
    assert gains["0.3"]["positive"] == 1


@pytest.mark.slow
def test_a_run_is_scored_at_every_threshold_from_its_own_params(
    threshold_eval, trainer_workspace, tmp_path
):
    import torch

    from l2l_train.config import load_trainer_params
    from l2l_train.loop import run_training

    run_training(load_trainer_params(variant(trainer_workspace, tmp_path)))
    out = tmp_path / "thresholds.json"
    # main() sets torch's threads: keep the suite's (later tests compare runs bitwise).
    threads = str(torch.get_num_threads())
    threshold_eval.main(
        [
            *("--runs", str(tmp_path), "--split", "val", "--thresholds", "0.3", "0.7"),
            *("--out", str(out), "--threads", threads),
        ]
    )
    result = json.loads(out.read_text())
    scores = result["runs"][str(tmp_path)]
    assert list(scores) == ["0.3", "0.5", "0.7"]  # the reference joins the grid
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert result["oIoU_gain"]["0.5"]["mean"] == 0.0
    assert result["oIoU_gain"]["0.7"]["mean"] == pytest.approx(scores["0.7"] - scores["0.5"])
    assert result["best"] in scores
    with pytest.raises(SystemExit, match=r"no params\.yaml and models/best\.pt in"):
        threshold_eval.main(["--runs", str(tmp_path / "none"), "--threads", threads])
