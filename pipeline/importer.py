"""``l2l-priors import-priors DIR``: probability maps made by another referring segmentor
(the paper's Table 17 uses CARIS and CGFormer) into the prior store.

Files: one per pair, named by its ``sample_id``. Sample ids contain ``/``, so either form is
accepted, as ``.png`` or ``.npy``:

* flat: ``DIR/<sample_id with "/" replaced by "__">.png``, e.g. ``refcoco__val__12__34.png``;
* nested: ``DIR/<sample_id>.png``, e.g. ``DIR/refcoco/val/12/34.png``.

Two files for one pair (both forms, or both suffixes) is an error before anything is written.

Contents: the foreground probability over the *whole* image (no padding, no crop) at any
resolution and aspect; it is stretched to the store's S x S square frame (bilinear,
antialiased when shrinking). PNG: 8-bit greyscale, 0-255 -> [0, 1] (an RGB(A) or palette
PNG is accepted only if its three channels are equal: a colour-mapped heat map is not a
probability). NPY: a 2-D array (leading or trailing singleton axes are dropped) of uint8
0-255, bool, or float in [0, 1].

Identity: imported priors belong to the teacher ``imported`` named ``priors.imported.name``,
whatever ``priors.teacher`` says, so their keys never mix with a model teacher's; training on
them needs ``priors.teacher: imported`` (and the same name). A file that cannot be read, or
holds NaN or values outside [0, 1], gets a row with status ``UNREADABLE_IMPORT`` and zero
probability; a pair with no file gets no row and is reported. Resumable like ``generate``:
pairs whose key is already stored are skipped, including failed ones; to re-import changed
maps use a new ``priors.imported.name``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import PipelineConfig
from pipeline.contract import (
    NO_BOX,
    NO_POINT,
    PriorStatus,
    pair_image_hashes,
    pair_keys,
    resize_prob,
    teacher_hash,
    teacher_identity,
)
from pipeline.datasets.manifest import image_root, read_pairs
from pipeline.store.reader import PriorStore
from pipeline.store.writer import PriorRows, PriorWriter, writer_part

MAP_SUFFIXES = (".png", ".npy")
FLAT_SEPARATOR = "__"  # stands for "/" of the sample id in flat file names


@dataclass(frozen=True)
class ImportSummary:
    split: str
    teacher_hash: str
    pairs: int  # pairs of the split
    skipped: int  # already in the store
    imported: int  # rows written with status OK
    unreadable: list[tuple[str, str]]  # (sample_id, reason): rows written as UNREADABLE_IMPORT
    missing: list[str]  # sample ids without a file: no row written
    part: int | None  # the store part written, None when nothing was written


def imported_config(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with ``priors.teacher = "imported"``: the identity imported priors are keyed by."""
    return dataclasses.replace(cfg, priors=dataclasses.replace(cfg.priors, teacher="imported"))


def index_map_files(directory: str | Path) -> dict[str, list[Path]]:
    """Every ``.png`` / ``.npy`` under ``directory`` by its relative path without suffix,
    with ``/`` separators (the nested form of a sample id, or a flat name)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"import-priors: no folder {directory}")
    files: dict[str, list[Path]] = {}
    for path in sorted(directory.rglob("*")):
        if path.suffix.lower() in MAP_SUFFIXES and path.is_file():
            stem = path.relative_to(directory).with_suffix("").as_posix()
            files.setdefault(stem, []).append(path)
    return files


def match_files(files: dict[str, list[Path]], sample_ids: Sequence[str]) -> list[Path | None]:
    """The map file of each sample id (flat or nested form), None where there is none.
    Raises ``ValueError`` naming the first pairs that have more than one file."""
    matched, ambiguous = [], []
    for sample_id in sample_ids:
        names = dict.fromkeys([sample_id.replace("/", FLAT_SEPARATOR), sample_id])
        found = [path for name in names for path in files.get(name, [])]
        if len(found) > 1:
            ambiguous.append(f"{sample_id}: {', '.join(map(str, found))}")
        matched.append(found[0] if found else None)
    if ambiguous:
        raise ValueError(
            f"import-priors: {len(ambiguous)} pairs have several map files (keep one each): "
            + "; ".join(ambiguous[:3])
        )
    return matched


def _png_array(path: Path) -> np.ndarray:
    """A PNG's grey levels, (h, w) uint8 (or bool for 1-bit images)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode in ("1", "L"):
            return np.asarray(img)
        if img.mode == "LA":
            return np.asarray(img)[..., 0]
        if img.mode in ("RGB", "RGBA", "P", "PA"):
            rgb = np.asarray(img.convert("RGB"))
            if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
                raise ValueError(
                    f"colour PNG ({img.mode}): expected greyscale 0-255 probabilities; "
                    "a colour-mapped heat map cannot be read back as a probability"
                )
            return rgb[..., 0]
        raise ValueError(f"PNG mode {img.mode}: expected 8-bit greyscale (mode L)")


