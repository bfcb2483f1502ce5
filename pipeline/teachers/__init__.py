"""Teachers: what turns image–expression pairs into soft prior masks.

A teacher has ``predict(pairs, image_root) -> list[TeacherOutput]`` (one output per pair, in
order; pairs of one image are adjacent) and, optionally, a ``runtime_info`` dict of what a run
used beyond the config (the MLLM's pixel budget), which ``generate`` keeps in the part's
attributes. It is built by :func:`build_teacher`:

- ``simulated.py``: the embedded teacher, simulated from the synthetic scene's truth;
- ``qwen_sam2.py``: Qwen2.5-VL grounds (``qwen.py``, its answers read by ``parse.py``), SAM2
  segments (``sam2.py``).

What a prior depends on is :func:`pipeline.contract.teacher_identity`; its hash goes into
every prior's key. Heavy imports (transformers, sam2) stay inside the builders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from pipeline.config import PipelineConfig
from pipeline.contract import TeacherOutput


class Teacher(Protocol):
    def predict(self, pairs: list[dict[str, Any]], image_root: Path) -> list[TeacherOutput]: ...


def build_teacher(cfg: PipelineConfig) -> Teacher:
    """The teacher named by ``priors.teacher`` (``imported`` priors come from
    ``l2l-priors import-priors`` instead: they have no model to run)."""
    priors = cfg.priors
    if priors.teacher == "simulated":
        from pipeline.teachers.simulated import SimulatedTeacher

        if cfg.data.dataset != "synthetic":
            raise ValueError(
                f"priors.teacher: 'simulated' needs data.dataset 'synthetic' (the simulation "
                f"uses the scene's ground truth), got {cfg.data.dataset!r}; use 'qwen-sam2'"
            )
        return SimulatedTeacher(priors.simulated, cfg.data.synthetic.dir, priors.size)
    if priors.teacher == "qwen-sam2":
        from pipeline.teachers.qwen import build_grounder
        from pipeline.teachers.qwen_sam2 import QwenSam2Teacher
        from pipeline.teachers.sam2 import build_sam2_prior

        return QwenSam2Teacher(
            build_grounder(priors.mllm), build_sam2_prior(priors.sam2, priors.size)
        )
    raise ValueError(
        "priors.teacher: 'imported' priors are written by `l2l-priors import-priors DIR`, "
        "not generated"
    )
