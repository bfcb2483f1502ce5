"""benchmarks/flip_eval.py: one checkpoint scored without and with the test-time flip."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import import_benchmark
from trainer_workspace import variant


@pytest.fixture(scope="module")
def flip_eval():
    return import_benchmark("flip_eval")


def test_gains_summary_by_hand(flip_eval):
    summary = flip_eval.summarize_gains([0.02, -0.01, 0.02])
    assert summary["mean"] == pytest.approx(0.01)
    # Deviations 0.01, -0.02, 0.01: sample variance 0.0006 / 2.
    assert summary["std"] == pytest.approx(0.0003**0.5)
    assert (summary["positive"], summary["checkpoints"]) == (2, 3)
    assert flip_eval.summarize_gains([0.5])["std"] == 0.0


@pytest.mark.slow
def test_a_checkpoint_is_scored_both_ways_on_the_same_pairs(flip_eval, trainer_workspace, tmp_path):
    import torch

    from l2l_train.config import load_trainer_params
    from l2l_train.loop import run_training

    params = variant(trainer_workspace, tmp_path)
    run_training(load_trainer_params(params))
    out = tmp_path / "flip.json"
    checkpoint = tmp_path / "models" / "best.pt"
    # main() sets torch's threads: keep the suite's (later tests compare runs bitwise).
    threads = str(torch.get_num_threads())
    flip_eval.main(
        [
            *("--checkpoints", str(checkpoint), "--params", str(params)),
            *("--out", str(out), "--threads", threads),
        ]
    )
    result = json.loads(out.read_text())
    run = result["runs"][str(checkpoint)]
    assert run["plain"]["pairs"] == run["flip"]["pairs"] > 0
    assert run["oIoU_gain"] == pytest.approx(run["flip"]["oIoU"] - run["plain"]["oIoU"])
    assert result["oIoU_gain"]["checkpoints"] == 1
    with pytest.raises(SystemExit, match="not found"):
        flip_eval.main(["--checkpoints", str(tmp_path / "none.pt"), "--threads", threads])
