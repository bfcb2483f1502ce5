"""benchmarks/fusion_sources.py: whom each fusion follows where the sources disagree, by hand."""

from __future__ import annotations

import math

import pytest
import torch
from benchmark_scripts import import_benchmark

from l2l_train.config import FusionConfig
from l2l_train.spm import fuse


@pytest.fixture(scope="module")
def fusion_sources():
    return import_benchmark("fusion_sources")


@pytest.fixture(scope="module")
def fusion():
    """DESIGN.md's SPM coefficients (the paper's): bA 0.4, bq 0.25, bu 0.2, eps 1e-4. Not
    params.yaml's, so tuning those does not change the hand-computed values below."""
    return FusionConfig()


# One 1x4 pair: p_w 0.9, 0.8, 0.25, 0.1; q 0.95, 0.25, 0.7, 0.1; truth 1, 1, 1, 0.
P_W = torch.tensor([0.9, 0.8, 0.25, 0.1]).view(1, 1, 1, 4)
Q = torch.tensor([0.95, 0.25, 0.7, 0.1]).view(1, 1, 1, 4)
GT = torch.tensor([1, 1, 1, 0], dtype=torch.bool).view(1, 1, 4)


def test_one_pair_where_the_student_and_the_teacher_are_each_right_once(fusion_sources, fusion):
    """The pair above: p_w and q disagree on pixels 1 (p_w right) and 2 (q right). No
    ignore band, labels at 0.7 / 0.3."""
    maps = fusion_sources.fused_maps(P_W, Q, GT, own=Q, fusion=fusion)
    counts = fusion_sources.SourceCounts()
    counts.add_batch(maps, GT, torch.tensor([0]), fusion)
    result = counts.summary()

    # Soft IoU A = 1.24 / (2.05 + 2.0 - 1.24 + eps), eps 1e-4;
    # w = 0.4 A + 0.25 |2q - 1| + 0.2 (1 - |2 p_w - 1|).
    agree = 1.24 / (2.05 + 2.0 - 1.24 + 1e-4)
    w1 = 0.4 * agree + 0.25 * 0.5 + 0.2 * 0.4
    w2 = 0.4 * agree + 0.25 * 0.4 + 0.2 * 0.5
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    # SPM's logit fusion keeps p_w's side on both: foreground on pixel 1, background on 2.
    assert (1 - w1) * logit(0.8) + w1 * logit(0.25) > 0
    assert (1 - w2) * logit(0.25) + w2 * logit(0.7) < 0
    assert result["pairs"] == 1
    assert result["disagreement_share"] == pytest.approx(50.0)
    assert result["student_right_on_disagreement"] == pytest.approx(50.0)
    assert result["spm_prior_weight_on_disagreement"] == pytest.approx((w1 + w2) / 2)
    student_margin = (logit(0.8) - logit(0.25)) / 2
    teacher_margin = (logit(0.7) - logit(0.25)) / 2
    assert result["student_logit_margin_on_disagreement"] == pytest.approx(student_margin)
    assert result["teacher_logit_margin_on_disagreement"] == pytest.approx(teacher_margin)
    # p_w is right on pixel 1 (0.8, |logit| ln 4) and wrong on 2 (0.25, ln 3); q the reverse
    # (0.7 right, ln 7/3; 0.25 wrong, ln 3).
    assert result["student_logit_margin_where_right"] == pytest.approx(math.log(4))
    assert result["student_logit_margin_where_wrong"] == pytest.approx(math.log(3))
    assert result["teacher_logit_margin_where_right"] == pytest.approx(math.log(7 / 3))
    assert result["teacher_logit_margin_where_wrong"] == pytest.approx(math.log(3))

    fusions = result["fusions"]
    # SPM and linear (0.925, 0.525, 0.475, 0.1) both side with p_w, right once: predicted
    # 1, 1, 0, 0 against 1, 1, 1, 0. At 0.7 / 0.3 linear labels pixels 0 and 3 only.
    for name in ("spm", "linear"):
        assert fusions[name]["follows_student_on_disagreement"] == pytest.approx(100.0)
        assert fusions[name]["right_on_disagreement"] == pytest.approx(50.0)
        assert fusions[name]["oIoU"] == pytest.approx(100 * 2 / 3)
    assert fusions["linear"]["label_coverage"] == pytest.approx(50.0)
    assert fusions["linear"]["label_accuracy"] == pytest.approx(100.0)
    # The oracle takes the truth where the sources disagree; the raw prior misses pixel 1.
    assert fusions["oracle"]["oIoU"] == pytest.approx(100.0)
    assert fusions["oracle"]["right_on_disagreement"] == pytest.approx(100.0)
    assert fusions["oracle"]["follows_student_on_disagreement"] == pytest.approx(50.0)
    assert fusions["raw"]["oIoU"] == pytest.approx(100 * 2 / 3)
    assert fusions["raw"]["follows_student_on_disagreement"] == pytest.approx(0.0)
    assert fusions["own"] == fusions["raw"]
    # Labels at 0.7 / 0.3 from p_w alone: 0.9 and 0.8 foreground (right), 0.25 and 0.1
    # background (0.25 wrong): all selected, 3 of 4 correct.
    assert fusions["student"]["label_coverage"] == pytest.approx(100.0)
    assert fusions["student"]["label_accuracy"] == pytest.approx(75.0)


