"""The axis-count block: hand-computed counts, identity at initialisation, reach along the
axes, and its config check (where the segmentor puts it: test_model.py)."""

from __future__ import annotations

import pytest
import torch

from l2l_train.config import ModelConfig
from l2l_train.model.counting import AxisCount, axis_counts, counts_beside
from pipeline.schema import ConfigError


def test_counts_beside_sums_strictly_before_and_after():
    before, after = counts_beside(torch.tensor([1.0, 0.0, 0.5, 1.0]))
    assert before.tolist() == [0.0, 1.0, 1.0, 1.5]
    assert after.tolist() == [1.5, 1.5, 1.0, 0.0]


def test_axis_counts_rank_three_marked_objects():
    """Three one-cell objects on a 3x5 grid, at (row, col) (0, 0), (2, 2) and (1, 4), and a
    half mark under the first (same column: a column counts once, as its largest mark).
    By hand, per object: columns marked to its left 0 / 1 / 2, to its right 2 / 1 / 0; rows
    marked above 0 / 2 / 1, below 2 / 0 / 1 (row 1 holds the half mark and the third object)."""
    marks = torch.zeros(1, 1, 3, 5)
    marks[0, 0, 0, 0] = marks[0, 0, 2, 2] = marks[0, 0, 1, 4] = 1.0
    marks[0, 0, 1, 0] = 0.5
    counts = axis_counts(marks)
    assert counts.shape == (1, 4, 3, 5)
    left, right, above, below = counts[0]
    cells = [(0, 0), (2, 2), (1, 4)]
    assert [left[c].item() for c in cells] == [0.0, 1.0, 2.0]
    assert [right[c].item() for c in cells] == [2.0, 1.0, 0.0]
    assert [above[c].item() for c in cells] == [0.0, 2.0, 1.0]
    assert [below[c].item() for c in cells] == [2.0, 0.0, 1.0]
    # counts depend on the cell's column (left, right) or row (above, below) alone
    assert torch.equal(left, left[:1].expand(3, -1))
    assert torch.equal(above, above[:, :1].expand(-1, 5))


def test_starts_as_identity():
    """Zero-initialised output projection: a pretrained encoder's tokens pass unchanged."""
    torch.manual_seed(0)
    block = AxisCount(dim=8, marks=2)
    tokens = torch.randn(3, 12, 8)
    assert torch.equal(block(tokens, (3, 4)), tokens)


def test_a_far_token_moves_the_count():
    """Once the output projection is off zero, changing a token in the last column changes
    the first column's output through the counts (a 3x3 convolution alone would not reach)."""
    torch.manual_seed(0)
    block = AxisCount(dim=8, marks=2)
    with torch.no_grad():
        block.mlp[-1].weight.normal_()
    tokens = torch.randn(1, 24, 8)
    moved = tokens.clone()
    moved[0, 23] = 3 * torch.randn(8)  # row 3, column 5 of a 4x6 grid
    delta = block(moved, (4, 6)) - block(tokens, (4, 6))
    assert delta[0, 0].abs().max() > 1e-4


def test_config_checks_count_stages():
    with pytest.raises(ConfigError, match=r"count_stages must be stages in 1\.\.4"):
        ModelConfig(count_stages=(5,))
    with pytest.raises(ConfigError, match="count_stages lists a stage twice"):
        ModelConfig(count_stages=(2, 2))
