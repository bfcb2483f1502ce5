"""The optimiser around the student: AdamW, per-step poly decay, gradient clipping, and one
training step (forward and losses from :class:`~l2l_train.step.Student`, backward, update,
then the RPLE agent's update from the strong prediction)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from l2l_train.config import TrainConfig
from l2l_train.model import Segmentor
from l2l_train.step import Student, UnlabeledTargets


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


def segmentor_param_groups(model: Segmentor, cfg: TrainConfig) -> list[dict[str, Any]]:
    """:func:`param_groups` of the visual encoder at ``lr * encoder_lr_scale`` and of every
    other module at ``lr``: a pretrained encoder fine-tuned at the rate of the freshly
    initialised conditioning and decoder forgets what it was pretrained on."""
    rest = nn.ModuleList(module for name, module in model.named_children() if name != "visual")
    groups = [
        *(
            g | {"lr": cfg.lr * cfg.encoder_lr_scale}
            for g in param_groups(model.visual, cfg.weight_decay)
        ),
        *(g | {"lr": cfg.lr} for g in param_groups(rest, cfg.weight_decay)),
    ]
    return [g for g in groups if g["params"]]


def poly_factor(step: int, total_steps: int, power: float) -> float:
    """Learning-rate multiplier ``(1 - step / total_steps) ** power``, 0 from the end on."""
    return max(0.0, 1.0 - step / total_steps) ** power


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate multiplier of a linear warm-up: ``(step + 1) / warmup_steps`` for the
    first ``warmup_steps`` steps (the first step already moves), 1 from then on."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """The schedule's learning-rate multiplier at ``step``: the linear warm-up over
    ``cfg.lr_warmup_steps`` times the poly decay over ``total_steps``."""
    return warmup_factor(step, cfg.lr_warmup_steps) * poly_factor(step, total_steps, cfg.poly_power)


def build_optimization(
    model: Segmentor, cfg: TrainConfig, total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW, its linear warm-up over ``cfg.lr_warmup_steps`` and per-step poly decay over
    ``total_steps``."""
    optimizer = torch.optim.AdamW(segmentor_param_groups(model, cfg), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg)
    )
    return optimizer, schedule


class StepResult(NamedTuple):
    losses: dict[str, float]  # loss, sup; unsup, unsup_ce, unsup_dice; the agent's losses, reward
    targets: UnlabeledTargets | None


class Trainer:
    """A :class:`~l2l_train.step.Student` and its optimisation; :meth:`step` is one iteration."""

    def __init__(self, student: Student, total_steps: int) -> None:
        self.student, self.cfg = student, student.cfg
        self.optimizer, self.schedule = build_optimization(student.model, self.cfg, total_steps)

    def step(self, batch_x: dict[str, Any], batch_u: dict[str, Any] | None) -> StepResult:
        """One iteration on this rank's batches, both on the device (see
        :meth:`~l2l_train.step.Student.losses` for what they must hold)."""
        student = self.student
        # The per-step schedule's last_epoch counts the steps taken, resumed runs included.
        out = student.losses(batch_x, batch_u, step=self.schedule.last_epoch)
        self.optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(student.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.schedule.step()

        logged = {"loss": out.total.item(), **{k: v.item() for k, v in out.parts.items()}}
        if student.agent is not None and out.weak is not None:
            logged |= student.update_agent(out.logits_u_s, out.weak)
        return StepResult(logged, None if out.weak is None else out.weak.targets)

    def state_dict(self) -> dict[str, Any]:
        """Model, optimiser, schedule and the pseudo-label selection (``agent``, ``catm``,
        ``fusion_alpha``: :meth:`~l2l_train.step.Student.selection_state`)."""
        return {
            "model": self.student.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            **self.student.selection_state(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.student.model.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.schedule.load_state_dict(sd["schedule"])
        self.student.load_selection_state(sd)
