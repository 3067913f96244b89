"""Every code block of docs/ (and README.md's shell blocks) runs; generated pages are current.

Marker convention: a fenced block preceded by the line ``<!-- not-run: reason -->`` is not run;
the reason must say why. A python block with a line ``# needs: module`` is skipped (with the
reason) when that module of an optional extra is not installed. README.md's python blocks run
in tests/test_readme.py.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
BLOCK = re.compile(
    r"(?:^<!-- not-run: (?P<reason>[^\n]*?) -->\n)?^```(?P<lang>\w*)\n(?P<code>.*?)^```",
    re.S | re.M,
)


def blocks(text: str) -> list[tuple[str | None, str, str]]:
    """(not-run reason or None, language, code) of every fenced block."""
    return [(m["reason"], m["lang"], m["code"]) for m in BLOCK.finditer(text)]


def _cases(lang: str):
    for page in PAGES:
        for index, (reason, block_lang, code) in enumerate(blocks(page.read_text())):
            if block_lang != lang or reason is not None:
                continue
            if lang == "python" and page.name == "README.md":
                continue  # tests/test_readme.py
            yield pytest.param(code, id=f"{page.relative_to(ROOT)}:{index}")


def test_marker_convention_is_read():
    text = (
        "a\n<!-- not-run: installs packages -->\n```bash\npip install x\n```\n```python\n1\n```\n"
    )
    assert blocks(text) == [
        ("installs packages", "bash", "pip install x\n"),
        (None, "python", "1\n"),
    ]


def test_every_not_run_marker_gives_a_reason_and_precedes_a_block():
    for page in PAGES:
        text = page.read_text()
        markers = re.findall(r"^<!-- not-run:(.*?)-->", text, flags=re.M)
        skipped = [r for r, _, _ in blocks(text) if r is not None]
        assert len(markers) == len(skipped), f"{page}: a not-run marker is not right above a block"
        assert all(len(r.strip()) >= 10 for r in skipped), f"{page}: give the reason"
    # python and bash blocks run; text and unlabelled blocks show output or file layouts
    languages = {lang for p in PAGES for _, lang, _ in blocks(p.read_text())}
    assert languages <= {"python", "bash", "text", ""}, languages


@pytest.mark.parametrize("code", list(_cases("python")))
def test_docs_python_block_runs(code, tmp_path, monkeypatch):
    for module in re.findall(r"^# needs: ([\w.]+)", code, flags=re.M):  # an optional extra
        pytest.importorskip(module, reason=f"this docs block needs {module}")
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    exec(compile(code, "docs block", "exec"), {})


@pytest.mark.parametrize("code", list(_cases("bash")))
def test_shell_block_runs(code, tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # commands name examples/... as usual
    env = {**os.environ, "PYTHONPATH": str(ROOT), "X_ATTN_CACHE": str(tmp_path / "cache")}
    env["OMP_NUM_THREADS"] = "1"  # tiny models: one thread is fastest (see conftest.py)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_pages_are_up_to_date(capsys):
    assert _generator().main(["--check"]) == 0, capsys.readouterr().out


def test_each_mechanism_page_has_idea_example_picture_and_cost():
    generate = _generator()
    pages = generate.pages()
    assert len(pages) >= 10
    for path, meta in pages:
        text = path.read_text()
        for section in ("## The idea", "## Example", "## Picture", "## Cost"):
            assert section in text, f"{path.name}: missing {section}"
        assert any(lang == "python" for _, lang, _ in blocks(text)), path.name
        assert f"](../img/{path.stem}.png)" in text and (DOCS / "img" / f"{path.stem}.png").exists()
        kinds = ("attention", "positions", "layers")
        assert meta["kind"] in kinds and meta["picture"] in ("maps", "support")


def test_every_docs_page_is_reachable_and_every_link_resolves():
    linked = set()
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith("http"):
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.exists(), f"{page.relative_to(ROOT)} links to missing {target}"
            linked.add(resolved)
    for page in DOCS.rglob("*.md"):
        assert page.resolve() in linked, f"{page.relative_to(ROOT)} is not linked from any page"
