"""benchmarks/rple_reward.py: the reward and the labels' quality at fixed thresholds, by hand."""

from __future__ import annotations

import math

import pytest
import torch
from benchmark_scripts import BENCHMARKS, import_benchmark

from l2l_train.config import load_trainer_params


@pytest.fixture(scope="module")
def rple_reward():
    return import_benchmark("rple_reward")


def test_closing_the_band_raises_the_reward_while_label_accuracy_falls(rple_reward):
    """One 1x4 pair: q_hat 0.9, 0.6, 0.35, 0.1; the strong prediction 1, 0, 0, 0; ground
    truth 1, 0, 0, 0. Weights 0.3 / 0.4 / 0.3, temperature 0.25 (params.yaml)."""
    agent = load_trainer_params(BENCHMARKS.parent / "params.yaml").train.agent
    maps = {
        "q_hat": torch.tensor([0.9, 0.6, 0.35, 0.1]).view(1, 1, 1, 4),
        "band": torch.tensor([0]),
        "p_strong": torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 4),
        "gt": torch.tensor([1, 0, 0, 0], dtype=torch.uint8).view(1, 1, 4),
        "has_gt": torch.tensor([True]),
    }
    # 0.7 / 0.3: pixel 0 foreground, pixel 3 background, 1 and 2 ignored.
    static = rple_reward.score_thresholds(maps, 0.7, 0.3, agent)
    sep = 1 / (1 + math.exp(-(1.0 - 0.0) / 0.25))
    assert static["separability"] == pytest.approx(sep, abs=1e-6)
    assert static["consistency"] == pytest.approx(1 - (0.1 + 0.1) / 2)
    assert static["coverage_term"] == pytest.approx(0.5)
    assert static["reward"] == pytest.approx(0.3 * sep + 0.4 * 0.9 + 0.3 * 0.5, abs=1e-6)
    assert (static["label_accuracy"], static["label_coverage"]) == (1.0, 0.5)
    assert (static["label_fg_precision"], static["label_bg_precision"]) == (1.0, 1.0)

    # 0.55 / 0.4: pixel 1 (q_hat 0.6, truly background) joins the foreground, 2 the background.
    closed = rple_reward.score_thresholds(maps, 0.55, 0.4, agent)
    sep = 1 / (1 + math.exp(-((1.0 + 0.0) / 2 - 0.0) / 0.25))
    cons = 1 - (0.1 + 0.6 + 0.35 + 0.1) / 4
    assert closed["reward"] == pytest.approx(0.3 * sep + 0.4 * cons + 0.3 * 1.0, abs=1e-6)
    assert (closed["label_accuracy"], closed["label_coverage"]) == (0.75, 1.0)
    assert (closed["label_fg_precision"], closed["label_bg_precision"]) == (0.5, 1.0)
    assert closed["reward"] > static["reward"]


def test_best_without_a_term_drops_its_weight(rple_reward):
    """Without consistency, coverage picks the narrow ignore band (0.55 / 0.4); without
    coverage, consistency picks the wide one (0.7 / 0.3)."""
    grid = [
        {
            "tau_fg": 0.7,
            "tau_bg": 0.3,
            "separability": 0.5,
            "consistency": 0.9,
            "coverage_term": 0.5,
        },
        {
            "tau_fg": 0.55,
            "tau_bg": 0.4,
            "separability": 0.5,
            "consistency": 0.7,
            "coverage_term": 1.0,
        },
    ]
    weights = {"sep": 0.3, "cons": 0.4, "cov": 0.3}
    assert rple_reward.best_without(grid, weights, "cons") == pytest.approx((0.55, 0.4, 0.45))
    assert rple_reward.best_without(grid, weights, "cov") == pytest.approx((0.7, 0.3, 0.51))
    assert rple_reward.best_without(grid, weights, "sep")[:2] == (0.55, 0.4)  # 0.58 vs 0.51


def test_threshold_spread_is_each_thresholds_percentiles(rple_reward):
    """21 pairs whose tau_fg runs 0.50, 0.51, ..., 0.70 and tau_bg is 0.3 for all: the 5th,
    50th and 95th percentiles by linear interpolation (position q * 20)."""
    tau_fg = torch.linspace(0.5, 0.7, 21)
    spread = rple_reward.threshold_spread(torch.stack([tau_fg, torch.full((21,), 0.3)], dim=1))
    assert spread["tau_fg"] == pytest.approx([0.51, 0.60, 0.69])
    assert spread["tau_bg"] == pytest.approx([0.3, 0.3, 0.3])
