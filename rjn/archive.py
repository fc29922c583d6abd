"""The two-way sync's archive: what this folder and one remote folder last agreed on.

One file per project and remote in rjn's state folder, loaded once and saved once per pass
(`twoway.run`, under the pass's lock; model: mutagen's archive of typed entries). Its first
line is the head: small, all a quick check needs (the generation, the marks of the last clean
pass, the pair, the conflicts). Its second line holds the agreed files, one entry each, so a
check that needs only the head never reads the entries of 100,000 files.

The file is versioned. The files older rjn kept instead (`.agreed`, `.marks`) are read once,
written as an archive and removed. A file that cannot be read is taken as no archive: the
next pass then starts a new pair, which deletes nothing on either side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

from rjn import places, state
from rjn.shared.record import record

VERSION = 1


class Agreed(NamedTuple):
    """A file both sides last held the same content of: its stamp (size, mtime_ns) on each
    side, and the content's SHA-256."""

    local: tuple[int, int]
    remote: tuple[int, int]
    hash: str


@record
class Conflict:
    """A file changed on both sides and not merged: the remote version waits beside it."""

    copy: str  # where the remote version lies, beside the local file
    remote: str  # that version's hash: agreed once the user deletes the copy


@record
class Pair:
    """The remote copy this archive is about: another one starts a new pair."""

    host: str
    dir: str
    replica: str | None  # the id rjn keeps in the remote folder's .rjn/


@record
class Clean:
    """The last pass left nothing to do: until either side changes, the next has none."""

    here: str  # digest of this side's names and stamps
    listing: str | None  # the id of the remote's listing it had
    there: str  # that listing's digest, its files left out


@dataclasses.dataclass
class Head:
    """What a quick check reads: the archive without its files."""

    gen: int = 0  # passes that changed something: a listing made before one is told apart
    listing: str | None = None  # the id of the remote's listing kept here: the next diff's base
    clean: Clean | None = None
    pair: Pair | None = None
    conflicts: dict[str, Conflict] = dataclasses.field(default_factory=dict)
    kept_there: dict[str, str] = dataclasses.field(default_factory=dict)  # said once: name -> hash


@dataclasses.dataclass
class Archive(Head):
    """The whole archive: the head, and the agreed version of every file."""

    files: dict[str, Agreed] = dataclasses.field(default_factory=dict)


def path(root: Path, remote: str | None) -> Path:
    return state.project_file(root, remote, ".archive")


def load_head(root: Path, remote: str | None) -> Head:
    """The head alone (its first line): what a pass with nothing to do needs."""
    where = path(root, remote)
    try:
        with where.open("rb") as handle:
            return _head(Head(), json.loads(handle.readline()))
    except FileNotFoundError:
        return _migrated(root, remote) or Head()
    except (OSError, ValueError, TypeError, KeyError):
        return Head()


def load_archive(root: Path, remote: str | None) -> Archive:
    """The whole archive (an empty one where there is none, or it cannot be read)."""
    where = path(root, remote)
    try:
        head_line, files_line = where.read_bytes().split(b"\n", 2)[:2]
        found = {"head": json.loads(head_line), "files": json.loads(files_line)}
    except FileNotFoundError:
        return _migrated(root, remote) or Archive()
    except (OSError, ValueError):
        return Archive()
    try:
        archive = _head(Archive(), found.get("head"))
        archive.files = {rel: Agreed((e[0], e[1]), (e[2], e[3]), e[4])
                         for rel, e in found["files"].items()}  # fmt: skip
    except (TypeError, KeyError, IndexError, AttributeError):
        return Archive()
    return archive


def save_archive(root: Path, remote: str | None, archive: Archive) -> None:
    places.write_private(path(root, remote), _text(archive))


def _text(archive: Archive) -> str:
    head = {
        "version": VERSION,
        "gen": archive.gen,
        "listing": archive.listing,
        "clean": dataclasses.asdict(archive.clean) if archive.clean else None,
        "pair": dataclasses.asdict(archive.pair) if archive.pair else None,
        "conflicts": {rel: [c.copy, c.remote] for rel, c in archive.conflicts.items()},
        "kept_there": archive.kept_there,
    }
    files = {rel: [*a.local, *a.remote, a.hash] for rel, a in archive.files.items()}
    return json.dumps(head) + "\n" + json.dumps(files) + "\n"


def _head(into: Any, data: Any) -> Any:
    """`into` (a Head or an Archive) with the head's fields read from `data`."""
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return into
    into.gen = int(data["gen"])
    into.listing = data["listing"]
    into.clean = Clean(**data["clean"]) if data["clean"] else None
    into.pair = Pair(**data["pair"]) if data["pair"] else None
    into.conflicts = {rel: Conflict(*c) for rel, c in data["conflicts"].items()}
    into.kept_there = dict(data["kept_there"])
    return into


def _migrated(root: Path, remote: str | None) -> Archive | None:
    """The files older rjn kept (`.agreed`: the files, pair, conflicts; `.marks`: the
    generation, the listing's id, the clean marks) as an archive, written once; None if none."""
    old = [state.project_file(root, remote, kind) for kind in (".agreed", ".marks")]
    try:
        agreed = json.loads(old[0].read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        agreed = {}
    try:
        marks = json.loads(old[1].read_text())
    except (OSError, ValueError):
        marks = {}
    agreed, marks = (v if isinstance(v, dict) else {} for v in (agreed, marks))
    archive = Archive()
    with contextlib.suppress(TypeError, KeyError, ValueError, AttributeError):
        archive.gen = int(marks.get("gen") or agreed.get("gen") or 0)
        archive.listing = marks.get("listing")
        archive.pair = Pair(**agreed["pair"]) if agreed.get("pair") else None
        archive.conflicts = {rel: Conflict(c["copy"], c["remote"])
                             for rel, c in agreed.get("conflicts", {}).items()}  # fmt: skip
        archive.kept_there = dict(agreed.get("kept_there") or {})
    for rel, entry in (agreed.get("files") or {}).items():
        with contextlib.suppress(TypeError, KeyError, ValueError, IndexError):
            local, there = entry["local"], entry["remote"]
            archive.files[rel] = Agreed((local[0], local[1]), (there[0], there[1]), entry["hash"])
    save_archive(root, remote, archive)
    for gone in old:
        with contextlib.suppress(OSError):
            gone.unlink()
    return archive
