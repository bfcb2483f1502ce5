"""Typed, frozen configuration of the pipeline, loaded from ``params.yaml``.

Every section of ``params.yaml`` is a frozen dataclass, loaded strictly by
:mod:`pipeline.schema` (unknown keys, wrong types and out-of-range values fail at load,
naming the dotted key). :data:`PARAMS_SECTIONS` lists every top-level section of the file:
:class:`PipelineConfig` types the pipeline's, ``l2l_train.config.TrainerParams`` extends it
with the trainer's, and each loader skips only the listed sections its root does not type.

Runtime-only fields (batch sizes, workers, devices, output folders) are marked once, in the
dataclasses; :func:`runtime_only_keys` lists them as dotted keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.schema import (
    RUNTIME_ONLY,
    ConfigError,
    bounded,
    build_section,
    read_params_file,
    runtime_only,
)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists), for JSON, attributes and checkpoints."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_hash(cfg: Any) -> str:
    """Stable short hash of a config section (or a plain dict of resolved values)."""
    values = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    blob = json.dumps(values, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def runtime_only_keys(root_cls: type, prefix: str = "") -> frozenset[str]:
    """Dotted keys of the fields of config dataclass ``root_cls`` marked runtime-only
    (``"priors.mllm.batch_size"``, ``"train.log_every"``; a marked section is one key,
    ``"eval"``). What the teacher identity leaves out, and what a resumed run may change."""
    hints = typing.get_type_hints(root_cls)
    keys: set[str] = set()
    for f in dataclasses.fields(root_cls):
        key = prefix + f.name
        if f.metadata.get(RUNTIME_ONLY):
            keys.add(key)
        elif dataclasses.is_dataclass(hints[f.name]):
            keys |= runtime_only_keys(hints[f.name], key + ".")
    return frozenset(keys)


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class SyntheticConfig:
    """The embedded synthetic dataset (see ``pipeline.datasets.synthetic``)."""

    seed: int = bounded(0, 0)  # non-negative: it seeds numpy SeedSequences
    image_size: int = bounded(128, 32, 2048)
    train_images: int = bounded(1000, 1)
    val_images: int = bounded(200, 1)
    test_images: int = bounded(200, 1)
    max_expressions: int = bounded(3, 1, 3)  # per target object
    dir: str = "data/prepared/synthetic"  # generated images and scene table (under paths.prepared)
    min_objects: int = bounded(2, 2, 12)  # per scene
    max_objects: int = bounded(4, 2, 12)
    # Distinct shapes (and, separately, colours) one scene draws from: fewer kinds mean more
    # look-alikes, which is what spatial, ordinal and relational expressions need.
    max_kinds: int = bounded(6, 1, 6)
    # Radius of the circle with the same area as the shape, as a fraction of image_size;
    # every shape kind of one size class has the same area, so "small"/"large" compare
    # across kinds.
    small_radius: float = bounded(0.08, 0.01, 0.25)
    large_radius: float = bounded(0.14, 0.01, 0.25)
    size_jitter: float = bounded(0.08, 0.0, 0.3)  # relative radius jitter within a size class
    min_visible: float = bounded(0.5, 0.0, 1.0, hi_open=True)  # area fraction left by occluders
    # Spatial words need this gap (fraction of image_size) between the centres they compare,
    # so a flip or a drifting teacher box cannot make them ambiguous.
    spatial_margin: float = bounded(0.08, 0.0, 0.5)
    target_fraction: float = bounded(0.8, 0.0, 1.0, lo_open=True)  # of describable objects
    # Per-channel offset from the named colour; above ~20 orange can drift towards yellow.
    shade_jitter: int = bounded(15, 0, 60)
    background_amplitude: float = bounded(30.0, 0.0, 100.0)  # low-frequency texture, grey levels
    pixel_noise: float = bounded(6.0, 0.0, 50.0)  # per-pixel Gaussian std, grey levels

    def __post_init__(self) -> None:
        if self.min_objects > self.max_objects:
            raise ConfigError(
                f"min_objects ({self.min_objects}) must not exceed max_objects ({self.max_objects})"
            )
        if self.small_radius >= self.large_radius:
            raise ConfigError(
                f"small_radius ({self.small_radius}) must be below large_radius ({self.large_radius})"
            )


# The refer releases: which refs(<split_by>).p files each dataset is published with.
REFER_SPLITS_BY: dict[str, tuple[str, ...]] = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
}


# The evaluation splits each release defines besides train, in the order papers report them
# (RefCOCO and RefCOCO+ by UNC: testA has people as referents, testB other objects; RefCOCOg
# by UMD: val and test; by Google: val only). RefCOCO's Google split is not listed: its
# names are not checked at load, and `all` takes whatever its manifest holds.
EVAL_SPLITS: dict[tuple[str, str], tuple[str, ...]] = {
    ("refcoco", "unc"): ("val", "testA", "testB"),
    ("refcoco+", "unc"): ("val", "testA", "testB"),
    ("refcocog", "umd"): ("val", "test"),
    ("refcocog", "google"): ("val",),
}
SYNTHETIC_EVAL_SPLITS = ("val", "test")
ALL_SPLITS = "all"  # in eval.splits, priors.splits (or --split): every evaluation split


@dataclass(frozen=True)
class DataConfig:
    """Which dataset ``prepare`` reads: the embedded synthetic one or a refer-format release
    (see ``pipeline.datasets.refcoco`` for the layout under ``root`` and ``images``)."""

    dataset: Literal["synthetic", "refcoco", "refcoco+", "refcocog"] = "synthetic"
    root: str = (
        "data/raw/refer"  # refer layout: <root>/<dataset>/refs(<split_by>).p + instances.json
    )
    images: str = "data/raw/images"  # COCO train2014 image folder (refer datasets)
    split_by: Literal["unc", "umd", "google"] = "unc"
    # Decode every referenced image at prepare time so a truncated file is found (and
    # skipped, with its reason logged) once, not by every later stage.
    verify_images: bool = runtime_only(True)
    workers: int = bounded(2, 1, 256, runtime_only=True)  # threads decoding images in prepare
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    @property
    def eval_splits(self) -> tuple[str, ...] | None:
        """The evaluation splits this release defines (:data:`EVAL_SPLITS`), None where the
        table does not know it."""
        if self.dataset == "synthetic":
            return SYNTHETIC_EVAL_SPLITS
        return EVAL_SPLITS.get((self.dataset, self.split_by))

    def __post_init__(self) -> None:
        published = REFER_SPLITS_BY.get(self.dataset)
        if published is not None and self.split_by not in published:
            raise ConfigError(
                f"split_by {self.split_by!r} does not fit dataset {self.dataset!r} "
                f"(published as refs({'|'.join(published)}).p)"
            )


@dataclass(frozen=True)
class SplitConfig:
    labeled_ratio: float = bounded(0.05, 0.0, 1.0, lo_open=True, hi_open=True)
    seed: int = 22
    # Train images in neither role, scored as split `held_out`: data to tune on that is not
    # val or test. Drawn after the labelled images, which it leaves as they are.
    holdout_ratio: float = bounded(0.0, 0.0, 1.0, hi_open=True)

    def __post_init__(self) -> None:
        if self.labeled_ratio + self.holdout_ratio >= 1.0:
            raise ConfigError(
                f"labeled_ratio ({self.labeled_ratio:g}) + holdout_ratio "
                f"({self.holdout_ratio:g}) must stay below 1: some images must be unlabelled"
            )


@dataclass(frozen=True)
class PathsConfig:
    prepared: str = (
        "data/prepared"  # what prepare derives from the raw data (report, synthetic set)
    )
    manifests: str = "data/manifests"
    priors: str = "data/priors"
    models: str = "data/models"
    metrics: str = "data/metrics"

    @property
    def samples(self) -> Path:
        return Path(self.manifests) / "samples.parquet"

    @property
    def partition(self) -> Path:
        return Path(self.manifests) / "partition.parquet"


# Where a teacher model runs: "auto" picks a CUDA device when there is one, else the CPU.
_DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _check_device(device: str) -> None:
    if not _DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"device: expected auto, cpu, mps, cuda or cuda:N, got {device!r}")


def resolve_placement(device: str, dtype: str) -> tuple[str, str]:
    """Resolve a teacher's ``device`` and ``dtype`` settings ("auto" allowed in both); plain
    ``cuda`` (or auto on a GPU machine) means ``cuda:$LOCAL_RANK``, so torchrun's workers each
    take their own GPU.

    Returns:
        (torch device string, torch dtype name): "auto" dtype is bfloat16 on CUDA, where the
        teacher checkpoints are meant to run, and float32 elsewhere (CPU bf16 matmuls are slow
        and lose precision for no memory gain that matters at CPU batch sizes).
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        # One worker per GPU under torchrun: plain "cuda" would put every worker on GPU 0.
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    if dtype == "auto":
        dtype = "bfloat16" if torch.device(device).type == "cuda" else "float32"
    return device, dtype


