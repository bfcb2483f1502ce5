"""Weak/strong views: the flip word swap, flip consistency, geometry-free strong image ops,
EDA candidates (which never edit protected words) and the cosine filter, and the synonym
sources with and without WordNet."""

import math
import random
import re
import sys
import types
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from l2l_train.augment import (
    apply_intensity_op,
    flip_expression,
    hflip_sample,
    sample_intensity_ops,
    strong_image,
    weak_view,
)
from l2l_train.config import AugmentConfig, TrainConfig
from l2l_train.eda import (
    PROTECTED_WORDS,
    Synonyms,
    eda_candidates,
    is_protected,
    lexicon_synonyms,
    load_synonyms,
    protected_vocabulary,
    random_deletion,
    random_swap,
    strong_expressions,
    surviving_candidates,
    synonym_insertion,
    synonym_replacement,
    wordnet_synonyms,
)
from pipeline.schema import ConfigError, build_section

LEXICON_SYNONYMS = Synonyms("lexicon", lexicon_synonyms)

# ----------------------------------------------------------------------------- flip


@pytest.mark.parametrize(
    ("text", "flipped"),
    [
        ("the man on the left", "the man on the right"),
        ("the man on the LEFT", "the man on the RIGHT"),
        ("Left guy", "Right guy"),
        ("left-most dog", "right-most dog"),
        ("Right-Most cup", "Left-Most cup"),
        ("leftmost car and RIGHTMOST bus", "rightmost car and LEFTMOST bus"),
        ("his left-hand side", "his right-hand side"),
        ("lefthand glove, lefthanded player", "righthand glove, righthanded player"),
        ("moving leftwards", "moving rightwards"),
        ("the one on the left, near the door", "the one on the right, near the door"),
        ("left and right", "right and left"),
        ("(right)", "(left)"),
        ("leftover pizza", "leftover pizza"),
        ("bright lamp by the copyright sign", "bright lamp by the copyright sign"),
        ("alright, rightly so", "alright, rightly so"),
        ("", ""),
    ],
)
def test_flip_expression_swaps_whole_direction_words(text, flipped):
    assert flip_expression(text) == flipped
    assert flip_expression(flipped) == text


def marked_pair(size=6):
    """A pair whose image, mask and prior all mark column 0 (and nothing else)."""
    image = torch.zeros(3, size, size, dtype=torch.uint8)
    image[:, :, 0] = 255
    mask = torch.zeros(size, size, dtype=torch.uint8)
    mask[:, 0] = 1
    prior = torch.zeros(1, size, size)
    prior[:, :, 0] = 0.9
    return image, mask, prior


def test_hflip_sample_moves_image_mask_prior_and_words_together():
    image, mask, prior = marked_pair()
    view = hflip_sample(image, mask, prior, "the square on the left")
    assert view.expression == "the square on the right"
    assert (view.image[:, :, -1] == 255).all() and (view.image[:, :, :-1] == 0).all()
    assert (view.mask[:, -1] == 1).all() and view.mask[:, :-1].sum() == 0
    assert (
        torch.allclose(view.prior[:, :, -1], torch.tensor(0.9)) and view.prior[:, :, :-1].sum() == 0
    )
    assert hflip_sample(image, None, None, "x").prior is None


def test_hflip_sample_rejects_a_mask_in_another_frame():
    image, _, prior = marked_pair()
    with pytest.raises(ValueError, match=r"mask: expected shape \(6, 6\)"):
        hflip_sample(image, torch.zeros(5, 6), prior, "x")
    with pytest.raises(ValueError, match=r"prior: expected shape \(1, 6, 6\)"):
        hflip_sample(image, None, torch.zeros(6, 6), "x")


