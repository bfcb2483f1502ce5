"""Teachers: what turns image–expression pairs into soft prior masks.

A teacher has ``predict(pairs, image_root) -> list[TeacherOutput]`` (one output per pair, in
order; pairs of one image are adjacent) and is built by :func:`build_teacher`. What a prior
depends on — the teacher and the parts of its config that change its output — is
:func:`teacher_identity`; its hash goes into every prior's key, so a new teacher config
computes new priors instead of reusing stale ones, and runtime-only settings (batch size,
attention kernel) reuse them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.config import PipelineConfig, PriorsConfig, config_hash, to_dict
from pipeline.store import PriorStatus

# Settings that change how fast a teacher runs, not what it answers. Not dtype: bf16 and
# fp32 give different masks (the setting as written, so "auto" names one identity on every
# machine and the trainer finds the priors wherever they were made).
RUNTIME_ONLY = frozenset({"batch_size", "attn_implementation", "device"})
# Bump when the simulation's behaviour changes, so old simulated priors are not reused.
SIMULATION_VERSION = 1


@dataclass(frozen=True)
class TeacherOutput:
    """One pair's prior. ``prob`` (S, S) float32 in the square-stretched image frame, or None
    when the teacher produced no mask; ``box`` (4,) XYXY and ``point`` (2,) XY in original
    image pixels, NaN where absent; ``raw_text`` the MLLM's answer, if there was one."""

    prob: np.ndarray | None
    box: np.ndarray
    point: np.ndarray
    status: PriorStatus
    raw_text: str | None = None


NO_BOX = np.full(4, np.nan, np.float32)
NO_POINT = np.full(2, np.nan, np.float32)


class Teacher(Protocol):
    def predict(self, pairs: list[dict[str, Any]], image_root: Path) -> list[TeacherOutput]: ...


def teacher_identity(cfg: PriorsConfig) -> dict[str, Any]:
    """The resolved teacher config that a prior's value depends on."""
    identity: dict[str, Any] = {"teacher": cfg.teacher, "size": cfg.size}
    if cfg.teacher == "simulated":
        identity |= {"simulated": to_dict(cfg.simulated), "version": SIMULATION_VERSION}
    elif cfg.teacher == "qwen-sam2":
        for name, section in (("mllm", cfg.mllm), ("sam2", cfg.sam2)):
            identity[name] = {k: v for k, v in to_dict(section).items() if k not in RUNTIME_ONLY}
    else:
        identity["imported"] = to_dict(cfg.imported)
    return identity


def teacher_hash(cfg: PriorsConfig) -> str:
    return config_hash(teacher_identity(cfg))


def build_teacher(cfg: PipelineConfig) -> Teacher:
    """The teacher named by ``priors.teacher`` (``imported`` priors come from
    ``l2l-priors import-priors`` instead: they have no model to run)."""
    priors = cfg.priors
    if priors.teacher == "simulated":
        from pipeline.grounding.simulated import SimulatedTeacher

        if cfg.data.dataset != "synthetic":
            raise ValueError(
                f"priors.teacher: 'simulated' needs data.dataset 'synthetic' (the simulation "
                f"uses the scene's ground truth), got {cfg.data.dataset!r}; use 'qwen-sam2'"
            )
        return SimulatedTeacher(priors.simulated, cfg.data.synthetic.dir, priors.size)
    if priors.teacher == "qwen-sam2":
        from pipeline.grounding.qwen import build_grounder
        from pipeline.segment.sam2 import build_sam2_prior

        return QwenSam2Teacher(
            build_grounder(priors.mllm), build_sam2_prior(priors.sam2, priors.size)
        )
    raise ValueError(
        "priors.teacher: 'imported' priors are written by `l2l-priors import-priors DIR`, "
        "not generated"
    )


class QwenSam2Teacher:
    """Qwen2.5-VL grounds every pair (batched across images, left-padded), then SAM2 encodes
    each image once and segments all of that image's grounded boxes in one prompt batch."""

    def __init__(self, grounder, segmenter):
        self.grounder, self.segmenter = grounder, segmenter

    def predict(self, pairs: list[dict[str, Any]], image_root: Path) -> list[TeacherOutput]:
        from pipeline.datasets.manifest import load_rgb

        images = {}  # image_path -> RGB PIL image, None when unreadable
        for path in dict.fromkeys(p["image_path"] for p in pairs):
            try:
                images[path] = load_rgb(image_root / path)
            except OSError:
                images[path] = None
        readable = [i for i, p in enumerate(pairs) if images[p["image_path"]] is not None]
        groundings = dict(
            zip(
                readable,
                self.grounder.ground(
                    [images[pairs[i]["image_path"]] for i in readable],
                    [pairs[i]["expression"] for i in readable],
                ),
                strict=True,
            )
        )

        outputs: list[TeacherOutput | None] = [None] * len(pairs)
        for i in range(len(pairs)):
            if i not in groundings:
                outputs[i] = TeacherOutput(None, NO_BOX, NO_POINT, PriorStatus.UNREADABLE_IMAGE)
            elif groundings[i].status != PriorStatus.OK:
                g = groundings[i]
                outputs[i] = TeacherOutput(None, NO_BOX, NO_POINT, g.status, g.raw_text)
        for path, image in images.items():
            grounded = [
                i for i in readable if pairs[i]["image_path"] == path and outputs[i] is None
            ]
            if not grounded:
                continue
            self.segmenter.set_image(np.array(image))
            boxes = np.array([groundings[i].box_original for i in grounded], np.float32)
            points = np.array(
                [groundings[i].point_original or (np.nan, np.nan) for i in grounded], np.float32
            )
            masks = self.segmenter.predict(boxes, points)
            for row, i in enumerate(grounded):
                g = groundings[i]
                finite = bool(masks.finite[row])
                outputs[i] = TeacherOutput(
                    masks.prob[row] if finite else None,
                    boxes[row],
                    points[row],
                    PriorStatus.OK if finite else PriorStatus.NON_FINITE,
                    g.raw_text,
                )
        return outputs