@dataclass(frozen=True)
class MLLMConfig:
    """Qwen2.5-VL grounding (teacher ``qwen-sam2``), see ``pipeline.teachers.qwen``."""

    path: str | None = None  # local folder with the model and processor
    # Formatted with ``expression=``; literal JSON braces are doubled.
    prompt: str = (
        'Locate the object described by "{expression}" in the image. '
        "Answer with its bounding box and one point on it in JSON: "
        '[{{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y], "label": "{expression}"}}]'
    )
    batch_size: int = bounded(16, 1, runtime_only=True)  # pairs per generate call (left-padded)
    # The prompt asks for the expression back inside the JSON, and Qwen tokenises digits one
    # by one: ~55 tokens for a one-word expression, ~75 for 21 words. 64 cut answers off.
    max_new_tokens: int = bounded(128, 1)
    # Benchmarks set this so random-weight models answer at full length instead of stopping
    # at the first end-of-turn token; 0 for real runs.
    min_new_tokens: int = bounded(0, 0)
    # Pixel budget of the processor's resize (null: the model folder's own setting). The
    # answer's coordinates are in that resized frame; ``image_grid_thw`` says which it was.
    min_pixels: int | None = bounded(None, 28 * 28)
    max_pixels: int | None = bounded(None, 28 * 28)
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = runtime_only("sdpa")
    # Not dtype: bf16 and fp32 give different masks. The setting as written, so "auto" names
    # one teacher identity on every machine.
    device: str = runtime_only("auto")  # auto | cpu | mps | cuda | cuda:N
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"

    def __post_init__(self) -> None:
        _check_device(self.device)
        if "{expression}" not in self.prompt:
            raise ConfigError(
                f"prompt: expected a '{{expression}}' placeholder, got {self.prompt!r}"
            )
        try:
            self.prompt.format(expression="")
        except (IndexError, KeyError, ValueError) as err:
            raise ConfigError(
                f"prompt: not a format string with only {{expression}} ({err}); "
                f"double literal braces as {{{{ }}}}"
            ) from None
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(
                f"min_new_tokens ({self.min_new_tokens}) must not exceed "
                f"max_new_tokens ({self.max_new_tokens})"
            )
        if None not in (self.min_pixels, self.max_pixels) and self.min_pixels > self.max_pixels:
            raise ConfigError(
                f"min_pixels ({self.min_pixels}) must not exceed max_pixels ({self.max_pixels})"
            )


