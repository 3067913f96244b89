"""Every python code block of README.md runs, and every registered flag is in its flag table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from x_attn.registry import FLAGS

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})


@pytest.mark.parametrize("case", [c for c in FLAGS if c.name != "default"], ids=lambda c: c.name)
def test_registered_flag_is_documented(case):
    base = case.name.split("=")[0]
    assert f"`{base}`" in README.read_text(), f"{base} missing from the README flag table"


def _arxiv_ids(text: str) -> set[str]:
    return set(re.findall(r"\b\d{4}\.\d{5}\b", text))


def test_every_cited_paper_is_in_citations_bib():
    root = README.parent
    bib = _arxiv_ids((root / "CITATIONS.bib").read_text())
    cited = _arxiv_ids(README.read_text())
    for path in (root / "x_attn").rglob("*.py"):
        cited |= set(re.findall(r"arXiv (\d{4}\.\d{5})", path.read_text()))
    assert cited - bib == set(), f"add these papers to CITATIONS.bib: {sorted(cited - bib)}"
