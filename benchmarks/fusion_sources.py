"""Where a fused prior's pixels come from: the student, the teacher, or neither.

    .venv/bin/python benchmarks/fusion_sources.py RUN [RUN ...] [--pairs 512] [--threads 1]
        [--pairs-from unlabeled] [--calibrate]

RUN is a folder holding a run's ``params.yaml``, whose ``paths.models`` holds its
checkpoints: a run ``ablation.py`` left, e.g. ``benchmarks/work/ablation_2x/spm/seed22``,
or ``.`` for ``make run``'s model (``data/models/latest.pt``).

Why: at twice the default's budget +SPM ends 6.5 val oIoU below fixed fusion, the step of
Table 3 that fails, and no fusion's last-epoch prior reaches the issue's raw + 10 (full L2L
+3.3, fixed fusion -4.6; ``benchmarks/README.md``). A fusion can only beat the raw prior
where the student's weak prediction ``p_w`` and the teacher's ``q`` disagree and it sides
with the one that is right. So, on the run's own unlabelled pairs, with the ground truth the
loop never sees, this splits the pixels where the two disagree at 0.5 by who is right and
by whom each fusion follows: the run's own (``q_hat``), SPM's and fixed fusion's applied to
the same ``p_w`` and ``q`` (the input swapped, the maps held), and an *oracle* that takes
the right one wherever they disagree: the most any per-pixel choice between these two
sources can reach. It also scores each fusion's pseudo-labels at the static 0.70 / 0.30 with
the run's ignore band.

The pairs are the first ``--pairs`` visits of the run's unlabelled stream that have a
teacher prior and a ground truth (the run's seed sets the order, so runs of one seed see the
same pairs); ``p_w`` is the run's weak pass (with the prior as input where the run's
``train.weak_sees_prior`` and SESM give it one). Writes ``benchmarks/results/fusion_sources.json``.

``--pairs-from held_out`` draws them from another selection of the run's data the same way:
a partition role (``held_out``: pairs no run trained on) or an evaluation split. It also
scores runs that never read the teacher (``supervised``, ``fixmatch``): their ``p_w`` is
their own prediction with the prior absent, as they trained, fused with the teacher's stored
prior under the run's SPM coefficients. That asks whether SPM's fused prior would clear the
raw one by more with a stronger student, e.g. one trained on every label for long, scored on
pairs it never saw. ``--student-alone`` takes ``p_w`` without the prior from any run (a
run's student as it is evaluated, where its weak pass would see the prior): the input
swapped, the weights held.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from common import RESULTS, describe_machine, write_result
from torch import Tensor

if TYPE_CHECKING:
    from l2l_train.config import FusionConfig

STATIC_THRESHOLDS = (0.7, 0.3)  # (tau_fg, tau_bg): the ablation's rows without RPLE
FUSIONS = ("raw", "student", "own", "spm", "linear", "oracle")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (params.yaml, models/)")
    parser.add_argument("--checkpoint", default="latest.pt", help="file under each run's models/")
    parser.add_argument("--pairs", type=int, default=512, help="pairs scored per run")
    parser.add_argument(
        "--pairs-from",
        default="unlabeled",
        help="the run's pairs to score: a partition role (unlabeled, held_out) or an "
        "evaluation split (val, test); they need the teacher's priors in the run's store",
    )
    parser.add_argument(
        "--student-alone",
        action="store_true",
        help="p_w without the prior as input, as the student is evaluated, also for runs "
        "whose weak pass sees it (train.weak_sees_prior with SESM)",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="also fuse a temperature-scaled p_w with SPM, the temperature fitted on the "
        "next --pairs pairs of --pairs-from (their ground truth)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "fusion_sources.json")
    return parser.parse_args(argv)


def fused_maps(
    p_w: Tensor,
    q: Tensor,
    gt: Tensor,
    own: Tensor,
    fusion: FusionConfig,
    temperature: float | None = None,
) -> dict[str, Tensor]:
    """Every source's foreground probability on a batch whose pairs all have a prior: the
    two sources, the run's own ``q_hat`` (``own``), SPM's fusion with the coefficients
    ``fusion``, fixed fusion's 0.5 / 0.5, and the oracle (``p_w`` where the two agree at
    0.5, the ground truth where they do not); with a ``temperature``, also SPM's fusion of
    the temperature-scaled ``p_w`` (:func:`with_temperature`) and ``q``.

    Shapes: p_w, q, own (B, 1, S, S); gt (B, S, S) bool -> name -> (B, 1, S, S)."""
    from l2l_train.spm import fuse, linear_fusion
    from l2l_train.targets import conflict_pixels

    present = torch.ones(q.shape[0], dtype=torch.bool)
    disagree = conflict_pixels(p_w, q, present).unsqueeze(1)
    maps = {
        "raw": q,
        "student": p_w,
        "own": own,
        "spm": fuse(p_w, q, present, fusion).q_hat,
        "linear": linear_fusion(p_w, q, present, 0.5),
        "oracle": torch.where(disagree, gt.unsqueeze(1).float(), p_w),
    }
    if temperature is not None:
        scaled = with_temperature(p_w, temperature, fusion.eps)
        maps["spm_calibrated"] = fuse(scaled, q, present, fusion).q_hat
    return maps


def clamped_logit(p: Tensor, eps: float) -> Tensor:
    """``logit(p)`` with ``p`` clamped to [eps, 1 - eps], as SPM's fusion takes it.
    Shapes: p (...) -> (...)."""
    return torch.logit(p.clamp(eps, 1 - eps))


def with_temperature(p: Tensor, temperature: float, eps: float) -> Tensor:
    """``sigmoid(logit(p) / T)``: the same side of 0.5, surer for T < 1, less sure for
    T > 1. Shapes: p (...) -> (...)."""
    return torch.sigmoid(clamped_logit(p, eps) / temperature)


TEMPERATURES = torch.logspace(-1, 1, 401, dtype=torch.float64)  # 0.1 to 10, 1.2 % apart


def fit_temperature(p: Tensor, gt: Tensor, eps: float) -> float:
    """The temperature of :data:`TEMPERATURES` whose :func:`with_temperature` of ``p`` has
    the lowest binary cross-entropy against ``gt``: Guo et al.'s temperature scaling, on
    pixels.

    Shapes: p (N, 1, S, S) probabilities, gt (N, S, S) bool."""
    import torch.nn.functional as F

    if p.numel() == 0:
        raise SystemExit("--calibrate: no pairs left to fit the temperature on")
    logits = clamped_logit(p[:, 0].double(), eps).flatten()
    target = gt.double().flatten()
    losses = [F.binary_cross_entropy_with_logits(logits / t, target) for t in TEMPERATURES]
    return TEMPERATURES[int(torch.stack(losses).argmin())].item()


def logit_margin(p: Tensor, eps: float) -> Tensor:
    """``|logit p|`` (:func:`clamped_logit`): how sure a source is.

    Shapes: p (B, 1, S, S) -> (B, S, S)."""
    return clamped_logit(p[:, 0], eps).abs()


@dataclasses.dataclass
class SourceCounts:
    """Running sums over every scored pair: per map, the project's oIoU
    (:class:`~l2l_train.metrics.IoUAccumulator`) and pseudo-label quality
    (:class:`~l2l_train.metrics.PseudoLabelAccumulator`); in ``sums``, keyed
    ``(map, quantity)``, the counts on the pixels where the sources disagree, with map
    ``"sources"`` for what does not depend on a fusion."""

    pairs: int = 0
    sums: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    iou: dict[str, Any] = dataclasses.field(default_factory=dict)
    labels: dict[str, Any] = dataclasses.field(default_factory=dict)

    def _add(self, map_name: str, quantity: str, value: Tensor) -> None:
        key = (map_name, quantity)
        self.sums[key] = self.sums.get(key, 0.0) + value.double().sum().item()

    def add_batch(
        self, maps: dict[str, Tensor], gt: Tensor, band: Tensor, fusion: FusionConfig
    ) -> None:
        """Add a batch: ``maps`` as :func:`fused_maps` gives them, ground truth ``gt``,
        ignore-band widths ``band`` and SPM's coefficients ``fusion``.

        Shapes: maps (B, 1, S, S) each; gt (B, S, S) bool; band (B,) int."""
        from l2l_train.metrics import IoUAccumulator, PseudoLabelAccumulator, binarize
        from l2l_train.spm import agreement, prior_weight
        from l2l_train.targets import conflict_pixels, pseudo_labels, static_thresholds

        p_w, q = maps["student"], maps["raw"]
        student_side = binarize(p_w)
        disagree = conflict_pixels(p_w, q, torch.ones(gt.shape[0], dtype=torch.bool))
        self.pairs += gt.shape[0]
        self._add("sources", "pixels", torch.tensor(float(gt.numel())))
        self._add("sources", "disagree", disagree)
        w = prior_weight(p_w, q, agreement(p_w, q, fusion.eps), fusion)[:, 0]
        self._add("sources", "spm_weight", w[disagree])
        student_margin = logit_margin(p_w, fusion.eps)
        teacher_margin = logit_margin(q, fusion.eps)
        self._add("sources", "student_margin", student_margin[disagree])
        self._add("sources", "teacher_margin", teacher_margin[disagree])
        # Can a source's certainty tell its right disagreements from its wrong ones? On a
        # disagreeing pixel exactly one of the two is right.
        student_right = disagree & (student_side == gt)
        self._add("sources", "student_right", student_right)
        self._add("sources", "student_margin_right", student_margin[student_right])
        self._add("sources", "teacher_margin_wrong", teacher_margin[student_right])
        thresholds = static_thresholds(gt.shape[0], *STATIC_THRESHOLDS)
        for name, probability in maps.items():
            hard = binarize(probability)
            self._add(name, "follows_student", disagree & (hard == student_side))
            self._add(name, "right", disagree & (hard == gt))
            self.iou.setdefault(name, IoUAccumulator()).update(hard, gt)
            labels = pseudo_labels(probability, thresholds, band)
            self.labels.setdefault(name, PseudoLabelAccumulator()).update(labels, gt)

    def summary(self) -> dict[str, Any]:
        """Shares in percent (of all pixels, of the pixels where the sources disagree, of
        the selected labels); SPM's weight and the margins as means over the disagreeing
        pixels, the margins also over those where the source is right and where it is
        wrong (nan where there are none)."""
        sources = {k[1]: v for k, v in self.sums.items() if k[0] == "sources"}
        pixels, disagree = sources["pixels"], sources["disagree"]

        def fusion(name: str) -> dict[str, float]:
            quality = self.labels[name].compute()
            on_disagreement = {
                q: 100 * self.sums[(name, q)] / disagree for q in ("follows_student", "right")
            }
            return {
                "oIoU": 100 * self.iou[name].compute()["oIoU"],
                "follows_student_on_disagreement": on_disagreement["follows_student"],
                "right_on_disagreement": on_disagreement["right"],
                "label_coverage": 100 * quality["coverage"],
                "label_accuracy": 100 * quality["accuracy"],
            }

        def mean(total: float, count: float) -> float:
            return total / count if count else math.nan

        fusions = {name: fusion(name) for name in self.iou}
        right = sources["student_right"]
        student_margin, teacher_margin = sources["student_margin"], sources["teacher_margin"]
        margins = {
            "student_logit_margin_where_right": mean(sources["student_margin_right"], right),
            "student_logit_margin_where_wrong": mean(
                student_margin - sources["student_margin_right"], disagree - right
            ),
            "teacher_logit_margin_where_right": mean(
                teacher_margin - sources["teacher_margin_wrong"], disagree - right
            ),
            "teacher_logit_margin_where_wrong": mean(sources["teacher_margin_wrong"], right),
        }
        return {
            "pairs": self.pairs,
            "disagreement_share": 100 * disagree / pixels,
            "student_right_on_disagreement": fusions["student"]["right_on_disagreement"],
            "spm_prior_weight_on_disagreement": sources["spm_weight"] / disagree,
            "student_logit_margin_on_disagreement": sources["student_margin"] / disagree,
            "teacher_logit_margin_on_disagreement": sources["teacher_margin"] / disagree,
            **margins,
            "fusions": fusions,
        }


def weak_pass_batch(train_u: dict[str, Any], sees_prior: bool) -> dict[str, Any]:
    """The weak pass's batch. Without ``sees_prior`` every prior is marked absent, so
    ``p_w`` is the student's own prediction, as it is evaluated: how a run that never read
    the teacher trained, and what ``--student-alone`` asks of any run. The stored prior
    stays in ``prior_u`` for the fusions, and ``train_u`` itself is not changed."""
    if sees_prior:
        return train_u
    return train_u | {"prior_present_u": torch.zeros_like(train_u["prior_present_u"])}


@torch.no_grad()
def weak_pass_maps(
    student: Any, data_u: Any, pairs: int, batch_size: int, sees_prior: bool
) -> dict[str, Tensor]:
    """``p_w`` (conditioned on the prior where ``sees_prior``: :func:`weak_pass_batch`),
    ``q``, the run's own target from them, ground truth and ignore-band widths of the first
    ``pairs`` visits of ``data_u`` that have a prior and a ground truth, in stream order."""
    from l2l_train.data import split_eval_only, train_loader
    from l2l_train.targets import TARGET_STRATEGIES, band_in_input_frame

    parts: list[dict[str, Tensor]] = []
    found = 0
    loader = train_loader(data_u, batch_size, start=0, rank=0, world=1, num_workers=0)
    for batch in loader:
        train_u, eval_u = split_eval_only(batch)
        keep = eval_u["has_mask_u_eval"] & train_u["prior_present_u"]
        keep &= keep.cumsum(0) <= pairs - found
        if not keep.any():
            continue
        p_w = student.weak_probability(weak_pass_batch(train_u, sees_prior))[keep]
        q = train_u["prior_u"][keep].float()
        present = torch.ones(q.shape[0], dtype=torch.bool)
        parts.append(
            {
                "p_w": p_w,
                "q": q,
                "own": TARGET_STRATEGIES[student.plan.fusion](p_w, q, present, student.fusion),
                "gt": eval_u["mask_u_eval"][keep].bool(),
                "band": band_in_input_frame(
                    student.cfg.agent.ignore_band, train_u["original_hw_u"][keep], q.shape[-1]
                ),
            }
        )
        found += int(keep.sum())
        if found >= pairs:
            break
    if found == 0:
        raise SystemExit("no pair with a teacher prior and a ground truth to score")
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def count_sources(
    maps: dict[str, Tensor], fusion: FusionConfig, temperature: float | None, batch_size: int
) -> SourceCounts:
    """:class:`SourceCounts` of :func:`weak_pass_maps`' pairs, ``batch_size`` at a time."""
    counts = SourceCounts()
    for start in range(0, maps["p_w"].shape[0], batch_size):
        batch = {key: value[start : start + batch_size] for key, value in maps.items()}
        sources = fused_maps(
            batch["p_w"], batch["q"], batch["gt"], batch["own"], fusion, temperature
        )
        counts.add_batch(sources, batch["gt"], batch["band"], fusion)
    return counts


