"""Tiny randomly initialised teacher models for CPU tests and benchmarks.

No weights can be downloaded here, so the real teacher's code paths run against models
built from configs: a Qwen2.5-VL with hidden size 64 and 2 layers (about 0.2M parameters)
saved to a folder exactly as a real checkpoint is, and SAM2.1 Hiera-T at image size 256.
Their answers and masks are noise; what they exercise is the plumbing.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import MLLMConfig, SAM2Config

# Qwen2.5-VL's special tokens that its processor and chat template use.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2.5-VL's chat template, reduced to single images and text (no videos, no tools).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text the tokenizer's merges are learnt from: prompts and grounding answers.
_TOKENIZER_CORPUS = (
    MLLMConfig().prompt.format(expression="the red ball on the left"),
    MLLMConfig().prompt.format(expression="second square from the right"),
    '```json\n[{"bbox_2d": [12, 30, 200, 310], "point_2d": [106, 170], "label": "ball"}]\n```',
    "system user assistant You are a helpful assistant. There is no such object.",
)

# Sizes are in pixels; Qwen2.5-VL resizes to multiples of 28 (14-pixel patches, 2x2 merge).
TINY_QWEN_MIN_PIXELS = 28 * 28 * 4
TINY_QWEN_MAX_PIXELS = 28 * 28 * 16

TINY_SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
TINY_SAM2_IMAGE_SIZE = 256  # low-res logits 64 x 64; set_image ~0.2 s on a CPU core


def _tiny_qwen_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TOKENIZER_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def make_tiny_qwen(directory: str | Path, seed: int = 0) -> Path:
    """Write a random tiny Qwen2.5-VL (model, tokenizer, processor) to ``directory``.

    Returns:
        the folder, loadable by ``pipeline.teachers.qwen.build_grounder``.
    """
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    directory = Path(directory)
    tokenizer = _tiny_qwen_tokenizer()
    token_id = tokenizer.convert_tokens_to_ids
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            min_pixels=TINY_QWEN_MIN_PIXELS, max_pixels=TINY_QWEN_MAX_PIXELS
        ),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            # head_dim 16: multimodal RoPE splits its 8 frequencies over (t, h, w).
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [2, 3, 3],
            },
            "bos_token_id": token_id("<|endoftext|>"),
            "eos_token_id": token_id("<|im_end|>"),
            "pad_token_id": token_id("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [1],
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = token_id("<|im_end|>")
    model.generation_config.pad_token_id = token_id("<|endoftext|>")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def tiny_qwen_config(path: str | Path | None, **overrides) -> MLLMConfig:
    """MLLMConfig for a folder written by :func:`make_tiny_qwen`, on the CPU."""
    return MLLMConfig(**{"path": None if path is None else str(path), "device": "cpu", **overrides})


def tiny_sam2_config(**overrides) -> SAM2Config:
    """SAM2Config for SAM2.1 Hiera-T at image size 256 with random weights, on the CPU."""
    return SAM2Config(
        **{
            "config": TINY_SAM2_CONFIG,
            "checkpoint": None,
            "image_size": TINY_SAM2_IMAGE_SIZE,
            "device": "cpu",
            **overrides,
        }
    )


def tiny_sam2_prior(size: int = TINY_SAM2_IMAGE_SIZE // 4, **overrides):
    """A random-weight :class:`pipeline.teachers.sam2.SAM2Prior` from :func:`tiny_sam2_config`."""
    from pipeline.teachers.sam2 import build_sam2_prior

    return build_sam2_prior(tiny_sam2_config(**overrides), size, allow_random_weights=True)
