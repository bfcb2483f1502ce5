"""SPM against hand-computed values on 2x2 and 1x2 maps."""

import math

import pytest
import torch

from l2l_train.config import FusionConfig
from l2l_train.spm import (
    agreement,
    certainty,
    fuse,
    linear_fusion,
    logit_fusion,
    prior_weight,
)

# (1, 1, 2, 2) maps used by several tests.
P_W = torch.tensor([[0.5, 1.0], [0.0, 0.75]]).view(1, 1, 2, 2)
Q = torch.tensor([[1.0, 1.0], [0.0, 0.5]]).view(1, 1, 2, 2)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_certainty_is_the_margin():
    # |2p - 1|: 0.5 -> 0, 1 -> 1, 0 -> 1, 0.75 -> 0.5
    assert torch.allclose(certainty(P_W), torch.tensor([[0.0, 1.0], [1.0, 0.5]]).view(1, 1, 2, 2))


def test_agreement_is_the_soft_iou():
    # sum(p q) = 0.5*1 + 1*1 + 0*0 + 0.75*0.5 = 1.875
    # sum(p) = 2.25, sum(q) = 2.5, union = 2.25 + 2.5 - 1.875 = 2.875
    # A = 1.875 / 2.875 = 0.652174
    assert agreement(P_W, Q, eps=0.0).item() == pytest.approx(1.875 / 2.875)


def test_agreement_of_two_empty_maps_is_zero_not_nan():
    empty = torch.zeros(2, 1, 3, 3)
    assert torch.equal(agreement(empty, empty, eps=1e-4), torch.zeros(2))


def test_prior_weight_defaults():
    # w = 0.4*A + 0.25*c(q) + 0.2*(1 - c(p_w)) with A = 0.5:
    # c(q) = [[1, 1], [1, 0]], 1 - c(p_w) = [[1, 0], [0, 0.5]]
    # (0,0) 0.2 + 0.25 + 0.2 = 0.65   (0,1) 0.2 + 0.25 = 0.45
    # (1,0) 0.2 + 0.25 = 0.45         (1,1) 0.2 + 0 + 0.1 = 0.30
    w = prior_weight(P_W, Q, torch.tensor([0.5]), FusionConfig())
    assert torch.allclose(w, torch.tensor([[0.65, 0.45], [0.45, 0.30]]).view(1, 1, 2, 2))


def test_prior_weight_is_clipped():
    # b0 = -0.3 shifts the values above to 0.35, 0.15, 0.15, 0.0; clip to [0.1, 0.3].
    cfg = FusionConfig(b0=-0.3, w_min=0.1, w_max=0.3)
    w = prior_weight(P_W, Q, torch.tensor([0.5]), cfg)
    assert torch.allclose(w, torch.tensor([[0.3, 0.15], [0.15, 0.1]]).view(1, 1, 2, 2))


def test_logit_fusion():
    # pixel 0: logit(0.5) = 0, logit(sigmoid(2)) = 2, w = 0.5 -> sigmoid(1)
    # pixel 1: logit(sigmoid(-1)) = -1, logit(sigmoid(3)) = 3, w = 0.25
    #          -> sigmoid(0.75*(-1) + 0.25*3) = sigmoid(0) = 0.5
    p = torch.tensor([0.5, sigmoid(-1)]).view(1, 1, 1, 2)
    q = torch.tensor([sigmoid(2), sigmoid(3)]).view(1, 1, 1, 2)
    w = torch.tensor([0.5, 0.25]).view(1, 1, 1, 2)
    out = logit_fusion(p, q, w, eps=1e-4)
    assert torch.allclose(out, torch.tensor([sigmoid(1), 0.5]).view(1, 1, 1, 2), atol=1e-6)


def test_logit_fusion_clamps_certain_pixels():
    # p = 1 and q = 0 clamp to 0.9 and 0.1 with eps = 0.1: logits +-2.197, w = 0.5 -> 0.5.
    out = logit_fusion(
        torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 0.5), 0.1
    )
    assert out.item() == pytest.approx(0.5)
    assert torch.isfinite(
        logit_fusion(torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1), 1e-4)
    ).all()


