"""The transport: files over the connection, with rsync where this machine's can serve (3.1 or
newer), else with rjn's own transfer (helper/files.py: the helper reads and writes, the bytes
stream over the same connection, compressed, checked by hash); either way into staging, and
what comes home placed inside the project (never through a link or outside it)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rjn import places, portable, proc, state
from rjn.config import Config, guarded
from rjn.connection import Connection
from rjn.errors import ConfigError, ConnectionFailed, RemoteError, RjnError
from rjn.helper import tree as helper_tree
from rjn.helper.common import HelperError
from rjn.helper.record import record
from rjn.helper_client import HelperClient
from rjn.records import Pulled

# rsync's output, read by patterns compiled (and cached by `re`) when first used: a command
# that runs no rsync does not pay for them as it starts.
_PERCENT = r"\s(\d{1,3})%\s"
_FILES = r"Number of regular files transferred:\s*([\d,]+)"
_BYTES = r"Total transferred file size:\s*([\d,]+)"
_MOVED = r"^\s*([\d,]+)\s+\d{1,3}%"
_OVER_MAX = r"(?m)^(.*) is over max-size$"

Progress = Callable[[int], Any]


@record
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
        match = re.search(_PERCENT, f" {line} ")
        if match and progress:
            progress(int(match.group(1)))
        count = re.match(_MOVED, line)
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
    files = re.search(_FILES, result.out)
    size = re.search(_BYTES, result.out)
    return Transfer(
        files=int(files.group(1).replace(",", "")) if files else 0,
        bytes=int(size.group(1).replace(",", "")) if size else 0,
        over_max_size=tuple(re.findall(_OVER_MAX, result.out)),
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
        if remote.closed_meanwhile():
            return remote.lost("")
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
    helper: HelperClient,
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
    budget = config.sync.max_pull_size if max_bytes is None else max_bytes
    if uses_own(helper, config):
        names = None if files is None else [checked_name(f, results) for f in files]
        with staging_here(root) as staging:
            here = _results_here(config) if names is None else {}
            over = _fetch(helper, config, remote_dir, staging, names=names, skip=here,
                          within=results, max_bytes=budget)  # fmt: skip
            too_big = [Pulled(n, 0, refused="larger than [sync] max_file_size") for n in over]
            return too_big + _place(config, staging)
    remote = helper.connection
    listing = None
    if files is not None:
        listing = _files_from(checked_name(f, results) for f in files)
    with staging_here(root) as staging:
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
                       missing_ok=files is None, writes_here=True, max_bytes=budget,
                       )  # fmt: skip
        too_big = [
            Pulled(name, 0, refused="larger than [sync] max_file_size")
            for name in moved.over_max_size
        ]
        return too_big + _place(config, staging)


def pull_changed(
    helper: HelperClient,
    config: Config,
    remote_dir: str,
    listing: object,
    progress: Progress | None = None,
) -> list[Pulled]:
    """pull(), unless the remote's listing of its results (untrusted: checked here) shows that
    it would bring nothing: every file there is here with its size and time, or is a version
    already kept beside a local edit. Then rsync's round trips are saved."""
    if listing is None or _would_bring(config, listing):
        return pull(helper, config, remote_dir, progress=progress)
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
    helper: HelperClient,
    config: Config,
    remote_dir: str,
    expected: dict[str, tuple[int, int] | None],
    progress: Progress | None = None,
) -> list[Pulled]:
    """Bring project files home that two-way sync decided to pull. `expected` is each file's
    local (mtime_ns, size) when the decision was made (None: absent); a file changed since is
    kept, and the remote version lands beside it."""
    names = [checked_name(name, None) for name in sorted(expected)]
    if uses_own(helper, config):
        with staging_here(config.root) as staging:
            over = _fetch(helper, config, remote_dir, staging, names=names, skip={},
                          within=None, max_bytes=config.sync.max_pull_size)  # fmt: skip
            too_big = [Pulled(n, 0, refused="larger than [sync] max_file_size") for n in over]
            return too_big + _place(config, staging, expected)
    remote = helper.connection
    listing = _files_from(names)
    with staging_here(config.root) as staging:
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
    helper: HelperClient,
    config: Config,
    remote_dir: str,
    names: Iterable[str],
    progress: Progress | None = None,
    source: Path | None = None,
) -> str:
    """Send project files (names from our own scan) into a new staging folder in the remote's
    .rjn/, whose name is returned: the helper's `place` then moves each in only where the
    remote still holds what the plan saw. rsync never writes in the project itself; its delta
    transfer still works from the remote's current version (--copy-dest). `source` is a
    folder to send the named files from instead of the project (a merge's result)."""
    staging = f"{staging_prefix(config.root)}{secrets.token_hex(6)}"
    source = source or config.root
    if uses_own(helper, config):
        _send(helper, source, remote_dir, staging, sorted(names), progress)
        return staging
    remote = helper.connection

    def send(staging: str, basis: bool) -> None:
        argv = [
            "rsync", "--from0", "--files-from=-", "--perms", "--times", "--compress",
            "--protect-args", "--info=progress2", "--stats", "--no-inc-recursive",
            # Decided by content: sent even when size and time match to the second.
            "--ignore-times", *([f"--copy-dest={remote_dir}"] if basis else []),
            "-e", remote.rsync_shell(), f"{source}/",
            remote.rsync_target(f"{remote_dir}/.rjn/{staging}/"),
        ]  # fmt: skip
        # 23/24: a file vanished or changed as we sent it; placing says it did not arrive.
        _rsync(remote, argv, progress, input=_files_from(sorted(names)), ok_codes=(0, 23, 24))

    try:
        send(staging, basis=True)
    except RemoteError as failed:
        if "no basis file" not in failed.message:
            raise
        # The remote rewrote a file while rsync used it as the basis of its delta (Jupyter
        # saving the notebook we push): sent again whole, into a fresh staging folder;
        # placing still compares and swaps, so that save is kept.
        staging = f"{staging_prefix(config.root)}{secrets.token_hex(6)}"
        send(staging, basis=False)
    return staging


