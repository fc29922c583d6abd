"""Where rjn keeps its files on this machine: private folders, atomic writes, locks."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rjn.errors import RjnError
from rjn.waits import wait_until


def state_dir() -> Path:
    """The user's state dir for rjn (XDG_STATE_HOME), created private."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return private_dir(Path(base) / "rjn")


def runtime_dir() -> Path:
    """A short private dir for sockets: unix socket paths are limited to ~100 bytes."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "rjn" if base else Path(tempfile.gettempdir()) / f"rjn-{os.getuid()}"
    return private_dir(path)


def private_dir(path: Path) -> Path:
    """`path` as a folder of the user's alone (made if missing; refused if another's)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise RjnError(
            f"{path} belongs to another user",
            hint="remove it, or set XDG_RUNTIME_DIR / XDG_STATE_HOME to a folder of your own",
        )
    if info.st_mode & 0o077:
        path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Atomically replace `path` with `text`, mode 0600 (its folder made private if missing)."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: Path, timeout: float, busy: str) -> Iterator[None]:
    """An exclusive lock on `path`, waited for with a deadline (its folder made if missing)."""
    private_dir(path.parent)
    with open(path, "a") as handle:

        def take() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        wait_until(
            take,
            timeout=timeout,
            interval=0.2,
            what=f"another rjn command kept {busy}",
            hint="wait for it to finish, or stop it",
        )
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