def test_fuse_end_to_end():
    # p_w = [0.5, 0.5], q = [s, s] with s = sigmoid(2) = 0.880797
    # A = 2*0.5*s / (1 + 2s - 2*0.5*s) = 0.880797 / 1.880797 = 0.468311
    # c(q) = 2s - 1 = 0.761594, 1 - c(p_w) = 1
    # w = 0.4*0.468311 + 0.25*0.761594 + 0.2*1 = 0.577723
    # q_hat = sigmoid((1 - w)*0 + w*2) = sigmoid(1.155445) = 0.760504
    p_w = torch.full((1, 1, 1, 2), 0.5)
    q = torch.full((1, 1, 1, 2), sigmoid(2))
    out = fuse(p_w, q, torch.tensor([True]), FusionConfig())
    assert out.agreement.item() == pytest.approx(0.468311, abs=1e-4)
    assert torch.allclose(out.weight, torch.full_like(p_w, 0.577723), atol=1e-4)
    assert torch.allclose(out.q_hat, torch.full_like(p_w, 0.760504), atol=1e-4)


def test_missing_prior_passes_the_prediction_through():
    p_w = torch.tensor([[0.2, 0.9], [0.6, 0.4]]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    q = torch.tensor([[0.9, 0.9], [0.1, 0.1]]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    out = fuse(p_w, q, torch.tensor([True, False]), FusionConfig())
    assert torch.equal(out.q_hat[1], p_w[1])  # exactly p_w, not sigmoid(logit(clamp(p_w)))
    assert out.agreement[1].item() == 0.0
    assert torch.equal(out.weight[1], torch.zeros_like(out.weight[1]))
    alone = fuse(p_w[:1], q[:1], torch.tensor([True]), FusionConfig())
    assert torch.allclose(out.q_hat[0], alone.q_hat[0])  # rows are independent


def test_fuse_output_is_detached():
    p_w = torch.rand(2, 1, 4, 4, requires_grad=True)
    q = torch.rand(2, 1, 4, 4)
    out = fuse(p_w, q, torch.tensor([True, True]), FusionConfig())
    assert not out.q_hat.requires_grad
    assert not linear_fusion(p_w, q, torch.tensor([True, False])).requires_grad


def test_linear_fusion():
    # row 0: 0.5*[0.2, 0.6] + 0.5*[0.8, 0.0] = [0.5, 0.3]; row 1 has no prior -> p_w.
    p_w = torch.tensor([[0.2, 0.6], [0.2, 0.6]]).view(2, 1, 1, 2)
    q = torch.tensor([[0.8, 0.0], [0.8, 0.0]]).view(2, 1, 1, 2)
    out = linear_fusion(p_w, q, torch.tensor([True, False]))
    assert torch.allclose(out, torch.tensor([[0.5, 0.3], [0.2, 0.6]]).view(2, 1, 1, 2))
    # alpha 0.25: 0.25*[0.2, 0.6] + 0.75*[0.8, 0.0] = [0.65, 0.15]
    out = linear_fusion(p_w, q, torch.tensor([True, False]), alpha=0.25)
    assert torch.allclose(out, torch.tensor([[0.65, 0.15], [0.2, 0.6]]).view(2, 1, 1, 2))
    with pytest.raises(ValueError, match="alpha"):
        linear_fusion(p_w, q, torch.tensor([True, False]), alpha=1.5)


def test_shape_errors_name_the_input():
    with pytest.raises(ValueError, match="q: expected the shape of p_w"):
        fuse(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5), torch.tensor([True]), FusionConfig())
    with pytest.raises(ValueError, match="p_w: expected a"):
        agreement(torch.rand(1, 4, 4), torch.rand(1, 4, 4), 1e-4)
    with pytest.raises(ValueError, match="prior_present"):
        linear_fusion(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), torch.tensor([True]))