@dataclass(frozen=True)
class SAM2Config:
    """SAM2 soft masks (teacher ``qwen-sam2``), see ``pipeline.teachers.sam2``."""

    config: str = "configs/sam2.1/sam2.1_hiera_l.yaml"  # a config name inside the sam2 package
    checkpoint: str | None = None  # local .pt file; required for real runs
    # SAM2's square input side; its low-res logits are image_size / 4 on a side. Hiera tiles
    # its window position embedding over the stride-4 grid, so it must divide by 32.
    image_size: int = bounded(1024, 64, 4096)
    multimask_output: bool = False  # True: three masks per prompt, keep the best-scoring one
    use_points: bool = False  # also prompt with the MLLM's point_2d (box + point)
    device: str = runtime_only("auto")  # auto | cpu | mps | cuda | cuda:N
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # autocast dtype on CUDA

    def __post_init__(self) -> None:
        _check_device(self.device)
        if self.image_size % 32:
            raise ConfigError(f"image_size: expected a multiple of 32, got {self.image_size}")


@dataclass(frozen=True)
class SimulatedTeacherConfig:
    """The embedded teacher for the synthetic dataset."""

    seed: int = 0


@dataclass(frozen=True)
class StoreConfig:
    """Layout of the Zarr prior store's parts."""

    shard_rows: int = bounded(128, 1, 4096)  # rows per shard file (and per durable flush)
    clevel: int = bounded(5, 0, 9)  # Blosc-zstd level


