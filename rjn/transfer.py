"""The transport: files over the connection with rsync, and what comes home placed inside the
project (never through a link or outside it)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rjn import places, proc, state
from rjn.config import Config, guarded
from rjn.connection import Connection
from rjn.errors import ConnectionFailed, RemoteError, RjnError
from rjn.helper import tree as helper_tree
from rjn.helper.common import HelperError
from rjn.model import Pulled

_PERCENT = re.compile(r"\s(\d{1,3})%\s")
_FILES = re.compile(r"Number of regular files transferred:\s*([\d,]+)")
_BYTES = re.compile(r"Total transferred file size:\s*([\d,]+)")
_MOVED = re.compile(r"^\s*([\d,]+)\s+\d{1,3}%")
_OVER_MAX = re.compile(r"^(.*) is over max-size$", re.MULTILINE)

Progress = Callable[[int], Any]


@dataclass(frozen=True)
class Transfer:
    """What one rsync moved."""

    files: int
    bytes: int
    over_max_size: tuple[str, ...] = ()


def _rsync(
    remote: Connection,
    argv: list[str],
    progress: Progress | None,
    input: str | None = None,
    ok_codes: Sequence[int] = (0,),
    writes_here: bool = False,
    max_bytes: int | None = None,
    missing_ok: bool = False,
) -> Transfer:
    moved = [0]

    def on_line(line: str) -> None:
        match = _PERCENT.search(f" {line} ")
        if match and progress:
            progress(int(match.group(1)))
        count = _MOVED.match(line)
        if count:
            moved[0] = int(count.group(1).replace(",", ""))

    watched = progress is not None or max_bytes is not None
    too_much = (lambda: moved[0] > max_bytes) if max_bytes is not None else None
    result = proc.run(argv, on_out=on_line if watched else None, input=input, abort_when=too_much)
    if too_much and too_much():
        raise RemoteError(
            f"{remote.host}: the pull was stopped at {moved[0]:,} bytes, over [sync] "
            f"max_pull_size ({max_bytes:,}); nothing was placed",
            hint="raise [sync] max_pull_size in remote.toml if that much is expected, or "
            "remove what should not come home from the results folders",
        )
    tolerated = missing_ok and result.code == 23 and _only_missing(result.err)
    if result.code not in ok_codes and not tolerated:
        raise _rsync_error(remote, result, writes_here)
    files = _FILES.search(result.out)
    size = _BYTES.search(result.out)
    return Transfer(
        files=int(files.group(1).replace(",", "")) if files else 0,
        bytes=int(size.group(1).replace(",", "")) if size else 0,
        over_max_size=tuple(_OVER_MAX.findall(result.out)),
    )


def _only_missing(err: str) -> bool:
    """Whether every file rsync could not read was missing (a vanished file, or a results
    folder not made yet), and nothing else went wrong."""
    lines = err.splitlines()
    # What follows rsync's summary line is the connection's teardown (a receiver's "broken
    # pipe" once the sender has exited), not a file it could not read.
    ends = next((i for i, ln in enumerate(lines) if ln.startswith("rsync error:")), len(lines))
    problems = [ln for ln in lines[:ends] if ln.startswith("rsync:")]
    return bool(problems) and all("No such file or directory" in ln for ln in problems)


def _rsync_error(remote: Connection, result: proc.Completed, writes_here: bool) -> RjnError:
    err = result.err
    if result.code in (12, 255) and not remote.master_alive():
        return ConnectionFailed(
            f"the connection to {remote.host} was lost during the transfer; every file is "
            "old or new, none half-written",
            hint="run the command again once the network is back",
        )
    if "No space left on device" in err and writes_here:
        return RemoteError(
            "the local disk is full; nothing was placed (every file is old or new, none half)",
            hint="free space on this machine, then run `rjn sync` again",
        )
    if "No space left on device" in err:
        return RemoteError(
            f"{remote.host}: the disk is full; rsync could not write",
            hint="free space on the remote, or set [remote] dir to another disk",
        )
    if "command not found" in err or result.code == 127:
        return RemoteError(
            f"{remote.host}: rsync is not installed on the remote",
            hint="install rsync there (Debian/Ubuntu: apt install rsync)",
        )
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    detail = next(
        (ln for ln in lines if not ln.startswith("rsync error")), lines[-1] if lines else ""
    )
    return RemoteError(f"{remote.host}: rsync failed (exit {result.code}): {detail}")


# -- pulling results home ----------------------------------------------------------------
#
# The remote is not fully trusted (a shared cluster, a folder others can write to): every name
# and link it sends is checked, and every local write lands inside the project. Files arrive
# in a private staging folder first; placing them walks the destination one folder at a time
# through directory descriptors, never following a link, so a local symlink (made by the user
# or by anyone) cannot carry a write elsewhere.


class Refused(RemoteError):
    """A name or link from the remote that rjn will not write."""


def checked_name(name: object, folders: Sequence[str] | None) -> str:
    """A relative path from the remote, accepted only as a plain path inside one of `folders`
    (None: anywhere in the project): no '..' or '.', not absolute, no NUL or control
    characters."""
    if not isinstance(name, str) or not 0 < len(name) <= 4096:
        raise Refused(f"the remote sent a file name that is not one: {name!r:.80}")
    if name.startswith("/") or helper_tree.CONTROL.search(name):
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


def pull(
    remote: Connection,
    config: Config,
    remote_dir: str,
    files: list[str] | None = None,
    progress: Progress | None = None,
    max_bytes: int | None = None,
) -> list[Pulled]:
    """Bring results home: the given files, or everything in the results folders; more than
    `max_bytes` (default: [sync] max_pull_size) stops it with nothing placed.

    Files land in a staging folder first and are moved into place one by one, so a
    local file is never half-written and never replaced if it was edited since the last
    pull: the remote version is then kept beside it, under a new name.
    """
    root = config.root
    results = config.sync.results
    listing = None
    if files is not None:
        listing = _files_from(checked_name(f, results) for f in files)
    with _staging(root) as staging:
        argv = [
            "rsync", "--recursive", "--links", "--times", "--compress", "--protect-args",
            "--info=progress2,skip1", "--stats", "--no-inc-recursive",
            # Unchanged files (same size and time as the local copy) are not fetched at all;
            # times compare to the nanosecond, so a same-size rewrite within a second counts.
            f"--compare-dest={root}", "--modify-window=-1",
            f"--max-size={config.sync.max_file_size}",
            # Links land in staging as links (inert there) and placing judges each one; a link
            # that leaves the tree comes as its target's content only if the user asked.
            *(["--copy-unsafe-links"] if config.sync.follow_symlinks else []),
            "-e", remote.rsync_shell(),
        ]  # fmt: skip
        if files is None:
            # Each results folder by its own path, slash-ended: one that is a link on the
            # remote (to scratch space, as is common on clusters) is followed into.
            sources = [f"{remote_dir}/./{folder.strip('/')}/" for folder in results]
            argv += ["--relative", *remote.rsync_sources(sources)]
        else:
            argv += ["--from0", "--files-from=-", remote.rsync_target(f"{remote_dir}/")]
        argv += [f"{staging}/"]
        # 23/24: a file vanished or changed while listed (the watcher reports it again), or a
        # results folder does not exist there yet.
        moved = _rsync(remote, argv, progress, input=listing,
                       ok_codes=(0, 23, 24) if files else (0, 24),
                       missing_ok=files is None, writes_here=True,
                       max_bytes=config.sync.max_pull_size if max_bytes is None else max_bytes,
                       )  # fmt: skip
        too_big = [
            Pulled(name, 0, refused="larger than [sync] max_file_size")
            for name in moved.over_max_size
        ]
        return too_big + _place(config, staging)


def pull_changed(
    remote: Connection,
    config: Config,
    remote_dir: str,
    listing: object,
    progress: Progress | None = None,
) -> list[Pulled]:
    """pull(), unless the remote's listing of its results (untrusted: checked here) shows that
    it would bring nothing: every file there is here with its size and time, or is a version
    already kept beside a local edit. Then rsync's round trips are saved."""
    if listing is None or _would_bring(config, listing):
        return pull(remote, config, remote_dir, progress=progress)
    return []


