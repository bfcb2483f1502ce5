"""The ResNet's pretraining on dense scene parsing (l2l_train.pretrain): its labels and loss by
hand, its scenes apart from every split, a tiny run through the CLI, and strict loading."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from trainer_workspace import write_params
from typer.testing import CliRunner

from l2l_train.cli import app
from l2l_train.config import PretrainConfig, VisualConfig, load_trainer_params
from l2l_train.model.encoder import ResNetStages, build_visual_encoder
from l2l_train.pretrain import (
    ParsingHead,
    foreground_accuracy,
    parsing_loss,
    render_parsing_set,
    run_pretraining,
    scene_label_maps,
)
from pipeline.config import SyntheticConfig
from pipeline.datasets.synthetic_scenes import PRETRAIN_STREAM, generate_scene
from pipeline.schema import ConfigError

TINY_VISUAL = {"kind": "resnet", "embed_dim": 8, "num_heads": [1, 1, 1, 1]}


def test_scene_label_maps_by_hand():
    # SHAPES: circle square triangle star diamond hexagon; COLORS: red green blue yellow
    # purple orange. Object 0 is a blue star, object 1 a red circle.
    labels = np.array([[0, 1], [2, 1]])
    shapes, colours = scene_label_maps(labels, ["star", "circle"], ["blue", "red"])
    np.testing.assert_array_equal(shapes, [[0, 4], [1, 4]])
    np.testing.assert_array_equal(colours, [[0, 3], [1, 3]])
    assert shapes.dtype == np.int64


def test_parsing_loss_by_hand():
    # Uniform logits over C classes: each cross-entropy is log C, and so is their mean.
    logits = torch.zeros(2, 2 * 7, 3, 3)
    target = torch.randint(7, (2, 3, 3))
    assert parsing_loss(logits, target, target).item() == pytest.approx(math.log(7))
    # A confident right answer on the shape half, uniform on the colour half.
    logits[:, 0] = 50.0
    zeros = torch.zeros(2, 3, 3, dtype=torch.long)
    assert parsing_loss(logits, zeros, zeros).item() == pytest.approx(0.5 * math.log(7), abs=1e-6)


def test_foreground_accuracy_counts_foreground_pixels_only():
    target = torch.tensor([[[0, 1], [2, 2]]])  # three foreground pixels
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1, 0, 1] = 1.0  # right (1)
    logits[0, 2, 1, 0] = 1.0  # right (2)
    logits[0, 1, 1, 1] = 1.0  # wrong (1 for 2); the background pixel is never counted
    assert foreground_accuracy(logits, target) == pytest.approx(2 / 3)


def test_parsing_head_sums_every_stage_at_the_input_size():
    encoder = ResNetStages(VisualConfig(**TINY_VISUAL))
    maps = encoder(torch.zeros(2, 3, 32, 32), lambda stage, tokens, grid: tokens)
    logits = ParsingHead(encoder.dims, classes=7)(maps, (32, 32))
    assert logits.shape == (2, 14, 32, 32)


def test_pretrain_scenes_are_no_split_s_scenes():
    cfg = SyntheticConfig(image_size=64)
    pretrain = generate_scene(cfg, PRETRAIN_STREAM, 0).image
    for split in ("train", "val", "test"):
        assert not np.array_equal(pretrain, generate_scene(cfg, split, 0).image)
    np.testing.assert_array_equal(pretrain, generate_scene(cfg, PRETRAIN_STREAM, 0).image)


def test_render_parsing_set_labels_the_objects(tmp_path):
    params = load_trainer_params(
        write_params(tmp_path, {"data": {"synthetic": {"image_size": 64}}})
    )
    data = render_parsing_set(params, 0, 3, 32)
    assert data.images.shape == (3, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.shapes.shape == data.colours.shape == (3, 32, 32)
    # Shapes and colours label the same pixels: the objects'.
    torch.testing.assert_close(data.shapes > 0, data.colours > 0)
    assert (data.shapes > 0).any() and int(data.shapes.max()) <= 6


def test_render_parsing_set_draws_labels_at_their_own_size(tmp_path):
    params = load_trainer_params(write_params(tmp_path, {}))
    full = render_parsing_set(params, 0, 2, 32)
    small = render_parsing_set(params, 0, 2, 32, label_size=16)
    assert torch.equal(small.images, full.images)
    assert small.shapes.shape == small.colours.shape == (2, 16, 16)
    for scene in range(2):  # the same objects, fewer pixels
        assert set(small.shapes[scene].unique().tolist()) == set(
            full.shapes[scene].unique().tolist()
        )


def test_label_size_is_at_most_the_image_size():
    with pytest.raises(
        ConfigError, match=r"pretrain\.label_size: at most pretrain\.image_size \(64\)"
    ):
        PretrainConfig(image_size=64, label_size=128)


def test_render_parsing_set_draws_the_same_scenes_in_workers(tmp_path):
    params = load_trainer_params(write_params(tmp_path, {}))
    here = render_parsing_set(params, 5, 3, 32)
    rng = torch.random.get_rng_state()
    drawn = render_parsing_set(params, 5, 3, 32, workers=2)
    # The global RNG, which then initialises the encoder, is left where it was.
    assert torch.equal(torch.random.get_rng_state(), rng)
    for name in ("images", "shapes", "colours"):
        assert torch.equal(getattr(here, name), getattr(drawn, name)), name


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A two-step pretraining through the CLI; returns (params path, weights path)."""
    root = tmp_path_factory.mktemp("pretrain")
    out = root / "resnet.pt"
    params = write_params(
        root,
        {
            "model": {"visual": TINY_VISUAL},
            "pretrain": {
                "out": str(out),
                "scenes": 6,
                "eval_scenes": 2,
                "steps": 2,
                "batch_size": 2,
                "image_size": 32,
                "label_size": 16,
            },
        },
    )
    result = CliRunner().invoke(app, ["pretrain", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "held-out shape accuracy" in result.output
    return params, out


def test_pretrain_writes_weights_the_encoder_loads(pretrained):
    _, out = pretrained
    state = torch.load(out, weights_only=True)
    assert state["report"]["label_size"] == 16
    assert state["report"]["steps"] == 2 and 0.0 <= state["report"]["shape_accuracy"] <= 1.0
    encoder = build_visual_encoder(VisualConfig(**TINY_VISUAL, path=str(out)))
    loaded = encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state["state_dict"].items())
    # Not the random init: the file's weights were trained.
    fresh = ResNetStages(VisualConfig(**TINY_VISUAL)).state_dict()
    assert not all(torch.equal(fresh[k], v) for k, v in state["state_dict"].items())
    # Restoring a whole-model checkpoint skips the file.
    build_visual_encoder(VisualConfig(**TINY_VISUAL, path="missing.pt"), load_weights=False)


def test_loading_names_a_missing_file_and_another_architecture(pretrained, tmp_path):
    _, out = pretrained
    with pytest.raises(FileNotFoundError, match=r"model\.visual\.path.*l2l-train pretrain"):
        build_visual_encoder(VisualConfig(**TINY_VISUAL, path=str(tmp_path / "none.pt")))
    wider = {**TINY_VISUAL, "embed_dim": 16}
    with pytest.raises(ValueError, match=r"model.visual.embed_dim: .* pretrained with 8"):
        build_visual_encoder(VisualConfig(**wider, path=str(out)))
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    with pytest.raises(ValueError, match="not a l2l-resnet-pretrained/1 file"):
        build_visual_encoder(VisualConfig(**TINY_VISUAL, path=str(other)))


def test_a_swin_is_not_pretrained_and_the_record_does_not_load(tmp_path):
    """A Swin starts from model.visual.path: pretrain (the DVC stage) records that and returns;
    the record is no weights file for a resnet, and run_pretraining itself refuses a Swin."""
    out = tmp_path / "resnet.pt"
    swin = {"model": {"visual": {"kind": "swin"}}, "pretrain": {"out": str(out)}}
    params = write_params(tmp_path, swin)
    result = CliRunner().invoke(app, ["pretrain", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "model.visual.kind is swin: nothing to pretrain" in " ".join(result.output.split())
    with pytest.raises(ValueError, match="not a l2l-resnet-pretrained/1 file"):
        build_visual_encoder(VisualConfig(**TINY_VISUAL, path=str(out)))
    with pytest.raises(ValueError, match=r"model\.visual\.kind"):
        run_pretraining(load_trainer_params(params))


def test_pretraining_decays_kernels_only(pretrained, tmp_path, monkeypatch):
    """Like the trainer, no weight decay on biases and norm scales (one-dimensional)."""
    from l2l_train.pretrain import run_pretraining

    params = load_trainer_params(pretrained[0])
    params = replace(params, pretrain=replace(params.pretrain, out=str(tmp_path / "again.pt")))
    groups = []
    adamw = torch.optim.AdamW

    def recording_adamw(param_groups, **kwargs):
        groups.extend(param_groups)
        return adamw(param_groups, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", recording_adamw)
    run_pretraining(params)
    decay = {g["weight_decay"]: g["params"] for g in groups}
    assert decay[0.01] and all(p.ndim > 1 for p in decay[0.01])
    assert decay[0.0] and all(p.ndim == 1 for p in decay[0.0])
