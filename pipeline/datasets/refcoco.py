"""RefCOCO, RefCOCO+ and RefCOCOg in the refer format -> manifest :class:`Sample` rows.

Layout, as published with the refer API (``data.*`` keys of ``params.yaml``)::

    <data.root>/<data.dataset>/refs(<data.split_by>).p   # pickle: a list of refs
    <data.root>/<data.dataset>/instances.json            # COCO images, annotations, categories
    <data.images>/<file_name>                            # the COCO train2014 images

Releases: refcoco (unc, google), refcoco+ (unc), refcocog (umd, google); ``DataConfig``
refuses other pairs at load. A ref is ``{ref_id, ann_id, image_id, split, category_id,
sentences: [{sent_id, sent, raw, tokens}], ...}``. Every sentence of every ref becomes one
row: its expression is ``sent`` stripped, its mask the ref's annotation decoded by pycocotools
(polygon parts merged, uncompressed RLE, compressed RLE) and re-encoded by
:func:`~pipeline.datasets.manifest.encode_mask`, its split the ref's (train, val, testA, ...).
Unpickling runs code named in the file: point ``data.root`` only at files you trust.

Errors versus skips. A problem that makes the whole release suspect raises, naming the file;
a problem with one item skips that item, recorded as ``(item, reason)`` in
``PreparedDataset.skipped`` (the CLI logs and counts them), so one bad image or annotation
never stops a run over 140k pairs.

Raises:
- ``FileNotFoundError``: the root, dataset folder, refs pickle, ``instances.json`` or image
  folder is missing; the message names it and the expected layout (a wrong path, not a
  damaged item).
- :class:`ReferFormatError`: the pickle or ``instances.json`` cannot be read, or has the wrong
  shape (not a list of refs with the keys above, repeated ids, ...); the message names the
  file and the first bad entry. A wrong shape means a wrong file or format version, so no row
  of it can be trusted.

Skips:
- ref ``{dataset}/{split}/{ref_id}``: its ``ann_id``, ``image_id`` or ``category_id`` is not
  in ``instances.json``, its annotation lies on another image, or the annotation's
  segmentation is empty, has zero area, or cannot be decoded -> all its sentences.
- image ``{image_id} ({file_name})``: missing, unreadable header, a size that differs from
  ``instances.json`` (the mask would not fit), or, with ``data.verify_images``, a file that
  does not fully decode (truncated) -> all its pairs. Without ``verify_images`` only existence
  and the header are checked, so a truncated file surfaces in a later stage instead.
- sentence ``{sample_id}``: an empty expression after stripping.

Greyscale, CMYK and palette images are not defects: every stage opens images through
:func:`~pipeline.datasets.manifest.load_rgb`, which converts them to RGB.

Rows come in ref_id order, sentences in their pickle order; skips in the order refs, images,
sentences: the same input gives the same output whatever ``data.workers`` is.
"""

from __future__ import annotations

import json
import numbers
import pickle
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pipeline.config import DataConfig
from pipeline.datasets.manifest import PreparedDataset, Sample, encode_mask, load_rgb, sample_id

# Field -> expected type of each entry kind; ``object`` only requires the key.
REF_SPEC = {
    "ref_id": int,
    "ann_id": int,
    "image_id": int,
    "split": str,
    "sentences": list,
    "category_id": int,
}
SENTENCE_SPEC = {"sent_id": int, "sent": str}
IMAGE_SPEC = {"id": int, "file_name": str, "height": int, "width": int}
ANNOTATION_SPEC = {"id": int, "image_id": int, "segmentation": object}
CATEGORY_SPEC = {"id": int, "name": str}

REFS_SHAPE = (
    "a list of refs, each a dict with ref_id, ann_id, image_id, split, category_id and "
    "sentences (a list of dicts with sent_id and sent)"
)
INSTANCES_SHAPE = (
    "COCO instances: a dict with lists images (id, file_name, height, width), "
    "annotations (id, image_id, segmentation) and categories (id, name)"
)


class ReferFormatError(ValueError):
    """A refs pickle or ``instances.json`` of the wrong shape; names the file and entry."""


