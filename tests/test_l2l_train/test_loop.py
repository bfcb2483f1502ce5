"""The training loop: method switches, optimisation schedule, epoch metrics, the four methods
and the three stronger MLLM baselines end to end, resume after SIGKILL, config mismatches,
and 2-process gloo DDP."""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from trainer_workspace import (
    ddp_train_worker,
    free_port,
    kill_after_first_checkpoint,
    params_dict,
    same_tensors,
    variant,
)

from l2l_train.checkpoint import ConfigMismatchError, check_resumable, load_checkpoint
from l2l_train.config import TrainConfig, load_trainer_params
from l2l_train.data import split_eval_only
from l2l_train.loop import Run, run_training, steps_per_epoch
from l2l_train.losses import IGNORE_INDEX
from l2l_train.metrics import MeanAccumulator
from l2l_train.runtime import Runtime
from l2l_train.targets import conflict_pixels, plan_method
from l2l_train.trainer import (
    build_optimization,
    lr_factor,
    param_groups,
    poly_factor,
    segmentor_param_groups,
    warmup_factor,
)
from pipeline.config import load_pipeline_config
from pipeline.datasets.manifest import read_pairs
from pipeline.generate import generate

# ----------------------------------------------------------------------------- pure pieces


def test_poly_factor_hand_values():
    assert poly_factor(0, 100, 0.9) == 1.0
    assert poly_factor(50, 100, 0.9) == pytest.approx(0.5**0.9)
    assert poly_factor(100, 100, 0.9) == 0.0
    assert poly_factor(120, 100, 0.9) == 0.0


