"""Qwen2.5-VL grounding: image + referring expression -> box (and point) in original pixels.

:func:`build_grounder` is the only place that constructs the transformers model and
processor. :class:`QwenGrounder` prompts one chat turn per pair (the image, then
``MLLMConfig.prompt`` formatted with the expression), generates greedily for a batch of
pairs at once (left padding, so every row's answer starts at the same column), decodes only
the new tokens and hands each answer to :func:`pipeline.teachers.parse.ground_answer`,
which converts from the frame the model saw (``image_grid_thw`` * patch size, per sample)
to original pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import MLLMConfig, resolve_placement
from pipeline.teachers.parse import GroundingResult, ground_answer

if TYPE_CHECKING:
    import torch
    from PIL import Image


# Qwen2-VL's processor refuses images whose long side exceeds 200 times the short side
# (``smart_resize``); one such image would fail its whole batch.
MAX_ASPECT = 200


def within_aspect(image: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """``image``, or a copy with its short side stretched so that long / short <= max_aspect.

    The answer's coordinates come back in the frame the processor resized to, and are mapped
    to the original per axis (``image_grid_thw`` against the original size), so a stretch here
    is undone by the same conversion.
    """
    w, h = image.size
    if max(w, h) <= max_aspect * min(w, h):
        return image
    if w > h:
        return image.resize((w, -(-w // max_aspect)))
    return image.resize((-(-h // max_aspect), h))


def processor_pixel_budget(processor: Any) -> dict[str, int]:
    """``{"min_pixels", "max_pixels"}``: the pixel budget of the processor's resize."""
    size = processor.image_processor.size
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key)
    return {"min_pixels": int(get("shortest_edge")), "max_pixels": int(get("longest_edge"))}


def set_pixel_budget(processor: Any, min_pixels: int | None, max_pixels: int | None) -> None:
    """Make the processor resize to ``[min_pixels, max_pixels]``; a bound left None keeps the
    model folder's. Raises RuntimeError if the processor does not then apply that budget.

    Set on the loaded processor, not passed as ``from_pretrained(path, size=...)``: there
    (transformers 5.x) ``from_dict`` merges ``size`` into the folder's preprocessor_config,
    and ``Qwen2VLImageProcessor.__init__`` then pops that config's top-level ``min_pixels`` /
    ``max_pixels`` and writes them over ``size``. The official Qwen2.5-VL folders carry
    exactly those (3136 / 12845056) and no ``size``, so the folder's budget silently won.
    """
    image_processor = processor.image_processor
    folder = processor_pixel_budget(processor)
    wanted = {
        "min_pixels": min_pixels or folder["min_pixels"],
        "max_pixels": max_pixels or folder["max_pixels"],
    }
    # ``size`` (shortest_edge / longest_edge are pixel counts for Qwen2-VL's processors) is
    # what the resize reads; older versions also kept min_pixels / max_pixels attributes.
    image_processor.size = {
        "shortest_edge": wanted["min_pixels"],
        "longest_edge": wanted["max_pixels"],
    }
    for name in ("min_pixels", "max_pixels"):
        if name in vars(image_processor):
            setattr(image_processor, name, wanted[name])
    actual = processor_pixel_budget(processor)
    legacy = {k: vars(image_processor)[k] for k in wanted if k in vars(image_processor)}
    if actual != wanted or any(legacy[k] != wanted[k] for k in legacy):
        raise RuntimeError(
            f"{type(image_processor).__name__} resizes to {actual | legacy} after setting the "
            f"pixel budget {wanted} (priors.mllm.min_pixels / max_pixels); this transformers "
            "version keeps its budget elsewhere"
        )


def input_frame_sizes(image_grid_thw: torch.Tensor, patch_size: int) -> list[tuple[int, int]]:
    """(height, width) in pixels of each image as the processor resized it for the model.

    Shapes:
        image_grid_thw: (B, 3) patches along (time, height, width), one row per image.
    Returns:
        B tuples ``(grid_h * patch_size, grid_w * patch_size)``.
    """
    return [(int(h) * patch_size, int(w) * patch_size) for _, h, w in image_grid_thw.tolist()]


