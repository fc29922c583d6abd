"""Use cases: each takes a Config, does the work through the action modules, returns a result."""

from __future__ import annotations

import contextlib
import os
import queue
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rjn import config as config_module
from rjn import env, places, probe, requirements, server, state, sync, tunnel, twoway, watch
from rjn.config import Config
from rjn.errors import ConnectionFailed, RemoteError, RjnError
from rjn.helper import protocol
from rjn.helper import tree as helper_tree
from rjn.records import Closed, Listed, Opened, Ran, Status, Synced
from rjn.remote import Parts, Remote, helper_error, master_pid_at
from rjn.requirements import Requirements


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


def connect(remote: Remote, report: Reporter) -> bool:
    """The master up; True if it had to log in. ssh may ask for a password, a 2FA code, a
    passphrase or a new host key then: the display steps aside for it."""
    up = remote.master_alive()
    with report.step(f"Connecting to {remote.host}", prompts=not up):
        return False if up else remote.connect()


def make_remote(config: Config) -> Remote:
    """The Remote for a project's host; masters are shared by every project on that host."""
    return Remote(config.remote, control_dir=places.runtime_dir(), log_dir=places.state_dir())


@dataclass(frozen=True)
class Prepared:
    """A project made ready on the remote: connected, pushed, its environment current."""

    remote: Remote
    remote_dir: str
    probe: probe.Probe
    requirements: Requirements
    sources_hash: str
    env_hash: str
    logged_in: bool
    synced: twoway.Outcome
    env_installed: bool


def prepare(config: Config, report: Reporter, previous: state.ProjectState | None) -> Prepared:
    """Write requirements, connect, probe (one exec), push, and install only what changed."""
    remote = make_remote(config)
    with report.step("Writing requirements"):
        reqs, sources = requirements.current(config, previous.sources_hash if previous else None)
    wanted = env.wanted_hash(config, reqs)
    logged_in = connect(remote, report)
    with ThreadPoolExecutor(max_workers=1) as pool:
        here = twoway.scan_here(config, pool)  # while the remote looks at its side
        with report.step("Checking the remote"):
            info = probe.look(remote, config.remote_dir, env_hash=wanted,
                              tree=twoway.scan_args(config), timeout=300)  # fmt: skip
        remote_dir = info.dir
        with report.step(f"Syncing with {remote.host}:{remote_dir}"):
            synced = twoway.run(remote, config, remote_dir, info.tree, progress=report.progress,
                                here_scan=here)  # fmt: skip
    if not info.env_current:
        with report.step("Installing the environment"):
            env.ensure(remote, config, remote_dir, wanted, on_log=report.log)
    return Prepared(
        remote,
        remote_dir,
        info,
        reqs,
        sources,
        wanted,
        logged_in,
        synced,
        not info.env_current,
    )


def open_project(config: Config, report: Reporter) -> Opened:
    """Connect, write requirements, push, install, start Jupyter, tunnel it; reuse what lives."""
    root = config.root
    with state.locked(root, config.remote_name):
        previous = state.load(root, config.remote_name)
        with ThreadPoolExecutor(max_workers=1) as pool:
            # The last open's tunnel is tried while the remote is looked at: both at once.
            answered = pool.submit(_tunnel_answers, config, previous)
            ready = prepare(config, report, previous)
            still_up = answered.result()
        remote, remote_dir, reqs = ready.remote, ready.remote_dir, ready.requirements
        notes = list(remote.notes)
        live = ready.probe.server
        if live and ready.env_installed:
            notes.append("the environment changed: restart running kernels to use it")
        if live is None:
            where = " as a SLURM job" if config.slurm else ""
            with report.step(f"Starting Jupyter {config.jupyter.app}{where}"):
                live = server.start(remote, config, remote_dir, on_log=report.log)
        try:
            carrier = remote
            if live.via_node:
                carrier = remote.to_node(live.via_node)
                connect(carrier, report)
            with report.step("Opening the tunnel"):
                port = tunnel.ensure(
                    carrier,
                    config,
                    live.target,
                    live.token,
                    previous.local_port if previous else None,
                    previous.forward_target if previous else None,
                    known_good=still_up
                    and previous is not None
                    and (
                        (live.token, live.target, live.via_node)
                        == (previous.token, previous.forward_target, previous.via_node)
                    ),
                    # Through a hop, the tunnel is the first to ask Jupyter: give it its time.
                    wait=config.jupyter.ready_timeout if live.via_node else 15,
                )
        except BaseException:
            if live.started and live.job:
                # A job this open submitted must not burn its allocation unused.
                with report.step(f"Cancelling SLURM job {live.job}"):
                    server.stop(remote, remote_dir)
            raise
        record = state.ProjectState(
            root=str(root),
            host=remote.host,
            control_path=str(remote.control_path),
            remote_dir=remote_dir,
            remote_name=config.remote_name,
            opened_at=previous.opened_at if previous and previous.opened_at else time.time(),
            job=live.job,
            node=live.node,
            local_port=port,
            forward_target=live.target,
            token=live.token,
            server_pid=live.pid,
            app=live.app,
            env_hash=ready.env_hash,
            sources_hash=ready.sources_hash,
            via_node=live.via_node,
        )
        state.save(record)
    return Opened(
        project=config.name,
        host=remote.host,
        remote_dir=remote_dir,
        port=port,
        url=record.url or "",
        tokened_url=record.tokened_url() or "",
        logged_in=ready.logged_in,
        synced=ready.synced,
        env_installed=ready.env_installed,
        server_started=live.started,
        requirements=reqs.lines,
        requirements_generated=reqs.generated,
        unreadable=reqs.skipped_files,
        notes=tuple(notes),
    )