# The staging folders a push leaves in the remote's .rjn/ are named by this prefix, then this
# machine's and project folder's id: the next pass of this clone cleans up after one cut short
# (passes of one clone take turns; another clone's staging is never its to clean).
STAGING = "incoming-"


def staging_prefix(root: Path) -> str:
    """This machine's and project folder's part of a staging folder's name (see
    helper/tree.clean_staging)."""
    return f"{STAGING}{places.copy_id(root)}-"


def _files_from(names: Iterable[str]) -> str:
    """A --files-from list for --from0: NUL-separated, so any name travels (a line break in
    one included), each behind ./, since rsync drops names that start with # or ; as
    comments."""
    return "".join(f"./{name}\0" for name in names)


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
        return _place(config, staging)


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


def _place(
    config: Config, staging: Path, expected: dict[str, tuple[int, int] | None] | None = None
) -> list[Pulled]:
    """Move staged files into the project. A local file edited since the last pull (results:
    the pulled index tells) or since the decision (two-way: `expected`) is kept, and the remote
    version lands beside it."""
    index: dict[str, Any] = _load_index(config) if expected is None else {}
    placed: list[Pulled] = []
    root_fd = helper_tree.open_root(str(config.root))
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
                placed += _place_one(index, rel, staged, info, folder, config.remote_name,
                                     hashed=expected is not None)  # fmt: skip
            finally:
                helper_tree.close_folder(folder)
    finally:
        helper_tree.close_folder(root_fd)
    if expected is None and any(p.refused is None for p in placed):
        places.write_private(_index_path(config), json.dumps(index))
    return placed


