"""docs/errors.md cannot drift: every row is triggered and its exception and message checked.

The triggers live in tests/error_cases.py, keyed by the row's id (first column).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from error_cases import CASES

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
COLUMNS = ["id", "what you did", "raises", "message (excerpt)", "fix"]


def table_rows() -> dict[str, dict[str, str]]:
    """The rows of the doc's table, by id."""
    lines = [line for line in DOC.read_text().splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == COLUMNS, header
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == len(COLUMNS), line
        row = dict(zip(COLUMNS, cells))
        assert row["id"] not in rows, f"duplicate row {row['id']}"
        rows[row["id"]] = row
    return rows


ROWS = table_rows()


def test_every_row_has_a_trigger_and_every_trigger_a_row():
    assert sorted(ROWS) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_row_matches_the_raised_error(name):
    row = ROWS[name]
    excerpt = re.fullmatch(r"`(.+)`", row["message (excerpt)"])
    assert excerpt, f"{name}: the message column must be one `code span`"
    assert row["raises"] in ("ValueError", "TypeError"), row["raises"]
    assert row["what you did"] and row["fix"]
    with pytest.raises(Exception) as info:
        CASES[name]()
    assert type(info.value).__name__ == row["raises"], f"{type(info.value).__name__}: {info.value}"
    assert excerpt.group(1) in str(info.value)
