"""The sync engine against this machine as its remote, in milliseconds: the helper's actions
in process (tests/inprocess.py), rsync between local folders. The same passes run over a real
sshd in test_sync_engine.py and test_twoway.py."""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from inprocess import InProcessHelper

from rjn import config as cfg
from rjn import twoway
from rjn.records import Outcome


@dataclass
class Pair:
    here: Path
    there: Path
    helper: InProcessHelper
    config: cfg.Config

    def sync(self, **options: Any) -> Outcome:
        return twoway.run(self.helper, self.config, str(self.there), **options)


# Both transfers pass the same passes: rsync, and rjn's own (helper/files.py); and rjn's own
# with folders as checked paths instead of descriptors (Windows' route, portable.py).
@pytest.fixture(params=["rsync", "rjn", "rjn-by-path"])
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request) -> Iterator[Pair]:
    from rjn.shared import tree

    monkeypatch.setattr(tree, "BY_PATH", request.param == "rjn-by-path")
    how = request.param.split("-")[0]
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    (here / "remote.toml").write_text(
        f'[remote]\nhost = "here"\ndir = "{there}"\ntransfer = "{how}"\n'
    )
    (here / "train.py").write_text("print('v1')\n")
    (here / "data").mkdir()
    (here / "data" / "a.csv").write_text("x\n1\n")
    yield Pair(here, there, InProcessHelper(tmp_path / "state"), cfg.load(here / "remote.toml"))


def bump(path: Path, text: str) -> None:
    """Write, and move the time on: a same-size edit in the same clock tick is another test."""
    path.write_text(text)
    stamp = path.stat().st_mtime_ns + 2_000_000_000
    os.utime(path, ns=(stamp, stamp))


def test_a_first_pass_sends_everything_and_a_second_has_nothing_to_do(pair: Pair) -> None:
    first = pair.sync()
    assert sorted(first.pushed) == ["data/a.csv", "remote.toml", "train.py"]
    assert (pair.there / "train.py").read_text() == "print('v1')\n"
    assert not list((pair.there / ".rjn").glob("incoming-*"))  # staging is cleaned up
    again = pair.sync()
    assert not again.changed and not again.conflicts


def test_edits_travel_both_ways(pair: Pair) -> None:
    pair.sync()
    bump(pair.there / "train.py", "print('edited there')\n")
    bump(pair.here / "data" / "a.csv", "x\n2\n")
    done = pair.sync()
    assert [p.path for p in done.pulled] == ["train.py"] and done.pushed == ("data/a.csv",)
    assert (pair.here / "train.py").read_text() == "print('edited there')\n"
    assert (pair.there / "data" / "a.csv").read_text() == "x\n2\n"


def test_an_edit_on_both_sides_keeps_both(pair: Pair) -> None:
    pair.sync()
    bump(pair.there / "train.py", "print('theirs')\n")
    bump(pair.here / "train.py", "print('ours')\n")
    done = pair.sync()
    [(name, copy)] = done.conflicts.items()
    assert name == "train.py" and (pair.here / copy).read_text() == "print('theirs')\n"
    assert (pair.here / "train.py").read_text() == "print('ours')\n"
    assert (pair.there / "train.py").read_text() == "print('theirs')\n"  # nothing overwritten


def test_a_deletion_goes_to_the_other_sides_trash(pair: Pair) -> None:
    pair.sync()
    (pair.there / "data" / "a.csv").unlink()
    done = pair.sync()
    assert done.trashed_here == ("data/a.csv",) and not (pair.here / "data" / "a.csv").exists()
    trashed = list((pair.here / ".rjn" / "trash").rglob("a.csv"))
    assert [p.read_text() for p in trashed] == ["x\n1\n"]


