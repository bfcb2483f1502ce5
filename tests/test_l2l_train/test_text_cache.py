"""The frozen text encoder's cache: the same features as encoding in the forward, training
expressions encoded once, and features that do not depend on what was asked before."""

from __future__ import annotations

import pytest
import torch

from l2l_train.augment import with_flips
from l2l_train.config import TextConfig
from l2l_train.model import build_text_encoder, build_tokenizer
from l2l_train.text_cache import FrozenTextCache, frozen_text_cache, sentence_embedder

TEXTS = ["the red circle", "the second shape from the left", "the red circle"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def minilm():
    cfg = TextConfig()
    return build_text_encoder(cfg), build_tokenizer(cfg)


def test_cached_words_match_the_encoder(minilm):
    text, tokenizer = minilm
    cache = FrozenTextCache(text, tokenizer, CPU, TEXTS[1:2])
    words, word_mask = cache.words(TEXTS)  # one text from the table, the others outside it
    input_ids, attention_mask = tokenizer(TEXTS)
    with torch.no_grad():
        expected, expected_mask = text(input_ids, attention_mask)
    length = int(attention_mask.sum(1).max())
    assert words.shape == (3, length, text.dim)
    assert torch.equal(word_mask, expected_mask[:, :length])
    torch.testing.assert_close(words[word_mask], expected[expected_mask], atol=1e-5, rtol=1e-5)
    assert (words[~word_mask] == 0).all()


def test_training_expressions_and_their_flips_are_encoded_once(minilm):
    text, tokenizer = minilm
    calls = []

    def counting(texts):
        calls.append(list(texts))
        return tokenizer(texts)

    cache = FrozenTextCache(text, counting, CPU, with_flips(["the circle on the left"]))
    assert sorted(cache.table) == ["the circle on the left", "the circle on the right"]
    assert len(calls) == 1
    cache.words(["the circle on the right", "the circle on the left"])
    cache.sentences(["the circle on the left"])
    assert len(calls) == 1  # table hits encode nothing
    cache.words(["circle on the left", "the circle on the left", "circle on the left"])
    assert calls[1:] == [["circle on the left"]]  # outside texts: once per call, deduplicated
    assert len(cache) == 2  # and not kept


def test_features_do_not_depend_on_what_was_asked_before(minilm):
    """A resumed run asks in another order than an uninterrupted one did."""
    text, tokenizer = minilm
    fresh = FrozenTextCache(text, tokenizer, CPU, TEXTS[:1])
    used = FrozenTextCache(text, tokenizer, CPU, TEXTS[:1])
    used.words(["the blue star at the top", "a big one", *TEXTS])
    for expression in TEXTS:
        assert torch.equal(fresh.words([expression])[0], used.words([expression])[0])


def test_sentences_are_the_mean_pooled_embedding(minilm):
    text, tokenizer = minilm
    cache = FrozenTextCache(text, tokenizer, CPU, TEXTS[:1])
    expected = sentence_embedder(text, tokenizer, CPU)(TEXTS)
    torch.testing.assert_close(cache.sentences(TEXTS), expected, atol=1e-5, rtol=1e-5)


def test_a_trainable_encoder_is_refused():
    cfg = TextConfig(trainable=True)
    with pytest.raises(ValueError, match="frozen"):
        FrozenTextCache(build_text_encoder(cfg), build_tokenizer(cfg), CPU)


def test_frozen_text_cache_is_none_for_a_trainable_encoder(minilm):
    cfg = TextConfig(trainable=True)
    assert frozen_text_cache(build_text_encoder(cfg), build_tokenizer(cfg), CPU, TEXTS) is None
    text, tokenizer = minilm
    cache = frozen_text_cache(text, tokenizer, CPU, TEXTS)
    assert isinstance(cache, FrozenTextCache) and sorted(cache.table) == sorted(set(TEXTS))


def test_sentence_embedder_means_the_real_tokens(minilm):
    """The EDA filter's sentence embedding: the model's features of the real tokens, averaged
    (MiniLM's pooling), whatever the padding."""
    text, tokenizer = minilm
    input_ids, attention_mask = tokenizer(TEXTS)  # padded to max_tokens
    with torch.no_grad():
        features = text.model(input_ids=input_ids, attention_mask=attention_mask)
    real = attention_mask.unsqueeze(-1).float()
    expected = (features.last_hidden_state * real).sum(1) / real.sum(1)
    embeddings = sentence_embedder(text, tokenizer, CPU)(TEXTS)
    assert embeddings.shape == (3, text.dim)
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-5)


def test_inputs_are_the_segmentors_text_arguments(minilm):
    """What a forward reads in place of token ids: the cached words, no ids."""
    text, tokenizer = minilm
    cache = FrozenTextCache(text, tokenizer, CPU, TEXTS[:2])
    inputs = cache.inputs(TEXTS)
    words, word_mask = cache.words(TEXTS)
    assert inputs["input_ids"] is None and inputs["attention_mask"] is None
    assert torch.equal(inputs["words"], words) and torch.equal(inputs["word_mask"], word_mask)


def test_with_flips_adds_each_expressions_mirror_image():
    assert with_flips(["the left circle", "the red one"]) == [
        "the left circle",
        "the right circle",
        "the red one",
        "the red one",
    ]