def as_probability(arr: np.ndarray) -> np.ndarray:
    """A map's values as probabilities: uint8 / 255, bool as 0/1, float kept.

    Shapes:
        arr: (h, w), or with leading / trailing singleton axes, e.g. (1, h, w), (h, w, 1).
    Returns:
        (h, w) float32 in [0, 1]; ``ValueError`` for another shape or dtype, NaN/inf, or
        floats outside [0, 1] (logits need a sigmoid first).
    """
    squeezed = arr
    while squeezed.ndim > 2 and squeezed.shape[0] == 1:  # (1, h, w), (1, 1, h, w)
        squeezed = squeezed[0]
    while squeezed.ndim > 2 and squeezed.shape[-1] == 1:  # (h, w, 1)
        squeezed = squeezed[..., 0]
    if squeezed.ndim != 2:
        raise ValueError(f"expected a 2-D map (singleton axes allowed), got shape {arr.shape}")
    if squeezed.dtype == np.uint8:
        return squeezed.astype(np.float32) / 255.0
    if squeezed.dtype == np.bool_:
        return squeezed.astype(np.float32)
    if not np.issubdtype(squeezed.dtype, np.floating):
        raise ValueError(f"dtype {squeezed.dtype}: expected uint8 0-255, bool or float in [0, 1]")
    prob = squeezed.astype(np.float32)
    if not np.isfinite(prob).all():
        raise ValueError("NaN or infinite values")
    if prob.min() < 0 or prob.max() > 1:
        raise ValueError(
            f"values in [{prob.min():.3g}, {prob.max():.3g}], expected [0, 1] (logits? apply a sigmoid)"
        )
    return prob


def read_prob_map(path: Path) -> np.ndarray:
    """(h, w) float32 probabilities in [0, 1] from a ``.png`` or ``.npy`` file, original
    image frame. Raises ``ValueError`` (or what PIL / numpy raise for a damaged file)
    saying why it cannot be used."""
    is_npy = path.suffix.lower() == ".npy"
    return as_probability(np.load(path, allow_pickle=False) if is_npy else _png_array(path))


def load_square_prior(path: Path, size: int) -> tuple[np.ndarray, PriorStatus, str | None]:
    """One pair's store row from its map file.

    Returns:
        prob (size, size) float32 in the square-stretched frame, status, and the reason the
        file is unusable (then status ``UNREADABLE_IMPORT`` and zero prob), else None.
    """
    try:
        prob = read_prob_map(path)
    # Damaged files: PIL raises OSError or SyntaxError, numpy ValueError or EOFError (empty).
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        return np.zeros((size, size), np.float32), PriorStatus.UNREADABLE_IMPORT, str(err)
    return resize_prob(prob, (size, size)), PriorStatus.OK, None


def import_priors(
    cfg: PipelineConfig,
    directory: str | Path,
    split: str = "unlabeled",
    *,
    on_total: Callable[[int], None] | None = None,
    on_pairs: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Import the map files under ``directory`` for ``split``'s pairs that the store lacks
    (see the module docstring for names, formats and identity).

    ``on_total(n)`` is told how many pairs have a file to import, ``on_pairs(k)`` after
    each written batch.
    """
    cfg = imported_config(cfg)
    identity, t_hash = teacher_identity(cfg.priors), teacher_hash(cfg.priors)
    size = cfg.priors.size
    files = index_map_files(directory)
    table = read_pairs(cfg.paths, split).sort_by(
        [("image_id", "ascending"), ("sample_id", "ascending")]
    )
    pairs = table.select(["sample_id", "image_path", "expression"]).to_pylist()
    sample_ids = [p["sample_id"] for p in pairs]
    keys = pair_keys(pairs, pair_image_hashes(pairs, image_root(cfg.paths.samples)), t_hash)

    store = PriorStore.open(cfg.paths.priors, teacher_hash=t_hash)
    done = store.has_pairs(keys, sample_ids) if pairs else np.zeros(0, bool)
    todo = np.flatnonzero(~done)
    paths = match_files(files, [sample_ids[i] for i in todo])
    missing = [sample_ids[i] for i, path in zip(todo, paths, strict=True) if path is None]
    found = [(i, path) for i, path in zip(todo, paths, strict=True) if path is not None]
    if on_total:
        on_total(len(found))

    imported, unreadable, part = 0, [], None
    if found:
        part = writer_part(cfg.paths.priors, 0, 1, size=size, teacher_hash=t_hash)
        batch_rows = cfg.priors.store.shard_rows
        with PriorWriter(
            cfg.paths.priors,
            part,
            size=size,
            teacher_config=identity,
            teacher_hash=t_hash,
            shard_rows=cfg.priors.store.shard_rows,
            clevel=cfg.priors.store.clevel,
        ) as writer:
            for start in range(0, len(found), batch_rows):
                batch = found[start : start + batch_rows]
                loaded = [load_square_prior(path, size) for _, path in batch]
                for (i, _), (_, status, reason) in zip(batch, loaded, strict=True):
                    if status == PriorStatus.OK:
                        imported += 1
                    else:
                        unreadable.append((sample_ids[i], reason))
                writer.write(
                    PriorRows(
                        keys=[keys[i] for i, _ in batch],
                        sample_ids=[sample_ids[i] for i, _ in batch],
                        prob=np.stack([prob for prob, _, _ in loaded]),
                        box=np.tile(NO_BOX, (len(batch), 1)),
                        point=np.tile(NO_POINT, (len(batch), 1)),
                        status=np.array([int(status) for _, status, _ in loaded], np.int8),
                    )
                )
                if on_pairs:
                    on_pairs(len(batch))
    return ImportSummary(
        split, t_hash, len(pairs), int(done.sum()), imported, unreadable, missing, part
    )
