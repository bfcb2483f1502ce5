"""tuned_fusion's weight selection against hand-computed counts, and its held-out split."""

import pyarrow as pa
import pytest
import torch

from l2l_train.tuning import alpha_grid, best_alpha, fusion_counts, holdout_rows


def test_alpha_grid_is_tenths_at_eleven_points():
    assert alpha_grid(11).tolist() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert alpha_grid(3).tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="points"):
        alpha_grid(1)


def test_fusion_counts_binarise_each_alphas_fused_map():
    p_w = torch.tensor([0.95, 0.8, 0.2, 0.1]).view(1, 1, 1, 4)
    q = torch.tensor([0.1, 0.9, 0.9, 0.0]).view(1, 1, 1, 4)
    gt = torch.tensor([1, 1, 0, 0]).view(1, 1, 4)
    counts = fusion_counts(p_w, q, gt, torch.tensor([0.0, 0.5, 1.0]))
    # alpha 0 (q alone):  [0.1, 0.9, 0.9, 0.0] >= 0.5 -> [0, 1, 1, 0]: I 1, U 3
    # alpha 0.5:          [0.525, 0.85, 0.55, 0.05]   -> [1, 1, 1, 0]: I 2, U 3
    # alpha 1 (p_w alone): [0.95, 0.8, 0.2, 0.1]      -> [1, 1, 0, 0]: I 2, U 2
    expected = torch.tensor([[1.0, 3.0], [2.0, 3.0], [2.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(counts, expected)
    # Pairs add up: the same pair twice doubles every count.
    twice = fusion_counts(
        p_w.repeat(2, 1, 1, 1),
        q.repeat(2, 1, 1, 1),
        gt.repeat(2, 1, 1),
        torch.tensor([0.0, 0.5, 1.0]),
    )
    torch.testing.assert_close(twice, 2 * expected)
    with pytest.raises(ValueError, match="gt"):
        fusion_counts(p_w, q, gt[:, :, :3], torch.tensor([0.5]))


def test_best_alpha_takes_the_highest_oiou_and_the_first_of_ties():
    alphas = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    # oIoU 1/3, 2/3, 1 -> alpha 1
    assert best_alpha(torch.tensor([[1.0, 3.0], [2.0, 3.0], [2.0, 2.0]]), alphas) == 1.0
    # oIoU 0.5, 0.5, 0 -> the first of the tie, alpha 0
    assert best_alpha(torch.tensor([[2.0, 4.0], [1.0, 2.0], [0.0, 1.0]]), alphas) == 0.0
    # an empty union scores 0, not NaN: oIoU 0, 0.25, 0 -> alpha 0.5
    assert best_alpha(torch.tensor([[0.0, 0.0], [1.0, 4.0], [0.0, 3.0]]), alphas) == 0.5


def test_holdout_rows_split_by_image():
    rows = pa.table(
        {
            "sample_id": [f"s{i}" for i in range(7)],
            "image_id": [1, 1, 2, 3, 3, 3, 4],
        }
    )
    kept, held = holdout_rows(rows, ratio=0.25, seed=22)
    # max(1, round(0.25 * 4 images)) = 1 image held out, with all of its pairs.
    held_images = set(held["image_id"].to_pylist())
    assert len(held_images) == 1
    assert held_images.isdisjoint(kept["image_id"].to_pylist())
    assert sorted(kept["sample_id"].to_pylist() + held["sample_id"].to_pylist()) == sorted(
        rows["sample_id"].to_pylist()
    )
    image = held_images.pop()
    assert held.num_rows == rows["image_id"].to_pylist().count(image)
    # The same seed holds out the same image.
    assert holdout_rows(rows, ratio=0.25, seed=22)[1].equals(held)
    with pytest.raises(ValueError, match="none left for the labelled loss"):
        holdout_rows(rows.slice(0, 2), ratio=0.25, seed=22)  # one labelled image
