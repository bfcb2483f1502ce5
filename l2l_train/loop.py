"""The training loop: weak-to-strong self-training with SPM, SESM and RPLE (DESIGN.md section 4).

One step, for a labelled batch ``x`` and an unlabelled batch ``u``:

1. Weak pass, no gradient: ``p_w = sigmoid(f(img_u_w))``, the model's own prediction with no
   prior, as it is evaluated (DESIGN.md conditions it on ``q``; then the model learns to copy
   its input and SPM fuses the prior with a copy of itself). The model stays in train mode, as
   in FixMatch and UniMatch, where the weak view shares the training forward.
2. Target ``q_hat``: SPM fusion of ``p_w`` and ``q`` (l2l), ``0.5 p_w + 0.5 q``
   (fixed_fusion) or ``p_w`` itself (fixmatch, l2l with ``spm: false``); see :func:`plan_method`.
3. Thresholds: the RPLE agent's per-sample ``(tau_fg, tau_bg)`` (l2l with ``rple: true``) or
   the static ``train.tau_fg`` / ``train.tau_bg``; pseudo-labels with the ignore band.
4. Strong view: intensity ops on the image (made in the data workers) and EDA on the text,
   conditioned on ``q_hat`` where the pair has a teacher prior. One forward carries the
   labelled and the strong unlabelled pairs; prior dropout hides priors at random.
5. ``L = L_sup + lambda_u (L_ce + lambda_dice L_dice)``; AdamW, clipping, poly decay.
6. Agent: reward from the strong prediction, transitions observed, one DDPG update.

Under ``torchrun`` every rank runs this on its own batches inside DistributedDataParallel; the
agent's states are all-gathered before it acts and its transitions after, so every rank's
agent sees the same data and draws the same noise and stays identical without broadcasting
weights. Rank 0 alone logs and writes checkpoints; metrics are all-reduced.

An epoch is ``train.steps_per_epoch`` steps (default: one pass over the refs that drive it).
``latest`` is written at every epoch end (and every ``checkpoint_every_steps``), ``best`` at
each new best validation oIoU; a rerun resumes from ``latest`` when the config matches.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from l2l_train.augment import Synonyms, load_synonyms, strong_expressions
from l2l_train.checkpoint import (
    config_differences,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from l2l_train.config import TrainConfig, TrainerParams
from l2l_train.data import (
    EVAL_ONLY_FIELDS,
    EvalPairs,
    LabeledPairs,
    UnlabeledPairs,
    derive_seed,
    eval_loader,
    normalize_images,
    open_teacher_store,
    pair_source,
    split_eval_only,
    train_loader,
)
from l2l_train.evaluate import autocast, evaluate, resolve_device
from l2l_train.losses import supervised_loss, total_loss, unsupervised_loss
from l2l_train.metrics import IoUAccumulator, PseudoLabelAccumulator, binarize
from l2l_train.model import Segmentor, TextTokenizer, build_segmentor, build_tokenizer
from l2l_train.rple import (
    PseudoLabelAgent,
    band_in_input_frame,
    compute_reward,
    pseudo_labels,
    rple_state,
    static_thresholds,
)
from l2l_train.spm import agreement, fixed_fusion, fuse
from l2l_train.text_cache import FrozenTextCache
from pipeline.config import to_dict
from pipeline.teacher import teacher_identity

log = logging.getLogger(__name__)

# Settings that change how a run executes or is reported, not what it learns: a checkpoint
# written under other values of these still resumes.
RUNTIME_KEYS = (
    "eval",
    "paths",
    "data.workers",
    "data.verify_images",
    "train.num_workers",
    "train.log_every",
    "train.checkpoint_every_steps",
    "train.device",
    "train.amp",
)


class ConfigMismatchError(RuntimeError):
    """``latest`` was written under a config that differs in keys that shape the run."""


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class MethodPlan:
    """What ``train.method`` (with the l2l switches ``spm`` and ``rple``) turns on."""

    unlabeled: bool  # trains on unlabelled pairs
    teacher: bool  # reads the teacher's priors (model input, fusion)
    fusion: Literal["none", "fixed", "spm"]  # how q_hat is made from p_w and q
    rple: bool  # thresholds from the agent, else static train.tau_fg / tau_bg


def plan_method(cfg: TrainConfig) -> MethodPlan:
    """supervised: labelled pairs only, no prior. fixmatch (the paper's "Baseline w/o MLLM"):
    static thresholds on the model's own weak prediction, no teacher anywhere. fixed_fusion
    ("Baseline w/ MLLM"): static thresholds on ``0.5 p_w + 0.5 q``. l2l: SPM fusion (``p_w``
    when ``spm`` is off) and RPLE thresholds (static when ``rple`` is off)."""
    if cfg.method == "supervised":
        return MethodPlan(unlabeled=False, teacher=False, fusion="none", rple=False)
    if cfg.method == "fixmatch":
        return MethodPlan(unlabeled=True, teacher=False, fusion="none", rple=False)
    if cfg.method == "fixed_fusion":
        return MethodPlan(unlabeled=True, teacher=True, fusion="fixed", rple=False)
    return MethodPlan(
        unlabeled=True, teacher=True, fusion="spm" if cfg.spm else "none", rple=cfg.rple
    )


# ----------------------------------------------------------------------------- runtime


@dataclass(frozen=True)
class Runtime:
    """Where this process runs and its place among the ranks."""

    device: torch.device
    rank: int = 0
    world: int = 1
    amp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def start_runtime(cfg: TrainConfig) -> Runtime:
    """The device for this process and, under torchrun (``WORLD_SIZE`` > 1), the process
    group: nccl on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device=device, rank=rank, world=world, amp=cfg.amp and device.type == "cuda")