def _tunnel_answers(config: Config, saved: state.ProjectState | None) -> bool:
    """Whether the project's last tunnel is ours and its server answers with the saved token
    (sent only to a port our own master holds)."""
    if not (saved and saved.local_port and saved.token):
        return False
    try:
        carrier = tunnel.carrier(make_remote(config), saved.via_node)
        return tunnel.ours(carrier, saved.local_port) and (
            tunnel.answer_status(saved.local_port, saved.token) == 200
        )
    except RjnError:
        return False


def status(config: Config) -> Status:
    """Check master, tunnel and server; say what is wrong and how to repair it."""
    saved = state.load(config.root, config.remote_name)
    trash = sum(size for _, size in helper_tree.trash_usage(str(config.root)))
    if saved is None:
        return Status(project=config.name, host=config.remote.host, open=False,
                      trash_bytes=trash)  # fmt: skip
    remote = make_remote(config)
    master_pid = remote.master_pid()
    master = master_pid is not None
    carrier = tunnel.carrier(remote, saved.via_node if saved else None)
    alive: bool | None = None
    pid = saved.server_pid
    job = probe.Job()
    machine: dict[str, Any] | None = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        # One exec answers the rest (the server, a job's state and time left, the machine);
        # it goes while the tunnel is checked.
        asked = (
            pool.submit(probe.look, remote, config.remote_dir, machine=True, timeout=30)
            if master
            else None
        )
        # The token is sent only to a port our own master holds.
        port = saved.local_port or 0
        held = bool(port) and tunnel.ours(carrier, port, master_pid if carrier is remote else None)
        answered = held and bool(saved.token) and tunnel.answer_status(port, saved.token or "")
        tunnel_ok = answered == 200
        squatted = bool(port) and not held and not tunnel.is_free(port)
        if tunnel_ok:
            alive = True
        if asked:
            info = asked.result()
            machine, job = info.machine, info.job
            alive = info.server is not None
            pid = info.server.pid if info.server else None
    problems = []
    if job.id and job.state not in ("RUNNING", None):
        problems.append(f"SLURM job {job.id} is {job.state}")
    if not master:
        problems.append(f"no SSH master to {remote.host}: `rjn open` reconnects")
    elif alive is False:
        problems.append("the Jupyter server is not running: `rjn open` starts it")
    elif squatted:
        problems.append(
            f"local port {saved.local_port} is taken by another process (not rjn's tunnel): "
            "`rjn open` moves to another port"
        )
    elif not tunnel_ok and saved.local_port:
        problems.append("the tunnel does not answer: `rjn open` repairs it")
    conflicts = twoway.conflicts(config)
    problems += [
        f"{rel} changed on both sides: the remote version is {copy} (delete one to resolve)"
        for rel, copy in conflicts.items()
    ]
    return Status(
        project=config.name,
        host=remote.host,
        open=bool(saved.local_port),
        master=master,
        tunnel=tunnel_ok,
        server=alive,
        remote_dir=saved.remote_dir,
        port=saved.local_port,
        url=saved.url,
        tokened_url=saved.tokened_url() if tunnel_ok else None,
        server_pid=pid,
        problems=tuple(problems),
        job=job.id,
        job_state=job.state,
        node=job.node,
        time_left=job.time_left,
        conflicts=conflicts,
        remote_name=config.remote_name,
        machine=machine,
        trash_bytes=trash,
    )


