"""Datasets over the manifest, the partition, the images and the prior store.

Frames. Every tensor a training item holds is in the trainer's square input frame,
``image_size`` on a side: the image stretched to a square (bilinear, antialiased), masks
nearest-resized, priors bilinear-resized from the store's square ``S x S`` frame (the same
stretch, so only the scale changes). Evaluation keeps the ground-truth mask at the image's
original resolution, where the metrics are computed (LAVT's protocol). Images travel as uint8
and are ImageNet-normalised on the device (:func:`normalize_images`): a quarter of the bytes
through the worker queues, and the strong intensity ops work on the uint8 image.

Training streams. A stream is an endless sequence of *visits*, numbered globally. Visit ``v``
belongs to pass ``v // n_refs``, whose ref order is a permutation seeded by (seed, stream,
pass); the ref's sentence and the visit's augmentations are drawn from a generator seeded by
(seed, stream, v). One sentence per ref per visit (LAVT / SemiRES), and everything about a
visit is a function of its number: workers need no shared RNG, and a resumed run that starts
at the visit count it saved sees exactly the items it would have seen. Under DDP rank ``r`` of
``K`` takes visits ``start + r, start + r + K, ...`` (:class:`VisitStream`), so the ranks split
every pass without overlap.

Pairs with no usable prior (not in the store, e.g. labelled pairs when ``priors.splits`` is
``[unlabeled]``, or stored with a status other than OK) carry an all-zero prior and
``prior_present = False``: the model's "absent" input.

Unlabelled items carry their ground truth, where the manifest has it, only as
``mask_u_eval``: the trainer splits it off before the training step (figure-9 observability
of pseudo-label and prior quality), so no loss can read it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate
from torchvision.transforms.v2 import functional as TF

from l2l_train.augment import View, strong_image, weak_view
from l2l_train.config import AugmentConfig, TrainerParams
from l2l_train.model.text import TextTokenizer
from pipeline.contract import PriorStatus, resize_prob, teacher_hash
from pipeline.datasets.manifest import decode_mask, image_root, load_rgb, read_pairs
from pipeline.store.reader import PriorStore

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Stream ids keep the labelled and unlabelled visit orders independent for one seed.
STREAM_X, STREAM_U = 0, 1
# Batch fields that only observability may read (see the module docstring).
EVAL_ONLY_FIELDS = ("mask_u_eval", "has_mask_u_eval")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from non-negative integers, well mixed (numpy's SeedSequence), for
    per-visit, per-rank and per-purpose generators."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


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
    """Nearest resize of a binary mask to the square input frame, so labels stay {0, 1}.

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


class PairSource:
    """Manifest rows of one selection (a partition role or a dataset split) and how to load
    one pair in the input frame. Picklable, for DataLoader workers; the store opens its Zarr
    arrays lazily in each process that reads from it.

    ``store`` None means the pairs are read without priors (every pair absent).
    """

    def __init__(
        self,
        rows: pa.Table,
        image_root: Path,
        image_size: int,
        tokenizer: TextTokenizer,
        store: PriorStore | None = None,
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
        """(3, S, S) uint8 in the input frame."""
        return resize_image(
            np.asarray(load_rgb(self.image_root / self.image_path[i])), self.image_size
        )

    def has_mask(self, i: int) -> bool:
        return bool(self.mask_rle[i])

    def mask_original(self, i: int) -> Tensor:
        """(H, W) uint8 ground truth at the image's original resolution."""
        if not self.has_mask(i):
            raise ValueError(f"sample {self.sample_id[i]!r} has no ground-truth mask")
        return torch.from_numpy(decode_mask(self.mask_rle[i]))

    def mask(self, i: int) -> Tensor:
        """(S, S) uint8 ground truth in the input frame."""
        return resize_mask(self.mask_original(i).numpy(), self.image_size)

    def prior(self, i: int) -> tuple[Tensor, bool]:
        """(1, S, S) float prior in the input frame and whether it is usable (stored with
        status OK); an absent prior reads as zeros."""
        key = self.prior_key[i]
        if key is None:
            return torch.zeros(1, self.image_size, self.image_size), False
        prob, status = self.store.get([key], missing_ok=True)
        present = int(status[0]) == PriorStatus.OK
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
) -> PairSource:
    """The pairs of ``selection``: a partition role (labeled / unlabeled) or a dataset split
    (val, test, testA, ...), with their priors from ``store`` where it holds them.

    ``require_priors``: the selection is meant to have priors (unlabelled pairs of a method
    that reads the teacher, evaluation with ``eval.prior: teacher``), so none at all means
    they were never generated, an error naming the command; a partial cover is logged.
    """
    source = PairSource(
        read_pairs(params.paths, selection),
        image_root(params.paths.samples),
        image_size,
        tokenizer,
        store,
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


# ----------------------------------------------------------------------------- training


class RefVisits:
    """Visit number -> (row of the sentence to use, the visit's generator); see the module
    docstring for the ordering."""

    def __init__(self, refs: list[np.ndarray], seed: int, stream: int) -> None:
        if not refs:
            raise ValueError("no refs to visit")
        self.refs, self.seed, self.stream = refs, seed, stream
        self._pass, self._order = -1, np.empty(0, np.int64)

    def __len__(self) -> int:
        return len(self.refs)

    def __call__(self, visit: int) -> tuple[int, torch.Generator]:
        epoch_pass, position = divmod(visit, len(self.refs))
        if epoch_pass != self._pass:
            rng = np.random.default_rng(derive_seed(self.seed, self.stream, 0, epoch_pass))
            self._pass, self._order = epoch_pass, rng.permutation(len(self.refs))
        rows = self.refs[self._order[position]]
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.stream, 1, visit))
        pick = int(torch.randint(len(rows), (), generator=generator))
        return int(rows[pick]), generator


