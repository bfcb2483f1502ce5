"""l2l_train.runtime: where bf16 autocast runs, and a training step under it on the CPU."""

from __future__ import annotations

import math

import pytest
import torch
from trainer_workspace import variant

from l2l_train import runtime
from l2l_train.config import TrainConfig, load_trainer_params
from l2l_train.data import split_eval_only
from l2l_train.loop import Run

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize("has_bf16", [True, False])
def test_amp_cpu_runs_bf16_only_on_a_cpu_that_computes_it(monkeypatch, has_bf16):
    monkeypatch.setattr(runtime, "cpu_computes_bf16", lambda: has_bf16)
    assert runtime.amp_enabled(TrainConfig(amp_cpu=True), CPU) is has_bf16
    assert runtime.amp_enabled(TrainConfig(amp_cpu=False), CPU) is False
    # On a GPU train.amp decides alone.
    assert runtime.amp_enabled(TrainConfig(amp=True, amp_cpu=False), CUDA) is True
    assert runtime.amp_enabled(TrainConfig(amp=False, amp_cpu=True), CUDA) is False


def test_autocast_casts_cpu_matmuls_to_bf16_only_when_on():
    x = torch.ones(2, 2)
    with runtime.autocast(CPU, True):
        assert (x @ x).dtype == torch.bfloat16
    with runtime.autocast(CPU, False):
        assert (x @ x).dtype == torch.float32


def test_a_cpu_step_under_bf16_autocast_gives_finite_fp32_losses(trainer_workspace, tmp_path):
    """The losses and the weak pass's q_hat stay fp32 when the model computes in bf16."""
    params = load_trainer_params(variant(trainer_workspace, tmp_path))
    run = Run(params, runtime.Runtime(CPU, amp=True), restart=True, restart_if_stale=False)
    loader_x, loader_u = run.loaders()
    train_u, _ = split_eval_only(next(iter(loader_u)))
    result = run.trainer.step(next(iter(loader_x)), train_u)
    assert all(math.isfinite(v) for v in result.losses.values())
    assert result.targets.q_hat.dtype == torch.float32
    grads = [p.grad for p in run.trainer.student.model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)
