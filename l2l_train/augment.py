"""Weak and strong views for weak-to-strong consistency (DESIGN.md section 4, paper appendix A.2).

- Weak view: the dataset resizes; :func:`weak_view` flips horizontally at random, and a flip
  also flips the mask and the prior and swaps left/right words in the expression
  (:func:`flip_expression`), so the text still describes the flipped image.
- Strong image view: the weak image plus ``num_ops`` intensity ops (:func:`strong_image`).
  None of them moves a pixel, so the weak view's pseudo-label, mask and prior stay aligned
  with the strong image without any coordinate mapping.
- Strong text view: EDA edits of the weak expression (:func:`eda_candidates`), filtered by
  text-encoder cosine similarity to it and sampled (:func:`strong_expressions`). The edits are
  referent-preserving: they never replace, delete or move a word of :data:`PROTECTED_WORDS`
  (spatial, ordinal, relational, attribute and category words) nor insert one, so the
  protected words of every candidate are the original's, in the original order. The text
  encoder is injected as a callable so this module does not depend on the model package.

Images are ``(3, H, W)`` tensors, ``uint8`` or float in ``[0, 1]`` (before normalisation).
Randomness comes from an explicit ``torch.Generator`` (images) or ``random.Random`` (text),
so a view is reproducible from its seed.
"""

from __future__ import annotations

import functools
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from l2l_train.config import AugmentConfig
from l2l_train.lexicon import LEXICON, SPATIAL_WORDS, STOP_WORDS

# ----------------------------------------------------------------------------- weak view

# "left"/"right" as a whole word or the stem of a directional compound. Hyphenated forms
# ("left-most", "left-hand") match through the hyphen's word boundary; "leftover", "bright"
# and "copyright" have no boundary where "left"/"right" would start or end.
_DIRECTION = re.compile(r"\b(left|right)(most|hand|handed|ward|wards)?\b", re.IGNORECASE)
_OPPOSITE = {"left": "right", "right": "left"}


def _like_case(word: str, model: str) -> str:
    """``word`` (lowercase) in the case pattern of ``model``: UPPER, Title or lower."""
    if model.isupper():
        return word.upper()
    if model[0].isupper():
        return word.capitalize()
    return word


def flip_expression(text: str) -> str:
    """Swap left and right in ``text`` as a horizontal flip of the image requires.

    Whole words and compounds only (left <-> right, leftmost <-> rightmost, left-most <->
    right-most, lefthand, left-handed, leftward(s)), case kept ("Left" -> "Right", "LEFT" ->
    "RIGHT"); "leftover", "bright", "copyright" are left alone.
    """

    def swap(match: re.Match[str]) -> str:
        stem, suffix = match.group(1), match.group(2) or ""
        return _like_case(_OPPOSITE[stem.lower()], stem) + suffix

    return _DIRECTION.sub(swap, text)


class View(NamedTuple):
    """One augmented image–expression pair, all in the same (possibly flipped) pixel frame."""

    image: Tensor  # (3, H, W)
    mask: Tensor | None  # (H, W) ground truth, where known
    prior: Tensor | None  # (1, H, W) teacher prior, where one exists
    expression: str


def hflip_sample(image: Tensor, mask: Tensor | None, prior: Tensor | None, expression: str) -> View:
    """Mirror a pair left to right: image, mask and prior along width, words via
    :func:`flip_expression`.

    Shapes: image (3, H, W), mask (H, W), prior (1, H, W); each flipped along its last axis.
    Returns: the flipped :class:`View`.
    """
    _check_same_frame(image, mask, prior)
    flip = functools.partial(torch.flip, dims=(-1,))
    return View(
        image=flip(image),
        mask=None if mask is None else flip(mask),
        prior=None if prior is None else flip(prior),
        expression=flip_expression(expression),
    )


