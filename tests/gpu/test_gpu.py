"""The CUDA paths CPU tests cannot reach: bf16 autocast training with a kill and a resume,
the SAM2 teacher under bf16, and two-process NCCL DDP. Skipped without CUDA (conftest.py);
run them with ``pytest -m gpu`` whenever a GPU machine is available."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from trainer_workspace import (
    ddp_train_worker,
    free_port,
    kill_after_first_checkpoint,
    same_tensors,
    variant,
)

from l2l_train.checkpoint import load_checkpoint
from l2l_train.config import load_trainer_params
from l2l_train.loop import run_training

pytestmark = pytest.mark.gpu

CUDA_TRAIN = {"device": "cuda", "amp": True, "num_workers": 1}


def test_bf16_training_is_finite_and_resumes_after_a_kill(trainer_workspace, tmp_path):
    train = {**CUDA_TRAIN, "epochs": 2, "steps_per_epoch": 4, "checkpoint_every_steps": 1}
    params = variant(trainer_workspace, tmp_path, train=train)
    latest = tmp_path / "models" / "latest.pt"
    interrupted_at = kill_after_first_checkpoint(params, timeout=120)
    assert 0 < interrupted_at < 8

    summary = run_training(load_trainer_params(params))
    assert summary.resumed_from_step == interrupted_at and summary.steps == 8
    ckpt = load_checkpoint(latest)
    assert ckpt["config"]["train"]["amp"] is True
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    assert np.isfinite(summary.last_metrics["train/loss"])
    assert 0 <= summary.best_val_oiou <= 1


def test_sam2_prior_under_bf16_follows_fp32():
    from tiny_models import tiny_sam2_prior

    from pipeline.teachers.sam2 import SAM2Prior

    fp32 = tiny_sam2_prior(size=64, device="cuda", dtype="float32")
    bf16 = SAM2Prior(fp32.predictor, fp32.cfg, 64, "cuda", "bfloat16")
    rgb = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 60, 40], [0, 0, 96, 64]], dtype=np.float32)
    masks = {}
    for name, prior in (("fp32", fp32), ("bf16", bf16)):
        prior.set_image(rgb)
        masks[name] = prior.predict(boxes)
    assert masks["bf16"].finite.all() and masks["bf16"].prob.dtype == np.float32
    assert np.abs(masks["bf16"].prob - masks["fp32"].prob).mean() < 0.05


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_process_nccl_ddp_keeps_models_and_agents_identical(trainer_workspace, tmp_path):
    params = variant(
        trainer_workspace, tmp_path, train={**CUDA_TRAIN, "steps_per_epoch": 3, "processes": 2}
    )
    mp.spawn(ddp_train_worker, args=(str(params), free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert rank0["steps"] == rank1["steps"] == 3
    assert same_tensors(rank0["model"], rank1["model"])
    assert same_tensors(rank0["actor"], rank1["actor"])
    assert torch.equal(rank0["buffer"]["state"], rank1["buffer"]["state"])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_torchrun_generate_puts_each_worker_on_its_own_gpu(tmp_path):
    """Under torchrun, cuda (and auto) resolve to cuda:$LOCAL_RANK in every worker, and two
    generate workers split the pairs and store what one process would."""
    import json
    import subprocess

    from fault_injection import (
        PLACEMENT_SCRIPT,
        build_generate_workspace,
        check_two_worker_store,
        cli_env,
        torchrun,
    )

    script = tmp_path / "placement.py"
    script.write_text(PLACEMENT_SCRIPT)
    subprocess.run(
        [*torchrun(2, str(script), str(tmp_path))], check=True, env=cli_env(), timeout=300
    )
    placed = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [p["device"] for p in placed] == ["cuda:0", "cuda:1"]
    assert all(p["dtype"] == "bfloat16" for p in placed)
    check_two_worker_store(build_generate_workspace(tmp_path / "workspace"), tmp_path)
