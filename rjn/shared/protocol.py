"""What the helper and the local rjn say to each other, in one place for both sides.

Each request, answer and event is one record type. A request names its action (`action`) and
carries that action's arguments: the local side builds it, the helper reads it back with
`parse()`. An answer or event goes the other way: the helper builds it and writes `to_json()`;
the local side reads it back with `parse()`, which checks every field, because what a remote
sends is untrusted. A field renamed on one side fails a test, not a user's session. Fields are
declared once, as annotations; this module runs on the remote too (Python 3.8, standard
library only).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .record import record

# The types a field's annotation may name; each record type adds itself.
_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict,
                           "list": list, "None": type(None)}  # fmt: skip


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
    may hold (`int | None`, or another record: `TreeQuery | None`); a field left out takes its
    default, and one without a default may be left out where it may be None."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _TYPES[cls.__name__] = cls  # a record's fields may name it

    @classmethod
    def parse(cls: type[R], data: object) -> R:
        """The record from a JSON object, every field checked; Malformed names the first
        that does not fit. Fields the record does not declare are ignored."""
        if not isinstance(data, dict):
            raise Malformed(cls.__name__)
        values = {}
        for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
            if spec.name not in data and spec.default is not dataclasses.MISSING:
                values[spec.name] = spec.default
                continue
            value = data.get(spec.name)
            kinds = tuple(_TYPES[name.strip()] for name in str(spec.type).split("|"))
            inner = next((kind for kind in kinds if issubclass(kind, Record)), None)
            if inner is not None and isinstance(value, dict):
                try:
                    value = inner.parse(value)
                except Malformed as exc:
                    raise Malformed("%s.%s" % (spec.name, exc.field)) from None
            # bool is an int to isinstance, and an int no float; to JSON it is the other way.
            elif not (isinstance(value, kinds) or (float in kinds and type(value) is int)) or (
                type(value) is bool and bool not in kinds
            ):
                raise Malformed(spec.name)
            values[spec.name] = value
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object; fields that are None are left out (a record's fields
        that are records too: their None fields too)."""
        made = {}
        for spec in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, spec.name)
            if value is not None:
                made[spec.name] = value.to_json() if isinstance(value, Record) else value
        return made


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
    gen: int | None = None  # the sync archive's generation the listing was asked against
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


# -- requests: what the local side asks the helper, one record type per action ----------------


class Request(Record):
    """A request to the helper: `action` names the action (helper/main.py runs it), the
    fields are its arguments. Every request but the serving helper's is about one project,
    `dir` on the remote."""

    action = ""


@record
class TreeQuery(Record):
    """What a listing of the project's tree covers (the sync's filters), and what the caller
    holds already: the archive's generation (`gen`, echoed back), this machine's id (`mine`:
    the remote keeps the listing it last sent it) and that listing's id (`since`: then only
    what changed is sent)."""

    exclude: list
    include: list
    gen: int = 0
    mine: str | None = None
    since: str | None = None


@record
class ProbeRequest(Request):
    """One look at the project: `env_hash` the environment wanted; the machine's state, the
    tree, the results' files and the cells finished while away, each when asked for; `make`:
    folders to make first, where missing."""

    action = "probe"
    dir: str
    env_hash: str | None = None
    machine: bool = False
    away: bool = False
    make: list | None = None
    tree: TreeQuery | None = None
    results: list | None = None


@record
class ScanRequest(Request):
    """The project's tree alone."""

    action = "scan"
    dir: str
    tree: TreeQuery


@record
class PlaceRequest(Request):
    """Move a push's staged files (in `.rjn/<staging>`) into place: `files` is {rel: the
    entry the plan saw there, or None for none}."""

    action = "place"
    dir: str
    staging: str
    files: dict


@record
class TrashRequest(Request):
    """Move files into the project's trash, each only if it is as the plan saw it
    ({rel: entry}); then prune the trash to `days` and `bytes`."""

    action = "trash"
    dir: str
    files: dict
    days: float | None = None
    bytes: int | None = None


@record
class SendRequest(Request):
    """rjn's own transfer out of the remote: the named files, or the `folders` whole; `skip`
    those whose copy here is that one ({rel: [mtime_ns, size]}); none over `max_size` (0: no
    limit), nor more than `max_bytes` in all."""

    action = "send"
    dir: str
    names: list | None = None
    folders: list | None = None
    skip: dict | None = None
    max_size: int = 0
    max_bytes: int | None = None
    follow_links: bool = False


@record
class ReceiveRequest(Request):
    """rjn's own transfer into the remote's staging: the files ([name, mode, mtime_ns]) follow
    on stdin, framed."""

    action = "receive"
    dir: str
    staging: str
    files: list


@record
class EnvRequest(Request):
    """Make the project's environment the one wanted (`hash`, of the requirements and
    packages), or check the user's own (`env`); `serve`: what serves Jupyter there. The
    requirements are the project's file `requirements`, or, where they come before the
    project's files (an install beside the first sync), their text. `wheels` ([name, sha256])
    and `staged`: a remote with no way out installs from wheels sent."""

    action = "env"
    dir: str
    hash: str
    requirements: str
    packages: list
    serve: list
    requirements_text: str | None = None
    no_uv: bool = False
    env: str | None = None
    offline: bool = False
    wheels: list | None = None
    staged: str | None = None


@record
class StartRequest(Request):
    """Start the project's Jupyter server (or find it running): its app, where it listens
    ("socket" or "port"), when it stops itself idle (minutes, 0: never), how long it may take
    to answer, whether outputs are kept while away; `slurm` ([slurm] as a table): as a batch
    job; `setup`: [remote] setup, for a job's script."""

    action = "start"
    dir: str
    app: str = "lab"
    listen: str = "socket"
    idle_timeout: float = 0
    ready_timeout: float = 120
    away: bool = True
    slurm: dict | None = None
    setup: str | None = None


@record
class RenewRequest(StartRequest):
    """Queue the job that takes over from the project's SLURM job, started the same way."""

    action = "renew"


@record
class StopRequest(Request):
    """Shut the project's server down."""

    action = "stop"
    dir: str


@record
class WatchRequest(Request):
    """Watch the results folders for finished files matching `patterns` (inline: those up to
    `inline_max` bytes), and the tree (`tree`) for edits; by file events, or by polling every
    `interval` seconds (`mode`: "auto", "events" or "poll"). `owner`: the clone watching (its
    machine's and folder's id); a clone's newer watcher ends its older one."""

    action = "watch"
    dir: str
    results: list
    patterns: list
    mode: str = "auto"
    interval: float = 1.0
    inline_max: int = 0
    tree: TreeQuery | None = None
    owner: str | None = None


@record
class RunRequest(Request):
    """Run `argv` in the project's environment: streamed, then its end with the listings
    asked for (`tree`, `results`), as a probe's; or `detach`ed, going on without us."""

    action = "run"
    dir: str
    argv: list
    detach: bool = False
    tree: TreeQuery | None = None
    results: list | None = None


@record
class LogsRequest(Request):
    """A detached run's log (`run`, else the last), and with `follow` until it ends."""

    action = "logs"
    dir: str
    run: str | None = None
    follow: bool = False


@record
class ServeRequest(Request):
    """Become this connection's serving helper (helper/serve.py)."""

    action = "serve"


@record
class PingRequest(Request):
    """Nothing: an answer says the serving helper is there."""

    action = "ping"
