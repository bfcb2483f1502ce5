"""Atomic training checkpoints and resume (DESIGN.md section 3, "Checkpoints").

A checkpoint holds everything needed to continue a run exactly: model, optimiser, scheduler,
the RPLE agent (networks, optimisers and replay buffer), step, epoch, the best validation
score, RNG states and the resolved config. It is written to a temporary file in the same
folder and renamed over the target, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # Our own files: they hold RNG states and optimiser internals, not just tensors.
    return torch.load(path, map_location=map_location, weights_only=False)


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