def close(config: Config, *, stop_server: bool) -> Closed:
    """Close the tunnel; with stop_server, stop Jupyter and release the master if unused."""
    root = config.root
    with state.locked(root, config.remote_name):
        saved = state.load(root, config.remote_name)
        remote = make_remote(config)
        carrier = tunnel.carrier(remote, saved.via_node if saved else None)
        tunnel_closed = False
        if saved and saved.local_port and saved.forward_target:
            tunnel.close(carrier, saved.local_port, saved.forward_target)
            tunnel_closed = True
        stopped = released = False
        if stop_server:
            remote.connect()
            stopped = server.stop(remote, config.remote_dir)
            if carrier is not remote:
                carrier.disconnect()  # the hop to the node: its job is gone
            state.forget(root, config.remote_name)
            if not _master_in_use(remote, config):
                remote.disconnect()
                released = True
        elif saved:
            saved.local_port = None
            state.save(saved)
    return Closed(config.name, tunnel_closed, stopped, released)


def _master_in_use(remote: Remote, config: Config) -> bool:
    """Whether another open project's tunnel rides on this master."""
    mine, me = str(remote.control_path), (str(config.root), config.remote_name)
    return any(
        s.control_path == mine and s.local_port and (s.root, s.remote_name) != me
        for s in state.all_projects()
    )


def list_open(show_token: bool = False) -> list[Listed]:
    """Every open project on this machine, each checked live (in parallel: one local check of
    its master and one request through its tunnel, no remote command)."""
    records = [s for s in state.all_projects() if s.local_port]

    def check(saved: state.ProjectState) -> Listed:
        pid = master_pid_at(saved.control_path)
        port = saved.local_port or 0
        held = pid is not None and tunnel.held_by(port, pid) is not False
        up = held and tunnel.answer_status(port, saved.token or "") == 200
        root = Path(saved.root)
        return Listed(
            project=root.name,
            root=saved.root,
            remote=saved.remote_name or "remote",
            host=saved.host,
            port=saved.local_port,
            url=saved.url,
            tokened_url=saved.tokened_url() if show_token and up else None,
            connection=pid is not None,
            tunnel=up,
            job=saved.job,
            node=saved.node,
            uptime=time.time() - saved.opened_at if saved.opened_at else None,
            last_pulled=sync.last_pulled(root, saved.remote_name),
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(check, records))


def close_all(stop_server: bool) -> tuple[list[Closed], list[str]]:
    """`rjn close` for every open project (each with its own remote.toml and remote); what
    could not be closed is said, and does not stop the others."""
    closed, failed = [], []
    for saved in state.all_projects():
        if not saved.local_port and not stop_server:
            continue
        where = Path(saved.root) / config_module.CONFIG_NAME
        try:
            config = config_module.load(where, remote=saved.remote_name)
            closed.append(close(config, stop_server=stop_server))
        except RjnError as error:
            failed.append(f"{saved.root}: {error.message}")
    return closed, failed


def requirements_only(config: Config) -> Requirements:
    """Write requirements.txt and return it (`rjn requirements`)."""
    return requirements.write(config)


def shell(config: Config, command: list[str] | None) -> int:
    """An interactive shell, or one command, in the remote project dir with the env activated."""
    remote = make_remote(config)
    remote.connect()
    remote_dir = probe.look(remote, config.remote_dir).dir
    activate = server.venv_activate(remote_dir)
    # One fixed script; paths and the user's command reach it as positional arguments (data).
    script = (
        'cd "$1" || exit 1; [ -f "$2" ] && . "$2"; shift 2; '
        'if [ $# -gt 0 ]; then exec "$@"; else exec "${SHELL:-/bin/sh}" -l; fi'
    )
    code = remote.shell(["sh", "-c", script, "rjn", remote_dir, activate, *(command or [])])
    if code == 255 and not remote.master_alive():
        raise ConnectionFailed(f"the connection to {remote.host} was lost")
    return code


