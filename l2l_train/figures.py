"""Pictures of a trained run: ``l2l-train figures`` and the DVC ``figures`` stage.

Four PNGs under ``paths.metrics/figures`` (:data:`FIGURES`):

- ``confidence_scatter.png``, the paper's figure 1: for unlabelled pairs, the confidence of
  the teacher prior (x) against the model's own (y, prediction without a prior input), a
  pair's confidence being the spatial mean of the margin certainty ``|2p - 1|``
  (:func:`pair_confidence`). Colour: prior IoU minus model IoU against the ground truth,
  which the unlabelled pairs keep for observability only.
- ``pseudo_label_quality.png``, figure 9: per epoch, raw and fused prior IoU, the accuracy
  and coverage of the selected pixels on the unlabelled pairs trained on, and validation oIoU.
- ``examples.png``: unlabelled pairs as the training step sees them: the weak view and its
  expression, the teacher prior, the fused prior ``q_hat``, the pseudo-label (white
  foreground, black background, grey ignored), the model's prediction without a prior, the
  ground truth.
- ``confidence_maps.png``, figure 8: the model's foreground probability on validation pairs
  (grey scale, brighter = more confident foreground), ground truth outlined in green.

The unlabelled pictures need a method with a teacher (the fusion baselines or l2l); for
supervised and fixmatch runs only the last two are drawn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from l2l_train.checkpoint import load_checkpoint
from l2l_train.config import TrainerParams
from l2l_train.data import EvalPairs, UnlabeledPairs, collate_eval, split_eval_only, train_loader
from l2l_train.evaluate import model_from_checkpoint
from l2l_train.losses import IGNORE_INDEX
from l2l_train.metrics import binarize, intersection_union, pair_iou
from l2l_train.pairs import normalize_images, open_teacher_store, pair_source, resize_mask
from l2l_train.runtime import resolve_device, to_device
from l2l_train.spm import certainty
from l2l_train.step import Student

log = logging.getLogger(__name__)

FIGURES = {
    "scatter": "confidence_scatter.png",
    "quality": "pseudo_label_quality.png",
    "examples": "examples.png",
    "confidence": "confidence_maps.png",
}
# Per-epoch history keys of figure 9, as (key, label); all but val/oIoU are unlabelled-set
# training metrics.
QUALITY_CURVES = (
    ("u/prior_raw_oIoU", "raw prior IoU (pairs with a prior)"),
    ("u/prior_fused_oIoU", "fused prior IoU (same pairs)"),
    ("u/pseudo_accuracy", "selected-pixel accuracy (all pairs)"),
    ("u/coverage", "coverage (all pairs)"),
    ("val/oIoU", "val oIoU (model)"),
)


def pair_confidence(p: Tensor) -> Tensor:
    """A pair's confidence (figure 1): the spatial mean of the margin certainty ``|2p - 1|``.

    Shapes: p (B, 1, H, W) probabilities -> (B,).
    """
    return certainty(p).mean(dim=(1, 2, 3))


def iou_against(p: Tensor, gt: Tensor) -> Tensor:
    """IoU of each binarised map with its ground truth.

    Shapes: p (B, 1, H, W) probabilities, gt (B, H, W) {0, 1} -> (B,) float64.
    """
    return pair_iou(*intersection_union(binarize(p), gt))


@torch.no_grad()
def own_probability(model: torch.nn.Module, images: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """The model's foreground probability with no prior input (how it is evaluated).

    Shapes: images (B, 3, S, S) uint8, ids / mask (B, T) -> (B, 1, S, S).
    """
    return torch.sigmoid(model(normalize_images(images), ids, mask).float())


@dataclass(frozen=True)
class UnlabeledViews:
    """What the weak pass made for some unlabelled visits, on the CPU."""

    images: Tensor  # (N, 3, S, S) uint8 weak views
    expressions: list[str]
    prior: Tensor  # (N, 1, S, S) raw teacher prior
    prior_present: Tensor  # (N,) bool
    fused: Tensor  # (N, 1, S, S) q_hat
    pseudo: Tensor  # (N, S, S) uint8 {0, 1, IGNORE_INDEX}
    thresholds: Tensor  # (N, 2) tau_fg, tau_bg
    model: Tensor  # (N, 1, S, S) the model's probability without a prior
    gt: Tensor  # (N, S, S) uint8
    has_gt: Tensor  # (N,) bool


def student_from_checkpoint(ckpt: dict[str, Any], device: torch.device) -> tuple[Student, int]:
    """The run a checkpoint saved, as the :class:`Student` that trained it: its segmentor (in
    eval mode, on ``device``), its own train config and method plan (not ``params.yaml``'s) and
    its pseudo-label selection state (RPLE agent, CATM, fusion weight); with its input side."""
    from l2l_train.config import TrainConfig
    from l2l_train.model import build_tokenizer
    from l2l_train.runtime import Runtime
    from l2l_train.targets import plan_method
    from pipeline.schema import build_section

    model, model_cfg, image_size = model_from_checkpoint(ckpt)
    model.to(device).eval()
    train_cfg = build_section(TrainConfig, ckpt["config"]["train"], "train")
    plan = plan_method(train_cfg)
    tokenizer = build_tokenizer(model_cfg.text)
    student = Student(train_cfg, plan, Runtime(device=device), model, tokenizer)
    student.load_selection_state(ckpt)
    return student, image_size


def unlabeled_pairs(
    params: TrainerParams, student: Student, image_size: int, selection: str = "unlabeled"
) -> UnlabeledPairs:
    """The student's unlabelled training stream with its teacher priors from ``paths.priors``,
    in its run's seed and augmentation; ``selection`` (a partition role or an evaluation
    split, e.g. ``held_out``): that selection's pairs drawn the same way instead."""
    store = open_teacher_store(params)
    source = pair_source(
        params, selection, student.tokenizer, image_size, store, require_priors=True
    )
    return UnlabeledPairs(source, student.cfg.seed, student.cfg.augment)