@dataclass(frozen=True)
class ImportedConfig:
    """Priors made by another referring segmentor (``l2l-priors import-priors``)."""

    name: str = "external"  # names the source (e.g. CARIS); part of the priors' keys


@dataclass(frozen=True)
class PriorsConfig:
    teacher: Literal["simulated", "qwen-sam2", "imported"] = "simulated"
    # Labelled pairs too (SESM learns from ground truth how far to trust a prior) and the
    # evaluation splits (eval.prior: teacher, figures); a role, a dataset split or all (every
    # evaluation split of the dataset) each.
    splits: tuple[str, ...] = ("labeled", "unlabeled", ALL_SPLITS)
    size: int = bounded(128, 16, 1024)  # stored prior resolution (256 = SAM2 low-res logits)
    mllm: MLLMConfig = field(default_factory=MLLMConfig)
    sam2: SAM2Config = field(default_factory=SAM2Config)
    simulated: SimulatedTeacherConfig = field(default_factory=SimulatedTeacherConfig)
    imported: ImportedConfig = field(default_factory=ImportedConfig)
    store: StoreConfig = field(default_factory=StoreConfig)


# Every top-level section of params.yaml, in file order, and the package whose root config
# types it: PipelineConfig the pipeline's, l2l_train.config.TrainerParams all of them (it
# checks that at import). The pipeline cannot import the trainer, so the names live here.
PARAMS_SECTIONS: dict[str, str] = {
    "data": "pipeline",
    "split": "pipeline",
    "priors": "pipeline",
    "paths": "pipeline",
    "model": "l2l_train",
    "train": "l2l_train",
    "eval": "l2l_train",
    "figures": "l2l_train",
    "pretrain": "l2l_train",
}


@dataclass(frozen=True)
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    priors: PriorsConfig = field(default_factory=PriorsConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def build_params(raw: Mapping[str, Any], root_cls: type) -> Any:
    """``raw``, a parsed params file, into ``root_cls``, a root config typing some of
    :data:`PARAMS_SECTIONS`: a section outside that table is an unknown key; a listed one the
    root does not type is skipped (its own package's loader validates it)."""
    typed = {f.name for f in dataclasses.fields(root_cls)}
    if not typed <= PARAMS_SECTIONS.keys():
        raise TypeError(
            f"{root_cls.__name__} types sections {sorted(typed - PARAMS_SECTIONS.keys())} "
            "that pipeline.config.PARAMS_SECTIONS does not list"
        )
    others = PARAMS_SECTIONS.keys() - typed
    return build_section(root_cls, {k: v for k, v in raw.items() if k not in others})


def load_params(path: str | Path, root_cls: type) -> Any:
    """The params file at ``path`` loaded into ``root_cls`` (see :func:`build_params`)."""
    return build_params(read_params_file(path), root_cls)


def load_pipeline_config(path: str | Path = "params.yaml") -> PipelineConfig:
    return load_params(path, PipelineConfig)
