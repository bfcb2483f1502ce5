"""benchmarks/strong_views.py: readable magnitude ranges and overall IoU, by hand."""

from __future__ import annotations

import pytest
import torch
from benchmark_scripts import import_benchmark


@pytest.fixture(scope="module")
def strong_views():
    return import_benchmark("strong_views")


def test_readable_range_stops_at_the_first_magnitude_below_keep(strong_views):
    """Mildest first: 0.95, 0.8, 0.65 keep >= 0.9, 0.5 does not; 0.2 recovers but lies past
    the first failure, so it is not part of the range."""
    magnitudes = (0.95, 0.8, 0.65, 0.5, 0.2)
    retention = (1.0, 0.96, 0.9, 0.82, 0.95)
    assert strong_views.readable(retention, magnitudes, keep=0.9) == [0.65, 0.95]
    assert strong_views.readable(retention, magnitudes, keep=0.97) == [0.95, 0.95]
    # Blur's grid grows from its mildest sigma, so the range is [mildest, last kept].
    assert strong_views.readable((0.99, 0.93, 0.88), (0.1, 1.0, 1.5), keep=0.9) == [0.1, 1.0]


def test_an_op_unreadable_at_its_mildest_has_no_range(strong_views):
    assert strong_views.readable((0.72,), (0.0,), keep=0.9) is None


def test_oiou_sums_intersections_and_unions_over_pairs(strong_views):
    """Pair 1: 2 of 4 predicted pixels right, union 4 (IoU 0.5); pair 2: one predicted and
    one true pixel of a 2x2 map, disjoint, union 2. oIoU = (2 + 0) / (4 + 2) = 1/3, unlike the mean IoU 1/4."""
    preds = [torch.tensor([[1, 1, 1, 1]]).bool(), torch.tensor([[1, 0], [0, 0]]).bool()]
    gts = [torch.tensor([[1, 1, 0, 0]]).bool(), torch.tensor([[0, 0], [0, 1]]).bool()]
    assert strong_views.oiou(preds, gts) == pytest.approx(1 / 3)


def test_the_grid_covers_every_intensity_op_train_augment_can_draw(strong_views):
    from typing import get_args

    from l2l_train.config import IntensityOp

    assert set(strong_views.GRID) == set(get_args(IntensityOp))
