"""The embedded teacher: an imperfect MLLM + SAM2 simulated from the synthetic scene's truth.

For each pair it reproduces the failure modes of the real teacher, deterministically per
``(seed, sample_id)``:

* **miss** — the MLLM finds nothing (status ``NO_GROUNDING``, no mask);
* **hallucination** — the MLLM grounds another object of the scene (preferably one of the same
  shape), more often for ordinal and relational expressions, which the paper finds hardest;
* **grounding drift** — the box is jittered, and SAM2, which rarely segments outside its
  prompt box, loses the part of the object the box cuts off;
* **over/under-segmentation** — the mask's boundary moves outwards or inwards by a few pixels,
  and sometimes leaks into a touching object;
* **soft boundaries** — the probabilities fall off smoothly over a random width, so the
  uncertainty that SPM calibrates is present.

The rates are calibrated so the raw prior's mean IoU (threshold 0.5) on the unlabelled set is
about 0.68, the paper's measured quality of Qwen2.5-VL + SAM2 priors, with a spread of per-pair
IoU (hallucinations and misses near 0, most pairs high): ``l2l-priors report`` measures it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import SimulatedTeacherConfig
from pipeline.contract import NO_BOX, NO_POINT, PriorStatus, TeacherOutput, resize_prob
from pipeline.datasets.manifest import decode_mask, load_rgb

log = logging.getLogger(__name__)


def pair_rng(seed: int, sample_id: str) -> np.random.Generator:
    """An RNG that depends only on the teacher seed and the pair, not on processing order."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def gaussian_blur(mask: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W) float mask blurred with a Gaussian of ``sigma`` pixels -> (H, W) float32."""
    radius = max(1, int(3 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    img = torch.from_numpy(mask.astype(np.float32))[None, None]
    img = F.pad(img, (radius, radius, radius, radius), mode="replicate")
    img = F.conv2d(img, kernel.view(1, 1, 1, -1))
    img = F.conv2d(img, kernel.view(1, 1, -1, 1))
    return img[0, 0].numpy()


def soft_box_window(box_xyxy: np.ndarray, hw: tuple[int, int], softness: float) -> np.ndarray:
    """(H, W) float32 ≈1 inside ``box_xyxy`` (original pixels), falling off over ``softness`` px."""
    h, w = hw
    ys, xs = np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5
    x1, y1, x2, y2 = box_xyxy

    def ramp(t, lo, hi):  # sigmoid(t - lo) · sigmoid(hi - t), via tanh to avoid overflow
        return (
            0.25
            * (1 + np.tanh((t - lo) / (2 * softness)))
            * (1 + np.tanh((hi - t) / (2 * softness)))
        )

    return np.outer(ramp(ys, y1, y2), ramp(xs, x1, x2)).astype(np.float32)


def jitter_box(
    box_xyxy: np.ndarray, rng: np.random.Generator, drift: float, hw: tuple[int, int]
) -> np.ndarray:
    """Grounding drift: each edge moves by N(0, drift · box side), clipped to the image."""
    x1, y1, x2, y2 = box_xyxy
    bw, bh = x2 - x1, y2 - y1
    noise = rng.normal(0.0, drift, size=4) * np.array([bw, bh, bw, bh])
    h, w = hw
    jittered = np.array([x1, y1, x2, y2]) + noise
    jittered[[0, 2]] = np.clip(jittered[[0, 2]], 0, w)
    jittered[[1, 3]] = np.clip(jittered[[1, 3]], 0, h)
    if jittered[2] - jittered[0] < 2 or jittered[3] - jittered[1] < 2:
        return np.asarray(box_xyxy, dtype=np.float32)
    return jittered.astype(np.float32)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight XYXY box (pixel edges) of a non-empty (H, W) mask."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


# Probability that the simulated MLLM grounds a distractor, per expression kind: ordinal and
# relational expressions need counting and relations, where MLLM grounding fails most often.
HALLUCINATION_RATE = {"attribute": 0.07, "spatial": 0.12, "ordinal": 0.22, "relation": 0.22}
MISS_RATE = 0.03
LEAK_RATE = 0.2  # SAM2 merges a touching object into the mask
BOX_DRIFT = 0.12  # std of each box edge's shift, as a fraction of the box side


def simulate_prior(
    target: int,
    kind: str,
    object_masks: dict[int, np.ndarray],
    object_shapes: dict[int, str],
    rng: np.random.Generator,
    size: int,
) -> TeacherOutput:
    """Simulate the teacher for one pair.

    Args:
        target: object id the expression refers to.
        kind: the expression's kind (attribute | spatial | ordinal | relation).
        object_masks: every object of the scene -> (H, W) {0,1} visible mask.
        object_shapes: object id -> shape name (distractors of the same shape are likelier).
        size: side S of the stored square prior.
    """
    hw = object_masks[target].shape
    if rng.random() < MISS_RATE:
        return TeacherOutput(None, NO_BOX, NO_POINT, PriorStatus.NO_GROUNDING)

    grounded = target
    others = [o for o in object_masks if o != target]
    if others and rng.random() < HALLUCINATION_RATE.get(kind, 0.2):
        same_shape = [o for o in others if object_shapes[o] == object_shapes[target]]
        grounded = int(rng.choice(same_shape if same_shape and rng.random() < 0.7 else others))

    mask = object_masks[grounded].astype(np.float32)
    if others and rng.random() < LEAK_RATE:
        near = gaussian_blur(mask, 2.0) > 0.05  # within ~3 px of the grounded object
        touching = [o for o in others if o != grounded and (near & (object_masks[o] > 0)).any()]
        if touching:
            mask = np.maximum(mask, object_masks[int(rng.choice(touching))])

    box = jitter_box(mask_box(object_masks[grounded]), rng, BOX_DRIFT, hw)
    # Boundary shift: a blurred mask thresholded below 0.5 grows, above 0.5 shrinks.
    blur_sigma = float(rng.uniform(0.8, 2.5))
    level = float(np.clip(rng.normal(0.5, 0.12), 0.2, 0.8))
    sharpness = float(rng.uniform(6.0, 20.0))
    blurred = gaussian_blur(mask, blur_sigma)
    prob = 1 / (1 + np.exp(-sharpness * (blurred - level)))
    prob = prob * soft_box_window(box, hw, softness=1.0)
    # A confidence ceiling: SAM2's logits on weakly-prompted masks are less saturated.
    prob = prob * float(rng.uniform(0.85, 1.0))

    ys, xs = np.nonzero(object_masks[grounded])
    pick = rng.integers(len(xs))
    point = np.array([xs[pick] + 0.5, ys[pick] + 0.5], dtype=np.float32)
    # Into the square-stretched frame without antialiasing, as the simulation always has
    # (stored priors stay the same); prob lies in [0, 1), so the resize's clamp never acts.
    return TeacherOutput(
        resize_prob(prob, (size, size), antialias=False), box, point, PriorStatus.OK
    )


class SimulatedTeacher:
    """Simulated teacher over the synthetic dataset's scene table (``objects.parquet``)."""

    name = "simulated"

    def __init__(self, cfg: SimulatedTeacherConfig, synthetic_dir: str | Path, size: int):
        import pyarrow.parquet as pq

        path = Path(synthetic_dir) / "objects.parquet"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: the simulated teacher needs the synthetic dataset's scene "
                "table (priors.teacher: simulated works with data.dataset: synthetic only)"
            )
        self.cfg, self.size = cfg, size
        self._scenes: dict[int, list[dict]] = {}
        for row in pq.read_table(
            path, columns=["image_id", "object_id", "shape", "mask"]
        ).to_pylist():
            self._scenes.setdefault(row["image_id"], []).append(row)

    def scene(self, image_id: int) -> tuple[dict[int, np.ndarray], dict[int, str]]:
        """Object id -> visible mask and object id -> shape for one image."""
        if image_id not in self._scenes:
            raise KeyError(f"image {image_id} is not in the synthetic scene table")
        rows = self._scenes[image_id]
        return (
            {o["object_id"]: decode_mask(o["mask"]) for o in rows},
            {o["object_id"]: o["shape"] for o in rows},
        )

    def predict(self, pairs: list[dict], image_root: Path | None = None) -> list[TeacherOutput]:
        """Priors for manifest rows (dicts with sample_id, image_id, ann_id, expr_kind);
        pairs of one image should be adjacent so its masks are decoded once. The simulation
        works from the scene table; with ``image_root`` each image is still decoded once, and
        the pairs of one that cannot be read get ``UNREADABLE_IMAGE``, as the real teacher's
        do (a readable image's pixels change nothing)."""
        results, cached_id, scene = [], None, None
        readable: dict[str, bool] = {}
        for pair in pairs:
            path = pair.get("image_path")
            if image_root is not None and path is not None:
                if path not in readable:
                    readable[path] = _readable(Path(image_root) / path)
                if not readable[path]:
                    results.append(
                        TeacherOutput(None, NO_BOX, NO_POINT, PriorStatus.UNREADABLE_IMAGE)
                    )
                    continue
            if pair["image_id"] != cached_id:
                cached_id, scene = pair["image_id"], self.scene(pair["image_id"])
            rng = pair_rng(self.cfg.seed, pair["sample_id"])
            results.append(
                simulate_prior(pair["ann_id"], pair["expr_kind"], *scene, rng, self.size)
            )
        return results


def _readable(path: Path) -> bool:
    try:
        load_rgb(path)
    except OSError as err:
        log.warning("unreadable_image for every pair of %s: %s", path.name, err)
        return False
    return True
