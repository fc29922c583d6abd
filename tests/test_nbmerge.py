"""The notebook merge (rjn/nbmerge.py): pure logic, every case a way both sides edit."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rjn import nbmerge


def cell(ident: str | None, source: str, outputs: list[Any] | None = None, **extra: Any) -> dict:
    found: dict[str, Any] = {"cell_type": "code", "execution_count": None, "metadata": {},
                             "outputs": outputs or [],
                             "source": source.splitlines(True)}  # fmt: skip
    if ident is not None:
        found["id"] = ident
    return {**found, **extra}


def notebook(*cells: dict, **metadata: Any) -> bytes:
    nb = {"cells": list(cells), "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(nb, indent=1).encode()


def sources(merged: bytes | None) -> list[str]:
    assert merged is not None, "the merge refused"
    return ["".join(c["source"]) for c in json.loads(merged)["cells"]]


BASE = notebook(cell("a", "a = 1\n"), cell("b", "b = 2\n"), cell("c", "c = 3\n"))


def test_edits_of_different_cells_both_stay() -> None:
    ours = notebook(cell("a", "a = 10\n"), cell("b", "b = 2\n"), cell("c", "c = 3\n"))
    theirs = notebook(cell("a", "a = 1\n"), cell("b", "b = 2\n"), cell("c", "c = 30\n"))
    assert sources(nbmerge.merge(BASE, ours, theirs)) == ["a = 10\n", "b = 2\n", "c = 30\n"]


def test_the_same_cell_changed_differently_is_no_merge() -> None:
    ours = notebook(cell("a", "a = 10\n"), cell("b", "b = 2\n"), cell("c", "c = 3\n"))
    theirs = notebook(cell("a", "a = 11\n"), cell("b", "b = 2\n"), cell("c", "c = 3\n"))
    assert nbmerge.merge(BASE, ours, theirs) is None


def test_a_source_edit_and_a_run_of_the_same_cell_merge_by_field() -> None:
    ran = [{"output_type": "stream", "name": "stdout", "text": ["1\n"]}]
    ours = notebook(cell("a", "a = 10\n"), cell("b", "b = 2\n"), cell("c", "c = 3\n"))
    theirs = notebook(cell("a", "a = 1\n", ran, execution_count=1), cell("b", "b = 2\n"),
                      cell("c", "c = 3\n"))  # fmt: skip
    merged = json.loads(nbmerge.merge(BASE, ours, theirs) or b"")
    first = merged["cells"][0]
    assert "".join(first["source"]) == "a = 10\n" and first["outputs"] == ran
    assert first["execution_count"] == 1


def test_cells_added_on_both_sides_are_kept_where_they_were_added() -> None:
    ours = notebook(cell("a", "a = 1\n"), cell("x", "ours\n"), cell("b", "b = 2\n"),
                    cell("c", "c = 3\n"))  # fmt: skip
    theirs = notebook(cell("a", "a = 1\n"), cell("b", "b = 2\n"), cell("c", "c = 3\n"),
                      cell("y", "theirs\n"))  # fmt: skip
    assert sources(nbmerge.merge(BASE, ours, theirs)) == [
        "a = 1\n", "ours\n", "b = 2\n", "c = 3\n", "theirs\n"]  # fmt: skip


def test_a_deletion_goes_only_over_an_unchanged_cell() -> None:
    deleted = notebook(cell("a", "a = 1\n"), cell("c", "c = 3\n"))
    unchanged_b = notebook(cell("a", "a = 5\n"), cell("b", "b = 2\n"), cell("c", "c = 3\n"))
    assert sources(nbmerge.merge(BASE, deleted, unchanged_b)) == ["a = 5\n", "c = 3\n"]
    changed_b = notebook(cell("a", "a = 1\n"), cell("b", "b = 20\n"), cell("c", "c = 3\n"))
    assert nbmerge.merge(BASE, deleted, changed_b) is None


def test_one_side_reordering_is_taken_with_the_others_edits() -> None:
    moved = notebook(cell("c", "c = 3\n"), cell("a", "a = 1\n"), cell("b", "b = 2\n"))
    edited = notebook(cell("a", "a = 1\n"), cell("b", "b = 22\n"), cell("c", "c = 3\n"))
    assert sources(nbmerge.merge(BASE, edited, moved)) == ["c = 3\n", "a = 1\n", "b = 22\n"]
    other = notebook(cell("b", "b = 2\n"), cell("a", "a = 1\n"), cell("c", "c = 3\n"))
    assert nbmerge.merge(BASE, moved, other) is None  # both reordered, differently


def test_notebook_metadata_merges_key_by_key() -> None:
    base = notebook(cell("a", "a\n"), kernelspec={"name": "python3"})
    ours = notebook(cell("a", "a\n"), kernelspec={"name": "python3"}, tags=["x"])
    theirs = notebook(cell("a", "a\n"), kernelspec={"name": "other"})
    merged = json.loads(nbmerge.merge(base, ours, theirs) or b"")
    assert merged["metadata"] == {"kernelspec": {"name": "other"}, "tags": ["x"]}


def test_cells_without_ids_are_matched_by_position() -> None:
    base = notebook(cell(None, "a\n"), cell(None, "b\n"), cell(None, "c\n"))
    ours = notebook(cell(None, "A\n"), cell(None, "b\n"), cell(None, "c\n"))
    theirs = notebook(cell(None, "a\n"), cell(None, "b\n"), cell(None, "new\n"),
                      cell(None, "c\n"))  # fmt: skip
    assert sources(nbmerge.merge(base, ours, theirs)) == ["A\n", "b\n", "new\n", "c\n"]


def test_text_as_lines_or_one_string_is_the_same_text() -> None:
    as_string = notebook({**cell("a", ""), "source": "a = 1\n"}, cell("b", "b = 2\n"),
                         cell("c", "c = 3\n"))  # fmt: skip
    theirs = notebook(cell("a", "a = 1\n"), cell("b", "b = 20\n"), cell("c", "c = 3\n"))
    assert sources(nbmerge.merge(BASE, as_string, theirs)) == ["a = 1\n", "b = 20\n", "c = 3\n"]


def test_a_side_that_changed_nothing_gives_the_other_byte_for_byte() -> None:
    theirs = notebook(cell("a", "a = 1\n"), cell("b", "b = 2\n"), cell("c", "c = 9\n"))
    assert nbmerge.merge(BASE, BASE, theirs) == theirs


@pytest.mark.parametrize(
    "bad", [b"", b"{", b"[]", b'{"cells": 3}', b'{"cells": [], "nbformat": 3}']
)
def test_what_is_not_a_notebook_is_no_merge(bad: bytes) -> None:
    assert nbmerge.merge(BASE, bad, BASE) is None
    assert nbmerge.merge(bad, BASE, BASE) is None