def _open_folder(root_fd: Any, rel: str) -> Any:
    """The folder that will hold `rel` (a descriptor, or a checked path where the platform has
    none), made where missing; a component that is a link, or not a folder, refuses (it is
    never followed). The helper's walk, run here."""
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
    folder: Any,
    remote_name: str | None,
    hashed: bool = False,
) -> list[Pulled]:
    """Move one staged file into `folder` (see _open_folder): in place, or beside a local
    edit. `hashed`: say what was placed, hash included (two-way pulls)."""
    name = rel.rsplit("/", 1)[-1]
    remote_stamp = _stamp(info)
    record = index.get(rel, {})
    local = _lstat_at(folder, name)
    if local is not None and stat.S_ISDIR(local.st_mode):
        try:
            helper_tree.rmdir_at(folder, name)  # an empty folder gives way (it became a file)
        except OSError:
            return [Pulled(rel, info.st_size, refused="a folder of that name is here")]
        local = None
    edited = local is not None and _stamp(local) != record.get("local")
    if edited:
        if record.get("remote") == remote_stamp:
            return []  # this remote version is already kept beside the local edit
        keep = _conflict_name(folder, name, remote_name or "remote")
        helper_tree.move_in(staged, folder, keep)
        index[rel] = {**record, "remote": remote_stamp}
        copy = "/".join([*rel.split("/")[:-1], keep])
        return [Pulled(rel, info.st_size, copy)]
    content = None
    if hashed and stat.S_ISREG(info.st_mode):
        # Of the staged file, which rename() moves in as it is (its inode, size and time).
        content = (info.st_size, info.st_mtime_ns, helper_tree.file_hash(str(staged)))
    # rename() replaces a link itself, never what it points at.
    helper_tree.move_in(staged, folder, name)
    placed = _lstat_at(folder, name)
    index[rel] = {"local": _stamp(placed) if placed else None, "remote": remote_stamp}
    return [Pulled(rel, info.st_size, placed=content)]


def replace_unchanged(
    config: Config, staging: Path, rel: str, expected: tuple[int, int]
) -> tuple[int, int] | None:
    """Move the staged `rel` over the project's `rel` only if that is still the version
    `expected` ((mtime_ns, size), what a merge was made from): the (size, mtime_ns) placed, or
    None where the user saved it again meanwhile (then nothing here changes)."""
    root_fd = helper_tree.open_root(str(config.root))
    try:
        folder = _open_folder(root_fd, rel)
        try:
            name = rel.rsplit("/", 1)[-1]
            local = _lstat_at(folder, name)
            if local is None or tuple(_stamp(local)) != expected:
                return None
            staged = (staging / rel).lstat()
            helper_tree.move_in(staging / rel, folder, name)
            return staged.st_size, staged.st_mtime_ns
        finally:
            helper_tree.close_folder(folder)
    finally:
        helper_tree.close_folder(root_fd)


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


# -- which transfer: this machine's rsync where it can serve, else rjn's own ---------------------


@record
class LocalRsync:
    """This machine's rsync, as its version string says (checked once per binary)."""

    path: str | None
    version: str
    capable: bool  # 3.1 or newer: --info=progress2, --files-from with --from0, --protect-args


_VERSION = r"rsync\s+version\s+v?(\d+)\.(\d+)"


@functools.cache
def local_rsync() -> LocalRsync:
    """This machine's rsync: macOS ships 2.6.9 (to 15.3) or openrsync (15.4 on), Windows none;
    neither knows what rjn asks of rsync. Remembered per binary (path and time), and asked
    once per process (a watch asks at every batch it pulls)."""
    path = shutil.which("rsync")
    if path is None:
        return LocalRsync(None, "", False)
    memo = places.state_dir() / "rsync.json"
    stamp = os.stat(path).st_mtime_ns
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        seen = json.loads(memo.read_text())
        if (seen["path"], seen["stamp"]) == (path, stamp):
            return LocalRsync(path, str(seen["version"]), bool(seen["capable"]))
    said = proc.run([path, "--version"], timeout=10)
    first = (said.out.strip().splitlines() or [""])[0][:200]
    found = re.search(_VERSION, first)
    capable = (found is not None and (int(found[1]), int(found[2])) >= (3, 1)
               and "openrsync" not in said.out and "compatible" not in first)  # fmt: skip
    places.write_private(memo, json.dumps({"path": path, "stamp": stamp, "version": first,
                                           "capable": capable}))  # fmt: skip
    return LocalRsync(path, first, capable)