def _would_bring(config: Config, listing: object) -> bool:
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
        here, record = _stamp(local), index.get(rel)
        record = record if isinstance(record, dict) else {}
        if stat.S_ISREG(local.st_mode) and here == stamp:
            continue  # rsync's --compare-dest skips it
        if record.get("remote") == stamp and here != record.get("local"):
            continue  # this remote version is already kept beside the local edit
        return True
    return False


def pull_decided(
    remote: Connection,
    config: Config,
    remote_dir: str,
    expected: dict[str, tuple[int, int] | None],
    progress: Progress | None = None,
) -> list[Pulled]:
    """Bring project files home that two-way sync decided to pull. `expected` is each file's
    local (mtime_ns, size) when the decision was made (None: absent); a file changed since is
    kept, and the remote version lands beside it."""
    listing = _files_from(checked_name(name, None) for name in sorted(expected))
    with _staging(config.root) as staging:
        argv = [
            "rsync", "--from0", "--files-from=-", "--links", "--times", "--compress",
            "--protect-args",
            "--info=progress2,skip1", "--stats", "--no-inc-recursive",
            # Decided by content: sent even when size and time match to the second.
            "--ignore-times",
            f"--max-size={config.sync.max_file_size}", "-e", remote.rsync_shell(),
            remote.rsync_target(f"{remote_dir}/"), f"{staging}/",
        ]  # fmt: skip
        moved = _rsync(remote, argv, progress, input=listing, ok_codes=(0, 23, 24),
                       writes_here=True, max_bytes=config.sync.max_pull_size)  # fmt: skip
        too_big = [
            Pulled(name, 0, refused="larger than [sync] max_file_size")
            for name in moved.over_max_size
        ]
        return too_big + _place(config, staging, expected)


