"""RPLE's reward over a grid of fixed thresholds, on a trained run's unlabelled pairs.

    .venv/bin/python benchmarks/rple_reward.py [--params params.yaml]
        [--checkpoint data/models/latest.pt] [--pairs 512] [--threads 1]

Why: RPLE's thresholds drift toward 0.5 / 0.5 in training (the default's `make run` ends at
0.52 / 0.48; without SESM the ablation's +SPM+RPLE rows end near 0.57 / 0.40, with lower
selected-pixel accuracy than +SPM's static 0.70 / 0.30; ``benchmarks/README.md``). Is that the
agent failing to find good thresholds, or what the reward asks for? This scores, for fixed
``(tau_fg, tau_bg)`` on the same pairs, what the agent would be rewarded with (the
instructional gain of DESIGN.md and each of its terms, no threshold change) beside what the
labels are worth against the ground truth the loop never sees (accuracy of the selected
pixels, overall and per class, and coverage), with the run's own ``q_hat`` and its prediction
on the strong view.

Why the two can disagree, by hand: selecting one more of N pixels, with gap
``g = |p - q_hat|`` to the prediction, changes the gain by about
``(lambda_cov - lambda_cons (g - mean_gap)) / N`` (coverage rises by 1/N, the mean gap over
the ~N selected pixels moves by ``(g - mean_gap) / N``); with the default weights (0.3, 0.4)
any pixel whose gap is below ``mean_gap + 0.75`` earns reward, which every pixel of the band
between the thresholds does while ``p`` is not confidently opposite. Separability is the only
term against closing, through the mean prediction of the selected classes.

The pairs are the unlabelled stream's first ``--pairs`` in the run's order; the strong view is
the loader's (intensity ops), with the original expression and no prior (as for the 80 % of
pairs whose prior the trained forward hides). Writes ``benchmarks/results/rple_reward.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, describe_machine, write_result

# The reward's terms: weight name suffix -> the grid point's key.
REWARD_TERMS = {"sep": "separability", "cons": "consistency", "cov": "coverage_term"}
FG_GRID = (0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 0.95)
BG_GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="default: <paths.models>/latest.pt"
    )
    parser.add_argument("--pairs", type=int, default=512, help="unlabelled pairs scored")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "rple_reward.json")
    return parser.parse_args(argv)


@torch.no_grad()
def unlabeled_maps(student: Any, data_u: Any, pairs: int, batch_size: int) -> dict[str, Any]:
    """``q_hat``, ignore-band widths, the agent's thresholds, strong-view probabilities and
    ground truth of the first ``pairs`` unlabelled visits (the weak pass without exploration
    noise)."""
    from l2l_train.data import split_eval_only, train_loader
    from l2l_train.pairs import normalize_images

    loader = train_loader(data_u, batch_size, start=0, rank=0, world=1, num_workers=0)
    parts: list[dict[str, torch.Tensor]] = []
    for batch in loader:
        train_u, eval_u = split_eval_only(batch)
        targets = student.weak_targets(train_u, explore=False).targets
        text = student.text_inputs(list(train_u["expr_u_w"]))
        logits = student.model(normalize_images(train_u["img_u_s"]), **text)
        parts.append(
            {
                "q_hat": targets.q_hat,
                "band": targets.band,
                "thresholds": targets.thresholds,
                "p_strong": torch.sigmoid(logits.float()),
                "gt": eval_u["mask_u_eval"],
                "has_gt": eval_u["has_mask_u_eval"],
            }
        )
        if len(parts) * batch_size >= pairs:
            break
    return {key: torch.cat([p[key] for p in parts])[:pairs] for key in parts[0]}


def score_thresholds(maps: dict[str, Any], tau_fg: float, tau_bg: float, agent: Any) -> dict:
    """Mean reward and terms, and the labels' accuracy and coverage, at fixed thresholds."""
    from l2l_train.losses import BACKGROUND, FOREGROUND
    from l2l_train.metrics import PseudoLabelAccumulator
    from l2l_train.rple import compute_reward
    from l2l_train.targets import pseudo_labels

    q_hat = maps["q_hat"]
    thresholds = torch.tensor([tau_fg, tau_bg]).expand(q_hat.shape[0], 2)
    labels = pseudo_labels(q_hat, thresholds, maps["band"])
    reward = compute_reward(maps["p_strong"], q_hat, labels, thresholds, thresholds, agent)
    quality = PseudoLabelAccumulator()
    known = maps["has_gt"]
    selected, truth = labels[known], maps["gt"][known].bool()
    quality.update(selected, truth)
    # Per class: the background's ~96 % of pixels hide the foreground labels' errors (a
    # wrong referent is labelled as confidently as the right one) in the overall accuracy.
    foreground, background = selected == FOREGROUND, selected == BACKGROUND
    return {
        "tau_fg": tau_fg,
        "tau_bg": tau_bg,
        "reward": reward.total.mean().item(),
        "separability": reward.separability.mean().item(),
        "consistency": reward.consistency.mean().item(),
        "coverage_term": reward.coverage.mean().item(),
        **{f"label_{k}": v for k, v in quality.compute().items()},
        "label_fg_precision": ((foreground & truth).sum() / foreground.sum()).item(),
        "label_bg_precision": ((background & ~truth).sum() / background.sum()).item(),
    }


