"""Evaluation: oIoU, mIoU and precision@0.5-0.9 over every sentence of a split.

Predictions are made in the square input frame, upsampled (bilinear, on logits) to each
image's original size and thresholded there against the original-resolution mask, as LAVT
evaluates. The model sees either no prior or the configured teacher's prior of each pair
(``eval.prior``); the latter needs the split's priors in the store.

Under DDP (per-epoch validation) each rank scores its share of the pairs and the summed
counts are all-reduced before the metrics are computed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from l2l_train.augment import flip_expression, with_flips
from l2l_train.checkpoint import load_checkpoint
from l2l_train.config import ModelConfig, TrainerParams
from l2l_train.data import EvalPairs, eval_loader
from l2l_train.metrics import IoUAccumulator
from l2l_train.model import Segmentor, build_segmentor, build_tokenizer
from l2l_train.pairs import normalize_images, open_teacher_store, pair_source
from l2l_train.runtime import amp_enabled, autocast, resolve_device
from l2l_train.text_cache import FrozenTextCache, frozen_text_cache
from pipeline.datasets.manifest import expand_splits
from pipeline.schema import build_section

log = logging.getLogger(__name__)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of one logit map from the input frame to an original image size.

    Shapes: logits (1, H, W) -> (1, h, w).
    """
    return F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)[0]


def segment(
    model: nn.Module,
    images: Tensor,
    text: dict[str, Tensor | None],
    prior: Tensor | None = None,
    prior_present: Tensor | None = None,
    text_flipped: dict[str, Tensor | None] | None = None,
) -> Tensor:
    """Foreground logits of a batch of pairs; with ``text_flipped`` (the segmentor's text
    inputs of the expressions with left and right swapped), the mean of those logits and the
    mirrored pairs' logits mirrored back: the test-time flip of ``eval.flip``.

    Shapes: images (B, 3, S, S) normalised, prior (B, 1, S, S), prior_present (B,).
    Returns: (B, 1, S, S).
    """
    logits = model(images, prior=prior, prior_present=prior_present, **text)
    if text_flipped is None:
        return logits
    mirrored = model(
        images.flip(-1),
        prior=None if prior is None else prior.flip(-1),
        prior_present=prior_present,
        **text_flipped,
    )
    return (logits + mirrored.flip(-1)) / 2


def batch_text(
    batch: dict[str, Any],
    device: torch.device,
    text_cache: FrozenTextCache | None,
    flipped: bool = False,
) -> dict[str, Tensor | None]:
    """The segmentor's text inputs for an evaluation batch's expressions (``flipped``: with
    left and right swapped): cached word features, or the batch's token ids."""
    if text_cache is not None:
        texts = batch["expression"]
        return text_cache.inputs([flip_expression(t) for t in texts] if flipped else texts)
    suffix = "_flipped" if flipped else ""
    return {
        "input_ids": batch["input_ids" + suffix].to(device),
        "attention_mask": batch["attention_mask" + suffix].to(device),
    }


@torch.no_grad()
def evaluate_thresholds(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    amp: bool,
    thresholds: Sequence[float],
    text_cache: FrozenTextCache | None = None,
    flip: bool = False,
) -> list[dict[str, float]]:
    """Score every pair of ``loader`` (a :func:`~l2l_train.data.eval_loader`) once, its
    foreground probability binarised at each of ``thresholds``; restores the model's
    train/eval mode afterwards. ``text_cache``: the frozen text encoder's features of the
    pairs' expressions (with ``flip``, their flipped forms too), read instead of encoding them
    in every forward (None: encode). ``flip``: the test-time flip of :func:`segment` (without a
    cache the loader's :class:`~l2l_train.data.EvalPairs` needs ``flip``).

    Returns: per threshold, in order, oIoU, mIoU and prec@0.5 ... prec@0.9 over the pairs of
    every rank.
    """
    was_training = model.training
    model.eval()
    accumulators = [IoUAccumulator(device=device) for _ in thresholds]
    for batch in loader:
        with autocast(device, amp):
            logits = segment(
                model,
                normalize_images(batch["image"].to(device)),
                batch_text(batch, device, text_cache),
                batch["prior"].to(device),
                batch["prior_present"].to(device),
                batch_text(batch, device, text_cache, flipped=True) if flip else None,
            )
        for logit, gt in zip(logits, batch["mask"], strict=True):
            prob = torch.sigmoid(upsample_logits(logit, tuple(gt.shape)))  # (1, h, w)
            gt = gt[None].to(device)
            for accumulator, threshold in zip(accumulators, thresholds, strict=True):
                accumulator.update(prob >= threshold, gt)
    for accumulator in accumulators:
        accumulator.all_reduce()
    model.train(was_training)
    return [accumulator.compute() for accumulator in accumulators]


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    amp: bool,
    threshold: float,
    text_cache: FrozenTextCache | None = None,
    flip: bool = False,
) -> dict[str, float]:
    """:func:`evaluate_thresholds` at the one ``threshold``: oIoU, mIoU and prec@0.5 ...
    prec@0.9."""
    (metrics,) = evaluate_thresholds(
        model,
        loader,
        device=device,
        amp=amp,
        thresholds=(threshold,),
        text_cache=text_cache,
        flip=flip,
    )
    return metrics


