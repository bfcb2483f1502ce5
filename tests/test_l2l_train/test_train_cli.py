"""`l2l-train run / eval / predict` end to end on the tiny workspace, and their errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from fault_injection import cli_env, train_cli
from PIL import Image
from trainer_workspace import params_dict, variant, write_params
from typer.testing import CliRunner

from l2l_train.cli import app
from l2l_train.config import load_trainer_params
from pipeline.datasets.manifest import image_root, read_manifest

runner = CliRunner()


def invoke(*args: str, code: int = 0) -> str:
    """Run the CLI; returns its output with whitespace collapsed (rich wraps long lines)."""
    result = runner.invoke(app, [str(a) for a in args])
    text = " ".join(result.output.split())
    assert result.exit_code == code, text
    return text


@pytest.fixture(scope="module")
def trained(trainer_workspace, tmp_path_factory) -> Path:
    """The workspace's params after one `l2l-train run` (l2l, 2 steps)."""
    params = variant(trainer_workspace, tmp_path_factory.mktemp("cli"))
    out = invoke("run", "--params", params)
    assert "best val oIoU" in out
    return params


def models(params: Path) -> Path:
    return Path(params_dict(params)["paths"]["models"])


def test_torchrun_command_runs_the_cli_as_ranks_with_a_share_of_the_cores(monkeypatch):
    import os
    import sys

    from l2l_train.runtime import torchrun_command

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    argv, env = torchrun_command(2, ["run", "--params", "p.yaml"])
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=2" in argv and "--standalone" in argv
    assert argv[-5:] == ["-m", "l2l_train.cli", "run", "--params", "p.yaml"]
    assert env["OMP_NUM_THREADS"] == "2"  # 5 cores // 2 ranks
    assert torchrun_command(8, [])[1]["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stays
    assert torchrun_command(2, [])[1]["OMP_NUM_THREADS"] == "3"


def test_a_world_other_than_train_processes_is_refused(monkeypatch):
    from l2l_train.config import TrainConfig
    from l2l_train.runtime import start_runtime

    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError) as err:
        start_runtime(TrainConfig(processes=2, device="cpu"))
    assert "train.processes is 2 but this process is one of 4 ranks" in str(err.value)
    assert "set train.processes: 4" in str(err.value)


@pytest.mark.slow
def test_run_with_two_processes_trains_as_two_ddp_ranks(trainer_workspace, tmp_path):
    from l2l_train.checkpoint import load_checkpoint

    params = variant(trainer_workspace, tmp_path, train={"processes": 2})
    done = subprocess.run(
        train_cli("run", "--params", str(params)), capture_output=True, text=True, env=cli_env()
    )
    assert done.returncode == 0, done.stdout + done.stderr
    latest = load_checkpoint(models(params) / "latest.pt")
    assert len(latest["rank_states"]) == 2  # each rank's random streams, saved by rank 0
    assert latest["progress"]["visits_u"] == 2 * latest["step"] * 2  # 2 ranks x batch 2
    assert done.stdout.count("best val oIoU") == 1  # rank 0 alone prints

    # Other params over that checkpoint stop before any rank starts: one message, the single
    # process's exit code, no torchrun failure report.
    changed = write_params(tmp_path / "changed", params_dict(params), train={"lr": 5e-4})
    done = subprocess.run(
        train_cli("run", "--params", str(changed)), capture_output=True, text=True, env=cli_env()
    )
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, output
    assert output.count("train.lr") == 1 and "--restart" in output
    assert "ChildFailedError" not in output


