"""One epoch's training metrics: the losses and, on unlabelled pairs, the paper's figure-9
quantities. Every sum lives in a float64 tensor, so under DDP one ``all_reduce`` per
accumulator combines the ranks, and a checkpoint carries a rank's unfinished epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from l2l_train.metrics import (
    IoUAccumulator,
    MeanAccumulator,
    PseudoLabelAccumulator,
    SumAccumulator,
    binarize,
)
from l2l_train.trainer import StepResult

LOSS_NAMES = (
    "loss",
    "sup",
    "unsup",
    "unsup_ce",
    "unsup_dice",
    "critic_loss",
    "actor_loss",
    "reward",
)


class EpochStats:
    """One epoch's training losses and, on unlabelled pairs, the paper's figure-9 quantities:
    IoU of the raw prior and of ``q_hat`` (each binarised at 0.5) against the ground truth
    where it is known, pseudo-label accuracy and coverage, mean thresholds and agreement, and
    (agreement_filter) the share of pairs kept."""

    def __init__(self, device: torch.device) -> None:
        self.losses = MeanAccumulator(LOSS_NAMES, device)
        self.selection = MeanAccumulator(
            ("tau_fg", "tau_bg", "agreement", "prior_present", "kept"), device
        )
        self.prior_raw = IoUAccumulator(device)
        self.prior_fused = IoUAccumulator(device)
        self.pseudo = PseudoLabelAccumulator(device)

    def _accumulators(self) -> list[SumAccumulator]:
        return [self.losses, self.selection, self.prior_raw, self.prior_fused, self.pseudo]

    def add(self, result: StepResult, eval_u: dict[str, Any] | None) -> None:
        for name, value in result.losses.items():
            self.losses.add(name, value)
        targets = result.targets
        if targets is None:
            return
        batch = targets.q_hat.shape[0]
        self.selection.add("tau_fg", targets.thresholds[:, 0].sum(), batch)
        self.selection.add("tau_bg", targets.thresholds[:, 1].sum(), batch)
        self.selection.add("prior_present", targets.prior_present.sum(), batch)
        if targets.kept is not None:  # agreement_filter: the share of pairs it keeps
            self.selection.add("kept", targets.kept.sum(), batch)
        self.selection.add(
            "agreement", targets.agreement[targets.prior_present].sum(), targets.prior_present.sum()
        )
        known = eval_u["has_mask_u_eval"]
        if known.any():
            self.pseudo.update(targets.pseudo[known], eval_u["mask_u_eval"][known])
        # Raw and fused prior on one pair set, those with a teacher prior: a teacher miss has
        # no raw prior to score, and counting its fused prior (= p_w) on one side only would
        # compare different pairs.
        with_prior = known & targets.prior_present
        if with_prior.any():
            gt = eval_u["mask_u_eval"][with_prior]
            self.prior_raw.update(binarize(targets.q[with_prior]), gt)
            self.prior_fused.update(binarize(targets.q_hat[with_prior]), gt)

    def all_reduce(self) -> None:
        for accumulator in self._accumulators():
            accumulator.all_reduce()

    def compute(self) -> dict[str, float]:
        metrics = {f"train/{k}": v for k, v in self.losses.compute().items()}
        metrics |= {f"u/{k}": v for k, v in self.selection.compute().items()}
        for name, accumulator in (("prior_raw", self.prior_raw), ("prior_fused", self.prior_fused)):
            if accumulator.sums.any():
                iou = accumulator.compute()
                metrics |= {f"u/{name}_oIoU": iou["oIoU"], f"u/{name}_mIoU": iou["mIoU"]}
        if self.pseudo.sums.any():
            quality = self.pseudo.compute()
            metrics |= {"u/pseudo_accuracy": quality["accuracy"], "u/coverage": quality["coverage"]}
        return metrics

    def state(self) -> list[Tensor]:
        return [accumulator.sums.cpu() for accumulator in self._accumulators()]

    def load_state(self, tensors: list[Tensor]) -> None:
        for accumulator, saved in zip(self._accumulators(), tensors, strict=True):
            accumulator.sums.copy_(saved)


def open_epoch_log(metrics_dir: Path, resume: bool) -> Any:
    """The dvclive logger of a run's per-epoch metrics and plots (rank 0 only), under
    ``metrics_dir``; a resumed run appends to its history."""
    from dvclive import Live

    metrics_dir.mkdir(parents=True, exist_ok=True)
    return Live(str(metrics_dir), resume=resume, dvcyaml=False, save_dvc_exp=False)


def log_epoch(live: Any, epoch: int, metrics: dict[str, float]) -> None:
    """One epoch's metrics as dvclive step ``epoch``."""
    live.step = epoch
    for name, value in metrics.items():
        if name != "epoch":
            live.log_metric(name, value)
    live.next_step()
