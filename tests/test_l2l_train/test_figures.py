"""The figures' per-pair quantities, by hand on small tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l2l_train.figures import iou_against, pair_confidence, pseudo_label_image
from l2l_train.losses import IGNORE_INDEX


def test_pair_confidence_is_the_mean_margin_certainty():
    # |2p - 1| = 0, 1, 1, 0.5 -> mean 0.625; a constant 0.9 map -> 0.8
    p = torch.tensor([[[[0.5, 1.0], [0.0, 0.75]]], [[[0.9, 0.9], [0.9, 0.9]]]])
    assert pair_confidence(p).tolist() == pytest.approx([0.625, 0.8])


def test_iou_against_binarises_at_one_half():
    p = torch.tensor([[[[0.6, 0.4], [0.5, 0.1]]]])  # -> {1, 0, 1, 0}
    gt = torch.tensor([[[1, 1], [0, 0]]], dtype=torch.uint8)  # I = 1, U = 3
    assert iou_against(p, gt).item() == pytest.approx(1 / 3)


def test_pseudo_label_image_shows_ignored_pixels_grey():
    labels = torch.tensor([[1, 0], [IGNORE_INDEX, 1]], dtype=torch.uint8)
    assert np.array_equal(pseudo_label_image(labels), [[1.0, 0.0], [0.5, 1.0]])
