"""Prior dropout in the gradient-carrying forward (l2l_train.step.prior_keep)."""

import pytest
import torch

from l2l_train.config import TrainConfig
from l2l_train.step import prior_keep
from pipeline.schema import ConfigError, build_section


def test_unlabelled_rate_applies_to_the_unlabelled_rows_only():
    cfg = build_section(TrainConfig, {"prior_dropout": 0.0, "prior_dropout_u": 1.0})
    keep = prior_keep(torch.Generator().manual_seed(0), 3, 5, cfg)
    assert keep.tolist() == [True] * 3 + [False] * 5
    cfg = build_section(TrainConfig, {"prior_dropout": 1.0, "prior_dropout_u": 0.0})
    keep = prior_keep(torch.Generator().manual_seed(0), 3, 5, cfg)
    assert keep.tolist() == [False] * 3 + [True] * 5


def test_without_an_unlabelled_rate_every_pair_takes_prior_dropout():
    """The draws are one per pair from the generator, compared with the rate: the same draws
    and the same mask as a single rate over the whole batch."""
    cfg = build_section(TrainConfig, {"prior_dropout": 0.5})
    keep = prior_keep(torch.Generator().manual_seed(3), 4, 12, cfg)
    draws = torch.rand(16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(keep, draws >= 0.5)
    assert 0 < int(keep.sum()) < 16
    cfg = build_section(TrainConfig, {"prior_dropout": 0.5, "prior_dropout_u": 0.5})
    assert torch.equal(prior_keep(torch.Generator().manual_seed(3), 4, 12, cfg), keep)


def test_unlabelled_rate_is_a_probability():
    with pytest.raises(ConfigError, match="prior_dropout_u"):
        build_section(TrainConfig, {"prior_dropout_u": 1.5}, "train")