def score_run(
    run: Path,
    checkpoint_name: str,
    pairs: int,
    batch_size: int,
    calibrate: bool,
    selection: str = "unlabeled",
    student_alone: bool = False,
) -> dict[str, Any]:
    from l2l_train.checkpoint import load_checkpoint
    from l2l_train.config import load_trainer_params
    from l2l_train.figures import student_from_checkpoint, unlabeled_pairs

    if not (run / "params.yaml").is_file():
        raise SystemExit(
            f"{run}: expected a run folder with its params.yaml (as ablation.py leaves one, "
            "e.g. benchmarks/work/ablation_2x/full/seed22, or . for make run's model)"
        )
    params = load_trainer_params(run / "params.yaml")
    checkpoint = Path(params.paths.models) / checkpoint_name
    if not checkpoint.is_file():
        raise SystemExit(f"{run}: no checkpoint {checkpoint} (train the run first)")
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    student, image_size = student_from_checkpoint(ckpt, torch.device("cpu"))
    data_u = unlabeled_pairs(params, student, image_size, selection)
    fusion = student.cfg.fusion
    # A run that never read the teacher trained its weak pass without a prior.
    sees_prior = student.plan.teacher and not student_alone
    maps = weak_pass_maps(
        student, data_u, 2 * pairs if calibrate else pairs, batch_size, sees_prior
    )
    temperature = None
    if calibrate:  # fitted on the pairs after the scored ones: held out of the scoring
        held_out = maps["p_w"][pairs:], maps["gt"][pairs:]
        maps = {key: value[:pairs] for key, value in maps.items()}
        temperature = fit_temperature(*held_out, fusion.eps)
    counts = count_sources(maps, fusion, temperature, batch_size)
    train = student.cfg
    return {
        "run": str(run),
        "checkpoint": str(checkpoint),
        "pairs_from": selection,
        "reads_teacher": student.plan.teacher,
        "student_alone": not sees_prior,
        "step": ckpt["step"],
        "method": train.method,
        "spm": train.spm,
        "rple": train.rple,
        "sesm": ckpt["config"]["model"]["sesm"]["enabled"],
        "ignore_conflicts": train.ignore_conflicts,
        "alpha": train.fusion.alpha,
        "lambda_dice": train.loss.lambda_dice,
        "spm_warmup_steps": train.spm_warmup_steps,
        "seed": train.seed,
        "temperature": temperature,
        **counts.summary(),
    }


