"""One look at the remote project in one exec: its folder, environment, server, tree, machine.

Every use case that needs to know the remote asks here, and gets a typed record checked as the
untrusted input it is (a field of the wrong type is an error, never a crash further on).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rjn.errors import RemoteError
from rjn.helper_client import HelperClient
from rjn.server import Server, checked_state
from rjn.shared import protocol
from rjn.shared.record import record


@record
class Job:
    """A SLURM job behind the project's server, as squeue (or sacct, once it ended) says."""

    id: str | None = None
    state: str | None = None
    node: str | None = None
    time_left: str | None = None
    next: str | None = None  # a follow-on job queued to take over (`rjn renew`)
    next_state: str | None = None
    ended: str | None = None  # why it ended where the state does not say: "idle"


@record
class Probe:
    """The remote project as it is now."""

    dir: str
    env_current: bool
    server: Server | None  # the server, if it is alive and answering
    job: Job
    # The remote tree (a protocol.TreeListing as JSON) when asked for, for two-way sync.
    tree: dict[str, Any] | None = None
    # GPUs, load, memory and disk, when asked for (`rjn status`).
    machine: dict[str, Any] | None = None
    # The results' files (path -> [mtime_ns, size]) when asked for; None also where only a
    # pull can tell (sync.pull_changed checks the entries).
    results: dict[str, Any] | None = None
    # Cells that finished while no browser was attached, when asked for: (path, finished,
    # placed), checked.
    away: tuple[tuple[str, float, bool], ...] = ()


def look(
    helper: HelperClient,
    remote_dir: str,
    *,
    env_hash: str | None = None,
    tree: protocol.TreeQuery | None = None,
    machine: bool = False,
    results: Sequence[str] | None = None,
    away: bool = False,
    make: Sequence[str] = (),
    timeout: float = 60,
) -> Probe:
    """Ask the helper once. `env_hash` is the environment wanted (else it is not current);
    `tree` what to list of the tree (twoway.tree_query); `machine` adds the machine's state;
    `results` (the results folders) lists their files; `away` the cells that finished while
    no browser was attached; `make`: folders to make first, where missing."""
    request = protocol.ProbeRequest(
        dir=remote_dir, env_hash=env_hash or None, machine=machine, away=away,
        make=list(make) or None, tree=tree, results=None if results is None else list(results),
    )  # fmt: skip
    return parse(helper.host, helper.probe(request, timeout=timeout))


def parse(host: str, seen: protocol.ProbeAnswer) -> Probe:
    """The helper's answer as a Probe; a malformed server is a RemoteError naming the field."""
    try:
        state = checked_state(seen.server)
    except protocol.Malformed as bad:
        raise RemoteError(
            f"{host}: rjn's remote helper sent a malformed probe ({bad.field})"
        ) from None
    return Probe(
        dir=seen.dir,
        env_current=seen.env_current,
        server=Server.from_state(state),
        job=Job(state.job, state.job_state, state.node, state.time_left, state.next,
                state.next_state, state.ended),
        tree=seen.tree,
        machine=seen.machine,
        results=seen.results,
        away=_away(seen.away or []),
    )


def _away(entries: list[Any]) -> tuple[tuple[str, float, bool], ...]:
    """The remote's log of cells kept while away, as untrusted input: entries that are not
    what they must be are left out (it is a note for the user, nothing acts on it)."""
    found = []
    for entry in entries[-1000:]:
        if not isinstance(entry, dict):
            continue
        path, finished, placed = entry.get("path"), entry.get("finished"), entry.get("placed")
        if isinstance(path, str) and 0 < len(path) < 4096 and isinstance(finished, (int, float)):
            found.append((path, float(finished), placed is True))
    return tuple(found)
