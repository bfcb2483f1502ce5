"""Prior generation speed: Qwen2.5-VL grounding (``generate`` at several batch sizes) and
the SAM2 stage with one image embedding per image versus re-encoding the image for every
pair, and the embedded default's simulated teacher; per pair against the paper's timings.

    .venv/bin/python benchmarks/priors_speed.py [--images 12] [--per-image 3] [--repeats 3]
        [--new-tokens 25] [--qwen-batches 1,2,4] [--skip-qwen] [--skip-sam2]
    .venv/bin/python benchmarks/priors_speed.py --full   # Qwen2.5-VL-7B + SAM2.1-L, CUDA

All models have random weights (none can be downloaded here): speed does not depend on them.

Qwen2.5-VL: a model built from a config (``--full``: Qwen2.5-VL-7B-Instruct's shape, 8.29 B
parameters, bf16; else a tiny one on a small image) generates exactly ``--new-tokens``
tokens (min = max new tokens, about a grounding answer's length) greedily for a batch of
identical RefCOCO-like pairs (a 640x480 COCO image as the processor resizes it plus a
~60-token prompt; inputs are built directly, no processor or tokenizer). Per batch size:
one untimed warm-up, then ``--repeats`` timed calls, alternating batch sizes; the median
call over the batch size is seconds per pair, and the lowest is the best batch size.

SAM2: on a synthetic set with ``--per-image`` expressions per image (boxes from the
ground-truth masks, so every pair reaches SAM2), each pass runs the SAM2 stage over every
pair in one of two ways: ``per_image`` encodes each image once and prompts all its boxes in
one batched decoder call (what ``generate`` does); ``per_pair`` encodes the image again for
every pair. Passes of the two modes alternate (their order swapping each repeat) after one
untimed warm-up pass each, so drift in machine speed hits both alike; medians are reported.

Per pair: Qwen at its best batch size plus SAM2 ``per_image``, against the paper's 1.743 s
(Qwen2.5-VL-7B) + 0.166 s (SAM2) per pair, measured on an RTX A6000: the ratio compares
devices as well as code.

Prints a table and writes ``benchmarks/results/priors_speed.json`` (``--full``:
``priors_speed_full.json``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from common import interleaved_blocks, synchronize, write_result

from l2l_train.model import count_parameters
from pipeline.config import SAM2Config, SimulatedTeacherConfig, SyntheticConfig
from pipeline.datasets.manifest import decode_mask, load_rgb
from pipeline.datasets.synthetic import build_synthetic
from pipeline.teachers.sam2 import SAM2Prior, build_sam2_prior
from pipeline.teachers.simulated import SimulatedTeacher, mask_box

RESULTS = Path(__file__).resolve().parent / "results"
SAM2_TINY = {"config": "configs/sam2.1/sam2.1_hiera_t.yaml", "image_size": 256, "image_px": 128}
SAM2_FULL = {"config": "configs/sam2.1/sam2.1_hiera_l.yaml", "image_size": 1024, "image_px": 512}
SIMULATED_PRIOR_SIZE = 128  # the embedded default's priors.size

# Seconds per pair in the paper, on an RTX A6000.
PAPER_S_PER_PAIR = {"qwen": 1.743, "sam2": 0.166}
PAPER_DEVICE = "NVIDIA RTX A6000"

# One RefCOCO pair as Qwen2.5-VL's processor feeds it. COCO images are 640x480; the processor
# resizes to multiples of 28 (14-px patches, 2x2 merge): 644x476, a (t, h, w) = (1, 34, 46)
# patch grid, 1564 patches, 391 image tokens after the merge.
COCO_GRID_THW = (1, 34, 46)
# Text around the image: the chat template's system and user turns, MLLMConfig.prompt with a
# short expression (twice) and the assistant header; about 60 tokens (estimated, no tokenizer
# here). A grounding answer (a JSON box and label) is about 25 tokens.
PROMPT_TEXT_TOKENS = 60
ANSWER_TOKENS = 25
TEXT_TOKEN_IDS = (1000, 100_000)  # random prompt tokens: ordinary ids, no special tokens

# Qwen2.5-VL-7B-Instruct's config.json, in this transformers' field names.
QWEN_FULL_TEXT = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
}
QWEN_FULL_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 3584,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}


@dataclass(frozen=True)
class QwenShape:
    name: str
    text: dict  # Qwen2_5_VLConfig text_config
    vision: dict  # Qwen2_5_VLConfig vision_config
    grid_thw: tuple[int, int, int]  # the image's patch grid
    note: str


QWEN_FULL = QwenShape(
    "Qwen2.5-VL-7B",
    QWEN_FULL_TEXT,
    QWEN_FULL_VISION,
    COCO_GRID_THW,
    "Qwen2.5-VL-7B-Instruct's shape on a 640x480 COCO image (resized to 644x476)",
)
# Runs in seconds on a CPU: same vocabulary and token ids, head_dim 64 (mrope over its 32
# frequencies), and a 112x112 image, (1, 8, 8) patches, 16 image tokens.
QWEN_TINY = QwenShape(
    "tiny",
    QWEN_FULL_TEXT
    | {
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1e6,
            "mrope_section": [8, 12, 12],
        },
    },
    QWEN_FULL_VISION
    | {
        "depth": 4,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_heads": 2,
        "out_hidden_size": 256,
        "fullatt_block_indexes": [1, 3],
    },
    (1, 8, 8),
    "small widths and a 112x112 image, not a COCO image's 644x476, to run in seconds on a "
    "CPU: its timings say nothing of the 7B model's",
)


# ----------------------------------------------------------------------------- timing


def timed_calls(
    calls: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds of ``repeats`` timed runs of each call after one untimed warm-up run each,
    the calls alternating (:func:`common.interleaved_blocks` with blocks of one call)."""
    return interleaved_blocks(calls, rounds=repeats, block=1, warmup=1, settle=0, device=device)


