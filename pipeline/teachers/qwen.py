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

        images = [image.convert("RGB") for image in images]
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
            for answer, input_hw, image in zip(answers, input_hws, images, strict=True)
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
    pixel_budget = {
        k: v for k, v in (("min_pixels", cfg.min_pixels), ("max_pixels", cfg.max_pixels)) if v
    }
    processor = AutoProcessor.from_pretrained(path, **pixel_budget)
    processor.tokenizer.padding_side = "left"
    return QwenGrounder(model.to(device).eval(), processor, cfg)