def row_name(run: dict[str, Any]) -> str:
    """The run's method and switches, e.g. ``spm+sesm+rple``, ``fixed_fusion+no_conflicts``,
    ``fixed_fusion+alpha_0.0`` (a linear fusion's ``alpha``, the Dice weight and SPM's
    warm-up are named where they are not the config classes' defaults, so runs that differ
    there are not averaged into one row; a result from before a setting existed has the
    default). The counts score each fusion's labels without ``train.ignore_conflicts``' mask."""
    from l2l_train.config import FusionConfig, LossConfig, TrainConfig

    parts = [run["method"]]
    if run["method"] == "l2l":
        parts = ["spm" if run["spm"] else "no_spm"]
        parts += ["sesm"] if run["sesm"] else []
        parts += ["rple"] if run["rple"] else []
        warmup = run.get("spm_warmup_steps", TrainConfig.spm_warmup_steps)
        parts += [f"warmup_{warmup}"] if run["spm"] and warmup else []
    elif run.get("alpha", FusionConfig.alpha) != FusionConfig.alpha:
        parts.append(f"alpha_{run['alpha']}")
    parts += ["no_conflicts"] if run.get("ignore_conflicts") else []
    if run.get("lambda_dice", LossConfig.lambda_dice) != LossConfig.lambda_dice:
        parts.append(f"dice_{run['lambda_dice']}")
    name = "+".join(parts)
    if run.get("student_alone") and run.get("reads_teacher", True):
        name += ", p_w alone"  # a run without the teacher has no other p_w
    pairs_from = run.get("pairs_from", "unlabeled")
    return name + ("" if pairs_from == "unlabeled" else f" on {pairs_from}")


