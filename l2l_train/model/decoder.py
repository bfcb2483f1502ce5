"""LAVT-style decoder: top-down fusion of the conditioned stage maps to one logit map."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (no bias: the BatchNorm has one), BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FPNDecoder(nn.Module):
    """From the deepest stage upwards: upsample, concatenate the next shallower stage, two
    conv-BN-ReLU; then a 1x1 convolution to one foreground logit (LAVT's ``SimpleDecoding``
    with a single output channel).
    """

    def __init__(self, stage_dims: Sequence[int], dim: int) -> None:
        super().__init__()
        inputs = [stage_dims[-1] + stage_dims[-2]] + [dim + c for c in reversed(stage_dims[:-2])]
        self.fuse = nn.ModuleList(
            nn.Sequential(conv_bn_relu(channels, dim), conv_bn_relu(dim, dim))
            for channels in inputs
        )
        self.head = nn.Conv2d(dim, 1, kernel_size=1)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Shapes: maps[i] (B, C_i, h_i, w_i), shallowest first.

        Returns: foreground logits (B, 1, h_0, w_0) at the first stage's resolution.
        """
        x = maps[-1]
        for fuse, skip in zip(self.fuse, reversed(maps[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(torch.cat([x, skip], dim=1))
        return self.head(x)
