"""The strong text view: referent-preserving EDA (Wei and Zou, 2019; paper appendix A.2).

EDA edits of the weak expression (:func:`eda_candidates`: synonym replacement and insertion,
random swap and deletion) are filtered by text-encoder cosine similarity to it and sampled
(:func:`strong_expressions`). The edits never replace, delete or move a word of
:data:`PROTECTED_WORDS` (spatial, ordinal, relational, attribute and category words) nor
insert one, so the protected words of every candidate are the original's, in the original
order. The text encoder is injected as a callable so this module does not depend on the model
package. Randomness comes from an explicit ``random.Random``, so a view is reproducible from
its seed.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from l2l_train.config import AugmentConfig
from l2l_train.lexicon import LEXICON, SPATIAL_WORDS, STOP_WORDS

# A word keeps inner hyphens and apostrophes ("left-most", "man's"); other punctuation (and
# emoji) is dropped from edited candidates, as EDA does. Letters are any script's: an ASCII
# class cut "für" into "f" and "r". On ASCII text both classes match the same words.
_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")


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
