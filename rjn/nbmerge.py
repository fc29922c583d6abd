"""A notebook changed on both sides, merged cell by cell against the version both last agreed on.

Pure logic on the notebook's JSON, standard library only, so merging needs no notebook stack on
this machine and no network. Cells are matched by their id (nbformat 4.5, what JupyterLab
writes), else by position where the sources line up. Within a cell each field (source, outputs,
execution count, metadata) merges on its own: one side changed it, that side's value wins;
both changed it alike, fine; both changed it differently, the merge refuses and the caller
keeps both versions. Cells added on either side are kept where they were added; a cell deleted
on one side goes only if the other side left it as it was.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from typing import Any


class Conflict(Exception):
    """Both sides changed the same thing differently: no merge."""


# Fields that nbformat may store as a list of lines or as one string (the same content).
_MULTILINE = frozenset({"source", "text"})
_MISSING = object()


def merge(base: bytes, ours: bytes, theirs: bytes) -> bytes | None:
    """The merged notebook, or None where both sides changed the same thing differently, or
    one of the three is not a notebook this can read (then the caller keeps both)."""
    try:
        notebooks = [_load(text) for text in (base, ours, theirs)]
        merged = _merge_notebook(*notebooks)
    except (Conflict, ValueError, TypeError, KeyError):
        return None
    if _same(merged, notebooks[1]):
        return ours
    if _same(merged, notebooks[2]):
        return theirs
    # As nbformat (and so Jupyter) writes a notebook.
    return (json.dumps(merged, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def _load(text: bytes) -> dict[str, Any]:
    notebook = json.loads(text)
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise ValueError("not a notebook")
    if notebook.get("nbformat") != 4 or not all(isinstance(c, dict) for c in notebook["cells"]):
        raise ValueError("not a version 4 notebook")
    return notebook


def _merge_notebook(
    base: dict[str, Any], ours: dict[str, Any], theirs: dict[str, Any]
) -> dict[str, Any]:
    rest = _merge_value(*(_without_cells(nb) for nb in (base, ours, theirs)))
    return {**rest, "cells": _merge_cells(base["cells"], ours["cells"], theirs["cells"])}


def _without_cells(notebook: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in notebook.items() if key != "cells"}


def _merge_cells(
    base: list[dict[str, Any]], ours: list[dict[str, Any]], theirs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    base_keys, our_keys, their_keys = _keys(base, ours, theirs)
    cells = {
        "base": dict(zip(base_keys, base, strict=True)),
        "ours": dict(zip(our_keys, ours, strict=True)),
        "theirs": dict(zip(their_keys, theirs, strict=True)),
    }
    merged: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys([*base_keys, *our_keys, *their_keys]):
        cell = _merge_value(*(cells[side].get(key, _MISSING) for side in cells))
        if cell is not _MISSING:
            merged[key] = cell
    # The order: a side that kept the agreed order of the cells both still have takes the
    # other side's order; where both reordered them differently, no merge.
    kept = [k for k in base_keys if k in merged]
    order_ours = [k for k in our_keys if k in merged and k in cells["base"]]
    order_theirs = [k for k in their_keys if k in merged and k in cells["base"]]
    if order_ours in (kept, order_theirs):
        skeleton, other = their_keys, our_keys
    elif order_theirs == kept:
        skeleton, other = our_keys, their_keys
    else:
        raise Conflict("cells reordered on both sides")
    result = [k for k in skeleton if k in merged]
    for index, key in enumerate(other):
        if key in merged and key not in result:  # added on the other side: after its neighbour
            before = next((k for k in reversed(other[:index]) if k in result), None)
            result.insert(result.index(before) + 1 if before is not None else 0, key)
    return [merged[key] for key in result]


def _keys(*sides: Sequence[dict[str, Any]]) -> list[list[str]]:
    """A key per cell on each side, the same for the same cell: its id where every cell of the
    three has a unique one, else its position in the agreed version where it lines up there."""
    ids = [[cell.get("id") for cell in side] for side in sides]
    if all(all(isinstance(i, str) for i in side) and len(set(side)) == len(side) for side in ids):
        return [[f"id:{i}" for i in side] for side in ids]
    base, *others = sides
    keys = [[f"at:{n}" for n in range(len(base))]]
    for number, side in enumerate(others):
        found = [f"new:{number}:{n}" for n in range(len(side))]
        matcher = difflib.SequenceMatcher(
            None, [_text(c.get("source", "")) for c in base],
            [_text(c.get("source", "")) for c in side], autojunk=False,
        )  # fmt: skip
        for tag, b0, b1, s0, s1 in matcher.get_opcodes():
            if tag == "equal" or (tag == "replace" and b1 - b0 == s1 - s0):
                for offset in range(b1 - b0):
                    found[s0 + offset] = f"at:{b0 + offset}"
        keys.append(found)
    return keys


def _merge_value(base: Any, ours: Any, theirs: Any) -> Any:
    """Three-way: the side that changed wins; both changed alike, fine; both changed a
    mapping, merged key by key; anything else both changed is a conflict."""
    if _same(ours, theirs):
        return ours
    if _same(ours, base):
        return theirs
    if _same(theirs, base):
        return ours
    if all(isinstance(v, dict) for v in (ours, theirs)) and (
        isinstance(base, dict) or base is _MISSING
    ):
        base = base if isinstance(base, dict) else {}
        merged = {}
        for key in dict.fromkeys([*ours, *theirs, *base]):
            value = _merge_value(base.get(key, _MISSING), ours.get(key, _MISSING),
                                 theirs.get(key, _MISSING))  # fmt: skip
            if value is not _MISSING:
                merged[key] = value
        return merged
    raise Conflict("changed on both sides")


def _same(a: Any, b: Any) -> bool:
    return a is b or _normal(a) == _normal(b)


def _normal(value: Any, key: str = "") -> Any:
    """A value as compared: text stored as a list of lines is the same text as one string."""
    if isinstance(value, dict):
        in_data = key == "data"
        return {k: _normal(v, "text" if in_data else k) for k, v in value.items()}
    if isinstance(value, list):
        if key in _MULTILINE and all(isinstance(v, str) for v in value):
            return "".join(value)
        return [_normal(v) for v in value]
    return value


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)
