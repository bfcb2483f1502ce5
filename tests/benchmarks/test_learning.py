"""benchmarks/learning.py runs end to end on a tiny workspace and reports every diagnostic."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import import_benchmark


@pytest.fixture(scope="module")
def learning():
    return import_benchmark("learning")


@pytest.mark.slow
def test_curve_kinds_text_swap_and_teacher_scores(learning, trainer_workspace, tmp_path):
    workspace = trainer_workspace
    out = tmp_path / "learning.json"
    learning.main(
        [
            *("--data", str(workspace), "--work", str(tmp_path / "work"), "--out", str(out)),
            *("--labels", "5", "--prior", "teacher", "--steps", "2", "--eval-every", "1"),
            *("--batch-size", "2", "--per-image", "2", "--image-size", "32"),
            *("--model", "{visual: {embed_dim: 8, path: null}, decoder_dim: 16}"),
        ]
    )
    result = json.loads(out.read_text())
    assert [p["step"] for p in result["curve"]] == [1, 2]
    for point in result["curve"]:
        for mode in ("none", "teacher"):
            scores = point[mode]
            assert 0 <= scores["oIoU"] <= 1 and scores["area_ratio"] >= 0
            assert set(scores["oIoU_per_kind"]) <= {"attribute", "spatial", "ordinal", "relation"}
            assert scores["oIoU_per_kind"]
            assert set(scores["attribute_oIoU"]) <= {"names_shape", "colour_size_only"}
            swap = scores["text_swap"]
            assert swap["pairs"] > 0 and 0 <= swap["moves"] <= 1 and 0 <= swap["own_target"] <= 1
    assert result["train_pairs"] > 0 and result["val_pairs"] > 0
    # --work is left a run folder whose checkpoint loads as l2l-train's do
    from l2l_train.checkpoint import load_checkpoint
    from l2l_train.config import load_trainer_params
    from l2l_train.evaluate import model_from_checkpoint

    params = load_trainer_params(tmp_path / "work" / "params.yaml")
    assert params.paths.models == str(tmp_path / "work" / "models")
    ckpt = load_checkpoint(tmp_path / "work" / "models" / "latest.pt", map_location="cpu")
    assert ckpt["step"] == 2 and ckpt["config"]["train"]["method"] == "supervised"
    model, _, image_size = model_from_checkpoint(ckpt)
    assert image_size == params.train.image_size == 32  # the size it trained at
    assert model.state_dict().keys() == ckpt["model"].keys()


def test_same_image_rows_draw_different_referents_of_one_image(learning):
    import torch

    data = {"image_id": [7, 7, 7, 9, 9, 5], "ref_id": [1, 1, 2, 3, 4, 6]}
    by_image = learning.rows_by_image_and_ref(data)
    assert by_image == [[[0, 1], [2]], [[3], [4]], [[5]]]
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        rows = learning.same_image_rows(by_image, 6, 2, generator).tolist()
        for a, b in zip(rows[::2], rows[1::2], strict=True):
            assert data["image_id"][a] == data["image_id"][b]
            if data["image_id"][a] != 5:  # image 5 has one referent: it repeats
                assert data["ref_id"][a] != data["ref_id"][b]


def test_teacher_labelled_binarises_the_prior_and_drops_teacher_misses(learning):
    import torch

    data = {
        "prior": torch.tensor([[[[0.2, 0.7]]], [[[0.9, 0.5]]], [[[1.0, 1.0]]]]),
        "prior_present": torch.tensor([True, True, False]),
        "mask": torch.zeros(3, 1, 2, dtype=torch.uint8),
        "expression": ["a", "b", "c"],
    }
    out = learning.teacher_labelled(data)
    assert out["expression"] == ["a", "b"]
    assert out["mask"].tolist() == [[[0, 1]], [[1, 1]]]  # 0.5 counts as foreground
    assert out["mask"].dtype == torch.uint8


def test_prior_scores_count_a_missing_prior_as_an_empty_prediction(learning):
    import torch

    data = {
        # 1x2 priors at the original 1x2 size: pair 0 predicts its right pixel, pair 1 none
        # (absent), pair 2 both.
        "prior": torch.tensor([[[[0.2, 0.7]]], [[[0.9, 0.9]]], [[[0.6, 0.5]]]]),
        "prior_present": torch.tensor([True, False, True]),
        "mask_original": [torch.tensor([[1, 1]]), torch.tensor([[1, 0]]), torch.tensor([[0, 1]])],
        "kind": ["spatial", "spatial", "ordinal"],
        "image_id": [4, 4, 4],
    }
    # One scene of two one-pixel objects: the left and the right pixel.
    objects = {4: [torch.tensor([[True, False]]), torch.tensor([[False, True]])]}
    out = learning.prior_scores(data, objects)
    # spatial: intersections 1 + 0, unions 2 + 1; ordinal: 1 / 2; overall 2 / 5
    assert out["oIoU"] == pytest.approx(2 / 5)
    assert out["oIoU_per_kind"] == pytest.approx({"spatial": 1 / 3, "ordinal": 1 / 2})
    assert out["pairs_per_kind"]["spatial"] == 2 and out["pairs_per_kind"]["relation"] == 0
    # Ties go to the first object. Pair 0's prior lies on the right object, its referent is
    # the left (its mask covers both); pair 1 has none; pair 2's covers both (so: the left)
    # while its referent is the right.
    assert out["landing"]["spatial"] == {"referent": 0.0, "other_object": 0.5, "background": 0.5}
    assert out["landing"]["ordinal"]["other_object"] == 1.0


def test_landing_names_the_shape_a_prediction_lies_on(learning):
    import torch

    def mask(rows):
        return torch.tensor(rows, dtype=torch.bool)

    left, right = mask([[1, 1, 0], [0, 0, 0]]), mask([[0, 0, 0], [0, 1, 1]])
    cases = {  # the referent is `left`
        "referent": [[[1, 1, 0], [0, 0, 0]], [[1, 1, 0], [0, 1, 0]]],  # all on it; 2 vs 1
        "other_object": [[[0, 0, 0], [0, 1, 0]], [[1, 0, 0], [0, 1, 1]]],  # 1 vs 2
        "background": [[[0, 0, 1], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]]],  # off both; none
    }
    for where, preds in cases.items():
        for pred in preds:
            assert learning.landing(mask(pred), left, [left, right]) == where, (where, pred)
    data = {
        "mask_original": [left, left, left],
        "image_id": [3, 3, 3],
        "kind": ["ordinal", "ordinal", "spatial"],
    }
    preds = [mask(cases["referent"][0]), mask(cases["other_object"][0]), left]
    shares = learning.landing_by_kind(preds, data, {3: [left, right]})
    assert shares["ordinal"] == {"referent": 0.5, "other_object": 0.5, "background": 0.0}
    assert shares["all"]["referent"] == pytest.approx(2 / 3) and "relation" not in shares


@pytest.mark.slow
def test_a_trained_checkpoint_is_scored_beside_its_teacher(learning, trainer_workspace, tmp_path):
    import torch

    from l2l_train.config import load_trainer_params
    from l2l_train.model import build_segmentor
    from pipeline.config import to_dict

    params = load_trainer_params(trainer_workspace)
    checkpoint = tmp_path / "best.pt"
    model = build_segmentor(params.model)
    config = {"model": to_dict(params.model), "train": {"image_size": 32}}
    torch.save({"config": config, "model": model.state_dict()}, checkpoint)
    out = tmp_path / "checkpoint.json"
    learning.main(
        [
            *("--data", str(trainer_workspace), "--work", str(tmp_path / "work")),
            *("--checkpoint", str(checkpoint), "--out", str(out)),
        ]
    )
    result = json.loads(out.read_text())
    assert result["checkpoint"] == str(checkpoint) and result["val_pairs"] > 0
    assert result["bypassed"] == []
    for mode in ("none", "teacher"):
        assert 0 <= result[mode]["oIoU"] <= 1 and result[mode]["text_swap"]["pairs"] > 0
    assert 0 < result["prior"]["oIoU"] <= 1
    assert sum(result["prior"]["pairs_per_kind"].values()) == result["val_pairs"]
    for shares in (result["none"]["landing"], result["prior"]["landing"]):
        assert sum(shares["all"].values()) == pytest.approx(1.0)

    knocked_out = tmp_path / "bypassed.json"
    learning.main(
        [
            *("--data", str(trainer_workspace), "--work", str(tmp_path / "work")),
            *("--checkpoint", str(checkpoint), "--out", str(knocked_out)),
            *("--bypass", "counting", "--bypass", "context"),
        ]
    )
    bypassed = json.loads(knocked_out.read_text())
    assert bypassed["bypassed"] == ["counting", "context"] and 0 <= bypassed["none"]["oIoU"] <= 1


def test_bypassed_blocks_pass_tokens_unchanged(learning):
    import torch
    from torch import nn

    from l2l_train.model.context import GlobalContext
    from l2l_train.model.counting import AxisCount

    torch.manual_seed(0)
    model = nn.Module()
    model.context = nn.ModuleDict({"1": GlobalContext(8, 2)})
    model.counting = nn.ModuleDict({"1": AxisCount(8, 4)})
    tokens, grid = torch.randn(2, 16, 8), (4, 4)
    for block in (model.context["1"], model.counting["1"]):
        for weight in block.parameters():  # as trained: the zero-initialised outputs moved
            nn.init.normal_(weight)
        assert not torch.allclose(block(tokens, grid), tokens)
    learning.bypass_blocks(model, ["counting"])
    assert torch.equal(model.counting["1"](tokens, grid), tokens)
    assert not torch.allclose(model.context["1"](tokens, grid), tokens)  # not asked for
    learning.bypass_blocks(model, ["context"])
    assert torch.equal(model.context["1"](tokens, grid), tokens)


def test_bypass_needs_a_checkpoint(learning):
    with pytest.raises(SystemExit):
        learning.main(["--bypass", "counting"])
