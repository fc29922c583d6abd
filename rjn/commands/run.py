"""`rjn run`, `rjn logs` and `rjn shell`: commands in the project's remote environment."""

from __future__ import annotations

import queue
import shlex
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from rjn import probe, server, state, twoway
from rjn.commands.common import Reporter, bring_home, prepare, reach, remote_dir
from rjn.config import Config
from rjn.errors import ConnectionFailed, RemoteError, RjnError
from rjn.helper_client import HelperClient
from rjn.helper_client.answers import Parts, helper_error
from rjn.records import Ran
from rjn.shared import protocol


def run(
    config: Config,
    command: list[str],
    report: Reporter,
    on_output: Callable[[str, str], Any],
    detach: bool = False,
    notebook: str | None = None,
) -> Ran:
    """Push, ensure the environment, run `command` (or execute `notebook`, a project path)
    in the remote project with output streamed live as (stream, line), then pull the
    results. Ctrl-C interrupts the remote command."""
    root = config.root
    with state.locked(root, config.remote_name):
        previous = state.load(root, config.remote_name)
        what = f"rjn run {'--notebook ' + notebook if notebook else '-- ' + shlex.join(command)}"
        what = what[:100]  # as `rjn close --server` names it
        ready = prepare(config, report, previous, what)
        if previous is None:
            state.save(
                state.ProjectState(
                    root=str(root),
                    host=ready.helper.host,
                    control_path=str(ready.helper.connection.control_path),
                    remote_dir=ready.remote_dir,
                    remote_name=config.remote_name,
                    env_hash=ready.env_hash,
                )
            )
    if notebook:
        command = notebook_command(config, notebook, ready.remote_dir)
    if detach:
        python = server.venv_python(ready.remote_dir)
        started = ready.helper.run_detached(ready.remote_dir, command, python=python)
        return Ran(config.name, 0, run_id=started.run)
    # The run's answer lists what it left (the tree, the results), so that only what changed
    # costs a transfer.
    request = protocol.RunRequest(dir=ready.remote_dir, argv=command,
                                  tree=twoway.tree_query(config),
                                  results=list(config.sync.results))  # fmt: skip
    with ready.helper.connection.in_use(what, root):
        code, left = stream_run(ready.helper, request, on_output)
        with report.step(f"Pulling results from {ready.helper.host}"):
            pulled, tree = bring_home(ready.helper, config, ready.remote_dir, left.results,
                                       left.tree, report)  # fmt: skip
    return Ran(config.name, code, tuple(pulled), tree=tree)


def stream_run(
    helper: HelperClient,
    request: protocol.RunRequest | protocol.LogsRequest,
    on_output: Callable[[str, str], Any],
) -> tuple[int, protocol.RunEnd]:
    """Stream a helper action's output (a run, or a run's log); return the exit code (130 on
    Ctrl-C, which also interrupts a run) and the helper's end of it (what the run left)."""
    messages: queue.Queue[dict[str, Any]] = queue.Queue()
    running = helper.stream(request, python=server.venv_python(request.dir),
                            on_message=messages.put)  # fmt: skip
    interrupted = False
    parts = Parts(helper.host)
    try:
        while True:
            try:
                message = messages.get(timeout=0.2)
            except queue.Empty:
                if not running.alive() and messages.empty():
                    if interrupted:
                        return 130, protocol.RunEnd(exit=130)
                    if helper.connection.closed_meanwhile():
                        raise helper.connection.lost("") from None
                    raise ConnectionFailed(
                        f"the connection to {helper.host} was lost during the run",
                        hint="`rjn run --detach` keeps long runs going without a connection"
                        if request.action == "run" else "run `rjn logs -f` again once the "
                        "network is back (the run goes on there)",
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
                raise helper_error(helper.host, message["error"])
            elif "ok" in message:
                try:
                    end = protocol.RunEnd.parse(parts.joined(message["ok"]))
                except protocol.Malformed as bad:
                    raise RemoteError(
                        f"{helper.host}: rjn's remote helper sent a malformed end ({bad.field})"
                    ) from None
                return 130 if interrupted else (end.exit or 0), end
    finally:
        running.close()


def checked_notebook(config: Config, notebook: str) -> str:
    """The notebook's path in the project, or an error that says it is not one."""
    path = (config.root / notebook).resolve()
    if not path.is_relative_to(config.root) or path.suffix != ".ipynb" or not path.is_file():
        raise RjnError(
            f"{notebook}: not a notebook in this project",
            hint="give a path to an .ipynb file inside the project folder",
        )
    return path.relative_to(config.root).as_posix()


# A unix socket's path holds 107 bytes: the kernel's are <prefix>-<n>.
IPC_PREFIX_MAX = 90


def notebook_command(config: Config, notebook: str, remote_dir: str) -> list[str]:
    """nbconvert argv that executes a notebook into a copy in the first results folder."""
    rel = checked_notebook(config, notebook)
    out_dir = config.sync.results[0] if config.sync.results else "results"
    argv = [
        "jupyter", "nbconvert", "--to", "notebook", "--execute", rel,
        "--output-dir", out_dir, "--output", f"{PurePosixPath(rel).stem}.executed",
    ]  # fmt: skip
    # The kernel on unix sockets in the project's private .rjn/, not TCP ports any user of
    # the host can reach (ipykernel warns of those at every run). The prefix is absolute: the
    # kernel runs in the notebook's folder, nbconvert in the project's.
    prefix = f"{remote_dir}/.rjn/kernel"
    if len(prefix.encode()) <= IPC_PREFIX_MAX:
        argv += ["--KernelManager.transport=ipc", f"--KernelManager.ip={prefix}"]
    return argv


def logs(
    config: Config, run_id: str | None, follow: bool, on_output: Callable[[str, str], Any]
) -> int:
    """Show a detached run's output (the latest by default); with follow, until it ends."""
    helper = reach(config)
    helper.connection.connect()
    request = protocol.LogsRequest(dir=remote_dir(config, helper), run=run_id, follow=follow)
    return stream_run(helper, request, on_output)[0]


def shell(config: Config, command: list[str] | None) -> int:
    """An interactive shell, or one command, in the remote project dir with the env activated."""
    helper = reach(config)
    remote = helper.connection
    remote.connect()
    where = probe.look(helper, config.remote_dir).dir
    activate = server.venv_activate(where)
    # One fixed script; paths and the user's command reach it as positional arguments (data).
    script = (
        'cd "$1" || exit 1; [ -f "$2" ] && . "$2"; shift 2; '
        'if [ $# -gt 0 ]; then exec "$@"; else exec "${SHELL:-/bin/sh}" -l; fi'
    )
    with remote.in_use("rjn shell", config.root):
        code = remote.shell(
            helper.remote(["sh", "-c", script, "rjn", where, activate, *(command or [])])
        )
    if code == 255 and not remote.master_alive():
        raise ConnectionFailed(f"the connection to {remote.host} was lost")
    return code