def test_warmup_factor_hand_values():
    assert [warmup_factor(step, 4) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_lr_factor_hand_values():
    cfg = TrainConfig(lr_warmup_steps=2, poly_power=1.0)
    assert [lr_factor(step, 10, cfg) for step in range(4)] == pytest.approx([0.5, 0.9, 0.8, 0.7])
    assert lr_factor(5, 10, TrainConfig(poly_power=0.9)) == poly_factor(5, 10, 0.9)


def test_the_schedule_is_the_warmup_times_the_poly_decay():
    model = torch.nn.Module()
    model.visual = torch.nn.Linear(2, 2)
    model.head = torch.nn.Linear(2, 1)
    cfg = TrainConfig(lr=1.0, encoder_lr_scale=0.5, lr_warmup_steps=2, poly_power=1.0)
    optimizer, schedule = build_optimization(model, cfg, total_steps=10)
    rates = []
    for _ in range(4):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    # step 0: 1/2 * 1; step 1: 1 * 0.9; step 2: 0.8; step 3: 0.7 (encoder at half)
    expected = [0.5, 0.9, 0.8, 0.7]
    for got, factor in zip(rates, expected, strict=True):
        assert got == pytest.approx([0.5 * factor] * 2 + [factor] * 2)


def test_param_groups_skip_decay_on_vectors():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    model[1].requires_grad_(False)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [(2, 3)]
    assert [p.shape for p in no_decay["params"]] == [
        (2,)
    ]  # the linear bias; the frozen norm is out


def test_the_visual_encoder_learns_at_its_scaled_rate():
    model = torch.nn.Module()
    model.visual = torch.nn.Linear(3, 2)
    model.text = torch.nn.Linear(4, 4).requires_grad_(False)
    model.head = torch.nn.Conv2d(2, 1, 1)
    groups = segmentor_param_groups(model, TrainConfig(lr=0.5, encoder_lr_scale=0.25))
    by_lr = {
        (g["lr"], g["weight_decay"]): sorted(tuple(p.shape) for p in g["params"]) for g in groups
    }
    assert by_lr == {
        (0.125, 0.01): [(2, 3)],
        (0.125, 0.0): [(2,)],
        (0.5, 0.01): [(1, 2, 1, 1)],
        (0.5, 0.0): [(1,)],
    }


def test_steps_per_epoch_is_one_pass_over_the_driving_refs():
    semi, supervised = plan_method(TrainConfig()), plan_method(TrainConfig(method="supervised"))
    cfg = TrainConfig(batch_size_x=4, batch_size_u=8, steps_per_epoch=None)
    assert steps_per_epoch(cfg, semi, refs_x=10, refs_u=100, world=1) == 13
    assert steps_per_epoch(cfg, semi, refs_x=10, refs_u=100, world=2) == 7
    assert steps_per_epoch(cfg, supervised, refs_x=10, refs_u=100, world=1) == 3
    fixed = TrainConfig(steps_per_epoch=5)
    assert steps_per_epoch(fixed, semi, refs_x=10, refs_u=100, world=1) == 5


def test_sums_means_hand_values():
    sums = MeanAccumulator(["a", "b", "c"], torch.device("cpu"))
    sums.add("a", 3.0)
    sums.add("a", 1.0)
    sums.add("b", torch.tensor(6.0), 4)
    assert sums.compute() == {"a": 2.0, "b": 1.5}  # c never added: no mean


# ----------------------------------------------------------------------------- one step


def test_step_refuses_unlabelled_ground_truth_and_makes_three_way_labels(
    trainer_workspace, tmp_path
):
    params = load_trainer_params(variant(trainer_workspace, tmp_path, train={"rple": False}))
    run = Run(params, Runtime(torch.device("cpu")), restart=True, restart_if_stale=False)
    loader_x, loader_u = run.loaders()
    batch_x, batch_u = next(iter(loader_x)), next(iter(loader_u))
    with pytest.raises(ValueError, match="mask_u_eval"):
        run.trainer.step(batch_x, batch_u)
    train_u, eval_u = split_eval_only(batch_u)
    result = run.trainer.step(batch_x, train_u)
    assert math.isfinite(result.losses["loss"]) and "unsup_dice" in result.losses
    targets = result.targets
    assert set(targets.pseudo.unique().tolist()) <= {0, 1, IGNORE_INDEX}
    # Static thresholds (rple off): every pixel at or above 0.7 of q_hat is foreground,
    # at or below 0.3 background, outside the boundary band.
    q_hat = targets.q_hat[:, 0]
    assert (targets.pseudo[q_hat > 0.3] != 0).all() and (targets.pseudo[q_hat < 0.7] != 1).all()
    assert torch.equal(targets.thresholds, torch.tensor([[0.7, 0.3]] * 2))
    assert eval_u["mask_u_eval"].shape == targets.pseudo.shape


@pytest.mark.parametrize("sees_prior", [False, True])
def test_weak_pass_reads_the_teacher_prior_only_when_configured(
    trainer_workspace, tmp_path, sees_prior
):
    params = load_trainer_params(
        variant(trainer_workspace, tmp_path, train={"weak_sees_prior": sees_prior})
    )
    run = Run(params, Runtime(torch.device("cpu")), restart=True, restart_if_stale=False)
    train_u, _ = split_eval_only(next(iter(run.loaders()[1])))
    seen = []
    student = run.trainer.student
    hook = student.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("prior")), with_kwargs=True
    )
    try:
        student.weak_targets(train_u)
    finally:
        hook.remove()
    assert len(seen) == 1
    if sees_prior:
        assert torch.equal(seen[0], train_u["prior_u"])
    else:
        assert seen[0] is None


# ----------------------------------------------------------------------------- methods