def weak_view(
    image: Tensor,
    mask: Tensor | None,
    prior: Tensor | None,
    expression: str,
    flip_prob: float,
    generator: torch.Generator,
) -> View:
    """The weak view of a resized pair: :func:`hflip_sample` with probability ``flip_prob``.

    Shapes: as :func:`hflip_sample`. Returns: a :class:`View` (the inputs when not flipped).
    """
    if torch.rand((), generator=generator).item() < flip_prob:
        return hflip_sample(image, mask, prior, expression)
    _check_same_frame(image, mask, prior)
    return View(image, mask, prior, expression)


def _check_same_frame(image: Tensor, mask: Tensor | None, prior: Tensor | None) -> None:
    _check_image(image, batched=False)
    size = tuple(image.shape[-2:])
    if mask is not None and (mask.ndim != 2 or tuple(mask.shape) != size):
        raise ValueError(f"mask: expected shape {size} to match the image, got {tuple(mask.shape)}")
    if prior is not None and (prior.ndim != 3 or tuple(prior.shape) != (1, *size)):
        raise ValueError(
            f"prior: expected shape {(1, *size)} to match the image, got {tuple(prior.shape)}"
        )


def _check_image(image: Tensor, batched: bool) -> None:
    expected = "(B, 3, H, W) or (3, H, W)" if batched else "(3, H, W)"
    if image.ndim not in ((3, 4) if batched else (3,)) or image.shape[-3] != 3:
        raise ValueError(f"image: expected shape {expected}, got {tuple(image.shape)}")
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise ValueError(f"image: expected uint8 or float in [0, 1], got {image.dtype}")


# ----------------------------------------------------------------------------- strong image


def _gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    # A kernel of +-3 sigma holds 99.7% of the mass; reflect padding needs it to fit the image.
    radius = min(math.ceil(3 * sigma), min(image.shape[-2:]) - 1)
    return TF.gaussian_blur(image, [2 * radius + 1] * 2, [sigma, sigma])


# op -> (image, magnitude) -> image. Every op maps a pixel from its own value, its 3x3 (sharpness)
# or Gaussian (blur) neighbourhood and whole-image statistics, never from another location.
_INTENSITY_OPS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "identity": lambda image, _: image,
    "autocontrast": lambda image, _: TF.autocontrast(image),
    "equalize": lambda image, _: TF.equalize(image),
    "gaussian_blur": _gaussian_blur,
    "contrast": TF.adjust_contrast,
    "sharpness": TF.adjust_sharpness,
    "color": TF.adjust_saturation,
    "brightness": TF.adjust_brightness,
    "posterize": lambda image, bits: TF.posterize(image, int(bits)),
}

# op -> the AugmentConfig field holding its [lo, hi] magnitude range (ops absent take none).
_MAGNITUDE_FIELD = {
    "gaussian_blur": "blur_sigma",
    "contrast": "contrast",
    "sharpness": "sharpness",
    "color": "color",
    "brightness": "brightness",
    "posterize": "posterize_bits",
}


def apply_intensity_op(image: Tensor, op: str, magnitude: float = 0.0) -> Tensor:
    """Apply one intensity op of the strong pool.

    ``magnitude``: Gaussian sigma in pixels (``gaussian_blur``), PIL enhancement factor
    (``contrast``, ``sharpness``, ``color``, ``brightness``; 1 = unchanged), bits kept
    (``posterize``); ignored by ``identity``, ``autocontrast``, ``equalize``.
    Shapes: image (3, H, W), uint8 or float in [0, 1]. Returns: same shape, dtype and range.
    """
    if op not in _INTENSITY_OPS:
        raise ValueError(f"op: expected one of {', '.join(_INTENSITY_OPS)}, got {op!r}")
    return _INTENSITY_OPS[op](image, magnitude)


