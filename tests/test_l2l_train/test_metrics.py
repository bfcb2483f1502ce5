"""Metrics against hand-computed values: oIoU vs mIoU, precision, streaming, DDP sums."""

import pytest
import torch
import torch.distributed as dist

from l2l_train.losses import IGNORE_INDEX
from l2l_train.metrics import (
    IoUAccumulator,
    PseudoLabelAccumulator,
    binarize,
    intersection_union,
    pair_iou,
)

X = IGNORE_INDEX


def crafted_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A large object predicted well and a small one predicted badly, (2, 10, 10) each.

    Pair 0: gt rows 0-4 (50 px), pred rows 0-3 (40 px): I = 40, U = 50, IoU 0.8.
    Pair 1: gt a 2x2 square (4 px), pred one of its pixels plus 3 outside: I = 1, U = 7.
    """
    gt = torch.zeros(2, 10, 10, dtype=torch.bool)
    pred = torch.zeros_like(gt)
    gt[0, :5] = True
    pred[0, :4] = True
    gt[1, 0:2, 0:2] = True
    pred[1, 0, 0] = True
    pred[1, 5, 5:8] = True
    return pred, gt


def test_intersection_union_per_pair():
    inter, union = intersection_union(*crafted_pair())
    assert inter.tolist() == [40, 1] and union.tolist() == [50, 7]


def test_oiou_and_miou_differ_on_the_crafted_pair():
    acc = IoUAccumulator()
    acc.update(*crafted_pair())
    m = acc.compute()
    assert m["oIoU"] == pytest.approx(41 / 57)  # (40 + 1) / (50 + 7) = 0.719298
    assert m["mIoU"] == pytest.approx((0.8 + 1 / 7) / 2)  # 0.471429
    # IoUs 0.8 and 0.142857: the first passes 0.5 .. 0.8, nothing passes 0.9
    assert [m[f"prec@{t}"] for t in (0.5, 0.6, 0.7, 0.8, 0.9)] == [0.5, 0.5, 0.5, 0.5, 0.0]


def test_empty_prediction_and_ground_truth_count_zero():
    assert pair_iou(torch.tensor([0, 3]), torch.tensor([0, 4])).tolist() == [0.0, 0.75]


def test_streaming_equals_one_batch_and_sums_merge():
    pred, gt = crafted_pair()
    whole, parts = IoUAccumulator(), IoUAccumulator()
    whole.update(pred, gt)
    parts.update(pred[:1], gt[:1])
    parts.update(pred[1:], gt[1:])
    assert torch.equal(whole.sums, parts.sums)
    # What all_reduce does across two ranks: add their sum vectors.
    rank0, rank1 = IoUAccumulator(), IoUAccumulator()
    rank0.update(pred[:1], gt[:1])
    rank1.update(pred[1:], gt[1:])
    rank0.sums += rank1.sums
    assert rank0.compute() == whole.compute()


def test_all_reduce_in_a_one_rank_group(tmp_path):
    acc = IoUAccumulator()
    acc.update(*crafted_pair())
    expected = acc.compute()
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        acc.all_reduce()
    finally:
        dist.destroy_process_group()
    assert acc.compute() == expected


def test_compute_before_update_raises():
    with pytest.raises(RuntimeError, match="before any pair"):
        IoUAccumulator().compute()


def test_prior_iou_at_half():
    # soft prior [[0.7, 0.5], [0.4, 0.1]] binarised at 0.5 -> [[1, 1], [0, 0]];
    # gt [[1, 0], [1, 0]]: I = 1, U = 3
    prior = torch.tensor([[0.7, 0.5], [0.4, 0.1]]).view(1, 1, 2, 2)
    gt = torch.tensor([[1, 0], [1, 0]], dtype=torch.uint8).view(1, 2, 2)
    inter, union = intersection_union(binarize(prior), gt)
    assert (inter.item(), union.item()) == (1, 3)


def test_pseudo_label_accuracy_and_coverage():
    # labels [[1, X], [0, 1]] vs gt [[1, 1], [0, 0]]: 3 selected, 2 correct (the last is fg
    # on background) -> accuracy 2/3, coverage 3/4
    labels = torch.tensor([[1, X], [0, 1]], dtype=torch.uint8).view(1, 2, 2)
    gt = torch.tensor([[1, 1], [0, 0]], dtype=torch.uint8).view(1, 2, 2)
    acc = PseudoLabelAccumulator()
    acc.update(labels, gt)
    assert acc.compute() == pytest.approx({"accuracy": 2 / 3, "coverage": 0.75})


@pytest.mark.parametrize("accumulator", [IoUAccumulator, PseudoLabelAccumulator])
def test_accumulators_take_batches_on_another_device(accumulator):
    """Training on a GPU hands over batches on CUDA while the accumulator makes its own
    counts on the CPU; the meta device stands in for CUDA here (stack refuses mixing both)."""
    acc = accumulator(device="meta")
    labels = torch.zeros(2, 4, 4, dtype=torch.uint8, device="meta")
    acc.update(labels, labels)
    assert acc.sums.device.type == "meta" and acc.sums.shape == (len(acc.names),)


def test_mask_shape_errors():
    with pytest.raises(ValueError, match="gt: expected the shape of pred"):
        intersection_union(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="p: expected a"):
        binarize(torch.zeros(2, 2))
