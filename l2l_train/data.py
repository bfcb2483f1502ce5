"""Training and evaluation datasets over the pairs of :mod:`l2l_train.pairs`, and their loaders.

Training streams. A stream is an endless sequence of *visits*, numbered globally. Visit ``v``
belongs to pass ``v // n_refs``, whose ref order is a permutation seeded by (seed, stream,
pass); the ref's sentence and the visit's augmentations are drawn from a generator seeded by
(seed, stream, v). One sentence per ref per visit (LAVT / SemiRES), and everything about a
visit is a function of its number: workers need no shared RNG, and a resumed run that starts
at the visit count it saved sees exactly the items it would have seen. Under DDP rank ``r`` of
``K`` takes visits ``start + r, start + r + K, ...`` (:class:`VisitStream`), so the ranks split
every pass without overlap.

Unlabelled items carry their ground truth, where the manifest has it, only as
``mask_u_eval``: the trainer splits it off before the training step (figure-9 observability
of pseudo-label and prior quality), so no loss can read it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate

from l2l_train.augment import View, flip_expression, strong_image, weak_view
from l2l_train.config import AugmentConfig
from l2l_train.pairs import PairSource

# Stream ids keep the labelled and unlabelled visit orders independent for one seed.
STREAM_X, STREAM_U = 0, 1
# Batch fields that only observability may read (see the module docstring).
EVAL_ONLY_FIELDS = ("mask_u_eval", "has_mask_u_eval")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from non-negative integers, well mixed (numpy's SeedSequence), for
    per-visit, per-rank and per-purpose generators."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


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

    Item: image (3, S, S) uint8, input_ids / attention_mask (T,), expression str (for a
    frozen text encoder's cached features), prior (1, S, S) float, prior_present bool, mask
    (H, W) uint8 at the original resolution, index int; with ``flip``, also
    input_ids_flipped / attention_mask_flipped (T,) of the expression with left and right
    swapped (the text of the mirrored pair, ``eval.flip``).
    """

    def __init__(self, source: PairSource, flip: bool = False) -> None:
        _require_masks(source, "evaluation")
        self.source, self.flip = source, flip

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        expression = self.source.expression[i]
        input_ids, attention_mask = self.source.tokens(expression)
        prior, present = self.source.prior(i)
        item = {
            "image": self.source.image(i),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "expression": expression,
            "prior": prior,
            "prior_present": present,
            "mask": self.source.mask_original(i),
            "index": i,
        }
        if self.flip:
            tokens = self.source.tokens(flip_expression(expression))
            item["input_ids_flipped"], item["attention_mask_flipped"] = tokens
        return item


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