def sample_intensity_ops(cfg: AugmentConfig, generator: torch.Generator) -> list[tuple[str, float]]:
    """Draw ``cfg.num_ops`` ops from ``cfg.ops`` (with replacement), each with a magnitude drawn
    uniformly from its configured range (posterize bits uniformly among the integers).

    Returns: ``[(op, magnitude), ...]`` in application order.
    """
    drawn = []
    for _ in range(cfg.num_ops):
        op = cfg.ops[int(torch.randint(len(cfg.ops), (), generator=generator))]
        magnitude = 0.0
        if op in _MAGNITUDE_FIELD:
            lo, hi = getattr(cfg, _MAGNITUDE_FIELD[op])
            if op == "posterize":
                magnitude = float(torch.randint(int(lo), int(hi) + 1, (), generator=generator))
            else:
                magnitude = lo + (hi - lo) * torch.rand((), generator=generator).item()
        drawn.append((op, magnitude))
    return drawn


def strong_image(image: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """The strong image view: the weak image through ops from :func:`sample_intensity_ops`,
    drawn independently for each image of a batch. Geometry is untouched, so the weak view's
    mask, prior and pseudo-label apply as they are.

    Shapes: image (3, H, W) or (B, 3, H, W), uint8 or float in [0, 1].
    Returns: same shape, dtype and range.
    """
    _check_image(image, batched=True)
    if image.ndim == 4:
        return torch.stack([strong_image(one, cfg, generator) for one in image])
    for op, magnitude in sample_intensity_ops(cfg, generator):
        image = apply_intensity_op(image, op, magnitude)
    return image


# ----------------------------------------------------------------------------- strong text

# A word keeps inner hyphens and apostrophes ("left-most", "man's"); other punctuation is
# dropped from edited candidates, as EDA does.
_WORD = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*")


def _mentions_spatial(phrase: str) -> bool:
    return any(part in SPATIAL_WORDS for part in re.split(r"[\s-]+", phrase.lower()))


def lexicon_synonyms(word: str) -> tuple[str, ...]:
    """Synonyms of lowercase ``word`` from the built-in :data:`~l2l_train.lexicon.LEXICON`."""
    return LEXICON.get(word, ())


def wordnet_synonyms() -> Callable[[str], tuple[str, ...]] | None:
    """WordNet lemma lookup through nltk, or None when nltk or its WordNet data is not
    installed locally (nothing is downloaded)."""
    try:
        import nltk

        nltk.data.find("corpora/wordnet")
        from nltk.corpus import wordnet
    except (ImportError, LookupError):
        return None

    @functools.lru_cache(maxsize=65536)
    def lookup(word: str) -> tuple[str, ...]:
        # dict keys, not a set: an ordered result keeps EDA reproducible across processes.
        names = dict.fromkeys(
            lemma.name().replace("_", " ").lower()
            for synset in wordnet.synsets(word)
            for lemma in synset.lemmas()
        )
        names.pop(word, None)
        return tuple(names)

    return lookup


@dataclass(frozen=True)
class Synonyms:
    """EDA's synonym lookup with spatial words protected: a spatial word gets only the
    lexicon's meaning-preserving alternatives ("middle" -> "center", never "left" ->
    "remaining"), and no synonym of another word may bring in a spatial word. (EDA itself
    goes further and never edits a word of :data:`PROTECTED_WORDS`, spatial ones included.)"""

    source: Literal["wordnet", "lexicon"]
    lookup: Callable[[str], tuple[str, ...]]

    def __call__(self, word: str) -> tuple[str, ...]:
        key = word.lower()
        if key in SPATIAL_WORDS:
            return LEXICON.get(key, ())
        return tuple(s for s in self.lookup(key) if not _mentions_spatial(s))


def load_synonyms(kind: Literal["auto", "wordnet", "lexicon"]) -> Synonyms:
    """The synonym source for ``train.augment.synonyms``: ``auto`` is WordNet when it is
    installed locally, else the built-in lexicon."""
    wordnet = None if kind == "lexicon" else wordnet_synonyms()
    if wordnet is not None:
        return Synonyms("wordnet", wordnet)
    if kind == "wordnet":
        raise RuntimeError(
            "train.augment.synonyms is 'wordnet' but nltk or its WordNet data is not installed "
            "locally (nltk.data.find('corpora/wordnet') failed); install them, or set it to "
            "'auto' or 'lexicon'"
        )
    return Synonyms("lexicon", lexicon_synonyms)


def _words(text: str) -> frozenset[str]:
    """The whitespace-separated words of ``text``: a word list written as lines of prose."""
    return frozenset(text.split())


# Words that decide which object an expression refers to. EDA never replaces, deletes or moves
# one, nor inserts one (a synonym containing one is never used), so every candidate keeps the
# original's protected words in the original order. Without this, random swap and deletion
# rewrote "the second shape from the bottom" as "the bottom shape from the second", and most
# sampled expressions changed their referent. Lowercase single words; a phrase ("left of",
# "next to", "traffic light") is protected through each of its words.

# Where the referent is: a swap or a deletion moves it ("the circle on the left" -> "the
# left on the circle"). The lexicon's spatial words plus positions it does not list.
SPATIAL_PROTECTED = SPATIAL_WORDS | _words(
    """
    high higher low mid inner outer inside outside nearby around across along alongside
    opposite facing toward towards away up down foreground background
    """
)

# Which of several look-alikes: "the second triangle from the right" picks one by rank, and a
# count or "other" / "only" contrasts it with the rest.
ORDINAL_PROTECTED = _words(
    """
    first second third fourth fifth sixth seventh eighth ninth tenth last final penultimate
    previous 1st 2nd 3rd 4th 5th 6th 7th 8th 9th 10th
    one two three four five six seven eight nine ten
    other another only
    """
)

# How the referent relates to an anchor: "the circle left of the blue star" names the circle,
# "the star left of the blue circle" the star, so the prepositions binding the two phrases
# stay, as do comparisons ("bigger than") and negations ("the man not wearing a hat").
RELATIONAL_PROTECTED = _words(
    """
    of from to on in at by with without into onto off within through past beyond than
    against between among beside behind near next above below under over beneath underneath
    not no
    """
)

# What the referent looks like: the synthetic dataset tells objects apart by colour and size
# alone ("the small purple shape"), and RefCOCO's expressions lean on them too. Colour names
# (the dataset's, COCO's, the lexicon's paraphrases), shades and sizes, comparatives included.
ATTRIBUTE_PROTECTED = _words(
    """
    red green blue yellow purple orange white black pink brown grey gray cyan magenta violet
    gold golden silver beige tan navy maroon teal turquoise aqua crimson scarlet emerald azure
    rosy ebony snowy fuchsia tangerine dark light pale bright
    small smaller smallest little tiny tiniest large larger largest big bigger biggest huge
    giant medium tall taller tallest short shorter shortest long longer longest wide wider
    narrow thin thick fat skinny mini
    """
)

# What the referent is: the head noun, and an anchor's ("the circle left of the star").
# The synthetic dataset's shapes and its generic noun, RefCOCO's people words, and the COCO
# categories RefCOCO annotates (the head word of two-word names: "light" of "traffic light")
# with common alternative names.
CATEGORY_PROTECTED = _words(
    """
    circle square triangle star diamond hexagon shape disc disk rhombus lozenge
    man men woman women person people persons guy guys girl girls boy boys kid kids child
    children lady ladies gentleman gentlemen male female baby babies player players adult
    teen teenager
    bicycle bike car motorcycle motorbike airplane plane bus train truck boat light hydrant
    sign meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella
    handbag bag tie suitcase frisbee skis ski snowboard ball kite bat glove skateboard
    surfboard racket bottle glass cup fork knife knives spoon bowl banana apple sandwich orange
    broccoli carrot hotdog pizza donut doughnut cake chair couch sofa plant bed table toilet tv
    television laptop mouse remote keyboard phone cellphone microwave oven toaster sink
    refrigerator fridge book clock vase scissors teddy drier dryer toothbrush plate mug
    """
)

PROTECTED_WORDS = (
    SPATIAL_PROTECTED
    | ORDINAL_PROTECTED
    | RELATIONAL_PROTECTED
    | ATTRIBUTE_PROTECTED
    | CATEGORY_PROTECTED
)

# Word parts for protected-word matching: a hyphenated or possessive word is protected when
# a part is ("left-most", "dark-blue", "man's"), as the flip's word boundaries see it.
_PARTS = re.compile(r"[\s'-]+")


def protected_vocabulary(extra: Sequence[str] = ()) -> frozenset[str]:
    """:data:`PROTECTED_WORDS` plus a dataset's own (``train.augment.protected_words``):
    each entry lowercased, a phrase adding each of its words."""
    return PROTECTED_WORDS | frozenset(word for entry in extra for word in entry.lower().split())


def is_protected(word: str, protected: frozenset[str] = PROTECTED_WORDS) -> bool:
    """Whether ``word`` (or a phrase) holds a protected word: case-insensitive, on whole words
    and their hyphen / apostrophe parts, a plural in -s or -es of a listed word included
    ("Circles", "left-most", "man's"); never a substring ("upright", "leftover", "starfish")."""
    for part in _PARTS.split(word.lower()):
        if (
            part in protected
            or (part.endswith("s") and part[:-1] in protected)
            or (part.endswith("es") and part[:-2] in protected)
        ):
            return True
    return False


def _edit_synonyms(key: str, synonyms: Synonyms, protected: frozenset[str]) -> tuple[str, ...]:
    """Synonyms EDA may use for lowercase ``key``: none for a protected word, and none that
    would bring in a protected word (the lexicon's "seat" -> "chair", "figure" -> "shape")."""
    if is_protected(key, protected):
        return ()
    return tuple(s for s in synonyms(key) if not is_protected(s, protected))


def _content_words(
    words: Sequence[str], synonyms: Synonyms, protected: frozenset[str]
) -> list[str]:
    """Distinct lowercase unprotected non-stop words that have usable synonyms, in order of
    appearance."""
    keys = dict.fromkeys(w.lower() for w in words if w.lower() not in STOP_WORDS)
    return [k for k in keys if _edit_synonyms(k, synonyms, protected)]


def synonym_replacement(
    words: Sequence[str],
    n: int,
    synonyms: Synonyms,
    rng: random.Random,
    *,
    protected: frozenset[str] = PROTECTED_WORDS,
) -> list[str]:
    """Replace up to ``n`` distinct unprotected content words (every occurrence) by a random
    synonym that holds no protected word."""
    candidates = _content_words(words, synonyms, protected)
    rng.shuffle(candidates)
    replacement = {
        key: rng.choice(_edit_synonyms(key, synonyms, protected)) for key in candidates[:n]
    }
    return [replacement.get(w.lower(), w) for w in words]


def synonym_insertion(
    words: Sequence[str],
    n: int,
    synonyms: Synonyms,
    rng: random.Random,
    *,
    protected: frozenset[str] = PROTECTED_WORDS,
) -> list[str]:
    """Insert a synonym of a random unprotected content word at a random position, ``n``
    times; a synonym holding a protected word is never inserted."""
    candidates = _content_words(words, synonyms, protected)
    new = list(words)
    for _ in range(n if candidates else 0):
        key = rng.choice(candidates)
        new.insert(
            rng.randrange(len(new) + 1), rng.choice(_edit_synonyms(key, synonyms, protected))
        )
    return new


def random_swap(
    words: Sequence[str],
    n: int,
    rng: random.Random,
    *,
    protected: frozenset[str] = PROTECTED_WORDS,
) -> list[str]:
    """Swap two random distinct positions of unprotected words, ``n`` times; unchanged when
    fewer than two words are unprotected."""
    new = list(words)
    free = [i for i, w in enumerate(new) if not is_protected(w, protected)]
    for _ in range(n if len(free) > 1 else 0):
        i, j = rng.sample(free, 2)
        new[i], new[j] = new[j], new[i]
    return new


def random_deletion(
    words: Sequence[str],
    p: float,
    rng: random.Random,
    *,
    protected: frozenset[str] = PROTECTED_WORDS,
) -> list[str]:
    """Delete each unprotected word with probability ``p``; protected words always stay. Never
    returns an empty expression (one random word survives when all would go)."""
    kept = [w for w in words if is_protected(w, protected) or rng.random() >= p]
    return kept or [rng.choice(words)]


def eda_candidates(
    text: str,
    num: int,
    alpha: float,
    synonyms: Synonyms,
    rng: random.Random,
    *,
    protected: frozenset[str] = PROTECTED_WORDS,
) -> list[str]:
    """``num`` EDA edits of ``text`` (Wei & Zou 2019): equal shares of synonym replacement,
    synonym insertion, random swap and random deletion, shuffled. Each edit touches
    ``max(1, int(alpha * words))`` words (deletion: probability ``alpha`` per word);
    ``alpha = 0`` returns the words unedited. No edit touches a ``protected`` word (see
    :func:`is_protected`) or inserts one, so the protected words of every candidate are
    those of ``text`` in the same order; an expression with few unprotected words gets few
    distinct edits.

    Returns: ``num`` strings (words joined by single spaces); ``[text] * num`` when ``text``
    has no words.
    """
    words = _WORD.findall(text)
    if not words:
        return [text] * num
    n = max(1, int(alpha * len(words))) if alpha > 0 else 0
    edits = (
        lambda: synonym_replacement(words, n, synonyms, rng, protected=protected),
        lambda: synonym_insertion(words, n, synonyms, rng, protected=protected),
        lambda: random_swap(words, n, rng, protected=protected),
        lambda: random_deletion(words, alpha, rng, protected=protected),
    )
    per_edit = num // len(edits) + 1
    candidates = [" ".join(edit()) for edit in edits for _ in range(per_edit)]
    rng.shuffle(candidates)
    return candidates[:num]


def surviving_candidates(embeddings: Tensor, min_cosine: float) -> list[int]:
    """Candidates close enough in meaning to the original.

    Shapes: embeddings (1 + n, d), row 0 the original expression, rows 1.. its candidates.
    Returns: indices of rows whose cosine similarity to row 0 is at least ``min_cosine``;
    0 is always among them.
    """
    cosine = F.cosine_similarity(embeddings[:1].float(), embeddings.float(), dim=-1)  # (1 + n,)
    keep = cosine >= min_cosine
    keep[0] = True
    return keep.nonzero().flatten().tolist()


def strong_expressions(
    expressions: Sequence[str],
    embed: Callable[[Sequence[str]], Tensor],
    cfg: AugmentConfig,
    synonyms: Synonyms,
    rng: random.Random,
) -> list[str]:
    """The strong text view of each weak-view expression: ``cfg.text_candidates`` EDA edits
    (protecting :func:`protected_vocabulary` of ``cfg.protected_words``) plus the expression
    itself, those below ``cfg.text_min_cosine`` cosine similarity to it
    dropped, then one survivor drawn uniformly. Sampling, not the most similar, keeps the
    perturbation the strong view is for.

    ``embed`` maps texts to sentence embeddings, shape (len(texts), d) (the model's text
    encoder); it is called once, under ``no_grad``, on the distinct texts of the batch.
    Returns: one expression per input.
    """
    protected = protected_vocabulary(cfg.protected_words)
    groups = [
        [
            text,
            *eda_candidates(
                text, cfg.text_candidates, cfg.text_alpha, synonyms, rng, protected=protected
            ),
        ]
        for text in expressions
    ]
    if cfg.text_candidates == 0 or not groups:
        return list(expressions)
    distinct = list(dict.fromkeys(text for group in groups for text in group))
    with torch.no_grad():
        embeddings = embed(distinct)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(distinct):
        raise ValueError(
            f"embed: expected shape ({len(distinct)}, d) for {len(distinct)} texts, "
            f"got {tuple(embeddings.shape)}"
        )
    row = {text: i for i, text in enumerate(distinct)}
    chosen = []
    for group in groups:
        keep = surviving_candidates(embeddings[[row[text] for text in group]], cfg.text_min_cosine)
        chosen.append(group[rng.choice(keep)])
    return chosen