@pytest.mark.slow
@pytest.mark.parametrize("method", ["supervised", "fixmatch", "fixed_fusion", "l2l"])
def test_each_method_trains_and_writes_metrics(trainer_workspace, tmp_path, method, caplog):
    train = {"method": method, "log_every": 1}
    params = load_trainer_params(variant(trainer_workspace, tmp_path, train=train))
    caplog.set_level(logging.INFO, logger="l2l_train.loop")
    summary = run_training(params)
    step_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(step_lines) == 2
    # RPLE's thresholds in every step line of the runs that have an agent, as they move
    assert all((" tau " in line) == (method == "l2l") for line in step_lines), step_lines
    assert summary.steps == 2 and summary.best_epoch == 1
    assert 0 <= summary.best_val_oiou <= 1
    metrics = summary.last_metrics
    assert math.isfinite(metrics["train/loss"]) and "val/prec@0.5" in metrics
    for name in ("latest.pt", "best.pt"):
        assert (tmp_path / "models" / name).is_file()
    live = tmp_path / "metrics" / "train"
    assert (live / "metrics.json").is_file() and (live / "best.json").is_file()
    assert (live / "plots" / "metrics" / "val" / "oIoU.tsv").is_file()
    semi = method != "supervised"
    assert ("u/pseudo_accuracy" in metrics) == semi
    assert ("train/unsup" in metrics) == semi
    # Only the methods that read the teacher see (and measure) its raw prior.
    assert ("u/prior_raw_mIoU" in metrics) == (method in ("fixed_fusion", "l2l"))
    ckpt = load_checkpoint(tmp_path / "models" / "latest.pt")
    if method == "l2l":
        # One transition per unlabelled sample and step; tau in range, ordered.
        assert ckpt["agent"]["buffer"]["state"].shape == (2 * 2, 6)
        assert 0.5 <= metrics["u/tau_fg"] <= 0.95 and 0.05 <= metrics["u/tau_bg"] <= 0.5
    else:
        assert ckpt["agent"] is None
    if method in ("fixmatch", "fixed_fusion"):
        assert metrics["u/tau_fg"] == pytest.approx(0.7) and metrics["u/tau_bg"] == pytest.approx(
            0.3
        )


@pytest.mark.slow
def test_spm_warm_up_trains_on_the_teacher_prior_alone(trainer_workspace, tmp_path):
    # Warm-up over both steps: q_hat is the raw prior on every pair, so its IoU is the raw's.
    train = {"method": "l2l", "spm_warmup_steps": 2}
    metrics = run_training(load_trainer_params(variant(trainer_workspace, tmp_path, train=train)))
    metrics = metrics.last_metrics
    assert metrics["u/prior_fused_oIoU"] == metrics["u/prior_raw_oIoU"]
    assert metrics["u/prior_fused_mIoU"] == metrics["u/prior_raw_mIoU"]


@pytest.fixture(scope="module")
def labeled_priors(trainer_workspace, tmp_path_factory) -> Path:
    """A copy of the workspace's prior store with the labelled pairs' priors added, which
    tuned_fusion's held-out pairs need (the workspace generates unlabeled and val only)."""
    root = tmp_path_factory.mktemp("labeled_priors")
    priors = root / "priors"
    shutil.copytree(params_dict(trainer_workspace)["paths"]["priors"], priors)
    params = variant(trainer_workspace, root, paths={"priors": str(priors)})
    generate(load_pipeline_config(params), "labeled")
    return priors


@pytest.mark.slow
def test_tuned_fusion_holds_labelled_images_out_and_chooses_alpha_on_them(
    trainer_workspace, labeled_priors, tmp_path
):
    params = load_trainer_params(
        variant(
            trainer_workspace,
            tmp_path,
            train={"method": "tuned_fusion", "tuned_fusion": {"holdout": 0.25, "grid": 5}},
            paths={"priors": str(labeled_priors)},
        )
    )
    run = Run(params, Runtime(torch.device("cpu")), restart=True, restart_if_stale=False)
    labeled = read_pairs(params.paths, "labeled")
    train_ids, held_ids = set(run.data_x.source.sample_id), set(run.data_held.source.sample_id)
    # 4 labelled images, one held out whole; the two parts make up the labelled pairs.
    assert train_ids.isdisjoint(held_ids) and train_ids | held_ids == set(
        labeled["sample_id"].to_pylist()
    )
    images = dict(
        zip(labeled["sample_id"].to_pylist(), labeled["image_id"].to_pylist(), strict=True)
    )
    assert len({images[s] for s in held_ids}) == 1
    assert run.data_held.source.prior_coverage == 1.0
    summary = run.run()
    alpha = summary.last_metrics["u/fusion_alpha"]
    assert alpha in (0.0, 0.25, 0.5, 0.75, 1.0)
    ckpt = load_checkpoint(tmp_path / "models" / "latest.pt")
    assert ckpt["fusion_alpha"] == alpha and ckpt["agent"] is None and ckpt["catm"] is None
    assert "u/prior_raw_oIoU" in summary.last_metrics


