"""Where rjn keeps its files on this machine: private folders, atomic writes, locks."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rjn import portable
from rjn.errors import RjnError
from rjn.waits import wait_until


def state_dir() -> Path:
    """The user's state dir for rjn (XDG_STATE_HOME), created private."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return private_dir(Path(base) / "rjn")


def machine_id() -> str:
    """A random id for this machine's rjn (in the state dir), made once: it names what this
    machine leaves on a remote, so that it alone cleans it up."""
    path = state_dir() / "machine-id"
    with contextlib.suppress(OSError):
        found = path.read_text().strip()
        if found.isalnum():
            return found
    made = secrets.token_hex(6)
    write_private(path, made)
    return made


def copy_id(root: Path) -> str:
    """This machine's id and this project folder's: what one clone of a project leaves on a
    remote (its staging, its listing cache), so that two clones syncing one remote folder
    (git worktrees) never clean up or reuse each other's."""
    folder = hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:8]
    return f"{machine_id()}{folder}"


def runtime_dir() -> Path:
    """A short private dir for sockets (unix socket paths are limited to ~100 bytes): in
    XDG_RUNTIME_DIR, the system's and the user's alone; else in rjn's cache folder at home;
    else in the temp dir. private_dir() refuses anything another user planted there."""
    candidates = []
    run = os.environ.get("XDG_RUNTIME_DIR")
    if run:
        candidates.append(Path(run) / "rjn")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    shared = Path(tempfile.gettempdir()) / f"rjn-{portable.user_tag()}"
    candidates += [Path(cache) / "rjn" / "s", shared]
    # ssh names a master's socket by a 40-character hash and writes it under a longer name first.
    fits = [path for path in candidates if len(os.fsencode(path)) + 60 < 104]
    return private_dir(fits[0] if fits else candidates[-1])


def private_dir(path: Path) -> Path:
    """`path` as a folder of the user's alone: made if missing, never through a link. One that
    exists must be a real folder of this user's (checked on a descriptor opened without
    following links, so nothing planted in a shared place like /tmp is followed or chmodded);
    one of ours that is open to others is closed (it is ours: nobody else's mode changes)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    try:
        fd = os.open(path, os.O_RDONLY | portable.DIRECTORY | portable.NOFOLLOW)
    except OSError as exc:
        raise RjnError(
            f"{path} is not a folder of yours (a link or a file is there: {exc.strerror}); "
            "rjn keeps its files only in folders of its own",
            hint=f"look at it and remove it (`ls -la {path}`), or set XDG_RUNTIME_DIR / "
            "XDG_STATE_HOME to a folder of your own",
        ) from None
    try:
        info = os.fstat(fd)
        if not portable.mine(info):
            raise RjnError(
                f"{path} belongs to another user (uid {info.st_uid}); rjn does not use it",
                hint="remove it, or set XDG_RUNTIME_DIR / XDG_STATE_HOME to a folder of your own",
            )
        if info.st_mode & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def write_private(path: Path, text: str | bytes) -> None:
    """Atomically replace `path` with `text`, mode 0600 (its folder made private if missing:
    only for rjn's own folders)."""
    private_dir(path.parent)
    write_atomic(path, text)


def write_atomic(path: Path, text: str | bytes, new_mode: int = 0o600) -> None:
    """Atomically replace `path` with `text`: an existing file keeps its mode, a new one gets
    `new_mode` (the folder's mode is never touched: it may be the user's project, shared)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = new_mode
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode() if isinstance(text, str) else text)
            os.fchmod(handle.fileno(), mode)
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
            return portable.lock(handle)

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
            portable.unlock(handle)
