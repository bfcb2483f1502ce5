"""``l2l-train pretrain``: the embedded default's stand-in for ImageNet pretraining.

The paper's student starts from an ImageNet-22k Swin-B that already tells object categories
apart; a randomly initialised encoder has to learn them from the referring loss, which on
this machine's budget it barely does (``benchmarks/README.md``: expressions that name a shape
score about half of those that name only a colour). So the ResNet of the embedded default is
first trained on dense scene parsing, per pixel its shape (6 + background) and its colour
(6 + background), over synthetic scenes drawn from the ``pretrain`` random stream of the same
world (:data:`~pipeline.datasets.synthetic_scenes.PRETRAIN_STREAM`): no image, mask or
expression of train, val or test, and no referring, ever enters it. Measured on the L2L
default's recipe and budget, it lifts the student by 5.4 val oIoU (``benchmarks/README.md``,
the ablation), so ``dvc repro`` runs it as the ``pretrain`` stage and the default starts from
its output.

Writes ``pretrain.out`` (atomically): the encoder's state dict, the ``model.visual`` fields it
was built with and a report (held-out pixel accuracies); ``model.visual.path`` loads it
(:func:`~l2l_train.model.pretrained.load_resnet_weights`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2l_train.config import PretrainConfig, TrainerParams
from l2l_train.model.pretrained import RESNET_ARCHITECTURE, RESNET_FORMAT


@dataclass(frozen=True)
class ParsingSet:
    """Scenes for dense parsing. images (N, 3, S, S) uint8; shapes, colours (N, L, L) int64
    (L the label side, at most S), 0 background, ``k + 1`` for category k of SHAPES / COLORS."""

    images: Tensor
    shapes: Tensor
    colours: Tensor


@dataclass(frozen=True)
class PretrainSummary:
    steps: int
    train_s: float
    shape_accuracy: float  # held-out scenes, foreground pixels
    colour_accuracy: float
    out: Path


def scene_label_maps(
    labels: np.ndarray, shapes: list[str], colours: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel shape and colour categories of a scene.

    Shapes: labels (H, W) int, 0 background and ``k + 1`` where object k (draw order) is
    visible; ``shapes[k]``, ``colours[k]``: object k's names. Returns: two (H, W) int64 maps,
    0 background, ``SHAPES.index(name) + 1`` / ``list(COLORS).index(name) + 1`` elsewhere.
    """
    from pipeline.datasets.synthetic_scenes import COLORS, SHAPES

    shape_of = np.array([0] + [SHAPES.index(s) + 1 for s in shapes], dtype=np.int64)
    colour_of = np.array([0] + [list(COLORS).index(c) + 1 for c in colours], dtype=np.int64)
    return shape_of[labels], colour_of[labels]


class ParsingScenes(torch.utils.data.Dataset):
    """Scene ``first + i`` of the pretrain stream: image (3, S, S) uint8 at ``size`` px
    (antialiased), shape and colour maps (L, L) uint8 at ``label_size`` px (nearest; default
    ``size``), as the trainer resizes images and masks. Each scene depends on its index alone,
    so any worker may draw it."""

    def __init__(
        self, params: TrainerParams, first: int, count: int, size: int, label_size: int | None
    ) -> None:
        self.synthetic = params.data.synthetic
        self.first, self.count, self.size = first, count, size
        self.label_size = size if label_size is None else label_size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        from l2l_train.pairs import resize_image, resize_mask
        from pipeline.datasets.synthetic_scenes import PRETRAIN_STREAM, generate_scene

        scene = generate_scene(self.synthetic, PRETRAIN_STREAM, self.first + i)
        shape_map, colour_map = scene_label_maps(
            scene.labels, [o.shape for o in scene.objects], [o.color for o in scene.objects]
        )
        return (
            resize_image(scene.image, self.size),
            resize_mask(shape_map.astype(np.uint8), self.label_size),
            resize_mask(colour_map.astype(np.uint8), self.label_size),
        )


def render_parsing_set(
    params: TrainerParams,
    first: int,
    count: int,
    size: int,
    workers: int = 0,
    *,
    label_size: int | None = None,
) -> ParsingSet:
    """Scenes ``first .. first + count - 1`` of the pretrain stream (:class:`ParsingScenes`,
    labels at ``label_size``, default ``size``), drawn by ``workers`` DataLoader processes
    (0: this one); the same tensors either way."""
    # A generator of its own: the loader draws its workers' seed from it, not from the global
    # RNG that then initialises the encoder.
    loader = torch.utils.data.DataLoader(
        ParsingScenes(params, first, count, size, label_size),
        batch_size=64,
        num_workers=workers,
        generator=torch.Generator(),
    )
    images, shapes, colours = (torch.cat(parts) for parts in zip(*loader, strict=True))
    return ParsingSet(images, shapes.long(), colours.long())


class ParsingHead(nn.Module):
    """One 1x1 classifier per encoder stage, upsampled to the input and summed (a linear probe
    of every stage, so each one has to carry the categories).

    Shapes: maps, stage i (B, dims[i], h_i, w_i). Returns: (B, 2 * classes, H, W), shape
    logits first, then colour logits.
    """

    def __init__(self, dims: tuple[int, ...], classes: int) -> None:
        super().__init__()
        self.classes = classes
        self.probes = nn.ModuleList(nn.Conv2d(dim, 2 * classes, kernel_size=1) for dim in dims)

    def forward(self, maps: list[Tensor], size: tuple[int, int]) -> Tensor:
        return sum(
            F.interpolate(probe(m), size=size, mode="bilinear", align_corners=False)
            for probe, m in zip(self.probes, maps, strict=True)
        )


