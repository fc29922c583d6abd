"""What rjn keeps of each open project on this machine (port, token, server, job), atomically."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rjn import places

# How a state file's name ends: project_key's digest, and a remote's name (config's _NAME).
_RECORD = re.compile(r"-[0-9a-f]{10}(@[A-Za-z0-9_-]+)?$")


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
    # When the job's time limit ends it (seconds since the epoch), as seen at open: `rjn ls`
    # says the time left without asking the cluster.
    job_ends_at: float | None = None

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


def project_file(root: Path, remote: str | None = None, kind: str = "") -> Path:
    """A file of the project in `root` (on its named `remote`): its state, or with `kind`
    (".archive", ".pulled", ...) another file of it. Only a path: writers make the folder."""
    return places.state_dir() / "projects" / f"{project_key(root, remote)}{kind}.json"


def load(root: Path, remote: str | None = None) -> ProjectState | None:
    """The saved state of a project, or None; a stale or broken file never blocks."""
    return _read(project_file(root, remote))


def _read(path: Path) -> ProjectState | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        known = ProjectState.__dataclass_fields__
        return ProjectState(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None


def save(state: ProjectState) -> None:
    """Write the state atomically, readable by the user alone."""
    path = project_file(Path(state.root), state.remote_name)
    places.write_private(path, json.dumps(asdict(state), indent=2))


def forget(root: Path, remote: str | None = None) -> None:
    """Remove a project's state."""
    with contextlib.suppress(FileNotFoundError):
        project_file(root, remote).unlink()


def all_projects() -> list[ProjectState]:
    """Every project rjn has state for."""
    folder = places.state_dir() / "projects"
    # Records only, not a project's other files (kinds); a folder's name may hold dots.
    records = [p for p in sorted(folder.glob("*.json")) if _RECORD.search(p.stem)]
    found = (_read(p) for p in records) if folder.is_dir() else ()
    return [s for s in found if s is not None]


def locked(
    root: Path, remote: str | None = None, timeout: float = 120
) -> contextlib.AbstractContextManager[None]:
    """Hold the project's lock: two rjn commands never change one project at once."""
    path = project_file(root, remote).with_suffix(".lock")
    return places.file_lock(path, timeout, f"{root.name} busy")
