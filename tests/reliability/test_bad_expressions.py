"""Odd expressions past prepare (which skips empty and blank ones, see test_bad_images.py):
500 words and non-ASCII text through the prior keys, the trainer's MiniLM tokenizer and EDA.
(The grounding prompt and Qwen's tokenizer see them in test_bad_answers.py.)"""

import random

import pytest
from bad_inputs import LONG_EXPRESSION, NON_ASCII

from l2l_train.config import AugmentConfig, TextConfig
from l2l_train.eda import eda_candidates, load_synonyms, strong_expressions
from l2l_train.model.text import build_tokenizer
from pipeline.contract import prior_key

ODD = [LONG_EXPRESSION, *NON_ASCII]


def test_prior_keys_of_odd_expressions_are_distinct_and_stable():
    keys = [prior_key("ab" * 32, e, "0" * 16) for e in ODD]
    assert len(set(keys)) == len(ODD)
    assert keys == [prior_key("ab" * 32, e, "0" * 16) for e in ODD]


def test_minilm_tokenizer_truncates_to_max_tokens_and_reads_any_script():
    tokenizer = build_tokenizer(TextConfig(max_tokens=20))
    ids, mask = tokenizer(ODD)
    assert ids.shape == mask.shape == (len(ODD), 20)
    assert mask[0].all()  # 500 words fill every position, [SEP] last
    assert ids[0, -1] == tokenizer.tokenizer.sep_token_id
    unk = tokenizer.tokenizer.unk_token_id
    for row, text in zip(range(1, len(ODD)), NON_ASCII, strict=True):
        real = ids[row][mask[row].bool()]
        assert len(real) > 2, text  # more than [CLS] [SEP]
        assert (real != unk).sum() > 2, f"{text!r} tokenised to unknowns only"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("der Hund links für Kinder", {"der", "Hund", "links", "für", "Kinder"}),
        ("左边的狗", {"左边的狗"}),
        ("the 🐶 on the left", {"the", "on", "left"}),
    ],
)
def test_eda_keeps_words_of_any_script_whole(text, words):
    synonyms = load_synonyms("lexicon")
    for candidate in eda_candidates(text, 8, 0.3, synonyms, random.Random(0)):
        assert candidate.strip(), "EDA produced an empty expression"
        # Edits move, drop or add whole words; never a piece of one (the ASCII class cut
        # "für" into "f" and "r").
        assert "f r" not in candidate and set(candidate.split()) <= words | _added(candidate)


def _added(candidate: str) -> set[str]:
    """Words a synonym insertion or replacement may bring in (lexicon words are ASCII)."""
    return {w for w in candidate.split() if w.isascii()}


def test_strong_view_of_odd_and_long_expressions():
    import torch

    def embed(texts):  # a stand-in encoder: similar enough to keep every candidate
        return torch.ones(len(texts), 4)

    cfg = AugmentConfig()
    chosen = strong_expressions(ODD, embed, cfg, load_synonyms("lexicon"), random.Random(0))
    assert len(chosen) == len(ODD) and all(c.strip() for c in chosen)
    assert chosen[2] == "左边的狗"  # no editable word: the expression itself
    assert 400 < len(chosen[0].split()) < 700