class Instances(NamedTuple):
    """``instances.json`` indexed by id."""

    images: dict[int, dict[str, Any]]
    annotations: dict[int, dict[str, Any]]
    categories: dict[int, str]  # category id -> name


def refer_files(cfg: DataConfig) -> tuple[Path, Path]:
    """The refs pickle and ``instances.json`` of ``cfg``'s release.

    Raises ``FileNotFoundError`` naming the first missing folder or file and the layout."""
    dataset_dir = Path(cfg.root) / cfg.dataset
    refs_path = dataset_dir / f"refs({cfg.split_by}).p"
    instances_path = dataset_dir / "instances.json"
    layout = (
        f"expected the refer layout {refs_path} and {instances_path} "
        f"(data.root/data.dataset/refs(data.split_by).p) and the COCO train2014 images in "
        f"{cfg.images} (data.images)"
    )
    required = (
        (Path(cfg.root), "refer root folder", Path.is_dir),
        (dataset_dir, "dataset folder", Path.is_dir),
        (refs_path, "refs pickle", Path.is_file),
        (instances_path, "COCO instances file", Path.is_file),
        (Path(cfg.images), "image folder", Path.is_dir),
    )
    for path, what, exists in required:
        if not exists(path):
            raise FileNotFoundError(f"{what} not found: {path}; {layout}")
    return refs_path, instances_path


def _entry_problem(entry: Any, spec: dict[str, type]) -> str | None:
    """What is wrong with one pickle/JSON entry against ``spec``, or None."""
    if not isinstance(entry, dict):
        return f"is a {type(entry).__name__}, not a dict"
    for key, tp in spec.items():
        if key not in entry:
            return f"has no {key!r}"
        value = entry[key]
        # numbers.Integral also admits numpy integers; bool is an int but never an id.
        expected = numbers.Integral if tp is int else tp
        if not isinstance(value, expected) or (tp is int and isinstance(value, bool)):
            return f"has {key}={value!r}, expected {tp.__name__}"
    return None


