"""Live results: a remote watcher streams finished files; each batch is pulled home at once."""

from __future__ import annotations

import collections
import queue
import time
from collections.abc import Callable
from typing import Any, Protocol

from rjn import places, probe, server, state, transfer, tunnel, twoway, walltime
from rjn.config import Config
from rjn.connection import Connection
from rjn.errors import ConnectionFailed, RemoteError, RjnError
from rjn.helper_client import HelperClient
from rjn.helper_client.answers import helper_error
from rjn.records import Ready
from rjn.shared import protocol

# Files closed within this window are pulled by one rsync (a notebook saving 20 figures at once).
BATCH_WINDOW = 0.05
# Files up to this size travel with their event (raw, after its line) instead of costing a
# pull's round trips; `nox -s bench` measures a 5 MB figure.
INLINE_MAX = 8 * 1024 * 1024
# Changes to project files within this window are brought home by one two-way pass.
TREE_WINDOW = 0.1
# How often the link is checked while watching (a local check: no network round trip).
HEALTH_INTERVAL = 1.0
# [sync] max_pull_size holds for the watch over any window this long, not only per batch: a
# stream of small files (each batch under the cap) cannot fill the disk either.
PULL_WINDOW = 60.0


class Budget:
    """What the watch brought home in the last PULL_WINDOW seconds, against max_pull_size."""

    def __init__(self, host: str, limit: int) -> None:
        self.host, self.limit = host, limit
        self.recent: collections.deque[tuple[float, int]] = collections.deque()
        self.total = 0

    def left(self) -> int:
        now = time.monotonic()
        while self.recent and now - self.recent[0][0] > PULL_WINDOW:
            self.total -= self.recent.popleft()[1]
        return self.limit - self.total

    def spend(self, size: int) -> None:
        self.recent.append((time.monotonic(), size))
        self.total += size
        if self.left() < 0:
            raise RemoteError(
                f"{self.host}: the remote sent more than [sync] max_pull_size "
                f"({self.limit:,} bytes) within {PULL_WINDOW:g} s; the watch stopped",
                hint="raise [sync] max_pull_size in remote.toml if that much is expected, or "
                "remove what should not come home from the results folders",
            )


def watch(
    helper: HelperClient,
    config: Config,
    remote_dir: str,
    on_ready: Callable[[Ready], Any],
    on_pulled: Callable[[transfer.Pulled, float], Any],
    mode: str = "auto",
    stop: Callable[[], bool] = lambda: False,
    health: Callable[[], None] = lambda: None,
    catch_up: bool = False,
    clock: walltime.Clock | None = None,
) -> None:
    """Pull each finished result file until `stop()` is true or Ctrl-C.

    `health` is called every few seconds and raises when the link is gone; so does a
    watcher that dies with its connection. With `catch_up`, once watching, everything
    that changed meanwhile (while the link was down) is pulled too. A cluster job's `clock`
    warns before its time limit; at the last warning and at its end everything comes home,
    and its end ends the watch.
    """
    remote = helper.connection
    messages: queue.Queue[dict[str, Any]] = queue.Queue()
    exclude, include = twoway.filters(config)
    watcher = helper.stream(
        protocol.WatchRequest(
            dir=remote_dir,
            results=list(config.sync.results),
            patterns=list(config.sync.patterns),
            mode=mode,
            inline_max=INLINE_MAX,
            tree=protocol.TreeQuery(exclude=exclude, include=include),
            owner=places.copy_id(config.root),
        ),
        python=server.venv_python(remote_dir),
        on_message=messages.put,
    )
    moves = transfer.Transfer(helper, config)  # the route picked once for the whole watch
    checked = time.monotonic()
    backlog: collections.deque[dict[str, Any]] = collections.deque()
    budget = Budget(remote.host, config.sync.max_pull_size)
    try:
        while not stop():
            if time.monotonic() - checked > HEALTH_INTERVAL:
                health()
                checked = time.monotonic()
                moment = clock.tick() if clock else None
                if moment in ("last", "ended"):
                    _bring_home(moves, remote_dir, on_pulled)
                if moment == "ended":
                    return
            try:
                message = backlog.popleft() if backlog else messages.get(timeout=0.2)
            except queue.Empty:
                if not watcher.alive():
                    watcher.wait(0, drain=2)  # what it said last is read first
                    if messages.empty():
                        raise _lost(remote, watcher.stderr) from None
                continue
            if "ready" in message:
                on_ready(_ready(remote, message))
                if catch_up:
                    started = time.monotonic()
                    for pulled in moves.pull(remote_dir):
                        on_pulled(pulled, time.monotonic() - started)
            elif "error" in message:
                raise helper_error(remote.host, message["error"])
            elif "superseded" in message:
                raise RjnError(
                    f"another `rjn watch` of {config.name} took over its results from "
                    f"{remote.host}: this one stops",
                    hint="one watch per project folder: the newest wins",
                )
            elif "changed" in message:
                _project_saves(helper, config, remote_dir, message, messages, backlog, on_pulled)
            elif "file" in message:
                _results(moves, remote_dir, message, messages, backlog, budget, on_pulled)
    finally:
        watcher.close()