def test_a_purged_remote_folder_deletes_nothing_here(pair: Pair) -> None:
    pair.sync()
    for path in sorted(pair.there.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    done = pair.sync()
    assert done.new_pair and not done.trashed_here
    assert (pair.here / "train.py").exists() and (pair.there / "train.py").exists()


def test_the_helper_is_asked_through_its_typed_actions(pair: Pair) -> None:
    pair.sync()
    assert {"scan", "place"} <= set(pair.helper.calls)
    own = pair.config.remote.transfer == "rjn"
    assert ("receive" in pair.helper.calls) is own  # the push's bytes went through the helper
    bump(pair.there / "train.py", "print('there')\n")
    pair.sync()
    assert ("send" in pair.helper.calls) is own
    (pair.here / "train.py").unlink()
    pair.sync()
    assert pair.helper.calls[-1] == "trash" and not (pair.there / "train.py").exists()


# -- rjn's own transfer, as the untrusted input it reads ------------------------------------------


def arrivals(tmp_path: Path) -> Any:
    from rjn.transfer.own import _Arrivals

    staging = tmp_path / "staging"
    staging.mkdir()
    return _Arrivals(staging, None, max_size=1 << 20, max_total=3 << 20), staging


def chunk(data: bytes) -> bytes:
    return zlib.compress(data)


def test_own_transfer_keeps_a_file_only_if_its_hash_matches(tmp_path: Path) -> None:
    took, staging = arrivals(tmp_path)
    good = hashlib.sha256(b"abc").hexdigest()
    for message in ({"data": "a/x.txt", "blob": chunk(b"abc")},
                    {"file": "a/x.txt", "mtime_ns": 5, "sha256": good},
                    {"data": "a/y.txt", "blob": chunk(b"abc")},
                    {"file": "a/y.txt", "mtime_ns": 5, "sha256": "0" * 64}):  # fmt: skip
        took.take(message)
    assert took.failed is None
    assert (staging / "a" / "x.txt").read_bytes() == b"abc"
    assert (staging / "a" / "x.txt").stat().st_mtime_ns == 5
    assert not (staging / "a" / "y.txt").exists()  # damaged on the way: not kept


@pytest.mark.parametrize(("messages", "said"), [
    ([{"link": "out", "target": "/etc"}, {"data": "out/passwd", "blob": chunk(b"x")}],
     "beneath a link"),
    ([{"data": "../escape", "blob": chunk(b"x")}], "escape"),
    ([{"data": "big", "blob": chunk(b"x" * (2 << 20))}], "malformed chunk"),
    ([{"data": "a", "blob": b"not zlib!"}], "cannot write"),
    ([{"data": "a", "blob": "eA=="}], "a chunk without its bytes"),
], ids=["beneath-a-link", "dot-dot", "a-bomb", "garbage", "a-blob-named-in-JSON"])  # fmt: skip
def test_own_transfer_refuses_what_would_leave_staging(
    tmp_path: Path, messages: list[dict[str, Any]], said: str
) -> None:
    took, _ = arrivals(tmp_path)
    for message in messages:
        took.take(message)  # never raises: it is called from the transfer's reader
    took.close()
    assert took.failed is not None and said in took.failed.message, took.failed
    assert not (tmp_path / "etc").exists() and not (tmp_path / "escape").exists()


@pytest.mark.parametrize("by_path", [False, True], ids=["descriptors", "paths"])
def test_placing_never_writes_through_a_link_in_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_path: bool
) -> None:
    from rjn.shared import tree
    from rjn.transfer import placing

    monkeypatch.setattr(tree, "BY_PATH", by_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    root, outside = tmp_path / "project", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "remote.toml").write_text('[remote]\nhost = "h"\n')
    (root / "results").symlink_to(outside)  # planted: results/ leads out of the project
    staging = root / ".rjn-incoming-1-x"
    (staging / "results").mkdir(parents=True)
    (staging / "results" / "fig.png").write_bytes(b"png")
    [pulled] = placing.place(cfg.load(root / "remote.toml"), staging)
    assert pulled.refused and "link" in pulled.refused
    assert not (outside / "fig.png").exists()