@pytest.mark.slow
def test_eval_writes_metrics_per_split_and_prior_mode(trained):
    invoke("eval", "--params", trained)
    metrics_dir = Path(params_dict(trained)["paths"]["metrics"])
    result = json.loads((metrics_dir / "eval.json").read_text())
    assert result["prior"] == "none" and result["step"] == 2
    assert set(result["splits"]) == {"val"}  # eval.splits of the workspace
    val = result["splits"]["val"]
    assert {"oIoU", "mIoU", "prec@0.5", "prec@0.9", "pairs"} <= set(val)
    samples = Path(params_dict(trained)["paths"]["manifests"]) / "samples.parquet"
    assert val["pairs"] == (read_manifest(samples)["split"].to_numpy(False) == "val").sum()

    out = metrics_dir / "teacher.json"
    invoke("eval", "--params", trained, "--split", "val", "--prior", "teacher", "--out", out)
    teacher = json.loads(out.read_text())
    assert teacher["prior"] == "teacher" and teacher["splits"]["val"]["prior_coverage"] == 1.0
    # --threshold overrides eval.threshold for one command, and the JSON says which it used;
    # the option is checked as the params file's own value is.
    invoke("eval", "--params", trained, "--prior", "teacher", "--threshold", "0.7", "--out", out)
    assert json.loads(out.read_text())["threshold"] == 0.7
    assert "invalid params: eval.threshold: expected a float in (0, 1), got 1.5" in invoke(
        "eval", "--params", trained, "--threshold", "1.5", code=2
    )

    # The workspace evaluates without the test-time flip; --flip scores the same pairs with it
    # and says so in the JSON.
    assert result["flip"] is False
    flipped = metrics_dir / "flipped.json"
    assert "test-time flip" in invoke("eval", "--params", trained, "--flip", "--out", flipped)
    flipped_result = json.loads(flipped.read_text())
    assert flipped_result["flip"] is True
    assert flipped_result["splits"]["val"]["pairs"] == val["pairs"]

    # No priors were generated for the test split: the error names the command that makes them.
    text = invoke("eval", "--params", trained, "--split", "test", "--prior", "teacher", code=1)
    assert "l2l-priors generate --split test" in text
    text = invoke("eval", "--params", trained, "--prior", "maybe", code=2)
    assert "expected none or teacher" in text


def test_eval_names_a_params_section_that_is_not_a_mapping(trained, tmp_path):
    # With or without a command-line override of that section: one line naming it, exit 2
    # (the override is not merged into the broken section).
    broken = {**params_dict(trained), "eval": 5}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(broken))
    for options in ((), ("--threshold", "0.7")):
        out = invoke("eval", "--params", params, *options, code=2)
        assert "invalid params: eval: expected a mapping of EvalConfig keys, got 5" in out


@pytest.mark.slow
def test_eval_scores_the_held_out_part_of_train(trained, tmp_path):
    """``split.holdout_ratio`` 0.25: `l2l-priors split` gives 4 of the workspace's 16 train
    images the role held_out (the labelled images stay), and `eval --split held_out` scores
    exactly their pairs."""
    from pipeline.cli import app as pipeline_app
    from pipeline.datasets.manifest import read_partition

    source = Path(params_dict(trained)["paths"]["manifests"])
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "samples.parquet").symlink_to(source / "samples.parquet")
    params = write_params(
        tmp_path,
        params_dict(trained),
        split={"holdout_ratio": 0.25},
        paths={"manifests": str(manifests), "metrics": str(tmp_path / "metrics")},
    )
    split = runner.invoke(pipeline_app, ["split", "--params", str(params)])
    assert split.exit_code == 0 and "held_out" in split.output, split.output
    roles = read_partition(manifests / "partition.parquet").to_pydict()
    own = read_partition(source / "partition.parquet").to_pydict()

    def ids(table: dict, role: str) -> list[str]:
        return [s for s, r in zip(table["sample_id"], table["role"], strict=True) if r == role]

    assert ids(roles, "labeled") == ids(own, "labeled")
    held_out = ids(roles, "held_out")
    assert held_out and set(held_out) < set(ids(own, "unlabeled"))
    out = tmp_path / "held_out.json"
    # --sweep scores other thresholds from the same forwards, to choose eval.threshold here.
    own = str(load_trainer_params(params).eval.threshold)
    text = invoke(
        "eval", "--params", params, "--split", "held_out", "--out", out,
        "--sweep", "0.05", "--sweep", own,
    )  # fmt: skip
    assert "oIoU by threshold" in text
    scored = json.loads(out.read_text())["splits"]["held_out"]
    assert scored["pairs"] == len(held_out)
    assert set(scored["sweep"]) == {"0.05", own}
    assert scored["sweep"][own]["oIoU"] == scored["oIoU"]
    text = invoke("eval", "--params", params, "--split", "held_out", "--sweep", "1.5", code=1)
    assert "sweep: thresholds must lie in (0, 1), got 1.5" in text


