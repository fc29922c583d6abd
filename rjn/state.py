"""Local state: where rjn keeps its files, and the atomic record of each open project."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rjn.errors import RjnError
from rjn.waits import wait_until


def state_dir() -> Path:
    """The user's state dir for rjn (XDG_STATE_HOME), created private."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return _private_dir(Path(base) / "rjn")


def runtime_dir() -> Path:
    """A short private dir for sockets: unix socket paths are limited to ~100 bytes."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "rjn" if base else Path(tempfile.gettempdir()) / f"rjn-{os.getuid()}"
    return _private_dir(path)


def _private_dir(path: Path) -> Path:
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


def project_key(root: Path, remote: str | None = None) -> str:
    """A stable, readable key for a project folder, and one of its named remotes."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
    return f"{root.name}-{digest}" + (f"@{remote}" if remote else "")


@dataclass
class ProjectState:
    """What rjn knows about an open project; saved as JSON, mode 0600 (it holds the token)."""

    root: str
    host: str
    control_path: str
    remote_dir: str = ""
    remote_name: str | None = None  # a named remote ([remotes.NAME]); None: [remote]
    opened_at: float | None = None
    job: str | None = None  # a SLURM job's id and node, for `rjn ls`
    node: str | None = None
    local_port: int | None = None
    forward_target: str | None = None
    token: str | None = None
    server_pid: int | None = None
    app: str = "lab"
    env_hash: str | None = None
    sources_hash: str | None = None
    # The compute node the tunnel hops to ([slurm] connect = "jump"), else None.
    via_node: str | None = None

    @property
    def url(self) -> str | None:
        """The local URL of the tunnelled server, without the token."""
        return f"http://127.0.0.1:{self.local_port}/" if self.local_port else None

    def tokened_url(self) -> str | None:
        """The URL a browser opens: the app's page, token included."""
        if not (self.local_port and self.token):
            return None
        page = "lab" if self.app == "lab" else "tree"
        return f"http://127.0.0.1:{self.local_port}/{page}?token={self.token}"


def state_path(root: Path, remote: str | None = None) -> Path:
    """The state file of the project in `root` (on its named `remote`)."""
    folder = state_dir() / "projects"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{project_key(root, remote)}.json"


def load(root: Path, remote: str | None = None) -> ProjectState | None:
    """The saved state of a project, or None; a stale or broken file never blocks."""
    return _read(state_path(root, remote))


def _read(path: Path) -> ProjectState | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        known = ProjectState.__dataclass_fields__
        return ProjectState(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None


def save(state: ProjectState) -> None:
    """Write the state atomically, readable by the user alone."""
    path = state_path(Path(state.root), state.remote_name)
    write_private(path, json.dumps(asdict(state), indent=2))


def forget(root: Path, remote: str | None = None) -> None:
    """Remove a project's state."""
    with contextlib.suppress(FileNotFoundError):
        state_path(root, remote).unlink()


def all_projects() -> list[ProjectState]:
    """Every project rjn has state for."""
    folder = state_dir() / "projects"
    records = [p for p in sorted(folder.glob("*.json")) if "." not in p.stem]
    found = (_read(p) for p in records) if folder.is_dir() else ()
    return [s for s in found if s is not None]


def write_private(path: Path, text: str) -> None:
    """Atomically replace `path` with `text`, mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def locked(
    root: Path, remote: str | None = None, timeout: float = 120
) -> contextlib.AbstractContextManager[None]:
    """Hold the project's lock: two rjn commands never change one project at once."""
    path = state_path(root, remote).with_suffix(".lock")
    return file_lock(path, timeout, f"{root.name} busy")


@contextlib.contextmanager
def file_lock(path: Path, timeout: float, busy: str) -> Iterator[None]:
    """An exclusive lock on `path`, waited for with a deadline."""
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
