"""Moving files: the project to the remote (rsync over the master), results back home."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rjn import proc
from rjn.config import DEFAULT_EXCLUDES, Config
from rjn.errors import RemoteError
from rjn.remote import Remote

_PERCENT = re.compile(r"\s(\d{1,3})%\s")
_FILES = re.compile(r"Number of regular files transferred:\s*([\d,]+)")
_BYTES = re.compile(r"Total transferred file size:\s*([\d,]+)")

Progress = Callable[[int], Any]


@dataclass(frozen=True)
class Transfer:
    """What one rsync moved."""

    files: int
    bytes: int


def push_filters(config: Config) -> list[str]:
    """rsync filter arguments for a push: includes first (rsync takes the first match)."""
    args = [f"--include={pattern}" for pattern in config.sync.include]
    # Results travel the other way: a push must never clobber what the remote produced.
    args += [f"--exclude=/{folder.strip('/')}/" for folder in config.sync.results]
    args += [f"--exclude={pattern}" for pattern in (*DEFAULT_EXCLUDES, *config.sync.exclude)]
    return args


def push(
    remote: Remote, config: Config, remote_dir: str, progress: Progress | None = None
) -> Transfer:
    """Copy the project to the remote. Never deletes there, never replaces a newer remote file."""
    argv = [
        "rsync", "--recursive", "--links", "--perms", "--times", "--compress",
        # A notebook edited in the remote Jupyter is newer than the local copy: keep it.
        "--update",
        "--protect-args", "--info=progress2", "--stats", "--no-inc-recursive",
        "-e", remote.rsync_shell(),
        *push_filters(config),
        f"{config.root}/", remote.rsync_target(f"{remote_dir}/"),
    ]  # fmt: skip
    return _rsync(remote, argv, progress)


def _rsync(remote: Remote, argv: list[str], progress: Progress | None) -> Transfer:
    def on_line(line: str) -> None:
        match = _PERCENT.search(f" {line} ")
        if match and progress:
            progress(int(match.group(1)))

    result = proc.run(argv, on_out=on_line)
    if result.code != 0:
        raise _rsync_error(remote, result)
    files = _FILES.search(result.out)
    size = _BYTES.search(result.out)
    return Transfer(
        files=int(files.group(1).replace(",", "")) if files else 0,
        bytes=int(size.group(1).replace(",", "")) if size else 0,
    )


def _rsync_error(remote: Remote, result: proc.Completed) -> RemoteError:
    err = result.err
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
