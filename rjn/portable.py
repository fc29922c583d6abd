"""What differs between the laptops rjn runs on, in one place. Each need has its Linux route and
a portable one: macOS has no /proc, Windows has no fcntl, setsid, unix sockets (in Python),
O_NOFOLLOW or uids. The rest of the client asks here and never looks at the platform itself.

RJN_ROUTES (a comma list: lsof, netstat, no-unix-sockets, no-proc, fold-case) forces portable
routes, so the tests run them on Linux where they can.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

from rjn.errors import RjnError

WINDOWS = sys.platform == "win32"
FORCED = frozenset(filter(None, os.environ.get("RJN_ROUTES", "").split(",")))

# Opening never follows a link in the last component where the platform can say so; where it
# cannot (Windows), callers check with lstat first.
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIRECTORY = getattr(os, "O_DIRECTORY", 0)

# Unix sockets: the serving helper's local end, a faster path that is never required.
UNIX_SOCKETS = hasattr(socket, "AF_UNIX") and not WINDOWS and "no-unix-sockets" not in FORCED


_FOLDS: dict[int, bool] = {}


def folds_case(folder: Path) -> bool:
    """Whether the filesystem holding `folder` (one of rjn's own: a marker file is made there
    for a moment) takes names that differ only by case for one (a Mac's and Windows' disks,
    by default): asked of the disk itself, once per device."""
    if "fold-case" in FORCED:
        return True
    device = folder.stat().st_dev
    if device not in _FOLDS:
        marker = folder / f"case-marker-{os.getpid()}"
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            try:
                _FOLDS[device] = os.path.lexists(folder / marker.name.upper())
            finally:
                marker.unlink()
        except OSError:
            return WINDOWS or sys.platform == "darwin"  # cannot ask: the platform's default
    return _FOLDS[device]


class Said(Protocol):
    """What a finished command listed (proc.Completed is one)."""

    @property
    def code(self) -> int: ...

    @property
    def out(self) -> str: ...


Run = Callable[[list[str]], Said]


def lock(handle: IO[Any]) -> bool:
    """Take an exclusive lock on an open file without waiting; whether it was taken."""
    if WINDOWS:
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def unlock(handle: IO[Any]) -> None:
    if WINDOWS:
        import msvcrt

        with contextlib.suppress(OSError):
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
        return
    import fcntl

    fcntl.flock(handle, fcntl.LOCK_UN)


def mine(info: os.stat_result) -> bool:
    """Whether a file belongs to this user (Windows: its profile's folders are the user's)."""
    return WINDOWS or info.st_uid == os.getuid()


def user_tag() -> str:
    """What tells this user's folders apart in a shared temp dir."""
    return os.environ.get("USERNAME", "me") if WINDOWS else str(os.getuid())


def detached() -> dict[str, Any]:
    """subprocess options for a process that outlives rjn, free of its terminal."""
    if WINDOWS:
        flags = 0x00000008 | 0x00000200  # DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP
        return {"creationflags": flags}
    return {"start_new_session": True}


def listens(port: int, pid: int, run: Run) -> bool | None:
    """Whether process `pid` (our ssh) is what listens on 127.0.0.1:`port`; None where this
    machine cannot tell. The tunnel's token goes only to a listener that is ours. `run` runs
    a command (proc.run: this module starts no process itself)."""
    if "lsof" not in FORCED and "netstat" not in FORCED and "no-proc" not in FORCED:
        found = _from_proc(port, pid)
        if found is not None:
            return found
    if WINDOWS or "netstat" in FORCED:
        return _from_netstat(port, pid, run)
    return _from_lsof(port, pid, run)


def _from_proc(port: int, pid: int) -> bool | None:
    """Linux: the listening socket's inode in /proc/net/tcp, among the process's descriptors."""
    try:
        table = Path("/proc/net/tcp").read_text()
    except OSError:
        return None
    wanted = f"0100007F:{port:04X}"
    listeners = {
        f"socket:[{fields[9]}]"
        for fields in (line.split() for line in table.splitlines()[1:])
        if len(fields) > 9 and fields[1] == wanted and fields[3] == "0A"  # LISTEN
    }
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(fd) in listeners:
                return True
    return False


def _from_lsof(port: int, pid: int, run: Run) -> bool | None:
    """macOS and the BSDs: lsof (on every Mac) lists what the process listens on."""
    try:
        listed = run(["lsof", "-nP", "-a", "-p", str(pid), f"-iTCP@127.0.0.1:{port}",
                    "-sTCP:LISTEN", "-Fp"])  # fmt: skip
    except RjnError:  # not installed: cannot tell
        return None
    return f"p{pid}" in listed.out.split()


def _from_netstat(port: int, pid: int, run: Run) -> bool | None:
    """Windows: netstat -ano names each listening port's process."""
    try:
        listed = run(["netstat", "-ano", "-p", "TCP"])
    except RjnError:
        return None
    return listening_pid(listed.out, port) == pid if listed.code == 0 else None


# Windows only: compiled (and cached by `re`) when first used.
_NETSTAT = r"(?m)^\s*TCP\s+127\.0\.0\.1:(\d+)\s+\S+\s+LISTENING\s+(\d+)\s*$"


def listening_pid(netstat: str, port: int) -> int | None:
    """The process that listens on 127.0.0.1:port, as Windows' `netstat -ano` says."""
    for found in re.finditer(_NETSTAT, netstat):
        if int(found.group(1)) == port:
            return int(found.group(2))
    return None