def eval_texts(expressions: Sequence[str], flip: bool) -> Sequence[str]:
    """What an evaluation's text cache holds: the expressions, with ``flip`` also their
    flipped forms (only then: a larger table batches, and so rounds, the others differently)."""
    return with_flips(expressions) if flip else expressions


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[Segmentor, ModelConfig, int]:
    """The trained segmentor of a checkpoint (architecture from its saved config, weights
    loaded strictly), its model config and the input size it was trained at."""
    model_cfg = build_section(ModelConfig, ckpt["config"]["model"], "model")
    model = build_segmentor(model_cfg, load_weights=False)
    model.load_state_dict(ckpt["model"])
    return model, model_cfg, int(ckpt["config"]["train"]["image_size"])


def run_eval(
    params: TrainerParams,
    checkpoint: str | Path,
    splits: Sequence[str],
    prior: Literal["none", "teacher"],
    sweep: Sequence[float] = (),
) -> dict[str, Any]:
    """Evaluate a checkpoint on ``splits`` (every sentence; ``all``: every evaluation split
    of the dataset, :func:`~pipeline.datasets.manifest.expand_splits`), in one process, at
    ``eval.threshold`` and, from the same forwards, at each threshold of ``sweep`` (to choose
    ``eval.threshold`` on a held-out split).

    Returns: ``{"checkpoint", "step", "prior", "threshold", "flip", "splits": {split:
    metrics}}``
    with each split's oIoU, mIoU, prec@t, ``pairs`` and ``prior_coverage``; with a ``sweep``,
    also ``"sweep": {str(threshold): metrics}`` per split.
    """
    for threshold in sweep:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"sweep: thresholds must lie in (0, 1), got {threshold}")
    splits = expand_splits(splits, params.paths.samples, params.data.eval_splits or ())
    device = resolve_device(params.train.device)
    ckpt = load_checkpoint(checkpoint, map_location=device)
    model, model_cfg, image_size = model_from_checkpoint(ckpt)
    model.to(device)
    tokenizer = build_tokenizer(model_cfg.text)
    store = open_teacher_store(params) if prior == "teacher" else None
    results = {}
    for split in splits:
        source = pair_source(params, split, tokenizer, image_size, store, require_priors=True)
        text_cache = frozen_text_cache(
            model.text, tokenizer, device, eval_texts(source.expression, params.eval.flip)
        )
        loader = eval_loader(
            EvalPairs(source, params.eval.flip),
            params.eval.batch_size,
            rank=0,
            world=1,
            num_workers=params.train.num_workers,
        )
        metrics, *swept = evaluate_thresholds(
            model,
            loader,
            device=device,
            amp=amp_enabled(params.train, device),
            thresholds=(params.eval.threshold, *sweep),
            text_cache=text_cache,
            flip=params.eval.flip,
        )
        results[split] = {**metrics, "pairs": len(source), "prior_coverage": source.prior_coverage}
        if sweep:
            results[split]["sweep"] = {
                str(threshold): at for threshold, at in zip(sweep, swept, strict=True)
            }
        log.info(
            "%s: oIoU %.4f mIoU %.4f (%d pairs)",
            split,
            metrics["oIoU"],
            metrics["mIoU"],
            len(source),
        )
    return {
        "checkpoint": str(checkpoint),
        "step": int(ckpt["step"]),
        "prior": prior,
        "threshold": params.eval.threshold,
        "flip": params.eval.flip,
        "splits": results,
    }
