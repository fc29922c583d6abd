"""Moving files: the project to the remote (rsync over the master), results back home."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rjn import proc, state
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
        # Times compare to the nanosecond: an edit of the same size within a second still goes.
        "--modify-window=-1",
        "--protect-args", "--info=progress2", "--stats", "--no-inc-recursive",
        "-e", remote.rsync_shell(),
        *push_filters(config),
        f"{config.root}/", remote.rsync_target(f"{remote_dir}/"),
    ]  # fmt: skip
    return _rsync(remote, argv, progress)


def _rsync(
    remote: Remote,
    argv: list[str],
    progress: Progress | None,
    input: str | None = None,
    ok_codes: Sequence[int] = (0,),
) -> Transfer:
    def on_line(line: str) -> None:
        match = _PERCENT.search(f" {line} ")
        if match and progress:
            progress(int(match.group(1)))

    result = proc.run(argv, on_out=on_line if progress else None, input=input)
    if result.code not in ok_codes:
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


# -- pulling results home ----------------------------------------------------------------


@dataclass(frozen=True)
class Pulled:
    """One file that came home: where it went, and whether it was kept beside a local edit."""

    path: str
    size: int
    conflict_copy: str | None = None


def _index_path(config: Config) -> Path:
    # Beside the project's state file (whose helper makes the folder on first use).
    return state.state_path(config.root).with_suffix(".pulled.json")


def _load_index(config: Config) -> dict[str, dict[str, list[int]]]:
    try:
        data = json.loads(_index_path(config).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _stamp(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_mtime_ns, info.st_size]


def pull(
    remote: Remote,
    config: Config,
    remote_dir: str,
    files: list[str] | None = None,
    progress: Progress | None = None,
) -> list[Pulled]:
    """Bring results home: the given files, or everything in the results folders.

    Files land in a staging folder first and are moved into place one by one, so a
    local file is never half-written and never replaced if it was edited since the last
    pull: the remote version is then kept beside it, under a new name.
    """
    root = config.root
    with _staging(root) as staging:
        argv = [
            "rsync", "--recursive", "--links", "--times", "--compress", "--protect-args",
            "--info=progress2", "--stats", "--no-inc-recursive",
            # Unchanged files (same size and time as the local copy) are not fetched at all;
            # times compare to the nanosecond, so a same-size rewrite within a second counts.
            f"--compare-dest={root}", "--modify-window=-1",
            "-e", remote.rsync_shell(),
        ]  # fmt: skip
        if files is None:
            argv += [f"--include=/{f.strip('/')}/***" for f in config.sync.results]
            argv += ["--exclude=*"]
        else:
            argv += ["--files-from=-"]
        argv += [remote.rsync_target(f"{remote_dir}/"), f"{staging}/"]
        listing = "".join(f"{f}\n" for f in files) if files is not None else None
        # 23/24: a file vanished or changed while listed; the watcher reports it again.
        _rsync(remote, argv, progress, input=listing, ok_codes=(0, 23, 24) if files else (0, 24))
        return _place(config, staging)


def receive(config: Config, files: dict[str, tuple[bytes, int]]) -> list[Pulled]:
    """Place files that arrived inline ({relpath: (content, mtime_ns)}) as a pull would."""
    root = config.root
    with _staging(root) as staging:
        for rel, (content, mtime_ns) in files.items():
            staged = (staging / rel).resolve()
            if not staged.is_relative_to(staging):
                raise RemoteError(f"the remote sent a path outside the project: {rel!r}")
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.write_bytes(content)
            os.utime(staged, ns=(mtime_ns, mtime_ns))
        return _place(config, staging)


@contextlib.contextmanager
def _staging(root: Path) -> Iterator[Path]:
    """A scratch folder in the project (same filesystem: moving out of it is atomic)."""
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".rjn-incoming-"))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _place(config: Config, staging: Path) -> list[Pulled]:
    index = _load_index(config)
    placed = []
    for staged in sorted(p for p in staging.rglob("*") if p.is_file() or p.is_symlink()):
        rel = staged.relative_to(staging).as_posix()
        target = config.root / rel
        remote_stamp = _stamp(staged)
        record = index.get(rel, {})
        edited = target.exists() and _stamp(target) != record.get("local")
        if edited:
            if record.get("remote") == remote_stamp:
                continue  # this remote version is already kept beside the local edit
            keep = _conflict_name(target)
            os.replace(staged, keep)
            record["remote"] = remote_stamp
            placed.append(Pulled(rel, remote_stamp[1], keep.relative_to(config.root).as_posix()))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
            record = {"local": _stamp(target), "remote": remote_stamp}
            placed.append(Pulled(rel, remote_stamp[1]))
        index[rel] = record
    if placed:
        state.write_private(_index_path(config), json.dumps(index))
    return placed


def _conflict_name(target: Path) -> Path:
    """`fig.png` -> `fig.remote-20261123-101500.png`: a new name, never an existing file."""
    when = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        suffix = f".remote-{when}" + (f"-{n}" if n else "")
        candidate = target.with_name(f"{target.stem}{suffix}{target.suffix}")
        if not candidate.exists():
            return candidate
    raise RemoteError(f"cannot find a free name beside {target}")