def test_a_conflicted_file_that_became_a_folder_here_is_a_clash_not_a_loop(pair: Pair) -> None:
    """Found by the soak: the conflicted name still holds a file there, so nothing may go
    beneath it; each pass tried, and was refused ("raced"), for ever."""
    pair.sync()
    bump(pair.there / "train.py", "print('theirs')\n")
    bump(pair.here / "train.py", "print('ours')\n")
    assert "train.py" in pair.sync().conflicts
    (pair.here / "train.py").unlink()
    (pair.here / "train.py").mkdir()
    (pair.here / "train.py" / "y").write_text("inside\n")
    pair.sync()
    again = pair.sync()
    assert not again.raced and "train.py" in again.clashes
    assert (pair.there / "train.py").read_text() == "print('theirs')\n"  # nothing lost there
    assert (pair.here / "train.py" / "y").read_text() == "inside\n"


def test_a_file_there_where_a_conflict_copy_lies_here_is_a_clash(pair: Pair) -> None:
    """Found by the soak: the copy of a conflict beside its file, in folder d, here; d made a
    file there. Pulling it over the folder was refused at every pass."""
    (pair.here / "d").mkdir()
    (pair.here / "d" / "x").write_text("v1\n")
    pair.sync()
    bump(pair.there / "d" / "x", "theirs\n")
    bump(pair.here / "d" / "x", "ours\n")
    [copy] = pair.sync().conflicts.values()
    (pair.here / "d" / "x").unlink()  # the copy stays
    for path in sorted(pair.there.joinpath("d").rglob("*"), reverse=True):
        path.unlink()
    (pair.there / "d").rmdir()
    (pair.there / "d").write_text("a file now\n")
    pair.sync()
    again = pair.sync()
    assert not again.pulled and "d" in again.clashes
    assert (pair.here / copy).read_text() == "theirs\n"  # nothing lost here
    assert (pair.there / "d").read_text() == "a file now\n"


def test_a_link_here_where_a_folder_was_made_a_file_there_is_a_clash() -> None:
    plan = twoway.decide({}, {"d": [1, 1, "h"]}, {}, local_others=["d/link"])
    assert plan.clash == ("d",) and not plan.pull


def test_own_transfer_keeps_to_the_total_cap_whatever_the_remote_says(tmp_path: Path) -> None:
    took, _ = arrivals(tmp_path)
    block = chunk(b"x" * (1 << 20))
    for n in range(5):  # each file under max_file_size, together over the cap
        took.take({"data": f"f{n}", "blob": block})
        took.take({"file": f"f{n}", "mtime_ns": 1, "sha256": "0" * 64})
    took.close()
    assert took.over_budget > 3 << 20 and took.failed is None
    assert not (tmp_path / "staging" / "f3").exists()  # nothing written past the cap


