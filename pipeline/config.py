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
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A ``params.yaml`` value that does not fit the schema; the message names the key."""


def bounded(default: Any, lo: float | None = None, hi: float | None = None, *,
            lo_open: bool = False, hi_open: bool = False) -> Any:
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
    """Stable short hash of a config section's resolved values."""
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class SyntheticConfig:
    """The embedded synthetic dataset (see ``pipeline.datasets.synthetic``)."""

    seed: int = 0
    image_size: int = bounded(128, 32, 2048)
    train_images: int = bounded(1000, 1)
    val_images: int = bounded(200, 1)
    test_images: int = bounded(200, 1)
    max_expressions: int = bounded(3, 1, 3)  # per target object
    dir: str = "data/raw/synthetic"  # where the generated images and scene tables go


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["synthetic", "refcoco", "refcoco+", "refcocog"] = "synthetic"
    root: str = "data/raw/refer"  # refer layout: <root>/<dataset>/refs(<split_by>).p + instances.json
    images: str = "data/raw/images"  # COCO train2014 image folder (refer datasets)
    split_by: Literal["unc", "umd", "google"] = "unc"
    # Decode every referenced image at prepare time so a truncated file is found (and
    # skipped, with its reason logged) once, not by every later stage.
    verify_images: bool = True
    workers: int = bounded(2, 1, 256)  # threads decoding images in prepare
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class SplitConfig:
    labeled_ratio: float = bounded(0.05, 0.0, 1.0, lo_open=True, hi_open=True)
    seed: int = 22


@dataclass(frozen=True)
class PathsConfig:
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


@dataclass(frozen=True)
class MLLMConfig:
    """Qwen2.5-VL grounding (teacher ``qwen-sam2``)."""

    path: str | None = None  # local folder with the model and processor
    prompt: str = (
        "Locate the object described by \"{expression}\" in the image. "
        "Answer with its bounding box and one point on it in JSON: "
        '[{{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y], "label": "{expression}"}}]'
    )
    batch_size: int = bounded(16, 1)
    max_new_tokens: int = bounded(64, 1)
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"


@dataclass(frozen=True)
class SAM2Config:
    """SAM2 soft masks (teacher ``qwen-sam2``)."""

    config: str = "configs/sam2.1/sam2.1_hiera_l.yaml"
    checkpoint: str | None = None
    image_size: int = bounded(1024, 64)
    multimask_output: bool = False
    use_points: bool = False


@dataclass(frozen=True)
class SimulatedTeacherConfig:
    """The embedded teacher for the synthetic dataset."""

    seed: int = 0


@dataclass(frozen=True)
class PriorsConfig:
    teacher: Literal["simulated", "qwen-sam2", "imported"] = "simulated"
    splits: tuple[str, ...] = ("unlabeled",)
    size: int = bounded(128, 16, 1024)  # stored prior resolution (256 = SAM2 low-res logits)
    mllm: MLLMConfig = field(default_factory=MLLMConfig)
    sam2: SAM2Config = field(default_factory=SAM2Config)
    simulated: SimulatedTeacherConfig = field(default_factory=SimulatedTeacherConfig)


# The trainer's top-level sections: validated by l2l_train.config, skipped by the pipeline.
TRAINER_SECTIONS = ("model", "train", "eval")


@dataclass(frozen=True)
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    priors: PriorsConfig = field(default_factory=PriorsConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def load_pipeline_config(path: str | Path = "params.yaml") -> PipelineConfig:
    return load_config(path, PipelineConfig, ignore_sections=TRAINER_SECTIONS)
