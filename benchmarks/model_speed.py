"""Segmentor speed and size: forward+backward time of the embedded default on this CPU, and
trainable parameter counts of the Baseline and +SESM at embedded and paper size.

    .venv/bin/python benchmarks/model_speed.py [--batch 8] [--size 128] [--steps 20] [--warmup 10]
    .venv/bin/python benchmarks/model_speed.py --breakdown params.yaml [--batch 12]
    .venv/bin/python benchmarks/model_speed.py --compare params.yaml other.yaml [--batch 12]

Prints a table and writes ``benchmarks/results/model_speed.json``.

``--breakdown PARAMS``: where the training forward's time goes for that params file's model
at its ``train.image_size`` (one thread; every pair with a prior, cached word features, as a
step feeds it): milliseconds per forward of the visual encoder (its SESM conditioning,
context blocks, axis-count blocks and prior field run inside it, and are also timed on their
own), the FPN
decoder and the full-resolution head, medians over ``--steps`` forwards; the whole forward+backward beside
them. Writes ``benchmarks/results/model_breakdown.json``.

``--compare PARAMS [PARAMS ...]``: is one model cheaper to train than another? The same
training forward (under the file's ``train.amp_cpu``) and its backward for each file's model,
on one thread, in interleaved blocks
over ``--rounds`` rounds; each model's time as a ratio to the first's (median of per-round
ratios). Writes ``benchmarks/results/model_compare.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from common import interleaved_blocks, paired_ratio, summarize, write_result
from torch import Tensor

from l2l_train.config import ModelConfig
from l2l_train.model import Segmentor, build_segmentor, build_tokenizer, count_parameters
from l2l_train.model.segmentor import paper_size_config

RESULT = Path(__file__).resolve().parent / "results" / "model_speed.json"
PAPER = {"sesm_trainable": 237e6, "sesm_over_baseline": 9.353e6}


def time_train_step(
    model: Segmentor, batch: int, size: int, steps: int, warmup: int
) -> list[float]:
    """Seconds per forward+backward of ``batch`` images at ``size``², each with a prior and
    an expression, after ``warmup`` untimed steps."""
    tokenize = build_tokenizer(ModelConfig().text)
    input_ids, attention_mask = tokenize(["the second small red circle left of the square"] * batch)
    images = torch.randn(batch, 3, size, size)
    prior = torch.rand(batch, 1, size, size)
    model.train()
    seconds = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        model(images, input_ids, attention_mask, prior).mean().backward()
        elapsed = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        if step >= warmup:
            seconds.append(elapsed)
    return seconds


def paper_size_counts() -> dict[str, int]:
    """Trainable parameters of the paper-size Baseline and +SESM, built on the meta device
    (BERT-base from its default config; no weights needed)."""
    from transformers import BertConfig

    counts = {}
    with tempfile.TemporaryDirectory() as folder:
        BertConfig().save_pretrained(folder)
        for name, sesm in (("baseline", False), ("sesm", True)):
            with torch.device("meta"):
                model = build_segmentor(paper_size_config(folder, sesm=sesm), load_weights=False)
            counts[name] = count_parameters(model)
    return counts


def run(batch: int, size: int, steps: int, warmup: int) -> dict:
    """The whole benchmark; returns the JSON-ready result."""
    torch.manual_seed(0)
    embedded = {}
    timings = {}
    for name, enabled in (("baseline", False), ("sesm", True)):
        cfg = ModelConfig()
        model = build_segmentor(replace(cfg, sesm=replace(cfg.sesm, enabled=enabled)))
        embedded[name] = {
            "trainable": count_parameters(model),
            "total": count_parameters(model, trainable_only=False),
        }
        seconds = time_train_step(model, batch, size, steps, warmup)
        timings[name] = {
            "median_s": statistics.median(seconds),
            "mean_s": statistics.fmean(seconds),
            "min_s": min(seconds),
            "max_s": max(seconds),
        }
    paper = paper_size_counts()
    return {
        "benchmark": "model_speed",
        "task": f"forward+backward, batch {batch} at {size}x{size}, embedded default, CPU",
        "steps": steps,
        "warmup_steps": warmup,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "timings": timings,
        "params_embedded": embedded,
        "params_paper_size": {
            **paper,
            "sesm_over_baseline": paper["sesm"] - paper["baseline"],
            "paper_reported": PAPER,
        },
    }


def training_forward(params_path: str, batch: int) -> tuple[Segmentor, Callable[[], Tensor], int]:
    """``params_path``'s segmentor in training mode, a call of its training forward on
    ``batch`` pairs (every pair with a prior, cached word features, under the file's CPU
    autocast setting, as a step feeds it) that returns the logits, and the input side (its
    ``train.image_size``)."""
    from l2l_train.config import load_trainer_params
    from l2l_train.runtime import amp_enabled, autocast

    params = load_trainer_params(params_path)
    size = params.train.image_size
    torch.manual_seed(0)
    model = build_segmentor(params.model).train()
    input_ids, attention_mask = build_tokenizer(params.model.text)(
        ["the second small red circle left of the square"] * batch
    )
    with torch.no_grad():
        words, word_mask = model.text(input_ids, attention_mask)
    images, prior = torch.randn(batch, 3, size, size), torch.rand(batch, 1, size, size)
    cpu = torch.device("cpu")
    amp = amp_enabled(params.train, cpu)

    def forward() -> Tensor:
        with autocast(cpu, amp):
            return model(images, None, None, prior, words=words, word_mask=word_mask).float()

    return model, forward, size


def compare_models(params_paths: list[str], batch: int, rounds: int, warmup: int) -> dict:
    """Forward+backward of each params file's training model (:func:`training_forward`),
    interleaved over ``rounds`` blocks on torch's threads; ratios of each to the first."""
    arms = {}
    for path in params_paths:
        model, forward, _ = training_forward(path, batch)

        def step(model: Segmentor = model, forward: Callable[[], Tensor] = forward) -> None:
            forward().mean().backward()
            model.zero_grad(set_to_none=True)

        arms[path] = step
    seconds = interleaved_blocks(
        arms, rounds=rounds, block=5, warmup=warmup, settle=1, device=torch.device("cpu")
    )
    first = params_paths[0]
    return {
        "benchmark": "model_compare",
        "task": f"training forward+backward, batch {batch}, every pair with a prior, "
        f"{torch.get_num_threads()} thread(s)",
        "rounds": rounds,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "seconds": {path: summarize(v) for path, v in seconds.items()},
        "first": first,
        "over_first": {path: paired_ratio(v, seconds[first]) for path, v in seconds.items()},
    }


