"""The rsync route: this machine's rsync (3.1 or newer) over the connection's master, its
output read for progress, what it moved, and what its failures mean."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from rjn import places, proc
from rjn.config import Config
from rjn.connection import Connection
from rjn.errors import ConnectionFailed, RemoteError, RjnError
from rjn.shared.record import record
from rjn.transfer.route import Progress

# rsync's output, read by patterns compiled (and cached by `re`) when first used: a command
# that runs no rsync does not pay for them as it starts.
_PERCENT = r"\s(\d{1,3})%\s"
_FILES = r"Number of regular files transferred:\s*([\d,]+)"
_BYTES = r"Total transferred file size:\s*([\d,]+)"
_MOVED = r"^\s*([\d,]+)\s+\d{1,3}%"
_OVER_MAX = r"(?m)^(.*) is over max-size$"

@record
class Moved:
    """What one rsync moved."""

    files: int
    bytes: int
    over_max_size: tuple[str, ...] = ()


def _run(
    remote: Connection,
    argv: list[str],
    progress: Progress | None,
    input: str | None = None,
    ok_codes: Sequence[int] = (0,),
    writes_here: bool = False,
    max_bytes: int | None = None,
    missing_ok: bool = False,
) -> Moved:
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
    return Moved(
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


def _files_from(names: Iterable[str]) -> str:
    """A --files-from list for --from0: NUL-separated, so any name travels (a line break in
    one included), each behind ./, since rsync drops names that start with # or ; as
    comments."""
    return "".join(f"./{name}\0" for name in names)


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
    version = proc.run([path, "--version"], timeout=10)
    first = (version.out.strip().splitlines() or [""])[0][:200]
    found = re.search(_VERSION, first)
    capable = (found is not None and (int(found[1]), int(found[2])) >= (3, 1)
               and "openrsync" not in version.out and "compatible" not in first)  # fmt: skip
    places.write_private(memo, json.dumps({"path": path, "stamp": stamp, "version": first,
                                           "capable": capable}))  # fmt: skip
    return LocalRsync(path, first, capable)




class RsyncRoute:
    """Files over this machine's rsync, carried by the connection's master."""

    def __init__(self, remote: Connection, config: Config) -> None:
        self.remote, self.config = remote, config

    def fetch(
        self,
        remote_dir: str,
        staging: Path,
        names: list[str] | None,
        *,
        results: bool,
        max_bytes: int,
        progress: Progress | None,
    ) -> list[str]:
        """See route.Route.fetch."""
        remote, sync = self.remote, self.config.sync
        argv = ["rsync", "--links", "--times", "--compress", "--protect-args",
                "--info=progress2,skip1", "--stats", "--no-inc-recursive",
                f"--max-size={sync.max_file_size}", "-e", remote.rsync_shell()]  # fmt: skip
        if results:
            argv += [
                "--recursive",
                # Unchanged files (same size and time as the local copy) are not fetched at
                # all; times compare to the nanosecond: a same-size rewrite within a second
                # counts.
                f"--compare-dest={self.config.root}", "--modify-window=-1",
                # Links land in staging as links (inert there) and placing judges each one; a
                # link that leaves the tree comes as its target's content only if asked.
                *(["--copy-unsafe-links"] if sync.follow_symlinks else []),
            ]  # fmt: skip
        else:
            argv += ["--ignore-times"]  # decided by content: sent even when stamps match
        if names is None:
            # Each results folder by its own path, slash-ended: one that is a link on the
            # remote (to scratch space, as is common on clusters) is followed into.
            sources = [f"{remote_dir}/./{folder.strip('/')}/" for folder in sync.results]
            argv += ["--relative", *remote.rsync_sources(sources)]
        else:
            argv += ["--from0", "--files-from=-", remote.rsync_target(f"{remote_dir}/")]
        argv += [f"{staging}/"]
        # 23/24: a file vanished or changed while listed (the watcher reports it again), or a
        # results folder does not exist there yet.
        moved = _run(remote, argv, progress, input=None if names is None else _files_from(names),
                     ok_codes=(0, 24) if names is None else (0, 23, 24),
                     missing_ok=names is None, writes_here=True, max_bytes=max_bytes)  # fmt: skip
        return list(moved.over_max_size)

    def send(
        self,
        source: Path,
        remote_dir: str,
        names: list[str],
        progress: Progress | None,
        fresh: Callable[[], str],
    ) -> str:
        """See route.Route.send. rsync never writes in the project itself; its delta transfer
        still works from the remote's current version (--copy-dest)."""
        remote = self.remote

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
            _run(remote, argv, progress, input=_files_from(names), ok_codes=(0, 23, 24))

        staging = fresh()
        try:
            send(staging, basis=True)
        except RemoteError as failed:
            if "no basis file" not in failed.message:
                raise
            # The remote rewrote a file while rsync used it as the basis of its delta (Jupyter
            # saving the notebook we push): sent again whole, into a fresh staging folder;
            # placing still compares and swaps, so that save is kept.
            staging = fresh()
            send(staging, basis=False)
        return staging
