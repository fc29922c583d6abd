"""The values rjn's use cases hand to the CLI, as plain records: what moved, what a sync
did, how a watch runs (the values), and what each command returns (rendered by ui.py, printed
by `--json`). They import nothing of rjn's but how a record is made (`rjn.shared.record`), so
that the records and their display need no action module."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from rjn.shared.record import record

# Where deleted files go, on either side (in the project's .rjn/, with a .gitignore here).
TRASH = ".rjn/trash"


@record
class Pulled:
    """One file that came home (or was refused): where it went, whether it was kept beside a
    local edit, and why it was refused."""

    path: str
    size: int
    conflict_copy: str | None = None
    refused: str | None = None
    trashed: bool = False  # deleted on the remote: moved to the local trash folder
    merged: bool = False  # changed on both sides: merged cell by cell (a notebook)
    # What a two-way pull placed here: [size, mtime_ns, sha256] of the file as it was moved in
    # (the sync archive takes it from here, never from a second look at a file the user may
    # have saved again meanwhile).
    placed: tuple[int, int, str] | None = None


@record
class Ready:
    """The watcher is running: how it sees changes and why."""

    mode: str
    fs: str
    reason: str


@record
class Away:
    """Cells of one notebook that finished while no browser was attached: their outputs were
    written into it (those whose cell is not in the saved notebook could not be)."""

    path: str
    cells: int
    last: float  # when the last of them finished (epoch seconds)
    unplaced: int = 0


@record
class Outcome:
    """What one two-way sync did, and what it left for the user."""

    pushed: tuple[str, ...] = ()
    pulled: tuple[Pulled, ...] = ()
    trashed_here: tuple[str, ...] = ()
    trashed_there: tuple[str, ...] = ()
    merged: tuple[str, ...] = ()
    conflicts: dict[str, str] = field(default_factory=dict)
    # Left for a sync both ways: changed there (after a push-only sync), or here (after a
    # pull-only one).
    held: tuple[str, ...] = ()
    unsent: tuple[str, ...] = ()
    # Guarded files (see config.GUARDED_NAMES) changed on the remote, said once per version.
    kept_there: tuple[str, ...] = ()
    # Changed on the remote while ours was on its way: left there; the next pass decides.
    raced: tuple[str, ...] = ()
    # A file on one side where the other has a folder or a link: nothing under it moved.
    clashes: tuple[str, ...] = ()
    # Names that cannot travel, [(side, name, why)].
    skipped: tuple[tuple[str, str, str], ...] = ()
    # Deletions not carried out until the user allows them: {"here" | "there": count}.
    deletions_held: dict[str, int] = field(default_factory=dict)
    # The remote copy is not the one last synced with (new, changed, emptied, purged).
    new_pair: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.pushed or self.pulled or self.trashed_here or self.trashed_there)


# -- what each command returns ---------------------------------------------------------------


@record
class Opened:
    """What `rjn open` did and where the server is."""

    project: str
    host: str
    remote_dir: str
    port: int
    url: str
    tokened_url: str
    logged_in: bool
    synced: Outcome
    env_installed: bool
    server_started: bool
    requirements: tuple[str, ...]
    requirements_generated: bool
    unreadable: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    away: tuple[Away, ...] = ()


@record
class Status:
    """What is true now, checked, not remembered."""

    project: str
    host: str
    open: bool
    master: bool = False
    tunnel: bool = False
    server: bool | None = None
    remote_dir: str | None = None
    port: int | None = None
    url: str | None = None
    tokened_url: str | None = None
    server_pid: int | None = None
    problems: tuple[str, ...] = field(default=())
    job: str | None = None
    job_state: str | None = None
    node: str | None = None
    time_left: str | None = None
    time_left_s: int | None = None  # the same in seconds (None: no limit, or no job)
    next_job: str | None = None  # a follow-on job queued to take over (`rjn renew`)
    next_job_state: str | None = None
    conflicts: dict[str, str] = field(default_factory=dict)
    remote_name: str | None = None
    # GPUs, load, memory and disk of the remote, as its helper read them.
    machine: dict[str, Any] | None = None
    # What the local trash (.rjn/trash/) holds, in bytes.
    trash_bytes: int = 0
    away: tuple[Away, ...] = ()


@record
class Renewal:
    """A follow-on job queued by `rjn renew`."""

    project: str
    job: str
    next_job: str
    next_job_state: str
    submitted: bool  # False: it was queued already
    url: str | None = None


@record
class Closed:
    """What `rjn close` stopped."""

    project: str
    tunnel_closed: bool
    server_stopped: bool
    master_released: bool


@record
class Listed:
    """One open project, as `rjn ls` shows it: remembered, and checked now."""

    project: str
    root: str
    remote: str
    host: str
    port: int | None
    url: str | None
    tokened_url: str | None
    connection: bool
    tunnel: bool
    job: str | None
    node: str | None
    uptime: float | None
    time_left_s: int | None
    last_pulled: str | None


@record
class Synced:
    """What `rjn sync` moved: results home, and the project both ways."""

    project: str
    direction: str
    files: tuple[Pulled, ...] = ()
    tree: Outcome = field(default_factory=Outcome)
    notes: tuple[str, ...] = ()


@record
class Ran:
    """How a remote run ended, and the results it brought home."""

    project: str
    exit_code: int
    pulled: tuple[Pulled, ...] = ()
    run_id: str | None = None
    tree: Outcome = field(default_factory=Outcome)