def forward_breakdown(params_path: str, batch: int, steps: int, warmup: int) -> dict:
    """Median ms per forward of each top-level part of ``params_path``'s segmentor."""
    model, forward, size = training_forward(params_path, batch)
    parts = {
        "visual (incl. conditioning, context, axis counts, prior field)": model.visual,
        "conditioning": model.conditioners,
        "context": model.context,
        "axis counts": model.counting,
        "prior field": model.prior_field,
        "decoder": model.decoder,
        "full-resolution head": model.head,
    }
    spent = {name: 0.0 for name, part in parts.items() if part is not None}
    for name, part in parts.items():
        if part is None:
            continue
        modules = (
            list(part.children())
            if isinstance(part, torch.nn.ModuleDict | torch.nn.ModuleList)
            else [part]
        )
        for module in modules:
            module.register_forward_pre_hook(lambda m, _: setattr(m, "_tick", time.perf_counter()))
            module.register_forward_hook(
                lambda m, _i, _o, name=name: spent.__setitem__(
                    name, spent[name] + time.perf_counter() - m._tick
                )
            )
    per_step: dict[str, list[float]] = {
        name: [] for name in [*spent, "forward", "forward+backward"]
    }
    for step in range(warmup + steps):
        before = dict(spent)
        start = time.perf_counter()
        logits = forward()
        forward_s = time.perf_counter() - start
        logits.mean().backward()
        total_s = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        if step >= warmup:
            for name in spent:
                per_step[name].append(spent[name] - before[name])
            per_step["forward"].append(forward_s)
            per_step["forward+backward"].append(total_s)
    return {
        "benchmark": "model_breakdown",
        "task": f"training forward of {params_path}'s model, batch {batch} at {size}x{size}, "
        f"every pair with a prior, {torch.get_num_threads()} thread(s)",
        "steps": steps,
        "warmup_steps": warmup,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "median_ms": {name: 1e3 * statistics.median(v) for name, v in per_step.items()},
    }


def print_table(result: dict) -> None:
    print(result["task"], f"(torch {result['torch']}, {result['threads']} threads)")
    print(f"{'model':<10}{'median s':>10}{'min s':>9}{'trainable':>12}{'paper-size':>14}")
    for name in ("baseline", "sesm"):
        timing = result["timings"][name]
        print(
            f"{name:<10}{timing['median_s']:>10.3f}{timing['min_s']:>9.3f}"
            f"{result['params_embedded'][name]['trainable']:>12,}"
            f"{result['params_paper_size'][name]:>14,}"
        )
    delta = result["params_paper_size"]["sesm_over_baseline"]
    print(f"paper size: +SESM over Baseline {delta / 1e6:.3f} M (paper: +9.353 M; total 237 M)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    # The first ~10 CPU steps run several times slower (oneDNN primitive creation, allocator
    # growth); the figure of interest is the steady state of a training run.
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--breakdown", metavar="PARAMS", help="time the parts of this model")
    parser.add_argument(
        "--compare",
        metavar="PARAMS",
        nargs="+",
        help="time these params files' models against the first, interleaved",
    )
    parser.add_argument("--rounds", type=int, default=10, help="--compare: interleaved blocks")
    args = parser.parse_args()
    if args.compare or args.breakdown:
        torch.set_num_threads(1)  # the models' own cost, not how well they use threads
    if args.compare:
        result = compare_models(args.compare, args.batch, args.rounds, args.warmup)
        for path, ratio in result["over_first"].items():
            median = result["seconds"][path]["median_s"]
            print(f"{path:<40}{1e3 * median:>8.1f} ms  {ratio:.3f}x the first's time")
        write_result(RESULT.with_name("model_compare.json"), result)
        return
    if args.breakdown:
        result = forward_breakdown(args.breakdown, args.batch, args.steps, args.warmup)
        for name, ms in result["median_ms"].items():
            print(f"{name:<40}{ms:>8.1f} ms")
        write_result(RESULT.with_name("model_breakdown.json"), result)
        return
    result = run(args.batch, args.size, args.steps, args.warmup)
    print_table(result)
    write_result(RESULT, result)


if __name__ == "__main__":
    main()
