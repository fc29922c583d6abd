"""The remote Jupyter server: started detached on a private socket, reused while it lives."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from rjn.config import Config
from rjn.errors import RemoteError
from rjn.helper_client import HelperClient
from rjn.helper_client.boot import setup_script
from rjn.shared import folders, protocol
from rjn.shared.record import record

Start = TypeVar("Start", bound=protocol.StartRequest)


@record
class Server:
    """A Jupyter server as the remote helper reports it."""

    pid: int | None
    token: str
    app: str
    sock: str | None = None
    port: int | None = None
    addr: str = "127.0.0.1"
    started: bool = False
    job: str | None = None
    node: str | None = None
    time_left: str | None = None  # a job's, as SLURM says it when asked

    @property
    def via_node(self) -> str | None:
        """The compute node the tunnel must hop to: a job's Jupyter on a socket of the node's."""
        return self.node if self.job and self.sock else None

    @property
    def target(self) -> str:
        """What a tunnel forwards to: the unix socket, or the address and port (on a compute
        node, for a SLURM job)."""
        return self.sock or f"{self.addr}:{self.port}"

    @classmethod
    def from_state(cls, state: protocol.ServerState) -> Server | None:
        """A live server from the helper's report, or None if it is not alive."""
        if not state.alive:
            return None
        return cls(
            pid=state.pid,
            token=state.token or "",
            app=state.app or "lab",
            sock=state.sock,
            port=state.port,
            addr=state.addr or "127.0.0.1",
            started=bool(state.started),
            job=state.job,
            node=state.node,
            time_left=state.time_left,
        )


def checked_state(answer: object) -> protocol.ServerState:
    """The helper's report of the server, checked (protocol.Malformed names what is wrong):
    a live server has its token."""
    state = protocol.ServerState.parse(answer)
    if state.alive and state.token is None:
        raise protocol.Malformed("token")
    return state


def start(
    helper: HelperClient,
    config: Config,
    remote_dir: str,
    on_log: Callable[[str], Any] | None = None,
) -> Server:
    """Start the project's server, or return the one already running; waits until it answers.

    With [slurm] it is a batch job whose main process is Jupyter; the wait covers the queue.
    """
    state = helper.start(
        _request(protocol.StartRequest, config, remote_dir),
        python=venv_python(remote_dir),
        on_log=on_log,
        timeout=config.jupyter.ready_timeout + 60
        + (config.slurm.queue_timeout if config.slurm else 0),
    )
    if state.alive and state.token is None:
        raise RemoteError(f"{helper.host}: rjn's remote helper sent a malformed server (token)")
    server = Server.from_state(state)
    if server is None:
        raise RemoteError(f"{helper.host}: rjn's remote helper started no server")
    return server


def renew(helper: HelperClient, config: Config, remote_dir: str) -> protocol.Renewed:
    """Queue the job that takes over from the project's SLURM job when it ends, with the same
    token (the one queued already, if there is)."""
    request = _request(protocol.RenewRequest, config, remote_dir)
    return helper.renew(request, python=venv_python(remote_dir))


def _request(kind: type[Start], config: Config, remote_dir: str) -> Start:
    """What the helper needs to start the project's server (or queue its follow-on job)."""
    jupyter = config.jupyter
    return kind(
        dir=remote_dir,
        app=jupyter.app,
        listen=jupyter.listen,
        idle_timeout=jupyter.idle_timeout,
        ready_timeout=jupyter.ready_timeout,
        away=jupyter.away_outputs,
        slurm=dataclasses.asdict(config.slurm) if config.slurm else None,
        # The job's script starts as every command does: the user's sbatch settings may not
        # pass this environment on (--export=NONE).
        setup=setup_script(config.remote.setup) if config.remote.setup else None,
    )


def stop(helper: HelperClient, remote_dir: str) -> bool:
    """Shut the project's server down through its API (kernels too); True if one was running."""
    return helper.stop(remote_dir).stopped


def venv_python(remote_dir: str) -> str:
    """The environment's interpreter on the remote (remote_dir is absolute, from the probe);
    the helper's own function, so that the remote layout is spelled in one place."""
    return folders.venv_python(remote_dir)


def venv_activate(remote_dir: str) -> str:
    """The environment's activate script on the remote."""
    return folders.venv_bin(remote_dir, "activate")
