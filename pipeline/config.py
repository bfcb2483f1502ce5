"""Typed, frozen configuration loaded from ``params.yaml``.

Every section of ``params.yaml`` is a frozen dataclass. :func:`load_config` walks the YAML
mapping against the dataclass fields and fails at load, naming the dotted key, on unknown
keys, wrong types and out-of-range values::

    split.labeled_ratio: expected a float in (0, 1), got 'five'

Fields carry their constraints in ``metadata`` (see :func:`bounded` and :func:`choice`);
types come from the annotations (``int``, ``float``, ``str``, ``bool``, ``X | None``,
``tuple[X, ...]`` from YAML lists, ``Literal[...]`` and nested dataclasses).

The trainer (``l2l_train.config``) builds its own root dataclass from these sections plus
its own, through the same :func:`load_config`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A ``params.yaml`` value that does not fit the schema; the message names the key."""


def bounded(
    default: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Any:
    """A dataclass field whose value must lie in an interval (ends inclusive unless open)."""
    return field(default=default, metadata={"range": (lo, hi, lo_open, hi_open)})


def _describe_range(lo, hi, lo_open, hi_open) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"{'<' if hi_open else '<='} {hi:g}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if tp in (int, float, str, bool):
        return {int: "an int", float: "a float", str: "a string", bool: "a boolean"}[tp]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}s"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} keys"
    return str(tp)


def _coerce(value: Any, tp: Any, key: str, expected: str | None = None) -> Any:
    """Check ``value`` against annotation ``tp``; return it (lists become tuples).
    ``expected`` overrides the type's description in the error (to mention a range)."""
    origin = typing.get_origin(tp)
    fail = ConfigError(f"{key}: expected {expected or _type_name(tp)}, got {value!r}")
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise fail
    if tp is type(None):
        if value is None:
            return None
        raise fail
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise fail
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, list | tuple):
            raise fail
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise fail
        return build_section(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise fail
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail
    raise TypeError(f"{key}: unsupported annotation {tp!r} in the config schema")


def build_section(cls: type, raw: Mapping[str, Any], prefix: str = "") -> Any:
    """Build frozen dataclass ``cls`` from mapping ``raw``; missing keys take defaults."""
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    dotted = (lambda k: f"{prefix}.{k}") if prefix else (lambda k: k)
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(
            f"{dotted(unknown[0])}: unknown key (expected one of: {', '.join(names)})"
        )
    values = {}
    for name, value in raw.items():
        f, key = names[name], dotted(name)
        expected = _type_name(hints[name])
        if "range" in f.metadata:
            expected += " " + _describe_range(*f.metadata["range"])
        value = _coerce(value, hints[name], key, expected)
        if "range" in f.metadata and value is not None:
            lo, hi, lo_open, hi_open = f.metadata["range"]
            too_low = lo is not None and (value <= lo if lo_open else value < lo)
            too_high = hi is not None and (value >= hi if hi_open else value > hi)
            if too_low or too_high:
                raise ConfigError(f"{key}: expected {expected}, got {value!r}")
        values[name] = value
    try:
        section = cls(**values)
    except ConfigError as err:  # cross-field checks in __post_init__
        raise ConfigError(f"{prefix}: {err}" if prefix else str(err)) from None
    return section


def load_config(path: str | Path, root_cls: type, ignore_sections: tuple[str, ...] = ()) -> Any:
    """Load ``path`` into ``root_cls``; top-level sections in ``ignore_sections`` are skipped
    (they belong to another package's schema and are validated by its loader)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    with path.open() as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    raw = {k: v for k, v in raw.items() if k not in ignore_sections}
    return build_section(root_cls, raw)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists), for JSON, attributes and checkpoints."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_hash(cfg: Any) -> str:
    """Stable short hash of a config section (or a plain dict of resolved values)."""
    values = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    blob = json.dumps(values, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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
    verify_images: bool = True
    workers: int = bounded(2, 1, 256)  # threads decoding images in prepare
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

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
    """Qwen2.5-VL grounding (teacher ``qwen-sam2``), see ``pipeline.grounding.qwen``."""

    path: str | None = None  # local folder with the model and processor
    # Formatted with ``expression=``; literal JSON braces are doubled.
    prompt: str = (
        'Locate the object described by "{expression}" in the image. '
        "Answer with its bounding box and one point on it in JSON: "
        '[{{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y], "label": "{expression}"}}]'
    )
    batch_size: int = bounded(16, 1)  # pairs per generate call (left-padded)
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
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    device: str = "auto"  # auto | cpu | mps | cuda | cuda:N
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
    """SAM2 soft masks (teacher ``qwen-sam2``), see ``pipeline.segment.sam2``."""

    config: str = "configs/sam2.1/sam2.1_hiera_l.yaml"  # a config name inside the sam2 package
    checkpoint: str | None = None  # local .pt file; required for real runs
    # SAM2's square input side; its low-res logits are image_size / 4 on a side. Hiera tiles
    # its window position embedding over the stride-4 grid, so it must divide by 32.
    image_size: int = bounded(1024, 64, 4096)
    multimask_output: bool = False  # True: three masks per prompt, keep the best-scoring one
    use_points: bool = False  # also prompt with the MLLM's point_2d (box + point)
    device: str = "auto"  # auto | cpu | mps | cuda | cuda:N
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
    # evaluation splits (eval.prior: teacher, figures); a role or a dataset split each.
    splits: tuple[str, ...] = ("labeled", "unlabeled", "val", "test")
    size: int = bounded(128, 16, 1024)  # stored prior resolution (256 = SAM2 low-res logits)
    mllm: MLLMConfig = field(default_factory=MLLMConfig)
    sam2: SAM2Config = field(default_factory=SAM2Config)
    simulated: SimulatedTeacherConfig = field(default_factory=SimulatedTeacherConfig)
    imported: ImportedConfig = field(default_factory=ImportedConfig)
    store: StoreConfig = field(default_factory=StoreConfig)


# The trainer's top-level sections: validated by l2l_train.config, skipped by the pipeline.
TRAINER_SECTIONS = ("model", "train", "eval", "figures")


@dataclass(frozen=True)
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    priors: PriorsConfig = field(default_factory=PriorsConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def load_pipeline_config(path: str | Path = "params.yaml") -> PipelineConfig:
    return load_config(path, PipelineConfig, ignore_sections=TRAINER_SECTIONS)