def timing(seconds: list[float], pairs: int) -> dict:
    median = statistics.median(seconds)
    return {"seconds": seconds, "median_s": median, "pairs_per_s": pairs / median}


# ----------------------------------------------------------------------------- Qwen2.5-VL


def qwen_config(shape: QwenShape):
    """A Qwen2_5_VLConfig of ``shape`` with Qwen2.5-VL's special token ids (the defaults)."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(text_config=shape.text, vision_config=shape.vision)


def build_qwen(shape: QwenShape, device: torch.device, dtype: torch.dtype):
    """A randomly initialised Qwen2_5_VLForConditionalGeneration of ``shape``, created on
    ``device`` in ``dtype`` (``meta``: shapes only, no memory), sdpa attention, eval mode."""
    from transformers import AutoModelForImageTextToText

    with device:
        model = AutoModelForImageTextToText.from_config(
            qwen_config(shape), dtype=dtype, attn_implementation="sdpa"
        )
    return model.eval()


def pair_inputs(config, grid_thw: tuple[int, int, int], batch: int, seed: int = 0) -> dict:
    """``generate`` inputs of ``batch`` identical pairs, as the processor would give them.

    Each row is ``<|vision_start|>``, the image tokens, ``<|vision_end|>`` and
    PROMPT_TEXT_TOKENS random text tokens; all rows have the same length, so no padding.

    Shapes (I image tokens = t*h*w / merge**2, L = I + 2 + PROMPT_TEXT_TOKENS):
        input_ids, attention_mask, mm_token_type_ids: (batch, L) int64
        pixel_values: (batch * t*h*w, 3 * temporal_patch * patch**2) float32, random
        image_grid_thw: (batch, 3)
    """
    vision = config.vision_config
    patches = grid_thw[0] * grid_thw[1] * grid_thw[2]
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(*TEXT_TOKEN_IDS, (PROMPT_TEXT_TOKENS,), generator=generator)
    row = torch.cat(
        [
            torch.tensor([config.vision_start_token_id]),
            torch.full((patches // vision.spatial_merge_size**2,), config.image_token_id),
            torch.tensor([config.vision_end_token_id]),
            text,
        ]
    )
    input_ids = row.repeat(batch, 1)
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    pixels = torch.randn(patches, patch_dim, generator=generator)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": (input_ids == config.image_token_id).long(),
        "pixel_values": pixels.repeat(batch, 1),
        "image_grid_thw": torch.tensor([grid_thw]).repeat(batch, 1),
    }


def generate_fixed(model, inputs: dict, new_tokens: int) -> None:
    """Greedy ``generate`` of exactly ``new_tokens`` tokens per row (end-of-turn cannot stop
    it early)."""
    with torch.inference_mode():
        sequences = model.generate(
            **inputs,
            do_sample=False,
            min_new_tokens=new_tokens,
            max_new_tokens=new_tokens,
            pad_token_id=0,
        )
    expected = (inputs["input_ids"].shape[0], inputs["input_ids"].shape[1] + new_tokens)
    assert tuple(sequences.shape) == expected, (tuple(sequences.shape), expected)


def peak_memory_gib(run: Callable[[], None], device: torch.device) -> float | None:
    """Peak GPU memory allocated during one untimed ``run()``; None (and no run) on the CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    run()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def qwen_speed(
    shape: QwenShape, device: torch.device, batches: list[int], new_tokens: int, repeats: int
) -> dict:
    """Seconds per ``generate`` call and per pair at each batch size; the best batch size.
    On CUDA, one more untimed call per batch size measures its peak memory."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_qwen(shape, device, dtype)
    inputs = {
        batch: {
            k: v.to(device) for k, v in pair_inputs(model.config, shape.grid_thw, batch).items()
        }
        for batch in batches
    }
    runs = {f"batch_{b}": partial(generate_fixed, model, inputs[b], new_tokens) for b in batches}
    peaks = {name: peak_memory_gib(run, device) for name, run in runs.items()}
    seconds = timed_calls(runs, repeats, device)
    per_batch = {
        name: {
            "batch": batch,
            **timing(seconds[name], batch),
            "s_per_pair": statistics.median(seconds[name]) / batch,
            "peak_memory_gib": peaks[name],
        }
        for name, batch in zip(runs, batches, strict=True)
    }
    best = min(per_batch.values(), key=lambda t: t["s_per_pair"])
    t, h, w = shape.grid_thw
    patch, merge = shape.vision["patch_size"], shape.vision["spatial_merge_size"]
    return {
        "shape": shape.name,
        "shape_note": shape.note,
        "params": count_parameters(model, trainable_only=False),
        "weights": "random",
        "dtype": str(dtype).removeprefix("torch."),
        "attention": "sdpa",
        "text_config": shape.text,
        "vision_config": shape.vision,
        "grid_thw": list(shape.grid_thw),
        "image_hw_px": [h * patch, w * patch],
        "image_tokens": t * h * w // merge**2,
        "prompt_tokens": inputs[batches[0]]["input_ids"].shape[1],
        "new_tokens": new_tokens,
        "repeats": repeats,
        "batches": per_batch,
        "best_batch": best["batch"],
        "best_s_per_pair": best["s_per_pair"],
    }


def full_qwen_params() -> int:
    """Qwen2.5-VL-7B-shaped model's parameter count, built on the meta device (no memory)."""
    model = build_qwen(QWEN_FULL, torch.device("meta"), torch.bfloat16)
    return count_parameters(model, trainable_only=False)


