"""Image-expression pairs read from the manifest, the partition, the images and the prior store,
in the trainer's input frame.

Frames. Every tensor a training item holds is in the trainer's square input frame,
``image_size`` on a side: the image stretched to a square (bilinear, antialiased), masks
nearest-resized, priors bilinear-resized from the store's square ``S x S`` frame (the same
stretch, so only the scale changes). Evaluation keeps the ground-truth mask at the image's
original resolution, where the metrics are computed (LAVT's protocol). Images travel as uint8
and are ImageNet-normalised on the device (:func:`normalize_images`): a quarter of the bytes
through the worker queues, and the strong intensity ops work on the uint8 image.

Pairs with no usable prior (not in the store, e.g. labelled pairs when ``priors.splits`` is
``[unlabeled]``, or stored with a status other than OK) carry an all-zero prior and
``prior_present = False``: the model's "absent" input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from l2l_train.config import TrainerParams
from l2l_train.model.text import TextTokenizer
from pipeline.contract import PriorStatus, resize_prob, teacher_hash
from pipeline.datasets.manifest import decode_mask, image_root, load_rgb, read_pairs
from pipeline.store.reader import PriorStore

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- frames


def normalize_images(images: Tensor) -> Tensor:
    """ImageNet normalisation of uint8 images.

    Shapes: images (B, 3, H, W) uint8 in [0, 255]. Returns: (B, 3, H, W) float32.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images: expected (B, 3, H, W) uint8, got {images.dtype} {tuple(images.shape)}"
        )
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def resize_image(image: np.ndarray, size: int) -> Tensor:
    """Stretch an RGB image to the square input frame (bilinear, antialiased).

    Shapes: image (H, W, 3) uint8. Returns: (3, size, size) uint8.
    """
    chw = torch.tensor(image).permute(2, 0, 1)  # a copy: PIL-backed arrays are read-only
    return TF.resize(chw, [size, size], antialias=True)


def resize_mask(mask: np.ndarray, size: int) -> Tensor:
    """Nearest resize of a binary mask (or a map of category ids) to the square input frame,
    so labels stay labels.

    Shapes: mask (H, W) uint8. Returns: (size, size) uint8.
    """
    t = torch.from_numpy(np.ascontiguousarray(mask))[None, None]
    return F.interpolate(t, size=(size, size), mode="nearest-exact")[0, 0]


def resize_prior(prob: np.ndarray, size: int) -> Tensor:
    """Bilinear resize of a stored prior from the store's square frame to the input frame.

    Shapes: prob (S, S) float. Returns: (1, size, size) float32 in [0, 1].
    """
    # Not antialiased (the trainer never has been); clamped even when nothing is resized.
    resized = resize_prob(np.asarray(prob), (size, size), antialias=False)
    return torch.from_numpy(resized)[None].clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- pairs


def prior_keys(store: PriorStore, sample_ids: Sequence[str]) -> list[str | None]:
    """The store key of each sample's prior, None for samples it holds no prior for.

    A sample indexed under several keys (open the store with ``teacher_hash=``) raises
    ``ValueError`` from the store.
    """
    keys: list[str | None] = []
    for sample_id in sample_ids:
        try:
            keys.append(store.lookup_sample([sample_id])[0])
        except KeyError:
            keys.append(None)
    return keys


class FillCache:
    """Values by key (a tensor, or a tuple holding tensors), kept until ``budget_bytes`` of
    tensors are held; after that nothing more is added. No eviction: under random visits an
    evicting cache would miss about as often, and pay for bookkeeping. Values are shared:
    callers must not modify them in place."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes, self.held_bytes = budget_bytes, 0
        self.values: dict[Hashable, Any] = {}

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The value of ``key``, made by ``make()`` on a miss."""
        if key in self.values:
            return self.values[key]
        value = make()
        parts = value if isinstance(value, tuple) else (value,)
        size = sum(t.numel() * t.element_size() for t in parts if isinstance(t, Tensor))
        if self.held_bytes + size <= self.budget_bytes:
            self.values[key] = value
            self.held_bytes += size
        return value