@pytest.mark.slow
def test_agreement_filter_ignores_every_pixel_of_the_pairs_it_drops(trainer_workspace, tmp_path):
    # A loose filter, so an untrained model keeps some pairs and drops others.
    agreement = {"threshold": 0.0, "confidence": 0.0}
    params = load_trainer_params(
        variant(
            trainer_workspace,
            tmp_path,
            train={"method": "agreement_filter", "agreement": agreement},
        )
    )
    run = Run(params, Runtime(torch.device("cpu")), restart=True, restart_if_stale=False)
    loader_x, loader_u = run.loaders()
    train_u, _ = split_eval_only(next(iter(loader_u)))
    targets = run.trainer.step(next(iter(loader_x)), train_u).targets
    # Kept = prior present and A > 0 here; the dropped pairs carry no label at all.
    assert torch.equal(targets.kept, targets.prior_present & (targets.agreement > 0))
    assert (targets.pseudo[~targets.kept] == IGNORE_INDEX).all()
    summary = run_training(params, restart=True)
    assert summary.steps == 2 and 0.0 <= summary.last_metrics["u/kept"] <= 1.0


def test_ignore_conflicts_ignores_exactly_the_conflicting_pixels(
    trainer_workspace, tmp_path, monkeypatch
):
    params = load_trainer_params(
        variant(trainer_workspace, tmp_path, train={"method": "fixed_fusion"})
    )
    run = Run(params, Runtime(torch.device("cpu")), restart=True, restart_if_stale=False)
    batch_u, _ = split_eval_only(next(iter(run.loaders()[1])))
    student = run.trainer.student
    # A weak pass that mildly contradicts the prior on the left half of every image.
    q = batch_u["prior_u"]
    left = torch.arange(q.shape[-1]) < q.shape[-1] // 2
    p_w = torch.where(left, torch.where(q >= 0.5, 0.45, 0.55), q)
    monkeypatch.setattr(student, "weak_probability", lambda batch: p_w)
    labelled = student.weak_targets(batch_u, explore=False).targets.pseudo
    student.cfg = dataclasses.replace(student.cfg, ignore_conflicts=True)
    filtered = student.weak_targets(batch_u, explore=False).targets.pseudo
    conflicts = conflict_pixels(p_w, q, batch_u["prior_present_u"])
    # Linear fusion labels the conflicts where the prior is sure (q >= 0.95 or q <= 0.05).
    assert (labelled[conflicts] != IGNORE_INDEX).any()
    assert (filtered[conflicts] == IGNORE_INDEX).all()
    assert torch.equal(filtered[~conflicts], labelled[~conflicts])


@pytest.mark.slow
def test_catm_trains_with_class_wise_thresholds(trainer_workspace, tmp_path):
    params = load_trainer_params(
        variant(trainer_workspace, tmp_path, train={"method": "catm", "catm": {"momentum": 0.5}})
    )
    summary = run_training(params)
    metrics = summary.last_metrics
    assert summary.steps == 2 and "u/kept" not in metrics
    # Updated from 0.5 twice: the thresholds moved off the start and stay on their sides.
    assert metrics["u/tau_fg"] >= 0.5 >= metrics["u/tau_bg"]
    ckpt = load_checkpoint(tmp_path / "models" / "latest.pt")
    assert ckpt["catm"]["confidence"] != 0.5 and ckpt["agent"] is None