def test_temperature_scaling_keeps_the_side_and_fits_the_hit_rate(fusion_sources):
    """sigmoid(logit(0.8) / 2) = sigmoid(ln 2) = 2/3. 100 pixels all at sigmoid(2), 88 of
    them foreground: the cross-entropy is lowest where sigmoid(2 / T) = 0.88, at
    T = 2 / logit(0.88) = 1.0038 (the grid is 1.2 % apart)."""
    p = torch.tensor([0.8, 0.2])
    assert fusion_sources.with_temperature(p, 2.0, 1e-4) == pytest.approx(
        torch.tensor([2 / 3, 1 / 3])
    )
    probability = torch.full((1, 1, 10, 10), torch.sigmoid(torch.tensor(2.0)).item())
    gt = (torch.arange(100) < 88).view(1, 10, 10)
    best = 2 / math.log(0.88 / 0.12)
    assert fusion_sources.fit_temperature(probability, gt, 1e-4) == pytest.approx(best, rel=0.012)


def test_a_temperature_adds_spm_on_the_scaled_student(fusion_sources, fusion):
    """T = 2 halves p_w's logits: on the pair above SPM then fuses 0.75, 0.667, 0.366,
    0.25 with the prior instead of p_w itself."""
    plain = fusion_sources.fused_maps(P_W, Q, GT, own=Q, fusion=fusion)
    assert "spm_calibrated" not in plain
    maps = fusion_sources.fused_maps(P_W, Q, GT, own=Q, fusion=fusion, temperature=2.0)
    scaled = fusion_sources.with_temperature(P_W, 2.0, fusion.eps)
    expected = fuse(scaled, Q, torch.tensor([True]), fusion).q_hat
    assert torch.equal(maps["spm_calibrated"], expected)
    assert not torch.equal(maps["spm_calibrated"], maps["spm"])


def test_row_names_tell_the_switches_apart(fusion_sources):
    def run(method="l2l", spm=True, sesm=False, rple=False, ignore_conflicts=False):
        switches = {"spm": spm, "sesm": sesm, "rple": rple, "ignore_conflicts": ignore_conflicts}
        return {"method": method, **switches}

    assert fusion_sources.row_name(run(sesm=True, rple=True)) == "spm+sesm+rple"
    assert fusion_sources.row_name(run(ignore_conflicts=True)) == "spm+no_conflicts"
    assert fusion_sources.row_name(run(spm=False, sesm=True)) == "no_spm+sesm"
    assert fusion_sources.row_name(run("fixed_fusion")) == "fixed_fusion"
    assert (
        fusion_sources.row_name(run("fixed_fusion", ignore_conflicts=True))
        == "fixed_fusion+no_conflicts"
    )
    supervised = run("supervised") | {"reads_teacher": False, "student_alone": True}
    assert fusion_sources.row_name(supervised | {"pairs_from": "held_out"}) == (
        "supervised on held_out"
    )
    alone = run(sesm=True, rple=True) | {"reads_teacher": True, "student_alone": True}
    assert fusion_sources.row_name(alone) == "spm+sesm+rple, p_w alone"
    # settings off params.yaml's defaults name their own rows (ablation.py's fusion_a00, no_dice)
    assert fusion_sources.row_name(run("fixed_fusion") | {"alpha": 0.5}) == "fixed_fusion"
    teacher_only = run("fixed_fusion") | {"alpha": 0.0}
    assert fusion_sources.row_name(teacher_only) == "fixed_fusion+alpha_0.0"
    no_dice = run(sesm=True, rple=True) | {"alpha": 0.0, "lambda_dice": 0.0}
    assert fusion_sources.row_name(no_dice) == "spm+sesm+rple+dice_0.0"
    warm = run(sesm=True, rple=True) | {"spm_warmup_steps": 150}
    assert fusion_sources.row_name(warm) == "spm+sesm+rple+warmup_150"
    assert fusion_sources.row_name(warm | {"spm_warmup_steps": 0}) == "spm+sesm+rple"


def test_a_weak_pass_without_the_prior_sees_every_prior_absent(fusion_sources):
    """As a run that never read the teacher trained (and --student-alone): the stored prior
    stays in the batch for the fusions, and the batch the loader made is not changed."""
    batch = {"prior_u": torch.rand(2, 1, 4, 4), "prior_present_u": torch.tensor([True, False])}
    assert fusion_sources.weak_pass_batch(batch, sees_prior=True) is batch
    seen = fusion_sources.weak_pass_batch(batch, sees_prior=False)
    assert seen["prior_present_u"].tolist() == [False, False]
    assert seen["prior_u"] is batch["prior_u"]
    assert batch["prior_present_u"].tolist() == [True, False]


@pytest.mark.slow
def test_a_supervised_run_is_scored_on_pairs_it_never_trained_on(
    fusion_sources, trainer_workspace, tmp_path
):
    """A supervised run (no teacher) scored on val: its own target is its prediction, so
    "own" is "student"; every fusion is scored on the same pairs."""
    import json

    from trainer_workspace import variant

    from l2l_train.config import load_trainer_params
    from l2l_train.loop import run_training

    params = variant(trainer_workspace, tmp_path, train={"method": "supervised"})
    run_training(load_trainer_params(params))
    out = tmp_path / "fusion.json"
    # main() sets torch's threads: keep the suite's (later tests compare runs bitwise).
    threads = str(torch.get_num_threads())
    fusion_sources.main(
        [
            str(tmp_path),
            *("--pairs-from", "val", "--pairs", "3", "--batch-size", "2"),
            *("--checkpoint", "best.pt", "--out", str(out), "--threads", threads),
        ]
    )
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert (run["method"], run["pairs_from"], run["pairs"]) == ("supervised", "val", 3)
    assert run["student_alone"] and not run["reads_teacher"]
    fusions = run["fusions"]
    assert fusions["own"] == fusions["student"]
    assert fusions["oracle"]["oIoU"] >= max(fusions["student"]["oIoU"], 0.0)
    assert "|logit p_w| wrong" in result["table"]
    assert "supervised on val" in result["table"]
