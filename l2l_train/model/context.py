"""Global context: one self-attention block over every token of a conditioned stage.

The pixel-word attention tells each token what the expression asks for, but a token alone
cannot tell whether it is "the second shape from the left": that needs the other shapes, and
how many lie to its left. A Swin relates tokens within its windows; the embedded default's
ResNet stand-in relates them only through convolutions. This block lets the conditioned
tokens of a stage attend to one another, with the stage's 2-D position code on queries and
keys so that "left of" and "second" have something to resolve against. Measured on the
embedded default (``benchmarks/README.md``), it lifts relational and spatial expressions;
ordinal ones stay the hardest.

Its output projections start at zero, so a pretrained encoder's features pass unchanged
until the block has learnt something to add.
"""

from __future__ import annotations

import torch
from torch import nn

from l2l_train.model.sesm import multi_head_attention, sincos_2d


class GlobalContext(nn.Module):
    """Pre-norm transformer block (multi-head self-attention, then a 2x MLP), residual.

    Shapes: tokens (B, N, C) on ``grid`` (h, w), N = h*w -> (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"GlobalContext: dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.attention_norm = nn.LayerNorm(dim)
        self.query_key = nn.Linear(dim, 2 * dim)
        self.value = nn.Linear(dim, dim)
        self.attention_out = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        for out in (self.attention_out, self.mlp[-1]):
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        channels = tokens.shape[-1]
        normed = self.attention_norm(tokens)
        code = sincos_2d(grid, channels, device=tokens.device, dtype=tokens.dtype)
        query, key = self.query_key(normed + code).chunk(2, dim=-1)
        attended = multi_head_attention(query, key, self.value(normed), self.num_heads)
        tokens = tokens + self.attention_out(attended)
        return tokens + self.mlp(self.mlp_norm(tokens))