def uses_own(helper: HelperClient, config: Config) -> bool:
    """Whether files travel through rjn's own transfer: [remote] transfer says, or ("auto")
    this machine's rsync cannot serve; then the user hears it, once for that rsync."""
    if config.remote.transfer == "rjn" or not helper.connection.CARRIES_RSYNC:
        return True  # (single mode: rsync would log in again by itself)
    found = local_rsync()
    if config.remote.transfer == "rsync" and not found.capable:
        raise ConfigError(
            f'{config.path}: [remote] transfer = "rsync", but '
            + (f"this machine's rsync ({found.version}) lacks what rjn needs" if found.path
               else "this machine has no rsync"),
            hint='install rsync 3.1 or newer (macOS: brew install rsync), or set transfer = "auto"',
        )  # fmt: skip
    if config.remote.transfer == "rsync":
        return False
    if found.capable:
        return False
    said = (f"this machine's rsync ({found.version or found.path}) lacks what rjn needs"
            if found.path else "this machine has no rsync")  # fmt: skip
    note = (f"{said}: files travel through rjn's own transfer (rsync 3.1+ is faster for large "
            "edits: `brew install rsync` on a Mac)")  # fmt: skip
    told = places.state_dir() / "own-transfer-told"
    with contextlib.suppress(OSError):
        if told.read_text() == note:
            return True
    if note not in helper.notes:
        helper.notes.append(note)
        places.write_private(told, note)
    return True


# -- rjn's own transfer ----------------------------------------------------------------------------

CHUNK = 1 << 20


def _results_here(config: Config) -> dict[str, list[int]]:
    """The results' files here, [mtime_ns, size] each: the same there is not sent again."""
    found: dict[str, list[int]] = {}
    for folder in config.sync.results:
        base = config.root / folder.strip("/")
        for where, _, names in os.walk(base):
            for name in names:
                path = Path(where) / name
                with contextlib.suppress(OSError):
                    info = path.lstat()
                    if stat.S_ISREG(info.st_mode):
                        rel = path.relative_to(config.root).as_posix()
                        found[rel] = [info.st_mtime_ns, info.st_size]
    return found


def _fetch(
    helper: HelperClient,
    config: Config,
    remote_dir: str,
    staging: Path,
    *,
    names: list[str] | None,
    skip: dict[str, list[int]],
    within: Sequence[str] | None,
    max_bytes: int,
) -> list[str]:
    """Files from the remote into `staging` (named ones, or the results folders whole) by rjn's
    own transfer; the names of those over [sync] max_file_size."""
    args = {"dir": remote_dir, "names": names, "skip": skip, "max_bytes": max_bytes,
            "folders": None if names is not None else list(config.sync.results),
            "max_size": config.sync.max_file_size,
            "follow_links": config.sync.follow_symlinks}  # fmt: skip
    arrivals = _Arrivals(staging, within, config.sync.max_file_size, max_bytes)
    try:
        answer = helper.send_files(args, arrivals.take)
    finally:
        arrivals.close()
    if arrivals.failed:
        raise arrivals.failed
    # Said by the helper before it sends, or seen here (a remote that does not keep to it).
    over = arrivals.over_budget or answer.get("over_budget")
    if over:
        raise RemoteError(
            f"{helper.host}: the pull would bring {over:,} bytes, over [sync] "
            f"max_pull_size ({max_bytes:,}); nothing was placed",
            hint="raise [sync] max_pull_size in remote.toml if that much is expected, or "
            "remove what should not come home from the results folders",
        )
    return arrivals.over


