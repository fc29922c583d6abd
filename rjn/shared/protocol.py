"""What the helper and the local rjn say to each other, in one place for both sides.

Each answer and event is one record type: the helper builds it and writes `to_json()`; the
local side reads it back with `parse()`, which checks every field, because what a remote sends
is untrusted. A field renamed on one side fails a test, not a user's session. Fields are
declared once, as annotations; this module runs on the remote too (Python 3.8, standard
library only).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .record import record

_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict, "list": list,
          "None": type(None)}  # fmt: skip


class HelperError(Exception):
    """An expected failure of an action (the helper's RjnError): main answers it as a
    Failure record, what went wrong and what to try."""

    def __init__(self, message, hint=None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class Malformed(ValueError):
    """A record that does not fit its type; `field` names what was wrong."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


R = TypeVar("R", bound="Record")


class Record:
    """A record of the protocol: a frozen dataclass whose annotations say what each field
    may hold (`int | None`); a field that may be None may also be left out."""

    @classmethod
    def parse(cls: type[R], data: object) -> R:
        """The record from a JSON object, every field checked; Malformed names the first
        that does not fit. Fields the record does not declare are ignored."""
        if not isinstance(data, dict):
            raise Malformed(cls.__name__)
        values = {}
        for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
            kinds = tuple(_TYPES[name.strip()] for name in str(spec.type).split("|"))
            value = data.get(spec.name)
            # bool is an int to isinstance; to the protocol it is not.
            if not isinstance(value, kinds) or (type(value) is bool and bool not in kinds):
                raise Malformed(spec.name)
            values[spec.name] = value
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object; fields that are None are left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}  # type: ignore[call-overload]


@record
class ServerState(Record):
    """The project's Jupyter server as its record and a check now say (`alive`: answering)."""

    alive: bool
    pid: int | None = None
    token: str | None = None
    app: str | None = None
    sock: str | None = None
    port: int | None = None
    addr: str | None = None
    started: bool | None = None
    job: str | None = None
    job_state: str | None = None
    node: str | None = None
    time_left: str | None = None
    # A follow-on job queued to take over (`rjn renew`), and its state ("PENDING (Dependency)")
    next: str | None = None
    next_state: str | None = None
    # Why an ended job ended, where the scheduler's state does not say: "idle"
    ended: str | None = None


@record
class ProbeAnswer(Record):
    """One look at the project (the probe action)."""

    dir: str
    python: str
    env_current: bool
    server: dict
    disk_free: int
    has_rsync: bool
    machine: dict | None = None
    # The project's tree (a TreeListing), when it was asked for (two-way sync)
    tree: dict | None = None
    # path -> [mtime_ns, size] of the results' files, when asked for; None where only a pull
    # can tell (a link there, too many files)
    results: dict | None = None
    # Cells that finished while no browser was attached (away.py's log), when asked for:
    # [{"path", "cell", "finished", "placed"}]
    away: list | None = None


@record
class RunEnd(Record):
    """How a run ended, and what it left (the same listings as the probe's, when asked)."""

    exit: int | None  # None: a detached run's log, read while the run goes on
    tree: dict | None = None
    results: dict | None = None


@record
class TreeListing(Record):
    """A side's project tree for two-way sync (entries are checked further by the sync). A long
    one's files come first in `part` messages, {path: entry} each, merged into `files`."""

    files: dict  # path -> [size, mtime_ns, sha256]
    others: dict  # path -> "link" | "other": there, never travels, blocks that name
    skipped: list  # [[name, why]]: names that cannot travel
    replica: str | None = None  # the id of this copy of the project (remote side)
    gen: int | None = None  # the record generation the listing was asked against
    id: str | None = None  # this listing's id: ask `since` it next time for a diff
    base: str | None = None  # a diff: `files` changed or new since listing `base`, `gone` gone
    gone: list | None = None


@record
class Placed(Record):
    """What a push's placing did: files moved in ({rel: [size, mtime_ns]}), files kept as
    they were because they changed since the listing ({rel: why})."""

    placed: dict
    kept: dict


@record
class Moved(Record):
    """What trashing moved ({rel: true}); what it left, it left because it changed."""

    moved: dict


@record
class Stopped(Record):
    """Whether a server was running (and now is not)."""

    stopped: bool


@record
class EnvDone(Record):
    """The project's environment made current (or found so)."""

    changed: bool
    env: str | None = None  # the user's own, when [remote] env names one
    python: str | None = None  # its Python's version
    missing: list | None = None  # the project's requirements it lacks (rjn installs nothing)
    # The remote cannot reach the package index: its platform, for wheels brought to it, and
    # the SHA-256 of each wheel its wheelhouse keeps (those need not travel)
    need_wheels: dict | None = None
    have: list | None = None


@record
class Renewed(Record):
    """A follow-on job queued to take over from `job` when it ends."""

    job: str
    next: str
    next_state: str
    submitted: bool  # False: it was queued already


@record
class Detached(Record):
    """A detached run's id (`rjn logs` follows it)."""

    run: str


@record
class Ready(Record):
    """The watcher runs: by file events or by polling (`interval`), and why."""

    mode: str
    fs: str
    reason: str
    interval: float | int | None = None


@record
class Failure(Record):
    """An expected failure: what went wrong, and what to try."""

    message: str
    hint: str | None = None
