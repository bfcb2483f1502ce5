"""benchmarks/ablation.py: every row's params are valid trainer params with the row's switches."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from benchmark_scripts import BENCHMARKS, import_benchmark

from l2l_train.config import load_trainer_params


@pytest.fixture(scope="module")
def ablation():
    return import_benchmark("ablation")


ROW_NAMES = ["supervised", "fixmatch", "spm", "spm_sesm", "full", "tuned_fusion", "catm"]
ROW_NAMES += ["agreement_filter", "fusion_a03", "gating_fixed", "xattn_none", "no_cons"]


def row_params(ablation, tmp_path, name):
    """Row ``name``'s params at seed 23, loaded; the row, its data folder and run folder."""
    data = tmp_path / "data"
    (data / "manifests").mkdir(parents=True)
    row = next(r for r in ablation.ROWS if r.name == name)
    budget = ablation.Budget(
        epochs=2, steps_per_epoch=5, image_size=64, batch_size_x=8, batch_size_u=4, lr=2e-3
    )
    setup = ablation.Setup(
        work=tmp_path / "work",
        data=data,
        budget=budget,
        base=yaml.safe_load((BENCHMARKS.parent / "params.yaml").read_text()),
        teacher_eval=False,
    )
    folder = tmp_path / "work" / name / "seed23"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(ablation.row_params(setup, row, 23, folder)))
    return load_trainer_params(path), row, data, folder


@pytest.mark.parametrize("name", ROW_NAMES)
def test_row_params_load_with_the_rows_method_budget_and_seed(ablation, tmp_path, name):
    params, row, data, folder = row_params(ablation, tmp_path, name)
    train = params.train
    assert train.method == row.train["method"] and train.seed == 23
    assert (train.epochs, train.steps_per_epoch, train.image_size) == (2, 5, 64)
    assert (train.batch_size_x, train.batch_size_u, train.lr) == (8, 4, 2e-3)
    assert params.model.sesm.enabled == row.sesm
    assert (train.spm, train.rple) == (row.train.get("spm", True), row.train.get("rple", True))
    assert params.eval.every_epochs == 1
    assert Path(params.paths.priors) == data / "priors"
    assert Path(params.paths.models) == folder / "models"
    # the 5 % rows read the data folder's partition through a folder of links
    assert (Path(params.paths.manifests) / "partition.parquet").readlink() == (
        data / "manifests" / "partition.parquet"
    )


def test_rows_of_the_other_tables_change_one_nested_key(ablation, tmp_path):
    base = load_trainer_params(BENCHMARKS.parent / "params.yaml")
    gating = row_params(ablation, tmp_path / "a", "gating_fixed")[0]
    assert gating.model.sesm.gating == "fixed" and gating.model.sesm.enabled
    assert gating.model.sesm.cross_attention_stages == base.model.sesm.cross_attention_stages
    assert (
        row_params(ablation, tmp_path / "b", "xattn_none")[0].model.sesm.cross_attention_stages
        == ()
    )
    agent = row_params(ablation, tmp_path / "c", "no_cons")[0].train.agent
    assert agent.lambda_cons == 0.0 and agent.lambda_sep == base.train.agent.lambda_sep
    fusion = row_params(ablation, tmp_path / "d", "fusion_a03")[0].train.fusion
    assert fusion.alpha == 0.3 and fusion.bA == base.train.fusion.bA


def test_rows_select_by_name_and_group(ablation):
    assert [r.name for r in ablation.selected_rows("table7")] == [
        "no_sep",
        "no_cons",
        "no_cov",
        "no_stab",
    ]
    picked = [r.name for r in ablation.selected_rows("catm,table4,full")]
    assert picked == ["full", "catm", "gating_fixed", "gating_semantic", "gating_structural"]
    assert len(ablation.selected_rows("all")) == len(ablation.ROWS)
    assert [r.name for r in ablation.selected_rows("table3")][-1] == "fully_supervised"
    with pytest.raises(SystemExit, match="unknown"):
        ablation.selected_rows("table9")
