"""The method plan, the target strategies and the pseudo-labels, against hand-computed values."""

import re

import pytest
import torch

from l2l_train.config import AgreementConfig, FusionConfig, TrainConfig
from l2l_train.losses import IGNORE_INDEX
from l2l_train.rple import rple_state
from l2l_train.spm import fuse
from l2l_train.targets import (
    TARGET_STRATEGIES,
    ClassThresholds,
    MethodPlan,
    agreement_keep,
    band_in_input_frame,
    class_statistics,
    conflict_pixels,
    fusion_at,
    plan_method,
    pseudo_labels,
    static_thresholds,
)

X = IGNORE_INDEX
THR = torch.tensor([[0.7, 0.3]])


def test_plan_method_switches():
    assert plan_method(TrainConfig(method="supervised")) == MethodPlan(False, False, "none", False)
    assert plan_method(TrainConfig(method="fixmatch")) == MethodPlan(True, False, "none", False)
    assert plan_method(TrainConfig(method="fixed_fusion")) == MethodPlan(True, True, "fixed", False)
    assert plan_method(TrainConfig(method="l2l")) == MethodPlan(True, True, "spm", True)
    ablation = TrainConfig(method="l2l", spm=False, rple=False)
    assert plan_method(ablation) == MethodPlan(True, True, "none", False)
    # The stronger MLLM baselines: linear fusion with a tuned weight, a pair filter, or
    # class-wise adaptive thresholds.
    assert plan_method(TrainConfig(method="tuned_fusion")) == MethodPlan(True, True, "tuned", False)
    assert plan_method(TrainConfig(method="agreement_filter")) == MethodPlan(
        True, True, "fixed", False, agreement_filter=True
    )
    assert plan_method(TrainConfig(method="catm")) == MethodPlan(True, True, "fixed", False, True)


# ----------------------------------------------------------------------------- target strategies

# Two images of two pixels; the second image has no prior.
P_W = torch.tensor([[0.2, 0.8], [0.3, 0.6]]).view(2, 1, 1, 2)
Q = torch.tensor([[0.8, 0.8], [0.0, 0.0]]).view(2, 1, 1, 2)
PRESENT = torch.tensor([True, False])


def test_own_prediction_ignores_the_prior():
    torch.testing.assert_close(TARGET_STRATEGIES["none"](P_W, Q, PRESENT, FusionConfig()), P_W)


def test_fixed_target_averages_where_the_prior_is_present():
    q_hat = TARGET_STRATEGIES["fixed"](P_W, Q, PRESENT, FusionConfig())
    # image 0: (0.2 + 0.8) / 2 = 0.5, (0.8 + 0.8) / 2 = 0.8; image 1 keeps p_w
    expected = torch.tensor([[0.5, 0.8], [0.3, 0.6]]).view(2, 1, 1, 2)
    torch.testing.assert_close(q_hat, expected)


def test_linear_target_uses_the_configured_weight_on_p_w():
    # alpha 0.25 on p_w: image 0 0.25 * 0.2 + 0.75 * 0.8 = 0.65, 0.25 * 0.8 + 0.75 * 0.8 = 0.8;
    # image 1 keeps p_w. The tuned strategy is the same rule with the epoch's alpha.
    for fusion in ("fixed", "tuned"):
        q_hat = TARGET_STRATEGIES[fusion](P_W, Q, PRESENT, FusionConfig(alpha=0.25))
        expected = torch.tensor([[0.65, 0.8], [0.3, 0.6]]).view(2, 1, 1, 2)
        torch.testing.assert_close(q_hat, expected)


def test_spm_target_is_spm_fusion():
    # A constant weight 0.5 on the prior: q_hat = sigmoid(0.5 logit(p_w) + 0.5 logit(q)).
    # logit(0.2) = -logit(0.8), so the first pixel lands on 0.5; the second stays at 0.8.
    cfg = FusionConfig(b0=0.5, bA=0.0, bq=0.0, bu=0.0)
    q_hat = TARGET_STRATEGIES["spm"](P_W, Q, PRESENT, cfg)
    expected = torch.tensor([[0.5, 0.8], [0.3, 0.6]]).view(2, 1, 1, 2)
    torch.testing.assert_close(q_hat, expected)
    torch.testing.assert_close(q_hat, fuse(P_W, Q, PRESENT, cfg).q_hat)


def test_teacher_target_is_the_prior_where_present():
    q_hat = TARGET_STRATEGIES["teacher"](P_W, Q, PRESENT, FusionConfig())
    torch.testing.assert_close(q_hat, torch.tensor([[0.8, 0.8], [0.3, 0.6]]).view(2, 1, 1, 2))