# ----------------------------------------------------------------------------- SAM2


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


def sam2_speed(images: int, per_image: int, repeats: int, full: bool, device: torch.device) -> dict:
    """The SAM2 stage per image vs per pair, and the simulated teacher."""
    setup = SAM2_FULL if full else SAM2_TINY
    sam2_cfg = SAM2Config(
        config=setup["config"],
        checkpoint=None,
        image_size=setup["image_size"],
        device=device.type,
    )
    prior_size = setup["image_size"] // 4  # SAM2's own low-res logits: no extra resize
    prior = build_sam2_prior(sam2_cfg, prior_size, allow_random_weights=True)

    with tempfile.TemporaryDirectory() as folder:
        prompts, pairs = synthetic_set(Path(folder), images, per_image, setup["image_px"])
        n_pairs = sum(len(p.boxes) for p in prompts)
        sam2_seconds = timed_calls(
            {
                "per_image": lambda: encode_per_image(prior, prompts),
                "per_pair": lambda: encode_per_pair(prior, prompts),
            },
            repeats,
            device,
        )
        teacher = SimulatedTeacher(SimulatedTeacherConfig(), folder, SIMULATED_PRIOR_SIZE)
        # A pass takes milliseconds: more repeats steady its median at no cost.
        simulated_seconds = timed_calls(
            {"simulated": lambda: teacher.predict(pairs)}, max(repeats, 20), torch.device("cpu")
        )
    modes = {name: timing(s, n_pairs) for name, s in sam2_seconds.items()}
    return {
        "sam2": {
            "config": sam2_cfg.config,
            "image_size": sam2_cfg.image_size,
            "prior_size": prior_size,
            "weights": "random",
            "dtype": "bfloat16 autocast" if device.type == "cuda" else "float32",
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


# ----------------------------------------------------------------------------- summary


def per_pair_summary(qwen: dict, sam2: dict) -> dict:
    """Seconds per pair of Qwen (best batch) + SAM2 (one embedding per image) vs the paper.

    ``sam2``: :func:`sam2_speed`'s result; its per-pair figure shares each image embedding
    among that run's pairs per image.
    """
    ours = {"qwen": qwen["best_s_per_pair"], "sam2": 1 / sam2["modes"]["per_image"]["pairs_per_s"]}
    ours["total"] = ours["qwen"] + ours["sam2"]
    paper = PAPER_S_PER_PAIR | {"total": sum(PAPER_S_PER_PAIR.values())}
    return {
        "ours": ours,
        "paper": paper,
        "paper_device": PAPER_DEVICE,
        "qwen_batch": qwen["best_batch"],
        "sam2_pairs_per_image": sam2["pairs_per_image"],
        "ratio_ours_over_paper": {k: ours[k] / paper[k] for k in ours},
        "note": "across devices (and, without --full, model sizes): not a like-for-like ratio",
    }


def run(
    images: int,
    per_image: int,
    repeats: int,
    full: bool,
    new_tokens: int,
    qwen_batches: list[int] | None,
    skip_qwen: bool,
    skip_sam2: bool,
) -> dict:
    """The whole benchmark; returns the JSON-ready result."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {
        "benchmark": "priors_speed",
        "task": "prior generation: Qwen2.5-VL generate per batch size; SAM2 stage, "
        "one image embedding per image vs re-encoding per pair",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }
    if not skip_sam2:
        result |= sam2_speed(images, per_image, repeats, full, device)
    if not skip_qwen:
        shape = QWEN_FULL if full else QWEN_TINY
        batches = qwen_batches or ([1, 4, 16] if device.type == "cuda" else [1, 2, 4])
        result["qwen"] = qwen_speed(shape, device, batches, new_tokens, repeats)
        result["qwen"]["full_shape_params"] = full_qwen_params()
    if not (skip_qwen or skip_sam2):
        result["per_pair_s"] = per_pair_summary(result["qwen"], result)
    return result


# ----------------------------------------------------------------------------- report


def print_sam2(result: dict) -> None:
    sam2 = result["sam2"]
    print(
        f"SAM2 {sam2['config']} at {sam2['image_size']}: {result['images']} images, "
        f"{result['pairs']} pairs ({result['pairs_per_image']:.1f} per image), "
        f"{result['repeats']} repeats"
    )
    print(f"{'mode':<12}{'pairs':>7}{'median s':>11}{'pairs/s':>10}")
    for name, mode in result["modes"].items():
        print(
            f"{name:<12}{result['pairs']:>7}{mode['median_s']:>11.3f}{mode['pairs_per_s']:>10.2f}"
        )
    sim = result["simulated"]
    print(f"{'simulated':<12}{sim['pairs']:>7}{sim['median_s']:>11.3f}{sim['pairs_per_s']:>10.1f}")
    print(f"one embedding per image: {result['ratio_per_image_over_per_pair']:.2f}x the pairs/s")


def print_qwen(qwen: dict) -> None:
    print(
        f"Qwen2.5-VL {qwen['shape']} ({qwen['params'] / 1e9:.3f} B params, {qwen['dtype']}): "
        f"{qwen['prompt_tokens']} prompt tokens ({qwen['image_tokens']} image), "
        f"{qwen['new_tokens']} new, {qwen['repeats']} repeats "
        f"(full shape: {qwen['full_shape_params'] / 1e9:.3f} B params)"
    )
    print(f"{'batch':<7}{'median s':>10}{'s/pair':>9}{'pairs/s':>9}{'peak GiB':>10}")
    for timed in qwen["batches"].values():
        peak = "-" if timed["peak_memory_gib"] is None else f"{timed['peak_memory_gib']:.1f}"
        print(
            f"{timed['batch']:<7}{timed['median_s']:>10.3f}{timed['s_per_pair']:>9.3f}"
            f"{timed['pairs_per_s']:>9.2f}{peak:>10}"
        )
    print(f"best batch size: {qwen['best_batch']}")


def print_per_pair(summary: dict) -> None:
    ours, paper, ratio = summary["ours"], summary["paper"], summary["ratio_ours_over_paper"]
    print(f"s/pair{'ours':>10}{'paper':>10}{'ours/paper':>12}   (paper: {summary['paper_device']})")
    for part in ("qwen", "sam2", "total"):
        print(f"{part:<6}{ours[part]:>10.3f}{paper[part]:>10.3f}{ratio[part]:>12.3f}")


def print_table(result: dict) -> None:
    print(
        f"{result['task']}\n{result['device']}, torch {result['torch']}, "
        f"{result['threads']} threads, load {result['load_average']}"
    )
    if "modes" in result:
        print_sam2(result)
    if "qwen" in result:
        print_qwen(result["qwen"])
    if "per_pair_s" in result:
        print_per_pair(result["per_pair_s"])


def batch_sizes(text: str) -> list[int]:
    return [int(b) for b in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--per-image", type=int, default=3, help="expressions per image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--full",
        action="store_true",
        help="Qwen2.5-VL-7B (needs CUDA) and SAM2.1 Hiera-L at image_size 1024 on 512 px images",
    )
    parser.add_argument(
        "--new-tokens", type=int, default=ANSWER_TOKENS, help="tokens each generate makes"
    )
    parser.add_argument(
        "--qwen-batches",
        type=batch_sizes,
        default=None,
        help="comma-separated batch sizes (default 1,4,16 on CUDA, 1,2,4 on the CPU)",
    )
    parser.add_argument("--skip-qwen", action="store_true")
    parser.add_argument("--skip-sam2", action="store_true")
    args = parser.parse_args()
    if args.skip_qwen and args.skip_sam2:
        parser.error("--skip-qwen and --skip-sam2 leave nothing to measure")
    if args.full and not args.skip_qwen and not torch.cuda.is_available():
        parser.error("--full: Qwen2.5-VL-7B needs a CUDA device (or add --skip-qwen)")
    result = run(
        args.images,
        args.per_image,
        args.repeats,
        args.full,
        args.new_tokens,
        args.qwen_batches,
        args.skip_qwen,
        args.skip_sam2,
    )
    print_table(result)
    write_result(RESULTS / ("priors_speed_full.json" if args.full else "priors_speed.json"), result)


if __name__ == "__main__":
    main()