# ----------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_sigkill_then_resume_reaches_the_uninterrupted_state(trainer_workspace, tmp_path):
    train = {"epochs": 2, "steps_per_epoch": 4, "checkpoint_every_steps": 1, "num_workers": 1}
    killed = variant(trainer_workspace, tmp_path / "killed", train=train)
    latest = tmp_path / "killed" / "models" / "latest.pt"
    interrupted_at = kill_after_first_checkpoint(killed)
    assert 0 < interrupted_at < 8

    resumed = run_training(load_trainer_params(killed))
    assert resumed.resumed_from_step == interrupted_at and resumed.steps == 8

    straight = run_training(
        load_trainer_params(variant(trainer_workspace, tmp_path / "straight", train=train))
    )
    assert straight.steps == 8
    a = load_checkpoint(latest)
    b = load_checkpoint(tmp_path / "straight" / "models" / "latest.pt")
    assert a["step"] == b["step"] == 8
    assert same_tensors(a["model"], b["model"])
    assert same_tensors(a["agent"]["actor"], b["agent"]["actor"])
    assert torch.equal(a["agent"]["buffer"]["reward"], b["agent"]["buffer"]["reward"])


@pytest.mark.slow
def test_config_mismatch_names_keys_and_restart_trains_anew(trainer_workspace, tmp_path):
    first = load_trainer_params(variant(trainer_workspace, tmp_path))
    run_training(first)
    changed = load_trainer_params(
        variant(trainer_workspace, tmp_path, train={"lr": 5e-4}, model={"decoder_dim": 8})
    )
    with pytest.raises(ConfigMismatchError, match=r"model\.decoder_dim, train\.lr"):
        run_training(changed)
    latest = tmp_path / "models" / "latest.pt"
    with pytest.raises(ConfigMismatchError, match=r"model\.decoder_dim, train\.lr"):
        check_resumable(latest, changed)  # the pre-flight of a multi-rank run: the same check
    # Runtime-only keys do not block a resume: the run is complete and stays so.
    runtime = load_trainer_params(
        variant(trainer_workspace, tmp_path, train={"log_every": 7}, eval={"batch_size": 3})
    )
    check_resumable(latest, runtime)
    assert run_training(runtime).resumed_from_step == 2
    fresh = run_training(changed, restart=True)
    assert fresh.resumed_from_step is None and fresh.steps == 2
    assert load_checkpoint(tmp_path / "models" / "latest.pt")["config"]["train"]["lr"] == 5e-4

    # DVC's mode: other params or a finished run start over; nothing raises.
    assert run_training(first, restart_if_stale=True).resumed_from_step is None
    assert run_training(first, restart_if_stale=True).resumed_from_step is None  # finished
    assert (
        load_checkpoint(tmp_path / "models" / "latest.pt")["config"]["train"]["lr"]
        == first.train.lr
    )


# ----------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_two_process_gloo_ddp_keeps_models_and_agents_identical(trainer_workspace, tmp_path):
    params = variant(trainer_workspace, tmp_path, train={"steps_per_epoch": 3, "processes": 2})
    mp.spawn(ddp_train_worker, args=(str(params), free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert rank0["steps"] == rank1["steps"] == 3
    assert same_tensors(rank0["model"], rank1["model"])
    assert same_tensors(rank0["actor"], rank1["actor"])
    # Both agents hold every rank's transitions: 3 steps x 2 ranks x 2 samples.
    assert rank0["buffer"]["state"].shape == (12, 6)
    assert torch.equal(rank0["buffer"]["state"], rank1["buffer"]["state"])
    assert (tmp_path / "models" / "latest.pt").is_file()
