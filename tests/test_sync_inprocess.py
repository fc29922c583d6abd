"""The sync engine against this machine as its remote, in milliseconds: the helper's actions
in process (tests/inprocess.py), rsync between local folders. The same passes run over a real
sshd in test_sync_engine.py and test_twoway.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from inprocess import InProcessHelper

from rjn import config as cfg
from rjn import twoway
from rjn.model import Outcome


@dataclass
class Pair:
    here: Path
    there: Path
    helper: InProcessHelper
    config: cfg.Config

    def sync(self, **options: Any) -> Outcome:
        return twoway.run(self.helper, self.config, str(self.there), **options)


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    (here / "remote.toml").write_text(f'[remote]\nhost = "here"\ndir = "{there}"\n')
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
    (pair.here / "train.py").unlink()
    pair.sync()
    assert pair.helper.calls[-1] == "trash" and not (pair.there / "train.py").exists()