def watch_results(
    config: Config,
    on_ready: Callable[[watch.Ready], Any],
    on_pulled: Callable[[sync.Pulled, float], Any],
    on_link: Callable[[str], Any] = lambda message: None,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Pull each new or changed result file as soon as it is complete, until Ctrl-C; a dropped
    link is repaired (see watch.follow)."""
    saved = state.load(config.root, config.remote_name)
    if saved is None or not saved.remote_dir:
        raise RjnError(f"{config.name} is not open", hint="run `rjn open` first")
    watch.follow(make_remote(config), config, saved, on_ready, on_pulled, on_link, stop)


def sync_now(
    config: Config, report: Reporter, *, push: bool = False, allow_deletions: bool = False
) -> Synced:
    """Both ways, now: results and remote edits come home, local edits go out, a file changed
    on both sides keeps both versions. With push, only send: nothing local changes."""
    remote = make_remote(config)
    connect(remote, report)
    remote_dir = _remote_dir(config, remote)
    if push:
        with report.step("Writing requirements"):
            requirements.write(config)
        with report.step(f"Sending to {remote.host}:{remote_dir}"):
            tree = twoway.run(remote, config, remote_dir, direction="push",
                              allow_deletions=allow_deletions,
                              progress=report.progress)  # fmt: skip
        return Synced(config.name, "push", tree=tree, notes=tuple(remote.notes))
    step = report.step(f"Syncing with {remote.host}:{remote_dir}")
    with step, ThreadPoolExecutor(max_workers=1) as pool:
        here = twoway.scan_here(config, pool)  # while the remote looks at its side
        # One look lists both (the tree, and the results): what has not changed costs nothing.
        seen = probe.look(remote, remote_dir, tree=twoway.scan_args(config),
                          results=config.sync.results, timeout=300)  # fmt: skip
        pulled, tree = _bring_home(remote, config, remote_dir, seen.results, seen.tree, report,
                                   allow_deletions=allow_deletions, here_scan=here)  # fmt: skip
    return Synced(config.name, "both", files=tuple(pulled), tree=tree, notes=tuple(remote.notes))


def run(
    config: Config,
    command: list[str],
    report: Reporter,
    on_output: Callable[[str, str], Any],
    detach: bool = False,
) -> Ran:
    """Push, ensure the environment, run `command` in the remote project with output streamed
    live as (stream, line), then pull the results. Ctrl-C interrupts the remote command."""
    root = config.root
    with state.locked(root, config.remote_name):
        previous = state.load(root, config.remote_name)
        ready = prepare(config, report, previous)
        if previous is None:
            state.save(
                state.ProjectState(
                    root=str(root),
                    host=ready.remote.host,
                    control_path=str(ready.remote.control_path),
                    remote_dir=ready.remote_dir,
                    remote_name=config.remote_name,
                    env_hash=ready.env_hash,
                )
            )
    if detach:
        started = ready.remote.agent(
            "run",
            {"dir": ready.remote_dir, "argv": command, "detach": True},
            python=server.venv_python(ready.remote_dir),
            timeout=60,
        )
        return Ran(config.name, 0, run_id=started["run"])
    # The run's answer lists what it left (the tree, the results), so that only what changed
    # costs a transfer.
    listing = {**twoway.scan_args(config), "results": list(config.sync.results)}
    code, left = stream_run(ready.remote, ready.remote_dir, "run", {"argv": command, **listing},
                            on_output)  # fmt: skip
    with report.step(f"Pulling results from {ready.remote.host}"):
        pulled, tree = _bring_home(ready.remote, config, ready.remote_dir, left.results,
                                   left.tree, report)  # fmt: skip
    return Ran(config.name, code, tuple(pulled), tree=tree)


def _bring_home(
    remote: Remote,
    config: Config,
    remote_dir: str,
    results: object,
    listed: dict[str, Any] | None,
    report: Reporter,
    allow_deletions: bool = False,
    here_scan: Future[twoway.HereScan] | None = None,
) -> tuple[list[sync.Pulled], twoway.Outcome]:
    """Results home and the project both ways, given the remote's listings (None: asked for
    here). The two are apart (results never travel both ways): both go at once over the one
    master."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        results_home = pool.submit(sync.pull_changed, remote, config, remote_dir, results)
        tree = twoway.run(remote, config, remote_dir, listed, allow_deletions=allow_deletions,
                          progress=report.progress, here_scan=here_scan)  # fmt: skip
        return results_home.result(), tree


