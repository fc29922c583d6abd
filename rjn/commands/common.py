"""What the commands share: how they report, reaching the remote, and making a project ready
there (connect, look, sync, install)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from rjn import env, places, portable, probe, requirements, state, transfer, twoway
from rjn.config import Config
from rjn.connection import Connection
from rjn.helper_client import HelperClient
from rjn.records import Away
from rjn.requirements import Requirements
from rjn.shared.record import record

T = TypeVar("T")


class Reporter(Protocol):
    """How use cases tell the user what they are doing; the CLI renders it."""

    def step(self, title: str, prompts: bool = False) -> contextlib.AbstractContextManager[Any]:
        """A step of the work; with `prompts`, something in it may ask the user at the
        terminal, so no live display may draw over it."""

    def log(self, line: str) -> None: ...

    def progress(self, percent: int) -> None: ...


class Quiet:
    """A reporter that says nothing (for scripts, tests and --json)."""

    @contextlib.contextmanager
    def step(self, title: str, prompts: bool = False) -> Iterator[None]:
        yield

    def log(self, line: str) -> None:
        pass

    def progress(self, percent: int) -> None:
        pass


def connect(remote: Connection, report: Reporter) -> bool:
    """The master up; True if it had to log in. ssh may ask for a password, a 2FA code, a
    passphrase or a new host key then: the display steps aside for it."""
    up = remote.master_alive()
    with report.step(f"Connecting to {remote.host}", prompts=not up):
        return False if up else remote.connect()


def away_news(config: Config, entries: tuple[tuple[str, float, bool], ...]) -> tuple[Away, ...]:
    """The cells that finished while no browser was attached and were not told of yet, per
    notebook; told now (the newest time is remembered)."""
    marker = state.project_file(config.root, config.remote_name, ".away")
    try:
        seen = float(json.loads(marker.read_text())["seen"])
    except (OSError, ValueError, KeyError, TypeError):
        seen = 0.0
    news = [entry for entry in entries if entry[1] > seen]
    if not news:
        return ()
    places.write_private(marker, json.dumps({"seen": max(when for _, when, _ in news)}))
    by_path: dict[str, list[tuple[float, bool]]] = {}
    for path, when, placed in news:
        by_path.setdefault(path, []).append((when, placed))
    return tuple(
        Away(path, len(cells), max(w for w, _ in cells), sum(not p for _, p in cells))
        for path, cells in sorted(by_path.items())
    )


def reach(config: Config) -> HelperClient:
    """rjn's helper on the project's host, over its connection (the master is shared by every
    project on that host; `.connection` is it)."""
    how = config.remote.multiplex
    if how == "single" or (how == "auto" and portable.WINDOWS):
        from rjn.connection.single import SingleConnection

        kind: type[Connection] = SingleConnection
    else:
        kind = Connection
    return HelperClient(kind(config.remote, places.runtime_dir(), places.state_dir()))


@record
class Prepared:
    """A project made ready on the remote: connected, pushed, its environment current."""

    helper: HelperClient
    remote_dir: str
    probe: probe.Probe
    requirements: Requirements
    sources_hash: str
    env_hash: str
    logged_in: bool
    synced: twoway.Outcome
    env_installed: bool


def prepare(
    config: Config, report: Reporter, previous: state.ProjectState | None, what: str
) -> Prepared:
    """Write requirements, connect, probe (one exec), push, and install only what changed;
    `what` names the command to `rjn close --server` meanwhile."""
    helper = reach(config)
    with helper.connection.in_use(what, config.root):
        return _prepare(helper, config, report, previous)


def _prepare(
    helper: HelperClient, config: Config, report: Reporter, previous: state.ProjectState | None
) -> Prepared:
    remote = helper.connection
    with report.step("Writing requirements"):
        reqs, sources = requirements.current(config, previous.sources_hash if previous else None)
    wanted = env.wanted_hash(config, reqs)
    logged_in = connect(remote, report)
    with ThreadPoolExecutor(max_workers=1) as pool:
        here = twoway.scan_here(config, pool)  # while the remote looks at its side
        with report.step("Checking the remote"):
            info = probe.look(helper, config.remote_dir, env_hash=wanted, away=True,
                              tree=twoway.tree_query(config), make=config.sync.results,
                              timeout=300)  # fmt: skip
        # The results folders exist on both sides from the start: a notebook that saves
        # ../results/fig.png works on a fresh remote.
        for folder in config.sync.results:
            with contextlib.suppress(OSError):
                (config.root / folder.strip("/")).mkdir(parents=True, exist_ok=True)
        remote_dir = info.dir
        # The install needs none of the project's files where its requirements name only
        # packages of the index: then it runs while the sync does.
        installing = None
        sent = None if info.env_current else env.requirements_to_send(config)
        if sent is not None:
            installing = _beside(lambda: env.ensure(
                helper, config, remote_dir, wanted, on_log=report.log, requirements_text=sent
            ))  # fmt: skip
        with report.step(f"Syncing with {remote.host}:{remote_dir}"):
            synced = twoway.run(helper, config, remote_dir, info.tree, progress=report.progress,
                                here_scan=here)  # fmt: skip
        if not info.env_current:
            with report.step("Installing the environment"):
                if installing is None:
                    env.ensure(helper, config, remote_dir, wanted, on_log=report.log)
                else:
                    installing.result()
    return Prepared(
        helper,
        remote_dir,
        info,
        reqs,
        sources,
        wanted,
        logged_in,
        synced,
        not info.env_current,
    )


def _beside(work: Callable[[], T]) -> Future[T]:
    """`work` run in a thread of its own while the caller goes on. The thread is a daemon: a
    failure or a Ctrl-C meanwhile ends the command at once (a pool's worker is waited for)."""
    done: Future[T] = Future()

    def run() -> None:
        try:
            done.set_result(work())
        except BaseException as exc:  # handed to whoever waits for the result
            done.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return done


def remote_dir(config: Config, helper: HelperClient) -> str:
    """The absolute remote project dir: remembered, else asked of the remote (one exec)."""
    saved = state.load(config.root, config.remote_name)
    if saved and saved.remote_dir:
        return saved.remote_dir
    return probe.look(helper, config.remote_dir).dir


def bring_home(
    helper: HelperClient,
    config: Config,
    remote_dir: str,
    results: object,
    listed: dict[str, Any] | None,
    report: Reporter,
    allow_deletions: bool = False,
    here_scan: Future[twoway.HereScan] | None = None,
) -> tuple[list[transfer.Pulled], twoway.Outcome]:
    """Results home and the project both ways, given the remote's listings (None: asked for
    here). The two are apart (results never travel both ways): both go at once over the one
    master."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        results_home = pool.submit(
            transfer.Transfer(helper, config).pull_changed, remote_dir, results
        )
        tree = twoway.run(helper, config, remote_dir, listed, allow_deletions=allow_deletions,
                          progress=report.progress, here_scan=here_scan)  # fmt: skip
        return results_home.result(), tree