def _index_entries(
    entries: Any, spec: dict[str, type], key: str, where: str, shape: str
) -> dict[int, dict[str, Any]]:
    """Check a list of entries against ``spec`` and index it by its unique ``key``.

    Raises :class:`ReferFormatError` naming ``where`` (file and section), the first bad entry
    and the expected ``shape``."""
    if not isinstance(entries, list):
        raise ReferFormatError(f"{where}: is a {type(entries).__name__}, expected {shape}")
    index: dict[int, dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        problem = _entry_problem(entry, spec)
        if problem is None and entry[key] in index:
            problem = f"repeats {key} {entry[key]}"
        if problem is not None:
            named = f" ({key} {entry[key]})" if isinstance(entry, dict) and key in entry else ""
            raise ReferFormatError(f"{where}[{i}]{named} {problem}; expected {shape}")
        index[entry[key]] = entry
    return index


def load_refs(path: Path) -> list[dict[str, Any]]:
    """Unpickle and check a refer ``refs(<split_by>).p`` file; refs sorted by ref_id."""
    try:
        with path.open("rb") as fh:
            # The published pickles were written by Python 2; UTF-8 reads their byte strings
            # (the default ASCII is a subset of it).
            raw = pickle.load(fh, encoding="utf-8")
    except Exception as err:  # unpickling raises anything from EOFError to ImportError
        raise ReferFormatError(
            f"{path}: not a readable pickle ({err!r}); expected {REFS_SHAPE}"
        ) from err
    refs = _index_entries(raw, REF_SPEC, "ref_id", f"{path}: refs", REFS_SHAPE)
    for ref_id, ref in refs.items():
        _index_entries(
            ref["sentences"],
            SENTENCE_SPEC,
            "sent_id",
            f"{path}: ref_id {ref_id} sentences",
            REFS_SHAPE,
        )
    return [refs[ref_id] for ref_id in sorted(refs)]


def load_instances(path: Path) -> Instances:
    """Read and index a COCO ``instances.json``; :class:`ReferFormatError` on a wrong shape."""
    try:
        with path.open() as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:
        raise ReferFormatError(
            f"{path}: not readable JSON ({err}); expected {INSTANCES_SHAPE}"
        ) from err
    sections = ("images", "annotations", "categories")
    if not isinstance(data, dict) or any(s not in data for s in sections):
        raise ReferFormatError(f"{path}: expected {INSTANCES_SHAPE}")
    images = _index_entries(data["images"], IMAGE_SPEC, "id", f"{path}: images", INSTANCES_SHAPE)
    annotations = _index_entries(
        data["annotations"], ANNOTATION_SPEC, "id", f"{path}: annotations", INSTANCES_SHAPE
    )
    categories = _index_entries(
        data["categories"], CATEGORY_SPEC, "id", f"{path}: categories", INSTANCES_SHAPE
    )
    return Instances(images, annotations, {i: c["name"] for i, c in categories.items()})


def _segmentation_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """A COCO ``segmentation`` as one pycocotools RLE over the (height, width) image.

    Raises ``ValueError`` saying what is wrong with it."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        # Fewer than 3 points enclose no area, and pycocotools would read a 4-number part
        # as a box rather than a polygon.
        parts = [part for part in segmentation if len(part) >= 6]
        if not parts:
            raise ValueError("empty segmentation (no polygon part with 3 or more points)")
        return mask_utils.merge(mask_utils.frPyObjects(parts, height, width))
    if not (isinstance(segmentation, dict) and {"size", "counts"} <= segmentation.keys()):
        raise ValueError(
            f"segmentation is a {type(segmentation).__name__}, expected polygons or an RLE dict"
        )
    size = [int(s) for s in segmentation["size"]]
    if size != [height, width]:
        raise ValueError(
            f"RLE size {size} differs from the image's [height, width] [{height}, {width}]"
        )
    counts = segmentation["counts"]
    if isinstance(counts, list):
        # pycocotools fills a mask from counts that stop short with uninitialised memory.
        if sum(counts) != height * width:
            raise ValueError(
                f"uncompressed RLE counts sum to {sum(counts)}, "
                f"not height * width = {height * width}"
            )
        return mask_utils.frPyObjects(segmentation, height, width)
    if isinstance(counts, str | bytes):
        return {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
    raise ValueError(f"RLE counts is a {type(counts).__name__}, expected a list or a string")


def ann_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO ``segmentation`` (polygon parts, uncompressed or compressed RLE).

    Returns:
        (height, width) uint8 mask in {0, 1}, image pixel frame.
    Raises ``ValueError`` for an empty, zero-area, mis-sized or undecodable segmentation."""
    from pycocotools import mask as mask_utils

    try:
        mask = mask_utils.decode(_segmentation_rle(segmentation, height, width))
    except TypeError as err:  # non-numeric or non-list polygon parts or counts
        raise ValueError(f"unreadable segmentation ({err})") from err
    if mask.max(initial=0) > 1:  # compressed counts that stop short, see _segmentation_rle
        raise ValueError("RLE counts do not cover the image")
    if not mask.any():
        raise ValueError("segmentation has zero area")
    return mask


def _ref_target(ref: dict[str, Any], instances: Instances) -> tuple[dict[str, Any], str]:
    """The ref's image entry and its encoded mask; ``ValueError`` says why the ref is unusable."""
    image = instances.images.get(ref["image_id"])
    if image is None:
        raise ValueError(f"image_id {ref['image_id']} is not in instances.json")
    ann = instances.annotations.get(ref["ann_id"])
    if ann is None:
        raise ValueError(f"ann_id {ref['ann_id']} is not in instances.json")
    if ann["image_id"] != ref["image_id"]:
        raise ValueError(
            f"annotation {ann['id']} lies on image {ann['image_id']}, "
            f"the ref on image {ref['image_id']}"
        )
    if ref["category_id"] not in instances.categories:
        raise ValueError(f"category_id {ref['category_id']} is not in instances.json")
    try:
        mask = ann_mask(ann["segmentation"], image["height"], image["width"])
    except ValueError as err:
        raise ValueError(f"annotation {ann['id']}: {err}") from err
    return image, encode_mask(mask)


def _image_size(path: Path, full_decode: bool) -> tuple[int, int]:
    """(width, height) of the image file, from its header or a full decode to RGB."""
    if full_decode:
        with load_rgb(path) as img:
            return img.size
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError) as err:
        raise OSError(f"unreadable image {path}: {err}") from err


