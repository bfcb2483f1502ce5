"""What reusing inputs saves: the loader's in-memory cache and evaluation's cached text features.

    .venv/bin/python benchmarks/reuse_speed.py            # -> results/reuse_speed.json
    .venv/bin/python benchmarks/reuse_speed.py --steps 50 --rounds 1   # smoke run

Reads the pairs, priors and params of ``--params`` (``dvc repro`` through the ``priors`` stage
first). One thread, nothing else should run; two arms per measurement, alternating over
``--rounds`` rounds (order rotating), compared as the median of the per-round ratios:

- **loader**: the items one rank's DataLoader workers make in a ``--steps``-step run of the
  params (every ``train.processes``-th visit of the labelled and unlabelled streams, as
  ``l2l-train run`` draws them), CPU seconds per step with ``train.loader_cache_mb`` of
  decoded, resized images, masks and priors kept (``cached``) against none (``uncached``).
  The cache starts empty, as in a run, so the figure includes its warm-up.
- **validation**: one ``evaluate`` of the val split (``eval.batch_size``, no workers) with the
  frozen text encoder's features read from a :class:`~l2l_train.text_cache.FrozenTextCache`
  (``cached``, built once per run: ``cache_build_s``) against encoding every batch
  (``encoded``, as before).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, describe_machine, paired_ratio, rotated, write_result


def loader_seconds(params: Any, steps: int, cache_mb: int) -> tuple[float, float]:
    """Seconds to make rank 0's labelled and unlabelled items of a ``steps``-step run, and
    the MiB its caches held at the end."""
    from l2l_train.data import LabeledPairs, UnlabeledPairs
    from l2l_train.model import build_tokenizer
    from l2l_train.pairs import open_teacher_store, pair_source

    cfg = params.train
    store, tokenizer = open_teacher_store(params), build_tokenizer(params.model.text)
    sources = {
        role: pair_source(params, role, tokenizer, cfg.image_size, store, cache_mb=cache_mb)
        for role in ("labeled", "unlabeled")
    }
    streams = [
        (LabeledPairs(sources["labeled"], cfg.seed, cfg.augment), cfg.batch_size_x),
        (UnlabeledPairs(sources["unlabeled"], cfg.seed, cfg.augment), cfg.batch_size_u),
    ]
    world = cfg.processes
    tick = time.perf_counter()
    for dataset, batch in streams:
        for visit in range(0, steps * batch * world, world):
            dataset[visit]
    seconds = time.perf_counter() - tick
    held = sum(source.cache.held_bytes for source in sources.values()) / 2**20
    return seconds, held


def validation_arms(params: Any) -> tuple[dict[str, Any], float]:
    """The two validation calls and the seconds the text cache took to build."""
    from l2l_train.data import EvalPairs, eval_loader
    from l2l_train.evaluate import evaluate
    from l2l_train.model import build_segmentor, build_tokenizer
    from l2l_train.pairs import pair_source
    from l2l_train.text_cache import FrozenTextCache

    cfg, cpu = params.train, torch.device("cpu")
    tokenizer = build_tokenizer(params.model.text)
    torch.manual_seed(cfg.seed)
    model = build_segmentor(params.model)
    source = pair_source(params, params.eval.val_split, tokenizer, cfg.image_size)
    tick = time.perf_counter()
    cache = FrozenTextCache(model.text, tokenizer, cpu, source.expression)
    build_s = time.perf_counter() - tick
    data = EvalPairs(source)

    def arm(text_cache: FrozenTextCache | None):
        def call() -> None:
            loader = eval_loader(data, params.eval.batch_size, rank=0, world=1, num_workers=0)
            evaluate(model, loader, device=cpu, amp=False, threshold=0.5, text_cache=text_cache)

        return call

    return {"encoded": arm(None), "cached": arm(cache)}, build_s


def run(args: argparse.Namespace) -> dict[str, Any]:
    from l2l_train.config import load_trainer_params

    torch.set_num_threads(1)
    params = load_trainer_params(args.params)
    cache_mb = params.train.loader_cache_mb
    loader: dict[str, list[float]] = {"uncached": [], "cached": []}
    held = 0.0
    validation: dict[str, list[float]] = {"encoded": [], "cached": []}
    calls, build_s = validation_arms(params)
    for round_index in range(args.rounds):
        for name in rotated(["uncached", "cached"], round_index):
            seconds, held_mb = loader_seconds(
                params, args.steps, cache_mb if name == "cached" else 0
            )
            loader[name].append(seconds / args.steps)
            held = max(held, held_mb)
            print(f"round {round_index}: loader {name}: {1e3 * seconds / args.steps:.1f} ms/step")
        for name in rotated(["encoded", "cached"], round_index):
            tick = time.perf_counter()
            calls[name]()
            validation[name].append(time.perf_counter() - tick)
            print(f"round {round_index}: validation {name}: {validation[name][-1]:.1f} s")
    return {
        "benchmark": "reuse_speed",
        "command": "benchmarks/reuse_speed.py",
        "machine": describe_machine(torch.device("cpu")),
        "config": {
            "params": args.params,
            "steps": args.steps,
            "rounds": args.rounds,
            "processes": params.train.processes,
            "batch_size_x": params.train.batch_size_x,
            "batch_size_u": params.train.batch_size_u,
            "image_size": params.train.image_size,
            "loader_cache_mb": cache_mb,
        },
        "loader": {
            "seconds_per_step": loader,
            "cached_held_mib": held,
            "uncached_over_cached": paired_ratio(loader["uncached"], loader["cached"]),
        },
        "validation": {
            "seconds": validation,
            "cache_build_s": build_s,
            "encoded_over_cached": paired_ratio(validation["encoded"], validation["cached"]),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=900, help="training steps of one rank")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "reuse_speed.json"))
    args = parser.parse_args()
    result = run(args)
    write_result(Path(args.out), result)
    loader, validation = result["loader"], result["validation"]
    print(
        f"loader: {loader['uncached_over_cached']:.2f}x less CPU per step with the cache "
        f"({loader['cached_held_mib']:.0f} MiB held); validation: "
        f"{validation['encoded_over_cached']:.2f}x faster with cached text features"
    )


if __name__ == "__main__":
    main()