class VisitStream(Sampler[int]):
    """This rank's endless visit numbers: ``start + rank``, then every ``world``-th."""

    def __init__(self, start: int = 0, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank: expected 0 <= rank < world ({world}), got {rank}")
        self.start, self.rank, self.world = start, rank, world

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start + self.rank, self.world)


def _require_masks(source: PairSource, what: str) -> None:
    missing = [source.sample_id[i] for i in range(len(source)) if not source.has_mask(i)]
    if missing:
        raise ValueError(
            f"{len(missing)} {what} pairs without a ground-truth mask, e.g. {missing[0]!r}"
        )


def _weak(
    source: PairSource, visits: RefVisits, visit: int, flip_prob: float
) -> tuple[int, View, bool, torch.Generator]:
    """The source row of a visit, its weak view (mask None where the pair has none), whether
    its prior is present, and the visit's generator for any further augmentation."""
    row, generator = visits(visit)
    prior, present = source.prior(row)
    mask = source.mask(row) if source.has_mask(row) else None
    view = weak_view(source.image(row), mask, prior, source.expression[row], flip_prob, generator)
    return row, view, present, generator


class LabeledPairs(Dataset):
    """Labelled visits: the weak view (random flip with left/right swapped in the text).

    Item: img_x (3, S, S) uint8, mask_x (S, S) uint8 {0, 1}, prior_x (1, S, S) float,
    prior_present_x bool, expr_x str (the step encodes the text, or reads its cached features).
    """

    def __init__(self, source: PairSource, seed: int, augment: AugmentConfig) -> None:
        _require_masks(source, "labelled")
        self.source, self.augment = source, augment
        self.visits = RefVisits(source.refs(), seed, STREAM_X)

    def __getitem__(self, visit: int) -> dict[str, Any]:
        _, view, present, _ = _weak(self.source, self.visits, visit, self.augment.flip_prob)
        return {
            "img_x": view.image,
            "mask_x": view.mask,
            "prior_x": view.prior,
            "prior_present_x": present,
            "expr_x": view.expression,
        }


class UnlabeledPairs(Dataset):
    """Unlabelled visits: the weak view and its strong image (intensity ops only, so the
    weak view's prior and pseudo-label apply to it pixel for pixel). The strong *text* is
    made in the training step, where the text encoder filters the EDA candidates.

    Item: img_u_w, img_u_s (3, S, S) uint8, prior_u (1, S, S) float, prior_present_u bool,
    input_ids_u_w / attention_mask_u_w (T,), expr_u_w str, original_hw_u (2,) int64 the
    image's original (H, W); observability only:
    mask_u_eval (S, S) uint8 (zeros where unknown) and has_mask_u_eval bool.
    """

    def __init__(self, source: PairSource, seed: int, augment: AugmentConfig) -> None:
        self.source, self.augment = source, augment
        self.visits = RefVisits(source.refs(), seed, STREAM_U)

    def __getitem__(self, visit: int) -> dict[str, Any]:
        row, view, present, generator = _weak(
            self.source, self.visits, visit, self.augment.flip_prob
        )
        input_ids, attention_mask = self.source.tokens(view.expression)
        size = self.source.image_size
        return {
            "img_u_w": view.image,
            "img_u_s": strong_image(view.image, self.augment, generator),
            "prior_u": view.prior,
            "prior_present_u": present,
            "input_ids_u_w": input_ids,
            "attention_mask_u_w": attention_mask,
            "expr_u_w": view.expression,
            "original_hw_u": self.source.original_hw[row],
            "mask_u_eval": view.mask
            if view.mask is not None
            else torch.zeros(size, size, dtype=torch.uint8),
            "has_mask_u_eval": view.mask is not None,
        }


def split_eval_only(batch_u: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an unlabelled batch into what training may read and the ground truth that only
    observability may read."""
    train = {k: v for k, v in batch_u.items() if k not in EVAL_ONLY_FIELDS}
    return train, {k: batch_u[k] for k in EVAL_ONLY_FIELDS}


def train_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    start: int,
    rank: int,
    world: int,
    num_workers: int,
    pin_memory: bool = False,
) -> DataLoader:
    """An endless loader of ``dataset``'s visits from global visit ``start`` (this rank's share)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=VisitStream(start, rank, world),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        drop_last=True,
    )


# ----------------------------------------------------------------------------- evaluation


class EvalPairs(Dataset):
    """Every pair of a selection, in manifest order, unaugmented.

    Item: image (3, S, S) uint8, input_ids / attention_mask (T,), prior (1, S, S) float,
    prior_present bool, mask (H, W) uint8 at the original resolution, index int.
    """

    def __init__(self, source: PairSource) -> None:
        _require_masks(source, "evaluation")
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        input_ids, attention_mask = self.source.tokens(self.source.expression[i])
        prior, present = self.source.prior(i)
        return {
            "image": self.source.image(i),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prior": prior,
            "prior_present": present,
            "mask": self.source.mask_original(i),
            "index": i,
        }


def collate_eval(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack everything but the original-resolution masks, which stay a list (sizes differ)."""
    masks = [item.pop("mask") for item in items]
    batch = default_collate(items)
    batch["mask"] = masks
    return batch


def eval_loader(
    dataset: EvalPairs, batch_size: int, *, rank: int, world: int, num_workers: int
) -> DataLoader:
    """This rank's share of the pairs (every ``world``-th, no padding, so summed metrics
    count each pair exactly once)."""
    share = Subset(dataset, range(rank, len(dataset), world))
    return DataLoader(
        share, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_eval
    )
