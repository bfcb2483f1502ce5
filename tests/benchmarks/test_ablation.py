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


@pytest.mark.parametrize("name", ["supervised", "fixmatch", "spm", "spm_sesm", "full"])
def test_row_params_load_with_the_rows_method_budget_and_seed(ablation, tmp_path, name):
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

    params = load_trainer_params(path)
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