def stage(
    remote: Connection,
    config: Config,
    remote_dir: str,
    names: Iterable[str],
    progress: Progress | None = None,
) -> str:
    """Send project files (names from our own scan) into a new staging folder in the remote's
    .rjn/, whose name is returned: the helper's `place` then moves each in only where the
    remote still holds what the plan saw. rsync never writes in the project itself; its delta
    transfer still works from the remote's current version (--copy-dest)."""
    staging = f"{staging_prefix()}{secrets.token_hex(6)}"
    argv = [
        "rsync", "--from0", "--files-from=-", "--perms", "--times", "--compress",
        "--protect-args", "--info=progress2", "--stats", "--no-inc-recursive",
        # Decided by content: sent even when size and time match to the second.
        "--ignore-times", f"--copy-dest={remote_dir}",
        "-e", remote.rsync_shell(), f"{config.root}/",
        remote.rsync_target(f"{remote_dir}/.rjn/{staging}/"),
    ]  # fmt: skip
    # 23/24: a file vanished or changed as we sent it; placing says it did not arrive.
    _rsync(remote, argv, progress, input=_files_from(sorted(names)), ok_codes=(0, 23, 24))
    return staging


# The staging folders a push leaves in the remote's .rjn/ are named by this prefix, then this
# machine's id: the next pass of this machine cleans up after one cut short.
STAGING = "incoming-"


def staging_prefix() -> str:
    """This machine's part of a staging folder's name (see helper/tree.clean_staging)."""
    return f"{STAGING}{places.machine_id()}-"


def _files_from(names: Iterable[str]) -> str:
    """A --files-from list for --from0: NUL-separated, so any name travels (a line break in
    one included), each behind ./, since rsync drops names that start with # or ; as
    comments."""
    return "".join(f"./{name}\0" for name in names)


