"""One self-training step's forward: weak targets, strong views and losses (DESIGN.md section 4).

For a labelled batch ``x`` and an unlabelled batch ``u``:

1. Weak pass, no gradient: ``p_w = sigmoid(f(img_u_w, q))``, the model's correction of the
   teacher prior, as DESIGN.md has it (``train.weak_sees_prior``, the default). Without the
   prior (``weak_sees_prior: false``) ``p_w`` is the model's own prediction as it is
   evaluated; on the embedded default that variant agrees less with the teacher, its fused
   target falls below the raw prior and, run long, collapses (``benchmarks/README.md``). The
   model stays in train mode, as in FixMatch and UniMatch, where the weak view shares the
   training forward.
2. Target ``q_hat`` by the method's target strategy
   (:data:`~l2l_train.targets.TARGET_STRATEGIES`): SPM fusion of ``p_w`` and ``q`` (l2l),
   ``alpha p_w + (1 - alpha) q`` (fixed_fusion, agreement_filter, catm: ``alpha`` 0.5;
   tuned_fusion: the ``alpha`` chosen for the epoch) or ``p_w`` itself (fixmatch, l2l with
   ``spm: false``).
3. Thresholds: the RPLE agent's per-sample ``(tau_fg, tau_bg)`` (l2l with ``rple: true``),
   CATM's class-wise adaptive ones (catm) or the static ``train.tau_fg`` / ``train.tau_bg``;
   pseudo-labels with the ignore band; agreement_filter ignores whole pairs whose sources
   are not both confident and in agreement, ``train.ignore_conflicts`` (a diagnostic) the
   pixels where ``p_w`` and ``q`` fall on opposite sides of 0.5.
4. Strong view: intensity ops on the image (made in the data workers) and EDA on the text,
   conditioned on ``q_hat`` where the pair has a teacher prior. One forward carries the
   labelled and the strong unlabelled pairs; prior dropout hides priors at random.
5. ``L = L_sup + lambda_u (L_ce + lambda_dice L_dice)``.

:class:`Student` does all of this without an optimiser, so figures and benchmarks use it as
the loop does; :class:`~l2l_train.trainer.Trainer` adds the backward pass, the optimiser and
the agent's update (step 6).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from l2l_train.config import TrainConfig
from l2l_train.data import EVAL_ONLY_FIELDS, derive_seed
from l2l_train.eda import Synonyms, load_synonyms, strong_expressions
from l2l_train.losses import IGNORE_INDEX, supervised_loss, total_loss, unsupervised_loss
from l2l_train.model import Segmentor, TextTokenizer
from l2l_train.pairs import normalize_images
from l2l_train.rple import PseudoLabelAgent, compute_reward, rple_state
from l2l_train.runtime import Runtime, autocast, gather_rows, own_rows
from l2l_train.spm import agreement
from l2l_train.targets import (
    TARGET_STRATEGIES,
    ClassThresholds,
    MethodPlan,
    agreement_keep,
    band_in_input_frame,
    class_statistics,
    conflict_pixels,
    fusion_at,
    pseudo_labels,
    static_thresholds,
)
from l2l_train.text_cache import frozen_text_cache, sentence_embedder


class UnlabeledTargets(NamedTuple):
    """What the weak pass makes for an unlabelled batch, all detached, this rank's rows."""

    q: Tensor  # (B, 1, S, S) raw teacher prior, zeros where absent
    prior_present: Tensor  # (B,) bool
    q_hat: Tensor  # (B, 1, S, S) pseudo-label source and the strong view's prior
    agreement: Tensor  # (B,) soft IoU of p_w and q, 0 where the prior is absent
    thresholds: Tensor  # (B, 2) as (tau_fg, tau_bg)
    pseudo: Tensor  # (B, S, S) uint8 in {0, 1, IGNORE_INDEX}
    band: Tensor  # (B,) int64 ignore-band width in the input frame
    kept: Tensor | None = None  # (B,) bool pairs the agreement filter keeps; None: no filter


class WeakPass(NamedTuple):
    """:meth:`Student.weak_targets`' result."""

    targets: UnlabeledTargets
    states: (
        Tensor | None
    )  # (world * B, 6) the agent's states of every rank's samples; no RPLE: None
    thresholds_all: Tensor  # (world * B, 2) the thresholds chosen for every rank's samples


class StepLosses(NamedTuple):
    """:meth:`Student.losses`' result: the loss to back-propagate and what the agent needs."""

    total: Tensor  # () the step's loss
    parts: dict[str, Tensor]  # sup; with unlabelled pairs also unsup, unsup_ce, unsup_dice
    weak: WeakPass | None  # None without unlabelled pairs
    logits_u_s: Tensor  # (B_u, 1, S, S) the strong unlabelled views' logits (B_u = 0: none)


