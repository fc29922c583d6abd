"""What the use cases return: plain records, rendered by ui.py and printed by `--json`."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from rjn.helper.record import record
from rjn.model import Away, Outcome, Pulled


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
