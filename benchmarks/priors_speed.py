"""Prior generation speed: SAM2 with one image embedding per image versus re-encoding the
image for every pair, and the embedded default's simulated teacher.

    .venv/bin/python benchmarks/priors_speed.py [--images 12] [--per-image 3] [--repeats 3]
    .venv/bin/python benchmarks/priors_speed.py --full   # SAM2.1 Hiera-L at 1024, CUDA if any

On a synthetic set with ``--per-image`` expressions per image (boxes from the ground-truth
masks, so every pair reaches SAM2), each pass runs the SAM2 stage over every pair in one of
two ways: ``per_image`` encodes each image once and prompts all its boxes in one batched
decoder call (what ``generate`` does); ``per_pair`` encodes the image again for every pair.
Passes of the two modes alternate (their order swapping each repeat) after one untimed
warm-up pass each, so drift in machine speed hits both alike; medians are reported. SAM2
has random weights (none can be downloaded here): speed does not depend on them.

Prints a table and writes ``benchmarks/results/priors_speed.json`` (``--full``:
``priors_speed_full.json``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import write_result

from pipeline.config import SAM2Config, SimulatedTeacherConfig, SyntheticConfig
from pipeline.datasets.manifest import decode_mask, load_rgb
from pipeline.datasets.synthetic import build_synthetic
from pipeline.grounding.simulated import SimulatedTeacher, mask_box
from pipeline.segment.sam2 import SAM2Prior, build_sam2_prior

RESULTS = Path(__file__).resolve().parent / "results"
TINY = {"config": "configs/sam2.1/sam2.1_hiera_t.yaml", "image_size": 256, "image_px": 128}
FULL = {"config": "configs/sam2.1/sam2.1_hiera_l.yaml", "image_size": 1024, "image_px": 512}
SIMULATED_PRIOR_SIZE = 128  # the embedded default's priors.size


@dataclass(frozen=True)
class ImagePrompts:
    rgb: np.ndarray  # (H, W, 3) uint8
    boxes: np.ndarray  # (k, 4) XYXY original pixels, one per expression


def synthetic_set(folder: Path, images: int, per_image: int, image_px: int):
    """Build a synthetic train set of ``images`` scenes at ``image_px``.

    Returns:
        (prompts, pairs): per image its RGB and the ground-truth boxes of up to
        ``per_image`` of its expressions; and every train pair's manifest row (dicts).
    """
    cfg = SyntheticConfig(
        train_images=images, val_images=1, test_images=1, image_size=image_px, dir=str(folder)
    )
    prepared = build_synthetic(cfg)
    pairs = [vars(s) for s in prepared.samples if s.split == "train"]
    by_image: dict[str, list[dict]] = {}
    for pair in pairs:
        by_image.setdefault(pair["image_path"], []).append(pair)
    prompts = [
        ImagePrompts(
            np.array(load_rgb(prepared.image_root / path)),  # writable: torch wraps it
            np.stack([mask_box(decode_mask(p["mask"])) for p in rows[:per_image]]),
        )
        for path, rows in sorted(by_image.items())
    ]
    return prompts, pairs


def encode_per_image(prior: SAM2Prior, prompts: list[ImagePrompts]) -> None:
    for item in prompts:
        prior.set_image(item.rgb)
        prior.predict(item.boxes)


def encode_per_pair(prior: SAM2Prior, prompts: list[ImagePrompts]) -> None:
    for item in prompts:
        for box in item.boxes:
            prior.set_image(item.rgb)
            prior.predict(box[None])


def interleaved_seconds(
    passes: dict[str, Callable[[], None]], repeats: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Wall seconds of ``repeats`` timed runs of each pass, alternating passes (order
    reversed every other repeat) after one untimed warm-up run of each."""
    for run in passes.values():
        run()
    sync()
    seconds: dict[str, list[float]] = {name: [] for name in passes}
    names = list(passes)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            passes[name]()
            sync()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def timing(seconds: list[float], pairs: int) -> dict:
    median = statistics.median(seconds)
    return {"seconds": seconds, "median_s": median, "pairs_per_s": pairs / median}