def stream_run(
    remote: Remote,
    remote_dir: str,
    action: str,
    args: dict[str, Any],
    on_output: Callable[[str, str], Any],
) -> tuple[int, protocol.RunEnd]:
    """Stream a helper action's output (a run, or a run's log); return the exit code (130 on
    Ctrl-C, which also interrupts a run) and the helper's end of it (what the run left)."""
    messages: queue.Queue[dict[str, Any]] = queue.Queue()
    running = remote.agent_stream(
        action, {"dir": remote_dir, **args}, python=server.venv_python(remote_dir),
        on_message=messages.put,
    )  # fmt: skip
    interrupted = False
    parts = Parts(remote.host)
    try:
        while True:
            try:
                message = messages.get(timeout=0.2)
            except queue.Empty:
                if not running.alive() and messages.empty():
                    if interrupted:
                        return 130, protocol.RunEnd(exit=130)
                    raise ConnectionFailed(
                        f"the connection to {remote.host} was lost during the run",
                        hint="`rjn run --detach` keeps long runs going without a connection",
                    ) from None
                continue
            except KeyboardInterrupt:
                # Closing the helper's stdin interrupts the remote command's whole group.
                interrupted = True
                running.close(timeout=15)
                continue
            if "out" in message or "err" in message:
                stream = "out" if "out" in message else "err"
                on_output(stream, str(message[stream]))
            elif "part" in message:
                parts.add(message)
            elif "error" in message:
                raise helper_error(remote.host, message["error"])
            elif "ok" in message:
                try:
                    end = protocol.RunEnd.parse(parts.joined(message["ok"]))
                except protocol.Malformed as bad:
                    raise RemoteError(
                        f"{remote.host}: rjn's remote helper sent a malformed end ({bad.field})"
                    ) from None
                return 130 if interrupted else (end.exit or 0), end
    finally:
        running.close()


def notebook_command(config: Config, notebook: str) -> list[str]:
    """nbconvert argv that executes a notebook into a copy in the first results folder."""
    path = (config.root / notebook).resolve()
    if not path.is_relative_to(config.root) or path.suffix != ".ipynb" or not path.is_file():
        raise RjnError(
            f"{notebook}: not a notebook in this project",
            hint="give a path to an .ipynb file inside the project folder",
        )
    rel = path.relative_to(config.root).as_posix()
    out_dir = config.sync.results[0] if config.sync.results else "results"
    return [
        "jupyter", "nbconvert", "--to", "notebook", "--execute", rel,
        "--output-dir", out_dir, "--output", f"{path.stem}.executed",
    ]  # fmt: skip


def logs(
    config: Config, run_id: str | None, follow: bool, on_output: Callable[[str, str], Any]
) -> int:
    """Show a detached run's output (the latest by default); with follow, until it ends."""
    remote = make_remote(config)
    remote.connect()
    args = {"run": run_id, "follow": follow}
    return stream_run(remote, _remote_dir(config, remote), "logs", args, on_output)[0]


def _remote_dir(config: Config, remote: Remote) -> str:
    """The absolute remote project dir: remembered, else asked of the remote (one exec)."""
    saved = state.load(config.root, config.remote_name)
    if saved and saved.remote_dir:
        return saved.remote_dir
    return probe.look(remote, config.remote_dir).dir


def init(folder: Path, host: str, remote_name: str | None = None) -> Path:
    """Write a commented remote.toml for `host` (never over an existing one); with
    `remote_name`, add [remotes.NAME] for `host` to the existing file, its comments kept."""
    path = folder / config_module.CONFIG_NAME
    if remote_name:
        return _add_remote(path, host, remote_name)
    if path.exists():
        raise config_module.ConfigError(
            f"{path} exists already",
            hint="edit it, or add another machine with `rjn init HOST --remote NAME`",
        )
    text = config_module.template(host, folder.name)
    config_module.parse(tomllib.loads(text), path)  # what init writes must load
    path.write_text(text)
    return path


def _add_remote(path: Path, host: str, name: str) -> Path:
    import tomlkit

    if not path.exists():
        raise RjnError(f"{path} does not exist", hint=f"run `rjn init {host}` first")
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    remotes = document.setdefault("remotes", tomlkit.table(is_super_table=True))
    if name in remotes:
        raise RjnError(f"{path}: [remotes.{name}] exists already", hint="edit it there")
    table = tomlkit.table()
    table.add(tomlkit.comment(f"`rjn open {name}`; what is not set here comes from [remote]"))
    table["host"] = host
    remotes[name] = table
    text = tomlkit.dumps(document)
    staged = path.with_name(f".{path.name}.rjn-new")
    staged.write_text(text, encoding="utf-8")
    try:
        config_module.load(staged, remote=name)  # what init writes must load
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return path