def image_problem(path: Path, height: int, width: int, full_decode: bool) -> str | None:
    """Why the image at ``path`` cannot carry masks of size (height, width), or None."""
    if not path.is_file():
        return f"image file missing: {path}"
    try:
        found_width, found_height = _image_size(path, full_decode)
    except OSError as err:
        return str(err)
    if (found_height, found_width) != (height, width):
        return (
            f"{path} is {found_width}x{found_height} pixels, instances.json says {width}x{height}"
        )
    return None


def _image_problems(
    images: list[dict[str, Any]],
    image_root: Path,
    cfg: DataConfig,
    progress: Callable[[], None] | None,
) -> dict[int, str]:
    """image id -> reason for each unusable image, checked in ``cfg.workers`` threads."""

    def check(image: dict[str, Any]) -> str | None:
        return image_problem(
            image_root / image["file_name"], image["height"], image["width"], cfg.verify_images
        )

    problems = {}
    # PIL releases the GIL while decoding, so threads overlap the JPEG work; map keeps order.
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        for image, problem in zip(images, pool.map(check, images), strict=True):
            if problem is not None:
                problems[image["id"]] = problem
            if progress is not None:
                progress()
    return problems


def build_refcoco(cfg: DataConfig, progress: Callable[[], None] | None = None) -> PreparedDataset:
    """Read the refer release ``cfg`` names into manifest rows (see the module docstring).

    ``progress`` is called once per image checked. Returns the rows, the image root
    (``cfg.images``; ``image_path`` is the COCO ``file_name`` under it) and the skips."""
    if cfg.dataset not in ("refcoco", "refcoco+", "refcocog"):
        raise ValueError(
            f"build_refcoco reads refcoco, refcoco+ or refcocog, not data.dataset={cfg.dataset!r}"
        )
    refs_path, instances_path = refer_files(cfg)
    refs = load_refs(refs_path)
    instances = load_instances(instances_path)
    image_root = Path(cfg.images)
    skipped: list[tuple[str, str]] = []

    targets = []  # (ref, image entry, encoded mask) of refs that resolve
    for ref in refs:
        try:
            image, mask = _ref_target(ref, instances)
        except ValueError as err:
            skipped.append((f"ref {cfg.dataset}/{ref['split']}/{ref['ref_id']}", str(err)))
            continue
        targets.append((ref, image, mask))

    used_images = {image["id"]: image for _, image, _ in targets}
    bad_images = _image_problems(
        [used_images[i] for i in sorted(used_images)], image_root, cfg, progress
    )
    skipped += [
        (f"image {i} ({used_images[i]['file_name']})", reason) for i, reason in bad_images.items()
    ]

    samples = []
    for ref, image, mask in targets:
        if image["id"] in bad_images:
            continue
        for sent in ref["sentences"]:
            sid = sample_id(cfg.dataset, ref["split"], ref["ref_id"], sent["sent_id"])
            expression = sent["sent"].strip()
            if not expression:
                skipped.append((f"sentence {sid}", "empty expression"))
                continue
            samples.append(
                Sample(
                    sample_id=sid,
                    dataset=cfg.dataset,
                    split=ref["split"],
                    image_id=int(image["id"]),
                    image_path=image["file_name"],
                    height=int(image["height"]),
                    width=int(image["width"]),
                    ref_id=int(ref["ref_id"]),
                    ann_id=int(ref["ann_id"]),
                    sent_id=int(sent["sent_id"]),
                    expression=expression,
                    mask=mask,
                    category=instances.categories[ref["category_id"]],
                )
            )
    return PreparedDataset(samples=samples, image_root=image_root, skipped=skipped)