def parsing_loss(logits: Tensor, shapes: Tensor, colours: Tensor) -> Tensor:
    """Mean of the shape and colour cross-entropies over all pixels.

    Shapes: logits (B, 2C, H, W) as :class:`ParsingHead` returns; shapes, colours (B, H, W)
    int64 in [0, C). Returns: a scalar.
    """
    classes = logits.shape[1] // 2
    return 0.5 * (
        F.cross_entropy(logits[:, :classes], shapes) + F.cross_entropy(logits[:, classes:], colours)
    )


def foreground_accuracy(logits: Tensor, target: Tensor) -> float:
    """Fraction of foreground pixels (target > 0) whose argmax class is right.

    Shapes: logits (B, C, H, W), target (B, H, W) int64."""
    foreground = target > 0
    return float((logits.argmax(1)[foreground] == target[foreground]).float().mean())


def _no_condition(stage: int, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    return tokens


def _accuracies(encoder: nn.Module, head: ParsingHead, data: ParsingSet) -> tuple[float, float]:
    from l2l_train.pairs import normalize_images

    encoder.eval()
    with torch.no_grad():
        maps = encoder(normalize_images(data.images), _no_condition)
        logits = head(maps, tuple(data.images.shape[-2:]))
    encoder.train()
    return (
        foreground_accuracy(logits[:, : head.classes], data.shapes),
        foreground_accuracy(logits[:, head.classes :], data.colours),
    )


# What pretrain.out holds when model.visual is not the resnet: the DVC pretrain stage still
# writes its output, and a Swin starts from its own weights (model.visual.path).
SKIPPED_FORMAT = "l2l-pretrain-skipped/1"


def record_skipped_pretraining(params: TrainerParams) -> Path:
    """Write ``pretrain.out`` as a record that nothing was pretrained (``model.visual.kind``
    is not resnet); :func:`~l2l_train.model.pretrained.load_resnet_weights` refuses it."""
    from l2l_train.checkpoint import save_checkpoint

    kind = params.model.visual.kind
    reason = f"model.visual.kind is {kind}: it starts from model.visual.path, not pretrain.out"
    save_checkpoint(params.pretrain.out, {"format": SKIPPED_FORMAT, "reason": reason})
    return Path(params.pretrain.out)


def run_pretraining(
    params: TrainerParams, on_step: Callable[[int, int, float], None] | None = None
) -> PretrainSummary:
    """Train ``model.visual`` (kind resnet) on dense parsing and write ``pretrain.out``.
    ``on_step(step, total, loss)`` after every step. Deterministic for a given thread count."""
    from l2l_train.checkpoint import save_checkpoint
    from l2l_train.model.encoder import ResNetStages
    from l2l_train.pairs import normalize_images
    from l2l_train.trainer import param_groups, poly_factor
    from pipeline.datasets.synthetic_scenes import COLORS, SHAPES

    cfg: PretrainConfig = params.pretrain
    visual = params.model.visual
    if visual.kind != "resnet":
        raise ValueError(
            f"model.visual.kind: pretrain trains the resnet encoder, got {visual.kind!r} "
            "(a Swin loads its ImageNet weights from model.visual.path)"
        )
    torch.manual_seed(cfg.seed)
    train = render_parsing_set(
        params, 0, cfg.scenes, cfg.image_size, cfg.workers, label_size=cfg.label_size
    )
    # Held out at full resolution: the accuracy a user compares across label sizes.
    held_out = render_parsing_set(params, cfg.scenes, cfg.eval_scenes, cfg.image_size, cfg.workers)
    encoder = ResNetStages(visual).train()
    head = ParsingHead(encoder.dims, classes=1 + max(len(SHAPES), len(COLORS)))
    # The trainer's groups: no decay on biases and norm scales.
    groups = param_groups(torch.nn.ModuleList([encoder, head]), cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    poly = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: poly_factor(step, cfg.steps, cfg.poly_power)
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    label_size = (cfg.label_size, cfg.label_size)
    tick = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        rows = torch.randint(len(train.images), (cfg.batch_size,), generator=generator)
        # Horizontal flips: a shape's category does not depend on its side.
        flip = (torch.rand(cfg.batch_size, generator=generator) < 0.5)[:, None, None]
        images = torch.where(flip[..., None], train.images[rows].flip(-1), train.images[rows])
        shapes = torch.where(flip, train.shapes[rows].flip(-1), train.shapes[rows])
        colours = torch.where(flip, train.colours[rows].flip(-1), train.colours[rows])
        logits = head(encoder(normalize_images(images), _no_condition), label_size)
        loss = parsing_loss(logits, shapes, colours)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        poly.step()
        if on_step is not None:
            on_step(step, cfg.steps, loss.item())
    train_s = time.perf_counter() - tick
    shape_accuracy, colour_accuracy = _accuracies(encoder, head, held_out)
    report = {
        "steps": cfg.steps,
        "label_size": cfg.label_size,
        "train_s": train_s,
        "threads": torch.get_num_threads(),
        "held_out_scenes": cfg.eval_scenes,
        "shape_accuracy": shape_accuracy,
        "colour_accuracy": colour_accuracy,
    }
    save_checkpoint(
        cfg.out,
        {
            "format": RESNET_FORMAT,
            "visual": {name: getattr(visual, name) for name in RESNET_ARCHITECTURE},
            "state_dict": encoder.state_dict(),
            "report": report,
        },
    )
    return PretrainSummary(cfg.steps, train_s, shape_accuracy, colour_accuracy, Path(cfg.out))