def _ready(remote: Connection, message: dict[str, Any]) -> Ready:
    """The remote watcher's start (how it watches), checked as untrusted input."""
    try:
        ready = protocol.Ready.parse(message["ready"])
        if ready.mode not in ("events", "poll"):
            raise protocol.Malformed("mode")
    except protocol.Malformed as bad:
        raise RemoteError(
            f"{remote.host}: the remote watcher sent a malformed start ({bad.field})"
        ) from None
    return Ready(ready.mode, ready.fs, ready.reason)


def _project_saves(
    helper: HelperClient,
    config: Config,
    remote_dir: str,
    first: dict[str, Any],
    messages: queue.Queue[dict[str, Any]],
    backlog: collections.deque[dict[str, Any]],
    on_pulled: Callable[[transfer.Pulled, float], Any],
) -> None:
    """A project file saved there (a notebook in Jupyter): the burst gathered, then one
    two-way pass brings it home (or keeps both versions). A result file that comes meanwhile
    is handled next (`backlog`)."""
    remote = helper.connection
    seen = time.monotonic()
    names = {_changed(remote, first)}
    while len(names) < config.sync.max_burst:
        try:
            following = messages.get(timeout=TREE_WINDOW)
        except queue.Empty:
            break
        if "changed" not in following:
            backlog.append(following)
            break
        names.add(_changed(remote, following))
    _pull_tree(helper, config, remote_dir, on_pulled, seen)


def _results(
    moves: transfer.Transfer,
    remote_dir: str,
    first: dict[str, Any],
    messages: queue.Queue[dict[str, Any]],
    backlog: collections.deque[dict[str, Any]],
    budget: Budget,
    on_pulled: Callable[[transfer.Pulled, float], Any],
) -> None:
    """Result files closed there, gathered for BATCH_WINDOW: small ones came whole in their
    event and are placed at once; the others come by one pull; a flood (max_burst) by one
    pull of the results folders. Anything else that comes meanwhile is handled next."""
    remote, config = moves.helper.connection, moves.config
    seen = time.monotonic()
    inline: dict[str, tuple[bytes, int]] = {}
    batch: set[str] = set()
    pending: dict[str, Any] | None = first
    deadline = seen + BATCH_WINDOW
    while pending is not None:
        if "file" not in pending:
            # A project save (or anything else) ends the batch and comes next: a stream of
            # results never delays or drops it.
            backlog.append(pending)
            break
        name, data = _file_event(remote, config, pending)
        if data is not None:
            inline[name] = data
            batch.discard(name)
        else:
            batch.add(name)
            inline.pop(name, None)
        if len(inline) + len(batch) >= config.sync.max_burst:
            break  # a flood: one rsync of the results folders instead
        # Small files came whole in their event; wait a moment only for pulls.
        left = deadline - time.monotonic() if batch else 0
        try:
            pending = messages.get(timeout=left) if left > 0 else messages.get_nowait()
        except queue.Empty:
            pending = None
    if len(inline) + len(batch) >= config.sync.max_burst:
        arrived = moves.pull(remote_dir, max_bytes=budget.left())
    else:
        budget.spend(sum(len(data) for data, _ in inline.values()))
        arrived = transfer.receive(config, inline) if inline else []
        if batch:
            arrived += moves.pull(remote_dir, files=sorted(batch), max_bytes=budget.left())
    budget.spend(sum(p.size for p in arrived if not p.refused and p.path not in inline))
    for item in arrived:
        on_pulled(item, time.monotonic() - seen)


def _bring_home(
    moves: transfer.Transfer,
    remote_dir: str,
    on_pulled: Callable[[transfer.Pulled, float], Any],
) -> None:
    """Everything home now (the job is about to end, or ended): results, and the project's
    files saved there."""
    started = time.monotonic()
    for pulled in moves.pull(remote_dir):
        on_pulled(pulled, time.monotonic() - started)
    _pull_tree(moves.helper, moves.config, remote_dir, on_pulled, started)


def _pull_tree(
    helper: HelperClient,
    config: Config,
    remote_dir: str,
    on_pulled: Callable[[transfer.Pulled, float], Any],
    since: float,
) -> None:
    """A two-way pass that only brings home (a clean merge goes back), each file it moved
    said: pulled, merged, or moved to the trash here."""
    done = twoway.run(helper, config, remote_dir, direction="pull")
    moved = [*done.pulled, *(transfer.Pulled(rel, 0, merged=True) for rel in done.merged),
             *(transfer.Pulled(rel, 0, trashed=True) for rel in done.trashed_here)]  # fmt: skip
    for item in moved:
        on_pulled(item, time.monotonic() - since)