def run(images: int, per_image: int, repeats: int, full: bool) -> dict:
    """The whole benchmark; returns the JSON-ready result."""
    import torch

    setup = FULL if full else TINY
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sam2_cfg = SAM2Config(
        config=setup["config"], checkpoint=None, image_size=setup["image_size"], device=device
    )
    prior_size = setup["image_size"] // 4  # SAM2's own low-res logits: no extra resize
    prior = build_sam2_prior(sam2_cfg, prior_size, allow_random_weights=True)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as folder:
        prompts, pairs = synthetic_set(Path(folder), images, per_image, setup["image_px"])
        n_pairs = sum(len(p.boxes) for p in prompts)
        sam2_seconds = interleaved_seconds(
            {
                "per_image": lambda: encode_per_image(prior, prompts),
                "per_pair": lambda: encode_per_pair(prior, prompts),
            },
            repeats,
            sync,
        )
        teacher = SimulatedTeacher(SimulatedTeacherConfig(), folder, SIMULATED_PRIOR_SIZE)
        # A pass takes milliseconds: more repeats steady its median at no cost.
        simulated_seconds = interleaved_seconds(
            {"simulated": lambda: teacher.predict(pairs)}, max(repeats, 20), lambda: None
        )
    modes = {name: timing(s, n_pairs) for name, s in sam2_seconds.items()}
    return {
        "benchmark": "priors_speed",
        "task": "SAM2 stage, one image embedding per image vs re-encoding per pair",
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "sam2": {
            "config": sam2_cfg.config,
            "image_size": sam2_cfg.image_size,
            "prior_size": prior_size,
            "weights": "random",
            "dtype": "bfloat16 autocast" if device == "cuda" else "float32",
        },
        "images": len(prompts),
        "image_px": setup["image_px"],
        "pairs": n_pairs,
        "pairs_per_image": n_pairs / len(prompts),
        "repeats": repeats,
        "modes": modes,
        "ratio_per_image_over_per_pair": (
            modes["per_image"]["pairs_per_s"] / modes["per_pair"]["pairs_per_s"]
        ),
        "simulated": {
            "prior_size": SIMULATED_PRIOR_SIZE,
            "image_px": setup["image_px"],
            **timing(simulated_seconds["simulated"], len(pairs)),
            "pairs": len(pairs),
        },
    }


def print_table(result: dict) -> None:
    sam2 = result["sam2"]
    print(
        f"{result['task']}: {sam2['config']} at {sam2['image_size']}, {result['device']}, "
        f"torch {result['torch']}, {result['threads']} threads"
    )
    print(
        f"{result['images']} images, {result['pairs']} pairs "
        f"({result['pairs_per_image']:.1f} per image), {result['repeats']} repeats"
    )
    print(f"{'mode':<12}{'pairs':>7}{'median s':>11}{'pairs/s':>10}")
    for name, mode in result["modes"].items():
        print(
            f"{name:<12}{result['pairs']:>7}{mode['median_s']:>11.3f}{mode['pairs_per_s']:>10.2f}"
        )
    sim = result["simulated"]
    print(f"{'simulated':<12}{sim['pairs']:>7}{sim['median_s']:>11.3f}{sim['pairs_per_s']:>10.1f}")
    print(f"one embedding per image: {result['ratio_per_image_over_per_pair']:.2f}x the pairs/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--per-image", type=int, default=3, help="expressions per image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--full",
        action="store_true",
        help="SAM2.1 Hiera-L at image_size 1024 on 512 px images (CUDA when available)",
    )
    args = parser.parse_args()
    result = run(args.images, args.per_image, args.repeats, args.full)
    print_table(result)
    write_result(RESULTS / ("priors_speed_full.json" if args.full else "priors_speed.json"), result)


if __name__ == "__main__":
    main()
