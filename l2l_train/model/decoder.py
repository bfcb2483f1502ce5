"""LAVT-style decoder: top-down fusion of the conditioned stage maps to one logit map, then a
full-resolution refinement that sees the image (and the prior) at the input's own grid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# GroupNorm groups of the encoder's and decoder's convolutions. Group statistics are per
# sample, so pairs with and without a prior in one batch (conditioning feeds every later layer)
# normalise alike, as they do at evaluation (BatchNorm's running averages mix the two).
NORM_GROUPS = 8


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with :data:`NORM_GROUPS` groups (fewer when there are fewer channels)."""
    return nn.GroupNorm(min(NORM_GROUPS, channels), channels)


def conv_norm_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (no bias: the norm has one), GroupNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        group_norm(out_channels),
        nn.ReLU(inplace=True),
    )


class FPNDecoder(nn.Module):
    """From the deepest stage upwards: upsample, concatenate the next shallower stage, two
    conv-norm-ReLU (LAVT's ``SimpleDecoding``); the result, at the first stage's 1/4
    resolution, goes to :class:`FineHead`.
    """

    def __init__(self, stage_dims: Sequence[int], dim: int) -> None:
        super().__init__()
        inputs = [stage_dims[-1] + stage_dims[-2]] + [dim + c for c in reversed(stage_dims[:-2])]
        self.fuse = nn.ModuleList(
            nn.Sequential(conv_norm_relu(channels, dim), conv_norm_relu(dim, dim))
            for channels in inputs
        )

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Shapes: maps[i] (B, C_i, h_i, w_i), shallowest first.

        Returns: features (B, dim, h_0, w_0) at the first stage's resolution.
        """
        x = maps[-1]
        for fuse, skip in zip(self.fuse, reversed(maps[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(torch.cat([x, skip], dim=1))
        return x


class FineHead(nn.Module):
    """Foreground logits at the input resolution.

    A coarse logit from the 1/4-resolution features, upsampled, plus a correction computed at
    full resolution from those features, a shallow convolution of the image and (with
    ``prior_channels``) the prior map and its presence flag. At 1/4 resolution small objects
    span a few cells, so both the prediction and a perfect prior would lose their outlines
    there; this path keeps them.
    """

    def __init__(self, dim: int, prior_channels: int, fine_dim: int) -> None:
        """``fine_dim``: channels of the full-resolution refinement (small, since it runs on
        every input pixel)."""
        super().__init__()
        self.coarse = nn.Conv2d(dim, 1, kernel_size=1)
        self.reduce = nn.Conv2d(dim, fine_dim, kernel_size=1)
        self.image = conv_norm_relu(3, fine_dim)
        self.prior_channels = prior_channels
        self.refine = nn.Sequential(
            conv_norm_relu(2 * fine_dim + prior_channels, fine_dim),
            nn.Conv2d(fine_dim, 1, kernel_size=3, padding=1),
        )

    def forward(
        self, features: torch.Tensor, images: torch.Tensor, prior: torch.Tensor | None
    ) -> torch.Tensor:
        """Shapes: features (B, dim, h, w); images (B, 3, H, W) normalised; prior (B, P, H, W)
        with P = ``prior_channels`` (None when P is 0). Returns: logits (B, 1, H, W)."""
        size = images.shape[-2:]
        coarse = F.interpolate(
            self.coarse(features), size=size, mode="bilinear", align_corners=False
        )
        reduced = F.interpolate(
            self.reduce(features), size=size, mode="bilinear", align_corners=False
        )
        inputs = [reduced, self.image(images)]
        if self.prior_channels:
            inputs.append(prior)
        return coarse + self.refine(torch.cat(inputs, dim=1))