def test_spm_warms_up_on_the_teacher_alone_for_its_first_steps():
    assert [fusion_at("spm", step, 2) for step in (0, 1, 2, 3)] == [
        "teacher",
        "teacher",
        "spm",
        "spm",
    ]
    assert fusion_at("spm", 0, 0) == "spm"  # no warm-up
    assert fusion_at("spm", None, 2) == "spm"  # outside training
    assert fusion_at("fixed", 0, 2) == "fixed"  # only SPM warms up


def test_every_fusion_of_the_plan_has_a_strategy():
    names = ("supervised", "fixmatch", "fixed_fusion", "tuned_fusion", "agreement_filter")
    methods = [TrainConfig(method=m) for m in (*names, "catm", "l2l")]
    methods.append(TrainConfig(method="l2l", spm=False))
    # and SPM's warm-up's
    plans = {plan_method(cfg).fusion for cfg in methods} | {fusion_at("spm", 0, 1)}
    assert plans == set(TARGET_STRATEGIES)


# ----------------------------------------------------------------------------- agreement filter


def test_agreement_keep_needs_both_sources_confident_and_agreeing():
    # Six pairs of two pixels; confidence = mean |2p - 1|, agreement A = soft IoU, both by hand.
    p_w = torch.tensor(
        [[1.0, 0.0], [0.7, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    ).view(6, 1, 1, 2)
    q = torch.tensor(
        [[0.9, 0.0], [1.0, 0.0], [0.0, 1.0], [0.9, 0.0], [1.0, 1.0], [0.75, 0.0]]
    ).view(6, 1, 1, 2)
    # A = sum(p q) / (sum p + sum q - sum(p q)):
    # 0: 0.9 / (1 + 0.9 - 0.9) = 0.9        1: 0.7 / (0.7 + 1 - 0.7) = 0.7
    # 2: 0 / 2 = 0                          3: as 0 (its prior is absent)
    # 4: 1 / (1 + 2 - 1) = 0.5              5: 0.75 / (1 + 0.75 - 0.75) = 0.75
    agree = torch.tensor([0.9, 0.7, 0.0, 0.9, 0.5, 0.75])
    present = torch.tensor([True, True, True, False, True, True])
    cfg = AgreementConfig(threshold=0.5, confidence=0.75)
    keep = agreement_keep(p_w, q, agree, present, cfg)
    # 0: c(p_w) = 1, c(q) = (0.8 + 1) / 2 = 0.9, A 0.9 > 0.5          -> kept
    # 1: c(p_w) = (0.4 + 1) / 2 = 0.7 < 0.75: the model is unsure     -> dropped
    # 2: both certain, A = 0: they disagree                           -> dropped
    # 3: no prior                                                     -> dropped
    # 4: both certain, A = 0.5 does not exceed 0.5                    -> dropped
    # 5: c(q) = (0.5 + 1) / 2 = 0.75 reaches 0.75, A 0.75 > 0.5       -> kept
    assert keep.tolist() == [True, False, False, False, False, True]


def test_conflict_pixels_are_where_the_sources_fall_on_opposite_sides_of_one_half():
    # Two pairs of four pixels; 0.5 counts as foreground for both sources.
    p_w = torch.tensor([[0.9, 0.2, 0.5, 0.6], [0.9, 0.2, 0.5, 0.4]]).view(2, 1, 1, 4)
    q = torch.tensor([[0.1, 0.3, 0.4, 0.8], [0.1, 0.3, 0.4, 0.8]]).view(2, 1, 1, 4)
    # pair 0: fg/bg conflict, both bg, fg (0.5)/bg conflict, both fg; pair 1: no prior
    conflicts = conflict_pixels(p_w, q, torch.tensor([True, False]))
    assert conflicts.shape == (2, 1, 4)
    assert conflicts[:, 0].tolist() == [[True, False, True, False], [False] * 4]


# ----------------------------------------------------------------------------- CATM


def test_class_statistics_sums_confidence_foreground_and_pixels():
    q_hat = torch.tensor([[0.9, 0.2], [0.1, 0.6]]).view(2, 1, 1, 2)
    # max(q, 1 - q): 0.9 + 0.8 = 1.7 and 0.9 + 0.6 = 1.5; q: 1.1 and 0.7; 2 pixels each
    expected = torch.tensor([[1.7, 1.1, 2.0], [1.5, 0.7, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(class_statistics(q_hat), expected)


def test_class_thresholds_follow_freematch_sat_by_hand():
    catm = ClassThresholds(momentum=0.5)
    # Before any update tau = 0.5 and p = (0.5, 0.5): tau(c) = 0.5, every pixel selected.
    assert catm.thresholds(1).tolist() == [[0.5, 0.5]]
    stats = torch.tensor([[1.7, 1.1, 2.0], [1.5, 0.7, 2.0]], dtype=torch.float64)
    # Batch means over 4 pixels: confidence 3.2 / 4 = 0.8, foreground 1.8 / 4 = 0.45.
    catm.update(stats)
    # tau = 0.5 * 0.5 + 0.5 * 0.8 = 0.65; p(bg) = 0.5 * 0.5 + 0.5 * 0.55 = 0.525,
    # p(fg) = 0.5 * 0.5 + 0.5 * 0.45 = 0.475; tau(fg) = 0.475 / 0.525 * 0.65 = 0.5880952,
    # tau(bg) = 0.525 / 0.525 * 0.65 = 0.65 -> on q_hat: (0.5880952, 1 - 0.65 = 0.35).
    torch.testing.assert_close(
        catm.class_thresholds(), torch.tensor([0.65, 0.475 / 0.525 * 0.65], dtype=torch.float64)
    )
    torch.testing.assert_close(catm.thresholds(2), torch.tensor([[0.5880952, 0.35]] * 2))
    catm.update(stats)
    # tau = 0.5 * 0.65 + 0.5 * 0.8 = 0.725; p = (0.5375, 0.4625);
    # tau(fg) = 0.4625 / 0.5375 * 0.725 = 0.6238372, tau(bg) = 0.725 -> (0.6238372, 0.275).
    torch.testing.assert_close(catm.thresholds(1), torch.tensor([[0.6238372, 0.275]]))
    restored = ClassThresholds(momentum=0.5)
    restored.load_state_dict(catm.state_dict())
    assert torch.equal(restored.thresholds(1), catm.thresholds(1))


def test_class_thresholds_never_cross_one_half():
    # An all-background batch: confidence 1, foreground 0. tau = 0.75, p = (0.75, 0.25):
    # tau(fg) = 0.25 / 0.75 * 0.75 = 0.25, below one half, so every pixel whose argmax is
    # foreground is selected: tau_fg = 0.5; tau(bg) = 0.75 -> tau_bg = 0.25.
    catm = ClassThresholds(momentum=0.5)
    catm.update(class_statistics(torch.zeros(1, 1, 2, 2)))
    torch.testing.assert_close(catm.thresholds(1), torch.tensor([[0.5, 0.25]]))
    with pytest.raises(ValueError, match="momentum"):
        ClassThresholds(momentum=1.0)


# ----------------------------------------------------------------------------- pseudo-labels


def test_static_thresholds():
    assert torch.equal(static_thresholds(3, 0.8, 0.2), torch.tensor([[0.8, 0.2]] * 3))
    with pytest.raises(ValueError, match="tau_bg < tau_fg"):
        static_thresholds(1, 0.4, 0.6)


def test_pseudo_labels_three_way():
    q_hat = torch.tensor([[0.9, 0.6, 0.2], [0.75, 0.3, 0.05]]).view(1, 1, 2, 3)
    # >= 0.7 fg: 0.9, 0.75; <= 0.3 bg: 0.2, 0.3 (inclusive), 0.05; 0.6 ignored
    expected = torch.tensor([[1, X, 0], [1, 0, 0]], dtype=torch.uint8)
    assert torch.equal(pseudo_labels(q_hat, THR, band_width=0)[0], expected)


def test_ignore_band_on_a_straight_boundary_is_band_width_columns():
    # Columns 0-3 foreground, 4-7 background; edge pixels are column 3. A 3-wide band
    # centred on them ignores columns 2, 3, 4; the image border is no boundary.
    q_hat = torch.full((1, 1, 5, 8), 0.1)
    q_hat[..., :4] = 0.9
    labels = pseudo_labels(q_hat, THR, band_width=3)[0]
    expected_row = torch.tensor([1, 1, X, X, X, 0, 0, 0], dtype=torch.uint8)
    assert torch.equal(labels, expected_row.expand(5, 8))
    narrow = pseudo_labels(q_hat, THR, band_width=1)[0]
    assert torch.equal(narrow[0], torch.tensor([1, 1, 1, X, 0, 0, 0, 0], dtype=torch.uint8))


def test_ignore_band_swallows_a_3x3_object():
    # A 3x3 object in a 7x7 image: its 8 outer pixels are edges, and the 3x3 dilation of
    # that ring covers rows/cols 1..5, the centre included; the rest stays background.
    q_hat = torch.full((1, 1, 7, 7), 0.1)
    q_hat[..., 2:5, 2:5] = 0.9
    labels = pseudo_labels(q_hat, THR, band_width=3)[0]
    expected = torch.zeros(7, 7, dtype=torch.uint8)
    expected[1:6, 1:6] = X
    assert torch.equal(labels, expected)


@pytest.mark.parametrize(
    ("band", "hw", "size", "expected"),
    [
        (3, (128, 128), 64, 1),  # 3 * 64 / 128 = 1.5 -> nearest odd 1
        (3, (480, 640), 480, 3),  # larger side 640: 3 * 480 / 640 = 2.25 -> 3
        (3, (720, 480), 480, 1),  # 3 * 480 / 720 = 2.0, a tie -> the smaller odd, 1
        (3, (480, 640), 64, 0),  # 3 * 64 / 640 = 0.3 < 0.5 -> no band
        (5, (640, 480), 64, 1),  # 5 * 64 / 640 = 0.5 -> 1 (half a pixel still counts)
        (5, (64, 64), 64, 5),  # same frame: unchanged
        (10, (100, 100), 64, 7),  # 6.4 -> 7 (0.6 away; 5 is 1.4 away)
        (2.5, (96, 128), 64, 1),  # 1.25 -> 1
        (0, (128, 128), 64, 0),  # no band asked for
        (0, (8, 8), 64, 0),  # ... even when the input is an upscale
    ],
)
def test_band_in_input_frame(band, hw, size, expected):
    widths = band_in_input_frame(band, torch.tensor([hw]), size)
    assert widths.dtype == torch.int64 and widths.tolist() == [expected]


def test_band_in_input_frame_is_per_sample():
    hw = torch.tensor([[128, 128], [480, 640], [720, 480], [32, 16]])
    # 1.5 -> 1, 0.3 -> 0, 3 * 64 / 720 = 0.27 -> 0, 3 * 64 / 32 = 6 (tie) -> 5
    assert band_in_input_frame(3, hw, 64).tolist() == [1, 0, 0, 5]
    with pytest.raises(ValueError, match="original_hw"):
        band_in_input_frame(3, torch.tensor([128, 128]), 64)
    with pytest.raises(ValueError, match="band_original"):
        band_in_input_frame(-1, hw, 64)


def test_pseudo_labels_with_per_sample_bands_match_per_sample_calls():
    # Sample 0: a straight boundary (columns 0-3 fg); sample 1: a 6x6 square at rows/cols
    # 1-6; sample 2: random. Widths 3, 1, 0 and then 5, 3, 3 (a shared width pools together).
    q_hat = torch.full((3, 1, 8, 8), 0.1)
    q_hat[0, ..., :4] = 0.9
    q_hat[1, ..., 1:7, 1:7] = 0.9
    q_hat[2] = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    thr = THR.expand(3, 2)
    for widths in ([3, 1, 0], [5, 3, 3]):
        labels = pseudo_labels(q_hat, thr, torch.tensor(widths))
        for i, w in enumerate(widths):
            assert torch.equal(labels[i], pseudo_labels(q_hat[i : i + 1], THR, w)[0])
    labels = pseudo_labels(q_hat, thr, torch.tensor([3, 1, 0]))
    # By hand: sample 0 as in the straight-boundary test; sample 1 with width 1 ignores only
    # the square's outer ring, keeping its 4x4 interior (16 of 36 fg pixels; width 3 would
    # keep the 2x2 centre, 4 of 36).
    assert torch.equal(labels[0, 0], torch.tensor([1, 1, X, X, X, 0, 0, 0], dtype=torch.uint8))
    assert (labels[1] == 1).sum() == 16 and (labels[1, 2:6, 2:6] == 1).all()
    assert (pseudo_labels(q_hat[1:2], THR, 3)[0] == 1).sum() == 4
    # An int and the same width for every sample agree.
    assert torch.equal(
        pseudo_labels(q_hat, thr, torch.tensor([3, 3, 3])), pseudo_labels(q_hat, thr, 3)
    )
    # rple_state passes per-sample widths through.
    agree = torch.tensor([0.1, 0.2, 0.3])
    state = rple_state(q_hat, agree, thr, torch.tensor([3, 1, 0]))
    for i, w in enumerate([3, 1, 0]):
        one = rple_state(q_hat[i : i + 1], agree[i : i + 1], THR, w)
        assert torch.allclose(state[i : i + 1], one)


def test_pseudo_labels_reject_bad_band_widths():
    q_hat = torch.full((2, 1, 4, 4), 0.9)
    thr = THR.expand(2, 2)
    with pytest.raises(ValueError, match="positive odd"):
        pseudo_labels(q_hat, thr, 2)
    with pytest.raises(ValueError, match="positive odd"):
        pseudo_labels(q_hat, thr, torch.tensor([3, 2]))
    with pytest.raises(ValueError, match=re.escape("(2,) tensor")):
        pseudo_labels(q_hat, thr, torch.tensor([3]))
    with pytest.raises(TypeError, match="integer tensor"):
        pseudo_labels(q_hat, thr, torch.tensor([3.0, 1.0]))
    # A float is taken for original-image pixels that were never converted.
    with pytest.raises(TypeError, match="band_in_input_frame"):
        pseudo_labels(q_hat, thr, 3.0)