# Reconnection attempts start this often while a link is down (a slow or timed-out attempt is
# followed at once): each is a fresh connection with a short connect timeout, so a link that
# comes back is found within a second or two, however long it was gone (TCP's own backoff on
# the old connection is never waited for). After RETRY_FAST_FOR seconds of outage, less often,
# to spare a laptop left offline.
RETRY_EVERY = 1.0
RETRY_EVERY_LATER = 5.0
RETRY_FAST_FOR = 600.0
RECONNECT_TIMEOUT = 3
# A wall clock that ran this much further than the monotonic one means the laptop slept.
CLOCK_JUMP = 20.0


def _tunnel_back(
    remote: Connection, config: Config, saved: state.ProjectState, on_link: Callable[[str], Any]
) -> bool:
    """The server's tunnel up again, on its local port where it is still free (an open
    browser tab then works again), else on another, said and saved; False if the project
    has no tunnel."""
    target, token = saved.forward_target, saved.token
    if not (saved.local_port and target and token):
        return False
    carrier = tunnel.carrier(remote, saved.via_node)
    carrier.connect()
    port = tunnel.ensure(
        carrier, config, target, token, saved.local_port, target,
        # Through a hop (a job's socket on its node, a job that just took over), the tunnel
        # is the first to ask Jupyter: give it its time.
        wait=config.jupyter.ready_timeout if saved.via_node else 15,
    )  # fmt: skip
    if port != saved.local_port:
        on_link(f"the old port was taken: the server is now at 127.0.0.1:{port}")
        saved.local_port = port
        with state.locked(config.root, config.remote_name):
            state.save(saved)
    return True


