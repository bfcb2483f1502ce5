"""Two fixed costs of ``dvc repro`` that do not depend on the model: the ``priors`` stage's
check of the stored rows before it generates (``l2l-priors generate``, one call per split of
``priors.splits``), and the ``pretrain`` stage's rendering of its scenes.

    .venv/bin/python benchmarks/stages_speed.py            # -> results/stages_speed.json
    .venv/bin/python benchmarks/stages_speed.py --rounds 1 --scenes 64   # smoke run

Reads the params, pairs and prior store of ``--params`` (``dvc repro`` through the ``priors``
stage first). Nothing else should run. Two arms per measurement, alternating over ``--rounds``
rounds (order rotating), compared as the median of the per-round ratios:

- **verify**: for every split ``generate`` covers, opening the store and checking the rows it
  serves: all of them (``whole_store``, what each call did before) against the split's own
  (``split_rows``, :meth:`~pipeline.store.reader.PriorStore.verified` of its keys, what it
  does now). Seconds summed over the splits.
- **render**: ``--scenes`` scenes of the pretrain stream in this process (``in_process``)
  against ``pretrain.workers`` DataLoader workers (``workers``); the same tensors either way
  (``tests/test_l2l_train/test_pretrain.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, describe_machine, interleaved_blocks, paired_ratio, write_result


def verify_splits(params: Any, split_keys: dict[str, list[str]], whole_store: bool) -> None:
    """What ``generate`` does before it computes anything, once per split: open the store and
    check the rows of the whole store (before) or of the split's keys (now)."""
    from pipeline.contract import teacher_hash
    from pipeline.store.reader import PriorStore

    for keys in split_keys.values():
        store = PriorStore.open(params.paths.priors, teacher_hash=teacher_hash(params.priors))
        store.verified(None if whole_store else keys)


def render(params: Any, scenes: int, workers: int) -> None:
    from l2l_train.pretrain import render_parsing_set

    render_parsing_set(params, 0, scenes, params.pretrain.image_size, workers)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from l2l_train.config import load_trainer_params
    from pipeline.datasets.manifest import prior_splits
    from pipeline.generate import shard_pairs

    params = load_trainer_params(args.params)
    split_keys = {split: shard_pairs(params, split)[1] for split in prior_splits(params, None)}
    # One call per block, no warm-up: each call is seconds long and does its own start-up.
    timing = {"rounds": args.rounds, "block": 1, "warmup": 0, "settle": 0}
    verify = interleaved_blocks(
        {
            "whole_store": lambda: verify_splits(params, split_keys, whole_store=True),
            "split_rows": lambda: verify_splits(params, split_keys, whole_store=False),
        },
        device=torch.device("cpu"),
        **timing,
    )
    workers = params.pretrain.workers
    rendering = interleaved_blocks(
        {
            "in_process": lambda: render(params, args.scenes, 0),
            "workers": lambda: render(params, args.scenes, workers),
        },
        device=torch.device("cpu"),
        **timing,
    )
    return {
        "benchmark": "stages_speed",
        "machine": describe_machine(torch.device("cpu")),
        "params": args.params,
        "rounds": args.rounds,
        "verify": {
            "splits": {split: len(keys) for split, keys in split_keys.items()},
            "s": verify,
            "whole_store_over_split_rows": paired_ratio(
                verify["whole_store"], verify["split_rows"]
            ),
        },
        "render": {
            "scenes": args.scenes,
            "workers": workers,
            "s": rendering,
            "in_process_over_workers": paired_ratio(rendering["in_process"], rendering["workers"]),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--scenes", type=int, default=2000, help="scenes rendered per block")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "stages_speed.json"))
    args = parser.parse_args()
    result = run(args)
    write_result(Path(args.out), result)
    verify, render = result["verify"], result["render"]
    print(
        f"generate's check of the store: {verify['whole_store_over_split_rows']:.2f}x faster "
        f"on each split's rows ({sum(verify['splits'].values())} pairs in "
        f"{len(verify['splits'])} splits); pretrain scenes: "
        f"{render['in_process_over_workers']:.2f}x faster with {render['workers']} workers"
    )


if __name__ == "__main__":
    main()
