"""Character-level text data: a vocabulary, encoded splits, random training windows.

Shape legend: b batch, n context length (a window holds n + 1 characters: inputs and targets).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["CharVocab", "TextData", "load_text_file", "split_text"]


class CharVocab:
    """Maps each distinct character of a text to a token id (sorted by code point)."""

    def __init__(self, chars: str) -> None:
        if not chars or len(set(chars)) != len(chars):
            raise ValueError("CharVocab: 'chars' must be a non-empty string of distinct characters")
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        """(n,) token ids; a ValueError names the characters the vocabulary lacks."""
        unknown = sorted(set(text) - set(self._ids))
        if unknown:
            raise ValueError(
                f"characters not in the model's vocabulary: {''.join(unknown)!r}; "
                f"the vocabulary is {self.chars!r}"
            )
        return torch.tensor([self._ids[c] for c in text], dtype=torch.long)

    def decode(self, ids: Tensor | list[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def load_text_file(path: str | Path) -> str:
    """A UTF-8 text file's contents; ValueError with the reason when missing, empty or binary."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--data: no such file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"--data: {path} is not UTF-8 text ({error.reason})") from None
    if not text.strip():
        raise ValueError(f"--data: {path} is empty")
    return text


def split_text(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """(train, val): the last ``val_fraction`` of the text is held out, in one piece."""
    cut = int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


@dataclass
class TextData:
    """Encoded training and validation text sharing one vocabulary."""

    vocab: CharVocab
    train: Tensor  # (n_train,) token ids
    val: Tensor  # (n_val,) token ids

    @classmethod
    def from_splits(cls, train: str, val: str) -> TextData:
        vocab = CharVocab.from_text(train + val)
        return cls(vocab, vocab.encode(train), vocab.encode(val))

    def check_context(self, context: int) -> None:
        """ValueError unless both splits hold at least one window of ``context + 1`` tokens."""
        for name, tokens in (("training", self.train), ("validation", self.val)):
            if len(tokens) < context + 1:
                raise ValueError(
                    f"--context {context} needs at least {context + 1} characters of {name} "
                    f"text, but the {name} split has {len(tokens)}; lower --context or use a "
                    "longer text"
                )

    def batch(self, batch: int, context: int, generator: torch.Generator) -> Tensor:
        """(b, n + 1) random windows of the training split."""
        starts = torch.randint(len(self.train) - context, (batch,), generator=generator)
        return torch.stack([self.train[s : s + context + 1] for s in starts.tolist()])

    def val_windows(self, context: int, max_tokens: int) -> Tensor:
        """(w, n + 1) fixed, evenly spaced validation windows covering about ``max_tokens``."""
        count = max(1, min(max_tokens // context, (len(self.val) - 1) // context))
        last = len(self.val) - context - 1
        starts = torch.linspace(0, last, count).long().unique()
        return torch.stack([self.val[s : s + context + 1] for s in starts.tolist()])