class _Arrivals:
    """The files of rjn's own transfer, written into a staging folder as their messages come:
    every name and message checked as the untrusted input it is, nothing written through a
    link, each file checked against its hash (one that does not match is not kept). Called
    from the transfer's reader: it never raises there (`failed` says what went wrong)."""

    def __init__(
        self, staging: Path, within: Sequence[str] | None, max_size: int, max_total: int
    ) -> None:
        self.staging, self.within, self.max_size = staging, within, max_size
        self.max_total, self.total, self.over_budget = max_total, 0, 0
        self.over: list[str] = []
        self.failed: RjnError | None = None
        self._rel: str | None = None
        self._handle: Any = None
        self._digest: Any = None
        self._size = 0

    def take(self, message: dict[str, Any]) -> None:
        if self.failed or self.over_budget:
            return  # what still comes is read and dropped
        try:
            self._take(message)
        except RjnError as error:
            self.failed = error
        except (OSError, ValueError, TypeError, zlib.error) as error:
            self.failed = Refused(f"the remote sent a file rjn cannot write ({error})")

    def _take(self, message: dict[str, Any]) -> None:
        if "data" in message:
            rel = checked_name(message["data"], self.within)
            if rel != self._rel:
                self._open(rel)
            inflate = zlib.decompressobj()
            if not isinstance(message.get("blob"), bytes):
                raise Refused(f"{rel}: the remote sent a chunk without its bytes")
            block = inflate.decompress(message["blob"], CHUNK)
            if inflate.unconsumed_tail or not inflate.eof:
                raise Refused(f"{rel}: the remote sent a malformed chunk")
            self._size += len(block)
            self.total += len(block)
            if self._size > self.max_size:
                raise Refused(f"{rel}: the remote sent more than [sync] max_file_size")
            if self.total > self.max_total:
                self.over_budget = self.total
                return
            self._digest.update(block)
            self._handle.write(block)
        elif "file" in message:
            rel = checked_name(message["file"], self.within)
            if rel != self._rel:
                self._open(rel)  # an empty file: no data came
            mtime, digest = message.get("mtime_ns"), message.get("sha256")
            self._handle.close()
            path = self.staging / rel
            if type(mtime) is not int or digest != self._digest.hexdigest():
                path.unlink()  # damaged on the way: it does not arrive
            else:
                os.utime(path, ns=(mtime, mtime))
            self._rel = self._handle = None
        elif "link" in message:
            rel = checked_name(message["link"], self.within)
            target = message.get("target")
            if not isinstance(target, str) or "\0" in target:
                raise Refused(f"{rel}: the remote sent a malformed link")
            os.symlink(target, self._place_for(rel))  # placing judges where it points
        elif "over" in message:
            self.over.append(checked_name(message["over"], self.within))

    def _place_for(self, rel: str) -> Path:
        """Where `rel` goes in staging: its folders made there, none of them a link."""
        folder = self.staging
        for part in rel.split("/")[:-1]:
            folder = folder / part
            try:
                info = folder.lstat()
            except FileNotFoundError:
                folder.mkdir(mode=0o700)
                continue
            if not stat.S_ISDIR(info.st_mode):
                raise Refused(f"{rel}: the remote sent it beneath a link or a file")
        return folder / rel.rpartition("/")[2]

    def _open(self, rel: str) -> None:
        if self._handle is not None:
            raise Refused(f"{self._rel}: the remote did not finish it")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | portable.NOFOLLOW
        self._handle = os.fdopen(os.open(self._place_for(rel), flags, 0o600), "wb")
        self._rel, self._digest, self._size = rel, hashlib.sha256(), 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            (self.staging / (self._rel or "")).unlink(missing_ok=True)  # cut short: not kept
            self._handle = self._rel = None


def _send(
    helper: HelperClient,
    source: Path,
    remote_dir: str,
    staging: str,
    names: list[str],
    progress: Progress | None,
) -> None:
    """Project files into the remote's staging folder by rjn's own transfer: each as frames
    of compressed bytes, then its hash; one that vanished or could not be read gets a hash
    nothing matches, so it does not arrive (placing says so)."""
    entries = []
    for name in names:
        with contextlib.suppress(OSError):
            info = (source / name).lstat()
            if stat.S_ISREG(info.st_mode):
                entries.append((name, info))
    total = sum(info.st_size for _, info in entries) or 1

    def frames() -> Iterator[bytes]:
        done = 0
        for name, _ in entries:
            digest = hashlib.sha256()
            try:
                fd = os.open(source / name, os.O_RDONLY | portable.NOFOLLOW)
                with os.fdopen(fd, "rb") as handle:
                    while block := handle.read(CHUNK):
                        digest.update(block)
                        packed = zlib.compress(block, 1)
                        yield struct.pack(">I", len(packed)) + packed
                        done += len(block)
                        if progress:
                            progress(min(99, done * 100 // total))
                sealed = digest.digest()
            except OSError:
                sealed = bytes(32)
            yield struct.pack(">I", 0) + sealed

    files = [[name, info.st_mode, info.st_mtime_ns] for name, info in entries]
    helper.receive_files({"dir": remote_dir, "staging": staging, "files": files}, frames())
