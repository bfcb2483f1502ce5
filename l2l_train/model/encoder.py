"""Hierarchical visual encoders, driven one stage at a time: transformers' Swin, or a small
ResNet of torchvision blocks for CPU runs of the embedded default.

LAVT conditions each stage on the expression *after the stage's blocks and before its patch
merging*, so the next stage already sees conditioned features. ``SwinModel.forward`` runs the
whole hierarchy in one call, so :class:`SwinStages` takes its patch embedding and its stage
modules (transformers' code and weights, unchanged) and calls blocks, a conditioning step and
the patch merging in that order itself.

Frames: an input image (B, 3, H, W) becomes a token grid (h_1, w_1) = ceil((H, W) / patch);
stage i (0-based) works on the grid halved i times (rounded up), with ``embed_dim * 2**i``
channels. Tokens are (B, h*w, C) in row-major grid order; maps are (B, C, h, w).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from l2l_train.config import VisualConfig
from l2l_train.model.decoder import group_norm
from l2l_train.model.pretrained import (
    from_pretrained_strict,
    load_resnet_weights,
    local_model_folder,
)

# A Swin checkpoint from an ImageNet classifier carries its head; the encoder has no use for it.
_UNUSED_SWIN_KEYS = ("classifier.",)

# The ResNet stem's two convolution strides for each ``patch_size`` (its first grid's cell).
STEM_STRIDES = {1: (1, 1), 2: (2, 1), 4: (2, 2)}

# condition(stage index, tokens (B, h*w, C), grid (h, w)) -> tokens (B, h*w, C)
StageCondition = Callable[[int, torch.Tensor, tuple[int, int]], torch.Tensor]


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Shapes: tokens (B, h*w, C) in row-major grid order. Returns: map (B, C, h, w)."""
    batch, _, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, channels, *grid)


def map_to_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """Shapes: feature_map (B, C, h, w). Returns: tokens (B, h*w, C), row-major."""
    return feature_map.flatten(2).transpose(1, 2)


def halve_grid(grid: tuple[int, int]) -> tuple[int, int]:
    """The grid after Swin's patch merging, which pads odd sides by one."""
    return (grid[0] + 1) // 2, (grid[1] + 1) // 2


class SwinStages(nn.Module):
    """Swin's patch embedding and stages, run stage by stage with a conditioning step.

    Attributes: ``dims`` channels per stage, ``num_heads`` attention heads per stage (both from
    the Swin config, so a loaded checkpoint defines them), ``out_norms`` one LayerNorm per
    stage output (LAVT normalises every stage it hands to the decoder; Swin only has one for
    its last stage, which is not used here).
    """

    def __init__(self, swin: Any) -> None:
        super().__init__()
        config = swin.config
        self.embeddings = swin.embeddings
        self.stages = swin.encoder.layers
        self.dims = tuple(int(config.embed_dim * 2**i) for i in range(len(config.depths)))
        self.num_heads = tuple(config.num_heads)
        self.out_norms = nn.ModuleList(nn.LayerNorm(dim) for dim in self.dims)

    def forward(self, images: torch.Tensor, condition: StageCondition) -> list[torch.Tensor]:
        """Shapes: images (B, 3, H, W), ImageNet-normalised.

        Returns: one normalised map per stage, (B, C_i, h_i, w_i), each taken after
        ``condition`` and before the patch merging that feeds the next stage.
        """
        # Interpolation only matters for Swin variants with absolute position embeddings
        # (Swin-B has none); it lets them take any input size.
        tokens, grid = self.embeddings(images, interpolate_pos_encoding=True)
        maps = []
        for index, stage in enumerate(self.stages):
            for block in stage.blocks:
                # always_partition pads the grid to whole windows, as LAVT's Swin does; without
                # it transformers shrinks the window on small grids and keeps it shrunk.
                tokens = block(tokens, grid, always_partition=True)[0]
            tokens = condition(index, tokens, grid)
            maps.append(tokens_to_map(self.out_norms[index](tokens), grid))
            if stage.downsample is not None:
                tokens = stage.downsample(tokens, grid)
                grid = halve_grid(grid)
        return maps


