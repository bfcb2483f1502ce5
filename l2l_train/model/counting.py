"""Axis counts: how many marked things lie on each side of a token, along each image axis.

"The second triangle from the right" asks a token on a triangle how many triangles lie to its
right. Self-attention (:mod:`~l2l_train.model.context`) averages over the tokens it attends
to, so it tells a token *which* kinds of thing lie to its right, not *how many*: a count it
has to learn from examples, which the embedded student hardly does on its budget (without
this block about half of its ordinal predictions land on another shape of the scene,
``benchmarks/README.md``). This block makes counting along an axis a sum the network only
has to mark, in the manner of CornerNet's corner pooling (a running max along a direction;
here a running sum):

1. marks m = sigmoid(conv3x3(LayerNorm(tokens))): ``marks`` maps in [0, 1] the network learns
   to light, once per column (row) an object of the expression's group occupies;
2. per map, a column profile (the max of m over the rows) and a row profile (over columns);
3. per token, the profile's sum strictly left, right, above and below its own cell;
4. an MLP of the normed token and those counts, added back (the ordinal word is already in
   the conditioned token, so the MLP can compare the count with it).

Its output projection starts at zero, so a pretrained encoder's tokens pass unchanged until
the block has learnt something to add. Measured on the embedded default after stage 2 over
seeds 22-24 (``benchmarks/README.md``): ordinal expressions 19.2 -> 25.7 val oIoU, all pairs
+2.0, positive on every seed; after stages 1 and 2 it did worse (-5.9 on seeds 22-23).
"""

from __future__ import annotations

import torch
from torch import nn

from l2l_train.model.encoder import map_to_tokens, tokens_to_map


def counts_beside(profile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of a profile strictly before and strictly after each position.

    Shapes: profile (..., L). Returns: (before, after), each (..., L):
    ``before[i] = sum(profile[:i])``, ``after[i] = sum(profile[i + 1:])``.
    """
    through = profile.cumsum(dim=-1)
    return through - profile, through[..., -1:] - through


def axis_counts(marks: torch.Tensor) -> torch.Tensor:
    """Per cell, the marked columns strictly left and right of it and the marked rows strictly
    above and below it, a column (row) counting as its largest mark.

    Shapes: marks (B, K, h, w) in [0, 1]. Returns: (B, 4K, h, w): left, right, above, below,
    each (B, K, h, w).
    """
    height, width = marks.shape[-2:]
    left, right = counts_beside(marks.amax(dim=-2))  # (B, K, w)
    above, below = counts_beside(marks.amax(dim=-1))  # (B, K, h)
    return torch.cat(
        [
            left[..., None, :].expand(-1, -1, height, -1),
            right[..., None, :].expand(-1, -1, height, -1),
            above[..., None].expand(-1, -1, -1, width),
            below[..., None].expand(-1, -1, -1, width),
        ],
        dim=1,
    )


class AxisCount(nn.Module):
    """Marks, axis counts (:func:`axis_counts`), an MLP of token and counts; residual.

    Shapes: tokens (B, N, C) on ``grid`` (h, w), N = h*w -> (B, N, C).
    """

    def __init__(self, dim: int, marks: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mark = nn.Conv2d(dim, marks, kernel_size=3, padding=1)
        self.mlp = nn.Sequential(
            nn.Linear(dim + 4 * marks, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        normed = self.norm(tokens)
        marks = torch.sigmoid(self.mark(tokens_to_map(normed, grid)))
        counts = map_to_tokens(axis_counts(marks))  # (B, N, 4K)
        return tokens + self.mlp(torch.cat([normed, counts], dim=-1))
