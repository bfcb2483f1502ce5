"""benchmarks/device/fit_budget.py: a calibration run's costs and the steps that fit, against
hand-computed values on a crafted run folder."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import import_benchmark


@pytest.fixture(scope="module")
def fit_budget():
    return import_benchmark("device.fit_budget")


def calibration_run(folder, speeds, epoch_steps_per_s, *, steps=100, train_s=200.0):
    """A run folder as ablation.py leaves it: one epoch of ``steps`` with a step line every
    50 steps (``speeds``: the epoch's mean samples/s so far), the last at 10:00:20 and the
    epoch line 7 s later."""
    folder.mkdir(parents=True)
    budget = {"epochs": 1, "steps_per_epoch": steps, "batch_size_x": 8, "batch_size_u": 16}
    result = {"row": "supervised", "seed": 22, "train_s": train_s, "eval_s": 20.0, "budget": budget}
    (folder / "result.json").write_text(json.dumps(result))
    lines = [
        f"[12/04/26 10:00:{20 - 10 * (len(speeds) - 1 - i):02d}] INFO     step {50 * (i + 1)}/"
        f"{steps} epoch 1 loss 0.5 {speed} samples/s"
        for i, speed in enumerate(speeds)
    ]
    lines += [
        "[12/04/26 10:00:27] INFO     epoch 1/1: loss 0.5 val oIoU 0.3 (best 0.3",
        f"                             at epoch 1), {epoch_steps_per_s} steps/s",
    ]
    (folder / "log.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_costs_time_the_steps_after_the_first_fifty(fit_budget, tmp_path):
    # 8 samples a step (5.0 samples/s at 0.625 steps/s); clock 50 * 8 / 4 = 100 s at step 50,
    # 100 * 8 / 5 = 160 s at step 100: 1.2 s a step once warm. Validation 27 - 20 + 1 s;
    # start-up 200 - 100 / 0.625 - 8 = 32 s.
    run = calibration_run(tmp_path / "supervised" / "seed22", [4.0, 5.0], 0.625)
    assert fit_budget.run_costs(run) == pytest.approx(
        {"step_s": 1.2, "validation_s": 8.0, "startup_s": 32.0, "eval_s": 20.0}
    )


def test_a_short_calibration_falls_back_to_the_epoch_mean(fit_budget, tmp_path):
    run = calibration_run(tmp_path / "run", [4.0], 0.5, steps=60)
    assert fit_budget.run_costs(run)["step_s"] == pytest.approx(2.0)


def test_the_slowest_run_decides_the_steps(fit_budget):
    fast = {"step_s": 1.2, "validation_s": 8.0, "startup_s": 32.0, "eval_s": 20.0}
    slow = fast | {"step_s": 2.4}
    # room 1000 - 32 - 20 - 2 * 8 = 932 s over 2 epochs: 388 steps at 1.2 s, 194 at 2.4 s,
    # rounded down to tens.
    assert fit_budget.fit_steps([fast], 1000, 2, cap=600) == 380
    assert fit_budget.fit_steps([fast, slow], 1000, 2, cap=600) == 190
    assert fit_budget.fit_steps([fast], 1000, 2, cap=100) == 100
    assert fit_budget.fit_steps([fast], 50, 2, cap=600) == 0