class ResNetStages(nn.Module):
    """A small ResNet, four stages of torchvision's ``BasicBlock``, run stage by stage with a
    conditioning step, as :class:`SwinStages` (same ``dims``, ``num_heads``, ``out_norms`` and
    frames: stage i at 1/2**(i+2) of the input, ``embed_dim * 2**i`` channels).

    Stem: two stride-2 3x3 convolutions (the 1/4 grid of Swin's 4x4 patches). Stage i > 0
    starts with a stride-2 block; the conditioned features of stage i feed stage i + 1.
    """

    def __init__(self, cfg: VisualConfig) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.dims = tuple(int(cfg.embed_dim * 2**i) for i in range(len(cfg.depths)))
        self.num_heads = tuple(cfg.num_heads)
        half = self.dims[0] // 2
        if cfg.patch_size not in STEM_STRIDES:
            raise ValueError(
                f"model.visual.patch_size: the ResNet stem takes {sorted(STEM_STRIDES)}, "
                f"got {cfg.patch_size}"
            )
        first, second = STEM_STRIDES[cfg.patch_size]
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, kernel_size=3, stride=first, padding=1, bias=False),
            group_norm(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, self.dims[0], kernel_size=3, stride=second, padding=1, bias=False),
            group_norm(self.dims[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        channels = self.dims[0]
        for index, (dim, depth) in enumerate(zip(self.dims, cfg.depths, strict=True)):
            stride = 1 if index == 0 else 2
            shortcut = None
            if stride != 1 or channels != dim:
                shortcut = nn.Sequential(
                    nn.Conv2d(channels, dim, kernel_size=1, stride=stride, bias=False),
                    group_norm(dim),
                )
            blocks = [BasicBlock(channels, dim, stride, shortcut, norm_layer=group_norm)]
            blocks += [BasicBlock(dim, dim, norm_layer=group_norm) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = dim
        self.stages = nn.ModuleList(stages)
        self.out_norms = nn.ModuleList(nn.LayerNorm(dim) for dim in self.dims)

    def forward(self, images: torch.Tensor, condition: StageCondition) -> list[torch.Tensor]:
        """Shapes: images (B, 3, H, W), ImageNet-normalised.

        Returns: one normalised map per stage, (B, C_i, h_i, w_i), each taken after
        ``condition``.
        """
        x = self.stem(images)
        maps = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            grid = (x.shape[-2], x.shape[-1])
            tokens = condition(index, map_to_tokens(x), grid)
            maps.append(tokens_to_map(self.out_norms[index](tokens), grid))
            x = tokens_to_map(tokens, grid)
        return maps


def swin_config_from_params(cfg: VisualConfig) -> Any:
    """The transformers ``SwinConfig`` described by the ``model.visual`` params."""
    from transformers import SwinConfig

    return SwinConfig(
        embed_dim=cfg.embed_dim,
        depths=list(cfg.depths),
        num_heads=list(cfg.num_heads),
        window_size=cfg.window_size,
        patch_size=cfg.patch_size,
        drop_path_rate=cfg.drop_path_rate,
    )


def build_visual_encoder(
    cfg: VisualConfig, *, load_weights: bool = True
) -> SwinStages | ResNetStages:
    """The ResNet (``kind: resnet``) or Swin, from ``cfg.path`` (a pretrained ResNet file or a
    Swin folder; weights loaded strictly unless ``load_weights`` is false, e.g. before
    restoring a whole-model checkpoint) or, with no path, from the params at random init."""
    if cfg.kind == "resnet":
        encoder = ResNetStages(cfg)
        if cfg.path is not None and load_weights:
            load_resnet_weights(encoder, cfg.path, cfg)
        return encoder
    from transformers import SwinConfig, SwinModel

    if cfg.path is None:
        return SwinStages(SwinModel(swin_config_from_params(cfg), add_pooling_layer=False))
    folder = local_model_folder(cfg.path, "model.visual.path")
    config = SwinConfig.from_pretrained(folder, local_files_only=True)
    check_swin_layout(config, cfg.path)
    if not load_weights:
        config.drop_path_rate = cfg.drop_path_rate
        return SwinStages(SwinModel(config, add_pooling_layer=False))
    swin = from_pretrained_strict(
        SwinModel,
        folder,
        _UNUSED_SWIN_KEYS,
        add_pooling_layer=False,
        drop_path_rate=cfg.drop_path_rate,
    )
    return SwinStages(swin)


def check_swin_layout(config: Any, source: str) -> None:
    """Raise unless the Swin has the 4-stage layout the conditioning and decoder expect."""
    if len(config.depths) != 4:
        raise ValueError(f"{source}: expected a 4-stage Swin, got depths {list(config.depths)}")
    if config.embed_dim % 4:
        raise ValueError(f"{source}: expected embed_dim a multiple of 4, got {config.embed_dim}")
