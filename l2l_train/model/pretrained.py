"""Strict, offline loading of pretrained weights: transformers models from local folders, and
the embedded ResNet's file from ``l2l-train pretrain``.

The project's machines have no network access, so every load is ``local_files_only``, and a
checkpoint that does not fit the architecture fails loudly instead of leaving randomly
initialised weights behind a warning (SAM2's ``_load_checkpoint`` habit).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

# What `l2l-train pretrain` writes (l2l_train.pretrain), and the model.visual fields that fix
# the ResNet's weight shapes: a file built with other values names the one that differs.
RESNET_FORMAT = "l2l-resnet-pretrained/1"
RESNET_ARCHITECTURE = ("embed_dim", "depths", "patch_size")


def local_model_folder(path: str | Path, what: str) -> Path:
    """``path`` as a folder holding a transformers ``config.json``; raises naming ``what``."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{what}: expected a local model folder with a config.json, got {str(path)!r}"
        )
    return folder


def _drop_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in record.getMessage()


def from_pretrained_strict(
    model_cls: Any, folder: Path, unused_prefixes: tuple[str, ...] = (), **kwargs: Any
) -> Any:
    """``model_cls.from_pretrained(folder, **kwargs)`` offline, raising on any weight mismatch.

    ``unused_prefixes`` names checkpoint keys this project drops on purpose (a classification
    head, a pooler): they may be present and unused; every other unexpected, missing or
    wrongly shaped key raises ``ValueError``.
    """
    # transformers logs a "LOAD REPORT" warning on every load that lists the keys dropped on
    # purpose; the check below reports every key that matters, by raising. (A filter rather
    # than a level: raising that logger's level switches on other warnings.)
    report_logger = logging.getLogger("transformers.modeling_utils")
    report_logger.addFilter(_drop_load_report)
    try:
        model, info = model_cls.from_pretrained(
            folder, local_files_only=True, output_loading_info=True, **kwargs
        )
    finally:
        report_logger.removeFilter(_drop_load_report)
    problems = {
        "missing": sorted(info["missing_keys"]),
        "unexpected": sorted(
            k for k in info["unexpected_keys"] if not k.startswith(unused_prefixes)
        ),
        "mismatched": sorted(str(k) for k in info["mismatched_keys"]),
    }
    if any(problems.values()):
        listed = "; ".join(f"{kind}: {keys[:5]}" for kind, keys in problems.items() if keys)
        raise ValueError(
            f"{folder}: weights do not match the {type(model).__name__} architecture ({listed})"
        )
    return model


def load_resnet_weights(encoder: Any, path: str | Path, cfg: Any) -> None:
    """Load a file written by :func:`l2l_train.pretrain.run_pretraining` into the ResNet
    ``encoder`` (strictly); raises naming ``model.visual.path`` when it is missing, of another
    format, or built with other architecture fields than ``cfg`` (a ``VisualConfig``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.visual.path: {str(path)!r} does not exist; the resnet loads a file written "
            "by `l2l-train pretrain`, or set it to null for random init"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != RESNET_FORMAT:
        raise ValueError(f"model.visual.path: {path} is not a {RESNET_FORMAT} file")
    for name in RESNET_ARCHITECTURE:
        built, wanted = state["visual"][name], getattr(cfg, name)
        if _as_tuple(built) != _as_tuple(wanted):
            raise ValueError(
                f"model.visual.{name}: {path} was pretrained with {built}, the params say "
                f"{wanted}; rerun `l2l-train pretrain` or use the same value"
            )
    encoder.load_state_dict(state["state_dict"])


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, list | tuple) else (value,)
