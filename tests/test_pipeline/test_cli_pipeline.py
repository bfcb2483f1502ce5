"""`l2l-priors prepare / split / show` end to end on a small synthetic config and the refer fixture."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from refer_fixture import make_refer_fixture
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def write_params(tmp_path: Path, data: dict) -> Path:
    params = {
        "data": data,
        "split": {"labeled_ratio": 0.2, "seed": 22},
        "paths": {
            name: str(tmp_path / name)
            for name in ("prepared", "manifests", "priors", "models", "metrics")
        },
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def synthetic_params(tmp_path):
    synthetic = {
        "train_images": 12,
        "val_images": 3,
        "test_images": 3,
        "dir": str(tmp_path / "synthetic"),
    }
    return write_params(tmp_path, {"dataset": "synthetic", "synthetic": synthetic})


def test_prepare_split_show_synthetic(synthetic_params, tmp_path):
    invoke("prepare", "--params", str(synthetic_params))
    samples = pq.read_table(tmp_path / "manifests" / "samples.parquet")
    assert set(samples["split"].to_pylist()) == {"train", "val", "test"}

    result = invoke("split", "--params", str(synthetic_params))
    assert "labeled" in result.output and "unlabeled" in result.output
    part = pq.read_table(tmp_path / "manifests" / "partition.parquet")
    n_train = sum(s == "train" for s in samples["split"].to_pylist())
    assert part.num_rows == n_train

    out = tmp_path / "pair.png"
    invoke(
        "show",
        samples["sample_id"][0].as_py(),
        "--out",
        str(out),
        "--params",
        str(synthetic_params),
    )
    assert out.stat().st_size > 0


def test_prepare_refcoco_fixture_reports_skips(tmp_path):
    fx = make_refer_fixture(tmp_path / "raw")
    params = write_params(
        tmp_path, {"dataset": "refcoco", "root": str(fx["root"]), "images": str(fx["images"])}
    )
    result = invoke("prepare", "--params", str(params))
    assert "skipped" in result.output
    samples = pq.read_table(tmp_path / "manifests" / "samples.parquet")
    assert samples.num_rows == sum(fx["rows_per_split"].values())
    report = json.loads((tmp_path / "prepared" / "report.json").read_text())
    assert report["pairs"] == fx["rows_per_split"]
    assert f"{len(report['skipped'])} items skipped" in result.output
    assert all(entry["reason"] for entry in report["skipped"])


def test_bad_params_and_unknown_sample_exit_nonzero(synthetic_params, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("split: {labeled_ratio: five}\n")
    result = runner.invoke(app, ["split", "--params", str(bad)])
    assert result.exit_code == 2
    assert "split.labeled_ratio: expected a float in (0, 1), got 'five'" in result.output
    invoke("prepare", "--params", str(synthetic_params))
    result = runner.invoke(app, ["show", "nope/1/2/3", "--params", str(synthetic_params)])
    assert result.exit_code == 1 and "nope/1/2/3" in result.output
    # brackets in a message are printed as they are, not read as rich markup
    result = runner.invoke(app, ["show", "nope/[bold]/2", "--params", str(synthetic_params)])
    assert result.exit_code == 1 and "nope/[bold]/2" in result.output


def test_help_reflows_docstrings_and_keeps_angle_brackets():
    """Both CLIs render help as Markdown: a docstring's line breaks reflow (a command's summary
    is one line when the terminal is wide enough) and ``<split>`` placeholders survive."""
    from l2l_train.cli import app as train_app

    wide = {"COLUMNS": "240", "TERMINAL_WIDTH": "240"}
    top = runner.invoke(app, ["--help"], env=wide)
    assert top.exit_code == 0, top.output
    assert "at split.labeled_ratio, and held-out ones at split.holdout_ratio" in top.output
    report = runner.invoke(app, ["report", "--help"], env=wide)
    assert "<paths.metrics>/priors/<split>.json, <split>_iou_hist.csv" in report.output
    run = runner.invoke(train_app, ["run", "--help"], env=wide)
    assert "and per-epoch metrics to paths.metrics/train (dvclive)" in run.output