def markdown_table(runs: list[dict[str, Any]], columns: list[tuple[str, Any]]) -> str:
    """One line per row (mean ± std over its runs' seeds) of ``columns`` (header, getter)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        rows.setdefault(row_name(run), []).append(run)
    lines = [
        "| row | seeds | " + " | ".join(c for c, _ in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for name, group in rows.items():
        cells = []
        for _, value in columns:
            values = [float(value(r)) for r in group]
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.2f}{spread}")
        seeds = " / ".join(str(r["seed"]) for r in group)
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(runs: list[dict[str, Any]]) -> str:
    """Two tables: the sources and each fusion's oIoU; then whom each fusion follows where
    the sources disagree, and its pseudo-labels at the static thresholds."""
    sources = [
        ("disagree %", lambda r: r["disagreement_share"]),
        ("p_w right %", lambda r: r["student_right_on_disagreement"]),
        ("SPM w %", lambda r: 100 * r["spm_prior_weight_on_disagreement"]),
        ("|logit p_w|", lambda r: r["student_logit_margin_on_disagreement"]),
        ("|logit q|", lambda r: r["teacher_logit_margin_on_disagreement"]),
    ]
    for source, name in (("p_w", "student"), ("q", "teacher")):
        sources += [
            (f"|logit {source}| {side}", lambda r, k=f"{name}_logit_margin_where_{side}": r[k])
            for side in ("right", "wrong")
        ]
    calibrated = all(r["temperature"] is not None for r in runs)
    if calibrated:
        sources.append(("temperature", lambda r: r["temperature"]))
    extra = ("spm_calibrated",) if calibrated else ()
    sources += [(f"{n} oIoU", lambda r, n=n: r["fusions"][n]["oIoU"]) for n in (*FUSIONS, *extra)]
    labels = []
    for name in ("own", "spm", "linear", *extra):
        labels += [
            (
                f"{name}: p_w's side %",
                lambda r, n=name: r["fusions"][n]["follows_student_on_disagreement"],
            ),
            (f"{name}: right %", lambda r, n=name: r["fusions"][n]["right_on_disagreement"]),
            (f"{name}: label acc %", lambda r, n=name: r["fusions"][n]["label_accuracy"]),
            (f"{name}: label cov %", lambda r, n=name: r["fusions"][n]["label_coverage"]),
        ]
    return markdown_table(runs, sources) + "\n\n" + markdown_table(runs, labels)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = [
        score_run(
            run,
            args.checkpoint,
            args.pairs,
            args.batch_size,
            args.calibrate,
            args.pairs_from,
            args.student_alone,
        )
        for run in args.runs
    ]
    table = markdown(runs)
    write_result(
        args.out,
        {
            "benchmark": "fusion_sources",
            "machine": describe_machine(torch.device("cpu")),
            "static_thresholds": STATIC_THRESHOLDS,
            "runs": runs,
            "table": table,
        },
    )
    print(table)


if __name__ == "__main__":
    main()