def follow(
    helper: HelperClient,
    config: Config,
    saved: state.ProjectState,
    on_ready: Callable[[Ready], Any],
    on_pulled: Callable[[transfer.Pulled, float], Any],
    on_link: Callable[[str], Any] = lambda message: None,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Pull each new or changed result file as soon as it is complete, until Ctrl-C.

    A dropped link (the master dies, ServerAlive gives up, the laptop slept) is repaired
    with backoff: the master is re-established and the tunnel comes back on the same local
    port, so an open browser tab works again. The remote server is left as it is. A cluster
    job that ends ends the watch, unless a follow-on job takes over: the tunnel then moves
    to it, on the same port.
    """
    remote = helper.connection
    failures, down_since, timeout = 0, 0.0, None
    clock: walltime.Clock | None = None
    took_over = False  # a follow-on job: said once its tunnel answers
    while not stop():
        began = time.monotonic()
        try:
            remote.connect(timeout=timeout)
            reconnected = failures > 0
            if reconnected:
                on_link(f"reconnected to {remote.host}")
                # What happened meanwhile decides, not what we knew: closed here (then the
                # tunnel stays closed), or a server restarted there (a new token).
                current = state.load(config.root, config.remote_name)
                if current is None or not current.local_port:
                    on_link(f"{config.name} was closed: stopped watching")
                    return
                saved = _current_server(config, helper, current, on_link)
            if _tunnel_back(remote, config, saved, on_link) and took_over:
                on_link(f"job {saved.job} took over: {saved.url} works again (kernels "
                        "start afresh; notebooks are as last saved)")  # fmt: skip
                took_over = False
            failures, timeout = 0, None
            if config.slurm and saved.job and (clock is None or clock.job != saved.job):
                clock = _clock(helper, config, saved, on_link)
            watch(
                helper, config, saved.remote_dir, on_ready, on_pulled,
                config.sync.watch, stop, health=link_check(remote), catch_up=reconnected,
                clock=clock,
            )  # fmt: skip
            if clock is None or not clock.ended or clock.follow_on is None:
                return
            on_link(f"waiting for job {clock.follow_on} to start")
            saved = _current_server(config, helper, saved, on_link, gone="")
            took_over = True
        except ConnectionFailed as lost:
            now = time.monotonic()
            if not failures:
                down_since = now
            failures += 1
            if failures == 1:
                on_link(f"{lost.message}; reconnecting (Ctrl-C stops)")
            elif failures % 20 == 0:  # say it now and then, not at every attempt
                on_link(f"still reconnecting ({failures} attempts): {lost.message}")
            # The server answered but slowly (a long ProxyJump chain, a satellite link): a
            # short timeout would never let it finish, so the next attempt gets the full one.
            slow = "banner exchange" in lost.message
            timeout = None if slow else min(RECONNECT_TIMEOUT, remote.connect_timeout)
            pace = RETRY_EVERY if now - down_since < RETRY_FAST_FOR else RETRY_EVERY_LATER
            deadline = max(began + pace, now + 0.1)
            while time.monotonic() < deadline and not stop():
                time.sleep(0.1)


def _clock(
    helper: HelperClient, config: Config, saved: state.ProjectState, on_link: Callable[[str], Any]
) -> walltime.Clock:
    """The job's clock, renewing as [slurm] renew says."""
    assert config.slurm is not None and saved.job is not None
    renew = config.slurm.renew

    def queue_follow_on() -> str:
        return server.renew(helper, config, saved.remote_dir).next

    return walltime.Clock(
        helper, saved.remote_dir, saved.job, config.slurm.warn, on_link,
        renew=queue_follow_on if renew == "always" else None, ask=renew == "ask",
    )  # fmt: skip


def _current_server(
    config: Config,
    helper: HelperClient,
    saved: state.ProjectState,
    on_link: Callable[[str], Any],
    gone: str = "the Jupyter server was gone: starting it again",
) -> state.ProjectState:
    """The project's server as it is now (one probe): the one running, or, if the remote lost
    it (a reboot, an idle shutdown, an ended job), a new one (a follow-on job, if one is
    queued); the project's saved state follows. `gone` is said when there is none."""
    live = probe.look(helper, saved.remote_dir).server
    if live is None:
        if gone:
            on_link(gone)
        live = server.start(helper, config, saved.remote_dir, on_log=on_link)
    if (live.token, live.target, live.job) != (saved.token, saved.forward_target, saved.job):
        if saved.local_port and saved.forward_target:
            hop = tunnel.carrier(helper.connection, saved.via_node)
            hop.cancel_forward(saved.local_port, saved.forward_target)
        saved.token, saved.forward_target = live.token, live.target
        saved.server_pid, saved.via_node = live.pid, live.via_node
        saved.job, saved.node = live.job, live.node
        saved.job_ends_at = walltime.ends_at(live.time_left)
        with state.locked(config.root, config.remote_name):
            state.save(saved)
    return saved


class Link(Protocol):
    """What the health check needs of a connection (a Connection is one)."""

    host: str

    def master_alive(self) -> bool: ...

    def responsive(self, timeout: float) -> bool: ...

    def disconnect(self) -> None: ...


def link_check(remote: Link) -> Callable[[], None]:
    """A health check for the watch loop: the master is up, and no sleep went unnoticed."""
    last = [time.time(), time.monotonic()]

    def check() -> None:
        wall, mono = time.time(), time.monotonic()
        slept = (wall - last[0]) - (mono - last[1]) > CLOCK_JUMP
        last[:] = [wall, mono]
        if not remote.master_alive():
            raise ConnectionFailed(f"the connection to {remote.host} was lost")
        if slept and not remote.responsive(timeout=10):
            # After a sleep the TCP connection may be dead while ssh has not noticed yet.
            remote.disconnect()
            raise ConnectionFailed(f"the connection to {remote.host} did not survive the sleep")

    return check


def _changed(remote: Connection, message: dict[str, Any]) -> str:
    """A project file the remote watcher saw change, checked as untrusted input."""
    if set(message) != {"changed"}:
        raise RemoteError(f"{remote.host}: the remote watcher sent a malformed change event")
    return transfer.checked_name(message["changed"], None)


def _file_event(
    remote: Connection, config: Config, message: dict[str, Any]
) -> tuple[str, tuple[bytes, int] | None]:
    """A file event from the remote watcher, checked as untrusted input: its name (a plain
    path in a results folder), and its content and time when it came inline."""
    fields = set(message)
    if not fields <= {"file", "blob", "mtime_ns"} or ("blob" in fields) != ("mtime_ns" in fields):
        unknown = sorted(fields - {"file"})
        raise RemoteError(
            f"{remote.host}: the remote watcher sent unknown fields: {unknown!r:.200}"
        )
    name = transfer.checked_name(message["file"], config.sync.results)
    if "blob" not in message:
        return name, None
    content, mtime_ns = message["blob"], message["mtime_ns"]
    if not isinstance(content, bytes) or type(mtime_ns) is not int:
        raise RemoteError(f"{remote.host}: the remote watcher sent a malformed event for {name}")
    return name, (content, mtime_ns)


def _lost(remote: Connection, stderr: str) -> Exception:
    if not remote.master_alive():
        return ConnectionFailed(
            f"the connection to {remote.host} was lost while watching",
            hint="run `rjn watch` (or `rjn open`) again once the network is back",
        )
    tail = " / ".join(stderr.strip().splitlines()[-3:])
    return RemoteError(f"{remote.host}: the remote watcher stopped: {tail or 'no output'}")