def unlabeled_views(student: Student, data_u: UnlabeledPairs, count: int) -> UnlabeledViews:
    """Run the student's weak pass (agent without exploration noise) over the first ``count``
    visits of the unlabelled stream (at most one pass over its refs)."""
    device = student.rt.device
    count = min(count, len(data_u.visits))
    batch_size = min(count, 32)
    loader = train_loader(data_u, batch_size, start=0, rank=0, world=1, num_workers=0)
    parts: list[dict[str, Any]] = []
    for batch in loader:
        train_u, eval_u = split_eval_only(to_device(batch, device))
        targets = student.weak_targets(train_u, explore=False).targets
        model = own_probability(
            student.model,
            train_u["img_u_w"],
            train_u["input_ids_u_w"],
            train_u["attention_mask_u_w"],
        )
        parts.append(
            {
                "images": train_u["img_u_w"],
                "expressions": list(train_u["expr_u_w"]),
                "prior": targets.q,
                "prior_present": targets.prior_present,
                "fused": targets.q_hat,
                "pseudo": targets.pseudo,
                "thresholds": targets.thresholds,
                "model": model,
                "gt": eval_u["mask_u_eval"],
                "has_gt": eval_u["has_mask_u_eval"],
            }
        )
        if len(parts) * batch_size >= count:
            break
    joined = {
        key: [text for p in parts for text in p[key]]
        if key == "expressions"
        else torch.cat([p[key] for p in parts]).cpu()
        for key in parts[0]
    }
    return UnlabeledViews(**{key: value[:count] for key, value in joined.items()})


# ----------------------------------------------------------------------------- drawing


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> Path:
    plt = _pyplot()

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def _rgb(image: Tensor) -> np.ndarray:
    """(3, H, W) uint8 tensor -> (H, W, 3) uint8 array."""
    return image.permute(1, 2, 0).numpy()


def draw_confidence_scatter(views: UnlabeledViews, path: Path) -> Path:
    """Figure 1 over the pairs with a prior and a ground truth."""
    plt = _pyplot()

    keep = views.prior_present & views.has_gt
    if not keep.any():
        raise ValueError("figure 1: no unlabelled pair drawn has both a prior and a ground truth")
    prior_conf = pair_confidence(views.prior[keep]).numpy()
    model_conf = pair_confidence(views.model[keep]).numpy()
    gap = (
        iou_against(views.prior[keep], views.gt[keep])
        - iou_against(views.model[keep], views.gt[keep])
    ).numpy()
    figure, axes = plt.subplots(figsize=(5.2, 4.4))
    points = axes.scatter(
        prior_conf, model_conf, c=gap, cmap="coolwarm", vmin=-1, vmax=1, s=10, alpha=0.8
    )
    # One range for both axes, so the diagonal (equal confidence) stays at 45 degrees; it
    # starts near the lowest point because small targets leave most pixels confidently
    # background, which pushes every pair's confidence towards 1.
    low = max(0.0, float(min(prior_conf.min(), model_conf.min(), 1.0)) - 0.05)
    axes.plot([low, 1], [low, 1], color="grey", lw=0.8, ls="--")
    axes.set(
        xlim=(low, 1),
        ylim=(low, 1),
        xlabel="teacher prior confidence",
        ylabel="model confidence (no prior input)",
        title=f"Per-pair confidence, {len(prior_conf)} unlabelled pairs",
    )
    figure.colorbar(points, label="IoU(prior) - IoU(model)")
    return _save(figure, path)