def test_a_save_here_right_after_a_pull_is_never_taken_for_the_pulled_version(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user saves the file the moment the remote's version is placed: what the record
    agrees on is what was placed, so the save goes out next, and the remote's is not pulled
    over it (it was: the record took the save for the remote's version)."""
    from rjn import transfer

    pair.sync()
    bump(pair.there / "train.py", "print('there')\n")
    placed = transfer.Transfer.pull_decided

    def pull_then_save(*args: Any, **kwargs: Any) -> Any:
        found = placed(*args, **kwargs)
        bump(pair.here / "train.py", "print('saved here just after')\n")
        return found

    monkeypatch.setattr(transfer.Transfer, "pull_decided", pull_then_save)
    assert [p.path for p in pair.sync().pulled] == ["train.py"]
    monkeypatch.setattr(transfer.Transfer, "pull_decided", placed)
    bump(pair.there / "data" / "a.csv", "x\n5\n")  # another change there: a pass that pulls
    done = pair.sync()
    assert done.pushed == ("train.py",)
    for side in (pair.here, pair.there):
        assert (side / "train.py").read_text() == "print('saved here just after')\n"


def nb(*sources: str) -> str:
    cells = [{"cell_type": "code", "id": f"c{n}", "metadata": {}, "execution_count": None,
              "outputs": [], "source": s} for n, s in enumerate(sources)]  # fmt: skip
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def cells(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]]


def test_notebooks_edited_on_both_sides_merge_cell_by_cell(pair: Pair) -> None:
    bump(pair.here / "nb.ipynb", nb("a", "b", "c"))
    pair.sync()
    bump(pair.here / "nb.ipynb", nb("A here", "b", "c"))
    bump(pair.there / "nb.ipynb", nb("a", "b", "C there"))
    done = pair.sync()
    assert done.merged == ("nb.ipynb",) and not done.conflicts
    for side in (pair.here, pair.there):
        assert cells(side / "nb.ipynb") == ["A here", "b", "C there"]
    assert not list(pair.here.glob("nb.*-*.ipynb"))
    # The merge is the agreed version, and the base of the next one.
    bump(pair.here / "nb.ipynb", nb("A here", "B here", "C there"))
    bump(pair.there / "nb.ipynb", nb("A here", "b", "C again"))
    assert pair.sync().merged == ("nb.ipynb",)
    assert cells(pair.there / "nb.ipynb") == ["A here", "B here", "C again"]


def test_a_save_here_during_a_merge_is_kept_and_merged_next(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user saves the notebook while rjn merges it: the merge does not replace that save
    (nor does the save go out as the merge); the next pass merges it in."""
    from rjn import transfer

    bump(pair.here / "nb.ipynb", nb("a", "b", "c"))
    pair.sync()
    bump(pair.here / "nb.ipynb", nb("A", "b", "c"))
    bump(pair.there / "nb.ipynb", nb("a", "b", "C"))
    staged = transfer.Transfer.stage

    def stage_then_save(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("source"):  # the merge on its way: the editor saves its buffer
            bump(pair.here / "nb.ipynb", nb("A", "B", "c"))
        return staged(*args, **kwargs)

    monkeypatch.setattr(transfer.Transfer, "stage", stage_then_save)
    done = pair.sync()
    assert not done.merged and done.raced == ("nb.ipynb",)
    assert cells(pair.here / "nb.ipynb") == ["A", "B", "c"]  # the save, untouched
    assert cells(pair.there / "nb.ipynb") == ["A", "b", "C"]  # the merge of what was read
    monkeypatch.setattr(transfer.Transfer, "stage", staged)
    assert pair.sync().merged == ("nb.ipynb",)
    for side in (pair.here, pair.there):
        assert cells(side / "nb.ipynb") == ["A", "B", "C"]


def test_a_base_that_is_not_what_its_name_says_is_no_base(pair: Pair) -> None:
    """A merge base kept under its hash is checked before use (an older rjn could keep a later
    save under an earlier version's hash): a wrong one means no merge, both kept."""
    bump(pair.here / "nb.ipynb", nb("a", "b"))
    pair.sync()
    for base in twoway._bases(pair.config).iterdir():
        base.write_text(nb("a", "b", "not the agreed version"))
    bump(pair.here / "nb.ipynb", nb("A", "b"))
    bump(pair.there / "nb.ipynb", nb("a", "B"))
    done = pair.sync()
    assert not done.merged and list(done.conflicts) == ["nb.ipynb"]


@pytest.mark.skipif(os.geteuid() != 0, reason="listing as another account needs root (CI has it)")
def test_what_cannot_be_read_is_listed_as_unreadable_never_as_missing() -> None:
    """As an ordinary account (root reads everything): a file of mode 000 and a folder that
    cannot be entered are listed as unreadable, not left out (they would seem deleted)."""
    import shutil
    import subprocess
    import tempfile

    python = shutil.which("python3", path="/usr/bin:/usr/local/bin:/bin")
    if python is None:
        pytest.skip("no system python3 another account can run")
    scratch = Path(tempfile.mkdtemp(prefix="rjn-unreadable-"))
    scratch.chmod(0o755)
    # The helper as it travels (its zipapp), where any account can read it.
    from rjn.helper_client.boot import helper_zipapp

    (scratch / "helper.pyz").write_bytes(helper_zipapp()[0])
    (scratch / "helper.pyz").chmod(0o644)
    top = scratch / "project"
    top.mkdir()
    try:
        top.chmod(0o755)
        (top / "ok.txt").write_text("fine\n")
        (top / "ok.txt").chmod(0o644)
        (top / "secret.txt").write_text("no\n")
        (top / "secret.txt").chmod(0o000)
        (top / "locked").mkdir()
        (top / "locked" / "inner.txt").write_text("no\n")
        (top / "locked").chmod(0o000)
        code = ("import json, sys; from rjn.shared import tree; "
                "print(json.dumps(tree.list_tree(sys.argv[1], [])))")  # fmt: skip
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(scratch / "helper.pyz")}
        done = subprocess.run([python, "-c", code, str(top)], user="nobody", cwd=scratch,
                              capture_output=True, text=True, env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        listing = json.loads(done.stdout)
        assert list(listing["files"]) == ["ok.txt"]
        assert listing["others"] == {"secret.txt": "unreadable", "locked": "unreadable"}
        assert all("cannot be read" in why for _, why in listing["skipped"])
    finally:
        (top / "locked").chmod(0o755)
        shutil.rmtree(scratch)


def test_a_file_unreadable_there_is_not_taken_for_deleted(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the remote cannot read (mode 000 for its user) stays here, named; it was taken
    for a remote deletion and moved to the trash here."""
    from rjn.shared import tree

    pair.sync()
    there = str(pair.there)
    real_access = os.access
    monkeypatch.setattr(
        tree.os, "access",
        lambda path, mode: not str(path).startswith(f"{there}/data") and real_access(path, mode),
    )  # fmt: skip
    monkeypatch.setattr(tree.os, "geteuid", lambda: 12345)  # not the files' owner: asked
    done = pair.sync()
    assert not done.trashed_here and (pair.here / "data" / "a.csv").exists()
    assert ("there", "data/a.csv", "it cannot be read (permission denied): left as it is on "
            "both sides") in done.skipped  # fmt: skip
    bump(pair.here / "data" / "a.csv", "x\n9\n")  # nor is an edit here sent over it
    assert "data/a.csv" not in pair.sync().pushed


def test_two_clones_syncing_one_remote_folder_never_clean_up_each_others_staging(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two clones of one project on one machine (git worktrees) and one remote folder: one's
    pass, which cleans up this machine's leftover staging there, runs while the other's push
    sits in its staging; both succeed (the push failed with a raw errno)."""
    import shutil

    from rjn import transfer

    pair.sync()
    other = pair.here.parent / "worktree"
    shutil.copytree(pair.here, other, ignore=shutil.ignore_patterns(".rjn*"))
    second = Pair(other, pair.there, pair.helper, cfg.load(other / "remote.toml"))
    second.sync()
    bump(pair.here / "train.py", "print('from the first clone')\n")
    bump(other / "data" / "a.csv", "x\n7\n")
    staged = transfer.Transfer.stage

    def stage_then_other_pass(*args: Any, **kwargs: Any) -> Any:
        name = staged(*args, **kwargs)
        monkeypatch.setattr(transfer.Transfer, "stage", staged)
        assert second.sync().pushed == ("data/a.csv",)  # meanwhile, the other clone's pass
        return name

    monkeypatch.setattr(transfer.Transfer, "stage", stage_then_other_pass)
    assert pair.sync().pushed == ("train.py",)
    assert (pair.there / "train.py").read_text() == "print('from the first clone')\n"
    assert (pair.there / "data" / "a.csv").read_text() == "x\n7\n"


def test_a_conflict_on_a_name_near_the_length_limit_keeps_both(pair: Pair) -> None:
    """The remote version's copy beside ours is shortened to a name the disk takes (it failed
    with 'File name too long' at every pass, and the conflict was never recorded)."""
    name = "é" * 60 + "x" * 120 + ".ipynb"  # 246 bytes
    bump(pair.here / name, "agreed\n")
    pair.sync()
    bump(pair.here / name, "ours\n")
    bump(pair.there / name, "theirs\n")
    done = pair.sync()
    [(conflicted, copy)] = done.conflicts.items()
    assert conflicted == name and len(copy.encode()) <= 255 and copy.endswith(".ipynb")
    assert (pair.here / name).read_text() == "ours\n"
    assert (pair.here / copy).read_text() == "theirs\n"
    assert pair.sync().conflicts == {name: copy}  # recorded, and said until resolved


@pytest.mark.parametrize("pair", ["rsync"], indirect=True)
def test_rsync_losing_its_delta_basis_mid_push_is_retried_whole(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rsync fails a push when the remote rewrites the file its delta is based on ("got a
    block match with no basis file", about 1 in 250 random rounds): rjn sends it again whole
    instead of failing the sync."""
    from rjn.errors import RemoteError
    from rjn.transfer import rsync

    pair.sync()
    bump(pair.here / "train.py", "print('pushed')\n")
    real, calls = rsync._run, []

    def failing_once(remote: Any, argv: list[str], *args: Any, **kwargs: Any) -> Any:
        calls.append(argv)
        if len(calls) == 1:
            raise RemoteError("here: rsync failed (exit 2): got a block match with no basis "
                              'file for ".rjn/incoming-x/train.py" [receiver]')  # fmt: skip
        return real(remote, argv, *args, **kwargs)

    monkeypatch.setattr(rsync, "_run", failing_once)
    assert pair.sync().pushed == ("train.py",)
    assert (pair.there / "train.py").read_text() == "print('pushed')\n"
    assert any(a.startswith("--copy-dest") for a in calls[0])
    assert not any(a.startswith("--copy-dest") for a in calls[1])


def test_names_that_differ_only_by_case_travel_one_spelling_where_the_disk_folds_case() -> None:
    """On a Mac's or Windows' disk `Notes.txt` and `notes.txt` are one file: one spelling
    travels (the one here, else the first), the other is named, never written over it."""
    listing = twoway.Listing(
        files={n: [1, 1, "h"] for n in ("Notes.txt", "notes.txt", "Data/x", "data/y", "b")},
        others={}, skipped=[], replica=None, gen=None,
    )  # fmt: skip
    kept = twoway._one_per_case(listing, {"data/z": [1, 1, "h"]})
    assert sorted(kept.files) == ["Notes.txt", "b", "data/y"]
    assert dict(kept.skipped) == {
        "Data/x": "differs only by case from data, which this disk takes for the same name: "
        "rename one",
        "notes.txt": "differs only by case from Notes.txt, which this disk takes for the same "
        "name: rename one",
    }
    assert twoway._one_per_case(kept, {}) == kept  # nothing left to fold


def test_a_case_folding_disk_never_takes_two_remote_names_for_one(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rjn import portable

    monkeypatch.setattr(portable, "FORCED", frozenset({"fold-case"}))  # as on a Mac
    pair.sync()
    bump(pair.there / "Notes.txt", "upper\n")
    bump(pair.there / "notes.txt", "lower\n")
    done = pair.sync()
    assert [p.path for p in done.pulled] == ["Notes.txt"]
    assert ("there", "notes.txt", "differs only by case from Notes.txt, which this disk takes "
            "for the same name: rename one") in done.skipped  # fmt: skip
    assert (pair.here / "Notes.txt").read_text() == "upper\n"
    assert not (pair.here / "notes.txt").exists()
    assert (pair.there / "notes.txt").read_text() == "lower\n"  # left there, as it is
    assert not pair.sync().pulled


def test_this_machines_disk_is_asked_how_it_compares_names(tmp_path: Path) -> None:
    from rjn import portable

    assert portable.folds_case(tmp_path) is False  # Linux's filesystems: case matters
    assert not list(tmp_path.iterdir())  # the probe leaves nothing
