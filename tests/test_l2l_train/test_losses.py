"""Losses against hand-computed values: ignore handling, class weights, Dice, totals."""

import math

import pytest
import torch

from l2l_train.config import LossConfig
from l2l_train.losses import (
    IGNORE_INDEX,
    dice_loss,
    supervised_loss,
    total_loss,
    unsupervised_loss,
    weighted_ce,
)

X = IGNORE_INDEX
LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75


def _logits(values):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def _labels(values):
    return torch.tensor(values, dtype=torch.uint8).view(1, 1, -1)


def test_weighted_ce_class_weights_and_ignore():
    # p = 0.75 on both kept pixels: fg loss -ln 0.75 = 0.287682, bg loss -ln 0.25 = 1.386294
    # weighted mean (1.1*0.287682 + 0.9*1.386294) / (1.1 + 0.9) = 0.782058
    logits, labels = _logits([LN3, LN3, 7.0]), _labels([1, 0, X])
    assert weighted_ce(logits, labels, 0.9, 1.1).item() == pytest.approx(0.782058, abs=1e-5)
    # unweighted: (0.287682 + 1.386294) / 2 = 0.836988
    assert weighted_ce(logits, labels).item() == pytest.approx(0.836988, abs=1e-5)
    # the ignored pixel's logit does not matter
    assert weighted_ce(_logits([LN3, LN3, -30.0]), labels, 0.9, 1.1).item() == pytest.approx(
        0.782058, abs=1e-5
    )


def test_supervised_loss_uses_the_configured_weights():
    logits, labels = _logits([LN3, LN3]), _labels([1, 0])
    paper = LossConfig(bg_weight=0.9, fg_weight=1.1)
    assert supervised_loss(logits, labels.long(), paper).item() == pytest.approx(0.782058, abs=1e-5)
    # default 1.0 / 4.0: (4.0*0.287682 + 1.0*1.386294) / 5.0 = 0.507404
    assert supervised_loss(logits, labels.long(), LossConfig()).item() == pytest.approx(
        0.507404, abs=1e-5
    )


def test_supervised_loss_adds_weighted_dice():
    # p = [0.75 (fg), 0.75 (bg)]: Dice = 1 - 2 * 0.75 / (1.5 + 1) = 0.4; CE as above 0.507404
    logits, labels = _logits([LN3, LN3]), _labels([1, 0])
    cfg = LossConfig(lambda_dice_sup=0.5)
    assert supervised_loss(logits, labels.long(), cfg).item() == pytest.approx(
        0.507404 + 0.5 * 0.4, abs=1e-5
    )


def test_all_ignored_gives_zero_loss_and_finite_gradients():
    logits = torch.randn(2, 1, 3, 3, requires_grad=True)
    labels = torch.full((2, 3, 3), X, dtype=torch.uint8)
    total = weighted_ce(logits, labels, 0.9, 1.1) + dice_loss(logits, labels)
    assert total.item() == 0.0
    total.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_dice_on_selected_foreground():
    # image 0: p = [0.75 (fg), 0.75 (bg), 0.25 (fg), ignored]
    #   inter = 0.75 + 0.25 = 1.0, sum p = 1.75, sum t = 2 -> 1 - 2/3.75 = 0.466667
    # image 1: only background selected -> no Dice target, skipped in the mean
    logits = torch.tensor([[LN3, LN3, -LN3, 5.0], [LN3, 0.0, 0.0, 0.0]]).view(2, 1, 1, 4)
    labels = torch.tensor([[1, 0, 1, X], [0, 0, X, X]], dtype=torch.uint8).view(2, 1, 4)
    assert dice_loss(logits, labels).item() == pytest.approx(1 - 2 / 3.75, abs=1e-6)


def test_dice_without_selected_foreground_is_zero():
    logits = torch.randn(2, 1, 2, 2, requires_grad=True)
    labels = torch.tensor([[0, 0], [X, 0]], dtype=torch.uint8).expand(2, 2, 2)
    loss = dice_loss(logits, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_unsupervised_and_total_loss():
    # ce on [fg 0.75, bg 0.75] = 0.836988 (unweighted); dice = 1 - 2*0.75/(1.5 + 1) = 0.4
    # unsupervised = 0.836988 + 0.5*0.4 = 1.036988
    # total with L_sup = 1 and lambda_u = 2: 1 + 2*1.036988 = 3.073976
    logits, labels = _logits([LN3, LN3]), _labels([1, 0])
    cfg = LossConfig(lambda_u=2.0, lambda_dice=0.5)
    unsup = unsupervised_loss(logits, labels, cfg)
    assert unsup.ce.item() == pytest.approx(0.836988, abs=1e-5)
    assert unsup.dice.item() == pytest.approx(0.4, abs=1e-6)
    assert unsup.total.item() == pytest.approx(1.036988, abs=1e-5)
    assert total_loss(torch.tensor(1.0), unsup.total, cfg).item() == pytest.approx(
        3.073976, abs=1e-5
    )


def test_unsupervised_ce_takes_its_own_class_weights():
    # ce with 1.0 / 4.0 on [fg 0.75, bg 0.75]: (4*0.287682 + 1.386294) / 5 = 0.507404, the
    # labelled loss's figure; the labelled weights do not reach the pseudo-labels' CE
    logits, labels = _logits([LN3, LN3]), _labels([1, 0])
    weighted = LossConfig(unsup_bg_weight=1.0, unsup_fg_weight=4.0, lambda_dice=0.0)
    assert unsupervised_loss(logits, labels, weighted).ce.item() == pytest.approx(
        0.507404, abs=1e-5
    )
    labelled_only = LossConfig(bg_weight=0.9, fg_weight=1.1, lambda_dice=0.0)
    assert unsupervised_loss(logits, labels, labelled_only).ce.item() == pytest.approx(
        0.836988, abs=1e-5
    )


def test_shape_and_dtype_errors():
    with pytest.raises(ValueError, match="logits: expected"):
        weighted_ce(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels: expected \\(B, H, W\\)"):
        dice_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer map"):
        weighted_ce(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2))