QUANTILES = (0.05, 0.5, 0.95)


def threshold_spread(thresholds: torch.Tensor) -> dict[str, list[float]]:
    """How far the agent's per-pair thresholds spread: their :data:`QUANTILES`, per threshold.

    Shapes: thresholds (N, 2) as (tau_fg, tau_bg)."""
    levels = torch.tensor(QUANTILES, dtype=thresholds.dtype)
    return {
        name: torch.quantile(thresholds[:, column], levels).tolist()
        for column, name in enumerate(("tau_fg", "tau_bg"))
    }


def best_without(grid: list[dict], weights: dict[str, float], dropped: str) -> tuple:
    """``(tau_fg, tau_bg, gain)`` of the grid point with the largest gain without the term
    ``dropped`` (the stability term is 0 at fixed thresholds; the gain is below the clip)."""

    def gain(point: dict) -> float:
        return sum(weights[t] * point[REWARD_TERMS[t]] for t in REWARD_TERMS if t != dropped)

    best = max(grid, key=gain)
    return best["tau_fg"], best["tau_bg"], gain(best)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from l2l_train.checkpoint import load_checkpoint
    from l2l_train.config import load_trainer_params
    from l2l_train.figures import student_from_checkpoint, unlabeled_pairs

    params = load_trainer_params(args.params)
    checkpoint = args.checkpoint or Path(params.paths.models) / "latest.pt"
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    student, image_size = student_from_checkpoint(ckpt, torch.device("cpu"))
    train_cfg = student.cfg
    if not student.plan.teacher:
        raise SystemExit(f"{checkpoint}: method {train_cfg.method} has no teacher prior to fuse")
    data_u = unlabeled_pairs(params, student, image_size)
    maps = unlabeled_maps(student, data_u, args.pairs, args.batch_size)

    grid = [
        score_thresholds(maps, fg, bg, train_cfg.agent)
        for fg in FG_GRID
        for bg in BG_GRID
        if bg < fg
    ]
    best_reward = max(grid, key=lambda point: point["reward"])
    best_accuracy = max(grid, key=lambda point: point["label_accuracy"])
    weights = {term: getattr(train_cfg.agent, f"lambda_{term}") for term in REWARD_TERMS}
    result = {
        "benchmark": "rple_reward",
        "machine": describe_machine(torch.device("cpu")),
        "checkpoint": str(checkpoint),
        "method": train_cfg.method,
        "step": ckpt["step"],
        "pairs": int(maps["q_hat"].shape[0]),
        "reward_weights": weights,
        "agent_thresholds_last_epoch": [
            ckpt["progress"]["history"][-1].get(k) for k in ("u/tau_fg", "u/tau_bg")
        ],
        # The agent acts on each pair's state: does it choose per pair, or one pair of
        # thresholds for all? (5th, 50th and 95th percentile over the pairs, no noise.)
        "agent_thresholds_per_pair": threshold_spread(maps["thresholds"]),
        "best_by_reward": best_reward,
        "best_by_label_accuracy": best_accuracy,
        # The paper's Table 7 rows: where the reward without one term would put the thresholds.
        "best_by_reward_without": {
            term: best_without(grid, weights, term)[:2] for term in REWARD_TERMS
        },
        "grid": grid,
    }
    write_result(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "grid"}, indent=1))


if __name__ == "__main__":
    main()
