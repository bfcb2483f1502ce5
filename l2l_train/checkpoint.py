"""Atomic training checkpoints and resume (DESIGN.md section 3, "Checkpoints").

A checkpoint holds everything needed to continue a run exactly: model, optimiser, scheduler,
the RPLE agent (networks, optimisers and replay buffer), step, epoch, the best validation
score, RNG states and the resolved config. It is written to a temporary file in the same
folder and renamed over the target, so a crash mid-write leaves the previous checkpoint intact;
the temp files of killed writers are removed by the next save, and a failed write (full disk)
removes its own and raises :class:`CheckpointWriteError`.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from l2l_train.config import TrainerParams
from pipeline.config import runtime_only_keys, to_dict
from pipeline.contract import teacher_identity

log = logging.getLogger(__name__)

# Sections that say how a run is scored, drawn and where its files go, not what it learns.
NOT_LEARNED_SECTIONS = frozenset({"eval", "figures", "paths"})
# What a checkpoint written under other values still resumes under: those sections and the
# runtime-only keys (speed, devices, logging; marked in the config dataclasses).
RESUME_IGNORED = tuple(sorted(runtime_only_keys(TrainerParams) | NOT_LEARNED_SECTIONS))


class ConfigMismatchError(RuntimeError):
    """``latest`` was written under a config that differs in keys that shape the run."""


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, quota, read-only folder); the message
    names the file, and the previous checkpoint of that name is intact."""


def _temp_name(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.{socket.gethostname()}.{pid}.tmp")


def _remove_dead_temps(path: Path) -> None:
    """Remove the temp files of writers of ``path`` on this host that no longer run: a kill
    mid-write leaves one (a checkpoint's size each), and every run has its own pid."""
    prefix = f".{path.name}.{socket.gethostname()}."
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = tmp.name[len(prefix) : -len(".tmp")]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    A failed write removes its temp file and raises :class:`CheckpointWriteError` naming
    ``path``; the previous checkpoint stays as it was."""
    path = Path(path)
    tmp = _temp_name(path, os.getpid())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_temps(path)
        with tmp.open("wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        _fsync_dir(path.parent)
    except Exception as err:
        tmp.unlink(missing_ok=True)  # on a full disk a partial checkpoint is what fills it
        # torch.save reports a failed write of the file as a RuntimeError around the OSError.
        cause = err if isinstance(err, OSError) else err.__context__ or err.__cause__
        if not isinstance(cause, OSError):
            raise
        raise CheckpointWriteError(
            f"could not write checkpoint {path}: {cause.strerror or cause}; "
            f"the previous {path.name}, if any, is intact"
        ) from err


def _fsync_dir(folder: Path) -> None:
    # The rename is durable once the folder's entry is: without this a power cut can
    # bring back the old checkpoint, or none.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """A checkpoint's state; ``mmap``: tensors are mapped, not read, until something uses them
    (what a caller that only reads the config wants)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # Our own files: they hold RNG states and optimiser internals, not just tensors.
    return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {dotted.key: leaf}."""
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...] = ()
) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (``ignore``: key prefixes
    that do not affect the resumed state, such as evaluation settings)."""
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [
        k
        for k in keys
        if a.get(k) != b.get(k) and not any(k == p or k.startswith(p + ".") for p in ignore)
    ]


def run_identity(params: TrainerParams) -> dict[str, Any]:
    """The resolved config a run's state depends on: everything but the teacher's runtime
    settings (the teacher enters through what makes its priors)."""
    config = to_dict(params)
    config.pop("priors")
    config["teacher"] = teacher_identity(params.priors)
    return config


def _resume_differences(identity: dict[str, Any], params: TrainerParams) -> list[str]:
    """Keys of ``params`` that shape the run differently from the checkpoint's ``identity``."""
    return config_differences(identity, run_identity(params), ignore=RESUME_IGNORED)


def _mismatch(path: Path, differing: list[str]) -> ConfigMismatchError:
    return ConfigMismatchError(
        f"{path} was written by a run with different params ({', '.join(differing)}); "
        f"restore them to resume, or pass --restart to train from scratch"
    )


def check_resumable(path: Path, params: TrainerParams) -> None:
    """Raise :class:`ConfigMismatchError` when ``path`` holds a checkpoint of params that shape
    the run differently (what a run without ``--restart`` stops on); nothing when there is
    none. ``l2l-train run`` checks this before it starts DDP ranks, so a mismatch stops the
    command once, as one process would, not once per rank."""
    if path.is_file():
        # Mapped: only the config is read here; the ranks load the weights.
        identity = load_checkpoint(path, mmap=True)["identity"]
        if differing := _resume_differences(identity, params):
            raise _mismatch(path, differing)


def resumable_checkpoint(
    path: Path, params: TrainerParams, total_steps: int, restart_if_stale: bool
) -> dict[str, Any] | None:
    """``latest`` to resume from, None when there is none.

    A checkpoint written under other params raises :class:`ConfigMismatchError` naming the
    differing keys. With ``restart_if_stale`` (what ``dvc repro`` wants: a changed param, or
    changed code behind a finished run, means a new run) such a checkpoint, or one of a
    finished run, is set aside and training starts from scratch; an unfinished run with the
    same params still resumes.
    """
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path)
    differing = _resume_differences(ckpt["identity"], params)
    if differing and not restart_if_stale:
        raise _mismatch(path, differing)
    if differing:
        log.info("%s has other params (%s): training from scratch", path, ", ".join(differing))
        return None
    if restart_if_stale and ckpt["progress"]["step"] >= total_steps:
        log.info("%s is a finished run: training again from scratch", path)
        return None
    return ckpt


@dataclass
class RunState:
    """Where a run stands; saved in every checkpoint."""

    step: int = 0
    visits_x: int = 0  # global visits consumed from each stream
    visits_u: int = 0
    best_oiou: float = -math.inf
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch metrics
