"""Placing what came home: every write inside the project, compare and swap, never through a
link.

The remote is not fully trusted (a shared cluster, a folder others can write to): every name
and link it sends is checked, and every local write lands inside the project. Files arrive
in a private staging folder first (`staging_here`); placing them walks the destination one
folder at a time through directory descriptors, never following a link, so a local symlink
(made by the user or by anyone) cannot carry a write elsewhere. A local file edited since
the remote version was last placed is kept, and that version lands beside it. The results'
index (`.pulled`: each result's stamp here and there when it was placed) tells edits apart.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rjn import places, state
from rjn.config import Config, guarded
from rjn.errors import RemoteError
from rjn.records import Pulled
from rjn.shared import tree as shared_tree
from rjn.shared.protocol import HelperError


class Refused(RemoteError):
    """A name or link from the remote that rjn will not write."""


def checked_name(name: object, folders: Sequence[str] | None) -> str:
    """A relative path from the remote, accepted only as a plain path inside one of `folders`
    (None: anywhere in the project): no '..' or '.', not absolute, no NUL or control
    characters."""
    if not isinstance(name, str) or not 0 < len(name) <= 4096:
        raise Refused(f"the remote sent a file name that is not one: {name!r:.80}")
    if name.startswith("/") or shared_tree.CONTROL.search(name):
        raise Refused(f"the remote sent an absolute path or a control character: {name!r:.200}")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise Refused(f"the remote sent a path that leaves its folder: {name!r:.200}")
    if folders is not None and not any(name.startswith(f"{f.strip('/')}/") for f in folders):
        raise Refused(f"the remote sent a file outside the results folders: {name!r:.200}")
    return name


def _link_stays_inside(rel: str, text: str, folders: Sequence[str]) -> bool:
    """Whether a link at `rel` pointing at `text` resolves, as written, inside its own results
    folder (the link's text is data from the remote: judged lexically, never resolved here)."""
    if not text or text.startswith("/") or "\0" in text:
        return False
    top = rel.split("/")[0]
    if top not in (folder.strip("/") for folder in folders):
        return False
    joined = os.path.normpath(os.path.join(os.path.dirname(rel), text))
    return joined == top or joined.startswith(top + "/")


def _index_path(config: Config) -> Path:
    return state.project_file(config.root, config.remote_name, ".pulled")


def last_pulled(root: Path, remote_name: str | None) -> str | None:
    """The result file that came home last (by its local time), for `rjn ls`."""
    index_file = state.project_file(root, remote_name, ".pulled")
    try:
        index = json.loads(index_file.read_text())
        stamped = [(r["local"][0], rel) for rel, r in index.items() if r.get("local")]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return max(stamped)[1] if stamped else None


def _load_index(config: Config) -> dict[str, dict[str, list[int]]]:
    try:
        data = json.loads(_index_path(config).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _stamp(info: os.stat_result) -> list[int]:
    return [info.st_mtime_ns, info.st_size]


def would_bring(config: Config, listing: object) -> bool:
    """Whether pull() would place (or refuse) anything, judged as placing judges (see
    _place_one); anything unexpected in the listing says yes, and rsync and placing decide."""
    if not isinstance(listing, dict):
        return True
    index = _load_index(config)
    plain_folders: dict[str, bool] = {}  # a folder here that is a real one, not a link

    def plain(folder: str) -> bool:
        if folder not in plain_folders:
            parent = folder.rpartition("/")[0]
            try:
                real = stat.S_ISDIR((config.root / folder).lstat().st_mode)
            except OSError:
                real = False
            plain_folders[folder] = real and (not parent or plain(parent))
        return plain_folders[folder]

    for name, stamp in listing.items():
        try:
            rel = checked_name(name, config.sync.results)
            local = (config.root / rel).lstat()
        except (Refused, OSError):
            return True
        ok = isinstance(stamp, list) and len(stamp) == 2 and all(type(v) is int for v in stamp)
        if not ok or not plain(rel.rpartition("/")[0]):
            return True
        here, last = _stamp(local), index.get(rel)
        last = last if isinstance(last, dict) else {}
        if stat.S_ISREG(local.st_mode) and here == stamp:
            continue  # rsync's --compare-dest skips it
        if last.get("remote") == stamp and here != last.get("local"):
            continue  # this remote version is already kept beside the local edit
        return True
    return False


def receive(config: Config, files: dict[str, tuple[bytes, int]]) -> list[Pulled]:
    """Place files that arrived inline ({relpath: (content, mtime_ns)}) as a pull would."""
    root = config.root
    with staging_here(root) as staging:
        for name, (content, mtime_ns) in files.items():
            rel = checked_name(name, config.sync.results)
            if len(content) > config.sync.max_file_size:
                raise Refused(f"{rel}: the remote sent more than [sync] max_file_size")
            staged = staging / rel
            staged.parent.mkdir(parents=True, exist_ok=True)  # inside our own fresh folder
            staged.write_bytes(content)
            os.utime(staged, ns=(mtime_ns, mtime_ns))
        return place(config, staging)


@contextlib.contextmanager
def staging_here(root: Path) -> Iterator[Path]:
    """A scratch folder in the project (same filesystem: moving out of it is atomic), named
    by our pid, so that one a killed rjn left is known for what it is (clean_staging)."""
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f"{_LOCAL_STAGING}{os.getpid()}-"))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_LOCAL_STAGING = ".rjn-incoming-"


