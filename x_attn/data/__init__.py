"""Training data: the embedded Shakespeare corpus and character-level text helpers."""

from x_attn.data.shakespeare import Corpus, shakespeare
from x_attn.data.text import CharVocab, TextData, load_text_file, split_text

__all__ = ["CharVocab", "Corpus", "TextData", "load_text_file", "shakespeare", "split_text"]