class QwenGrounder:
    """Batched grounding with a loaded Qwen2.5-VL; build it with :func:`build_grounder`."""

    def __init__(self, model: Any, processor: Any, cfg: MLLMConfig) -> None:
        self.model = model
        self.processor = processor
        self.cfg = cfg

    @property
    def pixel_budget(self) -> dict[str, int]:
        """The resize budget the processor actually applies (config or model folder)."""
        return processor_pixel_budget(self.processor)

    def chat_text(self, expression: str) -> str:
        """The templated prompt of one pair (the image stands as its placeholder tokens)."""
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": self.cfg.prompt.format(expression=expression)},
                ],
            }
        ]
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def ground(
        self, images: Sequence[Image.Image], expressions: Sequence[str]
    ) -> list[GroundingResult]:
        """Ground pair i = (images[i], expressions[i]), ``cfg.batch_size`` pairs per generate.

        Returns:
            one result per pair, in order; boxes and points in each image's original pixels.
        """
        if len(images) != len(expressions):
            raise ValueError(
                f"ground: got {len(images)} images for {len(expressions)} expressions; "
                "pass one image per expression (repeat an image for each of its expressions)"
            )
        results: list[GroundingResult] = []
        for start in range(0, len(images), self.cfg.batch_size):
            stop = start + self.cfg.batch_size
            results.extend(self._ground_batch(images[start:stop], expressions[start:stop]))
        return results

    def _ground_batch(
        self, images: Sequence[Image.Image], expressions: Sequence[str]
    ) -> list[GroundingResult]:
        import torch

        originals = images
        images = [within_aspect(image.convert("RGB")) for image in images]
        inputs = self.processor(
            text=[self.chat_text(e) for e in expressions],
            images=images,
            padding=True,
            return_tensors="pt",
        ).to(self.model.device)
        with torch.inference_mode():
            sequences = self.model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=self.cfg.max_new_tokens,
                min_new_tokens=self.cfg.min_new_tokens,
                pad_token_id=self.processor.tokenizer.pad_token_id,
            )
        # Left padding puts every prompt's end at the same column, so the answers are
        # exactly the columns after it.
        answers = self.processor.batch_decode(
            sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        input_hws = input_frame_sizes(
            inputs["image_grid_thw"], self.processor.image_processor.patch_size
        )
        return [
            ground_answer(answer, input_hw, (image.height, image.width))
            for answer, input_hw, image in zip(answers, input_hws, originals, strict=True)
        ]


def build_grounder(cfg: MLLMConfig) -> QwenGrounder:
    """Load Qwen2.5-VL and its processor from the local folder ``cfg.path``.

    Weights load strictly: a missing, unexpected or mis-shaped tensor raises rather than
    leaving a randomly initialised layer in a teacher whose outputs are cached for good.
    """
    if cfg.path is None:
        raise ValueError(
            "priors.mllm.path is null: set it to a local Qwen2.5-VL folder "
            "(config.json, weights, processor files) to use the qwen-sam2 teacher"
        )
    path = Path(cfg.path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"Qwen2.5-VL folder not found: {path} (set by priors.mllm.path); "
            "weights cannot be downloaded here, copy the model folder there first"
        )
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    device, dtype = resolve_placement(cfg.device, cfg.dtype)
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path,
        dtype=getattr(torch, dtype),
        attn_implementation=cfg.attn_implementation,
        output_loading_info=True,
    )
    bad = {k: sorted(info[k]) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(bad.values()):
        raise RuntimeError(
            f"{path}: weights do not match Qwen2_5_VLForConditionalGeneration: {bad}"
        )
    processor = AutoProcessor.from_pretrained(path)
    if cfg.min_pixels or cfg.max_pixels:
        set_pixel_budget(processor, cfg.min_pixels, cfg.max_pixels)
    processor.tokenizer.padding_side = "left"
    return QwenGrounder(model.to(device).eval(), processor, cfg)