def clean_staging(root: Path) -> None:
    """Remove the staging folders that rjn processes which are gone left in the project."""
    with contextlib.suppress(OSError):
        for leftover in root.glob(f"{_LOCAL_STAGING}*"):
            pid = leftover.name[len(_LOCAL_STAGING) :].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _staged(staging: Path) -> Iterator[str]:
    """Every file and link in the staging folder, relative to it; links are not entered."""
    for folder, dirs, names in os.walk(staging):
        here = Path(folder)
        for name in sorted(names) + sorted(d for d in dirs if (here / d).is_symlink()):
            yield (here / name).relative_to(staging).as_posix()


def place(
    config: Config,
    staging: Path,
    expected: dict[str, tuple[int, int] | None] | None = None,
    on_staged: Callable[[str, Path], Any] | None = None,
) -> list[Pulled]:
    """Move staged files into the project. A local file edited since the last pull (results:
    the pulled index tells) or since the decision (two-way: `expected`) is kept, and the remote
    version lands beside it. `on_staged` sees each file as it came, before it is placed."""
    index: dict[str, Any] = _load_index(config) if expected is None else {}
    placed: list[Pulled] = []
    root_fd = shared_tree.open_root(str(config.root))
    try:
        for rel in _staged(staging):
            staged = staging / rel
            info = staged.lstat()
            if guarded(rel):
                placed.append(
                    Pulled(
                        rel,
                        0,
                        refused="it would steer this machine "
                        "(rjn or another tool reads it): never brought home",
                    )
                )
                continue
            if stat.S_ISLNK(info.st_mode):
                text = os.readlink(staged)
                if not _link_stays_inside(rel, text, config.sync.results):
                    placed.append(Pulled(rel, 0, refused=f"a link to {text!r} outside its folder"))
                    continue
            try:
                folder = _open_folder(root_fd, rel)
            except Refused as refused:
                placed.append(Pulled(rel, info.st_size, refused=refused.message))
                continue
            if expected is not None:
                seen = expected.get(rel)
                index[rel] = {"local": list(seen) if seen else None}
            if on_staged and stat.S_ISREG(info.st_mode):
                on_staged(rel, staged)
            try:
                placed += _place_one(index, rel, staged, info, folder, config.remote_name,
                                     hashed=expected is not None)  # fmt: skip
            finally:
                shared_tree.close_folder(folder)
    finally:
        shared_tree.close_folder(root_fd)
    if expected is None and any(p.refused is None for p in placed):
        places.write_private(_index_path(config), json.dumps(index))
    return placed


