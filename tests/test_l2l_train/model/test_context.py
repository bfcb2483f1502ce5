"""The global-context block: identity at initialisation, hand-computed attention, reach
across the grid, and its config check (where the segmentor puts it: test_model.py)."""

from __future__ import annotations

import pytest
import torch

from l2l_train.config import ModelConfig
from l2l_train.model.context import GlobalContext
from pipeline.schema import ConfigError


def test_starts_as_identity():
    """Zero-initialised output projections: a pretrained encoder's tokens pass unchanged."""
    torch.manual_seed(0)
    block = GlobalContext(dim=8, num_heads=2)
    tokens = torch.randn(3, 4, 8)
    assert torch.equal(block(tokens, (2, 2)), tokens)


def test_uniform_attention_adds_the_mean_of_the_normed_tokens():
    """Hand-computed: with zero query/key projections every token attends uniformly (the
    position code then has no effect); with identity value and output projections and a
    zero MLP, token n becomes x_n + mean_m LayerNorm(x_m)."""
    block = GlobalContext(dim=4, num_heads=1)
    with torch.no_grad():
        block.query_key.weight.zero_()
        block.query_key.bias.zero_()
        block.value.weight.copy_(torch.eye(4))
        block.value.bias.zero_()
        block.attention_out.weight.copy_(torch.eye(4))
    tokens = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 4.0], [2.0, 2.0, 2.0, 6.0]]])
    # LayerNorm (unit scale, zero shift, eps 1e-5) of each row, by hand
    rows = tokens[0]
    normed = (rows - rows.mean(1, keepdim=True)) / torch.sqrt(
        rows.var(1, unbiased=False, keepdim=True) + 1e-5
    )
    expected = rows + normed.mean(0)
    assert torch.allclose(block(tokens, (1, 3))[0], expected, atol=1e-6)
    # first row by hand: mean 2.5, var 1.25 -> (-1.5, -0.5, 0.5, 1.5) / sqrt(1.25)
    assert torch.allclose(normed[0], torch.tensor([-1.5, -0.5, 0.5, 1.5]) / 1.25**0.5, atol=1e-5)


def test_every_token_sees_every_other():
    """After training moves the output projection off zero, changing one token changes the
    output of a token far from it on the grid (a convolution's would not)."""
    torch.manual_seed(0)
    block = GlobalContext(dim=8, num_heads=2)
    with torch.no_grad():
        block.attention_out.weight.normal_()
    tokens = torch.randn(1, 16, 8)
    moved = tokens.clone()
    # the far corner of a 4x4 grid, changed unevenly (a constant shift vanishes in LayerNorm)
    moved[0, 15] = torch.randn(8)
    delta = block(moved, (4, 4)) - block(tokens, (4, 4))
    assert delta[0, 0].abs().max() > 1e-4


def test_config_checks_context_stages():
    with pytest.raises(ConfigError, match=r"context_stages must be stages in 1\.\.4"):
        ModelConfig(context_stages=(0,))
    with pytest.raises(ConfigError, match="context_stages lists a stage twice"):
        ModelConfig(context_stages=(2, 2))