def receive(config: Config, files: dict[str, tuple[bytes, int]]) -> list[Pulled]:
    """Place files that arrived inline ({relpath: (content, mtime_ns)}) as a pull would."""
    root = config.root
    with _staging(root) as staging:
        for name, (content, mtime_ns) in files.items():
            rel = checked_name(name, config.sync.results)
            if len(content) > config.sync.max_file_size:
                raise Refused(f"{rel}: the remote sent more than [sync] max_file_size")
            staged = staging / rel
            staged.parent.mkdir(parents=True, exist_ok=True)  # inside our own fresh folder
            staged.write_bytes(content)
            os.utime(staged, ns=(mtime_ns, mtime_ns))
        return _place(config, staging)


@contextlib.contextmanager
def _staging(root: Path) -> Iterator[Path]:
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


def _place(
    config: Config, staging: Path, expected: dict[str, tuple[int, int] | None] | None = None
) -> list[Pulled]:
    """Move staged files into the project. A local file edited since the last pull (results:
    the pulled index tells) or since the decision (two-way: `expected`) is kept, and the remote
    version lands beside it."""
    index: dict[str, Any] = _load_index(config) if expected is None else {}
    placed: list[Pulled] = []
    root_fd = os.open(config.root, os.O_RDONLY | os.O_DIRECTORY)
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
            try:
                placed += _place_one(index, rel, staged, info, folder, config.remote_name)
            finally:
                os.close(folder)
    finally:
        os.close(root_fd)
    if expected is None and any(p.refused is None for p in placed):
        places.write_private(_index_path(config), json.dumps(index))
    return placed


def _open_folder(root_fd: int, rel: str) -> int:
    """A descriptor of the folder that will hold `rel`, made where missing; a component that is
    a link, or not a folder, refuses (it is never followed). The helper's walk, run here."""
    try:
        return helper_tree.open_folder(root_fd, rel, make=True)
    except HelperError as failed:
        raise Refused(failed.message) from None


_lstat_at = helper_tree.lstat_at


def _place_one(
    index: dict[str, Any],
    rel: str,
    staged: Path,
    info: os.stat_result,
    folder: int,
    remote_name: str | None,
) -> list[Pulled]:
    """Move one staged file into `folder` (a descriptor): in place, or beside a local edit."""
    name = rel.rsplit("/", 1)[-1]
    remote_stamp = _stamp(info)
    record = index.get(rel, {})
    local = _lstat_at(folder, name)
    if local is not None and stat.S_ISDIR(local.st_mode):
        try:
            os.rmdir(name, dir_fd=folder)  # an empty folder gives way (a folder became a file)
        except OSError:
            return [Pulled(rel, info.st_size, refused="a folder of that name is here")]
        local = None
    edited = local is not None and _stamp(local) != record.get("local")
    if edited:
        if record.get("remote") == remote_stamp:
            return []  # this remote version is already kept beside the local edit
        keep = _conflict_name(folder, name, remote_name or "remote")
        os.replace(staged, keep, dst_dir_fd=folder)
        index[rel] = {**record, "remote": remote_stamp}
        copy = "/".join([*rel.split("/")[:-1], keep])
        return [Pulled(rel, info.st_size, copy)]
    # rename() replaces a link itself, never what it points at.
    os.replace(staged, name, dst_dir_fd=folder)
    placed = _lstat_at(folder, name)
    index[rel] = {"local": _stamp(placed) if placed else None, "remote": remote_stamp}
    return [Pulled(rel, info.st_size)]


def _conflict_name(folder: int, name: str, label: str) -> str:
    """`fig.png` -> `fig.remote-20261123-101500.png` (`fig.cluster-...` from the remote named
    cluster, so that two remotes' versions are told apart): never an existing file's name."""
    when = time.strftime("%Y%m%d-%H%M%S")
    stem, dot, suffix = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
    for n in range(1000):
        candidate = f"{stem}.{label}-{when}{f'-{n}' if n else ''}{dot}{suffix}"
        if _lstat_at(folder, candidate) is None:
            return candidate
    raise RemoteError(f"cannot find a free name beside {name}")
