"""What the two halves agree on, besides the files on disk (DESIGN.md section 3).

The prior pipeline writes and the trainer reads; both import this module and nothing of each
other. It holds the prior statuses, a teacher's output, the content-addressed keys and the
teacher identity they hash, which manifest rows a split selects, the one resize of a prior
between frames, and the one intersection/union count of a predicted mask. It imports nothing
of the project but :mod:`pipeline.config` (the teacher identity is made of config sections).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import (
    MLLMConfig,
    PriorsConfig,
    SAM2Config,
    SplitConfig,
    config_hash,
    runtime_only_keys,
    to_dict,
)

# ----------------------------------------------------------------------------- statuses


class PriorStatus(enum.IntEnum):
    """Outcome of one pair's prior; stored as int8. ``MISSING`` is never stored: readers
    return it for pairs that have no row."""

    OK = 0
    NO_GROUNDING = 1  # the MLLM answered but named no object
    UNPARSABLE = 2  # the MLLM answer held no readable box
    UNREADABLE_IMAGE = 3
    INVALID_BOX = 4  # zero-area or entirely outside the image after clipping
    NON_FINITE = 5  # the segmenter produced NaN/inf logits
    UNREADABLE_IMPORT = 6  # an imported probability map that could not be read or resized
    MISSING = -1


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


NO_BOX = np.full(4, np.nan, np.float32)  # (4,) float32: "no grounding box"
NO_POINT = np.full(2, np.nan, np.float32)  # (2,) float32: "no grounding point"

# ----------------------------------------------------------------------------- identity

# Bump when the simulation's behaviour changes, so old simulated priors are not reused.
SIMULATION_VERSION = 1
# Bump when how qwen-sam2 turns answers into prompts changes (pipeline.teachers.parse, the
# SAM2 prompting), for the same reason. 2: point-only answers and Qwen2-VL's tuple boxes.
GROUNDING_VERSION = 2


FINGERPRINT_EDGE = 1 << 20  # bytes hashed at each end of a large weights file
_DOC_FILES = ("readme", "license", "notice")


def _weights_files(root: Path) -> list[Path]:
    """The files of a weights folder that a model's outputs can depend on: every file but
    hidden ones (download caches, ``.gitattributes``) and documentation."""
    files = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix.lower() == ".md" or path.name.lower().startswith(_DOC_FILES):
            continue
        files.append(path)
    return sorted(files)


def weights_fingerprint(path: str | None, key: str) -> str | None:
    """16 hex chars that change when the contents of the weights at ``path`` (a folder or
    one file) change: sha256 over each file's relative name, size and the sha256 of its
    first and last MiB (of all of it, up to 2 MiB: config.json and the processor and
    tokenizer files are hashed whole). Reads at most 2 MiB a file, so a 15 GB model takes
    well under a second; the result is cached per (path, sizes, mtimes).

    None for ``path`` None; ``FileNotFoundError`` naming ``key`` when nothing is there.
    """
    if path is None:
        return None
    root = Path(path)
    if root.is_file():
        files, base = [root], root.parent
    elif root.is_dir():
        files, base = _weights_files(root), root
    else:
        raise FileNotFoundError(
            f"{key}: {path} not found. The teacher's identity, and so every prior's key, "
            "fingerprints the weights' contents: put the weights there or point the key at them"
        )
    signature = tuple(
        (str(p.relative_to(base)), st.st_size, st.st_mtime_ns)
        for p, st in ((p, p.stat()) for p in files)
    )
    return _fingerprint(str(base.resolve()), signature)


@functools.lru_cache(maxsize=32)
def _fingerprint(base: str, signature: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for rel, size, _ in signature:
        with (Path(base) / rel).open("rb") as fh:
            if size <= 2 * FINGERPRINT_EDGE:
                parts = [fh.read()]
            else:
                head = fh.read(FINGERPRINT_EDGE)
                fh.seek(size - FINGERPRINT_EDGE)
                parts = [head, fh.read(FINGERPRINT_EDGE)]
        hashes = [hashlib.sha256(part).hexdigest() for part in parts]
        digest.update(json.dumps([rel, size, hashes]).encode())
    return digest.hexdigest()[:16]


def teacher_identity(cfg: PriorsConfig) -> dict[str, Any]:
    """The resolved teacher config that a prior's value depends on: runtime-only settings
    (batch size, attention kernel, device; marked in the config) are left out, so changing
    them reuses the stored priors. Not dtype: bf16 and fp32 give different masks.

    The qwen-sam2 teacher's weights count by content as well as by path
    (:func:`weights_fingerprint`): new files at the same path get new keys. So computing the
    identity needs the weights where the config says they are (also to train on the priors:
    the trainer looks them up by this identity's hash)."""
    identity: dict[str, Any] = {"teacher": cfg.teacher, "size": cfg.size}
    if cfg.teacher == "simulated":
        identity |= {"simulated": to_dict(cfg.simulated), "version": SIMULATION_VERSION}
    elif cfg.teacher == "qwen-sam2":
        for name, section, cls in (("mllm", cfg.mllm, MLLMConfig), ("sam2", cfg.sam2, SAM2Config)):
            runtime = runtime_only_keys(cls)
            identity[name] = {k: v for k, v in to_dict(section).items() if k not in runtime}
        identity["weights"] = {
            "mllm": weights_fingerprint(cfg.mllm.path, "priors.mllm.path"),
            "sam2": weights_fingerprint(cfg.sam2.checkpoint, "priors.sam2.checkpoint"),
        }
        identity["version"] = GROUNDING_VERSION
    else:
        identity["imported"] = to_dict(cfg.imported)
    return identity


def teacher_hash(cfg: PriorsConfig) -> str:
    """16 hex chars of :func:`teacher_identity`; part of every prior's key."""
    return config_hash(teacher_identity(cfg))


# ----------------------------------------------------------------------------- keys


def prior_key(image_hash: str, expression: str, teacher_hash: str) -> str:
    """Content address of one pair's prior: sha256 hex of the three parts, JSON-encoded so
    no choice of separator can make two different triples collide."""
    blob = json.dumps([image_hash, expression, teacher_hash], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def image_content_hash(path: str | Path) -> str:
    """sha256 hex of an image file's bytes (read in chunks, never whole into memory)."""
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def pair_image_hashes(pairs: list[dict], root: Path) -> list[str]:
    """Content hash (hex) of each pair's image (each file read once). An unreadable file
    hashes its path instead, so its pairs still get a key (and the teacher's row for it)
    rather than stopping the run; hex too, since shards are picked by the hash's value."""
    hashes: dict[str, str] = {}
    for path in dict.fromkeys(p["image_path"] for p in pairs):
        try:
            hashes[path] = image_content_hash(root / path)
        except OSError:
            hashes[path] = hashlib.sha256(f"unreadable:{path}".encode()).hexdigest()
    return [hashes[p["image_path"]] for p in pairs]


def pair_keys(pairs: list[dict], image_hashes: list[str], t_hash: str) -> list[str]:
    """Store key of each manifest row under the teacher hash ``t_hash``."""
    return [prior_key(h, p["expression"], t_hash) for h, p in zip(image_hashes, pairs, strict=True)]


# ----------------------------------------------------------------------------- pairs

# The partition's roles, selectable like splits: held_out pairs are trained on by no role.
ROLE_SPLITS = ("labeled", "unlabeled", "held_out")


def labeled_images(image_ids: np.ndarray, cfg: SplitConfig) -> np.ndarray:
    """The sorted image ids chosen as labelled from the unique ids in ``image_ids``: a
    ``cfg.seed``-seeded sample of ``max(1, round(cfg.labeled_ratio * n))`` images. The
    partition draws its labelled images with it, and tuned_fusion its held-out ones."""
    unique = np.unique(image_ids)
    n_labeled = min(len(unique), max(1, round(cfg.labeled_ratio * len(unique))))
    rng = np.random.default_rng(cfg.seed)
    return np.sort(rng.choice(unique, size=n_labeled, replace=False))


def held_out_images(image_ids: np.ndarray, cfg: SplitConfig) -> np.ndarray:
    """The sorted image ids withheld from training: ``round(cfg.holdout_ratio * n)`` (at
    least one when the ratio is above 0) of the unique ids in ``image_ids`` that
    :func:`labeled_images` leaves, drawn by a generator of their own (seeded ``(cfg.seed,
    1)``), so the labelled images are the same with a held-out part as without one."""
    if cfg.holdout_ratio == 0:
        return np.empty(0, dtype=np.asarray(image_ids).dtype)
    unique = np.unique(image_ids)
    rest = np.setdiff1d(unique, labeled_images(image_ids, cfg))
    n_held = min(len(rest), max(1, round(cfg.holdout_ratio * len(unique))))
    rng = np.random.default_rng((cfg.seed, 1))
    return np.sort(rng.choice(rest, size=n_held, replace=False))


def select_pairs(manifest: pa.Table, split: str, partition: pa.Table | None = None) -> pa.Table:
    """The manifest rows of ``split``: a partition role (labeled/unlabeled/held_out, which
    needs the ``partition`` table of sample_id, role) or a dataset split
    (train/val/test/testA/...)."""
    if split in ROLE_SPLITS:
        if partition is None:
            raise ValueError(f"split {split!r} is a partition role: pass the partition")
        ids = partition.filter(pc.equal(partition["role"], split))["sample_id"]
        return manifest.filter(pc.is_in(manifest["sample_id"], ids))
    rows = manifest.filter(pc.equal(manifest["split"], split))
    if rows.num_rows == 0:
        known = sorted(set(manifest["split"].to_pylist()) | set(ROLE_SPLITS))
        raise ValueError(f"--split: no pairs in split {split!r}; expected one of {known}")
    return rows


# ----------------------------------------------------------------------------- frames


def resize_prob(prob: np.ndarray, hw: tuple[int, int], *, antialias: bool = True) -> np.ndarray:
    """Resize a probability map between frames (bilinear, ``align_corners=False``).

    ``antialias`` (the default: report, import, pictures) widens the tent filter when
    shrinking, so each output pixel averages its whole neighbourhood; the simulated teacher
    and the trainer's input frame resize without it, as they always have (it changes the
    numbers, so stored priors and trained runs would change).

    Shapes:
        prob: (h, w) in [0, 1].
    Returns:
        (H, W) float32 in [0, 1], ``hw = (H, W)``; ``prob`` itself (as float32) if equal.
    """
    import torch
    import torch.nn.functional as F

    if prob.shape == tuple(hw):
        return prob.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float32))[None, None]
    out = F.interpolate(
        t, size=tuple(hw), mode="bilinear", align_corners=False, antialias=antialias
    )
    return out[0, 0].clamp_(0.0, 1.0).numpy()


# ----------------------------------------------------------------------------- scoring


def intersection_union(pred: Any, gt: Any) -> tuple[Any, Any]:
    """Pixel counts ``I = sum(pred & gt)`` and ``U = sum(pred | gt)`` over the last two axes,
    for numpy arrays or torch tensors alike (the IoU of a pair is ``I / U``, 0 when ``U`` is
    0; ``oIoU = sum(I) / sum(U)`` over a split).

    Shapes: pred, gt (..., H, W) bool. Returns: I, U (...,) int64, same library as the inputs.
    """
    return (pred & gt).sum((-2, -1)), (pred | gt).sum((-2, -1))
