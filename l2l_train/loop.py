"""The training run: data, student, trainer, epochs, validation and checkpoints (DESIGN.md 4).

One ``l2l-train run`` reads top to bottom in :class:`Run`: it opens the labelled, unlabelled
and validation pairs, builds the segmentor, wraps it in a :class:`~l2l_train.step.Student`
(weak targets, strong views, losses) and a :class:`~l2l_train.trainer.Trainer` (optimiser),
then steps until ``train.epochs * steps_per_epoch``, validating and checkpointing at every
epoch end. The method's pieces live in their own modules: SPM :mod:`l2l_train.spm`, SESM
:mod:`l2l_train.model.sesm`, RPLE :mod:`l2l_train.rple`, the target strategies and
pseudo-labels :mod:`l2l_train.targets`; ranks and devices in :mod:`l2l_train.runtime`.

Under ``torchrun`` every rank runs this on its own batches; rank 0 alone logs and writes
checkpoints, and metrics are all-reduced. An epoch is ``train.steps_per_epoch`` steps
(default: one pass over the refs that drive it). ``latest`` is written at every epoch end (and
every ``checkpoint_every_steps``), ``best`` at each new best validation oIoU; a rerun resumes
from ``latest`` when the config matches.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from l2l_train.augment import with_flips
from l2l_train.checkpoint import (
    RunState,
    resumable_checkpoint,
    rng_state,
    run_identity,
    save_checkpoint,
    set_rng_state,
)
from l2l_train.config import TrainConfig, TrainerParams
from l2l_train.data import (
    EvalPairs,
    LabeledPairs,
    UnlabeledPairs,
    derive_seed,
    eval_loader,
    split_eval_only,
    train_loader,
)
from l2l_train.epoch_stats import EpochStats, log_epoch, open_epoch_log
from l2l_train.evaluate import eval_texts, evaluate
from l2l_train.model import build_segmentor, build_tokenizer
from l2l_train.pairs import open_teacher_store, pair_source
from l2l_train.runtime import (
    Runtime,
    broadcast_buffers,
    start_runtime,
    stop_runtime,
    to_device,
)
from l2l_train.step import Student
from l2l_train.targets import MethodPlan, plan_method
from l2l_train.text_cache import frozen_text_cache
from l2l_train.trainer import Trainer
from l2l_train.tuning import alpha_grid, best_alpha, fusion_scores, holdout_rows, log_choice
from pipeline.config import to_dict
from pipeline.datasets.manifest import read_pairs

log = logging.getLogger(__name__)


def steps_per_epoch(
    cfg: TrainConfig, plan: MethodPlan, refs_x: int, refs_u: int, world: int
) -> int:
    """``cfg.steps_per_epoch``, else one pass over the driving refs (unlabelled for the
    semi-supervised methods, labelled for supervised) across all ranks."""
    if cfg.steps_per_epoch is not None:
        return cfg.steps_per_epoch
    refs, batch = (refs_u, cfg.batch_size_u) if plan.unlabeled else (refs_x, cfg.batch_size_x)
    return math.ceil(refs / (batch * world))


@dataclass(frozen=True)
class StepInfo:
    """Handed to the progress callback after every step (rank 0)."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    samples_per_s: float


@dataclass(frozen=True)
class TrainSummary:
    method: str
    steps: int
    epochs: int
    best_epoch: int
    best_val_oiou: float
    last_metrics: dict[str, float]
    steps_per_s: float
    samples_per_s: float
    resumed_from_step: int | None


