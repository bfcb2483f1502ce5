"""Text features for the step and for evaluation: a *frozen* encoder's, computed once per
expression (:class:`FrozenTextCache`), and sentence embeddings of a trainable one
(:func:`sentence_embedder`).

With ``model.text.trainable: false`` an expression's word features never change, yet a step
encodes every labelled, weak and strong expression and the ``text_candidates + 1`` EDA
candidates of every unlabelled one (about 40 % of the embedded default's step FLOPs), and an
evaluation encodes every pair's expression again (about 40 % of its forward time). The texts
a cache is built with (training: the expressions with their left/right-flipped forms, the weak
view's text; evaluation: the split's expressions, in a table of their own) are encoded once; a
text outside the table (an EDA edit) is encoded when asked for, with the other such texts of
the same call.

Exactness: the table is filled in one fixed order, and an outside text is encoded only with
the texts of its own call, never in company that depends on what was asked before. Encoder
kernels round differently for other batch shapes, so this is what lets a resumed run compute
bitwise the features an uninterrupted one did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from l2l_train.model.text import TextEncoder, TextTokenizer

# Texts per text-encoder call when filling the table.
ENCODE_BATCH = 256


class FrozenTextCache:
    """Word features (B, T, D) and sentence embeddings (B, D) of expressions, from a frozen
    :class:`~l2l_train.model.text.TextEncoder`; the training expressions are encoded once."""

    def __init__(
        self,
        text: TextEncoder,
        tokenizer: TextTokenizer,
        device: torch.device,
        expressions: Iterable[str] = (),
    ) -> None:
        if text.trainable:
            raise ValueError("FrozenTextCache needs a frozen text encoder (model.text.trainable)")
        self.text, self.tokenizer, self.device = text, tokenizer, device
        table = sorted(set(expressions))
        self.table: dict[str, Tensor] = {}  # text -> (L, D) features of its real tokens
        for start in range(0, len(table), ENCODE_BATCH):
            chunk = table[start : start + ENCODE_BATCH]
            self.table.update(zip(chunk, self._encode(chunk), strict=True))

    def __len__(self) -> int:
        return len(self.table)

    @torch.no_grad()
    def _encode(self, texts: Sequence[str]) -> list[Tensor]:
        """One encoder call: (L_i, D) features of each text's real tokens."""
        input_ids, attention_mask = self.tokenizer(texts)
        words, word_mask = self.text(input_ids.to(self.device), attention_mask.to(self.device))
        return [features[mask] for features, mask in zip(words.float(), word_mask, strict=True)]

    def _features(self, texts: Sequence[str]) -> list[Tensor]:
        outside = list(dict.fromkeys(t for t in texts if t not in self.table))
        encoded = dict(zip(outside, self._encode(outside), strict=True)) if outside else {}
        return [self.table[t] if t in self.table else encoded[t] for t in texts]

    def words(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Returns: words (B, T, D) zero-padded to the longest text and word_mask (B, T) bool,
        True on real tokens (as :meth:`TextEncoder.forward` gives them, padding cut)."""
        rows = self._features(texts)
        length = max(r.shape[0] for r in rows)
        words = rows[0].new_zeros(len(rows), length, rows[0].shape[1])
        word_mask = torch.zeros(len(rows), length, dtype=torch.bool, device=words.device)
        for i, row in enumerate(rows):
            words[i, : row.shape[0]] = row
            word_mask[i, : row.shape[0]] = True
        return words, word_mask

    def inputs(self, texts: Sequence[str]) -> dict[str, Tensor | None]:
        """The segmentor's text keyword arguments for ``texts``: :meth:`words` in place of
        token ids."""
        words, word_mask = self.words(texts)
        return {"input_ids": None, "attention_mask": None, "words": words, "word_mask": word_mask}

    def sentences(self, texts: Sequence[str]) -> Tensor:
        """Returns: (B, D) mean-pooled word features, the sentence embedding MiniLM was trained
        for (the EDA candidates' similarity filter)."""
        return torch.stack([row.mean(0) for row in self._features(texts)])


def frozen_text_cache(
    text: TextEncoder, tokenizer: TextTokenizer, device: torch.device, expressions: Iterable[str]
) -> FrozenTextCache | None:
    """A :class:`FrozenTextCache` of ``expressions``, or None when the encoder is trainable
    (its features change every step: the forward encodes the token ids)."""
    return None if text.trainable else FrozenTextCache(text, tokenizer, device, expressions)


def sentence_embedder(
    text: TextEncoder, tokenizer: TextTokenizer, device: torch.device
) -> Callable[[Sequence[str]], Tensor]:
    """Texts -> mean-pooled word features of the model's text encoder, (N, D): the sentence
    embedding MiniLM was trained for, used to filter EDA candidates by cosine similarity."""

    def embed(texts: Sequence[str]) -> Tensor:
        input_ids, attention_mask = tokenizer(texts)
        words, word_mask = text(input_ids.to(device), attention_mask.to(device))  # (N, T, D)
        weight = word_mask.unsqueeze(-1).to(words.dtype)
        return (words * weight).sum(1) / weight.sum(1).clamp_min(1.0)

    return embed