def draw_quality_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Figure 9: the per-epoch curves present in ``history`` (in %)."""
    plt = _pyplot()

    figure, axes = plt.subplots(figsize=(6.0, 4.0))
    epochs = [int(h["epoch"]) for h in history]
    for key, label in QUALITY_CURVES:
        values = [h.get(key) for h in history]
        if all(v is None for v in values):
            continue
        y = [100 * v if v is not None else np.nan for v in values]
        axes.plot(epochs, y, marker="o", label=label)
    axes.set(xlabel="epoch", ylabel="%", title="Pseudo supervision per epoch", ylim=(0, 100))
    axes.set_xticks(epochs)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return _save(figure, path)


def pseudo_label_image(labels: Tensor) -> np.ndarray:
    """(H, W) {0, 1, IGNORE_INDEX} -> (H, W) float in [0, 1]: foreground 1, background 0,
    ignored 0.5."""
    out = labels.float()
    return torch.where(labels == IGNORE_INDEX, 0.5, out).numpy()


def draw_examples(views: UnlabeledViews, count: int, path: Path) -> Path:
    """The example grid: one unlabelled pair per row."""
    plt = _pyplot()

    rows = min(count, len(views.expressions))
    titles = (
        "weak view",
        "teacher prior",
        "fused prior",
        "pseudo-label",
        "prediction",
        "ground truth",
    )
    figure, axes = plt.subplots(
        rows, len(titles), figsize=(1.9 * len(titles), 2.1 * rows), squeeze=False
    )
    for r in range(rows):
        fg, bg = views.thresholds[r].tolist()
        panels = (
            (_rgb(views.images[r]), None),
            (views.prior[r, 0].numpy(), "magma"),
            (views.fused[r, 0].numpy(), "magma"),
            (pseudo_label_image(views.pseudo[r]), "gray"),
            (views.model[r, 0].numpy(), "magma"),
            (views.gt[r].numpy(), "gray"),
        )
        for c, (picture, cmap) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(picture, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
        axes[r, 0].set_ylabel(
            f'"{views.expressions[r]}"', fontsize=7, rotation=0, ha="right", va="center", wrap=True
        )
        axes[r, 3].set_xlabel(f"tau_fg {fg:.2f} / tau_bg {bg:.2f}", fontsize=7)
    figure.tight_layout()
    return _save(figure, path)


@torch.no_grad()
def draw_confidence_maps(
    model: torch.nn.Module,
    data: EvalPairs,
    count: int,
    image_size: int,
    device: torch.device,
    path: Path,
) -> Path:
    """Figure 8: pairs spread evenly over ``data``, image with the expression above its
    confidence map."""
    plt = _pyplot()

    picks = np.linspace(0, len(data) - 1, min(count, len(data))).round().astype(int)
    batch = collate_eval([data[int(i)] for i in picks])
    prob = own_probability(
        model,
        batch["image"].to(device),
        batch["input_ids"].to(device),
        batch["attention_mask"].to(device),
    ).cpu()
    columns = min(4, len(picks))
    rows = -(-len(picks) // columns)
    figure, axes = plt.subplots(
        2 * rows, columns, figsize=(2.4 * columns, 4.6 * rows), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for k, index in enumerate(picks):
        r, c = 2 * (k // columns), k % columns
        gt = resize_mask(batch["mask"][k].numpy(), image_size).numpy()
        axes[r, c].imshow(_rgb(batch["image"][k]))
        axes[r, c].set_title(f'"{data.source.expression[int(index)]}"', fontsize=7, wrap=True)
        axes[r + 1, c].imshow(prob[k, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[r + 1, c].contour(gt, levels=[0.5], colors="lime", linewidths=0.8)
    figure.tight_layout()
    return _save(figure, path)


# ----------------------------------------------------------------------------- entry point


def render_figures(params: TrainerParams, out_dir: str | Path | None = None) -> list[Path]:
    """Draw :data:`FIGURES` for the run in ``paths.models`` into ``out_dir`` (default
    ``paths.metrics/figures``), replacing earlier ones; returns the files written.

    The model pictures use ``figures.checkpoint``; figure 9 reads the whole run's history from
    ``latest.pt`` (``best.pt`` stops at its epoch). The method and its settings come from the
    checkpoint's own config, so the pictures show what that run did even if ``params.yaml``
    changed since; paths and the figure settings come from ``params``.
    """
    settings = params.figures
    out = Path(out_dir) if out_dir is not None else Path(params.paths.metrics) / "figures"
    models = Path(params.paths.models)
    checkpoint, latest = models / f"{settings.checkpoint}.pt", models / "latest.pt"
    for path in (checkpoint, latest):
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path} (run `l2l-train run` first)")
    for name in FIGURES.values():  # a method without a teacher draws fewer
        (out / name).unlink(missing_ok=True)

    device = resolve_device(params.train.device)
    ckpt = load_checkpoint(checkpoint, map_location=device)
    last = ckpt if checkpoint == latest else load_checkpoint(latest, map_location="cpu")
    written = [draw_quality_curves(last["progress"]["history"], out / FIGURES["quality"])]
    student, image_size = student_from_checkpoint(ckpt, device)
    if student.plan.teacher:
        views = unlabeled_views(
            student, unlabeled_pairs(params, student, image_size), settings.pairs
        )
        written.append(draw_confidence_scatter(views, out / FIGURES["scatter"]))
        written.append(draw_examples(views, settings.examples, out / FIGURES["examples"]))
    else:
        log.info("method %s has no teacher: no confidence scatter or examples", student.cfg.method)
    val = EvalPairs(pair_source(params, params.eval.val_split, student.tokenizer, image_size, None))
    path = out / FIGURES["confidence"]
    written.append(
        draw_confidence_maps(student.model, val, settings.confidence_maps, image_size, device, path)
    )
    return written
