"""benchmarks/model_speed.py: --compare times params files' models in the same rounds;
--breakdown times the parts of one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from benchmark_scripts import import_benchmark


@pytest.fixture(scope="module")
def model_speed():
    return import_benchmark("model_speed")


def params_file(folder: Path, name: str, fine_dim: int) -> str:
    path = folder / name
    model = {"visual": {"kind": "resnet", "path": None}, "fine_dim": fine_dim}
    path.write_text(yaml.safe_dump({"model": model, "train": {"image_size": 32}}))
    return str(path)


def test_compare_times_every_model_in_every_round(model_speed, tmp_path):
    """... and leaves torch's thread count alone (later tests compare runs bitwise)."""
    wide = params_file(tmp_path, "wide.yaml", 16)
    narrow = params_file(tmp_path, "narrow.yaml", 8)
    threads = torch.get_num_threads()
    result = model_speed.compare_models([wide, narrow], batch=2, rounds=2, warmup=1)
    assert torch.get_num_threads() == threads
    assert [len(result["seconds"][p]["values_s"]) for p in (wide, narrow)] == [2, 2]
    assert result["first"] == wide
    ratios = result["over_first"]
    assert ratios[wide] == 1.0
    assert ratios[narrow] > 0


def test_training_forward_follows_the_params_model(model_speed, tmp_path):
    """The head's width and the input side come from the file."""
    model, forward, size = model_speed.training_forward(params_file(tmp_path, "p.yaml", 8), 2)
    assert size == 32
    assert model.head.image[0].out_channels == 8
    assert forward().shape == (2, 1, 32, 32)


def test_breakdown_times_every_part_at_every_step(model_speed, tmp_path):
    result = model_speed.forward_breakdown(
        params_file(tmp_path, "p.yaml", 8), batch=2, steps=2, warmup=1
    )
    median = result["median_ms"]
    assert {"full-resolution head", "decoder", "forward", "forward+backward"} <= set(median)
    assert 0 < median["full-resolution head"] < median["forward"] < median["forward+backward"]