def stop_runtime(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather_rows(rows: Tensor, rt: Runtime) -> Tensor:
    """Every rank's rows in rank order (equal row counts per rank).

    Shapes: rows (B, ...) -> (world * B, ...).
    """
    if not rt.distributed:
        return rows
    parts = [torch.empty_like(rows) for _ in range(rt.world)]
    dist.all_gather(parts, rows.contiguous())
    return torch.cat(parts)


def broadcast_buffers(module: nn.Module, rt: Runtime) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them at
    the start of each forward, so between steps each rank holds the statistics of its own
    last batches; evaluation syncs them first so every rank scores the checkpointed model."""
    if rt.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def own_rows(rows: Tensor, rt: Runtime) -> Tensor:
    """This rank's block of rows gathered by :func:`gather_rows`."""
    batch = rows.shape[0] // rt.world
    return rows[rt.rank * batch : (rt.rank + 1) * batch]


# ----------------------------------------------------------------------------- optimisation


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters, with weight decay on matrices and kernels only: decaying biases,
    norm scales and the learned "absent" embedding pulls them to zero for no regularising gain."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def poly_factor(step: int, total_steps: int, power: float) -> float:
    """Learning-rate multiplier ``(1 - step / total_steps) ** power``, 0 from the end on."""
    return max(0.0, 1.0 - step / total_steps) ** power


def build_optimization(
    model: nn.Module, cfg: TrainConfig, total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its per-step poly decay over ``total_steps``."""
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: poly_factor(step, total_steps, cfg.poly_power)
    )
    return optimizer, schedule


def steps_per_epoch(
    cfg: TrainConfig, plan: MethodPlan, refs_x: int, refs_u: int, world: int
) -> int:
    """``cfg.steps_per_epoch``, else one pass over the driving refs (unlabelled for the
    semi-supervised methods, labelled for supervised) across all ranks."""
    if cfg.steps_per_epoch is not None:
        return cfg.steps_per_epoch
    refs, batch = (refs_u, cfg.batch_size_u) if plan.unlabeled else (refs_x, cfg.batch_size_x)
    return math.ceil(refs / (batch * world))


# ----------------------------------------------------------------------------- text


def sentence_embedder(
    text: nn.Module, tokenizer: TextTokenizer, device: torch.device
) -> Callable[[Sequence[str]], Tensor]:
    """Texts -> mean-pooled word features of the model's text encoder, (N, D): the sentence
    embedding MiniLM was trained for, used to filter EDA candidates by cosine similarity.

    The padding columns past the longest text are cut first: masked out, they change no
    embedding, and short expressions padded to ``max_tokens`` would cost several times the
    encoder passes (this filter encodes ``text_candidates + 1`` texts per unlabelled pair)."""

    def embed(texts: Sequence[str]) -> Tensor:
        input_ids, attention_mask = tokenizer(texts)
        length = int(attention_mask.sum(1).max())
        input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
        words, word_mask = text(input_ids.to(device), attention_mask.to(device))  # (N, T, D)
        weight = word_mask.unsqueeze(-1).to(words.dtype)
        return (words * weight).sum(1) / weight.sum(1).clamp_min(1.0)

    return embed


# ----------------------------------------------------------------------------- one step


class UnlabeledTargets(NamedTuple):
    """What the weak pass makes for an unlabelled batch, all detached, this rank's rows."""

    q: Tensor  # (B, 1, S, S) raw teacher prior, zeros where absent
    prior_present: Tensor  # (B,) bool
    q_hat: Tensor  # (B, 1, S, S) pseudo-label source and the strong view's prior
    agreement: Tensor  # (B,) soft IoU of p_w and q, 0 where the prior is absent
    thresholds: Tensor  # (B, 2) as (tau_fg, tau_bg)
    pseudo: Tensor  # (B, S, S) uint8 in {0, 1, IGNORE_INDEX}
    band: Tensor  # (B,) int64 ignore-band width in the input frame


class StepResult(NamedTuple):
    losses: dict[str, float]  # loss, sup; unsup, unsup_ce, unsup_dice; the agent's losses, reward
    targets: UnlabeledTargets | None


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device`` (asynchronous from pinned memory)."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()
    }


class Trainer:
    """Model, optimisation, agent and the step's own random streams; :meth:`step` is one
    iteration. ``model`` is the bare segmentor, ``ddp_model`` what gradients flow through
    (the same module outside DDP)."""

    def __init__(
        self,
        params: TrainerParams,
        plan: MethodPlan,
        rt: Runtime,
        model: Segmentor,
        tokenizer: TextTokenizer,
        total_steps: int,
        expressions: Sequence[str] = (),
    ) -> None:
        """``expressions``: the training pairs' texts, whose features a frozen text encoder
        computes once (any other text is encoded when met)."""
        cfg = params.train
        self.cfg, self.plan, self.rt = cfg, plan, rt
        self.model, self.ddp_model = model, model
        self.tokenizer = tokenizer
        self.optimizer, self.schedule = build_optimization(model, cfg, total_steps)
        self.agent = PseudoLabelAgent(cfg.agent, rt.device) if plan.rple else None
        self.synonyms: Synonyms = load_synonyms(cfg.augment.synonyms)
        self.text_cache = (
            None
            if model.text.trainable
            else FrozenTextCache(model.text, tokenizer, rt.device, expressions)
        )
        self.embed = (
            sentence_embedder(model.text, tokenizer, rt.device)
            if self.text_cache is None
            else self.text_cache.sentences
        )
        # Per-rank streams for the strong text and prior dropout, checkpointed with the run.
        self.text_rng = random.Random(derive_seed(cfg.seed, rt.rank, 1))
        self.dropout_rng = torch.Generator().manual_seed(derive_seed(cfg.seed, rt.rank, 2))

    def wrap_ddp(self) -> None:
        if self.rt.distributed:
            ids = [self.rt.device] if self.rt.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)

    # ------------------------------------------------------------------ pieces

    def text_inputs(self, expressions: Sequence[str]) -> dict[str, Tensor | None]:
        """The segmentor's text arguments: cached word features when the text encoder is
        frozen, else token ids (the encoder then runs, with gradients, in the forward)."""
        if self.text_cache is None:
            input_ids, attention_mask = self.tokenizer(expressions)
            device = self.rt.device
            return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        words, word_mask = self.text_cache.words(expressions)
        return {"input_ids": None, "attention_mask": None, "words": words, "word_mask": word_mask}

    @torch.no_grad()
    def weak_targets(
        self, batch_u: dict[str, Any], explore: bool = True
    ) -> tuple[UnlabeledTargets, Tensor | None, Tensor]:
        """The weak pass, ``q_hat`` and the pseudo-labels of this rank's unlabelled batch
        (``explore``: the agent adds its exploration noise, as in training).

        Returns: the targets; the agent's states of *every* rank's samples (None without
        RPLE) and the thresholds it chose for all of them, both (world * B, ...), for
        :meth:`update_agent`.
        """
        q, present = batch_u["prior_u"], batch_u["prior_present_u"]
        with autocast(self.rt.device, self.rt.amp):
            text = self.text_inputs(batch_u["expr_u_w"])
            # No prior in the weak pass: p_w is the model's own opinion, as it is evaluated.
            # Conditioned on q, the model learns to copy it, and SPM would fuse the prior with
            # a copy of itself (agreement ~ the prior's own quality, q_hat ~ q).
            logits_u_w = self.model(normalize_images(batch_u["img_u_w"]), **text)
        p_w = torch.sigmoid(logits_u_w.float())
        agree = torch.where(present, agreement(p_w, q, self.cfg.fusion.eps), 0.0)
        if self.plan.fusion == "spm":
            q_hat = fuse(p_w, q, present, self.cfg.fusion).q_hat
        elif self.plan.fusion == "fixed":
            q_hat = fixed_fusion(p_w, q, present)
        else:
            q_hat = p_w
        band = band_in_input_frame(
            self.cfg.agent.ignore_band, batch_u["original_hw_u"], q_hat.shape[-1]
        )
        states, thresholds_all = self.choose_thresholds(q_hat, agree, band, explore)
        thresholds = own_rows(thresholds_all, self.rt)
        pseudo = pseudo_labels(q_hat, thresholds, band)
        targets = UnlabeledTargets(q, present, q_hat, agree, thresholds, pseudo, band)
        return targets, states, thresholds_all

    def choose_thresholds(
        self, q_hat: Tensor, agree: Tensor, band: Tensor, explore: bool = True
    ) -> tuple[Tensor | None, Tensor]:
        """(states, thresholds) for every rank's samples, (world * B, 6) and (world * B, 2).
        The agent acts on the gathered states, so each rank draws the same noise for the
        same sample and the agents stay in step."""
        if self.agent is None:
            batch = q_hat.shape[0] * self.rt.world
            return None, static_thresholds(batch, self.cfg.tau_fg, self.cfg.tau_bg, q_hat.device)
        states = gather_rows(self.agent.make_state(q_hat, agree, band), self.rt)
        return states, self.agent.act(states, explore=explore)

    def prior_keep(self, batch: int) -> Tensor:
        """(batch,) bool: which priors survive prior dropout."""
        return torch.rand(batch, generator=self.dropout_rng) >= self.cfg.prior_dropout

    def update_agent(
        self,
        logits_u_s: Tensor,
        targets: UnlabeledTargets,
        states: Tensor,
        thresholds_all: Tensor,
    ) -> dict[str, float]:
        """Reward the thresholds by the strong prediction, store every rank's transitions,
        one DDPG update. Returns the agent's losses and the mean reward."""
        p_u_s = torch.sigmoid(logits_u_s.detach().float())
        reward = compute_reward(
            p_u_s,
            targets.q_hat,
            targets.pseudo,
            targets.thresholds,
            self.agent.current,
            self.cfg.agent,
        )
        next_state = rple_state(targets.q_hat, targets.agreement, targets.thresholds, targets.band)
        gathered = gather_rows(torch.cat([reward.total[:, None], next_state], dim=1), self.rt)
        self.agent.observe(states, thresholds_all, gathered[:, 0], gathered[:, 1:])
        return {**self.agent.update(), "reward": gathered[:, 0].mean().item()}

    # ------------------------------------------------------------------ step

    def step(self, batch_x: dict[str, Any], batch_u: dict[str, Any] | None) -> StepResult:
        """One iteration on this rank's labelled batch and (semi-supervised) unlabelled batch,
        both on the device. The unlabelled batch must come without its ground truth
        (:func:`~l2l_train.data.split_eval_only`): it is for observability, never for training."""
        if batch_u is not None and set(EVAL_ONLY_FIELDS) & set(batch_u):
            raise ValueError(
                f"the unlabelled batch carries {sorted(set(EVAL_ONLY_FIELDS) & set(batch_u))}: "
                "split it off with split_eval_only() before the training step"
            )
        cfg = self.cfg
        images = [normalize_images(batch_x["img_x"])]
        expressions = list(batch_x["expr_x"])
        priors, present = [batch_x["prior_x"]], [batch_x["prior_present_x"]]
        targets = states = thresholds_all = None
        if batch_u is not None:
            targets, states, thresholds_all = self.weak_targets(batch_u)
            expr_u_s = strong_expressions(
                batch_u["expr_u_w"], self.embed, cfg.augment, self.synonyms, self.text_rng
            )
            images.append(normalize_images(batch_u["img_u_s"]))
            expressions += expr_u_s
            priors.append(targets.q_hat)
            present.append(targets.prior_present)
        present_all = torch.cat(present)
        present_all = present_all & self.prior_keep(len(present_all)).to(present_all.device)

        with autocast(self.rt.device, self.rt.amp):
            text = self.text_inputs(expressions)
            logits = self.ddp_model(
                torch.cat(images), prior=torch.cat(priors), prior_present=present_all, **text
            )
        batch_size_x = batch_x["img_x"].shape[0]
        logits_x, logits_u_s = logits[:batch_size_x], logits[batch_size_x:]
        l_sup = supervised_loss(logits_x, batch_x["mask_x"], cfg.loss)
        losses = {"sup": l_sup}
        loss = l_sup
        if targets is not None:
            unsup = unsupervised_loss(logits_u_s, targets.pseudo, cfg.loss)
            loss = total_loss(l_sup, unsup.total, cfg.loss)
            losses |= {"unsup": unsup.total, "unsup_ce": unsup.ce, "unsup_dice": unsup.dice}

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.schedule.step()

        logged = {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}
        if self.agent is not None and targets is not None:
            logged |= self.update_agent(logits_u_s, targets, states, thresholds_all)
        return StepResult(logged, targets)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "agent": None if self.agent is None else self.agent.state_dict(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.schedule.load_state_dict(sd["schedule"])
        if self.agent is not None:
            self.agent.load_state_dict(sd["agent"])

    def rng_state(self) -> dict[str, Any]:
        return {"text": self.text_rng.getstate(), "dropout": self.dropout_rng.get_state()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.text_rng.setstate(state["text"])
        self.dropout_rng.set_state(state["dropout"])


# ----------------------------------------------------------------------------- epoch metrics


class Sums:
    """Named float64 sums, each with a count, in one tensor (DDP reduces them with one
    all_reduce); :meth:`means` divides each sum by its count."""

    def __init__(self, names: Sequence[str], device: torch.device) -> None:
        self.names = [n for name in names for n in (name, f"{name}/n")]
        self.values = torch.zeros(len(self.names), dtype=torch.float64, device=device)

    def add(self, name: str, value: float | Tensor, count: float | Tensor = 1) -> None:
        i = self.names.index(name)
        self.values[i] += value
        self.values[i + 1] += count

    def means(self) -> dict[str, float]:
        values = self.values.tolist()
        return {
            name: values[i] / values[i + 1]
            for i, name in enumerate(self.names)
            if not name.endswith("/n") and values[i + 1] > 0
        }


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
    where it is known, pseudo-label accuracy and coverage, mean thresholds and agreement."""

    def __init__(self, device: torch.device) -> None:
        self.losses = Sums(LOSS_NAMES, device)
        self.means = Sums(("tau_fg", "tau_bg", "agreement", "prior_present"), device)
        self.prior_raw = IoUAccumulator(device)
        self.prior_fused = IoUAccumulator(device)
        self.pseudo = PseudoLabelAccumulator(device)

    def _tensors(self) -> list[Tensor]:
        return [
            self.losses.values,
            self.means.values,
            self.prior_raw.sums,
            self.prior_fused.sums,
            self.pseudo.sums,
        ]

    def add(self, result: StepResult, eval_u: dict[str, Any] | None) -> None:
        for name, value in result.losses.items():
            self.losses.add(name, value)
        targets = result.targets
        if targets is None:
            return
        batch = targets.q_hat.shape[0]
        self.means.add("tau_fg", targets.thresholds[:, 0].sum(), batch)
        self.means.add("tau_bg", targets.thresholds[:, 1].sum(), batch)
        self.means.add("prior_present", targets.prior_present.sum(), batch)
        self.means.add(
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
        if dist.is_available() and dist.is_initialized():
            for tensor in self._tensors():
                dist.all_reduce(tensor)

    def compute(self) -> dict[str, float]:
        metrics = {f"train/{k}": v for k, v in self.losses.means().items()}
        metrics |= {f"u/{k}": v for k, v in self.means.means().items()}
        for name, accumulator in (("prior_raw", self.prior_raw), ("prior_fused", self.prior_fused)):
            if accumulator.sums.any():
                iou = accumulator.compute()
                metrics |= {f"u/{name}_oIoU": iou["oIoU"], f"u/{name}_mIoU": iou["mIoU"]}
        if self.pseudo.sums.any():
            quality = self.pseudo.compute()
            metrics |= {"u/pseudo_accuracy": quality["accuracy"], "u/coverage": quality["coverage"]}
        return metrics

    def state(self) -> list[Tensor]:
        return [t.cpu() for t in self._tensors()]

    def load_state(self, tensors: list[Tensor]) -> None:
        for mine, saved in zip(self._tensors(), tensors, strict=True):
            mine.copy_(saved)


# ----------------------------------------------------------------------------- checkpoints


def run_identity(params: TrainerParams) -> dict[str, Any]:
    """The resolved config a run's state depends on: everything but the teacher's runtime
    settings (the teacher enters through what makes its priors)."""
    config = to_dict(params)
    config.pop("priors")
    config["teacher"] = teacher_identity(params.priors)
    return config


def resumable_checkpoint(
    path: Path, params: TrainerParams, total_steps: int, restart_if_stale: bool
) -> dict[str, Any] | None:
    """``latest`` to resume from, None when there is none.

    A checkpoint written under other params raises :class:`ConfigMismatchError` naming the
    differing keys. With ``restart_if_stale`` (what ``dvc repro`` wants: a changed param, or
    changed code behind a finished run, means a new run) such a checkpoint, or one of a
    finished run, is set aside and training starts from scratch; an unfinished run with the
    same params still resumes.
    """
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path)
    differing = config_differences(ckpt["identity"], run_identity(params), ignore=RUNTIME_KEYS)
    if differing and not restart_if_stale:
        raise ConfigMismatchError(
            f"{path} was written by a run with different params ({', '.join(differing)}); "
            f"restore them to resume, or pass --restart to train from scratch"
        )
    if differing:
        log.info("%s has other params (%s): training from scratch", path, ", ".join(differing))
        return None
    if restart_if_stale and ckpt["progress"]["step"] >= total_steps:
        log.info("%s is a finished run: training again from scratch", path)
        return None
    return ckpt


@dataclass
class RunState:
    """Where a run stands; saved in every checkpoint."""

    step: int = 0
    visits_x: int = 0  # global visits consumed from each stream
    visits_u: int = 0
    best_oiou: float = -math.inf
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch metrics


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


# ----------------------------------------------------------------------------- the run


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
        source_x = pair_source(params, "labeled", self.tokenizer, cfg.image_size, store)
        self.data_x = LabeledPairs(source_x, cfg.seed, cfg.augment)
        self.data_u = None
        if self.plan.unlabeled:
            source_u = pair_source(
                params, "unlabeled", self.tokenizer, cfg.image_size, store, require_priors=True
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
            )
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
        self.trainer = Trainer(
            params, self.plan, rt, model, self.tokenizer, self.total_steps, expressions
        )
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
        self.trainer.wrap_ddp()

    def _resume(self, ckpt: dict[str, Any]) -> None:
        self.trainer.load_state_dict(ckpt)
        self.progress = RunState(**ckpt["progress"])
        self.resumed_from = self.progress.step
        rank_states = ckpt["rank_states"]
        if len(rank_states) == self.rt.world:
            self._rank_state = rank_states[self.rt.rank]
            self.trainer.set_rng_state(self._rank_state["trainer_rng"])
            self.stats.load_state(self._rank_state["epoch_stats"])
        else:
            log.warning(
                "resuming %d ranks from a checkpoint of %d: random streams are reseeded and "
                "the interrupted epoch's training metrics restart",
                self.rt.world,
                len(rank_states),
            )
            torch.manual_seed(derive_seed(self.cfg.seed, self.rt.rank, 6, self.progress.step))
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
            "trainer_rng": self.trainer.rng_state(),
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

    def validate(self) -> dict[str, float]:
        broadcast_buffers(self.trainer.model, self.rt)
        loader = eval_loader(
            self.data_val,
            self.params.eval.batch_size,
            rank=self.rt.rank,
            world=self.rt.world,
            num_workers=self.cfg.num_workers,
        )
        metrics = evaluate(
            self.trainer.model,
            loader,
            device=self.rt.device,
            amp=self.rt.amp,
            threshold=self.params.eval.threshold,
        )
        return {f"val/{k}": v for k, v in metrics.items()}

    def run(self, on_step: Callable[[StepInfo], None] | None = None) -> TrainSummary:
        cfg, rt, progress = self.cfg, self.rt, self.progress
        live = self._live()
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
            log.info(
                "step %d/%d epoch %d loss %.4f %.1f samples/s", step, total, epoch, loss, speed
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
        self.stats = EpochStats(self.rt.device)
        if epoch % self.params.eval.every_epochs == 0 or epoch == cfg.epochs:
            metrics |= self.validate()
        progress.history.append(metrics)
        improved = metrics.get("val/oIoU", -math.inf) > progress.best_oiou
        if improved:
            progress.best_oiou, progress.best_epoch = metrics["val/oIoU"], epoch
        self.save(["latest", "best"] if improved else ["latest"])
        if not self.rt.is_main:
            return
        if live is not None:
            live.step = epoch
            for name, value in metrics.items():
                if name != "epoch":
                    live.log_metric(name, value)
            live.next_step()
        if improved:
            best = {"step": progress.step, **metrics}
            (self.metrics_dir / "best.json").write_text(json.dumps(best, indent=2) + "\n")
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

    def _live(self) -> Any:
        """dvclive logger on rank 0 (per-epoch metrics and plots under paths.metrics/train);
        resumed runs append to its history."""
        if not self.rt.is_main:
            return None
        from dvclive import Live

        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        return Live(
            str(self.metrics_dir),
            resume=self.resumed_from is not None,
            dvcyaml=False,
            save_dvc_exp=False,
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
