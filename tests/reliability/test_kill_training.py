"""SIGKILL ``l2l-train run``, resume, and reach the uninterrupted run's state: weights, step
count, visits consumed, metric history and the order (and augmentations) of the samples
drawn after the resume; a kill in the middle of a checkpoint write leaves the previous
checkpoint loadable, and its temp file does not pile up over repeated kills; kills at
seeded random moments of the CLI's run (3 here, 20 under ``-m long``) each end, once
rerun, in the uninterrupted run's final checkpoint."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fault_injection import (
    STALLED,
    RecordedLoader,
    kill_after,
    kill_group,
    run_to_end,
    start,
    tail,
    train_cli,
)
from trainer_workspace import kill_after_first_checkpoint, same_tensors, variant

from l2l_train.checkpoint import load_checkpoint
from l2l_train.config import load_trainer_params
from l2l_train.loop import Run, run_training

TRAIN = {"epochs": 2, "steps_per_epoch": 4, "checkpoint_every_steps": 1, "num_workers": 1}
TOTAL_STEPS = 8
STEPS_PER_EPOCH = 4


def recorded_training(params: Path) -> tuple[object, list[tuple[str, str]]]:
    """run_training(params) with every batch the loop draws fingerprinted, in order."""
    seen: list[tuple[str, str]] = []
    loaders = Run.loaders

    def recording(self):
        loader_x, loader_u = loaders(self)
        return (
            RecordedLoader(loader_x, "x", seen),
            RecordedLoader(loader_u, "u", seen) if loader_u is not None else None,
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Run, "loaders", recording)
        summary = run_training(load_trainer_params(params))
    return summary, seen


@pytest.fixture(scope="module")
def straight(trainer_workspace, tmp_path_factory):
    """An uninterrupted run: its final checkpoint and the batches it drew."""
    folder = tmp_path_factory.mktemp("straight")
    summary, seen = recorded_training(variant(trainer_workspace, folder, train=TRAIN))
    assert summary.steps == TOTAL_STEPS and len(seen) == 2 * TOTAL_STEPS
    return load_checkpoint(folder / "models" / "latest.pt"), seen


def assert_same_run(a: dict, b: dict) -> None:
    """Two final checkpoints of the same run: weights, agent, step, visits, metric history
    (all but the wall-clock speeds)."""
    assert a["step"] == b["step"] == TOTAL_STEPS
    assert same_tensors(a["model"], b["model"])
    assert same_tensors(a["agent"]["actor"], b["agent"]["actor"])
    buffer_a, buffer_b = a["agent"]["buffer"], b["agent"]["buffer"]
    assert buffer_a.keys() == buffer_b.keys()
    for key, value in buffer_a.items():  # tensors and counters
        assert (
            torch.equal(value, buffer_b[key]) if torch.is_tensor(value) else value == buffer_b[key]
        )
    for key in ("step", "visits_x", "visits_u", "best_oiou", "best_epoch"):
        assert a["progress"][key] == b["progress"][key], key

    def learned(history):
        return [{k: v for k, v in h.items() if not k.startswith("speed/")} for h in history]

    assert learned(a["progress"]["history"]) == learned(b["progress"]["history"])


@pytest.mark.slow
def test_resume_after_sigkill_draws_the_same_samples_in_the_same_order(
    trainer_workspace, tmp_path, straight
):
    reference, straight_seen = straight
    params = variant(trainer_workspace, tmp_path, train=TRAIN)
    interrupted_at = kill_after_first_checkpoint(params)
    assert 0 < interrupted_at < TOTAL_STEPS
    resumed, seen = recorded_training(params)
    assert resumed.resumed_from_step == interrupted_at and resumed.steps == TOTAL_STEPS
    # Step k draws one labelled then one unlabelled batch: the resumed run's draws are the
    # uninterrupted run's from the interrupted step on.
    assert seen == straight_seen[2 * interrupted_at :]
    assert_same_run(load_checkpoint(tmp_path / "models" / "latest.pt"), reference)


@pytest.mark.slow
def test_a_kill_mid_checkpoint_write_keeps_the_previous_one_and_leaks_no_temp(
    trainer_workspace, tmp_path, straight
):
    reference, _ = straight
    params = variant(trainer_workspace, tmp_path, train=TRAIN)
    models = tmp_path / "models"
    temps = ".latest.pt.*.tmp"
    for stall_at in (3, 6):  # two kills mid-write, each resumed by the next run
        script = (
            "from fault_injection import train_with_stalled_checkpoint as t; "
            f"t({str(params)!r}, {stall_at})"
        )
        log = tmp_path / f"log{stall_at}.txt"
        # The parent's thread count: kernels round differently with another one, and the
        # resumed half runs in this process.
        threads = str(torch.get_num_threads())
        proc = start([sys.executable, "-c", script], log, OMP_NUM_THREADS=threads)
        deadline = time.monotonic() + 300
        while not (models / STALLED).exists() and proc.poll() is None:
            assert time.monotonic() < deadline, tail(log)
            time.sleep(0.01)
        assert proc.poll() is None, tail(log)
        kill_group(proc)
        (models / STALLED).unlink()
        half_written = list(models.glob(temps))
        assert len(half_written) == 1 and half_written[0].stat().st_size > 0
        # The kill hit the write of step stall_at: latest is the step before, whole.
        assert load_checkpoint(models / "latest.pt")["step"] == stall_at - 1
    # Resuming removes the killed writers' temp files at its first save.
    summary = run_training(load_trainer_params(params))
    assert summary.resumed_from_step == 5 and summary.steps == TOTAL_STEPS
    assert list(models.glob(temps)) == []
    assert_same_run(load_checkpoint(models / "latest.pt"), reference)


def _threads() -> dict[str, str]:
    """The subprocesses' thread count: this process's, which trained the reference (kernels
    round differently with another)."""
    return {"OMP_NUM_THREADS": str(torch.get_num_threads())}


def _timed_cli_run(params: Path, folder: Path) -> tuple[float, float]:
    """An uninterrupted ``l2l-train run``: when training starts (the metrics folder appears,
    just before the loaders; seconds after launch) and how long the whole run takes."""
    metrics = folder / "metrics"
    log = folder / "log.txt"
    proc = start(train_cli("run", "--params", str(params)), log, **_threads())
    launched, started = time.monotonic(), None
    while proc.poll() is None:
        if started is None and metrics.exists():
            started = time.monotonic() - launched
        time.sleep(0.005)
    duration = time.monotonic() - launched
    assert proc.returncode == 0, tail(log)
    assert started is not None, tail(log)
    return started, duration


def _where(models: Path) -> str:
    """What a kill left: the step of ``latest.pt`` and any half-written temp files."""
    latest = models / "latest.pt"
    step = load_checkpoint(latest)["step"] if latest.exists() else None
    temps = sorted(p.name.split(".")[1] for p in models.glob(".*.tmp"))
    return f"latest at step {step}" + (f", half-written {temps}" if temps else "")


def assert_best_is_the_best_epoch(models: Path, latest: dict) -> None:
    """``best.pt`` is the checkpoint of the end of the epoch ``latest`` calls the best."""
    best_epoch = latest["progress"]["best_epoch"]
    assert best_epoch > 0 and (models / "best.pt").exists()
    best = load_checkpoint(models / "best.pt")
    assert best["step"] == best_epoch * STEPS_PER_EPOCH
    assert best["progress"]["best_oiou"] == latest["progress"]["best_oiou"]


def kill_and_resume(workspace: Path, tmp_path: Path, reference: dict, kills: int, seed: int):
    """``kills`` trials, each in a fresh folder: ``l2l-train run`` SIGKILLed (with its
    DataLoader worker) after a random delay, then rerun to completion; its final checkpoint
    must equal the uninterrupted run's, ``best.pt`` must be the best epoch's and no temp
    file may be left. Delays come from a seeded RNG, one per equal slice of a window over
    the uninterrupted CLI run (stratified): a fifth of it before training starts (imports,
    data, model; counted from launch), the rest from the start of training to a tenth past
    the end of the run (counted from the metrics folder's appearance, so a slow start on a
    loaded machine does not shift where kills land): before the first checkpoint, mid-step,
    mid-checkpoint-write, or after the end. Returns a line per trial saying where the kill
    landed."""
    started, duration = _timed_cli_run(
        variant(workspace, tmp_path / "timed", train=TRAIN), tmp_path / "timed"
    )
    before, training = 0.25 * started, 1.1 * (duration - started)
    edges = np.linspace(-before, training, kills + 1)
    delays = np.random.default_rng(seed).uniform(edges[:-1], edges[1:])
    landings = []
    for trial, delay in enumerate(delays):
        folder = tmp_path / f"trial{trial}"
        params = variant(workspace, folder, train=TRAIN)
        models = folder / "models"
        argv = train_cli("run", "--params", str(params))
        log = folder / "log.txt"
        if delay < 0:
            killed = kill_after(argv, started + delay, log, **_threads())
        else:
            killed = kill_after(argv, delay, log, anchor=folder / "metrics", **_threads())
        landing = f"kill {trial} at {delay:+.2f}s from the start of training: " + (
            _where(models) if killed else "run had finished"
        )
        landings.append(landing)
        run_to_end(argv, log, **_threads())  # the rerun, to completion
        final = load_checkpoint(models / "latest.pt")
        assert_same_run(final, reference)
        assert_best_is_the_best_epoch(models, final)
        assert list(models.glob(".*.tmp")) == [], landing
    print(
        "\n".join(
            ["", f"reference CLI run: {duration:.2f}s, training from {started:.2f}s", *landings]
        )
    )
    return landings


@pytest.mark.slow
def test_three_random_kills_then_resumes_equal_an_uninterrupted_run(
    trainer_workspace, tmp_path, straight
):
    reference, _ = straight
    landings = kill_and_resume(trainer_workspace, tmp_path, reference, kills=3, seed=13)
    assert len(landings) == 3


@pytest.mark.long
def test_twenty_random_kills_then_resumes_equal_an_uninterrupted_run(
    trainer_workspace, tmp_path, straight
):
    reference, _ = straight
    landings = kill_and_resume(trainer_workspace, tmp_path, reference, kills=20, seed=2013)
    # Where kills land depends on the machine's load when the reference run was timed (a
    # slower reference spreads them past the end): require that some landed mid-training;
    # the landings are printed for the report.
    assert any("latest at step" in line for line in landings), landings


class _Killed(BaseException):
    """Stands for a SIGKILL at a chosen moment of an in-process run."""


@pytest.mark.slow
def test_a_kill_between_the_end_of_epoch_writes_keeps_best_consistent(
    trainer_workspace, tmp_path, straight
):
    """The end of the last epoch (a new best in this run) writes two checkpoints: a kill once
    the first is whole and before the second starts must still rerun to a ``best.pt`` (and
    ``best.json``) of the best epoch. (Written latest first, a finished latest named epoch 2
    the best while best.pt stayed epoch 1's, and the rerun had nothing left to do.)"""
    import l2l_train.loop as loop

    reference, _ = straight
    assert reference["progress"]["best_epoch"] == 2  # the last epoch writes best and latest
    params = variant(trainer_workspace, tmp_path, train=TRAIN)
    real_save, written = loop.save_checkpoint, []

    def save(path, state):
        if state["step"] == TOTAL_STEPS:
            written.append(Path(path).name)
            if len(written) == 2:
                raise _Killed
        real_save(path, state)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(_Killed):
        patch.setattr(loop, "save_checkpoint", save)
        run_training(load_trainer_params(params))
    assert sorted(written) == ["best.pt", "latest.pt"]
    run_training(load_trainer_params(params))
    models = tmp_path / "models"
    final = load_checkpoint(models / "latest.pt")
    assert_same_run(final, reference)
    assert_best_is_the_best_epoch(models, final)
    best_json = json.loads((tmp_path / "metrics" / "train" / "best.json").read_text())
    assert best_json["step"] == final["progress"]["best_epoch"] * STEPS_PER_EPOCH