def _open_folder(root_fd: Any, rel: str) -> Any:
    """The folder that will hold `rel` (a descriptor, or a checked path where the platform has
    none), made where missing; a component that is a link, or not a folder, refuses (it is
    never followed). The helper's walk, run here."""
    try:
        return shared_tree.open_folder(root_fd, rel, make=True)
    except HelperError as failed:
        raise Refused(failed.message) from None


_lstat_at = shared_tree.lstat_at


def _place_one(
    index: dict[str, Any],
    rel: str,
    staged: Path,
    info: os.stat_result,
    folder: Any,
    remote_name: str | None,
    hashed: bool = False,
) -> list[Pulled]:
    """Move one staged file into `folder` (see _open_folder): in place, or beside a local
    edit. `hashed`: say what was placed, hash included (two-way pulls)."""
    name = rel.rsplit("/", 1)[-1]
    remote_stamp = _stamp(info)
    last = index.get(rel, {})  # what the last pull of it placed
    local = _lstat_at(folder, name)
    if local is not None and stat.S_ISDIR(local.st_mode):
        try:
            shared_tree.rmdir_at(folder, name)  # an empty folder gives way (it became a file)
        except OSError:
            return [Pulled(rel, info.st_size, refused="a folder of that name is here")]
        local = None
    edited = local is not None and _stamp(local) != last.get("local")
    if edited:
        if last.get("remote") == remote_stamp:
            return []  # this remote version is already kept beside the local edit
        keep = _conflict_name(folder, name, remote_name or "remote")
        shared_tree.move_in(staged, folder, keep)
        index[rel] = {**last, "remote": remote_stamp}
        copy = "/".join([*rel.split("/")[:-1], keep])
        return [Pulled(rel, info.st_size, copy)]
    content = None
    if hashed and stat.S_ISREG(info.st_mode):
        # Of the staged file, which rename() moves in as it is (its inode, size and time).
        content = (info.st_size, info.st_mtime_ns, shared_tree.file_hash(str(staged)))
    # rename() replaces a link itself, never what it points at.
    shared_tree.move_in(staged, folder, name)
    placed = _lstat_at(folder, name)
    index[rel] = {"local": _stamp(placed) if placed else None, "remote": remote_stamp}
    return [Pulled(rel, info.st_size, placed=content)]


def replace_unchanged(
    config: Config, staging: Path, rel: str, expected: tuple[int, int]
) -> tuple[int, int] | None:
    """Move the staged `rel` over the project's `rel` only if that is still the version
    `expected` ((mtime_ns, size), what a merge was made from): the (size, mtime_ns) placed, or
    None where the user saved it again meanwhile (then nothing here changes)."""
    root_fd = shared_tree.open_root(str(config.root))
    try:
        folder = _open_folder(root_fd, rel)
        try:
            name = rel.rsplit("/", 1)[-1]
            local = _lstat_at(folder, name)
            if local is None or tuple(_stamp(local)) != expected:
                return None
            staged = (staging / rel).lstat()
            shared_tree.move_in(staging / rel, folder, name)
            return staged.st_size, staged.st_mtime_ns
        finally:
            shared_tree.close_folder(folder)
    finally:
        shared_tree.close_folder(root_fd)


# The longest file name most filesystems take, in bytes (ext4, APFS, NTFS: 255).
NAME_MAX = 255


def _conflict_name(folder: Any, name: str, label: str) -> str:
    """`fig.png` -> `fig.remote-20261123-101500.png` (`fig.cluster-...` from the remote named
    cluster, so that two remotes' versions are told apart): never an existing file's name,
    and never longer than a file name may be (a long stem is shortened to fit)."""
    when = time.strftime("%Y%m%d-%H%M%S")
    stem, dot, suffix = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
    if len(suffix.encode()) > 32:  # not an extension: part of the name
        stem, dot, suffix = name, "", ""
    for n in range(1000):
        tail = f".{label[:40]}-{when}{f'-{n}' if n else ''}{dot}{suffix}"
        room = NAME_MAX - len(tail.encode())
        candidate = stem.encode()[:room].decode(errors="ignore") + tail
        if _lstat_at(folder, candidate) is None:
            return candidate
    raise RemoteError(f"cannot find a free name beside {name}")


