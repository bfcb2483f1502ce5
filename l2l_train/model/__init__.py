"""The segmentor: Swin visual encoder, BERT-family text encoder, SESM conditioning, FPN decoder.

Importing this package is light; transformers loads inside the builders.
"""

from l2l_train.model.segmentor import Segmentor, build_segmentor, count_parameters
from l2l_train.model.sesm import StageGates
from l2l_train.model.text import TextTokenizer, build_text_encoder, build_tokenizer

__all__ = [
    "Segmentor",
    "StageGates",
    "TextTokenizer",
    "build_segmentor",
    "build_text_encoder",
    "build_tokenizer",
    "count_parameters",
]