@pytest.mark.slow
def test_figures_draws_every_picture_of_an_l2l_run(trained, tmp_path):
    from l2l_train.checkpoint import load_checkpoint
    from l2l_train.figures import FIGURES, QUALITY_CURVES

    text = invoke("figures", "--params", trained, "--out", tmp_path)
    assert text.count("wrote ") == len(FIGURES)
    for name in FIGURES.values():
        with Image.open(tmp_path / name) as picture:
            assert picture.format == "PNG" and min(picture.size) > 100
    # figure 9 draws every curve the run logged
    history = load_checkpoint(models(trained) / "latest.pt")["progress"]["history"]
    assert {key for key, _ in QUALITY_CURVES} <= set(history[-1])


@pytest.mark.slow
def test_figures_of_a_supervised_run_skip_the_teacher_pictures(trained, tmp_path):
    from l2l_train.figures import FIGURES

    params = params_dict(trained)
    supervised = write_params(
        tmp_path,
        params,
        train={"method": "supervised"},
        paths={"models": str(tmp_path / "models"), "metrics": str(tmp_path / "metrics")},
    )
    invoke("run", "--params", supervised)
    out = tmp_path / "metrics" / "figures"
    (out / FIGURES["examples"]).parent.mkdir(parents=True)
    (out / FIGURES["examples"]).write_bytes(b"stale")  # from an earlier l2l run
    invoke("figures", "--params", supervised)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [FIGURES["quality"], FIGURES["confidence"]]
    )


def test_figures_without_a_run_names_the_missing_checkpoint(tmp_path):
    params = write_params(tmp_path, {"paths": {"models": str(tmp_path / "models")}})
    text = invoke("figures", "--params", params, code=1)
    assert f"checkpoint not found: {tmp_path / 'models' / 'best.pt'}" in text


@pytest.mark.slow
def test_predict_writes_mask_and_overlay(trained, tmp_path):
    samples = Path(params_dict(trained)["paths"]["manifests"]) / "samples.parquet"
    row = read_manifest(samples).slice(0, 1).to_pylist()[0]
    image = image_root(samples) / row["image_path"]
    mask, overlay = tmp_path / "mask.png", tmp_path / "overlay.png"
    invoke(
        "predict",
        "--checkpoint", models(trained) / "best.pt",
        "--image", image,
        "--text", row["expression"],
        "--out", mask,
        "--overlay", overlay,
    )  # fmt: skip
    size = Image.open(image).size
    written = np.asarray(Image.open(mask))
    assert Image.open(mask).size == size and set(np.unique(written)) <= {0, 255}
    assert Image.open(overlay).size == size and Image.open(overlay).mode == "RGB"


@pytest.mark.slow
def test_predict_flips_as_the_checkpoints_run_evaluated_unless_told(trained):
    from l2l_train.predict import Predictor

    checkpoint = models(trained) / "best.pt"
    samples = Path(params_dict(trained)["paths"]["manifests"]) / "samples.parquet"
    row = read_manifest(samples).slice(0, 1).to_pylist()[0]
    picture = Image.open(image_root(samples) / row["image_path"])
    assert Predictor(checkpoint).flip is False  # the workspace's eval.flip
    assert Predictor(checkpoint).threshold == load_trainer_params(trained).eval.threshold
    plain = Predictor(checkpoint, flip=False).probability(picture, "the shape on the left")
    flipped = Predictor(checkpoint, flip=True).probability(picture, "the shape on the left")
    assert flipped.shape == plain.shape == (picture.height, picture.width)
    assert not np.allclose(flipped, plain)


@pytest.mark.slow
def test_mismatched_params_fail_naming_keys_until_restart(trained, tmp_path):
    changed = write_params(tmp_path, params_dict(trained), train={"lr": 5e-4})
    text = invoke("run", "--params", changed, code=2)
    assert "train.lr" in text and "--restart" in text
    text = invoke("run", "--params", changed, "--restart")
    assert "resumed from step" not in text and "best val oIoU" in text


def test_missing_inputs_name_the_command_that_makes_them(tmp_path):
    params = write_params(
        tmp_path,
        {
            "paths": {
                name: str(tmp_path / name) for name in ("manifests", "priors", "models", "metrics")
            }
        },
    )
    assert "l2l-priors prepare" in invoke("run", "--params", params, code=1)
    assert "l2l-train run" in invoke("eval", "--params", params, code=1)
    text = invoke(
        "predict", "--checkpoint", tmp_path / "none.pt", "--image", "x.png", "--text", "a", code=1
    )
    assert "l2l-train run" in text
    bad = write_params(tmp_path / "bad", {"train": {"methd": "l2l"}})
    assert "train.methd: unknown key" in invoke("run", "--params", bad, code=2)