def prior_keep(generator: torch.Generator, batch_x: int, batch_u: int, cfg: TrainConfig) -> Tensor:
    """(batch_x + batch_u,) bool, labelled pairs first: which priors the gradient-carrying
    forward sees, each hidden with probability ``cfg.prior_dropout`` (an unlabelled pair's with
    ``cfg.prior_dropout_u`` where that is set). One draw per pair from ``generator``."""
    rate_u = cfg.prior_dropout if cfg.prior_dropout_u is None else cfg.prior_dropout_u
    rates = torch.tensor([cfg.prior_dropout] * batch_x + [rate_u] * batch_u)
    return torch.rand(batch_x + batch_u, generator=generator) >= rates


class Student:
    """The segmentor as a step sees it: its text inputs, the weak pass and targets, the strong
    forward and losses, the RPLE agent and the step's own random streams. ``model`` is the bare
    segmentor, ``ddp_model`` what gradients flow through (the same module outside DDP)."""

    def __init__(
        self,
        cfg: TrainConfig,
        plan: MethodPlan,
        rt: Runtime,
        model: Segmentor,
        tokenizer: TextTokenizer,
        expressions: Sequence[str] = (),
    ) -> None:
        """``expressions``: the texts whose features a frozen text encoder computes once (the
        training pairs' :func:`~l2l_train.augment.with_flips`); any other text is encoded when met."""
        self.cfg, self.plan, self.rt = cfg, plan, rt
        self.model, self.ddp_model = model, model
        self.tokenizer = tokenizer
        self.agent = PseudoLabelAgent(cfg.agent, rt.device) if plan.rple else None
        self.catm = ClassThresholds(cfg.catm.momentum) if plan.catm else None
        # The target strategies' settings; tuned_fusion sets its alpha every epoch.
        self.fusion = cfg.fusion
        self.synonyms: Synonyms = load_synonyms(cfg.augment.synonyms)
        self.text_cache = frozen_text_cache(model.text, tokenizer, rt.device, expressions)
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

    def text_inputs(self, expressions: Sequence[str]) -> dict[str, Tensor | None]:
        """The segmentor's text arguments: cached word features when the text encoder is
        frozen, else token ids (the encoder then runs, with gradients, in the forward)."""
        if self.text_cache is None:
            input_ids, attention_mask = self.tokenizer(expressions)
            device = self.rt.device
            return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        return self.text_cache.inputs(expressions)

    def set_fusion_alpha(self, alpha: float) -> None:
        """The linear target's weight on ``p_w`` from now on (tuned_fusion)."""
        self.fusion = dataclasses.replace(self.fusion, alpha=alpha)

    @torch.no_grad()
    def weak_probability(self, batch_u: dict[str, Any]) -> Tensor:
        """``p_w``, the weak pass's foreground probability on this rank's unlabelled batch.

        Shapes: batch_u's ``img_u_w`` (B, 3, S, S) uint8, ``prior_u`` (B, 1, S, S) ->
        (B, 1, S, S) float32.
        """
        with autocast(self.rt.device, self.rt.amp):
            text = self.text_inputs(batch_u["expr_u_w"])
            # Conditioned on q (train.weak_sees_prior), p_w is the model's correction of the
            # prior, and SPM fuses the prior with that; without it, p_w is the model's own
            # opinion, as it is evaluated.
            prior = (
                {"prior": batch_u["prior_u"], "prior_present": batch_u["prior_present_u"]}
                if self.cfg.weak_sees_prior
                else {}
            )
            logits_u_w = self.model(normalize_images(batch_u["img_u_w"]), **prior, **text)
        return torch.sigmoid(logits_u_w.float())

    @torch.no_grad()
    def weak_targets(
        self, batch_u: dict[str, Any], explore: bool = True, step: int | None = None
    ) -> WeakPass:
        """The weak pass, ``q_hat`` and the pseudo-labels of this rank's unlabelled batch
        (``explore``: as in training, the agent adds its exploration noise and CATM's
        statistics take the batch in; off, both only read their state; ``step``: the training
        steps taken, for :func:`~l2l_train.targets.fusion_at`)."""
        q, present = batch_u["prior_u"], batch_u["prior_present_u"]
        p_w = self.weak_probability(batch_u)
        agree = torch.where(present, agreement(p_w, q, self.cfg.fusion.eps), 0.0)
        fusion = fusion_at(self.plan.fusion, step, self.cfg.spm_warmup_steps)
        q_hat = TARGET_STRATEGIES[fusion](p_w, q, present, self.fusion)
        band = band_in_input_frame(
            self.cfg.agent.ignore_band, batch_u["original_hw_u"], q_hat.shape[-1]
        )
        states, thresholds_all = self.choose_thresholds(q_hat, agree, band, explore)
        thresholds = own_rows(thresholds_all, self.rt)
        pseudo = pseudo_labels(q_hat, thresholds, band)
        kept = None
        if self.plan.agreement_filter:
            kept = agreement_keep(p_w, q, agree, present, self.cfg.agreement)
            pseudo[~kept] = IGNORE_INDEX
        if self.cfg.ignore_conflicts:
            pseudo[conflict_pixels(p_w, q, present)] = IGNORE_INDEX
        targets = UnlabeledTargets(q, present, q_hat, agree, thresholds, pseudo, band, kept)
        return WeakPass(targets, states, thresholds_all)

    def choose_thresholds(
        self, q_hat: Tensor, agree: Tensor, band: Tensor, explore: bool = True
    ) -> tuple[Tensor | None, Tensor]:
        """(states, thresholds) for every rank's samples, (world * B, 6) and (world * B, 2).
        The agent acts on the gathered states, so each rank draws the same noise for the
        same sample and the agents stay in step."""
        batch = q_hat.shape[0] * self.rt.world
        if self.catm is not None:
            if explore:  # every rank's pixels, so the ranks' statistics stay in step
                self.catm.update(gather_rows(class_statistics(q_hat), self.rt))
            return None, self.catm.thresholds(batch, q_hat.device)
        if self.agent is None:
            return None, static_thresholds(batch, self.cfg.tau_fg, self.cfg.tau_bg, q_hat.device)
        states = gather_rows(self.agent.make_state(q_hat, agree, band), self.rt)
        return states, self.agent.act(states, explore=explore)

    def losses(
        self, batch_x: dict[str, Any], batch_u: dict[str, Any] | None, step: int
    ) -> StepLosses:
        """Steps 1-5 on this rank's labelled batch and (semi-supervised) unlabelled batch, both
        on the device, after ``step`` training steps. The unlabelled batch must come without its
        ground truth (:func:`~l2l_train.data.split_eval_only`): it is for observability, never
        for training."""
        if batch_u is not None and set(EVAL_ONLY_FIELDS) & set(batch_u):
            raise ValueError(
                f"the unlabelled batch carries {sorted(set(EVAL_ONLY_FIELDS) & set(batch_u))}: "
                "split it off with split_eval_only() before the training step"
            )
        cfg = self.cfg
        images = [normalize_images(batch_x["img_x"])]
        expressions = list(batch_x["expr_x"])
        priors, present = [batch_x["prior_x"]], [batch_x["prior_present_x"]]
        weak = None
        if batch_u is not None:
            weak = self.weak_targets(batch_u, step=step)
            expr_u_s = strong_expressions(
                batch_u["expr_u_w"], self.embed, cfg.augment, self.synonyms, self.text_rng
            )
            images.append(normalize_images(batch_u["img_u_s"]))
            expressions += expr_u_s
            priors.append(weak.targets.q_hat)
            present.append(weak.targets.prior_present)
        present_all = torch.cat(present)
        batch_size_x = batch_x["img_x"].shape[0]
        keep = prior_keep(self.dropout_rng, batch_size_x, len(present_all) - batch_size_x, cfg)
        present_all = present_all & keep.to(present_all.device)

        with autocast(self.rt.device, self.rt.amp):
            text = self.text_inputs(expressions)
            logits = self.ddp_model(
                torch.cat(images), prior=torch.cat(priors), prior_present=present_all, **text
            )
        logits_x, logits_u_s = logits[:batch_size_x], logits[batch_size_x:]
        l_sup = supervised_loss(logits_x, batch_x["mask_x"], cfg.loss)
        parts = {"sup": l_sup}
        loss = l_sup
        if weak is not None:
            unsup = unsupervised_loss(logits_u_s, weak.targets.pseudo, cfg.loss)
            loss = total_loss(l_sup, unsup.total, cfg.loss)
            parts |= {"unsup": unsup.total, "unsup_ce": unsup.ce, "unsup_dice": unsup.dice}
        return StepLosses(loss, parts, weak, logits_u_s)

    def update_agent(self, logits_u_s: Tensor, weak: WeakPass) -> dict[str, float]:
        """Reward the thresholds by the strong prediction, store every rank's transitions,
        one DDPG update. Returns the agent's losses and the mean reward."""
        targets = weak.targets
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
        self.agent.observe(weak.states, weak.thresholds_all, gathered[:, 0], gathered[:, 1:])
        return {**self.agent.update(), "reward": gathered[:, 0].mean().item()}

    def selection_state(self) -> dict[str, Any]:
        """What the pseudo-label selection learned or chose, for checkpoints: the RPLE agent,
        CATM's statistics (None where the method has neither) and the linear-fusion weight."""
        return {
            "agent": None if self.agent is None else self.agent.state_dict(),
            "catm": None if self.catm is None else self.catm.state_dict(),
            "fusion_alpha": self.fusion.alpha,
        }

    def load_selection_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`selection_state` (a checkpoint holds its keys at the top level)."""
        if self.agent is not None:
            self.agent.load_state_dict(state["agent"])
        if self.catm is not None:
            self.catm.load_state_dict(state["catm"])
        if "fusion_alpha" in state:  # checkpoints before the tuned_fusion method have none
            self.set_fusion_alpha(state["fusion_alpha"])

    def rng_state(self) -> dict[str, Any]:
        return {"text": self.text_rng.getstate(), "dropout": self.dropout_rng.get_state()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.text_rng.setstate(state["text"])
        self.dropout_rng.set_state(state["dropout"])