def test_weak_view_flips_with_the_configured_probability_and_stays_consistent():
    image, mask, prior = marked_pair()
    generator = torch.Generator().manual_seed(0)
    assert weak_view(image, mask, prior, "left", 0.0, generator).expression == "left"
    assert weak_view(image, mask, prior, "left", 1.0, generator).expression == "right"
    outcomes = set()
    for _ in range(40):
        view = weak_view(image, mask, prior, "left", 0.5, generator)
        flipped = view.expression == "right"
        column = -1 if flipped else 0
        assert (view.image[0, :, column] == 255).all()
        assert (view.mask[:, column] == 1).all() and (view.prior[0, :, column] > 0).all()
        outcomes.add(flipped)
    assert outcomes == {True, False}


# ----------------------------------------------------------------------------- strong image

FG, BG = (200, 60, 30), (40, 90, 160)


def l_shape_pair(size=32):
    """A two-colour image of an off-centre L-shaped mask: any pixel movement shows."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[6:24, 5:11] = True
    mask[18:24, 5:22] = True
    colour = lambda c: torch.tensor(c, dtype=torch.uint8).view(3, 1, 1)  # noqa: E731
    return torch.where(mask, colour(FG), colour(BG)), mask


def neighbourhood_radius(op, magnitude):
    """How far (pixels) an op may look around a pixel: 0 for pointwise ops."""
    return {"gaussian_blur": math.ceil(3 * magnitude), "sharpness": 1}.get(op, 0)


OP_CASES = [
    (op, magnitude)
    for op, magnitudes in [
        ("identity", [0.0]),
        ("autocontrast", [0.0]),
        ("equalize", [0.0]),
        ("gaussian_blur", [0.1, 2.0]),
        ("contrast", [0.05, 0.95]),
        ("sharpness", [0.05, 0.95]),
        ("color", [0.05, 0.95]),
        ("brightness", [0.05, 0.95]),
        ("posterize", [4, 8]),
    ]
    for magnitude in magnitudes
]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize(("op", "magnitude"), OP_CASES)
def test_intensity_op_keeps_shape_dtype_range_and_geometry(op, magnitude, dtype):
    image, mask = l_shape_pair()
    scale = 255 if dtype == torch.uint8 else 1.0
    image = image if dtype == torch.uint8 else image.float() / 255
    out = apply_intensity_op(image, op, magnitude)
    assert out.shape == image.shape and out.dtype == dtype
    assert out.min() >= 0 and out.max() <= scale

    # Mirroring commutes with an op that moves nothing (a shift or rotation would not).
    for dims in [(-1,), (-2,)]:
        mirrored = apply_intensity_op(image.flip(dims), op, magnitude).flip(dims)
        assert torch.allclose(mirrored.float(), out.float(), atol=1e-5 * scale)

    # The L is still where it was: away from its outline (the op's neighbourhood) every pixel
    # is closer to the L's output colour than to the background's exactly where the mask says.
    radius = neighbourhood_radius(op, magnitude)
    dilate = lambda m: F.max_pool2d(m[None].float(), 2 * radius + 1, 1, radius)[0] > 0  # noqa: E731
    far_from_outline = ~(dilate(mask) & dilate(~mask))
    fg_colour, bg_colour = out[:, 15, 7].float(), out[:, 2, 28].float()
    nearer_fg = (out.float() - fg_colour[:, None, None]).abs().sum(0) < (
        out.float() - bg_colour[:, None, None]
    ).abs().sum(0)
    assert torch.equal(nearer_fg[far_from_outline], mask[far_from_outline])
    if radius == 0:  # pointwise: each region is one colour
        assert (out[:, mask] == out[:, 15, 7, None]).all()
        assert (out[:, ~mask] == out[:, 2, 28, None]).all()


def test_apply_intensity_op_names_an_unknown_op():
    with pytest.raises(ValueError, match=r"op: expected one of identity.*got 'rotate'"):
        apply_intensity_op(torch.zeros(3, 4, 4), "rotate")


def test_sampled_magnitudes_span_their_configured_ranges():
    cfg = AugmentConfig(num_ops=400)
    drawn = sample_intensity_ops(cfg, torch.Generator().manual_seed(1))
    by_op = {}
    for op, magnitude in drawn:
        by_op.setdefault(op, []).append(magnitude)
    assert set(by_op) == set(cfg.ops)
    assert set(by_op["posterize"]) == {4, 5, 6, 7, 8}
    assert all(0.1 <= s <= 2.0 for s in by_op["gaussian_blur"])
    assert all(0.05 <= f <= 0.95 for f in by_op["brightness"])
    assert set(by_op["identity"]) == {0.0}


def test_strong_image_is_seeded_and_draws_ops_per_image():
    cfg = AugmentConfig()
    image, _ = l_shape_pair()
    batch = image.expand(8, -1, -1, -1)
    first = strong_image(batch, cfg, torch.Generator().manual_seed(5))
    again = strong_image(batch, cfg, torch.Generator().manual_seed(5))
    assert first.shape == batch.shape and first.dtype == torch.uint8
    assert torch.equal(first, again)
    assert len({tuple(view.flatten().tolist()) for view in first}) > 1
    assert torch.equal(strong_image(image, replace(cfg, num_ops=0), torch.Generator()), image)


def test_strong_image_rejects_a_channels_last_image():
    with pytest.raises(ValueError, match=r"image: expected shape \(B, 3, H, W\) or \(3, H, W\)"):
        strong_image(torch.zeros(8, 8, 3), AugmentConfig(), torch.Generator())


# ----------------------------------------------------------------------------- EDA


@pytest.mark.parametrize("num", [0, 1, 9, 13])
def test_eda_returns_the_requested_number_of_candidates(num):
    text = "the small red circle on the left of the blue star"
    candidates = eda_candidates(text, num, 0.1, LEXICON_SYNONYMS, random.Random(0))
    assert len(candidates) == num
    assert all(isinstance(c, str) and c for c in candidates)


def test_eda_is_deterministic_given_the_seed():
    text = "man in black shirt holding a cup"
    run = lambda seed: eda_candidates(text, 9, 0.2, LEXICON_SYNONYMS, random.Random(seed))  # noqa: E731
    assert run(3) == run(3)
    assert run(3) != run(4)


def test_random_deletion_never_empties_an_expression():
    rng = random.Random(0)
    assert random_deletion(["man"], 1.0, rng) == ["man"]
    for _ in range(20):
        kept = random_deletion(["the", "striped", "shirt"], 1.0, rng)
        assert len(kept) == 1 and kept[0] in {"the", "striped", "shirt"}
    for seed in range(20):
        candidates = eda_candidates("red circle", 9, 1.0, LEXICON_SYNONYMS, random.Random(seed))
        assert all(c.split() for c in candidates)


def test_edits_on_hand_checked_word_lists():
    rng = random.Random(0)
    words = ["the", "man", "in", "the", "striped", "shirt"]
    # Only "striped" and "shirt" are edited: "man" and "in" are protected, "the" is a stop word.
    replaced = synonym_replacement(words, 5, LEXICON_SYNONYMS, rng)
    assert replaced[:4] == words[:4]
    assert replaced[4] == "stripy" and replaced[5] in {"tee", "t-shirt"}
    inserted = synonym_insertion(words, 2, LEXICON_SYNONYMS, rng)
    assert len(inserted) == 8 and set(inserted) - set(words) <= {"stripy", "tee", "t-shirt"}
    swapped = random_swap(words, 1, rng)
    changed = [i for i, (a, b) in enumerate(zip(swapped, words, strict=True)) if a != b]
    assert sorted(swapped) == sorted(words) and len(changed) in (0, 2)  # two "the"s may swap
    assert set(changed) <= {0, 3, 4, 5}
    assert random_swap(["alone"], 3, rng) == ["alone"]


def test_eda_never_turns_a_direction_into_another():
    for seed in range(30):
        for text in eda_candidates(
            "the leftmost man on the left", 9, 0.5, LEXICON_SYNONYMS, random.Random(seed)
        ):
            assert "right" not in text and "remaining" not in text


def test_spatial_words_get_only_curated_synonyms_from_any_source():
    wordnet_like = Synonyms(
        "wordnet",
        lambda word: {
            "left": ("remaining", "leftover", "right"),
            "red": ("crimson", "left field", "far right", "ruddy"),
        }.get(word, ()),
    )
    assert wordnet_like("left") == ()
    assert wordnet_like("Left") == ()
    assert wordnet_like("red") == ("crimson", "ruddy")
    assert "center" in wordnet_like("middle")
    assert "far left" in LEXICON_SYNONYMS("leftmost")


# ----------------------------------------------------------------------------- protected words

_TOKEN = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*")


def protected_sequence(text, protected=PROTECTED_WORDS):
    """The protected words of ``text`` in order, as written (case kept)."""
    return [w for w in _TOKEN.findall(text) if is_protected(w, protected)]


# A stand-in WordNet with synonyms for protected words and synonyms that would bring in a
# protected word ("crimson tee", "two-tone", "clutching a circle"): EDA must use none of them.
# (Synonyms itself already drops those naming a spatial word, so none is used here.)
PERMISSIVE_SYNONYMS = Synonyms(
    "wordnet",
    lambda word: {
        "the": ("this",),
        "shirt": ("crimson tee", "blouse"),
        "striped": ("banded", "two-tone"),
        "holding": ("gripping", "clutching a circle"),
        "man": ("guy", "fellow"),
        "red": ("ruddy",),
        "circle": ("ring", "loop"),
        "second": ("moment",),
        "small": ("modest",),
        "of": ("belonging",),
        "star": ("celebrity",),
    }.get(word, ()),
)


@pytest.mark.parametrize(
    ("word", "protected"),
    [
        ("left", True),
        ("LEFT", True),
        ("Leftmost", True),
        ("left-most", True),
        ("Second", True),
        ("2nd", True),
        ("of", True),
        ("Purple", True),
        ("tiny", True),
        ("Circles", True),
        ("boxes", False),
        ("glasses", True),
        ("man's", True),
        ("dark-blue", True),
        ("next to", True),
        ("upright", False),
        ("leftover", False),
        ("starfish", False),
        ("copyright", False),
        ("shirt", False),
        ("the", False),
        ("holding", False),
    ],
)
def test_protected_words_match_whole_words_case_insensitively(word, protected):
    assert is_protected(word) is protected


def test_protected_vocabulary_covers_each_group():
    for group, words in [
        ("spatial", "left right top bottom leftmost topmost middle center centre upper behind"),
        ("ordinal", "first second third fourth fifth last 1st 2nd"),
        ("relational", "of from to above below next between"),
        ("attribute", "red green blue yellow purple orange white black small large big tall"),
        ("category", "circle square triangle star diamond hexagon shape man woman person dog"),
    ]:
        missing = [w for w in words.split() if w not in PROTECTED_WORDS]
        assert not missing, f"{group}: {missing}"
    assert all(w == w.lower() and w.split() == [w] for w in PROTECTED_WORDS)


def test_protected_vocabulary_extends_per_dataset():
    extended = protected_vocabulary(("Shirt", "traffic cone"))
    assert {"shirt", "traffic", "cone"} <= extended and extended >= PROTECTED_WORDS
    assert protected_vocabulary() == PROTECTED_WORDS
    assert is_protected("SHIRTS", extended) and not is_protected("shirt")


SYNTHETIC_EXPRESSIONS = [
    "the second shape from the bottom",
    "the circle left of the blue star",
    "the leftmost red triangle",
    "the small purple shape",
    "the third diamond from the right",
    "the hexagon below the large green square",
]
REFCOCO_EXPRESSIONS = [
    "The Man in the striped shirt holding a cup on the left",
    "woman sitting in the middle of the couch with a smiling kid",
    "second guy from right wearing a jacket and a hat",
]


@pytest.mark.parametrize("synonyms", [LEXICON_SYNONYMS, PERMISSIVE_SYNONYMS], ids=["lex", "any"])
@pytest.mark.parametrize("text", SYNTHETIC_EXPRESSIONS + REFCOCO_EXPRESSIONS)
def test_eda_keeps_the_protected_words_in_order_and_still_edits(text, synonyms):
    expected = protected_sequence(text)
    assert expected  # every test expression names its referent through protected words
    seen = set()
    for seed in range(40):
        for candidate in eda_candidates(text, 12, 0.5, synonyms, random.Random(seed)):
            assert protected_sequence(candidate) == expected, candidate
            seen.add(candidate)
    # Not a no-op: unprotected words (at least "the" / "a") still change.
    assert len(seen - {" ".join(_TOKEN.findall(text))}) > 0


def test_eda_uses_every_edit_on_the_unprotected_words():
    text = "the man in the striped shirt holding a cup on the left"
    words = text.split()
    candidates = {
        c
        for seed in range(20)
        for c in eda_candidates(text, 12, 0.5, LEXICON_SYNONYMS, random.Random(seed))
    }
    new_words = {w for c in candidates for w in c.split()} - set(words)
    assert new_words <= {"stripy", "tee", "t-shirt", "carrying"} and new_words  # synonyms
    assert any(sorted(c.split()) == sorted(words) and c != text for c in candidates)  # swaps
    assert any(len(c.split()) < len(words) for c in candidates)  # deletions


def test_synonym_replacement_never_replaces_nor_brings_in_protected_words():
    words = ["The", "Man", "in", "the", "striped", "shirt", "holding", "a", "Red", "circle"]
    for seed in range(30):
        out = synonym_replacement(words, 10, PERMISSIVE_SYNONYMS, random.Random(seed))
        assert out[:2] == ["The", "Man"] and out[2] == "in" and out[-2:] == ["Red", "circle"]
        assert out[5] == "blouse"  # "crimson tee" brings in a colour
        assert out[4] == "banded"  # "two-tone" brings in a count
        assert out[6] == "gripping"  # "clutching a circle" brings in a shape
    # "the" is a stop word and the rest is protected: nothing to replace.
    only_protected = ["the", "second", "shape", "from", "the", "bottom"]
    out = synonym_replacement(only_protected, 6, PERMISSIVE_SYNONYMS, random.Random(0))
    assert out == only_protected


def test_synonym_insertion_never_inserts_synonyms_of_protected_words():
    words = ["the", "small", "Red", "circle", "left", "of", "the", "striped", "star"]
    allowed = {"banded"}  # "striped" is the one unprotected content word
    for seed in range(30):
        out = synonym_insertion(words, 6, PERMISSIVE_SYNONYMS, random.Random(seed))
        assert len(out) == len(words) + 6
        assert protected_sequence(" ".join(out)) == protected_sequence(" ".join(words))
        assert set(out) - set(words) <= allowed
    # Nothing to insert when every content word is protected.
    only_protected = ["the", "leftmost", "red", "triangle"]
    assert synonym_insertion(only_protected, 3, LEXICON_SYNONYMS, random.Random(0)) == (
        only_protected
    )


def test_random_swap_moves_only_unprotected_words():
    words = ["the", "second", "shape", "from", "the", "bottom", "near", "a", "striped", "tree"]
    free = {0, 4, 7, 8, 9}  # the, the, a, striped, tree
    moved = set()
    for seed in range(30):
        out = random_swap(words, 3, random.Random(seed))
        assert sorted(out) == sorted(words)
        changed = {i for i, (a, b) in enumerate(zip(out, words, strict=True)) if a != b}
        assert changed <= free
        moved |= changed
    assert moved == free  # every unprotected word moves sometimes
    # Fewer than two unprotected words: nothing to swap.
    for words in (["the", "leftmost", "red", "triangle"], ["Second", "Circle", "From", "LEFT"]):
        assert random_swap(words, 5, random.Random(0)) == words


def test_random_deletion_never_deletes_a_protected_word():
    words = ["the", "second", "shape", "from", "the", "bottom"]
    assert random_deletion(words, 1.0, random.Random(0)) == ["second", "shape", "from", "bottom"]
    for seed in range(30):
        out = random_deletion(
            ["The", "LEFTMOST", "red", "triangle", "near", "a", "striped", "tree"],
            0.7,
            random.Random(seed),
        )
        assert protected_sequence(" ".join(out)) == ["LEFTMOST", "red", "triangle", "near"]
    extended = protected_vocabulary(("tree",))
    out = random_deletion(["a", "tree"], 1.0, random.Random(0), protected=extended)
    assert out == ["tree"]


def test_strong_expressions_protect_the_configured_words():
    cfg = AugmentConfig(text_alpha=0.5, text_min_cosine=-1.0, protected_words=("Striped",))
    text = "the man in the striped shirt holding a cup"
    for seed in range(20):
        (out,) = strong_expressions(
            [text], bag_of_words, cfg, LEXICON_SYNONYMS, random.Random(seed)
        )
        assert protected_sequence(out, protected_vocabulary(cfg.protected_words)) == [
            "man",
            "in",
            "striped",
            "cup",
        ]


# ----------------------------------------------------------------------------- cosine filter


def test_surviving_candidates_on_hand_computed_cosines():
    # cosines to row 0 = [1, 1, 0, 0.6, 0.8]
    embeddings = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    assert surviving_candidates(embeddings, 0.7) == [0, 1, 4]
    assert surviving_candidates(embeddings, 0.6) == [0, 1, 3, 4]
    assert surviving_candidates(embeddings, 1.1) == [0]  # the original always survives


VOCAB = [
    "the",
    "small",
    "red",
    "circle",
    "on",
    "left",
    "of",
    "blue",
    "star",
    "disc",
    "disk",
    "little",
    "crimson",
    "scarlet",
    "azure",
    "man",
    "in",
    "striped",
    "shirt",
    "holding",
    "a",
    "cup",
    "stripy",
    "tee",
    "t-shirt",
    "carrying",
]


def bag_of_words(texts):
    """A deterministic embedder: word counts over VOCAB, plus one slot for other words."""
    rows = torch.zeros(len(texts), len(VOCAB) + 1)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            rows[i, VOCAB.index(word) if word in VOCAB else -1] += 1
    return rows


def cosine_to(original, text):
    e = bag_of_words([original, text])
    return F.cosine_similarity(e[:1], e[1:]).item()


def test_strong_expressions_drop_distant_candidates_and_sample_the_rest():
    # EDA edits unprotected words only: "striped", "shirt", "holding", "the", "a".
    original = "the man in the striped shirt holding a cup on the left"
    cfg = AugmentConfig(text_candidates=9, text_alpha=0.2, text_min_cosine=0.9)
    candidates = eda_candidates(original, 9, 0.2, LEXICON_SYNONYMS, random.Random(0))
    assert any(cosine_to(original, c) < 0.9 for c in candidates)  # the filter has work to do

    chosen = set()
    for seed in range(30):
        (text,) = strong_expressions(
            [original], bag_of_words, cfg, LEXICON_SYNONYMS, random.Random(seed)
        )
        assert cosine_to(original, text) >= 0.9
        chosen.add(text)
    # Greedy selection would always return the original (cosine 1); sampling does not.
    assert len(chosen) > 2 and original in chosen


def test_strong_expressions_embed_the_batch_once():
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return bag_of_words(texts)

    batch = ["red circle on the left", "blue star", "red circle on the left"]
    out = strong_expressions(batch, embed, AugmentConfig(), LEXICON_SYNONYMS, random.Random(0))
    assert len(out) == 3 and len(calls) == 1
    assert len(calls[0]) == len(set(calls[0]))  # distinct texts only
    assert (
        strong_expressions(
            batch, embed, AugmentConfig(text_candidates=0), LEXICON_SYNONYMS, random.Random(0)
        )
        == batch
    )


def test_strong_expressions_name_a_wrong_embedding_shape():
    with pytest.raises(ValueError, match=r"embed: expected shape \(\d+, d\)"):
        strong_expressions(
            ["red circle"],
            lambda texts: torch.zeros(len(texts) + 1, 4),
            AugmentConfig(),
            LEXICON_SYNONYMS,
            random.Random(0),
        )


# ----------------------------------------------------------------------------- synonym sources


def fake_nltk(monkeypatch, *, data_installed):
    """Install a stand-in nltk: ``data.find`` fails unless ``data_installed``; WordNet knows
    one word."""

    def find(resource):
        if not data_installed:
            raise LookupError(f"Resource {resource} not found")
        return resource

    lemma = lambda name: types.SimpleNamespace(name=lambda: name)  # noqa: E731
    synset = types.SimpleNamespace(lemmas=lambda: [lemma("cup"), lemma("coffee_cup"), lemma("cup")])
    nltk = types.ModuleType("nltk")
    nltk.data = types.SimpleNamespace(find=find)
    corpus = types.ModuleType("nltk.corpus")
    corpus.wordnet = types.SimpleNamespace(synsets=lambda word: [synset] if word == "cup" else [])
    monkeypatch.setitem(sys.modules, "nltk", nltk)
    monkeypatch.setitem(sys.modules, "nltk.corpus", corpus)


def test_without_nltk_the_lexicon_is_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "nltk", None)  # import nltk raises ImportError
    assert wordnet_synonyms() is None
    synonyms = load_synonyms("auto")
    assert synonyms.source == "lexicon"
    assert synonyms("circle") == ("disc", "disk")
    with pytest.raises(RuntimeError, match="'wordnet' but nltk or its WordNet data"):
        load_synonyms("wordnet")


def test_nltk_without_wordnet_data_falls_back_to_the_lexicon(monkeypatch):
    fake_nltk(monkeypatch, data_installed=False)
    assert load_synonyms("auto").source == "lexicon"


def test_installed_wordnet_is_used_with_lemmas_cleaned(monkeypatch):
    fake_nltk(monkeypatch, data_installed=True)
    synonyms = load_synonyms("auto")
    assert synonyms.source == "wordnet"
    assert synonyms("Cup") == ("coffee cup",)
    assert load_synonyms("lexicon").source == "lexicon"


# ----------------------------------------------------------------------------- config


def test_augment_config_is_part_of_train_and_validates_ranges():
    train = build_section(
        TrainConfig, {"augment": {"num_ops": 3, "blur_sigma": [0.5, 1.0]}}, "train"
    )
    assert train.augment.num_ops == 3 and train.augment.blur_sigma == (0.5, 1.0)
    with pytest.raises(ConfigError, match=r"train.augment: blur_sigma: expected \[lo, hi\]"):
        build_section(TrainConfig, {"augment": {"blur_sigma": [2.0, 0.1]}}, "train")
    with pytest.raises(
        ConfigError, match=r"posterize_bits: expected \[lo, hi\] with 1 <= lo <= hi <= 8"
    ):
        build_section(TrainConfig, {"augment": {"posterize_bits": [4, 9]}}, "train")
    with pytest.raises(ConfigError, match=r"train.augment.ops\[0\]: expected one of"):
        build_section(TrainConfig, {"augment": {"ops": ["rotate"]}}, "train")
    with pytest.raises(ConfigError, match="ops: empty, but num_ops is 2"):
        build_section(TrainConfig, {"augment": {"ops": []}}, "train")
    train = build_section(TrainConfig, {"augment": {"protected_words": ["tree", "cone"]}}, "train")
    assert train.augment.protected_words == ("tree", "cone")
    with pytest.raises(ConfigError, match=r"protected_words\[1\]: expected a word, got ' '"):
        build_section(TrainConfig, {"augment": {"protected_words": ["tree", " "]}}, "train")
