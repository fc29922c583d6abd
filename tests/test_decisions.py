"""The sync engine's pure parts and its compare-and-swap, in milliseconds: the decision table
one row per case (file, folder, link, absent on each side, against the agreed base), the
deletion limit, and the helper's placing and trashing run on real folders."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from rjn.helper import tree
from rjn.helper.say import PART
from rjn.shared import tree as shared_tree
from rjn.shared.protocol import PlaceRequest, TrashRequest, TreeQuery
from rjn.twoway import Plan, decide, too_many


def e(digest: str) -> list:
    return [1, 1, digest]


# (here, there, agreed, others here, others there) -> the plan's non-empty fields.
ROWS = {
    "unchanged": ({"f": e("a")}, {"f": e("a")}, {"f": "a"}, (), (), {}),
    "changed here": ({"f": e("b")}, {"f": e("a")}, {"f": "a"}, (), (), {"push": ("f",)}),
    "changed there": ({"f": e("a")}, {"f": e("b")}, {"f": "a"}, (), (), {"pull": ("f",)}),
    "changed both": ({"f": e("b")}, {"f": e("c")}, {"f": "a"}, (), (), {"conflict": ("f",)}),
    "changed both alike": ({"f": e("c")}, {"f": e("c")}, {"f": "a"}, (), (), {"agree": ("f",)}),
    "new here": ({"f": e("n")}, {}, {}, (), (), {"push": ("f",)}),
    "new there": ({}, {"f": e("n")}, {}, (), (), {"pull": ("f",)}),
    "new both": ({"f": e("x")}, {"f": e("y")}, {}, (), (), {"conflict": ("f",)}),
    "deleted here": ({}, {"f": e("a")}, {"f": "a"}, (), (), {"trash_remote": ("f",)}),
    "deleted there": ({"f": e("a")}, {}, {"f": "a"}, (), (), {"trash_local": ("f",)}),
    "deleted both": ({}, {}, {"f": "a"}, (), (), {"forget": ("f",)}),
    "deleted here, changed there": ({}, {"f": e("b")}, {"f": "a"}, (), (), {"pull": ("f",)}),
    "changed here, deleted there": ({"f": e("b")}, {}, {"f": "a"}, (), (), {"push": ("f",)}),
    # Types: a file on one side, a folder (files under its name) or a link on the other.
    "folder here became a file there, edited here": (
        {"a/x": e("b")}, {"a": e("n")}, {"a/x": "a"}, (), (), {"clash": ("a",)}),
    "file there edited, became a folder here": (
        {"a/x": e("n")}, {"a": e("b")}, {"a": "a"}, (), (), {"clash": ("a",)}),
    "folder became a file here (one-sided)": (
        {"a": e("n")}, {"a/x": e("a")}, {"a/x": "a"}, (), (),
        {"push": ("a",), "trash_remote": ("a/x",)}),
    "folder became a file there (one-sided)": (
        {"a/x": e("a")}, {"a": e("n")}, {"a/x": "a"}, (), (),
        {"pull": ("a",), "trash_local": ("a/x",)}),
    "file became a folder there (one-sided)": (
        {"a": e("a")}, {"a/x": e("n")}, {"a": "a"}, (), (),
        {"pull": ("a/x",), "trash_local": ("a",)}),
    "new file there, a link of that name here": (
        {}, {"l": e("n")}, {}, ("l",), (), {"clash": ("l",)}),
    "new file in a folder there, a link of its name here": (
        {}, {"l/x": e("n")}, {}, ("l",), (), {"clash": ("l",)}),
    "edited here, a link of that name there": (
        {"l": e("b")}, {}, {"l": "a"}, (), ("l",), {"clash": ("l",)}),
    "a link on each side, never a file": ({}, {}, {}, ("l",), ("l",), {}),
    # Guarded files (they steer this machine) only ever go out.
    "remote.toml changed there": (
        {"remote.toml": e("a")}, {"remote.toml": e("b")}, {"remote.toml": "a"}, (), (),
        {"kept_there": ("remote.toml",)}),
    "remote.toml new there": (
        {}, {"sub/remote.toml": e("b")}, {}, (), (), {"kept_there": ("sub/remote.toml",)}),
    "remote.toml changed both": (
        {"remote.toml": e("c")}, {"remote.toml": e("b")}, {"remote.toml": "a"}, (), (),
        {"kept_there": ("remote.toml",)}),
    "remote.toml deleted there": (
        {"remote.toml": e("a")}, {}, {"remote.toml": "a"}, (), (), {"push": ("remote.toml",)}),
    "remote.toml changed here": (
        {"remote.toml": e("b")}, {"remote.toml": e("a")}, {"remote.toml": "a"}, (), (),
        {"push": ("remote.toml",)}),
    ".vscode task new there": (
        {}, {".vscode/tasks.json": e("t")}, {}, (), (), {"kept_there": (".vscode/tasks.json",)}),
    # Compared ignoring case: on a Mac's or Windows' disk these are the files above.
    "NOXFILE.py new there": (
        {}, {"NOXFILE.py": e("n")}, {}, (), (), {"kept_there": ("NOXFILE.py",)}),
    "Remote.toml in a folder there": (
        {}, {"analysis/Remote.toml": e("n")}, {}, (), (),
        {"kept_there": ("analysis/Remote.toml",)}),
    ".VSCode task new there": (
        {}, {".VSCode/tasks.json": e("t")}, {}, (), (), {"kept_there": (".VSCode/tasks.json",)}),
    # A planted git repository (its HEAD beside a config naming a command) is not one here.
    "a git HEAD planted there": (
        {}, {"tools/HEAD": e("h")}, {}, (), (), {"kept_there": ("tools/HEAD",)}),
    "a .git file planted there": (
        {}, {"sub/.git": e("g")}, {}, (), (), {"kept_there": ("sub/.git",)}),
}  # fmt: skip


@pytest.mark.parametrize("row", sorted(ROWS))
def test_the_decision_table(row: str) -> None:
    here, there, agreed, here_others, there_others, expected = ROWS[row]
    plan = decide(here, there, agreed, here_others, there_others)
    assert {k: v for k, v in plan.__dict__.items() if v} == expected


def test_nothing_under_a_clash_moves_but_elsewhere_all_does() -> None:
    here = {"a/x": e("b"), "a/y": e("b"), "z": e("b")}
    plan = decide(here, {"a": e("n"), "z": e("a")}, {"a/x": "a", "a/y": "a", "z": "a"})
    assert plan == Plan(push=("z",), clash=("a",))


LIMITS = [(1, 1, False), (3, 3, False), (4, 100, False), (4, 7, True), (20, 1000, False),
          (21, 1000, True), (500, 500, True)]  # fmt: skip


@pytest.mark.parametrize(("count", "side", "asks"), LIMITS)
def test_many_deletions_wait_for_the_users_word(count: int, side: int, asks: bool) -> None:
    assert too_many(count, side) == asks


# -- the helper's compare and swap, on real folders ----------------------------------------


def stage(project: Path, files: dict[str, bytes]) -> str:
    name = f"{shared_tree.STAGING_PREFIX}test-{time.monotonic_ns()}"
    for rel, data in files.items():
        path = project / ".rjn" / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return name


def entry(path: Path) -> list:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns, shared_tree.file_hash(str(path))]


def test_placing_replaces_only_what_the_plan_saw(tmp_path: Path) -> None:
    (tmp_path / "same.txt").write_text("listed")
    (tmp_path / "saved.txt").write_text("listed")
    wants = {"same.txt": entry(tmp_path / "same.txt"), "saved.txt": entry(tmp_path / "saved.txt"),
             "new.txt": None, "taken.txt": None, "deep/er/x.txt": None}  # fmt: skip
    # Between the listing and the placing, the remote saves (an autosave) and makes a file.
    (tmp_path / "saved.txt").write_text("autosaved")
    (tmp_path / "taken.txt").write_text("made meanwhile")
    name = stage(tmp_path, {rel: b"ours" for rel in wants})
    answer = tree.place(PlaceRequest(dir=str(tmp_path), staging=name, files=wants))
    assert sorted(answer["placed"]) == ["deep/er/x.txt", "new.txt", "same.txt"]
    assert sorted(answer["kept"]) == ["saved.txt", "taken.txt"]
    assert (tmp_path / "saved.txt").read_text() == "autosaved"
    assert (tmp_path / "taken.txt").read_text() == "made meanwhile"
    assert (tmp_path / "same.txt").read_text() == "ours"
    assert not (tmp_path / ".rjn" / name).exists()  # staging is gone, whatever was left


def test_a_same_size_same_time_rewrite_is_seen_by_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("aaaa")
    want = entry(path)
    path.write_text("bbbb")
    os.utime(path, ns=(want[1], want[1]))  # a coarse clock: size and time are the same
    name = stage(tmp_path, {"f.txt": b"ours"})
    answer = tree.place(PlaceRequest(dir=str(tmp_path), staging=name, files={"f.txt": want}))
    assert answer["kept"] and path.read_text() == "bbbb"


def test_placing_never_writes_through_a_link_and_a_folder_gives_way_only_empty(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    project = tmp_path / "p"
    project.mkdir()
    (project / "data").symlink_to(outside)
    (project / "empty").mkdir()
    (project / "full").mkdir()
    (project / "full" / "keep.txt").write_text("keep")
    wants = {"data/x.txt": None, "empty": None, "full": None}
    name = stage(project, {rel: b"ours" for rel in wants})
    answer = tree.place(PlaceRequest(dir=str(project), staging=name, files=wants))
    assert list(answer["placed"]) == ["empty"] and (project / "empty").read_text() == "ours"
    assert "is a link or a file here" in answer["kept"]["data/x.txt"]
    assert "not empty" in answer["kept"]["full"]
    assert list(outside.iterdir()) == [] and (project / "full" / "keep.txt").exists()


def test_trash_takes_only_the_version_seen_and_is_pruned_oldest_first(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).write_text(name)
    wants = {"a": entry(tmp_path / "a"), "b": entry(tmp_path / "b")}
    (tmp_path / "b").write_text("edited since")
    assert tree.trash(TrashRequest(dir=str(tmp_path), files=wants))["moved"] == {"a": True}
    assert (tmp_path / "b").read_text() == "edited since"
    trash = tmp_path / ".rjn" / "trash"
    for n, stamp in enumerate(["20200101-000000", "20200102-000000", "20990101-000000"]):
        (trash / stamp).mkdir(parents=True, exist_ok=True)
        (trash / stamp / "blob").write_bytes(b"x" * 1000 * (n + 1))
    old = time.time() - 40 * 86400
    os.utime(trash / "20200101-000000", (old, old))
    shared_tree.prune_trash(str(tmp_path), days=30, limit=3500)
    left = sorted(p.name for p in trash.iterdir())
    # The month-old one by age, the next oldest by size; the newest is always kept.
    assert "20200101-000000" not in left and "20200102-000000" not in left
    assert "20990101-000000" in left


def test_names_that_cannot_travel_are_skipped_and_said(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "tab\there.txt").write_text("x")
    (tmp_path / "#hash.txt").write_text("x")
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"latin\xe9"))
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "data.csv").write_text("x")  # a user's folder named env/ travels
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr\n")  # an environment does not
    (tmp_path / "link").symlink_to("plain.txt")
    listed = shared_tree.list_tree(str(tmp_path), [".rjn/"])
    assert sorted(listed["files"]) == ["#hash.txt", "env/data.csv", "plain.txt"]
    assert listed["others"] == {"link": "link"}
    assert sorted(why for _, why in listed["skipped"]) == [
        "its name has a control character", "its name is not UTF-8"]  # fmt: skip
    assert ["latin\\xe9", "its name is not UTF-8"] in listed["skipped"]


def test_a_copy_keeps_one_replica_id_and_a_new_folder_gets_another(tmp_path: Path) -> None:
    first = tree.replica(str(tmp_path / "p"))
    assert tree.replica(str(tmp_path / "p")) == first
    assert tree.replica(str(tmp_path / "q")) != first


def test_a_listing_sends_only_what_changed_since_the_one_the_caller_has(tmp_path, capsys):
    import json

    for n in range(2500):  # more than one message's worth
        (tmp_path / f"f{n:04}.txt").write_text(str(n))
    query = TreeQuery(exclude=[".rjn/"], include=[], mine="m1")
    first = tree.tree_listing(str(tmp_path), query)
    parts = [json.loads(line)["part"] for line in capsys.readouterr().out.splitlines()]
    assert len(parts) == 1 and len(parts[0]) == PART and "base" not in first
    assert len(parts[0]) + len(first["files"]) == 2500
    same = tree.tree_listing(str(tmp_path), replace(query, since=first["id"]))
    assert same["id"] == first["id"] and same["files"] == {} and same["gone"] == []
    (tmp_path / "f0001.txt").write_text("changed")
    (tmp_path / "f0002.txt").unlink()
    diff = tree.tree_listing(str(tmp_path), replace(query, since=first["id"]))
    assert diff["base"] == first["id"] and diff["id"] != first["id"]
    assert list(diff["files"]) == ["f0001.txt"] and diff["gone"] == ["f0002.txt"]
    # Another machine (or a caller that lost its copy) gets all of it.
    other = tree.tree_listing(str(tmp_path), replace(query, mine="m2", since=diff["id"]))
    assert "base" not in other
    capsys.readouterr()