class PairSource:
    """Manifest rows of one selection (a partition role or a dataset split) and how to load
    one pair in the input frame. Picklable, for DataLoader workers; the store opens its Zarr
    arrays lazily in each process that reads from it.

    ``store`` None means the pairs are read without priors (every pair absent).
    ``cache_mb``: input-frame images, masks and priors are kept in memory, up to this many
    MiB per process (each DataLoader worker holds its own), so a pair visited again is not
    decoded, read from the store and resized again; 0 keeps nothing.
    """

    def __init__(
        self,
        rows: pa.Table,
        image_root: Path,
        image_size: int,
        tokenizer: TextTokenizer,
        store: PriorStore | None = None,
        cache_mb: int = 0,
    ) -> None:
        if rows.num_rows == 0:
            raise ValueError("no pairs selected: the manifest selection is empty")
        self.sample_id: list[str] = rows["sample_id"].to_pylist()
        self.image_path: list[str] = rows["image_path"].to_pylist()
        self.expression: list[str] = rows["expression"].to_pylist()
        self.mask_rle: list[str | None] = rows["mask"].to_pylist()
        self.ref_id = rows["ref_id"].to_numpy()
        # (N, 2) original (H, W): the pseudo-labels' ignore band is sized in original pixels.
        self.original_hw = torch.from_numpy(
            np.stack([rows[c].to_numpy() for c in ("height", "width")], axis=1).astype(np.int64)
        )
        self.image_root = Path(image_root)
        self.image_size = image_size
        self.tokenizer = tokenizer
        self.store = store
        self.prior_key = (
            prior_keys(store, self.sample_id) if store is not None else [None] * len(self)
        )
        self.cache = FillCache(cache_mb * 2**20)

    def __len__(self) -> int:
        return len(self.sample_id)

    @property
    def prior_coverage(self) -> float:
        """Fraction of the pairs with a stored prior (of any status)."""
        return sum(k is not None for k in self.prior_key) / len(self)

    def refs(self) -> list[np.ndarray]:
        """Row indices of each ref's sentences: refs by ref id, rows in manifest order."""
        order = np.argsort(self.ref_id, kind="stable")
        _, starts = np.unique(self.ref_id[order], return_index=True)
        return np.split(order, starts[1:])

    def image(self, i: int) -> Tensor:
        """(3, S, S) uint8 in the input frame. An unreadable image raises ``OSError`` naming
        the sample and the file (prepare skips them: one missing since is a changed dataset)."""
        path = self.image_path[i]
        return self.cache.get(("image", path), lambda: self._read_image(i))

    def _read_image(self, i: int) -> Tensor:
        try:
            rgb = load_rgb(self.image_root / self.image_path[i])
        except OSError as err:
            raise OSError(
                f"sample {self.sample_id[i]!r}: {err}; rerun `l2l-priors prepare` if the "
                "images changed since the manifest was written"
            ) from err
        return resize_image(np.asarray(rgb), self.image_size)

    def has_mask(self, i: int) -> bool:
        return bool(self.mask_rle[i])

    def mask_original(self, i: int) -> Tensor:
        """(H, W) uint8 ground truth at the image's original resolution."""
        if not self.has_mask(i):
            raise ValueError(f"sample {self.sample_id[i]!r} has no ground-truth mask")
        return torch.from_numpy(decode_mask(self.mask_rle[i]))

    def mask(self, i: int) -> Tensor:
        """(S, S) uint8 ground truth in the input frame."""
        return self.cache.get(
            ("mask", i), lambda: resize_mask(self.mask_original(i).numpy(), self.image_size)
        )

    def prior(self, i: int) -> tuple[Tensor, bool]:
        """(1, S, S) float prior in the input frame and whether it is usable (stored with
        status OK); an absent prior reads as zeros."""
        return self.cache.get(("prior", i), lambda: self._read_prior(i))

    def _read_prior(self, i: int) -> tuple[Tensor, bool]:
        key = self.prior_key[i]
        if key is None:
            return torch.zeros(1, self.image_size, self.image_size), False
        prob, status = self.store.get([key], missing_ok=True)
        present = int(status[0]) == PriorStatus.OK
        if present and not np.isfinite(prob[0]).all():
            # The writer refuses such rows; bytes damaged on disk can still decode to NaN.
            log.warning(
                "prior of sample %r holds NaN/inf values (damaged store? run `l2l-priors "
                "verify`): read as prior-absent",
                self.sample_id[i],
            )
            present = False
        if not present:
            return torch.zeros(1, self.image_size, self.image_size), False
        return resize_prior(prob[0], self.image_size), True

    def tokens(self, expression: str) -> tuple[Tensor, Tensor]:
        """input_ids, attention_mask, each (T,) int64."""
        ids, mask = self.tokenizer([expression])
        return ids[0], mask[0]


def open_teacher_store(params: TrainerParams) -> PriorStore:
    """The prior store read-only, restricted to the configured teacher's priors."""
    return PriorStore.open(params.paths.priors, teacher_hash=teacher_hash(params.priors))


def pair_source(
    params: TrainerParams,
    selection: str,
    tokenizer: TextTokenizer,
    image_size: int,
    store: PriorStore | None = None,
    *,
    require_priors: bool = False,
    rows: pa.Table | None = None,
    cache_mb: int = 0,
) -> PairSource:
    """The pairs of ``selection``: a partition role (labeled / unlabeled / held_out) or a
    dataset split (val, test, testA, ...), with their priors from ``store`` where it holds
    them; ``rows``: these manifest rows of it instead (a part, e.g. tuned_fusion's held-out
    labelled pairs);
    ``cache_mb``: :class:`PairSource`'s in-memory budget per process.

    ``require_priors``: the selection is meant to have priors (unlabelled pairs of a method
    that reads the teacher, evaluation with ``eval.prior: teacher``), so none at all means
    they were never generated, an error naming the command; a partial cover is logged.
    """
    source = PairSource(
        read_pairs(params.paths, selection) if rows is None else rows,
        image_root(params.paths.samples),
        image_size,
        tokenizer,
        store,
        cache_mb,
    )
    if store is None or not require_priors:
        return source
    coverage = source.prior_coverage
    if coverage == 0:
        raise FileNotFoundError(
            f"no priors of teacher {params.priors.teacher!r} (hash {teacher_hash(params.priors)}) "
            f"for the {selection} pairs in {params.paths.priors}: run "
            f"`l2l-priors generate --split {selection}` first"
        )
    if coverage < 1:
        log.warning(
            "%s: %.1f%% of the pairs have a stored prior; the others are read as prior-absent",
            selection,
            100 * coverage,
        )
    return source