class Run:
    """One ``l2l-train run``: data, trainer, checkpoints and logging for this rank."""

    def __init__(
        self, params: TrainerParams, rt: Runtime, restart: bool, restart_if_stale: bool
    ) -> None:
        cfg = params.train
        self.params, self.cfg, self.rt = params, cfg, rt
        self.plan = plan_method(cfg)
        self.models_dir = Path(params.paths.models)
        self.metrics_dir = Path(params.paths.metrics) / "train"

        self.tokenizer = build_tokenizer(params.model.text)
        store = open_teacher_store(params) if self.plan.teacher else None
        rows_x = self.data_held = None
        if self.plan.fusion == "tuned":
            # tuned_fusion chooses its weight on labelled pairs kept out of the labelled loss.
            tuned = cfg.tuned_fusion
            rows_x, rows_held = holdout_rows(
                read_pairs(params.paths, "labeled"), tuned.holdout, cfg.seed
            )
            self.data_held = EvalPairs(
                pair_source(
                    params,
                    "labeled",
                    self.tokenizer,
                    cfg.image_size,
                    store,
                    require_priors=True,
                    rows=rows_held,
                )
            )
            self.alphas = alpha_grid(tuned.grid)
        source_x = pair_source(
            params,
            "labeled",
            self.tokenizer,
            cfg.image_size,
            store,
            rows=rows_x,
            cache_mb=cfg.loader_cache_mb,
        )
        self.data_x = LabeledPairs(source_x, cfg.seed, cfg.augment)
        self.data_u = None
        if self.plan.unlabeled:
            source_u = pair_source(
                params,
                "unlabeled",
                self.tokenizer,
                cfg.image_size,
                store,
                require_priors=True,
                cache_mb=cfg.loader_cache_mb,
            )
            self.data_u = UnlabeledPairs(source_u, cfg.seed, cfg.augment)
        val_store = open_teacher_store(params) if params.eval.prior == "teacher" else None
        self.data_val = EvalPairs(
            pair_source(
                params,
                params.eval.val_split,
                self.tokenizer,
                cfg.image_size,
                val_store,
                require_priors=True,
            ),
            params.eval.flip,
        )

        self.steps_per_epoch = steps_per_epoch(
            cfg,
            self.plan,
            len(self.data_x.visits),
            len(self.data_u.visits) if self.data_u is not None else 0,
            rt.world,
        )
        self.total_steps = cfg.epochs * self.steps_per_epoch
        # One seed for the model's initialisation on every rank (DDP also broadcasts rank
        # 0's weights); per-rank streams after it.
        torch.manual_seed(cfg.seed)
        model = build_segmentor(params.model).to(rt.device).train()
        expressions = self.data_x.source.expression
        if self.data_u is not None:
            expressions = expressions + self.data_u.source.expression
        student = Student(cfg, self.plan, rt, model, self.tokenizer, with_flips(expressions))
        # Validation reads its own table: added to the training one, it would change how
        # that one is batched, and with it the training features' rounding.
        self.val_text = frozen_text_cache(
            model.text,
            self.tokenizer,
            rt.device,
            eval_texts(self.data_val.source.expression, params.eval.flip),
        )
        self.trainer = Trainer(student, self.total_steps)
        self.progress = RunState()
        self.stats = EpochStats(rt.device)
        self.resumed_from: int | None = None

        ckpt = (
            None
            if restart
            else resumable_checkpoint(
                self.models_dir / "latest.pt", params, self.total_steps, restart_if_stale
            )
        )
        # This rank's random state to restore once the loaders exist (creating a loader
        # iterator draws from the global generator, so restoring earlier would desync a
        # resumed run from an uninterrupted one).
        self._rank_state: dict[str, Any] | None = None
        if ckpt is not None:
            self._resume(ckpt)
        else:
            if rt.is_main:  # a fresh run's best is its own
                (self.models_dir / "best.pt").unlink(missing_ok=True)
            random.seed(derive_seed(cfg.seed, rt.rank, 3))
            np.random.seed(derive_seed(cfg.seed, rt.rank, 4) % 2**32)
            torch.manual_seed(derive_seed(cfg.seed, rt.rank, 5))
        self.trainer.student.wrap_ddp()

    def _resume(self, ckpt: dict[str, Any]) -> None:
        self.trainer.load_state_dict(ckpt)
        self.progress = RunState(**ckpt["progress"])
        self.resumed_from = self.progress.step
        # One state per rank: the params match, and train.processes is the world size.
        self._rank_state = ckpt["rank_states"][self.rt.rank]
        self.trainer.student.set_rng_state(self._rank_state["trainer_rng"])
        self.stats.load_state(self._rank_state["epoch_stats"])
        if self.rt.is_main:
            log.info(
                "resuming from %s at step %d/%d (epoch %d): its config matches",
                self.models_dir / "latest.pt",
                self.progress.step,
                self.total_steps,
                self.progress.step // self.steps_per_epoch + 1,
            )

    # ------------------------------------------------------------------ checkpoints

    def save(self, names: Sequence[str]) -> None:
        """Write checkpoints ``names`` (latest, best) from rank 0; every rank takes part,
        as each contributes its own random state and partial epoch metrics."""
        mine = {
            "rng": rng_state(),
            "trainer_rng": self.trainer.student.rng_state(),
            "epoch_stats": self.stats.state(),
        }
        rank_states = [mine]
        if self.rt.distributed:
            rank_states = [None] * self.rt.world
            dist.all_gather_object(rank_states, mine)
        if not self.rt.is_main:
            return
        state = {
            **self.trainer.state_dict(),
            "step": self.progress.step,
            "progress": vars(self.progress),
            "rank_states": rank_states,
            "config": to_dict(self.params),
            "identity": run_identity(self.params),
        }
        for name in names:
            save_checkpoint(self.models_dir / f"{name}.pt", state)

    # ------------------------------------------------------------------ loop

    def loaders(self) -> tuple[Any, Any]:
        cfg, rt = self.cfg, self.rt
        pin = rt.device.type == "cuda"
        common = {
            "rank": rt.rank,
            "world": rt.world,
            "num_workers": cfg.num_workers,
            "pin_memory": pin,
        }
        loader_x = train_loader(
            self.data_x, cfg.batch_size_x, start=self.progress.visits_x, **common
        )
        loader_u = None
        if self.data_u is not None:
            loader_u = train_loader(
                self.data_u, cfg.batch_size_u, start=self.progress.visits_u, **common
            )
        return loader_x, loader_u

    def eval_share(self, dataset: EvalPairs) -> Any:
        """This rank's loader of ``dataset``, after syncing rank 0's BatchNorm statistics so
        every rank scores the same model."""
        broadcast_buffers(self.trainer.student.model, self.rt)
        return eval_loader(
            dataset,
            self.params.eval.batch_size,
            rank=self.rt.rank,
            world=self.rt.world,
            num_workers=self.cfg.num_workers,
        )

    def validate(self) -> dict[str, float]:
        loader = self.eval_share(self.data_val)
        metrics = evaluate(
            self.trainer.student.model,
            loader,
            device=self.rt.device,
            amp=self.rt.amp,
            threshold=self.params.eval.threshold,
            text_cache=self.val_text,
            flip=self.params.eval.flip,
        )
        return {f"val/{k}": v for k, v in metrics.items()}

    def choose_fusion_alpha(self, epoch: int) -> None:
        """tuned_fusion: the weight of the epoch's linear target, chosen on the held-out
        labelled pairs (:mod:`l2l_train.tuning`); every rank chooses the same."""
        counts = fusion_scores(
            self.trainer.student.model,
            self.eval_share(self.data_held),
            self.alphas,
            device=self.rt.device,
            amp=self.rt.amp,
        )
        alpha = best_alpha(counts.cpu(), self.alphas)
        self.trainer.student.set_fusion_alpha(alpha)
        if self.rt.is_main:
            log_choice(self.alphas, counts.cpu(), alpha, epoch)

    def run(self, on_step: Callable[[StepInfo], None] | None = None) -> TrainSummary:
        cfg, rt, progress = self.cfg, self.rt, self.progress
        live = (
            open_epoch_log(self.metrics_dir, self.resumed_from is not None) if rt.is_main else None
        )
        batch = cfg.batch_size_x + (cfg.batch_size_u if self.plan.unlabeled else 0)
        samples_per_step = batch * rt.world
        loader_x, loader_u = self.loaders()
        iter_x = iter(loader_x)
        iter_u = iter(loader_u) if loader_u is not None else None
        if self._rank_state is not None:
            set_rng_state(self._rank_state["rng"])
        # Training time only (data included; validation and checkpoints excluded).
        run_seconds, run_steps, epoch_seconds, epoch_steps = 0.0, 0, 0.0, 0
        while progress.step < self.total_steps:
            if self.data_held is not None and progress.step % self.steps_per_epoch == 0:
                self.choose_fusion_alpha(progress.step // self.steps_per_epoch + 1)
            tick = time.perf_counter()
            loss = self._step(iter_x, iter_u)
            epoch_seconds += time.perf_counter() - tick
            epoch_steps += 1
            epoch = (progress.step - 1) // self.steps_per_epoch + 1
            if rt.is_main:
                speed = samples_per_step * epoch_steps / epoch_seconds
                self._report_step(epoch, loss, speed, on_step)
            if progress.step % self.steps_per_epoch == 0:
                run_seconds, run_steps = run_seconds + epoch_seconds, run_steps + epoch_steps
                self._end_epoch(epoch, epoch_steps / epoch_seconds, samples_per_step, live)
                epoch_seconds, epoch_steps = 0.0, 0
            elif cfg.checkpoint_every_steps and progress.step % cfg.checkpoint_every_steps == 0:
                self.save(["latest"])
        if live is not None:
            live.end()
        steps_per_s = run_steps / run_seconds if run_seconds else 0.0
        return TrainSummary(
            method=cfg.method,
            steps=progress.step,
            epochs=cfg.epochs,
            best_epoch=progress.best_epoch,
            best_val_oiou=progress.best_oiou,
            last_metrics=progress.history[-1] if progress.history else {},
            steps_per_s=steps_per_s,
            samples_per_s=steps_per_s * samples_per_step,
            resumed_from_step=self.resumed_from,
        )

    def _step(self, iter_x: Iterator[dict], iter_u: Iterator[dict] | None) -> float:
        """Fetch this rank's batches, train one step, count it; returns the step's loss."""
        cfg, rt, progress = self.cfg, self.rt, self.progress
        batch_x = to_device(next(iter_x), rt.device)
        batch_u = eval_u = None
        if iter_u is not None:
            batch_u, eval_u = split_eval_only(to_device(next(iter_u), rt.device))
            progress.visits_u += cfg.batch_size_u * rt.world
        result = self.trainer.step(batch_x, batch_u)
        self.stats.add(result, eval_u)
        progress.step += 1
        progress.visits_x += cfg.batch_size_x * rt.world
        return result.losses["loss"]

    def _report_step(
        self, epoch: int, loss: float, speed: float, on_step: Callable[[StepInfo], None] | None
    ) -> None:
        step, total = self.progress.step, self.total_steps
        if on_step is not None:
            on_step(StepInfo(step, total, epoch, loss, speed))
        if step % self.cfg.log_every == 0:
            agent = self.trainer.student.agent
            # RPLE's thresholds move every step; the epoch means hide how they got there.
            if agent is None:
                thresholds = ""
            else:
                tau_fg, tau_bg = agent.current.tolist()
                thresholds = f" tau {tau_fg:.3f}/{tau_bg:.3f}"
            log.info(
                "step %d/%d epoch %d loss %.4f%s %.1f samples/s",
                step,
                total,
                epoch,
                loss,
                thresholds,
                speed,
            )

    def _end_epoch(self, epoch: int, steps_per_s: float, samples_per_step: int, live: Any) -> None:
        cfg, progress = self.cfg, self.progress
        self.stats.all_reduce()
        metrics = {
            "epoch": epoch,
            **self.stats.compute(),
            "train/lr": self.trainer.schedule.get_last_lr()[0],
            "speed/steps_per_s": steps_per_s,
            "speed/samples_per_s": steps_per_s * samples_per_step,
        }
        if self.data_held is not None:
            metrics["u/fusion_alpha"] = self.trainer.student.fusion.alpha
        self.stats = EpochStats(self.rt.device)
        if epoch % self.params.eval.every_epochs == 0 or epoch == cfg.epochs:
            metrics |= self.validate()
        progress.history.append(metrics)
        improved = metrics.get("val/oIoU", -math.inf) > progress.best_oiou
        if improved:
            progress.best_oiou, progress.best_epoch = metrics["val/oIoU"], epoch
            if self.rt.is_main:
                best = {"step": progress.step, **metrics}
                (self.metrics_dir / "best.json").write_text(json.dumps(best, indent=2) + "\n")
        # best (and best.json) before latest: a kill between them resumes from the previous
        # latest and redoes the epoch, rewriting the same best; the other way round, latest
        # would record a best epoch whose best.pt was never written, and a kill after a
        # finished run's latest would leave best's temp file behind for good.
        self.save(["best", "latest"] if improved else ["latest"])
        if not self.rt.is_main:
            return
        if live is not None:
            log_epoch(live, epoch, metrics)
        log.info(
            "epoch %d/%d: loss %.4f val oIoU %s (best %.4f at epoch %d), %.2f steps/s",
            epoch,
            cfg.epochs,
            metrics.get("train/loss", math.nan),
            f"{metrics['val/oIoU']:.4f}" if "val/oIoU" in metrics else "-",
            progress.best_oiou,
            progress.best_epoch,
            steps_per_s,
        )


def run_training(
    params: TrainerParams,
    *,
    restart: bool = False,
    restart_if_stale: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
) -> TrainSummary:
    """Train as ``params`` says, resuming from ``paths.models/latest.pt`` when its config
    matches (``restart`` ignores it); single process or one rank under torchrun."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rt = start_runtime(params.train)
    try:
        return Run(params, rt, restart, restart_if_stale).run(on_step)
    finally:
        stop_runtime(rt)
