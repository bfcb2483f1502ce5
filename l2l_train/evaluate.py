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
from torch import nn
from torch.utils.data import DataLoader

from l2l_train.checkpoint import load_checkpoint
from l2l_train.config import ModelConfig, TrainerParams
from l2l_train.data import EvalPairs, eval_loader
from l2l_train.metrics import IoUAccumulator
from l2l_train.model import Segmentor, build_segmentor, build_tokenizer
from l2l_train.pairs import normalize_images, open_teacher_store, pair_source
from l2l_train.runtime import autocast, resolve_device
from l2l_train.text_cache import FrozenTextCache, frozen_text_cache
from pipeline.datasets.manifest import expand_splits
from pipeline.schema import build_section

log = logging.getLogger(__name__)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of one logit map from the input frame to an original image size.

    Shapes: logits (1, H, W) -> (1, h, w).
    """
    return F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    amp: bool,
    threshold: float,
    text_cache: FrozenTextCache | None = None,
) -> dict[str, float]:
    """Score every pair of ``loader`` (a :func:`~l2l_train.data.eval_loader`); restores the
    model's train/eval mode afterwards. ``text_cache``: the frozen text encoder's features of
    the pairs' expressions, read instead of encoding them in every forward (None: encode).

    Returns: oIoU, mIoU and prec@0.5 ... prec@0.9 over the pairs of every rank.
    """
    was_training = model.training
    model.eval()
    accumulator = IoUAccumulator(device=device)
    for batch in loader:
        text = (
            {
                "input_ids": batch["input_ids"].to(device),
                "attention_mask": batch["attention_mask"].to(device),
            }
            if text_cache is None
            else text_cache.inputs(batch["expression"])
        )
        with autocast(device, amp):
            logits = model(
                normalize_images(batch["image"].to(device)),
                prior=batch["prior"].to(device),
                prior_present=batch["prior_present"].to(device),
                **text,
            )
        for logit, gt in zip(logits, batch["mask"], strict=True):
            prob = torch.sigmoid(upsample_logits(logit, tuple(gt.shape)))  # (1, h, w)
            accumulator.update(prob >= threshold, gt[None].to(device))
    accumulator.all_reduce()
    model.train(was_training)
    return accumulator.compute()


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
) -> dict[str, Any]:
    """Evaluate a checkpoint on ``splits`` (every sentence; ``all``: every evaluation split
    of the dataset, :func:`~pipeline.datasets.manifest.expand_splits`), in one process.

    Returns: ``{"checkpoint", "step", "prior", "threshold", "splits": {split: metrics}}``
    with each split's oIoU, mIoU, prec@t, ``pairs`` and ``prior_coverage``.
    """
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
        text_cache = frozen_text_cache(model.text, tokenizer, device, source.expression)
        loader = eval_loader(
            EvalPairs(source),
            params.eval.batch_size,
            rank=0,
            world=1,
            num_workers=params.train.num_workers,
        )
        metrics = evaluate(
            model,
            loader,
            device=device,
            amp=params.train.amp,
            threshold=params.eval.threshold,
            text_cache=text_cache,
        )
        results[split] = {**metrics, "pairs": len(source), "prior_coverage": source.prior_coverage}
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
        "splits": results,
    }
